-- moe.model: Sequential, the functional API (Input, Model), and checkpoints.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core
local nn = require "moe.nn"
local mio = require "moe.io"
local cjson = require "cjson.safe"

local M = {}
local Module = nn.Module
local is_symbolic, is_module = nn.is_symbolic, nn.is_module

-- ------------------------------------------------------------------ symbolic tensors

local Symbolic = {}
Symbolic.__index = Symbolic
Symbolic.__tostring = function(s)
  return ("<symbolic %s %s from %s>"):format(s.dtype, nn.shape_str(s.shape), s.node.layer and s.node.layer.name or s.node.name)
end
local function sym_error() error("symbolic tensors (from moe.Input) only flow through layers: use nn.Add, nn.Multiply, nn.Lambda ...", 2) end
for _, mm in ipairs { "__add", "__sub", "__mul", "__div", "__unm", "__pow" } do Symbolic[mm] = sym_error end

local node_count = 0
local function new_node(fields)
  node_count = node_count + 1
  fields.id = node_count
  return fields
end

local function symbolic(value, node, path)
  local shape = value:shape()
  if #shape > 0 then shape[1] = -1 end
  return setmetatable({ __symbolic = true, value = value, node = node, path = path, shape = shape,
    dtype = value:dtype() }, Symbolic)
end
function Symbolic:size(d) return self.shape[d] end
function Symbolic:dim() return #self.shape end

local DUMMY_BATCH = 2

-- Input{shape = {...}, name, dtype}: the batch dim is implied
function M.Input(opts)
  opts = opts or {}
  if type(opts.shape) ~= "table" then error("Input: option 'shape' (a table of sizes, without the batch dim) is required", 2) end
  local shape = { DUMMY_BATCH }
  for i, d in ipairs(opts.shape) do
    if type(d) ~= "number" or d < 0 or d ~= math.floor(d) then
      error(("Input: size %d of the shape is %s; sizes must be non-negative integers"):format(i, tostring(d)), 2)
    end
    shape[#shape + 1] = d
  end
  local dtype = opts.dtype or "float32"
  local value = dtype:match("^float") and moe.zeros(shape, { dtype = dtype }) or moe.ones(shape, { dtype = dtype })
  local node = new_node { input = true, name = opts.name or ("input_" .. (node_count + 1)), dtype = dtype,
    shape = opts.shape }
  local s = symbolic(value, node, {})
  node.outputs = s
  return s
end

local function map(v, fn)
  if is_symbolic(v) or core.is_tensor(v) then return fn(v) end
  if type(v) == "table" and not is_module(v) then
    local out = {}
    for k, x in pairs(v) do out[k] = map(x, fn) end
    return out
  end
  return v
end

-- the wrapped outputs of a node: every tensor in `out` becomes a symbolic tensor
local function wrap(out, node, path)
  if core.is_tensor(out) then return symbolic(out, node, path) end
  if type(out) == "table" then
    local res = {}
    for k, x in pairs(out) do
      local p = {}
      for i, v in ipairs(path) do p[i] = v end
      p[#p + 1] = k
      res[k] = wrap(x, node, p)
    end
    return res
  end
  return out
end

-- a layer called on symbolic tensors: run it once on the placeholder values
-- (evaluation mode, no grad) to build its weights and learn its output shapes
function M.symbolic_call(layer, ...)
  local args = { ... }
  local n = select("#", ...)
  local values = map(args, function(s) return is_symbolic(s) and s.value or s end)
  local modes = {}
  for _, e in ipairs(layer:modules()) do modes[e[2]] = e[2]._training end
  layer:eval()
  local ok, out = pcall(function() return moe.no_grad(layer.__call__, layer, unpack(values, 1, n)) end)
  for m, flag in pairs(modes) do rawset(m, "_training", flag) end
  for _, e in ipairs(layer:modules()) do rawset(e[2], "_losses", {}); rawset(e[2], "_metrics", {}) end
  if not ok then
    error(("%s \"%s\": %s"):format(layer.class_name, layer.name, tostring(out):gsub("^[^\n]-%.lua:%d+: ", "")), 0)
  end
  local node = new_node { layer = layer, args = args, nargs = n }
  node.outputs = wrap(out, node, {})
  return node.outputs
end

-- ------------------------------------------------------------------ Sequential

local Sequential = nn.class("Sequential", Module)
M.Sequential = Sequential
nn.Sequential = Sequential
-- containers pass their inputs on as they are: their layers cast to their own dtypes
Sequential._no_autocast = true

function Sequential:init(opts)
  Module.init(self, opts)
  rawset(self, "_config", {})
  local input_shape = opts.input_shape
  for i, l in ipairs(opts) do
    if is_symbolic(l) then
      if i ~= 1 then error("Sequential: a moe.Input may only come first", 3) end
      input_shape = {}
      for d = 2, #l.shape do input_shape[#input_shape + 1] = l.shape[d] end
    elseif is_module(l) then
      self:add(l)
    else
      error(("Sequential: element %d is a %s, not a layer"):format(i, type(l)), 3)
    end
  end
  for k in pairs(opts) do
    if type(k) ~= "number" and k ~= "name" and k ~= "input_shape" then
      error(("Sequential: unknown option '%s' (name, input_shape)"):format(tostring(k)), 3)
    end
  end
  if input_shape then self:build_for(input_shape) end
end

function Sequential:add(layer)
  if not is_module(layer) then error(("Sequential.add: expected a layer, got %s"):format(moe._show(layer)), 2) end
  for _, k in ipairs(self._children) do
    if rawget(self, k) == layer then error(("Sequential.add: layer \"%s\" is already in the model"):format(layer.name), 2) end
  end
  local key = layer.name
  if rawget(self, key) ~= nil then error(("Sequential.add: a layer named \"%s\" is already in the model"):format(key), 2) end
  self:add_module(key, layer)
  return self
end

-- build m by one pass over a placeholder batch of `shape` (zeros in m's float
-- dtype, or ones of the dtype `fed` takes: an Embedding's ids), in evaluation
-- mode and without recording; modes, losses and metrics are left as they were
function M.build_on_placeholder(m, shape, fed)
  local idt = fed and fed._input_dtype
  local placeholder = idt and moe.ones(shape, { dtype = idt }) or moe.zeros(shape, { dtype = m.dtype or "float32" })
  local modes = {}
  for _, e in ipairs(m:modules()) do modes[e[2]] = e[2]._training end
  m:eval()
  local ok, err = pcall(moe.no_grad, m.__call__, m, placeholder)
  for l, flag in pairs(modes) do rawset(l, "_training", flag) end
  for _, e in ipairs(m:modules()) do rawset(e[2], "_losses", {}); rawset(e[2], "_metrics", {}) end
  if not ok then error(err, 0) end
end

-- build every layer for inputs of shape {batch dims excluded}
function Sequential:build_for(input_shape)
  local shape = { DUMMY_BATCH }
  for _, d in ipairs(input_shape) do shape[#shape + 1] = d end
  rawset(self, "_input_shape", input_shape)
  local first = self._children[1] and rawget(self, self._children[1])
  M.build_on_placeholder(self, shape, first)
end

-- build(shape): shape with its batch dim first (any number, as Keras's None);
-- called by the user, it builds every layer (Keras's model.build)
function Sequential:build(shape)
  local numeric = type(shape) == "table" and #shape > 0
  if numeric then for i = 2, table.maxn(shape) do numeric = numeric and type(shape[i]) == "number" end end
  if not numeric then
    if nn.in_call() then return end -- several inputs: the layers build on the first call
    error(("build: %s \"%s\": expected an input shape {batch, features...} (the batch size may be -1), got %s")
      :format(self.class_name, self.name, type(shape) == "table" and "a table that is not a list of sizes" or moe._show(shape)), 3)
  end
  local s = {}
  for i = 2, table.maxn(shape) do s[#s + 1] = shape[i] end
  if not rawget(self, "_input_shape") then rawset(self, "_input_shape", s) end
  if not nn.in_call() then self:build_for(s) end
end

-- a Sequential makes no weights of its own: it still has to build while a layer does
function Sequential:_needs_build()
  for _, c in ipairs(self:children()) do if c:_needs_build() then return true end end
  return false
end

function Sequential:forward(x)
  for i, k in ipairs(self._children) do
    x = nn.call_child(self, i, rawget(self, k), x)
  end
  return x
end

function Sequential:get_config()
  local layers = {}
  for _, l in ipairs(self:children()) do layers[#layers + 1] = { class_name = l.class_name, config = l:get_config() } end
  return { name = self.name, layers = layers, input_shape = rawget(self, "_input_shape") }
end

-- ------------------------------------------------------------------ functional Model

local Model = nn.class("Model", Module)
M.Model = Model
Model._no_autocast = true
nn.Model = Model

local function collect_symbolic(v, out)
  out = out or {}
  if is_symbolic(v) then out[#out + 1] = v
  elseif type(v) == "table" and not is_module(v) then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do collect_symbolic(v[k], out) end
  end
  return out
end

function Model:init(opts)
  Module.init(self, opts)
  for k in pairs(opts) do
    if k ~= "inputs" and k ~= "outputs" and k ~= "name" then
      error(("Model: unknown option '%s' (inputs, outputs, name)"):format(tostring(k)), 3)
    end
  end
  if opts.inputs == nil or opts.outputs == nil then error("Model: options 'inputs' and 'outputs' are required", 3) end
  local ins = collect_symbolic(opts.inputs)
  local outs = collect_symbolic(opts.outputs)
  if #ins == 0 then error("Model: inputs must be moe.Input tensors", 3) end
  if #outs == 0 then error("Model: outputs must be symbolic tensors (layers called on moe.Input)", 3) end
  local input_nodes = {}
  for i, s in ipairs(ins) do
    if not s.node.input then error(("Model: input %d is not a moe.Input"):format(i), 3) end
    input_nodes[s.node] = true
  end
  -- walk back from the outputs to the inputs
  local nodes, seen = {}, {}
  local function visit(s)
    local nd = s.node
    if seen[nd] then return end
    seen[nd] = true
    if nd.input then
      if not input_nodes[nd] then
        error(("Model: the outputs depend on Input \"%s\", which is not among the model's inputs"):format(nd.name), 4)
      end
      return
    end
    for _, a in ipairs(collect_symbolic(nd.args)) do visit(a) end
    nodes[#nodes + 1] = nd
  end
  for _, s in ipairs(outs) do visit(s) end
  table.sort(nodes, function(a, b) return a.id < b.id end)
  rawset(self, "_nodes", nodes)
  rawset(self, "_inputs", opts.inputs)
  rawset(self, "_outputs", opts.outputs)
  -- each layer once, in the order first used; names must be unique
  local names = {}
  for _, nd in ipairs(nodes) do
    local l = nd.layer
    if names[l.name] and names[l.name] ~= l then
      error(("Model: two different layers are named \"%s\"; layer names must be unique"):format(l.name), 3)
    end
    if not names[l.name] then
      names[l.name] = l
      self:add_module(l.name, l)
    end
  end
  rawset(self, "built", true)
  -- record output shapes of each layer from the placeholder pass
  for _, nd in ipairs(nodes) do
    rawset(nd.layer, "_output_shape", map(nd.outputs, function(s) return s.value:shape() end))
  end
end

-- input names, in the order of the inputs structure
function Model:input_names()
  local out = {}
  for _, s in ipairs(collect_symbolic(self._inputs)) do out[#out + 1] = s.node.name end
  return out
end

local function bind_inputs(self, args, nargs)
  local env = {}
  local spec = self._inputs
  local x = args[1]
  if is_symbolic(spec) then
    if not core.is_tensor(x) then
      error(("Model \"%s\": expected one input tensor, got %s"):format(self.name, moe._show(x)), 0)
    end
    env[spec] = x
    return env
  end
  -- several inputs: a list/table shaped like `inputs`, or positional arguments
  if nargs > 1 then x = { unpack(args, 1, nargs) } end
  if type(x) ~= "table" or core.is_tensor(x) then
    error(("Model \"%s\": expected a table of %d input tensors"):format(self.name, #collect_symbolic(spec)), 0)
  end
  local function bind(sp, val, where)
    if is_symbolic(sp) then
      if not core.is_tensor(val) then
        error(("Model \"%s\": input %s (\"%s\") is missing"):format(self.name, where, sp.node.name), 0)
      end
      env[sp] = val
    else
      for k, s in pairs(sp) do
        local v = val[k]
        if v == nil and is_symbolic(s) then v = val[s.node.name] end
        bind(s, v, tostring(k))
      end
    end
  end
  bind(spec, x, "")
  return env
end

function Model:forward(...)
  local env = bind_inputs(self, { ... }, select("#", ...))
  for i, nd in ipairs(self._nodes) do
    local out
    local a1 = nd.args[1]
    if nd.nargs == 1 and is_symbolic(a1) then -- the common case: one tensor in
      out = nn.call_child(self, i, nd.layer, env[a1])
    else
      local args = map(nd.args, function(s) return is_symbolic(s) and env[s] or s end)
      out = nn.call_child(self, i, nd.layer, unpack(args, 1, nd.nargs))
    end
    -- bind this node's symbolic outputs to the concrete values
    local function bind(sym, val)
      if is_symbolic(sym) then env[sym] = val
      elseif type(sym) == "table" and type(val) == "table" then
        for k, s in pairs(sym) do bind(s, val[k]) end
      end
    end
    bind(nd.outputs, out)
  end
  return map(self._outputs, function(s) return env[s] end)
end

function Model:summary_rows()
  local rows = {}
  for _, s in ipairs(collect_symbolic(self._inputs)) do
    local sh = { -1 }
    for _, d in ipairs(s.node.shape) do sh[#sh + 1] = d end
    rows[#rows + 1] = { ("%s (InputLayer)"):format(s.node.name), nn.out_shape_str(sh), 0 }
  end
  for _, c in ipairs(self:children()) do
    rows[#rows + 1] = { ("%s (%s)"):format(c.name, c.class_name), nn.out_shape_str(c:output_shape()), (c:_count_params()) }
  end
  return rows
end

-- output names: the keys of a table of outputs, or (for a list) the names of
-- the layers that produce them, as Keras names outputs
function Model:output_names()
  local outs = self._outputs
  if is_symbolic(outs) then return { outs.node.layer.name } end
  local names = {}
  for k, s in pairs(outs) do
    names[k] = type(k) == "string" and k or (is_symbolic(s) and s.node.layer.name) or tostring(k)
  end
  return names
end

-- config: the layers, and the graph as references {node index, output path}
function Model:get_config()
  local layer_index = {}
  local layers = {}
  for i, l in ipairs(self:children()) do
    layer_index[l] = i
    layers[i] = { class_name = l.class_name, config = l:get_config(), build_input_shape = rawget(l, "_build_input_shape") }
  end
  local node_index, inputs = {}, {}
  for i, s in ipairs(collect_symbolic(self._inputs)) do
    node_index[s.node] = -i
    inputs[i] = { name = s.node.name, shape = s.node.shape, dtype = s.node.dtype }
  end
  for i, nd in ipairs(self._nodes) do node_index[nd] = i end
  local function ref(v)
    if is_symbolic(v) then
      return { __ref = { node_index[v.node], v.path } }
    elseif type(v) == "table" then
      local out = {}
      for k, x in pairs(v) do out[type(k) == "number" and ("#" .. k) or k] = ref(x) end
      return out
    end
    return v
  end
  local nodes = {}
  for i, nd in ipairs(self._nodes) do
    local args = {}
    for j = 1, nd.nargs do args[j] = ref(nd.args[j]) end
    nodes[i] = { layer = layer_index[nd.layer], args = args }
  end
  return { name = self.name, layers = layers, input_layers = inputs, inputs = ref(self._inputs),
    nodes = nodes, outputs = ref(self._outputs) }
end

-- ------------------------------------------------------------------ save / load

local FORMAT = "moelua.model.v1"

-- the names of a module and of its sub-modules, by child key in the order of
-- modules() (a module reached twice is listed once): {n = name, c = {{key, tree}, ...}}
local function name_tree(m, seen)
  seen[m] = true
  local kids = {}
  for _, k in ipairs(m._children) do
    local c = rawget(m, k)
    if not seen[c] then kids[#kids + 1] = { k, name_tree(c, seen) } end
  end
  return { n = m.name, c = kids }
end

-- give a rebuilt model the names it was saved with: sub-layers that a layer
-- creates in init or build are named by a per-process counter, which differs
-- from process to process
local function restore_names(m, node, seen, where)
  seen[m] = true
  if type(node) ~= "table" or type(node.n) ~= "string" or type(node.c) ~= "table" then
    error(("the layer names recorded for %s are malformed"):format(where), 0)
  end
  rawset(m, "name", node.n)
  nn.note_name(node.n)
  local i = 0
  for _, k in ipairs(m._children) do
    local c = rawget(m, k)
    if not seen[c] then
      i = i + 1
      local e = node.c[i]
      if type(e) ~= "table" or e[1] ~= k then
        error(("the rebuilt %s has a sub-layer '%s' (%s) where the file has %s: did the class change since the save?")
          :format(where, tostring(k), c.class_name, type(e) == "table" and ("'" .. tostring(e[1]) .. "'") or "none"), 0)
      end
      restore_names(c, e[2], seen, ("layer '%s'"):format(node.n .. "/" .. tostring(k)))
    end
  end
  if node.c[i + 1] ~= nil then
    error(("the file has a sub-layer '%s' under %s that the rebuilt model lacks: did the class change since the save?")
      :format(tostring(type(node.c[i + 1]) == "table" and node.c[i + 1][1]), where), 0)
  end
end

-- save(path): weights (and optimizer state) as safetensors tensors, the
-- architecture, the layer names and optimizer settings as JSON in the header's
-- __metadata__, every tensor and the header under a checksum
function Module:save(path)
  if type(path) ~= "string" then error(("save: path must be a string, got %s"):format(moe._show(path)), 2) end
  if not self.built and #self._children == 0 then
    error(("save: %s \"%s\" is not built yet; call it on data first"):format(self.class_name, self.name), 2)
  end
  local ok, cfg = pcall(function()
    return { class_name = self.class_name, config = self:get_config(), build_input_shape = rawget(self, "_build_input_shape") }
  end)
  if not ok then error("save: " .. tostring(cfg):gsub("^[^\n]-%.lua:%d+: ", ""), 2) end
  local function json(v, what)
    local s, err = mio.json_encode(v)
    if not s then error(("save: %s \"%s\": the %s: %s"):format(self.class_name, self.name, what, err), 3) end
    return s
  end
  local names, ts = self:named_weights()
  local tensors = {}
  -- expert-parallel weights are gathered whole (an all_gather per shard, in
  -- the same order on every rank), so the file is the one a 1-rank model writes
  local shards = nn.expert_shards(self)
  local collective = next(shards) ~= nil
  local dist = moe.distributed
  local function whole(t) return dist.all_gather(t:detach():contiguous()) end
  for i, n in ipairs(names) do tensors[n] = shards[ts[i]] and whole(ts[i]) or ts[i] end
  local meta = { format = FORMAT, model = json(cfg, "model config"), layers = json(name_tree(self, {}), "layer names") }
  if rawget(self, "optimizer") then
    local pnames, params, sharded = {}, {}, {}
    for n, p in self:named_parameters() do
      pnames[#pnames + 1] = n; params[#params + 1] = p
      if shards[p] then sharded[n] = true end
    end
    local st, with_state = self.optimizer:state_tensors(pnames, params)
    local keys = {}
    for k in pairs(st) do keys[#keys + 1] = k end
    table.sort(keys) -- (the same order of gathers on every rank)
    for _, k in ipairs(keys) do
      local pn, slot = k:match("^optimizer/(.*)/([^/]+)$")
      tensors[k] = (sharded[pn] and slot ~= "step") and whole(st[k]) or st[k]
    end
    meta.optimizer = json(self.optimizer:get_config(), "optimizer config")
    meta.optimizer_state = json(with_state, "optimizer state list")
    meta.compile = json(self._compile_config or {}, "compile options")
  end
  if not collective then return mio.save_tensors(path, tensors, meta) end
  -- a model with expert-parallel layers saves collectively: every rank calls
  -- save, rank 0 writes (atomically, as always), and the ranks return when
  -- the file is complete, or all raise rank 0's failure
  local ok, err = true, nil
  if dist.rank() == 0 then ok, err = pcall(mio.save_tensors, path, tensors, meta) end
  local status = moe.tensor({ ok and 0 or 1 }, { dtype = "int32" })
  dist.broadcast(status, 0)
  if not ok then error(err, 0) end
  if status:item() ~= 0 then
    error(("save: rank 0 could not write '%s' (its error is on rank 0's output)"):format(path), 2)
  end
end

-- rebuild a layer from {class_name, config}; only registered classes are built
local function from_config(entry, where, custom)
  if type(entry) ~= "table" or type(entry.class_name) ~= "string" then
    error(("load: %s: a layer entry without class_name"):format(where), 0)
  end
  local cls = nn.registry[entry.class_name]
  if not cls then
    error(("load: %s names an unknown layer class '%s' (define or require it before loading)")
      :format(where, entry.class_name), 0)
  end
  local cfg = entry.config or {}
  if type(cfg) ~= "table" then error(("load: %s: config is not an object"):format(where), 0) end
  if entry.class_name == "Sequential" then
    local layers = {}
    for i, l in ipairs(cfg.layers or {}) do layers[i] = from_config(l, where .. " layer " .. i, custom) end
    layers.name = cfg.name
    local m = Sequential(layers)
    if type(cfg.input_shape) == "table" then m:build_for(cfg.input_shape) end
    return m
  elseif entry.class_name == "Model" then
    return M.model_from_config(cfg, custom)
  elseif entry.class_name == "Lambda" then
    local fn = custom and custom[cfg.function_name]
    if type(fn) ~= "function" then
      error(("load: Lambda layer \"%s\" needs its function: pass custom_objects = { %s = function ... end }")
        :format(tostring(cfg.name), tostring(cfg.function_name)), 0)
    end
    return nn.Lambda { fn = fn, function_name = cfg.function_name, name = cfg.name }
  end
  local ok, m = pcall(cls, cfg)
  if not ok then error(("load: %s (%s): %s"):format(where, entry.class_name, tostring(m):gsub("^[^\n]-%.lua:%d+: ", "")), 0) end
  return m
end

-- a structure of symbolic tensors only (the inputs or outputs of a model)
local function all_symbolic(v)
  if is_symbolic(v) then return true end
  if type(v) ~= "table" or is_module(v) or core.is_tensor(v) or next(v) == nil then return false end
  for _, x in pairs(v) do
    if not all_symbolic(x) then return false end
  end
  return true
end

function M.model_from_config(cfg, custom)
  local function need(cond, fmt, ...) if not cond then error(("load: " .. fmt):format(...), 0) end end
  local function list(v, what)
    need(v == nil or type(v) == "table", "the model's %s is not a list", what)
    return v or {}
  end
  local inputs = {}
  for i, spec in ipairs(list(cfg.input_layers, "input_layers")) do
    need(type(spec) == "table", "input %d is not an object", i)
    inputs[i] = M.Input { shape = spec.shape, name = spec.name, dtype = spec.dtype }
  end
  local layers = {}
  for i, l in ipairs(list(cfg.layers, "layers")) do layers[i] = from_config(l, "layer " .. i, custom) end
  local outs = {}
  local function deref(v)
    if type(v) == "table" and v.__ref ~= nil then
      local r = v.__ref
      need(type(r) == "table" and type(r[1]) == "number" and r[1] == math.floor(r[1]) and r[1] ~= 0
        and (r[2] == nil or type(r[2]) == "table") and next(v, next(v)) == nil,
        "the graph holds a malformed reference to a layer output")
      local ni, path = r[1], r[2]
      local base = ni < 0 and inputs[-ni] or outs[ni]
      need(base ~= nil, "the graph refers to node %s before it exists", tostring(ni))
      for _, k in ipairs(path or {}) do
        need(type(base) == "table" and not is_symbolic(base) and base[k] ~= nil,
          "the graph refers to output %s of node %d, which it does not have", tostring(k), ni)
        base = base[k]
      end
      need(is_symbolic(base), "the graph refers to node %d's output, which is not a tensor", ni)
      return base
    elseif type(v) == "table" then
      local out = {}
      for k, x in pairs(v) do
        local key = type(k) == "string" and k:match("^#(%d+)$")
        out[key and tonumber(key) or k] = deref(x)
      end
      return out
    end
    return v
  end
  for i, nd in ipairs(list(cfg.nodes, "nodes")) do
    need(type(nd) == "table", "node %d is not an object", i)
    local layer = layers[nd.layer]
    need(layer, "node %d uses layer %s, which is not defined", i, tostring(nd.layer))
    local args = {}
    for j, a in ipairs(list(nd.args, "node arguments")) do args[j] = deref(a) end
    need(all_symbolic(args[1]), "node %d's first argument is not a layer output or a model input", i)
    outs[i] = layer(unpack(args, 1, #(nd.args or {})))
  end
  local ins, outputs = deref(cfg.inputs), deref(cfg.outputs)
  need(all_symbolic(ins), "the model's inputs do not resolve to its Input layers")
  need(all_symbolic(outputs), "the model's outputs do not resolve to layer outputs")
  return Model { inputs = ins, outputs = outputs, name = cfg.name }
end

-- moe.load(path[, {custom_objects = {...}, compile = true}]): the model, bit for bit
local load_impl
function M.load(path, opts)
  if type(path) ~= "string" then error(("load: path must be a string, got %s"):format(moe._show(path)), 2) end
  if opts ~= nil and type(opts) ~= "table" then
    error(("load: options must be a table ({custom_objects = ..., compile = ...}), got %s"):format(moe._show(opts)), 2)
  end
  for k in pairs(opts or {}) do
    if k ~= "custom_objects" and k ~= "compile" and k ~= "expert_parallel" then
      error(("load: unknown option '%s' (options: compile, custom_objects, expert_parallel)"):format(tostring(k)), 2)
    end
  end
  if opts and opts.expert_parallel ~= nil and type(opts.expert_parallel) ~= "boolean" then
    error(("load: option 'expert_parallel' must be true or false, got %s"):format(moe._show(opts.expert_parallel)), 2)
  end
  local ok, res = pcall(load_impl, path, opts)
  if not ok then
    local msg = tostring(res):gsub("^[^\n]-:%d+: ", "", 1)
    if not msg:match("^load") then msg = ("load: '%s': %s"):format(path, msg) end
    error(moe._where(msg), 0)
  end
  return res
end

local known_meta = { format = true, model = true, layers = true, optimizer = true, optimizer_state = true, compile = true }

function load_impl(path, opts)
  opts = opts or {}
  local tensors, meta, _, checked = mio.read(path)
  local function fail(fmt, ...) error(("load: '%s': " .. fmt):format(path, ...), 0) end
  if type(meta) ~= "table" or meta.format ~= FORMAT or type(meta.model) ~= "string" then
    error(("load: '%s' is a safetensors file but not a moelua model (use moe.load_tensors for plain tensors)")
      :format(path), 0)
  end
  if not checked then
    fail("the file has no checksums, so damage to it could not be detected (moelua writes them in every file; "
      .. "this one was written by an older version or altered): moe.load_tensors still reads its tensors")
  end
  for k in pairs(meta) do
    if not known_meta[k] then fail("unknown metadata entry '%s'", k) end
  end
  local function decode(key)
    local v = meta[key] and cjson.decode(meta[key])
    if type(v) ~= "table" then fail("the %s entry of the metadata is not a JSON object", key) end
    return v
  end
  local cfg = decode("model")
  local layer_names = decode("layers")
  if opts.expert_parallel ~= nil then
    -- every MoeLayer of the file made expert parallel or not (the file holds
    -- whole experts either way: only the layers' option changes)
    local function walk(v, depth)
      if type(v) ~= "table" or depth > 100 then return end
      if v.class_name == "MoeLayer" and type(v.config) == "table" then v.config.expert_parallel = opts.expert_parallel end
      for _, x in pairs(v) do walk(x, depth + 1) end
    end
    walk(cfg, 0)
  end
  -- the weights the config makes cannot hold far more values than the file's
  -- tensors: a damaged size (units = 10^9) fails before it is allocated (within
  -- the budget, the exact name and shape checks below give the precise error)
  local budget = 0
  for k, t in pairs(tensors) do if k:sub(1, 10) ~= "optimizer/" then budget = budget + t:numel() end end
  budget = 2 * budget + 2 ^ 24
  nn.set_weight_budget(budget, function(name, n, left)
    fail("the model config makes a weight '%s' of %.0f values, far more than the file's tensors hold: "
      .. "the config does not match the tensors", name, n)
  end)
  local built_ok, model = pcall(function()
    local m = from_config(cfg, "the model", opts.custom_objects)
    if not m.built and type(cfg.build_input_shape) == "table" then
      -- a plain layer or user module: build it by calling it on placeholder input
      local shape = {}
      for i, d in ipairs(cfg.build_input_shape) do
        if type(d) ~= "number" or d < 0 or d ~= math.floor(d) or d > 2 ^ 31 then fail("bad build_input_shape") end
        shape[i] = d
      end
      M.build_on_placeholder(m, shape, m)
    end
    return m
  end)
  nn.set_weight_budget(nil)
  if not built_ok then error(model, 0) end
  local ok, err = pcall(restore_names, model, layer_names, {}, "model")
  if not ok then fail("%s", tostring(err)) end
  nn.structure_changed()
  local names, ts = model:named_weights()
  local used = {}
  -- expert-parallel weights: the file holds every expert (whatever world size
  -- wrote it); this rank keeps its slice
  local shards = nn.expert_shards(model)
  local function slice(t, ep) return ep and t:narrow(1, ep.lo, ep.n) or t end
  moe.no_grad(function()
    for i, n in ipairs(names) do
      local t = tensors[n]
      if not t then fail("the file has no tensor for weight '%s'", n) end
      local ep = shards[ts[i]]
      local need = ts[i]:shape()
      if ep then need[1] = need[1] * ep.world end
      local same = t:dim() == #need and t:dtype() == ts[i]:dtype()
      for d = 1, #need do same = same and t:size(d) == need[d] end
      if not same then
        fail("weight '%s' is %s %s in the file, the model needs %s %s", n, t:dtype(),
          nn.shape_str(t:shape()), ts[i]:dtype(), nn.shape_str(need))
      end
      ts[i]:copy_(slice(t, ep))
      used[n] = true
    end
  end)
  -- every other tensor must be optimizer state that the metadata announces
  local state = {}
  for k, t in pairs(tensors) do
    if not used[k] then
      if not (meta.optimizer and k:sub(1, 10) == "optimizer/") then
        fail("tensor '%s' is not a weight of the model%s", k,
          meta.optimizer and "" or " (and the file has no optimizer)")
      end
      state[k] = t
    end
  end
  if meta.optimizer then
    local oc = decode("optimizer")
    local with_state = decode("optimizer_state")
    local cc = decode("compile")
    if opts.compile ~= false then
      local optim = require "moe.optim"
      local okc, opt = pcall(optim.from_config, oc)
      if not okc then fail("%s", (tostring(opt):gsub("^load: ", ""))) end
      model:compile { optimizer = opt, loss = cc.loss, loss_weights = cc.loss_weights, metrics = cc.metrics }
      local pnames, params = {}, {}
      for n, p in model:named_parameters() do
        pnames[#pnames + 1] = n; params[#params + 1] = p
        local ep = shards[p]
        if ep then -- the expert shards' optimizer state: this rank's slice too
          for k, t in pairs(state) do
            if k:sub(1, #n + 11) == "optimizer/" .. n .. "/" and k:sub(#n + 12) ~= "step" and t:dim() > 0
                and t:size(1) == p:size(1) * ep.world then
              state[k] = slice(t, ep)
            end
          end
        end
      end
      local oks, e2 = pcall(opt.load_state_tensors, opt, pnames, params, state, with_state)
      if not oks then fail("%s", (tostring(e2):gsub("^load: ", ""))) end
    end
  elseif meta.optimizer_state or meta.compile then
    fail("the metadata has optimizer state or compile options but no optimizer")
  end
  return model
end

return M
