// gemm.cuh -- what matmul.cu shares with the other cuBLAS users (route.cu):
// its handle (cuBLAS opened and bound to moelua's stream) and the library's
// other functions, which the real build reaches through dlopen.
#ifndef MOE_CUDA_GEMM_CUH
#define MOE_CUDA_GEMM_CUH
#include <cublas_v2.h>

// the handle; NULL with the error recorded (cuBLAS missing)
extern "C" cublasHandle_t moe_cuda_blas_handle(void);
// a cuBLAS function of the library matmul.cu opened, by name; NULL when that
// library lacks it (and always under the emulator, which links its shims)
extern "C" void *moe_cuda_blas_symbol(const char *name);
#endif
