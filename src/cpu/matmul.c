/* matmul.c -- batched GEMM on OpenBLAS.
 *
 * C[b] [M,N] = A[b] [M,K] @ B[b] [K,N], row-major C. A and B may be transposed
 * views: a matrix whose column stride is 1 is passed as NoTrans with lda = row
 * stride, one whose row stride is 1 as Trans with lda = column stride. */
#include "cpu.h"
#include "sgemm_lib.h"

#include <cblas.h>
#include <string.h>

static void mat_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, CBLAS_TRANSPOSE *tr, int64_t *ld) {
  if (cs == 1 && (rs >= cols || rows == 1)) {
    *tr = CblasNoTrans;
    *ld = rows == 1 ? (cols > 1 ? cols : 1) : rs;
  } else {
    *tr = CblasTrans;
    *ld = cols == 1 ? (rows > 1 ? rows : 1) : cs;
  }
  if (*ld < 1) *ld = 1;
}

/* OpenBLAS splits every GEMM across its threads. Below a few million
 * multiply-adds the hand-off costs more than it saves (a 32x499x32 GEMM took
 * 32 us on 2 threads, 17 us on one); so it does for thin GEMMs (one of M, N, K
 * at most 64) below 5e7 (1024x64x256 ran at 44-58 GFLOP/s on two threads,
 * 52-64 on one, while 256^3 runs 1.7x faster on two). Those run on one thread.
 * (Splitting them ourselves into single-threaded OpenBLAS calls on two threads
 * was slower still on the 2-core machine it was measured on.) */
#define MOE_GEMM_SMALL 4.0e6
#define MOE_GEMM_THIN_DIM 64
#define MOE_GEMM_THIN 5.0e7
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);

static int max_threads = 0, current = 0, serial_mode = 0;

/* on: every GEMM runs on one OpenBLAS thread, unsplit, until off again; for
 * callers that run independent GEMMs in parallel on the pool themselves */
void moe_cpu_gemm_serial(int on) {
  if (on) moe_cpu_openblas_threads(1);
  serial_mode = on;
}

/* 1 while serial mode is on (read by the bf16 GEMMs of bf16.c, whose oneDNN runs its own threads) */
int moe_cpu_gemm_is_serial(void) { return serial_mode; }

static int start_threads = 0; /* OpenBLAS's own count, before any change */

int moe_cpu_openblas_max_threads(void) {
  if (!start_threads) start_threads = openblas_get_num_threads();
  if (!max_threads) current = max_threads = start_threads;
  return max_threads;
}

void moe_cpu_openblas_set_max_threads(int n) {
  moe_cpu_openblas_max_threads();
  max_threads = n > 0 ? n : start_threads;
  moe_cpu_openblas_threads(0);
}

/* OpenBLAS's thread count: n, or (0) all of them */
void moe_cpu_openblas_threads(int n) {
  int want = n > 0 ? n : moe_cpu_openblas_max_threads();
  if (want != current) {
    openblas_set_num_threads(want);
    current = want;
  }
}

/* after OpenBLAS's threads were stopped: set its count again at the next call */
void moe_cpu_openblas_threads_unknown(void) { current = -1; }

/* sets OpenBLAS's thread count for this GEMM; returns 1 when it runs on one.
 * A multi-threaded float32 GEMM (f32) leaves it to sgemm_lib.c, whose chosen
 * library sets its own. */
static int gemm_threads(int64_t M, int64_t N, int64_t K, int f32) {
  if (serial_mode) return 0;
  double work = (double)M * (double)N * (double)K;
  int64_t lo = M < N ? (M < K ? M : K) : (N < K ? N : K);
  /* (a process on one thread runs every GEMM as a single-threaded one: on OpenBLAS, never timed against the
   * other libraries, so that its results are the same bits in every such process) */
  int one = moe_cpu_threads() < 2 || work < MOE_GEMM_SMALL || (lo <= MOE_GEMM_THIN_DIM && work < MOE_GEMM_THIN);
  if (!one && f32) return 0;
  moe_cpu_openblas_threads(one ? 1 : 0);
  if (!one) moe_sgemm_note_openblas_threads(); /* a float64 GEMM on OpenBLAS's threads */
  return one;
}

typedef struct {
  moe_dtype dt;
  CBLAS_TRANSPOSE ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  const char *a, *b;
  char *c;
  int accumulate;
  int tuned; /* a multi-threaded float32 GEMM: on its shape class's library (sgemm_lib.c) */
} gemm_call;

/* small narrow float32 GEMMs (N a multiple of 8 up to 64, B not transposed,
 * up to 2e6 multiply-adds) go to small_gemm.c's register-blocked kernel:
 * 32x499x8 ran at 30-39 GFLOP/s through OpenBLAS, 49-54 there; 32x499x32 at
 * 53-63, 65 there. (Larger ones, e.g. TabularMoELayer's 1024x264x64, were
 * not clearly faster there on the shared development VM: OpenBLAS keeps them.) */
#define MOE_SMALL_GEMM_MAX_WORK 2.0e6

static void gemm_run(const gemm_call *g) {
  if (g->dt == MOE_F32 && g->tb == CblasNoTrans && moe_cpu_small_gemm_ok(g->N) &&
      (double)g->M * (double)g->N * (double)g->K <= MOE_SMALL_GEMM_MAX_WORK) {
    int64_t sam = g->ta == CblasNoTrans ? g->lda : 1, sak = g->ta == CblasNoTrans ? 1 : g->lda;
    moe_cpu_small_gemm(g->M, g->N, g->K, (const float *)g->a, sam, sak, (const float *)g->b, g->ldb, (float *)g->c,
                       g->ldc, g->accumulate);
    return;
  }
  if (g->tuned) {
    moe_sgemm_args a = {.ta = g->ta != CblasNoTrans,
                        .tb = g->tb != CblasNoTrans,
                        .accumulate = g->accumulate,
                        .M = g->M,
                        .N = g->N,
                        .K = g->K,
                        .lda = g->lda,
                        .ldb = g->ldb,
                        .ldc = g->ldc,
                        .A = (const float *)g->a,
                        .B = (const float *)g->b,
                        .C = (float *)g->c};
    moe_sgemm_run(&a, moe_cpu_openblas_max_threads());
    return;
  }
  if (g->dt == MOE_F32)
    cblas_sgemm(CblasRowMajor, g->ta, g->tb, (int)g->M, (int)g->N, (int)g->K, 1.0f, (const float *)g->a, (int)g->lda,
                (const float *)g->b, (int)g->ldb, g->accumulate ? 1.0f : 0.0f, (float *)g->c, (int)g->ldc);
  else
    cblas_dgemm(CblasRowMajor, g->ta, g->tb, (int)g->M, (int)g->N, (int)g->K, 1.0, (const double *)g->a, (int)g->lda,
                (const double *)g->b, (int)g->ldb, g->accumulate ? 1.0 : 0.0, (double *)g->c, (int)g->ldc);
}

static void gemm_part(void *parts, int i) { gemm_run((const gemm_call *)parts + i); }

/* The GEMMs that run on one OpenBLAS thread (above) are split here instead
 * when they are worth it: rows (or columns) in equal blocks, one
 * single-threaded OpenBLAS call per block on the thread pool (OpenBLAS is safe
 * to call from several threads when each call runs on one). Two blocks of
 * 1024x64x256 ran ~1.8x faster than one call; OpenBLAS's own split of it was
 * no faster than one thread. */
#define MOE_GEMM_SPLIT 2.0e6
#define MOE_GEMM_MAX_PARTS 8

static void gemm_split(const gemm_call *g, size_t es, int nth, int64_t sAm, int64_t sBn) {
  int by_rows = g->M >= g->N;
  int64_t n = by_rows ? g->M : g->N;
  if (nth > MOE_GEMM_MAX_PARTS) nth = MOE_GEMM_MAX_PARTS;
  if (n < 16 * (int64_t)nth) {
    gemm_run(g);
    return;
  }
  gemm_call parts[MOE_GEMM_MAX_PARTS];
  for (int t = 0; t < nth; t++) {
    int64_t lo = n * t / nth, hi = n * (t + 1) / nth;
    parts[t] = *g;
    if (by_rows) {
      parts[t].M = hi - lo;
      parts[t].a = g->a + (size_t)(lo * sAm) * es;
      parts[t].c = g->c + (size_t)(lo * g->ldc) * es;
    } else {
      parts[t].N = hi - lo;
      parts[t].b = g->b + (size_t)(lo * sBn) * es;
      parts[t].c = g->c + (size_t)lo * es;
    }
  }
  moe_cpu_parallel(nth, gemm_part, parts);
}

/* the "OpenBLAS-split" library of sgemm_lib.c: a float32 GEMM as one
 * single-threaded OpenBLAS call per core, on row (or column) blocks, on the
 * thread pool (OpenBLAS's own 2-thread split of 256^3 ran 87-111 GFLOP/s on
 * the development VM, this one 120-130, interleaved in one process) */
int moe_cpu_sgemm_split(const moe_sgemm_args *a, int threads) {
  int nth = moe_cpu_threads() < threads ? moe_cpu_threads() : threads;
  int64_t n = a->M >= a->N ? a->M : a->N;
  if (nth > n / 16) nth = (int)(n / 16);
  gemm_call g = {.dt = MOE_F32,
                 .ta = a->ta ? CblasTrans : CblasNoTrans,
                 .tb = a->tb ? CblasTrans : CblasNoTrans,
                 .M = a->M,
                 .N = a->N,
                 .K = a->K,
                 .lda = a->lda,
                 .ldb = a->ldb,
                 .ldc = a->ldc,
                 .a = (const char *)a->A,
                 .b = (const char *)a->B,
                 .c = (char *)a->C,
                 .accumulate = a->accumulate};
  if (nth < 2) { /* too few rows and columns to split: OpenBLAS's own threads */
    moe_cpu_openblas_threads(0);
    gemm_run(&g);
    return 1;
  }
  moe_cpu_openblas_threads(1);
  /* a row of op(A) starts lda elements on (1 when A is stored transposed); a column of op(B), 1 (or ldb) */
  gemm_split(&g, sizeof(float), nth, a->ta ? 1 : a->lda, a->tb ? a->ldb : 1);
  return 0;
}

static void gemm_impl(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb,
                      int64_t sAm, int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C,
                      int64_t sCb, int accumulate) {
  size_t es = moe_dtype_size(dt);
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {
    if (!accumulate) memset(C, 0, (size_t)(batch * M * N) * es);
    return;
  }
  /* A is row-major across the whole batch and B is shared: one tall GEMM */
  if (batch > 1 && sBb == 0 && sAk == 1 && sAb == M * sAm && sAm >= K) {
    M *= batch;
    batch = 1;
  }
  int one = gemm_threads(M, N, K, dt == MOE_F32); /* 0 in serial mode: no split either */
  gemm_call g = {.dt = dt,
                 .M = M,
                 .N = N,
                 .K = K,
                 .ldc = N,
                 .accumulate = accumulate,
                 .tuned = dt == MOE_F32 && !one && !serial_mode};
  mat_layout(M, K, sAm, sAk, &g.ta, &g.lda);
  mat_layout(K, N, sBk, sBn, &g.tb, &g.ldb);
  int nth = moe_cpu_threads();
  int split = one && batch == 1 && nth > 1 && (double)M * (double)N * (double)K >= MOE_GEMM_SPLIT;
  for (int64_t i = 0; i < batch; i++) {
    g.a = A + (size_t)(i * sAb) * es;
    g.b = B + (size_t)(i * sBb) * es;
    g.c = C + (size_t)(i * sCb) * es;
    if (split) gemm_split(&g, es, nth, sAm, sBn);
    else gemm_run(&g);
  }
}

void moe_cpu_gemm_batched(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb,
                          int64_t sAm, int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C,
                          int64_t sCb) {
  gemm_impl(dt, batch, M, N, K, A, sAb, sAm, sAk, B, sBb, sBk, sBn, C, sCb, 0);
}

void moe_cpu_gemm_add(moe_dtype dt, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm, int64_t sAk,
                      const char *B, int64_t sBk, int64_t sBn, char *C) {
  gemm_impl(dt, 1, M, N, K, A, 0, sAm, sAk, B, 0, sBk, sBn, C, 0, 1);
}
