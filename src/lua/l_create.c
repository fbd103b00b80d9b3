/* l_create.c -- new tensors: zeros/ones/full/empty, rand/randn/randint/randperm,
 * arange/linspace/eye, manual_seed, and tensor() from a nested table, a number
 * or another tensor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "binding_impl.h"

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
      if (lua_objlen(L, start) == 0 && lua_next(L, start)) {
        lua_pop(L, 2);
        return start;
      }
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

/* ---------------------------------------------------------------- creation */

/* push a freshly created tensor, a leaf that requires grad when asked to */
static int push_created(lua_State *L, moe_tensor *t, const create_opts *o, const char *op) {
  if (t && t->device != o->device) { /* made on the host: moved to the device asked for */
    int prev = moe_set_grad_enabled(0);
    moe_tensor *d = moe_to_device(t, o->device);
    moe_set_grad_enabled(prev);
    moe_tensor_release(t);
    t = d;
  }
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
  if (dt == MOE_I32) {
    *lo = -2147483648.0;
    *hi = 2147483648.0;
    return 1;
  }
  if (dt == MOE_I64) {
    *lo = -9223372036854775808.0;
    *hi = 9223372036854775808.0;
    return 1;
  }
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
  create_opts o = moe_l_parse_opts(L, next, op, MOE_F32);
  check_value_fits(L, op, value, o.dtype);
  return push_created(L, moe_full_on(o.device, ndim, shape, o.dtype, value), &o, op);
}
static int l_zeros(lua_State *L) { return l_full_impl(L, "zeros", 0, 0); }
static int l_ones(lua_State *L) { return l_full_impl(L, "ones", 1, 0); }
static int l_full(lua_State *L) { return l_full_impl(L, "full", 0, 1); }
static int l_empty(lua_State *L) {
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int next = parse_sizes(L, 1, "empty", &ndim, shape);
  create_opts o = moe_l_parse_opts(L, next, "empty", MOE_F32);
  return push_created(L, moe_empty_on(o.device, ndim, shape, o.dtype), &o, "empty");
}

static int l_rand_impl(lua_State *L, int normal) {
  const char *op = normal ? "randn" : "rand";
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int next = parse_sizes(L, 1, op, &ndim, shape);
  create_opts o = moe_l_parse_opts(L, next, op, MOE_F32);
  if (!moe_dtype_is_float(o.dtype))
    luaL_error(L, "%s: dtype must be float32 or float64, got %s", op, moe_dtype_name(o.dtype));
  /* drawn on the device itself, from the same Philox counters as on the host */
  return push_created(L,
                      normal ? moe_randn_on(o.device, ndim, shape, o.dtype, 0, 1)
                             : moe_rand_on(o.device, ndim, shape, o.dtype, 0, 1),
                      &o, op);
}
static int l_rand(lua_State *L) { return l_rand_impl(L, 0); }
static int l_randn(lua_State *L) { return l_rand_impl(L, 1); }

static int l_randint(lua_State *L) {
  int64_t lo = moe_l_check_int(L, 1, "randint", "low"), hi = moe_l_check_int(L, 2, "randint", "high");
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  int next = parse_sizes(L, 3, "randint", &ndim, shape);
  create_opts o = moe_l_parse_opts(L, next, "randint", MOE_I64);
  return push_created(L, moe_randint(lo, hi, ndim, shape, o.dtype), &o, "randint");
}

static int l_randperm(lua_State *L) {
  int64_t n = moe_l_check_int(L, 1, "randperm", "n");
  create_opts o = moe_l_parse_opts(L, 2, "randperm", MOE_I64);
  return push_created(L, moe_randperm(n, o.dtype, IBASE), &o, "randperm");
}

static int l_arange(lua_State *L) {
  int nnum = 0;
  while (lua_type(L, nnum + 1) == LUA_TNUMBER) nnum++;
  if (nnum < 1 || nnum > 3) luaL_error(L, "arange: expected (end), (start, end) or (start, end, step)");
  double a = lua_tonumber(L, 1), b = nnum > 1 ? lua_tonumber(L, 2) : 0, s = nnum > 2 ? lua_tonumber(L, 3) : 1;
  if (nnum == 1) {
    b = a;
    a = 0;
  }
  int all_int = a == floor(a) && b == floor(b) && s == floor(s);
  create_opts o = moe_l_parse_opts(L, nnum + 1, "arange", all_int ? MOE_I64 : MOE_F32);
  return push_created(L, moe_arange(a, b, s, o.dtype), &o, "arange");
}

static int l_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  int64_t n = moe_l_check_int(L, 3, "linspace", "steps");
  create_opts o = moe_l_parse_opts(L, 4, "linspace", MOE_F32);
  return push_created(L, moe_linspace(a, b, n, o.dtype), &o, "linspace");
}

static int l_eye(lua_State *L) {
  int64_t n = moe_l_check_int(L, 1, "eye", "n"), m = n;
  int next = 2;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    m = moe_l_check_int(L, 2, "eye", "m");
    next = 3;
  }
  if (n < 0 || m < 0) luaL_error(L, "eye: negative size (%d, %d)", (int)n, (int)m);
  create_opts o = moe_l_parse_opts(L, next, "eye", MOE_F32);
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

typedef struct {
  double *buf;
  int64_t n, cap;
  int ndim, saw_bool, saw_num;
  int64_t shape[MOE_MAX_DIMS];
} walk_state;

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
        luaL_error(L, "tensor: %s has a nil before entry [%.0f] (a hole in the list: use 0/0 for a missing value)", p,
                   k);
      if (lua_type(L, -1) == LUA_TNUMBER)
        luaL_error(L, "tensor: %s has the key [%s], which is not a list position (lists start at 1)", p,
                   lua_tostring(L, -1));
      luaL_error(L, "tensor: %s has the key %s, which is not a list position (options go in the second argument)", p,
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
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
      if (ty == LUA_TBOOLEAN) {
        w->saw_bool = 1;
        w->buf[w->n++] = lua_toboolean(L, -1);
      } else {
        w->saw_num = 1;
        w->buf[w->n++] = lua_tonumber(L, -1);
      }
    } else {
      path_str(depth + 1, path, p);
      luaL_error(L, "tensor: non-numeric entry at %s (a %s)", p, moe_l_type_of(L, -1));
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
    create_opts o = moe_l_parse_opts(L, 2, "tensor", src->dtype);
    if (!o.has_device && moe_l_default_device == MOE_CPU) o.device = src->device;
    moe_tensor *c = moe_to_dtype(src, o.dtype);
    if (c == src) {
      moe_tensor_release(c);
      c = moe_clone(src);
    }
    if (c && c->grad_fn) {
      moe_tensor *d = moe_detach(c);
      moe_tensor_release(c);
      c = d;
    } /* a copy is a new leaf */
    return push_created(L, c, &o, "tensor");
  }
  if (ty == LUA_TNUMBER || ty == LUA_TBOOLEAN) {
    create_opts o = moe_l_parse_opts(L, 2, "tensor", ty == LUA_TBOOLEAN ? MOE_BOOL : MOE_F32);
    double v = ty == LUA_TBOOLEAN ? lua_toboolean(L, 1) : lua_tonumber(L, 1);
    check_value_fits(L, "tensor", v, o.dtype);
    return push_created(L, moe_from_doubles(0, NULL, o.dtype, &v), &o, "tensor");
  }
  if (ty != LUA_TTABLE)
    luaL_error(L, "tensor: expected a (nested) table, number or tensor, got %s", moe_l_type_of(L, 1));
  create_opts o = moe_l_parse_opts(L, 2, "tensor", MOE_F32); /* before anything is allocated */
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

/* set_default_device("cpu" | "cuda"): where creation functions put new tensors
 * (moe.set_default_device checks the device first) */
static int l_set_default_device(lua_State *L) {
  const char *d = luaL_checkstring(L, 1);
  moe_l_default_device = !strcmp(d, "cuda") ? MOE_CUDA : MOE_CPU;
  return 0;
}

const luaL_Reg moe_l_create_funcs[] = {{"tensor", l_tensor},
                                       {"set_default_device", l_set_default_device},
                                       {"zeros", l_zeros},
                                       {"ones", l_ones},
                                       {"full", l_full},
                                       {"empty", l_empty},
                                       {"rand", l_rand},
                                       {"randn", l_randn},
                                       {"randint", l_randint},
                                       {"randperm", l_randperm},
                                       {"arange", l_arange},
                                       {"linspace", l_linspace},
                                       {"eye", l_eye},
                                       {"manual_seed", l_manual_seed},
                                       {NULL, NULL}};
