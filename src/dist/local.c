/* local.c -- the 1-rank world (comm.h): without mpirun, or without MPI, this
 * process is rank 0 of 1 and every collective is a copy (or nothing). */
#include <stdio.h>
#include <string.h>

#include "comm.h"

static int l_init(moe_comm_world *w) {
  w->rank = w->local_rank = 0;
  w->world_size = w->local_size = 1;
  w->thread_level = -1;
  w->library[0] = 0;
  return 0;
}
static void l_finalize(void) {}
static void l_abort(int code) { (void)code; }
static int l_barrier(void) { return 0; }
static int l_all_gather_bytes(const void *send, size_t n, void *recv) {
  if (n) memmove(recv, send, n);
  return 0;
}
static int l_all_to_all_i64(const int64_t *send, int64_t *recv) {
  recv[0] = send[0];
  return 0;
}
static int l_all_reduce(void *buf, int64_t n, moe_dtype dt, moe_dist_op op) {
  (void)buf, (void)n, (void)dt, (void)op;
  return 0;
}
/* (a request that is done at once: NULL) */
static int l_all_reduce_start(void *buf, int64_t n, moe_dtype dt, moe_dist_op op, moe_comm_req **req) {
  (void)buf, (void)n, (void)dt, (void)op;
  *req = NULL;
  return 0;
}
static int l_test(moe_comm_req *req, int *done) {
  (void)req;
  *done = 1;
  return 0;
}
static int l_wait(moe_comm_req *req) {
  (void)req;
  return 0;
}
static int l_broadcast(void *buf, size_t bytes, int root) {
  (void)buf, (void)bytes, (void)root;
  return 0;
}
static int l_all_gatherv(const void *send, void *recv, const int64_t *rows, size_t row_bytes) {
  if (rows[0] && row_bytes) memmove(recv, send, (size_t)rows[0] * row_bytes);
  return 0;
}
static int l_reduce_scatter(const void *send, void *recv, int64_t n, moe_dtype dt, moe_dist_op op) {
  (void)op;
  if (n) memmove(recv, send, (size_t)n * moe_dtype_size(dt));
  return 0;
}
static int l_all_to_allv(const void *send, const int64_t *send_rows, void *recv, const int64_t *recv_rows,
                         size_t row_bytes) {
  (void)recv_rows;
  if (send_rows[0] && row_bytes) memmove(recv, send, (size_t)send_rows[0] * row_bytes);
  return 0;
}

static int l_all_gather_start(const void *send, void *recv, int64_t n, moe_dtype dt, moe_comm_req **req) {
  if (n) memmove(recv, send, (size_t)n * moe_dtype_size(dt));
  *req = NULL;
  return 0;
}

const moe_comm moe_comm_local = {"local",
                                 l_init,
                                 l_finalize,
                                 l_abort,
                                 l_barrier,
                                 l_all_gather_bytes,
                                 l_all_to_all_i64,
                                 l_all_reduce,
                                 l_all_reduce_start,
                                 l_test,
                                 l_wait,
                                 l_broadcast,
                                 l_all_gatherv,
                                 l_reduce_scatter,
                                 l_all_to_allv,
                                 l_all_gather_start};
