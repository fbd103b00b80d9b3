/* optim.c -- SGD, Adam, AdamW, RMSprop and Adagrad as one fused pass over all
 * parameters, with gradient clipping by global norm and by value: the checks
 * (every tensor before any is written), then the update kernel (src/cpu/optim.c,
 * src/cuda/optim.cu). Update rules follow PyTorch's torch.optim (README.md). */
#include "optim.h"
#include "../core/tensor_impl.h"
#include "../core/dispatch.h"
#include "../cpu/cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *kind_name[] = {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad"};

static int same_layout(const moe_tensor *a, const moe_tensor *b) {
  return a->ndim == b->ndim && a->dtype == b->dtype && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) &&
      moe_is_contiguous(b);
}

static int check(moe_optim_kind kind, int i, const moe_tensor *p, const moe_tensor *g, const moe_tensor *s1,
                 const moe_tensor *s2) {
  char b1[160], b2[160];
  const char *op = kind_name[kind];
  if (!moe_dtype_is_float(p->dtype) || !moe_is_contiguous(p))
    return moe_error("%s.step: parameter %d must be a contiguous float tensor (got %s, shape %s)", op, i + 1,
                     moe_dtype_name(p->dtype), moe_shape_str(p, b1));
  if (!same_layout(p, g))
    return moe_error("%s.step: gradient of parameter %d has shape %s (%s), the parameter %s (%s)", op, i + 1,
                     moe_shape_str(g, b1), moe_dtype_name(g->dtype), moe_shape_str(p, b2), moe_dtype_name(p->dtype));
  if ((s1 && !same_layout(p, s1)) || (s2 && !same_layout(p, s2)))
    return moe_error("%s.step: optimizer state of parameter %d does not match its shape %s "
                     "(was the state loaded for another model?)",
                     op, i + 1, moe_shape_str(p, b1));
  return 0;
}

int moe_optim_step(moe_optim_kind kind, int n, moe_tensor *const *params, moe_tensor *const *grads,
                   moe_tensor *const *s1s, moe_tensor *const *s2s, const int64_t *steps, const moe_optim_hparams *h,
                   double *norm_out, moe_tensor *norm_t) {
  if (norm_t && (norm_t->ndim != 0 || norm_t->dtype != MOE_F64 || (n > 0 && norm_t->device != params[0]->device)))
    return moe_error("%s.step: the norm's tensor must be a 0-dim float64 tensor on the parameters' device",
                     kind_name[kind]);
  if (n <= 0) {
    if (norm_out) *norm_out = -1;
    return norm_t ? moe_fill_(norm_t, -1) : 0; /* nothing to update */
  }
  int need1 = kind != MOE_OPT_SGD || h->momentum != 0;
  int need2 = kind == MOE_OPT_ADAM || kind == MOE_OPT_ADAMW || (kind == MOE_OPT_RMSPROP && h->momentum);
  char what[48];
  snprintf(what, sizeof what, "%s.step", kind_name[kind]);
  for (int i = 0; i < n; i++) {
    const moe_tensor *ts[5] = {params[0], params[i], grads[i], s1s[i], s2s[i]};
    if (moe_backend_require(what, params[i]->device, MOE_KERNEL_optim_update) || moe_same_device(what, 5, ts))
      return -1;
    if ((need1 && !s1s[i]) || (need2 && !s2s[i]))
      return moe_error("%s.step: missing optimizer state for parameter %d", kind_name[kind], i + 1);
    if (check(kind, i, params[i], grads[i], need1 ? s1s[i] : NULL, need2 ? s2s[i] : NULL)) return -1;
    if (params[i]->storage == grads[i]->storage)
      return moe_error("%s.step: parameter %d and its gradient share memory", kind_name[kind], i + 1);
  }
  for (int i = 0; i < n; i++) params[i]->storage->version++;
  if (norm_t) norm_t->storage->version++;
  MOE_K(optim_update, params[0]->device, kind, n, params, grads, need1 ? s1s : NULL, need2 ? s2s : NULL, steps, h,
        norm_out, norm_t);
  return 0;
}
