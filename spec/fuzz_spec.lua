-- Every function and method, called with random arguments from a pool of odd
-- values, either returns or raises a Lua error: never a crash. (Under
-- `make asan-test` this also checks for memory errors and leaks.)
local moe = require "moe"
local ffi = require "ffi"
pcall(ffi.cdef, "char *mkdtemp(char *template); int chdir(const char *path); char *getcwd(char *buf, size_t size);")

-- runs fn(dir) with a new temporary directory as the working directory: file
-- writers given a pool string as a path write there, never into the source tree
local function in_temp_dir(fn)
  local cwd = ffi.new("char[4096]")
  assert(ffi.C.getcwd(cwd, 4096) ~= nil, "getcwd failed")
  local template = ffi.new("char[64]", (os.getenv("TMPDIR") or "/tmp") .. "/moe-fuzz-XXXXXX")
  assert(ffi.C.mkdtemp(template) ~= nil, "mkdtemp failed")
  local dir = ffi.string(template)
  assert(ffi.C.chdir(dir) == 0)
  local ok, err = pcall(fn, dir)
  assert(ffi.C.chdir(cwd) == 0, "cannot return to " .. ffi.string(cwd))
  os.execute("rm -rf '" .. dir .. "'")
  if not ok then error(err, 0) end
end

local function entries(dir)
  local p = assert(io.popen("ls -A '" .. dir .. "'"))
  local out = {}
  for name in p:lines() do out[#out + 1] = name end
  p:close()
  return out
end

local function pool()
  local f32 = moe.randn(3, 4)
  return {
    nil, 0, 1, 2, 3, -1, -2, 2.5, 0 / 0, 1 / 0, -1 / 0, 1e300, -1e300, 1e15, 2 ^ 40,
    true, false, "x", "float64", "int64", "bool", {}, { 1, 2 }, { -1 }, { 2, 2 }, { { 1 } },
    { dtype = "float64" }, { keepdim = true }, { dtype = "nope" }, print,
    moe.tensor(1), f32, f32:transpose(), f32:narrow(2, 2, 2), moe.zeros(0, 4),
    moe.zeros(1, 4):expand(3, 4), moe.tensor({ 1, 2, 3 }, { dtype = "int64" }),
    moe.tensor({ 0, 5 }, { dtype = "int32" }), moe.tensor{ true, false },
    moe.randn(2, 1, 3, { dtype = "float64" }), moe.tensor({ { 1, 2, 3 } }, { dtype = "int64" }),
  }
end

-- manual_seed would perturb the other specs' seeds (it is fuzzed separately); _error is
-- the library's error(), which raises what it is given
local skip = { manual_seed = true, _error = true }

describe("fuzz", function()
  it("no function or method crashes on random arguments", function()
    -- FUZZ_SEED / FUZZ_TRIALS run a longer hunt by hand; the suite uses fixed ones
    math.randomseed(tonumber(os.getenv("FUZZ_SEED")) or 99)
    local trials = tonumber(os.getenv("FUZZ_TRIALS")) or 150
    local nvalues = 41
    local names = {}
    for k, v in pairs(moe) do
      if type(v) == "function" and not skip[k] then names[#names + 1] = k end
    end
    table.sort(names)
    local calls, errors = 0, 0
    local strings = { x = true, float64 = true, int64 = true, bool = true }
    in_temp_dir(function(dir)
      for _, name in ipairs(names) do
        local f = moe[name]
        -- a fresh pool per function: in-place ops mutate it (say, an int tensor
        -- pushed to 2^31 - 1, whose bincount is then a legitimate 16 GiB tensor)
        local values = pool()
        for trial = 1, trials do
          local args, n = {}, math.random(0, 5)
          for i = 1, n do args[i] = values[math.random(1, nvalues)] end
          -- method-style: usually a tensor first
          if trial % 2 == 0 then args[1] = values[30 + math.random(1, 11)]; n = math.max(n, 1) end
          local ok, res = pcall(f, unpack(args, 1, n))
          calls = calls + 1
          if not ok then
            errors = errors + 1
            assert.are.equal("string", type(res), name .. " raised a non-string error")
          elseif moe.is_tensor(res) then
            assert.is_true(res:numel() >= 0)
            local _ = tostring(res) -- printing must work on every result
          end
        end
      end
      -- file writers (st_save) took pool strings as paths; a number is no path
      for _, name in ipairs(entries(dir)) do
        assert(strings[name], "a file named '" .. name .. "' was written: only strings are paths")
      end
    end)
    assert.is_true(calls > 1000)
    assert.is_true(errors > 0 and errors < calls)
    local ok = pcall(moe.manual_seed, -1)
    assert.is_false(ok)
  end)

  it("file functions take only strings as paths, and name themselves and the value's type", function()
    local core = moe.core
    -- (each named as the public function that reaches it: save, load, read_csv)
    local calls = {
      { "save", function(p) return core.st_save(p, "{}", {}) end },
      { "load", function(p) return core.st_read_header(p) end },
      { "load", function(p) return core.st_read_tensor(p, 0, 4, "float32", { 1 }) end },
      { "read_csv", function(p) return core.read_csv(p, true, ",", 0) end },
    }
    in_temp_dir(function(dir)
      for _, c in ipairs(calls) do
        local name, call = c[1], c[2]
        for _, bad in ipairs { 1, -1, 0 / 0, 1 / 0, true, {} } do
          local ok, err = pcall(call, bad)
          assert.is_false(ok)
          assert.matches(name .. ": argument #1 %(the path%) must be a string, got " .. type(bad), err)
        end
        local ok, err = pcall(call, "a\0b")
        assert.is_false(ok)
        assert.matches(name .. ": argument #1 %(the path%) contains a NUL byte", err)
        ok, err = pcall(call, "")
        assert.is_false(ok)
        assert.matches(name .. ": argument #1 %(the path%) is an empty string", err)
      end
      assert.are.same({}, entries(dir))
      -- a string path still works, and a number-like string is a name like any other
      core.st_save("1", "{}", {})
      assert.are.same({ "1" }, entries(dir))
      local h = core.st_read_header("1")
      assert.are.equal("{}", (h:gsub(" +$", "")))
    end)
  end)
end)
