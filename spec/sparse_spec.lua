-- Sparse MoE: golden vectors, routing against a numpy reference
-- (spec/fixtures/routing_cases.json from spec/fixtures/make_routing_fixture.py),
-- the index-based layer against a dense per-token loop, gradchecks, behaviour.
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"
local cjson = require "cjson"
local gradcheck = moe.testing.gradcheck

local function read(p) local f = assert(io.open(p)); local s = f:read("*a"); f:close(); return s end

-- a router whose logits are its inputs: H = E, kernel = I, no bias
local function identity_router(cls, E, opts)
  local o = { num_experts = E, use_bias = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  local r = cls(o)
  r(moe.zeros(1, 1, E, { dtype = "float64" }), 1)
  r:double()
  r:set_weights { moe.eye(E, { dtype = "float64" }) }
  return r
end

local function dense_combine(plan, N, E)
  local z = moe.zeros(N * E, { dtype = "float64" })
  if plan.token:numel() == 0 then return z:view(N, E) end
  return z:index_add(1, (plan.token - 1) * E + plan.expert, plan.gate:double()):view(N, E)
end

describe("router golden vectors", function()
  it("z-loss of logits [[10, 5]] and of all-ones logits over 7 experts", function()
    assert.is_near(100.13435206568770, nn.router_z_loss(moe.tensor({ { 10, 5 } }, { dtype = "float64" })):item(), 1e-12)
    assert.is_near((math.log(7) + 1) ^ 2, nn.router_z_loss(moe.ones(1, 7, { dtype = "float64" })):item(), 1e-12)
    assert.is_near(8.678386606307098, nn.router_z_loss(moe.ones(3, 7, { dtype = "float64" })):item(), 1e-12)
  end)

  it("capacity is int(round(cf * tokens_per_group / E)) with Python's rounding", function()
    local function cap(cf, tpg, E)
      local l = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = 2 },
        router = nn.TokensChooseMaskedRouter { num_experts = E }, train_capacity_factor = cf }
      return l:capacity(tpg)
    end
    assert.equal(2, cap(1.0, 8, 4))
    assert.equal(2, cap(1.25, 6, 3))   -- 2.5 rounds to even
    assert.equal(4, cap(1.75, 8, 4))   -- 3.5 rounds to even
    assert.equal(3, cap(1.0, 11, 4))   -- 2.75
    assert.equal(0, cap(0.1, 8, 4))    -- as the formula says: every token dropped
  end)
end)

describe("routing against the numpy reference", function()
  local cases = cjson.decode(read("spec/fixtures/routing_cases.json"))
  for _, c in ipairs(cases) do
    it(c.name, function()
      local x, r, E
      if c.inputs then -- ignore_padding_tokens: a router with kernel and bias; padding rows are zero
        x = moe.tensor(c.inputs, { dtype = "float64" })
        E = #c.bias
        r = nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = c.k,
          batch_prioritized_routing = c.batch_prioritized, ignore_padding_tokens = true }
        r(moe.zeros(1, 1, x:size(3), { dtype = "float64" }), 1)
        r:double()
        r:set_weights { moe.tensor(c.kernel, { dtype = "float64" }), moe.tensor(c.bias, { dtype = "float64" }) }
        -- the fixture tells masked from unmasked: the padding's logits are the bias
        assert.is_true(math.abs(c.z_loss - c.z_loss_unmasked) > 1e-3)
      else
        x = moe.tensor(c.logits, { dtype = "float64" })
        E = x:size(3)
        if c.router == "tokens" then
          r = identity_router(nn.TokensChooseMaskedRouter, E, { num_selected_experts = c.k,
            batch_prioritized_routing = c.batch_prioritized })
        else
          r = identity_router(nn.ExpertsChooseMaskedRouter, E)
        end
      end
      local G, T = x:size(1), x:size(2)
      r:eval()
      local plan = r(x, c.capacity)
      local got = dense_combine(plan, G * T, E)
      local want = moe.tensor(c.combine, { dtype = "float64" }):view(G * T, E)
      assert.is_true((got - want):abs():max():item() < 1e-12, "combine weights differ")
      local m = r:metrics()
      assert.is_near(c.z_loss, m.unscaled_router_z_loss, 1e-9)
      -- tokens choose: the Switch loss over all k choices; experts choose: 0, still exported
      assert.is_near(c.load_balancing_loss, m.load_balancing_loss, 1e-9)
      if c.router == "tokens" then
        assert.equal(c.dispatched, plan.token:numel())
        -- sorted by expert, counts agree
        local e = plan.expert:totable()
        for i = 2, #e do assert.is_true(e[i - 1] <= e[i]) end
        assert.equal(plan.token:numel(), plan.counts:sum():item())
      end
    end)
  end

  it("a hand-worked tokens-choose case: capacity 1, second choices lose to first choices", function()
    -- 3 tokens, 2 experts; probabilities from logits (favour: t1 e1, t2 e1, t3 e2)
    local logits = moe.tensor({ { { 2, 0 }, { 1, 0 }, { 0, 3 } } }, { dtype = "float64" })
    local r = identity_router(nn.TokensChooseMaskedRouter, 2, { num_selected_experts = 2 })
    local plan = r(logits, 1)
    -- rank 1: t1 -> e1 (kept), t2 -> e1 (full: dropped), t3 -> e2 (kept); rank 2: all full
    assert.same({ 1, 3 }, plan.token:totable())
    assert.same({ 1, 2 }, plan.expert:totable())
    local m = r:metrics()
    assert.is_near(1 / 3, m.fraction_tokens_left_behind, 1e-12)
    assert.is_near(2 / 2, m.expert_usage, 1e-12)
    local p1, p3 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-3))
    assert.is_near((p1 + p3) / 2, m.router_confidence, 1e-12)
    assert.equal(1, m.expert_1_tokens)
    -- Switch load balancing over both choices: every token selects both experts,
    -- f = (1, 1), so E * sum_e f_e P_e = 2 (P1 + P2) = 2 whatever the probabilities
    assert.is_near(2, m.load_balancing_loss, 1e-12)
    -- batch-prioritized: t3 (prob .95) first, then t1 (.88), then t2 (.73): same kept set here;
    -- renormalised gates: t1 keeps only e1, so its gate becomes 1
    local r2 = identity_router(nn.TokensChooseMaskedRouter, 2, { num_selected_experts = 2,
      batch_prioritized_routing = true, renormalize_gates = true })
    local plan2 = r2(logits, 1)
    assert.same({ 1, 1 }, plan2.gate:totable())
  end)
end)

describe("load-balancing loss and padding, as the reference computes them", function()
  it("is k when every expert is chosen equally often, whatever the probabilities", function()
    -- 4 tokens, top-2 of 4 experts: {1,2}, {3,4}, {1,3}, {2,4}: f_e = 1/2 for every e
    local logits = moe.tensor({ { { 3, 2, 0, -1 }, { -1, 0, 4, 1 }, { 2, -2, 1, 0 }, { 0, 5, -1, 3 } } }, { dtype = "float64" })
    local r = identity_router(nn.TokensChooseMaskedRouter, 4, { num_selected_experts = 2 })
    r(logits, -1)
    assert.is_near(2, r:metrics().load_balancing_loss, 1e-12)
    -- top-1 alone is not balanced here (f = 1/2, 1/4, 1/4, 0): k = 1 gives E * sum_e f_e P_e
    local r1 = identity_router(nn.TokensChooseMaskedRouter, 4)
    r1(logits, -1)
    local P = logits:view(4, 4):softmax(-1):mean(1):totable()
    assert.is_near(4 * (P[1] / 2 + P[2] / 4 + P[3] / 4), r1:metrics().load_balancing_loss, 1e-12)
    -- uniform probabilities: k for k = 1, 2, 3
    for k = 1, 3 do
      local rk = identity_router(nn.TokensChooseMaskedRouter, 4, { num_selected_experts = k })
      rk(moe.zeros(2, 5, 4, { dtype = "float64" }), -1)
      assert.is_near(k, rk:metrics().load_balancing_loss, 1e-12)
    end
  end)

  it("joins the training loss with its weight; padding gets no gradient from either loss", function()
    moe.manual_seed(4)
    local r = nn.TokensChooseMaskedRouter { num_experts = 3, num_selected_experts = 2, ignore_padding_tokens = true,
      router_z_loss_weight = 0.5, load_balancing_loss_weight = 0.25 }
    local x = moe.randn(1, 5, 4, { dtype = "float64" })
    x:narrow(2, 2, 1):zero_()
    r(x:narrow(2, 1, 1), 1)
    r:double()
    local xr = x:clone()
    xr.requires_grad = true
    r(xr, 2)
    local m = r:metrics()
    local total = r:losses()[1] + r:losses()[2]
    assert.is_near(0.5 * m.unscaled_router_z_loss + 0.25 * m.load_balancing_loss, total:item(), 1e-12)
    total:backward()
    assert.equal(0, xr.grad:narrow(2, 2, 1):abs():max():item())   -- the padding row
    assert.is_true(xr.grad:narrow(2, 1, 1):abs():max():item() > 0)
  end)

  it("a MoeLayer with ignore_padding_tokens outputs zeros for padding and dispatches only real tokens", function()
    moe.manual_seed(5)
    local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 6 },
      router = nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2, ignore_padding_tokens = true },
      dropless = true }
    local x = moe.randn(2, 6, 5)
    x:narrow(2, 5, 2):zero_()   -- the last two tokens of each sequence are padding
    local y = layer(x)
    assert.equal(2 * 4 * 2, layer.last_plan.token:numel())
    assert.equal(0, y:narrow(2, 5, 2):abs():max():item())
    assert.is_near(4 / 12, layer:metrics().fraction_tokens_left_behind, 1e-12)
  end)
end)

describe("the MoeLayer family's defaults and weight lists, as TF Model Garden's", function()
  -- the standard deviation of a unit normal truncated at +-2 (Simpson's rule on
  -- the density), which Keras's TruncatedNormal does not rescale
  local function truncated_std()
    local n, a, b = 2000, -2, 2
    local h = (b - a) / n
    local m0, m2 = 0, 0
    for i = 0, n do
      local x = a + i * h
      local wgt = (i == 0 or i == n) and 1 or (i % 2 == 1 and 4 or 2)
      local p = math.exp(-x * x / 2)
      m0, m2 = m0 + wgt * p, m2 + wgt * p * x * x
    end
    return math.sqrt(m2 / m0)
  end

  it("kernels start as TruncatedNormal(stddev = 0.02): std 0.02 * 0.88, |w| <= 0.04, biases zero", function()
    moe.manual_seed(11)
    local want = 0.02 * truncated_std()
    assert.is_near(0.8796, want / 0.02, 1e-4)
    local wb = nn.MoeLayerWithBackbone { backbone_d_ff = 96, moe_layer = nn.MoeLayer {
      experts = nn.FeedForwardExperts { num_experts = 8, d_ff = 96 },
      router = nn.TokensChooseMaskedRouter { num_experts = 8 } } }
    local ec = nn.ExpertsChooseMaskedRouter { num_experts = 64 }
    wb(moe.zeros(1, 4, 512))
    ec(moe.zeros(1, 4, 512), 1)
    local moel = wb.moe_layer
    for _, w in ipairs { moel.experts.intermediate_kernel, moel.experts.output_kernel, moel.router.kernel,
      ec.kernel, wb.backbone_kernel_1, wb.backbone_kernel_2 } do
      local n = w:numel()
      local std = w:double():std():item()
      assert.is_true(w:abs():max():item() <= 0.04)
      assert.is_true(math.abs(std - want) < 4 * want / math.sqrt(2 * n) + 1e-4, ("std %g, want %g (%d values)"):format(std, want, n))
      assert.is_true(math.abs(w:double():mean():item()) < 4 * want / math.sqrt(n))
    end
    for _, b in ipairs { moel.experts.intermediate_bias, moel.experts.output_bias, moel.router.bias, wb.backbone_bias_1 } do
      assert.equal(0, b:abs():max():item())
    end
    -- written to checkpoints as an initializer config
    assert.same({ class_name = "truncated_normal", config = { stddev = 0.02 } }, moel.router:get_config().kernel_initializer)
    assert.same({ class_name = "truncated_normal", config = { stddev = 0.02 } }, moel.experts:get_config().kernel_initializer)
  end)

  local cjson_ = require "cjson"
  local cases = cjson_.decode(read("spec/fixtures/weights_cases.json"))
  for _, c in ipairs(cases) do
    if c.name:match("^MoeLayer") then
      it(c.name .. ": the experts' weights (biases [E, 1, F]), then the router's" ..
        (c.config.backbone_d_ff and ", then the backbone's" or ""), function()
        local function make(dtype)
          local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = c.config.num_experts, d_ff = c.config.d_ff },
            router = nn.TokensChooseMaskedRouter { num_experts = c.config.num_experts,
              num_selected_experts = c.config.num_selected_experts },
            eval_capacity_factor = c.config.eval_capacity_factor }
          if c.config.backbone_d_ff then
            layer = nn.MoeLayerWithBackbone { moe_layer = layer, backbone_d_ff = c.config.backbone_d_ff }
          end
          layer(moe.zeros(#c.input, #c.input[1], #c.input[1][1]))
          layer:to(dtype)
          layer:eval()
          local list = {}
          for i, w in ipairs(c.weights) do list[i] = moe.tensor(w, { dtype = dtype }) end
          layer:set_weights(list)
          return layer, list, moe.tensor(c.input, { dtype = dtype })
        end
        local layer, list, x = make("float64")
        local y = layer(x)
        assert.is_true((y - moe.tensor(c.output[1], { dtype = "float64" })):abs():max():item() < 1e-12)
        local got = H.assert_weights_as_set(layer, c, list)
        -- the experts alone list what TF's FeedForwardExperts does
        local ex = c.config.backbone_d_ff and layer.moe_layer.experts or layer.experts
        local ew = ex:get_weights()
        for i = 1, 4 do assert.same(c.shapes[i], ew[i]:shape()) end
        -- storage (and checkpoints) keep the biases [E, F]; a float32 layer set
        -- from the list round-trips through save / load
        assert.same({ c.config.num_experts, c.config.d_ff }, ex.intermediate_bias:shape())
        local l32, _, x32 = make("float32")
        local y32 = l32(x32)
        assert.is_true((y32:double() - y):abs():max():item() < 1e-5)
        local p = os.tmpname()
        l32:save(p)
        local back = moe.load(p)
        os.remove(p)
        back:eval()
        assert.equal(0, (back(x32) - y32):abs():max():item())
        for i, w in ipairs(back:get_weights()) do assert.equal(0, (w - moe.tensor(c.weights[i])):abs():max():item()) end
      end)
    end
  end
end)

-- the layer against a dense loop: y_t = sum over kept (t, e) of gate * FFN_e(x_t)
local function dense_reference(layer, x)
  local plan = layer.last_plan
  local N, Hd = x:size(1) * (x:dim() == 3 and x:size(2) or 1), x:size(-1)
  local x2 = x:reshape(N, Hd)
  local ex = layer.experts
  local ref = moe.zeros(N, Hd, { dtype = x:dtype() })
  local tok, exp_, gate = plan.token:totable(), plan.expert:totable(), plan.gate:detach():totable()
  for i = 1, #tok do
    local t, e = tok[i], exp_[i]
    local row = x2:narrow(1, t, 1)
    local h = (row:matmul(ex.intermediate_kernel[e]) + ex.intermediate_bias[e]):gelu()
    local y = h:matmul(ex.output_kernel[e]) + ex.output_bias[e]
    ref:narrow(1, t, 1):add_(y:detach() * gate[i])
  end
  return ref:reshape(x:shape())
end

describe("MoeLayer", function()
  local function make(opts)
    opts = opts or {}
    return nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 6 },
      router = opts.router or nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2,
        router_z_loss_weight = 1e-3, load_balancing_loss_weight = 1e-2 },
      train_capacity_factor = opts.cf or 1.0, eval_capacity_factor = opts.cf or 1.0, dropless = opts.dropless }
  end

  it("equals a dense per-token loop over the kept pairs; dropped tokens output zero", function()
    moe.manual_seed(2)
    local layer = make()
    local x = moe.randn(2, 8, 5)
    local y = moe.no_grad(layer.__call__, layer, x)
    local ref = dense_reference(layer, x)
    assert.is_true((y - ref):abs():max():item() < 1e-5)
    local m = layer:metrics()
    assert.is_true(m.fraction_tokens_left_behind > 0) -- capacity 2 of 8 tokens x 2 choices over 4 experts
    local kept = moe.bincount(layer.last_plan.token, nil, 16)
    local Y = y:reshape(16, 5)
    for t = 1, 16 do
      if kept[t] == 0 then assert.equal(0, Y[t]:abs():sum():item()) end
    end
  end)

  it("dropless routing keeps every pair; examples_per_group sets the groups", function()
    local layer = make { dropless = true }
    local x = moe.randn(4, 3, 5)
    layer(x)
    assert.equal(4 * 3 * 2, layer.last_plan.token:numel())
    assert.equal(0, layer:metrics().fraction_tokens_left_behind)
    local g2 = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 2, d_ff = 3 },
      router = nn.TokensChooseMaskedRouter { num_experts = 2 }, examples_per_group = 2 }
    g2(moe.randn(4, 3, 5)) -- groups of 6 tokens: capacity round(6/2) = 3
    assert.equal(3, g2:capacity(6))
    assert.matches("do not split into groups of 6", H.error_of(g2, moe.randn(3, 3, 5)))
  end)

  it("auxiliary losses and metrics are reported through add_loss and add_metric", function()
    local layer = make()
    layer(moe.randn(2, 8, 5))
    local losses = layer:losses()
    assert.equal(2, #losses) -- z-loss and load balancing
    local m = layer:metrics()
    for _, k in ipairs { "load_balancing_loss", "router_z_loss", "unscaled_router_z_loss",
      "fraction_tokens_left_behind", "router_confidence", "expert_usage", "expert_1_tokens" } do
      assert.is_number(m[k], k)
    end
    assert.is_near(m.unscaled_router_z_loss * 1e-3, m.router_z_loss, 1e-9)
    assert.same({ 5, 4 }, layer.router.kernel:shape())
    assert.equal(2, #layer.router:get_weights()) -- kernel [H,E], then bias [E]
    assert.same({ 4, 5, 6 }, layer.experts.intermediate_kernel:shape())
  end)

  for _, kind in ipairs { "contiguous", "transposed", "narrowed" } do
    it("gradchecks inputs and parameters: tokens-choose, experts-choose, with backbone (" .. kind .. ")", function()
      moe.manual_seed(9)
      assert.is_true(gradcheck(make { cf = 2.0 }, { H.layout({ 6, 5 }, kind) }))
      assert.is_true(gradcheck(make { router = nn.ExpertsChooseMaskedRouter { num_experts = 4 } }, { H.layout({ 8, 5 }, kind) }))
      local wb = nn.MoeLayerWithBackbone { moe_layer = make { dropless = true }, backbone_d_ff = 4 }
      assert.is_true(gradcheck(wb, { H.layout({ 4, 5 }, kind) }))
    end)
  end

  it("dispatches by index: peak memory of a step stays below a quarter of one dense [T, E, C] tensor", function()
    local T, H, E = 2048, 16, 64
    local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = 16 },
      router = nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = 2 }, train_capacity_factor = 2.0 }
    local x = moe.randn(1, T, H, { requires_grad = true })
    layer(x) -- build
    collectgarbage(); collectgarbage()
    local _, bytes0 = moe.core.live()
    moe.core.peak_bytes(true)
    layer(x):sum():backward()
    local peak = moe.core.peak_bytes() - bytes0
    local C = layer:capacity(T)
    local one_hot = T * E * C * 4 -- a float32 [T, E, C] dispatch or combine tensor
    assert.is_true(peak < one_hot / 4, ("peak %d bytes vs one [T,E,C] tensor of %d"):format(peak, one_hot))
  end)

  it("jitter and noisy gating act in training only", function()
    local r = identity_router(nn.TokensChooseMaskedRouter, 3, { jitter_noise = 0.5 })
    local x = moe.randn(1, 4, 3, { dtype = "float64" })
    r:eval()
    local a = r(x, -1).gate:clone()
    local b = r(x, -1).gate
    assert.equal(0, (a - b):abs():max():item())
    r:train()
    local c = r(x, -1).gate
    assert.is_true((a - c):abs():max():item() > 0)
    local noisy = nn.TokensChooseMaskedRouter { num_experts = 3, noisy_gating = true }
    noisy(moe.randn(1, 4, 3), -1)
    assert.same({ 3, 3 }, noisy.noise_kernel:shape())
  end)

  it("validates its parts and options; saves and loads", function()
    assert.matches("'experts' must be", H.error_of(nn.MoeLayer, { router = nn.TokensChooseMaskedRouter { num_experts = 2 } }))
    assert.matches("router has 3 experts but experts has 2", H.error_of(nn.MoeLayer, {
      experts = nn.FeedForwardExperts { num_experts = 2, d_ff = 2 }, router = nn.TokensChooseMaskedRouter { num_experts = 3 } }))
    assert.matches("num_selected_experts 3 exceeds", H.error_of(nn.TokensChooseMaskedRouter, { num_experts = 2, num_selected_experts = 3 }))
    assert.matches("expected input", H.error_of(make(), moe.randn(5)))
    local x = moe.Input { shape = { 8, 5 } }
    local m = moe.Model { inputs = x, outputs = make()(x) }
    local xb = moe.randn(2, 8, 5)
    local p = os.tmpname()
    m:save(p)
    local m2 = moe.load(p)
    os.remove(p)
    assert.equal(0, (m2:predict(xb) - m:predict(xb)):abs():max():item())
  end)
end)
