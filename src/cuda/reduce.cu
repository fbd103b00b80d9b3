// reduce.cu -- reductions and scans over the rows of a contiguous [M,K] matrix
// (src/core/ops_reduce.c has moved the reduced dims last), as src/cpu/reduce.c:
// float sums accumulate in double, max/min let the first NaN win and break
// ties by the first index, var/std take two passes. A block reduces a row; a
// few long rows (a full reduction) are split over many blocks, whose partials
// a second pass combines in a fixed order (reduce_chunked).
#include "common.cuh"

#include <math.h>

namespace {

const int RT = 256; // threads per row block

// block-wide sum of v (every thread gets it); sh holds RT doubles
__device__ double block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = RT / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

// block-wide max of v with NaN winning (every thread gets it); sh holds RT doubles
__device__ double block_max(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = RT / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) {
      double a = sh[threadIdx.x], b = sh[threadIdx.x + w];
      sh[threadIdx.x] = (a != a || b != b) ? NAN : (a > b ? a : b);
    }
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

// (value, index) pairs: does b beat a? (the first NaN, else the larger/smaller, else the first index)
template <class T> __device__ __forceinline__ bool beats(T b, int64_t bi, T a, int64_t ai, bool max) {
  if (bi < 0) return false;
  if (ai < 0) return true;
  bool an = a != a, bn = b != b;
  if (an || bn) return bn && (!an || bi < ai);
  if (b == a) return bi < ai;
  return max ? b > a : b < a;
}

template <class T>
__global__ void k_minmax_rows(const T *x, int64_t K, bool max, int arg, T *out, int64_t *argout, int64_t *idx,
                              int64_t ibase) {
  __shared__ T sv[RT];
  __shared__ int64_t si[RT];
  const T *r = x + (int64_t)blockIdx.x * K;
  T best = 0;
  int64_t bi = -1;
  for (int64_t k = threadIdx.x; k < K; k += RT)
    if (beats(r[k], k, best, bi, max)) {
      best = r[k];
      bi = k;
    }
  sv[threadIdx.x] = best;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int w = RT / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w &&
        beats(sv[threadIdx.x + w], si[threadIdx.x + w], sv[threadIdx.x], si[threadIdx.x], max)) {
      sv[threadIdx.x] = sv[threadIdx.x + w];
      si[threadIdx.x] = si[threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (arg) argout[blockIdx.x] = si[0] + ibase;
    else out[blockIdx.x] = sv[0];
    if (idx) idx[blockIdx.x] = si[0] + ibase;
  }
}

// sum, mean, prod (integers in int64, floats in double), var, std, logsumexp
// int64 sums and products wrap (two's complement), as on the CPU (-fwrapv):
// through uint64, where overflow is defined
__device__ __forceinline__ int64_t wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
__device__ __forceinline__ int64_t wmul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }
__device__ __forceinline__ double wadd(double a, double b) { return a + b; }
__device__ __forceinline__ double wmul(double a, double b) { return a * b; }

template <class T> __global__ void k_moment_rows(const T *x, int64_t K, int op, int correction, T *out) {
  __shared__ double sh[RT];
  const T *r = x + (int64_t)blockIdx.x * K;
  if constexpr (std::is_integral<T>::value) {
    __shared__ int64_t si[RT];
    int64_t acc = op == MOE_RPROD ? 1 : 0;
    for (int64_t k = threadIdx.x; k < K; k += RT)
      acc = op == MOE_RPROD ? wmul(acc, (int64_t)r[k]) : wadd(acc, (int64_t)r[k]);
    si[threadIdx.x] = acc;
    __syncthreads();
    for (int w = RT / 2; w > 0; w >>= 1) {
      if ((int)threadIdx.x < w)
        si[threadIdx.x] =
            op == MOE_RPROD ? wmul(si[threadIdx.x], si[threadIdx.x + w]) : wadd(si[threadIdx.x], si[threadIdx.x + w]);
      __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = (T)(op == MOE_RMEAN ? si[0] / K : si[0]);
    (void)sh;
    (void)correction;
  } else {
    if (op == MOE_RPROD) { // products in a tree: one row per thread 0 keeps the CPU's order
      if (threadIdx.x == 0) {
        double acc = 1;
        for (int64_t k = 0; k < K; k++) acc *= r[k];
        out[blockIdx.x] = (T)acc;
      }
      return;
    }
    if (op == MOE_RLOGSUMEXP) {
      double mx = -INFINITY;
      for (int64_t k = threadIdx.x; k < K; k += RT)
        if (r[k] > mx || r[k] != r[k]) mx = (double)r[k];
      mx = block_max(mx, sh);
      if (isinf(mx) || mx != mx) {
        if (threadIdx.x == 0) out[blockIdx.x] = (T)mx;
        return;
      }
      double s = 0;
      for (int64_t k = threadIdx.x; k < K; k += RT) s += exp((double)r[k] - mx);
      s = block_sum(s, sh);
      if (threadIdx.x == 0) out[blockIdx.x] = (T)(mx + log(s));
      return;
    }
    double s = 0;
    for (int64_t k = threadIdx.x; k < K; k += RT) s += (double)r[k];
    s = block_sum(s, sh);
    if (op == MOE_RSUM || op == MOE_RMEAN) {
      if (threadIdx.x == 0) out[blockIdx.x] = (T)(op == MOE_RMEAN ? s / (double)K : s);
      return;
    }
    double mean = s / (double)K, ss = 0;
    for (int64_t k = threadIdx.x; k < K; k += RT) {
      double d = (double)r[k] - mean;
      ss += d * d;
    }
    ss = block_sum(ss, sh);
    if (threadIdx.x == 0) {
      int64_t dof = K - correction;
      double v = dof > 0 ? ss / (double)dof : NAN;
      out[blockIdx.x] = (T)(op == MOE_RSTD ? sqrt(v) : v);
    }
  }
}

__global__ void k_allany_rows(const uint8_t *x, int64_t K, int all, uint8_t *out) {
  __shared__ double sh[RT];
  double hits = 0; // elements that decide the row (a zero for all, a non-zero for any)
  for (int64_t k = threadIdx.x; k < K; k += RT) hits += (x[(int64_t)blockIdx.x * K + k] != 0) != all;
  hits = block_sum(hits, sh);
  if (threadIdx.x == 0) out[blockIdx.x] = all ? hits == 0 : hits > 0;
}

// softmax / log-softmax of one row per block
template <class T> __global__ void k_softmax_rows(const T *x, int64_t K, int log_, T *y) {
  __shared__ double sh[RT];
  const T *r = x + (int64_t)blockIdx.x * K;
  T *o = y + (int64_t)blockIdx.x * K;
  double mx = -INFINITY;
  for (int64_t k = threadIdx.x; k < K; k += RT)
    if (r[k] > mx || r[k] != r[k]) mx = (double)r[k];
  T m = (T)block_max(mx, sh);
  if (isinf((double)m) && m < 0) m = 0; // a row of -inf: NaN, as the CPU and torch
  double s = 0;
  for (int64_t k = threadIdx.x; k < K; k += RT) s += (double)exp(r[k] - m);
  s = block_sum(s, sh);
  if (!log_) {
    T inv = (T)(1.0 / s);
    for (int64_t k = threadIdx.x; k < K; k += RT) o[k] = exp(r[k] - m) * inv;
  } else {
    T lse = m + (T)log(s);
    for (int64_t k = threadIdx.x; k < K; k += RT) o[k] = r[k] - lse;
  }
}

// cumulative sum/product: one thread per row
template <class T, class ACC> __global__ void k_cum_rows(const T *x, int64_t M, int64_t K, int prod, T *y) {
  MOE_GRID_STRIDE(m, M) {
    ACC acc = prod ? 1 : 0;
    for (int64_t k = 0; k < K; k++) {
      acc = prod ? wmul(acc, (ACC)x[m * K + k]) : wadd(acc, (ACC)x[m * K + k]);
      y[m * K + k] = (T)acc;
    }
  }
}

// x [O,K,N] -> part [C,O,N]: chunk c of K summed per (o, n), in double
template <class T>
__global__ void k_sum_middle_part(const T *x, int64_t O, int64_t K, int64_t N, int64_t chunk, double *part) {
  int64_t c = blockIdx.y;
  MOE_GRID_STRIDE(i, O * N) {
    int64_t o = i / N, n = i % N, k0 = c * chunk, k1 = k0 + chunk < K ? k0 + chunk : K;
    double s = 0;
    for (int64_t k = k0; k < k1; k++) s += (double)x[(o * K + k) * N + n];
    part[c * O * N + i] = s;
  }
}
template <class T>
__global__ void k_sum_middle_fin(const double *part, int64_t C, int64_t ON, int64_t K, int mean, T *out) {
  MOE_GRID_STRIDE(i, ON) {
    double s = 0;
    for (int64_t c = 0; c < C; c++) s += part[c * ON + i];
    out[i] = (T)(mean ? s / (double)K : s);
  }
}

// ---- few long rows (a full reduction is M = 1): each row in chunks of CHUNK,
// one block per (chunk, row) writes a partial, then one block per row combines
// its partials. Both passes are fixed trees (no atomics): the same bits every
// run. var/std and logsumexp take two such rounds (the mean, the max first).
const int64_t CHUNK = 4096;
enum { P_SUM, P_SQDEV, P_PROD, P_MAX, P_EXPSUM, P_ISUM, P_IPROD, P_HITS, P_ARG };
enum { C_ADD, C_MUL, C_MAX };
enum { F_STAT_MEAN, F_STAT, F_SUM, F_MEAN, F_VAR, F_STD, F_PROD, F_LSE, F_ALL, F_ANY };

__device__ __forceinline__ double comb(double a, double b, int how) {
  if (how == C_ADD) return a + b;
  if (how == C_MUL) return a * b;
  return (a != a || b != b) ? NAN : (a > b ? a : b);
}
__device__ double block_comb(double v, double *sh, int how) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = RT / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) sh[threadIdx.x] = comb(sh[threadIdx.x], sh[threadIdx.x + w], how);
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}
__device__ int64_t block_icomb(int64_t v, int64_t *sh, int mul) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = RT / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w)
      sh[threadIdx.x] = mul ? wmul(sh[threadIdx.x], sh[threadIdx.x + w]) : wadd(sh[threadIdx.x], sh[threadIdx.x + w]);
    __syncthreads();
  }
  int64_t r = sh[0];
  __syncthreads();
  return r;
}
// (value, index) with beats(); every thread gets the winner
template <class T> __device__ void block_arg(T *v, int64_t *i, T *sv, int64_t *si, bool max) {
  sv[threadIdx.x] = *v;
  si[threadIdx.x] = *i;
  __syncthreads();
  for (int w = RT / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w &&
        beats(sv[threadIdx.x + w], si[threadIdx.x + w], sv[threadIdx.x], si[threadIdx.x], max)) {
      sv[threadIdx.x] = sv[threadIdx.x + w];
      si[threadIdx.x] = si[threadIdx.x + w];
    }
    __syncthreads();
  }
  *v = sv[0];
  *i = si[0];
  __syncthreads();
}

// block (c, m): the partial of x[m, c*CHUNK ..] into slot m*C + c of pd (doubles),
// pi (int64, and the arg's index) or pv (the arg's value); stat: a per-row value
// from the round before (the mean, the max)
template <class T>
__global__ void k_part(const T *x, int64_t K, int64_t C, int ph, bool flag, const double *stat, double *pd, int64_t *pi,
                       T *pv) {
  __shared__ double sd[RT];
  __shared__ int64_t si[RT];
  __shared__ T sv[RT];
  int64_t m = blockIdx.y, c = blockIdx.x, slot = m * C + c;
  int64_t k0 = c * CHUNK, k1 = k0 + CHUNK < K ? k0 + CHUNK : K;
  const T *r = x + m * K;
  if (ph == P_ISUM || ph == P_IPROD) {
    int64_t acc = ph == P_IPROD ? 1 : 0;
    for (int64_t k = k0 + threadIdx.x; k < k1; k += RT)
      acc = ph == P_IPROD ? wmul(acc, (int64_t)r[k]) : wadd(acc, (int64_t)r[k]);
    acc = block_icomb(acc, si, ph == P_IPROD);
    if (threadIdx.x == 0) pi[slot] = acc;
    return;
  }
  if (ph == P_ARG) {
    T best = 0;
    int64_t bi = -1;
    for (int64_t k = k0 + threadIdx.x; k < k1; k += RT)
      if (beats(r[k], k, best, bi, flag)) {
        best = r[k];
        bi = k;
      }
    block_arg(&best, &bi, sv, si, flag);
    if (threadIdx.x == 0) {
      pv[slot] = best;
      pi[slot] = bi;
    }
    return;
  }
  double st = stat ? stat[m] : 0, acc = ph == P_PROD ? 1 : ph == P_MAX ? -INFINITY : 0;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += RT) {
    double v = (double)r[k];
    switch (ph) {
    case P_SUM: acc += v; break;
    case P_SQDEV: acc += (v - st) * (v - st); break;
    case P_PROD: acc *= v; break;
    case P_MAX: acc = acc == acc && (v > acc || v != v) ? v : acc; break; // the first NaN stays
    case P_EXPSUM: acc += exp(v - st); break;
    default: acc += (r[k] != 0) != flag; break; // P_HITS: the elements that decide all (flag) / any
    }
  }
  acc = block_comb(acc, sd, ph == P_PROD ? C_MUL : ph == P_MAX ? C_MAX : C_ADD);
  if (threadIdx.x == 0) pd[slot] = acc;
}

// block m: row m's C partials of pd combined (how), then finished (fin) into stat or out
template <class T>
__global__ void k_fin(const double *pd, int64_t C, int64_t K, int how, int fin, int correction, double *stat, T *out) {
  __shared__ double sh[RT];
  int64_t m = blockIdx.x;
  double acc = how == C_MUL ? 1 : how == C_MAX ? -INFINITY : 0;
  for (int64_t c = threadIdx.x; c < C; c += RT) acc = comb(acc, pd[m * C + c], how);
  double v = block_comb(acc, sh, how);
  if (threadIdx.x != 0) return;
  switch (fin) {
  case F_STAT_MEAN: stat[m] = v / (double)K; break;
  case F_STAT: stat[m] = v; break;
  case F_SUM:
  case F_PROD: out[m] = (T)v; break;
  case F_MEAN: out[m] = (T)(v / (double)K); break;
  case F_VAR:
  case F_STD: {
    int64_t dof = K - correction;
    double var = dof > 0 ? v / (double)dof : NAN;
    out[m] = (T)(fin == F_STD ? sqrt(var) : var);
    break;
  }
  case F_LSE: {
    double mx = stat[m];
    out[m] = (T)((isinf(mx) || mx != mx) ? mx : mx + log(v));
    break;
  }
  case F_ALL: out[m] = (T)(v == 0); break;
  default: out[m] = (T)(v > 0); break; // F_ANY
  }
}

__global__ void k_fin_int(const int64_t *pi, int64_t C, int mul, int64_t *out) {
  __shared__ int64_t sh[RT];
  int64_t m = blockIdx.x, acc = mul ? 1 : 0;
  for (int64_t c = threadIdx.x; c < C; c += RT) acc = mul ? wmul(acc, pi[m * C + c]) : wadd(acc, pi[m * C + c]);
  acc = block_icomb(acc, sh, mul);
  if (threadIdx.x == 0) out[m] = acc;
}

template <class T>
__global__ void k_fin_arg(const T *pv, const int64_t *pi, int64_t C, bool max, int arg, T *out, int64_t *argout,
                          int64_t *idx, int64_t ibase) {
  __shared__ T sv[RT];
  __shared__ int64_t si[RT];
  int64_t m = blockIdx.x;
  T best = 0;
  int64_t bi = -1;
  for (int64_t c = threadIdx.x; c < C; c += RT) // chunk order = index order, so ties go to the first
    if (beats(pv[m * C + c], pi[m * C + c], best, bi, max)) {
      best = pv[m * C + c];
      bi = pi[m * C + c];
    }
  block_arg(&best, &bi, sv, si, max);
  if (threadIdx.x == 0) {
    if (arg) argout[m] = bi + ibase;
    else out[m] = best;
    if (idx) idx[m] = bi + ibase;
  }
}

template <class T> T *dptr(const moe_tensor *t) { return (T *)moe_data(t); }

// the chunked path for M rows of K (M <= 65535: rows are grid.y)
template <class T>
void reduce_chunked(moe_redop op, const T *x, moe_tensor *out, moe_tensor *idx, int64_t M, int64_t K, int correction,
                    int64_t ibase, cudaStream_t s) {
  int64_t C = (K + CHUNK - 1) / CHUNK;
  size_t got = 0;
  char *buf = (char *)moe_cuda_malloc((size_t)(M * C) * (2 * sizeof(double) + sizeof(T)) + sizeof(double) * M, &got);
  if (!buf) {
    moe_cuda_fail(moe_redop_name(op), moe_cuda_last_error());
    return;
  }
  double *pd = (double *)buf, *stat = pd + M * C;
  int64_t *pi = (int64_t *)(stat + M);
  T *pv = (T *)(pi + M * C);
  dim3 g((unsigned)C, (unsigned)M);
  unsigned gm = (unsigned)M;
  switch (op) {
  case MOE_RMAX:
  case MOE_RMIN:
  case MOE_RARGMAX:
  case MOE_RARGMIN: {
    bool mx = op == MOE_RMAX || op == MOE_RARGMAX;
    int arg = op == MOE_RARGMAX || op == MOE_RARGMIN;
    MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, (int)P_ARG, mx, (const double *)NULL, pd, pi, pv);
    MOE_LAUNCH_SYNC(k_fin_arg<T>, gm, RT, 0, s, pv, pi, C, mx, arg, arg ? NULL : dptr<T>(out),
                    arg ? dptr<int64_t>(out) : NULL, idx ? dptr<int64_t>(idx) : NULL, ibase);
    break;
  }
  case MOE_RALL:
  case MOE_RANY:
    MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, (int)P_HITS, op == MOE_RALL, (const double *)NULL, pd, pi, pv);
    MOE_LAUNCH_SYNC(k_fin<T>, gm, RT, 0, s, pd, C, K, (int)C_ADD, op == MOE_RALL ? (int)F_ALL : (int)F_ANY, 0, stat,
                    dptr<T>(out));
    break;
  default:
    if (std::is_integral<T>::value) { // sum, prod of integers (in int64, as the CPU)
      int mul = op == MOE_RPROD;
      MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, mul ? (int)P_IPROD : (int)P_ISUM, false, (const double *)NULL,
                      pd, pi, pv);
      MOE_LAUNCH_SYNC(k_fin_int, gm, RT, 0, s, pi, C, mul, dptr<int64_t>(out));
    } else if (op == MOE_RSUM || op == MOE_RMEAN || op == MOE_RPROD) {
      int prod = op == MOE_RPROD;
      MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, prod ? (int)P_PROD : (int)P_SUM, false, (const double *)NULL, pd,
                      pi, pv);
      MOE_LAUNCH_SYNC(k_fin<T>, gm, RT, 0, s, pd, C, K, prod ? (int)C_MUL : (int)C_ADD,
                      prod                 ? (int)F_PROD
                          : op == MOE_RSUM ? (int)F_SUM
                                           : (int)F_MEAN,
                      0, stat, dptr<T>(out));
    } else if (op == MOE_RVAR || op == MOE_RSTD) {
      MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, (int)P_SUM, false, (const double *)NULL, pd, pi, pv);
      MOE_LAUNCH_SYNC(k_fin<T>, gm, RT, 0, s, pd, C, K, (int)C_ADD, (int)F_STAT_MEAN, 0, stat, (T *)NULL);
      MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, (int)P_SQDEV, false, (const double *)stat, pd, pi, pv);
      MOE_LAUNCH_SYNC(k_fin<T>, gm, RT, 0, s, pd, C, K, (int)C_ADD, op == MOE_RSTD ? (int)F_STD : (int)F_VAR,
                      correction, stat, dptr<T>(out));
    } else { // logsumexp
      MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, (int)P_MAX, false, (const double *)NULL, pd, pi, pv);
      MOE_LAUNCH_SYNC(k_fin<T>, gm, RT, 0, s, pd, C, K, (int)C_MAX, (int)F_STAT, 0, stat, (T *)NULL);
      MOE_LAUNCH_SYNC(k_part<T>, g, RT, 0, s, x, K, C, (int)P_EXPSUM, false, (const double *)stat, pd, pi, pv);
      MOE_LAUNCH_SYNC(k_fin<T>, gm, RT, 0, s, pd, C, K, (int)C_ADD, (int)F_LSE, 0, stat, dptr<T>(out));
    }
  }
  moe_cuda_launched(moe_redop_name(op));
  moe_cuda_free(buf, got);
}

} // namespace

// rows are blocks: grid.x holds up to 2^31-1 of them
extern "C" void moe_cuda_reduce_rows(moe_redop op, const moe_tensor *x, moe_tensor *out, moe_tensor *idx, int64_t M,
                                     int64_t K, int correction, int64_t ibase) {
  if (M == 0) return;
  cudaStream_t s = moe_cuda_stream();
  if (M <= 256 && K >= 2 * CHUNK) { // few long rows: more blocks than rows (one row per block below)
#define RC(T) reduce_chunked<T>(op, dptr<T>(x), out, idx, M, K, correction, ibase, s)
    if (op == MOE_RALL || op == MOE_RANY) RC(uint8_t);
    else if (op == MOE_RMAX || op == MOE_RMIN || op == MOE_RARGMAX || op == MOE_RARGMIN) {
      MOE_DTYPE_SWITCH(x->dtype, RC)
    } else if (x->dtype == MOE_F32) RC(float);
    else if (x->dtype == MOE_F64) RC(double);
    else RC(int64_t);
#undef RC
    return;
  }
  unsigned g = (unsigned)M;
  int arg = op == MOE_RARGMAX || op == MOE_RARGMIN;
  int64_t *ix = idx ? dptr<int64_t>(idx) : NULL;
  switch (op) {
  case MOE_RMAX:
  case MOE_RMIN:
  case MOE_RARGMAX:
  case MOE_RARGMIN: {
    bool mx = op == MOE_RMAX || op == MOE_RARGMAX;
    int64_t *ao = arg ? dptr<int64_t>(out) : NULL;
#define MM(T) \
  MOE_LAUNCH_SYNC(k_minmax_rows<T>, g, RT, 0, s, dptr<T>(x), K, mx, arg, arg ? NULL : dptr<T>(out), ao, ix, ibase)
    MOE_DTYPE_SWITCH(x->dtype, MM)
#undef MM
    break;
  }
  case MOE_RALL:
  case MOE_RANY:
    MOE_LAUNCH_SYNC(k_allany_rows, g, RT, 0, s, dptr<uint8_t>(x), K, op == MOE_RALL, dptr<uint8_t>(out));
    break;
  default:
    switch (x->dtype) {
    case MOE_F32:
      MOE_LAUNCH_SYNC(k_moment_rows<float>, g, RT, 0, s, dptr<float>(x), K, (int)op, correction, dptr<float>(out));
      break;
    case MOE_F64:
      MOE_LAUNCH_SYNC(k_moment_rows<double>, g, RT, 0, s, dptr<double>(x), K, (int)op, correction, dptr<double>(out));
      break;
    default:
      MOE_LAUNCH_SYNC(k_moment_rows<int64_t>, g, RT, 0, s, dptr<int64_t>(x), K, (int)op, correction,
                      dptr<int64_t>(out));
      break;
    }
  }
  moe_cuda_launched(moe_redop_name(op));
}

extern "C" void moe_cuda_scan_rows(moe_scanop op, const moe_tensor *x, moe_tensor *out, int64_t M, int64_t K) {
  if (M == 0 || K == 0) return;
  cudaStream_t s = moe_cuda_stream();
  if (op == MOE_SOFTMAX || op == MOE_LOG_SOFTMAX) {
    int lg = op == MOE_LOG_SOFTMAX;
    if (x->dtype == MOE_F32)
      MOE_LAUNCH_SYNC(k_softmax_rows<float>, (unsigned)M, RT, 0, s, dptr<float>(x), K, lg, dptr<float>(out));
    else MOE_LAUNCH_SYNC(k_softmax_rows<double>, (unsigned)M, RT, 0, s, dptr<double>(x), K, lg, dptr<double>(out));
    moe_cuda_launched(op == MOE_SOFTMAX ? "softmax" : "log_softmax");
    return;
  }
  int prod = op == MOE_CUMPROD;
  unsigned g = moe_blocks(M, 128);
  auto kf = k_cum_rows<float, double>;
  auto kd = k_cum_rows<double, double>;
  auto ki = k_cum_rows<int64_t, int64_t>;
  if (x->dtype == MOE_F32) MOE_LAUNCH(kf, g, 128, 0, s, dptr<float>(x), M, K, prod, dptr<float>(out));
  else if (x->dtype == MOE_F64) MOE_LAUNCH(kd, g, 128, 0, s, dptr<double>(x), M, K, prod, dptr<double>(out));
  else MOE_LAUNCH(ki, g, 128, 0, s, dptr<int64_t>(x), M, K, prod, dptr<int64_t>(out));
  moe_cuda_launched(prod ? "cumprod" : "cumsum");
}

extern "C" void moe_cuda_sum_middle(const moe_tensor *x, moe_tensor *out, int64_t O, int64_t K, int64_t N, int mean) {
  int64_t ON = O * N;
  if (ON == 0) return;
  cudaStream_t s = moe_cuda_stream();
  // K in C chunks (deterministic: partial sums, then a fixed-order sum of them)
  int64_t C = K > 0 ? (K + 255) / 256 : 1;
  if (C > 64) C = 64;
  if (C * ON > ((int64_t)1 << 26)) C = 1;
  int64_t chunk = K > 0 ? (K + C - 1) / C : 0;
  size_t got = 0;
  double *part = (double *)moe_cuda_malloc(sizeof(double) * (size_t)(C * ON), &got);
  if (!part) {
    moe_cuda_fail("sum", moe_cuda_last_error());
    return;
  }
  dim3 g(moe_blocks(ON, 256), (unsigned)C);
  if (x->dtype == MOE_F32) {
    MOE_LAUNCH(k_sum_middle_part<float>, g, 256, 0, s, dptr<float>(x), O, K, N, chunk, part);
    MOE_LAUNCH(k_sum_middle_fin<float>, moe_blocks(ON, 256), 256, 0, s, part, C, ON, K, mean, dptr<float>(out));
  } else {
    MOE_LAUNCH(k_sum_middle_part<double>, g, 256, 0, s, dptr<double>(x), O, K, N, chunk, part);
    MOE_LAUNCH(k_sum_middle_fin<double>, moe_blocks(ON, 256), 256, 0, s, part, C, ON, K, mean, dptr<double>(out));
  }
  moe_cuda_launched("sum");
  moe_cuda_free(part, got); // stream-ordered: the cache hands it out again only to later work on this stream
}
