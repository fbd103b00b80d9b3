/* device.h -- the CUDA runtime as the engine sees it (src/cuda/runtime.cu when
 * built with MOE_WITH_CUDA; stubs that report "no device" otherwise). */
#ifndef MOE_DEVICE_H
#define MOE_DEVICE_H
#include <stddef.h>

int moe_cuda_device_count(void);               /* 0 without a driver, a device or MOE_WITH_CUDA */
int moe_cuda_device_name(int dev, char *out, size_t len);
int moe_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
void *moe_cuda_malloc(size_t n, size_t *got);  /* NULL: see moe_cuda_last_error() */
void moe_cuda_free(void *p, size_t bytes);
size_t moe_cuda_empty_cache(void);
void moe_cuda_memory_stats(size_t *live, size_t *peak, size_t *cached);
int moe_cuda_copy(void *dst, const void *src, size_t n, int kind); /* 0 h2d, 1 d2h, 2 d2d */
const char *moe_cuda_last_error(void);
int moe_cuda_built(void);                      /* 1 when built with MOE_WITH_CUDA */
#endif
