-- moe.nn: modules and layers.
--
-- A module holds named, ordered parameters (tensors that require grad), buffers
-- (non-trainable state such as BatchNormalization's moving statistics) and child
-- modules. Layers build their weights on the first call, from the input's shape,
-- as Keras layers do. Calling a layer on a tensor computes at once; calling it on
-- a symbolic tensor from moe.Input records a node of a functional model.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core
local inits = require "moe.initializers"
local I, R, C = inits.initializers, inits.regularizers, inits.constraints

local nn = {}
local registry = {}     -- class name -> class (what moe.load may construct)
nn.registry = registry
local constraint_of = setmetatable({}, { __mode = "k" })  -- parameter -> constraint
nn.constraint_of = constraint_of
-- tensor -> {rank, world, lo, n}: the views a layer's _keras_weights lists that
-- hold one rank's slice (dim 1) of an expert-parallel weight (lua/moe/sparse.lua)
nn.shard_of = setmetatable({}, { __mode = "k" })

local REQUIRED = setmetatable({}, { __tostring = function() return "<required>" end })
nn.REQUIRED = REQUIRED

local function is_module(v) return type(v) == "table" and rawget(v, "_children") ~= nil end
nn.is_module = is_module
local function is_symbolic(v) return type(v) == "table" and v.__symbolic == true end
nn.is_symbolic = is_symbolic

local function contains_symbolic(v, depth)
  if is_symbolic(v) then return true end
  if type(v) == "table" and not is_module(v) and (depth or 0) < 4 then
    for _, x in pairs(v) do if contains_symbolic(x, (depth or 0) + 1) then return true end end
  end
  return false
end

local function shape_str(shape)
  local p = {}
  for i, d in ipairs(shape) do p[i] = (i == 1 and d == -1) and "None" or tostring(d) end
  return "(" .. table.concat(p, ", ") .. ")"
end
nn.shape_str = shape_str

-- strip "file:line: " from a message we are about to wrap
local function bare(msg)
  msg = tostring(msg)
  return (msg:gsub("^[^\n]-%.lua:%d+: ", ""))
end

-- ------------------------------------------------------------------ classes

local Module = {}
nn.Module = Module

local name_counts = {}
local function auto_name(class_name)
  local base = class_name:gsub("(%l)(%u)", "%1_%2"):gsub("(%u)(%u%l)", "%1_%2"):lower()
  name_counts[base] = (name_counts[base] or 0) + 1
  return base .. "_" .. name_counts[base]
end
-- a name given or restored ("dense_7") moves its counter past it, so a layer
-- made later is not given the same name
function nn.note_name(name)
  local base, n = tostring(name):match("^(.-)_(%d+)$")
  n = tonumber(n)
  if base and n and n > (name_counts[base] or 0) and n < 2 ^ 31 then name_counts[base] = n end
end

-- bumped whenever a module gains a child or a weight: caches of module and
-- parameter lists are valid while it stays the same
local structure_version = 0
function nn.structure_changed() structure_version = structure_version + 1 end

local function module_newindex(self, k, v)
  structure_version = structure_version + 1
  if is_module(v) and k ~= "_parent" then
    local ch = rawget(self, "_children")
    if ch then ch[#ch + 1] = k end
  elseif core.is_tensor(v) and v.requires_grad and v.is_leaf then
    local ps = rawget(self, "_params")
    if ps then ps[#ps + 1] = k end
  end
  rawset(self, k, v)
end

-- define a class: cls(opts) constructs; instances are callable
local function class(name, parent)
  local cls = {}
  cls.__index = cls
  cls.__newindex = module_newindex
  cls.__call = function(self, ...) return self:__call__(...) end
  -- print(model): the layer tree with options, output shapes and parameter counts
  cls.__tostring = function(self) return require("moe.repl").module_tree(self) end
  cls.class_name = name
  cls.super = parent
  setmetatable(cls, {
    __index = parent,
    -- print(nn.Dense): the class as its call, with the options' defaults
    __tostring = function(c) return require("moe.doc").class_repr(c) end,
    __call = function(c, opts, ...)
      local o = setmetatable({}, c)
      o:init(opts or {}, ...)
      return o
    end,
    -- a class's build(), however it is called (by the first call, or by the
    -- user before set_weights), marks the layer built
    __newindex = function(c, k, v)
      if k == "build" and type(v) == "function" then v = nn.wrap_build(v) end
      rawset(c, k, v)
    end,
  })
  registry[name] = cls
  return cls
end
nn.class = class

-- Module:extend("Name") -> a subclass (user layers are written this way)
function Module:extend(name)
  if type(name) ~= "string" then error("extend: a class name (string) is required", 2) end
  return class(name, self)
end
Module.__index = Module
Module.__newindex = module_newindex
Module.__call = function(self, ...) return self:__call__(...) end
Module.__tostring = function(self) return require("moe.repl").module_tree(self) end
Module.class_name = "Module"
setmetatable(Module, { __call = function(c, opts)
  local o = setmetatable({}, c)
  o:init(opts or {})
  return o
end, __tostring = function(c) return require("moe.doc").class_repr(c) end })
registry.Module = Module

function Module:init(opts)
  rawset(self, "_params", {})
  rawset(self, "_buffers", {})
  rawset(self, "_children", {})
  rawset(self, "_regularizers", {})
  rawset(self, "_losses", {})
  rawset(self, "_metrics", {})
  rawset(self, "_training", true)
  rawset(self, "built", false)
  rawset(self, "_dtype_explicit", opts and opts.dtype ~= nil or false)
  if opts and opts.name then nn.note_name(opts.name) end
  rawset(self, "name", opts and opts.name or auto_name(self.class_name))
  rawset(self, "_config", {})
end

-- declare the options of a layer: defaults (REQUIRED for mandatory ones);
-- unknown options are an error that lists the known ones
-- ranges of numeric options that several layers share (any other number must be finite)
local option_ranges = {
  momentum = { function(v) return v >= 0 and v <= 1 end, "in [0, 1]" },
  epsilon = { function(v) return v >= 0 end, "a finite number >= 0" },
  loss_weight = { function(v) return v >= 0 end, "a finite number >= 0" },
  train_capacity_factor = { function(v) return v > 0 end, "a finite number > 0" },
  eval_capacity_factor = { function(v) return v > 0 end, "a finite number > 0" },
  examples_per_group = { function(v) return v > 0 end, "a finite number > 0" },
}

function Module:_options(opts, defaults)
  for k in pairs(opts) do
    if defaults[k] == nil and k ~= "name" and k ~= "input_shape" and k ~= "dtype" and k ~= "trainable" then
      local known = {}
      for d in pairs(defaults) do known[#known + 1] = d end
      table.sort(known)
      error(("%s: unknown option '%s' (options: %s)"):format(self.class_name, tostring(k),
        table.concat(known, ", ")), 4)
    end
  end
  for k, d in pairs(defaults) do
    local v = opts[k]
    if v == nil then
      if d == REQUIRED then error(("%s: option '%s' is required"):format(self.class_name, k), 4) end
      v = d
    end
    if v == false and d ~= false and d ~= true then v = nil end -- false means "none" for objects
    if type(v) == "number" then
      local range = option_ranges[k] or (k:match("_loss_weight$") and option_ranges.loss_weight)
      if v ~= v or v == math.huge or v == -math.huge or (range and not range[1](v)) then
        error(moe._where(("%s: option '%s' must be %s, got %s"):format(self.class_name, k,
          range and range[2] or "a finite number", moe._show(v))), 0)
      end
    end
    self._config[k] = v
    rawset(self, k, v)
  end
  if opts.dtype ~= nil and opts.dtype ~= "float32" and opts.dtype ~= "float64" then
    error(moe._where(("%s: option 'dtype' must be \"float32\" or \"float64\", got %s"):format(self.class_name,
      moe._show(opts.dtype))), 0)
  end
  rawset(self, "dtype", opts.dtype or "float32")
  if opts.trainable == false then rawset(self, "trainable", false) end
end

function Module:add_module(name, m)
  if not is_module(m) then error(("add_module: '%s' is not a module"):format(tostring(name)), 2) end
  structure_version = structure_version + 1
  if rawget(self, name) == nil then self._children[#self._children + 1] = name end
  rawset(self, name, m)
  return m
end

-- moe.load sets a budget: the values the file's tensors hold; a weight beyond it
-- is refused before it is allocated (on_over(name, n, left) raises)
local weight_budget, budget_over
function nn.set_weight_budget(n, on_over) weight_budget, budget_over = n, on_over end

-- add_weight(name, shape, {initializer, regularizer, constraint, trainable, dtype})
function Module:add_weight(name, shape, opts)
  opts = opts or {}
  if weight_budget then
    local n = 1
    for _, d in ipairs(shape) do n = n * (type(d) == "number" and d or 0) end
    if n > weight_budget then budget_over(name, n, weight_budget) end
    weight_budget = weight_budget - n
  end
  local init = I.get(opts.initializer or "glorot_uniform", self.class_name)
  local w = init(shape, opts.dtype or self.dtype or "float32")
  local dev = rawget(self, "_device") -- a module moved before it was built builds there
  if dev and w:device() ~= dev then w = moe.no_grad(function() return w:detach():to(dev) end) end
  structure_version = structure_version + 1
  local trainable = opts.trainable ~= false and rawget(self, "trainable") ~= false
  if trainable then
    w.requires_grad = true
    self._params[#self._params + 1] = name
  else
    self._buffers[#self._buffers + 1] = name
  end
  rawset(self, name, w)
  if opts.regularizer then self._regularizers[name] = R.get(opts.regularizer, self.class_name) end
  if opts.constraint then constraint_of[w] = C.get(opts.constraint, self.class_name) end
  return w
end

-- replace a weight's tensor (dtype conversion, loading), keeping its registration
function Module:_replace_weight(name, t)
  structure_version = structure_version + 1
  local old = rawget(self, name)
  local trainable = old.requires_grad
  if trainable then t.requires_grad = true end
  constraint_of[t] = constraint_of[old]
  rawset(self, name, t)
end

function Module:children()
  local out = {}
  for _, k in ipairs(self._children) do out[#out + 1] = rawget(self, k) end
  return out
end

-- every (module path, module) in depth-first order, each module once (cached
-- until the structure changes; do not modify the returned list)
-- get_layer(name): the sub-layer of that name (Keras's Model.get_layer), or an error
function Module:get_layer(name)
  for _, e in ipairs(self:modules()) do
    if e[2] ~= self and e[2].name == name then return e[2] end
  end
  local names = {}
  for _, e in ipairs(self:modules()) do if e[2] ~= self then names[#names + 1] = e[2].name end end
  error(("get_layer: %s \"%s\" has no layer named '%s' (layers: %s)"):format(self.class_name, self.name,
    tostring(name), table.concat(names, ", ")), 2)
end

function Module:modules()
  local cache = rawget(self, "_modules_cache")
  if cache and cache.version == structure_version then return cache.list end
  local out, seen = {}, {}
  local function walk(m, path)
    if seen[m] then return end
    seen[m] = true
    out[#out + 1] = { path, m }
    for _, k in ipairs(m._children) do
      local c = rawget(m, k)
      walk(c, path == "" and c.name or (path .. "/" .. c.name))
    end
  end
  walk(self, "")
  rawset(self, "_modules_cache", { version = structure_version, list = out })
  return out
end

-- named weights in Keras's order: per module, trainable then non-trainable,
-- named weights, modules depth first, each tensor once; keys_of(m) lists the
-- weight names of module m in the order wanted
local function gather_named(self, keys_of)
  local names, ts, seen = {}, {}, {}
  for _, e in ipairs(self:modules()) do
    local path, m = e[1], e[2]
    for _, k in ipairs(keys_of(m)) do
      local t = rawget(m, k)
      if t and not seen[t] then
        seen[t] = true
        names[#names + 1] = path == "" and k or (path .. "/" .. k)
        ts[#ts + 1] = t
      end
    end
  end
  return names, ts
end

local function collect(self, want_params, want_buffers)
  return gather_named(self, function(m)
    if want_params and not want_buffers then return m._params end
    local list = {}
    if want_params then for _, k in ipairs(m._params) do list[#list + 1] = k end end
    if want_buffers then for _, k in ipairs(m._buffers) do list[#list + 1] = k end end
    return list
  end)
end

-- Keras's order: per layer, the weights as the layer created them (a layer may
-- set _weight_order), else trainable then non-trainable
local function own_order(m)
  local order = rawget(m, "_weight_order")
  if order then return order end
  local list = {}
  for _, k in ipairs(m._params) do list[#list + 1] = k end
  for _, k in ipairs(m._buffers) do list[#list + 1] = k end
  return list
end
local function weights_in_order(self) return gather_named(self, own_order) end

-- the list get_weights/set_weights use: weights_in_order, except that a layer
-- with a _keras_weights() method lists its whole subtree itself (names and
-- views onto its storage, in its reference layer's get_weights() order and
-- shapes), so weights port from Keras while the storage stays stacked
local function keras_weights(self)
  local names, ts, skip, seen = {}, {}, {}, {}
  for _, e in ipairs(self:modules()) do
    local path, m = e[1], e[2]
    if not skip[m] then
      local ks, vs = {}, {}
      if m._keras_weights then
        for _, d in ipairs(m:modules()) do if d[2] ~= m then skip[d[2]] = true end end
        ks, vs = m:_keras_weights()
      else
        for _, k in ipairs(own_order(m)) do
          local t = rawget(m, k)
          if t and not seen[t] then seen[t] = true; ks[#ks + 1] = k; vs[#vs + 1] = t end
        end
      end
      for i, k in ipairs(ks) do
        names[#names + 1] = path == "" and k or (path .. "/" .. k)
        ts[#ts + 1] = vs[i]
      end
    end
  end
  return names, ts
end
nn.keras_weights = keras_weights

-- Does this module still have to build weights it has not made yet? A layer
-- with its own build() does until it is built; containers override this.
function Module:_needs_build() return not self.built and self.build ~= Module.build end

local function check_built(self, fn)
  local first
  for _, e in ipairs(self:modules()) do
    if e[2]:_needs_build() and (first == nil or first == self) then first = e[2] end
  end
  if first then
    local which = first == self and "" or (" (its layer %s \"%s\" is not)"):format(first.class_name, first.name)
    error(("%s: %s \"%s\" is not built yet%s, so it has no parameters to list; build it first: call it on a batch "
      .. "(model(x)), or model:build{batch, features...}, or give the first layer input_shape"):format(fn,
      self.class_name, self.name, which), 3)
  end
end
nn.check_built = check_built

function Module:parameters()
  local cache = rawget(self, "_params_cache")
  if not (cache and cache.version == structure_version) then check_built(self, "parameters") end
  if cache and cache.version == structure_version then
    local copy = {}
    for i, t in ipairs(cache.list) do copy[i] = t end
    return copy
  end
  local _, ts = collect(self, true, false)
  rawset(self, "_params_cache", { version = structure_version, list = ts })
  local copy = {}
  for i, t in ipairs(ts) do copy[i] = t end
  return copy
end

-- iterator: for name, tensor in m:named_parameters() do ... end
function Module:named_parameters()
  check_built(self, "named_parameters")
  local names, ts = collect(self, true, false)
  local i = 0
  return function()
    i = i + 1
    if names[i] then return names[i], ts[i] end
  end
end

-- all weights (trainable and not), names and tensors, in Keras's order
function Module:named_weights() return weights_in_order(self) end

function Module:count_params()
  check_built(self, "count_params")
  return self:_count_params()
end

-- the same, for what is built so far (summary() shows unbuilt layers with 0)
function Module:_count_params()
  local _, ps = collect(self, true, false)
  local _, all = collect(self, true, true)
  -- (an expert-parallel layer's shards count whole: the model's size, not this rank's part)
  local shards = nn.expert_shards and nn.expert_shards(self) or {}
  local function size(p) return p:numel() * (shards[p] and shards[p].world or 1) end
  local n, t = 0, 0
  for _, p in ipairs(all) do n = n + size(p) end
  for _, p in ipairs(ps) do t = t + size(p) end
  return n, t
end

-- get_weights(): copies of every weight, Keras's order (Dense: kernel [in,out], bias).
-- Expert-parallel weights come whole: each rank's slice gathered (so every rank
-- must call it, as every rank runs the layer), the list a 1-rank model gives.
function Module:get_weights()
  local _, ts = keras_weights(self)
  local out = {}
  for i, t in ipairs(ts) do
    out[i] = nn.shard_of[t] and moe.distributed.all_gather(t:detach():contiguous()) or t:detach():clone()
  end
  return out
end

-- the shape a weight has in a 1-rank model (an expert shard's first size times the world)
local function full_shape(t)
  local s, ep = t:shape(), nn.shard_of[t]
  if ep then s[1] = s[1] * ep.world end
  return s
end

function Module:set_weights(list)
  local names, ts = keras_weights(self)
  if type(list) ~= "table" or #list ~= #ts then
    error(("set_weights: %s \"%s\" has %d weights, got a list of %s"):format(self.class_name, self.name,
      #ts, type(list) == "table" and tostring(#list) or type(list)), 2)
  end
  for i, t in ipairs(ts) do
    local w = list[i]
    if not core.is_tensor(w) then w = moe.tensor(w) end
    local a, b = full_shape(t), w:shape()
    local same = #a == #b
    for d = 1, #a do same = same and a[d] == b[d] end
    if not same then
      error(("set_weights: weight %d (%s) has shape %s, got %s"):format(i, names[i], shape_str(a), shape_str(b)), 2)
    end
  end
  -- (an expert-parallel weight takes the whole layer's tensor and keeps this rank's slice)
  moe.no_grad(function()
    for i, t in ipairs(ts) do
      local w, ep = list[i], nn.shard_of[t]
      if not core.is_tensor(w) then w = moe.tensor(w) end
      t:copy_(ep and w:narrow(1, ep.lo, ep.n) or w)
    end
  end)
end

function Module:zero_grad()
  local cache = rawget(self, "_params_cache")
  if not (cache and cache.version == structure_version) then
    if pcall(check_built, self, "zero_grad") then
      self:parameters() -- fills the cache (train_on_batch reads it)
    else -- before the first call (PyTorch's loop starts with zero_grad): the weights made so far
      local _, ps = collect(self, true, false)
      for _, p in ipairs(ps) do p.grad = nil end
      return
    end
  end
  for _, p in ipairs(self._params_cache.list) do p.grad = nil end
end

local function set_mode(self, on)
  for _, e in ipairs(self:modules()) do rawset(e[2], "_training", on) end
  return self
end
-- the mode switch, as Torch7 and PyTorch: train() (or train(false)) and eval();
-- evaluate{x = ..., y = ...} is Keras-style evaluation (lua/moe/trainer.lua)
function Module:train(on)
  if on ~= nil and type(on) ~= "boolean" then
    error(moe._where(("train: expected a boolean (or nothing), got %s; fit{...} trains on data"):format(moe._show(on))), 0)
  end
  return set_mode(self, on ~= false)
end
function Module:eval() return set_mode(self, false) end
function Module:is_training() return self._training end

-- replace(m, name, t) -> new tensor or nil, for every weight and buffer of every module
local function each_weight(self, replace)
  for _, e in ipairs(self:modules()) do
    local m = e[2]
    for _, list in ipairs { m._params, m._buffers } do
      for _, k in ipairs(list) do
        local t = rawget(m, k)
        local new = t and replace(m, t)
        if new then m:_replace_weight(k, new) end
      end
    end
  end
  return self
end

-- cuda() / cpu(): every weight and buffer moved to that device; weights a
-- module builds later (on its first call) are made there too
local function move(self, dev)
  for _, e in ipairs(self:modules()) do rawset(e[2], "_device", dev) end
  return moe.no_grad(function()
    return each_weight(self, function(_, t) return t:device() ~= dev and t:detach():to(dev) or nil end)
  end)
end

-- to(dtype) converts every weight ("float64" for gradchecks); to("cuda" | "cpu") moves them
function Module:to(what)
  if what == "cuda" or what == "cpu" then return move(self, what) end
  if what ~= "float32" and what ~= "float64" then
    error(("to: %s \"%s\": a module converts to \"float32\", \"float64\", \"cuda\" or \"cpu\", got %s")
      :format(self.class_name, self.name, moe._show(what)), 2)
  end
  for _, e in ipairs(self:modules()) do rawset(e[2], "dtype", what); rawset(e[2], "_dtype_explicit", true) end
  return each_weight(self, function(_, t) return t:dtype() ~= what and t:detach():to(what) or nil end)
end
function Module:double() return self:to("float64") end
function Module:cuda() return move(self, "cuda") end
-- the device of the module's weights (the default device before they are built)
function Module:device()
  for _, e in ipairs(self:modules()) do
    local m = e[2]
    for _, list in ipairs { m._params, m._buffers } do
      for _, k in ipairs(list) do
        local t = rawget(m, k)
        if t then return t:device() end
      end
    end
  end
  return rawget(self, "_device") or moe.get_default_device()
end
function Module:cpu() return move(self, "cpu") end
function Module:float() return self:to("float32") end

-- ------------------------------------------------------------------ calls

local call_depth, call_epoch = 0, 0

function Module:add_loss(t)
  if not core.is_tensor(t) then error(("add_loss: %s \"%s\": expected a tensor, got %s"):format(self.class_name, self.name, moe._show(t)), 2) end
  self._losses[#self._losses + 1] = t
end

function Module:add_metric(name, value)
  if type(name) ~= "string" then error("add_metric: the metric needs a name", 2) end
  if not (type(value) == "number" or core.is_tensor(value)) then
    error(("add_metric: %s \"%s\": metric '%s' must be a number or a tensor, got %s"):format(self.class_name,
      self.name, name, moe._show(value)), 2)
  end
  self._metrics[name] = value
end

-- the auxiliary losses of the last forward pass (this module and its children)
-- and the weight-regularization penalties, as Keras's `model.losses`
function Module:losses()
  local out = {}
  for _, e in ipairs(self:modules()) do
    local m = e[2]
    for _, l in ipairs(m._losses) do out[#out + 1] = l end
    for _, k in ipairs(m._params) do
      local r = m._regularizers[k]
      if r then out[#out + 1] = r(rawget(m, k)) end
    end
  end
  return out
end

-- name -> value of the metrics added in the last forward pass
function Module:metrics()
  local out = {}
  for _, e in ipairs(self:modules()) do
    for k, v in pairs(e[2]._metrics) do
      out[k] = core.is_tensor(v) and v:item() or v
    end
  end
  return out
end

local function shapes_of(v)
  if core.is_tensor(v) then return v:shape() end
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do out[k] = shapes_of(x) end
    return out
  end
  return nil
end
nn.shapes_of = shapes_of

function Module:build(input_shape) end

-- same input shape, the batch dims (first entries) aside
local function same_build_shape(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  local numeric = type(a[1]) == "number" or type(a[2]) == "number"
  for k, v in pairs(a) do if not (numeric and k == 1) and not same_build_shape(v, b[k]) then return false end end
  for k in pairs(b) do if not (numeric and k == 1) and a[k] == nil then return false end end
  return true
end

function nn.wrap_build(fn)
  return function(self, shape, ...)
    -- a subclass's build calling its parent's (Keras's super().build(shape)) runs it
    if rawget(self, "_building") then return fn(self, shape, ...) end
    if rawget(self, "built") then
      local had = rawget(self, "_build_input_shape")
      if had ~= nil and shape ~= nil and not same_build_shape(had, shape) then
        error(("build: %s \"%s\" is already built for input shape %s, not %s"):format(self.class_name, self.name,
          shape_str(type(had[1]) == "number" and had or {}), shape_str(type(shape[1]) == "number" and shape or {})), 2)
      end
      return
    end
    -- marked first: a container's build may run a pass through itself
    rawset(self, "built", true)
    rawset(self, "_build_input_shape", shape)
    rawset(self, "_building", true)
    local ok, err = pcall(fn, self, shape, ...)
    rawset(self, "_building", nil)
    if not ok then
      rawset(self, "built", false)
      rawset(self, "_build_input_shape", nil)
      error(err, 0)
    end
  end
end

-- inside a layer call (a build there leaves the layer's children to their own first call)
function nn.in_call() return call_depth > 0 end

local is_tensor, dtype_of = core.is_tensor, core.dtype

local function float_dtype(v)
  if is_tensor(v) then
    local d = dtype_of(v)
    if d == "float32" or d == "float64" then return d end
  end
end

-- the dtype a lazily built layer takes: its dtype option, else its first float input's
local function first_float_dtype(x, ...)
  local d = float_dtype(x)
  if d then return d end
  local n = select("#", ...)
  if n == 0 and is_tensor(x) then return nil end -- the common case: one tensor, not a float one
  for i = 0, n do
    local v = i == 0 and x or select(i, ...)
    d = float_dtype(v)
    if d then return d end
    if type(v) == "table" and not is_tensor(v) then
      for _, e in ipairs(v) do
        d = float_dtype(e)
        if d then return d end
      end
    end
  end
end

-- Keras's autocast: float inputs of another float dtype are cast to the layer's
local function autocast1(v, dt)
  if core.is_tensor(v) then
    local d = v:dtype()
    if d ~= dt and (d == "float32" or d == "float64") then return v:to(dt) end
    return v
  end
  if type(v) == "table" and not getmetatable(v) then
    local out
    for i, x in ipairs(v) do
      local c = autocast1(x, dt)
      if c ~= x then out = out or { unpack(v) }; out[i] = c end
    end
    return out or v
  end
  return v
end
local function autocast(dt, ...)
  local n = select("#", ...)
  if n == 1 then return autocast1((...), dt) end
  local args = { ... }
  for i = 1, n do args[i] = autocast1(args[i], dt) end
  return unpack(args, 1, n)
end

function Module:forward(...)
  if self.call then return self:call(...) end
  error(("%s \"%s\": forward is not defined"):format(self.class_name, self.name), 2)
end

-- the body of a call (no closure is made per call: pcall takes this function)
local function forward_body(self, ...)
  if not self.built then
    local shape = shapes_of((...))
    self:build(shape)
    rawset(self, "built", true)
    rawset(self, "_build_input_shape", shape)
  end
  return self:forward(...)
end

local function call_body(self, ...)
  local y
  local d = not self._no_autocast and first_float_dtype(...)
  if not self.built and d and not rawget(self, "_dtype_explicit") then rawset(self, "dtype", d) end
  local dt = self.dtype
  if d and d ~= dt and (dt == "float32" or dt == "float64")
     and (rawget(self, "_dtype_explicit") or #self._params + #self._buffers + #self._children > 0) then
    -- (a layer without weights of its own, such as Activation, takes any float input as it is)
    y = forward_body(self, autocast(dt, ...))
  else
    y = forward_body(self, ...)
  end
  local ar = rawget(self, "_activity_regularizer")
  if ar and core.is_tensor(y) then self:add_loss(ar(y)) end
  return y
end

local function call_done(self, ok, out)
  call_depth = call_depth - 1
  if not ok then error(call_depth == 0 and type(out) == "string" and moe._where(out) or out, 0) end
  -- output shapes for summary(): recorded once (the batch dim prints as None)
  if not rawget(self, "_output_shape") then rawset(self, "_output_shape", shapes_of(out)) end
  return out
end

function Module:__call__(...)
  local first = ...
  if type(first) == "table" and (first.__symbolic or (not core.is_tensor(first) and contains_symbolic(first)))
    or (select("#", ...) > 1 and contains_symbolic({ ... })) then
    return require("moe.model").symbolic_call(self, ...)
  end
  if call_depth == 0 then call_epoch = call_epoch + 1 end
  if rawget(self, "_epoch") ~= call_epoch then
    rawset(self, "_epoch", call_epoch)
    if #self._losses > 0 then rawset(self, "_losses", {}) end
    if next(self._metrics) then rawset(self, "_metrics", {}) end
  end
  call_depth = call_depth + 1
  return call_done(self, pcall(call_body, self, ...))
end

function Module:output_shape() return rawget(self, "_output_shape") end

-- call a child and name it in any error (containers use this)
local function child_done(parent, index, child, ok, ...)
  if not ok then
    error(("in layer %s (%s \"%s\") of %s \"%s\": %s"):format(tostring(index), child.class_name, child.name,
      parent.class_name, parent.name, bare((...))), 0)
  end
  return ...
end
function nn.call_child(parent, index, child, ...)
  return child_done(parent, index, child, pcall(child.__call__, child, ...))
end

-- ------------------------------------------------------------------ config and summary

local function serializable(v, where)
  local tv = type(v)
  if tv == "function" then
    error(("get_config: %s holds a Lua function, which a checkpoint cannot store (files hold data, not code)")
      :format(where), 3)
  end
  if tv == "table" and getmetatable(v) and getmetatable(v).class_name then return v:get_config() end
  if tv == "table" then
    local out = {}
    for k, x in pairs(v) do out[k] = serializable(x, where) end
    return out
  end
  return v
end

function Module:get_config()
  local c = { name = self.name }
  for k, v in pairs(self._config) do c[k] = serializable(v, ("%s \"%s\" option '%s'"):format(self.class_name, self.name, k)) end
  if self.dtype and self.dtype ~= "float32" then c.dtype = self.dtype end
  if rawget(self, "trainable") == false then c.trainable = false end
  return c
end

-- summary(): a table of layers, output shapes and parameter counts, with totals.
-- Prints it (or passes it to opts.print_fn), as Keras's returns nothing (so the
-- REPL shows it once); print_fn = false returns the string instead.
local function commas(n)
  local s = tostring(math.floor(n))
  while true do
    local r, k = s:gsub("^(-?%d+)(%d%d%d)", "%1,%2")
    s = r
    if k == 0 then break end
  end
  return s
end

local function out_shape_str(s)
  if s == nil then return "?" end
  if type(s[1]) == "number" or #s == 0 and next(s) == nil then
    local b = {}
    for i, d in ipairs(s) do b[i] = d end
    if #b > 0 then b[1] = -1 end
    return shape_str(b)
  end
  local parts = {}
  local keys = {}
  for k in pairs(s) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    parts[#parts + 1] = (type(k) == "string" and (k .. ": ") or "") .. out_shape_str(s[k])
  end
  return "[" .. table.concat(parts, ", ") .. "]"
end
nn.out_shape_str = out_shape_str

function Module:summary_rows()
  local rows = {}
  for _, c in ipairs(self:children()) do
    local total = c:_count_params()
    rows[#rows + 1] = { ("%s (%s)"):format(c.name, c.class_name), out_shape_str(c:output_shape()), total }
  end
  return rows
end

function Module:summary(opts)
  opts = opts or {}
  if not self.built and #self:children() == 0 then
    error(("summary: %s \"%s\" is not built yet; call it on data (or give an input shape) first")
      :format(self.class_name, self.name), 2)
  end
  local rows = self:summary_rows()
  local w1, w2 = 28, 24
  for _, r in ipairs(rows) do
    w1 = math.max(w1, #r[1] + 2)
    w2 = math.max(w2, #r[2] + 2)
  end
  local line = string.rep("-", w1 + w2 + 12)
  local out = { ("Model: \"%s\""):format(self.name), line,
    ("%-" .. w1 .. "s%-" .. w2 .. "s%12s"):format("Layer (type)", "Output Shape", "Param #"), line }
  for _, r in ipairs(rows) do
    out[#out + 1] = ("%-" .. w1 .. "s%-" .. w2 .. "s%12s"):format(r[1], r[2], commas(r[3]))
  end
  local total, trainable = self:_count_params()
  out[#out + 1] = line
  out[#out + 1] = "Total params: " .. commas(total)
  out[#out + 1] = "Trainable params: " .. commas(trainable)
  out[#out + 1] = "Non-trainable params: " .. commas(total - trainable)
  out[#out + 1] = line
  local s = table.concat(out, "\n")
  if opts.print_fn == false then return s end
  local pf = opts.print_fn or print
  pf(s)
end

-- ------------------------------------------------------------------ activations

local act = {}
nn.activations = act
act.linear = function(x) return x end
act.relu = function(x) return x:relu() end
act.sigmoid = function(x) return x:sigmoid() end
act.tanh = function(x) return x:tanh() end
act.softmax = function(x) return x:softmax(-1) end
act.log_softmax = function(x) return x:log_softmax(-1) end
act.gelu = function(x) return x:gelu() end
act.softplus = function(x) return x:softplus() end
act.softsign = function(x) return x / (x:abs() + 1) end
act.swish = function(x) return x * x:sigmoid() end
act.silu = act.swish
act.exponential = function(x) return x:exp() end
act.elu = function(x) return moe.where(x:gt(0), x, x:expm1()) end
act.selu = function(x)
  local a, s = 1.6732632423543772, 1.0507009873554805
  return moe.where(x:gt(0), x, x:expm1() * a) * s
end
act.leaky_relu = function(x) return moe.where(x:gt(0), x, x * 0.2) end
act.relu6 = function(x) return x:clamp(0, 6) end
act.hard_sigmoid = function(x) return (x / 6 + 0.5):clamp(0, 1) end

function nn.get_activation(spec, where)
  if spec == nil or spec == false then return act.linear end
  if type(spec) == "function" then return spec end
  local f = act[spec]
  if not f then
    local names = {}
    for k in pairs(act) do names[#names + 1] = k end
    table.sort(names)
    error(("%s: unknown activation '%s' (known: %s)"):format(where or "activation", tostring(spec),
      table.concat(names, ", ")), 3)
  end
  return f
end

-- ------------------------------------------------------------------ layers

local function positive_int(self, k)
  local v = self[k]
  if type(v) ~= "number" or v < 1 or v ~= math.floor(v) then
    error(("%s: %s must be a positive integer, got %s"):format(self.class_name, k, moe._show(v)), 4)
  end
end
nn.positive_int = positive_int

local function last_dim(self, shape)
  if type(shape) ~= "table" or type(shape[1]) ~= "number" or #shape < 1 then
    error(("%s \"%s\": expected one tensor input"):format(self.class_name, self.name), 4)
  end
  return shape[#shape]
end

local function regularizer_setup(self)
  if self.activity_regularizer then
    rawset(self, "_activity_regularizer", R.get(self.activity_regularizer, self.class_name))
  end
end

-- Dense: y = activation(x W + b), W [in, units]
local Dense = class("Dense", Module)
nn.Dense = Dense
function Dense:init(opts)
  Module.init(self, opts)
  self:_options(opts, { units = REQUIRED, activation = false, use_bias = true,
    kernel_initializer = "glorot_uniform", bias_initializer = "zeros",
    kernel_regularizer = false, bias_regularizer = false, activity_regularizer = false,
    kernel_constraint = false, bias_constraint = false })
  positive_int(self, "units")
  rawset(self, "_act", nn.get_activation(self.activation, "Dense"))
  -- relu, sigmoid and tanh run inside the linear op (one node, applied in place)
  local FUSED = { relu = true, sigmoid = true, tanh = true }
  rawset(self, "_fused_act", type(self.activation) == "string" and FUSED[self.activation] and self.activation or nil)
  regularizer_setup(self)
  -- fail early on bad names
  I.get(self.kernel_initializer, "Dense"); I.get(self.bias_initializer, "Dense")
  R.get(self.kernel_regularizer, "Dense"); R.get(self.bias_regularizer, "Dense")
  C.get(self.kernel_constraint, "Dense"); C.get(self.bias_constraint, "Dense")
end
function Dense:build(shape)
  local fin = last_dim(self, shape)
  self:add_weight("kernel", { fin, self.units }, { initializer = self.kernel_initializer,
    regularizer = self.kernel_regularizer, constraint = self.kernel_constraint })
  if self.use_bias then
    self:add_weight("bias", { self.units }, { initializer = self.bias_initializer,
      regularizer = self.bias_regularizer, constraint = self.bias_constraint })
  end
end
function Dense:forward(x)
  local k = self.kernel
  local n = x:size(-1)
  if n ~= k:size(1) then
    error(("Dense \"%s\": input has %d features (shape %s) but the layer was built for %d")
      :format(self.name, n, shape_str(x:shape()), k:size(1)), 0)
  end
  local fa = self._fused_act
  if fa then return moe.linear(x, k, self.use_bias and self.bias or nil, fa) end
  return self._act(moe.linear(x, k, self.use_bias and self.bias or nil))
end

local Activation = class("Activation", Module)
nn.Activation = Activation
function Activation:init(opts)
  if type(opts) == "string" then opts = { activation = opts } end
  Module.init(self, opts)
  self:_options(opts, { activation = REQUIRED })
  rawset(self, "_act", nn.get_activation(self.activation, "Activation"))
end
function Activation:forward(x) return self._act(x) end

-- Dropout: zero each element with probability rate in training, scale the rest by 1/(1-rate)
local Dropout = class("Dropout", Module)
nn.Dropout = Dropout
function Dropout:init(opts)
  if type(opts) == "number" then opts = { rate = opts } end
  Module.init(self, opts)
  self:_options(opts, { rate = REQUIRED, seed = false, noise_shape = false })
  if type(self.rate) ~= "number" or not (self.rate >= 0 and self.rate < 1) then
    error(("Dropout: rate must be in [0, 1), got %s"):format(moe._show(self.rate)), 3)
  end
end
-- inverted dropout of x (mask of noise_shape, default x's shape); identity unless training
function nn.dropout(x, rate, training, noise_shape)
  if not training or rate == 0 then return x end
  local keep = moe.rand(noise_shape or x:shape(), { dtype = x:dtype(), device = x:device() }):ge(rate)
  return x * keep:to(x:dtype()) * (1 / (1 - rate))
end
function Dropout:forward(x) return nn.dropout(x, self.rate, self._training, self.noise_shape) end

local function norm_axis(self, shape)
  local n = #shape
  local a = self.axis < 0 and n + 1 + self.axis or self.axis
  if a < 1 or a > n then
    error(("%s \"%s\": axis %d out of range for input shape %s"):format(self.class_name, self.name, self.axis,
      shape_str(shape)), 0)
  end
  return a
end

-- reduce over every dim but `axis`, as a bit list for sum/mean
local function other_dims(n, axis)
  local dims = {}
  for d = 1, n do if d ~= axis then dims[#dims + 1] = d end end
  return dims
end

-- weight shaped to broadcast along `axis` of an n-d input
local function along(w, n, axis)
  local shape = {}
  for d = 1, n do shape[d] = d == axis and w:size(1) or 1 end
  return w:view(shape)
end

-- gamma [F] and beta [F] of the normalization layers, in Keras's order
local function build_affine(self, f)
  rawset(self, "_weight_order", {})
  if self.scale then
    self:add_weight("gamma", { f }, { initializer = self.gamma_initializer, regularizer = self.gamma_regularizer,
      constraint = self.gamma_constraint })
    table.insert(self._weight_order, "gamma")
  end
  if self.center then
    self:add_weight("beta", { f }, { initializer = self.beta_initializer, regularizer = self.beta_regularizer,
      constraint = self.beta_constraint })
    table.insert(self._weight_order, "beta")
  end
end

-- (x - mean) / sqrt(var + epsilon), then * gamma + beta along axis a
local function normalize(self, x, mean, var, n, a)
  local y = (x - mean) / (var + self.epsilon):sqrt()
  if self.scale then y = y * along(self.gamma, n, a) end
  if self.center then y = y + along(self.beta, n, a) end
  return y
end

-- BatchNormalization (Keras semantics): batch statistics in training, with
-- moving = moving * momentum + batch * (1 - momentum); moving statistics in evaluation.
-- PyTorch's BatchNorm1d is momentum = 0.9 (its 0.1 is our 1 - momentum), epsilon = 1e-5 and
-- unbiased_moving_variance = true: it normalises with the biased batch variance but
-- moves the running variance towards the unbiased one (times n / (n - 1))
local BatchNormalization = class("BatchNormalization", Module)
nn.BatchNormalization = BatchNormalization
function BatchNormalization:init(opts)
  Module.init(self, opts)
  self:_options(opts, { axis = -1, momentum = 0.99, epsilon = 1e-3, center = true, scale = true,
    beta_initializer = "zeros", gamma_initializer = "ones", moving_mean_initializer = "zeros",
    moving_variance_initializer = "ones", beta_regularizer = false, gamma_regularizer = false,
    beta_constraint = false, gamma_constraint = false, unbiased_moving_variance = false })
end
function BatchNormalization:build(shape)
  local f = shape[norm_axis(self, shape)]
  build_affine(self, f)
  local order = self._weight_order
  self:add_weight("moving_mean", { f }, { initializer = self.moving_mean_initializer, trainable = false })
  self:add_weight("moving_variance", { f }, { initializer = self.moving_variance_initializer, trainable = false })
  order[#order + 1] = "moving_mean"; order[#order + 1] = "moving_variance"
end
function BatchNormalization:forward(x)
  local n = x:dim()
  local a = norm_axis(self, x:shape())
  local mean, var
  if self._training then
    local dims = other_dims(n, a)
    mean = x:mean(dims, { keepdim = true })
    var = (x - mean):square():mean(dims, { keepdim = true })
    moe.no_grad(function()
      local m = self.momentum
      local bessel = 1
      if self.unbiased_moving_variance then
        local count = x:numel() / x:size(a)
        if count > 1 then bessel = count / (count - 1) end
      end
      self.moving_mean:mul_(m):add_(mean:detach():reshape(-1) * (1 - m))
      self.moving_variance:mul_(m):add_(var:detach():reshape(-1) * ((1 - m) * bessel))
    end)
  else
    mean = along(self.moving_mean, n, a)
    var = along(self.moving_variance, n, a)
  end
  return normalize(self, x, mean, var, n, a)
end

-- LayerNormalization over the last axis (Keras's default), gamma and beta [F]
local LayerNormalization = class("LayerNormalization", Module)
nn.LayerNormalization = LayerNormalization
function LayerNormalization:init(opts)
  Module.init(self, opts)
  self:_options(opts, { axis = -1, epsilon = 1e-3, center = true, scale = true,
    beta_initializer = "zeros", gamma_initializer = "ones", beta_regularizer = false,
    gamma_regularizer = false, beta_constraint = false, gamma_constraint = false })
end
function LayerNormalization:build(shape) build_affine(self, shape[norm_axis(self, shape)]) end
function LayerNormalization:forward(x)
  local n = x:dim()
  local a = norm_axis(self, x:shape())
  local mean = x:mean(a, { keepdim = true })
  local var = (x - mean):square():mean(a, { keepdim = true })
  return normalize(self, x, mean, var, n, a)
end

-- Embedding: integer ids (1-based) [..] -> vectors [.., output_dim]
local Embedding = class("Embedding", Module)
nn.Embedding = Embedding
function Embedding:init(opts)
  Module.init(self, opts)
  self:_options(opts, { input_dim = REQUIRED, output_dim = REQUIRED, embeddings_initializer = "random_uniform",
    embeddings_regularizer = false, embeddings_constraint = false, activity_regularizer = false })
  positive_int(self, "input_dim")
  positive_int(self, "output_dim")
  regularizer_setup(self)
end
function Embedding:build()
  self:add_weight("embeddings", { self.input_dim, self.output_dim }, { initializer = self.embeddings_initializer,
    regularizer = self.embeddings_regularizer, constraint = self.embeddings_constraint })
end
Embedding._input_dtype = "int64" -- what a placeholder pass feeds it (ids are 1-based: ones)

function Embedding:forward(ids)
  local dt = ids:dtype()
  if dt:match("^float") or dt == "bool" then
    error(("Embedding \"%s\": ids must be an integer tensor, got %s"):format(self.name, dt), 0)
  end
  local shape = ids:shape()
  local ok, rows = pcall(self.embeddings.index_select, self.embeddings, 1, ids:reshape(-1))
  if not ok then -- name the layer and its range (ids are 1-based) rather than index_select
    local msg = tostring(rows):gsub("^[^\n]-:%d+: ", "", 1)
    error(("Embedding \"%s\": ids must be in 1..%d (1-based): %s"):format(self.name, self.input_dim, msg), 0)
  end
  shape[#shape + 1] = self.output_dim
  return rows:reshape(shape)
end

-- merging layers: called on a list of tensors
local function list_input(self, xs, min)
  if core.is_tensor(xs) or type(xs) ~= "table" or #xs < min then
    error(("%s \"%s\": expected a list of at least %d tensors"):format(self.class_name, self.name, min), 0)
  end
end

local Concatenate = class("Concatenate", Module)
nn.Concatenate = Concatenate
function Concatenate:init(opts)
  Module.init(self, opts)
  self:_options(opts, { axis = -1 })
end
function Concatenate:forward(xs)
  list_input(self, xs, 1)
  local n = xs[1]:dim()
  local a = self.axis < 0 and n + 1 + self.axis or self.axis
  return moe.cat(xs, a)
end

local function merge(name, op)
  local cls = class(name, Module)
  nn[name] = cls
  function cls:init(opts)
    Module.init(self, opts)
    self:_options(opts, {})
  end
  function cls:forward(xs)
    list_input(self, xs, 2)
    local y = xs[1]
    for i = 2, #xs do y = op(y, xs[i]) end
    return y
  end
  return cls
end
merge("Add", function(a, b) return a + b end)
merge("Multiply", function(a, b) return a * b end)
merge("Subtract", function(a, b) return a - b end)
merge("Average", function(a, b) return a + b end)
function nn.Average:forward(xs)
  list_input(self, xs, 2)
  local y = xs[1]
  for i = 2, #xs do y = y + xs[i] end
  return y / #xs
end
merge("Maximum", function(a, b) return a:maximum(b) end)
merge("Minimum", function(a, b) return a:minimum(b) end)

-- Lambda{fn}: any function of the inputs. Its function is not stored in
-- checkpoints: moe.load takes it back through custom_objects[function_name].
local Lambda = class("Lambda", Module)
nn.Lambda = Lambda
function Lambda:init(opts)
  if type(opts) == "function" then opts = { fn = opts } end
  Module.init(self, opts)
  if type(opts.fn) ~= "function" then error("Lambda: option 'fn' (a function) is required", 3) end
  rawset(self, "fn", opts.fn)
  rawset(self, "function_name", opts.function_name or self.name)
  for k in pairs(opts) do
    if k ~= "fn" and k ~= "function_name" and k ~= "name" then
      error(("Lambda: unknown option '%s' (options: fn, function_name)"):format(tostring(k)), 3)
    end
  end
end
function Lambda:forward(...) return self.fn(...) end
function Lambda:get_config() return { name = self.name, function_name = self.function_name } end

local Flatten = class("Flatten", Module)
nn.Flatten = Flatten
function Flatten:init(opts) Module.init(self, opts); self:_options(opts, {}) end
function Flatten:forward(x) return x:reshape(x:size(1), -1) end

local Reshape = class("Reshape", Module)
nn.Reshape = Reshape
function Reshape:init(opts)
  Module.init(self, opts)
  self:_options(opts, { target_shape = REQUIRED })
end
function Reshape:forward(x)
  local s = { x:size(1) }
  for _, d in ipairs(self.target_shape) do s[#s + 1] = d end
  return x:reshape(s)
end

-- Sequential, Model, compile/train_on_batch/predict and save live in moe.model,
-- which needs this module first
-- (whichever of them a script requires first loads this module, which then loads
-- the rest; the one being loaded is skipped, so they load in any order)
package.loaded["moe.nn"] = nn
for _, m in ipairs { "moe.model", "moe.trainer", "moe.mixtures", "moe.sparse" } do
  if package.loaded[m] == nil then require(m) end
end

return nn
