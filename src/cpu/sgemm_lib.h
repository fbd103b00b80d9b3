/* sgemm_lib.h -- the fastest float32 GEMM library on this machine (OpenBLAS,
 * BLIS, oneDNN, OpenBLAS-split), one per process, timed on its first shape
 * classes (see sgemm_lib.c). */
#ifndef MOE_SGEMM_LIB_H
#define MOE_SGEMM_LIB_H

#include <stdint.h>

/* OPENBLAS_SPLIT: one single-threaded OpenBLAS call per core, on moelua's
 * thread pool (matmul.c's moe_cpu_sgemm_split) */
enum {
  MOE_SGEMM_OPENBLAS = 0,
  MOE_SGEMM_BLIS = 1,
  MOE_SGEMM_ONEDNN = 2,
  MOE_SGEMM_OPENBLAS_SPLIT = 3,
  MOE_SGEMM_NLIBS = 4
};
/* the process's library is chosen over its first this many shape classes */
#define MOE_SGEMM_CLASSES 3

/* row-major C [M,N] (ldc) = op(A) [M,K] @ op(B) [K,N] (+ C when accumulate);
 * ta/tb: 1 when the operand is stored transposed (lda/ldb its row stride as stored) */
typedef struct {
  int ta, tb, accumulate;
  int64_t M, N, K, lda, ldb, ldc;
  const float *A, *B;
  float *C;
} moe_sgemm_args;

/* a multi-threaded float32 GEMM on `threads` threads, on the process's library */
void moe_sgemm_run(const moe_sgemm_args *g, int threads);
/* NULL, or why MOELUA_SGEMM cannot be followed (the binding raises it when it loads) */
const char *moe_sgemm_check(void);
const char *moe_sgemm_lib_name(int lib);

/* matmul.c: the OPENBLAS_SPLIT library on up to `threads` cores; returns 1 when
 * the GEMM was too small to split and ran on OpenBLAS's own threads */
int moe_cpu_sgemm_split(const moe_sgemm_args *a, int threads);
/* a GEMM ran on OpenBLAS's worker threads (they are stopped again while another library runs) */
void moe_sgemm_note_openblas_threads(void);

typedef struct {
  int64_t M, N, K;
  int ta, tb, lib;                /* lib: the leader over the classes timed up to this one */
  double gflops[MOE_SGEMM_NLIBS]; /* as timed at the class's first GEMM; 0: not run */
} moe_sgemm_record;

typedef struct {
  int mode; /* -1: auto (timed on the first shape classes), else the library MOELUA_SGEMM pins */
  int available[MOE_SGEMM_NLIBS];
  char why[MOE_SGEMM_NLIBS][240];  /* why a library is missing */
  const moe_sgemm_record *records; /* the shape classes timed so far, in order */
  int n_records;
  int library; /* the process's library once chosen (or pinned); -1 while the first classes are timed */
} moe_sgemm_status;
void moe_sgemm_status_get(moe_sgemm_status *s);
#include <stddef.h>
/* one line for moelua --version, the REPL banner (brief) and moe.config(): which libraries, how chosen */
void moe_sgemm_describe(char *out, size_t n, int brief);
/* forgets the choice: it is made again on the next shape classes */
void moe_sgemm_forget(void);

#endif
