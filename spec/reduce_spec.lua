-- Reductions, scans and softmax against naive loops.
local moe = require "moe"
local H = require "helpers"

-- naive reduction of t over the dims in `dims` (list, 1-based) with f(list) -> value
local function reduce_ref(t, dims, f, keepdim)
  local shape = t:shape()
  local red = {}
  for _, d in ipairs(dims) do red[d] = true end
  local oshape, kshape = {}, {}
  for d = 1, #shape do
    kshape[d] = red[d] and 1 or shape[d]
    if not red[d] then oshape[#oshape + 1] = shape[d] end
  end
  local groups = {}
  local v = H.flat(t)
  for p = 0, H.numel(shape) - 1 do
    local idx = H.unravel(p, shape)
    local kidx = {}
    for d = 1, #shape do kidx[d] = red[d] and 1 or idx[d] end
    local key = H.ravel(kidx, kshape) + 1
    groups[key] = groups[key] or {}
    table.insert(groups[key], v[p + 1])
  end
  local out = {}
  for k = 1, H.numel(kshape) do out[k] = f(groups[k] or {}) end
  return out, keepdim and kshape or oshape
end

local function sum(l) local s = 0; for _, x in ipairs(l) do s = s + x end; return s end
local function mean(l) return sum(l) / #l end
local function var(l) local m = mean(l); local s = 0; for _, x in ipairs(l) do s = s + (x - m) ^ 2 end; return s / (#l - 1) end
local function lse(l) local m = -math.huge; for _, x in ipairs(l) do m = math.max(m, x) end
  local s = 0; for _, x in ipairs(l) do s = s + math.exp(x - m) end; return m + math.log(s) end
local function maxl(l) local m = -math.huge; for _, x in ipairs(l) do m = math.max(m, x) end; return m end
local function minl(l) local m = math.huge; for _, x in ipairs(l) do m = math.min(m, x) end; return m end
local function argmaxl(l) local b, bi = -math.huge, 0; for i, x in ipairs(l) do if x > b then b, bi = x, i end end; return bi end
local function prod(l) local s = 1; for _, x in ipairs(l) do s = s * x end; return s end

local cases = {
  sum = sum, mean = mean, var = var, std = function(l) return math.sqrt(var(l)) end,
  logsumexp = lse, prod = prod,
}

describe("reductions", function()
  setup(function() moe.manual_seed(2); math.randomseed(2) end)

  for name, f in pairs(cases) do
    it(name .. " over all, one and several dims, with keepdim, on every layout", function()
      for trial = 1, 8 do
        local nd = math.random(1, 4)
        local x = H.layout(H.random_shape(nd, 4), H.layouts[trial % 4 + 1])
        -- all dims
        local all = moe[name](x)
        assert.are.equal(0, all:dim())
        local want = reduce_ref(x, (function() local d = {} for i = 1, nd do d[i] = i end return d end)(), f)
        assert.is_true(math.abs(all:item() - want[1]) <= 1e-10 * math.max(1, math.abs(want[1])) or
          (want[1] ~= want[1] and all:item() ~= all:item()), name .. " all")
        -- one dim, positive and negative
        local d = math.random(1, nd)
        for _, keep in ipairs { false, true } do
          local w, s = reduce_ref(x, { d }, f, keep)
          assert.is_true(H.maxdiff(moe[name](x, d, keep), w, s) < 1e-10, name .. " dim " .. d)
          assert.is_true(H.maxdiff(x[name](x, d - nd - 1, keep), w, s) < 1e-10, name .. " negative dim")
        end
        -- several dims as a table
        if nd >= 2 then
          local w, s = reduce_ref(x, { 1, nd }, f, false)
          assert.is_true(H.maxdiff(moe[name](x, { 1, nd }), w, s) < 1e-10, name .. " dims {1,n}")
        end
      end
    end)
  end

  it("float32 sums accumulate accurately", function()
    local x = moe.full({ 1000000 }, 0.1)
    assert.is_true(math.abs(x:sum():item() - 100000) < 1)
  end)

  it("var and std take unbiased=false", function()
    local x = moe.tensor({ 1, 2, 3, 4 }, { dtype = "float64" })
    assert.are.equal(1.25, x:var(1, { unbiased = false }):item())
    assert.are.equal(5 / 3, x:var():item())
    assert.is_true(math.abs(x:std(1, false, false):item() - math.sqrt(1.25)) < 1e-15)
  end)

  it("max and min return values and 1-based indices along a dim", function()
    for trial = 1, 6 do
      local x = H.layout(H.random_shape(3, 5), H.layouts[trial % 4 + 1])
      local d = math.random(1, 3)
      local v, i = x:max(d)
      local wv, s = reduce_ref(x, { d }, maxl)
      local wi = reduce_ref(x, { d }, argmaxl)
      assert.is_true(H.maxdiff(v, wv, s) == 0)
      assert.is_true(H.maxdiff(i, wi, s) == 0)
      assert.are.equal("int64", i:dtype())
      assert.is_true(H.maxdiff(x:argmax(d), wi, s) == 0)
      local mv = x:min(d)
      assert.is_true(H.maxdiff(mv, (reduce_ref(x, { d }, minl))) == 0)
      assert.are.equal(maxl(H.flat(x)), x:max():item())
    end
    -- ties: the first occurrence
    local v, i = moe.tensor{ { 1, 3, 3 } }:max(2)
    assert.are.equal(2, i[1])
    assert.are.equal(3, v[1])
    -- NaN propagates
    assert.is_true(moe.tensor{ 1, 0 / 0, 2 }:max():item() ~= moe.tensor{ 1, 0 / 0, 2 }:max():item())
  end)

  it("max(a, b) with two tensors is elementwise", function()
    local a, b = moe.tensor{ 1, 5 }, moe.tensor{ 3, 2 }
    assert.are.same({ 3, 5 }, moe.max(a, b):totable())
  end)

  it("sum of ints is int64; mean of ints is float32; all/any of masks", function()
    local i = moe.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "int32" })
    assert.are.equal("int64", i:sum():dtype())
    assert.are.equal(10, i:sum():item())
    assert.are.equal("float32", i:mean():dtype())
    assert.are.equal(2.5, i:mean():item())
    assert.are.same({ false, true }, i:gt(2):all(2):totable())
    assert.are.same({ true, true }, i:gt(1):any(2):totable())
  end)

  it("zero-size reductions: sum is 0, mean NaN, max is an error", function()
    local z = moe.zeros(0, 3)
    assert.are.same({ 0, 0, 0 }, z:sum(1):totable())
    assert.are.same({}, z:sum(2):totable())
    assert.is_true(z:mean():item() ~= z:mean():item())
    assert.matches("max: cannot reduce over an empty dim", H.error_of(function() return z:max() end))
  end)
end)

describe("scans", function()
  it("softmax and log_softmax match the naive formula along any dim", function()
    for trial = 1, 8 do
      local nd = math.random(1, 3)
      local x = H.layout(H.random_shape(nd, 5), H.layouts[trial % 4 + 1]) * 3
      local d = math.random(1, nd)
      local shape = x:shape()
      local lse_ref, ks = reduce_ref(x, { d }, lse, true)
      local v = H.flat(x)
      local want_log, want = {}, {}
      for p = 0, #v - 1 do
        local idx = H.unravel(p, shape)
        idx[d] = 1
        local l = lse_ref[H.ravel(idx, ks) + 1]
        want_log[p + 1] = v[p + 1] - l
        want[p + 1] = math.exp(v[p + 1] - l)
      end
      assert.is_true(H.maxdiff(x:softmax(d), want, shape) < 1e-12)
      assert.is_true(H.maxdiff(x:log_softmax(d), want_log, shape) < 1e-12)
    end
    -- default dim is the last; huge inputs stay finite
    local big = moe.tensor{ { 1000, 1000 } }
    assert.are.same({ { 0.5, 0.5 } }, big:softmax():totable())
  end)

  it("cumsum and cumprod along a dim", function()
    local x = moe.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "float64" })
    assert.are.same({ { 1, 3, 6 }, { 4, 9, 15 } }, x:cumsum(2):totable())
    assert.are.same({ { 1, 2, 3 }, { 5, 7, 9 } }, x:cumsum(1):totable())
    assert.are.same({ { 1, 2, 6 }, { 4, 20, 120 } }, x:cumprod(2):totable())
    local xt = x:transpose()
    assert.are.same({ { 1, 4 }, { 3, 9 }, { 6, 15 } }, xt:cumsum(1):totable())
    assert.are.equal("int64", moe.tensor({ 1, 2 }, { dtype = "int32" }):cumsum(1):dtype())
  end)
end)
