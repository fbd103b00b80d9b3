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
//  - new and freed blocks are filled with junk (0xCD bytes), and the runtime's
//    cache (runtime.cu) holds a freed block back for 16 frees, so a use after
//    free reads junk rather than a newer tensor; cudaFree'd blocks stay
//    PROT_NONE, even inside launches, for the next 64 cudaFrees (a crash);
//  - cudaMemcpy/cudaMemset check their ranges, and every raw pointer argument
//    of a launch must be NULL or inside a live block (not host memory, not a
//    freed block); structs passed by value are not looked into;
//  - dynamic shared memory is junk (0xA5) at the start of every block; static
//    __shared__ arrays are C++ statics here: zero at first, then whatever the
//    previous block left (MOE_EMU_TWICE's reversed block order exposes a read
//    of those before a write);
//  - misuse becomes the sticky error cudaGetLastError returns (the engine
//    raises it naming the op), with a sentence saying what: an invalid launch
//    configuration, a divergent barrier, a barrier in a MOE_LAUNCH kernel, a
//    bad pointer argument, a bad cudaMemcpy/cudaMemset/cudaFree;
//  - MOE_EMU_TWICE=1 runs every launch twice, the second time with blocks and
//    threads in other orders, from the same device memory, and compares what
//    they wrote byte for byte (a race or order dependence is a launch failure
//    naming the kernel). Slow: opt-in;
//  - MOE_EMU_NO_DEVICE, MOE_EMU_OLD_DRIVER, MOE_EMU_NO_DRIVER: the ways a
//    machine has no usable device, as CUDA reports them.
// It checks logic, index arithmetic and API use, not speed or memory ordering.
#ifndef MOE_EMU_CUDA_RUNTIME_H
#define MOE_EMU_CUDA_RUNTIME_H
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#define MOE_CUDA_EMU 1
#define CUDART_VERSION 12040
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
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorIllegalAddress = 700,
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
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
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
// streams, events and pinned host memory: the emulator runs each call at once,
// in order, so a stream never lags and an event is complete when recorded
#define cudaStreamNonBlocking 1
#define cudaEventDisableTiming 2
#define cudaHostAllocDefault 0
typedef struct moe_emu_event *cudaEvent_t;
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags);
cudaError_t cudaFreeHost(void *p);
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
void moe_emu_unlock_all(void); // (every live block at once: the cuBLAS shims)
void moe_emu_lock(void);
int moe_emu_is_device(const void *p);
// moelua's caching allocator (runtime.cu) took a block back / handed it out again
void moe_emu_retire(void *p);
void moe_emu_revive(void *p);

// a launch's raw pointer arguments (T*): NULL or inside a live device block;
// 1 (and the sticky cudaErrorIllegalAddress) for the first that is not
int moe_emu_check_ptr(const char *kernel, int arg, const void *p);
template <class T> static inline int moe_emu_check_arg(const char *k, int i, const T &v) {
  typedef typename std::decay<T>::type D;
  if constexpr (std::is_pointer<D>::value && !std::is_function<typename std::remove_pointer<D>::type>::value)
    return moe_emu_check_ptr(k, i, (const void *)(D)v);
  else return 0;
}
template <class... A> static inline int moe_emu_check_args(const char *k, const A &...a) {
  int i = 0, bad = 0;
  ((bad = bad ? bad : moe_emu_check_arg(k, ++i, a)), ...);
  return bad;
}

#define MOE_LAUNCH(k, g, b, sm, st, ...) \
  ((void)(st),                           \
   moe_emu_check_args(#k, __VA_ARGS__) ? (void)0 : moe_emu_launch(#k, g, b, sm, 0, [=]() { k(__VA_ARGS__); }))
#define MOE_LAUNCH_SYNC(k, g, b, sm, st, ...) \
  ((void)(st),                                \
   moe_emu_check_args(#k, __VA_ARGS__) ? (void)0 : moe_emu_launch(#k, g, b, sm, 1, [=]() { k(__VA_ARGS__); }))
#define MOE_DYN_SMEM(type, name) type *name = (type *)moe_emu_dyn_smem()
#endif
