-- Seed 004 / the MMoE paper's synthetic experiment (Ma et al., KDD 2018, section 3
-- and figures 4 and 5): a shared-bottom model, a one-gate MoE (OMoE) and a
-- multi-gate MoE (MMoE) trained on two regression tasks whose correlation is set,
-- over many paired runs. A run is one dataset (its own u1, u2, alpha, beta and x)
-- and one initialisation; the three models of a run see the same data in the same
-- batch order, and the same run number at another correlation draws the same
-- u1, u2, alpha, beta and x, so that differences between models, and between
-- correlations, can be paired.
--
-- Models, as in the paper: OMoE and MMoE with 8 experts of one layer of 16 ReLU
-- units; the shared bottom one layer of 113 ReLU units; each task's tower one
-- layer of 8 ReLU units, then a linear output; MSE per task, summed. Adam, with
-- one learning rate per model (the same at every correlation) chosen from --lrs by
-- the mean final validation loss of --tune-runs runs at each correlation, on
-- datasets of their own (seeds apart from the reported runs); a run that diverged
-- counts as an infinite loss there. The data: x ~ N(0, I_100), w1 = c u1,
-- w2 = c (p u1 + sqrt(1 - p^2) u2), y_k = w_k.x + sum_i sin(alpha_i w_k.x + beta_i)
-- + N(0, 0.01), c = 0.3 and m = 5 sine terms by default (the seed's generator,
-- moe.datasets.synthetic).
--
-- Writes (PREFIX from --out):
--   PREFIX.csv         one row per (model, correlation, run): final test and
--                      validation loss, the mean of its test-loss curve, its lr
--   PREFIX_curves.csv  the test loss every --eval-every steps of every run
--   PREFIX_tuning.csv  the learning-rate runs
--   PREFIX.svg/.png    figure 4: mean test loss against steps, a panel per
--                      correlation, error bars of one standard error
--   PREFIX_hist.svg/.png  figure 5: histograms of the final test losses
--   PREFIX_final.svg/.png the final test loss against correlation (+- s.e.)
-- and prints the table, the paired differences and what they say.
--
--   moelua run models/moe_vs_mmoe.lua [--runs 50] [--steps 4000] [--jobs 0 (a worker per core)]
--                                      [--c 0.3] [--m 5] [--out build/moe_vs_mmoe] [--quick]
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local function number_list(lo, hi)
  return function(s)
    local n, seen = 0, {}
    for c in s:gmatch("[^,]+") do
      local v = tonumber(c)
      if not v or v < lo or v > hi then return false, ("'%s' is not a number in [%g, %g]"):format(c, lo, hi) end
      if seen[v] then return false, ("'%s' is in the list twice"):format(c) end
      seen[v], n = true, n + 1
    end
    if n == 0 then return false, "expected a comma-separated list of numbers" end
    return true
  end
end
local opts = cli.parse(arg, {
  usage = "moelua run models/moe_vs_mmoe.lua [options]",
  about = "Seed 004 / the MMoE paper's synthetic experiment: shared bottom, one-gate MoE and multi-gate MoE on\n"
    .. "two tasks of set correlation, over many paired runs; training curves, histograms, a table, CSVs.",
  { "runs", 50, "paired runs per correlation (each its own data and initialisation, shared by the three models)",
    min = 1 },
  { "steps", 4000, "Adam steps of each model", min = 1 },
  { "batch_size", 32, "rows per batch", min = 1 },
  { "n", 10000, "training rows of each run's dataset", min = 1 },
  { "n_eval", 2000, "rows of each run's validation set, and of its test set", min = 1 },
  { "eval_every", 0, "steps between the points of the test-loss curves (0: steps / 20)", min = 0 },
  { "correlations", "0.5,0.7,0.9,1.0", "the task correlations, comma-separated", metavar = "LIST",
    check = number_list(-1, 1) },
  { "lrs", "1e-4,1e-3,1e-2", "Adam learning rates each model's is chosen from", metavar = "LIST",
    check = number_list(1e-12, 10) },
  { "tune_runs", 5, "runs per (correlation, learning rate) that choose each model's learning rate "
    .. "(0: the first of --lrs)", min = 0 },
  { "models", "shared_bottom,one_gate_moe,multi_gate_moe", "the models, comma-separated: shared_bottom, "
    .. "one_gate_moe, multi_gate_moe, cgc, ple", metavar = "LIST", check = function(v)
      local known = { shared_bottom = true, one_gate_moe = true, multi_gate_moe = true, cgc = true, ple = true }
      local seen, n = {}, 0
      for m in v:gmatch("[^,]+") do
        if not known[m] then return false, ("'%s' is not one of them"):format(m) end
        if seen[m] then return false, ("'%s' is in the list twice"):format(m) end
        seen[m], n = true, n + 1
      end
      return n > 0, "expected a comma-separated list of models"
    end },
  { "c", 0.3, "the length of the tasks' weight vectors (the nonlinearity's reach)", type = "number", min = 0 },
  { "m", 5, "the number of sine terms", min = 0 },
  { "jobs", 0, "worker processes (0: one per core)", min = 0 },
  { "out", "build/moe_vs_mmoe", "where the results go (PREFIX.csv, PREFIX.svg, ...; directories made if missing)",
    metavar = "PREFIX" },
  cli.device_option(),
  { "quick", false, "a short run (3 runs, 200 steps, 1,000 rows, correlations 0.5 and 1.0, 1 tuning run, lrs "
    .. "1e-3 and 1e-2, unless given), for the tests" },
  { "smoke", false, "the same as --quick" },
})
if opts.quick or opts.smoke then -- (its sizes, where the command line does not give them)
  for k, v in pairs { runs = 3, steps = 200, n = 1000, n_eval = 500, correlations = "0.5,1.0", tune_runs = 1,
    lrs = "1e-3,1e-2" } do
    if not cli.given(opts, k) then opts[k] = v end
  end
end
local function list(s)
  local out = {}
  for c in s:gmatch("[^,]+") do out[#out + 1] = tonumber(c) end
  return out
end
local corrs, lrs = list(opts.correlations), list(opts.lrs)
local every = opts.eval_every > 0 and opts.eval_every or math.max(1, math.floor(opts.steps / 20))
local now = require("moe.trainer").now
local t0 = now()

local MODELS = {}
for m in opts.models:gmatch("[^,]+") do MODELS[#MODELS + 1] = m end
local present = {}
for _, m in ipairs(MODELS) do present[m] = true end
-- (CGC and PLE, torch-rechub's, with as many experts of 16 units as the mixtures: 2 per task and 4 shared a
-- level, BatchNorm in each; PLE has 2 levels and its own towers of 8 with a linear output)
local builders = {
  shared_bottom = function() return nn.SharedBottom { units = 113, num_tasks = 2 } end,
  one_gate_moe = function() return nn.OMoE { units = 16, num_experts = 8, num_tasks = 2 } end,
  multi_gate_moe = function() return nn.MMoE { units = 16, num_experts = 8, num_tasks = 2 } end,
  cgc = function() return nn.CGC { n_expert_specific = 2, n_expert_shared = 4, expert_params = { dims = { 16 } },
    num_tasks = 2 } end,
  ple = function() return nn.PLE { n_level = 2, n_expert_specific = 2, n_expert_shared = 4,
    expert_params = { dims = { 16 } }, tower_params_list = { { dims = { 8 } }, { dims = { 8 } } },
    task_types = { "regression", "regression" } }, true end,
}
local TUNE_SEED = 100000 -- the learning-rate runs' datasets: apart from the reported runs 1..runs

local function build_model(name, dim)
  local x = moe.Input { shape = { dim } }
  local layer, towered = builders[name]()
  local tasks = layer(x)
  local outputs = {}
  for i, t in ipairs { "y1", "y2" } do
    outputs[t] = towered and tasks[i] or nn.Dense { units = 1, name = t }(nn.Dense { units = 8, activation = "relu" }(tasks[i]))
  end
  return moe.Model { inputs = x, outputs = outputs, name = name }
end

-- one run's data: rows 1..n train, then n_eval validation, then n_eval test
local function dataset(seed, corr)
  local syn = moe.datasets.synthetic { n = opts.n + 2 * opts.n_eval, correlation = corr, seed = seed, c = opts.c,
    m = opts.m }
  local function part(from, count)
    return { x = syn.x:narrow(1, from, count), y = { y1 = syn.y.y1:narrow(1, from, count),
      y2 = syn.y.y2:narrow(1, from, count) } }
  end
  return { train = part(1, opts.n), val = part(opts.n + 1, opts.n_eval), test = part(opts.n + opts.n_eval + 1,
    opts.n_eval), dim = syn.x:size(2) }
end

-- trains one model for opts.steps steps; its test loss every `every` steps (and at 0)
local function train(name, d, seed, lr)
  moe.manual_seed(seed)
  local model = build_model(name, d.dim)
  model:to(opts.device)
  model:compile { optimizer = moe.optim.Adam { lr = lr }, loss = "mse" }
  local function loss_on(part) return model:evaluate { x = part.x, y = part.y, batch_size = 4096 }.loss end
  local curve = { { 0, loss_on(d.test) } }
  local step = 0
  local cb = { on_batch_end = function(self)
    step = step + 1
    if step % every == 0 or step == opts.steps then curve[#curve + 1] = { step, loss_on(d.test) } end
    if step >= opts.steps then rawset(self.model, "stop_training", true) end
  end }
  local nb = math.ceil(opts.n / opts.batch_size)
  local h = model:fit { x = d.train.x, y = d.train.y, epochs = math.ceil(opts.steps / nb),
    batch_size = opts.batch_size, verbose = 0, seed = seed, callbacks = { cb } }
  local diverged = h.stopped ~= nil -- (a non-finite loss or weights: fit went back to the last finite weights)
  -- the final test loss: the curve's last point (measured after the last step), unless fit changed the weights since
  local test = diverged and loss_on(d.test) or curve[#curve][2]
  if diverged then -- stopped at a non-finite loss: the rest of its curve is where it stopped
    local last = curve[#curve][1]
    for s = (math.floor(last / every) + 1) * every, opts.steps, every do curve[#curve + 1] = { s, test } end
    if curve[#curve][1] ~= opts.steps then curve[#curve + 1] = { opts.steps, test } end
    if last == opts.steps then curve[#curve][2] = test end -- (weights reset after the last step: its loss now)
  end
  local area = 0
  for i = 2, #curve do area = area + curve[i][2] end
  return { val = loss_on(d.val), test = test, curve = curve, curve_mean = area / (#curve - 1),
    diverged = diverged, params = model:count_params() }
end

-- the work: units {phase, seed, corr}, each training every model at its learning rates
local function units_of(phase)
  local out = {}
  local n = phase == "tune" and opts.tune_runs or opts.runs
  for r = 1, n do
    for _, c in ipairs(corrs) do out[#out + 1] = { phase = phase, seed = (phase == "tune" and TUNE_SEED or 0) + r, corr = c } end
  end
  return out
end

local function fmt_row(phase, name, u, lr, r)
  return ("F,%s,%s,%.17g,%d,%.17g,%.7g,%.7g,%.7g,%d,%d"):format(phase, name, u.corr, u.seed, lr, r.val, r.test, r.curve_mean,
    r.diverged and 1 or 0, r.params)
end

local function do_unit(u, lr_of, emit)
  local d = dataset(u.seed, u.corr)
  for _, name in ipairs(MODELS) do
    for _, lr in ipairs(lr_of[name]) do
      local r = train(name, d, u.seed, lr)
      emit(fmt_row(u.phase, name, u, lr, r))
      for _, p in ipairs(r.curve) do
        emit(("C,%s,%s,%.17g,%d,%.17g,%d,%.7g"):format(u.phase, name, u.corr, u.seed, lr, p[1], p[2]))
      end
    end
  end
end

-- lr_of encoded for a worker: "tune" (every lr) or the three chosen ones
local function lr_table(code)
  local t = {}
  if code == "tune" then for _, m in ipairs(MODELS) do t[m] = lrs end; return t end
  local i = 0
  for v in code:gmatch("[^:]+") do i = i + 1; t[MODELS[i]] = { tonumber(v) } end
  return t
end

-- a worker (started by the script itself): its share of the units, rows to a file
local worker = os.getenv("MOE_VS_MMOE_WORKER")
if worker then
  local phase, k, j, code, file = worker:match("^(%a+),(%d+),(%d+),([^,]+),(.+)$")
  k, j = tonumber(k), tonumber(j)
  moe.set_num_threads(1)
  local f = assert(io.open(file, "w"))
  for i, u in ipairs(units_of(phase)) do
    if (i - 1) % j == k - 1 then
      do_unit(u, lr_table(code), function(line) f:write(line, "\n") end)
      f:flush()
      -- (MOE_VS_MMOE_FAIL=k: worker k fails after its first run, for the spec of a failing worker)
      if os.getenv("MOE_VS_MMOE_FAIL") == tostring(k) then error("moe_vs_mmoe: worker " .. k .. " made to fail", 0) end
      io.stdout:write(("  [worker %d] %s run %d, correlation %g done\n"):format(k, phase, u.seed, u.corr))
      io.stdout:flush()
    end
  end
  f:close()
  os.exit(0)
end

do
  local parent = opts.out:match("^(.*[^/])/+[^/]*$")
  local ok, err = cli.makedirs(parent or ".")
  if not ok then cli.fail("--out " .. opts.out .. ": " .. err) end
end

local jobs = opts.jobs > 0 and opts.jobs or cli.cores()
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- runs the units of a phase (on `jobs` workers, or here); returns the rows, each
-- (model, correlation, run, lr) checked to be there exactly once
local function execute(phase, code)
  local units = units_of(phase)
  local lines = {}
  local nj = math.min(jobs, #units)
  if nj <= 1 then
    local before = moe.set_num_threads(1) -- (one thread, as a worker has: the same numbers whatever --jobs)
    for _, u in ipairs(units) do do_unit(u, lr_table(code), function(l) lines[#lines + 1] = l end) end
    moe.set_num_threads(before)
  else
    local exe = cli.self_exe()
    local args = { q(exe), "run", q(arg[0]) }
    for i = 1, #arg do args[#args + 1] = q(arg[i]) end
    local procs = {}
    for k = 1, nj do
      local file = os.tmpname()
      local env = ("MOE_VS_MMOE_WORKER=%s OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1"):format(
        q(("%s,%d,%d,%s,%s"):format(phase, k, nj, code, file)))
      procs[k] = { file = file, p = assert(io.popen(env .. " " .. table.concat(args, " ") .. " 2>&1; echo __rc=$?")) }
    end
    local failed = {}
    for k, pr in ipairs(procs) do
      local out, rc = {}, nil
      for l in pr.p:lines() do -- (the first worker's progress as it comes, the others' after it)
        local v = l:match("^__rc=(%d+)$")
        if v then rc = tonumber(v) else out[#out + 1] = l; if l:match("^  %[worker") then print(l) end end
      end
      pr.p:close()
      if rc ~= 0 then failed[#failed + 1] = ("worker %d (exit status %s):\n%s"):format(k, tostring(rc), table.concat(out, "\n")) end
      local f = io.open(pr.file)
      if f then for l in f:lines() do lines[#lines + 1] = l end; f:close() end
      os.remove(pr.file)
    end
    if #failed > 0 then error("moe_vs_mmoe: " .. table.concat(failed, "\n"), 0) end
  end
  -- every (model, correlation, run, lr) once
  local seen, want, bad = {}, 0, {}
  for _, l in ipairs(lines) do
    local key = l:match("^F,[^,]+,([^,]+,[^,]+,[^,]+,[^,]+),")
    if key then
      if seen[key] then bad[#bad + 1] = "twice: " .. key end
      seen[key] = true
    end
  end
  local lr_of = lr_table(code)
  for _, u in ipairs(units) do
    for _, name in ipairs(MODELS) do
      for _, lr in ipairs(lr_of[name]) do
        want = want + 1
        local key = ("%s,%.17g,%d,%.17g"):format(name, u.corr, u.seed, lr)
        if not seen[key] then bad[#bad + 1] = "missing: " .. key end
      end
    end
  end
  if #bad > 0 then
    error(("moe_vs_mmoe: the %s phase's results are wrong (%d runs expected): %s"):format(phase, want,
      table.concat(bad, "; ", 1, math.min(#bad, 5))), 0)
  end
  return lines
end

-- rows -> finals[model][corr] = {by seed}, curves[model][corr][seed] = {{step, loss}}
local function parse(lines)
  local finals, curves = {}, {}
  for _, l in ipairs(lines) do
    local f = {}
    for v in l:gmatch("[^,]+") do f[#f + 1] = v end
    local name, corr, seed, lr = f[3], tonumber(f[4]), tonumber(f[5]), tonumber(f[6])
    if f[1] == "F" then
      finals[#finals + 1] = { model = name, corr = corr, seed = seed, lr = lr, val = tonumber(f[7]), test = tonumber(f[8]),
        curve_mean = tonumber(f[9]), diverged = f[10] == "1", params = tonumber(f[11]) }
    else
      curves[#curves + 1] = { model = name, corr = corr, seed = seed, lr = lr, step = tonumber(f[7]), loss = tonumber(f[8]) }
    end
  end
  return finals, curves
end

local function mean_se(l)
  local n, m = #l, 0
  for _, v in ipairs(l) do m = m + v end
  m = m / n
  local s = 0
  for _, v in ipairs(l) do s = s + (v - m) ^ 2 end
  return m, n > 1 and math.sqrt(s / (n - 1) / n) or 0 / 0
end

local function write_atomic(path, rows)
  local f = assert(io.open(path .. ".tmp", "w"))
  f:write(table.concat(rows, "\n"), "\n")
  f:close()
  assert(os.rename(path .. ".tmp", path))
end

print(("moe_vs_mmoe: %d runs x %d correlations x %d models, %d steps of batch %d on %d rows (c = %g, m = %d); "
  .. "%d worker%s"):format(opts.runs, #corrs, #MODELS, opts.steps, opts.batch_size, opts.n, opts.c, opts.m, jobs,
  jobs == 1 and "" or "s"))

-- 1. each model's learning rate, by the mean final validation loss of the tuning runs
local chosen, tuning_rows = {}, { "model,correlation,seed,lr,val_loss,test_loss,diverged" }
if opts.tune_runs > 0 and #lrs > 1 then
  local finals = parse(execute("tune", "tune"))
  local sum = {}
  for _, r in ipairs(finals) do
    sum[r.model] = sum[r.model] or {}
    local s = sum[r.model][r.lr] or { 0, 0 }
    sum[r.model][r.lr] = { s[1] + ((r.val == r.val and not r.diverged) and r.val or math.huge), s[2] + 1 }
    tuning_rows[#tuning_rows + 1] = ("%s,%g,%d,%g,%.6f,%.6f,%d"):format(r.model, r.corr, r.seed, r.lr, r.val, r.test,
      r.diverged and 1 or 0)
  end
  print(("learning rate (mean validation loss of %d runs x %d correlations):"):format(opts.tune_runs, #corrs))
  for _, name in ipairs(MODELS) do
    local best, parts = nil, {}
    for _, lr in ipairs(lrs) do
      local s = sum[name][lr]
      local v = s[1] / s[2]
      parts[#parts + 1] = ("%g: %.4f"):format(lr, v)
      if not best or v < best[2] then best = { lr, v } end
    end
    chosen[name] = best[1]
    print(("  %-15s %s  -> %g"):format(name, table.concat(parts, "  "), best[1]))
  end
else
  for _, name in ipairs(MODELS) do chosen[name] = lrs[1] end
end

-- 2. the reported runs
local code = {}
for i, name in ipairs(MODELS) do code[i] = ("%.17g"):format(chosen[name]) end
local finals, curve_rows = parse(execute("main", table.concat(code, ":")))
local by = {} -- by[model][corr][seed] = final row
for _, name in ipairs(MODELS) do by[name] = {} for _, c in ipairs(corrs) do by[name][c] = {} end end
local params = {}
for _, r in ipairs(finals) do by[r.model][r.corr][r.seed] = r; params[r.model] = r.params end
local seconds = now() - t0

local rows = { "model,correlation,seed,lr,test_loss,val_loss,curve_mean,diverged" }
for _, name in ipairs(MODELS) do
  for _, c in ipairs(corrs) do
    for s = 1, opts.runs do
      local r = by[name][c][s]
      rows[#rows + 1] = ("%s,%g,%d,%g,%.6f,%.6f,%.6f,%d"):format(name, c, s, r.lr, r.test, r.val, r.curve_mean,
        r.diverged and 1 or 0)
    end
  end
end
write_atomic(opts.out .. "_tuning.csv", tuning_rows)
write_atomic(opts.out .. ".csv", rows)
local crow = { "model,correlation,seed,step,test_loss" }
local curve = {} -- curve[model][corr][step] = {losses}
for _, r in ipairs(curve_rows) do
  crow[#crow + 1] = ("%s,%g,%d,%d,%.6f"):format(r.model, r.corr, r.seed, r.step, r.loss)
  curve[r.model] = curve[r.model] or {}
  curve[r.model][r.corr] = curve[r.model][r.corr] or {}
  local l = curve[r.model][r.corr][r.step] or {}
  l[#l + 1] = r.loss
  curve[r.model][r.corr][r.step] = l
end
write_atomic(opts.out .. "_curves.csv", crow)

-- the table: mean final test loss +- standard error, and the paired differences
local function values(name, c, field)
  local out = {}
  for s = 1, opts.runs do out[s] = by[name][c][s][field] end
  return out
end
local function diff(a, b, c, field)
  local out = {}
  for s = 1, opts.runs do out[s] = by[a][c][s][field] - by[b][c][s][field] end
  return out
end
print()
do
  local pp, lr = {}, {}
  for _, name in ipairs(MODELS) do pp[#pp + 1] = ("%s %d"):format(name, params[name]); lr[#lr + 1] = ("%g"):format(chosen[name]) end
  print(("parameters: %s; learning rates %s"):format(table.concat(pp, ", "), table.concat(lr, ", ")))
end
-- the paired comparisons made, of the models present: {first, second, label, first's name, second's name}
local PAIRS = {}
for _, p in ipairs { { "multi_gate_moe", "one_gate_moe", "MMoE - OMoE", "MMoE", "OMoE" },
  { "one_gate_moe", "shared_bottom", "OMoE - shared bottom", "OMoE", "shared bottom" },
  { "multi_gate_moe", "shared_bottom", "MMoE - shared bottom", "MMoE", "shared bottom" },
  { "cgc", "multi_gate_moe", "CGC - MMoE", "CGC", "MMoE" }, { "ple", "multi_gate_moe", "PLE - MMoE", "PLE", "MMoE" },
  { "ple", "cgc", "PLE - CGC", "PLE", "CGC" } } do
  if present[p[1]] and present[p[2]] then PAIRS[#PAIRS + 1] = p end
end
local function table_of(field, what)
  print(("%s, mean over %d runs +- standard error:"):format(what, opts.runs))
  local head = { ("%-22s"):format("") }
  for _, c in ipairs(corrs) do head[#head + 1] = ("corr %-13.2f"):format(c) end
  print(table.concat(head, " "))
  for _, name in ipairs(MODELS) do
    local line = { ("%-22s"):format(name) }
    for _, c in ipairs(corrs) do line[#line + 1] = ("%.4f +- %-8.4f"):format(mean_se(values(name, c, field))) end
    print(table.concat(line, " "))
  end
  for _, pair in ipairs(PAIRS) do
    local line = { ("%-22s"):format(pair[3]) }
    for _, c in ipairs(corrs) do line[#line + 1] = ("%+.4f +- %-8.4f"):format(mean_se(diff(pair[1], pair[2], c, field))) end
    print(table.concat(line, " "))
  end
end
table_of("test", "final test loss (y1 + y2 MSE)")
do -- runs whose training hit a non-finite loss (scored at their last finite weights)
  local parts = {}
  for _, name in ipairs(MODELS) do
    for _, c in ipairs(corrs) do
      local n = 0
      for s = 1, opts.runs do if by[name][c][s].diverged then n = n + 1 end end
      if n > 0 then parts[#parts + 1] = ("%s at %g: %d"):format(name, c, n) end
    end
  end
  print("diverged runs (scored at their last finite weights): " .. (#parts > 0 and table.concat(parts, ", ") or "none"))
end
print()
table_of("curve_mean", "test loss averaged over the curve (training speed)")

-- what the paired differences say: a two-sided paired t-test at 95% (Student's t
-- for runs - 1 degrees of freedom; each comparison on its own, no correction for
-- the several made)
print()
local T975 = { { 1, 12.706 }, { 2, 4.303 }, { 3, 3.182 }, { 4, 2.776 }, { 5, 2.571 }, { 6, 2.447 }, { 7, 2.365 },
  { 8, 2.306 }, { 9, 2.262 }, { 10, 2.228 }, { 12, 2.179 }, { 15, 2.131 }, { 20, 2.086 }, { 25, 2.060 },
  { 30, 2.042 }, { 40, 2.021 }, { 60, 2.000 }, { 120, 1.980 } }
local tcrit = 1.960
for _, e in ipairs(T975) do if opts.runs - 1 >= e[1] then tcrit = e[2] end end
if opts.runs - 1 > 120 then tcrit = 1.960 end
print(("paired t-tests over %d runs: |t| > %.3f is a difference at 95%% confidence"):format(opts.runs, tcrit))
local function verdict(d)
  local m, se = mean_se(d)
  local wins = 0
  for _, v in ipairs(d) do if v < 0 then wins = wins + 1 end end
  local t = m / se
  return m, se, t, wins
end
local function says(t, better, worse)
  if t ~= t then return "cannot tell (one run)" end
  return t < -tcrit and better or t > tcrit and worse or "ties"
end
for _, field in ipairs { "test", "curve_mean" } do
  local label = field == "test" and "final test loss" or "curve mean"
  for _, c in ipairs(corrs) do
    local parts = {}
    for i, p in ipairs(PAIRS) do
      if i ~= 3 or not present.one_gate_moe then -- (MMoE - shared bottom follows from the first two)
        local m, se, t, w = verdict(diff(p[1], p[2], c, field))
        parts[#parts + 1] = ("%s %s %s (%+.4f +- %.4f, t %+.1f, lower in %d/%d runs)"):format(p[4],
          says(t, "beats", "loses to"), p[5], m, se, t, w, opts.runs)
      end
    end
    if #parts > 0 then print(("%s, corr %.2f: %s"):format(label, c, table.concat(parts, "; "))) end
  end
  if #corrs > 1 and present.multi_gate_moe and present.one_gate_moe then -- the same runs at the lowest and the highest correlation: paired too
    local lo, hi = corrs[1], corrs[1]
    for _, c in ipairs(corrs) do lo, hi = math.min(lo, c), math.max(hi, c) end
    local dl, dh = diff("multi_gate_moe", "one_gate_moe", lo, field), diff("multi_gate_moe", "one_gate_moe", hi, field)
    local w = {}
    for s = 1, opts.runs do w[s] = dl[s] - dh[s] end
    local m, se = mean_se(w)
    print(("%s: (MMoE - OMoE) at corr %.2f minus at corr %.2f: %+.4f +- %.4f (t %+.1f): the gap %s as the "
      .. "correlation falls"):format(label, lo, hi, m, se, m / se, (says(m / se, "moves in MMoE's favour", "moves in OMoE's favour"):gsub("^ties$",
      "does not change measurably"))))
  end
end

-- figure 4: mean test loss against steps, per correlation, +- s.e.; figure 5: histograms
local panels, hist, fin = {}, {}, {}
for _, c in ipairs(corrs) do
  local series, groups = {}, {}
  for i, name in ipairs(MODELS) do
    local xs, ys, es = {}, {}, {}
    local steps = {}
    for st in pairs(curve[name][c]) do steps[#steps + 1] = st end
    table.sort(steps)
    for j, st in ipairs(steps) do xs[j] = st; ys[j], es[j] = mean_se(curve[name][c][st]) end
    if opts.runs < 2 then es = nil end
    series[i] = { name = name, x = xs, y = ys, err = es }
    groups[i] = { name = name, values = values(name, c, "test") }
  end
  -- (drawn from a tenth of the way in: the first steps' losses would flatten the rest; the CSV has them)
  for _, s in ipairs(series) do
    while #s.x > 2 and s.x[1] < opts.steps / 10 do
      table.remove(s.x, 1); table.remove(s.y, 1); if s.err then table.remove(s.err, 1) end
    end
  end
  panels[#panels + 1] = { title = ("correlation %.2f"):format(c), series = series, xlabel = "training step",
    ylabel = "test loss" }
  hist[#hist + 1] = { title = ("correlation %.2f"):format(c), groups = groups }
end
for i, name in ipairs(MODELS) do
  local ys, es = {}, {}
  for j, c in ipairs(corrs) do ys[j], es[j] = mean_se(values(name, c, "test")) end
  fin[i] = { name = name, x = corrs, y = ys, err = opts.runs > 1 and es or nil }
end
for _, ext in ipairs { ".svg", ".png" } do
  moe.plot.panels(panels, opts.out .. ext, { title = ("test loss during training (mean over %d runs; bars: "
    .. "\194\177 standard error)"):format(opts.runs), errors = "bars", err_label = "\194\177 s.e.", cols = 2 })
  moe.plot.histograms(hist, opts.out .. "_hist" .. ext, { title = ("final test loss over %d runs"):format(opts.runs),
    xlabel = "final test loss", cols = 2 })
  moe.plot.lines(fin, opts.out .. "_final" .. ext, { title = ("final test loss against task correlation (mean "
    .. "\194\177 s.e. over %d runs)"):format(opts.runs), xlabel = "task correlation", ylabel = "test loss (y1 + y2 MSE)",
    errors = "bars", err_label = "\194\177 s.e." })
end
print()
print(("wrote %s.csv, %s_curves.csv, %s_tuning.csv, %s.svg/.png (curves), %s_hist.svg/.png, %s_final.svg/.png")
  :format(opts.out, opts.out, opts.out, opts.out, opts.out, opts.out))
print(("took %.0f s on %d worker%s"):format(seconds, jobs, jobs == 1 and "" or "s"))
