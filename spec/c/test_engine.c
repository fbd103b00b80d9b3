/* test_engine.c -- C checks of the engine below the Lua binding: RNG known
 * answers, view stride rules, refcount hygiene, error reporting, and kernels
 * against naive loops. Prints TAP ("ok N - name" / "not ok N - name"). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../src/core/moe.h"
#include "../../src/core/tensor_impl.h"
#include "../../src/cpu/cpu.h"
#include "../../src/cpu/bf16.h"

#include <stdatomic.h>

static int n_test = 0, n_fail = 0;
#define CHECK(cond, name)                                                   \
  do {                                                                      \
    n_test++;                                                               \
    if (cond) printf("ok %d - %s\n", n_test, name);                         \
    else {                                                                  \
      n_fail++;                                                             \
      printf("not ok %d - %s (%s:%d)\n", n_test, name, __FILE__, __LINE__); \
    }                                                                       \
  } while (0)

static void test_philox(void) {
  /* known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors) */
  uint32_t out[4];
  uint32_t c0[4] = {0, 0, 0, 0};
  moe_philox4x32(c0, 0, out);
  CHECK(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu && out[3] == 0x9b00dbd8u,
        "philox4x32-10 known answer: zero counter and key");
  uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
  moe_philox4x32(c1, 0xffffffffffffffffULL, out);
  CHECK(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u && out[3] == 0x6d5451fdu,
        "philox4x32-10 known answer: all-ones counter and key");
  uint32_t c2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
  moe_philox4x32(c2, ((uint64_t)0x299f31d0u << 32) | 0xa4093822u, out);
  CHECK(out[0] == 0xd16cfe09u && out[1] == 0x94fdcceb && out[2] == 0x5001e420u && out[3] == 0x24126ea1u,
        "philox4x32-10 known answer: pi digits");
}

static void test_views(void) {
  int64_t base = moe_live_tensors();
  int64_t shape[3] = {2, 3, 4};
  moe_tensor *t = moe_empty(3, shape, MOE_F32);
  CHECK(t && t->stride[0] == 12 && t->stride[1] == 4 && t->stride[2] == 1, "contiguous strides");
  CHECK(((uintptr_t)t->storage->data % MOE_ALIGN) == 0, "storage is 64-byte aligned");
  int64_t s2[2] = {6, -1};
  moe_tensor *v = moe_view(t, 2, s2);
  CHECK(v && v->shape[1] == 4 && v->storage == t->storage && t->storage->refcount == 2,
        "view infers -1 and shares storage");
  moe_tensor *tr = moe_transpose(t, 0, 2);
  int64_t s3[1] = {24};
  moe_tensor *bad = moe_view(tr, 1, s3);
  CHECK(bad == NULL && strstr(moe_last_error(), "view:") != NULL, "view of a transposed tensor fails with a message");
  moe_tensor *r = moe_reshape(tr, 1, s3);
  CHECK(r && r->storage != t->storage, "reshape copies when a view is impossible");
  /* a narrowed view keeps a compatible view */
  moe_tensor *nw = moe_narrow(t, 1, 1, 2); /* [2,2,4] strides [12,4,1] */
  int64_t s4[2] = {2, 8};
  moe_tensor *nv = moe_view(nw, 2, s4);
  CHECK(nv && nv->stride[0] == 12 && nv->stride[1] == 1, "view merges dims that are contiguous among themselves");
  moe_tensor_release(nv);
  moe_tensor_release(nw);
  moe_tensor_release(r);
  moe_tensor_release(tr);
  moe_tensor_release(v);
  moe_tensor_release(t);
  CHECK(moe_live_tensors() == base, "every tensor released");
  int64_t neg[2] = {2, -3};
  CHECK(moe_empty(2, neg, MOE_F32) == NULL && strstr(moe_last_error(), "negative size") != NULL,
        "negative size is an error, not a crash");
}

static void test_kernels(void) {
  /* broadcast add of [3,1] and [4] against a naive loop, in float64 */
  int64_t sa[2] = {3, 1}, sb[1] = {4};
  double va[3] = {1, 2, 3}, vb[4] = {10, 20, 30, 40};
  moe_tensor *a = moe_from_doubles(2, sa, MOE_F64, va), *b = moe_from_doubles(1, sb, MOE_F64, vb);
  moe_tensor *c = moe_binary(MOE_ADD, a, b);
  int ok = c && c->shape[0] == 3 && c->shape[1] == 4;
  for (int i = 0; ok && i < 3; i++)
    for (int j = 0; j < 4; j++) {
      int64_t idx[2] = {i, j};
      ok &= moe_get(c, idx) == va[i] + vb[j];
    }
  CHECK(ok, "broadcast add [3,1] + [4] matches a naive loop");
  moe_tensor *ct = moe_transpose(c, 0, 1);
  moe_tensor *bad = moe_binary(MOE_ADD, c, ct);
  moe_tensor_release(ct);
  CHECK(bad == NULL && strstr(moe_last_error(), "cannot be broadcast") != NULL, "mismatched shapes report both shapes");
  /* matmul of a transposed view against a naive loop */
  int64_t sm[2] = {4, 3};
  moe_tensor *m = moe_randn(2, sm, MOE_F64, 0, 1);
  moe_tensor *mt = moe_transpose(m, 0, 1); /* [3,4], strides (1,3) */
  moe_tensor *p = moe_matmul(mt, m);       /* [3,3] */
  double err = 0;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) {
      double ref = 0;
      for (int k = 0; k < 4; k++) {
        int64_t ik[2] = {k, i}, kj[2] = {k, j};
        ref += moe_get(m, ik) * moe_get(m, kj);
      }
      int64_t ij[2] = {i, j};
      err = fmax(err, fabs(moe_get(p, ij) - ref));
    }
  CHECK(p && err < 1e-12, "matmul of a transposed view matches a naive loop");
  moe_tensor_release(a);
  moe_tensor_release(b);
  moe_tensor_release(c);
  moe_tensor_release(m);
  moe_tensor_release(mt);
  moe_tensor_release(p);
}

/* the thread pool runs every part of every job exactly once, back to back */
static _Atomic int hits[64];
static void count_part(void *ctx, int i) {
  (void)ctx;
  atomic_fetch_add(&hits[i], 1);
  for (volatile int k = 0; k < (i % 7) * 50; k++) {} /* uneven parts */
}
static void test_pool(void) {
  int ok = 1;
  for (int job = 0; job < 20000 && ok; job++) {
    int n = 1 + job % 64;
    for (int i = 0; i < 64; i++) atomic_store(&hits[i], 0);
    moe_cpu_parallel(n, count_part, NULL);
    for (int i = 0; i < 64; i++)
      if (atomic_load(&hits[i]) != (i < n)) ok = 0;
  }
  CHECK(ok, "the thread pool runs each part of 20,000 jobs exactly once");
}

/* bf16 packing (the operands of oneDNN's bf16 matmul) keeps the bits of bf16 rounding
 * (the emulation's, checked against a Lua reference by spec/bf16_spec.lua), over every
 * 16-bit top half with a spread of low halves, ties and NaNs included */
static void test_bf16_pack(void) {
  enum { N = 65536 * 4 };
  static float src[N], rounded[N];
  static uint16_t packed[N];
  static const uint32_t lows[4] = {0x0000u, 0x7fffu, 0x8000u, 0xffffu};
  for (uint32_t i = 0; i < N; i++) {
    uint32_t u = ((i >> 2) << 16) | lows[i & 3];
    memcpy(&src[i], &u, 4);
  }
  moe_bf16_round(src, rounded, N);
  moe_bf16_pack(src, packed, N);
  int ok = 1, nan_ok = 1;
  for (uint32_t i = 0; i < N; i++) {
    uint32_t r, p = (uint32_t)packed[i] << 16, in;
    memcpy(&r, &rounded[i], 4);
    memcpy(&in, &src[i], 4);
    if (r != p || (r & 0xffffu)) ok = 0;
    if (((in & 0x7fffffffu) > 0x7f800000u) != ((r & 0x7fffffffu) > 0x7f800000u)) nan_ok = 0;
  }
  CHECK(ok, "bf16 pack gives the bits of bf16 rounding (every top half, ties included)");
  CHECK(nan_ok, "bf16 rounding keeps NaNs NaN and makes no new ones");
}

int main(void) {
  int64_t bytes0 = moe_live_bytes();
  test_philox();
  test_views();
  test_kernels();
  test_pool();
  test_bf16_pack();
  CHECK(moe_live_bytes() == bytes0, "no storage bytes leaked across the C checks");
  printf("1..%d\n", n_test);
  return n_fail ? 1 : 0;
}
