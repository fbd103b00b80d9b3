-- moe.doc: the documentation registry, and what reads it: help(x) in the REPL
-- and in scripts (moe.help), `moelua doc NAME` and `make docs` (docs/api.md).
--
-- The entries live in lua/moe/doc_*.lua, one file per part of the library,
-- as sections of entries keyed by the name a user types without "moe."
-- ("randn", "nn.Dense", "nn.Module:fit", "Tensor:has_grad", "Tensor.grad").
-- A layer's options and defaults are read from the layer itself (the
-- defaults table its init gives Module:_options), so they cannot drift; the
-- entry only types and describes them. spec/docs_spec.lua walks the public
-- tables and fails on any name or layer option without an entry.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)

local doc = {}

local SOURCES = { "moe.doc_tensor", "moe.doc_nn", "moe.doc_train", "moe.doc_data" }

-- ------------------------------------------------------------------ the registry

local loaded
local sections, entries, internal = {}, {}, {}
doc.sections, doc.entries, doc.internal = sections, entries, internal

local function load()
  if loaded then return end
  loaded = true
  for _, src in ipairs(SOURCES) do
    local part = require(src)
    for _, sec in ipairs(part) do
      sections[#sections + 1] = sec
      for i, e in ipairs(sec.entries or {}) do
        local name = e.name or e[1]
        if type(name) ~= "string" then error(("%s: entry %d of section %s has no name"):format(src, i, sec.id), 0) end
        if entries[name] then error(("%s: '%s' is documented twice"):format(src, name), 0) end
        e.name, e.sig, e.summary = name, e.sig or e[2], e.summary or e[3]
        e.section = sec
        entries[name] = e
      end
    end
    for _, p in ipairs(part.internal or {}) do internal[#internal + 1] = p end
  end
end
doc.load = load

-- the entries in the order of the sections
function doc.ordered()
  load()
  local out = {}
  for _, sec in ipairs(sections) do
    for _, e in ipairs(sec.entries or {}) do out[#out + 1] = e end
  end
  return out
end

-- ------------------------------------------------------------------ names and values

-- values reachable by name that are not fields of the moe table
local ROOTS = {
  History = function() return require("moe.trainer").History end,
}

-- the library's submodules whose fields are public names
doc.MODULES = { "nn", "optim", "data", "datasets", "losses", "metrics", "callbacks", "plot", "cuda", "distributed",
  "io", "tensorboard", "cli", "initializers", "regularizers", "constraints", "testing", "doc" }
local is_module_name = {}
for _, m in ipairs(doc.MODULES) do is_module_name[m] = true end

-- the value a documented name stands for (nil for a field such as Tensor.grad)
function doc.resolve(name)
  if name == "moe" then return moe end
  local path, method = name:match("^(.-):([%w_]+)$")
  local base = path or name
  local first = base:match("^[^%.]+")
  local v
  if ROOTS[first] then v = ROOTS[first]() else v = moe[first] end
  for part in base:gmatch("%.([^%.]+)") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  if method then
    if type(v) ~= "table" and type(v) ~= "userdata" then return nil end
    return rawget(v, method) or (type(v) == "table" and v[method]) or nil
  end
  return v
end

local function is_class(v)
  if type(v) ~= "table" then return false end
  if rawget(v, "class_name") ~= nil or rawget(v, "metric_name") ~= nil then return true end
  local mt = getmetatable(v)
  return rawget(v, "__index") == v or (mt ~= nil and type(mt) == "table" and rawget(mt, "__call") ~= nil)
end
doc.is_class = is_class

-- every public name, with its value: the moe table's fields, each submodule's
-- fields, the methods of every class found there, a namespace entry's members
-- and the tensor methods
function doc.public_names()
  load()
  for _, k in ipairs(moe._lazy_names()) do local _ = moe[k] end
  local out, by_value = {}, {}
  local function add(name, v) out[#out + 1] = { name = name, value = v } end
  local function sorted_keys(t)
    local ks = {}
    for k in pairs(t) do if type(k) == "string" and k:sub(1, 1) ~= "_" then ks[#ks + 1] = k end end
    table.sort(ks)
    return ks
  end
  local classes = {}
  for _, k in ipairs(sorted_keys(moe)) do
    local v = rawget(moe, k)
    add(k, v)
    if is_class(v) then classes[#classes + 1] = { k, v } end
  end
  for _, m in ipairs(doc.MODULES) do
    local mod = moe[m]
    for _, k in ipairs(sorted_keys(mod)) do
      local v = rawget(mod, k)
      local name = m .. "." .. k
      add(name, v)
      if is_class(v) then classes[#classes + 1] = { name, v } end
      local e = entries[name]
      if e and e.namespace and type(v) == "table" then
        for _, k2 in ipairs(sorted_keys(v)) do
          local v2 = rawget(v, k2)
          add(name .. "." .. k2, v2)
          if is_class(v2) then classes[#classes + 1] = { name .. "." .. k2, v2 } end
        end
      end
    end
  end
  -- methods: each class once, under the name its entry has (else the first found)
  local canonical = {}
  for _, c in ipairs(classes) do
    local name, v = c[1], c[2]
    if entries[name] and not entries[name].alias_of then canonical[v] = canonical[v] or name end
  end
  for _, c in ipairs(classes) do
    local name, v = c[1], c[2]
    canonical[v] = canonical[v] or name
    if canonical[v] == name and not by_value[v] then
      by_value[v] = true
      for _, k in ipairs(sorted_keys(v)) do
        if type(rawget(v, k)) == "function" then add(name .. ":" .. k, rawget(v, k)) end
      end
    end
  end
  for _, k in ipairs(sorted_keys(moe.Tensor)) do add("Tensor:" .. k, rawget(moe.Tensor, k)) end
  return out
end

-- name -> entry name, for every alias an entry lists
local alias_index
local function aliases()
  if alias_index then return alias_index end
  load()
  alias_index = {}
  for name, e in pairs(entries) do
    for _, a in ipairs(e.aliases or {}) do alias_index[a] = name end
  end
  return alias_index
end

-- is this method documented on the class or on one of its ancestors (an
-- override of a documented method, Dense:forward of nn.Module:forward)?
local function inherited_doc(name, value_of_class)
  local cls_name, method = name:match("^(.-):([%w_]+)$")
  if not cls_name then return nil end
  local cls = value_of_class
  local guard = 0
  while type(cls) == "table" and guard < 10 do
    local mt = getmetatable(cls)
    local parent = mt and rawget(mt, "__index")
    if type(parent) ~= "table" then break end
    for ename in pairs(entries) do
      local cname, m = ename:match("^(.-):([%w_]+)$")
      if m == method and doc.resolve(cname) == parent then return ename end
    end
    cls = parent
    guard = guard + 1
  end
  return nil
end

local function is_internal(name)
  for _, p in ipairs(internal) do
    if name:match(p[1]) then return p[2] end
  end
end

-- the entry that documents a public name (through an alias, a tensor op's
-- function entry, an ancestor's method or an entry's `covers`), or nil
function doc.entry_for(name)
  load()
  if entries[name] then return entries[name] end
  local a = aliases()[name]
  if a then return entries[a] end
  local tm = name:match("^Tensor:([%w_]+)$")
  if tm and entries[tm] and rawget(moe, tm) == rawget(moe.Tensor, tm) then return entries[tm] end
  local cls_name, method = name:match("^(.-):([%w_]+)$")
  if cls_name then
    local owner = entries[cls_name] or entries[aliases()[cls_name] or ""]
    if owner and owner.covers then
      for _, c in ipairs(owner.covers) do if c == method then return owner end end
    end
    local inh = inherited_doc(name, doc.resolve(cls_name))
    if inh then return entries[inh] end
  end
  return nil
end

-- the public names that have no entry (and are not listed as internal)
function doc.undocumented()
  local missing = {}
  for _, p in ipairs(doc.public_names()) do
    if not doc.entry_for(p.name) and not is_internal(p.name) then missing[#missing + 1] = p.name end
  end
  return missing
end

-- entries whose name stands for nothing (a renamed or removed function)
function doc.stale()
  load()
  local out = {}
  for name, e in pairs(entries) do
    if not e.field and doc.resolve(name) == nil then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

-- ------------------------------------------------------------------ layer options

-- the options a layer class accepts and their defaults, read from the layer
-- itself: its init runs on a probe whose Module:_options records the
-- defaults table and stops there (nothing is built, no name counter moves).
-- -> { {name, default}, ... } sorted by name, or nil where the class does not
-- declare its options through _options (Sequential, Model, Lambda)
local option_cache = setmetatable({}, { __mode = "k" })
local STOP = setmetatable({}, { __tostring = function() return "moe.doc: options captured" end })

function doc.layer_options(cls)
  if option_cache[cls] ~= nil then return option_cache[cls] or nil end
  local nn = moe.nn
  load()
  local ename = doc.name_of(cls)
  local e = ename and entries[ename]
  local probe = { name = "__doc_probe" }
  if e and e.probe then for k, v in pairs(e.probe(nn)) do probe[k] = v end end
  local Module = nn.Module
  local orig = rawget(Module, "_options")
  local got
  Module._options = function(self, opts, defaults)
    if getmetatable(self) ~= cls then return orig(self, opts, defaults) end -- a sub-layer made first
    got = defaults
    error(STOP, 0)
  end
  local ok, err = pcall(cls, probe)
  Module._options = orig
  if not got then
    option_cache[cls] = false
    if not ok and err ~= STOP then return nil, tostring(err) end
    return nil
  end
  local list = {}
  for k, d in pairs(got) do list[#list + 1] = { k, d } end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  option_cache[cls] = list
  return list
end

-- the options every layer takes besides its own (Module:_options accepts them)
doc.COMMON_LAYER_OPTIONS = { "dtype", "input_shape", "name", "trainable" }

-- the options an "unknown option" error lists, for an entry whose
-- probe_options(moe) calls its function with an unknown option '__doc_probe'
local function probed_options(e)
  local ok, msg = pcall(e.probe_options, moe)
  local listed = not ok and tostring(msg):match("unknown option '__doc_probe' %(([^)]*)%)")
  if not listed then return nil, tostring(msg) end
  local out = {}
  listed = listed:gsub("^options: ", "")
  if listed ~= "none" then for o in listed:gmatch("[%w_]+") do out[#out + 1] = o end end
  return out
end

-- compare the options the code takes with the entry's
local function compare_options(problems, label, e, taken)
  local documented, have = {}, {}
  for _, o in ipairs(e and e.options or {}) do documented[o[1]] = o end
  for _, o in ipairs(taken) do
    have[o] = true
    if not documented[o] then problems[#problems + 1] = ("%s: option '%s' has no entry"):format(label, o) end
  end
  for _, o in ipairs(e and e.options or {}) do
    if not have[o[1]] and not o.extra then
      problems[#problems + 1] = ("%s: the entry documents option '%s', which it does not take"):format(label, o[1])
    end
  end
end

-- mismatches between the options the code takes and the entries: every layer
-- class (read from the class), and every entry with a probe_options
function doc.option_problems()
  load()
  local nn = moe.nn
  local problems = {}
  local names = {}
  for k, v in pairs(nn) do
    if type(v) == "table" and rawget(v, "class_name") and nn.registry[rawget(v, "class_name")] == v then
      names[#names + 1] = k
    end
  end
  table.sort(names)
  local probed = {}
  for _, k in ipairs(names) do
    local cls = nn[k]
    local e = doc.entry_for("nn." .. k)
    local label = "nn." .. k
    local list, err = doc.layer_options(cls)
    if list then
      local taken = {}
      for _, o in ipairs(list) do taken[#taken + 1] = o[1] end
      compare_options(problems, label, e, taken)
    elseif e and e.probe_options then
      probed[e] = true
      local taken, why = probed_options(e)
      if taken then compare_options(problems, label, e, taken)
      else problems[#problems + 1] = ("%s: its unknown-option error did not list the options: %s"):format(label, why) end
    elseif k ~= "Module" then
      problems[#problems + 1] = ("%s: its options could not be read (%s; give its entry a probe or probe_options)")
        :format(label, tostring(err or "no Module:_options call"))
    end
  end
  for _, e in ipairs(doc.ordered()) do
    if e.probe_options and not probed[e] then
      local taken, why = probed_options(e)
      if taken then compare_options(problems, e.name, e, taken)
      else problems[#problems + 1] = ("%s: its unknown-option error did not list the options: %s"):format(e.name, why) end
    end
  end
  local me = entries["nn.Module"]
  local common = {}
  for _, o in ipairs(me and me.options or {}) do common[o[1]] = true end
  for _, o in ipairs(doc.COMMON_LAYER_OPTIONS) do
    if not common[o] then problems[#problems + 1] = ("nn.Module: the common layer option '%s' has no entry"):format(o) end
  end
  return problems
end

-- ------------------------------------------------------------------ values as text

local REQUIRED_TEXT = "required"

-- a default or option value as a user would write it
function doc.value_str(v, typ)
  local nn = package.loaded["moe.nn"]
  if nn and v == nn.REQUIRED then return REQUIRED_TEXT end
  local tv = type(v)
  if v == nil then return "none" end
  if v == false and typ and not typ:match("boolean") then return "none" end
  if tv == "string" then return ("%q"):format(v) end
  if tv == "number" then
    if v == math.floor(v) and math.abs(v) < 1e15 then return ("%d"):format(v) end
    return ("%.10g"):format(v)
  end
  if tv == "table" then
    if type(v.class_name) == "string" and (v.config == nil or type(v.config) == "table") and not getmetatable(v) then
      local keys = {}
      for k in pairs(v.config or {}) do keys[#keys + 1] = k end
      table.sort(keys)
      local parts = {}
      for _, k in ipairs(keys) do parts[#parts + 1] = k .. " = " .. doc.value_str(v.config[k]) end
      return v.class_name .. "{" .. table.concat(parts, ", ") .. "}"
    end
    if moe.is_tensor(v) then return ("tensor %s [%s]"):format(v:dtype(), table.concat(v:shape(), ",")) end
    local name = doc.name_of(v)
    if name then return name end
    local parts = {}
    for i, x in ipairs(v) do parts[i] = doc.value_str(x) end
    local keys = {}
    for k in pairs(v) do if type(k) ~= "number" then keys[#keys + 1] = k end end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. " = " .. doc.value_str(v[k]) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  if tv == "function" then return doc.name_of(v) or "a function" end
  return tostring(v)
end

local function same_value(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or getmetatable(a) or getmetatable(b) then return false end
  for k, v in pairs(a) do if not same_value(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- ------------------------------------------------------------------ object -> name

local value_index
local function build_value_index()
  load()
  value_index = {}
  local function put(v, name)
    if (type(v) == "function" or type(v) == "table") and value_index[v] == nil then value_index[v] = name end
  end
  -- entries first (in order: canonical names win), then aliases
  for _, e in ipairs(doc.ordered()) do
    if not e.field then
      local ok, v = pcall(doc.resolve, e.name)
      if ok then put(v, e.name) end
    end
  end
  for _, e in ipairs(doc.ordered()) do
    for _, a in ipairs(e.aliases or {}) do
      local ok, v = pcall(doc.resolve, a)
      if ok then put(v, e.name) end
    end
  end
end

-- the entry name of a documented function, class or module (nil otherwise)
function doc.name_of(v)
  if v == moe then return "moe" end
  if not value_index then build_value_index() end
  return value_index[v]
end

-- the class entry of an object (a layer, an optimizer, a metric, a frame ...)
local function class_entry_of(v)
  if type(v) ~= "table" then return nil end
  local mt = getmetatable(v)
  local guard = 0
  while type(mt) == "table" and guard < 10 do
    local n = doc.name_of(mt)
    if n then return n end
    local idx = rawget(mt, "__index")
    if type(idx) ~= "table" or idx == mt then
      mt = getmetatable(mt)
      if mt then mt = rawget(mt, "__index") end
    else
      mt = idx
    end
    guard = guard + 1
  end
end

-- ------------------------------------------------------------------ lookup

local function normalize(s)
  s = s:gsub("^%s+", ""):gsub("%s+$", ""):gsub("^moe%.", "")
  return s
end

-- the entry for a name as a user may type it: "nn.Dense", "moe.nn.Dense",
-- "Dense", "t:sum", "model:fit", "fit"; -> entry, or nil and a list of candidates
function doc.find(name)
  load()
  local s = normalize(name)
  if entries[s] then return entries[s] end
  if aliases()[s] then return entries[aliases()[s]] end
  if s == "moe" or s == "" then return entries["moe"] end
  -- t:sum, x.sum, Tensor.sum -> the tensor op
  local obj, sep, last = s:match("^(.-)([:%.])([%w_]+)$")
  if not last then last = s end
  local cands = {}
  for ename, e in pairs(entries) do
    local tail = ename:match("[:%.]([%w_]+)$") or ename
    if tail == last then cands[#cands + 1] = ename end
  end
  table.sort(cands)
  if #cands == 1 then return entries[cands[1]] end
  if not obj and #cands > 1 then
    -- a bare name: the moe function, else the model method, else the tensor method
    for _, pat in ipairs { "^[%w_]+$", "^nn%.Module:", "^Tensor:", "^[%w_]+%.[%w_]+$" } do
      local hits = {}
      for _, c in ipairs(cands) do if c:match(pat) then hits[#hits + 1] = c end end
      if #hits == 1 then
        local others = {}
        for _, c in ipairs(cands) do if c ~= hits[1] then others[#others + 1] = c end end
        return entries[hits[1]], others
      end
    end
  end
  if obj and #cands > 1 then
    -- prefer the receiver the user named: model:fit -> nn.Module:fit, t:sum -> sum
    local want = (obj == "t" or obj == "x" or obj == "Tensor" or obj == "tensor") and "tensor"
      or (obj == "model" or obj == "m" or obj == "layer" or obj == "Module") and "module" or nil
    for _, c in ipairs(cands) do
      local e = entries[c]
      if want == "tensor" and (e.method or c:match("^Tensor[:%.]")) then return e end
      if want == "module" and c:match("^nn%.Module:") then return e end
      if c:match("^" .. obj:gsub("%p", "%%%0") .. "[:%.]") then return e end
    end
  end
  return nil, cands
end

-- ------------------------------------------------------------------ text

local WIDTH = 78

local function wrap(text, indent, width)
  indent = indent or ""
  width = width or WIDTH
  local out = {}
  for para in (text .. "\n"):gmatch("(.-)\n") do
    if para:match("^%s") or para == "" then
      out[#out + 1] = para == "" and "" or indent .. para -- preformatted lines stay
    else
      local line = indent
      for word in para:gmatch("%S+") do
        if #line + #word + 1 > width and line ~= indent then
          out[#out + 1] = line
          line = indent .. word
        else
          line = line == indent and (indent .. word) or (line .. " " .. word)
        end
      end
      out[#out + 1] = line
    end
  end
  return table.concat(out, "\n")
end
doc.wrap = wrap

-- the title line: how it is called
local function title(e)
  if e.sig then
    local s = e.sig
    if e.method and s:match("^t:") then
      local fname, rest = s:match("^t:([%w_]+)%((.*)%)$")
      if fname then
        return ("moe.%s(t%s%s)   t:%s(%s)"):format(fname, rest ~= "" and ", " or "", rest, fname, rest)
      end
    end
    return s
  end
  if e.options and e.name:match("^nn%.") then -- a layer: moe.nn.Dense{units, ...}
    local req, more = {}, false
    for _, o in ipairs(doc.options_of(e)) do
      if o[3] == REQUIRED_TEXT then req[#req + 1] = o[1] else more = true end
    end
    if more then req[#req + 1] = "..." end
    return "moe." .. e.name .. "{" .. table.concat(req, ", ") .. "}"
  end
  return "moe." .. e.name
end
doc.title = title

-- the options of an entry, with defaults read from the code for a layer class
local function options_of(e)
  local opts = e.options
  if not opts then return nil end
  local defaults = {}
  local v = not e.field and doc.resolve(e.name)
  if v and e.name:match("^nn%.") and is_class(v) and moe.nn.registry[rawget(v, "class_name") or ""] == v then
    for _, o in ipairs(doc.layer_options(v) or {}) do defaults[o[1]] = { o[2] } end
  elseif e.defaults_from then
    for k, d in pairs(e.defaults_from(moe)) do defaults[k] = { d } end
  end
  local out = {}
  for i, o in ipairs(opts) do
    local d = o[3]
    if d == nil and defaults[o[1]] then d = doc.value_str(defaults[o[1]][1], o[2]) end
    out[i] = { o[1], o[2], d, o[4] }
  end
  return out
end
doc.options_of = options_of

local function kind_of(e)
  if e.field then return "field" end
  local v = doc.resolve(e.name)
  if type(v) == "function" then return e.name:find(":", 1, true) and "method" or "function" end
  if type(v) == "table" then
    for _, m in ipairs(doc.MODULES) do if moe[m] == v then return "module" end end
    if v == moe then return "module" end
    if is_class(v) then return "class" end
    return "table"
  end
  return type(v)
end
doc.kind_of = kind_of

-- the entries of a section or module, by name
-- an entry's summary up to its first sentence's end (". "), at most max characters
local function brief(e, max)
  local s = e.summary or ""
  local stop = s:find("%.%s")
  if stop then s = s:sub(1, stop) end
  max = max or 60
  if #s > max then s = s:sub(1, max - 3):gsub("%s+%S*$", "") .. "..." end
  return s
end
doc.brief = brief

-- (methods are left to their class's help: help(moe.nn) lists the layers)
local function members(prefix)
  local out = {}
  for _, e in ipairs(doc.ordered()) do
    if e.name:sub(1, #prefix) == prefix and e.name ~= prefix:sub(1, -2) and not e.name:find(":", 1, true) then
      out[#out + 1] = e
    end
  end
  return out
end

-- an entry as text, for the terminal
function doc.text(e)
  local lines = { title(e) }
  if e.summary then lines[#lines + 1] = wrap(e.summary, "  ") end
  if e.details then lines[#lines + 1] = ""; lines[#lines + 1] = wrap(e.details, "  ") end
  if e.args then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Arguments:"
    for _, a in ipairs(e.args) do
      lines[#lines + 1] = wrap(("%-14s %s%s"):format(a[1], a[2] and ("(" .. a[2] .. ") ") or "", a[3] or ""), "  ")
    end
  end
  local opts = options_of(e)
  if opts and #opts > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = e.options_title or "Options:"
    for _, o in ipairs(opts) do
      local head = ("  %-24s %s"):format(o[1], o[2] or "")
      if o[3] == REQUIRED_TEXT then head = head .. ", required"
      elseif o[3] then head = head .. ", default " .. o[3] end
      lines[#lines + 1] = head
      if o[4] and o[4] ~= "" then lines[#lines + 1] = wrap(o[4], "      ") end
    end
  end
  if e.returns then lines[#lines + 1] = ""; lines[#lines + 1] = wrap("Returns " .. e.returns, "") end
  if e.example then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Example:"
    for l in (e.example .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = "  " .. l end
  end
  local kind = kind_of(e)
  if kind == "module" or e.list_members then
    local prefix = e.name == "moe" and "" or (e.members_prefix or (e.name .. "."))
    local ms = e.name == "moe" and {} or members(prefix)
    if e.name == "Tensor" then
      -- every method, by name, in columns (help(t:op) or help "t:op" for one)
      local names = {}
      for _, m in ipairs(doc.ordered()) do
        local n = m.method and m.name or m.name:match("^Tensor[:%.](.+)$")
        if n then names[#names + 1] = n end
      end
      table.sort(names)
      lines[#lines + 1] = ""
      lines[#lines + 1] = "Methods and fields (help \"t:NAME\" for one):"
      local row = "  "
      for _, n in ipairs(names) do
        if #row + 17 > WIDTH then lines[#lines + 1] = row:gsub("%s+$", ""); row = "  " end
        row = row .. ("%-17s"):format(n)
      end
      if row ~= "  " then lines[#lines + 1] = row:gsub("%s+$", "") end
      ms = {}
    end
    if #ms > 0 then
      lines[#lines + 1] = ""
      lines[#lines + 1] = "Contents:"
      for _, m in ipairs(ms) do
        local label = ("  %-30s "):format(m.name)
        lines[#lines + 1] = label .. brief(m, math.max(20, WIDTH - #label))
      end
    end
  end
  if e.see then lines[#lines + 1] = ""; lines[#lines + 1] = "See also: " .. table.concat(e.see, ", ") end
  return table.concat(lines, "\n")
end

-- help(x): the entry of x (a function, class, object or module, or its name
-- as a string), printed; help() lists where to start
function doc.help(x, ...)
  load()
  if select("#", ...) > 0 then error("help: expected one thing to explain, got several") end
  local e, why, also
  if x == nil then
    e = entries["moe"]
  elseif type(x) == "string" then
    local cands
    e, cands = doc.find(x)
    if e then also = cands end
    if not e then
      if cands and #cands > 1 then
        why = ("help: '%s' could mean %s"):format(x, table.concat(cands, ", "))
      else
        why = ("help: no documentation for '%s' (help() lists the modules; moe.doc.search(\"%s\") searches the entries)")
          :format(x, x)
      end
    end
  elseif moe.is_tensor(x) then
    e = entries["Tensor"]
  else
    local n = doc.name_of(x) or class_entry_of(x)
    e = n and entries[n]
    if not e then
      why = ("help: no documentation for this %s (help \"name\" looks a name up; help() lists the modules)")
        :format(type(x))
    end
  end
  if not e then
    io.write(why, "\n")
    return
  end
  io.write(doc.text(e), "\n")
  if type(x) == "string" and also and #also > 0 then
    io.write("\n(", x, " also names ", table.concat(also, ", "), ")\n")
  end
end

-- search(word): the names whose entry mentions word (case-insensitive)
function doc.search(word)
  load()
  local w = tostring(word):lower()
  local out = {}
  for _, e in ipairs(doc.ordered()) do
    local hay = (e.name .. " " .. (e.summary or "") .. " " .. (e.details or "")):lower()
    if hay:find(w, 1, true) then out[#out + 1] = e.name end
  end
  return out
end

-- ------------------------------------------------------------------ reprs

-- a layer class as its call: nn.Dense{units = required, activation = none, ...}
function doc.class_repr(cls)
  local name = doc.name_of(cls) or rawget(cls, "class_name") or "class"
  local e = entries[name]
  local opts = e and options_of(e)
  local parts = {}
  for _, o in ipairs(opts or {}) do parts[#parts + 1] = o[1] .. " = " .. (o[3] or "?") end
  if not e then return ("%s (a layer class, from nn.Module:extend)"):format(name) end
  local head = name .. (opts and ("{" .. table.concat(parts, ", ") .. "}") or "")
  head = wrap(head, "    "):gsub("^    ", "")
  local summary = e and e.summary and ("\n" .. wrap(e.summary, "  ")) or ""
  return head .. summary .. (e and ("\n  help(" .. (name:match("^nn%.") and "moe." or "") .. name .. ") for more") or "")
end

-- the options of a layer that differ from their defaults (required ones always),
-- as "{units = 8, activation = \"relu\"}"
function doc.layer_config_str(layer)
  local cls = getmetatable(layer)
  -- (a class of the user's is not probed: its init may make layers of its own)
  local list = cls and doc.name_of(cls) and doc.layer_options(cls)
  local cfg = rawget(layer, "_config") or {}
  local e = entries[doc.name_of(cls) or ""]
  local order = {}
  if e and e.options then for _, o in ipairs(e.options) do order[#order + 1] = o[1] end end
  local defaults = {}
  if list then
    for _, o in ipairs(list) do defaults[o[1]] = { o[2] } end
    if #order == 0 then for _, o in ipairs(list) do order[#order + 1] = o[1] end end
  else
    order = {}
    for k in pairs(cfg) do order[#order + 1] = k end
    table.sort(order)
  end
  local nn = moe.nn
  local parts = {}
  for _, k in ipairs(order) do
    local v = cfg[k]
    local d = defaults[k]
    local show
    if d then
      local dv, cv = d[1], v
      if dv == false then dv = nil end -- (false means none for objects, as Module:_options keeps it)
      if cv == false then cv = nil end
      show = dv == nn.REQUIRED or not same_value(cv, dv)
    else
      show = v ~= nil
    end
    if show and (defaults[k] or cfg[k] ~= nil) then
      parts[#parts + 1] = k .. " = " .. doc.value_str(v)
    end
  end
  if #parts == 0 then return "" end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- ------------------------------------------------------------------ Markdown

local function md_escape(s) return (s:gsub("|", "\\|")) end

-- docs/api.md: every entry, section by section
function doc.markdown()
  load()
  local out = { "# moelua API reference", "",
    "Generated from the documentation registry (`lua/moe/doc_*.lua`) by `make docs`; do not edit by hand.",
    "In the REPL `help(x)` shows the same entries (`help(moe.nn.Dense)`, `help \"fit\"`), and so does",
    "`moelua doc NAME` on the command line. Names are written without the `moe.` prefix: `nn.Dense` is",
    "`moe.nn.Dense`, `Tensor:sum` is the method `t:sum`. Dims and indices are 1-based.", "" }
  out[#out + 1] = "## Contents"
  out[#out + 1] = ""
  for _, sec in ipairs(sections) do out[#out + 1] = ("- %s"):format(sec.title) end
  out[#out + 1] = ""
  for _, sec in ipairs(sections) do
    out[#out + 1] = "## " .. sec.title
    out[#out + 1] = ""
    if sec.intro then out[#out + 1] = sec.intro; out[#out + 1] = "" end
    for _, e in ipairs(sec.entries or {}) do
      out[#out + 1] = "### `" .. title(e) .. "`"
      out[#out + 1] = ""
      if e.summary then out[#out + 1] = e.summary; out[#out + 1] = "" end
      if e.details then out[#out + 1] = (e.details:gsub("\n", "\n\n")); out[#out + 1] = "" end
      if e.aliases then
        local a = {}
        for i, s in ipairs(e.aliases) do a[i] = "`" .. s .. "`" end
        out[#out + 1] = "Also: " .. table.concat(a, ", ") .. "."
        out[#out + 1] = ""
      end
      if e.args then
        out[#out + 1] = "| argument | type | |"
        out[#out + 1] = "| --- | --- | --- |"
        for _, a in ipairs(e.args) do
          out[#out + 1] = ("| `%s` | %s | %s |"):format(a[1], md_escape(a[2] or ""), md_escape(a[3] or ""))
        end
        out[#out + 1] = ""
      end
      local opts = options_of(e)
      if opts and #opts > 0 then
        out[#out + 1] = ("| %s | type | default | |"):format(e.options_title and "field" or "option")
        out[#out + 1] = "| --- | --- | --- | --- |"
        for _, o in ipairs(opts) do
          out[#out + 1] = ("| `%s` | %s | %s | %s |"):format(o[1], md_escape(o[2] or ""),
            o[3] and ("`" .. md_escape(o[3]) .. "`") or "", md_escape(o[4] or ""))
        end
        out[#out + 1] = ""
      end
      if e.returns then out[#out + 1] = "Returns " .. e.returns; out[#out + 1] = "" end
      if e.example then
        out[#out + 1] = "```lua"
        out[#out + 1] = e.example
        out[#out + 1] = "```"
        out[#out + 1] = ""
      end
      if e.see then
        local s = {}
        for i, n in ipairs(e.see) do s[i] = "`" .. n .. "`" end
        out[#out + 1] = "See also " .. table.concat(s, ", ") .. "."
        out[#out + 1] = ""
      end
    end
  end
  return (table.concat(out, "\n"):gsub("\n\n\n+", "\n\n"):gsub("\n+$", "")) .. "\n"
end

-- ------------------------------------------------------------------ moelua doc

-- `moelua doc NAME...`, `moelua doc --markdown`, `moelua doc --search WORD`,
-- `moelua doc --check`: the exit status (0 found, 1 not found, 2 usage)
function doc.main(args)
  args = args or {}
  local a1 = args[1]
  if a1 == nil or a1 == "-h" or a1 == "--help" then
    io.write("usage: moelua doc NAME...        the entry of NAME (nn.Dense, randn, Tensor:sum, nn.Module:fit)\n",
      "       moelua doc --search WORD   the names whose entry mentions WORD\n",
      "       moelua doc --markdown      the whole reference as Markdown (make docs writes docs/api.md)\n",
      "       moelua doc --check         public names and layer options without an entry\n")
    load()
    if a1 == nil then io.write("\n", doc.text(entries["moe"]), "\n") end
    return 0
  end
  load()
  if a1 == "--markdown" then
    io.write(doc.markdown())
    return 0
  end
  if a1 == "--search" then
    if not args[2] then io.stderr:write("moelua doc --search: give a word\n"); return 2 end
    local hits = doc.search(args[2])
    for _, n in ipairs(hits) do io.write(("%-32s %s\n"):format(n, brief(entries[n], 60))) end
    return #hits > 0 and 0 or 1
  end
  if a1 == "--check" then
    local bad = doc.undocumented()
    for _, p in ipairs(doc.option_problems()) do bad[#bad + 1] = p end
    for _, s in ipairs(doc.stale()) do bad[#bad + 1] = s .. ": documented, but no such name" end
    for _, b in ipairs(bad) do io.write(b, "\n") end
    return #bad == 0 and 0 or 1
  end
  if a1:sub(1, 1) == "-" then
    io.stderr:write(("moelua doc: unknown option '%s' (moelua doc --help)\n"):format(a1))
    return 2
  end
  local status = 0
  for i, name in ipairs(args) do
    local e, cands = doc.find(name)
    if i > 1 then io.write("\n") end
    if e then
      io.write(doc.text(e), "\n")
    else
      status = 1
      if cands and #cands > 1 then
        io.stderr:write(("moelua doc: '%s' could mean %s\n"):format(name, table.concat(cands, ", ")))
      else
        io.stderr:write(("moelua doc: no entry for '%s' (moelua doc --search %s looks through the entries)\n")
          :format(name, name))
      end
    end
  end
  return status
end

return doc
