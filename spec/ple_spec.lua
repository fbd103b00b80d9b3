-- nn.CGC and nn.PLE: shapes and options, errors, gradchecks, and parity with
-- torch-rechub 0.9.0 on the same weights (spec/fixtures/ple_cases.json, from
-- spec/fixtures/make_ple_fixture.py): forward in eval and training mode, the
-- BatchNorm running statistics after a training pass, and the gradients of a
-- loss with respect to every weight.
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"
local gradcheck = moe.testing.gradcheck
local cjson = require "cjson"

local function ple(o)
  local base = { n_level = 2, n_expert_specific = 2, n_expert_shared = 1, expert_params = { dims = { 6, 4 } },
    num_tasks = 2 }
  for k, v in pairs(o or {}) do base[k] = v end
  return base
end

describe("BatchNormalization with PyTorch's BatchNorm1d settings", function()
  it("normalises with the biased batch variance and moves the running one towards the unbiased", function()
    local bn = nn.BatchNormalization { momentum = 0.9, epsilon = 1e-5, unbiased_moving_variance = true, dtype = "float64" }
    local x = moe.randn(6, 3, { dtype = "float64" })
    local y = bn(x)
    local X = x:totable()
    for f = 1, 3 do
      local m, ss = 0, 0
      for b = 1, 6 do m = m + X[b][f] / 6 end
      for b = 1, 6 do ss = ss + (X[b][f] - m) ^ 2 end
      for b = 1, 6 do assert.is_near((X[b][f] - m) / math.sqrt(ss / 6 + 1e-5), y[b][f], 1e-12) end
      assert.is_near(0.1 * m, bn.moving_mean[f], 1e-12)
      assert.is_near(0.9 + 0.1 * ss / 5, bn.moving_variance[f], 1e-12)
    end
    -- Keras's default stays: the biased variance moves the moving one
    local k = nn.BatchNormalization { momentum = 0.9, dtype = "float64" }
    k(x)
    local m = x:mean(1, { keepdim = true })
    assert.is_true((k.moving_variance - ((x - m):square():mean(1) * 0.1 + 0.9)):abs():max():item() < 1e-12)
  end)
end)

describe("nn.CGC / nn.PLE shapes and options", function()
  it("PLE without towers returns the last level's per-task outputs; with towers each task's [B, 1]", function()
    local x = moe.randn(5, 7)
    local m = nn.PLE(ple())
    local outs = m(x)
    assert.equal(2, #outs)
    for _, o in ipairs(outs) do assert.same({ 5, 4 }, o:shape()) end
    local t = nn.PLE(ple { task_types = { "classification", "regression" }, num_tasks = false,
      tower_params_list = { { dims = { 3 } }, { dims = {} } } })
    local ys = t(x)
    assert.equal(2, #ys)
    assert.same({ 5, 1 }, ys[1]:shape())
    assert.same({ 5, 1 }, ys[2]:shape())
    assert.is_true(ys[1]:min():item() > 0 and ys[1]:max():item() < 1) -- sigmoid
    -- with num_tasks alone, the towers give logits (no prediction layer)
    local l = nn.PLE(ple { tower_params_list = { { dims = { 3 } }, { dims = {} } } })
    l(x)
    l:set_weights(t:get_weights())
    l:eval(); t:eval()
    assert.is_true((l(x)[2] - t(x)[2]):abs():max():item() == 0)
    assert.is_true((l(x)[1]:sigmoid() - t(x)[1]):abs():max():item() < 1e-6)
  end)

  it("CGC takes one tensor or rechub's list of T + 1 inputs; the shared gate adds output T + 1", function()
    local c = nn.CGC { n_expert_specific = 1, n_expert_shared = 2, expert_params = { dims = { 3 } }, num_tasks = 3 }
    local x = moe.randn(4, 6)
    local outs = c(x)
    assert.equal(3, #outs)
    assert.same({ 4, 3 }, outs[3]:shape())
    c:eval()
    local a, b = c(x), c({ x, x, x, x })
    for t = 1, 3 do assert.equal(0, (a[t] - b[t]):abs():max():item()) end
    -- each task's gate weights its own and the shared experts, and sums to one
    assert.equal(3, #c.last_gates)
    assert.same({ 4, 3 }, c.last_gates[1]:shape())
    assert.is_true((c.last_gates[2]:sum(2) - 1):abs():max():item() < 1e-6)
    local s = nn.CGC { n_expert_specific = 2, n_expert_shared = 1, expert_params = { dims = { 3 } }, num_tasks = 2,
      shared_gate = true }
    local so = s(x)
    assert.equal(3, #so)
    assert.same({ 4, 5 }, s.last_gates[3]:shape()) -- over all 2 * 2 + 1 experts
    -- no shared experts: each task mixes its own only
    local n = nn.CGC { n_expert_specific = 2, n_expert_shared = 0, expert_params = { dims = { 3 } }, num_tasks = 2 }
    assert.same({ 4, 3 }, n(x)[2]:shape())
  end)

  it("has rechub's weights, in its state_dict order (Linear weights as [in, out]); set_weights round-trips", function()
    local m = nn.PLE(ple { n_level = 2, tower_params_list = { { dims = { 3 } }, { dims = {} } } })
    m(moe.randn(3, 5))
    local names = nn.keras_weights(m)
    assert.equal("cgc_1/expert_specific_1/linear_1/kernel", names[1])
    assert.same({ "cgc_1/expert_specific_1/bn_1/gamma", "cgc_1/expert_specific_1/bn_1/beta",
      "cgc_1/expert_specific_1/bn_1/moving_mean", "cgc_1/expert_specific_1/bn_1/moving_variance" },
      { names[3], names[4], names[5], names[6] })
    assert.equal("tower_2/linear_out/bias", names[#names])
    -- 2 levels x (4 + 1 experts of 2 layers, 2 task gates) + the level-1 shared gate, 2 towers
    assert.equal(2 * (5 * 2 * 6 + 2 * 6) + 6 + (6 + 2) + 2, #names)
    local w = m:get_weights()
    for i, t in ipairs(w) do w[i] = moe.randn(t:shape()) end
    for i, t in ipairs(w) do if names[i]:match("moving_variance$") then w[i] = t:abs() + 0.5 end end
    m:set_weights(w)
    for i, t in ipairs(m:get_weights()) do assert.equal(0, (t - w[i]):abs():max():item(), names[i]) end
    -- and a saved model keeps them
    local x = moe.Input { shape = { 5 } }
    local ys = nn.PLE(ple { n_level = 2, tower_params_list = { { dims = { 3 } }, { dims = {} } } })(x)
    local model = moe.Model { inputs = x, outputs = ys }
    model:set_weights(w)
    local p = os.tmpname()
    model:save(p)
    local again = moe.load(p)
    os.remove(p)
    local xb = moe.randn(4, 5)
    assert.equal(0, (again:predict(xb)[1] - model:predict(xb)[1]):abs():max():item())
  end)

  it("trains: a two-task PLE fits separable targets", function()
    moe.manual_seed(3)
    local x = moe.Input { shape = { 6 } }
    local ys = nn.PLE(ple { task_types = { "classification", "classification" }, num_tasks = false,
      tower_params_list = { { dims = { 4 } }, { dims = { 4 } } } })(x)
    local model = moe.Model { inputs = x, outputs = { a = ys[1], b = ys[2] } }
    model:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "binary_crossentropy" }
    local xb = moe.randn(64, 6)
    local y = { a = xb:narrow(2, 1, 1):gt(0):float(), b = xb:narrow(2, 2, 1):gt(0):float() }
    local first = model:train_on_batch(xb, y)
    local last
    for _ = 1, 80 do last = model:train_on_batch(xb, y) end
    assert.is_true(last < first * 0.6, ("loss %g -> %g"):format(first, last))
  end)
end)

describe("nn.CGC / nn.PLE errors", function()
  local here = "ple_spec%.lua:%d+: "
  local function E(f) return H.error_of(f) end
  it("name the layer, the option, the value and the caller's line", function()
    assert.matches(here .. "PLE: option 'n_level' is required",
      E(function() local _ = nn.PLE { n_expert_specific = 1, n_expert_shared = 1, expert_params = { dims = { 2 } }, num_tasks = 2 } end))
    assert.matches(here .. "PLE: n_level must be a positive integer, got 0", E(function() local _ = nn.PLE(ple { n_level = 0 }) end))
    assert.matches(here .. "PLE: n_expert_shared must be an integer >= 0, got %-1",
      E(function() local _ = nn.PLE(ple { n_expert_shared = -1 }) end))
    assert.matches(here .. "PLE: n_expert_specific must be a positive integer, got 1%.5",
      E(function() local _ = nn.PLE(ple { n_expert_specific = 1.5 }) end))
    assert.matches(here .. "PLE: expert_params%.dims must be a non%-empty list of sizes",
      E(function() local _ = nn.PLE(ple { expert_params = { activation = "relu" } }) end))
    assert.matches(here .. "PLE: expert_params%.dims%[2%] must be a positive integer, got \"4\"",
      E(function() local _ = nn.PLE(ple { expert_params = { dims = { 3, "4" } } }) end))
    assert.matches(here .. "PLE: expert_params has an unknown key \"dim\"",
      E(function() local _ = nn.PLE(ple { expert_params = { dim = { 3 } } }) end))
    assert.matches(here .. "PLE: expert_params%.dropout must be a number in %[0, 1%), got 1",
      E(function() local _ = nn.PLE(ple { expert_params = { dims = { 3 }, dropout = 1 } }) end))
    assert.matches(here .. "PLE expert_params: unknown activation 'dice'",
      E(function() local _ = nn.PLE(ple { expert_params = { dims = { 3 }, activation = "dice" } }) end))
    assert.matches(here .. "PLE: task_types%[2%] must be \"classification\" or \"regression\", got \"classfication\"",
      E(function() local _ = nn.PLE(ple { num_tasks = false, task_types = { "regression", "classfication" } }) end))
    assert.matches(here .. "PLE: num_tasks %(3%) and task_types %(2 entries%) disagree",
      E(function() local _ = nn.PLE(ple { num_tasks = 3, task_types = { "regression", "regression" } }) end))
    assert.matches(here .. "PLE: give task_types",
      E(function() local _ = nn.PLE(ple { num_tasks = false }) end))
    assert.matches(here .. "PLE: tower_params_list must be a list of 2 tables %(one per task%), got 1 entries",
      E(function() local _ = nn.PLE(ple { tower_params_list = { { dims = { 2 } } } }) end))
    assert.matches(here .. "PLE: tower_params_list%[2%]%.dims%[1%] must be a positive integer, got 0",
      E(function() local _ = nn.PLE(ple { tower_params_list = { { dims = { 2 } }, { dims = { 0 } } } }) end))
    assert.matches(here .. "PLE: unknown option 'n_experts_shared'",
      E(function() local _ = nn.PLE(ple { n_experts_shared = 2 }) end))
    assert.matches(here .. "CGC: n_expert_specific must be a positive integer, got 0",
      E(function() local _ = nn.CGC { n_expert_specific = 0, n_expert_shared = 1, expert_params = { dims = { 2 } }, num_tasks = 2 } end))
    assert.matches(here .. "CGC: expert_params must be a table",
      E(function() local _ = nn.CGC { n_expert_specific = 1, n_expert_shared = 1, expert_params = 4, num_tasks = 2 } end))
  end)

  it("on bad inputs: the wrong kind, the wrong count, the wrong width", function()
    local m = nn.PLE(ple())
    assert.matches(here .. "PLE \"[%w_]+\": expected a tensor %[batch, features%], got a float32 tensor of shape %[5%]",
      E(function() local _ = m(moe.randn(5)) end))
    m(moe.randn(3, 5))
    assert.matches(here .. ".*input has 7 features .* built for 5", E(function() local _ = m(moe.randn(3, 7)) end))
    local c = nn.CGC { n_expert_specific = 1, n_expert_shared = 1, expert_params = { dims = { 2 } }, num_tasks = 2 }
    assert.matches(here .. "CGC \"[%w_]+\": expected a tensor %[batch, features%] or a list of 3 tensors .*got 2 inputs",
      E(function() local _ = c({ moe.randn(2, 3), moe.randn(2, 3) }) end))
    assert.matches(here .. "CGC \"[%w_]+\": input 2 must be a tensor %[batch, features%], got \"x\"",
      E(function() local _ = c({ moe.randn(2, 3), "x", moe.randn(2, 3) }) end))
  end)
end)

describe("nn.CGC / nn.PLE gradients", function()
  it("gradcheck (float64, training mode: batch statistics), CGC with the shared gate and a 2-level PLE", function()
    moe.manual_seed(11)
    local c = nn.CGC { n_expert_specific = 2, n_expert_shared = 1, expert_params = { dims = { 3 }, activation = "tanh" },
      num_tasks = 2, shared_gate = true }
    assert.is_true(gradcheck(c, { moe.randn(5, 4) }))
    local p = nn.PLE { n_level = 2, n_expert_specific = 1, n_expert_shared = 1, expert_params = { dims = { 3, 2 },
      activation = "sigmoid" }, task_types = { "classification", "regression" },
      tower_params_list = { { dims = { 2 }, activation = "tanh" }, { dims = {} } } }
    assert.is_true(gradcheck(p, { moe.randn(6, 4) }))
  end)
  it("gradcheck in evaluation mode (running statistics), with dropout off", function()
    moe.manual_seed(12)
    local p = nn.PLE { n_level = 2, n_expert_specific = 1, n_expert_shared = 2, expert_params = { dims = { 3 },
      activation = "tanh", dropout = 0.5 }, num_tasks = 2 }
    p(moe.randn(4, 3))
    p:eval()
    assert.is_true(gradcheck(p, { moe.randn(4, 3) }))
  end)
end)

describe("parity with torch-rechub 0.9.0 (spec/fixtures/ple_cases.json)", function()
  local f = assert(io.open("spec/fixtures/ple_cases.json"))
  local cases = cjson.decode(f:read("*a"))
  f:close()
  -- float64 cases (rechub's CGC in float64) to 1e-10; the float32 PLE (rechub's
  -- embedding casts to float32) to 1e-5 relative to the values' scale
  local function close(got, want, dt, what)
    want = moe.tensor(want, { dtype = "float64" })
    got = got:double()
    assert.same(want:shape(), got:shape(), what)
    local err = (got - want):abs():max():item()
    local tol = dt == "float64" and 1e-10 or 1e-5 * math.max(1, want:abs():max():item())
    assert.is_true(err <= tol, ("%s: max error %.3g > %.3g"):format(what, err, tol))
  end
  for _, c in ipairs(cases) do
    for _, dt in ipairs(c.dtype == "float64" and { "float64", "float32" } or { "float32" }) do
      it(("%s (%s reference, run in %s): eval and train forward, running statistics, every weight's gradient")
        :format(c.name, c.dtype, dt), function()
        local cls = c.name:match("^CGC") and nn.CGC or nn.PLE
        local layer = cls(c.config)
        local x = moe.tensor(c.input, { dtype = dt })
        layer(moe.zeros(x:shape(), { dtype = dt })) -- build
        if dt == "float64" then layer:double() end
        local list = {}
        for i, w in ipairs(c.weights) do list[i] = moe.tensor(w, { dtype = dt }) end
        assert.equal(#c.weights, #layer:get_weights())
        layer:set_weights(list)
        -- the tolerance a float32 run of a float64 reference gets
        local tdt = dt == "float32" and "float32" or c.dtype
        layer:eval()
        local out = layer(x)
        assert.equal(#c.eval_output, #out)
        for t, want in ipairs(c.eval_output) do close(out[t], want, tdt, "eval output " .. t) end
        layer:train()
        out = layer(x)
        local loss
        for t, want in ipairs(c.train_output) do
          close(out[t], want, tdt, "train output " .. t)
          local term = (out[t] * moe.tensor(c.loss_weights[t], { dtype = dt })):sum()
          loss = loss and loss + term or term
        end
        loss:backward()
        local names, ts = nn.keras_weights(layer)
        for i, t in ipairs(ts) do
          local what = names[i] .. " (" .. c.weight_names[i] .. ")"
          close(t:detach(), c.after_train[i], tdt, "after training " .. what)
          if c.grads[i] == cjson.null then
            assert.is_nil(t.grad, what)
          else
            close(t.grad, c.grads[i], tdt, "gradient of " .. what)
          end
        end
      end)
    end
  end
end)
