-- moe.optim: optimizers, learning-rate schedules and ReduceLROnPlateau.
--
-- Update rules and defaults are PyTorch's (torch.optim); Keras names are
-- accepted as aliases (learning_rate for lr, beta_1/beta_2, rho for RMSprop's
-- alpha, epsilon for eps). opt:step(params) updates the given parameters from
-- their .grad, as Torch7's optim works on given parameters: one fused C pass
-- over all of them (src/train/optim.c), then the constraints of the layers that
-- own them. Parameters without a gradient are skipped.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core

local optim = {}

local function nn() return require "moe.nn" end

local Optimizer = {}
Optimizer.__index = Optimizer
optim.Optimizer = Optimizer

local aliases = { learning_rate = "lr", beta_1 = "beta1", beta_2 = "beta2", epsilon = "eps", rho = "alpha",
  clipnorm = "clip_norm", global_clipnorm = "clip_norm", clipvalue = "clip_value" }

local function finite_nonneg(v) return type(v) == "number" and v >= 0 and v < math.huge end
local function in_unit(v) return type(v) == "number" and v >= 0 and v < 1 end
-- the valid values of each hyperparameter (PyTorch's checks, and NaN/inf refused)
local hp_range = {
  beta1 = { ok = in_unit, what = "in [0, 1)" }, beta2 = { ok = in_unit, what = "in [0, 1)" },
  alpha = { ok = function(v) return type(v) == "number" and v >= 0 and v <= 1 end, what = "in [0, 1]" },
  momentum = { ok = finite_nonneg, what = "a finite number >= 0" },
  dampening = { ok = function(v) return type(v) == "number" and v >= 0 and v <= 1 end, what = "in [0, 1]" },
  weight_decay = { ok = finite_nonneg, what = "a finite number >= 0" },
  eps = { ok = finite_nonneg, what = "a finite number >= 0" },
  lr_decay = { ok = finite_nonneg, what = "a finite number >= 0" },
  initial_accumulator_value = { ok = finite_nonneg, what = "a finite number >= 0" },
  nesterov = { ok = function(v) return type(v) == "boolean" end, what = "true or false" },
  clip_norm = { ok = function(v) return type(v) == "number" and v > 0 and v < math.huge end, what = "a finite number > 0" },
  clip_value = { ok = function(v) return type(v) == "number" and v > 0 and v < math.huge end, what = "a finite number > 0" },
}

local function define(name, kind, defaults, state_names)
  local cls = setmetatable({ class_name = name }, { __index = Optimizer })
  cls.__index = cls
  optim[name] = cls
  setmetatable(cls, { __index = Optimizer, __call = function(c, opts)
    opts = opts or {}
    local o = setmetatable({ kind = kind, state = setmetatable({}, { __mode = "k" }), iterations = 0,
      hp = {}, state_names = state_names }, c)
    for k, v in pairs(opts) do
      local key = aliases[k] or k
      if defaults[key] == nil and key ~= "clip_norm" and key ~= "clip_value" then
        local known = {}
        for d in pairs(defaults) do known[#known + 1] = d end
        table.sort(known)
        error(("%s: unknown option '%s' (options: %s, clip_norm, clip_value)"):format(name, tostring(k),
          table.concat(known, ", ")), 2)
      end
      o.hp[key] = v
    end
    for k, d in pairs(defaults) do if o.hp[k] == nil then o.hp[k] = d end end
    local lr = o.hp.lr
    if type(lr) == "table" or type(lr) == "function" then
      o.schedule = lr
      o.hp.lr = o.schedule(0)
      if not finite_nonneg(o.hp.lr) then
        error(("%s: the lr schedule gives %s at step 0 (a finite number >= 0 is needed)"):format(name, tostring(o.hp.lr)), 2)
      end
    elseif not finite_nonneg(lr) then
      error(("%s: lr must be a finite number >= 0 or a schedule, got %s"):format(name, moe._show(lr)), 2)
    end
    for k, v in pairs(o.hp) do
      local range = hp_range[k]
      if range and not range.ok(v) then
        error(("%s: %s must be %s, got %s"):format(name, k, range.what, moe._show(v)), 2)
      end
    end
    if o.hp.nesterov and (o.hp.momentum <= 0 or (o.hp.dampening or 0) ~= 0) then
      error(("%s: nesterov needs momentum > 0 and dampening 0"):format(name), 2)
    end
    return o
  end })
  return cls
end

define("SGD", "sgd", { lr = 1e-3, momentum = 0, dampening = 0, nesterov = false, weight_decay = 0 }, { "momentum_buffer" })
define("Adam", "adam", { lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0 }, { "m", "v" })
define("AdamW", "adamw", { lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2 }, { "m", "v" })
define("RMSprop", "rmsprop", { lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0 }, { "square_avg", "momentum_buffer" })
define("Adagrad", "adagrad", { lr = 1e-2, lr_decay = 0, eps = 1e-10, weight_decay = 0, initial_accumulator_value = 0 }, { "sum" })

function Optimizer:get_lr() return self.hp.lr end
function Optimizer:set_lr(lr)
  if not finite_nonneg(lr) then error(("set_lr: expected a finite number >= 0, got %s"):format(moe._show(lr)), 2) end
  self.hp.lr = lr
end

-- which of state_names[1], [2] this optimizer keeps per parameter
local function slots(self)
  local need1 = self.kind ~= "sgd" or self.hp.momentum ~= 0
  local need2 = self.kind == "adam" or self.kind == "adamw" or (self.kind == "rmsprop" and self.hp.momentum ~= 0)
  return need1, need2
end

local function state_for(self, p)
  local s = self.state[p]
  if not s then
    s = { step = 0 }
    local need1, need2 = slots(self)
    local init = self.hp.initial_accumulator_value or 0
    -- (on the parameter's device)
    if need1 then s[1] = moe.full_like(p, init) end
    if need2 then s[2] = moe.zeros_like(p) end
    self.state[p] = s
  end
  return s
end

-- step(params): one update of every parameter that has a gradient. With
-- clip_norm set, returns the global gradient norm before clipping: a number for
-- parameters on the CPU; for parameters on a CUDA device, a 0-dim float64 tensor
-- there (the norm is reduced and used on the device; norm:item() reads it, and is
-- the only wait for the device, paid only by a caller that wants the value).
--
-- step(params, {skip = flag}): flag is a one-element bool tensor on the
-- parameters' device; when it holds true the update changes nothing (decided
-- on the device, without a wait), though the step counters advance as for any
-- step: retract() takes them back once the caller knows it was called off.
function Optimizer:step(params, opts)
  if type(params) ~= "table" then
    error(("%s.step: expected a list of parameters (model:parameters()), got %s"):format(self.class_name, moe._show(params)), 2)
  end
  if #params == 0 then
    error(("%s.step: the list of parameters is empty (a model's parameters exist once it is built: call it on a batch or model:build(input_shape) before model:parameters())")
      :format(self.class_name), 2)
  end
  if self.schedule then
    local lr = self.schedule(self.iterations)
    if not finite_nonneg(lr) then
      error(("%s.step: the lr schedule gives %s at step %d (a finite number >= 0 is needed)"):format(self.class_name,
        tostring(lr), self.iterations), 2)
    end
    self.hp.lr = lr
  end
  -- the argument lists are reused from step to step (no garbage per step)
  local P, S1, S2, steps = self._P, self._S1, self._S2, self._steps
  if not P then
    P, S1, S2, steps = {}, {}, {}, {}
    self._P, self._S1, self._S2, self._steps = P, S1, S2, steps
  end
  local n = 0
  for i, p in ipairs(params) do
    if not core.is_tensor(p) then error(("%s.step: parameter %d is not a tensor"):format(self.class_name, i), 2) end
    if p:has_grad() then
      local s = self.state[p] or state_for(self, p)
      s.step = s.step + 1
      n = n + 1
      P[n], S1[n], S2[n], steps[n] = p, s[1] or false, s[2] or false, s.step
    end
  end
  for i = n + 1, #P do P[i], S1[i], S2[i], steps[i] = nil, nil, nil, nil end
  local skip = opts ~= nil and opts.skip or nil
  if skip ~= nil and not core.is_tensor(skip) then
    error(("%s.step: skip must be a bool tensor, got %s"):format(self.class_name, moe._show(skip)), 2)
  end
  local norm = core.optim_step(self.kind, P, S1, S2, steps, self.hp, skip)
  if type(norm) == "number" and norm < 0 then norm = nil end
  self.iterations = self.iterations + 1
  self._last_n = n
  -- constraints of the layers that own the parameters
  local cof = nn().constraint_of
  for i = 1, n do
    local c = cof[P[i]]
    if c then moe.no_grad(function() P[i]:copy_(c(P[i])) end) end
  end
  return norm
end

-- the counters of the last step taken back (its parameters' step counts, the
-- iterations): for a step that step{skip} called off
function Optimizer:retract()
  local n = rawget(self, "_last_n")
  if not n then error(("%s.retract: no step to take back"):format(self.class_name), 2) end
  for i = 1, n do
    local s = self.state[self._P[i]]
    s.step = s.step - 1
  end
  self.iterations = self.iterations - 1
  self._last_n = nil
end

function Optimizer:zero_grad(params)
  for _, p in ipairs(params) do p.grad = nil end
end

function Optimizer:get_config()
  local c = { class_name = self.class_name, config = {} }
  for k, v in pairs(self.hp) do c.config[k] = v end
  if self.schedule and self.schedule.get_config then c.config.lr = self.schedule:get_config() end
  c.iterations = self.iterations
  return c
end

-- state of the given (named) parameters as tensors for a checkpoint, and the
-- names of the parameters that have state (in the order given)
function Optimizer:state_tensors(names, params)
  local out, with_state = {}, {}
  for i, p in ipairs(params) do
    local s = self.state[p]
    if s then
      with_state[#with_state + 1] = names[i]
      for j, sn in ipairs(self.state_names) do
        if s[j] then out["optimizer/" .. names[i] .. "/" .. sn] = s[j] end
      end
      out["optimizer/" .. names[i] .. "/step"] = moe.tensor(s.step, { dtype = "int64" })
    end
  end
  return out, with_state
end

-- load_state_tensors(names, params, tensors, with_state): the state of each
-- parameter named in with_state, from tensors (the file's optimizer/... ones).
-- Strict: a listed parameter the model lacks, a missing or misshapen slot, and
-- a tensor left unused are errors.
function Optimizer:load_state_tensors(names, params, tensors, with_state)
  local function fail(fmt, ...) error(("load: optimizer state: " .. fmt):format(...), 0) end
  if type(with_state) ~= "table" then fail("the list of parameters with state is missing") end
  local param_of = {}
  for i, n in ipairs(names) do param_of[n] = params[i] end
  local need = { slots(self) }
  local used, loaded = {}, {}
  for i, n in pairs(with_state) do
    if type(i) ~= "number" or type(n) ~= "string" then fail("the list of parameters with state is malformed") end
    local p = param_of[n]
    if not p then fail("it is recorded for '%s', which is not a trainable weight of the model", n) end
    if loaded[p] then fail("'%s' is listed twice", n) end
    local key = "optimizer/" .. n .. "/step"
    local st = tensors[key]
    if not st then fail("tensor '%s' is missing", key) end
    if st:dim() ~= 0 or st:dtype() ~= "int64" or st:item() < 0 then fail("'%s' is not a non-negative int64 scalar", key) end
    used[key] = true
    local s = { step = st:item() }
    for j, sn in ipairs(self.state_names) do
      if need[j] then
        local k = "optimizer/" .. n .. "/" .. sn
        local t = tensors[k]
        if not t then fail("tensor '%s' is missing (%s keeps %s for every parameter)", k, self.class_name, sn) end
        if not moe.is_same_size(t, p) or t:dtype() ~= p:dtype() then
          fail("'%s' does not match its parameter's shape and dtype", k)
        end
        used[k] = true
        s[j] = t:device() == p:device() and t or t:to(p:device()) -- (a file's tensors are on the CPU)
      end
    end
    loaded[p] = s
  end
  for k in pairs(tensors) do
    if not used[k] then fail("tensor '%s' belongs to no parameter with state (%s)", k, self.class_name) end
  end
  for p, s in pairs(loaded) do self.state[p] = s end
end

function optim.from_config(c)
  local cls = type(c) == "table" and optim[c.class_name]
  if not cls or type(cls) ~= "table" or not cls.class_name then
    error(("load: unknown optimizer '%s'"):format(tostring(type(c) == "table" and c.class_name)), 0)
  end
  local cfg = {}
  for k, v in pairs(c.config or {}) do cfg[k] = v end
  if type(cfg.lr) == "table" then cfg.lr = optim.schedules.from_config(cfg.lr) end
  local o = cls(cfg)
  local it = c.iterations == nil and 0 or c.iterations
  if type(it) ~= "number" or it < 0 or it ~= math.floor(it) or it >= 2 ^ 53 then
    error(("load: the optimizer's iterations must be an integer >= 0, got %s"):format(moe._show(c.iterations)), 0)
  end
  o.iterations = it
  return o
end

function optim.get(spec)
  if type(spec) == "table" and getmetatable(spec) and spec.step then return spec end
  if type(spec) == "string" then
    local names = { sgd = "SGD", adam = "Adam", adamw = "AdamW", rmsprop = "RMSprop", adagrad = "Adagrad" }
    local cls = optim[names[spec:lower()] or ""]
    if not cls then error(("optimizer: unknown optimizer '%s' (sgd, adam, adamw, rmsprop, adagrad)"):format(spec), 3) end
    return cls()
  end
  error(("optimizer: expected an optimizer or its name, got %s"):format(moe._show(spec)), 3)
end

-- ------------------------------------------------------------------ schedules
-- A schedule is called with the optimizer's step count (0 for the first step)
-- and returns the learning rate.
local schedules = {}
optim.schedules = schedules

local function schedule(name, defaults, fn)
  local cls = { class_name = name }
  cls.__index = cls
  cls.__call = fn
  function cls:get_config()
    local c = {}
    for k in pairs(defaults) do c[k] = self[k] end
    return { class_name = name, config = c }
  end
  setmetatable(cls, { __call = function(c, opts)
    local o = setmetatable({}, c)
    for k, d in pairs(defaults) do
      local v = opts and opts[k]
      if v == nil then v = d end
      if v == "required" then error(("%s: option '%s' is required"):format(name, k), 2) end
      o[k] = v
    end
    for k in pairs(opts or {}) do
      if defaults[k] == nil then error(("%s: unknown option '%s'"):format(name, tostring(k)), 2) end
    end
    return o
  end })
  schedules[name] = cls
  return cls
end

-- StepDecay: lr = initial * gamma^floor(step / step_size)   (PyTorch's StepLR)
schedule("StepDecay", { initial_learning_rate = "required", step_size = "required", gamma = 0.1 }, function(s, step)
  return s.initial_learning_rate * s.gamma ^ math.floor(step / s.step_size)
end)
-- ExponentialDecay (Keras): initial * decay_rate^(step / decay_steps), floored when staircase
schedule("ExponentialDecay", { initial_learning_rate = "required", decay_steps = "required",
  decay_rate = "required", staircase = false }, function(s, step)
  local e = step / s.decay_steps
  if s.staircase then e = math.floor(e) end
  return s.initial_learning_rate * s.decay_rate ^ e
end)
-- CosineDecay (Keras 3) with linear warm-up from initial_learning_rate to
-- warmup_target over warmup_steps, then a cosine from the peak down to alpha * peak
schedule("CosineDecay", { initial_learning_rate = "required", decay_steps = "required", alpha = 0.0,
  warmup_target = false, warmup_steps = 0 }, function(s, step)
  local peak = s.warmup_target or s.initial_learning_rate
  if s.warmup_steps > 0 and step < s.warmup_steps then
    return s.initial_learning_rate + (peak - s.initial_learning_rate) * step / s.warmup_steps
  end
  local t = math.min(step - s.warmup_steps, s.decay_steps) / s.decay_steps
  local cos = 0.5 * (1 + math.cos(math.pi * t))
  return peak * ((1 - s.alpha) * cos + s.alpha)
end)

function schedules.from_config(c)
  local cls = schedules[c.class_name or ""]
  if type(cls) ~= "table" then error(("load: unknown learning-rate schedule '%s'"):format(tostring(c.class_name)), 0) end
  return cls(c.config)
end

-- ReduceLROnPlateau{optimizer, mode="min", factor=0.1, patience=10, min_delta=1e-4,
-- cooldown=0, min_lr=0}: call :step(value) once per epoch with the monitored value
local Plateau = {}
Plateau.__index = Plateau
optim.ReduceLROnPlateau = setmetatable({}, { __call = function(_, opts)
  opts = opts or {}
  if not opts.optimizer then error("ReduceLROnPlateau: option 'optimizer' is required", 2) end
  local o = setmetatable({ optimizer = opts.optimizer, mode = opts.mode or "min", factor = opts.factor or 0.1,
    patience = opts.patience or 10, min_delta = opts.min_delta or 1e-4, cooldown = opts.cooldown or 0,
    min_lr = opts.min_lr or 0, wait = 0, cooldown_counter = 0 }, Plateau)
  if type(o.factor) ~= "number" or not (o.factor > 0 and o.factor < 1) then
    error(("ReduceLROnPlateau: factor must be in (0, 1), got %s"):format(moe._show(o.factor)), 2)
  end
  if o.mode ~= "min" and o.mode ~= "max" then error(("ReduceLROnPlateau: mode must be min or max, got %s"):format(moe._show(o.mode)), 2) end
  o.best = o.mode == "min" and math.huge or -math.huge
  return o
end })

function Plateau:step(value)
  local better = self.mode == "min" and value < self.best - self.min_delta
    or self.mode == "max" and value > self.best + self.min_delta
  if self.cooldown_counter > 0 then self.cooldown_counter = self.cooldown_counter - 1; self.wait = 0 end
  if better then
    self.best = value
    self.wait = 0
  elseif self.cooldown_counter == 0 then
    self.wait = self.wait + 1
    if self.wait >= self.patience then
      local lr = self.optimizer:get_lr()
      local new = math.max(lr * self.factor, self.min_lr)
      if new < lr then
        self.optimizer.schedule = nil
        self.optimizer:set_lr(new)
      end
      self.cooldown_counter = self.cooldown
      self.wait = 0
    end
  end
  return self.optimizer:get_lr()
end

return optim
