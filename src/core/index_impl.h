/* index_impl.h -- the index checks that index.c's ops and gather.c share */
#ifndef MOE_INDEX_IMPL_H
#define MOE_INDEX_IMPL_H
#include "moe.h"

/* index as contiguous int64 with every value in [ibase, ibase + size - 1]: its
 * data (*hold keeps it alive; release it), or NULL with an error naming op */
const int64_t *moe_checked_index(const char *op, const moe_tensor *index, int64_t size, int64_t ibase,
                                 moe_tensor **hold);
/* 0 when index is 0-D or 1-D, else -1 with an error naming op */
int moe_check_vector_index(const char *op, const moe_tensor *index);

/* An op that has just written the int64 index tensor t (contiguous) with values
 * in [lo, hi] records it, so that moe_checked_index skips the check (a device
 * round trip) while t's storage is not written again. Any other t: ignored. */
void moe_mark_index_range(const moe_tensor *t, int64_t lo, int64_t hi);
/* how many index checks moe_checked_index has run (a counter for the specs) */
int64_t moe_index_checks(void);
#endif
