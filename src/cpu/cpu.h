/* cpu.h -- CPU kernels. Kernels never check user input: src/core/ops_*.c have
 * already checked shapes and dtypes and allocated the outputs. */
#ifndef MOE_CPU_H
#define MOE_CPU_H

#include "../core/moe.h"
#include "../core/tensor_impl.h"
#include "../train/optim.h"

/* Compute-bound loops (transcendentals, the optimizer update): on x86-64 GCC
 * also builds an AVX2+FMA copy of the function and picks it at load time when
 * the CPU has them. (Off under sanitizers, which do not mix with ifuncs.) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MOE_VEC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MOE_VEC_CLONES
#endif

/* Strided N-d iteration over up to 4 operands of one shape (broadcast operands
 * carry stride 0). Dims are coalesced where every operand is contiguous across
 * them, then `fn` is called once per innermost run with byte strides. */
typedef void (*moe_loop_fn)(int64_t n, char **p, const int64_t *s, void *ctx);
void moe_cpu_foreach(int nops, const moe_tensor *const *ops, moe_loop_fn fn, void *ctx);
/* cores the CPU kernels may split large loops over (MOE_NUM_THREADS overrides) */
int moe_cpu_threads(void);
/* n from now on (the pool and OpenBLAS), at most 8; 0: the default again */
void moe_cpu_set_threads(int n);
/* runs fn(ctx, 0..nparts-1) on this thread and the pool's persistent workers
 * (pool.c); returns when all parts are done */
typedef void (*moe_task_fn)(void *ctx, int part);
void moe_cpu_parallel(int nparts, moe_task_fn fn, void *ctx);

/* shared helper from tensor.c: right-aligned broadcast of src onto shape */
int moe_broadcast_to(const moe_tensor *src, int ndim, const int64_t *shape, moe_tensor *out);

/* t (contiguous float32/float64) = uniform [p0, p1) or normal(p0, p1) draws from the
 * Philox counters base.. under seed (src/core/philox.h; src/cpu/random.c) */
void moe_cpu_random(moe_tensor *t, uint64_t seed, uint64_t base, int normal, double p0, double p1);
/* dst and src have one shape; dtype cast as needed */
void moe_cpu_copy(moe_tensor *dst, const moe_tensor *src);
/* every element of t (any strides) = v, cast to t's dtype */
void moe_cpu_fill(moe_tensor *t, double v);
/* out = a (op) b; a, b, out of one shape (broadcast views) and a's dtype == b's dtype;
 * out has a's dtype, or bool for comparisons */
void moe_cpu_binary(moe_binop op, moe_tensor *out, const moe_tensor *a, const moe_tensor *b);
/* out = op(a); same dtype */
void moe_cpu_unary(moe_unop op, moe_tensor *out, const moe_tensor *a, double p0, double p1);
/* gx = g * op'(x) (y = op(x) given too); all one float dtype and shape */
void moe_cpu_unary_backward(moe_unop op, moe_tensor *gx, const moe_tensor *g, const moe_tensor *x, const moe_tensor *y,
                            double p0, double p1);
/* out = cond ? a : b; cond bool, a/b/out one dtype */
void moe_cpu_where(moe_tensor *out, const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b);

/* rows: x contiguous [M,K] of a numeric dtype -> out [M] (and idx [M] int64) */
void moe_cpu_reduce_rows(moe_redop op, const moe_tensor *x, moe_tensor *out, moe_tensor *idx, int64_t M, int64_t K,
                         int correction, int64_t ibase);
/* x contiguous [O,K,N] float -> out [O,N]: sum (or mean) over the middle K */
void moe_cpu_sum_middle(const moe_tensor *x, moe_tensor *out, int64_t O, int64_t K, int64_t N, int mean);
/* rows: x, out contiguous [M,K] float (cumsum: any numeric) */
void moe_cpu_scan_rows(moe_scanop op, const moe_tensor *x, moe_tensor *out, int64_t M, int64_t K);
/* cumprod's gradient over rows [M,K] of contiguous float64 x, y = cumprod(x), g; into gx */
void moe_cpu_cumprod_backward(const double *x, const double *y, const double *g, double *gx, int64_t M, int64_t K);

/* C[b] = A[b] @ B[b]: float32/float64, batch strides in elements (0 = broadcast) */
void moe_cpu_gemm_batched(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb,
                          int64_t sAm, int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C,
                          int64_t sCb);

/* on: GEMMs run on one OpenBLAS thread and unsplit until off (for callers that
 * run independent GEMMs on the thread pool themselves); main thread only */
void moe_cpu_gemm_serial(int on);
/* OpenBLAS's thread count: n, or (0) all; and that maximum (for sgemm_lib.c) */
void moe_cpu_openblas_threads(int n);
int moe_cpu_openblas_max_threads(void);
void moe_cpu_openblas_set_max_threads(int n); /* 0: OpenBLAS's own count at start */
void moe_cpu_openblas_threads_unknown(void);
/* small_gemm.c: C [M,N] (+= when acc) A [M,K] @ B [K,N] in float32, A with
 * strides (sam, sak), B rows ldb apart (unit column stride), C rows ldc apart;
 * for N a multiple of 8 up to 64 on AVX2+FMA, which _ok(N) tells */
int moe_cpu_small_gemm_ok(int64_t N);
void moe_cpu_small_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sam, int64_t sak, const float *B,
                        int64_t ldb, float *C, int64_t ldc, int acc);

/* 1 while that serial mode is on */
int moe_cpu_gemm_is_serial(void);

/* C[b] [M,N] (contiguous; += when accumulate) = A[b] @ B[b] on float32 operands rounded to
 * bfloat16 (nearest even), products and sums in fp32 (src/cpu/bf16.c: oneDNN's matmul or
 * an exact emulation on sgemm); strides as moe_cpu_gemm_batched */
void moe_cpu_gemm_bf16(int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb, int64_t sAm,
                       int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C, int64_t sCb,
                       int accumulate);

/* C [M,N] (contiguous) += A @ B, strides in elements */
void moe_cpu_gemm_add(moe_dtype dt, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm, int64_t sAk,
                      const char *B, int64_t sBk, int64_t sBn, char *C);

/* stable argsort of each contiguous row of x [M,K] into idx (0-based int64) */
void moe_cpu_argsort_rows(const moe_tensor *x, int64_t M, int64_t K, int descending, int64_t *idx);

/* vals [M,k] = x [M,K] at the first k positions of each row of order [M,K]; idx = positions + ibase */
void moe_cpu_take_rows(const moe_tensor *x, int64_t M, int64_t K, const int64_t *order, int64_t k, moe_tensor *vals,
                       moe_tensor *idx, int64_t ibase);

/* out [index shape] = t[pos with dim replaced by index[pos] - ibase]; index contiguous int64, in range */
void moe_cpu_gather(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *index, const moe_tensor *ishape,
                    int64_t ibase);
/* out[pos with dim replaced by index[pos] - ibase] += src[pos] for pos over index's shape */
void moe_cpu_scatter_add(moe_tensor *out, int dim, const int64_t *index, const moe_tensor *ishape,
                         const moe_tensor *src, int64_t ibase);

/* 0 when every p[i] (n of them) lies in [lo, hi]; else 1 and *bad = one that does not */
int moe_cpu_index_check(const int64_t *p, int64_t n, int64_t lo, int64_t hi, int64_t *bad);
/* out [.., n, ..] = t[.., index[i] - ibase, ..] along dim (index contiguous int64, in range) */
void moe_cpu_index_select(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *index, int64_t n,
                          int64_t ibase);
/* out[.., index[i] - ibase, ..] += s[.., i, ..] along dim; one dtype, not bool */
void moe_cpu_index_add(moe_tensor *out, int dim, const int64_t *index, int64_t n, const moe_tensor *s, int64_t ibase);

/* dense mixtures (src/cpu/moe.c; the ops and formulas: src/nn/mixture.c) */
void moe_cpu_mixture(moe_tensor *out, const moe_tensor *h, const moe_tensor *g);
void moe_cpu_mixture_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                              const moe_tensor *g);
void moe_cpu_gate_scale(moe_tensor *out, const moe_tensor *h, const moe_tensor *g, int relu, int append);
void moe_cpu_gate_scale_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                                 const moe_tensor *g, int relu, int append);
/* the sparse layer (src/cpu/moe.c; the ops: src/nn/routing.c) */
int moe_cpu_route_plan(const moe_tensor *ei, const moe_tensor *od, const moe_tensor *vd, int64_t E, int64_t capacity,
                       int64_t ibase, moe_tensor **token, moe_tensor **expert, moe_tensor **rank, moe_tensor **counts);
void moe_cpu_grouped_gemm(moe_tensor *y, const moe_tensor *x, const moe_tensor *w, const moe_tensor *b,
                          const int64_t *counts, const int64_t *offs, int bf16);
void moe_cpu_grouped_gemm_backward(moe_tensor *gx, moe_tensor *gw, moe_tensor *gb, const moe_tensor *g,
                                   const moe_tensor *x, const moe_tensor *w, const int64_t *counts, const int64_t *offs,
                                   int bf16);
/* the fused optimizer update (src/cpu/optim.c; the checks: src/train/optim.c): the
 * global gradient norm (-1 without clip_norm) into *norm_out and/or norm_t's one value */
void moe_cpu_optim_update(moe_optim_kind kind, int n, moe_tensor *const *params, moe_tensor *const *grads,
                          moe_tensor *const *s1s, moe_tensor *const *s2s, const int64_t *steps,
                          const moe_optim_hparams *h, double *norm_out, moe_tensor *norm_t);
/* the exact ROC-AUC of n (label, score, weight) doubles, w NULL: all 1 (src/cpu/metrics.c);
 * errors start with op */
int moe_cpu_roc_auc(const char *op, const double *y, const double *s, const double *w, int64_t n, double *auc);
/* bincount (src/cpu/index.c): out[v[i] - ibase] += 1, or w[i] (w contiguous, out's dtype) */
void moe_cpu_bincount(moe_tensor *out, const int64_t *v, int64_t n, const moe_tensor *w, int64_t ibase);
/* binary cross-entropy (src/cpu/losses.c): l = bce(y, p), gp = g * dl/dp; one shape, float */
void moe_cpu_bce(moe_tensor *l, const moe_tensor *y, const moe_tensor *p, int logits);
void moe_cpu_bce_backward(moe_tensor *gp, const moe_tensor *g, const moe_tensor *y, const moe_tensor *p, int logits);

#endif
