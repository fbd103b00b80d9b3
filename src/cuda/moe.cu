// moe.cu -- CUDA twins of the dense mixtures' kernels of src/cpu/moe.c
// (mixture and TabularMoELayer's gate_scale, forward and backward) and of
// src/cpu/index.c's bincount. The ops and formulas are src/nn/mixture.c and
// src/core/index.c. No float atomics anywhere: every output element is
// written by one thread, or summed by one warp in a fixed shuffle order, so a
// result is the same from run to run (as the CPU's).
#include "common.cuh"

namespace {

constexpr int NT = 256;      // threads per block
constexpr int WPB = NT / 32; // warps per block (one warp per reduced output)

// the sum of v over each warp's 32 lanes, in a fixed xor-butterfly order (lane 0's
// result is the one written). Every thread of the block calls it the same number of
// times: the emulator's shuffles are block-wide barriers.
template <class T> __device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---------------------------------------------------------------- mixture

// h [B,U,E] and g [B,E] strides, in elements
struct mix_dims {
  int64_t B, U, E, hs0, hs1, hs2, gs0, gs1;
};

// out[b,u] = sum_e g[b,e] h[b,u,e]: one thread per output, e in the CPU's order (E is small)
template <class T> __global__ void k_mixture(mix_dims d, const T *h, const T *g, T *out) {
  MOE_GRID_STRIDE(p, d.B * d.U) {
    int64_t b = p / d.U, u = p % d.U;
    const T *hp = h + b * d.hs0 + u * d.hs1, *gp = g + b * d.gs0;
    T acc = 0;
    for (int64_t e = 0; e < d.E; e++) acc += gp[e * d.gs1] * hp[e * d.hs2];
    out[p] = acc;
  }
}

// gh[b,u,e] (strides gh0..2) = g[b,e] go[b,u] (strides os0, os1)
template <class T>
__global__ void k_mixture_gh(mix_dims d, int64_t os0, int64_t os1, int64_t gh0, int64_t gh1, int64_t gh2, const T *g,
                             const T *go, T *gh) {
  MOE_GRID_STRIDE(p, d.B * d.U * d.E) {
    int64_t e = p % d.E, bu = p / d.E, u = bu % d.U, b = bu / d.U;
    gh[b * gh0 + u * gh1 + e * gh2] = g[b * d.gs0 + e * d.gs1] * go[b * os0 + u * os1];
  }
}

// gg[b,e] (contiguous) = sum_u h[b,u,e] go[b,u]: one warp per (b,e); the loop runs
// over groups of WPB outputs per block, so all of a block's threads take part alike
template <class T> __global__ void k_mixture_gg(mix_dims d, int64_t os0, int64_t os1, const T *h, const T *go, T *gg) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int64_t n = d.B * d.E;
  for (int64_t base = (int64_t)blockIdx.x * WPB; base < n; base += (int64_t)gridDim.x * WPB) {
    int64_t q = base + w;
    T acc = 0;
    if (q < n) {
      int64_t b = q / d.E, e = q % d.E;
      const T *hp = h + b * d.hs0 + e * d.hs2, *op = go + b * os0;
      for (int64_t u = lane; u < d.U; u += 32) acc += hp[u * d.hs1] * op[u * os1];
    }
    acc = warp_sum(acc);
    if (q < n && lane == 0) gg[q] = acc;
  }
}

// ---------------------------------------------------------------- gate_scale

// out [B,W] (W = E*U, + E when appending) of contiguous h [B,E*U] and g [B,E]
template <class T>
__global__ void k_gate_scale(int64_t B, int64_t E, int64_t U, int64_t W, int relu, const T *h, const T *g, T *out) {
  MOE_GRID_STRIDE(p, B * W) {
    int64_t b = p / W, c = p % W;
    if (c < E * U) {
      T v = h[b * E * U + c];
      if (relu && !(v > 0)) v = 0; // (v > 0 ? v : 0), as the CPU: NaN gives 0
      out[p] = v * g[b * E + c / U];
    } else {
      out[p] = g[b * E + (c - E * U)]; // the appended gate columns
    }
  }
}

// gh [B,E*U] = act'(h) go g
template <class T>
__global__ void k_gate_scale_gh(int64_t B, int64_t E, int64_t U, int64_t W, int relu, const T *h, const T *g,
                                const T *go, T *gh) {
  MOE_GRID_STRIDE(p, B * E * U) {
    int64_t b = p / (E * U), c = p % (E * U);
    T d = go[b * W + c] * g[b * E + c / U];
    gh[p] = relu && !(h[p] > 0) ? (T)0 : d;
  }
}

// gg[b,e] = sum_u go[b,e*U+u] act(h[b,e*U+u]) (+ go[b,E*U+e]): one warp per (b,e)
template <class T>
__global__ void k_gate_scale_gg(int64_t B, int64_t E, int64_t U, int64_t W, int relu, int append, const T *h,
                                const T *go, T *gg) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int64_t n = B * E;
  for (int64_t base = (int64_t)blockIdx.x * WPB; base < n; base += (int64_t)gridDim.x * WPB) {
    int64_t q = base + w;
    T acc = 0;
    if (q < n) {
      int64_t b = q / E, e = q % E;
      const T *hp = h + b * E * U + e * U, *op = go + b * W + e * U;
      for (int64_t u = lane; u < U; u += 32) {
        T v = hp[u];
        if (relu && !(v > 0)) v = 0;
        acc += op[u] * v;
      }
    }
    acc = warp_sum(acc);
    if (q < n && lane == 0) gg[q] = acc + (append ? go[(q / E) * W + E * U + q % E] : (T)0);
  }
}

// ---------------------------------------------------------------- bincount

// integer counts: integer atomics commute exactly, so their order cannot change the result
__global__ void k_bincount_ones(const int64_t *v, int64_t n, int64_t ibase, unsigned long long *out) {
  MOE_GRID_STRIDE(i, n) atomicAdd(out + (v[i] - ibase), 1ull);
}

// weighted counts: float sums depend on their order, and float atomics have none
// on a device. So the (bin, i) pairs are sorted by bin (a stable merge sort: i
// stays increasing within a bin), then one warp sums each bin's run of weights in
// a fixed order. O(n log^2 n) work over log2(n) launches, deterministic.
__global__ void k_bin_keys(const int64_t *v, int64_t n, int64_t ibase, int64_t *key, int64_t *pos) {
  MOE_GRID_STRIDE(i, n) {
    key[i] = v[i] - ibase;
    pos[i] = i;
  }
}

// one merge pass: sorted runs of width w pair up into runs of 2w. Each element's
// place is its rank in its run plus the count of the other run's elements before
// it (for the left run those with a smaller key, for the right run those with a
// key no larger: ties keep left before right, so the sort is stable).
__global__ void k_merge_pass(const int64_t *kin, const int64_t *pin, int64_t *kout, int64_t *pout, int64_t n,
                             int64_t w) {
  MOE_GRID_STRIDE(p, n) {
    int64_t base = p / (2 * w) * (2 * w), mid = base + w < n ? base + w : n, end = base + 2 * w < n ? base + 2 * w : n;
    int64_t key = kin[p], at;
    if (p < mid) {
      int64_t lo = mid, hi = end; // the first of the right run with key >= this one
      while (lo < hi) {
        int64_t m = lo + (hi - lo) / 2;
        if (kin[m] < key) lo = m + 1;
        else hi = m;
      }
      at = p + (lo - mid);
    } else {
      int64_t lo = base, hi = mid; // the first of the left run with key > this one
      while (lo < hi) {
        int64_t m = lo + (hi - lo) / 2;
        if (kin[m] <= key) lo = m + 1;
        else hi = m;
      }
      at = (p - mid) + lo;
    }
    kout[at] = key;
    pout[at] = pin[p];
  }
}

__device__ __forceinline__ int64_t first_at_least(const int64_t *key, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t m = lo + (hi - lo) / 2;
    if (key[m] < k) lo = m + 1;
    else hi = m;
  }
  return lo;
}

// out[bin] = the sum of w over bin's run of the sorted pairs: one warp per bin
template <class T>
__global__ void k_bin_sums(const int64_t *key, const int64_t *pos, int64_t n, const T *w, int64_t nbins, T *out) {
  int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
  for (int64_t base = (int64_t)blockIdx.x * WPB; base < nbins; base += (int64_t)gridDim.x * WPB) {
    int64_t bin = base + wp;
    T acc = 0;
    if (bin < nbins) {
      int64_t lo = first_at_least(key, n, bin), hi = first_at_least(key, n, bin + 1);
      for (int64_t p = lo + lane; p < hi; p += 32) acc += w[pos[p]];
    }
    acc = warp_sum(acc);
    if (bin < nbins && lane == 0) out[bin] = acc;
  }
}

mix_dims mix_dims_of(const moe_tensor *h, const moe_tensor *g) {
  mix_dims d = {h->shape[0],  h->shape[1],  h->shape[2],  h->stride[0],
                h->stride[1], h->stride[2], g->stride[0], g->stride[1]};
  return d;
}
} // namespace

// out [B,U] contiguous = sum_e g[b,e] h[b,u,e]; h, g with any strides
extern "C" void moe_cuda_mixture(moe_tensor *out, const moe_tensor *h, const moe_tensor *g) {
  mix_dims d = mix_dims_of(h, g);
  if (d.B * d.U == 0) return;
  cudaStream_t s = moe_cuda_stream();
  unsigned nb = moe_blocks(d.B * d.U, NT);
  if (h->dtype == MOE_F32)
    MOE_LAUNCH(k_mixture<float>, nb, NT, 0, s, d, (const float *)moe_data(h), (const float *)moe_data(g),
               (float *)moe_data(out));
  else
    MOE_LAUNCH(k_mixture<double>, nb, NT, 0, s, d, (const double *)moe_data(h), (const double *)moe_data(g),
               (double *)moe_data(out));
  moe_cuda_launched("mixture");
}

// gh (NULL, or [B,U,E] with its own strides) and gg (NULL, or [B,E] contiguous) of go [B,U]
extern "C" void moe_cuda_mixture_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                                          const moe_tensor *g) {
  mix_dims d = mix_dims_of(h, g);
  int64_t os0 = go->stride[0], os1 = go->stride[1];
  cudaStream_t s = moe_cuda_stream();
  if (gh && d.B * d.U * d.E > 0) {
    unsigned nb = moe_blocks(d.B * d.U * d.E, NT);
    int64_t g0 = gh->stride[0], g1 = gh->stride[1], g2 = gh->stride[2];
#define GH(T)                                                                                                         \
  MOE_LAUNCH(k_mixture_gh<T>, nb, NT, 0, s, d, os0, os1, g0, g1, g2, (const T *)moe_data(g), (const T *)moe_data(go), \
             (T *)moe_data(gh))
    if (h->dtype == MOE_F32) GH(float);
    else GH(double);
#undef GH
  }
  if (gg && d.B * d.E > 0) {
    unsigned nb = moe_blocks(d.B * d.E, WPB);
#define GG(T)                                                                                                  \
  MOE_LAUNCH_SYNC(k_mixture_gg<T>, nb, NT, 0, s, d, os0, os1, (const T *)moe_data(h), (const T *)moe_data(go), \
                  (T *)moe_data(gg))
    if (h->dtype == MOE_F32) GG(float);
    else GG(double);
#undef GG
  }
  moe_cuda_launched("mixture backward");
}

// out [B, E*U (+E)] of contiguous h [B, E*U] and g [B,E]
extern "C" void moe_cuda_gate_scale(moe_tensor *out, const moe_tensor *h, const moe_tensor *g, int relu, int append) {
  int64_t B = h->shape[0], E = g->shape[1], U = h->shape[1] / E, W = E * U + (append ? E : 0);
  if (B * W == 0) return;
  cudaStream_t s = moe_cuda_stream();
  unsigned nb = moe_blocks(B * W, NT);
#define GS(T)                                                                                                 \
  MOE_LAUNCH(k_gate_scale<T>, nb, NT, 0, s, B, E, U, W, relu, (const T *)moe_data(h), (const T *)moe_data(g), \
             (T *)moe_data(out))
  if (h->dtype == MOE_F32) GS(float);
  else GS(double);
#undef GS
  moe_cuda_launched("gate_scale");
}

// gh [B, E*U] and gg [B,E] (either may be NULL) of contiguous go, h, g
extern "C" void moe_cuda_gate_scale_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                                             const moe_tensor *g, int relu, int append) {
  int64_t B = h->shape[0], E = g->shape[1], U = h->shape[1] / E, W = E * U + (append ? E : 0);
  cudaStream_t s = moe_cuda_stream();
  if (gh && B * E * U > 0) {
    unsigned nb = moe_blocks(B * E * U, NT);
#define GH(T)                                                                                                    \
  MOE_LAUNCH(k_gate_scale_gh<T>, nb, NT, 0, s, B, E, U, W, relu, (const T *)moe_data(h), (const T *)moe_data(g), \
             (const T *)moe_data(go), (T *)moe_data(gh))
    if (h->dtype == MOE_F32) GH(float);
    else GH(double);
#undef GH
  }
  if (gg && B * E > 0) {
    unsigned nb = moe_blocks(B * E, WPB);
#define GG(T)                                                                                         \
  MOE_LAUNCH_SYNC(k_gate_scale_gg<T>, nb, NT, 0, s, B, E, U, W, relu, append, (const T *)moe_data(h), \
                  (const T *)moe_data(go), (T *)moe_data(gg))
    if (h->dtype == MOE_F32) GG(float);
    else GG(double);
#undef GG
  }
  moe_cuda_launched("gate_scale backward");
}

// out[v[i] - ibase] += 1 (int64 out), or += w[i] (float32/float64 out, w contiguous of
// out's dtype); v holds n checked values (device memory), out starts at 0
extern "C" void moe_cuda_bincount(moe_tensor *out, const int64_t *v, int64_t n, const moe_tensor *w, int64_t ibase) {
  if (n == 0) return;
  cudaStream_t s = moe_cuda_stream();
  if (!w) {
    MOE_LAUNCH(k_bincount_ones, moe_blocks(n, NT), NT, 0, s, v, n, ibase, (unsigned long long *)moe_data(out));
    moe_cuda_launched("bincount");
    return;
  }
  size_t got = 0;
  int64_t *buf = (int64_t *)moe_cuda_malloc(sizeof(int64_t) * 4 * (size_t)n, &got);
  if (!buf) {
    moe_cuda_fail("bincount", moe_cuda_last_error());
    return;
  }
  int64_t *key = buf, *pos = buf + n, *key2 = buf + 2 * n, *pos2 = buf + 3 * n;
  unsigned nb = moe_blocks(n, NT);
  MOE_LAUNCH(k_bin_keys, nb, NT, 0, s, v, n, ibase, key, pos);
  for (int64_t width = 1; width < n; width *= 2) {
    MOE_LAUNCH(k_merge_pass, nb, NT, 0, s, key, pos, key2, pos2, n, width);
    int64_t *t = key;
    key = key2;
    key2 = t;
    t = pos;
    pos = pos2;
    pos2 = t;
  }
  int64_t nbins = out->shape[0];
  unsigned sb = moe_blocks(nbins, WPB);
  if (w->dtype == MOE_F32)
    MOE_LAUNCH_SYNC(k_bin_sums<float>, sb, NT, 0, s, key, pos, n, (const float *)moe_data(w), nbins,
                    (float *)moe_data(out));
  else
    MOE_LAUNCH_SYNC(k_bin_sums<double>, sb, NT, 0, s, key, pos, n, (const double *)moe_data(w), nbins,
                    (double *)moe_data(out));
  moe_cuda_launched("bincount");
  moe_cuda_free(buf, got); // (the cache hands it out again on this one stream: after these kernels)
}
