/* ckpt_fuzz.c -- libFuzzer harness for the checkpoint loader: the safetensors
 * byte layer (src/data/safetensors.c, through the binding) and the Lua-side
 * validation of moe.load_tensors (lua/moe/io.lua) and moe.load
 * (lua/moe/model.lua).
 *
 * LuaJIT is embedded with moe.core linked in (compiled with the sanitizers).
 * Each input is written to a memfd and handed, by its /proc/self/fd path, to
 * spec/fuzz/ckpt_driver.lua, which loads it and checks the outcome; a check
 * that fails raises an error starting with "FUZZ:", which aborts here (a crash
 * for libFuzzer). The driver also understands a second input form, "header
 * JSON, NUL, data bytes", for which it writes the length prefix itself (see
 * the driver).
 *
 * The interpreter runs with the JIT off and a line hook that feeds the Lua
 * lines run (as edges between consecutive lines) into libFuzzer's extra
 * counters, so the search also follows the Lua validation code, which the
 * compiler's coverage instrumentation does not see. */
#define _GNU_SOURCE
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "../../src/lua/binding.h"

const char *__asan_default_options(void) { return "allocator_may_return_null=1:max_allocation_size_mb=1024"; }

#define NCOUNTERS (1 << 16)
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_cov[NCOUNTERS];

static lua_State *L;
static int fd = -1, driver_ref = LUA_NOREF;
static char path[64];
static uintptr_t prev_line;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "ckpt_fuzz: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  abort();
}

static void line_hook(lua_State *l, lua_Debug *ar) {
  if (!lua_getinfo(l, "S", ar)) return;
  uintptr_t here = ((uintptr_t)ar->source >> 3) * 2654435761u + (uintptr_t)ar->currentline * 40503u;
  lua_cov[(here ^ prev_line) & (NCOUNTERS - 1)]++;
  prev_line = here >> 1;
}

/* at exit, before LeakSanitizer's final check: memory that only the Lua heap
 * points to (lua-cjson's buffers, say) is invisible to LSan, so close the state */
static void close_lua(void) {
  if (L) lua_close(L);
  L = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fd = memfd_create("ckpt_fuzz", 0);
  if (fd < 0) die("memfd_create", NULL);
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

  char root[PATH_MAX], buf[3 * PATH_MAX + 64];
  moe_lua_find_root(root, sizeof root);
  L = luaL_newstate();
  if (!L) die("luaL_newstate", NULL);
  luaL_openlibs(L);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF); /* hooks see every line */
  moe_lua_setup_paths(L);
  snprintf(buf, sizeof buf, "%s/spec/fuzz/ckpt_driver.lua", root);
  if (luaL_loadfile(L, buf) || lua_pcall(L, 0, 1, 0)) die("loading the driver", lua_tostring(L, -1));
  if (lua_type(L, -1) != LUA_TFUNCTION) die("the driver must return a function", NULL);
  driver_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  atexit(close_lua);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > (4 << 20)) return -1;
  if (ftruncate(fd, 0)) die("ftruncate", NULL);
  prev_line = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, driver_ref);
  lua_pushstring(L, path);
  lua_pushlstring(L, (const char *)data, size);
  lua_pushinteger(L, fd);
  if (lua_pcall(L, 3, 0, 0)) {
    const char *msg = lua_tostring(L, -1);
    die("a check failed", msg ? msg : "(a non-string error)");
  }
  lua_gc(L, LUA_GCCOLLECT, 0); /* free this input's tensors now */
  return 0;
}
