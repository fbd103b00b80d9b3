// runtime.cu -- the CUDA runtime under moelua: device queries, device memory
// (through a caching allocator: freed blocks wait in free lists keyed by their
// rounded size for the next request of that size, as host blocks do in
// src/core/alloc.c) and copies. C linkage; the engine reaches it only through
// src/core/device.c.
#include "common.cuh"

#include <deque>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unordered_map>
#include <vector>

static char last_error[320];

/* ---------------------------------------------------------------- kernel errors
 * Kernels return nothing (as their CPU twins); a launch or cuBLAS failure is
 * kept here as the pending error, and the binding raises it after the op. */
static char pending[320];

cudaStream_t moe_cuda_stream(void) { return 0; } /* the default stream: ordered with cudaMemcpy */

void moe_cuda_fail(const char *op, const char *what) {
  if (!pending[0]) snprintf(pending, sizeof pending, "%s: CUDA error: %s", op, what);
}

void moe_cuda_launched(const char *op) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) moe_cuda_fail(op, cudaGetErrorString(e));
}

/* the pending error (copied into buf), cleared; 0 when there is none */
extern "C" int moe_cuda_take_error(char *buf, size_t len) {
  if (!pending[0]) return 0;
  snprintf(buf, len, "%s", pending);
  pending[0] = '\0';
  return 1;
}

extern "C" int moe_cuda_memset(void *p, int v, size_t n) {
  cudaError_t e = cudaMemsetAsync(p, v, n, moe_cuda_stream());
  if (e == cudaSuccess) return 0;
  snprintf(last_error, sizeof last_error, "cudaMemset: %s", cudaGetErrorString(e));
  cudaGetLastError(); /* not left for the next launch to report */
  return -1;
}

static int fail(const char *what, cudaError_t e) {
  snprintf(last_error, sizeof last_error, "%s: %s", what, cudaGetErrorString(e));
  cudaGetLastError(); /* clear the sticky non-fatal error */
  return -1;
}

extern "C" const char *moe_cuda_last_error(void) { return last_error; }

extern "C" int moe_cuda_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) { /* no driver or no device: not an error for the caller */
    fail("cudaGetDeviceCount", e);
    return 0;
  }
  return n;
}

extern "C" int moe_cuda_versions(int *runtime, int *driver) {
  *runtime = *driver = 0;
  cudaRuntimeGetVersion(runtime);
  cudaDriverGetVersion(driver); /* 0 when no driver is installed */
  cudaGetLastError();
  return 0;
}

extern "C" int moe_cuda_is_emulator(void) {
#ifdef MOE_CUDA_EMU
  return 1;
#else
  return 0;
#endif
}

/* why no device is usable, in plain words ("" when one is) */
extern "C" const char *moe_cuda_unavailable_reason(void) {
  static char why[400];
  int n = 0, rt = 0, drv = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  moe_cuda_versions(&rt, &drv);
  cudaGetLastError();
  if (e == cudaSuccess && n > 0) return "";
  if (drv == 0)
    snprintf(why, sizeof why, "no NVIDIA driver is installed (libcuda could not be loaded), so no GPU can be used");
  else if (drv < rt)
    snprintf(why, sizeof why,
             "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime moelua was built with: "
             "update the driver",
             drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
  else if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0))
    snprintf(why, sizeof why, "the NVIDIA driver is loaded but sees no GPU (check CUDA_VISIBLE_DEVICES)");
  else if (e == cudaErrorInsufficientDriver)
    snprintf(why, sizeof why, "the NVIDIA driver is too old for the CUDA %d.%d runtime moelua was built with",
             rt / 1000, rt % 1000 / 10);
  else if (e == cudaErrorNoKernelImageForDevice)
    snprintf(why, sizeof why,
             "the GPU's architecture has no kernels in this build (built for sm_80, sm_90 and "
             "compute_90 PTX)");
  else snprintf(why, sizeof why, "the CUDA runtime found no usable GPU: %s", cudaGetErrorString(e));
  return why;
}

extern "C" int moe_cuda_device_name(int dev, char *out, size_t len) {
  cudaDeviceProp p;
  cudaError_t e = cudaGetDeviceProperties(&p, dev);
  if (e != cudaSuccess) return fail("cudaGetDeviceProperties", e);
  snprintf(out, len, "%s", p.name);
  return 0;
}

extern "C" int moe_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
  cudaError_t e = cudaMemGetInfo(free_bytes, total_bytes);
  return e == cudaSuccess ? 0 : fail("cudaMemGetInfo", e);
}

/* ---------------------------------------------------------------- caching allocator
 * A freed block goes on the free list of its rounded size (no cap on their
 * number: a fixed table used to overflow into synchronising cudaFrees); a
 * request takes the newest block of its size. The cache is given back when a
 * cudaMalloc fails (below) or by moe_cuda_empty_cache. On the emulator a freed
 * block is first filled with junk and kept out of reuse for QUARANTINE more
 * frees, so that a use after free reads garbage instead of a newer tensor. */

#ifdef MOE_CUDA_EMU
#define QUARANTINE 16
#else
#define QUARANTINE 0
#endif
static std::unordered_map<size_t, std::vector<void *>> free_lists;
static std::deque<std::pair<void *, size_t>> quarantine;
static size_t cached_bytes, live_bytes, peak_bytes;
static void (*oom_hook)(void);

static size_t round_up(size_t n) {
  size_t p = 512;
  while (p < n && p < ((size_t)1 << 20)) p *= 2;
  if (n <= p) return p;
  return (n + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1); /* 1 MiB steps above 1 MiB */
}

extern "C" void moe_cuda_set_oom_hook(void (*fn)(void)) { oom_hook = fn; }

extern "C" size_t moe_cuda_empty_cache(void) {
  size_t freed = cached_bytes;
  for (auto &q : quarantine) cudaFree(q.first);
  quarantine.clear();
  for (auto &kv : free_lists)
    for (void *p : kv.second) cudaFree(p);
  free_lists.clear();
  cached_bytes = 0;
  cudaGetLastError();
  return freed;
}

static void *take_cached(size_t want) {
  auto it = free_lists.find(want);
  if (it == free_lists.end() || it->second.empty()) return NULL;
  void *p = it->second.back();
  it->second.pop_back();
  cached_bytes -= want;
#ifdef MOE_CUDA_EMU
  moe_emu_revive(p);
#endif
  return p;
}

/* "1.50 GiB" */
static const char *human(size_t n, char *buf, size_t len) {
  const char *unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)n;
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, u++;
  if (u == 0) snprintf(buf, len, "%zu bytes", n);
  else snprintf(buf, len, "%.2f %s", v, unit[u]);
  return buf;
}

/* device memory of at least n bytes; NULL with the error recorded. When
 * cudaMalloc fails, the binding's hook runs a full Lua collection (dead
 * tensors' blocks come back to the cache), the cache is given back to the
 * driver, and the allocation is tried once more. */
extern "C" void *moe_cuda_malloc(size_t n, size_t *got) {
  static int in_hook;
  size_t want = round_up(n ? n : 1);
  void *p = take_cached(want);
  if (!p) {
    cudaError_t e = cudaMalloc(&p, want);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      if (oom_hook && !in_hook) {
        in_hook = 1;
        oom_hook();
        in_hook = 0;
      }
      moe_cuda_empty_cache();
      e = cudaMalloc(&p, want);
    }
    if (e != cudaSuccess) {
      size_t fr = 0, tot = 0;
      cudaGetLastError();
      cudaMemGetInfo(&fr, &tot);
      cudaGetLastError();
      char a[32], b[32], c[32], d[32];
      snprintf(last_error, sizeof last_error,
               "out of CUDA memory: requested %zu bytes (%s), %zu live (%s), %zu of %zu free (%s of %s)", want,
               human(want, a, sizeof a), live_bytes, human(live_bytes, b, sizeof b), fr, tot, human(fr, c, sizeof c),
               human(tot, d, sizeof d));
      return NULL;
    }
  }
  live_bytes += want;
  if (live_bytes > peak_bytes) peak_bytes = live_bytes;
  *got = want;
  return p;
}

extern "C" void moe_cuda_free(void *p, size_t bytes) {
  if (!p) return;
  live_bytes -= bytes;
  cached_bytes += bytes;
#ifdef MOE_CUDA_EMU
  moe_emu_retire(p);
#endif
  if (QUARANTINE == 0) {
    free_lists[bytes].push_back(p);
    return;
  }
  quarantine.push_back({p, bytes});
  if (quarantine.size() > QUARANTINE) {
    free_lists[quarantine.front().second].push_back(quarantine.front().first);
    quarantine.pop_front();
  }
}

extern "C" void moe_cuda_memory_stats(size_t *live, size_t *peak, size_t *cached) {
  *live = live_bytes;
  *peak = peak_bytes;
  *cached = cached_bytes;
}

/* kind: 0 host->device, 1 device->host, 2 device->device */
extern "C" int moe_cuda_memcpy(void *dst, const void *src, size_t n, int kind) {
  static const cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice};
  cudaError_t e = cudaMemcpy(dst, src, n, kinds[kind]);
  return e == cudaSuccess ? 0 : fail("cudaMemcpy", e);
}

#ifdef MOE_CUDA_EMU
/* ---------------------------------------------------------------- the emulator's self-checks
 * Misuses that moelua's own ops never commit, run on purpose for
 * spec/emu_spec.lua: each records its error as an op would (moe_cuda_launched),
 * so the binding raises it named "emu_probe". */
struct probe_ref { // a pointer the argument check does not look into
  const float *p;
};
__global__ void k_probe_copy(const float *src, float *dst, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src[i];
}
__global__ void k_probe_copy_ref(probe_ref src, float *dst, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src.p[i];
}
__global__ void k_probe_divergent(float *out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void k_probe_barrier(float *out) {
  out[threadIdx.x] = 1;
  __syncthreads();
}
// reads its block's shared memory before writing it: junk, never another block's values
__global__ void k_probe_smem(float *out) {
  MOE_DYN_SMEM(float, sm);
  out[blockIdx.x * blockDim.x + threadIdx.x] = sm[threadIdx.x];
  __syncthreads();
  sm[threadIdx.x] = 1000.0f + blockIdx.x;
}
// every block writes out[0]: the last block wins, so the result depends on the order
__global__ void k_probe_race(float *out) {
  if (threadIdx.x == 0) out[0] = (float)blockIdx.x;
}
// every thread writes sm[0], then all read it: the last thread of the phase wins
__global__ void k_probe_thread_race(float *out) {
  MOE_DYN_SMEM(float, sm);
  sm[0] = (float)threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = sm[0];
}

static float *probe_alloc(int n, size_t *got) { return (float *)moe_cuda_malloc((size_t)n * sizeof(float), got); }

extern "C" int moe_cuda_emu_probe(const char *what, double *out, int nout) {
  const int N = 64;
  float host[N], back[N];
  for (int i = 0; i < N; i++) host[i] = (float)(i + 1);
  size_t g1 = 0, g2 = 0;
  float *a = probe_alloc(N, &g1), *b = probe_alloc(N, &g2);
  if (!a || !b) return -1;
  moe_cuda_memcpy(a, host, sizeof host, 0);
  moe_cuda_memset(b, 0, sizeof back);
  cudaStream_t s = moe_cuda_stream();
  int got = 0;
  if (!strcmp(what, "host_pointer")) {
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, host, b, N);
  } else if (!strcmp(what, "freed_block")) { // freed by moelua: waits in the cache
    size_t g = 0;
    float *f = probe_alloc(N, &g);
    moe_cuda_memcpy(f, host, sizeof host, 0);
    moe_cuda_free(f, g);
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, f, b, N);
  } else if (!strcmp(what, "cudafree_block")) {
    void *f = NULL;
    cudaMalloc(&f, sizeof host);
    cudaFree(f);
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, (const float *)f, b, N);
  } else if (!strcmp(what, "use_after_free")) { // the freed block's values, read through a struct
    size_t g = 0;
    float *f = probe_alloc(N, &g);
    moe_cuda_memcpy(f, host, sizeof host, 0);
    moe_cuda_free(f, g);
    probe_ref r = {f};
    MOE_LAUNCH(k_probe_copy_ref, 1, N, 0, s, r, b, N);
    got = N;
  } else if (!strcmp(what, "use_after_cudafree")) { // the same after cudaFree: PROT_NONE, a crash
    void *f = NULL;
    cudaMalloc(&f, sizeof host);
    cudaFree(f);
    probe_ref r = {(const float *)f};
    MOE_LAUNCH(k_probe_copy_ref, 1, N, 0, s, r, b, N);
    got = N;
  } else if (!strcmp(what, "copy")) { // a correct launch
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, (const float *)a, b, N);
    got = N;
  } else if (!strcmp(what, "bad_config")) {
    MOE_LAUNCH(k_probe_copy, 1, 2048, 0, s, (const float *)a, b, N);
  } else if (!strcmp(what, "divergent_barrier")) {
    MOE_LAUNCH_SYNC(k_probe_divergent, 1, 32, 0, s, b);
  } else if (!strcmp(what, "barrier_in_plain_launch")) {
    MOE_LAUNCH(k_probe_barrier, 1, 32, 0, s, b);
  } else if (!strcmp(what, "smem")) {
    MOE_LAUNCH_SYNC(k_probe_smem, 2, 32, 32 * sizeof(float), s, b);
    got = N;
  } else if (!strcmp(what, "race")) {
    MOE_LAUNCH(k_probe_race, 8, 32, 0, s, b);
    got = 1;
  } else if (!strcmp(what, "thread_race")) {
    MOE_LAUNCH_SYNC(k_probe_thread_race, 1, 32, sizeof(float), s, b);
    got = 32;
  } else if (!strcmp(what, "memcpy_host_as_device")) {
    if (moe_cuda_memcpy(host, a, sizeof host, 2)) moe_cuda_fail("emu_probe", moe_cuda_last_error());
  } else {
    got = -1;
  }
  moe_cuda_launched("emu_probe");
  if (got > 0) {
    moe_cuda_memcpy(back, b, sizeof back, 1);
    if (got > nout) got = nout;
    for (int i = 0; i < got; i++) out[i] = back[i];
  }
  moe_cuda_free(a, g1);
  moe_cuda_free(b, g2);
  return got;
}
#endif
