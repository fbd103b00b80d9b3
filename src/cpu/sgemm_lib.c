/* sgemm_lib.c -- the fastest float32 GEMM library on this machine.
 *
 * Debian packages three sgemm libraries that detect the CPU themselves:
 * OpenBLAS (linked), BLIS and oneDNN (opened here with dlopen when present).
 * A fourth candidate is OpenBLAS split by moelua: one single-threaded OpenBLAS
 * call per core on row blocks, on moelua's thread pool ("OpenBLAS-split",
 * matmul.c), which ran 256^3-512^3 3-41% faster than OpenBLAS's own threading
 * on the 2-core VM. Which one is fastest depends on the CPU and the shapes: on
 * the 2-core AMD EPYC of the development VM, oneDNN and BLIS ran 256^3 15-20%
 * faster than OpenBLAS while all were within a few percent at 1024^3; on a
 * SapphireRapids Xeon OpenBLAS's own kernels lead the large shapes. So, as
 * cuDNN's benchmark mode does for convolutions, the first multi-threaded
 * float32 GEMMs of the process's first MOE_SGEMM_CLASSES shape classes (the
 * transposes, and M, N, K in half-octave buckets) are timed on every library
 * present, on the caller's operands into a scratch output, and the library of
 * least summed time runs every multi-threaded GEMM after them (OpenBLAS unless
 * another is 3% faster). One library per process, not one per shape: mixing
 * them cost more than it gained, since each library's idle threads spin or
 * yield on the cores the other needs (the 512-1024-1024-1 MLP step took 1.5x
 * the CPU time with its classes on OpenBLAS and BLIS both).
 *
 * Two processes on a noisy machine can choose differently (their results then
 * differ in the last bits); MOELUA_SGEMM=openblas|blis|onednn|openblas-split
 * pins one library (bitwise reproducible across processes), MOELUA_SGEMM=auto
 * is the default.
 * Single-threaded GEMMs (small ones, those run side by side on the thread
 * pool, and all of them in a process set to one thread) stay on OpenBLAS and
 * small_gemm.c: one-thread processes give the same bits whatever their timing
 * (models/moe_vs_mmoe.lua's workers and its one-process run agree). */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include "cpu.h"
#include "sgemm_lib.h"

#include <cblas.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef void (*bli_sgemm_fn)(int transa, int transb, int64_t m, int64_t n, int64_t k, const float *alpha,
                             const float *a, int64_t rsa, int64_t csa, const float *b, int64_t rsb, int64_t csb,
                             const float *beta, float *c, int64_t rsc, int64_t csc);
typedef int (*dnnl_sgemm_fn)(char ta, char tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                             int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

static const char *const names[MOE_SGEMM_NLIBS] = {"OpenBLAS", "BLIS", "oneDNN", "OpenBLAS-split"};
static struct {
  int state; /* 0 not tried, 1 open, -1 missing */
  char why[240];
} libs[MOE_SGEMM_NLIBS];
static bli_sgemm_fn bli_sgemm_p;
static dnnl_sgemm_fn dnnl_sgemm_p;
static void (*bli_threads_p)(int64_t);
static void (*omp_threads_p)(int);
/* OpenBLAS's worker threads spin (sched_yield) for a while after each
 * multi-threaded call, on the cores the library timed next needs: a split
 * 256^3 GEMM timed right after OpenBLAS's own ran at half its speed. They are
 * stopped (OpenBLAS's pthread build starts them again at its next
 * multi-threaded call) before another library is timed, and once another
 * library is chosen. */
static void (*openblas_shutdown_p)(void);
extern int openblas_get_parallel(void);
static int openblas_threads_ran;

static void quiet_openblas(void) {
  if (openblas_shutdown_p && openblas_threads_ran) {
    openblas_shutdown_p();
    moe_cpu_openblas_threads_unknown();
  }
  openblas_threads_ran = 0;
}
static int opened, mode = -2; /* mode: -2 unread, -1 auto, else the pinned library */
static char mode_error[200];

const char *moe_sgemm_lib_name(int lib) { return lib >= 0 && lib < MOE_SGEMM_NLIBS ? names[lib] : "?"; }

static void read_mode(void) {
  if (mode != -2) return;
  const char *m = getenv("MOELUA_SGEMM");
  mode = -1;
  if (!m || !*m || !strcasecmp(m, "auto")) return;
  for (int i = 0; i < MOE_SGEMM_NLIBS; i++)
    if (!strcasecmp(m, names[i])) {
      mode = i;
      return;
    }
  snprintf(mode_error, sizeof mode_error, "MOELUA_SGEMM=%s: expected auto, openblas, blis, onednn or openblas-split",
           m);
}

/* opens BLIS and oneDNN once (their thread counts are set at each call, by run_lib) */
static void open_libs(void) {
  if (opened) return;
  opened = 1;
  /* (only OpenBLAS's pthread build, openblas_get_parallel() == 1, has this server) */
  if (openblas_get_parallel() == 1) openblas_shutdown_p = (void (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
  if (moe_cpu_threads() > 1) libs[MOE_SGEMM_OPENBLAS_SPLIT].state = 1;
  else {
    libs[MOE_SGEMM_OPENBLAS_SPLIT].state = -1;
    snprintf(libs[MOE_SGEMM_OPENBLAS_SPLIT].why, sizeof libs[0].why, "one core: nothing to split across");
  }
  libs[MOE_SGEMM_OPENBLAS].state = 1;
#if defined(__SANITIZE_ADDRESS__)
  /* LeakSanitizer's check at exit crashed ("Tracer caught signal 11") on the
   * OpenMP threads both start: under the sanitizers OpenBLAS runs alone */
  for (int l = MOE_SGEMM_BLIS; l <= MOE_SGEMM_ONEDNN; l++) {
    libs[l].state = -1;
    snprintf(libs[l].why, sizeof libs[l].why,
             "not opened in a build under AddressSanitizer (LeakSanitizer's exit "
             "check crashes on its OpenMP threads)");
  }
  return;
#endif
  /* both run on libgomp, whose threads otherwise spin for about a millisecond
   * after each call on the cores OpenBLAS and the thread pool need next (see
   * bf16.c); libgomp reads this when it loads */
  setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
  void *h = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL);
  bli_threads_p = h ? (void (*)(int64_t))dlsym(h, "bli_thread_set_num_threads") : NULL;
  bli_sgemm_p = h ? (bli_sgemm_fn)dlsym(h, "bli_sgemm") : NULL;
  if (!h)
    snprintf(libs[MOE_SGEMM_BLIS].why, sizeof libs[0].why, "not installed (%s; Debian's package is libblis4-openmp)",
             dlerror());
  else if (!bli_sgemm_p || !bli_threads_p)
    snprintf(libs[MOE_SGEMM_BLIS].why, sizeof libs[0].why, "libblis.so.4 lacks bli_sgemm");
  else libs[MOE_SGEMM_BLIS].state = 1;
  if (libs[MOE_SGEMM_BLIS].state != 1) {
    libs[MOE_SGEMM_BLIS].state = -1;
    bli_sgemm_p = NULL;
  }
  void *d = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
  dnnl_sgemm_p = d ? (dnnl_sgemm_fn)dlsym(d, "dnnl_sgemm") : NULL;
  omp_threads_p = d ? (void (*)(int))dlsym(d, "omp_set_num_threads") : NULL;
  if (!d)
    snprintf(libs[MOE_SGEMM_ONEDNN].why, sizeof libs[0].why, "not installed (%s; Debian's package is libdnnl-dev)",
             dlerror());
  else if (!dnnl_sgemm_p) snprintf(libs[MOE_SGEMM_ONEDNN].why, sizeof libs[0].why, "libdnnl.so.2 lacks dnnl_sgemm");
  else libs[MOE_SGEMM_ONEDNN].state = 1;
  if (libs[MOE_SGEMM_ONEDNN].state != 1) {
    libs[MOE_SGEMM_ONEDNN].state = -1;
    dnnl_sgemm_p = NULL;
  }
}

const char *moe_sgemm_check(void) {
  read_mode();
  if (mode_error[0]) return mode_error;
  if (mode >= 0) {
    open_libs();
    if (libs[mode].state != 1) {
      snprintf(mode_error, sizeof mode_error, "MOELUA_SGEMM=%s, but %s is %s", names[mode], names[mode],
               libs[mode].why);
      return mode_error;
    }
  }
  return NULL;
}

/* C = op(A) op(B) (+ C when acc) on library lib, on `threads` threads (OpenBLAS's
 * own count is set by matmul.c); 0 on success */
static int run_lib(int lib, const moe_sgemm_args *g, float *C, int threads) {
  float one = 1.0f, beta = g->accumulate ? 1.0f : 0.0f;
  switch (lib) {
  case MOE_SGEMM_BLIS: {
    /* strides carry the transposes: op(A)[i][k] is A[i*lda + k] or A[k*lda + i] */
    int64_t rsa = g->ta ? 1 : g->lda, csa = g->ta ? g->lda : 1;
    int64_t rsb = g->tb ? 1 : g->ldb, csb = g->tb ? g->ldb : 1;
    bli_threads_p(threads);
    bli_sgemm_p(0, 0, g->M, g->N, g->K, &one, g->A, rsa, csa, g->B, rsb, csb, &beta, C, g->ldc, 1);
    return 0;
  }
  case MOE_SGEMM_ONEDNN:
    if (omp_threads_p) omp_threads_p(threads); /* a per-thread setting, which bf16.c's GEMMs change too */
    return dnnl_sgemm_p(g->ta ? 'T' : 'N', g->tb ? 'T' : 'N', g->M, g->N, g->K, 1.0f, g->A, g->lda, g->B, g->ldb, beta,
                        C, g->ldc) != 0;
  case MOE_SGEMM_OPENBLAS_SPLIT:
    if (moe_cpu_sgemm_split(g, threads)) openblas_threads_ran = 1;
    return 0;
  default:
    moe_cpu_openblas_threads(0);
    openblas_threads_ran = 1;
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)g->M,
                (int)g->N, (int)g->K, 1.0f, g->A, (int)g->lda, g->B, (int)g->ldb, beta, C, (int)g->ldc);
    return 0;
  }
}

/* ---------------------------------------------------------------- the process's choice */

/* the classes timed so far: their keys, and what was measured */
static uint32_t timed_keys[MOE_SGEMM_CLASSES];
static moe_sgemm_record records[MOE_SGEMM_CLASSES];
static int n_timed, decided = -1;
static double sum_t[MOE_SGEMM_NLIBS]; /* each library's summed best times over the classes timed */

/* the library of least summed time (OpenBLAS unless another is 3% faster) */
static int leader(void) {
  int pick = MOE_SGEMM_OPENBLAS;
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++)
    if (libs[l].state == 1 && sum_t[l] < sum_t[pick]) pick = l;
  return sum_t[pick] < sum_t[MOE_SGEMM_OPENBLAS] * 0.97 ? pick : MOE_SGEMM_OPENBLAS;
}

/* half-octave bucket of a dimension: 2*log2(x), rounded */
static uint32_t bucket(int64_t x) {
  uint32_t b = 0;
  double v = (double)x;
  while (v >= 1.4142135623730951 && b < 127) {
    v /= 1.4142135623730951;
    b++;
  }
  return b;
}

static uint32_t key_of(const moe_sgemm_args *g) {
  return 1u | (uint32_t)g->ta << 1 | (uint32_t)g->tb << 2 | bucket(g->M) << 3 | bucket(g->N) << 10 | bucket(g->K) << 17;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* times every open library on g's operands into a scratch output; the fastest */
static int calibrate(const moe_sgemm_args *g, int threads) {
  size_t n = (size_t)(g->M - 1) * (size_t)g->ldc + (size_t)g->N;
  float *scratch = malloc(n * sizeof(float));
  if (!scratch) return MOE_SGEMM_OPENBLAS;
  memset(scratch, 0, n * sizeof(float));
  double best[MOE_SGEMM_NLIBS];
  int broken[MOE_SGEMM_NLIBS] = {0};
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++) best[l] = 1e300;
  /* three passes, the second in reverse order; in each, a library runs back
   * to back, 4 calls and 4 ms at least, and its first call (thread wake-up,
   * packing buffers) is not counted -- unless it took over 20 ms: then that
   * one call is the pass's timing (a large GEMM costs at most 12 extra calls) */
  for (int pass = 0; pass < 3; pass++)
    for (int i = 0; i < MOE_SGEMM_NLIBS; i++) {
      int l = pass == 1 ? MOE_SGEMM_NLIBS - 1 - i : i;
      if (libs[l].state != 1 || broken[l]) continue;
      if (l != MOE_SGEMM_OPENBLAS) quiet_openblas();
      double start = now_s();
      for (int call = 0; call < 20; call++) {
        double t0 = now_s();
        if (run_lib(l, g, scratch, threads)) {
          broken[l] = 1;
          break;
        }
        double t1 = now_s();
        if ((call || t1 - t0 > 20e-3) && t1 - t0 < best[l]) best[l] = t1 - t0;
        if (t1 - t0 > 20e-3 || (call >= 3 && t1 - start >= 4e-3)) break; /* a large GEMM: one call */
      }
    }
  free(scratch);
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++) sum_t[l] += broken[l] || best[l] >= 1e300 ? 1e300 : best[l];
  int pick = leader();
  moe_sgemm_record *r = &records[n_timed]; /* choose() counts it */
  r->M = g->M;
  r->N = g->N;
  r->K = g->K;
  r->ta = g->ta;
  r->tb = g->tb;
  r->lib = pick;
  double flop = 2.0 * (double)g->M * (double)g->N * (double)g->K;
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++)
    r->gflops[l] = libs[l].state == 1 && !broken[l] && best[l] < 1e300 ? flop / best[l] / 1e9 : 0;
  return pick;
}

/* which library this GEMM runs on: the leader while the first classes are
 * timed, then the process's library */
static int choose(const moe_sgemm_args *g, int threads) {
  read_mode();
  if (mode_error[0]) return MOE_SGEMM_OPENBLAS; /* raised by the binding when it loads */
  if (mode >= 0) {
    open_libs();
    return libs[mode].state == 1 ? mode : MOE_SGEMM_OPENBLAS;
  }
  if (decided >= 0) return decided;
  open_libs();
  int others = 0;
  for (int l = 1; l < MOE_SGEMM_NLIBS; l++) others += libs[l].state == 1;
  if (!others) return decided = MOE_SGEMM_OPENBLAS;
  uint32_t k = key_of(g);
  for (int i = 0; i < n_timed; i++)
    if (timed_keys[i] == k) return leader();
  int lib = calibrate(g, threads);
  timed_keys[n_timed++] = k;
  if (n_timed == MOE_SGEMM_CLASSES) decided = lib;
  return lib;
}

void moe_sgemm_note_openblas_threads(void) { openblas_threads_ran = 1; }

void moe_sgemm_run(const moe_sgemm_args *g, int threads) {
  int lib = choose(g, threads);
  if (lib != MOE_SGEMM_OPENBLAS) {
    /* OpenBLAS's threads ran since (its timing, a float64 GEMM, a GEMM too small to split): stop them */
    quiet_openblas();
    if (run_lib(lib, g, g->C, threads) == 0) return;
  }
  run_lib(MOE_SGEMM_OPENBLAS, g, g->C, threads); /* oneDNN failed (it returns a status): OpenBLAS */
}

void moe_sgemm_status_get(moe_sgemm_status *s) {
  read_mode();
  open_libs();
  memset(s, 0, sizeof *s);
  s->mode = mode_error[0] ? -1 : mode;
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++) {
    s->available[l] = libs[l].state == 1;
    snprintf(s->why[l], sizeof s->why[l], "%s", libs[l].state == 1 ? "" : libs[l].why);
  }
  s->records = records;
  s->n_records = n_timed;
  s->library = mode >= 0 ? mode : decided;
}

void moe_sgemm_describe(char *out, size_t n, int brief) {
  moe_sgemm_status st;
  moe_sgemm_status_get(&st);
  if (mode_error[0]) {
    snprintf(out, n, "%s", mode_error);
    return;
  }
  if (st.mode >= 0) {
    if (st.available[st.mode]) snprintf(out, n, "%s, pinned by MOELUA_SGEMM", names[st.mode]);
    else snprintf(out, n, "MOELUA_SGEMM=%s, but %s is %s", names[st.mode], names[st.mode], st.why[st.mode]);
    return;
  }
  char have[80] = "", missing[600] = "";
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++) {
    char *dst = st.available[l] ? have : missing;
    size_t cap = st.available[l] ? sizeof have : sizeof missing, at = strlen(dst);
    snprintf(dst + at, cap - at, st.available[l] ? "%s%s" : "%s%s: %s", at ? (st.available[l] ? ", " : "; ") : "",
             names[l], st.why[l]);
  }
  if (brief && st.library < 0)
    snprintf(out, n, "the fastest of %s, timed at the first large GEMMs (moe.config().sgemm)", have);
  else if (brief) snprintf(out, n, "%s, the fastest of %s (moe.config().sgemm)", names[st.library], have);
  else if (!st.available[MOE_SGEMM_BLIS] && !st.available[MOE_SGEMM_ONEDNN] && !st.available[MOE_SGEMM_OPENBLAS_SPLIT])
    snprintf(out, n, "OpenBLAS only (%s)", missing);
  else
    snprintf(out, n,
             "%s%s, the fastest of %s on the process's first %d multi-threaded GEMM shapes%s%s "
             "(MOELUA_SGEMM=openblas|blis|onednn|openblas-split pins one)",
             st.library >= 0 ? names[st.library] : "not chosen yet",
             st.library >= 0 ? "" : " (at the first large GEMM)", have, MOE_SGEMM_CLASSES, missing[0] ? "; " : "",
             missing);
}

void moe_sgemm_forget(void) {
  n_timed = 0;
  decided = -1;
  memset(sum_t, 0, sizeof sum_t);
}
