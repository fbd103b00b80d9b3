/* pool.c -- a persistent pool of worker threads for the CPU kernels.
 *
 * moe_cpu_parallel(n, fn, ctx) runs fn(ctx, 0..n-1) on the calling thread and
 * the pool's workers, and returns when every part is done. Workers are started
 * on first use (moe_cpu_threads() - 1 of them). A worker that finishes waits a
 * few microseconds for the next job, spinning politely (sched_yield, so that
 * OpenBLAS's threads keep their cores), then sleeps on a condition variable.
 * Creating threads per call cost 100-250 us on the VMs this was measured on,
 * more than a mid-sized GEMM's whole run. */
#include "cpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define SPIN_ROUNDS 2000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_cv = PTHREAD_COND_INITIALIZER, done_cv = PTHREAD_COND_INITIALIZER;
static int nworkers = -1;           /* -1: not started yet */
static _Atomic unsigned generation; /* bumped per job: wakes the workers */
/* Parts are claimed from one 64-bit ticket holding the job number (24 bits),
 * its part count (20) and the next part (20), so that the check and the claim
 * are one compare-and-swap: a worker late from the previous job can never claim
 * a part of the next one (or a part past the end) by mistake. */
static _Atomic uint64_t ticket;
static _Atomic int parts_done, sleepers, busy;
static moe_task_fn job_fn;
static void *job_ctx;
#define T_PARTS(t) ((int)(((t) >> 20) & 0xfffff))
#define T_NEXT(t) ((int)((t)&0xfffff))

static void run_parts(void) {
  for (;;) {
    uint64_t t = atomic_load(&ticket);
    do {
      if (T_NEXT(t) >= T_PARTS(t)) return;
    } while (!atomic_compare_exchange_weak(&ticket, &t, t + 1));
    /* claimed: the job cannot change until this part is counted done */
    int n = T_PARTS(t);
    job_fn(job_ctx, T_NEXT(t));
    if (atomic_fetch_add(&parts_done, 1) + 1 == n) {
      pthread_mutex_lock(&mu);
      pthread_cond_signal(&done_cv);
      pthread_mutex_unlock(&mu);
    }
  }
}

static void *worker(void *arg) {
  (void)arg;
  unsigned seen = atomic_load(&generation);
  for (;;) {
    int spins = 0;
    while (atomic_load(&generation) == seen && spins < SPIN_ROUNDS) {
      spins++;
      sched_yield();
    }
    if (atomic_load(&generation) == seen) {
      pthread_mutex_lock(&mu);
      atomic_fetch_add(&sleepers, 1);
      while (atomic_load(&generation) == seen) pthread_cond_wait(&job_cv, &mu);
      atomic_fetch_sub(&sleepers, 1);
      pthread_mutex_unlock(&mu);
    }
    seen = atomic_load(&generation);
    run_parts();
  }
  return NULL;
}

/* up to moe_cpu_threads() - 1 workers (more when the count was raised since) */
static void start_workers(void) {
  if (nworkers < 0) nworkers = 0;
  int want = moe_cpu_threads() - 1;
  for (int i = nworkers; i < want; i++) {
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 << 10);
    if (pthread_create(&t, &at, worker, NULL) == 0) nworkers++;
    pthread_attr_destroy(&at);
  }
}

void moe_cpu_parallel(int nparts, moe_task_fn fn, void *ctx) {
  if (nparts <= 0) return;
  int expected = 0;
  /* one job at a time; a nested or concurrent call runs its parts inline */
  if (nparts == 1 || nparts > 0xfffff || moe_cpu_threads() < 2 ||
      !atomic_compare_exchange_strong(&busy, &expected, 1)) {
    for (int i = 0; i < nparts; i++) fn(ctx, i);
    return;
  }
  if (nworkers < moe_cpu_threads() - 1) start_workers(); /* (under `busy`: one caller at a time) */
  if (nworkers == 0) {
    for (int i = 0; i < nparts; i++) fn(ctx, i);
    atomic_store(&busy, 0);
    return;
  }
  job_fn = fn;
  job_ctx = ctx;
  atomic_store(&parts_done, 0);
  unsigned g = atomic_load(&generation) + 1;
  atomic_store(&ticket, ((uint64_t)(g & 0xffffff) << 40) | ((uint64_t)nparts << 20));
  pthread_mutex_lock(&mu);
  atomic_store(&generation, g);
  if (atomic_load(&sleepers) > 0) pthread_cond_broadcast(&job_cv);
  pthread_mutex_unlock(&mu);
  run_parts();
  int spins = 0;
  while (atomic_load(&parts_done) < nparts && spins < SPIN_ROUNDS) {
    spins++;
    sched_yield();
  }
  if (atomic_load(&parts_done) < nparts) {
    pthread_mutex_lock(&mu);
    while (atomic_load(&parts_done) < nparts) pthread_cond_wait(&done_cv, &mu);
    pthread_mutex_unlock(&mu);
  }
  atomic_store(&busy, 0);
}
