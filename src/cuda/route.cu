// route.cu -- the sparse MoE layer on the device: the routing plan
// (moe_route_plan, src/nn/routing.c) and the grouped expert GEMM with its
// backward, twins of src/cpu/moe.c's moe_cpu_route_plan and
// moe_cpu_grouped_gemm[_backward], with the same results.
//
// The plan: placement positions q = r*T + p of a group (every token's 1st
// choice before any 2nd; within a rank, tokens in `order`) are walked by one
// block per group, blockDim positions at a time. A thread's slot in its expert
// is the expert's fill before the chunk plus the number of earlier threads of
// the chunk with the same expert, so the placement order is kept without a
// sort and without atomics on the fills. Pass 1 counts each (group, expert);
// one block scans the counts (expert major, group minor: the output is sorted
// by expert, then group) into output bases; pass 2 recomputes the slots and
// writes each kept pair at base + slot. The host reads back one small buffer
// (the kept total, the counts and the first bad input, if any): the plan's
// only synchronisation, needed to size its outputs.
#include "common.cuh"
#include "gemm.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLAN_THREADS 256

namespace {
// the position of a group's placement walk: r = q / T (the choice), p = q % T
struct plan_args {
  const int64_t *ei, *od;
  const uint8_t *vd;
  int64_t G, T, K, E, capacity, ibase;
};

// the first bad input in the CPU kernel's order (group, choice, position):
// flat position (g*K + r)*T + p; atomicMin keeps the first whatever the timing
#define NO_ERROR 0xFFFFFFFFFFFFFFFFull

// pass 1 (out == NULL): fill[g*E + e] = the pairs group g places on expert e,
// kept or not; the first bad order or expert index into *err. Pass 2: each
// kept pair written at base[e*G + g] + its slot (fill must start at zero).
__global__ void k_plan(plan_args a, int64_t *fill, unsigned long long *err, const int64_t *base, int64_t *otok,
                       int64_t *oexp, int64_t *orank) {
  __shared__ int64_t chunk_e[PLAN_THREADS];
  int64_t g = blockIdx.x, T = a.T, n = a.T * a.K;
  int tid = threadIdx.x;
  int64_t *gf = fill + g * a.E;
  for (int64_t q0 = 0; q0 < n; q0 += blockDim.x) {
    int64_t q = q0 + tid, e = -1, t = 0, r = 0;
    if (q < n) {
      r = q / T;
      int64_t p = q % T;
      t = a.od ? a.od[g * T + p] - a.ibase : p;
      if (t < 0 || t >= T) {
        if (!otok) atomicMin(err, (unsigned long long)((g * a.K + r) * T + p));
      } else if (!a.vd || a.vd[g * T + t]) {
        e = a.ei[(g * T + t) * a.K + r] - a.ibase;
        if (e < 0 || e >= a.E) {
          if (!otok) atomicMin(err, (unsigned long long)((g * a.K + r) * T + p));
          e = -1;
        }
      }
    }
    chunk_e[tid] = e;
    __syncthreads();
    int64_t before = 0, same = 0;
    if (e >= 0) {
      int lim = (int)(n - q0 < (int64_t)blockDim.x ? n - q0 : (int64_t)blockDim.x);
      for (int j = 0; j < lim; j++) {
        int hit = chunk_e[j] == e;
        before += hit && j < tid;
        same += hit;
      }
    }
    int64_t slot = e >= 0 ? gf[e] + before : 0;
    __syncthreads(); // every thread has read the fills before the first of each expert moves them
    if (e >= 0) {
      if (before == 0) gf[e] += same;
      if (otok && (a.capacity < 0 || slot < a.capacity)) {
        int64_t at = base[e * a.G + g] + slot;
        otok[at] = g * T + t + a.ibase;
        oexp[at] = e + a.ibase;
        orank[at] = r + a.ibase;
      }
    }
    __syncthreads(); // the fills are up to date before the next chunk reads them
  }
}

// one block: base[e*G + g] = exclusive scan of the kept counts (expert major);
// res = {kept total, error kind (0 none, 1 order, 2 expert), the bad value, counts[E]}
__global__ void k_plan_scan(plan_args a, const int64_t *fill, const unsigned long long *err, int64_t *base,
                            int64_t *res) {
  __shared__ int64_t part[PLAN_THREADS];
  int64_t n = a.G * a.E, per = (n + blockDim.x - 1) / blockDim.x;
  int tid = threadIdx.x;
  int64_t lo = tid * per, hi = lo + per < n ? lo + per : n;
  auto kept = [&](int64_t i) { // i in (e major, g minor) order
    int64_t e = i / a.G, g = i % a.G, f = fill[g * a.E + e];
    return a.capacity >= 0 && f > a.capacity ? a.capacity : f;
  };
  int64_t s = 0;
  for (int64_t i = lo; i < hi; i++) s += kept(i);
  part[tid] = s;
  __syncthreads();
  if (tid == 0) {
    int64_t run = 0;
    for (int j = 0; j < (int)blockDim.x; j++) {
      int64_t v = part[j];
      part[j] = run;
      run += v;
    }
    res[0] = run;
    res[1] = res[2] = 0;
    unsigned long long at = *err;
    if (at != NO_ERROR) { // re-read the offending value, as the CPU kernel reports it
      int64_t p = (int64_t)(at % (unsigned long long)a.T), gr = (int64_t)(at / (unsigned long long)a.T);
      int64_t g = gr / a.K, r = gr % a.K;
      int64_t t = a.od ? a.od[g * a.T + p] - a.ibase : p;
      if (t < 0 || t >= a.T) {
        res[1] = 1;
        res[2] = t + a.ibase;
      } else {
        res[1] = 2;
        res[2] = a.ei[(g * a.T + t) * a.K + r];
      }
    }
  }
  __syncthreads();
  s = part[tid];
  for (int64_t i = lo; i < hi; i++) {
    base[i] = s;
    s += kept(i);
  }
  __syncthreads();
  for (int64_t e = tid; e < a.E; e += blockDim.x)
    res[3 + e] = (e + 1 < a.E ? base[(e + 1) * a.G] : res[0]) - base[e * a.G];
}
} // namespace

// the plan of moe_route_plan over contiguous device ei [G,T,K], od, vd: token,
// expert, rank made on the device, counts on the HOST (int64 [E]: they size the
// expert GEMMs, which the host launches). 0, or -1 with an error.
extern "C" int moe_cuda_route_plan(const moe_tensor *ei, const moe_tensor *od, const moe_tensor *vd, int64_t E,
                                   int64_t capacity, int64_t ibase, moe_tensor **token, moe_tensor **expert,
                                   moe_tensor **rank, moe_tensor **counts) {
  int64_t G = ei->shape[0], T = ei->shape[1], K = ei->shape[2];
  int64_t eshape[1] = {E};
  *token = *expert = *rank = *counts = NULL;
  *counts = moe_full_on(MOE_CPU, 1, eshape, MOE_I64, 0.0);
  if (!*counts) return -1;
  int64_t total = 0;
  if (G * T * K > 0) {
    // scratch: fill [G*E], base [G*E], the error word, the result [3+E]
    size_t nge = (size_t)(G * E), bytes = sizeof(int64_t) * (2 * nge + 1 + 3 + (size_t)E), got = 0;
    int64_t *buf = (int64_t *)moe_cuda_malloc(bytes, &got);
    if (!buf) {
      moe_error("route_plan: %s", moe_cuda_last_error());
      goto fail;
    }
    int64_t *fill = buf, *base = buf + nge, *res = buf + 2 * nge + 1;
    unsigned long long *err = (unsigned long long *)(buf + 2 * nge);
    int64_t *host = (int64_t *)malloc(sizeof(int64_t) * (size_t)(3 + E));
    if (!host) {
      moe_cuda_free(buf, got);
      moe_error("route_plan: out of memory");
      goto fail;
    }
    plan_args a = {(const int64_t *)moe_data(ei),
                   od ? (const int64_t *)moe_data(od) : NULL,
                   vd ? (const uint8_t *)moe_data(vd) : NULL,
                   G,
                   T,
                   K,
                   E,
                   capacity,
                   ibase};
    cudaStream_t s = moe_cuda_stream();
    cudaMemsetAsync(fill, 0, sizeof(int64_t) * nge, s);
    cudaMemsetAsync(err, 0xFF, sizeof *err, s);
    MOE_LAUNCH_SYNC(k_plan, (unsigned)G, PLAN_THREADS, 0, s, a, fill, err, (const int64_t *)NULL, (int64_t *)NULL,
                    (int64_t *)NULL, (int64_t *)NULL);
    MOE_LAUNCH_SYNC(k_plan_scan, 1, PLAN_THREADS, 0, s, a, (const int64_t *)fill, (const unsigned long long *)err, base,
                    res);
    moe_cuda_launched("route_plan");
    int rc = moe_cuda_memcpy(host, res, sizeof(int64_t) * (size_t)(3 + E), 1);
    char why[256] = "";
    if (rc) snprintf(why, sizeof why, "route_plan: %s", moe_cuda_last_error());
    else if (host[1] == 1)
      snprintf(why, sizeof why, "route_plan: order holds %lld, outside 1..%lld", (long long)host[2], (long long)T);
    else if (host[1] == 2)
      snprintf(why, sizeof why, "route_plan: expert index %lld outside 1..%lld", (long long)host[2], (long long)E);
    if (!why[0]) {
      total = host[0];
      memcpy(moe_data(*counts), host + 3, sizeof(int64_t) * (size_t)E);
      int64_t ashape[1] = {total};
      *token = moe_empty_on(MOE_CUDA, 1, ashape, MOE_I64);
      *expert = *token ? moe_empty_on(MOE_CUDA, 1, ashape, MOE_I64) : NULL;
      *rank = *expert ? moe_empty_on(MOE_CUDA, 1, ashape, MOE_I64) : NULL;
      if (*rank && total > 0) {
        cudaMemsetAsync(fill, 0, sizeof(int64_t) * nge, s);
        MOE_LAUNCH_SYNC(k_plan, (unsigned)G, PLAN_THREADS, 0, s, a, fill, err, (const int64_t *)base,
                        (int64_t *)moe_data(*token), (int64_t *)moe_data(*expert), (int64_t *)moe_data(*rank));
        moe_cuda_launched("route_plan");
      }
    }
    free(host);
    moe_cuda_free(buf, got); // stream-ordered reuse (runtime.cu)
    if (why[0]) {
      moe_error("%s", why);
      goto fail;
    }
    if (!*rank) goto fail;
    return 0;
  }
  {
    int64_t ashape[1] = {0};
    *token = moe_empty_on(MOE_CUDA, 1, ashape, MOE_I64);
    *expert = moe_empty_on(MOE_CUDA, 1, ashape, MOE_I64);
    *rank = moe_empty_on(MOE_CUDA, 1, ashape, MOE_I64);
    if (*token && *expert && *rank) return 0;
  }
fail:
  moe_tensor_release(*token);
  moe_tensor_release(*expert);
  moe_tensor_release(*rank);
  moe_tensor_release(*counts);
  *token = *expert = *rank = *counts = NULL;
  return -1;
}

// ---------------------------------------------------------------- grouped GEMM
// Per expert, the GEMMs of matmul.cu (the global precision for float32, or
// bf16 for the bf16 flag; float64 in fp64): the CPU kernel's expert_gemm on
// cuBLAS. For float32 in fp32/tf32, one cublasGemmGroupedBatchedEx call runs
// every expert's GEMM where cuBLAS has it (12.5 on); MOE_GROUPED=loop keeps
// the per-expert loop (also the fallback when cuBLAS refuses the call).
#if defined(MOE_CUDA_EMU) || (defined(CUBLAS_VERSION) && CUBLAS_VERSION >= 120500)
#define HAVE_GROUPED 1
#else
#define HAVE_GROUPED 0
#endif

namespace {
// the expert of row i: the last e with offs[e] <= i (an expert without rows
// shares its offset with the next one, which has them)
__device__ __forceinline__ int64_t expert_of(const int64_t *offs, int64_t E, int64_t i) {
  int64_t lo = 0, hi = E; // first e with offs[e] > i
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (offs[mid] <= i) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

// y [A,N] rows start as their expert's bias row
template <class T> __global__ void k_bias_rows(T *y, const T *b, const int64_t *offs, int64_t E, int64_t A, int64_t N) {
  MOE_GRID_STRIDE(i, A * N) { y[i] = b[expert_of(offs, E, i / N) * N + i % N]; }
}

// gb [E,N] = the column sums of g over each expert's rows, in row order (as the CPU)
template <class T>
__global__ void k_bias_grad(T *gb, const T *g, const int64_t *offs, const int64_t *cnt, int64_t E, int64_t N) {
  MOE_GRID_STRIDE(i, E * N) {
    int64_t e = i / N, c = i % N, o = offs[e], m = cnt[e];
    T acc = 0;
    for (int64_t r = 0; r < m; r++) acc += g[(o + r) * N + c];
    gb[i] = acc;
  }
}
} // namespace

// C [M,N] (+= when acc) = A @ B on the device, row-major with strides: the CPU kernel's expert_gemm
static void expert_gemm(moe_dtype dt, int bf16, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm,
                        int64_t sAk, const char *B, int64_t sBk, int64_t sBn, char *C, int acc) {
  if (bf16) moe_cuda_gemm_bf16(1, M, N, K, A, 0, sAm, sAk, B, 0, sBk, sBn, C, 0, acc);
  else if (acc) moe_cuda_gemm_add(dt, M, N, K, A, sAm, sAk, B, sBk, sBn, C);
  else moe_cuda_gemm_batched(dt, 1, M, N, K, A, 0, sAm, sAk, B, 0, sBk, sBn, C, 0);
}

// device copies of offs [E] and counts [E] (one upload), freed by the caller
static int64_t *upload_offs(const int64_t *counts, const int64_t *offs, int64_t E, size_t *got) {
  size_t n = sizeof(int64_t) * (size_t)(2 * E);
  int64_t *d = (int64_t *)moe_cuda_malloc(n, got);
  int64_t *h = (int64_t *)malloc(n);
  if (!d || !h) {
    free(h);
    if (d) moe_cuda_free(d, *got);
    moe_cuda_fail("grouped_matmul", d ? "out of memory" : moe_cuda_last_error());
    return NULL;
  }
  memcpy(h, offs, sizeof(int64_t) * (size_t)E);
  memcpy(h + E, counts, sizeof(int64_t) * (size_t)E);
  if (moe_cuda_memcpy(d, h, n, 0)) moe_cuda_fail("grouped_matmul", moe_cuda_last_error()); // (staged: no wait)
  free(h);
  return d;
}

// one GEMM of a grouped call, in cuBLAS's column-major terms
struct grouped_gemm_arg {
  cublasOperation_t ta, tb;
  int m, n, k, lda, ldb, ldc;
  float beta;
  const void *A, *B;
  void *C;
};

static grouped_gemm_arg gemm_arg(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                                 int64_t lda, int64_t ldb, int64_t ldc, float beta, const void *A, const void *B,
                                 void *C) {
  grouped_gemm_arg g = {ta, tb, (int)m, (int)n, (int)k, (int)lda, (int)ldb, (int)ldc, beta, A, B, C};
  return g;
}

static int use_grouped(moe_dtype dt, int bf16) {
  if (!HAVE_GROUPED || dt != MOE_F32 || bf16 || moe_cuda_get_precision() == 2) return 0;
  const char *v = getenv("MOE_GROUPED");
  return !(v && !strcmp(v, "loop"));
}

#if HAVE_GROUPED
typedef cublasStatus_t (*grouped_ex_fn)(cublasHandle_t, const cublasOperation_t *, const cublasOperation_t *,
                                        const int *, const int *, const int *, const void *, const void *const *,
                                        cudaDataType, const int *, const void *const *, cudaDataType, const int *,
                                        const void *, void *const *, cudaDataType, const int *, int, const int *,
                                        cublasComputeType_t);
#endif

// the GEMMs of gs (n of them, every size in int range, none empty) in one
// cublasGemmGroupedBatchedEx call; 0 when it ran, -1 when the caller must loop
static int run_grouped(const grouped_gemm_arg *gs, int n) {
#if HAVE_GROUPED
  if (n == 0) return 0;
#ifdef MOE_CUDA_EMU
  grouped_ex_fn fn = cublasGemmGroupedBatchedEx;
#else
  static grouped_ex_fn fn;
  static int looked;
  if (!looked) {
    looked = 1;
    fn = (grouped_ex_fn)moe_cuda_blas_symbol("cublasGemmGroupedBatchedEx");
  }
  if (!fn) return -1;
#endif
  cublasHandle_t h = moe_cuda_blas_handle();
  if (!h) return 0; // the error is recorded
  size_t nn = (size_t)n, got = 0;
  void **dptr = (void **)moe_cuda_malloc(sizeof(void *) * 3 * nn, &got);
  if (!dptr) return -1;
  void **hp = (void **)malloc(sizeof(void *) * 3 * nn);
  int *ints = (int *)malloc(sizeof(int) * 7 * nn);
  cublasOperation_t *ops = (cublasOperation_t *)malloc(sizeof(cublasOperation_t) * 2 * nn);
  float *ab = (float *)malloc(sizeof(float) * 2 * nn);
  int rc = -1;
  if (hp && ints && ops && ab) {
    for (size_t i = 0; i < nn; i++) {
      const grouped_gemm_arg &g = gs[i];
      hp[i] = (void *)g.A;
      hp[nn + i] = (void *)g.B;
      hp[2 * nn + i] = g.C;
      ops[i] = g.ta;
      ops[nn + i] = g.tb;
      int v[7] = {g.m, g.n, g.k, g.lda, g.ldb, g.ldc, 1};
      for (int j = 0; j < 7; j++) ints[j * nn + i] = v[j];
      ab[i] = 1.0f;
      ab[nn + i] = g.beta;
    }
    if (moe_cuda_memcpy(dptr, hp, sizeof(void *) * 3 * nn, 0)) moe_cuda_fail("grouped_matmul", moe_cuda_last_error());
    cublasComputeType_t ct = moe_cuda_get_precision() == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasStatus_t st = fn(h, ops, ops + nn, ints, ints + nn, ints + 2 * nn, ab, (const void *const *)dptr, CUDA_R_32F,
                           ints + 3 * nn, (const void *const *)(dptr + nn), CUDA_R_32F, ints + 4 * nn, ab + nn,
                           (void *const *)(dptr + 2 * nn), CUDA_R_32F, ints + 5 * nn, n, ints + 6 * nn, ct);
    rc = st == CUBLAS_STATUS_SUCCESS ? 0 : -1;
  }
  free(hp);
  free(ints);
  free(ops);
  free(ab);
  moe_cuda_free(dptr, got); // stream-ordered reuse
  return rc;
#else
  (void)gs;
  (void)n;
  return -1;
#endif
}

static int fits_int(int64_t a, int64_t b, int64_t c) { return a <= INT32_MAX && b <= INT32_MAX && c <= INT32_MAX; }

// y [A,N] = x_e @ w[e] (+ b[e]) over the row groups of counts/offs (host arrays); x, w, b contiguous on the device
extern "C" void moe_cuda_grouped_gemm(moe_tensor *y, const moe_tensor *x, const moe_tensor *w, const moe_tensor *b,
                                      const int64_t *counts, const int64_t *offs, int bf16) {
  int64_t E = w->shape[0], K = w->shape[1], N = w->shape[2], A = x->shape[0];
  size_t es = moe_dtype_size(x->dtype);
  if (A == 0 || N == 0) return;
  cudaStream_t s = moe_cuda_stream();
  if (b) { // rows start as the bias, then C += A B (beta = 1)
    size_t got = 0;
    int64_t *d = upload_offs(counts, offs, E, &got);
    if (!d) return;
    if (x->dtype == MOE_F32)
      MOE_LAUNCH(k_bias_rows<float>, moe_blocks(A * N, 256), 256, 0, s, (float *)moe_data(y),
                 (const float *)moe_data(b), (const int64_t *)d, E, A, N);
    else
      MOE_LAUNCH(k_bias_rows<double>, moe_blocks(A * N, 256), 256, 0, s, (double *)moe_data(y),
                 (const double *)moe_data(b), (const int64_t *)d, E, A, N);
    moe_cuda_launched("grouped_matmul");
    moe_cuda_free(d, got);
  }
  const char *X = (const char *)moe_data(x), *W = (const char *)moe_data(w);
  char *Y = (char *)moe_data(y);
  if (K > 0 && use_grouped(x->dtype, bf16)) {
    grouped_gemm_arg *gs = (grouped_gemm_arg *)malloc(sizeof(grouped_gemm_arg) * (size_t)E);
    int n = 0, ok = gs != NULL;
    for (int64_t e = 0; ok && e < E; e++) {
      int64_t m = counts[e];
      if (!m) continue;
      ok = fits_int(m, N, K);
      // row-major y_e = x_e w_e is column-major y_e^T [N,m] = w_e^T [N,K] x_e^T [K,m]
      gs[n++] = gemm_arg(CUBLAS_OP_N, CUBLAS_OP_N, N, m, K, N, K, N, b ? 1.0f : 0.0f, W + (size_t)(e * K * N) * es,
                         X + (size_t)(offs[e] * K) * es, Y + (size_t)(offs[e] * N) * es);
    }
    int rc = ok ? run_grouped(gs, n) : -1;
    free(gs);
    if (rc == 0) return;
  }
  for (int64_t e = 0; e < E; e++) {
    int64_t m = counts[e], off = offs[e];
    if (!m) continue;
    expert_gemm(x->dtype, bf16, m, N, K, X + (size_t)(off * K) * es, K, 1, W + (size_t)(e * K * N) * es, N, 1,
                Y + (size_t)(off * N) * es, b != NULL);
  }
}

// gx = g w[e]^T, gw[e] = x_e^T g_e (zero for an expert without rows), gb[e] = column sums of g_e (each may be NULL)
extern "C" void moe_cuda_grouped_gemm_backward(moe_tensor *gx, moe_tensor *gw, moe_tensor *gb, const moe_tensor *g,
                                               const moe_tensor *x, const moe_tensor *w, const int64_t *counts,
                                               const int64_t *offs, int bf16) {
  int64_t E = w->shape[0], K = w->shape[1], N = w->shape[2];
  moe_dtype dt = x->dtype;
  size_t es = moe_dtype_size(dt);
  cudaStream_t s = moe_cuda_stream();
  const char *G = (const char *)moe_data(g), *X = (const char *)moe_data(x), *W = (const char *)moe_data(w);
  char *GX = gx ? (char *)moe_data(gx) : NULL, *GW = gw ? (char *)moe_data(gw) : NULL;
  if (gb && E * N > 0) {
    size_t got = 0;
    int64_t *d = upload_offs(counts, offs, E, &got);
    if (!d) return;
    if (dt == MOE_F32)
      MOE_LAUNCH(k_bias_grad<float>, moe_blocks(E * N, 256), 256, 0, s, (float *)moe_data(gb),
                 (const float *)moe_data(g), (const int64_t *)d, (const int64_t *)(d + E), E, N);
    else
      MOE_LAUNCH(k_bias_grad<double>, moe_blocks(E * N, 256), 256, 0, s, (double *)moe_data(gb),
                 (const double *)moe_data(g), (const int64_t *)d, (const int64_t *)(d + E), E, N);
    moe_cuda_launched("grouped_matmul backward");
    moe_cuda_free(d, got);
  }
  if (GW) // an expert without rows gets a zero gradient
    for (int64_t e = 0; e < E; e++)
      if (!counts[e] && K * N > 0) cudaMemsetAsync(GW + (size_t)(e * K * N) * es, 0, (size_t)(K * N) * es, s);
  if (K == 0 || N == 0) { // gx [m,0] or gx = g_e @ [0-wide w]: no GEMM (matmul.cu zeroes an empty sum)
    for (int64_t e = 0; e < E && GX; e++)
      if (counts[e] && K > 0) cudaMemsetAsync(GX + (size_t)(offs[e] * K) * es, 0, (size_t)(counts[e] * K) * es, s);
    return;
  }
  if (use_grouped(dt, bf16)) {
    grouped_gemm_arg *gs = (grouped_gemm_arg *)malloc(sizeof(grouped_gemm_arg) * (size_t)(2 * E));
    int n = 0, ok = gs != NULL;
    for (int64_t e = 0; ok && e < E; e++) {
      int64_t m = counts[e], off = offs[e];
      if (!m) continue;
      ok = fits_int(m, N, K);
      const char *ge = G + (size_t)(off * N) * es, *we = W + (size_t)(e * K * N) * es;
      // gx_e = g_e w_e^T: column-major gx_e^T [K,m] = w_e [K,N] (stored as [N,K], so op T) g_e^T [N,m]
      if (GX) gs[n++] = gemm_arg(CUBLAS_OP_T, CUBLAS_OP_N, K, m, N, N, N, K, 0.0f, we, ge, GX + (size_t)(off * K) * es);
      // gw_e = x_e^T g_e: column-major gw_e^T [N,K] = g_e^T [N,m] x_e [m,K] (stored as [K,m], so op T)
      if (GW)
        gs[n++] = gemm_arg(CUBLAS_OP_N, CUBLAS_OP_T, N, K, m, N, K, N, 0.0f, ge, X + (size_t)(off * K) * es,
                           GW + (size_t)(e * K * N) * es);
    }
    int rc = ok ? run_grouped(gs, n) : -1;
    free(gs);
    if (rc == 0) return;
  }
  for (int64_t e = 0; e < E; e++) {
    int64_t m = counts[e], off = offs[e];
    if (!m) continue;
    const char *ge = G + (size_t)(off * N) * es, *we = W + (size_t)(e * K * N) * es;
    if (GX) expert_gemm(dt, bf16, m, K, N, ge, N, 1, we, 1, N, GX + (size_t)(off * K) * es, 0);
    if (GW)
      expert_gemm(dt, bf16, K, N, m, X + (size_t)(off * K) * es, 1, K, ge, N, 1, GW + (size_t)(e * K * N) * es, 0);
  }
}
