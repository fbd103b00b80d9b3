-- Timing helpers shared by the benchmarks: a monotonic wall clock (through
-- LuaJIT's FFI) and best-of-repetitions timing.
local ffi = require "ffi"
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } moe_bench_timespec;
int clock_gettime(int clk, moe_bench_timespec *ts);
]]
local ts = ffi.new("moe_bench_timespec")
local M = {}

function M.now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

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
