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
    -- (the best this BLAS has: Debian's OpenBLAS 0.3.21 has no SapphireRapids kernels, and says so)
    assert.is_true(b.cpu_best_rank == 0 or b.kernels_rank >= b.blas_best_rank,
      ("runs %s, the CPU supports %s (%s)"):format(b.kernels, b.cpu_best, b.reason))
    if b.blas_best ~= b.cpu_best then
      assert.are.equal("moelua", b.chosen_by, b.reason)
      assert.is_true(b.blas_best_rank < b.cpu_best_rank and b.blas_best == b.kernels, b.reason)
      assert.is_truthy(b.missing:find(b.cpu_best, 1, true), b.missing)
      assert.is_truthy(b.reason:find("this BLAS has no " .. b.missing .. " kernels", 1, true), b.reason)
    else
      assert.are.equal("", b.missing)
    end
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
    -- the CPU's best, or (a BLAS built without it) the best one down that the BLAS has
    assert.are.equal(b.blas_best:lower(), kernels:lower(), out)
    assert.are.equal("moelua", by)
    assert.are.equal(b.blas_best, env)
    assert.matches("the BLAS picked Prescott, below what the CPU supports %(cpuid: " .. b.cpu_best .. "%); .*"
      .. "moelua set OPENBLAS_CORETYPE=" .. b.blas_best, out)
    if b.blas_best ~= b.cpu_best then assert.matches("this BLAS has no " .. b.cpu_best, out) end
    local v = sh("env -u OPENBLAS_CORETYPE -u MOELUA_BLAS_CHOSEN MOELUA_BLAS_PRETEND=Prescott " .. bin .. " --version")
    assert.matches("kernels: " .. b.blas_best .. " %(the BLAS picked Prescott", v)
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
print(b.reason)
print(b.kernels, b.chosen_by, worst)]]
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write("local moe = require 'moe'\n", code)
    f:close()
    local ran = 0
    for _, k in ipairs(candidates) do
      if rank[k] <= math.max(b.cpu_best_rank, 1) then
        -- OpenBLAS pinned: in auto mode a large GEMM may run on BLIS or oneDNN
        local out, ok = sh(("env -u MOELUA_BLAS_CHOSEN MOELUA_SGEMM=openblas OPENBLAS_CORETYPE=%s %s run %s"):format(k, bin, script))
        assert.is_true(ok, out)
        local kernels, by, err = out:match("(%S+)\t(%S+)\t(%S+)\n$")
        assert.are.equal("user", by, out)
        if rank[k] > b.blas_best_rank then -- a set this BLAS was built without: it says so, and runs one below
          assert.matches("this BLAS has no " .. k .. " kernels: it runs " .. kernels, out)
          assert.is_true(rank[kernels] < rank[k], out)
        else
          assert.are.equal(k:lower(), kernels:lower(), out) -- the user's setting is what runs
        end
        assert.is_true(tonumber(err) < 1e-5, k .. ": relative error " .. tostring(err))
        ran = ran + 1
      end
    end
    os.remove(script)
    assert.is_true(ran >= 1)
  end)
end)

describe("sgemm library choice", function()
  -- every GEMM shape that runs on the chosen library (multi-threaded float32):
  -- plain, A transposed, B transposed, both, linear's accumulating GEMM, and
  -- matmul's backward; against float64 (cblas_dgemm)
  local code = [[
local moe = require 'moe'
moe.manual_seed(1)
local worst = 0
local function check(got, want, scale)
  worst = math.max(worst, ((got:double() - want):abs() / (scale + 1e-30)):max():item())
end
for _, s in ipairs { { 300, 257, 290 }, { 513, 130, 384 }, { 1024, 96, 200 }, { 130, 300, 700 } } do
  local a0, b0 = moe.randn(s[2], s[1]), moe.randn(s[3], s[2])
  for _, tr in ipairs { { false, false }, { true, false }, { false, true }, { true, true } } do
    local a = tr[1] and a0:transpose(1, 2) or a0:transpose(1, 2):contiguous()
    local b = tr[2] and b0:transpose(1, 2) or b0:transpose(1, 2):contiguous()
    local ad, bd = a:double(), b:double()
    check(moe.matmul(a, b), ad:matmul(bd), ad:abs():matmul(bd:abs()))
  end
  -- the accumulating GEMM (beta = 1): linear with a bias, the output filled
  -- with the bias and the GEMM added onto it
  local x, w, bias = moe.randn(s[1], s[2]), moe.randn(s[2], s[3]), moe.randn(s[3])
  local xd, wd = x:double(), w:double()
  check(moe.linear(x, w, bias), xd:matmul(wd) + bias:double(), xd:abs():matmul(wd:abs()) + bias:double():abs())
  -- the backward's GEMMs
  local a = moe.randn(s[1], s[2], { requires_grad = true })
  local b = moe.randn(s[2], s[3], { requires_grad = true })
  local g = moe.randn(s[1], s[3])
  local loss = (moe.matmul(a, b) * g):sum() + (moe.matmul(a, b) * g):sum()
  loss:backward()
  local ad, bd, gd = a:detach():double(), b:detach():double(), g:double()
  check(a.grad, gd:matmul(bd:transpose(1, 2)) * 2, gd:abs():matmul(bd:abs():transpose(1, 2)) * 2)
  check(b.grad, ad:transpose(1, 2):matmul(gd) * 2, ad:abs():transpose(1, 2):matmul(gd:abs()) * 2)
end
local sg = moe.config().sgemm
local used = {}
for _, r in ipairs(sg.shapes) do used[r.library] = true end
local u = {}
for k in pairs(used) do u[#u + 1] = k end
table.sort(u)
print(sg.mode, #sg.shapes, table.concat(u, ","), worst)]]
  local script
  before_each(function()
    script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(code)
    f:close()
  end)
  after_each(function() os.remove(script) end)

  it("lists the libraries present, and why the others are missing", function()
    local sg = moe.config().sgemm
    assert.are.equal(4, #sg.libraries)
    assert.are.same({ "OpenBLAS", "BLIS", "oneDNN", "OpenBLAS-split" },
      { sg.libraries[1].name, sg.libraries[2].name, sg.libraries[3].name, sg.libraries[4].name })
    assert.is_true(sg.libraries[1].available)
    for _, l in ipairs(sg.libraries) do
      if not l.available then
        assert.is_truthy(l.why:find("Debian's package is", 1, true) or l.why:find("AddressSanitizer", 1, true)
          or l.why:find("one core", 1, true), l.why)
      end
    end
    assert.matches("sgemm: ", tostring(moe.config()))
    local v = sh(bin .. " --version")
    assert.matches("\nsgemm: ", v)
  end)

  it("every library present is correct on every layout (against float64), when pinned", function()
    local ran = 0
    for _, l in ipairs(moe.config().sgemm.libraries) do
      if l.available then
        local out, ok = sh(("MOELUA_SGEMM=%s %s run %s"):format(l.name:lower(), bin, script))
        assert.is_true(ok, out)
        local mode, n, used, err = out:match("(%S+)\t(%d+)\t(%S*)\t(%S+)\n$")
        assert.are.equal(l.name, mode, out)
        assert.are.equal("0", n, out) -- pinned: nothing is timed
        assert.is_true(tonumber(err) < 1e-5, l.name .. ": relative error " .. tostring(err))
        ran = ran + 1
      end
    end
    assert.is_true(ran >= 1)
  end)

  it("in auto mode times the first 3 shape classes, then keeps one library present, and stays correct", function()
    local out, ok = sh(("env -u MOELUA_SGEMM %s run %s"):format(bin, script))
    assert.is_true(ok, out)
    local mode, n, used, err = out:match("(%S+)\t(%d+)\t(%S*)\t(%S+)\n$")
    assert.are.equal("auto", mode, out)
    local avail = {}
    for _, l in ipairs(moe.config().sgemm.libraries) do avail[l.name] = l.available end
    if avail.BLIS or avail.oneDNN or avail["OpenBLAS-split"] then
      assert.are.equal("3", n, out) -- the script runs more than 3 classes: only the first 3 are timed
      for lib in used:gmatch("[^,]+") do assert.is_true(avail[lib], out) end
    else
      assert.are.equal("0", n, out)
    end
    assert.is_true(tonumber(err) < 1e-5, "relative error " .. tostring(err))
  end)

  it("in a process on one thread times nothing: every GEMM on OpenBLAS, the bits of a pinned OpenBLAS run", function()
    -- (models/moe_vs_mmoe.lua's one-thread workers and its one-process run must agree to the bit)
    local probe = os.tmpname()
    local f = assert(io.open(probe, "w"))
    f:write([[
local moe = require 'moe'
moe.manual_seed(3)
local y = moe.matmul(moe.randn(1500, 100), moe.randn(100, 128)) -- above the single-threaded GEMM sizes
local z = moe.matmul(moe.randn(520, 600), moe.randn(600, 140))
local h = 0
for _, t in ipairs { y, z } do for _, v in ipairs(t:reshape(t:numel()):totable()) do h = (h * 31 + math.floor(v * 2 ^ 20)) % 2 ^ 40 end end
print(#moe.config().sgemm.shapes, h)]])
    f:close()
    local one = sh(("env -u MOELUA_SGEMM MOE_NUM_THREADS=1 %s run %s"):format(bin, probe))
    local pinned = sh(("MOELUA_SGEMM=openblas MOE_NUM_THREADS=1 %s run %s"):format(bin, probe))
    local set = sh(("env -u MOELUA_SGEMM %s -e 'require(\"moe\").set_num_threads(1)' -e 'dofile(\"%s\")'"):format(bin, probe))
    os.remove(probe)
    local n, bits = one:match("^(%d+)\t(%d+)")
    assert.are.equal("0", n, one) -- nothing timed
    assert.are.equal(pinned:match("\t(%d+)"), bits, one .. pinned)
    assert.are.equal("0\t" .. bits, set:match("^(%d+\t%d+)"), set) -- set_num_threads(1) as MOE_NUM_THREADS=1
  end)

  it("chooses the library of least summed time over the classes timed, and again after sgemm_forget", function()
    core.sgemm_forget()
    local sg = moe.config().sgemm
    assert.is_nil(sg.library)
    assert.are.equal(0, #sg.shapes)
    local shapes = { { 300, 280, 310 }, { 520, 140, 600 }, { 200, 700, 260 }, { 400, 400, 400 } }
    for _, s in ipairs(shapes) do moe.matmul(moe.randn(s[1], s[2]), moe.randn(s[2], s[3])) end
    sg = moe.config().sgemm
    if sg.mode ~= "auto" or not (sg.libraries[2].available or sg.libraries[3].available or sg.libraries[4].available) then
      assert.are.equal(0, #sg.shapes)
      return
    end
    assert.are.equal(3, #sg.shapes) -- the fourth class is not timed
    local sum = {}
    for i, r in ipairs(sg.shapes) do
      assert.are.same({ shapes[i][1], shapes[i][3], shapes[i][2], false, false }, { r.m, r.n, r.k, r.ta, r.tb })
      assert.is_true(r.gflops.OpenBLAS > 0)
      for name, g in pairs(r.gflops) do sum[name] = (sum[name] or 0) + 2 * r.m * r.n * r.k / (g * 1e9) end
    end
    local fastest = "OpenBLAS"
    for name, t in pairs(sum) do if t < sum[fastest] then fastest = name end end
    -- the least summed time, unless OpenBLAS's is within 3% of it
    local want = sum[fastest] < 0.97 * sum.OpenBLAS and fastest or "OpenBLAS"
    assert.are.equal(want, sg.library)
    assert.are.equal(sg.library, sg.shapes[3].library)
    assert.is_truthy(tostring(moe.config()):find("sgemm: " .. sg.library .. ", the fastest of", 1, true))
    core.sgemm_forget()
    assert.is_nil(moe.config().sgemm.library)
    moe.matmul(moe.randn(300, 280), moe.randn(280, 310))
    assert.are.equal(1, #moe.config().sgemm.shapes)
  end)

  it("refuses an unknown MOELUA_SGEMM, naming it", function()
    local out = sh(("MOELUA_SGEMM=mkl %s -e 'print(1)' 2>&1; echo \"exit $?\""):format(bin))
    assert.matches("MOELUA_SGEMM=mkl: expected auto, openblas, blis, onednn or openblas%-split", out)
    assert.matches("exit 1\n$", out)
  end)
end)
