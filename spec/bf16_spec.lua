-- bf16 expert GEMMs (moe.set_precision("bf16")): the GEMM ops against naive
-- references over operands rounded to bfloat16 in Lua (spec/bf16_ref.lua),
-- their error against fp32, every backend (each in a child process with
-- MOELUA_BF16 set), the validation of set_precision, the layers (experts in
-- bf16, routers and gates unchanged) and what moe.config() reports.
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"
local R = require "bf16_ref"

local CHILD = os.getenv("MOELUA_BF16_SPEC_CHILD") -- set when run by the backends' describe below
local bf16 = R.bf16

local function mat(t) return R.mat(t) end
local function rms(t) return math.sqrt(t:to("float64"):square():mean():item()) end
local function maxabs(t) return t:abs():max():item() end

-- the exact (double) GEMM of the unrounded operands plus bias, and sum |a b| + |bias|
local function with_bias(C, S, b)
  for m = 1, #C do
    for n = 1, #C[m] do
      C[m][n] = C[m][n] + b[n]
      S[m][n] = S[m][n] + math.abs(b[n])
    end
  end
  return C, S
end

describe("bf16 GEMMs against a naive reference #reference", function()
  after_each(function() moe.set_precision("fp32") end)

  it("run on the backend MOELUA_BF16 asks for", function()
    local want = os.getenv("MOELUA_BF16_SPEC_EXPECT")
    local h = moe.config().bf16
    if want then assert.equal(want, h.backend, h.reason) end
    assert.is_true(h.backend == "emulate" or h.backend == "onednn" or h.backend == "onednn-f32")
  end)

  it("round each operand to nearest bf16 (ties to even, subnormals, overflow, NaN) as a Lua reference does", function()
    local vals = { 1, 1 + 2 ^ -8, 1 + 3 * 2 ^ -8, 1 + 2 ^ -8 + 2 ^ -20, -(1 + 2 ^ -8), 3.14159265, -2.71828,
      1.5 * 2 ^ -126, 2 ^ -140, 3 * 2 ^ -134, 2 ^ -134, 3.0e38, 3.4e38, -3.4e38, 65504, 1e-3, 123456.789, 0, -0.0,
      math.huge, -math.huge }
    local col = {}
    for i, v in ipairs(vals) do col[i] = { v } end
    local x = moe.tensor(col)                            -- float32 [n,1]
    local y = moe.matmul(x, moe.ones(1, 1), "bf16")      -- each value times 1: bf16(x) exactly
    local xs, ys = mat(x), mat(y)
    -- oneDNN's bf16 matmul runs on the CPU's bf16 instructions, which read a
    -- subnormal bf16 as zero (emulate and onednn-f32 keep it)
    local round = moe.config().bf16.backend == "onednn" and R.bf16_daz or bf16
    for i = 1, #vals do
      local want = round(xs[i][1])
      assert.is_true(ys[i][1] == want, ("bf16(%.9g) = %.9g, the reference says %.9g"):format(xs[i][1], ys[i][1], want))
    end
    assert.equal(round == bf16 and 2 ^ -132 or 0, ys[10][1]) -- 3 2^-134, a subnormal tie: to even, or zero on bf16 hardware
    assert.equal(1, ys[2][1])                 -- 1 + 2^-8 is a tie: to even (1)
    assert.equal(1 + 2 ^ -6, ys[3][1])        -- 1 + 3 2^-8: a tie, to even (up)
    assert.equal(math.huge, ys[13][1])        -- beyond bf16's largest finite value
    local n = moe.matmul(moe.tensor { { 0 / 0 } }, moe.ones(1, 1), "bf16"):item()
    assert.is_true(n ~= n)
  end)

  local shapes = {
    { "contiguous", function(M, K) return moe.randn(M, K) end },
    { "transposed views", function(M, K) return moe.randn(K, M):transpose(1, 2) end },
  }
  for _, sh in ipairs(shapes) do
    it("moe.linear forward matches the reference to fp32 accumulation, " .. sh[1], function()
      moe.manual_seed(11)
      local M, K, N = 13, 37, 9
      local x, w, b = sh[2](M, K), sh[2](K, N), moe.randn(N)
      local y = moe.linear(x, w, b, nil, "bf16")
      local want, S = R.gemm(mat(x), mat(w), bf16)
      with_bias(want, S, mat(b))
      assert.is_true(R.worst(mat(y), want, S, R.ACC, 1e-30) <= 1)
    end)
  end

  it("moe.linear: the error against fp32 is within 2^-8 per operand, scaled by sqrt(K), and is not zero", function()
    moe.manual_seed(12)
    local M, K, N = 16, 64, 12
    local x, w, b = moe.randn(M, K), moe.randn(K, N), moe.randn(N)
    local y16, y32 = moe.linear(x, w, b, nil, "bf16"), moe.linear(x, w, b)
    local exact, S = R.gemm(mat(x), mat(w))
    with_bias(exact, S, mat(b))
    -- each element: both operands within 2^-9 relative of themselves, so a product within
    -- (2^-8 + 2^-18) of itself; the sum within that times sum |a b| (plus fp32 sums)
    assert.is_true(R.worst(mat(y16), exact, S, 2 ^ -8 + 2 ^ -18 + R.ACC, 1e-30) <= 1)
    -- in RMS over the outputs: at most 2^-8 sqrt(K) rms(x) rms(w) (the rounding errors are
    -- independent, so they grow as sqrt(K)); measured about 0.3 of that
    local err = moe.tensor(exact, { dtype = "float64" }) - y16:to("float64")
    local scale = 2 ^ -8 * math.sqrt(K) * rms(x) * rms(w)
    assert.is_true(rms(err) <= scale, ("rms error %g, bound %g"):format(rms(err), scale))
    -- and bf16 really ran: fp32 is 2^-16 of the bound away, bf16 more than 2^-4 of it
    assert.is_true(rms(err) >= scale / 16, ("rms error %g is too small for bf16 (bound %g)"):format(rms(err), scale))
    assert.is_true(maxabs(y16 - y32) > 0)
    local e32 = moe.tensor(exact, { dtype = "float64" }) - y32:to("float64")
    assert.is_true(rms(e32) < scale / 1000)
  end)

  it("moe.linear gradients (x, w, b) run their GEMMs in bf16 too, matching the reference", function()
    moe.manual_seed(13)
    local M, K, N = 11, 29, 7
    local x = moe.randn(M, K, { requires_grad = true })
    local w = moe.randn(K, N, { requires_grad = true })
    local b = moe.randn(N, { requires_grad = true })
    local g = moe.randn(M, N)
    local y = moe.linear(x, w, b, "relu", "bf16")
    y:backward(g)
    -- gz = g where the output is positive (the relu's derivative, from the op's own output)
    local ys, gs, gz = mat(y), mat(g), {}
    for m = 1, M do
      gz[m] = {}
      for n = 1, N do gz[m][n] = ys[m][n] > 0 and gs[m][n] or 0 end
    end
    local gx, Sx = R.gemm(gz, R.transpose(mat(w)), bf16)
    local gw, Sw = R.gemm(R.transpose(mat(x)), gz, bf16)
    assert.is_true(R.worst(mat(x.grad), gx, Sx, R.ACC, 1e-30) <= 1)
    assert.is_true(R.worst(mat(w.grad), gw, Sw, R.ACC, 1e-30) <= 1)
    local gb, Sb = { {} }, { {} }
    for n = 1, N do
      gb[1][n], Sb[1][n] = 0, 0
      for m = 1, M do gb[1][n] = gb[1][n] + gz[m][n]; Sb[1][n] = Sb[1][n] + math.abs(gz[m][n]) end
    end
    assert.is_true(R.worst({ b.grad:totable() }, gb, Sb, R.ACC, 1e-30) <= 1) -- the bias gradient: fp32 sums
    -- the same gradients in fp32 differ (the backward GEMMs did round)
    local x2, w2 = x:detach():clone(), w:detach():clone()
    x2.requires_grad, w2.requires_grad = true, true
    moe.linear(x2, w2, b:detach(), "relu"):backward(g)
    assert.is_true(maxabs(x.grad - x2.grad) > 0 and maxabs(w.grad - w2.grad) > 0)
  end)

  for _, case in ipairs { { "experts in parallel on the pool", { 4, 0, 5 } }, { "one expert with most rows", { 1, 0, 12 } } } do
    it("grouped_matmul forward and gradients match the reference, " .. case[1], function()
      moe.manual_seed(14)
      local counts, K, N = case[2], 19, 6
      local E, A = #counts, 0
      for _, c in ipairs(counts) do A = A + c end
      local x = moe.randn(A, K, { requires_grad = true })
      local w = moe.randn(E, K, N, { requires_grad = true })
      local b = moe.randn(E, N, { requires_grad = true })
      local g = moe.randn(A, N)
      local ct = moe.tensor(counts, { dtype = "int64" })
      local y = moe.grouped_matmul(x, w, b, ct, "bf16")
      y:backward(g)
      local xs, gs, bs, ys, gxs = mat(x), mat(g), mat(b), mat(y), mat(x.grad)
      local off = 0
      for e = 1, E do
        local we = mat(w:detach()[e])
        local gwe = mat(w.grad[e])
        if counts[e] > 0 then
          local xe, ge = R.rows(xs, off + 1, off + counts[e]), R.rows(gs, off + 1, off + counts[e])
          local ye, S = R.gemm(xe, we, bf16)
          with_bias(ye, S, bs[e])
          assert.is_true(R.worst(R.rows(ys, off + 1, off + counts[e]), ye, S, R.ACC, 1e-30) <= 1)
          local gx, Sx = R.gemm(ge, R.transpose(we), bf16)
          assert.is_true(R.worst(R.rows(gxs, off + 1, off + counts[e]), gx, Sx, R.ACC, 1e-30) <= 1)
          local gw, Sw = R.gemm(R.transpose(xe), ge, bf16)
          assert.is_true(R.worst(gwe, gw, Sw, R.ACC, 1e-30) <= 1)
        else
          assert.equal(0, maxabs(w.grad[e]))
        end
        off = off + counts[e]
      end
      -- without a bias, too
      local y2 = moe.grouped_matmul(x:detach(), w:detach(), ct, "bf16")
      local y3 = moe.grouped_matmul(x:detach(), w:detach(), ct)
      local d = mat(y2)
      local r, S = {}, {}
      off = 0
      for e = 1, E do
        if counts[e] > 0 then
          local ye, Se = R.gemm(R.rows(xs, off + 1, off + counts[e]), mat(w:detach()[e]), bf16)
          for i = 1, counts[e] do r[#r + 1] = ye[i]; S[#S + 1] = Se[i] end
        end
        off = off + counts[e]
      end
      assert.is_true(R.worst(d, r, S, R.ACC, 1e-30) <= 1)
      assert.is_true(maxabs(y2 - y3) > 0)
    end)
  end

  it("batched moe.matmul with a broadcast, transposed operand and its gradient", function()
    moe.manual_seed(15)
    local Bt, M, K, N = 2, 5, 23, 4
    local leaf = moe.randn(Bt, K, M, { requires_grad = true })
    local a = leaf:transpose(2, 3)                        -- [2, M, K], unit row stride
    local w = moe.randn(K, N, { requires_grad = true })   -- broadcast over the batch
    local g = moe.randn(Bt, M, N)
    local y = moe.matmul(a, w, "bf16")
    y:backward(g)
    local W = mat(w:detach())
    local gw_want, gw_S
    for i = 1, Bt do
      local ai, gi = mat(a:detach()[i]), mat(g[i])
      local yi, S = R.gemm(ai, W, bf16)
      assert.is_true(R.worst(mat(y[i]), yi, S, R.ACC, 1e-30) <= 1)
      local ga, Sa = R.gemm(gi, R.transpose(W), bf16)        -- [M, K]; the leaf's grad is its transpose
      assert.is_true(R.worst(R.transpose(mat(leaf.grad[i])), ga, Sa, R.ACC, 1e-30) <= 1)
      local gw, Sw = R.gemm(R.transpose(ai), gi, bf16)
      if not gw_want then gw_want, gw_S = gw, Sw
      else
        for k = 1, K do for n = 1, N do
          gw_want[k][n] = gw_want[k][n] + gw[k][n]; gw_S[k][n] = gw_S[k][n] + Sw[k][n]
        end end
      end
    end
    assert.is_true(R.worst(mat(w.grad), gw_want, gw_S, 2 * R.ACC, 1e-30) <= 1)
  end)

  it("a NaN stays in its row; float64 GEMMs ignore bf16 (they run in fp64)", function()
    local x = moe.randn(4, 8)
    x[{ 2, 3 }] = 0 / 0
    local y = moe.linear(x, moe.randn(8, 5), nil, nil, "bf16")
    for m = 1, 4 do
      for _, v in ipairs(y[m]:totable()) do
        if m == 2 then assert.is_true(v ~= v) else assert.is_true(v == v) end
      end
    end
    local x64, w64, b64 = moe.randn(6, 9, { dtype = "float64" }), moe.randn(9, 3, { dtype = "float64" }), moe.randn(3, { dtype = "float64" })
    assert.equal(0, maxabs(moe.linear(x64, w64, b64, nil, "bf16") - moe.linear(x64, w64, b64)))
    local c = moe.tensor({ 2, 4 }, { dtype = "int64" })
    local w3 = moe.randn(2, 9, 3, { dtype = "float64" })
    assert.equal(0, maxabs(moe.grouped_matmul(x64, w3, c, "bf16") - moe.grouped_matmul(x64, w3, c)))
  end)
end)

if not CHILD then
  describe("bf16 backends", function()
    local bin = os.getenv("MOELUA_BIN") or "build/moelua"
    local function info_under(env)
      local out = H.sh(("MOELUA_BF16=%s %s -e 'local h = moe.config().bf16; io.write(h.backend, \"\\t\", h.reason)'"):format(env, bin))
      return out:match("^([^\t]*)\t(.*)$")
    end
    local function run_reference(env)
      local out, err, rc = H.sh(("MOELUA_BF16=%s MOELUA_BF16_SPEC_CHILD=1 MOELUA_BF16_SPEC_EXPECT=%s %s /usr/bin/busted -o TAP --tags=reference spec/bf16_spec.lua")
        :format(env, env, bin))
      local ok, bad = 0, {}
      for line in out:gmatch("[^\n]+") do
        if line:match("^ok %d+") then ok = ok + 1 end
        if line:match("^not ok") then bad[#bad + 1] = line end
      end
      assert.are.same({}, bad, out .. err)
      assert.equal(0, rc, out .. err)
      assert.is_true(ok >= 9, out .. err)
    end

    it("emulate (MOELUA_BF16=emulate) passes the reference specs", function() run_reference("emulate") end)

    it("the oneDNN path's layouts, primitive cache and threading (MOELUA_BF16=onednn-f32) pass them", function()
      local b, why = info_under("onednn-f32")
      if b ~= "onednn-f32" then pending("oneDNN does not load here: " .. tostring(why)); return end
      run_reference("onednn-f32")
    end)

    it("oneDNN's bf16 matmul (MOELUA_BF16=onednn) passes them where it runs", function()
      local b, why = info_under("onednn")
      if b ~= "onednn" then
        assert.matches("emulated instead", why) -- the fallback says why
        pending("oneDNN's bf16 matmul does not run on this CPU: " .. tostring(why))
        return
      end
      run_reference("onednn")
    end)

    it("the choice is a function of cpuid and MOELUA_BF16", function()
      local choose = moe.core.bf16_choose
      local avx512 = { "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq" }
      local function with(list, extra)
        local out = {}
        for _, f in ipairs(list) do out[#out + 1] = f end
        for _, f in ipairs(extra) do out[#out + 1] = f end
        return out
      end
      assert.equal("emulate", (choose { "avx", "fma", "avx2" }))
      assert.equal("emulate", (choose(avx512)))
      assert.equal("onednn", (choose(with(avx512, { "avx512_bf16" }))))
      local b, why = choose(with(avx512, { "avx512_bf16", "amx_tile", "amx_bf16" }))
      assert.equal("onednn", b)
      assert.matches("AMX%-BF16", why)
      assert.equal("emulate", (choose(with(avx512, { "avx512_bf16" }), "emulate")))
      assert.equal("onednn", (choose({ "avx", "fma", "avx2" }, "onednn")))
      assert.equal("onednn-f32", (choose({ "avx", "fma", "avx2" }, "onednn-f32")))
      b, why = choose({ "avx2" }, "fast")
      assert.equal("emulate", b)
      assert.matches("ignored", why)
    end)

    it("moe.config() reports the backend and why", function()
      local cfg = moe.config()
      local h = cfg.bf16
      assert.is_string(h.reason)
      assert.is_true(#h.reason > 10)
      if not os.getenv("MOELUA_BF16") then -- the default: oneDNN where cpuid reports bf16 instructions
        if not h.cpu_bf16 then
          assert.equal("emulate", h.backend)
          assert.matches("neither AVX512%-BF16 nor AMX%-BF16", h.reason)
        elseif h.backend ~= "onednn" then
          assert.matches("emulated instead", h.reason) -- oneDNN missing or unable: the fallback says why
        end
      end
      assert.matches("bf16 GEMMs: " .. h.backend, tostring(cfg), 1, true)
      assert.equal("fp32", cfg.precision)
    end)
  end)
end

describe("moe.set_precision", function()
  after_each(function() moe.set_precision("fp32") end)

  it("returns the previous precision; get_precision reads it", function()
    assert.equal("fp32", moe.get_precision())
    assert.equal("fp32", moe.set_precision("bf16"))
    assert.equal("bf16", moe.get_precision())
    assert.equal("bf16", moe.set_precision("fp32"))
  end)

  it("refuses other values with an error naming moe.set_precision and the value, at the caller's line", function()
    for _, v in ipairs { "fp16", "BF16", 16, true } do
      local e = H.error_of(function() moe.set_precision(v) end)
      assert.matches("bf16_spec.lua:%d+: moe.set_precision: expected \"fp32\" or \"bf16\", got " ..
        (type(v) == "string" and ("\"" .. v .. "\"") or tostring(v)), e)
    end
    assert.matches("moe.set_precision: expected \"fp32\" or \"bf16\", got nil",
      H.error_of(function() moe.set_precision() end))
    assert.equal("fp32", moe.get_precision())
    assert.matches("linear: argument #5: unknown value 'fp16' %(one of: fp32, bf16%)",
      H.error_of(function() moe.linear(moe.randn(2, 3), moe.randn(3, 4), nil, nil, "fp16") end))
    assert.matches("grouped_matmul: argument #4: unknown value 'tf32'",
      H.error_of(function() moe.grouped_matmul(moe.randn(2, 3), moe.randn(1, 3, 4), moe.tensor({ 2 }, { dtype = "int64" }), "tf32") end))
    assert.matches("matmul: argument #3", H.error_of(function() moe.matmul(moe.randn(2, 3), moe.randn(3, 4), 1) end))
  end)
end)

describe("layers in bf16: the experts' GEMMs only", function()
  after_each(function() moe.set_precision("fp32") end)

  -- y in bf16 is close to fp32 (within 2% of its scale) but not equal
  local function close_not_equal(y16, y32, what)
    local d, s = maxabs(y16 - y32), maxabs(y32)
    assert.is_true(d > 0, what .. ": bf16 gave exactly the fp32 output")
    assert.is_true(d <= 0.02 * s, ("%s: bf16 differs from fp32 by %g (scale %g)"):format(what, d, s))
  end
  local function both(f)
    moe.set_precision("fp32")
    local a = { f() }
    moe.set_precision("bf16")
    local b = { f() }
    moe.set_precision("fp32")
    return a, b
  end

  it("MoeLayer: expert outputs close to fp32, the router's probabilities identical, gradients close", function()
    moe.manual_seed(21)
    local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 32 },
      router = nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2 },
      train_capacity_factor = 2.0 }
    local x = moe.randn(2, 16, 24)
    local a, b = both(function()
      layer:zero_grad()
      local y = layer(x)
      local probs = layer.last_plan.probs:detach():clone()
      y:square():sum():backward()
      return y:detach(), probs, layer.experts.intermediate_kernel.grad:clone(), layer.router.kernel.grad:clone()
    end)
    close_not_equal(b[1], a[1], "MoeLayer output")
    assert.equal(0, maxabs(b[2] - a[2]))                         -- the router ran in fp32
    close_not_equal(b[3], a[3], "expert kernel gradient")
    assert.is_true(maxabs(b[4] - a[4]) <= 0.05 * maxabs(a[4])) -- through the combine weights
  end)

  it("TabularMoELayer: output close to fp32, gates identical", function()
    moe.manual_seed(22)
    local layer = nn.TabularMoELayer { num_experts = 4, expert_units = 16 }
    local x = moe.randn(32, 12)
    local a, b = both(function() local y = layer(x); return y:detach(), layer.last_gates:clone() end)
    close_not_equal(b[1], a[1], "TabularMoELayer")
    assert.equal(0, maxabs(b[2] - a[2]))
  end)

  for _, opts in ipairs { { units = 4, num_experts = 8, num_tasks = 2 },
                          { units = 4, num_experts = 3, num_tasks = 2, expert_hidden_units = { 16 } },
                          { units = 4, num_experts = 5, num_tasks = 2, num_gates = 1 } } do
    it(("MMoE %s: task outputs close to fp32, gates identical"):format(opts.expert_hidden_units and "with hidden units"
        or opts.num_gates and "(one gate)" or ""), function()
      moe.manual_seed(23)
      local layer = nn.MMoE(opts)
      local x = moe.randn(64, 20)
      local a, b = both(function()
        local outs = layer(x)
        return outs[1]:detach(), outs[2]:detach(), layer.last_gates[1]:clone()
      end)
      close_not_equal(b[1], a[1], "MMoE task 1")
      close_not_equal(b[2], a[2], "MMoE task 2")
      assert.equal(0, maxabs(b[3] - a[3]))
    end)
  end

  it("Dense layers and the gate-only ops are unchanged (bit for bit)", function()
    moe.manual_seed(24)
    local d = nn.Dense { units = 7, activation = "relu" }
    local f = nn.GatedFeatureFusion {}
    local x = moe.randn(9, 5)
    local a, b = both(function() return d(x), f { x, x * 2 } end)
    assert.equal(0, maxabs(b[1] - a[1]))
    assert.equal(0, maxabs(b[2] - a[2]))
  end)
end)
