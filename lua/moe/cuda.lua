-- moe.cuda: the CUDA device, as far as this build goes.
--
--   moe.cuda.is_available()      -- a device and a driver are present (and the backend was built)
--   moe.cuda.device_count()
--   moe.cuda.memory_stats()      -- { live, peak, cached, free, total } in bytes
--   moe.cuda.empty_cache()       -- frees the cached device blocks, returns their bytes
--   t:cuda(), t:cpu(), t:to("cuda"), model:cuda(), model:cpu()
--
-- The backend's kernels are the next step of the CUDA issue: tensors move to
-- and from the device (through a caching allocator), and any op given a CUDA
-- tensor says it has no CUDA kernel yet.
local moe = require "moe"
local core = moe.core

local cuda = {}

function cuda.info() return core.cuda_info() end
function cuda.device_count() return core.cuda_info().device_count end
function cuda.is_available() return cuda.device_count() > 0 end
function cuda.is_built() return core.cuda_info().built end
function cuda.memory_stats()
  local i = core.cuda_info()
  return { live = i.live, peak = i.peak, cached = i.cached, free = i.free, total = i.total }
end
function cuda.empty_cache() return core.cuda_empty_cache() end

return cuda
