/* tensor_impl.h -- the storage layout, private to the engine (src/core, the
 * kernels in src/cpu and src/cuda, the optimizer); moe.h keeps it opaque. */
#ifndef MOE_TENSOR_IMPL_H
#define MOE_TENSOR_IMPL_H
#include "moe.h"

/* (a host block holds this header in its first MOE_ALIGN bytes: index.c asserts it) */
struct moe_storage {
  void *data;
  size_t nbytes;
  size_t block_bytes; /* bytes of the host block (header included) */
  int refcount;
  moe_device device;
  uint32_t version;    /* bumped by every in-place write (autograd checks it) */
  uint32_t ix_version; /* the index mark's version (below) */
  int8_t pool_class;   /* size class of a recycled host block, -1 if none */
  /* 1: an index the engine wrote (moe_mark_index_range, src/core/index.c): all
   * its int64 elements lie in [ix_lo, ix_hi] while version == ix_version (any
   * write bumps version, and so drops the mark) */
  int8_t ix_marked;
  /* 1: a host block in pinned memory (moe_pin_memory); a device block that an
   * asynchronous copy wrote (moe_to_device_async): each goes back to its own
   * free lists (src/cuda/runtime.cu) */
  int8_t pinned, copy_dst;
  int64_t ix_lo, ix_hi;
};

#endif
