/* device.c -- whether the CUDA backend is built; without it, the device API
 * answers "no device" (so that CPU-only builds run everything else). */
#include "device.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef MOE_WITH_CUDA
int moe_cuda_built(void) { return 1; }
#else
#include <string.h>
int moe_cuda_built(void) { return 0; }
int moe_cuda_device_count(void) { return 0; }
int moe_cuda_device_name(int dev, char *out, size_t len) {
  (void)dev;
  if (len) out[0] = '\0';
  return -1;
}
int moe_cuda_mem_info(size_t *f, size_t *t) {
  *f = *t = 0;
  return -1;
}
void *moe_cuda_malloc(size_t n, size_t *got) {
  (void)n;
  *got = 0;
  return NULL;
}
void moe_cuda_free(void *p, size_t bytes) {
  (void)p;
  (void)bytes;
}
size_t moe_cuda_empty_cache(void) { return 0; }
void moe_cuda_memory_stats(size_t *live, size_t *peak, size_t *cached) { *live = *peak = *cached = 0; }
int moe_cuda_memcpy(void *dst, const void *src, size_t n, int kind) {
  (void)dst;
  (void)src;
  (void)n;
  (void)kind;
  return -1;
}
int moe_cuda_memset(void *p, int v, size_t n) {
  (void)p;
  (void)v;
  (void)n;
  return -1;
}
int moe_cuda_take_error(char *buf, size_t len) {
  (void)buf;
  (void)len;
  return 0;
}
int moe_cuda_set_precision(int p) {
  (void)p;
  return 0;
}
int moe_cuda_get_precision(void) { return 0; }
const char *moe_cuda_last_error(void) { return "moelua was built without the CUDA backend (no nvcc at build time)"; }
int moe_cuda_versions(int *runtime, int *driver) {
  *runtime = *driver = 0;
  return -1;
}
const char *moe_cuda_unavailable_reason(void) { return moe_cuda_last_error(); }
int moe_cuda_is_emulator(void) { return 0; }
void moe_cuda_set_oom_hook(void (*fn)(void)) { (void)fn; }
void moe_cuda_sync_counts(uint64_t *drains, uint64_t *waits) { *drains = *waits = 0; }
void moe_cuda_set_sync_hook(void (*fn)(const char *what)) { (void)fn; }
void *moe_cuda_host_alloc(size_t n, size_t *got) {
  (void)n;
  *got = 0;
  return NULL;
}
void moe_cuda_host_free(void *p, size_t bytes) {
  (void)p;
  (void)bytes;
}
void *moe_cuda_malloc_copy_dst(size_t n, size_t *got) { return moe_cuda_malloc(n, got); }
void moe_cuda_free_copy_dst(void *p, size_t bytes) { moe_cuda_free(p, bytes); }
int moe_cuda_copy_to_device_async(void *dst, const void *src, size_t n, void *block) {
  (void)dst;
  (void)src;
  (void)n;
  (void)block;
  return -1;
}
moe_cuda_read *moe_cuda_read_start(const void *src, size_t n) {
  (void)src;
  (void)n;
  return NULL;
}
int moe_cuda_read_ready(moe_cuda_read *r) {
  (void)r;
  return 1;
}
const void *moe_cuda_read_wait(moe_cuda_read *r) {
  (void)r;
  return NULL;
}
void moe_cuda_read_free(moe_cuda_read *r) { (void)r; }
void *moe_cuda_current_stream(void) { return NULL; }
#endif

/* ---------------------------------------------------------------- the backends' kernels */
#include "dispatch.h"
#include "moe.h"

static const struct {
  const char *name;
  int cuda;
} kernels[MOE_NKERNELS] = {
#define MOE_KERNEL_ROW(n, c) {#n, c},
    MOE_KERNELS(MOE_KERNEL_ROW)
#undef MOE_KERNEL_ROW
};

int moe_backend_supports(moe_device dev, moe_kernel k) {
  if (k < 0 || k >= MOE_NKERNELS) return 0;
  if (dev == MOE_CPU) return 1;
  return dev == MOE_CUDA && moe_cuda_built() && kernels[k].cuda;
}

int moe_backend_require(const char *op, moe_device dev, moe_kernel k) {
  if (moe_backend_supports(dev, k)) return 0;
  return moe_error("%s: not on this backend (%s): its kernel '%s' has no %s version yet; move the tensors "
                   "with :cpu() to run it there",
                   op, dev == MOE_CUDA ? "cuda" : "cpu", moe_kernel_name(k), dev == MOE_CUDA ? "CUDA" : "CPU");
}

const char *moe_kernel_name(moe_kernel k) { return k >= 0 && k < MOE_NKERNELS ? kernels[k].name : "?"; }

void moe_kh_cpu_only(moe_device dev, const char *kernel) {
  if (dev == MOE_CPU) return;
  fprintf(stderr,
          "moelua: engine bug: the CPU-only kernel '%s' was called on a device tensor without "
          "moe_backend_require (src/core/dispatch.h)\n",
          kernel);
  abort();
}
