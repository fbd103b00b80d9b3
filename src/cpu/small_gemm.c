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
#include "blas_select.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma")))

/* C's 8 values at o, = or += v */
#define STORE(o, v) _mm256_storeu_ps((o), acc ? _mm256_add_ps(_mm256_loadu_ps(o), (v)) : (v))

/* kern_RxV: R rows x V vectors of 8 columns of C, with one named accumulator
 * per vector (an array of vectors was spilled to the stack at every step).
 * The per-row pieces: */
#define DECL2(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps();
#define DECL1(r) __m256 c##r##0 = _mm256_setzero_ps();
#define LOADB2 __m256 b0 = _mm256_loadu_ps(B + p * ldb), b1 = _mm256_loadu_ps(B + p * ldb + 8);
#define LOADB1 __m256 b0 = _mm256_loadu_ps(B + p * ldb);
#define STEP2(r)                             \
  x = _mm256_broadcast_ss(a + (r)*sam);      \
  c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0); \
  c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);
#define STEP1(r)                        \
  x = _mm256_broadcast_ss(a + (r)*sam); \
  c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);
#define OUT2(r)                \
  STORE(C + (r)*ldc, c##r##0); \
  STORE(C + (r)*ldc + 8, c##r##1);
#define OUT1(r) STORE(C + (r)*ldc, c##r##0);
#define ROWS1(M) M(0)
#define ROWS6(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define ROWS8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

#define KERNEL(NAME, ROWS, V)                                                                                      \
  TGT static void NAME(int64_t K, const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb, float *C, \
                       int64_t ldc, int acc) {                                                                     \
    ROWS(DECL##V)                                                                                                  \
    for (int64_t p = 0; p < K; p++) {                                                                              \
      LOADB##V const float *a = A + p * sak;                                                                       \
      __m256 x;                                                                                                    \
      ROWS(STEP##V)                                                                                                \
    }                                                                                                              \
    ROWS(OUT##V)                                                                                                   \
  }
KERNEL(kern_6x2, ROWS6, 2)
KERNEL(kern_1x2, ROWS1, 2)
KERNEL(kern_8x1, ROWS8, 1)
KERNEL(kern_1x1, ROWS1, 1)

int moe_cpu_small_gemm_ok(int64_t N) {
  static _Atomic int have = -1; /* GEMMs run on several threads */
  int h = have;
  if (h < 0) { /* blas_select.c's cpuid reading (the OS must have enabled the AVX registers too) */
    moe_cpu_info c;
    moe_cpu_detect(&c);
    have = h = (c.features & (MOE_CPU_AVX2 | MOE_CPU_FMA)) == (MOE_CPU_AVX2 | MOE_CPU_FMA);
  }
  return h && N > 0 && N % 8 == 0 && N <= 64;
}

void moe_cpu_small_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sam, int64_t sak, const float *B,
                        int64_t ldb, float *C, int64_t ldc, int acc) {
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
int moe_cpu_small_gemm_ok(int64_t N) {
  (void)N;
  return 0;
}
void moe_cpu_small_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sam, int64_t sak, const float *B,
                        int64_t ldb, float *C, int64_t ldc, int acc) {}
#endif
