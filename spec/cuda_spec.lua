-- The CUDA device: what works on every machine, and what needs a device
-- (pending with "skipped: no CUDA device" elsewhere; scripts/test.sh counts them).
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"

describe("moe.cuda on any machine", function()
  it("reports the build and the devices without failing", function()
    assert.is_boolean(moe.cuda.is_available())
    assert.is_boolean(moe.cuda.is_built())
    local n = moe.cuda.device_count()
    assert.is_true(n >= 0 and n == math.floor(n))
    local stats = moe.cuda.memory_stats()
    assert.is_number(stats.live); assert.is_number(stats.cached)
    if n == 0 then assert.is_string(moe.cuda.info().reason) end
  end)
  it("info() gives the CUDA versions, and says in plain words why no device is usable", function()
    local i = moe.cuda.info()
    assert.is_number(i.runtime_version); assert.is_number(i.driver_version)
    assert.is_boolean(i.emulator)
    if i.device_count > 0 then return end
    if not i.built then assert.matches("built without the CUDA backend", i.reason)
    else assert.is_truthy(i.reason:match("driver") or i.reason:match("GPU"), i.reason) end
    assert.matches("no CUDA device is available %(" .. i.reason:gsub("%p", "%%%0"), H.error_of(moe.set_default_device, "cuda"))
  end)
  it("each way of having no usable device gives its reason (the emulator's MOE_EMU_* switches)", function()
    if not moe.cuda.info().emulator then
      pending("skipped: not the emulator build")
      return
    end
    local function reason(env)
      local out, err = H.sh(env .. " " .. os.getenv("MOELUA_BIN") ..
        [[ -e "io.write(moe.cuda.device_count(), ' ', moe.cuda.info().driver_version, ' ', moe.cuda.info().reason)"]])
      return out .. err
    end
    assert.matches("^0 12040 the NVIDIA driver is loaded but sees no GPU", reason("MOE_EMU_NO_DEVICE=1"))
    assert.matches("^0 11020 the NVIDIA driver supports CUDA 11%.2, older than the CUDA 12%.4 runtime moelua was built with",
      reason("MOE_EMU_OLD_DRIVER=1"))
    assert.matches("^0 0 no NVIDIA driver is installed", reason("MOE_EMU_NO_DRIVER=1"))
  end)
  it("a CPU tensor stays itself on the CPU; moving to a missing device is a clear error", function()
    local t = moe.arange(1, 7):view(2, 3)
    assert.equal("cpu", t:cpu():device())
    assert.same(t:totable(), t:to("cpu"):totable())
    if not moe.cuda.is_available() then
      assert.matches("cuda: no CUDA device is available", H.error_of(t.cuda, t))
      assert.matches("no CUDA device", H.error_of(nn.Dense { units = 2 }.cuda, moe.Sequential { nn.Dense { units = 2 },
        input_shape = { 3 } }))
    end
  end)
end)

describe("moe.cuda with a device", function()
  local function need_device() return H.need_device(pending) end
  it("round-trips tensors of every dtype, contiguous or not", function()
    if not need_device() then return end
    for _, dt in ipairs { "float32", "float64", "int32", "int64", "bool" } do
      local t = moe.randn(4, 5):gt(0):to(dt)
      local back = t:cuda():cpu()
      assert.equal("cuda", t:cuda():device())
      assert.same(t:totable(), back:totable())
    end
    local s = moe.randn(6, 4):transpose(1, 2)
    assert.same(s:totable(), s:cuda():cpu():totable())
    assert.matches("%[moe%.Tensor float32 of size 4x6 on cuda%]$", tostring(s:cuda()))
  end)
  it("counts device memory through the caching allocator", function()
    if not need_device() then return end
    collectgarbage(); collectgarbage()
    moe.cuda.empty_cache()
    local before = moe.cuda.memory_stats().live
    local t = moe.randn(1024, 1024):cuda()
    assert.is_true(moe.cuda.memory_stats().live >= before + 4 * 1024 * 1024)
    t = nil
    collectgarbage(); collectgarbage()
    assert.is_true(moe.cuda.memory_stats().cached >= 4 * 1024 * 1024)
    assert.is_true(moe.cuda.empty_cache() >= 4 * 1024 * 1024)
  end)
  it("dead device temporaries are collected long before the device fills (the GC nudge counts device memory)", function()
    if not need_device() then return end
    collectgarbage(); collectgarbage()
    local total = moe.cuda.info().total
    local h = moe.zeros(262144)                            -- 1 MiB
    local base, most = moe.cuda.memory_stats().live, 0
    for _ = 1, 3000 do                                     -- 3000 MiB: more than the emulator's 2 GiB device
      local t = h:cuda()
      local live = moe.cuda.memory_stats().live - base
      if live > most then most = live end
    end
    -- the nudge runs every 1/32 of the device's memory; without it, only the out-of-memory path would collect
    assert.is_true(most <= total / 8, ("%.0f MiB live at most"):format(most / 2 ^ 20))
  end)
  it("an out-of-memory collects dead tensors and retries once, then names the sizes", function()
    if not need_device() then return end
    collectgarbage(); collectgarbage()
    local info = moe.cuda.info()
    local one = moe.zeros(1):cuda()
    local n = math.floor(info.total / 4) + 2 ^ 28          -- the device's memory and 1 GiB more, in floats
    local err = H.error_of(function() return one:expand(n):contiguous() end)
    assert.matches("out of CUDA memory: requested %d+ bytes %(%d+%.%d%d GiB%), %d+ live %(.-%), %d+ of %d+ free %(.- of .-%)", err)
    if not info.emulator then return end                 -- below: host copies of half the device, for 2 GiB only
    moe.cuda.empty_cache()
    local half = math.floor(moe.cuda.info().free * 0.55 / 4)
    local hb = moe.empty(half)                             -- made first: no GC nudge between `a = nil` and b's cudaMalloc
    local a = moe.empty(half):cuda()
    a = nil -- luacheck: ignore (dead, not yet collected: the nudge ran when it was made)
    local b = hb:cuda()                                    -- fits only once `a` is collected
    assert.equal(half, b:numel())
    b, hb = nil, nil -- luacheck: ignore
    collectgarbage(); collectgarbage()
    moe.cuda.empty_cache()
  end)
  it("ops without a CUDA kernel say so; a model moves its weights and back", function()
    if not need_device() then return end
    local y, p = moe.tensor({ 0, 1 }):cuda(), moe.tensor({ 0.2, 0.7 }):cuda()
    assert.matches("roc_auc: not on this backend %(cuda%): its kernel .roc_auc. has no CUDA version yet",
      H.error_of(moe.core.roc_auc, y, p))
    local m = moe.Sequential { nn.Dense { units = 2 }, input_shape = { 3 } }
    local w = m:get_weights()
    m:cuda()
    assert.equal("cuda", m:parameters()[1]:device())
    assert.is_true(m:parameters()[1].requires_grad)
    m:cpu()
    for i, x in ipairs(m:get_weights()) do assert.same(w[i]:totable(), x:totable()) end
  end)

  -- CPU/GPU parity: the same op on the same values, results within float tolerance
  local function close(cpu, gpu, tol)
    assert.equal("cuda", gpu:device())
    local back = gpu:detach():cpu()
    assert.same(cpu:shape(), back:shape())
    assert.equal(cpu:dtype(), back:dtype())
    if cpu:numel() == 0 then return end
    if cpu:dtype() == "float32" or cpu:dtype() == "float64" then
      local ca, cb = cpu:ne(cpu), back:ne(back)
      assert.same(ca:totable(), cb:totable())
      local diff = moe.where(ca, 0, (cpu - back):abs()):max():item()
      local scale = math.max(1, moe.where(ca, 0, cpu:abs()):max():item())
      assert.is_true(diff <= (tol or 1e-5) * scale, ("max difference %g"):format(diff))
    else
      assert.same(cpu:totable(), back:totable())
    end
  end

  it("elementwise ops, broadcasting, scalars and dtypes match the CPU", function()
    if not need_device() then return end
    moe.manual_seed(7)
    local a, b = moe.randn(3, 4, 5), moe.randn(4, 1)
    a[1][1][1] = 0 / 0
    local ga, gb = a:cuda(), b:cuda()
    for _, op in ipairs { "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge" } do
      close(moe[op](a, b), moe[op](ga, gb))
      close(moe[op](a, 0.5), moe[op](ga, 0.5))
      close(moe[op](2, a), moe[op](2, ga))
    end
    local ia, ib = moe.randint(-5, 5, { 4, 6 }, { dtype = "int32" }), moe.randint(1, 5, { 6 }, { dtype = "int64" })
    for _, op in ipairs { "add", "sub", "mul", "div", "maximum", "lt" } do close(moe[op](ia, ib), moe[op](ia:cuda(), ib:cuda())) end
    local pos = a:abs() + 0.1
    for _, op in ipairs { "neg", "abs", "relu", "sign", "square", "exp", "log", "sqrt", "tanh", "sigmoid", "gelu",
                          "softplus", "log1p", "expm1", "floor", "ceil", "round", "rsqrt" } do
      close(moe[op](pos), moe[op](pos:cuda()))
      close(moe[op](a), moe[op](ga))
    end
    close(a:clamp(-0.5, 0.5), ga:clamp(-0.5, 0.5))
    close(moe.where(a:gt(0), a, b), moe.where(ga:gt(0), ga, gb))
    close(moe.where(a:gt(0), 1, a), moe.where(ga:gt(0), 1, ga))
    -- casts, strided views, in-place ops and copies between devices
    for _, dt in ipairs { "float64", "int32", "int64", "bool" } do close(a:to(dt), ga:to(dt)) end
    close(a:transpose(1, 3):contiguous(), ga:transpose(1, 3):contiguous())
    close(a:narrow(3, 2, 2) * 3, ga:narrow(3, 2, 2) * 3)
    local c, gc = a:clone(), ga:clone()
    c:add_(b); gc:add_(gb); c:mul_(2); gc:mul_(2)
    close(c, gc)
    local z = moe.zeros(3, 4, 5):cuda()
    z:copy_(a)                                  -- from the host into device memory
    close(a, z)
    local f = moe.zeros(2, 3):cuda(); f:fill_(2.5); close(moe.full({ 2, 3 }, 2.5), f)
  end)

  it("reductions, softmax, scans and sorting match the CPU", function()
    if not need_device() then return end
    moe.manual_seed(8)
    local a = moe.randn(3, 4, 70)       -- rows of 70 and of 12 over 256-thread blocks
    local ga = a:cuda()
    for _, op in ipairs { "sum", "mean", "var", "std", "max", "min", "argmax", "argmin", "logsumexp" } do
      close(moe[op](a), moe[op](ga), 1e-4)
      for d = 1, 3 do close(moe[op](a, d), moe[op](ga, d), 1e-4) end
    end
    close(a:sum { 1, 2 }, ga:sum { 1, 2 }, 1e-4)           -- the strided column-sum path
    local pr = moe.randn(4, 6)
    close(pr:prod(2), pr:cuda():prod(2), 1e-5)
    local v, i = a:max(2); local gv, gi = ga:max(2)
    close(v, gv); close(i, gi)
    close(a:gt(0):all(3), ga:gt(0):all(3)); close(a:gt(2):any(3), ga:gt(2):any(3))
    local ri = moe.randint(0, 9, { 4, 5 })
    close(ri:sum(2), ri:cuda():sum(2)); close(ri:max(1), ri:cuda():max(1))
    for d = 1, 3 do
      close(a:softmax(d), ga:softmax(d), 1e-5)
      close(a:log_softmax(d), ga:log_softmax(d), 1e-5)
      close(a:cumsum(d), ga:cumsum(d), 1e-4)
    end
    local t = moe.tensor { { 3, 1, 3, 2 }, { 0 / 0, 5, 5, -1 } }
    local tv, ti = t:topk(3, 2); local gtv, gti = t:cuda():topk(3, 2)
    close(tv, gtv); close(ti, gti)                          -- ties in index order, NaN first
    local sv, si = a:sort(3, true); local gsv, gsi = ga:sort(3, true)
    close(sv, gsv); close(si, gsi)
  end)

  it("matmul, linear and binary cross-entropy match, forward and backward", function()
    if not need_device() then return end
    moe.manual_seed(9)
    local a, b = moe.randn(2, 5, 7), moe.randn(7, 3)
    close(a:matmul(b), a:cuda():matmul(b:cuda()), 1e-5)
    local c = moe.randn(5, 4)
    close(a:transpose(2, 3):matmul(c), a:cuda():transpose(2, 3):matmul(c:cuda()), 1e-5)
    close(moe.randn(3, 4, 0):matmul(moe.randn(0, 2)), moe.randn(3, 4, 0):cuda():matmul(moe.randn(0, 2):cuda()))
    local x, w, bias, target = moe.randn(6, 7), moe.randn(7, 3), moe.randn(3), moe.rand(6, 3):gt(0.5):float()
    for _, act in ipairs { "none", "relu", "sigmoid", "tanh" } do
      local grads = {}
      for k, dev in ipairs { "cpu", "cuda" } do
        local X, W, B = x:to(dev):detach(), w:to(dev):detach(), bias:to(dev):detach()
        X.requires_grad, W.requires_grad, B.requires_grad = true, true, true
        local y = moe.linear(X, W, B, act ~= "none" and act or nil)
        local p = y:sigmoid()
        local loss = moe.core.bce(target:to(dev), p):mean()
        loss:backward()
        grads[k] = { y, X.grad, W.grad, B.grad }
      end
      for j = 1, 4 do close(grads[1][j], grads[2][j], 1e-4) end
    end
  end)

  it("gradients of composite expressions match the CPU (autograd on the device)", function()
    if not need_device() then return end
    moe.manual_seed(10)
    local x0, y0 = moe.randn(4, 6), moe.randn(6, 5)
    local function run(dev)
      local x, y = x0:to(dev):detach(), y0:to(dev):detach()
      x.requires_grad, y.requires_grad = true, true
      local h = x:matmul(y):gelu()
      local s = (h:softmax(2) * h:tanh()):sum(1) + h:max(2):sum() + x:abs():mean()
      local idx = moe.tensor({ 2, 1, 2 }, { dtype = "int64" }):to(dev)
      local r = s:sum() + h:index_select(1, idx):exp():mean() + moe.cat({ x, x * 2 }, 1):pow(2):sum()
      r:backward()
      return r, x.grad, y.grad
    end
    local r1, gx1, gy1 = run("cpu")
    local r2, gx2, gy2 = run("cuda")
    close(r1, r2, 1e-4); close(gx1, gx2, 1e-4); close(gy1, gy2, 1e-4)
  end)

  it("index ops match, and a bad index is a clear error", function()
    if not need_device() then return end
    moe.manual_seed(11)
    local t = moe.randn(5, 4)
    local idx = moe.tensor({ 5, 1, 1, 3 }, { dtype = "int64" })
    local gt, gidx = t:cuda(), idx:cuda()
    close(t:index_select(1, idx), gt:index_select(1, gidx))
    local cols = moe.tensor({ 4, 1, 4 }, { dtype = "int64" })
    close(t:index_select(2, cols), gt:index_select(2, cols:cuda()))
    local src = moe.randn(4, 4)
    close(t:index_add(1, idx, src), gt:index_add(1, gidx, src:cuda()))       -- repeated index 1 accumulates
    local gi = moe.randint(1, 5, { 3, 4 })
    close(t:gather(1, gi), gt:gather(1, gi:cuda()))
    close(t:scatter_add(1, gi, moe.ones(3, 4)), gt:scatter_add(1, gi:cuda(), moe.ones(3, 4):cuda()))
    close(moe.stack({ t, t * 2 }, 2), moe.stack({ gt, gt * 2 }, 2))
    local bad = moe.tensor({ 1, 6 }, { dtype = "int64" }):cuda()
    assert.matches("index_select: index 6 out of range %[1, 5%]", H.error_of(gt.index_select, gt, 1, bad))
    assert.matches("bincount: index 0 out of range", H.error_of(moe.bincount, moe.tensor({ 0, 1 }, { dtype = "int64" }):cuda()))
    assert.same({ 0, 2, 0, 1 }, moe.bincount(moe.tensor({ 2, 4, 2 }, { dtype = "int64" }):cuda()):cpu():totable())
  end)

  it("mixing devices in one op is an error naming both; results land on their inputs' device", function()
    if not need_device() then return end
    local a, b = moe.randn(2, 2), moe.randn(2, 2):cuda()
    assert.matches("add: argument #2 is on cuda while an earlier tensor argument is on cpu", H.error_of(moe.add, a, b))
    assert.matches("matmul: argument #2 is on cpu", H.error_of(moe.matmul, b, a))
    assert.matches("cat: entry 2 of the list is on cpu", H.error_of(moe.cat, { b, a }))
    assert.equal("cuda", (b * 2):sum():device())
    assert.equal("cuda", moe.zeros_like(b):device())
    local prev = moe.get_default_device()
    moe.set_default_device("cuda")
    local ok, made = pcall(moe.randn, 3)
    -- data.batches' indices follow the default device, shuffled or not
    local ok2, devs = pcall(function()
      local d = {}
      for idx in moe.data.batches(10, 4, { seed = 2 }) do d[#d + 1] = idx:device() end
      for idx in moe.data.batches(10, 4, { shuffle = false }) do d[#d + 1] = idx:device() end
      return d
    end)
    moe.set_default_device(prev)
    assert.is_true(ok)
    assert.equal("cuda", made:device())
    assert.is_true(ok2, devs)
    assert.same({ "cuda", "cuda", "cuda", "cuda", "cuda", "cuda" }, devs)
    assert.equal("cpu", moe.randn(3):device())
    assert.matches("set_default_device: expected", H.error_of(moe.set_default_device, "tpu"))
  end)

  it("bf16 and tf32 matmuls stay within their precision of fp32", function()
    if not need_device() then return end
    moe.manual_seed(12)
    local a, b = moe.randn(64, 96), moe.randn(96, 32)
    local exact = a:matmul(b)
    local prev = moe.cuda.set_precision("bf16")
    local ok, r = pcall(function() return a:cuda():matmul(b:cuda()):cpu() end)
    moe.cuda.set_precision("tf32")
    local ok2, r2 = pcall(function() return a:cuda():matmul(b:cuda()):cpu() end)
    moe.cuda.set_precision(prev)
    assert.is_true(ok, r); assert.is_true(ok2, r2)
    local err = (r - exact):abs():max():item()
    assert.is_true(err < 0.15, "bf16 error " .. err)          -- 8-bit mantissas over K = 96
    assert.is_true((r2 - exact):abs():max():item() < 0.05)
    assert.equal("fp32", moe.cuda.get_precision())
  end)

  it("a per-call bf16 (moe.set_precision's) runs cuBLAS's bf16 GEMM for that call only, as the CPU's bf16 does", function()
    if not need_device() then return end
    moe.manual_seed(14)
    local x = moe.randn(24, 40, { requires_grad = true })
    local w = moe.randn(40, 12, { requires_grad = true })
    local b, g = moe.randn(12), moe.randn(24, 12)
    local y = moe.linear(x, w, b, "relu", "bf16")        -- the CPU's bf16 (reference for the device)
    y:backward(g)
    local xc, wc = x:detach():cuda(), w:detach():cuda()
    xc.requires_grad, wc.requires_grad = true, true
    local yc = moe.linear(xc, wc, b:cuda(), "relu", "bf16")
    yc:backward(g:cuda())
    local function near(a, c) return (a - c:cpu()):abs():max():item() <= 1e-4 * (1 + a:abs():max():item()) end
    assert.is_true(near(y:detach(), yc:detach()))        -- bf16 operands, fp32 sums: the same numbers
    assert.is_true(near(x.grad, xc.grad) and near(w.grad, wc.grad))
    local y32 = moe.linear(xc:detach(), wc:detach(), b:cuda(), "relu"):cpu()
    assert.is_true((y32 - y:detach()):abs():max():item() > 0) -- the fp32 call stayed fp32
    assert.equal("fp32", moe.cuda.get_precision())
    local m = moe.matmul(xc:detach(), wc:detach(), "bf16"):cpu()
    assert.is_true(near(moe.matmul(x:detach(), w:detach(), "bf16"), m))
  end)

  -- the dense mixtures (src/cuda/moe.cu): each layer built on the CPU, run forward
  -- and backward there, moved with :cuda() and run again on the same weights
  it("the dense MoE layers (MMoE, OMoE, TabularMoELayer, GatedFeatureFusion) match the CPU, forward and backward", function()
    if not need_device() then return end
    local function list(o) return moe.is_tensor(o) and { o } or o end
    local function check(layer, xs)
      if moe.is_tensor(xs) then xs = { xs } end
      moe.manual_seed(21)
      local first = layer(#xs == 1 and xs[1] or xs) -- builds the weights
      local probes = {}
      for i, o in ipairs(list(first)) do probes[i] = moe.randn(unpack(o:shape())) end
      local function run(dev)
        for _, p in ipairs(layer:parameters()) do p.grad = nil end
        local ins = {}
        for i, x in ipairs(xs) do
          ins[i] = x:to(dev):detach()
          ins[i]:requires_grad_()
        end
        local outs = list(layer(#ins == 1 and ins[1] or ins))
        local loss
        for i, o in ipairs(outs) do
          local s = (o * probes[i]:to(dev)):sum() + (o * o):sum()
          loss = loss and loss + s or s
        end
        loss:backward()
        local grads = {}
        for i, x in ipairs(ins) do grads[#grads + 1] = x.grad end
        for _, p in ipairs(layer:parameters()) do grads[#grads + 1] = p.grad end
        return outs, grads
      end
      local co, cg = run("cpu")
      layer:cuda()
      local go, gg = run("cuda")
      layer:cpu()
      assert.equal(#co, #go); assert.equal(#cg, #gg)
      for i = 1, #co do close(co[i]:detach(), go[i], 1e-5) end
      for i = 1, #cg do close(cg[i], gg[i], 1e-5) end
    end
    moe.manual_seed(20)
    local x = moe.randn(12, 7)
    check(nn.MMoE { units = 5, num_experts = 4, num_tasks = 2 }, x)                             -- one [B,U,E] GEMM
    check(nn.MMoE { units = 3, num_experts = 3, num_tasks = 2, expert_hidden_units = { 6 } }, x) -- [E,B,U] viewed [B,U,E]
    check(nn.OMoE { units = 4, num_experts = 5, num_tasks = 3 }, x)                             -- one gate, three tasks
    check(nn.MMoE { units = 4, num_experts = 3, num_tasks = 2, expert_activation = "tanh" }, x)
    check(nn.TabularMoELayer { num_experts = 4, expert_units = 40 }, x)                         -- U > 32: the warps loop
    check(nn.TabularMoELayer { num_experts = 3, expert_units = 5 }, x)
    check(nn.GatedFeatureFusion {}, { x, moe.randn(12, 7) })
  end)

  it("the mixtures' reductions and a weighted bincount give the same bits run to run (no float atomics)", function()
    if not need_device() then return end
    moe.manual_seed(22)
    local v, w = moe.randint(1, 9, { 5000 }):cuda(), moe.randn(5000):cuda()
    local h, g, go = moe.randn(6, 300, 4):cuda(), moe.randn(6, 4):cuda(), moe.randn(6, 300):cuda()
    local function once()
      local gl = g:detach()
      gl:requires_grad_()
      local loss = (moe.mixture(h, gl) * go):sum()
      loss:backward()
      return { moe.bincount(v, w):cpu():totable(), gl.grad:cpu():totable() }
    end
    local a = once()
    for _ = 1, 3 do assert.same(a, once()) end
  end)

  it("a model trained a step on the device saves weights that load on the CPU", function()
    if not need_device() then return end
    moe.manual_seed(13)
    local m = moe.Sequential { nn.Dense { units = 4, activation = "relu" }, nn.Dense { units = 1 }, input_shape = { 3 } }
    local x = moe.randn(8, 3)
    local ref = m:forward(x)
    m:cuda()
    close(ref:detach(), m:forward(x:cuda()), 1e-5)
    local path = os.tmpname()
    m:save(path)
    local back = moe.load(path)
    os.remove(path)
    close(ref:detach(), back:forward(x):detach():cuda(), 1e-5)
    assert.equal("cpu", back:parameters()[1]:device())
  end)

  -- the sparse layer (src/cuda/route.cu): the same weights and inputs on the CPU and on the device
  it("a full nn.MoeLayer matches the CPU: outputs, gradients of x and of every weight, router metrics", function()
    if not need_device() then return end
    local configs = {
      { "top-2 tokens choose, capacity factor 1.0", function()
        return nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2, router_z_loss_weight = 1e-3,
          load_balancing_loss_weight = 1e-2 } end },
      { "top-2 tokens choose, dropless", function()
        return nn.TokensChooseMaskedRouter { num_experts = 4, num_selected_experts = 2, router_z_loss_weight = 1e-3,
          load_balancing_loss_weight = 1e-2, batch_prioritized_routing = true } end, true },
      { "experts choose", function() return nn.ExpertsChooseMaskedRouter { num_experts = 4, router_z_loss_weight = 1e-3 } end },
    }
    for ci, c in ipairs(configs) do
      moe.manual_seed(20 + ci)
      local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = 4, d_ff = 6 }, router = c[2](),
        train_capacity_factor = 1.0, eval_capacity_factor = 1.0, dropless = c[3] or false }
      local x0 = moe.randn(3, 8, 5):double()
      layer(x0)                       -- built
      layer:double()
      -- weights large enough that the experts' outputs are far from zero
      moe.no_grad(function() for _, p in ipairs(layer:parameters()) do p:copy_(moe.randn(p:shape()):double() * 0.5) end end)
      local function run(dev)
        local x = x0:to(dev):detach()
        x:requires_grad_()
        local y = layer(x)
        local loss = (y * y):sum()
        for _, l in ipairs(layer:losses()) do loss = loss + l end
        loss:backward()
        local grads = { x.grad }
        for _, p in ipairs(layer:parameters()) do grads[#grads + 1] = p.grad; p.grad = nil end
        return y:detach(), grads, layer:metrics(), layer.last_plan
      end
      local y1, g1, m1, plan1 = run("cpu")
      layer:cuda()
      local y2, g2, m2, plan2 = run("cuda")
      layer:cpu()
      assert.equal("cpu", plan2.counts:device())
      assert.same(plan1.counts:totable(), plan2.counts:totable())
      close(plan1.token, plan2.token)
      close(y1, y2)
      assert.is_true(y1:abs():max():item() > 0.1, c[1])
      assert.equal(#g1, #g2)
      for i = 1, #g1 do close(g1[i], g2[i]) end
      local n = 0
      for k, v in pairs(m1) do
        assert.is_number(m2[k], k)
        assert.is_true(math.abs(v - m2[k]) <= 1e-5 * (1 + math.abs(v)), ("%s: metric %s %g vs %g"):format(c[1], k, v, m2[k]))
        n = n + 1
      end
      assert.is_true(n >= 6)
    end
  end)

  it("the grouped GEMM: one grouped cuBLAS call and the per-expert loop agree; bf16 as the CPU's bf16", function()
    if not need_device() then return end
    local ffi = require "ffi"
    pcall(ffi.cdef, "int setenv(const char *, const char *, int); int unsetenv(const char *);")
    moe.manual_seed(15)
    local x, w, b, g = moe.randn(9, 6), moe.randn(3, 6, 4), moe.randn(3, 4), moe.randn(9, 4)
    local counts = moe.tensor({ 4, 0, 5 }, { dtype = "int64" })
    local function run(dev, prec)
      local X, W, B = x:to(dev):detach(), w:to(dev):detach(), b:to(dev):detach()
      X:requires_grad_(); W:requires_grad_(); B:requires_grad_()
      local y = moe.grouped_matmul(X, W, B, counts, prec)
      y:backward(g:to(dev))
      return { y:detach(), X.grad, W.grad, B.grad }
    end
    local ref = run("cpu")
    local outs = {}
    for _, mode in ipairs { "grouped", "loop" } do
      ffi.C.setenv("MOE_GROUPED", mode, 1)
      local ok, r = pcall(run, "cuda")
      ffi.C.unsetenv("MOE_GROUPED")
      assert.is_true(ok, r)
      outs[mode] = r
      for i = 1, 4 do close(ref[i], r[i], 1e-5) end
    end
    for i = 1, 4 do close(outs.grouped[i]:cpu(), outs.loop[i], 1e-6) end
    assert.same({ 0 }, { outs.loop[3][2]:abs():max():item() }) -- the expert without rows: a zero gradient
    local r16, c16 = run("cpu", "bf16"), run("cuda", "bf16")
    for i = 1, 4 do close(r16[i], c16[i], 1e-4) end
    assert.is_true((r16[1] - ref[1]):abs():max():item() > 0)       -- bf16 is not fp32
  end)

  it("an op without a CUDA kernel is a clean error naming it, not a host loop over device memory", function()
    if not need_device() then return end
    local x = moe.randn(3, 4):cuda()
    x:requires_grad_()
    assert.matches("cumprod backward: not on this backend %(cuda%)", H.error_of(function() x:cumprod(2):sum():backward() end))
  end)

  it("an optimizer steps device parameters on the device; a state or gradient on the CPU is an error naming both", function()
    if not need_device() then return end
    local w = moe.tensor({ 1, 2, 3 }):cuda()
    w:requires_grad_()
    w.grad = moe.ones(3):cuda()
    local opt = moe.optim.SGD { lr = 0.1, momentum = 0.9 }
    assert.is_nil(opt:step { w })
    assert.equal("cuda", w:device())
    assert.equal("cuda", opt.state[w][1]:device()) -- the momentum buffer lives by its parameter
    local function near_all(want, got)
      for i = 1, #want do assert.is_true(math.abs(want[i] - got[i]) <= 1e-6, ("element %d: %g"):format(i, got[i])) end
    end
    near_all({ 0.9, 1.9, 2.9 }, w:detach():cpu():totable())
    w.grad = moe.ones(3) -- a gradient on the CPU
    local err = H.error_of(function() opt:step { w } end)
    assert.matches("SGD.step: .*cuda.*cpu", err)
    near_all({ 0.9, 1.9, 2.9 }, w:detach():cpu():totable()) -- nothing was written
  end)

  it("a model trained with each optimizer on the device keeps the CPU's weights; the norm stays on the device", function()
    if not need_device() then return end
    local configs = {
      { "SGD", { lr = 0.1, momentum = 0.9, nesterov = true } },
      { "SGD", { lr = 0.1, momentum = 0.5, dampening = 0.2, weight_decay = 0.01, clip_value = 0.05 } },
      { "Adam", { lr = 0.01, clip_norm = 0.1 } },
      { "AdamW", { lr = 0.01, weight_decay = 0.1 } },
      { "RMSprop", { lr = 0.01, momentum = 0.5 } },
      { "RMSprop", { lr = 0.01 } },
      { "Adagrad", { lr = 0.1, lr_decay = 0.01, clip_norm = 0.2 } },
    }
    moe.manual_seed(29)
    local x, y = moe.randn(16, 3), moe.randn(16, 1)
    local xg, yg = x:cuda(), y:cuda()
    for _, c in ipairs(configs) do
      local function model()
        moe.manual_seed(31)
        return moe.Sequential { nn.Dense { units = 8, activation = "tanh" }, nn.Dense { units = 1 }, input_shape = { 3 } }
      end
      local m, g = model(), model():cuda()
      local om, og = moe.optim[c[1]](c[2]), moe.optim[c[1]](c[2])
      for _ = 1, 4 do
        local norms = {}
        for k, run in ipairs { { m, om, x, y }, { g, og, xg, yg } } do
          local mod, opt, xx, yy = unpack(run)
          local ps = mod:parameters()
          opt:zero_grad(ps)
          local loss = (mod:forward(xx) - yy):pow(2):mean()
          loss:backward()
          norms[k] = opt:step(ps)
        end
        if c[2].clip_norm then -- a number on the CPU; on the device a 0-dim float64 tensor there, read when wanted
          assert.is_number(norms[1])
          assert.equal("cuda", norms[2]:device())
          assert.equal(0, norms[2]:dim())
          assert.is_true(math.abs(norms[1] - norms[2]:item()) <= 1e-5 * norms[1], c[1] .. ": the norms differ")
        else
          assert.is_nil(norms[1]); assert.is_nil(norms[2])
        end
      end
      local pm, pg = m:parameters(), g:parameters()
      for i = 1, #pm do close(pm[i]:detach(), pg[i], 1e-5) end
    end
  end)

  it("gradcheck probes device tensors (get_flat/set_flat copy one element each way)", function()
    if not need_device() then return end
    moe.manual_seed(37)
    local x, w = moe.randn(3, 4):cuda(), moe.randn(3, 4):cuda()
    assert.equal(x:cpu()[2][3], moe.core.get_flat(x, 7))
    moe.core.set_flat(x, 7, 0.25)
    assert.equal(0.25, x:cpu()[2][3])
    assert.equal("cuda", x:device())
    assert.is_true(moe.testing.gradcheck(function(a, b) return (a:tanh() * b):sum() end, { x, w }))
    assert.matches("out of range", H.error_of(function() moe.core.get_flat(x, 13) end))
  end)
end)

describe("moe.cuda: sorting, full reductions, engine-made indices, deterministic scatters", function()
  local function need_device() return H.need_device(pending) end
  local function ix(v) return moe.tensor(v, { dtype = "int64" }) end
  local function bits(t) return t:cpu():totable() end -- (floats to Lua doubles: exact)

  it("sorts rows of every length stably, NaN last ascending and first descending, as the CPU", function()
    if not need_device() then return end
    moe.manual_seed(3)
    for _, K in ipairs { 3, 16, 17, 1000, 2048, 2049, 6000 } do
      local x = moe.randint(0, 5, { 2, K }):float()
      x[{ 1, 1 }] = 0 / 0; x[{ 2, K }] = 0 / 0
      for _, desc in ipairs { false, true } do
        local _, ci = x:sort(2, desc)
        local _, gi = x:cuda():sort(2, desc)
        assert.same(ci:totable(), gi:cpu():totable(), ("K = %d, descending %s"):format(K, tostring(desc)))
        -- stable: equal values keep their order (checked on the device's result itself)
        local v, p = x:totable(), gi:cpu():totable()
        for j = 2, K do
          local a, b = v[1][p[1][j - 1]], v[1][p[1][j]]
          if a == b then assert.is_true(p[1][j - 1] < p[1][j]) end
        end
        assert.is_true(v[1][p[1][desc and 1 or K]] ~= v[1][p[1][desc and 1 or K]]) -- the NaN's place
      end
      local _, ct = x:topk(math.min(K, 7), 2)
      local _, gt = x:cuda():topk(math.min(K, 7), 2)
      assert.same(ct:totable(), gt:cpu():totable())
    end
  end)

  it("full reductions of 1e5 elements run over many blocks and match the CPU", function()
    if not need_device() then return end
    moe.manual_seed(4)
    local x = moe.randn(100000)
    local xc = x:cuda()
    for _, op in ipairs { "sum", "mean", "max", "min", "logsumexp" } do
      assert.near(x[op](x):item(), xc[op](xc):cpu():item(), 1e-5 * (1 + math.abs(x[op](x):item())), op)
    end
    assert.near(x:var(1, { correction = 0 }):item(), xc:var(1, { correction = 0 }):cpu():item(), 1e-6)
    assert.near(x:std(1):item(), xc:std(1):cpu():item(), 1e-6)
    assert.equal(x:argmax():item(), xc:argmax():cpu():item())
    assert.equal(x:argmin():item(), xc:argmin():cpu():item())
    -- ties: the first index, across chunks; NaN wins
    local t = moe.zeros(100000); t[{ 70000 }] = 5; t[{ 90000 }] = 5
    assert.equal(70000, t:cuda():argmax():cpu():item())
    t[{ 80000 }] = 0 / 0
    assert.equal(80000, t:cuda():argmax():cpu():item())
    assert.is_true(t:cuda():max():cpu():item() ~= t:cuda():max():cpu():item())
    local n = moe.randint(-9, 9, { 100000 })
    assert.equal(n:sum():item(), n:cuda():sum():cpu():item())
    assert.is_true(moe.ones(100000):cuda():gt(0):all():cpu():item())
    local one = moe.zeros(100000); one[{ 99999 }] = 1
    assert.is_true(one:cuda():gt(0):any():cpu():item())
    assert.is_false(one:cuda():gt(0):all():cpu():item())
    -- the same bits every run (fixed trees, no atomics)
    assert.equal(xc:sum():cpu():item(), xc:sum():cpu():item())
  end)

  it("an index the engine made (topk, argmax) skips the range check; a user's index is checked", function()
    for _, dev in ipairs { "cpu", "cuda" } do
      if dev == "cuda" and not moe.cuda.is_available() then break end
      local x = moe.randn(50, 4):to(dev)
      local _, idx = moe.randn(50):to(dev):topk(10)
      local c0 = moe.core.index_checks()
      local a = x:index_select(1, idx)
      assert.equal(c0, moe.core.index_checks(), dev .. ": topk's index was checked")
      assert.same(x:cpu():index_select(1, idx:cpu()):totable(), a:cpu():totable())
      c0 = moe.core.index_checks()
      local am = moe.randn(4, 50):to(dev):argmax(2)
      x:index_select(1, am)
      assert.equal(c0, moe.core.index_checks(), dev .. ": argmax's index was checked")
      -- index_select's backward (index_add) reuses the index: no check either
      local w = moe.randn(50, 4):to(dev):requires_grad_()
      w:index_select(1, idx):sum():backward()
      assert.equal(c0, moe.core.index_checks())
      -- the user's index: checked, and one out of range is the clean error
      x:index_select(1, ix({ 3, 1, 50 }):to(dev))
      assert.equal(c0 + 1, moe.core.index_checks())
      assert.matches("index_select: index 51 out of range %[1, 50%]",
        H.error_of(x.index_select, x, 1, ix({ 2, 51 }):to(dev)))
      -- a range that does not fit the dim is checked: topk of 50 into a dim of 10
      local small = moe.randn(10, 4):to(dev)
      local c1 = moe.core.index_checks()
      local ok = pcall(small.index_select, small, 1, idx)
      assert.equal(c1 + 1, moe.core.index_checks())
      assert.equal(idx:cpu():max():item() <= 10, ok)
      -- a write into the engine's index drops its mark: checked again
      idx[1] = 99
      assert.matches("index 99 out of range", H.error_of(x.index_select, x, 1, idx))
    end
  end)

  it("arange's int64 ranges, values gathered from a marked index and moves between devices keep the mark", function()
    for _, dev in ipairs { "cpu", "cuda" } do
      if dev == "cuda" and not moe.cuda.is_available() then break end
      local x = moe.randn(40, 3):to(dev)
      local r = moe.arange(1, 41, { dtype = "int64", device = dev })
      local _, pick = moe.randn(2, 20):to(dev):topk(5, 2)
      local g = r:view(2, 20):gather(2, pick) -- values of r: in [1, 40]
      local moved = dev == "cuda" and r:cpu() or (moe.cuda.is_available() and r:cuda() or nil)
      local c0 = moe.core.index_checks()
      local a, b = x:index_select(1, r), x:index_select(1, g:reshape(-1))
      assert.equal(c0, moe.core.index_checks(), dev)
      assert.same(x:cpu():totable(), a:cpu():totable())
      local want = x:cpu():index_select(1, (pick:cpu() + moe.tensor({ { 0 }, { 20 } }, { dtype = "int64" })):reshape(-1))
      assert.same(want:totable(), b:cpu():totable())
      c0 = moe.core.index_checks() -- (want's index was the spec's own: checked)
      if moved then
        x:to(moved:device()):index_select(1, moved)
        assert.equal(c0, moe.core.index_checks(), dev .. " moved")
      end
      -- arithmetic on a marked index drops the mark: checked
      x:index_select(1, r - 0)
      assert.equal(c0 + 1, moe.core.index_checks())
      -- a fractional step is not marked (its rounding is the conversion's)
      moe.arange(0, 3, 0.5, { dtype = "int64", device = dev })
      x:index_select(1, moe.arange(1, 3, 0.5, { dtype = "int64", device = dev }))
      assert.equal(c0 + 2, moe.core.index_checks())
    end
  end)

  it("GEMMs past cuBLAS's 32-bit sizes are split, or refused with the dimension named", function()
    if not need_device() then return end
    moe.manual_seed(5)
    local old = moe.core.cuda_gemm_limit(16) -- (INT32_MAX normally: lowered to reach both paths)
    local ok, err = pcall(function()
      local function near(c, g) return (c - g:cpu()):abs():max():item() <= 1e-4 * (1 + c:abs():max():item()) end
      local a, b = moe.randn(40, 12), moe.randn(12, 9) -- M over the limit: pieces of 16 rows
      assert.is_true(near(moe.matmul(a, b), moe.matmul(a:cuda(), b:cuda())))
      -- K over the limit (A a transposed view, so its leading dim is M): pieces of K that accumulate
      local at, bk = moe.randn(37, 9), moe.randn(37, 9)
      assert.is_true(near(moe.matmul(at:transpose(1, 2), bk), moe.matmul(at:cuda():transpose(1, 2), bk:cuda())))
      local a3, b3 = moe.randn(20, 3, 5), moe.randn(20, 5, 4) -- batch over the limit
      assert.is_true(near(moe.matmul(a3, b3), moe.matmul(a3:cuda(), b3:cuda())))
      -- N is C's leading dim too: it cannot be cut
      assert.matches("matmul: .*dimension N = 20 exceeds cuBLAS's 32%-bit limit",
        H.error_of(moe.matmul, moe.randn(3, 5):cuda(), moe.randn(5, 20):cuda()))
      -- a leading dim over the limit (a narrowed view's row stride)
      assert.matches("matmul: .*dimension ld[ab] = 30 exceeds cuBLAS's 32%-bit limit",
        H.error_of(moe.matmul, moe.randn(3, 30):cuda():narrow(2, 1, 5), moe.randn(5, 4):cuda()))
    end)
    moe.core.cuda_gemm_limit(old)
    assert(ok, err)
    assert.equal(old, moe.core.cuda_gemm_limit())
  end)

  it("moe.set_deterministic: index_add and scatter_add with many duplicates give the CPU's bits, every run", function()
    assert.is_false(moe.get_deterministic())
    assert.is_false(moe.set_deterministic(true))
    assert.is_true(moe.get_deterministic())
    moe.set_deterministic(false)
    if not need_device() then return end
    moe.manual_seed(6)
    local idx = moe.randint(1, 7, { 5000 })
    local src = moe.randn(5000, 3) * 100 -- float32: the sum's bits depend on its order
    local sidx = moe.randint(1, 9, { 3, 4000 })
    local ssrc = moe.randn(3, 4000) * 100
    local function runs()
      return moe.zeros(7, 3):cuda():index_add(1, idx:cuda(), src:cuda()),
        moe.zeros(3, 9):cuda():scatter_add(2, sidx:cuda(), ssrc:cuda())
    end
    local cpu_ia, cpu_sa = moe.zeros(7, 3):index_add(1, idx, src), moe.zeros(3, 9):scatter_add(2, sidx, ssrc)
    moe.set_deterministic(true)
    local ok, err = pcall(function()
      local ia1, sa1 = runs()
      local ia2, sa2 = runs()
      assert.same(bits(ia1), bits(ia2))
      assert.same(bits(sa1), bits(sa2))
      assert.same(bits(cpu_ia), bits(ia1)) -- the CPU adds in source order too
      assert.same(bits(cpu_sa), bits(sa1))
      -- the backward of index_select and gather (index_add, scatter_add) too
      local w = moe.randn(7, 3)
      local wc = w:cuda():requires_grad_()
      w:requires_grad_()
      local g = moe.randn(5000, 3)
      w:index_select(1, idx):backward(g)
      wc:index_select(1, idx:cuda()):backward(g:cuda())
      assert.same(bits(w.grad), bits(wc.grad))
    end)
    moe.set_deterministic(false)
    assert(ok, err)
    -- without the mode: atomics, the same sums within rounding
    local ia, sa = runs()
    assert.is_true((ia:cpu() - cpu_ia):abs():max():item() <= 1e-3 * cpu_ia:abs():max():item())
    assert.is_true((sa:cpu() - cpu_sa):abs():max():item() <= 1e-3 * cpu_sa:abs():max():item())
  end)
end)
