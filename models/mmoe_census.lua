-- The main job (`make run`): seed 002's census model. MMoE (4 units, 8 experts)
-- shared by two tasks, income > 50k and never married, each with a tower
-- Dense(8, relu) -> Dense(1, sigmoid); Adam, binary cross-entropy, batch 32, on
-- a 50/25/25 split of the bundled UCI census-income file. Each epoch prints the
-- train / validation / test ROC-AUC of each task (as the seed's callback does);
-- the weights of the epoch with the best mean validation AUC are kept, and the
-- last line gives their test AUCs.
--
--   moelua run models/mmoe_census.lua [--epochs 8] [--batch-size 32] [--experts 8]
--                                      [--units 4] [--device cpu] [--seed 1] [--plot DIR|FILE.svg|FILE.png]
--                                      [--precision fp32|bf16] [--smoke]   (--help lists every option)
--
-- The MMoE paper's other models and task group, on the same split and budget:
--   --tasks education     task group 2: education at least college, and never married
--   --model omoe|shared_bottom|cgc|ple   the one-gate mixture; one shared ReLU layer of
--                         experts x units units; CGC and PLE (torch-rechub's, experts of
--                         `units` units with BatchNorm, --n-expert-specific per task and
--                         --n-expert-shared, PLE over --n-level levels with its own towers)
--   --seeds 10            ten runs (weights and batch order from seeds seed .. seed + 9, the
--                         split of --seed), then each task's mean, std and best test AUC;
--                         --csv FILE writes a row per (run, task)
--
-- --precision bf16 runs the experts' GEMMs with bf16 operands (moe.set_precision);
-- the gates and the towers stay fp32.
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local GROUPS = { income = { "income", "never_married" }, education = { "education", "never_married" } }
local MODELS = { "mmoe", "omoe", "shared_bottom", "cgc", "ple" }
local opts = cli.parse(arg, {
  usage = "moelua run models/mmoe_census.lua [options]",
  about = "Seed 002's census model (the main job, `make run`): MMoE shared by two tasks, income > 50k and\n"
    .. "never married, on a 50/25/25 split of the census-income file; ROC-AUC per task each epoch.",
  { "epochs", 8, "training epochs", min = 1 },
  { "batch_size", 32, "rows per batch", min = 1 },
  { "experts", 8, "number of experts (MMoE, OMoE)", min = 1 },
  { "units", 4, "units of each expert", min = 1 },
  { "tasks", "income", "the task group: income (income > 50k, never married) or education (education at least "
    .. "college, never married)", choices = { "income", "education" } },
  { "model", "mmoe", "the model shared by the tasks", choices = MODELS },
  { "n_expert_specific", 2, "CGC/PLE: experts of each task's own (per level)", min = 1 },
  { "n_expert_shared", 4, "CGC/PLE: shared experts (per level)", min = 0 },
  { "n_level", 2, "PLE: CGC levels", min = 1 },
  cli.device_option(),
  { "seed", 1, "the seed of the split, and of the weights and the batch order of the first run" },
  { "seeds", 1, "runs, with weights and batch order from seeds seed, seed + 1, ... (the split stays --seed's)",
    min = 1 },
  { "lr", 1e-3, "Adam's learning rate", type = "number", min = 0 },
  { "data", "", "the census-income file (default: the bundled data/census-income.test.gz)", metavar = "FILE",
    check = cli.readable },
  { "save", "", "save the best epoch's model to this file (the first run's)", metavar = "FILE" },
  { "csv", "", "append one row per (run, task) to this file (a header first if it is new or empty): model, tasks, "
    .. "seed, task, best epoch, val and test AUC",
    metavar = "FILE" },
  cli.plot_option("mmoe_census_curves: AUC and loss per epoch; mmoe_census_experts: each task's gate (MMoE/OMoE)"),
  { "precision", "fp32", "the experts' GEMMs: fp32, or bf16 operands with fp32 sums", choices = { "fp32", "bf16" } },
  { "smoke", false, "a short run (1 epoch on 10,000 training rows), for the test suite" },
})
moe.set_precision(opts.precision)
-- under mpirun -np N: data parallel (fit's batches are batch_size rows per rank); rank 0 prints and plots
local D = moe.distributed
local print = D.print
-- (--plot) checked and made before training
local figures = cli.figures(opts.plot, { "mmoe_census_curves", "mmoe_census_experts" })
if opts.smoke then opts.epochs = 1 end
if opts.csv ~= "" then -- (checked before training: a file that cannot be written fails now)
  local existed = io.open(opts.csv, "r")
  if existed then existed:close() end
  local f, err = io.open(opts.csv, "a")
  if not f then cli.fail("--csv " .. opts.csv .. ": " .. tostring(err)) end
  f:close()
  if not existed then os.remove(opts.csv) end -- (made at the end)
end

local now = require("moe.trainer").now
local t0 = now()
local ds = moe.datasets.census_income { path = opts.data ~= "" and opts.data or nil, seed = opts.seed,
  tasks = GROUPS[opts.tasks] }
local function rows(part) return part.x:size(1) end
print(("census-income: %d rows, %d features; train %d, validation %d, test %d (%s)"):format(ds.nrows,
  ds.num_features, rows(ds.train), rows(ds.val), rows(ds.test), ds.path))
if D.world_size() > 1 then
  print(("data parallel over %d ranks: batches of %d rows per rank (%d a step in all)"):format(D.world_size(),
    opts.batch_size, opts.batch_size * D.world_size()))
end
if opts.precision == "bf16" then
  local h = moe.config().bf16
  print(("experts' GEMMs in bf16 on %s (%s)"):format(h.backend, h.reason))
end
if opts.smoke then -- a short run for the test suite: 10,000 training rows
  local idx = moe.arange(1, 10001)
  local y = {}
  for _, name in ipairs(ds.task_names) do y[name] = ds.train.y[name]:index_select(1, idx) end
  ds.train = { x = ds.train.x:index_select(1, idx), y = y }
end

-- the shared part of each model: a list of one [B, units] tensor per task, or
-- (PLE, with its own towers) the tasks' predictions
local function shared_part(x)
  local T = #ds.task_names
  if opts.model == "mmoe" then
    return nn.MMoE { units = opts.units, num_experts = opts.experts, num_tasks = T, name = "mmoe" }(x)
  elseif opts.model == "omoe" then
    return nn.OMoE { units = opts.units, num_experts = opts.experts, num_tasks = T, name = "mmoe" }(x)
  elseif opts.model == "shared_bottom" then -- as many units as the experts have in all
    return nn.SharedBottom { units = opts.units * opts.experts, num_tasks = T, name = "shared_bottom" }(x)
  end
  local common = { n_expert_specific = opts.n_expert_specific, n_expert_shared = opts.n_expert_shared,
    expert_params = { dims = { opts.units } } }
  if opts.model == "cgc" then
    common.num_tasks, common.name = T, "cgc"
    return nn.CGC(common)(x)
  end
  local types, towers = {}, {}
  for t = 1, T do types[t], towers[t] = "classification", { dims = { 8 } } end
  common.n_level, common.task_types, common.tower_params_list, common.name = opts.n_level, types, towers, "ple"
  return nn.PLE(common)(x), true
end

local function build()
  local x = moe.Input { shape = { ds.num_features }, name = "features" }
  local tasks, predictions = shared_part(x)
  local outputs = {}
  for i, name in ipairs(ds.task_names) do
    if predictions then
      outputs[name] = tasks[i]
    else
      local h = nn.Dense { units = 8, activation = "relu", name = name .. "_tower" }(tasks[i])
      outputs[name] = nn.Dense { units = 1, activation = "sigmoid", name = name }(h)
    end
  end
  return moe.Model { inputs = x, outputs = outputs, name = "census_" .. opts.model }
end

local auc = moe.metrics.roc_auc
local bce = moe.losses.binary_crossentropy
local verbose = opts.seeds == 1

-- one run: fit with the seed's callback (ROC-AUC of each task on the three sets
-- after every epoch); the weights of the best mean validation AUC are kept
local function run(seed)
  moe.manual_seed(seed)
  local model = build()
  model:to(opts.device) -- (--device) its weights there; fit moves each batch
  model:compile { optimizer = moe.optim.Adam { lr = opts.lr }, loss = "binary_crossentropy" }
  if D.is_main() and verbose then model:summary() end
  local best = { score = -math.huge }
  local report = { on_epoch_end = function(self, epoch, logs)
    local line = { ("epoch %2d  loss %.4f"):format(epoch, logs.loss) }
    local sets = { { "train", ds.train }, { "val", ds.val }, { "test", ds.test } }
    local val_sum, test, val, preds = 0, {}, {}, {}
    local val_loss = 0 -- (the compiled loss, binary cross-entropy summed over the tasks, on the validation set)
    for i, s in ipairs(sets) do preds[i] = self.model:predict(s[2].x, { batch_size = 4096 }) end -- both tasks at once
    for _, name in ipairs(ds.task_names) do
      local parts = {}
      for i, s in ipairs(sets) do
        local v = auc(s[2].y[name], preds[i][name])
        parts[#parts + 1] = ("%s %.4f"):format(s[1], v)
        if s[1] == "val" then
          val_sum, val[name] = val_sum + v, v
          local l = bce(s[2].y[name], preds[i][name]):item()
          logs["val_" .. name .. "_loss"], val_loss = l, val_loss + l
        end
        if s[1] == "test" then test[name] = v end
        logs[s[1] .. "_" .. name .. "_auc"] = v -- recorded by the History (for --plot)
      end
      line[#line + 1] = ("%s AUC: %s"):format(name, table.concat(parts, " "))
    end
    logs.val_loss = val_loss -- (recorded by the History, for the curves of --plot)
    if verbose then print(table.concat(line, "  |  ")) end
    if val_sum > best.score then
      best = { score = val_sum, epoch = epoch, test = test, val = val, weights = self.model:get_weights() }
    end
  end }
  local r0 = now()
  local history = model:fit { x = ds.train.x, y = ds.train.y, batch_size = opts.batch_size, epochs = opts.epochs,
    callbacks = { report }, verbose = 0, seed = seed }
  if history.stopped then print(history.stopped) end
  if best.weights then model:set_weights(best.weights) end
  best.seconds = now() - r0
  return model, history, best
end

local results = {} -- one best per run
local model, history
for r = 1, opts.seeds do
  local seed = opts.seed + r - 1
  local m, h, best = run(seed)
  results[r] = { seed = seed, best = best }
  if r == 1 then model, history = m, h end
  if not verbose then
    local parts = {}
    for _, name in ipairs(ds.task_names) do
      parts[#parts + 1] = ("%s %.4f"):format(name, best.test and best.test[name] or 0 / 0)
    end
    print(("seed %d: best epoch %d, test AUC %s (%.1f s)"):format(seed, best.epoch or 0, table.concat(parts, "  "),
      best.seconds))
  end
end

if opts.save ~= "" then model:save(opts.save); print("saved " .. opts.save) end
if figures and D.is_main() then -- training curves, and how each task's gate uses the experts on the test set
  local hist = { epoch = history.epoch, history = {} }
  for _, name in ipairs(ds.task_names) do
    hist.history[name .. "_auc"] = history.history["train_" .. name .. "_auc"]
    hist.history["val_" .. name .. "_auc"] = history.history["val_" .. name .. "_auc"]
  end
  hist.history.loss, hist.history.val_loss = history.history.loss, history.history.val_loss
  print("wrote " .. moe.plot.history(hist, figures.mmoe_census_curves, { title = opts.model .. " on census-income" }))
  if opts.model == "mmoe" or opts.model == "omoe" then
    local gates = moe.no_grad(function() return model:get_layer("mmoe"):gate_weights(ds.test.x) end)
    print("wrote " .. moe.plot.expert_utilisation(gates, figures.mmoe_census_experts,
      { task_names = ds.task_names, title = "mean gate weight per expert (test set)" }))
  else
    print(("(no %s: the gate chart is MMoE's and OMoE's)"):format(figures.mmoe_census_experts))
  end
end
if opts.csv ~= "" and D.is_main() then
  local lines = {}
  local f = io.open(opts.csv, "r")
  local fresh = not f or f:read("*l") == nil
  if f then f:close() end
  if fresh then lines[1] = "model,tasks,seed,task,best_epoch,val_auc,test_auc" end
  for _, r in ipairs(results) do
    for _, name in ipairs(ds.task_names) do
      lines[#lines + 1] = ("%s,%s,%d,%s,%d,%.6f,%.6f"):format(opts.model, opts.tasks, r.seed, name, r.best.epoch or 0,
        r.best.val and r.best.val[name] or 0 / 0, r.best.test and r.best.test[name] or 0 / 0)
    end
  end
  f = assert(io.open(opts.csv, "a"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  print("wrote " .. opts.csv)
end
local seconds = now() - t0
local function test_auc(r, name) return r.best.test and r.best.test[name] or 0 / 0 end
if opts.seeds == 1 then
  local r = results[1]
  print(("best epoch by validation AUC: %d; trained in %.1fs"):format(r.best.epoch or 0, seconds))
  local parts = {}
  for _, name in ipairs(ds.task_names) do parts[#parts + 1] = ("%s %.4f"):format(name, test_auc(r, name)) end
  print("test AUC: " .. table.concat(parts, "  "))
else
  print(("%s on census-income, tasks %s, %d runs (split of seed %d: 50/25/25 of %s; each run's epoch of best mean "
    .. "validation AUC), %.0f s:"):format(opts.model, table.concat(ds.task_names, " + "), opts.seeds, opts.seed,
    ds.path, seconds))
  for _, name in ipairs(ds.task_names) do
    local m, best = 0, -math.huge
    for _, r in ipairs(results) do m = m + test_auc(r, name); best = math.max(best, test_auc(r, name)) end
    m = m / #results
    local v = 0
    for _, r in ipairs(results) do v = v + (test_auc(r, name) - m) ^ 2 end
    print(("  %-14s test AUC mean %.4f +- %.4f (std), best %.4f"):format(name, m, math.sqrt(v / (#results - 1)), best))
  end
end
