/* l_autograd.c -- backward, detach, requires_grad_, has_grad, the grad mode,
 * and gradcheck's probes get_flat/set_flat. */
#include <string.h>

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

/* backward_ready_trace(root, leaves) -> order, grads, ends: root:backward() with
 * a leaf-ready hook (moe.h) that records, for each readiness, the position of
 * the leaf in `leaves` (0 for another one), a copy of its .grad at that moment
 * (false for none), and how many times the pass-ended call came. For specs. */
#define TRACE_MAX 256
typedef struct {
  moe_tensor *leaves[TRACE_MAX], *snap[TRACE_MAX];
  int nleaves, n, pos[TRACE_MAX], ends, overflow;
} ready_trace;

static int trace_hook(moe_tensor *leaf, void *ud) {
  ready_trace *tr = ud;
  if (!leaf) {
    tr->ends++;
    return 0;
  }
  if (tr->n == TRACE_MAX) {
    tr->overflow = 1;
    return 0;
  }
  int p = 0;
  for (int i = 0; i < tr->nleaves && !p; i++)
    if (tr->leaves[i] == leaf) p = i + 1;
  tr->pos[tr->n] = p;
  tr->snap[tr->n++] = leaf->grad ? moe_clone(leaf->grad) : NULL;
  return 0;
}

static int l_backward_ready_trace(lua_State *L) {
  moe_tensor *root = moe_l_check_tensor(L, 1, "backward_ready_trace");
  luaL_checktype(L, 2, LUA_TTABLE);
  ready_trace *tr = lua_newuserdata(L, sizeof *tr);
  memset(tr, 0, sizeof *tr);
  tr->nleaves = (int)lua_objlen(L, 2);
  if (tr->nleaves > TRACE_MAX) luaL_error(L, "backward_ready_trace: at most %d leaves", TRACE_MAX);
  for (int i = 0; i < tr->nleaves; i++) {
    lua_rawgeti(L, 2, i + 1);
    tr->leaves[i] = moe_l_check_tensor(L, -1, "backward_ready_trace");
    lua_pop(L, 1);
  }
  void *old_ud;
  moe_leaf_ready_fn old = moe_set_leaf_ready_hook(trace_hook, tr, &old_ud);
  int rc = moe_backward(root, NULL, 0);
  moe_set_leaf_ready_hook(old, old_ud, NULL);
  if (rc || tr->overflow) {
    for (int i = 0; i < tr->n; i++) moe_tensor_release(tr->snap[i]);
    if (rc) return moe_l_raise_engine(L);
    return luaL_error(L, "backward_ready_trace: more than %d readiness calls", TRACE_MAX);
  }
  lua_createtable(L, tr->n, 0);
  lua_createtable(L, tr->n, 0);
  for (int i = 0; i < tr->n; i++) {
    lua_pushinteger(L, tr->pos[i]);
    lua_rawseti(L, -3, i + 1);
    if (tr->snap[i]) moe_lua_push(L, tr->snap[i]); /* (takes the reference) */
    else lua_pushboolean(L, 0);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushinteger(L, tr->ends);
  return 3;
}

const luaL_Reg moe_l_autograd_funcs[] = {{"backward_ready_trace", l_backward_ready_trace},
                                         {"set_grad_enabled", l_set_grad_enabled},
                                         {"is_grad_enabled", l_is_grad_enabled},
                                         {"get_flat", l_get_flat},
                                         {"set_flat", l_set_flat},
                                         {NULL, NULL}};

const luaL_Reg moe_l_autograd_methods[] = {{"backward", l_backward},
                                           {"detach", l_detach},
                                           {"requires_grad_", l_requires_grad_},
                                           {"has_grad", l_has_grad},
                                           {NULL, NULL}};
