/* rng.c -- Philox4x32-10 counter-based random numbers and tensor creation.
 *
 * Philox (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2,
 * 3", SC'11) maps a 128-bit counter and a 64-bit key to 128 random bits. The key
 * is the seed; every random op takes a fresh block of counters, so element i of
 * an op's output is a pure function of (seed, op number, i): results do not
 * depend on threads or on how the work is split. moe_manual_seed(n) resets the
 * key to n and the op counter to 0. */
#include "moe.h"
#include "index_impl.h"
#include "tensor_impl.h"
#include "../cpu/cpu.h"
#include "dispatch.h"
#include "philox.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_seed = 0x853c49e6748fea9bULL, rng_offset = 0;

void moe_manual_seed(uint64_t seed) {
  rng_seed = seed;
  rng_offset = 0;
}
uint64_t moe_rng_seed(void) { return rng_seed; }

/* one Philox4x32-10 block: ctr[4] -> out[4] (philox.h) */
void moe_philox4x32(const uint32_t ctr[4], uint64_t key, uint32_t out[4]) {
  moe_philox_block(ctr[0], ctr[1], ctr[2], ctr[3], key, out);
}

/* 128 random bits for element i of the op whose counter base is `base` */
static void bits_at(uint64_t base, uint64_t i, uint32_t out[4]) { moe_philox_bits(rng_seed, base, i, out); }

static uint64_t take_counters(uint64_t n) {
  uint64_t base = rng_offset;
  rng_offset += n;
  return base;
}

/* uniform on [p0, p1) or normal with mean p0 and std p1, on the device dev: the
 * kernel (moe_cpu_random, src/cpu/random.c; moe_cuda_random, src/cuda/rng.cu)
 * draws element i from the counters base.. of this op, so a host and a device
 * draw of the same seed and op number agree. */
static moe_tensor *random_float(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, int normal, double p0,
                                double p1) {
  moe_tensor *t = moe_empty_on(dev, ndim, shape, dt);
  if (!t) return NULL;
  int64_t n = moe_numel(t);
  int per = dt == MOE_F64 ? 1 : normal ? 2 : 4;
  uint64_t base = take_counters((uint64_t)((n + per - 1) / per));
  if (n) MOE_K(random, dev, t, rng_seed, base, normal, p0, p1);
  return t;
}

moe_tensor *moe_rand(int ndim, const int64_t *shape, moe_dtype dt, double lo, double hi) {
  return random_float(MOE_CPU, ndim, shape, dt, 0, lo, hi);
}

moe_tensor *moe_randn(int ndim, const int64_t *shape, moe_dtype dt, double mean, double std) {
  return random_float(MOE_CPU, ndim, shape, dt, 1, mean, std);
}

moe_tensor *moe_rand_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, double lo, double hi) {
  return random_float(dev, ndim, shape, dt, 0, lo, hi);
}

moe_tensor *moe_randn_on(moe_device dev, int ndim, const int64_t *shape, moe_dtype dt, double mean, double std) {
  return random_float(dev, ndim, shape, dt, 1, mean, std);
}

/* uniform integer in [0, range) without modulo bias (Lemire's method on 64 bits) */
static uint64_t bounded(uint64_t base, uint64_t i, uint64_t range) {
  uint32_t r[4];
  bits_at(base, i, r);
  uint64_t x = ((uint64_t)r[0] << 32) | r[1];
  unsigned __int128 m = (unsigned __int128)x * range;
  uint64_t l = (uint64_t)m;
  if (l < range) {
    uint64_t th = (0 - range) % range;
    uint64_t k = 1;
    while (l < th) { /* rare: draw again from the spare words, then further counters */
      x = k == 1 ? (((uint64_t)r[2] << 32) | r[3]) : 0;
      if (k > 1) {
        uint32_t r2[4];
        uint32_t ctr[4] = {(uint32_t)(base + i), (uint32_t)((base + i) >> 32), 0x6d6f656cu, (uint32_t)k};
        moe_philox4x32(ctr, rng_seed, r2);
        x = ((uint64_t)r2[0] << 32) | r2[1];
      }
      m = (unsigned __int128)x * range;
      l = (uint64_t)m;
      k++;
    }
  }
  return (uint64_t)(m >> 64);
}

/* 0 when every integer in [lo, hi] is exactly representable in dt, else an error */
static int ints_fit(const char *op, int64_t lo, int64_t hi, moe_dtype dt) {
  double max = dt == MOE_BOOL ? 1
      : dt == MOE_I32         ? 2147483647.0
      : dt == MOE_F32         ? 16777216.0
      : dt == MOE_F64         ? 9007199254740992.0
                              : 9223372036854775807.0;
  double min = dt == MOE_BOOL ? 0 : dt == MOE_I32 ? -2147483648.0 : -max;
  if ((double)lo < min || (double)hi > max)
    return moe_error("%s: values up to %lld do not fit dtype %s (it holds integers in [%.0f, %.0f] exactly)", op,
                     (long long)((double)hi > max ? hi : lo), moe_dtype_name(dt), min, max);
  return 0;
}

moe_tensor *moe_randint(int64_t low, int64_t high, int ndim, const int64_t *shape, moe_dtype dt) {
  if (high < low) {
    moe_error("randint: low %lld is greater than high %lld", (long long)low, (long long)high);
    return NULL;
  }
  if (ints_fit("randint", low, high, dt)) return NULL;
  moe_tensor *t = moe_empty(ndim, shape, MOE_I64);
  if (!t) return NULL;
  int64_t n = moe_numel(t);
  uint64_t base = take_counters((uint64_t)n), range = (uint64_t)(high - low) + 1;
  int64_t *p = (int64_t *)t->storage->data;
  for (int64_t i = 0; i < n; i++) p[i] = low + (int64_t)(range ? bounded(base, (uint64_t)i, range) : 0);
  if (dt == MOE_I64) return t;
  moe_tensor *c = moe_to_dtype(t, dt);
  moe_tensor_release(t);
  return c;
}

moe_tensor *moe_randperm(int64_t n, moe_dtype dt, int64_t ibase) {
  if (n < 0) {
    moe_error("randperm: negative n %lld", (long long)n);
    return NULL;
  }
  if (n > 0 && ints_fit("randperm", ibase, n - 1 + ibase, dt)) return NULL;
  moe_tensor *t = moe_empty(1, &n, MOE_I64);
  if (!t) return NULL;
  int64_t *p = (int64_t *)t->storage->data;
  for (int64_t i = 0; i < n; i++) p[i] = i + ibase;
  uint64_t base = take_counters((uint64_t)n);
  for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
    int64_t j = (int64_t)bounded(base, (uint64_t)i, (uint64_t)i + 1);
    int64_t tmp = p[i];
    p[i] = p[j];
    p[j] = tmp;
  }
  if (dt == MOE_I64) return t;
  moe_tensor *c = moe_to_dtype(t, dt);
  moe_tensor_release(t);
  return c;
}

moe_tensor *moe_arange(double start, double end, double step, moe_dtype dt) {
  if (step == 0 || isnan(step) || isnan(start) || isnan(end) || isinf(start) || isinf(end)) {
    moe_error("arange: invalid range start=%g end=%g step=%g", start, end, step);
    return NULL;
  }
  double len = ceil((end - start) / step);
  if (len < 0) len = 0;
  if (len > 1e12) {
    moe_error("arange: range start=%g end=%g step=%g is too long", start, end, step);
    return NULL;
  }
  int64_t n = (int64_t)len;
  moe_tensor *t = moe_empty(1, &n, MOE_F64);
  if (!t) return NULL;
  double *p = t->storage->data;
  for (int64_t i = 0; i < n; i++) p[i] = start + (double)i * step;
  if (dt == MOE_F64) return t;
  moe_tensor *c = moe_to_dtype(t, dt);
  moe_tensor_release(t);
  /* an int64 range's values are known: as an index it needs no check */
  if (c && dt == MOE_I64 && n > 0 && start == floor(start) && step == floor(step)) {
    int64_t a = (int64_t)start, b = (int64_t)(start + (double)(n - 1) * step);
    moe_mark_index_range(c, a < b ? a : b, a < b ? b : a);
  }
  return c;
}

moe_tensor *moe_linspace(double start, double end, int64_t n, moe_dtype dt) {
  if (n < 0) {
    moe_error("linspace: negative number of steps %lld", (long long)n);
    return NULL;
  }
  moe_tensor *t = moe_empty(1, &n, MOE_F64);
  if (!t) return NULL;
  double *p = t->storage->data;
  for (int64_t i = 0; i < n; i++)
    p[i] = n == 1 ? start
                  : (i < n / 2 ? start + (end - start) * (double)i / (double)(n - 1)
                               : end - (end - start) * (double)(n - 1 - i) / (double)(n - 1));
  if (dt == MOE_F64) return t;
  moe_tensor *c = moe_to_dtype(t, dt);
  moe_tensor_release(t);
  return c;
}

moe_tensor *moe_eye(int64_t n, int64_t m, moe_dtype dt) {
  int64_t shape[2] = {n, m};
  moe_tensor *t = moe_full(2, shape, dt, 0);
  if (!t) return NULL;
  for (int64_t i = 0; i < n && i < m; i++) {
    int64_t idx[2] = {i, i};
    moe_set(t, idx, 1);
  }
  return t;
}

/* 1..n shuffled by Fisher-Yates on an xorshift64* stream from state (0 counts as 1):
 * moe.data.batches' order, the same draws as its Lua generator */
moe_tensor *moe_shuffled_range(int64_t n, uint64_t state) {
  if (n < 0) {
    moe_error("shuffled_range: n must be a count, got %lld", (long long)n);
    return NULL;
  }
  uint64_t st = state ? state : 1;
  int64_t shape[1] = {n};
  moe_tensor *t = moe_empty(1, shape, MOE_I64);
  if (!t) return NULL;
  int64_t *p = (int64_t *)moe_data(t);
  for (int64_t i = 0; i < n; i++) p[i] = i + 1;
  for (int64_t i = n; i >= 2; i--) {
    st ^= st >> 12;
    st ^= st << 25;
    st ^= st >> 27;
    uint64_t r = (st * UINT64_C(2685821657736338717)) >> 11;
    int64_t j = (int64_t)(r % (uint64_t)i); /* 0-based: the Lua draw's 1..i, less one */
    int64_t tmp = p[i - 1];
    p[i - 1] = p[j];
    p[j] = tmp;
  }
  return t;
}
