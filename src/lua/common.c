/* common.c -- what every file of the binding uses (declared in binding_impl.h):
 * errors that name the user's call, the tensor boxes and the GC nudge, the
 * device of an op, and the argument helpers. Every argument is checked before
 * anything is allocated, so raising an error never leaks. */
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>

#include "binding_impl.h"
#include "../core/device.h"
#include "../cpu/bf16.h"

/* ---------------------------------------------------------------- errors (see binding_impl.h) */
const char *moe_l_cur_op = "moe";
char moe_l_lib_dir[1024]; /* the library's directory as its chunks name it ("lua/moe/") */

static void push_user_where(lua_State *L) {
  lua_Debug ar;
  size_t nlib = strlen(moe_l_lib_dir);
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar)) break;
    if (ar.currentline <= 0) continue;                                                         /* a C function */
    if (ar.source[0] == '@' && nlib && !strncmp(ar.source + 1, moe_l_lib_dir, nlib)) continue; /* the library */
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    return;
  }
  lua_pushliteral(L, "");
}

int moe_l_errorf(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_user_where(L);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

static int arg_error(lua_State *L, int i, const char *expected) {
  return luaL_error(L, "%s: argument #%d must be %s, got %s", moe_l_cur_op, i, expected, moe_l_type_of(L, i));
}
lua_Number moe_l_chk_number(lua_State *L, int i) {
  if (!lua_isnumber(L, i)) arg_error(L, i, "a number");
  return lua_tonumber(L, i);
}
/* strings only: a number is not silently turned into a string (a path "1") */
const char *moe_l_chk_lstring(lua_State *L, int i, size_t *len) {
  if (lua_type(L, i) != LUA_TSTRING) arg_error(L, i, "a string");
  return lua_tolstring(L, i, len);
}
void moe_l_chk_type(lua_State *L, int i, int t) {
  if (lua_type(L, i) != t) arg_error(L, i, t == LUA_TTABLE ? "a table" : lua_typename(L, t));
}
int moe_l_chk_option(lua_State *L, int i, const char *def, const char *const lst[]) {
  const char *name = def && lua_isnoneornil(L, i) ? def : moe_l_chk_lstring(L, i, NULL);
  for (int k = 0; lst[k]; k++)
    if (!strcmp(lst[k], name)) return k;
  char known[256] = "";
  for (int k = 0; lst[k]; k++) {
    if (k) strncat(known, ", ", sizeof known - strlen(known) - 1);
    strncat(known, lst[k], sizeof known - strlen(known) - 1);
  }
  return luaL_error(L, "%s: argument #%d: unknown value '%s' (one of: %s)", moe_l_cur_op, i, name, known);
}

volatile sig_atomic_t moe_lua_interrupted = 0;
volatile sig_atomic_t moe_lua_defer = 0, moe_lua_deferred = 0;
/* Lua sees only the small boxes, not the tensor bytes behind them, so the
 * binding runs a full collection whenever tensor memory has grown by
 * `gc_step` since the last one. The cost of a collection scales with the Lua
 * heap, so the step is 4x the Lua heap (at least 4 MiB): dead outputs are freed
 * while their memory is still warm, at an amortised cost of a few percent. */
static int64_t gc_baseline = 0, gc_step = 4 << 20;
/* Device memory counts too, with its own step: 1/32 of the device's memory
 * (64 MiB on the emulator's 2 GiB), so that a loop of dead device temporaries
 * is collected long before the device fills. A cudaMalloc that fails anyway
 * runs a full collection first (moe_l_oom_collect). */
static int64_t gc_dev_baseline = 0, gc_dev_step = 0;
lua_State *moe_l_L;

static int64_t dev_live(void) {
  size_t live = 0, peak = 0, cached = 0;
  moe_cuda_memory_stats(&live, &peak, &cached);
  return (int64_t)live;
}

/* ---------------------------------------------------------------- boxes */

int moe_l_mt_ref = LUA_NOREF; /* the tensor metatable, in the registry */
const void *moe_l_mt_ptr;     /* ... and its address, for a fast identity check */

static void push_mt(lua_State *L) { lua_rawgeti(L, LUA_REGISTRYINDEX, moe_l_mt_ref); }

moe_tensor *moe_lua_totensor(lua_State *L, int idx) {
  box *b = lua_touserdata(L, idx);
  if (!b || lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return NULL;
  int same = lua_topointer(L, -1) == moe_l_mt_ptr;
  lua_pop(L, 1);
  return same ? b->t : NULL;
}

const char *moe_l_type_of(lua_State *L, int idx) { return moe_lua_totensor(L, idx) ? "tensor" : luaL_typename(L, idx); }

/* any tensor, on any device: for what reads only its metadata, or moves it */
moe_tensor *moe_l_check_tensor_any(lua_State *L, int idx, const char *op) {
  moe_tensor *t = moe_lua_totensor(L, idx);
  if (!t) luaL_error(L, "%s: argument #%d must be a tensor, got %s", op, idx, moe_l_type_of(L, idx));
  return t;
}

/* ---- the device of an op
 * Every function of this module runs through `tramp` (binding.c), which resets
 * moe_l_op_dev before the call. The first tensor argument fixes the op's device (the
 * engine puts the op's outputs on its inputs' device); a later argument on
 * another device is an error. After the call, a CUDA kernel's
 * failure is raised, named by its op. */
int moe_l_op_dev = -1;

const char *moe_l_dev_name(int d) { return d == MOE_CUDA ? "cuda" : "cpu"; }

/* t joins the op: the first tensor fixes the op's device; 0 if t is on it. A
 * 0-dim host tensor joins any device (the engine's rule for scalars, moe.h);
 * an op that cannot take one says so itself. */
int moe_l_join_device(const moe_tensor *t) {
  if (t->ndim == 0 && t->device == MOE_CPU) return 0;
  if (moe_l_op_dev < 0) moe_l_op_dev = t->device;
  return (int)t->device == moe_l_op_dev ? 0 : -1;
}

/* a tensor argument of an op that runs on any device */
moe_tensor *moe_l_check_tensor(lua_State *L, int idx, const char *op) {
  moe_tensor *t = moe_l_check_tensor_any(L, idx, op);
  if (moe_l_join_device(t))
    luaL_error(L,
               "%s: argument #%d is on %s while an earlier tensor argument is on %s; "
               "move one of them with :cuda() or :cpu()",
               op, idx, moe_l_dev_name(t->device), moe_l_dev_name(moe_l_op_dev));
  return t;
}

/* an optional tensor argument (NULL if the value is not a tensor), device-checked */
moe_tensor *moe_l_opt_tensor(lua_State *L, int idx, const char *op) {
  return moe_lua_totensor(L, idx) ? moe_l_check_tensor(L, idx, op) : NULL;
}

/* a tensor argument of an op with no CUDA kernel */
moe_tensor *moe_l_check_host(lua_State *L, int idx, const char *op) {
  moe_tensor *t = moe_l_check_tensor_any(L, idx, op);
  if (t->device != MOE_CPU)
    luaL_error(L,
               "%s: argument #%d is a CUDA tensor, and this op has no CUDA kernel yet; "
               "bring it back with t:cpu()",
               op, idx);
  return t;
}

/* a host copy of t for reading its values (t itself, retained, on the CPU) */
moe_tensor *moe_l_host_values(lua_State *L, moe_tensor *t) {
  int prev = moe_set_grad_enabled(0); /* values only: not recorded by autograd */
  moe_tensor *h = moe_to_device(t, MOE_CPU);
  moe_set_grad_enabled(prev);
  if (!h) luaL_error(L, "%s", moe_last_error());
  return h;
}

int moe_l_raise_engine(lua_State *L) { return luaL_error(L, "%s", moe_last_error()); }

static void gc_nudge(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
  gc_baseline = moe_live_bytes();
  gc_dev_baseline = dev_live();
  int64_t heap = (int64_t)lua_gc(L, LUA_GCCOUNT, 0) << 10;
  gc_step = 4 * heap > (4 << 20) ? 4 * heap : (4 << 20);
}

void moe_l_box_tensor(lua_State *L, moe_tensor *t) {
  box *b = lua_newuserdata(L, sizeof *b);
  b->t = t;
  push_mt(L);
  lua_setmetatable(L, -2);
}

/* After new tensors are boxed (owned by the GC): a pending Ctrl-C, and the GC nudge. */
void moe_l_after_push(lua_State *L) {
  if (moe_lua_interrupted) {
    moe_lua_interrupted = 0;
    lua_sethook(L, NULL, 0, 0); /* the host's stop hook is no longer needed */
    luaL_error(L, "interrupted");
  }
  int64_t live = moe_live_bytes(), dev = dev_live();
  if (dev && !gc_dev_step) {
    size_t fr = 0, tot = 0;
    gc_dev_step = moe_cuda_mem_info(&fr, &tot) == 0 && tot ? (int64_t)(tot / 32) : (int64_t)64 << 20;
  }
  if (live - gc_baseline > gc_step || (gc_dev_step && dev - gc_dev_baseline > gc_dev_step)) gc_nudge(L);
  else {
    if (live < gc_baseline) gc_baseline = live;
    if (dev < gc_dev_baseline) gc_dev_baseline = dev;
  }
}

/* a cudaMalloc failed: dead tensors' device blocks go back to the cache (the
 * allocator then empties it and retries) */
void moe_l_oom_collect(void) {
  if (!moe_l_L) return;
  lua_gc(moe_l_L, LUA_GCCOLLECT, 0);
  gc_baseline = moe_live_bytes();
  gc_dev_baseline = dev_live();
}

/* Takes ownership of t (a new reference). NULL means the engine failed. */
int moe_lua_push(lua_State *L, moe_tensor *t) {
  if (!t) return moe_l_raise_engine(L);
  moe_l_box_tensor(L, t);
  moe_l_after_push(L);
  return 1;
}

/* Two results (values, indices): both are boxed before anything can raise. */
int moe_l_push_pair(lua_State *L, int rc, moe_tensor *v, moe_tensor *i) {
  if (rc) return moe_l_raise_engine(L);
  moe_l_box_tensor(L, v);
  moe_l_box_tensor(L, i);
  moe_l_after_push(L);
  return 2;
}

int moe_l_t_gc(lua_State *L) {
  box *b = lua_touserdata(L, 1);
  if (b && b->t) {
    moe_tensor_release(b->t);
    b->t = NULL;
  }
  return 0;
}

/* ---------------------------------------------------------------- argument helpers */

int64_t moe_l_check_int(lua_State *L, int idx, const char *op, const char *what) {
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: %s must be an integer, got %s", op, what, moe_l_type_of(L, idx));
  double v = lua_tonumber(L, idx);
  if (v != floor(v)) luaL_error(L, "%s: %s must be an integer, got %g", op, what, v);
  if (fabs(v) > 9.0e15) luaL_error(L, "%s: %s is %g, beyond the integers moelua takes (|n| <= 9e15)", op, what, v);
  return (int64_t)v;
}

/* 1-based (negative: from the end) user dim -> 0-based; `extra` allows ndim+1 */
int moe_l_norm_dim(lua_State *L, moe_tensor *t, int64_t d, const char *op, int extra) {
  int nd = t->ndim + extra;
  int64_t z = d > 0 ? d - 1 : nd + d;
  if (d == 0 || z < 0 || z >= nd) {
    char b[160];
    luaL_error(L, "%s: dim %d out of range for tensor of shape %s (dims are 1..%d, or -1 for the last)", op, (int)d,
               moe_shape_str(t, b), nd);
  }
  return (int)z;
}

int moe_l_check_dim_arg(lua_State *L, int idx, moe_tensor *t, const char *op, int extra) {
  return moe_l_norm_dim(L, t, moe_l_check_int(L, idx, op, "dim"), op, extra);
}

int moe_l_opt_dim_arg(lua_State *L, int idx, moe_tensor *t, const char *op, int dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  return moe_l_check_dim_arg(L, idx, t, op, 0);
}

moe_device moe_l_default_device = MOE_CPU;

create_opts moe_l_parse_opts(lua_State *L, int idx, const char *op, moe_dtype dflt) {
  create_opts o = {dflt, 0, 0, moe_l_default_device, 0};
  if (lua_isnoneornil(L, idx)) return o;
  if (!lua_istable(L, idx)) luaL_error(L, "%s: options must be a table, got %s", op, moe_l_type_of(L, idx));
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    if (!strcmp(k, "dtype")) {
      const char *name = lua_tostring(L, -1);
      if (!name || moe_dtype_from_name(name, &o.dtype))
        luaL_error(L, "%s: unknown dtype '%s' (float32, float64, int32, int64, bool)", op,
                   name ? name : luaL_typename(L, -1));
      o.has_dtype = 1;
    } else if (!strcmp(k, "device")) {
      const char *dev = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
      if (dev && !strcmp(dev, "cpu")) o.device = MOE_CPU;
      else if (dev && !strcmp(dev, "cuda")) {
        if (!moe_device_available(MOE_CUDA))
          luaL_error(L, "%s: device 'cuda' is not available (%s)", op, moe_cuda_last_error());
        o.device = MOE_CUDA;
      } else {
        luaL_error(L, "%s: device must be \"cpu\" or \"cuda\", got %s", op, dev ? dev : luaL_typename(L, -1));
      }
      o.has_device = 1;
    } else if (!strcmp(k, "requires_grad")) {
      o.requires_grad = lua_toboolean(L, -1);
    } else {
      luaL_error(L, "%s: unknown option '%s' (dtype, device, requires_grad)", op, k);
    }
    lua_pop(L, 1);
  }
  return o;
}

/* ---------------------------------------------------------------- GEMM precision */

/* an optional GEMM precision argument: nil or "fp32", or "bf16" (moe.set_precision's names) */
moe_precision moe_l_opt_precision(lua_State *L, int i, const char *op) {
  static const char *const names[] = {"fp32", "bf16", NULL};
  if (lua_isnoneornil(L, i)) return MOE_PREC_FP32;
  moe_l_cur_op = op;
  moe_precision p = (moe_precision)moe_l_chk_option(L, i, NULL, names);
  if (p == MOE_PREC_BF16) moe_bf16_init(); /* the backend is chosen here, on the Lua thread */
  return p;
}
