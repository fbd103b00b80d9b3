-- The REPL's helpers (lua/moe/repl.lua) and what the REPL shows through them:
-- completion of lazily loaded modules, tensor and module members; classes,
-- modules and functions shown by their documentation; the layer tree of
-- tostring(model); one line per returned value; summary printed once; errors
-- raised by C functions located at the caller's line. (The terminal itself is
-- in spec/cli_spec.lua's tmux specs.)
local moe = require "moe"
local R = require "moe.repl"
local H = require "helpers"
local bin = os.getenv("MOELUA_BIN") or "build/moelua"
local nn = moe.nn

local function has(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

describe("REPL completion", function()
  it("lists moe's lazily loaded modules and models before their first use", function()
    local s = H.write_file(H.tmpname(".lua"), [[
moe = require "moe"
local before = {}
for _, k in ipairs { "nn", "optim", "data", "plot", "Model", "Sequential", "Input", "load", "help" } do
  if rawget(moe, k) ~= nil then before[#before + 1] = k end
end
local c = require("moe.repl").complete("moe.")
print(#before, table.concat(c, " "))
print(table.concat(require("moe.repl").complete("moe.Seq"), " "))
]])
    local out, err, rc = H.sh(bin .. " " .. s)
    os.remove(s)
    assert.are.equal(0, rc, err)
    local loaded, names = out:match("^(%d+)\t([^\n]*)\n")
    assert.are.equal("0", loaded, "the modules were loaded before completion: " .. out)
    for _, k in ipairs { "nn", "optim", "data", "plot", "Model", "Sequential", "Input", "load", "help", "zeros" } do
      assert.matches("%f[%w_]moe%." .. k .. "%f[^%w_]", names)
    end
    assert.matches("\nmoe%.Sequential\n$", out)
  end)

  it("completes tensor methods and fields, and module methods through the class chain", function()
    -- (completion walks _G, where the REPL's globals live; busted gives this file its own environment)
    local had_moe = rawget(_G, "moe")
    _G.moe = moe
    _G.x = moe.ones(3)
    _G.m = moe.Sequential { nn.Dense { units = 2 }, input_shape = { 3 } }
    local ok, err = pcall(function()
      local c = R.complete("x:su")
      assert.is_true(has(c, "x:sum") and has(c, "x:sub") and has(c, "x:sub_"), table.concat(c, " "))
      local f = R.complete("x.gr")
      assert.are.same({ "x.grad", "x.grad_fn" }, f)
      assert.are.same({}, R.complete("x:grad_"))            -- fields are not methods
      assert.are.same({ "m:fit" }, R.complete("m:fi"))
      assert.is_true(has(R.complete("m:summ"), "m:summary"))
      assert.are.same({ "m:train", "m:train_on_batch" }, R.complete("m:tra"))
      assert.is_true(has(R.complete("m."), "m.name"))
      assert.is_false(has(R.complete("m."), "m._params"))    -- private names need a "_" typed
      assert.is_true(has(R.complete("m._"), "m._params"))
      assert.is_false(has(R.complete("m:"), "m:__call"))
      assert.are.same({ "moe.nn.Dense" }, R.complete("moe.nn.Den"))
    end)
    _G.x, _G.m, _G.moe = nil, nil, had_moe
    assert(ok, err)
  end)
end)

describe("REPL display", function()
  it("shows classes as their call with defaults, modules and functions by their entries", function()
    assert.matches("^nn%.Dense{units = required, activation = none, use_bias = true,", R.render(nn.Dense))
    assert.matches("help%(moe%.nn%.Dense%) for more", R.render(nn.Dense))
    assert.matches("^<module moe%.nn: ", R.render(moe.nn))
    assert.are.equal("function moe.randn(size..., [opts])", R.render(moe.randn))
    assert.matches("^function model:fit{x, y, %.%.%.}", R.render(nn.Module.fit))
    assert.are.equal("{1, 2, a = 3}", R.render({ 1, 2, a = 3 }))
    assert.are.equal(tostring(moe.ones(2)), R.render(moe.ones(2)))
    assert.are.equal(tostring(print), R.render(print))
    assert.matches("^nn%.Dense{", tostring(nn.Dense))          -- print(nn.Dense) in a script too
  end)

  it("prints several results one per line", function()
    local out = {}
    local w = io.write
    io.write = function(...) for i = 1, select("#", ...) do out[#out + 1] = select(i, ...) end end
    local ok, err = pcall(R.show, moe.tensor { 3, 1, 2 }:topk(2))
    local ok2, err2 = pcall(R.show, 1, "a", nil)
    io.write = w
    assert(ok, err); assert(ok2, err2)
    local text = table.concat(out)
    assert.are.equal(" 3\n 2\n[moe.Tensor float32 of size 2]\n 1\n 3\n[moe.Tensor int64 of size 2]\n1\n\"a\"\nnil\n", text)
  end)

  it("prints a model as its layer tree with options, output shapes and parameter counts", function()
    local m = moe.Sequential { nn.Dense { units = 4, activation = "relu", name = "hidden" }, nn.BatchNormalization {},
      nn.Dense { units = 1, name = "out" }, input_shape = { 3 }, name = "tree_model" }
    local s = tostring(m)
    local lines = {}
    for l in s:gmatch("[^\n]+") do lines[#lines + 1] = l end
    local total = m:count_params()
    assert.are.equal(("Sequential \"tree_model\" -> (None, 1), %d params (8 non-trainable) ("):format(total), lines[1])
    assert.are.equal("  (hidden): Dense{units = 4, activation = \"relu\"} -> (None, 4), 16 params", lines[2])
    local bn = m:children()[2]
    assert.are.equal(("  (%s): BatchNormalization -> (None, 4), 16 params (8 non-trainable)"):format(bn.name), lines[3])
    assert.are.equal("  (out): Dense{units = 1} -> (None, 1), 5 params", lines[4])
    assert.are.equal(")", lines[5])
    assert.are.equal(37, total) -- 16 + 16 + 5
    -- a layer not built yet, a shared child, nested modules and keys that are not the child's name
    local d = nn.Dense { units = 3, use_bias = false, name = "lazy" }
    assert.are.equal("Dense \"lazy\" {units = 3, use_bias = false} (not built)", tostring(d))
    local Pair = nn.Module:extend("ReplSpecPair")
    function Pair:init(opts)
      nn.Module.init(self, opts)
      self.left = nn.Dense { units = 2, name = "shared_dense" }
      self.right = self.left
      self.inner = moe.Sequential { nn.Dense { units = 2, name = "inner_dense" } }
    end
    local p = Pair { name = "pair" }
    local t = tostring(p)
    assert.matches("^ReplSpecPair \"pair\", 0 params %(\n", t)
    assert.matches("\n  %(left%): Dense \"shared_dense\" {units = 2} %(not built%)\n", t)
    assert.matches("\n  %(right%): Dense \"shared_dense\" %(shared, above%)\n", t)
    assert.matches("\n  %(inner%): Sequential \"sequential_%d+\", 0 params %(\n    %(inner_dense%): Dense{units = 2} %(not built%)\n  %)\n%)$", t)
    nn.registry.ReplSpecPair = nil
  end)

  it("summary() prints once and returns nothing; print_fn = false returns the text", function()
    local m = moe.Sequential { nn.Dense { units = 2 }, input_shape = { 3 } }
    local printed = {}
    local r = { m:summary { print_fn = function(s) printed[#printed + 1] = s end } }
    assert.are.equal(0, #r)
    assert.are.equal(1, #printed)
    assert.are.equal(printed[1], m:summary { print_fn = false })
  end)
end)

describe("the REPL, piped", function()
  it("shows values, trees, classes and help, and runs an unfinished call only when it is complete", function()
    local input = table.concat({
      "x = moe.tensor{3, 1, 2}",
      "x:topk(2)",
      "m = moe.Sequential{moe.nn.Dense{units = 2, name = 'd'}, input_shape = {3}, name = 'piped'}",
      "m:summary()",
      "m",
      "moe.nn.Dense",
      "help 'nn.Flatten'",
      "print('a'",
      ")",
    }, "\n") .. "\n"
    local out, err, rc = H.sh(bin, input)
    assert.are.equal(0, rc, err)
    assert.matches("^ 3\n 2\n%[moe%.Tensor float32 of size 2%]\n 1\n 3\n%[moe%.Tensor int64 of size 2%]\n", out)
    local _, totals = out:gsub("Total params: 8", "")
    assert.are.equal(1, totals, out)                     -- summary printed once, not echoed back
    assert.is_nil(out:find("\\\n", 1, true))
    assert.matches("\nSequential \"piped\" %-> %(None, 2%), 8 params %(\n  %(d%): Dense{units = 2} %-> %(None, 2%), 8 params\n%)\n", out)
    assert.matches("\nnn%.Dense{units = required,", out)
    assert.matches("\nmoe%.nn%.Flatten{}\n  %[B, %.%.%.%] %-> %[B, everything else%]", out)
    assert.matches("\na\n$", out)
  end)

  it("errors raised by C functions name the caller's line, at the prompt and in scripts", function()
    local _, err, rc = H.sh(bin, "y = 1\nmoe.zeros(-1)\n")
    assert.are.equal(1, rc)
    assert.matches("^moelua: stdin:1: zeros: negative size %-1 at position 1\n", err)
    assert.matches("stdin:1: in main chunk", err)
    local s = H.write_file(H.tmpname(".lua"), "local moe = require 'moe'\nlocal x = 1\nlocal t = moe.ones(2)\nprint(t:view(5))\n")
    local _, err2, rc2 = H.sh(bin .. " " .. s)
    os.remove(s)
    assert.are.equal(1, rc2)
    assert.matches(s:gsub("%p", "%%%0") .. ":4: view: shape %[5%] is invalid", err2)
    -- an error that has a position keeps it
    local _, err3 = H.sh(bin, "error('mine')\n")
    assert.matches("^moelua: stdin:1: mine\n", err3)
  end)
end)
