-- moe.cli: command-line options for model scripts.
--
--   local cli = require "moe.cli"
--   local opts = cli.parse(arg, {
--     usage = "moelua run models/x.lua [options]",
--     about = "What the script trains, in a line or two.",
--     { "epochs", 10, "epochs to train", min = 1 },
--     { "lr", 1e-3, "Adam's learning rate" },
--     { "router", "both", "which routers to train", choices = { "tokens", "experts", "both" } },
--     cli.device_option(),
--     cli.plot_option(),
--     { "smoke", false, "a short run, for the test suite" },
--   })
--
-- Each option is { name, default, description, ... }: `--batch-size 64`,
-- `--batch-size=64` and `--smoke` (a boolean default is a flag) set opts.batch_size
-- (dashes become underscores). A value takes the default's type: an integer
-- default wants an integer (`type = "number"` allows fractions), a string default
-- any string; `min`, `max` and `choices` bound it, and `check(v)` may return
-- false and a reason. `positional = true` options are also taken, in order,
-- from arguments that are not options. `--help` prints the usage and each
-- option's description and exits 0; a bad option or value prints what is
-- wrong and the usage on stderr and exits 2 (no traceback): a usage error is
-- the user's, not the script's.
local cli = {}

local current -- the last spec parse() read: cli.fail prints its usage

local function kind_of(o)
  if o.type then return o.type end
  local d = o[2]
  if type(d) == "boolean" then return "flag" end
  if type(d) == "number" then return d == math.floor(d) and "int" or "number" end
  return "string"
end

local function metavar(o)
  if o.metavar then return o.metavar end
  if o.choices then return table.concat(o.choices, "|") end
  local k = kind_of(o)
  return k == "int" and "N" or k == "number" and "X" or "STR"
end

local function default_text(o)
  if o.default_text then return o.default_text end
  local d = o[2]
  if d == nil or d == "" or d == false then return nil end
  return tostring(d)
end

-- text cut into lines of at most width characters, at spaces
local function wrap(text, width)
  local out, line = {}, ""
  for word in text:gmatch("%S+") do
    if line ~= "" and #line + 1 + #word > width then out[#out + 1] = line; line = word
    else line = line == "" and word or (line .. " " .. word) end
  end
  out[#out + 1] = line
  return out
end

-- the usage text: the usage line, the script's description (unless brief),
-- the options
function cli.usage(spec, brief)
  spec = spec or current or {}
  local lines = { "usage: " .. (spec.usage or "moelua run script.lua [options]") }
  if spec.about and not brief then lines[#lines + 1] = "\n" .. spec.about end
  local pos, flags = {}, {}
  for _, o in ipairs(spec) do
    if o.positional then pos[#pos + 1] = o[1]:upper(); flags[#flags + 1] = "--" .. o[1]:gsub("_", "-") end
  end
  if #pos > 0 then
    lines[#lines + 1] = ("\narguments %s, in this order, are the options %s"):format(table.concat(pos, " "),
      table.concat(flags, ", "))
  end
  lines[#lines + 1] = "\noptions:"
  for _, o in ipairs(spec) do
    local flag = "--" .. o[1]:gsub("_", "-")
    local left = kind_of(o) == "flag" and flag or (flag .. " " .. metavar(o))
    local d = kind_of(o) ~= "flag" and default_text(o)
    local text = wrap((o[3] or "(undocumented)") .. (d and (" (default " .. d .. ")") or ""), 76)
    if #left > 22 then
      lines[#lines + 1] = "  " .. left
      left = ""
    end
    for i, l in ipairs(text) do lines[#lines + 1] = ("  %-22s %s"):format(i == 1 and left or "", l) end
  end
  lines[#lines + 1] = ("  %-22s %s"):format("-h, --help", "print this text and exit")
  return table.concat(lines, "\n")
end

local function bad(msg) error({ cli_usage = msg }, 0) end

local function convert(o, raw, flag)
  local k = kind_of(o)
  local v
  if k == "flag" then
    if raw == nil or raw == "true" or raw == "1" or raw == "yes" then v = true
    elseif raw == "false" or raw == "0" or raw == "no" then v = false
    else bad(("%s is a flag: it takes no value (or true/false), got '%s'"):format(flag, raw)) end
  elseif k == "int" or k == "number" then
    v = tonumber(raw)
    if not v or v ~= v or v == math.huge or v == -math.huge then
      bad(("%s needs %s, got '%s'"):format(flag, k == "int" and "an integer" or "a number", raw))
    end
    if k == "int" and v ~= math.floor(v) then bad(("%s needs an integer, got '%s'"):format(flag, raw)) end
    if o.min and v < o.min then bad(("%s must be at least %s, got %s"):format(flag, tostring(o.min), raw)) end
    if o.max and v > o.max then bad(("%s must be at most %s, got %s"):format(flag, tostring(o.max), raw)) end
  else
    v = raw
  end
  if o.choices then
    local ok = false
    for _, c in ipairs(o.choices) do if c == v then ok = true end end
    if not ok then
      local list = table.concat(o.choices, ", "):gsub(", ([^,]*)$", " or %1")
      bad(("%s must be %s, got '%s'"):format(flag, list, tostring(raw)))
    end
  end
  if o.check then
    local ok, why = o.check(v)
    if not ok then bad(("%s %s: %s"):format(flag, tostring(raw), why or "not accepted")) end
  end
  return v
end

-- the old form parse(args, {name = default, ...}, usage): options without descriptions
local function from_defaults(defaults, usage)
  local spec = { usage = usage }
  local keys = {}
  for k in pairs(defaults) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do spec[#spec + 1] = { k, defaults[k] } end
  return spec
end

-- the options each read() result was given on the command line (weak keys)
local given_of = setmetatable({}, { __mode = "k" })

-- given(opts, name): whether the command line set the option (rather than its
-- default): for a mode such as --quick that sets other options' values unless
-- they were given
function cli.given(opts, name)
  local g = given_of[opts]
  return g ~= nil and g[name] == true
end

-- read(args, spec): the options; opts.help is true for --help. A bad option or
-- value raises { cli_usage = message } (parse turns it into exit status 2).
function cli.read(args, spec)
  local by_name, pos, out = {}, {}, {}
  for _, o in ipairs(spec) do
    by_name[o[1]] = o
    if o.positional then pos[#pos + 1] = o end
    out[o[1]] = o[2]
  end
  local seen, npos = {}, 0
  local i = 1
  args = args or {}
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then out.help = true; return out end
    local name, value = a:match("^%-%-([%w%-_]+)=(.*)$")
    if not name then name = a:match("^%-%-([%w%-_]+)$") end
    if name then
      local key = name:gsub("%-", "_")
      local o = by_name[key]
      if not o then
        local near = {}
        for _, c in ipairs(spec) do
          if c[1]:sub(1, #key) == key or key:sub(1, #c[1]) == c[1] then near[#near + 1] = "--" .. c[1]:gsub("_", "-") end
        end
        bad(("unknown option --%s%s"):format(name, #near > 0 and (" (did you mean " .. table.concat(near, " or ") .. "?)") or ""))
      end
      if kind_of(o) ~= "flag" and value == nil then
        i = i + 1
        value = args[i]
        if value == nil then bad(("option --%s needs a value (%s)"):format(name, metavar(o))) end
      end
      out[key] = convert(o, value, "--" .. name)
      seen[key] = true
    elseif a:sub(1, 1) == "-" and a ~= "-" and not tonumber(a) then
      bad(("unknown option %s"):format(a))
    else
      -- a positional argument: the next positional option not yet given by name
      npos = npos + 1
      while pos[npos] and seen[pos[npos][1]] do npos = npos + 1 end
      local o = pos[npos]
      if not o then bad(("unexpected argument '%s'"):format(a)) end
      out[o[1]] = convert(o, a, o[1]:upper())
      seen[o[1]] = true
    end
    i = i + 1
  end
  given_of[out] = seen
  return out
end

-- parse(args, spec): the options, as read() reads them; --help prints the
-- usage on stdout and exits 0, a usage error prints the message and the
-- usage on stderr and exits 2
function cli.parse(args, spec, usage)
  if #spec == 0 and next(spec) ~= nil and not spec.usage then spec = from_defaults(spec, usage) end
  current = spec
  local ok, res = pcall(cli.read, args, spec)
  if not ok then
    if type(res) == "table" and res.cli_usage then cli.fail(res.cli_usage) end
    error(res, 0)
  end
  if res.help then
    io.stdout:write(cli.usage(spec), "\n")
    os.exit(0)
  end
  return res
end

-- fail(msg): a usage error found after parsing (a bad combination of options,
-- a path that cannot be made): the message and the usage on stderr, exit 2
function cli.fail(msg)
  local script = arg and arg[0] or "moelua"
  io.stderr:write(("%s: %s\n%s\n"):format(script, msg, cli.usage(current, true)))
  io.stderr:flush()
  os.exit(2)
end

-- the device option: "cpu" or "cuda" (a device must be there). The scripts
-- move their models there (model:to(device)); fit, evaluate and predict move
-- each batch of host data to the model's device.
local function device_check(device)
  if device == "cpu" then return true end
  local cuda = require("moe").cuda
  if not cuda.is_available() then return false, ("no CUDA device is available (%s)"):format(tostring(cuda.info().reason)) end
  return true
end
function cli.device_option()
  return { "device", "cpu", "where the model trains", choices = { "cpu", "cuda" }, check = device_check }
end

-- readable(path): an option's check that a file can be read ("" passes: the default)
function cli.readable(path)
  if path == "" then return true end
  local f, err = io.open(path, "rb")
  if not f then return false, ("cannot read it (%s)"):format((tostring(err):gsub("^.-: ", ""))) end
  f:close()
  return true
end

-- check_device(device): device, or a usage error (for scripts that read --device themselves)
function cli.check_device(device)
  if device ~= "cpu" and device ~= "cuda" then cli.fail(("--device must be cpu or cuda, got '%s'"):format(tostring(device))) end
  local ok, why = device_check(device)
  if not ok then cli.fail("--device cuda: " .. why) end
  return device
end

-- ------------------------------------------------------------------ directories and figure paths

-- makedirs(path): path and its missing parents made as directories (as
-- `mkdir -p`, without a shell: through LuaFileSystem, Debian's lua-filesystem);
-- returns true, or nil and a message
function cli.makedirs(path)
  local lfs = require "lfs"
  if path == "" then return true end
  local mode = lfs.attributes(path, "mode")
  if mode == "directory" then return true end
  if mode then return nil, ("'%s' exists and is not a directory"):format(path) end
  local parent = path:match("^(.*[^/])/+[^/]+/*$")
  if parent then
    local ok, err = cli.makedirs(parent)
    if not ok then return nil, err end
  end
  local ok, err = lfs.mkdir(path)
  if not ok and lfs.attributes(path, "mode") ~= "directory" then
    return nil, ("cannot make directory '%s': %s"):format(path, tostring(err))
  end
  return true
end

-- ------------------------------------------------------------------ processes

-- self_exe(): the running interpreter's executable (from /proc/self/exe), to start
-- more moelua processes with (a script's workers); arg[-1]'s name where there is no /proc
function cli.self_exe()
  local ffi = require "ffi"
  pcall(ffi.cdef, "long readlink(const char *path, char *buf, size_t size);")
  local buf = ffi.new("char[4096]")
  local n = tonumber(ffi.C.readlink("/proc/self/exe", buf, 4095))
  if n and n > 0 then return ffi.string(buf, n) end
  for i = -1, -10, -1 do -- (the interpreter: the first of arg's negative entries)
    if arg and arg[i - 1] == nil and arg[i] then return arg[i] end
  end
  return "moelua"
end

-- cores(): the CPUs this process may run on (nproc), at least 1
function cli.cores()
  local p = io.popen("nproc 2>/dev/null")
  local n = p and tonumber(p:read("*l") or "")
  if p then p:close() end
  return n and n >= 1 and n or 1
end

-- the formats moe.plot writes, by a file's extension
local PLOT_FORMATS = { svg = true, png = true }

-- plot_option(figures): the --plot option; figures names what the script draws
function cli.plot_option(figures)
  return { "plot", "", "write the figures" .. (figures and (" (" .. figures .. ")") or "") .. " into a directory "
    .. "(made if missing) as DIR/<figure>.svg, or to a .svg or .png file, whose extension picks the format "
    .. "(FILE_<figure>.png when there are several)", metavar = "DIR|FILE" }
end

-- figures(plot, names): where each named figure goes ({name = path}), or nil
-- when plot is "" (no figures). plot is a .svg or .png file (one figure: that
-- file; several: FILE_<name>.svg|png) or a directory (made if missing:
-- DIR/<name>.svg). Any other extension is a usage error (cli.fail): a
-- directory named "switch.png" is never made.
function cli.figures(plot, names)
  if plot == nil or plot == "" then return nil end
  local lfs = require "lfs"
  local out = {}
  local stem, ext = plot:match("^(.*[^/])%.(%a+)$")
  local is_dir = plot:match("/$") or lfs.attributes(plot, "mode") == "directory"
  if ext and not is_dir then
    if not PLOT_FORMATS[ext:lower()] then
      cli.fail(("--plot %s: moe.plot writes .svg and .png files, not .%s (or give a directory)"):format(plot, ext))
    end
    local parent = plot:match("^(.*[^/])/+[^/]+$")
    if parent then
      local ok, err = cli.makedirs(parent)
      if not ok then cli.fail("--plot " .. plot .. ": " .. err) end
    end
    for _, n in ipairs(names) do out[n] = #names == 1 and plot or ("%s_%s.%s"):format(stem, n, ext) end
    return out
  end
  local ok, err = cli.makedirs(plot)
  if not ok then cli.fail("--plot " .. plot .. ": " .. err) end
  local dir = plot:gsub("/+$", "")
  for _, n in ipairs(names) do out[n] = ("%s/%s.svg"):format(dir, n) end
  return out
end

return cli
