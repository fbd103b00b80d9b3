/* metrics.h -- evaluation metrics that need the whole set at once. */
#ifndef MOE_METRICS_H
#define MOE_METRICS_H
#include "../core/moe.h"

/* Exact area under the ROC curve of scores s against binary labels y (any
 * numeric 1-D tensors of one length n; a label is positive when non-zero),
 * optionally weighted per sample by w (NULL: all 1). Tied scores move the
 * curve diagonally (trapezoids), as scikit-learn's roc_auc_score does, which
 * equals the Mann-Whitney statistic with average ranks. Returns 0 and *auc,
 * or -1 with an error: mismatched shapes, NaN scores, negative weights, or a
 * single class present (the area is then undefined). */
int moe_roc_auc(const moe_tensor *y, const moe_tensor *s, const moe_tensor *w, double *auc);

/* An exact-AUC accumulator over batches (a metric's state during an epoch):
 * each batch's labels, scores and optional weights ([n] or [n, 1], any
 * numeric dtype) are appended as doubles, so an update makes no tensor; a
 * batch without weights weighs 1. Zero-initialise; clear frees. The result's
 * errors are moe_roc_auc's, with the value's position over all batches. */
typedef struct {
  double *y, *s, *w; /* w stays NULL until a weighted batch arrives */
  int64_t n, cap;
} moe_auc_acc;
int moe_auc_acc_add(moe_auc_acc *a, const moe_tensor *y, const moe_tensor *s, const moe_tensor *w);
int moe_auc_acc_result(const moe_auc_acc *a, double *auc);
void moe_auc_acc_clear(moe_auc_acc *a);
#endif
