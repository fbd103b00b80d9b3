-- Dense mixtures: TabularMoELayer, GatedFeatureFusion, MMoE/OMoE, SharedBottom
-- against naive loops over their weights, gradchecks, and behaviour.
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"
local gradcheck = moe.testing.gradcheck
local I = require("moe.initializers").initializers

local STRIDED = { "contiguous", "transposed", "narrowed" }

local function relu(v) return v > 0 and v or 0 end
local function softmax(z)
  local m, s, out = -math.huge, 0, {}
  for _, v in ipairs(z) do m = math.max(m, v) end
  for i, v in ipairs(z) do out[i] = math.exp(v - m); s = s + out[i] end
  for i in ipairs(out) do out[i] = out[i] / s end
  return out
end

describe("mixture op", function()
  for _, kind in ipairs(STRIDED) do
    it("gradchecks (" .. kind .. ")", function()
      assert.is_true(gradcheck(moe.mixture, { H.layout({ 4, 3, 5 }, kind), H.layout({ 4, 5 }, kind) }))
    end)
  end
  it("matches sum_e g[b,e] h[b,u,e]", function()
    local h, g = moe.randn(2, 3, 4), moe.randn(2, 4)
    local out, Ht, G = moe.mixture(h, g), h:totable(), g:totable()
    for b = 1, 2 do for u = 1, 3 do
      local s = 0
      for e = 1, 4 do s = s + G[b][e] * Ht[b][u][e] end
      assert.is_near(s, out[b][u], 1e-5)
    end end
    assert.matches("do not match", H.error_of(moe.mixture, moe.randn(2, 3, 4), moe.randn(2, 3)))
  end)
end)

describe("gate_scale op", function()
  for _, kind in ipairs(STRIDED) do
    for _, o in ipairs({ { relu = true, append_gate = true }, { relu = false, append_gate = false },
                         { relu = true }, { append_gate = true } }) do
      it(("gradchecks (%s, relu=%s, append_gate=%s)"):format(kind, tostring(o.relu), tostring(o.append_gate)), function()
        local f = function(h, g) return moe.gate_scale(h, g, o) end
        assert.is_true(gradcheck(f, { H.layout({ 5, 12 }, kind), H.layout({ 5, 3 }, kind) }))
      end)
    end
  end
  it("matches act(h[b, e*U+u]) g[b,e] (a naive loop), with g's columns appended", function()
    local B, E, U = 3, 4, 5
    local h, g = moe.randn(B, E * U), moe.rand(B, E)
    for _, relu_on in ipairs({ true, false }) do
      local out = moe.gate_scale(h, g, { relu = relu_on, append_gate = true })
      assert.are.same({ B, E * U + E }, out:shape())
      local O, Ht, G = out:totable(), h:totable(), g:totable()
      for b = 1, B do for e = 1, E do
        for u = 1, U do
          local v = Ht[b][(e - 1) * U + u]
          assert.is_near((relu_on and relu(v) or v) * G[b][e], O[b][(e - 1) * U + u], 1e-6)
        end
        assert.is_near(G[b][e], O[b][E * U + e], 1e-7)
      end end
    end
    assert.are.same({ B, E * U }, moe.gate_scale(h, g):shape())
  end)
  it("splits large batches across threads with the same results as row by row", function()
    local B, E, U = 600, 4, 32 -- 600 x 132 outputs: over the threshold of the parallel path
    local h = moe.randn(B, E * U, { requires_grad = true })
    local g = moe.rand(B, E, { requires_grad = true })
    local go = moe.randn(B, E * U + E)
    local out = moe.gate_scale(h, g, { relu = true, append_gate = true })
    out:backward(go)
    for _, r in ipairs({ 1, 137, 300, 599, 600 }) do
      local hr = h:narrow(1, r, 1):detach():requires_grad_()
      local gr = g:narrow(1, r, 1):detach():requires_grad_()
      local o = moe.gate_scale(hr, gr, { relu = true, append_gate = true })
      o:backward(go:narrow(1, r, 1))
      assert.are.equal(0, (o - out:narrow(1, r, 1)):abs():max():item())
      assert.is_true((hr.grad - h.grad:narrow(1, r, 1)):abs():max():item() < 1e-6)
      assert.is_true((gr.grad - g.grad:narrow(1, r, 1)):abs():max():item() < 1e-5)
    end
  end)
  it("names itself and the shapes when they do not fit", function()
    local err = H.error_of(moe.gate_scale, moe.randn(2, 10), moe.randn(2, 3))
    assert.matches("gate_scale", err)
    assert.matches("%[2, ?10%]", err)
    assert.matches("gate_scale", H.error_of(moe.gate_scale, moe.randn(2, 9), moe.randn(3, 3)))
    assert.matches("gate_scale", H.error_of(moe.gate_scale, moe.randn(2, 9), moe.randn(2, 3, { dtype = "float64" })))
  end)
end)

describe("TabularMoELayer", function()
  it("is the gate-weighted sum of Dense(units, relu) -> Dense(F) experts (a naive loop)", function()
    moe.manual_seed(3)
    local layer = nn.TabularMoELayer { num_experts = 3, expert_units = 4 }
    local x = moe.randn(5, 6)
    local y = layer(x)
    assert.same({ 5, 6 }, y:shape())
    local X = x:totable()
    local W1, b1 = layer.expert_kernel:totable(), layer.expert_bias:totable()
    local W2, b2 = layer.output_kernel:totable(), layer.output_bias:totable()
    local Wg, bg = layer.gate_kernel:totable(), layer.gate_bias:totable()
    for b = 1, 5 do
      local z = {}
      for e = 1, 3 do
        z[e] = bg[e]
        for f = 1, 6 do z[e] = z[e] + X[b][f] * Wg[f][e] end
      end
      local g = softmax(z)
      for f = 1, 6 do
        local s = 0
        for e = 1, 3 do
          local o = b2[e][f]
          for u = 1, 4 do
            local hu = b1[e][u]
            for i = 1, 6 do hu = hu + X[b][i] * W1[i][e][u] end
            o = o + relu(hu) * W2[e][u][f]
          end
          s = s + g[e] * o
        end
        assert.is_near(s, y[b][f], 1e-4)
      end
    end
  end)

  for _, kind in ipairs(STRIDED) do
    it("gradchecks inputs and parameters (" .. kind .. ")", function()
      assert.is_true(gradcheck(nn.TabularMoELayer { num_experts = 3, expert_units = 4 }, { H.layout({ 4, 5 }, kind) }))
    end)
  end

  it("validates its arguments, keeps experts distinct, and works in Sequential and functional models", function()
    for _, bad in ipairs { { num_experts = 0 }, { expert_units = -1 }, { num_experts = 2.5 }, { expert_units = "8" } } do
      assert.matches("must be a positive integer", H.error_of(nn.TabularMoELayer, bad))
    end
    local l = nn.TabularMoELayer { num_experts = 4, expert_units = 16 }
    local y = l(moe.randn(32, 8))
    assert.same({ 32, 8 }, y:shape())
    for a = 1, 4 do for b = a + 1, 4 do
      assert.is_true((l.expert_kernel:select(2, a) - l.expert_kernel:select(2, b)):abs():max():item() > 0)
    end end
    local g = l:gate_weights(moe.randn(3, 8))
    assert.is_true((g:sum(2) - 1):abs():max():item() < 1e-6)
    -- seed 000's Sequential example
    local model = moe.Sequential { nn.Dense { units = 32, activation = "relu" },
      nn.TabularMoELayer { num_experts = 4, expert_units = 16 }, nn.Dense { units = 16, activation = "relu" },
      nn.TabularMoELayer { num_experts = 2, expert_units = 8 }, nn.Dense { units = 1, activation = "sigmoid" },
      input_shape = { 10 } }
    assert.same({ 7, 1 }, model(moe.randn(7, 10)):shape())
    -- functional, as the seed's (None, 20) example
    local inputs = moe.Input { shape = { 20 } }
    local h = nn.TabularMoELayer { num_experts = 4, expert_units = 16 }(inputs)
    assert.same({ -1, 20 }, h.shape)
  end)
end)

describe("GatedFeatureFusion", function()
  it("computes g a + (1 - g) b with g = activation([a; b] W + c)", function()
    local f = nn.GatedFeatureFusion {}
    local a, b = moe.randn(3, 4), moe.randn(3, 4)
    local y = f { a, b }
    assert.same({ 8, 4 }, f.kernel:shape())
    local A, B, W, c = a:totable(), b:totable(), f.kernel:totable(), f.bias:totable()
    for i = 1, 3 do for j = 1, 4 do
      local z = c[j]
      for k = 1, 4 do z = z + A[i][k] * W[k][j] + B[i][k] * W[4 + k][j] end
      local g = 1 / (1 + math.exp(-z))
      assert.is_near(g * A[i][j] + (1 - g) * B[i][j], y[i][j], 1e-5)
    end end
  end)
  for _, kind in ipairs(STRIDED) do
    it("gradchecks (" .. kind .. ")", function()
      local f = nn.GatedFeatureFusion { activation = "tanh" }
      f { moe.randn(2, 3), moe.randn(2, 3) }
      f:double()
      assert.is_true(gradcheck(function(a, b) return f { a, b } end, { H.layout({ 2, 3 }, kind), H.layout({ 2, 3 }, kind) }))
    end)
  end
  it("refuses anything but two inputs of equal shape", function()
    local f = nn.GatedFeatureFusion {}
    assert.matches("exactly two inputs", H.error_of(f, moe.randn(2, 3)))
    assert.matches("exactly two inputs", H.error_of(f, { moe.randn(2, 3), moe.randn(2, 3), moe.randn(2, 3) }))
    f { moe.randn(2, 3), moe.randn(2, 3) }
    assert.matches("equal shapes, got %[2,3%] and %[2,4%]", H.error_of(f, { moe.randn(2, 3), moe.randn(2, 4) }))
  end)
end)

describe("MMoE", function()
  it("matches the seed's computation (tensordot experts, per-task softmax gates)", function()
    moe.manual_seed(5)
    local m = nn.MMoE { units = 3, num_experts = 4, num_tasks = 2 }
    local x = moe.randn(5, 6)
    local outs = m(x)
    assert.equal(2, #outs)
    assert.same({ 6, 3, 4 }, m.expert_kernel:shape())
    assert.same({ 3, 4 }, m.expert_bias:shape())
    local X, W, bw = x:totable(), m.expert_kernel:totable(), m.expert_bias:totable()
    for t = 1, 2 do
      local G, gb = m["gate_kernel_" .. t]:totable(), m["gate_bias_" .. t]:totable()
      for b = 1, 5 do
        local z = {}
        for e = 1, 4 do
          z[e] = gb[e]
          for f = 1, 6 do z[e] = z[e] + X[b][f] * G[f][e] end
        end
        local g = softmax(z)
        for u = 1, 3 do
          local s = 0
          for e = 1, 4 do
            local h = bw[u][e]
            for f = 1, 6 do h = h + X[b][f] * W[f][u][e] end
            s = s + g[e] * relu(h)
          end
          assert.is_near(s, outs[t][b][u], 1e-4)
        end
      end
    end
  end)

  it("uses the seed's defaults and initialises experts independently", function()
    local m = nn.MMoE { units = 4, num_experts = 8, num_tasks = 2 }
    local c = m:get_config()
    assert.equal("relu", c.expert_activation)
    assert.equal("softmax", c.gate_activation)
    assert.equal("variance_scaling", c.expert_kernel_initializer)
    assert.is_true(c.use_expert_bias and c.use_gate_bias)
    m(moe.randn(2, 499))
    assert.equal(0, m.expert_bias:abs():sum():item())
    local k = m.expert_kernel
    for a = 1, 8 do for b = a + 1, 8 do
      assert.is_true((k:select(3, a) - k:select(3, b)):abs():max():item() > 0)
    end end
    -- VarianceScaling(1, fan_in, truncated normal) on [F, units, E]: Keras's fans
    local fan_in = 499 * 4
    assert.is_true(k:abs():max():item() <= 2 * math.sqrt(1 / fan_in) / 0.87962566103423978 + 1e-6)
  end)

  for _, kind in ipairs(STRIDED) do
    it("gradchecks, with deep experts and one gate too (" .. kind .. ")", function()
      -- random biases: with zero ones, a row whose hidden units are all dead puts an
      -- expert's pre-activation exactly on relu's kink, where differences disagree
      local rb = { expert_bias_initializer = I.random_normal { stddev = 0.5 }, gate_bias_initializer = "random_normal" }
      local function o(t) for k, v in pairs(rb) do t[k] = v end return t end
      assert.is_true(gradcheck(nn.MMoE(o { units = 3, num_experts = 3, num_tasks = 2 }), { H.layout({ 4, 5 }, kind) }))
      assert.is_true(gradcheck(nn.MMoE(o { units = 2, num_experts = 2, num_tasks = 2, expert_hidden_units = { 3 },
        use_gate_bias = false }), { H.layout({ 4, 5 }, kind) }))
      assert.is_true(gradcheck(nn.OMoE(o { units = 2, num_experts = 3, num_tasks = 2 }), { H.layout({ 4, 5 }, kind) }))
    end)
  end

  it("OMoE gives every task the same mixture; SharedBottom one shared representation", function()
    local o = nn.OMoE { units = 3, num_experts = 4, num_tasks = 3 }
    local outs = o(moe.randn(6, 5))
    assert.equal(3, #outs)
    assert.is_true((outs[1] - outs[3]):abs():max():item() == 0)
    assert.equal(1, #o:gate_weights(moe.randn(2, 5)))
    local sb = nn.SharedBottom { units = 4, num_tasks = 2, hidden_units = { 8 } }
    local s = sb(moe.randn(3, 5))
    assert.equal(2, #s)
    assert.same({ 3, 4 }, s[1]:shape())
    assert.is_true(gradcheck(sb, { moe.randn(3, 5) }))
  end)

  it("exposes each task's gate weights for a batch", function()
    local m = nn.MMoE { units = 3, num_experts = 4, num_tasks = 2 }
    m(moe.randn(2, 5))
    local gw = m:gate_weights(moe.randn(7, 5))
    assert.equal(2, #gw)
    assert.same({ 7, 4 }, gw[2]:shape())
    assert.is_true((gw[1]:sum(2) - 1):abs():max():item() < 1e-6)
    assert.equal(2, #m.last_gates)
  end)

  it("validates options, and builds the census MMoE model in the functional API", function()
    assert.matches("option 'units' is required", H.error_of(nn.MMoE, { num_experts = 2, num_tasks = 2 }))
    assert.matches("num_gates must be 1", H.error_of(nn.MMoE, { units = 2, num_experts = 2, num_tasks = 3, num_gates = 2 }))
    assert.matches("expert_hidden_units%[2%]", H.error_of(nn.MMoE, { units = 2, num_experts = 2, num_tasks = 2, expert_hidden_units = { 3, 0 } }))
    local x = moe.Input { shape = { 12 } }
    local tasks = nn.MMoE { units = 4, num_experts = 8, num_tasks = 2 }(x)
    local outputs = {}
    for i, name in ipairs { "income", "marital" } do
      local h = nn.Dense { units = 8, activation = "relu" }(tasks[i])
      outputs[name] = nn.Dense { units = 1, activation = "sigmoid", name = name }(h)
    end
    local model = moe.Model { inputs = x, outputs = outputs }
    model:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "binary_crossentropy" }
    local xb = moe.randn(64, 12)
    local y = { income = xb:narrow(2, 1, 1):gt(0):float(), marital = xb:narrow(2, 2, 1):gt(0):float() }
    local first = model:train_on_batch(xb, y)
    local last
    for _ = 1, 60 do last = model:train_on_batch(xb, y) end
    assert.is_true(last < first * 0.7, ("loss %g -> %g"):format(first, last))
    local path = os.tmpname()
    model:save(path)
    local again = moe.load(path)
    os.remove(path)
    assert.is_true((again:predict(xb).income - model:predict(xb).income):abs():max():item() == 0)
  end)
end)

-- weights as the reference layers' get_weights() lists them (order, count and
-- shapes), with the outputs their forward passes give: spec/fixtures/weights_cases.json
-- from spec/fixtures/make_weights_fixture.py
describe("get_weights / set_weights port the reference layers' lists", function()
  local cjson = require "cjson"
  local f = assert(io.open("spec/fixtures/weights_cases.json"))
  local cases = cjson.decode(f:read("*a"))
  f:close()
  local F64 = { dtype = "float64" }
  local function check(c, layer)
    local x = moe.tensor(c.input, F64)
    layer(moe.zeros(x:shape()))       -- build
    layer:double()
    local list = {}
    for i, w in ipairs(c.weights) do list[i] = moe.tensor(w, F64) end
    layer:set_weights(list)
    local out = layer(x)
    if moe.is_tensor(out) then out = { out } end
    assert.equal(#c.output, #out)
    for t, want in ipairs(c.output) do
      assert.is_true((out[t] - moe.tensor(want, F64)):abs():max():item() < 1e-12, "output " .. t)
    end
    local got = H.assert_weights_as_set(layer, c, list)
    -- a list in another order is refused by its shapes, naming the weight
    if #list > 2 and not moe.is_same_size(list[1], list[#list]) then
      local bad = {}
      for i = 1, #list do bad[i] = list[#list + 1 - i] end
      assert.matches("set_weights: weight 1 %(", H.error_of(function() layer:set_weights(bad) end))
    end
    return got
  end
  for _, c in ipairs(cases) do
    if c.name == "TabularMoELayer" then
      it("TabularMoELayer: 18 per-expert arrays for the seed's 4 experts (every expert_i, every expert_out_i, gate)", function()
        assert.equal(18, #c.weights)
        check(c, nn.TabularMoELayer(c.config))
      end)
    elseif c.name:match("^MMoE") then
      it(c.name .. ": experts, then every gate kernel, then every gate bias", function()
        check(c, nn.MMoE(c.config))
      end)
    end
  end

  it("checkpoints keep the stacked storage and round-trip through save / load", function()
    local c = cases[1]
    local x = moe.Input { shape = { #c.input[1] } }
    local m = moe.Model { inputs = x, outputs = nn.TabularMoELayer(c.config)(x) }
    local list = {}
    for i, w in ipairs(c.weights) do list[i] = moe.tensor(w) end
    m:set_weights(list)
    local p = os.tmpname()
    m:save(p)
    local m2 = moe.load(p)
    os.remove(p)
    local xb = moe.tensor(c.input)
    assert.equal(0, (m2:predict(xb) - m:predict(xb)):abs():max():item())
    local w2 = m2:get_weights()
    assert.equal(18, #w2)
    for i, w in ipairs(w2) do assert.equal(0, (w - list[i]):abs():max():item()) end
  end)
end)
