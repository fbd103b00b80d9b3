-- The host emulator's own checks (src/cuda/emu): what it catches that a plain
-- run would not. moe.core.emu_probe(name) runs one misuse on purpose
-- (src/cuda/runtime.cu); the error it provokes is raised as an op's, named
-- "emu_probe". Pending elsewhere ("skipped: not the emulator build").
local moe = require "moe"
local H = require "helpers"

local emulator = moe.cuda.info().emulator and moe.core.emu_probe ~= nil
local function need_emulator()
  if not emulator then
    pending("skipped: not the emulator build")
    return false
  end
  return true
end
local probe = emulator and moe.core.emu_probe
local JUNK = -431602080         -- 0xCDCDCDCD as a float32: what a freed block reads
local SMEM_JUNK = -2.8735182e-16 -- 0xA5A5A5A5: a block's shared memory before it writes it

-- the emulator in a child process, with env set (and no core file): its output, and its exit status
local function child(env, code)
  local quoted = ("%q"):format((code:gsub("\n", " "))):gsub("%$", "\\$")
  local out, err, rc = H.sh("ulimit -c 0; " .. env .. " " .. os.getenv("MOELUA_BIN") .. " -e " .. quoted)
  return out .. err, rc
end

-- after a probe's error, the device still works
local function still_works()
  local x = moe.arange(1, 5):cuda()
  assert.same({ 2, 4, 6, 8 }, (x * 2):cpu():totable())
end

describe("the CUDA emulator", function()
  it("runs a correct launch (the probes' baseline)", function()
    if not need_emulator() then return end
    local r = probe("copy")
    assert.equal(64, #r)
    for i = 1, 64 do assert.equal(i, r[i]) end
  end)

  it("refuses a kernel's pointer argument that is not live device memory, as an error naming the op", function()
    if not need_emulator() then return end
    assert.matches("emu_probe: CUDA error: an illegal memory access was encountered %(emulator: k_probe_copy's pointer " ..
      "argument 1, 0x%x+, is a host pointer; the kernel did not run%)", H.error_of(probe, "host_pointer"))
    assert.matches("k_probe_copy's pointer argument 1, 0x%x+, is inside a block moelua freed",
      H.error_of(probe, "freed_block"))
    assert.matches("k_probe_copy's pointer argument 1, 0x%x+, is inside a freed block %(cudaFree%)",
      H.error_of(probe, "cudafree_block"))
    assert.matches("emu_probe: CUDA error: cudaMemcpy: invalid argument %(emulator: cudaMemcpy's destination of 256 " ..
      "bytes is a host pointer%)", H.error_of(probe, "memcpy_host_as_device"))
    still_works()
  end)

  it("a use after free reads junk, or crashes after a cudaFree (never a newer tensor's values)", function()
    if not need_emulator() then return end
    local r = probe("use_after_free") -- the pointer inside a struct: not checked as an argument
    assert.equal(64, #r)
    for i = 1, 64 do assert.equal(JUNK, r[i]) end
    local out, rc = child("MOE_CUDA_EMU=1", "moe.core.emu_probe('use_after_cudafree') print('read it')")
    assert.is_not.equal(0, rc)                -- PROT_NONE: a segfault, on purpose
    assert.is_nil(out:match("read it"))
  end)

  it("fills each block's dynamic shared memory with junk (a read before a write sees no other block's values)", function()
    if not need_emulator() then return end
    local r = probe("smem")
    assert.equal(64, #r)
    for i = 1, 64 do assert.is_true(math.abs(r[i] - SMEM_JUNK) < 1e-22, tostring(r[i])) end
  end)

  it("turns a bad launch into an error naming the op and the kernel, and goes on", function()
    if not need_emulator() then return end
    assert.matches("emu_probe: CUDA error: invalid configuration argument %(emulator: k_probe_copy launched with grid " ..
      "1,1,1, block 2048,1,1", H.error_of(probe, "bad_config"))
    assert.matches("emu_probe: CUDA error: unspecified launch failure %(emulator: k_probe_divergent: block %(0,0,0%): " ..
      "16 threads wait at __syncthreads while 16 have exited %(a divergent barrier%)%)", H.error_of(probe, "divergent_barrier"))
    assert.matches("k_probe_barrier: __syncthreads %(or a warp shuffle%) in a kernel launched with MOE_LAUNCH",
      H.error_of(probe, "barrier_in_plain_launch"))
    still_works()
  end)

  it("MOE_EMU_TWICE=1 runs each launch again in another order and names a kernel whose result depends on it", function()
    if not need_emulator() then return end
    assert.equal(1, #probe("race"))       -- a plain run does not notice
    for _, p in ipairs { "race", "thread_race" } do
      local out = child("MOE_CUDA_EMU=1 MOE_EMU_TWICE=1", ("print(pcall(moe.core.emu_probe, %q))"):format(p))
      assert.matches("false\t.-emu_probe: CUDA error: unspecified launch failure %(emulator: k_probe_" .. p ..
        ": wrote different bytes when run again with its blocks and threads in another order", out)
    end
    -- moelua's own kernels give the same bytes either way (barriers, shared memory, reductions, cuBLAS)
    local out = child("MOE_CUDA_EMU=1 MOE_EMU_TWICE=1", [[
      moe.manual_seed(3)
      local a, b = moe.randn(5, 70), moe.randn(70, 3)
      local g = a:cuda()
      local d = (g:softmax(2):cpu() - a:softmax(2)):abs():max():item()
      d = math.max(d, (g:sum(2):cpu() - a:sum(2)):abs():max():item(), (g:max(1):cpu() - a:max(1)):abs():max():item())
      d = math.max(d, (g:matmul(b:cuda()):cpu() - a:matmul(b)):abs():max():item())
      print("max difference", d)]])
    local d = tonumber(out:match("max difference\t(%S+)"))
    assert.is_truthy(d, out)
    assert.is_true(d < 1e-4)
  end)
end)
