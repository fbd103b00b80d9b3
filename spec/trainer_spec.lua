-- The trainer (fit / evaluate / predict), callbacks and metrics.
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"
local metrics, callbacks = moe.metrics, moe.callbacks

-- a separable binary task with a little noise
local function task(n, seed)
  moe.manual_seed(seed or 1)
  local x = moe.randn(n, 5)
  local w = moe.tensor({ { 1 }, { -2 }, { 0.5 }, { 0 }, { 1 } })
  local y = (x:matmul(w) + moe.randn(n, 1) * 0.3):gt(0):float()
  return x, y
end

local function model_for(opts)
  opts = opts or {}
  moe.manual_seed(opts.seed or 2)
  local inp = moe.Input { shape = { 5 } }
  local h = nn.Dense { units = 8, activation = "relu" }(inp)
  local out = nn.Dense { units = 1, activation = "sigmoid", name = "label" }(h)
  local m = moe.Model { inputs = inp, outputs = out }
  m:compile { optimizer = moe.optim.Adam { lr = opts.lr or 1e-2 }, loss = "binary_crossentropy",
    metrics = opts.metrics or { "auc", "accuracy" } }
  return m
end

describe("roc_auc", function()
  -- Mann-Whitney by pairs: an independent naive reference
  local function pairs_auc(y, s)
    local num, den = 0, 0
    for i = 1, #y do if y[i] == 1 then
      for j = 1, #y do if y[j] == 0 then
        den = den + 1
        num = num + (s[i] > s[j] and 1 or s[i] == s[j] and 0.5 or 0)
      end end
    end end
    return num / den
  end
  it("matches hand-computed values, ties counted as half", function()
    assert.is_near(0.75, metrics.roc_auc(moe.tensor { 0, 0, 1, 1 }, moe.tensor { 0.1, 0.4, 0.35, 0.8 }), 1e-12)
    -- pairs (pos, neg): (0.5, 0.5) tie = 1/2, the other three ordered: 3.5 / 4
    assert.is_near(0.875, metrics.roc_auc(moe.tensor { 0, 1, 0, 1 }, moe.tensor { 0.5, 0.5, 0.2, 0.9 }), 1e-12)
    assert.is_near(0.5, metrics.roc_auc(moe.tensor { 0, 1, 0, 1 }, moe.tensor { 1, 1, 1, 1 }), 1e-12)
    assert.is_near(0, metrics.roc_auc(moe.tensor { 1, 0 }, moe.tensor { 0.1, 0.9 }), 1e-12)
  end)
  it("matches the pairwise count on random data with many ties, and takes [n,1] columns", function()
    moe.manual_seed(5)
    local y = moe.rand(300):gt(0.6):float()
    local s = (moe.rand(300) * 10):floor() -- 10 distinct scores: ties everywhere
    assert.is_near(pairs_auc(y:totable(), s:totable()), metrics.roc_auc(y:view(-1, 1), s:view(-1, 1)), 1e-12)
  end)
  it("weights samples like repeated rows", function()
    local y, s = moe.tensor { 0, 1, 0, 1, 1 }, moe.tensor { 0.3, 0.2, 0.1, 0.9, 0.3 }
    local rep_y, rep_s = moe.tensor { 0, 1, 1, 0, 1, 1, 1 }, moe.tensor { 0.3, 0.2, 0.2, 0.1, 0.9, 0.3, 0.3 }
    assert.is_near(metrics.roc_auc(rep_y, rep_s), metrics.roc_auc(y, s, moe.tensor { 1, 2, 1, 1, 2 }), 1e-12)
  end)
  it("the stateful AUC over batches equals the pairwise count over their union (dtypes, shapes, strides, weights)", function()
    moe.manual_seed(11)
    local a = metrics.get("auc")
    local ys, ss, ws = {}, {}, {}
    for b = 1, 7 do
      local n = 5 + b * 3
      local y, s = moe.rand(n):gt(0.5):float(), (moe.rand(n) * 6):floor()
      local yt = y:totable()
      for i, v in ipairs(yt) do ys[#ys + 1], ss[#ss + 1] = v, s:totable()[i] end
      if b % 3 == 0 then y = y:to("float64"):view(n, 1) end      -- [n, 1] float64 labels
      if b % 3 == 1 then s = moe.stack({ s, s }, 2):select(2, 1) end -- a strided column
      a:update(y, s)
    end
    assert.is_near(pairs_auc(ys, ss), a:result(), 1e-12)
    a:reset()
    assert.is_true(a:result() ~= a:result()) -- nothing seen: NaN
    -- an unweighted batch weighs 1 beside weighted ones: weight 2 is the row twice
    local y1, s1 = moe.tensor { 0, 1, 1 }, moe.tensor { 0.2, 0.1, 0.7 }
    local y2, s2 = moe.tensor { 0, 1 }, moe.tensor { 0.4, 0.3 }
    a:update(y1, s1)
    a:update(y2, s2, moe.tensor { 2, 1 })
    assert.is_near(pairs_auc({ 0, 1, 1, 0, 0, 1 }, { 0.2, 0.1, 0.7, 0.4, 0.4, 0.3 }), a:result(), 1e-12)
    assert.matches("auc: y_true has 2 values and y_pred 3", H.error_of(a.update, a, moe.tensor { 0, 1 }, moe.tensor { 1, 2, 3 }))
    assert.matches("auc: y_pred must be %[n%] or %[n, 1%], got %[2,2%]", H.error_of(a.update, a, moe.tensor { 0, 1 }, moe.ones(2, 2)))
  end)
  it("refuses one class, NaN scores and mismatched lengths", function()
    assert.matches("only one class", H.error_of(metrics.roc_auc, moe.tensor { 1, 1 }, moe.tensor { 0.2, 0.3 }))
    assert.matches("NaN", H.error_of(metrics.roc_auc, moe.tensor { 0, 1 }, moe.tensor { 0 / 0, 0.3 }))
    assert.matches("y_true has 2 values and y_pred 3", H.error_of(metrics.roc_auc, moe.tensor { 0, 1 }, moe.tensor { 1, 2, 3 }))
  end)
  it("the other metrics as functions", function()
    local y, p = moe.tensor { 1, 0, 1, 0 }, moe.tensor { 0.9, 0.6, 0.4, 0.1 }
    assert.is_near(0.5, metrics.binary_accuracy(y, p), 1e-12)
    assert.is_near(0.5, metrics.precision(y, p), 1e-12)  -- tp 1, fp 1
    assert.is_near(0.5, metrics.recall(y, p), 1e-12)     -- tp 1, fn 1
    assert.is_near((0.01 + 0.36 + 0.36 + 0.01) / 4, metrics.mse(y, p), 1e-6) -- float32 inputs
    assert.is_near((0.1 + 0.6 + 0.6 + 0.1) / 4, metrics.mae(y, p), 1e-6)
    local scores = moe.tensor { { 0.1, 0.9 }, { 0.8, 0.2 }, { 0.3, 0.7 } }
    assert.is_near(2 / 3, metrics.accuracy(moe.tensor { 2, 1, 1 }, scores), 1e-12) -- 1-based class ids
    assert.is_near(2 / 3, metrics.categorical_accuracy(moe.tensor { { 0, 1 }, { 1, 0 }, { 1, 0 } }, scores), 1e-12)
    assert.matches("unknown metric 'f1'", H.error_of(metrics.get, "f1"))
  end)
end)

-- runs a Lua script in a fresh moelua process (arguments after it); returns its output
local function run_child(source, args)
  local bin = os.getenv("MOELUA_BIN") or "build/moelua"
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(source)
  f:close()
  local p = io.popen(bin .. " " .. script .. " " .. (args or "") .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out, script
end

describe("fit", function()
  it("learns, and logs Keras's names for train and validation", function()
    local x, y = task(1200)
    local m = model_for()
    local h = m:fit { x = x, y = y, batch_size = 32, epochs = 4, validation_split = 0.25, verbose = 0 }
    assert.same({ 1, 2, 3, 4 }, h.epoch)
    for _, k in ipairs { "loss", "auc", "accuracy", "val_loss", "val_auc", "val_accuracy" } do
      assert.equal(4, #h.history[k], k)
    end
    assert.is_true(h.history.loss[4] < h.history.loss[1] * 0.6)
    assert.is_true(h:last("val_auc") > 0.97)
    -- the epoch's AUC is exact over the epoch's predictions: evaluate agrees with roc_auc
    local ev = m:evaluate { x = x, y = y }
    assert.is_near(metrics.roc_auc(y, m:predict(x)), ev.auc, 1e-9)
    assert.is_near(metrics.binary_accuracy(y, m:predict(x)), ev.accuracy, 1e-9)
  end)

  it("names per-output losses and metrics for several outputs, with loss weights", function()
    local x, y = task(400)
    moe.manual_seed(3)
    local inp = moe.Input { shape = { 5 } }
    local h = nn.Dense { units = 8, activation = "relu" }(inp)
    local m = moe.Model { inputs = inp, outputs = {
      income = nn.Dense { units = 1, activation = "sigmoid" }(h),
      marital = nn.Dense { units = 1, activation = "sigmoid" }(h) } }
    m:compile { optimizer = "adam", loss = "binary_crossentropy", loss_weights = { income = 1, marital = 0.5 },
      metrics = { income = { "auc" }, marital = { "accuracy" } } }
    local hist = m:fit { x = x, y = { income = y, marital = 1 - y }, epochs = 2, verbose = 0,
      validation_data = { x, { income = y, marital = 1 - y } } }
    for _, k in ipairs { "loss", "income_loss", "marital_loss", "income_auc", "marital_accuracy",
                         "val_income_auc", "val_marital_accuracy", "val_loss" } do
      assert.is_number(hist:last(k), k)
    end
    assert.is_nil(hist:last("income_accuracy"))
    local e = m:evaluate { x = x, y = { income = y, marital = 1 - y } }
    assert.is_near(e.income_loss + 0.5 * e.marital_loss, e.loss, 1e-5)
    local p = m:predict(x, { batch_size = 64 })
    assert.same({ 400, 1 }, p.income:shape())
    assert.same({ 400, 1 }, p.marital:shape())
  end)

  it("takes tables of named inputs, and validation_split takes the last rows", function()
    moe.manual_seed(4)
    local a, b = moe.Input { shape = { 3 }, name = "a" }, moe.Input { shape = { 2 }, name = "b" }
    local out = nn.Dense { units = 1, activation = "sigmoid", name = "y" }(nn.Concatenate {} { a, b })
    local m = moe.Model { inputs = { a = a, b = b }, outputs = out }
    m:compile { optimizer = "adam", loss = "binary_crossentropy" }
    local x = { a = moe.randn(100, 3), b = moe.randn(100, 2) }
    local y = moe.rand(100, 1):gt(0.5):float()
    local h = m:fit { x = x, y = y, epochs = 1, verbose = 0, validation_split = 0.2, shuffle = false }
    local tail = { a = x.a:narrow(1, 81, 20), b = x.b:narrow(1, 81, 20) }
    assert.is_near(m:evaluate { x = tail, y = y:narrow(1, 81, 20) }.loss, h:last("val_loss"), 1e-6)
    assert.same({ 100, 1 }, m:predict(x):shape())
    assert.matches("x%.[ab] has [0-9]+ rows, other entries", H.error_of(m.fit, m, { x = { a = x.a, b = x.b:narrow(1, 1, 99) }, y = y }))
  end)

  it("trains on the rows data.batches gives, gathered ahead: named inputs, targets and weights stay aligned", function()
    -- a model that records the batches it is fed; the loss records the targets and weights
    local Rec = nn.Module:extend("TrainerSpecRecorder")
    function Rec:build() self:add_weight("w", { 1 }, { initializer = "ones" }) end
    function Rec:forward(x)
      local seen = rawget(self, "seen")
      seen[#seen + 1] = { a = x.a:clone(), b = x.b:clone() }
      return (x.a:narrow(2, 1, 1) + x.b:narrow(2, 1, 1)) * self.w
    end
    local m = Rec {}
    rawset(m, "seen", {})
    local ys, ws = {}, {}
    m:compile { optimizer = moe.optim.SGD { lr = 0 }, loss = function(y, p, o)
      ys[#ys + 1], ws[#ws + 1] = y:clone(), o.sample_weight:clone()
      return (p - y):square():mean()
    end }
    local n = 103
    local x = { a = moe.arange(1, n + 1):float():view(n, 1) * moe.ones(1, 3), b = moe.randn(n, 2) }
    local y, sw = moe.arange(1, n + 1):float():view(n, 1) * 10, moe.arange(1, n + 1):float() * 100
    m:fit { x = x, y = y, sample_weight = sw, batch_size = 16, epochs = 2, seed = 7, verbose = 0 }
    assert.equal(2 * 7, #m.seen)
    local k = 0
    for epoch = 1, 2 do
      for idx in moe.data.batches(n, 16, { seed = 7 * 100003 + epoch }) do
        k = k + 1
        local got = m.seen[k]
        assert.same(x.a:index_select(1, idx):totable(), got.a:totable())
        assert.same(x.b:index_select(1, idx):totable(), got.b:totable())
        assert.same(y:index_select(1, idx):totable(), ys[k]:totable())
        assert.same(sw:index_select(1, idx):totable(), ws[k]:totable())
      end
    end
    assert.equal(14, k)
    -- rows 1..n, each exactly once per epoch
    local count = {}
    for i = 1, 7 do for _, r in ipairs(m.seen[i].a:totable()) do count[r[1]] = (count[r[1]] or 0) + 1 end end
    for i = 1, n do assert.equal(1, count[i]) end
  end)

  it("a gather in flight keeps its own copy of the index (changing the index tensor meanwhile is harmless)", function()
    local x = moe.arange(1, 9):float():view(8, 1) * moe.ones(1, 16)
    local idx = moe.full({ 200000 }, 3, { dtype = "int64" })
    local job = moe.core.gather_rows({ x }, idx)
    idx:copy_(moe.full({ 200000 }, 1e12, { dtype = "int64" }))
    local got = job:finish()[1]
    assert.same({ 200000, 16 }, got:shape())
    assert.equal(3, got:min():item())
    assert.equal(3, got:max():item())
    -- after half a second without a job the helper sleeps; the next job wakes it
    local t0 = moe.now()
    while moe.now() - t0 < 0.7 do end
    local again = moe.core.gather_rows({ x }, moe.tensor({ 8, 2 }, { dtype = "int64" })):finish()[1]
    assert.same({ 8, 2 }, { again[1][1], again[2][1] })
    assert.matches("gather_rows: entry 2 of the list is a number, not a tensor",
      H.error_of(moe.core.gather_rows, { x, 3 }, moe.ones({ 2 }, { dtype = "int64" })))
    assert.matches("gather_rows: index 9 out of range", H.error_of(moe.core.gather_rows, { x }, moe.tensor({ 1, 9 }, { dtype = "int64" })))
  end)

  it("a gather finished at once (the caller copying what the helper has not reached) equals index_select", function()
    -- the rows go in blocks claimed by the helper and by the caller: finished
    -- at once, then after a pause, with two jobs in flight, and out of order
    local x = moe.randn(5000, 37)
    local w = moe.arange(1, 5001):float()
    for round = 1, 40 do
      local n = ({ 1, 7, 8, 9, 33, 1000 })[round % 6 + 1]
      local a = moe.randint(1, 5000, { n }, { dtype = "int64" })
      local b = moe.randint(1, 5000, { n + 3 }, { dtype = "int64" })
      local ja = moe.core.gather_rows({ x, w }, a)
      local jb = moe.core.gather_rows({ x }, b)
      if round % 3 == 0 then local t0 = moe.now() while moe.now() - t0 < 0.0005 do end end
      local gb = round % 2 == 0 and jb:finish() or nil
      local ga = ja:finish()
      gb = gb or jb:finish()
      assert.equal(0, (ga[1] - x:index_select(1, a)):abs():max():item())
      assert.equal(0, (ga[2] - w:index_select(1, a)):abs():max():item())
      assert.equal(0, (gb[1] - x:index_select(1, b)):abs():max():item())
    end
  end)

  it("gathers batches in place on one core, with the same training as the helper thread's", function()
    local bin = os.getenv("MOELUA_BIN") or "build/moelua"
    local script = H.write_file(H.tmpname() .. ".lua", [[
      local moe = require "moe"
      moe.manual_seed(3)
      local x, y = moe.randn(300, 6), moe.rand(300, 1):gt(0.5):float()
      local m = moe.Sequential { moe.nn.Dense { units = 4, activation = "relu" }, moe.nn.Dense { units = 1, activation = "sigmoid" }, input_shape = { 6 } }
      m:compile { optimizer = "adam", loss = "binary_crossentropy", metrics = { "auc" } }
      local h = m:fit { x = x, y = y, batch_size = 16, epochs = 3, seed = 5, verbose = 0 }
      for _, v in ipairs(h.history.loss) do io.write(("%.17g "):format(v)) end
      for _, v in ipairs(h.history.auc) do io.write(("%.17g "):format(v)) end
    ]])
    local one, e1, rc1 = H.sh(("MOE_NUM_THREADS=1 %s run %s"):format(bin, script))
    local two, e2, rc2 = H.sh(("MOE_NUM_THREADS=2 %s run %s"):format(bin, script))
    os.remove(script)
    assert.equal(0, rc1, e1)
    assert.equal(0, rc2, e2)
    assert.equal(6, select(2, one:gsub("%S+", "")))
    assert.equal(one, two)
  end)

  it("calls callbacks in order, and a callback can stop training", function()
    local x, y = task(100)
    local m = model_for()
    local seen = {}
    local cb = {
      on_train_begin = function() seen[#seen + 1] = "train_begin" end,
      on_epoch_begin = function(_, e) seen[#seen + 1] = "epoch_begin " .. e end,
      on_batch_begin = function(_, b) seen[#seen + 1] = "batch_begin " .. b end,
      on_batch_end = function(_, b, logs) seen[#seen + 1] = "batch_end " .. b; assert.is_number(logs.loss) end,
      on_epoch_end = function(self, e, logs)
        seen[#seen + 1] = "epoch_end " .. e
        assert.is_number(logs.loss)
        if e == 2 then self.model.stop_training = true end
      end,
      on_train_end = function() seen[#seen + 1] = "train_end" end,
    }
    local h = m:fit { x = x, y = y, batch_size = 50, epochs = 5, callbacks = { cb }, verbose = 0 }
    assert.same({ "train_begin", "epoch_begin 1", "batch_begin 1", "batch_end 1", "batch_begin 2", "batch_end 2",
      "epoch_end 1", "epoch_begin 2", "batch_begin 1", "batch_end 1", "batch_begin 2", "batch_end 2", "epoch_end 2",
      "train_end" }, seen)
    assert.same({ 1, 2 }, h.epoch)
    local lam = {}
    m:fit { x = x, y = y, batch_size = 100, epochs = 2, verbose = 0, initial_epoch = 3,
      callbacks = { callbacks.LambdaCallback { on_epoch_end = function(e) lam[#lam + 1] = e end } } }
    assert.same({ 4, 5 }, lam)
  end)

  it("records in the History what callbacks add to the epoch's logs; get_layer finds layers by name", function()
    local x, y = task(64)
    local m = model_for()
    local h = m:fit { x = x, y = y, epochs = 2, verbose = 0,
      callbacks = { { on_epoch_end = function(_, e, logs) logs.extra = e * 10 end } } }
    assert.same({ 10, 20 }, h.history.extra)
    assert.equal("label", m:get_layer("label").name)
    assert.matches("no layer named 'nope'", H.error_of(m.get_layer, m, "nope"))
  end)

  it("EarlyStopping stops after patience and restores the best weights", function()
    local x, y = task(300)
    local m = model_for()
    -- a monitored value that is best at epoch 2, then worse
    local fake = { 0.5, 0.3, 0.4, 0.45, 0.6, 0.7 }
    local weights_at = {}
    local probe = { on_epoch_end = function(self, e, logs)
      logs.fake = fake[e]
      weights_at[e] = self.model:get_weights()
    end }
    local es = callbacks.EarlyStopping { monitor = "fake", patience = 2, restore_best_weights = true }
    local h = m:fit { x = x, y = y, batch_size = 32, epochs = 6, verbose = 0, callbacks = { probe, es } }
    assert.same({ 1, 2, 3, 4 }, h.epoch)   -- epochs 3 and 4 without improvement, stop after 4
    local now = m:get_weights()
    for i, w in ipairs(now) do assert.equal(0, (w - weights_at[2][i]):abs():max():item()) end
    assert.is_true((now[1] - weights_at[4][1]):abs():max():item() > 0)
    assert.matches("mode must be", H.error_of(callbacks.EarlyStopping, { mode = "up" }))
    assert.matches("unknown option 'patiance'", H.error_of(callbacks.EarlyStopping, { patiance = 3 }))
  end)

  it("ModelCheckpoint saves the best model atomically; CSVLogger writes one row per epoch", function()
    local x, y = task(200)
    local m = model_for()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local vals = { 0.5, 0.4, 0.45 }
    local probe = { on_epoch_end = function(_, e, logs) logs.score = vals[e] end }
    local mc = callbacks.ModelCheckpoint { filepath = dir .. "/best-{epoch}.moe", monitor = "score", save_best_only = true }
    local csv = callbacks.CSVLogger { filename = dir .. "/log.csv" }
    m:fit { x = x, y = y, epochs = 3, verbose = 0, callbacks = { probe, mc, csv } }
    local listing = io.popen("ls " .. dir):read("*a")
    assert.matches("best%-1%.moe", listing)
    assert.matches("best%-2%.moe", listing)
    assert.is_nil(listing:match("best%-3")) -- not an improvement
    assert.is_nil(listing:match("tmp"))      -- nothing half-written left behind
    local back = moe.load(dir .. "/best-2.moe")
    assert.same({ 200, 1 }, back:predict(x):shape())
    local lines = {}
    for l in io.lines(dir .. "/log.csv") do lines[#lines + 1] = l end
    assert.equal(4, #lines)
    assert.matches("^epoch,", lines[1])
    assert.matches("^3,", lines[4])
    os.execute("rm -rf " .. dir)
  end)

  it("ReduceLROnPlateau and LearningRateScheduler set the optimizer's rate", function()
    local x, y = task(100)
    local m = model_for({ lr = 0.01 })
    local probe = { on_epoch_end = function(_, _, logs) logs.flat = 1.0 end }
    m:fit { x = x, y = y, epochs = 4, verbose = 0,
      callbacks = { probe, callbacks.ReduceLROnPlateau { monitor = "flat", patience = 1, factor = 0.5 } } }
    assert.is_near(0.01 * 0.5 * 0.5 * 0.5, m.optimizer:get_lr(), 1e-12) -- epochs 2, 3, 4 without improvement
    m:fit { x = x, y = y, epochs = 2, verbose = 0,
      callbacks = { callbacks.LearningRateScheduler { schedule = function(e) return 0.1 / e end } } }
    assert.is_near(0.05, m.optimizer:get_lr(), 1e-12)
  end)

  it("stops on a NaN loss with a message naming the epoch and batch", function()
    local x, y = task(100)
    local m = model_for()
    local bad = x:clone()
    bad[{ 70, 1 }] = 0 / 0
    local h = m:fit { x = bad, y = y, batch_size = 25, epochs = 3, shuffle = false, verbose = 0 }
    assert.matches("loss is %-?nan at epoch 1, batch 3", h.stopped)
    assert.same({ 1 }, h.epoch)                     -- the epoch so far is logged, as Keras does
    assert.is_true(h.history.loss[1] == h.history.loss[1]) -- from the two good batches
  end)

  it("class_weight weighs the loss by class", function()
    local x, y = task(64)
    local m = model_for()
    local p = m:predict(x)
    local l0 = moe.losses.binary_crossentropy(y, p, { reduction = "none" })
    local w = y:view(-1) * 4 + (1 - y:view(-1)) * 1
    local expect = (l0 * w):sum():item() / 64
    local got = m:evaluate { x = x, y = y, sample_weight = w }.loss
    assert.is_near(expect, got, 1e-5)
    -- fit with class_weight trains on the same weighting (one full batch, lr 0: no change)
    m.optimizer:set_lr(0)
    local h = m:fit { x = x, y = y, batch_size = 64, epochs = 1, verbose = 0, shuffle = false, class_weight = { [0] = 1, [1] = 4 } }
    assert.is_near(expect, h.history.loss[1], 1e-5)
  end)

  it("checks its options", function()
    local x, y = task(10)
    local m = model_for()
    assert.matches("unknown option 'epoch'", H.error_of(m.fit, m, { x = x, y = y, epoch = 3 }))
    assert.matches("x has 10 rows but y has 9", H.error_of(m.fit, m, { x = x, y = y:narrow(1, 1, 9) }))
    assert.matches("batch_size must be a positive integer", H.error_of(m.fit, m, { x = x, y = y, batch_size = 0 }))
    local fresh = moe.Sequential { nn.Dense { units = 1 } }
    assert.matches("call compile", H.error_of(fresh.fit, fresh, { x = x, y = y }))
  end)

  it("draws a progress line on a terminal and plain lines elsewhere; verbose = 0 is silent", function()
    local src = [[
local moe = require "moe"
local nn = moe.nn
local x, y = moe.randn(3000, 5), moe.rand(3000, 1):gt(0.5):float()
local m = moe.Sequential { nn.Dense { units = 1, activation = "sigmoid" } }
m:compile { optimizer = "adam", loss = "binary_crossentropy" }
m:fit { x = x, y = y, batch_size = 4, epochs = 2, verbose = tonumber(arg[1]) }
]]
    local plain, script = run_child(src, "1")
    assert.matches("^Epoch 1/2  [%d.]+s  %d+ samples/s  loss [%d.]+\nEpoch 2/2 ", plain)
    assert.is_nil(plain:find("\r", 1, true))
    os.remove(script)
    local silent
    silent, script = run_child(src, "0")
    assert.equal("", silent)
    -- under a pseudo-terminal (util-linux's script): a redrawn line with the batch, ETA and rate
    local bin = os.getenv("MOELUA_BIN") or "build/moelua"
    local f = io.open(script, "w"); f:write(src); f:close()
    local p = io.popen("script -qc '" .. bin .. " " .. script .. " 1' /dev/null 2>&1")
    local tty = p:read("*a")
    p:close()
    if tty ~= "" then
      assert.matches("\rEpoch 1/2 +%d+/750 %[[=.]+%] ETA +[%d.]+s +%d+ samples/s  loss [%d.]+", tty)
    end
    os.remove(script)
  end)

  it("Ctrl-C stops after the current batch and returns the History so far", function()
    local out, script = run_child([[
local moe = require "moe"
local nn = moe.nn
moe.manual_seed(1)
local x, y = moe.randn(400, 5), moe.rand(400, 1):gt(0.5):float()
local m = moe.Sequential { nn.Dense { units = 4, activation = "relu" }, nn.Dense { units = 1, activation = "sigmoid" } }
m:compile { optimizer = "adam", loss = "binary_crossentropy" }
local sent = false
local cb = { on_batch_end = function(_, b)
  -- (io.popen: os.execute's system() ignores SIGINT in the caller while it runs)
  if b == 3 and not sent then sent = true; io.popen("kill -INT $PPID"):close() end
end }
local h = m:fit { x = x, y = y, batch_size = 10, epochs = 5, verbose = 0, callbacks = { cb } }
print("stopped:", h.stopped)
print("epochs:", #h.epoch)
print("usable:", m:predict(x):size(1))
]])
    os.remove(script)
    assert.matches("stopped:%s+fit: interrupted at epoch 1, batch 3", out)
    assert.matches("usable:%s+400", out)
  end)
end)

-- ------------------------------------------------------------------ issue 12

-- a layer that passes its input on (times factor) and reports metrics of what it saw
local Probe = nn.Module:extend("TrainerSpecProbe")
function Probe:init(opts)
  nn.Module.init(self, opts)
  rawset(self, "factor", opts.factor or 1)
  rawset(self, "extra", opts.extra)
end
function Probe:forward(x)
  local y = self.factor == 1 and x or x * self.factor
  self:add_metric("input_max", y:max())     -- a tensor
  self:add_metric("rows", y:size(1))        -- a number
  if self.extra then self:add_metric(self.extra[1], self.extra[2]) end
  return y
end

-- the naive max of rows [first, first + len) of a [n, f] tensor
local function rows_max(x, first, len)
  local m = -math.huge
  local t = x:totable()
  for i = first, first + len - 1 do for _, v in ipairs(t[i]) do if v > m then m = v end end end
  return m
end
-- means over batches of `size` rows (the last one shorter) of f(first, len)
local function batch_mean(n, size, f)
  local s, k = 0, 0
  for first = 1, n, size do s = s + f(first, math.min(size, n - first + 1)); k = k + 1 end
  return s / k
end

local function probe_model(opts)
  opts = opts or {}
  moe.manual_seed(11)
  local layers = opts.layers or { Probe { name = "probe" } }
  layers[#layers + 1] = nn.Dense { units = 1, activation = "sigmoid", name = "out" }
  layers.input_shape = { 5 }
  local m = moe.Sequential(layers)
  m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "binary_crossentropy", metrics = opts.metrics }
  return m
end

local function read_lines(path)
  local lines = {}
  for l in io.lines(path) do lines[#lines + 1] = l end
  return lines
end

describe("layer metrics in fit and evaluate", function()
  it("add_metric values are epoch means over the batches (Keras's Mean), with val_ from the validation data", function()
    local x, y = task(100, 21)
    local xv, yv = task(300, 22)
    local m = probe_model()
    local h = m:fit { x = x, y = y, batch_size = 32, epochs = 2, shuffle = false, verbose = 0, validation_data = { xv, yv } }
    -- batches of 32, 32, 32, 4: each counts once
    local want_max = batch_mean(100, 32, function(f, l) return rows_max(x, f, l) end)
    assert.is_near(want_max, h.history.input_max[1], 1e-6)
    assert.is_near(want_max, h.history.input_max[2], 1e-6)
    assert.equal(25, h.history.rows[1])        -- (32 + 32 + 32 + 4) / 4, not weighted by rows
    -- validation in batches of max(32, 256): 256 and 44 rows
    assert.equal(150, h.history.val_rows[2])
    assert.is_near(batch_mean(300, 256, function(f, l) return rows_max(xv, f, l) end), h.history.val_input_max[2], 1e-6)
    -- the loss is still the loss
    assert.is_near(m:evaluate { x = xv, y = yv }.loss, h.history.val_loss[2], 1e-6)
    -- evaluate reports them too, over its own batches
    local e = m:evaluate { x = xv, y = yv, batch_size = 100 }
    assert.equal(100, e.rows)
    assert.is_near(batch_mean(300, 100, function(f, l) return rows_max(xv, f, l) end), e.input_max, 1e-6)
  end)

  it("router metrics of a sparse layer reach the History as means of the layer's own per-batch values", function()
    moe.manual_seed(5)
    local inp = moe.Input { shape = { 4, 6 } }
    local hid = nn.Dense { units = 6 }(inp)
    local router = nn.TokensChooseMaskedRouter { num_experts = 4, name = "router", load_balancing_loss_weight = 0.01,
      router_z_loss_weight = 1e-3 }
    local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 8 }, router = router,
      train_capacity_factor = 1.0, eval_capacity_factor = 1.0, name = "moe" }
    local out = nn.Dense { units = 1 }(nn.Lambda { fn = function(t) return t:mean(2) end }(layer(hid)))
    local m = moe.Model { inputs = inp, outputs = out }
    m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "mse" }
    local x, y = moe.randn(90, 4, 6), moe.randn(90, 1)
    local xv, yv = moe.randn(300, 4, 6), moe.randn(300, 1)
    local sums, count = {}, 0
    local probe = { on_batch_end = function()
      count = count + 1
      for k, v in pairs(router:metrics()) do sums[k] = (sums[k] or 0) + v end
    end }
    local h = m:fit { x = x, y = y, batch_size = 20, epochs = 1, verbose = 0, callbacks = { probe }, validation_data = { xv, yv } }
    assert.equal(5, count)
    local names = { "load_balancing_loss", "router_z_loss", "unscaled_router_z_loss", "fraction_tokens_left_behind",
      "router_confidence", "expert_usage", "expert_1_tokens", "expert_4_tokens" }
    for _, k in ipairs(names) do
      assert.is_number(h.history[k] and h.history[k][1], k)
      assert.is_near(sums[k] / count, h.history[k][1], 1e-9 * math.max(1, math.abs(h.history[k][1])))
    end
    assert.is_true(h.history.fraction_tokens_left_behind[1] > 0) -- capacity 1.0 drops tokens: not a trivial 0
    -- val_: the layer's metrics on the validation batches (256 and 44 rows), in evaluation mode
    local vs = {}
    m:eval()
    moe.no_grad(function()
      for _, r in ipairs { { 1, 256 }, { 257, 44 } } do
        m(xv:narrow(1, r[1], r[2]))
        for k, v in pairs(router:metrics()) do vs[k] = (vs[k] or 0) + v / 2 end
      end
    end)
    m:train()
    for _, k in ipairs(names) do
      assert.is_near(vs[k], h.history["val_" .. k][1], 1e-6 * math.max(1, math.abs(vs[k])), k)
    end
    local e = m:evaluate { x = xv, y = yv }
    assert.is_near(vs.load_balancing_loss, e.load_balancing_loss, 1e-6)
  end)

  it("disambiguates a name reported by several layers (or a taken one) with the layer's name", function()
    local x, y = task(64, 23)
    local m = probe_model { layers = { Probe { name = "p1" }, Probe { name = "p2", factor = 2, extra = { "loss", 7 } } } }
    local h = m:fit { x = x, y = y, batch_size = 64, epochs = 1, shuffle = false, verbose = 0 }
    assert.is_nil(h.history.input_max)
    local mx = rows_max(x, 1, 64)
    assert.is_near(mx, h.history.p1_input_max[1], 1e-6)
    assert.is_near(2 * mx, h.history.p2_input_max[1], 1e-6)
    assert.equal(64, h.history.p1_rows[1])
    assert.equal(7, h.history.p2_loss[1])      -- "loss" is the training loss's name
    assert.is_true(h.history.loss[1] ~= 7)
    -- a compiled metric's name is taken too
    local m2 = probe_model { layers = { Probe { name = "p", extra = { "accuracy", 3 } } }, metrics = { "accuracy" } }
    local h2 = m2:fit { x = x, y = y, batch_size = 64, epochs = 1, verbose = 0 }
    assert.equal(3, h2.history.p_accuracy[1])
    assert.is_true(h2.history.accuracy[1] >= 0 and h2.history.accuracy[1] <= 1)
  end)

  it("a value add_metric cannot average is an error naming add_metric, the layer and the metric", function()
    -- (raised by add_metric itself, here while the model is built on placeholders)
    local err = H.error_of(function() probe_model { layers = { Probe { name = "bad", extra = { "label", "hello" } } } } end)
    assert.matches("add_metric: TrainerSpecProbe \"bad\": metric 'label' must be a number or a tensor, got \"hello\" %(a string%)", err)
  end)

  it("reach CSVLogger, the plain progress line and the plots", function()
    local x, y = task(100, 25)
    local m = probe_model()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local h = m:fit { x = x, y = y, batch_size = 32, epochs = 2, verbose = 0, validation_split = 0.3,
      callbacks = { callbacks.CSVLogger { filename = dir .. "/log.csv" } } }
    local lines = read_lines(dir .. "/log.csv")
    local cols = {}
    for c in lines[1]:gmatch("[^,]+") do cols[#cols + 1] = c end
    local row = {}
    for v in lines[3]:gmatch("[^,]+") do row[#row + 1] = tonumber(v) end
    local at = {}
    for i, c in ipairs(cols) do at[c] = row[i] end
    for _, k in ipairs { "input_max", "rows", "val_input_max", "val_rows", "loss" } do
      assert.is_near(h.history[k][2], at[k], 1e-9 * math.max(1, math.abs(at[k])), k)
    end
    -- one panel each for loss, input_max and rows: three columns of 360 pixels, one row
    local png = moe.plot.history(h, dir .. "/h.png")
    local f = assert(io.open(png, "rb"))
    local s = f:read("*a")
    f:close()
    local function u32(i) local a, b, c, d = s:byte(i, i + 3); return ((a * 256 + b) * 256 + c) * 256 + d end
    assert.equal(3 * 360, u32(17))
    assert.equal(260 + 30, u32(21))
    os.execute("rm -rf " .. dir)
    local out, script = run_child([[
local moe = require "moe"
local nn = moe.nn
local P = nn.Module:extend("ChildProbe")
function P:forward(x) self:add_metric("input_rows", x:size(1)); return x end
moe.manual_seed(1)
local x, y = moe.randn(40, 5), moe.rand(40, 1):gt(0.5):float()
local m = moe.Sequential { P {}, nn.Dense { units = 1, activation = "sigmoid" } }
m:compile { optimizer = "adam", loss = "binary_crossentropy" }
m:fit { x = x, y = y, batch_size = 10, epochs = 1, verbose = 1, validation_data = { x, y } }
]])
    os.remove(script)
    assert.matches("^Epoch 1/1  [%d.]+s  %d+ samples/s  loss [%d.]+  input_rows 10%.0000  val_input_rows 40%.0000  val_loss", out)
  end)
end)

describe("compile checks its options", function()
  it("an unknown metric, loss or optimizer fails in compile, naming it and the known ones", function()
    local m = moe.Sequential { nn.Dense { units = 1 }, input_shape = { 3 } }
    local err = H.error_of(function() m:compile { loss = "mse", metrics = { "auc", "nope" } } end)
    assert.matches("^[^\n]*trainer_spec%.lua:%d+: compile: unknown metric 'nope' %(known: [^)]*auc", err)
    assert.is_nil(rawget(m, "_loss_fns"))     -- nothing half-set: fit still asks for compile
    assert.matches("call compile", H.error_of(m.fit, m, { x = moe.randn(4, 3), y = moe.randn(4, 1) }))
    assert.matches("trainer_spec%.lua:%d+: compile: unknown loss 'nope' %(mean_squared_error",
      H.error_of(function() m:compile { loss = "nope" } end))
    assert.matches("trainer_spec%.lua:%d+: compile: unknown optimizer 'nope' %(sgd, adam",
      H.error_of(function() m:compile { optimizer = "nope" } end))
    assert.matches("compile: unknown option 'optimiser'", H.error_of(m.compile, m, { optimiser = "adam" }))
    assert.matches("compile: metrics must be a list", H.error_of(m.compile, m, { metrics = "auc" }))
    assert.matches("compile: loss_weights.output must be a number", H.error_of(m.compile, m, { loss_weights = { output = "x" } }))
  end)
  it("names for outputs must be the model's outputs", function()
    local inp = moe.Input { shape = { 3 } }
    local m = moe.Model { inputs = inp, outputs = { income = nn.Dense { units = 1 }(inp), marital = nn.Dense { units = 1 }(inp) } }
    assert.matches("compile: metrics names output 'incme', but the model's outputs are income, marital",
      H.error_of(m.compile, m, { metrics = { incme = { "auc" } } }))
    assert.matches("compile: unknown metric 'aucc' %(known: .*%) %(for output 'income'%)",
      H.error_of(m.compile, m, { metrics = { income = { "aucc" } } }))
    assert.matches("compile: loss_weights names output 'x'", H.error_of(m.compile, m, { loss_weights = { x = 1 } }))
    assert.matches("compile: loss for output 'income': unknown loss 'bce2'", H.error_of(m.compile, m, { loss = { income = "bce2", marital = "mse" } }))
    assert.matches("mixes a list with output names", H.error_of(m.compile, m, { metrics = { "auc", income = { "auc" } } }))
    m:compile { loss = "mse", metrics = { income = { "mae" } }, loss_weights = { income = 1, marital = 0.5 } }
  end)
end)

describe("0 rows", function()
  it("predict returns empty outputs of the right shape and dtype, per output name", function()
    local m = model_for()
    local p = m:predict(moe.zeros(0, 5))
    assert.same({ 0, 1 }, p:shape())
    assert.equal("float32", p:dtype())
    local inp = moe.Input { shape = { 5 } }
    local two = moe.Model { inputs = inp, outputs = { a = nn.Dense { units = 3 }(inp), b = nn.Dense { units = 2 }(inp) } }
    local q = two:predict(moe.zeros(0, 5))
    assert.same({ 0, 3 }, q.a:shape())
    assert.same({ 0, 2 }, q.b:shape())
    -- integer ids through an Embedding: [0, 4] -> [0, 4, 3]
    local ids = moe.Input { shape = { 4 }, dtype = "int64" }
    local emb = moe.Model { inputs = ids, outputs = nn.Embedding { input_dim = 6, output_dim = 3 }(ids) }
    assert.same({ 0, 4, 3 }, emb:predict(moe.zeros({ 0, 4 }, { dtype = "int64" })):shape())
    -- a model that cannot run on 0 rows: its shape from one placeholder row
    local picky = moe.Sequential { nn.Lambda { fn = function(t)
      if t:size(1) == 0 then error("no rows") end
      return t:reshape(t:size(1), -1) * 2
    end }, input_shape = { 2, 3 } }
    assert.same({ 0, 6 }, picky:predict(moe.zeros(0, 2, 3)):shape())
    assert.matches("predict: x is an empty table", H.error_of(m.predict, m, {}))
  end)
  it("fit, evaluate and validation_data with 0 rows are errors that say so", function()
    local m = model_for()
    local x0, y0 = moe.zeros(0, 5), moe.zeros(0, 1)
    local x, y = task(20)
    assert.matches("trainer_spec%.lua:%d+: fit: x and y have 0 rows: there is no data to train on",
      H.error_of(function() m:fit { x = x0, y = y0, verbose = 0 } end))
    assert.matches("evaluate: x and y have 0 rows", H.error_of(m.evaluate, m, { x = x0, y = y0 }))
    assert.matches("fit: validation_data has 0 rows", H.error_of(m.fit, m, { x = x, y = y, validation_data = { x0, y0 } }))
    assert.matches("fit: validation_data x has 20 rows but y has 0", H.error_of(m.fit, m, { x = x, y = y, validation_data = { x, y0 } }))
  end)
end)

describe("a NaN stop keeps finite weights", function()
  local function all_finite(ws)
    for _, w in ipairs(ws) do
      for _, v in ipairs(H.flat(w)) do if v ~= v or v == math.huge or v == -math.huge then return false end end
    end
    return true
  end
  local function same_weights(a, b)
    assert.equal(#a, #b)
    for i = 1, #a do assert.equal(0, H.maxdiff(a[i], H.flat(b[i]), b[i]:shape())) end
  end

  it("an input that makes the loss NaN: the update of that batch is not applied", function()
    local x, y = task(100)
    local m = model_for()
    local bad = x:clone()
    bad[{ 70, 1 }] = math.huge
    local after2
    local probe = { on_batch_end = function(self, b) if b == 2 then after2 = self.model:get_weights() end end }
    local h = m:fit { x = bad, y = y, batch_size = 25, epochs = 3, shuffle = false, verbose = 0, callbacks = { probe } }
    assert.matches("loss is %-?%a+ at epoch 1, batch 3: training stopped; weights restored to those before batch 3", h.stopped)
    assert.is_true(all_finite(m:get_weights()))
    same_weights(m:get_weights(), after2)
  end)

  it("an update that overflows: back to the weights and optimizer state of the epoch's start", function()
    moe.manual_seed(8)
    local x = moe.randn(40, 5) * 10
    local y = moe.randn(40, 1)
    local m = moe.Sequential { nn.Dense { units = 1 }, input_shape = { 5 } }
    m:compile { optimizer = moe.optim.SGD { lr = 1e-3, momentum = 0.9 }, loss = "mse" }
    local at_start, opt_start = {}, {}
    local function opt_state(model)
      local names, params = {}, {}
      for k, p in model:named_parameters() do names[#names + 1] = k; params[#params + 1] = p end
      local st = model.optimizer:state_tensors(names, params)
      local out = {}
      for k, t in pairs(st) do out[k] = t:clone() end
      return out
    end
    local probe = { on_epoch_begin = function(self, e) at_start[e] = self.model:get_weights(); opt_start[e] = opt_state(self.model) end }
    local sched = callbacks.LearningRateScheduler { schedule = function(e) return e == 1 and 1e-3 or 3e38 end }
    local h = m:fit { x = x, y = y, batch_size = 10, epochs = 3, shuffle = false, verbose = 0, callbacks = { probe, sched } }
    assert.matches("at epoch 2, batch 2: training stopped; the weights were not finite: weights restored to those at the start of epoch 2", h.stopped)
    assert.same({ 1, 2 }, h.epoch)
    assert.is_true(all_finite(m:get_weights()))
    same_weights(m:get_weights(), at_start[2])
    local now = opt_state(m)
    for k, t in pairs(opt_start[2]) do assert.equal(0, H.maxdiff(now[k], H.flat(t), t:shape()), k) end
    -- training goes on from there
    m.optimizer:set_lr(1e-3)
    local h2 = m:fit { x = x, y = y, batch_size = 10, epochs = 1, verbose = 0 }
    assert.is_nil(h2.stopped)
    assert.is_true(h2.history.loss[1] == h2.history.loss[1] and h2.history.loss[1] < math.huge)

    -- one batch per epoch: the overflow shows in the weights at the epoch's end
    m:compile { optimizer = moe.optim.SGD { lr = 3e38 }, loss = "mse" }
    local before = m:get_weights()
    local h3 = m:fit { x = x, y = y, batch_size = 40, epochs = 2, verbose = 0 }
    assert.matches("the weights are not finite after epoch 1, batch 1: training stopped; .*weights restored to those at the start of epoch 1", h3.stopped)
    same_weights(m:get_weights(), before)
  end)

  it("a model whose layers build in fit: the snapshot is taken after the first forward pass", function()
    moe.manual_seed(9)
    local x = moe.randn(20, 5) * 10
    local y = moe.randn(20, 1)
    local function fresh()
      local m = moe.Sequential { nn.Dense { units = 1 } }
      m:compile { optimizer = moe.optim.SGD { lr = 3e38 }, loss = "mse" }
      return m
    end
    moe.manual_seed(10)
    local ref = fresh()
    ref(x:narrow(1, 1, 10))             -- the same initialisation, built on the same first batch
    moe.manual_seed(10)
    local m = fresh()
    assert.equal(0, #m:get_weights())
    local h = m:fit { x = x, y = y, batch_size = 10, epochs = 1, shuffle = false, verbose = 0 }
    assert.matches("weights restored to those at the start of epoch 1", h.stopped)
    same_weights(m:get_weights(), ref:get_weights())
  end)
end)

describe("layer metrics of layers that did not run", function()
  it("count only for the passes they ran in, under the same names in train and val_", function()
    local Branchy = nn.Module:extend("TrainerSpecBranchy")
    function Branchy:init(opts)
      nn.Module.init(self, opts)
      self.always = Probe { name = "always" }
      self.train_only = Probe { name = "train_only", factor = 3 }
    end
    function Branchy:forward(x)
      if self._training then self.train_only(x) end
      return self.always(x)
    end
    local x, y = task(64, 26)
    local xv, yv = task(50, 27)
    local m = probe_model { layers = { Branchy { name = "branchy" } } }
    local h = m:fit { x = x, y = y, batch_size = 64, epochs = 1, verbose = 0, validation_data = { xv, yv } }
    assert.is_near(rows_max(x, 1, 64), h.history.always_input_max[1], 1e-6)
    assert.is_near(3 * rows_max(x, 1, 64), h.history.train_only_input_max[1], 1e-6)
    assert.is_near(rows_max(xv, 1, 50), h.history.val_always_input_max[1], 1e-6)
    assert.is_nil(h.history.val_train_only_input_max) -- it did not run on the validation data
    assert.is_nil(h.history.val_input_max)
  end)
end)

describe("a metric object given to compile", function()
  it("starts each pass afresh", function()
    local x, y = task(200, 28)
    local xv, yv = task(100, 29)
    local m = model_for { metrics = { metrics.BinaryAccuracy() } }
    m.optimizer:set_lr(0)                  -- the weights stay: every pass sees the same model
    local h = m:fit { x = x, y = y, batch_size = 50, epochs = 2, verbose = 0, validation_data = { xv, yv } }
    local want_train = metrics.binary_accuracy(y, m:predict(x))
    local want_val = metrics.binary_accuracy(yv, m:predict(xv))
    assert.is_true(math.abs(want_train - want_val) > 0.01) -- so that a mix of the two would show
    for e = 1, 2 do
      assert.is_near(want_train, h.history.binary_accuracy[e], 1e-12)
      assert.is_near(want_val, h.history.val_binary_accuracy[e], 1e-12)
    end
  end)
end)
