-- nn.MoeLayer{expert_parallel = true} (lua/moe/sparse.lua) and the
-- differentiable all_to_all under it (src/dist/dist.c), checked against one
-- process: every rank script also builds the plain layer from the same seed
-- and runs it on every rank's inputs concatenated (no collective involved),
-- which is what one process at batch N*b computes. The 2-rank scripts run
-- under mpirun (a timeout turns a hang into a failure), as
-- spec/distributed_spec.lua does; without mpirun or MPI they are skipped and
-- say why. The 1-rank world runs in this process.
local moe = require "moe"
local H = require "helpers"
local nn = moe.nn
local dist = moe.distributed
local skip_reason = H.mpi_skip_reason()
local runner = H.mpi_runner(120)
local tmp = runner.dir()

-- runs src on np ranks: {rc, out, err, script, lines = {[rank] = {stdout lines}}}
-- (opts.file: run that script, with opts.args, instead of src)
local function mpirun(np, src, opts)
  opts = opts or {}
  local r = runner.run(np, src, opts)
  local rc = r.rc
  assert(rc == 0, ("mpirun -np %d exited with %s\nstdout:\n%s\nstderr:\n%s"):format(np, tostring(rc), r.out, r.err))
  if not opts.file then
    for rk = 0, np - 1 do assert(r.lines[rk], "no output from rank " .. rk .. ":\n" .. r.out .. r.err) end
  end
  return r
end

-- "key|value|..." lines of one rank -> key -> {values...}
local function keyed(lines)
  local t = {}
  for _, l in ipairs(lines or {}) do
    local parts = {}
    for p in (l .. "|"):gmatch("([^|]*)|") do parts[#parts + 1] = p end
    t[parts[1]] = { unpack(parts, 2) }
  end
  return t
end

local function mpi_it(name, fn)
  it(name, function()
    if skip_reason then pending(skip_reason) return end
    fn()
  end)
end

-- what every script (and this process) shares: the layer, built from a seed
local COMMON = [[
local moe = require "moe"
local nn = moe.nn
local d = moe.distributed
local rank, W = d.rank(), d.world_size()
io.stdout:setvbuf("line")
local function say(...) print(table.concat({ ... }, "|")) end
local function maxdiff(a, b)
  assert(moe.is_same_size(a, b), table.concat(a:shape(), "x") .. " vs " .. table.concat(b:shape(), "x"))
  if a:numel() == 0 then return 0 end
  return (a:double() - b:double()):abs():max():item()
end
local E, H, D, S = 4, 6, 5, 4
-- the layer: tokens-choose top-2 (with both auxiliary losses) or experts-choose
local function layer(ep, kind, opts)
  opts = opts or {}
  moe.manual_seed(opts.seed or 11)
  local router = kind == "experts"
    and nn.ExpertsChooseMaskedRouter { num_experts = E, router_z_loss_weight = 0.1 }
    or nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = opts.k or 2, router_z_loss_weight = 0.1,
      load_balancing_loss_weight = 0.1 }
  return nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = D }, router = router,
    dropless = opts.dropless ~= false, train_capacity_factor = opts.cf or 1.0, expert_parallel = ep }
end
-- the loss of a rank: the mean over its rows, so that the mean over the ranks
-- is the 1-process loss over all rows
local function loss_of(m, y, c)
  local l = (y * c):mean()
  for _, a in ipairs(m:losses()) do l = l + a end
  return l
end
]]

describe("nn.MoeLayer expert_parallel", function()
  teardown(runner.cleanup)

  describe("in a 1-rank world", function()
    local env = setmetatable({}, { __index = _G })
    local defs = assert(loadstring(COMMON .. "\nreturn layer, loss_of, maxdiff, E, H, D, S"))
    setfenv(defs, env)
    local layer, loss_of, maxdiff, E, H, D, S = defs()

    for _, kind in ipairs { "tokens", "experts" } do
      it(kind .. "-choose: gives exactly the plain layer's output and gradients", function()
        moe.manual_seed(3)
        local x, c = moe.randn(3, S, H), moe.randn(3, S, H)
        local res = {}
        for i, ep in ipairs { false, true } do
          local m = layer(ep, kind, { dropless = kind == "tokens" })
          local xi = x:clone()
          xi.requires_grad = true
          local y = m(xi)
          loss_of(m, y, c):backward()
          res[i] = { y = y:detach(), dx = xi.grad, w = m:get_weights(), g = {} }
          for n, p in m:named_parameters() do res[i].g[n:gsub("^[^/]*/", "")] = p.grad end
          res[i].metrics = m:metrics()
        end
        assert.are.equal(0, maxdiff(res[1].y, res[2].y))
        assert.are.equal(0, maxdiff(res[1].dx, res[2].dx))
        for i, w in ipairs(res[1].w) do assert.are.equal(0, maxdiff(w, res[2].w[i])) end
        local n = 0
        for k, g in pairs(res[1].g) do
          assert.are.equal(0, maxdiff(g, res[2].g[k]), k)
          n = n + 1
        end
        assert.are.equal(6, n)
        -- the load metrics: every routed row is processed by rank 0
        local routed = 0
        for e = 1, E do routed = routed + res[2].metrics["expert_" .. e .. "_tokens"] end
        assert.are.equal(routed, res[2].metrics.rank_0_tokens)
        assert.are.equal(1, res[2].metrics.rank_imbalance)
        assert.is_nil(res[1].metrics.rank_0_tokens)
      end)
    end

    it("on a CUDA device: the rows travel through host memory, the results are the host's", function()
      if not require("helpers").need_device(pending) then return end
      moe.manual_seed(3)
      local x, c = moe.randn(3, S, H), moe.randn(3, S, H)
      local res = {}
      for i, dev in ipairs { "cpu", "cuda" } do
        local m = layer(true, "tokens")
        m(x:narrow(1, 1, 1)) -- (built on the host from the seed, then moved)
        m:to(dev)
        local xi = x:to(dev):clone()
        xi.requires_grad = true
        local y = m(xi)
        loss_of(m, y, c:to(dev)):backward()
        res[i] = { y = y:detach():to("cpu"), dx = xi.grad:to("cpu"), g = m.experts.output_kernel.grad:to("cpu"),
          r = m.router.kernel.grad:to("cpu") }
        assert.are.equal(dev, m.experts.output_kernel:device())
      end
      assert.is_true(maxdiff(res[1].y, res[2].y) < 1e-5)
      assert.is_true(maxdiff(res[1].dx, res[2].dx) < 1e-5)
      assert.is_true(maxdiff(res[1].g, res[2].g) < 1e-5)
      assert.is_true(maxdiff(res[1].r, res[2].r) < 1e-5)
    end)

    it("all_to_all is differentiable: the gradient comes back to the rows sent; zero rows too", function()
      for _, n in ipairs { 3, 0 } do
        local t = moe.randn(n, 2)
        t.requires_grad = true
        local y, recv = dist.all_to_all(t, { n })
        assert.are.same({ n }, recv)
        assert.is_true(y.requires_grad)
        local c = moe.randn(n, 2)
        ;(y * c):sum():backward()
        assert.are.equal(0, maxdiff(t.grad, c))
      end
      moe.no_grad(function()
        local t = moe.randn(2, 2)
        t.requires_grad = true
        assert.is_false(dist.all_to_all(t, { 2 }).requires_grad)
      end)
      assert.is_false(dist.all_to_all(moe.randn(2, 2), { 2 }).requires_grad)
    end)

    it("no token kept (capacity 0): zeros out, and backward still runs", function()
      local m = layer(true, "tokens", { dropless = false, cf = 0.01 })
      local x = moe.randn(2, S, H)
      x.requires_grad = true
      local y = m(x)
      assert.are.equal(0, m.last_plan.token:numel())
      assert.are.equal(0, y:abs():sum():item())
      loss_of(m, y, moe.ones(2, S, H)):backward()
      assert.are.equal(0, m.experts.intermediate_kernel.grad:abs():sum():item())
      assert.is_true(m.router.kernel.grad:abs():sum():item() > 0) -- (the z-loss and load-balancing loss)
    end)

    it("expert_parallel_params lists the expert shards only; expert_shards their slice", function()
      local m = layer(true, "tokens")
      m(moe.randn(1, S, H))
      local own = nn.expert_parallel_params(m)
      local n = 0
      for t, v in pairs(own) do n = n + 1; assert.are.equal(true, v) end
      assert.are.equal(4, n)
      assert.is_true(own[m.experts.intermediate_kernel] and own[m.experts.output_bias])
      assert.is_nil(own[m.router.kernel])
      local sh = nn.expert_shards(m)[m.experts.output_kernel]
      assert.are.same({ rank = 0, world = 1, lo = 1, n = E }, sh)
      assert.are.same({}, nn.expert_parallel_params(layer(false, "tokens")))
    end)

    it("refuses experts that are built already, and a non-boolean option", function()
      local fe = nn.FeedForwardExperts { num_experts = E, d_ff = D }
      fe(moe.randn(E, 2, H))
      local ok, e = pcall(nn.MoeLayer, { experts = fe, router = nn.TokensChooseMaskedRouter { num_experts = E },
        expert_parallel = true })
      assert.is_false(ok)
      assert.is_truthy(e:find("MoeLayer: expert_parallel needs experts that are not built yet", 1, true), e)
      ok, e = pcall(nn.MoeLayer, { experts = nn.FeedForwardExperts { num_experts = E, d_ff = D },
        router = nn.TokensChooseMaskedRouter { num_experts = E }, expert_parallel = "yes" })
      assert.is_false(ok)
      assert.is_truthy(e:find('MoeLayer: expert_parallel must be true or false, got "yes" (a string)', 1, true), e)
    end)

    it("checkpoints: an expert-parallel model loads as a plain one and back (moe.load's expert_parallel)", function()
      local inp = moe.Input { shape = { S, H } }
      local m = moe.Model { inputs = inp, outputs = layer(true, "tokens")(inp) }
      m:compile { optimizer = moe.optim.Adam { lr = 0.01 }, loss = "mse" }
      local x = moe.randn(2, S, H)
      m:train_on_batch(x, moe.randn(2, S, H))
      m:eval()
      local y = m(x)
      local path = tmp .. "/one.moe"
      m:save(path)
      for _, ep in ipairs { true, false } do
        local back = moe.load(path, { expert_parallel = ep })
        back:eval()
        assert.are.equal(0, maxdiff(y, back(x)))
        local l
        for _, e in ipairs(back:modules()) do if e[2].class_name == "MoeLayer" then l = e[2] end end
        assert.are.equal(ep, l.expert_parallel)
        assert.are.equal(ep and 1 or nil, rawget(l.experts, "_ep") and l.experts._ep.world)
      end
      local e = select(2, pcall(moe.load, path, { expert_parallel = 1 }))
      assert.is_truthy(e:find("load: option 'expert_parallel' must be true or false, got 1", 1, true), e)
    end)
  end)

  describe("at 2 ranks", function()
    -- the layer at 2 ranks against the plain layer on the concatenated inputs
    local EQUIV = COMMON .. [[
local B = 3 -- sequences per rank
for _, case in ipairs { { "tokens", {} }, { "experts", {} }, { "top1", { k = 1 } }, { "capacity", { dropless = false, cf = 1.0 } } } do
  local name, o = case[1], case[2]
  local kind = name == "experts" and "experts" or "tokens"
  moe.manual_seed(5)
  local X, C = moe.randn(W * B, S, H), moe.randn(W * B, S, H) -- the same on every rank
  -- one process, batch W*B
  local ref = layer(false, kind, o)
  local xr = X:clone(); xr.requires_grad = true
  loss_of(ref, ref(xr), C):backward()
  -- this rank's slice, expert parallel
  local m = layer(true, kind, o)
  local x = X:narrow(1, rank * B + 1, B):clone(); x.requires_grad = true
  local y = m(x)
  loss_of(m, y, C:narrow(1, rank * B + 1, B)):backward()
  local yr = ref(X):detach() -- (eval-free: no jitter, the same routing)
  say(name .. ".forward", maxdiff(y, yr:narrow(1, rank * B + 1, B)))
  say(name .. ".dx", maxdiff(x.grad / W, xr.grad:narrow(1, rank * B + 1, B)))
  -- the weights each rank starts from: whole, they are the plain layer's
  local wr, we = ref:get_weights(), m:get_weights()
  local wd = 0
  for i = 1, #wr do wd = math.max(wd, maxdiff(wr[i], we[i])) end
  say(name .. ".init", wd)
  local sh = nn.expert_shards(m)
  local gd, ed, n = 0, 0, 0
  local refg = {}
  for k, p in ref:named_parameters() do refg[k:gsub("^[^/]*/", "")] = p.grad end
  for k, p in m:named_parameters() do
    local g, rg = p.grad, refg[k:gsub("^[^/]*/", "")]
    if sh[p] then
      ed = math.max(ed, maxdiff(g / W, rg:narrow(1, sh[p].lo, sh[p].n)))
    else
      gd = math.max(gd, maxdiff(d.all_reduce(g:clone(), "mean"), rg))
    end
    n = n + 1
  end
  say(name .. ".grads", n, gd, ed)
  local mt = m:metrics()
  say(name .. ".metrics", mt.rank_0_tokens, mt.rank_1_tokens, mt.rank_imbalance)
  local routed = ref.last_plan.counts:totable()
  say(name .. ".load", routed[1] + routed[2], routed[3] + routed[4])
end
]]
    local run
    local function get()
      run = run or mpirun(2, EQUIV)
      return run
    end

    for _, case in ipairs { "tokens", "experts", "top1", "capacity" } do
      mpi_it(case .. ": forward and every gradient equal one process on the concatenated inputs", function()
        local r = get()
        for rk = 0, 1 do
          local k = keyed(r.lines[rk])
          assert.is_true(tonumber(k[case .. ".forward"][1]) < 1e-6, r.out)
          assert.is_true(tonumber(k[case .. ".dx"][1]) < 1e-6, r.out)
          assert.are.equal(0, tonumber(k[case .. ".init"][1]), r.out)
          local g = k[case .. ".grads"]
          assert.are.equal(6, tonumber(g[1]))
          assert.is_true(tonumber(g[2]) < 1e-6, r.out)
          assert.is_true(tonumber(g[3]) < 1e-6, r.out)
          -- the per-rank load is the whole batch's: what each rank's two experts got in the 1-process run
          local mt, load = k[case .. ".metrics"], k[case .. ".load"]
          assert.are.equal(load[1], mt[1])
          assert.are.equal(load[2], mt[2])
          local l0, l1 = tonumber(load[1]), tonumber(load[2])
          assert.is_true(math.abs(tonumber(mt[3]) - math.max(l0, l1) / ((l0 + l1) / 2)) < 1e-12)
        end
      end)
    end

    mpi_it("a few training steps give the losses and weights of one process at batch 2b", function()
      local r = mpirun(2, COMMON .. [[
local B = 2
moe.manual_seed(9)
local X, C = moe.randn(4, W * B, S, H), moe.randn(4, W * B, S, H)
-- (each built at once: its weights are drawn from its own seed)
local ref = layer(false, "tokens"); ref(X[1])
local m = layer(true, "tokens"); m(X[1]:narrow(1, rank * B + 1, B))
local oref, om = moe.optim.Adam { lr = 0.05 }, moe.optim.Adam { lr = 0.05 }
local own = nn.expert_parallel_params(m)
for step = 1, 4 do
  ref:zero_grad(); m:zero_grad()
  local lr = loss_of(ref, ref(X[step]), C[step])
  lr:backward()
  oref:step(ref:parameters())
  local l = loss_of(m, m(X[step]:narrow(1, rank * B + 1, B)), C[step]:narrow(1, rank * B + 1, B))
  l:backward()
  for _, p in ipairs(m:parameters()) do
    if own[p] then p.grad = p.grad / W else p.grad = d.all_reduce(p.grad, "mean") end
  end
  om:step(m:parameters())
  local gl = d.all_reduce(moe.tensor({ l:item() }, { dtype = "float64" }), "mean"):item()
  say("loss" .. step, ("%.9g"):format(lr:item()), ("%.9g"):format(gl))
end
local wr, we = ref:get_weights(), m:get_weights()
local wd = 0
for i = 1, #wr do wd = math.max(wd, maxdiff(wr[i], we[i])) end
say("weights", wd)
-- set_weights takes whole experts and keeps this rank's slice
local m3 = layer(true, "tokens", { seed = 99 }); m3(X[1]:narrow(1, rank * B + 1, B))
m3:set_weights(wr)
local sd, own3 = 0, 0
for i, w in ipairs(m3:get_weights()) do sd = math.max(sd, maxdiff(w, wr[i])) end
for _ in pairs(nn.expert_parallel_params(m3)) do own3 = own3 + 1 end
say("set", sd, m3.experts.intermediate_kernel:size(1), own3)
]])
      for rk = 0, 1 do
        local k = keyed(r.lines[rk])
        for step = 1, 4 do
          local l = k["loss" .. step]
          assert.is_true(math.abs(tonumber(l[1]) - tonumber(l[2])) < 1e-5, r.out)
        end
        assert.is_true(tonumber(k.weights[1]) < 1e-5, r.out)
        assert.are.same({ "0", "2", "4" }, k.set)
      end
    end)

    mpi_it("one rank's experts get no tokens, one rank sends none: the same results, zero gradients there", function()
      local r = mpirun(2, COMMON .. [[
moe.manual_seed(4)
local X, Cc = moe.randn(4, S, H), moe.randn(4, S, H)
local function force(m) -- every token to expert 1 (rank 0's)
  moe.no_grad(function()
    m.router.kernel:copy_(moe.zeros(H, E))
    m.router.bias:copy_(moe.tensor { 10, 0, 0, 0 })
  end)
end
local ref = layer(false, "top1", { k = 1 }); ref(X)
local m = layer(true, "top1", { k = 1 }); m(X:narrow(1, rank * 2 + 1, 2))
force(ref); force(m)
ref:zero_grad(); m:zero_grad()
local xr = X:clone(); xr.requires_grad = true
loss_of(ref, ref(xr), Cc):backward()
local x = X:narrow(1, rank * 2 + 1, 2):clone(); x.requires_grad = true
local y = m(x)
loss_of(m, y, Cc:narrow(1, rank * 2 + 1, 2)):backward()
say("forward", maxdiff(y, ref(X):detach():narrow(1, rank * 2 + 1, 2)))
say("dx", maxdiff(x.grad / W, xr.grad:narrow(1, rank * 2 + 1, 2)))
local mt = m:metrics()
say("load", mt.rank_0_tokens, mt.rank_1_tokens, mt.rank_imbalance)
local sh = nn.expert_shards(m)
local g = m.experts.intermediate_kernel.grad
say("egrad", maxdiff(g / W, ref.experts.intermediate_kernel.grad:narrow(1, sh[m.experts.intermediate_kernel].lo, 2)),
  g:abs():sum():item())
]])
      for rk = 0, 1 do
        local k = keyed(r.lines[rk])
        assert.is_true(tonumber(k.forward[1]) < 1e-6, r.out)
        assert.is_true(tonumber(k.dx[1]) < 1e-6, r.out)
        assert.are.same({ "16", "0", "2" }, k.load) -- (4 sequences of 4 tokens, all to rank 0's expert 1)
        assert.is_true(tonumber(k.egrad[1]) < 1e-6, r.out)
        if rk == 1 then assert.are.equal(0, tonumber(k.egrad[2])) else assert.is_true(tonumber(k.egrad[2]) > 0) end
      end
    end)

    mpi_it("a rank with an empty batch still takes part: the other's results are one process's", function()
      local r = mpirun(2, COMMON .. [[
moe.manual_seed(6)
local X, Cc = moe.randn(3, S, H), moe.randn(3, S, H)
local ref = layer(false, "tokens"); ref(X)
local m = layer(true, "tokens"); m(X:narrow(1, 1, 1))
local xr = X:clone(); xr.requires_grad = true
ref:zero_grad(); m:zero_grad()
local yr = ref(xr)
;(yr * Cc):sum():backward() -- (sums, not means: rank 1 adds nothing)
local x = (rank == 0 and X or X:narrow(1, 1, 0)):clone(); x.requires_grad = true
local y = m(x)
;(y * (rank == 0 and Cc or Cc:narrow(1, 1, 0))):sum():backward()
say("forward", maxdiff(y, rank == 0 and yr:detach() or yr:detach():narrow(1, 1, 0)), y:size(1))
local sh = nn.expert_shards(m)
local k = m.experts.output_kernel
say("egrad", maxdiff(k.grad, ref.experts.output_kernel.grad:narrow(1, sh[k].lo, sh[k].n)))
say("rgrad", maxdiff(d.all_reduce(m.router.kernel.grad:clone(), "sum"), ref.router.kernel.grad))
]])
      for rk = 0, 1 do
        local k = keyed(r.lines[rk])
        assert.is_true(tonumber(k.forward[1]) < 1e-6, r.out)
        assert.are.equal(rk == 0 and "3" or "0", k.forward[2])
        assert.is_true(tonumber(k.egrad[1]) < 1e-6, r.out)
        assert.is_true(tonumber(k.rgrad[1]) < 1e-6, r.out)
      end
    end)

    mpi_it("all_to_all's gradient returns each row's gradient to its sender (against the exact map), zero rows too", function()
      local r = mpirun(2, COMMON .. [[
-- send[r + 1][q + 1]: rows rank r sends to rank q
for case, send in ipairs { { { 2, 3 }, { 1, 0 } }, { { 0, 0 }, { 4, 1 } }, { { 0, 0 }, { 0, 0 } } } do
  local mine = send[rank + 1]
  local n = mine[1] + mine[2]
  local t = (moe.arange(1, n * 3 + 1):view(n, 3) + rank * 100):float()
  t.requires_grad = true
  local y, recv = d.all_to_all(t, mine)
  -- received row p on rank q has the coefficients q * 1000 + p * 10 + k
  local R = y:size(1)
  local coef = (moe.arange(0, R):view(R, 1) * 10 + moe.arange(1, 4):view(1, 3) + rank * 1000):float()
  ;(y * coef):sum():backward()
  -- naive: where did each of my rows go, and at which position
  local want = {}
  for qq = 0, 1 do
    local off = 0
    for rr = 0, rank - 1 do off = off + send[rr + 1][qq + 1] end
    for i = 1, mine[qq + 1] do
      for k = 1, 3 do want[#want + 1] = qq * 1000 + (off + i - 1) * 10 + k end
    end
  end
  local g = t.grad and t.grad:reshape(-1):totable() or {}
  local ok = #g == #want
  for i = 1, #want do ok = ok and g[i] == want[i] end
  say("case" .. case, ok and "ok" or ("got " .. table.concat(g, ",") .. " want " .. table.concat(want, ",")),
    recv[1] + recv[2], tostring(y.requires_grad))
end
]])
      for rk = 0, 1 do
        local k = keyed(r.lines[rk])
        for case = 1, 3 do assert.are.equal("ok", k["case" .. case][1], r.out) end
        assert.are.same(rk == 0 and { "ok", "3", "true" } or { "ok", "3", "true" }, k.case1)
      end
    end)

    mpi_it("a checkpoint saved at 2 ranks (experts gathered) loads at 1, 2 and 4 ranks with equal outputs", function()
      local path = tmp .. "/ep2.moe"
      local save = COMMON .. ([[
local inp = moe.Input { shape = { S, H } }
local m = moe.Model { inputs = inp, outputs = layer(true, "tokens")(inp), name = "ep" }
m:compile { optimizer = moe.optim.Adam { lr = 0.05 }, loss = "mse" }
moe.manual_seed(21)
local X, Y = moe.randn(4, S, H), moe.randn(4, S, H)
m(X:narrow(1, 1, 1))
local own = nn.expert_parallel_params(m)
for _ = 1, 2 do -- data parallel by hand: the ranks' models stay one model
  m:zero_grad()
  local l = (m(X:narrow(1, rank * 2 + 1, 2)) - Y:narrow(1, rank * 2 + 1, 2)):square():mean()
  for _, a in ipairs(m:losses()) do l = l + a end
  l:backward()
  for _, p in ipairs(m:parameters()) do
    if own[p] then p.grad = p.grad / W else p.grad = d.all_reduce(p.grad, "mean") end
  end
  m.optimizer:step(m:parameters())
end
m:save(%q)
say("exists", tostring(io.open(%q, "rb") ~= nil))
m:eval()
local y = m(X:narrow(1, rank * 2 + 1, 2))
say("out", table.concat(y:reshape(-1):totable(), ","))
]]):format(path, path)
      local r = mpirun(2, save)
      local saved = {}
      for rk = 0, 1 do
        local k = keyed(r.lines[rk])
        assert.are.equal("true", k.exists[1])
        saved[rk] = k.out[1]
      end
      -- 1 rank, this process: whole experts in the file
      local tensors = moe.load_tensors(path)
      local E_, H_ = 4, 6
      local any
      for name, t in pairs(tensors) do
        if name:find("intermediate_kernel") and not name:find("/step$") then
          assert.are.equal(E_, t:size(1), name)
          any = true
        end
      end
      assert.is_true(any)
      local m = moe.load(path)
      m:eval()
      moe.manual_seed(21)
      local X = moe.randn(4, 4, H_)
      local y = m(X)
      for rk = 0, 1 do
        local mine = y:narrow(1, rk * 2 + 1, 2):reshape(-1):totable()
        local i = 0
        for v in (saved[rk] .. ","):gmatch("([^,]*),") do
          i = i + 1
          assert.is_true(math.abs(tonumber(v) - mine[i]) < 1e-6, ("rank %d value %d: %s vs %s"):format(rk, i, v, mine[i]))
        end
        assert.are.equal(#mine, i)
      end
      -- the same model as a plain (non expert-parallel) checkpoint, written here
      local plain = tmp .. "/plain.moe"
      moe.load(path, { expert_parallel = false }):save(plain)
      -- 2 ranks again, with the optimizer state re-sliced: outputs equal, and training goes on
      local r2 = mpirun(2, COMMON .. ([[
local m = moe.load(%q)
m:eval()
moe.manual_seed(21)
local X, Y = moe.randn(4, S, H), moe.randn(4, S, H)
local y = m(X:narrow(1, rank * 2 + 1, 2))
say("out", table.concat(y:reshape(-1):totable(), ","))
local p = moe.load(%q, { expert_parallel = true })
p:eval()
say("plain", table.concat(p(X:narrow(1, rank * 2 + 1, 2)):reshape(-1):totable(), ","))
local l
for _, e in ipairs(m:modules()) do if e[2].class_name == "MoeLayer" then l = e[2] end end
say("shard", l.experts.intermediate_kernel:size(1))
-- the optimizer state of this rank's experts is the file's slice
local pn, ps = {}, {}
for n, p in m:named_parameters() do pn[#pn + 1] = n; ps[#ps + 1] = p end
local st, file = m.optimizer:state_tensors(pn, ps), moe.load_tensors(%q)
local sh, od, no = nn.expert_shards(m), 0, 0
for i, p in ipairs(ps) do
  for k, t in pairs(st) do
    if sh[p] and k:find("optimizer/" .. pn[i] .. "/", 1, true) == 1 and not k:find("/step$") then
      od = math.max(od, maxdiff(t, file[k]:narrow(1, sh[p].lo, sh[p].n)))
      no = no + 1
    end
  end
end
say("ostate", no, od)
m:fit { x = X, y = Y, batch_size = 1, epochs = 1, verbose = 0 } -- (data parallel: a rank's 2 rows in 2 steps)
say("trained", "yes")
]]):format(path, plain, path))
      for rk = 0, 1 do
        local k = keyed(r2.lines[rk])
        assert.are.equal(saved[rk], k.out[1])
        assert.are.equal(saved[rk], k.plain[1])
        assert.are.equal("2", k.shard[1])
        assert.are.same({ "8", "0" }, k.ostate) -- (Adam's m and v of the 4 expert weights)
        assert.are.equal("yes", k.trained[1])
      end
      -- 4 ranks, one expert each: re-sharded on load, each rank's row as the 1-rank model gives it
      local r4 = mpirun(4, COMMON .. ([[
local m = moe.load(%q)
m:eval()
moe.manual_seed(21)
local X = moe.randn(4, S, H)
local l
for _, e in ipairs(m:modules()) do if e[2].class_name == "MoeLayer" then l = e[2] end end
say("shard", l.experts.intermediate_kernel:size(1))
say("out", table.concat(m(X:narrow(1, rank + 1, 1)):reshape(-1):totable(), ","))
]]):format(path))
      for rk = 0, 3 do
        local k = keyed(r4.lines[rk])
        assert.are.equal("1", k.shard and k.shard[1], r4.out .. r4.err)
        local mine = y:narrow(1, rk + 1, 1):reshape(-1):totable()
        local i = 0
        for v in (k.out[1] .. ","):gmatch("([^,]*),") do
          i = i + 1
          assert.is_true(math.abs(tonumber(v) - mine[i]) < 1e-6, ("4 ranks, rank %d value %d: %s vs %s"):format(rk, i, v, mine[i]))
        end
        assert.are.equal(#mine, i)
      end
    end)

    mpi_it("models/switch_moe.lua --expert-parallel trains at 2 ranks and prints its results once", function()
      local root = io.popen("pwd"):read("*l") -- (the checkout: the specs run from it)
      local r = mpirun(2, nil, { file = root .. "/models/switch_moe.lua", args = "--expert-parallel --smoke" })
      local out0 = table.concat(r.lines[0], "\n")
      for _, kind in ipairs { "tokens", "experts" } do
        local acc = out0:match(kind .. "%-choose: test token accuracy ([%d.]+)")
        assert.is_truthy(acc, out0)
        assert.is_true(tonumber(acc) > 0.2, out0) -- (the permutation is learnt fast; chance is 1/64)
      end
      assert.is_truthy(out0:find("rank_imbalance", 1, true), out0)
      assert.are.same({}, r.lines[1] or {}) -- rank 1 prints nothing
    end)

    mpi_it("a world size that does not divide the experts is an error naming both, at the caller's line", function()
      local src = COMMON .. [[
local fe, r3 = nn.FeedForwardExperts { num_experts = 3, d_ff = 2 }, nn.TokensChooseMaskedRouter { num_experts = 3 }
local ok, e = pcall(function()
  local l = nn.MoeLayer { experts = fe, router = r3, expert_parallel = true } --@here
  return l
end)
say("err", tostring(e))
]]
      local line = 0
      for l in src:gmatch("([^\n]*)\n") do
        line = line + 1
        if l:find("--@here", 1, true) then break end
      end
      local r = mpirun(2, src)
      for rk = 0, 1 do
        local e = keyed(r.lines[rk]).err[1]
        assert.is_truthy(e:find(r.script .. ":" .. line .. ": MoeLayer: expert_parallel divides the experts among the ranks, "
          .. "but num_experts 3 is not a multiple of the world size 2", 1, true), e)
      end
    end)
  end)
end)
