-- moe.testing: gradient checks by central finite differences in float64.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core

local testing = {}

local function is_module(f) return type(f) == "table" and type(f.parameters) == "function" end

-- Projects any output (a tensor or a nested table of tensors) onto a scalar with
-- fixed random weights, so that a non-scalar output is checked in every direction.
local function projector(seed)
  local weights = {}
  local function proj(out, path)
    if core.is_tensor(out) then
      if not out:dtype():match("^float") then return nil end
      local w = weights[path]
      if not w then
        core.manual_seed(seed + #path * 7919)
        w = moe.rand(out:shape(), { dtype = "float64" }) * 2 - 1
        weights[path] = w
      end
      return (out:double() * w):sum()
    elseif type(out) == "table" then
      local total
      local keys = {}
      for k in pairs(out) do keys[#keys + 1] = k end
      table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
      for _, k in ipairs(keys) do
        local s = proj(out[k], path .. "/" .. tostring(k))
        if s then total = total and total + s or s end
      end
      return total
    end
  end
  return function(out) return proj(out, "") end
end

--[[ gradcheck(f, inputs, opts) -> true, or raises an error naming the worst element.
f: a function of the inputs, or a module (its parameters are checked too, in
float64: the module is converted with :double()). inputs: a list of tensors;
float ones are converted to float64 leaves (their layout is kept: a transposed or
narrowed input stays strided) and those that require grad -- all float inputs
unless opts.check says otherwise -- are checked.
opts: eps (1e-6), atol (1e-5), rtol (1e-3), seed (for f's own randomness: the
generator is reseeded before every evaluation, so dropout masks repeat). ]]
function testing.gradcheck(f, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  local seed = opts.seed or 1234
  local params = {}
  local call = f
  local xs = {}
  for i, x in ipairs(inputs) do
    if core.is_tensor(x) and x:dtype():match("^float") then
      local d = x:detach()
      if d:dtype() ~= "float64" then d = d:double() end
      if opts.check == nil or opts.check[i] then d.requires_grad = true end
      xs[i] = d
    else
      xs[i] = x
    end
  end
  local n = #inputs
  if is_module(f) then
    -- a layer builds its weights on its first call: build it before listing them
    -- (otherwise a lazily built layer would have its inputs checked, and nothing else)
    f:double()
    core.manual_seed(seed)
    moe.no_grad(function() f(unpack(xs, 1, n)) end)
    f:double()
    params = f:parameters()
    call = function(...) return f(...) end
  end
  local proj = projector(seed)
  local function eval()
    core.manual_seed(seed)
    return proj(call(unpack(xs, 1, n)))
  end
  -- analytic gradients
  local targets = {}
  for i = 1, n do if core.is_tensor(xs[i]) and xs[i].requires_grad then targets[#targets + 1] = { x = xs[i], name = "input " .. i } end end
  for i, p in ipairs(params) do targets[#targets + 1] = { x = p, name = "parameter " .. i } end
  for _, t in ipairs(targets) do t.x.grad = nil end
  local out = eval()
  if not out then error("gradcheck: f returned no float tensor", 2) end
  out:backward()
  -- numeric gradients
  for _, t in ipairs(targets) do
    local x = t.x
    local analytic = x.grad
    local m = x:numel()
    for i = 1, m do
      local num = moe.no_grad(function()
        local v = core.get_flat(x, i)
        core.set_flat(x, i, v + eps)
        local fp = eval():item()
        core.set_flat(x, i, v - eps)
        local fm = eval():item()
        core.set_flat(x, i, v)
        return (fp - fm) / (2 * eps)
      end)
      local a = analytic and core.get_flat(analytic, i) or 0
      if math.abs(a - num) > atol + rtol * math.abs(num) or a ~= a then
        error(("gradcheck: %s (shape [%s]) element %d: analytic %.10g vs numeric %.10g")
              :format(t.name, table.concat(x:shape(), ","), i, a, num), 2)
      end
    end
  end
  return true
end

return testing
