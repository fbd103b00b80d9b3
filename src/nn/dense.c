/* dense.c -- the Dense layer as one op: y = act(x W + b).
 *
 * x [..., K], w [K, N], b [N] or NULL -> y [..., N]; act: none, relu, sigmoid or
 * tanh (moe_unop; -1 for none), applied in place on the output. The output rows
 * start as the bias and one GEMM accumulates x W into them (as BLAS's beta = 1,
 * PyTorch's addmm), so the bias costs no separate pass. Backward: the
 * activation's derivative from the saved output (relu: y > 0; sigmoid: y(1-y);
 * tanh: 1-y^2) gives gz, then gx = gz W^T, gW = x^T gz over all leading dims,
 * gb = column sums of gz.
 *
 * prec MOE_PREC_BF16 (float32 only): the forward GEMM and both backward GEMMs
 * (saved in the node, iarg[1]) run on operands rounded to bfloat16 with fp32
 * sums; the bias, the activation and its derivative, and gb stay fp32. */
#include "../core/moe.h"
#include "../core/autograd_impl.h"
#include "../core/dispatch.h"

#include <string.h>

static int linear_backward(moe_node *n, const moe_tensor *g0, moe_tensor **gin) {
  const moe_tensor *x = MOE_SAVED(n, 0), *w = MOE_SAVED(n, 1);
  if ((n->saved[0] && !x) || (n->saved[1] && !w)) return -1;
  moe_precision prec = (moe_precision)n->iarg[1];
  moe_tensor *gz = NULL;
  const moe_tensor *g = g0;
  if (n->iarg[0] >= 0) { /* through the activation, from the saved output */
    const moe_tensor *y = moe_node_saved(n, 2);
    moe_tensor *gc = y ? moe_contiguous(g0) : NULL;
    gz = gc ? moe_empty_on(y->device, y->ndim, y->shape, y->dtype) : NULL;
    if (gz) MOE_K(unary_backward, gz->device, (moe_unop)n->iarg[0], gz, gc, y, y, 0, 0);
    moe_tensor_release(gc);
    if (!gz) return -1;
    g = gz;
  }
  int64_t N = g->shape[g->ndim - 1];
  int64_t g2s[2] = {-1, N};
  moe_tensor *g2 = moe_reshape(g, 2, g2s), *t = NULL;
  moe_tensor_release(gz);
  if (!g2) return -1;
  int rc = -1;
  if (moe_node_needs(n, 0)) { /* gx [M,K] = g [M,N] @ W^T, then x's shape */
    if (!(t = moe_transpose(w, 0, 1))) goto done;
    moe_tensor *gx = moe_matmul_prec(g2, t, prec);
    moe_tensor_release(t);
    t = NULL;
    if (!gx) goto done;
    gin[0] = moe_reshape(gx, n->edges[0].ndim, n->edges[0].shape);
    moe_tensor_release(gx);
    if (!gin[0]) goto done;
  }
  if (moe_node_needs(n, 1)) { /* gW [K,N] = x^T [K,M] @ g [M,N] */
    int64_t K = n->edges[1].shape[0], xs[2] = {-1, K};
    moe_tensor *x2 = moe_reshape(x, 2, xs);
    moe_tensor *xt = x2 ? moe_transpose(x2, 0, 1) : NULL;
    gin[1] = xt ? moe_matmul_prec(xt, g2, prec) : NULL;
    moe_tensor_release(x2);
    moe_tensor_release(xt);
    if (!gin[1]) goto done;
  }
  if (n->nin > 2 && moe_node_needs(n, 2) && !(gin[2] = moe_reduce(MOE_RSUM, g2, 1, 0, 0, NULL, 0))) goto done;
  rc = 0;
done:
  moe_tensor_release(g2);
  return rc;
}

moe_tensor *moe_linear(const moe_tensor *x, const moe_tensor *w, const moe_tensor *b, int act, moe_precision prec) {
  char b1[160], b2[160], b3[160];
  const moe_tensor *xwb[3] = {x, w, b};
  if (moe_same_device("linear", 3, xwb)) return NULL;
  if (act >= 0 && act != MOE_RELU && act != MOE_SIGMOID && act != MOE_TANH) {
    moe_error("linear: the fused activation must be relu, sigmoid or tanh");
    return NULL;
  }
  if (!moe_dtype_is_float(x->dtype) || x->dtype != w->dtype || (b && b->dtype != w->dtype)) {
    moe_error("linear: input, kernel and bias must have one float dtype, got input %s, kernel %s, bias %s",
              moe_dtype_name(x->dtype), moe_dtype_name(w->dtype), b ? moe_dtype_name(b->dtype) : "(none)");
    return NULL;
  }
  if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[0] ||
      (b && (b->ndim != 1 || b->shape[0] != w->shape[1]))) {
    moe_error("linear: input %s, kernel [K,N] %s and bias [N] %s do not fit", moe_shape_str(x, b1),
              moe_shape_str(w, b2), b ? moe_shape_str(b, b3) : "(none)");
    return NULL;
  }
  int64_t K = w->shape[0], N = w->shape[1], M = K ? moe_numel(x) / K : 0;
  if (!K) {
    M = 1;
    for (int d = 0; d < x->ndim - 1; d++) M *= x->shape[d];
  }
  int64_t xs[2] = {M, K};
  moe_tensor *x2, *bc;
  MOE_NOGRAD(x2, moe_reshape(x, 2, xs));
  MOE_NOGRAD(bc, b ? moe_contiguous(b) : NULL);
  int64_t oshape[MOE_MAX_DIMS];
  memcpy(oshape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  oshape[x->ndim - 1] = N;
  moe_tensor *y = x2 && (!b || bc) ? moe_empty_on(x->device, x->ndim, oshape, x->dtype) : NULL;
  if (y) {
    char *yd = moe_data(y);
    /* y as [M,N] starts as the bias rows (a broadcast copy) or zeros */
    moe_tensor rows = *y, bv;
    rows.ndim = 2;
    rows.shape[0] = M;
    rows.shape[1] = N;
    rows.stride[0] = N;
    rows.stride[1] = 1;
    if (bc) {
      moe_broadcast_to(bc, 2, rows.shape, &bv); /* bc is [N]: checked above */
      MOE_K(copy, y->device, &rows, &bv);
    } else {
      MOE_K(fill, y->device, &rows, 0.0);
    }
    /* x2 and w may be transposed views: the GEMM reads their strides */
    if (prec == MOE_PREC_BF16 && x->dtype == MOE_F32)
      MOE_K(gemm_bf16, y->device, 1, M, N, K, moe_data(x2), 0, x2->stride[0], x2->stride[1], moe_data(w), 0,
            w->stride[0], w->stride[1], yd, 0, 1);
    else
      MOE_K(gemm_add, y->device, x->dtype, M, N, K, moe_data(x2), x2->stride[0], x2->stride[1], moe_data(w),
            w->stride[0], w->stride[1], yd);
    if (act >= 0) MOE_K(unary, y->device, (moe_unop)act, y, y, 0, 0);
  }
  moe_tensor_release(x2);
  moe_tensor_release(bc);
  const moe_tensor *ins[3] = {x, w, b};
  int nin = b ? 3 : 2;
  if (!y || !moe_ag_wants(nin, ins)) return y;
  moe_node *n = moe_node_new("linear", linear_backward, nin, ins);
  if (n) {
    n->iarg[0] = act;
    n->iarg[1] = prec;
  }
  if (n &&
      ((moe_node_needs(n, 1) && moe_node_save(n, 0, x)) || (moe_node_needs(n, 0) && moe_node_save(n, 1, w)) ||
       (act >= 0 && moe_node_save(n, 2, y)))) {
    moe_node_release(n);
    n = NULL;
  }
  return moe_ag_attach(y, n);
}
