/* l_autograd.c -- backward, detach, requires_grad_, has_grad, the grad mode,
 * and gradcheck's probes get_flat/set_flat. */
#include "binding_impl.h"

static int l_backward(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "backward");
  moe_tensor *g = NULL;
  int retain = 0, opts = 2;
  if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2)) {
    g = moe_l_opt_tensor(L, 2, "backward");
    if (!g) luaL_error(L, "backward: grad must be a tensor, got %s", moe_l_type_of(L, 2));
    opts = 3;
  }
  if (lua_istable(L, opts)) {
    lua_getfield(L, opts, "retain_graph");
    retain = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (moe_backward(t, g, retain)) return moe_l_raise_engine(L);
  return 0;
}

static int l_detach(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "detach");
  return moe_lua_push(L, moe_detach(t));
}

static int l_requires_grad_(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "requires_grad_");
  moe_l_set_requires_grad(L, t, lua_isnone(L, 2) ? 1 : lua_toboolean(L, 2));
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

/* element i (1-based, row-major over the logical shape) of any layout, on any
 * device: gradcheck's probe (a device tensor's element is one small copy each
 * way, moe_get/moe_set) */
static void flat_index(lua_State *L, const moe_tensor *t, int64_t i, int64_t *idx) {
  int64_t n = moe_numel(t);
  if (i < 1 || i > n)
    luaL_error(L, "flat index %f out of range 1..%f", (double)i, (double)n); /* (lua_pushvfstring has no %lld) */
  i -= 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = i % t->shape[d];
    i /= t->shape[d];
  }
}
static int l_get_flat(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "get_flat");
  int64_t idx[MOE_MAX_DIMS];
  flat_index(L, t, moe_l_check_int(L, 2, "get_flat", "index"), idx);
  lua_pushnumber(L, moe_get(t, idx));
  return 1;
}
static int l_set_flat(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "set_flat");
  int64_t idx[MOE_MAX_DIMS];
  flat_index(L, t, moe_l_check_int(L, 2, "set_flat", "index"), idx);
  if (moe_mark_write("set_flat", t)) return moe_l_raise_engine(L);
  moe_set(t, idx, luaL_checknumber(L, 3));
  return 0;
}

/* t:has_grad(): whether t.grad is set (without making a box for it) */
static int l_has_grad(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor(L, 1, "has_grad");
  lua_pushboolean(L, t->grad != NULL);
  return 1;
}

const luaL_Reg moe_l_autograd_funcs[] = {{"set_grad_enabled", l_set_grad_enabled},
                                         {"is_grad_enabled", l_is_grad_enabled},
                                         {"get_flat", l_get_flat},
                                         {"set_flat", l_set_flat},
                                         {NULL, NULL}};

const luaL_Reg moe_l_autograd_methods[] = {{"backward", l_backward},
                                           {"detach", l_detach},
                                           {"requires_grad_", l_requires_grad_},
                                           {"has_grad", l_has_grad},
                                           {NULL, NULL}};
