/* cuda.h -- CUDA kernels, with the signatures of their CPU twins in
 * src/cpu/cpu.h. As there, kernels never check user input: the engine has
 * checked shapes and dtypes and allocated the outputs (on the device). A
 * failure (a launch or cuBLAS error) is recorded and raised by the binding
 * after the op (moe_cuda_take_error in device.h). */
#ifndef MOE_CUDA_H
#define MOE_CUDA_H
#include "../core/moe.h"

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

#endif
