/* determinism.c -- the deterministic mode's flag (moe.h). The CPU kernels are
 * deterministic in any case: each sums in a fixed order (scatter_add and
 * index_add in source order). On the device, scatter_add and index_add of
 * floats add with atomics, whose order varies from run to run; under this mode
 * src/cuda/index.cu sorts the destinations and sums in source order instead.
 * Full reductions are deterministic in both modes (fixed trees, no atomics). */
#include "moe.h"

static int deterministic;

int moe_set_deterministic(int on) {
  int old = deterministic;
  deterministic = on != 0;
  return old;
}

int moe_get_deterministic(void) { return deterministic; }
