-- bench/census_table.lua: issue 18's results table on census-income. Trains the
-- shared bottom, OMoE, MMoE, CGC and PLE of models/mmoe_census.lua on both task
-- groups (income + never married; education + never married), --seeds runs each on
-- the same split and budget (8 epochs of batch 32, Adam 1e-3, the epoch of best
-- mean validation AUC), and the PyTorch peer of the MMoE (bench/peers/
-- torch_census_mmoe.py) on exactly that split (exported by bench/census_export.lua),
-- all in this one run, on a worker per core. Prints a markdown table of each task's
-- test AUC, mean +- std over the runs and the best, and writes it to --out.
--
--   build/moelua run bench/census_table.lua [--seeds 10] [--epochs 8] [--jobs 0] [--out build/census_table.md]
--                                           [--models mmoe,omoe,shared_bottom,cgc,ple] [--no-torch]
local cli = require "moe.cli"
local function one_of(valid)
  return function(v)
    local n = 0
    for x in v:gmatch("[^,]+") do
      if not valid[x] then return false, ("'%s' is not one of the choices"):format(x) end
      n = n + 1
    end
    return n > 0, "expected a comma-separated list"
  end
end
local opts = cli.parse(arg, {
  usage = "moelua run bench/census_table.lua [options]",
  about = "Issue 18's census-income table: five multi-task models and a PyTorch MMoE on both task groups.",
  { "seeds", 10, "runs per (model, task group)", min = 1 },
  { "epochs", 8, "epochs of each run", min = 1 },
  { "jobs", 0, "processes at once (0: one per core)", min = 0 },
  { "models", "shared_bottom,omoe,mmoe,cgc,ple", "the models, comma-separated", metavar = "LIST",
    check = one_of { shared_bottom = true, omoe = true, mmoe = true, cgc = true, ple = true } },
  { "groups", "income,education", "the task groups (income, education)", metavar = "LIST",
    check = one_of { income = true, education = true } },
  { "out", "build/census_table.md", "the table's file", metavar = "FILE" },
  { "no_torch", false, "leave out the PyTorch peer" },
  { "smoke", false, "the runs' --smoke (1 epoch on 10,000 rows; the peer: 1 epoch), for the tests" },
})
local function list(s)
  local out = {}
  for v in s:gmatch("[^,]+") do out[#out + 1] = v end
  return out
end
if opts.smoke then opts.epochs = 1 end
local models, groups = list(opts.models), list(opts.groups)
local csv_path = opts.out:gsub("%.md$", "") .. ".csv"
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
-- a command's output (its exit status is not read: LuaJIT's close() does not give it)
local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end
local jobs = opts.jobs > 0 and opts.jobs or cli.cores()
local bin = cli.self_exe()
local tmp = (sh("mktemp -d")):gsub("%s+$", "")
if tmp == "" or not io.open(tmp .. "/.") then error("census_table: mktemp -d failed: " .. tmp, 0) end
-- the checkout this script is in: the model script and the peers are found from it, whatever the directory
local root = (arg[0]:match("^(.*)/bench/[^/]+$") or "."):gsub("^$", "/")
local now = require("moe.trainer").now
local t0 = now()

local has_torch = not opts.no_torch and sh("python3 -c 'import torch' >/dev/null 2>&1 && echo yes"):match("yes") ~= nil
-- the work: one command per (model, group) and per group for the peer
local work = {}
for _, g in ipairs(groups) do
  if has_torch then
    local st = ("%s/%s.safetensors"):format(tmp, g)
    work[#work + 1] = { key = "torch:" .. g, cmd = ("%s run %s/bench/census_export.lua %s --tasks %s && "
      .. "python3 %s/bench/peers/torch_census_mmoe.py %s --seeds %d --epochs %d --tsv > %s/torch_%s.txt"):format(q(bin),
      q(root), q(st), g, q(root), q(st), opts.seeds, opts.epochs, q(tmp), g) }
  end
  for _, m in ipairs(models) do
    work[#work + 1] = { key = m .. ":" .. g, cmd = ("%s run %s/models/mmoe_census.lua --model %s --tasks %s --seeds %d "
      .. "--epochs %d --csv %s/%s_%s.csv%s > %s/%s_%s.log"):format(q(bin), q(root), m, g, opts.seeds, opts.epochs, q(tmp), m, g,
      opts.smoke and " --smoke" or "", q(tmp), m, g) }
  end
end
-- lanes: the commands dealt round-robin to `jobs` shells that run at once
local lanes = {}
for i, w in ipairs(work) do
  local k = (i - 1) % jobs + 1
  lanes[k] = lanes[k] or {}
  table.insert(lanes[k], ("(%s) || echo 'FAILED: %s'"):format(w.cmd, w.key))
end
print(("census_table: %d commands on %d processes (%d seeds, %d epochs)%s"):format(#work, #lanes, opts.seeds,
  opts.epochs, has_torch and "" or "; no PyTorch peer"))
local procs = {}
for k, l in ipairs(lanes) do
  procs[k] = io.popen("OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 sh -c " .. q(table.concat(l, "; "))
    .. " 2>&1")
end
local failed = {}
for _, p in ipairs(procs) do
  local out = p:read("*a")
  p:close()
  for key in out:gmatch("FAILED: (%S+)") do failed[#failed + 1] = key end
  if out:find("%S") then io.write(out) end
end
if #failed > 0 then error("census_table: failed: " .. table.concat(failed, ", ") .. " (logs in " .. tmp .. ")", 0) end

local function stats(v)
  local m, best = 0, -math.huge
  for _, x in ipairs(v) do m = m + x; best = math.max(best, x) end
  m = m / #v
  local s = 0
  for _, x in ipairs(v) do s = s + (x - m) ^ 2 end
  return m, #v > 1 and math.sqrt(s / (#v - 1)) or 0, best
end
local TASKS = { income = { "income", "never_married" }, education = { "education", "never_married" } }
local NAMES = { shared_bottom = "shared bottom", omoe = "OMoE", mmoe = "MMoE", cgc = "CGC", ple = "PLE" }
local cell = {} -- cell[row][group][task] = "mean +- std (best)"
local rows = {}
local csv = { "model,tasks,seed,task,best_epoch,val_auc,test_auc" } -- every run, beside the table
for _, m in ipairs(models) do
  rows[#rows + 1] = m
  cell[m] = {}
  for _, g in ipairs(groups) do
    cell[m][g] = {}
    local v = {}
    for line in io.lines(("%s/%s_%s.csv"):format(tmp, m, g)) do
      local model, _, _, task, _, _, test = line:match("^([^,]+),([^,]+),([^,]+),([^,]+),([^,]+),([^,]+),([^,]+)$")
      if model == m then v[task] = v[task] or {}; table.insert(v[task], tonumber(test)); csv[#csv + 1] = line end
    end
    for _, t in ipairs(TASKS[g]) do cell[m][g][t] = ("%.4f \194\177 %.4f (%.4f)"):format(stats(v[t])) end
  end
end
if has_torch then
  rows[#rows + 1] = "torch"
  NAMES.torch = "MMoE, PyTorch " .. (sh("python3 -c 'import torch; print(torch.__version__)'"):gsub("%s+$", ""))
  cell.torch = {}
  for _, g in ipairs(groups) do
    cell.torch[g] = {}
    local f = assert(io.open(("%s/torch_%s.txt"):format(tmp, g)))
    local txt = f:read("*a")
    f:close()
    for _, t in ipairs(TASKS[g]) do
      local get = function(k)
        return tonumber(txt:match("torch_mmoe%." .. t .. "%." .. k .. "\t(%S+)"))
          or error(("census_table: the PyTorch peer printed no %s for %s:\n%s"):format(k, t, txt), 0)
      end
      cell.torch[g][t] = ("%.4f \194\177 %.4f (%.4f)"):format(get("mean"), get("std"), get("best"))
    end
  end
end
local head, rule = { "| model" }, { "| ---" }
for _, g in ipairs(groups) do
  for _, t in ipairs(TASKS[g]) do
    head[#head + 1] = ("group %d: %s"):format(g == "income" and 1 or 2, t)
    rule[#rule + 1] = "---"
  end
end
local out = { table.concat(head, " | ") .. " |", table.concat(rule, " | ") .. " |" }
for _, r in ipairs(rows) do
  local line = { "| " .. NAMES[r] }
  for _, g in ipairs(groups) do for _, t in ipairs(TASKS[g]) do line[#line + 1] = cell[r][g][t] end end
  out[#out + 1] = table.concat(line, " | ") .. " |"
end
out[#out + 1] = ""
out[#out + 1] = ("Test ROC-AUC, mean \194\177 std over %d runs (best run in brackets); each run trains %d epochs of "
  .. "batch 32 with Adam (lr 1e-3) and keeps its epoch of best mean validation AUC. Protocol: the bundled UCI "
  .. "census-income *test* file (99,762 rows), split 50/25/25 by moelua's seeded permutation (seed 1); runs differ "
  .. "in the weights and the batch order. %.0f s on %d processes."):format(opts.seeds, opts.epochs, now() - t0, #lanes)
if opts.smoke then out[#out] = out[#out] .. " (--smoke: 1 epoch on 10,000 training rows; the peer 1 epoch on all of them)" end
local text = table.concat(out, "\n")
print(text)
do
  local parent = opts.out:match("^(.*[^/])/+[^/]*$")
  if parent then cli.makedirs(parent) end
  local function write(path, body)
    local f = assert(io.open(path .. ".tmp", "w"))
    f:write(body, "\n")
    f:close()
    assert(os.rename(path .. ".tmp", path))
  end
  write(opts.out, text)
  write(csv_path, table.concat(csv, "\n"))
end
print("wrote " .. opts.out .. " and " .. csv_path)
os.execute("rm -rf " .. q(tmp))
