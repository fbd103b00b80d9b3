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

  it("keeps a long LUA_PATH whole behind the library's own directory", function()
    local dirs = {}
    for i = 1, 800 do dirs[i] = ("/nonexistent/dir%05d/?.lua"):format(i) end -- 21,000 characters
    local lp = table.concat(dirs, ";")
    local out, err, rc = sh(("LUA_PATH='%s;;' %s -e 'io.write(package.path)'"):format(lp, bin))
    assert.are.equal(0, rc, err)
    assert.matches("^[^;]+/%?%.lua;[^;]+/%?/init%.lua;", out)
    assert.is_truthy(out:find(lp, 1, true), "LUA_PATH cut: " .. #out .. " characters") -- (cut at 12,351 before)
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

-- The model scripts' options (lua/moe/cli.lua): --help, usage errors, --plot paths.
describe("models/ scripts' command lines", function()
  local lfs = require "lfs"
  local root = lfs.currentdir()
  local scripts = {}
  for f in lfs.dir("models") do if f:match("%.lua$") then scripts[#scripts + 1] = f end end
  table.sort(scripts)
  local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end -- one shell word

  it("every script in models/ is runnable and answers --help with a description of each option", function()
    assert.is_true(#scripts >= 8, "models/ has " .. #scripts .. " scripts")
    for _, f in ipairs(scripts) do
      local out, err, rc = sh(bin .. " run models/" .. f .. " --help")
      assert.are.equal(0, rc, f .. ": " .. err)
      assert.are.equal("", err, f)
      assert.matches("^usage: moelua run models/" .. f:gsub("%p", "%%%0") .. " ", out, nil, f)
      assert.matches("\noptions:\n", out, nil, f)
      -- each option line: "  --name [VALUE]" then its description in the second column
      local n, pending = 0, nil
      for line in out:gmatch("[^\n]+") do
        if pending then -- a long option name: its description is on the next line
          assert.truthy(line:match("^%s%s%s%s+%S"), f .. ": no description for " .. pending)
          n, pending = n + 1, nil
        elseif line:match("^  %-%-") then
          if line:match("^  %-%-%S+ ?%S*%s%s+%S") then n = n + 1 else pending = line end
        end
      end
      assert.is_nil(pending, f .. ": no description for " .. tostring(pending))
      assert.is_nil(out:find("(undocumented)", 1, true), f .. ": an option without a description\n" .. out)
      assert.is_true(n >= 3, f .. ": " .. n .. " options described\n" .. out)
      assert.matches("\n  %-%-device cpu|cuda%s+%S", out, nil, f)
      assert.matches("\n  %-%-smoke%s+%S", out, nil, f)
    end
  end)

  it("a bad value or an unknown option prints the usage on stderr and exits 2, without a traceback", function()
    for _, f in ipairs(scripts) do
      -- (an integer option of each: moe_vs_mmoe counts steps, not epochs)
      local n = f == "moe_vs_mmoe.lua" and "steps" or "epochs"
      for _, case in ipairs {
        { "--" .. n .. " abc", "%-%-" .. n .. " needs an integer, got 'abc'" },
        { "--" .. n .. "=2.5", "%-%-" .. n .. " needs an integer, got '2%.5'" },
        { "--no-such-option", "unknown option %-%-no%-such%-option" },
        { "--device tpu", "%-%-device must be cpu or cuda, got 'tpu'" },
        { "--smoke=perhaps", "%-%-smoke is a flag" },
        { "--" .. n, "option %-%-" .. n .. " needs a value" },
      } do
        local out, err, rc = sh(bin .. " run models/" .. f .. " " .. case[1])
        local what = f .. " " .. case[1] .. ": " .. err
        assert.are.equal(2, rc, what)
        assert.are.equal("", out, what) -- nothing ran
        assert.matches("^models/" .. f:gsub("%p", "%%%0") .. ": " .. case[2], err, nil, what)
        assert.matches("\nusage: moelua run models/", err, nil, what)
        assert.matches("\n  %-%-" .. n .. " N ", err, nil, what)
        assert.is_nil(err:find("stack traceback", 1, true), what)
        assert.is_nil(err:find(".lua:%d+:"), what) -- no file:line of a Lua error
      end
    end
    -- a script's own choices and ranges, and a mistyped option's near names
    local _, err, rc = sh(bin .. " run models/switch_moe.lua --router both2")
    assert.are.equal(2, rc)
    assert.matches("%-%-router must be tokens, experts or both, got 'both2'", err)
    _, err, rc = sh(bin .. " run models/moe_vs_mmoe.lua --correlations 0.5,x")
    assert.are.equal(2, rc)
    assert.matches("%-%-correlations 0%.5,x: 'x' is not a number in %[%-1, 1%]", err)
    _, err, rc = sh(bin .. " run models/mmoe_census.lua --epoch 3")
    assert.are.equal(2, rc)
    assert.matches("unknown option %-%-epoch %(did you mean %-%-epochs%?%)", err)
    _, err, rc = sh(bin .. " run models/census_logreg.lua data/census-income.test.gz 3 extra")
    assert.are.equal(2, rc)
    assert.matches("unexpected argument 'extra'", err)
    _, err, rc = sh(bin .. " run models/census_mlp.lua /nonexistent/x.gz")
    assert.are.equal(2, rc)
    assert.matches("PATH /nonexistent/x%.gz: cannot read it %(No such file or directory%)", err)
    _, err, rc = sh(bin .. " run models/mmoe_census.lua --data=/nonexistent/x.gz")
    assert.are.equal(2, rc)
    assert.matches("%-%-data /nonexistent/x%.gz: cannot read it", err)
  end)

  it("--plot takes a .svg/.png file or a directory, made without a shell (spaces, quotes, $(...))", function()
    local tmp = tmpname("_plot")
    assert.is_true(lfs.mkdir(tmp))
    local odd = tmp .. "/a b;$(touch pwned) 'q'"
    local function run(plot, extra)
      -- run from the temporary directory: a shell would have made "pwned" there
      return sh(("cd %s && %s run %s/models/switch_moe.lua --smoke %s --plot %s"):format(q(tmp), bin, root, extra or "",
        q(plot)))
    end
    -- a directory (missing parents made): one SVG per figure
    local out, err, rc = run(odd .. "/figs")
    assert.are.equal(0, rc, err)
    for _, name in ipairs { "tokens_tokens", "tokens_experts", "experts_tokens", "experts_experts" } do
      local p = odd .. "/figs/" .. name .. ".svg"
      assert.matches("wrote " .. p:gsub("%p", "%%%0"), out)
      assert.matches("^<%?xml", H.read_file(p))
    end
    -- a file, one figure: that file, in the format of its extension (missing parents made)
    local one = odd .. "/one/switch.png"
    assert.same({ a = one }, require("moe.cli").figures(one, { "a" }))
    assert.are.equal("directory", lfs.attributes(odd .. "/one", "mode"))
    _, err, rc = run(one, "--router tokens") -- (two figures: FILE_<figure>.png)
    assert.are.equal(0, rc, err)
    assert.are.equal("\137PNG\r\n\26\n", H.read_file(odd .. "/one/switch_tokens_tokens.png"):sub(1, 8))
    assert.are.equal("\137PNG\r\n\26\n", H.read_file(odd .. "/one/switch_experts_tokens.png"):sub(1, 8))
    -- a file, several figures: FILE_<figure>.ext beside it
    _, err, rc = run(odd .. "/two/switch.PNG")
    assert.are.equal(0, rc, err)
    assert.are.equal("\137PNG", H.read_file(odd .. "/two/switch_tokens_experts.PNG"):sub(1, 4))
    assert.are.equal("\137PNG", H.read_file(odd .. "/two/switch_tokens_tokens.PNG"):sub(1, 4))
    assert.is_nil(lfs.attributes(odd .. "/two/switch.PNG"))
    -- a format moe.plot cannot write: a usage error before training, nothing made
    out, err, rc = run(odd .. "/three/chart.pdf")
    assert.are.equal(2, rc, err)
    assert.are.equal("", out)
    assert.matches("moe.plot writes .svg and .png files, not .pdf", err, 1, true)
    assert.is_nil(lfs.attributes(odd .. "/three"))
    -- a path under a file cannot be a directory
    H.write_file(tmp .. "/plain", "x")
    _, err, rc = run(tmp .. "/plain/figs")
    assert.are.equal(2, rc)
    assert.matches("'[^']*/plain' exists and is not a directory", err)
    assert.is_nil(lfs.attributes(tmp .. "/pwned"))
    os.execute("rm -rf " .. q(tmp))
  end)

  it("moe.cli reads options, flags, positional arguments and the old defaults table", function()
    local cli = require "moe.cli"
    local spec = {
      usage = "moelua run x.lua [FILE] [options]",
      { "file", "in.csv", "the input", positional = true },
      { "epochs", 3, "epochs", min = 1 },
      { "lr", 0.1, "learning rate" },
      { "ratio", 1, "a ratio", type = "number", max = 2 },
      { "mode", "a", "the mode", choices = { "a", "b" } },
      { "smoke", false, "a flag" },
    }
    local o = cli.read({ "data.csv", "--epochs", "5", "--lr=0.5", "--ratio", "1.5", "--mode=b", "--smoke" }, spec)
    assert.same({ file = "data.csv", epochs = 5, lr = 0.5, ratio = 1.5, mode = "b", smoke = true }, o)
    o = cli.read({}, spec)
    assert.same({ file = "in.csv", epochs = 3, lr = 0.1, ratio = 1, mode = "a", smoke = false }, o)
    assert.is_true(cli.read({ "--epochs", "2", "-h" }, spec).help)
    assert.same("f", cli.read({ "--file", "f" }, spec).file)
    local function usage_error(args)
      local ok, e = pcall(cli.read, args, spec)
      assert.is_false(ok)
      assert.is_table(e, tostring(e))
      return e.cli_usage
    end
    assert.equal("--epochs must be at least 1, got 0", usage_error { "--epochs", "0" })
    assert.equal("--ratio must be at most 2, got 3", usage_error { "--ratio", "3" })
    assert.equal("--lr needs a number, got 'fast'", usage_error { "--lr", "fast" })
    assert.equal("--lr needs a number, got 'nan'", usage_error { "--lr", "nan" })
    assert.equal("--mode must be a or b, got 'c'", usage_error { "--mode", "c" })
    assert.equal("unknown option --mod (did you mean --mode?)", usage_error { "--mod", "a" })
    assert.equal("unknown option -x", usage_error { "-x" })
    assert.equal("unexpected argument 'two'", usage_error { "one", "two" })
    -- each option is in the usage, with its description and default
    local text = cli.usage(spec)
    assert.matches("\n  %-%-epochs N%s+epochs %(default 3%)\n", text)
    assert.matches("\n  %-%-mode a|b%s+the mode %(default a%)\n", text)
    assert.matches("\n  %-%-smoke%s+a flag\n", text)
    assert.matches("arguments FILE, in this order, are the options %-%-file", text)
  end)

  it("cli.makedirs makes missing parents, accepts existing directories and refuses files", function()
    local cli = require "moe.cli"
    local tmp = tmpname("_mk")
    local deep = tmp .. "/x y/'z'/$(w)/"
    assert.is_true(cli.makedirs(deep))
    assert.are.equal("directory", lfs.attributes(deep, "mode"))
    assert.is_true(cli.makedirs(deep)) -- already there
    write(tmp .. "/f", "")
    local ok, err = cli.makedirs(tmp .. "/f/g")
    assert.is_nil(ok)
    assert.matches("exists and is not a directory", err)
    os.execute("rm -rf " .. q(tmp))
  end)

  it("cli.given tells an option set on the command line from its default", function()
    local cli = require "moe.cli"
    local spec = { { "epochs", 3, "epochs" }, { "lr", 0.1, "lr", type = "number" }, { "quick", false, "q" },
      { "file", "", "f", positional = true } }
    local o = cli.read({ "--epochs", "3", "--quick", "data.csv" }, spec)
    assert.is_true(cli.given(o, "epochs")) -- (given, though equal to its default)
    assert.is_true(cli.given(o, "quick"))
    assert.is_true(cli.given(o, "file")) -- positional
    assert.is_false(cli.given(o, "lr"))
    assert.is_false(cli.given({ epochs = 3 }, "epochs")) -- not a table read() made
    -- moe_vs_mmoe --quick keeps what is given
    local dir = tmpname("_q")
    local out = io.popen(bin .. " run models/moe_vs_mmoe.lua --quick --runs 2 --steps 30 --tune-runs 0 --jobs 1 --out "
      .. q(dir .. "/c") .. " 2>&1"):read("*a")
    os.execute("rm -rf " .. q(dir))
    assert.matches("moe_vs_mmoe: 2 runs x 2 correlations x 3 models, 30 steps of batch 32 on 1000 rows", out)
  end)

  it("cli.self_exe is the moelua running the script, and cli.cores nproc's count", function()
    local out = io.popen(bin .. " -e 'print(require(\"moe.cli\").self_exe(), require(\"moe.cli\").cores())'"):read("*a")
    local exe, n = out:match("^(%S+)\t(%d+)\n$")
    local real = io.popen("readlink -f " .. q(bin)):read("*l")
    assert.are.equal(real, exe, out)
    assert.are.equal(tonumber(io.popen("nproc"):read("*l")), tonumber(n))
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
