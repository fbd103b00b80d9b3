/* matmul.c -- batched GEMM on OpenBLAS.
 *
 * C[b] [M,N] = A[b] [M,K] @ B[b] [K,N], row-major C. A and B may be transposed
 * views: a matrix whose column stride is 1 is passed as NoTrans with lda = row
 * stride, one whose row stride is 1 as Trans with lda = column stride. */
#include "cpu.h"

#include <cblas.h>
#include <string.h>

static void mat_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, CBLAS_TRANSPOSE *tr,
                       int64_t *ld) {
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

static void gemm_threads(int64_t M, int64_t N, int64_t K) {
  static int max_threads = 0, current = 0;
  if (!max_threads) current = max_threads = openblas_get_num_threads();
  double work = (double)M * (double)N * (double)K;
  int64_t lo = M < N ? (M < K ? M : K) : (N < K ? N : K);
  int one = work < MOE_GEMM_SMALL || (lo <= MOE_GEMM_THIN_DIM && work < MOE_GEMM_THIN);
  int want = one ? 1 : max_threads;
  if (want != current) {
    openblas_set_num_threads(want);
    current = want;
  }
}

static void gemm_impl(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K,
                      const char *A, int64_t sAb, int64_t sAm, int64_t sAk,
                      const char *B, int64_t sBb, int64_t sBk, int64_t sBn,
                      char *C, int64_t sCb, int accumulate) {
  size_t es = moe_dtype_size(dt);
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) { if (!accumulate) memset(C, 0, (size_t)(batch * M * N) * es); return; }
  /* A is row-major across the whole batch and B is shared: one tall GEMM */
  if (batch > 1 && sBb == 0 && sAk == 1 && sAb == M * sAm && sAm >= K) {
    M *= batch;
    batch = 1;
  }
  gemm_threads(M, N, K);
  CBLAS_TRANSPOSE ta, tb;
  int64_t lda, ldb;
  mat_layout(M, K, sAm, sAk, &ta, &lda);
  mat_layout(K, N, sBk, sBn, &tb, &ldb);
  for (int64_t i = 0; i < batch; i++) {
    const char *a = A + (size_t)(i * sAb) * es, *b = B + (size_t)(i * sBb) * es;
    char *c = C + (size_t)(i * sCb) * es;
    if (dt == MOE_F32)
      cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, 1.0f, (const float *)a, (int)lda,
                  (const float *)b, (int)ldb, accumulate ? 1.0f : 0.0f, (float *)c, (int)N);
    else
      cblas_dgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, 1.0, (const double *)a, (int)lda,
                  (const double *)b, (int)ldb, accumulate ? 1.0 : 0.0, (double *)c, (int)N);
  }
}

void moe_cpu_gemm_batched(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K,
                          const char *A, int64_t sAb, int64_t sAm, int64_t sAk,
                          const char *B, int64_t sBb, int64_t sBk, int64_t sBn,
                          char *C, int64_t sCb) {
  gemm_impl(dt, batch, M, N, K, A, sAb, sAm, sAk, B, sBb, sBk, sBn, C, sCb, 0);
}

void moe_cpu_gemm_add(moe_dtype dt, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm,
                      int64_t sAk, const char *B, int64_t sBk, int64_t sBn, char *C) {
  gemm_impl(dt, 1, M, N, K, A, 0, sAm, sAk, B, 0, sBk, sBn, C, 0, 1);
}
