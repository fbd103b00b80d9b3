/* blas_select.h -- the fastest correct OpenBLAS kernel set, without user tuning.
 *
 * OpenBLAS (DYNAMIC_ARCH, as Debian builds it) picks its kernels from the CPU
 * model when it loads; on CPUs it does not recognise (a new model, or a
 * hypervisor's CPUID) it falls back to SSE3 ("Prescott") kernels, several times
 * slower, silently. moe_blas_choose compares what cpuid reports (and the OS has
 * enabled) with the kernel set the BLAS picked, and names a better one to force
 * through OPENBLAS_CORETYPE -- a pure function of (features, the BLAS's choice,
 * the user's setting), so it is specced on the cases that matter. The moelua
 * host applies it before the BLAS initialises (src/main.c re-executes itself
 * once with OPENBLAS_CORETYPE set); a user's own OPENBLAS_CORETYPE always wins. */
#ifndef MOE_BLAS_SELECT_H
#define MOE_BLAS_SELECT_H

enum { MOE_CPU_OTHER = 0, MOE_CPU_INTEL = 1, MOE_CPU_AMD = 2 };

enum {
  MOE_CPU_AVX = 1u << 0,
  MOE_CPU_FMA = 1u << 1,
  MOE_CPU_AVX2 = 1u << 2,
  MOE_CPU_AVX512F = 1u << 3,
  MOE_CPU_AVX512BW = 1u << 4,
  MOE_CPU_AVX512VL = 1u << 5,
  MOE_CPU_AVX512DQ = 1u << 6,
  MOE_CPU_AVX512BF16 = 1u << 7,
  MOE_CPU_AMX_TILE = 1u << 8,
  MOE_CPU_AMX_BF16 = 1u << 9,
};

typedef struct {
  int vendor;
  unsigned features; /* MOE_CPU_* bits: supported by the CPU and enabled by the OS */
} moe_cpu_info;

void moe_cpu_detect(moe_cpu_info *c);

/* rank of an OpenBLAS kernel set by the instructions it uses: 1 SSE, 2 AVX,
 * 3 AVX2/FMA (Haswell, Zen), 4 AVX-512 (SkylakeX), 5 AVX512-BF16 (Cooperlake),
 * 6 AMX (SapphireRapids); 0 for a name it does not know */
int moe_blas_core_rank(const char *name);

/* the best kernel set the CPU supports (NULL: not an x86-64 CPU it knows) */
const char *moe_blas_best_core(const moe_cpu_info *c);

/* the kernel set to force, or NULL to keep the BLAS's (or the user's) choice;
 * *why says which, in words */
const char *moe_blas_choose(const moe_cpu_info *c, const char *blas_core, const char *user, const char **why);

/* the next kernel set below `name` for this CPU's vendor, above floor_rank (NULL: none):
 * what to try when the BLAS was not built with the one asked for */
const char *moe_blas_next_lower(const moe_cpu_info *c, const char *name, int floor_rank);

/* what runs, and why: for moelua --version, the REPL banner and moe.config() */
enum { MOE_BLAS_BY_BLAS = 0, MOE_BLAS_BY_USER = 1, MOE_BLAS_BY_MOELUA = 2 };
typedef struct {
  moe_cpu_info cpu;
  /* blas_best: the best kernel set the CPU supports that this BLAS was built
   * with (cpu_best, or the one moelua fell back to: missing lists those above
   * it that the BLAS lacks, e.g. Debian's OpenBLAS 0.3.21 has no SapphireRapids) */
  char library[160], kernels[48], cpu_best[48], blas_best[48], missing[160], reason[600];
  int chosen_by;
} moe_blas_status;
void moe_blas_status_get(moe_blas_status *s);

#include <stddef.h>
void moe_cpu_features_str(unsigned features, char *out, size_t n); /* "avx fma avx2 ..." */
unsigned moe_cpu_feature_bit(const char *name);                    /* 0 if unknown */

#endif
