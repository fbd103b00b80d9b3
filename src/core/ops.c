/* ops.c -- the checking and dispatch point of elementwise ops, reductions,
 * scans and matmul: arguments are checked once here, outputs allocated, and the
 * device's kernel called. Kernels live in src/cpu/ (and src/cuda/). */
#include "moe.h"
#include "autograd_impl.h"
#include "dispatch.h"

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

static int host_scalar(const moe_tensor *t) { return t->ndim == 0 && t->storage->device != MOE_CUDA; }

static moe_tensor *binary_impl(moe_binop op, const moe_tensor *a, const moe_tensor *b) {
  int ndim = 0;
  int64_t shape[MOE_MAX_DIMS];
  /* a 0-dim host tensor (a Lua number's scalar, make_scalar below) joins an op
   * on any device: the kernels read it from the host, as PyTorch allows */
  const moe_tensor *ab[2] = {host_scalar(a) ? NULL : a, host_scalar(b) ? NULL : b};
  if (moe_same_device(binop_names[op], 2, ab)) return NULL;
  moe_device dev = a->device == MOE_CUDA || b->device == MOE_CUDA ? MOE_CUDA : MOE_CPU;
  if (broadcast_shapes(binop_names[op], a, b, &ndim, shape)) return NULL;
  moe_dtype dt = compute_dtype(op, moe_promote(a->dtype, b->dtype));
  moe_tensor va, vb, *ca, *cb, *out = NULL;
  if (prepare_operands(a, b, dt, ndim, shape, &va, &vb, &ca, &cb) == 0) {
    out = moe_empty_on(dev, ndim, shape, is_compare(op) ? MOE_BOOL : dt);
    if (out) MOE_K(binary, out->device, op, out, &va, &vb);
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

static moe_tensor *binary_scalar_impl(moe_binop op, const moe_tensor *a, double s, int scalar_left) {
  scalar_buf buf;
  moe_storage st;
  moe_tensor sc;
  make_scalar(op, a->dtype, s, &buf, &st, &sc);
  return scalar_left ? binary_impl(op, &sc, a) : binary_impl(op, a, &sc);
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
  const moe_tensor *ab[2] = {a, host_scalar(b) ? NULL : b};
  if (moe_same_device(binop_names[op], 2, ab)) return -1;
  if (b->requires_grad && moe_grad_enabled())
    return moe_error("%s_: the operand requires grad, and in-place ops are not recorded; use %s "
                     "(not in place)", binop_names[op], binop_names[op]);
  if (moe_broadcast_to(b, a->ndim, a->shape, &vb))
    return moe_error("%s_: shape %s cannot be broadcast to the in-place target's shape %s",
                     binop_names[op], moe_shape_str(b, b1), moe_shape_str(a, b2));
  moe_dtype dt = compute_dtype(op, moe_promote(a->dtype, b->dtype));
  if (dt == a->dtype && !is_compare(op) && b->dtype == dt && b->storage != a->storage) {
    MOE_K(binary, a->device, op, a, a, &vb);
    return 0;
  }
  moe_tensor *r = binary_impl(op, a, &vb);
  if (!r) return -1;
  MOE_K(copy, a->device, a, r);
  moe_tensor_release(r);
  return 0;
}

static moe_tensor *unary_impl(moe_unop op, const moe_tensor *a, double p0, double p1) {
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
  if (out) MOE_K(unary, out->device, op, out, ca, p0, p1);
  moe_tensor_release(ca);
  return out;
}

static moe_tensor *where_impl(const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b) {
  int n1 = 0, ndim = 0;
  int64_t s1[MOE_MAX_DIMS] = {0}, shape[MOE_MAX_DIMS];
  const moe_tensor *cab[3] = {cond, a, b};
  if (moe_same_device("where", 3, cab)) return NULL;
  if (broadcast_shapes("where", a, b, &n1, s1)) return NULL;
  moe_tensor ab = {.ndim = n1};
  memcpy(ab.shape, s1, sizeof s1);
  if (broadcast_shapes("where", cond, &ab, &ndim, shape)) return NULL;
  moe_dtype dt = moe_promote(a->dtype, b->dtype);
  moe_tensor va, vb, vc, *ca, *cb, *cc = NULL, *out = NULL;
  if (prepare_operands(a, b, dt, ndim, shape, &va, &vb, &ca, &cb) == 0 &&
      (cc = moe_to_dtype(cond, MOE_BOOL))) {
    moe_broadcast_to(cc, ndim, shape, &vc);
    out = moe_empty_on(cond->device, ndim, shape, dt);
    if (out) MOE_K(where, out->device, out, &vc, &va, &vb);
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
  else if ((c = moe_empty_on(p->device, p->ndim, p->shape, dt))) MOE_K(copy, c->device, c, p);
  moe_tensor_release(p);
  return c;
}

static moe_tensor *reduce_impl(moe_redop op, const moe_tensor *t, unsigned dims, int keepdim,
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
  /* sum/mean of a contiguous float tensor over a block of consecutive dims that
   * are not the last: strided column sums in place, no transposed copy */
  unsigned low = dims & -dims, block = dims + low; /* block is a power of two iff dims is one run */
  if ((op == MOE_RSUM || op == MOE_RMEAN) && moe_dtype_is_float(t->dtype) && !indices &&
      moe_is_contiguous(t) && K0 > 0 && dims && !(dims >> (t->ndim - 1) & 1) && (block & (block - 1)) == 0) {
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
    moe_tensor_release(x); moe_tensor_release(out);
    return NULL;
  }
  MOE_K(reduce_rows, out->device, op, x, out, idx, M, K, correction, ibase);
  moe_tensor_release(x);
  if (out->dtype != out_dt) { /* max/min of a bool tensor */
    moe_tensor *o2 = moe_to_dtype(out, out_dt);
    moe_tensor_release(out);
    out = o2;
  }
  if (indices) *indices = idx;
  return out;
}

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

/* ---------------------------------------------------------------- matmul */

/* Stride (in elements) of a matrix view for BLAS: the matrix rows x cols with
 * strides (rs, cs) is usable without a copy if one of them is 1. */
static int blas_ok(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if (cs == 1 && (rs >= cols || rows == 1) && rs >= 1) return 1;
  if (rs == 1 && (cs >= rows || cols == 1) && cs >= 1) return 1;
  return 0;
}

static int matmul_out(moe_tensor *out, const moe_tensor *a, const moe_tensor *b, moe_precision prec) {
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
  if (prec == MOE_PREC_BF16 && out->dtype == MOE_F32) /* bf16 operands, fp32 sums (float64 stays fp64) */
    MOE_K(gemm_bf16, out->device, batch, M, N, K, moe_data(&va), sAb, va.stride[nb], va.stride[nb + 1],
          moe_data(&vb), sBb, vb.stride[nb], vb.stride[nb + 1], moe_data(out), M * N, 0);
  else
    MOE_K(gemm_batched, out->device, out->dtype, batch, M, N, K, moe_data(&va), sAb, va.stride[nb], va.stride[nb + 1],
          moe_data(&vb), sBb, vb.stride[nb], vb.stride[nb + 1], moe_data(out), M * N);
  moe_tensor_release(ca);
  moe_tensor_release(cb);
  return 0;
}

int moe_matmul_out(moe_tensor *out, const moe_tensor *a, const moe_tensor *b) {
  return matmul_out(out, a, b, MOE_PREC_FP32);
}

static moe_tensor *matmul_impl(const moe_tensor *a0, const moe_tensor *b0, moe_precision prec) {
  char b1[160], b2[160];
  const moe_tensor *ab[2] = {a0, b0};
  if (moe_same_device("matmul", 2, ab)) return NULL;
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
  out = moe_empty_on(a0->device, nb + 2, oshape, dt);
  if (!out) goto done;
  if (matmul_out(out, a2, b2t, prec)) { moe_tensor_release(out); out = NULL; goto done; }
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

/* ================================================================ autograd
 * Each op records itself as src/core/autograd_impl.h describes (MOE_NOGRAD
 * around its _impl, then one node); each backward returns the gradient of
 * every input that needs one, composed of the engine's own ops. */

#define TRY(x) do { if (!(x)) goto fail; } while (0)

static moe_tensor *retained(const moe_tensor *t) { moe_tensor_retain((moe_tensor *)t); return (moe_tensor *)t; }
static moe_tensor *mul(const moe_tensor *a, const moe_tensor *b) { return moe_binary(MOE_MUL, a, b); }
static moe_tensor *as_float_of(moe_tensor *mask, moe_dtype dt) { /* consumes mask */
  moe_tensor *f = mask ? moe_to_dtype(mask, dt) : NULL;
  moe_tensor_release(mask);
  return f;
}
/* release a list of temporaries */
static void drop(int n, moe_tensor **ts) { for (int i = 0; i < n; i++) moe_tensor_release(ts[i]); }

/* out = a (op) b: [broadcast shape] */
static int binary_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  moe_binop op = (moe_binop)n->iarg[0];
  const moe_tensor *a = MOE_SAVED(n, 0), *b = MOE_SAVED(n, 1), *out = MOE_SAVED(n, 2);
  int na = moe_node_needs(n, 0), nb = moe_node_needs(n, 1);
  moe_tensor *t[4] = {0};
  if ((n->saved[0] && !a) || (n->saved[1] && !b) || (n->saved[2] && !out)) return -1;
  switch (op) {
  case MOE_ADD:
    if (na) gin[0] = retained(g);
    if (nb) gin[1] = retained(g);
    return 0;
  case MOE_SUB:
    if (na) gin[0] = retained(g);
    if (nb) TRY(gin[1] = moe_unary(MOE_NEG, g, 0, 0));
    return 0;
  case MOE_MUL:
    if (na) TRY(gin[0] = mul(g, b));
    if (nb) TRY(gin[1] = mul(g, a));
    return 0;
  case MOE_DIV: /* d/da = 1/b, d/db = -a/b^2 = -out/b */
    if (na) TRY(gin[0] = moe_binary(MOE_DIV, g, b));
    if (nb) {
      TRY(t[0] = mul(g, out));
      TRY(t[1] = moe_binary(MOE_DIV, t[0], b));
      TRY(gin[1] = moe_unary(MOE_NEG, t[1], 0, 0));
    }
    break;
  case MOE_POW: /* d/da = b a^(b-1), d/db = out log a (0 where a <= 0) */
    if (na) {
      TRY(t[0] = moe_binary_scalar(MOE_SUB, b, 1, 0));
      TRY(t[1] = moe_binary(MOE_POW, a, t[0]));
      moe_tensor_release(t[0]);
      TRY(t[0] = mul(t[1], b));
      TRY(gin[0] = mul(g, t[0]));
      drop(2, t); t[0] = t[1] = NULL;
    }
    if (nb) {
      TRY(t[0] = moe_unary(MOE_LOG, a, 0, 0));
      TRY(t[1] = mul(t[0], out));
      TRY(t[2] = moe_binary_scalar(MOE_GT, a, 0, 0));
      TRY(t[3] = moe_binary_scalar(MOE_MUL, t[1], 0, 0));
      moe_tensor_release(t[0]);
      TRY(t[0] = moe_where(t[2], t[1], t[3]));
      TRY(gin[1] = mul(g, t[0]));
    }
    break;
  default: { /* maximum/minimum: the winner takes g, a tie splits it in half */
    TRY(t[0] = as_float_of(moe_binary(op == MOE_MAXIMUM ? MOE_GT : MOE_LT, a, b), g->dtype));
    TRY(t[1] = as_float_of(moe_binary(MOE_EQ, a, b), g->dtype));
    TRY(t[2] = moe_binary_scalar(MOE_MUL, t[1], 0.5, 0));
    TRY(t[3] = moe_binary(MOE_ADD, t[0], t[2]));
    TRY(gin[0] = mul(g, t[3]));
    if (nb) TRY(gin[1] = moe_binary(MOE_SUB, g, gin[0]));
    if (!na) { moe_tensor_release(gin[0]); gin[0] = NULL; }
  }
  }
  drop(4, t);
  return 0;
fail:
  drop(4, t);
  return -1;
}

static int is_differentiable(const moe_tensor *out) { return moe_dtype_is_float(out->dtype); }

moe_tensor *moe_binary(moe_binop op, const moe_tensor *a, const moe_tensor *b) {
  const moe_tensor *ins[2] = {a, b};
  if (is_compare(op) || !moe_ag_wants(2, ins)) return binary_impl(op, a, b);
  moe_tensor *out;
  MOE_NOGRAD(out, binary_impl(op, a, b));
  if (!out || !is_differentiable(out)) return out;
  moe_node *n = moe_node_new(binop_names[op], binary_backward, 2, ins);
  if (n) {
    n->iarg[0] = op;
    int na = moe_node_needs(n, 0), nb = moe_node_needs(n, 1), rc = 0;
    if ((op == MOE_MUL && nb) || op == MOE_POW || op == MOE_MAXIMUM || op == MOE_MINIMUM)
      rc |= moe_node_save(n, 0, a);
    if ((op == MOE_MUL && na) || op == MOE_DIV || op >= MOE_POW) rc |= moe_node_save(n, 1, b);
    if ((op == MOE_DIV && nb) || (op == MOE_POW && nb)) rc |= moe_node_save(n, 2, out);
    if (rc) { moe_node_release(n); n = NULL; }
  }
  return moe_ag_attach(out, n);
}

/* out = a (op) s, or s (op) a when iarg[1]: [a's shape] */
static int binary_scalar_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  moe_binop op = (moe_binop)n->iarg[0];
  int left = (int)n->iarg[1];
  double s = n->darg[0];
  const moe_tensor *a = MOE_SAVED(n, 0), *out = MOE_SAVED(n, 1);
  moe_tensor *t[4] = {0};
  if ((n->saved[0] && !a) || (n->saved[1] && !out)) return -1;
  switch (op) {
  case MOE_ADD: gin[0] = retained(g); return 0;
  case MOE_SUB: TRY(gin[0] = left ? moe_unary(MOE_NEG, g, 0, 0) : retained(g)); return 0;
  case MOE_MUL: TRY(gin[0] = moe_binary_scalar(MOE_MUL, g, s, 0)); return 0;
  case MOE_DIV:
    if (!left) { TRY(gin[0] = moe_binary_scalar(MOE_DIV, g, s, 0)); return 0; }
    TRY(t[0] = mul(g, out)); /* d(s/a)/da = -out/a */
    TRY(t[1] = moe_binary(MOE_DIV, t[0], a));
    TRY(gin[0] = moe_unary(MOE_NEG, t[1], 0, 0));
    break;
  case MOE_POW:
    if (left) { /* d(s^a)/da = out log s */
      TRY(t[0] = mul(g, out));
      TRY(gin[0] = moe_binary_scalar(MOE_MUL, t[0], log(s), 0));
      break;
    }
    TRY(t[0] = moe_binary_scalar(MOE_POW, a, s - 1, 0));
    TRY(t[1] = moe_binary_scalar(MOE_MUL, t[0], s, 0));
    TRY(gin[0] = mul(g, t[1]));
    break;
  default: /* maximum / minimum against a scalar */
    TRY(t[0] = as_float_of(moe_binary_scalar(op == MOE_MAXIMUM ? MOE_GT : MOE_LT, a, s, 0), g->dtype));
    TRY(t[1] = as_float_of(moe_binary_scalar(MOE_EQ, a, s, 0), g->dtype));
    TRY(t[2] = moe_binary_scalar(MOE_MUL, t[1], 0.5, 0));
    TRY(t[3] = moe_binary(MOE_ADD, t[0], t[2]));
    TRY(gin[0] = mul(g, t[3]));
  }
  drop(4, t);
  return 0;
fail:
  drop(4, t);
  return -1;
}

moe_tensor *moe_binary_scalar(moe_binop op, const moe_tensor *a, double s, int scalar_left) {
  if (is_compare(op) || !moe_ag_wants(1, &a)) return binary_scalar_impl(op, a, s, scalar_left);
  moe_tensor *out;
  MOE_NOGRAD(out, binary_scalar_impl(op, a, s, scalar_left));
  if (!out || !is_differentiable(out)) return out;
  moe_node *n = moe_node_new(binop_names[op], binary_scalar_backward, 1, &a);
  if (n) {
    n->iarg[0] = op;
    n->iarg[1] = scalar_left;
    n->darg[0] = s;
    int rc = 0;
    if ((op == MOE_DIV && scalar_left) || (op == MOE_POW && !scalar_left) || op == MOE_MAXIMUM ||
        op == MOE_MINIMUM)
      rc |= moe_node_save(n, 0, a);
    if ((op == MOE_DIV || op == MOE_POW) && scalar_left) rc |= moe_node_save(n, 1, out);
    if (rc) { moe_node_release(n); n = NULL; }
  }
  return moe_ag_attach(out, n);
}

/* y = op(x): gx = g op'(x), one fused kernel */
static int unary_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  const moe_tensor *x = moe_node_saved(n, 0), *y = moe_node_saved(n, 1);
  if (!x || !y) return -1;
  moe_tensor *xc = moe_to_dtype(x, y->dtype);
  moe_tensor *gx = xc ? moe_empty_on(y->device, y->ndim, y->shape, y->dtype) : NULL;
  if (gx) MOE_K(unary_backward, gx->device, (moe_unop)n->iarg[0], gx, g, xc, y, n->darg[0], n->darg[1]);
  moe_tensor_release(xc);
  return (gin[0] = gx) ? 0 : -1;
}

moe_tensor *moe_unary(moe_unop op, const moe_tensor *a, double p0, double p1) {
  if (!moe_ag_wants(1, &a)) return unary_impl(op, a, p0, p1);
  moe_tensor *out;
  MOE_NOGRAD(out, unary_impl(op, a, p0, p1));
  if (!out || !is_differentiable(out)) return out;
  moe_node *n = moe_node_new(unop_names[op], unary_backward, 1, &a);
  if (n) {
    n->iarg[0] = op;
    n->darg[0] = p0;
    n->darg[1] = p1;
    if (moe_node_save(n, 0, a) || moe_node_save(n, 1, out)) { moe_node_release(n); n = NULL; }
  }
  return moe_ag_attach(out, n);
}

/* out = cond ? a : b: g flows to a where cond holds, to b elsewhere */
static int where_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  const moe_tensor *c = moe_node_saved(n, 0);
  if (!c) return -1;
  moe_tensor *z = moe_full_on(g->device, 0, NULL, g->dtype, 0.0);
  if (!z) return -1;
  int rc = 0;
  if (moe_node_needs(n, 1) && !(gin[1] = moe_where(c, g, z))) rc = -1;
  if (!rc && moe_node_needs(n, 2) && !(gin[2] = moe_where(c, z, g))) rc = -1;
  moe_tensor_release(z);
  return rc;
}

moe_tensor *moe_where(const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b) {
  const moe_tensor *ins[3] = {cond, a, b};
  if (!moe_ag_wants(3, ins)) return where_impl(cond, a, b);
  moe_tensor *out;
  MOE_NOGRAD(out, where_impl(cond, a, b));
  if (!out || !is_differentiable(out)) return out;
  ins[0] = NULL; /* the condition gets no gradient */
  moe_node *n = moe_node_new("where", where_backward, 3, ins);
  if (n && moe_node_save(n, 0, cond)) { moe_node_release(n); n = NULL; }
  return moe_ag_attach(out, n);
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
    TRY(t[2] = moe_where(t[0], t[1], x));                              /* zeros -> 1 */
    TRY(t[3] = moe_reduce(MOE_RPROD, t[2], dims, 1, 0, NULL, 0));      /* product of nonzeros */
    TRY(t[4] = as_float_of(moe_reduce(MOE_RSUM, t[0], dims, 1, 0, NULL, 0), x->dtype));
    moe_tensor_release(t[1]);
    TRY(t[1] = moe_binary_scalar(MOE_EQ, t[4], 1, 0));                 /* exactly one zero */
    moe_tensor_release(t[4]);
    TRY(t[4] = as_float_of(retained(t[1]), x->dtype));
    moe_tensor_release(t[1]);
    TRY(t[1] = mul(t[3], t[4]));                                       /* grad at a zero */
    moe_tensor_release(t[3]);
    TRY(t[3] = moe_binary(MOE_DIV, ok, t[2]));                         /* grad elsewhere */
    moe_tensor_release(t[4]);
    TRY(t[4] = moe_where(t[0], t[1], t[3]));
    TRY(gin[0] = mul(gk, t[4]));
    break;
  }
  case MOE_RVAR: case MOE_RSTD: { /* var: 2 (x - mean) / (K - c); std: (x - mean) / ((K - c) std) */
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
  case MOE_RMAX: case MOE_RMIN: /* split evenly between tied extremes */
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

moe_tensor *moe_reduce(moe_redop op, const moe_tensor *t, unsigned dims, int keepdim,
                       int correction, moe_tensor **indices, int64_t ibase) {
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
    if (rc) { moe_node_release(n); n = NULL; }
  }
  return moe_ag_attach(out, n);
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
    if (rc) { moe_node_release(n); n = NULL; }
  }
  return moe_ag_attach(out, n);
}

/* out [..,M,N] = a [..,M,K] @ b [..,K,N]: ga = g b^T, gb = a^T g (1-D operands
 * get their unit dim back first) */
static int matmul_backward(moe_node *n, const moe_tensor *g0, moe_tensor **gin) {
  const moe_tensor *a0 = MOE_SAVED(n, 0), *b0 = MOE_SAVED(n, 1);
  if ((n->saved[0] && !a0) || (n->saved[1] && !b0)) return -1;
  int a1 = n->iarg[0] == 1, b1 = n->iarg[1] == 1, rc = -1;
  moe_precision prec = (moe_precision)n->iarg[2]; /* the backward GEMMs run in the forward's precision */
  moe_tensor *g = NULL, *u = NULL, *A = NULL, *B = NULL, *T = NULL, *P = NULL, *x2 = NULL, *g2 = NULL;
  /* G [.., M, N]: the output's gradient with the dims of 1-D operands restored */
  TRY(g = a1 ? moe_unsqueeze(g0, g0->ndim - (b1 ? 0 : 1)) : retained(g0));
  if (b1) { TRY(u = moe_unsqueeze(g, g->ndim)); moe_tensor_release(g); g = u; u = NULL; }
  if (moe_node_needs(n, 0)) { /* ga [.., M, K] = G @ B^T */
    TRY(B = b1 ? moe_unsqueeze(b0, 1) : retained(b0));
    TRY(T = moe_transpose(B, B->ndim - 2, B->ndim - 1));
    TRY(P = moe_matmul_prec(g, T, prec));
    TRY(gin[0] = a1 ? moe_squeeze(P, P->ndim - 2) : retained(P));
    moe_tensor_release(T); moe_tensor_release(P); T = P = NULL;
  }
  if (moe_node_needs(n, 1)) { /* gb [.., K, N] = A^T @ G */
    TRY(A = a1 ? moe_unsqueeze(a0, 0) : retained(a0));
    if (!b1 && n->iarg[1] == 2 && A->ndim > 2) { /* fold A's batch dims into its rows: one GEMM */
      int64_t ash[2] = {-1, A->shape[A->ndim - 1]}, gsh[2] = {-1, g->shape[g->ndim - 1]};
      TRY(x2 = moe_reshape(A, 2, ash));
      TRY(g2 = moe_reshape(g, 2, gsh));
      TRY(T = moe_transpose(x2, 0, 1));
      TRY(gin[1] = moe_matmul_prec(T, g2, prec));
    } else {
      TRY(T = moe_transpose(A, A->ndim - 2, A->ndim - 1));
      TRY(P = moe_matmul_prec(T, g, prec));
      TRY(gin[1] = b1 ? moe_squeeze(P, P->ndim - 1) : retained(P));
    }
  }
  rc = 0;
fail:
  moe_tensor_release(g); moe_tensor_release(A); moe_tensor_release(B); moe_tensor_release(T);
  moe_tensor_release(P); moe_tensor_release(x2); moe_tensor_release(g2);
  return rc;
}

moe_tensor *moe_matmul(const moe_tensor *a, const moe_tensor *b) { return moe_matmul_prec(a, b, MOE_PREC_FP32); }

moe_tensor *moe_matmul_prec(const moe_tensor *a, const moe_tensor *b, moe_precision prec) {
  const moe_tensor *ins[2] = {a, b};
  if (!moe_ag_wants(2, ins)) return matmul_impl(a, b, prec);
  moe_tensor *out;
  MOE_NOGRAD(out, matmul_impl(a, b, prec));
  if (!out) return NULL;
  moe_node *n = moe_node_new("matmul", matmul_backward, 2, ins);
  if (n) {
    n->iarg[0] = a->ndim;
    n->iarg[1] = b->ndim;
    n->iarg[2] = prec;
    int rc = 0;
    if (moe_node_needs(n, 1)) rc |= moe_node_save(n, 0, a);
    if (moe_node_needs(n, 0)) rc |= moe_node_save(n, 1, b);
    if (rc) { moe_node_release(n); n = NULL; }
  }
  return moe_ag_attach(out, n);
}
