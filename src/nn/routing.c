/* routing.c -- sparse MoE: the tokens-choose routing plan and the grouped GEMM
 * the experts run on. See lua/moe/sparse.lua for the layers around them.
 *
 * moe_route_plan: capacity and priority, as the TF Model Garden / flaxformer
 * routers define them. Per group, every token's 1st choice is placed before any
 * token's 2nd choice; within a rank, tokens go in `order` (token order, or by
 * descending top-1 probability for batch-prioritized routing). A (token, expert)
 * pair whose expert already holds `capacity` pairs of that group is dropped.
 * The kept pairs come back sorted by expert (then group, rank and priority):
 * the rows each expert's GEMM reads are contiguous. No [T,E,C] one-hot tensor
 * is ever built. On the device (src/cuda/route.cu) token, expert and rank are
 * made there, but counts [E] always come back as a HOST int64 tensor: they are
 * the sizes of the expert GEMMs, which the host launches, and tiny.
 *
 * moe_grouped_matmul: y [A,N] = x [A,K] @ w[e] [K,N] over consecutive row
 * groups of sizes counts[e]; backward gx = g w[e]^T, gw[e] = x_e^T g_e. With
 * MOE_PREC_BF16 (float32) all three GEMMs run on operands rounded to bfloat16
 * with fp32 sums (src/cpu/bf16.c); the bias and its gradient stay fp32.
 * counts are sizes, not data: a host tensor serves device operands (the plan's
 * counts are one), and device counts are read back to the host once. */
#include "../core/moe.h"
#include "../core/autograd_impl.h"
#include "../core/dispatch.h"
#include "../core/index_impl.h"
#include "../cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

int moe_route_plan(const moe_tensor *expert_index, const moe_tensor *order, const moe_tensor *valid, int64_t E,
                   int64_t capacity, int64_t ibase, moe_tensor **token, moe_tensor **expert, moe_tensor **rank,
                   moe_tensor **counts) {
  char b1[160], b2[160];
  const moe_tensor *ins[3] = {expert_index, order, valid};
  if (moe_same_device("route_plan", 3, ins) ||
      moe_backend_require("route_plan", expert_index->device, MOE_KERNEL_route_plan))
    return -1;
  if (expert_index->ndim != 3 || expert_index->dtype != MOE_I64)
    return moe_error("route_plan: expert_index must be int64 [groups, tokens, k], got %s %s",
                     moe_dtype_name(expert_index->dtype), moe_shape_str(expert_index, b1));
  int64_t G = expert_index->shape[0], T = expert_index->shape[1];
  if (order && (order->ndim != 2 || order->shape[0] != G || order->shape[1] != T || order->dtype != MOE_I64))
    return moe_error("route_plan: order must be int64 [%lld, %lld], got %s %s", (long long)G, (long long)T,
                     moe_dtype_name(order->dtype), moe_shape_str(order, b2));
  if (valid && (valid->ndim != 2 || valid->shape[0] != G || valid->shape[1] != T || valid->dtype != MOE_BOOL))
    return moe_error("route_plan: valid must be bool [%lld, %lld], got %s", (long long)G, (long long)T,
                     moe_shape_str(valid, b2));
  if (E < 1) return moe_error("route_plan: need at least one expert, got %lld", (long long)E);
  moe_tensor *ei = moe_contiguous(expert_index), *od = order ? moe_contiguous(order) : NULL;
  moe_tensor *vd = valid ? moe_contiguous(valid) : NULL;
  *token = *expert = *rank = *counts = NULL;
  int rc = -1;
  if (!ei || (order && !od) || (valid && !vd)) moe_error("route_plan: out of memory");
  else rc = MOE_K(route_plan, ei->device, ei, od, vd, E, capacity, ibase, token, expert, rank, counts);
  if (!rc) { /* engine-made indices: the layer's index ops on them skip the device range check */
    int64_t K = expert_index->shape[2];
    moe_mark_index_range(*token, ibase, ibase + G * T - 1);
    moe_mark_index_range(*expert, ibase, ibase + E - 1);
    moe_mark_index_range(*rank, ibase, ibase + K - 1);
  }
  moe_tensor_release(ei);
  moe_tensor_release(od);
  moe_tensor_release(vd);
  return rc;
}

/* ---------------------------------------------------------------- grouped GEMM */

static int grouped_backward(moe_node *n, const moe_tensor *g0, moe_tensor **gin) {
  if (moe_backend_require("grouped_matmul backward", g0->device, MOE_KERNEL_grouped_gemm_backward)) return -1;
  /* cn: the host copy of counts the forward saved (the kernels take host sizes) */
  const moe_tensor *x = moe_node_saved(n, 0), *w = moe_node_saved(n, 1), *cn = moe_node_saved(n, 2);
  if (!x || !w || !cn) return -1;
  moe_tensor *g = moe_contiguous(g0);
  if (!g) return -1;
  int64_t E = w->shape[0], N = w->shape[2];
  const int64_t *counts = (const int64_t *)moe_data(cn);
  int64_t bshape[2] = {E, N};
  moe_tensor *gx = moe_node_needs(n, 0) ? moe_empty_on(x->device, 2, x->shape, x->dtype) : NULL;
  moe_tensor *gw =
      moe_node_needs(n, 1) ? moe_empty_on(w->device, 3, w->shape, w->dtype) : NULL; /* each slice written below */
  moe_tensor *gb = n->nin > 2 && moe_node_needs(n, 2) ? moe_full_on(w->device, 2, bshape, w->dtype, 0.0) : NULL;
  int64_t *offs = malloc(sizeof(int64_t) * (size_t)(E ? E : 1));
  if ((moe_node_needs(n, 0) && !gx) || (moe_node_needs(n, 1) && !gw) || (n->nin > 2 && moe_node_needs(n, 2) && !gb) ||
      !offs) {
    moe_tensor_release(g);
    moe_tensor_release(gx);
    moe_tensor_release(gw);
    moe_tensor_release(gb);
    free(offs);
    return -1;
  }
  int64_t total = 0;
  for (int64_t e = 0; e < E; e++) {
    offs[e] = total;
    total += counts[e];
  }
  MOE_K(grouped_gemm_backward, g->device, gx, gw, gb, g, x, w, counts, offs,
        n->iarg[0] == MOE_PREC_BF16 && x->dtype == MOE_F32);
  free(offs);
  moe_tensor_release(g);
  gin[0] = gx;
  gin[1] = gw;
  if (n->nin > 2) gin[2] = gb;
  return 0;
}

moe_tensor *moe_grouped_matmul(const moe_tensor *x0, const moe_tensor *w0, const moe_tensor *b0,
                               const moe_tensor *counts, moe_precision prec) {
  char b1[160], b2[160], b3[160];
  const moe_tensor *all[3] = {x0, w0, b0}; /* counts: on either device (sizes, read on the host) */
  if (moe_same_device("grouped_matmul", 3, all) ||
      moe_backend_require("grouped_matmul", x0->device, MOE_KERNEL_grouped_gemm))
    return NULL;
  if (x0->ndim != 2 || w0->ndim != 3 || counts->ndim != 1 || counts->dtype != MOE_I64 ||
      counts->shape[0] != w0->shape[0] || x0->shape[1] != w0->shape[1] || x0->dtype != w0->dtype ||
      !moe_dtype_is_float(x0->dtype) ||
      (b0 &&
       (b0->ndim != 2 || b0->shape[0] != w0->shape[0] || b0->shape[1] != w0->shape[2] || b0->dtype != w0->dtype))) {
    moe_error("grouped_matmul: rows [A,K] %s, weights [E,K,N] %s, bias [E,N] and int64 counts [E] %s do "
              "not fit (one float dtype)",
              moe_shape_str(x0, b1), moe_shape_str(w0, b2), moe_shape_str(counts, b3));
    return NULL;
  }
  moe_tensor *cn = counts->device == MOE_CPU ? moe_contiguous(counts) : moe_to_device(counts, MOE_CPU);
  if (!cn) return NULL;
  const int64_t *c = (const int64_t *)moe_data(cn);
  int64_t total = 0, E = w0->shape[0], N = w0->shape[2];
  for (int64_t e = 0; e < E; e++) {
    if (c[e] < 0) {
      moe_error("grouped_matmul: negative count %lld for expert %lld", (long long)c[e], (long long)e + 1);
      moe_tensor_release(cn);
      return NULL;
    }
    total += c[e];
  }
  if (total != x0->shape[0]) {
    moe_error("grouped_matmul: counts add up to %lld rows but x has %lld", (long long)total, (long long)x0->shape[0]);
    moe_tensor_release(cn);
    return NULL;
  }
  moe_tensor *x, *w, *b;
  MOE_NOGRAD(x, moe_contiguous(x0));
  MOE_NOGRAD(w, x ? moe_contiguous(w0) : NULL);
  MOE_NOGRAD(b, w && b0 ? moe_contiguous(b0) : NULL);
  int64_t oshape[2] = {total, N};
  moe_tensor *y = w && (!b0 || b) ? moe_empty_on(x0->device, 2, oshape, x0->dtype) : NULL;
  int64_t *offs = y ? malloc(sizeof(int64_t) * (size_t)(E ? E : 1)) : NULL;
  if (y && !offs) {
    moe_error("grouped_matmul: out of memory");
    moe_tensor_release(y);
    y = NULL;
  }
  if (y) {
    int64_t off = 0;
    for (int64_t e = 0; e < E; e++) {
      offs[e] = off;
      off += c[e];
    }
    MOE_K(grouped_gemm, x->device, y, x, w, b, c, offs, prec == MOE_PREC_BF16 && x->dtype == MOE_F32);
  }
  free(offs);
  const moe_tensor *ins[3] = {x0, w0, b0};
  int nin = b0 ? 3 : 2;
  if (y && moe_ag_wants(nin, ins)) {
    moe_node *n = moe_node_new("grouped_matmul", grouped_backward, nin, ins);
    if (n) n->iarg[0] = prec;
    if (n && (moe_node_save(n, 0, x) || moe_node_save(n, 1, w) || moe_node_save(n, 2, cn))) {
      moe_node_release(n);
      n = NULL;
    }
    y = moe_ag_attach(y, n);
  }
  moe_tensor_release(x);
  moe_tensor_release(w);
  moe_tensor_release(b);
  moe_tensor_release(cn);
  return y;
}
