-- Random-shape checks of topk, scans, cat/stack and index ops against naive loops,
-- on contiguous and non-contiguous layouts, float64 and zero-size dims.
local moe = require "moe"
local H = require "helpers"

-- the values of `t` along dim d at the position of flat index p of the other dims
local function lines(t, d)
  local shape = t:shape()
  local v = H.flat(t)
  local rest = {}
  for i = 1, #shape do if i ~= d then rest[#rest + 1] = shape[i] end end
  local out = {}
  for p = 0, H.numel(rest) - 1 do
    local ridx = H.unravel(p, rest)
    local line = {}
    for k = 1, shape[d] do
      local idx, j = {}, 1
      for i = 1, #shape do
        if i == d then idx[i] = k else idx[i] = ridx[j]; j = j + 1 end
      end
      line[k] = v[H.ravel(idx, shape) + 1]
    end
    out[p + 1] = line
  end
  return out
end

describe("topk and sort on random layouts", function()
  setup(function() moe.manual_seed(11); math.randomseed(11) end)
  it("match a naive stable sort along every dim", function()
    for trial = 1, 12 do
      local nd = math.random(1, 3)
      local x = H.layout(H.random_shape(nd, 6), H.layouts[trial % 4 + 1])
      x = (x * 2):round() -- many ties
      local d = math.random(1, nd)
      local n = x:size(d)
      local k = math.random(0, n)
      local largest = trial % 2 == 0
      local v, i = x:topk(k, d, largest)
      local gv, gi = lines(v, d), lines(i, d)
      for r, line in ipairs(lines(x, d)) do
        local order = {}
        for j = 1, n do order[j] = j end
        table.sort(order, function(a, b)
          if line[a] ~= line[b] then
            if largest then return line[a] > line[b] end
            return line[a] < line[b]
          end
          return a < b
        end)
        for j = 1, k do
          assert.are.equal(order[j], gi[r][j])
          assert.are.equal(line[order[j]], gv[r][j])
        end
      end
    end
  end)
end)

describe("scans on random layouts", function()
  it("cumsum and cumprod match running sums and products", function()
    for trial = 1, 10 do
      local nd = math.random(1, 3)
      local x = H.layout(H.random_shape(nd, 5), H.layouts[trial % 4 + 1])
      local d = math.random(1, nd)
      for _, op in ipairs { "cumsum", "cumprod" } do
        local got = lines(x[op](x, d), d)
        for r, line in ipairs(lines(x, d)) do
          local acc = op == "cumsum" and 0 or 1
          for j = 1, #line do
            acc = op == "cumsum" and acc + line[j] or acc * line[j]
            assert.is_true(math.abs(got[r][j] - acc) <= 1e-12 * math.max(1, math.abs(acc)))
          end
        end
      end
    end
  end)
end)

describe("cat and stack on random layouts", function()
  it("place every piece where a naive copy would", function()
    for trial = 1, 10 do
      local nd = math.random(1, 3)
      local shape = H.random_shape(nd, 4)
      local d = math.random(1, nd)
      local parts, total = {}, 0
      for p = 1, math.random(1, 4) do
        local s = {}
        for i = 1, nd do s[i] = shape[i] end
        s[d] = math.random(0, 3) -- zero-size pieces included
        parts[p] = H.layout(s, H.layouts[(trial + p) % 4 + 1])
        total = total + s[d]
      end
      local c = moe.cat(parts, d)
      assert.are.equal(total, c:size(d))
      local at = 1
      for _, p in ipairs(parts) do
        if p:size(d) > 0 then
          assert.are.same(p:totable(), c:narrow(d, at, p:size(d)):totable())
        end
        at = at + p:size(d)
      end
      local same = {}
      for p = 1, 3 do same[p] = H.layout(shape, H.layouts[p]) end
      local sd = math.random(1, nd + 1)
      local s = moe.stack(same, sd)
      for p = 1, 3 do assert.are.same(same[p]:totable(), s:select(sd, p):totable()) end
    end
  end)
end)

describe("zero-size and edge cases", function()
  it("index ops with empty indices and empty tensors", function()
    local x = moe.randn(4, 3, { dtype = "float64" })
    local empty = moe.tensor({}, { dtype = "int64" })
    assert.are.same({ 0, 3 }, x:index_select(1, empty):shape())
    assert.are.same(x:totable(), x:index_add(1, empty, moe.zeros(0, 3, { dtype = "float64" })):totable())
    assert.are.same({ 4, 0 }, x:gather(2, moe.zeros(4, 0, { dtype = "int64" })):shape())
    assert.are.same({ 0 }, empty:sort():shape())
    assert.are.same({ 0 }, empty:bincount():shape())
    assert.are.same({ 2, 0 }, moe.zeros(2, 0):softmax():shape())
    assert.are.same({ 0, 2 }, moe.zeros(0, 2):cumsum(1):shape())
  end)

  it("slices with empty ranges and negative bounds", function()
    local t = moe.arange(10)
    assert.are.same({ 0 }, t[{ { 4, 3 } }]:shape())
    assert.are.same({ 7, 8, 9 }, t[{ { -3, -1 } }]:totable())
    assert.are.same({ 9 }, t[{ { -1 } }]:totable())
  end)

  it("float64 survives a round trip with full precision", function()
    local v = { 0.1, 1 / 3, math.pi, 1e-300, -2 ^ 60 }
    assert.are.same(v, moe.tensor(v, { dtype = "float64" }):totable())
    local i = moe.tensor({ 2 ^ 40, -7 }, { dtype = "int64" })
    assert.are.same({ 2 ^ 40, -7 }, i:totable())
  end)

  it("printing 3-D tensors elides blocks and keeps the footer", function()
    local s = tostring(moe.zeros(20, 20, 20))
    assert.matches("%(1,.,.%) =", s)
    assert.matches("%(20,.,.%) =", s)
    assert.is_nil(s:find("%(10,.,.%)"))
    assert.matches("%[moe.Tensor float32 of size 20x20x20%]$", s)
  end)
end)
