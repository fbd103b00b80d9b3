-- moe.distributed.Reducer (src/dist/reducer.c) and autograd's leaf-ready hook
-- (src/core/autograd.c). The hook's spec runs here, in one process, against a
-- naive account of when each leaf's last use in backward comes. The reducer's
-- specs run rank scripts under `mpirun -np 2` and `-np 3` (the pattern of
-- spec/distributed_spec.lua: H.mpi_runner's timeout and per-rank output) and check
-- every averaged grad against a naive expectation computed in the script from
-- every rank's own plain-backward grads, gathered and summed by hand.
local moe = require "moe"
local H = require "helpers"
local dist = moe.distributed
local skip_reason = H.mpi_skip_reason()
local runner = H.mpi_runner(90)

-- runs src on np ranks: {rc, out, err, lines = {[rank] = {key = value}}} from "key|value" lines
local function mpirun(np, src)
  local run = runner.run(np, src)
  local rc = run.rc
  local r = { rc = rc, out = run.out, err = run.err, lines = {} }
  for rank, lines in pairs(run.lines) do
    for _, line in ipairs(lines) do
      local key, val = line:match("^([^|]+)|(.*)$")
      if key then
        r.lines[rank] = r.lines[rank] or {}
        r.lines[rank][key] = val
      end
    end
  end
  assert(rc == 0, ("mpirun -np %d exited with %s\nstdout:\n%s\nstderr:\n%s"):format(np, tostring(rc), r.out, r.err))
  for rank = 0, np - 1 do assert(r.lines[rank], "no output from rank " .. rank .. ":\n" .. r.out .. r.err) end
  return r
end

local function mpi_it(name, fn)
  it(name, function()
    if skip_reason then pending(skip_reason) return end
    fn()
  end)
end

local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

describe("autograd's leaf-ready hook", function()
  -- three layers; s is used by layers 1 and 3, w2 by layer 2, b3 by layer 3,
  -- b1 by layer 1, u by nothing, q twice in one op of layer 2 (q * q).
  -- Backward runs layer 3, then 2, then 1: by a naive count of each leaf's
  -- last use in that order, b3 is final after layer 3, w2 and q after layer 2,
  -- s and b1 after layer 1.
  local function graph()
    moe.manual_seed(3)
    local L = {}
    for _, k in ipairs { "s", "w2", "b1", "b3", "u", "q" } do
      L[k] = moe.randn(k:sub(1, 1) == "b" and 3 or 3, k:sub(1, 1) == "b" and 1 or 3):requires_grad_()
    end
    local x = moe.randn(4, 3)
    local function loss()
      local h1 = (x:matmul(L.s) + L.b1:reshape(1, 3)):tanh()
      local h2 = (h1:matmul(L.w2) * (L.q * L.q):sum()):tanh()
      local h3 = h2:matmul(L.s) + L.b3:reshape(1, 3)
      return (h3 * h3):sum()
    end
    return L, loss
  end
  local NAMES = { "s", "w2", "b1", "b3", "u", "q" }

  it("calls each reached leaf once, when its grad is final, in the order of the leaves' last uses", function()
    local L, loss = graph()
    local leaves = {}
    for i, k in ipairs(NAMES) do leaves[i] = L[k] end
    local order, snaps, ends = moe.core.backward_ready_trace(loss(), leaves)
    assert.are.equal(1, ends)
    local at, seen = {}, {}
    for i, p in ipairs(order) do
      assert.is_true(p > 0, "a leaf that is none of the graph's was called")
      local name = NAMES[p]
      assert.is_nil(seen[name], name .. " was called twice")
      seen[name] = true
      at[name] = i
      -- final: the grad seen at the call is the grad after the pass
      assert.is_truthy(snaps[i], name .. " had no grad when called")
      assert.are.same(L[name].grad:totable(), snaps[i]:totable())
    end
    assert.are.same({ s = true, w2 = true, b1 = true, b3 = true, q = true }, seen) -- u: not reached, not called
    assert.is_true(at.b3 < at.w2 and at.b3 < at.q, "b3 (layer 3) after a layer-2 leaf")
    for _, late in ipairs { "s", "b1" } do
      for _, early in ipairs { "w2", "q" } do
        assert.is_true(at[early] < at[late], late .. " (its last use: layer 1) before " .. early .. " (layer 2)")
      end
    end
    -- the grads are those of a plain backward (no hook)
    local L2, loss2 = graph()
    loss2():backward()
    for _, k in ipairs { "s", "w2", "b1", "b3", "q" } do assert.are.same(L2[k].grad:totable(), L[k].grad:totable()) end
  end)

  it("calls a root that is itself a leaf, then the end of the pass; a plain backward afterwards calls nothing", function()
    local z = moe.tensor({ 2 }):requires_grad_()
    local order, snaps, ends = moe.core.backward_ready_trace(z, { z })
    assert.are.same({ 1 }, order)
    assert.are.same({ 1 }, snaps[1]:totable())
    assert.are.equal(1, ends)
    local L, loss = graph()
    loss():backward() -- (the trace's hook was taken off again)
    assert.is_true(L.s:has_grad())
  end)
end)

describe("moe.distributed.Reducer in the 1-rank world", function()
  local function params()
    moe.manual_seed(5)
    local ps = {}
    for i = 1, 4 do ps[i] = moe.randn(16, 16):requires_grad_() end
    return ps
  end

  it("buckets the params in reverse order under the caps, and leaves the grads as backward made them", function()
    local ps = params()
    local unused = moe.randn(7):requires_grad_()
    local all = { ps[1], ps[2], unused, ps[3], ps[4] }
    -- 1 KiB a 16x16 float32: cap 2 KiB holds two, the first bucket (0.001 MiB) one
    local r = dist.Reducer(all, { bucket_cap_mb = 2048 / 2 ^ 20, first_bucket_mb = 1024 / 2 ^ 20 })
    local s = r:stats()
    assert.are.same({ 3, 3, 2, 2, 1 }, s.bucket_of)
    assert.are.equal(3, s.buckets)
    assert.are.equal(4 * 1024 + 28, s.bytes)
    assert.are.equal(1, s.world_size)
    assert.is_truthy(tostring(r):find("5 params, 0 local, 3 buckets", 1, true), tostring(r))
    -- the defaults: DDP's 25 MiB, and a first bucket of 1 MiB
    s = dist.Reducer(all):stats()
    assert.are.equal(25 * 2 ^ 20, s.bucket_cap_bytes)
    assert.are.equal(2 ^ 20, s.first_bucket_bytes)
    assert.are.same({ 1, 1, 1, 1, 1 }, s.bucket_of)

    local x = moe.randn(3, 16)
    local function loss() return x:matmul(ps[1]):tanh():matmul(ps[2]):matmul(ps[3]):matmul(ps[4]):sum() end
    loss():backward()
    local want = {}
    for i = 1, 4 do want[i] = ps[i].grad:totable() ps[i].grad = nil end
    r:prepare()
    assert.is_true(r:stats().prepared)
    loss():backward()
    r:finish()
    for i = 1, 4 do assert.are.same(want[i], ps[i].grad:totable()) end
    -- the unused param gets zeros
    assert.are.same({ 0, 0, 0, 0, 0, 0, 0 }, unused.grad:totable())
    s = r:stats()
    assert.are.equal(1, s.unused)
    assert.are.equal(1, s.steps)
    assert.is_false(s.prepared)
    assert.are.equal(0, s.started_in_backward) -- (nothing is sent in a 1-rank world)
  end)

  it("divides local params by the world size (1 here) and gives them zeros when they got no grad", function()
    local ps = params()
    local r = dist.Reducer({ ps[1] }, { local_params = { ps[2], ps[3] } })
    assert.are.equal(2, r:stats().local_params)
    assert.are.equal(1, r:stats().params)
    r:prepare()
    local x = moe.randn(2, 16)
    x:matmul(ps[1]):matmul(ps[2]):sum():backward()
    local g2 = ps[2].grad:totable()
    r:finish()
    assert.are.same(g2, ps[2].grad:totable())
    assert.are.same(moe.zeros(16, 16):totable(), ps[3].grad:totable())
  end)

  it("raises errors naming the function, the bad value and the caller's line", function()
    local ps = params()
    local here = "reducer_spec.lua:" .. debug.getinfo(1, "l").currentline + 1
    local e = err_of(function() dist.Reducer({ ps[1], "w" }) end)
    assert.is_truthy(e:find(here .. ": moe.distributed.Reducer: params[2] must be a tensor, got \"w\" (a string)", 1, true), e)
    e = err_of(function() dist.Reducer(ps[1]) end)
    assert.is_truthy(e:find("moe.distributed.Reducer: params must be a list of tensors, got a float32 tensor", 1, true), e)
    e = err_of(function() dist.Reducer({ ps[1], moe.ones(2) }) end)
    assert.is_truthy(e:find("moe.distributed.Reducer: params[2] (float32 [2]) does not require grad", 1, true), e)
    e = err_of(function() dist.Reducer({ ps[1] * 2 }) end)
    assert.is_truthy(e:find("params[1] (float32 [16,16]) is not a leaf", 1, true), e)
    e = err_of(function() dist.Reducer({ ps[1], ps[1] }) end)
    assert.is_truthy(e:find("params[2] is listed twice", 1, true), e)
    e = err_of(function() dist.Reducer({ ps[1] }, { local_params = { ps[1] } }) end)
    assert.is_truthy(e:find("local_params[1] is listed twice", 1, true), e)
    e = err_of(function() dist.Reducer({ ps[1] }, { bucket_cap = 1 }) end)
    assert.is_truthy(e:find('unknown option "bucket_cap" (a string) (bucket_cap_mb, first_bucket_mb, local_params)', 1, true), e)
    e = err_of(function() dist.Reducer({ ps[1] }, { bucket_cap_mb = 0 }) end)
    assert.is_truthy(e:find("bucket_cap_mb must be a positive number of MiB, got 0", 1, true), e)
    e = err_of(function() dist.Reducer({ ps[1] }, { local_params = { 3 } }) end)
    assert.is_truthy(e:find("local_params[1] must be a tensor, got 3", 1, true), e)
    local r = dist.Reducer({ ps[1] })
    e = err_of(function() r:finish() end)
    assert.is_truthy(e:find("moe.distributed.Reducer:finish: prepare() was not called before this step's backward", 1, true), e)
    r:prepare()
    e = err_of(function() r:prepare() end)
    assert.is_truthy(e:find("moe.distributed.Reducer:prepare: already prepared: finish() this step first", 1, true), e)
    r:finish()
    e = err_of(function() r.prepare() end)
    assert.is_truthy(e:find("moe.distributed.Reducer:prepare: call it as r:prepare() on a reducer, got nil", 1, true), e)
    -- (no message of the 1-rank world names a rank)
    assert.is_falsy(e:find("rank 0", 1, true), e)
  end)
end)

-- the rank script: a 4-layer model's grads through the reducer against the
-- naive expectation (plain backward on each rank, the grads gathered and
-- summed in rank order here, divided by the world size)
local SCRIPT = [[
local moe = require "moe"
local d = moe.distributed
local rank, world = d.rank(), d.world_size()
io.stdout:setvbuf("line")
local function say(k, v) print(k .. "|" .. tostring(v)) end
local DET = ...
moe.manual_seed(7) -- the same initial params on every rank
local P = {}
for i = 1, 4 do P[#P + 1] = moe.randn(12, 12):requires_grad_() P[#P + 1] = moe.randn(12):requires_grad_() end
local unused = moe.randn(5):requires_grad_()          -- no rank uses it
local only0 = moe.randn(12):requires_grad_()          -- rank 0 only
local d64 = moe.randn(3):to("float64"):requires_grad_() -- a float64 bucket of its own
local expert = moe.randn(12, 12):requires_grad_()     -- local: not reduced
local params = { P[1], P[2], unused, P[3], P[4], only0, P[5], P[6], d64, P[7], P[8] }
moe.manual_seed(100 + rank) -- each rank's own batch
local x = moe.randn(6, 12)
local c = moe.randn(3):to("float64")
local function loss()
  local h = x
  for i = 1, 4 do h = (h:matmul(P[2 * i - 1]) + P[2 * i]:reshape(1, 12)):tanh() end
  h = h:matmul(expert)
  local l = (h * h):sum() + (d64 * d64 * c):sum():to("float32")
  if rank == 0 then l = l + (h * only0:reshape(1, 12)):sum() end
  return l
end
local all = { expert }
for _, p in ipairs(params) do all[#all + 1] = p end
local function clear() for _, p in ipairs(all) do p.grad = nil end end

-- the naive expectation
loss():backward()
local want, local_want = {}, nil
for i, p in ipairs(params) do
  local g = p.grad or moe.zeros(unpack(p:shape())):to(p:dtype())
  local rows = d.all_gather(g:reshape(1, g:numel()))
  local acc = rows[1]
  for r = 2, world do acc = acc + rows[r] end
  want[i] = (acc / world):reshape(unpack(p:shape()))
end
local_want = expert.grad / world
clear()

if DET == "det" then moe.set_deterministic(true) end
local r = d.Reducer(params, { bucket_cap_mb = 700 / 2 ^ 20, first_bucket_mb = 0, local_params = { expert } })
local function step()
  r:prepare()
  loss():backward()
  r:finish()
end
step()
local worst, exact = 0, true
for i, p in ipairs(params) do
  local diff = (p.grad - want[i]):abs():max():item()
  worst = math.max(worst, diff / (want[i]:abs():max():item() + 1e-30))
  exact = exact and diff == 0
end
say("worst", ("%.3g"):format(worst))
say("exact", exact)
say("unused_grad", table.concat(unused.grad:totable(), ","))
say("local_exact", (expert.grad - local_want):abs():max():item() == 0)
local s = r:stats()
for _, k in ipairs { "buckets", "started_in_backward", "started_at_end", "started_in_finish",
                     "ready_after_first_start", "unused", "deterministic" } do say(k, s[k]) end
say("bucket_of", table.concat(s.bucket_of, ","))
-- every rank holds the same grads (bitwise): gathered, each row against rank 0's
local same = true
for _, p in ipairs(params) do
  local rows = d.all_gather(p.grad:reshape(1, p.grad:numel()))
  for k = 2, world do same = same and (rows[k] - rows[1]):abs():max():item() == 0 end
end
say("same_on_ranks", same)
-- a second step, the grads cleared first, is bitwise the same; the whole run's grads as hex
local first = {}
for i, p in ipairs(params) do first[i] = p.grad:clone() end
clear()
step()
local again = true
for i, p in ipairs(params) do again = again and (p.grad - first[i]):abs():max():item() == 0 end
say("again", again)
local hex = {}
for _, p in ipairs(params) do
  local t = p.grad:reshape(p.grad:numel()):totable()
  for _, v in ipairs(t) do hex[#hex + 1] = ("%a"):format(v) end
end
-- (a checksum of them: mpirun cuts long lines)
local sum, str = 0, table.concat(hex, " ")
for i = 1, #str do sum = (sum * 31 + str:byte(i)) % 4294967296 end
say("hex", ("%d:%08x"):format(#hex, sum))
]]

local function script(mode) return "local function main(...)\n" .. SCRIPT .. "\nend\nmain(" .. ("%q"):format(mode) .. ")\n" end

describe("moe.distributed.Reducer under mpirun", function()
  teardown(runner.cleanup)

  for _, np in ipairs { 2, 3 } do
    mpi_it(("averages the grads as the naive all_gather-and-sum does, starting every bucket during backward (%d ranks)")
      :format(np), function()
      local r = mpirun(np, script("plain"))
      for rank = 0, np - 1 do
        local L = r.lines[rank]
        local where = ("rank %d of %d: %s"):format(rank, np, r.out:sub(1, 3000))
        -- sums of 2 floats are the same either way round; 3 may be added in another order by MPI
        assert.is_true(tonumber(L.worst) <= (np == 2 and 0 or 1e-6), where)
        assert.are.equal("0,0,0,0,0", L.unused_grad, where)
        assert.are.equal("true", L.local_exact, where)
        assert.are.equal("false", L.deterministic, where)
        -- 12x12 float32 is 576 bytes, a bias 48, under a cap of 700 in reverse order: {P8, P7},
        -- {d64} (float64), {P6, P5, only0}, {P4, P3, unused, P2}, {P1}
        assert.are.equal("5,4,4,4,4,3,3,3,2,1,1", L.bucket_of, where)
        assert.are.equal("5", L.buckets, where)
        -- the overlap: all started while backward ran, and params became ready after the first started
        assert.are.equal("5", L.started_in_backward, where)
        assert.are.equal("0", L.started_at_end, where)
        assert.are.equal("0", L.started_in_finish, where)
        assert.is_true(tonumber(L.ready_after_first_start) >= 5, where)
        -- rank 0 uses only0, the others do not: theirs count as unused (with the never-used one)
        assert.are.equal(rank == 0 and "1" or "2", L.unused, where)
        assert.are.equal("true", L.again, where)
      end
    end)

    mpi_it(("in deterministic mode, is bitwise the rank-order sum, the same on every rank and in every run (%d ranks)")
      :format(np), function()
      local a, b = mpirun(np, script("det")), mpirun(np, script("det"))
      for rank = 0, np - 1 do
        local L, where = a.lines[rank], ("rank %d of %d: %s"):format(rank, np, a.out:sub(1, 3000))
        assert.are.equal("true", L.deterministic, where)
        assert.are.equal("true", L.exact, where)
        assert.are.equal("true", L.same_on_ranks, where)
        assert.are.equal("true", L.again, where)
        assert.are.equal("5", L.started_in_backward, where)
        assert.are.equal(a.lines[0].hex, L.hex, where)
        assert.are.equal(L.hex, b.lines[rank].hex, "run 1 against run 2 on rank " .. rank)
      end
    end)
  end

  mpi_it("raises the same error on every rank for one rank's bad argument, other params or another mode", function()
    local r = mpirun(2, [[
local moe = require "moe"
local d = moe.distributed
local rank = d.rank()
io.stdout:setvbuf("line")
local function say(k, v) print(k .. "|" .. tostring(v)) end
local function err(f) local ok, e = pcall(f) return ok and "no error" or tostring(e):gsub("\n", " ") end
local a, b = moe.randn(4):requires_grad_(), moe.randn(3):requires_grad_()
say("bad_arg", err(function() d.Reducer({ a, rank == 1 and "b" or b }) end))
say("fewer", err(function() d.Reducer(rank == 1 and { a } or { a, b }) end))
say("shape", err(function() d.Reducer(rank == 1 and { b, a } or { a, b }) end))
local r = d.Reducer({ a, b })
moe.set_deterministic(rank == 1)
say("mode", err(function() r:prepare() end))
moe.set_deterministic(false)
-- a reducer's exchange on one rank, a collective's on the other: both see it
say("crossed", err(function() if rank == 0 then r:prepare() else d.all_reduce(moe.ones(3)) end end))
moe.set_deterministic(false)
r:prepare()
say("twice", err(function()
  local l1, l2 = a:sum() + b:sum(), a:sum()
  l1:backward()
  l2:backward()
end))
r:finish()
say("a_grad", table.concat(a.grad:totable(), ","))
-- the reducer is still usable: a good step after the errors
r:prepare()
local l = a:sum() * (rank + 1)
l:backward()
r:finish()
say("a_grad2", table.concat(a.grad:totable(), ","))
say("done", "yes")
]])
    for rank = 0, 1 do
      local L, where = r.lines[rank], r.out .. r.err
      assert.is_truthy(L.bad_arg:find("moe.distributed.Reducer: rank 1: params[2] must be a tensor, got \"b\" (a string)", 1, true), where)
      assert.is_truthy(L.fewer:find("moe.distributed.Reducer: the ranks' params differ: rank 0 has 2 (0 local) in 1 buckets, rank 1 1", 1, true), where)
      assert.is_truthy(L.shape:find("the ranks' params differ", 1, true), where)
      assert.is_truthy(L.mode:find("moe.distributed.Reducer:prepare: the ranks disagree on the deterministic mode: rank 0 off, rank 1 on", 1, true), where)
      assert.is_truthy(L.crossed:find(rank == 0
        and "Reducer:prepare: the ranks called different functions (rank 0 Reducer:prepare, rank 1 a collective)"
        or "all_reduce: the ranks called different collectives: rank 0 moe.distributed.Reducer, rank 1 all_reduce",
        1, true), where)
      assert.is_truthy(L.twice:find("backward ran again after prepare() reached params[1], whose grad was already sent", 1, true), where)
      -- (the first backward's grads, averaged: a's grad is 1 on both ranks; the second pass added 1 more to
      -- the local .grad before it failed, and finish overwrites it with the mean of what was sent. The next
      -- step accumulates onto those grads: 1 + 1 on rank 0, 1 + 2 on rank 1)
      assert.are.equal("1,1,1,1", L.a_grad, where)
      assert.are.equal("2.5,2.5,2.5,2.5", L.a_grad2, where)
      assert.are.equal("yes", L.done, where)
    end
  end)
end)
