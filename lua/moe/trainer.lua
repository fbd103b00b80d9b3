-- The trainer, every method of it: model:compile, compute_loss, train_on_batch,
-- fit, evaluate and predict (Keras's vocabulary; Keras 3 composes Model from
-- Trainer + Layer likewise).
--
--   model:compile{ optimizer = moe.optim.Adam{ lr = 1e-3 }, loss = "binary_crossentropy",
--                  loss_weights = { income = 1 }, metrics = { "auc" } }
--   local history = model:fit{ x = x, y = { income = yi, marital = ym }, batch_size = 32,
--                              epochs = 10, validation_data = { xv, yv }, callbacks = { ... } }
--   print(history.history.val_income_auc[#history.epoch])
--   local logs = model:evaluate{ x = xt, y = yt }       -- { loss = ..., income_auc = ... }
--   local p = model:predict(xt, { batch_size = 256 })   -- a tensor, or a table by output name
--
-- Names follow Keras: "loss", then per output (when there are several)
-- "<output>_loss" and "<output>_<metric>", else "<metric>"; then the metrics
-- layers report with add_metric (a sparse router's load_balancing_loss, ...),
-- as means over the pass's batches, under their own names ("<layer>_<name>"
-- where two layers report one name or a name is taken); validation values get
-- a "val_" prefix. Inputs and targets are tensors or tables of named tensors
-- (all with the same number of rows).
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local nn = require "moe.nn"
local core = moe.core
local ffi = require "ffi"

local Module = nn.Module
local M = {}

pcall(ffi.cdef, "int isatty(int fd);")
local now = moe.now
M.now = now

-- ------------------------------------------------------------------ compile / compute_loss / train_on_batch

-- compile{optimizer, loss, loss_weights, metrics}: the trainer of a later issue
-- builds on this; train_on_batch is the one-step core. Every name is checked
-- here (not on the first fit): an unknown optimizer, loss or metric, or an
-- output name the model does not have, is an error naming compile.
local COMPILE_OPTS = { optimizer = true, loss = true, loss_weights = true, metrics = true }

-- the message of a pcall'd error without its "file:line: where: " prefix
local function reason(msg)
  return (tostring(msg):gsub("^[^\n]-%.lua:%d+: ", ""):gsub("^[%w_%.]+: ", ""))
end

-- output names of the model (nil where it does not name them)
local function compile_output_names(self)
  if not self.output_names then return nil end
  local ok, names = pcall(self.output_names, self)
  if not ok or type(names) ~= "table" then return nil end
  local set, list = {}, {}
  for _, v in pairs(names) do set[v] = true; list[#list + 1] = tostring(v) end
  table.sort(list)
  return set, table.concat(list, ", ")
end

local function check_output_key(self, what, k)
  if type(k) ~= "string" then return end
  local set, list = compile_output_names(self)
  if set and not set[k] then
    error(("compile: %s names output '%s', but the model's outputs are %s"):format(what, k, list), 3)
  end
end

function Module:compile(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error(("compile: expected one table of options, got %s"):format(moe._show(opts)), 2) end
  for k in pairs(opts) do
    if not COMPILE_OPTS[k] then
      error(("compile: unknown option '%s' (options: loss, loss_weights, metrics, optimizer)"):format(tostring(k)), 2)
    end
  end
  local optim = require "moe.optim"
  local losses = require "moe.losses"
  local metrics = require "moe.metrics"
  local ok, opt = pcall(optim.get, opts.optimizer or "adam")
  if not ok then error("compile: " .. reason(opt), 2) end
  local loss = opts.loss or "mean_squared_error"
  local lf
  if type(loss) == "table" and type(loss[1]) ~= "string" then
    lf = {}
    for k, v in pairs(loss) do
      check_output_key(self, "loss", k)
      local okl, f = pcall(losses.get, v)
      if not okl then error(("compile: loss for output '%s': %s"):format(tostring(k), reason(f)), 2) end
      lf[k] = f
    end
  else
    local okl, f = pcall(losses.get, loss)
    if not okl then error("compile: " .. reason(f), 2) end
    lf = f
  end
  if opts.loss_weights ~= nil then
    if type(opts.loss_weights) ~= "table" then
      error(("compile: loss_weights must be a table of numbers by output name, got %s"):format(moe._show(opts.loss_weights)), 2)
    end
    for k, w in pairs(opts.loss_weights) do
      check_output_key(self, "loss_weights", k)
      if type(w) ~= "number" or w ~= w then
        error(("compile: loss_weights.%s must be a number, got %s"):format(tostring(k), moe._show(w)), 2)
      end
    end
  end
  -- metrics: a list of names or metric objects for every output, or a table of such lists by output name
  local ms = opts.metrics
  if ms ~= nil then
    if type(ms) ~= "table" or (ms.update and ms.result) then
      error(("compile: metrics must be a list of metric names (or objects), or a table of lists by output name, got %s")
        :format(type(ms) == "table" and "a metric object (put it in a list)" or moe._show(ms)), 2)
    end
    local keyed, listed = false, false
    for k in pairs(ms) do if type(k) == "string" then keyed = true else listed = true end end
    if keyed and listed then error("compile: metrics mixes a list with output names; give one or the other", 2) end
    local function check(spec, where)
      local okm, err = pcall(metrics.get, spec)
      if not okm then error(("compile: %s%s"):format(reason(err), where), 3) end
    end
    if keyed then
      for k, list in pairs(ms) do
        check_output_key(self, "metrics", k)
        if type(list) == "string" or (type(list) == "table" and list.update) then list = { list } end
        if type(list) ~= "table" then error(("compile: metrics.%s must be a list of metric names, got %s"):format(k, moe._show(list)), 2) end
        for _, spec in ipairs(list) do check(spec, (" (for output '%s')"):format(k)) end
      end
    else
      for _, spec in ipairs(ms) do check(spec, "") end
    end
  end
  rawset(self, "optimizer", opt)
  rawset(self, "_loss_fns", lf)
  rawset(self, "_loss_weights", opts.loss_weights)
  rawset(self, "_compile_config", { loss = type(loss) ~= "function" and loss or nil, loss_weights = opts.loss_weights,
    metrics = opts.metrics })
  return self
end

-- the total loss of outputs y_pred against y_true (tensors or tables keyed alike)
function Module:compute_loss(y, p, sample_weight)
  local lf = rawget(self, "_loss_fns")
  if not lf then error(("%s \"%s\": call compile{...} first"):format(self.class_name, self.name), 2) end
  local total
  local parts = {}
  if core.is_tensor(p) then
    local f = type(lf) == "function" and lf or select(2, next(lf))
    total = f(y, p, { sample_weight = sample_weight })
  else
    local onames = self.output_names and self:output_names() or {}
    for k, pk in pairs(p) do
      local name = onames[k] or k
      local f = type(lf) == "function" and lf or lf[name] or lf[k]
      local yk = y[name] or y[k]
      if not f then error(("compute_loss: no loss for output '%s'"):format(tostring(k)), 2) end
      if yk == nil then error(("compute_loss: no target for output '%s'"):format(tostring(name)), 2) end
      local sw = sample_weight
      if type(sw) == "table" and not moe.is_tensor(sw) then sw = sw[name] or sw[k] end
      local l = f(yk, pk, { sample_weight = sw })
      parts[name] = l
      local w = self._loss_weights and (self._loss_weights[name] or self._loss_weights[k]) or 1
      l = w == 1 and l or l * w
      total = total and total + l or l
    end
  end
  for _, aux in ipairs(self:losses()) do total = total + aux end
  return total, parts
end

-- a batch (a tensor or a table of tensors) on the model's device: fit,
-- evaluate and predict take data where it lies and move each batch. A batch
-- fit gathered into pinned memory goes on the copy stream (core.to_device_async):
-- the host does not wait for the copy, and the copy overlaps the kernels still
-- running; any other host tensor goes with an ordinary (waiting) copy.
local function move(t, dev)
  if not core.is_tensor(t) or t:device() == dev then return t end
  if dev ~= "cpu" and t:is_pinned() and not t.requires_grad then return core.to_device_async(t) end
  return t:to(dev)
end

local function to_device(v, dev)
  if v == nil then return nil end
  if core.is_tensor(v) then return move(v, dev) end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, t in pairs(v) do out[k] = move(t, dev) end
  return out
end

-- the device the data lies on (its first tensor's)
local function data_device(v)
  if core.is_tensor(v) then return v:device() end
  for _, t in pairs(v) do if core.is_tensor(t) then return t:device() end end
  return "cpu"
end

-- a model with expert-parallel layers trained rank by rank under mpirun would
-- run its experts' exchanges while its other weights drift apart: an error
local function refuse_alone(self, where)
  local shards = nn.expert_parallel_params
  if moe.distributed.world_size() > 1 and shards and next(shards(self)) ~= nil then
    error(("%s: %s \"%s\" has expert-parallel layers (their experts live on different ranks), so it trains only "
      .. "data parallel over all %d ranks: use fit{} under mpirun (without distributed = false), or average the other "
      .. "gradients yourself (moe.distributed.Reducer)"):format(where, self.class_name, self.name,
      moe.distributed.world_size()), 0)
  end
end

local function train_on_batch(self, x, y, sample_weight)
  refuse_alone(self, "train_on_batch")
  if core.is_tensor(x) and x:dim() > 0 and x:size(1) == 0 then
    error("train_on_batch: x has 0 rows: there is no data to train on", 2)
  end
  if not self._training then self:train() end
  local dev = self:device() -- the batch moves to the model's device
  x, y, sample_weight = to_device(x, dev), to_device(y, dev), to_device(sample_weight, dev)
  local p = self(x)
  local loss = self:compute_loss(y, p, sample_weight)
  self:zero_grad()
  loss:backward()
  self.optimizer:step(self._params_cache.list)
  return loss:item()
end

-- one optimizer step on a batch; returns the loss as a number. An error names
-- train_on_batch, at the caller's line.
function Module:train_on_batch(x, y, sample_weight)
  local ok, r = pcall(train_on_batch, self, x, y, sample_weight)
  if not ok then error(type(r) == "string" and moe._where(r, "train_on_batch") or r, 0) end
  return r
end

-- ------------------------------------------------------------------ data helpers

local function is_tensor(v) return core.is_tensor(v) end

-- an error from inside fit/evaluate/predict (a loss, a metric, a layer), raised
-- again at the user's line and naming the function the user called
local function reraise(err, fn)
  if type(err) ~= "string" then error(err, 0) end
  error(moe._where(err, fn), 0)
end

-- the number of rows of a tensor or of a table of tensors (errors name `where`,
-- the public function, at its caller's line)
local function rows_of(v, what, where)
  where = where or "fit"
  if is_tensor(v) then
    if v:dim() == 0 then error(("%s: %s is a scalar tensor; expected rows"):format(where, what), 3) end
    return v:size(1)
  end
  if type(v) ~= "table" then error(("%s: %s must be a tensor or a table of tensors, got %s"):format(where, what, moe._show(v)), 3) end
  local n
  for k, t in pairs(v) do
    if not is_tensor(t) then error(("%s: %s.%s must be a tensor, got %s"):format(where, what, tostring(k), moe._show(t)), 3) end
    if t:dim() == 0 then error(("%s: %s.%s is a scalar tensor; expected rows"):format(where, what, tostring(k)), 3) end
    local r = t:size(1)
    if n and r ~= n then
      error(("%s: %s.%s has %d rows, other entries %d"):format(where, what, tostring(k), r, n), 3)
    end
    n = r
  end
  if n == nil then error(("%s: %s is an empty table; expected a tensor or a table of tensors"):format(where, what), 3) end
  return n
end

-- fit{}'s batches are gathered one batch ahead on a helper thread
-- (core.gather_rows, src/core/index.c) while the current one trains. The
-- tensors of x, y and sample_weight go as one list; `plan` puts each batch's
-- rows back into the shapes given (a tensor, or a table of named tensors).
local function batch_plan(...)
  local list, plan = {}, {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v == nil then plan[i] = false
    elseif is_tensor(v) then list[#list + 1] = v; plan[i] = #list
    else
      local keys = {}
      for k, t in pairs(v) do list[#list + 1] = t; keys[k] = #list end
      plan[i] = keys
    end
  end
  return list, plan
end

local function from_plan(p, got)
  if p == false then return nil end
  if type(p) == "number" then return got[p] end
  local out = {}
  for k, j in pairs(p) do out[k] = got[j] end
  return out
end

local GATHER_MAX = 16 -- MOE_GATHER_MAX

-- pinned: gather into pinned host memory (for a model on a device: the batch
-- then travels asynchronously, see to_device)
local function start_gather(list, idx, pinned)
  -- the batch's rows are taken where the data lies (data already on the device: gathered there)
  local ddev = list[1]:device()
  if idx:device() ~= ddev then idx = idx:to(ddev) end
  if #list > GATHER_MAX then return { list = list, idx = idx } end -- gathered when finished
  return core.gather_rows(list, idx, pinned and ddev == "cpu")
end

local function finish_gather(job)
  if job.finish then return job:finish() end
  local got = {}
  for i, t in ipairs(job.list) do got[i] = t:index_select(1, job.idx) end
  return got
end

local function narrow(v, start, len)
  if v == nil then return nil end
  if is_tensor(v) then return v:narrow(1, start, len) end
  local out = {}
  for k, t in pairs(v) do out[k] = t:narrow(1, start, len) end
  return out
end

-- outputs as a table name -> tensor (one output: its layer's name, or "output")
-- (names: the model's output names when the caller has them already)
local function named_outputs(self, p, names)
  names = names or (self.output_names and self:output_names()) or {}
  if is_tensor(p) then
    return { [names[1] or "output"] = p }, true
  end
  local out = {}
  for k, t in pairs(p) do out[names[k] or k] = t end
  return out, false
end

local function target_for(y, name, k, single)
  if is_tensor(y) then return y end
  if y[name] ~= nil then return y[name] end
  if k ~= nil and y[k] ~= nil then return y[k] end
  if single then local _, v = next(y); return v end
  return nil
end

-- ------------------------------------------------------------------ compiled metrics

-- per output, a list of fresh metric objects from compile's metrics option (a
-- metric object given to compile is reset: each pass starts from nothing)
local function build_metrics(self, outs)
  local spec = self._compile_config and self._compile_config.metrics or {}
  local metrics = require "moe.metrics"
  local by_out = {}
  local keyed = false
  for k in pairs(spec) do if type(k) == "string" then keyed = true end end
  for name in pairs(outs) do
    local list = keyed and (spec[name] or {}) or spec
    if type(list) == "string" or (type(list) == "table" and list.update) then list = { list } end
    local ms = {}
    for i, s in ipairs(list) do
      ms[i] = metrics.get(s)
      if ms[i] == s then s:reset() end
    end
    by_out[name] = ms
  end
  return by_out
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- ------------------------------------------------------------------ layer metrics (add_metric)

-- a value given to add_metric, as a number: a tensor counts as the mean of its
-- elements (Keras's Mean metric reduces it so)
-- (a device tensor stays on the device, as a scalar, until the logs read it)
local function metric_value(m, k, v, where)
  if type(v) == "number" then return v end
  if is_tensor(v) then
    local t = v:detach()
    if t:device() ~= "cpu" then return t:to("float64"):mean() end
    if t:numel() == 1 and t:dtype():match("^float") then return t:item() end
    return t:to("float64"):mean():item()
  end
  error(("%s: %s \"%s\" added metric '%s' as a %s; add_metric takes a number or a tensor")
    :format(where, m.class_name, m.name, tostring(k), type(v)), 0)
end

local lazy_value = require("moe.metrics").lazy_value -- (a device scalar is read once, here)

-- add the metrics of the last forward pass of `self` (those of the modules that
-- ran in it: a module's _epoch is the call it last ran in) to the pass's sums
local function layer_update(self, st, where)
  local ep = rawget(self, "_epoch")
  local mods = self:modules()
  for i = 1, #mods do
    local m = mods[i][2]
    local ms = m._metrics
    if next(ms) ~= nil and rawget(m, "_epoch") == ep then
      local acc = st.layer[m]
      if not acc then acc = {}; st.layer[m] = acc end
      for k, v in pairs(ms) do
        local a = acc[k]
        if not a then a = { 0, 0 }; acc[k] = a end
        a[1] = a[1] + metric_value(m, k, v, where) -- (a device scalar is summed on the device)
        a[2] = a[2] + 1
      end
    end
  end
end

-- the log names of the layer metrics seen in a pass, as a list of
-- {name, module, metric}: the metric's own name; "<layer name>_<metric>" when
-- several layers of the model have reported the name (in this pass or an
-- earlier one, so that train and val_ names agree) or it is taken (by "loss",
-- a compiled metric); then, if that still clashes, "<layer path>_<metric>"
-- (the path from the model, "_" for "/")
local function layer_names(self, st, taken)
  local rep = rawget(self, "_metric_reporters")
  if not rep then rep = {}; rawset(self, "_metric_reporters", rep) end
  local list, reporters, present = {}, {}, {}
  for _, e in ipairs(self:modules()) do
    present[e[2]] = true
    local acc = st.layer[e[2]]
    if acc then
      for _, k in ipairs(sorted_keys(acc)) do
        list[#list + 1] = { k, e[2], k, e[1] }
        local s = rep[k]
        if not s then s = setmetatable({}, { __mode = "k" }); rep[k] = s end
        s[e[2]] = true
      end
    end
  end
  for k, s in pairs(rep) do
    local c = 0
    for m in pairs(s) do if present[m] then c = c + 1 end end
    reporters[k] = c
  end
  for _, r in ipairs(list) do
    if reporters[r[3]] > 1 or taken[r[3]] then r[1] = r[2].name .. "_" .. r[3] end
  end
  local seen = {}
  for _, r in ipairs(list) do seen[r[1]] = (seen[r[1]] or 0) + 1 end
  for _, r in ipairs(list) do
    if seen[r[1]] > 1 or (r[1] ~= r[3] and taken[r[1]]) then
      r[1] = (r[4] == "" and self.name or r[4]:gsub("/", "_")) .. "_" .. r[3]
    end
  end
  return list
end

-- running state of one pass (train or evaluate) over batches
local function new_pass()
  return { loss_sum = 0, out_loss = {}, n = 0, metrics = nil, layer = {} }
end

local function pass_update(self, st, logits_named, single, y, sw, total, parts, nb, where)
  -- (total: a number, or a device scalar summed on the device: evaluate)
  if type(total) == "number" then st.loss_sum = st.loss_sum + total * nb
  else st.loss_sum = total:detach() * nb + st.loss_sum end
  st.n = st.n + nb
  for name, l in pairs(parts) do
    -- (a device loss is summed on the device and read at the end of the pass)
    local v = l:device() == "cpu" and l:item() * nb or l:detach() * nb
    st.out_loss[name] = (st.out_loss[name] or 0) + v
  end
  if not st.metrics then st.metrics = build_metrics(self, logits_named) end
  for name, ms in pairs(st.metrics) do
    local yt = target_for(y, name, nil, single)
    local w = sw
    if type(w) == "table" and not is_tensor(w) then w = w[name] end
    for _, m in ipairs(ms) do m:update(yt, logits_named[name], w) end
  end
  layer_update(self, st, where)
end

-- the names of the loss and compiled metrics a pass logs (without their values)
local function compiled_names(st, single)
  local taken = { loss = true }
  for name in pairs(st.out_loss) do if not single then taken[name .. "_loss"] = true end end
  for name, ms in pairs(st.metrics or {}) do
    for _, m in ipairs(ms) do taken[(single and "" or (name .. "_")) .. m.name] = true end
  end
  return taken
end

-- the layer metrics' means so far, into logs
local function layer_logs(self, st, single, prefix, logs)
  for _, r in ipairs(layer_names(self, st, compiled_names(st, single))) do
    local a = st.layer[r[2]][r[3]]
    logs[prefix .. r[1]] = lazy_value(a[1]) / a[2]
  end
  return logs
end

-- the pass's sums that lie on a device (loss, per-output losses, layer
-- metrics), read back in one copy instead of one wait for the device each
local function read_device_sums(st)
  local slots, vals = {}, {}
  local function want(tbl, k)
    local v = tbl[k]
    if is_tensor(v) and v:device() ~= "cpu" then
      slots[#slots + 1] = { tbl, k }
      vals[#vals + 1] = v:reshape(1):to("float64")
    end
  end
  want(st, "loss_sum")
  for k in pairs(st.out_loss) do want(st.out_loss, k) end
  for _, acc in pairs(st.layer) do
    for _, a in pairs(acc) do want(a, 1) end
  end
  if #vals < 2 then return end
  local host = moe.cat(vals, 1):cpu()
  for i, sl in ipairs(slots) do sl[1][sl[2]] = host[i] end
end

local function pass_logs(self, st, single, prefix, logs)
  read_device_sums(st)
  logs = logs or {}
  prefix = prefix or ""
  logs[prefix .. "loss"] = st.n > 0 and lazy_value(st.loss_sum) / st.n or 0 / 0
  local multi = not single
  if multi then
    for name, s in pairs(st.out_loss) do logs[prefix .. name .. "_loss"] = lazy_value(s) / st.n end
  end
  for name, ms in pairs(st.metrics or {}) do
    for _, m in ipairs(ms) do
      logs[prefix .. (multi and (name .. "_") or "") .. m.name] = m:result()
    end
  end
  return layer_logs(self, st, single, prefix, logs)
end

-- ------------------------------------------------------------------ progress display

local function fmt_logs(logs, skip_val)
  local parts = {}
  for _, k in ipairs(sorted_keys(logs)) do
    local v = logs[k]
    if type(v) == "number" and not (skip_val and k:sub(1, 4) == "val_") then
      parts[#parts + 1] = ("%s %.4f"):format(k, v)
    end
  end
  -- loss first, then the rest alphabetically
  table.sort(parts, function(a, b)
    local la, lb = a:match("^loss ") ~= nil, b:match("^loss ") ~= nil
    if la ~= lb then return la end
    local va, vb = a:match("^val_") ~= nil, b:match("^val_") ~= nil
    if va ~= vb then return vb end
    return a < b
  end)
  return table.concat(parts, "  ")
end

local function progress(verbose)
  local tty = verbose == 1 and ffi.C.isatty(1) == 1
  local p = { verbose = verbose, tty = tty, last = 0 }
  -- logs: a function giving the running logs (called only when the line is drawn)
  function p:batch(epoch, epochs, b, nb, seen, t0, logs)
    if not self.tty then return end
    local t = now()
    if t - self.last < 0.1 and b < nb then return end
    logs = logs()
    self.last = t
    local el = t - t0
    local eta = b > 0 and el / b * (nb - b) or 0
    local width = 20
    local done = math.floor(width * b / nb)
    io.stdout:write(("\rEpoch %d/%d %4d/%d [%s%s] ETA %4.1fs %7.0f samples/s  %s\27[K"):format(epoch, epochs, b, nb,
      string.rep("=", done), string.rep(".", width - done), eta, el > 0 and seen / el or 0, fmt_logs(logs)))
    io.stdout:flush()
  end
  function p:epoch_end(epoch, epochs, seconds, n, logs)
    if self.verbose == 0 then return end
    if self.tty then io.stdout:write("\r\27[K") end
    io.stdout:write(("Epoch %d/%d  %.2fs  %.0f samples/s  %s\n"):format(epoch, epochs, seconds,
      seconds > 0 and n / seconds or 0, fmt_logs(logs)))
    io.stdout:flush()
  end
  return p
end


-- ------------------------------------------------------------------ History

local History = {}
History.__index = History
M.History = History
local function new_history() return setmetatable({ history = {}, epoch = {}, params = {} }, History) end
function History:on_epoch_end(epoch, logs)
  self.epoch[#self.epoch + 1] = epoch
  for k, v in pairs(logs) do
    local h = self.history[k]
    if not h then h = {}; self.history[k] = h end
    h[#self.epoch] = v
  end
end
-- the last value of a logged quantity
function History:last(name)
  local h = self.history[name]
  return h and h[#self.epoch] or nil
end

-- ------------------------------------------------------------------ callbacks

local HOOKS = { "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin",
                "on_batch_end", "on_test_begin", "on_test_end" }

local function call_hooks(cbs, hook, ...)
  for _, cb in ipairs(cbs) do
    local f = cb[hook]
    if f then f(cb, ...) end
  end
end

-- per-sample weights from class weights keyed by label: the label value of a
-- [n] / [n, 1] target (0 and 1 for binary labels, 1-based ids for sparse ones),
-- the 1-based class of a one-hot target; classes not listed weigh 1
local function class_weights(cw, y, where)
  if not is_tensor(y) then error(("%s: class_weight needs a tensor target"):format(where), 3) end
  local idx
  if y:dim() == 2 and y:size(2) > 1 then idx = y:argmax(2):reshape(-1)
  else idx = y:reshape(-1):round():to("int64") end
  local n = idx:numel()
  local lo, hi = n > 0 and idx:min():item() or 0, n > 0 and idx:max():item() or 0
  local map = {}
  for c = lo, hi do
    local w = cw[c]
    if w == nil then w = 1 end
    map[#map + 1] = w
  end
  return moe.tensor(map):index_select(1, idx - lo + 1)
end

-- ------------------------------------------------------------------ fit

local function check_opts(opts, allowed, where)
  if type(opts) ~= "table" then error(("%s: expected one table of options, got %s"):format(where, moe._show(opts)), 3) end
  for k in pairs(opts) do
    if not allowed[k] then
      local names = sorted_keys(allowed)
      error(("%s: unknown option '%s' (options: %s)"):format(where, tostring(k), table.concat(names, ", ")), 3)
    end
  end
end

local FIT_OPTS = { x = true, y = true, batch_size = true, epochs = true, validation_data = true,
  validation_split = true, shuffle = true, sample_weight = true, class_weight = true, callbacks = true,
  verbose = true, initial_epoch = true, seed = true, steps_per_epoch = true, distributed = true }

local function positive_int(v, name, where)
  if type(v) ~= "number" or v < 1 or v ~= math.floor(v) then
    error(("%s: %s must be a positive integer, got %s"):format(where, name, moe._show(v)), 3)
  end
end

local function finite(v) return v == v and v ~= math.huge and v ~= -math.huge end

-- every float weight (trainable or not) holds only finite values
local function weights_finite(self)
  local _, ts = self:named_weights()
  return moe.no_grad(function()
    local bad = {} -- per device, a count summed there: one read per device
    for _, t in ipairs(ts) do
      if t:dtype():match("^float") and t:numel() > 0 then
        local c = (t - t):ne(0):any():to("float32") -- NaN - NaN and inf - inf are NaN
        local d = t:device()
        bad[d] = bad[d] and bad[d] + c or c
      end
    end
    for _, c in pairs(bad) do if c:item() > 0 then return false end end
    return true
  end)
end

-- a copy of every weight and of the optimizer's state (its per-parameter
-- moments and step counts), to go back to when training ends in non-finite weights
local function snapshot(self, epoch)
  if not weights_finite(self) then return nil end
  return moe.no_grad(function()
    local _, ts = self:named_weights()
    local snap = { epoch = epoch, weights = {}, opt = {} }
    for i, t in ipairs(ts) do snap.weights[i] = { t, t:detach():clone() } end
    local opt = rawget(self, "optimizer")
    if type(opt) == "table" and type(opt.state) == "table" then
      snap.iterations = opt.iterations
      for _, p in ipairs(self:parameters()) do
        local s = opt.state[p]
        if s then
          local c = { step = s.step }
          for j = 1, 2 do if s[j] then c[j] = s[j]:clone() end end
          snap.opt[p] = c
        end
      end
    end
    return snap
  end)
end

local function restore(self, snap)
  moe.no_grad(function()
    for _, e in ipairs(snap.weights) do e[1]:copy_(e[2]) end
  end)
  local opt = rawget(self, "optimizer")
  if snap.iterations then
    for _, p in ipairs(self:parameters()) do opt.state[p] = snap.opt[p] end
    opt.iterations = snap.iterations
  end
end

-- ------------------------------------------------------------------ data parallel

-- The world a fit or evaluate works in: moe.distributed when `distributed` is
-- true, or when it is nil and the job has several ranks (mpirun -np N); nil
-- when it is false or the job is one process.
local function dist_world(flag, where)
  if flag ~= nil and type(flag) ~= "boolean" then
    error(("%s: distributed must be true or false, got %s"):format(where, moe._show(flag)), 3)
  end
  if flag == false then return nil end
  local D = moe.distributed
  if flag == nil and D.world_size() < 2 then return nil end
  return D
end
M.dist_world = dist_world

-- the parameters that live on one rank only (expert-parallel shards): not
-- broadcast, not all-reduced
local function rank_local(self)
  local f = nn.expert_parallel_params
  return f and f(self) or {}
end

-- whether device tensors can go to the collectives themselves (NCCL), or
-- through host copies
local function device_collectives(D)
  local i = D.info()
  return i.nccl_built and not i.nccl_reason or false
end

-- every weight (trainable or not) but the rank-local ones as rank 0 has it
local function broadcast_weights(self, D, skip)
  local _, ts = self:named_weights()
  local direct = device_collectives(D)
  moe.no_grad(function()
    for _, t in ipairs(ts) do
      if not skip[t] then
        if t:device() == "cpu" or direct then D.broadcast(t, 0)
        else t:copy_(D.broadcast(t:cpu(), 0):to(t:device())) end
      end
    end
  end)
end

-- The gradients of a step averaged over the ranks: sync.prepare() before
-- backward, sync.finish() after it. With the engine's reducer
-- (moe.distributed.Reducer: buckets all-reduced while backward still runs)
-- when it covers the parameters; otherwise one all-reduce of all gradients of
-- a dtype and device, flattened, after backward. A parameter no rank used
-- counts as a zero gradient. A rank-local parameter's gradient, which the
-- all_to_all of its layer already summed over every rank's tokens, is divided
-- by the world size (the loss is the mean of the ranks' losses).
local function grad_sync(self, D, skip)
  local params = self._params_cache.list
  local W = D.world_size()
  local locals, reduced = {}, {}
  for _, p in ipairs(params) do
    if skip[p] then locals[#locals + 1] = p else reduced[#reduced + 1] = p end
  end
  if D.Reducer then
    local ok, r = pcall(D.Reducer, reduced, { local_params = locals })
    if ok then return { prepare = function() r:prepare() end, finish = function() r:finish() end, reducer = r } end
  end
  local direct -- device gradients go through NCCL where this build can (else through host copies)
  local function finish()
    if direct == nil then direct = device_collectives(D) end
    moe.no_grad(function()
      local groups, keys = {}, {}
      for _, p in ipairs(params) do
        if skip[p] then
          if p.grad and W > 1 then p.grad = p.grad / W end
        else
          local key = p:dtype() .. "@" .. p:device()
          local g = groups[key]
          if not g then g = { ps = {}, parts = {} }; groups[key] = g; keys[#keys + 1] = key end
          g.ps[#g.ps + 1] = p
          g.parts[#g.parts + 1] = (p.grad or moe.zeros(p:shape(), { dtype = p:dtype(), device = p:device() })):reshape(-1)
        end
      end
      table.sort(keys)
      for _, key in ipairs(keys) do
        local g = groups[key]
        local buf = #g.parts == 1 and g.parts[1]:clone() or moe.cat(g.parts, 1)
        local dev = buf:device()
        local staged = dev ~= "cpu" and not direct
        if staged then buf = buf:cpu() end
        D.all_reduce(buf, "mean")
        if staged then buf = buf:to(dev) end
        local off = 1
        for _, p in ipairs(g.ps) do
          local k = p:numel()
          p.grad = buf:narrow(1, off, k):view(p:shape())
          off = off + k
        end
      end
    end)
  end
  return { prepare = function() end, finish = finish }
end

-- The weights that are not trained (BatchNormalization's moving statistics)
-- follow each rank's own batches: at the end of every epoch, before validation
-- and any checkpoint, they become their mean over the ranks (float ones; the
-- rank-local shards aside), so that every rank holds the same model again.
local function average_buffers(self, D, skip)
  local trained = {}
  for _, p in ipairs(self:parameters()) do trained[p] = true end
  local _, ts = self:named_weights()
  local direct = device_collectives(D)
  moe.no_grad(function()
    for _, t in ipairs(ts) do
      if not trained[t] and not skip[t] and t:dtype():match("^float") and t:numel() > 0 then
        if t:device() == "cpu" or direct then D.all_reduce(t, "mean")
        else t:copy_(D.all_reduce(t:cpu(), "mean"):to(t:device())) end
      end
    end
  end)
end

-- a few flags (stop, interrupt, ...) made global: true on every rank when true on one
local function any_rank(D, ...)
  local v = {}
  for i = 1, select("#", ...) do v[i] = select(i, ...) and 1 or 0 end
  local t = D.all_reduce(moe.tensor(v, { dtype = "float64" }), "max"):totable()
  for i = 1, #t do t[i] = t[i] > 0 end
  return unpack(t)
end

-- one data-parallel step: every rank runs forward and backward on its own
-- batch, the gradients are averaged, and every rank makes the same update
-- (or, when the mean loss over the ranks is not finite, none). Returns this
-- rank's loss (for the epoch's sums, which are added over the ranks at its
-- end), parts, outputs and the ranks' mean loss.
local function train_step_dp(self, xb, yb, swb, before_update, dp)
  local p = self(xb)
  local total, parts = self:compute_loss(yb, p, swb)
  if before_update then before_update() end
  self:zero_grad()
  dp.sync = dp.sync or grad_sync(self, dp.D, dp.skip)
  dp.sync.prepare()
  total:backward()
  dp.sync.finish()
  local loss = total:item()
  local mean = dp.D.all_reduce(moe.tensor({ loss }, { dtype = "float64" }), "mean"):item()
  if finite(mean) then self.optimizer:step(self._params_cache.list) end
  return loss, parts, p, mean
end

-- the pass's sums (loss, per-output losses, layer metrics, sample count) and
-- its metrics' states made those of all ranks together; every rank calls it
-- in the same state (the same model and metrics)
local function sync_pass(self, st, D)
  read_device_sums(st)
  local slots = { { st, "loss_sum" }, { st, "n" } }
  for _, k in ipairs(sorted_keys(st.out_loss)) do slots[#slots + 1] = { st.out_loss, k } end
  for _, e in ipairs(self:modules()) do
    local acc = st.layer[e[2]]
    if acc then
      for _, k in ipairs(sorted_keys(acc)) do
        slots[#slots + 1] = { acc[k], 1 }
        slots[#slots + 1] = { acc[k], 2 }
      end
    end
  end
  local vals = {}
  for i, sl in ipairs(slots) do vals[i] = lazy_value(sl[1][sl[2]]) end
  local sums = D.all_reduce(moe.tensor(vals, { dtype = "float64" }), "sum"):totable()
  for i, sl in ipairs(slots) do sl[1][sl[2]] = sums[i] end
  for _, name in ipairs(sorted_keys(st.metrics or {})) do
    for _, m in ipairs(st.metrics[name]) do
      if type(m.sync) ~= "function" then
        error(("metric '%s' of output '%s' cannot be combined over the ranks of a distributed run: give it a sync(self, dist) method that makes its state that of all ranks' samples (moe.metrics' own metrics have one)")
          :format(tostring(m.name), tostring(name)), 0)
      end
      m:sync(D)
    end
  end
end

-- the numbers of logs as rank 0 has them, on every rank (the values are global
-- already; this makes them the same to the bit, so that every rank's callbacks
-- decide alike)
local function broadcast_logs(D, logs)
  local keys = {}
  for k, v in pairs(logs) do if type(v) == "number" then keys[#keys + 1] = k end end
  if #keys == 0 then return logs end
  table.sort(keys)
  local vals = {}
  for i, k in ipairs(keys) do vals[i] = logs[k] end
  local t = moe.tensor(vals, { dtype = "float64" })
  D.broadcast(t, 0)
  local back = t:totable()
  for i, k in ipairs(keys) do logs[k] = back[i] end
  return logs
end

-- one forward/backward/update on a batch; returns loss number, parts, named
-- outputs. A non-finite loss makes no update (the weights stay as they were);
-- before_update (if given) runs once the weights exist, before they change.
--
-- On a device the loss is not read before the update (that would drain the
-- device's queue every step): its value is copied behind the forward pass
-- (core.read_later), backward and the update are queued, and a device flag,
-- "the loss is not finite", calls the update off there (optimizer step{skip}).
-- Then the host waits for the loss alone, while backward and the update run;
-- a called-off step's counters are taken back (the optimizer's retract).
local function train_step(self, xb, yb, swb, before_update)
  local p = self(xb)
  local total, parts = self:compute_loss(yb, p, swb)
  local opt = self.optimizer
  if total:device() == "cpu" or type(opt.retract) ~= "function" then -- (an optimizer of the user's own: read first)
    local loss = total:item()
    if not finite(loss) then return loss, parts, p end
    if before_update then before_update() end
    self:zero_grad()
    total:backward()
    opt:step(self._params_cache.list)
    return loss, parts, p
  end
  local later = core.read_later(total)
  local bad = moe.no_grad(function() return (total - total):ne(0) end) -- NaN or an infinity
  if before_update then before_update() end
  self:zero_grad()
  total:backward()
  opt:step(self._params_cache.list, { skip = bad })
  local loss = later:get()
  if not finite(loss) then opt:retract() end
  return loss, parts, p
end

-- when training stopped with non-finite weights: back to the last finite state.
-- Returns the words for the stop message.
-- (bad: whether the weights are not finite, decided by the caller over every
-- rank in a distributed fit, so that every rank restores or none does)
local function recover(self, snap, batch_kept, bad)
  if bad == nil then bad = not weights_finite(self) end
  if not bad then
    return batch_kept and ("weights restored to those before batch %d (its update was not applied)"):format(batch_kept)
      or "the weights are finite"
  end
  if snap then
    restore(self, snap)
    if weights_finite(self) then
      return ("the weights were not finite: weights restored to those at the start of epoch %d (the last finite ones)")
        :format(snap.epoch)
    end
  end
  return "the weights are not finite, and no finite state of this fit could be restored"
end

function Module:fit(opts)
  check_opts(opts, FIT_OPTS, "fit")
  if not rawget(self, "_loss_fns") then error(("fit: %s \"%s\": call compile{...} first"):format(self.class_name, self.name), 2) end
  local x, y = opts.x, opts.y
  if x == nil or y == nil then error("fit: x and y are required", 2) end
  local n = rows_of(x, "x", "fit")
  local ny = rows_of(y, "y", "fit")
  if ny ~= n then error(("fit: x has %d rows but y has %d"):format(n, ny), 2) end
  if n == 0 then error("fit: x and y have 0 rows: there is no data to train on", 2) end
  local batch = opts.batch_size or 32
  positive_int(batch, "batch_size", "fit")
  local epochs = opts.epochs or 1
  positive_int(epochs, "epochs", "fit")
  local initial = opts.initial_epoch or 0
  local sw = opts.sample_weight
  if sw ~= nil and rows_of(sw, "sample_weight", "fit") ~= n then error("fit: sample_weight must have one value per row", 2) end
  if opts.class_weight then
    local cwsw
    if is_tensor(y) then cwsw = class_weights(opts.class_weight, y, "fit")
    else
      cwsw = {}
      for name, cw in pairs(opts.class_weight) do cwsw[name] = class_weights(cw, y[name], "fit") end
    end
    if sw == nil then sw = cwsw
    elseif is_tensor(sw) and is_tensor(cwsw) then sw = sw:reshape(-1) * cwsw
    else error("fit: combine sample_weight and class_weight with one output only", 2) end
  end
  -- validation data: given, or the last validation_split of the rows (before shuffling)
  local vx, vy, vsw
  if opts.validation_data then
    local v = opts.validation_data
    if type(v) ~= "table" or is_tensor(v) then
      error(("fit: validation_data must be {x, y} (or {x = ..., y = ...}), got %s"):format(moe._show(v)), 2)
    end
    vx, vy, vsw = v[1] or v.x, v[2] or v.y, v[3] or v.sample_weight
    if vx == nil or vy == nil then error("fit: validation_data must be {x, y} (or {x = ..., y = ...})", 2) end
    local nvx, nvy = rows_of(vx, "validation_data x", "fit"), rows_of(vy, "validation_data y", "fit")
    if nvx ~= nvy then error(("fit: validation_data x has %d rows but y has %d"):format(nvx, nvy), 2) end
    if nvx == 0 then error("fit: validation_data has 0 rows: there is no data to validate on", 2) end
    if vsw ~= nil and rows_of(vsw, "validation_data sample_weight", "fit") ~= nvx then
      error("fit: validation_data's sample_weight must have one value per row", 2)
    end
  elseif opts.validation_split then
    local f = opts.validation_split
    if type(f) ~= "number" or f <= 0 or f >= 1 then error(("fit: validation_split must be in (0, 1), got %s"):format(moe._show(f)), 2) end
    local nv = math.floor(n * f)
    if nv < 1 or nv >= n then error(("fit: validation_split %g of %d rows leaves no data on one side"):format(f, n), 2) end
    vx, vy, vsw = narrow(x, n - nv + 1, nv), narrow(y, n - nv + 1, nv), narrow(sw, n - nv + 1, nv)
    x, y, sw = narrow(x, 1, n - nv), narrow(y, 1, n - nv), narrow(sw, 1, n - nv)
    n = n - nv
  end
  local verbose = opts.verbose
  if verbose == nil or verbose == "auto" then verbose = 1 end
  -- data parallel (several ranks, or distributed = true): see train_step_dp
  local D = dist_world(opts.distributed, "fit")
  if not D then
    local ok, e = pcall(refuse_alone, self, "fit")
    if not ok then error(e, 2) end
  end
  local main = not D or D.rank() == 0 -- the rank that prints
  local show = progress(main and verbose or 0)
  local history = new_history()
  history.params = { epochs = epochs, batch_size = batch, samples = n }
  local cbs = {}
  for _, cb in ipairs(opts.callbacks or {}) do
    if type(cb) ~= "table" then error(("fit: callbacks must be a list of callback tables, got %s"):format(moe._show(cb)), 2) end
    cbs[#cbs + 1] = cb
  end
  cbs[#cbs + 1] = history -- last, as in Keras: it records what callbacks add to the logs (lr, ...)
  for _, cb in ipairs(cbs) do rawset(cb, "model", self) end
  rawset(self, "stop_training", false)
  rawset(self, "history", history)
  local data = require "moe.data"
  local tensors, plan = batch_plan(x, y, sw)
  local onames -- the model's output names, once it has been called
  local dev = self:device() -- each batch moves there
  local nb = math.ceil(n / batch)
  local dp -- {D, skip = the rank-local parameters, sync = the gradient averaging}
  if D then
    dp = { D = D }
    nb = math.ceil(math.ceil(n / D.world_size()) / batch) -- (distributed_batches: this rank's share)
  end
  if opts.steps_per_epoch then positive_int(opts.steps_per_epoch, "steps_per_epoch", "fit"); nb = math.min(nb, opts.steps_per_epoch) end
  local was_deferred = core.defer_interrupts(true)
  local stop_reason
  local snap -- the last finite weights (and optimizer state), from the start of an epoch
  local function say(msg) if main then io.stderr:write(msg) end end
  local ok, err = pcall(function()
    local base_seed = opts.seed
    if dp then
      -- every rank starts from rank 0's weights (a model whose layers build on
      -- their first call is built first, on the first rows, without training)
      -- and shuffles with rank 0's seed
      local unbuilt = false
      for _, e in ipairs(self:modules()) do if e[2]:_needs_build() then unbuilt = true end end
      if unbuilt then
        local was = self._training
        self:eval()
        moe.no_grad(function()
          local first = finish_gather(start_gather(tensors, moe.arange(1, math.min(n, batch) + 1), false))
          self(to_device(from_plan(plan[1], first), dev))
        end)
        if was then self:train() end
      end
      -- every rank must run as many batches: the same row count and batch size
      -- on every rank (a mismatch is an error on each, not a hang)
      local mine = { n, batch, epochs, nb, vx ~= nil and rows_of(vx, "validation x") or 0 }
      local lo = D.all_reduce(moe.tensor(mine, { dtype = "float64" }), "min"):totable()
      local hi = D.all_reduce(moe.tensor(mine, { dtype = "float64" }), "max"):totable()
      for i, what in ipairs { "training rows", "batch_size", "epochs", "batches per epoch", "validation rows" } do
        if lo[i] ~= hi[i] then
          error(("fit: data parallel needs the same %s on every rank, but they range from %d to %d here (rank %d has %d): "
            .. "give every rank all the data (each takes its own slice) and the same options"):format(what, lo[i], hi[i],
            D.rank(), mine[i]), 0)
        end
      end
      dp.skip = rank_local(self)
      broadcast_weights(self, D, dp.skip)
      if base_seed == nil then base_seed = math.random(1, 2 ^ 30) end
      base_seed = D.broadcast(moe.tensor({ base_seed }, { dtype = "float64" }), 0):item()
    end
    call_hooks(cbs, "on_train_begin", {})
    for epoch = initial + 1, initial + epochs do
      local epoch_logs = {}
      call_hooks(cbs, "on_epoch_begin", epoch, epoch_logs)
      self:train()
      -- the snapshot: now, or (for a model whose layers build on their first
      -- call) after the first forward pass, before the first update
      local take_snapshot
      if #self:named_weights() > 0 then snap = snapshot(self, epoch) or snap
      else take_snapshot = function() snap = snapshot(self, epoch) or snap; take_snapshot = nil end end
      local st = new_pass()
      local t0 = now()
      local b = 0
      local single
      local function running()
        local logs = { loss = st.loss_sum / st.n }
        return layer_logs(self, st, single, "", logs)
      end
      local next_idx
      if dp then
        next_idx = data.distributed_batches(n, batch, { shuffle = opts.shuffle ~= false,
          seed = base_seed * 100003 + epoch, rank = D.rank(), world_size = D.world_size() })
      else
        next_idx = data.batches(n, batch, { shuffle = opts.shuffle ~= false, seed = opts.seed and (opts.seed * 100003 + epoch) or nil })
      end
      local idx = next_idx()
      local pin = dev ~= "cpu"
      local job = idx and start_gather(tensors, idx, pin)
      while idx do -- (no index is drawn past batch nb)
        b = b + 1
        local got = finish_gather(job)
        local size = idx:numel()
        idx = b < nb and next_idx() or nil
        job = idx and start_gather(tensors, idx, pin) -- the next batch, while this one trains
        local batch_logs = { batch = b, size = size }
        call_hooks(cbs, "on_batch_begin", b, batch_logs)
        local xb, yb, swb = from_plan(plan[1], got), from_plan(plan[2], got), from_plan(plan[3], got)
        xb, yb, swb = to_device(xb, dev), to_device(yb, dev), to_device(swb, dev)
        local loss, parts, p, mean
        if dp then loss, parts, p, mean = train_step_dp(self, xb, yb, swb, take_snapshot, dp)
        else loss, parts, p = train_step(self, xb, yb, swb, take_snapshot); mean = loss end
        if not finite(mean) then
          stop_reason = ("fit: the loss is %s at epoch %d, batch %d%s: training stopped; %s"):format(tostring(mean),
            epoch, b, dp and " (the mean over the ranks)" or "",
            recover(self, snap, b, dp and any_rank(D, not weights_finite(self)) or nil))
          rawset(self, "stop_training", true)
          say(stop_reason .. "\n")
          break
        end
        local named
        onames = onames or (self.output_names and self:output_names()) or {}
        named, single = named_outputs(self, p, onames)
        pass_update(self, st, named, single, yb, swb, loss, parts, size, "fit") -- metrics see detached outputs
        batch_logs.loss = mean
        call_hooks(cbs, "on_batch_end", b, batch_logs)
        show:batch(epoch, initial + epochs, b, nb, st.n, t0, running)
        local interrupted, stop = core.take_interrupt(), self.stop_training
        if dp then interrupted, stop = any_rank(D, interrupted, stop) end -- (every rank stops at the same batch)
        if interrupted then
          stop_reason = ("fit: interrupted at epoch %d, batch %d: training stopped"):format(epoch, b)
          say("\n" .. stop_reason .. "\n")
          rawset(self, "stop_training", true)
          break
        end
        if stop then rawset(self, "stop_training", true); break end
      end
      -- a step with a finite loss can still leave non-finite weights (an
      -- overflowing update): stop, back to the last finite ones
      local bad_weights = not stop_reason and not weights_finite(self)
      if dp and not stop_reason then bad_weights = any_rank(D, bad_weights) end -- (an expert shard is on one rank)
      if bad_weights then
        stop_reason = ("fit: the weights are not finite after epoch %d, batch %d: training stopped; %s")
          :format(epoch, b, recover(self, snap, nil, true))
        rawset(self, "stop_training", true)
        say(stop_reason .. "\n")
      end
      if dp then
        average_buffers(self, D, dp.skip)
        sync_pass(self, st, D)
      end
      pass_logs(self, st, single, "", epoch_logs)
      if vx ~= nil and not stop_reason then
        local vl = self:evaluate { x = vx, y = vy, sample_weight = vsw, batch_size = math.max(batch, 256), verbose = 0,
          distributed = dp and true or false }
        for k, v in pairs(vl) do epoch_logs["val_" .. k] = v end
      end
      if dp then broadcast_logs(D, epoch_logs) end
      if stop_reason and st.n == 0 then break end
      show:epoch_end(epoch, initial + epochs, now() - t0, st.n, epoch_logs)
      call_hooks(cbs, "on_epoch_end", epoch, epoch_logs)
      if dp then rawset(self, "stop_training", any_rank(D, self.stop_training)) end
      if self.stop_training then break end
    end
    call_hooks(cbs, "on_train_end", {})
  end)
  core.defer_interrupts(was_deferred)
  self:train()
  if not ok then reraise(err, "fit") end
  history.stopped = stop_reason
  return history
end

-- ------------------------------------------------------------------ evaluate / predict

local EVAL_OPTS = { x = true, y = true, batch_size = true, sample_weight = true, verbose = true, callbacks = true,
  distributed = true }

-- evaluate's batches {first row, rows}: all rows; or, distributed, this rank's
-- share of them (the ranks' shares differ by a row at most, rank 0's first) in
-- the same number of batches on every rank (a model with expert-parallel
-- layers runs collectives in its forward pass), each at most about batch rows
local function eval_ranges(n, batch, D)
  local out = {}
  if not D or D.world_size() == 1 then
    for start = 1, n, batch do out[#out + 1] = { start, math.min(batch, n - start + 1) } end
    return out
  end
  local W, r = D.world_size(), D.rank()
  if n < W then error(("evaluate: %d rows cannot give each of %d ranks a row"):format(n, W), 0) end
  local base, extra = math.floor(n / W), n % W
  local mine = base + (r < extra and 1 or 0)
  local first = r * base + math.min(r, extra) + 1
  local nb = math.min(math.ceil((base + (extra > 0 and 1 or 0)) / batch), base)
  for j = 0, nb - 1 do
    local a, b = math.floor(mine * j / nb), math.floor(mine * (j + 1) / nb)
    out[#out + 1] = { first + a, b - a }
  end
  return out
end

-- evaluate{x, y, batch_size=256, sample_weight} -> { loss = ..., <metric> = ... } (Keras's
-- names, the layers' add_metric values among them); the evaluation mode is eval()
function Module:evaluate(opts)
  if opts == nil then
    error(moe._where(("evaluate: expected {x = ..., y = ...} (Keras's evaluation); for the evaluation mode call %s:eval()")
      :format(self.class_name or "model")), 0)
  end
  check_opts(opts, EVAL_OPTS, "evaluate")
  if not rawget(self, "_loss_fns") then error(("evaluate: %s \"%s\": call compile{...} first"):format(self.class_name, self.name), 2) end
  local x, y = opts.x, opts.y
  if x == nil or y == nil then error("evaluate: x and y are required", 2) end
  local n = rows_of(x, "x", "evaluate")
  local ny = rows_of(y, "y", "evaluate")
  if ny ~= n then error(("evaluate: x has %d rows but y has %d"):format(n, ny), 2) end
  if n == 0 then error("evaluate: x and y have 0 rows: there is no data to evaluate on", 2) end
  if opts.sample_weight ~= nil and rows_of(opts.sample_weight, "sample_weight", "evaluate") ~= n then
    error("evaluate: sample_weight must have one value per row", 2)
  end
  local batch = opts.batch_size or 256
  positive_int(batch, "batch_size", "evaluate")
  local D = dist_world(opts.distributed, "evaluate")
  local ranges = eval_ranges(n, batch, D)
  local was = self._training
  self:eval()
  local cbs = opts.callbacks or {}
  call_hooks(cbs, "on_test_begin", {})
  local st, single = new_pass(), true
  local dev = self:device()
  local ok, err = pcall(moe.no_grad, function()
    for _, rg in ipairs(ranges) do
      local start, len = rg[1], rg[2]
      local xb, yb, swb = narrow(x, start, len), narrow(y, start, len), narrow(opts.sample_weight, start, len)
      xb, yb, swb = to_device(xb, dev), to_device(yb, dev), to_device(swb, dev)
      local p = self(xb)
      local total, parts = self:compute_loss(yb, p, swb)
      local named
      named, single = named_outputs(self, p)
      pass_update(self, st, named, single, yb, swb, total:device() == "cpu" and total:item() or total, parts, len,
        "evaluate")
    end
  end)
  if was then self:train() end
  if not ok then reraise(err, "evaluate") end
  if D then
    local ok2, err2 = pcall(sync_pass, self, st, D)
    if not ok2 then reraise(err2, "evaluate") end
  end
  local logs = pass_logs(self, st, single, "")
  if D then broadcast_logs(D, logs) end
  call_hooks(cbs, "on_test_end", logs)
  return logs
end

-- apply fn to every tensor of a (nested) table of outputs
local function map_tensors(v, fn)
  if is_tensor(v) then return fn(v) end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, t in pairs(v) do out[k] = map_tensors(t, fn) end
  return out
end

local function all_rows(v, n)
  if is_tensor(v) then return v:dim() > 0 and v:size(1) == n end
  if type(v) ~= "table" or next(v) == nil then return false end
  for _, t in pairs(v) do if not all_rows(t, n) then return false end end
  return true
end

-- the outputs for 0 rows, as Keras gives them: empty, with the outputs' other
-- dims and dtypes. The model runs on the 0 rows; where it cannot, on one
-- placeholder row (zeros; ones for integer inputs such as ids) cut to 0 rows.
local function empty_outputs(self, x)
  local ok, out = pcall(self.__call__, self, x)
  if ok and all_rows(out, 0) then return out end
  local first = out
  local dummy = map_tensors(x, function(t)
    local shape = t:shape()
    shape[1] = 1
    local o = { dtype = t:dtype(), device = t:device() }
    return t:dtype():match("^float") and moe.zeros(shape, o) or moe.ones(shape, o)
  end)
  local ok2, out2 = pcall(self.__call__, self, dummy)
  if not ok2 or not all_rows(out2, 1) then
    error(("predict: x has 0 rows, and the model cannot run on them to learn its output shape: %s")
      :format(tostring(ok and "its outputs do not have 0 rows" or first):gsub("^[^\n]-%.lua:%d+: ", "")), 0)
  end
  return map_tensors(out2, function(t) return t:narrow(1, 1, 0) end)
end

-- predict(x[, {batch_size = 256}]): outputs in evaluation mode, without recording;
-- a tensor, or (several outputs) a table keyed like the model's outputs (a list
-- for a list, names for a table of named outputs). For 0 rows: empty
-- outputs of shape [0, ...] (Keras's)
function Module:predict(x, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error(("predict: options must be a table ({batch_size = 256}), got %s"):format(moe._show(opts)), 2) end
  for k in pairs(opts) do
    if k ~= "batch_size" and k ~= "verbose" then
      error(("predict: unknown option '%s' (options: batch_size, verbose)"):format(tostring(k)), 2)
    end
  end
  local n = rows_of(x, "x", "predict")
  local batch = opts.batch_size or 256
  positive_int(batch, "batch_size", "predict")
  local was = self._training
  self:eval()
  local chunks = {}
  -- batches run on the model's device; the outputs come back on x's, in one
  -- copy per output at the end
  local dev, xdev = self:device(), data_device(x)
  local ok, err = pcall(moe.no_grad, function()
    if n == 0 then chunks[1] = empty_outputs(self, to_device(x, dev)); return end
    for start = 1, n, batch do
      local len = math.min(batch, n - start + 1)
      chunks[#chunks + 1] = self(to_device(narrow(x, start, len), dev))
    end
  end)
  if was then self:train() end
  if not ok then reraise(err, "predict") end
  local function join(parts)
    local t = #parts == 1 and parts[1] or moe.cat(parts, 1)
    return t:device() == xdev and t or t:to(xdev)
  end
  if is_tensor(chunks[1]) then return join(chunks) end
  -- keyed like the model's outputs: a list for a list of outputs (as Keras), names for a table
  local out = {}
  for k in pairs(chunks[1]) do
    local parts = {}
    for i, c in ipairs(chunks) do parts[i] = c[k] end
    out[k] = join(parts)
  end
  return out
end

return M
