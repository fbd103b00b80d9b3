/* alloc.h -- the allocator's private interface (src/core/alloc.c) for tensor.c */
#ifndef MOE_ALLOC_H
#define MOE_ALLOC_H
#include "moe.h"

/* nbytes of host storage (refcount 1), or NULL with an error */
moe_storage *storage_new(size_t nbytes);
/* a host header over nbytes of device memory, or NULL with an error */
moe_storage *device_storage_new(size_t nbytes);
/* ... and one for an asynchronous copy to write (copy_dst 1: its own free lists) */
moe_storage *device_storage_new_for(size_t nbytes, int copy_dst);
/* nbytes of host storage in pinned memory (CUDA builds), or NULL with an error */
moe_storage *pinned_storage_new(size_t nbytes);
void storage_release(moe_storage *s);
/* a zeroed tensor header (refcount 1) counted live, and its return */
moe_tensor *tensor_alloc(void);
void tensor_free(moe_tensor *t);
#endif
