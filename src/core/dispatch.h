/* dispatch.h -- the one place that picks a backend: MOE_K(name, dev, args...)
 * calls moe_cuda_<name>(args) for a CUDA tensor and moe_cpu_<name>(args)
 * otherwise. The two families have the same signatures (src/cpu/cpu.h,
 * src/cuda/cuda.h). Without the CUDA backend no tensor can be on the device. */
#ifndef MOE_DISPATCH_H
#define MOE_DISPATCH_H
#include "../cpu/cpu.h"
#include "device.h"

#ifdef MOE_WITH_CUDA
#include "../cuda/cuda.h"
#define MOE_K(name, dev, ...)                                       \
  do {                                                              \
    if ((dev) == MOE_CUDA) moe_cuda_##name(__VA_ARGS__);            \
    else moe_cpu_##name(__VA_ARGS__);                               \
  } while (0)
#else
#define MOE_K(name, dev, ...) moe_cpu_##name(__VA_ARGS__)
#endif

/* The device new tensors are allocated on (moe_empty and friends): the binding
 * sets it to the device of an op's tensor arguments for the length of the op,
 * and back to the CPU for everything else. */
moe_device moe_alloc_device(void);
moe_device moe_set_alloc_device(moe_device d);  /* returns the previous one */

/* 0 when all n tensors (NULLs skipped) are on one device, else -1 with an error
 * naming op and both devices */
int moe_same_device(const char *op, int n, const moe_tensor *const *ts);
#endif
