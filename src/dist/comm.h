/* comm.h -- the communicator interface, private to src/dist/.
 *
 * A backend moves raw buffers between the ranks of one world; dist.c
 * (the engine's moe_dist_* functions, moe.h) checks the tensors, exchanges
 * the ranks' descriptions of their arguments first, allocates the outputs and
 * picks the backend by the tensors' device, as dispatch.h picks kernels:
 *   MOE_CPU   the MPI backend (mpi.c) in a world launched by mpirun, else the
 *             1-rank world (local.c), where every collective is a copy;
 *   MOE_CUDA  the NCCL backend (nccl.c), whose buffers are device memory and
 *             whose collectives go on the engine's stream; in a build without
 *             it, an error naming the op, the device and why.
 * Nothing in src/cpu or src/cuda knows about this. Counts are elements (of
 * dtype) or rows (of row_bytes bytes); every function returns 0, or -1 with
 * moe_error set. Ops reaching a backend are SUM, MAX, MIN or PROD (dist.c
 * turns MEAN into SUM and a division). */
#ifndef MOE_DIST_COMM_H
#define MOE_DIST_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "../core/moe.h"

typedef struct moe_comm_req moe_comm_req; /* a backend's operation in flight */

typedef struct {
  int rank, world_size, local_rank, local_size;
  int thread_level; /* MPI_THREAD_SINGLE 0 .. MPI_THREAD_MULTIPLE 3 */
  char library[128];
} moe_comm_world;

typedef struct {
  const char *name; /* "mpi", "local" */
  /* joins the world (once); fills w */
  int (*init)(moe_comm_world *w);
  void (*finalize)(void);
  void (*abort)(int code);
  int (*barrier)(void);
  /* n bytes from every rank into recv, in rank order (n * world bytes) */
  int (*all_gather_bytes)(const void *send, size_t n, void *recv);
  /* one int64 to and from each rank: recv[r] is what rank r sent to this one */
  int (*all_to_all_i64)(const int64_t *send, int64_t *recv);
  int (*all_reduce)(void *buf, int64_t n, moe_dtype dt, moe_dist_op op);
  int (*all_reduce_start)(void *buf, int64_t n, moe_dtype dt, moe_dist_op op, moe_comm_req **req);
  int (*test)(moe_comm_req *req, int *done); /* frees req once done */
  int (*wait)(moe_comm_req *req);            /* frees req */
  int (*broadcast)(void *buf, size_t bytes, int root);
  /* rows[r] rows of row_bytes from each rank r, stacked in rank order into recv */
  int (*all_gatherv)(const void *send, void *recv, const int64_t *rows, size_t row_bytes);
  /* send holds world blocks of n elements: block r, reduced, lands in recv on rank r */
  int (*reduce_scatter)(const void *send, void *recv, int64_t n, moe_dtype dt, moe_dist_op op);
  /* send_rows[r] rows to rank r (consecutive in send), recv_rows[r] from it */
  int (*all_to_allv)(const void *send, const int64_t *send_rows, void *recv, const int64_t *recv_rows,
                     size_t row_bytes);
  /* nonblocking: n elements from every rank into recv in rank order (n * world); test and wait finish it */
  int (*all_gather_start)(const void *send, void *recv, int64_t n, moe_dtype dt, moe_comm_req **req);
} moe_comm;

/* the world's backend of host tensors (dist.c), after moe_dist_init */
const moe_comm *moe_dist_host_comm(void);

extern const moe_comm moe_comm_local;

/* The NCCL backend (nccl.c): NULL in a build without it (moe_comm_nccl_missing
 * says why). Only its collectives are set (all_reduce .. all_to_allv, on device
 * pointers); the world, the barrier and the small exchanges stay the host
 * backend's. moe_nccl_load opens libnccl (a local step, so dist.c does it
 * before the ranks compare their arguments: a rank without it fails on every
 * rank); moe_nccl_join makes the one communicator of the process, at the
 * first device collective, on every rank at once (rank 0's id travels by the
 * host backend's broadcast). Both return 0 or -1 (load: the reason in err;
 * join: moe_error naming op). */
extern const moe_comm *const moe_comm_nccl;
extern const char moe_comm_nccl_missing[];
int moe_nccl_load(char *err, size_t n);
int moe_nccl_join(const char *op, const moe_comm *host, const moe_comm_world *w);
void moe_nccl_info(moe_dist_info *o); /* fills o's nccl_* fields */
/* NULL in a build without MPI (mpi.c then says why in moe_comm_mpi_missing) */
extern const moe_comm *const moe_comm_mpi;
extern const char moe_comm_mpi_missing[];

#endif
