/* binding.h -- what the moelua host needs from the Lua binding. */
#ifndef MOE_BINDING_H
#define MOE_BINDING_H

#include <lua.h>
#include <signal.h>

#include "../core/moe.h"

/* set by the host's SIGINT handler; the next op that returns a tensor raises "interrupted" */
extern volatile sig_atomic_t moe_lua_interrupted;
/* while moe_lua_defer is set (by Lua's defer_interrupts, during fit), a first
 * Ctrl-C only sets moe_lua_deferred, which the trainer polls between batches */
extern volatile sig_atomic_t moe_lua_defer, moe_lua_deferred;
int luaopen_moe_core(lua_State *L);
/* the directory holding lua/moe: $MOELUA_ROOT, or the parent of the directory
 * of the running binary (build/moelua, build-fuzz/ckpt_fuzz, ...) */
void moe_lua_find_root(char *root, size_t n);
/* package.path starts with the directory holding the Lua library (moe/init.lua),
 * and moe.core (linked into the binary) is preloaded: for hosts embedding moelua.
 * The directory is builtin_dir when it has the library, else $MOELUA_ROOT's
 * (ROOT/lua or ROOT/share/lua/5.1), else the binary's own (DIR/../lua or
 * DIR/../share/lua/5.1); when none has it, require "moe" says what was tried.
 * moe_lua_setup_paths(L) is moe_lua_setup_paths_at(L, NULL). */
void moe_lua_setup_paths_at(lua_State *L, const char *builtin_dir);
void moe_lua_setup_paths(lua_State *L);
/* where the library was found ("" if only LuaJIT's package.path may have it) */
const char *moe_lua_library_dir(void);
moe_tensor *moe_lua_totensor(lua_State *L, int idx);
int moe_lua_push(lua_State *L, moe_tensor *t);

#endif
