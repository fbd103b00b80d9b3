-- moe.distributed (lua/moe/distributed.lua, src/dist/): each MPI test writes a
-- script, runs it with `mpirun -np N build/moelua run script.lua` (under a
-- timeout, so that a hang fails instead of blocking the suite) and checks each
-- rank's output (each rank's own file: H.mpi_runner) against a naive
-- expectation computed here from every rank's known inputs. The 1-rank world
-- (no mpirun) runs in this process. Without mpirun, or in a build without MPI,
-- the MPI tests are skipped and say why.
local moe = require "moe"
local ffi = require "ffi"
local H = require "helpers"
local dist = moe.distributed
local skip_reason = H.mpi_skip_reason()
-- runs src as a script on np ranks (np = 0: one plain process) under a timeout
-- (H.mpi_runner); {rc, secs, out, err, lines = {[rank] = {stdout lines}}, errs}
local runner = H.mpi_runner(90)
local mpirun = runner.run

-- what every rank script starts with
local PRELUDE = [[
local moe = require "moe"
local d = moe.distributed
local rank, world = d.rank(), d.world_size()
io.stdout:setvbuf("line")
local function say(...) print(table.concat({ ... }, "|")) end
]]

-- shared by the rank scripts and the expectations here (loaded in both)
local COMMON = [[
local DTYPES = { "float32", "float64", "int32", "int64", "bool" }
local function is_float(dt) return dt == "float32" or dt == "float64" end
-- the n values `rank` passes (flat); bool: every combination of the ranks' bits
local function input(dt, rank, n, op)
  local v = {}
  for i = 1, n do
    if dt == "bool" then v[i] = math.floor((i - 1) / 2 ^ rank) % 2 == 1
    elseif is_float(dt) then v[i] = (rank + 1) * 0.5 + (i % 4) * 0.25 - 1.25
    else v[i] = (rank + 1) * 3 - i + ((dt == "int64" and op ~= "prod") and rank * 2 ^ 40 or 0) end
  end
  return v
end
local function fmt(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = type(v) == "boolean" and tostring(v) or ("%.17g"):format(v) end
  return table.concat(s, ",")
end
return DTYPES, is_float, input, fmt
]]
local DTYPES, is_float, input, fmt = assert(loadstring(COMMON))()
local SCRIPT_COMMON = "local DTYPES, is_float, input, fmt = (function() " .. COMMON .. " end)()\n" .. [[
local function flat(t)
  local out, tt = {}, t:totable()
  local function rec(v) if type(v) == "table" then for _, x in ipairs(v) do rec(x) end else out[#out + 1] = v end end
  rec(tt)
  return out
end
local function shape(t) return table.concat(t:shape(), "x") end
local function T(dt, rank, n, op) return moe.tensor(input(dt, rank, n, op), { dtype = dt }) end
]]

-- the reduction of one value per rank, as the engine should compute it in dtype dt
local function f32(x) return tonumber(ffi.new("float[1]", x)[0]) end
local function reduce(op, xs, dt)
  if dt == "bool" then
    local any, all = false, true
    for _, x in ipairs(xs) do any, all = any or x, all and x end
    return (op == "sum" or op == "max") and any or all
  end
  local acc = xs[1]
  for i = 2, #xs do
    local x = xs[i]
    if op == "sum" or op == "mean" then acc = acc + x
    elseif op == "prod" then acc = acc * x
    elseif op == "max" then acc = math.max(acc, x)
    else acc = math.min(acc, x) end
  end
  if op == "mean" then acc = acc / #xs end
  if not is_float(dt) and acc == 0 then acc = 0 end -- (an integer has no -0)
  return dt == "float32" and f32(acc) or acc
end
-- elementwise over the ranks' inputs of n values
local function reduced(dt, world, n, op)
  local per = {}
  for r = 0, world - 1 do per[r] = input(dt, r, n, op) end
  local out = {}
  for k = 1, n do
    local xs = {}
    for r = 0, world - 1 do xs[#xs + 1] = per[r][k] end
    out[k] = reduce(op, xs, dt)
  end
  return out
end

-- each rank's lines as a table key -> the rest ("all_reduce|float32|sum" -> "values|...")
local function keyed(lines, nkey)
  local t = {}
  for _, l in ipairs(lines or {}) do
    local parts = {}
    for p in (l .. "|"):gmatch("([^|]*)|") do parts[#parts + 1] = p end
    local key = table.concat(parts, "|", 1, nkey)
    t[key] = { unpack(parts, nkey + 1) }
  end
  return t
end

local function run_ok(r, np)
  assert(r.rc == 0, ("mpirun -np %d exited with %s after %.1f s\nstdout:\n%s\nstderr:\n%s"):format(np, tostring(r.rc),
    r.secs, r.out, r.err))
  for rank = 0, np - 1 do assert(r.lines[rank], "no output from rank " .. rank .. ":\n" .. r.out .. r.err) end
end

local function mpi_it(name, fn)
  it(name, function()
    if skip_reason then pending(skip_reason) return end
    fn()
  end)
end

describe("moe.distributed", function()
  teardown(runner.cleanup)

  describe("the 1-rank world (no mpirun)", function()
    it("is rank 0 of 1, and every collective is a copy of the input, in every dtype", function()
      assert.is_true(dist.init() == dist)
      assert.is_true(dist.is_initialized())
      assert.are.equal(0, dist.rank())
      assert.are.equal(1, dist.world_size())
      local info = dist.info()
      assert.are.equal("local", info.backend)
      assert.is_truthy(info.reason:find("not launched by mpirun", 1, true) or info.reason:find("without MPI", 1, true))
      assert.is_truthy(tostring(info):find("rank 0 of 1", 1, true))
      dist.barrier()
      for _, dt in ipairs(DTYPES) do
        local vals = input(dt, 0, 6)
        for _, op in ipairs { "sum", "max", "min", "prod", is_float(dt) and "mean" or nil } do
          local t = moe.tensor(vals, { dtype = dt }):view(2, 3)
          assert.are.equal(t, dist.all_reduce(t, op))
          assert.are.same(vals, t:reshape(-1):totable(), dt .. " " .. op)
        end
        local t = moe.tensor(vals, { dtype = dt })
        assert.are.same(vals, dist.broadcast(t, 0):totable())
        local g, counts = dist.all_gather(moe.tensor(vals, { dtype = dt }):view(3, 2))
        assert.are.same({ 3, 2 }, g:shape())
        assert.are.same(vals, g:reshape(-1):totable())
        assert.are.same({ 3 }, counts)
        assert.are.same(vals, dist.reduce_scatter(moe.tensor(vals, { dtype = dt }), "max"):totable())
        local a, recv = dist.all_to_all(moe.tensor(vals, { dtype = dt }):view(3, 2), { 3 })
        assert.are.same(vals, a:reshape(-1):totable())
        assert.are.same({ 3 }, recv)
        local w = dist.all_reduce_async(moe.tensor(vals, { dtype = dt }), "min")
        assert.is_true(w:is_completed())
        assert.are.same(vals, w:wait():totable())
      end
    end)

    it("raises errors naming the function, the bad value and the caller's line", function()
      local function err_of(f)
        local ok, e = pcall(f)
        assert.is_false(ok)
        return tostring(e)
      end
      local here = "distributed_spec.lua:" .. debug.getinfo(1, "l").currentline + 1
      local e = err_of(function() dist.all_reduce({ 1, 2 }) end)
      assert.is_truthy(e:find(here .. ": moe.distributed.all_reduce: expected a tensor, got a table", 1, true), e)
      e = err_of(function() dist.all_reduce(moe.ones(2), "avg") end)
      assert.is_truthy(e:find('moe.distributed.all_reduce: op must be "sum", "mean", "max", "min" or "prod", got "avg" (a string)', 1, true), e)
      e = err_of(function() dist.all_reduce(moe.ones(2):to("int32"), "mean") end)
      assert.is_truthy(e:find('moe.distributed.all_reduce: op "mean" needs a float tensor, got int32', 1, true), e)
      e = err_of(function() dist.broadcast(moe.ones(2), 1) end)
      assert.is_truthy(e:find("moe.distributed.broadcast: root 1 is not a rank of this world (ranks are 0 to 0)", 1, true), e)
      e = err_of(function() dist.broadcast(moe.ones(2), 0.5) end)
      assert.is_truthy(e:find("moe.distributed.broadcast: root must be a rank (an integer from 0), got 0.5", 1, true), e)
      e = err_of(function() dist.broadcast(moe.ones(2), 2 ^ 40) end)
      assert.is_truthy(e:find("moe.distributed.broadcast: root must be a rank (an integer from 0), got 1099511627776", 1, true), e)
      e = err_of(function() dist.all_to_all(moe.ones(3, 2), { 2 }) end)
      assert.is_truthy(e:find("moe.distributed.all_to_all: the send counts add up to 2 rows, but the tensor has 3", 1, true), e)
      e = err_of(function() dist.all_to_all(moe.ones(3, 2), { 1, 2 }) end)
      assert.is_truthy(e:find("moe.distributed.all_to_all: 2 send counts for a world of 1 rank (one per rank)", 1, true), e)
      e = err_of(function() dist.all_to_all(moe.ones(3, 2), { -3 }) end)
      assert.is_truthy(e:find("moe.distributed.all_to_all: send_counts[1] (for rank 0) must be a count of rows, got -3", 1, true), e)
      e = err_of(function() dist.all_to_all(moe.ones(3, 2), "3") end)
      assert.is_truthy(e:find('send_counts must be a list of row counts, one per rank, got "3" (a string)', 1, true), e)
      e = err_of(function() dist.all_reduce(moe.ones(1, 3):expand(4, 3)) end)
      assert.is_truthy(e:find("moe.distributed.all_reduce: cannot write in place into an expanded tensor", 1, true), e)
      e = err_of(function() dist.all_to_all(moe.tensor(3), { 1 }) end)
      assert.is_truthy(e:find("all_to_all: needs a tensor of at least one dim (rows), got a 0-dim one", 1, true), e)
      -- (no message of the 1-rank world names a rank of its own: there is only one)
      assert.is_falsy(e:find("rank 0:", 1, true), e)
    end)

    it("runs a script with moelua (no mpirun) as rank 0 of 1, with the cores' threads", function()
      local out = mpirun(0, PRELUDE .. "local i = d.info() say(rank, world, i.backend, tostring(i.initialized), i.threads, "
        .. "moe.get_num_threads())\n", { env = "env -u OMPI_COMM_WORLD_SIZE -u PMI_SIZE -u PMIX_RANK " }).out
      local r, w, backend, init, th, th2 = out:match("^(%d+)|(%d+)|(%a+)|(%a+)|(%d+)|(%d+)")
      assert.are.same({ "0", "1", "local", "true" }, { r, w, backend, init }, out)
      assert.are.equal(th, th2)
    end)
  end)

  describe("collectives under mpirun", function()
    -- one run per world size checks every collective and dtype; each `it` reads its part
    local runs = {}
    local SRC = PRELUDE .. SCRIPT_COMMON .. [[
for _, dt in ipairs(DTYPES) do
  for _, op in ipairs { "sum", "mean", "max", "min", "prod" } do
    if op ~= "mean" or is_float(dt) then
      local t = T(dt, rank, 6, op):view(2, 3)
      d.all_reduce(t, op)
      say("all_reduce", dt, op, fmt(flat(t)))
      -- strided: x [2,3] is a [3,2] transposed (the result goes back through the view)
      local x = T(dt, rank, 6, op):view(3, 2):transpose(1, 2)
      d.all_reduce(x, op)
      say("all_reduce strided", dt, op, fmt(flat(x)))
      local rs = d.reduce_scatter(T(dt, rank, world * 6, op):view(world * 2, 3), op)
      say("reduce_scatter", dt, op, fmt(flat(rs)), shape(rs))
    end
  end
  for root = 0, world - 1 do
    local b = T(dt, rank, 5)
    d.broadcast(b, root)
    say("broadcast", dt, root, fmt(flat(b)))
  end
  local g, counts = d.all_gather(T(dt, rank, 2 * (rank + 1)):view(rank + 1, 2))
  say("all_gather", dt, fmt(flat(g)), table.concat(counts, ","), shape(g))
  local g0 = d.all_gather(moe.tensor(input(dt, rank, 1)[1], { dtype = dt }))
  say("all_gather 0-dim", dt, fmt(flat(g0)), shape(g0))
  local send, total = {}, 0
  for r = 0, world - 1 do send[r + 1] = (rank + r) % 3; total = total + send[r + 1] end
  local a, recv = d.all_to_all(T(dt, rank, total * 2):view(total, 2), send)
  say("all_to_all", dt, fmt(flat(a)), table.concat(recv, ","), shape(a))
  local w = d.all_reduce_async(T(dt, rank, 7, "max"), "max")
  local a2 = d.all_reduce_async(T(dt, rank, 7, "min"):view(1, 7):expand(1, 7), "min") -- (two in flight)
  local x2 = w:wait()
  say("all_reduce_async", dt, "max", fmt(flat(x2)))
  while not a2:is_completed() do end
  say("all_reduce_async", dt, "min", fmt(flat(a2:wait())))
end
]]
    local function get(np)
      if not runs[np] then
        local r = mpirun(np, SRC)
        run_ok(r, np)
        runs[np] = r
      end
      return runs[np]
    end

    for _, np in ipairs { 2, 3 } do
      mpi_it(("all_reduce: every op and dtype, into contiguous and strided tensors (%d ranks)"):format(np), function()
        local r = get(np)
        for rank = 0, np - 1 do
          local got, n = keyed(r.lines[rank], 3), 0
          for _, dt in ipairs(DTYPES) do
            for _, op in ipairs { "sum", "mean", "max", "min", "prod" } do
              if op ~= "mean" or is_float(dt) then
                local red = reduced(dt, np, 6, op)
                local key = ("%s|%s"):format(dt, op)
                assert.are.equal(fmt(red), (got["all_reduce|" .. key] or {})[1], "rank " .. rank .. " " .. key)
                local strided = {}
                for i = 1, 2 do for j = 1, 3 do strided[#strided + 1] = red[(j - 1) * 2 + i] end end
                assert.are.equal(fmt(strided), (got["all_reduce strided|" .. key] or {})[1], "rank " .. rank .. " " .. key)
                n = n + 2
              end
            end
          end
          assert.are.equal(2 * (5 * 4 + 2), n)
        end
      end)

      mpi_it(("broadcast from every root, every dtype (%d ranks)"):format(np), function()
        local r = get(np)
        for rank = 0, np - 1 do
          local got = keyed(r.lines[rank], 3)
          for _, dt in ipairs(DTYPES) do
            for root = 0, np - 1 do
              assert.are.equal(fmt(input(dt, root, 5)), (got[("broadcast|%s|%d"):format(dt, root)] or {})[1],
                ("rank %d %s root %d"):format(rank, dt, root))
            end
          end
        end
      end)

      mpi_it(("all_gather of different row counts per rank, and of 0-dim tensors (%d ranks)"):format(np), function()
        local r = get(np)
        for rank = 0, np - 1 do
          local got = keyed(r.lines[rank], 2)
          for _, dt in ipairs(DTYPES) do
            local all, counts, rows, scalars = {}, {}, 0, {}
            for q0 = 0, np - 1 do
              for _, v in ipairs(input(dt, q0, 2 * (q0 + 1))) do all[#all + 1] = v end
              counts[#counts + 1] = q0 + 1
              rows = rows + q0 + 1
              scalars[#scalars + 1] = input(dt, q0, 1)[1]
            end
            assert.are.same({ fmt(all), table.concat(counts, ","), rows .. "x2" }, got["all_gather|" .. dt], dt)
            assert.are.same({ fmt(scalars), tostring(np) }, got["all_gather 0-dim|" .. dt], dt)
          end
        end
      end)

      mpi_it(("reduce_scatter: every op and dtype, rank r gets block r + 1 (%d ranks)"):format(np), function()
        local r = get(np)
        for rank = 0, np - 1 do
          local got = keyed(r.lines[rank], 3)
          for _, dt in ipairs(DTYPES) do
            for _, op in ipairs { "sum", "mean", "max", "min", "prod" } do
              if op ~= "mean" or is_float(dt) then
                local red = reduced(dt, np, np * 6, op)
                local mine = { unpack(red, rank * 6 + 1, rank * 6 + 6) }
                assert.are.same({ fmt(mine), "2x3" }, got[("reduce_scatter|%s|%s"):format(dt, op)], ("rank %d %s %s"):format(rank, dt, op))
              end
            end
          end
        end
      end)

      mpi_it(("all_to_all with per-rank counts, some of them 0, every dtype (%d ranks)"):format(np), function()
        local r = get(np)
        for rank = 0, np - 1 do
          local got = keyed(r.lines[rank], 2)
          for _, dt in ipairs(DTYPES) do
            -- rank s sends (s + t) % 3 rows to rank t: rank `rank` receives, from each s in order,
            -- the rows of s's input after those s sent to the ranks before it
            local want, recv, rows = {}, {}, 0
            for s = 0, np - 1 do
              local total, before = 0, 0
              for t = 0, np - 1 do
                total = total + (s + t) % 3
                if t < rank then before = before + (s + t) % 3 end
              end
              local n = (s + rank) % 3
              local vals = input(dt, s, total * 2)
              for k = before * 2 + 1, (before + n) * 2 do want[#want + 1] = vals[k] end
              recv[#recv + 1] = n
              rows = rows + n
            end
            assert.are.same({ fmt(want), table.concat(recv, ","), rows .. "x2" }, got["all_to_all|" .. dt],
              ("rank %d %s"):format(rank, dt))
          end
        end
      end)

      mpi_it(("all_reduce_async: two in flight, finished by wait() and by is_completed() (%d ranks)"):format(np), function()
        local r = get(np)
        for rank = 0, np - 1 do
          local got = keyed(r.lines[rank], 3)
          for _, dt in ipairs(DTYPES) do
            assert.are.equal(fmt(reduced(dt, np, 7, "max")), (got["all_reduce_async|" .. dt .. "|max"] or {})[1], dt)
            assert.are.equal(fmt(reduced(dt, np, 7, "min")), (got["all_reduce_async|" .. dt .. "|min"] or {})[1], dt)
          end
        end
      end)
    end

    mpi_it("barrier: rank 0 waits there until the late rank 1 arrives", function()
      local r = mpirun(2, PRELUDE .. [[
if rank == 1 then local t = moe.now() while moe.now() - t < 0.6 do end end
local t0 = moe.now()
d.barrier()
say("waited", ("%.3f"):format(moe.now() - t0))
]])
      run_ok(r, 2)
      local w0 = tonumber(r.lines[0][1]:match("^waited|(.*)$"))
      local w1 = tonumber(r.lines[1][1]:match("^waited|(.*)$"))
      assert.is_true(w0 > 0.4, "rank 0 waited only " .. w0 .. " s")
      assert.is_true(w1 < w0, ("rank 1 (late) waited %g s, rank 0 %g s"):format(w1, w0))
    end)

    mpi_it("one thread per rank when ranks share the machine, MOE_DIST_THREADS=n overrides, info() says so", function()
      local src = PRELUDE .. [[
local ffi = require "ffi"
ffi.cdef "int openblas_get_num_threads(void);"
local i = d.info()
say(i.threads, moe.get_num_threads(), i.threads_reason, i.local_size, i.backend, ffi.C.openblas_get_num_threads())
]]
      local r = mpirun(2, src, { env = "env -u MOE_NUM_THREADS -u MOE_DIST_THREADS " })
      run_ok(r, 2)
      for rank = 0, 1 do
        local th, th2, why, ls, backend, blas = r.lines[rank][1]:match("^(%d+)|(%d+)|(.-)|(%d+)|(%a+)|(%d+)$")
        assert.are.same({ "1", "1", "2", "mpi", "1" }, { th, th2, ls, backend, blas }, r.lines[rank][1])
        assert.is_truthy(why:find("one per rank: 2 ranks share this machine", 1, true), why)
      end
      r = mpirun(2, src, { env = "env -u MOE_NUM_THREADS MOE_DIST_THREADS=2 " })
      run_ok(r, 2)
      for rank = 0, 1 do
        local th, th2, why = r.lines[rank][1]:match("^(%d+)|(%d+)|(.-)|")
        assert.are.same({ "2", "2", "MOE_DIST_THREADS=2" }, { th, th2, why })
      end
    end)
  end)

  describe("mismatched and bad arguments under mpirun", function()
    -- every case on both ranks, each in pcall; a final all_reduce shows the ranks are still in step
    local SRC = PRELUDE .. [[
local function try(case, f)
  local ok, e = pcall(f)
  say("err", case, ok and "no error" or tostring(e))
end
try("shape", function() d.all_reduce(rank == 0 and moe.zeros(2, 3) or moe.zeros(3, 2)) end) --@shape
try("dtype", function() d.broadcast(moe.zeros(4):to(rank == 0 and "float32" or "int32"), 0) end) --@dtype
try("op", function() d.all_reduce(moe.zeros(2), rank == 0 and "sum" or "max") end) --@op
try("collective", function()
  if rank == 0 then d.all_reduce(moe.zeros(2)) else d.broadcast(moe.zeros(2), 0) end --@collective
end)
try("badop", function() d.all_reduce(moe.zeros(2), rank == 1 and "avg" or "sum") end) --@badop
try("notensor", function() d.all_reduce(rank == 0 and 42 or moe.zeros(2)) end) --@notensor
try("counts", function() d.all_to_all(moe.zeros(3, 2), rank == 1 and { 1, 1 } or { 1, 2 }) end) --@counts
try("ncounts", function() d.all_to_all(moe.zeros(3, 2), { 3 }) end) --@ncounts
try("negcount", function() d.all_to_all(moe.zeros(3, 2), rank == 0 and { -1, 4 } or { 1, 2 }) end) --@negcount
try("root", function() d.broadcast(moe.zeros(2), 2) end) --@root
try("rootdiff", function() d.broadcast(moe.zeros(2), rank) end) --@rootdiff
try("mean", function() d.all_reduce(moe.zeros(2):to("int64"), "mean") end) --@mean
try("scatter", function() d.reduce_scatter(moe.zeros(3)) end) --@scatter
try("gather", function() d.all_gather(moe.zeros(2, rank == 0 and 3 or 4)) end) --@gather
try("async", function() d.all_reduce_async(moe.zeros(rank + 1)) end) --@async
local t = moe.ones(3)
d.all_reduce(t)
say("final", t:sum():item())
]]
    local run
    local function get()
      if not run then
        run = mpirun(2, SRC)
        run_ok(run, 2)
      end
      return run
    end
    local line_of = {}
    do
      local n = 0
      for l in (SRC .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        local m = l:match("%-%-@(%w+)$")
        if m then line_of[m] = n end
      end
    end
    local EXPECT = {
      shape = "moe.distributed.all_reduce: the ranks' tensors differ: rank 0 passed float32 [2,3], rank 1 float32 [3,2] "
        .. "(every rank must pass the same dtype and shape)",
      dtype = "moe.distributed.broadcast: the ranks' tensors differ: rank 0 passed float32 [4], rank 1 int32 [4]",
      op = "moe.distributed.all_reduce: the ranks disagree: rank 0 asked for sum, rank 1 for max",
      badop = 'moe.distributed.all_reduce: rank 1: op must be "sum", "mean", "max", "min" or "prod", got "avg" (a string)',
      notensor = "moe.distributed.all_reduce: rank 0: expected a tensor, got 42",
      counts = "moe.distributed.all_to_all: rank 1: the send counts add up to 2 rows, but the tensor has 3",
      ncounts = "moe.distributed.all_to_all: rank 0: 1 send counts for a world of 2 ranks (one per rank) (and 1 other rank)",
      negcount = "moe.distributed.all_to_all: rank 0: send_counts[1] (for rank 0) must be a count of rows, got -1",
      root = "moe.distributed.broadcast: rank 0: root 2 is not a rank of this world (ranks are 0 to 1) (and 1 other rank)",
      rootdiff = "moe.distributed.broadcast: the ranks disagree: rank 0 asked for root 0, rank 1 for root 1",
      mean = 'moe.distributed.all_reduce: rank 0: op "mean" needs a float tensor, got int64 (sum it, then divide) (and 1 other rank)',
      scatter = "moe.distributed.reduce_scatter: rank 0: the first size (3) must be a multiple of the world size (2) (and 1 other rank)",
      gather = "moe.distributed.all_gather: the ranks' tensors differ: rank 0 passed float32 [2,3], rank 1 float32 [2,4] "
        .. "(every rank must pass the same dtype and the same sizes after the first)",
      async = "moe.distributed.all_reduce_async: the ranks' tensors differ: rank 0 passed float32 [1], rank 1 float32 [2]",
    }

    mpi_it("are an error on every rank naming the function, the ranks and values, at the caller's line", function()
      local r = get()
      for rank = 0, 1 do
        local got = keyed(r.lines[rank], 2)
        for case, want in pairs(EXPECT) do
          local msg = (got["err|" .. case] or {})[1] or "(no line)"
          local where = ("%s:%d: "):format(r.script, line_of[case])
          assert.are.equal(where, msg:sub(1, #where), ("rank %d, %s: %s"):format(rank, case, msg))
          assert.is_truthy(msg:find(want, 1, true), ("rank %d, %s: %s"):format(rank, case, msg))
        end
      end
    end)

    mpi_it("different collectives on two ranks: each rank names its own call and the other's", function()
      local r = get()
      local m0 = (keyed(r.lines[0], 2)["err|collective"] or {})[1] or ""
      local m1 = (keyed(r.lines[1], 2)["err|collective"] or {})[1] or ""
      local tail = "the ranks called different collectives: rank 0 all_reduce, rank 1 broadcast (every rank must call "
        .. "the same collectives in the same order)"
      assert.is_truthy(m0:find("moe.distributed.all_reduce: " .. tail, 1, true), m0)
      assert.is_truthy(m1:find("moe.distributed.broadcast: " .. tail, 1, true), m1)
    end)

    mpi_it("leave the ranks in step: the next collective works", function()
      local r = get()
      assert.are.same({ "6" }, keyed(r.lines[0], 1).final)
      assert.are.same({ "6" }, keyed(r.lines[1], 1).final)
    end)
  end)

  describe("faults under mpirun", function()
    local FAST = 15 -- seconds: "within seconds"; a hang runs into the 60 s timeout and fails

    mpi_it("a Lua error on rank 1 ends both ranks quickly, naming the rank and the error, on every rank", function()
      local r = mpirun(2, PRELUDE .. [[
if rank == 1 then error("boom from rank one") end
d.barrier()
say("rank 0 went on")
]], { timeout = 60 })
      assert.are_not.equal(0, r.rc)
      assert.are_not.equal(124, r.rc, "timed out: a hang")
      assert.is_true(r.secs < FAST, ("took %.1f s"):format(r.secs))
      assert.is_nil(r.out:find("went on", 1, true))
      local e1 = table.concat(r.errs[1] or {}, "\n")
      assert.is_truthy(e1:find("moelua: rank 1: " .. r.script .. ":6: boom from rank one", 1, true), r.err)
      assert.is_truthy(e1:find("moe.distributed: rank 1 of 2 failed (status 1): ending the job on every rank", 1, true), r.err)
      local e0 = table.concat(r.errs[0] or {}, "\n")
      assert.is_truthy(e0:find("moe.distributed: rank 0 of 2: ended by SIGTERM (mpirun's, when another rank failed or the job was stopped)", 1, true), r.err)
    end)

    mpi_it("a rank that calls os.exit(3) mid-job ends the job, with its status", function()
      local r = mpirun(2, PRELUDE .. [[
if rank == 1 then os.exit(3) end
d.all_reduce(moe.ones(4))
say("rank 0 went on")
]], { timeout = 60 })
      assert.are_not.equal(0, r.rc)
      assert.are_not.equal(124, r.rc, "timed out: a hang")
      assert.is_true(r.secs < FAST, ("took %.1f s"):format(r.secs))
      assert.is_nil(r.out:find("went on", 1, true))
      assert.is_truthy(r.err:find("rank 1 of 2 failed (status 3)", 1, true), r.err)
    end)

    mpi_it("a rank killed by a signal ends the job", function()
      local r = mpirun(2, PRELUDE .. [[
local ffi = require "ffi"
ffi.cdef "int getpid(void); int kill(int pid, int sig);"
if rank == 1 then ffi.C.kill(ffi.C.getpid(), 9) end
d.all_reduce(moe.ones(4))
say("rank 0 went on")
]], { timeout = 60 })
      assert.are_not.equal(0, r.rc)
      assert.are_not.equal(124, r.rc, "timed out: a hang")
      assert.is_true(r.secs < FAST, ("took %.1f s"):format(r.secs))
      assert.is_nil(r.out:find("went on", 1, true))
      assert.is_truthy(r.err:find("signal 9", 1, true), r.err)
    end)
  end)
end)
