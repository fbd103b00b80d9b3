-- moe.losses: loss(y_true, y_pred, opts) -> tensor.
--
-- As in Keras, a loss is first averaged over the last axis (one value per
-- sample), then reduced over the batch: reduction "mean" (Keras's
-- sum_over_batch_size: the sum of weighted per-sample losses divided by the
-- number of samples), "sum", or "none" (the per-sample values).
-- opts.sample_weight: a tensor [B] (or broadcastable to the per-sample losses).
-- Every loss is written in a numerically stable form: no NaN or infinity at
-- probabilities of exactly 0 or 1, or at logits of +-100.
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local core = moe.core

local losses = {}
local EPS = 1e-7 -- Keras's backend epsilon: probabilities are clipped to [EPS, 1 - EPS]

local function shape_s(t) return "[" .. table.concat(t:shape(), ",") .. "]" end

local function check_pair(name, y, p)
  if not core.is_tensor(y) or not core.is_tensor(p) then
    error(("%s: expected tensors (y_true, y_pred), got %s and %s"):format(name, moe._show(y), moe._show(p)), 3)
  end
end

local function same_shape(name, y, p)
  local a, b = y:shape(), p:shape()
  local ok = #a == #b
  for i = 1, #a do ok = ok and a[i] == b[i] end
  if not ok then
    error(("%s: y_true of shape %s does not match y_pred of shape %s"):format(name, shape_s(y), shape_s(p)), 3)
  end
end

local function reduce(name, per_sample, opts)
  local w = opts.sample_weight
  local n = per_sample:dim() > 0 and per_sample:size(1) or 1
  if w ~= nil then
    if not core.is_tensor(w) then w = moe.tensor(w) end
    if w:dim() == 2 and w:size(2) == 1 and per_sample:dim() == 1 then w = w:reshape(-1) end
    local ok = pcall(function() per_sample = per_sample * w:to(per_sample:dtype()) end)
    if not ok then
      error(("%s: sample_weight of shape %s does not fit the per-sample losses of shape %s")
        :format(name, shape_s(w), shape_s(per_sample)), 3)
    end
  end
  local r = opts.reduction or "mean"
  if r == "none" then return per_sample end
  if r == "sum" then return per_sample:sum() end
  if r == "mean" or r == "sum_over_batch_size" then
    return per_sample:numel() > 0 and per_sample:mean() or per_sample:sum()
  end
  error(("%s: reduction must be mean, sum or none, got %s"):format(name, moe._show(r)), 3)
  return n
end

local function float_of(y, p) return y:dtype() == p:dtype() and y or y:to(p:dtype()) end

-- the mean over the last axis (a [B] per-sample loss from [B, d])
-- (a last axis of one value is only squeezed: no op to record)
local function last_mean(t)
  if t:dim() <= 1 then return t end
  return t:size(-1) == 1 and t:squeeze(-1) or t:mean(-1)
end

function losses.mean_squared_error(y, p, opts)
  check_pair("mean_squared_error", y, p); same_shape("mean_squared_error", y, p)
  return reduce("mean_squared_error", last_mean((p - float_of(y, p)):square()), opts or {})
end

function losses.mean_absolute_error(y, p, opts)
  check_pair("mean_absolute_error", y, p); same_shape("mean_absolute_error", y, p)
  return reduce("mean_absolute_error", last_mean((p - float_of(y, p)):abs()), opts or {})
end

-- huber: 0.5 e^2 where |e| <= delta, delta (|e| - 0.5 delta) elsewhere
function losses.huber(y, p, opts)
  opts = opts or {}
  check_pair("huber", y, p); same_shape("huber", y, p)
  local d = opts.delta or 1.0
  if type(d) ~= "number" or not (d > 0 and d < math.huge) then
    error(("huber: delta must be a finite number > 0, got %s"):format(moe._show(d)), 2)
  end
  local e = (p - float_of(y, p)):abs()
  local quad = e:clamp(0, d)          -- min(|e|, delta)
  local lin = e - quad
  return reduce("huber", last_mean(quad:square() * 0.5 + lin * d), opts)
end

local sparse_cce

-- label_smoothing is a fraction in [0, 1] (Keras)
local function smoothing(fn, opts)
  local ls = opts.label_smoothing or 0
  if type(ls) ~= "number" or not (ls >= 0 and ls <= 1) then
    error(("%s: label_smoothing must be a number in [0, 1], got %s"):format(fn, moe._show(ls)), 3)
  end
  return ls
end

-- binary cross-entropy from probabilities (clipped to [eps, 1-eps], as Keras) or
-- from logits: softplus(z) - z y, exact for any z
function losses.binary_crossentropy(y, p, opts)
  opts = opts or {}
  check_pair("binary_crossentropy", y, p); same_shape("binary_crossentropy", y, p)
  local yt = float_of(y, p)
  local ls = smoothing("binary_crossentropy", opts)
  if ls > 0 then yt = yt * (1 - ls) + 0.5 * ls end
  local per
  if yt.requires_grad then -- composed, so that y_true gets a gradient too
    if opts.from_logits then
      per = p:softplus() - p * yt
    else
      local q = p:clamp(EPS, 1 - EPS)
      per = -(yt * q:log() + (1 - yt) * (1 - q):log())
    end
  else -- one fused op (src/nn/losses.c)
    per = moe.core.bce(yt, p, opts.from_logits)
  end
  return reduce("binary_crossentropy", last_mean(per), opts)
end

-- one-hot (or sparse) targets, log-probabilities along the last axis
local function log_probs(p, from_logits)
  if from_logits then return p:log_softmax(-1) end
  local q = p / p:sum(-1, { keepdim = true })
  return q:clamp(EPS, 1 - EPS):log()
end

-- categorical cross-entropy: y_true one-hot [B, C], or sparse integer class ids
-- [B] (1-based, like every index in moelua)
function losses.categorical_crossentropy(y, p, opts)
  opts = opts or {}
  check_pair("categorical_crossentropy", y, p)
  if not y:dtype():match("^float") or y:dim() == p:dim() - 1 then
    return sparse_cce(y, p, opts, "categorical_crossentropy")
  end
  same_shape("categorical_crossentropy", y, p)
  local yt = float_of(y, p)
  local ls = smoothing("categorical_crossentropy", opts)
  if ls > 0 then yt = yt * (1 - ls) + ls / p:size(-1) end
  local per = -(yt * log_probs(p, opts.from_logits)):sum(-1)
  return reduce("categorical_crossentropy", per, opts)
end

-- (fn: the name the user called, for the messages)
function sparse_cce(y, p, opts, fn)
  opts = opts or {}
  check_pair(fn, y, p)
  local c = p:size(-1)
  if y:dim() == p:dim() and y:size(-1) == 1 then y = y:squeeze(-1) end
  if y:dim() ~= p:dim() - 1 then
    error(("%s: labels of shape %s do not fit predictions of shape %s")
      :format(fn, shape_s(y), shape_s(p)), 2)
  end
  if y:dtype():match("^float") and y:numel() > 0 then
    -- a fractional or NaN class id is refused, not truncated
    local flat = y:reshape(-1)
    local bad = (flat - flat:floor()):ne(0)
    if bad:any():item() then
      local v = flat:totable()
      for i, b in ipairs(bad:totable()) do
        if b then
          error(("%s: labels must be integer class ids, got %s at position %d")
            :format(fn, moe._show(v[i]), i), 2)
        end
      end
    end
  end
  local ids = y:to("int64")
  local lo, hi = ids:numel() > 0 and ids:min():item() or 1, ids:numel() > 0 and ids:max():item() or 1
  if lo < 1 or hi > c then
    error(("%s: labels must be class ids in 1..%d, got values in %d..%d")
      :format(fn, c, lo, hi), 2)
  end
  local lp = log_probs(p, opts.from_logits)
  local ls = smoothing(fn, opts)
  local picked = lp:gather(lp:dim(), ids:unsqueeze(-1)):squeeze(-1)
  local per = -picked
  if ls > 0 then per = per * (1 - ls) - lp:mean(-1) * ls end
  return reduce(fn, per, opts)
end

function losses.sparse_categorical_crossentropy(y, p, opts)
  return sparse_cce(y, p, opts, "sparse_categorical_crossentropy")
end

-- Keras's short names
losses.mse = losses.mean_squared_error
losses.mae = losses.mean_absolute_error
losses.bce = losses.binary_crossentropy
losses.huber_loss = losses.huber

-- get(spec): a name, a function, or {name, opts...} (e.g. {"binary_crossentropy", from_logits = true})
function losses.get(spec)
  if type(spec) == "function" then return spec end
  if type(spec) == "string" then
    local f = losses[spec]
    if type(f) ~= "function" or spec == "get" then
      error(("losses: unknown loss '%s' (mean_squared_error, mean_absolute_error, huber, binary_crossentropy, "
        .. "categorical_crossentropy, sparse_categorical_crossentropy)"):format(spec), 3)
    end
    return f
  end
  if type(spec) == "table" and type(spec[1]) == "string" then
    local f = losses.get(spec[1])
    local o = {}
    for k, v in pairs(spec) do if k ~= 1 then o[k] = v end end
    return function(y, p, opts)
      local merged = {}
      for k, v in pairs(o) do merged[k] = v end
      for k, v in pairs(opts or {}) do merged[k] = v end
      return f(y, p, merged)
    end
  end
  error(("losses: expected a loss name, function or {name, options}, got %s"):format(moe._show(spec)), 3)
end

return losses
