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

return M
