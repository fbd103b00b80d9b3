-- matmul, sort/topk, gather/scatter, index ops, cat/stack/split against naive loops.
local moe = require "moe"
local H = require "helpers"

local function matmul_ref(a, b)
  -- a [..., M, K], b [..., K, N] with broadcast batch dims
  local sa, sb = a:shape(), b:shape()
  local M, K, N = sa[#sa - 1], sa[#sa], sb[#sb]
  local ba, bb = {}, {}
  for i = 1, #sa - 2 do ba[i] = sa[i] end
  for i = 1, #sb - 2 do bb[i] = sb[i] end
  local bs = H.broadcast_shape(ba, bb)
  local va, vb = H.flat(a), H.flat(b)
  local out, oshape = {}, {}
  for i = 1, #bs do oshape[i] = bs[i] end
  oshape[#bs + 1], oshape[#bs + 2] = M, N
  for p = 0, H.numel(oshape) - 1 do
    local idx = H.unravel(p, oshape)
    local s = 0
    for k = 1, K do
      local ia, ib = {}, {}
      for d = 1, #bs do ia[d], ib[d] = idx[d], idx[d] end
      ia[#bs + 1], ia[#bs + 2] = idx[#bs + 1], k
      ib[#bs + 1], ib[#bs + 2] = k, idx[#bs + 2]
      s = s + H.bget(va, sa, ia) * H.bget(vb, sb, ib)
    end
    out[p + 1] = s
  end
  return out, oshape
end

describe("matmul", function()
  setup(function() moe.manual_seed(3); math.randomseed(3) end)

  it("2-D on contiguous, transposed and narrowed operands (float64 and float32)", function()
    for _, dt in ipairs { "float64", "float32" } do
      for trial = 1, 12 do
        local M, K, N = math.random(1, 7), math.random(1, 7), math.random(1, 7)
        local a = H.layout({ M, K }, H.layouts[trial % 3 + 1], { dtype = dt })
        local b = H.layout({ K, N }, H.layouts[(trial + 1) % 3 + 1], { dtype = dt })
        local want, s = matmul_ref(a, b)
        local got = moe.matmul(a, b)
        assert.are.equal(dt, got:dtype())
        assert.is_true(H.maxdiff(got, want, s) < (dt == "float32" and 1e-5 or 1e-12), dt .. " trial " .. trial)
      end
    end
  end)

  it("batched with broadcast batch dims, and 1-D operands", function()
    local cases = {
      { { 3, 2, 4 }, { 3, 4, 5 } }, { { 3, 2, 4 }, { 4, 5 } }, { { 2, 4 }, { 3, 4, 5 } },
      { { 2, 1, 3, 4 }, { 5, 4, 2 } }, { { 1, 2, 3 }, { 4, 3, 2 } },
    }
    for _, c in ipairs(cases) do
      local a, b = moe.randn(c[1], { dtype = "float64" }), moe.randn(c[2], { dtype = "float64" })
      local want, s = matmul_ref(a, b)
      assert.is_true(H.maxdiff(a:matmul(b), want, s) < 1e-12)
      -- transposed batched operand (a view, no copy needed by BLAS)
      local bt = b:transpose(-1, -2):contiguous():transpose(-1, -2)
      assert.is_true(H.maxdiff(a:matmul(bt), want, s) < 1e-12)
    end
    local m, v = moe.randn(3, 4, { dtype = "float64" }), moe.randn(4, { dtype = "float64" })
    local mv = m:matmul(v)
    assert.are.same({ 3 }, mv:shape())
    assert.is_true(H.maxdiff(mv, (matmul_ref(m, v:view(4, 1)))) < 1e-12)
    local vm = moe.randn(3, { dtype = "float64" }):matmul(m)
    assert.are.same({ 4 }, vm:shape())
    assert.are.same({}, v:matmul(v):shape())
  end)

  it("zero-size dims give zeros of the right shape", function()
    local a, b = moe.zeros(3, 0), moe.zeros(0, 4)
    local c = a:matmul(b)
    assert.are.same({ 3, 4 }, c:shape())
    assert.are.equal(0, c:abs():sum():item())
    assert.are.same({ 0, 4 }, moe.zeros(0, 2):matmul(moe.ones(2, 4)):shape())
  end)

  it("integer operands compute in float32", function()
    local a = moe.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "int64" })
    local c = a:matmul(a)
    assert.are.equal("float32", c:dtype())
    assert.are.same({ { 7, 10 }, { 15, 22 } }, c:totable())
  end)
end)

describe("matmul split across the thread pool", function()
  -- mid-sized thin GEMMs (2e6 to 5e7 multiply-adds, one dim <= 64) run as
  -- blocks of rows or columns on the pool's threads (src/cpu/matmul.c, pool.c)
  local function naive(a, b, bias)
    local A, B = a:totable(), b:totable()
    local M, K, N = #A, #B, #B[1]
    local out = {}
    for i = 1, M do
      local row, Ai = {}, A[i]
      for j = 1, N do row[j] = bias and bias[j] or 0 end
      for k = 1, K do
        local aik, Bk = Ai[k], B[k]
        for j = 1, N do row[j] = row[j] + aik * Bk[j] end
      end
      out[i] = row
    end
    return out
  end
  local function maxdiff(t, ref)
    local T, d = t:totable(), 0
    for i = 1, #ref do for j = 1, #ref[1] do d = math.max(d, math.abs(T[i][j] - ref[i][j])) end end
    return d
  end
  it("matches a naive loop when split by rows or columns, with transposed operands and a bias", function()
    moe.manual_seed(11)
    for _, dt in ipairs { "float32", "float64" } do
      local tol = dt == "float32" and 1e-3 or 1e-9
      local a = moe.randn(512, 64, { dtype = dt })                      -- rows split: [512,64]@[64,128]
      local b = moe.randn(64, 128, { dtype = dt })
      assert.is_true(maxdiff(moe.matmul(a, b), naive(a, b)) < tol)
      local at = moe.randn(64, 512, { dtype = dt }):transpose(1, 2)     -- transposed A
      assert.is_true(maxdiff(moe.matmul(at, b), naive(at, b)) < tol)
      local c = moe.randn(48, 300, { dtype = dt })                      -- columns split: [48,300]@[300,400]
      local d = moe.randn(400, 300, { dtype = dt }):transpose(1, 2)     -- transposed B
      assert.is_true(maxdiff(moe.matmul(c, d), naive(c, d)) < tol)
      local bias = moe.randn(128, { dtype = dt })                       -- C += A B after the bias rows
      assert.is_true(maxdiff(moe.linear(a, b, bias), naive(a, b, bias:totable())) < tol)
    end
  end)
  -- narrow float32 GEMMs (N a multiple of 8 up to 64) run on src/cpu/small_gemm.c's
  -- register-blocked kernel where the CPU has AVX2+FMA: every row/column edge case
  it("narrow GEMMs (N = 8..64) match a naive loop: row remainders, strided and transposed A, strided B, bias, gradients", function()
    moe.manual_seed(12)
    for _, M in ipairs { 1, 5, 6, 7, 8, 13, 32 } do
      for _, N in ipairs { 8, 16, 24, 40, 64 } do
        for _, K in ipairs { 1, 3, 37 } do
          local a, b = moe.randn(M, K), moe.randn(K, N)
          assert.is_true(maxdiff(moe.matmul(a, b), naive(a, b)) < 1e-4, ("%dx%dx%d"):format(M, K, N))
        end
      end
    end
    for _, s in ipairs { { 32, 499, 8 }, { 32, 499, 32 }, { 499, 32, 16 }, { 61, 200, 56 } } do
      local M, K, N = s[1], s[2], s[3]
      local tag = ("%dx%dx%d"):format(M, K, N)
      local a, b = moe.randn(M, K), moe.randn(K, N)
      assert.is_true(maxdiff(moe.matmul(a, b), naive(a, b)) < 1e-3, tag)
      local at = moe.randn(K, M):transpose(1, 2)                     -- A transposed (the backward's x^T)
      assert.is_true(maxdiff(moe.matmul(at, b), naive(at, b)) < 1e-3, tag .. " A^T")
      local aw = moe.randn(M, K + 5):narrow(2, 2, K)                 -- A rows K + 5 apart
      local bw = moe.randn(K, N + 8):narrow(2, 3, N)                 -- B rows N + 8 apart
      assert.is_true(maxdiff(moe.matmul(aw, bw), naive(aw, bw)) < 1e-3, tag .. " strided")
      local bias = moe.randn(N)
      assert.is_true(maxdiff(moe.linear(a, b, bias), naive(a, b, bias:totable())) < 1e-3, tag .. " bias")
      -- the weight gradient x^T g is a narrow GEMM with a transposed A
      local w = b:clone():requires_grad_()
      local g = moe.randn(M, N)
      moe.linear(a, w, bias):backward(g)
      assert.is_true(maxdiff(w.grad, naive(a:transpose(1, 2), g)) < 1e-3, tag .. " grad")
    end
  end)
  it("fuses relu, sigmoid and tanh into linear: the same values as the separate ops", function()
    local x, w, b = moe.randn(7, 5), moe.randn(5, 3), moe.randn(3)
    local z = moe.linear(x, w, b)
    assert.is_true((moe.linear(x, w, b, "relu") - z:relu()):abs():max():item() < 1e-6)
    assert.is_true((moe.linear(x, w, b, "sigmoid") - z:sigmoid()):abs():max():item() < 1e-6)
    assert.is_true((moe.linear(x, w, b, "tanh") - z:tanh()):abs():max():item() < 1e-6)
    assert.equal(0, (moe.linear(x, w, b, "linear") - z):abs():max():item())
    assert.matches("activation must be relu, sigmoid, tanh or linear", H.error_of(moe.linear, x, w, b, "gelu"))
  end)
  it("gives the same bits on every call (no part lost or run twice)", function()
    local a, b, bias = moe.randn(1024, 64), moe.randn(64, 96), moe.randn(96)
    local first = moe.linear(a, b, bias)
    for _ = 1, 200 do
      assert.are.equal(0, (moe.linear(a, b, bias) - first):abs():max():item())
    end
  end)
end)

describe("sorting", function()
  it("sort is stable, ascending or descending, with 1-based indices", function()
    local x = moe.tensor{ 3, 1, 2, 1, 3, 0 }
    local v, i = x:sort()
    assert.are.same({ 0, 1, 1, 2, 3, 3 }, v:totable())
    assert.are.same({ 6, 2, 4, 3, 1, 5 }, i:totable())
    local vd, id = x:sort(1, true)
    assert.are.same({ 3, 3, 2, 1, 1, 0 }, vd:totable())
    assert.are.same({ 1, 5, 3, 2, 4, 6 }, id:totable())
    assert.are.same({ 6, 2, 4, 3, 1, 5 }, x:argsort():totable())
  end)

  it("sorts random rows along any dim like table.sort with index tie-breaks", function()
    for trial = 1, 6 do
      local x = moe.randint(0, 4, 3, 40):to("float64")
      if trial % 2 == 0 then x = x:transpose() end
      local d = trial % 2 == 0 and 1 or 2
      local v, i = x:sort(d)
      local n = x:size(d)
      for r = 1, x:size(3 - d) do
        local row = d == 2 and x[r] or x:select(2, r)
        local vals = H.flat(row)
        local order = {}
        for k = 1, n do order[k] = k end
        table.sort(order, function(p, q) if vals[p] ~= vals[q] then return vals[p] < vals[q] end return p < q end)
        local gi = d == 2 and i[r] or i:select(2, r)
        assert.are.same(order, gi:totable())
      end
    end
  end)

  it("topk returns the k largest (or smallest) with indices, along a dim", function()
    local x = moe.tensor{ { 0.1, 0.7, 0.2, 0.7 }, { 0.9, 0.0, 0.5, 0.3 } }
    local v, i = x:topk(2)
    assert.are.same({ { 2, 4 }, { 1, 3 } }, i:totable())
    assert.is_true(H.maxdiff(v, { 0.7, 0.7, 0.9, 0.5 }) < 1e-6)
    local vs, is = x:topk(1, 2, false)
    assert.are.same({ { 1 }, { 2 } }, is:totable())
    local v1, i1 = x:topk(1, 1)
    assert.are.same({ { 2, 1, 2, 1 } }, i1:totable())
    assert.are.same({ 1, 4 }, v1:shape())
    assert.are.same({ 2, 0 }, select(1, x:topk(0)):shape())
  end)

  it("NaN sorts last ascending", function()
    local v = moe.tensor{ 2, 0 / 0, 1 }:sort()
    local t = v:totable()
    assert.are.equal(1, t[1]); assert.are.equal(2, t[2]); assert.is_true(t[3] ~= t[3])
  end)
end)

describe("index ops", function()
  setup(function() moe.manual_seed(4); math.randomseed(4) end)

  it("gather picks along a dim (1-based indices)", function()
    for trial = 1, 6 do
      local x = H.layout({ 3, 4, 5 }, H.layouts[trial % 4 + 1])
      local d = trial % 3 + 1
      local ishape = { 3, 4, 5 }
      ishape[d] = math.random(1, 6)
      local idx = moe.randint(1, x:size(d), ishape)
      local got = x:gather(d, idx)
      local vx, vi = H.flat(x), H.flat(idx)
      local want = {}
      for p = 0, H.numel(ishape) - 1 do
        local ii = H.unravel(p, ishape)
        ii[d] = vi[p + 1]
        want[p + 1] = vx[H.ravel(ii, x:shape()) + 1]
      end
      assert.are.equal(0, H.maxdiff(got, want, ishape))
    end
  end)

  it("scatter_add accumulates repeated indices; scatter_add_ works in place", function()
    local base = moe.zeros(2, 5, { dtype = "float64" })
    local idx = moe.tensor({ { 1, 1, 5 }, { 2, 2, 2 } }, { dtype = "int64" })
    local src = moe.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "float64" })
    local out = base:scatter_add(2, idx, src)
    assert.are.same({ { 3, 0, 0, 0, 3 }, { 0, 15, 0, 0, 0 } }, out:totable())
    assert.are.equal(0, base:sum():item())
    base:scatter_add_(2, idx, src)
    assert.are.same(out:totable(), base:totable())
    -- random check against a naive loop, dim 1
    local t = moe.randn(4, 3, { dtype = "float64" })
    local ix = moe.randint(1, 4, 6, 3)
    local sv = moe.randn(6, 3, { dtype = "float64" })
    local want = H.flat(t)
    local vi, vs = H.flat(ix), H.flat(sv)
    for p = 0, 17 do
      local ii = H.unravel(p, { 6, 3 })
      local tgt = H.ravel({ vi[p + 1], ii[2] }, { 4, 3 }) + 1
      want[tgt] = want[tgt] + vs[p + 1]
    end
    assert.is_true(H.maxdiff(t:scatter_add(1, ix, sv), want) < 1e-12)
  end)

  it("index_select and index_add along any dim", function()
    local x = H.layout({ 4, 3, 2 }, "transposed")
    local idx = moe.tensor({ 3, 1, 3 }, { dtype = "int64" })
    local got = x:index_select(1, idx)
    assert.are.same({ 3, 3, 2 }, got:shape())
    assert.are.same(x[3]:totable(), got[1]:totable())
    assert.are.same(x[1]:totable(), got[2]:totable())
    local g2 = x:index_select(2, moe.tensor({ 2 }, { dtype = "int32" }))
    assert.are.same(x:narrow(2, 2, 1):totable(), g2:totable())
    local acc = moe.zeros(3, 2, { dtype = "float64" })
    local src = moe.ones(4, 2, { dtype = "float64" })
    local r = acc:index_add(1, moe.tensor({ 1, 3, 1, 1 }, { dtype = "int64" }), src)
    assert.are.same({ { 3, 3 }, { 0, 0 }, { 1, 1 } }, r:totable())
    acc:index_add_(2, moe.tensor({ 2 }, { dtype = "int64" }), moe.ones(3, 1, { dtype = "float64" }))
    assert.are.same({ { 0, 1 }, { 0, 1 }, { 0, 1 } }, acc:totable())
  end)

  it("bincount counts 1-based values, with weights and minlength", function()
    local v = moe.tensor({ 1, 3, 3, 2, 3 }, { dtype = "int64" })
    assert.are.same({ 1, 1, 3 }, v:bincount():totable())
    assert.are.same({ 1, 1, 3, 0, 0 }, v:bincount(nil, 5):totable())
    local w = moe.tensor({ 0.5, 1, 1, 2, 1 }, { dtype = "float64" })
    assert.are.same({ 0.5, 2, 3 }, v:bincount { weights = w }:totable())
    assert.are.same({ 0, 0 }, moe.tensor({}, { dtype = "int64" }):bincount(nil, 2):totable())
  end)

  it("cat, stack, split and chunk", function()
    local a, b = moe.randn(2, 3), moe.randn(4, 3)
    local c = moe.cat({ a, b }, 1)
    assert.are.same({ 6, 3 }, c:shape())
    assert.are.same(b:totable(), c:narrow(1, 3, 4):totable())
    local c2 = moe.cat({ a:transpose(), b:transpose() }, 2)
    assert.are.same(c:transpose():totable(), c2:totable())
    local s = moe.stack({ a, a, a }, 2)
    assert.are.same({ 2, 3, 3 }, s:shape())
    assert.are.same(a:totable(), s:select(2, 3):totable())
    local parts = c:split(4)
    assert.are.equal(2, #parts)
    assert.are.same({ 2, 3 }, parts[2]:shape())
    assert.is_true(parts[1]:same_storage(c))
    local p2 = c:split({ 1, 5 })
    assert.are.same({ 5, 3 }, p2[2]:shape())
    local ch = moe.chunk(c, 3, 1)
    assert.are.equal(3, #ch)
    assert.are.same({ 2, 3 }, ch[3]:shape())
    assert.are.same({ 6, 1 }, c:chunk(3, 2)[2]:shape())
  end)
end)
