// common.cuh -- what every moelua CUDA kernel file shares: launch macros (real
// launches under nvcc; the host emulator of src/cuda/emu under g++), the
// engine's types, the stream, error recording and a strided N-d iterator.
#ifndef MOE_CUDA_COMMON_CUH
#define MOE_CUDA_COMMON_CUH
#include <cuda_runtime.h>
#include <stdint.h>
#include <type_traits>

extern "C" {
#include "../core/moe.h"
#include "../core/tensor_impl.h"
#include "cuda.h"
#include "../core/device.h"
}

#ifndef MOE_CUDA_EMU
// MOE_LAUNCH: kernels without barriers; MOE_LAUNCH_SYNC: kernels with __syncthreads
// (the emulator runs their threads as fibers; on a device both are plain launches)
#define MOE_LAUNCH(k, g, b, sm, st, ...) k<<<(g), (b), (sm), (st)>>>(__VA_ARGS__)
#define MOE_LAUNCH_SYNC(k, g, b, sm, st, ...) k<<<(g), (b), (sm), (st)>>>(__VA_ARGS__)
#define MOE_DYN_SMEM(type, name) extern __shared__ type name[]
// the same, for use inside a MOE_DTYPE_SWITCH (a macro does not expand inside itself)
#define MOE_DTYPE_SWITCH2(dt, F)   \
  switch (dt) {                    \
  case MOE_F32: F(float); break;   \
  case MOE_F64: F(double); break;  \
  case MOE_I32: F(int32_t); break; \
  case MOE_I64: F(int64_t); break; \
  default: F(uint8_t); break;      \
  }

#endif

// the stream every moelua kernel and cuBLAS call goes on (runtime.cu)
cudaStream_t moe_cuda_stream(void);
// after a launch: a launch error becomes the backend's pending error, named by op
void moe_cuda_launched(const char *op);
// records an error for the engine to raise after the current op
void moe_cuda_fail(const char *op, const char *what);

static inline unsigned moe_blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : b > 65535 * 32 ? 65535 * 32 : b);
}

// up to 4 operands of one shape, dims coalesced where all are contiguous
// across them; strides in elements
struct moe_iter {
  int nd, nops;
  int64_t n;
  int64_t shape[MOE_MAX_DIMS];
  int64_t st[4][MOE_MAX_DIMS];
  int contiguous; // every operand steps by 1 over a single dim
};

static inline moe_iter moe_iter_make(int nops, const moe_tensor *const *ops) {
  moe_iter it;
  memset(&it, 0, sizeof it);
  it.nops = nops;
  const moe_tensor *t0 = ops[0];
  int nd = 0;
  it.n = 1;
  for (int i = 0; i < t0->ndim; i++) {
    it.n *= t0->shape[i];
    if (t0->shape[i] == 1) continue;
    it.shape[nd] = t0->shape[i];
    for (int k = 0; k < nops; k++) it.st[k][nd] = ops[k]->stride[i];
    nd++;
  }
  int m = 0;
  for (int d = 0; d < nd; d++) {
    if (m > 0) {
      int ok = 1;
      for (int k = 0; k < nops; k++)
        if (it.st[k][m - 1] != it.st[k][d] * it.shape[d]) {
          ok = 0;
          break;
        }
      if (ok) {
        it.shape[m - 1] *= it.shape[d];
        for (int k = 0; k < nops; k++) it.st[k][m - 1] = it.st[k][d];
        continue;
      }
    }
    it.shape[m] = it.shape[d];
    for (int k = 0; k < nops; k++) it.st[k][m] = it.st[k][d];
    m++;
  }
  it.nd = m;
  it.contiguous = m <= 1;
  for (int k = 0; k < nops && m == 1; k++) it.contiguous &= it.st[k][0] == 1;
  return it;
}

// element offsets of flat position i (row-major over the iterator's shape)
__device__ __forceinline__ void moe_iter_offsets(const moe_iter &it, int64_t i, int64_t *off) {
  for (int k = 0; k < it.nops; k++) off[k] = 0;
  for (int d = it.nd - 1; d >= 0; d--) {
    int64_t q = i % it.shape[d];
    i /= it.shape[d];
    for (int k = 0; k < it.nops; k++) off[k] += q * it.st[k][d];
  }
}

#define MOE_GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// a call per dtype: F(T) for float, double, int32_t, int64_t, uint8_t
#define MOE_DTYPE_SWITCH(dt, F)    \
  switch (dt) {                    \
  case MOE_F32: F(float); break;   \
  case MOE_F64: F(double); break;  \
  case MOE_I32: F(int32_t); break; \
  case MOE_I64: F(int64_t); break; \
  default: F(uint8_t); break;      \
  }

// the same, for use inside a MOE_DTYPE_SWITCH (a macro does not expand inside itself)
#define MOE_DTYPE_SWITCH2(dt, F)   \
  switch (dt) {                    \
  case MOE_F32: F(float); break;   \
  case MOE_F64: F(double); break;  \
  case MOE_I32: F(int32_t); break; \
  case MOE_I64: F(int64_t); break; \
  default: F(uint8_t); break;      \
  }

#endif
