/* optim.c -- the CPU kernel of the fused optimizer update (the checks and the
 * rules' references: src/train/optim.c and README.md). */
#include "cpu.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* One parameter's update: a loop per rule so each vectorizes; T is float or
 * double and the arithmetic stays in T. g' = clip(g * scale) first. */
#define CLIPPED(T, gr, j)                                           \
  ({                                                                \
    T g_ = gr[j] * (T)scale;                                        \
    cv > 0 ? (g_ > (T)cv ? (T)cv : g_ < (T)-cv ? (T)-cv : g_) : g_; \
  })

#define DEFINE_UPDATE(T, SQRT, NAME)                                                                                  \
  MOE_VEC_CLONES static void NAME(moe_optim_kind kind, int64_t m, T *restrict w, const T *restrict gr, T *restrict a, \
                                  T *restrict b, const moe_optim_hparams *h, int64_t step, double scale, double cv,   \
                                  double bc1, double bc2, double clr) {                                               \
    const T lr = (T)h->lr, wd = (T)h->weight_decay, mom = (T)h->momentum;                                             \
    const T b1 = (T)h->beta1, b2 = (T)h->beta2, eps = (T)h->eps, al = (T)h->alpha;                                    \
    switch (kind) {                                                                                                   \
    case MOE_OPT_SGD:                                                                                                 \
      for (int64_t j = 0; j < m; j++) {                                                                               \
        T g = CLIPPED(T, gr, j) + wd * w[j];                                                                          \
        if (mom != 0) {                                                                                               \
          T buf = step == 1 ? g : mom * a[j] + (T)(1 - h->dampening) * g;                                             \
          a[j] = buf;                                                                                                 \
          g = h->nesterov ? g + mom * buf : buf;                                                                      \
        }                                                                                                             \
        w[j] -= lr * g;                                                                                               \
      }                                                                                                               \
      break;                                                                                                          \
    case MOE_OPT_ADAM:                                                                                                \
    case MOE_OPT_ADAMW: {                                                                                             \
      const T decay = kind == MOE_OPT_ADAMW ? 1 - lr * wd : 1, l2 = kind == MOE_OPT_ADAM ? wd : 0;                    \
      const T step_size = lr / (T)bc1, inv_bc2 = (T)(1 / sqrt(bc2));                                                  \
      for (int64_t j = 0; j < m; j++) {                                                                               \
        T g = CLIPPED(T, gr, j) + l2 * w[j];                                                                          \
        T mj = b1 * a[j] + (1 - b1) * g, vj = b2 * b[j] + (1 - b2) * g * g;                                           \
        a[j] = mj;                                                                                                    \
        b[j] = vj;                                                                                                    \
        w[j] = w[j] * decay - step_size * mj / (SQRT(vj) * inv_bc2 + eps);                                            \
      }                                                                                                               \
      break;                                                                                                          \
    }                                                                                                                 \
    case MOE_OPT_RMSPROP:                                                                                             \
      for (int64_t j = 0; j < m; j++) {                                                                               \
        T g = CLIPPED(T, gr, j) + wd * w[j];                                                                          \
        T vj = al * a[j] + (1 - al) * g * g;                                                                          \
        a[j] = vj;                                                                                                    \
        T d = g / (SQRT(vj) + eps);                                                                                   \
        if (mom != 0) {                                                                                               \
          d = mom * b[j] + d;                                                                                         \
          b[j] = d;                                                                                                   \
        }                                                                                                             \
        w[j] -= lr * d;                                                                                               \
      }                                                                                                               \
      break;                                                                                                          \
    case MOE_OPT_ADAGRAD:                                                                                             \
      for (int64_t j = 0; j < m; j++) {                                                                               \
        T g = CLIPPED(T, gr, j) + wd * w[j];                                                                          \
        T sj = a[j] + g * g;                                                                                          \
        a[j] = sj;                                                                                                    \
        w[j] -= (T)clr * g / (SQRT(sj) + eps);                                                                        \
      }                                                                                                               \
      break;                                                                                                          \
    }                                                                                                                 \
  }
DEFINE_UPDATE(float, sqrtf, update_f32)
DEFINE_UPDATE(double, sqrt, update_f64)

typedef struct {
  moe_optim_kind kind;
  int n, parts;
  moe_tensor *const *params, *const *grads, *const *s1s, *const *s2s;
  const int64_t *steps;
  const moe_optim_hparams *h;
  double scale, cv;
} update_job;

#define OPTIM_PARALLEL 262144 /* values in all, for the update to be split across cores */
#define OPTIM_SLICE 32768     /* a parameter at least this large is sliced; smaller ones go whole to one part */

/* part `part` of `parts` of the update: a slice of each large parameter, and
 * every parts-th small one */
static void update_part(void *ctx, int part) {
  const update_job *u = ctx;
  for (int i = 0; i < u->n; i++) {
    moe_tensor *p = u->params[i];
    const moe_tensor *g = u->grads[i];
    moe_tensor *s1 = u->s1s ? u->s1s[i] : NULL, *s2 = u->s2s ? u->s2s[i] : NULL;
    int64_t m = moe_numel(p), step = u->steps[i], lo = 0, hi = m;
    if (u->parts > 1) {
      if (m >= OPTIM_SLICE) {
        lo = m * part / u->parts;
        hi = m * (part + 1) / u->parts;
      } else if (i % u->parts != part) continue;
    }
    const moe_optim_hparams *h = u->h;
    double bc1 = 1 - pow(h->beta1, (double)step), bc2 = 1 - pow(h->beta2, (double)step);
    double clr = h->lr / (1 + (double)(step - 1) * h->lr_decay);
    if (p->dtype == MOE_F32)
      update_f32(u->kind, hi - lo, (float *)moe_data(p) + lo, (const float *)moe_data(g) + lo,
                 s1 ? (float *)moe_data(s1) + lo : NULL, s2 ? (float *)moe_data(s2) + lo : NULL, h, step, u->scale,
                 u->cv, bc1, bc2, clr);
    else
      update_f64(u->kind, hi - lo, (double *)moe_data(p) + lo, (const double *)moe_data(g) + lo,
                 s1 ? (double *)moe_data(s1) + lo : NULL, s2 ? (double *)moe_data(s2) + lo : NULL, h, step, u->scale,
                 u->cv, bc1, bc2, clr);
  }
}

static int by_address(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

/* whether two of the parameters share a storage (a tensor listed twice, or two
 * views of one): then the update stays on one thread, in order, as the split
 * across cores would update the shared values from two threads at once */
static int shares_storage(int n, moe_tensor *const *params) {
  void **st = malloc(sizeof(void *) * (size_t)(n ? n : 1));
  if (!st) return 1;
  for (int i = 0; i < n; i++) st[i] = params[i]->storage;
  qsort(st, (size_t)n, sizeof *st, by_address);
  int shared = 0;
  for (int i = 1; i < n && !shared; i++) shared = st[i] == st[i - 1];
  free(st);
  return shared;
}

/* the update of every params[i] from grads[i] with states s1s/s2s (NULL when the
 * rule has none); the global gradient norm into *norm_out and norm_t (each when
 * non-NULL; -1 unless clip_norm) */
void moe_cpu_optim_update(moe_optim_kind kind, int n, moe_tensor *const *params, moe_tensor *const *grads,
                          moe_tensor *const *s1s, moe_tensor *const *s2s, const int64_t *steps,
                          const moe_optim_hparams *h, double *norm_out, moe_tensor *norm_t) {
  /* global gradient norm, in double: only when clipping by it (it costs a pass) */
  double norm = -1, scale = 1, cv = h->clip_value;
  if (h->clip_norm > 0) {
    double sq = 0;
    for (int i = 0; i < n; i++) {
      const moe_tensor *g = grads[i];
      int64_t m = moe_numel(g);
      if (g->dtype == MOE_F32) {
        const float *x = (const float *)moe_data(g);
        for (int64_t j = 0; j < m; j++) sq += (double)x[j] * x[j];
      } else {
        const double *x = (const double *)moe_data(g);
        for (int64_t j = 0; j < m; j++) sq += x[j] * x[j];
      }
    }
    norm = sqrt(sq);
  }
  if (norm_out) *norm_out = norm;
  if (norm_t) *(double *)moe_data(norm_t) = norm;
  if (h->clip_norm > 0 && norm > h->clip_norm) scale = h->clip_norm / (norm + 1e-6);
  if (h->skip && *h->skip) return;
  update_job u = {.kind = kind,
                  .n = n,
                  .params = params,
                  .grads = grads,
                  .s1s = s1s,
                  .s2s = s2s,
                  .steps = steps,
                  .h = h,
                  .scale = scale,
                  .cv = cv,
                  .parts = 1};
  int64_t total = 0;
  for (int i = 0; i < n; i++) total += moe_numel(params[i]);
  /* the update is memory-bound: past a few hundred thousand values, every
   * core takes a slice of each large parameter (1.6 M Adam values: 4.4 ms on
   * one core of the 2-core development VM) */
  int nth = moe_cpu_threads();
  if (nth > 1 && total >= OPTIM_PARALLEL && !shares_storage(n, params)) {
    u.parts = nth;
    moe_cpu_parallel(nth, update_part, &u);
  } else {
    update_part(&u, 0);
  }
}
