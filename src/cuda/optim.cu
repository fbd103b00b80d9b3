// optim.cu -- the fused optimizer update on the device, the twin of
// src/cpu/optim.c (the checks: src/train/optim.c). Multi-tensor: the host
// writes one small table (a row per parameter: its pointers, size, first
// chunk and step-dependent scalars), copies it to the device at once, and
// each launch covers every parameter: the parameters are cut into chunks of
// CHUNK values numbered one after the other, and a block walks chunks,
// finding its parameter by a binary search of the table. The arithmetic is
// the CPU's, in the parameter's dtype and in the same order. Clipping by
// global norm reduces the squared gradients on the device (a double partial
// per block in a fixed tree order, then one block adds the partials in a
// fixed order: deterministic, no atomics) and leaves the norm and the scale
// in device memory, where the update reads the scale: the step never waits
// for the device unless the caller asks for the norm on the host (norm_out).
#include "common.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

const int OT = 256;               // threads per block
const int64_t CHUNK = 4096;       // values per chunk (16 per thread)
const unsigned NORM_BLOCKS = 512; // blocks (and double partials) of the norm's first pass

const char *step_name[] = {"SGD.step", "Adam.step", "AdamW.step", "RMSprop.step", "Adagrad.step"};

// one parameter of the step (the host computes the step-dependent scalars in
// double exactly as the CPU does, so both cast the same values)
struct entry {
  void *w;
  const void *g;
  void *a, *b; // the states (NULL when the rule has none)
  int64_t numel, chunk0, step;
  double bc1, bc2, clr;
  int f64;
};

// the parameter that chunk c belongs to: the last entry with chunk0 <= c
__device__ __forceinline__ int find_entry(const entry *tab, int n, int64_t c) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (tab[mid].chunk0 <= c) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// block-wide sum in a fixed tree order; sh holds OT doubles
__device__ double block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = OT / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

// pass 1 of the norm: block k's sum of squares over chunks k, k + grid, ...
__global__ void k_sq_part(const entry *tab, int n, int64_t nchunks, double *part) {
  __shared__ double sh[OT];
  double s = 0;
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const entry &e = tab[find_entry(tab, n, c)];
    int64_t lo = (c - e.chunk0) * CHUNK, hi = lo + CHUNK < e.numel ? lo + CHUNK : e.numel;
    if (e.f64) {
      const double *x = (const double *)e.g;
      for (int64_t j = lo + threadIdx.x; j < hi; j += OT) s += x[j] * x[j];
    } else {
      const float *x = (const float *)e.g;
      for (int64_t j = lo + threadIdx.x; j < hi; j += OT) s += (double)x[j] * x[j];
    }
  }
  double t = block_sum(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = t;
}

// pass 2 (one block): norm = sqrt(sum of the partials), and the CPU's scale:
// clip / (norm + 1e-6) when the norm exceeds clip, else 1. out = {norm, scale}
__global__ void k_sq_final(const double *part, int nparts, double clip, double *out, double *norm_dst) {
  __shared__ double sh[OT];
  double s = 0;
  for (int i = threadIdx.x; i < nparts; i += OT) s += part[i];
  double norm = sqrt(block_sum(s, sh));
  if (threadIdx.x == 0) {
    out[0] = norm;
    out[1] = norm > clip ? clip / (norm + 1e-6) : 1.0;
    if (norm_dst) *norm_dst = norm;
  }
}

__global__ void k_store(double *dst, double v) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *dst = v;
}

// g' = clip(g * scale) by value, as src/cpu/optim.c's CLIPPED
template <class T> __device__ __forceinline__ T clipped(T gj, double scale, double cv) {
  T g_ = gj * (T)scale;
  return cv > 0 ? (g_ > (T)cv ? (T)cv : g_ < (T)-cv ? (T)-cv : g_) : g_;
}

// the update of values [lo, hi) of one parameter by this block's threads
// (the rules of src/cpu/optim.c's DEFINE_UPDATE, term for term)
template <class T>
__device__ void update_range(moe_optim_kind kind, const entry &e, int64_t lo, int64_t hi, const moe_optim_hparams &h,
                             double scale, double cv) {
  T *w = (T *)e.w, *a = (T *)e.a, *b = (T *)e.b;
  const T *gr = (const T *)e.g;
  const T lr = (T)h.lr, wd = (T)h.weight_decay, mom = (T)h.momentum;
  const T b1 = (T)h.beta1, b2 = (T)h.beta2, eps = (T)h.eps, al = (T)h.alpha;
  switch (kind) {
  case MOE_OPT_SGD:
    for (int64_t j = lo + threadIdx.x; j < hi; j += OT) {
      T g = clipped(gr[j], scale, cv) + wd * w[j];
      if (mom != 0) {
        T buf = e.step == 1 ? g : mom * a[j] + (T)(1 - h.dampening) * g;
        a[j] = buf;
        g = h.nesterov ? g + mom * buf : buf;
      }
      w[j] -= lr * g;
    }
    break;
  case MOE_OPT_ADAM:
  case MOE_OPT_ADAMW: {
    const T decay = kind == MOE_OPT_ADAMW ? 1 - lr * wd : 1, l2 = kind == MOE_OPT_ADAM ? wd : 0;
    const T step_size = lr / (T)e.bc1, inv_bc2 = (T)(1 / sqrt(e.bc2));
    for (int64_t j = lo + threadIdx.x; j < hi; j += OT) {
      T g = clipped(gr[j], scale, cv) + l2 * w[j];
      T mj = b1 * a[j] + (1 - b1) * g, vj = b2 * b[j] + (1 - b2) * g * g;
      a[j] = mj;
      b[j] = vj;
      w[j] = w[j] * decay - step_size * mj / (sqrt(vj) * inv_bc2 + eps);
    }
    break;
  }
  case MOE_OPT_RMSPROP:
    for (int64_t j = lo + threadIdx.x; j < hi; j += OT) {
      T g = clipped(gr[j], scale, cv) + wd * w[j];
      T vj = al * a[j] + (1 - al) * g * g;
      a[j] = vj;
      T d = g / (sqrt(vj) + eps);
      if (mom != 0) {
        d = mom * b[j] + d;
        b[j] = d;
      }
      w[j] -= lr * d;
    }
    break;
  case MOE_OPT_ADAGRAD:
    for (int64_t j = lo + threadIdx.x; j < hi; j += OT) {
      T g = clipped(gr[j], scale, cv) + wd * w[j];
      T sj = a[j] + g * g;
      a[j] = sj;
      w[j] -= (T)e.clr * g / (sqrt(sj) + eps);
    }
    break;
  }
}

// the update of chunks [c0, c1) (scal: {norm, scale} from k_sq_final, or NULL: scale 1)
__global__ void k_update(moe_optim_kind kind, const entry *tab, int n, int64_t c0, int64_t c1, moe_optim_hparams h,
                         const double *scal, double cv) {
  if (h.skip && *h.skip) return; // (the step was called off on the device: fit's non-finite loss)
  double scale = scal ? scal[1] : 1.0;
  for (int64_t c = c0 + blockIdx.x; c < c1; c += gridDim.x) {
    const entry &e = tab[find_entry(tab, n, c)];
    int64_t lo = (c - e.chunk0) * CHUNK, hi = lo + CHUNK < e.numel ? lo + CHUNK : e.numel;
    if (e.f64) update_range<double>(kind, e, lo, hi, h, scale, cv);
    else update_range<float>(kind, e, lo, hi, h, scale, cv);
  }
}

unsigned grid_of(int64_t chunks, unsigned cap) { return (unsigned)(chunks < 1 ? 1 : chunks < cap ? chunks : cap); }

int by_address(const void *x, const void *y) {
  uintptr_t a = (uintptr_t) * (void *const *)x, b = (uintptr_t) * (void *const *)y;
  return a < b ? -1 : a > b;
}

// whether two parameters share a storage (as the CPU's shares_storage): their
// updates then go one launch per parameter, in order, as on the CPU
int shares_storage(int n, moe_tensor *const *params) {
  void **st = (void **)malloc(sizeof(void *) * (size_t)(n ? n : 1));
  if (!st) return 1;
  for (int i = 0; i < n; i++) st[i] = params[i]->storage;
  qsort(st, (size_t)n, sizeof *st, by_address);
  int shared = 0;
  for (int i = 1; i < n && !shared; i++) shared = st[i] == st[i - 1];
  free(st);
  return shared;
}

// the host side of the table: kept from step to step. moe_cuda_memcpy stages
// it (a small copy: pinned staging memory) before it returns, so the next step
// may rewrite it at once
entry *host_tab;
int host_cap;
} // namespace

extern "C" void moe_cuda_optim_update(moe_optim_kind kind, int n, moe_tensor *const *params, moe_tensor *const *grads,
                                      moe_tensor *const *s1s, moe_tensor *const *s2s, const int64_t *steps,
                                      const moe_optim_hparams *h, double *norm_out, moe_tensor *norm_t) {
  const char *op = step_name[kind];
  double *norm_dst = norm_t ? (double *)moe_data(norm_t) : NULL;
  if (norm_out) *norm_out = -1;
  if (n > host_cap) {
    int cap = n > 2 * host_cap ? n : 2 * host_cap;
    entry *t = (entry *)realloc(host_tab, sizeof(entry) * (size_t)cap);
    if (!t) {
      moe_cuda_fail(op, "out of host memory for the parameter table");
      return;
    }
    host_tab = t;
    host_cap = cap;
  }
  int64_t nchunks = 0;
  for (int i = 0; i < n; i++) {
    entry &e = host_tab[i];
    const moe_tensor *p = params[i];
    int64_t step = steps[i];
    e.w = moe_data(p);
    e.g = moe_data(grads[i]);
    e.a = s1s ? moe_data(s1s[i]) : NULL;
    e.b = s2s ? moe_data(s2s[i]) : NULL;
    e.numel = moe_numel(p);
    e.chunk0 = nchunks;
    e.step = step;
    e.bc1 = 1 - pow(h->beta1, (double)step);
    e.bc2 = 1 - pow(h->beta2, (double)step);
    e.clr = h->lr / (1 + (double)(step - 1) * h->lr_decay);
    e.f64 = p->dtype == MOE_F64;
    nchunks += (e.numel + CHUNK - 1) / CHUNK;
  }
  int clip = h->clip_norm > 0;
  // one device block: the table, then (when clipping) the partials and {norm, scale}
  size_t tab_bytes = (sizeof(entry) * (size_t)n + 15) & ~(size_t)15;
  size_t bytes = tab_bytes + (clip ? sizeof(double) * (NORM_BLOCKS + 2) : 0), got = 0;
  char *dev = (char *)moe_cuda_malloc(bytes, &got);
  if (!dev) {
    moe_cuda_fail(op, moe_cuda_last_error());
    return;
  }
  cudaStream_t s = moe_cuda_stream();
  entry *tab = (entry *)dev;
  if (moe_cuda_memcpy(tab, host_tab, sizeof(entry) * (size_t)n, 0)) { // (staged when small: no wait)
    moe_cuda_fail(op, moe_cuda_last_error());
    moe_cuda_free(dev, got);
    return;
  }
  double *scal = NULL;
  if (clip) {
    double *part = (double *)(dev + tab_bytes);
    scal = part + NORM_BLOCKS;
    unsigned gn = grid_of(nchunks, NORM_BLOCKS);
    if (nchunks > 0) MOE_LAUNCH_SYNC(k_sq_part, gn, OT, 0, s, tab, n, nchunks, part);
    MOE_LAUNCH_SYNC(k_sq_final, 1, OT, 0, s, part, nchunks > 0 ? (int)gn : 0, h->clip_norm, scal, norm_dst);
  } else if (norm_dst) {
    MOE_LAUNCH(k_store, 1, 1, 0, s, norm_dst, -1.0);
  }
  if (nchunks > 0) {
    if (!shares_storage(n, params)) {
      MOE_LAUNCH(k_update, grid_of(nchunks, 1u << 20), OT, 0, s, kind, tab, n, (int64_t)0, nchunks, *h, scal,
                 h->clip_value);
    } else {
      for (int i = 0; i < n; i++) {
        int64_t c0 = host_tab[i].chunk0, c1 = i + 1 < n ? host_tab[i + 1].chunk0 : nchunks;
        if (c1 > c0)
          MOE_LAUNCH(k_update, grid_of(c1 - c0, 1u << 20), OT, 0, s, kind, tab, n, c0, c1, *h, scal, h->clip_value);
      }
    }
  }
  moe_cuda_launched(op);
  // the norm on the host costs a wait for the device: only when asked
  if (clip && norm_out && moe_cuda_memcpy(norm_out, scal, sizeof(double), 1)) moe_cuda_fail(op, moe_cuda_last_error());
  moe_cuda_free(dev, got); // stream-ordered: the cache hands it out again only to later work on this stream
}
