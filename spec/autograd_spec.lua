-- Autograd: every differentiable op is gradchecked (central differences in
-- float64) on contiguous and strided inputs; then the tape's behaviour.
local moe = require "moe"
local H = require "helpers"
local gradcheck = moe.testing.gradcheck

local STRIDED = { "contiguous", "transposed", "narrowed" }

-- inputs away from kinks and poles: x in [0.5, 1.5] with random signs, or positive
local function input(shape, kind, positive)
  local base = H.layout(shape, kind)
  local m = moe.rand(shape, { dtype = "float64" }) + 0.5
  if not positive then m = m * (moe.rand(shape):gt(0.5):double() * 2 - 1) end
  base:copy_(m)
  return base
end

-- name -> {fn, shapes, positive}
local unary_ops = { "neg", "abs", "relu", "square", "exp", "tanh", "sigmoid", "gelu", "softplus",
  "log1p", "expm1" }
local positive_unary = { "log", "sqrt", "rsqrt" }

local cases = {}
for _, op in ipairs(unary_ops) do
  cases[#cases + 1] = { op, function(x) return x[op](x) end, { { 3, 4 } } }
end
for _, op in ipairs(positive_unary) do
  cases[#cases + 1] = { op, function(x) return x[op](x) end, { { 3, 4 } }, true }
end
local binary = {
  { "add", function(a, b) return a + b end }, { "sub", function(a, b) return a - b end },
  { "mul", function(a, b) return a * b end }, { "div", function(a, b) return a / b end },
  { "maximum", function(a, b) return a:maximum(b) end }, { "minimum", function(a, b) return a:minimum(b) end },
}
for _, b in ipairs(binary) do
  cases[#cases + 1] = { b[1], b[2], { { 3, 4 }, { 3, 4 } } }
  cases[#cases + 1] = { b[1] .. " broadcast", b[2], { { 3, 4 }, { 1, 4 } } }
end
cases[#cases + 1] = { "pow", function(a, b) return a:pow(b) end, { { 3, 4 }, { 3, 4 } }, true }
cases[#cases + 1] = { "pow scalar", function(a) return a ^ 2.5 end, { { 3, 4 } }, true }
cases[#cases + 1] = { "scalar pow", function(a) return 2 ^ a end, { { 3, 4 } } }
cases[#cases + 1] = { "scalar ops", function(a) return (2 - a) * 3 + a / 4 - 1 end, { { 3, 4 } } }
cases[#cases + 1] = { "scalar div", function(a) return 1 / a end, { { 3, 4 } } }
cases[#cases + 1] = { "clamp", function(a) return a:clamp(-1, 1) end, { { 3, 4 } } }
cases[#cases + 1] = { "where", function(a, b) return moe.where(a:gt(0), a, b) end, { { 3, 4 }, { 3, 4 } } }
for _, r in ipairs { "sum", "mean", "prod", "var", "std", "max", "min", "logsumexp" } do
  cases[#cases + 1] = { r .. " all", function(a) return a[r](a) end, { { 3, 4 } } }
  cases[#cases + 1] = { r .. " dim", function(a) return a[r](a, 2) end, { { 3, 4 } } }
  cases[#cases + 1] = { r .. " keepdim", function(a) return a[r](a, 1, { keepdim = true }) end, { { 3, 4 } } }
end
cases[#cases + 1] = { "prod with a zero", function(a) return (a * moe.tensor({ { 1, 0, 1, 1 } }):double()):prod(2) end, { { 3, 4 } } }
for _, s in ipairs { "softmax", "log_softmax", "cumsum", "cumprod" } do
  cases[#cases + 1] = { s, function(a) return a[s](a, 2) end, { { 3, 4 } } }
  cases[#cases + 1] = { s .. " dim 1", function(a) return a[s](a, 1) end, { { 3, 4 } } }
end
cases[#cases + 1] = { "cumprod with zeros", function(a)
  return (a * moe.tensor({ { 1, 0, 1, 1 }, { 1, 1, 0, 0 }, { 0, 1, 1, 1 } }):double()):cumprod(2) end, { { 3, 4 } } }
cases[#cases + 1] = { "matmul", function(a, b) return a:matmul(b) end, { { 3, 4 }, { 4, 2 } } }
cases[#cases + 1] = { "matmul batched", function(a, b) return a:matmul(b) end, { { 2, 3, 4 }, { 2, 4, 2 } } }
cases[#cases + 1] = { "matmul batch x matrix", function(a, b) return a:matmul(b) end, { { 2, 3, 4 }, { 4, 2 } } }
cases[#cases + 1] = { "matmul vector", function(a, b) return a:matmul(b) end, { { 3, 4 }, { 4 } } }
cases[#cases + 1] = { "matmul vector left", function(a, b) return a:matmul(b) end, { { 4 }, { 4, 3 } } }
cases[#cases + 1] = { "dot", function(a, b) return a:matmul(b) end, { { 4 }, { 4 } } }
cases[#cases + 1] = { "linear", function(a, w, b) return moe.linear(a, w, b) end, { { 3, 4 }, { 4, 2 }, { 2 } } }
cases[#cases + 1] = { "linear 3-d, no bias", function(a, w) return moe.linear(a, w) end, { { 2, 3, 4 }, { 4, 2 } } }
for _, act in ipairs { "relu", "sigmoid", "tanh" } do -- the activation fused into the op
  cases[#cases + 1] = { "linear + " .. act, function(a, w, b) return moe.linear(a, w, b, act) end, { { 3, 4 }, { 4, 2 }, { 2 } } }
end
cases[#cases + 1] = { "grouped_matmul", function(a, w, b)
  return moe.grouped_matmul(a, w, b, moe.tensor({ 2, 0, 3 }, { dtype = "int64" })) end, { { 5, 4 }, { 3, 4, 2 }, { 3, 2 } } }
cases[#cases + 1] = { "views", function(a)
  return a:reshape(12):view(2, 6):transpose(1, 2):narrow(1, 2, 3):select(2, 1):unsqueeze(1):squeeze(1) end, { { 3, 4 } } }
cases[#cases + 1] = { "permute", function(a) return a:permute(3, 1, 2) * moe.arange(1, 25):double():view(4, 2, 3) end, { { 2, 3, 4 } } }
cases[#cases + 1] = { "expand", function(a) return a:narrow(1, 1, 1):expand(5, 4) * moe.randn(5, 4):double() end, { { 3, 4 } } }
cases[#cases + 1] = { "contiguous clone", function(a) return a:contiguous():clone() * 2 end, { { 3, 4 } } }
-- through float32: a wide step keeps the rounding small against it
cases[#cases + 1] = { "to float32", function(a) return a:float():double() * 2 end, { { 3, 4 } }, false, { eps = 1e-2 } }
cases[#cases + 1] = { "gather", function(a) return a:gather(2, moe.tensor({ { 1, 1 }, { 4, 2 }, { 3, 3 } }, { dtype = "int64" })) end, { { 3, 4 } } }
cases[#cases + 1] = { "scatter_add", function(a, s)
  return a:scatter_add(2, moe.tensor({ { 1, 1 }, { 4, 2 }, { 3, 3 } }, { dtype = "int64" }), s) end, { { 3, 4 }, { 3, 2 } } }
cases[#cases + 1] = { "index_select", function(a) return a:index_select(1, moe.tensor({ 3, 1, 3 }, { dtype = "int64" })) end, { { 3, 4 } } }
cases[#cases + 1] = { "index_add", function(a, s)
  return a:index_add(1, moe.tensor({ 3, 1, 3 }, { dtype = "int64" }), s) end, { { 3, 4 }, { 3, 4 } } }
cases[#cases + 1] = { "topk values", function(a) return (a:topk(2, 2)) end, { { 3, 4 } } }
cases[#cases + 1] = { "sort values", function(a) return (a:sort(2, true)) end, { { 3, 4 } } }
cases[#cases + 1] = { "cat", function(a, b) return moe.cat({ a, b, a }, 2) end, { { 3, 4 }, { 3, 2 } } }
cases[#cases + 1] = { "stack", function(a, b) return moe.stack({ a, b }, 2) end, { { 3, 4 }, { 3, 4 } } }
cases[#cases + 1] = { "split and chunk", function(a)
  local p = a:split(2, 2)
  local c = a:chunk(3, 1)
  return p[1] * p[2] + c[2]:sum() end, { { 3, 4 } } }

describe("gradcheck of every op", function()
  for _, c in ipairs(cases) do
    local name, fn, shapes, positive, opts = c[1], c[2], c[3], c[4], c[5]
    for _, kind in ipairs(STRIDED) do
      it(name .. " (" .. kind .. ")", function()
        moe.manual_seed(7)
        local ins = {}
        for i, s in ipairs(shapes) do ins[i] = input(s, kind, positive) end
        assert.is_true(gradcheck(fn, ins, opts))
      end)
    end
  end
end)

describe("autograd", function()
  it("gradcheck catches a wrong gradient", function()
    -- floor has zero derivative, so a function whose backward is wrong would be caught:
    -- compare x*x against a "gradient" computed from a detached copy
    local msg = H.error_of(gradcheck, function(x) return x * x:detach() end, { moe.randn(3) })
    assert.matches("analytic .* vs numeric", msg)
  end)

  it("gradcheck checks the weights a layer builds on its first call", function()
    -- the weight's gradient is wrong (it is used detached): only a check that
    -- builds the layer before listing its parameters sees it
    local Bad = moe.nn.Module:extend("GradcheckBadSpec")
    function Bad:build(shape) self:add_weight("w", { shape[#shape] }, { initializer = "ones" }) end
    function Bad:forward(x) return x * self.w + x * self.w:detach() end
    local msg = H.error_of(gradcheck, Bad {}, { moe.randn(2, 3) })
    assert.matches("parameter 1 .*analytic .* vs numeric", msg)
    assert.is_true(gradcheck(moe.nn.Dense { units = 2 }, { moe.randn(2, 3) }))
  end)

  it("gradients accumulate until zeroed, and backward(grad) takes a seed", function()
    local x = moe.tensor({ 1, 2, 3 }, { requires_grad = true })
    local y = x * x
    y:backward(moe.tensor({ 1, 1, 1 }))
    assert.same({ 2, 4, 6 }, x.grad:totable())
    ;(x * 3):sum():backward()
    assert.same({ 5, 7, 9 }, x.grad:totable())
    x.grad = nil
    assert.is_nil(x.grad)
    ;(x:sum() * 2):backward()
    assert.same({ 2, 2, 2 }, x.grad:totable())
  end)

  it("a non-scalar output needs a gradient; shapes must match", function()
    local x = moe.randn(3, { requires_grad = true })
    assert.matches("non%-scalar output of shape %[3%]", H.error_of(function() (x * 2):backward() end))
    assert.matches("does not match", H.error_of(function() (x * 2):backward(moe.ones(4)) end))
  end)

  it("no_grad records nothing, and restores the mode after an error", function()
    local x = moe.randn(3, { requires_grad = true })
    local y = moe.no_grad(function() return x * 2 end)
    assert.is_false(y.requires_grad)
    assert.is_nil(y.grad_fn)
    pcall(moe.no_grad, function() error("boom") end)
    assert.is_true(moe.core.is_grad_enabled())
    assert.is_true((x * 2).requires_grad)
  end)

  it("detach shares storage and cuts the graph", function()
    local x = moe.randn(3, { requires_grad = true })
    local d = (x * 2):detach()
    assert.is_false(d.requires_grad)
    assert.is_true(d.is_leaf)
    local y = x * 1
    assert.is_true(y:detach():same_storage(y))
  end)

  it("the graph is freed after backward; a second backward is a clear error unless retained", function()
    local x = moe.randn(3, { requires_grad = true })
    local y = (x:exp() * x):sum()
    y:backward({ retain_graph = true })
    local g1 = x.grad:clone()
    y:backward()
    assert.is_true(H.maxdiff(x.grad, H.flat(g1 * 2), { 3 }) < 1e-6)
    assert.matches("already freed", H.error_of(function() y:backward() end))
  end)

  it("in-place writes into tensors that require grad are refused; saved tensors are version-checked", function()
    local x = moe.randn(3, { requires_grad = true })
    assert.matches("add_: in%-place operation on a tensor that requires grad", H.error_of(function() x:add_(1) end))
    assert.matches("fill_", H.error_of(function() x:fill_(1) end))
    local a = moe.randn(3)
    local y = (x * a):sum()
    a:mul_(2) -- a was saved by mul
    assert.matches("modified in place", H.error_of(function() y:backward() end))
    assert.matches("only float tensors", H.error_of(function() moe.ones(3, { dtype = "int64", requires_grad = true }) end))
  end)

  it("integer and comparison outputs carry no gradient; argmax too", function()
    local x = moe.randn(4, { requires_grad = true })
    assert.is_false(x:gt(0).requires_grad)
    assert.is_false(x:argmax().requires_grad)
    local v, i = x:topk(2)
    assert.is_true(v.requires_grad)
    assert.is_false(i.requires_grad)
  end)

  it("grad fields: grad_fn names the op, grad can be set with a matching tensor", function()
    local x = moe.randn(2, 2, { requires_grad = true })
    assert.equal("matmul", x:matmul(x).grad_fn)
    x.grad = moe.ones(2, 2)
    assert.equal(4, x.grad:sum():item())
    assert.matches("does not fit", H.error_of(function() x.grad = moe.ones(3) end))
    assert.matches("cannot set field", H.error_of(function() x.foo = 1 end))
  end)

  it("a long chain is freed without recursion (100k ops)", function()
    collectgarbage(); collectgarbage()
    local n0 = moe.core.live()
    do
      local x = moe.tensor(1.0, { requires_grad = true })
      local y = x
      for _ = 1, 100000 do y = y * 1.0 end
      y:backward()
      assert.equal(1, x.grad:item())
      y = x
      for _ = 1, 100000 do y = y + 0 end
      y = nil -- dropped without backward
    end
    collectgarbage(); collectgarbage()
    assert.equal(n0, (moe.core.live()))
  end)

  it("training for 10,000 steps keeps memory flat (RSS and live tensors)", function()
    local function rss_kb()
      local f = io.open("/proc/self/statm")
      local pages = f:read("*n"); pages = f:read("*n")
      f:close()
      return pages * 4
    end
    local nn = moe.nn
    moe.manual_seed(3)
    local model = moe.Sequential { nn.Dense { units = 32, activation = "relu" }, nn.Dense { units = 1 }, input_shape = { 16 } }
    model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = "mse" }
    local x, y = moe.randn(64, 16), moe.randn(64, 1)
    for _ = 1, 500 do model:train_on_batch(x, y) end
    collectgarbage(); collectgarbage()
    local r0, n0 = rss_kb(), moe.core.live()
    for _ = 1, 10000 do model:train_on_batch(x, y) end
    collectgarbage(); collectgarbage()
    local r1, n1 = rss_kb(), moe.core.live()
    assert.equal(n0, n1)
    -- (AddressSanitizer holds freed memory in quarantine, so RSS says nothing there)
    if not os.getenv("MOELUA_ASAN") then
      assert.is_true(r1 - r0 < 8 * 1024, ("RSS grew by %d kB"):format(r1 - r0))
    end
  end)
end)
