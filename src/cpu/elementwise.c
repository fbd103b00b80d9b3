/* elementwise.c -- the strided iterator, casts, unary, binary and where kernels.
 *
 * Each kernel processes one innermost run of n elements: p[0] is the output,
 * p[1..] the inputs, s[k] the byte stride of operand k. Contiguous runs take a
 * plain indexed loop that the compiler vectorises; other runs step by stride. */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* elements from which an elementwise loop is split across cores */
#define MOE_PAR_MIN (1 << 20)
#define MOE_MAX_THREADS 8

static int nthreads = 0;

int moe_cpu_threads(void) {
  if (!nthreads) {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("MOE_NUM_THREADS");
    if (env && atoi(env) > 0) c = atoi(env);
    nthreads = c < 1 ? 1 : c > MOE_MAX_THREADS ? MOE_MAX_THREADS : (int)c;
  }
  return nthreads;
}

void moe_cpu_set_threads(int n) {
  nthreads = n < 1 ? 0 : n > MOE_MAX_THREADS ? MOE_MAX_THREADS : n; /* 0: the default again */
  moe_cpu_openblas_set_max_threads(n < 1 ? 0 : moe_cpu_threads());
}

typedef struct {
  int nops, nd;
  int64_t shape[MOE_MAX_DIMS], st[4][MOE_MAX_DIMS], inner, s[4], begin, end;
  char *base[4];
  moe_loop_fn fn;
  void *ctx;
} run_args;

/* elements [begin, end) of the coalesced iteration space (row-major over shape) */
static void run_range(const run_args *a) {
  int64_t pos = a->begin;
  while (pos < a->end) {
    int64_t o = pos / a->inner, i0 = pos % a->inner;
    int64_t len = a->inner - i0 < a->end - pos ? a->inner - i0 : a->end - pos;
    char *q[4];
    for (int k = 0; k < a->nops; k++) q[k] = a->base[k];
    int64_t rem = o;
    for (int d = a->nd - 2; d >= 0; d--) {
      int64_t i = rem % a->shape[d];
      rem /= a->shape[d];
      for (int k = 0; k < a->nops; k++) q[k] += i * a->st[k][d];
    }
    for (int k = 0; k < a->nops; k++) q[k] += i0 * a->s[k];
    a->fn(len, q, a->s, a->ctx);
    pos += len;
  }
}

static void run_part(void *parts, int i) { run_range((const run_args *)parts + i); }

void moe_cpu_foreach(int nops, const moe_tensor *const *ops, moe_loop_fn fn, void *ctx) {
  const moe_tensor *t0 = ops[0];
  int nd = 0;
  int64_t shape[MOE_MAX_DIMS], st[4][MOE_MAX_DIMS];
  char *base[4];
  for (int k = 0; k < nops; k++) base[k] = moe_data(ops[k]);
  for (int i = 0; i < t0->ndim; i++) {
    if (t0->shape[i] == 0) return;
    if (t0->shape[i] == 1) continue; /* size-1 dims never move the pointer */
    shape[nd] = t0->shape[i];
    for (int k = 0; k < nops; k++) st[k][nd] = ops[k]->stride[i] * (int64_t)moe_dtype_size(ops[k]->dtype);
    nd++;
  }
  /* coalesce dim d-1 into d when every operand steps contiguously across both */
  int m = 0;
  for (int d = 0; d < nd; d++) {
    if (m > 0) {
      int ok = 1;
      for (int k = 0; k < nops; k++)
        if (st[k][m - 1] != st[k][d] * shape[d]) {
          ok = 0;
          break;
        }
      if (ok) {
        shape[m - 1] *= shape[d];
        for (int k = 0; k < nops; k++) st[k][m - 1] = st[k][d];
        continue;
      }
    }
    shape[m] = shape[d];
    for (int k = 0; k < nops; k++) st[k][m] = st[k][d];
    m++;
  }
  nd = m;
  int64_t inner = nd ? shape[nd - 1] : 1, s[4] = {0, 0, 0, 0};
  for (int k = 0; k < nops; k++) s[k] = nd ? st[k][nd - 1] : 0;
  int64_t outer = 1;
  for (int d = 0; d < nd - 1; d++) outer *= shape[d];
  run_args a = {.nops = nops, .nd = nd, .inner = inner, .fn = fn, .ctx = ctx};
  memcpy(a.shape, shape, sizeof shape);
  memcpy(a.st, st, sizeof st);
  memcpy(a.base, base, sizeof base);
  memcpy(a.s, s, sizeof s);
  int64_t total = outer * inner;
  int nth = total >= MOE_PAR_MIN ? moe_cpu_threads() : 1;
  if (nth > 1) {
    /* large tensors: the flat element range in equal parts on the thread pool */
    run_args parts[MOE_MAX_THREADS];
    for (int t = 0; t < nth; t++) {
      parts[t] = a;
      parts[t].begin = total * t / nth;
      parts[t].end = total * (t + 1) / nth;
    }
    moe_cpu_parallel(nth, run_part, parts);
    return;
  }
  a.begin = 0;
  a.end = total;
  run_range(&a);
}

/* ---------------------------------------------------------------- casts */

#define CAST_FN(NAME, TO, FROM, CONV)                                                                    \
  static void NAME(int64_t n, char **p, const int64_t *s, void *ctx) {                                   \
    (void)ctx;                                                                                           \
    if (s[0] == sizeof(TO) && s[1] == sizeof(FROM)) {                                                    \
      TO *o = (TO *)p[0];                                                                                \
      const FROM *a = (const FROM *)p[1];                                                                \
      for (int64_t i = 0; i < n; i++) o[i] = CONV(a[i]);                                                 \
    } else {                                                                                             \
      for (int64_t i = 0; i < n; i++) *(TO *)(p[0] + i * s[0]) = CONV(*(const FROM *)(p[1] + i * s[1])); \
    }                                                                                                    \
  }
#define TOBOOL(x) ((uint8_t)((x) != 0))

#define CAST_ROW(TO, TN, CONV, FCONV)         \
  CAST_FN(cast_##TN##_f32, TO, float, FCONV)  \
  CAST_FN(cast_##TN##_f64, TO, double, FCONV) \
  CAST_FN(cast_##TN##_i32, TO, int32_t, CONV) \
  CAST_FN(cast_##TN##_i64, TO, int64_t, CONV) \
  CAST_FN(cast_##TN##_bool, TO, uint8_t, CONV)
CAST_ROW(float, f32, (float), (float))
CAST_ROW(double, f64, (double), (double))
CAST_ROW(int32_t, i32, (int32_t), moe_sat_i32)
CAST_ROW(int64_t, i64, (int64_t), moe_sat_i64)
CAST_ROW(uint8_t, bool, TOBOOL, TOBOOL)

static const moe_loop_fn cast_table[MOE_NDTYPES][MOE_NDTYPES] = {
#define ROW(TN) \
  { cast_##TN##_f32, cast_##TN##_f64, cast_##TN##_i32, cast_##TN##_i64, cast_##TN##_bool }
    ROW(f32), ROW(f64), ROW(i32), ROW(i64), ROW(bool)
#undef ROW
};

static void copy_run(int64_t n, char **p, const int64_t *s, void *ctx) {
  size_t es = (size_t)(intptr_t)ctx;
  if (s[0] == (int64_t)es && s[1] == (int64_t)es) {
    memcpy(p[0], p[1], (size_t)n * es);
    return;
  }
  switch (es) {
  case 1:
    for (int64_t i = 0; i < n; i++) *(uint8_t *)(p[0] + i * s[0]) = *(uint8_t *)(p[1] + i * s[1]);
    break;
  case 4:
    for (int64_t i = 0; i < n; i++) *(uint32_t *)(p[0] + i * s[0]) = *(uint32_t *)(p[1] + i * s[1]);
    break;
  default:
    for (int64_t i = 0; i < n; i++) *(uint64_t *)(p[0] + i * s[0]) = *(uint64_t *)(p[1] + i * s[1]);
    break;
  }
}

void moe_cpu_copy(moe_tensor *dst, const moe_tensor *src) {
  const moe_tensor *ops[2] = {dst, src};
  if (dst->dtype == src->dtype) moe_cpu_foreach(2, ops, copy_run, (void *)(intptr_t)moe_dtype_size(dst->dtype));
  else moe_cpu_foreach(2, ops, cast_table[dst->dtype][src->dtype], NULL);
}

/* every element of t = v (cast to t's dtype): a broadcast copy of one double */
void moe_cpu_fill(moe_tensor *t, double v) {
  double vv = v;
  moe_storage st = {.data = &vv, .refcount = 1};
  moe_tensor src = {.storage = &st, .dtype = MOE_F64, .ndim = t->ndim, .refcount = 1};
  memcpy(src.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim); /* strides 0: broadcast */
  moe_cpu_copy(t, &src);
}

/* ---------------------------------------------------------------- binary */

/* three loop shapes: all contiguous, b a broadcast scalar, general strides */
#define BIN_FN(NAME, T, TO, EXPR)                                               \
  static void NAME(int64_t n, char **p, const int64_t *s, void *ctx) {          \
    (void)ctx;                                                                  \
    TO *o = (TO *)p[0];                                                         \
    const T *pa = (const T *)p[1], *pb = (const T *)p[2];                       \
    if (s[0] == sizeof(TO) && s[1] == sizeof(T) && s[2] == sizeof(T)) {         \
      for (int64_t i = 0; i < n; i++) {                                         \
        T x = pa[i], y = pb[i];                                                 \
        o[i] = (TO)(EXPR);                                                      \
      }                                                                         \
    } else if (s[0] == sizeof(TO) && s[1] == sizeof(T) && s[2] == 0) {          \
      const T y = *pb;                                                          \
      for (int64_t i = 0; i < n; i++) {                                         \
        T x = pa[i];                                                            \
        o[i] = (TO)(EXPR);                                                      \
      }                                                                         \
    } else {                                                                    \
      for (int64_t i = 0; i < n; i++) {                                         \
        T x = *(const T *)(p[1] + i * s[1]), y = *(const T *)(p[2] + i * s[2]); \
        *(TO *)(p[0] + i * s[0]) = (TO)(EXPR);                                  \
      }                                                                         \
    }                                                                           \
  }

#define MAXV(x, y) ((x) != (x) ? (x) : ((y) != (y) ? (y) : ((x) > (y) ? (x) : (y))))
#define MINV(x, y) ((x) != (x) ? (x) : ((y) != (y) ? (y) : ((x) < (y) ? (x) : (y))))

#define BIN_SET(TN, T)                \
  BIN_FN(add_##TN, T, T, x + y)       \
  BIN_FN(sub_##TN, T, T, x - y)       \
  BIN_FN(mul_##TN, T, T, x *y)        \
  BIN_FN(max_##TN, T, T, MAXV(x, y))  \
  BIN_FN(min_##TN, T, T, MINV(x, y))  \
  BIN_FN(eq_##TN, T, uint8_t, x == y) \
  BIN_FN(ne_##TN, T, uint8_t, x != y) \
  BIN_FN(lt_##TN, T, uint8_t, x < y)  \
  BIN_FN(le_##TN, T, uint8_t, x <= y) \
  BIN_FN(gt_##TN, T, uint8_t, x > y)  \
  BIN_FN(ge_##TN, T, uint8_t, x >= y)
BIN_SET(f32, float)
BIN_SET(f64, double)
BIN_SET(i32, int32_t)
BIN_SET(i64, int64_t)
/* division and pow exist in float only: src/core/ops_elementwise.c computes them for integers in float32 */
BIN_FN(div_f32, float, float, x / y)
BIN_FN(div_f64, double, double, x / y)
BIN_FN(pow_f32, float, float, powf(x, y))
BIN_FN(pow_f64, double, double, pow(x, y))

#define BIN_ROW(TN, DIV, POW) \
  { add_##TN, sub_##TN, mul_##TN, DIV, POW, max_##TN, min_##TN, eq_##TN, ne_##TN, lt_##TN, le_##TN, gt_##TN, ge_##TN }
static const moe_loop_fn bin_table[4][MOE_NBINOPS] = {BIN_ROW(f32, div_f32, pow_f32), BIN_ROW(f64, div_f64, pow_f64),
                                                      BIN_ROW(i32, NULL, NULL), BIN_ROW(i64, NULL, NULL)};

void moe_cpu_binary(moe_binop op, moe_tensor *out, const moe_tensor *a, const moe_tensor *b) {
  const moe_tensor *ops[3] = {out, a, b};
  moe_cpu_foreach(3, ops, bin_table[a->dtype][op], NULL);
}

/* ---------------------------------------------------------------- unary */

typedef struct {
  double p0, p1;
} unary_ctx;

#define UN_FN(NAME, T, EXPR)                                                          \
  MOE_VEC_CLONES static void NAME(int64_t n, char **p, const int64_t *s, void *ctx) { \
    const unary_ctx *c = ctx;                                                         \
    (void)c;                                                                          \
    if (s[0] == sizeof(T) && s[1] == sizeof(T)) {                                     \
      T *o = (T *)p[0];                                                               \
      const T *a = (const T *)p[1];                                                   \
      for (int64_t i = 0; i < n; i++) {                                               \
        T x = a[i];                                                                   \
        o[i] = (T)(EXPR);                                                             \
      }                                                                               \
    } else {                                                                          \
      for (int64_t i = 0; i < n; i++) {                                               \
        T x = *(const T *)(p[1] + i * s[1]);                                          \
        *(T *)(p[0] + i * s[0]) = (T)(EXPR);                                          \
      }                                                                               \
    }                                                                                 \
  }

#define SIGNV(x) (((x) > 0) - ((x) < 0))
#define CLAMPV(x, lo, hi) ((x) != (x) ? (x) : ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x))))

/* integer-safe ops for every numeric dtype */
#define UN_INT_SET(TN, T)                           \
  UN_FN(neg_##TN, T, -x)                            \
  UN_FN(abs_##TN, T, x < 0 ? -x : x)                \
  UN_FN(relu_##TN, T, x > 0 ? x : (x != x ? x : 0)) \
  UN_FN(sign_##TN, T, SIGNV(x))                     \
  UN_FN(square_##TN, T, x *x)                       \
  UN_FN(clamp_##TN, T, CLAMPV(x, (T)c->p0, (T)c->p1))
UN_INT_SET(f32, float)
UN_INT_SET(f64, double)
UN_INT_SET(i32, int32_t)
UN_INT_SET(i64, int64_t)

static inline float softplusf_(float x) { return (x > 0 ? x : 0) + log1pf(expf(-fabsf(x))); }
static inline double softplus_(double x) { return (x > 0 ? x : 0) + log1p(exp(-fabs(x))); }
static inline float sigmoidf_(float x) {
  if (x >= 0) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}
static inline double sigmoid_(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

/* float32 exp and erf without library calls, so that the loops around them
 * vectorize (GELU on a [5120, 2048] activation was 11 ns per element with
 * libm's erff). exp: Cephes' expf polynomial after range reduction by ln 2
 * (relative error ~1e-7). float64 keeps libm. */
static inline float moe_expf(float x) {
  x = x < -87.3f ? -87.3f : x > 88.7f ? 88.7f : x;
  float t = x * 1.44269504088896341f;
  float fn = (t + 12582912.0f) - 12582912.0f; /* round to nearest by adding 1.5 * 2^23: no branch */
  int n = (int)fn;
  float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } sc = {.i = (n + 127) << 23};
  return p * sc.f;
}
/* erf as a rational function of x (odd polynomial over an even one, x clamped to
 * [-4, 4] where float32's erf is +-1): no exp, ~4e-7 absolute error. The
 * coefficients are the minimax fit used by Eigen and XLA. */
static inline float moe_erff(float x) {
  x = x < -4.f ? -4.f : x > 4.f ? 4.f : x;
  float x2 = x * x;
  float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}
#define moe_erf erf
#define moe_exp exp

#define UN_FLOAT_SET(TN, T, F, SIG, SP, HALF, RT2)        \
  UN_FN(exp_##TN, T, exp##F(x))                           \
  UN_FN(log_##TN, T, log##F(x))                           \
  UN_FN(sqrt_##TN, T, sqrt##F(x))                         \
  UN_FN(tanh_##TN, T, tanh##F(x))                         \
  UN_FN(sigmoid_##TN, T, SIG(x))                          \
  UN_FN(gelu_##TN, T, HALF *x *(1 + moe_erf##F(x / RT2))) \
  UN_FN(softplus_##TN, T, SP(x))                          \
  UN_FN(log1p_##TN, T, log1p##F(x))                       \
  UN_FN(expm1_##TN, T, expm1##F(x))                       \
  UN_FN(floor_##TN, T, floor##F(x))                       \
  UN_FN(ceil_##TN, T, ceil##F(x))                         \
  UN_FN(round_##TN, T, nearbyint##F(x))                   \
  UN_FN(rsqrt_##TN, T, 1 / sqrt##F(x))
UN_FLOAT_SET(f32, float, f, sigmoidf_, softplusf_, 0.5f, 1.41421356237309504880f)
UN_FLOAT_SET(f64, double, , sigmoid_, softplus_, 0.5, 1.41421356237309504880)

#define UN_ROW_F(TN)                                                                                                  \
  {                                                                                                                   \
    neg_##TN, abs_##TN, relu_##TN, sign_##TN, square_##TN, clamp_##TN, exp_##TN, log_##TN, sqrt_##TN, tanh_##TN,      \
        sigmoid_##TN, gelu_##TN, softplus_##TN, log1p_##TN, expm1_##TN, floor_##TN, ceil_##TN, round_##TN, rsqrt_##TN \
  }
#define UN_ROW_I(TN) \
  { neg_##TN, abs_##TN, relu_##TN, sign_##TN, square_##TN, clamp_##TN }
static const moe_loop_fn un_table[4][MOE_NUNOPS] = {UN_ROW_F(f32), UN_ROW_F(f64), UN_ROW_I(i32), UN_ROW_I(i64)};

void moe_cpu_unary(moe_unop op, moe_tensor *out, const moe_tensor *a, double p0, double p1) {
  unary_ctx c = {p0, p1};
  const moe_tensor *ops[2] = {out, a};
  moe_cpu_foreach(2, ops, un_table[a->dtype][op], &c);
}

/* ---------------------------------------------------------------- where */

#define WHERE_FN(NAME, T)                                                                                      \
  static void NAME(int64_t n, char **p, const int64_t *s, void *ctx) {                                         \
    (void)ctx;                                                                                                 \
    for (int64_t i = 0; i < n; i++)                                                                            \
      *(T *)(p[0] + i * s[0]) =                                                                                \
          *(const uint8_t *)(p[1] + i * s[1]) ? *(const T *)(p[2] + i * s[2]) : *(const T *)(p[3] + i * s[3]); \
  }
WHERE_FN(where1, uint8_t)
WHERE_FN(where4, uint32_t)
WHERE_FN(where8, uint64_t)

void moe_cpu_where(moe_tensor *out, const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b) {
  const moe_tensor *ops[4] = {out, cond, a, b};
  size_t es = moe_dtype_size(out->dtype);
  moe_cpu_foreach(4, ops, es == 1 ? where1 : es == 4 ? where4 : where8, NULL);
}

/* ---------------------------------------------------------------- unary backward */

/* gx = g * d op(x)/dx, written with x and/or y = op(x), whichever is cheaper.
 * p[0] gx, p[1] g, p[2] x, p[3] y; one float dtype, one shape. */
#define UNB_FN(NAME, T, EXPR)                                                               \
  MOE_VEC_CLONES static void NAME(int64_t n, char **p, const int64_t *s, void *ctx) {       \
    const unary_ctx *c = ctx;                                                               \
    (void)c;                                                                                \
    if (s[0] == sizeof(T) && s[1] == sizeof(T) && s[2] == sizeof(T) && s[3] == sizeof(T)) { \
      T *o = (T *)p[0];                                                                     \
      const T *gp = (const T *)p[1], *xp = (const T *)p[2], *yp = (const T *)p[3];          \
      for (int64_t i = 0; i < n; i++) { /* branch-free: vectorizes */                       \
        T g = gp[i], x = xp[i], y = yp[i];                                                  \
        (void)g;                                                                            \
        (void)x;                                                                            \
        (void)y;                                                                            \
        o[i] = (T)(EXPR);                                                                   \
      }                                                                                     \
      return;                                                                               \
    }                                                                                       \
    for (int64_t i = 0; i < n; i++) {                                                       \
      T g = *(const T *)(p[1] + i * s[1]);                                                  \
      T x = *(const T *)(p[2] + i * s[2]);                                                  \
      T y = *(const T *)(p[3] + i * s[3]);                                                  \
      (void)g;                                                                              \
      (void)x;                                                                              \
      (void)y;                                                                              \
      *(T *)(p[0] + i * s[0]) = (T)(EXPR);                                                  \
    }                                                                                       \
  }

#define UNB_SET(TN, T, F, SIG, HALF, RT2, RT2PI)                                                       \
  UNB_FN(bneg_##TN, T, -g)                                                                             \
  UNB_FN(babs_##TN, T, g *(T)SIGNV(x))                                                                 \
  UNB_FN(brelu_##TN, T, x > 0 ? g : 0)                                                                 \
  UNB_FN(bzero_##TN, T, 0)                                                                             \
  UNB_FN(bsquare_##TN, T, 2 * x * g)                                                                   \
  UNB_FN(bclamp_##TN, T, x >= (T)c->p0 && x <= (T)c->p1 ? g : 0)                                       \
  UNB_FN(bexp_##TN, T, g *y)                                                                           \
  UNB_FN(blog_##TN, T, g / x)                                                                          \
  UNB_FN(bsqrt_##TN, T, g *HALF / y)                                                                   \
  UNB_FN(btanh_##TN, T, g *(1 - y * y))                                                                \
  UNB_FN(bsigmoid_##TN, T, g *y *(1 - y))                                                              \
  UNB_FN(bgelu_##TN, T, g *(HALF * (1 + moe_erf##F(x / RT2)) + x * moe_exp##F(-HALF * x * x) / RT2PI)) \
  UNB_FN(bsoftplus_##TN, T, g *SIG(x))                                                                 \
  UNB_FN(blog1p_##TN, T, g / (1 + x))                                                                  \
  UNB_FN(bexpm1_##TN, T, g *(y + 1))                                                                   \
  UNB_FN(brsqrt_##TN, T, -HALF *g *y *y *y)
UNB_SET(f32, float, f, sigmoidf_, 0.5f, 1.41421356237309504880f, 2.50662827463100050242f)
UNB_SET(f64, double, , sigmoid_, 0.5, 1.41421356237309504880, 2.50662827463100050242)

#define UNB_ROW(TN)                                                                                              \
  {                                                                                                              \
    bneg_##TN, babs_##TN, brelu_##TN, bzero_##TN, bsquare_##TN, bclamp_##TN, bexp_##TN, blog_##TN, bsqrt_##TN,   \
        btanh_##TN, bsigmoid_##TN, bgelu_##TN, bsoftplus_##TN, blog1p_##TN, bexpm1_##TN, bzero_##TN, bzero_##TN, \
        bzero_##TN, brsqrt_##TN                                                                                  \
  }
static const moe_loop_fn unb_table[2][MOE_NUNOPS] = {UNB_ROW(f32), UNB_ROW(f64)};

void moe_cpu_unary_backward(moe_unop op, moe_tensor *gx, const moe_tensor *g, const moe_tensor *x, const moe_tensor *y,
                            double p0, double p1) {
  unary_ctx c = {p0, p1};
  const moe_tensor *ops[4] = {gx, g, x, y};
  moe_cpu_foreach(4, ops, unb_table[gx->dtype == MOE_F64][op], &c);
}
