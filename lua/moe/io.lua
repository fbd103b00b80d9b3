-- moe.io: safetensors files (https://github.com/huggingface/safetensors format).
--
-- Layout: [u64 little-endian N][N bytes of JSON header][tensor bytes]. The header
-- maps each name to {dtype, shape, data_offsets = [begin, end]} (offsets relative
-- to the end of the header) and may hold "__metadata__" (string -> string).
-- Writes are atomic (src/data/safetensors.c); reads validate every entry of the
-- header before any tensor byte is trusted.
local moe = require "moe"
local core = moe.core
local cjson = require "cjson.safe"

local io_ = {}

local to_st = { float32 = "F32", float64 = "F64", int32 = "I32", int64 = "I64", bool = "BOOL" }
local from_st = { F32 = "float32", F64 = "float64", I32 = "int32", I64 = "int64", BOOL = "bool" }
local elem_size = { F32 = 4, F64 = 8, I32 = 4, I64 = 8, BOOL = 1 }
io_.json = cjson


local function check_name(name, fn)
  if type(name) ~= "string" or name == "" or name == "__metadata__" then
    error(("%s: tensor names must be non-empty strings other than __metadata__, got %s"):format(fn, tostring(name)), 3)
  end
end

-- write(path, names, tensors, metadata): names in order; metadata string -> string
function io_.write(path, names, tensors, metadata)
  -- the header is assembled by hand: a 0-d tensor's shape must stay a JSON array
  local parts, offset, seen = {}, 0, {}
  for i, name in ipairs(names) do
    check_name(name, "save_tensors")
    if seen[name] then error(("save_tensors: the name '%s' appears twice"):format(name), 3) end
    seen[name] = true
    local t = tensors[i]
    if not core.is_tensor(t) then error(("save_tensors: '%s' is not a tensor"):format(name), 3) end
    local st = to_st[t:dtype()]
    local shape = t:shape()
    local nbytes = t:numel() * elem_size[st]
    local dims = {}
    for d, v in ipairs(shape) do dims[d] = ("%d"):format(v) end
    parts[#parts + 1] = ('%s:{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}'):format(
      cjson.encode(name), st, table.concat(dims, ","), offset, offset + nbytes)
    offset = offset + nbytes
  end
  if metadata and next(metadata) then
    for k, v in pairs(metadata) do
      if type(k) ~= "string" or type(v) ~= "string" then
        error("save_tensors: metadata must map strings to strings", 3)
      end
    end
    parts[#parts + 1] = '"__metadata__":' .. cjson.encode(metadata)
  end
  -- CUDA tensors are written from host copies: the file loads on any machine
  local host = {}
  for i, t in ipairs(tensors) do host[i] = t:device() == "cuda" and core.cpu(t:detach()) or t end
  core.st_save(path, "{" .. table.concat(parts, ",") .. "}", host)
end

-- save_tensors(path, {name = tensor, ...}[, metadata]): names are written sorted
function io_.save_tensors(path, tensors, metadata)
  if type(path) ~= "string" then error("save_tensors: path must be a string", 2) end
  if type(tensors) ~= "table" then error("save_tensors: expected a table name -> tensor", 2) end
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

-- read(path) -> {name = tensor}, metadata, names (in file order)
function io_.read(path)
  if type(path) ~= "string" then error("load_tensors: path must be a string", 2) end
  local header_json, data_start, file_size = core.st_read_header(path)
  local bad = function(fmt, ...) error(("load: '%s' is corrupted: " .. fmt):format(path, ...), 0) end
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
    out[en.name] = core.st_read_tensor(path, data_start + en.b, en.e - en.b, en.dtype, en.shape)
    names[#names + 1] = en.name
  end
  return out, metadata, names
end

function io_.load_tensors(path)
  local ts, md = io_.read(path)
  return ts, md
end

return io_
