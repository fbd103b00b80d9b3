-- Sparse, token-routed MoE with TF Model Garden (and flaxformer) semantics:
-- FeedForwardExperts, ExpertsChooseMaskedRouter, TokensChooseMaskedRouter,
-- MoeLayer and MoeLayerWithBackbone.
--
-- Dispatch is index-based: the router's plan lists the kept (token, expert)
-- pairs sorted by expert; the experts read their rows with index_select, run
-- one GEMM per expert on contiguous rows (moe.grouped_matmul), and the outputs
-- are scaled by the combine weights and scatter-added back (index_add). Every
-- step is an autograd op, so the backward pass is index-based too.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local nn = require "moe.nn"
local inits = require "moe.initializers"
local I = inits.initializers

local Module, class, REQUIRED = nn.Module, nn.class, nn.REQUIRED

-- Python's round(): halves go to the even neighbour
local function round_half_even(v)
  local f = math.floor(v)
  local d = v - f
  if d > 0.5 or (d == 0.5 and f % 2 == 1) then return f + 1 end
  return f
end
nn.round_half_even = round_half_even

local stacked = inits.stacked

-- TF Model Garden's default kernel initializer for the whole MoeLayer family
-- (experts, routers, backbone): Keras's TruncatedNormal(stddev=0.02), redrawn
-- beyond two standard deviations (so |w| <= 0.04). A fresh table per layer.
local function tf_kernel_initializer() return { class_name = "truncated_normal", config = { stddev = 0.02 } } end

-- ------------------------------------------------------------------ FeedForwardExperts

-- num_experts independent FFNs: intermediate_kernel [E, H, d_ff] (+ bias [E, d_ff]),
-- activation, inner dropout, output_kernel [E, d_ff, H] (+ bias [E, H]), output dropout.
-- Called on [E, n, H] (each expert its own rows, as in TF); MoeLayer uses :grouped.
local FeedForwardExperts = class("FeedForwardExperts", Module)
nn.FeedForwardExperts = FeedForwardExperts
function FeedForwardExperts:init(opts)
  Module.init(self, opts)
  self:_options(opts, { num_experts = REQUIRED, d_ff = REQUIRED, inner_dropout = 0.0, output_dropout = 0.0,
    activation = "gelu", kernel_initializer = tf_kernel_initializer(), bias_initializer = "zeros" })
  nn.positive_int(self, "num_experts")
  nn.positive_int(self, "d_ff")
  for _, k in ipairs { "inner_dropout", "output_dropout" } do
    if type(self[k]) ~= "number" or self[k] < 0 or self[k] >= 1 then
      error(("FeedForwardExperts: %s must be in [0, 1), got %s"):format(k, moe._show(self[k])), 3)
    end
  end
  rawset(self, "_act", nn.get_activation(self.activation, "FeedForwardExperts"))
  I.get(self.kernel_initializer, "FeedForwardExperts")
end
function FeedForwardExperts:build(shape)
  local H = shape[#shape]
  local E, D = self.num_experts, self.d_ff
  local init = I.get(self.kernel_initializer)
  local bias_init = I.get(self.bias_initializer, "FeedForwardExperts")
  -- expert parallel (MoeLayer's option): this rank keeps experts lo .. lo + n - 1
  -- only, drawn as the whole layer would draw them and then sliced, so that 1
  -- rank and N ranks start from the same model under the same seed
  local ep = rawget(self, "_ep")
  local n = ep and ep.n or E
  local function shard(w) return ep and w:narrow(1, ep.lo, n):clone() or w end
  local function st(shp) return function(_, dtype) return shard(stacked(init, E, shp, dtype)) end end
  local function b(f) return function(_, dtype) return shard(bias_init({ E, f }, dtype)) end end
  self:add_weight("intermediate_kernel", { n, H, D }, { initializer = st { H, D } })
  self:add_weight("intermediate_bias", { n, D }, { initializer = b(D) })
  self:add_weight("output_kernel", { n, D, H }, { initializer = st { D, H } })
  self:add_weight("output_bias", { n, H }, { initializer = b(H) })
end
-- get_weights()/set_weights() list, as TF's FeedForwardExperts.get_weights():
-- intermediate kernel [E, H, d_ff], bias [E, 1, d_ff], output kernel [E, d_ff, H],
-- bias [E, 1, H] (the biases are stored [E, F]; these are views onto them)
-- (expert parallel: views onto this rank's shard, marked as shards, so that
-- get_weights gathers the whole layer and set_weights keeps the slice)
function FeedForwardExperts:_keras_weights()
  if not rawget(self, "intermediate_kernel") then return {}, {} end
  local ts = { self.intermediate_kernel:detach(), self.intermediate_bias:detach():unsqueeze(2),
      self.output_kernel:detach(), self.output_bias:detach():unsqueeze(2) }
  local ep = rawget(self, "_ep")
  if ep then for _, t in ipairs(ts) do nn.shard_of[t] = ep end end
  return { "intermediate_kernel", "intermediate_bias", "output_kernel", "output_bias" }, ts
end
local function dropout(self, x, rate) return nn.dropout(x, rate, self._training) end
function FeedForwardExperts:forward(x, counts, expert)
  if counts then return self:grouped(x, counts, expert) end
  local E = rawget(self, "_ep") and self._ep.n or self.num_experts -- (expert parallel: this rank's experts)
  if x:dim() ~= 3 or x:size(1) ~= E then
    error(("FeedForwardExperts \"%s\": expected [num_experts=%d, tokens, hidden], got [%s]")
      :format(self.name, E, table.concat(x:shape(), ",")), 0)
  end
  local prec = moe.get_precision() -- the experts' GEMMs (moe.set_precision)
  local h = self._act(x:matmul(self.intermediate_kernel, prec) + self.intermediate_bias:unsqueeze(2))
  h = dropout(self, h, self.inner_dropout)
  local y = h:matmul(self.output_kernel, prec) + self.output_bias:unsqueeze(2)
  return dropout(self, y, self.output_dropout)
end
-- rows [A, H] sorted by expert, counts [E] int64, expert [A] (1-based) -> [A, H]
function FeedForwardExperts:grouped(rows, counts, expert)
  local prec = moe.get_precision() -- the experts' GEMMs, forward and backward (moe.set_precision)
  local h = moe.grouped_matmul(rows, self.intermediate_kernel, self.intermediate_bias, counts, prec)
  h = dropout(self, self._act(h), self.inner_dropout)
  local y = moe.grouped_matmul(h, self.output_kernel, self.output_bias, counts, prec)
  return dropout(self, y, self.output_dropout)
end

-- ------------------------------------------------------------------ routers

local router_defaults = {
  num_experts = REQUIRED, jitter_noise = 0.0, use_bias = true, router_z_loss_weight = 0.0,
  bias_initializer = "zeros", export_metrics = true, noisy_gating = false,
}

local function router_init(self, opts, extra)
  Module.init(self, opts)
  local d = {}
  for k, v in pairs(router_defaults) do d[k] = v end
  d.kernel_initializer = tf_kernel_initializer()
  for k, v in pairs(extra or {}) do d[k] = v end
  self:_options(opts, d)
  nn.positive_int(self, "num_experts")
  if type(self.jitter_noise) ~= "number" or self.jitter_noise < 0 or self.jitter_noise >= 1 then
    error(("%s: jitter_noise must be in [0, 1), got %s"):format(self.class_name, moe._show(self.jitter_noise)), 4)
  end
end

local function router_build(self, shape)
  local H = shape[#shape]
  -- Keras order: kernel [H, E], then bias [E]
  self:add_weight("kernel", { H, self.num_experts }, { initializer = self.kernel_initializer })
  if self.use_bias then self:add_weight("bias", { self.num_experts }, { initializer = self.bias_initializer }) end
  if self.noisy_gating then
    self:add_weight("noise_kernel", { H, self.num_experts }, { initializer = "zeros" })
  end
end

-- logits and probabilities [N, E] of tokens x [N, H], in float32 (float64 inputs
-- stay float64); jitter multiplies the router's inputs in training only
function nn.router_logits(self, x)
  local xr = x:dtype() == "float64" and x or x:float()
  if self._training and self.jitter_noise > 0 then
    xr = xr * (moe.rand(xr:shape(), { dtype = xr:dtype(), device = xr:device() }) * (2 * self.jitter_noise) + (1 - self.jitter_noise))
  end
  local k = self.kernel:to(xr:dtype())
  -- the router's GEMMs stay fp32 whatever moe.cuda.set_precision gives the experts
  local function fp32_matmul(a, b)
    if a:device() ~= "cuda" or moe.cuda.get_precision() == "fp32" then return a:matmul(b) end
    local old = moe.cuda.set_precision("fp32")
    local ok, r = pcall(a.matmul, a, b)
    moe.cuda.set_precision(old)
    if not ok then error(r, 0) end
    return r
  end
  local logits = fp32_matmul(xr, k)
  if self.use_bias then logits = logits + self.bias:to(xr:dtype()) end
  if self.noisy_gating and self._training then -- Shazeer et al. 2017: learned per-expert noise
    local std = fp32_matmul(xr, self.noise_kernel:to(xr:dtype())):softplus()
    logits = logits + moe.randn(logits:shape(), { dtype = logits:dtype(), device = logits:device() }) * std
  end
  return logits, logits:softmax(-1)
end

-- router z-loss: mean over tokens of logsumexp(logits)^2 (unscaled)
function nn.router_z_loss(logits)
  return logits:logsumexp(-1):square():mean()
end

-- the metrics every router reports, from a plan. Values computed from device
-- tensors stay device scalars (read when the logs or metrics() ask), so the
-- router does not wait for the device; the counts are on the host already.
local function report(self, plan, N, E, total_capacity)
  local A = plan.token:numel()
  local m = {}
  local hit -- tokens sent to at least one expert
  if A > 0 and plan.token:device() ~= "cpu" then -- (index_add on the plan's own indices: no range-check round trip)
    local o = { dtype = "float32", device = plan.token:device() }
    hit = moe.zeros(N, o):index_add(1, plan.token, moe.ones(A, o)):gt(0)
  elseif A > 0 then
    hit = moe.bincount(plan.token, nil, N):gt(0)
  end
  m.fraction_tokens_left_behind = A > 0 and 1 - hit:sum():to("float64") / N or 1
  m.expert_usage = total_capacity > 0 and A / total_capacity or 0
  m.router_confidence = A > 0 and plan.gate:detach():sum():to("float64") / A or 0
  local counts = plan.counts:totable()
  for e = 1, E do m["expert_" .. e .. "_tokens"] = counts[e] end
  if self.export_metrics ~= false then
    for k, v in pairs(m) do self:add_metric(k, v) end
  end
  return m
end

-- common to both routers: z-loss and its metrics
local function z_loss(self, logits)
  local unscaled = nn.router_z_loss(logits)
  local scaled = unscaled * self.router_z_loss_weight
  if self.router_z_loss_weight > 0 then self:add_loss(scaled) end
  if self.export_metrics ~= false then
    self:add_metric("router_z_loss", scaled:detach())
    self:add_metric("unscaled_router_z_loss", unscaled:detach())
  end
end

-- TokensChooseMaskedRouter: every token picks its top-k experts
local TokensChooseMaskedRouter = class("TokensChooseMaskedRouter", Module)
nn.TokensChooseMaskedRouter = TokensChooseMaskedRouter
function TokensChooseMaskedRouter:init(opts)
  router_init(self, opts, { num_selected_experts = 1, batch_prioritized_routing = false,
    ignore_padding_tokens = false, load_balancing_loss_weight = 0.0, renormalize_gates = false })
  nn.positive_int(self, "num_selected_experts")
  if self.num_selected_experts > self.num_experts then
    error(("TokensChooseMaskedRouter: num_selected_experts %d exceeds num_experts %d")
      :format(self.num_selected_experts, self.num_experts), 3)
  end
end
TokensChooseMaskedRouter.build = router_build

-- route(x [G, T, H], capacity) -> plan {token, expert, rank, counts, gate}
-- (token is the 1-based index into the G*T flattened tokens; capacity < 0: dropless)
function TokensChooseMaskedRouter:forward(x, capacity)
  local G, T, H = x:size(1), x:size(2), x:size(3)
  local E, k = self.num_experts, self.num_selected_experts
  local N = G * T
  local x2 = x:reshape(N, H)
  local logits, probs = nn.router_logits(self, x2)
  -- padding tokens (ignore_padding_tokens): inputs that are all zeros. As the
  -- reference does, they are not dispatched, they count for no expert in the
  -- load-balancing loss, their probabilities are zeroed in it, and their logits
  -- are zeroed before the z-loss (the means still divide by all tokens)
  local valid, keep
  if self.ignore_padding_tokens then
    valid = x2:ne(0):any(2)                                 -- [N] bool
    keep = valid:to(probs:dtype()):unsqueeze(2)             -- [N,1]
  end
  z_loss(self, keep and logits * keep or logits)
  local vals, idx = probs:detach():topk(k, 2)               -- [N,k]: choices by descending probability
  local order
  if self.batch_prioritized_routing then
    order = moe.argsort(vals:select(2, 1):view(G, T), 2, true) -- by descending top-1 probability
  end
  local token, expert, rank, counts = moe.core.route_plan(idx:view(G, T, k), order, valid and valid:view(G, T), E, capacity)
  local gate -- combine weight = router probability of each kept (token, expert)
  if probs:device() == "cpu" then
    gate = probs:reshape(-1):index_select(1, (token - 1) * E + expert)
  else -- the same values through the plan's own indices, which the device does not range-check again
    gate = probs:index_select(1, token):gather(2, expert:view(-1, 1)):view(-1)
  end
  if self.renormalize_gates and token:numel() > 0 then   -- option: kept gates of a token sum to 1
    local denom = moe.zeros(N, { dtype = gate:dtype(), device = gate:device() }):index_add(1, token, gate)
    gate = gate / denom:index_select(1, token)
  end
  -- load-balancing loss (Switch, as flaxformer computes it): per group
  -- E^2 * mean_e f_e P_e, averaged over groups; f_e: fraction of the group's
  -- tokens with e among their top-k choices (before capacity; sum_e f_e = k),
  -- P_e: mean router probability of e. k when balanced (1 for top-1).
  local gid = moe.arange(0, G, { dtype = "int64", device = x:device() }):view(G, 1, 1):expand(G, T, k)
  local bins = (gid * E + idx:view(G, T, k)):reshape(-1)
  local w = keep and keep:expand(N, k):reshape(-1) or nil
  local f
  if bins:device() == "cpu" then
    f = moe.bincount(bins, w, G * E):view(G, E):to(probs:dtype()) / T
  else -- on the device: one-hot sums (a bincount would read the values' range back)
    local hot = idx:view(G, T, k, 1):eq(moe.arange(1, E + 1, { device = bins:device() }):view(1, 1, 1, E))
      :to(probs:dtype())
    if keep then hot = hot * keep:view(G, T, 1, 1) end
    f = hot:sum(3):sum(2) / T
  end
  local P = (keep and probs * keep or probs):view(G, T, E):mean(2)
  local lb = (f * P):mean() * (E * E)
  if self.load_balancing_loss_weight > 0 then self:add_loss(lb * self.load_balancing_loss_weight) end
  if self.export_metrics ~= false then self:add_metric("load_balancing_loss", lb:detach()) end
  local plan = { token = token, expert = expert, rank = rank, counts = counts, gate = gate, probs = probs }
  local cap = capacity >= 0 and capacity or math.max(1, unpack(counts:totable()))
  report(self, plan, N, E, E * cap * G)
  return plan
end

-- ExpertsChooseMaskedRouter: every expert picks its top-`capacity` tokens of each group
local ExpertsChooseMaskedRouter = class("ExpertsChooseMaskedRouter", Module)
nn.ExpertsChooseMaskedRouter = ExpertsChooseMaskedRouter
function ExpertsChooseMaskedRouter:init(opts) router_init(self, opts) end
ExpertsChooseMaskedRouter.build = router_build
function ExpertsChooseMaskedRouter:forward(x, capacity)
  local G, T, H = x:size(1), x:size(2), x:size(3)
  local E = self.num_experts
  local N = G * T
  local logits, probs = nn.router_logits(self, x:reshape(N, H))
  z_loss(self, logits)
  local C = capacity < 0 and T or math.min(capacity, T)
  local pt = probs:view(G, T, E):permute(3, 1, 2)           -- [E,G,T]
  local vals, idx = pt:topk(C, 3)                           -- each expert's C best tokens of each group
  -- sorted by expert: [E, G, C] flattened
  local gate = vals:reshape(-1)
  -- each pick's token number, picked from the token numbers (so the engine
  -- knows their range: no check of the index on the device)
  local tokens = moe.arange(1, N + 1, { dtype = "int64", device = x:device() }):view(1, G, T):expand(E, G, T)
  local token = tokens:gather(3, idx):reshape(-1)
  local expert = moe.arange(1, E + 1, { dtype = "int64", device = x:device() }):view(E, 1):expand(E, G * C):reshape(-1)
  local counts = moe.full({ E }, G * C, { dtype = "int64", device = "cpu" }) -- sizes: on the host, as route_plan's
  local plan = { token = token, expert = expert, counts = counts, gate = gate, probs = probs }
  -- every expert fills its buffer: no load-balancing loss, but the metric is
  -- exported as 0, as TF Model Garden does
  if self.export_metrics ~= false then self:add_metric("load_balancing_loss", 0.0) end
  report(self, plan, N, E, E * C * G)
  return plan
end

-- ------------------------------------------------------------------ MoeLayer

local MoeLayer = class("MoeLayer", Module)
nn.MoeLayer = MoeLayer
-- a sub-layer given as a module, or as {class_name, config} (from a checkpoint)
local function as_module(v)
  if type(v) == "table" and not nn.is_module(v) and type(v.class_name) == "string" then
    local cls = nn.registry[v.class_name]
    if cls then return cls(v.config or {}) end
  end
  return v
end

function MoeLayer:init(opts)
  Module.init(self, opts)
  local experts, router = as_module(opts.experts), as_module(opts.router)
  if not nn.is_module(experts) or not experts.grouped then
    error(("MoeLayer: option 'experts' must be an nn.FeedForwardExperts, got %s"):format(moe._show(experts)), 3)
  end
  if not nn.is_module(router) or not router.num_experts or not router.forward then
    error(("MoeLayer: option 'router' must be an nn.TokensChooseMaskedRouter or nn.ExpertsChooseMaskedRouter, got %s"):format(moe._show(router)), 3)
  end
  if experts.num_experts ~= router.num_experts then
    error(("MoeLayer: the router has %d experts but experts has %d"):format(router.num_experts, experts.num_experts), 3)
  end
  local o = {}
  for k, v in pairs(opts) do if k ~= "experts" and k ~= "router" then o[k] = v end end
  self:_options(o, { train_capacity_factor = 1.0, eval_capacity_factor = 1.0, examples_per_group = 1.0,
    dropless = false, expert_parallel = false })
  for _, k in ipairs { "train_capacity_factor", "eval_capacity_factor", "examples_per_group" } do
    if type(self[k]) ~= "number" or self[k] <= 0 then
      error(("MoeLayer: %s must be a positive number, got %s"):format(k, moe._show(self[k])), 3)
    end
  end
  if self.expert_parallel ~= false and self.expert_parallel ~= true then
    error(("MoeLayer: expert_parallel must be true or false, got %s"):format(moe._show(self.expert_parallel)), 3)
  end
  if self.expert_parallel then
    -- the experts are divided among the ranks of moe.distributed (0-based):
    -- rank r owns experts r * E / W + 1 .. (r + 1) * E / W
    local dist = moe.distributed
    local E, W, r = experts.num_experts, dist.world_size(), dist.rank()
    if E % W ~= 0 then
      error(("MoeLayer: expert_parallel divides the experts among the ranks, but num_experts %d is not a "
        .. "multiple of the world size %d"):format(E, W), 3)
    end
    if experts.built then
      error(("MoeLayer: expert_parallel needs experts that are not built yet (FeedForwardExperts \"%s\" holds all "
        .. "%d experts' weights; each rank builds only its own)"):format(experts.name, E), 3)
    end
    local ep = { rank = r, world = W, n = E / W, lo = r * (E / W) + 1 }
    rawset(experts, "_ep", ep)
    rawset(self, "_ep", ep)
  end
  self:add_module("router", router)
  self:add_module("experts", experts)
end

-- nn.expert_shards(module) -> {tensor = {rank, world, lo, n}}: the weights that
-- live on one rank only (the experts of expert-parallel MoeLayers: this rank's
-- n experts from lo, split along dim 1 of each weight)
function nn.expert_shards(module)
  local out = {}
  for _, e in ipairs(module:modules()) do
    local m, ep = e[2], rawget(e[2], "_ep")
    if ep and m.grouped then
      for _, list in ipairs { m._params, m._buffers } do
        for _, k in ipairs(list) do
          local t = rawget(m, k)
          if t then out[t] = ep end
        end
      end
    end
  end
  return out
end

-- nn.expert_parallel_params(module) -> {tensor = true}: the contract with the
-- data-parallel trainer. These weights are owned by one rank each: they are
-- neither broadcast from rank 0 nor all-reduced; their gradients are only
-- divided by the world size (the global loss is the mean of the ranks' losses,
-- and all_to_all's backward has already summed every rank's share into the
-- owner's gradient). Everything else is data parallel.
function nn.expert_parallel_params(module)
  local out = {}
  for t in pairs(nn.expert_shards(module)) do out[t] = true end
  return out
end

function MoeLayer:get_config()
  local c = Module.get_config(self)
  c.router = { class_name = self.router.class_name, config = self.router:get_config() }
  c.experts = { class_name = self.experts.class_name, config = self.experts:get_config() }
  return c
end

-- get_weights()/set_weights(): TF's MoeLayer order, the experts' weights
-- (FeedForwardExperts: [E,H,d_ff], [E,1,d_ff], [E,d_ff,H], [E,1,H]), then the
-- router's (kernel [H, E], bias [E])
local function prefixed(m, out_n, out_t)
  local n, t = nn.keras_weights(m)
  for i = 1, #n do out_n[#out_n + 1] = m.name .. "/" .. n[i]; out_t[#out_t + 1] = t[i] end
end
function MoeLayer:_keras_weights()
  local names, ts = {}, {}
  prefixed(self.experts, names, ts)
  prefixed(self.router, names, ts)
  return names, ts
end

function MoeLayer:capacity(tokens_per_group)
  if self.dropless then return -1 end
  local cf = self._training and self.train_capacity_factor or self.eval_capacity_factor
  return math.floor(round_half_even(cf * tokens_per_group / self.router.num_experts))
end

-- x [B, S, H] (or [N, H]: one sequence of N tokens) -> same shape; a token
-- dropped by every expert it chose outputs zero (the caller's residual carries it)
function MoeLayer:forward(x)
  local shape = x:shape()
  if #shape ~= 2 and #shape ~= 3 then
    error(("MoeLayer \"%s\": expected input [batch, seq, hidden] or [tokens, hidden], got [%s]")
      :format(self.name, table.concat(shape, ",")), 0)
  end
  local H = shape[#shape]
  local S = #shape == 3 and shape[2] or shape[1]
  local N = #shape == 3 and shape[1] * shape[2] or shape[1]
  local tpg = math.floor(S * self.examples_per_group)
  if tpg < 1 or N % tpg ~= 0 then
    error(("MoeLayer \"%s\": %d tokens do not split into groups of %d (seq_len %d x examples_per_group %g)")
      :format(self.name, N, tpg, S, self.examples_per_group), 0)
  end
  local G = N / tpg
  local x2 = x:reshape(N, H)
  local plan = nn.call_child(self, "router", self.router, x2:view(G, tpg, H), self:capacity(tpg))
  rawset(self, "last_plan", plan)
  if rawget(self, "_ep") then return self:_expert_parallel(x2, plan, N, H):reshape(shape) end
  if plan.token:numel() == 0 then return x * 0 end
  local rows = x2:index_select(1, plan.token)
  local out = nn.call_child(self, "experts", self.experts, rows, plan.counts, plan.expert)
  local y = moe.zeros(N, H, { dtype = x:dtype(), device = x:device() }):index_add(1, plan.token, out * plan.gate:to(out:dtype()):unsqueeze(2))
  return y:reshape(shape)
end


-- The expert-parallel forward. Every rank routes its own tokens; the ranks
-- exchange their per-expert counts (one all_gather: every rank then knows
-- every rank's load); each rank sends its rows, already sorted by expert, to
-- their experts' owners (one all_to_all); the owner regroups what it received
-- by local expert (the rows come per sender, each sender's sorted by expert),
-- runs its grouped GEMM, puts the rows back in arrival order and returns them
-- (the mirror all_to_all); the sender combines them with the gates. Backward
-- is the mirror through autograd. No step depends on the data's values
-- (zero rows travel as zero rows), so every rank runs the same collectives in
-- the same order, forward and backward.
function MoeLayer:_expert_parallel(x2, plan, N, H)
  local dist = moe.distributed
  local ep = self._ep
  local W, n, lo = ep.world, ep.n, ep.lo
  local E = self.router.num_experts
  local dev = x2:device()
  -- device rows travel through host memory unless moe.distributed has NCCL
  -- for them (the moves are autograd ops: the gradients travel back the same way)
  local info = dev ~= "cpu" and dist.info() or nil
  local stage = info and not (info.nccl_built and not info.nccl_reason)
  local function all_to_all(t, counts)
    if not stage then return dist.all_to_all(t, counts) end
    local y, r = dist.all_to_all(t:to("cpu"), counts)
    return y:to(dev), r
  end
  local function index(list) return moe.tensor(list, { dtype = "int64" }):to(dev) end
  local C = dist.all_gather(plan.counts:view(1, E)):totable() -- C[r + 1][e]: rank r's rows for expert e
  local mine = C[ep.rank + 1]
  local send, load, total = {}, {}, 0
  for q = 1, W do
    local s, l = 0, 0
    for e = (q - 1) * n + 1, q * n do
      s = s + mine[e]
      for r = 1, W do l = l + C[r][e] end
    end
    send[q], load[q], total = s, l, total + l
  end
  -- what each rank's experts process: the load is visible in fit's logs
  local maxl = 0
  for q = 1, W do
    self:add_metric("rank_" .. (q - 1) .. "_tokens", load[q])
    maxl = math.max(maxl, load[q])
  end
  self:add_metric("rank_imbalance", total > 0 and maxl / (total / W) or 1)
  local rows = x2:index_select(1, plan.token)
  local got, recv = all_to_all(rows, send)
  -- arrival order: sender r's block, within it expert lo .. lo + n - 1; the
  -- GEMM wants expert-major order: perm[i] is the arrival row of grouped row i
  local perm, counts, start, at = {}, {}, {}, 0
  for r = 1, W do
    start[r] = {}
    for j = 1, n do start[r][j] = at; at = at + C[r][lo + j - 1] end
  end
  local identity = true
  for j = 1, n do
    local c = 0
    for r = 1, W do
      local s0 = start[r][j]
      for i = 1, C[r][lo + j - 1] do
        perm[#perm + 1] = s0 + i
        identity = identity and s0 + i == #perm
      end
      c = c + C[r][lo + j - 1]
    end
    counts[j] = c
  end
  local counts_t = moe.tensor(counts, { dtype = "int64" })
  local out
  if identity then -- one rank, or one expert per rank: arrival order is expert order
    out = nn.call_child(self, "experts", self.experts, got, counts_t)
  else
    local inv = {}
    for i, a in ipairs(perm) do inv[a] = i end
    local grouped = got:index_select(1, index(perm))
    out = nn.call_child(self, "experts", self.experts, grouped, counts_t)
    out = out:index_select(1, index(inv))
  end
  local back = all_to_all(out, recv) -- each sender's rows back to it, in the order it sent them
  return moe.zeros(N, H, { dtype = x2:dtype(), device = dev }):index_add(1, plan.token, back * plan.gate:to(back:dtype()):unsqueeze(2))
end

-- MoeLayerWithBackbone: the sparse layer plus a dense FFN on every token
-- (Dense(backbone_d_ff, activation) -> Dense(H)); output = moe(x) + backbone(x)
local MoeLayerWithBackbone = class("MoeLayerWithBackbone", Module)
nn.MoeLayerWithBackbone = MoeLayerWithBackbone
function MoeLayerWithBackbone:init(opts)
  Module.init(self, opts)
  opts.moe_layer = as_module(opts.moe_layer)
  if not nn.is_module(opts.moe_layer) or opts.moe_layer.class_name ~= "MoeLayer" then
    error(("MoeLayerWithBackbone: option 'moe_layer' must be an nn.MoeLayer, got %s"):format(moe._show(opts.moe_layer)), 3)
  end
  local o = {}
  for k, v in pairs(opts) do if k ~= "moe_layer" then o[k] = v end end
  self:_options(o, { backbone_d_ff = REQUIRED, dropout_rate = 0.0, activation = "gelu",
    kernel_initializer = tf_kernel_initializer() })
  nn.positive_int(self, "backbone_d_ff")
  self:add_module("moe_layer", opts.moe_layer)
  rawset(self, "_act", nn.get_activation(self.activation, "MoeLayerWithBackbone"))
end
function MoeLayerWithBackbone:get_config()
  local c = Module.get_config(self)
  c.moe_layer = { class_name = "MoeLayer", config = self.moe_layer:get_config() }
  return c
end
function MoeLayerWithBackbone:build(shape)
  local H = shape[#shape]
  self:add_weight("backbone_kernel_1", { H, self.backbone_d_ff }, { initializer = self.kernel_initializer })
  self:add_weight("backbone_bias_1", { self.backbone_d_ff }, { initializer = "zeros" })
  self:add_weight("backbone_kernel_2", { self.backbone_d_ff, H }, { initializer = self.kernel_initializer })
  self:add_weight("backbone_bias_2", { H }, { initializer = "zeros" })
end
-- get_weights()/set_weights(): TF's order, the sparse layer's weights, then the
-- backbone's (intermediate kernel [H, d_ff], bias [d_ff], output kernel [d_ff, H], bias [H])
function MoeLayerWithBackbone:_keras_weights()
  local names, ts = {}, {}
  prefixed(self.moe_layer, names, ts)
  for _, k in ipairs { "backbone_kernel_1", "backbone_bias_1", "backbone_kernel_2", "backbone_bias_2" } do
    if rawget(self, k) then names[#names + 1] = k; ts[#ts + 1] = rawget(self, k):detach() end
  end
  return names, ts
end
function MoeLayerWithBackbone:forward(x)
  local h = self._act(x:matmul(self.backbone_kernel_1) + self.backbone_bias_1)
  h = dropout(self, h, self.dropout_rate)
  local dense = h:matmul(self.backbone_kernel_2) + self.backbone_bias_2
  return nn.call_child(self, "moe_layer", self.moe_layer, x) + dense
end

return nn
