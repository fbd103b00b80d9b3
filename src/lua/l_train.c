/* l_train.c -- what fit{} runs around the ops: shuffled_range (an epoch's row
 * order), gather_rows (the next batch, gathered on a helper thread), and the
 * ROC-AUC metric: roc_auc and the batch accumulator auc_acc. */
#include <string.h>

#include "binding_impl.h"
#include "../train/metrics.h"

/* roc_auc(y, scores[, weights]) -> number */
static int l_roc_auc(lua_State *L) {
  moe_tensor *y = moe_l_check_tensor(L, 1, "roc_auc"), *sc = moe_l_check_tensor(L, 2, "roc_auc");
  moe_tensor *w = lua_isnoneornil(L, 3) ? NULL : moe_l_check_tensor(L, 3, "roc_auc");
  double auc;
  if (moe_roc_auc(y, sc, w, &auc)) return moe_l_raise_engine(L);
  lua_pushnumber(L, auc);
  return 1;
}

/* shuffled_range(n, seed_hi, seed_lo) -> int64 [n]: 1..n in the order of
 * moe.data.permutation's Fisher-Yates over its xorshift64* generator, whose
 * 64-bit state is given in two 32-bit halves; the same order as the Lua
 * function, without a Lua table of n numbers (3.4 ms for 32,768 rows, once
 * per epoch of fit{}) */
static int l_shuffled_range(lua_State *L) {
  int64_t n = moe_l_check_int(L, 1, "shuffled_range", "n");
  if (n < 0) return luaL_error(L, "shuffled_range: n must be a count, got %f", (double)n);
  uint64_t half[2];
  for (int k = 0; k < 2; k++) {
    int64_t h = moe_l_check_int(L, 2 + k, "shuffled_range", k ? "the state's low half" : "the state's high half");
    if (h < 0 || h > 0xffffffffLL)
      return luaL_error(L, "shuffled_range: argument #%d must be a 32-bit half of the generator's state, got %f", 2 + k,
                        (double)h);
    half[k] = (uint64_t)h;
  }
  moe_tensor *t = moe_shuffled_range(n, (half[0] << 32) | half[1]);
  if (!t) return moe_l_raise_engine(L);
  return moe_lua_push(L, t);
}

/* gather_rows({t1, t2, ...}, index[, pinned]) -> a job: the rows `index` of
 * each tensor are copied on a helper thread (moe_gather_start), into pinned
 * memory when `pinned`; job:finish() -> {rows1, rows2, ...} once they are
 * there. For fit{}'s next batch. */
#define GATHER_MT "moe.gather_job"
typedef struct {
  moe_gather_job *j;
} gather_box;
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
  for (int i = 0; i < n; i++) { /* all boxed before anything can raise (moe_l_after_push) */
    moe_l_box_tensor(L, out[i]);
    lua_rawseti(L, -2, i + 1);
  }
  moe_l_after_push(L);
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
      return luaL_error(L, "gather_rows: entry %d of the list is a %s, not a tensor", i + 1, moe_l_type_of(L, -1));
    if (moe_l_join_device(src[i]))
      return luaL_error(L, "gather_rows: entry %d of the list is on %s while an earlier tensor is on %s", i + 1,
                        moe_l_dev_name(src[i]->device), moe_l_dev_name(moe_l_op_dev));
    lua_pop(L, 1); /* the list keeps it alive; the job retains it */
  }
  moe_tensor *idx = moe_l_check_tensor(L, 2, "gather_rows");
  int pinned = lua_toboolean(L, 3);
  lua_settop(L, 2);
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
  if (!(g->j = moe_gather_start(n, src, idx, IBASE, pinned))) return moe_l_raise_engine(L);
  return 1;
}

/* auc_acc() -> an exact-AUC accumulator: acc:add(y, p[, w]) appends a batch
 * (no tensor is kept), acc:result() -> the area (raises roc_auc's errors),
 * acc:reset(), acc:count() -> values so far */
#define AUC_MT "moe.auc_acc"
static moe_auc_acc *check_acc(lua_State *L) { return luaL_checkudata(L, 1, AUC_MT); }
static int l_auc_acc_gc(lua_State *L) {
  moe_auc_acc_clear(check_acc(L));
  return 0;
}
static int l_auc_acc_add(lua_State *L) {
  moe_auc_acc *a = check_acc(L);
  /* values on the device are read through host copies */
  moe_tensor *in[3] = {moe_l_check_tensor_any(L, 2, "auc"), moe_l_check_tensor_any(L, 3, "auc"),
                       lua_isnoneornil(L, 4) ? NULL : moe_l_check_tensor_any(L, 4, "auc")};
  moe_tensor *h[3] = {NULL, NULL, NULL};
  int rc = 0, prev = moe_set_grad_enabled(0); /* values, not recorded */
  for (int i = 0; i < 3 && !rc; i++)
    if (in[i] && !(h[i] = moe_to_device(in[i], MOE_CPU))) rc = -1;
  moe_set_grad_enabled(prev);
  if (!rc) rc = moe_auc_acc_add(a, h[0], h[1], h[2]);
  for (int i = 0; i < 3; i++) moe_tensor_release(h[i]);
  if (rc) return moe_l_raise_engine(L);
  return 0;
}
static int l_auc_acc_result(lua_State *L) {
  double auc;
  if (moe_auc_acc_result(check_acc(L), &auc)) return moe_l_raise_engine(L);
  lua_pushnumber(L, auc);
  return 1;
}
static int l_auc_acc_reset(lua_State *L) {
  moe_auc_acc_clear(check_acc(L));
  return 0;
}
static int l_auc_acc_count(lua_State *L) {
  lua_pushnumber(L, (lua_Number)check_acc(L)->n);
  return 1;
}
/* acc:values() -> y, s, w: float64 host tensors [n] of what was added so far
 * (w all ones when no batch had weights): a distributed fit gathers them from
 * every rank into one accumulator, so the AUC is over all ranks' samples */
static int l_auc_acc_values(lua_State *L) {
  moe_auc_acc *a = check_acc(L);
  int64_t n = a->n;
  double *src[3] = {a->y, a->s, a->w};
  for (int i = 0; i < 3; i++) {
    moe_tensor *t = moe_empty(1, &n, MOE_F64);
    if (!t) return moe_l_raise_engine(L);
    double *d = (double *)moe_data(t);
    if (src[i]) memcpy(d, src[i], (size_t)n * sizeof *d);
    else
      for (int64_t j = 0; j < n; j++) d[j] = 1.0;
    moe_l_box_tensor(L, t);
  }
  return 3;
}
static int l_auc_acc(lua_State *L) {
  moe_auc_acc *a = lua_newuserdata(L, sizeof *a);
  memset(a, 0, sizeof *a);
  if (luaL_newmetatable(L, AUC_MT)) {
    static const luaL_Reg m[] = {{"add", l_auc_acc_add},     {"result", l_auc_acc_result}, {"reset", l_auc_acc_reset},
                                 {"count", l_auc_acc_count}, {"values", l_auc_acc_values}, {NULL, NULL}};
    lua_newtable(L);
    luaL_register(L, NULL, m);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_auc_acc_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return 1;
}

const luaL_Reg moe_l_train_funcs[] = {{"roc_auc", l_roc_auc},
                                      {"auc_acc", l_auc_acc},
                                      {"gather_rows", l_gather_rows},
                                      {"shuffled_range", l_shuffled_range},
                                      {NULL, NULL}};
