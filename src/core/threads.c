/* threads.c -- how many threads this process's CPU kernels use (moe.h): the
 * thread pool's and OpenBLAS's count, set together (src/cpu/elementwise.c,
 * src/cpu/matmul.c). The float32 GEMM libraries (BLIS, oneDNN) and the bf16
 * GEMMs are given the same count at each call. */
#include "../cpu/cpu.h"

int moe_set_num_threads(int n) {
  int old = moe_cpu_threads();
  moe_cpu_set_threads(n);
  return old;
}

int moe_get_num_threads(void) { return moe_cpu_threads(); }
