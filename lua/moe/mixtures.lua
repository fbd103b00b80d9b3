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

return nn
