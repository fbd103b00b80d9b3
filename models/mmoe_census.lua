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
-- --precision bf16 runs the experts' GEMMs with bf16 operands (moe.set_precision);
-- the gates and the towers stay fp32.
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local opts = cli.parse(arg, {
  usage = "moelua run models/mmoe_census.lua [options]",
  about = "Seed 002's census model (the main job, `make run`): MMoE shared by two tasks, income > 50k and\n"
    .. "never married, on a 50/25/25 split of the census-income file; ROC-AUC per task each epoch.",
  { "epochs", 8, "training epochs", min = 1 },
  { "batch_size", 32, "rows per batch", min = 1 },
  { "experts", 8, "number of experts", min = 1 },
  { "units", 4, "units of each expert", min = 1 },
  cli.device_option(),
  { "seed", 1, "the seed of the split, the weights and the batch order" },
  { "lr", 1e-3, "Adam's learning rate", type = "number", min = 0 },
  { "data", "", "the census-income file (default: the bundled data/census-income.test.gz)", metavar = "FILE",
    check = cli.readable },
  { "save", "", "save the best epoch's model to this file", metavar = "FILE" },
  cli.plot_option("mmoe_census_curves: AUC and loss per epoch; mmoe_census_experts: each task's gate"),
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

local now = require("moe.trainer").now
local t0 = now()
local ds = moe.datasets.census_income { path = opts.data ~= "" and opts.data or nil, seed = opts.seed,
  tasks = { "income", "never_married" } }
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
  ds.train = { x = ds.train.x:index_select(1, idx), y = { income = ds.train.y.income:index_select(1, idx),
    never_married = ds.train.y.never_married:index_select(1, idx) } }
end

moe.manual_seed(opts.seed)
local x = moe.Input { shape = { ds.num_features }, name = "features" }
local tasks = nn.MMoE { units = opts.units, num_experts = opts.experts, num_tasks = 2, name = "mmoe" }(x)
local outputs = {}
for i, name in ipairs(ds.task_names) do
  local h = nn.Dense { units = 8, activation = "relu", name = name .. "_tower" }(tasks[i])
  outputs[name] = nn.Dense { units = 1, activation = "sigmoid", name = name }(h)
end
local model = moe.Model { inputs = x, outputs = outputs, name = "mmoe_census" }
model:to(opts.device) -- (--device) its weights there; fit moves each batch
model:compile { optimizer = moe.optim.Adam { lr = opts.lr }, loss = "binary_crossentropy" }
if D.is_main() then model:summary() end

-- the seed's callback: ROC-AUC of each task on the three sets after every epoch
local auc = moe.metrics.roc_auc
local bce = moe.losses.binary_crossentropy
local best = { score = -math.huge }
local report = { on_epoch_end = function(self, epoch, logs)
  local line = { ("epoch %2d  loss %.4f"):format(epoch, logs.loss) }
  local sets = { { "train", ds.train }, { "val", ds.val }, { "test", ds.test } }
  local val_sum, test, preds = 0, {}, {}
  local val_loss = 0 -- (the compiled loss, binary cross-entropy summed over the tasks, on the validation set)
  for i, s in ipairs(sets) do preds[i] = self.model:predict(s[2].x, { batch_size = 4096 }) end -- both tasks at once
  for _, name in ipairs(ds.task_names) do
    local parts = {}
    for i, s in ipairs(sets) do
      local v = auc(s[2].y[name], preds[i][name])
      parts[#parts + 1] = ("%s %.4f"):format(s[1], v)
      if s[1] == "val" then
        val_sum = val_sum + v
        local l = bce(s[2].y[name], preds[i][name]):item()
        logs["val_" .. name .. "_loss"], val_loss = l, val_loss + l
      end
      if s[1] == "test" then test[name] = v end
      logs[s[1] .. "_" .. name .. "_auc"] = v -- recorded by the History (for --plot)
    end
    line[#line + 1] = ("%s AUC: %s"):format(name, table.concat(parts, " "))
  end
  logs.val_loss = val_loss -- (recorded by the History, for the curves of --plot)
  print(table.concat(line, "  |  "))
  if val_sum > best.score then
    best = { score = val_sum, epoch = epoch, test = test, weights = self.model:get_weights() }
  end
end }

local history = model:fit { x = ds.train.x, y = ds.train.y, batch_size = opts.batch_size, epochs = opts.epochs,
  callbacks = { report }, verbose = 0, seed = opts.seed }
if history.stopped then print(history.stopped) end
if best.weights then model:set_weights(best.weights) end
if opts.save ~= "" then model:save(opts.save); print("saved " .. opts.save) end
if figures and D.is_main() then -- training curves, and how each task's gate uses the experts on the test set
  local hist = { epoch = history.epoch, history = {} }
  for _, name in ipairs(ds.task_names) do
    hist.history[name .. "_auc"] = history.history["train_" .. name .. "_auc"]
    hist.history["val_" .. name .. "_auc"] = history.history["val_" .. name .. "_auc"]
  end
  hist.history.loss, hist.history.val_loss = history.history.loss, history.history.val_loss
  print("wrote " .. moe.plot.history(hist, figures.mmoe_census_curves, { title = "MMoE on census-income" }))
  local gates = moe.no_grad(function() return model:get_layer("mmoe"):gate_weights(ds.test.x) end)
  print("wrote " .. moe.plot.expert_utilisation(gates, figures.mmoe_census_experts,
    { task_names = ds.task_names, title = "mean gate weight per expert (test set)" }))
end
local seconds = now() - t0
print(("best epoch by validation AUC: %d; trained in %.1fs"):format(best.epoch or 0, seconds))
print(("test AUC: income %.4f  never_married %.4f"):format(best.test and best.test.income or 0 / 0,
  best.test and best.test.never_married or 0 / 0))
