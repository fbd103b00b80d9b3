/* autograd_impl.h -- how an op records itself for autograd (private to the
 * engine: src/core, src/nn, src/train include it; moe.h users do not).
 *
 * The one pattern every differentiable op follows:
 *
 *   moe_tensor *moe_foo(const moe_tensor *a, const moe_tensor *b) {
 *     const moe_tensor *ins[2] = {a, b};
 *     if (!moe_ag_wants(2, ins)) return foo_impl(a, b);     // nothing to record
 *     moe_tensor *out;
 *     MOE_NOGRAD(out, foo_impl(a, b));                       // ops inside do not record
 *     if (!out) return NULL;
 *     moe_node *n = moe_node_new("foo", foo_backward, 2, ins);
 *     if (n) { n->iarg[0] = ...;                             // parameters
 *              if (moe_node_save(n, 0, a)) { moe_node_release(n); n = NULL; } }
 *     return moe_ag_attach(out, n);                          // NULL n: out released, NULL
 *   }
 *   static int foo_backward(moe_node *n, const moe_tensor *g, moe_tensor **gin) {
 *     const moe_tensor *a = MOE_SAVED(n, 0);                 // NULL if modified in place since
 *     if (moe_node_needs(n, 0)) gin[0] = ...;                // a new ref per input that needs one
 *     return 0;
 *   }
 *
 * Backward functions run with grad mode off and compose the engine's ops, so
 * they work on every layout, dtype and device; broadcast dims of gin[i] are
 * summed down to the input's shape and cast to its dtype by the engine. */
#ifndef MOE_AUTOGRAD_IMPL_H
#define MOE_AUTOGRAD_IMPL_H
#include "moe.h"

/* g: gradient of the node's output; gin[i] receives a new ref for each input i
 * with moe_node_needs(n, i) */
typedef int (*moe_backward_fn)(moe_node *n, const moe_tensor *g, moe_tensor **gin);

typedef struct {
  moe_node *fn;     /* the input's node, or NULL */
  moe_tensor *leaf; /* or a leaf tensor that requires grad (retained), or NULL */
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  moe_dtype dtype;
} moe_edge;

#define MOE_NODE_SAVED 4
struct moe_node {
  const char *name; /* the op, for error messages and t.grad_fn */
  moe_backward_fn backward;
  int refcount, freed;
  int nin;
  moe_edge *edges;
  moe_tensor *saved[MOE_NODE_SAVED]; /* detached aliases */
  uint32_t saved_version[MOE_NODE_SAVED];
  int64_t iarg[MOE_MAX_DIMS + 2]; /* op parameters */
  double darg[2];
  /* backward pass state */
  moe_tensor *grad;
  int deps, mark;
  moe_node *next;
  moe_edge inline_edges[3]; /* edges of ops with up to 3 inputs live here */
};

/* 1 when grad mode is on and one of the n tensors requires grad */
int moe_ag_wants(int n, const moe_tensor *const *ts);
/* a node for an op over n inputs (edges to those that require grad); NULL on failure */
moe_node *moe_node_new(const char *name, moe_backward_fn fn, int n, const moe_tensor *const *ins);
int moe_node_needs(const moe_node *n, int i);
/* keep t (as a detached alias) for backward; -1 on failure */
int moe_node_save(moe_node *n, int slot, const moe_tensor *t);
/* a saved tensor, or NULL with an error if it was modified in place since */
const moe_tensor *moe_node_saved(moe_node *n, int slot);
/* out->grad_fn = n (takes n's reference; a non-float out keeps no node); releases
 * out and returns NULL when n is NULL (the node could not be made) */
moe_tensor *moe_ag_attach(moe_tensor *out, moe_node *n);
void moe_node_release(moe_node *n);

/* OUT = CALL with grad mode off (the ops inside an op's _impl do not record) */
#define MOE_NOGRAD(OUT, CALL)                 \
  do {                                        \
    int prev_grad_ = moe_set_grad_enabled(0); \
    OUT = (CALL);                             \
    moe_set_grad_enabled(prev_grad_);         \
  } while (0)
/* saved slot i, or NULL when nothing was saved there (no error) */
#define MOE_SAVED(n, i) ((n)->saved[i] ? moe_node_saved(n, i) : NULL)
#endif
