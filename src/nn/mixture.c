/* mixture.c -- the combine step of dense (soft) mixtures of experts.
 *
 * moe_mixture(h, g): out[b,u] = sum_e g[b,e] * h[b,u,e]
 *   h [B,U,E] expert outputs, any strides (MMoE's single GEMM gives [B,U,E]
 *   contiguous; per-expert batched GEMMs give [E,B,U], viewed as [B,U,E]),
 *   g [B,E] gate weights -> out [B,U] contiguous.
 * Backward: gh[b,u,e] = g[b,e] gout[b,u];  gg[b,e] = sum_u h[b,u,e] gout[b,u]. */
#include "../core/moe.h"

#include <string.h>

#define MIX_FWD(T)                                                                        \
  do {                                                                                    \
    const T *H = (const T *)moe_data(h), *G = (const T *)moe_data(g);                    \
    T *O = (T *)moe_data(out);                                                            \
    for (int64_t b = 0; b < B; b++)                                                       \
      for (int64_t u = 0; u < U; u++) {                                                   \
        const T *hp = H + b * hs[0] + u * hs[1];                                          \
        const T *gp = G + b * gs[0];                                                      \
        T acc = 0;                                                                        \
        for (int64_t e = 0; e < E; e++) acc += gp[e * gs[1]] * hp[e * hs[2]];             \
        O[b * U + u] = acc;                                                               \
      }                                                                                   \
  } while (0)

#define MIX_BWD(T)                                                                        \
  do {                                                                                    \
    const T *H = (const T *)moe_data(h), *G = (const T *)moe_data(g);                    \
    const T *GO = (const T *)moe_data(go);                                                \
    T *GH = gh ? (T *)moe_data(gh) : NULL, *GG = gg ? (T *)moe_data(gg) : NULL;          \
    for (int64_t b = 0; b < B; b++) {                                                     \
      const T *gp = G + b * gs[0];                                                        \
      const T *op = GO + b * os[0];                                                       \
      if (GH)                                                                             \
        for (int64_t u = 0; u < U; u++)                                                   \
          for (int64_t e = 0; e < E; e++) GH[b * ghs[0] + u * ghs[1] + e * ghs[2]] = gp[e * gs[1]] * op[u * os[1]]; \
      if (GG)                                                                             \
        for (int64_t e = 0; e < E; e++) {                                                 \
          const T *hp = H + b * hs[0] + e * hs[2];                                        \
          T acc = 0;                                                                      \
          for (int64_t u = 0; u < U; u++) acc += hp[u * hs[1]] * op[u * os[1]];           \
          GG[b * E + e] = acc;                                                            \
        }                                                                                 \
    }                                                                                     \
  } while (0)

static int mixture_backward(moe_node *n, const moe_tensor *go, moe_tensor **gin) {
  const moe_tensor *h = moe_node_saved(n, 0), *g = moe_node_saved(n, 1);
  if (!h || !g) return -1;
  int64_t B = h->shape[0], U = h->shape[1], E = h->shape[2];
  const int64_t *hs = h->stride, *gs = g->stride, *os = go->stride;
  /* gh takes h's memory order when h is a permuted dense tensor (the [E,B,U]
   * outputs of per-expert GEMMs): the gradient then flows back contiguous */
  moe_tensor *gh = NULL;
  int64_t ghs[3] = {U * E, E, 1};
  if (moe_node_needs(n, 0)) {
    int dense = 0, order[3] = {0, 1, 2};
    for (int i = 0; i < 3; i++) /* dims sorted by stride, largest first */
      for (int j = i + 1; j < 3; j++)
        if (hs[order[j]] > hs[order[i]]) { int tmp = order[i]; order[i] = order[j]; order[j] = tmp; }
    int64_t expect = 1;
    dense = 1;
    for (int i = 2; i >= 0; i--) {
      if (hs[order[i]] != expect) dense = 0;
      expect *= h->shape[order[i]];
    }
    if (dense && B * U * E > 0) {
      int64_t pshape[3];
      for (int i = 0; i < 3; i++) pshape[i] = h->shape[order[i]];
      moe_tensor *base = moe_empty(3, pshape, h->dtype);
      int inv[3];
      for (int i = 0; i < 3; i++) inv[order[i]] = i;
      gh = base ? moe_permute(base, inv) : NULL;
      moe_tensor_release(base);
      if (gh) memcpy(ghs, gh->stride, sizeof ghs);
    } else {
      gh = moe_empty(3, h->shape, h->dtype);
    }
  }
  moe_tensor *gg = moe_node_needs(n, 1) ? moe_empty(2, g->shape, g->dtype) : NULL;
  if ((moe_node_needs(n, 0) && !gh) || (moe_node_needs(n, 1) && !gg)) {
    moe_tensor_release(gh);
    moe_tensor_release(gg);
    return -1;
  }
  if (h->dtype == MOE_F32) MIX_BWD(float);
  else MIX_BWD(double);
  gin[0] = gh;
  gin[1] = gg;
  return 0;
}

moe_tensor *moe_mixture(const moe_tensor *h, const moe_tensor *g) {
  char b1[160], b2[160];
  if (h->ndim != 3 || g->ndim != 2 || h->shape[0] != g->shape[0] || h->shape[2] != g->shape[1] ||
      h->dtype != g->dtype || !moe_dtype_is_float(h->dtype)) {
    moe_error("mixture: expert outputs [B,U,E] %s and gates [B,E] %s do not match (one float dtype)",
              moe_shape_str(h, b1), moe_shape_str(g, b2));
    return NULL;
  }
  int64_t B = h->shape[0], U = h->shape[1], E = h->shape[2];
  const int64_t *hs = h->stride, *gs = g->stride;
  int64_t oshape[2] = {B, U};
  moe_tensor *out = moe_empty(2, oshape, h->dtype);
  if (!out) return NULL;
  if (h->dtype == MOE_F32) MIX_FWD(float);
  else MIX_FWD(double);
  const moe_tensor *ins[2] = {h, g};
  if (!moe_ag_wants(2, ins)) return out;
  moe_node *n = moe_node_new("mixture", mixture_backward, 2, ins);
  if (n && (moe_node_save(n, 0, h) || moe_node_save(n, 1, g))) { moe_node_release(n); n = NULL; }
  return moe_ag_attach(out, n);
}
