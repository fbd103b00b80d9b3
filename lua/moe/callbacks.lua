-- moe.callbacks: Keras's training callbacks. A callback is a table with any of
-- on_train_begin(logs), on_train_end(logs), on_epoch_begin(epoch, logs),
-- on_epoch_end(epoch, logs), on_batch_begin(batch, logs), on_batch_end(batch, logs)
-- (called as methods; epochs and batches count from 1); fit sets cb.model, and a
-- callback stops training with cb.model.stop_training = true. Plain Lua tables
-- with these functions work as callbacks too.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)

local callbacks = {}

local function class(name, defaults, init)
  local cls = { class_name = name }
  cls.__index = cls
  setmetatable(cls, { __call = function(c, opts)
    opts = opts or {}
    if type(opts) ~= "table" then error(("%s: expected a table of options, got %s"):format(name, moe._show(opts)), 2) end
    local o = setmetatable({}, c)
    for k, v in pairs(defaults) do o[k] = v end
    for k, v in pairs(opts) do
      if defaults[k] == nil then
        local names = {}
        for n in pairs(defaults) do names[#names + 1] = n end
        table.sort(names)
        error(("%s: unknown option '%s' (options: %s)"):format(name, tostring(k), table.concat(names, ", ")), 2)
      end
      o[k] = v
    end
    -- counts are integers >= 0; other numbers finite (min_lr >= 0)
    for k, d in pairs(defaults) do
      local v = o[k]
      if type(d) == "number" and v ~= nil then
        local count = k == "patience" or k == "cooldown" or k == "verbose" or k == "start_from_epoch"
        local ok = type(v) == "number" and v == v and v > -math.huge and v < math.huge
        if ok and count then ok = v >= 0 and v == math.floor(v) end
        if ok and k == "min_lr" then ok = v >= 0 end -- (min_delta: its size counts, as Keras)
        if not ok then
          error(moe._where(("%s: %s must be %s, got %s"):format(name, k,
            count and "an integer >= 0" or k == "min_lr" and "a finite number >= 0"
            or "a finite number", moe._show(v))), 0)
        end
      end
    end
    if init then init(o) end
    return o
  end })
  callbacks[name] = cls
  return cls
end

-- mode "auto": "max" for accuracy/auc-like names, else "min"
-- in a distributed run (mpirun -np N) only rank 0 prints and writes files;
-- every rank keeps the same state, decided on the same (global) logs
local function is_main() return moe.distributed.rank() == 0 end
local function say(...) if is_main() then print(...) end end

local function resolve_mode(self, where)
  local m = self.mode
  if m == "auto" then
    local mon = self.monitor
    m = (mon:match("acc") or mon:match("auc") or mon:match("precision") or mon:match("recall")) and "max" or "min"
  end
  if m ~= "min" and m ~= "max" then error(("%s: mode must be auto, min or max, got %s"):format(where, moe._show(self.mode)), 3) end
  self._mode = m
  self.best = m == "min" and math.huge or -math.huge
end

local function improved(self, v)
  if v ~= v then return false end
  if self._mode == "min" then return v < self.best - self.min_delta end
  return v > self.best + self.min_delta
end

local function monitored(self, logs, where)
  local v = logs[self.monitor]
  if v == nil then
    local names = {}
    for k in pairs(logs) do names[#names + 1] = k end
    table.sort(names)
    if is_main() then io.stderr:write(("%s: '%s' is not in the logs (%s); skipped\n"):format(where, self.monitor, table.concat(names, ", "))) end
  end
  return v
end

-- EarlyStopping{monitor="val_loss", mode="auto", patience=0, min_delta=0, baseline,
-- restore_best_weights=false}
local EarlyStopping = class("EarlyStopping", { monitor = "val_loss", mode = "auto", patience = 0, min_delta = 0,
  baseline = false, restore_best_weights = false, verbose = 0 }, function(o)
  resolve_mode(o, "EarlyStopping")
  o.min_delta = math.abs(o.min_delta)
end)
function EarlyStopping:on_train_begin()
  self.wait, self.stopped_epoch, self.best_weights, self.best_epoch = 0, 0, nil, nil
  self.best = self._mode == "min" and math.huge or -math.huge
  if self.baseline then self.best = self.baseline end
end
function EarlyStopping:on_epoch_end(epoch, logs)
  local v = monitored(self, logs, "EarlyStopping")
  if v == nil then return end
  if improved(self, v) then
    self.best, self.best_epoch, self.wait = v, epoch, 0
    if self.restore_best_weights then self.best_weights = self.model:get_weights() end
    return
  end
  self.wait = self.wait + 1
  if self.wait >= self.patience then -- Keras: patience epochs without improvement, then stop
    self.stopped_epoch = epoch
    self.model.stop_training = true
  end
end
function EarlyStopping:on_train_end()
  if self.restore_best_weights and self.best_weights and self.stopped_epoch > 0 then
    self.model:set_weights(self.best_weights)
    if self.verbose > 0 then say(("EarlyStopping: restored the weights of epoch %d"):format(self.best_epoch)) end
  end
end

-- ModelCheckpoint{filepath, monitor="val_loss", mode="auto", save_best_only=false}:
-- model:save (atomic: a temporary file renamed over the target) after each epoch,
-- or when the monitored value improves. filepath may hold {epoch} and log names,
-- with a format: "ckpt-{epoch}-{val_loss:.4f}.moe".
local ModelCheckpoint = class("ModelCheckpoint", { filepath = false, monitor = "val_loss", mode = "auto", save_best_only = false,
  min_delta = 0, verbose = 0 }, function(o)
  if type(o.filepath) ~= "string" then error("ModelCheckpoint: filepath (a string) is required", 3) end
  resolve_mode(o, "ModelCheckpoint")
end)
local function expand(path, epoch, logs)
  return (path:gsub("{([%w_]+):?([^}]*)}", function(name, fmt)
    local v = name == "epoch" and epoch or logs[name]
    if v == nil then return "{" .. name .. "}" end
    if fmt ~= "" then return ("%" .. fmt):format(v) end
    return tostring(v)
  end))
end
function ModelCheckpoint:on_epoch_end(epoch, logs)
  if self.save_best_only then
    local v = monitored(self, logs, "ModelCheckpoint")
    if v == nil or not improved(self, v) then return end
    self.best = v
  end
  local path = expand(self.filepath, epoch, logs)
  -- one file per job: rank 0 writes it; a model with expert-parallel layers
  -- saves on every rank (its save is collective: the shards are gathered)
  local shards = require("moe.nn").expert_parallel_params
  if is_main() or (shards and next(shards(self.model)) ~= nil) then self.model:save(path) end
  self.last_saved = path
  if self.verbose > 0 and is_main() then print(("ModelCheckpoint: saved %s"):format(path)) end
end

-- ReduceLROnPlateau{monitor="val_loss", factor=0.1, patience=10, mode="auto",
-- min_delta=1e-4, cooldown=0, min_lr=0}: the optimizer's lr times factor after
-- patience epochs without improvement
local ReduceLROnPlateau = class("ReduceLROnPlateau", { monitor = "val_loss", factor = 0.1, patience = 10, mode = "auto",
  min_delta = 1e-4, cooldown = 0, min_lr = 0, verbose = 0 }, function(o)
  if not (o.factor > 0 and o.factor < 1) then error(moe._where(("ReduceLROnPlateau: factor must be in (0, 1), got %s"):format(moe._show(o.factor))), 0) end
  resolve_mode(o, "ReduceLROnPlateau")
end)
function ReduceLROnPlateau:on_train_begin() self.wait, self.cooldown_counter = 0, 0 end
function ReduceLROnPlateau:on_epoch_end(epoch, logs)
  local v = monitored(self, logs, "ReduceLROnPlateau")
  if v == nil then return end
  local opt = self.model.optimizer
  logs.lr = opt:get_lr()
  if self.cooldown_counter > 0 then self.cooldown_counter = self.cooldown_counter - 1; self.wait = 0 end
  if improved(self, v) then self.best, self.wait = v, 0; return end
  if self.cooldown_counter > 0 then return end
  self.wait = self.wait + 1
  if self.wait >= self.patience then
    local old = opt:get_lr()
    local new = math.max(old * self.factor, self.min_lr)
    if new < old then
      opt:set_lr(new)
      if self.verbose > 0 then say(("ReduceLROnPlateau: epoch %d, lr %g -> %g"):format(epoch, old, new)) end
    end
    self.cooldown_counter, self.wait = self.cooldown, 0
  end
end

-- CSVLogger{filename, separator=",", append=false}: one row per epoch; the file is
-- written whole after each epoch (atomic rename), so it is never half-written
local CSVLogger = class("CSVLogger", { filename = false, separator = ",", append = false }, function(o)
  if type(o.filename) ~= "string" then error("CSVLogger: filename (a string) is required", 3) end
end)
function CSVLogger:on_train_begin()
  self.rows, self.keys = {}, nil
  if self.append then
    local f = io.open(self.filename, "r")
    if f then
      for line in f:lines() do self.rows[#self.rows + 1] = line end
      f:close()
    end
  end
end
function CSVLogger:on_epoch_end(epoch, logs)
  if not self.keys then
    local ks = {}
    for k in pairs(logs) do ks[#ks + 1] = k end
    table.sort(ks)
    self.keys = ks
    if #self.rows == 0 then self.rows[1] = "epoch" .. self.separator .. table.concat(ks, self.separator) end
  end
  local vals = { tostring(epoch) }
  for _, k in ipairs(self.keys) do
    local v = logs[k]
    vals[#vals + 1] = type(v) == "number" and ("%.10g"):format(v) or tostring(v or "")
  end
  self.rows[#self.rows + 1] = table.concat(vals, self.separator)
  if not is_main() then return end
  local tmp = self.filename .. ".tmp"
  local f = assert(io.open(tmp, "w"))
  f:write(table.concat(self.rows, "\n"), "\n")
  f:close()
  assert(os.rename(tmp, self.filename))
end

-- LearningRateScheduler{schedule = function(epoch, lr) return new_lr end}
local LearningRateScheduler = class("LearningRateScheduler", { schedule = false, verbose = 0 }, function(o)
  if type(o.schedule) ~= "function" then error("LearningRateScheduler: schedule (a function of epoch, lr) is required", 3) end
end)
function LearningRateScheduler:on_epoch_begin(epoch)
  local opt = self.model.optimizer
  local lr = self.schedule(epoch, opt:get_lr())
  if type(lr) ~= "number" or lr ~= lr or lr < 0 then
    error(("LearningRateScheduler: schedule returned %s for epoch %d"):format(tostring(lr), epoch), 2)
  end
  opt:set_lr(lr)
end
function LearningRateScheduler:on_epoch_end(epoch, logs) logs.lr = self.model.optimizer:get_lr() end

-- TerminateOnNaN{}: stops at the first batch whose loss is NaN or infinite
local TerminateOnNaN = class("TerminateOnNaN", {})
function TerminateOnNaN:on_batch_end(batch, logs)
  local l = logs.loss
  if l and (l ~= l or l == math.huge or l == -math.huge) then
    if is_main() then print(("TerminateOnNaN: batch %d has loss %s"):format(batch, tostring(l))) end
    self.model.stop_training = true
  end
end

-- TensorBoard{log_dir = "logs", update_freq = "epoch"}: the logs as TensorBoard
-- scalars, laid out as Keras does: log_dir/train and log_dir/validation each
-- hold an event file (moe.tensorboard); every epoch writes "epoch_<name>" at
-- step = the epoch (counted from 1, as here) -- the loss, the compiled and layer
-- metrics (a sparse router's among them) and "epoch_learning_rate" under
-- train, the val_ values without their prefix under validation. update_freq
-- "batch" (or N) also writes "batch_loss" after every (N-th) batch, at step =
-- the batch's number counted over all epochs and fits. Files close at the end
-- of fit; each record is flushed as it is written.
local TensorBoard = class("TensorBoard", { log_dir = "logs", update_freq = "epoch" }, function(o)
  local tbm = require "moe.tensorboard"
  if type(o.log_dir) ~= "string" or o.log_dir == "" then
    error(moe._where(("TensorBoard: log_dir must be a directory name (a non-empty string), got %s")
      :format(tbm._show(o.log_dir))), 0)
  end
  local u = o.update_freq
  if u == "epoch" then o._every = nil
  elseif u == "batch" then o._every = 1
  elseif type(u) == "number" and u >= 1 and u == math.floor(u) and u < 2 ^ 53 then o._every = u
  else
    error(moe._where(('TensorBoard: update_freq must be "epoch", "batch" or an integer >= 1 (every N batches), got %s')
      :format(tbm._show(u))), 0)
  end
  o._batches = 0
end)
function TensorBoard:_writer(which)
  local key = "_" .. which .. "_writer"
  if not self[key] then
    self[key] = require("moe.tensorboard").SummaryWriter(self.log_dir .. "/" .. which, "TensorBoard")
  end
  return self[key]
end
function TensorBoard:on_train_begin()
  if not is_main() then return end
  self:_writer("train") -- (the validation file is made when there is something to write to it)
end
function TensorBoard:on_batch_end(_, logs)
  self._batches = self._batches + 1
  if not is_main() then return end
  if not self._every or self._batches % self._every ~= 0 then return end
  local vals = {}
  for k, v in pairs(logs) do
    if k ~= "batch" and k ~= "size" and type(v) == "number" then vals["batch_" .. k] = v end
  end
  self:_writer("train"):write_scalars(vals, self._batches)
end
function TensorBoard:on_epoch_end(epoch, logs)
  if not is_main() then return end
  local train, val = {}, {}
  for k, v in pairs(logs) do
    if type(v) == "number" then
      if k:sub(1, 4) == "val_" then val["epoch_" .. k:sub(5)] = v else train["epoch_" .. k] = v end
    end
  end
  local opt = self.model and self.model.optimizer
  if opt and type(opt.get_lr) == "function" and type(opt:get_lr()) == "number" then
    train.epoch_learning_rate = opt:get_lr()
  end
  self:_writer("train"):write_scalars(train, epoch)
  if next(val) ~= nil then self:_writer("validation"):write_scalars(val, epoch) end
end
function TensorBoard:on_train_end()
  for _, key in ipairs { "_train_writer", "_validation_writer" } do
    if self[key] then self[key]:close(); self[key] = nil end
  end
end

-- LambdaCallback{on_epoch_end = function(epoch, logs) ... end, ...}: plain functions
-- (not methods) for any hook
local LAMBDA_HOOKS = { "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin",
  "on_batch_end" }
local LambdaCallback = { class_name = "LambdaCallback" }
LambdaCallback.__index = LambdaCallback
callbacks.LambdaCallback = setmetatable(LambdaCallback, { __call = function(c, opts)
  local o = setmetatable({ fns = {} }, c)
  for k, v in pairs(opts or {}) do
    local ok = false
    for _, h in ipairs(LAMBDA_HOOKS) do ok = ok or h == k end
    if not ok or type(v) ~= "function" then
      error(("LambdaCallback: '%s' is not a hook (%s) with a function"):format(tostring(k), table.concat(LAMBDA_HOOKS, ", ")), 2)
    end
    o.fns[k] = v
  end
  return o
end })
for _, hook in ipairs(LAMBDA_HOOKS) do
  LambdaCallback[hook] = function(self, ...) local f = self.fns[hook]; if f then return f(...) end end
end

return callbacks
