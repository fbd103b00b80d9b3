/* l_nn.c -- the fused layer ops behind lua/moe/nn, mixtures and sparse: linear,
 * bce, mixture, gate_scale, route_plan, grouped_matmul. */
#include <string.h>

#include "binding_impl.h"

/* bce(y, p, from_logits) -> elementwise binary cross-entropy */
static int l_bce(lua_State *L) {
  moe_tensor *y = moe_l_check_tensor(L, 1, "bce"), *p = moe_l_check_tensor(L, 2, "bce");
  return moe_lua_push(L, moe_bce(y, p, lua_toboolean(L, 3)));
}

/* linear(x, w[, b[, activation[, precision]]]) -> act(x w + b) in one GEMM: activation nil,
 * "relu", "sigmoid" or "tanh"; precision nil, "fp32" or "bf16" (the backward GEMMs too) */
static int l_linear(lua_State *L) {
  moe_tensor *x = moe_l_check_tensor(L, 1, "linear"), *w = moe_l_check_tensor(L, 2, "linear");
  moe_tensor *b = lua_isnoneornil(L, 3) ? NULL : moe_l_check_tensor(L, 3, "linear");
  int act = -1;
  if (!lua_isnoneornil(L, 4)) {
    const char *a = luaL_checkstring(L, 4);
    if (!strcmp(a, "relu")) act = MOE_RELU;
    else if (!strcmp(a, "sigmoid")) act = MOE_SIGMOID;
    else if (!strcmp(a, "tanh")) act = MOE_TANH;
    else if (strcmp(a, "linear"))
      return luaL_error(L, "linear: activation must be relu, sigmoid, tanh or linear, got '%s'", a);
  }
  moe_precision prec = moe_l_opt_precision(L, 5, "linear");
  return moe_lua_push(L, moe_linear(x, w, b, act, prec));
}

/* mixture(h [B,U,E], g [B,E]) -> [B,U]: the gate-weighted sum of expert outputs */
static int l_mixture(lua_State *L) {
  moe_tensor *h = moe_l_check_tensor(L, 1, "mixture"), *g = moe_l_check_tensor(L, 2, "mixture");
  return moe_lua_push(L, moe_mixture(h, g));
}

/* gate_scale(h [B, E*U], g [B, E], {relu=bool, append_gate=bool}) */
static int l_gate_scale(lua_State *L) {
  moe_tensor *h = moe_l_check_tensor(L, 1, "gate_scale"), *g = moe_l_check_tensor(L, 2, "gate_scale");
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
  moe_tensor *ix = moe_l_check_tensor(L, 1, "route_plan");
  moe_tensor *od = lua_isnoneornil(L, 2) ? NULL : moe_l_check_tensor(L, 2, "route_plan");
  moe_tensor *vd = lua_isnoneornil(L, 3) ? NULL : moe_l_check_tensor(L, 3, "route_plan");
  int64_t E = moe_l_check_int(L, 4, "route_plan", "number of experts");
  int64_t C = moe_l_check_int(L, 5, "route_plan", "capacity");
  moe_tensor *t, *e, *r, *c;
  if (moe_route_plan(ix, od, vd, E, C, IBASE, &t, &e, &r, &c)) return moe_l_raise_engine(L);
  moe_lua_push(L, t);
  moe_lua_push(L, e);
  moe_lua_push(L, r);
  moe_lua_push(L, c);
  return 4;
}

/* grouped_matmul(x [A,K], w [E,K,N], counts [E][, precision]) or (x, w, bias [E,N], counts[, precision]);
 * counts on either device (sizes, read on the host: a plan's counts are a host tensor) */
static int l_grouped_matmul(lua_State *L) {
  moe_tensor *x = moe_l_check_tensor(L, 1, "grouped_matmul"), *w = moe_l_check_tensor(L, 2, "grouped_matmul");
  moe_tensor *b = NULL, *c;
  int pi = 4;
  if (lua_isnoneornil(L, 4) || lua_type(L, 4) == LUA_TSTRING) c = moe_l_check_tensor_any(L, 3, "grouped_matmul");
  else {
    b = moe_l_check_tensor(L, 3, "grouped_matmul");
    c = moe_l_check_tensor_any(L, 4, "grouped_matmul");
    pi = 5;
  }
  moe_precision prec = moe_l_opt_precision(L, pi, "grouped_matmul");
  return moe_lua_push(L, moe_grouped_matmul(x, w, b, c, prec));
}

const luaL_Reg moe_l_nn_funcs[] = {{"linear", l_linear},
                                   {"bce", l_bce},
                                   {"mixture", l_mixture},
                                   {"gate_scale", l_gate_scale},
                                   {"route_plan", l_route_plan},
                                   {"grouped_matmul", l_grouped_matmul},
                                   {NULL, NULL}};
