-- moe.optim: two steps of every optimizer against the update rule written out
-- by hand per element (PyTorch's rules), clipping, schedules and plateaus.
local moe = require "moe"
local H = require "helpers"

-- reference implementations on plain Lua numbers: w, g lists; st the state table
local ref = {}
function ref.SGD(h, w, g, st, t)
  for i = 1, #w do
    local d = g[i] + (h.weight_decay or 0) * w[i]
    if (h.momentum or 0) ~= 0 then
      st.b = st.b or {}
      st.b[i] = t == 1 and d or h.momentum * st.b[i] + (1 - (h.dampening or 0)) * d
      d = h.nesterov and d + h.momentum * st.b[i] or st.b[i]
    end
    w[i] = w[i] - h.lr * d
  end
end
local function adam(h, w, g, st, t, decoupled)
  st.m, st.v = st.m or {}, st.v or {}
  local b1, b2, eps = h.beta1 or 0.9, h.beta2 or 0.999, h.eps or 1e-8
  for i = 1, #w do
    local d = g[i]
    if decoupled then w[i] = w[i] - h.lr * (h.weight_decay or 0.01) * w[i]
    else d = d + (h.weight_decay or 0) * w[i] end
    st.m[i] = b1 * (st.m[i] or 0) + (1 - b1) * d
    st.v[i] = b2 * (st.v[i] or 0) + (1 - b2) * d * d
    local mh, vh = st.m[i] / (1 - b1 ^ t), st.v[i] / (1 - b2 ^ t)
    w[i] = w[i] - h.lr * mh / (math.sqrt(vh) + eps)
  end
end
function ref.Adam(h, w, g, st, t) adam(h, w, g, st, t, false) end
function ref.AdamW(h, w, g, st, t) adam(h, w, g, st, t, true) end
function ref.RMSprop(h, w, g, st, t)
  st.s, st.b = st.s or {}, st.b or {}
  local a, eps = h.alpha or 0.99, h.eps or 1e-8
  for i = 1, #w do
    local d = g[i] + (h.weight_decay or 0) * w[i]
    st.s[i] = a * (st.s[i] or 0) + (1 - a) * d * d
    local u = d / (math.sqrt(st.s[i]) + eps)
    if (h.momentum or 0) ~= 0 then st.b[i] = h.momentum * (st.b[i] or 0) + u; u = st.b[i] end
    w[i] = w[i] - h.lr * u
  end
end
function ref.Adagrad(h, w, g, st, t)
  st.s = st.s or {}
  local clr = h.lr / (1 + (t - 1) * (h.lr_decay or 0))
  for i = 1, #w do
    local d = g[i] + (h.weight_decay or 0) * w[i]
    st.s[i] = (st.s[i] or (h.initial_accumulator_value or 0)) + d * d
    w[i] = w[i] - clr * d / (math.sqrt(st.s[i]) + (h.eps or 1e-10))
  end
end

local cases = {
  { "SGD", { lr = 0.1 } },
  { "SGD", { lr = 0.1, momentum = 0.9, weight_decay = 0.01 } },
  { "SGD", { lr = 0.1, momentum = 0.9, nesterov = true } },
  { "SGD", { lr = 0.1, momentum = 0.5, dampening = 0.3 } },
  { "Adam", { lr = 0.01 } },
  { "Adam", { lr = 0.01, weight_decay = 0.1, beta_1 = 0.8 } },
  { "AdamW", { lr = 0.01, weight_decay = 0.1 } },
  { "RMSprop", { lr = 0.01 } },
  { "RMSprop", { lr = 0.01, momentum = 0.9, rho = 0.9 } },
  { "Adagrad", { lr = 0.1, lr_decay = 0.5, initial_accumulator_value = 0.1 } },
}

local function hp(o)
  local out = {}
  for k, v in pairs(o) do out[({ beta_1 = "beta1", rho = "alpha" })[k] or k] = v end
  return out
end

describe("optimizers", function()
  for _, c in ipairs(cases) do
    for _, dt in ipairs { "float32", "float64" } do
      local label = ("%s %s (%s)"):format(c[1], require("cjson").encode(c[2]), dt)
      it(label .. " matches the hand-computed update for two steps", function()
        local w0 = { 0.5, -1.0, 2.0, 0.0 }
        local grads = { { 0.1, -0.2, 0.3, 1.0 }, { -0.4, 0.05, 0.3, -1.0 } }
        local p1 = moe.tensor({ w0[1], w0[2] }, { dtype = dt, requires_grad = true })
        local p2 = moe.tensor({ { w0[3], w0[4] } }, { dtype = dt, requires_grad = true })
        local opt = moe.optim[c[1]](c[2])
        local w, st = { unpack(w0) }, {}
        for t = 1, 2 do
          local g = grads[t]
          p1.grad = moe.tensor({ g[1], g[2] }, { dtype = dt })
          p2.grad = moe.tensor({ { g[3], g[4] } }, { dtype = dt })
          opt:step { p1, p2 }
          ref[c[1]](hp(c[2]), w, g, st, t)
        end
        local got = { p1[1], p1[2], p2[1][1], p2[1][2] }
        local tol = dt == "float32" and 1e-6 or 1e-12
        for i = 1, 4 do assert.is_near(w[i], got[i], tol) end
      end)
    end
  end

  -- past 262,144 values the update is split across cores (a slice of each large
  -- parameter per core, small ones whole): every element still gets its rule
  for _, c in ipairs { cases[2], cases[6], cases[9] } do
    it(c[1] .. " updates every element of large and small parameters alike (the update split across cores)", function()
      moe.manual_seed(3)
      local shapes = { { 700, 500 }, { 7 }, { 40000 }, { 3, 5 } }
      local ps, refs, gs = {}, {}, {}
      for i, s in ipairs(shapes) do
        ps[i] = moe.randn(s, { requires_grad = true })
        gs[i] = { moe.randn(s), moe.randn(s) }
        refs[i] = { w = ps[i]:reshape(-1):totable(), st = {} }
      end
      local opt = moe.optim[c[1]](c[2])
      for t = 1, 2 do
        for i = 1, #ps do ps[i].grad = gs[i][t] end
        opt:step(ps)
        for i = 1, #ps do ref[c[1]](hp(c[2]), refs[i].w, gs[i][t]:reshape(-1):totable(), refs[i].st, t) end
      end
      for i = 1, #ps do
        local got = ps[i]:reshape(-1):totable()
        local n, bad = #got, 0
        for j = 1, n do if math.abs(got[j] - refs[i].w[j]) > 2e-5 * (1 + math.abs(refs[i].w[j])) then bad = bad + 1 end end
        assert.equal(0, bad, ("parameter %d: %d of %d elements off"):format(i, bad, n))
      end
    end)
  end

  it("a parameter listed twice (or sharing storage) gets both updates, also when the update is split across cores", function()
    local p = moe.zeros(32767, { requires_grad = true })
    local big = moe.zeros(300000, { requires_grad = true })
    for _ = 1, 20 do
      moe.no_grad(function() p:fill_(0) end)
      p.grad, big.grad = moe.ones(32767), moe.ones(300000)
      moe.optim.SGD { lr = 1 }:step { p, p, big }
      assert.equal(-2, p:min():item())
      assert.equal(-2, p:max():item())
    end
  end)
  it("skips parameters without a gradient", function()
    local a = moe.ones(2, { requires_grad = true })
    local b = moe.ones(2, { requires_grad = true })
    a.grad = moe.ones(2)
    moe.optim.SGD { lr = 1 }:step { a, b }
    assert.same({ 0, 0 }, a:totable())
    assert.same({ 1, 1 }, b:totable())
  end)

  it("clips by global norm and by value", function()
    local a = moe.zeros(2, { requires_grad = true })
    local b = moe.zeros(1, { requires_grad = true })
    a.grad = moe.tensor({ 3, 0 })
    b.grad = moe.tensor({ 4 })
    local norm = moe.optim.SGD { lr = 1, clip_norm = 1 }:step { a, b }
    assert.is_near(5, norm, 1e-6)
    assert.is_near(-0.6, a[1], 1e-5)
    assert.is_near(-0.8, b[1], 1e-5)
    local c = moe.zeros(3, { requires_grad = true })
    c.grad = moe.tensor({ 5, -0.1, -5 })
    moe.optim.SGD { lr = 1, clipvalue = 0.5 }:step { c }
    assert.is_near(-0.5, c[1], 1e-7)
    assert.is_near(0.1, c[2], 1e-7)
    assert.is_near(0.5, c[3], 1e-7)
  end)

  it("checks its arguments", function()
    assert.matches("unknown option 'lrate'", H.error_of(function() moe.optim.Adam { lrate = 1 } end))
    assert.matches("lr must be", H.error_of(function() moe.optim.SGD { lr = -1 } end))
    assert.matches("nesterov needs momentum", H.error_of(function() moe.optim.SGD { nesterov = true } end))
    local p = moe.ones(2, { requires_grad = true })
    p.grad = moe.ones(2)
    assert.matches("expected a list", H.error_of(function() moe.optim.SGD {}:step(p) end))
  end)
end)

describe("learning-rate schedules", function()
  local S = moe.optim.schedules
  it("StepDecay, ExponentialDecay and CosineDecay with warm-up follow their formulas", function()
    local s = S.StepDecay { initial_learning_rate = 1, step_size = 10, gamma = 0.5 }
    assert.equal(1, s(9)); assert.equal(0.5, s(10)); assert.equal(0.25, s(25))
    local e = S.ExponentialDecay { initial_learning_rate = 0.1, decay_steps = 100, decay_rate = 0.5 }
    assert.is_near(0.1 * 0.5 ^ 0.5, e(50), 1e-12)
    local es = S.ExponentialDecay { initial_learning_rate = 0.1, decay_steps = 100, decay_rate = 0.5, staircase = true }
    assert.equal(0.1, es(50))
    local c = S.CosineDecay { initial_learning_rate = 0, warmup_target = 1, warmup_steps = 10, decay_steps = 100, alpha = 0.1 }
    assert.is_near(0.5, c(5), 1e-12)
    assert.is_near(1, c(10), 1e-12)
    assert.is_near(0.1 + 0.9 * 0.5, c(60), 1e-12)
    assert.is_near(0.1, c(1000), 1e-12)
  end)

  it("an optimizer follows its schedule step by step", function()
    local p = moe.zeros(1, { requires_grad = true })
    local opt = moe.optim.SGD { lr = S.StepDecay { initial_learning_rate = 1, step_size = 1, gamma = 0.5 } }
    for _ = 1, 3 do p.grad = moe.ones(1); opt:step { p } end
    assert.is_near(-(1 + 0.5 + 0.25), p[1], 1e-7)
  end)

  it("ReduceLROnPlateau lowers the rate after `patience` epochs without improvement", function()
    local opt = moe.optim.Adam { lr = 0.1 }
    local r = moe.optim.ReduceLROnPlateau { optimizer = opt, factor = 0.5, patience = 2, min_lr = 0.02 }
    for _, v in ipairs { 1.0, 0.9, 0.95, 0.95 } do r:step(v) end
    assert.is_near(0.05, opt:get_lr(), 1e-12)
    for _, v in ipairs { 0.95, 0.95, 0.95, 0.95 } do r:step(v) end
    assert.is_near(0.02, opt:get_lr(), 1e-12) -- 0.025, then floored at min_lr
  end)
end)
