/* binding.c -- the `moe.core` Lua module: src/lua/ is the only library C that
 * includes lua.h. This file opens it: every function of the domains' tables
 * (binding_impl.h lists the l_*.c files) runs through `tramp`, the tensor
 * methods are module functions too, the binary/unary/reduction/scan ops get a
 * closure per op code, and the tensor metatable is set up; plus the host's
 * paths (moe_lua_find_root, moe_lua_setup_paths_at: where the Lua library is).
 *
 * A Lua tensor is a userdata box holding one reference to a moe_tensor,
 * released in __gc. The binding turns Lua arguments into engine calls (1-based
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
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "binding_impl.h"
#include "../core/device.h"
#include "../cpu/sgemm_lib.h"

/* ---------------------------------------------------------------- registration */

/* the module's functions, and the functions that are also tensor methods, by domain */
static const luaL_Reg *const func_tables[] = {moe_l_create_funcs,
                                              moe_l_tensor_funcs,
                                              moe_l_ops_funcs,
                                              moe_l_autograd_funcs,
                                              moe_l_optim_funcs,
                                              moe_l_nn_funcs,
                                              moe_l_train_funcs,
                                              moe_l_io_funcs,
                                              moe_l_sys_funcs,
                                              moe_l_dist_funcs,
                                              NULL};
static const luaL_Reg *const method_tables[] = {moe_l_tensor_methods, moe_l_ops_methods, moe_l_autograd_methods, NULL};

/* every function of the module runs through here: upvalue 1 is the function's
 * own (an op code, or nil), upvalue 2 the function */
static int tramp(lua_State *L) {
  lua_CFunction f = (lua_CFunction)(uintptr_t)lua_touserdata(L, lua_upvalueindex(2));
  const char *prev_op = moe_l_cur_op;
  moe_l_cur_op = lua_tostring(L, lua_upvalueindex(3));
  moe_l_op_dev = -1;
  moe_l_L = L;
  int r = f(L);
  moe_l_cur_op = prev_op;
  if (moe_l_op_dev == MOE_CUDA) {
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

/* the directory of the running binary (its path without the last component), or "" */
static void exe_dir(char *out, size_t n) {
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  out[0] = 0;
  if (len <= 0) return;
  exe[len] = 0;
  char *slash = strrchr(exe, '/');
  if (slash) *slash = 0;
  snprintf(out, n, "%s", exe);
}

/* the directory holding lua/moe: $MOELUA_ROOT, or the parent of the directory
 * of the running binary (build/moelua -> the checkout) */
void moe_lua_find_root(char *root, size_t n) {
  const char *env = getenv("MOELUA_ROOT");
  if (env && *env) {
    snprintf(root, n, "%s", env);
    return;
  }
  char dir[PATH_MAX];
  exe_dir(dir, sizeof dir);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0; /* project root */
  snprintf(root, n, "%s", dir[0] ? dir : ".");
}

static char lib_dir[2 * PATH_MAX]; /* where moe/init.lua was found; "" when nowhere */

const char *moe_lua_library_dir(void) { return lib_dir; }

/* does dir hold the Lua library? (then it goes into lib_dir; else a line of `tried`) */
static int try_dir(const char *dir, const char *why, char *tried, size_t tn) {
  char f[2 * PATH_MAX + 16];
  snprintf(f, sizeof f, "%s/moe/init.lua", dir);
  if (access(f, R_OK) == 0) {
    snprintf(lib_dir, sizeof lib_dir, "%s", dir);
    return 1;
  }
  size_t used = strlen(tried);
  if (used < tn) snprintf(tried + used, tn - used, "  %-28s (%s)\n", dir, why);
  return 0;
}

/* require of moe or moe.* when no library was found: the message says where
 * the binary looked and how to point it at one (upvalue 1) */
static int missing_library_loader(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (strcmp(name, "moe") && strncmp(name, "moe.", 4)) return 0;
  return luaL_error(L, "%s", lua_tostring(L, lua_upvalueindex(1)));
}

/* Where the Lua library (moe/init.lua) is, first found wins:
 *   1. builtin: the directory compiled into the binary (the checkout's lua/ for
 *      build/moelua; LUADIR, PREFIX/share/lua/5.1, for an installed one): the
 *      binary carries moe.core, so the Lua files made with it come first
 *   2. $MOELUA_ROOT: a checkout (ROOT/lua) or an install prefix (ROOT/share/lua/5.1)
 *   3. next to the binary: DIR/../lua (a checkout's build dir) or
 *      DIR/../share/lua/5.1 (PREFIX/bin of a moved prefix, a luarocks tree)
 *   4. LuaJIT's own package.path (LUA_PATH, /usr/local/share/lua/5.1, ...)
 * When none has it, require "moe" fails with a message listing what was tried. */
static int find_library(lua_State *L, const char *builtin) {
  char tried[8 * PATH_MAX], d[PATH_MAX + 32], up[PATH_MAX];
  tried[0] = 0;
  lib_dir[0] = 0;
  if (builtin && *builtin && try_dir(builtin, "built in", tried, sizeof tried)) return 1;
  const char *env = getenv("MOELUA_ROOT");
  if (env && *env) {
    snprintf(d, sizeof d, "%s/lua", env);
    if (try_dir(d, "$MOELUA_ROOT as a checkout", tried, sizeof tried)) return 1;
    snprintf(d, sizeof d, "%s/share/lua/5.1", env);
    if (try_dir(d, "$MOELUA_ROOT as a prefix", tried, sizeof tried)) return 1;
  } else {
    size_t used = strlen(tried);
    snprintf(tried + used, sizeof tried - used, "  %-28s (not set)\n", "$MOELUA_ROOT");
  }
  exe_dir(up, sizeof up);
  char *slash = strrchr(up, '/');
  if (slash) {
    *slash = 0;
    snprintf(d, sizeof d, "%s/lua", up);
    if (try_dir(d, "next to the binary: a checkout", tried, sizeof tried)) return 1;
    snprintf(d, sizeof d, "%s/share/lua/5.1", up);
    if (try_dir(d, "next to the binary: a prefix", tried, sizeof tried)) return 1;
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  int found = 0;
  if (lua_isfunction(L, -1)) {
    lua_pushstring(L, "moe");
    lua_getfield(L, -3, "path");
    found = lua_pcall(L, 2, 1, 0) == 0 && lua_isstring(L, -1);
    if (found) { /* recorded for moelua -v; package.path already leads there */
      snprintf(lib_dir, sizeof lib_dir, "%s", lua_tostring(L, -1));
      char *tail = strstr(lib_dir, "/moe/init.lua");
      if (!tail) tail = strstr(lib_dir, "/moe.lua");
      if (tail) *tail = 0;
    }
  }
  lua_pop(L, 1);
  if (found) {
    lua_pop(L, 1);
    return 0;
  }
  lua_getfield(L, -1, "loaders"); /* after package.preload (moe.core), before the file searchers */
  int n = (int)lua_objlen(L, -1);
  for (int i = n; i >= 2; i--) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  size_t used = strlen(tried);
  snprintf(tried + used, sizeof tried - used, "  %-28s (LUA_PATH, or LuaJIT's default)\n", "package.path");
  lua_pushfstring(L,
                  "cannot find the moe Lua library (moe/init.lua). This moelua looked in:\n%s"
                  "Set MOELUA_ROOT to a moelua checkout or to the PREFIX it was installed to\n"
                  "(make install PREFIX=...), or reinstall moelua.",
                  tried);
  lua_pushcclosure(L, missing_library_loader, 1);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
  return 0;
}

/* package.path starts with the Lua library's directory (find_library), and
 * moe.core (linked into the calling binary) is preloaded */
void moe_lua_setup_paths_at(lua_State *L, const char *builtin_dir) {
  int prepend = find_library(L, builtin_dir);
  lua_getglobal(L, "package");
  if (prepend) {
    /* (lua_pushfstring: a LUA_PATH of any length is kept whole, where a fixed buffer cut it) */
    lua_getfield(L, -1, "path");
    const char *old = lua_tostring(L, -1);
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", lib_dir, lib_dir, old ? old : "");
    lua_remove(L, -2);
    lua_setfield(L, -2, "path");
  }
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_moe_core);
  lua_setfield(L, -2, "moe.core");
  lua_pop(L, 2);
}

void moe_lua_setup_paths(lua_State *L) { moe_lua_setup_paths_at(L, NULL); }

int luaopen_moe_core(lua_State *L) {
  /* refuse a LuaJIT built without GC64: 64-bit pointers in userdata and large heaps need it */
  if (luaL_dostring(L, "local ok, ffi = pcall(require, 'ffi') return ok and ffi.abi('gc64')") || !lua_toboolean(L, -1))
    return luaL_error(L,
                      "moe: this LuaJIT is not a GC64 build; moelua needs LuaJIT 2.1 built with "
                      "LUAJIT_ENABLE_GC64 (Debian's luajit on amd64 is)");
  lua_pop(L, 1);
  /* the library's directory, as its chunks' names spell it: errors point past its frames */
  if (!luaL_dostring(L,
                     "local ok, p = pcall(package.searchpath, 'moe', package.path) "
                     "return ok and p and p:match('^(.*/)init%.lua$')") &&
      lua_isstring(L, -1))
    snprintf(moe_l_lib_dir, sizeof moe_l_lib_dir, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  moe_cuda_set_oom_hook(moe_l_oom_collect);
  const char *sgemm_err = moe_sgemm_check();
  if (sgemm_err) return luaL_error(L, "moe: %s", sgemm_err);

  /* Tensor outputs are freed by the Lua GC, in batches: keep freed memory in the
   * heap instead of returning it to the OS, so reallocating it does not page-fault
   * (a large share of a 256^3 matmul's time otherwise). */
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);

  lua_newtable(L); /* module */
  int mod = lua_gettop(L);
  for (const luaL_Reg *const *tab = func_tables; *tab; tab++)
    for (const luaL_Reg *r = *tab; r->name; r++) {
      push_wrapped(L, r->func, 0, r->name);
      lua_setfield(L, mod, r->name);
    }
  lua_pushboolean(L, moe_allocator_caches());
  lua_setfield(L, mod, "allocator_caches");
  lua_newtable(L); /* methods */
  int meth = lua_gettop(L);
  for (const luaL_Reg *const *tab = method_tables; *tab; tab++)
    for (const luaL_Reg *r = *tab; r->name; r++) {
      push_wrapped(L, r->func, 0, r->name);
      lua_pushvalue(L, -1);
      lua_setfield(L, meth, r->name);
      lua_setfield(L, mod, r->name);
    }
  for (int op = 0; op < MOE_NBINOPS; op++) {
    set_closure(L, meth, mod, moe_binop_name((moe_binop)op), moe_l_binary, op);
    char n[32];
    snprintf(n, sizeof n, "%s_", moe_binop_name((moe_binop)op));
    if (op <= MOE_MINIMUM) set_closure(L, meth, mod, n, moe_l_binary_, op);
  }
  for (int op = 0; op < MOE_NUNOPS; op++)
    if (op != MOE_CLAMP) set_closure(L, meth, mod, moe_unop_name((moe_unop)op), moe_l_unary, op);
  for (int op = 0; op < MOE_NREDOPS; op++) set_closure(L, meth, mod, moe_redop_name((moe_redop)op), moe_l_reduce, op);
  static const char *scans[] = {"softmax", "log_softmax", "cumsum", "cumprod"};
  for (int op = 0; op < 4; op++) set_closure(L, meth, mod, scans[op], moe_l_scan, op);

  /* metatable */
  luaL_newmetatable(L, MT_NAME);
  int mt = lua_gettop(L);
  lua_pushvalue(L, mt);
  moe_l_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  moe_l_mt_ptr = lua_topointer(L, mt);
  lua_pushcfunction(L, moe_l_t_gc);
  lua_setfield(L, mt, "__gc");
  lua_pushvalue(L, meth);
  push_wrapped(L, moe_l_t_index, 1, "index");
  lua_setfield(L, mt, "__index");
  push_wrapped(L, moe_l_t_newindex, 0, "newindex");
  lua_setfield(L, mt, "__newindex");
  push_wrapped(L, moe_l_t_len, 0, "len");
  lua_setfield(L, mt, "__len");
  static const struct {
    const char *mm;
    int op;
  } arith[] = {{"__add", MOE_ADD}, {"__sub", MOE_SUB}, {"__mul", MOE_MUL}, {"__div", MOE_DIV}, {"__pow", MOE_POW}};
  for (size_t i = 0; i < sizeof arith / sizeof *arith; i++) {
    lua_pushinteger(L, arith[i].op);
    push_wrapped(L, moe_l_binary, 1, arith[i].mm + 2);
    lua_setfield(L, mt, arith[i].mm);
  }
  lua_pushinteger(L, MOE_NEG);
  push_wrapped(L, moe_l_unary, 1, "neg");
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
