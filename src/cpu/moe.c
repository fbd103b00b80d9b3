/* moe.c -- the CPU kernels of the MoE layers: the dense mixtures' combine
 * (mixture) and TabularMoELayer's gate scaling (gate_scale), forward and
 * backward; the sparse layer's routing plan and grouped expert GEMM. The ops
 * (shapes, allocation, autograd, what each computes) are src/nn/mixture.c and
 * src/nn/routing.c. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

#define MIX_FWD(T)                                                            \
  do {                                                                        \
    const T *H = (const T *)moe_data(h), *G = (const T *)moe_data(g);         \
    T *O = (T *)moe_data(out);                                                \
    for (int64_t b = 0; b < B; b++)                                           \
      for (int64_t u = 0; u < U; u++) {                                       \
        const T *hp = H + b * hs[0] + u * hs[1];                              \
        const T *gp = G + b * gs[0];                                          \
        T acc = 0;                                                            \
        for (int64_t e = 0; e < E; e++) acc += gp[e * gs[1]] * hp[e * hs[2]]; \
        O[b * U + u] = acc;                                                   \
      }                                                                       \
  } while (0)

#define MIX_BWD(T)                                                                                                  \
  do {                                                                                                              \
    const T *H = (const T *)moe_data(h), *G = (const T *)moe_data(g);                                               \
    const T *GO = (const T *)moe_data(go);                                                                          \
    T *GH = gh ? (T *)moe_data(gh) : NULL, *GG = gg ? (T *)moe_data(gg) : NULL;                                     \
    for (int64_t b = 0; b < B; b++) {                                                                               \
      const T *gp = G + b * gs[0];                                                                                  \
      const T *op = GO + b * os[0];                                                                                 \
      if (GH)                                                                                                       \
        for (int64_t u = 0; u < U; u++)                                                                             \
          for (int64_t e = 0; e < E; e++) GH[b * ghs[0] + u * ghs[1] + e * ghs[2]] = gp[e * gs[1]] * op[u * os[1]]; \
      if (GG)                                                                                                       \
        for (int64_t e = 0; e < E; e++) {                                                                           \
          const T *hp = H + b * hs[0] + e * hs[2];                                                                  \
          T acc = 0;                                                                                                \
          for (int64_t u = 0; u < U; u++) acc += hp[u * hs[1]] * op[u * os[1]];                                     \
          GG[b * E + e] = acc;                                                                                      \
        }                                                                                                           \
    }                                                                                                               \
  } while (0)

/* out [B,U] contiguous = sum_e g[b,e] h[b,u,e]; h, g with any strides */
void moe_cpu_mixture(moe_tensor *out, const moe_tensor *h, const moe_tensor *g) {
  int64_t B = h->shape[0], U = h->shape[1], E = h->shape[2];
  const int64_t *hs = h->stride, *gs = g->stride;
  if (h->dtype == MOE_F32) MIX_FWD(float);
  else MIX_FWD(double);
}

/* gh (NULL, or [B,U,E] with its own strides) and gg (NULL, or [B,E] contiguous) of go [B,U] */
void moe_cpu_mixture_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                              const moe_tensor *g) {
  int64_t B = h->shape[0], U = h->shape[1], E = h->shape[2];
  const int64_t *hs = h->stride, *gs = g->stride, *os = go->stride;
  int64_t ghs[3] = {U * E, E, 1};
  if (gh) memcpy(ghs, gh->stride, sizeof ghs);
  if (h->dtype == MOE_F32) MIX_BWD(float);
  else MIX_BWD(double);
}

/* Rows are split across the thread pool from GS_PAR_MIN elements on. */
#define GS_PAR_MIN 65536
typedef struct {
  int64_t B, E, U, W, parts;
  int relu, append;
  moe_dtype dt;
  const char *h, *g, *go;
  char *out, *gh, *gg;
} gs_job;

#define GS_FWD(T)                                                                                 \
  do {                                                                                            \
    const T *H = (const T *)j->h, *G = (const T *)j->g;                                           \
    T *O = (T *)j->out;                                                                           \
    for (int64_t b = b0; b < b1; b++) {                                                           \
      const T *hp = H + b * E * U, *gp = G + b * E;                                               \
      T *op = O + b * W;                                                                          \
      for (int64_t e = 0; e < E; e++) {                                                           \
        T ge = gp[e];                                                                             \
        if (j->relu) {                                                                            \
          _Pragma("omp simd") for (int64_t u = 0; u < U; u++) {                                   \
            T v = hp[e * U + u];                                                                  \
            op[e * U + u] = (v > 0 ? v : 0) * ge;                                                 \
          }                                                                                       \
        } else {                                                                                  \
          _Pragma("omp simd") for (int64_t u = 0; u < U; u++) op[e * U + u] = hp[e * U + u] * ge; \
        }                                                                                         \
      }                                                                                           \
      if (j->append)                                                                              \
        for (int64_t e = 0; e < E; e++) op[E * U + e] = gp[e];                                    \
    }                                                                                             \
  } while (0)

/* branch-free inner loops (relu's mask is a select, the gate's sum a SIMD reduction):
 * with random signs a branch per element mispredicts half the time */
#define GS_BWD(T)                                                                                        \
  do {                                                                                                   \
    const T *H = (const T *)j->h, *G = (const T *)j->g, *GO = (const T *)j->go;                          \
    T *GH = (T *)j->gh, *GG = (T *)j->gg;                                                                \
    for (int64_t b = b0; b < b1; b++) {                                                                  \
      const T *gp = G + b * E;                                                                           \
      for (int64_t e = 0; e < E; e++) {                                                                  \
        const T *hp = H + b * E * U + e * U, *op = GO + b * W + e * U;                                   \
        T ge = gp[e];                                                                                    \
        if (GH) {                                                                                        \
          T *ghp = GH + b * E * U + e * U;                                                               \
          if (j->relu) {                                                                                 \
            _Pragma("omp simd") for (int64_t u = 0; u < U; u++) {                                        \
              T d = op[u] * ge;                                                                          \
              ghp[u] = hp[u] > 0 ? d : 0;                                                                \
            }                                                                                            \
          } else {                                                                                       \
            _Pragma("omp simd") for (int64_t u = 0; u < U; u++) ghp[u] = op[u] * ge;                     \
          }                                                                                              \
        }                                                                                                \
        if (GG) {                                                                                        \
          T acc = 0;                                                                                     \
          if (j->relu) {                                                                                 \
            _Pragma("omp simd reduction(+ : acc)") for (int64_t u = 0; u < U; u++) acc +=                \
                op[u] * (hp[u] > 0 ? hp[u] : 0);                                                         \
          } else {                                                                                       \
            _Pragma("omp simd reduction(+ : acc)") for (int64_t u = 0; u < U; u++) acc += op[u] * hp[u]; \
          }                                                                                              \
          GG[b * E + e] = acc + (j->append ? GO[b * W + E * U + e] : 0);                                 \
        }                                                                                                \
      }                                                                                                  \
    }                                                                                                    \
  } while (0)

static void gs_fwd_part(void *ctx, int p) {
  const gs_job *j = ctx;
  int64_t E = j->E, U = j->U, W = j->W, b0 = j->B * p / j->parts, b1 = j->B * (p + 1) / j->parts;
  if (j->dt == MOE_F32) GS_FWD(float);
  else GS_FWD(double);
}

static void gs_bwd_part(void *ctx, int p) {
  const gs_job *j = ctx;
  int64_t E = j->E, U = j->U, W = j->W, b0 = j->B * p / j->parts, b1 = j->B * (p + 1) / j->parts;
  if (j->dt == MOE_F32) GS_BWD(float);
  else GS_BWD(double);
}

static void gs_run(gs_job *j, moe_task_fn fn) {
  int nth = moe_cpu_threads();
  j->parts = j->B * j->W >= GS_PAR_MIN && nth > 1 && j->B >= nth ? nth : 1;
  moe_cpu_parallel((int)j->parts, fn, j);
}

/* the job over contiguous h [B, E*U] and g [B,E] (its outputs set by the caller) */
static gs_job gs_job_of(const moe_tensor *h, const moe_tensor *g, int relu, int append) {
  int64_t E = g->shape[1], U = h->shape[1] / E;
  gs_job j = {.B = h->shape[0], .E = E, .U = U, .W = E * U + (append ? E : 0), .relu = relu, .append = append};
  j.dt = h->dtype;
  j.h = moe_data(h);
  j.g = moe_data(g);
  return j;
}

/* out [B, E*U (+E)] of contiguous h [B, E*U] and g [B,E] */
void moe_cpu_gate_scale(moe_tensor *out, const moe_tensor *h, const moe_tensor *g, int relu, int append) {
  gs_job j = gs_job_of(h, g, relu, append);
  j.out = moe_data(out);
  gs_run(&j, gs_fwd_part);
}

/* gh [B, E*U] and gg [B,E] (either may be NULL) of contiguous go, h, g */
void moe_cpu_gate_scale_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                                 const moe_tensor *g, int relu, int append) {
  gs_job j = gs_job_of(h, g, relu, append);
  j.go = moe_data(go);
  j.gh = gh ? moe_data(gh) : NULL;
  j.gg = gg ? moe_data(gg) : NULL;
  gs_run(&j, gs_bwd_part);
}

/* ---------------------------------------------------------------- the routing plan */

/* the plan of moe_route_plan (src/nn/routing.c, which says what it is) over
 * contiguous ei [G,T,K], od [G,T] (or NULL), vd [G,T] (or NULL): kept pairs
 * in placement order, then a stable counting sort by expert. The outputs are
 * made here (their length is the kept count). 0, or -1 with an error. */
int moe_cpu_route_plan(const moe_tensor *ei, const moe_tensor *od, const moe_tensor *vd, int64_t E, int64_t capacity,
                       int64_t ibase, moe_tensor **token, moe_tensor **expert, moe_tensor **rank, moe_tensor **counts) {
  int64_t G = ei->shape[0], T = ei->shape[1], K = ei->shape[2];
  int64_t n = G * T * K;
  int64_t *pair_e = malloc(sizeof(int64_t) * (size_t)(n ? n : 1) * 3);
  int64_t *cnt = calloc((size_t)E, sizeof(int64_t)), *fill = calloc((size_t)E, sizeof(int64_t));
  int64_t *start = calloc((size_t)E + 1, sizeof(int64_t));
  int rc = -1;
  *token = *expert = *rank = *counts = NULL;
  if (!pair_e || !cnt || !fill || !start) {
    moe_error("route_plan: out of memory");
    goto done;
  }
  const int64_t *ix = (const int64_t *)moe_data(ei), *ord = od ? (const int64_t *)moe_data(od) : NULL;
  const uint8_t *ok = vd ? (const uint8_t *)moe_data(vd) : NULL;
  int64_t *pair_t = pair_e + n, *pair_r = pair_e + 2 * n, kept = 0;
  /* 1. capacity and priority, group by group: kept pairs in placement order */
  for (int64_t g = 0; g < G; g++) {
    memset(fill, 0, sizeof(int64_t) * (size_t)E);
    for (int64_t r = 0; r < K; r++)
      for (int64_t p = 0; p < T; p++) {
        int64_t t = ord ? ord[g * T + p] - ibase : p;
        if (t < 0 || t >= T) {
          moe_error("route_plan: order holds %lld, outside 1..%lld", (long long)(t + ibase), (long long)T);
          goto done;
        }
        if (ok && !ok[g * T + t]) continue;
        int64_t e = ix[(g * T + t) * K + r] - ibase;
        if (e < 0 || e >= E) {
          moe_error("route_plan: expert index %lld outside 1..%lld", (long long)(e + ibase), (long long)E);
          goto done;
        }
        if (capacity >= 0 && fill[e] >= capacity) continue; /* dropped */
        fill[e]++;
        pair_e[kept] = e;
        pair_t[kept] = g * T + t;
        pair_r[kept] = r;
        kept++;
      }
  }
  /* 2. a stable counting sort by expert */
  for (int64_t i = 0; i < kept; i++) cnt[pair_e[i]]++;
  for (int64_t e = 0; e < E; e++) start[e + 1] = start[e] + cnt[e];
  int64_t ashape[1] = {kept}, eshape[1] = {E};
  *token = moe_empty(1, ashape, MOE_I64);
  *expert = moe_empty(1, ashape, MOE_I64);
  *rank = moe_empty(1, ashape, MOE_I64);
  *counts = moe_empty(1, eshape, MOE_I64);
  if (!*token || !*expert || !*rank || !*counts) goto done;
  int64_t *ot = (int64_t *)moe_data(*token), *oe = (int64_t *)moe_data(*expert), *orr = (int64_t *)moe_data(*rank);
  memcpy(moe_data(*counts), cnt, sizeof(int64_t) * (size_t)E);
  memset(fill, 0, sizeof(int64_t) * (size_t)E);
  for (int64_t i = 0; i < kept; i++) {
    int64_t e = pair_e[i], at = start[e] + fill[e]++;
    ot[at] = pair_t[i] + ibase;
    oe[at] = e + ibase;
    orr[at] = pair_r[i] + ibase;
  }
  rc = 0;
done:
  if (rc) {
    moe_tensor_release(*token);
    moe_tensor_release(*expert);
    moe_tensor_release(*rank);
    moe_tensor_release(*counts);
    *token = *expert = *rank = *counts = NULL;
  }
  free(pair_e);
  free(cnt);
  free(fill);
  free(start);
  return rc;
}

/* ---------------------------------------------------------------- grouped GEMM */

/* Experts run in parallel on the thread pool, each GEMM on one OpenBLAS
 * thread, when no expert holds much more than its share of the rows: one core
 * per GEMM spends nothing on OpenBLAS's hand-offs. An expert with most of the
 * rows gets every thread through OpenBLAS instead. */
typedef struct {
  const int64_t *counts, *offs;
  int64_t K, N;
  size_t es;
  moe_dtype dt;
  int bf16;                  /* the GEMMs in bf16 (float32 only) */
  const char *x, *w, *b, *g; /* forward: x, w, b (or NULL); backward: x, w, g */
  char *y, *gx, *gw, *gb;    /* forward: y; backward: the gradients (or NULL) */
} grouped_job;

static int use_pool(int64_t E, const int64_t *counts, int64_t total) {
  int nth = moe_cpu_threads();
  if (nth < 2 || E < 2) return 0;
  int64_t mx = 0;
  for (int64_t e = 0; e < E; e++) mx = counts[e] > mx ? counts[e] : mx;
  return (double)mx * nth <= 1.5 * (double)total;
}

static void run_experts(const grouped_job *j, int64_t E, int pool, moe_task_fn fn) {
  if (pool) {
    moe_cpu_gemm_serial(1);
    moe_cpu_parallel((int)E, fn, (void *)j);
    moe_cpu_gemm_serial(0);
  } else {
    for (int64_t e = 0; e < E; e++) fn((void *)j, (int)e);
  }
}

/* C [M,N] (+= when acc) = A @ B for one expert, in the job's precision */
static void expert_gemm(const grouped_job *j, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm, int64_t sAk,
                        const char *B, int64_t sBk, int64_t sBn, char *C, int acc) {
  if (j->bf16) moe_cpu_gemm_bf16(1, M, N, K, A, 0, sAm, sAk, B, 0, sBk, sBn, C, 0, acc);
  else if (acc) moe_cpu_gemm_add(j->dt, M, N, K, A, sAm, sAk, B, sBk, sBn, C);
  else moe_cpu_gemm_batched(j->dt, 1, M, N, K, A, 0, sAm, sAk, B, 0, sBk, sBn, C, 0);
}

/* rows of group e: y_e [m,N] = x_e [m,K] @ w_e [K,N] (+ b_e [N]) */
static void grouped_fwd_expert(void *ctx, int e) {
  const grouped_job *j = ctx;
  int64_t m = j->counts[e], off = j->offs[e], K = j->K, N = j->N;
  size_t es = j->es;
  char *ye = j->y + (size_t)(off * N) * es;
  const char *xe = j->x + (size_t)(off * K) * es, *we = j->w + (size_t)((int64_t)e * K * N) * es;
  if (!m) return;
  if (j->b) { /* rows start as the bias, then C += A B */
    const char *be = j->b + (size_t)((int64_t)e * N) * es;
    for (int64_t r = 0; r < m; r++) memcpy(ye + (size_t)(r * N) * es, be, (size_t)N * es);
    expert_gemm(j, m, N, K, xe, K, 1, we, N, 1, ye, 1);
  } else {
    expert_gemm(j, m, N, K, xe, K, 1, we, N, 1, ye, 0);
  }
}

static void grouped_bwd_expert(void *ctx, int e) {
  const grouped_job *j = ctx;
  int64_t m = j->counts[e], off = j->offs[e], K = j->K, N = j->N;
  size_t es = j->es;
  const char *ge = j->g + (size_t)(off * N) * es, *we = j->w + (size_t)((int64_t)e * K * N) * es;
  if (j->gx && m) /* gx_e [m,K] = g_e [m,N] @ w_e^T [N,K] */
    expert_gemm(j, m, K, N, ge, N, 1, we, 1, N, j->gx + (size_t)(off * K) * es, 0);
  if (j->gw && m) /* gw_e [K,N] = x_e^T [K,m] @ g_e [m,N] */
    expert_gemm(j, K, N, m, j->x + (size_t)(off * K) * es, 1, K, ge, N, 1, j->gw + (size_t)((int64_t)e * K * N) * es,
                0);
  else if (j->gw) /* an expert without tokens gets a zero gradient */
    memset(j->gw + (size_t)((int64_t)e * K * N) * es, 0, (size_t)(K * N) * es);
  if (j->gb && m) { /* gb_e [N] = column sums of g_e */
    if (j->dt == MOE_F32) {
      const float *G = (const float *)ge;
      float *o = (float *)j->gb + (int64_t)e * N;
      for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < N; c++) o[c] += G[r * N + c];
    } else {
      const double *G = (const double *)ge;
      double *o = (double *)j->gb + (int64_t)e * N;
      for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < N; c++) o[c] += G[r * N + c];
    }
  }
}

/* the job over contiguous x [A,K] and w [E,K,N] (the rest set by the caller) */
static grouped_job grouped_job_of(const moe_tensor *x, const moe_tensor *w, const int64_t *counts, const int64_t *offs,
                                  int bf16) {
  grouped_job j = {.counts = counts, .offs = offs, .K = w->shape[1], .N = w->shape[2], .bf16 = bf16};
  j.es = moe_dtype_size(x->dtype);
  j.dt = x->dtype;
  j.x = moe_data(x);
  j.w = moe_data(w);
  return j;
}

/* y [A,N] = x_e @ w[e] (+ b[e]) over the row groups of counts/offs; x, w, b contiguous */
void moe_cpu_grouped_gemm(moe_tensor *y, const moe_tensor *x, const moe_tensor *w, const moe_tensor *b,
                          const int64_t *counts, const int64_t *offs, int bf16) {
  grouped_job j = grouped_job_of(x, w, counts, offs, bf16);
  j.b = b ? moe_data(b) : NULL;
  j.y = moe_data(y);
  run_experts(&j, w->shape[0], use_pool(w->shape[0], counts, x->shape[0]), grouped_fwd_expert);
}

/* gx = g w[e]^T, gw[e] = x_e^T g_e, gb[e] += column sums of g_e (each may be NULL; gb starts at 0) */
void moe_cpu_grouped_gemm_backward(moe_tensor *gx, moe_tensor *gw, moe_tensor *gb, const moe_tensor *g,
                                   const moe_tensor *x, const moe_tensor *w, const int64_t *counts, const int64_t *offs,
                                   int bf16) {
  grouped_job j = grouped_job_of(x, w, counts, offs, bf16);
  j.g = moe_data(g);
  j.gx = gx ? moe_data(gx) : NULL;
  j.gw = gw ? moe_data(gw) : NULL;
  j.gb = gb ? moe_data(gb) : NULL;
  run_experts(&j, w->shape[0], use_pool(w->shape[0], counts, x->shape[0]), grouped_bwd_expert);
}
