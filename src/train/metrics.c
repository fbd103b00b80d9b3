/* metrics.c -- see metrics.h. */
#include "metrics.h"

#include <math.h>
#include <stdlib.h>

static double value_at(const moe_tensor *t, int64_t i) { return moe_get(t, &i); }

typedef struct {
  double s, y, w;
} item;

static int by_score_desc(const void *a, const void *b) {
  double x = ((const item *)a)->s, y = ((const item *)b)->s;
  return x < y ? 1 : x > y ? -1 : 0;
}

int moe_roc_auc(const moe_tensor *y, const moe_tensor *s, const moe_tensor *w, double *auc) {
  char b1[160], b2[160];
  if (y->ndim != 1 || s->ndim != 1 || y->shape[0] != s->shape[0] || (w && (w->ndim != 1 || w->shape[0] != y->shape[0])))
    return moe_error("roc_auc: labels %s, scores %s (and weights) must be 1-D of one length",
                     moe_shape_str(y, b1), moe_shape_str(s, b2));
  int64_t n = y->shape[0];
  item *v = malloc(sizeof *v * (size_t)(n ? n : 1));
  if (!v) return moe_error("roc_auc: out of memory");
  double P = 0, N = 0;
  for (int64_t i = 0; i < n; i++) {
    v[i].s = value_at(s, i);
    v[i].y = value_at(y, i) != 0;
    v[i].w = w ? value_at(w, i) : 1.0;
    /* the message's values are copied out of v before v is freed */
    double si = v[i].s, wi = v[i].w, yi = value_at(y, i);
    if (isnan(yi)) { free(v); return moe_error("roc_auc: label %lld is NaN", (long long)i + 1); }
    if (yi != 0 && yi != 1) {
      free(v);
      return moe_error("roc_auc: label %lld is %g (binary labels are 0 or 1)", (long long)i + 1, yi);
    }
    if (isnan(si)) { free(v); return moe_error("roc_auc: score %lld is NaN", (long long)i + 1); }
    if (!(wi >= 0) || isinf(wi)) {
      free(v);
      return moe_error("roc_auc: weight %lld is %g (must be finite and >= 0)", (long long)i + 1, wi);
    }
    if (v[i].y) P += v[i].w;
    else N += v[i].w;
  }
  if (P <= 0 || N <= 0) {
    free(v);
    return moe_error("roc_auc: only one class present in the labels (%lld samples): the area is undefined",
                     (long long)n);
  }
  qsort(v, (size_t)n, sizeof *v, by_score_desc);
  /* walk the thresholds from the highest score down; each group of tied scores
   * adds a trapezoid between the previous and the new (fp, tp) point */
  double tp = 0, fp = 0, area = 0;
  for (int64_t i = 0; i < n;) {
    double tp0 = tp, fp0 = fp;
    int64_t j = i;
    while (j < n && v[j].s == v[i].s) {
      if (v[j].y) tp += v[j].w;
      else fp += v[j].w;
      j++;
    }
    area += (fp - fp0) * (tp + tp0) / 2;
    i = j;
  }
  free(v);
  *auc = area / (P * N);
  return 0;
}
