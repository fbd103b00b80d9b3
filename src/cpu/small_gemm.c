/* small_gemm.c -- float32 C [M,N] (+)= A [M,K] @ B [K,N] for narrow N (a
 * multiple of 8, at most 64) on AVX2+FMA, where OpenBLAS is slow: the census
 * MMoE's 32x499x8 gate GEMM ran at ~30 GFLOP/s through it, the call and
 * packing costs of a general kernel on a tiny output. Each block of 6 rows x
 * 16 columns (or 8 x 8) of C stays in registers while K streams through: B's
 * row p is loaded once per block and A's values are broadcast. A takes any
 * strides (a transposed view is the backward's x^T); B has unit column
 * stride; C is row-major with leading dimension ldc. Without AVX2+FMA (or
 * outside x86-64 GCC/clang) moe_cpu_small_gemm_ok says no and OpenBLAS runs. */
#include "cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma")))

/* C's 8 values at o, = or += v */
#define STORE(o, v) _mm256_storeu_ps((o), acc ? _mm256_add_ps(_mm256_loadu_ps(o), (v)) : (v))

/* kern_RxV: R rows x V vectors of 8 columns of C, written out */
TGT static void kern_6x2(int64_t K, const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int acc) {
  /* named accumulators (an array of vectors was spilled to the stack every step) */
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t p = 0; p < K; p++) {
    __m256 b0 = _mm256_loadu_ps(B + p * ldb + 0);
    __m256 b1 = _mm256_loadu_ps(B + p * ldb + 8);
    const float *a = A + p * sak;
    __m256 x;
    x = _mm256_broadcast_ss(a + 0 * sam);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1 * sam);
    c10 = _mm256_fmadd_ps(x, b0, c10);
    c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2 * sam);
    c20 = _mm256_fmadd_ps(x, b0, c20);
    c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3 * sam);
    c30 = _mm256_fmadd_ps(x, b0, c30);
    c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + 4 * sam);
    c40 = _mm256_fmadd_ps(x, b0, c40);
    c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + 5 * sam);
    c50 = _mm256_fmadd_ps(x, b0, c50);
    c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  STORE(C + 0 * ldc + 0, c00);
  STORE(C + 0 * ldc + 8, c01);
  STORE(C + 1 * ldc + 0, c10);
  STORE(C + 1 * ldc + 8, c11);
  STORE(C + 2 * ldc + 0, c20);
  STORE(C + 2 * ldc + 8, c21);
  STORE(C + 3 * ldc + 0, c30);
  STORE(C + 3 * ldc + 8, c31);
  STORE(C + 4 * ldc + 0, c40);
  STORE(C + 4 * ldc + 8, c41);
  STORE(C + 5 * ldc + 0, c50);
  STORE(C + 5 * ldc + 8, c51);
}

TGT static void kern_1x2(int64_t K, const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int acc) {
  /* named accumulators (an array of vectors was spilled to the stack every step) */
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  for (int64_t p = 0; p < K; p++) {
    __m256 b0 = _mm256_loadu_ps(B + p * ldb + 0);
    __m256 b1 = _mm256_loadu_ps(B + p * ldb + 8);
    const float *a = A + p * sak;
    __m256 x;
    x = _mm256_broadcast_ss(a + 0 * sam);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
  }
  STORE(C + 0 * ldc + 0, c00);
  STORE(C + 0 * ldc + 8, c01);
}

TGT static void kern_8x1(int64_t K, const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int acc) {
  /* named accumulators (an array of vectors was spilled to the stack every step) */
  __m256 c00 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps();
  __m256 c60 = _mm256_setzero_ps();
  __m256 c70 = _mm256_setzero_ps();
  for (int64_t p = 0; p < K; p++) {
    __m256 b0 = _mm256_loadu_ps(B + p * ldb + 0);
    const float *a = A + p * sak;
    __m256 x;
    x = _mm256_broadcast_ss(a + 0 * sam);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    x = _mm256_broadcast_ss(a + 1 * sam);
    c10 = _mm256_fmadd_ps(x, b0, c10);
    x = _mm256_broadcast_ss(a + 2 * sam);
    c20 = _mm256_fmadd_ps(x, b0, c20);
    x = _mm256_broadcast_ss(a + 3 * sam);
    c30 = _mm256_fmadd_ps(x, b0, c30);
    x = _mm256_broadcast_ss(a + 4 * sam);
    c40 = _mm256_fmadd_ps(x, b0, c40);
    x = _mm256_broadcast_ss(a + 5 * sam);
    c50 = _mm256_fmadd_ps(x, b0, c50);
    x = _mm256_broadcast_ss(a + 6 * sam);
    c60 = _mm256_fmadd_ps(x, b0, c60);
    x = _mm256_broadcast_ss(a + 7 * sam);
    c70 = _mm256_fmadd_ps(x, b0, c70);
  }
  STORE(C + 0 * ldc + 0, c00);
  STORE(C + 1 * ldc + 0, c10);
  STORE(C + 2 * ldc + 0, c20);
  STORE(C + 3 * ldc + 0, c30);
  STORE(C + 4 * ldc + 0, c40);
  STORE(C + 5 * ldc + 0, c50);
  STORE(C + 6 * ldc + 0, c60);
  STORE(C + 7 * ldc + 0, c70);
}

TGT static void kern_1x1(int64_t K, const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int acc) {
  /* named accumulators (an array of vectors was spilled to the stack every step) */
  __m256 c00 = _mm256_setzero_ps();
  for (int64_t p = 0; p < K; p++) {
    __m256 b0 = _mm256_loadu_ps(B + p * ldb + 0);
    const float *a = A + p * sak;
    __m256 x;
    x = _mm256_broadcast_ss(a + 0 * sam);
    c00 = _mm256_fmadd_ps(x, b0, c00);
  }
  STORE(C + 0 * ldc + 0, c00);
}

int moe_cpu_small_gemm_ok(int64_t N) {
  static _Atomic int have = -1; /* GEMMs run on several threads */
  int h = have;
  if (h < 0) {
    __builtin_cpu_init();
    have = h = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return h && N > 0 && N % 8 == 0 && N <= 64;
}

void moe_cpu_small_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sam, int64_t sak,
                        const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
  int64_t j = 0;
  for (; j + 16 <= N; j += 16) {
    int64_t i = 0;
    for (; i + 6 <= M; i += 6) kern_6x2(K, A + i * sam, sam, sak, B + j, ldb, C + i * ldc + j, ldc, acc);
    for (; i < M; i++) kern_1x2(K, A + i * sam, sam, sak, B + j, ldb, C + i * ldc + j, ldc, acc);
  }
  if (j < N) { /* 8 columns left */
    int64_t i = 0;
    for (; i + 8 <= M; i += 8) kern_8x1(K, A + i * sam, sam, sak, B + j, ldb, C + i * ldc + j, ldc, acc);
    for (; i < M; i++) kern_1x1(K, A + i * sam, sam, sak, B + j, ldb, C + i * ldc + j, ldc, acc);
  }
}
#else
int moe_cpu_small_gemm_ok(int64_t N) { (void)N; return 0; }
void moe_cpu_small_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sam, int64_t sak,
                        const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {}
#endif
