/* mixture.c -- the combine step of dense (soft) mixtures of experts.
 *
 * moe_mixture(h, g): out[b,u] = sum_e g[b,e] * h[b,u,e]
 *   h [B,U,E] expert outputs, any strides (MMoE's single GEMM gives [B,U,E]
 *   contiguous; per-expert batched GEMMs give [E,B,U], viewed as [B,U,E]),
 *   g [B,E] gate weights -> out [B,U] contiguous.
 * Backward: gh[b,u,e] = g[b,e] gout[b,u];  gg[b,e] = sum_u h[b,u,e] gout[b,u].
 * This file checks, allocates, dispatches and records; the kernels are in
 * src/cpu/moe.c and src/cuda/moe.cu. */
#include "../core/moe.h"
#include "../core/autograd_impl.h"
#include "../core/dispatch.h"
#include "../cpu/cpu.h"

#include <string.h>

static int mixture_backward(moe_node *n, const moe_tensor *go, moe_tensor **gin) {
  const moe_tensor *h = moe_node_saved(n, 0), *g = moe_node_saved(n, 1);
  if (!h || !g || moe_backend_require("mixture backward", go->device, MOE_KERNEL_mixture_backward)) return -1;
  int64_t B = h->shape[0], U = h->shape[1], E = h->shape[2];
  const int64_t *hs = h->stride;
  /* gh takes h's memory order when h is a permuted dense tensor (the [E,B,U]
   * outputs of per-expert GEMMs): the gradient then flows back contiguous */
  moe_tensor *gh = NULL;
  if (moe_node_needs(n, 0)) {
    int dense = 0, order[3] = {0, 1, 2};
    for (int i = 0; i < 3; i++) /* dims sorted by stride, largest first */
      for (int j = i + 1; j < 3; j++)
        if (hs[order[j]] > hs[order[i]]) {
          int tmp = order[i];
          order[i] = order[j];
          order[j] = tmp;
        }
    int64_t expect = 1;
    dense = 1;
    for (int i = 2; i >= 0; i--) {
      if (hs[order[i]] != expect) dense = 0;
      expect *= h->shape[order[i]];
    }
    if (dense && B * U * E > 0) {
      int64_t pshape[3];
      for (int i = 0; i < 3; i++) pshape[i] = h->shape[order[i]];
      moe_tensor *base = moe_empty_on(h->device, 3, pshape, h->dtype);
      int inv[3];
      for (int i = 0; i < 3; i++) inv[order[i]] = i;
      gh = base ? moe_permute(base, inv) : NULL;
      moe_tensor_release(base);
    } else {
      gh = moe_empty_on(h->device, 3, h->shape, h->dtype);
    }
  }
  moe_tensor *gg = moe_node_needs(n, 1) ? moe_empty_on(g->device, 2, g->shape, g->dtype) : NULL;
  if ((moe_node_needs(n, 0) && !gh) || (moe_node_needs(n, 1) && !gg)) {
    moe_tensor_release(gh);
    moe_tensor_release(gg);
    return -1;
  }
  MOE_K(mixture_backward, go->device, gh, gg, go, h, g);
  gin[0] = gh;
  gin[1] = gg;
  return 0;
}

moe_tensor *moe_mixture(const moe_tensor *h, const moe_tensor *g) {
  char b1[160], b2[160];
  const moe_tensor *hg[2] = {h, g};
  if (moe_same_device("mixture", 2, hg) || moe_backend_require("mixture", h->device, MOE_KERNEL_mixture)) return NULL;
  if (h->ndim != 3 || g->ndim != 2 || h->shape[0] != g->shape[0] || h->shape[2] != g->shape[1] ||
      h->dtype != g->dtype || !moe_dtype_is_float(h->dtype)) {
    moe_error("mixture: expert outputs [B,U,E] %s and gates [B,E] %s do not match (one float dtype)",
              moe_shape_str(h, b1), moe_shape_str(g, b2));
    return NULL;
  }
  int64_t oshape[2] = {h->shape[0], h->shape[1]};
  moe_tensor *out = moe_empty_on(h->device, 2, oshape, h->dtype);
  if (!out) return NULL;
  MOE_K(mixture, h->device, out, h, g);
  const moe_tensor *ins[2] = {h, g};
  if (!moe_ag_wants(2, ins)) return out;
  moe_node *n = moe_node_new("mixture", mixture_backward, 2, ins);
  if (n && (moe_node_save(n, 0, h) || moe_node_save(n, 1, g))) {
    moe_node_release(n);
    n = NULL;
  }
  return moe_ag_attach(out, n);
}

/* moe_gate_scale(h, g, relu, append): the experts' hidden units scaled by their
 * gate, the step between the first and second layers of TabularMoELayer.
 *   h [B, E*U] (expert e's units in columns e*U .. e*U+U-1), g [B, E]
 *   out[b, e*U+u] = act(h[b, e*U+u]) * g[b, e]   (act = relu or identity)
 *   append: out gets E more columns, out[b, E*U+e] = g[b, e], so that one GEMM
 *   against [W2; b2] gives sum_e g_e (a_e W2_e + b2_e).
 * Backward: gh = act'(h) * go * g;  gg[b,e] = sum_u go[b,e*U+u] act(h[b,e*U+u]) (+ go[b,E*U+e]). */
static int gate_scale_backward(moe_node *n, const moe_tensor *go, moe_tensor **gin) {
  const moe_tensor *h = moe_node_saved(n, 0), *g = moe_node_saved(n, 1);
  if (!h || !g || moe_backend_require("gate_scale backward", go->device, MOE_KERNEL_gate_scale_backward)) return -1;
  int relu = (int)n->iarg[0], append = (int)n->iarg[1];
  moe_tensor *goc = moe_contiguous(go);
  moe_tensor *gh = goc && moe_node_needs(n, 0) ? moe_empty_on(h->device, 2, h->shape, h->dtype) : NULL;
  moe_tensor *gg = goc && moe_node_needs(n, 1) ? moe_empty_on(g->device, 2, g->shape, g->dtype) : NULL;
  if (!goc || (moe_node_needs(n, 0) && !gh) || (moe_node_needs(n, 1) && !gg)) {
    moe_tensor_release(goc);
    moe_tensor_release(gh);
    moe_tensor_release(gg);
    return -1;
  }
  MOE_K(gate_scale_backward, go->device, gh, gg, goc, h, g, relu, append);
  moe_tensor_release(goc);
  gin[0] = gh;
  gin[1] = gg;
  return 0;
}

moe_tensor *moe_gate_scale(const moe_tensor *h, const moe_tensor *g, int relu, int append) {
  char b1[160], b2[160];
  const moe_tensor *hg[2] = {h, g};
  if (moe_same_device("gate_scale", 2, hg) || moe_backend_require("gate_scale", h->device, MOE_KERNEL_gate_scale))
    return NULL;
  if (h->ndim != 2 || g->ndim != 2 || h->shape[0] != g->shape[0] || g->shape[1] < 1 || h->shape[1] % g->shape[1] != 0 ||
      h->dtype != g->dtype || !moe_dtype_is_float(h->dtype)) {
    moe_error("gate_scale: hidden units [B, E*U] %s and gates [B,E] %s do not match (one float dtype, "
              "E dividing the hidden width)",
              moe_shape_str(h, b1), moe_shape_str(g, b2));
    return NULL;
  }
  int64_t B = h->shape[0], E = g->shape[1], W = h->shape[1] + (append ? E : 0);
  moe_tensor *hc, *gc;
  MOE_NOGRAD(hc, moe_contiguous(h));
  MOE_NOGRAD(gc, hc ? moe_contiguous(g) : NULL);
  int64_t oshape[2] = {B, W};
  moe_tensor *out = gc ? moe_empty_on(h->device, 2, oshape, h->dtype) : NULL;
  if (out) MOE_K(gate_scale, h->device, out, hc, gc, relu, append);
  const moe_tensor *ins[2] = {h, g};
  if (out && moe_ag_wants(2, ins)) {
    moe_node *n = moe_node_new("gate_scale", gate_scale_backward, 2, ins);
    if (n) {
      n->iarg[0] = relu;
      n->iarg[1] = append;
      if (moe_node_save(n, 0, hc) || moe_node_save(n, 1, gc)) {
        moe_node_release(n);
        n = NULL;
      }
    }
    out = moe_ag_attach(out, n);
  }
  moe_tensor_release(hc);
  moe_tensor_release(gc);
  return out;
}
