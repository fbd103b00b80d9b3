// emu.cc -- the host emulator behind src/cuda/emu/*.h (see cuda_runtime.h).
#include "cuda_runtime.h"
#include "cublas_v2.h"
#include "cuda_bf16.h"

#include <cblas.h>
#include <deque>
#include <map>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

// The sticky error, as the runtime's; an error the emulator found itself also
// keeps a sentence saying what (cudaGetErrorString returns it for that code).
static cudaError_t sticky = cudaSuccess;
static cudaError_t detail_code = cudaSuccess;
static char detail[512];
static cudaError_t set_err(cudaError_t e) {
  if (e != cudaSuccess) {
    sticky = e;
    detail_code = cudaSuccess;
  }
  return e;
}
__attribute__((format(printf, 2, 3))) static cudaError_t set_errf(cudaError_t e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  sticky = e;
  detail_code = e;
  return e;
}

[[noreturn]] static void die(const char *what) {
  fprintf(stderr, "CUDA emulator: %s\n", what);
  abort(); // the emulator itself cannot go on (mprotect failed)
}

// ---------------------------------------------------------------- device memory
// One reserved range; bytes [0, used) are carved into page-aligned blocks, each
// followed by a gap page (so a pointer one past a block's end is no other
// block's start), and a block's pages can be made inaccessible on their own.
// A block is live, retired (freed by moelua's caching allocator, which keeps
// it: junk-filled, refused as a kernel argument) or freed (cudaFree: its pages
// dropped, PROT_NONE even inside launches while it waits FREE_QUARANTINE more
// cudaFrees, then reused by exact size and junk-filled again). Retired blocks
// stay readable in launches: guarding them too cost an mprotect per recently
// cached block per launch. The device holds LIMIT bytes of live blocks.
static const size_t ARENA = (size_t)64 << 30, LIMIT = (size_t)2 << 30, PAGE = 4096;
static const size_t FREE_QUARANTINE = 64;
static const int JUNK = 0xCD; // as float32 -4.3e8, as int32 -842150451
enum { LIVE, RETIRED, FREED };
struct block {
  size_t n;
  int state;
};
static char *arena;
static size_t used, live_sum;
static std::map<char *, block> blocks;
static std::multimap<size_t, char *> spare;
static std::deque<char *> freed_q; // PROT_NONE while the arena is open
static int unlocked;

// Inside a launch, device memory opens block by block: a kernel's first touch
// of a block faults, and the SIGSEGV handler below makes that block readable
// and writable; when the launch ends the opened blocks close again. So a
// launch costs an mprotect per block it touches, not a page-table walk over the
// whole arena (which was three quarters of a training run's time). A touch of a
// freed block or of a gap page inside a launch is reported and stops the run;
// outside launches the fault is left to crash, as host code must not touch
// device memory. The cuBLAS shims open every live block at once (OpenBLAS's
// threads would fault on their own).
static struct {
  char *p;
  size_t n;
} opened[1024];
static int nopened, opened_all;
static volatile int open_lock;

static void watch_faults(void);
static void open_block(char *p, size_t n) {
  if (mprotect(p, n, PROT_READ | PROT_WRITE)) die("mprotect failed");
  if (nopened < (int)(sizeof opened / sizeof opened[0])) opened[nopened++] = {p, n};
  else opened_all = 1; /* closed by one mprotect over the arena */
}
static void open_all(void) {
  if (!used || opened_all) return;
  if (mprotect(arena, used, PROT_READ | PROT_WRITE)) die("mprotect failed");
  for (char *p : freed_q)
    if (mprotect(p, blocks[p].n, PROT_NONE)) die("mprotect failed");
  opened_all = 1;
}
static void close_all(void) {
  if (opened_all) {
    if (used && mprotect(arena, used, PROT_NONE)) die("mprotect failed");
  } else {
    for (int i = 0; i < nopened; i++)
      if (mprotect(opened[i].p, opened[i].n, PROT_NONE)) die("mprotect failed");
  }
  nopened = 0;
  opened_all = 0;
}
void moe_emu_unlock(void) { unlocked++; }
void moe_emu_unlock_all(void) {
  if (unlocked++ == 0 || !opened_all) open_all();
}
void moe_emu_lock(void) {
  if (--unlocked == 0) close_all();
}
int moe_emu_is_device(const void *p) { return arena && (const char *)p >= arena && (const char *)p < arena + ARENA; }

static void junk(char *p, size_t n) {
  if (mprotect(p, n, PROT_READ | PROT_WRITE)) die("mprotect failed");
  memset(p, JUNK, n);
  if (!unlocked && mprotect(p, n, PROT_NONE)) die("mprotect failed");
  if (unlocked && !opened_all) open_block(p, n); /* closed with the launch's others */
}

cudaError_t cudaMalloc(void **p, size_t n) {
  if (!arena) {
    arena = (char *)mmap(NULL, ARENA, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (arena == MAP_FAILED) {
      arena = NULL;
      return set_err(cudaErrorMemoryAllocation);
    }
    watch_faults();
#ifdef MADV_NOHUGEPAGE
    madvise(arena, ARENA, MADV_NOHUGEPAGE); // blocks are protected page by page: huge pages would be split
#endif
  }
  n = (n + PAGE - 1) & ~(PAGE - 1);
  if (!n) n = PAGE;
  if (live_sum + n > LIMIT) return set_err(cudaErrorMemoryAllocation); // as a device would
  char *b;
  auto it = spare.find(n);
  if (it != spare.end()) {
    b = it->second;
    spare.erase(it);
  } else {
    if (used + n + PAGE > ARENA) return set_err(cudaErrorMemoryAllocation);
    b = arena + used;
    used += n + PAGE; // and a gap page, in no block
  }
  blocks[b] = block{n, LIVE};
  live_sum += n;
  junk(b, n); // not zeroed on a device either
  *p = b;
  return cudaSuccess;
}

static std::map<char *, block>::iterator find_block(const void *p) {
  auto it = blocks.upper_bound((char *)p);
  if (it == blocks.begin()) return blocks.end();
  --it;
  return (const char *)p < it->first + it->second.n ? it : blocks.end();
}

// the first touch of a block inside a launch (see open_block)
static struct sigaction prev_segv;
static void on_segv(int sig, siginfo_t *si, void *uc) {
  char *a = (char *)si->si_addr;
  if (unlocked && arena && a >= arena && a < arena + ARENA) {
    while (__atomic_exchange_n(&open_lock, 1, __ATOMIC_ACQUIRE)) {}
    auto it = find_block(a);
    if (it != blocks.end() && it->second.state != FREED) {
      open_block(it->first, it->second.n);
      __atomic_store_n(&open_lock, 0, __ATOMIC_RELEASE);
      return; /* the access runs again, now allowed */
    }
    fprintf(stderr, "CUDA emulator: a kernel touched device memory at %p, %s\n", (void *)a,
            it == blocks.end() ? "in no block (past the end of one)" : "in a freed block (a use after free)");
    abort();
  }
  sigaction(SIGSEGV, &prev_segv, NULL); /* not a launch's: the fault crashes as it would without us */
}
static void watch_faults(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &prev_segv);
}

cudaError_t cudaFree(void *p) {
  if (!p) return cudaSuccess;
  auto it = blocks.find((char *)p);
  if (it == blocks.end() || it->second.state == FREED)
    return set_errf(cudaErrorInvalidValue, "invalid argument (emulator: cudaFree of %p, %s)", p,
                    it == blocks.end() ? "which cudaMalloc did not return" : "freed already");
  it->second.state = FREED;
  live_sum -= it->second.n;
  madvise(it->first, it->second.n, MADV_DONTNEED); // its pages go back to the host
  if (unlocked && mprotect(it->first, it->second.n, PROT_NONE)) die("mprotect failed");
  freed_q.push_back(it->first);
  if (freed_q.size() > FREE_QUARANTINE) {
    char *old = freed_q.front();
    freed_q.pop_front();
    spare.insert({blocks[old].n, old});
  }
  return cudaSuccess;
}

// moelua's caching allocator took a block back (retire) or handed it out again (revive)
void moe_emu_retire(void *p) {
  auto it = blocks.find((char *)p);
  if (it == blocks.end() || it->second.state != LIVE) return;
  it->second.state = RETIRED;
  junk(it->first, it->second.n);
}
void moe_emu_revive(void *p) {
  auto it = blocks.find((char *)p);
  if (it == blocks.end() || it->second.state != RETIRED) return;
  it->second.state = LIVE;
}

// what p is, when it is not inside a live block: NULL when it is
static const char *not_live(const void *p, size_t n) {
  if (!moe_emu_is_device(p)) return "a host pointer";
  auto it = find_block(p);
  if (it == blocks.end()) return "not inside any device block";
  if (it->second.state == RETIRED) return "inside a block moelua freed (it waits in the caching allocator)";
  if (it->second.state == FREED) return "inside a freed block (cudaFree)";
  if ((const char *)p + n > it->first + it->second.n) return "a range past the end of its block";
  return NULL;
}

static cudaError_t check_range(const void *p, size_t n, int device, const char *call, const char *which) {
  if (!n) return cudaSuccess;
  if (!device) {
    if (moe_emu_is_device(p))
      return set_errf(cudaErrorInvalidValue, "invalid argument (emulator: %s's %s is device memory, not host)", call,
                      which);
    return cudaSuccess;
  }
  const char *what = not_live(p, n);
  if (what)
    return set_errf(cudaErrorInvalidValue, "invalid argument (emulator: %s's %s of %zu bytes is %s)", call, which, n,
                    what);
  return cudaSuccess;
}

// a copy opens only the pages it touches (opening the whole arena costs a
// page-table walk over every live block)
static void open_pages(const void *p, size_t n, int rw) {
  if (unlocked || !n || !moe_emu_is_device(p)) return;
  uintptr_t a = (uintptr_t)p & ~(uintptr_t)(PAGE - 1), b = ((uintptr_t)p + n + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
  if (mprotect((void *)a, b - a, rw ? PROT_READ | PROT_WRITE : PROT_NONE)) die("mprotect failed");
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
  cudaError_t e = check_range(dst, n, kind != cudaMemcpyDeviceToHost, "cudaMemcpy", "destination");
  if (e == cudaSuccess) e = check_range(src, n, kind != cudaMemcpyHostToDevice, "cudaMemcpy", "source");
  if (e != cudaSuccess) return e;
  open_pages(dst, n, 1);
  open_pages(src, n, 1);
  memmove(dst, src, n);
  open_pages(dst, n, 0);
  open_pages(src, n, 0);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, n, kind);
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
  cudaError_t e = check_range(p, n, 1, "cudaMemset", "block");
  if (e != cudaSuccess) return e;
  open_pages(p, n, 1);
  memset(p, v, n);
  open_pages(p, n, 0);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }

// MOE_EMU_NO_DEVICE: a driver without a GPU; MOE_EMU_OLD_DRIVER: a driver older
// than the runtime; MOE_EMU_NO_DRIVER: no driver at all (as CUDA reports each)
static int env_on(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}
cudaError_t cudaDriverGetVersion(int *v) {
  *v = env_on("MOE_EMU_NO_DRIVER") ? 0 : env_on("MOE_EMU_OLD_DRIVER") ? 11020 : CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *n) {
  *n = 0;
  if (env_on("MOE_EMU_NO_DRIVER") || env_on("MOE_EMU_OLD_DRIVER")) return set_err(cudaErrorInsufficientDriver);
  if (env_on("MOE_EMU_NO_DEVICE")) return set_err(cudaErrorNoDevice);
  *n = 1;
  return cudaSuccess;
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
  *t = LIMIT;
  *f = LIMIT - live_sum;
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
struct moe_emu_stream {
  unsigned flags;
};
struct moe_emu_event {
  int recorded;
};
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  *s = new moe_emu_stream{flags};
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
  *e = new moe_emu_event{0};
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  if (!e) return set_err(cudaErrorInvalidValue);
  e->recorded = 1;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return e ? cudaSuccess : set_err(cudaErrorInvalidValue); }
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return e ? cudaSuccess : set_err(cudaErrorInvalidValue); }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned) {
  return e ? cudaSuccess : set_err(cudaErrorInvalidValue);
}
// pinned host memory is host memory (a kernel may not take it: it is outside the arena)
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned) {
  *p = NULL;
  if (posix_memalign(p, 4096, n ? n : 1)) return set_err(cudaErrorMemoryAllocation);
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p) {
  free(p);
  return cudaSuccess;
}
const char *cudaGetErrorString(cudaError_t e) {
  if (e != cudaSuccess && e == detail_code) return detail;
  switch (e) {
  case cudaSuccess: return "no error";
  case cudaErrorInvalidValue: return "invalid argument";
  case cudaErrorMemoryAllocation: return "out of memory";
  case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
  case cudaErrorNoDevice: return "no CUDA-capable device is detected";
  case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
  case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
  default: return "unspecified launch failure";
  }
}

// a kernel's pointer argument: NULL, or inside (or just past the end of) a live block
int moe_emu_check_ptr(const char *kernel, int arg, const void *p) {
  if (!p) return 0;
  const char *what = not_live(p, 0);
  if (what && moe_emu_is_device(p) && find_block(p) == blocks.end()) {
    // one past the end of a live block is fine (a gap page follows every block, so it is no other block's start)
    auto it = blocks.upper_bound((char *)p);
    if (it != blocks.begin() && (--it)->second.state == LIVE && it->first + it->second.n == (const char *)p)
      what = NULL;
  }
  if (!what) return 0;
  set_errf(cudaErrorIllegalAddress,
           "an illegal memory access was encountered (emulator: %s's pointer argument %d, %p, is %s; the kernel "
           "did not run)",
           kernel, arg, p, what);
  return 1;
}

// ---------------------------------------------------------------- launches
static const size_t STACK = 64 << 10;
static std::vector<ucontext_t> fib;
static std::vector<char *> stacks;
static std::vector<int> state; // 0 running/ready, 1 at a barrier, 2 done
// Switches between fibers: swapcontext saves and restores the signal mask, a
// system call per switch (it was 90% of the time of a training run). A fiber is
// entered once through its ucontext and then switched with _setjmp/_longjmp,
// which do not touch the mask. Fibers persist across blocks and launches: one
// that finishes its thread loops back for the next (started[i] = 1); one left
// at a barrier (a divergent barrier's abandoned fibers) is made afresh.
struct fiber_jb {
  jmp_buf jb;
};
static std::vector<fiber_jb> fjb;
static std::vector<char> started;
static jmp_buf sched_jb;
static int cur = -1, fibers; // fibers: this launch runs threads as fibers
static const std::function<void()> *body;
static std::vector<char> dyn;
static std::vector<double> slots;
static unsigned launches;
static jmp_buf escape; // a barrier in a MOE_LAUNCH kernel leaves it through here
static char escape_msg[256];

void *moe_emu_dyn_smem(void) { return dyn.data(); }

static void set_thread(int i) {
  threadIdx.x = i % blockDim.x;
  threadIdx.y = i / blockDim.x % blockDim.y;
  threadIdx.z = i / (blockDim.x * blockDim.y);
}

static void trampoline(void) {
  for (;;) {
    (*body)();
    state[cur] = 2;
    if (!_setjmp(fjb[cur].jb)) _longjmp(sched_jb, 1);
    // resumed by the next block (or launch): run its thread
  }
}

// from the scheduler into fiber i, until it reaches a barrier or finishes
static void enter(int i) {
  if (_setjmp(sched_jb)) return;
  if (started[i]) _longjmp(fjb[i].jb, 1);
  started[i] = 1;
  getcontext(&fib[i]);
  fib[i].uc_stack.ss_sp = stacks[i];
  fib[i].uc_stack.ss_size = STACK;
  fib[i].uc_link = NULL;
  makecontext(&fib[i], trampoline, 0);
  setcontext(&fib[i]);
}

void __syncthreads(void) {
  if (!fibers) {
    // threads run as a plain loop here, on the launch's own stack: leave the kernel
    snprintf(escape_msg, sizeof escape_msg, "__syncthreads (or a warp shuffle) in a kernel launched with MOE_LAUNCH");
    longjmp(escape, 1);
  }
  state[cur] = 1;
  if (!_setjmp(fjb[cur].jb)) _longjmp(sched_jb, 1);
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

static void shuffle(std::vector<int> &order, unsigned seed) {
  int n = (int)order.size();
  for (int i = 0; i < n; i++) order[i] = i;
  for (int i = n - 1; i > 0; i--) {
    seed = seed * 1664525u + 1013904223u;
    int j = (int)((seed >> 8) % (unsigned)(i + 1));
    int t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

// Runs every block; variant 1 (MOE_EMU_TWICE's second run) takes the blocks
// in reverse, plain threads in reverse and other shuffles. 0, or -1 with
// escape_msg set (a divergent barrier).
static int run_blocks(dim3 grid, int n, size_t smem, int sync, unsigned variant) {
  static std::vector<int> order; // static: a longjmp out of here skips destructors
  order.resize(n);
  uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
  for (uint64_t k = 0; k < nblocks; k++) {
    uint64_t lin = variant ? nblocks - 1 - k : k;
    unsigned bx = (unsigned)(lin % grid.x), by = (unsigned)(lin / grid.x % grid.y),
             bz = (unsigned)(lin / ((uint64_t)grid.x * grid.y));
    blockIdx = dim3(bx, by, bz);
    if (smem) memset(dyn.data(), 0xA5, smem); // each block's shared memory starts as junk
    if (!sync) {
      for (int t = 0; t < n; t++) {
        cur = variant ? n - 1 - t : t;
        set_thread(cur);
        (*body)();
      }
      continue;
    }
    for (int i = 0; i < n; i++) state[i] = 0;
    // phases between barriers; threads in a shuffled order each phase
    for (unsigned phase = 0;; phase++) {
      shuffle(order, launches * 2654435761u + phase * 40503u + bx * 97u + by * 13u + bz + variant * 0x9e3779b9u);
      int done = 0, waiting = 0;
      for (int k2 = 0; k2 < n; k2++) {
        int i = order[k2];
        if (state[i] == 2) continue;
        state[i] = 0;
        cur = i;
        set_thread(i);
        enter(i);
      }
      for (int i = 0; i < n; i++) {
        done += state[i] == 2;
        waiting += state[i] == 1;
      }
      if (done == n) break;
      if (done) { // the waiting fibers are abandoned (made afresh when next used)
        for (int i = 0; i < n; i++)
          if (state[i] != 2) started[i] = 0;
        snprintf(escape_msg, sizeof escape_msg,
                 "block (%u,%u,%u): %d threads wait at __syncthreads while %d have exited (a divergent barrier)", bx,
                 by, bz, waiting, done);
        return -1;
      }
    }
  }
  return 0;
}

// MOE_EMU_TWICE=1: the device memory a launch can write (every live block)
struct snapshot {
  std::vector<std::pair<char *, size_t>> where;
  std::vector<char> bytes;
  void take() {
    where.clear();
    size_t total = 0;
    for (auto &kv : blocks)
      if (kv.second.state == LIVE) where.push_back({kv.first, kv.second.n}), total += kv.second.n;
    bytes.resize(total);
    size_t o = 0;
    for (auto &w : where) memcpy(bytes.data() + o, w.first, w.second), o += w.second;
  }
  void restore() const {
    size_t o = 0;
    for (auto &w : where) memcpy(w.first, bytes.data() + o, w.second), o += w.second;
  }
  // the first byte where the arena differs from this snapshot: its block and offset
  int differs(char **blk, size_t *off) const {
    size_t o = 0;
    for (auto &w : where) {
      if (memcmp(w.first, bytes.data() + o, w.second))
        for (size_t i = 0; i < w.second; i++)
          if (w.first[i] != bytes[o + i]) {
            *blk = w.first;
            *off = i;
            return 1;
          }
      o += w.second;
    }
    return 0;
  }
};

void moe_emu_launch(const char *name, dim3 grid, dim3 block, size_t smem, int sync, const std::function<void()> &fn) {
  static int twice = -1;
  if (twice < 0) twice = env_on("MOE_EMU_TWICE");
  size_t nthreads = (size_t)block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535 || smem > (48 << 10)) {
    set_errf(cudaErrorInvalidConfiguration,
             "invalid configuration argument (emulator: %s launched with grid %u,%u,%u, block %u,%u,%u, %zu bytes "
             "of shared memory)",
             name, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
    return;
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
    fjb.resize(n);
    started.resize(n, 0);
    while ((int)stacks.size() < n) stacks.push_back((char *)malloc(STACK));
  }
  state.assign(n, 0);
  slots.assign(n, 0.0);
  moe_emu_unlock();
  snapshot before, first;
  if (twice) before.take();
  int rc;
  if (setjmp(escape)) rc = -1;
  else rc = run_blocks(grid, n, smem, sync, 0);
  if (rc == 0 && twice) {
    first.take();
    before.restore();
    if (setjmp(escape)) rc = -1;
    else rc = run_blocks(grid, n, smem, sync, 1);
    char *blk = NULL;
    size_t off = 0;
    if (rc == 0 && first.differs(&blk, &off)) {
      snprintf(escape_msg, sizeof escape_msg,
               "wrote different bytes when run again with its blocks and threads in another order (a race or an "
               "order dependence; MOE_EMU_TWICE): first at byte %zu of the %zu-byte block %p",
               off, blocks[blk].n, (void *)blk);
      rc = -1;
    }
  }
  moe_emu_lock();
  cur = -1;
  fibers = 0;
  if (rc) set_errf(cudaErrorLaunchFailure, "unspecified launch failure (emulator: %s: %s)", name, escape_msg);
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
  moe_emu_unlock_all();
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
  moe_emu_unlock_all();
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
  moe_emu_unlock_all();
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
