-- moe.data: tabular data in a few lines.
--
--   local f = moe.data.read_csv("data/census-income.test.gz", { header = false, columns = names })
--   local s = moe.data.split(f:nrows(), { train = 0.5, val = 0.25, test = 0.25, seed = 1 })
--   local enc = moe.data.FeatureEncoder { categorical = { "education" }, numeric = { "age" } }
--   enc:fit(f:take(s.train))
--   local x = enc:transform(f:take(s.test))        -- float32 [n, d]
--   for idx in moe.data.batches(x:size(1), 32, { seed = 1 }) do ... x:index_select(1, idx) ... end
--
-- Reading is done in C (src/data/csv.c): plain or gzip files, trimmed fields,
-- quotes, numeric columns detected (or fixed with dtypes), categorical ones
-- stored as codes into their levels. Malformed rows are errors that name the
-- line and column.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core

local data = {}

-- ------------------------------------------------------------------ seeded shuffles

-- A small generator of its own (xorshift64*), so that splits and shuffles are
-- reproducible from their seed without touching moe's global generator.
local ffi = require "ffi"
-- the generator's starting state for seed (0 becomes 1 where it is used)
local function seed_state(seed)
  return ffi.new("uint64_t[1]", (tonumber(seed) or 1) * 2654435761 + 0x9E3779B97F4A7C15ULL)
end
local function raw(seed)
  local s = seed_state(seed)
  if s[0] == 0 then s[0] = 1 end
  return function() -- 53 random bits
    local x = s[0]
    x = bit.bxor(x, bit.rshift(x, 12))
    x = bit.bxor(x, bit.lshift(x, 25))
    x = bit.bxor(x, bit.rshift(x, 27))
    s[0] = x
    return bit.rshift(x * 2685821657736338717ULL, 11)
  end
end
-- the generator's starting state for seed, as two 32-bit halves (for C's copy
-- of the permutation below)
local function seed_halves(seed)
  local s = seed_state(seed)
  return tonumber(bit.rshift(s[0], 32)), tonumber(bit.band(s[0], 0xffffffffULL))
end

local function rng(seed)
  local r = raw(seed)
  return function(n) return tonumber(r() % n) + 1 end -- uniform integer in 1..n
end
-- uniform(seed): a function drawing numbers uniform in (0, 1)
function data.uniform(seed)
  local r = raw(seed)
  return function() return (tonumber(r()) + 0.5) * 2 ^ -53 end
end

-- 1..n in an order drawn from seed (Fisher-Yates); core.shuffled_range makes
-- the same order as an int64 tensor
function data.permutation(n, seed)
  local p, draw = {}, rng(seed)
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = draw(i)
    p[i], p[j] = p[j], p[i]
  end
  return p
end

local function check_count(where, n)
  if type(n) ~= "number" or n < 0 or n ~= math.floor(n) then
    error(("%s: expected a row count (a non-negative integer), got %s"):format(where, moe._show(n)), 3)
  end
end

-- split(n, {train=0.5, val=0.25, test=0.25, seed=1}) -> {train={...}, val={...}, test={...}}:
-- lists of 1-based row indices of a seeded permutation. Any part names work; the
-- fractions must be in (0, 1] and add up to at most 1 (the last part listed in
-- the canonical order train, val, test, then the others by name, takes the rest
-- when they add up to 1).
function data.split(n, opts)
  check_count("split", n)
  opts = opts or { train = 0.5, val = 0.25, test = 0.25 }
  local names, total = {}, 0
  local rank = { train = 1, val = 2, validation = 2, test = 3 }
  for k, v in pairs(opts) do
    if k ~= "seed" then
      if type(v) ~= "number" or v <= 0 or v > 1 then
        error(("split: fraction '%s' must be a number in (0, 1], got %s"):format(tostring(k), moe._show(v)), 2)
      end
      names[#names + 1] = k
      total = total + v
    end
  end
  if #names == 0 then error("split: give at least one fraction, e.g. {train = 0.8, test = 0.2}", 2) end
  if total > 1 + 1e-9 then error(("split: fractions add up to %g, more than 1"):format(total), 2) end
  table.sort(names, function(a, b)
    local ra, rb = rank[a] or 4, rank[b] or 4
    if ra ~= rb then return ra < rb end
    return tostring(a) < tostring(b)
  end)
  local perm = data.permutation(n, opts.seed or 1)
  local out, pos = {}, 0
  for i, k in ipairs(names) do
    local cnt = math.floor(opts[k] * n + 1e-9)
    if i == #names and math.abs(total - 1) < 1e-9 then cnt = n - pos end
    local part = {}
    for j = 1, cnt do part[j] = perm[pos + j] end
    pos = pos + cnt
    out[k] = part
  end
  return out
end

-- batches(n, batch_size, {shuffle=true, seed=1, drop_last=false}): an iterator of
-- (int64 tensor of 1-based row indices, batch number); reshuffled on every call
-- of batches, with a seed that advances each time unless given
local auto_seed = 0
function data.batches(n, batch_size, opts)
  check_count("batches", n)
  if type(batch_size) ~= "number" or batch_size < 1 or batch_size ~= math.floor(batch_size) then
    error(("batches: batch_size must be a positive integer, got %s"):format(moe._show(batch_size)), 2)
  end
  opts = opts or {}
  local order
  if opts.shuffle == false then
    order = moe.arange(1, n + 1)
  else
    auto_seed = auto_seed + 1
    order = core.shuffled_range(n, seed_halves(opts.seed or auto_seed)) -- data.permutation's order, made in C
    if moe.get_default_device() ~= "cpu" then order = order:to(moe.get_default_device()) end -- as moe.arange's
  end
  local i, b = 0, 0
  return function()
    if i >= n then return nil end
    local len = math.min(batch_size, n - i)
    if len < batch_size and opts.drop_last then return nil end
    local idx = order:narrow(1, i + 1, len)
    i = i + len
    b = b + 1
    return idx, b
  end
end

-- distributed_batches(n, batch_size, {rank, world_size, shuffle=true, seed,
-- drop_last=false}): this rank's batches of one epoch, with the semantics of
-- PyTorch's DistributedSampler: every rank draws the same order of the rows
-- 1..n (the same seed: give one, or every rank must make the same calls, as
-- fit{} does by sending rank 0's); the order is padded by repeating its first
-- rows up to a multiple of world_size (drop_last: cut down to one instead); rank
-- r (0-based) takes positions r+1, r+1+W, r+1+2W, ...; those are cut into
-- batches of batch_size, the last one smaller, the same number on every rank.
-- So batch k of all ranks together holds the rows of batch k of one process
-- with batch_size*W (when W divides n).
function data.distributed_batches(n, batch_size, opts)
  check_count("distributed_batches", n)
  opts = opts or {}
  local W, r = opts.world_size, opts.rank
  if type(W) ~= "number" or W < 1 or W ~= math.floor(W) then
    error(("distributed_batches: world_size must be a positive integer, got %s"):format(moe._show(W)), 2)
  end
  if type(r) ~= "number" or r < 0 or r >= W or r ~= math.floor(r) then
    error(("distributed_batches: rank must be an integer in 0..%d, got %s"):format(W - 1, moe._show(r)), 2)
  end
  if type(batch_size) ~= "number" or batch_size < 1 or batch_size ~= math.floor(batch_size) then
    error(("distributed_batches: batch_size must be a positive integer, got %s"):format(moe._show(batch_size)), 2)
  end
  local per = opts.drop_last and math.floor(n / W) or math.ceil(n / W) -- rows per rank
  if per == 0 then
    error(("distributed_batches: %d rows cannot give each of %d ranks a row with drop_last"):format(n, W), 2)
  end
  local order
  if opts.shuffle == false then order = moe.arange(1, n + 1)
  else
    auto_seed = auto_seed + 1
    order = core.shuffled_range(n, seed_halves(opts.seed or auto_seed))
  end
  -- this rank's positions r+1, r+1+W, ... of the order (wrapping past n: the padding)
  local pos = moe.arange(0, per, { dtype = "int64" }) * W + r
  if per * W > n then pos = pos - pos:ge(n):to("int64") * n end -- (only one wrap: per*W - n < W <= n)
  local mine = order:index_select(1, pos + 1)
  if moe.get_default_device() ~= "cpu" then mine = mine:to(moe.get_default_device()) end
  local i, b = 0, 0
  return function()
    if i >= per then return nil end
    local len = math.min(batch_size, per - i)
    local idx = mine:narrow(1, i + 1, len)
    i = i + len
    b = b + 1
    return idx, b
  end, per
end

-- ------------------------------------------------------------------ frames

local Frame = {}
Frame.__index = Frame
data.Frame = Frame

local function new_frame(names, cols, n)
  local f = setmetatable({ columns = names, _cols = cols, _n = n }, Frame)
  return f
end

function Frame:nrows() return self._n end
function Frame:ncols() return #self.columns end

local function col_of(self, name, where)
  local c = self._cols[name]
  if not c then
    error(("frame:%s: no column '%s' (columns: %s)"):format(where, tostring(name), table.concat(self.columns, ", ")), 3)
  end
  return c
end

function Frame:has(name) return self._cols[name] ~= nil end
function Frame:is_numeric(name) return col_of(self, name, "is_numeric").values ~= nil end
-- the levels of a categorical column (strings, in order of first appearance)
function Frame:levels(name)
  local c = col_of(self, name, "levels")
  if not c.codes then error(("frame:levels: column '%s' is numeric"):format(name), 2) end
  return c.levels
end
-- numeric column as a float64 tensor (NaN where missing)
function Frame:values(name)
  local c = col_of(self, name, "values")
  if not c.values then error(("frame:values: column '%s' is categorical (use frame:codes)"):format(name), 2) end
  return c.values
end
-- categorical column as an int32 tensor of 1-based codes into frame:levels(name), 0 where missing
function Frame:codes(name)
  local c = col_of(self, name, "codes")
  if not c.codes then error(("frame:codes: column '%s' is numeric (use frame:values)"):format(name), 2) end
  return c.codes
end

-- the column as a Lua list: numbers (NaN where missing) or strings (false where missing)
function Frame:column(name)
  local c = col_of(self, name, "column")
  if c.values then return c.values:totable() end
  local codes, levels, out = c.codes:totable(), c.levels, {}
  for i = 1, #codes do out[i] = codes[i] > 0 and levels[codes[i]] or false end
  return out
end

local function as_index(where, idx, n)
  if moe.is_tensor(idx) then
    if idx:dim() ~= 1 then error(("frame:%s: indices must be 1-D, got [%s]"):format(where, table.concat(idx:shape(), ",")), 3) end
    idx = idx:to("int64")
  elseif type(idx) == "table" then
    idx = moe.tensor(#idx > 0 and idx or {}, { dtype = "int64" })
  else
    error(("frame:%s: expected a list or tensor of 1-based row indices, got %s"):format(where, moe._show(idx)), 3)
  end
  if idx:numel() > 0 then
    local lo, hi = idx:min():item(), idx:max():item()
    if lo < 1 or hi > n then
      error(("frame:%s: row index %d out of range 1..%d"):format(where, lo < 1 and lo or hi, n), 3)
    end
  end
  return idx
end

-- a new frame of the given rows (a list or int64 tensor of 1-based indices), in that order
function Frame:take(indices)
  local idx = as_index("take", indices, self._n)
  local cols = {}
  for _, name in ipairs(self.columns) do
    local c = self._cols[name]
    if c.values then cols[name] = { values = c.values:index_select(1, idx) }
    else cols[name] = { codes = c.codes:index_select(1, idx), levels = c.levels } end
  end
  return new_frame(self.columns, cols, idx:numel())
end

-- a new frame with only these columns (in this order), or without them (drop)
function Frame:select(names)
  local cols, list = {}, {}
  for i, n in ipairs(names) do list[i] = n; cols[n] = col_of(self, n, "select") end
  return new_frame(list, cols, self._n)
end
function Frame:drop(names)
  local gone, list, cols = {}, {}, {}
  for _, n in ipairs(names) do col_of(self, n, "drop"); gone[n] = true end
  for _, n in ipairs(self.columns) do
    if not gone[n] then list[#list + 1] = n; cols[n] = self._cols[n] end
  end
  return new_frame(list, cols, self._n)
end

function Frame:__tostring()
  local kinds = {}
  for i, n in ipairs(self.columns) do
    kinds[i] = n .. (self._cols[n].values and ":num" or (":cat" .. #self._cols[n].levels))
    if i >= 12 and #self.columns > 13 then kinds[#kinds + 1] = ("... (%d more)"):format(#self.columns - i); break end
  end
  return ("moe.data.Frame %d rows x %d columns: %s"):format(self._n, #self.columns, table.concat(kinds, " "))
end

local KINDS = { numeric = true, number = true, float = true, float64 = true, float32 = true,
                categorical = false, category = false, string = false }

-- the fields pandas.read_csv reads as missing by default
data.DEFAULT_NA_VALUES = { "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
  "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null" }

-- read_csv(path, {header=true, columns=names, sep=",", skip=0, na_values={...}, keep_default_na=true,
--                 dtypes={name=kind}})
function data.read_csv(path, opts)
  if type(path) ~= "string" then error(("read_csv: path must be a string, got %s"):format(moe._show(path)), 2) end
  opts = opts or {}
  local header = opts.header ~= false
  if opts.columns ~= nil and type(opts.columns) ~= "table" then
    error(("read_csv: columns must be a list of names, got %s"):format(moe._show(opts.columns)), 2)
  end
  if header and opts.columns then
    error("read_csv: columns names the columns of a file without a header: pass header = false", 2)
  end
  local user_na = opts.na_values or {}
  if type(user_na) == "string" then user_na = { user_na } end
  if type(user_na) ~= "table" then error(("read_csv: na_values must be a string or a list of strings, got %s"):format(moe._show(user_na)), 2) end
  -- pandas's default missing-value spellings, unless keep_default_na = false; "" is always missing
  local na = {}
  if opts.keep_default_na ~= false then for i, v in ipairs(data.DEFAULT_NA_VALUES) do na[i] = v end end
  for _, v in ipairs(user_na) do
    if type(v) ~= "string" then error(("read_csv: na_values must be strings, got %s"):format(moe._show(v)), 2) end
    na[#na + 1] = v
  end
  local tnames, tflags = {}, {}
  for name, kind in pairs(opts.dtypes or {}) do
    local k = KINDS[kind]
    if k == nil then
      error(("read_csv: dtypes.%s must be 'numeric' or 'categorical', got %s"):format(tostring(name), moe._show(kind)), 2)
    end
    tnames[#tnames + 1] = tostring(name)
    tflags[#tflags + 1] = k
  end
  local n, raw = core.read_csv(path, header, opts.sep or ",", opts.skip or 0, opts.columns, na, tnames, tflags)
  local names, cols, seen = {}, {}, {}
  for i, c in ipairs(raw) do
    names[i] = c.name
    seen[c.name] = true
    cols[c.name] = c.values and { values = c.values } or { codes = c.codes, levels = c.levels }
  end
  for _, t in ipairs(tnames) do
    if not seen[t] then error(("read_csv: dtypes names a column '%s' that %s does not have"):format(t, path), 2) end
  end
  return new_frame(names, cols, n)
end

-- ------------------------------------------------------------------ FeatureEncoder

-- FeatureEncoder{categorical = {...}, numeric = {...}}: fitted on training rows,
-- applied to any: numerics standardised with the training mean and (population)
-- standard deviation, missing values at the mean; categoricals one-hot over the
-- training rows' levels (sorted), an unseen or missing value all zeros. Columns
-- never shift between splits. transform gives float32 [n, #numeric + levels].
local FeatureEncoder = {}
FeatureEncoder.__index = FeatureEncoder
data.FeatureEncoder = FeatureEncoder

setmetatable(FeatureEncoder, { __call = function(_, opts)
  opts = opts or {}
  local self = setmetatable({ categorical = opts.categorical or {}, numeric = opts.numeric or {} }, FeatureEncoder)
  for _, key in ipairs { "categorical", "numeric" } do
    if type(self[key]) ~= "table" then error(("FeatureEncoder: %s must be a list of column names, got %s"):format(key, moe._show(self[key])), 2) end
  end
  if #self.categorical + #self.numeric == 0 then
    error("FeatureEncoder: give categorical and/or numeric column names", 2)
  end
  return self
end })

function FeatureEncoder:fit(frame)
  if getmetatable(frame) ~= Frame then error(("FeatureEncoder:fit: expected a moe.data.Frame, got %s"):format(moe._show(frame)), 2) end
  self.stats, self.vocab = {}, {}
  for _, name in ipairs(self.numeric) do
    if not frame:has(name) then error(("FeatureEncoder:fit: no column '%s'"):format(name), 2) end
    if not frame:is_numeric(name) then
      error(("FeatureEncoder:fit: column '%s' is categorical; list it under categorical"):format(name), 2)
    end
    local v = frame:values(name)
    local ok = v:eq(v)                                  -- not NaN
    local cnt = ok:sum():item()
    local vz = moe.where(ok, v, moe.zeros_like(v))
    local mean = cnt > 0 and vz:sum():item() / cnt or 0
    local var = cnt > 0 and (moe.where(ok, v - mean, moe.zeros_like(v)):square():sum():item() / cnt) or 0
    local std = math.sqrt(var)
    self.stats[name] = { mean = mean, std = std > 0 and std or 1 }
  end
  for _, name in ipairs(self.categorical) do
    if not frame:has(name) then error(("FeatureEncoder:fit: no column '%s'"):format(name), 2) end
    if frame:is_numeric(name) then
      -- numbers used as categories (codes): their distinct values become the levels
      local vals, set, lv = frame:values(name):totable(), {}, {}
      for _, x in ipairs(vals) do if x == x and not set[x] then set[x] = true; lv[#lv + 1] = x end end
      table.sort(lv)
      for i, x in ipairs(lv) do lv[i] = tostring(x) end
      self.vocab[name] = lv
    else
      -- levels the fitting rows use (a frame from take() keeps its parent's levels)
      local L = #frame:levels(name)
      local used = (frame:codes(name):to("int64") + 1):bincount({ minlength = L + 1 }):totable()
      local lv = {}
      for i, l in ipairs(frame:levels(name)) do if (used[i + 1] or 0) > 0 then lv[#lv + 1] = l end end
      table.sort(lv)
      self.vocab[name] = lv
    end
  end
  return self
end

function FeatureEncoder:feature_names()
  if not self.vocab then error("FeatureEncoder:feature_names: call fit first", 2) end
  local out = {}
  for _, name in ipairs(self.numeric) do out[#out + 1] = name end
  for _, name in ipairs(self.categorical) do
    for _, l in ipairs(self.vocab[name]) do out[#out + 1] = name .. "=" .. l end
  end
  return out
end

function FeatureEncoder:transform(frame)
  if not self.vocab then error("FeatureEncoder:transform: call fit first", 2) end
  if getmetatable(frame) ~= Frame then error(("FeatureEncoder:transform: expected a moe.data.Frame, got %s"):format(moe._show(frame)), 2) end
  local n = frame:nrows()
  local d = #self.numeric
  for _, name in ipairs(self.categorical) do d = d + #self.vocab[name] end
  local parts = {}
  for _, name in ipairs(self.numeric) do
    if not frame:has(name) then error(("FeatureEncoder:transform: no column '%s'"):format(name), 2) end
    local st, v = self.stats[name], frame:values(name)
    local z = (v - st.mean) / st.std
    parts[#parts + 1] = moe.where(v:eq(v), z, moe.zeros_like(z)):float():view(n, 1)
  end
  -- one flat buffer with a spare last element that takes unseen and missing
  -- categories; the result is a view of the rest (no copy)
  local flat = moe.zeros(n * d + 1)
  local x = flat:narrow(1, 1, n * d):view(n, d)
  if #parts > 0 then x:narrow(2, 1, #parts):copy_(moe.cat(parts, 2)) end
  local offset = #self.numeric
  local rows = moe.arange(0, n, { dtype = "int64" }) * d
  local spare = n * d + 1
  for _, name in ipairs(self.categorical) do
    if not frame:has(name) then error(("FeatureEncoder:transform: no column '%s'"):format(name), 2) end
    local vocab = self.vocab[name]
    local pos = {}
    for i, l in ipairs(vocab) do pos[l] = i end
    local codes, levels
    if frame:is_numeric(name) then
      -- a numeric column used as categories: map each distinct value through its string
      local vals = frame:values(name):totable()
      local lv, id, cl = {}, {}, {}
      for i, v in ipairs(vals) do
        if v ~= v then cl[i] = 0
        else
          local s = tostring(v)
          if not id[s] then lv[#lv + 1] = s; id[s] = #lv end
          cl[i] = id[s]
        end
      end
      codes, levels = moe.tensor(#cl > 0 and cl or {}, { dtype = "int64" }), lv
    else
      codes, levels = frame:codes(name):to("int64"), frame:levels(name)
    end
    -- column of each of this frame's levels in the output, 0 when unseen
    local map = { 0 }                              -- code 0: missing
    for i, l in ipairs(levels) do map[i + 1] = pos[l] and offset + pos[l] or 0 end
    local col = moe.tensor(map, { dtype = "int64" }):index_select(1, codes + 1)
    if n > 0 then
      local at = moe.where(col:gt(0), rows + col, moe.full({ n }, spare, { dtype = "int64" }))
      flat:index_add_(1, at, moe.ones(n))
    end
    offset = offset + #vocab
  end
  return x
end

function FeatureEncoder:fit_transform(frame) return self:fit(frame):transform(frame) end

return data
