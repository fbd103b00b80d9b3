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

local read_all, write_all = H.read_file, H.write_file
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
  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)
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
        -- only an unchanged file may load (a truncation to its full length)
        outcomes.ok = outcomes.ok + 1
        assert.equal(good, bytes)
        local out = res:predict(x)
        assert.is_true(same(out.income, ref.income) and same(out.marital, ref.marital))
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
    assert.equal(0, outcomes.ok)
    -- hand-made hostile headers
    local function file(header, data)
      local len = #header
      local le = ""
      for i = 0, 7 do le = le .. string.char(math.floor(len / 2 ^ (8 * i)) % 256) end
      return le .. header .. (data or "")
    end
    local cases = {
      { "\255\255\255\255\255\255\255\127{}", "not a safetensors file" },
      { file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'):sub(1, 30), "truncated: its header claims" },
      { file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "1234"), "truncated" },
      { file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', "12345678"), "needs 12 bytes" },
      { file('{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}', "1234"), "dtype F16" },
      { file('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', "12345678"), "bad size" },
      { file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}', "123456"), "overlap" },
      { file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', "12345678"), "hole" },
      { file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "123456"), "after the last tensor" },
      { file('[1,2]'), "not a safetensors file" },
      { file('{"a":'), "not a JSON object" },
      { file('{"a":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}', "\7"), "bool tensor 'a' holds byte value 7" },
    }
    for _, c in ipairs(cases) do
      write_all(path("hostile.moe"), c[1])
      local ok, err = pcall(moe.load, path("hostile.moe"))
      assert.is_false(ok)
      assert.matches(c[2], err)
    end
    -- a tensor name that looks like a Lua position ("x.lua:7: ") stays in the
    -- message, which still names load_tensors and the file (found by spec/fuzz)
    write_all(path("named.moe"), file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b/x.lua:7: y":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', "123456789012"))
    local err = H.error_of(moe.load_tensors, path("named.moe"))
    assert.is_truthy(err:find("load_tensors: '" .. path("named.moe") .. "' is corrupted: tensor 'b/x.lua:7: y' starts at byte 8", 1, true), err)
    -- hostile configs behind valid checksums (save_tensors writes them)
    local L = '{"n":"dense_x","c":{}}'
    local configs = {
      { {}, { model = '{"class_name":"os.execute","config":{}}' }, "unknown layer class 'os.execute'" },
      { {}, { model = '{"class_name":"Dense","config":{"units":-1}}' }, "units must be a positive integer" },
      { {}, { model = '{"class_name":"Dense","config":{"units":2,"name":"dense_x"},"build_input_shape":[1,3]}' },
        "no tensor for weight" },
      { { kernel = moe.zeros(2, 2) }, { model = '{"class_name":"Dense","config":{"units":2,"name":"dense_x"},"build_input_shape":[1,3]}' },
        "the model needs float32 %(3, 2%)" },
    }
    for _, c in ipairs(configs) do
      c[2].format, c[2].layers = "moelua.model.v1", L
      moe.save_tensors(path("hostile.moe"), c[1], c[2])
      assert.matches(c[3], H.error_of(moe.load, path("hostile.moe")))
    end
    assert.matches("not a moelua model", H.error_of(moe.load, "spec/fixtures/numpy_written.safetensors"))
    assert.matches("cannot open", H.error_of(moe.load, path("missing.moe")))
  end)

  -- ---------------------------------------------------------------- layer names
  describe("layer names", function()
    -- the README's Scale: its Dense is created in init, so it is named by the
    -- process's layer counter
    local Scale = nn.Module:extend("CheckpointReadmeScale")
    function Scale:init(opts) nn.Module.init(self, opts); self.inner = nn.Dense { units = 4 } end
    function Scale:build(input_shape) self:add_weight("alpha", { 1 }, { initializer = "ones" }) end
    function Scale:forward(x) return self.inner(x) * self.alpha end
    -- a layer that creates its sub-layer in build
    local Late = nn.Module:extend("CheckpointLateSub")
    function Late:build(shape) self.proj = nn.Dense { units = shape[#shape] } end
    function Late:forward(x) return self.proj(x) + x end

    it("are restored as saved, however many layers the loading process made before", function()
      moe.manual_seed(8)
      local m = moe.Sequential { Scale {}, Late {}, nn.Dense { units = 2 }, input_shape = { 3 } }
      local x = moe.randn(5, 3)
      m:save(path("names.moe"))
      local before = {}
      for _, e in ipairs(m:modules()) do before[#before + 1] = e[1] end
      for _ = 1, 7 do nn.Dense { units = 1 } end -- moves the counter the sub-layers are named by
      local m2 = moe.load(path("names.moe"))
      local after = {}
      for _, e in ipairs(m2:modules()) do after[#after + 1] = e[1] end
      assert.same(before, after)
      assert.is_true(same(m:predict(x), m2:predict(x)))
      local n1, n2 = m:named_weights(), m2:named_weights()
      assert.same(n1, n2)
    end)

    it("are restored in another process", function()
      local bin = os.getenv("MOELUA_BIN") or "build/moelua"
      local script = path("child_save.lua")
      write_all(script, ([[
        local moe = require "moe"
        local nn = moe.nn
        local Scale = nn.Module:extend("CheckpointReadmeScale")
        function Scale:init(opts) nn.Module.init(self, opts); self.inner = nn.Dense { units = 4 } end
        function Scale:build(input_shape) self:add_weight("alpha", { 1 }, { initializer = "ones" }) end
        function Scale:forward(x) return self.inner(x) * self.alpha end
        moe.manual_seed(4)
        local m = Scale {}
        local x = moe.randn(3, 2)
        m(x)
        m:save(%q)
        moe.save_tensors(%q, { x = x, y = m:predict(x) })
      ]]):format(path("child.moe"), path("child_io.safetensors")))
      local rc = os.execute(bin .. " " .. script)
      assert.is_true(rc == 0 or rc == true)
      for _ = 1, 3 do nn.Dense { units = 1 } end
      local m = moe.load(path("child.moe"))
      local io_ = moe.load_tensors(path("child_io.safetensors"))
      assert.is_true(same(m:predict(io_.x), io_.y))
      local _, md = moe.load_tensors(path("child.moe"))
      assert.matches('"n":"dense_1"', md.layers) -- the child's own counter
      assert.equal("dense_1", m.inner.name)
    end)

    it("a class whose sub-layers changed since the save is an error that says so", function()
      local Var = nn.Module:extend("CheckpointVarying")
      local with_sub = true
      function Var:init(opts) nn.Module.init(self, opts); if with_sub then self.sub = nn.Dense { units = 2 } end end
      function Var:forward(x) return self.sub and self.sub(x) or x end
      local m = Var {}
      m(moe.randn(2, 2))
      m:save(path("var.moe"))
      with_sub = false
      local err = H.error_of(moe.load, path("var.moe"))
      assert.matches(path("var.moe"), err, 1, true)
      assert.matches("sub%-layer 'sub'", err)
      assert.matches("did the class change", err)
    end)
  end)

  -- ---------------------------------------------------------------- checksums
  describe("checksums", function()
    local mio = require "moe.io"
    local function small_model()
      moe.manual_seed(2)
      local m = moe.Sequential { nn.Dense { units = 2, name = "d" }, input_shape = { 3 } }
      m:compile { optimizer = moe.optim.Adam { lr = 0.01 }, loss = "mse" }
      m:train_on_batch(moe.randn(4, 3), moe.randn(4, 2))
      return m
    end
    -- the header's tensor table, from the raw bytes (the reference layout)
    local function layout(bytes)
      local n = 0
      for i = 8, 1, -1 do n = n * 256 + bytes:byte(i) end
      return require("cjson").decode(bytes:sub(9, 8 + n)), 8 + n
    end

    it("agree with an independent XXH3-64 (a file made by the Python xxhash package)", function()
      -- spec/fixtures/xxh3_written.safetensors, made by spec/fixtures/make_checksum_fixture.py
      local f = "spec/fixtures/xxh3_written.safetensors"
      local ts, md, _, checked = mio.read(f)
      assert.is_true(checked)
      assert.equal("python xxhash", md.source)
      assert.is_nil(md.checksum) -- the checksum fields are not user metadata
      assert.same({ { 0, 0.125 }, { 0.25, 0.375 }, { 0.5, 0.625 } }, ts.w:totable())
      assert.same({ 3, -1, 2 ^ 40 }, ts.n:totable())
      assert.equal("78af5f94892f3950", moe.core.st_checksum("abc")) -- XXH3-64("abc"), from xxhash
      local good = read_all(f)
      local h, start = layout(good)
      local b = start + h.n.data_offsets[1] + 2
      write_all(path("fx.safetensors"), good:sub(1, b - 1) .. string.char((good:byte(b) + 1) % 256) .. good:sub(b + 1))
      assert.matches("tensor 'n' fails its checksum", H.error_of(moe.load_tensors, path("fx.safetensors")))
    end)

    it("a flipped byte in any tensor's data is an error naming the file and the tensor", function()
      local m = small_model()
      m:save(path("c.moe"))
      local good = read_all(path("c.moe"))
      local h, start = layout(good)
      local count = 0
      for name, e in pairs(h) do
        if name ~= "__metadata__" then
          local b = start + e.data_offsets[1] + 1
          local bad = good:sub(1, b - 1) .. string.char((good:byte(b) + 128) % 256) .. good:sub(b + 1)
          write_all(path("cbad.moe"), bad)
          local err = H.error_of(moe.load, path("cbad.moe"))
          assert.matches(path("cbad.moe"), err, 1, true)
          assert.matches("tensor '" .. name .. "' fails its checksum", err, 1, true)
          assert.matches("tensor '" .. name .. "' fails its checksum", H.error_of(moe.load_tensors, path("cbad.moe")), 1, true)
          count = count + 1
        end
      end
      assert.equal(2 + 2 * 3, count) -- kernel, bias and each one's m, v, step
    end)

    it("a changed config number or name in the header is an error naming the file and the header", function()
      local m = small_model()
      m:save(path("h.moe"))
      local good = read_all(path("h.moe"))
      local edits = {
        { '\\"units\\":2', '\\"units\\":3' },   -- a config number
        { '"d/kernel"', '"d/kernem"' },       -- a tensor name
        { '\\"lr\\":0.01', '\\"lr\\":0.02' },   -- an optimizer setting
        { '"shape":[3,2]', '"shape":[2,3]' }, -- a shape of the same size
      }
      for _, e in ipairs(edits) do
        local i = good:find(e[1], 1, true)
        assert.is_number(i)
        write_all(path("hbad.moe"), good:sub(1, i - 1) .. e[2] .. good:sub(i + #e[1]))
        local err = H.error_of(moe.load, path("hbad.moe"))
        assert.matches(path("hbad.moe"), err, 1, true)
        assert.matches("the header fails its checksum", err)
      end
    end)

    it("no single-byte corruption of a small model loads", function()
      local m = small_model()
      m:save(path("s.moe"))
      local good = read_all(path("s.moe"))
      local loaded, kinds = 0, {}
      for i = 1, #good do
        for _, delta in ipairs { 1, 0x20 } do
          local c = string.char(bit.bxor(good:byte(i), delta))
          write_all(path("sbad.moe"), good:sub(1, i - 1) .. c .. good:sub(i + 1))
          local ok, err = pcall(moe.load, path("sbad.moe"))
          if ok then loaded = loaded + 1 else
            assert.matches("^[^\n]-:%d+: load: '" .. path("sbad.moe"):gsub("%p", "%%%0") .. "'", err)
            local kind = err:match("fails its checksum") or err:match("not a safetensors file") or err:match("truncated")
              or err:match("not a JSON object") or "other"
            kinds[kind] = (kinds[kind] or 0) + 1
          end
        end
      end
      assert.equal(0, loaded)
      assert.is_true(kinds["fails its checksum"] > #good) -- most are caught by a checksum
    end)

    it("a moelua model file without checksums is refused; plain files without them still load", function()
      local m = small_model()
      m:save(path("n.moe"))
      -- the same file with the checksum fields left out, written by hand
      local ts, md = moe.load_tensors(path("n.moe"))
      local names = {}
      for k in pairs(ts) do names[#names + 1] = k end
      table.sort(names)
      local parts, data, off = {}, {}, 0
      local cj = require "cjson"
      for _, k in ipairs(names) do
        local t = ts[k]
        local bytes = {}
        local tmp = path("one.safetensors")
        moe.save_tensors(tmp, { x = t })
        local raw = read_all(tmp)
        local _, start = layout(raw)
        bytes = raw:sub(start + 1)
        parts[#parts + 1] = ("%s:{\"dtype\":%s,\"shape\":%s,\"data_offsets\":[%d,%d]}"):format(cj.encode(k),
          cj.encode(({ float32 = "F32", int64 = "I64" })[t:dtype()]), #t:shape() == 0 and "[]" or cj.encode(t:shape()),
          off, off + #bytes)
        off = off + #bytes
        data[#data + 1] = bytes
      end
      parts[#parts + 1] = '"__metadata__":' .. cj.encode(md)
      local header = "{" .. table.concat(parts, ",") .. "}"
      local le = ""
      for i = 0, 7 do le = le .. string.char(math.floor(#header / 2 ^ (8 * i)) % 256) end
      write_all(path("nosum.moe"), le .. header .. table.concat(data))
      local err = H.error_of(moe.load, path("nosum.moe"))
      assert.matches(path("nosum.moe"), err, 1, true)
      assert.matches("has no checksums", err)
      -- its tensors are still readable as plain tensors
      local plain = moe.load_tensors(path("nosum.moe"))
      assert.is_true(same(plain["d/kernel"], ts["d/kernel"]))
      -- a file whose checksum fields are only partly there is damaged
      local partial = read_all(path("n.moe")):gsub('"checksum.tensors"', '"checksum.tensorz"')
      write_all(path("partial.moe"), partial)
      assert.matches("fails its checksum", H.error_of(moe.load_tensors, path("partial.moe")))
      local renamed = read_all(path("n.moe")):gsub('"checksum.header"', '"checksum.headex"')
      write_all(path("renamed.moe"), renamed)
      assert.matches("checksums are incomplete %(checksum.header is missing", H.error_of(moe.load_tensors, path("renamed.moe")))
      -- and user metadata cannot take the checksum fields' names
      assert.matches("reserved", H.error_of(moe.save_tensors, path("r.safetensors"), { a = moe.zeros(1) }, { checksum = "x" }))
    end)
  end)

  -- ---------------------------------------------------------------- strict loading
  describe("strict loading", function()
    local function saved()
      moe.manual_seed(6)
      local x = moe.Input { shape = { 3 } }
      local h = nn.Dense { units = 4, name = "hid" }(x)
      local m = moe.Model { inputs = x, outputs = { a = nn.Dense { units = 1, name = "a" }(h), b = nn.Dense { units = 2, name = "b" }(h) } }
      m:compile { optimizer = moe.optim.Adam { lr = 0.01 }, loss = { a = "mse", b = "mse" } }
      m:train_on_batch(moe.randn(4, 3), { a = moe.randn(4, 1), b = moe.randn(4, 2) })
      m:save(path("strict.moe"))
      return moe.load_tensors(path("strict.moe"))
    end
    -- rewrite the file with a change; save_tensors gives it valid checksums
    local function load_changed(change)
      local ts, md = saved()
      change(ts, md)
      moe.save_tensors(path("changed.moe"), ts, md)
      return H.error_of(moe.load, path("changed.moe"))
    end

    it("an unchanged rewrite loads (the changes below are the only cause of their errors)", function()
      local ts, md = saved()
      moe.save_tensors(path("changed.moe"), ts, md)
      local m = moe.load(path("changed.moe"))
      assert.equal("Adam", m.optimizer.class_name)
    end)

    it("an unknown tensor in the file is an error", function()
      assert.matches("tensor 'extra' is not a weight of the model", load_changed(function(ts) ts.extra = moe.zeros(2) end))
    end)

    it("a missing weight is an error", function()
      assert.matches("has no tensor for weight 'b/bias'", load_changed(function(ts) ts["b/bias"] = nil end))
    end)

    it("missing or renamed optimizer state is an error", function()
      assert.matches("tensor 'optimizer/hid/kernel/v' is missing",
        load_changed(function(ts) ts["optimizer/hid/kernel/v"] = nil end))
      assert.matches("tensor 'optimizer/hid/kernel/step' is missing",
        load_changed(function(ts) ts["optimizer/hid/kernel/step"] = nil end))
      -- renamed: the slot is missing; an extra slot is unexplained
      assert.matches("tensor 'optimizer/hid/kernel/v' is missing", load_changed(function(ts)
        ts["optimizer/hid/kernel/w"], ts["optimizer/hid/kernel/v"] = ts["optimizer/hid/kernel/v"], nil
      end))
      assert.matches("tensor 'optimizer/hid/kernel/w' belongs to no parameter with state",
        load_changed(function(ts) ts["optimizer/hid/kernel/w"] = ts["optimizer/hid/kernel/v"]:clone() end))
      assert.matches("tensor 'optimizer/gone/kernel/m' belongs to no parameter with state",
        load_changed(function(ts) ts["optimizer/gone/kernel/m"] = moe.zeros(3, 4) end))
      assert.matches("recorded for 'gone/kernel', which is not a trainable weight",
        load_changed(function(_, md) md.optimizer_state = md.optimizer_state:gsub("hid/kernel", "gone/kernel") end))
      assert.matches("the optimizer_state entry of the metadata is not a JSON object",
        load_changed(function(_, md) md.optimizer_state = nil end))
      -- the optimizer dropped from the metadata leaves its tensors unexplained
      assert.matches("is not a weight of the model %(and the file has no optimizer%)",
        load_changed(function(_, md) md.optimizer, md.optimizer_state, md.compile = nil, nil, nil end))
      assert.matches("unknown metadata entry 'optimizes'",
        load_changed(function(_, md) md.optimizes, md.optimizer = md.optimizer, nil end))
    end)

    it("outputs that do not resolve to layer outputs are an error, never a plain table", function()
      assert.matches("outputs do not resolve to layer outputs",
        load_changed(function(_, md) md.model = md.model:gsub('"outputs":{"a":{"__ref"', '"outputs":{"a":{"__reg"') end))
      assert.matches("the graph refers to node 9",
        load_changed(function(_, md) md.model = md.model:gsub('"outputs":{"a":{"__ref":%[%d', '"outputs":{"a":{"__ref":[9') end))
      assert.matches("malformed reference",
        load_changed(function(_, md) md.model = md.model:gsub('"outputs":{"a":{"__ref":%[', '"outputs":{"a":{"x":1,"__ref":[') end))
      assert.matches("refers to output value of node",
        load_changed(function(_, md) md.model = md.model:gsub('("outputs":{"a":{"__ref":%[%d+,)(%b{})', '%1["value"]') end))
    end)

    it("a graph node without a layer output as its input is an error, not a crash inside the layer", function()
      assert.matches("node 2's first argument is not a layer output",
        load_changed(function(_, md) md.model = md.model:gsub('"args":%[{"__ref":%[1,{}%]}%]', '"args":[]', 1) end))
      assert.matches("node 2's first argument is not a layer output",
        load_changed(function(_, md) md.model = md.model:gsub('"args":%[{"__ref":%[1,{}%]}%]', '"args":[7]', 1) end))
    end)

    it("a damaged size fails before the weight is allocated", function()
      local msg = load_changed(function(_, md)
        md.model = md.model:gsub('"name":"hid","units":4', '"name":"hid","units":1000000000', 1)
      end)
      assert.matches("makes a weight 'kernel' of 3000000000 values, far more than the file's tensors hold", msg)
    end)

    it("with compile = false the optimizer's tensors are skipped, not unknown", function()
      saved()
      local m = moe.load(path("strict.moe"), { compile = false })
      assert.is_nil(rawget(m, "optimizer"))
    end)
  end)

  -- ---------------------------------------------------------------- numbers
  describe("numbers in the header", function()
    local mio = require "moe.io"
    it("round-trip exactly (up to 17 significant digits)", function()
      local values = { 1 / 3, 0.1, 1e-300, 2 ^ 53, 2 ^ 53 - 1, 2 ^ 63, -2 ^ 60 - 2 ^ 8, 123456789012345678, 5e-324,
        1.7976931348623157e308, -0.1 - 0.2, math.pi }
      math.randomseed(12)
      for _ = 1, 2000 do values[#values + 1] = (math.random() - 0.5) * 10 ^ math.random(-300, 300) end
      for _, v in ipairs(values) do
        local s = assert(mio.json_encode({ v = v }))
        assert.equal(v, mio.json_decode(s).v)
      end
      assert.equal("0.1", mio.json_encode(0.1)) -- the shortest digits that read back
      assert.matches("NaN or infinity", select(2, mio.json_encode({ lr = 0 / 0 })))
    end)

    it("Adam{lr = 1/3} and layer options come back as the same doubles", function()
      local Opts = nn.Module:extend("CheckpointNumbers")
      function Opts:init(opts)
        nn.Module.init(self, opts)
        self:_options(opts, { a = 0, b = 0, c = 0, d = 0 })
      end
      function Opts:build(shape) self:add_weight("w", { shape[#shape] }, { initializer = "ones" }) end
      function Opts:forward(x) return x * self.w end
      local m = moe.Sequential { Opts { a = 1 / 3, b = 0.1, c = 1e-300, d = 2 ^ 53 + 2 }, input_shape = { 2 } }
      m:compile { optimizer = moe.optim.Adam { lr = 1 / 3, eps = 1e-300 }, loss = "mse" }
      m:save(path("num.moe"))
      local m2 = moe.load(path("num.moe"))
      assert.equal(1 / 3, m2.optimizer.hp.lr)
      assert.equal(1e-300, m2.optimizer.hp.eps)
      local l = m2:children()[1]
      assert.equal(1 / 3, l.a)
      assert.equal(0.1, l.b)
      assert.equal(1e-300, l.c)
      assert.equal(2 ^ 53 + 2, l.d)
    end)
  end)

  -- ---------------------------------------------------------------- not safetensors
  it("a text file or random bytes are 'not a safetensors file'", function()
    write_all(path("notes.txt"), ("a text file, not tensors\n"):rep(40))
    assert.matches("'" .. path("notes.txt") .. "' is not a safetensors file", H.error_of(moe.load, path("notes.txt")), 1, true)
    assert.matches("not a safetensors file", H.error_of(moe.load_tensors, path("notes.txt")))
    math.randomseed(5)
    for _ = 1, 20 do
      local b = {}
      for i = 1, 300 do b[i] = string.char(math.random(0, 255)) end
      write_all(path("random.bin"), table.concat(b))
      assert.matches("not a safetensors file", H.error_of(moe.load, path("random.bin")))
    end
  end)

  -- ---------------------------------------------------------------- temporary files
  describe("temporary files", function()
    local function temps(d)
      local p = io.popen("ls -a " .. d)
      local out = {}
      for l in p:lines() do if l:find(".moelua-tmp-", 1, true) then out[#out + 1] = l end end
      p:close()
      return out
    end
    local function dead_pid()
      local p = io.popen("sh -c 'echo $$'")
      local pid = tonumber(p:read("*l"))
      p:close()
      return pid
    end

    it("a stale temporary of a writer that no longer runs is removed by the next save in its directory", function()
      local d = path("sweep")
      os.execute("mkdir -p " .. d)
      local pid = dead_pid()
      local stale = ("%s/old.moe.moelua-tmp-%d-a1b2c3"):format(d, pid)
      local live = ("%s/old.moe.moelua-tmp-1-a1b2c3"):format(d)          -- pid 1 runs
      local other = ("%s/notes.moelua-tmp-%d-abc"):format(d, pid)        -- not our pattern
      for _, f in ipairs { stale, live, other } do write_all(f, ("x"):rep(1000)) end
      moe.save_tensors(d .. "/new.safetensors", { a = moe.ones(3) })
      assert.is_nil(io.open(stale, "rb"))
      for _, f in ipairs { live, other } do
        local h = assert(io.open(f, "rb"))
        h:close()
      end
      assert.same({ 1, 1, 1 }, moe.load_tensors(d .. "/new.safetensors").a:totable())
    end)

    it("writers killed with kill -9 mid-save leave a loadable file (or none) and no temporary that outlives the next save", function()
      local bin = os.getenv("MOELUA_BIN") or "build/moelua"
      local d = path("kill")
      os.execute("mkdir -p " .. d)
      local target = d .. "/big.safetensors"
      local function run_and_kill(named_temp)
        local script = d .. "/writer.lua"
        write_all(script, ([[
          local moe = require "moe"
          local mio = require "moe.io"
          local t = moe.randn(4 * 1024 * 1024)  -- 16 MB
          local i = 0
          while true do
            i = i + 1
            mio.write(%q, { "w", "i" }, { t, moe.tensor(i) }, nil, %s)
            local f = io.open(%q, "w"); f:write(i); f:close()
          end
        ]]):format(target, tostring(named_temp), d .. "/progress"))
        os.remove(d .. "/progress")
        os.execute(("sh -c '%s %s & echo $! > %s/pid; wait' >/dev/null 2>&1 &"):format(bin, script, d))
        -- after the first complete save the writer is (almost always) inside another
        local deadline = os.time() + 30
        while not io.open(d .. "/progress", "rb") and os.time() < deadline do os.execute("sleep 0.05") end
        local pid = tonumber(read_all(d .. "/pid"))
        os.execute("sleep 0.0" .. math.random(1, 9))
        os.execute("kill -9 " .. pid)
        while os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0 and os.time() < deadline do os.execute("sleep 0.05") end
        -- the target is whole: one of the saves, never a mix
        local ts = moe.load_tensors(target)
        assert.equal(4 * 1024 * 1024, ts.w:numel())
      end
      math.randomseed(3)
      -- O_TMPFILE: the killed writer's file had no name
      for _ = 1, 3 do run_and_kill(false) end
      assert.same({}, temps(d))
      -- named temporaries (where O_TMPFILE is missing): left behind, then swept
      local left = 0
      for _ = 1, 6 do
        run_and_kill(true)
        left = #temps(d)
        if left > 0 then break end
      end
      assert.is_true(left > 0)
      moe.save_tensors(d .. "/small.safetensors", { a = moe.ones(2) })
      assert.same({}, temps(d))
    end)
  end)
end)
