// index.cu -- gather and scatter_add along one dim, as src/cpu/index.c: one
// thread per position of the index's shape. scatter_add accumulates with
// atomics (so float sums may differ from the CPU's in the last bits).
#include "common.cuh"

namespace {
struct walk {
  int nd, dim;
  int64_t n, shape[MOE_MAX_DIMS];
  int64_t tst[MOE_MAX_DIMS]; // the indexed tensor's strides
  int64_t sst[MOE_MAX_DIMS]; // gather: unused; scatter: src's strides
};

// position pos of the index's shape: offset o in the indexed tensor (dim left
// out) and so in src
__device__ __forceinline__ void walk_at(const walk &w, int64_t pos, int64_t *o, int64_t *so) {
  int64_t rem = pos;
  *o = *so = 0;
  for (int d = w.nd - 1; d >= 0; d--) {
    int64_t c = rem % w.shape[d];
    rem /= w.shape[d];
    if (d != w.dim) *o += c * w.tst[d];
    *so += c * w.sst[d];
  }
}

template <class T> __global__ void k_gather(walk w, const int64_t *index, int64_t ibase, const T *t, T *out) {
  MOE_GRID_STRIDE(pos, w.n) {
    int64_t o, so;
    walk_at(w, pos, &o, &so);
    out[pos] = t[o + (index[pos] - ibase) * w.tst[w.dim]];
  }
}

template <class T> __device__ __forceinline__ void add_at(T *p, T v) {
  if constexpr (std::is_same<T, int64_t>::value) atomicAdd((unsigned long long *)p, (unsigned long long)v);
  else if constexpr (std::is_same<T, uint8_t>::value) {
    // bytes: a CAS on the aligned word around it
    unsigned *w = (unsigned *)((uintptr_t)p & ~(uintptr_t)3);
    unsigned sh = ((uintptr_t)p & 3) * 8, old = *w, as;
    do {
      as = old;
      unsigned b = ((as >> sh) + (unsigned)v) & 0xffu;
      old = atomicCAS(w, as, (as & ~(0xffu << sh)) | (b << sh));
    } while (old != as);
  } else atomicAdd(p, v);
}

template <class T> __global__ void k_scatter_add(walk w, const int64_t *index, int64_t ibase, const T *src, T *out) {
  MOE_GRID_STRIDE(pos, w.n) {
    int64_t o, so;
    walk_at(w, pos, &o, &so);
    add_at(out + o + (index[pos] - ibase) * w.tst[w.dim], src[so]);
  }
}

walk make_walk(const moe_tensor *ishape, const moe_tensor *t, int dim, const moe_tensor *src) {
  walk w;
  memset(&w, 0, sizeof w);
  w.nd = ishape->ndim;
  w.dim = dim;
  w.n = moe_numel(ishape);
  for (int d = 0; d < w.nd; d++) {
    w.shape[d] = ishape->shape[d];
    w.tst[d] = t->stride[d];
    if (src) w.sst[d] = src->stride[d];
  }
  return w; // (the kernels get pointers already at the tensors' offsets)
}
} // namespace

extern "C" void moe_cuda_gather(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *index,
                                const moe_tensor *ishape, int64_t ibase) {
  walk w = make_walk(ishape, t, dim, NULL);
  if (!w.n) return;
  cudaStream_t s = moe_cuda_stream();
#define G(T) \
  MOE_LAUNCH(k_gather<T>, moe_blocks(w.n, 256), 256, 0, s, w, index, ibase, (const T *)moe_data(t), (T *)moe_data(out))
  MOE_DTYPE_SWITCH(t->dtype, G)
#undef G
  moe_cuda_launched("gather");
}

extern "C" void moe_cuda_scatter_add(moe_tensor *out, int dim, const int64_t *index, const moe_tensor *ishape,
                                     const moe_tensor *src, int64_t ibase) {
  walk w = make_walk(ishape, out, dim, src);
  if (!w.n) return;
  cudaStream_t s = moe_cuda_stream();
#define S(T)                                                                                               \
  MOE_LAUNCH(k_scatter_add<T>, moe_blocks(w.n, 256), 256, 0, s, w, index, ibase, (const T *)moe_data(src), \
             (T *)moe_data(out))
  MOE_DTYPE_SWITCH(out->dtype, S)
#undef S
  moe_cuda_launched("scatter_add");
}

// ---------------------------------------------------------------- index_select / index_add
namespace {
// positions of a tensor of shape `shape` (the output of index_select, the
// source of index_add) -> offsets in it (st1) and in the indexed tensor (st2)
struct sel {
  int nd, dim;
  int64_t n, shape[MOE_MAX_DIMS], st1[MOE_MAX_DIMS], st2[MOE_MAX_DIMS];
};
sel make_sel(const moe_tensor *pos, const moe_tensor *a, const moe_tensor *b, int dim) {
  sel w;
  memset(&w, 0, sizeof w);
  w.nd = pos->ndim;
  w.dim = dim;
  w.n = moe_numel(pos);
  for (int d = 0; d < w.nd; d++) {
    w.shape[d] = pos->shape[d];
    w.st1[d] = a->stride[d];
    w.st2[d] = b->stride[d];
  }
  return w;
}

// position p: offset o1 (st1, [.., i, ..]) and o2 (st2, [.., ix[i], ..])
__device__ __forceinline__ void sel_at(const sel &w, const int64_t *ix, int64_t ibase, int64_t p, int64_t *o1,
                                       int64_t *o2) {
  int64_t rem = p;
  *o1 = *o2 = 0;
  for (int d = w.nd - 1; d >= 0; d--) {
    int64_t c = rem % w.shape[d];
    rem /= w.shape[d];
    *o1 += c * w.st1[d];
    *o2 += (d == w.dim ? ix[c] - ibase : c) * w.st2[d];
  }
}

// out (st1) [.., i, ..] = t (st2) [.., ix[i], ..]
template <class T> __global__ void k_index_select(sel w, const int64_t *ix, int64_t ibase, const T *t, T *out) {
  MOE_GRID_STRIDE(p, w.n) {
    int64_t o1, o2;
    sel_at(w, ix, ibase, p, &o1, &o2);
    out[o1] = t[o2];
  }
}
// out (st2) [.., ix[i], ..] += s (st1) [.., i, ..]
template <class T> __global__ void k_index_add(sel w, const int64_t *ix, int64_t ibase, const T *s, T *out) {
  MOE_GRID_STRIDE(p, w.n) {
    int64_t o1, o2;
    sel_at(w, ix, ibase, p, &o1, &o2);
    add_at(out + o2, s[o1]);
  }
}

__global__ void k_index_check(const int64_t *p, int64_t n, int64_t lo, int64_t hi, unsigned long long *flag,
                              int64_t *bad) {
  MOE_GRID_STRIDE(i, n) {
    int64_t v = p[i];
    if (v < lo || v > hi) {
      if (atomicCAS(flag, 0ull, 1ull) == 0ull) *bad = v;
    }
  }
}
} // namespace

extern "C" void moe_cuda_index_select(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *ix, int64_t n,
                                      int64_t ibase) {
  sel w = make_sel(out, out, t, dim);
  if (!w.n) return;
  cudaStream_t s = moe_cuda_stream();
#define IS(T)                                                                                          \
  MOE_LAUNCH(k_index_select<T>, moe_blocks(w.n, 256), 256, 0, s, w, ix, ibase, (const T *)moe_data(t), \
             (T *)moe_data(out))
  MOE_DTYPE_SWITCH(t->dtype, IS)
#undef IS
  moe_cuda_launched("index_select");
}

extern "C" void moe_cuda_index_add(moe_tensor *out, int dim, const int64_t *ix, int64_t n, const moe_tensor *src,
                                   int64_t ibase) {
  sel w = make_sel(src, src, out, dim);
  if (!w.n) return;
  cudaStream_t s = moe_cuda_stream();
#define IA(T)                                                                                         \
  MOE_LAUNCH(k_index_add<T>, moe_blocks(w.n, 256), 256, 0, s, w, ix, ibase, (const T *)moe_data(src), \
             (T *)moe_data(out))
  MOE_DTYPE_SWITCH(out->dtype, IA)
#undef IA
  moe_cuda_launched("index_add");
}

// validation of user-given indices: one flag and one value come back (a sync)
extern "C" int moe_cuda_index_check(const int64_t *p, int64_t n, int64_t lo, int64_t hi, int64_t *bad) {
  if (n == 0) return 0;
  size_t got = 0;
  char *buf = (char *)moe_cuda_malloc(16, &got);
  if (!buf) {
    moe_cuda_fail("index", moe_cuda_last_error());
    return 0;
  }
  cudaStream_t s = moe_cuda_stream();
  cudaMemsetAsync(buf, 0, 16, s);
  MOE_LAUNCH(k_index_check, moe_blocks(n, 256), 256, 0, s, p, n, lo, hi, (unsigned long long *)buf,
             (int64_t *)(buf + 8));
  moe_cuda_launched("index");
  int64_t host[2] = {0, 0};
  if (moe_cuda_memcpy(host, buf, 16, 1)) moe_cuda_fail("index", moe_cuda_last_error());
  moe_cuda_free(buf, got);
  *bad = host[1];
  return host[0] != 0;
}

// ---------------------------------------------------------------- argsort / topk
// Stable argsort of short rows (routers: K = experts) by ranks: the element
// at position i of a row goes to rank = #{j : v[j] before v[i], or equal and
// j < i}, with src/cpu/index.c's order (NaN above every number). One thread
// per element, K reads each: O(K^2) work per row, fine up to a few thousand.
namespace {
template <class T> __device__ __forceinline__ bool before(T a, T b, int desc) {
  if (a != a) return desc && b == b;
  if (b != b) return !desc;
  return desc ? a > b : a < b;
}
template <class T> __global__ void k_rank_sort(const T *x, int64_t M, int64_t K, int desc, int64_t *idx) {
  MOE_GRID_STRIDE(p, M * K) {
    int64_t m = p / K, i = p % K;
    const T *r = x + m * K;
    T v = r[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < K; j++) {
      T u = r[j];
      rank += before(u, v, desc) || (j < i && !before(v, u, desc));
    }
    idx[m * K + rank] = i;
  }
}
template <class T>
__global__ void k_take_rows(const T *x, int64_t M, int64_t K, const int64_t *order, int64_t k, T *vals, int64_t *idx,
                            int64_t ibase) {
  MOE_GRID_STRIDE(p, M * k) {
    int64_t m = p / k, j = p % k, o = order[m * K + j];
    vals[p] = x[m * K + o];
    idx[p] = o + ibase;
  }
}
} // namespace

extern "C" void moe_cuda_argsort_rows(const moe_tensor *x, int64_t M, int64_t K, int desc, int64_t *idx) {
  if (M * K == 0) return;
  cudaStream_t s = moe_cuda_stream();
#define RS(T) MOE_LAUNCH(k_rank_sort<T>, moe_blocks(M *K, 256), 256, 0, s, (const T *)moe_data(x), M, K, desc, idx)
  MOE_DTYPE_SWITCH(x->dtype, RS)
#undef RS
  moe_cuda_launched("sort");
}

extern "C" void moe_cuda_take_rows(const moe_tensor *x, int64_t M, int64_t K, const int64_t *order, int64_t k,
                                   moe_tensor *vals, moe_tensor *idx, int64_t ibase) {
  if (M * k == 0) return;
  cudaStream_t s = moe_cuda_stream();
#define TR(T)                                                                                          \
  MOE_LAUNCH(k_take_rows<T>, moe_blocks(M *k, 256), 256, 0, s, (const T *)moe_data(x), M, K, order, k, \
             (T *)moe_data(vals), (int64_t *)moe_data(idx), ibase)
  MOE_DTYPE_SWITCH(x->dtype, TR)
#undef TR
  moe_cuda_launched("topk");
}
