-- moe.data: read_csv (plain, gzip, malformed input), frames, split, FeatureEncoder, batches.
local moe = require "moe"
local H = require "helpers"
local data = moe.data

local tmp = os.tmpname()
local function write(text, path)
  path = path or tmp
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

describe("read_csv", function()
  after_each(function() os.remove(tmp); os.remove(tmp .. ".gz") end)

  it("reads header, trims fields, detects numeric columns, and handles quotes", function()
    write('id, name ,score\n1, "Smith, J." ,2.5\n2,"say ""hi""",  -1e3 \n3,"two\nlines",7\n')
    local f = data.read_csv(tmp)
    assert.same({ "id", "name", "score" }, f.columns)
    assert.equal(3, f:nrows())
    assert.is_true(f:is_numeric("id"))
    assert.is_false(f:is_numeric("name"))
    assert.same({ 1, 2, 3 }, f:column("id"))
    assert.same({ "Smith, J.", 'say "hi"', "two\nlines" }, f:column("name"))
    assert.same({ 2.5, -1000, 7 }, f:column("score"))
  end)

  it("takes names, a separator, skipped lines, missing values and fixed kinds", function()
    write("# a comment line\nx;y;z\n1;?;a\n;4;b\n\n3;5;?\n")
    local f = data.read_csv(tmp, { header = false, skip = 2, sep = ";", columns = { "x", "y", "z" },
      na_values = { "?" }, dtypes = { y = "categorical" } })
    assert.equal(3, f:nrows())
    local x = f:column("x")
    assert.equal(1, x[1]); assert.is_true(x[2] ~= x[2]); assert.equal(3, x[3]) -- NaN where empty
    assert.same({ false, "4", "5" }, f:column("y"))
    assert.same({ "a", "b", false }, f:column("z"))
    assert.same({ 0, 1, 2 }, f:codes("y"):totable())
  end)

  it("reads gzip files like plain ones", function()
    write("a,b\n1,x\n2,y\n")
    os.execute("gzip -c " .. tmp .. " > " .. tmp .. ".gz")
    local f = data.read_csv(tmp .. ".gz")
    assert.same({ 1, 2 }, f:column("a"))
    assert.same({ "x", "y" }, f:column("b"))
  end)

  it("reads a field of several megabytes", function()
    local big = string.rep("q", 3 * 1024 * 1024)
    write("a,b\n1," .. big .. "\n2,small\n")
    local f = data.read_csv(tmp)
    assert.equal(#big, #f:column("b")[1])
  end)

  it("names the line and column of malformed input, and never half-reads", function()
    write("a,b\n1,2\n3\n")
    assert.matches("line 3: expected 2 fields, found 1", H.error_of(data.read_csv, tmp))
    write('a,b\n1,"open\n')
    assert.matches("line 2, column 2: unterminated quoted field", H.error_of(data.read_csv, tmp))
    write('a,b\n1,"x"y\n')
    assert.matches("line 2, column 2: text after a closing quote", H.error_of(data.read_csv, tmp))
    write("")
    assert.matches("has no rows", H.error_of(data.read_csv, tmp))
    write("a,b\n1,x\n")
    assert.matches("line 2, column 'b': 'x' is not a number",
      H.error_of(data.read_csv, tmp, { dtypes = { b = "numeric" } }))
    assert.matches("does not have", H.error_of(data.read_csv, tmp, { dtypes = { c = "numeric" } }))
    assert.matches("must be 'numeric' or 'categorical'", H.error_of(data.read_csv, tmp, { dtypes = { b = "int" } }))
    write("a,a\n1,2\n")
    assert.matches("both named 'a'", H.error_of(data.read_csv, tmp))
    write("1,2\n")
    assert.matches("2 columns but 3 names", H.error_of(data.read_csv, tmp, { header = false, columns = { "a", "b", "c" } }))
    assert.matches("cannot open", H.error_of(data.read_csv, tmp .. ".missing"))
    assert.matches("sep must be one character", H.error_of(data.read_csv, tmp, { sep = ";;" }))
  end)

  it("reports a truncated gzip file", function()
    local lines = {}
    for i = 1, 20000 do lines[i] = ("%d,%d,word%d"):format(i, i * 7, i % 13) end
    write("a,b,c\n" .. table.concat(lines, "\n") .. "\n")
    os.execute("gzip -c " .. tmp .. " > " .. tmp .. ".gz")
    local f = assert(io.open(tmp .. ".gz", "rb"))
    local bytes = f:read("*a")
    f:close()
    write(bytes:sub(1, math.floor(#bytes / 2)), tmp .. ".gz")
    assert.matches("truncated", H.error_of(data.read_csv, tmp .. ".gz"))
  end)

  it("loads the bundled census file (99,762 rows x 42 columns)", function()
    local f = data.read_csv("data/census-income.test.gz", { header = false })
    assert.equal(99762, f:nrows())
    assert.equal(42, f:ncols())
    assert.is_true(f:is_numeric("1"))            -- age
    assert.is_false(f:is_numeric("42"))          -- the income label
    assert.same({ "- 50000.", "50000+." }, (function() local l = f:levels("42"); table.sort(l); return l end)())
  end)
end)

describe("frames", function()
  local f
  before_each(function()
    write("k,v\na,1\nb,2\nc,3\na,4\n")
    f = data.read_csv(tmp)
    os.remove(tmp)
  end)
  it("take rows in the given order, select and drop columns", function()
    local g = f:take({ 4, 1 })
    assert.equal(2, g:nrows())
    assert.same({ "a", "a" }, g:column("k"))
    assert.same({ 4, 1 }, g:column("v"))
    assert.same({ 3 }, f:take(moe.tensor({ 3 }, { dtype = "int64" })):column("v"))
    assert.same({ "v" }, f:select({ "v" }).columns)
    assert.same({ "k" }, f:drop({ "v" }).columns)
  end)
  it("name the missing column and the bad index", function()
    assert.matches("no column 'z' %(columns: k, v%)", H.error_of(f.column, f, "z"))
    assert.matches("row index 5 out of range 1..4", H.error_of(f.take, f, { 5 }))
    assert.matches("row index 0 out of range", H.error_of(f.take, f, { 0 }))
    assert.matches("is numeric", H.error_of(f.codes, f, "v"))
  end)
end)

describe("split and batches", function()
  it("split gives disjoint parts covering every row, reproducible by seed", function()
    local s = data.split(103, { train = 0.5, val = 0.25, test = 0.25, seed = 7 })
    assert.equal(51, #s.train); assert.equal(25, #s.val); assert.equal(27, #s.test)
    local seen = {}
    for _, part in pairs(s) do for _, i in ipairs(part) do
      assert.is_nil(seen[i]); seen[i] = true
    end end
    for i = 1, 103 do assert.is_true(seen[i]) end
    assert.same(s, data.split(103, { train = 0.5, val = 0.25, test = 0.25, seed = 7 }))
    assert.are_not.same(s.train, data.split(103, { train = 0.5, val = 0.25, test = 0.25, seed = 8 }).train)
    local p = data.split(10, { train = 0.3, seed = 1 })
    assert.equal(3, #p.train)
    assert.matches("add up to 1.2", H.error_of(data.split, 10, { train = 0.7, test = 0.5 }))
    assert.matches("must be a number in", H.error_of(data.split, 10, { train = 0 }))
  end)
  it("batches visit every row once, shuffled or in order", function()
    local seen, sizes = {}, {}
    for idx, b in data.batches(10, 4, { seed = 3 }) do
      sizes[b] = idx:numel()
      for _, i in ipairs(idx:totable()) do assert.is_nil(seen[i]); seen[i] = true end
    end
    assert.same({ 4, 4, 2 }, sizes)
    for i = 1, 10 do assert.is_true(seen[i]) end
    local order = {}
    for idx in data.batches(5, 2, { shuffle = false }) do
      for _, i in ipairs(idx:totable()) do order[#order + 1] = i end
    end
    assert.same({ 1, 2, 3, 4, 5 }, order)
    local n = 0
    for _ in data.batches(5, 2, { drop_last = true }) do n = n + 1 end
    assert.equal(2, n)
  end)
  it("shuffled batches follow data.permutation's order for the seed (the C copy of the shuffle agrees)", function()
    for _, seed in ipairs { 1, 3, 99991, 2 ^ 33 + 5 } do
      for _, n in ipairs { 1, 2, 7, 1000 } do
        local order = {}
        for idx in data.batches(n, 3, { seed = seed }) do
          for _, i in ipairs(idx:totable()) do order[#order + 1] = i end
        end
        assert.same(data.permutation(n, seed), order)
      end
    end
  end)
end)

describe("FeatureEncoder", function()
  it("one-hot columns stay aligned across splits; numerics use the training statistics", function()
    write("color,size,w\nred,1,10\nblue,2,20\nred,3,\ngreen,4,40\npurple,5,50\n")
    local f = data.read_csv(tmp)
    os.remove(tmp)
    local enc = data.FeatureEncoder { categorical = { "color" }, numeric = { "w", "size" } }
    enc:fit(f:take({ 1, 2, 3 }))                     -- training rows: red, blue, red
    assert.same({ "w", "size", "color=blue", "color=red" }, enc:feature_names())
    local x = enc:transform(f):totable()
    -- w: training values 10, 20 (the third is missing): mean 15, population std 5
    assert.is_near(-1, x[1][1], 1e-6); assert.is_near(1, x[2][1], 1e-6)
    assert.equal(0, x[3][1])                          -- missing: the mean
    assert.is_near(5, x[4][1], 1e-6)
    -- size: 1, 2, 3 -> mean 2, std sqrt(2/3)
    assert.is_near((5 - 2) / math.sqrt(2 / 3), x[5][2], 1e-5)
    assert.same({ 0, 1 }, { x[1][3], x[1][4] })      -- red
    assert.same({ 1, 0 }, { x[2][3], x[2][4] })      -- blue
    assert.same({ 0, 0 }, { x[4][3], x[4][4] })      -- green: unseen in training
    assert.same({ 0, 0 }, { x[5][3], x[5][4] })      -- purple too
    -- a split without blue still has the blue column, in the same place
    local y = enc:transform(f:take({ 1, 3 })):totable()
    assert.equal(4, #y[1])
    assert.same({ 0, 1 }, { y[2][3], y[2][4] })
    assert.matches("call fit first", H.error_of(data.FeatureEncoder { numeric = { "w" } }.transform,
      data.FeatureEncoder { numeric = { "w" } }, f))
    assert.matches("is categorical", H.error_of(enc.fit, data.FeatureEncoder { numeric = { "color" } }, f))
  end)
end)

describe("datasets", function()
  it("census_income: the paper's tasks, labels from the raw columns, no label leaks into the inputs", function()
    local ds = moe.datasets.census_income { seed = 1 }
    assert.equal(49881, ds.train.x:size(1)); assert.equal(24940, ds.val.x:size(1)); assert.equal(24941, ds.test.x:size(1))
    assert.equal(ds.num_features, ds.train.x:size(2))
    assert.same({ "income", "never_married" }, ds.task_names)
    for _, name in ipairs(ds.feature_names) do
      assert.is_nil(name:match("^marital_stat"), name)
      assert.is_nil(name:match("^income_50k"), name)
      assert.is_nil(name:match("^instance_weight"), name)
    end
    -- labels against a count over the raw file (every row lands in one split)
    local f = data.read_csv("data/census-income.test.gz", { header = false })
    local rich, single = 0, 0
    for _, v in ipairs(f:column("42")) do if v == "50000+." then rich = rich + 1 end end
    for _, v in ipairs(f:column("8")) do if v == "Never married" then single = single + 1 end end
    local function total(task)
      local s = 0
      for _, part in ipairs { ds.train, ds.val, ds.test } do s = s + part.y[task]:sum():item() end
      return s
    end
    assert.equal(rich, total("income"))
    assert.equal(single, total("never_married"))
    assert.equal(43143, single)
    -- numerics standardised on the training rows
    local age = ds.train.x:select(2, 1)
    assert.is_near(0, age:mean():item(), 1e-4)
    assert.is_near(1, age:std():item(), 1e-3)
    assert.is_true(ds.train.instance_weight:min():item() > 0)
    -- group 2: education becomes a label and leaves the inputs
    local g2 = moe.datasets.census_income { tasks = { "education", "never_married" } }
    for _, name in ipairs(g2.feature_names) do assert.is_nil(name:match("^education="), name) end
    assert.matches("unknown task 'age'", H.error_of(moe.datasets.census_income, { tasks = { "age" } }))
  end)

  it("synthetic: reproducible by seed, label correlation follows the weights' cosine", function()
    local a = moe.datasets.synthetic { n = 3000, correlation = 0.9, seed = 4 }
    local b = moe.datasets.synthetic { n = 3000, correlation = 0.9, seed = 4 }
    assert.equal(0, (a.x - b.x):abs():max():item())
    assert.same({ 3000, 100 }, a.x:shape())
    assert.same({ 3000, 1 }, a.y.y1:shape())
    local function cos(u, v) return (u * v):sum():item() / math.sqrt((u * u):sum():item() * (v * v):sum():item()) end
    assert.is_near(0.9, cos(a.w1, a.w2), 1e-5)
    local function corr(t)
      local y1, y2 = t.y.y1:view(-1), t.y.y2:view(-1)
      y1, y2 = y1 - y1:mean(), y2 - y2:mean()
      return cos(y1, y2)
    end
    -- (how far the labels follow depends on the draw of alpha and beta: some draws
    -- flatten the sine sum, and noise dominates; seed 1 is an ordinary one)
    local c = {}
    for i, r in ipairs { 0, 0.5, 0.9 } do c[i] = corr(moe.datasets.synthetic { n = 3000, correlation = r, seed = 1 }) end
    assert.is_true(math.abs(c[1]) < 0.1 and c[2] > 0.3 and c[3] > c[2] + 0.2, table.concat(c, " "))
    local same = moe.datasets.synthetic { n = 500, correlation = 1, noise = 0, seed = 2 }
    assert.is_true((same.y.y1 - same.y.y2):abs():max():item() < 1e-5)
    assert.matches("correlation must be in", H.error_of(moe.datasets.synthetic, { correlation = 2 }))
  end)
end)
