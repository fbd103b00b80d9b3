/* bf16.c -- GEMMs with bfloat16 operands and fp32 accumulation (see bf16.h).
 *
 * C[b] [M,N] (+)= bf16(A[b]) [M,K] @ bf16(B[b]) [K,N], float32 in and out.
 * Each operand is first rounded into a compact copy that keeps its orientation
 * (a row-major view stays row-major, a transposed view column-major, so the
 * reads are sequential either way) in a per-thread scratch buffer that is kept
 * between calls. Then:
 *   emulate  the copy holds the rounded values as fp32 and the normal sgemm
 *            path runs on it (moe_cpu_gemm_batched / moe_cpu_gemm_add, with
 *            their thread policy);
 *   onednn   the copy holds bf16 values and oneDNN's matmul primitive runs on
 *            it with an f32 destination (a sum post-op when accumulating).
 *            Primitives are created with M (the rows) as a runtime dim and
 *            kept per thread, per (K, N, orientations, accumulate); a (N, ...)
 *            that has been seen with many different K (a weight gradient, whose
 *            reduction dim is the token count) gets one primitive with K a
 *            runtime dim too. Each thread has its own stream and a
 *            user-managed scratchpad, so pool workers run primitives
 *            concurrently. Debian's libdnnl threads with OpenMP: a call from a
 *            pool worker (moe_cpu_gemm_serial mode) or a small one runs on one
 *            OpenMP thread, others on moe_cpu_threads().
 * libdnnl.so.2 is opened with dlopen the first time a bf16 GEMM runs (or
 * moe.config() asks), only when the chosen backend needs it; if it is missing,
 * or has no bf16 matmul for this CPU, the emulation runs and the reason says so. */
#include "bf16.h"

#include "blas_select.h"
#include "cpu.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include(<oneapi/dnnl/dnnl.h>)
#include <oneapi/dnnl/dnnl.h>
#define MOE_HAVE_DNNL 1
#endif
#endif

/* ---------------------------------------------------------------- rounding */

MOE_VEC_CLONES void moe_bf16_round(const float *src, float *dst, int64_t n) {
  const uint32_t *s = (const uint32_t *)(const void *)src;
  uint32_t *d = (uint32_t *)(void *)dst;
  for (int64_t i = 0; i < n; i++) d[i] = moe_bf16_round_bits(s[i]);
}

MOE_VEC_CLONES void moe_bf16_pack(const float *src, uint16_t *dst, int64_t n) {
  const uint32_t *s = (const uint32_t *)(const void *)src;
  for (int64_t i = 0; i < n; i++) dst[i] = (uint16_t)(moe_bf16_round_bits(s[i]) >> 16);
}

/* src [rows, cols] with strides (rs, cs) -> a compact rounded copy at dst (bf16 when
 * pack, else fp32): row-major (returns 0; strides (cols, 1)) or, for a view whose
 * row stride is 1, column-major (returns 1; strides (1, rows)) */
static int round_copy(int64_t rows, int64_t cols, const float *src, int64_t rs, int64_t cs, void *dst, int pack) {
  int colmajor = !(cs == 1 && (rs >= cols || rows == 1)) && rs == 1;
  if (colmajor) {
    for (int64_t c = 0; c < cols; c++)
      if (pack) moe_bf16_pack(src + c * cs, (uint16_t *)dst + c * rows, rows);
      else moe_bf16_round(src + c * cs, (float *)dst + c * rows, rows);
  } else if (cs == 1) {
    for (int64_t r = 0; r < rows; r++)
      if (pack) moe_bf16_pack(src + r * rs, (uint16_t *)dst + r * cols, cols);
      else moe_bf16_round(src + r * rs, (float *)dst + r * cols, cols);
  } else { /* neither stride is 1: element by element */
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) {
        uint32_t u;
        memcpy(&u, src + r * rs + c * cs, 4);
        u = moe_bf16_round_bits(u);
        if (pack) ((uint16_t *)dst)[r * cols + c] = (uint16_t)(u >> 16);
        else memcpy((float *)dst + r * cols + c, &u, 4);
      }
  }
  return colmajor;
}

/* ---------------------------------------------------------------- per-thread scratch */

/* kept between calls up to this size; a larger request is allocated for the call */
#define SCRATCH_KEEP ((size_t)64 << 20)

typedef struct {
  void *p;
  size_t cap;
} scratch;

static void *aligned_block(size_t bytes) {
  void *p = NULL;
  return posix_memalign(&p, 64, bytes ? bytes : 64) ? NULL : p;
}

/* a buffer of at least `bytes`; *tmp is set when the caller must free it */
static void *scratch_get(scratch *s, size_t bytes, void **tmp) {
  *tmp = NULL;
  if (bytes <= s->cap) return s->p;
  if (bytes > SCRATCH_KEEP) return *tmp = aligned_block(bytes);
  free(s->p);
  size_t cap = bytes < ((size_t)1 << 16) ? (size_t)1 << 16 : bytes + bytes / 4;
  if (cap > SCRATCH_KEEP) cap = SCRATCH_KEEP;
  s->p = aligned_block(cap);
  s->cap = s->p ? cap : 0;
  return s->p;
}

static __thread scratch operands; /* the rounded copies of A and B */

/* ---------------------------------------------------------------- the choice */

int moe_bf16_choose(unsigned features, const char *env, const char **why) {
  int hw = (features & (MOE_CPU_AVX512BF16 | MOE_CPU_AMX_BF16)) != 0;
  const char *hw_why = (features & MOE_CPU_AMX_BF16) ? "the CPU has AMX-BF16 (cpuid)"
      : hw                                           ? "the CPU has AVX512-BF16 (cpuid)"
                                                     : "the CPU has neither AVX512-BF16 nor AMX-BF16 (cpuid)";
  if (env && *env) {
    if (!strcmp(env, "emulate")) {
      *why = "MOELUA_BF16=emulate";
      return MOE_BF16_EMULATE;
    }
    if (!strcmp(env, "onednn")) {
      *why = "MOELUA_BF16=onednn";
      return MOE_BF16_ONEDNN;
    }
    if (!strcmp(env, "onednn-f32")) {
      *why = "MOELUA_BF16=onednn-f32 (oneDNN's f32 matmul on operands rounded to bf16: a check of the oneDNN path)";
      return MOE_BF16_ONEDNN_F32;
    }
    *why = hw ? "MOELUA_BF16 is not onednn, emulate or onednn-f32 (ignored); the CPU has bf16 instructions (cpuid)"
              : "MOELUA_BF16 is not onednn, emulate or onednn-f32 (ignored); the CPU has neither AVX512-BF16 nor "
                "AMX-BF16 (cpuid)";
    return hw ? MOE_BF16_ONEDNN : MOE_BF16_EMULATE;
  }
  *why = hw_why;
  return hw ? MOE_BF16_ONEDNN : MOE_BF16_EMULATE;
}

const char *moe_bf16_backend_name(int b) {
  return b == MOE_BF16_ONEDNN ? "onednn" : b == MOE_BF16_ONEDNN_F32 ? "onednn-f32" : "emulate";
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static moe_bf16_status status;
static pthread_mutex_t status_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---------------------------------------------------------------- oneDNN */

#ifdef MOE_HAVE_DNNL
// clang-format off
#define DNNL_FNS(X)                                                                                           \
  X(dnnl_engine_create) X(dnnl_stream_create) X(dnnl_stream_wait) X(dnnl_memory_desc_init_by_strides)        \
  X(dnnl_matmul_desc_init) X(dnnl_primitive_attr_create) X(dnnl_primitive_attr_destroy)                     \
  X(dnnl_primitive_attr_set_scratchpad_mode) X(dnnl_primitive_attr_set_post_ops) X(dnnl_post_ops_create)    \
  X(dnnl_post_ops_destroy) X(dnnl_post_ops_append_sum) X(dnnl_primitive_desc_create)                        \
  X(dnnl_primitive_desc_destroy) X(dnnl_primitive_desc_query) X(dnnl_primitive_desc_query_md)               \
  X(dnnl_memory_desc_get_size) X(dnnl_primitive_create) X(dnnl_primitive_destroy) X(dnnl_primitive_execute) \
  X(dnnl_memory_create) X(dnnl_memory_destroy) X(dnnl_version) X(dnnl_get_effective_cpu_isa)
// clang-format on
static struct {
#define X(f) __typeof__(&f) f;
  DNNL_FNS(X)
#undef X
  void (*omp_set_num_threads)(int);
} D;
static dnnl_engine_t engine;
static dnnl_data_type_t op_type; /* dnnl_bf16, or dnnl_f32 for onednn-f32 */
static int broken;               /* a primitive failed at run time: emulate from then on */

#define RT DNNL_RUNTIME_DIM_VAL
#define NPRIM 32
/* a distinct-K count per (N, orientations, accumulate) beyond which K becomes a runtime dim */
#define FIXED_K_MAX 8
typedef struct {
  int64_t K, N; /* K < 0: K is a runtime dim */
  int ta, tb, acc, nthr;
  dnnl_primitive_t p;
  size_t scratch;
} prim;
typedef struct {
  prim cache[NPRIM];
  int n, evict, omp_threads;
  dnnl_stream_t stream;
  scratch pad; /* oneDNN's scratchpad */
} dnnl_thread;
static __thread dnnl_thread T;

static const char *isa_name(int isa) {
  switch (isa) {
  case dnnl_cpu_isa_sse41: return "sse41";
  case dnnl_cpu_isa_avx: return "avx";
  case dnnl_cpu_isa_avx2: return "avx2";
  case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
  case dnnl_cpu_isa_avx512_core: return "avx512_core";
  case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
  case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
  case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
  default: return "other";
  }
}

/* a [M,K] @ [K,N] -> [M,N] f32 matmul primitive with M (and K when K < 0) runtime:
 * A row-major (ta 0) or column-major (ta 1), likewise B, C row-major */
static dnnl_status_t make_prim(int64_t K, int64_t N, int ta, int tb, int acc, prim *out, const char **impl) {
  int64_t Kd = K < 0 ? RT : K;
  dnnl_dims_t ad = {RT, Kd}, bd = {Kd, N}, cd = {RT, N};
  dnnl_dims_t as = {ta ? 1 : Kd, ta ? RT : 1}, bs = {tb ? 1 : N, tb ? Kd : 1}, cs = {N, 1};
  dnnl_memory_desc_t a, b, c;
  dnnl_matmul_desc_t md;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t s;
  memset(out, 0, sizeof *out);
  if ((s = D.dnnl_memory_desc_init_by_strides(&a, 2, ad, op_type, as)) ||
      (s = D.dnnl_memory_desc_init_by_strides(&b, 2, bd, op_type, bs)) ||
      (s = D.dnnl_memory_desc_init_by_strides(&c, 2, cd, dnnl_f32, cs)) ||
      (s = D.dnnl_matmul_desc_init(&md, &a, &b, NULL, &c)) || (s = D.dnnl_primitive_attr_create(&attr)) ||
      (s = D.dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)))
    goto done;
  if (acc &&
      ((s = D.dnnl_post_ops_create(&po)) || (s = D.dnnl_post_ops_append_sum(po, 1.0f)) ||
       (s = D.dnnl_primitive_attr_set_post_ops(attr, po))))
    goto done;
  if ((s = D.dnnl_primitive_desc_create(&pd, &md, attr, engine, NULL))) goto done;
  if (impl && D.dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, (void *)impl)) *impl = "?";
  const dnnl_memory_desc_t *smd = D.dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
  out->scratch = smd ? D.dnnl_memory_desc_get_size(smd) : 0;
  if (out->scratch == DNNL_RUNTIME_SIZE_VAL) out->scratch = 0;
  if ((s = D.dnnl_primitive_create(&out->p, pd))) out->p = NULL;
  out->K = K;
  out->N = N;
  out->ta = ta;
  out->tb = tb;
  out->acc = acc;
done:
  if (pd) D.dnnl_primitive_desc_destroy(pd);
  if (po) D.dnnl_post_ops_destroy(po);
  if (attr) D.dnnl_primitive_attr_destroy(attr);
  return s;
}

/* a primitive for the calling thread's current OpenMP thread count (T.omp_threads, set
 * before): some of oneDNN's implementations (brgemm matmul) fix their thread count when the
 * primitive is created and ask OpenMP for that many at execution, whatever
 * omp_set_num_threads says then; one made on the main thread for all cores must not run
 * on a pool worker */
static prim *find_prim(int64_t K, int64_t N, int ta, int tb, int acc) {
  int same = 0, nthr = T.omp_threads;
  prim *runtime_k = NULL;
  for (int i = 0; i < T.n; i++) {
    prim *p = &T.cache[i];
    if (p->N != N || p->ta != ta || p->tb != tb || p->acc != acc || p->nthr != nthr) continue;
    if (p->K == K) return p;
    if (p->K < 0) runtime_k = p;
    else same++;
  }
  if (runtime_k) return runtime_k;
  if (same >= FIXED_K_MAX) K = -1;
  prim np;
  if (make_prim(K, N, ta, tb, acc, &np, NULL) != dnnl_success) return NULL;
  np.nthr = nthr;
  int at;
  if (T.n < NPRIM) {
    at = T.n++;
  } else { /* full: replace the oldest */
    at = T.evict;
    T.evict = (T.evict + 1) % NPRIM;
    if (T.cache[at].p) D.dnnl_primitive_destroy(T.cache[at].p);
  }
  T.cache[at] = np;
  return &T.cache[at];
}

/* one OpenMP thread from a pool worker (moe_cpu_gemm_serial mode) or for a small GEMM,
 * else moe_cpu_threads() (as OpenBLAS's thread policy in matmul.c) */
static void set_omp_threads(int64_t M, int64_t N, int64_t K) {
  int want = moe_cpu_gemm_is_serial() || (double)M * (double)N * (double)K < 4.0e6 ? 1 : moe_cpu_threads();
  /* set every time (a per-thread ICV, cheap): sgemm_lib.c's float32 oneDNN calls set it too */
  if (D.omp_set_num_threads) D.omp_set_num_threads(want);
  T.omp_threads = want;
}

static void mark_broken(dnnl_status_t s, int64_t M, int64_t N, int64_t K) {
  pthread_mutex_lock(&status_mu);
  if (!broken) {
    broken = 1;
    size_t n = strlen(status.reason);
    snprintf(status.reason + n, sizeof status.reason - n,
             "; a oneDNN matmul failed at run time (status %d, M=%lld N=%lld K=%lld): emulated from then on", (int)s,
             (long long)M, (long long)N, (long long)K);
  }
  pthread_mutex_unlock(&status_mu);
}

/* 0 when done; -1 (C untouched) when the caller should emulate instead */
static int gemm_onednn(int64_t batch, int64_t M, int64_t N, int64_t K, const float *A, int64_t sAb, int64_t sAm,
                       int64_t sAk, const float *B, int64_t sBb, int64_t sBk, int64_t sBn, float *C, int64_t sCb,
                       int acc) {
  if (broken) return -1;
  int pack = op_type == dnnl_bf16;
  size_t es = pack ? 2 : 4;
  int64_t nA = (sAb ? batch : 1) * M * K, nB = (sBb ? batch : 1) * K * N;
  void *tmp;
  char *buf = scratch_get(&operands, (size_t)(nA + nB) * es + 64, &tmp);
  if (!buf) return -1;
  char *a = buf, *b = buf + (((size_t)nA * es + 63) & ~(size_t)63);
  int ta = 0, tb = 0;
  for (int64_t i = 0; i < (sAb ? batch : 1); i++)
    ta = round_copy(M, K, A + i * sAb, sAm, sAk, a + (size_t)(i * M * K) * es, pack);
  for (int64_t i = 0; i < (sBb ? batch : 1); i++)
    tb = round_copy(K, N, B + i * sBb, sBk, sBn, b + (size_t)(i * K * N) * es, pack);
  int rc = -1;
  dnnl_status_t s = dnnl_success;
  set_omp_threads(M, N, K); /* before the primitive is made: it is made for this many threads */
  prim *p = find_prim(K, N, ta, tb, acc);
  if (!p || !p->p) {
    s = dnnl_unimplemented;
    goto done;
  }
  if (!T.stream && (s = D.dnnl_stream_create(&T.stream, engine, dnnl_stream_default_flags))) {
    T.stream = NULL;
    goto done;
  }
  void *pad = NULL, *padtmp = NULL;
  if (p->scratch && !(pad = scratch_get(&T.pad, p->scratch, &padtmp))) { /* out of memory now: emulate this call, */
    free(tmp);                                                           /* without giving oneDNN up for good */
    return -1;
  }
  dnnl_dims_t ad = {M, K}, bd = {K, N}, cd = {M, N};
  dnnl_dims_t as = {ta ? 1 : K, ta ? M : 1}, bs = {tb ? 1 : N, tb ? K : 1}, cs = {N, 1};
  dnnl_memory_desc_t amd, bmd, cmd;
  if ((s = D.dnnl_memory_desc_init_by_strides(&amd, 2, ad, op_type, as)) ||
      (s = D.dnnl_memory_desc_init_by_strides(&bmd, 2, bd, op_type, bs)) ||
      (s = D.dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs))) {
    free(padtmp);
    goto done;
  }
  dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
  if (p->scratch) {
    dnnl_memory_desc_t pmd;
    dnnl_dims_t pdims = {(int64_t)p->scratch}, pstr = {1};
    if ((s = D.dnnl_memory_desc_init_by_strides(&pmd, 1, pdims, dnnl_u8, pstr)) ||
        (s = D.dnnl_memory_create(&ms, &pmd, engine, pad)))
      goto release;
  }
  for (int64_t i = 0; i < batch; i++) { /* memory objects are cheap (a few us): one set per slice */
    if ((s = D.dnnl_memory_create(&ma, &amd, engine, a + (size_t)((sAb ? i : 0) * M * K) * es)) ||
        (s = D.dnnl_memory_create(&mb, &bmd, engine, b + (size_t)((sBb ? i : 0) * K * N) * es)) ||
        (s = D.dnnl_memory_create(&mc, &cmd, engine, C + i * sCb)))
      goto release;
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}, {DNNL_ARG_SCRATCHPAD, ms}};
    if ((s = D.dnnl_primitive_execute(p->p, T.stream, ms ? 4 : 3, args)) || (s = D.dnnl_stream_wait(T.stream)))
      goto release;
    D.dnnl_memory_destroy(ma);
    D.dnnl_memory_destroy(mb);
    D.dnnl_memory_destroy(mc);
    ma = mb = mc = NULL;
  }
  rc = 0;
release:
  if (ma) D.dnnl_memory_destroy(ma);
  if (mb) D.dnnl_memory_destroy(mb);
  if (mc) D.dnnl_memory_destroy(mc);
  if (ms) D.dnnl_memory_destroy(ms);
  free(padtmp);
done:
  free(tmp);
  if (rc) mark_broken(s, M, N, K);
  return rc;
}

/* opens libdnnl.so.2 and checks that a matmul of op_type can be created; NULL or why not */
static const char *dnnl_open(int backend, char *why, size_t n, char *impl_out, size_t impl_n) {
  /* OpenMP's threads spin after a parallel region (libgomp: about a millisecond) on cores
   * that OpenBLAS's threads and moelua's pool need next: the MMoE census training ran 7x
   * slower so on 2 cores. libgomp reads this when it loads, with libdnnl, below. */
  setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
  void *h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(why, n, "oneDNN could not be opened (%s; Debian's package is libdnnl-dev)", dlerror());
    return why;
  }
#define X(f) D.f = (__typeof__(D.f))dlsym(h, #f);
  DNNL_FNS(X)
#undef X
#define X(f) || !D.f
  if (0 DNNL_FNS(X)) {
    snprintf(why, n, "the libdnnl.so.2 found lacks a function of oneDNN 2.x's C API");
    return why;
  }
#undef X
  D.omp_set_num_threads = (void (*)(int))dlsym(h, "omp_set_num_threads");
  if (D.dnnl_engine_create(&engine, dnnl_cpu, 0)) {
    snprintf(why, n, "oneDNN could not create its CPU engine");
    return why;
  }
  op_type = backend == MOE_BF16_ONEDNN ? dnnl_bf16 : dnnl_f32;
  const dnnl_version_t *v = D.dnnl_version();
  prim probe;
  const char *impl = "?";
  dnnl_status_t s = make_prim(64, 64, 0, 0, 0, &probe, &impl);
  if (s != dnnl_success || !probe.p) {
    snprintf(why, n, "oneDNN %d.%d.%d has no %s matmul for this CPU (status %d; its ISA: %s)", v->major, v->minor,
             v->patch, op_type == dnnl_bf16 ? "bf16" : "f32", (int)s, isa_name(D.dnnl_get_effective_cpu_isa()));
    return why;
  }
  snprintf(impl_out, impl_n, "%s", impl);
  D.dnnl_primitive_destroy(probe.p);
  return NULL;
}
#endif

static void choose_once(void) {
  moe_cpu_info c;
  moe_cpu_detect(&c);
  status.cpu_bf16 = (c.features & (MOE_CPU_AVX512BF16 | MOE_CPU_AMX_BF16)) != 0;
  const char *why;
  int want = moe_bf16_choose(c.features, getenv("MOELUA_BF16"), &why);
  status.backend = MOE_BF16_EMULATE;
  snprintf(status.library, sizeof status.library, "none");
  if (want == MOE_BF16_EMULATE) {
    snprintf(status.reason, sizeof status.reason, "%s: operands rounded to bf16 in fp32 buffers, then sgemm", why);
    return;
  }
#ifdef MOE_HAVE_DNNL
  char err[300], impl[120];
  if (dnnl_open(want, err, sizeof err, impl, sizeof impl)) {
    snprintf(status.reason, sizeof status.reason,
             "%s, but %s: emulated instead (operands rounded to bf16 in fp32 "
             "buffers, then sgemm)",
             why, err);
    return;
  }
  const dnnl_version_t *v = D.dnnl_version();
  status.backend = want;
  snprintf(status.library, sizeof status.library, "oneDNN %d.%d.%d (libdnnl.so.2, ISA %s)", v->major, v->minor,
           v->patch, isa_name(D.dnnl_get_effective_cpu_isa()));
  const char *wait = getenv("OMP_WAIT_POLICY");
  snprintf(status.reason, sizeof status.reason,
           "%s: oneDNN's matmul primitive (%s on a 64x64x64 probe; "
           "OMP_WAIT_POLICY=%s)",
           why, impl, wait ? wait : "?");
#else
  snprintf(status.reason, sizeof status.reason,
           "%s, but moelua was built without oneDNN's header (libdnnl-dev): "
           "emulated instead (operands rounded to bf16 in fp32 buffers, then sgemm)",
           why);
#endif
}

void moe_bf16_init(void) { pthread_once(&once, choose_once); }

void moe_bf16_status_get(moe_bf16_status *s) {
  pthread_once(&once, choose_once);
  pthread_mutex_lock(&status_mu);
  *s = status;
  pthread_mutex_unlock(&status_mu);
}

/* ---------------------------------------------------------------- the GEMM */

static void gemm_emulate(int64_t batch, int64_t M, int64_t N, int64_t K, const float *A, int64_t sAb, int64_t sAm,
                         int64_t sAk, const float *B, int64_t sBb, int64_t sBk, int64_t sBn, float *C, int64_t sCb,
                         int acc) {
  int64_t nA = (sAb ? batch : 1) * M * K, nB = (sBb ? batch : 1) * K * N;
  void *tmp;
  float *buf = scratch_get(&operands, (size_t)(nA + nB) * sizeof(float) + 64, &tmp);
  if (!buf) { /* out of memory: round in place is impossible, so round element by element */
    for (int64_t i = 0; i < batch; i++)
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
          float s = 0;
          for (int64_t k = 0; k < K; k++)
            s += moe_bf16_round1(A[i * sAb + m * sAm + k * sAk]) * moe_bf16_round1(B[i * sBb + k * sBk + n * sBn]);
          C[i * sCb + m * N + n] = acc ? C[i * sCb + m * N + n] + s : s;
        }
    return;
  }
  float *a = buf, *b = buf + ((nA + 15) & ~(int64_t)15);
  int ta = 0, tb = 0;
  for (int64_t i = 0; i < (sAb ? batch : 1); i++) ta = round_copy(M, K, A + i * sAb, sAm, sAk, a + i * M * K, 0);
  for (int64_t i = 0; i < (sBb ? batch : 1); i++) tb = round_copy(K, N, B + i * sBb, sBk, sBn, b + i * K * N, 0);
  int64_t am = ta ? 1 : K, ak = ta ? M : 1, bk = tb ? 1 : N, bn = tb ? K : 1;
  if (!acc) {
    moe_cpu_gemm_batched(MOE_F32, batch, M, N, K, (const char *)a, sAb ? M * K : 0, am, ak, (const char *)b,
                         sBb ? K * N : 0, bk, bn, (char *)C, sCb);
  } else {
    for (int64_t i = 0; i < batch; i++)
      moe_cpu_gemm_add(MOE_F32, M, N, K, (const char *)(a + (sAb ? i * M * K : 0)), am, ak,
                       (const char *)(b + (sBb ? i * K * N : 0)), bk, bn, (char *)(C + i * sCb));
  }
  free(tmp);
}

void moe_cpu_gemm_bf16(int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb, int64_t sAm,
                       int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C, int64_t sCb,
                       int accumulate) {
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) { /* nothing to round: the fp32 kernel zeroes (or keeps) C */
    if (!accumulate) moe_cpu_gemm_batched(MOE_F32, batch, M, N, K, A, sAb, sAm, sAk, B, sBb, sBk, sBn, C, sCb);
    return;
  }
  pthread_once(&once, choose_once);
#ifdef MOE_HAVE_DNNL
  if (status.backend != MOE_BF16_EMULATE &&
      !gemm_onednn(batch, M, N, K, (const float *)A, sAb, sAm, sAk, (const float *)B, sBb, sBk, sBn, (float *)C, sCb,
                   accumulate))
    return;
#endif
  gemm_emulate(batch, M, N, K, (const float *)A, sAb, sAm, sAk, (const float *)B, sBb, sBk, sBn, (float *)C, sCb,
               accumulate);
}
