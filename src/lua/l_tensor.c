/* l_tensor.c -- a tensor's info (shape, dtype, ...), item/totable, views,
 * copies and dtype or device moves, and indexing: t[i], t[{...}], t.grad and
 * the other autograd fields (the metatable's __index, __newindex and __len). */
#include <string.h>

#include "binding_impl.h"

/* view/reshape/expand sizes: like parse_sizes but -1 is allowed */
static int parse_view_sizes(lua_State *L, int start, const char *op, int *ndim, int64_t *shape) {
  int n = 0, top = lua_gettop(L);
  if (lua_istable(L, start)) {
    n = (int)lua_objlen(L, start);
    if (n > MOE_MAX_DIMS) luaL_error(L, "%s: %d sizes given, at most %d dims", op, n, MOE_MAX_DIMS);
    for (int k = 1; k <= n; k++) {
      lua_rawgeti(L, start, k);
      shape[k - 1] = moe_l_check_int(L, -1, op, "size");
      lua_pop(L, 1);
    }
  } else {
    for (int i = start; i <= top; i++) {
      if (n >= MOE_MAX_DIMS) luaL_error(L, "%s: more than %d sizes given", op, MOE_MAX_DIMS);
      shape[n++] = moe_l_check_int(L, i, op, "size");
    }
  }
  *ndim = n;
  return 0;
}

/* ---------------------------------------------------------------- info */

static int l_shape(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "shape");
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushnumber(L, (lua_Number)t->shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}
static int l_stride(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "stride");
  if (!lua_isnoneornil(L, 2)) {
    lua_pushnumber(L, (lua_Number)t->stride[moe_l_check_dim_arg(L, 2, t, "stride", 0)]);
    return 1;
  }
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushnumber(L, (lua_Number)t->stride[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}
static int l_size(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "size");
  if (lua_isnoneornil(L, 2)) return l_shape(L);
  lua_pushnumber(L, (lua_Number)t->shape[moe_l_check_dim_arg(L, 2, t, "size", 0)]);
  return 1;
}
static int l_dim(lua_State *L) {
  lua_pushinteger(L, moe_l_check_tensor_any(L, 1, "dim")->ndim);
  return 1;
}
static int l_numel(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moe_numel(moe_l_check_tensor_any(L, 1, "numel")));
  return 1;
}
static int l_dtype(lua_State *L) {
  lua_pushstring(L, moe_dtype_name(moe_l_check_tensor_any(L, 1, "dtype")->dtype));
  return 1;
}
static int l_device(lua_State *L) {
  lua_pushstring(L, moe_l_check_tensor_any(L, 1, "device")->device == MOE_CUDA ? "cuda" : "cpu");
  return 1;
}
static int l_is_contiguous(lua_State *L) {
  lua_pushboolean(L, moe_is_contiguous(moe_l_check_tensor_any(L, 1, "is_contiguous")));
  return 1;
}
static int l_storage_offset(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moe_l_check_tensor_any(L, 1, "storage_offset")->offset);
  return 1;
}
static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, moe_lua_totensor(L, 1) != NULL);
  return 1;
}
static int l_same_storage(lua_State *L) {
  lua_pushboolean(
      L, moe_same_storage(moe_l_check_tensor_any(L, 1, "same_storage"), moe_l_check_tensor_any(L, 2, "same_storage")));
  return 1;
}

static void push_elem(lua_State *L, moe_tensor *t, const int64_t *idx) {
  double v = moe_get(t, idx);
  if (t->dtype == MOE_BOOL) lua_pushboolean(L, v != 0);
  else lua_pushnumber(L, v);
}

static int l_item(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "item");
  char b[160];
  if (moe_numel(t) != 1)
    luaL_error(L, "item: tensor of shape %s has %d elements, item needs exactly one", moe_shape_str(t, b),
               (int)moe_numel(t));
  int64_t idx[MOE_MAX_DIMS] = {0};
  moe_tensor *h = moe_l_host_values(L, t);
  push_elem(L, h, idx);
  moe_tensor_release(h);
  return 1;
}

static void totable_rec(lua_State *L, moe_tensor *t, int d, int64_t *idx) {
  if (d == t->ndim) {
    push_elem(L, t, idx);
    return;
  }
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    idx[d] = i;
    totable_rec(L, t, d + 1, idx);
    lua_rawseti(L, -2, (int)i + 1);
  }
}
static int l_totable(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "totable");
  int64_t idx[MOE_MAX_DIMS] = {0};
  luaL_checkstack(L, t->ndim + 4, "totable");
  moe_tensor *h = moe_l_host_values(L, t);
  moe_l_box_tensor(L, h); /* owned by the GC if a table allocation fails */
  totable_rec(L, h, 0, idx);
  return 1;
}

/* ---------------------------------------------------------------- views */

static int l_view_impl(lua_State *L, const char *op, int reshape) {
  moe_tensor *t = moe_l_check_tensor(L, 1, op);
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  parse_view_sizes(L, 2, op, &ndim, shape);
  return moe_lua_push(L, reshape ? moe_reshape(t, ndim, shape) : moe_view(t, ndim, shape));
}
static int l_view(lua_State *L) { return l_view_impl(L, "view", 0); }
static int l_reshape(lua_State *L) { return l_view_impl(L, "reshape", 1); }

static int l_expand(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "expand");
  int ndim;
  int64_t shape[MOE_MAX_DIMS];
  moe_tensor *other = moe_lua_totensor(L, 2);
  if (other) {
    ndim = other->ndim;
    memcpy(shape, other->shape, sizeof shape);
  } else parse_view_sizes(L, 2, "expand", &ndim, shape);
  return moe_lua_push(L, moe_expand(t, ndim, shape));
}

static int l_transpose(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "transpose");
  if (lua_isnoneornil(L, 2) && t->ndim == 2) return moe_lua_push(L, moe_transpose(t, 0, 1));
  int d0 = moe_l_check_dim_arg(L, 2, t, "transpose", 0), d1 = moe_l_check_dim_arg(L, 3, t, "transpose", 0);
  return moe_lua_push(L, moe_transpose(t, d0, d1));
}

static int l_permute(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "permute");
  int perm[MOE_MAX_DIMS], n = 0;
  int tbl = lua_istable(L, 2);
  int cnt = tbl ? (int)lua_objlen(L, 2) : lua_gettop(L) - 1;
  char b[160];
  if (cnt != t->ndim) luaL_error(L, "permute: %d dims given for tensor of shape %s", cnt, moe_shape_str(t, b));
  for (int i = 0; i < cnt; i++) {
    if (tbl) lua_rawgeti(L, 2, i + 1);
    else lua_pushvalue(L, i + 2);
    perm[n++] = moe_l_norm_dim(L, t, moe_l_check_int(L, -1, "permute", "dim"), "permute", 0);
    lua_pop(L, 1);
  }
  return moe_lua_push(L, moe_permute(t, perm));
}

static int l_narrow(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "narrow");
  int d = moe_l_check_dim_arg(L, 2, t, "narrow", 0);
  int64_t start = moe_l_check_int(L, 3, "narrow", "start"), len = moe_l_check_int(L, 4, "narrow", "length");
  if (start < 0) start = t->shape[d] + start + 1;
  return moe_lua_push(L, moe_narrow(t, d, start - 1, len));
}

static int l_select(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "select");
  int d = moe_l_check_dim_arg(L, 2, t, "select", 0);
  int64_t i = moe_l_check_int(L, 3, "select", "index");
  if (i < 0) i = t->shape[d] + i + 1;
  return moe_lua_push(L, moe_select(t, d, i - 1));
}

static int l_squeeze(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "squeeze");
  int d = lua_isnoneornil(L, 2) ? -1 : moe_l_check_dim_arg(L, 2, t, "squeeze", 0);
  return moe_lua_push(L, moe_squeeze(t, d));
}

static int l_unsqueeze(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "unsqueeze");
  return moe_lua_push(L, moe_unsqueeze(t, moe_l_check_dim_arg(L, 2, t, "unsqueeze", 1)));
}

static int l_contiguous(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "contiguous");
  if (moe_is_contiguous(t)) {
    lua_settop(L, 1);
    return 1;
  }
  return moe_lua_push(L, moe_clone(t));
}
static int l_clone(lua_State *L) { return moe_lua_push(L, moe_clone(moe_l_check_tensor(L, 1, "clone"))); }

static int l_to(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "to");
  const char *name = lua_tostring(L, 2);
  moe_dtype dt;
  if (lua_istable(L, 2)) {
    create_opts o = moe_l_parse_opts(L, 2, "to", t->dtype);
    dt = o.dtype;
  } else if (!name || moe_dtype_from_name(name, &dt)) {
    if (name && !strcmp(name, "cpu")) {
      lua_settop(L, 1);
      return 1;
    }
    luaL_error(L, "to: unknown dtype '%s' (float32, float64, int32, int64, bool)", name ? name : luaL_typename(L, 2));
  }
  if (t->dtype == dt) {
    lua_settop(L, 1);
    return 1;
  }
  return moe_lua_push(L, moe_to_dtype(t, dt));
}

static int l_copy_(lua_State *L) {
  moe_tensor *dst = moe_l_check_tensor(L, 1, "copy_");
  if (lua_type(L, 2) == LUA_TNUMBER) {
    if (moe_fill_(dst, lua_tonumber(L, 2))) return moe_l_raise_engine(L);
    lua_settop(L, 1);
    return 1;
  }
  moe_tensor *src = moe_l_check_tensor_any(L, 2, "copy_"); /* from any device */
  if (moe_copy_(dst, src)) return moe_l_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

static int l_fill_(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "fill_");
  double v = lua_type(L, 2) == LUA_TBOOLEAN ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  if (moe_fill_(t, v)) return moe_l_raise_engine(L);
  lua_settop(L, 1);
  return 1;
}

/* cuda(t) / cpu(t): t's values on that device (t itself when already there) */
static int l_cuda(lua_State *L) {
  return moe_lua_push(L, moe_to_device(moe_l_check_tensor_any(L, 1, "cuda"), MOE_CUDA));
}
static int l_cpu(lua_State *L) { return moe_lua_push(L, moe_to_device(moe_l_check_tensor_any(L, 1, "cpu"), MOE_CPU)); }

/* pin_memory(t): a contiguous copy of a host tensor in pinned (page-locked)
 * memory, from which copies to the device run asynchronously; is_pinned(t) */
static int l_pin_memory(lua_State *L) {
  return moe_lua_push(L, moe_pin_memory(moe_l_check_tensor_any(L, 1, "pin_memory")));
}
static int l_is_pinned(lua_State *L) {
  lua_pushboolean(L, moe_is_pinned(moe_l_check_tensor_any(L, 1, "is_pinned")));
  return 1;
}

/* ---------------------------------------------------------------- indexing */

/* t[i] or t[{...}] as a view: numbers select (dims vanish), {} keeps a dim,
 * {a, b} narrows to a..b inclusive; negative numbers count from the end. */
static moe_tensor *index_view(lua_State *L, moe_tensor *t, int kidx, int *scalar) {
  char b[160];
  *scalar = 0;
  if (lua_type(L, kidx) == LUA_TNUMBER) {
    int64_t i = moe_l_check_int(L, kidx, "index", "index");
    if (t->ndim == 0) luaL_error(L, "index: cannot index a 0-dim tensor");
    if (i < 0) i = t->shape[0] + i + 1;
    if (i < 1 || i > t->shape[0])
      luaL_error(L, "index: index %d out of range for dim 1 of size %d (shape %s)", (int)i, (int)t->shape[0],
                 moe_shape_str(t, b));
    *scalar = t->ndim == 1;
    moe_tensor *v = moe_select(t, 0, i - 1);
    if (!v) moe_l_raise_engine(L);
    return v;
  }
  if (!lua_istable(L, kidx) || moe_lua_totensor(L, kidx))
    luaL_error(L, "index: expected a number or a table of ranges, got %s", moe_l_type_of(L, kidx));
  int n = (int)lua_objlen(L, kidx);
  if (n > t->ndim) luaL_error(L, "index: %d indices for tensor of shape %s", n, moe_shape_str(t, b));
  /* validate everything first, then build the view */
  int64_t lo[MOE_MAX_DIMS], hi[MOE_MAX_DIMS];
  int kind[MOE_MAX_DIMS]; /* 0 select, 1 range */
  for (int k = 0, d = 0; k < n; k++, d++) {
    lua_rawgeti(L, kidx, k + 1);
    int64_t size = t->shape[d];
    if (lua_type(L, -1) == LUA_TNUMBER) {
      int64_t i = moe_l_check_int(L, -1, "index", "index");
      if (i < 0) i = size + i + 1;
      if (i < 1 || i > size)
        luaL_error(L, "index: index %d out of range for dim %d of size %d (shape %s)", (int)i, d + 1, (int)size,
                   moe_shape_str(t, b));
      kind[k] = 0;
      lo[k] = i;
    } else if (lua_istable(L, -1)) {
      int m = (int)lua_objlen(L, -1);
      int64_t a = 1, e = size;
      if (m >= 1) {
        lua_rawgeti(L, -1, 1);
        a = moe_l_check_int(L, -1, "index", "range start");
        lua_pop(L, 1);
      }
      if (m >= 2) {
        lua_rawgeti(L, -1, 2);
        e = moe_l_check_int(L, -1, "index", "range end");
        lua_pop(L, 1);
      } else if (m == 1) e = a < 0 ? size + a + 1 : a;
      if (a < 0) a = size + a + 1;
      if (e < 0) e = size + e + 1;
      if (a < 1 || e > size || e < a - 1)
        luaL_error(L, "index: range {%d, %d} out of bounds for dim %d of size %d (shape %s)", (int)a, (int)e, d + 1,
                   (int)size, moe_shape_str(t, b));
      kind[k] = 1;
      lo[k] = a;
      hi[k] = e;
    } else {
      luaL_error(L, "index: entry %d must be a number or a range table, got %s", k + 1, moe_l_type_of(L, -1));
    }
    lua_pop(L, 1);
  }
  moe_tensor *v = t;
  moe_tensor_retain(v);
  for (int k = 0, d = 0; k < n; k++) {
    moe_tensor *nv = kind[k] ? moe_narrow(v, d, lo[k] - 1, hi[k] - lo[k] + 1) : moe_select(v, d, lo[k] - 1);
    moe_tensor_release(v);
    if (!nv) moe_l_raise_engine(L);
    v = nv;
    if (kind[k]) d++;
  }
  return v;
}

/* autograd fields: t.grad, t.requires_grad, t.grad_fn (the op's name), t.is_leaf */
static int grad_field(lua_State *L, moe_tensor *t, const char *k) {
  if (!strcmp(k, "grad")) {
    if (!t->grad) {
      lua_pushnil(L);
      return 1;
    }
    moe_tensor_retain(t->grad);
    return moe_lua_push(L, t->grad);
  }
  if (!strcmp(k, "requires_grad")) {
    lua_pushboolean(L, t->requires_grad);
    return 1;
  }
  if (!strcmp(k, "grad_fn")) {
    if (t->grad_fn) lua_pushstring(L, moe_grad_fn_name(t));
    else lua_pushnil(L);
    return 1;
  }
  if (!strcmp(k, "is_leaf")) {
    lua_pushboolean(L, t->grad_fn == NULL);
    return 1;
  }
  return 0;
}

int moe_l_set_requires_grad(lua_State *L, moe_tensor *t, int on) {
  if (on && !moe_dtype_is_float(t->dtype))
    luaL_error(L, "requires_grad: only float tensors can require grad, got dtype %s", moe_dtype_name(t->dtype));
  if (t->grad_fn) {
    if (on) return 0;
    luaL_error(L, "requires_grad: cannot turn it off on a tensor computed by %s (use detach())", moe_grad_fn_name(t));
  }
  t->requires_grad = on;
  return 0;
}

int moe_l_t_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1)) return 1;
    const char *k = lua_tostring(L, 2);
    if (k[0] == 'g' || k[0] == 'r' || k[0] == 'i') {
      moe_tensor *t = moe_l_check_tensor_any(L, 1, "index");
      if (grad_field(L, t, k)) return 1;
    }
    return 1;
  }
  moe_tensor *t = moe_l_check_tensor(L, 1, "index");
  int scalar;
  moe_tensor *v = index_view(L, t, 2, &scalar);
  if (scalar) {
    int64_t idx[1] = {0};
    int prev = moe_set_grad_enabled(0); /* a value, not recorded */
    moe_tensor *h = moe_to_device(v, MOE_CPU);
    moe_set_grad_enabled(prev);
    moe_tensor_release(v);
    if (!h) return moe_l_raise_engine(L);
    push_elem(L, h, idx);
    moe_tensor_release(h);
    return 1;
  }
  return moe_lua_push(L, v);
}

int moe_l_t_newindex(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "newindex");
  if (lua_type(L, 2) == LUA_TSTRING && !strcmp(lua_tostring(L, 2), "requires_grad"))
    return moe_l_set_requires_grad(L, t, lua_toboolean(L, 3));
  t = moe_l_check_tensor(L, 1, "newindex");
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (!strcmp(k, "grad")) {
      moe_tensor *g = NULL;
      if (!lua_isnil(L, 3)) {
        char b1[160], b2[160];
        g = moe_lua_totensor(L, 3);
        if (!g) luaL_error(L, "grad: expected a tensor or nil, got %s", moe_l_type_of(L, 3));
        if (g->ndim != t->ndim || memcmp(g->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) || g->dtype != t->dtype)
          luaL_error(L, "grad: a gradient of shape %s (%s) does not fit a tensor of shape %s (%s)",
                     moe_shape_str(g, b1), moe_dtype_name(g->dtype), moe_shape_str(t, b2), moe_dtype_name(t->dtype));
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
    luaL_error(L, "newindex: value must be a number or a tensor, got %s", moe_l_type_of(L, 3));
  int scalar;
  moe_tensor *v = index_view(L, t, 2, &scalar);
  int rc = 0;
  if (src) rc = moe_copy_(v, src);
  else rc = moe_fill_(v, vt == LUA_TBOOLEAN ? lua_toboolean(L, 3) : lua_tonumber(L, 3));
  moe_tensor_release(v);
  if (rc) return moe_l_raise_engine(L);
  return 0;
}

int moe_l_t_len(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "len");
  lua_pushnumber(L, t->ndim ? (lua_Number)t->shape[0] : 0);
  return 1;
}

const luaL_Reg moe_l_tensor_funcs[] = {{"is_tensor", l_is_tensor}, {NULL, NULL}};

const luaL_Reg moe_l_tensor_methods[] = {{"shape", l_shape},
                                         {"cuda", l_cuda},
                                         {"cpu", l_cpu},
                                         {"pin_memory", l_pin_memory},
                                         {"is_pinned", l_is_pinned},
                                         {"size", l_size},
                                         {"stride", l_stride},
                                         {"dim", l_dim},
                                         {"numel", l_numel},
                                         {"dtype", l_dtype},
                                         {"device", l_device},
                                         {"is_contiguous", l_is_contiguous},
                                         {"storage_offset", l_storage_offset},
                                         {"same_storage", l_same_storage},
                                         {"item", l_item},
                                         {"totable", l_totable},
                                         {"view", l_view},
                                         {"reshape", l_reshape},
                                         {"expand", l_expand},
                                         {"transpose", l_transpose},
                                         {"permute", l_permute},
                                         {"narrow", l_narrow},
                                         {"select", l_select},
                                         {"squeeze", l_squeeze},
                                         {"unsqueeze", l_unsqueeze},
                                         {"contiguous", l_contiguous},
                                         {"clone", l_clone},
                                         {"to", l_to},
                                         {"copy_", l_copy_},
                                         {"fill_", l_fill_},
                                         {NULL, NULL}};
