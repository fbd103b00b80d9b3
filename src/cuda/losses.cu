// losses.cu -- binary cross-entropy forward and backward, as src/nn/losses.c:
// probabilities clamped to [1e-7, 1 - 1e-7] (zero gradient outside, as Keras),
// or logits through the exact softplus form.
#include "common.cuh"

namespace {
const double EPS = 1e-7;

template <class T> __global__ void k_bce(moe_iter it, T *l, const T *y, const T *p, int logits) {
  MOE_GRID_STRIDE(i, it.n) {
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    T yy = y[off[1]], v = p[off[2]], r;
    if (logits) r = (v > 0 ? v : (T)0) + log1p(exp(-(v < 0 ? -v : v))) - v * yy;
    else {
      T q = v < (T)EPS ? (T)EPS : v > (T)(1 - EPS) ? (T)(1 - EPS) : v;
      r = -(yy * log(q) + (1 - yy) * log(1 - q));
    }
    l[off[0]] = r;
  }
}

template <class T> __global__ void k_bce_backward(moe_iter it, T *gp, const T *g, const T *y, const T *p, int logits) {
  MOE_GRID_STRIDE(i, it.n) {
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    T gg = g[off[1]], yy = y[off[2]], v = p[off[3]], d;
    if (logits) d = (v >= 0 ? 1 / (1 + exp(-v)) : exp(v) / (1 + exp(v))) - yy;
    else d = v < (T)EPS || v > (T)(1 - EPS) ? (T)0 : (v - yy) / (v * (1 - v));
    gp[off[0]] = gg * d;
  }
}
} // namespace

extern "C" void moe_cuda_bce(moe_tensor *l, const moe_tensor *y, const moe_tensor *p, int logits) {
  const moe_tensor *ops[3] = {l, y, p};
  moe_iter it = moe_iter_make(3, ops);
  if (!it.n) return;
  unsigned g = moe_blocks(it.n, 256);
  if (p->dtype == MOE_F32)
    MOE_LAUNCH(k_bce<float>, g, 256, 0, moe_cuda_stream(), it, (float *)moe_data(l), (const float *)moe_data(y),
               (const float *)moe_data(p), logits);
  else
    MOE_LAUNCH(k_bce<double>, g, 256, 0, moe_cuda_stream(), it, (double *)moe_data(l), (const double *)moe_data(y),
               (const double *)moe_data(p), logits);
  moe_cuda_launched("binary_crossentropy");
}

extern "C" void moe_cuda_bce_backward(moe_tensor *gp, const moe_tensor *g, const moe_tensor *y, const moe_tensor *p,
                                      int logits) {
  const moe_tensor *ops[4] = {gp, g, y, p};
  moe_iter it = moe_iter_make(4, ops);
  if (!it.n) return;
  unsigned nb = moe_blocks(it.n, 256);
  if (p->dtype == MOE_F32)
    MOE_LAUNCH(k_bce_backward<float>, nb, 256, 0, moe_cuda_stream(), it, (float *)moe_data(gp),
               (const float *)moe_data(g), (const float *)moe_data(y), (const float *)moe_data(p), logits);
  else
    MOE_LAUNCH(k_bce_backward<double>, nb, 256, 0, moe_cuda_stream(), it, (double *)moe_data(gp),
               (const double *)moe_data(g), (const double *)moe_data(y), (const double *)moe_data(p), logits);
  moe_cuda_launched("binary_crossentropy");
}
