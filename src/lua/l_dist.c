/* l_dist.c -- the engine's collectives (src/dist/, moe.h "processes") for
 * lua/moe/distributed.lua, which checks the arguments' types first (and hands
 * a bad one to dist_fail, so that every rank raises). Ranks are 0-based here
 * as in the engine; so are the positions in the count tables' values (the
 * tables themselves are Lua lists: counts[r + 1] is rank r's). */
#include <stdlib.h>
#include <string.h>

#include "binding_impl.h"

#define WORK_MT "moe.distributed.Work"

/* the engine's error as the user's call names it: "moe.distributed.all_reduce: ..." */
static int raise_dist(lua_State *L) { return luaL_error(L, "moe.distributed.%s", moe_last_error()); }

static moe_dist_op check_op(lua_State *L, int i) {
  static const char *const names[] = {"sum", "mean", "max", "min", "prod", NULL};
  return (moe_dist_op)luaL_checkoption(L, i, "sum", names);
}

static int l_dist_init(lua_State *L) {
  if (moe_dist_init()) return raise_dist(L);
  return 0;
}

static void set_int(lua_State *L, const char *k, int v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}
static void set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v ? v : "");
  lua_setfield(L, -2, k);
}

/* dist_info() -> {initialized, rank, world_size, local_rank, local_size, launched, built,
 *   backend, library, thread_level, threads, threads_reason, checks, reason,
 *   nccl_built, nccl_ready, nccl_device, nccl_version, nccl_library, nccl_reason} */
static int l_dist_info(lua_State *L) {
  moe_dist_info i;
  moe_dist_get_info(&i);
  static const char *const levels[] = {"single", "funneled", "serialized", "multiple"};
  lua_createtable(L, 0, 20);
  lua_pushboolean(L, i.initialized);
  lua_setfield(L, -2, "initialized");
  set_int(L, "rank", i.rank);
  set_int(L, "world_size", i.world_size);
  set_int(L, "local_rank", i.local_rank);
  set_int(L, "local_size", i.local_size);
  set_int(L, "launched", i.launched);
  lua_pushboolean(L, i.built);
  lua_setfield(L, -2, "built");
  set_str(L, "backend", i.backend);
  set_str(L, "library", i.library);
  set_str(L, "thread_level", i.thread_level >= 0 && i.thread_level < 4 ? levels[i.thread_level] : "none");
  set_int(L, "threads", i.threads);
  set_str(L, "threads_reason", i.threads_reason);
  lua_pushboolean(L, i.checks);
  lua_setfield(L, -2, "checks");
  if (i.reason && *i.reason) set_str(L, "reason", i.reason);
  lua_pushboolean(L, i.nccl_built);
  lua_setfield(L, -2, "nccl_built");
  lua_pushboolean(L, i.nccl_ready);
  lua_setfield(L, -2, "nccl_ready");
  set_int(L, "nccl_device", i.nccl_device);
  set_str(L, "nccl_version", i.nccl_version);
  set_str(L, "nccl_library", i.nccl_library);
  if (i.nccl_reason && *i.nccl_reason) set_str(L, "nccl_reason", i.nccl_reason);
  return 1;
}

static int l_dist_rank(lua_State *L) {
  if (moe_dist_init()) return raise_dist(L);
  lua_pushinteger(L, moe_dist_rank());
  return 1;
}

static int l_dist_world_size(lua_State *L) {
  if (moe_dist_init()) return raise_dist(L);
  lua_pushinteger(L, moe_dist_world_size());
  return 1;
}

static int l_dist_set_checks(lua_State *L) {
  lua_pushboolean(L, moe_dist_set_checks(lua_toboolean(L, 1)));
  return 1;
}

/* dist_fail(collective, message): every rank raises the error of the rank that had it */
static int l_dist_fail(lua_State *L) {
  moe_dist_fail(luaL_checkstring(L, 1), luaL_checkstring(L, 2));
  return raise_dist(L);
}

static int l_dist_abort(lua_State *L) {
  moe_dist_abort((int)luaL_checknumber(L, 1));
  return 0;
}

static int l_dist_barrier(lua_State *L) {
  if (moe_dist_barrier()) return raise_dist(L);
  return 0;
}

static int l_dist_all_reduce(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "moe.distributed.all_reduce");
  if (moe_dist_all_reduce_(t, check_op(L, 2))) return raise_dist(L);
  lua_settop(L, 1);
  return 1;
}

static int l_dist_broadcast(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "moe.distributed.broadcast");
  if (moe_dist_broadcast_(t, (int)luaL_checknumber(L, 2))) return raise_dist(L);
  lua_settop(L, 1);
  return 1;
}

/* a list of n counts */
static void push_counts(lua_State *L, const int64_t *c, int n) {
  lua_createtable(L, n, 0);
  for (int r = 0; r < n; r++) {
    lua_pushnumber(L, (lua_Number)c[r]);
    lua_rawseti(L, -2, r + 1);
  }
}

static int l_dist_all_gather(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "moe.distributed.all_gather");
  int n = moe_dist_world_size();
  int64_t *rows = lua_newuserdata(L, sizeof(int64_t) * (size_t)n); /* (freed by the GC, even on an error) */
  moe_tensor *out = moe_dist_all_gather(t, rows);
  if (!out) return raise_dist(L);
  moe_lua_push(L, out);
  push_counts(L, rows, n);
  return 2;
}

static int l_dist_reduce_scatter(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "moe.distributed.reduce_scatter");
  moe_tensor *out = moe_dist_reduce_scatter(t, check_op(L, 2));
  if (!out) return raise_dist(L);
  return moe_lua_push(L, out);
}

/* dist_all_to_all(t, counts): counts a list of integers (distributed.lua checked them) */
static int l_dist_all_to_all(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "moe.distributed.all_to_all");
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = moe_dist_world_size(), ns = (int)lua_objlen(L, 2);
  int64_t *buf = lua_newuserdata(L, sizeof(int64_t) * (size_t)(ns + n + 1));
  int64_t *send = buf, *recv = buf + ns;
  for (int r = 0; r < ns; r++) {
    lua_rawgeti(L, 2, r + 1);
    send[r] = (int64_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  moe_tensor *out = moe_dist_all_to_all(t, send, ns, recv);
  if (!out) return raise_dist(L);
  moe_lua_push(L, out);
  push_counts(L, recv, n);
  return 2;
}

/* ---------------------------------------------------------------- the nonblocking all_reduce */

typedef struct {
  moe_dist_work *w;
} work_box;

static int l_work_gc(lua_State *L) {
  work_box *b = luaL_checkudata(L, 1, WORK_MT);
  moe_dist_work_free(b->w); /* (waits first when it is still running) */
  b->w = NULL;
  return 0;
}

static work_box *check_work(lua_State *L) {
  work_box *b = luaL_checkudata(L, 1, WORK_MT);
  if (!b->w) luaL_error(L, "moe.distributed: this all_reduce_async handle was freed");
  return b;
}

/* dist_work_test(w) -> true once the all_reduce is done (it drives MPI's progress too) */
static int l_dist_work_test(lua_State *L) {
  int r = moe_dist_work_test(check_work(L)->w);
  if (r < 0) return raise_dist(L);
  lua_pushboolean(L, r);
  return 1;
}

static int l_dist_work_wait(lua_State *L) {
  if (moe_dist_work_wait(check_work(L)->w)) return raise_dist(L);
  return 0;
}

static int l_dist_all_reduce_async(lua_State *L) {
  moe_tensor *t = moe_l_check_tensor_any(L, 1, "moe.distributed.all_reduce_async");
  moe_dist_op op = check_op(L, 2);
  work_box *b = lua_newuserdata(L, sizeof *b);
  b->w = NULL;
  if (luaL_newmetatable(L, WORK_MT)) {
    lua_pushcfunction(L, l_work_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  if (!(b->w = moe_dist_all_reduce_start(t, op))) return raise_dist(L);
  return 1;
}

/* ---------------------------------------------------------------- the gradient reducer */

#define REDUCER_MT "moe.distributed.Reducer*"

typedef struct {
  moe_reducer *r;
} reducer_box;

static int l_reducer_gc(lua_State *L) {
  reducer_box *b = luaL_checkudata(L, 1, REDUCER_MT);
  moe_reducer_free(b->r);
  b->r = NULL;
  return 0;
}

static moe_reducer *check_reducer(lua_State *L) {
  reducer_box *b = luaL_checkudata(L, 1, REDUCER_MT);
  if (!b->r) luaL_error(L, "moe.distributed.Reducer: this reducer was freed");
  return b->r;
}

/* the tensors of list i (distributed.lua checked that each is one) into a
 * scratch array owned by Lua (pushed), so that an error cannot leak it */
static moe_tensor **tensor_list(lua_State *L, int i, int *n) {
  *n = (int)lua_objlen(L, i);
  moe_tensor **ts = lua_newuserdata(L, sizeof *ts * (size_t)(*n + 1));
  for (int k = 0; k < *n; k++) {
    lua_rawgeti(L, i, k + 1);
    ts[k] = moe_l_opt_tensor(L, -1, "moe.distributed.Reducer");
    lua_pop(L, 1);
  }
  return ts;
}

/* dist_reducer_new(params, local_params, cap_mb, first_cap_mb) -> a reducer */
static int l_dist_reducer_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  double cap = luaL_checknumber(L, 3), first = luaL_checknumber(L, 4);
  int n, nl;
  moe_tensor **ps = tensor_list(L, 1, &n), **ls = tensor_list(L, 2, &nl);
  reducer_box *b = lua_newuserdata(L, sizeof *b);
  b->r = NULL;
  if (luaL_newmetatable(L, REDUCER_MT)) {
    lua_pushcfunction(L, l_reducer_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  if (!(b->r = moe_reducer_new(ps, n, ls, nl, cap, first))) return raise_dist(L);
  return 1;
}

/* dist_reducer_fail(message): an argument error of Reducer(...), on every rank */
static int l_dist_reducer_fail(lua_State *L) {
  moe_reducer_fail(luaL_checkstring(L, 1));
  return raise_dist(L);
}

static int l_dist_reducer_prepare(lua_State *L) {
  if (moe_reducer_prepare(check_reducer(L))) return raise_dist(L);
  return 0;
}

static int l_dist_reducer_finish(lua_State *L) {
  if (moe_reducer_finish(check_reducer(L))) return raise_dist(L);
  return 0;
}

#define SET_INT(name, v)  \
  lua_pushnumber(L, (v)); \
  lua_setfield(L, -2, name)

/* dist_reducer_stats(r) -> a table (moe.h's moe_reducer_stats, and bucket_of) */
static int l_dist_reducer_stats(lua_State *L) {
  moe_reducer *r = check_reducer(L);
  moe_reducer_stats s;
  moe_reducer_get_stats(r, &s);
  lua_createtable(L, 0, 20);
  SET_INT("params", s.params);
  SET_INT("local_params", s.local);
  SET_INT("buckets", s.buckets);
  SET_INT("world_size", s.world_size);
  SET_INT("bytes", (double)s.bytes);
  SET_INT("bucket_cap_bytes", (double)s.cap_bytes);
  SET_INT("first_bucket_bytes", (double)s.first_cap_bytes);
  SET_INT("steps", s.steps);
  SET_INT("started_in_backward", s.started_in_backward);
  SET_INT("done_in_backward", s.done_in_backward);
  SET_INT("started_at_end", s.started_at_end);
  SET_INT("started_in_finish", s.started_in_finish);
  SET_INT("ready_after_first_start", s.ready_after_first_start);
  SET_INT("unused", s.unused);
  lua_pushboolean(L, s.armed);
  lua_setfield(L, -2, "prepared");
  lua_pushboolean(L, s.deterministic);
  lua_setfield(L, -2, "deterministic");
  lua_createtable(L, s.params, 0);
  for (int i = 0; i < s.params; i++) {
    lua_pushnumber(L, moe_reducer_bucket_of(r, i) + 1);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "bucket_of");
  return 1;
}

/* set_num_threads(n) -> the previous count (0: the default again); get_num_threads() */
static int l_set_num_threads(lua_State *L) {
  int64_t n = moe_l_check_int(L, 1, "set_num_threads", "the thread count");
  if (n < 0) luaL_error(L, "set_num_threads: the thread count must be 0 (the default) or more, got %d", (int)n);
  lua_pushinteger(L, moe_set_num_threads(n > 1000 ? 1000 : (int)n));
  return 1;
}
static int l_get_num_threads(lua_State *L) {
  lua_pushinteger(L, moe_get_num_threads());
  return 1;
}

const luaL_Reg moe_l_dist_funcs[] = {{"dist_init", l_dist_init},
                                     {"dist_info", l_dist_info},
                                     {"dist_rank", l_dist_rank},
                                     {"dist_world_size", l_dist_world_size},
                                     {"dist_set_checks", l_dist_set_checks},
                                     {"dist_fail", l_dist_fail},
                                     {"dist_abort", l_dist_abort},
                                     {"dist_barrier", l_dist_barrier},
                                     {"dist_all_reduce", l_dist_all_reduce},
                                     {"dist_broadcast", l_dist_broadcast},
                                     {"dist_all_gather", l_dist_all_gather},
                                     {"dist_reduce_scatter", l_dist_reduce_scatter},
                                     {"dist_all_to_all", l_dist_all_to_all},
                                     {"dist_all_reduce_async", l_dist_all_reduce_async},
                                     {"dist_work_test", l_dist_work_test},
                                     {"dist_work_wait", l_dist_work_wait},
                                     {"dist_reducer_new", l_dist_reducer_new},
                                     {"dist_reducer_fail", l_dist_reducer_fail},
                                     {"dist_reducer_prepare", l_dist_reducer_prepare},
                                     {"dist_reducer_finish", l_dist_reducer_finish},
                                     {"dist_reducer_stats", l_dist_reducer_stats},
                                     {"set_num_threads", l_set_num_threads},
                                     {"get_num_threads", l_get_num_threads},
                                     {NULL, NULL}};
