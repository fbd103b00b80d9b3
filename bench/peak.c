/* bench/peak.c -- the CPU's own ceiling for bf16 against fp32, on one core.
 *
 * Prints name<TAB>value lines for bench/run.lua: the GFLOP/s of a loop of
 * independent fp32 FMAs (AVX-512 when the CPU has it, else AVX2) and, where
 * the CPU has AVX512-BF16, of the same loop of bf16 dot products
 * (vdpbf16ps: 32 products summed into 16 fp32 lanes), and their ratio. With
 * no AMX this ratio bounds what any bf16 GEMM can gain over an fp32 one on
 * this CPU; AMX (whose tiles this loop does not measure) is reported as
 * present or not. Built by `make bench` (build/bench_peak). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ACC 12 /* independent accumulators: more than latency x issue width */
/* the loop body on ACC accumulators held in registers (named, not an array) */
#define BODY(op)   \
  do {             \
    c0 = op(c0);   \
    c1 = op(c1);   \
    c2 = op(c2);   \
    c3 = op(c3);   \
    c4 = op(c4);   \
    c5 = op(c5);   \
    c6 = op(c6);   \
    c7 = op(c7);   \
    c8 = op(c8);   \
    c9 = op(c9);   \
    c10 = op(c10); \
    c11 = op(c11); \
  } while (0)
#define DECL(T, init)                                                                                               \
  T c0 = init(0), c1 = init(1), c2 = init(2), c3 = init(3), c4 = init(4), c5 = init(5), c6 = init(6), c7 = init(7), \
    c8 = init(8), c9 = init(9), c10 = init(10), c11 = init(11)
#define SUM(f) (f(c0) + f(c1) + f(c2) + f(c3) + f(c4) + f(c5) + f(c6) + f(c7) + f(c8) + f(c9) + f(c10) + f(c11))
#define ITERS 20000000 /* of the loop body: about 0.1-0.3 s a run */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static volatile float sink;

__attribute__((target("avx512f"))) static double fma512(void) {
  __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
#define I512(i) _mm512_set1_ps((float)(i))
#define F512(c) _mm512_fmadd_ps(c, a, b)
  DECL(__m512, I512);
  double t0 = now();
  for (long n = 0; n < ITERS; n++) BODY(F512);
  double t = now() - t0;
  sink += SUM(_mm512_reduce_add_ps);
  return (double)ITERS * ACC * 16 * 2 / t / 1e9;
}

__attribute__((target("avx2,fma"))) static double fma256(void) {
  __m256 a = _mm256_set1_ps(1.0000001f), b = _mm256_set1_ps(0.9999999f);
#define I256(i) _mm256_set1_ps((float)(i))
#define F256(c) _mm256_fmadd_ps(c, a, b)
#define LOW256(c) _mm_cvtss_f32(_mm256_castps256_ps128(c))
  DECL(__m256, I256);
  double t0 = now();
  for (long n = 0; n < ITERS; n++) BODY(F256);
  double t = now() - t0;
  sink += SUM(LOW256);
  return (double)ITERS * ACC * 8 * 2 / t / 1e9;
}

__attribute__((target("avx512f,avx512bf16"))) static double dpbf16(void) {
  __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
  __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.125f), _mm512_set1_ps(1.0f));
#define D512(c) _mm512_dpbf16_ps(c, a, b)
  DECL(__m512, I512);
  double t0 = now();
  for (long n = 0; n < ITERS; n++) BODY(D512);
  double t = now() - t0;
  sink += SUM(_mm512_reduce_add_ps);
  return (double)ITERS * ACC * 32 * 2 / t / 1e9;
}

static double best_of(double (*f)(void)) {
  double b = 0;
  for (int r = 0; r < 5; r++) {
    double g = f();
    if (g > b) b = g;
  }
  return b;
}

int main(void) {
  __builtin_cpu_init();
  int avx512 = __builtin_cpu_supports("avx512f"), bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  if (!__builtin_cpu_supports("fma")) {
    printf("fp32_isa\tnone (no FMA)\n");
    return 0;
  }
  double f = avx512 ? best_of(fma512) : best_of(fma256);
  printf("fp32_isa\t%s\n", avx512 ? "avx512 fma" : "avx2 fma");
  printf("fp32_gflops_1core\t%.1f\n", f);
  if (bf16) {
    double g = best_of(dpbf16);
    printf("bf16_gflops_1core\t%.1f\n", g);
    printf("bf16_over_fp32\t%.2f\n", g / f);
  } else {
    printf("bf16_gflops_1core\tn/a (no AVX512-BF16)\n");
  }
  unsigned a, b, c, d;
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
  printf("amx_bf16\t%s\n", (d >> 22) & 1 ? "yes" : "no");
  return 0;
}
