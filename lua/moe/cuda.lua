-- moe.cuda: the CUDA device, as far as this build goes.
--
--   moe.cuda.is_available()      -- a device and a driver are present (and the backend was built)
--   moe.cuda.device_count()
--   moe.cuda.memory_stats()      -- { live, peak, cached, free, total } in bytes
--   moe.cuda.empty_cache()       -- frees the cached device blocks, returns their bytes
--   moe.cuda.info()              -- the above, with devices (names), runtime_version and driver_version
--                                -- (1000*major + 10*minor; 0: no driver), emulator, and, when no device
--                                -- is usable, reason: why, in plain words
--   t:cuda(), t:cpu(), t:to("cuda"), model:cuda(), model:cpu()
--
--   moe.cuda.set_precision(p)   -- float32 GEMMs on the device: "fp32" (default), "tf32"
--                               -- or "bf16" (operands rounded, fp32 accumulate); returns the old one.
--                               -- The sparse routers' GEMMs stay fp32. A GEMM given "bf16" itself
--                               -- (moe.set_precision's expert GEMMs) runs cuBLAS's bf16 whatever this says
--   moe.set_default_device("cuda")  -- creation functions make CUDA tensors ({device = ...} per call)
--
-- Ops run on the device of their tensor arguments and put their results there;
-- arguments on two devices are an error. Every kernel but ROC-AUC's final sort
-- and cumprod's backward has a CUDA twin (the engine's kernel table,
-- moe.core.backend_kernels(), says which): the MoE layers, the fused
-- optimizers and fit/evaluate/predict (which move each batch to the model's
-- device) all run there.
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
function cuda.set_precision(p) return core.cuda_precision(p) end
function cuda.get_precision() return core.cuda_precision() end

return cuda
