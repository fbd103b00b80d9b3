-- ckpt_driver.lua -- what spec/fuzz/ckpt_fuzz.c runs on each input.
--
-- Input forms:
--   * raw: the bytes are the file, as is (the seeds are real safetensors files);
--   * assembled: "{...header JSON...}\0<data bytes>" (it starts with "{" and has
--     a NUL): the driver writes the u64 length prefix itself, so mutations of
--     the header text reach the JSON validation instead of stopping at a wrong
--     length. This is also where checkpoint checksums will be recomputed
--     (`refresh`, below), once the format has them, so that mutated headers and
--     tensors get past the checksum test to the code behind it.
-- Each file goes to moe.load_tensors, and to moe.load. A load either fails with
-- a string error that names the function, and that is no Lua runtime error
-- (an "attempt to ..." or "bad argument" outside the quoted file text means a
-- check is missing; FUZZ_LUA_ERRORS=log lists these instead), or it succeeds
-- with exactly what the file holds: the tensors the header lists, with their
-- dtypes, shapes and values (decoded here from the bytes, without moe.io), and
-- a model whose weights are those tensors. Anything else raises "FUZZ: ...".
-- spec/fuzz/corpus_spec.lua replays the committed corpus through this file
-- under the plain interpreter.
local moe = require "moe"
require "moe.nn" -- (on main, moe.load as the first use of moe fails: issue 12)
local ffi = require "ffi"
local cjson = require "cjson.safe"

local FORMAT = "moelua.model.v1"
local ctype = { F32 = "float *", F64 = "double *", I32 = "int32_t *", I64 = "int64_t *", BOOL = "uint8_t *" }
local dtype_of = { F32 = "float32", F64 = "float64", I32 = "int32", I64 = "int64", BOOL = "bool" }
local size_of = { F32 = 4, F64 = 8, I32 = 4, I64 = 8, BOOL = 1 }

local function bug(fmt, ...) error("FUZZ: " .. fmt:format(...), 0) end

-- Lua runtime errors. The loader's checks raise with error(); a runtime error
-- ("attempt to index a nil value", "bad argument #1 to 'ipairs'") comes from
-- the VM or a C function instead, and means a check is missing. While a file
-- loads, the global error and pcall are wrapped: error() records each message
-- it raises, and every failed pcall (the loader's own ones included, which may
-- turn the error into another message) looks at what it caught: not raised by
-- error(), and starting (after its position) as a VM message, it is a runtime
-- error. (Matching text in the final message instead would be fooled: libFuzzer
-- copies strings it sees compared into the inputs, and file text shows up in
-- the loader's messages.)
-- FUZZ_LUA_ERRORS=log prints each distinct one once instead of failing.
local log_lua_errors = os.getenv("FUZZ_LUA_ERRORS") == "log"
local raw_error, raw_pcall = error, pcall
local raised, runtime = {}, {}
local vm_messages = { "^attempt to %a+ ", "^bad argument #%d+ to ", "^table index is nil", "^invalid key to ",
  "^loop in gettable", "^loop in settable", "^invalid option", "^wrong number of arguments" }

-- (a path without colons: a name inside a message may itself look like "x.lua:7: ")
local function strip_position(err) return err:match("^[^\n:]*%.lua:%d+: (.*)$") or err end

local function classify(err)
  if type(err) ~= "string" or raised[err] or raised[strip_position(err)] then return end
  local bare = strip_position(err)
  for _, p in ipairs(vm_messages) do
    if bare:match(p) then runtime[#runtime + 1] = err; return end
  end
end

local function wrapped_error(msg, level)
  if type(msg) == "string" then raised[msg] = true end
  level = level or 1
  return raw_error(msg, level > 0 and level + 1 or level)
end

local function caught(ok, ...)
  if not ok then classify((...)) end
  return ok, ...
end
local function wrapped_pcall(f, ...) return caught(raw_pcall(f, ...)) end

-- calls fn(...) with the wrappers in place; ok, results... as pcall
local function watched(fn, ...)
  raised, runtime = {}, {}
  _G.error, _G.pcall = wrapped_error, wrapped_pcall
  local res = { caught(raw_pcall(fn, ...)) }
  _G.error, _G.pcall = raw_error, raw_pcall
  return unpack(res, 1, table.maxn(res))
end

local seen = {}
local function check_runtime(fn)
  local err = runtime[1]
  if not err then return end
  if not log_lua_errors then bug("%s met a Lua runtime error instead of a check: %s", fn, err) end
  local key = err:gsub("%d+", "N")
  if not seen[key] then
    seen[key] = true
    io.stderr:write(("ckpt_driver: %s: a Lua runtime error instead of a check: %s\n"):format(fn, err))
  end
end

local function check_error(fn, err)
  if type(err) ~= "string" then bug("%s raised a %s, not a message", fn, type(err)) end
  -- (a position prefix is allowed: on main, the C layer's errors come with io.lua's)
  if not strip_position(err):match("^load") then
    bug("%s failed with a message that does not name it: %s", fn, err)
  end
end

local function le64(n)
  local b = {}
  for i = 1, 8 do b[i] = string.char(n % 256); n = math.floor(n / 256) end
  return table.concat(b)
end

local function u64(s, at)
  local n = 0
  for i = at + 7, at, -1 do n = n * 256 + s:byte(i) end
  return n
end

-- the header checksum, recomputed for a header the fuzzer changed, so that the
-- mutation reaches the code behind the check. The format (from the checkpoint
-- checksums of issue 12): __metadata__ "checksum.header" holds 16 hex digits,
-- the XXH3-64 (moe.core.st_checksum) of the u64 length and the header with
-- those digits read as zeros. Without st_checksum (before that change) or
-- without the field, the bytes pass through. Tensor checksums are left alone:
-- changed tensor bytes are meant to fail.
local HEADER_FIELD = '"checksum.header":"'
local function refresh(header, data)
  local st_checksum = rawget(moe.core, "st_checksum")
  local _, e = header:find(HEADER_FIELD, 1, true)
  if not st_checksum or not e or not header:sub(e + 1, e + 16):match("^" .. ("[0-9a-f]"):rep(16) .. "$") then
    return header, data
  end
  local blanked = header:sub(1, e) .. ("0"):rep(16) .. header:sub(e + 17)
  return header:sub(1, e) .. st_checksum(le64(#header) .. blanked) .. header:sub(e + 17), data
end

local function flat(v, out)
  if type(v) ~= "table" then out[#out + 1] = v; return out end
  for _, x in ipairs(v) do flat(x, out) end
  return out
end

local function same_value(a, b)
  if type(a) == "boolean" then a = a and 1 or 0 end
  if type(b) == "boolean" then b = b and 1 or 0 end
  return a == b or (a ~= a and b ~= b)
end

-- t holds exactly the n values at ptr (a cdata pointer of the file's dtype)
local function check_values(name, t, ptr, n, code)
  if n > 4096 then return end -- the comparison is slow in Lua; big tensors are rare here
  local vals = flat(t:totable(), {})
  if #vals ~= n then bug("tensor '%s' has %d values, the file %d", name, #vals, n) end
  -- a float NaN read through the FFI can come out as a NaN-tagged non-number in
  -- LuaJIT: floats are read by their bits first, and a NaN pattern stands for NaN
  local bits = (code == "F32" and ffi.cast("uint32_t *", ptr)) or (code == "F64" and ffi.cast("uint64_t *", ptr))
  for i = 1, n do
    local v
    if code == "F32" and bit.band(bits[i - 1], 0x7fffffff) > 0x7f800000 then v = 0 / 0
    elseif code == "F64" and bit.band(bits[i - 1], 0x7fffffffffffffffULL) > 0x7ff0000000000000ULL then v = 0 / 0
    else v = ptr[i - 1] end
    if code == "I64" then v = tonumber(v) end
    if not same_value(vals[i], v) then bug("tensor '%s' value %d is %s, the file holds %s", name, i, tostring(vals[i]), tostring(v)) end
  end
end

-- what the file holds, decoded here without moe.io: {name = {dtype, shape, bytes}}
local function expected(bytes)
  if #bytes < 8 then return nil end
  local n = u64(bytes, 1)
  if n > #bytes - 8 then return nil end
  local h = cjson.decode(bytes:sub(9, 8 + n))
  if type(h) ~= "table" then return nil end
  return h, 8 + n
end

local function check_tensors(bytes, ts, md)
  if type(ts) ~= "table" then bug("load_tensors returned a %s", type(ts)) end
  if md ~= nil and type(md) ~= "table" then bug("load_tensors returned metadata of type %s", type(md)) end
  local h, start = expected(bytes)
  if not h then bug("load_tensors read a file whose header does not decode") end
  local count = 0
  for name, e in pairs(h) do
    if name ~= "__metadata__" then
      count = count + 1
      local t = ts[name]
      if not moe.is_tensor(t) then bug("tensor '%s' of the header was not loaded", tostring(name)) end
      if t:dtype() ~= dtype_of[e.dtype] then bug("tensor '%s' loaded as %s, the header says %s", name, t:dtype(), tostring(e.dtype)) end
      local shape, n = t:shape(), 1
      if #shape ~= #e.shape then bug("tensor '%s' loaded with %d dims, the header has %d", name, #shape, #e.shape) end
      for i = 1, #shape do
        if shape[i] ~= e.shape[i] then bug("tensor '%s' dim %d is %d, the header says %s", name, i, shape[i], tostring(e.shape[i])) end
        n = n * shape[i]
      end
      local b = e.data_offsets[1]
      local ptr = ffi.cast(ctype[e.dtype], ffi.cast("const char *", bytes) + start + b)
      if n * size_of[e.dtype] ~= e.data_offsets[2] - b then bug("tensor '%s' was loaded from offsets that do not fit its shape", name) end
      check_values(name, t, ptr, n, e.dtype)
    end
  end
  local loaded = 0
  for _ in pairs(ts) do loaded = loaded + 1 end
  if loaded ~= count then bug("load_tensors returned %d tensors, the header lists %d", loaded, count) end
  if md ~= nil then
    if type(h.__metadata__) ~= "table" then bug("load_tensors returned metadata the header does not have") end
    for k, v in pairs(md) do
      if h.__metadata__[k] ~= v then bug("metadata '%s' changed", tostring(k)) end
    end
  end
end

local function check_model(m, ts)
  if type(m) ~= "table" then bug("load returned a %s", type(m)) end
  local names, ws = m:named_weights()
  for i, n in ipairs(names) do
    local t = ts[n]
    if not t then bug("the loaded model has a weight '%s' the file does not hold", n) end
    if not moe.is_same_size(t, ws[i]) or t:dtype() ~= ws[i]:dtype() then bug("weight '%s' does not match the file's tensor", n) end
    local a, b = flat(t:totable(), {}), flat(ws[i]:totable(), {})
    for j = 1, math.min(#a, 4096) do
      if not same_value(a[j], b[j]) then bug("weight '%s' value %d is %s, the file holds %s", n, j, tostring(b[j]), tostring(a[j])) end
    end
  end
end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  assert(f:write(bytes))
  assert(f:close())
end

local function load_file(path, bytes)
  write(path, bytes)
  local ok, ts, md = watched(moe.load_tensors, path)
  check_runtime("load_tensors")
  if not ok then check_error("load_tensors", ts); ts = nil
  else check_tensors(bytes, ts, md) end
  local okm, m = watched(moe.load, path, { compile = (#bytes % 2 == 0) })
  check_runtime("load")
  if not okm then
    check_error("load", m)
    return
  end
  if not ts then bug("load read a model from a file that load_tensors rejects") end
  if type(md) ~= "table" or md.format ~= FORMAT then bug("load read a model from a file without the model format tag") end
  check_model(m, ts)
end

return function(path, input)
  local nul = input:find("\0", 1, true)
  if input:sub(1, 1) == "{" and nul then
    local header, data = refresh(input:sub(1, nul - 1), input:sub(nul + 1))
    load_file(path, le64(#header) .. header .. data)
  else
    load_file(path, input)
  end
end
