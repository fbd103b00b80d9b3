/* device.h -- the CUDA runtime as the engine sees it (src/cuda/runtime.cu when
 * built with MOE_WITH_CUDA; stubs that report "no device" otherwise). */
#ifndef MOE_DEVICE_H
#define MOE_DEVICE_H
#include <stddef.h>

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
#endif
