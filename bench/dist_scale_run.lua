-- make bench-dist: issue 17's benchmark in one run, on this machine.
--
--   build/moelua bench/dist_scale_run.lua [--quick]     (or MOE_BENCH_QUICK=1)
--
-- 1. bench/dist.lua under mpirun -np 2: all_reduce and all_to_all latency and
--    bandwidth between two ranks;
-- 2. each case of bench/dist_scale.lua under mpirun -np 1 and -np 2, one
--    thread per rank (MOE_DIST_THREADS=1), and PyTorch DDP's census MMoE step
--    (bench/peers/torch_ddp_mmoe.py, gloo, 1 and 2 processes of one thread) on
--    the same census rows; the 1- and 2-rank runs alternate, `MOE_BENCH_ROUNDS`
--    rounds of all of them (2; 1 with --quick), and each keeps its best;
-- 3. one table: each case's throughput at 1 and 2 ranks, the ratio, the goal;
--    moelua against DDP; then bench/comm_model.lua's prediction from the
--    figures just measured.
-- Every figure is also written as name<TAB>value lines to
-- $MOE_BENCH_OUT/dist_scale.tsv (default build/bench-dist/), for the README.
-- PYTHON names the interpreter of the torch peer (python3); a missing torch,
-- mpirun or MPI build prints why instead of a number.
local moe = require "moe"
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "bench"
local quick = os.getenv("MOE_BENCH_QUICK") ~= nil
for _, a in ipairs(arg or {}) do if a == "--quick" then quick = true end end
local python = os.getenv("PYTHON") or "python3"
local rounds = tonumber(os.getenv("MOE_BENCH_ROUNDS") or "") or (quick and 1 or 2)
local outdir = os.getenv("MOE_BENCH_OUT") or "build/bench-dist"
io.stdout:setvbuf("line")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function ok_status(a, _, c) return a == true or a == 0 or (a == nil and false) or c == 0 end
local bin = "build/moelua" -- this interpreter (the lowest index of arg, before a `run`): the same build runs the ranks
do
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end
  if arg and arg[i] then bin = arg[i] end
end
local is_root = io.popen("id -u"):read("*l") == "0"
local MPIRUN = "mpirun --oversubscribe --mca btl_vader_single_copy_mechanism none" .. (is_root and " --allow-run-as-root" or "")
-- (one thread per rank: the 1-rank run too, so that the ratio is that of the ranks alone)
local ENV = "env MOE_DIST_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "

-- the name<TAB>value lines of a command (numbers where they read as numbers),
-- and its other output (for a failure's message)
local function lines_of(cmd)
  local res, other = {}, {}
  local h = io.popen(cmd .. " 2>&1")
  for line in h:lines() do
    local k, v = line:match("^([%w_]+)\t(.*)$")
    if k then res[k] = tonumber(v) or v else other[#other + 1] = line end
  end
  local a, b, c = h:close()
  if not ok_status(a, b, c) and not res.skipped then
    res.error = ("failed: %s"):format((other[#other] or "no output"):sub(1, 160))
  end
  return res
end

local function moelua_case(np, case, env)
  return lines_of(("%s%stimeout -k 5 900 %s -np %d %s run %s/dist_scale.lua %s%s"):format(ENV, env or "", MPIRUN, np,
    q(bin), q(here), case, quick and " --quick" or ""))
end
-- the same case at 2 ranks with no communication at all (MOE_BENCH_SYNC=none):
-- what two ranks side by side reach on this machine (its cores' shared caches
-- and memory bandwidth), the ceiling of any 2-rank scaling here
local function ceiling(case) return function(np) return moelua_case(np, case, "MOE_BENCH_SYNC=none ") end end
-- and in lockstep: one barrier a step in place of the gradients' all-reduce
-- (MOE_BENCH_SYNC=barrier), what waiting for the slower rank alone costs: the
-- ceiling of any synchronous data-parallel step here, whatever the transport
local function lockstep(case) return function(np) return moelua_case(np, case, "MOE_BENCH_SYNC=barrier ") end end

-- ------------------------------------------------------------- preconditions
local why
if not ok_status(os.execute("command -v mpirun >/dev/null 2>&1")) then
  why = "mpirun is not installed (Debian's openmpi-bin; scripts/deps.sh installs it)"
elseif not moe.distributed.is_available() then
  why = "this build has no MPI backend (libopenmpi-dev was not found when it was built)"
end
if why then print("bench-dist: skipped: " .. why); return end
os.execute("mkdir -p " .. q(outdir))
local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. q(tmp))
local census = tmp .. "/census_train.safetensors"

do
  local cpu = "?"
  local f = io.open("/proc/cpuinfo")
  if f then cpu = f:read("*a"):match("model name%s*:%s*([^\n]+)") or cpu; f:close() end
  local nproc = io.popen("nproc"):read("*l")
  local mpi = io.popen("mpirun --version 2>/dev/null"):read("*l") or "?"
  local rev = io.popen("git rev-parse --short HEAD 2>/dev/null"):read("*l") or "?"
  print(("%s, commit %s%s"):format(os.date("!%Y-%m-%d %H:%M UTC"), rev, quick and ", --quick (not a measurement)" or ""))
  print(("CPU: %s, %s cores; %s; one thread per rank\n"):format(cpu, nproc, mpi))
end

-- ------------------------------------------------------------- 1. collectives
local collectives = {}
do
  print("collectives between 2 ranks (bench/dist.lua" .. (quick and " --quick" or "") .. "):")
  local h = io.popen(("%stimeout -k 5 600 %s -np 2 %s run %s/dist.lua%s 2>&1"):format(ENV, MPIRUN, q(bin), q(here),
    quick and " --quick" or ""))
  for line in h:lines() do
    print("  " .. line)
    -- "1 MiB    |  179.5  5.84 |  1462.6  0.36 |  181.3"
    local size, unit, ar, arbw, a2a, a2abw = line:match("^(%d+) (%a)iB%s*|%s*([%d.]+)%s+([%d.]+)%s*|%s*([%d.]+)%s+([%d.]+)")
    if size then
      local bytes = tonumber(size) * (unit == "M" and 2 ^ 20 or 2 ^ 10)
      collectives[#collectives + 1] = { bytes = bytes, ar_us = tonumber(ar), ar_busbw = tonumber(arbw),
        a2a_us = tonumber(a2a), a2a_busbw = tonumber(a2abw) }
    end
  end
  h:close()
  print()
end

-- ------------------------------------------------------------- 2. the cases
local export = lines_of(("%s run %s/dist_scale.lua export %s"):format(q(bin), q(here), q(census)))
if export.error then print("census export " .. export.error) end
local torch_ok = ok_status(os.execute(python .. " -c 'import torch' >/dev/null 2>&1"))
local function torch_case(np, batch)
  if not torch_ok then return { error = python .. " cannot import torch (pip install torch)" } end
  return lines_of(("timeout -k 5 600 %s %s/peers/torch_ddp_mmoe.py --world %d --batch %d --data %s%s"):format(python,
    q(here), np, batch, q(census), quick and " --quick" or ""))
end

-- {key, label, run(np), the throughput's name in the output, unit, goal of the 2/1 ratio}
local cases = {
  { "sparse_dp", "sparse MoE fwd+bwd, data parallel", function(np) return moelua_case(np, "sparse_dp") end,
    "tokens_per_s", "tokens/s", 1.8 },
  { "sparse_none", "  2 ranks sending nothing (this machine's ceiling)", ceiling("sparse_dp"), "tokens_per_s", "tokens/s",
    base = "sparse_dp", ceiling = true },
  { "sparse_ep", "sparse MoE fwd+bwd, expert parallel", function(np) return moelua_case(np, "sparse_ep") end,
    "tokens_per_s", "tokens/s", 1.8, base = "sparse_dp" }, -- (against the plain layer: what one process runs)
  { "mmoe_fit", "census MMoE fit{} epoch, batch 1024/rank", function(np) return moelua_case(np, "mmoe_fit") end,
    "samples_per_s", "samples/s", 1.6 },
  { "mmoe_step_1024", "census MMoE DP step, batch 1024/rank", function(np) return moelua_case(np, "mmoe_step 1024") end,
    "samples_per_s", "samples/s", 1.6 },
  { "step_none_1024", "  2 ranks sending nothing (this machine's ceiling)", ceiling("mmoe_step 1024"), "samples_per_s",
    "samples/s", base = "mmoe_step_1024", ceiling = true },
  { "step_barrier_1024", "  2 ranks in lockstep, a barrier a step, no data", lockstep("mmoe_step 1024"), "samples_per_s",
    "samples/s", base = "mmoe_step_1024", ceiling = true },
  { "ddp_step_1024", "  PyTorch DDP (gloo), same step", function(np) return torch_case(np, 1024) end,
    "samples_per_s", "samples/s" },
  { "mmoe_step_32", "census MMoE DP step, batch 32/rank", function(np) return moelua_case(np, "mmoe_step 32") end,
    "samples_per_s", "samples/s", 1.6 },
  { "step_none_32", "  2 ranks sending nothing (this machine's ceiling)", ceiling("mmoe_step 32"), "samples_per_s",
    "samples/s", base = "mmoe_step_32", ceiling = true },
  { "step_barrier_32", "  2 ranks in lockstep, a barrier a step, no data", lockstep("mmoe_step 32"), "samples_per_s",
    "samples/s", base = "mmoe_step_32", ceiling = true },
  { "ddp_step_32", "  PyTorch DDP (gloo), same step", function(np) return torch_case(np, 32) end,
    "samples_per_s", "samples/s" },
}
local res = {} -- res[key][np] = the best run's lines
for r = 1, rounds do
  for _, c in ipairs(cases) do
    res[c[1]] = res[c[1]] or {}
    for _, np in ipairs(c.ceiling and { 2 } or r % 2 == 1 and { 1, 2 } or { 2, 1 }) do -- (alternating which goes first)
      io.stderr:write(("bench-dist: round %d/%d, %s, %d rank%s\n"):format(r, rounds, c[1], np, np > 1 and "s" or ""))
      local o = c[3](np)
      local old = res[c[1]][np]
      if not old or (tonumber(o[c[4]]) or 0) > (tonumber(old[c[4]]) or 0) then res[c[1]][np] = o end
    end
  end
end
os.execute("rm -rf " .. q(tmp))

-- ------------------------------------------------------------- 3. the table
local tsv = {}
local function record(k, v) tsv[#tsv + 1] = ("%s\t%s"):format(k, tostring(v)) end
local function fmt(v) return type(v) == "number" and ("%.4g"):format(v) or "-" end
print(("%-44s %12s %12s %7s  %s"):format("2 ranks x 1 thread against 1 rank x 1 thread", "1 rank", "2 ranks", "2/1", "goal"))
local ratio = {}
for _, c in ipairs(cases) do
  local one, two = res[c.base or c[1]][1], res[c[1]][2] or {}
  local a, b = tonumber(one[c[4]]), tonumber(two[c[4]])
  local note = two.skipped or one.skipped or two.error or one.error
  if a and b then
    ratio[c[1]] = b / a
    print(("%-44s %12s %12s %6.2fx  %s"):format(c[2] .. " (" .. c[5] .. ")", fmt(a), fmt(b), b / a,
      c[6] and (">= %.1fx %s"):format(c[6], b / a >= c[6] and "met" or "NOT met") or ""))
  else
    print(("%-44s %s"):format(c[2], "n/a: " .. tostring(note)))
  end
  if c.base and res[c[1]][1] and tonumber(res[c[1]][1][c[4]]) then
    print(("  (1 rank: the plain layer; with expert_parallel on at 1 rank: %s %s)"):format(fmt(tonumber(res[c[1]][1][c[4]])), c[5]))
  end
  for np, o in pairs(res[c[1]]) do
    local keys = {}
    for k in pairs(o) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do record(("%s.%d.%s"):format(c[1], np, k), o[k]) end
  end
  if two.how and c[1] == "mmoe_fit" then print("  (" .. two.how .. ")") end
  if two.sync and c[1]:match("^sparse") then print("  (gradients: " .. two.sync .. ")") end
end
print()
print("against the ceilings (2 ranks side by side sending nothing: *_none; in lockstep by a barrier a step: *_barrier):")
for _, pair in ipairs { { "sparse_dp", "sparse_none" }, { "sparse_ep", "sparse_none" }, { "mmoe_step_1024", "step_none_1024" },
  { "mmoe_step_1024", "step_barrier_1024" }, { "mmoe_step_32", "step_none_32" }, { "mmoe_step_32", "step_barrier_32" } } do
  local a, c = ratio[pair[1]], ratio[pair[2]]
  if a and c then
    print(("  %-16s %.2fx of %-17s %.2fx: %3.0f%%"):format(pair[1], a, pair[2] .. "'s", c, 100 * a / c))
    record(pair[1] .. ".of_" .. pair[2], a / c)
  end
end
print()
print("moelua against PyTorch DDP, the same census MMoE data-parallel step:")
for _, B in ipairs { 1024, 32 } do
  local m, t = res["mmoe_step_" .. B], res["ddp_step_" .. B]
  local m2, t2 = tonumber(m[2].samples_per_s), tonumber(t[2].samples_per_s)
  if m2 and t2 then
    print(("  batch %4d/rank: at 2 ranks moelua %.3gx DDP's samples/s; scaling moelua %.2fx, DDP %.2fx"):format(B,
      m2 / t2, ratio["mmoe_step_" .. B] or 0 / 0, ratio["ddp_step_" .. B] or 0 / 0))
  else
    print(("  batch %4d/rank: n/a (%s)"):format(B, tostring(t[2].error or m[2].error)))
  end
end
print()
local f = io.open(outdir .. "/dist_scale.tsv", "w")
for _, c in ipairs(collectives) do
  local s = ("collective.%d."):format(c.bytes)
  tsv[#tsv + 1] = ("%sall_reduce_us\t%s\n%sall_to_all_us\t%s"):format(s, c.ar_us, s, c.a2a_us)
  tsv[#tsv + 1] = ("%sall_reduce_busbw\t%s\n%sall_to_all_busbw\t%s"):format(s, c.ar_busbw, s, c.a2a_busbw)
end
f:write(table.concat(tsv, "\n"), "\n")
f:close()
print("figures: " .. outdir .. "/dist_scale.tsv\n")

-- the communication model, from the figures of this run
os.execute(("%s %s/comm_model.lua --from %s"):format(q(bin), q(here), q(outdir .. "/dist_scale.tsv")))
