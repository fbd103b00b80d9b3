-- moe.cli: command-line options for model scripts.
--
--   local opts = require("moe.cli").parse(arg, { epochs = 10, batch_size = 32, device = "cpu" },
--                                         "moelua run models/x.lua [options]")
--
-- `--batch-size 64`, `--batch-size=64` and `--smoke` (a boolean default) set the
-- defaults' keys (dashes become underscores); values take the defaults' types.
-- --help prints the usage and the options; an unknown option is an error.
local cli = {}

local function usage_text(defaults, usage)
  local keys = {}
  for k in pairs(defaults) do keys[#keys + 1] = k end
  table.sort(keys)
  local lines = { "usage: " .. (usage or "moelua run script.lua [options]"), "options:" }
  for _, k in ipairs(keys) do
    local v = defaults[k]
    lines[#lines + 1] = ("  --%-14s %s"):format(k:gsub("_", "-"), type(v) == "boolean" and "(flag)" or ("default " .. tostring(v)))
  end
  lines[#lines + 1] = "  --help          this text"
  return table.concat(lines, "\n")
end

function cli.parse(args, defaults, usage)
  args = args or {}
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      print(usage_text(defaults, usage))
      os.exit(0)
    end
    local name, value = a:match("^%-%-([%w%-_]+)=(.*)$")
    if not name then name = a:match("^%-%-([%w%-_]+)$") end
    if not name then error(("%s: unexpected argument '%s'\n%s"):format(usage or "script", a, usage_text(defaults, usage)), 0) end
    local key = name:gsub("%-", "_")
    local d = defaults[key]
    if d == nil then error(("unknown option --%s\n%s"):format(name, usage_text(defaults, usage)), 0) end
    if type(d) == "boolean" then
      if value == nil then out[key] = true
      else out[key] = value == "true" or value == "1" or value == "yes" end
    else
      if value == nil then
        i = i + 1
        value = args[i]
        if value == nil then error(("option --%s needs a value"):format(name), 0) end
      end
      if type(d) == "number" then
        local v = tonumber(value)
        if not v then error(("option --%s needs a number, got '%s'"):format(name, value), 0) end
        out[key] = v
      else
        out[key] = value
      end
    end
    i = i + 1
  end
  return out
end

-- the device option: "cpu" or "cuda" (a device must be there); returns it. The
-- scripts move their models there (model:to(device)); fit, evaluate and
-- predict move each batch of host data to the model's device.
function cli.check_device(device)
  if device == "cpu" then return device end
  if device ~= "cuda" then error(("--device must be cpu or cuda, got '%s'"):format(tostring(device)), 0) end
  local cuda = require("moe").cuda
  if not cuda.is_available() then
    error(("--device cuda: no CUDA device is available (%s)"):format(tostring(cuda.info().reason)), 0)
  end
  return device
end

-- the older scripts' arguments: positional ones in order, and the options
-- --device cpu|cuda (checked as check_device does) and --smoke; returns the
-- list of positional arguments and { device = ..., smoke = ... }
function cli.positional(args)
  local pos, opts = {}, { device = "cpu", smoke = false }
  local i = 1
  while args and args[i] do
    if args[i] == "--device" then opts.device = args[i + 1]; i = i + 2
    elseif args[i] == "--smoke" then opts.smoke = true; i = i + 1
    else pos[#pos + 1] = args[i]; i = i + 1 end
  end
  opts.device = cli.check_device(opts.device)
  return pos, opts
end

return cli
