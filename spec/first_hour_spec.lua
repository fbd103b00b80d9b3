-- A new user's first hour: modules that load in any order, the layer lifecycle
-- (build, parameters, dtypes), bad input that is refused with the function, the
-- value and the caller's line, and the memory-safety reproducers (these run
-- under AddressSanitizer in `make asan-test`).
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"
local E = H.error_of

local bin = os.getenv("MOELUA_BIN") or "build/moelua"
local here = "first_hour_spec.lua:%d+: "

local tmpname, sh = H.tmpname, H.sh

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function all_close(a, b, tol)
  local x, y = H.flat(a), H.flat(b)
  if #x ~= #y then return false end
  for i = 1, #x do if math.abs(x[i] - y[i]) > (tol or 0) then return false end end
  return true
end

describe("lazy modules", function()
  it("every lazily loaded field works as the first thing a fresh process touches (moelua -e)", function()
    local names = moe._lazy_names()
    assert.is_true(#names >= 20)
    for _, k in ipairs(names) do
      local out, err, rc = sh(bin .. " -e " .. q(("local m = require 'moe'; assert(m.%s ~= nil); "
        .. "assert(m.nn.Dense and m.nn.MMoE and m.nn.MoeLayer and m.Sequential and m.load); print('ok')"):format(k)))
      assert.are.equal(0, rc, k .. ": " .. err)
      assert.are.equal("ok\n", out, k)
    end
  end)

  it("each library module can be required first, also from plain luajit", function()
    local root = bin:match("^(.*)/[^/]+/moelua$") or "."
    local build = bin:match("^(.*)/moelua$")
    local env = ("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' "):format(root, root, build)
    local plain = not os.getenv("MOELUA_ASAN") -- the ASan runtime must come first in a process
    for _, m in ipairs { "moe.model", "moe.trainer", "moe.mixtures", "moe.sparse", "moe.nn", "moe.callbacks",
                         "moe.optim", "moe.losses", "moe.io", "moe.data", "moe.datasets", "moe.testing" } do
      local code = q(("require '%s'; local moe = require 'moe'; "
        .. "local m = moe.Sequential{ moe.nn.Dense{units = 2} }; print(m(moe.ones(3, 4)):size(2))"):format(m))
      local out, err, rc = sh(bin .. " -e " .. code)
      assert.are.equal(0, rc, m .. ": " .. err)
      assert.are.equal("2\n", out)
      if plain then
        out, err, rc = sh(env .. "luajit -e " .. code)
        assert.are.equal(0, rc, m .. " (luajit): " .. err)
        assert.are.equal("2\n", out)
      end
    end
  end)

  it("a script whose first call is moe.load predicts with the saved model", function()
    moe.manual_seed(3)
    local inp = moe.Input { shape = { 4 } }
    local model = moe.Model { inputs = inp, outputs = nn.Dense { units = 2 }(inp) }
    local path = tmpname(".safetensors")
    model:save(path)
    local x = moe.randn(3, 4)
    local want = model(x)
    local xs = tmpname(".safetensors")
    moe.save_tensors(xs, { x = x })
    local script = H.write_file(tmpname(".lua"), ([[
local moe = require "moe"
local m = moe.load(%q)
local y = m(moe.load_tensors(%q).x)
for _, v in ipairs(y:reshape(-1):totable()) do io.write(("%%.17g "):format(v)) end
]]):format(path, xs))
    local out, err, rc = sh(bin .. " run " .. script)
    os.remove(script); os.remove(path); os.remove(xs)
    assert.are.equal(0, rc, err)
    local got = {}
    for v in out:gmatch("%S+") do got[#got + 1] = tonumber(v) end
    assert.are.same(H.flat(want), got)
  end)
end)

describe("layer lifecycle", function()
  it("build() marks a layer built: weights set after build survive the first call", function()
    local d = nn.Dense { units = 3 }
    d:build { 4, 5 }
    assert.is_true(d.built)
    local k = moe.arange(15):reshape(5, 3):to("float32")
    d:set_weights { k, moe.tensor { 1, 2, 3 } }
    local x = moe.randn(2, 5)
    assert.is_true(all_close(d(x), x:matmul(k) + moe.tensor { 1, 2, 3 }, 1e-5))
    assert.are.equal(2, #d:parameters())
    -- a second build with another shape is refused; the same shape is a no-op
    d:build { 7, 5 }
    assert.matches(here .. "build: Dense \"[%w_]+\" is already built for input shape %(4, 5%), not %(4, 6%)",
      E(function() d:build { 4, 6 } end))
  end)

  it("parameters() of an unbuilt model is an error saying how to build it, never an empty list", function()
    local m = moe.Sequential { nn.Dense { units = 4 }, nn.Dense { units = 1 } }
    local msg = E(function() local _ = m:parameters() end)
    assert.matches(here .. "parameters: Sequential \"[%w_]+\" is not built yet %(its layer Dense \"[%w_]+\" is not%)", msg)
    assert.matches("model:build", msg)
    assert.matches("named_parameters: .* not built", E(function() local _ = m:named_parameters() end))
    assert.matches("count_params: Sequential .* is not built yet", E(function() local _ = m:count_params() end))
    m:zero_grad() -- PyTorch's loop may start with it: fine before the first call
    m:build { -1, 5 }
    local ps = m:parameters()
    assert.are.equal(4, #ps)
    assert.are.same({ 5, 4 }, ps[1]:shape())
    -- layers that make no weights need no build
    assert.are.same({}, nn.Dropout { rate = 0.5 }:parameters())
    assert.are.same({}, moe.Sequential { nn.Activation "relu" }:parameters())
  end)

  it("an optimizer step with no parameters is an error; the PyTorch loop trains a built model", function()
    local opt = moe.optim.SGD { lr = 0.1 }
    assert.matches(here .. "SGD.step: the list of parameters is empty", E(function() opt:step {} end))
    moe.manual_seed(5)
    local m = moe.Sequential { nn.Dense { units = 1 } }
    m:build { -1, 3 }
    local params = m:parameters()
    local x, y = moe.randn(64, 3), moe.randn(64, 1)
    local function loss() return ((m(x) - y):square()):mean() end
    local before = loss():item()
    for _ = 1, 20 do
      m:zero_grad()
      loss():backward()
      opt:step(params)
    end
    assert.is_true(loss():item() < before * 0.9)
  end)

  it("a lazily built layer takes its first input's float dtype; later inputs are cast; dtype errors name dtypes", function()
    local d = nn.Dense { units = 3 }
    local x64 = moe.randn(4, 5, { dtype = "float64" })
    assert.are.equal("float64", d(x64):dtype())
    assert.are.equal("float64", d.kernel:dtype())
    local y32 = d(x64:float())
    assert.are.equal("float64", y32:dtype())
    assert.is_true(all_close(y32, d(x64:float():double()), 0))
    -- an explicit dtype wins, and float64 inputs are cast to it
    local d32 = nn.Dense { units = 3, dtype = "float32" }
    assert.are.equal("float32", d32(x64):dtype())
    assert.are.equal("float32", d32.kernel:dtype())
    -- the gradient flows back through the cast, in the input's dtype
    local xg = moe.randn(2, 5, { dtype = "float64", requires_grad = true })
    d32(xg):sum():backward()
    assert.are.equal("float64", xg.grad:dtype())
    assert.is_true(all_close(xg.grad, d32.kernel:sum(2):reshape(1, 5):expand(2, 5):double(), 1e-6))
    -- a layer without weights passes either float dtype through, unless given one
    local act = nn.Activation "tanh"
    assert.are.equal("float64", act(x64):dtype())
    assert.are.equal("float32", act(x64:float()):dtype())
    assert.are.equal("float32", nn.Activation { activation = "tanh", dtype = "float32" }(x64):dtype())
    -- a dtype problem says so (it used to be reported as a shape problem)
    assert.matches(here .. "linear: input, kernel and bias must have one float dtype, got input float64, kernel float32",
      E(function() local _ = moe.linear(x64, moe.ones(5, 3), moe.ones(3)) end))
    -- a fresh layer gradchecks (it builds in float64 from its first input)
    local ok, err = moe.testing.gradcheck(nn.Dense { units = 2, activation = "tanh" }, { moe.randn(3, 4, { dtype = "float64" }) })
    assert.is_true(ok, err)
  end)

  it("a subclass's build may call its parent's (Keras's super().build)", function()
    local D2 = nn.Dense:extend("FirstHourD2")
    function D2:build(shape)
      nn.Dense.build(self, shape)
      self:add_weight("extra", { 1 }, { initializer = "ones" })
    end
    local d = D2 { units = 3 }
    d:build { -1, 4 }
    assert.are.same({ 4, 3 }, d.kernel:shape())
    assert.are.equal(3, #d:parameters())
    assert.are.same({ 2, 3 }, D2 { units = 3 }(moe.randn(2, 4)):shape())
  end)

  it("a Sequential that starts with an Embedding builds from input_shape and reloads", function()
    local s = moe.Sequential { nn.Embedding { input_dim = 10, output_dim = 4 }, nn.Flatten {}, nn.Dense { units = 2 },
      input_shape = { 3 } }
    local ids = moe.tensor({ { 1, 2, 10 } }, { dtype = "int64" })
    local y = s(ids)
    local path = tmpname(".safetensors")
    s:save(path)
    local again = moe.load(path)
    os.remove(path)
    assert.are.same(y:totable(), again(ids):totable())
  end)

  it("a given (or restored) name moves the automatic names past it", function()
    nn.Dense { units = 1, name = "dense_90000" }
    assert.are.equal("dense_90001", nn.Dense { units = 1 }.name)
    nn.Dense { units = 1, name = "my_layer" } -- not of the base_N form: no effect
    assert.are.equal("dense_90002", nn.Dense { units = 1 }.name)
  end)

  it("a model built lazily in float64 saves and loads bit for bit in float64", function()
    local m = moe.Sequential { nn.Dense { units = 3, activation = "tanh" }, nn.Dense { units = 1 } }
    local x = moe.randn(5, 4, { dtype = "float64" })
    local y = m(x)
    local path = tmpname(".safetensors")
    m:save(path)
    local again = moe.load(path)
    os.remove(path)
    local y2 = again(x)
    assert.are.equal("float64", y2:dtype())
    assert.are.same(y:totable(), y2:totable())
  end)

  it("a Sequential built by build{} runs in its dtype option", function()
    local m = moe.Sequential { nn.Dense { units = 2, dtype = "float64" } }
    m:build { -1, 3 }
    assert.are.equal("float64", m:parameters()[1]:dtype())
    assert.matches("build: Sequential .* expected an input shape", E(function() moe.Sequential { nn.Dense { units = 1 } }:build "x" end))
  end)
end)

describe("bad input is refused, naming the function and the value", function()
  it("optimizer hyperparameters", function()
    local cases = {
      { moe.optim.Adam, { lr = 0 / 0 }, "Adam: lr must be a finite number >= 0 or a schedule, got %-?nan" },
      { moe.optim.Adam, { lr = math.huge }, "Adam: lr must be a finite number >= 0 or a schedule, got inf" },
      { moe.optim.Adam, { beta1 = 2 }, "Adam: beta1 must be in %[0, 1%), got 2" },
      { moe.optim.Adam, { beta_2 = 1 }, "Adam: beta2 must be in %[0, 1%), got 1" },
      { moe.optim.AdamW, { weight_decay = 0 / 0 }, "AdamW: weight_decay must be a finite number >= 0" },
      { moe.optim.SGD, { lr = 0.1, momentum = -1 }, "SGD: momentum must be a finite number >= 0, got %-1" },
      { moe.optim.SGD, { lr = 0.1, nesterov = 1 }, "SGD: nesterov must be true or false, got 1" },
      { moe.optim.RMSprop, { rho = 1.5 }, "RMSprop: alpha must be in %[0, 1%], got 1.5" },
      { moe.optim.SGD, { lr = 0.1, clipnorm = 0 }, "SGD: clip_norm must be a finite number > 0, got 0" },
    }
    for _, c in ipairs(cases) do
      assert.matches(here .. c[3], E(function() local _ = c[1](c[2]) end))
    end
    local opt = moe.optim.SGD { lr = 0.1 }
    assert.matches(here .. "set_lr: expected a finite number >= 0, got %-?nan", E(function() opt:set_lr(0 / 0) end))
    local sched = moe.optim.SGD { lr = function(step) return step == 0 and 0.1 or 0 / 0 end }
    local w = moe.ones(2, { requires_grad = true })
    w:sum():backward()
    sched:step { w }
    assert.matches("SGD.step: the lr schedule gives %-?nan at step 1", E(function() sched:step { w } end))
  end)

  it("layer and loss options", function()
    assert.matches(here .. "Dropout: option 'rate' must be a finite number, got %-?nan", E(function() local _ = nn.Dropout { rate = 0 / 0 } end))
    local L = moe.losses
    assert.matches(here .. "binary_crossentropy: label_smoothing must be a number in %[0, 1%], got 2",
      E(function() local _ = L.binary_crossentropy(moe.tensor { 1, 0 }, moe.tensor { 0.5, 0.5 }, { label_smoothing = 2 }) end))
    assert.matches("categorical_crossentropy: label_smoothing must be a number in %[0, 1%], got %-0.1",
      E(function() local _ = L.categorical_crossentropy(moe.eye(2), moe.eye(2) * 0.5 + 0.25, { label_smoothing = -0.1 }) end))
    local p = moe.tensor { { 0.5, 0.5 }, { 0.2, 0.8 } }
    assert.matches(here .. "sparse_categorical_crossentropy: labels must be integer class ids, got 1.5 at position 1",
      E(function() local _ = L.sparse_categorical_crossentropy(moe.tensor { 1.5, 2 }, p) end))
    assert.matches("labels must be integer class ids, got %-?nan at position 2",
      E(function() local _ = L.sparse_categorical_crossentropy(moe.tensor { 1, 0 / 0 }, p) end))
    assert.matches(here .. "categorical_crossentropy: labels must be integer class ids, got 1.5",
      E(function() local _ = L.categorical_crossentropy(moe.tensor { 1.5, 2 }, p) end))
    local emb = nn.Embedding { input_dim = 3, output_dim = 2 }
    assert.matches(here .. "Embedding \"[%w_]+\": ids must be in 1..3 %(1%-based%)",
      E(function() local _ = emb(moe.tensor({ 0, 1 }, { dtype = "int64" })) end))
    assert.matches("huber: delta must be a finite number > 0, got 0", E(function() local _ = L.huber(moe.ones(2), moe.ones(2), { delta = 0 }) end))
    -- integer-valued float labels still work, and give the naive value
    local got = L.sparse_categorical_crossentropy(moe.tensor { 1, 2 }, p):item()
    assert.is_true(math.abs(got - (-(math.log(0.5) + math.log(0.8)) / 2)) < 1e-6)
  end)

  it("layer, regularizer and callback options: NaN, out-of-range and wrong dtypes", function()
    local cases = {
      { function() local _ = nn.BatchNormalization { momentum = 0 / 0 } end, "BatchNormalization: option 'momentum' must be in %[0, 1%], got %-?nan" },
      { function() local _ = nn.BatchNormalization { momentum = 5 } end, "option 'momentum' must be in %[0, 1%], got 5" },
      { function() local _ = nn.BatchNormalization { epsilon = -1 } end, "option 'epsilon' must be a finite number >= 0, got %-1" },
      { function() local _ = nn.LayerNormalization { epsilon = 0 / 0 } end, "LayerNormalization: option 'epsilon' must be a finite number >= 0" },
      { function() local _ = nn.TokensChooseMaskedRouter { num_experts = 2, load_balancing_loss_weight = -1 } end,
        "TokensChooseMaskedRouter: option 'load_balancing_loss_weight' must be a finite number >= 0, got %-1" },
      { function() local _ = nn.TokensChooseMaskedRouter { num_experts = 2, router_z_loss_weight = 0 / 0 } end,
        "option 'router_z_loss_weight' must be a finite number >= 0" },
      { function() local _ = nn.Dense { units = 2, dtype = "int32" } end, "Dense: option 'dtype' must be \"float32\" or \"float64\", got \"int32\" %(a string%)" },
      { function() local _ = moe.regularizers.l2 { l2 = 0 / 0 } end, "l2: l2 must be a finite number >= 0, got %-?nan" },
      { function() local _ = moe.callbacks.EarlyStopping { patience = -1 } end, "EarlyStopping: patience must be an integer >= 0, got %-1" },
      { function() local _ = moe.callbacks.ReduceLROnPlateau { factor = 2 } end, "ReduceLROnPlateau: factor must be in %(0, 1%), got 2" },
    }
    for _, c in ipairs(cases) do assert.matches(here .. ".*" .. c[2], E(c[1])) end
    local sl = E(function()
      local _ = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 2, d_ff = 4 },
        router = nn.TokensChooseMaskedRouter { num_experts = 2 }, train_capacity_factor = 0 / 0 }
    end)
    assert.matches("MoeLayer: option 'train_capacity_factor' must be a finite number > 0", sl)
    -- Keras's positional forms
    assert.are.equal(0.01, moe.regularizers.l2(0.01).l2)
    assert.are.equal(3, moe.constraints.max_norm(3).max_value)
  end)

  it("add_metric takes a number or a tensor; train_on_batch refuses 0 rows as fit does, and names itself", function()
    local d = nn.Dense { units = 1 }
    assert.matches(here .. "add_metric: Dense .* metric 'm' must be a number or a tensor, got nil", E(function() d:add_metric("m", nil) end))
    local m = moe.Sequential { nn.Dense { units = 1 }, input_shape = { 2 } }
    m:compile { optimizer = "sgd", loss = "mse" }
    assert.matches(here .. "train_on_batch: x has 0 rows", E(function() local _ = m:train_on_batch(moe.zeros(0, 2), moe.zeros(0, 1)) end))
    -- errors from inside the step (the loss, a layer, compile) name train_on_batch at the caller's line
    assert.matches(here .. "train_on_batch: mean_squared_error: .*%[5,1%].*%[4,1%]",
      E(function() local _ = m:train_on_batch(moe.zeros(4, 2), moe.zeros(5, 1)) end))
    assert.matches(here .. "train_on_batch: in layer 1 %(Dense .*input has 3 features",
      E(function() local _ = m:train_on_batch(moe.zeros(4, 3), moe.zeros(4, 1)) end))
    local raw = moe.Sequential { nn.Dense { units = 1 }, input_shape = { 2 } }
    assert.matches(here .. "train_on_batch: Sequential .*call compile{...} first",
      E(function() local _ = raw:train_on_batch(moe.zeros(4, 2), moe.zeros(4, 1)) end))
  end)

  it("predict returns outputs keyed like the model's: a list for a list (as Keras); load checks its options", function()
    local x = moe.Input { shape = { 3 } }
    local a, b = nn.Dense { units = 1 }(x), nn.Dense { units = 2 }(x)
    local m = moe.Model { inputs = x, outputs = { a, b } }
    local xb = moe.randn(5, 3)
    local p, direct = m:predict(xb, { batch_size = 2 }), m(xb)
    assert.are.same(direct[1]:totable(), p[1]:totable())
    assert.are.same(direct[2]:totable(), p[2]:totable())
    local named = moe.Model { inputs = x, outputs = { first = a, second = b } }:predict(xb)
    assert.are.same({ 5, 2 }, named.second:shape())
    assert.matches(here .. "load: options must be a table", E(function() local _ = moe.load("x.moe", 5) end))
    assert.matches(here .. "load: unknown option 'custom'", E(function() local _ = moe.load("x.moe", { custom = {} }) end))
  end)

  it("errors inside fit, evaluate and predict name them, at the caller's line", function()
    local m = moe.Sequential { nn.Dense { units = 3, activation = "softmax" }, input_shape = { 4 } }
    m:compile { optimizer = "sgd", loss = "categorical_crossentropy" }
    local x = moe.randn(8, 4)
    assert.matches(here .. "fit: categorical_crossentropy: labels must be class ids in 1..3, got values in 1..5",
      E(function() local _ = m:fit { x = x, y = moe.tensor { 1, 2, 3, 5, 1, 2, 3, 1 }, verbose = 0 } end))
    assert.matches(here .. "evaluate: categorical_crossentropy: labels must be class ids",
      E(function() local _ = m:evaluate { x = x, y = moe.tensor { 1, 2, 3, 5, 1, 2, 3, 1 }, verbose = 0 } end))
    assert.matches(here .. "predict: .*input has 7 features", E(function() local _ = m:predict(moe.randn(2, 7)) end))
  end)

  it("the stateful AUC reports bad labels and weights; an undefined AUC is NaN", function()
    local a = moe.metrics.get("auc")
    a:update(moe.tensor { 0, 1, 1 }, moe.tensor { 0.1, 0.5, 0.9 }, moe.tensor { 1, -1, 1 })
    assert.matches(here .. "auc: weight 2 is %-1", E(function() local _ = a:result() end))
    local b = moe.metrics.get("auc")
    b:update(moe.tensor { 1, 1 }, moe.tensor { 0.1, 0.5 })
    local v = b:result()
    assert.is_true(v ~= v)
    local m = moe.Sequential { nn.Dense { units = 1, activation = "sigmoid" }, input_shape = { 3 } }
    m:compile { optimizer = "sgd", loss = "binary_crossentropy", metrics = { "auc" } }
    assert.matches(here .. "fit: auc: weight %d+ is %-1", E(function()
      local _ = m:fit { x = moe.randn(4, 3), y = moe.tensor { { 0 }, { 1 }, { 1 }, { 0 } },
        sample_weight = moe.tensor { 1, -1, 1, 1 }, verbose = 0 }
    end))
  end)

  it("creation functions: holes, stray keys, values a dtype cannot hold, seeds", function()
    assert.matches(here .. "tensor: entry 1, 1099511627776, does not fit dtype int32",
      E(function() local _ = moe.tensor({ 2 ^ 40 }, { dtype = "int32" }) end))
    assert.matches(here .. "full: the value 1099511627776 does not fit dtype int32",
      E(function() local _ = moe.full({ 2 }, 2 ^ 40, { dtype = "int32" }) end))
    assert.matches("tensor: the value nan does not fit dtype int64", E(function() local _ = moe.tensor(0 / 0, { dtype = "int64" }) end))
    assert.are.same({ 2147483647, -2147483648 }, moe.tensor({ 2 ^ 31 - 1, -2 ^ 31 }, { dtype = "int32" }):totable())
    assert.matches(here .. "tensor: %(top%) has a nil before entry %[3%]", E(function() local _ = moe.tensor { 1, nil, 3 } end))
    assert.matches(here .. "tensor: %[2%] has a nil before entry %[3%]", E(function() local _ = moe.tensor { { 1, 2, 3 }, { 4, nil, 6 } } end))
    assert.matches(here .. "tensor: %(top%) has the key dtype", E(function() local _ = moe.tensor { 1, 2, dtype = "int32" } end))
    assert.matches(here .. "tensor: %(top%) has the key %[0%], which is not a list position", E(function() local _ = moe.tensor { [0] = 1, 2 } end))
    assert.matches("randint: high is 1.15%d+e%+18, beyond the integers moelua takes", E(function() local _ = moe.randint(1, 2 ^ 60, { 2 }) end))
    assert.matches(here .. "randint: values up to 1099511627776 do not fit dtype int32",
      E(function() local _ = moe.randint(1, 2 ^ 40, { 3 }, { dtype = "int32" }) end))
    assert.matches(here .. "randperm: values up to 4 do not fit dtype bool", E(function() local _ = moe.randperm(4, { dtype = "bool" }) end))
    assert.matches("randperm: values up to 20000000 do not fit dtype float32",
      E(function() local _ = moe.randperm(2e7, { dtype = "float32" }) end))
    -- what does fit is exact
    local r = moe.randint(-2 ^ 31, 2 ^ 31 - 1, { 1000 }, { dtype = "int32" })
    assert.is_true(r:min():item() < -2 ^ 29 and r:max():item() > 2 ^ 29)
    assert.are.same({ 1, 2, 3, 4, 5 }, (function() local t = moe.randperm(5, { dtype = "int32" }):totable(); table.sort(t); return t end)())
    for _, bad in ipairs { 1e300, -1, 0.5, 0 / 0, 2 ^ 64 } do
      assert.matches(here .. "manual_seed: seed must be an integer in %[0, 2%^64%), got ", E(function() moe.manual_seed(bad) end))
    end
    moe.manual_seed(2 ^ 63)
    local a = moe.rand(3)
    moe.manual_seed(2 ^ 63)
    assert.are.same(a:totable(), moe.rand(3):totable())
  end)

  it("C argument checks name the function and the caller's line, never '?'", function()
    local cases = {
      { function() local _ = moe.full({ 2 }, "x") end, "full: argument #2 must be a number, got string" },
      { function() local _ = moe.linspace("a", 1, 3) end, "linspace: argument #1 must be a number, got string" },
      { function() local _ = moe.ones(2):fill_({}) end, "fill_: argument #2 must be a number, got table" },
      { function() local _ = moe.core.st_save(1, "{}", {}) end, "save: argument #1 %(the path%) must be a string, got number" },
      { function() local _ = moe.core.read_csv(2, true, ",", 0) end, "read_csv: argument #1 %(the path%) must be a string, got number" },
      { function() local _ = moe.cuda.set_precision("fp8") end, "unknown value 'fp8'" },
    }
    for _, c in ipairs(cases) do
      local msg = E(c[1])
      assert.matches(c[2], msg)
      assert.is_nil(msg:find("'?'", 1, true), msg)
    end
    assert.matches(here .. "full: argument #2", E(cases[1][1]))
  end)
end)

describe("memory safety (run under ASan by make asan-test)", function()
  it("roc_auc's error paths name the bad weight, label or score", function()
    local y, s = moe.tensor { 0, 1, 1 }, moe.tensor { 0.1, 0.5, 0.9 }
    assert.matches(here .. "roc_auc: weight 2 is %-1 %(must be finite and >= 0%)",
      E(function() local _ = moe.metrics.roc_auc(y, s, moe.tensor { 1, -1, 1 }) end))
    assert.matches("roc_auc: weight 3 is %-?nan", E(function() local _ = moe.metrics.roc_auc(y, s, moe.tensor { 1, 1, 0 / 0 }) end))
    assert.matches("roc_auc: weight 1 is inf", E(function() local _ = moe.metrics.roc_auc(y, s, moe.tensor { 1 / 0, 1, 1 }) end))
    assert.matches("roc_auc: label 2 is NaN", E(function() local _ = moe.metrics.roc_auc(moe.tensor { 0, 0 / 0, 1 }, s) end))
    assert.matches("roc_auc: score 3 is NaN", E(function() local _ = moe.metrics.roc_auc(y, moe.tensor { 0.1, 0.2, 0 / 0 }) end))
    assert.matches("roc_auc: label 2 is 2 %(binary labels are 0 or 1%)", E(function() local _ = moe.metrics.roc_auc(moe.tensor { 0, 2, 1 }, s) end))
    -- and the value itself, against the pairwise definition
    local auc = moe.metrics.roc_auc(moe.tensor { 0, 1, 0, 1 }, moe.tensor { 0.2, 0.6, 0.7, 0.9 })
    assert.are.equal(0.75, auc)
  end)
end)

describe("read_csv", function()
  local function write(text) return H.write_file(tmpname(".csv"), text) end

  it("reads pandas's default missing-value spellings as missing, unless keep_default_na = false", function()
    local p = write("a,b\n1,x\nNA,NULL\nnan,None\nN/A,<NA>\n4,y\n")
    local fr = moe.data.read_csv(p)
    local a = fr:values("a"):totable()
    assert.are.equal(1, a[1]); assert.are.equal(4, a[5])
    for i = 2, 4 do assert.is_true(a[i] ~= a[i]) end
    assert.are.same({ 1, 0, 0, 0, 2 }, fr:codes("b"):totable())
    assert.are.same({ "x", "y" }, fr:levels("b"))
    local kept = moe.data.read_csv(p, { keep_default_na = false, na_values = { "N/A" } })
    assert.is_false(kept:is_numeric("a"))
    assert.are.same({ "x", "NULL", "None", "<NA>", "y" }, kept:levels("b"))
    assert.are.same({ "1", "NA", "nan", "4" }, kept:levels("a"))
    assert.are.same({ 1, 2, 3, 0, 4 }, kept:codes("a"):totable()) -- N/A was asked for
    os.remove(p)
  end)

  it("checks column names across many columns (a duplicate far apart is found)", function()
    local n = 20000
    local names, vals = {}, {}
    for i = 1, n do names[i] = "c" .. i; vals[i] = tostring(i) end
    local p = write(table.concat(names, ",") .. "\n" .. table.concat(vals, ",") .. "\n")
    local fr = moe.data.read_csv(p, { dtypes = { c19999 = "categorical" } })
    assert.are.equal(n, fr:ncols())
    assert.are.equal(12345, fr:values("c12345"):totable()[1])
    assert.is_false(fr:is_numeric("c19999"))
    names[n] = "c2"
    local p2 = write(table.concat(names, ",") .. "\n" .. table.concat(vals, ",") .. "\n")
    assert.matches("columns 2 and 20000 are both named 'c2'", E(function() local _ = moe.data.read_csv(p2) end))
    os.remove(p); os.remove(p2)
  end)
end)
