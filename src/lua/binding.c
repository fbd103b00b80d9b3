/* binding.c -- the `moe.core` Lua module: the only library C that includes lua.h.
 *
 * A Lua tensor is a userdata box holding one reference to a moe_tensor,
 * released in __gc. This file turns Lua arguments into engine calls (1-based
 * dims and indices become 0-based; index tensors pass ibase = 1), turns an
 * engine failure into a Lua error carrying the engine's message, and nudges
 * the Lua GC when tensor memory grows, since Lua does not see those bytes.
 * Every argument is checked before anything is allocated, so raising an error
 * never leaks. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <limits.h>
#include <unistd.h>
#include <stdio.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "../core/moe.h"
#include "../core/device.h"
#include "../core/dispatch.h"
#include "binding.h"
#include "../train/optim.h"
#include "../data/safetensors.h"
#include "../data/csv.h"
#include "../train/metrics.h"
#include "../cpu/blas_select.h"
#include "../cpu/bf16.h"
#include "../cpu/sgemm_lib.h"

#define IBASE 1
#define MT_NAME "moe.Tensor"

/* ---------------------------------------------------------------- errors
 * Every error raised here carries the user's own file and line (the first Lua
 * frame outside the moe library, not the C function or a library wrapper) and
 * names the function the user called: `tramp` (below) keeps the name of the
 * running function in cur_op, and the argument checks use it instead of Lua's
 * "bad argument #1 to '?'". luaL_error and the luaL_check* helpers are
 * redefined below, so every check in this file goes through them. */
static const char *cur_op = "moe";
static char lib_dir[1024]; /* the library's directory as its chunks name it ("lua/moe/") */

static void push_user_where(lua_State *L) {
  lua_Debug ar;
  size_t nlib = strlen(lib_dir);
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar)) break;
    if (ar.currentline <= 0) continue; /* a C function */
    if (ar.source[0] == '@' && nlib && !strncmp(ar.source + 1, lib_dir, nlib)) continue; /* the library */
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    return;
  }
  lua_pushliteral(L, "");
}

static int moe_lua_errorf(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_user_where(L);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}
#define luaL_error moe_lua_errorf

static const char *type_of(lua_State *L, int idx);

static int arg_error(lua_State *L, int i, const char *expected) {
  return luaL_error(L, "%s: argument #%d must be %s, got %s", cur_op, i, expected, type_of(L, i));
}
static lua_Number chk_number(lua_State *L, int i) {
  if (!lua_isnumber(L, i)) arg_error(L, i, "a number");
  return lua_tonumber(L, i);
}
/* strings only: a number is not silently turned into a string (a path "1") */
static const char *chk_lstring(lua_State *L, int i, size_t *len) {
  if (lua_type(L, i) != LUA_TSTRING) arg_error(L, i, "a string");
  return lua_tolstring(L, i, len);
}
static void chk_type(lua_State *L, int i, int t) {
  if (lua_type(L, i) != t) arg_error(L, i, t == LUA_TTABLE ? "a table" : lua_typename(L, t));
}
static int chk_option(lua_State *L, int i, const char *def, const char *const lst[]) {
  const char *name = def && lua_isnoneornil(L, i) ? def : chk_lstring(L, i, NULL);
  for (int k = 0; lst[k]; k++)
    if (!strcmp(lst[k], name)) return k;
  char known[256] = "";
  for (int k = 0; lst[k]; k++) {
    if (k) strncat(known, ", ", sizeof known - strlen(known) - 1);
    strncat(known, lst[k], sizeof known - strlen(known) - 1);
  }
  return luaL_error(L, "%s: argument #%d: unknown value '%s' (one of: %s)", cur_op, i, name, known);
}
#define luaL_checknumber(L, i) chk_number(L, i)
#undef luaL_checkstring
#define luaL_checkstring(L, i) chk_lstring(L, i, NULL)
#define luaL_checklstring(L, i, n) chk_lstring(L, i, n)
#define luaL_checktype(L, i, t) chk_type(L, i, t)
#define luaL_checkoption(L, i, d, l) chk_option(L, i, d, l)

typedef struct { moe_tensor *t; } box;

volatile sig_atomic_t moe_lua_interrupted = 0;
volatile sig_atomic_t moe_lua_defer = 0, moe_lua_deferred = 0;
/* Lua sees only the small boxes, not the tensor bytes behind them, so the
 * binding runs a full collection whenever tensor memory has grown by
 * `gc_step` since the last one. The cost of a collection scales with the Lua
 * heap, so the step is 4x the Lua heap (at least 4 MiB): dead outputs are freed
 * while their memory is still warm, at an amortised cost of a few percent. */
static int64_t gc_baseline = 0, gc_step = 4 << 20;

/* ---------------------------------------------------------------- boxes */

static int mt_ref = LUA_NOREF;  /* the tensor metatable, in the registry */
static const void *mt_ptr;      /* ... and its address, for a fast identity check */

static void push_mt(lua_State *L) { lua_rawgeti(L, LUA_REGISTRYINDEX, mt_ref); }

moe_tensor *moe_lua_totensor(lua_State *L, int idx) {
  box *b = lua_touserdata(L, idx);
  if (!b || lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return NULL;
  int same = lua_topointer(L, -1) == mt_ptr;
  lua_pop(L, 1);
  return same ? b->t : NULL;
}

static const char *type_of(lua_State *L, int idx) {
  return moe_lua_totensor(L, idx) ? "tensor" : luaL_typename(L, idx);
}

/* any tensor, on any device: for what reads only its metadata, or moves it */
static moe_tensor *check_tensor_any(lua_State *L, int idx, const char *op) {
  moe_tensor *t = moe_lua_totensor(L, idx);
  if (!t) luaL_error(L, "%s: argument #%d must be a tensor, got %s", op, idx, type_of(L, idx));
  return t;
}

/* ---- the device of an op
 * Every function of this module runs through `tramp` (below), which resets
 * op_dev before the call. The first tensor argument fixes the op's device (the
 * engine puts the op's outputs on its inputs' device); a later argument on
 * another device is an error. After the call, a CUDA kernel's
 * failure is raised, named by its op. */
static int op_dev = -1;

static const char *dev_name(int d) { return d == MOE_CUDA ? "cuda" : "cpu"; }

/* t joins the op: the first tensor fixes the op's device; 0 if t is on it */
static int join_device(const moe_tensor *t) {
  if (op_dev < 0) op_dev = t->device;
  return (int)t->device == op_dev ? 0 : -1;
}

/* a tensor argument of an op that runs on any device */
static moe_tensor *check_tensor(lua_State *L, int idx, const char *op) {
  moe_tensor *t = check_tensor_any(L, idx, op);
  if (join_device(t))
    luaL_error(L, "%s: argument #%d is on %s while an earlier tensor argument is on %s; "
               "move one of them with :cuda() or :cpu()", op, idx, dev_name(t->device), dev_name(op_dev));
  return t;
}

/* an optional tensor argument (NULL if the value is not a tensor), device-checked */
static moe_tensor *opt_tensor(lua_State *L, int idx, const char *op) {
  return moe_lua_totensor(L, idx) ? check_tensor(L, idx, op) : NULL;
}

/* a tensor argument of an op with no CUDA kernel */
static moe_tensor *check_host(lua_State *L, int idx, const char *op) {
  moe_tensor *t = check_tensor_any(L, idx, op);
  if (t->device != MOE_CPU)
    luaL_error(L, "%s: argument #%d is a CUDA tensor, and this op has no CUDA kernel yet; "
               "bring it back with t:cpu()", op, idx);
  return t;
}

/* a host copy of t for reading its values (t itself, retained, on the CPU) */
static moe_tensor *host_values(lua_State *L, moe_tensor *t) {
  moe_tensor *h = moe_to_device(t, MOE_CPU);
  if (!h) luaL_error(L, "%s", moe_last_error());
  return h;
}

static int raise_engine(lua_State *L) { return luaL_error(L, "%s", moe_last_error()); }

static void gc_nudge(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
  gc_baseline = moe_live_bytes();
  int64_t heap = (int64_t)lua_gc(L, LUA_GCCOUNT, 0) << 10;
  gc_step = 4 * heap > (4 << 20) ? 4 * heap : (4 << 20);
}

static void box_tensor(lua_State *L, moe_tensor *t) {
  box *b = lua_newuserdata(L, sizeof *b);
  b->t = t;
  push_mt(L);
  lua_setmetatable(L, -2);
}

/* After new tensors are boxed (owned by the GC): a pending Ctrl-C, and the GC nudge. */
static void after_push(lua_State *L) {
  if (moe_lua_interrupted) {
    moe_lua_interrupted = 0;
    lua_sethook(L, NULL, 0, 0); /* the host's stop hook is no longer needed */
    luaL_error(L, "interrupted");
  }
  int64_t live = moe_live_bytes();
  if (live - gc_baseline > gc_step) gc_nudge(L);
  else if (live < gc_baseline) gc_baseline = live;
}

/* Takes ownership of t (a new reference). NULL means the engine failed. */
int moe_lua_push(lua_State *L, moe_tensor *t) {
  if (!t) return raise_engine(L);
  box_tensor(L, t);
  after_push(L);
  return 1;
}

/* Two results (values, indices): both are boxed before anything can raise. */
static int push_pair(lua_State *L, int rc, moe_tensor *v, moe_tensor *i) {
  if (rc) return raise_engine(L);
  box_tensor(L, v);
  box_tensor(L, i);
  after_push(L);
  return 2;
}

static int t_gc(lua_State *L) {
  box *b = lua_touserdata(L, 1);
  if (b && b->t) { moe_tensor_release(b->t); b->t = NULL; }
  return 0;
}

/* ---------------------------------------------------------------- argument helpers */

static int64_t check_int(lua_State *L, int idx, const char *op, const char *what) {
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: %s must be an integer, got %s", op, what, type_of(L, idx));
  double v = lua_tonumber(L, idx);
  if (v != floor(v)) luaL_error(L, "%s: %s must be an integer, got %g", op, what, v);
  if (fabs(v) > 9.0e15) luaL_error(L, "%s: %s is %g, beyond the integers moelua takes (|n| <= 9e15)", op, what, v);
  return (int64_t)v;
}

/* 1-based (negative: from the end) user dim -> 0-based; `extra` allows ndim+1 */
static int norm_dim(lua_State *L, moe_tensor *t, int64_t d, const char *op, int extra) {
  int nd = t->ndim + extra;
  int64_t z = d > 0 ? d - 1 : nd + d;
  if (d == 0 || z < 0 || z >= nd) {
    char b[160];
    luaL_error(L, "%s: dim %d out of range for tensor of shape %s (dims are 1..%d, or -1 for the last)",
               op, (int)d, moe_shape_str(t, b), nd);
  }
  return (int)z;
}

static int check_dim_arg(lua_State *L, int idx, moe_tensor *t, const char *op, int extra) {
  return norm_dim(L, t, check_int(L, idx, op, "dim"), op, extra);
}

static int opt_dim_arg(lua_State *L, int idx, moe_tensor *t, const char *op, int dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  return check_dim_arg(L, idx, t, op, 0);
}

/* sizes as varargs from `start` or as one table; returns the index after them */
static int parse_sizes(lua_State *L, int start, const char *op, int *ndim, int64_t *shape) {
  int n = 0, top = lua_gettop(L), i = start;
  if (lua_istable(L, start) && !moe_lua_totensor(L, start)) {
    lua_rawgeti(L, start, 1);
    int is_sizes = !lua_isnil(L, -1) || lua_objlen(L, start) == 0;
    lua_pop(L, 1);
    if (is_sizes) {
      /* an empty table with string keys is an options table, not sizes */
      lua_pushnil(L);
      if (lua_objlen(L, start) == 0 && lua_next(L, start)) { lua_pop(L, 2); return start; }
      n = (int)lua_objlen(L, start);
      if (n > MOE_MAX_DIMS) luaL_error(L, "%s: %d sizes given, at most %d dims", op, n, MOE_MAX_DIMS);
      for (int k = 1; k <= n; k++) {
        lua_rawgeti(L, start, k);
        if (lua_type(L, -1) != LUA_TNUMBER)
          luaL_error(L, "%s: size %d must be a number, got %s", op, k, luaL_typename(L, -1));
        double v = lua_tonumber(L, -1);
        if (v != floor(v)) luaL_error(L, "%s: size %d must be an integer, got %g", op, k, v);
        if (v < 0) luaL_error(L, "%s: negative size %g at position %d", op, v, k);
        if (v > 9.0e15) luaL_error(L, "%s: size %g at position %d is too large", op, v, k);
        shape[k - 1] = (int64_t)v;
        lua_pop(L, 1);
      }
      *ndim = n;
      return start + 1;
    }
    *ndim = 0;
    return start;
  }
  for (; i <= top && lua_type(L, i) == LUA_TNUMBER; i++) {
    if (n >= MOE_MAX_DIMS) luaL_error(L, "%s: more than %d sizes given", op, MOE_MAX_DIMS);
    double v = lua_tonumber(L, i);
    if (v != floor(v)) luaL_error(L, "%s: size %d must be an integer, got %g", op, n + 1, v);
    if (v < 0) luaL_error(L, "%s: negative size %g at position %d", op, v, n + 1);
    if (v > 9.0e15) luaL_error(L, "%s: size %g at position %d is too large", op, v, n + 1);
    shape[n++] = (int64_t)v;
  }
  *ndim = n;
  return i;
}

/* view/reshape/expand sizes: like parse_sizes but -1 is allowed */
static int parse_view_sizes(lua_State *L, int start, const char *op, int *ndim, int64_t *shape) {
  int n = 0, top = lua_gettop(L);
  if (lua_istable(L, start)) {
    n = (int)lua_objlen(L, start);
    if (n > MOE_MAX_DIMS) luaL_error(L, "%s: %d sizes given, at most %d dims", op, n, MOE_MAX_DIMS);
    for (int k = 1; k <= n; k++) {
      lua_rawgeti(L, start, k);
      shape[k - 1] = check_int(L, -1, op, "size");
      lua_pop(L, 1);
    }
  } else {
    for (int i = start; i <= top; i++) {
      if (n >= MOE_MAX_DIMS) luaL_error(L, "%s: more than %d sizes given", op, MOE_MAX_DIMS);
      shape[n++] = check_int(L, i, op, "size");
    }
  }
  *ndim = n;
  return 0;
}

typedef struct { moe_dtype dtype; int has_dtype; int requires_grad; } create_opts;

static create_opts parse_opts(lua_State *L, int idx, const char *op, moe_dtype dflt) {
  create_opts o = {dflt, 0, 0};
  if (lua_isnoneornil(L, idx)) return o;
  if (!lua_istable(L, idx)) luaL_error(L, "%s: options must be a table, got %s", op, type_of(L, idx));
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
      const char *dev = lua_tostring(L, -1);
      if (!dev || strcmp(dev, "cpu"))
        luaL_error(L, "%s: device '%s' is not available (this build has: cpu)", op, dev ? dev : "?");
    } else if (!strcmp(k, "requires_grad")) {
      o.requires_grad = lua_toboolean(L, -1);
    } else {
      luaL_error(L, "%s: unknown option '%s' (dtype, device, requires_grad)", op, k);
    }
    lua_pop(L, 1);
  }
  return o;
}

/* ---------------------------------------------------------------- creation */

/* push a freshly created tensor, a leaf that requires grad when asked to */
static int push_created(lua_State *L, moe_tensor *t, const create_opts *o, const char *op) {
  if (t && o->requires_grad) {
    if (!moe_dtype_is_float(t->dtype)) {
      const char *dn = moe_dtype_name(t->dtype);
      moe_tensor_release(t);
      return luaL_error(L, "%s: only float tensors can require grad, got dtype %s", op, dn);
    }
    t->requires_grad = 1;
  }
  return moe_lua_push(L, t);
}

/* a Lua number stored into an integer dtype must fit it (a cast of a tensor
 * saturates, as documented; a value the user wrote is not changed silently) */
/* [lo, hi) of an integer dtype; 0 for the others (whose values are not range-checked) */
static int int_range(moe_dtype dt, double *lo, double *hi) {
  if (dt == MOE_I32) { *lo = -2147483648.0; *hi = 2147483648.0; return 1; }
  if (dt == MOE_I64) { *lo = -9223372036854775808.0; *hi = 9223372036854775808.0; return 1; }
  return 0;
}

static const char *number_str(double v, char *buf, size_t n) {
  snprintf(buf, n, v != v ? "nan" : "%.17g", v);
  return buf;
}

static void check_value_fits(lua_State *L, const char *op, double v, moe_dtype dt) {
  double lo, hi;
  char num[48];
  if (int_range(dt, &lo, &hi) && !(v >= lo && v < hi))
    luaL_error(L, "%s: the value %s does not fit dtype %s (integers in [%.0f, %.0f])", op,
               number_str(v, num, sizeof num), moe_dtype_name(dt), lo, hi - 1);
}

static int l_full_impl(lua_State *L, const char *op, double value, int has_value_arg) {
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int next;
  if (has_value_arg && !lua_istable(L, 1)) {
    /* full(d1, ..., dn, value [, opts]): the last number is the fill value */
    int n = 0;
    while (lua_type(L, n + 1) == LUA_TNUMBER) n++;
    if (n < 1) luaL_error(L, "%s: expected sizes and a fill value", op);
    value = lua_tonumber(L, n);
    lua_pushnil(L);
    lua_replace(L, n); /* sizes stop before the value */
    next = parse_sizes(L, 1, op, &ndim, shape);
    next = n + 1;
  } else {
    next = parse_sizes(L, 1, op, &ndim, shape);
    if (has_value_arg) {
      if (lua_type(L, next) == LUA_TBOOLEAN) value = lua_toboolean(L, next);
      else value = luaL_checknumber(L, next);
      next++;
    }
  }
  create_opts o = parse_opts(L, next, op, MOE_F32);
  check_value_fits(L, op, value, o.dtype);
  return push_created(L, moe_full(ndim, shape, o.dtype, value), &o, op);
}
static int l_zeros(lua_State *L) { return l_full_impl(L, "zeros", 0, 0); }
static int l_ones(lua_State *L) { return l_full_impl(L, "ones", 1, 0); }
static int l_full(lua_State *L) { return l_full_impl(L, "full", 0, 1); }
static int l_empty(lua_State *L) {
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int next = parse_sizes(L, 1, "empty", &ndim, shape);
  create_opts o = parse_opts(L, next, "empty", MOE_F32);
  return push_created(L, moe_empty(ndim, shape, o.dtype), &o, "empty");
}

static int l_rand_impl(lua_State *L, int normal) {
  const char *op = normal ? "randn" : "rand";
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int next = parse_sizes(L, 1, op, &ndim, shape);
  create_opts o = parse_opts(L, next, op, MOE_F32);
  if (!moe_dtype_is_float(o.dtype))
    luaL_error(L, "%s: dtype must be float32 or float64, got %s", op, moe_dtype_name(o.dtype));
  return push_created(L, normal ? moe_randn(ndim, shape, o.dtype, 0, 1) : moe_rand(ndim, shape, o.dtype, 0, 1), &o, op);
}
static int l_rand(lua_State *L) { return l_rand_impl(L, 0); }
static int l_randn(lua_State *L) { return l_rand_impl(L, 1); }

static int l_randint(lua_State *L) {
  int64_t lo = check_int(L, 1, "randint", "low"), hi = check_int(L, 2, "randint", "high");
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int next = parse_sizes(L, 3, "randint", &ndim, shape);
  create_opts o = parse_opts(L, next, "randint", MOE_I64);
  return push_created(L, moe_randint(lo, hi, ndim, shape, o.dtype), &o, "randint");
}

static int l_randperm(lua_State *L) {
  int64_t n = check_int(L, 1, "randperm", "n");
  create_opts o = parse_opts(L, 2, "randperm", MOE_I64);
  return push_created(L, moe_randperm(n, o.dtype, IBASE), &o, "randperm");
}

static int l_arange(lua_State *L) {
  int nnum = 0;
  while (lua_type(L, nnum + 1) == LUA_TNUMBER) nnum++;
  if (nnum < 1 || nnum > 3) luaL_error(L, "arange: expected (end), (start, end) or (start, end, step)");
  double a = lua_tonumber(L, 1), b = nnum > 1 ? lua_tonumber(L, 2) : 0, s = nnum > 2 ? lua_tonumber(L, 3) : 1;
  if (nnum == 1) { b = a; a = 0; }
  int all_int = a == floor(a) && b == floor(b) && s == floor(s);
  create_opts o = parse_opts(L, nnum + 1, "arange", all_int ? MOE_I64 : MOE_F32);
  return push_created(L, moe_arange(a, b, s, o.dtype), &o, "arange");
}

static int l_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  int64_t n = check_int(L, 3, "linspace", "steps");
  create_opts o = parse_opts(L, 4, "linspace", MOE_F32);
  return push_created(L, moe_linspace(a, b, n, o.dtype), &o, "linspace");
}

static int l_eye(lua_State *L) {
  int64_t n = check_int(L, 1, "eye", "n"), m = n;
  int next = 2;
  if (lua_type(L, 2) == LUA_TNUMBER) { m = check_int(L, 2, "eye", "m"); next = 3; }
  if (n < 0 || m < 0) luaL_error(L, "eye: negative size (%d, %d)", (int)n, (int)m);
  create_opts o = parse_opts(L, next, "eye", MOE_F32);
  return push_created(L, moe_eye(n, m, o.dtype), &o, "eye");
}

static int l_manual_seed(lua_State *L) {
  double v = luaL_checknumber(L, 1);
  if (!(v >= 0 && v < 18446744073709551616.0) || v != floor(v))
    luaL_error(L, "manual_seed: seed must be an integer in [0, 2^64), got %s", lua_tostring(L, 1));
  moe_manual_seed((uint64_t)v);
  return 0;
}

/* ---- from nested tables */

typedef struct { double *buf; int64_t n, cap; int ndim, saw_bool, saw_num; int64_t shape[MOE_MAX_DIMS]; } walk_state;

static void path_str(int depth, const int64_t *path, char *out) {
  int n = 0;
  for (int i = 0; i < depth; i++) n += sprintf(out + n, "[%lld]", (long long)path[i] + 1);
  if (!depth) strcpy(out, "(top)");
}

static void walk_table(lua_State *L, int idx, int depth, int64_t *path, walk_state *w) {
  char p[200];
  int64_t len = (int64_t)lua_objlen(L, idx);
  if (depth >= MOE_MAX_DIMS) luaL_error(L, "tensor: nested deeper than %d levels", MOE_MAX_DIMS);
  /* a nil inside the list ({1, nil, 3}) or a key that is not a list position
   * would be silently dropped: name it instead */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    double k = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
    if (!(k >= 1 && k <= (double)len && k == floor(k))) {
      path_str(depth, path, p);
      if (lua_type(L, -1) == LUA_TNUMBER && k == floor(k) && k > (double)len)
        luaL_error(L, "tensor: %s has a nil before entry [%.0f] (a hole in the list: use 0/0 for a missing value)",
                   p, k);
      if (lua_type(L, -1) == LUA_TNUMBER)
        luaL_error(L, "tensor: %s has the key [%s], which is not a list position (lists start at 1)", p,
                   lua_tostring(L, -1));
      luaL_error(L, "tensor: %s has the key %s, which is not a list position (options go in the second argument)",
                 p, lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
    }
  }
  if (depth >= w->ndim) { /* first visit at this depth fixes the size */
    w->ndim = depth + 1;
    w->shape[depth] = len;
  } else if (w->shape[depth] != len) {
    path_str(depth, path, p);
    luaL_error(L, "tensor: ragged nested table: %s has %d entries, expected %d", p, (int)len, (int)w->shape[depth]);
  }
  for (int64_t i = 1; i <= len; i++) {
    lua_rawgeti(L, idx, (int)i);
    path[depth] = i - 1;
    int ty = lua_type(L, -1);
    if (ty == LUA_TTABLE && !moe_lua_totensor(L, -1)) {
      if ((w->saw_num || w->saw_bool) && w->ndim <= depth + 1) {
        path_str(depth + 1, path, p);
        luaL_error(L, "tensor: ragged nested table: %s is a table where a number was expected", p);
      }
      walk_table(L, lua_gettop(L), depth + 1, path, w);
    } else if (ty == LUA_TNUMBER || ty == LUA_TBOOLEAN) {
      if (w->ndim != depth + 1) {
        path_str(depth + 1, path, p);
        luaL_error(L, "tensor: ragged nested table: %s is a number where a table was expected", p);
      }
      if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        double *nb = realloc(w->buf, sizeof(double) * (size_t)w->cap);
        if (!nb) luaL_error(L, "tensor: out of memory");
        w->buf = nb;
      }
      if (ty == LUA_TBOOLEAN) { w->saw_bool = 1; w->buf[w->n++] = lua_toboolean(L, -1); }
      else { w->saw_num = 1; w->buf[w->n++] = lua_tonumber(L, -1); }
    } else {
      path_str(depth + 1, path, p);
      luaL_error(L, "tensor: non-numeric entry at %s (a %s)", p, type_of(L, -1));
    }
    lua_pop(L, 1);
  }
}

static int walk_protected(lua_State *L) {
  walk_state *w = lua_touserdata(L, 2);
  int64_t path[MOE_MAX_DIMS] = {0};
  walk_table(L, 1, 0, path, w);
  return 0;
}

static int l_tensor(lua_State *L) {
  moe_tensor *src = moe_lua_totensor(L, 1);
  int ty = lua_type(L, 1);
  if (src) {
    create_opts o = parse_opts(L, 2, "tensor", src->dtype);
    moe_tensor *c = moe_to_dtype(src, o.dtype);
    if (c == src) { moe_tensor_release(c); c = moe_clone(src); }
    if (c && c->grad_fn) { moe_tensor *d = moe_detach(c); moe_tensor_release(c); c = d; } /* a copy is a new leaf */
    return push_created(L, c, &o, "tensor");
  }
  if (ty == LUA_TNUMBER || ty == LUA_TBOOLEAN) {
    create_opts o = parse_opts(L, 2, "tensor", ty == LUA_TBOOLEAN ? MOE_BOOL : MOE_F32);
    double v = ty == LUA_TBOOLEAN ? lua_toboolean(L, 1) : lua_tonumber(L, 1);
    check_value_fits(L, "tensor", v, o.dtype);
    return push_created(L, moe_from_doubles(0, NULL, o.dtype, &v), &o, "tensor");
  }
  if (ty != LUA_TTABLE) luaL_error(L, "tensor: expected a (nested) table, number or tensor, got %s", type_of(L, 1));
  create_opts o = parse_opts(L, 2, "tensor", MOE_F32); /* before anything is allocated */
  lua_settop(L, 2);
  /* walk under pcall so the buffer is freed on every error */
  walk_state w = {0};
  lua_pushcfunction(L, walk_protected);
  lua_pushvalue(L, 1);
  lua_pushlightuserdata(L, &w);
  if (lua_pcall(L, 2, 0, 0)) {
    free(w.buf);
    return lua_error(L);
  }
  if (w.ndim == 0) w.ndim = 1; /* {} -> shape [0] */
  if (w.saw_bool && w.saw_num) {
    free(w.buf);
    return luaL_error(L, "tensor: table mixes booleans and numbers");
  }
  if (!o.has_dtype) o.dtype = w.saw_bool ? MOE_BOOL : MOE_F32;
  double lo, hi;
  if (int_range(o.dtype, &lo, &hi))
    for (int64_t i = 0; i < w.n; i++)
      if (!(w.buf[i] >= lo && w.buf[i] < hi)) {
        char num[48];
        number_str(w.buf[i], num, sizeof num);
        free(w.buf);
        return luaL_error(L, "tensor: entry %d, %s, does not fit dtype %s", (int)i + 1, num, moe_dtype_name(o.dtype));
      }
  moe_tensor *t = moe_from_doubles(w.ndim, w.shape, o.dtype, w.buf);
  free(w.buf);
  return push_created(L, t, &o, "tensor");
}

/* ---------------------------------------------------------------- info */

static int l_shape(lua_State *L) {
  moe_tensor *t = check_tensor_any(L, 1, "shape");
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) { lua_pushnumber(L, (lua_Number)t->shape[i]); lua_rawseti(L, -2, i + 1); }
  return 1;
}
static int l_stride(lua_State *L) {
  moe_tensor *t = check_tensor_any(L, 1, "stride");
  if (!lua_isnoneornil(L, 2)) { lua_pushnumber(L, (lua_Number)t->stride[check_dim_arg(L, 2, t, "stride", 0)]); return 1; }
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) { lua_pushnumber(L, (lua_Number)t->stride[i]); lua_rawseti(L, -2, i + 1); }
  return 1;
}
static int l_size(lua_State *L) {
  moe_tensor *t = check_tensor_any(L, 1, "size");
  if (lua_isnoneornil(L, 2)) return l_shape(L);
  lua_pushnumber(L, (lua_Number)t->shape[check_dim_arg(L, 2, t, "size", 0)]);
  return 1;
}
static int l_dim(lua_State *L) { lua_pushinteger(L, check_tensor_any(L, 1, "dim")->ndim); return 1; }
static int l_numel(lua_State *L) { lua_pushnumber(L, (lua_Number)moe_numel(check_tensor_any(L, 1, "numel"))); return 1; }
static int l_dtype(lua_State *L) { lua_pushstring(L, moe_dtype_name(check_tensor_any(L, 1, "dtype")->dtype)); return 1; }
static int l_device(lua_State *L) {
  lua_pushstring(L, check_tensor_any(L, 1, "device")->device == MOE_CUDA ? "cuda" : "cpu");
  return 1;
}
static int l_is_contiguous(lua_State *L) { lua_pushboolean(L, moe_is_contiguous(check_tensor_any(L, 1, "is_contiguous"))); return 1; }
static int l_storage_offset(lua_State *L) { lua_pushnumber(L, (lua_Number)check_tensor_any(L, 1, "storage_offset")->offset); return 1; }
static int l_is_tensor(lua_State *L) { lua_pushboolean(L, moe_lua_totensor(L, 1) != NULL); return 1; }
static int l_same_storage(lua_State *L) {
  lua_pushboolean(L, moe_same_storage(check_tensor_any(L, 1, "same_storage"), check_tensor_any(L, 2, "same_storage")));
  return 1;
}

static void push_elem(lua_State *L, moe_tensor *t, const int64_t *idx) {
  double v = moe_get(t, idx);
  if (t->dtype == MOE_BOOL) lua_pushboolean(L, v != 0);
  else lua_pushnumber(L, v);
}

static int l_item(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "item");
  char b[160];
  if (moe_numel(t) != 1)
    luaL_error(L, "item: tensor of shape %s has %d elements, item needs exactly one", moe_shape_str(t, b), (int)moe_numel(t));
  int64_t idx[MOE_MAX_DIMS] = {0};
  moe_tensor *h = host_values(L, t);
  push_elem(L, h, idx);
  moe_tensor_release(h);
  return 1;
}

static void totable_rec(lua_State *L, moe_tensor *t, int d, int64_t *idx) {
  if (d == t->ndim) { push_elem(L, t, idx); return; }
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    idx[d] = i;
    totable_rec(L, t, d + 1, idx);
    lua_rawseti(L, -2, (int)i + 1);
  }
}
static int l_totable(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "totable");
  int64_t idx[MOE_MAX_DIMS] = {0};
  luaL_checkstack(L, t->ndim + 4, "totable");
  moe_tensor *h = host_values(L, t);
  box_tensor(L, h); /* owned by the GC if a table allocation fails */
  totable_rec(L, h, 0, idx);
  return 1;
}

/* ---------------------------------------------------------------- views */

static int l_view_impl(lua_State *L, const char *op, int reshape) {
  moe_tensor *t = check_tensor(L, 1, op);
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  parse_view_sizes(L, 2, op, &ndim, shape);
  return moe_lua_push(L, reshape ? moe_reshape(t, ndim, shape) : moe_view(t, ndim, shape));
}
static int l_view(lua_State *L) { return l_view_impl(L, "view", 0); }
static int l_reshape(lua_State *L) { return l_view_impl(L, "reshape", 1); }

static int l_expand(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "expand");
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  moe_tensor *other = moe_lua_totensor(L, 2);
  if (other) { ndim = other->ndim; memcpy(shape, other->shape, sizeof shape); }
  else parse_view_sizes(L, 2, "expand", &ndim, shape);
  return moe_lua_push(L, moe_expand(t, ndim, shape));
}

static int l_transpose(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "transpose");
  if (lua_isnoneornil(L, 2) && t->ndim == 2) return moe_lua_push(L, moe_transpose(t, 0, 1));
  int d0 = check_dim_arg(L, 2, t, "transpose", 0), d1 = check_dim_arg(L, 3, t, "transpose", 0);
  return moe_lua_push(L, moe_transpose(t, d0, d1));
}

static int l_permute(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "permute");
  int perm[MOE_MAX_DIMS], n = 0;
  int tbl = lua_istable(L, 2);
  int cnt = tbl ? (int)lua_objlen(L, 2) : lua_gettop(L) - 1;
  char b[160];
  if (cnt != t->ndim)
    luaL_error(L, "permute: %d dims given for tensor of shape %s", cnt, moe_shape_str(t, b));
  for (int i = 0; i < cnt; i++) {
    if (tbl) lua_rawgeti(L, 2, i + 1); else lua_pushvalue(L, i + 2);
    perm[n++] = norm_dim(L, t, check_int(L, -1, "permute", "dim"), "permute", 0);
    lua_pop(L, 1);
  }
  return moe_lua_push(L, moe_permute(t, perm));
}

static int l_narrow(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "narrow");
  int d = check_dim_arg(L, 2, t, "narrow", 0);
  int64_t start = check_int(L, 3, "narrow", "start"), len = check_int(L, 4, "narrow", "length");
  if (start < 0) start = t->shape[d] + start + 1;
  return moe_lua_push(L, moe_narrow(t, d, start - 1, len));
}

static int l_select(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "select");
  int d = check_dim_arg(L, 2, t, "select", 0);
  int64_t i = check_int(L, 3, "select", "index");
  if (i < 0) i = t->shape[d] + i + 1;
  return moe_lua_push(L, moe_select(t, d, i - 1));
}

static int l_squeeze(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "squeeze");
  int d = lua_isnoneornil(L, 2) ? -1 : check_dim_arg(L, 2, t, "squeeze", 0);
  return moe_lua_push(L, moe_squeeze(t, d));
}

static int l_unsqueeze(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "unsqueeze");
  return moe_lua_push(L, moe_unsqueeze(t, check_dim_arg(L, 2, t, "unsqueeze", 1)));
}

static int l_contiguous(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "contiguous");
  if (moe_is_contiguous(t)) { lua_settop(L, 1); return 1; }
  return moe_lua_push(L, moe_clone(t));
}
static int l_clone(lua_State *L) { return moe_lua_push(L, moe_clone(check_tensor(L, 1, "clone"))); }

static int l_to(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "to");
  const char *name = lua_tostring(L, 2);
  moe_dtype dt;
  if (lua_istable(L, 2)) {
    create_opts o = parse_opts(L, 2, "to", t->dtype);
    dt = o.dtype;
  } else if (!name || moe_dtype_from_name(name, &dt)) {
    if (name && !strcmp(name, "cpu")) { lua_settop(L, 1); return 1; }
    luaL_error(L, "to: unknown dtype '%s' (float32, float64, int32, int64, bool)", name ? name : luaL_typename(L, 2));
  }
  if (t->dtype == dt) { lua_settop(L, 1); return 1; }
  return moe_lua_push(L, moe_to_dtype(t, dt));
}

static int l_copy_(lua_State *L) {
  moe_tensor *dst = check_tensor(L, 1, "copy_");
  if (lua_type(L, 2) == LUA_TNUMBER) {
    if (moe_fill_(dst, lua_tonumber(L, 2))) return raise_engine(L);
    lua_settop(L, 1);
    return 1;
  }
  moe_tensor *src = check_tensor_any(L, 2, "copy_"); /* from any device */
  if (moe_copy_(dst, src)) return raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

static int l_fill_(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "fill_");
  double v = lua_type(L, 2) == LUA_TBOOLEAN ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  if (moe_fill_(t, v)) return raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

/* ---------------------------------------------------------------- indexing */

/* t[i] or t[{...}] as a view: numbers select (dims vanish), {} keeps a dim,
 * {a, b} narrows to a..b inclusive; negative numbers count from the end. */
static moe_tensor *index_view(lua_State *L, moe_tensor *t, int kidx, int *scalar) {
  char b[160];
  *scalar = 0;
  if (lua_type(L, kidx) == LUA_TNUMBER) {
    int64_t i = check_int(L, kidx, "index", "index");
    if (t->ndim == 0) luaL_error(L, "index: cannot index a 0-dim tensor");
    if (i < 0) i = t->shape[0] + i + 1;
    if (i < 1 || i > t->shape[0])
      luaL_error(L, "index: index %d out of range for dim 1 of size %d (shape %s)", (int)i, (int)t->shape[0], moe_shape_str(t, b));
    *scalar = t->ndim == 1;
    moe_tensor *v = moe_select(t, 0, i - 1);
    if (!v) raise_engine(L);
    return v;
  }
  if (!lua_istable(L, kidx) || moe_lua_totensor(L, kidx))
    luaL_error(L, "index: expected a number or a table of ranges, got %s", type_of(L, kidx));
  int n = (int)lua_objlen(L, kidx);
  if (n > t->ndim) luaL_error(L, "index: %d indices for tensor of shape %s", n, moe_shape_str(t, b));
  /* validate everything first, then build the view */
  int64_t lo[MOE_MAX_DIMS], hi[MOE_MAX_DIMS];
  int kind[MOE_MAX_DIMS]; /* 0 select, 1 range */
  for (int k = 0, d = 0; k < n; k++, d++) {
    lua_rawgeti(L, kidx, k + 1);
    int64_t size = t->shape[d];
    if (lua_type(L, -1) == LUA_TNUMBER) {
      int64_t i = check_int(L, -1, "index", "index");
      if (i < 0) i = size + i + 1;
      if (i < 1 || i > size)
        luaL_error(L, "index: index %d out of range for dim %d of size %d (shape %s)", (int)i, d + 1, (int)size, moe_shape_str(t, b));
      kind[k] = 0; lo[k] = i;
    } else if (lua_istable(L, -1)) {
      int m = (int)lua_objlen(L, -1);
      int64_t a = 1, e = size;
      if (m >= 1) { lua_rawgeti(L, -1, 1); a = check_int(L, -1, "index", "range start"); lua_pop(L, 1); }
      if (m >= 2) { lua_rawgeti(L, -1, 2); e = check_int(L, -1, "index", "range end"); lua_pop(L, 1); }
      else if (m == 1) e = a < 0 ? size + a + 1 : a;
      if (a < 0) a = size + a + 1;
      if (e < 0) e = size + e + 1;
      if (a < 1 || e > size || e < a - 1)
        luaL_error(L, "index: range {%d, %d} out of bounds for dim %d of size %d (shape %s)", (int)a, (int)e, d + 1, (int)size, moe_shape_str(t, b));
      kind[k] = 1; lo[k] = a; hi[k] = e;
    } else {
      luaL_error(L, "index: entry %d must be a number or a range table, got %s", k + 1, type_of(L, -1));
    }
    lua_pop(L, 1);
  }
  moe_tensor *v = t;
  moe_tensor_retain(v);
  for (int k = 0, d = 0; k < n; k++) {
    moe_tensor *nv = kind[k] ? moe_narrow(v, d, lo[k] - 1, hi[k] - lo[k] + 1) : moe_select(v, d, lo[k] - 1);
    moe_tensor_release(v);
    if (!nv) raise_engine(L);
    v = nv;
    if (kind[k]) d++;
  }
  return v;
}

/* autograd fields: t.grad, t.requires_grad, t.grad_fn (the op's name), t.is_leaf */
static int grad_field(lua_State *L, moe_tensor *t, const char *k) {
  if (!strcmp(k, "grad")) {
    if (!t->grad) { lua_pushnil(L); return 1; }
    moe_tensor_retain(t->grad);
    return moe_lua_push(L, t->grad);
  }
  if (!strcmp(k, "requires_grad")) { lua_pushboolean(L, t->requires_grad); return 1; }
  if (!strcmp(k, "grad_fn")) {
    if (t->grad_fn) lua_pushstring(L, moe_grad_fn_name(t));
    else lua_pushnil(L);
    return 1;
  }
  if (!strcmp(k, "is_leaf")) { lua_pushboolean(L, t->grad_fn == NULL); return 1; }
  return 0;
}

static int set_requires_grad(lua_State *L, moe_tensor *t, int on) {
  if (on && !moe_dtype_is_float(t->dtype))
    luaL_error(L, "requires_grad: only float tensors can require grad, got dtype %s", moe_dtype_name(t->dtype));
  if (t->grad_fn) {
    if (on) return 0;
    luaL_error(L, "requires_grad: cannot turn it off on a tensor computed by %s (use detach())", moe_grad_fn_name(t));
  }
  t->requires_grad = on;
  return 0;
}

static int t_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1)) return 1;
    const char *k = lua_tostring(L, 2);
    if (k[0] == 'g' || k[0] == 'r' || k[0] == 'i') {
      moe_tensor *t = check_tensor_any(L, 1, "index");
      if (grad_field(L, t, k)) return 1;
    }
    return 1;
  }
  moe_tensor *t = check_tensor(L, 1, "index");
  int scalar;
  moe_tensor *v = index_view(L, t, 2, &scalar);
  if (scalar) {
    int64_t idx[1] = {0};
    moe_tensor *h = moe_to_device(v, MOE_CPU);
    moe_tensor_release(v);
    if (!h) return raise_engine(L);
    push_elem(L, h, idx);
    moe_tensor_release(h);
    return 1;
  }
  return moe_lua_push(L, v);
}

static int t_newindex(lua_State *L) {
  moe_tensor *t = check_tensor_any(L, 1, "newindex");
  if (lua_type(L, 2) == LUA_TSTRING && !strcmp(lua_tostring(L, 2), "requires_grad"))
    return set_requires_grad(L, t, lua_toboolean(L, 3));
  t = check_tensor(L, 1, "newindex");
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (!strcmp(k, "grad")) {
      moe_tensor *g = NULL;
      if (!lua_isnil(L, 3)) {
        char b1[160], b2[160];
        g = moe_lua_totensor(L, 3);
        if (!g) luaL_error(L, "grad: expected a tensor or nil, got %s", type_of(L, 3));
        if (g->ndim != t->ndim || memcmp(g->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) ||
            g->dtype != t->dtype)
          luaL_error(L, "grad: a gradient of shape %s (%s) does not fit a tensor of shape %s (%s)",
                     moe_shape_str(g, b1), moe_dtype_name(g->dtype), moe_shape_str(t, b2),
                     moe_dtype_name(t->dtype));
        moe_tensor_retain(g);
      }
      moe_tensor_release(t->grad);
      t->grad = g;
      return 0;
    }
    luaL_error(L, "tensor: cannot set field '%s' on a tensor (settable: grad, requires_grad)", k);
  }
  moe_tensor *src = moe_lua_totensor(L, 3);
  int vt = lua_type(L, 3);
  if (!src && vt != LUA_TNUMBER && vt != LUA_TBOOLEAN)
    luaL_error(L, "newindex: value must be a number or a tensor, got %s", type_of(L, 3));
  int scalar;
  moe_tensor *v = index_view(L, t, 2, &scalar);
  int rc = 0;
  if (src) rc = moe_copy_(v, src);
  else rc = moe_fill_(v, vt == LUA_TBOOLEAN ? lua_toboolean(L, 3) : lua_tonumber(L, 3));
  moe_tensor_release(v);
  if (rc) return raise_engine(L);
  return 0;
}

static int t_len(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "len");
  lua_pushnumber(L, t->ndim ? (lua_Number)t->shape[0] : 0);
  return 1;
}

/* ---------------------------------------------------------------- math */

/* binary ops: upvalue 1 is the moe_binop */
static int l_binary(lua_State *L) {
  moe_binop op = (moe_binop)lua_tointeger(L, lua_upvalueindex(1));
  moe_tensor *a = opt_tensor(L, 1, moe_binop_name(op)), *b = opt_tensor(L, 2, moe_binop_name(op));
  if (a && b) return moe_lua_push(L, moe_binary(op, a, b));
  if (a && lua_type(L, 2) == LUA_TNUMBER) return moe_lua_push(L, moe_binary_scalar(op, a, lua_tonumber(L, 2), 0));
  if (b && lua_type(L, 1) == LUA_TNUMBER) return moe_lua_push(L, moe_binary_scalar(op, b, lua_tonumber(L, 1), 1));
  return luaL_error(L, "%s: expected tensors or numbers, got %s and %s", moe_binop_name(op), type_of(L, 1), type_of(L, 2));
}

/* in-place binary ops: a:add_(b) */
static int l_binary_(lua_State *L) {
  moe_binop op = (moe_binop)lua_tointeger(L, lua_upvalueindex(1));
  char name[32];
  snprintf(name, sizeof name, "%s_", moe_binop_name(op));
  moe_tensor *a = check_tensor(L, 1, name);
  moe_tensor *b = opt_tensor(L, 2, name);
  int rc;
  if (b) rc = moe_binary_(op, a, b);
  else if (lua_type(L, 2) == LUA_TNUMBER) {
    rc = moe_binary_scalar_(op, a, lua_tonumber(L, 2));
  } else return luaL_error(L, "%s: argument #2 must be a tensor or number, got %s", name, type_of(L, 2));
  if (rc) return raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

static int l_unary(lua_State *L) {
  moe_unop op = (moe_unop)lua_tointeger(L, lua_upvalueindex(1));
  moe_tensor *a = check_tensor(L, 1, moe_unop_name(op));
  return moe_lua_push(L, moe_unary(op, a, 0, 0));
}

static int l_clamp(lua_State *L) {
  moe_tensor *a = check_tensor(L, 1, "clamp");
  if (lua_istable(L, 2)) {
    lua_settop(L, 2);
    lua_getfield(L, 2, "min");
    lua_getfield(L, 2, "max");
    lua_remove(L, 2); /* -> x, min, max */
  }
  if (!lua_isnil(L, 2) && lua_type(L, 2) != LUA_TNUMBER) luaL_error(L, "clamp: min must be a number or nil, got %s", type_of(L, 2));
  if (!lua_isnoneornil(L, 3) && lua_type(L, 3) != LUA_TNUMBER) luaL_error(L, "clamp: max must be a number or nil, got %s", type_of(L, 3));
  double lo = lua_isnoneornil(L, 2) ? -INFINITY : lua_tonumber(L, 2);
  double hi = lua_isnoneornil(L, 3) ? INFINITY : lua_tonumber(L, 3);
  return moe_lua_push(L, moe_unary(MOE_CLAMP, a, lo, hi));
}

static int l_where(lua_State *L) {
  moe_tensor *c = check_tensor(L, 1, "where");
  moe_tensor *a = opt_tensor(L, 2, "where"), *b = opt_tensor(L, 3, "where");
  int ty2 = lua_type(L, 2), ty3 = lua_type(L, 3);
  if (!a && ty2 != LUA_TNUMBER) luaL_error(L, "where: argument #2 must be a tensor or number, got %s", type_of(L, 2));
  if (!b && ty3 != LUA_TNUMBER) luaL_error(L, "where: argument #3 must be a tensor or number, got %s", type_of(L, 3));
  /* a scalar branch takes the other branch's dtype (float32 if both are scalars) */
  moe_dtype dt = a ? a->dtype : (b ? b->dtype : MOE_F32);
  double va = lua_tonumber(L, 2), vb = lua_tonumber(L, 3);
  if (!moe_dtype_is_float(dt) && ((!a && va != floor(va)) || (!b && vb != floor(vb)))) dt = MOE_F32;
  moe_tensor *ta = a ? a : moe_from_doubles(0, NULL, dt, &va);
  moe_tensor *tb = b ? b : moe_from_doubles(0, NULL, dt, &vb);
  if (c->device != MOE_CPU) { /* a number becomes a one-element tensor on the condition's device */
    moe_tensor *t;
    if (!a && ta) { t = moe_to_device(ta, c->device); moe_tensor_release(ta); ta = t; }
    if (!b && tb) { t = moe_to_device(tb, c->device); moe_tensor_release(tb); tb = t; }
  }
  moe_tensor *out = ta && tb ? moe_where(c, ta, tb) : NULL;
  if (!a) moe_tensor_release(ta);
  if (!b) moe_tensor_release(tb);
  return moe_lua_push(L, out);
}

/* ---------------------------------------------------------------- reductions */

/* dims argument: nil (all), a number, or a table of numbers -> bit mask */
static unsigned parse_dims(lua_State *L, int idx, moe_tensor *t, const char *op) {
  if (lua_isnoneornil(L, idx)) return 0;
  if (lua_type(L, idx) == LUA_TNUMBER) return 1u << check_dim_arg(L, idx, t, op, 0);
  if (!lua_istable(L, idx)) luaL_error(L, "%s: dim must be a number or a table of numbers, got %s", op, type_of(L, idx));
  unsigned m = 0;
  int n = (int)lua_objlen(L, idx);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    m |= 1u << norm_dim(L, t, check_int(L, -1, op, "dim"), op, 0);
    lua_pop(L, 1);
  }
  return m;
}

/* keepdim as a boolean or {keepdim=..., unbiased=..., correction=...} */
static int parse_keepdim(lua_State *L, int idx, int *correction) {
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, "keepdim");
    int k = lua_toboolean(L, -1);
    lua_getfield(L, idx, "unbiased");
    if (!lua_isnil(L, -1) && correction) *correction = lua_toboolean(L, -1) ? 1 : 0;
    lua_getfield(L, idx, "correction");
    if (lua_type(L, -1) == LUA_TNUMBER && correction) *correction = (int)lua_tointeger(L, -1);
    lua_pop(L, 3);
    return k;
  }
  return lua_toboolean(L, idx);
}

static int l_reduce(lua_State *L) {
  moe_redop op = (moe_redop)lua_tointeger(L, lua_upvalueindex(1));
  const char *name = moe_redop_name(op);
  moe_tensor *t = check_tensor(L, 1, name);
  /* max(a, b) / min(a, b) with a tensor or number second argument: elementwise */
  if ((op == MOE_RMAX || op == MOE_RMIN) && (moe_lua_totensor(L, 2))) {
    return moe_lua_push(L, moe_binary(op == MOE_RMAX ? MOE_MAXIMUM : MOE_MINIMUM, t, opt_tensor(L, 2, name)));
  }
  unsigned dims = parse_dims(L, 2, t, name);
  int correction = 1;
  if ((op == MOE_RVAR || op == MOE_RSTD) && lua_type(L, 4) == LUA_TBOOLEAN) correction = lua_toboolean(L, 4);
  int keepdim = parse_keepdim(L, 3, &correction);
  int want_idx = (op == MOE_RMAX || op == MOE_RMIN) && lua_type(L, 2) == LUA_TNUMBER;
  moe_tensor *idx = NULL;
  moe_tensor *out = moe_reduce(op, t, dims, keepdim, correction, want_idx ? &idx : NULL, IBASE);
  if (!out) return raise_engine(L);
  if (want_idx) return push_pair(L, 0, out, idx);
  return moe_lua_push(L, out);
}

static int l_scan(lua_State *L) {
  moe_scanop op = (moe_scanop)lua_tointeger(L, lua_upvalueindex(1));
  static const char *names[] = {"softmax", "log_softmax", "cumsum", "cumprod"};
  moe_tensor *t = check_tensor(L, 1, names[op]);
  if (t->ndim == 0) luaL_error(L, "%s: needs at least 1 dim, got a 0-dim tensor", names[op]);
  int d = opt_dim_arg(L, 2, t, names[op], t->ndim - 1);
  return moe_lua_push(L, moe_scan(op, t, d));
}

/* ---------------------------------------------------------------- matmul, sort, index */

/* an optional GEMM precision argument: nil or "fp32", or "bf16" (moe.set_precision's names) */
static moe_precision opt_precision(lua_State *L, int i, const char *op) {
  static const char *const names[] = {"fp32", "bf16", NULL};
  if (lua_isnoneornil(L, i)) return MOE_PREC_FP32;
  cur_op = op;
  moe_precision p = (moe_precision)chk_option(L, i, NULL, names);
  if (p == MOE_PREC_BF16) moe_bf16_init(); /* the backend is chosen here, on the Lua thread */
  return p;
}

/* matmul(a, b[, precision]) */
static int l_matmul(lua_State *L) {
  moe_tensor *a = check_tensor(L, 1, "matmul"), *b = check_tensor(L, 2, "matmul");
  moe_precision prec = opt_precision(L, 3, "matmul");
  return moe_lua_push(L, moe_matmul_prec(a, b, prec));
}

static int l_topk(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "topk");
  int64_t k = check_int(L, 2, "topk", "k");
  if (t->ndim == 0) luaL_error(L, "topk: needs at least 1 dim, got a 0-dim tensor");
  int d = opt_dim_arg(L, 3, t, "topk", t->ndim - 1);
  int largest = lua_isnoneornil(L, 4) ? 1 : lua_toboolean(L, 4);
  moe_tensor *v = NULL, *i = NULL;
  int rc = moe_topk(t, k, d, largest, &v, &i, IBASE);
  return push_pair(L, rc, v, i);
}

static int l_sort(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "sort");
  if (t->ndim == 0) luaL_error(L, "sort: needs at least 1 dim, got a 0-dim tensor");
  int d = opt_dim_arg(L, 2, t, "sort", t->ndim - 1);
  moe_tensor *v = NULL, *i = NULL;
  int rc = moe_sort(t, d, lua_toboolean(L, 3), &v, &i, IBASE);
  return push_pair(L, rc, v, i);
}

static int l_gather(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "gather");
  int d = check_dim_arg(L, 2, t, "gather", 0);
  return moe_lua_push(L, moe_gather(t, d, check_tensor(L, 3, "gather"), IBASE));
}

/* scatter_add / index_add and their in-place forms: (t, dim, index, src) */
typedef moe_tensor *(*accumulate_fn)(const moe_tensor *, int, const moe_tensor *, const moe_tensor *,
                                     int64_t, int);
static int accumulate(lua_State *L, const char *op, accumulate_fn fn, int inplace) {
  moe_tensor *t = check_tensor(L, 1, op);
  int d = check_dim_arg(L, 2, t, op, 0);
  moe_tensor *out = fn(t, d, check_tensor(L, 3, op), check_tensor(L, 4, op), IBASE, inplace);
  if (!inplace) return moe_lua_push(L, out);
  if (!out) return raise_engine(L);
  moe_tensor_release(out); /* the in-place result is t itself */
  lua_settop(L, 1);
  return 1;
}
static int l_scatter_add(lua_State *L) { return accumulate(L, "scatter_add", moe_scatter_add, 0); }
static int l_scatter_add_(lua_State *L) { return accumulate(L, "scatter_add_", moe_scatter_add, 1); }
static int l_index_add(lua_State *L) { return accumulate(L, "index_add", moe_index_add, 0); }
static int l_index_add_(lua_State *L) { return accumulate(L, "index_add_", moe_index_add, 1); }

static int l_index_select(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "index_select");
  int d = check_dim_arg(L, 2, t, "index_select", 0);
  return moe_lua_push(L, moe_index_select(t, d, check_tensor(L, 3, "index_select"), IBASE));
}

static int l_bincount(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "bincount");
  moe_tensor *w = NULL;
  int64_t minlength = 0;
  if (lua_istable(L, 2) && !moe_lua_totensor(L, 2)) {
    lua_getfield(L, 2, "weights");
    if (!lua_isnil(L, -1)) w = check_tensor(L, -1, "bincount");
    lua_getfield(L, 2, "minlength");
    if (!lua_isnil(L, -1)) minlength = check_int(L, -1, "bincount", "minlength");
    lua_pop(L, 2);
  } else {
    if (!lua_isnoneornil(L, 2)) w = check_tensor(L, 2, "bincount");
    if (!lua_isnoneornil(L, 3)) minlength = check_int(L, 3, "bincount", "minlength");
  }
  return moe_lua_push(L, moe_bincount(t, w, minlength, IBASE));
}

static int l_catstack(lua_State *L, int stack) {
  const char *op = stack ? "stack" : "cat";
  if (!lua_istable(L, 1) || moe_lua_totensor(L, 1)) luaL_error(L, "%s: argument #1 must be a list of tensors, got %s", op, type_of(L, 1));
  int n = (int)lua_objlen(L, 1);
  if (n < 1) luaL_error(L, "%s: expected a non-empty list of tensors", op);
  lua_settop(L, 2); /* the scratch below must not look like a dim argument */
  moe_tensor **ts = lua_newuserdata(L, sizeof(moe_tensor *) * (size_t)n); /* GC-owned scratch */
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    ts[i] = moe_lua_totensor(L, -1);
    if (!ts[i]) luaL_error(L, "%s: entry %d of the list is a %s, not a tensor", op, i + 1, type_of(L, -1));
    if (join_device(ts[i]))
      luaL_error(L, "%s: entry %d of the list is on %s while entry 1 is on %s", op, i + 1, dev_name(ts[i]->device), dev_name(op_dev));
    lua_pop(L, 1);
  }
  int d = 0;
  if (!lua_isnoneornil(L, 2)) d = norm_dim(L, ts[0], check_int(L, 2, op, "dim"), op, stack);
  return moe_lua_push(L, stack ? moe_stack(n, ts, d) : moe_cat(n, ts, d));
}
static int l_cat(lua_State *L) { return l_catstack(L, 0); }
static int l_stack(lua_State *L) { return l_catstack(L, 1); }

/* ---------------------------------------------------------------- autograd */

static int l_backward(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "backward");
  moe_tensor *g = NULL;
  int retain = 0, opts = 2;
  if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2)) {
    g = opt_tensor(L, 2, "backward");
    if (!g) luaL_error(L, "backward: grad must be a tensor, got %s", type_of(L, 2));
    opts = 3;
  }
  if (lua_istable(L, opts)) {
    lua_getfield(L, opts, "retain_graph");
    retain = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (moe_backward(t, g, retain)) return raise_engine(L);
  return 0;
}

static int l_detach(lua_State *L) {
  moe_tensor *t = check_tensor_any(L, 1, "detach");
  return moe_lua_push(L, moe_detach(t));
}

static int l_requires_grad_(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "requires_grad_");
  set_requires_grad(L, t, lua_isnone(L, 2) ? 1 : lua_toboolean(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int l_set_grad_enabled(lua_State *L) {
  lua_pushboolean(L, moe_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_is_grad_enabled(lua_State *L) {
  lua_pushboolean(L, moe_grad_enabled());
  return 1;
}

/* element i (1-based, row-major over the logical shape) of any layout: gradcheck's probe */
static void flat_index(lua_State *L, const moe_tensor *t, int64_t i, int64_t *idx) {
  int64_t n = moe_numel(t);
  if (i < 1 || i > n) luaL_error(L, "flat index %f out of range 1..%f", (double)i, (double)n); /* (lua_pushvfstring has no %lld) */
  i -= 1;
  for (int d = t->ndim - 1; d >= 0; d--) { idx[d] = i % t->shape[d]; i /= t->shape[d]; }
}
static int l_get_flat(lua_State *L) {
  moe_tensor *t = check_host(L, 1, "get_flat");
  int64_t idx[MOE_MAX_DIMS];
  flat_index(L, t, check_int(L, 2, "get_flat", "index"), idx);
  lua_pushnumber(L, moe_get(t, idx));
  return 1;
}
static int l_set_flat(lua_State *L) {
  moe_tensor *t = check_host(L, 1, "set_flat");
  int64_t idx[MOE_MAX_DIMS];
  flat_index(L, t, check_int(L, 2, "set_flat", "index"), idx);
  if (moe_mark_write("set_flat", t)) return raise_engine(L);
  moe_set(t, idx, luaL_checknumber(L, 3));
  return 0;
}

/* ---------------------------------------------------------------- optimizers */

static double opt_num(lua_State *L, int idx, const char *k, double dflt) {
  lua_getfield(L, idx, k);
  double v = lua_isnil(L, -1) ? dflt : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

/* optim_step(kind, params, s1, s2, steps, hparams) -> global grad norm (or -1).
 * Every parameter in `params` has a .grad (the caller checked with has_grad);
 * gradients are read here, so no Lua box is made for them. s1/s2 entries may
 * be false. */
static int l_optim_step(lua_State *L) {
  static const char *kinds[] = {"sgd", "adam", "adamw", "rmsprop", "adagrad", NULL};
  int kind = luaL_checkoption(L, 1, NULL, kinds);
  for (int i = 2; i <= 6; i++) luaL_checktype(L, i, LUA_TTABLE);
  int n = (int)lua_objlen(L, 2);
  if ((int)lua_objlen(L, 5) != n) return luaL_error(L, "optim_step: params and steps differ in length");
  moe_tensor **buf = lua_newuserdata(L, sizeof(moe_tensor *) * 4 * (size_t)(n ? n : 1));
  int64_t *steps = lua_newuserdata(L, sizeof(int64_t) * (size_t)(n ? n : 1));
  moe_tensor **P = buf, **G = buf + n, **S1 = buf + 2 * n, **S2 = buf + 3 * n;
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 2, i + 1); P[i] = moe_lua_totensor(L, -1); lua_pop(L, 1);
    lua_rawgeti(L, 3, i + 1); S1[i] = moe_lua_totensor(L, -1); lua_pop(L, 1);
    lua_rawgeti(L, 4, i + 1); S2[i] = moe_lua_totensor(L, -1); lua_pop(L, 1);
    lua_rawgeti(L, 5, i + 1); steps[i] = check_int(L, -1, "optim_step", "a step count"); lua_pop(L, 1);
    if (steps[i] < 1) return luaL_error(L, "optim_step: step counts start at 1");
    if (!P[i]) return luaL_error(L, "optim_step: entry %d is not a tensor", i + 1);
    if (!P[i]->grad) return luaL_error(L, "optim_step: parameter %d has no gradient", i + 1);
  }
  moe_optim_hparams h = {
      .lr = opt_num(L, 6, "lr", 1e-3), .weight_decay = opt_num(L, 6, "weight_decay", 0),
      .momentum = opt_num(L, 6, "momentum", 0), .dampening = opt_num(L, 6, "dampening", 0),
      .beta1 = opt_num(L, 6, "beta1", 0.9), .beta2 = opt_num(L, 6, "beta2", 0.999),
      .eps = opt_num(L, 6, "eps", 1e-8), .alpha = opt_num(L, 6, "alpha", 0.99),
      .lr_decay = opt_num(L, 6, "lr_decay", 0), .clip_norm = opt_num(L, 6, "clip_norm", 0),
      .clip_value = opt_num(L, 6, "clip_value", 0)};
  lua_getfield(L, 6, "nesterov");
  h.nesterov = lua_toboolean(L, -1);
  lua_pop(L, 1);
  /* strided gradients (set by hand) go in as contiguous copies */
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    G[i] = moe_contiguous(P[i]->grad);
    if (!G[i]) { for (int j = 0; j < i; j++) moe_tensor_release(G[j]); return raise_engine(L); }
  }
  double norm = 0;
  rc = moe_optim_step((moe_optim_kind)kind, n, P, G, S1, S2, steps, &h, &norm);
  for (int i = 0; i < n; i++) moe_tensor_release(G[i]);
  if (rc) return raise_engine(L);
  lua_pushnumber(L, norm);
  return 1;
}

/* t:has_grad(): whether t.grad is set (without making a box for it) */
static int l_has_grad(lua_State *L) {
  moe_tensor *t = check_tensor(L, 1, "has_grad");
  lua_pushboolean(L, t->grad != NULL);
  return 1;
}

/* cuda(t) / cpu(t): t's values on that device (t itself when already there) */
static int l_cuda(lua_State *L) { return moe_lua_push(L, moe_to_device(check_tensor_any(L, 1, "cuda"), MOE_CUDA)); }
static int l_cpu(lua_State *L) { return moe_lua_push(L, moe_to_device(check_tensor_any(L, 1, "cpu"), MOE_CPU)); }

/* cuda_info() -> {built, device_count, devices = {names}, free, total, live, peak, cached} */
/* backend_kernels() -> { {name =, cpu = true, cuda = bool}, ... }: the dispatch's
 * kernel table (src/core/dispatch.h), in its order */
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
  if (n == 0) {
    lua_pushstring(L, moe_cuda_last_error());
    lua_setfield(L, -2, "reason");
  }
  return 1;
}
/* cuda_precision([name]) -> the previous name: "fp32", "tf32" or "bf16" (float32 GEMMs on the device) */
static int l_cuda_precision(lua_State *L) {
  static const char *names[] = {"fp32", "tf32", "bf16", NULL};
  int old = moe_cuda_get_precision();
  if (!lua_isnoneornil(L, 1)) moe_cuda_set_precision(luaL_checkoption(L, 1, NULL, names));
  lua_pushstring(L, names[old]);
  return 1;
}
static int l_cuda_empty_cache(lua_State *L) { lua_pushnumber(L, (lua_Number)moe_cuda_empty_cache()); return 1; }

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

/* roc_auc(y, scores[, weights]) -> number */
static const char *const cpu_vendors[] = {"other", "intel", "amd", NULL}; /* MOE_CPU_* order */

/* blas_info() -> {library, kernels, cpu_best, cpu_vendor, cpu_features, chosen_by, reason} */
static int l_blas_info(lua_State *L) {
  moe_blas_status st;
  moe_blas_status_get(&st);
  char feats[200];
  moe_cpu_features_str(st.cpu.features, feats, sizeof feats);
  lua_newtable(L);
  lua_pushstring(L, st.library); lua_setfield(L, -2, "library");
  lua_pushstring(L, st.kernels); lua_setfield(L, -2, "kernels");
  lua_pushinteger(L, moe_blas_core_rank(st.kernels)); lua_setfield(L, -2, "kernels_rank");
  lua_pushstring(L, st.cpu_best); lua_setfield(L, -2, "cpu_best");
  lua_pushinteger(L, moe_blas_core_rank(st.cpu_best)); lua_setfield(L, -2, "cpu_best_rank");
  lua_pushstring(L, cpu_vendors[st.cpu.vendor]);
  lua_setfield(L, -2, "cpu_vendor");
  lua_pushstring(L, feats); lua_setfield(L, -2, "cpu_features");
  lua_pushstring(L, st.chosen_by == MOE_BLAS_BY_USER ? "user" : st.chosen_by == MOE_BLAS_BY_MOELUA ? "moelua" : "blas");
  lua_setfield(L, -2, "chosen_by");
  lua_pushstring(L, st.reason); lua_setfield(L, -2, "reason");
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
  if (st.library >= 0) { lua_pushstring(L, moe_sgemm_lib_name(st.library)); lua_setfield(L, -2, "library"); }
  lua_newtable(L);
  for (int l = 0; l < MOE_SGEMM_NLIBS; l++) {
    lua_newtable(L);
    lua_pushstring(L, moe_sgemm_lib_name(l)); lua_setfield(L, -2, "name");
    lua_pushboolean(L, st.available[l]); lua_setfield(L, -2, "available");
    if (!st.available[l]) { lua_pushstring(L, st.why[l]); lua_setfield(L, -2, "why"); }
    lua_rawseti(L, -2, l + 1);
  }
  lua_setfield(L, -2, "libraries");
  lua_newtable(L);
  for (int i = 0; i < st.n_records; i++) {
    const moe_sgemm_record *r = &st.records[i];
    lua_newtable(L);
    lua_pushinteger(L, (lua_Integer)r->M); lua_setfield(L, -2, "m");
    lua_pushinteger(L, (lua_Integer)r->N); lua_setfield(L, -2, "n");
    lua_pushinteger(L, (lua_Integer)r->K); lua_setfield(L, -2, "k");
    lua_pushboolean(L, r->ta); lua_setfield(L, -2, "ta");
    lua_pushboolean(L, r->tb); lua_setfield(L, -2, "tb");
    lua_pushstring(L, moe_sgemm_lib_name(r->lib)); lua_setfield(L, -2, "library");
    lua_newtable(L);
    for (int l = 0; l < MOE_SGEMM_NLIBS; l++)
      if (r->gflops[l] > 0) { lua_pushnumber(L, r->gflops[l]); lua_setfield(L, -2, moe_sgemm_lib_name(l)); }
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
  lua_pushstring(L, moe_bf16_backend_name(st.backend)); lua_setfield(L, -2, "backend");
  lua_pushstring(L, st.library); lua_setfield(L, -2, "library");
  lua_pushstring(L, st.reason); lua_setfield(L, -2, "reason");
  lua_pushboolean(L, st.cpu_bf16); lua_setfield(L, -2, "cpu_bf16");
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

static int l_roc_auc(lua_State *L) {
  moe_tensor *y = check_tensor(L, 1, "roc_auc"), *sc = check_tensor(L, 2, "roc_auc");
  moe_tensor *w = lua_isnoneornil(L, 3) ? NULL : check_tensor(L, 3, "roc_auc");
  double auc;
  if (moe_roc_auc(y, sc, w, &auc)) return raise_engine(L);
  lua_pushnumber(L, auc);
  return 1;
}

/* shuffled_range(n, seed_hi, seed_lo) -> int64 [n]: 1..n in the order of
 * moe.data.permutation's Fisher-Yates over its xorshift64* generator, whose
 * 64-bit state is given in two 32-bit halves; the same order as the Lua
 * function, without a Lua table of n numbers (3.4 ms for 32,768 rows, once
 * per epoch of fit{}) */
static int l_shuffled_range(lua_State *L) {
  int64_t n = check_int(L, 1, "shuffled_range", "n");
  if (n < 0) return luaL_error(L, "shuffled_range: n must be a count, got %f", (double)n);
  uint64_t half[2];
  for (int k = 0; k < 2; k++) {
    int64_t h = check_int(L, 2 + k, "shuffled_range", k ? "the state's low half" : "the state's high half");
    if (h < 0 || h > 0xffffffffLL)
      return luaL_error(L, "shuffled_range: argument #%d must be a 32-bit half of the generator's state, got %f",
                        2 + k, (double)h);
    half[k] = (uint64_t)h;
  }
  uint64_t st = (half[0] << 32) | half[1];
  if (st == 0) st = 1;
  int64_t shape[1] = {n};
  moe_tensor *t = moe_empty(1, shape, MOE_I64);
  if (!t) return raise_engine(L);
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
  return moe_lua_push(L, t);
}

/* gather_rows({t1, t2, ...}, index) -> a job: the rows `index` of each tensor
 * are copied on a helper thread (moe_gather_start); job:finish() -> {rows1,
 * rows2, ...} once they are there. For fit{}'s next batch. */
#define GATHER_MT "moe.gather_job"
typedef struct { moe_gather_job *j; } gather_box;
static gather_box *check_gather(lua_State *L) { return luaL_checkudata(L, 1, GATHER_MT); }
static int l_gather_gc(lua_State *L) {
  gather_box *g = check_gather(L);
  moe_gather_free(g->j);
  g->j = NULL;
  return 0;
}
static int l_gather_finish(lua_State *L) {
  gather_box *g = check_gather(L);
  if (!g->j) return luaL_error(L, "gather_rows: this job was finished already");
  moe_tensor *out[MOE_GATHER_MAX];
  int n = moe_gather_finish(g->j, out);
  moe_gather_free(g->j);
  g->j = NULL;
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) { /* all boxed before anything can raise (after_push) */
    box_tensor(L, out[i]);
    lua_rawseti(L, -2, i + 1);
  }
  after_push(L);
  return 1;
}
static int l_gather_rows(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  if (n < 1 || n > MOE_GATHER_MAX) return luaL_error(L, "gather_rows: %d tensors (1 to %d)", n, MOE_GATHER_MAX);
  moe_tensor *src[MOE_GATHER_MAX];
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    if (!(src[i] = moe_lua_totensor(L, -1)))
      return luaL_error(L, "gather_rows: entry %d of the list is a %s, not a tensor", i + 1, type_of(L, -1));
    if (join_device(src[i]))
      return luaL_error(L, "gather_rows: entry %d of the list is on %s while an earlier tensor is on %s", i + 1,
                        dev_name(src[i]->device), dev_name(op_dev));
    lua_pop(L, 1); /* the list keeps it alive; the job retains it */
  }
  moe_tensor *idx = check_tensor(L, 2, "gather_rows");
  gather_box *g = lua_newuserdata(L, sizeof *g);
  g->j = NULL;
  if (luaL_newmetatable(L, GATHER_MT)) {
    lua_newtable(L);
    lua_pushcfunction(L, l_gather_finish);
    lua_setfield(L, -2, "finish");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gather_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  if (!(g->j = moe_gather_start(n, src, idx, IBASE))) return raise_engine(L);
  return 1;
}

/* auc_acc() -> an exact-AUC accumulator: acc:add(y, p[, w]) appends a batch
 * (no tensor is kept), acc:result() -> the area (raises roc_auc's errors),
 * acc:reset(), acc:count() -> values so far */
#define AUC_MT "moe.auc_acc"
static moe_auc_acc *check_acc(lua_State *L) { return luaL_checkudata(L, 1, AUC_MT); }
static int l_auc_acc_gc(lua_State *L) { moe_auc_acc_clear(check_acc(L)); return 0; }
static int l_auc_acc_add(lua_State *L) {
  moe_auc_acc *a = check_acc(L);
  /* values on the device are read through host copies */
  moe_tensor *in[3] = {check_tensor_any(L, 2, "auc"), check_tensor_any(L, 3, "auc"),
                       lua_isnoneornil(L, 4) ? NULL : check_tensor_any(L, 4, "auc")};
  moe_tensor *h[3] = {NULL, NULL, NULL};
  int rc = 0;
  for (int i = 0; i < 3 && !rc; i++)
    if (in[i] && !(h[i] = moe_to_device(in[i], MOE_CPU))) rc = -1;
  if (!rc) rc = moe_auc_acc_add(a, h[0], h[1], h[2]);
  for (int i = 0; i < 3; i++) moe_tensor_release(h[i]);
  if (rc) return raise_engine(L);
  return 0;
}
static int l_auc_acc_result(lua_State *L) {
  double auc;
  if (moe_auc_acc_result(check_acc(L), &auc)) return raise_engine(L);
  lua_pushnumber(L, auc);
  return 1;
}
static int l_auc_acc_reset(lua_State *L) { moe_auc_acc_clear(check_acc(L)); return 0; }
static int l_auc_acc_count(lua_State *L) { lua_pushnumber(L, (lua_Number)check_acc(L)->n); return 1; }
static int l_auc_acc(lua_State *L) {
  moe_auc_acc *a = lua_newuserdata(L, sizeof *a);
  memset(a, 0, sizeof *a);
  if (luaL_newmetatable(L, AUC_MT)) {
    static const luaL_Reg m[] = {{"add", l_auc_acc_add}, {"result", l_auc_acc_result},
                                 {"reset", l_auc_acc_reset}, {"count", l_auc_acc_count}, {NULL, NULL}};
    lua_newtable(L);
    luaL_register(L, NULL, m);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_auc_acc_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return 1;
}

/* a file path argument: a string (a number would be coerced into a file name),
 * non-empty and without NUL bytes (the C side would see a shorter name) */
static const char *check_path(lua_State *L, int idx, const char *fn) {
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "%s: argument #%d (the path) must be a string, got %s", fn, idx, type_of(L, idx));
  size_t n;
  const char *p = lua_tolstring(L, idx, &n);
  if (n == 0) luaL_error(L, "%s: argument #%d (the path) is an empty string", fn, idx);
  if (strlen(p) != n) luaL_error(L, "%s: argument #%d (the path) contains a NUL byte", fn, idx);
  return p;
}

/* pointers to the strings of the list at idx (none when nil), in a userdata
 * left on the stack; the strings live in the list, which is an argument */
static const char **string_list(lua_State *L, int idx, const char *what, int *n) {
  *n = 0;
  if (lua_isnoneornil(L, idx)) return NULL;
  luaL_checktype(L, idx, LUA_TTABLE);
  int len = (int)lua_objlen(L, idx);
  /* left on the stack (so the GC keeps it) until the call returns */
  const char **v = lua_newuserdata(L, sizeof(char *) * (size_t)(len ? len : 1));
  for (int i = 0; i < len; i++) {
    lua_rawgeti(L, idx, i + 1);
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "read_csv: %s must be a list of strings", what);
    v[i] = lua_tostring(L, -1);
    lua_pop(L, 1); /* the string stays alive in the list */
  }
  *n = len;
  return v;
}

/* read_csv(path, header, sep, skip, names|nil, na_values, typed_names, typed_numeric) ->
 * nrows, { {name=, values=float64 tensor} or {name=, codes=int32 tensor, levels={...}} ... } */
static int l_read_csv(lua_State *L) {
  const char *path = check_path(L, 1, "read_csv");
  moe_csv_options o = {0};
  o.header = lua_toboolean(L, 2);
  size_t seplen;
  const char *sep = luaL_checklstring(L, 3, &seplen);
  if (seplen != 1) luaL_error(L, "read_csv: sep must be one character, got '%s'", sep);
  o.sep = sep[0];
  o.skip = check_int(L, 4, "read_csv", "skip");
  if (o.skip < 0) luaL_error(L, "read_csv: skip must be >= 0, got %d", (int)o.skip);
  o.names = string_list(L, 5, "columns", &o.nnames);
  o.na = string_list(L, 6, "na_values", &o.nna);
  o.typed = string_list(L, 7, "dtypes", &o.ntyped);
  int *flags = NULL;
  if (o.ntyped) {
    luaL_checktype(L, 8, LUA_TTABLE);
    flags = lua_newuserdata(L, sizeof(int) * (size_t)o.ntyped);
    for (int i = 0; i < o.ntyped; i++) {
      lua_rawgeti(L, 8, i + 1);
      flags[i] = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
  }
  o.typed_numeric = flags;
  moe_csv_frame f;
  if (moe_csv_read(path, &o, &f)) return raise_engine(L);
  /* from here nothing may raise before f is freed: build tensors first */
  moe_tensor **ts = calloc((size_t)f.ncols, sizeof *ts);
  int ok = ts != NULL;
  for (int c = 0; ok && c < f.ncols; c++) {
    int64_t shape[1] = {f.nrows};
    moe_csv_column *col = &f.cols[c];
    ts[c] = moe_empty(1, shape, col->numeric ? MOE_F64 : MOE_I32);
    if (!ts[c]) { ok = 0; break; }
    if (f.nrows)
      memcpy(moe_data(ts[c]), col->numeric ? (void *)col->values : (void *)col->codes,
             (size_t)f.nrows * (col->numeric ? sizeof(double) : sizeof(int32_t)));
  }
  if (!ok) {
    for (int c = 0; ts && c < f.ncols; c++) moe_tensor_release(ts[c]);
    free(ts);
    moe_csv_free(&f);
    return luaL_error(L, "read_csv: out of memory");
  }
  lua_pushnumber(L, (lua_Number)f.nrows);
  lua_createtable(L, f.ncols, 0);
  for (int c = 0; c < f.ncols; c++) {
    moe_csv_column *col = &f.cols[c];
    lua_createtable(L, 0, 3);
    lua_pushstring(L, col->name);
    lua_setfield(L, -2, "name");
    box_tensor(L, ts[c]);
    ts[c] = NULL;
    lua_setfield(L, -2, col->numeric ? "values" : "codes");
    if (!col->numeric) {
      lua_createtable(L, (int)col->nlevels, 0);
      for (int64_t l = 0; l < col->nlevels; l++) {
        lua_pushstring(L, col->levels[l]);
        lua_rawseti(L, -2, (int)l + 1);
      }
      lua_setfield(L, -2, "levels");
    }
    lua_rawseti(L, -2, c + 1);
  }
  free(ts);
  moe_csv_free(&f);
  return 2;
}

/* ---------------------------------------------------------------- safetensors bytes */

/* st_save(path, header, tensors[, named_temp]): named_temp skips O_TMPFILE (the fallback, for tests) */
static int l_st_save(lua_State *L) {
  const char *path = check_path(L, 1, "save");
  size_t hlen;
  const char *header = luaL_checklstring(L, 2, &hlen);
  luaL_checktype(L, 3, LUA_TTABLE);
  int n = (int)lua_objlen(L, 3);
  moe_tensor **ts = lua_newuserdata(L, sizeof(moe_tensor *) * (size_t)(n ? n : 1));
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 3, i + 1);
    ts[i] = moe_lua_totensor(L, -1);
    lua_pop(L, 1);
    if (!ts[i]) return luaL_error(L, "save: entry %d is not a tensor", i + 1);
    if (ts[i]->device != MOE_CPU) return luaL_error(L, "save: entry %d is a CUDA tensor (save copies to the host first)", i + 1);
  }
  if (moe_st_save_ex(path, header, hlen, n, ts, lua_toboolean(L, 4) ? MOE_ST_NAMED_TEMP : 0)) return raise_engine(L);
  return 0;
}

/* st_checksum(string or host tensor) -> 16 hex digits of its XXH3-64 (a tensor's bytes as saved) */
static int l_st_checksum(lua_State *L) {
  uint64_t h;
  char hex[17];
  if (lua_type(L, 1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    h = moe_st_hash(s, n);
  } else {
    moe_tensor *t = moe_lua_totensor(L, 1);
    if (!t) return luaL_error(L, "st_checksum: expected a string or a tensor, got %s", luaL_typename(L, 1));
    if (moe_st_tensor_hash(t, &h)) return raise_engine(L);
  }
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  lua_pushstring(L, hex);
  return 1;
}

static int l_st_read_header(lua_State *L) {
  const char *path = check_path(L, 1, "load");
  char *h;
  size_t hlen;
  uint64_t start, size;
  if (moe_st_read_header(path, &h, &hlen, &start, &size)) return raise_engine(L);
  lua_pushlstring(L, h, hlen);
  free(h);
  lua_pushnumber(L, (lua_Number)start);
  lua_pushnumber(L, (lua_Number)size);
  return 3;
}

/* st_read_tensor(path, offset, nbytes, dtype, shape[, name, checksum]): with checksum
 * (16 hex digits), the bytes read must hash to it */
static int l_st_read_tensor(lua_State *L) {
  const char *path = check_path(L, 1, "load");
  double off = luaL_checknumber(L, 2), nb = luaL_checknumber(L, 3);
  moe_dtype dt;
  if (moe_dtype_from_name(luaL_checkstring(L, 4), &dt)) return luaL_error(L, "load: bad dtype");
  luaL_checktype(L, 5, LUA_TTABLE);
  const char *name = luaL_optstring(L, 6, "?");
  uint64_t expect = 0;
  int have = !lua_isnoneornil(L, 7);
  if (have) {
    size_t hl;
    const char *hex = luaL_checklstring(L, 7, &hl);
    char *end;
    errno = 0;
    expect = strtoull(hex, &end, 16);
    if (hl != 16 || errno || end != hex + 16 || hex[0] == '-' || hex[0] == '+' || hex[0] == ' ')
      return luaL_error(L, "load: '%s': tensor '%s' has a malformed checksum '%s'", path, name, hex);
  }
  int ndim = (int)lua_objlen(L, 5);
  if (ndim > MOE_MAX_DIMS) return luaL_error(L, "load: '%s': a tensor has %d dims (at most %d)", path, ndim, MOE_MAX_DIMS);
  int64_t shape[MOE_MAX_DIMS];
  for (int i = 0; i < ndim; i++) {
    lua_rawgeti(L, 5, i + 1);
    shape[i] = check_int(L, -1, "load", "a size");
    lua_pop(L, 1);
  }
  if (off < 0 || nb < 0 || off > 9e15 || nb > 9e15) return luaL_error(L, "load: '%s': bad offsets", path);
  return moe_lua_push(L, moe_st_read_tensor_checked(path, name, (uint64_t)off, (uint64_t)nb, dt, ndim, shape,
                                                    have ? &expect : NULL));
}

/* bce(y, p, from_logits) -> elementwise binary cross-entropy */
static int l_bce(lua_State *L) {
  moe_tensor *y = check_tensor(L, 1, "bce"), *p = check_tensor(L, 2, "bce");
  return moe_lua_push(L, moe_bce(y, p, lua_toboolean(L, 3)));
}

/* linear(x, w[, b[, activation[, precision]]]) -> act(x w + b) in one GEMM: activation nil,
 * "relu", "sigmoid" or "tanh"; precision nil, "fp32" or "bf16" (the backward GEMMs too) */
static int l_linear(lua_State *L) {
  moe_tensor *x = check_tensor(L, 1, "linear"), *w = check_tensor(L, 2, "linear");
  moe_tensor *b = lua_isnoneornil(L, 3) ? NULL : check_tensor(L, 3, "linear");
  int act = -1;
  if (!lua_isnoneornil(L, 4)) {
    const char *a = luaL_checkstring(L, 4);
    if (!strcmp(a, "relu")) act = MOE_RELU;
    else if (!strcmp(a, "sigmoid")) act = MOE_SIGMOID;
    else if (!strcmp(a, "tanh")) act = MOE_TANH;
    else if (strcmp(a, "linear")) return luaL_error(L, "linear: activation must be relu, sigmoid, tanh or linear, got '%s'", a);
  }
  moe_precision prec = opt_precision(L, 5, "linear");
  return moe_lua_push(L, moe_linear(x, w, b, act, prec));
}

/* mixture(h [B,U,E], g [B,E]) -> [B,U]: the gate-weighted sum of expert outputs */
static int l_mixture(lua_State *L) {
  moe_tensor *h = check_tensor(L, 1, "mixture"), *g = check_tensor(L, 2, "mixture");
  return moe_lua_push(L, moe_mixture(h, g));
}

/* gate_scale(h [B, E*U], g [B, E], {relu=bool, append_gate=bool}) */
static int l_gate_scale(lua_State *L) {
  moe_tensor *h = check_tensor(L, 1, "gate_scale"), *g = check_tensor(L, 2, "gate_scale");
  int relu = 0, append = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "relu");
    relu = lua_toboolean(L, -1);
    lua_getfield(L, 3, "append_gate");
    append = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  return moe_lua_push(L, moe_gate_scale(h, g, relu, append));
}

/* route_plan(expert_index [G,T,k], order|nil, valid|nil, E, capacity) -> token, expert, rank, counts */
static int l_route_plan(lua_State *L) {
  moe_tensor *ix = check_tensor(L, 1, "route_plan");
  moe_tensor *od = lua_isnoneornil(L, 2) ? NULL : check_tensor(L, 2, "route_plan");
  moe_tensor *vd = lua_isnoneornil(L, 3) ? NULL : check_tensor(L, 3, "route_plan");
  int64_t E = check_int(L, 4, "route_plan", "number of experts");
  int64_t C = check_int(L, 5, "route_plan", "capacity");
  moe_tensor *t, *e, *r, *c;
  if (moe_route_plan(ix, od, vd, E, C, IBASE, &t, &e, &r, &c)) return raise_engine(L);
  moe_lua_push(L, t);
  moe_lua_push(L, e);
  moe_lua_push(L, r);
  moe_lua_push(L, c);
  return 4;
}

/* grouped_matmul(x [A,K], w [E,K,N], counts [E][, precision]) or (x, w, bias [E,N], counts[, precision]) */
static int l_grouped_matmul(lua_State *L) {
  moe_tensor *x = check_tensor(L, 1, "grouped_matmul"), *w = check_tensor(L, 2, "grouped_matmul");
  moe_tensor *b = NULL, *c;
  int pi = 4;
  if (lua_isnoneornil(L, 4) || lua_type(L, 4) == LUA_TSTRING) c = check_tensor(L, 3, "grouped_matmul");
  else { b = check_tensor(L, 3, "grouped_matmul"); c = check_tensor(L, 4, "grouped_matmul"); pi = 5; }
  moe_precision prec = opt_precision(L, pi, "grouped_matmul");
  return moe_lua_push(L, moe_grouped_matmul(x, w, b, c, prec));
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

/* ---------------------------------------------------------------- registration */

static const luaL_Reg funcs[] = {
    {"tensor", l_tensor}, {"zeros", l_zeros}, {"ones", l_ones}, {"full", l_full}, {"empty", l_empty},
    {"rand", l_rand}, {"randn", l_randn}, {"randint", l_randint}, {"randperm", l_randperm},
    {"arange", l_arange}, {"linspace", l_linspace}, {"eye", l_eye}, {"manual_seed", l_manual_seed},
    {"blas_info", l_blas_info}, {"sgemm_info", l_sgemm_info}, {"sgemm_forget", l_sgemm_forget}, {"blas_choose", l_blas_choose}, {"blas_next_lower", l_blas_next_lower},
    {"bf16_info", l_bf16_info}, {"bf16_choose", l_bf16_choose},
    {"is_tensor", l_is_tensor}, {"live", l_live}, {"cat", l_cat}, {"stack", l_stack},
    {"set_grad_enabled", l_set_grad_enabled}, {"is_grad_enabled", l_is_grad_enabled},
    {"peak_bytes", l_peak_bytes}, {"empty_cache", l_empty_cache}, {"linear", l_linear}, {"bce", l_bce}, {"mixture", l_mixture}, {"gate_scale", l_gate_scale}, {"route_plan", l_route_plan}, {"grouped_matmul", l_grouped_matmul}, {"get_flat", l_get_flat}, {"set_flat", l_set_flat}, {"optim_step", l_optim_step},
    {"st_save", l_st_save}, {"read_csv", l_read_csv}, {"roc_auc", l_roc_auc}, {"auc_acc", l_auc_acc}, {"gather_rows", l_gather_rows}, {"shuffled_range", l_shuffled_range}, {"cuda_info", l_cuda_info}, {"backend_kernels", l_backend_kernels}, {"cuda_empty_cache", l_cuda_empty_cache}, {"cuda_precision", l_cuda_precision}, {"defer_interrupts", l_defer_interrupts}, {"take_interrupt", l_take_interrupt}, {"st_read_header", l_st_read_header}, {"st_read_tensor", l_st_read_tensor}, {"st_checksum", l_st_checksum},
    {NULL, NULL}};

/* functions that are also tensor methods */
static const luaL_Reg methods[] = {
    {"shape", l_shape}, {"cuda", l_cuda}, {"cpu", l_cpu}, {"size", l_size}, {"stride", l_stride}, {"dim", l_dim}, {"numel", l_numel},
    {"dtype", l_dtype}, {"device", l_device}, {"is_contiguous", l_is_contiguous},
    {"storage_offset", l_storage_offset}, {"same_storage", l_same_storage}, {"item", l_item},
    {"totable", l_totable}, {"view", l_view}, {"reshape", l_reshape}, {"expand", l_expand},
    {"transpose", l_transpose}, {"permute", l_permute}, {"narrow", l_narrow}, {"select", l_select},
    {"squeeze", l_squeeze}, {"unsqueeze", l_unsqueeze}, {"contiguous", l_contiguous},
    {"clone", l_clone}, {"to", l_to}, {"copy_", l_copy_}, {"fill_", l_fill_}, {"clamp", l_clamp},
    {"where", l_where}, {"matmul", l_matmul}, {"topk", l_topk}, {"sort", l_sort},
 {"gather", l_gather}, {"scatter_add", l_scatter_add},
    {"scatter_add_", l_scatter_add_}, {"index_select", l_index_select}, {"index_add", l_index_add},
    {"index_add_", l_index_add_}, {"bincount", l_bincount}, {"backward", l_backward},
    {"detach", l_detach}, {"requires_grad_", l_requires_grad_}, {"has_grad", l_has_grad}, {NULL, NULL}};

/* every function of the module runs through here: upvalue 1 is the function's
 * own (an op code, or nil), upvalue 2 the function */
static int tramp(lua_State *L) {
  lua_CFunction f = (lua_CFunction)(uintptr_t)lua_touserdata(L, lua_upvalueindex(2));
  const char *prev_op = cur_op;
  cur_op = lua_tostring(L, lua_upvalueindex(3));
  op_dev = -1;
  int r = f(L);
  cur_op = prev_op;
  if (op_dev == MOE_CUDA) {
    char msg[320];
    if (moe_cuda_take_error(msg, sizeof msg)) return luaL_error(L, "%s", msg);
  }
  return r;
}

/* f as a closure over (upvalue or nil, f, the name errors give it) through tramp */
static void push_wrapped(lua_State *L, lua_CFunction f, int has_upvalue, const char *name) {
  if (!has_upvalue) lua_pushnil(L);
  lua_pushlightuserdata(L, (void *)(uintptr_t)f);
  lua_pushstring(L, name);
  lua_pushcclosure(L, tramp, 3);
}

static void set_closure(lua_State *L, int methods_idx, int funcs_idx, const char *name, lua_CFunction f, int op) {
  lua_pushinteger(L, op);
  push_wrapped(L, f, 1, name);
  lua_pushvalue(L, -1);
  lua_setfield(L, methods_idx, name);
  lua_setfield(L, funcs_idx, name);
}

/* ---------------------------------------------------------------- the host's paths */

/* the directory holding lua/moe: $MOELUA_ROOT, or the parent of build/ next to the binary */
void moe_lua_find_root(char *root, size_t n) {
  const char *env = getenv("MOELUA_ROOT");
  if (env && *env) { snprintf(root, n, "%s", env); return; }
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) { snprintf(root, n, "."); return; }
  exe[len] = 0;
  char *slash = strrchr(exe, '/');
  if (slash) *slash = 0; /* build dir */
  slash = strrchr(exe, '/');
  if (slash) *slash = 0; /* project root */
  snprintf(root, n, "%s", exe);
}

/* package.path starts with the root's lua/ directories, and moe.core (linked
 * into the calling binary) is preloaded */
void moe_lua_setup_paths(lua_State *L) {
  char root[PATH_MAX], buf[3 * PATH_MAX + 64];
  moe_lua_find_root(root, sizeof root);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  snprintf(buf, sizeof buf, "%s/lua/?.lua;%s/lua/?/init.lua;%s", root, root, lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_pushstring(L, buf);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_moe_core);
  lua_setfield(L, -2, "moe.core");
  lua_pop(L, 2);
}

int luaopen_moe_core(lua_State *L) {
  /* refuse a LuaJIT built without GC64: 64-bit pointers in userdata and large heaps need it */
  if (luaL_dostring(L, "local ok, ffi = pcall(require, 'ffi') return ok and ffi.abi('gc64')") || !lua_toboolean(L, -1))
    return luaL_error(L, "moe: this LuaJIT is not a GC64 build; moelua needs LuaJIT 2.1 built with "
                         "LUAJIT_ENABLE_GC64 (Debian's luajit on amd64 is)");
  lua_pop(L, 1);
  /* the library's directory, as its chunks' names spell it: errors point past its frames */
  if (!luaL_dostring(L, "local ok, p = pcall(package.searchpath, 'moe', package.path) "
                        "return ok and p and p:match('^(.*/)init%.lua$')") &&
      lua_isstring(L, -1))
    snprintf(lib_dir, sizeof lib_dir, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  const char *sgemm_err = moe_sgemm_check();
  if (sgemm_err) return luaL_error(L, "moe: %s", sgemm_err);

  /* Tensor outputs are freed by the Lua GC, in batches: keep freed memory in the
   * heap instead of returning it to the OS, so reallocating it does not page-fault
   * (a large share of a 256^3 matmul's time otherwise). */
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);

  lua_newtable(L); /* module */
  int mod = lua_gettop(L);
  for (const luaL_Reg *r = funcs; r->name; r++) {
    push_wrapped(L, r->func, 0, r->name);
    lua_setfield(L, mod, r->name);
  }
  lua_pushboolean(L, moe_allocator_caches());
  lua_setfield(L, mod, "allocator_caches");
  lua_newtable(L); /* methods */
  int meth = lua_gettop(L);
  for (const luaL_Reg *r = methods; r->name; r++) {
    push_wrapped(L, r->func, 0, r->name);
    lua_pushvalue(L, -1);
    lua_setfield(L, meth, r->name);
    lua_setfield(L, mod, r->name);
  }
  for (int op = 0; op < MOE_NBINOPS; op++) {
    set_closure(L, meth, mod, moe_binop_name((moe_binop)op), l_binary, op);
    char n[32];
    snprintf(n, sizeof n, "%s_", moe_binop_name((moe_binop)op));
    if (op <= MOE_MINIMUM) set_closure(L, meth, mod, n, l_binary_, op);
  }
  for (int op = 0; op < MOE_NUNOPS; op++)
    if (op != MOE_CLAMP) set_closure(L, meth, mod, moe_unop_name((moe_unop)op), l_unary, op);
  for (int op = 0; op < MOE_NREDOPS; op++) set_closure(L, meth, mod, moe_redop_name((moe_redop)op), l_reduce, op);
  static const char *scans[] = {"softmax", "log_softmax", "cumsum", "cumprod"};
  for (int op = 0; op < 4; op++) set_closure(L, meth, mod, scans[op], l_scan, op);

  /* metatable */
  luaL_newmetatable(L, MT_NAME);
  int mt = lua_gettop(L);
  lua_pushvalue(L, mt);
  mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  mt_ptr = lua_topointer(L, mt);
  lua_pushcfunction(L, t_gc);
  lua_setfield(L, mt, "__gc");
  lua_pushvalue(L, meth);
  push_wrapped(L, t_index, 1, "index");
  lua_setfield(L, mt, "__index");
  push_wrapped(L, t_newindex, 0, "newindex");
  lua_setfield(L, mt, "__newindex");
  push_wrapped(L, t_len, 0, "len");
  lua_setfield(L, mt, "__len");
  static const struct { const char *mm; int op; } arith[] = {
      {"__add", MOE_ADD}, {"__sub", MOE_SUB}, {"__mul", MOE_MUL}, {"__div", MOE_DIV}, {"__pow", MOE_POW}};
  for (size_t i = 0; i < sizeof arith / sizeof *arith; i++) {
    lua_pushinteger(L, arith[i].op);
    push_wrapped(L, l_binary, 1, arith[i].mm + 2);
    lua_setfield(L, mt, arith[i].mm);
  }
  lua_pushinteger(L, MOE_NEG);
  push_wrapped(L, l_unary, 1, "neg");
  lua_setfield(L, mt, "__unm");
  lua_pushstring(L, MT_NAME);
  lua_setfield(L, mt, "__name");

  lua_pushvalue(L, meth);
  lua_setfield(L, mod, "Tensor");
  lua_pushvalue(L, mt);
  lua_setfield(L, mod, "metatable");
  lua_pop(L, 1); /* mt */
  lua_pop(L, 1); /* methods */
  return 1;
}
