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
#endif
