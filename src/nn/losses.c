/* losses.c -- elementwise binary cross-entropy as one op, forward and backward.
 *
 * moe_bce(y, p, from_logits) -> l, one shape and float dtype:
 *   probabilities: q = clamp(p, eps, 1 - eps), l = -(y log q + (1 - y) log(1 - q)),
 *                  dl/dp = (q - y) / (q (1 - q)) inside the clamp, 0 outside (as Keras);
 *   logits:        l = softplus(z) - z y (exact for any z), dl/dz = sigmoid(z) - y.
 * Only p gets a gradient (targets are data). The kernels: src/cpu/losses.c and
 * src/cuda/losses.cu. */
#include "../core/moe.h"
#include "../core/autograd_impl.h"
#include "../core/dispatch.h"

#include <string.h>

static int bce_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  const moe_tensor *y = moe_node_saved(n, 0), *pr = moe_node_saved(n, 1);
  if (!y || !pr) return -1;
  moe_tensor *gp = moe_empty_on(pr->device, pr->ndim, pr->shape, pr->dtype);
  if (!gp) return -1;
  MOE_K(bce_backward, gp->device, gp, g, y, pr, (int)n->iarg[0]);
  gin[1] = gp;
  return 0;
}

moe_tensor *moe_bce(const moe_tensor *y, const moe_tensor *p, int from_logits) {
  char b1[160], b2[160];
  if (y->ndim != p->ndim || memcmp(y->shape, p->shape, sizeof(int64_t) * (size_t)p->ndim) || y->dtype != p->dtype ||
      !moe_dtype_is_float(p->dtype)) {
    moe_error("binary_crossentropy: y_true %s (%s) and y_pred %s (%s) need one shape and float dtype",
              moe_shape_str(y, b1), moe_dtype_name(y->dtype), moe_shape_str(p, b2), moe_dtype_name(p->dtype));
    return NULL;
  }
  const moe_tensor *yp[2] = {y, p};
  if (moe_same_device("binary_crossentropy", 2, yp)) return NULL;
  if (y->requires_grad && moe_grad_enabled()) {
    moe_error("binary_crossentropy: the fused op gives no gradient to y_true (it requires grad)");
    return NULL;
  }
  moe_tensor *l = moe_empty_on(p->device, p->ndim, p->shape, p->dtype);
  if (!l) return NULL;
  MOE_K(bce, l->device, l, y, p, from_logits);
  const moe_tensor *ins[2] = {y, p};
  if (!moe_ag_wants(2, ins)) return l;
  moe_node *n = moe_node_new("binary_crossentropy", bce_backward, 2, ins);
  if (n) {
    n->iarg[0] = from_logits;
    if (moe_node_save(n, 0, y) || moe_node_save(n, 1, p)) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(l, n);
}
