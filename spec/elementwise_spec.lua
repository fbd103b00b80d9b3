-- Elementwise ops against naive Lua loops: broadcasting, layouts, dtypes, zero-size dims.
local moe = require "moe"
local H = require "helpers"

local function erf(x) -- Abramowitz-Stegun 7.1.26 is too coarse; use a series/continued fraction
  local t = math.abs(x)
  local s
  if t < 3 then
    local sum, term, n = t, t, 0
    repeat
      n = n + 1
      term = term * (-t * t) / n
      local add = term / (2 * n + 1)
      sum = sum + add
    until math.abs(add) < 1e-17 * math.abs(sum)
    s = 2 / math.sqrt(math.pi) * sum
  else
    s = 1 - math.exp(-t * t) / (t * math.sqrt(math.pi)) * (1 - 1 / (2 * t * t) + 3 / (4 * t ^ 4) - 15 / (8 * t ^ 6))
  end
  return x < 0 and -s or s
end

local unary_ref = {
  neg = function(x) return -x end,
  abs = math.abs,
  exp = math.exp,
  log = math.log,
  sqrt = math.sqrt,
  tanh = function(x) local e = math.exp(2 * x); return x > 20 and 1 or (e - 1) / (e + 1) end,
  sigmoid = function(x) return 1 / (1 + math.exp(-x)) end,
  relu = function(x) return x > 0 and x or 0 end,
  gelu = function(x) return 0.5 * x * (1 + erf(x / math.sqrt(2))) end,
  softplus = function(x) return math.log(1 + math.exp(x)) end,
  square = function(x) return x * x end,
}
local positive_only = { log = true, sqrt = true }

local binary_ref = {
  add = function(a, b) return a + b end,
  sub = function(a, b) return a - b end,
  mul = function(a, b) return a * b end,
  div = function(a, b) return a / b end,
  maximum = math.max,
  minimum = math.min,
}

describe("elementwise", function()
  setup(function() moe.manual_seed(1); math.randomseed(1) end)

  for name, ref in pairs(unary_ref) do
    it(name .. " matches a naive loop on every layout, float32 and float64", function()
      for _, dt in ipairs { "float64", "float32" } do
        for _, layout in ipairs(H.layouts) do
          local x = H.layout(H.random_shape(math.random(1, 4)), layout, { dtype = dt })
          if positive_only[name] then x = x:abs() + 0.1 end
          local y = moe[name](x)
          local want = H.map(ref, x)
          assert.are.equal(dt, y:dtype())
          assert.is_true(H.maxdiff(y, want, x:shape()) < (dt == "float32" and 1e-5 or 1e-12),
            name .. " " .. dt .. " " .. layout)
          -- method form is the same function
          assert.is_true(H.maxdiff(x[name](x), want) < (dt == "float32" and 1e-5 or 1e-12))
        end
      end
    end)
  end

  for name, ref in pairs(binary_ref) do
    it(name .. " broadcasts like NumPy on random shapes and layouts", function()
      for trial = 1, 12 do
        local s = H.random_shape(math.random(1, 4))
        local s2 = {}
        -- drop leading dims and set some dims to 1 to broadcast
        local start = math.random(1, #s)
        for i = start, #s do s2[#s2 + 1] = math.random() < 0.4 and 1 or s[i] end
        local a = H.layout(s, H.layouts[trial % 4 + 1])
        local b = H.layout(s2, H.layouts[(trial + 1) % 4 + 1])
        if name == "div" then b = b:abs() + 0.5 end
        local want, shape = H.map(ref, a, b)
        assert.is_true(H.maxdiff(moe[name](a, b), want, shape) < 1e-12, name .. " a op b")
        local want2, shape2 = H.map(ref, b, a)
        assert.is_true(H.maxdiff(moe[name](b, a), want2, shape2) < 1e-12, name .. " b op a")
      end
    end)
  end

  it("Lua operators are the elementwise ops, with numbers on either side", function()
    local a = moe.randn(3, 4, { dtype = "float64" })
    local b = moe.randn(4, { dtype = "float64" })
    assert.is_true(H.maxdiff(a + b, H.map(function(x, y) return x + y end, a, b)) == 0)
    assert.is_true(H.maxdiff(a - b, H.map(function(x, y) return x - y end, a, b)) == 0)
    assert.is_true(H.maxdiff(a * b, H.map(function(x, y) return x * y end, a, b)) == 0)
    assert.is_true(H.maxdiff(a / b, H.map(function(x, y) return x / y end, a, b)) < 1e-15)
    assert.is_true(H.maxdiff(2 - a, H.map(function(x) return 2 - x end, a)) == 0)
    assert.is_true(H.maxdiff(a / 4, H.map(function(x) return x / 4 end, a)) == 0)
    assert.is_true(H.maxdiff(3 / a, H.map(function(x) return 3 / x end, a)) < 1e-15)
    assert.is_true(H.maxdiff(-a, H.map(function(x) return -x end, a)) == 0)
    assert.is_true(H.maxdiff(a:abs() ^ 0.5, H.map(function(x) return math.abs(x) ^ 0.5 end, a)) < 1e-15)
    assert.is_true(H.maxdiff(moe.pow(a, 2), H.map(function(x) return x * x end, a)) < 1e-15)
  end)

  it("comparisons return bool masks and where selects", function()
    local a = moe.randint(-3, 3, 4, 5, { dtype = "int64" })
    local b = moe.randint(-3, 3, 5, { dtype = "int64" })
    local cmp = {
      eq = function(x, y) return x == y end, ne = function(x, y) return x ~= y end,
      lt = function(x, y) return x < y end, le = function(x, y) return x <= y end,
      gt = function(x, y) return x > y end, ge = function(x, y) return x >= y end,
    }
    for name, f in pairs(cmp) do
      local m = a[name](a, b)
      assert.are.equal("bool", m:dtype())
      assert.are.equal(0, H.maxdiff(m, H.map(f, a, b), { 4, 5 }), name)
    end
    local x, y = moe.randn(4, 5, { dtype = "float64" }), moe.randn(1, 5, { dtype = "float64" })
    local m = a:gt(0)
    local w = moe.where(m, x, y)
    assert.are.equal(0, H.maxdiff(w, H.map(function(c, p, q) return c and p or q end, m, x, y)))
    local w0 = moe.where(m, x, 0)
    assert.are.equal(0, H.maxdiff(w0, H.map(function(c, p) return c and p or 0 end, m, x)))
    assert.are.equal("float64", w0:dtype())
  end)

  it("clamp takes min, max, either, or an options table", function()
    local x = moe.randn(6, 7, { dtype = "float64" })
    assert.are.equal(0, H.maxdiff(x:clamp(-0.5, 0.5), H.map(function(v) return math.min(0.5, math.max(-0.5, v)) end, x)))
    assert.are.equal(0, H.maxdiff(x:clamp(0), H.map(function(v) return math.max(0, v) end, x)))
    assert.are.equal(0, H.maxdiff(x:clamp(nil, 0), H.map(function(v) return math.min(0, v) end, x)))
    assert.are.equal(0, H.maxdiff(x:clamp { max = 1 }, H.map(function(v) return math.min(1, v) end, x)))
    local i = moe.tensor({ -5, 0, 5 }, { dtype = "int32" }):clamp(-2, 2)
    assert.are.same({ -2, 0, 2 }, i:totable())
    assert.are.equal("int32", i:dtype())
  end)

  it("promotes dtypes: int with float gives float, int / int gives float32, bool masks multiply", function()
    local i = moe.tensor({ 1, 2, 3 }, { dtype = "int64" })
    local f = moe.tensor({ 0.5, 0.5, 0.5 }, { dtype = "float64" })
    assert.are.equal("float64", (i + f):dtype())
    assert.are.equal("int64", (i + 1):dtype())
    assert.are.equal("float32", (i + 0.5):dtype())
    assert.are.same({ 1.5, 2.5, 3.5 }, (i + 0.5):totable())
    assert.are.equal("float32", (i / 2):dtype())
    assert.are.same({ 0.5, 1, 1.5 }, (i / 2):totable())
    local m = i:gt(1)
    assert.are.same({ 0, 1, 1 }, (m * moe.ones(3)):totable())
    assert.are.equal("float32", moe.exp(i):dtype())
  end)

  it("handles zero-size dims", function()
    local a = moe.zeros(0, 3)
    local b = moe.ones(3)
    local c = a + b
    assert.are.same({ 0, 3 }, c:shape())
    assert.are.equal(0, moe.exp(a):numel())
    assert.are.equal(0, (a:sum(1) - moe.zeros(3)):abs():max():item())
  end)

  it("in-place ops with a number work on every dtype and keep it", function()
    for _, dt in ipairs { "float32", "float64", "int32", "int64" } do
      for _, case in ipairs {
        { "add_", 2, function(x) return x + 2 end }, { "sub_", 2, function(x) return x - 2 end },
        { "mul_", 3, function(x) return x * 3 end }, { "maximum_", 1, function(x) return math.max(x, 1) end },
      } do
        local t = moe.tensor({ -1, 0, 4 }, { dtype = dt })
        local r = t[case[1]](t, case[2])
        assert.are.equal(t, r)
        assert.are.equal(dt, t:dtype())
        assert.are.same({ case[3](-1), case[3](0), case[3](4) }, t:totable(), dt .. " " .. case[1])
      end
    end
    local f = moe.tensor{ 1, 2 }
    f:div_(4)
    assert.are.same({ 0.25, 0.5 }, f:totable())
    local i = moe.tensor({ 5, 7 }, { dtype = "int64" })
    i:mul_(0.5) -- computed in float, cast back to the tensor's dtype
    assert.are.same({ 2, 3 }, i:totable())
    local z = moe.zeros(0, 4)
    z:add_(1)
    assert.are.same({ 0, 4 }, z:shape())
  end)

  it("in-place ops write into the tensor and its views", function()
    local a = moe.zeros(3, 4, { dtype = "float64" })
    local col = a:select(2, 2)
    col:add_(5)
    assert.are.same({ 0, 5, 0, 0 }, a[1]:totable())
    a:mul_(moe.tensor({ 1, 2, 3, 4 }, { dtype = "float64" }))
    assert.are.same({ 0, 10, 0, 0 }, a[3]:totable())
    local i = moe.tensor({ 1, 2 }, { dtype = "int64" })
    i:add_(3)
    assert.are.same({ 4, 5 }, i:totable())
    assert.are.equal("int64", i:dtype())
  end)
end)
