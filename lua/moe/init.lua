-- moe: tensors and Mixture-of-Experts layers for LuaJIT.
--
-- Every op is both a function and a method: moe.sum(t, 2) == t:sum(2).
-- Dims and indices are 1-based (negative dims count from the end); sizes are
-- varargs or one table; creation functions take an options table last.
local core = require "moe.core"

-- The public table holds what users call: every tensor method (ops, views,
-- accessors) as a function too (moe.sum(t, 2) == t:sum(2)), and the module
-- functions below. Everything else the binding exports -- the trainer's, the
-- optimizers', the checkpoint reader's and moe.config()'s helpers -- stays in
-- moe.core only, and so does anything the binding gains until it is listed here.
local PUBLIC = {}
for _, name in ipairs { "tensor", "zeros", "ones", "full", "empty", "rand", "randn", "randint", "randperm", "arange",
                        "linspace", "eye", "manual_seed", "cat", "stack", "is_tensor", "set_grad_enabled",
                        "is_grad_enabled", "peak_bytes", "empty_cache", "linear", "mixture", "gate_scale",
                        "grouped_matmul", "set_deterministic", "get_deterministic", "set_num_threads",
                        "get_num_threads" } do
  PUBLIC[name] = true
end
local METHOD_ONLY = { has_grad = true, same_storage = true, storage_offset = true } -- t:has_grad(), not moe.has_grad
local moe = {}
for k, v in pairs(core) do
  if PUBLIC[k] or (rawget(core.Tensor, k) ~= nil and not METHOD_ONLY[k]) then moe[k] = v end
end
moe.cuda = nil -- moe.cuda is the device module (lua/moe/cuda.lua); t:cuda() stays a method
moe._VERSION = "0.1.0"
moe.core = core
local Tensor = core.Tensor      -- the methods table shared by every tensor
moe.Tensor = Tensor

-- now(): seconds on a monotonic clock (for timing loops)
do
  local ffi = require "ffi"
  pcall(ffi.cdef, "struct timespec { long tv_sec; long tv_nsec; }; int clock_gettime(int, struct timespec *);")
  local ts = ffi.new("struct timespec")
  function moe.now()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
  end
end

-- the library's error(msg, level): a string message is raised at the user's
-- line (moe._where, below), whatever the level -- a level counts frames, and the
-- frames between a check and the user vary (a layer call, fit's wrapper, a
-- helper); an error object (a table) passes as it is. Each library module
-- starts with `local error = moe._error`.
function moe._error(msg, level)
  if type(msg) ~= "string" then error(msg, 0) end
  error(moe._where(msg), 0)
end

-- show(v): a value as an error message shows it, with its type where the
-- printed form hides it: 32, "32" (a string), true (a boolean), nil, a table,
-- a float32 tensor of shape [2,3], a Dense layer "dense_1"
function moe._show(v)
  local t = type(v)
  if t == "number" or t == "nil" then return tostring(v) end
  if t == "string" then
    local s = #v > 40 and v:sub(1, 37) .. "..." or v
    return (("%q"):format(s):gsub("\\\n", "\\n")) .. " (a string)"
  end
  if t == "boolean" then return tostring(v) .. " (a boolean)" end
  if core.is_tensor(v) then
    return ("a %s tensor of shape [%s]%s"):format(v:dtype(), table.concat(v:shape(), ","),
      v:device() ~= "cpu" and (" on " .. v:device()) or "")
  end
  if t == "table" and rawget(v, "_params") ~= nil and type(v.class_name) == "string" then
    return ("a %s layer \"%s\""):format(v.class_name, tostring(v.name))
  end
  return "a " .. t
end

local error = moe._error

-- Lua-side ops ------------------------------------------------------------------

-- split(t, size_or_sizes, dim): views of `size` along dim (the last may be
-- smaller), or of the given list of sizes.
function moe.split(t, sizes, dim)
  dim = dim or 1
  local n = t:size(dim)
  local parts, start = {}, 1
  if type(sizes) == "number" then
    if sizes <= 0 or sizes ~= math.floor(sizes) then
      error(("split: split size must be a positive integer, got %s"):format(moe._show(sizes)), 2)
    end
    while start <= n do
      local len = math.min(sizes, n - start + 1)
      parts[#parts + 1] = t:narrow(dim, start, len)
      start = start + len
    end
  elseif type(sizes) == "table" then
    local total = 0
    for _, s in ipairs(sizes) do total = total + s end
    if total ~= n then
      error(("split: sizes add up to %d but dim %d has size %d"):format(total, dim, n), 2)
    end
    for _, s in ipairs(sizes) do
      parts[#parts + 1] = t:narrow(dim, start, s)
      start = start + s
    end
  else
    error("split: expected a split size or a table of sizes, got " .. moe._show(sizes), 2)
  end
  return parts
end

-- chunk(t, n, dim): n views of (nearly) equal size, as torch.chunk
function moe.chunk(t, n, dim)
  if type(n) ~= "number" or n < 1 or n ~= math.floor(n) then
    error(("chunk: number of chunks must be a positive integer, got %s"):format(moe._show(n)), 2)
  end
  dim = dim or 1
  local size = math.ceil(t:size(dim) / n)
  if size == 0 then return { t } end
  return moe.split(t, size, dim)
end

-- argsort(t, dim, descending): the indices of sort
function moe.argsort(t, dim, descending)
  local _, idx = t:sort(dim, descending)
  return idx
end

function moe.expand_as(t, other) return t:expand(other) end
function moe.view_as(t, other) return t:view(other:shape()) end
function moe.flatten(t) return t:reshape(-1) end
function moe.zero_(t) return t:fill_(0) end
function moe.is_same_size(a, b)
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then return false end
  for i = 1, #sa do if sa[i] ~= sb[i] then return false end end
  return true
end
function moe.float(t) return t:to("float32") end
function moe.double(t) return t:to("float64") end
function moe.int(t) return t:to("int32") end
function moe.long(t) return t:to("int64") end
function moe.bool(t) return t:to("bool") end
moe.type = moe.to

-- to(t, "cuda" | "cpu") moves between devices; to(t, dtype) converts, as before
do
  local to_dtype = core.to
  local function to(t, what, ...)
    if what == "cuda" then return core.cuda(t) end
    if what == "cpu" then return core.cpu(t) end
    return to_dtype(t, what, ...)
  end
  moe.to, Tensor.to = to, to
end

for _, name in ipairs { "split", "chunk", "argsort", "expand_as", "view_as", "flatten", "zero_",
                        "is_same_size", "float", "double", "int", "long", "bool", "type" } do
  Tensor[name] = moe[name]
end

-- The default device of creation functions (zeros, randn, tensor, ...):
-- moe.set_default_device("cuda") puts new tensors on the GPU (a `device`
-- option overrides it per call); ops put their results on the device of their
-- inputs whatever the default. rand/randn draw on the device itself, from the
-- same Philox counters as on the host.
do
  local default_device = "cpu"
  function moe.set_default_device(d)
    if d ~= "cpu" and d ~= "cuda" then
      error(("set_default_device: expected \"cpu\" or \"cuda\", got %s"):format(moe._show(d)), 2)
    end
    if d == "cuda" and core.cuda_info().device_count == 0 then
      error("set_default_device: no CUDA device is available (" .. tostring(core.cuda_info().reason) .. ")", 2)
    end
    default_device = d
    core.set_default_device(d)
  end
  function moe.get_default_device() return default_device end
end

-- *_like creation: same shape, device (and dtype unless opts.dtype says otherwise)
local function like_opts(t, opts)
  local o = { dtype = t:dtype(), device = t:device() }
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end
local function on_device_of(t, r)
  if r:device() ~= t:device() then return moe.to(r, t:device()) end
  return r
end
local function like(fn)
  return function(t, opts) return on_device_of(t, fn(t:shape(), like_opts(t, opts))) end
end
moe.zeros_like = like(moe.zeros)
moe.ones_like = like(moe.ones)
moe.empty_like = like(moe.empty)
moe.rand_like = like(moe.rand)
moe.randn_like = like(moe.randn)
function moe.full_like(t, value, opts) return on_device_of(t, moe.full(t:shape(), value, like_opts(t, opts))) end

-- autograd -----------------------------------------------------------------------

-- no_grad(fn, ...): run fn with gradient recording off (restored on return and on error)
function moe.no_grad(fn, ...)
  local prev = core.set_grad_enabled(false)
  local res = { pcall(fn, ...) }
  core.set_grad_enabled(prev)
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, table.maxn(res))
end

-- enable_grad(fn, ...): the reverse, inside a no_grad region
function moe.enable_grad(fn, ...)
  local prev = core.set_grad_enabled(true)
  local res = { pcall(fn, ...) }
  core.set_grad_enabled(prev)
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, table.maxn(res))
end

-- where(msg): msg located at the user's own code -- the first frame outside
-- this library -- in place of a library file's "file:line: " (errors that
-- reach the user through a layer call or a wrapper carry the user's line)
do
  local lib = debug.getinfo(1, "S").source:match("^@(.*/)[^/]+$")
  local function in_lib(src) return lib and src:sub(1, 1) == "@" and src:sub(2, #lib + 1) == lib end
  -- with fn ("fit"), the message also names the function the user called
  function moe._where(msg, fn)
    msg = tostring(msg)
    -- split off a "file:line: " prefix; one at the user's own line is kept
    local loc, body = msg:match("^([^\n]-:%d+: )(.*)$")
    if not loc then body = msg end
    if fn and body:sub(1, #fn + 1) ~= fn .. ":" then body = fn .. ": " .. body end
    if loc and not in_lib("@" .. loc:match("^(.-):%d+: $")) then return loc .. body end
    msg = body
    for level = 2, 50 do
      local info = debug.getinfo(level, "Sl")
      if not info then break end
      if info.currentline > 0 and not in_lib(info.source) then
        return ("%s:%d: %s"):format(info.short_src, info.currentline, msg)
      end
    end
    return msg
  end
end

-- the library's submodules load on first use: moe.nn, moe.optim, moe.losses, ...
local lazy = {
  nn = "moe.nn", optim = "moe.optim", losses = "moe.losses", testing = "moe.testing",
  initializers = "moe.initializers", regularizers = "moe.initializers",
  constraints = "moe.initializers", io = "moe.io", data = "moe.data",
  metrics = "moe.metrics", callbacks = "moe.callbacks", datasets = "moe.datasets", plot = "moe.plot",
  cuda = "moe.cuda", tensorboard = "moe.tensorboard", doc = "moe.doc", distributed = "moe.distributed",
  cli = "moe.cli", -- command-line options for scripts (the models' --help, usage errors, --plot paths)
}
local lazy_fields = {
  Sequential = { "moe.model", "Sequential" }, Model = { "moe.model", "Model" },
  Input = { "moe.model", "Input" }, load = { "moe.model", "load" },
  save_tensors = { "moe.io", "save_tensors" }, load_tensors = { "moe.io", "load_tensors" },
  help = { "moe.doc", "help" }, -- help(x): the entry of x in the documentation registry
}
-- The precision of the experts' GEMMs (the sparse MoeLayer's grouped GEMMs,
-- TabularMoELayer's and MMoE/OMoE's expert kernels), forward and backward:
-- "fp32" (the default) or "bf16" (float32 operands rounded to bfloat16, fp32
-- sums and outputs; fp32 master weights). Routers, gates, Dense layers and
-- towers stay fp32. The layers pass moe.get_precision() to each expert GEMM
-- (moe.linear, moe.matmul and moe.grouped_matmul take it as an optional last
-- argument); on CUDA tensors such a call runs cuBLAS's bf16 GEMM, while
-- moe.cuda.set_precision keeps governing every other GEMM there.
-- moe.config().bf16 says which CPU backend runs the bf16 GEMMs, and why.
do
  local precision = "fp32"
  function moe.set_precision(p)
    if p ~= "fp32" and p ~= "bf16" then
      error(("moe.set_precision: expected \"fp32\" or \"bf16\", got %s"):format(moe._show(p)), 2)
    end
    local old = precision
    precision = p
    return old
  end
  function moe.get_precision() return precision end
end

-- config(): what this process runs on -- the version, the BLAS and its kernel
-- set (and who chose it, and why), the CPU's features, the bf16 GEMMs'
-- backend (and why), the CUDA backend
function moe.config()
  local b = core.blas_info()
  local c = core.cuda_info()
  local h = core.bf16_info()
  local sg = core.sgemm_info()
  local cfg = { version = moe._VERSION, luajit = jit and jit.version or "?", blas = b, sgemm = sg,
    bf16 = h, precision = moe.get_precision(), cuda = { built = c.built, devices = c.device_count } }
  return setmetatable(cfg, { __tostring = function(t)
    return ("moelua %s (%s)\nBLAS: %s\nkernels: %s, chosen by %s (%s)\nsgemm: %s\nCPU: %s %s; best kernel set: %s\n" ..
      "bf16 GEMMs: %s%s (%s); expert precision now %s\nCUDA: %s"):format(
      t.version, t.luajit, b.library, b.kernels, b.chosen_by, b.reason, sg.description, b.cpu_vendor, b.cpu_features,
      b.cpu_best, h.backend, h.library ~= "none" and (" on " .. h.library) or "", h.reason, t.precision,
      t.cuda.built and (t.cuda.devices .. " device(s)") or "not built")
  end })
end

-- the names that load on first use (the lazy-loading spec touches each one first)
function moe._lazy_names()
  local out = {}
  for k in pairs(lazy) do out[#out + 1] = k end
  for k in pairs(lazy_fields) do out[#out + 1] = k end
  table.sort(out)
  return out
end
setmetatable(moe, { __index = function(t, k)
  local v
  if lazy[k] then
    v = require(lazy[k])
    if k == "initializers" or k == "regularizers" or k == "constraints" then v = v[k] end
  elseif lazy_fields[k] then
    v = require(lazy_fields[k][1])[lazy_fields[k][2]]
  else
    return nil
  end
  rawset(t, k, v)
  return v
end })

-- printing ---------------------------------------------------------------------
local printer = require "moe.tensor"
core.metatable.__tostring = printer.tostring
moe.set_printoptions = printer.set_printoptions

return moe
