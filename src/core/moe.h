/* moe.h -- the moelua engine's public interface.
 *
 * A tensor is a strided N-d view (shape, stride, offset, dtype, device) over a
 * reference-counted block of storage. Views share storage; every function that
 * returns a `moe_tensor *` returns a NEW reference the caller must release with
 * moe_tensor_release().
 *
 * Errors: a function that fails returns NULL (or -1) and records a message that
 * names the op and the shapes or values at fault; read it with moe_last_error().
 * The engine never aborts, exits or longjmps on user input.
 *
 * Indices: C is 0-based. Ops that read or write index tensors take an `ibase`
 * argument: the value that denotes the first element (the Lua binding passes 1).
 * Dims passed to engine functions are always 0-based and already normalised.
 *
 * Devices: a tensor lives on the host (MOE_CPU) or on a CUDA device. An op
 * runs where its tensor arguments are and puts its outputs there; arguments on
 * different devices are an error naming both (a 0-dim host tensor may join an
 * op on any device, as a scalar). An op the device's backend has no kernel for
 * is an error naming the op ("not on this backend"), never a crash.
 *
 * Example (spec/c/public_api.c is a complete program):
 *
 *   int64_t shape[2] = {2, 3};
 *   double v[6] = {1, 2, 3, 4, 5, 6};
 *   moe_tensor *h = moe_from_doubles(2, shape, MOE_F32, v);    // on the host
 *   moe_tensor *x = moe_to_device(h, MOE_CUDA);                // or stay on MOE_CPU
 *   x->requires_grad = 1;                                      // a leaf
 *   moe_tensor *y = moe_binary(MOE_MUL, x, x);                 // on x's device
 *   moe_tensor *s = moe_reduce(MOE_RSUM, y, 0, 0, 0, NULL, 0); // 0-dim
 *   if (!s || moe_backward(s, NULL, 0)) fprintf(stderr, "%s\n", moe_last_error());
 *   // x->grad = 2 x; release every new reference:
 *   moe_tensor_release(s); moe_tensor_release(y); moe_tensor_release(x); moe_tensor_release(h);
 *
 * Private headers (the engine's own code, not for users): autograd_impl.h (how
 * an op records itself), tensor_impl.h (the storage layout), dispatch.h (the
 * backends' kernel table), ops_impl.h, index_impl.h, alloc.h.
 */
#ifndef MOE_H
#define MOE_H

#include <stddef.h>
#include <stdint.h>

#define MOE_MAX_DIMS 8
#define MOE_ALIGN 64

typedef enum { MOE_F32 = 0, MOE_F64, MOE_I32, MOE_I64, MOE_BOOL, MOE_NDTYPES } moe_dtype;
typedef enum { MOE_CPU = 0, MOE_CUDA = 1 } moe_device;

/* the reference-counted block a tensor views (its layout is private:
 * src/core/tensor_impl.h); moe_data(t) is the address of t's first element */
typedef struct moe_storage moe_storage;

/* an autograd node (the op that computed a tensor): its layout is private,
 * src/core/autograd_impl.h */
typedef struct moe_node moe_node;

typedef struct moe_tensor {
  moe_storage *storage;
  int64_t offset; /* in elements */
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int64_t stride[MOE_MAX_DIMS]; /* in elements; 0 for broadcast dims */
  moe_dtype dtype;
  moe_device device;
  int refcount;
  /* autograd: a leaf has requires_grad and no grad_fn; an op's output on the tape has
   * grad_fn (the node that computed it). `grad` is the accumulated gradient of a leaf. */
  int requires_grad;
  struct moe_node *grad_fn;
  struct moe_tensor *grad;
} moe_tensor;

/* ---- errors (src/core/tensor.c) ---- */
int moe_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *moe_last_error(void);
/* "[2,3]" into buf (at least 160 bytes); returns buf */
const char *moe_shape_str(const moe_tensor *t, char *buf);
const char *moe_dims_str(int ndim, const int64_t *shape, char *buf);

/* ---- dtypes (src/core/tensor.c) ---- */
size_t moe_dtype_size(moe_dtype dt);
const char *moe_dtype_name(moe_dtype dt);
int moe_dtype_from_name(const char *name, moe_dtype *out); /* 0 ok, -1 unknown */
int moe_dtype_is_float(moe_dtype dt);
moe_dtype moe_promote(moe_dtype a, moe_dtype b);

/* float -> integer conversion that saturates (NaN -> 0) instead of C's undefined behaviour */
static inline int32_t moe_sat_i32(double x) {
  return x != x ? 0 : x <= -2147483648.0 ? INT32_MIN : x >= 2147483647.0 ? INT32_MAX : (int32_t)x;
}
static inline int64_t moe_sat_i64(double x) {
  return x != x ? 0 : x <= -9223372036854775808.0 ? INT64_MIN : x >= 9223372036854775807.0 ? INT64_MAX : (int64_t)x;
}

/* ---- tensors (src/core/tensor.c; memory: src/core/alloc.c) ---- */
/* Bytes currently held by live host storages (for the GC nudge and for specs). */
int64_t moe_live_bytes(void);
int64_t moe_live_tensors(void);
/* the most bytes live at once since the last reset; reset starts from the current level */
int64_t moe_peak_bytes(int reset);
/* frees the host blocks the allocator keeps for reuse; returns their bytes */
size_t moe_empty_cache(void);
/* 1 when tensors can live on dev (the CPU always; CUDA with a device, or the emulator) */
int moe_device_available(moe_device dev);
/* t's values on device dev, a contiguous copy (a new ref to t when it is there) */
moe_tensor *moe_to_device(const moe_tensor *t, moe_device dev);
/* pinned host memory (CUDA builds with a device): an empty tensor there, a
 * contiguous copy of t there, whether t lies there; and the asynchronous move
 * of a pinned tensor to the device (later kernels wait for it, the host does not) */
moe_tensor *moe_empty_pinned(int ndim, const int64_t *shape, moe_dtype dt);
moe_tensor *moe_pin_memory(const moe_tensor *t);
int moe_is_pinned(const moe_tensor *t);
moe_tensor *moe_to_device_async(const moe_tensor *t);
int moe_allocator_caches(void); /* 0 in sanitizer builds, which free every block at once */
/* new tensors: moe_empty and moe_full on the host, the _on forms on dev;
 * moe_empty_like on t's device. Ops put their outputs on their inputs' device. */
moe_tensor *moe_empty(int ndim, const int64_t *shape, moe_dtype dt); /* [OUT] values undefined */
moe_tensor *moe_full(int ndim, const int64_t *shape, moe_dtype dt, double value);
moe_tensor *moe_empty_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt);
moe_tensor *moe_full_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, double value);
moe_tensor *moe_empty_like(const moe_tensor *t);
void moe_tensor_retain(moe_tensor *t);
void moe_tensor_release(moe_tensor *t);
int64_t moe_numel(const moe_tensor *t);
int moe_is_contiguous(const moe_tensor *t);
/* the address of t's first element (device memory for a CUDA tensor) */
char *moe_data(const moe_tensor *t);
/* 1 when a and b view the same storage */
int moe_same_storage(const moe_tensor *a, const moe_tensor *b);
/* element access by 0-based multi-index (slow path: printing, item, totable; a
 * device tensor's element is copied each way) */
double moe_get(const moe_tensor *t, const int64_t *idx);
/* the value at p, read as a dtype element (a host copy of one: moe_get, reads for later) */
double moe_value_of(const void *p, moe_dtype dt);
void moe_set(moe_tensor *t, const int64_t *idx, double v);
/* row-major fill from a double buffer (table conversion) */
moe_tensor *moe_from_doubles(int ndim, const int64_t *shape, moe_dtype dt, const double *v);
int moe_fill_(moe_tensor *t, double v);

/* ---- views (no copies) and copies (src/core/tensor.c) ---- */
moe_tensor *moe_view(const moe_tensor *t, int ndim, const int64_t *shape);    /* one -1 allowed */
moe_tensor *moe_reshape(const moe_tensor *t, int ndim, const int64_t *shape); /* copies if needed */
moe_tensor *moe_transpose(const moe_tensor *t, int d0, int d1);
moe_tensor *moe_permute(const moe_tensor *t, const int *perm);
moe_tensor *moe_narrow(const moe_tensor *t, int dim, int64_t start, int64_t len);
moe_tensor *moe_select(const moe_tensor *t, int dim, int64_t index);
moe_tensor *moe_expand(const moe_tensor *t, int ndim, const int64_t *shape); /* -1 keeps */
moe_tensor *moe_squeeze(const moe_tensor *t, int dim);                       /* dim<0: all */
moe_tensor *moe_unsqueeze(const moe_tensor *t, int dim);
moe_tensor *moe_contiguous(const moe_tensor *t); /* new ref to t itself when already contiguous */
moe_tensor *moe_clone(const moe_tensor *t);
moe_tensor *moe_to_dtype(const moe_tensor *t, moe_dtype dt); /* new ref to t when same dtype */
int moe_copy_(moe_tensor *dst, const moe_tensor *src);       /* broadcasts src, casts dtype */
/* 0 if t may be written in place; else -1 with an error naming the in-place op
 * `op`_ (pass "add" for add_): an expanded
 * tensor (stride 0 over a dim of size > 1) has several elements in one place */
int moe_check_writable(const char *op, const moe_tensor *t);
/* the autograd part of that check (no in-place writes into tensors that require grad
 * while grad mode is on) plus the version bump; used by fill_, which may write into
 * an expanded tensor */
int moe_mark_write(const char *op, const moe_tensor *t);

/* ---- elementwise (src/core/ops_elementwise.c -> src/cpu/elementwise.c) ---- */
typedef enum {
  MOE_ADD,
  MOE_SUB,
  MOE_MUL,
  MOE_DIV,
  MOE_POW,
  MOE_MAXIMUM,
  MOE_MINIMUM,
  MOE_EQ,
  MOE_NE,
  MOE_LT,
  MOE_LE,
  MOE_GT,
  MOE_GE,
  MOE_NBINOPS
} moe_binop;
typedef enum {
  MOE_NEG,
  MOE_ABS,
  MOE_RELU,
  MOE_SIGN,
  MOE_SQUARE,
  MOE_CLAMP, /* keep integer dtypes */
  MOE_EXP,
  MOE_LOG,
  MOE_SQRT,
  MOE_TANH,
  MOE_SIGMOID,
  MOE_GELU,
  MOE_SOFTPLUS,
  MOE_LOG1P,
  MOE_EXPM1,
  MOE_FLOOR,
  MOE_CEIL,
  MOE_ROUND,
  MOE_RSQRT,
  MOE_NUNOPS
} moe_unop;
const char *moe_binop_name(moe_binop op);
const char *moe_unop_name(moe_unop op);
moe_tensor *moe_binary(moe_binop op, const moe_tensor *a, const moe_tensor *b);
/* tensor (op) scalar, or scalar (op) tensor when `scalar_left` */
moe_tensor *moe_binary_scalar(moe_binop op, const moe_tensor *a, double s, int scalar_left);
/* in place: a = a (op) b, b broadcast to a's shape, result cast to a's dtype */
int moe_binary_(moe_binop op, moe_tensor *a, const moe_tensor *b);
int moe_binary_scalar_(moe_binop op, moe_tensor *a, double s);
moe_tensor *moe_unary(moe_unop op, const moe_tensor *a, double p0, double p1);
moe_tensor *moe_where(const moe_tensor *cond, const moe_tensor *a, const moe_tensor *b);

/* ---- reductions and scans (src/core/ops_reduce.c -> src/cpu/reduce.c) ---- */
typedef enum {
  MOE_RSUM,
  MOE_RMEAN,
  MOE_RPROD,
  MOE_RVAR,
  MOE_RSTD,
  MOE_RMAX,
  MOE_RMIN,
  MOE_RARGMAX,
  MOE_RARGMIN,
  MOE_RLOGSUMEXP,
  MOE_RALL,
  MOE_RANY,
  MOE_NREDOPS
} moe_redop;
const char *moe_redop_name(moe_redop op);
/* dims: mask of reduced dims (bit d), 0 = all. For MAX/MIN `indices` (if non-NULL)
 * receives the argmax over a single dim. `correction` is used by VAR/STD. */
moe_tensor *moe_reduce(moe_redop op, const moe_tensor *t, unsigned dims, int keepdim, int correction,
                       moe_tensor **indices /* [OUT] [OPTIONAL] */, int64_t ibase);
typedef enum { MOE_SOFTMAX, MOE_LOG_SOFTMAX, MOE_CUMSUM, MOE_CUMPROD } moe_scanop;
moe_tensor *moe_scan(moe_scanop op, const moe_tensor *t, int dim);

/* ---- matmul (src/core/ops_matmul.c -> src/cpu/matmul.c, src/cpu/bf16.c) ---- */
/* The precision of a GEMM: fp32, or bf16 (float32 operands rounded to bfloat16, round to
 * nearest even, products and sums in fp32, fp32 output; src/cpu/bf16.c). It applies to
 * float32 GEMMs; float64 ones always run in fp64. An op's backward GEMMs run in the
 * precision of its forward (as PyTorch's autocast). */
typedef enum { MOE_PREC_FP32 = 0, MOE_PREC_BF16 = 1 } moe_precision;
moe_tensor *moe_matmul(const moe_tensor *a, const moe_tensor *b);
moe_tensor *moe_matmul_prec(const moe_tensor *a, const moe_tensor *b, moe_precision prec);
/* out = a @ b into an existing tensor (shapes already checked by moe_matmul rules) */
int moe_matmul_out(moe_tensor *out, const moe_tensor *a, const moe_tensor *b);

/* ---- sorting and indexing (src/core/index.c -> src/cpu/index.c) ---- */
/* values [OUT] and indices [OUT] (int64, starting at ibase) along dim; 0 or -1 */
int moe_sort(const moe_tensor *t, int dim, int descending, moe_tensor **values, moe_tensor **indices, int64_t ibase);
/* topk: the k largest (or smallest) along dim, sorted, ties in index order */
int moe_topk(const moe_tensor *t, int64_t k, int dim, int largest, moe_tensor **values, moe_tensor **indices,
             int64_t ibase);
moe_tensor *moe_gather(const moe_tensor *t, int dim, const moe_tensor *index, int64_t ibase);
/* out = t with out[... index ...] += src; inplace modifies t */
moe_tensor *moe_scatter_add(const moe_tensor *t, int dim, const moe_tensor *index, const moe_tensor *src, int64_t ibase,
                            int inplace);
moe_tensor *moe_index_select(const moe_tensor *t, int dim, const moe_tensor *index, int64_t ibase);
/* (src/core/gather.c) rows `index` of up to MOE_GATHER_MAX tensors (along dim 0), copied on a
 * helper thread while the caller goes on: start returns at once (or NULL and
 * an error: a bad index), finish waits and hands over the n outputs (new
 * references), free releases the job (waiting for it when still running). */
#define MOE_GATHER_MAX 16
typedef struct moe_gather_job moe_gather_job;
moe_gather_job *moe_gather_start(int n, moe_tensor *const *src, const moe_tensor *index, int64_t ibase, int pinned);
int moe_gather_finish(moe_gather_job *j, moe_tensor **out);
void moe_gather_free(moe_gather_job *j);
moe_tensor *moe_index_add(const moe_tensor *t, int dim, const moe_tensor *index, const moe_tensor *src, int64_t ibase,
                          int inplace);
moe_tensor *moe_bincount(const moe_tensor *t, const moe_tensor *weights, int64_t minlength, int64_t ibase);
moe_tensor *moe_cat(int n, moe_tensor *const *ts, int dim);
moe_tensor *moe_stack(int n, moe_tensor *const *ts, int dim);

/* ---- creation and random numbers (src/core/rng.c) ----
 * The generator is Philox4x32-10 (Salmon et al., SC'11): counter-based, so the
 * value at position i of a random op depends only on (seed, op counter, i). */
void moe_manual_seed(uint64_t seed);
/* one Philox4x32-10 block (exposed for known-answer tests) */
void moe_philox4x32(const uint32_t ctr[4], uint64_t key, uint32_t out[4]);
uint64_t moe_rng_seed(void);
moe_tensor *moe_arange(double start, double end, double step, moe_dtype dt);
moe_tensor *moe_linspace(double start, double end, int64_t n, moe_dtype dt);
moe_tensor *moe_eye(int64_t n, int64_t m, moe_dtype dt);
moe_tensor *moe_rand(int ndim, const int64_t *shape, moe_dtype dt, double lo, double hi);
moe_tensor *moe_randn(int ndim, const int64_t *shape, moe_dtype dt, double mean, double std);
/* the same on the device dev: drawn there from the same counters (uniform draws are
 * bitwise the host's; normal draws agree to the device's double log/cos rounding) */
moe_tensor *moe_rand_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, double lo, double hi);
moe_tensor *moe_randn_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, double mean, double std);
moe_tensor *moe_randint(int64_t low, int64_t high, int ndim, const int64_t *shape, moe_dtype dt);
moe_tensor *moe_randperm(int64_t n, moe_dtype dt, int64_t ibase);
/* int64 1..n shuffled from a 64-bit xorshift64* state (fit{}'s batch order) */
moe_tensor *moe_shuffled_range(int64_t n, uint64_t state);

/* ---- layers' fused ops (src/nn/dense.c, losses.c, mixture.c, routing.c -> src/cpu/) ---- */
/* y [..., N] = x [..., K] @ w [K, N] (+ b [N]; b may be NULL), the GEMMs in precision prec */
moe_tensor *moe_linear(const moe_tensor *x, const moe_tensor *w, const moe_tensor *b, int act, moe_precision prec);
/* elementwise binary cross-entropy of probabilities (clipped to [1e-7, 1-1e-7]) or
 * logits; y and p of one shape and float dtype; the gradient goes to p only */
moe_tensor *moe_bce(const moe_tensor *y, const moe_tensor *p, int from_logits);
/* out [B,U] = sum_e g[b,e] h[b,u,e]; h [B,U,E] with any strides, g [B,E] */
moe_tensor *moe_mixture(const moe_tensor *h, const moe_tensor *g);
/* out[b, e*U+u] = act(h[b, e*U+u]) g[b,e] (act: relu or identity), plus g's E
 * columns appended when `append`: h [B, E*U], g [B, E] -> [B, E*U (+E)] */
moe_tensor *moe_gate_scale(const moe_tensor *h, const moe_tensor *g, int relu, int append);
/* tokens-choose plan (src/nn/routing.c): kept (token, expert, rank) pairs sorted by
 * expert (on expert_index's device), and per-expert counts, always a HOST tensor
 * (they size the expert GEMMs); capacity < 0 means no limit (dropless) */
int moe_route_plan(const moe_tensor *expert_index /* int64 [G,T,k] */,
                   const moe_tensor *order /* [OPTIONAL] int64 [G,T] */,
                   const moe_tensor *valid /* [OPTIONAL] bool [G,T] */, int64_t E, int64_t capacity, int64_t ibase,
                   moe_tensor **token /* [OUT] */, moe_tensor **expert /* [OUT] */, moe_tensor **rank /* [OUT] */,
                   moe_tensor **counts /* [OUT] int64 [E] */);
/* y [A,N] = x [A,K] @ w[e] [K,N] (+ b[e] [N], b may be NULL) over consecutive row
 * groups of sizes counts [E] (on either device: read on the host), the GEMMs in precision prec */
moe_tensor *moe_grouped_matmul(const moe_tensor *x, const moe_tensor *w, const moe_tensor *b, const moe_tensor *counts,
                               moe_precision prec);

/* ---- autograd (src/core/autograd.c; moe_detach: src/core/tensor.c) ----
 * Every differentiable op records a node on the tape when grad mode is on and
 * an input requires grad (t->requires_grad, set on a leaf by the caller).
 * moe_backward walks the tape from a root and accumulates d(root)/d(leaf)
 * into each leaf's `grad`. How an op records itself: src/core/autograd_impl.h. */
int moe_grad_enabled(void);
int moe_set_grad_enabled(int on); /* returns the previous mode */
/* accumulate d(root)/d(leaves) into their .grad; grad NULL means ones (a one-element
 * root); retain_graph keeps the tape for another backward */
int moe_backward(moe_tensor *root, const moe_tensor *grad, int retain_graph);
/* the same values, off the tape [OUT: a new view] */
moe_tensor *moe_detach(const moe_tensor *t);
/* the op that computed t ("add", "matmul", ...), or NULL for a leaf */
const char *moe_grad_fn_name(const moe_tensor *t);
/* The leaf-ready hook, one per thread (none by default; backward then does no
 * extra work). During moe_backward, fn(leaf, ud) is called the moment a leaf's
 * .grad is final for this pass: every edge of the pass's graph into the leaf
 * has been accumulated (leaf->grad is still NULL when none carried a gradient).
 * Once per reachable leaf per pass, in the order the pass finishes them; a
 * leaf the pass does not reach is not called. After a pass that succeeded,
 * fn(NULL, ud): the pass has ended. A nonzero return (with moe_error set) stops
 * the pass and moe_backward returns -1. fn runs with grad mode off. Returns the
 * previous hook (its ud into *prev_ud when prev_ud is not NULL). */
typedef int (*moe_leaf_ready_fn)(moe_tensor *leaf, void *ud);
moe_leaf_ready_fn moe_set_leaf_ready_hook(moe_leaf_ready_fn fn, void *ud, void **prev_ud);
moe_leaf_ready_fn moe_get_leaf_ready_hook(void **ud); /* this thread's hook (and its ud), or NULL */
/* inside a hook's call: 1 when the running pass reaches leaf (an edge of its
 * graph points at it, so the hook will hear of it), else 0 (also outside) */
int moe_backward_reaches(const moe_tensor *leaf);
/* g summed over the dims broadcast from shape (ndim, shape); new ref */
moe_tensor *moe_sum_to_shape(const moe_tensor *g, int ndim, const int64_t *shape);

/* ---- threads (src/core/threads.c) ----
 * The CPU kernels' thread pool and OpenBLAS's threads: n of each (capped at 8,
 * as MOE_NUM_THREADS); 0 restores the default (the cores, or MOE_NUM_THREADS).
 * moe_dist_init sets 1 when several ranks share the machine. */
int moe_set_num_threads(int n); /* returns the previous count */
int moe_get_num_threads(void);

/* ---- processes (src/dist/: the communicator interface, MPI and NCCL backends) ----
 * Ranks are 0-based, as MPI's, mpirun's and torch.distributed's. Without
 * mpirun (or in a build without MPI) the world is one rank, and every
 * collective is a copy. Collectives run on host tensors of any dtype (bool
 * reduces as logical: sum and max are or, prod and min are and), and on CUDA
 * tensors through NCCL where the build has it (one communicator per process,
 * on its current device; the collectives are queued on the engine's stream,
 * the host does not wait for them); every rank
 * must call the same collectives in the same order. With the checks on (the
 * default) each call first exchanges a small description of every rank's
 * arguments (the collective, dtype, shape, op or root, and any argument error
 * of its own), so that a mismatch is an error naming the ranks on every rank
 * instead of a hang or a wrong answer. */
typedef enum { MOE_DIST_SUM, MOE_DIST_MEAN, MOE_DIST_MAX, MOE_DIST_MIN, MOE_DIST_PROD, MOE_DIST_NOPS } moe_dist_op;
const char *moe_dist_op_name(moe_dist_op op);
typedef struct {
  int initialized, rank, world_size, local_rank, local_size;
  int launched;               /* the launcher's world size (mpirun's environment), 0 when not launched */
  int built;                  /* 1 when built with an MPI backend */
  int thread_level;           /* MPI's thread support: 0 single .. 3 multiple (-1: no MPI) */
  int threads;                /* the CPU threads of this rank (moe_get_num_threads) */
  int checks;                 /* moe_dist_set_checks */
  const char *backend;        /* "mpi" or "local" (the 1-rank world) */
  const char *library;        /* the MPI library's version line, or "" */
  const char *threads_reason; /* why `threads` */
  const char *reason;         /* why a 1-rank world, when it is one */
  /* device tensors' backend (src/dist/nccl.c): built with NCCL; its
   * communicator made (at the first device collective) and on which device */
  int nccl_built, nccl_ready, nccl_device;
  const char *nccl_version; /* nccl.h's at build time ("2.28.9"), or "" */
  const char *nccl_library; /* the libnccl opened at run time: its version, or "" */
  const char *nccl_reason;  /* why device collectives cannot run, when known; else "" */
} moe_dist_info;
/* idempotent; MPI_Init_thread when launched by mpirun, else the 1-rank world.
 * When it initialises MPI it also ends it at exit: MPI_Finalize when the
 * process exits with status 0, MPI_Abort (every rank ends) otherwise. */
int moe_dist_init(void);
int moe_dist_is_initialized(void);
int moe_dist_launched(void); /* the launcher's world size from the environment, 0 if none */
void moe_dist_get_info(moe_dist_info *out);
int moe_dist_rank(void);         /* (initialises) */
int moe_dist_world_size(void);   /* (initialises) */
int moe_dist_set_checks(int on); /* returns the previous setting */
/* ends every rank's process now (MPI_Abort; exit(code) in a 1-rank world) */
void moe_dist_abort(int code);
/* every rank's own argument error (msg) is made known to every rank: a
 * binding that found a bad argument calls this (as the collective `coll` would
 * have been called), so that the other ranks raise too instead of waiting;
 * returns -1 with the error set */
int moe_dist_fail(const char *coll, const char *msg);
int moe_dist_barrier(void);
/* in place: t = op over the ranks' t (contiguous or not) */
int moe_dist_all_reduce_(moe_tensor *t, moe_dist_op op);
/* in place: t = root's t */
int moe_dist_broadcast_(moe_tensor *t, int root);
/* the ranks' t stacked along dim 0 in rank order (their dim 0 may differ; a
 * 0-dim t counts as [1]); rows[world] [OUT] [OPTIONAL] receives each rank's count */
moe_tensor *moe_dist_all_gather(const moe_tensor *t, int64_t *rows);
/* t's dim 0 in world blocks: rank r gets block r reduced over the ranks */
moe_tensor *moe_dist_reduce_scatter(const moe_tensor *t, moe_dist_op op);
/* the first send[0] rows of t go to rank 0, the next send[1] to rank 1, ...;
 * returns the rows received, in rank order; recv[world] [OUT] [OPTIONAL] their counts.
 * Differentiable (a float t that requires grad, grad mode on): the gradient goes
 * back by the mirror all_to_all, so backward is a collective every rank runs. */
moe_tensor *moe_dist_all_to_all(const moe_tensor *t, const int64_t *send, int nsend, int64_t *recv);
/* a nonblocking all_reduce_: started (after the checks) and returned at once;
 * test (1 done, 0 not yet; it also drives MPI's progress), wait (0 or -1) and
 * free (waits first when still running). t stays referenced until then. */
typedef struct moe_dist_work moe_dist_work;
moe_dist_work *moe_dist_all_reduce_start(moe_tensor *t, moe_dist_op op);
int moe_dist_work_test(moe_dist_work *w);
int moe_dist_work_wait(moe_dist_work *w);
moe_tensor *moe_dist_work_tensor(moe_dist_work *w); /* (borrowed) */
void moe_dist_work_free(moe_dist_work *w);
/* The data-parallel gradient reducer (src/dist/reducer.c), DDP's: the params'
 * grads averaged over the ranks by all-reduces of flat buckets that start
 * during backward. Buckets hold params of one dtype in reverse order of the
 * list (the order backward finishes them), up to cap_mb MiB each (the first
 * up to first_cap_mb; 0: cap_mb). prepare() arms it on this thread (the
 * leaf-ready hook) before backward; a bucket whose params' grads are all final
 * is copied into its buffer and its all-reduce started, in bucket order on
 * every rank; each later readiness polls the buckets in flight (MPI moves data
 * only inside its calls). When the pass ends the buckets left (params that got
 * no grad: zeros) start too. finish() waits, divides by the world size and
 * writes each param's .grad (in place, or a new one: a param unused on every
 * rank gets zeros). `local` params (owned by one rank: expert shards) are not
 * reduced, only divided by the world size. In deterministic mode
 * (moe_set_deterministic) each bucket is all-gathered and summed in rank
 * order: bitwise the same on every rank and every run. In a 1-rank world
 * nothing is copied or sent. Host float32/float64 params only (for now).
 * new() is a collective (the ranks' layouts are compared when the checks are
 * on; so is the mode at each prepare); every rank then runs the same number
 * of backward passes between prepare and finish. */
typedef struct moe_reducer moe_reducer;
typedef struct {
  int params, local, buckets, world_size;
  int64_t bytes, cap_bytes, first_cap_bytes;
  int steps, armed;
  /* the last step (prepare .. finish) */
  int deterministic;
  int started_in_backward;     /* buckets started when their last param became ready */
  int done_in_backward;        /* of those, found complete by a poll during backward */
  int started_at_end;          /* started when the pass ended (holding a param that got no grad) */
  int started_in_finish;       /* started by finish (no pass ended since prepare) */
  int ready_after_first_start; /* params that became ready after the first bucket started */
  int unused;                  /* params that got no grad on this rank */
} moe_reducer_stats;
moe_reducer *moe_reducer_new(moe_tensor *const *params, int n, moe_tensor *const *local, int nlocal, double cap_mb,
                             double first_cap_mb);
int moe_reducer_prepare(moe_reducer *r);
int moe_reducer_finish(moe_reducer *r);
void moe_reducer_get_stats(const moe_reducer *r, moe_reducer_stats *out);
int moe_reducer_bucket_of(const moe_reducer *r, int param); /* param's bucket (0 starts first), -1 for none */
void moe_reducer_free(moe_reducer *r);                      /* (disarms it; waits for buckets in flight) */
/* a binding's argument error for moe_reducer_new, raised on every rank (they
 * are in moe_reducer_new or here too): returns -1 with the error set */
int moe_reducer_fail(const char *msg);

/* ---- deterministic mode (src/core/determinism.c) ----
 * On: the device's float scatter_add and index_add (and so the sparse MoE
 * combine, gather's and index_select's backward) sum each destination's sources
 * in source order instead of with atomics: bitwise the same every run, and the
 * CPU's result. The CPU is deterministic either way. */
int moe_set_deterministic(int on); /* returns the previous mode */
int moe_get_deterministic(void);

#endif
