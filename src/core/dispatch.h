/* dispatch.h -- the one place that picks a backend.
 *
 * MOE_KERNELS lists every kernel the engine reaches, with the backends that
 * have it: X(name, cuda) where cuda is 1 when src/cuda/ has moe_cuda_<name>
 * (the CPU has every one, as moe_cpu_<name> in src/cpu/). An op asks first,
 * moe_backend_require(op, dev, MOE_KERNEL_<name>), which is an error naming
 * the op and the device when that backend lacks the kernel ("not on this
 * backend"): never a host loop over device memory. Then:
 *   MOE_K(name, dev, args...)  moe_cuda_<name>(args) for a CUDA tensor and
 *                              moe_cpu_<name>(args) otherwise (an expression:
 *                              it has the kernel's result, if any);
 *   MOE_KH(name, dev, args...) a kernel that only the CPU has (after the
 *                              require above, dev is the CPU).
 * The two families have the same signatures (src/cpu/cpu.h, src/cuda/cuda.h).
 * Without the CUDA backend no tensor can be on the device. Adding a kernel:
 * one line here, its CPU function, its CUDA twin (or 0), and a row of
 * spec/backend_spec.lua's table. */
#ifndef MOE_DISPATCH_H
#define MOE_DISPATCH_H
#include "../cpu/cpu.h"
#include "device.h"

// clang-format off
#define MOE_KERNELS(X)                                                                            \
  /* elementwise (src/cpu/elementwise.c, src/cuda/elementwise.cu) */                              \
  X(binary, 1) X(unary, 1) X(unary_backward, 1) X(where, 1) X(copy, 1) X(fill, 1)                 \
  /* random draws (src/cpu/random.c, src/cuda/rng.cu) */                                          \
  X(random, 1)                                                                                    \
  /* reductions and scans (src/cpu/reduce.c, src/cuda/reduce.cu) */                               \
  X(reduce_rows, 1) X(sum_middle, 1) X(scan_rows, 1) X(cumprod_backward, 0)                       \
  /* GEMMs (src/cpu/matmul.c, src/cpu/bf16.c, src/cuda/matmul.cu) */                              \
  X(gemm_batched, 1) X(gemm_add, 1) X(gemm_bf16, 1)                                               \
  /* sorting and indexing (src/cpu/index.c, src/cuda/index.cu) */                                 \
  X(argsort_rows, 1) X(take_rows, 1) X(gather, 1) X(scatter_add, 1) X(index_select, 1)            \
  X(index_add, 1) X(index_check, 1) X(bincount, 1) /* (its CUDA twin: src/cuda/moe.cu) */        \
  /* losses and metrics (src/cpu/losses.c, src/cuda/losses.cu) */                                 \
  X(bce, 1) X(bce_backward, 1) X(roc_auc, 0)                                                      \
  /* MoE layers (src/cpu/moe.c; src/cuda/moe.cu: the dense mixtures, route.cu: the sparse layer) */   \
  X(mixture, 1) X(mixture_backward, 1) X(gate_scale, 1) X(gate_scale_backward, 1)                 \
  X(route_plan, 1) X(grouped_gemm, 1) X(grouped_gemm_backward, 1)                                 \
  /* optimizers (src/cpu/optim.c, src/cuda/optim.cu) */                                          \
  X(optim_update, 1)
// clang-format on

typedef enum {
#define MOE_KERNEL_ENUM(name, cuda) MOE_KERNEL_##name,
  MOE_KERNELS(MOE_KERNEL_ENUM)
#undef MOE_KERNEL_ENUM
      MOE_NKERNELS
} moe_kernel;

/* 1 when dev's backend has kernel k */
int moe_backend_supports(moe_device dev, moe_kernel k);
/* 0 when it does; else -1 and "op: not on this backend (cuda): ..." */
int moe_backend_require(const char *op, moe_device dev, moe_kernel k);
const char *moe_kernel_name(moe_kernel k);

#ifdef MOE_WITH_CUDA
#include "../cuda/cuda.h"
#define MOE_K(name, dev, ...) ((dev) == MOE_CUDA ? moe_cuda_##name(__VA_ARGS__) : moe_cpu_##name(__VA_ARGS__))
#else
#define MOE_K(name, dev, ...) moe_cpu_##name(__VA_ARGS__)
#endif
/* (dev must be the CPU here: the op asked moe_backend_require first; a caller
 * that did not is an engine bug, stopped before host code reads device memory) */
#define MOE_KH(name, dev, ...) (moe_kh_cpu_only((dev), #name), moe_cpu_##name(__VA_ARGS__))
void moe_kh_cpu_only(moe_device dev, const char *kernel);

/* 0 when every non-NULL tensor of ts is on one device; else -1 and an error
 * naming op and both devices (src/core/tensor.c) */
int moe_same_device(const char *op, int n, const moe_tensor *const *ts);
#endif
