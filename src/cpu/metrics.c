/* metrics.c -- the CPU kernel of the exact ROC-AUC (the ops that feed it:
 * src/train/metrics.c): a radix sort of the scores, then the area with ties. */
#include "cpu.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* a score's sort key: the double's bits mapped so that unsigned order is
 * numeric order (-0 is +0 first, so that the two tie) */
static uint64_t score_key(double s) {
  if (s == 0) s = 0;
  uint64_t b;
  memcpy(&b, &s, sizeof b);
  return (b >> 63) ? ~b : b | (UINT64_C(1) << 63);
}

typedef struct {
  uint64_t key;
  uint32_t pos; /* the value's position */
  uint32_t pos_hi;
} keyed;

/* LSD radix sort by key, 8 bits a pass, skipping the passes where every key
 * has the same byte (the high bytes of probabilities in [0, 1]); v and tmp
 * hold n items; the sorted order ends in v. (qsort with a comparison call
 * took 16 ms for 32,768 scores, once per output per epoch of fit{}.) */
static void radix_sort(keyed *v, keyed *tmp, int64_t n) {
  for (int shift = 0; shift < 64; shift += 8) {
    int64_t count[257] = {0};
    for (int64_t i = 0; i < n; i++) count[((v[i].key >> shift) & 0xff) + 1]++;
    int skip = 0;
    for (int d = 1; d <= 256; d++)
      if (count[d] == n) skip = 1;
    if (skip) continue;
    for (int d = 1; d <= 256; d++) count[d] += count[d - 1];
    for (int64_t i = 0; i < n; i++) tmp[count[(v[i].key >> shift) & 0xff]++] = v[i];
    memcpy(v, tmp, sizeof *v * (size_t)n);
  }
}

/* the area over n (label, score, weight) values; w NULL: all 1. Errors name
 * the 1-based position of the offending value and start with `op` */
int moe_cpu_roc_auc(const char *op, const double *y, const double *s, const double *w, int64_t n, double *auc) {
  double P = 0, N = 0;
  for (int64_t i = 0; i < n; i++) {
    double yi = y[i], si = s[i], wi = w ? w[i] : 1.0;
    if (isnan(yi)) return moe_error("%s: label %lld is NaN", op, (long long)i + 1);
    if (yi != 0 && yi != 1)
      return moe_error("%s: label %lld is %g (binary labels are 0 or 1)", op, (long long)i + 1, yi);
    if (isnan(si)) return moe_error("%s: score %lld is NaN", op, (long long)i + 1);
    if (!(wi >= 0) || isinf(wi))
      return moe_error("%s: weight %lld is %g (must be finite and >= 0)", op, (long long)i + 1, wi);
    if (yi != 0) P += wi;
    else N += wi;
  }
  if (P <= 0 || N <= 0)
    return moe_error("%s: only one class present in the labels (%lld samples): the area is undefined", op,
                     (long long)n);
  keyed *v = malloc(sizeof *v * (size_t)(2 * n));
  if (!v) return moe_error("%s: out of memory", op);
  for (int64_t i = 0; i < n; i++) {
    v[i].key = score_key(s[i]);
    v[i].pos = (uint32_t)i;
    v[i].pos_hi = (uint32_t)((uint64_t)i >> 32);
  }
  radix_sort(v, v + n, n);
  /* walk the thresholds from the highest score down; each group of tied scores
   * adds a trapezoid between the previous and the new (fp, tp) point */
  double tp = 0, fp = 0, area = 0;
  for (int64_t i = n - 1; i >= 0;) {
    double tp0 = tp, fp0 = fp;
    int64_t j = i;
    while (j >= 0 && v[j].key == v[i].key) {
      int64_t k = (int64_t)v[j].pos | (int64_t)((uint64_t)v[j].pos_hi << 32);
      double wk = w ? w[k] : 1.0;
      if (y[k] != 0) tp += wk;
      else fp += wk;
      j--;
    }
    area += (fp - fp0) * (tp + tp0) / 2;
    i = j;
  }
  free(v);
  *auc = area / (P * N);
  return 0;
}
