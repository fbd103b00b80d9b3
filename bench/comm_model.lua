-- bench/comm_model.lua: the communication model of bench/README.md ("How it
-- scales"), as a calculator, so that its numbers come from measured inputs.
--
--   build/moelua bench/comm_model.lua [--from build/bench-dist/dist_scale.tsv] [--compute-s S]
--       [--ranks-per-node 8] [--nic-gbps 200] [--net-latency-us 3] [--gpu-speedup 300] [--nvlink-GBps 300]
--
-- The step is the sparse MoE layer's forward + backward of bench/dist_scale.lua:
-- T tokens per rank, width H, d_ff F, E experts, top-k, values of `bytes` bytes.
--
-- Volumes (per rank, per step; uniform routing):
--   expert parallel: each token's k rows of H values go to their experts' ranks and
--     come back, in the forward pass and again in the backward pass (the mirror
--     exchange of their gradients): 4 all_to_alls, of which the fraction (W-1)/W
--     leaves the rank, so 4 k H (W-1)/W values per token (plus the router's H x E
--     gradient all-reduce and the per-expert counts, both tiny).
--   data parallel: a ring all-reduce of the P gradient values sends and receives
--     2 (W-1)/W P values per rank per step (P = E (2 H F + F + H) + H E + E for the layer).
-- Times: latency x messages + bytes / bandwidth, the bandwidth being the bus
-- bandwidth of nccl-tests (bench/dist.lua prints it), with nothing overlapped:
-- bench/dist.lua measured 0% of an all_reduce hidden behind compute on this VM.
-- Efficiency = compute / (compute + communication); the compute per rank is that
-- of one rank (measured), unchanged with W (weak scaling: T tokens per rank; at W
-- above E the layer has E = W experts, one per rank, so a rank's expert rows stay
-- T k on average).
--
-- The interconnect (assumed, stated in the output): R ranks per node, inside a
-- node the bus bandwidth measured between 2 ranks here (shared memory; for GPUs,
-- --nvlink-GBps), between nodes one InfiniBand HDR NIC (200 Gb/s = 25 GB/s) per
-- node that the node's R ranks share for all_to_all traffic; a ring all-reduce
-- crosses each NIC once per direction, so its bus bandwidth is
-- min(intra-node, NIC). Per-message latency: the 1 KiB all_reduce measured here
-- inside a node, --net-latency-us between nodes.
local M = {}

local opts = {
  T = 4096, H = 512, F = 2048, E = 8, k = 2, bytes = 4,
  ranks_per_node = 8, nic_gbps = 200, net_latency_us = 3,
  gpu_speedup = 300,   -- a GPU rank's compute, x the measured CPU rank's (scenario 2)
  nvlink_GBps = 300,   -- NVLink bus bandwidth inside a GPU node (scenario 2)
  compute_s = nil,     -- one rank's step: MEASURED (sparse_dp.1.step_s of make bench-dist)
  from = nil,
}

-- the 2-rank collectives of bench/README.md ("Collectives between processes",
-- 2026-12-02, the development VM): {bytes, all_reduce us, busbw GB/s, all_to_all us, busbw GB/s}
-- (--from replaces them with a make bench-dist run's)
local measured = {
  { 2 ^ 10, 1.4, 0.75, 5.0, 0.10 },
  { 2 ^ 16, 12.7, 5.16, 24.9, 1.32 },
  { 2 ^ 20, 179.5, 5.84, 1462.6, 0.36 },
  { 2 ^ 24, 10332.8, 1.62, 10975.9, 0.76 },
  { 2 ^ 26, 32721.9, 2.05, 21244.9, 1.58 },
}
local measured_from = "bench/README.md's 2-rank table (2026-12-02)"
local scaling = {} -- measured 2/1-rank ratios (from --from)

local function read_tsv(path)
  local t = {}
  for line in io.lines(path) do
    local k, v = line:match("^([^\t]+)\t(.*)$")
    if k then t[k] = tonumber(v) or v end
  end
  return t
end

local function parse_args(a)
  local i = 1
  while a[i] do
    local name = a[i]:match("^%-%-(.+)$")
    if not name then error("comm_model.lua: unexpected argument " .. a[i], 0) end
    name = name:gsub("%-", "_")
    if opts[name] == nil and name ~= "compute_s" and name ~= "from" then
      error("comm_model.lua: unknown option --" .. a[i]:sub(3), 0)
    end
    local v = a[i + 1]
    if v == nil then error("comm_model.lua: --" .. a[i]:sub(3) .. " needs a value", 0) end
    opts[name] = name == "from" and v or assert(tonumber(v), "comm_model.lua: --" .. name .. " takes a number")
    i = i + 2
  end
  if opts.from then
    local t = read_tsv(opts.from)
    local rows = {}
    for k in pairs(t) do
      local b = k:match("^collective%.(%d+)%.all_reduce_us$")
      if b then
        local p = "collective." .. b .. "."
        rows[#rows + 1] = { tonumber(b), t[p .. "all_reduce_us"], t[p .. "all_reduce_busbw"], t[p .. "all_to_all_us"],
          t[p .. "all_to_all_busbw"] }
      end
    end
    if #rows > 0 then
      table.sort(rows, function(x, y) return x[1] < y[1] end)
      measured, measured_from = rows, opts.from
    end
    opts.compute_s = opts.compute_s or t["sparse_dp.1.step_s"]
    -- the shape of the step measured (a --quick run's is small), and its count
    -- of all-reduced gradient values, a check of dp_params
    local shape = t["sparse_dp.1.shape"]
    if shape then
      local T, H, F, E, k = shape:match("T=(%d+) H=(%d+) d_ff=(%d+) E=(%d+) k=(%d+)")
      opts.T, opts.H, opts.F, opts.E, opts.k = tonumber(T), tonumber(H), tonumber(F), tonumber(E), tonumber(k)
      local P = tonumber(t["sparse_dp.1.params_reduced"])
      if P and P ~= M.dp_params(opts.H, opts.F, opts.E) then
        error(("comm_model.lua: the layer measured all-reduces %d values, the model counts %d"):format(P,
          M.dp_params(opts.H, opts.F, opts.E)), 0)
      end
    end
    for _, c in ipairs { "sparse_dp", "sparse_ep" } do
      local a1, a2 = tonumber(t["sparse_dp.1.tokens_per_s"]), tonumber(t[c .. ".2.tokens_per_s"])
      if a1 and a2 then scaling[c] = a2 / a1 end
    end
  end
end

-- the measured 2-rank bus bandwidth (GB/s) of collective col (3: all_reduce,
-- 5: all_to_all) at a message of `bytes`, log-interpolated between the sizes
-- measured (the end values beyond them)
local function busbw(col, bytes)
  local m = measured
  if bytes <= m[1][1] then return m[1][col] end
  for i = 2, #m do
    if bytes <= m[i][1] then
      local f = (math.log(bytes) - math.log(m[i - 1][1])) / (math.log(m[i][1]) - math.log(m[i - 1][1]))
      return m[i - 1][col] + f * (m[i][col] - m[i - 1][col])
    end
  end
  return m[#m][col]
end

local function human(b)
  if b >= 2 ^ 30 then return ("%.1f GiB"):format(b / 2 ^ 30) end
  if b >= 2 ^ 20 then return ("%.1f MiB"):format(b / 2 ^ 20) end
  if b >= 2 ^ 10 then return ("%.1f KiB"):format(b / 2 ^ 10) end
  return ("%d B"):format(b)
end

-- values per token (expert parallel) and per step (data parallel) at W ranks
function M.ep_values_per_token(k, H, W) return 4 * k * H * (W - 1) / W end
function M.dp_values_per_step(P, W) return 2 * (W - 1) / W * P end
function M.dp_params(H, F, E) return E * (2 * H * F + F + H) + H * E + E end -- experts, router (kernel, bias)

-- seconds of communication per step at W ranks, for scenario s
-- {intra_ar, intra_a2a (GB/s), nic (GB/s per node), lat_in, lat_net (s), R}
local function comm_times(W, s)
  local o = opts
  local R = s.R
  local lat = W <= R and s.lat_in or s.lat_net
  -- expert parallel: 4 all_to_alls of T k rows of H values; (min(W,R)-1)/W of
  -- them to ranks of the node, (W-min(W,R))/W over the NIC, shared by R ranks
  local rows_bytes = o.T * o.k * o.H * o.bytes
  local inside, across = (math.min(W, R) - 1) / W, (W - math.min(W, R)) / W
  local t_a2a = rows_bytes * inside / (s.intra_a2a(rows_bytes) * 1e9)
    + rows_bytes * across / (s.nic / R * 1e9)
    + s.lat_in * (math.min(W, R) - 1) + s.lat_net * (W - math.min(W, R))
  local router = (o.H * o.E + o.E) * o.bytes
  local t_small = 2 * math.ceil(math.log(W) / math.log(2)) * lat -- the counts' all_gather, forward and backward
    + 2 * (W - 1) * lat + 2 * (W - 1) / W * router / (s.intra_ar(router) * 1e9)
  local t_ep = 4 * t_a2a + t_small
  -- data parallel: a ring all-reduce of every gradient, in one piece
  local P = M.dp_params(o.H, o.F, o.E)
  local pbytes = P * o.bytes
  local bw = W <= R and s.intra_ar(pbytes) or math.min(s.intra_ar(pbytes), s.nic)
  local t_dp = 2 * (W - 1) * lat + M.dp_values_per_step(P, W) * o.bytes / (bw * 1e9)
  return t_ep, t_dp, 4 * rows_bytes * (W - 1) / W, M.dp_values_per_step(P, W) * o.bytes
end

function M.main(a)
  parse_args(a or {})
  local o = opts
  local P = M.dp_params(o.H, o.F, o.E)
  print(("communication model: the sparse MoE layer's fwd+bwd, T=%d tokens per rank, H=%d, d_ff=%d, E=%d, top-%d, "
    .. "%d-byte values"):format(o.T, o.H, o.F, o.E, o.k, o.bytes))
  print("per-token volume, expert parallel, 4 k H (W-1)/W values (x bytes):")
  local line = ("  %-12s"):format("H, k \\ W")
  local Ws = { 2, 8, 64, 256 }
  for _, W in ipairs(Ws) do line = line .. ("%12d"):format(W) end
  print(line)
  for _, hk in ipairs { { 512, 1 }, { 512, 2 }, { 1024, 2 }, { 4096, 2 } } do
    line = ("  %-12s"):format(("%d, %d"):format(hk[1], hk[2]))
    for _, W in ipairs(Ws) do line = line .. ("%12s"):format(human(M.ep_values_per_token(hk[2], hk[1], W) * o.bytes)) end
    print(line)
  end
  print(("data parallel, this layer (P = %d values): 2 (W-1)/W P x bytes per step, per token:"):format(P))
  line = ("  %-12s"):format("")
  for _, W in ipairs(Ws) do line = line .. ("%12s"):format(human(M.dp_values_per_step(P, W) * o.bytes / o.T)) end
  print(line)
  print()
  print(("measured inputs: collectives from %s; compute %s"):format(measured_from,
    o.compute_s and ("%.4g s per step (one rank, one thread)"):format(o.compute_s)
    or "MISSING (PLACEHOLDER: give --compute-s, or --from a make bench-dist run)"))
  if not o.compute_s then return end
  local lat_in = measured[1][2] * 1e-6 -- the 1 KiB all_reduce
  local nic = o.nic_gbps / 8
  local scenarios = {
    { name = ("CPU ranks as measured: %d per node, inside a node the 2-rank shared-memory bus bandwidth measured here, "
      .. "one %g Gb/s NIC per node, %g us between nodes"):format(o.ranks_per_node, o.nic_gbps, o.net_latency_us),
      compute = o.compute_s, R = o.ranks_per_node, nic = nic, lat_in = lat_in, lat_net = o.net_latency_us * 1e-6,
      intra_ar = function(b) return busbw(3, b) end, intra_a2a = function(b) return busbw(5, b) end },
    { name = ("GPU ranks (assumed): compute %gx the measured rank's, %d per node on NVLink (%g GB/s bus bandwidth, 3 us), "
      .. "one %g Gb/s NIC per node"):format(o.gpu_speedup, o.ranks_per_node, o.nvlink_GBps, o.nic_gbps),
      compute = o.compute_s / o.gpu_speedup, R = o.ranks_per_node, nic = nic, lat_in = 3e-6,
      lat_net = o.net_latency_us * 1e-6,
      intra_ar = function() return o.nvlink_GBps end, intra_a2a = function() return o.nvlink_GBps end },
  }
  for si, s in ipairs(scenarios) do
    print(("%d. %s; compute %.4g ms per step"):format(si, s.name, s.compute * 1e3))
    print(("  %5s | %10s %10s %7s | %10s %10s %7s %9s"):format("ranks", "EP bytes", "EP comm", "EP eff", "DP bytes",
      "DP comm", "DP eff", "DP ovlp"))
    for _, W in ipairs { 2, 8, 64, 256 } do
      local t_ep, t_dp, b_ep, b_dp = comm_times(W, s)
      print(("  %5d | %10s %8.2fms %6.1f%% | %10s %8.2fms %6.1f%% %8.1f%%"):format(W, human(b_ep), t_ep * 1e3,
        100 * s.compute / (s.compute + t_ep), human(b_dp), t_dp * 1e3, 100 * s.compute / (s.compute + t_dp),
        100 * math.min(1, s.compute / t_dp)))
    end
  end
  print("  (bytes: sent per rank per step; eff: compute / (compute + comm), nothing overlapped; DP ovlp: the "
    .. "all-reduce hidden entirely behind backward, the bound a bucketed reducer approaches)")
  if next(scaling) then
    local t_ep, t_dp = comm_times(2, scenarios[1])
    print(("check at 2 ranks on this machine: predicted efficiency EP %.1f%%, DP %.1f%%; measured (2/1-rank "
      .. "throughput / 2) EP %s, DP %s"):format(100 * o.compute_s / (o.compute_s + t_ep),
      100 * o.compute_s / (o.compute_s + t_dp),
      scaling.sparse_ep and ("%.1f%%"):format(50 * scaling.sparse_ep) or "-",
      scaling.sparse_dp and ("%.1f%%"):format(50 * scaling.sparse_dp) or "-"))
  end
end

if arg and arg[0] and arg[0]:match("comm_model%.lua$") then M.main(arg) end
return M
