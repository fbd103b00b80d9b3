/* tensor_impl.h -- the storage layout, private to the engine (src/core, the
 * kernels in src/cpu and src/cuda, the optimizer); moe.h keeps it opaque. */
#ifndef MOE_TENSOR_IMPL_H
#define MOE_TENSOR_IMPL_H
#include "moe.h"

struct moe_storage {
  void *data;
  size_t nbytes;
  int refcount;
  moe_device device;
  uint32_t version;   /* bumped by every in-place write (autograd checks it) */
  int8_t pool_class;  /* size class of a recycled host block, -1 if none */
  size_t block_bytes; /* bytes of the host block (header included) */
};
#endif
