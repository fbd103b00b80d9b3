/* optim.h -- fused optimizer updates: one call updates every parameter. */
#ifndef MOE_OPTIM_H
#define MOE_OPTIM_H
#include "../core/moe.h"

typedef enum { MOE_OPT_SGD, MOE_OPT_ADAM, MOE_OPT_ADAMW, MOE_OPT_RMSPROP, MOE_OPT_ADAGRAD } moe_optim_kind;

typedef struct {
  double lr, weight_decay;
  double momentum, dampening;
  int nesterov;                 /* SGD (and RMSprop's momentum) */
  double beta1, beta2, eps;     /* Adam, AdamW; eps also RMSprop, Adagrad */
  double alpha;                 /* RMSprop's smoothing constant */
  double lr_decay;              /* Adagrad */
  double clip_norm, clip_value; /* <= 0: off. clip_norm is over all grads together */
  /* NULL, or one byte on the parameters' device (a bool tensor's data): when it
   * holds nonzero, the step changes nothing (the norm is still computed). fit
   * on a device passes "the loss is not finite" here, so that it need not read
   * the loss back before the update. */
  const uint8_t *skip;
} moe_optim_hparams;

/* Updates params[i] in place from grads[i] (PyTorch's update rules). s1/s2 are the
 * per-parameter state tensors the rule needs (momentum buffer; Adam's m and v;
 * RMSprop's square average and momentum buffer; Adagrad's sum), steps[i] the
 * parameter's step count including this step. Every tensor is checked before any
 * is written. *norm_out (if non-NULL) receives the global gradient norm before clipping
 * when h->clip_norm > 0, else -1; so does norm_t (if non-NULL: a 0-dim float64 tensor
 * on the parameters' device). On a CUDA device the norm is computed and used there:
 * *norm_out waits for the device to read it back, norm_t does not (the caller reads
 * it later, if ever). */
int moe_optim_step(moe_optim_kind kind, int n, moe_tensor *const *params, moe_tensor *const *grads,
                   moe_tensor *const *s1, moe_tensor *const *s2, const int64_t *steps, const moe_optim_hparams *h,
                   double *norm_out, moe_tensor *norm_t);
#endif
