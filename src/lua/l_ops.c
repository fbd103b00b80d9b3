/* l_ops.c -- elementwise math (the binary and unary ops, clamp, where),
 * reductions and scans, matmul, topk/sort, gather/scatter/index ops, bincount,
 * cat/stack. The binary, unary, reduction and scan ops are one function each,
 * made into one closure per op code by luaopen_moe_core. */
#include <math.h>
#include <stdio.h>

#include "binding_impl.h"
#include "../core/index_impl.h"
#ifdef MOE_WITH_CUDA
#include "../cuda/cuda.h"
#endif

/* ---------------------------------------------------------------- math */

/* binary ops: upvalue 1 is the moe_binop */
int moe_l_binary(lua_State *L) {
  moe_binop op = (moe_binop)lua_tointeger(L, lua_upvalueindex(1));
  moe_tensor *a = moe_l_opt_tensor(L, 1, moe_binop_name(op)), *b = moe_l_opt_tensor(L, 2, moe_binop_name(op));
  if (a && b) return moe_lua_push(L, moe_binary(op, a, b));
  if (a && lua_type(L, 2) == LUA_TNUMBER) return moe_lua_push(L, moe_binary_scalar(op, a, lua_tonumber(L, 2), 0));
  if (b && lua_type(L, 1) == LUA_TNUMBER) return moe_lua_push(L, moe_binary_scalar(op, b, lua_tonumber(L, 1), 1));
  return luaL_error(L, "%s: expected tensors or numbers, got %s and %s", moe_binop_name(op), moe_l_type_of(L, 1),
                    moe_l_type_of(L, 2));
}

/* in-place binary ops: a:add_(b) */
int moe_l_binary_(lua_State *L) {
  moe_binop op = (moe_binop)lua_tointeger(L, lua_upvalueindex(1));
  char name[32];
  snprintf(name, sizeof name, "%s_", moe_binop_name(op));
  moe_tensor *a = moe_l_check_tensor(L, 1, name);
  moe_tensor *b = moe_l_opt_tensor(L, 2, name);
  int rc;
  if (b) rc = moe_binary_(op, a, b);
  else if (lua_type(L, 2) == LUA_TNUMBER) {
    rc = moe_binary_scalar_(op, a, lua_tonumber(L, 2));
  } else return luaL_error(L, "%s: argument #2 must be a tensor or number, got %s", name, moe_l_type_of(L, 2));
  if (rc) return moe_l_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

int moe_l_unary(lua_State *L) {
  moe_unop op = (moe_unop)lua_tointeger(L, lua_upvalueindex(1));
  moe_tensor *a = moe_l_check_tensor(L, 1, moe_unop_name(op));
  return moe_lua_push(L, moe_unary(op, a, 0, 0));
}

static int l_clamp(lua_State *L) {
  moe_tensor *a = moe_l_check_tensor(L, 1, "clamp");
  if (lua_istable(L, 2)) {
    lua_settop(L, 2);
    lua_getfield(L, 2, "min");
    lua_getfield(L, 2, "max");
    lua_remove(L, 2); /* -> x, min, max */
  }
  if (!lua_isnil(L, 2) && lua_type(L, 2) != LUA_TNUMBER)
    luaL_error(L, "clamp: min must be a number or nil, got %s", moe_l_type_of(L, 2));
  if (!lua_isnoneornil(L, 3) && lua_type(L, 3) != LUA_TNUMBER)
    luaL_error(L, "clamp: max must be a number or nil, got %s", moe_l_type_of(L, 3));
  double lo = lua_isnoneornil(L, 2) ? -INFINITY : lua_tonumber(L, 2);
  double hi = lua_isnoneornil(L, 3) ? INFINITY : lua_tonumber(L, 3);
  return moe_lua_push(L, moe_unary(MOE_CLAMP, a, lo, hi));
}

static int l_where(lua_State *L) {
  moe_tensor *c = moe_l_check_tensor(L, 1, "where");
  moe_tensor *a = moe_l_opt_tensor(L, 2, "where"), *b = moe_l_opt_tensor(L, 3, "where");
  int ty2 = lua_type(L, 2), ty3 = lua_type(L, 3);
  if (!a && ty2 != LUA_TNUMBER)
    luaL_error(L, "where: argument #2 must be a tensor or number, got %s", moe_l_type_of(L, 2));
  if (!b && ty3 != LUA_TNUMBER)
    luaL_error(L, "where: argument #3 must be a tensor or number, got %s", moe_l_type_of(L, 3));
  /* a scalar branch takes the other branch's dtype (float32 if both are scalars) */
  moe_dtype dt = a ? a->dtype : (b ? b->dtype : MOE_F32);
  double va = lua_tonumber(L, 2), vb = lua_tonumber(L, 3);
  if (!moe_dtype_is_float(dt) && ((!a && va != floor(va)) || (!b && vb != floor(vb)))) dt = MOE_F32;
  moe_tensor *ta = a ? a : moe_from_doubles(0, NULL, dt, &va);
  moe_tensor *tb = b ? b : moe_from_doubles(0, NULL, dt, &vb);
  if (c->device != MOE_CPU) { /* a number becomes a one-element tensor on the condition's device */
    moe_tensor *t;
    if (!a && ta) {
      t = moe_to_device(ta, c->device);
      moe_tensor_release(ta);
      ta = t;
    }
    if (!b && tb) {
      t = moe_to_device(tb, c->device);
      moe_tensor_release(tb);
      tb = t;
    }
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
  if (lua_type(L, idx) == LUA_TNUMBER) return 1u << moe_l_check_dim_arg(L, idx, t, op, 0);
  if (!lua_istable(L, idx))
    luaL_error(L, "%s: dim must be a number or a table of numbers, got %s", op, moe_l_type_of(L, idx));
  unsigned m = 0;
  int n = (int)lua_objlen(L, idx);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    m |= 1u << moe_l_norm_dim(L, t, moe_l_check_int(L, -1, op, "dim"), op, 0);
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

int moe_l_reduce(lua_State *L) {
  moe_redop op = (moe_redop)lua_tointeger(L, lua_upvalueindex(1));
  const char *name = moe_redop_name(op);
  moe_tensor *t = moe_l_check_tensor(L, 1, name);
  /* max(a, b) / min(a, b) with a tensor or number second argument: elementwise */
  if ((op == MOE_RMAX || op == MOE_RMIN) && (moe_lua_totensor(L, 2))) {
    return moe_lua_push(L, moe_binary(op == MOE_RMAX ? MOE_MAXIMUM : MOE_MINIMUM, t, moe_l_opt_tensor(L, 2, name)));
  }
  unsigned dims = parse_dims(L, 2, t, name);
  int correction = 1;
  if ((op == MOE_RVAR || op == MOE_RSTD) && lua_type(L, 4) == LUA_TBOOLEAN) correction = lua_toboolean(L, 4);
  int keepdim = parse_keepdim(L, 3, &correction);
  int want_idx = (op == MOE_RMAX || op == MOE_RMIN) && lua_type(L, 2) == LUA_TNUMBER;
  moe_tensor *idx = NULL;
  moe_tensor *out = moe_reduce(op, t, dims, keepdim, correction, want_idx ? &idx : NULL, IBASE);
  if (!out) return moe_l_raise_engine(L);
  if (want_idx) return moe_l_push_pair(L, 0, out, idx);
  return moe_lua_push(L, out);
}

int moe_l_scan(lua_State *L) {
  moe_scanop op = (moe_scanop)lua_tointeger(L, lua_upvalueindex(1));
  static const char *names[] = {"softmax", "log_softmax", "cumsum", "cumprod"};
  moe_tensor *t = moe_l_check_tensor(L, 1, names[op]);
  if (t->ndim == 0) luaL_error(L, "%s: needs at least 1 dim, got a 0-dim tensor", names[op]);
  int d = moe_l_opt_dim_arg(L, 2, t, names[op], t->ndim - 1);
  return moe_lua_push(L, moe_scan(op, t, d));
}

/* ---------------------------------------------------------------- matmul, sort, index */

/* matmul(a, b[, precision]) */
static int l_matmul(lua_State *L) {
  moe_tensor *a = moe_l_check_tensor(L, 1, "matmul"), *b = moe_l_check_tensor(L, 2, "matmul");
  moe_precision prec = moe_l_opt_precision(L, 3, "matmul");
  return moe_lua_push(L, moe_matmul_prec(a, b, prec));
}

static int l_topk(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "topk");
  int64_t k = moe_l_check_int(L, 2, "topk", "k");
  if (t->ndim == 0) luaL_error(L, "topk: needs at least 1 dim, got a 0-dim tensor");
  int d = moe_l_opt_dim_arg(L, 3, t, "topk", t->ndim - 1);
  int largest = lua_isnoneornil(L, 4) ? 1 : lua_toboolean(L, 4);
  moe_tensor *v = NULL, *i = NULL;
  int rc = moe_topk(t, k, d, largest, &v, &i, IBASE);
  return moe_l_push_pair(L, rc, v, i);
}

static int l_sort(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "sort");
  if (t->ndim == 0) luaL_error(L, "sort: needs at least 1 dim, got a 0-dim tensor");
  int d = moe_l_opt_dim_arg(L, 2, t, "sort", t->ndim - 1);
  moe_tensor *v = NULL, *i = NULL;
  int rc = moe_sort(t, d, lua_toboolean(L, 3), &v, &i, IBASE);
  return moe_l_push_pair(L, rc, v, i);
}

static int l_gather(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "gather");
  int d = moe_l_check_dim_arg(L, 2, t, "gather", 0);
  return moe_lua_push(L, moe_gather(t, d, moe_l_check_tensor(L, 3, "gather"), IBASE));
}

/* scatter_add / index_add and their in-place forms: (t, dim, index, src) */
typedef moe_tensor *(*accumulate_fn)(const moe_tensor *, int, const moe_tensor *, const moe_tensor *, int64_t, int);
static int accumulate(lua_State *L, const char *op, accumulate_fn fn, int inplace) {
  moe_tensor *t = moe_l_check_tensor(L, 1, op);
  int d = moe_l_check_dim_arg(L, 2, t, op, 0);
  moe_tensor *out = fn(t, d, moe_l_check_tensor(L, 3, op), moe_l_check_tensor(L, 4, op), IBASE, inplace);
  if (!inplace) return moe_lua_push(L, out);
  if (!out) return moe_l_raise_engine(L);
  moe_tensor_release(out); /* the in-place result is t itself */
  lua_settop(L, 1);
  return 1;
}
static int l_scatter_add(lua_State *L) { return accumulate(L, "scatter_add", moe_scatter_add, 0); }
static int l_scatter_add_(lua_State *L) { return accumulate(L, "scatter_add_", moe_scatter_add, 1); }
static int l_index_add(lua_State *L) { return accumulate(L, "index_add", moe_index_add, 0); }
static int l_index_add_(lua_State *L) { return accumulate(L, "index_add_", moe_index_add, 1); }

static int l_index_select(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "index_select");
  int d = moe_l_check_dim_arg(L, 2, t, "index_select", 0);
  return moe_lua_push(L, moe_index_select(t, d, moe_l_check_tensor(L, 3, "index_select"), IBASE));
}

static int l_bincount(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "bincount");
  moe_tensor *w = NULL;
  int64_t minlength = 0;
  if (lua_istable(L, 2) && !moe_lua_totensor(L, 2)) {
    lua_getfield(L, 2, "weights");
    if (!lua_isnil(L, -1)) w = moe_l_check_tensor(L, -1, "bincount");
    lua_getfield(L, 2, "minlength");
    if (!lua_isnil(L, -1)) minlength = moe_l_check_int(L, -1, "bincount", "minlength");
    lua_pop(L, 2);
  } else {
    if (!lua_isnoneornil(L, 2)) w = moe_l_check_tensor(L, 2, "bincount");
    if (!lua_isnoneornil(L, 3)) minlength = moe_l_check_int(L, 3, "bincount", "minlength");
  }
  return moe_lua_push(L, moe_bincount(t, w, minlength, IBASE));
}

static int l_catstack(lua_State *L, int stack) {
  const char *op = stack ? "stack" : "cat";
  if (!lua_istable(L, 1) || moe_lua_totensor(L, 1))
    luaL_error(L, "%s: argument #1 must be a list of tensors, got %s", op, moe_l_type_of(L, 1));
  int n = (int)lua_objlen(L, 1);
  if (n < 1) luaL_error(L, "%s: expected a non-empty list of tensors", op);
  lua_settop(L, 2); /* the scratch below must not look like a dim argument */
  moe_tensor **ts = lua_newuserdata(L, sizeof(moe_tensor *) * (size_t)n); /* GC-owned scratch */
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    ts[i] = moe_lua_totensor(L, -1);
    if (!ts[i]) luaL_error(L, "%s: entry %d of the list is a %s, not a tensor", op, i + 1, moe_l_type_of(L, -1));
    if (moe_l_join_device(ts[i]))
      luaL_error(L, "%s: entry %d of the list is on %s while entry 1 is on %s", op, i + 1,
                 moe_l_dev_name(ts[i]->device), moe_l_dev_name(moe_l_op_dev));
    lua_pop(L, 1);
  }
  int d = 0;
  if (!lua_isnoneornil(L, 2)) d = moe_l_norm_dim(L, ts[0], moe_l_check_int(L, 2, op, "dim"), op, stack);
  return moe_lua_push(L, stack ? moe_stack(n, ts, d) : moe_cat(n, ts, d));
}
static int l_cat(lua_State *L) { return l_catstack(L, 0); }
static int l_stack(lua_State *L) { return l_catstack(L, 1); }

/* moe.set_deterministic(on): the device's float scatters sum in source order (moe.h) */
static int l_set_deterministic(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, moe_set_deterministic(lua_toboolean(L, 1)));
  return 1;
}
static int l_get_deterministic(lua_State *L) {
  lua_pushboolean(L, moe_get_deterministic());
  return 1;
}
/* moe.core.index_checks(): how many index tensors the index ops have checked
 * (engine-made ones skip it; a counter for the specs) */
static int l_index_checks(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moe_index_checks());
  return 1;
}
/* moe.core.cuda_gemm_limit([n]): the old limit on cuBLAS's sizes; n > 0 sets it
 * (the specs lower it to reach the split and the error); 0 without the backend */
static int l_cuda_gemm_limit(lua_State *L) {
  int64_t lim = lua_isnoneornil(L, 1) ? 0 : (int64_t)luaL_checknumber(L, 1);
#ifdef MOE_WITH_CUDA
  lua_pushnumber(L, (lua_Number)moe_cuda_gemm_limit(lim));
#else
  (void)lim;
  lua_pushnumber(L, 0);
#endif
  return 1;
}

const luaL_Reg moe_l_ops_funcs[] = {{"cat", l_cat},
                                    {"stack", l_stack},
                                    {"set_deterministic", l_set_deterministic},
                                    {"get_deterministic", l_get_deterministic},
                                    {"index_checks", l_index_checks},
                                    {"cuda_gemm_limit", l_cuda_gemm_limit},
                                    {NULL, NULL}};

const luaL_Reg moe_l_ops_methods[] = {{"clamp", l_clamp},
                                      {"where", l_where},
                                      {"matmul", l_matmul},
                                      {"topk", l_topk},
                                      {"sort", l_sort},
                                      {"gather", l_gather},
                                      {"scatter_add", l_scatter_add},
                                      {"scatter_add_", l_scatter_add_},
                                      {"index_select", l_index_select},
                                      {"index_add", l_index_add},
                                      {"index_add_", l_index_add_},
                                      {"bincount", l_bincount},
                                      {NULL, NULL}};
