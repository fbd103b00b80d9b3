/* metrics.c -- see metrics.h. The exact ROC-AUC kernel: src/cpu/metrics.c. */
#include "metrics.h"
#include "../core/dispatch.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* element i of a [n] or [n, 1] tensor */
static double value_at(const moe_tensor *t, int64_t i) {
  int64_t idx[2] = {i, 0};
  return moe_get(t, idx);
}

/* the n values of t as doubles into dst: contiguous float32/float64 directly */
static void values_into(double *dst, const moe_tensor *t, int64_t n) {
  if (moe_is_contiguous(t) && t->dtype == MOE_F32) {
    const float *src = (const float *)moe_data(t);
    for (int64_t i = 0; i < n; i++) dst[i] = src[i];
  } else if (moe_is_contiguous(t) && t->dtype == MOE_F64) {
    memcpy(dst, moe_data(t), sizeof(double) * (size_t)n);
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] = value_at(t, i);
  }
}

int moe_roc_auc(const moe_tensor *y, const moe_tensor *s, const moe_tensor *w, double *auc) {
  char b1[160], b2[160];
  const moe_tensor *ys[3] = {y, s, w};
  if (moe_same_device("roc_auc", 3, ys) || moe_backend_require("roc_auc", y->device, MOE_KERNEL_roc_auc)) return -1;
  if (y->ndim != 1 || s->ndim != 1 || y->shape[0] != s->shape[0] || (w && (w->ndim != 1 || w->shape[0] != y->shape[0])))
    return moe_error("roc_auc: labels %s, scores %s (and weights) must be 1-D of one length", moe_shape_str(y, b1),
                     moe_shape_str(s, b2));
  int64_t n = y->shape[0];
  double *buf = malloc(sizeof(double) * (size_t)(3 * n + 1));
  if (!buf) return moe_error("roc_auc: out of memory");
  values_into(buf, y, n);
  values_into(buf + n, s, n);
  if (w) values_into(buf + 2 * n, w, n);
  int rc = MOE_KH(roc_auc, y->device, "roc_auc", buf, buf + n, w ? buf + 2 * n : NULL, n, auc);
  free(buf);
  return rc;
}

/* ---------------------------------------------------------------- AUC accumulator */

/* a batch's values: [n] or [n, 1] */
static int column_len(const char *op, const char *what, const moe_tensor *t, int64_t *n) {
  char b[160];
  if (t->ndim == 1) *n = t->shape[0];
  else if (t->ndim == 2 && t->shape[1] == 1) *n = t->shape[0];
  else return moe_error("%s: %s must be [n] or [n, 1], got %s", op, what, moe_shape_str(t, b));
  return 0;
}

int moe_auc_acc_add(moe_auc_acc *a, const moe_tensor *y, const moe_tensor *s, const moe_tensor *w) {
  int64_t n = 0, ns = 0, nw = 0;
  const moe_tensor *ys[3] = {y, s, w};
  if (moe_same_device("auc", 3, ys) || moe_backend_require("auc", y->device, MOE_KERNEL_roc_auc)) return -1;
  if (column_len("auc", "y_true", y, &n) || column_len("auc", "y_pred", s, &ns)) return -1;
  if (n != ns) return moe_error("auc: y_true has %lld values and y_pred %lld", (long long)n, (long long)ns);
  if (w) {
    if (column_len("auc", "sample_weight", w, &nw)) return -1;
    if (nw != n) return moe_error("auc: %lld sample weights for %lld samples", (long long)nw, (long long)n);
  }
  if (a->n + n > a->cap) {
    int64_t cap = a->cap ? a->cap : 1024;
    while (cap < a->n + n) cap *= 2;
    double *ny = realloc(a->y, sizeof(double) * (size_t)cap);
    if (ny) a->y = ny;
    double *ns2 = ny ? realloc(a->s, sizeof(double) * (size_t)cap) : NULL;
    if (ns2) a->s = ns2;
    double *nw2 = ns2 && a->w ? realloc(a->w, sizeof(double) * (size_t)cap) : NULL;
    if (nw2) a->w = nw2;
    if (!ny || !ns2 || (a->w && !nw2)) return moe_error("auc: out of memory");
    a->cap = cap;
  }
  if (w && !a->w) { /* the first weighted batch: the earlier ones weigh 1 */
    if (!(a->w = malloc(sizeof(double) * (size_t)a->cap))) return moe_error("auc: out of memory");
    for (int64_t i = 0; i < a->n; i++) a->w[i] = 1.0;
  }
  values_into(a->y + a->n, y, n);
  values_into(a->s + a->n, s, n);
  if (a->w) {
    if (w) values_into(a->w + a->n, w, n);
    else
      for (int64_t i = 0; i < n; i++) a->w[a->n + i] = 1.0;
  }
  a->n += n;
  return 0;
}

int moe_auc_acc_result(const moe_auc_acc *a, double *auc) {
  return MOE_KH(roc_auc, MOE_CPU, "auc", a->y, a->s, a->w, a->n, auc); /* (its values are on the host) */
}

void moe_auc_acc_clear(moe_auc_acc *a) {
  free(a->y);
  free(a->s);
  free(a->w);
  a->y = a->s = a->w = NULL;
  a->n = a->cap = 0;
}
