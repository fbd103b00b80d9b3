/* gather.c -- fit{}'s batches: rows of several tensors gathered by one index,
 * on a helper thread while the caller trains on the current batch
 * (moe_gather_start / finish / free in moe.h). */
#include "moe.h"
#include "dispatch.h"
#include "index_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- rows gathered in the background */

/* One helper thread copies the rows of the next batch while the caller works
 * on the current one (fit{}'s shuffled batches: a 32-row gather from a 65 MB
 * tensor is cache misses, 15-25 us of a 250 us step, on a core the step leaves
 * idle). The outputs are fresh tensors, made and handed back on the caller's
 * thread; the helper only copies. Sources that are not contiguous host tensors
 * without autograd (whose copy may use the thread pool, or record a graph) are
 * gathered at once on the caller's thread instead, as is everything when a
 * job is already in flight. The sources must not change while a job is in
 * flight (fit{} does not change them; a callback that writes into x in place
 * would race with the copy of the next batch). */
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <stdatomic.h>
#include <time.h>

struct moe_gather_job {
  int n, async;
  int64_t rows, ibase, blocks;
  int64_t *ix; /* the job's own copy of the checked index */
  moe_tensor *src[MOE_GATHER_MAX], *out[MOE_GATHER_MAX];
  /* what the copy touches, so that the helper never reads a tensor struct */
  const char *sp[MOE_GATHER_MAX];
  char *dp[MOE_GATHER_MAX];
  size_t blk[MOE_GATHER_MAX];
  atomic_llong next;   /* the next block of rows to claim */
  atomic_llong copied; /* rows copied */
  atomic_int refs;     /* the caller's, and the queue's or the helper's */
};

/* The caller never wakes the helper while fit{} runs: waking a thread asleep
 * on a condition variable cost the caller more than the gather on the
 * development VM (overhead medians 90-100 us a step). Nor does the helper spin:
 * a thread polling on the other vCPU slowed the caller's step by 17-56 us. It
 * naps 20 us at a time and looks for a job in between (a job is posted a whole
 * step, ~200 us, before it is needed), and after half a second without one it
 * sleeps until a post wakes it.
 *
 * Helper and caller share the copy: rows go in blocks claimed with one atomic
 * add, so when the job is needed the caller copies the blocks the helper has
 * not reached (or not picked up at all) instead of waiting for a thread the
 * scheduler has not run. Waiting on the helper had cost fit{} 9-34 us a step
 * on average at batch 32 on the 2-vCPU development VM: 2-6% of the jobs were
 * still waiting there a whole step after they were posted, the other vCPU busy.
 * The caller waits only for a block the helper is copying (8 rows). */
#define GATHER_NAP_NS 20000      /* the idle helper looks for a job this often, */
#define GATHER_IDLE_NS 500000000 /* for this long before it sleeps until woken */
#define GATHER_BLOCK 8           /* rows claimed at a time */
static int64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
static pthread_mutex_t gj_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gj_cv = PTHREAD_COND_INITIALIZER;
static _Atomic(moe_gather_job *) gj_todo; /* posted, not yet taken */
static int gj_sleeping, gj_started;       /* under gj_mu */

/* copies the blocks nobody has claimed yet */
static void gather_claim(moe_gather_job *j) {
  for (;;) {
    int64_t b = atomic_fetch_add(&j->next, 1);
    if (b >= j->blocks) return;
    int64_t r0 = b * GATHER_BLOCK, r1 = r0 + GATHER_BLOCK < j->rows ? r0 + GATHER_BLOCK : j->rows;
    for (int i = 0; i < j->n; i++) {
      size_t blk = j->blk[i];
      for (int64_t r = r0; r < r1; r++) {
        if (blk >= 256 && r + 4 < r1) { /* the misses of the rows ahead overlap this copy */
          const char *nx = j->sp[i] + (size_t)(j->ix[r + 4] - j->ibase) * blk;
          for (size_t c = 0; c < blk; c += 64) __builtin_prefetch(nx + c);
        }
        memcpy(j->dp[i] + (size_t)r * blk, j->sp[i] + (size_t)(j->ix[r] - j->ibase) * blk, blk);
      }
    }
    atomic_fetch_add(&j->copied, r1 - r0);
  }
}

static void gather_unref(moe_gather_job *j) {
  if (atomic_fetch_sub(&j->refs, 1) == 1) {
    free(j->ix);
    free(j);
  }
}

static void *gather_helper(void *arg) {
  (void)arg;
#ifdef PR_SET_TIMERSLACK
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* naps of 20 us, not 20 + the default 50 */
#endif
  for (;;) {
    moe_gather_job *j = NULL;
    int64_t until = mono_ns() + GATHER_IDLE_NS;
    while (!(j = atomic_exchange(&gj_todo, NULL)) && mono_ns() < until) {
      struct timespec nap = {0, GATHER_NAP_NS};
      nanosleep(&nap, NULL);
    }
    if (!j) {
      pthread_mutex_lock(&gj_mu);
      gj_sleeping = 1;
      while (!(j = atomic_exchange(&gj_todo, NULL))) pthread_cond_wait(&gj_cv, &gj_mu);
      gj_sleeping = 0;
      pthread_mutex_unlock(&gj_mu);
    }
    gather_claim(j);
    gather_unref(j); /* the queue's reference, taken over with the job */
  }
  return NULL;
}

/* the caller: every row copied (by the helper or here) */
static void gather_wait(moe_gather_job *j) {
  if (!j->async) return;
  moe_gather_job *self = j;
  if (atomic_compare_exchange_strong(&gj_todo, &self, NULL)) gather_unref(j); /* not picked up: the queue's reference */
  gather_claim(j);
  for (int spins = 1; atomic_load(&j->copied) < j->rows; spins++) {
    cpu_relax();
    if (spins % 256 == 0) sched_yield();
  }
}

static int gatherable(const moe_tensor *t) {
  return t->device == MOE_CPU && moe_is_contiguous(t) && !(t->requires_grad && moe_grad_enabled()) && !t->grad_fn;
}

void moe_gather_free(moe_gather_job *j) {
  if (!j) return;
  gather_wait(j);
  for (int i = 0; i < j->n; i++) {
    moe_tensor_release(j->src[i]);
    moe_tensor_release(j->out[i]);
  }
  gather_unref(j);
}

moe_gather_job *moe_gather_start(int n, moe_tensor *const *src, const moe_tensor *index, int64_t ibase, int pinned) {
  if (n < 1 || n > MOE_GATHER_MAX) {
    moe_error("gather_rows: %d tensors (1 to %d)", n, MOE_GATHER_MAX);
    return NULL;
  }
  if (moe_check_vector_index("gather_rows", index)) return NULL;
  moe_gather_job *j = calloc(1, sizeof *j);
  if (!j) {
    moe_error("gather_rows: out of memory");
    return NULL;
  }
  atomic_init(&j->refs, 1);
  j->ibase = ibase;
  j->rows = moe_numel(index);
  int all = 1;
  for (int i = 0; i < n; i++) {
    char b[160];
    if (src[i]->ndim < 1) {
      moe_error("gather_rows: tensor %d is a scalar %s (rows are along the first dim)", i + 1,
                moe_shape_str(src[i], b));
      moe_gather_free(j);
      return NULL;
    }
    if (!gatherable(src[i])) all = 0;
  }
  if (index->device != MOE_CPU) all = 0; /* a device index: through index_select, which checks the devices */
  int64_t size = src[0]->shape[0];
  for (int i = 1; i < n; i++)
    if (src[i]->shape[0] < size) size = src[i]->shape[0];
  if (!all) { /* at once, through index_select (autograd, devices, strides) */
    for (int i = 0; i < n; i++) {
      j->out[i] = moe_index_select(src[i], 0, index, ibase);
      j->n = i + 1;
      if (!j->out[i]) {
        moe_gather_free(j);
        return NULL;
      }
    }
    return j;
  }
  /* the index is copied: the caller may change its tensor while the job runs */
  moe_tensor *hold;
  const int64_t *ix = moe_checked_index("gather_rows", index, size, ibase, &hold);
  if (!ix) {
    moe_gather_free(j);
    return NULL;
  }
  j->ix = malloc(sizeof(int64_t) * (size_t)(j->rows ? j->rows : 1));
  if (j->ix) memcpy(j->ix, ix, sizeof(int64_t) * (size_t)j->rows);
  moe_tensor_release(hold);
  if (!j->ix) {
    moe_error("gather_rows: out of memory");
    moe_gather_free(j);
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    int64_t shape[MOE_MAX_DIMS];
    memcpy(shape, src[i]->shape, sizeof shape);
    shape[0] = j->rows;
    moe_tensor_retain(src[i]);
    j->src[i] = src[i];
    j->out[i] =
        pinned ? moe_empty_pinned(src[i]->ndim, shape, src[i]->dtype) : moe_empty(src[i]->ndim, shape, src[i]->dtype);
    j->n = i + 1;
    if (!j->out[i]) {
      moe_gather_free(j);
      return NULL;
    }
    int64_t inner = 1;
    for (int d = 1; d < src[i]->ndim; d++) inner *= src[i]->shape[d];
    j->blk[i] = (size_t)inner * moe_dtype_size(src[i]->dtype);
    j->sp[i] = moe_data(src[i]);
    j->dp[i] = moe_data(j->out[i]);
  }
  j->blocks = (j->rows + GATHER_BLOCK - 1) / GATHER_BLOCK;
  if (moe_cpu_threads() > 1 && j->rows > GATHER_BLOCK) {
    pthread_mutex_lock(&gj_mu);
    if (!gj_started) {
      pthread_t th;
      pthread_attr_t at;
      pthread_attr_init(&at);
      pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
      gj_started = pthread_create(&th, &at, gather_helper, NULL) == 0 ? 1 : -1;
      pthread_attr_destroy(&at);
    }
    moe_gather_job *none = NULL;
    atomic_fetch_add(&j->refs, 1); /* the queue's */
    if (gj_started == 1 && atomic_compare_exchange_strong(&gj_todo, &none, j)) {
      j->async = 1;
      if (gj_sleeping) pthread_cond_signal(&gj_cv);
    } else {
      atomic_fetch_sub(&j->refs, 1); /* not posted: a job is already waiting, or no thread */
    }
    pthread_mutex_unlock(&gj_mu);
  }
  if (!j->async) gather_claim(j); /* one core, no thread, or one job waiting already: here and now */
  return j;
}

int moe_gather_finish(moe_gather_job *j, moe_tensor **out) {
  gather_wait(j);
  for (int i = 0; i < j->n; i++) {
    out[i] = j->out[i];
    j->out[i] = NULL;
  }
  return j->n;
}
