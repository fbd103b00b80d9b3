/* cuda.h -- CUDA kernels, with the signatures of their CPU twins in
 * src/cpu/cpu.h. As there, kernels never check user input: the engine has
 * checked shapes and dtypes and allocated the outputs (on the device). A
 * failure (a launch or cuBLAS error) is recorded and raised by the binding
 * after the op (moe_cuda_take_error in device.h). */
#ifndef MOE_CUDA_H
#define MOE_CUDA_H
#include "../core/moe.h"

/* random draws (src/cuda/rng.cu), the values of moe_cpu_random */
void moe_cuda_random(moe_tensor *t, uint64_t seed, uint64_t base, int normal, double p0, double p1);

void moe_cuda_copy(moe_tensor *dst, const moe_tensor *src);
void moe_cuda_fill(moe_tensor *t, double v);
void moe_cuda_binary(moe_binop op, moe_tensor *out, const moe_tensor *a, const moe_tensor *b);
void moe_cuda_unary(moe_unop op, moe_tensor *out, const moe_tensor *a, double p0, double p1);
void moe_cuda_unary_backward(moe_unop op, moe_tensor *gx, const moe_tensor *g, const moe_tensor *x, const moe_tensor *y,
                             double p0, double p1);
void moe_cuda_where(moe_tensor *out, const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b);

void moe_cuda_reduce_rows(moe_redop op, const moe_tensor *x, moe_tensor *out, moe_tensor *idx, int64_t M, int64_t K,
                          int correction, int64_t ibase);
void moe_cuda_sum_middle(const moe_tensor *x, moe_tensor *out, int64_t O, int64_t K, int64_t N, int mean);
void moe_cuda_scan_rows(moe_scanop op, const moe_tensor *x, moe_tensor *out, int64_t M, int64_t K);

void moe_cuda_gemm_batched(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb,
                           int64_t sAm, int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C,
                           int64_t sCb);
void moe_cuda_gemm_add(moe_dtype dt, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm, int64_t sAk,
                       const char *B, int64_t sBk, int64_t sBn, char *C);

void moe_cuda_gemm_bf16(int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb, int64_t sAm,
                        int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C, int64_t sCb,
                        int accumulate);

void moe_cuda_argsort_rows(const moe_tensor *x, int64_t M, int64_t K, int descending, int64_t *idx);
void moe_cuda_take_rows(const moe_tensor *x, int64_t M, int64_t K, const int64_t *order, int64_t k, moe_tensor *vals,
                        moe_tensor *idx, int64_t ibase);
void moe_cuda_gather(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *index, const moe_tensor *ishape,
                     int64_t ibase);
void moe_cuda_scatter_add(moe_tensor *out, int dim, const int64_t *index, const moe_tensor *ishape,
                          const moe_tensor *src, int64_t ibase);
void moe_cuda_index_select(moe_tensor *out, const moe_tensor *t, int dim, const int64_t *index, int64_t n,
                           int64_t ibase);
void moe_cuda_index_add(moe_tensor *out, int dim, const int64_t *index, int64_t n, const moe_tensor *s, int64_t ibase);
/* 0 when every p[i] (device memory, n of them) lies in [lo, hi]; else 1 and *bad = one that does not */
int moe_cuda_index_check(const int64_t *p, int64_t n, int64_t lo, int64_t hi, int64_t *bad);

/* ---- backend limits (src/cuda/matmul.cu) ----
 * the largest size or leading dim handed to cuBLAS (INT32_MAX; lim > 0 lowers
 * it, for the specs); returns the old one */
int64_t moe_cuda_gemm_limit(int64_t lim);

/* binary cross-entropy (src/nn/losses.c): l = bce(y, p), gp = g * dl/dp; one shape, float */
void moe_cuda_bce(moe_tensor *l, const moe_tensor *y, const moe_tensor *p, int logits);
void moe_cuda_bce_backward(moe_tensor *gp, const moe_tensor *g, const moe_tensor *y, const moe_tensor *p, int logits);

/* the dense mixtures and bincount (src/cuda/moe.cu; the ops: src/nn/mixture.c, src/core/index.c) */
void moe_cuda_mixture(moe_tensor *out, const moe_tensor *h, const moe_tensor *g);
void moe_cuda_mixture_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                               const moe_tensor *g);
void moe_cuda_gate_scale(moe_tensor *out, const moe_tensor *h, const moe_tensor *g, int relu, int append);
void moe_cuda_gate_scale_backward(moe_tensor *gh, moe_tensor *gg, const moe_tensor *go, const moe_tensor *h,
                                  const moe_tensor *g, int relu, int append);
/* v: n checked values in device memory; out zeroed by the op */
void moe_cuda_bincount(moe_tensor *out, const int64_t *v, int64_t n, const moe_tensor *w, int64_t ibase);

/* ---- optimizers (src/cuda/optim.cu): the fused multi-tensor update. The global
 * norm is reduced on the device and read by the update there; *norm_out (a wait
 * for the device) only when non-NULL, norm_t (a 0-dim f64 device tensor) without one */
#include "../train/optim.h"
void moe_cuda_optim_update(moe_optim_kind kind, int n, moe_tensor *const *params, moe_tensor *const *grads,
                           moe_tensor *const *s1s, moe_tensor *const *s2s, const int64_t *steps,
                           const moe_optim_hparams *h, double *norm_out, moe_tensor *norm_t);

/* the sparse MoE layer (src/nn/routing.c; src/cuda/route.cu). The plan's token,
 * expert and rank are made on the device, its counts [E] on the HOST (they
 * size the expert GEMMs); the grouped GEMMs take counts and offs as host arrays */
int moe_cuda_route_plan(const moe_tensor *ei, const moe_tensor *od, const moe_tensor *vd, int64_t E, int64_t capacity,
                        int64_t ibase, moe_tensor **token, moe_tensor **expert, moe_tensor **rank, moe_tensor **counts);
void moe_cuda_grouped_gemm(moe_tensor *y, const moe_tensor *x, const moe_tensor *w, const moe_tensor *b,
                           const int64_t *counts, const int64_t *offs, int bf16);
void moe_cuda_grouped_gemm_backward(moe_tensor *gx, moe_tensor *gw, moe_tensor *gb, const moe_tensor *g,
                                    const moe_tensor *x, const moe_tensor *w, const int64_t *counts,
                                    const int64_t *offs, int bf16);

#endif
