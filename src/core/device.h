/* device.h -- the CUDA runtime as the engine sees it (src/cuda/runtime.cu when
 * built with MOE_WITH_CUDA; stubs that report "no device" otherwise). */
#ifndef MOE_DEVICE_H
#define MOE_DEVICE_H
#include <stddef.h>
#include <stdint.h>

int moe_cuda_device_count(void); /* 0 without a driver, a device or MOE_WITH_CUDA */
int moe_cuda_device_name(int dev, char *out, size_t len);
int moe_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
void *moe_cuda_malloc(size_t n, size_t *got); /* NULL: see moe_cuda_last_error() */
void moe_cuda_free(void *p, size_t bytes);
size_t moe_cuda_empty_cache(void);
void moe_cuda_memory_stats(size_t *live, size_t *peak, size_t *cached);
int moe_cuda_memcpy(void *dst, const void *src, size_t n, int kind); /* 0 h2d, 1 d2h, 2 d2d */
int moe_cuda_memset(void *p, int v, size_t n);
/* a kernel's failure since the last call (copied into buf, then cleared); 0 if none */
int moe_cuda_take_error(char *buf, size_t len);
/* matmul precision of float32 GEMMs: 0 fp32, 1 tf32, 2 bf16 operands; returns the old one */
int moe_cuda_set_precision(int p);
int moe_cuda_get_precision(void);
const char *moe_cuda_last_error(void);
int moe_cuda_built(void); /* 1 when built with MOE_WITH_CUDA */
/* CUDA's version numbers (1000*major + 10*minor; the driver's is 0 without one) */
int moe_cuda_versions(int *runtime, int *driver);
/* why no device is usable, in plain words; "" when one is */
const char *moe_cuda_unavailable_reason(void);
int moe_cuda_is_emulator(void); /* 1 on the host emulator's build (src/cuda/emu) */
/* the stream the engine's kernels go on now (a cudaStream_t; NULL is the
 * default stream): src/dist/nccl.c enqueues its collectives there */
void *moe_cuda_current_stream(void);
/* fn runs when cudaMalloc fails, before the cache is emptied and the request
 * retried: the binding runs a full Lua collection there (dead tensors' memory) */
void moe_cuda_set_oom_hook(void (*fn)(void));
/* host waits so far: drains (every queued kernel had to finish: a copy to the
 * host, a copy from pageable memory, cudaFree) and event waits */
void moe_cuda_sync_counts(uint64_t *drains, uint64_t *waits);
/* fn (or NULL) runs at each drain, told what it was (moe.cuda.set_sync_debug) */
void moe_cuda_set_sync_hook(void (*fn)(const char *what));
/* pinned (page-locked) host memory of at least n bytes; NULL: moe_cuda_last_error() */
void *moe_cuda_host_alloc(size_t n, size_t *got);
void moe_cuda_host_free(void *p, size_t bytes);
/* device blocks that asynchronous copies write (their own free lists) */
void *moe_cuda_malloc_copy_dst(size_t n, size_t *got);
void moe_cuda_free_copy_dst(void *p, size_t bytes);
/* n bytes from pinned memory (inside the block `block`) to dst on the copy
 * stream: later kernels wait for it, the host does not */
int moe_cuda_copy_to_device_async(void *dst, const void *src, size_t n, void *block);
/* a read for later: up to 16 bytes copied to pinned memory behind the queued work */
typedef struct moe_cuda_read moe_cuda_read;
moe_cuda_read *moe_cuda_read_start(const void *src, size_t n);
int moe_cuda_read_ready(moe_cuda_read *r);
const void *moe_cuda_read_wait(moe_cuda_read *r); /* (counted as a wait when not ready) */
void moe_cuda_read_free(moe_cuda_read *r);
#ifdef MOE_CUDA_EMU_BUILD
/* the emulator's self-checks, for spec/emu_spec.lua (src/cuda/runtime.cu): runs
 * the probe `what`; values it read go to out[0..n) (n returned), -1 unknown */
int moe_cuda_emu_probe(const char *what, double *out, int nout);
#endif
#endif
