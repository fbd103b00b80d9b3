/* blas_select.c -- which OpenBLAS kernel set to run (see blas_select.h). */
#include "blas_select.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void) {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((unsigned long long)hi << 32) | lo;
}
#endif

void moe_cpu_detect(moe_cpu_info *c) {
  memset(c, 0, sizeof *c);
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, cx, d;
  if (!__get_cpuid(0, &a, &b, &cx, &d)) return;
  unsigned max_leaf = a;
  char vendor[13];
  memcpy(vendor, &b, 4);
  memcpy(vendor + 4, &d, 4);
  memcpy(vendor + 8, &cx, 4);
  vendor[12] = '\0';
  c->vendor = !strcmp(vendor, "GenuineIntel")                              ? MOE_CPU_INTEL
      : !strcmp(vendor, "AuthenticAMD") || !strcmp(vendor, "HygonGenuine") ? MOE_CPU_AMD
                                                                           : MOE_CPU_OTHER;
  __get_cpuid(1, &a, &b, &cx, &d);
  int osxsave = (cx >> 27) & 1;
  unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
  int ymm = (xcr0 & 0x6) == 0x6, zmm = ymm && (xcr0 & 0xe0) == 0xe0, tiles = (xcr0 & 0x60000) == 0x60000;
  if (ymm && ((cx >> 28) & 1)) c->features |= MOE_CPU_AVX;
  if (ymm && ((cx >> 12) & 1)) c->features |= MOE_CPU_FMA;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, cx, d);
    if (ymm && ((b >> 5) & 1)) c->features |= MOE_CPU_AVX2;
    if (zmm && ((b >> 16) & 1)) c->features |= MOE_CPU_AVX512F;
    if (zmm && ((b >> 17) & 1)) c->features |= MOE_CPU_AVX512DQ;
    if (zmm && ((b >> 30) & 1)) c->features |= MOE_CPU_AVX512BW;
    if (zmm && ((b >> 31) & 1)) c->features |= MOE_CPU_AVX512VL;
    if (tiles && ((d >> 24) & 1)) c->features |= MOE_CPU_AMX_TILE;
    if (tiles && ((d >> 22) & 1)) c->features |= MOE_CPU_AMX_BF16;
    if (a >= 1) { /* leaf 7 has a subleaf 1 */
      __cpuid_count(7, 1, a, b, cx, d);
      if (zmm && ((a >> 5) & 1)) c->features |= MOE_CPU_AVX512BF16;
    }
  }
#endif
}

/* OpenBLAS's x86-64 kernel sets, by the instructions their kernels use */
static const struct {
  const char *name;
  int rank;
} cores[] = {
    {"Prescott", 1},    {"Core2", 1},      {"Penryn", 1},       {"Dunnington", 1},  {"Nehalem", 1},
    {"Atom", 1},        {"Opteron", 1},    {"Opteron_SSE3", 1}, {"Barcelona", 1},   {"Bobcat", 1},
    {"Katmai", 1},      {"Coppermine", 1}, {"Northwood", 1},    {"Banias", 1},      {"Athlon", 1},
    {"Sandybridge", 2}, {"Bulldozer", 2},  {"Piledriver", 2},   {"Steamroller", 2}, {"Excavator", 2},
    {"Haswell", 3},     {"Zen", 3},        {"SkylakeX", 4},     {"Cooperlake", 5},  {"SapphireRapids", 6},
};

int moe_blas_core_rank(const char *name) {
  if (!name) return 0;
  for (size_t i = 0; i < sizeof cores / sizeof *cores; i++)
    if (!strcasecmp(cores[i].name, name)) return cores[i].rank;
  return 0;
}

static int has(unsigned f, unsigned want) { return (f & want) == want; }

const char *moe_blas_best_core(const moe_cpu_info *c) {
  unsigned f = c->features;
  int avx512 = has(f, MOE_CPU_AVX512F | MOE_CPU_AVX512BW | MOE_CPU_AVX512VL | MOE_CPU_AVX512DQ);
  if (c->vendor == MOE_CPU_INTEL) {
    if (avx512 && has(f, MOE_CPU_AVX512BF16 | MOE_CPU_AMX_TILE | MOE_CPU_AMX_BF16)) return "SapphireRapids";
    if (avx512 && has(f, MOE_CPU_AVX512BF16)) return "Cooperlake";
    if (avx512) return "SkylakeX";
    if (has(f, MOE_CPU_AVX2 | MOE_CPU_FMA)) return "Haswell";
    if (has(f, MOE_CPU_AVX)) return "Sandybridge";
    return "Prescott";
  }
  if (c->vendor == MOE_CPU_AMD) {
    /* Zen 4 and later: OpenBLAS runs its AVX-512 kernels there */
    if (avx512 && has(f, MOE_CPU_AVX512BF16)) return "Cooperlake";
    if (avx512) return "SkylakeX";
    if (has(f, MOE_CPU_AVX2 | MOE_CPU_FMA)) return "Zen";
    if (has(f, MOE_CPU_AVX)) return "Sandybridge";
    return "Prescott";
  }
  return NULL;
}

const char *moe_blas_choose(const moe_cpu_info *c, const char *blas_core, const char *user, const char **why) {
  const char *best = moe_blas_best_core(c);
  int have = moe_blas_core_rank(blas_core), want = moe_blas_core_rank(best);
  if (user && *user) {
    *why = "OPENBLAS_CORETYPE is set: the user's choice is kept";
    return NULL;
  }
  if (!best) {
    *why = "not an x86-64 CPU moelua knows: the BLAS's own choice is kept";
    return NULL;
  }
  if (!have) {
    *why = "the BLAS names a kernel set moelua does not rank: its choice is kept";
    return NULL;
  }
  if (have >= want) {
    *why = "the BLAS's choice is the best kernel set the CPU supports";
    return NULL;
  }
  *why = "the BLAS picked a kernel set below what the CPU supports (cpuid)";
  return best;
}

/* the kernel sets moelua's host asks for, best first: each next one down
 * when the BLAS was built without the one asked for (moe_blas_next_lower) */
static const char *const *fallbacks(const moe_cpu_info *c) {
  static const char *const intel[] = {"SapphireRapids", "Cooperlake", "SkylakeX", "Haswell", "Sandybridge", NULL};
  static const char *const amd[] = {"Cooperlake", "SkylakeX", "Zen", "Sandybridge", NULL};
  return c->vendor == MOE_CPU_AMD ? amd : intel;
}

/* the sets moelua's host asked for before `runs`, from the CPU's best down
 * (src/main.c): the ones this BLAS lacks, comma-separated */
static void sets_tried_above(const moe_cpu_info *c, const char *best, const char *runs, char *out, size_t n) {
  int lo = moe_blas_core_rank(runs), hi = moe_blas_core_rank(best);
  size_t at = 0;
  out[0] = '\0';
  for (const char *const *l = fallbacks(c); *l; l++) {
    int r = moe_blas_core_rank(*l);
    if (r <= lo || r > hi) continue;
    int w = snprintf(out + at, n - at, "%s%s", at ? "," : "", *l);
    if (w < 0 || (size_t)w >= n - at) break;
    at += (size_t)w;
  }
}

/* ---------------------------------------------------------------- the running BLAS */

char *openblas_get_corename(void);
char *openblas_get_config(void);

void moe_blas_status_get(moe_blas_status *s) {
  memset(s, 0, sizeof *s);
  moe_cpu_detect(&s->cpu);
  snprintf(s->library, sizeof s->library, "%s", openblas_get_config());
  snprintf(s->kernels, sizeof s->kernels, "%s", openblas_get_corename());
  const char *best = moe_blas_best_core(&s->cpu);
  snprintf(s->cpu_best, sizeof s->cpu_best, "%s", best ? best : "unknown");
  snprintf(s->blas_best, sizeof s->blas_best, "%s", s->cpu_best);
  const char *user = getenv("OPENBLAS_CORETYPE"), *before = getenv("MOELUA_BLAS_CHOSEN");
  if (user && *user && before && *before) { /* set by the moelua host (src/main.c), which re-executed itself */
    s->chosen_by = MOE_BLAS_BY_MOELUA;
    /* what runs is what moelua asked for, below the CPU's best: the host asked for each set above it first */
    if (!strcasecmp(user, s->kernels) && moe_blas_core_rank(s->kernels) < moe_blas_core_rank(s->cpu_best))
      sets_tried_above(&s->cpu, s->cpu_best, s->kernels, s->missing, sizeof s->missing);
    if (s->missing[0]) {
      snprintf(s->blas_best, sizeof s->blas_best, "%s", s->kernels);
      snprintf(s->reason, sizeof s->reason,
               "the BLAS picked %s, below what the CPU supports (cpuid: %s); this BLAS has no %s kernels: "
               "moelua set OPENBLAS_CORETYPE=%s, the best it has",
               before, s->cpu_best, s->missing, user);
    } else if (!strcasecmp(user, s->kernels))
      snprintf(s->reason, sizeof s->reason,
               "the BLAS picked %s, below what the CPU supports (cpuid: %s); "
               "moelua set OPENBLAS_CORETYPE=%s",
               before, s->cpu_best, user);
    else
      snprintf(s->reason, sizeof s->reason, "moelua asked for %s (the BLAS picked %s), but the BLAS runs %s", user,
               before, s->kernels);
    return;
  }
  const char *why;
  const char *pick = moe_blas_choose(&s->cpu, s->kernels, user, &why);
  s->chosen_by = user && *user ? MOE_BLAS_BY_USER : MOE_BLAS_BY_BLAS;
  if (user && *user && moe_blas_core_rank(user) && strcasecmp(user, s->kernels))
    snprintf(s->reason, sizeof s->reason, "%s, but this BLAS has no %s kernels: it runs %s", why, user, s->kernels);
  else if (pick)
    snprintf(s->reason, sizeof s->reason,
             "%s: the CPU's best is %s, the BLAS runs %s; run through the moelua "
             "host, or set OPENBLAS_CORETYPE=%s before the BLAS loads",
             why, pick, s->kernels, pick);
  else snprintf(s->reason, sizeof s->reason, "%s", why);
}

void moe_cpu_features_str(unsigned f, char *out, size_t n) {
  static const struct {
    unsigned bit;
    const char *name;
  } names[] = {{MOE_CPU_AVX, "avx"},           {MOE_CPU_FMA, "fma"},
               {MOE_CPU_AVX2, "avx2"},         {MOE_CPU_AVX512F, "avx512f"},
               {MOE_CPU_AVX512BW, "avx512bw"}, {MOE_CPU_AVX512VL, "avx512vl"},
               {MOE_CPU_AVX512DQ, "avx512dq"}, {MOE_CPU_AVX512BF16, "avx512_bf16"},
               {MOE_CPU_AMX_TILE, "amx_tile"}, {MOE_CPU_AMX_BF16, "amx_bf16"}};
  size_t at = 0;
  out[0] = '\0';
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (f & names[i].bit) {
      int w = snprintf(out + at, n - at, "%s%s", at ? " " : "", names[i].name);
      if (w < 0 || (size_t)w >= n - at) break;
      at += (size_t)w;
    }
}

unsigned moe_cpu_feature_bit(const char *name) {
  static const char *names[] = {"avx",      "fma",      "avx2",        "avx512f",  "avx512bw",
                                "avx512vl", "avx512dq", "avx512_bf16", "amx_tile", "amx_bf16"};
  for (unsigned i = 0; i < sizeof names / sizeof *names; i++)
    if (!strcmp(names[i], name)) return 1u << i;
  return 0;
}

const char *moe_blas_next_lower(const moe_cpu_info *c, const char *name, int floor_rank) {
  const char *const *list = fallbacks(c);
  int r = moe_blas_core_rank(name);
  for (int i = 0; list[i]; i++) {
    int ri = moe_blas_core_rank(list[i]);
    if (ri < r && ri > floor_rank) return list[i];
  }
  return NULL;
}
