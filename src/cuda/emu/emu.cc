// emu.cc -- the host emulator behind src/cuda/emu/*.h (see cuda_runtime.h).
#include "cuda_runtime.h"
#include "cublas_v2.h"
#include "cuda_bf16.h"

#include <cblas.h>
#include <map>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

static cudaError_t sticky = cudaSuccess;
static cudaError_t set_err(cudaError_t e) {
  if (e != cudaSuccess) sticky = e;
  return e;
}

[[noreturn]] static void die(const char *what) {
  fprintf(stderr, "CUDA emulator: %s\n", what);
  abort(); // a kernel or API misuse: the spec run must stop here, loudly
}

// ---------------------------------------------------------------- device memory
// One reserved range; bytes [0, used) are mapped. Blocks are reused by exact
// size (moelua's caching allocator above rounds sizes already).
static const size_t ARENA = (size_t)64 << 30, LIMIT = (size_t)2 << 30;
static char *arena;
static size_t used;
static std::map<void *, size_t> live;
static std::multimap<size_t, void *> spare;
static int unlocked;

static void protect(int rw) {
  if (used && mprotect(arena, used, rw ? PROT_READ | PROT_WRITE : PROT_NONE)) die("mprotect failed");
}
void moe_emu_unlock(void) {
  if (unlocked++ == 0) protect(1);
}
void moe_emu_lock(void) {
  if (--unlocked == 0) protect(0);
}
int moe_emu_is_device(const void *p) { return arena && (const char *)p >= arena && (const char *)p < arena + ARENA; }

cudaError_t cudaMalloc(void **p, size_t n) {
  if (!arena) {
    arena = (char *)mmap(NULL, ARENA, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (arena == MAP_FAILED) {
      arena = NULL;
      return set_err(cudaErrorMemoryAllocation);
    }
  }
  n = (n + 255) & ~(size_t)255;
  auto it = spare.find(n);
  if (it != spare.end()) {
    *p = it->second;
    spare.erase(it);
    live[*p] = n;
    return cudaSuccess;
  }
  size_t sum = 0;
  for (auto &kv : live) sum += kv.second;
  if (sum + n > LIMIT || used + n > ARENA) return set_err(cudaErrorMemoryAllocation); // as a device would
  *p = arena + used;
  used += n;
  if (unlocked) protect(1);
  live[*p] = n;
  return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
  if (!p) return cudaSuccess;
  auto it = live.find(p);
  if (it == live.end()) die("cudaFree of a pointer that cudaMalloc did not return");
  spare.insert({it->second, p});
  live.erase(it);
  return cudaSuccess;
}

static void check_range(const void *p, size_t n, int device, const char *what) {
  if (!n) return;
  if (!device) {
    if (moe_emu_is_device(p)) die(what);
    return;
  }
  auto it = live.upper_bound((void *)p);
  if (it == live.begin()) die(what);
  --it;
  if ((const char *)p < (char *)it->first || (const char *)p + n > (char *)it->first + it->second) die(what);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
  check_range(dst, n, kind != cudaMemcpyDeviceToHost,
              "cudaMemcpy: destination is not where its kind says, or overruns its block");
  check_range(src, n, kind != cudaMemcpyHostToDevice,
              "cudaMemcpy: source is not where its kind says, or overruns its block");
  moe_emu_unlock();
  memmove(dst, src, n);
  moe_emu_lock();
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, n, kind);
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
  check_range(p, n, 1, "cudaMemset: not a device block, or past its end");
  moe_emu_unlock();
  memset(p, v, n);
  moe_emu_lock();
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }

cudaError_t cudaGetDeviceCount(int *n) {
  *n = getenv("MOE_EMU_NO_DEVICE") ? 0 : 1;
  return *n ? cudaSuccess : set_err(cudaErrorNoDevice);
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev) {
  if (dev != 0) return set_err(cudaErrorInvalidValue);
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "moelua CUDA emulator (host)");
  p->totalGlobalMem = LIMIT;
  p->sharedMemPerBlock = 48 << 10;
  p->major = 9;
  p->multiProcessorCount = 4;
  p->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
  size_t sum = 0;
  for (auto &kv : live) sum += kv.second;
  *t = LIMIT;
  *f = LIMIT - sum;
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
  cudaError_t e = sticky;
  sticky = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return sticky; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
  case cudaSuccess: return "no error";
  case cudaErrorInvalidValue: return "invalid argument";
  case cudaErrorMemoryAllocation: return "out of memory";
  case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  case cudaErrorNoDevice: return "no CUDA-capable device is detected";
  default: return "unspecified launch failure";
  }
}

// ---------------------------------------------------------------- launches
static const size_t STACK = 64 << 10;
static std::vector<ucontext_t> fib;
static std::vector<char *> stacks;
static std::vector<int> state; // 0 running/ready, 1 at a barrier, 2 done
static ucontext_t sched;
static int cur = -1, fibers; // fibers: this launch runs threads as fibers
static const std::function<void()> *body;
static std::vector<char> dyn;
static std::vector<double> slots;
static unsigned launches;

void *moe_emu_dyn_smem(void) { return dyn.data(); }

static void set_thread(int i) {
  threadIdx.x = i % blockDim.x;
  threadIdx.y = i / blockDim.x % blockDim.y;
  threadIdx.z = i / (blockDim.x * blockDim.y);
}

static void trampoline(void) {
  (*body)();
  state[cur] = 2;
  swapcontext(&fib[cur], &sched);
}

void __syncthreads(void) {
  if (!fibers) die("__syncthreads in a kernel launched with MOE_LAUNCH (use MOE_LAUNCH_SYNC)");
  state[cur] = 1;
  swapcontext(&fib[cur], &sched);
}

double moe_emu_shfl_xor_d(double v, int lane) {
  int me = cur;
  slots[me] = v;
  __syncthreads();
  int other = me ^ lane;
  double r = (other / 32 == me / 32 && other < (int)slots.size()) ? slots[other] : v;
  __syncthreads();
  return r;
}
float moe_emu_shfl_xor(float v, int lane) { return (float)moe_emu_shfl_xor_d(v, lane); }

void moe_emu_launch(const char *name, dim3 grid, dim3 block, size_t smem, int sync, const std::function<void()> &fn) {
  char msg[256];
  size_t nthreads = (size_t)block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535 || smem > (48 << 10)) {
    snprintf(msg, sizeof msg, "%s: invalid launch (grid %u,%u,%u block %u,%u,%u smem %zu)", name, grid.x, grid.y,
             grid.z, block.x, block.y, block.z, smem);
    die(msg);
  }
  launches++;
  blockDim = block;
  gridDim = grid;
  dyn.assign(smem ? smem : 1, (char)0xA5); // not zeroed on a device either
  body = &fn;
  fibers = sync;
  int n = (int)nthreads;
  if (sync && (int)fib.size() < n) {
    fib.resize(n);
    while ((int)stacks.size() < n) stacks.push_back((char *)malloc(STACK));
  }
  state.assign(n, 0);
  slots.assign(n, 0.0);
  std::vector<int> order(n);
  moe_emu_unlock();
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        blockIdx = dim3(bx, by, bz);
        if (!sync) {
          for (int i = 0; i < n; i++) {
            cur = i;
            set_thread(i);
            fn();
          }
          continue;
        }
        for (int i = 0; i < n; i++) {
          state[i] = 0;
          getcontext(&fib[i]);
          fib[i].uc_stack.ss_sp = stacks[i];
          fib[i].uc_stack.ss_size = STACK;
          fib[i].uc_link = NULL;
          makecontext(&fib[i], trampoline, 0);
        }
        // phases between barriers; threads in a shuffled order each phase
        for (unsigned phase = 0;; phase++) {
          unsigned seed = launches * 2654435761u + phase * 40503u + bx;
          for (int i = 0; i < n; i++) order[i] = i;
          for (int i = n - 1; i > 0; i--) {
            seed = seed * 1664525u + 1013904223u;
            int j = (int)((seed >> 8) % (unsigned)(i + 1));
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
          }
          int done = 0, waiting = 0;
          for (int k = 0; k < n; k++) {
            int i = order[k];
            if (state[i] == 2) continue;
            state[i] = 0;
            cur = i;
            set_thread(i);
            swapcontext(&sched, &fib[i]);
          }
          for (int i = 0; i < n; i++) {
            done += state[i] == 2;
            waiting += state[i] == 1;
          }
          if (done == n) break;
          if (done) {
            snprintf(msg, sizeof msg, "%s: %d threads wait at __syncthreads while %d have exited (divergent barrier)",
                     name, waiting, done);
            die(msg);
          }
        }
      }
  moe_emu_lock();
  cur = -1;
  fibers = 0;
}

// ---------------------------------------------------------------- cuBLAS on OpenBLAS
struct moe_emu_cublas {
  int math;
};
cublasStatus_t cublasCreate(cublasHandle_t *h) {
  *h = new moe_emu_cublas{0};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
  h->math = m;
  return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS      ? "CUBLAS_STATUS_SUCCESS"
      : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE"
                                         : "CUBLAS_STATUS_NOT_SUPPORTED";
}
static CBLAS_TRANSPOSE tr(cublasOperation_t o) { return o == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

// cuBLAS's argument checks: leading dimensions against the stored rows
static int bad_ld(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb, int ldc) {
  if (m < 0 || n < 0 || k < 0) return 1;
  if (lda < (ta == CUBLAS_OP_N ? m : k) || lda < 1) return 1;
  if (ldb < (tb == CUBLAS_OP_N ? k : n) || ldb < 1) return 1;
  return ldc < m || ldc < 1;
}
static void need_device(const void *p) {
  if (!moe_emu_is_device(p)) die("cuBLAS given a host pointer for a matrix");
}

template <class T, class F>
static cublasStatus_t gemm_shim(F cblas, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                const T *alpha, const T *A, int lda, const T *B, int ldb, const T *beta, T *C,
                                int ldc) {
  if (bad_ld(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
  if (!m || !n) return CUBLAS_STATUS_SUCCESS;
  need_device(C);
  if (k) {
    need_device(A);
    need_device(B);
  }
  moe_emu_unlock();
  cblas(CblasColMajor, tr(ta), tr(tb), m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
  moe_emu_lock();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
  return gemm_shim(cblas_sgemm, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
cublasStatus_t cublasDgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const double *alpha, const double *A, int lda, const double *B, int ldb, const double *beta,
                           double *C, int ldc) {
  return gemm_shim(cblas_dgemm, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// one matrix of a batch as float (bf16 widened), column-major rows x cols with leading dim ld
static std::vector<float> widen(const void *p, cudaDataType t, int rows, int cols, int ld) {
  std::vector<float> v((size_t)ld * cols, 0.0f);
  for (int c = 0; c < cols; c++)
    for (int r = 0; r < rows; r++) {
      size_t i = (size_t)c * ld + r;
      v[i] = t == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
    }
  return v;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType at, int lda,
                                          long long sA, const void *B, cudaDataType bt, int ldb, long long sB,
                                          const void *beta, void *C, cudaDataType ct, int ldc, long long sC, int batch,
                                          cublasComputeType_t ctype, cublasGemmAlgo_t) {
  if (bad_ld(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (ctype == CUBLAS_COMPUTE_64F || at == CUDA_R_64F || ct == CUDA_R_64F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!m || !n || !batch) return CUBLAS_STATUS_SUCCESS;
  need_device(C);
  if (k) {
    need_device(A);
    need_device(B);
  }
  size_t ea = at == CUDA_R_16BF ? 2 : 4, eb = bt == CUDA_R_16BF ? 2 : 4, ec = ct == CUDA_R_16BF ? 2 : 4;
  float al = *(const float *)alpha, be = *(const float *)beta;
  moe_emu_unlock();
  for (int i = 0; i < batch; i++) {
    const char *a = (const char *)A + (size_t)i * sA * ea, *b = (const char *)B + (size_t)i * sB * eb;
    char *c = (char *)C + (size_t)i * sC * ec;
    std::vector<float> fa = widen(a, at, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda);
    std::vector<float> fb = widen(b, bt, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb);
    std::vector<float> fc = widen(c, ct, m, n, ldc);
    cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, al, fa.data(), lda, fb.data(), ldb, be, fc.data(), ldc);
    for (int col = 0; col < n; col++)
      for (int row = 0; row < m; row++) {
        size_t j = (size_t)col * ldc + row;
        if (ct == CUDA_R_16BF) ((__nv_bfloat16 *)c)[j] = __float2bfloat16(fc[j]);
        else ((float *)c)[j] = fc[j];
      }
  }
  moe_emu_lock();
  return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------- grouped GEMM (route.cu)
// each GEMM through the strided-batched shim above (batch 1), after reading its
// pointers out of device memory, as cuBLAS does; alpha and beta: one float per group
cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t h, const cublasOperation_t ta[], const cublasOperation_t tb[],
                                          const int m[], const int n[], const int k[], const void *alpha,
                                          const void *const A[], cudaDataType at, const int lda[],
                                          const void *const B[], cudaDataType bt, const int ldb[], const void *beta,
                                          void *const C[], cudaDataType ct, const int ldc[], int group_count,
                                          const int group_size[], cublasComputeType_t ctype) {
  if (group_count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  int total = 0;
  for (int i = 0; i < group_count; i++) {
    if (group_size[i] < 0) return CUBLAS_STATUS_INVALID_VALUE;
    total += group_size[i];
  }
  if (!total) return CUBLAS_STATUS_SUCCESS;
  need_device(A);
  need_device(B);
  need_device(C);
  std::vector<const void *> pa(total), pb(total);
  std::vector<void *> pc(total);
  moe_emu_unlock();
  for (int j = 0; j < total; j++) {
    pa[j] = A[j];
    pb[j] = B[j];
    pc[j] = C[j];
  }
  moe_emu_lock();
  const float *al = (const float *)alpha, *be = (const float *)beta;
  for (int i = 0, j = 0; i < group_count; i++)
    for (int s = 0; s < group_size[i]; s++, j++) {
      cublasStatus_t st =
          cublasGemmStridedBatchedEx(h, ta[i], tb[i], m[i], n[i], k[i], &al[i], pa[j], at, lda[i], 0, pb[j], bt, ldb[i],
                                     0, &be[i], pc[j], ct, ldc[i], 0, 1, ctype, CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
  return CUBLAS_STATUS_SUCCESS;
}
