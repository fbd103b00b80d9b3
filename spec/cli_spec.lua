-- The moelua program: scripts, -e, -i, --version/--help, errors, piped and terminal REPL.
local bin = os.getenv("MOELUA_BIN") or "build/moelua"

local H = require "helpers"
local tmpname, write, sh = H.tmpname, H.write_file, H.sh

describe("moelua CLI", function()
  it("runs a script with arg set like lua, via run and directly", function()
    local s = tmpname(".lua")
    write(s, [[
local moe = require "moe"
print(arg[0] == ... and "bad" or "ok", #arg, arg[1], arg[2], select("#", ...), ...)
print((moe.ones(2, 2) * 3):sum():item())
]])
    for _, cmd in ipairs { bin .. " run " .. s .. " a b", bin .. " " .. s .. " a b" } do
      local out, err, rc = sh(cmd)
      assert.are.equal(0, rc, err)
      assert.matches("^ok\t2\ta\tb\t2\ta\tb\n12\n$", out)
    end
    local out = sh(bin .. " -e 'print(arg[0], arg[1], arg[-2])' " .. s .. " x")
    assert.are.equal(s .. "\tx\t-e\nok\t1\tx\tnil\t1\tx\n12\n", out)
    os.remove(s)
  end)

  it("a script error prints file:line: message and a traceback, and exits non-zero", function()
    local s = tmpname(".lua")
    write(s, "local moe = require 'moe'\nlocal function f()\n  return moe.ones(2, 3) + moe.ones(4)\nend\nf()\n")
    local out, err, rc = sh(bin .. " run " .. s)
    assert.are_not.equal(0, rc)
    assert.matches(s:gsub("%p", "%%%0") .. ":3: add: shapes %[2,3%] and %[4%] cannot be broadcast together", err)
    assert.matches("stack traceback:", err)
    assert.matches("in function 'f'", err)
    os.remove(s)
    local _, err2, rc2 = sh(bin .. " run /nonexistent/x.lua")
    assert.are_not.equal(0, rc2)
    assert.matches("cannot open /nonexistent/x.lua", err2)
  end)

  it("-e runs code with moe preloaded; errors exit non-zero", function()
    local out, _, rc = sh(bin .. " -e 'print(moe.arange(4):sum():item())' -e 'print(2)'")
    assert.are.equal(0, rc)
    assert.are.equal("6\n2\n", out)
    local _, err, rc2 = sh(bin .. " -e 'error(\"bad thing\")'")
    assert.are.equal(1, rc2)
    assert.matches("bad thing", err)
  end)

  it("--version, --help and unknown options", function()
    local out, _, rc = sh(bin .. " --version")
    assert.are.equal(0, rc)
    assert.matches("^moelua %d+%.%d+%.%d+ %(LuaJIT 2%.1", out)
    local help = sh(bin .. " --help")
    assert.matches("moelua run script.lua", help)
    local _, err, rc2 = sh(bin .. " --frobnicate")
    assert.are_not.equal(0, rc2)
    assert.matches("unknown option '%-%-frobnicate'", err)
  end)

  it("piped input runs as a REPL without the line editor: auto-print, multi-line, errors", function()
    local out, err, rc = sh(bin, "x = moe.ones(2)\nx:sum():item()\nfor i = 1, 2 do\n  print('line', i)\nend\n1 + \n2\nerror('oops')\n'after'\n")
    assert.matches("^2\nline\t1\nline\t2\n3\n\"after\"\n$", out)
    assert.matches("oops", err)
    assert.are.equal(1, rc) -- an error happened
    local out2, _, rc3 = sh(bin .. " repl", "moe.tensor{1,2}\n")
    assert.are.equal(0, rc3)
    assert.matches("%[moe.Tensor float32 of size 2%]", out2)
  end)

  it("-i runs a script and then the REPL, which sees its globals", function()
    local s = tmpname(".lua")
    write(s, "answer = 42\n")
    local out, _, rc = sh(bin .. " -i " .. s, "answer + 1\n")
    assert.are.equal(0, rc)
    assert.are.equal("43\n", out)
    os.remove(s)
  end)

  it("plain luajit can require moe with LUA_PATH/LUA_CPATH set", function()
    local root = bin:match("^(.*)/[^/]+/moelua$") or "."
    local build = bin:match("^(.*)/moelua$")
    local env = ("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' "):format(root, root, build)
    local out, err, rc = sh(env .. "luajit -e 'local moe = require \"moe\"; print(moe.eye(3):sum():item())'")
    if os.getenv("MOELUA_ASAN") then return end -- the ASan runtime must be first in the process: skip
    assert.are.equal(0, rc, err)
    assert.are.equal("3\n", out)
  end)
end)

describe("moelua REPL in a terminal", function()
  local have_tmux = os.execute("command -v tmux >/dev/null 2>&1")
  have_tmux = have_tmux == 0 or have_tmux == true
  -- each test gets its own tmux server: reusing a socket races with the previous
  -- server's shutdown
  local hist = tmpname(".hist")
  local serial, T = 0, nil

  local function keys(...)
    for _, k in ipairs { ... } do
      if k == "Enter" or k == "Tab" or k == "C-c" or k == "C-d" then
        os.execute(T .. " send-keys -t r " .. k)
      else
        os.execute(T .. " send-keys -t r -l " .. ("%q"):format(k):gsub("%$", "\\$"))
      end
    end
  end
  local function screen()
    local p = io.popen(T .. " capture-pane -t r -p")
    local s = p:read("*a")
    p:close()
    return s
  end
  local function wait_for(pattern, timeout)
    local t0 = os.time()
    repeat
      local s = screen()
      if s:find(pattern) then return s end
      os.execute("sleep 0.1")
    until os.time() - t0 > (timeout or 5)
    return screen()
  end
  local function start()
    serial = serial + 1
    T = ("tmux -L moelua-spec-%d-%d"):format(os.time(), serial)
    os.execute(("%s new-session -d -s r -x 150 -y 50 'MOELUA_HISTORY=%s %s'"):format(T, hist, bin))
    local s = wait_for("Ctrl%-D exits")
    assert(s:find("Ctrl%-D exits"), "the REPL did not start in tmux: " .. s)
    return s
  end

  after_each(function() if T then os.execute(T .. " kill-server 2>/dev/null") end end)

  it("prints expressions, continues multi-line input and survives errors", function()
    if not have_tmux then pending("tmux not installed"); return end
    os.remove(hist)
    start()
    -- the banner says which BLAS kernels and which sgemm library run (its
    -- last line waited for: the pane may be read between two of its lines)
    local banner = wait_for("\nsgemm: ")
    assert.matches("BLAS: %S+ kernels %(", banner)
    assert.matches("\nsgemm: ", banner)
    keys("t = moe.ones(2, 2) * 3", "Enter")
    keys("t:sum():item()", "Enter")
    assert.matches("\n12\n", wait_for("\n12\n"))
    keys("for i = 1, 2 do", "Enter", "print('it', i)", "Enter", "end", "Enter")
    local s = wait_for("it%s+2")
    assert.matches(">> print%('it', i%)", s)
    assert.matches("it%s+1\nit%s+2", s)
    keys("error('kaboom')", "Enter")
    s = wait_for("stack traceback")
    assert.matches("kaboom", s)
    keys("1 + 1", "Enter")
    assert.matches("\n2\n", wait_for("\n2\n"))
  end)

  it("completes globals, fields after '.' and methods after ':'", function()
    if not have_tmux then pending("tmux not installed"); return end
    start()
    keys("moe.lins", "Tab")
    assert.matches("moe%.linspace", wait_for("moe%.linspace"))
    keys("(0, 1, 3):numel()", "Enter")
    assert.matches("\n3\n", wait_for("\n3\n"))
    keys("x = moe.ones(3)", "Enter")
    wait_for("ones%(3%)\n> ") -- the prompt is back (keys typed earlier, under ASan, garbled the line)
    keys("x:logsu", "Tab")
    assert.matches("x:logsumexp", wait_for("x:logsumexp"))
    keys("():item()", "Enter")
    assert.matches("2%.09861", wait_for("2%.09861"))
    keys("collectg", "Tab")
    assert.matches("collectgarbage", wait_for("collectgarbage"))
  end)

  it("Ctrl-C interrupts a long computation and returns to the prompt; Ctrl-D exits", function()
    if not have_tmux then pending("tmux not installed"); return end
    start()
    keys("n = 0; while true do n = n + 1 end", "Enter")
    os.execute("sleep 0.5")
    keys("C-c")
    assert.matches("interrupted", wait_for("interrupted"))
    keys("x = moe.ones(8); while true do x = x + 0 end", "Enter")
    os.execute("sleep 0.5")
    keys("C-c")
    wait_for("interrupted.*interrupted")
    keys("n > 0", "Enter")
    assert.matches("\ntrue\n", wait_for("\ntrue\n"))
    keys("half typed line", "C-c")
    keys("'fresh'", "Enter")
    local s = wait_for('"fresh"')
    assert.matches('\n"fresh"\n', s)
    keys("C-d")
    os.execute("sleep 0.5")
    local p = io.popen(T .. " has-session -t r 2>&1; echo $?")
    local r = p:read("*a")
    p:close()
    assert.matches("1\n$", r) -- the session ended with moelua
  end)

  it("keeps history in a file across sessions", function()
    if not have_tmux then pending("tmux not installed"); return end
    os.remove(hist)
    start()
    keys("remember_me = 7", "Enter")
    os.execute("sleep 0.3")
    keys("C-d")
    os.execute("sleep 0.5")
    local f = io.open(hist)
    local text = f and f:read("*a") or ""
    if f then f:close() end
    assert.matches("remember_me", text)
    os.execute(T .. " kill-server 2>/dev/null")
    start()
    os.execute(T .. " send-keys -t r Up")
    assert.matches("> remember_me = 7", wait_for("> remember_me = 7"))
  end)

  it("completes modules before they load; shows models, help, several results and C errors at the caller", function()
    if not have_tmux then pending("tmux not installed"); return end
    start()
    keys("moe.Sequ", "Tab")                     -- a lazily loaded name, before its first use
    assert.matches("> moe%.Sequential", wait_for("> moe%.Sequential"))
    keys("{moe.nn.Dense{units = 2, name = 'd'}, input_shape = {3}, name = 'tm'}", "Enter")
    assert.matches("Sequential \"tm\" %-> %(None, 2%), 8 params %(\n  %(d%): Dense{units = 2} %-> %(None, 2%), 8 params",
      wait_for("%(d%): Dense"))
    keys("m = moe.Sequential{moe.nn.Dense{units = 2}, input_shape = {3}}", "Enter")
    wait_for("{3}}\n> ")
    keys("m:summ", "Tab")
    assert.matches("m:summary", wait_for("> m:summary"))
    keys("()", "Enter")
    local s = wait_for("Non%-trainable params: 0\n%-+\n> ")
    local _, n = s:gsub("Total params: 8", "")
    assert.are.equal(1, n, s)                    -- printed once, not echoed back as a string
    keys("help(m.fit)", "Enter")
    assert.matches("model:fit{x, y, %.%.%.}", wait_for("model:fit{x, y"))
    keys("moe.tensor{3, 1, 2}:topk(2)", "Enter")
    assert.matches(" 2\n%[moe%.Tensor float32 of size 2%]\n 1\n 3\n%[moe%.Tensor int64 of size 2%]",
      wait_for("int64 of size 2%]"))
    keys("moe.zeros(-1)", "Enter")
    assert.matches("stdin:1: zeros: negative size", wait_for("stdin:1: zeros"))
  end)
end)
