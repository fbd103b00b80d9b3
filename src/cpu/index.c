/* index.c -- stable argsort, gather and scatter_add kernels. Index values were
 * range-checked by src/core/index.c. */
#include "cpu.h"
#include "../core/tensor_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- argsort
 * Merge sort of positions by value (stable: ties keep their order). NaN sorts
 * above every number, so it comes last ascending and first descending. */
#define SORT_IMPL(TN, T)                                                                          \
  static int before_##TN(T a, T b, int desc) {                                                    \
    if (a != a) return desc && b == b;                                                            \
    if (b != b) return !desc;                                                                     \
    return desc ? a > b : a < b;                                                                  \
  }                                                                                               \
  static void msort_##TN(const T *v, int64_t *ix, int64_t *tmp, int64_t n, int desc) {            \
    if (n < 2) return;                                                                            \
    if (n <= 16) { /* insertion sort: stable */                                                   \
      for (int64_t i = 1; i < n; i++) {                                                           \
        int64_t cur = ix[i], j = i;                                                               \
        while (j > 0 && before_##TN(v[cur], v[ix[j - 1]], desc)) {                                \
          ix[j] = ix[j - 1];                                                                      \
          j--;                                                                                    \
        }                                                                                         \
        ix[j] = cur;                                                                              \
      }                                                                                           \
      return;                                                                                     \
    }                                                                                             \
    int64_t h = n / 2;                                                                            \
    msort_##TN(v, ix, tmp, h, desc);                                                              \
    msort_##TN(v, ix + h, tmp, n - h, desc);                                                      \
    memcpy(tmp, ix, sizeof(int64_t) * (size_t)h);                                                 \
    int64_t i = 0, j = h, k = 0;                                                                  \
    while (i < h && j < n) ix[k++] = before_##TN(v[ix[j]], v[tmp[i]], desc) ? ix[j++] : tmp[i++]; \
    while (i < h) ix[k++] = tmp[i++];                                                             \
  }
SORT_IMPL(f32, float)
SORT_IMPL(f64, double)
SORT_IMPL(i32, int32_t)
SORT_IMPL(i64, int64_t)

void moe_cpu_argsort_rows(const moe_tensor *x, int64_t M, int64_t K, int descending, int64_t *idx) {
  int64_t *tmp = malloc(sizeof(int64_t) * (size_t)(K / 2 + 1));
  const char *base = moe_data(x);
  size_t es = moe_dtype_size(x->dtype);
  for (int64_t m = 0; m < M; m++) {
    int64_t *ix = idx + m * K;
    const char *row = base + (size_t)(m * K) * es;
    for (int64_t k = 0; k < K; k++) ix[k] = k;
    switch (x->dtype) {
    case MOE_F32: msort_f32((const float *)row, ix, tmp, K, descending); break;
    case MOE_F64: msort_f64((const double *)row, ix, tmp, K, descending); break;
    case MOE_I32: msort_i32((const int32_t *)row, ix, tmp, K, descending); break;
    default: msort_i64((const int64_t *)row, ix, tmp, K, descending); break;
    }
  }
  free(tmp);
}

/* ---------------------------------------------------------------- gather / scatter */

/* Walk the positions of `shape` (row-major); call BODY with the element offset
 * `o` of tensor t (dim contributes nothing) and the running position `pos`. */
#define WALK(shape_t, t, dim, BODY)                          \
  do {                                                       \
    int nd_ = (shape_t)->ndim;                               \
    int64_t c_[MOE_MAX_DIMS] = {0}, n_ = moe_numel(shape_t); \
    for (int64_t pos = 0; pos < n_; pos++) {                 \
      int64_t o = (t)->offset;                               \
      for (int d_ = 0; d_ < nd_; d_++)                       \
        if (d_ != (dim)) o += c_[d_] * (t)->stride[d_];      \
      BODY;                                                  \
      for (int d_ = nd_ - 1; d_ >= 0; d_--) {                \
        if (++c_[d_] < (shape_t)->shape[d_]) break;          \
        c_[d_] = 0;                                          \
      }                                                      \
    }                                                        \
  } while (0)

void moe_cpu_gather(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *index, const moe_tensor *ishape,
                    int64_t ibase) {
  size_t es = moe_dtype_size(t->dtype);
  const char *src = t->storage->data;
  char *dst = moe_data(out); /* out is contiguous with the index's shape */
  WALK(ishape, t, dim, {
    int64_t so = o + (index[pos] - ibase) * t->stride[dim];
    memcpy(dst + (size_t)pos * es, src + (size_t)so * es, es);
  });
}

#define SCATTER_ADD(T)                                                     \
  do {                                                                     \
    T *dst = (T *)out->storage->data;                                      \
    const T *sp = (const T *)src->storage->data;                           \
    WALK(ishape, out, dim, {                                               \
      int64_t so = src->offset;                                            \
      for (int d = 0; d < ishape->ndim; d++) so += c_[d] * src->stride[d]; \
      dst[o + (index[pos] - ibase) * out->stride[dim]] += sp[so];          \
    });                                                                    \
  } while (0)

void moe_cpu_scatter_add(moe_tensor *out, int dim, const int64_t *index, const moe_tensor *ishape,
                         const moe_tensor *src, int64_t ibase) {
  switch (out->dtype) {
  case MOE_F32: SCATTER_ADD(float); break;
  case MOE_F64: SCATTER_ADD(double); break;
  case MOE_I32: SCATTER_ADD(int32_t); break;
  case MOE_I64: SCATTER_ADD(int64_t); break;
  default: SCATTER_ADD(uint8_t); break;
  }
}

/* 0 when every p[i] lies in [lo, hi]; else 1 and *bad = the first that does not */
int moe_cpu_index_check(const int64_t *p, int64_t n, int64_t lo, int64_t hi, int64_t *bad) {
  for (int64_t i = 0; i < n; i++)
    if (p[i] < lo || p[i] > hi) {
      *bad = p[i];
      return 1;
    }
  return 0;
}

/* ---------------------------------------------------------------- index_select / index_add */

/* out [.., n, ..] = t[.., index[i] - ibase, ..] along dim (index contiguous int64, in range) */
void moe_cpu_index_select(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *ix, int64_t n, int64_t ibase) {
  if (moe_is_contiguous(t)) {
    /* contiguous input: blocks of the dims after `dim` are memcpy'd (a batch of
     * 32 rows of 499 floats took 50 us through the strided copy, 3 us this way) */
    int64_t inner = 1, outer = 1, m = t->shape[dim];
    for (int d = dim + 1; d < t->ndim; d++) inner *= t->shape[d];
    for (int d = 0; d < dim; d++) outer *= t->shape[d];
    size_t es = moe_dtype_size(t->dtype), blk = (size_t)inner * es;
    const char *src = moe_data(t);
    char *dst = moe_data(out);
    /* rows spread over a big tensor (a shuffled batch) are cache misses: the
     * rows a few indices ahead are prefetched while this one is copied, so that
     * their misses overlap (a 32-row batch of 499 floats from a 65 MB tensor:
     * 25 -> 20 us on the development VM) */
    enum { AHEAD = 4 };
    for (int64_t o = 0; o < outer; o++)
      for (int64_t i = 0; i < n; i++) {
        if (blk >= 256 && i + AHEAD < n) {
          const char *nx = src + (size_t)(o * m + ix[i + AHEAD] - ibase) * blk;
          for (size_t c = 0; c < blk; c += 64) __builtin_prefetch(nx + c);
        }
        memcpy(dst + (size_t)(o * n + i) * blk, src + (size_t)(o * m + ix[i] - ibase) * blk, blk);
      }
    return;
  }
  /* row copies: one strided copy of the slice t[.., ix[i], ..] per index */
  moe_tensor so = *t, oo = *out;
  so.shape[dim] = 1;
  oo.shape[dim] = 1;
  for (int64_t i = 0; i < n; i++) {
    so.offset = t->offset + (ix[i] - ibase) * t->stride[dim];
    oo.offset = out->offset + i * out->stride[dim];
    moe_cpu_copy(&oo, &so);
  }
}

/* out[.., index[i] - ibase, ..] += s[.., i, ..] along dim; out and s of one dtype (not bool) */
void moe_cpu_index_add(moe_tensor *out, int dim, const int64_t *ix, int64_t n, const moe_tensor *s, int64_t ibase) {
  moe_dtype cdt = out->dtype;
  if (moe_is_contiguous(out) && moe_is_contiguous(s) && (cdt == MOE_F32 || cdt == MOE_F64)) {
    /* contiguous float tensors: blocks after `dim` added in one loop each */
    int64_t inner = 1, outer = 1, m = out->shape[dim];
    for (int d = dim + 1; d < out->ndim; d++) inner *= out->shape[d];
    for (int d = 0; d < dim; d++) outer *= out->shape[d];
    for (int64_t o = 0; o < outer; o++)
      for (int64_t i = 0; i < n; i++) {
        int64_t a = (o * m + ix[i] - ibase) * inner, b = (o * n + i) * inner;
        if (cdt == MOE_F32) {
          float *dst = (float *)moe_data(out) + a;
          const float *sp = (const float *)moe_data(s) + b;
          for (int64_t k = 0; k < inner; k++) dst[k] += sp[k];
        } else {
          double *dst = (double *)moe_data(out) + a;
          const double *sp = (const double *)moe_data(s) + b;
          for (int64_t k = 0; k < inner; k++) dst[k] += sp[k];
        }
      }
    return;
  }
  moe_tensor so = *s, oo = *out;
  so.shape[dim] = 1;
  oo.shape[dim] = 1;
  for (int64_t i = 0; i < n; i++) {
    so.offset = s->offset + i * s->stride[dim];
    oo.offset = out->offset + (ix[i] - ibase) * out->stride[dim];
    moe_cpu_binary(MOE_ADD, &oo, &oo, &so);
  }
}

/* vals [M,k] = x [M,K] at the first k positions of each row of order [M,K]
 * (from argsort_rows); idx [M,k] = those positions + ibase */
void moe_cpu_take_rows(const moe_tensor *x, int64_t M, int64_t K, const int64_t *order, int64_t k, moe_tensor *vals,
                       moe_tensor *idx, int64_t ibase) {
  size_t es = moe_dtype_size(x->dtype);
  const char *xs = moe_data(x);
  char *vs = moe_data(vals);
  int64_t *is = (int64_t *)moe_data(idx);
  for (int64_t m = 0; m < M; m++)
    for (int64_t j = 0; j < k; j++) {
      int64_t o = order[m * K + j];
      memcpy(vs + (size_t)(m * k + j) * es, xs + (size_t)(m * K + o) * es, es);
      is[m * k + j] = o + ibase;
    }
}

/* out[v[i] - ibase] += 1 (int64 out), or += w[i] (float32/float64 out, w contiguous
 * of out's dtype); v holds n checked values */
void moe_cpu_bincount(moe_tensor *out, const int64_t *v, int64_t n, const moe_tensor *w, int64_t ibase) {
  if (!w) {
    int64_t *o = (int64_t *)moe_data(out);
    for (int64_t i = 0; i < n; i++) o[v[i] - ibase]++;
  } else if (w->dtype == MOE_F32) {
    float *o = (float *)moe_data(out);
    const float *ww = (const float *)moe_data(w);
    for (int64_t i = 0; i < n; i++) o[v[i] - ibase] += ww[i];
  } else {
    double *o = (double *)moe_data(out);
    const double *ww = (const double *)moe_data(w);
    for (int64_t i = 0; i < n; i++) o[v[i] - ibase] += ww[i];
  }
}
