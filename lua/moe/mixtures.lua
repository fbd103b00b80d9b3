-- Dense (soft) mixtures of experts: TabularMoELayer, GatedFeatureFusion, MMoE
-- (and its one-gate form OMoE), and the shared-bottom baseline.
--
-- Experts' weights are stacked along an expert dim so that all experts run as
-- one GEMM (MMoE's first layer: x [B,F] @ W [F, U*E]) or one batched GEMM
-- (deeper experts: [E,B,in] @ [E,in,out]); the gate-weighted sum is the fused
-- C op moe.mixture (src/nn/mixture.c), forward and backward.
--
-- The experts' GEMMs take moe.get_precision() ("fp32" or "bf16", see
-- moe.set_precision); the gates' GEMMs are always fp32.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local nn = require "moe.nn"
local inits = require "moe.initializers"
local I, R = inits.initializers, inits.regularizers

local Module, class, REQUIRED = nn.Module, nn.class, nn.REQUIRED

-- each expert's weight drawn on its own ([in, out] fans), then stacked: no two
-- experts start equal, and each has the scale of a single Dense layer
local stacked = inits.stacked

local function add_stacked(self, name, n, shape, initializer, regularizer, constraint)
  local init = I.get(initializer, self.class_name)
  return self:add_weight(name, { n, unpack(shape) }, {
    initializer = function(_, dtype) return stacked(init, n, shape, dtype) end,
    regularizer = regularizer, constraint = constraint })
end

local function last_dim(self, shape)
  if type(shape) ~= "table" or type(shape[1]) ~= "number" or #shape < 2 then
    error(("%s \"%s\": expected a tensor input [batch, features]"):format(self.class_name, self.name), 0)
  end
  return shape[#shape]
end

-- run f on x flattened to [N, F] and give the result x's leading dims back
local function on_rows(x, f)
  if x:dim() == 2 then return f(x) end
  local lead = x:shape()
  lead[#lead] = nil
  local y = f(x:reshape(-1, x:size(-1)))
  local function back(t)
    local s = {}
    for i, d in ipairs(lead) do s[i] = d end
    s[#s + 1] = t:size(-1)
    return t:reshape(s)
  end
  if moe.is_tensor(y) then return back(y) end
  local out = {}
  for i, t in ipairs(y) do out[i] = back(t) end
  return out
end

-- ------------------------------------------------------------------ TabularMoELayer

-- each expert Dense(expert_units, relu) -> Dense(F); gate softmax(x Wg + bg) over
-- experts on the raw input; output [B, F] = sum_e gate_e * expert_e(x)
local TabularMoE = class("TabularMoELayer", Module)
local GATE_SCALE_RELU = { relu = true, append_gate = true }
nn.TabularMoELayer = TabularMoE
function TabularMoE:init(opts)
  Module.init(self, opts)
  self:_options(opts, { num_experts = 4, expert_units = 16 })
  nn.positive_int(self, "num_experts")
  nn.positive_int(self, "expert_units")
end
function TabularMoE:build(shape)
  local F, E, U = last_dim(self, shape), self.num_experts, self.expert_units
  -- expert_kernel [F, E, U]: the first layers of all experts are one GEMM
  -- x [B,F] @ [F, E*U]; each expert's [F, U] slice is drawn on its own
  local init = I.get("glorot_uniform")
  self:add_weight("expert_kernel", { F, E, U }, { initializer = function(_, dtype)
    return stacked(init, E, { F, U }, dtype):permute(2, 1, 3):contiguous() end })
  self:add_weight("expert_bias", { E, U }, { initializer = "zeros" })
  add_stacked(self, "output_kernel", E, { U, F }, "glorot_uniform")
  self:add_weight("output_bias", { E, F }, { initializer = "zeros" })
  self:add_weight("gate_kernel", { F, E }, { initializer = "glorot_uniform" })
  self:add_weight("gate_bias", { E }, { initializer = "zeros" })
end
-- get_weights()/set_weights(): kerasfactory's list, 4E + 2 arrays (18 for the
-- seed's 4 experts): every expert's first Dense (kernel [F, U], bias [U]), then
-- every expert's output Dense (kernel [U, F], bias [F]), then the gate (kernel
-- [F, E], bias [E]) -- Keras lists the sub-layers in the order the layer
-- created them. Views onto the stacked storage.
function TabularMoE:_keras_weights()
  if not rawget(self, "expert_kernel") then return {}, {} end
  local names, ts = {}, {}
  local function put(n, t) names[#names + 1] = n; ts[#ts + 1] = t end
  local ek, eb = self.expert_kernel:detach(), self.expert_bias:detach()
  local ok, ob = self.output_kernel:detach(), self.output_bias:detach()
  for e = 1, self.num_experts do
    put("expert_" .. e .. "/kernel", ek:select(2, e))
    put("expert_" .. e .. "/bias", eb:select(1, e))
  end
  for e = 1, self.num_experts do
    put("expert_out_" .. e .. "/kernel", ok:select(1, e))
    put("expert_out_" .. e .. "/bias", ob:select(1, e))
  end
  put("gate/kernel", self.gate_kernel:detach())
  put("gate/bias", self.gate_bias:detach())
  return names, ts
end
function TabularMoE:gate_weights(x)
  return on_rows(x, function(x2) return moe.linear(x2, self.gate_kernel, self.gate_bias):softmax(-1) end)
end
function TabularMoE:forward(x)
  local E, U = self.num_experts, self.expert_units
  return on_rows(x, function(x2)
    local F = x2:size(2)
    if F ~= self.expert_kernel:size(1) then
      error(("TabularMoELayer \"%s\": input has %d features but the layer was built for %d")
        :format(self.name, F, self.expert_kernel:size(1)), 0)
    end
    local prec = moe.get_precision()                                                           -- experts only
    local h = moe.linear(x2, self.expert_kernel:view(F, E * U), self.expert_bias:view(E * U), nil, prec) -- [B,E*U]
    local g = moe.linear(x2, self.gate_kernel, self.gate_bias):softmax(-1)                     -- [B,E]
    rawset(self, "last_gates", g:detach())
    -- sum_e g_e (relu(h_e) W2_e + b2_e) = [g_1 relu(h_1), ..., g_E relu(h_E), g] [W2_1; ...; W2_E; b2]:
    -- relu, gating and the gate-weighted output biases are one fused op (moe.gate_scale),
    -- and the second layers of all experts and the mixture are one GEMM
    local hs = moe.gate_scale(h, g, GATE_SCALE_RELU)                                          -- [B,E*U+E]
    return moe.matmul(hs, moe.cat({ self.output_kernel:view(E * U, F), self.output_bias }, 1), prec) -- [B,F]
  end)
end

-- ------------------------------------------------------------------ GatedFeatureFusion

-- called on {a, b}: g = activation([a; b] W + c), W [2F, F]; out = g a + (1 - g) b
local GatedFeatureFusion = class("GatedFeatureFusion", Module)
nn.GatedFeatureFusion = GatedFeatureFusion
function GatedFeatureFusion:init(opts)
  Module.init(self, opts)
  self:_options(opts, { activation = "sigmoid" })
  rawset(self, "_act", nn.get_activation(self.activation, "GatedFeatureFusion"))
end
local function two_inputs(self, xs)
  local function shp(t) return "[" .. table.concat(t:shape(), ",") .. "]" end
  if type(xs) ~= "table" or moe.is_tensor(xs) or #xs ~= 2 or not moe.is_tensor(xs[1]) or not moe.is_tensor(xs[2]) then
    error(("GatedFeatureFusion \"%s\": expected exactly two inputs {a, b}, got %s"):format(self.name,
      moe.is_tensor(xs) and "one tensor" or type(xs) == "table" and (#xs .. " inputs") or moe._show(xs)), 0)
  end
  if not moe.is_same_size(xs[1], xs[2]) then
    error(("GatedFeatureFusion \"%s\": the two inputs must have equal shapes, got %s and %s")
      :format(self.name, shp(xs[1]), shp(xs[2])), 0)
  end
end
function GatedFeatureFusion:build(shapes)
  if type(shapes) ~= "table" or type(shapes[1]) ~= "table" or #shapes ~= 2 then
    error(("GatedFeatureFusion \"%s\": expected exactly two inputs {a, b}"):format(self.name), 0)
  end
  local F = shapes[1][#shapes[1]]
  self:add_weight("kernel", { 2 * F, F }, { initializer = "glorot_uniform" })
  self:add_weight("bias", { F }, { initializer = "zeros" })
end
function GatedFeatureFusion:forward(xs)
  two_inputs(self, xs)
  local a, b = xs[1], xs[2]
  local g = self._act(moe.linear(moe.cat({ a, b }, a:dim()), self.kernel, self.bias))
  rawset(self, "last_gates", g:detach())
  return b + g * (a - b)
end

-- ------------------------------------------------------------------ MMoE / OMoE

local mmoe_defaults = {
  units = REQUIRED, num_experts = REQUIRED, num_tasks = REQUIRED, num_gates = false,
  use_expert_bias = true, use_gate_bias = true,
  expert_activation = "relu", gate_activation = "softmax",
  expert_bias_initializer = "zeros", gate_bias_initializer = "zeros",
  expert_bias_regularizer = false, gate_bias_regularizer = false,
  expert_bias_constraint = false, gate_bias_constraint = false,
  expert_kernel_initializer = "variance_scaling", gate_kernel_initializer = "variance_scaling",
  expert_kernel_regularizer = false, gate_kernel_regularizer = false,
  expert_kernel_constraint = false, gate_kernel_constraint = false,
  activity_regularizer = false, expert_hidden_units = false, expert_hidden_activation = "relu",
}

-- MMoE (Ma et al., KDD 2018), with the seed's weights and defaults:
-- expert_kernel [F, units, E], expert_bias [units, E], then every task's
-- gate_kernel_t [F, E], then every gate_bias_t [E] (the seed's get_weights()
-- order); returns a list of num_tasks tensors [B, units].
-- expert_hidden_units = {h1, ...} makes each expert an MLP (hidden layers with
-- expert_hidden_activation, then `units` with expert_activation). num_gates = 1
-- is the one-gate MoE (OMoE): every task receives the same mixture.
local MMoE = class("MMoE", Module)
nn.MMoE = MMoE
function MMoE:init(opts)
  Module.init(self, opts)
  self:_options(opts, mmoe_defaults)
  for _, k in ipairs { "units", "num_experts", "num_tasks" } do nn.positive_int(self, k) end
  if self.num_gates then
    nn.positive_int(self, "num_gates")
    if self.num_gates ~= 1 and self.num_gates ~= self.num_tasks then
      error(("%s: num_gates must be 1 (one gate) or num_tasks (%d), got %d"):format(self.class_name,
        self.num_tasks, self.num_gates), 3)
    end
  end
  if self.expert_hidden_units then
    if type(self.expert_hidden_units) ~= "table" then
      error(("%s: expert_hidden_units must be a list of sizes"):format(self.class_name), 3)
    end
    for i, h in ipairs(self.expert_hidden_units) do
      if type(h) ~= "number" or h < 1 or h ~= math.floor(h) then
        error(("%s: expert_hidden_units[%d] must be a positive integer, got %s"):format(self.class_name, i, moe._show(h)), 3)
      end
    end
  end
  rawset(self, "_expert_act", nn.get_activation(self.expert_activation, self.class_name))
  rawset(self, "_hidden_act", nn.get_activation(self.expert_hidden_activation, self.class_name))
  rawset(self, "_gate_act", nn.get_activation(self.gate_activation, self.class_name))
  if self.activity_regularizer then rawset(self, "_activity_reg", R.get(self.activity_regularizer, self.class_name)) end
  I.get(self.expert_kernel_initializer, self.class_name)
  I.get(self.gate_kernel_initializer, self.class_name)
end

function MMoE:gates_count() return self.num_gates or self.num_tasks end

function MMoE:build(shape)
  local F, U, E = last_dim(self, shape), self.units, self.num_experts
  rawset(self, "_in_features", F)
  local hidden = self.expert_hidden_units or {}
  rawset(self, "_weight_order", {})
  local order = self._weight_order
  local function track(name) order[#order + 1] = name end
  if #hidden == 0 then
    -- the seed's layout: one [F, units, E] kernel, a draw per element (experts independent)
    self:add_weight("expert_kernel", { F, U, E }, { initializer = self.expert_kernel_initializer,
      regularizer = self.expert_kernel_regularizer, constraint = self.expert_kernel_constraint }); track("expert_kernel")
    if self.use_expert_bias then
      self:add_weight("expert_bias", { U, E }, { initializer = self.expert_bias_initializer,
        regularizer = self.expert_bias_regularizer, constraint = self.expert_bias_constraint }); track("expert_bias")
    end
  else
    local din = F
    for l, h in ipairs(hidden) do
      add_stacked(self, "expert_hidden_kernel_" .. l, E, { din, h }, self.expert_kernel_initializer,
        self.expert_kernel_regularizer, self.expert_kernel_constraint); track("expert_hidden_kernel_" .. l)
      if self.use_expert_bias then
        self:add_weight("expert_hidden_bias_" .. l, { E, h }, { initializer = self.expert_bias_initializer,
          regularizer = self.expert_bias_regularizer, constraint = self.expert_bias_constraint }); track("expert_hidden_bias_" .. l)
      end
      din = h
    end
    add_stacked(self, "expert_kernel", E, { din, U }, self.expert_kernel_initializer,
      self.expert_kernel_regularizer, self.expert_kernel_constraint); track("expert_kernel")
    if self.use_expert_bias then
      self:add_weight("expert_bias", { E, U }, { initializer = self.expert_bias_initializer,
        regularizer = self.expert_bias_regularizer, constraint = self.expert_bias_constraint }); track("expert_bias")
    end
  end
  -- the seed's order: every gate kernel, then every gate bias (created here
  -- kernel and bias per gate, so that seeded initial values stay as they were)
  for t = 1, self:gates_count() do
    self:add_weight("gate_kernel_" .. t, { F, E }, { initializer = self.gate_kernel_initializer,
      regularizer = self.gate_kernel_regularizer, constraint = self.gate_kernel_constraint }); track("gate_kernel_" .. t)
    if self.use_gate_bias then
      self:add_weight("gate_bias_" .. t, { E }, { initializer = self.gate_bias_initializer,
        regularizer = self.gate_bias_regularizer, constraint = self.gate_bias_constraint })
    end
  end
  if self.use_gate_bias then
    for t = 1, self:gates_count() do track("gate_bias_" .. t) end
  end
end

-- expert outputs as a [B, units, E] view
function MMoE:expert_outputs(x)
  local U, E = self.units, self.num_experts
  local hidden = self.expert_hidden_units or {}
  local prec = moe.get_precision() -- the experts' GEMMs (the gates' stay fp32)
  if #hidden == 0 then
    local F = x:size(2)
    local b = self.use_expert_bias and self.expert_bias:view(U * E) or nil
    if self.expert_activation == "relu" then -- fused into the linear op
      return moe.linear(x, self.expert_kernel:view(F, U * E), b, "relu", prec):view(-1, U, E)
    end
    return self._expert_act(moe.linear(x, self.expert_kernel:view(F, U * E), b, nil, prec):view(-1, U, E))
  end
  local h = x
  for l = 1, #hidden do
    h = h:matmul(self["expert_hidden_kernel_" .. l], prec)               -- [E,B,h]
    if self.use_expert_bias then h = h + self["expert_hidden_bias_" .. l]:unsqueeze(2) end
    h = self._hidden_act(h)
  end
  h = h:matmul(self.expert_kernel, prec)                                 -- [E,B,U]
  if self.use_expert_bias then h = h + self.expert_bias:unsqueeze(2) end
  return self._expert_act(h):permute(2, 3, 1)                            -- [B,U,E] view
end

-- gate weights [B, E] of each gate (a list); for plots of expert utilisation
function MMoE:gate_weights(x)
  return on_rows(x, function(x2)
    local out = {}
    for t = 1, self:gates_count() do
      local z = moe.linear(x2, self["gate_kernel_" .. t], self.use_gate_bias and self["gate_bias_" .. t] or nil)
      out[t] = self._gate_act(z)
    end
    return out
  end)
end

function MMoE:forward(x)
  local F = x:size(-1)
  if F ~= self._in_features then
    error(("%s \"%s\": input has %d features but the layer was built for %d"):format(self.class_name, self.name, F,
      self._in_features), 0)
  end
  return on_rows(x, function(x2)
    local h = self:expert_outputs(x2)
    local gates = self:gate_weights(x2)
    local last = {}
    for t, g in ipairs(gates) do last[t] = g:detach() end
    rawset(self, "last_gates", last)
    local outs = {}
    for t = 1, self.num_tasks do
      local g = gates[#gates == 1 and 1 or t]
      outs[t] = (#gates == 1 and t > 1) and outs[1] or moe.mixture(h, g)
      if self._activity_reg then self:add_loss(self._activity_reg(outs[t])) end
    end
    return outs
  end)
end

-- OMoE: the one-gate mixture of the MMoE paper (MMoE with num_gates = 1)
local OMoE = class("OMoE", MMoE)
nn.OMoE = OMoE
function OMoE:init(opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if o.num_gates == nil then o.num_gates = 1 end
  MMoE.init(self, o)
end

-- SharedBottom: the paper's shared-bottom baseline, one MLP shared by every task
-- (hidden_units, then `units`), returned once per task like MMoE's outputs
local SharedBottom = class("SharedBottom", Module)
nn.SharedBottom = SharedBottom
function SharedBottom:init(opts)
  Module.init(self, opts)
  self:_options(opts, { units = REQUIRED, num_tasks = REQUIRED, hidden_units = false, activation = "relu",
    kernel_initializer = "glorot_uniform" })
  nn.positive_int(self, "units")
  nn.positive_int(self, "num_tasks")
  local layers = {}
  for _, h in ipairs(self.hidden_units or {}) do
    layers[#layers + 1] = nn.Dense { units = h, activation = self.activation, kernel_initializer = self.kernel_initializer }
  end
  layers[#layers + 1] = nn.Dense { units = self.units, activation = self.activation, kernel_initializer = self.kernel_initializer }
  for i, l in ipairs(layers) do self:add_module("dense_" .. i, l) end
end
function SharedBottom:forward(x)
  local h = x
  for i, l in ipairs(self:children()) do h = nn.call_child(self, i, l, h) end
  local outs = {}
  for t = 1, self.num_tasks do outs[t] = h end
  return outs
end

-- ------------------------------------------------------------------ CGC / PLE

-- CGC and PLE (Tang et al., RecSys 2020) as torch-rechub 0.9.0 builds them
-- (models/multi_task/ple.py), on a dense input [B, F] (no embedding layer). Every
-- expert, gate and tower is rechub's MLP: per size in dims, Linear -> BatchNorm1d
-- -> activation -> Dropout; a gate is an MLP of dims {n} with softmax. The
-- BatchNorms are PyTorch's (momentum 0.1, eps 1e-5, unbiased running variance).
-- Each expert is a child module of its own (one GEMM each): readable and exactly
-- rechub's graph; stacking them into batched GEMMs is left for when it matters.

-- PyTorch's BatchNorm1d in our BatchNormalization's terms (see nn.lua)
local TORCH_BN = { momentum = 0.9, epsilon = 1e-5, unbiased_moving_variance = true }
-- rechub's activation names, where ours differ ("leakyrelu" is torch's slope 0.01)
local RECHUB_ACT = { leakyrelu = function(x) return moe.where(x:gt(0), x, x * 0.01) end }

-- rechub's MLP(input_dim, output_layer, dims, dropout, activation)
local MLP = class("RechubMLP", Module)
function MLP:init(opts)
  Module.init(self, opts)
  self:_options(opts, { dims = {}, activation = "relu", dropout = 0, output_layer = false, where = "MLP" })
  rawset(self, "_act", RECHUB_ACT[self.activation] or nn.get_activation(self.activation, self.where))
  for i, d in ipairs(self.dims) do
    self:add_module("linear_" .. i, nn.Dense { units = d, name = "linear_" .. i })
    local bn = {}
    for k, v in pairs(TORCH_BN) do bn[k] = v end
    bn.name = "bn_" .. i
    self:add_module("bn_" .. i, nn.BatchNormalization(bn))
  end
  if self.output_layer then self:add_module("linear_out", nn.Dense { units = 1, name = "linear_out" }) end
end
function MLP:forward(x)
  local h = x
  for i = 1, #self.dims do
    h = nn.call_child(self, "linear_" .. i, self["linear_" .. i], h)
    h = nn.call_child(self, "bn_" .. i, self["bn_" .. i], h)
    h = nn.dropout(self._act(h), self.dropout, self._training)
  end
  if self.output_layer then h = nn.call_child(self, "linear_out", self.linear_out, h) end
  return h
end

-- options shared by CGC and PLE, checked once, at the caller's line
local function mlp_params(self, key, p, what)
  if type(p) ~= "table" or moe.is_tensor(p) then
    error(("%s: %s must be a table {dims = {...}, activation = ..., dropout = ...}, got %s")
      :format(self.class_name, what, moe._show(p)), 0)
  end
  for k in pairs(p) do
    if k ~= "dims" and k ~= "activation" and k ~= "dropout" then
      error(("%s: %s has an unknown key %s (keys: dims, activation, dropout)"):format(self.class_name, what,
        moe._show(k)), 0)
    end
  end
  local dims = p.dims
  if key == "expert_params" and (type(dims) ~= "table" or #dims == 0) then
    error(("%s: %s.dims must be a non-empty list of sizes, got %s"):format(self.class_name, what, moe._show(dims)), 0)
  end
  if dims ~= nil and type(dims) ~= "table" then
    error(("%s: %s.dims must be a list of sizes, got %s"):format(self.class_name, what, moe._show(dims)), 0)
  end
  for i, d in ipairs(dims or {}) do
    if type(d) ~= "number" or d < 1 or d ~= math.floor(d) then
      error(("%s: %s.dims[%d] must be a positive integer, got %s"):format(self.class_name, what, i, moe._show(d)), 0)
    end
  end
  local rate = p.dropout
  if rate ~= nil and (type(rate) ~= "number" or not (rate >= 0 and rate < 1)) then
    error(("%s: %s.dropout must be a number in [0, 1), got %s"):format(self.class_name, what, moe._show(rate)), 0)
  end
  if p.activation ~= nil and not RECHUB_ACT[p.activation] then
    nn.get_activation(p.activation, self.class_name .. " " .. what)
  end
end

-- the task list: task_types ({"classification", "regression", ...}) or num_tasks
local function task_setup(self)
  if self.task_types then
    if type(self.task_types) ~= "table" or #self.task_types == 0 then
      error(("%s: task_types must be a non-empty list of \"classification\" or \"regression\", got %s")
        :format(self.class_name, moe._show(self.task_types)), 0)
    end
    for i, t in ipairs(self.task_types) do
      if t ~= "classification" and t ~= "regression" then
        error(("%s: task_types[%d] must be \"classification\" or \"regression\", got %s"):format(self.class_name,
          i, moe._show(t)), 0)
      end
    end
    if self.num_tasks and self.num_tasks ~= #self.task_types then
      error(("%s: num_tasks (%s) and task_types (%d entries) disagree"):format(self.class_name,
        moe._show(self.num_tasks), #self.task_types), 0)
    end
    rawset(self, "num_tasks", #self.task_types)
  elseif not self.num_tasks then
    error(("%s: give task_types (a list of \"classification\" or \"regression\") or num_tasks"):format(self.class_name), 0)
  end
  nn.positive_int(self, "num_tasks")
  nn.positive_int(self, "n_expert_specific")
  if type(self.n_expert_shared) ~= "number" or self.n_expert_shared < 0
     or self.n_expert_shared ~= math.floor(self.n_expert_shared) then
    error(("%s: n_expert_shared must be an integer >= 0, got %s"):format(self.class_name,
      moe._show(self.n_expert_shared)), 0)
  end
  mlp_params(self, "expert_params", self.expert_params, "expert_params")
end

local function expert_mlp(p, where)
  return MLP { dims = p.dims, activation = p.activation or "relu", dropout = p.dropout or 0, where = where }
end

-- name the children by their field (weight paths such as cgc_1/expert_shared_2/linear_1/kernel)
local function name_children(self)
  for _, k in ipairs(self._children) do rawset(rawget(self, k), "name", k) end
  nn.structure_changed()
end

-- CGC: per task n_expert_specific experts, n_expert_shared shared ones; task t's
-- gate mixes its own and the shared experts. shared_gate = true adds rechub's
-- gate over all experts (a PLE level below the last) and a (T+1)-th output.
local CGC = class("CGC", Module)
nn.CGC = CGC
local cgc_defaults = { n_expert_specific = REQUIRED, n_expert_shared = REQUIRED, expert_params = REQUIRED,
  task_types = false, num_tasks = false, shared_gate = false }
function CGC:init(opts)
  Module.init(self, opts)
  self:_options(opts, cgc_defaults)
  task_setup(self)
  local T, S, H = self.num_tasks, self.n_expert_specific, self.n_expert_shared
  local where = self.class_name
  -- rechub's module order (its state_dict order, so get_weights' order)
  for i = 1, T * S do self:add_module("expert_specific_" .. i, expert_mlp(self.expert_params, where)) end
  for i = 1, H do self:add_module("expert_shared_" .. i, expert_mlp(self.expert_params, where)) end
  for t = 1, T do self:add_module("gate_specific_" .. t, MLP { dims = { S + H }, activation = "softmax" }) end
  if self.shared_gate then self:add_module("gate_shared", MLP { dims = { T * S + H }, activation = "softmax" }) end
  name_children(self)
end

-- xs: one tensor [B, F] (every expert and gate sees it) or rechub's list of T+1
-- tensors (task t's experts and gate read xs[t], the shared ones xs[T+1])
local function cgc_inputs(self, xs)
  local T = self.num_tasks
  if moe.is_tensor(xs) then
    local l = {}
    for i = 1, T + 1 do l[i] = xs end
    return l
  end
  if type(xs) ~= "table" or #xs ~= T + 1 then
    error(("%s \"%s\": expected a tensor [batch, features] or a list of %d tensors (one per task, then the "
      .. "shared experts' input), got %s"):format(self.class_name, self.name, T + 1,
      type(xs) == "table" and (#xs .. " inputs") or moe._show(xs)), 0)
  end
  return xs
end
function CGC:forward(xs)
  xs = cgc_inputs(self, xs)
  local T, S, H = self.num_tasks, self.n_expert_specific, self.n_expert_shared
  for i, x in ipairs(xs) do
    if not moe.is_tensor(x) or x:dim() ~= 2 then
      error(("%s \"%s\": input %d must be a tensor [batch, features], got %s"):format(self.class_name, self.name,
        i, moe._show(x)), 0)
    end
  end
  local function run(k, x) return nn.call_child(self, k, self[k], x) end
  local specific, shared = {}, {}
  for t = 1, T do
    for j = 1, S do
      local i = (t - 1) * S + j
      specific[i] = run("expert_specific_" .. i, xs[t])
    end
  end
  for j = 1, H do shared[j] = run("expert_shared_" .. j, xs[T + 1]) end
  -- sum_e g[b,e] h_e[b,:] as moe.mixture over h [B, U, E]
  local function mix(list, g) return moe.mixture(moe.stack(list, 3), g) end
  local outs, gates = {}, {}
  for t = 1, T do
    local list = {}
    for j = 1, S do list[j] = specific[(t - 1) * S + j] end
    for j = 1, H do list[S + j] = shared[j] end
    local g = run("gate_specific_" .. t, xs[t])
    gates[t] = g:detach()
    outs[t] = mix(list, g)
  end
  if self.shared_gate then
    local list = {}
    for i, h in ipairs(specific) do list[i] = h end
    for j = 1, H do list[#list + 1] = shared[j] end
    local g = run("gate_shared", xs[T + 1])
    gates[T + 1] = g:detach()
    outs[T + 1] = mix(list, g)
  end
  rawset(self, "last_gates", gates)
  return outs
end

-- PLE: n_level CGC levels (every level but the last with the shared gate; level 1
-- reads x, level l the outputs of level l - 1), then with tower_params_list per
-- task a tower MLP, a Linear(., 1) and the prediction (sigmoid for
-- "classification"): a list of [B, 1]; without it the last level's T outputs.
local PLE = class("PLE", Module)
nn.PLE = PLE
function PLE:init(opts)
  Module.init(self, opts)
  self:_options(opts, { n_level = REQUIRED, n_expert_specific = REQUIRED, n_expert_shared = REQUIRED,
    expert_params = REQUIRED, tower_params_list = false, task_types = false, num_tasks = false })
  nn.positive_int(self, "n_level")
  task_setup(self)
  local T = self.num_tasks
  local towers = self.tower_params_list
  if towers then
    if type(towers) ~= "table" or #towers ~= T then
      error(("PLE: tower_params_list must be a list of %d tables (one per task), got %s"):format(T,
        type(towers) == "table" and (#towers .. " entries") or moe._show(towers)), 0)
    end
    for t, p in ipairs(towers) do mlp_params(self, "tower", p, "tower_params_list[" .. t .. "]") end
  end
  for l = 1, self.n_level do
    local c = CGC { n_expert_specific = self.n_expert_specific, n_expert_shared = self.n_expert_shared,
      expert_params = self.expert_params, num_tasks = T, shared_gate = l < self.n_level }
    self:add_module("cgc_" .. l, c)
  end
  if towers then
    for t, p in ipairs(towers) do
      self:add_module("tower_" .. t, MLP { dims = p.dims or {}, activation = p.activation or "relu",
        dropout = p.dropout or 0, output_layer = true, where = "PLE" })
    end
  end
  name_children(self)
end
function PLE:forward(x)
  if not moe.is_tensor(x) or x:dim() ~= 2 then
    error(("PLE \"%s\": expected a tensor [batch, features], got %s"):format(self.name, moe._show(x)), 0)
  end
  local h = x
  for l = 1, self.n_level do h = nn.call_child(self, "cgc_" .. l, self["cgc_" .. l], h) end
  if not self.tower_params_list then return h end
  local ys = {}
  for t = 1, self.num_tasks do
    local y = nn.call_child(self, "tower_" .. t, self["tower_" .. t], h[t])
    -- rechub's PredictionLayer; with num_tasks in place of task_types, the logits
    ys[t] = self.task_types and self.task_types[t] == "classification" and y:sigmoid() or y
  end
  return ys
end

return nn
