/* ops_matmul.c -- matmul with broadcast batch dims (1-D operands as rows and
 * columns) in fp32 or bf16: checks, dispatch (src/cpu/matmul.c, src/cpu/bf16.c,
 * src/cuda/matmul.cu), recording, backward. */
#include "ops_impl.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- matmul */

/* Stride (in elements) of a matrix view for BLAS: the matrix rows x cols with
 * strides (rs, cs) is usable without a copy if one of them is 1. */
static int blas_ok(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if (cs == 1 && (rs >= cols || rows == 1) && rs >= 1) return 1;
  if (rs == 1 && (cs >= rows || cols == 1) && cs >= 1) return 1;
  return 0;
}

static int matmul_out(moe_tensor *out, const moe_tensor *a, const moe_tensor *b, moe_precision prec) {
  /* a [..., M, K], b [..., K, N] (batch dims broadcast), out [..., M, N] contiguous */
  int nb = out->ndim - 2;
  int64_t M = out->shape[nb], N = out->shape[nb + 1], K = a->shape[a->ndim - 1];
  moe_tensor va, vb;
  int64_t bshape_a[MOE_MAX_DIMS], bshape_b[MOE_MAX_DIMS];
  memcpy(bshape_a, out->shape, sizeof(int64_t) * (size_t)nb);
  memcpy(bshape_b, out->shape, sizeof(int64_t) * (size_t)nb);
  bshape_a[nb] = M;
  bshape_a[nb + 1] = K;
  bshape_b[nb] = K;
  bshape_b[nb + 1] = N;
  moe_broadcast_to(a, nb + 2, bshape_a, &va);
  moe_broadcast_to(b, nb + 2, bshape_b, &vb);
  moe_tensor *ca = NULL, *cb = NULL;
  /* batch dims must collapse to one stride for the batched call; copy otherwise */
  int64_t batch = 1;
  for (int d = 0; d < nb; d++) batch *= out->shape[d];
  int ok_a = blas_ok(M, K, va.stride[nb], va.stride[nb + 1]);
  int ok_b = blas_ok(K, N, vb.stride[nb], vb.stride[nb + 1]);
  int64_t sAb = 0, sBb = 0;
  for (int pass = 0; pass < 2; pass++) {
    moe_tensor *v = pass ? &vb : &va;
    int64_t st = 0, expect = -1;
    int ok = 1;
    for (int d = nb - 1; d >= 0; d--) {
      if (v->shape[d] == 1) continue;
      if (expect < 0) {
        st = v->stride[d];
        expect = st * v->shape[d];
      } else if (v->stride[d] == 0 && st == 0) {
      } else if (v->stride[d] != expect) {
        ok = 0;
        break;
      } else expect *= v->shape[d];
    }
    if (pass) {
      ok_b &= ok;
      sBb = st;
    } else {
      ok_a &= ok;
      sAb = st;
    }
  }
  if (!ok_a) {
    if (!(ca = moe_clone(&va))) return -1;
    va = *ca;
    sAb = M * K;
  }
  if (!ok_b) {
    if (!(cb = moe_clone(&vb))) {
      moe_tensor_release(ca);
      return -1;
    }
    vb = *cb;
    sBb = K * N;
  }
  if (prec == MOE_PREC_BF16 && out->dtype == MOE_F32) /* bf16 operands, fp32 sums (float64 stays fp64) */
    MOE_K(gemm_bf16, out->device, batch, M, N, K, moe_data(&va), sAb, va.stride[nb], va.stride[nb + 1], moe_data(&vb),
          sBb, vb.stride[nb], vb.stride[nb + 1], moe_data(out), M * N, 0);
  else
    MOE_K(gemm_batched, out->device, out->dtype, batch, M, N, K, moe_data(&va), sAb, va.stride[nb], va.stride[nb + 1],
          moe_data(&vb), sBb, vb.stride[nb], vb.stride[nb + 1], moe_data(out), M * N);
  moe_tensor_release(ca);
  moe_tensor_release(cb);
  return 0;
}

int moe_matmul_out(moe_tensor *out, const moe_tensor *a, const moe_tensor *b) {
  const moe_tensor *oab[3] = {out, a, b};
  if (moe_same_device("matmul", 3, oab)) return -1;
  return matmul_out(out, a, b, MOE_PREC_FP32);
}

/* ---------------------------------------------------------------- matmul: forward, backward, recorder */

static moe_tensor *matmul_impl(const moe_tensor *a0, const moe_tensor *b0, moe_precision prec) {
  char b1[160], b2[160];
  const moe_tensor *ab[2] = {a0, b0};
  if (moe_same_device("matmul", 2, ab)) return NULL;
  if (a0->ndim == 0 || b0->ndim == 0) {
    moe_error("matmul: both arguments need at least 1 dim, got shapes %s and %s", moe_shape_str(a0, b1),
              moe_shape_str(b0, b2));
    return NULL;
  }
  moe_dtype dt = moe_promote(a0->dtype, b0->dtype);
  if (!moe_dtype_is_float(dt)) dt = MOE_F32;
  moe_tensor *a = moe_to_dtype(a0, dt), *b = a ? moe_to_dtype(b0, dt) : NULL, *out = NULL;
  moe_tensor *a2 = NULL, *b2t = NULL;
  if (!a || !b) goto done;
  /* 1-D operands: a vector on the left is a row [1,K], on the right a column [K,1] */
  a2 = a->ndim == 1 ? moe_unsqueeze(a, 0) : (moe_tensor_retain(a), a);
  b2t = b->ndim == 1 ? moe_unsqueeze(b, 1) : (moe_tensor_retain(b), b);
  if (!a2 || !b2t) goto done;
  int64_t K = a2->shape[a2->ndim - 1];
  if (b2t->shape[b2t->ndim - 2] != K) {
    moe_error("matmul: shapes %s and %s do not align (%lld != %lld)", moe_shape_str(a0, b1), moe_shape_str(b0, b2),
              (long long)K, (long long)b2t->shape[b2t->ndim - 2]);
    goto done;
  }
  moe_tensor ba = {.ndim = a2->ndim - 2}, bb = {.ndim = b2t->ndim - 2};
  memcpy(ba.shape, a2->shape, sizeof(int64_t) * (size_t)ba.ndim);
  memcpy(bb.shape, b2t->shape, sizeof(int64_t) * (size_t)bb.ndim);
  int nb = 0;
  int64_t oshape[MOE_MAX_DIMS];
  if (moe_broadcast_shapes("matmul", &ba, &bb, &nb, oshape)) {
    moe_error("matmul: batch dims of shapes %s and %s cannot be broadcast together", moe_shape_str(a0, b1),
              moe_shape_str(b0, b2));
    goto done;
  }
  if (nb + 2 > MOE_MAX_DIMS) {
    moe_error("matmul: too many dims");
    goto done;
  }
  oshape[nb] = a2->shape[a2->ndim - 2];
  oshape[nb + 1] = b2t->shape[b2t->ndim - 1];
  if (oshape[nb] > INT32_MAX || oshape[nb + 1] > INT32_MAX || K > INT32_MAX) {
    moe_error("matmul: shapes %s and %s exceed the BLAS limit of 2^31-1 per matrix dim", moe_shape_str(a0, b1),
              moe_shape_str(b0, b2));
    goto done;
  }
  out = moe_empty_on(a0->device, nb + 2, oshape, dt);
  if (!out) goto done;
  if (matmul_out(out, a2, b2t, prec)) {
    moe_tensor_release(out);
    out = NULL;
    goto done;
  }
  /* drop the dims that 1-D operands added */
  if (a0->ndim == 1 || b0->ndim == 1) {
    int64_t fs[MOE_MAX_DIMS];
    int n = 0;
    for (int d = 0; d < nb; d++) fs[n++] = oshape[d];
    if (a0->ndim != 1) fs[n++] = oshape[nb];
    if (b0->ndim != 1) fs[n++] = oshape[nb + 1];
    moe_tensor *v = moe_view(out, n, fs);
    moe_tensor_release(out);
    out = v;
  }
done:
  moe_tensor_release(a);
  moe_tensor_release(b);
  moe_tensor_release(a2);
  moe_tensor_release(b2t);
  return out;
}

/* out [..,M,N] = a [..,M,K] @ b [..,K,N]: ga = g b^T, gb = a^T g (1-D operands
 * get their unit dim back first) */
static int matmul_backward(moe_node *n, const moe_tensor *g0, moe_tensor **gin) {
  const moe_tensor *a0 = MOE_SAVED(n, 0), *b0 = MOE_SAVED(n, 1);
  if ((n->saved[0] && !a0) || (n->saved[1] && !b0)) return -1;
  int a1 = n->iarg[0] == 1, b1 = n->iarg[1] == 1, rc = -1;
  moe_precision prec = (moe_precision)n->iarg[2]; /* the backward GEMMs run in the forward's precision */
  moe_tensor *g = NULL, *u = NULL, *A = NULL, *B = NULL, *T = NULL, *P = NULL, *x2 = NULL, *g2 = NULL;
  /* G [.., M, N]: the output's gradient with the dims of 1-D operands restored */
  TRY(g = a1 ? moe_unsqueeze(g0, g0->ndim - (b1 ? 0 : 1)) : retained(g0));
  if (b1) {
    TRY(u = moe_unsqueeze(g, g->ndim));
    moe_tensor_release(g);
    g = u;
    u = NULL;
  }
  if (moe_node_needs(n, 0)) { /* ga [.., M, K] = G @ B^T */
    TRY(B = b1 ? moe_unsqueeze(b0, 1) : retained(b0));
    TRY(T = moe_transpose(B, B->ndim - 2, B->ndim - 1));
    TRY(P = moe_matmul_prec(g, T, prec));
    TRY(gin[0] = a1 ? moe_squeeze(P, P->ndim - 2) : retained(P));
    moe_tensor_release(T);
    moe_tensor_release(P);
    T = P = NULL;
  }
  if (moe_node_needs(n, 1)) { /* gb [.., K, N] = A^T @ G */
    TRY(A = a1 ? moe_unsqueeze(a0, 0) : retained(a0));
    if (!b1 && n->iarg[1] == 2 && A->ndim > 2) { /* fold A's batch dims into its rows: one GEMM */
      int64_t ash[2] = {-1, A->shape[A->ndim - 1]}, gsh[2] = {-1, g->shape[g->ndim - 1]};
      TRY(x2 = moe_reshape(A, 2, ash));
      TRY(g2 = moe_reshape(g, 2, gsh));
      TRY(T = moe_transpose(x2, 0, 1));
      TRY(gin[1] = moe_matmul_prec(T, g2, prec));
    } else {
      TRY(T = moe_transpose(A, A->ndim - 2, A->ndim - 1));
      TRY(P = moe_matmul_prec(T, g, prec));
      TRY(gin[1] = b1 ? moe_squeeze(P, P->ndim - 1) : retained(P));
    }
  }
  rc = 0;
fail:
  moe_tensor_release(g);
  moe_tensor_release(A);
  moe_tensor_release(B);
  moe_tensor_release(T);
  moe_tensor_release(P);
  moe_tensor_release(x2);
  moe_tensor_release(g2);
  return rc;
}

moe_tensor *moe_matmul(const moe_tensor *a, const moe_tensor *b) { return moe_matmul_prec(a, b, MOE_PREC_FP32); }

moe_tensor *moe_matmul_prec(const moe_tensor *a, const moe_tensor *b, moe_precision prec) {
  const moe_tensor *ins[2] = {a, b};
  if (!moe_ag_wants(2, ins)) return matmul_impl(a, b, prec);
  moe_tensor *out;
  MOE_NOGRAD(out, matmul_impl(a, b, prec));
  if (!out) return NULL;
  moe_node *n = moe_node_new("matmul", matmul_backward, 2, ins);
  if (n) {
    n->iarg[0] = a->ndim;
    n->iarg[1] = b->ndim;
    n->iarg[2] = prec;
    int rc = 0;
    if (moe_node_needs(n, 1)) rc |= moe_node_save(n, 0, a);
    if (moe_node_needs(n, 0)) rc |= moe_node_save(n, 1, b);
    if (rc) {
      moe_node_release(n);
      n = NULL;
    }
  }
  return moe_ag_attach(out, n);
}
