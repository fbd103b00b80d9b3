/* alloc.c -- the engine's memory: refcounted 64-byte aligned host storage from
 * size-class pools and a cache of large blocks (huge pages from 4 MiB), device
 * storage headers over the CUDA runtime's cache, pooled tensor headers, and the
 * live/peak byte counts the Lua GC nudge reads. Private interface: alloc.h. */
#include "moe.h"
#include "tensor_impl.h"
#include "alloc.h"
#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---------------------------------------------------------------- storage */

static int64_t live_bytes, live_tensors, peak_bytes;
int64_t moe_live_bytes(void) { return live_bytes; }
int64_t moe_peak_bytes(int reset) {
  int64_t p = peak_bytes;
  if (reset) peak_bytes = live_bytes;
  return p;
}
int64_t moe_live_tensors(void) { return live_tensors; }

/* Physical memory: with overcommit, a larger request "succeeds" and the process is
 * killed when it touches the pages, so such requests get a clean error instead. */
static size_t phys_bytes(void) {
  static size_t cached;
  if (!cached) {
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    cached = pages > 0 && psize > 0 ? (size_t)pages * (size_t)psize : SIZE_MAX;
  }
  return cached;
}

/* Small blocks are recycled through per-size-class free lists: a training step
 * of a small model allocates and frees hundreds of them, and malloc/free were a
 * tenth of its time. Classes are powers of two from 128 bytes to 32 KiB (the
 * 64-byte header included); larger blocks go straight to the allocator. Under
 * AddressSanitizer nothing is pooled, so it still sees every use after free. */
#if defined(__SANITIZE_ADDRESS__)
#define MOE_POOLING 0
#else
#define MOE_POOLING 1
#endif
#define POOL_CLASSES 9
#define POOL_DEPTH 256
static void *block_pool[POOL_CLASSES][POOL_DEPTH];
static int block_pool_n[POOL_CLASSES];

static int size_class(size_t total) {
  if (!MOE_POOLING || total > ((size_t)128 << (POOL_CLASSES - 1))) return -1;
  int c = 0;
  while (((size_t)128 << c) < total) c++;
  return c;
}

/* Large blocks (above the pools) are cached too. glibc serves them with fresh
 * mmaps and unmaps them on free, so every step of a big layer page-faulted
 * its activations and gradients in again (a [5120, 2048] float32 tensor is
 * 10,000 faults, ~10 ms). Sizes are rounded up to 1/8 steps between powers of
 * two, and a freed block waits in a small cache for the next request of its
 * size. The cache is bounded by the process's own high-water mark: a miss
 * first frees cached blocks (largest first) until live + cached + new fits
 * under the largest live total seen so far plus a quarter of it (32 MiB at
 * least). (With no slack above the mark, a step whose sizes vary thrashed:
 * every miss evicted a block the step needed later.) Blocks of 4 MiB and more are 2 MiB aligned
 * and asked for transparent huge pages (one fault per 2 MiB).
 * moe_empty_cache() gives everything back. */
#define LARGE_SLOTS 64
#define HUGE_MIN ((size_t)4 << 20)
static struct {
  void *block;
  size_t bytes;
} large_cache[LARGE_SLOTS];
static int large_n;
static size_t large_cached, large_live, large_peak;

static size_t cache_limit(void) {
  size_t slack = large_peak / 4;
  return large_peak + (slack > ((size_t)32 << 20) ? slack : ((size_t)32 << 20));
}

static size_t large_round(size_t total) {
  size_t p = 1;
  while (p * 2 <= total) p *= 2;
  size_t step = p / 8; /* large blocks are over 32 KiB */
  return (total + step - 1) / step * step;
}

/* blocks of 1 MiB and more are mapped directly, so that freeing one always gives
 * its pages back (glibc would keep some of them in its heap, fragmented) */
#define MAP_MIN ((size_t)1 << 20)
static void *block_map(size_t total) {
  if (total < MAP_MIN) {
    void *b = NULL;
    return posix_memalign(&b, MOE_ALIGN, total) == 0 ? b : NULL;
  }
  size_t extra = total >= HUGE_MIN ? HUGE_MIN / 2 : 0; /* room to align to 2 MiB */
  char *m = mmap(NULL, total + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return NULL;
  if (extra) {
    size_t head = (HUGE_MIN / 2 - (uintptr_t)m % (HUGE_MIN / 2)) % (HUGE_MIN / 2);
    if (head) munmap(m, head);
    if (extra - head) munmap(m + head + total, extra - head);
    m += head;
#ifdef MADV_HUGEPAGE
    madvise(m, total, MADV_HUGEPAGE);
#endif
  }
  return m;
}
static void block_unmap(void *b, size_t total) {
  if (total < MAP_MIN) free(b);
  else munmap(b, total);
}

static void large_drop(int i) {
  block_unmap(large_cache[i].block, large_cache[i].bytes);
  large_cached -= large_cache[i].bytes;
  large_cache[i] = large_cache[--large_n];
}

int moe_allocator_caches(void) { return MOE_POOLING; }

size_t moe_empty_cache(void) {
  size_t freed = large_cached;
  while (large_n > 0) large_drop(large_n - 1);
  for (int c = 0; c < POOL_CLASSES; c++)
    while (block_pool_n[c] > 0) {
      freed += (size_t)128 << c;
      free(block_pool[c][--block_pool_n[c]]);
    }
  return freed;
}

static void *large_get(size_t total) {
  for (int i = 0; i < large_n; i++)
    if (large_cache[i].bytes == total) {
      void *b = large_cache[i].block;
      large_cached -= total;
      large_cache[i] = large_cache[--large_n];
      large_live += total;
      return b;
    }
  while (large_n > 0 && large_live + large_cached + total > cache_limit()) { /* free the largest first */
    int big = 0;
    for (int i = 1; i < large_n; i++)
      if (large_cache[i].bytes > large_cache[big].bytes) big = i;
    large_drop(big);
  }
  void *b = block_map(total);
  if (!b) {
    moe_empty_cache(); /* one more try with nothing held back */
    if (!(b = block_map(total))) return NULL;
  }
  large_live += total;
  if (large_live > large_peak) large_peak = large_live;
  return b;
}

static void large_put(void *b, size_t total) {
  large_live -= total;
  if (large_n < LARGE_SLOTS && large_live + large_cached + total <= cache_limit()) {
    large_cache[large_n].block = b;
    large_cache[large_n++].bytes = total;
    large_cached += total;
  } else {
    block_unmap(b, total);
  }
}

moe_storage *storage_new(size_t nbytes) {
  /* header and data in one aligned block: the header takes the first 64 bytes */
  size_t total = MOE_ALIGN + ((nbytes + MOE_ALIGN - 1) / MOE_ALIGN) * MOE_ALIGN;
  void *block = NULL;
  if (nbytes > phys_bytes()) {
    moe_error("out of memory: a tensor of %.3g GiB exceeds this machine's %.3g GiB of memory",
              (double)nbytes / (1 << 30), (double)phys_bytes() / (1 << 30));
    return NULL;
  }
  int c = size_class(total);
  if (c >= 0 && block_pool_n[c] > 0) {
    block = block_pool[c][--block_pool_n[c]];
  } else if (c < 0 && MOE_POOLING) {
    total = large_round(total);
    block = large_get(total);
  } else {
    if (c >= 0) total = (size_t)128 << c;
    if (posix_memalign(&block, MOE_ALIGN, total) != 0) block = NULL;
  }
  if (!block) {
    moe_error("out of memory allocating %zu bytes", nbytes);
    return NULL;
  }
  moe_storage *s = block;
  s->data = (char *)block + MOE_ALIGN;
  s->nbytes = nbytes;
  s->refcount = 1;
  s->device = MOE_CPU;
  s->version = 0;
  s->ix_marked = 0; /* (a recycled block keeps its old header) */
  s->pinned = s->copy_dst = 0;
  s->pool_class = (int8_t)c;
  s->block_bytes = total;
  live_bytes += (int64_t)nbytes;
  if (live_bytes > peak_bytes) peak_bytes = live_bytes;
  return s;
}

/* a host storage in pinned memory (header and data in one block, as above) */
moe_storage *pinned_storage_new(size_t nbytes) {
  size_t total = MOE_ALIGN + ((nbytes + MOE_ALIGN - 1) / MOE_ALIGN) * MOE_ALIGN, got = 0;
  moe_storage *s = moe_cuda_host_alloc(total, &got);
  if (!s) {
    moe_error("pin_memory: %s", moe_cuda_last_error());
    return NULL;
  }
  memset(s, 0, sizeof *s);
  s->data = (char *)s + MOE_ALIGN;
  s->nbytes = nbytes;
  s->refcount = 1;
  s->device = MOE_CPU;
  s->pool_class = -1;
  s->pinned = 1;
  s->block_bytes = got;
  live_bytes += (int64_t)nbytes;
  if (live_bytes > peak_bytes) peak_bytes = live_bytes;
  return s;
}

void storage_release(moe_storage *s) {
  if (--s->refcount == 0 && s->device == MOE_CUDA) { /* a host header over device memory */
    if (s->copy_dst) moe_cuda_free_copy_dst(s->data, s->block_bytes);
    else moe_cuda_free(s->data, s->block_bytes);
    free(s);
    return;
  }
  if (s->refcount == 0 && s->pinned) {
    live_bytes -= (int64_t)s->nbytes;
    moe_cuda_host_free(s, s->block_bytes);
    return;
  }
  if (s->refcount == 0) {
    live_bytes -= (int64_t)s->nbytes;
    int c = s->pool_class;
    if (c >= 0 && block_pool_n[c] < POOL_DEPTH) block_pool[c][block_pool_n[c]++] = s;
    else if (c < 0 && MOE_POOLING) large_put(s, s->block_bytes);
    else free(s);
  }
}

/* ---------------------------------------------------------------- tensors */

static moe_tensor *tensor_pool[1024];
static int tensor_pool_n;

moe_tensor *tensor_alloc(void) {
  moe_tensor *t;
  if (MOE_POOLING && tensor_pool_n > 0) {
    t = tensor_pool[--tensor_pool_n];
    memset(t, 0, sizeof *t);
  } else if (!(t = calloc(1, sizeof *t))) {
    moe_error("out of memory");
    return NULL;
  }
  t->refcount = 1;
  live_tensors++;
  return t;
}

void tensor_free(moe_tensor *t) {
  live_tensors--;
  if (MOE_POOLING && tensor_pool_n < 1024) tensor_pool[tensor_pool_n++] = t;
  else free(t);
}

/* ---------------------------------------------------------------- devices */

/* a host header over nbytes of device memory (block_bytes: what the cache gave) */
moe_storage *device_storage_new_for(size_t nbytes, int copy_dst) {
  moe_storage *s = calloc(1, sizeof *s);
  if (!s) {
    moe_error("out of memory");
    return NULL;
  }
  s->refcount = 1;
  s->pool_class = -1;
  s->nbytes = nbytes;
  s->device = MOE_CUDA;
  s->copy_dst = (int8_t)copy_dst;
  s->data = copy_dst ? moe_cuda_malloc_copy_dst(nbytes, &s->block_bytes) : moe_cuda_malloc(nbytes, &s->block_bytes);
  if (!s->data) {
    free(s);
    moe_error("cuda: %s", moe_cuda_last_error());
    return NULL;
  }
  return s;
}

moe_storage *device_storage_new(size_t nbytes) { return device_storage_new_for(nbytes, 0); }
