/* index.c -- checking and dispatch of sort, topk, gather, scatter_add,
 * index_select, index_add, bincount, cat and stack. */
#include "moe.h"
#include "autograd_impl.h"
#include "dispatch.h"
#include "index_impl.h"
#include "tensor_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- engine-made indices
 * Checking a device index costs a round trip (a flag copied back, a sync). An
 * index the engine wrote itself (topk, sort, argmax...) carries its value range
 * on its storage; the mark lasts until the storage is written again (its
 * version moves). */
static int64_t checks_done;
_Static_assert(sizeof(struct moe_storage) <= MOE_ALIGN, "the storage header fits in a host block's header bytes");

void moe_mark_index_range(const moe_tensor *t, int64_t lo, int64_t hi) {
  moe_storage *s = t ? t->storage : NULL;
  /* the mark is for the whole storage: t must have written all of it */
  if (!s || t->dtype != MOE_I64 || t->offset != 0 || !moe_is_contiguous(t) ||
      (size_t)moe_numel(t) * sizeof(int64_t) != s->nbytes || s->nbytes == 0)
    return;
  s->ix_marked = 1;
  s->ix_lo = lo;
  s->ix_hi = hi;
  s->ix_version = s->version;
}

int64_t moe_index_checks(void) { return checks_done; }

/* 1 when index's values are known to lie in [lo, hi]: its storage's mark is
 * current (an int64 view of the storage sees only values the op wrote) */
static int marked_within(const moe_tensor *t, int64_t lo, int64_t hi) {
  const moe_storage *s = t->storage;
  return t->dtype == MOE_I64 && s->ix_marked && s->ix_version == s->version && s->ix_lo >= lo && s->ix_hi <= hi;
}

/* Index tensor as contiguous int64 with every value checked to lie in
 * [ibase, ibase + size - 1]. Returns the data; *hold keeps it alive. */
const int64_t *moe_checked_index(const char *op, const moe_tensor *index, int64_t size, int64_t ibase,
                                 moe_tensor **hold) {
  char b[160];
  *hold = NULL;
  if (index->dtype != MOE_I64 && index->dtype != MOE_I32) {
    moe_error("%s: index must be an int32 or int64 tensor, got %s (shape %s)", op, moe_dtype_name(index->dtype),
              moe_shape_str(index, b));
    return NULL;
  }
  int known = marked_within(index, ibase, ibase + size - 1);
  moe_tensor *i64 = moe_to_dtype(index, MOE_I64);
  if (!i64) return NULL;
  *hold = moe_contiguous(i64);
  moe_tensor_release(i64);
  if (!*hold) return NULL;
  const int64_t *p = (const int64_t *)moe_data(*hold);
  int64_t v = 0;
  if (known) return p;
  checks_done++;
  if (MOE_K(index_check, (*hold)->device, p, moe_numel(*hold), ibase, ibase + size - 1, &v)) {
    moe_error("%s: index %lld out of range [%lld, %lld] (dim size %lld)", op, (long long)v, (long long)ibase,
              (long long)(ibase + size - 1), (long long)size);
    moe_tensor_release(*hold);
    *hold = NULL;
    return NULL;
  }
  return p;
}

static int check_dim(const char *op, const moe_tensor *t, int dim) {
  char b[160];
  if (dim < 0 || dim >= (t->ndim ? t->ndim : 1) || (t->ndim == 0))
    return moe_error("%s: dim %d out of range for tensor of shape %s", op, dim + 1, moe_shape_str(t, b));
  return 0;
}

/* ---------------------------------------------------------------- the backward helpers the index ops share */

static moe_tensor *zeros_of(const moe_edge *e, const moe_tensor *like) {
  return moe_full_on(like->device, e->ndim, e->shape, like->dtype, 0.0);
}

typedef moe_tensor *(*add_into_fn)(const moe_tensor *, int, const moe_tensor *, const moe_tensor *, int64_t, int);

typedef moe_tensor *(*pick_fn)(const moe_tensor *, int, const moe_tensor *, int64_t);

/* a pick (gather, index_select) sends g back into zeros of the input's shape with
 * its mirror (scatter_add, index_add) */
static int pick_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin, add_into_fn mirror) {
  const moe_tensor *ix = moe_node_saved(n, 0);
  moe_tensor *z = ix ? zeros_of(&n->edges[0], g) : NULL;
  if (!z) return -1;
  moe_tensor *r = mirror(z, (int)n->iarg[0], ix, g, n->iarg[1], 1);
  moe_tensor_release(z);
  return (gin[0] = r) ? 0 : -1;
}

/* an add-into (scatter_add, index_add): g passes to the target, and its mirror pick
 * (gather, index_select) of g goes to the source */
static int add_into_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin, pick_fn mirror) {
  const moe_tensor *ix = moe_node_saved(n, 0);
  if (!ix) return -1;
  if (moe_node_needs(n, 0)) {
    moe_tensor_retain((moe_tensor *)g);
    gin[0] = (moe_tensor *)g;
  }
  if (moe_node_needs(n, 1) && !(gin[1] = mirror(g, (int)n->iarg[0], ix, n->iarg[1]))) return -1;
  return 0;
}

static moe_tensor *record_index(moe_tensor *out, const char *name, moe_backward_fn bw, int nin,
                                const moe_tensor *const *ins, int dim, const moe_tensor *index, int64_t ibase) {
  if (!out || !moe_dtype_is_float(out->dtype)) return out;
  moe_node *n = moe_node_new(name, bw, nin, ins);
  if (n) {
    n->iarg[0] = dim;
    n->iarg[1] = ibase;
    if (moe_node_save(n, 0, index)) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(out, n);
}

/* ---------------------------------------------------------------- gather and scatter_add: forward, backward, recorder */

static int check_index_shape(const char *op, const moe_tensor *t, int dim, const moe_tensor *index,
                             const moe_tensor *src) {
  char b1[160], b2[160], b3[160];
  const moe_tensor *ts[3] = {t, index, src};
  if (moe_same_device(op, 3, ts)) return -1;
  if (check_dim(op, t, dim)) return -1;
  if (index->ndim != t->ndim)
    return moe_error("%s: index of shape %s must have as many dims as the input of shape %s", op,
                     moe_shape_str(index, b1), moe_shape_str(t, b2));
  for (int d = 0; d < t->ndim; d++) {
    if ((d != dim && index->shape[d] > t->shape[d]) || (src && index->shape[d] > src->shape[d]))
      return moe_error("%s: index of shape %s does not fit input of shape %s%s%s in dim %d", op,
                       moe_shape_str(index, b1), moe_shape_str(t, b2), src ? " and source of shape " : "",
                       src ? moe_shape_str(src, b3) : "", d + 1);
  }
  if (src && src->ndim != t->ndim)
    return moe_error("%s: source of shape %s must have as many dims as the input of shape %s", op,
                     moe_shape_str(src, b1), moe_shape_str(t, b2));
  return 0;
}

static moe_tensor *gather_impl(const moe_tensor *t, int dim, const moe_tensor *index, int64_t ibase) {
  moe_tensor *hold;
  if (check_index_shape("gather", t, dim, index, NULL)) return NULL;
  const int64_t *ix = moe_checked_index("gather", index, t->shape[dim], ibase, &hold);
  if (!ix) return NULL;
  moe_tensor *out = moe_empty_on(t->device, index->ndim, index->shape, t->dtype);
  if (out) MOE_K(gather, out->device, out, t, dim, ix, index, ibase);
  moe_tensor_release(hold);
  /* values picked from a marked index tensor keep its range */
  if (out && marked_within(t, INT64_MIN, INT64_MAX)) moe_mark_index_range(out, t->storage->ix_lo, t->storage->ix_hi);
  return out;
}

/* out = gather(t, dim, index) (also topk/sort values) */
static int gather_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  return pick_backward(n, g, gin, moe_scatter_add);
}

moe_tensor *moe_gather(const moe_tensor *t, int dim, const moe_tensor *index, int64_t ibase) {
  if (!moe_ag_wants(1, &t)) return gather_impl(t, dim, index, ibase);
  moe_tensor *out;
  MOE_NOGRAD(out, gather_impl(t, dim, index, ibase));
  return record_index(out, "gather", gather_backward, 1, &t, dim, index, ibase);
}

static moe_tensor *scatter_add_impl(const moe_tensor *t, int dim, const moe_tensor *index, const moe_tensor *src,
                                    int64_t ibase, int inplace) {
  moe_tensor *hold, *s = NULL, *out = NULL;
  if (check_index_shape("scatter_add", t, dim, index, src)) return NULL;
  const int64_t *ix = moe_checked_index("scatter_add", index, t->shape[dim], ibase, &hold);
  if (!ix) return NULL;
  if (!(s = moe_to_dtype(src, t->dtype))) goto done;
  if (inplace && moe_check_writable("scatter_add", t)) goto done;
  if (inplace && src->requires_grad && moe_grad_enabled()) {
    moe_error("scatter_add_: the source requires grad, and in-place ops are not recorded; "
              "use scatter_add (not in place)");
    goto done;
  }
  if (inplace) {
    out = (moe_tensor *)t;
    moe_tensor_retain(out);
  } else if (!(out = moe_clone(t))) goto done;
  MOE_K(scatter_add, out->device, out, dim, ix, index, s, ibase);
done:
  moe_tensor_release(s);
  moe_tensor_release(hold);
  return out;
}

/* out = t with out[index] += src (along dim) */
static int scatter_add_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  return add_into_backward(n, g, gin, moe_gather);
}

moe_tensor *moe_scatter_add(const moe_tensor *t, int dim, const moe_tensor *index, const moe_tensor *src, int64_t ibase,
                            int inplace) {
  const moe_tensor *ins[2] = {t, src};
  if (inplace || !moe_ag_wants(2, ins)) return scatter_add_impl(t, dim, index, src, ibase, inplace);
  moe_tensor *out;
  MOE_NOGRAD(out, scatter_add_impl(t, dim, index, src, ibase, 0));
  return record_index(out, "scatter_add", scatter_add_backward, 2, ins, dim, index, ibase);
}

/* ---------------------------------------------------------------- sort and topk */

int moe_sort(const moe_tensor *t, int dim, int descending, moe_tensor **values, moe_tensor **indices, int64_t ibase) {
  if (check_dim("sort", t, dim)) return -1;
  return moe_topk(t, t->shape[dim], dim, descending, values, indices, ibase);
}

static int topk_impl(const moe_tensor *t, int64_t k, int dim, int largest, moe_tensor **values, moe_tensor **indices,
                     int64_t ibase) {
  char b[160];
  if (check_dim("topk", t, dim)) return -1;
  if (k < 0 || k > t->shape[dim])
    return moe_error("topk: k = %lld out of range for dim %d of size %lld (shape %s)", (long long)k, dim + 1,
                     (long long)t->shape[dim], moe_shape_str(t, b));
  /* rows along dim */
  int perm[MOE_MAX_DIMS], n = 0;
  for (int d = 0; d < t->ndim; d++)
    if (d != dim) perm[n++] = d;
  perm[n] = dim;
  moe_dtype wdt = t->dtype == MOE_BOOL ? MOE_I32 : t->dtype;
  moe_tensor *p = moe_permute(t, perm);
  moe_tensor *x = NULL, *vals = NULL, *idx = NULL;
  moe_tensor *order = NULL;
  int rc = -1;
  if (!p) return -1;
  if (wdt == t->dtype) x = moe_contiguous(p);
  else if ((x = moe_empty_on(p->device, p->ndim, p->shape, wdt))) MOE_K(copy, x->device, x, p);
  if (!x) goto done;
  int64_t K = t->shape[dim], M = 1;
  for (int d = 0; d < t->ndim; d++)
    if (d != dim) M *= t->shape[d];
  int64_t on = M * K;
  if (!(order = moe_empty_on(x->device, 1, &on, MOE_I64))) goto done;
  MOE_K(argsort_rows, x->device, x, M, K, largest != 0, (int64_t *)moe_data(order));
  /* outputs in [rest..., k] layout, then permuted back */
  int64_t oshape[MOE_MAX_DIMS];
  memcpy(oshape, x->shape, sizeof oshape);
  oshape[t->ndim - 1] = k;
  vals = moe_empty_on(t->device, t->ndim, oshape, t->dtype);
  idx = moe_empty_on(t->device, t->ndim, oshape, MOE_I64);
  if (!vals || !idx) goto done;
  if (wdt != t->dtype) { /* bool was sorted as int32: take values from the original */
    moe_tensor_release(x);
    if (!(x = moe_contiguous(p))) goto done;
  }
  MOE_K(take_rows, x->device, x, M, K, (const int64_t *)moe_data(order), k, vals, idx, ibase);
  int inv[MOE_MAX_DIMS];
  for (int d = 0; d < t->ndim; d++) inv[perm[d]] = d;
  moe_tensor *pv = moe_permute(vals, inv), *pi = moe_permute(idx, inv);
  if (pv && pi) {
    *values = moe_contiguous(pv);
    *indices = moe_contiguous(pi);
    if (*values && *indices) {
      rc = 0;
      moe_mark_index_range(*indices, ibase, ibase + K - 1);
    } else {
      moe_tensor_release(*values);
      moe_tensor_release(*indices);
    }
  }
  moe_tensor_release(pv);
  moe_tensor_release(pi);
done:
  moe_tensor_release(order);
  moe_tensor_release(p);
  moe_tensor_release(x);
  moe_tensor_release(vals);
  moe_tensor_release(idx);
  return rc;
}

int moe_topk(const moe_tensor *t, int64_t k, int dim, int largest, moe_tensor **values, moe_tensor **indices,
             int64_t ibase) {
  if (!values || !moe_ag_wants(1, &t)) return topk_impl(t, k, dim, largest, values, indices, ibase);
  moe_tensor *idx = NULL;
  int rc;
  MOE_NOGRAD(rc, topk_impl(t, k, dim, largest, values, &idx, ibase));
  if (rc) return rc;
  *values = record_index(*values, "topk", gather_backward, 1, &t, dim, idx, ibase);
  if (indices) *indices = idx;
  else moe_tensor_release(idx);
  if (!*values) {
    if (indices) {
      moe_tensor_release(*indices);
      *indices = NULL;
    }
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- index_select and index_add */

int moe_check_vector_index(const char *op, const moe_tensor *index) {
  char b[160];
  if (index->ndim > 1) return moe_error("%s: index must be 1-D, got shape %s", op, moe_shape_str(index, b));
  return 0;
}

static moe_tensor *index_select_impl(const moe_tensor *t, int dim, const moe_tensor *index, int64_t ibase) {
  moe_tensor *hold;
  const moe_tensor *ti[2] = {t, index};
  if (moe_same_device("index_select", 2, ti)) return NULL;
  if (check_dim("index_select", t, dim) || moe_check_vector_index("index_select", index)) return NULL;
  const int64_t *ix = moe_checked_index("index_select", index, t->shape[dim], ibase, &hold);
  if (!ix) return NULL;
  int64_t n = moe_numel(index), shape[MOE_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[dim] = n;
  moe_tensor *out = moe_empty_on(t->device, t->ndim, shape, t->dtype);
  if (out) MOE_K(index_select, out->device, out, t, dim, ix, n, ibase);
  moe_tensor_release(hold);
  return out;
}

/* out = index_select(t, dim, index) */
static int index_select_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  return pick_backward(n, g, gin, moe_index_add);
}

moe_tensor *moe_index_select(const moe_tensor *t, int dim, const moe_tensor *index, int64_t ibase) {
  if (!moe_ag_wants(1, &t)) return index_select_impl(t, dim, index, ibase);
  moe_tensor *out;
  MOE_NOGRAD(out, index_select_impl(t, dim, index, ibase));
  return record_index(out, "index_select", index_select_backward, 1, &t, dim, index, ibase);
}

static moe_tensor *index_add_impl(const moe_tensor *t, int dim, const moe_tensor *index, const moe_tensor *src,
                                  int64_t ibase, int inplace) {
  char b1[160], b2[160];
  moe_tensor *hold, *s = NULL, *out = NULL;
  const moe_tensor *ts[3] = {t, index, src};
  if (moe_same_device("index_add", 3, ts)) return NULL;
  if (check_dim("index_add", t, dim) || moe_check_vector_index("index_add", index)) return NULL;
  int64_t n = moe_numel(index);
  int bad = src->ndim != t->ndim || src->shape[dim] != n;
  for (int d = 0; !bad && d < t->ndim; d++) bad = d != dim && src->shape[d] != t->shape[d];
  if (bad) {
    moe_error("index_add: source of shape %s does not match input of shape %s with %lld indices in dim %d",
              moe_shape_str(src, b1), moe_shape_str(t, b2), (long long)n, dim + 1);
    return NULL;
  }
  const int64_t *ix = moe_checked_index("index_add", index, t->shape[dim], ibase, &hold);
  if (!ix) return NULL;
  moe_dtype cdt = t->dtype == MOE_BOOL ? MOE_I64 : t->dtype;
  if (!(s = moe_to_dtype(src, cdt))) goto done;
  if (inplace && moe_check_writable("index_add", t)) goto done;
  if (inplace && src->requires_grad && moe_grad_enabled()) {
    moe_error("index_add_: the source requires grad, and in-place ops are not recorded; "
              "use index_add (not in place)");
    goto done;
  }
  if (inplace && cdt == t->dtype) {
    out = (moe_tensor *)t;
    moe_tensor_retain(out);
  } else if (inplace) {
    moe_error("index_add_: cannot add in place into a bool tensor");
    goto done;
  } else if (!(out = cdt == t->dtype ? moe_clone(t) : moe_to_dtype(t, cdt))) goto done;
  MOE_K(index_add, out->device, out, dim, ix, n, s, ibase);
done:
  moe_tensor_release(s);
  moe_tensor_release(hold);
  return out;
}

/* out = t with out[.., index[i], ..] += src[.., i, ..] */
static int index_add_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  return add_into_backward(n, g, gin, moe_index_select);
}

moe_tensor *moe_index_add(const moe_tensor *t, int dim, const moe_tensor *index, const moe_tensor *src, int64_t ibase,
                          int inplace) {
  const moe_tensor *ins[2] = {t, src};
  if (inplace || !moe_ag_wants(2, ins)) return index_add_impl(t, dim, index, src, ibase, inplace);
  moe_tensor *out;
  MOE_NOGRAD(out, index_add_impl(t, dim, index, src, ibase, 0));
  return record_index(out, "index_add", index_add_backward, 2, ins, dim, index, ibase);
}

/* ---------------------------------------------------------------- bincount */

/* *len = max(*len, the largest value of device index v - ibase + 1): the
 * engine's max on the device, and one value copied back (host code never
 * reads device memory) */
static int bins_on_device(const moe_tensor *v, int64_t ibase, int64_t *len) {
  moe_tensor *mx, *host = NULL;
  MOE_NOGRAD(mx, moe_reduce(MOE_RMAX, v, 0, 0, 0, NULL, 0));
  if (mx) host = moe_to_device(mx, MOE_CPU);
  moe_tensor_release(mx);
  if (!host) return -1;
  int64_t m = *(const int64_t *)moe_data(host) - ibase + 1;
  moe_tensor_release(host);
  if (m > *len) *len = m;
  return 0;
}

moe_tensor *moe_bincount(const moe_tensor *t, const moe_tensor *weights, int64_t minlength, int64_t ibase) {
  char b1[160], b2[160];
  const moe_tensor *tw[2] = {t, weights};
  if (moe_same_device("bincount", 2, tw) || moe_backend_require("bincount", t->device, MOE_KERNEL_bincount))
    return NULL;
  if (t->ndim != 1) {
    moe_error("bincount: input must be 1-D, got shape %s", moe_shape_str(t, b1));
    return NULL;
  }
  if (t->dtype != MOE_I32 && t->dtype != MOE_I64) {
    moe_error("bincount: input must be an int32 or int64 tensor, got %s", moe_dtype_name(t->dtype));
    return NULL;
  }
  if (minlength < 0) {
    moe_error("bincount: minlength must be >= 0, got %lld", (long long)minlength);
    return NULL;
  }
  if (weights && (weights->ndim != 1 || weights->shape[0] != t->shape[0])) {
    moe_error("bincount: weights of shape %s do not match input of shape %s", moe_shape_str(weights, b1),
              moe_shape_str(t, b2));
    return NULL;
  }
  moe_tensor *hold;
  int64_t n = t->shape[0], len = minlength;
  /* every value >= ibase (bins are 1-based); there is no upper bound but memory */
  const int64_t *v = moe_checked_index("bincount", t, INT64_MAX - ibase, ibase, &hold);
  if (!v) return NULL;
  if (t->device == MOE_CPU) {
    for (int64_t i = 0; i < n; i++)
      if (v[i] - ibase + 1 > len) len = v[i] - ibase + 1;
  } else if (n > 0 && bins_on_device(hold, ibase, &len)) {
    moe_tensor_release(hold);
    return NULL;
  }
  moe_tensor *w = NULL, *out = NULL;
  if (weights) {
    moe_dtype wdt = moe_dtype_is_float(weights->dtype) ? weights->dtype : MOE_F64;
    moe_tensor *w1 = moe_to_dtype(weights, wdt);
    w = w1 ? moe_contiguous(w1) : NULL;
    moe_tensor_release(w1);
    if (!w) goto done;
  }
  out = moe_full_on(t->device, 1, &len, w ? w->dtype : MOE_I64, 0);
  if (!out) goto done;
  MOE_K(bincount, t->device, out, v, n, w, ibase);
done:
  moe_tensor_release(w);
  moe_tensor_release(hold);
  return out;
}

/* ---------------------------------------------------------------- cat and stack */

static moe_tensor *cat_impl(int n, moe_tensor *const *ts, int dim) {
  char b1[160], b2[160];
  if (n < 1) {
    moe_error("cat: expected a non-empty list of tensors");
    return NULL;
  }
  const moe_tensor *ref = ts[0];
  if (check_dim("cat", ref, dim)) return NULL;
  moe_dtype dt = ref->dtype;
  int64_t shape[MOE_MAX_DIMS];
  memcpy(shape, ref->shape, sizeof shape);
  shape[dim] = 0;
  for (int i = 0; i < n; i++) {
    const moe_tensor *t = ts[i];
    int bad = t->ndim != ref->ndim;
    for (int d = 0; !bad && d < t->ndim; d++) bad = d != dim && t->shape[d] != ref->shape[d];
    if (bad) {
      moe_error("cat: tensor %d of shape %s does not match tensor 1 of shape %s outside dim %d", i + 1,
                moe_shape_str(t, b1), moe_shape_str(ref, b2), dim + 1);
      return NULL;
    }
    shape[dim] += t->shape[dim];
    dt = moe_promote(dt, t->dtype);
  }
  if (moe_same_device("cat", n, (const moe_tensor *const *)ts)) return NULL;
  moe_tensor *out = moe_empty_on(ref->device, ref->ndim, shape, dt);
  if (!out) return NULL;
  int64_t at = 0;
  for (int i = 0; i < n; i++) {
    moe_tensor part = *out;
    part.offset = out->offset + at * out->stride[dim];
    part.shape[dim] = ts[i]->shape[dim];
    MOE_K(copy, part.device, &part, ts[i]);
    at += ts[i]->shape[dim];
  }
  return out;
}

/* out = cat(ts, dim): each input takes its slice of g */
static int cat_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  int dim = (int)n->iarg[0];
  int64_t at = 0;
  for (int i = 0; i < n->nin; i++) {
    int64_t len = n->edges[i].shape[dim];
    if (moe_node_needs(n, i) && !(gin[i] = moe_narrow(g, dim, at, len))) return -1;
    at += len;
  }
  return 0;
}

moe_tensor *moe_cat(int n, moe_tensor *const *ts, int dim) {
  if (n < 1 || !moe_ag_wants(n, (const moe_tensor *const *)ts)) return cat_impl(n, ts, dim);
  moe_tensor *out;
  MOE_NOGRAD(out, cat_impl(n, ts, dim));
  if (!out) return NULL;
  moe_node *nd = moe_node_new("cat", cat_backward, n, (const moe_tensor *const *)ts);
  if (nd) nd->iarg[0] = dim;
  return moe_ag_attach(out, nd);
}

moe_tensor *moe_stack(int n, moe_tensor *const *ts, int dim) {
  char b1[160], b2[160];
  if (n < 1) {
    moe_error("stack: expected a non-empty list of tensors");
    return NULL;
  }
  for (int i = 1; i < n; i++) {
    int bad = ts[i]->ndim != ts[0]->ndim;
    for (int d = 0; !bad && d < ts[0]->ndim; d++) bad = ts[i]->shape[d] != ts[0]->shape[d];
    if (bad) {
      moe_error("stack: tensor %d of shape %s differs from tensor 1 of shape %s", i + 1, moe_shape_str(ts[i], b1),
                moe_shape_str(ts[0], b2));
      return NULL;
    }
  }
  if (dim < 0 || dim > ts[0]->ndim) {
    moe_error("stack: dim %d out of range for tensors of shape %s", dim + 1, moe_shape_str(ts[0], b1));
    return NULL;
  }
  moe_tensor **us = calloc((size_t)n, sizeof *us);
  moe_tensor *out = NULL;
  if (!us) {
    moe_error("stack: out of memory");
    return NULL;
  }
  int ok = 1;
  for (int i = 0; i < n && ok; i++) ok = (us[i] = moe_unsqueeze(ts[i], dim)) != NULL;
  if (ok) out = moe_cat(n, us, dim);
  for (int i = 0; i < n; i++) moe_tensor_release(us[i]);
  free(us);
  return out;
}

/* ================================================================ autograd
 * Index ops move gradients with their mirror op: gather <-> scatter_add,
 * index_select <-> index_add, cat -> narrow. */
