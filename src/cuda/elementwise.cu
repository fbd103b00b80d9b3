// elementwise.cu -- casts, fill, unary, binary, where and unary backward on
// CUDA tensors: one thread per element over a strided iterator (common.cuh),
// with a flat path when every operand is contiguous. Semantics follow
// src/cpu/elementwise.c: NaN propagates through maximum/minimum/clamp/relu,
// float -> integer casts saturate, bool is 0/1.
#include "common.cuh"
#include "../core/tensor_impl.h"

#include <math.h>

namespace {

template <class TO, class FROM> __device__ __forceinline__ TO conv(FROM x) {
  if constexpr (std::is_same<TO, uint8_t>::value) return (uint8_t)(x != 0);
  else if constexpr (std::is_integral<TO>::value && std::is_floating_point<FROM>::value) {
    double d = (double)x;
    if (d != d) return 0;
    if (sizeof(TO) == 4) return d <= -2147483648.0 ? INT32_MIN : d >= 2147483647.0 ? INT32_MAX : (TO)d;
    return d <= -9223372036854775808.0 ? INT64_MIN : d >= 9223372036854775807.0 ? INT64_MAX : (TO)d;
  } else return (TO)x;
}

template <class TO, class FROM> __global__ void k_copy(moe_iter it, TO *o, const FROM *a) {
  MOE_GRID_STRIDE(i, it.n) {
    if (it.contiguous) {
      o[i] = conv<TO>(a[i]);
      continue;
    }
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    o[off[0]] = conv<TO>(a[off[1]]);
  }
}

template <class T> __global__ void k_fill(moe_iter it, T *o, T v) {
  MOE_GRID_STRIDE(i, it.n) {
    if (it.contiguous) {
      o[i] = v;
      continue;
    }
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    o[off[0]] = v;
  }
}

template <class T> __device__ __forceinline__ T maxv(T x, T y) { return x != x ? x : y != y ? y : x > y ? x : y; }
template <class T> __device__ __forceinline__ T minv(T x, T y) { return x != x ? x : y != y ? y : x < y ? x : y; }

template <class T> __device__ __forceinline__ T bin(int op, T x, T y) {
  switch (op) {
  case MOE_ADD: return x + y;
  case MOE_SUB: return x - y;
  case MOE_MUL: return x * y;
  case MOE_MAXIMUM: return maxv(x, y);
  case MOE_MINIMUM: return minv(x, y);
  default:
    if constexpr (std::is_floating_point<T>::value) {
      if (op == MOE_DIV) return x / y;
      if (op == MOE_POW)
        return std::is_same<T, float>::value ? (T)powf((float)x, (float)y) : (T)pow((double)x, (double)y);
    }
    return 0;
  }
}
template <class T> __device__ __forceinline__ uint8_t compare(int op, T x, T y) {
  switch (op) {
  case MOE_EQ: return x == y;
  case MOE_NE: return x != y;
  case MOE_LT: return x < y;
  case MOE_LE: return x <= y;
  case MOE_GT: return x > y;
  default: return x >= y;
  }
}

// an operand that is a host scalar (a Lua number: src/core/ops_elementwise.c's make_scalar)
// comes by value: sc bit 1 for a, bit 2 for b
template <class T> __global__ void k_binary(moe_iter it, int op, T *o, const T *a, const T *b, int sc, T av, T bv) {
  MOE_GRID_STRIDE(i, it.n) {
    if (it.contiguous && !sc) {
      o[i] = bin(op, a[i], b[i]);
      continue;
    }
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    o[off[0]] = bin(op, sc & 1 ? av : a[off[1]], sc & 2 ? bv : b[off[2]]);
  }
}
template <class T>
__global__ void k_compare(moe_iter it, int op, uint8_t *o, const T *a, const T *b, int sc, T av, T bv) {
  MOE_GRID_STRIDE(i, it.n) {
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    o[off[0]] = compare(op, sc & 1 ? av : a[off[1]], sc & 2 ? bv : b[off[2]]);
  }
}

template <class T> __device__ __forceinline__ T sigmoid(T x) {
  if (x >= 0) return (T)1 / ((T)1 + exp(-x));
  T e = exp(x);
  return e / ((T)1 + e);
}

template <class T> __device__ __forceinline__ T un(int op, T x, double p0, double p1) {
  switch (op) {
  case MOE_NEG: return -x;
  case MOE_ABS: return x < 0 ? -x : x;
  case MOE_RELU: return x > 0 ? x : (x != x ? x : 0);
  case MOE_SIGN: return (T)((x > 0) - (x < 0));
  case MOE_SQUARE: return x * x;
  case MOE_CLAMP: {
    T lo = (T)p0, hi = (T)p1;
    return x != x ? x : x < lo ? lo : x > hi ? hi : x;
  }
  default: break;
  }
  if constexpr (std::is_floating_point<T>::value) {
    const T half = (T)0.5, rt2 = (T)1.41421356237309504880;
    switch (op) {
    case MOE_EXP: return exp(x);
    case MOE_LOG: return log(x);
    case MOE_SQRT: return sqrt(x);
    case MOE_TANH: return tanh(x);
    case MOE_SIGMOID: return sigmoid(x);
    case MOE_GELU: return half * x * ((T)1 + erf(x / rt2));
    case MOE_SOFTPLUS: return (x > 0 ? x : (T)0) + log1p(exp(-fabs(x)));
    case MOE_LOG1P: return log1p(x);
    case MOE_EXPM1: return expm1(x);
    case MOE_FLOOR: return floor(x);
    case MOE_CEIL: return ceil(x);
    case MOE_ROUND: return rint(x);
    case MOE_RSQRT: return (T)1 / sqrt(x);
    default: break;
    }
  }
  return 0;
}

template <class T> __global__ void k_unary(moe_iter it, int op, T *o, const T *a, double p0, double p1) {
  MOE_GRID_STRIDE(i, it.n) {
    if (it.contiguous) {
      o[i] = un(op, a[i], p0, p1);
      continue;
    }
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    o[off[0]] = un(op, a[off[1]], p0, p1);
  }
}

// gx = g * d op(x)/dx, with x and/or y = op(x)
template <class T> __device__ __forceinline__ T unb(int op, T g, T x, T y, double p0, double p1) {
  const T half = (T)0.5, rt2 = (T)1.41421356237309504880, rt2pi = (T)2.50662827463100050242;
  switch (op) {
  case MOE_NEG: return -g;
  case MOE_ABS: return g * (T)((x > 0) - (x < 0));
  case MOE_RELU: return x > 0 ? g : (T)0;
  case MOE_SQUARE: return 2 * x * g;
  case MOE_CLAMP: return x >= (T)p0 && x <= (T)p1 ? g : (T)0;
  case MOE_EXP: return g * y;
  case MOE_LOG: return g / x;
  case MOE_SQRT: return g * half / y;
  case MOE_TANH: return g * ((T)1 - y * y);
  case MOE_SIGMOID: return g * y * ((T)1 - y);
  case MOE_GELU: return g * (half * ((T)1 + erf(x / rt2)) + x * exp(-half * x * x) / rt2pi);
  case MOE_SOFTPLUS: return g * sigmoid(x);
  case MOE_LOG1P: return g / ((T)1 + x);
  case MOE_EXPM1: return g * (y + (T)1);
  case MOE_RSQRT: return -half * g * y * y * y;
  default: return 0; // sign, floor, ceil, round
  }
}

template <class T>
__global__ void k_unary_backward(moe_iter it, int op, T *gx, const T *g, const T *x, const T *y, double p0, double p1) {
  MOE_GRID_STRIDE(i, it.n) {
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    gx[off[0]] = unb(op, g[off[1]], x[off[2]], y[off[3]], p0, p1);
  }
}

template <class T> __global__ void k_where(moe_iter it, T *o, const uint8_t *c, const T *a, const T *b) {
  MOE_GRID_STRIDE(i, it.n) {
    int64_t off[4];
    moe_iter_offsets(it, i, off);
    o[off[0]] = c[off[1]] ? a[off[2]] : b[off[3]];
  }
}

template <class T> T *dptr(const moe_tensor *t) { return (T *)moe_data(t); }
// an operand that may be a host scalar (passed by value beside it): NULL then, never a host pointer
template <class T> const T *dptr_or_null(const moe_tensor *t) {
  return t->storage->device == MOE_CUDA ? (const T *)moe_data(t) : NULL;
}

} // namespace

static const int THREADS = 256;

extern "C" void moe_cuda_copy(moe_tensor *dst, const moe_tensor *src) {
  const moe_tensor *ops[2] = {dst, src};
  moe_iter it = moe_iter_make(2, ops);
  if (!it.n) return;
  unsigned g = moe_blocks(it.n, THREADS);
  cudaStream_t s = moe_cuda_stream();
#define INNER(FROM)                                                       \
  {                                                                       \
    auto kf = k_copy<TO, FROM>;                                           \
    MOE_LAUNCH(kf, g, THREADS, 0, s, it, dptr<TO>(dst), dptr<FROM>(src)); \
  }
#define OUTER(T)                         \
  {                                      \
    typedef T TO;                        \
    MOE_DTYPE_SWITCH2(src->dtype, INNER) \
  }
  MOE_DTYPE_SWITCH(dst->dtype, OUTER)
#undef INNER
#undef OUTER
  moe_cuda_launched("copy");
}

extern "C" void moe_cuda_fill(moe_tensor *t, double v) {
  const moe_tensor *ops[1] = {t};
  moe_iter it = moe_iter_make(1, ops);
  if (!it.n) return;
  unsigned g = moe_blocks(it.n, THREADS);
  cudaStream_t s = moe_cuda_stream();
  switch (t->dtype) {
  case MOE_F32: MOE_LAUNCH(k_fill<float>, g, THREADS, 0, s, it, dptr<float>(t), (float)v); break;
  case MOE_F64: MOE_LAUNCH(k_fill<double>, g, THREADS, 0, s, it, dptr<double>(t), v); break;
  case MOE_I32: MOE_LAUNCH(k_fill<int32_t>, g, THREADS, 0, s, it, dptr<int32_t>(t), moe_sat_i32(v)); break;
  case MOE_I64: MOE_LAUNCH(k_fill<int64_t>, g, THREADS, 0, s, it, dptr<int64_t>(t), moe_sat_i64(v)); break;
  default: MOE_LAUNCH(k_fill<uint8_t>, g, THREADS, 0, s, it, dptr<uint8_t>(t), (uint8_t)(v != 0)); break;
  }
  moe_cuda_launched("fill_");
}

extern "C" void moe_cuda_binary(moe_binop op, moe_tensor *out, const moe_tensor *a, const moe_tensor *b) {
  const moe_tensor *ops[3] = {out, a, b};
  moe_iter it = moe_iter_make(3, ops);
  if (!it.n) return;
  unsigned g = moe_blocks(it.n, THREADS);
  cudaStream_t s = moe_cuda_stream();
  int sc = (a->storage->device != MOE_CUDA) | (b->storage->device != MOE_CUDA) << 1;
#define SCAL(T, t) (t->storage->device != MOE_CUDA ? *(const T *)moe_data(t) : (T)0)
  if (op >= MOE_EQ) {
#define CMP(T)                                                                                                        \
  MOE_LAUNCH(k_compare<T>, g, THREADS, 0, s, it, (int)op, dptr<uint8_t>(out), dptr_or_null<T>(a), dptr_or_null<T>(b), \
             sc, SCAL(T, a), SCAL(T, b))
    MOE_DTYPE_SWITCH(a->dtype, CMP)
#undef CMP
  } else {
#define BIN(T)                                                                                                     \
  MOE_LAUNCH(k_binary<T>, g, THREADS, 0, s, it, (int)op, dptr<T>(out), dptr_or_null<T>(a), dptr_or_null<T>(b), sc, \
             SCAL(T, a), SCAL(T, b))
    MOE_DTYPE_SWITCH(a->dtype, BIN)
#undef BIN
  }
  moe_cuda_launched(moe_binop_name(op));
}

extern "C" void moe_cuda_unary(moe_unop op, moe_tensor *out, const moe_tensor *a, double p0, double p1) {
  const moe_tensor *ops[2] = {out, a};
  moe_iter it = moe_iter_make(2, ops);
  if (!it.n) return;
  unsigned g = moe_blocks(it.n, THREADS);
  cudaStream_t s = moe_cuda_stream();
#define UN(T) MOE_LAUNCH(k_unary<T>, g, THREADS, 0, s, it, (int)op, dptr<T>(out), dptr<T>(a), p0, p1)
  MOE_DTYPE_SWITCH(a->dtype, UN)
#undef UN
  moe_cuda_launched(moe_unop_name(op));
}

extern "C" void moe_cuda_unary_backward(moe_unop op, moe_tensor *gx, const moe_tensor *g, const moe_tensor *x,
                                        const moe_tensor *y, double p0, double p1) {
  const moe_tensor *ops[4] = {gx, g, x, y};
  moe_iter it = moe_iter_make(4, ops);
  if (!it.n) return;
  unsigned nb = moe_blocks(it.n, THREADS);
  cudaStream_t s = moe_cuda_stream();
  if (gx->dtype == MOE_F64)
    MOE_LAUNCH(k_unary_backward<double>, nb, THREADS, 0, s, it, (int)op, dptr<double>(gx), dptr<double>(g),
               dptr<double>(x), dptr<double>(y), p0, p1);
  else
    MOE_LAUNCH(k_unary_backward<float>, nb, THREADS, 0, s, it, (int)op, dptr<float>(gx), dptr<float>(g), dptr<float>(x),
               dptr<float>(y), p0, p1);
  moe_cuda_launched(moe_unop_name(op));
}

extern "C" void moe_cuda_where(moe_tensor *out, const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b) {
  const moe_tensor *ops[4] = {out, cond, a, b};
  moe_iter it = moe_iter_make(4, ops);
  if (!it.n) return;
  unsigned g = moe_blocks(it.n, THREADS);
  cudaStream_t s = moe_cuda_stream();
#define WH(T) MOE_LAUNCH(k_where<T>, g, THREADS, 0, s, it, dptr<T>(out), dptr<uint8_t>(cond), dptr<T>(a), dptr<T>(b))
  MOE_DTYPE_SWITCH(out->dtype, WH)
#undef WH
  moe_cuda_launched("where");
}
