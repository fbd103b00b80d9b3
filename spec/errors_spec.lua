-- Bad input raises a Lua error naming the op and the shapes or values at fault.
local moe = require "moe"
local H = require "helpers"
local E = H.error_of

describe("errors", function()
  it("mismatched shapes", function()
    assert.matches("add: shapes %[2,3%] and %[4%] cannot be broadcast together",
      E(function() return moe.ones(2, 3) + moe.ones(4) end))
    assert.matches("matmul: shapes %[32,499%] and %[500,4%] do not align",
      E(function() return moe.ones(32, 499):matmul(moe.ones(500, 4)) end))
    assert.matches("view: cannot infer size %-1 in %[5,%-1%] for tensor of shape %[2,3%]",
      E(function() return moe.ones(2, 3):view(5, -1) end))
    assert.matches("view: shape %[4,2%] is invalid for tensor of shape %[2,3%]",
      E(function() return moe.ones(2, 3):view(4, 2) end))
    assert.matches("cat: tensor 2 of shape %[2,4%] does not match tensor 1 of shape %[2,3%]",
      E(function() return moe.cat({ moe.ones(2, 3), moe.ones(2, 4) }, 1) end))
    assert.matches("expand: cannot expand tensor of shape %[2%] to %[3%]", E(function() return moe.ones(2):expand(3) end))
    assert.matches("expand: shape %[1099511627776,1000000000000000%] is too large",
      E(function() return moe.tensor(1):expand(2 ^ 40, 1e15) end))
  end)

  it("error position points at the caller's line", function()
    assert.matches("errors_spec.lua:%d+: add:", E(function() return moe.ones(2) + moe.ones(3) end))
  end)

  it("dims and indices out of range", function()
    assert.matches("sum: dim 3 out of range for tensor of shape %[2,3%]", E(function() return moe.ones(2, 3):sum(3) end))
    assert.matches("dim 0 out of range", E(function() return moe.ones(2, 3):softmax(0) end))
    assert.matches("index: index 4 out of range for dim 1 of size 3", E(function() return moe.ones(3)[4] end))
    assert.matches("select: index 5 out of range", E(function() return moe.ones(3, 2):select(1, 5) end))
    assert.matches("narrow: range %[2, 4%] out of bounds for dim 1 of size 3", E(function() return moe.ones(3):narrow(1, 2, 3) end))
    assert.matches("gather: index 4 out of range %[1, 3%]",
      E(function() return moe.ones(2, 3):gather(2, moe.tensor({ { 4 }, { 1 } }, { dtype = "int64" })) end))
    assert.matches("index_select: index 0 out of range",
      E(function() return moe.ones(2, 3):index_select(1, moe.tensor({ 0 }, { dtype = "int64" })) end))
    assert.matches("topk: k = 5 out of range", E(function() return moe.ones(2, 3):topk(5) end))
    assert.matches("bincount: index 0 out of range", E(function() return moe.tensor({ 0, 1 }, { dtype = "int64" }):bincount() end))
    assert.matches("flat index 9 out of range 1%.%.3", E(function() return moe.core.get_flat(moe.zeros(3), 9) end))
  end)

  it("wrong dtypes and argument types", function()
    assert.matches("gather: index must be an int32 or int64 tensor, got float32",
      E(function() return moe.ones(2, 3):gather(2, moe.ones(2, 1)) end))
    assert.matches("add: expected tensors or numbers, got tensor and string", E(function() return moe.ones(2) + "x" end))
    assert.matches("argument #1 must be a tensor, got number", E(function() return moe.tanh(3) end))
    assert.matches("unknown dtype 'float16'", E(function() return moe.zeros(2, { dtype = "float16" }) end))
    assert.matches("unknown option 'dtyp'", E(function() return moe.zeros(2, { dtyp = "float64" }) end))
    assert.matches("rand: dtype must be float32 or float64", E(function() return moe.rand(2, { dtype = "int32" }) end))
    assert.matches("device 'cuda' is not available", E(function() return moe.zeros(2, { device = "cuda" }) end))
  end)

  it("bad tables", function()
    assert.matches("tensor: non%-numeric entry at %[2%] %(a string%)", E(function() return moe.tensor{ 1, "a" } end))
    assert.matches("tensor: non%-numeric entry at %[1%]%[2%] %(a function%)", E(function() return moe.tensor{ { 1, print } } end))
    assert.matches("ragged nested table: %[2%] has 1 entries, expected 2", E(function() return moe.tensor{ { 1, 2 }, { 3 } } end))
    assert.matches("ragged nested table", E(function() return moe.tensor{ { 1, 2 }, 3 } end))
    assert.matches("ragged nested table", E(function() return moe.tensor{ 1, { 2 } } end))
    assert.matches("mixes booleans and numbers", E(function() return moe.tensor{ true, 1 } end))
  end)

  it("negative and non-integer sizes", function()
    assert.matches("zeros: negative size %-1", E(function() return moe.zeros(2, -1) end))
    assert.matches("ones: size 1 must be an integer, got 2.5", E(function() return moe.ones(2.5) end))
    assert.matches("randn: negative size", E(function() return moe.randn{ 3, -2 } end))
    assert.matches("view: negative size %-2", E(function() return moe.ones(4):view(-2, 2) end))
    assert.matches("linspace: negative number of steps", E(function() return moe.linspace(0, 1, -3) end))
    assert.matches("eye: negative size", E(function() return moe.eye(-1) end))
    assert.matches("randint: low 5 is greater than high 1", E(function() return moe.randint(5, 1, 3) end))
    assert.matches("at most 8 dims", E(function() return moe.zeros{ 1, 1, 1, 1, 1, 1, 1, 1, 1 } end))
  end)

  it("in-place writes into expanded tensors", function()
    local e = moe.zeros(1, 3):expand(4, 3)
    assert.matches("add_: cannot write in place into an expanded tensor %(shape %[4,3%], strides %[0,1%]%)",
      E(function() return e:add_(1) end))
    assert.matches("copy_: cannot write in place into an expanded tensor", E(function() return e:copy_(moe.ones(4, 3)) end))
    assert.matches("index_add_: cannot write in place",
      E(function() return e:index_add_(1, moe.tensor({ 1 }, { dtype = "int64" }), moe.ones(1, 3)) end))
    assert.matches("scatter_add_: cannot write in place",
      E(function() return e:scatter_add_(1, moe.ones(1, 3, { dtype = "int64" }), moe.ones(1, 3)) end))
    -- out-of-place ops and fill_ on expanded tensors stay fine
    assert.are.equal(12, (e + 1):sum():item())
    assert.are.equal(0, e:sum():item())
  end)

  it("allocations beyond physical memory fail cleanly", function()
    assert.matches("out of memory: a tensor of .* GiB exceeds this machine's", E(function() return moe.zeros(2 ^ 40) end))
    assert.matches("out of memory", E(function() return moe.arange(2 ^ 39) end))
  end)

  it("misc", function()
    assert.matches("item: tensor of shape %[2%] has 2 elements", E(function() return moe.ones(2):item() end))
    assert.matches("split: sizes add up to 3 but dim 1 has size 4", E(function() return moe.ones(4):split({ 1, 2 }) end))
    assert.matches("clamp: min 2 is greater than max 1", E(function() return moe.ones(2):clamp(2, 1) end))
    assert.matches("clamp: bounds must be numbers, got min %-?nan", E(function() return moe.ones(2):clamp(0 / 0) end))
    assert.matches("cannot set field 'foo'", E(function() local t = moe.ones(2); t.foo = 1 end))
    assert.matches("permute: dims are not a permutation", E(function() return moe.ones(2, 3):permute(1, 1) end))
    assert.matches("arange: invalid range", E(function() return moe.arange(0, 1, 0) end))
  end)
end)

-- Errors from the Lua library name the function the user called, at the
-- user's own file and line (this file), and show the offending value with its
-- type (moe._where, moe._error, moe._show in lua/moe/init.lua).
describe("errors name the user's call", function()
  local nn = moe.nn
  -- the line of the caller of here(): each case calls here() on the line of the call it checks
  local function here() return debug.getinfo(2, "l").currentline end
  local function at(line) return ("[^\n]-errors_spec%%.lua:%d: "):format(line) end
  local function model()
    local m = moe.Sequential { nn.Dense { units = 1 }, input_shape = { 2 } }
    m:compile { optimizer = "adam", loss = "mse" }
    return m
  end

  it("predict, fit, evaluate and train_on_batch name themselves, not a helper", function()
    local m, line = model(), nil
    local err = E(function() line = here(); local _ = m:predict({ { 1, 2 } }) end)
    assert.matches("^" .. at(line) .. "predict: x%.1 must be a tensor, got a table$", err)
    err = E(function() line = here(); local _ = m:evaluate { x = "rows", y = moe.ones(2, 1) } end)
    assert.matches("^" .. at(line) .. "evaluate: x must be a tensor or a table of tensors, got \"rows\" %(a string%)$", err)
    err = E(function() line = here(); local _ = m:fit { x = moe.ones(4, 2), y = moe.ones(4, 1), epochs = "3", verbose = 0 } end)
    assert.matches("^" .. at(line) .. "fit: epochs must be a positive integer, got \"3\" %(a string%)$", err)
    err = E(function() line = here(); local _ = m:fit { x = moe.ones(4, 2), y = moe.ones(4, 1), batch_size = 0, verbose = 0 } end)
    assert.matches("^" .. at(line) .. "fit: batch_size must be a positive integer, got 0$", err)
    err = E(function() line = here(); local _ = m:predict(moe.ones(2, 2), { batch_size = -1 }) end)
    assert.matches("^" .. at(line) .. "predict: batch_size must be a positive integer, got %-1$", err)
  end)

  it("a loss-shape error inside fit, evaluate or train_on_batch is at the caller's line", function()
    local m, line = model(), nil
    local x, bad_y = moe.ones(4, 2), moe.ones(4, 3)
    local cases = {
      { "fit", function() line = here(); local _ = m:fit { x = x, y = bad_y, verbose = 0 } end },
      { "evaluate", function() line = here(); local _ = m:evaluate { x = x, y = bad_y } end },
      { "train_on_batch", function() line = here(); local _ = m:train_on_batch(x, bad_y) end },
    }
    for _, c in ipairs(cases) do
      local err = E(c[2])
      assert.matches("^" .. at(line) .. c[1] .. ": mean_squared_error: y_true of shape %[4,3%] does not match y_pred " ..
        "of shape %[4,1%]$", err)
      assert.is_nil(err:find("lua/moe/", 1, true), err)
    end
    local err = E(function() line = here(); local _ = moe.losses.mse(moe.ones(4, 2), moe.ones(4, 3)) end)
    assert.matches("^" .. at(line) .. "mean_squared_error: y_true of shape %[4,2%]", err)
    err = E(function() line = here(); local _ = moe.losses.mse(moe.ones(2), "y") end)
    assert.matches("^" .. at(line) .. "mean_squared_error: expected tensors %(y_true, y_pred%), got a float32 tensor " ..
      "of shape %[2%] and \"y\" %(a string%)$", err)
  end)

  it("read_csv and the data helpers are at the caller's line, with the value", function()
    local line
    local missing = os.tmpname() .. "_none.csv"
    local err = E(function() line = here(); local _ = moe.data.read_csv(missing) end)
    assert.matches("^" .. at(line) .. "read_csv: cannot open " .. missing:gsub("%p", "%%%0"), err)
    err = E(function() line = here(); local _ = moe.data.read_csv(42) end)
    assert.matches("^" .. at(line) .. "read_csv: path must be a string, got 42$", err)
    err = E(function() line = here(); local _ = moe.data.read_csv(missing, { columns = "a,b" }) end)
    assert.matches("^" .. at(line) .. "read_csv: columns must be a list of names, got \"a,b\" %(a string%)$", err)
    err = E(function() line = here(); local _ = moe.data.batches(10, "8") end)
    assert.matches("^" .. at(line) .. "batches: batch_size must be a positive integer, got \"8\" %(a string%)$", err)
    err = E(function() line = here(); local _ = moe.datasets.synthetic { n = "5" } end)
    assert.matches("^" .. at(line) .. "synthetic: n must be a positive integer, got \"5\" %(a string%)$", err)
  end)

  it("layer, optimizer, callback and initializer options show the value and its type", function()
    local line
    local cases = {
      { function() line = here(); local _ = nn.Dense { units = "32" } end,
        "Dense: units must be a positive integer, got \"32\" %(a string%)" },
      { function() line = here(); local _ = nn.Dense { units = 2.5 } end, "Dense: units must be a positive integer, got 2%.5" },
      { function() line = here(); local _ = nn.Dense { units = 4, dtype = true } end,
        "Dense: option 'dtype' must be \"float32\" or \"float64\", got true %(a boolean%)" },
      { function() line = here(); local _ = nn.Dropout { rate = "0.5" } end, "Dropout: rate must be in %[0, 1%), got \"0%.5\" %(a string%)" },
      { function() line = here(); local _ = moe.optim.Adam { lr = "fast" } end,
        "Adam: lr must be a finite number >= 0 or a schedule, got \"fast\" %(a string%)" },
      { function() line = here(); local _ = moe.optim.get(true) end,
        "optimizer: expected an optimizer or its name, got true %(a boolean%)" },
      { function() line = here(); local _ = moe.callbacks.EarlyStopping(5) end,
        "EarlyStopping: expected a table of options, got 5" },
      { function() line = here(); local _ = moe.callbacks.EarlyStopping { patience = "2" } end,
        "EarlyStopping: patience must be an integer >= 0, got \"2\" %(a string%)" },
      { function() line = here(); local _ = moe.regularizers.l2 { l2 = "big" } end,
        "l2: l2 must be a finite number >= 0, got \"big\" %(a string%)" },
      { function() line = here(); local _ = moe.Sequential {}:add(moe.ones(2)) end,
        "Sequential.add: expected a layer, got a float32 tensor of shape %[2%]" },
      { function() line = here(); local _ = moe.set_precision("fp16") end,
        "moe.set_precision: expected \"fp32\" or \"bf16\", got \"fp16\" %(a string%)" },
      { function() line = here(); local _ = moe.ones(4):split("2") end,
        "split: expected a split size or a table of sizes, got \"2\" %(a string%)" },
      { function() line = here(); local _ = moe.plot.bars({ 1, 2 }, 3) end, "moe.plot: the output path must be a file name %(a string%), got 3 %(a number%)" },
      { function() line = here(); local _ = moe.load(7) end, "load: path must be a string, got 7" },
      { function() line = here(); model():save(false) end, "save: path must be a string, got false %(a boolean%)" },
    }
    for _, c in ipairs(cases) do
      local err = E(c[1])
      assert.matches("^" .. at(line) .. c[2] .. "$", err)
    end
  end)

  it("an error in a layer deep inside a model, or in a user's callback, keeps the right line", function()
    local line
    local m = moe.Sequential { nn.Dense { units = 3 }, nn.Dense { units = 1 }, input_shape = { 4 } }
    local err = E(function() line = here(); local _ = m:forward(moe.ones(2, 5)) end)
    assert.matches("^" .. at(line), err)
    assert.is_nil(err:find("lua/moe/", 1, true), err)
    local c = model()
    local cb = { on_epoch_end = function() line = here(); local _ = moe.ones(2) + moe.ones(3) end }
    err = E(function() c:fit { x = moe.ones(4, 2), y = moe.ones(4, 1), verbose = 0, callbacks = { cb } } end)
    assert.matches(at(line) .. ".*add: shapes %[2%] and %[3%] cannot be broadcast together", err)
  end)

  it("moe._show writes each kind of value with its type", function()
    assert.equal("32", moe._show(32))
    assert.equal('"32" (a string)', moe._show("32"))
    assert.equal('"a\\nb" (a string)', moe._show("a\nb"))
    assert.equal("false (a boolean)", moe._show(false))
    assert.equal("nil", moe._show(nil))
    assert.equal("a table", moe._show({}))
    assert.equal("a function", moe._show(print))
    assert.equal("an int64 tensor of shape [2,3]", (moe._show(moe.zeros(2, 3, { dtype = "int64" })):gsub("^a int", "an int")))
    assert.matches('^a Dense layer "dense', moe._show(nn.Dense { units = 2 }))
    assert.equal('"' .. ("x"):rep(37) .. '..." (a string)', moe._show(("x"):rep(100))) -- long strings are cut
  end)

  it("every library module raises through moe._error (so no error carries a library line)", function()
    local lfs = require "lfs"
    local dir = package.searchpath("moe", package.path):match("^(.*)/init%.lua$")
    -- tensor.lua is loaded by init.lua itself (its one check is called by the user directly);
    -- cli.lua's usage errors end the script (exit 2), never a library line
    local exempt = { ["init.lua"] = true, ["tensor.lua"] = true, ["cli.lua"] = true }
    local checked = 0
    for f in lfs.dir(dir) do
      if f:match("%.lua$") and not exempt[f] then
        local src = H.read_file(dir .. "/" .. f)
        if src:find("%f[%w_]error%(") then -- (a call, not a name such as mean_squared_error(...) in a doc entry)
          assert.truthy(src:find("\nlocal error = moe%._error"), f .. " raises errors without moe._error")
          checked = checked + 1
        end
      end
    end
    assert.is_true(checked >= 15, "only " .. checked .. " modules checked")
  end)
end)

describe("memory", function()
  it("tensors are freed by the GC, including after errors", function()
    collectgarbage(); collectgarbage()
    local n0, b0 = moe.core.live()
    for i = 1, 2000 do
      local a = moe.randn(16, 16)
      local b = (a + 1):matmul(a:transpose()):softmax(2)
      pcall(function() return a + moe.ones(3) end)
      pcall(function() return moe.tensor{ { 1 }, { 2, 3 } } end)
      pcall(function() return a:gather(1, moe.tensor({ { 99 } }, { dtype = "int64" })) end)
    end
    collectgarbage(); collectgarbage()
    local n1, b1 = moe.core.live()
    assert.are.equal(n0, n1)
    assert.are.equal(b0, b1)
  end)

  it("large allocations nudge the GC so memory stays bounded", function()
    collectgarbage(); collectgarbage()
    local _, b0 = moe.core.live()
    local peak = 0
    for i = 1, 60 do
      local big = moe.zeros(1024, 1024, 4) -- 16 MiB each, never freed by hand
      local _, b = moe.core.live()
      if b - b0 > peak then peak = b - b0 end
    end
    assert.is_true(peak < 400 * 2 ^ 20, "peak tensor memory " .. peak)
  end)
end)
