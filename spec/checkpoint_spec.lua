-- Checkpoints: save -> load gives identical models (and optimizer state);
-- files written by the reference safetensors library load; damaged and hostile
-- files fail with clear errors and never crash.
local moe = require "moe"
local nn = moe.nn
local H = require "helpers"

local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir)
local function path(name) return dir .. "/" .. name end

local function read_all(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local function write_all(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end
local function same(a, b) return (a - b):abs():max():item() == 0 end

local function build_model()
  moe.manual_seed(21)
  local x = moe.Input { shape = { 6 }, name = "features" }
  local h = nn.Dense { units = 8, activation = "relu", kernel_regularizer = "l2", kernel_constraint = "max_norm" }(x)
  h = nn.BatchNormalization {}(h)
  h = nn.Dropout { rate = 0.3 }(h)
  local m = moe.Model { inputs = x, outputs = {
    income = nn.Dense { units = 1, activation = "sigmoid", name = "income" }(h),
    marital = nn.Dense { units = 3, activation = "softmax", name = "marital" }(h) } }
  m:compile { optimizer = moe.optim.Adam { lr = 0.01 },
    loss = { income = "binary_crossentropy", marital = "categorical_crossentropy" } }
  return m
end

describe("checkpoints", function()
  local X = moe.randn(16, 6)
  local Y = { income = moe.rand(16, 1):gt(0.5):float(), marital = moe.randint(1, 3, 16) }

  it("save -> load restores a model whose outputs are bit-identical, with its optimizer state", function()
    local m = build_model()
    for _ = 1, 5 do m:train_on_batch(X, Y) end
    m:save(path("m.moe"))
    local m2 = moe.load(path("m.moe"))
    local a, b = m:predict(X), m2:predict(X)
    assert.is_true(same(a.income, b.income))
    assert.is_true(same(a.marital, b.marital))
    -- training continues identically: same optimizer moments and step counts
    moe.manual_seed(5); m:train_on_batch(X, Y)
    moe.manual_seed(5); m2:train_on_batch(X, Y)
    local w1, w2 = m:get_weights(), m2:get_weights()
    assert.equal(#w1, #w2)
    for i = 1, #w1 do assert.is_true(same(w1[i], w2[i])) end
  end)

  it("Sequential models, nested models and user classes round-trip", function()
    local Scaler = nn.Module:extend("CheckpointScaler")
    function Scaler:init(opts) nn.Module.init(self, opts); self:_options(opts, { factor = 2 }) end
    function Scaler:build(shape) self:add_weight("w", { shape[#shape] }, { initializer = "ones" }) end
    function Scaler:forward(x) return x * self.w * self.factor end
    moe.manual_seed(3)
    local inner = moe.Sequential { nn.Dense { units = 4, activation = "tanh" }, Scaler { factor = 3 }, name = "inner" }
    local m = moe.Sequential { inner, nn.LayerNormalization {}, nn.Dense { units = 2 }, input_shape = { 5 } }
    m:save(path("s.moe"))
    local m2 = moe.load(path("s.moe"))
    local x = moe.randn(3, 5)
    assert.is_true(same(m:predict(x), m2:predict(x)))
    assert.equal(3, m2:children()[1]:children()[2].factor)
  end)

  it("a Lambda's function comes back only through custom_objects", function()
    local x = moe.Input { shape = { 2 } }
    local m = moe.Model { inputs = x, outputs = nn.Lambda { fn = function(t) return t * 2 end, function_name = "double" }(x) }
    m:save(path("l.moe"))
    assert.matches("needs its function", H.error_of(moe.load, path("l.moe")))
    local m2 = moe.load(path("l.moe"), { custom_objects = { double = function(t) return t * 2 end } })
    assert.same({ { 2, 4 } }, m2(moe.tensor({ { 1, 2 } })):totable())
  end)

  it("save_tensors / load_tensors round-trip every dtype and a 0-d tensor", function()
    local ts = { a = moe.randn(3, 4), b = moe.arange(1, 6), c = moe.tensor(1.5, { dtype = "float64" }),
      d = moe.tensor({ true, false }), e = moe.randn(4, 3):transpose(1, 2), f = moe.zeros(0, 3) }
    moe.save_tensors(path("t.safetensors"), ts, { note = "hi" })
    local r, md = moe.load_tensors(path("t.safetensors"))
    assert.equal("hi", md.note)
    for k, v in pairs(ts) do
      assert.equal(v:dtype(), r[k]:dtype())
      assert.same(v:shape(), r[k]:shape())
      assert.same(v:totable(), r[k]:totable())
    end
  end)

  it("reads a file written by the reference safetensors library", function()
    -- spec/fixtures/numpy_written.safetensors, made by spec/fixtures/make_safetensors_fixture.py
    local r, md = moe.load_tensors("spec/fixtures/numpy_written.safetensors")
    assert.equal("safetensors.numpy", md.source)
    assert.same({ { 0, 0.25, 0.5 }, { 0.75, 1, 1.25 } }, r.weight:totable())
    assert.equal("float32", r.weight:dtype())
    assert.same({ 1, -2, 3, 2 ^ 40 }, r.ids:totable())
    assert.equal(2.5, r.scale:item())
    assert.equal(0, r.scale:dim())
    assert.same({ true, false, true }, r.mask:totable())
    assert.same({ { 7 }, { -8 } }, r.counts:totable())
  end)

  it("writes atomically: a failed save leaves the previous file intact and no temporary behind", function()
    local m = build_model()
    m:save(path("a.moe"))
    local before = read_all(path("a.moe"))
    local bad = moe.Sequential { nn.Lambda { fn = function(t) return t end }, input_shape = { 2 } }
    -- a Lambda layer saves (its function name only); make the config unserializable instead
    rawset(bad:children()[1], "_config", { f = function() end })
    bad:children()[1].get_config = nn.Module.get_config
    assert.matches("Lua function", H.error_of(function() bad:save(path("a.moe")) end))
    assert.equal(before, read_all(path("a.moe")))
    assert.matches("cannot create a temporary file", H.error_of(function() m:save(dir .. "/no/such/dir/x.moe") end))
    local p = io.popen("ls " .. dir)
    local listing = p:read("*a")
    p:close()
    assert.is_nil(listing:find("tmp"))
  end)

  it("fails cleanly on truncated, corrupted or hostile files; never crashes", function()
    local m = build_model()
    m:save(path("good.moe"))
    local good = read_all(path("good.moe"))
    local x = moe.randn(2, 6)
    local ref = m:predict(x)
    local n = #good
    local outcomes = { ok = 0, err = 0 }
    local function try(bytes)
      write_all(path("bad.moe"), bytes)
      local ok, res = pcall(moe.load, path("bad.moe"))
      if ok then
        -- a flipped data byte (or a renamed output) gives another valid model: it still computes
        outcomes.ok = outcomes.ok + 1
        local ok2, out = pcall(res.predict, res, x)
        assert.is_true(ok2 or type(out) == "string")
      else
        outcomes.err = outcomes.err + 1
        assert.is_string(res)
        assert.matches("load", res)
      end
    end
    -- every truncation length in the header and a sample beyond
    local len = 0
    while len < n do
      try(good:sub(1, len))
      len = len + (len < 700 and 1 or 97)
    end
    -- flip each byte of the header region, and a sample of data bytes
    for i = 1, n do
      if i <= 700 or i % 53 == 0 then
        local b = good:byte(i)
        try(good:sub(1, i - 1) .. string.char((b + 1 + (i % 7) * 31) % 256) .. good:sub(i + 1))
      end
    end
    assert.is_true(outcomes.err > 500)
    -- hand-made hostile headers
    local function file(header, data)
      local len = #header
      local le = ""
      for i = 0, 7 do le = le .. string.char(math.floor(len / 2 ^ (8 * i)) % 256) end
      return le .. header .. (data or "")
    end
    local cases = {
      { "\255\255\255\255\255\255\255\127{}", "header claims" },
      { file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "1234"), "truncated" },
      { file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', "12345678"), "needs 12 bytes" },
      { file('{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}', "1234"), "dtype F16" },
      { file('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', "12345678"), "bad size" },
      { file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}', "123456"), "overlap" },
      { file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', "12345678"), "hole" },
      { file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "123456"), "after the last tensor" },
      { file('[1,2]'), "not a JSON object" },
      { file('{"a":'), "not a JSON object" },
      { file('{"a":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}', "\7"), "bool tensor holds" },
      { file('{"__metadata__":{"format":"moelua.model.v1","model":"{\\"class_name\\":\\"os.execute\\",\\"config\\":{}}"}}'), "unknown layer class 'os.execute'" },
      { file('{"__metadata__":{"format":"moelua.model.v1","model":"{\\"class_name\\":\\"Dense\\",\\"config\\":{\\"units\\":-1}}"}}'), "units must be a positive integer" },
      { file('{"__metadata__":{"format":"moelua.model.v1","model":"{\\"class_name\\":\\"Dense\\",\\"config\\":{\\"units\\":2},\\"build_input_shape\\":[1,3]}"}}'), "no tensor for weight" },
      { file('{"kernel":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"format":"moelua.model.v1","model":"{\\"class_name\\":\\"Dense\\",\\"config\\":{\\"units\\":2,\\"name\\":\\"dense_x\\"},\\"build_input_shape\\":[1,3]}"}}', string.rep("\0", 16)), "the model needs float32 %(3, 2%)" },
    }
    for _, c in ipairs(cases) do
      write_all(path("hostile.moe"), c[1])
      local ok, err = pcall(moe.load, path("hostile.moe"))
      assert.is_false(ok)
      assert.matches(c[2], err)
    end
    assert.matches("not a moelua model", H.error_of(moe.load, "spec/fixtures/numpy_written.safetensors"))
    assert.matches("cannot open", H.error_of(moe.load, path("missing.moe")))
  end)
end)
