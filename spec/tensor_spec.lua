-- Creation, dtypes, views, indexing, conversion, printing and the RNG.
local moe = require "moe"
local H = require "helpers"

describe("creation", function()
  it("from nested tables, numbers and tensors, with options", function()
    local t = moe.tensor{ { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ 2, 3 }, t:shape())
    assert.are.equal("float32", t:dtype())
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:totable())
    assert.are.equal("float64", moe.tensor({ 1 }, { dtype = "float64" }):dtype())
    assert.are.equal("bool", moe.tensor{ true, false }:dtype())
    assert.are.equal(0, moe.tensor(7):dim())
    assert.are.equal(7, moe.tensor(7):item())
    assert.are.same({ 0 }, moe.tensor{}:shape())
    local c = moe.tensor(t, { dtype = "int64" })
    assert.are.equal("int64", c:dtype())
    assert.is_false(c:same_storage(t))
  end)

  it("zeros, ones, full, empty take varargs or a table, and options last", function()
    for _, z in ipairs { moe.zeros(2, 3), moe.zeros{ 2, 3 }, moe.zeros({ 2, 3 }, { dtype = "float32" }) } do
      assert.are.same({ 2, 3 }, z:shape())
      assert.are.equal(0, z:abs():sum():item())
    end
    assert.are.same({ { 1, 1 } }, moe.ones(1, 2):totable())
    assert.are.same({ { -1.5, -1.5 } }, moe.full(1, 2, -1.5):totable())
    assert.are.same({ { 7, 7 } }, moe.full({ 1, 2 }, 7, { dtype = "int32" }):totable())
    assert.are.equal("float64", moe.ones(2, { dtype = "float64" }):dtype())
    assert.are.equal(0, moe.zeros():dim())
    assert.are.same({ 3, 0 }, moe.empty(3, 0):shape())
    assert.are.equal("int64", moe.zeros_like(moe.ones(2, { dtype = "int64" })):dtype())
    assert.are.same({ 9, 9 }, moe.full_like(moe.ones(2), 9):totable())
  end)

  it("arange, linspace and eye", function()
    assert.are.same({ 0, 1, 2, 3, 4 }, moe.arange(5):totable())
    assert.are.equal("int64", moe.arange(5):dtype())
    assert.are.same({ 2, 4, 6 }, moe.arange(2, 8, 2):totable())
    assert.are.same({ 1, 0.5 }, moe.arange(1, 0, -0.5):totable())
    assert.are.equal("float32", moe.arange(0, 1, 0.25):dtype())
    assert.are.same({}, moe.arange(3, 3):totable())
    local l = moe.linspace(0, 1, 5, { dtype = "float64" })
    assert.are.same({ 0, 0.25, 0.5, 0.75, 1 }, l:totable())
    assert.are.same({ { 1, 0, 0 }, { 0, 1, 0 } }, moe.eye(2, 3):totable())
    assert.are.same({ { 1, 0 }, { 0, 1 } }, moe.eye(2):totable())
  end)
end)

describe("random numbers", function()
  it("manual_seed makes every random op reproducible", function()
    local function draw()
      return { moe.rand(5):totable(), moe.randn(2, 3, { dtype = "float64" }):totable(),
               moe.randint(1, 6, 8):totable(), moe.randperm(7):totable() }
    end
    moe.manual_seed(123)
    local a = draw()
    moe.manual_seed(123)
    local b = draw()
    assert.are.same(a, b)
    moe.manual_seed(124)
    assert.are_not.same(a, draw())
  end)

  it("distributions have the right range and moments", function()
    moe.manual_seed(7)
    local u = moe.rand(200000, { dtype = "float64" })
    assert.is_true(u:min():item() >= 0 and u:max():item() < 1)
    assert.is_true(math.abs(u:mean():item() - 0.5) < 0.005)
    assert.is_true(math.abs(u:var():item() - 1 / 12) < 0.002)
    local n = moe.randn(200000, { dtype = "float64" })
    assert.is_true(math.abs(n:mean():item()) < 0.01)
    assert.is_true(math.abs(n:std():item() - 1) < 0.01)
    local r = moe.randint(1, 6, 60000)
    assert.are.equal(1, r:min():item())
    assert.are.equal(6, r:max():item())
    local counts = r:bincount()
    assert.is_true(counts:min():item() > 9500 and counts:max():item() < 10500)
    local p = moe.randperm(50)
    local sorted = p:sort()
    assert.are.same(moe.arange(1, 51):totable(), sorted:totable())
  end)
end)

describe("views", function()
  it("view, reshape, transpose, permute, narrow, select, expand, squeeze, unsqueeze share storage", function()
    local t = moe.arange(24):view(2, 3, 4)
    assert.are.same({ 6, 4 }, t:view(-1, 4):shape())
    assert.are.same({ 24, 1 }, t:view(-1, 1):shape())
    assert.is_true(t:view(6, 4):same_storage(t))
    local tr = t:transpose(1, 3)
    assert.are.same({ 4, 3, 2 }, tr:shape())
    assert.is_false(tr:is_contiguous())
    assert.are.equal(t[2][3][4], tr[4][3][2])
    assert.are.same(tr:contiguous():view(-1):totable(), tr:reshape(-1):totable())
    local p = t:permute(3, 1, 2)
    assert.are.same({ 4, 2, 3 }, p:shape())
    assert.are.equal(t[2][1][3], p[3][2][1])
    assert.are.same({ 4, 2, 3 }, t:permute{ 3, 1, 2 }:shape())
    local n = t:narrow(3, 2, 2)
    assert.are.same({ 2, 3, 2 }, n:shape())
    assert.are.equal(t[1][1][2], n[1][1][1])
    assert.are.same(t:select(2, 3):totable(), t[{ {}, 3 }]:totable())
    local e = moe.tensor{ { 1 }, { 2 } }:expand(2, 3)
    assert.are.same({ { 1, 1, 1 }, { 2, 2, 2 } }, e:totable())
    assert.are.same({ 0, 0 }, { e:stride(2), 0 })
    assert.are.same({ 3 }, moe.zeros(1, 3, 1):squeeze():shape())
    assert.are.same({ 3, 1 }, moe.zeros(1, 3, 1):squeeze(1):shape())
    assert.are.same({ 1, 3 }, moe.zeros(3):unsqueeze(1):shape())
    assert.are.same({ 3, 1 }, moe.zeros(3):unsqueeze(-1):shape())
    -- writes through a view land in the base tensor
    n:fill_(-1)
    assert.are.equal(-1, t[2][3][3])
  end)

  it("slicing with tables, negative indices, and assignment", function()
    local t = moe.arange(12):view(3, 4)
    assert.are.same({ { 5, 6 }, { 9, 10 } }, t[{ { 2, 3 }, { 2, 3 } }]:totable())
    assert.are.same({ 8, 9, 10, 11 }, t[-1]:totable())
    assert.are.equal(11, t[-1][-1])
    assert.are.same({ 3, 7, 11 }, t[{ {}, -1 }]:totable())
    assert.are.equal(6, t[{ 2, 3 }]:item())
    t[1] = 0
    assert.are.same({ 0, 0, 0, 0 }, t[1]:totable())
    t[{ {}, 2 }] = moe.tensor({ 7, 8, 9 }, { dtype = "int64" })
    assert.are.same({ 7, 8, 9 }, t:select(2, 2):totable())
    t[{ 3, 4 }] = 42
    assert.are.equal(42, t[3][4])
    assert.are.equal(3, #t)
  end)

  it("copy_ broadcasts and converts dtype; clone is independent", function()
    local a = moe.zeros(2, 3, { dtype = "int32" })
    a:copy_(moe.tensor{ 1.9, 2, 3 })
    assert.are.same({ { 1, 2, 3 }, { 1, 2, 3 } }, a:totable())
    local c = a:clone()
    c:fill_(0)
    assert.are.equal(6, a[1]:sum():item())
    -- overlapping copy is well defined
    local v = moe.arange(5)
    v:narrow(1, 2, 4):copy_(v:narrow(1, 1, 4))
    assert.are.same({ 0, 0, 1, 2, 3 }, v:totable())
  end)

  it("conversions between dtypes", function()
    local x = moe.tensor{ -1.5, 0, 2.7 }
    assert.are.same({ -1, 0, 2 }, x:int():totable())
    assert.are.same({ true, false, true }, x:bool():totable())
    assert.are.equal("float64", x:double():dtype())
    assert.are.equal("int64", x:to("int64"):dtype())
    assert.are.equal("int64", x:long():dtype())
    assert.are.equal(x, x:to("float32"))
    -- float -> int saturates and maps NaN to 0; int arithmetic wraps
    assert.are.same({ 0, 2147483647, -2147483648 }, moe.tensor{ 0 / 0, 1 / 0, -1e20 }:int():totable())
    local big = moe.tensor({ 2147483647 }, { dtype = "int32" })
    assert.are.same({ -2147483648 }, (big + 1):totable())
  end)

  it("shape queries", function()
    local t = moe.zeros(2, 3, 4)
    assert.are.equal(3, t:dim())
    assert.are.equal(24, t:numel())
    assert.are.equal(3, t:size(2))
    assert.are.equal(4, t:size(-1))
    assert.are.same({ 2, 3, 4 }, t:size())
    assert.are.same({ 12, 4, 1 }, t:stride())
    assert.are.equal("cpu", t:device())
    assert.is_true(moe.is_tensor(t))
    assert.is_false(moe.is_tensor({}))
  end)
end)

describe("printing", function()
  it("shows values and a footer with dtype and size", function()
    local s = tostring(moe.tensor{ { 1, 2 }, { 3, 4 } })
    assert.matches("^ 1 2\n 3 4\n%[moe.Tensor float32 of size 2x2%]$", s)
    assert.matches("1.5000", tostring(moe.tensor{ 1.5, 2 }))
    assert.matches("%(2,.,.%) =", tostring(moe.zeros(2, 2, 2)))
    assert.matches("size %[%]", tostring(moe.tensor(3)))
    assert.matches("no elements", tostring(moe.zeros(0, 3)))
    assert.matches("true", tostring(moe.tensor{ true }))
  end)

  it("elides large tensors", function()
    local s = tostring(moe.arange(100000):view(100, 1000))
    assert.matches("%.%.%.", s)
    assert.is_true(#s < 1000)
    assert.matches("99999", s)
    assert.matches("size 100x1000", s)
  end)
end)

describe("function and method forms", function()
  it("every op is both", function()
    local t = moe.tensor{ { 1, -2 }, { 3, -4 } }
    assert.are.same(moe.abs(t):totable(), t:abs():totable())
    assert.are.same(moe.sum(t, 2):totable(), t:sum(2):totable())
    assert.are.same(moe.transpose(t):totable(), t:transpose():totable())
    assert.are.same(moe.softmax(t, 1):totable(), t:softmax(1):totable())
    assert.are.same(moe.narrow(t, 1, 2, 1):totable(), t:narrow(1, 2, 1):totable())
  end)
end)

describe("allocator cache", function()
  it("reuses freed large blocks, keeps their contents apart, and gives them back on empty_cache", function()
    moe.empty_cache()
    local a = moe.full({ 1024, 2048 }, 3) -- 8 MiB
    a = nil
    collectgarbage(); collectgarbage()
    local b = moe.zeros(1024, 2048)       -- same size: served from the cache, still all zeros
    assert.are.equal(0, b:abs():max():item())
    b = nil
    collectgarbage(); collectgarbage()
    local freed = moe.empty_cache()
    if moe.core.allocator_caches then
      assert.is_true(freed >= 8 * 2 ^ 20, "empty_cache returned " .. freed)
    else
      assert.are.equal(0, freed)
    end
    assert.are.equal(0, moe.empty_cache())
  end)
  it("holds a fresh process under its own high-water mark when sizes change", function()
    if not moe.core.allocator_caches then return end -- sanitizer build: nothing is cached
    -- a fresh process, so that earlier specs' peaks do not set the bound
    local bin = os.getenv("MOELUA_BIN") or "build/moelua"
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
local moe = require "moe"
local function rss_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end
collectgarbage(); collectgarbage()
local r0 = rss_kb()
for i = 1, 40 do
  local t = moe.ones(256 + 16 * i, 1024) -- a new size class most steps (1 - 3.5 MiB)
  t = nil
  collectgarbage()
end
print(rss_kb() - r0)
]])
    f:close()
    local p = io.popen(bin .. " " .. script)
    local out = p:read("*a")
    p:close()
    os.remove(script)
    local grew = tonumber(out:match("(-?%d+)"))
    assert.is_number(grew, out)
    -- without the bound the cache would keep one block of every size (~90 MiB);
    -- the bound is the high-water mark (~3.5 MiB here) plus 32 MiB of slack
    assert.is_true(grew < 40 * 1024, ("RSS grew by %d kB"):format(grew))
  end)
end)
