-- Logistic regression for "income > 50k" from the numeric columns of the
-- bundled UCI census-income (KDD) data: one Dense unit with a sigmoid, zero
-- initial weights, full-batch SGD on binary cross-entropy through autograd.
--
--   moelua run models/census_logreg.lua [path.gz] [epochs] [--device cpu|cuda] [--smoke]
--   (--help lists every option)
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local here = (arg and arg[0] or ""):match("^(.*)/models/[^/]*$") or "."
local opts = cli.parse(arg, {
  usage = "moelua run models/census_logreg.lua [PATH] [EPOCHS] [options]",
  about = "Logistic regression for income > 50k from the numeric columns of the census-income data\n"
    .. "(one sigmoid unit, zero initial weights, full-batch SGD on binary cross-entropy).",
  { "path", here .. "/data/census-income.test.gz", "the census-income file (.gz)", positional = true,
    metavar = "FILE", check = cli.readable },
  { "epochs", nil, "full-batch SGD epochs", positional = true, type = "int", min = 1,
    default_text = "300; 5 with --smoke" },
  cli.device_option(),
  { "smoke", false, "a short run (5 epochs), for the test suite" },
})
local path = opts.path
local epochs = opts.epochs or (opts.smoke and 5 or 300)
local d = moe.datasets.census_numeric { path = path }
print(("loaded %d rows x %d features from %s (%.2fs)"):format(d.nrows, d.xtr:size(2), path, d.seconds))

local model = nn.Dense { units = 1, activation = "sigmoid", kernel_initializer = "zeros" }
model:to(opts.device) -- (--device) its weights there; train_on_batch and predict move the data
model:compile { optimizer = moe.optim.SGD { lr = 0.5 }, loss = "binary_crossentropy" }
local bce = moe.losses.binary_crossentropy
local function accuracy(p, t) return p:gt(0.5):eq(t):to("float32"):mean():item() end

for epoch = 1, epochs do
  local loss = model:train_on_batch(d.xtr, d.ytr)
  if epoch == 1 or epoch % 50 == 0 or epoch == epochs then
    local pv = model:predict(d.xva)
    print(("epoch %3d  train loss %.4f  val loss %.4f  val accuracy %.4f"):format(
      epoch, loss, bce(d.yva, pv):item(), accuracy(pv, d.yva)))
  end
end
local base = 1 - d.yva:mean():item()
print(("majority-class accuracy on validation: %.4f"):format(base))
for i, name in ipairs(d.names) do print(("  weight %-20s %+.4f"):format(name, model.kernel:cpu()[i][1])) end
