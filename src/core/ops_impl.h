/* ops_impl.h -- what the engine's op families share (src/core/ops_*.c):
 * dtype rules, broadcasting, and the helpers their backward functions use. */
#ifndef MOE_OPS_IMPL_H
#define MOE_OPS_IMPL_H
#include "autograd_impl.h"
#include "dispatch.h"

static inline int is_compare(moe_binop op) { return op >= MOE_EQ; }

/* dtype the kernel computes in: bool counts as int64 in arithmetic, and true
 * division and pow of integers happen in float32 */
static inline moe_dtype compute_dtype(moe_binop op, moe_dtype dt) {
  if (dt == MOE_BOOL) dt = MOE_I64;
  if ((op == MOE_DIV || op == MOE_POW) && !moe_dtype_is_float(dt)) dt = MOE_F32;
  return dt;
}

/* the broadcast shape of a and b into (ndim, shape), or an error naming op (ops_elementwise.c) */
int moe_broadcast_shapes(const char *op, const moe_tensor *a, const moe_tensor *b, int *ndim, int64_t *shape);

/* ---- for backward functions */
#define TRY(x)           \
  do {                   \
    if (!(x)) goto fail; \
  } while (0)
static inline int is_differentiable(const moe_tensor *out) { return moe_dtype_is_float(out->dtype); }
static inline moe_tensor *retained(const moe_tensor *t) {
  moe_tensor_retain((moe_tensor *)t);
  return (moe_tensor *)t;
}
static inline moe_tensor *mul(const moe_tensor *a, const moe_tensor *b) { return moe_binary(MOE_MUL, a, b); }
static inline moe_tensor *as_float_of(moe_tensor *mask, moe_dtype dt) { /* consumes mask */
  moe_tensor *f = mask ? moe_to_dtype(mask, dt) : NULL;
  moe_tensor_release(mask);
  return f;
}
/* release a list of temporaries */
static inline void drop(int n, moe_tensor **ts) {
  for (int i = 0; i < n; i++) moe_tensor_release(ts[i]);
}
#endif
