/* dispatch.h -- the one place that picks a backend: MOE_K(name, dev, args...)
 * is moe_cuda_<name>(args) for a CUDA tensor and moe_cpu_<name>(args)
 * otherwise (an expression: it has the kernels' result, if any). The two families have the same signatures (src/cpu/cpu.h,
 * src/cuda/cuda.h). Without the CUDA backend no tensor can be on the device. */
#ifndef MOE_DISPATCH_H
#define MOE_DISPATCH_H
#include "../cpu/cpu.h"
#include "device.h"

#ifdef MOE_WITH_CUDA
#include "../cuda/cuda.h"
#define MOE_K(name, dev, ...) \
  ((dev) == MOE_CUDA ? moe_cuda_##name(__VA_ARGS__) : moe_cpu_##name(__VA_ARGS__))
#else
#define MOE_K(name, dev, ...) moe_cpu_##name(__VA_ARGS__)
#endif

/* 0 when every non-NULL tensor of ts is on one device; else -1 and an error
 * naming op and both devices (src/core/tensor.c) */
int moe_same_device(const char *op, int n, const moe_tensor *const *ts);
#endif
