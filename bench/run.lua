-- make bench: moe.matmul against raw cblas_sgemm (same OpenBLAS, same process,
-- called through LuaJIT's FFI on preallocated buffers), and the per-call cost
-- of small ops from a Lua loop. Prints a table; results go in bench/README.md.
local moe = require "moe"
local ffi = require "ffi"

ffi.cdef [[
void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void *malloc(size_t); void free(void *);
]]
local ok, blas = pcall(ffi.load, "openblas")
if not ok then blas = ffi.load("libopenblas.so.0") end

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "bench"
package.path = here .. "/?.lua;" .. package.path
local best = require("timing").best

local quick = os.getenv("MOE_BENCH_QUICK") ~= nil
-- the machine and the kernel set every figure below ran with
do
  local cpu = "?"
  local f = io.open("/proc/cpuinfo")
  if f then cpu = f:read("*a"):match("model name%s*:%s*([^\n]+)") or cpu; f:close() end
  local b = moe.config().blas
  print(("CPU: %s (%s); BLAS kernels: %s, chosen by %s (%s)\n"):format(cpu, b.cpu_features, b.kernels, b.chosen_by, b.reason))
end
print(("%-22s %12s %12s %8s"):format("matmul (float32)", "moe GFLOP/s", "sgemm GFLOP/s", "ratio"))
local shapes = { { 256, 256, 256 }, { 1024, 1024, 1024 }, { 4096, 512, 2048 } }
for _, s in ipairs(shapes) do
  local M, K, N = s[1], s[2], s[3]
  local a, b = moe.randn(M, K), moe.randn(K, N)
  local A = ffi.cast("float *", ffi.C.malloc(M * K * 4))
  local B = ffi.cast("float *", ffi.C.malloc(K * N * 4))
  local C = ffi.cast("float *", ffi.C.malloc(M * N * 4))
  for i = 0, M * K - 1 do A[i] = (i % 7) * 0.1 end
  for i = 0, K * N - 1 do B[i] = (i % 5) * 0.1 end
  local flop = 2 * M * N * K
  local iters = math.max(1, math.floor(2e9 / flop))
  local reps = quick and 2 or 7
  local function raw() blas.cblas_sgemm(101, 111, 111, M, N, K, 1, A, K, B, N, 0, C, N) end
  local function mm() return moe.matmul(a, b) end
  raw(); mm()
  -- interleave the two so machine noise hits both alike
  local t_raw, t_moe = math.huge, math.huge
  for _ = 1, 3 do
    t_raw = math.min(t_raw, best(raw, iters, reps))
    t_moe = math.min(t_moe, best(mm, iters, reps))
  end
  print(("%-22s %12.1f %12.1f %8.3f"):format(("%dx%dx%d"):format(M, K, N), flop / t_moe / 1e9,
    flop / t_raw / 1e9, t_raw / t_moe))
  ffi.C.free(A); ffi.C.free(B); ffi.C.free(C)
end

print()
print(("%-36s %10s"):format("Lua-to-kernel overhead", "ns/call"))
local x, y = moe.randn(8), moe.randn(8)
local m1, m2 = moe.randn(32, 32), moe.randn(32, 32)
local n = quick and 100000 or 1000000
local A32 = ffi.cast("float *", ffi.C.malloc(32 * 32 * 4))
local B32 = ffi.cast("float *", ffi.C.malloc(32 * 32 * 4))
local C32 = ffi.cast("float *", ffi.C.malloc(32 * 32 * 4))
for i = 0, 32 * 32 - 1 do A32[i], B32[i] = i % 3, i % 5 end
local cases = {
  { "a + b (8 elements)", function() return x + y end },
  { "moe.tanh(a) (8 elements)", function() return moe.tanh(x) end },
  { "a:sum() (8 elements)", function() return x:sum() end },
  { "matmul 32x32", function() return moe.matmul(m1, m2) end },
  { "  peer: raw cblas_sgemm 32x32 (FFI)", function() blas.cblas_sgemm(101, 111, 111, 32, 32, 32, 1, A32, 32, B32, 32, 0, C32, 32) end },
  { "t:view(-1) (no copy)", function() return m1:view(-1) end },
}
-- PyTorch on CPU as a peer, when python3 has torch (it is not a dependency)
local peer = {}
local p = io.popen("python3 " .. here .. "/peers/torch_overhead.py " .. math.floor(n / 5) .. " 2>/dev/null")
if p then
  for line in p:lines() do
    local name, ns = line:match("^(.-)\t(%d+)$")
    if name then peer[name] = tonumber(ns) end
  end
  p:close()
end
local have_peer = next(peer) ~= nil
for _, c in ipairs(cases) do
  local t = math.huge
  for _ = 1, 3 do t = math.min(t, best(c[2], n, 1)) end
  local extra = ""
  if peer[c[1]] then extra = ("   torch %6d ns  (%.1fx)"):format(peer[c[1]], peer[c[1]] / (t * 1e9)) end
  print(("%-36s %10.0f%s"):format(c[1], t * 1e9, extra))
end
if not have_peer then print("(PyTorch not installed for python3: the torch peer column is skipped)") end

-- Training steps: forward, loss, backward (the C tape) and a fused Adam update,
-- against the same model and step in PyTorch on the CPU (same threads, same run)
print()
print(("%-36s %10s %10s %8s"):format("training step (Adam, BCE)", "moe us", "torch us", "ratio"))
local nn = moe.nn
local tpeer = {}
local steps = quick and 20 or 100
local tp = io.popen("python3 " .. here .. "/peers/torch_train_step.py " .. steps .. " 2>/dev/null")
if tp then
  for line in tp:lines() do
    local name, us = line:match("^(.-)\t([%d.]+)$")
    if name then tpeer[name] = tonumber(us) end
  end
  tp:close()
end
local function mlp_case(name, din, hidden, batch)
  moe.manual_seed(1)
  local layers = {}
  for _, h in ipairs(hidden) do layers[#layers + 1] = nn.Dense { units = h, activation = "relu" } end
  layers[#layers + 1] = nn.Dense { units = 1, activation = "sigmoid" }
  layers.input_shape = { din }
  local model = moe.Sequential(layers)
  model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = "binary_crossentropy" }
  local xb, yb = moe.randn(batch, din), moe.rand(batch, 1):gt(0.5):float()
  local function step() model:train_on_batch(xb, yb) end
  for _ = 1, 20 do step() end
  local t = math.huge
  for _ = 1, 3 do t = math.min(t, best(step, steps, 1)) end
  local pt = tpeer[name]
  print(("%-36s %10.1f %10s %8s"):format(name, t * 1e6, pt and ("%.1f"):format(pt) or "-",
    pt and ("%.2f"):format(pt / (t * 1e6)) or "-"))
end
mlp_case("mlp 7-32-16-1, batch 256", 7, { 32, 16 }, 256)
mlp_case("mlp 512-1024-1024-1, batch 512", 512, { 1024, 1024 }, 512)
if not next(tpeer) then print("(PyTorch not installed for python3: the torch column is skipped)") end

-- memory over a long run: RSS after 1,000 and after 10,000 more steps
local function rss_mb()
  local f = io.open("/proc/self/statm")
  local _ = f:read("*n")
  local res = f:read("*n")
  f:close()
  return res * 4096 / 2 ^ 20
end
do
  moe.manual_seed(2)
  local model = moe.Sequential { nn.Dense { units = 32, activation = "relu" }, nn.Dense { units = 1 }, input_shape = { 16 } }
  model:compile { optimizer = moe.optim.Adam {}, loss = "mse" }
  local xb, yb = moe.randn(64, 16), moe.randn(64, 1)
  for _ = 1, 1000 do model:train_on_batch(xb, yb) end
  collectgarbage(); collectgarbage()
  local r0 = rss_mb()
  local n_steps = quick and 2000 or 10000
  for _ = 1, n_steps do model:train_on_batch(xb, yb) end
  collectgarbage(); collectgarbage()
  print(("\nRSS over %d training steps: %.1f MiB -> %.1f MiB"):format(n_steps, r0, rss_mb()))
end

-- MoE layers (issue 4): each case in its own process, moelua and PyTorch, so
-- that each reports its own peak memory (VmHWM / ru_maxrss)
print()
print(("%-44s %12s %12s %8s"):format("MoE layers", "moelua", "torch", "ratio"))
local function run_case(cmd)
  local out = {}
  local h = io.popen(cmd .. " 2>/dev/null")
  if h then
    for line in h:lines() do
      local k, v = line:match("^(.-)\t([%d.]+)$")
      if k then out[k] = tonumber(v) end
    end
    h:close()
  end
  return out
end
local bin = arg and arg[-1] or "build/moelua"
local q = quick and " quick" or ""
local rows = {
  { "sparse", "sparse MoE fwd+bwd T=4096 H=512 dff=2048 E=8 k=2 (s)", "sparse_moe_s", true },
  { "mmoe32", "MMoE census train, batch 32 (samples/s)", "mmoe_32_samples_per_s" },
  { "mmoe1024", "MMoE census train, batch 1024 (samples/s)", "mmoe_1024_samples_per_s" },
  { "tabular", "TabularMoELayer fwd+bwd F=64 E=8 U=32 b=1024 (samples/s)", "tabular_samples_per_s" },
}
for _, r in ipairs(rows) do
  local m = run_case(("%s %s/moe.lua %s%s"):format(bin, here, r[1], q))
  local t = run_case(("python3 %s/peers/torch_moe.py %s%s"):format(here, r[1], q))
  local mv, tv = m[r[3]], t[r[3]]
  local ratio = (mv and tv) and (r[4] and tv / mv or mv / tv) or nil
  print(("%-44s %12s %12s %8s"):format(r[2], mv and ("%.4g"):format(mv) or "-", tv and ("%.4g"):format(tv) or "-",
    ratio and ("%.2f"):format(ratio) or "-"))
  if r[1] == "sparse" and m.sparse_moe_gflops then
    print(("%-44s %12.1f %12s"):format("  expert-FFN GFLOP/s", m.sparse_moe_gflops,
      t.sparse_moe_gflops and ("%.1f"):format(t.sparse_moe_gflops) or "-"))
    print(("%-44s %12.2f %12s"):format("  ... as a fraction of sgemm on the same shapes", m.sparse_moe_gflops / m.sgemm_gflops,
      t.sparse_moe_gflops and ("%.2f"):format(t.sparse_moe_gflops / m.sgemm_gflops) or "-"))
  end
  print(("%-44s %12s %12s"):format("  peak RSS (MiB)", m.peak_rss_mib and ("%.1f"):format(m.peak_rss_mib) or "-",
    t.peak_rss_mib and ("%.1f"):format(t.peak_rss_mib) or "-"))
end
print("(ratio: how many times faster moelua is; torch columns need python3 with torch)")

-- the trainer (issue 5): what fit{} costs per step beyond a bare train_on_batch loop
print()
local fo = run_case(("%s %s/moe.lua fit_overhead%s"):format(bin, here, q))
if fo.fit_us_per_step then
  print(("%-44s %12s"):format("trainer, MMoE census at batch 32", "us/step"))
  print(("%-44s %12.1f"):format("  fit{} (gather, step, loss and AUC, logs)", fo.fit_us_per_step))
  print(("%-44s %12.1f"):format("  bare train_on_batch loop", fo.bare_us_per_step))
  print(("%-44s %12.1f %7.1f%%"):format("  framework overhead per step", fo.fit_us_per_step - fo.bare_us_per_step,
    100 * (fo.fit_us_per_step - fo.bare_us_per_step) / fo.bare_us_per_step))
end

-- read_csv's cost in the number of columns (issue 12): the same fields as one
-- wide file (2 rows x 100k columns) and as a tall one (100k rows x 2 columns),
-- in the same run; a check of the column names that is quadratic in the number
-- of columns shows as a ratio far above 1 (it was 28 s against 0.1 s)
do
  local n = 100000
  local dir = os.tmpname()
  local wide, tall = dir .. ".wide.csv", dir .. ".tall.csv"
  local names, vals = {}, {}
  for i = 1, n do names[i] = "c" .. i; vals[i] = tostring(i) end
  local f = assert(io.open(wide, "w"))
  f:write(table.concat(names, ","), "\n", table.concat(vals, ","), "\n")
  f:close()
  f = assert(io.open(tall, "w"))
  f:write("a,b\n")
  for i = 1, n do f:write(names[i], ",", vals[i], "\n") end
  f:close()
  local function best_of(path)
    local b = math.huge
    for _ = 1, 3 do
      local t0 = moe.now()
      moe.data.read_csv(path)
      b = math.min(b, moe.now() - t0)
    end
    return b
  end
  local tw, tt = best_of(wide), best_of(tall)
  os.remove(wide); os.remove(tall); os.remove(dir)
  print()
  print(("%-44s %10s %10s %8s"):format("read_csv, 200k fields", "wide s", "tall s", "ratio"))
  print(("%-44s %10.3f %10.3f %8.2f"):format("  2 x 100k columns vs 100k x 2", tw, tt, tw / tt))
end
