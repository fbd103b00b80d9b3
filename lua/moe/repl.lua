-- REPL helpers: how results are shown, and tab completion.
local M = {}

local function is_ident(s) return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil end

-- a short, readable rendering of Lua values; tensors use their own tostring
local function render(v, depth, seen)
  local ty = type(v)
  if ty == "string" then return ("%q"):format(v) end
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

function M.show(...)
  local n = select("#", ...)
  local out = {}
  for i = 1, n do out[i] = render((select(i, ...)), 0, {}) end
  io.write(table.concat(out, "\t"), "\n")
end

-- candidates for `text` ("moe.ze", "t:su", "pri"): walk the dotted path from the
-- globals, then list fields (after '.') or methods (after ':') with the prefix
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
  local names, seen = {}, {}
  local function add_from(tbl)
    if type(tbl) ~= "table" then return end
    for k, v in pairs(tbl) do
      if is_ident(k) and not seen[k] and k:sub(1, #prefix) == prefix and
         (sep ~= ":" or type(v) == "function") then
        seen[k] = true
        names[#names + 1] = head .. k
      end
    end
  end
  if type(obj) == "table" then add_from(obj) end
  -- fields reachable through __index tables (tensor methods, classes)
  local mt = getmetatable(obj)
  local guard = 0
  while mt and guard < 8 do
    local idx = rawget(mt, "__index")
    if type(idx) == "table" then add_from(idx); mt = getmetatable(idx)
    elseif type(idx) == "function" and type(obj) == "userdata" then
      add_from(require("moe.core").Tensor); break
    else break end
    guard = guard + 1
  end
  table.sort(names)
  return names
end

return M
