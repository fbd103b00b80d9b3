-- Training on the device (the CUDA backend; on the host emulator in make test):
-- random draws, moves recorded by autograd, fit/evaluate/predict moving their
-- batches, and every models/ script's --smoke run with --device cuda.
-- Without a device the specs are pending ("skipped: no CUDA device").
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"

local function need_device() return H.need_device(pending) end

local function max_diff(a, b)
  return (a:cpu():to("float64") - b:cpu():to("float64")):abs():max():item()
end

describe("random draws on the device", function()
  it("rand draws the host's values from the same Philox counters, bit for bit", function()
    if not need_device() then return end
    for _, dt in ipairs { "float32", "float64" } do
      for _, n in ipairs { 1, 3, 4, 5, 1001 } do
        moe.manual_seed(7)
        local h1, h2 = moe.rand(n, { dtype = dt }), moe.rand(2, n, { dtype = dt })
        moe.manual_seed(7)
        local d1, d2 = moe.rand(n, { dtype = dt, device = "cuda" }), moe.rand(2, n, { dtype = dt, device = "cuda" })
        assert.equal("cuda", d1:device())
        assert.same(h1:totable(), d1:cpu():totable())
        assert.same(h2:totable(), d2:cpu():totable()) -- the op counter advanced alike
      end
    end
  end)
  it("randn agrees with the host's draws to rounding", function()
    if not need_device() then return end
    for _, dt in ipairs { "float32", "float64" } do
      moe.manual_seed(3)
      local h = moe.randn(999, { dtype = dt })
      moe.manual_seed(3)
      local d = moe.randn(999, { dtype = dt, device = "cuda" })
      assert.is_true(max_diff(h, d) <= (dt == "float32" and 1e-6 or 1e-12))
      assert.is_true(h:std():item() > 0.9) -- not all zeros on either side
    end
  end)
  it("set_default_device draws there too, and a device option overrides it", function()
    if not need_device() then return end
    moe.manual_seed(11)
    local h = moe.rand(6)
    moe.set_default_device("cuda")
    local ok, err = pcall(function()
      moe.manual_seed(11)
      local d = moe.rand(6)
      assert.equal("cuda", d:device())
      assert.same(h:totable(), d:cpu():totable())
      assert.equal("cpu", moe.zeros(2, { device = "cpu" }):device())
      assert.equal("cuda", moe.zeros_like(d):device())
    end)
    moe.set_default_device("cpu")
    assert(ok, err)
  end)
  it("a bad device option names the function and the value", function()
    assert.matches("zeros: device must be \"cpu\" or \"cuda\", got gpu", H.error_of(moe.zeros, 2, { device = "gpu" }))
  end)
  it("dropout draws the same mask on the host and on the device", function()
    if not need_device() then return end
    local x = moe.randn(37, 11)
    moe.manual_seed(5)
    local yh = nn.dropout(x, 0.4, true)
    moe.manual_seed(5)
    local yd = nn.dropout(x:cuda(), 0.4, true)
    assert.equal("cuda", yd:device())
    assert.same(yh:totable(), yd:cpu():totable())
  end)
end)

describe("moves between devices under autograd", function()
  it("a move is recorded: the gradient comes back to the host leaf", function()
    if not need_device() then return end
    local w = moe.tensor({ 1, -2, 3 }, { requires_grad = true })
    local l = (w:cuda() * w:cuda()):sum()
    assert.equal("cuda", l:device())
    assert.equal(14, l:item()) -- item() on a device tensor that requires grad
    l:backward()
    assert.equal("cpu", w.grad:device())
    assert.same({ 2, -4, 6 }, w.grad:totable())
    -- and the other way: a device leaf, a host loss
    local v = moe.tensor({ 0.5, 2 }, { requires_grad = true }):cuda():detach():requires_grad_()
    local l2 = (v:cpu() * 3):sum()
    l2:backward()
    assert.equal("cuda", v.grad:device())
    assert.same({ 3, 3 }, v.grad:cpu():totable())
  end)
end)

-- the same small model, weights and data on the host and on the device
local function tiny_model(seed)
  moe.manual_seed(seed)
  local m = moe.Sequential {
    nn.Dense { units = 8, activation = "relu" },
    nn.Dropout { rate = 0.25 },
    nn.Dense { units = 1, activation = "sigmoid" },
    input_shape = { 5 },
  }
  return m
end
local function tiny_data()
  moe.manual_seed(99)
  local x = moe.randn(96, 5)
  local y = (x:narrow(2, 1, 2):sum(2, true) + x:select(2, 3):view(-1, 1) * 0.5):gt(0):float()
  return x, y
end

describe("fit, evaluate and predict with the model on the device", function()
  it("train like the host run: the same losses, metrics and weights, batches moved from host data", function()
    if not need_device() then return end
    local x, y = tiny_data()
    local runs = {}
    for _, dev in ipairs { "cpu", "cuda" } do
      local m = tiny_model(3)
      m:to(dev)
      assert.equal(dev, m:device())
      m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "binary_crossentropy", metrics = { "accuracy", "auc" } }
      moe.manual_seed(17) -- the dropout masks: the same counters on both
      local h = m:fit { x = x, y = y, epochs = 3, batch_size = 16, verbose = 0, seed = 5,
        validation_data = { x:narrow(1, 1, 32), y:narrow(1, 1, 32) } }
      local e = m:evaluate { x = x, y = y }
      local p = m:predict(x)
      runs[dev] = { h = h.history, e = e, p = p, w = m:get_weights() }
    end
    local c, d = runs.cpu, runs.cuda
    assert.equal("cpu", d.p:device()) -- predict answers on the data's device
    for _, k in ipairs { "loss", "accuracy", "auc", "val_loss", "val_auc" } do
      for ep = 1, 3 do assert.is_near(c.h[k][ep], d.h[k][ep], 1e-5) end
    end
    for k, v in pairs(c.e) do assert.is_near(v, d.e[k], 1e-5) end
    assert.is_true(max_diff(c.p, d.p) < 1e-5)
    for i, w in ipairs(c.w) do assert.is_true(max_diff(w, d.w[i]) < 1e-5) end
  end)
  it("fit{distributed = true} on the device (a 1-rank world) trains as the plain fit does", function()
    if not need_device() then return end
    local x, y = tiny_data()
    local runs = {}
    for _, d in ipairs { false, true } do
      local m = tiny_model(3):cuda()
      m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "binary_crossentropy", metrics = { "auc" } }
      moe.manual_seed(17)
      local h = m:fit { x = x, y = y, epochs = 2, batch_size = 16, verbose = 0, seed = 5, distributed = d,
        validation_data = { x:narrow(1, 1, 32), y:narrow(1, 1, 32) } }
      runs[#runs + 1] = { h = h.history, w = m:get_weights() }
    end
    for _, k in ipairs { "loss", "auc", "val_loss", "val_auc" } do
      for ep = 1, 2 do assert.is_near(runs[1].h[k][ep], runs[2].h[k][ep], 1e-6) end
    end
    for i, w in ipairs(runs[1].w) do
      assert.equal("cuda", runs[2].w[i]:device())
      assert.is_true(max_diff(w, runs[2].w[i]) < 1e-6)
    end
  end)
  it("a model moved before it is built builds its weights on the device", function()
    if not need_device() then return end
    local m = moe.Sequential { nn.Dense { units = 3 }, nn.Dense { units = 1 } }
    m:cuda()
    assert.equal("cuda", m:device())
    local out = m(moe.randn(4, 6):cuda())
    assert.equal("cuda", out:device())
    for _, w in ipairs(m:get_weights()) do assert.equal("cuda", w:device()) end
  end)
  it("train_on_batch moves host data to the model", function()
    if not need_device() then return end
    local x, y = tiny_data()
    local m = tiny_model(4):cuda()
    m:compile { optimizer = moe.optim.SGD { lr = 0.1 }, loss = "binary_crossentropy" }
    local l1 = m:train_on_batch(x, y)
    local l2 = m:train_on_batch(x, y)
    assert.is_number(l1)
    assert.is_true(l2 < l1)
  end)
  it("checkpoints: saved on the device, loaded on the host and back, the same predictions", function()
    if not need_device() then return end
    local x, y = tiny_data()
    local m = tiny_model(6):cuda()
    m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "binary_crossentropy" }
    local path = H.tmpname(".moe")
    local cb = moe.callbacks.ModelCheckpoint { filepath = path, monitor = "loss", save_best_only = false }
    m:fit { x = x, y = y, epochs = 2, batch_size = 32, verbose = 0, callbacks = { cb } }
    local want = m:predict(x)
    local host = moe.load(path)
    assert.equal("cpu", host:device())
    assert.is_true(max_diff(host:predict(x), want) < 1e-6)
    host:cuda()
    assert.is_true(max_diff(host:predict(x), want) < 1e-6)
    -- and training goes on from the loaded optimizer state on the device
    host:fit { x = x, y = y, epochs = 1, batch_size = 32, verbose = 0 }
    os.remove(path)
  end)
end)

describe("every models/ script with --device cuda --smoke", function()
  local bin = os.getenv("MOELUA_BIN") or "build/moelua"
  local function run(script, args)
    local p = io.popen(("%s run models/%s %s 2>&1"):format(bin, script, args))
    local out = p:read("*a")
    return out, p:close()
  end
  local scripts = {
    { "census_logreg.lua", "val accuracy" }, { "census_mlp.lua", "reloaded model's predictions differ by",
      "data/census-income.test.gz 1 " .. os.tmpname() .. ".moe" }, -- (its checkpoint saved on the device, loaded on the host)
    { "gated_fusion.lua", "test: accuracy" }, { "mmoe_synthetic.lua", "test: loss" },
    { "moe_vs_mmoe.lua", "multi_gate_moe", "--out " .. os.tmpname() .. "_cmp" }, { "switch_moe.lua", "tokens" },
    { "tabular_moe.lua", "multi%-task" },
  }
  for _, s in ipairs(scripts) do
    it(s[1] .. " trains on the device", function()
      if not need_device() then return end
      local out, ok = run(s[1], "--device cuda --smoke " .. (s[3] or ""))
      assert.is_true(ok, out)
      assert.matches(s[2], out)
    end)
  end
  it("mmoe_census.lua: the device run reaches the host run's test AUCs", function()
    if not need_device() then return end
    local res = {}
    for _, dev in ipairs { "cpu", "cuda" } do
      local out, ok = run("mmoe_census.lua", "--smoke --device " .. dev)
      assert.is_true(ok, out)
      local inc, nm = out:match("test AUC: income (0%.%d+)  never_married (0%.%d+)")
      assert.is_truthy(inc, out)
      res[dev] = { tonumber(inc), tonumber(nm) }
    end
    -- the same seed, weights, batches and dropout masks: equal up to float rounding
    assert.is_near(res.cpu[1], res.cuda[1], 2e-4)
    assert.is_near(res.cpu[2], res.cuda[2], 2e-4)
  end)
end)

describe("fit with the data already on the device", function()
  it("gathers each batch there and trains as with host data", function()
    if not need_device() then return end
    local x, y = tiny_data()
    local w = {}
    for i, xs in ipairs { { x, y }, { x:cuda(), y:cuda() } } do
      local m = tiny_model(8):cuda()
      m:compile { optimizer = moe.optim.SGD { lr = 0.1 }, loss = "binary_crossentropy" }
      moe.manual_seed(2)
      m:fit { x = xs[1], y = xs[2], epochs = 2, batch_size = 16, verbose = 0, seed = 9 }
      w[i] = m:get_weights()
      assert.equal(xs[1]:device(), m:predict(xs[1]):device()) -- answers on the data's device
    end
    for i, t in ipairs(w[1]) do assert.equal(0, max_diff(t, w[2][i])) end
  end)
end)

describe("moe.set_deterministic on the device", function()
  it("two training runs of a top-2 sparse MoE model give bitwise-equal weights", function()
    if not need_device() then return end
    local function run()
      moe.manual_seed(12)
      local inp = moe.Input { shape = { 6, 8 } }
      local layer = nn.MoeLayer {
        experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 16 },
        router = nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2, jitter_noise = 0.1 },
        train_capacity_factor = 1.0,
      }
      local m = moe.Model { inputs = inp, outputs = nn.Dense { units = 1 }(layer(inp)) }
      m:cuda()
      m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "mse" }
      moe.manual_seed(13)
      local x, y = moe.randn(48, 6, 8), moe.randn(48, 6, 1)
      m:fit { x = x, y = y, epochs = 2, batch_size = 8, verbose = 0, seed = 3 }
      return m:get_weights()
    end
    local was = moe.get_deterministic()
    moe.set_deterministic(true)
    local ok, a, b = pcall(function() return run(), run() end)
    moe.set_deterministic(was)
    assert(ok, a)
    assert.equal(#a, #b)
    for i, t in ipairs(a) do
      assert.equal("cuda", t:device())
      assert.same(t:cpu():totable(), b[i]:cpu():totable()) -- every bit (same() compares the numbers exactly)
    end
  end)
end)

describe("moe.cuda.set_precision on a sparse MoE layer", function()
  it("rounds the experts' GEMMs and keeps the router fp32", function()
    if not need_device() then return end
    moe.manual_seed(4)
    local layer = nn.MoeLayer {
      experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 32 },
      router = nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2 },
      dropless = true,
    }
    local x = moe.randn(2, 16, 24)
    layer(x)
    layer:cuda():eval()
    local xd = x:cuda()
    local y32 = layer(xd)
    local p32 = layer.last_plan.probs
    local old = moe.cuda.set_precision("bf16")
    local ok, err = pcall(function()
      local y16 = layer(xd)
      assert.equal("bf16", moe.cuda.get_precision()) -- restored after the router's fp32 GEMMs
      assert.same(p32:cpu():totable(), layer.last_plan.probs:cpu():totable()) -- the router: fp32, bit for bit
      local d = max_diff(y16, y32)
      assert.is_true(d > 0 and d < 2e-2 * (y32:abs():max():item() + 1e-3), tostring(d)) -- the experts: bf16 operands
    end)
    moe.cuda.set_precision(old)
    assert(ok, err)
  end)
end)

describe("a sparse MoE step on the device", function()
  it("does no index range check: the layer's index ops run on the plan's own indices", function()
    if not need_device() then return end
    moe.manual_seed(9)
    local layer = nn.MoeLayer {
      experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 8 },
      router = nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2, renormalize_gates = true,
        load_balancing_loss_weight = 0.01 },
      train_capacity_factor = 1.0,
    }
    local x = moe.randn(2, 8, 6)
    layer(x)
    local host = layer:get_weights()
    layer:cuda()
    local xd = x:cuda():requires_grad_()
    local c0 = moe.core.index_checks()
    local y = layer(xd)
    local l = (y * y):sum()
    for _, aux in ipairs(layer:losses()) do l = l + aux end
    l:backward()
    assert.equal(c0, moe.core.index_checks())
    -- and the values are the host layer's
    local hl = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 8 },
      router = nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2, renormalize_gates = true,
        load_balancing_loss_weight = 0.01 }, train_capacity_factor = 1.0 }
    hl(x)
    hl:set_weights(host)
    local xh = x:clone():requires_grad_()
    local yh = hl(xh)
    local lh = (yh * yh):sum()
    for _, aux in ipairs(hl:losses()) do lh = lh + aux end
    lh:backward()
    assert.is_true(max_diff(y, yh) < 1e-5)
    assert.is_true(max_diff(xd.grad, xh.grad) < 1e-5)
    for k, v in pairs(hl:metrics()) do assert.is_near(v, layer:metrics()[k], 1e-5, k) end
  end)
end)

-- the host's waits for the device (moe.cuda.syncs): a drain waits for every
-- queued kernel. A training step of fit drains only at the one read per sparse
-- MoE layer (its kept-token counts); the rest is once per epoch.
describe("host waits in a training step on the device", function()
  local function drains() return moe.cuda.syncs().drains end
  -- drains of one fit epoch of `steps` batches
  local function fit_drains(m, x, y, steps)
    local d0 = drains()
    m:fit { x = x, y = y, batch_size = 16, epochs = 1, verbose = 0, steps_per_epoch = steps }
    return drains() - d0
  end
  it("a dense model's step drains nothing: batches go pinned and asynchronous, the loss is read by an event", function()
    if not need_device() then return end
    moe.manual_seed(4)
    local m = moe.Sequential { nn.Dense { units = 8, activation = "relu" }, nn.Dropout { rate = 0.1 }, nn.Dense { units = 1 } }
    m:compile { optimizer = moe.optim.Adam { lr = 1e-2, clip_norm = 1 }, loss = "mse", metrics = { "mae" } }
    m:cuda()
    -- (a batch of 16 x 1100 floats is past the 64 KiB that small copies stage)
    local x, y = moe.randn(160, 1100), moe.randn(160, 1)
    fit_drains(m, x, y, 1) -- (builds the weights)
    local a, b = fit_drains(m, x, y, 2), fit_drains(m, x, y, 9)
    assert.equal(a, b) -- seven more steps, not one more drain
    assert.is_true(a <= 4, "drains per epoch: " .. a)
  end)
  it("a sparse MoE model's step drains at most once per MoE layer (tokens-choose once, experts-choose never)", function()
    if not need_device() then return end
    moe.manual_seed(5)
    local function layer(experts_choose)
      return nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 8 },
        router = experts_choose and nn.ExpertsChooseMaskedRouter { num_experts = 4 }
          or nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2, renormalize_gates = true,
            load_balancing_loss_weight = 0.01 }, train_capacity_factor = 1.0 }
    end
    local inp = moe.Input { shape = { 4, 6 } }
    local out = nn.Dense { units = 1 }(nn.Flatten {}(layer(true)(layer()(inp))))
    local m = moe.Model { inputs = inp, outputs = out }
    m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "mse" }
    m:cuda()
    local x, y = moe.randn(160, 4, 6), moe.randn(160, 1)
    fit_drains(m, x, y, 1)
    local a, b = fit_drains(m, x, y, 3), fit_drains(m, x, y, 8)
    -- five more steps: one drain each for the tokens-choose layer's kept counts;
    -- the experts-choose layer's buffers are full by construction (no read)
    assert.equal(5, b - a)
    -- and the epoch's ends: its loss and layer-metric sums come back in one copy
    -- (with the weights' finiteness checks: a handful, not one per sum)
    assert.is_true(a - 3 <= 4, "drains at the epoch's ends: " .. (a - 3))
  end)
  it("small host values travel through the staging buffers without a drain, and arrive intact", function()
    if not need_device() then return end
    local d0 = drains()
    local ts = {}
    for i = 1, 100 do ts[i] = moe.tensor({ i, -i, i / 4 }, { device = "cuda" }) end -- past the ring's 32 buffers
    local r = moe.arange(1, 1001, { device = "cuda" })
    assert.equal(d0, drains())
    for i = 1, 100 do assert.same({ i, -i, i / 4 }, ts[i]:cpu():totable()) end
    assert.equal(500500, r:sum():item())
  end)
  it("read_later gives a device value without a drain; get() returns it", function()
    if not need_device() then return end
    local t = moe.tensor({ 2.5 }, { device = "cuda" }):sum()
    local d0 = drains()
    local r = moe.core.read_later(t * 2)
    assert.equal(d0, drains())
    assert.equal(5, r:get())
    assert.equal(5, r:get()) -- (kept)
    assert.is_true(r:ready())
    assert.equal(7, moe.core.read_later(moe.tensor({ 7 })):get()) -- a host value: there at once
    assert.matches("read_later: tensor of shape %[2%] has 2 elements", H.error_of(moe.core.read_later, moe.ones(2)))
  end)
  it("set_sync_debug(\"warn\") names each drain and the caller's line", function()
    if not need_device() then return end
    local script = H.write_file(H.tmpname(".lua"), table.concat({
      'local moe = require "moe"',
      'local t = moe.ones(3, { device = "cuda" })',
      'moe.cuda.set_sync_debug("warn")',
      'local v = t:sum():item()',
      'moe.cuda.set_sync_debug("off")',
      'local w = t:sum():item()',
      'print("value", v + w)',
    }, "\n"))
    local out, err, rc = H.sh(("%s run %s"):format(os.getenv("MOELUA_BIN") or "build/moelua", script))
    os.remove(script)
    assert.equal(0, rc, err)
    assert.matches("value\t6", out)
    local _, n = err:gsub("the host waited for the device %(a copy to the host%)", "")
    assert.equal(1, n, err)
    assert.matches(script:gsub("%p", "%%%0") .. ":4", err)
    assert.matches('set_sync_debug: mode must be "warn" or "off", got "on"', H.error_of(moe.cuda.set_sync_debug, "on"))
  end)
end)

describe("pinned host memory", function()
  it("pin_memory copies a host tensor into pinned memory; to_device_async moves it", function()
    if not need_device() then return end
    local x = moe.randn(3, 5):transpose(1, 2) -- (not contiguous)
    local p = x:pin_memory()
    assert.is_true(p:is_pinned())
    assert.is_false(x:is_pinned())
    assert.same(x:totable(), p:totable())
    assert.is_true(p:pin_memory():is_pinned()) -- (already pinned: itself)
    local d = moe.core.to_device_async(p)
    assert.equal("cuda", d:device())
    assert.same(x:totable(), d:cpu():totable())
    assert.matches("to_device_async: the tensor must be a contiguous pinned host tensor",
      H.error_of(moe.core.to_device_async, x))
    assert.matches("pin_memory: the tensor is on cuda", H.error_of(function() return d:pin_memory() end))
  end)
  it("a freed pinned block is reused only after its copy: many batches in flight stay intact", function()
    if not need_device() then return end
    local got, want = {}, {}
    for i = 1, 64 do
      local h = moe.full({ 1000 }, i):pin_memory()
      got[i], want[i] = moe.core.to_device_async(h), i * 1000
      h = nil
      if i % 8 == 0 then collectgarbage() end -- (the pinned blocks go back to the cache)
    end
    for i = 1, 64 do assert.equal(want[i], got[i]:sum():item()) end
  end)
end)

describe("optimizer step{skip}", function()
  for _, dev in ipairs { "cpu", "cuda" } do
    it("a step called off by a true flag changes nothing; retract takes its counters back (" .. dev .. ")", function()
      if dev == "cuda" and not need_device() then return end
      local w0 = moe.randn(4, 3)
      local w = w0:clone():to(dev):requires_grad_()
      local opt = moe.optim.Adam { lr = 0.1 }
      local function step(o, p, flag)
        p.grad = nil
        ;(p * p):sum():backward()
        o:step({ p }, flag ~= nil and { skip = moe.tensor({ flag }, { dtype = "bool" }):to(dev):view() } or nil)
      end
      step(opt, w, false)
      local after1 = w:detach():cpu():clone()
      step(opt, w, true)
      assert.same(after1:totable(), w:cpu():totable())
      assert.equal(2, opt.iterations)
      opt:retract()
      assert.equal(1, opt.iterations)
      assert.equal(1, opt.state[w].step)
      step(opt, w, false) -- the second real step: as if the called-off one never was
      local ref, v = moe.optim.Adam { lr = 0.1 }, w0:clone():to(dev):requires_grad_()
      step(ref, v)
      step(ref, v)
      assert.is_true(max_diff(v, w) < 1e-6)
      assert.is_true(max_diff(after1, w) > 1e-3) -- (it moved)
      assert.matches("Adam.step: skip must be a bool tensor, got 1$", H.error_of(function() opt:step({ w }, { skip = 1 }) end))
      assert.matches("optim_step: skip must be a one%-element bool tensor", H.error_of(function()
        opt:step({ w }, { skip = moe.ones(2):to(dev) }) end))
    end)
  end
end)

describe("a non-finite loss on the device", function()
  it("stops fit at the same batch as on the host, with the update called off and the same weights", function()
    if not need_device() then return end
    local function run(dev)
      moe.manual_seed(8)
      local m = moe.Sequential { nn.Dense { units = 6, activation = "tanh" }, nn.Dense { units = 1 } }
      m:compile { optimizer = moe.optim.Adam { lr = 1e-2 }, loss = "mse" }
      m:build { 16, 4 }
      m:to(dev)
      moe.manual_seed(9)
      local x, y = moe.randn(96, 4), moe.randn(96, 1)
      y[{ { 40, 40 }, 1 }] = 0 / 0 -- in batch 3 of 16 rows
      local h = m:fit { x = x, y = y, batch_size = 16, epochs = 2, shuffle = false, verbose = 0 }
      return h, m
    end
    local hh, mh = run("cpu")
    local hd, md = run("cuda")
    assert.matches("the loss is nan at epoch 1, batch 3", hh.stopped)
    assert.equal(hh.stopped, hd.stopped)
    assert.equal(mh.optimizer.iterations, md.optimizer.iterations)
    assert.equal(2, md.optimizer.iterations)
    local wh, wd = mh:get_weights(), md:get_weights()
    for k, v in pairs(wh) do assert.is_true(max_diff(v, wd[k]) < 1e-5, k) end
    for _, p in ipairs(md:parameters()) do assert.equal(2, md.optimizer.state[p].step) end
  end)
end)
