-- moe.distributed: processes that work together, in torch.distributed's style,
-- on the engine's communicator (src/dist/: MPI, from Debian's OpenMPI, for host
-- tensors; NCCL, from the CUDA toolkit, for device tensors).
--
--   mpirun -np 2 build/moelua run script.lua     -- each process is one rank
--
--   local dist = moe.distributed
--   dist.rank(), dist.world_size()     -- 0-based ranks: 0 .. world_size() - 1
--   dist.barrier()
--   dist.all_reduce(t, "sum")          -- in place: sum, mean, max, min or prod over the ranks
--   dist.broadcast(t, 0)               -- in place: rank 0's values everywhere
--   dist.all_gather(t)                 -- the ranks' t stacked along dim 1 (their first sizes may differ),
--                                      -- and the list of those sizes
--   dist.reduce_scatter(t, "sum")      -- rank r gets block r + 1 of t's dim 1, reduced over the ranks
--   dist.all_to_all(t, send_counts)    -- send_counts[r + 1] rows of t to rank r; the rows received
--                                      -- (in rank order), and recv_counts
--   dist.all_reduce_async(t, op)       -- started at once: w:is_completed(), w:wait() (-> t)
--   dist.info()                        -- rank, world, backend, MPI library, threads and why, NCCL, ...
--   local r = dist.Reducer(params, {bucket_cap_mb = 25})   -- data-parallel grads (DDP's reducer)
--   r:prepare(); loss:backward(); r:finish()                 -- each param's .grad: the mean over the ranks
--
-- Ranks are 0-based, as mpirun's own messages, OMPI_COMM_WORLD_RANK and
-- torch.distributed number them, so that "rank 1" means the same process in
-- every message of a job. They are names, not positions: a Lua list indexed by
-- rank (the counts of all_to_all and all_gather) has rank r's entry at [r + 1].
--
-- Under mpirun moelua joins the world before the script runs (init() is then
-- a no-op); without mpirun, or in a build without MPI, the world is one rank
-- and every collective is a copy. Every rank must make the same calls in the
-- same order; each call first exchanges what every rank passed, so a mismatch
-- (another shape, dtype, op, root or collective) or a bad argument on any rank
-- is an error on every rank, naming the ranks, instead of a hang.
--
-- The collectives take cuda tensors too, in builds with NCCL (a CUDA build
-- where nccl.h was found): the process's one NCCL communicator is made at the
-- first such call, on its current device, and each collective is queued on
-- the engine's stream, ordered with its kernels (the host does not wait;
-- all_reduce_async's wait makes the stream wait for it). NCCL puts one rank
-- on each GPU: several ranks on one machine need a GPU each.
local moe = require "moe"
local core = moe.core
local error = moe._error -- every error is raised at the user's line (init.lua)

local D = {}

local OPS = { sum = true, mean = true, max = true, min = true, prod = true }

-- a bad argument: raised on every rank (core.dist_fail tells the others, which
-- wait in the same call), as "moe.distributed.<fn>: rank r: <msg>" where there
-- are several ranks
local function fail(fn, msg) core.dist_fail(fn, msg) end

local function check_tensor(fn, t)
  if not core.is_tensor(t) then fail(fn, "expected a tensor, got " .. moe._show(t)) end
end

local function check_op(fn, op)
  if op == nil then return "sum" end
  if not OPS[op] then
    fail(fn, ("op must be \"sum\", \"mean\", \"max\", \"min\" or \"prod\", got %s"):format(moe._show(op)))
  end
  return op
end

-- whether this build has the MPI backend (without it the world is one rank)
function D.is_available() return core.dist_info().built end
function D.is_initialized() return core.dist_info().initialized end

-- joins the world (once; moelua does it already under mpirun)
function D.init()
  core.dist_init()
  return D
end

function D.rank() return core.dist_rank() end
function D.world_size() return core.dist_world_size() end

function D.barrier() core.dist_barrier() end

-- whether this is rank 0, the rank that prints and writes files in fit{} and
-- the models' scripts (true in a 1-process world)
function D.is_main() return core.dist_rank() == 0 end

-- print(...) on rank 0 only: a script's results, once per job
function D.print(...)
  if core.dist_rank() == 0 then print(...) end
end

-- info(): {initialized, rank, world_size, local_rank, local_size (the ranks on this
-- machine), launched (mpirun's process count, 0 without it), built, backend
-- ("mpi" or "local"), library (the MPI library), thread_level, threads (this
-- rank's CPU threads), threads_reason, checks, reason (why one rank, when so),
-- nccl_built, nccl_version (nccl.h's at build time), nccl_library (the libnccl
-- found now), nccl_ready and nccl_device (its communicator, once made),
-- nccl_reason (why device tensors cannot be used, when so)}
function D.info()
  local i = core.dist_info()
  return setmetatable(i, { __tostring = function(t)
    local where = t.initialized and ("rank %d of %d"):format(t.rank, t.world_size) or "not initialized"
    local lib = t.library ~= "" and (" (%s, thread level %s)"):format(t.library, t.thread_level) or ""
    local nccl = not t.nccl_built and "no NCCL (" .. t.nccl_reason .. ")"
      or t.nccl_reason and ("NCCL %s unusable: %s"):format(t.nccl_version, t.nccl_reason)
      or ("NCCL %s (libnccl %s%s)"):format(t.nccl_version, t.nccl_library,
        t.nccl_ready and (", on device " .. t.nccl_device) or "")
    return ("moe.distributed: %s, backend %s%s; %d thread%s: %s%s; device tensors: %s"):format(where, t.backend,
      lib, t.threads, t.threads == 1 and "" or "s", t.threads_reason ~= "" and t.threads_reason or "the default",
      t.reason and ("; one rank: " .. t.reason) or "", nccl)
  end })
end

-- set_checks(false): no exchange of the ranks' arguments before each call (a
-- few microseconds saved; a mismatch then hangs or corrupts, as in MPI)
function D.set_checks(on) return core.dist_set_checks(on ~= false) end

function D.all_reduce(t, op)
  check_tensor("all_reduce", t)
  return core.dist_all_reduce(t, check_op("all_reduce", op))
end

function D.broadcast(t, root)
  check_tensor("broadcast", t)
  root = root == nil and 0 or root
  if type(root) ~= "number" or root ~= math.floor(root) or math.abs(root) >= 2 ^ 31 then
    fail("broadcast", "root must be a rank (an integer from 0), got " .. moe._show(root))
  end
  return core.dist_broadcast(t, root)
end

function D.all_gather(t)
  check_tensor("all_gather", t)
  return core.dist_all_gather(t)
end

function D.reduce_scatter(t, op)
  check_tensor("reduce_scatter", t)
  return core.dist_reduce_scatter(t, check_op("reduce_scatter", op))
end

-- send_counts: a list of world_size() row counts (or a 1-d integer tensor)
function D.all_to_all(t, send_counts)
  check_tensor("all_to_all", t)
  local counts = send_counts
  if core.is_tensor(counts) and counts:dim() == 1 and (counts:dtype() == "int64" or counts:dtype() == "int32") then
    counts = counts:totable()
  end
  if type(counts) ~= "table" then
    fail("all_to_all", "send_counts must be a list of row counts, one per rank, got " .. moe._show(send_counts))
  end
  for i = 1, #counts do
    local c = counts[i]
    if type(c) ~= "number" or c ~= math.floor(c) or c < 0 or c >= 2 ^ 53 then
      fail("all_to_all", ("send_counts[%d] (for rank %d) must be a count of rows, got %s"):format(i, i - 1,
        moe._show(c)))
    end
  end
  return core.dist_all_to_all(t, counts)
end

-- a nonblocking all_reduce: w:is_completed() (which also lets MPI move the
-- data along), w:wait() returns t with the result. t must not be read or
-- written until then. The ranks start them in the same order. On a cuda
-- tensor it is queued on the stream: is_completed asks its event, and wait
-- orders the stream after it without waiting on the host.
local Work = {}
Work.__index = Work
function Work:is_completed() return core.dist_work_test(self._w) end
function Work:wait()
  core.dist_work_wait(self._w)
  return self._t
end
Work.__tostring = function(w) return ("moe.distributed work (all_reduce of %s)"):format(moe._show(w._t)) end

function D.all_reduce_async(t, op)
  check_tensor("all_reduce_async", t)
  return setmetatable({ _w = core.dist_all_reduce_async(t, check_op("all_reduce_async", op)), _t = t }, Work)
end

-- The data-parallel gradient reducer (src/dist/reducer.c), PyTorch DDP's:
--
--   local r = dist.Reducer(model:parameters(), { bucket_cap_mb = 25, first_bucket_mb = 1,
--                                                local_params = { expert_w } })
--   r:prepare()         -- before backward (arms it on this thread)
--   loss:backward()     -- buckets start all-reducing as their params' grads become final
--   r:finish()          -- waits; every param's .grad is now the mean over the ranks
--
-- Buckets are filled in reverse order of params (the order backward finishes
-- them) and started in bucket order on every rank. A param that got no grad
-- contributes zeros, and after finish every param has a .grad (zeros when no
-- rank used it). local_params (owned by one rank: expert shards) are not
-- reduced; their grads are divided by world_size(). With moe.set_deterministic
-- (true) each bucket is all-gathered and summed in rank order: bitwise the same
-- on every rank and every run. In a 1-rank world nothing is sent. Building one
-- is a collective (every rank passes the same params in the same order).
local Reducer = {}
Reducer.__index = Reducer
Reducer.__tostring = function(r)
  local s = core.dist_reducer_stats(r._r)
  return ("moe.distributed.Reducer (%d params, %d local, %d buckets, %d bytes)"):format(s.params, s.local_params,
    s.buckets, s.bytes)
end

local REDUCER_OPTS = { bucket_cap_mb = true, first_bucket_mb = true, local_params = true }

-- the tensors of a list (a bad entry: the message, for every rank)
local function tensor_list(v, what)
  if type(v) ~= "table" or core.is_tensor(v) then
    return nil, ("%s must be a list of tensors, got %s"):format(what, moe._show(v))
  end
  local n = 0
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then
      return nil, ("%s must be a list of tensors, got a table with the key %s"):format(what, moe._show(k))
    end
    n = math.max(n, k)
  end
  for i = 1, n do
    if not core.is_tensor(v[i]) then
      return nil, ("%s[%d] must be a tensor, got %s"):format(what, i, moe._show(v[i]))
    end
  end
  return v
end

local function reducer_args(params, opts)
  local ps, err = tensor_list(params, "params")
  if not ps then return nil, err end
  opts = opts == nil and {} or opts
  if type(opts) ~= "table" or core.is_tensor(opts) then return nil, "options must be a table, got " .. moe._show(opts) end
  for k in pairs(opts) do
    if not REDUCER_OPTS[k] then
      return nil, ("unknown option %s (bucket_cap_mb, first_bucket_mb, local_params)"):format(moe._show(k))
    end
  end
  local cap, first = opts.bucket_cap_mb == nil and 25 or opts.bucket_cap_mb, opts.first_bucket_mb
  if first == nil then first = 1 end
  if type(cap) ~= "number" or not (cap > 0) or cap == math.huge then
    return nil, "bucket_cap_mb must be a positive number of MiB, got " .. moe._show(cap)
  end
  if type(first) ~= "number" or not (first >= 0) or first == math.huge then
    return nil, "first_bucket_mb must be a number of MiB (0: bucket_cap_mb), got " .. moe._show(first)
  end
  local ls = {}
  if opts.local_params ~= nil then
    ls, err = tensor_list(opts.local_params, "local_params")
    if not ls then return nil, err end
  end
  return ps, ls, cap, first
end

-- Reducer(params, [opts]) -> a reducer; see above
setmetatable(Reducer, { __call = function(_, params, opts)
  local ps, ls, cap, first = reducer_args(params, opts)
  if not ps then core.dist_reducer_fail(ls) end
  return setmetatable({ _r = core.dist_reducer_new(ps, ls, cap, first) }, Reducer)
end })
D.Reducer = Reducer

local function check_self(r, fn)
  if getmetatable(r) ~= Reducer then
    error(("moe.distributed.Reducer:%s: call it as r:%s() on a reducer, got %s"):format(fn, fn, moe._show(r)))
  end
end

-- arms the reducer for this step's backward (one step: prepare, backward, finish)
function Reducer:prepare()
  check_self(self, "prepare")
  core.dist_reducer_prepare(self._r)
  return self
end

-- waits for the buckets and writes every param's averaged .grad
function Reducer:finish()
  check_self(self, "finish")
  core.dist_reducer_finish(self._r)
  return self
end

-- {params, local_params, buckets, bytes, bucket_cap_bytes, first_bucket_bytes,
-- world_size, steps, prepared, bucket_of (params[i]'s bucket, 1 starts first)
-- and, of the last step: deterministic, started_in_backward (buckets started
-- while backward ran, as their last param became ready), done_in_backward (of
-- those, found complete during backward), started_at_end (when the pass ended:
-- buckets holding a param that got no grad), started_in_finish,
-- ready_after_first_start (params that became ready after the first bucket
-- started: the overlap), unused (params without a grad on this rank)}
function Reducer:stats()
  check_self(self, "stats")
  return core.dist_reducer_stats(self._r)
end

return D
