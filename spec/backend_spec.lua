-- The backends' kernels, one table row per kernel of the dispatch
-- (src/core/dispatch.h, exported as moe.core.backend_kernels()). Each row runs
-- ops that reach its kernel on float64 inputs made on the host:
--   on the CPU: the gradients of `loss` against central finite differences;
--   on every other backend present (the host emulator's "cuda" in make test, a
--   real GPU where there is one): the same outputs and gradients as the CPU,
--   or, for a kernel the backend does not have, the clean error naming the op
--   ("not on this backend (cuda)") -- never a host loop over device memory.
-- Every value of the op enums (moe.core.op_names()) has a row too. A kernel
-- or an op without a row, or a row without a kernel, fails the spec: a new
-- kernel cannot go untested. Adding a kernel means adding one row here.
local moe = require "moe"

local function f64(t) return t:to("float64") end
local function ix(v) return moe.tensor(v, { dtype = "int64" }) end

-- the inputs of every row, fixed (the same on each backend)
moe.manual_seed(7)
local A = f64(moe.randn(3, 4))
local B = f64(moe.randn(3, 4))
local P = f64(moe.rand(3, 4) * 0.8 + 0.1)      -- probabilities, away from 0 and 1
local Y = f64(moe.rand(3, 4):gt(0.5))          -- labels
local C3 = f64(moe.randn(2, 3, 4))
local W = f64(moe.randn(4, 5))
local BIAS = f64(moe.randn(5))
local H3 = f64(moe.randn(4, 2, 3))             -- mixture: [B,U,E]
local G2 = f64(moe.rand(4, 3))                 -- gates [B,E]
local H2 = f64(moe.randn(4, 6))                -- gate_scale: [B, E*U], E = 3
local XG = f64(moe.randn(5, 4))                -- grouped: rows [A,K]
local WG = f64(moe.randn(2, 4, 3))             -- [E,K,N]
local BG = f64(moe.randn(2, 3))
-- bincount: 1-based values (one bin much fuller than the others, n not a power of
-- two), weights in float64 and in float32 eighths (whose sums are exact in any order)
local BV = moe.cat({ moe.randint(1, 30, { 777 }):to("int64"), moe.full({ 300 }, 7):to("int64") })
local BW = f64(moe.randn(1077))
local BW8 = (moe.randint(-16, 16, { 1077 }):to("float32") / 8)

-- optim_update: every rule (and clipping by global norm and by value) over
-- parameters of several sizes -- one larger than the device's chunk of 4096
-- values, one of a single value, a matrix -- in float32 and float64, for three
-- steps; then one list with a parameter given twice (updated twice, in order).
-- Returns the weights and the norms; on a device the float64 ones are also held
-- to the CPU's within 1e-12 here (the row's tol, 1e-6, is float32's).
local OPT_SIZES = { { 5000 }, { 1 }, { 37 }, { 3, 4 } }
local OPT_W, OPT_G -- made on first use, from their own seed (the other rows' inputs stay as they were)
local function opt_values()
  if OPT_W then return end
  moe.manual_seed(11)
  OPT_W, OPT_G = {}, {}
  for k, sz in ipairs(OPT_SIZES) do
    OPT_W[k] = f64(moe.randn(sz))
    OPT_G[k] = {}
    for step = 1, 3 do OPT_G[k][step] = f64(moe.randn(sz)) * (0.5 * step) end
  end
end
local OPT_CONFIGS = {
  { "SGD", { lr = 0.1 } },
  { "SGD", { lr = 0.1, momentum = 0.9 } },
  { "SGD", { lr = 0.1, momentum = 0.9, nesterov = true } },
  { "SGD", { lr = 0.1, momentum = 0.8, dampening = 0.3, weight_decay = 0.05 } },
  { "Adam", { lr = 0.01, weight_decay = 0.05 } },
  { "AdamW", { lr = 0.01, weight_decay = 0.1 } },
  { "RMSprop", { lr = 0.01 } },
  { "RMSprop", { lr = 0.01, momentum = 0.9, weight_decay = 0.05 } },
  { "Adagrad", { lr = 0.1, lr_decay = 0.05, initial_accumulator_value = 0.1, weight_decay = 0.05 } },
  { "Adam", { lr = 0.01, clip_norm = 1 } },                   -- the norm (~70) above the clip: scaled
  { "Adagrad", { lr = 0.1, clip_norm = 1e6 } },               -- below it: unscaled
  { "SGD", { lr = 0.1, momentum = 0.9, clip_value = 0.5 } },
  { "RMSprop", { lr = 0.01, momentum = 0.5, clip_norm = 2, clip_value = 0.01 } },
}
local function optim_run(dev)
  opt_values()
  local outs = {}
  -- the first step of momentum SGD (the row's check)
  local w = f64(moe.tensor { 1, -2, 3 }):to(dev)
  w:requires_grad_()
  w.grad = f64(moe.tensor { 0.5, 0.5, -1 }):to(dev)
  moe.optim.SGD { lr = 0.1, momentum = 0.9 }:step { w }
  outs[1] = w:detach()
  local function norm_of(n)
    if n == nil then return end
    if dev ~= "cpu" then -- on the device: a 0-dim float64 tensor there, read when wanted
      assert.equal("cuda", n:device())
      n = n:item()
    end
    outs[#outs + 1] = moe.tensor({ n }, { dtype = "float64" })
  end
  for _, dt in ipairs { "float64", "float32" } do
    for _, c in ipairs(OPT_CONFIGS) do
      local opt = moe.optim[c[1]](c[2])
      local ps = {}
      for k in ipairs(OPT_SIZES) do ps[k] = OPT_W[k]:to(dt):clone():to(dev):requires_grad_() end
      for step = 1, 3 do
        for k, p in ipairs(ps) do p.grad = OPT_G[k][step]:to(dt):to(dev) end
        norm_of(opt:step(ps))
      end
      for _, p in ipairs(ps) do outs[#outs + 1] = p:detach() end
    end
    -- a parameter listed twice: two updates of it in one step, in order (Adam: steps 1 and 2)
    local p = OPT_W[3]:to(dt):clone():to(dev):requires_grad_()
    p.grad = OPT_G[3][1]:to(dt):to(dev)
    local opt = moe.optim.Adam { lr = 0.01 }
    opt:step { p, p }
    opt:step { p, p }
    outs[#outs + 1] = p:detach()
  end
  return outs
end
local function optim_trials(dev)
  local outs = optim_run(dev)
  if dev ~= "cpu" then
    local ref = optim_run("cpu")
    for i, r in ipairs(ref) do
      if r:dtype() == "float64" then
        local o = outs[i]:cpu()
        local d = (r - o):abs():max():item()
        assert.is_true(d <= 1e-12 * (1 + r:abs():max():item()), ("optim_update output %d: float64 difference %g"):format(i, d))
      end
    end
  end
  return outs
end
local WG3 = f64(moe.randn(3, 4, 3))            -- three experts
local BG3 = f64(moe.randn(3, 3))
-- route_plan: 3 groups of 300 tokens (more than a block of the device's plan), top-2 of 5 experts
local RP_IDX = moe.randint(1, 5, { 3, 300, 2 }, { dtype = "int64" })
local RP_ORDER = moe.stack({ moe.randperm(300), moe.randperm(300), moe.randperm(300) })
local RP_VALID = moe.rand(3, 300):gt(0.2)
-- beyond one block: rows for the device's tiled sort and merge passes (ties,
-- NaN), mid-size rows (one block's bitonic sort), full reductions of 1e5
-- elements (many blocks, then a second pass), scatters with many duplicates
local SORT_LONG = f64(moe.randint(0, 9, { 2, 5000 }))
SORT_LONG[{ 1, 7 }] = 0 / 0; SORT_LONG[{ 1, 4999 }] = 0 / 0; SORT_LONG[{ 2, 1 }] = 0 / 0
local SORT_INT = moe.randint(0, 9, { 2, 5000 }):to("int32")
local SORT_MID = f64(moe.randint(0, 40, { 3, 300 }))
local TOPK_LONG = f64(moe.randn(2, 7000))
local FULL = f64(moe.randn(100000))
local FULL_NEAR1 = f64(moe.rand(100000) * 0.002 + 0.999) -- a product that stays finite
local FULL_INT = moe.randint(-50, 50, { 100000 })
local DUP_IX = moe.randint(1, 5, { 2000 })                 -- index_add: 2000 sources into 5 rows
local DUP_SRC = f64(moe.randn(2000, 3))
local DUP_SCATTER_IX = moe.randint(1, 7, { 4, 3000 })      -- scatter_add: 3000 per row into 7
local DUP_SCATTER_SRC = f64(moe.randn(4, 3000))

-- a row: kernel, the differentiable inputs (host tensors), and run(dev, inputs...)
-- returning a list of output tensors; loss (optional) reduces them to a scalar.
-- cpu_only: the kernel exists only on the CPU (other backends must refuse it).
local rows = {
  { "binary", { A, B }, function(a, b) return { a + b, a * b, a / (b:abs() + 1), a:maximum(b), (a - b):pow(2) } end },
  { "unary", { A }, function(a) return { a:tanh(), a:exp(), a:sigmoid(), a:abs(), a:clamp(-0.5, 0.5) } end },
  { "unary_backward", { A }, function(a) return { (a:tanh() + a:sigmoid() + a:exp()):sum() } end },
  { "where", { A, B }, function(a, b) return { moe.where(a:gt(b), a, b), moe.where(a:gt(0), a, 0) } end },
  { "copy", { A }, function(a) return { a:transpose(1, 2):contiguous(), a:detach():to("float32"), a:clone() } end },
  { "fill", {}, function(dev) return { moe.zeros(2, 3):to(dev):fill_(2.5), moe.ones(3):to(dev) * 1 } end, no_inputs = true },
  -- drawn on the backend itself from the same Philox counters: uniform and float64 draws bitwise
  -- the CPU's, float32 normals to rounding (checked against the CPU's at the row's tolerance)
  { "random", {}, function(dev)
    moe.manual_seed(21)
    return { moe.rand(5, 3, { device = dev }), moe.randn(7, { device = dev, dtype = "float64" }),
      moe.randn(9, { device = dev }), moe.rand(2, { device = dev, dtype = "float64" }) }
  end, no_inputs = true },
  { "reduce_rows", { A }, function(a, dev)
    local out = { a:sum(2), a:mean(), a:max(2), a:var(2), a:logsumexp(2) }
    local x, p, n = FULL:to(dev), FULL_NEAR1:to(dev), FULL_INT:to(dev)
    for _, o in ipairs { x:sum(), x:mean(), x:max(), x:min(), x:argmax():to("float64"), x:argmin():to("float64"),
                         x:var(1, { correction = 0 }), x:std(1), x:logsumexp(1), p:prod(), n:sum():to("float64"),
                         n:prod():to("float64"), x:gt(-4):all():to("float64"), x:gt(4.5):any():to("float64"),
                         x:view(4, 25000):sum(2), x:view(4, 25000):max(2) } do
      out[#out + 1] = o
    end
    return out
  end, dev_arg = true },
  { "sum_middle", { C3 }, function(c) return { c:sum(2), c:mean(2) } end },
  { "scan_rows", { A }, function(a) return { a:softmax(2), a:cumsum(2), a:log_softmax(1) } end },
  { "cumprod_backward", { A }, function(a) return { a:cumprod(2) } end, cpu_only = true },
  { "gemm_batched", { A, W, C3 }, function(a, w, c) return { moe.matmul(a, w), moe.matmul(c, w) } end },
  { "gemm_add", { A, W, BIAS }, function(a, w, b) return { moe.linear(a, w, b), moe.linear(a, w, b, "tanh") } end },
  { "gemm_bf16", { A, W }, function(a, w) return { moe.matmul(a:to("float32"), w:to("float32"), "bf16"):to("float64") } end,
    tol = 1e-6, no_fd = true },
  { "argsort_rows", { A }, function(a, dev)
    local v, i = a:sort(2)
    local out = { v, i }
    for _, desc in ipairs { false, true } do -- (the long rows hold NaN: their indices only)
      local _, li = SORT_LONG:to(dev):sort(2, desc)
      local mv, mi = SORT_MID:to(dev):sort(2, desc)
      local _, ii = SORT_INT:to(dev):sort(2, desc)
      for _, o in ipairs { li, mv, mi, ii } do out[#out + 1] = o end
    end
    return out
  end, dev_arg = true },
  { "take_rows", { A }, function(a, dev)
    local v, i = a:topk(2, 2)
    local lv, li = TOPK_LONG:to(dev):topk(50, 2)
    local sv, si = TOPK_LONG:to(dev):topk(30, 2, false)
    local _, ti = SORT_LONG:to(dev):topk(100, 2)
    return { v, i, lv, li, sv, si, ti }
  end, dev_arg = true },
  { "gather", { A }, function(a, dev) return { a:gather(2, ix({ { 1, 4 }, { 2, 2 }, { 3, 1 } }):to(dev)) } end, dev_arg = true },
  { "scatter_add", { A, B }, function(a, b, dev)
    local out = { a:scatter_add(2, ix({ { 1, 4, 1, 2 }, { 2, 2, 3, 3 }, { 4, 1, 1, 1 } }):to(dev), b) }
    for _, det in ipairs { false, true } do -- atomics, then sorted segment sums
      local was = moe.set_deterministic(det)
      out[#out + 1] = f64(moe.zeros(4, 7)):to(dev):scatter_add(2, DUP_SCATTER_IX:to(dev), DUP_SCATTER_SRC:to(dev))
      moe.set_deterministic(was)
    end
    return out
  end, dev_arg = true },
  { "index_select", { A }, function(a, dev) return { a:index_select(1, ix({ 3, 1, 3 }):to(dev)) } end, dev_arg = true },
  { "index_add", { A, B }, function(a, b, dev)
    local out = { a:index_add(1, ix({ 2, 1, 2 }):to(dev), b) }
    for _, det in ipairs { false, true } do
      local was = moe.set_deterministic(det)
      out[#out + 1] = f64(moe.zeros(5, 3)):to(dev):index_add(1, DUP_IX:to(dev), DUP_SRC:to(dev))
      out[#out + 1] = a:index_add(1, ix({ 2, 1, 2 }):to(dev), b)
      moe.set_deterministic(was)
    end
    return out
  end, dev_arg = true },
  { "index_check", {}, function(dev)
    local ok, err = pcall(function() return A:to(dev):index_select(1, ix({ 4 }):to(dev)) end)
    assert.is_false(ok)
    assert.matches("index_select: index 4 out of range", err)
    return {}
  end, no_inputs = true },
  { "bincount", {}, function(dev)
    local v = ix({ 1, 3, 3, 5 }):to(dev)
    return { moe.bincount(v), moe.bincount(v, f64(moe.tensor { 0.5, 1, 2, 4 }):to(dev), 7),
      moe.bincount(v:to("int32"), moe.tensor({ 1, 2, 3, 4 }, { dtype = "int32" }):to(dev)), -- int weights: float64
      moe.bincount(ix({}):to(dev), nil, 3), moe.bincount(ix({}):to(dev), f64(moe.tensor {}):to(dev), 2),
      moe.bincount(BV:to(dev)), moe.bincount(BV:to(dev), BW:to(dev)), moe.bincount(BV:to(dev), BW8:to(dev), 40) }
  end, no_inputs = true,
    check = function(out)
      assert.same({ 1, 0, 2, 0, 1 }, out[1]:totable())
      assert.same({ 0.5, 0, 3, 0, 4, 0, 0 }, out[2]:totable())
      assert.same({ 1, 0, 5, 0, 4 }, out[3]:totable())
      assert.same({ 0, 0, 0 }, out[4]:totable()); assert.same({ 0, 0 }, out[5]:totable())
      local n, s, s8, v, w, w8 = {}, {}, {}, BV:totable(), BW:totable(), BW8:totable()
      for b = 1, 40 do n[b], s[b], s8[b] = 0, 0, 0 end
      for i, b in ipairs(v) do n[b], s[b], s8[b] = n[b] + 1, s[b] + w[i], s8[b] + w8[i] end
      local got, gs, top = out[6]:totable(), out[7]:totable(), 0
      for _, b in ipairs(v) do top = math.max(top, b) end
      assert.equal(top, #got); assert.equal(top, #gs)
      for b = 1, top do
        assert.equal(n[b], got[b]); assert.near(s[b], gs[b], 1e-12 * (1 + math.abs(s[b])))
      end
      assert.equal("float32", out[8]:dtype())
      assert.same(s8, out[8]:totable()) -- eighths: exact
    end },
  { "bce", { P }, function(p, dev) return { moe.core.bce(Y:to(p:dtype()):to(dev), p), moe.core.bce(Y:to(p:dtype()):to(dev), p - 0.5, true) } end, dev_arg = true },
  { "bce_backward", { P }, function(p, dev) return { moe.core.bce(Y:to(p:dtype()):to(dev), p):sum() } end, dev_arg = true },
  { "roc_auc", {}, function(dev)
    return { moe.tensor { moe.core.roc_auc(ix({ 0, 1, 1, 0 }):to("float64"):to(dev), moe.tensor({ 0.1, 0.4, 0.35, 0.8 }):to(dev)) } }
  end, no_inputs = true, cpu_only = true,
    check = function(out) assert.near(0.5, out[1]:item(), 1e-12) end }, -- pairs (0.4>0.1, 0.35>0.1, 0.4<0.8, 0.35<0.8)
  -- h as given, as the [E,B,U] memory of per-expert GEMMs viewed [B,U,E] (its gradient
  -- takes that order), and as a non-dense slice; g as given and broadcast over B
  { "mixture", { H3, G2 }, function(h, g)
    return { moe.core.mixture(h, g), moe.core.mixture(h:permute(3, 1, 2):contiguous():permute(2, 3, 1), g),
      moe.core.mixture(h:narrow(2, 2, 1), g), moe.core.mixture(h, g:narrow(1, 1, 1):expand(4, 3)) }
  end },
  { "mixture_backward", { H3, G2 }, function(h, g)
    return { moe.core.mixture(h, g):pow(2):sum(),
      moe.core.mixture(h:permute(3, 1, 2):contiguous():permute(2, 3, 1), g):pow(2):sum(),
      moe.core.mixture(h:narrow(2, 2, 1), g:tanh()):pow(2):sum(), moe.core.mixture(H3:to(h:device()):to(h:dtype()), g):sum() } -- (gg alone)
  end },
  { "gate_scale", { H2, G2 }, function(h, g)
    local out = {}
    for _, o in ipairs { {}, { relu = true }, { append_gate = true }, { relu = true, append_gate = true } } do
      out[#out + 1] = moe.core.gate_scale(h, g, o)
    end
    return out
  end },
  { "gate_scale_backward", { H2, G2 }, function(h, g)
    local out = {}
    for _, o in ipairs { {}, { relu = true }, { append_gate = true }, { relu = true, append_gate = true } } do
      out[#out + 1] = moe.core.gate_scale(h, g, o):pow(2):sum()
    end
    local function const(t) return t:to(h:device()):to(h:dtype()) end -- (no gradient: gg alone, gh alone)
    out[#out + 1] = moe.core.gate_scale(const(H2), g, { relu = true }):sum()
    out[#out + 1] = moe.core.gate_scale(h, const(G2), { append_gate = true }):sum()
    return out
  end },
  { "route_plan", {}, function(dev)
    local outs = {}
    local function plan(...)
      local t, e, r, c = moe.core.route_plan(...)
      assert.equal("cpu", c:device()) -- the counts size the expert GEMMs on the host, whatever the device
      for _, o in ipairs { t, e, r, c } do outs[#outs + 1] = o end
    end
    local small = ix({ { { 1, 2 }, { 1, 3 }, { 1, 2 } } }):to(dev)
    plan(small, nil, nil, 3, 2)                                         -- tokens choose, capacity 2
    plan(small, nil, nil, 3, -1)                                        -- dropless
    plan(small, ix({ { 3, 1, 2 } }):to(dev), nil, 3, 1)                 -- batch-prioritized order
    plan(small, nil, moe.tensor({ { true, false, true } }):to(dev), 3, 2) -- a padding token
    plan(RP_IDX:to(dev), nil, nil, 5, 70)                               -- 3 groups of 300 tokens, K = 2
    plan(RP_IDX:to(dev), RP_ORDER:to(dev), RP_VALID:to(dev), 5, 45)
    plan(RP_IDX:select(3, 1):unsqueeze(3):to(dev), nil, nil, 5, -1)     -- K = 1
    plan(ix({}):view(0, 4, 2):to(dev), nil, nil, 3, 2)                  -- no groups
    -- a bad value: the error names the first one in placement order (7, then 5), as the CPU does
    local bad = { { ix({ { { 1, 5 }, { 7, 1 } } }), nil, "expert index 7 outside 1..3" },
                  { ix({ { { 1, 2 }, { 1, 1 } } }), ix({ { 1, 3 } }), "order holds 3, outside 1..2" } }
    for _, b in ipairs(bad) do
      local ok, err = pcall(moe.core.route_plan, b[1]:to(dev), b[2] and b[2]:to(dev), nil, 3, 2)
      assert.is_false(ok)
      assert.matches("route_plan: " .. b[3], err, 1, true)
    end
    for i, o in ipairs(outs) do outs[i] = o:to("float64") end
    return outs
  end, no_inputs = true,
    -- each token's first choice before any second one; expert 1 is full after two
    check = function(out)
      assert.same({ 2, 2, 1 }, out[4]:totable())
      assert.same({ 1, 2, 1, 3, 2 }, out[1]:totable())                 -- by expert, then placement
      assert.same({ 3, 2, 1 }, out[8]:totable())                        -- dropless keeps every pair
      assert.same({ 3, 3, 2 }, out[9]:totable())                        -- order 3,1,2, one slot each
      assert.same({ 1, 3, 1, 3 }, out[13]:totable())                    -- token 2 is padding
      local kept = 0
      for _, c in ipairs(out[20]:totable()) do assert.is_true(c <= 3 * 70); kept = kept + c end
      assert.equal(out[17]:numel(), kept)
    end },
  { "grouped_gemm", { XG, WG, BG, WG3, BG3 }, function(x, w, b, w3, b3, dev)
    return { moe.core.grouped_matmul(x, w, b, ix({ 2, 3 }):to(dev)),
      moe.core.grouped_matmul(x, w, ix({ 5, 0 })),                     -- counts on the host serve any device
      moe.core.grouped_matmul(x, w3, b3, ix({ 2, 0, 3 }):to(dev)),       -- an expert without rows
      moe.core.grouped_matmul(x, w3, ix({ 0, 5, 0 })),
      moe.core.grouped_matmul(x:to("float32"), w3:to("float32"), b3:to("float32"), ix({ 1, 3, 1 }), "bf16")
        :detach():to("float64") }                                       -- bf16 operands, fp32 sums
  end, dev_arg = true, tol = 1e-6 }, -- (the bf16 output: fp32 sums in another order)
  { "grouped_gemm_backward", { XG, WG, BG, WG3, BG3 }, function(x, w, b, w3, b3, dev)
    return { moe.core.grouped_matmul(x, w, ix({ 3, 2 }):to(dev)):pow(2):sum(),
      moe.core.grouped_matmul(x, w, b, ix({ 0, 5 })),
      moe.core.grouped_matmul(x, w3, b3, ix({ 2, 0, 3 }):to(dev)),
      moe.core.grouped_matmul(x:narrow(1, 1, 3), w3, ix({ 0, 0, 3 })) }
  end, dev_arg = true },
  { "optim_update", {}, function(dev) return optim_trials(dev) end, no_inputs = true, tol = 1e-6,
    check = function(out) -- the first step of momentum SGD is w - lr g
      local v = out[1]:totable()
      assert.near(0.95, v[1], 1e-12); assert.near(-2.05, v[2], 1e-12); assert.near(3.1, v[3], 1e-12)
    end },
}

-- one row per value of the engine's op enums too (moe.core.op_names()), each
-- through the same checks, with broadcast and empty shapes for the binary ones
local POS = P -- inputs in (0.1, 0.9): log, sqrt, rsqrt, pow and the like
local EMPTY = f64(moe.zeros(0, 4))
local op_rows = {}
local function op_row(kind, name, inputs, fn, extra)
  local r = { kind .. " " .. name, inputs, fn }
  for k, v in pairs(extra or {}) do r[k] = v end
  op_rows[#op_rows + 1] = r
end
local ROW4 = f64(moe.randn(4))
for _, name in ipairs(moe.core.op_names().binary) do
  local cmp = ({ eq = 1, ne = 1, lt = 1, le = 1, gt = 1, ge = 1 })[name]
  op_row("binary", name, { POS, ROW4:abs() + 0.5 }, function(a, b)
    local out = { moe[name](a, b), moe[name](a, 2), moe[name](EMPTY:to(a:device()):to(a:dtype()), b) }
    if cmp then for i, o in ipairs(out) do out[i] = o:to(a:dtype()) end end -- (bool results, compared as numbers)
    return out
  end, { no_fd = cmp })
end
for _, name in ipairs(moe.core.op_names().unary) do
  local fn = name == "clamp" and function(a) return { a:clamp(0.3, 0.6), EMPTY:to(a:device()):clamp(0, 1) } end
    or function(a) return { moe[name](a), moe[name](EMPTY:to(a:device()):to(a:dtype())) } end
  -- floor, ceil, round and sign are flat almost everywhere: their gradients are 0
  op_row("unary", name, { ({ log = 1, sqrt = 1, rsqrt = 1, log1p = 1 })[name] and POS or A }, fn)
end
for _, name in ipairs(moe.core.op_names().reduce) do
  local int = ({ argmax = 1, argmin = 1, all = 1, any = 1 })[name]
  op_row("reduce", name, { C3 }, function(c)
    local src = ({ all = 1, any = 1 })[name] and c:gt(0) or c
    local out = { moe[name](src, 2), moe[name](src, 3, true) }
    if not int then out[3] = moe[name](src) end
    if int then for i, o in ipairs(out) do out[i] = o:to("float64") end end
    return out
  end, { no_fd = int })
end
for _, name in ipairs(moe.core.op_names().scan) do
  op_row("scan", name, { A }, function(a) return { moe[name](a, 2), moe[name](a, 1) } end)
end

local kernels = moe.core.backend_kernels()

-- the outputs of row r on dev (inputs moved there, marked as leaves) and the gradients of their sum of squares
-- the variants of a row's inputs: the float64 contiguous ones; the same values
-- as a non-contiguous view (the transpose of a contiguous transpose); float32
local function strided(t)
  if t:dim() < 2 then return t end
  return t:transpose(1, t:dim()):contiguous():transpose(1, t:dim())
end
local VARIANTS = {
  { "strided", function(t) local v = strided(t); assert(t:dim() < 2 or not v:is_contiguous()); return v end, 1e-12 },
  { "float32", function(t) return t:to("float32") end, 2e-5 },
}

local function run(r, dev, want_grad, variant)
  local ins, outs = {}, nil
  if r.no_inputs then
    outs = r[3](dev)
    for i, o in ipairs(outs) do outs[i] = o:cpu() end
    return outs, {}, {}
  end
  for i, t in ipairs(r[2]) do
    local v = t:clone():to(dev) -- a fresh leaf (to("cpu") of a host tensor is the tensor itself)
    if variant then v = variant(v) end
    ins[i] = v:detach()
    if want_grad then ins[i]:requires_grad_() end
  end
  local args = { unpack(ins) }
  if r.dev_arg then args[#args + 1] = dev end
  outs = r[3](unpack(args))
  local grads, used = {}, {}
  if want_grad then
    local loss
    for i, o in ipairs(outs) do
      if o.requires_grad then
        used[i] = true
        local s = (o * o):sum()
        loss = loss and loss + s or s
      end
    end
    if loss then
      loss:backward()
      for i, t in ipairs(ins) do grads[i] = t.grad and t.grad:cpu() or false end
    end
  end
  local host = {}
  for i, o in ipairs(outs) do host[i] = o:detach():cpu() end
  return host, grads, used
end

local function maxdiff(a, b)
  assert.same(a:shape(), b:shape())
  if a:numel() == 0 then return 0 end
  return (f64(a) - f64(b)):abs():max():item()
end

-- outputs and gradients against reference ones, each within tol relative to its
-- largest magnitude (int64 outputs exactly when exact_ints); what names the case
local function assert_close(ref, refg, outs, grads, tol, exact_ints, what)
  assert.equal(#ref, #outs)
  for i = 1, #ref do
    local t = ((exact_ints and ref[i]:dtype() == "int64") or ref[i]:numel() == 0) and 0
      or tol * (1 + f64(ref[i]):abs():max():item())
    assert.is_true(maxdiff(ref[i], outs[i]) <= t, ("%s: output %d"):format(what, i))
  end
  for i, g in pairs(refg) do
    if g then
      assert.is_true(maxdiff(g, grads[i]) <= tol * (1 + f64(g):abs():max():item()), ("%s: gradient %d"):format(what, i))
    end
  end
end

describe("the backends' kernels #backend", function()
  it("every kernel of the dispatch has a row here, and every row a kernel", function()
    local listed, have = {}, {}
    for _, k in ipairs(kernels) do listed[#listed + 1] = k.name end
    for _, r in ipairs(rows) do have[#have + 1] = r[1] end
    table.sort(listed); table.sort(have)
    assert.same(listed, have)
    for _, k in ipairs(kernels) do assert.is_true(k.cpu, k.name .. " has no CPU kernel") end
  end)


  local cuda_of = {}
  for _, k in ipairs(kernels) do cuda_of[k.name] = k.cuda end

  it("every op of the engine's enums has a row here", function()
    local have = {}
    for _, r in ipairs(op_rows) do have[r[1]] = true end
    for kind, names in pairs(moe.core.op_names()) do
      for _, name in ipairs(names) do assert.is_true(have[kind .. " " .. name], kind .. " " .. name .. " has no row") end
    end
  end)

  local all_rows = {}
  for _, r in ipairs(rows) do all_rows[#all_rows + 1] = r end
  for _, r in ipairs(op_rows) do
    -- their kernels have CUDA versions, except cumprod's backward
    cuda_of[r[1]] = r[1] ~= "scan cumprod"
    all_rows[#all_rows + 1] = r
  end
  for _, r in ipairs(all_rows) do
    it(r[1] .. " on the CPU: outputs, and gradients against central differences", function()
      local outs, grads, used = run(r, "cpu", not r.no_inputs)
      if r.check then r.check(outs) end
      if r.no_inputs or r.no_fd then return end
      -- d/dx of sum over outputs of out^2, by central differences on each input element
      local eps = 1e-6
      local function loss_at(inputs)
        local rr = { r[1], inputs, r[3], dev_arg = r.dev_arg }
        local o = run(rr, "cpu", false)
        local s = 0 -- the outputs the autograd loss summed
        for i in pairs(used) do s = s + (o[i] * o[i]):sum():item() end
        return s
      end
      local checked = 0
      for i, x in ipairs(r[2]) do
        local g = grads[i]
        if g then
          local flat = x:reshape(-1):totable()
          local gf = g:reshape(-1):totable()
          for j = 1, #flat do
            local function with(d)
              local v = { unpack(flat) }
              v[j] = v[j] + d
              local inputs = { unpack(r[2]) }
              inputs[i] = moe.tensor(v, { dtype = "float64" }):view(unpack(x:shape()))
              return loss_at(inputs)
            end
            local fd = (with(eps) - with(-eps)) / (2 * eps)
            assert.is_true(math.abs(fd - gf[j]) <= 1e-5 * (1 + math.abs(fd)),
              ("%s: d/d input %d [%d]: autograd %.9g, finite differences %.9g"):format(r[1], i, j, gf[j], fd))
            checked = checked + 1
          end
        end
      end
      assert.is_true(checked > 0, r[1] .. ": no gradient reached the inputs")
    end)

    if not r.no_inputs and not r.no_variants then
      it(r[1] .. " on the CPU: strided and float32 inputs give the contiguous float64 results", function()
        local ref, rg = run(r, "cpu", true)
        for _, v in ipairs(VARIANTS) do
          local outs, grads = run(r, "cpu", true, v[2])
          assert_close(ref, rg, outs, grads, v[3], true, ("%s, %s inputs"):format(r[1], v[1]))
        end
      end)
    end

    it(r[1] .. " on the CUDA backend (the emulator in make test): as the CPU, or refused by name", function()
      if not moe.cuda.is_available() then
        pending("skipped: no CUDA device or emulator (the CPU rows run)")
        return
      end
      if r.cpu_only then assert.is_false(cuda_of[r[1]], r[1] .. " has a CUDA kernel now: give its row a CUDA check") end
      if not cuda_of[r[1]] then
        local ok, err = pcall(run, r, "cuda", not r.no_inputs)
        assert.is_false(ok, r[1] .. " ran on the device without a CUDA kernel")
        assert.matches("not on this backend %(cuda%)", tostring(err))
        return
      end
      local cases = { { "float64", nil, r.tol or 1e-9 } }
      if not r.no_inputs and not r.no_variants then
        for _, v in ipairs(VARIANTS) do cases[#cases + 1] = { v[1], v[2], math.max(r.tol or 1e-9, v[1] == "float32" and 1e-5 or 1e-9) } end
      end
      for _, c in ipairs(cases) do
        local co, cg = run(r, "cpu", not r.no_inputs, c[2])
        local go, gg = run(r, "cuda", not r.no_inputs, c[2])
        assert_close(co, cg, go, gg, c[3], false, ("%s, %s, against the CPU"):format(r[1], c[1]))
        if r.check then r.check(go) end
      end
    end)
  end
end)
