-- moe.io: safetensors files (https://github.com/huggingface/safetensors format).
--
-- Layout: [u64 little-endian N][N bytes of JSON header][tensor bytes]. The header
-- maps each name to {dtype, shape, data_offsets = [begin, end]} (offsets relative
-- to the end of the header) and may hold "__metadata__" (string -> string).
-- Writes are atomic (src/data/safetensors.c) and carry XXH3-64 checksums of the
-- header and of every tensor in __metadata__ (see "checksums" below); reads
-- verify them and validate every entry of the header before any tensor byte is
-- trusted.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core
local cjson = require "cjson.safe"

local io_ = {}

local to_st = { float32 = "F32", float64 = "F64", int32 = "I32", int64 = "I64", bool = "BOOL" }
local from_st = { F32 = "float32", F64 = "float64", I32 = "int32", I64 = "int64", BOOL = "bool" }
local elem_size = { F32 = 4, F64 = 8, I32 = 4, I64 = 8, BOOL = 1 }
io_.json = cjson


-- ------------------------------------------------------------------ JSON with exact numbers
-- lua-cjson writes at most 14 significant digits (Debian's build refuses more),
-- which changes 1/3 or 2^53 + 1 on the way through a file. This encoder writes
-- each number with the fewest digits (15 to 17) that read back to the same
-- double, and sorts object keys so that a model saves to the same bytes each
-- time. Tables become arrays or objects as lua-cjson decides (an empty table
-- is {}); decoding stays with lua-cjson, whose strtod is exact.
local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
  ["\b"] = "\\b", ["\f"] = "\\f" }
-- a JSON string literal (bytes >= 0x80 pass through: names are UTF-8)
local function str_json(v)
  return '"' .. v:gsub('[%c"\\]', function(c) return escapes[c] or ("\\u%04x"):format(c:byte()) end) .. '"'
end
io_.json_string = str_json

local function num_json(v)
  if v ~= v or v == math.huge or v == -math.huge then return nil end
  for digits = 15, 17 do
    local s = ("%." .. digits .. "g"):format(v)
    if tonumber(s) == v then return s end
  end
  return ("%.17g"):format(v)
end

local function encode(v, out, depth)
  local tv = type(v)
  if tv == "string" then out[#out + 1] = str_json(v)
  elseif tv == "number" then
    local s = num_json(v)
    if not s then error(("the number %s (JSON has no NaN or infinity)"):format(tostring(v)), 0) end
    out[#out + 1] = s
  elseif tv == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == cjson.null then out[#out + 1] = "null"
  elseif tv == "table" then
    if depth > 100 then error("a table nested more than 100 deep (a cycle?)", 0) end
    local count, max, array = 0, 0, true
    for k in pairs(v) do
      count = count + 1
      if type(k) == "number" and k >= 1 and k == math.floor(k) then
        if k > max then max = k end
      else
        array = false
        if type(k) ~= "string" and type(k) ~= "number" then error(("a table key of type %s"):format(type(k)), 0) end
      end
    end
    if count == 0 then out[#out + 1] = "{}"; return end
    if array then
      if max > 10 and max > 2 * count then error(("a sparse array (%d entries up to index %d)"):format(count, max), 0) end
      out[#out + 1] = "["
      for i = 1, max do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
      return
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = { type(k) == "number" and num_json(k) or k, k } end
    table.sort(keys, function(a, b) return tostring(a[1]) < tostring(b[1]) end)
    out[#out + 1] = "{"
    for i, kk in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      if kk[1] == nil then error("a table key that is NaN or infinite", 0) end
      out[#out + 1] = str_json(kk[1])
      out[#out + 1] = ":"
      encode(v[kk[2]], out, depth + 1)
    end
    out[#out + 1] = "}"
  else
    error(("a value of type %s"):format(tv), 0)
  end
end

-- json_encode(v) -> string, or nil and the reason (as cjson.safe.encode)
function io_.json_encode(v)
  local out = {}
  local ok, err = pcall(encode, v, out, 0)
  if not ok then return nil, "cannot store " .. tostring(err) .. " in JSON" end
  return table.concat(out)
end
io_.json_decode = cjson.decode

-- ------------------------------------------------------------------ checksums
-- Every file moelua writes records in __metadata__ (so that it stays a plain
-- safetensors file for other readers):
--   "checksum"          "xxh3-64"
--   "checksum.tensors"  JSON {name: 16 hex digits}, the XXH3-64 of each tensor's bytes
--   "checksum.header"   16 hex digits: the XXH3-64 of the 8-byte length and the
--                       header exactly as stored, with these 16 digits read as
--                       "0000000000000000" (so it covers every other header byte)
local ALGO = "xxh3-64"
local KEY_ALGO, KEY_TENSORS, KEY_HEADER = "checksum", "checksum.tensors", "checksum.header"
local reserved = { [KEY_ALGO] = true, [KEY_TENSORS] = true, [KEY_HEADER] = true }
local PLACEHOLDER = ("0"):rep(16)
local HEADER_FIELD = '"' .. KEY_HEADER .. '":"'
io_.checksum_keys = reserved
local MAX_HEADER = 100 * 1000 * 1000 -- as src/data/safetensors.h

local function le64(n)
  local b = {}
  for i = 1, 8 do
    b[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(b)
end

local function check_name(name, fn)
  if type(name) ~= "string" or name == "" or name == "__metadata__" then
    error(("%s: tensor names must be non-empty strings other than __metadata__, got %s"):format(fn, moe._show(name)), 3)
  end
end

-- write(path, names, tensors, metadata[, named_temp]): names in order; metadata
-- string -> string; named_temp skips O_TMPFILE (the fallback path, for tests)
function io_.write(path, names, tensors, metadata, named_temp)
  -- the header is assembled by hand: a 0-d tensor's shape must stay a JSON array
  local parts, offset, seen, sums = {}, 0, {}, {}
  -- CUDA tensors are written from host copies: the file loads on any machine
  local host = {}
  for i, name in ipairs(names) do
    check_name(name, "save_tensors")
    if seen[name] then error(("save_tensors: the name '%s' appears twice"):format(name), 3) end
    seen[name] = true
    local t = tensors[i]
    if not core.is_tensor(t) then error(("save_tensors: '%s' is not a tensor"):format(name), 3) end
    host[i] = t:device() == "cuda" and core.cpu(t:detach()) or t
    local st = to_st[t:dtype()]
    local shape = t:shape()
    local nbytes = t:numel() * elem_size[st]
    local dims = {}
    for d, v in ipairs(shape) do dims[d] = ("%d"):format(v) end
    parts[#parts + 1] = ('%s:{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}'):format(
      str_json(name), st, table.concat(dims, ","), offset, offset + nbytes)
    offset = offset + nbytes
    sums[name] = core.st_checksum(host[i])
  end
  local md = {}
  for k, v in pairs(metadata or {}) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error("save_tensors: metadata must map strings to strings", 3)
    end
    if reserved[k] then error(("save_tensors: the metadata key '%s' is reserved for moelua's checksums"):format(k), 3) end
    md[#md + 1] = str_json(k) .. ":" .. str_json(v)
  end
  table.sort(md)
  md[#md + 1] = str_json(KEY_ALGO) .. ":" .. str_json(ALGO)
  md[#md + 1] = str_json(KEY_TENSORS) .. ":" .. str_json(assert(io_.json_encode(sums)))
  md[#md + 1] = HEADER_FIELD .. PLACEHOLDER .. '"'
  parts[#parts + 1] = '"__metadata__":{' .. table.concat(md, ",") .. "}"
  local header = "{" .. table.concat(parts, ",") .. "}"
  header = header .. (" "):rep((8 - #header % 8) % 8) -- padded here, so the checksum covers the padding
  if #header > MAX_HEADER then
    error(("save_tensors: the header would take %d bytes; safetensors readers accept at most %d"):format(#header, MAX_HEADER), 3)
  end
  local at = select(2, header:find(HEADER_FIELD .. PLACEHOLDER, 1, true)) - 16
  local sum = core.st_checksum(le64(#header) .. header)
  header = header:sub(1, at) .. sum .. header:sub(at + 17)
  core.st_save(path, header, host, named_temp)
end

-- save_tensors(path, {name = tensor, ...}[, metadata]): names are written sorted
function io_.save_tensors(path, tensors, metadata)
  if type(path) ~= "string" then error(("save_tensors: path must be a string, got %s"):format(moe._show(path)), 2) end
  if type(tensors) ~= "table" then error(("save_tensors: expected a table name -> tensor, got %s"):format(moe._show(tensors)), 2) end
  local names = {}
  for k in pairs(tensors) do
    check_name(k, "save_tensors")
    names[#names + 1] = k
  end
  table.sort(names)
  local ts = {}
  for i, k in ipairs(names) do ts[i] = tensors[k] end
  io_.write(path, names, ts, metadata)
end

local function is_int(v) return type(v) == "number" and v == math.floor(v) and v >= 0 and v < 2 ^ 53 end

local HEX16 = "^" .. ("[0-9a-f]"):rep(16) .. "$"

-- the header's own checksum, checked on the raw bytes before anything in it
-- is trusted; returns the recorded checksum (nil when the header has none)
local function check_header_sum(path, header)
  local b, e = header:find(HEADER_FIELD, 1, true)
  if not b then return nil end
  if header:find(HEADER_FIELD, e + 1, true) then
    error(("load: '%s' is corrupted: its header holds the field %s twice"):format(path, KEY_HEADER), 0)
  end
  local stored = header:sub(e + 1, e + 16)
  if not stored:match(HEX16) or header:sub(e + 17, e + 17) ~= '"' then
    error(("load: '%s' is corrupted: the header checksum '%s' is not 16 hex digits"):format(path,
      (stored:gsub("[^%w]", "?"))), 0)
  end
  local blanked = header:sub(1, e) .. PLACEHOLDER .. header:sub(e + 17)
  local sum = core.st_checksum(le64(#header) .. blanked)
  if sum ~= stored then
    error(("load: '%s' is corrupted: the header fails its checksum (XXH3-64 %s, recorded %s)")
      :format(path, sum, stored), 0)
  end
  return stored
end

-- read(path) -> {name = tensor}, metadata (without the checksum keys), names
-- (in file order), checked (whether the file carried checksums, all verified)
function io_.read(path)
  if type(path) ~= "string" then error(("load_tensors: path must be a string, got %s"):format(moe._show(path)), 2) end
  local header_json, data_start, file_size = core.st_read_header(path)
  local bad = function(fmt, ...) error(("load: '%s' is corrupted: " .. fmt):format(path, ...), 0) end
  local header_summed = check_header_sum(path, header_json)
  local h, err = cjson.decode(header_json)
  if type(h) ~= "table" or rawget(h, 1) ~= nil then bad("its header is not a JSON object (%s)", tostring(err or "an array")) end
  local data_len = file_size - data_start
  local entries, metadata = {}, nil
  for name, e in pairs(h) do
    if name == "__metadata__" then
      if type(e) ~= "table" then bad("__metadata__ is not an object") end
      for k, v in pairs(e) do
        if type(k) ~= "string" or type(v) ~= "string" then bad("__metadata__ must map strings to strings") end
      end
      metadata = e
    else
      if type(name) ~= "string" or type(e) ~= "table" then bad("entry %s is not an object", tostring(name)) end
      local dt = from_st[e.dtype]
      if not dt then
        bad("tensor '%s' has dtype %s (moelua reads F32, F64, I32, I64, BOOL)", name, tostring(e.dtype))
      end
      if type(e.shape) ~= "table" then bad("tensor '%s' has no shape", name) end
      local n, shape = 1, {}
      if #e.shape > 8 then bad("tensor '%s' has %d dims (at most 8)", name, #e.shape) end
      for i = 1, #e.shape do
        local d = e.shape[i]
        if not is_int(d) then bad("tensor '%s' has a bad size %s in its shape", name, tostring(d)) end
        shape[i] = d
        n = n * d
      end
      for k in pairs(e.shape) do
        if type(k) ~= "number" or k > #e.shape then bad("tensor '%s' has a malformed shape", name) end
      end
      local o = e.data_offsets
      if type(o) ~= "table" or #o ~= 2 or not is_int(o[1]) or not is_int(o[2]) or o[1] > o[2] then
        bad("tensor '%s' has bad data_offsets", name)
      end
      if o[2] > data_len then
        error(("load: '%s' is truncated: tensor '%s' ends at byte %d of a %d-byte data section")
          :format(path, name, o[2], data_len), 0)
      end
      if o[2] - o[1] ~= n * elem_size[e.dtype] then
        bad("tensor '%s' of dtype %s and shape [%s] needs %d bytes but its offsets span %d", name, e.dtype,
          table.concat(shape, ","), n * elem_size[e.dtype], o[2] - o[1])
      end
      entries[#entries + 1] = { name = name, dtype = dt, shape = shape, b = o[1], e = o[2] }
    end
  end
  -- checksums: all three fields or none (a file from another writer)
  metadata = metadata or {}
  local sums
  local has_algo, has_sums = metadata[KEY_ALGO] ~= nil, metadata[KEY_TENSORS] ~= nil
  if header_summed or has_algo or has_sums then
    if not (header_summed and has_algo and has_sums) then
      bad("its checksums are incomplete (%s is missing from __metadata__)",
        not header_summed and KEY_HEADER or not has_algo and KEY_ALGO or KEY_TENSORS)
    end
    if metadata[KEY_HEADER] ~= header_summed then
      bad("the header checksum field is malformed")
    end
    if metadata[KEY_ALGO] ~= ALGO then
      bad("its checksums use '%s' (moelua knows %s)", metadata[KEY_ALGO], ALGO)
    end
    sums = cjson.decode(metadata[KEY_TENSORS])
    if type(sums) ~= "table" then bad("%s is not a JSON object", KEY_TENSORS) end
    local n = 0
    for k, v in pairs(sums) do
      n = n + 1
      if type(k) ~= "string" or type(v) ~= "string" or not v:match(HEX16) then bad("%s has a malformed entry", KEY_TENSORS) end
    end
    for _, en in ipairs(entries) do
      if not sums[en.name] then bad("tensor '%s' has no checksum", en.name) end
    end
    if n ~= #entries then bad("%s lists %d tensors, the file has %d", KEY_TENSORS, n, #entries) end
  end
  local user_meta
  for k, v in pairs(metadata) do
    if not reserved[k] then
      user_meta = user_meta or {}
      user_meta[k] = v
    end
  end
  -- the data section must be covered exactly, without overlaps or holes
  table.sort(entries, function(a, b) return a.b < b.b or (a.b == b.b and a.e < b.e) end)
  local at = 0
  for _, en in ipairs(entries) do
    if en.b ~= at then bad("tensor '%s' starts at byte %d, expected %d (overlap or hole)", en.name, en.b, at) end
    at = en.e
  end
  if at ~= data_len then bad("%d bytes after the last tensor", data_len - at) end
  local out, names = {}, {}
  for _, en in ipairs(entries) do
    out[en.name] = core.st_read_tensor(path, data_start + en.b, en.e - en.b, en.dtype, en.shape, en.name,
      sums and sums[en.name])
    names[#names + 1] = en.name
  end
  return out, user_meta, names, sums ~= nil
end

-- load_tensors(path) -> {name = tensor}, metadata; errors name load_tensors, at the caller's line
function io_.load_tensors(path)
  if type(path) ~= "string" then error(("load_tensors: path must be a string, got %s"):format(moe._show(path)), 2) end
  local ok, ts, md = pcall(io_.read, path)
  if not ok then
    -- a position (a Lua file's "path.lua:N: ") goes; the loader's own messages
    -- have none, and a name inside them may look like one
    local msg = tostring(ts)
    if not msg:find("^load:") then msg = msg:gsub("^[^\n:]*%.lua:%d+: ", "", 1) end
    msg = msg:gsub("^load:", "load_tensors:", 1)
    error(moe._where(msg), 0)
  end
  return ts, md
end

return io_
