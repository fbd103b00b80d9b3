/* losses.c -- the CPU kernels of the fused binary cross-entropy (the op and its
 * formulas: src/nn/losses.c; the CUDA twin: src/cuda/losses.cu). */
#include "cpu.h"

#include <math.h>

#define BCE_EPS 1e-7

typedef struct {
  int logits;
} bce_ctx;

#define BCE_FWD(NAME, T, LOG, LOG1P, EXP)                                                \
  static void NAME(int64_t n, char **p, const int64_t *s, void *ctx) {                   \
    int logits = ((const bce_ctx *)ctx)->logits;                                         \
    for (int64_t i = 0; i < n; i++) {                                                    \
      T y = *(const T *)(p[1] + i * s[1]), v = *(const T *)(p[2] + i * s[2]), l;         \
      if (logits) l = (v > 0 ? v : 0) + LOG1P(EXP(-(v < 0 ? -v : v))) - v * y;           \
      else {                                                                             \
        T q = v < (T)BCE_EPS ? (T)BCE_EPS : v > (T)(1 - BCE_EPS) ? (T)(1 - BCE_EPS) : v; \
        l = -(y * LOG(q) + (1 - y) * LOG(1 - q));                                        \
      }                                                                                  \
      *(T *)(p[0] + i * s[0]) = l;                                                       \
    }                                                                                    \
  }
BCE_FWD(bce_f32, float, logf, log1pf, expf)
BCE_FWD(bce_f64, double, log, log1p, exp)

/* p[0] gp, p[1] g, p[2] y, p[3] p */
#define BCE_BWD(NAME, T, EXP)                                                     \
  static void NAME(int64_t n, char **p, const int64_t *s, void *ctx) {            \
    int logits = ((const bce_ctx *)ctx)->logits;                                  \
    for (int64_t i = 0; i < n; i++) {                                             \
      T g = *(const T *)(p[1] + i * s[1]), y = *(const T *)(p[2] + i * s[2]);     \
      T v = *(const T *)(p[3] + i * s[3]), d;                                     \
      if (logits) {                                                               \
        T sg = v >= 0 ? 1 / (1 + EXP(-v)) : EXP(v) / (1 + EXP(v));                \
        d = sg - y;                                                               \
      } else {                                                                    \
        d = v < (T)BCE_EPS || v > (T)(1 - BCE_EPS) ? 0 : (v - y) / (v * (1 - v)); \
      }                                                                           \
      *(T *)(p[0] + i * s[0]) = g * d;                                            \
    }                                                                             \
  }
BCE_BWD(bce_bwd_f32, float, expf)
BCE_BWD(bce_bwd_f64, double, exp)

/* l = bce(y, p) elementwise; one shape and float dtype (any strides) */
void moe_cpu_bce(moe_tensor *l, const moe_tensor *y, const moe_tensor *p, int logits) {
  bce_ctx c = {logits};
  const moe_tensor *ops[3] = {l, y, p};
  moe_cpu_foreach(3, ops, p->dtype == MOE_F32 ? bce_f32 : bce_f64, &c);
}

/* gp = g * dl/dp */
void moe_cpu_bce_backward(moe_tensor *gp, const moe_tensor *g, const moe_tensor *y, const moe_tensor *p, int logits) {
  bce_ctx c = {logits};
  const moe_tensor *ops[4] = {gp, g, y, p};
  moe_cpu_foreach(4, ops, p->dtype == MOE_F32 ? bce_bwd_f32 : bce_bwd_f64, &c);
}
