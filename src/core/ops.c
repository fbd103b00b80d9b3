/* ops.c -- the checking and dispatch point of elementwise ops, reductions,
 * scans and matmul: arguments are checked once here, outputs allocated, and the
 * device's kernel called. Kernels live in src/cpu/ (and src/cuda/). */
#include "moe.h"
#include "../cpu/cpu.h"

#include <math.h>
#include <string.h>

static const char *binop_names[MOE_NBINOPS] = {"add", "sub", "mul", "div", "pow", "maximum",
                                               "minimum", "eq", "ne", "lt", "le", "gt", "ge"};
static const char *unop_names[MOE_NUNOPS] = {
    "neg", "abs", "relu", "sign", "square", "clamp", "exp", "log", "sqrt", "tanh",
    "sigmoid", "gelu", "softplus", "log1p", "expm1", "floor", "ceil", "round", "rsqrt"};
static const char *redop_names[MOE_NREDOPS] = {"sum", "mean", "prod", "var", "std", "max", "min",
                                               "argmax", "argmin", "logsumexp", "all", "any"};
const char *moe_binop_name(moe_binop op) { return binop_names[op]; }
const char *moe_unop_name(moe_unop op) { return unop_names[op]; }
const char *moe_redop_name(moe_redop op) { return redop_names[op]; }

static int is_compare(moe_binop op) { return op >= MOE_EQ; }

/* dtype the kernel computes in: bool counts as int64 in arithmetic, and true
 * division and pow of integers happen in float32 */
static moe_dtype compute_dtype(moe_binop op, moe_dtype dt) {
  if (dt == MOE_BOOL) dt = MOE_I64;
  if ((op == MOE_DIV || op == MOE_POW) && !moe_dtype_is_float(dt)) dt = MOE_F32;
  return dt;
}

static int broadcast_shapes(const char *op, const moe_tensor *a, const moe_tensor *b, int *ndim,
                            int64_t *shape) {
  char b1[160], b2[160];
  int n = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int i = 0; i < n; i++) {
    int ia = i - (n - a->ndim), ib = i - (n - b->ndim);
    int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1)
      return moe_error("%s: shapes %s and %s cannot be broadcast together", op, moe_shape_str(a, b1),
                       moe_shape_str(b, b2));
    shape[i] = sa == 1 ? sb : sa;
  }
  *ndim = n;
  return 0;
}

/* Broadcast views of a and b on shape, both converted to dtype dt. The
 * converted tensors (if any) are returned in *ca, *cb for the caller to release. */
static int prepare_operands(const moe_tensor *a, const moe_tensor *b, moe_dtype dt, int ndim,
                            const int64_t *shape, moe_tensor *va, moe_tensor *vb, moe_tensor **ca,
                            moe_tensor **cb) {
  *ca = moe_to_dtype(a, dt);
  *cb = *ca ? moe_to_dtype(b, dt) : NULL;
  if (!*ca || !*cb) return -1;
  moe_broadcast_to(*ca, ndim, shape, va);
  moe_broadcast_to(*cb, ndim, shape, vb);
  return 0;
}

moe_tensor *moe_binary(moe_binop op, const moe_tensor *a, const moe_tensor *b) {
  int ndim = 0;
  int64_t shape[MOE_MAX_DIMS];
  if (broadcast_shapes(binop_names[op], a, b, &ndim, shape)) return NULL;
  moe_dtype dt = compute_dtype(op, moe_promote(a->dtype, b->dtype));
  moe_tensor va, vb, *ca, *cb, *out = NULL;
  if (prepare_operands(a, b, dt, ndim, shape, &va, &vb, &ca, &cb) == 0) {
    out = moe_empty(ndim, shape, is_compare(op) ? MOE_BOOL : dt);
    if (out) moe_cpu_binary(op, out, &va, &vb);
  }
  moe_tensor_release(ca);
  moe_tensor_release(cb);
  return out;
}

/* A scalar is weakly typed: it takes the tensor's dtype unless the tensor is
 * integral and the scalar is not, in which case the op computes in float32.
 * The scalar lives in `buf`, viewed as a 0-dim tensor `sc` on the caller's stack
 * (refcount 1, so a retain/release pair never frees it). */
typedef union { float f; double d; int32_t i; int64_t l; } scalar_buf;

static void make_scalar(moe_binop op, moe_dtype tensor_dt, double s, scalar_buf *buf, moe_storage *st,
                        moe_tensor *sc) {
  moe_dtype dt = tensor_dt;
  if (!moe_dtype_is_float(dt) && s != floor(s)) dt = MOE_F32;
  dt = compute_dtype(op, dt);
  switch (dt) {
  case MOE_F32: buf->f = (float)s; break;
  case MOE_F64: buf->d = s; break;
  case MOE_I32: buf->i = moe_sat_i32(s); break;
  default: buf->l = moe_sat_i64(s); break;
  }
  *st = (moe_storage){.data = buf, .refcount = 1};
  *sc = (moe_tensor){.storage = st, .dtype = dt, .ndim = 0, .refcount = 1};
}

moe_tensor *moe_binary_scalar(moe_binop op, const moe_tensor *a, double s, int scalar_left) {
  scalar_buf buf;
  moe_storage st;
  moe_tensor sc;
  make_scalar(op, a->dtype, s, &buf, &st, &sc);
  return scalar_left ? moe_binary(op, &sc, a) : moe_binary(op, a, &sc);
}

int moe_binary_scalar_(moe_binop op, moe_tensor *a, double s) {
  scalar_buf buf;
  moe_storage st;
  moe_tensor sc;
  make_scalar(op, a->dtype, s, &buf, &st, &sc);
  return moe_binary_(op, a, &sc);
}

int moe_binary_(moe_binop op, moe_tensor *a, const moe_tensor *b) {
  char b1[160], b2[160];
  moe_tensor vb;
  if (moe_check_writable(binop_names[op], a)) return -1;
  if (moe_broadcast_to(b, a->ndim, a->shape, &vb))
    return moe_error("%s_: shape %s cannot be broadcast to the in-place target's shape %s",
                     binop_names[op], moe_shape_str(b, b1), moe_shape_str(a, b2));
  moe_dtype dt = compute_dtype(op, moe_promote(a->dtype, b->dtype));
  if (dt == a->dtype && !is_compare(op) && b->dtype == dt && b->storage != a->storage) {
    moe_cpu_binary(op, a, a, &vb);
    return 0;
  }
  moe_tensor *r = moe_binary(op, a, &vb);
  if (!r) return -1;
  moe_cpu_copy(a, r);
  moe_tensor_release(r);
  return 0;
}

moe_tensor *moe_unary(moe_unop op, const moe_tensor *a, double p0, double p1) {
  moe_dtype dt = a->dtype == MOE_BOOL ? MOE_I64 : a->dtype;
  if (op >= MOE_EXP && !moe_dtype_is_float(dt)) dt = MOE_F32;
  if (op == MOE_CLAMP && (isnan(p0) || isnan(p1))) {
    moe_error("clamp: bounds must be numbers, got min %g and max %g", p0, p1);
    return NULL;
  }
  if (op == MOE_CLAMP && p0 > p1) {
    moe_error("clamp: min %g is greater than max %g", p0, p1);
    return NULL;
  }
  if (op == MOE_CLAMP && !moe_dtype_is_float(dt) && (p0 != floor(p0) || p1 != floor(p1)) &&
      !(isinf(p0) || isinf(p1)))
    dt = MOE_F32;
  moe_tensor *ca = moe_to_dtype(a, dt);
  if (!ca) return NULL;
  if (op == MOE_CLAMP && !moe_dtype_is_float(dt)) { /* bounds beyond the type's range: clip them to it */
    double lo = dt == MOE_I32 ? -2147483648.0 : -9.2e18, hi = dt == MOE_I32 ? 2147483647.0 : 9.2e18;
    p0 = p0 < lo ? lo : p0 > hi ? hi : p0;
    p1 = p1 < lo ? lo : p1 > hi ? hi : p1;
  }
  moe_tensor *out = moe_empty_like(ca);
  if (out) moe_cpu_unary(op, out, ca, p0, p1);
  moe_tensor_release(ca);
  return out;
}

moe_tensor *moe_where(const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b) {
  int n1 = 0, ndim = 0;
  int64_t s1[MOE_MAX_DIMS] = {0}, shape[MOE_MAX_DIMS];
  if (broadcast_shapes("where", a, b, &n1, s1)) return NULL;
  moe_tensor ab = {.ndim = n1};
  memcpy(ab.shape, s1, sizeof s1);
  if (broadcast_shapes("where", cond, &ab, &ndim, shape)) return NULL;
  moe_dtype dt = moe_promote(a->dtype, b->dtype);
  moe_tensor va, vb, vc, *ca, *cb, *cc = NULL, *out = NULL;
  if (prepare_operands(a, b, dt, ndim, shape, &va, &vb, &ca, &cb) == 0 &&
      (cc = moe_to_dtype(cond, MOE_BOOL))) {
    moe_broadcast_to(cc, ndim, shape, &vc);
    out = moe_empty(ndim, shape, dt);
    if (out) moe_cpu_where(out, &vc, &va, &vb);
  }
  moe_tensor_release(ca);
  moe_tensor_release(cb);
  moe_tensor_release(cc);
  return out;
}

/* ---------------------------------------------------------------- reductions */

/* Permute t so the dims in `mask` come last, make it contiguous, and view it as
 * [M,K]: every reduction and scan then works on contiguous rows. */
static moe_tensor *rows_view(const moe_tensor *t, unsigned mask, moe_dtype dt, int64_t *M, int64_t *K) {
  int perm[MOE_MAX_DIMS], n = 0;
  *M = 1;
  *K = 1;
  for (int d = 0; d < t->ndim; d++)
    if (!(mask >> d & 1)) { perm[n++] = d; *M *= t->shape[d]; }
  for (int d = 0; d < t->ndim; d++)
    if (mask >> d & 1) { perm[n++] = d; *K *= t->shape[d]; }
  moe_tensor *p = moe_permute(t, perm);
  if (!p) return NULL;
  moe_tensor *c = NULL;
  if (p->dtype == dt) c = moe_contiguous(p);
  else if ((c = moe_empty(p->ndim, p->shape, dt))) moe_cpu_copy(c, p);
  moe_tensor_release(p);
  return c;
}

moe_tensor *moe_reduce(moe_redop op, const moe_tensor *t, unsigned dims, int keepdim,
                       int correction, moe_tensor **indices, int64_t ibase) {
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
  case MOE_RSUM: case MOE_RPROD:
    if (!moe_dtype_is_float(in_dt)) in_dt = MOE_I64;
    out_dt = in_dt;
    break;
  case MOE_RMAX: case MOE_RMIN: case MOE_RARGMAX: case MOE_RARGMIN:
    if (in_dt == MOE_BOOL) in_dt = MOE_I32;
    out_dt = (op == MOE_RARGMAX || op == MOE_RARGMIN) ? MOE_I64 : t->dtype;
    break;
  case MOE_RALL: case MOE_RANY:
    in_dt = MOE_BOOL;
    out_dt = MOE_BOOL;
    break;
  default:
    if (!moe_dtype_is_float(in_dt)) in_dt = MOE_F32;
    out_dt = in_dt;
  }
  int64_t K0 = 1;
  for (int d = 0; d < t->ndim; d++) if (dims >> d & 1) K0 *= t->shape[d];
  if (K0 == 0 && (op == MOE_RMAX || op == MOE_RMIN || op == MOE_RARGMAX || op == MOE_RARGMIN)) {
    moe_error("%s: cannot reduce over an empty dim (shape %s)", redop_names[op], moe_shape_str(t, b));
    return NULL;
  }
  moe_tensor *x = rows_view(t, dims, in_dt, &M, &K);
  if (!x) return NULL;
  moe_tensor *out = moe_empty(keepdim ? t->ndim : on, keepdim ? kshape : oshape,
                              out_dt == MOE_BOOL || out_dt == MOE_I64 ? out_dt : in_dt);
  moe_tensor *idx = NULL;
  if (out && indices) idx = moe_empty(out->ndim, out->shape, MOE_I64);
  if (!out || (indices && !idx)) {
    moe_tensor_release(x); moe_tensor_release(out);
    return NULL;
  }
  moe_cpu_reduce_rows(op, x, out, idx, M, K, correction, ibase);
  moe_tensor_release(x);
  if (out->dtype != out_dt) { /* max/min of a bool tensor */
    moe_tensor *o2 = moe_to_dtype(out, out_dt);
    moe_tensor_release(out);
    out = o2;
  }
  if (indices) *indices = idx;
  return out;
}

moe_tensor *moe_scan(moe_scanop op, const moe_tensor *t, int dim) {
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
  if (y) moe_cpu_scan_rows(op, x, y, M, K);
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

/* ---------------------------------------------------------------- matmul */

/* Stride (in elements) of a matrix view for BLAS: the matrix rows x cols with
 * strides (rs, cs) is usable without a copy if one of them is 1. */
static int blas_ok(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if (cs == 1 && (rs >= cols || rows == 1) && rs >= 1) return 1;
  if (rs == 1 && (cs >= rows || cols == 1) && cs >= 1) return 1;
  return 0;
}

int moe_matmul_out(moe_tensor *out, const moe_tensor *a, const moe_tensor *b) {
  /* a [..., M, K], b [..., K, N] (batch dims broadcast), out [..., M, N] contiguous */
  int nb = out->ndim - 2;
  int64_t M = out->shape[nb], N = out->shape[nb + 1], K = a->shape[a->ndim - 1];
  moe_tensor va, vb;
  int64_t bshape_a[MOE_MAX_DIMS], bshape_b[MOE_MAX_DIMS];
  memcpy(bshape_a, out->shape, sizeof(int64_t) * (size_t)nb);
  memcpy(bshape_b, out->shape, sizeof(int64_t) * (size_t)nb);
  bshape_a[nb] = M; bshape_a[nb + 1] = K;
  bshape_b[nb] = K; bshape_b[nb + 1] = N;
  moe_broadcast_to(a, nb + 2, bshape_a, &va);
  moe_broadcast_to(b, nb + 2, bshape_b, &vb);
  moe_tensor *ca = NULL, *cb = NULL;
  /* batch dims must collapse to one stride for the batched call; copy otherwise */
  int64_t batch = 1;
  for (int d = 0; d < nb; d++) batch *= out->shape[d];
  int ok_a = blas_ok(M, K, va.stride[nb], va.stride[nb + 1]);
  int ok_b = blas_ok(K, N, vb.stride[nb], vb.stride[nb + 1]);
  int64_t sAb = 0, sBb = 0;
  for (int pass = 0; pass < 2; pass++) {
    moe_tensor *v = pass ? &vb : &va;
    int64_t st = 0, expect = -1;
    int ok = 1;
    for (int d = nb - 1; d >= 0; d--) {
      if (v->shape[d] == 1) continue;
      if (expect < 0) { st = v->stride[d]; expect = st * v->shape[d]; }
      else if (v->stride[d] == 0 && st == 0) {}
      else if (v->stride[d] != expect) { ok = 0; break; }
      else expect *= v->shape[d];
    }
    if (pass) { ok_b &= ok; sBb = st; } else { ok_a &= ok; sAb = st; }
  }
  if (!ok_a) {
    if (!(ca = moe_clone(&va))) return -1;
    va = *ca; sAb = M * K;
  }
  if (!ok_b) {
    if (!(cb = moe_clone(&vb))) { moe_tensor_release(ca); return -1; }
    vb = *cb; sBb = K * N;
  }
  moe_cpu_gemm_batched(out->dtype, batch, M, N, K, moe_data(&va), sAb, va.stride[nb], va.stride[nb + 1],
                       moe_data(&vb), sBb, vb.stride[nb], vb.stride[nb + 1], moe_data(out), M * N);
  moe_tensor_release(ca);
  moe_tensor_release(cb);
  return 0;
}

moe_tensor *moe_matmul(const moe_tensor *a0, const moe_tensor *b0) {
  char b1[160], b2[160];
  if (a0->ndim == 0 || b0->ndim == 0) {
    moe_error("matmul: both arguments need at least 1 dim, got shapes %s and %s",
              moe_shape_str(a0, b1), moe_shape_str(b0, b2));
    return NULL;
  }
  moe_dtype dt = moe_promote(a0->dtype, b0->dtype);
  if (!moe_dtype_is_float(dt)) dt = MOE_F32;
  moe_tensor *a = moe_to_dtype(a0, dt), *b = a ? moe_to_dtype(b0, dt) : NULL, *out = NULL;
  moe_tensor *a2 = NULL, *b2t = NULL;
  if (!a || !b) goto done;
  /* 1-D operands: a vector on the left is a row [1,K], on the right a column [K,1] */
  a2 = a->ndim == 1 ? moe_unsqueeze(a, 0) : (moe_tensor_retain(a), a);
  b2t = b->ndim == 1 ? moe_unsqueeze(b, 1) : (moe_tensor_retain(b), b);
  if (!a2 || !b2t) goto done;
  int64_t K = a2->shape[a2->ndim - 1];
  if (b2t->shape[b2t->ndim - 2] != K) {
    moe_error("matmul: shapes %s and %s do not align (%lld != %lld)", moe_shape_str(a0, b1),
              moe_shape_str(b0, b2), (long long)K, (long long)b2t->shape[b2t->ndim - 2]);
    goto done;
  }
  moe_tensor ba = {.ndim = a2->ndim - 2}, bb = {.ndim = b2t->ndim - 2};
  memcpy(ba.shape, a2->shape, sizeof(int64_t) * (size_t)ba.ndim);
  memcpy(bb.shape, b2t->shape, sizeof(int64_t) * (size_t)bb.ndim);
  int nb = 0;
  int64_t oshape[MOE_MAX_DIMS];
  if (broadcast_shapes("matmul", &ba, &bb, &nb, oshape)) {
    moe_error("matmul: batch dims of shapes %s and %s cannot be broadcast together",
              moe_shape_str(a0, b1), moe_shape_str(b0, b2));
    goto done;
  }
  if (nb + 2 > MOE_MAX_DIMS) { moe_error("matmul: too many dims"); goto done; }
  oshape[nb] = a2->shape[a2->ndim - 2];
  oshape[nb + 1] = b2t->shape[b2t->ndim - 1];
  if (oshape[nb] > INT32_MAX || oshape[nb + 1] > INT32_MAX || K > INT32_MAX) {
    moe_error("matmul: shapes %s and %s exceed the BLAS limit of 2^31-1 per matrix dim",
              moe_shape_str(a0, b1), moe_shape_str(b0, b2));
    goto done;
  }
  out = moe_empty(nb + 2, oshape, dt);
  if (!out) goto done;
  if (moe_matmul_out(out, a2, b2t)) { moe_tensor_release(out); out = NULL; goto done; }
  /* drop the dims that 1-D operands added */
  if (a0->ndim == 1 || b0->ndim == 1) {
    int64_t fs[MOE_MAX_DIMS];
    int n = 0;
    for (int d = 0; d < nb; d++) fs[n++] = oshape[d];
    if (a0->ndim != 1) fs[n++] = oshape[nb];
    if (b0->ndim != 1) fs[n++] = oshape[nb + 1];
    moe_tensor *v = moe_view(out, n, fs);
    moe_tensor_release(out);
    out = v;
  }
done:
  moe_tensor_release(a);
  moe_tensor_release(b);
  moe_tensor_release(a2);
  moe_tensor_release(b2t);
  return out;
}
