/* mpi.c -- the MPI backend of the communicator interface (comm.h), built when
 * the Makefile finds OpenMPI (its pkg-config ompi-c, or mpicc --showme) and
 * defines MOE_WITH_MPI; without it moe_comm_mpi is NULL and
 * moe_comm_mpi_missing says why.
 *
 * The backend works on its own duplicate of MPI_COMM_WORLD (a user's own MPI
 * calls cannot match ours) with MPI_ERRORS_RETURN, so that an MPI failure is an
 * engine error instead of an abort. MPI counts are C ints: reductions and
 * broadcasts go in chunks of 2^30 elements; the row collectives move rows as
 * one contiguous datatype of row_bytes, so their counts are rows. */
#include "comm.h"

#ifndef MOE_WITH_MPI
const moe_comm *const moe_comm_mpi = NULL;
const char moe_comm_mpi_missing[] =
    "this moelua was built without MPI (no OpenMPI at build time: install Debian's libopenmpi-dev "
    "and openmpi-bin, then make)";
#else
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char moe_comm_mpi_missing[] = "";

#define CHUNK (1 << 30)

static MPI_Comm comm = MPI_COMM_NULL;
static int owned; /* 1 when MPI_Init_thread was ours (then MPI_Finalize is ours too) */

static int fail(const char *what, int rc) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", rc);
  return moe_error("%s: MPI failed: %s", what, s);
}
#define CALL(what, expr)                            \
  do {                                              \
    int rc_ = (expr);                               \
    if (rc_ != MPI_SUCCESS) return fail(what, rc_); \
  } while (0)

static MPI_Datatype mpi_type(moe_dtype dt) {
  switch (dt) {
  case MOE_F32: return MPI_FLOAT;
  case MOE_F64: return MPI_DOUBLE;
  case MOE_I32: return MPI_INT32_T;
  case MOE_I64: return MPI_INT64_T;
  default: return MPI_UINT8_T; /* bool: one byte, 0 or 1 */
  }
}

/* bool reduces as logic: sum and max are or, prod and min are and */
static MPI_Op mpi_op(moe_dist_op op, moe_dtype dt) {
  int b = dt == MOE_BOOL;
  switch (op) {
  case MOE_DIST_MAX: return MPI_MAX;
  case MOE_DIST_MIN: return MPI_MIN;
  case MOE_DIST_PROD: return b ? MPI_MIN : MPI_PROD;
  default: return b ? MPI_MAX : MPI_SUM;
  }
}

static int m_init(moe_comm_world *w) {
  int inited = 0, level = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    /* MULTIPLE: the engine's own threads may start operations (a progress or
     * communication thread), and so may a user's code */
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &level);
    if (rc != MPI_SUCCESS) return fail("init", rc);
    owned = 1;
  } else {
    MPI_Query_thread(&level);
  }
  CALL("init", MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  CALL("init", MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  CALL("init", MPI_Comm_rank(comm, &w->rank));
  CALL("init", MPI_Comm_size(comm, &w->world_size));
  MPI_Comm node;
  CALL("init", MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, w->rank, MPI_INFO_NULL, &node));
  MPI_Comm_rank(node, &w->local_rank);
  MPI_Comm_size(node, &w->local_size);
  MPI_Comm_free(&node);
  w->thread_level = level == MPI_THREAD_SINGLE ? 0
      : level == MPI_THREAD_FUNNELED           ? 1
      : level == MPI_THREAD_SERIALIZED         ? 2
                                               : 3;
  char v[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(v, &len);
  v[strcspn(v, ",\n")] = 0; /* "Open MPI v4.1.4" */
  v[sizeof w->library - 1] = 0;
  memcpy(w->library, v, strlen(v) + 1);
  return 0;
}

static void m_finalize(void) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin) return;
  if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  if (owned) MPI_Finalize();
}

static void m_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); } /* (mpirun's message names MPI_COMM_WORLD) */

static int m_barrier(void) {
  CALL("barrier", MPI_Barrier(comm));
  return 0;
}

static int m_all_gather_bytes(const void *send, size_t n, void *recv) {
  CALL("exchange", MPI_Allgather(send, (int)n, MPI_BYTE, recv, (int)n, MPI_BYTE, comm));
  return 0;
}

static int m_all_to_all_i64(const int64_t *send, int64_t *recv) {
  CALL("all_to_all", MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, comm));
  return 0;
}

static int m_all_reduce(void *buf, int64_t n, moe_dtype dt, moe_dist_op op) {
  size_t es = moe_dtype_size(dt);
  for (int64_t at = 0; at < n; at += CHUNK) {
    int k = (int)(n - at < CHUNK ? n - at : CHUNK);
    CALL("all_reduce", MPI_Allreduce(MPI_IN_PLACE, (char *)buf + at * es, k, mpi_type(dt), mpi_op(op, dt), comm));
  }
  return 0;
}

struct moe_comm_req {
  int n;
  MPI_Request r[];
};

static int m_all_reduce_start(void *buf, int64_t n, moe_dtype dt, moe_dist_op op, moe_comm_req **out) {
  size_t es = moe_dtype_size(dt);
  int nch = (int)((n + CHUNK - 1) / CHUNK);
  moe_comm_req *q = malloc(sizeof *q + (size_t)(nch ? nch : 1) * sizeof(MPI_Request));
  if (!q) return moe_error("all_reduce_async: out of memory");
  q->n = 0;
  for (int64_t at = 0; at < n; at += CHUNK) {
    int k = (int)(n - at < CHUNK ? n - at : CHUNK);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + at * es, k, mpi_type(dt), mpi_op(op, dt), comm, &q->r[q->n]);
    if (rc != MPI_SUCCESS) {
      MPI_Waitall(q->n, q->r, MPI_STATUSES_IGNORE);
      free(q);
      return fail("all_reduce_async", rc);
    }
    q->n++;
  }
  *out = q;
  return 0;
}

static int m_test(moe_comm_req *q, int *done) {
  int flag = 1;
  if (q) {
    int rc = MPI_Testall(q->n, q->r, &flag, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      free(q);
      return fail("all_reduce_async", rc);
    }
    if (flag) free(q);
  }
  *done = flag;
  return 0;
}

static int m_wait(moe_comm_req *q) {
  if (!q) return 0;
  int rc = MPI_Waitall(q->n, q->r, MPI_STATUSES_IGNORE);
  free(q);
  if (rc != MPI_SUCCESS) return fail("all_reduce_async", rc);
  return 0;
}

static int m_broadcast(void *buf, size_t bytes, int root) {
  for (size_t at = 0; at < bytes; at += CHUNK) {
    int k = (int)(bytes - at < CHUNK ? bytes - at : CHUNK);
    CALL("broadcast", MPI_Bcast((char *)buf + at, k, MPI_BYTE, root, comm));
  }
  return 0;
}

/* a datatype of one row; -1 when a row, or the rows, do not fit MPI's int counts */
static int row_type(const char *op, size_t row_bytes, int64_t total_rows, MPI_Datatype *t) {
  if (row_bytes > INT_MAX)
    return moe_error("%s: rows of %zu bytes are more than MPI moves as one (2^31-1)", op, row_bytes);
  if (total_rows > INT_MAX)
    return moe_error("%s: %lld rows in all are more than MPI counts (2^31-1)", op, (long long)total_rows);
  CALL(op, MPI_Type_contiguous((int)row_bytes, MPI_BYTE, t));
  CALL(op, MPI_Type_commit(t));
  return 0;
}

/* per-rank counts and displacements as MPI's ints (counts checked by row_type) */
static int *int_counts(const int64_t *rows, int n, int **displs) {
  int *c = malloc(2 * (size_t)n * sizeof(int));
  if (!c) return NULL;
  *displs = c + n;
  int at = 0;
  for (int r = 0; r < n; r++) {
    c[r] = (int)rows[r];
    (*displs)[r] = at;
    at += c[r];
  }
  return c;
}

static int m_all_gatherv(const void *send, void *recv, const int64_t *rows, size_t row_bytes) {
  int n = 0, me = 0;
  MPI_Comm_size(comm, &n);
  MPI_Comm_rank(comm, &me);
  int64_t total = 0;
  for (int r = 0; r < n; r++) total += rows[r];
  if (!row_bytes || !total) return 0; /* (the ranks agree: their shapes were compared) */
  MPI_Datatype t;
  if (row_type("all_gather", row_bytes, total, &t)) return -1;
  int *displs, *counts = int_counts(rows, n, &displs);
  int rc = counts ? MPI_Allgatherv(send, counts[me], t, recv, counts, displs, t, comm) : MPI_ERR_NO_MEM;
  free(counts);
  MPI_Type_free(&t);
  if (rc != MPI_SUCCESS) return fail("all_gather", rc);
  return 0;
}

static int m_reduce_scatter(const void *send, void *recv, int64_t n, moe_dtype dt, moe_dist_op op) {
  if (n > INT_MAX)
    return moe_error("reduce_scatter: blocks of %lld elements are more than MPI counts (2^31-1)", (long long)n);
  CALL("reduce_scatter", MPI_Reduce_scatter_block(send, recv, (int)n, mpi_type(dt), mpi_op(op, dt), comm));
  return 0;
}

static int m_all_to_allv(const void *send, const int64_t *send_rows, void *recv, const int64_t *recv_rows,
                         size_t row_bytes) {
  int n = 0;
  MPI_Comm_size(comm, &n);
  int64_t ts = 0, tr = 0;
  for (int r = 0; r < n; r++) ts += send_rows[r], tr += recv_rows[r];
  if (!row_bytes) return 0;
  MPI_Datatype t;
  if (row_type("all_to_all", row_bytes, ts > tr ? ts : tr, &t)) return -1;
  int *sd, *rd, *sc = int_counts(send_rows, n, &sd), *rc_ = int_counts(recv_rows, n, &rd);
  int rc = sc && rc_ ? MPI_Alltoallv(send, sc, sd, t, recv, rc_, rd, t, comm) : MPI_ERR_NO_MEM;
  free(sc);
  free(rc_);
  MPI_Type_free(&t);
  if (rc != MPI_SUCCESS) return fail("all_to_all", rc);
  return 0;
}

static int m_all_gather_start(const void *send, void *recv, int64_t n, moe_dtype dt, moe_comm_req **out) {
  if (n > INT_MAX) return moe_error("all_gather: %lld elements are more than MPI counts (2^31-1)", (long long)n);
  moe_comm_req *q = malloc(sizeof *q + sizeof(MPI_Request));
  if (!q) return moe_error("all_gather: out of memory");
  q->n = 1;
  int rc = MPI_Iallgather(send, (int)n, mpi_type(dt), recv, (int)n, mpi_type(dt), comm, &q->r[0]);
  if (rc != MPI_SUCCESS) {
    free(q);
    return fail("all_gather", rc);
  }
  *out = q;
  return 0;
}

static const moe_comm mpi_backend = {"mpi",
                                     m_init,
                                     m_finalize,
                                     m_abort,
                                     m_barrier,
                                     m_all_gather_bytes,
                                     m_all_to_all_i64,
                                     m_all_reduce,
                                     m_all_reduce_start,
                                     m_test,
                                     m_wait,
                                     m_broadcast,
                                     m_all_gatherv,
                                     m_reduce_scatter,
                                     m_all_to_allv,
                                     m_all_gather_start};
const moe_comm *const moe_comm_mpi = &mpi_backend;
#endif
