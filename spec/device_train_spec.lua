-- Training on the device (the CUDA backend; on the host emulator in make test):
-- random draws, moves recorded by autograd, fit/evaluate/predict moving their
-- batches, and every models/ script's --smoke run with --device cuda.
-- Without a device the specs are pending ("skipped: no CUDA device").
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"

local function need_device()
  if not moe.cuda.is_available() then
    pending("skipped: no CUDA device")
    return false
  end
  return true
end

local function max_diff(a, b)
  return (a:cpu():to("float64") - b:cpu():to("float64")):abs():max():item()
end

describe("random draws on the device", function()
  it("rand draws the host's values from the same Philox counters, bit for bit", function()
    if not need_device() then return end
    for _, dt in ipairs { "float32", "float64" } do
      for _, n in ipairs { 1, 3, 4, 5, 1001 } do
        moe.manual_seed(7)
        local h1, h2 = moe.rand(n, { dtype = dt }), moe.rand(2, n, { dtype = dt })
        moe.manual_seed(7)
        local d1, d2 = moe.rand(n, { dtype = dt, device = "cuda" }), moe.rand(2, n, { dtype = dt, device = "cuda" })
        assert.equal("cuda", d1:device())
        assert.same(h1:totable(), d1:cpu():totable())
        assert.same(h2:totable(), d2:cpu():totable()) -- the op counter advanced alike
      end
    end
  end)
  it("randn agrees with the host's draws to rounding", function()
    if not need_device() then return end
    for _, dt in ipairs { "float32", "float64" } do
      moe.manual_seed(3)
      local h = moe.randn(999, { dtype = dt })
      moe.manual_seed(3)
      local d = moe.randn(999, { dtype = dt, device = "cuda" })
      assert.is_true(max_diff(h, d) <= (dt == "float32" and 1e-6 or 1e-12))
      assert.is_true(h:std():item() > 0.9) -- not all zeros on either side
    end
  end)
  it("set_default_device draws there too, and a device option overrides it", function()
    if not need_device() then return end
    moe.manual_seed(11)
    local h = moe.rand(6)
    moe.set_default_device("cuda")
    local ok, err = pcall(function()
      moe.manual_seed(11)
      local d = moe.rand(6)
      assert.equal("cuda", d:device())
      assert.same(h:totable(), d:cpu():totable())
      assert.equal("cpu", moe.zeros(2, { device = "cpu" }):device())
      assert.equal("cuda", moe.zeros_like(d):device())
    end)
    moe.set_default_device("cpu")
    assert(ok, err)
  end)
  it("a bad device option names the function and the value", function()
    assert.matches("zeros: device must be \"cpu\" or \"cuda\", got gpu", H.error_of(moe.zeros, 2, { device = "gpu" }))
  end)
  it("dropout draws the same mask on the host and on the device", function()
    if not need_device() then return end
    local x = moe.randn(37, 11)
    moe.manual_seed(5)
    local yh = nn.dropout(x, 0.4, true)
    moe.manual_seed(5)
    local yd = nn.dropout(x:cuda(), 0.4, true)
    assert.equal("cuda", yd:device())
    assert.same(yh:totable(), yd:cpu():totable())
  end)
end)

describe("moves between devices under autograd", function()
  it("a move is recorded: the gradient comes back to the host leaf", function()
    if not need_device() then return end
    local w = moe.tensor({ 1, -2, 3 }, { requires_grad = true })
    local l = (w:cuda() * w:cuda()):sum()
    assert.equal("cuda", l:device())
    assert.equal(14, l:item()) -- item() on a device tensor that requires grad
    l:backward()
    assert.equal("cpu", w.grad:device())
    assert.same({ 2, -4, 6 }, w.grad:totable())
    -- and the other way: a device leaf, a host loss
    local v = moe.tensor({ 0.5, 2 }, { requires_grad = true }):cuda():detach():requires_grad_()
    local l2 = (v:cpu() * 3):sum()
    l2:backward()
    assert.equal("cuda", v.grad:device())
    assert.same({ 3, 3 }, v.grad:cpu():totable())
  end)
end)
