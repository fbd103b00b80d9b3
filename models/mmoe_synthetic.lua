-- Seed 002's synthetic run: MMoE (16 units, 8 experts) with two regression
-- towers (Dense(8, relu) -> Dense(1)) on the MMoE paper's synthetic data (100
-- features, two tasks whose correlation is set by --correlation), 10,000 / 1,000
-- / 1,000 rows, Adam, mean squared error, mean absolute error as the metric.
--
--   moelua run models/mmoe_synthetic.lua [--epochs 20] [--correlation 0.8] [--lr 1e-3]
--                                         [--batch-size 32] [--seed 1] [--smoke]
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local opts = cli.parse(arg, {
  usage = "moelua run models/mmoe_synthetic.lua [options]",
  about = "Seed 002's synthetic run: MMoE with two regression towers on the MMoE paper's synthetic data\n"
    .. "(12,000 rows: 10,000 train, 1,000 validation, 1,000 test); Adam, MSE, MAE as the metric.",
  { "epochs", 20, "training epochs", min = 1 },
  { "correlation", 0.8, "the correlation of the two tasks, in [-1, 1]", type = "number", min = -1, max = 1 },
  { "lr", 1e-3, "Adam's learning rate", type = "number", min = 0 },
  { "batch_size", 32, "rows per batch", min = 1 },
  { "seed", 1, "the seed of the data, the weights and the batch order" },
  { "units", 16, "units of each expert", min = 1 },
  { "experts", 8, "number of experts", min = 1 },
  cli.device_option(),
  { "smoke", false, "a short run (2 epochs, 3,000 rows), for the test suite" },
})
local n = opts.smoke and 3000 or 12000
if opts.smoke then opts.epochs = 2 end

local syn = moe.datasets.synthetic { n = n, correlation = opts.correlation, seed = opts.seed }
local ntr, nva = math.floor(n * 10 / 12), math.floor(n / 12)
local function part(a, len)
  return { x = syn.x:narrow(1, a, len), y = { y1 = syn.y.y1:narrow(1, a, len), y2 = syn.y.y2:narrow(1, a, len) } }
end
local train, val, test = part(1, ntr), part(ntr + 1, nva), part(ntr + nva + 1, n - ntr - nva)
print(("synthetic data: %d features, correlation %.2f; train %d, validation %d, test %d"):format(syn.x:size(2),
  opts.correlation, ntr, nva, n - ntr - nva))

moe.manual_seed(opts.seed)
local x = moe.Input { shape = { syn.x:size(2) } }
local tasks = nn.MMoE { units = opts.units, num_experts = opts.experts, num_tasks = 2 }(x)
local outputs = {}
for i, name in ipairs(syn.task_names) do
  local h = nn.Dense { units = 8, activation = "relu", kernel_initializer = "variance_scaling" }(tasks[i])
  outputs[name] = nn.Dense { units = 1, kernel_initializer = "variance_scaling", name = name }(h)
end
local model = moe.Model { inputs = x, outputs = outputs, name = "mmoe_synthetic" }
model:to(opts.device) -- (--device) its weights there; fit moves each batch
model:compile { optimizer = moe.optim.Adam { lr = opts.lr }, loss = "mse", metrics = { "mae" } }
local h = model:fit { x = train.x, y = train.y, validation_data = val, batch_size = opts.batch_size,
  epochs = opts.epochs, seed = opts.seed }
local e = model:evaluate { x = test.x, y = test.y }
print(("test: loss %.4f  y1 mse %.4f mae %.4f  y2 mse %.4f mae %.4f"):format(e.loss, e.y1_loss, e.y1_mae, e.y2_loss,
  e.y2_mae))
if h.stopped then print(h.stopped) end
