-- `make install` / `make uninstall`, the installed, moved and copied moelua, plain luajit
-- on the installed files, pkg-config's moelua.pc, the man page, and `luarocks make` /
-- `luarocks test`: each into its own temporary prefix or rocks tree. They install from
-- the checkout's existing build (make install links src/main.c again and copies the
-- rest), so nothing is rebuilt.
local H = require "helpers"
local sh, read, write = H.sh, H.read_file, H.write_file

local bin = os.getenv("MOELUA_BIN") or "build/moelua"
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function esc(s) return (s:gsub("%p", "%%%0")) end

local function first_line(cmd)
  local p = io.popen(cmd)
  local l = p:read("*l")
  p:close()
  return l
end

local root = first_line("pwd") -- busted runs the specs from the checkout
local absbin = bin:sub(1, 1) == "/" and bin or root .. "/" .. bin
-- the build directory of the moelua under test, relative to the checkout
local build = absbin:match("^" .. esc(root) .. "/(.*)/moelua$") or "build"
local version = (first_line(q(bin) .. " --version") or ""):match("^moelua (%S+)")
-- the build's CUDA setting, so that make does not decide otherwise and rebuild
local cuda = io.open(root .. "/" .. build .. "/obj/src/cuda/emu/emu.o") and "emu"
  or (require("moe").cuda.is_built() and "1" or "0")

local function have(tool) return select(3, sh("command -v " .. tool)) == 0 end

local function mktemp_d()
  local d = first_line("mktemp -d")
  assert(d and d ~= "", "mktemp -d failed")
  return d
end
local made = {}
local function tmpdir()
  local d = mktemp_d()
  made[#made + 1] = d
  return d
end

-- make in the checkout, with this build and no make of ours above it (make test runs us);
-- -o deps: the build is there, so no apt-get (scripts/deps.sh) from a test
local function make(args)
  local out, err, rc = sh(("cd %s && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -o deps BUILD=%s CUDA=%s %s")
    :format(q(root), q(build), cuda, args))
  assert.are.equal(0, rc, "make " .. args .. " failed:\n" .. out .. err)
  return out
end

-- every file (and link) under dir, as paths relative to it, sorted
local function files_under(dir)
  local list = {}
  local p = io.popen(("cd %s && find . ! -type d | LC_ALL=C sort"):format(q(dir)))
  for l in p:lines() do list[#list + 1] = l:sub(3) end
  p:close()
  return list
end

local function source_list(dir, pattern)
  local list = {}
  local p = io.popen(("cd %s && find %s -name %s | LC_ALL=C sort"):format(q(root), dir, q(pattern)))
  for l in p:lines() do list[#list + 1] = l end
  p:close()
  return list
end

-- what make install puts under PREFIX, from the source tree
local function expected_files(dev)
  local want = { "bin/moelua", "lib/lua/5.1/moe/core.so", "share/man/man1/moelua.1" }
  for _, f in ipairs(source_list("lua", "*.lua")) do want[#want + 1] = "share/lua/5.1/" .. f:sub(5) end
  for _, f in ipairs(source_list("models", "*.lua")) do want[#want + 1] = "share/moelua/" .. f end
  for _, f in ipairs(source_list("data", "*")) do
    if f ~= "data" then want[#want + 1] = "share/moelua/" .. f end
  end
  if dev then
    for _, f in ipairs { "lib/libmoe.a", "include/moelua/moe.h", "lib/pkgconfig/moelua.pc" } do want[#want + 1] = f end
  end
  table.sort(want)
  return want
end

local function skip_reason()
  if os.getenv("MOELUA_ASAN") then
    -- install links src/main.c without the sanitizer, and plain luajit cannot load an ASan core.so
    return "skipped under AddressSanitizer: make test checks the installs"
  end
  if not version then return "skipped: " .. bin .. " --version printed no version" end
  for _, tool in ipairs { "make", "cc", "luajit" } do
    if not have(tool) then return "skipped: " .. tool .. " is not installed" end
  end
  for _, f in ipairs { "libmoe.a", "moe/core.so" } do -- a bundled build (scripts/gpu_bundle.sh) has only binaries
    if not io.open(root .. "/" .. build .. "/" .. f) then return "skipped: no " .. build .. "/" .. f .. " to install" end
  end
end

-- one install per kind, shared by the tests that only read it
local installs = {}
local function installed(kind)
  if installs[kind] then return installs[kind] end
  local d = tmpdir()
  if kind == "prefix" then -- a real prefix: its path is compiled into its moelua
    make("install PREFIX=" .. q(d .. "/p"))
    installs[kind] = d .. "/p"
  elseif kind == "staged" then -- staged for /usr/local, the prefix plain luajit searches
    make("install DESTDIR=" .. q(d) .. " PREFIX=/usr/local")
    installs[kind] = d
  end
  return installs[kind]
end

describe("make install", function()
  teardown(function()
    for _, d in ipairs(made) do os.execute("rm -rf " .. q(d)) end
  end)

  it("stages each file in LuaJIT's standard layout under DESTDIR/PREFIX, the installed files are the sources", function()
    local why = skip_reason()
    if why then return pending(why) end
    local dest = installed("staged")
    -- nothing outside DESTDIR/PREFIX, and exactly the files of the source tree's list
    local all = files_under(dest)
    local under = {}
    for _, f in ipairs(all) do
      assert.matches("^usr/local/", f)
      under[#under + 1] = f:sub(11)
    end
    assert.are.same(expected_files(true), under)
    local p = dest .. "/usr/local"
    for _, f in ipairs(source_list("lua", "*.lua")) do
      assert.are.equal(read(root .. "/" .. f), read(p .. "/share/lua/5.1/" .. f:sub(5)), f)
    end
    assert.are.equal(read(root .. "/" .. build .. "/moe/core.so"), read(p .. "/lib/lua/5.1/moe/core.so"))
    assert.are.equal(read(root .. "/src/core/moe.h"), read(p .. "/include/moelua/moe.h"))
    local _, _, rc = sh("test -x " .. q(p .. "/bin/moelua"))
    assert.are.equal(0, rc)
  end)

  it("puts the library where plain luajit looks by default: after PREFIX=/usr/local, require 'moe' needs no environment", function()
    local why = skip_reason()
    if why then return pending(why) end
    local dest = installed("staged")
    -- luajit's own default paths (no LUA_PATH/LUA_CPATH), of which only /usr/local's are
    -- kept, moved under DESTDIR: exactly where luajit would look after a real install
    local out = sh("env -u LUA_PATH -u LUA_CPATH -u LUA_INIT luajit -e 'print(package.path) print(package.cpath)'")
    local path, cpath = out:match("^([^\n]*)\n([^\n]*)\n$")
    local function local_only(s)
      local keep = {}
      for e in s:gmatch("[^;]+") do
        if e:find("^/usr/local/") then keep[#keep + 1] = dest .. e end
      end
      return table.concat(keep, ";")
    end
    path, cpath = local_only(path), local_only(cpath)
    assert.matches(esc(dest .. "/usr/local/share/lua/5.1/?/init.lua"), path)
    assert.matches(esc(dest .. "/usr/local/lib/lua/5.1/?.so"), cpath)
    local cwd = tmpdir()
    local code = "local moe = require 'moe'; print(package.searchpath('moe', package.path)); "
      .. "print(package.searchpath('moe.core', package.cpath)); print(moe.tensor{{1, 2}, {3, 4}}:matmul(moe.eye(2)):sum():item())"
    local res, err, rc = sh(("cd %s && env -u LUA_INIT LUA_PATH=%s LUA_CPATH=%s luajit -e %s")
      :format(q(cwd), q(path), q(cpath), q(code)))
    assert.are.equal(0, rc, err)
    assert.are.equal(dest .. "/usr/local/share/lua/5.1/moe/init.lua\n" .. dest
      .. "/usr/local/lib/lua/5.1/moe/core.so\n10\n", res)
  end)

  it("the installed moelua runs a model script from outside the checkout, on the installed library and data", function()
    local why = skip_reason()
    if why then return pending(why) end
    local p = installed("prefix")
    local out = sh(q(p .. "/bin/moelua") .. " --version")
    assert.matches("\nLua library: " .. esc(p .. "/share/lua/5.1") .. "\n", out)
    local cwd = tmpdir()
    local res, err, rc = sh(("cd %s && %s run %s --smoke"):format(q(cwd), q(p .. "/bin/moelua"),
      q(p .. "/share/moelua/models/mmoe_census.lua")))
    assert.are.equal(0, rc, res .. err)
    local income, nm = res:match("test AUC: income ([%d.]+)%s+never_married ([%d.]+)")
    assert.is_truthy(income, res)
    assert.is_true(tonumber(income) > 0.8 and tonumber(nm) > 0.8, res)
    -- a copy of it still has the prefix compiled in
    local copy = tmpdir() .. "/moelua"
    os.execute(("cp %s %s"):format(q(p .. "/bin/moelua"), q(copy)))
    res, err, rc = sh(("cd %s && %s -e %s"):format(q(cwd), q(copy), q("print(package.searchpath('moe', package.path))")))
    assert.are.equal(0, rc, err)
    assert.are.equal(p .. "/share/lua/5.1/moe/init.lua\n", res)
  end)

  it("a moved prefix finds its library next to the binary; a lone copy says where it looked; MOELUA_ROOT fixes it", function()
    local why = skip_reason()
    if why then return pending(why) end
    local d = tmpdir()
    make("install PREFIX=" .. q(d .. "/p"))
    os.execute(("mv %s %s"):format(q(d .. "/p"), q(d .. "/moved")))
    local moved = d .. "/moved/bin/moelua"
    local out = sh(q(moved) .. " --version")
    assert.matches("\nLua library: " .. esc(d .. "/moved/share/lua/5.1") .. "\n", out)
    local res, err, rc = sh(q(moved) .. " -e 'print(moe.ones(3):sum():item())'")
    assert.are.equal(0, rc, err)
    assert.are.equal("3\n", res)

    os.execute(("mkdir -p %s && cp %s %s"):format(q(d .. "/copy/bin"), q(moved), q(d .. "/copy/bin/moelua")))
    local copy = d .. "/copy/bin/moelua"
    local _, err1, rc1 = sh("env -u MOELUA_ROOT " .. q(copy) .. " -e 'print(1)'")
    assert.are.equal(1, rc1)
    assert.matches("cannot find the moe Lua library %(moe/init%.lua%)", err1)
    assert.matches(esc(d .. "/p/share/lua/5.1") .. "%s+%(built in%)", err1)
    assert.matches("%$MOELUA_ROOT%s+%(not set%)", err1)
    assert.matches(esc(d .. "/copy/lua") .. "%s+%(next to the binary: a checkout%)", err1)
    assert.matches(esc(d .. "/copy/share/lua/5.1") .. "%s+%(next to the binary: a prefix%)", err1)
    assert.matches("package%.path", err1)
    assert.matches("Set MOELUA_ROOT to a moelua checkout or to the PREFIX", err1)
    assert.is_nil(err1:find("no file '/lua/moe.lua'", 1, true))
    -- a script's require names the script's line; a script that does not need moe runs
    local s = d .. "/s.lua"
    write(s, "print('before')\nlocal moe = require 'moe'\n")
    local out2, err2, rc2 = sh("env -u MOELUA_ROOT " .. q(copy) .. " run " .. q(s))
    assert.are.equal(1, rc2)
    assert.are.equal("before\n", out2)
    assert.matches(esc(s) .. ":2: cannot find the moe Lua library", err2)
    write(s, "print(1 + 1)\n")
    assert.are.equal("2\n", (sh("env -u MOELUA_ROOT " .. q(copy) .. " run " .. q(s))))
    -- MOELUA_ROOT: an install prefix, or a checkout
    for _, r in ipairs { { d .. "/moved", d .. "/moved/share/lua/5.1" }, { root, root .. "/lua" } } do
      local res3, err3, rc3 = sh(("MOELUA_ROOT=%s %s -e %s"):format(q(r[1]), q(copy),
        q("print(package.searchpath('moe', package.path)); print(moe.eye(2):sum():item())")))
      assert.are.equal(0, rc3, err3)
      assert.are.equal(r[2] .. "/moe/init.lua\n2\n", res3)
    end
  end)

  it("moelua.pc builds and links a C program on the installed libmoe.a and moe.h", function()
    local why = skip_reason() or (not have("pkg-config") and "skipped: pkg-config is not installed")
    if why then return pending(why) end
    local p = installed("prefix")
    local d = tmpdir()
    local src = read(root .. "/spec/c/public_api.c")
    local n
    src, n = src:gsub('#include "%.%./%.%./src/core/moe%.h"', "#include <moe.h>")
    assert.are.equal(1, n)
    write(d .. "/prog.c", src)
    local pc = "PKG_CONFIG_PATH=" .. q(p .. "/lib/pkgconfig") .. " pkg-config "
    assert.are.equal(version .. "\n", (sh(pc .. "--modversion moelua")))
    local out, err, rc = sh(("cd %s && cc -o prog prog.c $(%s --cflags --libs moelua) && ./prog"):format(q(d), pc))
    assert.are.equal(0, rc, out .. err)
    assert.matches("\n1%.%.%d+\n$", out)
    assert.is_nil(out:find("not ok", 1, true), out)
  end)

  it("the man page renders without warnings and documents each option, command and variable of --help", function()
    local why = skip_reason() or (not have("groff") and "skipped: groff is not installed")
    if why then return pending(why) end
    local p = installed("prefix")
    local page = p .. "/share/man/man1/moelua.1"
    local text, warn, rc = sh("groff -man -Tascii -P-cbou -ww " .. q(page))
    assert.are.equal(0, rc)
    assert.are.equal("", warn)
    assert.matches("moelua " .. esc(version), text)
    local function section(name)
      local s = text:match("\n" .. name .. "\n(.-)\n%u[%u ]+\n")
      assert.is_truthy(s, "no " .. name .. " section")
      return "\n" .. s
    end
    -- the entries of a section: its lines indented by 7 (the descriptions are by 14)
    local function tags(name)
      local t = {}
      for tag in section(name):gmatch("\n       (%S[^\n]*)") do t[#t + 1] = " " .. tag end
      return t
    end
    local function has(list, pattern)
      for _, tag in ipairs(list) do if tag:find(pattern) then return true end end
      return false
    end
    local help = sh(q(bin) .. " --help")
    local opts, cmds, vars = tags("OPTIONS"), tags("COMMANDS"), tags("ENVIRONMENT")
    local n = 0
    for line in help:gmatch("[^\n]+") do
      -- an option line: "  -v, --version  what it does" (the names end at two spaces)
      for o in (line:match("^  (%-.-)%s%s") or ""):gmatch("%-%-?%w[%w%-]*") do
        assert.is_true(has(opts, "[ ,]" .. esc(o) .. "%f[^%w%-]"), "the man page's OPTIONS lack " .. o)
        n = n + 1
      end
      local c = line:match("^%s+moelua (%l+)") or line:match("^usage: moelua (%l+)")
      if c then
        assert.is_true(has(cmds, "^ " .. c .. "%f[^%w]"), "the man page's COMMANDS lack " .. c)
        n = n + 1
      end
    end
    for v in help:match("Environment:.*$"):gmatch("%u[%u_]*_[%u_]+") do
      assert.is_true(has(vars, "^ " .. v .. "$"), "the man page's ENVIRONMENT lacks " .. v)
      n = n + 1
    end
    assert.is_true(n >= 10, "read only " .. n .. " names from --help:\n" .. help)
  end)

  it("make uninstall removes exactly what make install put there", function()
    local why = skip_reason()
    if why then return pending(why) end
    local dest = tmpdir()
    local p = dest .. "/usr/local"
    -- files of others in the same directories stay
    os.execute(("mkdir -p %s %s && touch %s %s"):format(q(p .. "/bin"), q(p .. "/share/lua/5.1"),
      q(p .. "/bin/other"), q(p .. "/share/lua/5.1/other.lua")))
    make("install DESTDIR=" .. q(dest) .. " PREFIX=/usr/local")
    assert.are.equal(#expected_files(true) + 2, #files_under(p))
    make("uninstall DESTDIR=" .. q(dest) .. " PREFIX=/usr/local")
    assert.are.same({ "usr/local/bin/other", "usr/local/share/lua/5.1/other.lua" }, files_under(dest))
    -- moelua's own directories are gone; the shared ones are left as they were
    for _, sub in ipairs { "share/lua/5.1/moe", "lib/lua/5.1/moe", "share/moelua", "include/moelua" } do
      assert.is_nil(io.open(p .. "/" .. sub), sub)
    end
  end)
end)

describe("luarocks", function()
  local tree, env
  -- a tree of our own, the only one LuaRocks knows here, and no servers: nothing is
  -- fetched, and the user's trees and ~/.luarocks are not touched
  local function rocks_env()
    if env then return env end
    local d = mktemp_d()
    made[#made + 1] = d
    tree = d .. "/tree"
    -- the rockspec's Lua dependencies are Debian's packages (scripts/deps.sh), which LuaRocks
    -- is told the system provides, at the versions the modules report
    local provided = {}
    for rock, mod in pairs { ["lua-cjson"] = "cjson", luafilesystem = "lfs" } do
      local v = tostring(require(mod)._VERSION or ""):match("(%d+%.%d+[%.%d]*)")
      assert(v, mod .. " does not report its version")
      provided[#provided + 1] = ("[%q] = %q"):format(rock, v .. "-1")
    end
    table.sort(provided)
    write(d .. "/config.lua", ("rocks_trees = { %q }\nrocks_servers = {}\nrocks_provided = { %s }\n")
      :format(tree, table.concat(provided, ", ")))
    env = ("cd %s && HOME=%s LUAROCKS_CONFIG=%s CUDA=%s "):format(q(root), q(d), q(d .. "/config.lua"), cuda)
    return env
  end
  local function luarocks(args, dir)
    local e = rocks_env()
    if dir then e = e:gsub("^cd %S+", "cd " .. q(dir)) end
    return sh(e .. "luarocks --lua-version=5.1 --tree " .. q(tree) .. " " .. args)
  end
  local function skip()
    local why = skip_reason()
    if why then return why end
    if not have("luarocks") then return "skipped: luarocks is not installed (scripts/deps.sh installs it)" end
    -- the rockspec builds build/, and the specs of `luarocks test` run build/moelua
    if build ~= "build" then return "skipped: luarocks builds build/, and this run tests " .. build end
  end

  teardown(function()
    for _, d in ipairs(made) do os.execute("rm -rf " .. q(d)) end
  end)

  it("the rockspec is the Makefile's version, in format 3.0, built by make with LuaRocks' variables", function()
    local why = skip_reason()
    if why then return pending(why) end
    local files = source_list(".", "*.rockspec")
    local top = {}
    for _, f in ipairs(files) do if not f:find("/", 3) then top[#top + 1] = f end end
    assert.are.same({ "./moelua-" .. version .. "-1.rockspec" }, top)
    local spec = {}
    setfenv(assert(loadfile(root .. "/" .. top[1])), spec)()
    assert.are.equal("3.0", spec.rockspec_format)
    assert.are.equal(version .. "-1", spec.version)
    assert.are.equal("make", spec.build.type)
    assert.are.equal("busted", spec.test.type)
    local iv = spec.build.install_variables
    for k, v in pairs { PREFIX = "$(PREFIX)", BINDIR = "$(BINDIR)", LUADIR = "$(LUADIR)", CMODDIR = "$(LIBDIR)" } do
      assert.are.equal(v, iv[k], k)
    end
    assert.are.equal("$(CFLAGS)", spec.build.build_variables.OPT)
    -- every module the library requires from outside LuaJIT is a dependency of the rock
    local rock_of = { cjson = "lua-cjson", ["cjson.safe"] = "lua-cjson", lfs = "luafilesystem" }
    local builtin = { ffi = true, bit = true, jit = true, string = true, table = true, math = true, io = true,
      os = true, debug = true, coroutine = true, package = true }
    local deps = {}
    for _, d in ipairs(spec.dependencies or {}) do deps[d:match("^%S+")] = true end
    local n = 0
    for _, f in ipairs(source_list("lua", "*.lua")) do
      for mod in read(root .. "/" .. f):gmatch("require%s*%(?%s*[\"']([%w_%.]+)[\"']") do
        if not builtin[mod] and not mod:match("^moe%.?") then
          assert.is_string(rock_of[mod], f .. " requires " .. mod .. ": name its rock here and in the rockspec")
          assert.is_true(deps[rock_of[mod]], f .. " requires " .. mod .. ", whose rock " .. rock_of[mod]
            .. " is not among the rockspec's dependencies")
          n = n + 1
        end
      end
    end
    assert.is_true(n >= 2, "found only " .. n .. " requires of outside modules")
  end)

  it("luarocks make --tree installs moelua into the tree: luajit and the tree's moelua load it, luarocks remove takes it out", function()
    local why = skip()
    if why then return pending(why) end
    local out, err, rc = luarocks("make")
    assert.are.equal(0, rc, out .. err)
    assert.matches("moelua " .. esc(version) .. "%-1 is now installed", out)
    for _, f in ipairs(source_list("lua", "*.lua")) do
      assert.are.equal(read(root .. "/" .. f), read(tree .. "/share/lua/5.1/" .. f:sub(5)), f)
    end
    assert.are.equal(read(root .. "/build/moe/core.so"), read(tree .. "/lib/lua/5.1/moe/core.so"))
    local list = luarocks("list --porcelain")
    assert.matches("moelua\t" .. esc(version) .. "%-1\tinstalled\t", list)
    -- plain luajit with the tree's paths (luarocks path), from elsewhere
    local paths = luarocks("path --lr-path") -- LUA_PATH entries of the tree
    local cpaths = luarocks("path --lr-cpath")
    local cwd = tmpdir()
    local res, err2, rc2 = sh(("cd %s && LUA_PATH=%s LUA_CPATH=%s luajit -e %s"):format(q(cwd),
      q(paths:gsub("\n$", "")), q(cpaths:gsub("\n$", "")),
      q("local moe = require 'moe'; print(package.searchpath('moe', package.path)); print(moe.arange(4):sum():item())")))
    assert.are.equal(0, rc2, err2)
    assert.are.equal(tree .. "/share/lua/5.1/moe/init.lua\n6\n", res)
    -- the tree's moelua: the library next to it (the rock's own directory has moved on)
    res, err2, rc2 = sh(("cd %s && env -u MOELUA_ROOT %s -e %s"):format(q(cwd), q(tree .. "/bin/moelua"),
      q("print(package.searchpath('moe', package.path)); print(moe.ones(2, 2):sum():item())")))
    assert.are.equal(0, rc2, err2)
    assert.are.equal(tree .. "/share/lua/5.1/moe/init.lua\n4\n", res)
    out, err, rc = luarocks("remove moelua")
    assert.are.equal(0, rc, out .. err)
    assert.is_nil(io.open(tree .. "/bin/moelua"))
    assert.is_nil(io.open(tree .. "/share/lua/5.1/moe/init.lua"))
    assert.is_nil(io.open(tree .. "/lib/lua/5.1/moe/core.so"))
  end)

  it("luarocks test runs busted on the checkout with build/moelua, and fails when a spec fails", function()
    local why = skip()
    if why then return pending(why) end
    -- Debian's busted as the rock luarocks test asks for (scripts/rocks)
    local out, err, rc = luarocks("make busted-scm-0.rockspec", root .. "/scripts/rocks")
    assert.are.equal(0, rc, out .. err)
    local d = tmpdir()
    write(d .. "/probe_spec.lua", [[
describe("probe", function()
  it("runs under moelua, on the checkout's library", function()
    assert.is_function(package.preload["moe.core"]) -- moelua links moe.core in; luajit does not
    assert.are.equal("lua/moe/init.lua", package.searchpath("moe", package.path))
    local moe = require "moe"
    assert.are.equal(6, moe.arange(4):sum():item())
  end)
end)
]])
    write(d .. "/failing_spec.lua", [[
describe("failing", function()
  it("fails", function() assert.are.equal(1, 2) end)
end)
]])
    out, err, rc = luarocks("test -- -o TAP " .. q(d .. "/probe_spec.lua"))
    assert.are.equal(0, rc, out .. err)
    assert.matches("\nok 1 %- probe runs under moelua, on the checkout's library\n1%.%.1\n", "\n" .. out)
    out, err, rc = luarocks("test -- -o TAP " .. q(d .. "/failing_spec.lua"))
    assert.are_not.equal(0, rc, out .. err)
    assert.matches("not ok 1 %- failing fails", out)
  end)
end)
