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
