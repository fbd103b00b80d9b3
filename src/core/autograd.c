/* autograd.c -- the tape: grad mode, nodes, and the backward pass.
 *
 * Ownership: a tensor owns one reference to its grad_fn node; a node owns one
 * reference to each input's node (or to the leaf tensor), and detached aliases
 * of the tensors it saved. Nothing points back from a node to its output, so
 * the graph is a DAG of refcounts with no cycles: dropping the last tensor of a
 * forward pass frees its graph, and backward() frees each node's buffers and
 * edges as soon as the node has run. Releases are iterative, so a chain of a
 * million ops does not overflow the C stack. */
#include "moe.h"
#include "tensor_impl.h"
#include "autograd_impl.h"

#include <stdlib.h>
#include <string.h>

static _Thread_local int grad_off; /* 0: grad mode on (the default) */

int moe_grad_enabled(void) { return !grad_off; }
int moe_set_grad_enabled(int on) {
  int prev = !grad_off;
  grad_off = !on;
  return prev;
}

int moe_ag_wants(int n, const moe_tensor *const *ts) {
  if (grad_off) return 0;
  for (int i = 0; i < n; i++)
    if (ts[i] && ts[i]->requires_grad) return 1;
  return 0;
}

/* Nodes are recycled through a free list (a small model's step records dozens,
 * and calloc/free were a tenth of its time); edges of up to 3 inputs live in
 * the node. Under AddressSanitizer nothing is pooled. */
#if defined(__SANITIZE_ADDRESS__)
#define NODE_POOL 0
#else
#define NODE_POOL 2048
#endif
static moe_node *node_pool[NODE_POOL > 0 ? NODE_POOL : 1];
static int node_pool_n;

static void node_free(moe_node *n) {
  if (n->edges != n->inline_edges) free(n->edges);
  if (node_pool_n < NODE_POOL) node_pool[node_pool_n++] = n;
  else free(n);
}

moe_node *moe_node_new(const char *name, moe_backward_fn fn, int n, const moe_tensor *const *ins) {
  moe_node *nd;
  if (node_pool_n > 0) {
    nd = node_pool[--node_pool_n];
    memset(nd, 0, sizeof *nd);
  } else {
    nd = calloc(1, sizeof *nd);
  }
  int inl = n <= (int)(sizeof nd->inline_edges / sizeof nd->inline_edges[0]);
  moe_edge *e = !nd ? NULL : inl ? nd->inline_edges : calloc((size_t)n, sizeof *e);
  if (!nd || !e) {
    free(nd);
    moe_error("%s: out of memory recording the autograd node", name);
    return NULL;
  }
  nd->name = name;
  nd->backward = fn;
  nd->refcount = 1;
  nd->nin = n;
  nd->edges = e;
  for (int i = 0; i < n; i++) {
    const moe_tensor *t = ins[i];
    if (!t) continue;
    e[i].ndim = t->ndim; /* every input's shape is kept: cat's backward needs them all */
    memcpy(e[i].shape, t->shape, sizeof t->shape);
    e[i].dtype = t->dtype;
    if (!t->requires_grad) continue;
    if (t->grad_fn) {
      e[i].fn = t->grad_fn;
      e[i].fn->refcount++;
    } else {
      e[i].leaf = (moe_tensor *)t;
      moe_tensor_retain(e[i].leaf);
    }
  }
  return nd;
}

int moe_node_needs(const moe_node *n, int i) { return n->edges[i].fn || n->edges[i].leaf; }

int moe_node_save(moe_node *n, int slot, const moe_tensor *t) {
  int prev = moe_set_grad_enabled(0);
  moe_tensor *d = moe_detach(t);
  moe_set_grad_enabled(prev);
  if (!d) return -1;
  moe_tensor_release(n->saved[slot]);
  n->saved[slot] = d;
  n->saved_version[slot] = t->storage->version;
  return 0;
}

const moe_tensor *moe_node_saved(moe_node *n, int slot) {
  moe_tensor *t = n->saved[slot];
  if (t && t->storage->version != n->saved_version[slot]) {
    moe_error("backward of %s: a tensor it saved was modified in place after the forward pass "
              "(clone() it before writing into it)",
              n->name);
    return NULL;
  }
  return t;
}

moe_tensor *moe_ag_attach(moe_tensor *out, moe_node *n) {
  if (!n) {
    moe_tensor_release(out);
    return NULL;
  }
  if (!moe_dtype_is_float(out->dtype)) {
    moe_node_release(n);
    return out;
  } /* not differentiable */
  out->grad_fn = n;
  out->requires_grad = 1;
  return out;
}

/* drop a node's buffers and edges; nodes whose count falls to 0 go on *stack */
static void node_clear(moe_node *n, moe_node **stack) {
  for (int i = 0; i < MOE_NODE_SAVED; i++) {
    moe_tensor_release(n->saved[i]);
    n->saved[i] = NULL;
  }
  for (int i = 0; i < n->nin; i++) {
    moe_edge *e = &n->edges[i];
    if (e->fn && --e->fn->refcount == 0) {
      e->fn->next = *stack;
      *stack = e->fn;
    }
    moe_tensor_release(e->leaf);
    e->fn = NULL;
    e->leaf = NULL;
  }
  moe_tensor_release(n->grad);
  n->grad = NULL;
}

static void free_stack(moe_node *stack) {
  while (stack) {
    moe_node *n = stack;
    stack = n->next;
    node_clear(n, &stack);
    node_free(n);
  }
}

void moe_node_release(moe_node *n) {
  if (n && --n->refcount == 0) {
    n->next = NULL;
    free_stack(n);
  }
}

moe_tensor *moe_sum_to_shape(const moe_tensor *g, int ndim, const int64_t *shape) {
  int lead = g->ndim - ndim;
  unsigned mask = 0;
  if (lead < 0) {
    moe_error("autograd: gradient has fewer dims than its input");
    return NULL;
  }
  for (int d = 0; d < g->ndim; d++)
    if (d < lead || (shape[d - lead] == 1 && g->shape[d] != 1)) mask |= 1u << d;
  if (!mask) {
    if (g->ndim == ndim && !memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim)) {
      moe_tensor_retain((moe_tensor *)g);
      return (moe_tensor *)g;
    }
    return moe_reshape(g, ndim, shape);
  }
  moe_tensor *s = moe_reduce(MOE_RSUM, g, mask, 0, 0, NULL, 0);
  if (!s) return NULL;
  moe_tensor *v = moe_reshape(s, ndim, shape);
  moe_tensor_release(s);
  return v;
}

/* g shaped and typed like the edge's input */
static moe_tensor *fit_grad(moe_tensor *g, const moe_edge *e, const char *op) {
  char b1[160], b2[160];
  moe_tensor *s = moe_sum_to_shape(g, e->ndim, e->shape);
  if (!s) {
    moe_error("backward of %s: gradient of shape %s does not fit its input's shape %s", op, moe_shape_str(g, b1),
              moe_dims_str(e->ndim, e->shape, b2));
    return NULL;
  }
  moe_tensor *c = moe_to_dtype(s, e->dtype);
  moe_tensor_release(s);
  return c;
}

static int accumulate_leaf(moe_tensor *leaf, moe_tensor *g) {
  if (!leaf->grad) {
    /* the leaf owns its .grad: take g when nothing else holds it or its storage,
     * copy it otherwise (it may be a view of a buffer the pass reuses) */
    if (g->refcount == 1 && g->storage->refcount == 1 && !g->grad_fn && moe_is_contiguous(g)) {
      moe_tensor_retain(g);
      leaf->grad = g;
      return 0;
    }
    leaf->grad = moe_clone(g);
    return leaf->grad ? 0 : -1;
  }
  return moe_binary_(MOE_ADD, leaf->grad, g);
}

static int accumulate_node(moe_node *n, moe_tensor *g) {
  if (!n->grad) {
    moe_tensor_retain(g);
    n->grad = g;
    return 0;
  }
  moe_tensor *s = moe_binary(MOE_ADD, n->grad, g);
  if (!s) return -1;
  moe_tensor_release(n->grad);
  n->grad = s;
  return 0;
}

/* ---------------------------------------------------------------- the leaf-ready hook */

static _Thread_local moe_leaf_ready_fn ready_fn;
static _Thread_local void *ready_ud;

moe_leaf_ready_fn moe_set_leaf_ready_hook(moe_leaf_ready_fn fn, void *ud, void **prev_ud) {
  moe_leaf_ready_fn old = ready_fn;
  if (prev_ud) *prev_ud = ready_ud;
  ready_fn = fn;
  ready_ud = fn ? ud : NULL;
  return old;
}

moe_leaf_ready_fn moe_get_leaf_ready_hook(void **ud) {
  if (ud) *ud = ready_ud;
  return ready_fn;
}

/* A pass's leaves and how many of its edges into each are still to run (only
 * when a hook is set): an open-addressing table keyed by the tensor pointer. */
typedef struct {
  moe_tensor *t;
  int left;
} leaf_count;
typedef struct {
  leaf_count *slot;
  size_t mask;
  moe_leaf_ready_fn fn; /* the hook when the pass began (for the whole pass) */
  void *ud;
} leaf_table;

static leaf_count *leaf_find(leaf_table *lt, moe_tensor *t) {
  size_t h = ((uintptr_t)t >> 4) * 0x9E3779B97F4A7C15ull;
  for (size_t i = h & lt->mask;; i = (i + 1) & lt->mask)
    if (lt->slot[i].t == t || !lt->slot[i].t) return &lt->slot[i];
}

static _Thread_local leaf_table *cur_pass; /* the pass whose hook is running (moe_backward_reaches) */
static _Thread_local const moe_tensor *cur_root_leaf;

/* counts every edge of the nodes in order[0..n) that points at a leaf */
static int leaf_table_build(leaf_table *lt, moe_node **order, size_t n) {
  size_t edges = 0, cap = 16;
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < order[i]->nin; k++) edges += order[i]->edges[k].leaf != NULL;
  while (cap < 2 * edges) cap *= 2;
  lt->slot = calloc(cap, sizeof *lt->slot);
  lt->mask = cap - 1;
  lt->fn = ready_fn;
  lt->ud = ready_ud;
  if (!lt->slot) return moe_error("backward: out of memory");
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < order[i]->nin; k++) {
      moe_tensor *t = order[i]->edges[k].leaf;
      if (!t) continue;
      leaf_count *c = leaf_find(lt, t);
      c->t = t;
      c->left++;
    }
  return 0;
}

/* node n has run: its edges into leaves are done; the hook hears of each leaf
 * whose last edge that was */
static int leaves_done(leaf_table *lt, moe_node *n) {
  for (int k = 0; k < n->nin; k++) {
    moe_tensor *t = n->edges[k].leaf;
    if (t && --leaf_find(lt, t)->left == 0) {
      cur_pass = lt;
      int rc = lt->fn(t, lt->ud);
      cur_pass = NULL;
      if (rc) return -1;
    }
  }
  return 0;
}

int moe_backward_reaches(const moe_tensor *leaf) {
  if (cur_root_leaf) return leaf == cur_root_leaf;
  if (!cur_pass || !leaf) return 0;
  return leaf_find(cur_pass, (moe_tensor *)leaf)->t == leaf;
}

static int run_backward(moe_tensor *root, const moe_tensor *grad, int retain) {
  static _Thread_local int pass_id;
  int mark = ++pass_id;
  moe_node **order = NULL, **ready = NULL;
  size_t cap = 64, norder = 0, nready = 0;
  int rc = -1;
  leaf_table lt = {NULL, 0, NULL, NULL};
  order = malloc(cap * sizeof *order);
  ready = malloc(cap * sizeof *ready);
  if (!order || !ready) {
    moe_error("backward: out of memory");
    goto done;
  }
  /* 1. collect the nodes reachable from the root, counting each node's consumers */
  moe_node *r = root->grad_fn;
  r->mark = mark;
  r->deps = 0;
  r->refcount++;
  order[norder++] = r;
  for (size_t i = 0; i < norder; i++) {
    moe_node *n = order[i];
    for (int k = 0; k < n->nin; k++) {
      moe_node *c = n->edges[k].fn;
      if (!c) continue;
      if (c->mark != mark) {
        if (norder == cap) {
          moe_node **o2 = realloc(order, 2 * cap * sizeof *order);
          moe_node **r2 = o2 ? realloc(ready, 2 * cap * sizeof *ready) : NULL;
          if (o2) order = o2;
          if (r2) ready = r2;
          if (!o2 || !r2) {
            moe_error("backward: out of memory");
            goto done;
          }
          cap *= 2;
        }
        c->mark = mark;
        c->deps = 0;
        c->refcount++; /* held by `order` until the pass ends */
        order[norder++] = c;
      }
      c->deps++;
    }
  }
  for (size_t i = 0; i < norder; i++)
    if (order[i]->freed) {
      moe_error("backward: the graph through %s was already freed by an earlier backward() "
                "(run the forward pass again, or pass {retain_graph=true})",
                order[i]->name);
      goto done;
    }
  if (ready_fn && leaf_table_build(&lt, order, norder)) goto done;
  /* 2. run the nodes in reverse topological order (Kahn) */
  moe_tensor_retain((moe_tensor *)grad);
  moe_tensor_release(r->grad);
  r->grad = (moe_tensor *)grad;
  ready[nready++] = r;
  moe_tensor *gin_small[8];
  while (nready) {
    moe_node *n = ready[--nready];
    int nin = n->nin;
    moe_tensor **g_in = nin > 8 ? calloc((size_t)nin, sizeof *g_in) : gin_small;
    if (!g_in) {
      moe_error("backward: out of memory");
      goto done;
    }
    if (nin <= 8) memset(g_in, 0, sizeof gin_small);
    int err = 0;
    if (n->grad && n->backward(n, n->grad, g_in)) err = 1;
    for (int k = 0; k < nin && !err; k++) {
      moe_edge *e = &n->edges[k];
      if (!g_in[k] || (!e->fn && !e->leaf)) continue;
      moe_tensor *g = fit_grad(g_in[k], e, n->name);
      moe_tensor_release(g_in[k]);
      g_in[k] = NULL;
      if (!g) {
        err = 1;
        break;
      }
      err = e->fn ? accumulate_node(e->fn, g) : accumulate_leaf(e->leaf, g);
      moe_tensor_release(g);
    }
    for (int k = 0; k < nin; k++) moe_tensor_release(g_in[k]);
    if (g_in != gin_small) free(g_in);
    if (err || (lt.slot && leaves_done(&lt, n))) goto done;
    for (int k = 0; k < nin; k++) {
      moe_node *c = n->edges[k].fn;
      if (c && --c->deps == 0) ready[nready++] = c;
    }
    moe_tensor_release(n->grad);
    n->grad = NULL;
    if (!retain) {
      moe_node *stack = NULL;
      node_clear(n, &stack); /* children are still held by `order` */
      free_stack(stack);
      n->freed = 1;
    }
  }
  if (lt.slot) {
    cur_pass = &lt;
    rc = lt.fn(NULL, lt.ud) ? -1 : 0;
    cur_pass = NULL;
  } else {
    rc = 0;
  }
done:
  free(lt.slot);
  for (size_t i = 0; i < norder; i++) {
    moe_tensor_release(order[i]->grad);
    order[i]->grad = NULL;
    moe_node_release(order[i]);
  }
  free(order);
  free(ready);
  return rc;
}

int moe_backward(moe_tensor *root, const moe_tensor *grad, int retain_graph) {
  char b1[160], b2[160];
  if (!root->requires_grad)
    return moe_error("backward: the tensor does not require grad (no input of the computation "
                     "had requires_grad = true, or it ran inside moe.no_grad)");
  moe_tensor *ones = NULL;
  if (!grad) {
    if (moe_numel(root) != 1)
      return moe_error("backward: a gradient is needed for a non-scalar output of shape %s; "
                       "call backward(grad) with a tensor of that shape",
                       moe_shape_str(root, b1));
    grad = ones = moe_full_on(root->device, root->ndim, root->shape, root->dtype, 1.0);
    if (!ones) return -1;
  } else if (grad->ndim != root->ndim || memcmp(grad->shape, root->shape, sizeof(int64_t) * (size_t)root->ndim)) {
    return moe_error("backward: grad of shape %s does not match the output's shape %s", moe_shape_str(grad, b1),
                     moe_shape_str(root, b2));
  }
  int prev = moe_set_grad_enabled(0);
  int rc;
  moe_tensor *g = moe_to_dtype(grad, root->dtype);
  if (!g) rc = -1;
  else if (!root->grad_fn) { /* the root is the leaf: final at once */ rc = accumulate_leaf(root, g);
    moe_leaf_ready_fn fn = ready_fn;
    void *ud = ready_ud;
    if (!rc && fn) {
      cur_root_leaf = root;
      rc = fn(root, ud) || fn(NULL, ud) ? -1 : 0;
      cur_root_leaf = NULL;
    }
  } else rc = run_backward(root, g, retain_graph);
  moe_tensor_release(g);
  moe_set_grad_enabled(prev);
  moe_tensor_release(ones);
  return rc;
}

const char *moe_grad_fn_name(const moe_tensor *t) { return t->grad_fn ? t->grad_fn->name : NULL; }
