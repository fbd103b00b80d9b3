/* random.c -- the host kernel of moe_rand/moe_randn (src/core/rng.c): element
 * i of t from the Philox counters base.. under seed, as src/core/philox.h lays
 * them out (the device twin is src/cuda/rng.cu). */
#include "cpu.h"
#include "../core/philox.h"

void moe_cpu_random(moe_tensor *t, uint64_t seed, uint64_t base, int normal, double p0, double p1) {
  int64_t n = moe_numel(t);
  if (t->dtype == MOE_F32) {
    int per = normal ? 2 : 4;
    float *o = (float *)moe_data(t);
    for (int64_t b = 0; b * per < n; b++) {
      uint32_t r[4];
      moe_philox_bits(seed, base, (uint64_t)b, r);
      for (int k = 0; k < per && b * per + k < n; k++) o[b * per + k] = moe_draw_f32(r, k, normal, p0, p1);
    }
    return;
  }
  double *o = (double *)moe_data(t);
  for (int64_t i = 0; i < n; i++) {
    uint32_t r[4];
    moe_philox_bits(seed, base, (uint64_t)i, r);
    o[i] = moe_draw_f64(r, normal, p0, p1);
  }
}
