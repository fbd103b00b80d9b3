// rng.cu -- moe_rand/moe_randn drawn on the device: one thread per Philox block,
// the same per-element draws as the host kernel (src/core/philox.h), so a host
// and a device run of one seed draw the same dropout masks and router jitter.
#include "common.cuh"
extern "C" {
#include "../core/philox.h"
}

__global__ void k_random_f32(float *o, int64_t n, uint64_t seed, uint64_t base, int normal, double p0, double p1) {
  int per = normal ? 2 : 4;
  MOE_GRID_STRIDE(b, (n + per - 1) / per) {
    uint32_t r[4];
    moe_philox_bits(seed, base, (uint64_t)b, r);
    for (int k = 0; k < per && b * per + k < n; k++) o[b * per + k] = moe_draw_f32(r, k, normal, p0, p1);
  }
}

__global__ void k_random_f64(double *o, int64_t n, uint64_t seed, uint64_t base, int normal, double p0, double p1) {
  MOE_GRID_STRIDE(i, n) {
    uint32_t r[4];
    moe_philox_bits(seed, base, (uint64_t)i, r);
    o[i] = moe_draw_f64(r, normal, p0, p1);
  }
}

extern "C" void moe_cuda_random(moe_tensor *t, uint64_t seed, uint64_t base, int normal, double p0, double p1) {
  int64_t n = moe_numel(t);
  cudaStream_t s = moe_cuda_stream();
  if (t->dtype == MOE_F32) {
    int64_t blocks = (n + (normal ? 1 : 3)) / (normal ? 2 : 4);
    MOE_LAUNCH(k_random_f32, moe_blocks(blocks, 256), 256, 0, s, (float *)moe_data(t), n, seed, base, normal, p0, p1);
  } else {
    MOE_LAUNCH(k_random_f64, moe_blocks(n, 256), 256, 0, s, (double *)moe_data(t), n, seed, base, normal, p0, p1);
  }
  moe_cuda_launched(normal ? "randn" : "rand");
}
