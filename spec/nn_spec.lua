-- moe.nn: layers against naive references, gradchecks of every layer (inputs and
-- parameters, contiguous and strided inputs), Module behaviour, composition.
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"
local gradcheck = moe.testing.gradcheck

local STRIDED = { "contiguous", "transposed", "narrowed" }

local function rows(t) return t:totable() end

describe("nn layers: gradchecks (inputs and parameters)", function()
  local layer_cases = {
    { "Dense relu", function() return nn.Dense { units = 3, activation = "relu" } end, { 4, 5 } },
    { "Dense tanh no bias", function() return nn.Dense { units = 3, activation = "tanh", use_bias = false } end, { 4, 5 } },
    { "Dense on 3-d input", function() return nn.Dense { units = 2, activation = "sigmoid" } end, { 2, 3, 4 } },
    { "Activation softmax", function() return nn.Activation { activation = "softmax" } end, { 3, 4 } },
    { "Activation elu", function() return nn.Activation { activation = "elu" } end, { 3, 4 } },
    { "Activation swish", function() return nn.Activation { activation = "swish" } end, { 3, 4 } },
    { "Dropout (training, seeded mask)", function() return nn.Dropout { rate = 0.3 } end, { 4, 5 } },
    { "BatchNormalization (training)", function() return nn.BatchNormalization {} end, { 6, 3 } },
    { "BatchNormalization (evaluation)", function()
      local l = nn.BatchNormalization {}
      l(moe.randn(8, 3) * 2 + 1)
      return l:eval()
    end, { 6, 3 } },
    { "LayerNormalization", function() return nn.LayerNormalization {} end, { 4, 5 } },
    { "Flatten", function() return nn.Flatten {} end, { 2, 3, 2 } },
  }
  for _, c in ipairs(layer_cases) do
    for _, kind in ipairs(STRIDED) do
      it(c[1] .. " (" .. kind .. ")", function()
        moe.manual_seed(11)
        local layer = c[2]()
        local x = H.layout(c[3], kind)
        assert.is_true(gradcheck(layer, { x }))
      end)
    end
  end

  it("Embedding (its table)", function()
    local e = nn.Embedding { input_dim = 5, output_dim = 3 }
    local ids = moe.tensor({ { 1, 5 }, { 2, 2 } }, { dtype = "int64" })
    assert.is_true(gradcheck(e, { ids }))
  end)

  for _, kind in ipairs(STRIDED) do
    it("Concatenate, Add, Multiply and Lambda (" .. kind .. ")", function()
      local cat, add, mul = nn.Concatenate {}, nn.Add {}, nn.Multiply {}
      local lam = nn.Lambda { fn = function(x) return x:tanh() * 2 end }
      local f = function(a, b) return lam(cat { add { a, b }, mul { a, b } }) end
      assert.is_true(gradcheck(f, { H.layout({ 3, 4 }, kind), H.layout({ 3, 4 }, kind) }))
    end)
    it("Subtract, Average, Maximum, Minimum and Reshape (" .. kind .. ")", function()
      local sub, avg, mx, mn = nn.Subtract {}, nn.Average {}, nn.Maximum {}, nn.Minimum {}
      local rs = nn.Reshape { target_shape = { 2, 2 } }
      local f = function(a, b, c) return rs(mx { sub { a, b }, avg { b, c } }) + mn { a, c }:reshape(3, 2, 2) end
      assert.is_true(gradcheck(f, { H.layout({ 3, 4 }, kind), H.layout({ 3, 4 }, kind), H.layout({ 3, 4 }, kind) }))
    end)
  end
end)

describe("nn layers: values", function()
  it("Dense computes activation(x W + b) as a naive loop does", function()
    moe.manual_seed(2)
    local d = nn.Dense { units = 3, activation = "tanh" }
    local x = moe.randn(4, 5)
    local y = d(x)
    local W, b, X = rows(d.kernel), rows(d.bias), rows(x)
    assert.same({ 5, 3 }, d.kernel:shape())
    for i = 1, 4 do
      for j = 1, 3 do
        local s = b[j]
        for k = 1, 5 do s = s + X[i][k] * W[k][j] end
        assert.is_near(math.tanh(s), y[i][j], 1e-5)
      end
    end
  end)

  it("get_weights / set_weights use Keras's order: kernel [in, out], then bias", function()
    local d = nn.Dense { units = 2 }
    d(moe.randn(1, 3))
    local w = d:get_weights()
    assert.equal(2, #w)
    assert.same({ 3, 2 }, w[1]:shape())
    assert.same({ 2 }, w[2]:shape())
    d:set_weights { moe.ones(3, 2), moe.tensor({ 1, 2 }) }
    assert.same({ { 4, 5 } }, d(moe.ones(1, 3)):totable())
    assert.matches("weight 1 %(kernel%) has shape %(3, 2%), got %(2, 3%)",
      H.error_of(function() d:set_weights { moe.ones(2, 3), moe.ones(2) } end))
    assert.matches("has 2 weights", H.error_of(function() d:set_weights { moe.ones(3, 2) } end))
  end)

  it("BatchNormalization: batch statistics in training, moving statistics in evaluation", function()
    local bn = nn.BatchNormalization { momentum = 0.5, epsilon = 1e-3 }
    local x = moe.tensor({ { 1, 10 }, { 3, 20 }, { 5, 30 } })
    local y = bn(x)
    -- column 1: mean 3, biased var 8/3
    assert.is_near((1 - 3) / math.sqrt(8 / 3 + 1e-3), y[1][1], 1e-5)
    assert.is_near(0.5 * 0 + 0.5 * 3, bn.moving_mean[1], 1e-6)
    assert.is_near(0.5 * 1 + 0.5 * 8 / 3, bn.moving_variance[1], 1e-6)
    bn:eval()
    local z = bn(moe.tensor({ { 1.5, 0 } }))
    assert.is_near((1.5 - 1.5) / math.sqrt(bn.moving_variance[1] + 1e-3), z[1][1], 1e-6)
    local w = bn:get_weights()
    assert.equal(4, #w) -- gamma, beta, moving_mean, moving_variance
    assert.equal(2, #bn:parameters())
  end)

  it("Dropout zeroes about rate of the elements, scales the rest, and is inactive in evaluation", function()
    moe.manual_seed(5)
    local d = nn.Dropout { rate = 0.25 }
    local y = d(moe.ones(200, 50))
    local zeros = y:eq(0):sum():item()
    assert.is_true(math.abs(zeros / 10000 - 0.25) < 0.02)
    assert.is_near(1 / 0.75, y:max():item(), 1e-6)
    d:eval()
    assert.equal(10000, d(moe.ones(200, 50)):sum():item())
    assert.matches("rate must be in %[0, 1%)", H.error_of(function() nn.Dropout { rate = 1 } end))
  end)

  it("LayerNormalization normalizes each row", function()
    local ln = nn.LayerNormalization { epsilon = 0 }
    local y = ln(moe.tensor({ { 1, 2, 3, 4 }, { 10, 10, 10, 14 } }))
    for i = 1, 2 do
      local r = y:select(1, i)
      assert.is_near(0, r:mean():item(), 1e-6)
      assert.is_near(1, r:var(1, { correction = 0 }):item(), 1e-4)
    end
  end)

  it("Embedding looks up 1-based ids; merges check their inputs", function()
    local e = nn.Embedding { input_dim = 4, output_dim = 2 }
    e(moe.tensor({ 1 }, { dtype = "int64" }))
    e:set_weights { moe.tensor({ { 1, 1 }, { 2, 2 }, { 3, 3 }, { 4, 4 } }) }
    assert.same({ { { 3, 3 }, { 1, 1 } } }, e(moe.tensor({ { 3, 1 } }, { dtype = "int64" })):totable())
    assert.matches("out of range", H.error_of(function() e(moe.tensor({ 5 }, { dtype = "int64" })) end))
    assert.matches("integer tensor", H.error_of(function() e(moe.tensor({ 1.0 })) end))
    assert.matches("at least 2 tensors", H.error_of(function() nn.Add {} { moe.ones(2) } end))
    assert.same({ { 1, 1, 2 } }, nn.Concatenate {} { moe.ones(1, 2), moe.full({ 1, 1 }, 2) }:totable())
  end)
end)

describe("initializers, regularizers, constraints", function()
  local I = moe.initializers
  it("have Keras's scales", function()
    moe.manual_seed(9)
    local g = I.get("glorot_uniform")({ 300, 200 }, "float64")
    local limit = math.sqrt(6 / 500)
    assert.is_true(g:abs():max():item() <= limit)
    assert.is_near(limit / math.sqrt(3), g:std():item(), 0.002)
    local he = I.get("he_normal")({ 400, 300 }, "float64")
    assert.is_near(math.sqrt(2 / 400), he:std():item(), 0.002)
    assert.is_true(he:abs():max():item() <= 2 * math.sqrt(2 / 400) / 0.87962566103423978 + 1e-9)
    local tn = I.truncated_normal { stddev = 0.5 }({ 1000 }, "float64")
    assert.is_true(tn:abs():max():item() <= 1.0)
    local vs = I.variance_scaling { scale = 2, mode = "fan_out", distribution = "uniform" }({ 100, 50 }, "float64")
    assert.is_true(vs:abs():max():item() <= math.sqrt(3 * 2 / 50))
    assert.same({ 2, 2 }, I.constant { value = 2 }({ 2 }, "float32"):totable())
    assert.same({ 0, 0 }, I.get("zeros")({ 2 }, "float32"):totable())
    assert.matches("unknown initializer 'glorot'", H.error_of(function() nn.Dense { units = 2, kernel_initializer = "glorot" } end))
    assert.matches("mode must be", H.error_of(function() I.variance_scaling { mode = "fan" } end))
  end)

  it("regularizer penalties join the model's losses", function()
    local d = nn.Dense { units = 2, kernel_regularizer = moe.regularizers.l2 { l2 = 0.1 },
      bias_regularizer = "l1", activity_regularizer = moe.regularizers.l1 { l1 = 0.5 } }
    local y = d(moe.ones(1, 3))
    d:set_weights { moe.full({ 3, 2 }, 2), moe.tensor({ -1, 1 }) }
    y = d(moe.ones(1, 3))
    local ls = d:losses()
    local total = 0
    for _, l in ipairs(ls) do total = total + l:item() end
    -- activity 0.5 * |y| = 0.5 * (5 + 7); kernel 0.1 * 6 * 4; bias 0.01 * 2
    assert.is_near(0.5 * 12 + 0.1 * 24 + 0.01 * 2, total, 1e-5)
  end)

  it("constraints are applied after each optimizer update", function()
    local d = nn.Dense { units = 3, kernel_constraint = moe.constraints.max_norm { max_value = 0.5 },
      bias_constraint = "non_neg" }
    d(moe.ones(2, 4))
    local opt = moe.optim.SGD { lr = 1 }
    local loss = (d(moe.randn(2, 4)) * 10):sum() - d.bias:sum() * 100
    loss:backward()
    opt:step(d:parameters())
    local norms = d.kernel:square():sum(1):sqrt()
    assert.is_true(norms:max():item() <= 0.5 + 1e-5)
    assert.is_true(d.bias:min():item() >= 0)
    local u = moe.constraints.unit_norm {}(moe.tensor({ { 3, 0 }, { 4, 2 } }))
    assert.is_near(1, u:square():sum(1)[1], 1e-6)
  end)
end)

describe("Module", function()
  it("names parameters in order, counts them, and zero_grad clears gradients", function()
    local m = moe.Sequential { nn.Dense { units = 4, name = "a" }, nn.Dense { units = 1, name = "b" }, input_shape = { 3 } }
    local names = {}
    for n in m:named_parameters() do names[#names + 1] = n end
    assert.same({ "a/kernel", "a/bias", "b/kernel", "b/bias" }, names)
    assert.equal(3 * 4 + 4 + 4 + 1, (m:count_params()))
    m(moe.randn(2, 3)):sum():backward()
    assert.is_not_nil(m.a.kernel.grad)
    m:zero_grad()
    assert.is_nil(m.a.kernel.grad)
  end)

  it("train() and eval() reach every child; evaluate() without data points at eval()", function()
    local m = moe.Sequential { nn.Dropout { rate = 0.5 }, nn.Dense { units = 2 }, input_shape = { 3 } }
    m:eval()
    assert.is_false(m:children()[1]:is_training())
    m:train()
    assert.is_true(m:children()[1]:is_training())
    m:train(false)
    assert.is_false(m:children()[1]:is_training())
    assert.equal(m, m:train(true))
    assert.is_true(m:children()[2]:is_training())
    assert.matches("train: expected a boolean", H.error_of(m.train, m, "yes"))
    local err = H.error_of(function() local r = m:evaluate(); return r end)
    assert.matches("evaluate: expected {x = ..., y = ...}", err)
    assert.matches("call Sequential:eval%(%)", err)
    assert.matches("nn_spec.lua:%d+:", err) -- at the caller's line
    assert.is_nil(rawget(moe.Sequential, "training"))
  end)

  it("user subclasses in Lua get gradients, add_loss and add_metric", function()
    local Scale = nn.Module:extend("ScaleSpec")
    function Scale:init(opts)
      nn.Module.init(self, opts)
      self.inner = nn.Dense { units = 2 }
    end
    function Scale:build(shape)
      self:add_weight("alpha", { 1 }, { initializer = "ones" })
    end
    function Scale:forward(x)
      local y = self.inner(x) * self.alpha
      self:add_loss(y:square():mean() * 0.1)
      self:add_metric("mean_out", y:mean())
      return y
    end
    local m = Scale {}
    local y = m(moe.randn(3, 4))
    assert.equal(1 + 4 * 2 + 2, (m:count_params()))
    assert.equal(1, #m:losses())
    assert.is_number(m:metrics().mean_out)
    y:sum():backward()
    assert.is_not_nil(m.alpha.grad)
    assert.is_not_nil(m.inner.kernel.grad)
    assert.is_true(gradcheck(m, { moe.randn(3, 4) }))
  end)

  it("get_config holds the constructor options; unknown options are errors", function()
    local d = nn.Dense { units = 3, activation = "relu", name = "hidden" }
    local c = d:get_config()
    assert.equal(3, c.units)
    assert.equal("relu", c.activation)
    assert.equal("hidden", c.name)
    assert.matches("unknown option 'unit'", H.error_of(function() nn.Dense { unit = 3 } end))
    assert.matches("units must be a positive integer", H.error_of(function() nn.Dense { units = 0 } end))
    assert.matches("option 'units' is required", H.error_of(function() nn.Dense {} end))
  end)

  it("summary lists layers, output shapes and parameter counts with totals", function()
    local m = moe.Sequential { nn.Dense { units = 8, name = "h" }, nn.BatchNormalization { name = "bn" },
      nn.Dense { units = 1, name = "o" }, input_shape = { 4 }, name = "net" }
    local s = m:summary { print_fn = false }
    assert.matches('Model: "net"', s)
    assert.matches("h %(Dense%)%s+%(None, 8%)%s+40", s)
    assert.matches("bn %(BatchNormalization%)%s+%(None, 8%)%s+32", s)
    assert.matches("Total params: 81", s)
    assert.matches("Trainable params: 65", s)
    assert.matches("Non%-trainable params: 16", s)
  end)

  it("errors inside a model name the layer's path and type", function()
    local inner = moe.Sequential { nn.Dense { units = 3, name = "d1" }, nn.Dense { units = 2, name = "d2" }, name = "inner" }
    local m = moe.Sequential { inner, name = "outer" }
    m(moe.randn(2, 4))
    local msg = H.error_of(function() m(moe.randn(2, 5)) end)
    assert.matches('in layer 1 %(Sequential "inner"%) of Sequential "outer": in layer 1 %(Dense "d1"%)', msg)
    assert.matches("5 features", msg)
  end)
end)

describe("composition", function()
  it("the functional API: named inputs and outputs, a shared layer, a model called inside a model", function()
    local a = moe.Input { shape = { 3 }, name = "a" }
    local b = moe.Input { shape = { 3 }, name = "b" }
    local shared = nn.Dense { units = 4, activation = "tanh", name = "shared" }
    local h = nn.Concatenate {} { shared(a), shared(b) }
    local m = moe.Model { inputs = { a = a, b = b },
      outputs = { score = nn.Dense { units = 1, name = "score" }(h), probs = nn.Dense { units = 2, activation = "softmax", name = "probs" }(h) } }
    assert.same({ -1, 1 }, m._outputs.score.shape)
    local xa, xb = moe.randn(5, 3), moe.randn(5, 3)
    local out = m { a = xa, b = xb }
    -- the same numbers by hand with the shared weights
    local ha = shared(xa)
    local hb = shared(xb)
    local ref = nn.Concatenate {} { ha, hb }:matmul(m.score.kernel) + m.score.bias
    assert.is_true((out.score - ref):abs():max():item() < 1e-6)
    assert.equal(1, #m.shared:parameters() - 1) -- kernel and bias once
    assert.equal(5, out.probs:size(1))
    -- a model is a layer: call it on new inputs
    local x1, x2 = moe.Input { shape = { 3 } }, moe.Input { shape = { 3 } }
    local outer = moe.Model { inputs = { x1, x2 }, outputs = nn.Add {} { m { a = x1, b = x2 }.score, m { a = x2, b = x1 }.score } }
    local r = outer { xa, xb }
    assert.same({ 5, 1 }, r:shape())
    assert.matches("not among the model's inputs", H.error_of(function()
      moe.Model { inputs = a, outputs = nn.Add {} { shared(a), shared(b) } } end))
  end)

  it("a layer called on a real tensor computes at once", function()
    local d = nn.Dense { units = 2 }
    assert.same({ 3, 2 }, d(moe.randn(3, 5)):shape())
  end)

  it("an MLP learns XOR", function()
    moe.manual_seed(4)
    local m = moe.Sequential { nn.Dense { units = 8, activation = "tanh" }, nn.Dense { units = 1, activation = "sigmoid" } }
    m:compile { optimizer = moe.optim.Adam { lr = 0.05 }, loss = "binary_crossentropy" }
    local x = moe.tensor({ { 0, 0 }, { 0, 1 }, { 1, 0 }, { 1, 1 } })
    local y = moe.tensor({ { 0 }, { 1 }, { 1 }, { 0 } })
    for _ = 1, 400 do m:train_on_batch(x, y) end
    local p = m:predict(x)
    assert.same({ { 0 }, { 1 }, { 1 }, { 0 } }, p:gt(0.5):to("int64"):totable())
  end)

  it("linear regression recovers known weights", function()
    moe.manual_seed(8)
    local x = moe.randn(256, 3)
    local w = moe.tensor({ { 2 }, { -1 }, { 0.5 } })
    local y = x:matmul(w) + 3
    local m = moe.Sequential { nn.Dense { units = 1 } }
    m:compile { optimizer = moe.optim.SGD { lr = 0.1 }, loss = "mse" }
    for _ = 1, 300 do m:train_on_batch(x, y) end
    local k = m:get_weights()
    assert.is_true((k[1] - w):abs():max():item() < 1e-3)
    assert.is_near(3, k[2][1], 1e-3)
  end)
end)

describe("the seeds' Keras examples (Dense, Dropout, BatchNormalization parts)", function()
  it("seed 000's multi-task network builds, runs and has the seed's output shapes", function()
    moe.manual_seed(1)
    local inputs = moe.Input { shape = { 40 } }
    local x = nn.Dense { units = 64, activation = "relu" }(inputs)
    x = nn.BatchNormalization {}(x)
    x = nn.Dense { units = 48, activation = "relu" }(x)
    x = nn.Dropout { rate = 0.2 }(x)
    x = nn.Dense { units = 32, activation = "relu" }(x)
    x = nn.Dropout { rate = 0.1 }(x)
    x = nn.Dense { units = 16, activation = "relu" }(x)
    local classification = nn.Dense { units = 5, activation = "softmax", name = "classification" }(x)
    local regression = nn.Dense { units = 1, name = "regression" }(x)
    local anomaly = nn.Dense { units = 1, activation = "sigmoid", name = "anomaly" }(x)
    local model = moe.Model { inputs = inputs, outputs = { classification, regression, anomaly } }
    model:compile { optimizer = "adam",
      loss = { classification = "categorical_crossentropy", regression = "mse", anomaly = "binary_crossentropy" },
      loss_weights = { classification = 1.0, regression = 0.5, anomaly = 0.3 } }
    local out = model(moe.randn(100, 40))
    local shapes = {}
    for i, o in ipairs(out) do shapes[i] = nn.shape_str(o:shape()) end
    print("\n  seed 000 multi-task output shapes: " .. table.concat(shapes, " "))
    assert.same({ "(100, 5)", "(100, 1)", "(100, 1)" }, shapes)
    local y = { classification = moe.randint(1, 6, 100):clamp(1, 5),
      regression = moe.randn(100, 1), anomaly = moe.rand(100, 1):gt(0.5):float() }
    local before = model:train_on_batch(moe.randn(100, 40), y)
    assert.is_true(before == before)
  end)

  it("seed 000's feature-specialized network (Dense, BatchNormalization, Dropout) predicts (100, 1)", function()
    local inputs = moe.Input { shape = { 25 } }
    local x = nn.Dense { units = 64, activation = "relu" }(inputs)
    x = nn.BatchNormalization {}(x)
    x = nn.Dropout { rate = 0.2 }(x)
    x = nn.Dense { units = 32, activation = "relu" }(x)
    x = nn.Dropout { rate = 0.1 }(x)
    local outputs = nn.Dense { units = 1, activation = "sigmoid" }(x)
    local model = moe.Model { inputs = inputs, outputs = outputs }
    model:compile { optimizer = "adam", loss = "binary_crossentropy" }
    local predictions = model(moe.randn(100, 25))
    print("\n  Feature specialized predictions shape: " .. nn.shape_str(predictions:shape()))
    assert.same({ 100, 1 }, predictions:shape())
  end)
end)
