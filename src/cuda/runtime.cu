// runtime.cu -- the CUDA runtime under moelua: device queries, device memory
// (through a caching allocator: freed blocks wait for the next request of their
// size, as host blocks do in src/core/tensor.c) and copies. C linkage; the
// engine reaches it only through src/core/device.c.
#include "common.cuh"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

static char last_error[256];

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
  return e == cudaSuccess ? 0 : (snprintf(last_error, sizeof last_error, "cudaMemset: %s", cudaGetErrorString(e)), -1);
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

/* ---------------------------------------------------------------- caching allocator */

#define SLOTS 256
static struct {
  void *p;
  size_t bytes;
} cache[SLOTS];
static int ncached;
static size_t cached_bytes, live_bytes, peak_bytes;

static size_t round_up(size_t n) {
  size_t p = 512;
  while (p < n && p < ((size_t)1 << 20)) p *= 2;
  if (n <= p) return p;
  return (n + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1); /* 1 MiB steps above 1 MiB */
}

extern "C" size_t moe_cuda_empty_cache(void) {
  size_t freed = cached_bytes;
  for (int i = 0; i < ncached; i++) cudaFree(cache[i].p);
  ncached = 0;
  cached_bytes = 0;
  return freed;
}

/* device memory of at least n bytes; NULL with the error recorded (an
 * out-of-memory first frees the cache and tries again) */
extern "C" void *moe_cuda_malloc(size_t n, size_t *got) {
  size_t want = round_up(n ? n : 1);
  for (int i = 0; i < ncached; i++)
    if (cache[i].bytes == want) {
      void *p = cache[i].p;
      cached_bytes -= want;
      cache[i] = cache[--ncached];
      live_bytes += want;
      if (live_bytes > peak_bytes) peak_bytes = live_bytes;
      *got = want;
      return p;
    }
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, want);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    moe_cuda_empty_cache();
    e = cudaMalloc(&p, want);
  }
  if (e != cudaSuccess) {
    size_t fr = 0, tot = 0;
    cudaGetLastError();
    cudaMemGetInfo(&fr, &tot);
    snprintf(last_error, sizeof last_error, "out of CUDA memory allocating %zu bytes (%zu of %zu bytes free, %zu live)",
             want, fr, tot, live_bytes);
    return NULL;
  }
  live_bytes += want;
  if (live_bytes > peak_bytes) peak_bytes = live_bytes;
  *got = want;
  return p;
}

extern "C" void moe_cuda_free(void *p, size_t bytes) {
  if (!p) return;
  live_bytes -= bytes;
  if (ncached < SLOTS) {
    cache[ncached].p = p;
    cache[ncached++].bytes = bytes;
    cached_bytes += bytes;
  } else {
    cudaFree(p);
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
