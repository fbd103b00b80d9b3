-- Seed 003's GatedFeatureFusion examples, trained on synthetic data: the
-- Sequential form (one representation fused with itself, as the seed's demo
-- does), the functional form fusing a raw and a processed representation, and a
-- gate with tanh instead of sigmoid. Prints each model's test metrics and the
-- mean gate value (how much of the first representation passes).
--
--   moelua run models/gated_fusion.lua [--epochs 10] [--n 6000] [--seed 1] [--smoke]
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local opts = cli.parse(arg, {
  usage = "moelua run models/gated_fusion.lua [options]",
  about = "Seed 003's GatedFeatureFusion in a Sequential model, a functional one and with a tanh gate,\n"
    .. "trained on synthetic data; prints each model's test metrics and its mean gate value.",
  { "epochs", 10, "training epochs", min = 1 },
  { "n", 6000, "rows of synthetic data (80% train, 20% test)", min = 10 },
  { "seed", 1, "the seed of the data, the weights and the batch order" },
  { "batch_size", 64, "rows per batch", min = 1 },
  cli.device_option(),
  { "smoke", false, "a short run (1 epoch, 1,500 rows), for the test suite" },
})
if opts.smoke then opts.epochs, opts.n = 1, 1500 end

-- 20 features; the label needs both a linear part and a saturating one
moe.manual_seed(opts.seed)
local n, F = opts.n, 20
local x = moe.randn(n, F)
local score = x:narrow(2, 1, 5):sum(2, true) + (x:narrow(2, 6, 5) * 2):tanh():sum(2, true) * 2
local y = score:gt(0):float()
local ntr = math.floor(n * 0.8)
local xtr, ytr, xte, yte = x:narrow(1, 1, ntr), y:narrow(1, 1, ntr), x:narrow(1, ntr + 1, n - ntr), y:narrow(1, ntr + 1, n - ntr)
print(("synthetic data: %d rows x %d features; train %d, test %d"):format(n, F, ntr, n - ntr))

local function train(model, name, fusion)
  model:to(opts.device) -- (--device) its weights there; fit moves each batch
  model:compile { optimizer = "adam", loss = "binary_crossentropy", metrics = { "accuracy", "auc" } }
  model:fit { x = xtr, y = ytr, epochs = opts.epochs, batch_size = opts.batch_size, verbose = 0, seed = opts.seed }
  local e = model:evaluate { x = xte, y = yte }
  print(("%-22s test: accuracy %.4f  auc %.4f  loss %.4f  mean gate %.3f"):format(name, e.accuracy, e.auc, e.loss,
    fusion.last_gates and fusion.last_gates:mean():item() or 0 / 0))
end

-- 1. Sequential: Dense -> [x, x] -> GatedFeatureFusion -> Dense -> sigmoid
moe.manual_seed(opts.seed)
local f1 = nn.GatedFeatureFusion {}
train(moe.Sequential {
  nn.Dense { units = 32, activation = "relu" },
  nn.Lambda { fn = function(t) return { t, t } end },
  f1,
  nn.Dense { units = 16, activation = "relu" },
  nn.Dense { units = 1, activation = "sigmoid" },
  input_shape = { F },
}, "sequential (x, x)", f1)

-- 2. functional: a raw (linear) and a processed (tanh) representation
moe.manual_seed(opts.seed)
local inp = moe.Input { shape = { F } }
local raw = nn.Dense { units = 32 }(inp)
local processed = nn.Dense { units = 32, activation = "tanh" }(inp)
local f2 = nn.GatedFeatureFusion {}
local h = nn.Dropout { rate = 0.2 }(nn.Dense { units = 16, activation = "relu" }(f2 { raw, processed }))
train(moe.Model { inputs = inp, outputs = nn.Dense { units = 1, activation = "sigmoid" }(h) }, "functional raw+tanh", f2)

-- 3. a tanh gate, named
moe.manual_seed(opts.seed)
inp = moe.Input { shape = { F } }
local f3 = nn.GatedFeatureFusion { activation = "tanh", name = "custom_fusion" }
h = f3 { nn.Dense { units = 32, activation = "relu" }(inp), nn.Dense { units = 32, activation = "tanh" }(inp) }
train(moe.Model { inputs = inp, outputs = nn.Dense { units = 1, activation = "sigmoid" }(nn.Dense { units = 16,
  activation = "relu" }(h)) }, "tanh gate", f3)
