// runtime.cu -- the CUDA runtime under moelua: device queries, device memory
// (through a caching allocator: freed blocks wait in free lists keyed by their
// rounded size for the next request of that size, as host blocks do in
// src/core/alloc.c) and copies. C linkage; the engine reaches it only through
// src/core/device.c.
#include "common.cuh"

#include <deque>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unordered_map>
#include <vector>

static char last_error[320];

/* ---------------------------------------------------------------- kernel errors
 * Kernels return nothing (as their CPU twins); a launch or cuBLAS failure is
 * kept here as the pending error, and the binding raises it after the op. */
static char pending[320];

cudaStream_t moe_cuda_stream(void) { return 0; } /* the default stream: ordered with cudaMemcpy */
extern "C" void *moe_cuda_current_stream(void) { return (void *)moe_cuda_stream(); }

void moe_cuda_fail(const char *op, const char *what) {
  if (!pending[0]) snprintf(pending, sizeof pending, "%s: CUDA error: %s", op, what);
}

void moe_cuda_launched(const char *op) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) moe_cuda_fail(op, cudaGetErrorString(e));
}

/* the pending error (copied into buf), cleared; 0 when there is none */
extern "C" int moe_cuda_take_error(char *buf, size_t len) {
  if (!pending[0]) return 0;
  snprintf(buf, len, "%s", pending);
  pending[0] = '\0';
  return 1;
}

extern "C" int moe_cuda_memset(void *p, int v, size_t n) {
  cudaError_t e = cudaMemsetAsync(p, v, n, moe_cuda_stream());
  if (e == cudaSuccess) return 0;
  snprintf(last_error, sizeof last_error, "cudaMemset: %s", cudaGetErrorString(e));
  cudaGetLastError(); /* not left for the next launch to report */
  return -1;
}

static int fail(const char *what, cudaError_t e) {
  snprintf(last_error, sizeof last_error, "%s: %s", what, cudaGetErrorString(e));
  cudaGetLastError(); /* clear the sticky non-fatal error */
  return -1;
}

extern "C" const char *moe_cuda_last_error(void) { return last_error; }

extern "C" int moe_cuda_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) { /* no driver or no device: not an error for the caller */
    fail("cudaGetDeviceCount", e);
    return 0;
  }
  return n;
}

extern "C" int moe_cuda_versions(int *runtime, int *driver) {
  *runtime = *driver = 0;
  cudaRuntimeGetVersion(runtime);
  cudaDriverGetVersion(driver); /* 0 when no driver is installed */
  cudaGetLastError();
  return 0;
}

extern "C" int moe_cuda_is_emulator(void) {
#ifdef MOE_CUDA_EMU
  return 1;
#else
  return 0;
#endif
}

/* why no device is usable, in plain words ("" when one is) */
extern "C" const char *moe_cuda_unavailable_reason(void) {
  static char why[400];
  int n = 0, rt = 0, drv = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  moe_cuda_versions(&rt, &drv);
  cudaGetLastError();
  if (e == cudaSuccess && n > 0) return "";
  if (drv == 0)
    snprintf(why, sizeof why, "no NVIDIA driver is installed (libcuda could not be loaded), so no GPU can be used");
  else if (drv < rt)
    snprintf(why, sizeof why,
             "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime moelua was built with: "
             "update the driver",
             drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
  else if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0))
    snprintf(why, sizeof why, "the NVIDIA driver is loaded but sees no GPU (check CUDA_VISIBLE_DEVICES)");
  else if (e == cudaErrorInsufficientDriver)
    snprintf(why, sizeof why, "the NVIDIA driver is too old for the CUDA %d.%d runtime moelua was built with",
             rt / 1000, rt % 1000 / 10);
  else if (e == cudaErrorNoKernelImageForDevice)
    snprintf(why, sizeof why,
             "the GPU's architecture has no kernels in this build (built for sm_80, sm_90 and "
             "compute_90 PTX)");
  else snprintf(why, sizeof why, "the CUDA runtime found no usable GPU: %s", cudaGetErrorString(e));
  return why;
}

extern "C" int moe_cuda_device_name(int dev, char *out, size_t len) {
  cudaDeviceProp p;
  cudaError_t e = cudaGetDeviceProperties(&p, dev);
  if (e != cudaSuccess) return fail("cudaGetDeviceProperties", e);
  snprintf(out, len, "%s", p.name);
  return 0;
}

extern "C" int moe_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
  cudaError_t e = cudaMemGetInfo(free_bytes, total_bytes);
  return e == cudaSuccess ? 0 : fail("cudaMemGetInfo", e);
}

/* ---------------------------------------------------------------- caching allocator
 * A freed block goes on the free list of its rounded size (no cap on their
 * number: a fixed table used to overflow into synchronising cudaFrees); a
 * request takes the newest block of its size. The cache is given back when a
 * cudaMalloc fails (below) or by moe_cuda_empty_cache. On the emulator a freed
 * block is first filled with junk and kept out of reuse for QUARANTINE more
 * frees, so that a use after free reads garbage instead of a newer tensor. */

#ifdef MOE_CUDA_EMU
#define QUARANTINE 16
#else
#define QUARANTINE 0
#endif
static std::unordered_map<size_t, std::vector<void *>> free_lists;
static std::deque<std::pair<void *, size_t>> quarantine;
static size_t cached_bytes, live_bytes, peak_bytes;
static uint64_t n_drains, n_waits; /* (below: host waits) */
static void (*oom_hook)(void);

static size_t round_up(size_t n) {
  size_t p = 512;
  while (p < n && p < ((size_t)1 << 20)) p *= 2;
  if (n <= p) return p;
  return (n + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1); /* 1 MiB steps above 1 MiB */
}

extern "C" void moe_cuda_set_oom_hook(void (*fn)(void)) { oom_hook = fn; }

static void pinned_empty(void);
static void side_empty(void);
static void drained(const char *what);

extern "C" size_t moe_cuda_empty_cache(void) {
  size_t freed = cached_bytes;
  drained("cudaFree, emptying the cache"); /* (cudaFree waits for the device) */
  pinned_empty();
  side_empty();
  for (auto &q : quarantine) cudaFree(q.first);
  quarantine.clear();
  for (auto &kv : free_lists)
    for (void *p : kv.second) cudaFree(p);
  free_lists.clear();
  cached_bytes = 0;
  cudaGetLastError();
  return freed;
}

static void *take_cached(size_t want) {
  auto it = free_lists.find(want);
  if (it == free_lists.end() || it->second.empty()) return NULL;
  void *p = it->second.back();
  it->second.pop_back();
  cached_bytes -= want;
#ifdef MOE_CUDA_EMU
  moe_emu_revive(p);
#endif
  return p;
}

/* "1.50 GiB" */
static const char *human(size_t n, char *buf, size_t len) {
  const char *unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)n;
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, u++;
  if (u == 0) snprintf(buf, len, "%zu bytes", n);
  else snprintf(buf, len, "%.2f %s", v, unit[u]);
  return buf;
}

/* device memory of at least n bytes; NULL with the error recorded. When
 * cudaMalloc fails, the binding's hook runs a full Lua collection (dead
 * tensors' blocks come back to the cache), the cache is given back to the
 * driver, and the allocation is tried once more. */
extern "C" void *moe_cuda_malloc(size_t n, size_t *got) {
  static int in_hook;
  size_t want = round_up(n ? n : 1);
  void *p = take_cached(want);
  if (!p) {
    cudaError_t e = cudaMalloc(&p, want);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      if (oom_hook && !in_hook) {
        in_hook = 1;
        oom_hook();
        in_hook = 0;
      }
      moe_cuda_empty_cache();
      e = cudaMalloc(&p, want);
    }
    if (e != cudaSuccess) {
      size_t fr = 0, tot = 0;
      cudaGetLastError();
      cudaMemGetInfo(&fr, &tot);
      cudaGetLastError();
      char a[32], b[32], c[32], d[32];
      snprintf(last_error, sizeof last_error,
               "out of CUDA memory: requested %zu bytes (%s), %zu live (%s), %zu of %zu free (%s of %s)", want,
               human(want, a, sizeof a), live_bytes, human(live_bytes, b, sizeof b), fr, tot, human(fr, c, sizeof c),
               human(tot, d, sizeof d));
      return NULL;
    }
  }
  live_bytes += want;
  if (live_bytes > peak_bytes) peak_bytes = live_bytes;
  *got = want;
  return p;
}

extern "C" void moe_cuda_free(void *p, size_t bytes) {
  if (!p) return;
  live_bytes -= bytes;
  cached_bytes += bytes;
#ifdef MOE_CUDA_EMU
  moe_emu_retire(p);
#endif
  if (QUARANTINE == 0) {
    free_lists[bytes].push_back(p);
    return;
  }
  quarantine.push_back({p, bytes});
  if (quarantine.size() > QUARANTINE) {
    free_lists[quarantine.front().second].push_back(quarantine.front().first);
    quarantine.pop_front();
  }
}

extern "C" void moe_cuda_memory_stats(size_t *live, size_t *peak, size_t *cached) {
  *live = live_bytes;
  *peak = peak_bytes;
  *cached = cached_bytes;
}

/* ---------------------------------------------------------------- host waits
 * drains: calls that wait until every queued kernel has run (a copy to the
 * host; a copy from pageable host memory, which CUDA orders after the stream's
 * work; cudaFree). waits: an event wait, after which the work queued behind the
 * event keeps the device busy. moe.cuda.syncs() reads both. */
static void (*sync_hook)(const char *what);
extern "C" void moe_cuda_set_sync_hook(void (*fn)(const char *what)) { sync_hook = fn; }

static void drained(const char *what) {
  n_drains++;
  if (sync_hook) sync_hook(what);
}

extern "C" void moe_cuda_sync_counts(uint64_t *drains, uint64_t *waits) {
  *drains = n_drains;
  *waits = n_waits;
}

static int staged_copy(void *dst, const void *src, size_t n);

/* kind: 0 host->device, 1 device->host, 2 device->device. A small copy to the
 * device goes through pinned staging memory (staged_copy): no wait */
extern "C" int moe_cuda_memcpy(void *dst, const void *src, size_t n, int kind) {
  static const cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice};
  if (kind == 0) {
    int r = staged_copy(dst, src, n);
    if (r <= 0) return r;
  }
  if (kind != 2) drained(kind == 1 ? "a copy to the host" : "a copy from pageable host memory");
  cudaError_t e = cudaMemcpy(dst, src, n, kinds[kind]);
  return e == cudaSuccess ? 0 : fail("cudaMemcpy", e);
}

/* ---------------------------------------------------------------- events, the copy stream
 * Batches for fit travel on a second stream, so that a copy overlaps the
 * kernels of the step before it. The stream is non-blocking (it does not wait
 * for the default stream's work); the default stream waits for each copy's
 * event before its next kernel. */
static std::vector<cudaEvent_t> spare_events;
static cudaStream_t copy_stream;

static cudaEvent_t event_get(void) {
  if (!spare_events.empty()) {
    cudaEvent_t e = spare_events.back();
    spare_events.pop_back();
    return e;
  }
  cudaEvent_t e = NULL;
  if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) {
    fail("cudaEventCreate", cudaGetLastError());
    return NULL;
  }
  return e;
}

static void event_put(cudaEvent_t e) {
  if (e) spare_events.push_back(e);
}

/* waits on the host until e has happened; counted */
static void event_wait(cudaEvent_t e) {
  if (!e) return;
  if (cudaEventQuery(e) != cudaSuccess) {
    cudaGetLastError(); /* (cudaErrorNotReady is not an error) */
    n_waits++;
    cudaEventSynchronize(e);
  }
}

static cudaStream_t get_copy_stream(void) {
  if (!copy_stream && cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking) != cudaSuccess) {
    fail("cudaStreamCreate", cudaGetLastError());
    copy_stream = NULL;
  }
  return copy_stream;
}

/* ---------------------------------------------------------------- pinned host memory
 * Page-locked blocks (cudaHostAlloc) for the host side of asynchronous copies.
 * A block remembers the event of the last copy that read it; a freed block
 * waits in a free list of its size and is handed out again only after that
 * event (so a copy in flight never sees its source rewritten). At most
 * PINNED_CACHE bytes wait; beyond that a block goes back to the driver. */
#define PINNED_CACHE ((size_t)256 << 20)
struct pinned_block {
  void *p;
  cudaEvent_t ev;
};
static std::unordered_map<size_t, std::vector<pinned_block>> pinned_free;
static std::unordered_map<void *, cudaEvent_t> pinned_reads; /* live blocks: their last copy */
static size_t pinned_cached;

static size_t pinned_round(size_t n) {
  size_t p = 4096;
  while (p < n) p *= 2;
  return p;
}

extern "C" void *moe_cuda_host_alloc(size_t n, size_t *got) {
  size_t want = pinned_round(n ? n : 1);
  auto it = pinned_free.find(want);
  void *p = NULL;
  if (it != pinned_free.end() && !it->second.empty()) {
    pinned_block b = it->second.back();
    it->second.pop_back();
    pinned_cached -= want;
    event_wait(b.ev);
    event_put(b.ev);
    p = b.p;
  } else {
    cudaError_t e = cudaHostAlloc(&p, want, cudaHostAllocDefault);
    if (e != cudaSuccess) {
      fail("cudaHostAlloc (pinned host memory)", e);
      return NULL;
    }
  }
  *got = want;
  return p;
}

extern "C" void moe_cuda_host_free(void *p, size_t bytes) {
  if (!p) return;
  cudaEvent_t ev = NULL;
  auto r = pinned_reads.find(p);
  if (r != pinned_reads.end()) {
    ev = r->second;
    pinned_reads.erase(r);
  }
  if (pinned_cached + bytes > PINNED_CACHE) {
    event_wait(ev);
    event_put(ev);
    cudaFreeHost(p);
    return;
  }
  pinned_free[bytes].push_back({p, ev});
  pinned_cached += bytes;
}

static void pinned_empty(void) {
  for (auto &kv : pinned_free)
    for (auto &b : kv.second) {
      event_wait(b.ev);
      event_put(b.ev);
      cudaFreeHost(b.p);
    }
  pinned_free.clear();
  pinned_cached = 0;
}

/* ---------------------------------------------------------------- copy destinations
 * Device blocks that the copy stream writes come from their own free lists: a
 * freed one carries an event recorded on the default stream when it was freed
 * (after every kernel that used it), and the copy stream waits for that event
 * before writing it again. (The main cache's blocks are safe only for work on
 * the default stream.) */
struct side_block {
  void *p;
  cudaEvent_t ev;
};
static std::unordered_map<size_t, std::vector<side_block>> side_free;

extern "C" void *moe_cuda_malloc_copy_dst(size_t n, size_t *got) {
  size_t want = round_up(n ? n : 1);
  auto it = side_free.find(want);
  if (it != side_free.end() && !it->second.empty()) {
    side_block b = it->second.back();
    it->second.pop_back();
    cached_bytes -= want;
    live_bytes += want;
    if (live_bytes > peak_bytes) peak_bytes = live_bytes;
    cudaStream_t cs = get_copy_stream();
    if (cs && b.ev) cudaStreamWaitEvent(cs, b.ev, 0);
    event_put(b.ev);
#ifdef MOE_CUDA_EMU
    moe_emu_revive(b.p);
#endif
    *got = want;
    return b.p;
  }
  // a block from the main cache may still be read by queued default-stream
  // kernels (its last owner's): the copy stream waits for all of them, once
  void *p = moe_cuda_malloc(want, got);
  cudaStream_t cs = get_copy_stream();
  cudaEvent_t ev = p && cs ? event_get() : NULL;
  if (ev) {
    cudaEventRecord(ev, moe_cuda_stream());
    cudaStreamWaitEvent(cs, ev, 0);
    event_put(ev);
  }
  return p;
}

extern "C" void moe_cuda_free_copy_dst(void *p, size_t bytes) {
  if (!p) return;
  cudaEvent_t ev = event_get();
  if (ev) cudaEventRecord(ev, moe_cuda_stream());
  live_bytes -= bytes;
  cached_bytes += bytes;
#ifdef MOE_CUDA_EMU
  moe_emu_retire(p);
#endif
  side_free[bytes].push_back({p, ev});
}

static void side_empty(void) {
  for (auto &kv : side_free)
    for (auto &b : kv.second) {
      event_put(b.ev);
      cudaFree(b.p);
    }
  side_free.clear();
}

/* n bytes from pinned host memory (src inside the pinned block `block`) to dst
 * (a block from moe_cuda_malloc_copy_dst) on the copy stream; the default
 * stream's later work waits for it, the host does not. */
extern "C" int moe_cuda_copy_to_device_async(void *dst, const void *src, size_t n, void *block) {
  cudaStream_t cs = get_copy_stream();
  if (!cs) return -1;
  cudaError_t e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cs);
  if (e != cudaSuccess) return fail("cudaMemcpyAsync", e);
  cudaEvent_t ev = event_get();
  if (!ev) return -1;
  cudaEventRecord(ev, cs);
  cudaStreamWaitEvent(moe_cuda_stream(), ev, 0);
  cudaEvent_t &slot = pinned_reads[block];
  event_put(slot); /* (an earlier copy of the block: before this one on the same stream) */
  slot = ev;
  e = cudaGetLastError();
  return e == cudaSuccess ? 0 : fail("the asynchronous copy", e);
}

/* ---------------------------------------------------------------- staged small copies
 * A copy to the device of at most STAGE_BYTES (an arange, a scalar, a table's
 * values) is copied into a pinned staging buffer, then queued from there: the
 * caller may reuse its memory at once and the host does not wait. A buffer is
 * reused once the copy that read it has happened (its event). Returns 1 when
 * the copy is too large to stage (the caller copies it itself). */
#define STAGE_BYTES ((size_t)64 << 10)
#define STAGE_BUFS 32
struct stage_buf {
  char *p;
  cudaEvent_t ev;
};
static stage_buf stages[STAGE_BUFS];
static int stage_next;

static int staged_copy(void *dst, const void *src, size_t n) {
  if (n > STAGE_BYTES) return 1;
  stage_buf &b = stages[stage_next];
  if (!b.p) {
    void *p = NULL;
    if (cudaHostAlloc(&p, STAGE_BYTES, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      return 1; /* (no pinned memory: an ordinary copy) */
    }
    b.p = (char *)p;
    if (!(b.ev = event_get())) return 1;
  } else {
    event_wait(b.ev); /* (32 copies ago: long done, as a rule) */
  }
  stage_next = (stage_next + 1) % STAGE_BUFS;
  memcpy(b.p, src, n);
  cudaError_t e = cudaMemcpyAsync(dst, b.p, n, cudaMemcpyHostToDevice, moe_cuda_stream());
  if (e == cudaSuccess) e = cudaEventRecord(b.ev, moe_cuda_stream());
  return e == cudaSuccess ? 0 : fail("cudaMemcpyAsync", e);
}

/* ---------------------------------------------------------------- reads for later
 * A few bytes copied to pinned host memory behind the work queued so far; the
 * host goes on and reads them later (moe_cuda_read_wait). */
struct moe_cuda_read {
  char bytes[16];
  cudaEvent_t ev;
};
static std::vector<moe_cuda_read *> spare_reads;

extern "C" moe_cuda_read *moe_cuda_read_start(const void *src, size_t n) {
  if (n > 16) {
    snprintf(last_error, sizeof last_error, "a read for later takes at most 16 bytes, not %zu", n);
    return NULL;
  }
  moe_cuda_read *r;
  if (!spare_reads.empty()) {
    r = spare_reads.back();
    spare_reads.pop_back();
  } else {
    void *p = NULL;
    if (cudaHostAlloc(&p, sizeof *r, cudaHostAllocDefault) != cudaSuccess) {
      fail("cudaHostAlloc (pinned host memory)", cudaGetLastError());
      return NULL;
    }
    r = (moe_cuda_read *)p;
    r->ev = NULL;
  }
  if (!r->ev && !(r->ev = event_get())) {
    spare_reads.push_back(r);
    return NULL;
  }
  cudaError_t e = cudaMemcpyAsync(r->bytes, src, n, cudaMemcpyDeviceToHost, moe_cuda_stream());
  if (e == cudaSuccess) e = cudaEventRecord(r->ev, moe_cuda_stream());
  if (e != cudaSuccess) {
    spare_reads.push_back(r);
    fail("cudaMemcpyAsync", e);
    return NULL;
  }
  return r;
}

extern "C" int moe_cuda_read_ready(moe_cuda_read *r) {
  cudaError_t e = cudaEventQuery(r->ev);
  cudaGetLastError();
  return e == cudaSuccess;
}

extern "C" const void *moe_cuda_read_wait(moe_cuda_read *r) {
  event_wait(r->ev);
  return r->bytes;
}

extern "C" void moe_cuda_read_free(moe_cuda_read *r) {
  if (r) spare_reads.push_back(r);
}

#ifdef MOE_CUDA_EMU
/* ---------------------------------------------------------------- the emulator's self-checks
 * Misuses that moelua's own ops never commit, run on purpose for
 * spec/emu_spec.lua: each records its error as an op would (moe_cuda_launched),
 * so the binding raises it named "emu_probe". */
struct probe_ref { // a pointer the argument check does not look into
  const float *p;
};
__global__ void k_probe_copy(const float *src, float *dst, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src[i];
}
__global__ void k_probe_copy_ref(probe_ref src, float *dst, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src.p[i];
}
__global__ void k_probe_divergent(float *out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void k_probe_barrier(float *out) {
  out[threadIdx.x] = 1;
  __syncthreads();
}
// reads its block's shared memory before writing it: junk, never another block's values
__global__ void k_probe_smem(float *out) {
  MOE_DYN_SMEM(float, sm);
  out[blockIdx.x * blockDim.x + threadIdx.x] = sm[threadIdx.x];
  __syncthreads();
  sm[threadIdx.x] = 1000.0f + blockIdx.x;
}
// every block writes out[0]: the last block wins, so the result depends on the order
__global__ void k_probe_race(float *out) {
  if (threadIdx.x == 0) out[0] = (float)blockIdx.x;
}
// every thread writes sm[0], then all read it: the last thread of the phase wins
__global__ void k_probe_thread_race(float *out) {
  MOE_DYN_SMEM(float, sm);
  sm[0] = (float)threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = sm[0];
}

static float *probe_alloc(int n, size_t *got) { return (float *)moe_cuda_malloc((size_t)n * sizeof(float), got); }

extern "C" int moe_cuda_emu_probe(const char *what, double *out, int nout) {
  const int N = 64;
  float host[N], back[N];
  for (int i = 0; i < N; i++) host[i] = (float)(i + 1);
  size_t g1 = 0, g2 = 0;
  float *a = probe_alloc(N, &g1), *b = probe_alloc(N, &g2);
  if (!a || !b) return -1;
  moe_cuda_memcpy(a, host, sizeof host, 0);
  moe_cuda_memset(b, 0, sizeof back);
  cudaStream_t s = moe_cuda_stream();
  int got = 0;
  if (!strcmp(what, "host_pointer")) {
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, host, b, N);
  } else if (!strcmp(what, "freed_block")) { // freed by moelua: waits in the cache
    size_t g = 0;
    float *f = probe_alloc(N, &g);
    moe_cuda_memcpy(f, host, sizeof host, 0);
    moe_cuda_free(f, g);
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, f, b, N);
  } else if (!strcmp(what, "cudafree_block")) {
    void *f = NULL;
    cudaMalloc(&f, sizeof host);
    cudaFree(f);
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, (const float *)f, b, N);
  } else if (!strcmp(what, "use_after_free")) { // the freed block's values, read through a struct
    size_t g = 0;
    float *f = probe_alloc(N, &g);
    moe_cuda_memcpy(f, host, sizeof host, 0);
    moe_cuda_free(f, g);
    probe_ref r = {f};
    MOE_LAUNCH(k_probe_copy_ref, 1, N, 0, s, r, b, N);
    got = N;
  } else if (!strcmp(what, "use_after_cudafree")) { // the same after cudaFree: PROT_NONE, a crash
    void *f = NULL;
    cudaMalloc(&f, sizeof host);
    cudaFree(f);
    probe_ref r = {(const float *)f};
    MOE_LAUNCH(k_probe_copy_ref, 1, N, 0, s, r, b, N);
    got = N;
  } else if (!strcmp(what, "copy")) { // a correct launch
    MOE_LAUNCH(k_probe_copy, 1, N, 0, s, (const float *)a, b, N);
    got = N;
  } else if (!strcmp(what, "bad_config")) {
    MOE_LAUNCH(k_probe_copy, 1, 2048, 0, s, (const float *)a, b, N);
  } else if (!strcmp(what, "divergent_barrier")) {
    MOE_LAUNCH_SYNC(k_probe_divergent, 1, 32, 0, s, b);
  } else if (!strcmp(what, "barrier_in_plain_launch")) {
    MOE_LAUNCH(k_probe_barrier, 1, 32, 0, s, b);
  } else if (!strcmp(what, "smem")) {
    MOE_LAUNCH_SYNC(k_probe_smem, 2, 32, 32 * sizeof(float), s, b);
    got = N;
  } else if (!strcmp(what, "race")) {
    MOE_LAUNCH(k_probe_race, 8, 32, 0, s, b);
    got = 1;
  } else if (!strcmp(what, "thread_race")) {
    MOE_LAUNCH_SYNC(k_probe_thread_race, 1, 32, sizeof(float), s, b);
    got = 32;
  } else if (!strcmp(what, "memcpy_host_as_device")) {
    if (moe_cuda_memcpy(host, a, sizeof host, 2)) moe_cuda_fail("emu_probe", moe_cuda_last_error());
  } else {
    got = -1;
  }
  moe_cuda_launched("emu_probe");
  if (got > 0) {
    moe_cuda_memcpy(back, b, sizeof back, 1);
    if (got > nout) got = nout;
    for (int i = 0; i < got; i++) out[i] = back[i];
  }
  moe_cuda_free(a, g1);
  moe_cuda_free(b, g2);
  return got;
}
#endif
