-- Seed 000's TabularMoELayer examples, trained on synthetic tabular data:
-- a Sequential binary classifier, a functional one, and the seed's scalable
-- multi-task network (5-class classification + regression + anomaly heads,
-- loss weights 1.0 / 0.5 / 0.3).
--
--   moelua run models/tabular_moe.lua [--epochs 10] [--n 6000] [--seed 1] [--smoke]
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local opts = cli.parse(arg, {
  usage = "moelua run models/tabular_moe.lua [options]",
  about = "Seed 000's TabularMoELayer networks on synthetic tabular data: a Sequential and a functional\n"
    .. "binary classifier, and the multi-task network (5-class + regression + anomaly heads).",
  { "epochs", 10, "training epochs", min = 1 },
  { "n", 6000, "rows of synthetic data (80% train, 20% test)", min = 100 },
  { "seed", 1, "the seed of the data, the weights and the batch order" },
  { "batch_size", 64, "rows per batch", min = 1 },
  cli.device_option(),
  { "smoke", false, "a short run (1 epoch, 1,500 rows), for the test suite" },
})
if opts.smoke then opts.epochs, opts.n = 1, 1500 end

-- 40 features; the labels depend on them in different ways, so that experts help:
-- class = the largest of 5 random projections of relu(x); target = a smooth
-- function of the first features; anomaly = the 5% of rows highest on x7 + x8
moe.manual_seed(opts.seed)
local n, F = opts.n, 40
local x = moe.randn(n, F)
local proj = moe.randn(F, 5)
local class = x:relu():matmul(proj):argmax(2)                                  -- [n] 1..5
local onehot = moe.zeros(n, 5):scatter_add(2, class:view(-1, 1), moe.ones(n, 1))
local target = (x:narrow(2, 1, 4):tanh():sum(2, true) + x:select(2, 5):view(-1, 1) * x:select(2, 6):view(-1, 1))
local norm = x:select(2, 7) + x:select(2, 8)
local cut = norm:sort(1, true):select(1, math.max(1, math.floor(n * 0.05))):item()
local anomaly = norm:ge(cut):float():view(-1, 1)
local binary = class:le(2):float():view(-1, 1)                                -- classes 1-2 vs the rest
local ntr = math.floor(n * 0.8)
local function tr(t) return t:narrow(1, 1, ntr) end
local function te(t) return t:narrow(1, ntr + 1, n - ntr) end
print(("synthetic tabular data: %d rows x %d features; train %d, test %d"):format(n, F, ntr, n - ntr))

local function report(name, logs)
  local keys = {}
  for k in pairs(logs) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = ("%s %.4f"):format(k, logs[k]) end
  print(("%-12s test: %s"):format(name, table.concat(parts, "  ")))
end

-- 1. Sequential, as the seed writes it
moe.manual_seed(opts.seed)
local seq = moe.Sequential {
  nn.Dense { units = 32, activation = "relu" },
  nn.TabularMoELayer { num_experts = 4, expert_units = 16 },
  nn.Dense { units = 16, activation = "relu" },
  nn.TabularMoELayer { num_experts = 2, expert_units = 8 },
  nn.Dense { units = 1, activation = "sigmoid" },
  input_shape = { F }, name = "sequential_moe",
}
seq:to(opts.device) -- (--device) its weights there; fit moves each batch
seq:compile { optimizer = "adam", loss = "binary_crossentropy", metrics = { "accuracy", "auc" } }
seq:fit { x = tr(x), y = tr(binary), epochs = opts.epochs, batch_size = opts.batch_size, verbose = 0, seed = opts.seed }
report("sequential", seq:evaluate { x = te(x), y = te(binary) })

-- 2. functional
moe.manual_seed(opts.seed)
local inp = moe.Input { shape = { F } }
local h = nn.TabularMoELayer { num_experts = 4, expert_units = 16 }(inp)
h = nn.Dense { units = 32, activation = "relu" }(h)
h = nn.TabularMoELayer { num_experts = 2, expert_units = 16 }(h)
h = nn.Dense { units = 16, activation = "relu" }(h)
local func = moe.Model { inputs = inp, outputs = nn.Dense { units = 1, activation = "sigmoid" }(h), name = "functional_moe" }
func:to(opts.device) -- (--device) its weights there; fit moves each batch
func:compile { optimizer = "adam", loss = "binary_crossentropy", metrics = { "accuracy", "auc" } }
func:fit { x = tr(x), y = tr(binary), epochs = opts.epochs, batch_size = opts.batch_size, verbose = 0, seed = opts.seed }
report("functional", func:evaluate { x = te(x), y = te(binary) })

-- 3. the seed's scalable multi-task architecture
moe.manual_seed(opts.seed)
inp = moe.Input { shape = { F } }
h = nn.TabularMoELayer { num_experts = 8, expert_units = 32 }(inp)
h = nn.BatchNormalization {}(nn.Dense { units = 64, activation = "relu" }(h))
h = nn.TabularMoELayer { num_experts = 6, expert_units = 32 }(h)
h = nn.Dropout { rate = 0.2 }(nn.Dense { units = 48, activation = "relu" }(h))
h = nn.TabularMoELayer { num_experts = 4, expert_units = 24 }(h)
h = nn.Dropout { rate = 0.1 }(nn.Dense { units = 32, activation = "relu" }(h))
h = nn.TabularMoELayer { num_experts = 2, expert_units = 16 }(h)
h = nn.Dense { units = 16, activation = "relu" }(h)
local multi = moe.Model { inputs = inp, name = "multitask_moe", outputs = {
  classification = nn.Dense { units = 5, activation = "softmax", name = "classification" }(h),
  regression = nn.Dense { units = 1, name = "regression" }(h),
  anomaly = nn.Dense { units = 1, activation = "sigmoid", name = "anomaly" }(h) } }
multi:to(opts.device) -- (--device) its weights there; fit moves each batch
multi:compile { optimizer = "adam",
  loss = { classification = "categorical_crossentropy", regression = "mse", anomaly = "binary_crossentropy" },
  loss_weights = { classification = 1.0, regression = 0.5, anomaly = 0.3 },
  metrics = { classification = { "accuracy" }, regression = { "mae" }, anomaly = { "auc" } } }
local ys = function(f) return { classification = f(onehot), regression = f(target), anomaly = f(anomaly) } end
multi:fit { x = tr(x), y = ys(tr), epochs = opts.epochs, batch_size = opts.batch_size, verbose = 0, seed = opts.seed }
report("multi-task", multi:evaluate { x = te(x), y = ys(te) })
