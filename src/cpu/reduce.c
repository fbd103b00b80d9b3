/* reduce.c -- reductions and scans over the rows of a contiguous [M,K] matrix.
 * src/core/ops_reduce.c moves the reduced dims last, so one row is one output element.
 * float32 sums accumulate in double. */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>

/* x [M,K] -> out [M]; MAX/MIN also write the 0-based argmax + ibase into idx [M] */
#define MINMAX_ROWS(T, CMP)                                \
  do {                                                     \
    const T *x = (const T *)moe_data(xt);                  \
    T *o = (T *)moe_data(out);                             \
    int64_t *ix = idx ? (int64_t *)moe_data(idx) : NULL;   \
    for (int64_t m = 0; m < M; m++) {                      \
      const T *r = x + m * K;                              \
      T best = r[0];                                       \
      int64_t bi = 0;                                      \
      for (int64_t k = 1; k < K; k++) {                    \
        T v = r[k];                                        \
        if (best != best) break; /* NaN wins and stays */  \
        if (v != v || v CMP best) {                        \
          best = v;                                        \
          bi = k;                                          \
        }                                                  \
      }                                                    \
      if (arg) ((int64_t *)moe_data(out))[m] = bi + ibase; \
      else o[m] = best;                                    \
      if (ix) ix[m] = bi + ibase;                          \
    }                                                      \
  } while (0)

#define SUMPROD_ROWS(T, ACC)                             \
  do {                                                   \
    const T *x = (const T *)moe_data(xt);                \
    T *o = (T *)moe_data(out);                           \
    for (int64_t m = 0; m < M; m++) {                    \
      const T *r = x + m * K;                            \
      ACC acc = op == MOE_RPROD ? 1 : 0;                 \
      if (op == MOE_RPROD)                               \
        for (int64_t k = 0; k < K; k++) acc *= r[k];     \
      else                                               \
        for (int64_t k = 0; k < K; k++) acc += r[k];     \
      if (op == MOE_RMEAN) acc = (ACC)(acc / (double)K); \
      o[m] = (T)acc;                                     \
    }                                                    \
  } while (0)

#define MOMENT_ROWS(T)                                                 \
  do {                                                                 \
    const T *x = (const T *)moe_data(xt);                              \
    T *o = (T *)moe_data(out);                                         \
    for (int64_t m = 0; m < M; m++) {                                  \
      const T *r = x + m * K;                                          \
      double res;                                                      \
      if (op == MOE_RLOGSUMEXP) {                                      \
        double mx = -INFINITY, s = 0;                                  \
        for (int64_t k = 0; k < K; k++)                                \
          if (r[k] > mx || r[k] != r[k]) mx = r[k];                    \
        if (isinf(mx) || mx != mx) res = mx;                           \
        else {                                                         \
          for (int64_t k = 0; k < K; k++) s += exp((double)r[k] - mx); \
          res = mx + log(s);                                           \
        }                                                              \
      } else {                                                         \
        double mean = 0, ss = 0;                                       \
        for (int64_t k = 0; k < K; k++) mean += r[k];                  \
        mean /= (double)K;                                             \
        for (int64_t k = 0; k < K; k++) {                              \
          double d = r[k] - mean;                                      \
          ss += d * d;                                                 \
        }                                                              \
        int64_t dof = K - correction;                                  \
        res = dof > 0 ? ss / (double)dof : NAN;                        \
        if (op == MOE_RSTD) res = sqrt(res);                           \
      }                                                                \
      o[m] = (T)res;                                                   \
    }                                                                  \
  } while (0)

void moe_cpu_reduce_rows(moe_redop op, const moe_tensor *xt, moe_tensor *out, moe_tensor *idx, int64_t M, int64_t K,
                         int correction, int64_t ibase) {
  moe_dtype dt = xt->dtype;
  int arg = op == MOE_RARGMAX || op == MOE_RARGMIN;
  switch (op) {
  case MOE_RMAX:
  case MOE_RARGMAX:
    switch (dt) {
    case MOE_F32: MINMAX_ROWS(float, >); break;
    case MOE_F64: MINMAX_ROWS(double, >); break;
    case MOE_I32: MINMAX_ROWS(int32_t, >); break;
    default: MINMAX_ROWS(int64_t, >); break;
    }
    break;
  case MOE_RMIN:
  case MOE_RARGMIN:
    switch (dt) {
    case MOE_F32: MINMAX_ROWS(float, <); break;
    case MOE_F64: MINMAX_ROWS(double, <); break;
    case MOE_I32: MINMAX_ROWS(int32_t, <); break;
    default: MINMAX_ROWS(int64_t, <); break;
    }
    break;
  case MOE_RSUM:
  case MOE_RPROD:
  case MOE_RMEAN:
    switch (dt) {
    case MOE_F32: SUMPROD_ROWS(float, double); break;
    case MOE_F64: SUMPROD_ROWS(double, double); break;
    default: SUMPROD_ROWS(int64_t, int64_t); break;
    }
    break;
  case MOE_RVAR:
  case MOE_RSTD:
  case MOE_RLOGSUMEXP:
    if (dt == MOE_F32) MOMENT_ROWS(float);
    else MOMENT_ROWS(double);
    break;
  case MOE_RALL:
  case MOE_RANY: {
    const uint8_t *x = (const uint8_t *)moe_data(xt);
    uint8_t *o = (uint8_t *)moe_data(out);
    for (int64_t m = 0; m < M; m++) {
      uint8_t acc = op == MOE_RALL;
      for (int64_t k = 0; k < K; k++)
        if ((x[m * K + k] != 0) != (op == MOE_RALL)) {
          acc = !acc;
          break;
        }
      o[m] = acc;
    }
    break;
  }
  default: break;
  }
}

#define SOFTMAX_ROWS(T, EXP, LOG)                                                       \
  do {                                                                                  \
    const T *x = (const T *)moe_data(xt);                                               \
    T *y = (T *)moe_data(out);                                                          \
    for (int64_t m = 0; m < M; m++) {                                                   \
      const T *r = x + m * K;                                                           \
      T *o = y + m * K;                                                                 \
      T mx = -INFINITY;                                                                 \
      for (int64_t k = 0; k < K; k++)                                                   \
        if (r[k] > mx || r[k] != r[k]) mx = r[k];                                       \
      if (isinf(mx) && mx < 0) mx = 0; /* a row of -inf: softmax is NaN, as in torch */ \
      double s = 0;                                                                     \
      for (int64_t k = 0; k < K; k++) {                                                 \
        T e = EXP(r[k] - mx);                                                           \
        o[k] = e;                                                                       \
        s += e;                                                                         \
      }                                                                                 \
      if (op == MOE_SOFTMAX) {                                                          \
        T inv = (T)(1.0 / s);                                                           \
        for (int64_t k = 0; k < K; k++) o[k] *= inv;                                    \
      } else {                                                                          \
        T lse = mx + (T)LOG(s);                                                         \
        for (int64_t k = 0; k < K; k++) o[k] = r[k] - lse;                              \
      }                                                                                 \
    }                                                                                   \
  } while (0)

#define CUM_ROWS(T, ACC)                            \
  do {                                              \
    const T *x = (const T *)moe_data(xt);           \
    T *y = (T *)moe_data(out);                      \
    for (int64_t m = 0; m < M; m++) {               \
      ACC acc = op == MOE_CUMPROD ? 1 : 0;          \
      for (int64_t k = 0; k < K; k++) {             \
        if (op == MOE_CUMPROD) acc *= x[m * K + k]; \
        else acc += x[m * K + k];                   \
        y[m * K + k] = (T)acc;                      \
      }                                             \
    }                                               \
  } while (0)

void moe_cpu_scan_rows(moe_scanop op, const moe_tensor *xt, moe_tensor *out, int64_t M, int64_t K) {
  switch (op) {
  case MOE_SOFTMAX:
  case MOE_LOG_SOFTMAX:
    if (xt->dtype == MOE_F32) SOFTMAX_ROWS(float, expf, log);
    else SOFTMAX_ROWS(double, exp, log);
    break;
  default:
    if (xt->dtype == MOE_F32) CUM_ROWS(float, double);
    else if (xt->dtype == MOE_F64) CUM_ROWS(double, double);
    else CUM_ROWS(int64_t, int64_t);
    break;
  }
}

/* x contiguous [O,K,N] float -> out [O,N] = sum (or mean) over K: the
 * reduction over a block of consecutive dims (a bias gradient), without moving
 * the data; float32 accumulates in double */
void moe_cpu_sum_middle(const moe_tensor *xt, moe_tensor *out, int64_t O, int64_t K, int64_t N, int mean) {
  double *acc = malloc(sizeof(double) * (size_t)(N ? N : 1));
  int f32 = xt->dtype == MOE_F32;
  const float *xf = (const float *)moe_data(xt);
  const double *xd = (const double *)moe_data(xt);
  float *of = (float *)moe_data(out);
  double *od = (double *)moe_data(out);
  for (int64_t o = 0; o < O; o++) {
    if (!acc) { /* out of memory for the buffer: one column at a time */
      for (int64_t j = 0; j < N; j++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += f32 ? xf[(o * K + k) * N + j] : xd[(o * K + k) * N + j];
        if (mean) s /= (double)K;
        if (f32) of[o * N + j] = (float)s;
        else od[o * N + j] = s;
      }
      continue;
    }
    for (int64_t j = 0; j < N; j++) acc[j] = 0;
    if (f32)
      for (int64_t k = 0; k < K; k++) {
        const float *r = xf + (o * K + k) * N;
        for (int64_t j = 0; j < N; j++) acc[j] += r[j];
      }
    else
      for (int64_t k = 0; k < K; k++) {
        const double *r = xd + (o * K + k) * N;
        for (int64_t j = 0; j < N; j++) acc[j] += r[j];
      }
    for (int64_t j = 0; j < N; j++) {
      double v = mean ? acc[j] / (double)K : acc[j];
      if (f32) of[o * N + j] = (float)v;
      else od[o * N + j] = v;
    }
  }
  free(acc);
}

/* cumprod backward for rows x, y, g, gx [M,K] contiguous float64:
 * gx_i = sum_{j>=i} g_j prod_{k<=j, k!=i} x_k (exact with zeros) */
void moe_cpu_cumprod_backward(const double *x, const double *y, const double *g, double *gx, int64_t M, int64_t K) {
  for (int64_t m = 0; m < M; m++, x += K, y += K, g += K, gx += K) {
    int zero = 0;
    for (int64_t k = 0; k < K; k++) zero |= x[k] == 0;
    if (!zero) { /* sum_{j>=i} g_j y_j / x_i */
      double acc = 0;
      for (int64_t i = K - 1; i >= 0; i--) {
        acc += g[i] * y[i];
        gx[i] = acc / x[i];
      }
      continue;
    }
    for (int64_t i = 0; i < K; i++) {
      double pre = i ? y[i - 1] : 1, acc = 0, run = pre;
      for (int64_t j = i; j < K; j++) {
        if (j > i) run *= x[j];
        acc += g[j] * run;
      }
      gx[i] = acc;
    }
  }
}
