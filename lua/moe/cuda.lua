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
--   moe.cuda.syncs()            -- { drains = n, waits = n }: the host's waits for the device so far.
--                               -- A drain waits for every queued kernel (a read of a device value:
--                               -- t:item(), t:cpu(); a large copy from ordinary host memory); a wait
--                               -- waits on one event while later work keeps the device busy
--   moe.cuda.set_sync_debug("warn" | "off")  -- "warn": each drain prints what it was and the Lua
--                               -- stack that caused it (as torch.cuda.set_sync_debug_mode)
--   t:pin_memory(), t:is_pinned() -- a host copy in page-locked memory (copies from it run
--                               -- asynchronously); fit gathers its batches there for a device model
--
-- A training step of fit on the device drains nothing but the one read per
-- sparse MoE layer that sizes its grouped GEMM (the kept-token counts): each
-- batch is gathered into pinned memory and copied on a second stream, small
-- host values (an arange, a scalar) travel through pinned staging buffers, the
-- loss is copied back behind the forward pass and read with an event wait,
-- after backward and the update are queued (a non-finite loss calls the update
-- off on the device), and metrics are summed on the device until the epoch ends.
--
-- Ops run on the device of their tensor arguments and put their results there;
-- arguments on two devices are an error. Every kernel but ROC-AUC's final sort
-- and cumprod's backward has a CUDA twin (the engine's kernel table,
-- moe.core.backend_kernels(), says which): the MoE layers, the fused
-- optimizers and fit/evaluate/predict (which move each batch to the model's
-- device) all run there.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
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
function cuda.syncs()
  local d, w = core.cuda_syncs()
  return { drains = d, waits = w }
end
function cuda.set_sync_debug(mode)
  if mode ~= "warn" and mode ~= "off" then
    error(moe._where(("moe.cuda.set_sync_debug: mode must be \"warn\" or \"off\", got %s"):format(
      moe._show(mode))), 0)
  end
  core.cuda_sync_debug(mode == "warn")
end

return cuda
