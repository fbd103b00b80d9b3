-- The main job (`make run`): a small Keras-style network on the bundled UCI
-- census-income (KDD) data, predicting income > 50k from the numeric columns.
-- Mini-batch Adam through autograd, evaluation each epoch, then a checkpoint
-- that is loaded back and checked to predict bit for bit the same.
--
--   moelua run models/census_mlp.lua [path.gz] [epochs] [checkpoint] [--device cpu|cuda] [--smoke]
--   (--help lists every option)
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local here = (arg and arg[0] or ""):match("^(.*)/models/[^/]*$") or "."
local opts = cli.parse(arg, {
  usage = "moelua run models/census_mlp.lua [PATH] [EPOCHS] [CHECKPOINT] [options]",
  about = "A Keras-style MLP (Dense, BatchNormalization, Dropout) for income > 50k from the numeric columns\n"
    .. "of the census-income data; mini-batch Adam, then a checkpoint saved and loaded back.",
  { "path", here .. "/data/census-income.test.gz", "the census-income file (.gz)", positional = true,
    metavar = "FILE", check = cli.readable },
  { "epochs", nil, "training epochs", positional = true, type = "int", min = 1,
    default_text = "8; 1 with --smoke" },
  { "checkpoint", here .. "/build/census_mlp.moe", "where the trained model is saved (and reloaded from)",
    positional = true, metavar = "FILE" },
  cli.device_option(),
  { "smoke", false, "a short run (1 epoch), for the test suite" },
})
local path = opts.path
local epochs = opts.epochs or (opts.smoke and 1 or 8)
local ckpt = opts.checkpoint
local d = moe.datasets.census_numeric { path = path }
print(("loaded %d rows x %d features from %s (%.2fs)"):format(d.nrows, d.xtr:size(2), path, d.seconds))

moe.manual_seed(1)
local model = moe.Sequential {
  nn.Dense { units = 32, activation = "relu" },
  nn.BatchNormalization {},
  nn.Dropout { rate = 0.2 },
  nn.Dense { units = 16, activation = "relu", kernel_regularizer = moe.regularizers.l2 { l2 = 1e-4 } },
  nn.Dense { units = 1, activation = "sigmoid" },
  input_shape = { d.xtr:size(2) }, name = "census_mlp",
}
model:summary()
model:to(opts.device) -- (--device) its weights there; train_on_batch and predict move the data
model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = "binary_crossentropy" }

local bce = moe.losses.binary_crossentropy
local function accuracy(p, t) return p:gt(0.5):eq(t):to("float32"):mean():item() end
local n, batch = d.xtr:size(1), 256
local t0 = os.clock()
for epoch = 1, epochs do
  local perm = moe.randperm(n)
  local total, steps = 0, 0
  for s = 1, n, batch do
    local idx = perm:narrow(1, s, math.min(batch, n - s + 1))
    total = total + model:train_on_batch(d.xtr:index_select(1, idx), d.ytr:index_select(1, idx))
    steps = steps + 1
  end
  local pv = model:predict(d.xva)
  print(("epoch %2d  train loss %.4f  val loss %.4f  val accuracy %.4f"):format(
    epoch, total / steps, bce(d.yva, pv):item(), accuracy(pv, d.yva)))
end
print(("trained %d epochs in %.2fs"):format(epochs, os.clock() - t0))
print(("majority-class accuracy on validation: %.4f"):format(1 - d.yva:mean():item()))

model:save(ckpt)
local again = moe.load(ckpt)
local diff = (again:predict(d.xva) - model:predict(d.xva)):abs():max():item()
print(("saved %s; reloaded model's predictions differ by %g"):format(ckpt, diff))
