-- moe.tensorboard and moe.callbacks.TensorBoard: event files, read back here by
-- a reader of the spec's own (its CRC-32C bit by bit, its own varint and
-- protobuf decoding, IEEE-754 decoded with ldexp), not by the writer's code.
-- (bench/peers/tensorboard_check.py reads them with TensorBoard's own reader.)
local moe = require "moe"
local H = require "helpers"
local bit = require "bit"
local ffi = require "ffi"
local nn = moe.nn

-- ------------------------------------------------------------------ the reader

local function crc32c(s) -- bit by bit, polynomial 0x1EDC6F41 reflected
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = bit.bxor(c, s:byte(i))
    for _ = 1, 8 do
      local low = bit.band(c, 1)
      c = bit.rshift(c, 1)
      if low == 1 then c = bit.bxor(c, 0x82F63B78) end
    end
  end
  return bit.bnot(c) % 2 ^ 32
end
local function unmask(m) -- TFRecord's mask undone: subtract the delta, rotate left by 15
  local r = (m - 0xa282ead8) % 2 ^ 32
  return bit.bor(bit.lshift(r, 15), bit.rshift(r, 17)) % 2 ^ 32
end
local function le(s, i, n)
  local v = 0
  for k = n - 1, 0, -1 do v = v * 256 + s:byte(i + k) end
  return v
end
local function ieee(s, i, n) -- little-endian IEEE-754 binary64 (n = 8) or binary32 (n = 4)
  local ebits, mbits = n == 8 and 11 or 8, n == 8 and 52 or 23
  local b = {}
  for k = 1, n do b[k] = s:byte(i + k - 1) end
  local sign = b[n] >= 128 and -1 or 1
  local e = math.floor(((b[n] % 128) * 256 + b[n - 1]) / 2 ^ (15 - ebits))
  local full = math.floor(mbits / 8) -- whole bytes of the mantissa, then its top bits in the next one
  local m = 0
  for k = 1, full do m = m + b[k] * 256 ^ (k - 1) end
  m = m + (b[full + 1] % 2 ^ (mbits % 8)) * 256 ^ full
  local bias = 2 ^ (ebits - 1) - 1
  if e == 2 ^ ebits - 1 then return m == 0 and sign * math.huge or 0 / 0 end
  if e == 0 then return sign * math.ldexp(m, 1 - bias - mbits) end
  return sign * math.ldexp(m + 2 ^ mbits, e - bias - mbits)
end
local function varint(s, i)
  local v, mul = 0, 1
  while true do
    local b = s:byte(i)
    assert(b, "truncated varint")
    v = v + (b % 128) * mul
    mul = mul * 128
    i = i + 1
    if b < 128 then return v, i end
  end
end
-- the fields of a message: a list of {number, wire type, value}
local function fields(s)
  local out, i = {}, 1
  while i <= #s do
    local key
    key, i = varint(s, i)
    local num, wt = math.floor(key / 8), key % 8
    local v
    if wt == 0 then v, i = varint(s, i)
    elseif wt == 1 then v = s:sub(i, i + 7); i = i + 8
    elseif wt == 5 then v = s:sub(i, i + 3); i = i + 4
    elseif wt == 2 then
      local n
      n, i = varint(s, i)
      v = s:sub(i, i + n - 1); i = i + n
    else error("unexpected wire type " .. wt) end
    assert(i <= #s + 1, "field runs past the message")
    out[#out + 1] = { num, wt, v }
  end
  return out
end
-- the records of a file, each CRC checked; then each Event decoded
local function read_events(path)
  local s = H.read_file(path)
  local events, i = {}, 1
  while i <= #s do
    assert(i + 12 <= #s, "a truncated record header")
    local len = le(s, i, 8)
    assert.equal(crc32c(s:sub(i, i + 7)), unmask(le(s, i + 8, 4)), "the length's CRC")
    local data = s:sub(i + 12, i + 12 + len - 1)
    assert.equal(len, #data)
    assert.equal(crc32c(data), unmask(le(s, i + 12 + len, 4)), "the data's CRC")
    i = i + 12 + len + 4
    local ev = { step = 0, values = {} }
    for _, f in ipairs(fields(data)) do
      if f[1] == 1 then assert.equal(1, f[2]); ev.wall_time = ieee(f[3], 1, 8)
      elseif f[1] == 2 then assert.equal(0, f[2]); ev.step = f[3]
      elseif f[1] == 3 then assert.equal(2, f[2]); ev.file_version = f[3]
      elseif f[1] == 5 then
        assert.equal(2, f[2])
        for _, v in ipairs(fields(f[3])) do
          assert.equal(1, v[1]) -- Summary.value
          local tag, val
          for _, g in ipairs(fields(v[3])) do
            if g[1] == 1 then tag = g[3] elseif g[1] == 2 then assert.equal(5, g[2]); val = ieee(g[3], 1, 4) end
          end
          ev.values[#ev.values + 1] = { tag, val }
        end
      else error("unexpected Event field " .. f[1]) end
    end
    events[#events + 1] = ev
  end
  return events
end
local function ls(dir)
  local out = {}
  for l in io.popen("ls -A '" .. dir:gsub("'", "'\\''") .. "'"):lines() do out[#out + 1] = l end
  return out
end
local function f32(v) local t = ffi.new("float[1]", v); return t[0] end

describe("the spec's own event reader", function()
  it("has CRC-32C right (RFC 3720's check values)", function()
    assert.equal(0xE3069283, crc32c("123456789"))
    assert.equal(0x8A9136AA, crc32c(("\0"):rep(32)))
    assert.equal(0x62A8AB43, crc32c(("\255"):rep(32)))
  end)
  it("decodes IEEE-754 (against the FFI's own bytes)", function()
    for _, v in ipairs { 0.1, -2.5, 1e-300, 12345.678, 1796216553.8634603 } do
      local d = ffi.new("double[1]", v)
      assert.equal(v, ieee(ffi.string(d, 8), 1, 8))
      local f = ffi.new("float[1]", v)
      if ffi.abi("le") then assert.equal(f[0], ieee(ffi.string(f, 4), 1, 4)) end
    end
  end)
end)

describe("moe.tensorboard.SummaryWriter", function()
  local dir
  before_each(function() dir = H.tmpname() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("makes log_dir (no shell: spaces and shell characters are names) and writes whole records as it goes", function()
    local log_dir = dir .. "/a b;$(touch " .. dir .. "-x)/run'1"
    local t0 = os.time()
    local w = moe.tensorboard.SummaryWriter(log_dir)
    local names = ls(log_dir)
    assert.equal(1, #names)
    assert.matches("^events%.out%.tfevents%.%d%d%d%d%d%d%d%d%d%d%.[%w%-_.]+$", names[1])
    assert.equal(w.path, log_dir .. "/" .. names[1])
    w:add_scalar("loss", 0.5, 3)
    -- flushed: read while the writer is still open
    local ev = read_events(w.path)
    assert.equal(2, #ev)
    assert.equal("brain.Event:2", ev[1].file_version)
    assert.same({ { "loss", 0.5 } }, ev[2].values)
    assert.equal(3, ev[2].step)
    w:write_scalars({ zeta = 1 / 3, alpha = -2, skipped = "text" }, 0)
    w:add_scalar("nan", 0 / 0, 2 ^ 40)
    w:close()
    ev = read_events(w.path)
    assert.equal(4, #ev)
    assert.same({ { "alpha", -2 }, { "zeta", f32(1 / 3) } }, ev[3].values) -- sorted tags, float32 values
    assert.equal(0, ev[3].step)
    assert.equal(2 ^ 40, ev[4].step)
    assert.is_true(ev[4].values[1][2] ~= ev[4].values[1][2])
    for k = 1, 4 do
      assert.is_true(ev[k].wall_time >= t0 - 1 and ev[k].wall_time <= os.time() + 1, tostring(ev[k].wall_time))
      if k > 1 then assert.is_true(ev[k].wall_time >= ev[k - 1].wall_time) end
    end
    assert.is_nil(io.open(dir .. "-x")) -- nothing ran the shell
    -- a second writer in the same directory gets a file of its own
    local w2 = moe.tensorboard.SummaryWriter(log_dir)
    w2:close()
    assert.equal(2, #ls(log_dir))
  end)

  it("names what is wrong with its arguments, at the caller's line", function()
    local me = "tensorboard_spec%.lua:%d+: "
    assert.matches(me .. "SummaryWriter: log_dir must be a directory name %(a non%-empty string%), got 5 %(a number%)",
      H.error_of(function() moe.tensorboard.SummaryWriter(5) end))
    H.write_file(dir, "a file")
    assert.matches(me .. "SummaryWriter: cannot .*" .. dir:gsub("%p", "%%%0"),
      H.error_of(function() moe.tensorboard.SummaryWriter(dir .. "/sub") end))
    os.remove(dir)
    local w = moe.tensorboard.SummaryWriter(dir)
    assert.matches(me .. "add_scalar: value must be a number, got \"0.5\" %(a string%)",
      H.error_of(function() w:add_scalar("loss", "0.5", 1) end))
    assert.matches(me .. "add_scalar: step must be an integer >= 0, got %-1 %(a number%)",
      H.error_of(function() w:add_scalar("loss", 1, -1) end))
    assert.matches(me .. "add_scalar: step must be an integer >= 0, got 1.5 %(a number%)",
      H.error_of(function() w:add_scalar("loss", 1, 1.5) end))
    assert.matches(me .. "add_scalar: tag must be a non%-empty string, got nil",
      H.error_of(function() w:add_scalar(nil, 1, 1) end))
    w:close()
    assert.matches(me .. "SummaryWriter: .* is closed", H.error_of(function() w:add_scalar("loss", 1, 1) end))
  end)
end)

describe("moe.callbacks.TensorBoard", function()
  local dir
  before_each(function() dir = H.tmpname() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  -- a small token model with a sparse layer, so that the logs hold router metrics
  local function token_model()
    moe.manual_seed(3)
    local V, S, E = 16, 6, 4
    local x = moe.randint(1, V, { 72, S }, { dtype = "int64" })
    local perm = {}
    for v = 1, V do perm[v] = (v * 5) % V + 1 end -- a fixed permutation of the vocabulary
    local y = moe.tensor(perm, { dtype = "int64" }):index_select(1, x:reshape(-1)):view(72, S)
    local inp = moe.Input { shape = { S }, dtype = "int64" }
    local h = nn.Embedding { input_dim = V, output_dim = 8 }(inp)
    h = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = 8 },
      router = nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = 2, router_z_loss_weight = 1e-3,
        load_balancing_loss_weight = 1e-2 }, name = "moe" }(h)
    local m = moe.Model { inputs = inp, outputs = nn.Dense { units = V }(h) }
    local sce = moe.losses.sparse_categorical_crossentropy
    m:compile { optimizer = moe.optim.Adam { lr = 1e-2 },
      loss = function(yt, p, o) return sce(yt, p, { from_logits = true, sample_weight = o and o.sample_weight }) end }
    return m, x, y
  end

  it("writes the epoch logs (loss, router metrics, learning rate) under train/ and val_ under validation/", function()
    local m, x, y = token_model()
    local t0 = os.time()
    local batch_losses = {}
    local probe = { on_batch_end = function(_, _, logs) batch_losses[#batch_losses + 1] = logs.loss end }
    local cb = moe.callbacks.TensorBoard { log_dir = dir .. "/logs", update_freq = 2 }
    local h = m:fit { x = x:narrow(1, 1, 60), y = y:narrow(1, 1, 60), batch_size = 16, epochs = 3, verbose = 0,
      validation_data = { x:narrow(1, 61, 12), y:narrow(1, 61, 12) }, callbacks = { probe, cb } }
    assert.same({ "train", "validation" }, ls(dir .. "/logs"))
    local files = ls(dir .. "/logs/train")
    assert.equal(1, #files)
    assert.matches("^events%.out%.tfevents%.%d+%.", files[1])
    local ev = read_events(dir .. "/logs/train/" .. files[1])
    assert.equal("brain.Event:2", ev[1].file_version)
    -- the scalars by tag: {step, value} in file order
    local by = {}
    for k = 2, #ev do
      assert.is_nil(ev[k].file_version)
      assert.is_true(ev[k].wall_time >= t0 - 1 and ev[k].wall_time <= os.time() + 1)
      for _, v in ipairs(ev[k].values) do
        by[v[1]] = by[v[1]] or {}
        table.insert(by[v[1]], { ev[k].step, v[2] })
      end
    end
    -- 4 batches an epoch (16, 16, 16, 12), 12 in all: every second one, at its global number
    assert.equal(12, #batch_losses)
    local want = {}
    for b = 2, 12, 2 do want[#want + 1] = { b, f32(batch_losses[b]) } end
    assert.same(want, by.batch_loss)
    -- every number of the History's train logs, as epoch_<name> at steps 1, 2, 3
    local seen = 0
    for name, vals in pairs(h.history) do
      if name:sub(1, 4) ~= "val_" then
        local w = {}
        for e = 1, 3 do w[e] = { e, f32(vals[e]) } end
        assert.same(w, by["epoch_" .. name], name)
        seen = seen + 1
      end
    end
    for _, k in ipairs { "loss", "router_z_loss", "load_balancing_loss", "expert_usage", "expert_1_tokens",
                         "expert_4_tokens", "router_confidence", "fraction_tokens_left_behind" } do
      assert.is_table(by["epoch_" .. k], k)
    end
    assert.same({ { 1, f32(1e-2) }, { 2, f32(1e-2) }, { 3, f32(1e-2) } }, by.epoch_learning_rate)
    local tags = 0
    for _ in pairs(by) do tags = tags + 1 end
    assert.equal(seen + 2, tags) -- and nothing else (batch_loss, epoch_learning_rate)
    -- validation: the val_ logs without their prefix
    local vfiles = ls(dir .. "/logs/validation")
    assert.equal(1, #vfiles)
    local vev = read_events(dir .. "/logs/validation/" .. vfiles[1])
    assert.equal("brain.Event:2", vev[1].file_version)
    assert.equal(4, #vev)
    for e = 1, 3 do
      assert.equal(e, vev[e + 1].step)
      local got = {}
      for _, v in ipairs(vev[e + 1].values) do got[v[1]] = v[2] end
      local n = 0
      for name, vals in pairs(h.history) do
        if name:sub(1, 4) == "val_" then
          assert.equal(f32(vals[e]), got["epoch_" .. name:sub(5)], name)
          n = n + 1
        end
      end
      assert.is_true(n >= 5)
      local m2 = 0
      for _ in pairs(got) do m2 = m2 + 1 end
      assert.equal(n, m2)
    end
    -- closed at the end of fit: a second fit writes new files, batch steps go on counting
    m:fit { x = x, y = y, batch_size = 36, epochs = 1, verbose = 0, callbacks = { cb } }
    files = ls(dir .. "/logs/train")
    assert.equal(2, #files)
    local newer
    for _, f in ipairs(files) do if #read_events(dir .. "/logs/train/" .. f) == 3 then newer = f end end
    assert.is_string(newer)
    local ev2 = read_events(dir .. "/logs/train/" .. newer)
    assert.equal(14, ev2[2].step)                 -- batch 14 (2 more batches of 36)
    assert.equal("batch_loss", ev2[2].values[1][1])
    assert.equal(1, ev2[3].step)
  end)

  it("update_freq 'epoch' writes no batch scalars; 'batch' writes each", function()
    local m, x, y = token_model()
    local cb = moe.callbacks.TensorBoard { log_dir = dir }
    m:fit { x = x, y = y, batch_size = 24, epochs = 2, verbose = 0, callbacks = { cb } }
    assert.same({ "train" }, ls(dir)) -- no validation data: no validation directory
    local ev = read_events(dir .. "/train/" .. ls(dir .. "/train")[1])
    assert.equal(3, #ev)
    assert.same({ 1, 2 }, { ev[2].step, ev[3].step })
    os.execute("rm -rf '" .. dir .. "'")
    cb = moe.callbacks.TensorBoard { log_dir = dir, update_freq = "batch" }
    m:fit { x = x, y = y, batch_size = 24, epochs = 1, verbose = 0, callbacks = { cb } }
    ev = read_events(dir .. "/train/" .. ls(dir .. "/train")[1])
    local steps = {}
    for k = 2, #ev do steps[#steps + 1] = ev[k].values[1][1] .. "@" .. ev[k].step end
    assert.same({ "batch_loss@1", "batch_loss@2", "batch_loss@3", "epoch_expert_1_tokens@1" }, steps)
  end)

  it("refuses bad options, naming TensorBoard, the value and the caller's line", function()
    local me = "tensorboard_spec%.lua:%d+: "
    assert.matches(me .. 'TensorBoard: update_freq must be "epoch", "batch" or an integer >= 1 %(every N batches%), ' ..
      'got "often" %(a string%)', H.error_of(function() moe.callbacks.TensorBoard { update_freq = "often" } end))
    assert.matches(me .. "TensorBoard: update_freq .*got 0 %(a number%)",
      H.error_of(function() moe.callbacks.TensorBoard { update_freq = 0 } end))
    assert.matches(me .. "TensorBoard: log_dir must be .*got false %(a boolean%)",
      H.error_of(function() moe.callbacks.TensorBoard { log_dir = false } end))
    assert.matches("TensorBoard: unknown option 'histogram_freq' %(options: log_dir, update_freq%)",
      H.error_of(function() moe.callbacks.TensorBoard { histogram_freq = 1 } end))
  end)
end)
