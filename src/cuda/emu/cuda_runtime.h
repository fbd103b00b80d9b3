// cuda_runtime.h (emulator) -- what moelua's kernels use of the CUDA runtime,
// for g++ on a machine without a GPU. `make emu-test` builds src/cuda/*.cu
// against this directory instead of the toolkit, so the same kernel source runs
// on the host:
//  - a launch runs every block in turn; threads of a block run as fibers, and
//    __syncthreads() switches to the next fiber, so shared memory and barriers
//    behave as on a device (MOE_LAUNCH_SYNC); kernels without barriers run their
//    threads as a plain loop (MOE_LAUNCH), where a barrier is reported;
//  - the order threads run in between barriers is shuffled per launch, which
//    exposes a missing barrier between a write and a read of shared memory;
//  - device memory lies in its own arena that host code cannot read or write
//    outside a launch or a cudaMemcpy (PROT_NONE): an engine bug that touches
//    device memory from the host crashes the spec instead of passing silently;
//  - cudaMemcpy checks its pointers against the copy's direction.
// It checks logic, index arithmetic and API use, not speed or memory ordering.
#ifndef MOE_EMU_CUDA_RUNTIME_H
#define MOE_EMU_CUDA_RUNTIME_H
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#define MOE_CUDA_EMU 1
// device code calls the float overloads unqualified, as CUDA's math headers allow
using std::ceil;
using std::erf;
using std::exp;
using std::expm1;
using std::fabs;
using std::floor;
using std::log;
using std::log1p;
using std::pow;
using std::rint;
using std::sqrt;
using std::tanh;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
typedef dim3 uint3;
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
#define warpSize 32

typedef enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719
} cudaError_t;
typedef enum { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 } cudaMemcpyKind;
typedef struct moe_emu_stream *cudaStream_t;
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem, sharedMemPerBlock;
  int major, minor, multiProcessorCount, maxThreadsPerBlock;
};

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t s = 0);
cudaError_t cudaMemset(void *p, int v, size_t n);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s = 0);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
const char *cudaGetErrorString(cudaError_t e);

// ---- device-side builtins
void __syncthreads(void);
template <class T> static inline T atomicAdd(T *p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <class T> static inline T atomicMax(T *p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}
template <class T> static inline T atomicMin(T *p, T v) {
  T old = *p;
  if (v < old) *p = v;
  return old;
}
template <class T> static inline T atomicCAS(T *p, T cmp, T v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}
static inline float __int_as_float(int i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
static inline int __float_as_int(float f) {
  int i;
  memcpy(&i, &f, 4);
  return i;
}
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __fdividef(float a, float b) { return a / b; }
// warp shuffles: every thread of the block must take part (as in moelua's kernels)
float moe_emu_shfl_xor(float v, int lane);
double moe_emu_shfl_xor_d(double v, int lane);
static inline float __shfl_xor_sync(unsigned, float v, int lane) { return moe_emu_shfl_xor(v, lane); }
static inline double __shfl_xor_sync(unsigned, double v, int lane) { return moe_emu_shfl_xor_d(v, lane); }
static inline int __shfl_xor_sync(unsigned, int v, int lane) { return (int)moe_emu_shfl_xor_d(v, lane); }
void *moe_emu_dyn_smem(void);

// ---- launches
void moe_emu_launch(const char *name, dim3 grid, dim3 block, size_t smem, int sync, const std::function<void()> &body);
// device pointers: the arena is readable inside these brackets (cuBLAS shim)
void moe_emu_unlock(void);
void moe_emu_lock(void);
int moe_emu_is_device(const void *p);

#define MOE_LAUNCH(k, g, b, sm, st, ...) ((void)(st), moe_emu_launch(#k, g, b, sm, 0, [=]() { k(__VA_ARGS__); }))
#define MOE_LAUNCH_SYNC(k, g, b, sm, st, ...) ((void)(st), moe_emu_launch(#k, g, b, sm, 1, [=]() { k(__VA_ARGS__); }))
#define MOE_DYN_SMEM(type, name) type *name = (type *)moe_emu_dyn_smem()
#endif
