/* ops_elementwise.c -- elementwise ops: binary (with broadcasting and weakly
 * typed scalars), unary, where; each op's checks, its dispatch to the device's
 * kernel (src/cpu/elementwise.c, src/cuda/elementwise.cu), its recording and
 * its backward. */
#include "ops_impl.h"
#include "tensor_impl.h"

#include <math.h>
#include <string.h>

static const char *binop_names[MOE_NBINOPS] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                               "eq",  "ne",  "lt",  "le",  "gt",  "ge"};
static const char *unop_names[MOE_NUNOPS] = {"neg",   "abs",   "relu", "sign",    "square", "clamp",    "exp",
                                             "log",   "sqrt",  "tanh", "sigmoid", "gelu",   "softplus", "log1p",
                                             "expm1", "floor", "ceil", "round",   "rsqrt"};
const char *moe_binop_name(moe_binop op) { return binop_names[op]; }
const char *moe_unop_name(moe_unop op) { return unop_names[op]; }

int moe_broadcast_shapes(const char *op, const moe_tensor *a, const moe_tensor *b, int *ndim, int64_t *shape) {
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
static int prepare_operands(const moe_tensor *a, const moe_tensor *b, moe_dtype dt, int ndim, const int64_t *shape,
                            moe_tensor *va, moe_tensor *vb, moe_tensor **ca, moe_tensor **cb) {
  *ca = moe_to_dtype(a, dt);
  *cb = *ca ? moe_to_dtype(b, dt) : NULL;
  if (!*ca || !*cb) return -1;
  moe_broadcast_to(*ca, ndim, shape, va);
  moe_broadcast_to(*cb, ndim, shape, vb);
  return 0;
}

static int host_scalar(const moe_tensor *t) { return t->ndim == 0 && t->storage->device != MOE_CUDA; }

/* ---------------------------------------------------------------- binary: forward, backward, recorder; in place */

static moe_tensor *binary_impl(moe_binop op, const moe_tensor *a, const moe_tensor *b) {
  int ndim = 0;
  int64_t shape[MOE_MAX_DIMS];
  /* a 0-dim host tensor (a Lua number's scalar, make_scalar below) joins an op
   * on any device: the kernels read it from the host, as PyTorch allows */
  const moe_tensor *ab[2] = {host_scalar(a) ? NULL : a, host_scalar(b) ? NULL : b};
  if (moe_same_device(binop_names[op], 2, ab)) return NULL;
  moe_device dev = a->device == MOE_CUDA || b->device == MOE_CUDA ? MOE_CUDA : MOE_CPU;
  if (moe_broadcast_shapes(binop_names[op], a, b, &ndim, shape)) return NULL;
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
      drop(2, t);
      t[0] = t[1] = NULL;
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
    if (!na) {
      moe_tensor_release(gin[0]);
      gin[0] = NULL;
    }
  }
  }
  drop(4, t);
  return 0;
fail:
  drop(4, t);
  return -1;
}

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
    if ((op == MOE_MUL && nb) || op == MOE_POW || op == MOE_MAXIMUM || op == MOE_MINIMUM) rc |= moe_node_save(n, 0, a);
    if ((op == MOE_MUL && na) || op == MOE_DIV || op >= MOE_POW) rc |= moe_node_save(n, 1, b);
    if ((op == MOE_DIV && nb) || (op == MOE_POW && nb)) rc |= moe_node_save(n, 2, out);
    if (rc) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(out, n);
}

int moe_binary_(moe_binop op, moe_tensor *a, const moe_tensor *b) {
  char b1[160], b2[160];
  moe_tensor vb;
  if (moe_check_writable(binop_names[op], a)) return -1;
  const moe_tensor *ab[2] = {a, host_scalar(b) ? NULL : b};
  if (moe_same_device(binop_names[op], 2, ab)) return -1;
  if (b->requires_grad && moe_grad_enabled())
    return moe_error("%s_: the operand requires grad, and in-place ops are not recorded; use %s "
                     "(not in place)",
                     binop_names[op], binop_names[op]);
  if (moe_broadcast_to(b, a->ndim, a->shape, &vb))
    return moe_error("%s_: shape %s cannot be broadcast to the in-place target's shape %s", binop_names[op],
                     moe_shape_str(b, b1), moe_shape_str(a, b2));
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

/* ---------------------------------------------------------------- with a scalar */

/* A scalar is weakly typed: it takes the tensor's dtype unless the tensor is
 * integral and the scalar is not, in which case the op computes in float32.
 * The scalar lives in `buf`, viewed as a 0-dim tensor `sc` on the caller's stack
 * (refcount 1, so a retain/release pair never frees it). */
typedef union {
  float f;
  double d;
  int32_t i;
  int64_t l;
} scalar_buf;

static void make_scalar(moe_binop op, moe_dtype tensor_dt, double s, scalar_buf *buf, moe_storage *st, moe_tensor *sc) {
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
    if (!left) {
      TRY(gin[0] = moe_binary_scalar(MOE_DIV, g, s, 0));
      return 0;
    }
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
    if ((op == MOE_DIV && scalar_left) || (op == MOE_POW && !scalar_left) || op == MOE_MAXIMUM || op == MOE_MINIMUM)
      rc |= moe_node_save(n, 0, a);
    if ((op == MOE_DIV || op == MOE_POW) && scalar_left) rc |= moe_node_save(n, 1, out);
    if (rc) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(out, n);
}

int moe_binary_scalar_(moe_binop op, moe_tensor *a, double s) {
  scalar_buf buf;
  moe_storage st;
  moe_tensor sc;
  make_scalar(op, a->dtype, s, &buf, &st, &sc);
  return moe_binary_(op, a, &sc);
}

/* ---------------------------------------------------------------- unary */

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
  if (op == MOE_CLAMP && !moe_dtype_is_float(dt) && (p0 != floor(p0) || p1 != floor(p1)) && !(isinf(p0) || isinf(p1)))
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
    if (moe_node_save(n, 0, a) || moe_node_save(n, 1, out)) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(out, n);
}

/* ---------------------------------------------------------------- where */

static moe_tensor *where_impl(const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b) {
  int n1 = 0, ndim = 0;
  int64_t s1[MOE_MAX_DIMS] = {0}, shape[MOE_MAX_DIMS];
  const moe_tensor *cab[3] = {cond, a, b};
  if (moe_same_device("where", 3, cab)) return NULL;
  if (moe_broadcast_shapes("where", a, b, &n1, s1)) return NULL;
  moe_tensor ab = {.ndim = n1};
  memcpy(ab.shape, s1, sizeof s1);
  if (moe_broadcast_shapes("where", cond, &ab, &ndim, shape)) return NULL;
  moe_dtype dt = moe_promote(a->dtype, b->dtype);
  moe_tensor va, vb, vc, *ca, *cb, *cc = NULL, *out = NULL;
  if (prepare_operands(a, b, dt, ndim, shape, &va, &vb, &ca, &cb) == 0 && (cc = moe_to_dtype(cond, MOE_BOOL))) {
    moe_broadcast_to(cc, ndim, shape, &vc);
    out = moe_empty_on(cond->device, ndim, shape, dt);
    if (out) MOE_K(where, out->device, out, &vc, &va, &vb);
  }
  moe_tensor_release(ca);
  moe_tensor_release(cb);
  moe_tensor_release(cc);
  return out;
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
  if (n && moe_node_save(n, 0, cond)) {
    moe_node_release(n);
    n = NULL;
  }
  return moe_ag_attach(out, n);
}
