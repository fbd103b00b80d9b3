-- REPL helpers: how results are shown, tab completion, and the layer tree
-- that tostring(model) prints.
local M = {}

local function is_ident(s) return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil end

-- the documentation registry, if it loads (the REPL shows raw values without it)
local function docs()
  local ok, d = pcall(require, "moe.doc")
  return ok and d or nil
end

-- a documented function, class or module as a line: what it is and where its help is
local function documented(v)
  local d = docs()
  if not d then return nil end
  local ok, name = pcall(d.name_of, v)
  if not ok or not name then return nil end
  local e = d.entries[name]
  if not e then return nil end
  if type(v) == "function" then return "function " .. d.title(e) end
  local kind = d.kind_of(e)
  if kind == "class" then
    local okr, s = pcall(d.class_repr, v)
    if okr then return s end
  end
  local b = e.summary and d.brief(e, 70)
  if b and b:sub(-3) ~= "..." then b = b:gsub("%.$", "") end
  local summary = b and (": " .. b) or ""
  local shown = name == "moe" and "moe" or ("moe." .. name)
  return ("<%s %s%s> help(%s) for more"):format(kind, shown, summary, shown)
end

-- a loaded module's table (moe, moe.nn, ...)
local function is_module_table(v)
  for _, m in pairs(package.loaded) do if m == v then return true end end
  return false
end

-- a short, readable rendering of Lua values; tensors use their own tostring
local function render(v, depth, seen)
  local ty = type(v)
  if ty == "string" then return ("%q"):format(v) end
  if ty == "function" or (ty == "table" and depth == 0 and (getmetatable(v) ~= nil or is_module_table(v))) then
    local line = documented(v)
    if line then return line end
  end
  if ty ~= "table" then return tostring(v) end
  local mt = getmetatable(v)
  if mt and mt.__tostring then return tostring(v) end
  if seen[v] or depth > 2 then return tostring(v) end
  seen[v] = true
  local parts, n = {}, #v
  for i = 1, n do
    parts[#parts + 1] = render(v[i], depth + 1, seen)
    if #parts > 20 then parts[#parts + 1] = "..."; break end
  end
  local keys = {}
  for k in pairs(v) do
    if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for i, k in ipairs(keys) do
    if i > 20 then parts[#parts + 1] = "..."; break end
    local ks = is_ident(k) and k or "[" .. render(k, depth + 1, seen) .. "]"
    parts[#parts + 1] = ks .. " = " .. render(v[k], depth + 1, seen)
  end
  seen[v] = nil
  return "{" .. table.concat(parts, ", ") .. "}"
end
M.render = function(v) return render(v, 0, {}) end

-- the values of an expression, one per line (x:topk(2) shows the values,
-- then the indices)
function M.show(...)
  local n = select("#", ...)
  local out = {}
  for i = 1, n do out[i] = render((select(i, ...)), 0, {}) end
  io.write(table.concat(out, "\n"), "\n")
end

-- ------------------------------------------------------------------ completion

-- fields a tensor has besides its methods (served by the C __index)
local TENSOR_FIELDS = { "grad", "requires_grad", "grad_fn", "is_leaf" }

-- candidates for `text` ("moe.ze", "t:su", "pri"): walk the dotted path from the
-- globals, then list fields (after '.') or methods (after ':') with the prefix.
-- Names starting with "_" show only when the prefix does; moe's submodules
-- that load on first use (nn, optim, data, Model, ...) show before they load.
function M.complete(text)
  local path, sep, prefix = text:match("^(.-)([%.:])([%w_]*)$")
  local obj, head
  if not path then
    obj, head, prefix = _G, "", text
  else
    obj = _G
    for name in path:gmatch("[^%.]+") do
      if type(obj) ~= "table" and type(obj) ~= "userdata" then return {} end
      local ok, v = pcall(function() return obj[name] end)
      if not ok or v == nil then return {} end
      obj = v
    end
    head = path .. sep
  end
  local hidden_ok = prefix:sub(1, 1) == "_"
  local names, seen = {}, {}
  local function add(k, v)
    if is_ident(k) and not seen[k] and k:sub(1, #prefix) == prefix and (hidden_ok or k:sub(1, 1) ~= "_")
       and (sep ~= ":" or type(v) == "function") then
      seen[k] = true
      names[#names + 1] = head .. k
    end
  end
  local function add_from(tbl)
    if type(tbl) ~= "table" then return end
    for k, v in pairs(tbl) do add(k, v) end
  end
  local core = package.loaded["moe.core"]
  if type(obj) == "table" then add_from(obj) end
  local moe = package.loaded["moe"]
  if moe and obj == moe and moe._lazy_names then
    if sep ~= ":" then for _, k in ipairs(moe._lazy_names()) do add(k, true) end end
  end
  if type(obj) == "userdata" and core and core.is_tensor(obj) then
    add_from(core.Tensor)
    if sep == "." then for _, k in ipairs(TENSOR_FIELDS) do add(k, true) end end
  end
  -- fields reachable through __index tables (module methods through the class chain)
  local mt = getmetatable(obj)
  local guard = 0
  while type(mt) == "table" and guard < 10 do
    local idx = rawget(mt, "__index")
    if type(idx) == "table" then
      add_from(idx)
      mt = getmetatable(idx)
    else
      break
    end
    guard = guard + 1
  end
  table.sort(names)
  return names
end

-- ------------------------------------------------------------------ the layer tree

local function commas(n)
  local s = tostring(math.floor(n))
  repeat
    local r, k = s:gsub("^(-?%d+)(%d%d%d)", "%1,%2")
    s = r
  until k == 0
  return s
end

-- one module's line: Class "name"{options} -> shape, params
local function line_of(m, key, top)
  local nn = require "moe.nn"
  local d = docs()
  local cfg = ""
  if d then
    local ok, s = pcall(d.layer_config_str, m)
    if ok then cfg = s end
  end
  local named = (top or key ~= m.name) and (" \"" .. tostring(m.name) .. "\"") or ""
  local s = (key and not top) and ("(" .. tostring(key) .. "): ") or ""
  s = s .. m.class_name .. named .. (named ~= "" and cfg ~= "" and " " or "") .. cfg
  local shape = m:output_shape()
  if shape ~= nil then s = s .. " -> " .. nn.out_shape_str(shape) end
  local total, trainable = m:_count_params()
  if not m.built and total == 0 and #m:children() == 0 and m:_needs_build() then
    s = s .. " (not built)"
  else
    s = s .. ", " .. commas(total) .. (total == 1 and " param" or " params")
    if total > trainable then s = s .. (" (%s non-trainable)"):format(commas(total - trainable)) end
  end
  return s
end

-- tostring(model): the tree of layers with their options (those not at their
-- defaults), output shapes and parameter counts, as PyTorch's module repr
function M.module_tree(m)
  local out = {}
  local seen = {}
  local function walk(mod, key, indent, top)
    local first = indent .. line_of(mod, key, top)
    if seen[mod] then
      out[#out + 1] = indent .. ("(%s): %s \"%s\" (shared, above)"):format(tostring(key), mod.class_name, tostring(mod.name))
      return
    end
    seen[mod] = true
    local kids = rawget(mod, "_children") or {}
    if #kids == 0 then out[#out + 1] = first; return end
    out[#out + 1] = first .. " ("
    for _, k in ipairs(kids) do walk(rawget(mod, k), k, indent .. "  ", false) end
    out[#out + 1] = indent .. ")"
  end
  local ok, err = pcall(walk, m, nil, "", true)
  if not ok then return ("%s \"%s\" (%s)"):format(tostring(m.class_name), tostring(m.name), tostring(err)) end
  return table.concat(out, "\n")
end

return M
