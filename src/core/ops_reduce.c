/* ops_reduce.c -- reductions (sum, mean, prod, var/std, max/min with indices,
 * logsumexp, all/any) and scans (softmax, log_softmax, cumsum, cumprod): checks,
 * dispatch (src/cpu/reduce.c, src/cuda/reduce.cu), recording, backward. */
#include "ops_impl.h"
#include "index_impl.h"

#include <math.h>
#include <string.h>

static const char *redop_names[MOE_NREDOPS] = {"sum", "mean",   "prod",   "var",       "std", "max",
                                               "min", "argmax", "argmin", "logsumexp", "all", "any"};
const char *moe_redop_name(moe_redop op) { return redop_names[op]; }

/* ---------------------------------------------------------------- reductions */

/* Permute t so the dims in `mask` come last, make it contiguous, and view it as
 * [M,K]: every reduction and scan then works on contiguous rows. */
static moe_tensor *rows_view(const moe_tensor *t, unsigned mask, moe_dtype dt, int64_t *M, int64_t *K) {
  int perm[MOE_MAX_DIMS], n = 0;
  *M = 1;
  *K = 1;
  for (int d = 0; d < t->ndim; d++)
    if (!(mask >> d & 1)) {
      perm[n++] = d;
      *M *= t->shape[d];
    }
  for (int d = 0; d < t->ndim; d++)
    if (mask >> d & 1) {
      perm[n++] = d;
      *K *= t->shape[d];
    }
  moe_tensor *p = moe_permute(t, perm);
  if (!p) return NULL;
  moe_tensor *c = NULL;
  if (p->dtype == dt) c = moe_contiguous(p);
  else if ((c = moe_empty_on(p->device, p->ndim, p->shape, dt))) MOE_K(copy, c->device, c, p);
  moe_tensor_release(p);
  return c;
}

/* ---------------------------------------------------------------- reductions: forward, backward, recorder */

static moe_tensor *reduce_impl(moe_redop op, const moe_tensor *t, unsigned dims, int keepdim, int correction,
                               moe_tensor **indices, int64_t ibase) {
  char b[160];
  unsigned all = t->ndim ? (1u << t->ndim) - 1 : 0;
  if (dims == 0) dims = all;
  if (dims & ~all) {
    moe_error("%s: dim out of range for tensor of shape %s", redop_names[op], moe_shape_str(t, b));
    return NULL;
  }
  int64_t oshape[MOE_MAX_DIMS], kshape[MOE_MAX_DIMS];
  int on = 0;
  for (int d = 0; d < t->ndim; d++) {
    int red = dims >> d & 1;
    kshape[d] = red ? 1 : t->shape[d];
    if (!red) oshape[on++] = t->shape[d];
  }
  int64_t M, K;
  /* the dtype reductions compute in, and the output dtype */
  moe_dtype in_dt = t->dtype, out_dt;
  switch (op) {
  case MOE_RSUM:
  case MOE_RPROD:
    if (!moe_dtype_is_float(in_dt)) in_dt = MOE_I64;
    out_dt = in_dt;
    break;
  case MOE_RMAX:
  case MOE_RMIN:
  case MOE_RARGMAX:
  case MOE_RARGMIN:
    if (in_dt == MOE_BOOL) in_dt = MOE_I32;
    out_dt = (op == MOE_RARGMAX || op == MOE_RARGMIN) ? MOE_I64 : t->dtype;
    break;
  case MOE_RALL:
  case MOE_RANY:
    in_dt = MOE_BOOL;
    out_dt = MOE_BOOL;
    break;
  default:
    if (!moe_dtype_is_float(in_dt)) in_dt = MOE_F32;
    out_dt = in_dt;
  }
  int64_t K0 = 1;
  for (int d = 0; d < t->ndim; d++)
    if (dims >> d & 1) K0 *= t->shape[d];
  if (K0 == 0 && (op == MOE_RMAX || op == MOE_RMIN || op == MOE_RARGMAX || op == MOE_RARGMIN)) {
    moe_error("%s: cannot reduce over an empty dim (shape %s)", redop_names[op], moe_shape_str(t, b));
    return NULL;
  }
  /* sum/mean of a contiguous float tensor over a block of consecutive dims that
   * are not the last: strided column sums in place, no transposed copy */
  unsigned low = dims & -dims, block = dims + low; /* block is a power of two iff dims is one run */
  if ((op == MOE_RSUM || op == MOE_RMEAN) && moe_dtype_is_float(t->dtype) && !indices && moe_is_contiguous(t) &&
      K0 > 0 && dims && !(dims >> (t->ndim - 1) & 1) && (block & (block - 1)) == 0) {
    int first = __builtin_ctz(dims), last = 31 - __builtin_clz(dims);
    int64_t O = 1, N = 1;
    for (int d = 0; d < first; d++) O *= t->shape[d];
    for (int d = last + 1; d < t->ndim; d++) N *= t->shape[d];
    moe_tensor *out = moe_empty_on(t->device, keepdim ? t->ndim : on, keepdim ? kshape : oshape, t->dtype);
    if (out) MOE_K(sum_middle, out->device, t, out, O, K0, N, op == MOE_RMEAN);
    return out;
  }
  moe_tensor *x = rows_view(t, dims, in_dt, &M, &K);
  if (!x) return NULL;
  moe_tensor *out = moe_empty_on(t->device, keepdim ? t->ndim : on, keepdim ? kshape : oshape,
                                 out_dt == MOE_BOOL || out_dt == MOE_I64 ? out_dt : in_dt);
  moe_tensor *idx = NULL;
  if (out && indices) idx = moe_empty_on(out->device, out->ndim, out->shape, MOE_I64);
  if (!out || (indices && !idx)) {
    moe_tensor_release(x);
    moe_tensor_release(out);
    return NULL;
  }
  MOE_K(reduce_rows, out->device, op, x, out, idx, M, K, correction, ibase);
  moe_tensor_release(x);
  /* engine-made indices: index ops skip checking them (index_impl.h) */
  if (op == MOE_RARGMAX || op == MOE_RARGMIN) moe_mark_index_range(out, ibase, ibase + K - 1);
  moe_mark_index_range(idx, ibase, ibase + K - 1);
  if (out->dtype != out_dt) { /* max/min of a bool tensor */
    moe_tensor *o2 = moe_to_dtype(out, out_dt);
    moe_tensor_release(out);
    out = o2;
  }
  if (indices) *indices = idx;
  return out;
}

/* out = reduce(x over dims): g [out shape] is viewed with the reduced dims kept
 * (size 1) and broadcast back over x [in shape] */
static int reduce_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  moe_redop op = (moe_redop)n->iarg[0];
  unsigned dims = (unsigned)n->iarg[1];
  int correction = (int)n->iarg[3];
  const moe_tensor *x = moe_node_saved(n, 0), *out = MOE_SAVED(n, 1);
  if (!x || (n->saved[1] && !out)) return -1;
  int64_t kshape[MOE_MAX_DIMS], K = 1;
  for (int d = 0; d < x->ndim; d++) {
    kshape[d] = dims >> d & 1 ? 1 : x->shape[d];
    if (dims >> d & 1) K *= x->shape[d];
  }
  moe_tensor *t[6] = {0};
  moe_tensor *gk = moe_reshape(g, x->ndim, kshape), *ok = NULL;
  if (!gk) return -1;
  if (out) TRY(ok = moe_reshape(out, x->ndim, kshape));
  switch (op) {
  case MOE_RSUM: TRY(gin[0] = moe_expand(gk, x->ndim, x->shape)); break;
  case MOE_RMEAN:
    TRY(t[0] = moe_binary_scalar(MOE_DIV, gk, (double)K, 0));
    TRY(gin[0] = moe_expand(t[0], x->ndim, x->shape));
    break;
  case MOE_RPROD: { /* out/x where x != 0; where x == 0, the product of the others */
    TRY(t[0] = moe_binary_scalar(MOE_EQ, x, 0, 0));
    TRY(t[1] = moe_full_on(x->device, 0, NULL, x->dtype, 1.0));
    TRY(t[2] = moe_where(t[0], t[1], x));                         /* zeros -> 1 */
    TRY(t[3] = moe_reduce(MOE_RPROD, t[2], dims, 1, 0, NULL, 0)); /* product of nonzeros */
    TRY(t[4] = as_float_of(moe_reduce(MOE_RSUM, t[0], dims, 1, 0, NULL, 0), x->dtype));
    moe_tensor_release(t[1]);
    TRY(t[1] = moe_binary_scalar(MOE_EQ, t[4], 1, 0)); /* exactly one zero */
    moe_tensor_release(t[4]);
    TRY(t[4] = as_float_of(retained(t[1]), x->dtype));
    moe_tensor_release(t[1]);
    TRY(t[1] = mul(t[3], t[4])); /* grad at a zero */
    moe_tensor_release(t[3]);
    TRY(t[3] = moe_binary(MOE_DIV, ok, t[2])); /* grad elsewhere */
    moe_tensor_release(t[4]);
    TRY(t[4] = moe_where(t[0], t[1], t[3]));
    TRY(gin[0] = mul(gk, t[4]));
    break;
  }
  case MOE_RVAR:
  case MOE_RSTD: { /* var: 2 (x - mean) / (K - c); std: (x - mean) / ((K - c) std) */
    TRY(t[0] = moe_reduce(MOE_RMEAN, x, dims, 1, 0, NULL, 0));
    TRY(t[1] = moe_binary(MOE_SUB, x, t[0]));
    double den = (double)(K - correction);
    TRY(t[2] = moe_binary_scalar(MOE_MUL, t[1], op == MOE_RVAR ? 2.0 / den : 1.0 / den, 0));
    if (op == MOE_RSTD) {
      TRY(t[3] = moe_binary(MOE_DIV, t[2], ok));
      TRY(gin[0] = mul(gk, t[3]));
    } else {
      TRY(gin[0] = mul(gk, t[2]));
    }
    break;
  }
  case MOE_RMAX:
  case MOE_RMIN: /* split evenly between tied extremes */
    TRY(t[0] = as_float_of(moe_binary(MOE_EQ, x, ok), g->dtype));
    TRY(t[1] = moe_reduce(MOE_RSUM, t[0], dims, 1, 0, NULL, 0));
    TRY(t[2] = moe_binary(MOE_DIV, gk, t[1]));
    TRY(gin[0] = mul(t[0], t[2]));
    break;
  case MOE_RLOGSUMEXP:
    TRY(t[0] = moe_binary(MOE_SUB, x, ok));
    TRY(t[1] = moe_unary(MOE_EXP, t[0], 0, 0));
    TRY(gin[0] = mul(gk, t[1]));
    break;
  default: break;
  }
  drop(6, t);
  moe_tensor_release(gk);
  moe_tensor_release(ok);
  return 0;
fail:
  drop(6, t);
  moe_tensor_release(gk);
  moe_tensor_release(ok);
  return -1;
}

moe_tensor *moe_reduce(moe_redop op, const moe_tensor *t, unsigned dims, int keepdim, int correction,
                       moe_tensor **indices, int64_t ibase) {
  int diff = op != MOE_RARGMAX && op != MOE_RARGMIN && op != MOE_RALL && op != MOE_RANY;
  if (!diff || !moe_ag_wants(1, &t)) return reduce_impl(op, t, dims, keepdim, correction, indices, ibase);
  moe_tensor *out;
  MOE_NOGRAD(out, reduce_impl(op, t, dims, keepdim, correction, indices, ibase));
  if (!out || !is_differentiable(out)) return out;
  moe_node *n = moe_node_new(redop_names[op], reduce_backward, 1, &t);
  if (n) {
    n->iarg[0] = op;
    n->iarg[1] = dims ? dims : (t->ndim ? (1u << t->ndim) - 1 : 0);
    n->iarg[2] = keepdim;
    n->iarg[3] = correction;
    int rc = moe_node_save(n, 0, t);
    if (op != MOE_RSUM && op != MOE_RMEAN && op != MOE_RVAR) rc |= moe_node_save(n, 1, out);
    if (rc) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(out, n);
}

/* ---------------------------------------------------------------- scans */

static moe_tensor *scan_impl(moe_scanop op, const moe_tensor *t, int dim) {
  static const char *names[] = {"softmax", "log_softmax", "cumsum", "cumprod"};
  char b[160];
  if (dim < 0 || dim >= t->ndim) {
    moe_error("%s: dim %d out of range for tensor of shape %s", names[op], dim + 1, moe_shape_str(t, b));
    return NULL;
  }
  moe_dtype dt = t->dtype;
  if (op <= MOE_LOG_SOFTMAX && !moe_dtype_is_float(dt)) dt = MOE_F32;
  if (op >= MOE_CUMSUM && !moe_dtype_is_float(dt)) dt = MOE_I64;
  int64_t M, K;
  moe_tensor *x = rows_view(t, 1u << dim, dt, &M, &K);
  if (!x) return NULL;
  moe_tensor *y = moe_empty_like(x);
  if (y) MOE_K(scan_rows, y->device, op, x, y, M, K);
  moe_tensor_release(x);
  if (!y || dim == t->ndim - 1) return y;
  /* y is laid out [.., dims except dim.., dim]: move dim back and make it contiguous */
  int perm[MOE_MAX_DIMS];
  for (int d = 0, j = 0; d < t->ndim; d++) perm[d] = d == dim ? t->ndim - 1 : j++;
  moe_tensor *p = moe_permute(y, perm);
  moe_tensor_release(y);
  if (!p) return NULL;
  moe_tensor *c = moe_clone(p);
  moe_tensor_release(p);
  return c;
}

static int scan_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  moe_scanop op = (moe_scanop)n->iarg[0];
  int dim = (int)n->iarg[1];
  const moe_tensor *x = MOE_SAVED(n, 0), *y = MOE_SAVED(n, 1);
  if ((n->saved[0] && !x) || (n->saved[1] && !y)) return -1;
  unsigned m = 1u << dim;
  moe_tensor *t[4] = {0};
  switch (op) {
  case MOE_SOFTMAX: /* y (g - sum(g y)) */
    TRY(t[0] = mul(g, y));
    TRY(t[1] = moe_reduce(MOE_RSUM, t[0], m, 1, 0, NULL, 0));
    TRY(t[2] = moe_binary(MOE_SUB, g, t[1]));
    TRY(gin[0] = mul(y, t[2]));
    break;
  case MOE_LOG_SOFTMAX: /* g - exp(y) sum(g) */
    TRY(t[0] = moe_unary(MOE_EXP, y, 0, 0));
    TRY(t[1] = moe_reduce(MOE_RSUM, g, m, 1, 0, NULL, 0));
    TRY(t[2] = mul(t[0], t[1]));
    TRY(gin[0] = moe_binary(MOE_SUB, g, t[2]));
    break;
  case MOE_CUMSUM: /* reversed cumsum: sum(g) - cumsum(g) + g */
    TRY(t[0] = moe_reduce(MOE_RSUM, g, m, 1, 0, NULL, 0));
    TRY(t[1] = moe_scan(MOE_CUMSUM, g, dim));
    TRY(t[2] = moe_binary(MOE_SUB, t[0], t[1]));
    TRY(gin[0] = moe_binary(MOE_ADD, t[2], g));
    break;
  case MOE_CUMPROD: {
    if (moe_backend_require("cumprod backward", g->device, MOE_KERNEL_cumprod_backward)) goto fail;
    int last = x->ndim - 1;
    moe_tensor *r[4] = {0};
    const moe_tensor *src[3] = {x, y, g};
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++) {
      moe_tensor *tr = moe_transpose(src[i], dim, last);
      moe_tensor *d = tr ? moe_to_dtype(tr, MOE_F64) : NULL;
      r[i] = d ? moe_clone(d) : NULL;
      moe_tensor_release(tr);
      moe_tensor_release(d);
      ok = r[i] != NULL;
    }
    if (ok) ok = (r[3] = moe_empty_like(r[0])) != NULL;
    if (ok) {
      int64_t K = x->ndim ? x->shape[dim] : 1, M = K ? moe_numel(x) / K : 0;
      MOE_KH(cumprod_backward, g->device, (const double *)moe_data(r[0]), (const double *)moe_data(r[1]),
             (const double *)moe_data(r[2]), (double *)moe_data(r[3]), M, K);
      gin[0] = moe_transpose(r[3], dim, last);
      ok = gin[0] != NULL;
    }
    drop(4, r);
    if (!ok) goto fail;
    break;
  }
  }
  drop(4, t);
  return 0;
fail:
  drop(4, t);
  return -1;
}

moe_tensor *moe_scan(moe_scanop op, const moe_tensor *t, int dim) {
  if (!moe_ag_wants(1, &t)) return scan_impl(op, t, dim);
  moe_tensor *out;
  MOE_NOGRAD(out, scan_impl(op, t, dim));
  if (!out || !is_differentiable(out)) return out;
  static const char *names[] = {"softmax", "log_softmax", "cumsum", "cumprod"};
  moe_node *n = moe_node_new(names[op], scan_backward, 1, &t);
  if (n) {
    n->iarg[0] = op;
    n->iarg[1] = dim;
    int rc = op != MOE_CUMSUM ? moe_node_save(n, 1, out) : 0;
    if (op == MOE_CUMPROD) rc |= moe_node_save(n, 0, t);
    if (rc) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(out, n);
}
