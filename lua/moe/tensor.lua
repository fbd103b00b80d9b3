-- Tensor printing in the style of Torch7: the values, then a footer line
--   [moe.Tensor float32 of size 2x3]
-- Tensors with more than `threshold` elements show `edgeitems` entries at each
-- end of every dim, with "..." in between.
local M = {}
local opts = { threshold = 1000, edgeitems = 3, precision = 4, linewidth = 80 }

function M.set_printoptions(o)
  for k, v in pairs(o) do
    if opts[k] == nil then error("set_printoptions: unknown option '" .. tostring(k) .. "'", 2) end
    opts[k] = v
  end
end

local function size_str(shape)
  if #shape == 0 then return "[]" end
  return table.concat(shape, "x")
end

-- format every shown value with one shared width
local function formatter(values, dtype)
  local floatish = dtype == "float32" or dtype == "float64"
  if dtype == "bool" then
    return function(v) return v and " true" or "false" end, 5
  end
  local allint, maxabs = true, 0
  for _, v in ipairs(values) do
    if v == v and v ~= math.huge and v ~= -math.huge then
      if v ~= math.floor(v) then allint = false end
      if math.abs(v) > maxabs then maxabs = math.abs(v) end
    end
  end
  local fmt
  if not floatish or (allint and maxabs < 1e9) then
    fmt = floatish and "%.0f" or "%d"
  elseif maxabs >= 1e6 or (maxabs < 1e-3 and maxabs > 0) then
    fmt = "%." .. opts.precision .. "e"
  else
    fmt = "%." .. opts.precision .. "f"
  end
  local function f(v)
    if v ~= v then return "nan" end
    if v == math.huge then return "inf" end
    if v == -math.huge then return "-inf" end
    return fmt:format(v)
  end
  local w = 0
  for _, v in ipairs(values) do w = math.max(w, #f(v)) end
  return f, w
end

-- positions shown along a dim of size n
local function shown(n, summarize)
  local e = opts.edgeitems
  if not summarize or n <= 2 * e then
    local r = {}
    for i = 1, n do r[#r + 1] = i end
    return r, false
  end
  local r = {}
  for i = 1, e do r[#r + 1] = i end
  for i = n - e + 1, n do r[#r + 1] = i end
  return r, true
end

-- the values of a small tensor piece (rows of a matrix, or a vector) as a flat table
local function collect(t, summarize, out)
  local d = t:dim()
  if d == 0 then out[#out + 1] = t:item(); return end
  local idx = shown(t:size(1), summarize)
  for _, i in ipairs(idx) do
    if d == 1 then out[#out + 1] = t[i] else collect(t:select(1, i), summarize, out) end
  end
end

local function matrix_lines(m, f, w, summarize, lines)
  local rows, rcut = shown(m:size(1), summarize)
  for ri, r in ipairs(rows) do
    if rcut and ri == opts.edgeitems + 1 then lines[#lines + 1] = " ..." end
    local row = m:select(1, r)
    local cols, ccut = shown(row:size(1), summarize)
    local parts = {}
    for ci, c in ipairs(cols) do
      if ccut and ci == opts.edgeitems + 1 then parts[#parts + 1] = "..." end
      local s = f(row[c])
      parts[#parts + 1] = (" "):rep(w - #s) .. s
    end
    lines[#lines + 1] = " " .. table.concat(parts, " ")
  end
end

-- (i,j,.,.) = blocks for tensors of 3 or more dims
local function blocks(t, prefix, f, w, summarize, lines)
  if t:dim() == 2 then
    lines[#lines + 1] = "(" .. table.concat(prefix, ",") .. ",.,.) = "
    matrix_lines(t, f, w, summarize, lines)
    lines[#lines + 1] = ""
    return
  end
  local idx, cut = shown(t:size(1), summarize)
  for k, i in ipairs(idx) do
    if cut and k == opts.edgeitems + 1 then lines[#lines + 1] = " ...\n" end
    prefix[#prefix + 1] = i
    blocks(t:select(1, i), prefix, f, w, summarize, lines)
    prefix[#prefix] = nil
  end
end

function M.tostring(t)
  if t:device() ~= "cpu" then -- printed from a host copy, and said so
    local s = M.tostring(t:detach():cpu())
    return (s:gsub("%]$", " on " .. t:device() .. "]"))
  end
  local shape, dtype = t:shape(), t:dtype()
  local footer = ("[moe.Tensor %s of size %s]"):format(dtype, size_str(shape))
  local n = t:numel()
  if n == 0 then return "[moe.Tensor " .. dtype .. " with no elements, size " .. size_str(shape) .. "]" end
  local summarize = n > opts.threshold
  local values = {}
  collect(t, summarize, values)
  local f, w = formatter(values, dtype)
  local lines = {}
  local d = #shape
  if d == 0 then
    lines[1] = f(t:item())
  elseif d == 1 then
    local idx, cut = shown(shape[1], summarize)
    for k, i in ipairs(idx) do
      if cut and k == opts.edgeitems + 1 then lines[#lines + 1] = " ..." end
      local s = f(t[i])
      lines[#lines + 1] = " " .. (" "):rep(w - #s) .. s
    end
  elseif d == 2 then
    matrix_lines(t, f, w, summarize, lines)
  else
    blocks(t, {}, f, w, summarize, lines)
  end
  lines[#lines + 1] = footer
  return table.concat(lines, "\n")
end

return M
