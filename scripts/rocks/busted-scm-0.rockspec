-- Debian's lua-busted package registered as the rock "busted", so that `luarocks test` runs
-- without a network: its busted test type asks LuaRocks for that rock, and would fetch it
-- from luarocks.org otherwise. Into the tree `luarocks test` uses:
--   (cd scripts/rocks && luarocks --lua-version=5.1 make --tree TREE busted-scm-0.rockspec)
rockspec_format = "3.0"
package = "busted"
version = "scm-0"
source = {
  url = "git+file://.",
}
description = {
  summary = "Debian's /usr/bin/busted, run by LuaJIT, as a LuaRocks rock",
}
dependencies = {
  "lua == 5.1",
}
build = {
  type = "none",
  install = {
    bin = { busted = "busted" },
  },
}
