// index.cu -- argsort/topk rows, gather and scatter_add along one dim,
// index_select and index_add, as src/cpu/index.c: one thread per position of
// the index's shape. scatter_add and index_add accumulate with atomics, so on a
// device float sums come in any order (the last bits vary from run to run and
// from the CPU's). Under moe_get_deterministic() their float versions sort the
// (destination, source position) pairs stably by destination instead, and each
// destination sums its sources in source order: bitwise the CPU's sums (which
// add in source order), every run.
#include "common.cuh"

// ---------------------------------------------------------------- argsort / topk
// Stable argsort with src/cpu/index.c's order (NaN above every number, so last
// ascending and first descending). Ties are broken by position, which makes the
// order total: any correct sort under it is the stable sort, bitonic included.
//  - K <= RANK_MAX: one thread per element counts the elements before it (K reads
//    each; routers' rows of a few experts);
//  - K <= TILE: one block sorts the row in shared memory (bitonic network:
//    O(K log^2 K) compares in O(log^2 K) barrier steps);
//  - longer rows: blocks sort tiles of TILE, then merge passes in global memory
//    double the sorted runs: each element's place in the merged run is its place
//    in its own run plus a binary search in the other (O(K log K) per pass,
//    log2(K / TILE) passes). Only positions move; values are read from x.
// The same sort orders the destinations of the deterministic scatters below.
namespace {
const int RANK_MAX = 16, TILE = 2048;

template <class T> __device__ __forceinline__ bool before(T a, T b, int desc) {
  if (a != a) return desc && b == b;
  if (b != b) return !desc;
  return desc ? a > b : a < b;
}
// (a at position i) comes before (b at position j)
template <class T> __device__ __forceinline__ bool lt(T a, int64_t i, T b, int64_t j, int desc) {
  if (before(a, b, desc)) return true;
  if (before(b, a, desc)) return false;
  return i < j;
}

template <class T> __global__ void k_rank_sort(const T *x, int64_t M, int64_t K, int desc, int64_t *idx) {
  MOE_GRID_STRIDE(p, M * K) {
    int64_t m = p / K, i = p % K;
    const T *r = x + m * K;
    T v = r[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < K; j++) rank += lt(r[j], j, v, i, desc);
    idx[m * K + rank] = i;
  }
}

// tile t of row m (nb = M * tiles per row blocks in all): sorted positions into idx.
// Shared memory: P keys, then P positions within the tile (P: a power of two >=
// the tile's length; positions >= the length are padding, after everything).
template <class T>
__global__ void k_tile_sort(const T *x, int64_t K, int64_t nb, int64_t tiles, int P, int desc, int64_t *idx) {
  MOE_DYN_SMEM(double, smem);
  T *kv = (T *)smem;
  int *kp = (int *)(kv + P);
  for (int64_t blk = blockIdx.x; blk < nb; blk += gridDim.x) {
    int64_t m = blk / tiles, t0 = blk % tiles * TILE;
    int L = (int)(K - t0 < TILE ? K - t0 : TILE);
    const T *r = x + m * K + t0;
    for (int i = threadIdx.x; i < P; i += blockDim.x) {
      kp[i] = i;
      kv[i] = i < L ? r[i] : (T)0;
    }
    __syncthreads();
    for (int k = 2; k <= P; k <<= 1)
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int t = threadIdx.x; t < P / 2; t += blockDim.x) {
          int a = ((t & ~(j - 1)) << 1) | (t & (j - 1)), b = a + j; // a has bit j clear
          int pa = kp[a], pb = kp[b];
          bool b_first = pa >= L ? (pb >= L ? pb < pa : true)
                                 : (pb >= L ? false : lt(kv[b], (int64_t)pb, kv[a], (int64_t)pa, desc));
          if (b_first == ((a & k) == 0)) { // ascending where bit k is clear, descending elsewhere
            T v = kv[a];
            kv[a] = kv[b];
            kv[b] = v;
            kp[a] = pb;
            kp[b] = pa;
          }
        }
        __syncthreads();
      }
    for (int i = threadIdx.x; i < L; i += blockDim.x) idx[m * K + t0 + i] = t0 + kp[i];
    __syncthreads(); // before the next tile overwrites kv, kp
  }
}

// runs of w sorted positions in src (per row) -> runs of 2w in dst
template <class T>
__global__ void k_merge(const T *x, int64_t M, int64_t K, int64_t w, int desc, const int64_t *src, int64_t *dst) {
  MOE_GRID_STRIDE(p, M * K) {
    int64_t m = p / K, i = p % K, s = i / (2 * w) * (2 * w);
    int64_t mid = s + w < K ? s + w : K, e = s + 2 * w < K ? s + 2 * w : K;
    const int64_t *rs = src + m * K;
    const T *r = x + m * K;
    int64_t me = rs[i];
    T v = r[me];
    bool left = i < mid;
    int64_t lo = left ? mid : s, hi = left ? e : mid, a = lo, b = hi;
    while (a < b) { // elements of the other run before this one
      int64_t c = a + (b - a) / 2, q = rs[c];
      if (lt(r[q], q, v, me, desc)) a = c + 1;
      else b = c;
    }
    dst[m * K + s + (left ? i - s : i - mid) + (a - lo)] = me;
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

// idx [M,K] = the stable order of each row of x [M,K] (device memory); 0, or -1
// with the failure recorded under op's name
template <class T>
int sort_rows(const char *op, const T *x, int64_t M, int64_t K, int desc, int64_t *idx, cudaStream_t s) {
  if (M * K == 0) return 0;
  if (K <= RANK_MAX) {
    MOE_LAUNCH(k_rank_sort<T>, moe_blocks(M * K, 256), 256, 0, s, x, M, K, desc, idx);
    moe_cuda_launched(op);
    return 0;
  }
  int64_t tiles = (K + TILE - 1) / TILE, nb = M * tiles;
  int P = 32;
  while (P < K && P < TILE) P <<= 1;
  int nt = P / 2 > 1024 ? 1024 : P / 2;
  int passes = 0;
  for (int64_t w = TILE; w < K; w *= 2) passes++;
  size_t got = 0;
  int64_t *tmp = NULL;
  if (passes) {
    tmp = (int64_t *)moe_cuda_malloc(sizeof(int64_t) * (size_t)(M * K), &got);
    if (!tmp) {
      moe_cuda_fail(op, moe_cuda_last_error());
      return -1;
    }
  }
  // the runs alternate between the buffers and end in idx
  int64_t *a = passes % 2 ? tmp : idx, *b = passes % 2 ? idx : tmp;
  unsigned g = (unsigned)(nb < 65535 * 32 ? nb : 65535 * 32);
  MOE_LAUNCH_SYNC(k_tile_sort<T>, g, nt, (size_t)P * (sizeof(T) + sizeof(int)), s, x, K, nb, tiles, P, desc, a);
  for (int64_t w = TILE; w < K; w *= 2) {
    MOE_LAUNCH(k_merge<T>, moe_blocks(M * K, 256), 256, 0, s, x, M, K, w, desc, a, b);
    int64_t *c = a;
    a = b;
    b = c;
  }
  moe_cuda_launched(op);
  if (tmp) moe_cuda_free(tmp, got); // stream-ordered reuse (runtime.cu)
  return 0;
}
} // namespace

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

// deterministic scatter_add: key[pos] = the offset in out that position pos adds into
__global__ void k_scatter_keys(walk w, const int64_t *index, int64_t ibase, int64_t *key) {
  MOE_GRID_STRIDE(pos, w.n) {
    int64_t o, so;
    walk_at(w, pos, &o, &so);
    key[pos] = o + (index[pos] - ibase) * w.tst[w.dim];
  }
}
// perm: positions sorted stably by key; the first of each run of one key sums
// the run's sources in position order into out
template <class T>
__global__ void k_scatter_seg(walk w, const int64_t *key, const int64_t *perm, const T *src, T *out) {
  MOE_GRID_STRIDE(j, w.n) {
    int64_t k = key[perm[j]];
    if (j > 0 && key[perm[j - 1]] == k) continue;
    T acc = out[k];
    for (int64_t q = j; q < w.n && key[perm[q]] == k; q++) {
      int64_t o, so;
      walk_at(w, perm[q], &o, &so);
      acc = acc + src[so];
    }
    out[k] = acc;
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

// the deterministic mode's scatter_add of float T: keys, their stable order, run sums
template <class T>
static void scatter_add_sorted(walk w, const int64_t *index, int64_t ibase, const T *src, T *out, cudaStream_t s) {
  size_t got = 0;
  int64_t *key = (int64_t *)moe_cuda_malloc(2 * sizeof(int64_t) * (size_t)w.n, &got), *perm = key + w.n;
  if (!key) {
    moe_cuda_fail("scatter_add", moe_cuda_last_error());
    return;
  }
  MOE_LAUNCH(k_scatter_keys, moe_blocks(w.n, 256), 256, 0, s, w, index, ibase, key);
  if (!sort_rows<int64_t>("scatter_add", key, 1, w.n, 0, perm, s))
    MOE_LAUNCH(k_scatter_seg<T>, moe_blocks(w.n, 256), 256, 0, s, w, key, perm, src, out);
  moe_cuda_launched("scatter_add");
  moe_cuda_free(key, got);
}

extern "C" void moe_cuda_scatter_add(moe_tensor *out, int dim, const int64_t *index, const moe_tensor *ishape,
                                     const moe_tensor *src, int64_t ibase) {
  walk w = make_walk(ishape, out, dim, src);
  if (!w.n) return;
  cudaStream_t s = moe_cuda_stream();
  if (moe_get_deterministic() && (out->dtype == MOE_F32 || out->dtype == MOE_F64)) {
    if (out->dtype == MOE_F32)
      scatter_add_sorted<float>(w, index, ibase, (const float *)moe_data(src), (float *)moe_data(out), s);
    else scatter_add_sorted<double>(w, index, ibase, (const double *)moe_data(src), (double *)moe_data(out), s);
    return;
  }
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

// deterministic index_add: perm = the n indices' positions sorted stably by
// index; start[d] = the first of them whose index is d + ibase (d in [0, m])
__global__ void k_seg_starts(const int64_t *ix, const int64_t *perm, int64_t n, int64_t m, int64_t ibase,
                             int64_t *start) {
  MOE_GRID_STRIDE(d, m + 1) {
    int64_t a = 0, b = n;
    while (a < b) {
      int64_t c = a + (b - a) / 2;
      if (ix[perm[c]] - ibase < d) a = c + 1;
      else b = c;
    }
    start[d] = a;
  }
}
// one thread per element of out (w: out's shape, st1 out's strides, st2 s's):
// out[.., d, ..] += s[.., i, ..] for the sources i of d, in source order
template <class T>
__global__ void k_index_add_seg(sel w, const int64_t *start, const int64_t *perm, const T *s, T *out) {
  MOE_GRID_STRIDE(p, w.n) {
    int64_t rem = p, o1 = 0, so = 0, d = 0;
    for (int k = w.nd - 1; k >= 0; k--) {
      int64_t c = rem % w.shape[k];
      rem /= w.shape[k];
      o1 += c * w.st1[k];
      if (k == w.dim) d = c;
      else so += c * w.st2[k];
    }
    T acc = out[o1];
    for (int64_t q = start[d]; q < start[d + 1]; q++) acc = acc + s[so + perm[q] * w.st2[w.dim]];
    out[o1] = acc;
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

// the deterministic mode's index_add of float T: the indices' stable order, each
// destination's run of sources summed in order
template <class T>
static void index_add_sorted(const moe_tensor *out, int dim, const int64_t *ix, int64_t n, const moe_tensor *src,
                             int64_t ibase, cudaStream_t s) {
  int64_t m = out->shape[dim];
  size_t got = 0;
  int64_t *perm = (int64_t *)moe_cuda_malloc(sizeof(int64_t) * (size_t)(n + m + 1), &got), *start = perm + n;
  if (!perm) {
    moe_cuda_fail("index_add", moe_cuda_last_error());
    return;
  }
  sel w = make_sel(out, out, src, dim);
  if (!sort_rows<int64_t>("index_add", ix, 1, n, 0, perm, s)) {
    MOE_LAUNCH(k_seg_starts, moe_blocks(m + 1, 256), 256, 0, s, ix, perm, n, m, ibase, start);
    MOE_LAUNCH(k_index_add_seg<T>, moe_blocks(w.n, 256), 256, 0, s, w, start, perm, (const T *)moe_data(src),
               (T *)moe_data(out));
  }
  moe_cuda_launched("index_add");
  moe_cuda_free(perm, got);
}

extern "C" void moe_cuda_index_add(moe_tensor *out, int dim, const int64_t *ix, int64_t n, const moe_tensor *src,
                                   int64_t ibase) {
  sel w = make_sel(src, src, out, dim);
  if (!w.n) return;
  cudaStream_t s = moe_cuda_stream();
  if (moe_get_deterministic() && (out->dtype == MOE_F32 || out->dtype == MOE_F64)) {
    if (out->dtype == MOE_F32) index_add_sorted<float>(out, dim, ix, n, src, ibase, s);
    else index_add_sorted<double>(out, dim, ix, n, src, ibase, s);
    return;
  }
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

extern "C" void moe_cuda_argsort_rows(const moe_tensor *x, int64_t M, int64_t K, int desc, int64_t *idx) {
  cudaStream_t s = moe_cuda_stream();
#define RS(T) sort_rows<T>("sort", (const T *)moe_data(x), M, K, desc, idx, s);
  MOE_DTYPE_SWITCH(x->dtype, RS)
#undef RS
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
