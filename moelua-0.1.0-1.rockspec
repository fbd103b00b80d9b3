-- LuaRocks' build of a checkout: `luarocks --lua-version=5.1 make` (LuaJIT is Lua 5.1 to
-- LuaRocks; Debian's luarocks picks LuaJIT as that interpreter), then `luarocks test`.
-- The Makefile builds as `make` does and installs with LuaRocks' directories.
rockspec_format = "3.0"
package = "moelua"
version = "0.1.0-1"
source = {
  url = "git+file://.", -- `luarocks make` builds the checkout it runs in and fetches nothing
}
description = {
  summary = "LuaJIT with tensors, autograd and Mixture-of-Experts layers",
  detailed = [[
A C engine (strided tensors, OpenBLAS, optional CUDA) exposed to LuaJIT as the
moe library: Keras-style layers and models, dense and sparse Mixture-of-Experts
layers, a trainer, data loading and plots; and the moelua program (scripts, a REPL).]],
  labels = { "machine-learning", "tensor", "mixture-of-experts", "luajit" },
}
supported_platforms = { "linux" }
dependencies = {
  "lua == 5.1", -- LuaJIT 2.1 (GC64), which moe.core checks for when it loads
  "lua-cjson >= 2.1", -- cjson.safe: model files' and moe.io's JSON
  "luafilesystem >= 1.6", -- lfs: moe.cli's directories (--plot DIR)
}
build = {
  type = "make",
  -- LuaRocks' CFLAGS take the place of the Makefile's optimisation flags (OPT), after which
  -- the Makefile adds its own (-std, warnings, pkg-config's -I for luajit, openblas, ...).
  -- LUA_INCDIR is not passed: Debian's points at PUC Lua 5.1's headers, and the host needs
  -- luajit.h, which pkg-config's luajit gives.
  build_variables = {
    OPT = "$(CFLAGS)",
  },
  install_variables = {
    OPT = "$(CFLAGS)",
    PREFIX = "$(PREFIX)",
    BINDIR = "$(BINDIR)",   -- deployed to the tree's bin/
    LUADIR = "$(LUADIR)",   -- deployed to the tree's share/lua/5.1
    CMODDIR = "$(LIBDIR)",  -- LuaRocks' LIBDIR holds C modules: deployed to the tree's lib/lua/5.1
    INSTALL_DEV = "0",      -- libmoe.a, moe.h and moelua.pc are for `make install`, not a rock
  },
}
test_dependencies = {}
test = {
  type = "busted",
  -- the specs run on the checkout's build (.busted), with its moelua as busted's interpreter,
  -- as `make test` runs them
  flags = { "--lua=build/moelua" },
}
