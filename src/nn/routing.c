/* routing.c -- sparse MoE: the tokens-choose routing plan and the grouped GEMM
 * the experts run on. See lua/moe/sparse.lua for the layers around them.
 *
 * moe_route_plan: capacity and priority, as the TF Model Garden / flaxformer
 * routers define them. Per group, every token's 1st choice is placed before any
 * token's 2nd choice; within a rank, tokens go in `order` (token order, or by
 * descending top-1 probability for batch-prioritized routing). A (token, expert)
 * pair whose expert already holds `capacity` pairs of that group is dropped.
 * The kept pairs come back sorted by expert (then group, rank and priority):
 * the rows each expert's GEMM reads are contiguous. No [T,E,C] one-hot tensor
 * is ever built.
 *
 * moe_grouped_matmul: y [A,N] = x [A,K] @ w[e] [K,N] over consecutive row
 * groups of sizes counts[e]; backward gx = g w[e]^T, gw[e] = x_e^T g_e. With
 * MOE_PREC_BF16 (float32) all three GEMMs run on operands rounded to bfloat16
 * with fp32 sums (src/cpu/bf16.c); the bias and its gradient stay fp32. */
#include "../core/moe.h"
#include "../core/dispatch.h"
#include "../cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

int moe_route_plan(const moe_tensor *expert_index, const moe_tensor *order, const moe_tensor *valid,
                   int64_t E, int64_t capacity, int64_t ibase, moe_tensor **token, moe_tensor **expert,
                   moe_tensor **rank, moe_tensor **counts) {
  char b1[160], b2[160];
  const moe_tensor *ins[3] = {expert_index, order, valid};
  if (moe_same_device("route_plan", 3, ins) ||
      moe_backend_require("route_plan", expert_index->device, MOE_KERNEL_route_plan))
    return -1;
  if (expert_index->ndim != 3 || expert_index->dtype != MOE_I64)
    return moe_error("route_plan: expert_index must be int64 [groups, tokens, k], got %s %s",
                     moe_dtype_name(expert_index->dtype), moe_shape_str(expert_index, b1));
  int64_t G = expert_index->shape[0], T = expert_index->shape[1], K = expert_index->shape[2];
  if (order && (order->ndim != 2 || order->shape[0] != G || order->shape[1] != T || order->dtype != MOE_I64))
    return moe_error("route_plan: order must be int64 [%lld, %lld], got %s %s", (long long)G, (long long)T,
                     moe_dtype_name(order->dtype), moe_shape_str(order, b2));
  if (valid && (valid->ndim != 2 || valid->shape[0] != G || valid->shape[1] != T || valid->dtype != MOE_BOOL))
    return moe_error("route_plan: valid must be bool [%lld, %lld], got %s", (long long)G, (long long)T,
                     moe_shape_str(valid, b2));
  if (E < 1) return moe_error("route_plan: need at least one expert, got %lld", (long long)E);
  moe_tensor *ei = moe_contiguous(expert_index), *od = order ? moe_contiguous(order) : NULL;
  moe_tensor *vd = valid ? moe_contiguous(valid) : NULL;
  int64_t n = G * T * K;
  int64_t *pair_e = malloc(sizeof(int64_t) * (size_t)(n ? n : 1) * 3);
  int64_t *cnt = calloc((size_t)E, sizeof(int64_t)), *fill = calloc((size_t)E, sizeof(int64_t));
  int64_t *start = calloc((size_t)E + 1, sizeof(int64_t));
  int rc = -1;
  *token = *expert = *rank = *counts = NULL;
  if (!ei || (order && !od) || (valid && !vd) || !pair_e || !cnt || !fill || !start) {
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
        if (t < 0 || t >= T) { moe_error("route_plan: order holds %lld, outside 1..%lld", (long long)(t + ibase), (long long)T); goto done; }
        if (ok && !ok[g * T + t]) continue;
        int64_t e = ix[(g * T + t) * K + r] - ibase;
        if (e < 0 || e >= E) { moe_error("route_plan: expert index %lld outside 1..%lld", (long long)(e + ibase), (long long)E); goto done; }
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
    moe_tensor_release(*token); moe_tensor_release(*expert); moe_tensor_release(*rank); moe_tensor_release(*counts);
    *token = *expert = *rank = *counts = NULL;
  }
  moe_tensor_release(ei); moe_tensor_release(od); moe_tensor_release(vd);
  free(pair_e); free(cnt); free(fill); free(start);
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
  int bf16;                      /* the GEMMs in bf16 (float32 only) */
  const char *x, *w, *b, *g;     /* forward: x, w, b (or NULL); backward: x, w, g */
  char *y, *gx, *gw, *gb;        /* forward: y; backward: the gradients (or NULL) */
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
static void expert_gemm(const grouped_job *j, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm,
                        int64_t sAk, const char *B, int64_t sBk, int64_t sBn, char *C, int acc) {
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
    expert_gemm(j, K, N, m, j->x + (size_t)(off * K) * es, 1, K, ge, N, 1, j->gw + (size_t)((int64_t)e * K * N) * es, 0);
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

static int grouped_backward(moe_node *n, const moe_tensor *g0, moe_tensor **gin) {
  if (moe_backend_require("grouped_matmul backward", g0->device, MOE_KERNEL_grouped_gemm_backward)) return -1;
  const moe_tensor *x = moe_node_saved(n, 0), *w = moe_node_saved(n, 1), *cn = moe_node_saved(n, 2);
  if (!x || !w || !cn) return -1;
  moe_tensor *g = moe_contiguous(g0);
  if (!g) return -1;
  int64_t E = w->shape[0], K = w->shape[1], N = w->shape[2];
  const int64_t *counts = (const int64_t *)moe_data(cn);
  int64_t bshape[2] = {E, N};
  moe_tensor *gx = moe_node_needs(n, 0) ? moe_empty_on(x->device, 2, x->shape, x->dtype) : NULL;
  moe_tensor *gw = moe_node_needs(n, 1) ? moe_empty_on(w->device, 3, w->shape, w->dtype) : NULL; /* each slice written below */
  moe_tensor *gb = n->nin > 2 && moe_node_needs(n, 2) ? moe_full_on(w->device, 2, bshape, w->dtype, 0.0) : NULL;
  int64_t *offs = malloc(sizeof(int64_t) * (size_t)(E ? E : 1));
  if ((moe_node_needs(n, 0) && !gx) || (moe_node_needs(n, 1) && !gw) ||
      (n->nin > 2 && moe_node_needs(n, 2) && !gb) || !offs) {
    moe_tensor_release(g); moe_tensor_release(gx); moe_tensor_release(gw); moe_tensor_release(gb);
    free(offs);
    return -1;
  }
  int64_t total = 0;
  for (int64_t e = 0; e < E; e++) { offs[e] = total; total += counts[e]; }
  grouped_job j = {.counts = counts, .offs = offs, .K = K, .N = N, .es = moe_dtype_size(x->dtype),
                   .dt = x->dtype, .bf16 = n->iarg[0] == MOE_PREC_BF16 && x->dtype == MOE_F32,
                   .x = moe_data(x), .w = moe_data(w), .g = moe_data(g),
                   .gx = gx ? moe_data(gx) : NULL, .gw = gw ? moe_data(gw) : NULL,
                   .gb = gb ? moe_data(gb) : NULL};
  run_experts(&j, E, use_pool(E, counts, total), grouped_bwd_expert);
  free(offs);
  moe_tensor_release(g);
  gin[0] = gx;
  gin[1] = gw;
  if (n->nin > 2) gin[2] = gb;
  return 0;
}

moe_tensor *moe_grouped_matmul(const moe_tensor *x0, const moe_tensor *w0, const moe_tensor *b0,
                               const moe_tensor *counts, moe_precision prec) {
  char b1[160], b2[160], b3[160];
  const moe_tensor *all[4] = {x0, w0, b0, counts};
  if (moe_same_device("grouped_matmul", 4, all) ||
      moe_backend_require("grouped_matmul", x0->device, MOE_KERNEL_grouped_gemm))
    return NULL;
  if (x0->ndim != 2 || w0->ndim != 3 || counts->ndim != 1 || counts->dtype != MOE_I64 ||
      counts->shape[0] != w0->shape[0] || x0->shape[1] != w0->shape[1] || x0->dtype != w0->dtype ||
      !moe_dtype_is_float(x0->dtype) ||
      (b0 && (b0->ndim != 2 || b0->shape[0] != w0->shape[0] || b0->shape[1] != w0->shape[2] || b0->dtype != w0->dtype))) {
    moe_error("grouped_matmul: rows [A,K] %s, weights [E,K,N] %s, bias [E,N] and int64 counts [E] %s do "
              "not fit (one float dtype)", moe_shape_str(x0, b1), moe_shape_str(w0, b2), moe_shape_str(counts, b3));
    return NULL;
  }
  moe_tensor *cn = moe_contiguous(counts);
  if (!cn) return NULL;
  const int64_t *c = (const int64_t *)moe_data(cn);
  int64_t total = 0, E = w0->shape[0], K = w0->shape[1], N = w0->shape[2];
  for (int64_t e = 0; e < E; e++) {
    if (c[e] < 0) { moe_error("grouped_matmul: negative count %lld for expert %lld", (long long)c[e], (long long)e + 1); moe_tensor_release(cn); return NULL; }
    total += c[e];
  }
  if (total != x0->shape[0]) {
    moe_error("grouped_matmul: counts add up to %lld rows but x has %lld", (long long)total, (long long)x0->shape[0]);
    moe_tensor_release(cn);
    return NULL;
  }
  int prev = moe_set_grad_enabled(0);
  moe_tensor *x = moe_contiguous(x0), *w = x ? moe_contiguous(w0) : NULL;
  moe_tensor *b = w && b0 ? moe_contiguous(b0) : NULL;
  moe_set_grad_enabled(prev);
  int64_t oshape[2] = {total, N};
  moe_tensor *y = w && (!b0 || b) ? moe_empty_on(x0->device, 2, oshape, x0->dtype) : NULL;
  int64_t *offs = y ? malloc(sizeof(int64_t) * (size_t)(E ? E : 1)) : NULL;
  if (y && !offs) {
    moe_error("grouped_matmul: out of memory");
    moe_tensor_release(y);
    y = NULL;
  }
  if (y) {
    int64_t off = 0;
    for (int64_t e = 0; e < E; e++) { offs[e] = off; off += c[e]; }
    grouped_job j = {.counts = c, .offs = offs, .K = K, .N = N, .es = moe_dtype_size(x->dtype),
                     .dt = x->dtype, .bf16 = prec == MOE_PREC_BF16 && x->dtype == MOE_F32,
                     .x = moe_data(x), .w = moe_data(w), .b = b ? moe_data(b) : NULL,
                     .y = moe_data(y)};
    run_experts(&j, E, use_pool(E, c, total), grouped_fwd_expert);
  }
  free(offs);
  const moe_tensor *ins[3] = {x0, w0, b0};
  int nin = b0 ? 3 : 2;
  if (y && moe_ag_wants(nin, ins)) {
    moe_node *n = moe_node_new("grouped_matmul", grouped_backward, nin, ins);
    if (n) n->iarg[0] = prec;
    if (n && (moe_node_save(n, 0, x) || moe_node_save(n, 1, w) || moe_node_save(n, 2, cn))) {
      moe_node_release(n);
      n = NULL;
    }
    y = moe_ag_attach(y, n);
  }
  moe_tensor_release(x);
  moe_tensor_release(w);
  moe_tensor_release(b);
  moe_tensor_release(cn);
  return y;
}
