-- The fuzzers' corpora (seeds and regression inputs, spec/fuzz/csv and
-- spec/fuzz/ckpt) replayed through the public readers on every `make test`,
-- with or without clang: each file reads, or fails with a message naming the
-- reader; checkpoints go through the libFuzzer harness's own checks
-- (ckpt_driver.lua) under the plain interpreter.
local moe = require "moe"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/fuzz"

local function files(dir)
  local p = assert(io.popen("ls -A '" .. here .. "/" .. dir .. "'"))
  local out = {}
  for name in p:lines() do out[#out + 1] = name end
  p:close()
  table.sort(out)
  return out
end

local read = require("helpers").read_file

describe("fuzz corpora", function()
  it("every CSV input reads into a frame or fails with a read_csv error", function()
    local names = files("csv")
    assert.is_true(#names >= 10)
    local read_ok = 0
    for _, name in ipairs(names) do
      local ok, err = pcall(moe.data.read_csv, here .. "/csv/" .. name)
      if ok then
        read_ok = read_ok + 1
      else
        assert.are.equal("string", type(err), name)
        assert.matches("read_csv: ", err, 1, true)
      end
    end
    assert.is_true(read_ok >= 5)
  end)

  it("a NUL byte in a CSV file is an error naming the line (found by csv_fuzz)", function()
    local err = select(2, pcall(moe.data.read_csv, here .. "/csv/regress-nul-in-field.csv"))
    assert.matches("regress%-nul%-in%-field%.csv line 1: a NUL byte", err)
    -- before the fix, the field "\0\0\0?\0" became the level "" (and two such fields one level)
    local tmp = os.tmpname()
    finally(function() os.remove(tmp) end)
    local f = assert(io.open(tmp, "wb"))
    f:write("a,b\n1,x\n2,y\0z\n")
    f:close()
    assert.matches("line 3: a NUL byte", select(2, pcall(moe.data.read_csv, tmp)))
  end)

  it("every checkpoint input passes the harness's checks (load, or a load error)", function()
    local driver = dofile(here .. "/ckpt_driver.lua")
    local names = files("ckpt")
    assert.is_true(#names >= 8)
    local tmp = os.tmpname()
    finally(function() os.remove(tmp) end)
    for _, name in ipairs(names) do
      local ok, err = pcall(driver, tmp, read(here .. "/ckpt/" .. name))
      assert(ok, name .. ": " .. tostring(err))
    end
    -- and the seeds are real checkpoints: the model files load as models
    for _, name in ipairs { "sequential.moe", "sequential-adam.moe", "functional.moe" } do
      local m = moe.load(here .. "/ckpt/" .. name)
      assert.is_true(#m:get_weights() >= 4, name)
    end
  end)
end)
