-- The BLAS kernel set (issue 13): moelua picks the best one the CPU supports
-- when OpenBLAS picked a worse one, keeps a user's OPENBLAS_CORETYPE, says which
-- runs and why, and every kernel set the machine can run gives correct results.
local moe = require "moe"
local core = moe.core
local bin = os.getenv("MOELUA_BIN") or "build/moelua"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  local ok = p:close()
  return out, ok
end

describe("BLAS kernel choice", function()
  local avx512 = { "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq" }
  local function plus(list, ...)
    local out = {}
    for i, v in ipairs(list) do out[i] = v end
    for _, v in ipairs { ... } do out[#out + 1] = v end
    return out
  end

  it("is a pure function of (cpuid features, the BLAS's choice, the user's setting)", function()
    local amx = plus(avx512, "avx512_bf16", "amx_tile", "amx_bf16")
    -- the case that matters: AVX-512 + AMX that OpenBLAS does not recognise
    assert.are.equal("SapphireRapids", (core.blas_choose("intel", amx, "Prescott")))
    assert.are.equal("SkylakeX", (core.blas_choose("intel", avx512, "Prescott")))
    assert.are.equal("Cooperlake", (core.blas_choose("intel", plus(avx512, "avx512_bf16"), "Haswell")))
    assert.are.equal("Haswell", (core.blas_choose("intel", { "avx", "fma", "avx2" }, "Prescott")))
    assert.are.equal("Sandybridge", (core.blas_choose("intel", { "avx" }, "Nehalem")))
    assert.are.equal("Zen", (core.blas_choose("amd", { "avx", "fma", "avx2" }, "Prescott")))
    assert.are.equal("SkylakeX", (core.blas_choose("amd", avx512, "Zen"))) -- Zen 4
    -- kept: a right choice, a better-or-equal one, a user's setting, unknowns
    local pick, why = core.blas_choose("amd", { "avx", "fma", "avx2" }, "Zen")
    assert.is_nil(pick)
    assert.matches("best kernel set the CPU supports", why)
    assert.is_nil((core.blas_choose("intel", { "avx", "fma", "avx2" }, "Zen")))
    assert.is_nil((core.blas_choose("intel", avx512, "SapphireRapids")))
    pick, why = core.blas_choose("intel", amx, "Prescott", "Haswell")
    assert.is_nil(pick)
    assert.matches("user's choice is kept", why)
    assert.is_nil((core.blas_choose("other", avx512, "Prescott")))
    assert.is_nil((core.blas_choose("intel", avx512, "SomeFutureCore")))
    -- AVX2 without FMA is not Haswell
    assert.are.equal("Sandybridge", (core.blas_choose("intel", { "avx", "avx2" }, "Prescott")))
    assert.matches("unknown CPU feature avx1024", select(2, pcall(core.blas_choose, "intel", { "avx1024" }, "Zen")))
    -- a BLAS built without the kernel set asked for: the next one down, never down to the BLAS's own pick
    assert.are.equal("Cooperlake", core.blas_next_lower("intel", "SapphireRapids", "Prescott"))
    assert.are.equal("SkylakeX", core.blas_next_lower("intel", "Cooperlake", "Prescott"))
    assert.are.equal("Haswell", core.blas_next_lower("intel", "SkylakeX", "Prescott"))
    assert.is_nil(core.blas_next_lower("intel", "SkylakeX", "Haswell"))
    assert.are.equal("Zen", core.blas_next_lower("amd", "SkylakeX", "Prescott"))
  end)

  it("this machine runs a kernel set not below what its cpuid reports, and says so", function()
    local b = moe.config().blas
    if os.getenv("OPENBLAS_CORETYPE") and b.chosen_by == "user" then
      assert.matches("user's choice is kept", b.reason)
      return
    end
    assert.is_true(b.cpu_best_rank == 0 or b.kernels_rank >= b.cpu_best_rank,
      ("runs %s, the CPU supports %s (%s)"):format(b.kernels, b.cpu_best, b.reason))
    local out, ok = sh("env -u OPENBLAS_CORETYPE -u MOELUA_BLAS_CHOSEN " .. bin .. " --version")
    assert.is_true(ok, out)
    assert.matches("BLAS: OpenBLAS", out)
    assert.matches("kernels: " .. b.kernels, out)
    assert.matches("best kernel set: " .. b.cpu_best, out)
    assert.matches("kernels", tostring(moe.config()))
  end)

  it("the moelua host forces the better kernel set when the BLAS picked a worse one (once, before the BLAS runs)", function()
    local b = moe.config().blas
    if b.cpu_best_rank < 2 then return end -- a CPU with nothing better than SSE3 kernels
    local out, ok = sh("env -u OPENBLAS_CORETYPE -u MOELUA_BLAS_CHOSEN MOELUA_BLAS_PRETEND=Prescott " .. bin
      .. " -e 'local b = moe.config().blas; print(b.kernels, b.chosen_by, os.getenv(\"OPENBLAS_CORETYPE\")); print(b.reason)'")
    assert.is_true(ok, out)
    local kernels, by, env = out:match("^(%S+)\t(%S+)\t(%S+)\n")
    assert.are.equal(b.cpu_best:lower(), kernels:lower(), out)
    assert.are.equal("moelua", by)
    assert.are.equal(b.cpu_best, env)
    assert.matches("the BLAS picked Prescott, below what the CPU supports %(cpuid: " .. b.cpu_best .. "%); moelua set OPENBLAS_CORETYPE="
      .. b.cpu_best, out)
    local v = sh("env -u OPENBLAS_CORETYPE -u MOELUA_BLAS_CHOSEN MOELUA_BLAS_PRETEND=Prescott " .. bin .. " --version")
    assert.matches("kernels: " .. b.cpu_best .. " %(the BLAS picked Prescott", v)
  end)

  it("a user's OPENBLAS_CORETYPE wins, and every kernel set the CPU can run is correct (against float64)", function()
    local b = moe.config().blas
    local candidates = { "Prescott", "Nehalem", "Sandybridge", "Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids" }
    local rank = { Prescott = 1, Nehalem = 1, Sandybridge = 2, Haswell = 3, Zen = 3, SkylakeX = 4, Cooperlake = 5, SapphireRapids = 6 }
    local code = [[
local b = moe.config().blas
moe.manual_seed(1)
local worst = 0
for _, s in ipairs { { 64, 96, 80 }, { 300, 257, 129 }, { 1, 512, 7 } } do
  local a, c = moe.randn(s[1], s[2]), moe.randn(s[2], s[3])
  local got = a:matmul(c):double()
  local want = a:double():matmul(c:double())
  local scale = a:double():abs():matmul(c:double():abs())
  worst = math.max(worst, ((got - want):abs() / (scale + 1e-30)):max():item())
end
print(b.kernels, b.chosen_by, worst)]]
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write("local moe = require 'moe'\n", code)
    f:close()
    local ran = 0
    for _, k in ipairs(candidates) do
      if rank[k] <= math.max(b.cpu_best_rank, 1) then
        local out, ok = sh(("env -u MOELUA_BLAS_CHOSEN OPENBLAS_CORETYPE=%s %s run %s"):format(k, bin, script))
        assert.is_true(ok, out)
        local kernels, by, err = out:match("(%S+)\t(%S+)\t(%S+)\n$")
        assert.are.equal("user", by, out)
        assert.are.equal(k:lower(), kernels:lower(), out) -- the user's setting is what runs
        assert.is_true(tonumber(err) < 1e-5, k .. ": relative error " .. tostring(err))
        ran = ran + 1
      end
    end
    os.remove(script)
    assert.is_true(ran >= 1)
  end)
end)
