/* philox.h -- Philox4x32-10 and the per-element draws of moe_rand/moe_randn,
 * shared by the host kernel (src/cpu/random.c) and the device one
 * (src/cuda/rng.cu) so that both map (seed, counter) to the same values.
 *
 * Element layout: one Philox block gives 128 bits. float64 elements take a
 * block each; float32 elements share them (uniform: 4 elements of 32 bits per
 * block, normal: 2 elements of 2 x 32 bits). Block b of an op whose counters
 * start at `base` is counter base + b, so element i depends only on (seed, op
 * number, i), never on threads or on how the work is split. */
#ifndef MOE_PHILOX_H
#define MOE_PHILOX_H
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__) || defined(MOE_CUDA_EMU)
#define MOE_HD __host__ __device__
#else
#define MOE_HD
#endif

static inline MOE_HD void moe_philox_block(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t key,
                                           uint32_t out[4]) {
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = (uint32_t)p1;
    c2 = n2;
    c3 = (uint32_t)p0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* the 128 bits of block b of the op whose counter base is `base` */
static inline MOE_HD void moe_philox_bits(uint64_t seed, uint64_t base, uint64_t b, uint32_t out[4]) {
  uint64_t c = base + b;
  moe_philox_block((uint32_t)c, (uint32_t)(c >> 32), 0x6d6f656cu /* "moel" */, 0, seed, out);
}

static inline MOE_HD double moe_u01_53(uint32_t a, uint32_t b) { /* [0,1) with 53 bits */
  return (double)(((uint64_t)a << 21) ^ (b >> 11)) * 0x1.0p-53;
}

/* element k (0..per-1) of a float32 block r: uniform on [p0, p1) or normal(p0, p1) */
static inline MOE_HD float moe_draw_f32(const uint32_t r[4], int k, int normal, double p0, double p1) {
  if (normal) { /* Box-Muller on two 32-bit uniforms, u1 in (0,1] */
    double u1 = ((double)r[2 * k] + 1.0) * 0x1.0p-32, u2 = (double)r[2 * k + 1] * 0x1.0p-32;
    return (float)(p0 + p1 * sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
  }
  /* 24 bits, and never the upper bound after rounding */
  float f = (float)(p0 + (p1 - p0) * ((double)(r[k] >> 8) * 0x1.0p-24));
  return f < (float)p1 ? f : (float)p0;
}

/* a float64 element from its own block */
static inline MOE_HD double moe_draw_f64(const uint32_t r[4], int normal, double p0, double p1) {
  if (normal) { /* Box-Muller, u1 in (0,1] */
    double u1 = 1.0 - moe_u01_53(r[0], r[1]), u2 = moe_u01_53(r[2], r[3]);
    return p0 + p1 * sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
  }
  return p0 + (p1 - p0) * moe_u01_53(r[0], r[1]);
}
#endif
