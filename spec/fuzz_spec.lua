-- Every function and method, called with random arguments from a pool of odd
-- values, either returns or raises a Lua error: never a crash. (Under
-- `make asan-test` this also checks for memory errors and leaks.)
local moe = require "moe"

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

local skip = { manual_seed = true } -- would perturb the other specs' seeds (it is fuzzed separately)

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
    -- file writers (st_save, ...) may take a pool string as a path: whatever they
    -- create in the working directory is removed afterwards
    local paths, existed = { "x", "float64", "int64", "bool" }, {}
    for _, p in ipairs(paths) do
      local f = io.open(p, "rb")
      existed[p] = f ~= nil
      if f then f:close() end
    end
    finally(function()
      for _, p in ipairs(paths) do if not existed[p] then os.remove(p) end end
    end)
    local calls, errors = 0, 0
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
    assert.is_true(calls > 1000)
    assert.is_true(errors > 0 and errors < calls)
    local ok = pcall(moe.manual_seed, -1)
    assert.is_false(ok)
  end)
end)
