/* tensor.c -- errors, dtypes, tensors over storage (the allocator: alloc.c), moves between
 * devices, element access, views and copies, and their autograd. */
#include "moe.h"
#include "autograd_impl.h"
#include "dispatch.h"
#include "alloc.h"
#include "tensor_impl.h"
#include "index_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- errors */

static _Thread_local char err_buf[1024];

int moe_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_buf, sizeof err_buf, fmt, ap);
  va_end(ap);
  return -1;
}

const char *moe_last_error(void) { return err_buf[0] ? err_buf : "unknown error"; }

const char *moe_dims_str(int ndim, const int64_t *shape, char *buf) {
  int n = sprintf(buf, "[");
  for (int i = 0; i < ndim; i++) n += sprintf(buf + n, i ? ",%lld" : "%lld", (long long)shape[i]);
  sprintf(buf + n, "]");
  return buf;
}

const char *moe_shape_str(const moe_tensor *t, char *buf) { return moe_dims_str(t->ndim, t->shape, buf); }

/* ---------------------------------------------------------------- dtypes */

static const struct {
  const char *name;
  size_t size;
} dtypes[MOE_NDTYPES] = {
    [MOE_F32] = {"float32", 4}, [MOE_F64] = {"float64", 8}, [MOE_I32] = {"int32", 4},
    [MOE_I64] = {"int64", 8},   [MOE_BOOL] = {"bool", 1},
};

size_t moe_dtype_size(moe_dtype dt) { return dtypes[dt].size; }
const char *moe_dtype_name(moe_dtype dt) { return dtypes[dt].name; }
int moe_dtype_is_float(moe_dtype dt) { return dt == MOE_F32 || dt == MOE_F64; }

int moe_dtype_from_name(const char *s, moe_dtype *out) {
  static const struct {
    const char *alias;
    moe_dtype dt;
  } aliases[] = {
      {"float32", MOE_F32}, {"float", MOE_F32}, {"float64", MOE_F64}, {"double", MOE_F64}, {"int32", MOE_I32},
      {"int", MOE_I32},     {"int64", MOE_I64}, {"long", MOE_I64},    {"bool", MOE_BOOL},
  };
  for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
    if (!strcmp(s, aliases[i].alias)) {
      *out = aliases[i].dt;
      return 0;
    }
  return -1;
}

/* bool < int32 < int64 < float32 < float64 */
moe_dtype moe_promote(moe_dtype a, moe_dtype b) {
  static const int rank[MOE_NDTYPES] = {[MOE_BOOL] = 0, [MOE_I32] = 1, [MOE_I64] = 2, [MOE_F32] = 3, [MOE_F64] = 4};
  return rank[a] >= rank[b] ? a : b;
}

static int check_shape(const char *op, int ndim, const int64_t *shape, int64_t *numel) {
  char b[160];
  if (ndim < 0 || ndim > MOE_MAX_DIMS)
    return moe_error("%s: %d dims requested, at most %d are supported", op, ndim, MOE_MAX_DIMS);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return moe_error("%s: negative size %lld in shape %s", op, (long long)shape[i], moe_dims_str(ndim, shape, b));
    if (shape[i] && n > INT64_MAX / 16 / shape[i])
      return moe_error("%s: shape %s is too large", op, moe_dims_str(ndim, shape, b));
    n *= shape[i];
  }
  *numel = n;
  return 0;
}

static void set_contiguous_strides(moe_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    t->stride[i] = s;
    s *= t->shape[i] ? t->shape[i] : 1;
  }
}

/* An op's outputs go on its inputs' device: every op allocates with the
 * device of a tensor it was given (moe_empty_like, or moe_empty_on with
 * t->device). moe_empty and moe_full make host tensors. */
/* kind: 0 ordinary, 1 pinned host memory, 2 a device block an asynchronous copy writes */
static moe_tensor *empty_kind(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, int kind) {
  int64_t n = 0;
  if (check_shape("empty", ndim, shape, &n)) return NULL;
  size_t nb = (size_t)n * moe_dtype_size(dt);
  moe_storage *s = dev == MOE_CUDA ? device_storage_new_for(nb, kind == 2)
      : kind == 1                  ? pinned_storage_new(nb)
                                   : storage_new(nb);
  if (!s) return NULL;
  moe_tensor *t = tensor_alloc();
  if (!t) {
    storage_release(s);
    return NULL;
  }
  t->storage = s;
  t->ndim = ndim;
  if (ndim) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  set_contiguous_strides(t);
  t->dtype = dt;
  t->device = s->device;
  return t;
}

moe_tensor *moe_empty_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt) {
  return empty_kind(dev, ndim, shape, dt, 0);
}

moe_tensor *moe_empty(int ndim, const int64_t *shape, moe_dtype dt) { return moe_empty_on(MOE_CPU, ndim, shape, dt); }

moe_tensor *moe_empty_pinned(int ndim, const int64_t *shape, moe_dtype dt) {
  if (moe_cuda_device_count() == 0) {
    moe_error("pin_memory: pinned memory needs a CUDA device (%s)", moe_cuda_last_error());
    return NULL;
  }
  return empty_kind(MOE_CPU, ndim, shape, dt, 1);
}

int moe_is_pinned(const moe_tensor *t) { return t->storage->pinned; }

/* a contiguous copy of the host tensor t in pinned memory (t itself when it is one) */
moe_tensor *moe_pin_memory(const moe_tensor *t) {
  if (t->device != MOE_CPU) {
    moe_error("pin_memory: the tensor is on cuda: only host tensors are pinned");
    return NULL;
  }
  if (t->storage->pinned && moe_is_contiguous(t)) {
    moe_tensor_retain((moe_tensor *)t);
    return (moe_tensor *)t;
  }
  moe_tensor *out = moe_empty_pinned(t->ndim, t->shape, t->dtype);
  if (out && moe_copy_(out, t)) {
    moe_tensor_release(out);
    return NULL;
  }
  return out;
}

/* t (a contiguous pinned host tensor) on the device, through the copy stream:
 * returns at once; the device's later kernels wait for the copy. Not recorded
 * by autograd (batches: t must not require grad). */
moe_tensor *moe_to_device_async(const moe_tensor *t) {
  if (t->device != MOE_CPU || !t->storage->pinned || !moe_is_contiguous(t) || t->requires_grad) {
    moe_error("to_device_async: the tensor must be a contiguous pinned host tensor that does not require grad");
    return NULL;
  }
  moe_tensor *out = empty_kind(MOE_CUDA, t->ndim, t->shape, t->dtype, 2);
  size_t n = (size_t)moe_numel(t) * moe_dtype_size(t->dtype);
  if (out && n && moe_cuda_copy_to_device_async(moe_data(out), moe_data(t), n, t->storage)) {
    moe_error("cuda: %s", moe_cuda_last_error());
    moe_tensor_release(out);
    return NULL;
  }
  return out;
}

moe_tensor *moe_empty_like(const moe_tensor *t) { return moe_empty_on(t->device, t->ndim, t->shape, t->dtype); }

char *moe_data(const moe_tensor *t) { return (char *)t->storage->data + (size_t)t->offset * moe_dtype_size(t->dtype); }
int moe_same_storage(const moe_tensor *a, const moe_tensor *b) { return a->storage == b->storage; }

int moe_device_available(moe_device dev) { return dev == MOE_CPU || (dev == MOE_CUDA && moe_cuda_device_count() > 0); }

int moe_same_device(const char *op, int n, const moe_tensor *const *ts) {
  const moe_tensor *first = NULL;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    if (!first) first = ts[i];
    else if (ts[i]->device != first->device)
      return moe_error("%s: a tensor on %s and a tensor on %s; move one of them with :cuda() or :cpu()", op,
                       first->device == MOE_CUDA ? "cuda" : "cpu", ts[i]->device == MOE_CUDA ? "cuda" : "cpu");
  }
  return 0;
}

/* t's values on the device dev (a contiguous copy; t itself when already
 * there). A move is recorded by autograd (as PyTorch's .to(device)): its
 * gradient moves back to t's device. */
static moe_tensor *to_device_impl(const moe_tensor *t, moe_device dev) {
  size_t es = moe_dtype_size(t->dtype);
  int64_t n = moe_numel(t);
  /* a contiguous copy on t's own device first, then one transfer */
  moe_tensor *src = moe_contiguous(t), *out;
  out = src ? moe_empty_on(dev, t->ndim, t->shape, t->dtype) : NULL;
  if (out && n && moe_cuda_memcpy(moe_data(out), moe_data(src), (size_t)n * es, dev == MOE_CUDA ? 0 : 1)) {
    moe_error("%s: %s", dev == MOE_CUDA ? "cuda" : "cpu", moe_cuda_last_error());
    moe_tensor_release(out);
    out = NULL;
  }
  /* a marked index keeps its mark on the other device (the same values) */
  const moe_storage *ms = t->storage;
  if (out && t->dtype == MOE_I64 && ms->ix_marked && ms->ix_version == ms->version)
    moe_mark_index_range(out, ms->ix_lo, ms->ix_hi);
  moe_tensor_release(src);
  return out;
}

static int to_device_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  return (gin[0] = moe_to_device(g, (moe_device)n->iarg[0])) ? 0 : -1;
}

moe_tensor *moe_to_device(const moe_tensor *t, moe_device dev) {
  if (t->device == dev) {
    moe_tensor_retain((moe_tensor *)t);
    return (moe_tensor *)t;
  }
  if (dev == MOE_CUDA && moe_cuda_device_count() == 0) {
    moe_error("cuda: no CUDA device is available (%s)", moe_cuda_last_error());
    return NULL;
  }
  if (!moe_ag_wants(1, &t)) {
    moe_tensor *out;
    MOE_NOGRAD(out, to_device_impl(t, dev));
    return out;
  }
  moe_tensor *out;
  MOE_NOGRAD(out, to_device_impl(t, dev));
  if (!out) return NULL;
  moe_node *n = moe_node_new(dev == MOE_CUDA ? "cuda" : "cpu", to_device_backward, 1, &t);
  if (n) n->iarg[0] = t->device;
  return moe_ag_attach(out, n);
}

moe_tensor *moe_full(int ndim, const int64_t *shape, moe_dtype dt, double value) {
  return moe_full_on(MOE_CPU, ndim, shape, dt, value);
}

moe_tensor *moe_full_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, double value) {
  moe_tensor *t = moe_empty_on(dev, ndim, shape, dt);
  if (!t) return NULL;
  if (value == 0.0 && !signbit(value)) {
    if (t->device == MOE_CUDA) {
      if (moe_cuda_memset(t->storage->data, 0, t->storage->nbytes)) {
        moe_error("zeros: %s", moe_cuda_last_error());
        moe_tensor_release(t);
        return NULL;
      }
    } else memset(t->storage->data, 0, t->storage->nbytes);
  } else moe_fill_(t, value);
  return t;
}

void moe_tensor_retain(moe_tensor *t) { t->refcount++; }

void moe_tensor_release(moe_tensor *t) {
  if (t && --t->refcount == 0) {
    moe_node_release(t->grad_fn);
    moe_tensor_release(t->grad);
    storage_release(t->storage);
    tensor_free(t);
  }
}

int64_t moe_numel(const moe_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

int moe_is_contiguous(const moe_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] == 1) continue;
    if (t->shape[i] == 0) return 1;
    if (t->stride[i] != s) return 0;
    s *= t->shape[i];
  }
  return 1;
}

static int64_t elem_offset(const moe_tensor *t, const int64_t *idx) {
  int64_t off = t->offset;
  for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
  return off;
}

/* (a device tensor's element travels through one small copy each way) */
double moe_get(const moe_tensor *t, const int64_t *idx) {
  size_t es = moe_dtype_size(t->dtype);
  const char *p = (const char *)t->storage->data + elem_offset(t, idx) * (int64_t)es;
  char host[8];
  if (t->device == MOE_CUDA) {
    if (moe_cuda_memcpy(host, p, es, 1)) return NAN;
    p = host;
  }
  return moe_value_of(p, t->dtype);
}

double moe_value_of(const void *p, moe_dtype dt) {
  switch (dt) {
  case MOE_F32: return *(const float *)p;
  case MOE_F64: return *(const double *)p;
  case MOE_I32: return *(const int32_t *)p;
  case MOE_I64: return (double)*(const int64_t *)p;
  default: return *(const uint8_t *)p;
  }
}

void moe_set(moe_tensor *t, const int64_t *idx, double v) {
  t->storage->version++;
  size_t es = moe_dtype_size(t->dtype);
  char *dst = (char *)t->storage->data + elem_offset(t, idx) * (int64_t)es, host[8];
  char *p = t->device == MOE_CUDA ? host : dst;
  switch (t->dtype) {
  case MOE_F32: *(float *)p = (float)v; break;
  case MOE_F64: *(double *)p = v; break;
  case MOE_I32: *(int32_t *)p = moe_sat_i32(v); break;
  case MOE_I64: *(int64_t *)p = moe_sat_i64(v); break;
  default: *(uint8_t *)p = v != 0; break;
  }
  if (t->device == MOE_CUDA) moe_cuda_memcpy(dst, host, es, 0);
}

moe_tensor *moe_from_doubles(int ndim, const int64_t *shape, moe_dtype dt, const double *v) {
  moe_tensor *t = moe_empty(ndim, shape, dt); /* filled from host memory: on the host */
  if (!t) return NULL;
  moe_tensor src = {0};
  moe_storage st = {.data = (void *)v, .nbytes = 0, .refcount = 1};
  src.storage = &st;
  src.ndim = ndim;
  if (ndim) memcpy(src.shape, shape, sizeof(int64_t) * (size_t)ndim);
  set_contiguous_strides(&src);
  src.dtype = MOE_F64;
  moe_cpu_copy(t, &src);
  return t;
}

int moe_fill_(moe_tensor *t, double v) {
  if (moe_mark_write("fill", t)) return -1;
  MOE_K(fill, t->device, t, v);
  return 0;
}

/* ---------------------------------------------------------------- views */

/* a new tensor header sharing t's storage */
static moe_tensor *alias(const moe_tensor *t) {
  moe_tensor *v = tensor_alloc();
  if (!v) return NULL;
  int rc = v->refcount;
  *v = *t;
  v->refcount = rc;
  v->requires_grad = 0;
  v->grad_fn = NULL;
  v->grad = NULL;
  v->storage->refcount++;
  return v;
}

moe_tensor *moe_detach(const moe_tensor *t) { return alias(t); }

static int infer_shape(const char *op, const moe_tensor *t, int ndim, const int64_t *in, int64_t *out) {
  char b1[160], b2[160];
  int64_t numel = moe_numel(t), known = 1;
  int infer = -1;
  if (ndim > MOE_MAX_DIMS) return moe_error("%s: at most %d dims", op, MOE_MAX_DIMS);
  for (int i = 0; i < ndim; i++) {
    out[i] = in[i];
    if (in[i] == -1) {
      if (infer >= 0) return moe_error("%s: only one size may be -1, got %s", op, moe_dims_str(ndim, in, b1));
      infer = i;
    } else if (in[i] < 0) {
      return moe_error("%s: negative size %lld in %s", op, (long long)in[i], moe_dims_str(ndim, in, b1));
    } else {
      known *= in[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel % known)
      return moe_error("%s: cannot infer size -1 in %s for tensor of shape %s (%lld elements)", op,
                       moe_dims_str(ndim, in, b1), moe_shape_str(t, b2), (long long)numel);
    out[infer] = numel / known;
    known *= out[infer];
  }
  if (known != numel)
    return moe_error("%s: shape %s is invalid for tensor of shape %s (%lld elements)", op, moe_dims_str(ndim, in, b1),
                     moe_shape_str(t, b2), (long long)numel);
  return 0;
}

/* Strides for viewing t with a new shape without copying, if possible (the
 * classic algorithm: walk chunks of dims that are contiguous among themselves). */
static int view_strides(const moe_tensor *t, int ndim, const int64_t *shape, int64_t *stride) {
  int64_t numel = moe_numel(t);
  if (numel == 0 || t->ndim == 0) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
      stride[i] = s;
      s *= shape[i] ? shape[i] : 1;
    }
    return 0;
  }
  int view_d = ndim - 1;
  int64_t chunk_base = t->stride[t->ndim - 1], tensor_numel = 1, view_numel = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    tensor_numel *= t->shape[d];
    if (d == 0 || (t->shape[d - 1] != 1 && t->stride[d - 1] != tensor_numel * chunk_base)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        stride[view_d] = view_numel * chunk_base;
        view_numel *= shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return -1;
      if (d > 0) {
        chunk_base = t->stride[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1 ? 0 : -1;
}

static moe_tensor *view_impl(const moe_tensor *t, int ndim, const int64_t *in) {
  int64_t shape[MOE_MAX_DIMS], stride[MOE_MAX_DIMS];
  char b1[160], b2[160];
  if (infer_shape("view", t, ndim, in, shape)) return NULL;
  if (view_strides(t, ndim, shape, stride)) {
    moe_error("view: tensor of shape %s with strides %s cannot be viewed as %s without a copy "
              "(use reshape or contiguous)",
              moe_shape_str(t, b1), moe_dims_str(t->ndim, t->stride, b2), moe_dims_str(ndim, shape, b1 + 80));
    return NULL;
  }
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  v->ndim = ndim;
  memcpy(v->shape, shape, sizeof(int64_t) * (size_t)ndim);
  memcpy(v->stride, stride, sizeof(int64_t) * (size_t)ndim);
  return v;
}

static moe_tensor *reshape_impl(const moe_tensor *t, int ndim, const int64_t *in) {
  int64_t shape[MOE_MAX_DIMS], stride[MOE_MAX_DIMS];
  if (infer_shape("reshape", t, ndim, in, shape)) return NULL;
  if (view_strides(t, ndim, shape, stride) == 0) return moe_view(t, ndim, shape);
  moe_tensor *c = moe_clone(t);
  if (!c) return NULL;
  moe_tensor *v = moe_view(c, ndim, shape);
  moe_tensor_release(c);
  return v;
}

static int check_dim(const char *op, const moe_tensor *t, int dim, int extra) {
  char b[160];
  if (dim < 0 || dim >= t->ndim + extra)
    return moe_error("%s: dim %d out of range for tensor of shape %s", op, dim + 1, moe_shape_str(t, b));
  return 0;
}

static moe_tensor *transpose_impl(const moe_tensor *t, int d0, int d1) {
  if (check_dim("transpose", t, d0, 0) || check_dim("transpose", t, d1, 0)) return NULL;
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  int64_t s = v->shape[d0];
  v->shape[d0] = v->shape[d1];
  v->shape[d1] = s;
  s = v->stride[d0];
  v->stride[d0] = v->stride[d1];
  v->stride[d1] = s;
  return v;
}

static moe_tensor *permute_impl(const moe_tensor *t, const int *perm) {
  int seen[MOE_MAX_DIMS] = {0};
  char b[160];
  for (int i = 0; i < t->ndim; i++) {
    if (perm[i] < 0 || perm[i] >= t->ndim || seen[perm[i]]++) {
      moe_error("permute: dims are not a permutation of 1..%d for tensor of shape %s", t->ndim, moe_shape_str(t, b));
      return NULL;
    }
  }
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  for (int i = 0; i < t->ndim; i++) {
    v->shape[i] = t->shape[perm[i]];
    v->stride[i] = t->stride[perm[i]];
  }
  return v;
}

static moe_tensor *narrow_impl(const moe_tensor *t, int dim, int64_t start, int64_t len) {
  char b[160];
  if (check_dim("narrow", t, dim, 0)) return NULL;
  if (start < 0 || len < 0 || start + len > t->shape[dim]) {
    moe_error("narrow: range [%lld, %lld] out of bounds for dim %d of size %lld (shape %s)", (long long)start + 1,
              (long long)(start + len), dim + 1, (long long)t->shape[dim], moe_shape_str(t, b));
    return NULL;
  }
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  v->offset += start * t->stride[dim];
  v->shape[dim] = len;
  return v;
}

static moe_tensor *select_impl(const moe_tensor *t, int dim, int64_t index) {
  char b[160];
  if (check_dim("select", t, dim, 0)) return NULL;
  if (index < 0 || index >= t->shape[dim]) {
    moe_error("select: index %lld out of range for dim %d of size %lld (shape %s)", (long long)index + 1, dim + 1,
              (long long)t->shape[dim], moe_shape_str(t, b));
    return NULL;
  }
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  v->offset += index * t->stride[dim];
  for (int i = dim; i < t->ndim - 1; i++) {
    v->shape[i] = t->shape[i + 1];
    v->stride[i] = t->stride[i + 1];
  }
  v->ndim--;
  return v;
}

static moe_tensor *expand_impl(const moe_tensor *t, int ndim, const int64_t *shape) {
  char b1[160], b2[160];
  if (ndim < t->ndim || ndim > MOE_MAX_DIMS) {
    moe_error("expand: cannot expand tensor of shape %s to %d dims", moe_shape_str(t, b1), ndim);
    return NULL;
  }
  int64_t numel, full[MOE_MAX_DIMS]; /* the target shape with -1 resolved, for the size check */
  for (int i = 0; i < ndim; i++) {
    int j = i - (ndim - t->ndim);
    full[i] = shape[i] == -1 && j >= 0 ? t->shape[j] : shape[i] < 0 ? 0 : shape[i];
  }
  if (check_shape("expand", ndim, full, &numel)) return NULL;
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  int lead = ndim - t->ndim;
  for (int i = ndim - 1; i >= 0; i--) {
    int j = i - lead;
    int64_t want = shape[i];
    if (j >= 0) {
      if (want == -1) want = t->shape[j];
      if (t->shape[j] == want) {
        v->shape[i] = want;
        v->stride[i] = t->stride[j];
        continue;
      }
      if (t->shape[j] == 1 && want >= 0) {
        v->shape[i] = want;
        v->stride[i] = 0;
        continue;
      }
    } else if (want >= 0) {
      v->shape[i] = want;
      v->stride[i] = 0;
      continue;
    }
    moe_error("expand: cannot expand tensor of shape %s to %s", moe_shape_str(t, b1), moe_dims_str(ndim, shape, b2));
    moe_tensor_release(v);
    return NULL;
  }
  v->ndim = ndim;
  return v;
}

static moe_tensor *squeeze_impl(const moe_tensor *t, int dim) {
  if (dim >= 0 && check_dim("squeeze", t, dim, 0)) return NULL;
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  int n = 0;
  for (int i = 0; i < t->ndim; i++) {
    int drop = t->shape[i] == 1 && (dim < 0 || dim == i);
    if (!drop) {
      v->shape[n] = t->shape[i];
      v->stride[n] = t->stride[i];
      n++;
    }
  }
  v->ndim = n;
  return v;
}

static moe_tensor *unsqueeze_impl(const moe_tensor *t, int dim) {
  char b[160];
  if (check_dim("unsqueeze", t, dim, 1)) return NULL;
  if (t->ndim >= MOE_MAX_DIMS) {
    moe_error("unsqueeze: tensor of shape %s already has %d dims", moe_shape_str(t, b), MOE_MAX_DIMS);
    return NULL;
  }
  moe_tensor *v = alias(t);
  if (!v) return NULL;
  for (int i = t->ndim; i > dim; i--) {
    v->shape[i] = t->shape[i - 1];
    v->stride[i] = t->stride[i - 1];
  }
  v->shape[dim] = 1;
  v->stride[dim] = dim < t->ndim ? t->shape[dim] * t->stride[dim] : 1;
  v->ndim++;
  return v;
}

static moe_tensor *clone_impl(const moe_tensor *t) {
  moe_tensor *c = moe_empty_like(t);
  if (c) MOE_K(copy, c->device, c, t);
  return c;
}

static moe_tensor *to_dtype_impl(const moe_tensor *t, moe_dtype dt) {
  if (t->dtype == dt) {
    moe_tensor_retain((moe_tensor *)t);
    return (moe_tensor *)t;
  }
  moe_tensor *c = moe_empty_on(t->device, t->ndim, t->shape, dt);
  if (c) MOE_K(copy, c->device, c, t);
  return c;
}

/* Right-aligned NumPy broadcasting of src's shape onto dst's shape. */
int moe_broadcast_to(const moe_tensor *src, int ndim, const int64_t *shape, moe_tensor *out) {
  if (src->ndim > ndim) return -1;
  *out = *src;
  int lead = ndim - src->ndim;
  for (int i = 0; i < ndim; i++) {
    int j = i - lead;
    out->shape[i] = shape[i];
    if (j < 0) out->stride[i] = 0;
    else if (src->shape[j] == shape[i]) out->stride[i] = src->stride[j];
    else if (src->shape[j] == 1) out->stride[i] = 0;
    else return -1;
  }
  out->ndim = ndim;
  return 0;
}

int moe_mark_write(const char *op, const moe_tensor *t) {
  char b1[160];
  if (t->requires_grad && moe_grad_enabled())
    return moe_error("%s_: in-place operation on a tensor that requires grad (shape %s); "
                     "run it inside moe.no_grad(...) or write into a clone()",
                     op, moe_shape_str(t, b1));
  t->storage->version++;
  return 0;
}

int moe_check_writable(const char *op, const moe_tensor *t) {
  char b1[160], b2[160];
  if (moe_mark_write(op, t)) return -1;
  for (int i = 0; i < t->ndim; i++)
    if (t->stride[i] == 0 && t->shape[i] > 1)
      return moe_error("%s_: cannot write in place into an expanded tensor (shape %s, strides %s): "
                       "several elements share one memory location; clone() it first",
                       op, moe_shape_str(t, b1), moe_dims_str(t->ndim, t->stride, b2));
  return 0;
}

int moe_copy_(moe_tensor *dst, const moe_tensor *src) {
  moe_tensor b;
  char b1[160], b2[160];
  if (moe_check_writable("copy", dst)) return -1;
  if (src->requires_grad && moe_grad_enabled())
    return moe_error("copy_: the source requires grad, and in-place copies are not recorded; "
                     "use clone() or detach() the source");
  if (moe_broadcast_to(src, dst->ndim, dst->shape, &b))
    return moe_error("copy_: source of shape %s does not broadcast to destination shape %s", moe_shape_str(src, b1),
                     moe_shape_str(dst, b2));
  /* overlapping storage, or another device: through a temporary on dst's device */
  if (src->storage == dst->storage || src->device != dst->device) {
    moe_tensor *tmp = src->device != dst->device ? moe_to_device(&b, dst->device) : moe_clone(&b);
    if (!tmp) return -1;
    moe_tensor bt;
    moe_broadcast_to(tmp, dst->ndim, dst->shape, &bt);
    MOE_K(copy, dst->device, dst, &bt);
    moe_tensor_release(tmp);
    return 0;
  }
  MOE_K(copy, dst->device, dst, &b);
  return 0;
}

/* ---------------------------------------------------------------- autograd of views and copies
 * Each public op runs its _impl with grad mode off (so ops it calls inside do not
 * record) and then records one node. */

#define RECORD1(NAME, BW, CALL, SETUP)           \
  do {                                           \
    if (!moe_ag_wants(1, &t)) return CALL;       \
    moe_tensor *out_;                            \
    MOE_NOGRAD(out_, CALL);                      \
    if (!out_) return NULL;                      \
    moe_node *n = moe_node_new(NAME, BW, 1, &t); \
    if (n) { SETUP; }                            \
    return moe_ag_attach(out_, n);               \
  } while (0)

/* view, reshape, squeeze, unsqueeze: g [out shape] -> [in shape] */
static int reshape_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  return (gin[0] = moe_reshape(g, n->edges[0].ndim, n->edges[0].shape)) ? 0 : -1;
}
/* clone, contiguous, to_dtype, expand: the engine casts and sums broadcast dims */
static int identity_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  moe_tensor_retain((moe_tensor *)g);
  gin[0] = (moe_tensor *)g;
  return 0;
}
/* transpose(d0, d1): g [.., d1, .., d0, ..] -> transposed back */
static int transpose_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  return (gin[0] = moe_transpose(g, (int)n->iarg[0], (int)n->iarg[1])) ? 0 : -1;
}
/* permute(perm): out dim i is in dim perm[i]; back with the inverse permutation */
static int permute_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  int inv[MOE_MAX_DIMS];
  for (int i = 0; i < g->ndim; i++) inv[n->iarg[i]] = i;
  return (gin[0] = moe_permute(g, inv)) ? 0 : -1;
}
/* narrow(dim, start, len) and select(dim, index): g scattered into zeros [in shape] */
static int slice_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  const moe_edge *e = &n->edges[0];
  moe_tensor *z = moe_full_on(g->device, e->ndim, e->shape, g->dtype, 0.0);
  if (!z) return -1;
  int dim = (int)n->iarg[0];
  moe_tensor *part = n->iarg[2] < 0 ? moe_select(z, dim, n->iarg[1]) : moe_narrow(z, dim, n->iarg[1], n->iarg[2]);
  int rc = part ? moe_copy_(part, g) : -1;
  moe_tensor_release(part);
  if (rc) {
    moe_tensor_release(z);
    return -1;
  }
  gin[0] = z;
  return 0;
}

moe_tensor *moe_view(const moe_tensor *t, int ndim, const int64_t *in) {
  RECORD1("view", reshape_backward, view_impl(t, ndim, in), );
}
moe_tensor *moe_reshape(const moe_tensor *t, int ndim, const int64_t *in) {
  RECORD1("reshape", reshape_backward, reshape_impl(t, ndim, in), );
}
moe_tensor *moe_squeeze(const moe_tensor *t, int dim) { RECORD1("squeeze", reshape_backward, squeeze_impl(t, dim), ); }
moe_tensor *moe_unsqueeze(const moe_tensor *t, int dim) {
  RECORD1("unsqueeze", reshape_backward, unsqueeze_impl(t, dim), );
}
moe_tensor *moe_transpose(const moe_tensor *t, int d0, int d1) {
  RECORD1("transpose", transpose_backward, transpose_impl(t, d0, d1), n->iarg[0] = d0; n->iarg[1] = d1);
}
moe_tensor *moe_permute(const moe_tensor *t, const int *perm) {
  RECORD1("permute", permute_backward, permute_impl(t, perm), for (int i = 0; i < t->ndim; i++) n->iarg[i] = perm[i]);
}
moe_tensor *moe_narrow(const moe_tensor *t, int dim, int64_t start, int64_t len) {
  RECORD1("narrow", slice_backward, narrow_impl(t, dim, start, len), n->iarg[0] = dim; n->iarg[1] = start;
          n->iarg[2] = len);
}
moe_tensor *moe_select(const moe_tensor *t, int dim, int64_t index) {
  RECORD1("select", slice_backward, select_impl(t, dim, index), n->iarg[0] = dim; n->iarg[1] = index; n->iarg[2] = -1);
}
moe_tensor *moe_expand(const moe_tensor *t, int ndim, const int64_t *shape) {
  RECORD1("expand", identity_backward, expand_impl(t, ndim, shape), );
}
moe_tensor *moe_clone(const moe_tensor *t) { RECORD1("clone", identity_backward, clone_impl(t), ); }
moe_tensor *moe_contiguous(const moe_tensor *t) {
  if (moe_is_contiguous(t)) {
    moe_tensor_retain((moe_tensor *)t);
    return (moe_tensor *)t;
  }
  return moe_clone(t);
}
moe_tensor *moe_to_dtype(const moe_tensor *t, moe_dtype dt) {
  if (t->dtype == dt) {
    moe_tensor_retain((moe_tensor *)t);
    return (moe_tensor *)t;
  }
  RECORD1("to", identity_backward, to_dtype_impl(t, dt), );
}
