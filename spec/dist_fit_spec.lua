-- Data-parallel fit{} and evaluate{} (lua/moe/trainer.lua, moe.data.distributed_batches,
-- metrics' sync): N ranks with per-rank batch b train as one process with batch N*b.
-- The rank scripts run under `mpirun -np N build/moelua run` (with a timeout); the
-- 1-process reference runs the same script without mpirun. Without mpirun or MPI
-- the MPI tests are skipped and say why.
local moe = require "moe"
local H = require "helpers"
local skip_reason = H.mpi_skip_reason()
local slurp = H.read_file
-- runs src on np ranks (np = 0: one plain process, no mpirun) in a fresh
-- directory (H.mpi_runner); {rc, out, err, dir, lines = {[rank] = {stdout lines}}}
local runner = H.mpi_runner(120)
local function run(np, src, args) return runner.run(np, src, { args = args }) end
local function expect_ok(r)
  if r.rc ~= 0 then error(("exit %s\nstdout:\n%s\nstderr:\n%s"):format(tostring(r.rc), r.out, r.err), 2) end
end
-- "key=value" lines of one rank's output
local function values(lines)
  local v = {}
  for _, l in ipairs(lines or {}) do
    local k, x = l:match("^([%w_]+)=(%S+)$")
    if k then v[k] = tonumber(x) or x end
  end
  return v
end
local function close(a, b, tol) return math.abs(a - b) <= tol * math.max(1, math.abs(a), math.abs(b)) end
-- every number of the 1-process run's "key=value" lines (ref) against rank 0's
-- (v0), within 2e-5, and rank 0's against rank 1's (v1), to the bit
local function same_logs(ref, v0, v1, except)
  for k, r in pairs(ref) do
    if k ~= except then
      assert.is_true(close(r, v0[k], 2e-5), ("%s: one process %.9g, 2 ranks %.9g"):format(k, r, v0[k]))
      assert.are.equal(v0[k], v1[k]) -- the same logs on every rank, to the bit
    end
  end
end
-- the largest difference between the weights of two checkpoints
local function weights_diff(path_a, path_b)
  local a, c = moe.load(path_a):get_weights(), moe.load(path_b):get_weights()
  assert.are.equal(#c, #a)
  local worst = 0
  for i = 1, #a do worst = math.max(worst, (a[i] - c[i]):abs():max():item()) end
  return worst
end

describe("moe.data.distributed_batches", function()
  -- the positions of one process's order that rank r's batches hold, checked against a naive list
  it("gives each rank DistributedSampler's slice, and the ranks' batch k is one process's batch k", function()
    for _, case in ipairs { { 12, 3, 2 }, { 10, 3, 2 }, { 7, 2, 3 }, { 5, 4, 1 } } do
      local n, W, b = case[1], case[2], case[3]
      local full = {}
      for idx in moe.data.batches(n, n, { seed = 9 }) do full = idx:totable() end
      local per = math.ceil(n / W)
      local seen = {}
      local nbatches
      for r = 0, W - 1 do
        local it, rows = moe.data.distributed_batches(n, b, { rank = r, world_size = W, seed = 9 })
        assert.are.equal(per, rows)
        local got, k = {}, 0
        for idx, bn in it do
          k = k + 1
          assert.are.equal(k, bn)
          for _, v in ipairs(idx:totable()) do got[#got + 1] = v end
        end
        nbatches = nbatches or k
        assert.are.equal(nbatches, k) -- as many batches on every rank
        -- naive: positions r+1, r+1+W, ... of the padded order
        for j = 1, per do
          local pos = (j - 1) * W + r + 1
          if pos > n then pos = pos - n end
          assert.are.equal(full[pos], got[j])
          seen[full[pos]] = (seen[full[pos]] or 0) + 1
        end
      end
      for i = 1, n do assert.is_true((seen[i] or 0) >= 1) end -- every row, the padding twice
    end
  end)
  it("with drop_last cuts the order to a multiple of world_size", function()
    local total = 0
    for r = 0, 2 do
      local it, rows = moe.data.distributed_batches(10, 4, { rank = r, world_size = 3, drop_last = true, shuffle = false })
      assert.are.equal(3, rows)
      local got = {}
      for idx in it do for _, v in ipairs(idx:totable()) do got[#got + 1] = v end end
      assert.are.same({ r + 1, r + 4, r + 7 }, got)
      total = total + #got
    end
    assert.are.equal(9, total)
  end)
  it("names its bad arguments", function()
    assert.has_error(function() moe.data.distributed_batches(10, 2, { rank = 3, world_size = 3 }) end,
      "distributed_batches: rank must be an integer in 0..2, got 3")
    assert.has_error(function() moe.data.distributed_batches(10, 2, { rank = 0, world_size = 0 }) end,
      "distributed_batches: world_size must be a positive integer, got 0")
    assert.has_error(function() moe.data.distributed_batches(2, 2, { rank = 0, world_size = 3, drop_last = true }) end,
      "distributed_batches: 2 rows cannot give each of 3 ranks a row with drop_last")
  end)
end)

describe("fit{distributed} in a 1-process world", function()
  it("trains as a plain fit with the same seed (distributed_batches with one rank is batches' order)", function()
    local function train(d)
      moe.manual_seed(3)
      local x = moe.randn(40, 3)
      local y = (x:sum(2, true):gt(0)):to("float32")
      local m = moe.nn.Sequential { moe.nn.Dense { units = 4, activation = "relu" }, moe.nn.Dense { units = 1, activation = "sigmoid" } }
      m:compile { optimizer = moe.optim.Adam { lr = 0.01 }, loss = "binary_crossentropy", metrics = { "auc" } }
      local h = m:fit { x = x, y = y, batch_size = 8, epochs = 2, seed = 4, verbose = 0, distributed = d }
      return h, m:get_weights()
    end
    local h1, w1 = train(false)
    local h2, w2 = train(true)
    assert.are.same(h1.history.loss, h2.history.loss)
    assert.are.same(h1.history.auc, h2.history.auc)
    for i = 1, #w1 do assert.are.same(w1[i]:totable(), w2[i]:totable()) end
  end)
  it("ModelCheckpoint{verbose = 1} saves and says so", function()
    local dir = os.tmpname()
    os.remove(dir)
    local m = moe.nn.Sequential { moe.nn.Dense { units = 1 } }
    m:compile { optimizer = "sgd", loss = "mse" }
    local said = {}
    local old = _G.print -- (the library's print; busted gives the spec its own globals)
    _G.print = function(...) said[#said + 1] = table.concat({ ... }, " ") end
    local ok, err = pcall(function()
      m:fit { x = moe.randn(4, 2), y = moe.randn(4, 1), verbose = 0, distributed = true,
        callbacks = { moe.callbacks.ModelCheckpoint { filepath = dir .. ".moe", verbose = 1 } } }
    end)
    _G.print = old
    assert.is_true(ok, tostring(err))
    assert.are.same({ "ModelCheckpoint: saved " .. dir .. ".moe" }, said)
    assert.truthy(slurp(dir .. ".moe"))
    os.remove(dir .. ".moe")
  end)
  it("rejects a distributed that is not a boolean, at the caller's line", function()
    local m = moe.nn.Sequential { moe.nn.Dense { units = 1 } }
    m:compile { optimizer = "sgd", loss = "mse" }
    local ok, err = pcall(function() m:fit { x = moe.randn(4, 2), y = moe.randn(4, 1), distributed = "yes", verbose = 0 } end)
    assert.is_false(ok)
    assert.matches("dist_fit_spec.lua:%d+: fit: distributed must be true or false, got \"yes\"", err)
  end)
end)

-- the census MMoE (seed 002's model, smaller) on 2,000 rows of the bundled data
local CENSUS = [[
local moe = require "moe"
local nn = moe.nn
local D = moe.distributed
io.stdout:setvbuf("line")
local W = D.world_size()
local b = tonumber(arg[1]) / W -- per-rank batch: the run's total batch over the ranks
local ds = moe.datasets.census_income { tasks = { "income", "never_married" }, seed = 1 }
local idx = moe.arange(1, 2001)
local xtr = ds.train.x:index_select(1, idx)
local ytr = { income = ds.train.y.income:index_select(1, idx), never_married = ds.train.y.never_married:index_select(1, idx) }
local vidx = moe.arange(1, 502) -- an odd count: the ranks' shares differ
local xva = ds.val.x:index_select(1, vidx)
local yva = { income = ds.val.y.income:index_select(1, vidx), never_married = ds.val.y.never_married:index_select(1, vidx) }
moe.manual_seed(7 + D.rank()) -- different draws per rank: fit must broadcast rank 0's weights
local x = moe.Input { shape = { ds.num_features }, name = "features" }
local tasks = nn.MMoE { units = 4, num_experts = 4, num_tasks = 2, name = "mmoe" }(x)
local outputs = {}
for i, name in ipairs(ds.task_names) do
  local h = nn.Dense { units = 8, activation = "relu", name = name .. "_tower" }(tasks[i])
  outputs[name] = nn.Dense { units = 1, activation = "sigmoid", name = name }(h)
end
local model = moe.Model { inputs = x, outputs = outputs, name = "mmoe_census" }
model:compile { optimizer = moe.optim.Adam { lr = 0.01 }, loss = "binary_crossentropy", metrics = { "auc", "accuracy" } }
local h = model:fit { x = xtr, y = ytr, batch_size = b, epochs = 3, seed = 11, verbose = 2,
  validation_data = { xva, yva },
  callbacks = { moe.callbacks.CSVLogger { filename = "log" .. D.rank() .. ".csv" },
    moe.callbacks.EarlyStopping { monitor = "val_loss", patience = 0, min_delta = 0 },
    moe.callbacks.ModelCheckpoint { filepath = "ckpt" .. D.rank() .. ".moe", verbose = 1 } } }
for e = 1, #h.epoch do
  for _, k in ipairs { "loss", "income_auc", "never_married_auc", "income_accuracy", "val_loss", "val_income_auc" } do
    print(("%s_%d=%.12g"):format(k, e, h.history[k][e]))
  end
end
print("epochs=" .. #h.epoch)
model:save("model" .. (W == 1 and "_ref" or "") .. ".moe")
]]

describe("fit{} data parallel under mpirun", function()
  teardown(runner.cleanup)
  local pending_ = pending
  before_each(function() if skip_reason then pending_(skip_reason) end end)

  it("2 ranks × batch b give one process's losses, exact AUCs and weights at batch 2b (the census MMoE)", function()
    if skip_reason then return end
    local two = run(2, CENSUS, "64")
    expect_ok(two)
    local one = run(0, CENSUS, "64")
    expect_ok(one)
    local v0, v1, ref = values(two.lines[0]), values(two.lines[1]), values(one.lines[0])
    assert.are.equal(ref.epochs, v0.epochs)
    assert.is_true(ref.epochs >= 2)
    same_logs(ref, v0, v1, "epochs")
    -- only rank 0 prints the epoch lines and writes the CSV log and the checkpoint
    local epoch_lines = 0
    for _, l in ipairs(two.lines[1] or {}) do if l:match("^Epoch ") then epoch_lines = epoch_lines + 1 end end
    assert.are.equal(0, epoch_lines)
    assert.truthy(slurp(two.dir .. "/log0.csv"))
    assert.is_nil(slurp(two.dir .. "/log1.csv"))
    assert.truthy(slurp(two.dir .. "/ckpt0.moe"))
    assert.is_nil(slurp(two.dir .. "/ckpt1.moe"))
    -- the weights: rank 0's checkpoint against the reference's
    local worst = weights_diff(two.dir .. "/model.moe", one.dir .. "/model_ref.moe")
    assert.is_true(worst < 1e-5, "largest weight difference " .. worst)
  end)

  it("a sparse MoE model, expert parallel and data parallel, trains at 2 ranks × b as one process at 2b", function()
    if skip_reason then return end
    local src = [[
local moe = require "moe"
local nn = moe.nn
local D = moe.distributed
io.stdout:setvbuf("line")
local W = D.world_size()
local b = tonumber(arg[1]) / W
moe.manual_seed(3)
local X, Y = moe.randn(64, 4, 6), moe.randn(64, 4, 6)
moe.manual_seed(11) -- (the experts are drawn whole on every rank, each keeping its slice)
local m = nn.Sequential {
  nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 5 },
    router = nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2,
      load_balancing_loss_weight = 0.1, router_z_loss_weight = 0.1 },
    dropless = true, expert_parallel = W > 1, name = "moe" },
  nn.Dense { units = 6 } }
m:compile { optimizer = moe.optim.Adam { lr = 0.02 }, loss = "mse" }
local h = m:fit { x = X, y = Y, batch_size = b, epochs = 3, seed = 5, verbose = 0,
  validation_data = { X:narrow(1, 1, 13), Y:narrow(1, 1, 13) } }
for e = 1, 3 do
  for _, k in ipairs { "loss", "val_loss", "load_balancing_loss", "router_z_loss" } do
    print(("%s_%d=%.12g"):format(k, e, h.history[k][e]))
  end
end
if W > 1 then print("imbalance=" .. h.history.rank_imbalance[3]) end
print("params=" .. m:count_params()) -- (the whole model's, the shards counted whole)
m:save("sparse.moe") -- (collective: the experts gathered, rank 0 writes)
]]
    local two, one = run(2, src, "16"), run(0, src, "16")
    expect_ok(two); expect_ok(one)
    local v0, v1, ref = values(two.lines[0]), values(two.lines[1]), values(one.lines[0])
    same_logs(ref, v0, v1)
    assert.is_true(v0.imbalance >= 1) -- the per-rank loads reach the logs
    local worst = weights_diff(two.dir .. "/sparse.moe", one.dir .. "/sparse.moe")
    assert.is_true(worst < 1e-5, "largest weight difference " .. worst)
  end)

  it("averages through the reducer, its buckets started during backward; deterministic runs repeat to the bit", function()
    if skip_reason then return end
    local src = [[
local moe = require "moe"
local D = moe.distributed
io.stdout:setvbuf("line")
moe.set_deterministic(true)
moe.manual_seed(1)
local x, y = moe.randn(64, 8), moe.randn(64, 1)
local m = moe.nn.Sequential { moe.nn.Dense { units = 600, activation = "relu" }, moe.nn.Dense { units = 600, activation = "relu" },
  moe.nn.Dense { units = 1 } }
m:compile { optimizer = "adam", loss = "mse" }
local R, made = D.Reducer, nil
D.Reducer = function(...) made = R(...); return made end -- (to read its stats)
m:fit { x = x, y = y, batch_size = 8, epochs = 1, verbose = 0, seed = 3 }
local st = made:stats()
print("buckets=" .. st.buckets); print("steps=" .. st.steps); print("early=" .. st.started_in_backward)
print("det=" .. tostring(st.deterministic))
local bits = {}
for _, w in ipairs(m:get_weights()) do bits[#bits + 1] = ("%.17g"):format(w:double():sum():item()) end
print("w=" .. table.concat(bits, ","))
]]
    local a, b = run(2, src), run(2, src)
    expect_ok(a); expect_ok(b)
    local v = values(a.lines[0])
    assert.is_true(v.buckets >= 2, a.out) -- (1.4 MiB of gradients: the 1 MiB first bucket, then the rest)
    assert.are.equal(4, v.steps) -- 64 rows, 2 ranks, 8 a batch
    assert.is_true(v.early >= 1, a.out) -- a bucket's all-reduce started before backward returned
    assert.are.equal("true", v.det)
    assert.are.equal(v.w, values(a.lines[1]).w) -- every rank, the same bits
    assert.are.equal(v.w, values(b.lines[0]).w) -- and every run
  end)

  it("models/mmoe_census.lua under mpirun -np 2 trains data parallel and prints its results once", function()
    if skip_reason then return end
    local root = os.getenv("PWD") or "."
    local r = run(2, ("arg = { [0] = %q, '--smoke', '--epochs', '1' }\ndofile(%q)"):format(
      root .. "/models/mmoe_census.lua", root .. "/models/mmoe_census.lua"))
    expect_ok(r)
    local function count(rk, pat)
      local c = 0
      for _, l in ipairs(r.lines[rk] or {}) do if l:match(pat) then c = c + 1 end end
      return c
    end
    assert.are.equal(1, count(0, "^test AUC: income 0%.%d+  never_married 0%.%d+$"), r.out)
    assert.are.equal(1, count(0, "^data parallel over 2 ranks"), r.out)
    assert.are.equal(0, #(r.lines[1] or {}), r.out) -- rank 1 prints nothing
  end)

  it("averages the moving statistics of BatchNormalization over the ranks at each epoch's end", function()
    if skip_reason then return end
    local r = run(2, [[
local moe = require "moe"
io.stdout:setvbuf("line")
moe.manual_seed(1)
local x, y = moe.randn(32, 3), moe.randn(32, 1)
local m = moe.nn.Sequential { moe.nn.Dense { units = 4 }, moe.nn.BatchNormalization {}, moe.nn.Dense { units = 1 } }
m:compile { optimizer = "sgd", loss = "mse" }
m:fit { x = x, y = y, batch_size = 4, epochs = 2, verbose = 0, seed = 2 }
local bits = {}
for _, w in ipairs(m:get_weights()) do bits[#bits + 1] = ("%.17g"):format(w:double():sum():item()) end
print("w=" .. table.concat(bits, ","))
]])
    expect_ok(r)
    assert.are.equal(values(r.lines[0]).w, values(r.lines[1]).w)
  end)

  it("refuses ranks with different data, and an expert-parallel model trained rank by rank, on every rank", function()
    if skip_reason then return end
    local r = run(2, [[
local moe = require "moe"
local D = moe.distributed
io.stdout:setvbuf("line")
local n = 10 + D.rank() * 2
local m = moe.nn.Sequential { moe.nn.Dense { units = 1 } }
m:compile { optimizer = "sgd", loss = "mse" }
local ok, err = pcall(function() m:fit { x = moe.randn(n, 2), y = moe.randn(n, 1), batch_size = 5, verbose = 0 } end)
print("err=" .. tostring(err):gsub("%s", "_"))
local e = moe.nn.MoeLayer { experts = moe.nn.FeedForwardExperts { num_experts = 2, d_ff = 3 },
  router = moe.nn.TokensChooseMaskedRouter { num_experts = 2 }, expert_parallel = true, dropless = true }
e(moe.randn(2, 3, 4))
local mm = moe.nn.Sequential { e }
mm:compile { optimizer = "sgd", loss = "mse" }
ok, err = pcall(function() mm:fit { x = moe.randn(4, 3, 4), y = moe.randn(4, 3, 4), verbose = 0, distributed = false } end)
print("alone=" .. tostring(err):gsub("%s", "_"))
]])
    expect_ok(r)
    for rk = 0, 1 do
      local v = values(r.lines[rk])
      assert.matches("script.lua:%d+:_fit:_data_parallel_needs_the_same_training_rows_on_every_rank,_but_they_range_from_10_to_12", v.err)
      assert.matches("script.lua:%d+:_fit:_Sequential_.-has_expert%-parallel_layers", v.alone)
    end
  end)

  it("averages the gradients: one step at 2 ranks is the step on the union of their batches", function()
    if skip_reason then return end
    local r = run(2, [[
local moe = require "moe"
local D = moe.distributed
io.stdout:setvbuf("line")
moe.manual_seed(1)
local x, y = moe.randn(8, 3), moe.randn(8, 1)
local function model()
  moe.manual_seed(5)
  local m = moe.nn.Sequential { moe.nn.Dense { units = 2 }, moe.nn.Dense { units = 1 } }
  m:compile { optimizer = moe.optim.SGD { lr = 0.5 }, loss = "mse" }
  return m
end
local m = model()
-- no shuffle: rank r gets rows r+1, r+3, ... (DistributedSampler's stride)
m:fit { x = x, y = y, batch_size = 4, epochs = 1, shuffle = false, verbose = 0 }
local ref = model()
ref:fit { x = x, y = y, batch_size = 8, epochs = 1, shuffle = false, verbose = 0, distributed = false }
local worst = 0
local a, b = m:get_weights(), ref:get_weights()
for i = 1, #a do worst = math.max(worst, (a[i] - b[i]):abs():max():item()) end
print("worst=" .. worst)
]])
    expect_ok(r)
    for rk = 0, 1 do assert.is_true(values(r.lines[rk]).worst < 1e-6, r.out) end
  end)

  it("stops every rank at the same batch when one rank's loss is not finite", function()
    if skip_reason then return end
    local r = run(2, [[
local moe = require "moe"
local D = moe.distributed
io.stdout:setvbuf("line")
moe.manual_seed(1)
local x, y = moe.randn(16, 3), moe.randn(16, 1)
x[6][1] = 0 / 0 -- row 6: rank 1's third row (no shuffle), so its batch 2
local m = moe.nn.Sequential { moe.nn.Dense { units = 1 } }
m:compile { optimizer = moe.optim.SGD { lr = 0.1 }, loss = "mse" }
local h = m:fit { x = x, y = y, batch_size = 2, epochs = 2, shuffle = false, verbose = 0 }
print("stopped=" .. tostring(h.stopped):gsub("%s", "_"))
print("w=" .. m:get_weights()[1]:sum():item())
]])
    expect_ok(r)
    local a, b = values(r.lines[0]), values(r.lines[1])
    assert.matches("batch_2", a.stopped)
    assert.are.equal(a.stopped, b.stopped)
    assert.are.equal(a.w, b.w)
    assert.is_true(a.w == a.w) -- finite: the step with NaN was not applied
  end)

  it("syncs metrics exactly over the ranks (AUC over every rank's samples) and refuses a metric without sync", function()
    if skip_reason then return end
    local r = run(3, [[
local moe = require "moe"
local D = moe.distributed
io.stdout:setvbuf("line")
local rank = D.rank()
-- every rank's data, known to all: rank r has 5 + r rows
local ys, ps = {}, {}
local function data(r)
  local y, p = {}, {}
  for i = 1, 5 + r do y[i] = (i + r) % 2; p[i] = ((i * 7 + r * 3) % 11) / 11 end
  return moe.tensor(y), moe.tensor(p)
end
for r = 0, 2 do local y, p = data(r); ys[#ys + 1] = y; ps[#ps + 1] = p end
local auc, acc = moe.metrics.AUC(), moe.metrics.BinaryAccuracy()
local y, p = data(rank)
auc:update(y, p); acc:update(y, p)
auc:sync(D); acc:sync(D)
print(("auc=%.15g"):format(auc:result()))
print(("want_auc=%.15g"):format(moe.metrics.roc_auc(moe.cat(ys, 1), moe.cat(ps, 1))))
print(("acc=%.15g"):format(acc:result()))
print(("want_acc=%.15g"):format(moe.metrics.binary_accuracy(moe.cat(ys, 1), moe.cat(ps, 1))))
local m = moe.nn.Sequential { moe.nn.Dense { units = 1, activation = "sigmoid" } }
m:compile { optimizer = "sgd", loss = "binary_crossentropy",
  metrics = { { name = "mine", update = function() end, result = function() return 0 end, reset = function() end } } }
local ok, err = pcall(function() m:fit { x = moe.randn(6, 2), y = moe.ones(6, 1), batch_size = 2, verbose = 0 } end)
print("err=" .. tostring(err):gsub("%s", "_"))
]])
    expect_ok(r)
    for rk = 0, 2 do
      local v = values(r.lines[rk])
      assert.are.equal(v.want_auc, v.auc)
      assert.are.equal(v.want_acc, v.acc)
      assert.matches("metric_'mine'_of_output_'.-'_cannot_be_combined_over_the_ranks", v.err)
    end
  end)

  it("evaluate{} over the ranks' shares equals one process's evaluate", function()
    if skip_reason then return end
    local src = [[
local moe = require "moe"
io.stdout:setvbuf("line")
moe.manual_seed(2)
local x = moe.randn(37, 4)
local y = x:sum(2, true):gt(0.3):to("float32")
moe.manual_seed(9)
local m = moe.nn.Sequential { moe.nn.Dense { units = 3, activation = "tanh" }, moe.nn.Dense { units = 1, activation = "sigmoid" } }
m:compile { optimizer = "sgd", loss = "binary_crossentropy", metrics = { "auc", "accuracy" } }
local l = m:evaluate { x = x, y = y, batch_size = 5 }
print(("loss=%.12g"):format(l.loss)); print(("auc=%.15g"):format(l.auc)); print(("accuracy=%.15g"):format(l.accuracy))
]]
    local three, one = run(3, src), run(0, src)
    expect_ok(three); expect_ok(one)
    local ref = values(one.lines[0])
    for rk = 0, 2 do
      local v = values(three.lines[rk])
      assert.is_true(close(ref.loss, v.loss, 1e-6))
      assert.are.equal(ref.auc, v.auc)
      assert.are.equal(ref.accuracy, v.accuracy)
    end
  end)
end)
