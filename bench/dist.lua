-- bench/dist.lua: moe.distributed's collectives between ranks, on the host.
--
--   mpirun -np 2 --oversubscribe build/moelua run bench/dist.lua [--quick]
--
-- For each message size (1 KiB .. 64 MiB of float32): the time of one blocking
-- all_reduce (sum) and of one all_to_all (each rank sends 1/N of its rows to
-- each rank), with the checks off (the engine's exchange of the ranks'
-- arguments is left out: the collective alone); and the all_reduce again with
-- the checks on, for their cost. A time is the slowest rank's, the best of
-- several rounds (the machines are shared and noisy). Bandwidths follow
-- nccl-tests: algbw = bytes / time; busbw = algbw * 2(N-1)/N for all_reduce
-- (what each link carries) and algbw * (N-1)/N for all_to_all.
-- Last, an overlap check: an all_reduce_async started before a matmul and
-- waited for after it, against the two one after the other (MPI moves the data
-- only inside MPI calls, here is_completed() between the matmul's parts).
local moe = require "moe"
local d = moe.distributed
local rank, world = d.rank(), d.world_size()
local quick = arg and arg[1] == "--quick"
io.stdout:setvbuf("line")

local function say(...) if rank == 0 then print(string.format(...)) end end

if world < 2 then
  say("bench/dist.lua: one rank (%s); run it under mpirun -np 2", tostring(d.info().reason))
  return
end

-- seconds per call of f: the slowest rank's, best of `rounds` rounds of `iters` calls
local function time(f, iters, rounds)
  f()
  local best = math.huge
  for _ = 1, rounds do
    d.barrier()
    local t0 = moe.now()
    for _ = 1, iters do f() end
    local t = moe.tensor({ (moe.now() - t0) / iters }, { dtype = "float64" })
    d.all_reduce(t, "max")
    best = math.min(best, t[1])
  end
  return best
end

local function human(bytes)
  if bytes >= 2 ^ 20 then return ("%d MiB"):format(bytes / 2 ^ 20) end
  return ("%d KiB"):format(bytes / 2 ^ 10)
end

local info = d.info()
say("moe.distributed: %d ranks (%d on this machine), %s, %d thread(s) each", world, info.local_size, info.library,
  info.threads)
say("%-8s | %12s %10s | %12s %10s | %14s", "size", "all_reduce", "busbw", "all_to_all", "busbw",
  "all_reduce+chk")
say("%-8s | %12s %10s | %12s %10s | %14s", "", "us", "GB/s", "us", "GB/s", "us")
local sizes = {}
for p = 10, 26, 2 do sizes[#sizes + 1] = 2 ^ p end
for _, bytes in ipairs(sizes) do
  local n = bytes / 4
  local rows = n / 256 -- all_to_all rows of 256 floats (1 KiB), a multiple of the world size
  local budget = quick and 2 ^ 24 or 2 ^ 26 -- bytes moved per round
  local iters = math.max(1, math.min(200, math.floor(budget / bytes)))
  local rounds = quick and 3 or 5
  local x = moe.randn(n)
  d.set_checks(false)
  local t_ar = time(function() d.all_reduce(x, "sum") end, iters, rounds)
  local send = {}
  local per = math.floor(rows / world)
  for r = 1, world do send[r] = per end
  send[world] = rows - per * (world - 1)
  local y = moe.randn(rows, 256)
  local t_a2a = time(function() d.all_to_all(y, send) end, iters, rounds)
  d.set_checks(true)
  local t_chk = time(function() d.all_reduce(x, "sum") end, iters, rounds)
  local ar_bus = bytes / t_ar * 2 * (world - 1) / world / 1e9
  local a2a_bus = bytes / t_a2a * (world - 1) / world / 1e9
  say("%-8s | %12.1f %10.2f | %12.1f %10.2f | %14.1f", human(bytes), t_ar * 1e6, ar_bus, t_a2a * 1e6, a2a_bus,
    t_chk * 1e6)
end

-- overlap: a 16 MiB all_reduce_async and a matmul in 8 parts
do
  local g = moe.randn(4 * 2 ^ 20)
  local a, b = moe.randn(384, 384), moe.randn(384, 384)
  local function compute(w)
    for _ = 1, 8 do
      moe.matmul(a, b)
      if w then w:is_completed() end
    end
  end
  d.set_checks(false)
  local t_c = time(function() compute() end, 2, 3)
  local t_r = time(function() d.all_reduce(g, "sum") end, 2, 3)
  local t_o = time(function()
    local w = d.all_reduce_async(g, "sum")
    compute(w)
    w:wait()
  end, 2, 3)
  d.set_checks(true)
  say("overlap: 16 MiB all_reduce %.1f ms + matmuls %.1f ms = %.1f ms one after the other; started async before "
    .. "them: %.1f ms (%.0f%% of the all_reduce hidden)", t_r * 1e3, t_c * 1e3, (t_r + t_c) * 1e3, t_o * 1e3,
    math.max(0, (t_r + t_c - t_o) / t_r * 100))
end

-- the gradient reducer: backward + finish of an MLP's params (8 layers of
-- 512x512 float32, 8 MiB of grads) with the Reducer (buckets of bucket_cap_mb,
-- started during backward), against backward and then one blocking
-- all_reduce("mean") per param, and backward alone
do
  moe.manual_seed(1)
  local L, H = 8, 512
  local params = {}
  for i = 1, L do params[i] = moe.randn(H, H):mul(1 / math.sqrt(H)):requires_grad_() end
  local x = moe.randn(quick and 64 or 256, H)
  local function backward()
    local h = x
    for i = 1, L do h = h:matmul(params[i]):tanh() end
    h:sum():backward()
  end
  local function clear() for _, p in ipairs(params) do p.grad = nil end end
  d.set_checks(false)
  local t_b = time(function() clear() backward() end, 2, quick and 2 or 3)
  local t_naive = time(function()
    clear()
    backward()
    for _, p in ipairs(params) do d.all_reduce(p.grad, "mean") end
  end, 2, quick and 2 or 3)
  for _, cap in ipairs { 1, 4, 25 } do
    local r = d.Reducer(params, { bucket_cap_mb = cap, first_bucket_mb = math.min(cap, 1) })
    local t_r = time(function()
      clear()
      r:prepare()
      backward()
      r:finish()
    end, 2, quick and 2 or 3)
    local s = r:stats()
    say("reducer: %d x %dx%d float32 params (%s of grads): backward %.1f ms; + one all_reduce per param after it "
      .. "%.1f ms; Reducer{bucket_cap_mb = %d}: %.1f ms (%d buckets, %d started during backward, %d done before "
      .. "it returned)", L, H, H, human(s.bytes), t_b * 1e3, t_naive * 1e3, cap, t_r * 1e3, s.buckets,
      s.started_in_backward, s.done_in_backward)
  end
  d.set_checks(true)
end
