-- moe.metrics: evaluation metrics, as functions of whole sets and as stateful
-- objects the trainer updates batch by batch (Keras's names and conventions).
--
--   moe.metrics.roc_auc(y_true, y_score)        -- exact ROC-AUC, ties as scikit-learn
--   moe.metrics.binary_accuracy(y, p)            -- and accuracy, categorical_accuracy,
--   moe.metrics.precision(y, p), recall, mse, mae
--   local m = moe.metrics.get("auc"); m:update(y, p); m:result(); m:reset()
--
-- Stateful metrics accumulate over an epoch: counts and sums, or (for AUC) every
-- label and score, so that the epoch's value is exact rather than a mean of
-- per-batch values.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core

local metrics = {}

local function flat(t, what, where)
  if not core.is_tensor(t) then t = moe.tensor(t) end
  if t:dim() == 2 and t:size(2) == 1 then t = t:reshape(-1) end
  if t:dim() ~= 1 then
    error(("%s: %s must be [n] or [n, 1], got [%s]"):format(where, what, table.concat(t:shape(), ",")), 3)
  end
  return t
end

local function pair(y, p, where)
  y, p = flat(y, "y_true", where), flat(p, "y_pred", where)
  if y:numel() ~= p:numel() then
    error(("%s: y_true has %d values and y_pred %d"):format(where, y:numel(), p:numel()), 3)
  end
  return y:to("float64"), p:to("float64")
end

-- exact area under the ROC curve (src/train/metrics.c); an error when only one
-- class is present
function metrics.roc_auc(y_true, y_score, sample_weight)
  local y, s = pair(y_true, y_score, "roc_auc")
  local w = sample_weight and flat(sample_weight, "sample_weight", "roc_auc"):to("float64") or nil
  return core.roc_auc(y, s, w)
end

-- ------------------------------------------------------------------ stateful metrics

local Metric = {}
Metric.__index = Metric
metrics.Metric = Metric

local function kind(name, init, update, result)
  local cls = setmetatable({}, { __index = Metric })
  cls.__index = cls
  cls.metric_name = name
  cls.update_impl, cls.result_impl, cls.reset_impl = update, result, init
  setmetatable(cls, { __index = Metric, __call = function(c, opts)
    local o = setmetatable({ name = (opts and opts.name) or name, threshold = opts and opts.threshold or 0.5 }, c)
    o:reset()
    return o
  end })
  return cls
end

function Metric:reset() self:reset_impl() end
-- y_true, y_pred: tensors of one batch (predictions are detached here)
function Metric:update(y, p, w)
  if self.copies_values then return self:update_impl(y, p, w) end -- reads the values, keeps nothing
  self:update_impl(y, moe.is_tensor(p) and p:detach() or p, w)
end
function Metric:result() return self:result_impl() end

-- Sums over an epoch: a host value is read at once (a number); a device value
-- stays a device scalar, summed there, and is read once, at the result, so a
-- training step on the GPU does not wait for its metrics.
local function lazy_add(acc, t)
  if t:device() == "cpu" then return (type(acc) == "number" and acc or acc:item()) + t:item() end
  return acc + t
end
local function lazy_value(acc) return type(acc) == "number" and acc or acc:item() end
metrics.lazy_add, metrics.lazy_value = lazy_add, lazy_value

local function weights(w, n)
  if w == nil then return nil end
  w = flat(w, "sample_weight", "metric")
  if w:numel() ~= n then error(("metric: %d sample weights for %d samples"):format(w:numel(), n), 3) end
  return w:to("float64")
end

-- mean of per-sample values v [n] (weighted)
local function add_mean(self, v, w)
  if w then
    self.sum = lazy_add(self.sum, (v * w):sum())
    self.cnt = lazy_add(self.cnt, w:sum())
  else
    self.sum = lazy_add(self.sum, v:sum())
    self.cnt = lazy_add(self.cnt, moe.tensor(v:numel(), { dtype = "float64", device = "cpu" }))
  end
end
local function init_mean(self) self.sum, self.cnt = 0, 0 end
local function mean_result(self)
  local cnt = lazy_value(self.cnt)
  return cnt > 0 and lazy_value(self.sum) / cnt or 0 / 0
end

-- 1 where a binary prediction (p > threshold) matches the label (y > 0.5), else 0
local function binary_correct(y, p, threshold, where)
  local yy, pp = pair(y, p, where)
  return pp:gt(threshold):eq(yy:gt(0.5)):to("float64")
end

-- predictions [n, k] with k > 1 are class scores; [n] / [n, 1] binary probabilities
local function per_sample_accuracy(y, p, threshold, mode)
  if p:dim() == 2 and p:size(2) > 1 then
    local pred = p:argmax(2):reshape(-1)
    local truth
    if y:dim() == 2 and y:size(2) == p:size(2) and mode ~= "sparse" then truth = y:argmax(2):reshape(-1)
    else truth = y:reshape(-1):to("int64") end
    return pred:eq(truth):to("float64")
  end
  return binary_correct(y, p, threshold, "accuracy")
end

metrics.BinaryAccuracy = kind("binary_accuracy", init_mean, function(self, y, p, w)
  local v = binary_correct(y, p, self.threshold, "binary_accuracy")
  add_mean(self, v, weights(w, v:numel()))
end, mean_result)

metrics.Accuracy = kind("accuracy", init_mean, function(self, y, p, w)
  local v = per_sample_accuracy(y, p, self.threshold)
  add_mean(self, v, weights(w, v:numel()))
end, mean_result)

metrics.CategoricalAccuracy = kind("categorical_accuracy", init_mean, function(self, y, p, w)
  if p:dim() ~= 2 then error("categorical_accuracy: y_pred must be [n, classes]", 3) end
  local v = per_sample_accuracy(y, p, self.threshold)
  add_mean(self, v, weights(w, v:numel()))
end, mean_result)

metrics.MeanSquaredError = kind("mse", init_mean, function(self, y, p, w)
  local d = (p:to("float64") - y:to("float64")):square()
  if d:dim() > 1 then d = d:reshape(d:size(1), -1):mean(2) end
  add_mean(self, d, weights(w, d:numel()))
end, mean_result)

metrics.MeanAbsoluteError = kind("mae", init_mean, function(self, y, p, w)
  local d = (p:to("float64") - y:to("float64")):abs()
  if d:dim() > 1 then d = d:reshape(d:size(1), -1):mean(2) end
  add_mean(self, d, weights(w, d:numel()))
end, mean_result)

local function init_counts(self) self.tp, self.fp, self.fn = 0, 0, 0 end
local function count(self, y, p, w)
  local yy, pp = pair(y, p, self.metric_name)
  local pos, truth = pp:gt(self.threshold):to("float64"), yy:gt(0.5):to("float64")
  local ww = weights(w, yy:numel()) or moe.ones(yy:numel(), { dtype = "float64", device = yy:device() })
  self.tp = lazy_add(self.tp, (pos * truth * ww):sum())
  self.fp = lazy_add(self.fp, (pos * (1 - truth) * ww):sum())
  self.fn = lazy_add(self.fn, ((1 - pos) * truth * ww):sum())
end
metrics.Precision = kind("precision", init_counts, count, function(self)
  local tp, fp = lazy_value(self.tp), lazy_value(self.fp)
  return tp + fp > 0 and tp / (tp + fp) or 0
end)
metrics.Recall = kind("recall", init_counts, count, function(self)
  local tp, fn = lazy_value(self.tp), lazy_value(self.fn)
  return tp + fn > 0 and tp / (tp + fn) or 0
end)

-- exact AUC over everything seen since reset (NaN while one class is missing);
-- host batches are appended to a C accumulator (src/train/metrics.c) as
-- doubles: no tensor is kept or made per batch. Device batches stay on the
-- device until the result, which copies them to the host once.
local function auc_add(self, y, p, w)
  local ok, err = pcall(self.acc.add, self.acc, y, p, w)
  if not ok then error(moe._where((tostring(err):gsub("^[^\n]-:%d+: ", ""))), 0) end
end
metrics.AUC = kind("auc", function(self)
  if self.acc then self.acc:reset() else self.acc = core.auc_acc() end
  self.pending = {}
end, function(self, y, p, w)
  if not core.is_tensor(y) then y = moe.tensor(y) end
  if not core.is_tensor(p) then p = moe.tensor(p) end
  if w ~= nil and not core.is_tensor(w) then w = moe.tensor(w) end
  if p:device() ~= "cpu" then
    local yy, pp = pair(y, p, "auc")
    local pend = self.pending
    pend[#pend + 1] = { yy, pp:detach(), w and flat(w, "sample_weight", "auc"):to("float64") or false }
    return
  end
  auc_add(self, y, p, w)
end, function(self)
  local pend = self.pending
  if #pend > 0 then -- the epoch's device batches, in one copy each of labels, scores and weights
    local ys, ps, ws = {}, {}, {}
    for i, b in ipairs(pend) do ys[i], ps[i], ws[i] = b[1], b[2], b[3] end
    local w = ws[1] and moe.cat(ws, 1):cpu() or nil
    auc_add(self, moe.cat(ys, 1):cpu(), moe.cat(ps, 1):cpu(), w)
    self.pending = {}
  end
  if self.acc:count() == 0 then return 0 / 0 end
  local ok, v = pcall(self.acc.result, self.acc)
  if ok then return v end
  -- undefined (one class so far) or a diverged model's NaN scores: NaN; bad labels or weights: an error
  if tostring(v):find("only one class present", 1, true) or tostring(v):find("score %d+ is NaN") then return 0 / 0 end
  error(moe._where((tostring(v):gsub("^[^\n]-:%d+: ", ""))), 0)
end)

metrics.AUC.copies_values = true

-- ------------------------------------------------------------------ over several ranks
-- m:sync(dist): makes m's state that of all ranks' samples together (a
-- distributed fit or evaluate calls it once, before result()): the sums of the
-- mean and count metrics are all-reduced; AUC gathers every rank's labels,
-- scores and weights, so it stays exact. Every rank must call it.
local function sync_sums(fields)
  return function(self, D)
    local v = {}
    for i, f in ipairs(fields) do v[i] = lazy_value(self[f]) end
    local t = D.all_reduce(moe.tensor(v, { dtype = "float64" }), "sum"):totable()
    for i, f in ipairs(fields) do self[f] = t[i] end
  end
end
for _, cls in ipairs { metrics.BinaryAccuracy, metrics.Accuracy, metrics.CategoricalAccuracy,
  metrics.MeanSquaredError, metrics.MeanAbsoluteError } do
  cls.sync_impl = sync_sums { "sum", "cnt" }
end
metrics.Precision.sync_impl = sync_sums { "tp", "fp", "fn" }
metrics.Recall.sync_impl = sync_sums { "tp", "fp", "fn" }
function metrics.AUC:sync_impl(D)
  self:result() -- (moves the pending device batches into the accumulator)
  local y, s, w = self.acc:values()
  local gy, gs, gw = D.all_gather(y), D.all_gather(s), D.all_gather(w)
  self.acc:reset()
  if gy:numel() > 0 then self.acc:add(gy, gs, gw) end
end
function Metric:sync(D)
  if not self.sync_impl then
    error(("metric '%s' cannot be combined over ranks (it has no sync_impl(self, dist))"):format(tostring(self.name)), 2)
  end
  self:sync_impl(D)
end

local registry = {
  auc = metrics.AUC, roc_auc = metrics.AUC,
  accuracy = metrics.Accuracy, acc = metrics.Accuracy,
  binary_accuracy = metrics.BinaryAccuracy, categorical_accuracy = metrics.CategoricalAccuracy,
  precision = metrics.Precision, recall = metrics.Recall,
  mse = metrics.MeanSquaredError, mean_squared_error = metrics.MeanSquaredError,
  mae = metrics.MeanAbsoluteError, mean_absolute_error = metrics.MeanAbsoluteError,
}

-- a fresh metric object from a name or an object (kept as is)
function metrics.get(spec)
  if type(spec) == "string" then
    local cls = registry[spec]
    if not cls then
      local names = {}
      for k in pairs(registry) do names[#names + 1] = k end
      table.sort(names)
      error(("metrics: unknown metric '%s' (known: %s)"):format(spec, table.concat(names, ", ")), 2)
    end
    local m = cls()
    m.name = spec == "acc" and "accuracy" or spec == "roc_auc" and "auc" or spec
    return m
  end
  if type(spec) == "table" and spec.update and spec.result and spec.reset then return spec end
  error(("metrics: expected a metric name or object, got %s"):format(moe._show(spec)), 2)
end

-- whole-set functions of the stateful metrics
local function as_function(cls)
  return function(y, p, w)
    local m = cls()
    m:update(y, p, w)
    return m:result()
  end
end
metrics.binary_accuracy = as_function(metrics.BinaryAccuracy)
metrics.accuracy = as_function(metrics.Accuracy)
metrics.categorical_accuracy = as_function(metrics.CategoricalAccuracy)
metrics.precision = as_function(metrics.Precision)
metrics.recall = as_function(metrics.Recall)
metrics.mse = as_function(metrics.MeanSquaredError)
metrics.mae = as_function(metrics.MeanAbsoluteError)
metrics.auc = metrics.roc_auc

return metrics
