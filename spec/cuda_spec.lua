-- The CUDA device: what works on every machine, and what needs a device
-- (pending with "skipped: no CUDA device" elsewhere; scripts/test.sh counts them).
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"

describe("moe.cuda on any machine", function()
  it("reports the build and the devices without failing", function()
    assert.is_boolean(moe.cuda.is_available())
    assert.is_boolean(moe.cuda.is_built())
    local n = moe.cuda.device_count()
    assert.is_true(n >= 0 and n == math.floor(n))
    local stats = moe.cuda.memory_stats()
    assert.is_number(stats.live); assert.is_number(stats.cached)
    if n == 0 then assert.is_string(moe.cuda.info().reason) end
  end)
  it("a CPU tensor stays itself on the CPU; moving to a missing device is a clear error", function()
    local t = moe.arange(1, 7):view(2, 3)
    assert.equal("cpu", t:cpu():device())
    assert.same(t:totable(), t:to("cpu"):totable())
    if not moe.cuda.is_available() then
      assert.matches("cuda: no CUDA device is available", H.error_of(t.cuda, t))
      assert.matches("no CUDA device", H.error_of(nn.Dense { units = 2 }.cuda, moe.Sequential { nn.Dense { units = 2 },
        input_shape = { 3 } }))
    end
  end)
end)

describe("moe.cuda with a device", function()
  local function need_device()
    if not moe.cuda.is_available() then
      pending("skipped: no CUDA device")
      return false
    end
    return true
  end
  it("round-trips tensors of every dtype, contiguous or not", function()
    if not need_device() then return end
    for _, dt in ipairs { "float32", "float64", "int32", "int64", "bool" } do
      local t = moe.randn(4, 5):gt(0):to(dt)
      local back = t:cuda():cpu()
      assert.equal("cuda", t:cuda():device())
      assert.same(t:totable(), back:totable())
    end
    local s = moe.randn(6, 4):transpose(1, 2)
    assert.same(s:totable(), s:cuda():cpu():totable())
    assert.matches("%[moe%.Tensor float32 of size 4x6 on cuda%]$", tostring(s:cuda()))
  end)
  it("counts device memory through the caching allocator", function()
    if not need_device() then return end
    moe.cuda.empty_cache()
    local before = moe.cuda.memory_stats().live
    local t = moe.randn(1024, 1024):cuda()
    assert.is_true(moe.cuda.memory_stats().live >= before + 4 * 1024 * 1024)
    t = nil
    collectgarbage(); collectgarbage()
    assert.is_true(moe.cuda.memory_stats().cached >= 4 * 1024 * 1024)
    assert.is_true(moe.cuda.empty_cache() >= 4 * 1024 * 1024)
  end)
  it("ops without a CUDA kernel say so; a model moves its weights and back", function()
    if not need_device() then return end
    local t = moe.randn(2, 3):cuda()
    assert.matches("has no CUDA kernel yet", H.error_of(function() return t + t end))
    assert.same({ 2, 3 }, t:shape())
    local m = moe.Sequential { nn.Dense { units = 2 }, input_shape = { 3 } }
    local w = m:get_weights()
    m:cuda()
    assert.equal("cuda", m:parameters()[1]:device())
    assert.is_true(m:parameters()[1].requires_grad)
    m:cpu()
    for i, x in ipairs(m:get_weights()) do assert.same(w[i]:totable(), x:totable()) end
  end)
end)
