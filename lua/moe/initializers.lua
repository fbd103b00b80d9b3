-- moe.initializers, moe.regularizers, moe.constraints: Keras names and semantics.
--
-- An initializer is called as init(shape, dtype) and returns a new tensor. A
-- regularizer is called on a weight and returns a scalar penalty tensor (it
-- joins the training loss). A constraint is called on a weight after each
-- optimizer update and returns the projected weight. Each has get_config() and
-- can be named by a string ("glorot_uniform", "l2", "max_norm") or a table
-- {class_name = ..., config = {...}} (what get_config writes to checkpoints).
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)

local M = { initializers = {}, regularizers = {}, constraints = {} }
local I, R, C = M.initializers, M.regularizers, M.constraints

-- an object kind: constructor tables with __call, and a registry by name
local function kind(registry, name, defaults, fn)
  local cls = { class_name = name }
  cls.__index = cls
  cls.__call = fn
  function cls.get_config(self)
    local c = {}
    for k in pairs(defaults) do c[k] = self[k] end
    return { class_name = name, config = c }
  end
  setmetatable(cls, { __call = function(_, opts)
    opts = opts or {}
    if type(opts) == "number" then -- Keras's positional form: l2(0.01), max_norm(3)
      local first = ({ l1 = "l1", l2 = "l2", l1_l2 = "l1", max_norm = "max_value", constant = "value",
        truncated_normal = "stddev", random_normal = "stddev" })[name]
      if not first then error(moe._where(("%s: expected an options table, got the number %s"):format(name, tostring(opts))), 0) end
      opts = { [first] = opts }
    end
    if type(opts) ~= "table" then error(moe._where(("%s: expected an options table, got %s"):format(name, moe._show(opts))), 0) end
    local o = setmetatable({}, cls)
    for k, v in pairs(opts) do
      if defaults[k] == nil then
        local known = {}
        for d in pairs(defaults) do known[#known + 1] = d end
        table.sort(known)
        error(moe._where(("%s: unknown option '%s' (options: %s)"):format(name, tostring(k),
          #known > 0 and table.concat(known, ", ") or "none")), 0)
      end
    end
    for k, d in pairs(defaults) do
      local v = opts[k]
      if v == nil then v = d end
      if v == false and d ~= false then v = nil end
      -- numbers stay numbers, finite (a regularizer's factor is also >= 0)
      if type(d) == "number" and v ~= nil and (type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge
          or (registry == R and v < 0)) then
        error(moe._where(("%s: %s must be a finite number%s, got %s"):format(name, k, registry == R and " >= 0" or "",
          moe._show(v))), 0)
      end
      o[k] = v
    end
    if o.validate then o:validate() end
    return o
  end })
  registry[name] = cls
  return cls
end

-- fans of a weight shape, Keras's convention: [in, out]; conv-like [.., in, out]
local function fans(shape)
  local n = #shape
  if n == 0 then return 1, 1 end
  if n == 1 then return shape[1], shape[1] end
  if n == 2 then return shape[1], shape[2] end
  local receptive = 1
  for i = 1, n - 2 do receptive = receptive * shape[i] end
  return shape[n - 1] * receptive, shape[n] * receptive
end
M.fans = fans

-- normal samples redrawn until they lie within two standard deviations
local function truncated(shape, dtype, mean, stddev)
  local x = moe.randn(shape, { dtype = dtype })
  for _ = 1, 100 do
    local bad = x:abs():gt(2)
    if not bad:any():item() then break end
    x = moe.where(bad, moe.randn(shape, { dtype = dtype }), x)
  end
  return x * stddev + mean
end

local function positive(self, field)
  local v = self[field]
  if type(v) ~= "number" or v <= 0 then
    error(("%s: %s must be a positive number, got %s"):format(self.class_name, field, moe._show(v)), 4)
  end
end

local VarianceScaling = kind(I, "variance_scaling", { scale = 1.0, mode = "fan_in", distribution = "truncated_normal", seed = false },
  function(self, shape, dtype)
    local fan_in, fan_out = fans(shape)
    local n = self.mode == "fan_in" and fan_in or self.mode == "fan_out" and fan_out or (fan_in + fan_out) / 2
    local s = self.scale / math.max(1, n)
    if self.seed then moe.manual_seed(self.seed) end
    if self.distribution == "truncated_normal" then
      -- the stddev of a unit normal truncated at +-2, so the result has variance s
      return truncated(shape, dtype, 0, math.sqrt(s) / 0.87962566103423978)
    elseif self.distribution == "untruncated_normal" or self.distribution == "normal" then
      return moe.randn(shape, { dtype = dtype }) * math.sqrt(s)
    else
      local limit = math.sqrt(3 * s)
      return moe.rand(shape, { dtype = dtype }) * (2 * limit) - limit
    end
  end)
function VarianceScaling:validate()
  positive(self, "scale")
  local modes = { fan_in = true, fan_out = true, fan_avg = true }
  if not modes[self.mode] then
    error(("variance_scaling: mode must be fan_in, fan_out or fan_avg, got %s"):format(moe._show(self.mode)), 4)
  end
  local dists = { truncated_normal = true, untruncated_normal = true, normal = true, uniform = true }
  if not dists[self.distribution] then
    error(("variance_scaling: distribution must be truncated_normal, untruncated_normal or uniform, got %s")
      :format(moe._show(self.distribution)), 4)
  end
end

-- the named variance-scaling family
local function preset(name, scale, mode, distribution)
  local cls = kind(I, name, { seed = false }, function(self, shape, dtype)
    return VarianceScaling { scale = scale, mode = mode, distribution = distribution, seed = self.seed }(shape, dtype)
  end)
  return cls
end
preset("glorot_uniform", 1, "fan_avg", "uniform")
preset("glorot_normal", 1, "fan_avg", "truncated_normal")
preset("he_normal", 2, "fan_in", "truncated_normal")
preset("he_uniform", 2, "fan_in", "uniform")
preset("lecun_normal", 1, "fan_in", "truncated_normal")
preset("lecun_uniform", 1, "fan_in", "uniform")

local TruncatedNormal = kind(I, "truncated_normal", { mean = 0.0, stddev = 0.05, seed = false }, function(self, shape, dtype)
  if self.seed then moe.manual_seed(self.seed) end
  return truncated(shape, dtype, self.mean, self.stddev)
end)
function TruncatedNormal:validate() positive(self, "stddev") end
local RandomNormal = kind(I, "random_normal", { mean = 0.0, stddev = 0.05, seed = false }, function(self, shape, dtype)
  if self.seed then moe.manual_seed(self.seed) end
  return moe.randn(shape, { dtype = dtype }) * self.stddev + self.mean
end)
function RandomNormal:validate() positive(self, "stddev") end
kind(I, "random_uniform", { minval = -0.05, maxval = 0.05, seed = false }, function(self, shape, dtype)
  if self.seed then moe.manual_seed(self.seed) end
  return moe.rand(shape, { dtype = dtype }) * (self.maxval - self.minval) + self.minval
end)
kind(I, "zeros", {}, function(_, shape, dtype) return moe.zeros(shape, { dtype = dtype }) end)
kind(I, "ones", {}, function(_, shape, dtype) return moe.ones(shape, { dtype = dtype }) end)
kind(I, "constant", { value = 0.0 }, function(self, shape, dtype)
  return moe.full(shape, self.value, { dtype = dtype })
end)

-- regularizers: penalties on a weight ------------------------------------------
kind(R, "l1", { l1 = 0.01 }, function(self, w) return w:abs():sum() * self.l1 end)
kind(R, "l2", { l2 = 0.01 }, function(self, w) return w:square():sum() * self.l2 end)
kind(R, "l1_l2", { l1 = 0.01, l2 = 0.01 }, function(self, w)
  return w:abs():sum() * self.l1 + w:square():sum() * self.l2
end)

-- constraints: projections after each update -----------------------------------
-- axis is 1-based like every dim in moelua (Keras's axis=0 is axis=1 here): for a
-- Dense kernel [in, out] the norm of each output unit's incoming weights.
local EPS = 1e-7
kind(C, "max_norm", { max_value = 2.0, axis = 1 }, function(self, w)
  local norms = w:square():sum(self.axis, { keepdim = true }):sqrt()
  local desired = norms:clamp(0, self.max_value)
  return w * (desired / (norms + EPS))
end)
kind(C, "non_neg", {}, function(_, w) return w * w:ge(0):to(w:dtype()) end)
kind(C, "unit_norm", { axis = 1 }, function(self, w)
  return w / (w:square():sum(self.axis, { keepdim = true }):sqrt() + EPS)
end)
kind(C, "min_max_norm", { min_value = 0.0, max_value = 1.0, rate = 1.0, axis = 1 }, function(self, w)
  local norms = w:square():sum(self.axis, { keepdim = true }):sqrt()
  local desired = norms:clamp(self.min_value, self.max_value) * self.rate + norms * (1 - self.rate)
  return w * (desired / (norms + EPS))
end)

-- n independent draws of init over `shape`, stacked along a new first dim: each
-- expert of a mixture gets its own weight with the scale of a single layer's
function M.stacked(init, n, shape, dtype)
  local parts = {}
  for e = 1, n do parts[e] = init(shape, dtype):unsqueeze(1) end
  return moe.cat(parts, 1)
end

-- get(spec): nil, a name, a {class_name, config} table, an object or a function
local function getter(registry, what)
  return function(spec, where)
    if spec == nil or spec == false then return nil end
    if type(spec) == "function" then return spec end
    if type(spec) == "string" then
      local cls = registry[spec]
      if not cls then
        local names = {}
        for k in pairs(registry) do names[#names + 1] = k end
        table.sort(names)
        error(("%s: unknown %s '%s' (known: %s)"):format(where or what, what, spec, table.concat(names, ", ")), 3)
      end
      return cls()
    end
    if type(spec) == "table" and getmetatable(spec) and getmetatable(spec).class_name then return spec end
    if type(spec) == "table" and spec.class_name then
      local cls = registry[spec.class_name]
      if not cls then error(("%s: unknown %s '%s'"):format(where or what, what, tostring(spec.class_name)), 3) end
      return cls(spec.config)
    end
    error(("%s: expected a %s name, object or function, got %s"):format(where or what, what, moe._show(spec)), 3)
  end
end
I.get = getter(I, "initializer")
R.get = getter(R, "regularizer")
C.get = getter(C, "constraint")

-- config of an initializer/regularizer/constraint (nil for Lua functions, which
-- cannot be stored in a checkpoint)
function M.serialize(obj)
  if obj == nil then return nil end
  if type(obj) == "table" and obj.get_config then return obj:get_config() end
  return nil
end

return M
