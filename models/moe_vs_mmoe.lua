-- Seed 004's comparison: a shared-bottom model, a one-gate MoE and a multi-gate
-- MoE trained on the MMoE paper's synthetic data at several task correlations,
-- several seeds each. Writes a table (printed, and as CSV) and a chart of test
-- loss against correlation (SVG and PNG: the mean over seeds, a band of one
-- standard deviation around it). The paper's finding to look for: the
-- gap between MMoE and the others grows as the tasks become less correlated.
--
--   moelua run models/moe_vs_mmoe.lua [--epochs 10] [--seeds 3] [--n 12000]
--                                      [--correlations 0.5,0.7,0.9,1.0] [--out build/moe_vs_mmoe] [--smoke]
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"

local function correlation_list(s)
  local n = 0
  for c in s:gmatch("[^,]+") do
    local v = tonumber(c)
    if not v or v < -1 or v > 1 then return false, ("'%s' is not a number in [-1, 1]"):format(c) end
    n = n + 1
  end
  if n == 0 then return false, "expected a comma-separated list of correlations" end
  return true
end
local opts = cli.parse(arg, {
  usage = "moelua run models/moe_vs_mmoe.lua [options]",
  about = "Seed 004's comparison: shared-bottom, one-gate MoE and multi-gate MoE on the MMoE paper's\n"
    .. "synthetic data at several task correlations and seeds; a table, a CSV and a chart.",
  { "epochs", 10, "training epochs of each model", min = 1 },
  { "seeds", 3, "seeds per correlation", min = 1 },
  { "n", 12000, "rows of synthetic data (5/6 train, 1/6 test)", min = 12 },
  { "correlations", "0.5,0.7,0.9,1.0", "the task correlations, comma-separated", metavar = "LIST",
    check = correlation_list },
  { "out", "build/moe_vs_mmoe", "where the results go: PREFIX.csv, PREFIX.svg and PREFIX.png (directories made if missing)",
    metavar = "PREFIX" },
  { "lr", 1e-3, "Adam's learning rate", type = "number", min = 0 },
  { "batch_size", 32, "rows per batch", min = 1 },
  cli.device_option(),
  { "smoke", false, "a short run (1 epoch, 1 seed, 2,000 rows, correlations 0.5 and 1.0), for the test suite" },
})
if opts.smoke then opts.epochs, opts.seeds, opts.n, opts.correlations = 1, 1, 2000, "0.5,1.0" end
local corrs = {}
for c in opts.correlations:gmatch("[^,]+") do corrs[#corrs + 1] = tonumber(c) end
do
  local parent = opts.out:match("^(.*[^/])/+[^/]*$")
  local ok, err = cli.makedirs(parent or ".")
  if not ok then cli.fail("--out " .. opts.out .. ": " .. err) end
end

-- the three models, of comparable size: experts and the shared bottom give 16 units
local builders = {
  { "shared_bottom", function() return nn.SharedBottom { units = 16, num_tasks = 2, hidden_units = { 64 } } end },
  { "one_gate_moe", function() return nn.OMoE { units = 16, num_experts = 8, num_tasks = 2 } end },
  { "multi_gate_moe", function() return nn.MMoE { units = 16, num_experts = 8, num_tasks = 2 } end },
}

local function run(build, syn, seed)
  local n = syn.x:size(1)
  local ntr = math.floor(n * 5 / 6)
  moe.manual_seed(seed)
  local x = moe.Input { shape = { syn.x:size(2) } }
  local tasks = build()(x)
  local outputs = {}
  for i, name in ipairs(syn.task_names) do
    outputs[name] = nn.Dense { units = 1, name = name }(nn.Dense { units = 8, activation = "relu" }(tasks[i]))
  end
  local model = moe.Model { inputs = x, outputs = outputs }
  model:to(opts.device) -- (--device) its weights there; fit moves each batch
  model:compile { optimizer = moe.optim.Adam { lr = opts.lr }, loss = "mse" }
  local y = { y1 = syn.y.y1:narrow(1, 1, ntr), y2 = syn.y.y2:narrow(1, 1, ntr) }
  model:fit { x = syn.x:narrow(1, 1, ntr), y = y, epochs = opts.epochs, batch_size = opts.batch_size, verbose = 0,
    seed = seed }
  local yt = { y1 = syn.y.y1:narrow(1, ntr + 1, n - ntr), y2 = syn.y.y2:narrow(1, ntr + 1, n - ntr) }
  return model:evaluate { x = syn.x:narrow(1, ntr + 1, n - ntr), y = yt }.loss
end

local results = {} -- results[model][corr] = list of test losses
local rows = { "model,correlation,seed,test_loss" }
for _, b in ipairs(builders) do results[b[1]] = {} end
for _, c in ipairs(corrs) do
  for seed = 1, opts.seeds do
    local syn = moe.datasets.synthetic { n = opts.n, correlation = c, seed = seed }
    for _, b in ipairs(builders) do
      local loss = run(b[2], syn, seed)
      results[b[1]][c] = results[b[1]][c] or {}
      table.insert(results[b[1]][c], loss)
      rows[#rows + 1] = ("%s,%g,%d,%.6f"):format(b[1], c, seed, loss)
      print(("correlation %.2f  seed %d  %-15s test loss %.4f"):format(c, seed, b[1], loss))
    end
  end
end

local function stats(l)
  local m = 0
  for _, v in ipairs(l) do m = m + v end
  m = m / #l
  local s = 0
  for _, v in ipairs(l) do s = s + (v - m) ^ 2 end
  return m, #l > 1 and math.sqrt(s / (#l - 1)) or 0
end

print()
local head = { ("%-15s"):format("test loss") }
for _, c in ipairs(corrs) do head[#head + 1] = ("corr %-12.2f"):format(c) end
print(table.concat(head, " "))
local series = {}
for _, b in ipairs(builders) do
  local line, ys, sds = { ("%-15s"):format(b[1]) }, {}, {}
  for i, c in ipairs(corrs) do
    local m, s = stats(results[b[1]][c])
    line[#line + 1] = ("%.4f +- %-7.4f"):format(m, s)
    ys[i], sds[i] = m, s
  end
  print(table.concat(line, " "))
  -- the mean over seeds, with a band of one standard deviation (the spread
  -- over seeds is of the size of the gaps between the models)
  series[#series + 1] = { name = b[1], x = corrs, y = ys, err = opts.seeds > 1 and sds or nil }
end

local f = assert(io.open(opts.out .. ".csv.tmp", "w"))
f:write(table.concat(rows, "\n"), "\n")
f:close()
assert(os.rename(opts.out .. ".csv.tmp", opts.out .. ".csv"))
for _, ext in ipairs { ".svg", ".png" } do
  moe.plot.lines(series, opts.out .. ext, { title = opts.seeds > 1
      and ("test loss against task correlation (mean \194\177 sd over %d seeds)"):format(opts.seeds)
      or "test loss against task correlation (1 seed)",
    xlabel = "task correlation", ylabel = "test loss (y1 + y2 MSE)" })
end
print(("wrote %s.csv, %s.svg and %s.png"):format(opts.out, opts.out, opts.out))
