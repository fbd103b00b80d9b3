/* binding.c -- the `moe.core` Lua module: src/lua/ is the only library C that
 * includes lua.h. This file opens it: every function of the domains' tables
 * (binding_impl.h lists the l_*.c files) runs through `tramp`, the tensor
 * methods are module functions too, the binary/unary/reduction/scan ops get a
 * closure per op code, and the tensor metatable is set up; plus the host's
 * paths (moe_lua_find_root, moe_lua_setup_paths).
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
static const luaL_Reg *const func_tables[] = {
    moe_l_create_funcs, moe_l_tensor_funcs, moe_l_ops_funcs, moe_l_autograd_funcs, moe_l_optim_funcs,
    moe_l_nn_funcs,     moe_l_train_funcs,  moe_l_io_funcs,  moe_l_sys_funcs,      NULL};
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

/* the directory holding lua/moe: $MOELUA_ROOT, or the parent of build/ next to the binary */
void moe_lua_find_root(char *root, size_t n) {
  const char *env = getenv("MOELUA_ROOT");
  if (env && *env) {
    snprintf(root, n, "%s", env);
    return;
  }
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) {
    snprintf(root, n, ".");
    return;
  }
  exe[len] = 0;
  char *slash = strrchr(exe, '/');
  if (slash) *slash = 0; /* build dir */
  slash = strrchr(exe, '/');
  if (slash) *slash = 0; /* project root */
  snprintf(root, n, "%s", exe);
}

/* package.path starts with the root's lua/ directories, and moe.core (linked
 * into the calling binary) is preloaded */
void moe_lua_setup_paths(lua_State *L) {
  char root[PATH_MAX], buf[3 * PATH_MAX + 64];
  moe_lua_find_root(root, sizeof root);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  snprintf(buf, sizeof buf, "%s/lua/?.lua;%s/lua/?/init.lua;%s", root, root, lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_pushstring(L, buf);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_moe_core);
  lua_setfield(L, -2, "moe.core");
  lua_pop(L, 2);
}

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
