-- The bundled model scripts run end to end on the bundled data.
local bin = os.getenv("MOELUA_BIN") or "build/moelua"
local H = require "helpers"
-- a command's stdout and stderr together, and whether it exited 0
local function sh(cmd)
  local out, err, rc = H.sh(cmd)
  return out .. err, rc == 0
end

describe("models/census_logreg.lua", function()
  it("trains on the bundled census data and beats the majority class", function()
    local p = io.popen(bin .. " run models/census_logreg.lua data/census-income.test.gz 60 2>&1")
    local out = p:read("*a")
    p:close()
    local rows = tonumber(out:match("loaded (%d+) rows"))
    assert.are.equal(99762, rows, out)
    local first = tonumber(out:match("epoch   1  train loss ([%d.]+)"))
    local last_acc = tonumber(out:match("epoch  60 .-val accuracy ([%d.]+)"))
    local last_loss = tonumber(out:match("epoch  60  train loss ([%d.]+)"))
    local base = tonumber(out:match("majority%-class accuracy on validation: ([%d.]+)"))
    assert.is_true(math.abs(first - math.log(2)) < 1e-3, out)   -- zero weights: loss ln 2
    assert.is_true(last_loss < 0.25, out)
    assert.is_true(last_acc > base, out)
  end)
end)

describe("models/census_mlp.lua (the main job)", function()
  it("trains a Sequential MLP with Adam, beats the majority class, and reloads its checkpoint exactly", function()
    local ckpt = os.tmpname()
    local p = io.popen(bin .. " run models/census_mlp.lua data/census-income.test.gz 2 " .. ckpt .. " 2>&1")
    local out = p:read("*a")
    p:close()
    os.remove(ckpt)
    assert.matches("Total params: 929", out)
    local acc = tonumber(out:match("epoch  2 .-val accuracy ([%d.]+)"))
    local base = tonumber(out:match("majority%-class accuracy on validation: ([%d.]+)"))
    local loss = tonumber(out:match("epoch  2 .-val loss ([%d.]+)"))
    assert.is_true(acc > base, out)
    assert.is_true(loss < 0.2, out)
    assert.matches("reloaded model's predictions differ by 0\n", out)
  end)
end)

describe("models/mmoe_census.lua (the main job)", function()
  it("runs in smoke mode: one short epoch, AUCs per task per set, a final test line", function()
    local dir = os.tmpname(); os.remove(dir)
    local p = io.popen(bin .. " run models/mmoe_census.lua --smoke --plot " .. dir .. " 2>&1")
    local out = p:read("*a")
    p:close()
    for _, f in ipairs { "/mmoe_census_curves.svg", "/mmoe_census_experts.svg" } do
      assert.matches("<svg", io.open(dir .. f):read("*a"))
    end
    os.execute("rm -rf " .. dir)
    assert.matches("census%-income: 99762 rows, %d+ features; train 49881, validation 24940, test 24941", out)
    local inc = tonumber(out:match("epoch  1 .-income AUC: train [%d.]+ val ([%d.]+)"))
    local nm = tonumber(out:match("never_married AUC: train [%d.]+ val ([%d.]+)"))
    assert.is_true(inc > 0.85, out)   -- 10,000 rows, one epoch: already far above chance
    assert.is_true(nm > 0.95, out)
    assert.matches("test AUC: income 0%.%d+  never_married 0%.%d+\n", out)
  end)
  it("trains each of the paper's models on either task group, and over seeds prints mean and best test AUCs", function()
    for _, m in ipairs { "omoe", "shared_bottom", "cgc", "ple" } do
      local out, ok = sh(bin .. " run models/mmoe_census.lua --smoke --model " .. m .. " --tasks education")
      assert.is_true(ok, out)
      local edu = tonumber(out:match("test AUC: education (0%.%d+)  never_married 0%.%d+\n"))
      assert.is_true(edu and edu > 0.7, m .. ": " .. out) -- one short epoch: far above chance
    end
    local csv = os.tmpname()
    os.remove(csv) -- (a new file: it gets the header)
    local out, ok = sh(bin .. " run models/mmoe_census.lua --smoke --model ple --seeds 2 --seed 3 --csv " .. csv)
    assert.is_true(ok, out)
    assert.equal("model,tasks,seed,task,best_epoch,val_auc,test_auc", io.open(csv):read("*l"))
    assert.matches("seed 3: best epoch 1, test AUC income 0%.%d+  never_married 0%.%d+", out)
    assert.matches("seed 4: best epoch 1", out)
    local v = { income = {}, never_married = {} }
    for line in io.lines(csv) do
      local model, tasks, seed, task, _, _, test = line:match("^(%w+),(%w+),(%d+),([%w_]+),(%d+),([%d.]+),([%d.]+)$")
      if model then
        assert.equal("ple", model); assert.equal("income", tasks)
        table.insert(v[task], tonumber(test))
      end
    end
    os.remove(csv)
    for task, l in pairs(v) do
      assert.equal(2, #l)
      local mean, sd, best = (l[1] + l[2]) / 2, math.abs(l[1] - l[2]) / math.sqrt(2), math.max(l[1], l[2])
      local m, s, b = out:match(task .. "%s+test AUC mean ([%d.]+) %+%- ([%d.]+) %(std%), best ([%d.]+)")
      assert.is_near(mean, tonumber(m), 6e-5, out); assert.is_near(sd, tonumber(s), 6e-5); assert.is_near(best, tonumber(b), 6e-5)
    end
  end)
  it("bench/census_table.lua: the table's cells are the mean, std and best of its runs' CSV", function()
    local dir = os.tmpname(); os.remove(dir)
    local out, ok = sh(bin .. " run bench/census_table.lua --smoke --seeds 2 --models omoe,cgc --groups education "
      .. "--no-torch --jobs 2 --out " .. dir .. "/t.md")
    assert.is_true(ok, out)
    local v = {}
    for line in io.lines(dir .. "/t.csv") do
      local model, _, _, task, _, _, test = line:match("^(%w+),(%w+),(%d+),([%w_]+),(%d+),([%d.]+),([%d.]+)$")
      if model then
        v[model .. "." .. task] = v[model .. "." .. task] or {}
        table.insert(v[model .. "." .. task], tonumber(test))
      end
    end
    local md = io.open(dir .. "/t.md"):read("*a")
    os.execute("rm -rf " .. dir)
    assert.matches("| model | group 2: education | group 2: never_married |", md, 1, true)
    for model, name in pairs { omoe = "OMoE", cgc = "CGC" } do
      local row = md:match("\n| " .. name .. " |([^\n]+)")
      assert.is_truthy(row, md)
      local k = 0
      for m, s, b in row:gmatch("([%d.]+) \194\177 ([%d.]+) %(([%d.]+)%)") do
        k = k + 1
        local l = v[model .. "." .. (k == 1 and "education" or "never_married")]
        assert.equal(2, #l)
        assert.is_near((l[1] + l[2]) / 2, tonumber(m), 6e-5)
        assert.is_near(math.abs(l[1] - l[2]) / math.sqrt(2), tonumber(s), 6e-5)
        assert.is_near(math.max(l[1], l[2]), tonumber(b), 6e-5)
      end
      assert.equal(2, k, row)
    end
  end)
  it("refuses an unknown option and a device this build lacks", function()
    local p = io.popen(bin .. " run models/mmoe_census.lua --epoch 3 2>&1")
    local out = p:read("*a")
    p:close()
    assert.matches("unknown option %-%-epoch", out)
    if require("moe").cuda.is_available() then return end -- (with a device, --device cuda trains: device_train_spec)
    p = io.popen(bin .. " run models/mmoe_census.lua --device cuda 2>&1")
    out = p:read("*a")
    p:close()
    assert.matches("%-%-device cuda: no CUDA device is available", out)
  end)
end)

describe("the seed experiments in models/ (smoke mode)", function()
  local function run(script, args)
    local p = io.popen(bin .. " run models/" .. script .. " --smoke " .. (args or "") .. " 2>&1")
    local out = p:read("*a")
    local ok = p:close()
    return out, ok
  end
  it("mmoe_synthetic.lua trains two regression towers and reports test errors", function()
    local out = run("mmoe_synthetic.lua")
    assert.matches("synthetic data: 100 features, correlation 0%.80", out)
    local first = tonumber(out:match("Epoch 1/2 .- loss ([%d.]+)"))
    local second = tonumber(out:match("Epoch 2/2 .- loss ([%d.]+)"))
    assert.is_true(second < first, out)
    assert.matches("test: loss [%d.]+  y1 mse [%d.]+ mae [%d.]+  y2 mse", out)
  end)
  it("moe_vs_mmoe.lua --quick: paired runs, each model's learning rate by validation, a table the CSVs bear out", function()
    local dir = os.tmpname(); os.remove(dir)
    local out, ok = sh(bin .. " run models/moe_vs_mmoe.lua --quick --jobs 2 --out " .. dir .. "/cmp")
    assert.is_true(ok, out)
    local function read(f) local h = assert(io.open(f)); local t = h:read("*a"); h:close(); return t end
    local function rows(f)
      local header, out_rows = nil, {}
      for line in io.lines(f) do
        local fields = {}
        for v in line:gmatch("[^,]+") do fields[#fields + 1] = v end
        if not header then header = fields
        else
          local r = {}
          for i, k in ipairs(header) do r[k] = tonumber(fields[i]) or fields[i] end
          out_rows[#out_rows + 1] = r
        end
      end
      return out_rows, header
    end
    local final, header = rows(dir .. "/cmp.csv")
    assert.same({ "model", "correlation", "seed", "lr", "test_loss", "val_loss", "curve_mean", "diverged" }, header)
    assert.equal(3 * 2 * 3, #final) -- 3 models x 2 correlations x 3 runs, a row each
    local by, seen = {}, {}
    for _, r in ipairs(final) do
      local k = r.model .. "@" .. r.correlation .. "@" .. r.seed
      assert.is_nil(seen[k], k); seen[k] = true
      by[k] = r
    end
    -- each run's final test loss is the last point of its curve
    local curves = rows(dir .. "/cmp_curves.csv")
    assert.equal(3 * 2 * 3 * 21, #curves) -- steps 0, 10, ..., 200
    for _, c in ipairs(curves) do
      if c.step == 200 then
        assert.is_near(by[c.model .. "@" .. c.correlation .. "@" .. c.seed].test_loss, c.test_loss, 1e-5)
      end
    end
    -- the learning rate: the lowest mean validation loss of the tuning runs, per model
    local tuning = rows(dir .. "/cmp_tuning.csv")
    assert.equal(3 * 2 * 2, #tuning) -- 3 models x 2 correlations x 2 rates, 1 tuning run
    for _, m in ipairs { "shared_bottom", "one_gate_moe", "multi_gate_moe" } do
      local sum = {}
      for _, r in ipairs(tuning) do
        if r.model == m then sum[r.lr] = (sum[r.lr] or 0) + r.val_loss end
        assert.is_true(r.seed > 1000, "tuning runs draw datasets of their own") -- (not the reported runs 1..3)
      end
      local best
      for lr, v in pairs(sum) do if not best or v < sum[best] then best = lr end end
      for _, r in ipairs(final) do if r.model == m then assert.equal(best, r.lr, m) end end
    end
    -- the table's paired difference at correlation 0.5 is the mean of the runs' differences
    local d = 0
    for s = 1, 3 do d = d + by["multi_gate_moe@0.5@" .. s].test_loss - by["one_gate_moe@0.5@" .. s].test_loss end
    local printed = tonumber(out:match("final test loss %(y1 %+ y2 MSE%).-MMoE %- OMoE%s+([%+%-][%d.]+)"))
    assert.is_near(d / 3, printed, 1e-4 + 1e-9)
    assert.matches("final test loss, corr 0%.50: MMoE [%a ]+ OMoE %(", out)
    assert.matches("the gap [%a' ]+ as the correlation falls", out)
    for _, f in ipairs { "/cmp.png", "/cmp_hist.png", "/cmp_final.png" } do
      assert.equal("\137PNG", read(dir .. f):sub(1, 4))
    end
    -- the same experiment in one process: the same numbers (the workers split the runs, nothing else)
    local out1, ok1 = sh(bin .. " run models/moe_vs_mmoe.lua --quick --jobs 1 --out " .. dir .. "/one")
    assert.is_true(ok1, out1)
    local function sorted(f)
      local l = {}
      for line in io.lines(f) do l[#l + 1] = line end
      table.sort(l)
      return l
    end
    assert.same(sorted(dir .. "/cmp.csv"), sorted(dir .. "/one.csv"))
    assert.same(sorted(dir .. "/cmp_curves.csv"), sorted(dir .. "/one_curves.csv"))
    -- a worker that fails: an error that names it and shows its message, and no results written
    local outf, okf = sh("MOE_VS_MMOE_FAIL=2 " .. bin .. " run models/moe_vs_mmoe.lua --quick --jobs 2 --out " .. dir
      .. "/fail")
    assert.is_false(okf, outf)
    assert.matches("moe_vs_mmoe: worker 2 %(exit status 1%):.-worker 2 made to fail", outf)
    for _, f in ipairs { "/fail.csv", "/fail_tuning.csv", "/fail_curves.csv", "/fail.svg" } do
      assert.is_nil(io.open(dir .. f), f)
    end
    os.execute("rm -rf " .. dir)
  end)
  it("moe_vs_mmoe.lua --models: CGC and PLE beside MMoE, paired with it; an unknown model is a usage error", function()
    local dir = os.tmpname(); os.remove(dir)
    local out, ok = sh(bin .. " run models/moe_vs_mmoe.lua --quick --models multi_gate_moe,cgc,ple --runs 2 --steps 40 "
      .. "--tune-runs 0 --lrs 1e-3 --jobs 1 --out " .. dir .. "/m")
    assert.is_true(ok, out)
    local by = {}
    for line in io.lines(dir .. "/m.csv") do
      local model, corr, seed, loss = line:match("^([%w_]+),([%d.]+),(%d+),[^,]+,([%d.]+),")
      if model then by[model .. "@" .. corr .. "@" .. seed] = tonumber(loss) end
    end
    os.execute("rm -rf " .. dir)
    local d = 0
    for s = 1, 2 do d = d + by["ple@0.5@" .. s] - by["multi_gate_moe@0.5@" .. s] end
    local printed = tonumber(out:match("final test loss %(y1 %+ y2 MSE%).-PLE %- MMoE%s+([%+%-][%d.]+)"))
    assert.is_near(d / 2, printed, 1e-4 + 1e-9)
    assert.matches("final test loss, corr 0%.50: CGC [%a ]+ MMoE %(.-; PLE [%a ]+ MMoE %(", out)
    assert.is_nil(out:find("OMoE", 1, true)) -- (no comparison with a model that did not run)
    local err, ok2 = sh(bin .. " run models/moe_vs_mmoe.lua --models mmoe")
    assert.is_false(ok2)
    assert.matches("%-%-models mmoe: 'mmoe' is not one of them", err)
  end)
  it("tabular_moe.lua trains the seed's Sequential, functional and multi-task networks", function()
    local out = run("tabular_moe.lua")
    assert.matches("sequential%s+test: accuracy [%d.]+  auc [%d.]+", out)
    assert.matches("functional%s+test: accuracy", out)
    assert.matches("multi%-task%s+test: anomaly_auc [%d.]+ .-classification_accuracy [%d.]+ .-regression_mae [%d.]+", out)
  end)
  it("gated_fusion.lua trains the three fusion models", function()
    local out = run("gated_fusion.lua")
    for _, name in ipairs { "sequential %(x, x%)", "functional raw%+tanh", "tanh gate" } do
      assert.matches(name .. "%s+test: accuracy [%d.]+  auc [%d.]+  loss [%d.]+  mean gate %-?[%d.]+", out)
    end
  end)
  it("switch_moe.lua trains with both routers and prints router metrics", function()
    local out = run("switch_moe.lua")
    assert.matches("tokens%-choose routing .-load_balancing_loss [%d.]+  router_z_loss", out)
    assert.matches("experts%-choose routing .-router_z_loss [%d.]+", out)
    assert.matches("experts%-choose: test token accuracy [%d.]+", out)
  end)
end)
