// matmul.cu -- batched GEMM on cuBLAS, with src/cpu/matmul.c's contract:
// C[b] [M,N] (contiguous, row-major) = A[b] [M,K] @ B[b] [K,N], where A and B
// have a unit column stride (row-major) or a unit row stride (a transposed view).
// cuBLAS is column-major: row-major C = A B is column-major C^T = B^T A^T, so B
// goes first, and a row-major matrix is cuBLAS's transposed one for free.
//
// Precision (moe_cuda_set_precision): "fp32" (default), "tf32" (tensor cores,
// fp32 in and out), "bf16" (operands rounded to bfloat16, fp32 accumulate and
// output). float64 always runs in fp64. moe_cuda_gemm_bf16 runs one GEMM in bf16
// whatever the global setting (the per-call precision of moe.set_precision).
#include "common.cuh"
#include "gemm.cuh"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>

// cuBLAS is opened at the first GEMM (dlopen), so that the binary starts, and
// reports no device, on machines without the CUDA libraries; MOE_CUBLAS names
// the library file when it is not on the loader's path (e.g. a PyTorch wheel's).
#ifdef MOE_CUDA_EMU
#define BLAS(f) f
static const char *load_blas(void) { return NULL; }
extern "C" void *moe_cuda_blas_symbol(const char *) { return NULL; }
#else
#include <dlfcn.h>
// the C entry point's type (cuBLAS 13's C++ header also overloads the name)
typedef cublasStatus_t (*gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                     const void *, cudaDataType, int, long long, const void *, cudaDataType, int,
                                     long long, const void *, void *, cudaDataType, int, long long, int,
                                     cublasComputeType_t, cublasGemmAlgo_t);
static struct {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasDgemm_v2) dgemm;
  gemm_ex_fn gemm_ex;
  decltype(&cublasGetStatusString) status;
} blas_fns;
static void *blas_lib; // the library opened, for moe_cuda_blas_symbol
#define BLAS(f) BLAS_##f
#define BLAS_cublasCreate blas_fns.create
#define BLAS_cublasSetStream blas_fns.set_stream
#define BLAS_cublasDgemm blas_fns.dgemm
#define BLAS_cublasGemmStridedBatchedEx blas_fns.gemm_ex
#define BLAS_cublasGetStatusString blas_fns.status
static const char *load_blas(void) {
  static int tried;
  static char why[200];
  if (blas_fns.create) return NULL;
  if (tried) return why;
  tried = 1;
  const char *names[] = {getenv("MOE_CUBLAS"), "libcublas.so.13", "libcublas.so.12", "libcublas.so",
                         "/usr/local/cuda/lib64/libcublas.so"};
  void *h = NULL;
  for (const char *n : names)
    if (n && (h = dlopen(n, RTLD_NOW | RTLD_LOCAL))) break;
  if (!h) {
    snprintf(why, sizeof why, "cuBLAS not found (set MOE_CUBLAS to libcublas.so's path)");
    return why;
  }
  blas_lib = h;
  blas_fns.create = (decltype(blas_fns.create))dlsym(h, "cublasCreate_v2");
  blas_fns.set_stream = (decltype(blas_fns.set_stream))dlsym(h, "cublasSetStream_v2");
  blas_fns.dgemm = (decltype(blas_fns.dgemm))dlsym(h, "cublasDgemm_v2");
  blas_fns.gemm_ex = (decltype(blas_fns.gemm_ex))dlsym(h, "cublasGemmStridedBatchedEx");
  blas_fns.status = (decltype(blas_fns.status))dlsym(h, "cublasGetStatusString");
  if (!blas_fns.create || !blas_fns.set_stream || !blas_fns.dgemm || !blas_fns.gemm_ex || !blas_fns.status) {
    blas_fns.create = NULL;
    snprintf(why, sizeof why, "the cuBLAS library found lacks a function moelua needs");
    return why;
  }
  return NULL;
}
extern "C" void *moe_cuda_blas_symbol(const char *name) { return load_blas() ? NULL : dlsym(blas_lib, name); }
#endif

static cublasHandle_t handle;
static int precision; // 0 fp32, 1 tf32, 2 bf16

static cublasHandle_t get_handle(void) {
  if (!handle) {
    const char *why = load_blas();
    if (why) {
      moe_cuda_fail("matmul", why);
      return NULL;
    }
    if (BLAS(cublasCreate)(&handle) != CUBLAS_STATUS_SUCCESS) {
      handle = NULL;
      moe_cuda_fail("matmul", "cublasCreate failed");
      return NULL;
    }
    BLAS(cublasSetStream)(handle, moe_cuda_stream());
  }
  return handle;
}

extern "C" cublasHandle_t moe_cuda_blas_handle(void) { return get_handle(); }

extern "C" int moe_cuda_set_precision(int p) {
  int old = precision;
  precision = p;
  return old;
}
extern "C" int moe_cuda_get_precision(void) { return precision; }

// a row-major [rows, cols] operand with strides (rs, cs): cuBLAS's op and leading dim
static void layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, cublasOperation_t *op, int64_t *ld) {
  if (cs == 1 && (rs >= cols || rows == 1)) {
    *op = CUBLAS_OP_N;
    *ld = rows == 1 ? (cols > 1 ? cols : 1) : rs;
  } else {
    *op = CUBLAS_OP_T;
    *ld = cols == 1 ? (rows > 1 ? rows : 1) : cs;
  }
  if (*ld < 1) *ld = 1;
}

namespace {
// src [batch][rows, cols] with strides (sb, rs, cs) -> dst contiguous bf16 [batch, rows, cols]
__global__ void k_to_bf16(const float *src, int64_t batch, int64_t rows, int64_t cols, int64_t sb, int64_t rs,
                          int64_t cs, __nv_bfloat16 *dst) {
  MOE_GRID_STRIDE(i, batch * rows * cols) {
    int64_t b = i / (rows * cols), r = i / cols % rows, c = i % cols;
    dst[i] = __float2bfloat16(src[b * sb + r * rs + c * cs]);
  }
}
} // namespace

static void fail_blas(cublasStatus_t st) {
  if (st != CUBLAS_STATUS_SUCCESS) moe_cuda_fail("matmul", BLAS(cublasGetStatusString)(st));
}

// cuBLAS's sizes and leading dims are ints. gemm_split cuts batch, M and K into
// pieces that fit; what it cannot cut (N, which is also C's leading dim, and a
// leading dim of A or B) is an error naming it. The limit is a variable so that
// a spec can lower it (moe_cuda_gemm_limit) and reach both paths.
static int64_t int_limit = INT32_MAX;

extern "C" int64_t moe_cuda_gemm_limit(int64_t lim) {
  int64_t old = int_limit;
  if (lim > 0) int_limit = lim < INT32_MAX ? lim : INT32_MAX;
  return old;
}

static int too_big(const char *what, int64_t v) {
  if (v <= int_limit) return 0;
  char msg[160];
  snprintf(msg, sizeof msg, "dimension %s = %lld exceeds cuBLAS's 32-bit limit (%lld)", what, (long long)v,
           (long long)int_limit);
  moe_cuda_fail("matmul", msg);
  return 1;
}

// prec: 0 fp32, 1 tf32, 2 bf16 (the global precision, or bf16 for moe_cuda_gemm_bf16)
static void gemm(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb, int64_t sAm,
                 int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C, int64_t sCb,
                 int accumulate, int prec) {
  size_t es = moe_dtype_size(dt);
  if (M == 0 || N == 0 || batch == 0) return;
  cudaStream_t s = moe_cuda_stream();
  if (K == 0) {
    if (!accumulate) cudaMemsetAsync(C, 0, (size_t)(batch * M * N) * es, s);
    return;
  }
  cublasHandle_t h = get_handle();
  if (!h) return;
  cublasOperation_t ta, tb;
  int64_t lda, ldb;
  layout(M, K, sAm, sAk, &ta, &lda);
  layout(K, N, sBk, sBn, &tb, &ldb);
  if (prec == 2 && dt != MOE_F64) { // the bf16 copies are contiguous: their lds are K and N
    lda = K;
    ldb = N;
  }
  if (too_big("M", M) || too_big("N", N) || too_big("K", K) || too_big("batch", batch) || too_big("lda", lda) ||
      too_big("ldb", ldb))
    return;
  if (dt == MOE_F64) {
    const double one = 1, zero = 0;
    for (int64_t i = 0; i < batch; i++) {
      cublasStatus_t st = BLAS(cublasDgemm)(h, tb, ta, (int)N, (int)M, (int)K, &one, (const double *)B + i * sBb,
                                            (int)ldb, (const double *)A + i * sAb, (int)lda, accumulate ? &one : &zero,
                                            (double *)C + i * sCb, (int)N);
      if (st != CUBLAS_STATUS_SUCCESS) {
        fail_blas(st);
        return;
      }
    }
    return;
  }
  const float one = 1, zero = 0;
  if (prec == 2) { // bf16 operands: rounded into contiguous copies first
    size_t ga = 0, gb = 0;
    int64_t na = (sAb ? batch : 1) * M * K, nb = (sBb ? batch : 1) * K * N;
    __nv_bfloat16 *a16 = (__nv_bfloat16 *)moe_cuda_malloc(2 * (size_t)na, &ga);
    __nv_bfloat16 *b16 = a16 ? (__nv_bfloat16 *)moe_cuda_malloc(2 * (size_t)nb, &gb) : NULL;
    if (!b16) {
      if (a16) moe_cuda_free(a16, ga);
      moe_cuda_fail("matmul", moe_cuda_last_error());
      return;
    }
    MOE_LAUNCH(k_to_bf16, moe_blocks(na, 256), 256, 0, s, (const float *)A, sAb ? batch : 1, M, K, sAb, sAm, sAk, a16);
    MOE_LAUNCH(k_to_bf16, moe_blocks(nb, 256), 256, 0, s, (const float *)B, sBb ? batch : 1, K, N, sBb, sBk, sBn, b16);
    moe_cuda_launched("matmul");
    cublasStatus_t st = BLAS(cublasGemmStridedBatchedEx)(
        h, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, b16, CUDA_R_16BF, (int)N, sBb ? K * N : 0, a16,
        CUDA_R_16BF, (int)K, sAb ? M * K : 0, accumulate ? &one : &zero, C, CUDA_R_32F, (int)N, sCb, (int)batch,
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    fail_blas(st);
    moe_cuda_free(a16, ga); // stream-ordered reuse (runtime.cu)
    moe_cuda_free(b16, gb);
    return;
  }
  cublasStatus_t st = BLAS(cublasGemmStridedBatchedEx)(
      h, tb, ta, (int)N, (int)M, (int)K, &one, B, CUDA_R_32F, (int)ldb, sBb, A, CUDA_R_32F, (int)lda, sAb,
      accumulate ? &one : &zero, C, CUDA_R_32F, (int)N, sCb, (int)batch,
      prec == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  fail_blas(st);
}

// gemm over pieces of batch, M and K of at most int_limit each (K's later pieces
// accumulate into the first's result)
static void gemm_split(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb,
                       int64_t sAm, int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn, char *C,
                       int64_t sCb, int accumulate, int prec) {
  size_t es = moe_dtype_size(dt);
  int64_t L = int_limit;
  if (batch > L) {
    for (int64_t b0 = 0; b0 < batch; b0 += L)
      gemm_split(dt, batch - b0 < L ? batch - b0 : L, M, N, K, A + (size_t)(b0 * sAb) * es, sAb, sAm, sAk,
                 B + (size_t)(b0 * sBb) * es, sBb, sBk, sBn, C + (size_t)(b0 * sCb) * es, sCb, accumulate, prec);
    return;
  }
  if (M > L) {
    for (int64_t m0 = 0; m0 < M; m0 += L)
      gemm_split(dt, batch, M - m0 < L ? M - m0 : L, N, K, A + (size_t)(m0 * sAm) * es, sAb, sAm, sAk, B, sBb, sBk, sBn,
                 C + (size_t)(m0 * N) * es, sCb, accumulate, prec);
    return;
  }
  if (K > L) {
    for (int64_t k0 = 0; k0 < K; k0 += L)
      gemm_split(dt, batch, M, N, K - k0 < L ? K - k0 : L, A + (size_t)(k0 * sAk) * es, sAb, sAm, sAk,
                 B + (size_t)(k0 * sBk) * es, sBb, sBk, sBn, C, sCb, k0 ? 1 : accumulate, prec);
    return;
  }
  gemm(dt, batch, M, N, K, A, sAb, sAm, sAk, B, sBb, sBk, sBn, C, sCb, accumulate, prec);
}

extern "C" void moe_cuda_gemm_batched(moe_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K, const char *A,
                                      int64_t sAb, int64_t sAm, int64_t sAk, const char *B, int64_t sBb, int64_t sBk,
                                      int64_t sBn, char *C, int64_t sCb) {
  gemm_split(dt, batch, M, N, K, A, sAb, sAm, sAk, B, sBb, sBk, sBn, C, sCb, 0, precision);
}

extern "C" void moe_cuda_gemm_add(moe_dtype dt, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAm,
                                  int64_t sAk, const char *B, int64_t sBk, int64_t sBn, char *C) {
  gemm_split(dt, 1, M, N, K, A, 0, sAm, sAk, B, 0, sBk, sBn, C, 0, 1, precision);
}

// one GEMM in bf16 whatever the global precision: moe.set_precision("bf16")'s expert GEMMs
// (float32 operands; the contract of src/cpu/bf16.c's moe_cpu_gemm_bf16)
extern "C" void moe_cuda_gemm_bf16(int64_t batch, int64_t M, int64_t N, int64_t K, const char *A, int64_t sAb,
                                   int64_t sAm, int64_t sAk, const char *B, int64_t sBb, int64_t sBk, int64_t sBn,
                                   char *C, int64_t sCb, int accumulate) {
  gemm_split(MOE_F32, batch, M, N, K, A, sAb, sAm, sAk, B, sBb, sBk, sBn, C, sCb, accumulate, 2);
}
