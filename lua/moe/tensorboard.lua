-- moe.tensorboard: TensorBoard event files (scalars), as PyTorch's
-- torch.utils.tensorboard.SummaryWriter writes them; moe.callbacks.TensorBoard
-- uses it during fit.
--
--   local w = moe.tensorboard.SummaryWriter("runs/exp1")   -- log_dir, made if missing
--   w:add_scalar("loss", 0.25, 1)                          -- tag, value, step
--   w:write_scalars({ loss = 0.2, auc = 0.9 }, 2)          -- several tags, one event
--   w:close()
--
-- The file, log_dir/events.out.tfevents.<time>.<host>.<pid>.<n>, is a sequence
-- of TFRecords: [u64 length][u32 masked CRC32C of those 8 bytes][data][u32
-- masked CRC32C of the data], little-endian. Each record's data is an Event
-- protobuf (tensorboard/compat/proto/event.proto): wall_time (double, field 1),
-- step (int64, field 2), then file_version (string, field 3: "brain.Event:2",
-- the first record) or summary (Summary, field 5) whose repeated value (field
-- 1) holds tag (string, field 1) and simple_value (float, field 2).
-- Each record goes to the file in one write and is flushed: a reader (or a
-- crash) never sees a record half-written except, at worst, the last one,
-- which TensorBoard's readers treat as not there yet.
local ffi = require "ffi"
local bit = require "bit"
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)

local tb = {}

pcall(ffi.cdef, "int getpid(void);")
pcall(ffi.cdef, "int mkdir(const char *path, unsigned int mode);")
pcall(ffi.cdef, "char *strerror(int errnum);")
pcall(ffi.cdef, "struct timespec { long tv_sec; long tv_nsec; }; int clock_gettime(int, struct timespec *);")

-- a value as an error message shows it: its text and its type
local function show(v)
  if type(v) == "string" then return ("%q (a string)"):format(v) end
  if v == nil then return "nil" end
  return ("%s (a %s)"):format(tostring(v), type(v))
end
tb._show = show

-- ------------------------------------------------------------------ CRC32C (Castagnoli)

local band, bxor, bor, rshift, lshift, bnot = bit.band, bit.bxor, bit.bor, bit.rshift, bit.lshift, bit.bnot
local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if band(c, 1) ~= 0 then c = bxor(rshift(c, 1), 0x82F63B78) else c = rshift(c, 1) end
  end
  CRC_TABLE[i] = c
end

-- crc32c(s): the CRC-32C of the string, as a number in [0, 2^32)
function tb.crc32c(s)
  local c = bnot(0)
  for i = 1, #s do c = bxor(CRC_TABLE[band(bxor(c, s:byte(i)), 0xff)], rshift(c, 8)) end
  return bnot(c) % 2 ^ 32
end

-- TFRecord's mask (rotate right by 15 bits, add a constant), so that a CRC
-- over bytes that hold CRCs is not degenerate
function tb.masked_crc32c(s)
  local c = tb.crc32c(s)
  return (bor(rshift(c, 15), lshift(c, 17)) % 2 ^ 32 + 0xa282ead8) % 2 ^ 32
end

-- ------------------------------------------------------------------ protobuf encoding

local LE = ffi.abi("le")
local f64, f32 = ffi.new("double[1]"), ffi.new("float[1]")

local function u32(n) -- n in [0, 2^32)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end
local function u64(n) return u32(n % 2 ^ 32) .. u32(math.floor(n / 2 ^ 32)) end
local function double(v)
  f64[0] = v
  local s = ffi.string(f64, 8)
  return LE and s or s:reverse()
end
local function float(v)
  f32[0] = v
  local s = ffi.string(f32, 4)
  return LE and s or s:reverse()
end
local function varint(n) -- n an integer in [0, 2^53)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end
-- a length-delimited field (wire type 2)
local function bytes_field(num, s) return varint(num * 8 + 2) .. varint(#s) .. s end

-- event(wall_time, step, what): an Event's bytes; what is the file_version or
-- Summary field, already encoded
local function event(wall_time, step, what)
  -- (proto3: a step of 0 is the default and is left out)
  return "\9" .. double(wall_time) .. (step ~= 0 and ("\16" .. varint(step)) or "") .. what
end

-- the TFRecord framing of one record's data
function tb.record(data)
  local len = u64(#data)
  return len .. u32(tb.masked_crc32c(len)) .. data .. u32(tb.masked_crc32c(data))
end

-- ------------------------------------------------------------------ files

local ts = ffi.new("struct timespec")
local function wall_time()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME: seconds since the epoch, as TensorBoard wants
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
tb._wall_time = wall_time

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname", "r")
  local h = f and f:read("*l")
  if f then f:close() end
  h = h or os.getenv("HOSTNAME") or "localhost"
  h = h:gsub("[^%w%-_.]", "_")
  return h ~= "" and h or "localhost"
end

-- mkdirs(path): path and its parents, as mkdir -p does, without a shell;
-- returns nil and a message when one cannot be made
function tb.mkdirs(path)
  local prefix = path:sub(1, 1) == "/" and "/" or ""
  for part in path:gmatch("[^/]+") do
    prefix = prefix .. part
    if ffi.C.mkdir(prefix, 511) ~= 0 then -- (0777, less the umask)
      local errno = ffi.errno()
      if errno ~= 17 then return nil, ("%s: %s"):format(prefix, ffi.string(ffi.C.strerror(errno))) end -- EEXIST
    end
    prefix = prefix .. "/"
  end
  return true
end

local seq = 0
-- the writers' class, called to make one (as PyTorch's SummaryWriter is), so
-- that its methods are the class's (help(w), the REPL's completion)
local SummaryWriter = {}
SummaryWriter.__index = SummaryWriter

-- SummaryWriter(log_dir): a new event file in log_dir (made if missing)
local function new_writer(_, log_dir, where)
  where = where or "SummaryWriter"
  if type(log_dir) ~= "string" or log_dir == "" then
    error(moe._where(("%s: log_dir must be a directory name (a non-empty string), got %s"):format(where, show(log_dir))), 0)
  end
  local ok, err = tb.mkdirs(log_dir)
  if not ok then error(moe._where(("%s: cannot make log_dir %q: %s"):format(where, log_dir, err)), 0) end
  local t = wall_time()
  local path, f
  repeat -- a name no other writer has: the time, the host, the process and a count
    seq = seq + 1
    path = ("%s/events.out.tfevents.%010d.%s.%d.%d"):format(log_dir, math.floor(t), hostname(), ffi.C.getpid(), seq)
    f = io.open(path, "rb")
    if f then f:close() end
  until not f
  local file, oerr = io.open(path, "wb")
  if not file then error(moe._where(("%s: cannot write in log_dir %q: %s"):format(where, log_dir, tostring(oerr))), 0) end
  file:setvbuf("full", 65536) -- (one record, one write: it is flushed whole)
  local w = setmetatable({ log_dir = log_dir, path = path, file = file, where = where }, SummaryWriter)
  w:_write(event(t, 0, bytes_field(3, "brain.Event:2")))
  return w
end
tb.SummaryWriter = setmetatable(SummaryWriter, { __call = new_writer })

function SummaryWriter:_write(data)
  if not self.file then error(moe._where(("%s: %s is closed"):format(self.where, self.path)), 0) end
  local ok, err = self.file:write(tb.record(data))
  if ok then ok, err = self.file:flush() end
  if not ok then error(moe._where(("%s: cannot write %s: %s"):format(self.where, self.path, tostring(err))), 0) end
end

local function check_step(self, step, fn)
  if type(step) ~= "number" or step ~= math.floor(step) or step < 0 or step >= 2 ^ 53 then
    error(moe._where(("%s: step must be an integer >= 0, got %s"):format(fn, show(step))), 0)
  end
end

-- write_scalars(values, step, wall_time): one Event holding a simple_value per
-- tag of values (a table of tag = number; other values are left out), tags
-- in sorted order
function SummaryWriter:write_scalars(values, step, wtime)
  if type(values) ~= "table" then
    error(moe._where(("write_scalars: values must be a table of tag = number, got %s"):format(show(values))), 0)
  end
  check_step(self, step, "write_scalars")
  local tags = {}
  for k, v in pairs(values) do
    if type(k) == "string" and type(v) == "number" then tags[#tags + 1] = k end
  end
  if #tags == 0 then return end
  table.sort(tags)
  local vals = {}
  for i, k in ipairs(tags) do
    vals[i] = bytes_field(1, bytes_field(1, k) .. "\21" .. float(values[k]))
  end
  self:_write(event(wtime or wall_time(), step, bytes_field(5, table.concat(vals))))
end

-- add_scalar(tag, value, step, wall_time): PyTorch's name, one tag
function SummaryWriter:add_scalar(tag, value, step, wtime)
  if type(tag) ~= "string" or tag == "" then
    error(moe._where(("add_scalar: tag must be a non-empty string, got %s"):format(show(tag))), 0)
  end
  if type(value) ~= "number" then
    error(moe._where(("add_scalar: value must be a number, got %s"):format(show(value))), 0)
  end
  check_step(self, step, "add_scalar")
  self:write_scalars({ [tag] = value }, step, wtime)
end

function SummaryWriter:flush() if self.file then self.file:flush() end end

function SummaryWriter:close()
  if self.file then self.file:close(); self.file = nil end
end

return tb
