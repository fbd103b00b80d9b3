/* l_sys.c -- the process and its backends: which BLAS, sgemm library and bf16
 * backend run (and the pure decisions, for the specs), the CUDA device and its
 * memory, the dispatch's kernel table, tensor memory, and deferred Ctrl-C. */
#include "binding_impl.h"
#include "../core/device.h"
#include "../core/dispatch.h"
#include "../cpu/blas_select.h"
#include "../cpu/bf16.h"
#include "../cpu/sgemm_lib.h"

/* backend_kernels() -> { {name =, cpu = true, cuda = bool}, ... }: the dispatch's
 * kernel table (src/core/dispatch.h), in its order */
/* op_names() -> {binary = {...}, unary = {...}, reduce = {...}, scan = {...}}: every
 * value of the engine's op enums, by name (the backend spec covers each) */
static void push_names(lua_State *L, const char *field, int n, const char *(*name)(int)) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, name(i));
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, field);
}
static const char *binop_name(int i) { return moe_binop_name((moe_binop)i); }
static const char *unop_name(int i) { return moe_unop_name((moe_unop)i); }
static const char *redop_name(int i) { return moe_redop_name((moe_redop)i); }
static const char *scan_name(int i) {
  static const char *names[] = {"softmax", "log_softmax", "cumsum", "cumprod"};
  return names[i];
}
static int l_op_names(lua_State *L) {
  lua_createtable(L, 0, 4);
  push_names(L, "binary", MOE_NBINOPS, binop_name);
  push_names(L, "unary", MOE_NUNOPS, unop_name);
  push_names(L, "reduce", MOE_NREDOPS, redop_name);
  push_names(L, "scan", MOE_CUMPROD + 1, scan_name);
  return 1;
}

static int l_backend_kernels(lua_State *L) {
  lua_createtable(L, MOE_NKERNELS, 0);
  for (int k = 0; k < MOE_NKERNELS; k++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, moe_kernel_name((moe_kernel)k));
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, moe_backend_supports(MOE_CPU, (moe_kernel)k));
    lua_setfield(L, -2, "cpu");
    lua_pushboolean(L, moe_backend_supports(MOE_CUDA, (moe_kernel)k));
    lua_setfield(L, -2, "cuda");
    lua_rawseti(L, -2, k + 1);
  }
  return 1;
}

/* cuda_info() -> {built, device_count, devices = {names}, free, total, live, peak, cached,
 *   runtime_version, driver_version (1000*major + 10*minor; 0: none), emulator, and
 *   reason (why no device is usable, when none is)} */
static int l_cuda_info(lua_State *L) {
  int n = moe_cuda_device_count();
  lua_createtable(L, 0, 8);
  lua_pushboolean(L, moe_cuda_built());
  lua_setfield(L, -2, "built");
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "device_count");
  lua_createtable(L, n, 0);
  for (int d = 0; d < n; d++) {
    char name[256];
    if (moe_cuda_device_name(d, name, sizeof name)) name[0] = '\0';
    lua_pushstring(L, name);
    lua_rawseti(L, -2, d + 1);
  }
  lua_setfield(L, -2, "devices");
  size_t fr = 0, tot = 0, live = 0, peak = 0, cached = 0;
  if (n > 0 && moe_cuda_mem_info(&fr, &tot) == 0) {
    lua_pushnumber(L, (lua_Number)fr);
    lua_setfield(L, -2, "free");
    lua_pushnumber(L, (lua_Number)tot);
    lua_setfield(L, -2, "total");
  }
  moe_cuda_memory_stats(&live, &peak, &cached);
  lua_pushnumber(L, (lua_Number)live);
  lua_setfield(L, -2, "live");
  lua_pushnumber(L, (lua_Number)peak);
  lua_setfield(L, -2, "peak");
  lua_pushnumber(L, (lua_Number)cached);
  lua_setfield(L, -2, "cached");
  int rt = 0, drv = 0;
  moe_cuda_versions(&rt, &drv);
  lua_pushinteger(L, rt);
  lua_setfield(L, -2, "runtime_version");
  lua_pushinteger(L, drv);
  lua_setfield(L, -2, "driver_version");
  lua_pushboolean(L, moe_cuda_is_emulator());
  lua_setfield(L, -2, "emulator");
  if (n == 0) {
    lua_pushstring(L, moe_cuda_unavailable_reason());
    lua_setfield(L, -2, "reason");
  }
  return 1;
}

#ifdef MOE_CUDA_EMU_BUILD
/* emu_probe(name) -> {values}: one of the emulator's self-checks (runtime.cu),
 * for spec/emu_spec.lua; the error it provokes is raised as an op's */
static int l_emu_probe(lua_State *L) {
  double out[64];
  const char *what = luaL_checkstring(L, 1);
  moe_l_op_dev = MOE_CUDA; /* the trampoline raises the pending CUDA error */
  int n = moe_cuda_emu_probe(what, out, 64);
  if (n < 0) return luaL_error(L, "emu_probe: unknown probe '%s'", what);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushnumber(L, out[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}
#endif
/* cuda_precision([name]) -> the previous name: "fp32", "tf32" or "bf16" (float32 GEMMs on the device) */
static int l_cuda_precision(lua_State *L) {
  static const char *names[] = {"fp32", "tf32", "bf16", NULL};
  int old = moe_cuda_get_precision();
  if (!lua_isnoneornil(L, 1)) moe_cuda_set_precision(luaL_checkoption(L, 1, NULL, names));
  lua_pushstring(L, names[old]);
  return 1;
}
static int l_cuda_empty_cache(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moe_cuda_empty_cache());
  return 1;
}

/* defer_interrupts(on) -> previous: while on, a first Ctrl-C is only recorded */
static int l_defer_interrupts(lua_State *L) {
  lua_pushboolean(L, moe_lua_defer);
  moe_lua_defer = lua_toboolean(L, 1);
  if (!moe_lua_defer) moe_lua_deferred = 0;
  return 1;
}
/* take_interrupt() -> whether a deferred Ctrl-C came (and clears it) */
static int l_take_interrupt(lua_State *L) {
  lua_pushboolean(L, moe_lua_deferred);
  moe_lua_deferred = 0;
  return 1;
}

static const char *const cpu_vendors[] = {"other", "intel", "amd", NULL}; /* MOE_CPU_* order */

/* t[key] = a kernel set's name, t[key .. "_rank"] = its rank (moe_blas_core_rank), t on the stack's top */
static void set_kernel_set(lua_State *L, const char *key, const char *name) {
  char rank_key[48];
  snprintf(rank_key, sizeof rank_key, "%s_rank", key);
  lua_pushstring(L, name);
  lua_setfield(L, -2, key);
  lua_pushinteger(L, moe_blas_core_rank(name));
  lua_setfield(L, -2, rank_key);
}

/* blas_info() -> {library, kernels, cpu_best, blas_best (each with its _rank), missing, cpu_vendor, cpu_features,
 *   chosen_by, reason} */
static int l_blas_info(lua_State *L) {
  moe_blas_status st;
  moe_blas_status_get(&st);
  char feats[200];
  moe_cpu_features_str(st.cpu.features, feats, sizeof feats);
  lua_newtable(L);
  lua_pushstring(L, st.library);
  lua_setfield(L, -2, "library");
  set_kernel_set(L, "kernels", st.kernels);
  set_kernel_set(L, "cpu_best", st.cpu_best);
  set_kernel_set(L, "blas_best", st.blas_best);
  lua_pushstring(L, st.missing);
  lua_setfield(L, -2, "missing");
  lua_pushstring(L, cpu_vendors[st.cpu.vendor]);
  lua_setfield(L, -2, "cpu_vendor");
  lua_pushstring(L, feats);
  lua_setfield(L, -2, "cpu_features");
  lua_pushstring(L, st.chosen_by == MOE_BLAS_BY_USER ? "user" : st.chosen_by == MOE_BLAS_BY_MOELUA ? "moelua" : "blas");
  lua_setfield(L, -2, "chosen_by");
  lua_pushstring(L, st.reason);
  lua_setfield(L, -2, "reason");
  return 1;
}

/* sgemm_info() -> {mode, library, description, libraries = {{name, available, why}...},
 *   shapes = {{m, n, k, ta, tb, library, gflops = {OpenBLAS = ...}}...}}: the
 *   float32 GEMM libraries, the process's choice (nil until made) and the shape
 *   classes timed for it (sgemm_lib.c) */
static int l_sgemm_info(lua_State *L) {
  moe_sgemm_status st;
  moe_sgemm_status_get(&st);
  char desc[1200];
  moe_sgemm_describe(desc, sizeof desc, 0);
  lua_newtable(L);
  lua_pushstring(L, st.mode < 0 ? "auto" : moe_sgemm_lib_name(st.mode));
  lua_setfield(L, -2, "mode");
  lua_pushstring(L, desc);
  lua_setfield(L, -2, "description");
  if (st.library >= 0) {
    lua_pushstring(L, moe_sgemm_lib_name(st.library));
    lua_setfield(L, -2, "library");
  }
  lua_newtable(L);
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++) {
    lua_newtable(L);
    lua_pushstring(L, moe_sgemm_lib_name(l));
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, st.available[l]);
    lua_setfield(L, -2, "available");
    if (!st.available[l]) {
      lua_pushstring(L, st.why[l]);
      lua_setfield(L, -2, "why");
    }
    lua_rawseti(L, -2, l + 1);
  }
  lua_setfield(L, -2, "libraries");
  lua_newtable(L);
  for (int i = 0; i < st.n_records; i++) {
    const moe_sgemm_record *r = &st.records[i];
    lua_newtable(L);
    lua_pushinteger(L, (lua_Integer)r->M);
    lua_setfield(L, -2, "m");
    lua_pushinteger(L, (lua_Integer)r->N);
    lua_setfield(L, -2, "n");
    lua_pushinteger(L, (lua_Integer)r->K);
    lua_setfield(L, -2, "k");
    lua_pushboolean(L, r->ta);
    lua_setfield(L, -2, "ta");
    lua_pushboolean(L, r->tb);
    lua_setfield(L, -2, "tb");
    lua_pushstring(L, moe_sgemm_lib_name(r->lib));
    lua_setfield(L, -2, "library");
    lua_newtable(L);
    for (int l = 0; l < MOE_SGEMM_NLIBS; l++)
      if (r->gflops[l] > 0) {
        lua_pushnumber(L, r->gflops[l]);
        lua_setfield(L, -2, moe_sgemm_lib_name(l));
      }
    lua_setfield(L, -2, "gflops");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "shapes");
  return 1;
}

/* sgemm_forget(): the library is chosen again, on the next shape classes */
static int l_sgemm_forget(lua_State *L) {
  (void)L;
  moe_sgemm_forget();
  return 0;
}

/* a list of cpuid feature names at idx as the bits of moe_cpu_feature_bit */
static unsigned feature_list(lua_State *L, int idx, const char *fn) {
  luaL_checktype(L, idx, LUA_TTABLE);
  unsigned features = 0;
  int n = (int)lua_objlen(L, idx);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    const char *f = lua_tostring(L, -1);
    unsigned bit = f ? moe_cpu_feature_bit(f) : 0;
    if (!bit) luaL_error(L, "%s: unknown CPU feature %s", fn, f ? f : luaL_typename(L, -1));
    features |= bit;
    lua_pop(L, 1);
  }
  return features;
}

/* blas_choose(vendor, {features...}, blas_kernels[, user]) -> kernel set to force or nil, why
 * (the pure decision the host applies, for the specs) */
static int l_blas_choose(lua_State *L) {
  moe_cpu_info c = {0, 0};
  c.vendor = luaL_checkoption(L, 1, NULL, cpu_vendors);
  c.features = feature_list(L, 2, "blas_choose");
  const char *core = luaL_checkstring(L, 3);
  const char *user = lua_isnoneornil(L, 4) ? NULL : luaL_checkstring(L, 4);
  const char *why;
  const char *pick = moe_blas_choose(&c, core, user, &why);
  if (pick) lua_pushstring(L, pick);
  else lua_pushnil(L);
  lua_pushstring(L, why);
  return 2;
}

/* blas_next_lower(vendor, kernels, floor_kernels) -> the next kernel set to try, or nil */
static int l_blas_next_lower(lua_State *L) {
  moe_cpu_info c = {0, 0};
  c.vendor = luaL_checkoption(L, 1, NULL, cpu_vendors);
  const char *next = moe_blas_next_lower(&c, luaL_checkstring(L, 2), moe_blas_core_rank(luaL_checkstring(L, 3)));
  if (next) lua_pushstring(L, next);
  else lua_pushnil(L);
  return 1;
}

/* bf16_info() -> {backend, library, reason, cpu_bf16}: what runs the bf16 GEMMs and why
 * (chosen once per process, on the first call or the first bf16 GEMM) */
static int l_bf16_info(lua_State *L) {
  moe_bf16_status st;
  moe_bf16_status_get(&st);
  lua_newtable(L);
  lua_pushstring(L, moe_bf16_backend_name(st.backend));
  lua_setfield(L, -2, "backend");
  lua_pushstring(L, st.library);
  lua_setfield(L, -2, "library");
  lua_pushstring(L, st.reason);
  lua_setfield(L, -2, "reason");
  lua_pushboolean(L, st.cpu_bf16);
  lua_setfield(L, -2, "cpu_bf16");
  return 1;
}

/* bf16_choose({features...}[, MOELUA_BF16]) -> the backend to try, why (the pure decision, for the specs) */
static int l_bf16_choose(lua_State *L) {
  unsigned features = feature_list(L, 1, "bf16_choose");
  const char *env = lua_isnoneornil(L, 2) ? NULL : luaL_checkstring(L, 2);
  const char *why;
  lua_pushstring(L, moe_bf16_backend_name(moe_bf16_choose(features, env, &why)));
  lua_pushstring(L, why);
  return 2;
}

/* empty_cache() -> bytes handed back: frees the blocks kept for reuse */
static int l_empty_cache(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moe_empty_cache());
  return 1;
}

/* peak_bytes([reset]) -> the most tensor bytes live at once since the last reset */
static int l_peak_bytes(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moe_peak_bytes(lua_toboolean(L, 1)));
  return 1;
}

static int l_live(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moe_live_tensors());
  lua_pushnumber(L, (lua_Number)moe_live_bytes());
  return 2;
}

/* cuda_syncs() -> drains, waits: the host's waits for the device so far
 * (src/cuda/runtime.cu: a drain waited for every queued kernel) */
static int l_cuda_syncs(lua_State *L) {
  uint64_t d = 0, w = 0;
  moe_cuda_sync_counts(&d, &w);
  lua_pushnumber(L, (lua_Number)d);
  lua_pushnumber(L, (lua_Number)w);
  return 2;
}

/* cuda_sync_debug(on): with on, every drain prints what it was and the Lua
 * stack that caused it to stderr (moe.cuda.set_sync_debug("warn")) */
static void sync_warn(const char *what) {
  lua_State *L = moe_l_L;
  if (!L) return;
  luaL_traceback(L, L, NULL, 0);
  fprintf(stderr, "moelua: the host waited for the device (%s)\n%s\n", what, lua_tostring(L, -1));
  lua_pop(L, 1);
}
static int l_cuda_sync_debug(lua_State *L) {
  moe_cuda_set_sync_hook(lua_toboolean(L, 1) ? sync_warn : NULL);
  return 0;
}

/* to_device_async(t) -> t on the device: t is a contiguous pinned host tensor;
 * the copy runs on the copy stream, and later kernels wait for it */
static int l_to_device_async(lua_State *L) {
  return moe_lua_push(L, moe_to_device_async(moe_l_check_tensor_any(L, 1, "to_device_async")));
}

/* read_later(t) -> r: the one value of t, read without waiting for the
 * device now: r:ready() says whether it has arrived, r:get() waits for it
 * (a wait on the copy's event, not a drain) and returns it. A host tensor's
 * value is there at once. */
#define LATER_MT "moe.read_later"
typedef struct {
  moe_cuda_read *r;
  moe_dtype dt;
  double v;
  int done;
} later_box;
static int l_later_gc(lua_State *L) {
  later_box *b = luaL_checkudata(L, 1, LATER_MT);
  moe_cuda_read_free(b->r);
  b->r = NULL;
  return 0;
}
static int l_later_ready(lua_State *L) {
  later_box *b = luaL_checkudata(L, 1, LATER_MT);
  lua_pushboolean(L, b->done || moe_cuda_read_ready(b->r));
  return 1;
}
static int l_later_get(lua_State *L) {
  later_box *b = luaL_checkudata(L, 1, LATER_MT);
  if (!b->done) {
    const void *p = moe_cuda_read_wait(b->r);
    if (!p) return luaL_error(L, "read_later: the device's copy failed");
    b->v = moe_value_of(p, b->dt);
    b->done = 1;
    moe_cuda_read_free(b->r);
    b->r = NULL;
  }
  if (b->dt == MOE_BOOL) lua_pushboolean(L, b->v != 0);
  else lua_pushnumber(L, b->v);
  return 1;
}
static int l_read_later(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "read_later");
  char sh[160];
  if (moe_numel(t) != 1)
    return luaL_error(L, "read_later: tensor of shape %s has %d elements, read_later needs exactly one",
                      moe_shape_str(t, sh), (int)moe_numel(t));
  later_box *b = lua_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  b->dt = t->dtype;
  if (luaL_newmetatable(L, LATER_MT)) {
    lua_newtable(L);
    lua_pushcfunction(L, l_later_get);
    lua_setfield(L, -2, "get");
    lua_pushcfunction(L, l_later_ready);
    lua_setfield(L, -2, "ready");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_later_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  if (t->device == MOE_CPU) {
    int64_t idx[MOE_MAX_DIMS] = {0};
    b->v = moe_get(t, idx);
    b->done = 1;
  } else if (!(b->r = moe_cuda_read_start(moe_data(t), moe_dtype_size(t->dtype)))) {
    return luaL_error(L, "read_later: %s", moe_cuda_last_error());
  }
  return 1;
}

const luaL_Reg moe_l_sys_funcs[] = {{"cuda_syncs", l_cuda_syncs},
                                    {"cuda_sync_debug", l_cuda_sync_debug},
                                    {"to_device_async", l_to_device_async},
                                    {"read_later", l_read_later},
                                    {"blas_info", l_blas_info},
                                    {"sgemm_info", l_sgemm_info},
                                    {"sgemm_forget", l_sgemm_forget},
                                    {"blas_choose", l_blas_choose},
                                    {"blas_next_lower", l_blas_next_lower},
                                    {"bf16_info", l_bf16_info},
                                    {"bf16_choose", l_bf16_choose},
                                    {"live", l_live},
                                    {"peak_bytes", l_peak_bytes},
                                    {"empty_cache", l_empty_cache},
                                    {"cuda_info", l_cuda_info},
                                    {"backend_kernels", l_backend_kernels},
                                    {"op_names", l_op_names},
                                    {"cuda_empty_cache", l_cuda_empty_cache},
                                    {"cuda_precision", l_cuda_precision},
                                    {"defer_interrupts", l_defer_interrupts},
                                    {"take_interrupt", l_take_interrupt},
#ifdef MOE_CUDA_EMU_BUILD
                                    {"emu_probe", l_emu_probe},
#endif
                                    {NULL, NULL}};
