/* nccl.c -- the NCCL backend of the communicator interface (comm.h): the
 * collectives on device (MOE_CUDA) tensors. Built when the Makefile finds
 * nccl.h in a CUDA=1 build and defines MOE_WITH_NCCL; otherwise
 * moe_comm_nccl is NULL and moe_comm_nccl_missing says why.
 *
 * libnccl is opened at run time (dlopen, as matmul.cu opens cuBLAS), so that
 * the binary starts, and its host collectives work, on a machine without it;
 * MOE_NCCL names the library when it is not on the loader's path.
 *
 * One communicator per process, on the process's current CUDA device, made at
 * the first device collective: rank 0 makes the ncclUniqueId, the host
 * backend broadcasts it (MPI under mpirun; a copy in the 1-rank world, where
 * the communicator has one rank), and every rank calls ncclCommInitRank.
 * Every collective is queued on the engine's stream, after the kernels that
 * made its input and before those that read its output, so the host waits for
 * none of them. The variable-count ones (all_gatherv with unequal rows,
 * all_to_allv) are one ncclSend and one ncclRecv per peer, grouped between
 * ncclGroupStart and ncclGroupEnd so that NCCL runs them together. */
#include <stdio.h>

#include "comm.h"

#ifndef MOE_WITH_NCCL
const moe_comm *const moe_comm_nccl = NULL;
const char moe_comm_nccl_missing[] =
#if defined(MOE_CUDA_EMU_BUILD)
    "the CUDA emulator build (CUDA=emu) has no NCCL";
#elif defined(MOE_WITH_CUDA) && defined(MOE_NCCL_OFF)
    "this moelua was built with NCCL=0 (no NCCL backend)";
#elif defined(MOE_WITH_CUDA)
    "this moelua was built without NCCL (no nccl.h in the CUDA toolkit at build time)";
#else
    "this moelua was built without CUDA, so without NCCL";
#endif
int moe_nccl_load(char *err, size_t n) {
  snprintf(err, n, "%s", moe_comm_nccl_missing);
  return -1;
}
int moe_nccl_join(const char *op, const moe_comm *host, const moe_comm_world *w) {
  (void)host, (void)w;
  return moe_error("%s: %s", op, moe_comm_nccl_missing);
}
void moe_nccl_info(moe_dist_info *o) {
  o->nccl_built = o->nccl_ready = 0;
  o->nccl_device = -1;
  o->nccl_version = o->nccl_library = "";
  o->nccl_reason = moe_comm_nccl_missing;
}
#else
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "../core/device.h"

const char moe_comm_nccl_missing[] = "";

#define STR_(x) #x
#define STR(x) STR_(x)
#define HEADER_VERSION STR(NCCL_MAJOR) "." STR(NCCL_MINOR) "." STR(NCCL_PATCH)

/* the functions used, looked up by name in the opened library */
/* clang-format off */
#define NCCL_FNS(X) \
  X(ncclGetVersion) X(ncclGetUniqueId) X(ncclCommInitRank) X(ncclGetErrorString) X(ncclCommGetAsyncError) \
  X(ncclAllReduce) X(ncclBroadcast) X(ncclAllGather) X(ncclReduceScatter) \
  X(ncclSend) X(ncclRecv) X(ncclGroupStart) X(ncclGroupEnd)
/* clang-format on */
static struct {
#define X(f) __typeof__(&f) f;
  NCCL_FNS(X)
#undef X
  __typeof__(&ncclGetLastError) last_error; /* (NCCL 2.13 on; may be missing) */
} F;

static struct {
  void *lib;
  char why[280];    /* why it cannot be used (not tried again) */
  char library[64]; /* the opened library's version */
  ncclComm_t comm;
  int rank, world, device;
  char join_error[400]; /* a failed join is not tried again: the ranks would not meet */
} N = {.device = -1};

static void version_str(int v, char *out, size_t n) {
  /* NCCL_VERSION(X, Y, Z): X*1000 + Y*100 + Z up to 2.8, X*10000 + Y*100 + Z after */
  if (v >= 10000) snprintf(out, n, "%d.%d.%d", v / 10000, v % 10000 / 100, v % 100);
  else snprintf(out, n, "%d.%d.%d", v / 1000, v % 1000 / 100, v % 100);
}

int moe_nccl_load(char *err, size_t n) {
  if (!N.lib && !N.why[0]) {
    const char *env = getenv("MOE_NCCL");
    const char *names[] = {env && *env ? env : NULL, "libnccl.so.2", "libnccl.so",
                           "/usr/local/cuda/lib64/libnccl.so.2"};
    void *h = NULL;
    const char *which = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !h; i++)
      if (names[i] && (h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL))) which = names[i];
      else if (i == 0 && names[i]) break; /* MOE_NCCL names it: no other one */
    if (!h && env && *env) {
      snprintf(N.why, sizeof N.why, "NCCL could not be opened from MOE_NCCL=%s: %s", env, dlerror());
    } else if (!h) {
      snprintf(N.why, sizeof N.why,
               "NCCL's library (libnccl.so.2) was not found: add its directory to LD_LIBRARY_PATH or set MOE_NCCL "
               "to its path");
    } else {
      const char *missing = NULL;
#define X(f) \
  if (!missing && !(F.f = (__typeof__(F.f))dlsym(h, #f))) missing = #f;
      NCCL_FNS(X)
#undef X
      F.last_error = (__typeof__(F.last_error))dlsym(h, "ncclGetLastError");
      int v = 0;
      if (missing) {
        snprintf(N.why, sizeof N.why, "%s has no %s (NCCL 2.7 or newer is needed)", which, missing);
      } else if (F.ncclGetVersion(&v) != ncclSuccess || (v >= 10000 ? v / 10000 : v / 1000) != NCCL_MAJOR) {
        version_str(v, N.library, sizeof N.library);
        snprintf(N.why, sizeof N.why, "%s is NCCL %s, but this moelua was built with NCCL %s's nccl.h", which,
                 N.library, HEADER_VERSION);
      } else {
        version_str(v, N.library, sizeof N.library);
        N.lib = h;
      }
      if (!N.lib) dlclose(h);
    }
  }
  if (N.why[0]) {
    snprintf(err, n, "%s", N.why);
    return -1;
  }
  return 0;
}

static cudaStream_t stream(void) { return (cudaStream_t)moe_cuda_current_stream(); }

static int fail(const char *op, ncclResult_t r) {
  const char *last = F.last_error ? F.last_error(N.comm) : NULL; /* (NULL: this thread's last) */
  int d = last && *last;                                         /* NCCL's detail, when it has one */
  return moe_error("%s: NCCL failed: %s%s%s%s", op, F.ncclGetErrorString(r), d ? " (" : "", d ? last : "",
                   d ? ")" : "");
}
#define CALL(op, expr)                          \
  do {                                          \
    ncclResult_t r_ = (expr);                   \
    if (r_ != ncclSuccess) return fail(op, r_); \
  } while (0)

int moe_nccl_join(const char *op, const moe_comm *host, const moe_comm_world *w) {
  if (N.comm) return 0;
  if (N.join_error[0]) return moe_error("%s: %s", op, N.join_error);
  /* rank 0's id, or what went wrong there: the others must not wait for it */
  struct {
    int32_t rc;
    ncclUniqueId id;
  } m;
  memset(&m, 0, sizeof m);
  if (w->rank == 0) m.rc = F.ncclGetUniqueId(&m.id);
  if (host->broadcast(&m, sizeof m, 0)) return -1;
  ncclResult_t r = (ncclResult_t)m.rc;
  const char *step = "ncclGetUniqueId on rank 0";
  if (r == ncclSuccess) {
    cudaError_t e = cudaGetDevice(&N.device);
    if (e != cudaSuccess) {
      snprintf(N.join_error, sizeof N.join_error, "no current CUDA device for NCCL: %s", cudaGetErrorString(e));
      return moe_error("%s: %s", op, N.join_error);
    }
    step = "ncclCommInitRank";
    r = F.ncclCommInitRank(&N.comm, w->world_size, m.id, w->rank);
  }
  if (r != ncclSuccess) {
    N.comm = NULL;
    const char *last = F.last_error ? F.last_error(NULL) : NULL;
    int d = last && *last; /* NCCL's detail, when it has one */
    snprintf(N.join_error, sizeof N.join_error,
             "NCCL's communicator could not be made (%s, rank %d of %d, device %d): %s%s%s%s%s", step, w->rank,
             w->world_size, N.device, F.ncclGetErrorString(r), d ? " (" : "", d ? last : "", d ? ")" : "",
             r == ncclInvalidUsage && w->local_size > 1
                 ? "; each rank needs a GPU of its own (one CUDA_VISIBLE_DEVICES per rank)"
                 : "");
    return moe_error("%s: %s", op, N.join_error);
  }
  N.rank = w->rank;
  N.world = w->world_size;
  return 0;
}

void moe_nccl_info(moe_dist_info *o) {
  char err[8];
  o->nccl_built = 1;
  o->nccl_ready = N.comm != NULL;
  o->nccl_device = N.comm ? N.device : -1;
  o->nccl_version = HEADER_VERSION;
  moe_nccl_load(err, sizeof err); /* (to say which library, or why none) */
  o->nccl_library = N.library;
  o->nccl_reason = N.why[0] ? N.why : N.join_error;
}

static ncclDataType_t nccl_type(moe_dtype dt) {
  switch (dt) {
  case MOE_F32: return ncclFloat32;
  case MOE_F64: return ncclFloat64;
  case MOE_I32: return ncclInt32;
  case MOE_I64: return ncclInt64;
  default: return ncclUint8; /* bool: one byte, 0 or 1 */
  }
}

/* bool reduces as logic, as in mpi.c: sum and max are or, prod and min are and */
static ncclRedOp_t nccl_op(moe_dist_op op, moe_dtype dt) {
  int b = dt == MOE_BOOL;
  switch (op) {
  case MOE_DIST_MAX: return ncclMax;
  case MOE_DIST_MIN: return ncclMin;
  case MOE_DIST_PROD: return b ? ncclMin : ncclProd;
  default: return b ? ncclMax : ncclSum;
  }
}

static int n_all_reduce(void *buf, int64_t n, moe_dtype dt, moe_dist_op op) {
  if (n > 0) CALL("all_reduce", F.ncclAllReduce(buf, buf, (size_t)n, nccl_type(dt), nccl_op(op, dt), N.comm, stream()));
  return 0;
}

/* the nonblocking all_reduce: the same call, and an event behind it on the
 * stream; test asks the event, wait makes the stream wait for it (a no-op on
 * the same stream, kept so that a later stream of the engine's is ordered too) */
struct moe_comm_req {
  cudaEvent_t ev;
};

static int cuda_fail(const char *op, cudaError_t e) {
  return moe_error("%s: CUDA failed: %s", op, cudaGetErrorString(e));
}

static int n_all_reduce_start(void *buf, int64_t n, moe_dtype dt, moe_dist_op op, moe_comm_req **out) {
  if (n_all_reduce(buf, n, dt, op)) return -1;
  moe_comm_req *q = malloc(sizeof *q);
  if (!q) return moe_error("all_reduce_async: out of memory");
  cudaError_t e = cudaEventCreateWithFlags(&q->ev, cudaEventDisableTiming);
  if (e == cudaSuccess && (e = cudaEventRecord(q->ev, stream())) != cudaSuccess) cudaEventDestroy(q->ev);
  if (e != cudaSuccess) {
    free(q);
    return cuda_fail("all_reduce_async", e);
  }
  *out = q;
  return 0;
}

static void req_free(moe_comm_req *q) {
  cudaEventDestroy(q->ev);
  free(q);
}

static int n_test(moe_comm_req *q, int *done) {
  *done = 1;
  if (!q) return 0;
  cudaError_t e = cudaEventQuery(q->ev);
  if (e == cudaErrorNotReady) {
    /* still queued or running: a peer's failure (a network error) shows here */
    ncclResult_t a = ncclSuccess;
    if (F.ncclCommGetAsyncError(N.comm, &a) == ncclSuccess && a != ncclSuccess && a != ncclInProgress) {
      req_free(q);
      return fail("all_reduce_async", a);
    }
    *done = 0;
    return 0;
  }
  req_free(q);
  return e == cudaSuccess ? 0 : cuda_fail("all_reduce_async", e);
}

static int n_wait(moe_comm_req *q) {
  if (!q) return 0;
  cudaError_t e = cudaStreamWaitEvent(stream(), q->ev, 0);
  req_free(q);
  return e == cudaSuccess ? 0 : cuda_fail("all_reduce_async", e);
}

static int n_broadcast(void *buf, size_t bytes, int root) {
  if (bytes) CALL("broadcast", F.ncclBroadcast(buf, buf, bytes, ncclUint8, root, N.comm, stream()));
  return 0;
}

/* the calls of one group: the first failure is kept, and the group is always
 * ended (NCCL would otherwise stay inside it) */
static ncclResult_t group_end(ncclResult_t first) {
  ncclResult_t r = F.ncclGroupEnd();
  return first != ncclSuccess ? first : r;
}

static int n_all_gatherv(const void *send, void *recv, const int64_t *rows, size_t row_bytes) {
  int same = 1;
  for (int r = 1; r < N.world; r++) same = same && rows[r] == rows[0];
  if (same) { /* equal rows: NCCL's own all-gather */
    size_t b = (size_t)rows[0] * row_bytes;
    if (b) CALL("all_gather", F.ncclAllGather(send, recv, b, ncclUint8, N.comm, stream()));
    return 0;
  }
  /* this rank's rows to every rank, every rank's rows into their place (zero-size pairs left out on both sides) */
  size_t mine = (size_t)rows[N.rank] * row_bytes, at = 0;
  ncclResult_t r0 = F.ncclGroupStart();
  for (int r = 0; r < N.world && r0 == ncclSuccess; r++) {
    size_t b = (size_t)rows[r] * row_bytes;
    if (mine) r0 = F.ncclSend(send, mine, ncclUint8, r, N.comm, stream());
    if (b && r0 == ncclSuccess) r0 = F.ncclRecv((char *)recv + at, b, ncclUint8, r, N.comm, stream());
    at += b;
  }
  CALL("all_gather", group_end(r0));
  return 0;
}

static int n_reduce_scatter(const void *send, void *recv, int64_t n, moe_dtype dt, moe_dist_op op) {
  if (n > 0)
    CALL("reduce_scatter",
         F.ncclReduceScatter(send, recv, (size_t)n, nccl_type(dt), nccl_op(op, dt), N.comm, stream()));
  return 0;
}

static int n_all_to_allv(const void *send, const int64_t *send_rows, void *recv, const int64_t *recv_rows,
                         size_t row_bytes) {
  size_t s_at = 0, r_at = 0;
  ncclResult_t r0 = F.ncclGroupStart();
  for (int r = 0; r < N.world && r0 == ncclSuccess; r++) {
    size_t sb = (size_t)send_rows[r] * row_bytes, rb = (size_t)recv_rows[r] * row_bytes;
    if (sb) r0 = F.ncclSend((const char *)send + s_at, sb, ncclUint8, r, N.comm, stream());
    if (rb && r0 == ncclSuccess) r0 = F.ncclRecv((char *)recv + r_at, rb, ncclUint8, r, N.comm, stream());
    s_at += sb;
    r_at += rb;
  }
  CALL("all_to_all", group_end(r0));
  return 0;
}

/* (the world, the barrier and the exchanges of counts and checks are the host backend's) */
static const moe_comm nccl_backend = {.name = "nccl",
                                      .all_reduce = n_all_reduce,
                                      .all_reduce_start = n_all_reduce_start,
                                      .test = n_test,
                                      .wait = n_wait,
                                      .broadcast = n_broadcast,
                                      .all_gatherv = n_all_gatherv,
                                      .reduce_scatter = n_reduce_scatter,
                                      .all_to_allv = n_all_to_allv};
const moe_comm *const moe_comm_nccl = &nccl_backend;
#endif
