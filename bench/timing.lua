-- Timing helpers shared by the benchmarks: a monotonic wall clock (moe.now,
-- clock_gettime through LuaJIT's FFI) and best-of-repetitions timing.
local moe = require "moe"
local M = {}

M.now = moe.now

-- best-of-`reps` seconds per call of f, each rep running `iters` calls
function M.best(f, iters, reps)
  local b = math.huge
  for _ = 1, reps do
    local t0 = M.now()
    for _ = 1, iters do f() end
    b = math.min(b, (M.now() - t0) / iters)
  end
  return b
end

-- as best, after running f for `settle` seconds (0.1 unless given) first: on a
-- machine of few cores, the threads of the library timed just before (OpenBLAS
-- spins for a while after each call, OpenMP too) would otherwise share the
-- cores with f's own
function M.settled(f, iters, reps, settle)
  local t0 = M.now()
  repeat f() until M.now() - t0 >= (settle or 0.1)
  return M.best(f, iters, reps)
end

return M
