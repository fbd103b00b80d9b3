-- bench/gpu.lua: issue 15's GPU benchmarks, moelua's side (scripts/gpu_check.sh
-- runs it after the PyTorch peers bench/peers/torch_gpu_moe.py and
-- torch_gpu_census.py, on the same GPU, and prints the table side by side).
--
--   moelua bench/gpu.lua [--quick] [--json FILE] [--peers DIR] [--markdown FILE]
--
-- sparse MoE: nn.MoeLayer (TokensChooseMaskedRouter top-2, FeedForwardExperts
--   gelu, dropless: every one of the T*k pairs runs) forward + backward of
--   sum(y) at T=16384, H=1024, d_ff=4096, E=8 and E=64, with the experts' GEMMs
--   in fp32, tf32 (moe.cuda.set_precision) and bf16 (moe.set_precision: bf16
--   operands, fp32 accumulation and master weights; the router stays fp32).
--   Median of N synchronised steps after 2 warm-up steps.
--   expert TFLOP/s = 12 * T*k * H * d_ff / step time: two GEMMs forward
--   (2*A*H*d_ff each, A = T*k pairs), four backward (input and weight
--   gradients of both), the FFN's own FLOPs only (router, gather, scatter and
--   gelu are overhead on top).
--   dense: ONE cuBLAS GEMM (moe.matmul) of the same FLOPs, [T*k, H] x [H, 6*d_ff]
--   (2 * T*k * H * 6*d_ff = 12 * A * H * d_ff), same precision; the goal is
--   expert TFLOP/s >= 60% of its TFLOP/s.
-- census MMoE (499 inputs, 8 experts x 4 units, 2 tasks, towers of 8, Adam, BCE):
--   one fit{} epoch over 32,768 rows already on the device, batch 32 and 1024,
--   median of 3 epochs after one warm-up epoch; seconds per epoch, samples/s.
-- Every timed interval ends by reading a scalar of its result to the host
-- (:item()), which waits for the device's queue.
-- --quick: small sizes for a dry run (MOE_CUDA_EMU=1 build-emu/moelua bench/gpu.lua --quick).
local moe = require "moe"
local nn = moe.nn
local now = moe.now

local opts = { quick = false, json = nil, peers = nil, markdown = nil }
do
  local i = 1
  while arg and arg[i] do
    local a = arg[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--json" or a == "--peers" or a == "--markdown" then
      opts[a:sub(3)] = assert(arg[i + 1], a .. " needs a value"); i = i + 1
    else error("bench/gpu.lua: unknown option " .. a .. " (--quick, --json FILE, --peers DIR, --markdown FILE)", 0) end
    i = i + 1
  end
end

local function fail(msg) io.stderr:write("bench/gpu.lua: ", msg, "\n"); os.exit(1) end
if not moe.cuda.is_built() then fail("this moelua was built without the CUDA backend") end
if not moe.cuda.is_available() then
  fail(("no CUDA device (%s); MOE_CUDA_EMU=1 with the emulator build for a dry run"):format(tostring(moe.cuda.info().reason)))
end
local info = moe.cuda.info()
local results = { gpu = (info.devices and info.devices[1] and (info.devices[1].name or tostring(info.devices[1]))) or "?", quick = opts.quick, moe = {}, dense = {}, census = {} }

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end
-- runs f (which returns a device tensor) warm times, then n timed, synchronised
local function time_median(f, warm, n)
  for _ = 1, warm do f():sum():item() end
  local ts = {}
  for i = 1, n do
    local t0 = now()
    f():sum():item()
    ts[i] = now() - t0
  end
  return median(ts)
end

local precisions = { "fp32", "tf32", "bf16" }
local function set_precision(p)
  moe.cuda.set_precision(p == "tf32" and "tf32" or "fp32") -- the router's and dense layers' GEMMs
  moe.set_precision(p == "bf16" and "bf16" or "fp32")      -- the experts' GEMMs
end

-- ------------------------------------------------------------------ sparse MoE
local T, H, D, K = 16384, 1024, 4096, 2
local Es, N = { 8, 64 }, 5
if opts.quick then T, H, D, Es, N = 256, 64, 128, { 8 }, 2 end

local function moe_case(E, p)
  moe.manual_seed(1)
  local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = D },
    router = nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = K }, dropless = true }
  local x = moe.randn(1, T, H, { device = "cuda", requires_grad = true })
  layer:to("cuda")
  set_precision(p)
  local function step()
    local y = layer(x)
    y:sum():backward()
    local g = x.grad
    x.grad = nil
    layer:zero_grad()
    return g
  end
  local ok, t = pcall(time_median, step, 2, N)
  set_precision("fp32")
  if not ok then return { error = tostring(t) } end
  local A = layer.last_plan and layer.last_plan.token:numel() or T * K
  local flops = 12 * A * H * D
  return { s = t, tflops = flops / t / 1e12, pairs = A }
end

local function dense_case(p)
  local M, Nn = T * K, 6 * D
  local a = moe.randn(M, H, { device = "cuda" })
  local b = moe.randn(H, Nn, { device = "cuda" }) * (1 / math.sqrt(H))
  local old = moe.cuda.set_precision(p)
  local ok, t = pcall(time_median, function() return moe.matmul(a, b) end, 2, N)
  moe.cuda.set_precision(old)
  a, b = nil, nil
  collectgarbage()
  if not ok then return { error = tostring(t) } end
  return { s = t, tflops = 2 * M * H * Nn / t / 1e12, shape = ("%dx%dx%d"):format(M, H, Nn) }
end

for _, p in ipairs(precisions) do
  results.dense[p] = dense_case(p)
  for _, E in ipairs(Es) do
    local r = moe_case(E, p)
    r.E, r.precision = E, p
    results.moe[#results.moe + 1] = r
    collectgarbage()
    moe.cuda.empty_cache()
    io.stderr:write(("sparse MoE E=%d %s: %s\n"):format(E, p, r.error or ("%.4f s, %.1f TFLOP/s"):format(r.s, r.tflops)))
  end
end

-- ------------------------------------------------------------------ census MMoE
local rows_n = opts.quick and 2048 or 32768
local function census_case(batch)
  moe.manual_seed(1)
  local x = moe.Input { shape = { 499 } }
  local tasks = nn.MMoE { units = 4, num_experts = 8, num_tasks = 2 }(x)
  local outs = {}
  for i, name in ipairs { "a", "b" } do
    outs[name] = nn.Dense { units = 1, activation = "sigmoid", name = name }(nn.Dense { units = 8, activation = "relu" }(tasks[i]))
  end
  local model = moe.Model { inputs = x, outputs = outs }
  model:to("cuda")
  model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = "binary_crossentropy" }
  local xs = moe.randn(rows_n, 499, { device = "cuda" })
  local ys = { a = moe.rand(rows_n, 1, { device = "cuda" }):gt(0.5):float(),
    b = moe.rand(rows_n, 1, { device = "cuda" }):gt(0.5):float() }
  local where = "device"
  -- fit{} on data already on the device; where this build's fit cannot gather
  -- device rows, the data stays on the host and fit moves each batch (recorded)
  if not pcall(model.fit, model, { x = xs:narrow(1, 1, batch), y = { a = ys.a:narrow(1, 1, batch),
      b = ys.b:narrow(1, 1, batch) }, batch_size = batch, epochs = 1, verbose = 0 }) then
    xs, ys, where = xs:cpu(), { a = ys.a:cpu(), b = ys.b:cpu() }, "host"
  end
  local function epoch()
    local h = model:fit { x = xs, y = ys, batch_size = batch, epochs = 1, verbose = 0 }
    local l = h.history.loss[#h.history.loss] -- read on the host: the epoch's work is done
    return moe.tensor { tonumber(l) or 0 }
  end
  local ok, t = pcall(time_median, epoch, 1, opts.quick and 1 or 3)
  if not ok then return { error = tostring(t) } end
  return { epoch_s = t, samples_per_s = rows_n / t, rows = rows_n, data = where }
end
for _, b in ipairs { 32, 1024 } do
  results.census[tostring(b)] = census_case(b)
  local r = results.census[tostring(b)]
  io.stderr:write(("census MMoE batch %d: %s\n"):format(b, r.error or ("%.3f s/epoch (data on the %s)"):format(r.epoch_s, r.data)))
end

-- ------------------------------------------------------------------ report
local json = moe.io.json
local function read_json(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return (json.decode(s))
end
local peers = opts.peers and { moe = read_json(opts.peers .. "/torch_gpu_moe.json"),
  census = read_json(opts.peers .. "/torch_gpu_census.json") } or {}

local lines = {}
local function out(s) lines[#lines + 1] = s end
local function fmt(v, f) return type(v) == "number" and (f or "%.2f"):format(v) or "-" end
local function short(e) -- the message without its location and layer prefixes
  local m = tostring(e):gsub("\n.*", ""):gsub("^[^:]*:%d+: ", ""):gsub("^in layer .- of %w+ \"[^\"]*\": ", "")
  return m:sub(1, 140)
end
out(("GPU: %s%s"):format(results.gpu, opts.quick and " (--quick sizes)" or ""))
out("")
out(("sparse MoE fwd+bwd, T=%d H=%d d_ff=%d top-%d, dropless | moelua s | TFLOP/s | / dense | torch gather/scatter s | torch grouped_mm s | moelua vs gather/scatter"):format(T, H, D, K))
out("| --- | --- | --- | --- | --- | --- | --- |")
for _, r in ipairs(results.moe) do
  local d = results.dense[r.precision]
  local pm = peers.moe and peers.moe.moe and peers.moe.moe[("E%d_%s"):format(r.E, r.precision)] or {}
  local gs, gm = pm.gather_scatter or {}, pm.grouped_mm or {}
  if r.error then
    out(("| E=%d %s | error: %s | | | %s | %s | |"):format(r.E, r.precision, short(r.error), fmt(gs.s, "%.4f"), fmt(gm.s, "%.4f")))
  else
    out(("| E=%d %s | %.4f | %.1f | %s | %s | %s | %s |"):format(r.E, r.precision, r.s, r.tflops,
      d.tflops and ("%.0f%%"):format(100 * r.tflops / d.tflops) or "-",
      gs.s and ("%.4f"):format(gs.s) or short(gs.error or "-"), gm.s and ("%.4f"):format(gm.s) or short(gm.error or "-"),
      gs.s and ("%.2fx"):format(gs.s / r.s) or "-"))
  end
end
out("")
out("| dense GEMM, same FLOPs | moelua (moe.matmul) TFLOP/s | torch.mm TFLOP/s |")
out("| --- | --- | --- |")
for _, p in ipairs(precisions) do
  local d = results.dense[p]
  local pd = peers.moe and peers.moe.dense and peers.moe.dense[p] or {}
  out(("| %s %s | %s | %s |"):format(d.shape or "", p, d.error and short(d.error) or fmt(d.tflops, "%.4g"), fmt(pd.tflops, "%.4g")))
end
out("")
out(("| census MMoE, %d rows on the device | moelua s/epoch | samples/s | torch s/epoch | samples/s | moelua vs torch |"):format(rows_n))
out("| --- | --- | --- | --- | --- | --- |")
for _, b in ipairs { "32", "1024" } do
  local r = results.census[b]
  local pc = peers.census and peers.census[b] or {}
  out(("| batch %s%s | %s | %s | %s | %s | %s |"):format(b, r.data == "host" and " (moelua's data on the host: fit moved each batch)" or "", r.error and short(r.error) or fmt(r.epoch_s, "%.3f"),
    fmt(r.samples_per_s, "%.0f"), pc.epoch_s and ("%.3f"):format(pc.epoch_s) or short(pc.error or "-"),
    fmt(pc.samples_per_s, "%.0f"), (r.epoch_s and pc.epoch_s) and ("%.2fx"):format(pc.epoch_s / r.epoch_s) or "-"))
end
local text = table.concat(lines, "\n") .. "\n"
io.write(text)
if opts.markdown then
  local f = assert(io.open(opts.markdown, "w"))
  f:write(text)
  f:close()
end
if opts.json then
  local f = assert(io.open(opts.json, "w"))
  f:write(assert(moe.io.json_encode(results)))
  f:close()
end
local failed = 0
for _, r in ipairs(results.moe) do if r.error then failed = failed + 1 end end
for _, r in pairs(results.census) do if r.error then failed = failed + 1 end end
if failed > 0 then fail(("%d case(s) failed (see the table): %s"):format(failed, short((results.moe[1] or {}).error or ""))) end
