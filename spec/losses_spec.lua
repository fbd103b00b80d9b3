-- moe.losses against per-element formulas written out in Lua, stability at the
-- edges, reductions and sample weights, and gradchecks.
local moe = require "moe"
local L = moe.losses
local H = require "helpers"
local gradcheck = moe.testing.gradcheck

local function per_sample(y, p, f)
  local out = {}
  local Y, P = y:totable(), p:totable()
  for i = 1, #Y do
    local s = 0
    for j = 1, #Y[i] do s = s + f(Y[i][j], P[i][j]) end
    out[i] = s / #Y[i]
  end
  return out
end
local function mean(v) local s = 0 for _, x in ipairs(v) do s = s + x end return s / #v end

describe("losses", function()
  local y = moe.tensor({ { 0, 1, 1 }, { 1, 0, 0.5 } }, { dtype = "float64" })
  local p = moe.tensor({ { 0.1, 0.8, 0.6 }, { 0.3, 0.2, 0.9 } }, { dtype = "float64" })

  it("mse, mae and huber match their formulas", function()
    assert.is_near(mean(per_sample(y, p, function(a, b) return (a - b) ^ 2 end)), L.mean_squared_error(y, p):item(), 1e-12)
    assert.is_near(mean(per_sample(y, p, function(a, b) return math.abs(a - b) end)), L.mae(y, p):item(), 1e-12)
    local h = function(a, b)
      local e = math.abs(a - b)
      return e <= 0.5 and 0.5 * e * e or 0.5 * (e - 0.25)
    end
    assert.is_near(mean(per_sample(y, p, h)), L.huber(y, p, { delta = 0.5 }):item(), 1e-12)
  end)

  it("binary cross-entropy from probabilities and from logits", function()
    local bce = function(a, b) return -(a * math.log(b) + (1 - a) * math.log(1 - b)) end
    assert.is_near(mean(per_sample(y, p, bce)), L.binary_crossentropy(y, p):item(), 1e-9)
    local z = moe.tensor({ { -2, 0.5, 3 }, { 1, -1, 0 } }, { dtype = "float64" })
    local sig = function(v) return 1 / (1 + math.exp(-v)) end
    assert.is_near(mean(per_sample(y, z, function(a, b) return bce(a, sig(b)) end)),
      L.binary_crossentropy(y, z, { from_logits = true }):item(), 1e-12)
  end)

  it("are finite at probabilities 0 and 1 and at logits of +-100, gradients too", function()
    local yt = moe.tensor({ { 1, 0, 1, 0 } })
    local pe = moe.tensor({ { 0, 1, 1, 0 } }, { requires_grad = true })
    local l = L.binary_crossentropy(yt, pe)
    l:backward()
    assert.is_true(l:item() < 1e9 and l:item() == l:item())
    assert.is_true(pe.grad:abs():max():item() < math.huge)
    local z = moe.tensor({ { 100, -100, -100, 100 } }, { requires_grad = true })
    local lz = L.binary_crossentropy(yt, z, { from_logits = true })
    lz:backward()
    assert.is_near((0 + 0 + 100 + 100) / 4, lz:item(), 1e-4) -- exact: wrong-side logits cost |z|
    assert.is_false(z.grad:ne(z.grad):any():item())
    local c = moe.tensor({ { 100, -100, 0 } }, { requires_grad = true })
    local lc = L.categorical_crossentropy(moe.tensor({ { 0, 1, 0 } }), c, { from_logits = true })
    lc:backward()
    assert.is_near(200, lc:item(), 1e-3)
    assert.is_false(c.grad:ne(c.grad):any():item())
    local pc = moe.tensor({ { 1, 0, 0 } }, { requires_grad = true })
    local lp = L.categorical_crossentropy(moe.tensor({ { 0, 1, 0 } }), pc)
    lp:backward()
    assert.is_true(lp:item() < 20 and lp:item() > 15) -- -log(1e-7)
    assert.is_false(pc.grad:ne(pc.grad):any():item())
  end)

  it("categorical cross-entropy: one-hot, sparse (1-based ids), label smoothing", function()
    local z = moe.tensor({ { 1, 2, 0.5 }, { -1, 0, 3 } }, { dtype = "float64" })
    local onehot = moe.tensor({ { 0, 1, 0 }, { 1, 0, 0 } }, { dtype = "float64" })
    local ids = moe.tensor({ 2, 1 }, { dtype = "int64" })
    local ref = 0
    local Z = z:totable()
    for i, c in ipairs { 2, 1 } do
      local lse = math.log(math.exp(Z[i][1]) + math.exp(Z[i][2]) + math.exp(Z[i][3]))
      ref = ref + (lse - Z[i][c]) / 2
    end
    assert.is_near(ref, L.categorical_crossentropy(onehot, z, { from_logits = true }):item(), 1e-12)
    assert.is_near(ref, L.categorical_crossentropy(ids, z, { from_logits = true }):item(), 1e-12)
    assert.is_near(ref, L.sparse_categorical_crossentropy(ids, z, { from_logits = true }):item(), 1e-12)
    local sm = onehot * 0.9 + 0.1 / 3
    assert.is_near(L.categorical_crossentropy(sm, z, { from_logits = true }):item(),
      L.categorical_crossentropy(onehot, z, { from_logits = true, label_smoothing = 0.1 }):item(), 1e-12)
    assert.is_near(L.categorical_crossentropy(sm, z, { from_logits = true }):item(),
      L.sparse_categorical_crossentropy(ids, z, { from_logits = true, label_smoothing = 0.1 }):item(), 1e-12)
    local probs = z:softmax(2)
    assert.is_near(ref, L.categorical_crossentropy(onehot, probs):item(), 1e-9)
    assert.matches("class ids in 1..3", H.error_of(L.sparse_categorical_crossentropy, moe.tensor({ 0, 1 }, { dtype = "int64" }), z))
  end)

  it("reductions and per-sample weights", function()
    local per = L.mse(y, p, { reduction = "none" })
    assert.same({ 2 }, per:shape())
    local ps = per_sample(y, p, function(a, b) return (a - b) ^ 2 end)
    assert.is_near(ps[1] + ps[2], L.mse(y, p, { reduction = "sum" }):item(), 1e-12)
    local w = moe.tensor({ 2, 0 }, { dtype = "float64" })
    assert.is_near(ps[1] * 2 / 2, L.mse(y, p, { sample_weight = w }):item(), 1e-12)
    assert.matches("reduction must be", H.error_of(L.mse, y, p, { reduction = "avg" }))
    assert.matches("does not match", H.error_of(L.mse, y, moe.ones(3, 3)))
    assert.matches("sample_weight of shape %[3%]", H.error_of(L.mse, y, p, { sample_weight = moe.ones(3) }))
  end)

  it("gradchecks", function()
    local yy = moe.tensor({ { 0, 1, 1 }, { 1, 0, 0 } }, { dtype = "float64" })
    for _, case in ipairs {
      { L.mse, {} }, { L.mae, {} }, { L.huber, { delta = 0.3 } }, { L.binary_crossentropy, {} },
      { L.binary_crossentropy, { from_logits = true } }, { L.categorical_crossentropy, {} },
      { L.categorical_crossentropy, { from_logits = true, label_smoothing = 0.2 } },
    } do
      local f, o = case[1], case[2]
      for _, kind in ipairs { "contiguous", "transposed" } do
        local pr = H.layout({ 2, 3 }, kind)
        pr:copy_(moe.rand(2, 3, { dtype = "float64" }) * 0.8 + 0.1)
        assert.is_true(gradcheck(function(q) return f(yy, q, o) end, { pr }))
      end
    end
    local ids = moe.tensor({ 3, 1 }, { dtype = "int64" })
    assert.is_true(gradcheck(function(q) return L.sparse_categorical_crossentropy(ids, q, { from_logits = true }) end,
      { moe.randn(2, 3) }))
  end)

  it("the fused binary cross-entropy matches the composed one, and targets that require grad get a gradient", function()
    local yy = moe.rand(4, 3, { dtype = "float64" })
    local pr = moe.rand(4, 3, { dtype = "float64" }) * 0.9 + 0.05
    for _, fl in ipairs { false, true } do
      local fused = L.binary_crossentropy(yy, pr, { from_logits = fl, reduction = "none" })
      local ydet = yy:clone():requires_grad_()
      local composed = L.binary_crossentropy(ydet, pr, { from_logits = fl, reduction = "none" })
      assert.is_true((fused - composed):abs():max():item() < 1e-12)
      assert.is_true(gradcheck(function(t) return L.binary_crossentropy(t, pr, { from_logits = fl }) end, { yy }))
    end
  end)

  it("get resolves names, functions and {name, options}", function()
    assert.equal(L.mean_squared_error, L.get("mse"))
    local f = L.get { "binary_crossentropy", from_logits = true }
    assert.is_near(L.bce(y, p, { from_logits = true }):item(), f(y, p):item(), 1e-12)
    assert.matches("unknown loss 'msee'", H.error_of(L.get, "msee"))
  end)
end)
