/* dist.c -- the engine's collectives on tensors (moe.h, "processes"): the
 * world (which backend, set up once), the checks each collective makes before
 * it moves a byte, and the dispatch of host tensors to the world's backend
 * and of device tensors to NCCL's.
 *
 * The checks: a rank that finds a bad argument must not simply return, or the
 * others would wait for it forever; so each collective first exchanges one
 * fixed-size description per rank (which collective, dtype, shape, op or root,
 * and the rank's own argument error, if any), and every rank then raises the
 * same error when any rank erred or the descriptions disagree (the device
 * too: a host tensor on one rank and a device one on another would go to two
 * backends that never meet). That is one
 * small all-gather per call (a few microseconds on one machine);
 * moe_dist_set_checks(0) leaves it out, and a mismatch then hangs or corrupts
 * as in MPI itself. In the 1-rank world there is nothing to exchange.
 *
 * Leaving: the world that MPI set up ends with the process. An exit handler
 * (glibc's on_exit, which sees the status) calls MPI_Finalize after a
 * successful exit and MPI_Abort after a failed one, so that a rank that fails
 * (an uncaught Lua error in moelua, os.exit(1)) ends every rank within a
 * second instead of leaving them waiting in a collective. A rank that is
 * killed is noticed by mpirun, which ends the others. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/autograd_impl.h"
#include "../core/dispatch.h"
#include "comm.h"

static struct {
  int initialized, checks;
  const moe_comm *host; /* the backend of host tensors */
  moe_comm_world w;
  char reason[320], threads_reason[160];
} S = {.checks = 1};

static const char *const op_names[] = {"sum", "mean", "max", "min", "prod"};
const char *moe_dist_op_name(moe_dist_op op) { return op >= 0 && op < MOE_DIST_NOPS ? op_names[op] : "?"; }

/* ---------------------------------------------------------------- the world */

int moe_dist_launched(void) {
  const char *v = getenv("OMPI_COMM_WORLD_SIZE"); /* OpenMPI's mpirun */
  if (!v) v = getenv("PMI_SIZE");                 /* MPICH's hydra, Slurm's PMI */
  if (v && atoi(v) > 0) return atoi(v);
  return getenv("PMIX_RANK") ? 1 : 0; /* a PMIx launcher (srun --mpi=pmix): MPI says how many */
}

static void on_exit_end(int status, void *arg) {
  (void)arg;
  if (!S.initialized || S.host != moe_comm_mpi) return;
  if (status != 0 && S.w.world_size > 1) moe_dist_abort(status);
  S.host->finalize();
}

/* mpirun ends the other ranks of a failed job with SIGTERM: each says so once */
static char term_msg[160];
static volatile sig_atomic_t aborting; /* this rank called MPI_Abort itself: no second message */
static void on_term(int sig) {
  if (!aborting) {
    ssize_t w = write(2, term_msg, strlen(term_msg));
    (void)w;
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

/* several ranks on one machine: one thread each, unless the environment says otherwise */
static void set_threads(void) {
  const char *d = getenv("MOE_DIST_THREADS"), *n = getenv("MOE_NUM_THREADS");
  if (d && atoi(d) > 0) {
    moe_set_num_threads(atoi(d));
    snprintf(S.threads_reason, sizeof S.threads_reason, "MOE_DIST_THREADS=%d", atoi(d));
  } else if (n && atoi(n) > 0) {
    snprintf(S.threads_reason, sizeof S.threads_reason, "MOE_NUM_THREADS=%d", atoi(n));
  } else if (S.w.local_size > 1) {
    moe_set_num_threads(1);
    snprintf(S.threads_reason, sizeof S.threads_reason,
             "one per rank: %d ranks share this machine (MOE_DIST_THREADS=n gives each n)", S.w.local_size);
  } else {
    snprintf(S.threads_reason, sizeof S.threads_reason, "the machine's cores (the only rank on it)");
  }
}

static char init_error[400]; /* a failed init is not tried again (MPI_Init may be called once) */

int moe_dist_init(void) {
  if (S.initialized) return 0;
  if (init_error[0]) return moe_error("%s", init_error);
  int launched = moe_dist_launched();
  const moe_comm *c = &moe_comm_local;
  if (launched > 0 && moe_comm_mpi) c = moe_comm_mpi;
  else if (launched > 1)
    return moe_error("init: this process is one of %d that mpirun started, but %s: each would run alone as rank 0",
                     launched, moe_comm_mpi_missing);
  else if (!moe_comm_mpi) snprintf(S.reason, sizeof S.reason, "%s", moe_comm_mpi_missing);
  else if (!launched)
    snprintf(S.reason, sizeof S.reason, "not launched by mpirun (mpirun -np N moelua run script.lua)");
  if (c->init(&S.w)) {
    snprintf(init_error, sizeof init_error, "%s", moe_last_error());
    return -1;
  }
  S.host = c;
  S.initialized = 1;
  set_threads();
  if (c == moe_comm_mpi) {
#ifdef __GLIBC__
    on_exit(on_exit_end, NULL);
#endif
    if (S.w.world_size > 1) {
      snprintf(term_msg, sizeof term_msg,
               "moe.distributed: rank %d of %d: ended by SIGTERM (mpirun's, when another rank failed or the job was "
               "stopped)\n",
               S.w.rank, S.w.world_size);
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = on_term;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGTERM, &sa, NULL);
    }
  }
  return 0;
}

int moe_dist_is_initialized(void) { return S.initialized; }
const moe_comm *moe_dist_host_comm(void) { return S.host; }

void moe_dist_get_info(moe_dist_info *o) {
  memset(o, 0, sizeof *o);
  o->initialized = S.initialized;
  o->launched = moe_dist_launched();
  o->built = moe_comm_mpi != NULL;
  o->checks = S.checks;
  o->threads = moe_get_num_threads();
  o->threads_reason = S.threads_reason;
  o->reason = S.reason;
  o->library = S.w.library;
  if (S.initialized) {
    o->rank = S.w.rank;
    o->world_size = S.w.world_size;
    o->local_rank = S.w.local_rank;
    o->local_size = S.w.local_size;
    o->thread_level = S.w.thread_level;
    o->backend = S.host->name;
  } else {
    o->world_size = o->local_size = 1;
    o->thread_level = -1;
    o->backend = "none";
  }
  moe_nccl_info(o);
}

int moe_dist_rank(void) { return moe_dist_init() ? 0 : S.w.rank; }
int moe_dist_world_size(void) { return moe_dist_init() ? 1 : S.w.world_size; }

int moe_dist_set_checks(int on) {
  int old = S.checks;
  S.checks = on != 0;
  return old;
}

void moe_dist_abort(int code) {
  if (S.initialized && S.host == moe_comm_mpi && S.w.world_size > 1) {
    fprintf(stderr, "moe.distributed: rank %d of %d failed (status %d): ending the job on every rank (MPI_Abort)\n",
            S.w.rank, S.w.world_size, code);
    fflush(stderr);
    aborting = 1;
    S.host->abort(code);
  }
  exit(code);
}

/* ---------------------------------------------------------------- the checks */

enum { C_BARRIER, C_ALL_REDUCE, C_BROADCAST, C_ALL_GATHER, C_REDUCE_SCATTER, C_ALL_TO_ALL, C_ALL_REDUCE_ASYNC, NCOLL };
static const char *const coll_names[] = {"barrier",        "all_reduce", "broadcast",       "all_gather",
                                         "reduce_scatter", "all_to_all", "all_reduce_async"};

/* what each rank says about its call (fixed size, 256 bytes: one all-gather of bytes) */
typedef struct {
  int32_t coll, dtype, ndim, arg, device;
  int64_t shape[MOE_MAX_DIMS];
  char error[168];
} desc;
_Static_assert(sizeof(desc) == 256, "one rank's description is 256 bytes");

enum { SAME_SHAPE = 1, SAME_TAIL = 2, SAME_ARG = 4 }; /* what the ranks must agree on */

static void show_tensor(char *out, size_t n, const desc *d) {
  char s[160];
  snprintf(out, n, "%s %s", moe_dtype_name((moe_dtype)d->dtype), moe_dims_str(d->ndim, d->shape, s));
}

static void show_arg(char *out, size_t n, int coll, int32_t arg) {
  if (coll == C_BROADCAST) snprintf(out, n, "root %d", arg);
  else snprintf(out, n, "%s", moe_dist_op_name((moe_dist_op)arg));
}

/* 0 when every rank's call agrees with this one's (then *all, if asked for, holds
 * the descriptions: free it); else -1 with the same error on every rank */
static int agree(int coll, const moe_tensor *t, int32_t arg, const char *err, int rule, desc **all) {
  const char *name = coll_names[coll];
  int n = S.w.world_size;
  if (all) *all = NULL;
  if (n == 1 || !S.checks) return err && *err ? moe_error("%s: %s", name, err) : 0;
  desc me;
  memset(&me, 0, sizeof me);
  me.coll = coll;
  me.arg = arg;
  if (t) {
    me.device = t->device;
    me.dtype = t->dtype;
    me.ndim = t->ndim;
    memcpy(me.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
  }
  if (err) snprintf(me.error, sizeof me.error, "%s", err);
  desc *d = malloc(sizeof(desc) * (size_t)n);
  if (!d) return moe_error("%s: out of memory", name);
  if (S.host->all_gather_bytes(&me, sizeof me, d)) {
    free(d);
    return -1;
  }
  int bad = -1, nbad = 0;
  for (int r = 0; r < n; r++)
    if (d[r].error[0] && nbad++ == 0) bad = r;
  int rc = 0;
  char a[200], b[200];
  if (bad >= 0) {
    rc = nbad > 1
        ? moe_error("%s: rank %d: %s (and %d other rank%s)", name, bad, d[bad].error, nbad - 1, nbad > 2 ? "s" : "")
        : moe_error("%s: rank %d: %s", name, bad, d[bad].error);
    goto out;
  }
  for (int r = 1; r < n; r++) {
    const desc *x = &d[0], *y = &d[r];
    if (y->coll != x->coll) {
      int cx = x->coll >= 0 && x->coll < NCOLL, cy = y->coll >= 0 && y->coll < NCOLL;
      rc = moe_error("%s: the ranks called different collectives: rank 0 %s, rank %d %s (every rank must call "
                     "the same collectives in the same order)",
                     name,
                     cx                   ? coll_names[x->coll]
                         : x->coll >= 100 ? "moe.distributed.Reducer"
                                          : "?",
                     r,
                     cy                   ? coll_names[y->coll]
                         : y->coll >= 100 ? "moe.distributed.Reducer"
                                          : "?");
      goto out;
    }
    if (x->device != y->device) {
      rc = moe_error("%s: the ranks' tensors are on different devices: rank 0 passed a %s tensor, rank %d a %s one "
                     "(every rank must pass its tensor on the same device)",
                     name, x->device == MOE_CUDA ? "cuda" : "cpu", r, y->device == MOE_CUDA ? "cuda" : "cpu");
      goto out;
    }
    int same = x->dtype == y->dtype && x->ndim == y->ndim;
    for (int k = (rule & SAME_TAIL) ? 1 : 0; same && k < x->ndim; k++) same = x->shape[k] == y->shape[k];
    if ((rule & (SAME_SHAPE | SAME_TAIL)) && !same) {
      show_tensor(a, sizeof a, x);
      show_tensor(b, sizeof b, y);
      rc = moe_error("%s: the ranks' tensors differ: rank 0 passed %s, rank %d %s (every rank must pass the same "
                     "dtype and %s)",
                     name, a, r, b, (rule & SAME_TAIL) ? "the same sizes after the first" : "shape");
      goto out;
    }
    if ((rule & SAME_ARG) && x->arg != y->arg) {
      show_arg(a, sizeof a, coll, x->arg);
      show_arg(b, sizeof b, coll, y->arg);
      rc = moe_error("%s: the ranks disagree: rank 0 asked for %s, rank %d for %s", name, a, r, b);
      goto out;
    }
  }
out:
  if (rc || !all) free(d);
  else *all = d;
  return rc;
}

int moe_dist_fail(const char *coll, const char *msg) {
  if (moe_dist_init()) return -1;
  int c = 0;
  while (c < NCOLL && strcmp(coll_names[c], coll)) c++;
  if (c == NCOLL) c = C_BARRIER;
  agree(c, NULL, 0, msg && *msg ? msg : "a bad argument", 0, NULL);
  return -1;
}

/* the backend of t's device (as dispatch.h's MOE_K picks a kernel), else NULL
 * with the reason in err. This is each rank's own finding (before the ranks
 * compare their arguments); the NCCL communicator itself is made after, by
 * backend_of, on every rank at once. */
static const moe_comm *comm_for(const moe_tensor *t, char *err, size_t n) {
  if (t->device == MOE_CPU) return S.host;
  char why[280];
  if (!moe_comm_nccl) snprintf(why, sizeof why, "%s", moe_comm_nccl_missing);
  else if (moe_nccl_load(why, sizeof why) == 0) return moe_comm_nccl;
  snprintf(err, n,
           "not on this backend (cuda): device collectives need NCCL, and %s (t:cpu() moves the tensor to the "
           "host)",
           why);
  return NULL;
}

/* the backend that moves t (the ranks have agreed on its device): for a device
 * tensor, NCCL's communicator, made at the first such collective */
static const moe_comm *backend_of(const char *op, const moe_tensor *t) {
  if (t->device == MOE_CPU) return S.host;
  return moe_nccl_join(op, S.host, &S.w) ? NULL : moe_comm_nccl;
}

/* the checks of every collective on one tensor, into err ("" when fine) */
static void check_tensor(const moe_tensor *t, char *err, size_t n) {
  err[0] = 0;
  if (!t) snprintf(err, n, "no tensor");
  else comm_for(t, err, n);
}

static int check_op(moe_dist_op op, const moe_tensor *t, char *err, size_t n) {
  if (err[0]) return 0;
  if (op < 0 || op >= MOE_DIST_NOPS) snprintf(err, n, "unknown op %d", (int)op);
  else if (op == MOE_DIST_MEAN && !moe_dtype_is_float(t->dtype))
    snprintf(err, n, "op \"mean\" needs a float tensor, got %s (sum it, then divide)", moe_dtype_name(t->dtype));
  return 0;
}

static void check_in_place(const moe_tensor *t, char *err, size_t n) {
  if (err[0]) return;
  for (int i = 0; i < t->ndim; i++)
    if (t->stride[i] == 0 && t->shape[i] > 1) {
      snprintf(err, n,
               "cannot write in place into an expanded tensor (several elements share one memory location); "
               "clone() it first");
      return;
    }
}

/* a contiguous host tensor with t's values (t itself when it is one), off the tape */
static moe_tensor *contiguous(const moe_tensor *t) {
  int g = moe_set_grad_enabled(0);
  moe_tensor *c = moe_contiguous(t);
  moe_set_grad_enabled(g);
  return c;
}

/* in-place results: back into t when they were computed in a copy; autograd's
 * version check then catches a backward that would read t's old values */
static void write_back(moe_tensor *t, moe_tensor *c) {
  if (c != t) MOE_K(copy, t->device, t, c);
  t->storage->version++;
}

/* the mean's division (float tensors): on the device, a kernel after the sum on
 * the same stream; on the host, a loop */
static int divide(moe_tensor *c, int64_t n, int by) {
  if (c->device != MOE_CPU) {
    int g = moe_set_grad_enabled(0);
    int rc = moe_binary_scalar_(MOE_DIV, c, by);
    moe_set_grad_enabled(g);
    return rc;
  }
  if (c->dtype == MOE_F32)
    for (float *p = (float *)moe_data(c), *e = p + n; p < e; p++) *p /= (float)by;
  else if (c->dtype == MOE_F64)
    for (double *p = (double *)moe_data(c), *e = p + n; p < e; p++) *p /= by;
  return 0;
}

static moe_dist_op wire_op(moe_dist_op op) { return op == MOE_DIST_MEAN ? MOE_DIST_SUM : op; }

/* ---------------------------------------------------------------- the collectives */

#define ENSURE_INIT()                 \
  do {                                \
    if (moe_dist_init()) return ERRV; \
  } while (0)

#define ERRV -1
int moe_dist_barrier(void) {
  ENSURE_INIT();
  if (agree(C_BARRIER, NULL, 0, NULL, 0, NULL)) return -1;
  return S.host->barrier();
}

int moe_dist_all_reduce_(moe_tensor *t, moe_dist_op op) {
  ENSURE_INIT();
  char err[400];
  check_tensor(t, err, sizeof err);
  check_op(op, t, err, sizeof err);
  check_in_place(t, err, sizeof err);
  if (agree(C_ALL_REDUCE, t, op, err, SAME_SHAPE | SAME_ARG, NULL)) return -1;
  const moe_comm *b = backend_of("all_reduce", t);
  moe_tensor *c = b ? contiguous(t) : NULL;
  if (!c) return -1;
  int64_t n = moe_numel(c);
  int rc = b->all_reduce(moe_data(c), n, c->dtype, wire_op(op));
  if (!rc && op == MOE_DIST_MEAN) rc = divide(c, n, S.w.world_size);
  if (!rc) write_back(t, c);
  moe_tensor_release(c);
  return rc;
}

int moe_dist_broadcast_(moe_tensor *t, int root) {
  ENSURE_INIT();
  char err[400];
  check_tensor(t, err, sizeof err);
  if (!err[0] && (root < 0 || root >= S.w.world_size))
    snprintf(err, sizeof err, "root %d is not a rank of this world (ranks are 0 to %d)", root, S.w.world_size - 1);
  check_in_place(t, err, sizeof err);
  if (agree(C_BROADCAST, t, root, err, SAME_SHAPE | SAME_ARG, NULL)) return -1;
  const moe_comm *b = backend_of("broadcast", t);
  moe_tensor *c = b ? contiguous(t) : NULL;
  if (!c) return -1;
  int rc = b->broadcast(moe_data(c), (size_t)moe_numel(c) * moe_dtype_size(c->dtype), root);
  if (!rc && S.w.rank != root) write_back(t, c);
  moe_tensor_release(c);
  return rc;
}

/* t's rows (a 0-dim t is one row) and the bytes of each */
static int64_t rows_of(const moe_tensor *t) { return t->ndim ? t->shape[0] : 1; }
static size_t row_bytes(const moe_tensor *t) {
  int64_t n = 1;
  for (int k = 1; k < t->ndim; k++) n *= t->shape[k];
  return (size_t)n * moe_dtype_size(t->dtype);
}

#undef ERRV
#define ERRV NULL
moe_tensor *moe_dist_all_gather(const moe_tensor *t, int64_t *rows_out) {
  ENSURE_INIT();
  char err[400];
  check_tensor(t, err, sizeof err);
  desc *all = NULL;
  if (agree(C_ALL_GATHER, t, 0, err, SAME_TAIL, &all)) return NULL;
  int n = S.w.world_size;
  int64_t *rows = malloc(sizeof(int64_t) * (size_t)n), mine = rows_of(t), total = 0;
  if (!rows) {
    free(all);
    moe_error("all_gather: out of memory");
    return NULL;
  }
  if (all) {
    for (int r = 0; r < n; r++) rows[r] = all[r].ndim ? all[r].shape[0] : 1;
    free(all);
  } else if (S.host->all_gather_bytes(&mine, sizeof mine, rows)) {
    free(rows);
    return NULL;
  }
  for (int r = 0; r < n; r++) total += rows[r];
  int64_t shape[MOE_MAX_DIMS];
  int nd = t->ndim ? t->ndim : 1;
  shape[0] = total;
  for (int k = 1; k < nd; k++) shape[k] = t->shape[k];
  const moe_comm *b = backend_of("all_gather", t);
  moe_tensor *out = b ? moe_empty_on(t->device, nd, shape, t->dtype) : NULL, *c = out ? contiguous(t) : NULL;
  int rc = c ? b->all_gatherv(moe_data(c), moe_data(out), rows, row_bytes(t)) : -1;
  if (!rc && rows_out) memcpy(rows_out, rows, sizeof(int64_t) * (size_t)n);
  free(rows);
  moe_tensor_release(c);
  if (rc) {
    moe_tensor_release(out);
    return NULL;
  }
  return out;
}

moe_tensor *moe_dist_reduce_scatter(const moe_tensor *t, moe_dist_op op) {
  ENSURE_INIT();
  char err[400];
  int n = S.w.world_size;
  check_tensor(t, err, sizeof err);
  check_op(op, t, err, sizeof err);
  if (!err[0] && (t->ndim == 0 || t->shape[0] % n))
    snprintf(err, sizeof err, "the first size (%lld) must be a multiple of the world size (%d)",
             (long long)(t->ndim ? t->shape[0] : 0), n);
  if (agree(C_REDUCE_SCATTER, t, op, err, SAME_SHAPE | SAME_ARG, NULL)) return NULL;
  int64_t shape[MOE_MAX_DIMS];
  memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
  shape[0] /= n;
  const moe_comm *b = backend_of("reduce_scatter", t);
  moe_tensor *out = b ? moe_empty_on(t->device, t->ndim, shape, t->dtype) : NULL, *c = out ? contiguous(t) : NULL;
  int64_t each = out ? moe_numel(out) : 0;
  int rc = c ? b->reduce_scatter(moe_data(c), moe_data(out), each, t->dtype, wire_op(op)) : -1;
  moe_tensor_release(c);
  if (!rc && op == MOE_DIST_MEAN) rc = divide(out, each, n);
  if (rc) {
    moe_tensor_release(out);
    return NULL;
  }
  return out;
}

static moe_tensor *all_to_all_impl(const moe_tensor *t, const int64_t *send, int nsend, int64_t *recv_out) {
  char err[400];
  int n = S.w.world_size;
  check_tensor(t, err, sizeof err);
  if (!err[0] && t->ndim == 0) snprintf(err, sizeof err, "needs a tensor of at least one dim (rows), got a 0-dim one");
  if (!err[0] && nsend != n)
    snprintf(err, sizeof err, "%d send counts for a world of %d rank%s (one per rank)", nsend, n, n == 1 ? "" : "s");
  int64_t sum = 0;
  for (int r = 0; !err[0] && r < nsend; r++) {
    if (send[r] < 0) snprintf(err, sizeof err, "send count %lld for rank %d is negative", (long long)send[r], r);
    sum += send[r];
  }
  if (!err[0] && sum != t->shape[0])
    snprintf(err, sizeof err, "the send counts add up to %lld rows, but the tensor has %lld", (long long)sum,
             (long long)t->shape[0]);
  if (agree(C_ALL_TO_ALL, t, 0, err, SAME_TAIL, NULL)) return NULL;
  int64_t *recv = malloc(sizeof(int64_t) * (size_t)n), total = 0;
  if (!recv) {
    moe_error("all_to_all: out of memory");
    return NULL;
  }
  if (S.host->all_to_all_i64(send, recv)) {
    free(recv);
    return NULL;
  }
  for (int r = 0; r < n; r++) total += recv[r];
  int64_t shape[MOE_MAX_DIMS];
  memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
  shape[0] = total;
  const moe_comm *b = backend_of("all_to_all", t);
  moe_tensor *out = b ? moe_empty_on(t->device, t->ndim, shape, t->dtype) : NULL, *c = out ? contiguous(t) : NULL;
  int rc = c ? b->all_to_allv(moe_data(c), send, moe_data(out), recv, row_bytes(t)) : -1;
  if (!rc && recv_out) memcpy(recv_out, recv, sizeof(int64_t) * (size_t)n);
  free(recv);
  moe_tensor_release(c);
  if (rc) {
    moe_tensor_release(out);
    return NULL;
  }
  return out;
}

/* all_to_all is differentiable: the gradient of the rows received travels back
 * to their senders, the mirror exchange (each rank's send and receive counts
 * swapped), so every row's gradient lands where the row came from. Backward
 * is a collective too: every rank must run it, which autograd's order does
 * as long as the ranks' graphs have the same structure (a rank that sends or
 * receives no rows still takes part, with zero rows). The counts are saved as
 * a host int64 tensor [2, world]: row 0 what this rank sent, row 1 what it got. */
static int all_to_all_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
  const moe_tensor *counts = MOE_SAVED(n, 0);
  if (!counts) return -1;
  int w = (int)counts->shape[1];
  const int64_t *c = (const int64_t *)moe_data(counts);
  if (!moe_node_needs(n, 0)) return 0;
  gin[0] = all_to_all_impl(g, c + w, w, NULL); /* back: what came from rank r returns to r */
  return gin[0] ? 0 : -1;
}

moe_tensor *moe_dist_all_to_all(const moe_tensor *t, const int64_t *send, int nsend, int64_t *recv_out) {
  ENSURE_INIT();
  const moe_tensor *ins[1] = {t};
  if (!t || !moe_ag_wants(1, ins)) return all_to_all_impl(t, send, nsend, recv_out);
  int w = S.w.world_size;
  int64_t shape[2] = {2, w};
  moe_tensor *counts = moe_empty(2, shape, MOE_I64), *out = NULL;
  if (!counts) return NULL;
  int64_t *c = (int64_t *)moe_data(counts);
  MOE_NOGRAD(out, all_to_all_impl(t, send, nsend, c + w));
  if (!out) {
    moe_tensor_release(counts);
    return NULL;
  }
  memcpy(c, send, sizeof(int64_t) * (size_t)w); /* (nsend == w: the impl checked it) */
  if (recv_out) memcpy(recv_out, c + w, sizeof(int64_t) * (size_t)w);
  moe_node *node = moe_node_new("all_to_all", all_to_all_backward, 1, ins);
  if (node && moe_node_save(node, 0, counts)) {
    moe_node_release(node);
    node = NULL;
  }
  moe_tensor_release(counts);
  return moe_ag_attach(out, node);
}

/* ---------------------------------------------------------------- the nonblocking all_reduce */

struct moe_dist_work {
  const moe_comm *b; /* the backend it runs on */
  moe_tensor *t, *c; /* the caller's tensor, and the contiguous buffer being reduced (maybe t) */
  moe_dist_op op;
  moe_comm_req *req;
  int done, failed;
};

moe_dist_work *moe_dist_all_reduce_start(moe_tensor *t, moe_dist_op op) {
  ENSURE_INIT();
  char err[400];
  check_tensor(t, err, sizeof err);
  check_op(op, t, err, sizeof err);
  check_in_place(t, err, sizeof err);
  if (agree(C_ALL_REDUCE_ASYNC, t, op, err, SAME_SHAPE | SAME_ARG, NULL)) return NULL;
  const moe_comm *b = backend_of("all_reduce_async", t);
  if (!b) return NULL;
  moe_dist_work *w = calloc(1, sizeof *w);
  moe_tensor *c = w ? contiguous(t) : NULL;
  if (!c || b->all_reduce_start(moe_data(c), moe_numel(c), c->dtype, wire_op(op), &w->req)) {
    if (!c && w) moe_error("all_reduce_async: out of memory");
    moe_tensor_release(c);
    free(w);
    return NULL;
  }
  moe_tensor_retain(t);
  w->b = b;
  w->t = t;
  w->c = c;
  w->op = op;
  t->storage->version++;
  return w;
}

static int finish(moe_dist_work *w) {
  w->done = 1;
  w->req = NULL;
  if (w->op == MOE_DIST_MEAN && divide(w->c, moe_numel(w->c), S.w.world_size)) {
    w->failed = 1;
    return -1;
  }
  write_back(w->t, w->c);
  return 0;
}

int moe_dist_work_test(moe_dist_work *w) {
  if (w->done) return w->failed ? -1 : 1;
  int done = 0;
  if (w->b->test(w->req, &done)) {
    w->done = w->failed = 1;
    w->req = NULL;
    return -1;
  }
  if (done && finish(w)) return -1;
  return done;
}

int moe_dist_work_wait(moe_dist_work *w) {
  if (w->done) return w->failed ? moe_error("all_reduce_async: the operation failed") : 0;
  if (w->b->wait(w->req)) {
    w->done = w->failed = 1;
    w->req = NULL;
    return -1;
  }
  return finish(w);
}

moe_tensor *moe_dist_work_tensor(moe_dist_work *w) { return w->t; }

void moe_dist_work_free(moe_dist_work *w) {
  if (!w) return;
  if (!w->done) moe_dist_work_wait(w);
  moe_tensor_release(w->c);
  moe_tensor_release(w->t);
  free(w);
}
