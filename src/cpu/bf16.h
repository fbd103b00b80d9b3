/* bf16.h -- bfloat16 GEMMs on the CPU, for moe.set_precision("bf16").
 *
 * The experts' GEMMs can run with their float32 operands rounded to bfloat16
 * (round to nearest even; NaN stays NaN), products and sums in fp32, output in
 * fp32: what PyTorch's bf16 autocast does to a matmul. Two backends, chosen once
 * per process (moe_bf16_status_get):
 *   onednn   oneDNN's matmul primitive (libdnnl.so.2, opened with dlopen) on
 *            bf16 operands, f32 output: the default where cpuid reports
 *            AVX512-BF16 or AMX-BF16;
 *   emulate  the operands rounded to bf16 values held in fp32 buffers, then
 *            the normal sgemm (a product of two bf16 values is exact in fp32, so
 *            this is the same arithmetic up to the order of the fp32 sums):
 *            everywhere else, and whenever oneDNN cannot run.
 * MOELUA_BF16=onednn|emulate forces one; MOELUA_BF16=onednn-f32 runs oneDNN's
 * f32 matmul on operands already rounded to bf16 (the oneDNN path's layouts,
 * caching and threading, checkable on CPUs where oneDNN has no bf16 matmul). */
#ifndef MOE_BF16_H
#define MOE_BF16_H

#include <stdint.h>
#include <string.h>

enum { MOE_BF16_EMULATE = 0, MOE_BF16_ONEDNN = 1, MOE_BF16_ONEDNN_F32 = 2 };

/* the backend to try, a pure function of the cpuid features (MOE_CPU_* bits of
 * blas_select.h) and MOELUA_BF16 (NULL when unset); *why says why, in words */
int moe_bf16_choose(unsigned features, const char *env, const char **why);
const char *moe_bf16_backend_name(int backend);

/* what runs: the backend (after any fallback), oneDNN's version when loaded, and why */
typedef struct {
  int backend;
  int cpu_bf16; /* cpuid reports AVX512-BF16 or AMX-BF16 */
  char library[160], reason[400];
} moe_bf16_status;
void moe_bf16_status_get(moe_bf16_status *s);
/* makes the choice now (once): the binding calls it on the Lua thread before the first
 * bf16 GEMM, which may otherwise run on a pool worker (loading oneDNN sets an environment
 * variable for its OpenMP runtime) */
void moe_bf16_init(void);

/* the bit pattern of float bits u rounded to bf16 (the low 16 bits zero) */
static inline uint32_t moe_bf16_round_bits(uint32_t u) {
  uint32_t nan = (u & 0x7fffffffu) > 0x7f800000u;
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  return nan ? ((u | 0x00400000u) & 0xffff0000u) : r; /* a NaN stays a (quiet) NaN */
}
static inline float moe_bf16_round1(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u = moe_bf16_round_bits(u);
  memcpy(&f, &u, 4);
  return f;
}
/* n floats rounded to bf16: as fp32 values (round) or as bf16 (pack) */
void moe_bf16_round(const float *src, float *dst, int64_t n);
void moe_bf16_pack(const float *src, uint16_t *dst, int64_t n);

#endif
