/* l_optim.c -- optim_step: the fused update of every parameter of an
 * optimizer (src/train/optim.c), behind lua/moe/optim.lua. */
#include "binding_impl.h"
#include "../train/optim.h"

static double opt_num(lua_State *L, int idx, const char *k, double dflt) {
  lua_getfield(L, idx, k);
  double v = lua_isnil(L, -1) ? dflt : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

/* optim_step(kind, params, s1, s2, steps, hparams[, skip]) -> global grad norm (or -1).
 * Every parameter in `params` has a .grad (the caller checked with has_grad);
 * gradients are read here, so no Lua box is made for them. s1/s2 entries may
 * be false. On a CUDA device with clip_norm the norm comes back as a 0-dim
 * float64 tensor on the device, written there by the step: reading it (:item())
 * is the only wait for the device, and only a caller that wants it pays it. */
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
    lua_rawgeti(L, 2, i + 1);
    P[i] = moe_lua_totensor(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, 3, i + 1);
    S1[i] = moe_lua_totensor(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, 4, i + 1);
    S2[i] = moe_lua_totensor(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, 5, i + 1);
    steps[i] = moe_l_check_int(L, -1, "optim_step", "a step count");
    lua_pop(L, 1);
    if (steps[i] < 1) return luaL_error(L, "optim_step: step counts start at 1");
    if (!P[i]) return luaL_error(L, "optim_step: entry %d is not a tensor", i + 1);
    if (!P[i]->grad) return luaL_error(L, "optim_step: parameter %d has no gradient", i + 1);
  }
  moe_optim_hparams h = {.lr = opt_num(L, 6, "lr", 1e-3),
                         .weight_decay = opt_num(L, 6, "weight_decay", 0),
                         .momentum = opt_num(L, 6, "momentum", 0),
                         .dampening = opt_num(L, 6, "dampening", 0),
                         .beta1 = opt_num(L, 6, "beta1", 0.9),
                         .beta2 = opt_num(L, 6, "beta2", 0.999),
                         .eps = opt_num(L, 6, "eps", 1e-8),
                         .alpha = opt_num(L, 6, "alpha", 0.99),
                         .lr_decay = opt_num(L, 6, "lr_decay", 0),
                         .clip_norm = opt_num(L, 6, "clip_norm", 0),
                         .clip_value = opt_num(L, 6, "clip_value", 0)};
  lua_getfield(L, 6, "nesterov");
  h.nesterov = lua_toboolean(L, -1);
  lua_pop(L, 1);
  /* skip (argument 7): a bool scalar on the parameters' device; true: no update */
  if (!lua_isnoneornil(L, 7)) {
    moe_tensor *sk = moe_lua_totensor(L, 7);
    if (!sk || sk->dtype != MOE_BOOL || moe_numel(sk) != 1 || (n > 0 && sk->device != P[0]->device))
      return luaL_error(L, "optim_step: skip must be a one-element bool tensor on the parameters' device");
    h.skip = (const uint8_t *)moe_data(sk);
  }
  /* strided gradients (set by hand) go in as contiguous copies */
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    G[i] = moe_contiguous(P[i]->grad);
    if (!G[i]) {
      for (int j = 0; j < i; j++) moe_tensor_release(G[j]);
      return moe_l_raise_engine(L);
    }
  }
  double norm = 0;
  moe_tensor *norm_t = NULL;
  if (n > 0 && P[0]->device != MOE_CPU && h.clip_norm > 0 && !(norm_t = moe_empty_on(P[0]->device, 0, NULL, MOE_F64))) {
    for (int i = 0; i < n; i++) moe_tensor_release(G[i]);
    return moe_l_raise_engine(L);
  }
  rc = moe_optim_step((moe_optim_kind)kind, n, P, G, S1, S2, steps, &h, norm_t ? NULL : &norm, norm_t);
  for (int i = 0; i < n; i++) moe_tensor_release(G[i]);
  if (rc) {
    if (norm_t) moe_tensor_release(norm_t);
    return moe_l_raise_engine(L);
  }
  if (norm_t) return moe_lua_push(L, norm_t);
  lua_pushnumber(L, norm);
  return 1;
}

const luaL_Reg moe_l_optim_funcs[] = {{"optim_step", l_optim_step}, {NULL, NULL}};
