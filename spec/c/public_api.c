/* public_api.c -- a program that uses only the engine's public header, as a C
 * user would: tensors made on the host, moved to the device (CUDA when there is
 * one, the host emulator in build-emu, else the CPU), added, reduced and
 * differentiated there; the ops put their outputs on their inputs' device, and
 * mixing devices is an error that names both. Prints TAP. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../src/core/moe.h"

static int n_test = 0, n_fail = 0;
#define CHECK(cond, name)                                                                         \
  do {                                                                                            \
    n_test++;                                                                                     \
    if (cond) printf("ok %d - %s\n", n_test, name);                                               \
    else {                                                                                        \
      n_fail++;                                                                                   \
      printf("not ok %d - %s (%s:%d: %s)\n", n_test, name, __FILE__, __LINE__, moe_last_error()); \
    }                                                                                             \
  } while (0)

/* t's values as doubles, read on the host */
static int host_values(const moe_tensor *t, double *out, int n) {
  moe_tensor *det = moe_detach(t); /* (a move is not recorded by autograd) */
  moe_tensor *h = det ? moe_to_device(det, MOE_CPU) : NULL;
  moe_tensor_release(det);
  if (!h || moe_numel(h) != n) {
    moe_tensor_release(h);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    int64_t idx[MOE_MAX_DIMS] = {0};
    int64_t r = i;
    for (int d = h->ndim - 1; d >= 0; d--) {
      idx[d] = r % h->shape[d];
      r /= h->shape[d];
    }
    out[i] = moe_get(h, idx);
  }
  moe_tensor_release(h);
  return 0;
}

int main(void) {
  moe_device dev = moe_device_available(MOE_CUDA) ? MOE_CUDA : MOE_CPU;
  printf("# device: %s\n", dev == MOE_CUDA ? "cuda" : "cpu");
  int64_t base = moe_live_tensors();
  int64_t shape[2] = {2, 3};
  double xv[6] = {1, -2, 3, 0.5, 4, -1}, yv[6] = {0.25, 1, -1, 2, -3, 0};
  moe_tensor *xh = moe_from_doubles(2, shape, MOE_F32, xv), *yh = moe_from_doubles(2, shape, MOE_F32, yv);
  moe_tensor *x = xh ? moe_to_device(xh, dev) : NULL, *y = yh ? moe_to_device(yh, dev) : NULL;
  CHECK(x && y && x->device == dev && y->device == dev, "moe_to_device moves host tensors to the device");
  if (!x || !y) {
    printf("1..%d\n", n_test);
    return 1;
  }
  x->requires_grad = 1; /* a leaf on the device */

  moe_tensor *z = moe_binary(MOE_ADD, x, y);
  CHECK(z && z->device == dev, "add: the output is on its inputs' device");
  moe_tensor *zz = z ? moe_binary(MOE_MUL, z, z) : NULL;
  moe_tensor *s = zz ? moe_reduce(MOE_RSUM, zz, 0, 0, 0, NULL, 0) : NULL;
  CHECK(s && s->device == dev && s->ndim == 0, "sum: a 0-dim result on the device");
  double sv = 0, want = 0;
  for (int i = 0; i < 6; i++) want += (xv[i] + yv[i]) * (xv[i] + yv[i]);
  CHECK(s && host_values(s, &sv, 1) == 0 && fabs(sv - want) < 1e-4, "sum((x + y)^2) read back on the host");

  CHECK(s && moe_backward(s, NULL, 0) == 0, "backward from the device's scalar");
  double g[6] = {0};
  int ok = x->grad && x->grad->device == dev && host_values(x->grad, g, 6) == 0;
  for (int i = 0; ok && i < 6; i++) ok = fabs(g[i] - 2 * (xv[i] + yv[i])) < 1e-5;
  CHECK(ok, "x.grad = 2 (x + y), on the device");

  /* a host scalar (0-dim) joins an op on any device, as in PyTorch */
  moe_tensor *two = moe_full(0, NULL, MOE_F32, 2.0);
  moe_tensor *x2 = two ? moe_binary(MOE_MUL, y, two) : NULL;
  double v2[6] = {0};
  ok = x2 && x2->device == dev && host_values(x2, v2, 6) == 0;
  for (int i = 0; ok && i < 6; i++) ok = v2[i] == 2 * yv[i];
  CHECK(ok, "a 0-dim host tensor as a scalar operand of a device op");

  if (dev == MOE_CUDA) {
    moe_tensor *bad = moe_binary(MOE_ADD, x, yh);
    CHECK(!bad && strstr(moe_last_error(), "add") && strstr(moe_last_error(), "cuda") &&
              strstr(moe_last_error(), "cpu"),
          "mixing devices is an error naming the op and both devices");
    moe_tensor_release(bad);
    moe_tensor *mm = moe_matmul(x, yh);
    CHECK(!mm && strstr(moe_last_error(), "matmul"), "matmul of a device and a host tensor is refused");
    moe_tensor_release(mm);
    int64_t wshape[2] = {3, 2};
    moe_tensor *wh = moe_full(2, wshape, MOE_F32, 0.5);
    moe_tensor *lin = wh ? moe_linear(x, wh, NULL, -1, MOE_PREC_FP32) : NULL;
    CHECK(wh && !lin && strstr(moe_last_error(), "linear"), "linear of a device input and a host kernel is refused");
    moe_tensor *out = moe_empty(2, shape, MOE_F32);
    CHECK(out && moe_matmul_out(out, y, yh) == -1 && strstr(moe_last_error(), "matmul"),
          "matmul_out into a host tensor from a device one is refused");
    int64_t at[2] = {1, 2};
    CHECK(moe_get(y, at) == (double)(float)yv[5], "moe_get reads a device tensor's element");
    moe_tensor *idx = NULL, *idh = moe_full(1, (int64_t[]){1}, MOE_I64, 0);
    idx = idh ? moe_to_device(idh, MOE_CUDA) : NULL;
    moe_tensor *srcs[1] = {xh};
    moe_gather_job *job = idx ? moe_gather_start(1, srcs, idx, 0, 0) : NULL;
    CHECK(idx && !job && strstr(moe_last_error(), "index_select"), "a host gather with a device index is refused");
    moe_tensor *olds[] = {lin, wh, out, idx, idh};
    for (size_t i = 0; i < sizeof olds / sizeof olds[0]; i++) moe_tensor_release(olds[i]);
  } else {
    printf("ok %d - # SKIP no CUDA device or emulator: the mixing checks need two devices\n", ++n_test);
    for (int k = 0; k < 5; k++) printf("ok %d - # SKIP no CUDA device or emulator\n", ++n_test);
  }

  /* processes: this program is not started by mpirun, so its world is one rank */
  CHECK(moe_dist_init() == 0 && moe_dist_world_size() == 1 && moe_dist_rank() == 0, "moe_dist_init: a 1-rank world");
  double hv[6];
  CHECK(moe_dist_all_reduce_(yh, MOE_DIST_SUM) == 0 && host_values(yh, hv, 6) == 0 && hv[4] == -3,
        "moe_dist_all_reduce_ of one rank leaves the values");
  int64_t rows[1] = {0}, send[2] = {1, 1}, recv[1] = {0};
  moe_tensor *gath = moe_dist_all_gather(yh, rows);
  CHECK(gath && gath->ndim == 2 && gath->shape[0] == 2 && rows[0] == 2,
        "moe_dist_all_gather of one rank: a copy, its row count");
  moe_tensor_release(gath);
  moe_tensor *a = moe_dist_all_to_all(yh, send, 2, recv);
  CHECK(!a && strstr(moe_last_error(), "all_to_all: 2 send counts for a world of 1 rank"),
        "moe_dist_all_to_all refuses a count per rank too many");
  moe_tensor_release(a);
  if (dev == MOE_CUDA) {
    moe_dist_info di;
    moe_dist_get_info(&di);
    double dv[6];
    if (di.nccl_built)
      CHECK(moe_dist_all_reduce_(y, MOE_DIST_MAX) == 0 && host_values(y, dv, 6) == 0 && dv[1] == yv[1] &&
                dv[4] == yv[4],
            "moe_dist_all_reduce_ of one rank on a device tensor (NCCL) leaves the values");
    else
      CHECK(moe_dist_all_reduce_(y, MOE_DIST_MAX) == -1 && strstr(moe_last_error(), "not on this backend (cuda)") &&
                strstr(moe_last_error(), "NCCL"),
            "a collective on a device tensor, without NCCL, names the device and why");
  }

  moe_tensor *ts[] = {xh, yh, x, y, z, zz, s, two, x2};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) moe_tensor_release(ts[i]);
  CHECK(moe_live_tensors() == base, "every tensor released");
  printf("1..%d\n", n_test);
  return n_fail ? 1 : 0;
}
