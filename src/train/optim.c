/* optim.c -- SGD, Adam, AdamW, RMSprop and Adagrad as one fused pass over all
 * parameters, with gradient clipping by global norm and by value.
 * Update rules follow PyTorch's torch.optim (documented in README.md). */
#include "optim.h"

#include <math.h>
#include <string.h>

static const char *kind_name[] = {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad"};

static int same_layout(const moe_tensor *a, const moe_tensor *b) {
  return a->ndim == b->ndim && a->dtype == b->dtype &&
         !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) && moe_is_contiguous(b);
}

static int check(moe_optim_kind kind, int i, const moe_tensor *p, const moe_tensor *g,
                 const moe_tensor *s1, const moe_tensor *s2) {
  char b1[160], b2[160];
  const char *op = kind_name[kind];
  if (!moe_dtype_is_float(p->dtype) || !moe_is_contiguous(p))
    return moe_error("%s.step: parameter %d must be a contiguous float tensor (got %s, shape %s)", op,
                     i + 1, moe_dtype_name(p->dtype), moe_shape_str(p, b1));
  if (!same_layout(p, g))
    return moe_error("%s.step: gradient of parameter %d has shape %s (%s), the parameter %s (%s)", op,
                     i + 1, moe_shape_str(g, b1), moe_dtype_name(g->dtype), moe_shape_str(p, b2),
                     moe_dtype_name(p->dtype));
  if ((s1 && !same_layout(p, s1)) || (s2 && !same_layout(p, s2)))
    return moe_error("%s.step: optimizer state of parameter %d does not match its shape %s "
                     "(was the state loaded for another model?)", op, i + 1, moe_shape_str(p, b1));
  return 0;
}

/* one parameter: T is float or double; all arithmetic in double for the scalars */
#define UPDATE(T)                                                                             \
  do {                                                                                        \
    T *w = (T *)moe_data(p);                                                                  \
    const T *gr = (const T *)moe_data(g);                                                     \
    T *a = s1 ? (T *)moe_data(s1) : NULL, *b = s2 ? (T *)moe_data(s2) : NULL;                \
    for (int64_t j = 0; j < m; j++) {                                                         \
      double gj = (double)gr[j] * scale;                                                      \
      if (cv > 0) gj = gj > cv ? cv : gj < -cv ? -cv : gj;                                    \
      double wj = w[j];                                                                       \
      switch (kind) {                                                                         \
      case MOE_OPT_SGD:                                                                       \
        if (h->weight_decay) gj += h->weight_decay * wj;                                      \
        if (h->momentum) {                                                                    \
          double buf = step == 1 ? gj : h->momentum * a[j] + (1 - h->dampening) * gj;         \
          a[j] = (T)buf;                                                                      \
          gj = h->nesterov ? gj + h->momentum * buf : buf;                                    \
        }                                                                                     \
        wj -= h->lr * gj;                                                                     \
        break;                                                                                \
      case MOE_OPT_ADAM: case MOE_OPT_ADAMW: {                                                \
        if (kind == MOE_OPT_ADAMW) wj -= h->lr * h->weight_decay * wj;                        \
        else if (h->weight_decay) gj += h->weight_decay * wj;                                 \
        double mj = h->beta1 * a[j] + (1 - h->beta1) * gj;                                    \
        double vj = h->beta2 * b[j] + (1 - h->beta2) * gj * gj;                               \
        a[j] = (T)mj;                                                                         \
        b[j] = (T)vj;                                                                         \
        wj -= h->lr * (mj / bc1) / (sqrt(vj / bc2) + h->eps);                                 \
        break;                                                                                \
      }                                                                                       \
      case MOE_OPT_RMSPROP: {                                                                 \
        if (h->weight_decay) gj += h->weight_decay * wj;                                      \
        double vj = h->alpha * a[j] + (1 - h->alpha) * gj * gj;                               \
        a[j] = (T)vj;                                                                         \
        double d = gj / (sqrt(vj) + h->eps);                                                  \
        if (h->momentum) { d = h->momentum * b[j] + d; b[j] = (T)d; }                         \
        wj -= h->lr * d;                                                                      \
        break;                                                                                \
      }                                                                                       \
      case MOE_OPT_ADAGRAD: {                                                                 \
        if (h->weight_decay) gj += h->weight_decay * wj;                                      \
        double sj = a[j] + gj * gj;                                                           \
        a[j] = (T)sj;                                                                         \
        wj -= clr * gj / (sqrt(sj) + h->eps);                                                 \
        break;                                                                                \
      }                                                                                       \
      }                                                                                       \
      w[j] = (T)wj;                                                                           \
    }                                                                                         \
  } while (0)

int moe_optim_step(moe_optim_kind kind, int n, moe_tensor *const *params, moe_tensor *const *grads,
                   moe_tensor *const *s1s, moe_tensor *const *s2s, const int64_t *steps,
                   const moe_optim_hparams *h, double *norm_out) {
  int need1 = kind != MOE_OPT_SGD || h->momentum != 0;
  int need2 = kind == MOE_OPT_ADAM || kind == MOE_OPT_ADAMW || (kind == MOE_OPT_RMSPROP && h->momentum);
  for (int i = 0; i < n; i++) {
    if ((need1 && !s1s[i]) || (need2 && !s2s[i]))
      return moe_error("%s.step: missing optimizer state for parameter %d", kind_name[kind], i + 1);
    if (check(kind, i, params[i], grads[i], need1 ? s1s[i] : NULL, need2 ? s2s[i] : NULL)) return -1;
    if (params[i]->storage == grads[i]->storage)
      return moe_error("%s.step: parameter %d and its gradient share memory", kind_name[kind], i + 1);
  }
  /* global gradient norm, in double */
  double sq = 0;
  for (int i = 0; i < n; i++) {
    const moe_tensor *g = grads[i];
    int64_t m = moe_numel(g);
    if (g->dtype == MOE_F32) { const float *x = (const float *)moe_data(g); for (int64_t j = 0; j < m; j++) sq += (double)x[j] * x[j]; }
    else { const double *x = (const double *)moe_data(g); for (int64_t j = 0; j < m; j++) sq += x[j] * x[j]; }
  }
  double norm = sqrt(sq), scale = 1, cv = h->clip_value;
  if (norm_out) *norm_out = norm;
  if (h->clip_norm > 0 && norm > h->clip_norm) scale = h->clip_norm / (norm + 1e-6);
  for (int i = 0; i < n; i++) {
    moe_tensor *p = params[i];
    const moe_tensor *g = grads[i];
    moe_tensor *s1 = need1 ? s1s[i] : NULL, *s2 = need2 ? s2s[i] : NULL;
    int64_t m = moe_numel(p), step = steps[i];
    double bc1 = 1 - pow(h->beta1, (double)step), bc2 = 1 - pow(h->beta2, (double)step);
    double clr = h->lr / (1 + (double)(step - 1) * h->lr_decay);
    p->storage->version++;
    if (p->dtype == MOE_F32) UPDATE(float);
    else UPDATE(double);
  }
  return 0;
}
