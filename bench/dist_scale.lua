-- bench/dist_scale.lua CASE [ARG] [--quick]: one case of issue 17's scaling
-- benchmark, on the ranks of this job. bench/dist_scale_run.lua runs every case
-- under `mpirun -np 1` and `-np 2` (one thread per rank) and prints the ratios;
-- rank 0 prints name<TAB>value lines.
--
--   sparse_dp      the sparse MoeLayer forward + backward (T=4096 tokens per rank,
--                  H=512, d_ff=2048, E=8, top-2, capacity factor 1.25), data
--                  parallel: every rank its own tokens and all the experts, the
--                  gradients averaged over the ranks
--   sparse_ep      the same with expert_parallel = true: each rank owns E/N experts,
--                  tokens travel to their expert's rank and back (all_to_all); the
--                  router's gradients averaged. Skipped (says why) where
--                  nn.MoeLayer has no expert_parallel option yet
--   mmoe_step B    the census MMoE's data-parallel training step at B rows per rank
--                  (forward, BCE, backward, gradients averaged, Adam), on census rows:
--                  the step bench/peers/torch_ddp_mmoe.py times in PyTorch DDP
--   mmoe_fit       one fit{} epoch of the census MMoE over the training split at
--                  batch 1024 per rank (fit{}'s data parallelism where it has it,
--                  else the same epoch as a hand-written data-parallel loop, and it
--                  says which)
--   export FILE    (one process) the census training rows as a safetensors file
--                  (x, income, never_married) for the PyTorch peer
--
-- --quick (or MOE_BENCH_QUICK=1): tiny sizes and few repetitions, a functional
-- check, not a measurement. A time is the slowest rank's, best of several rounds.
-- Throughputs count every rank's samples: N ranks x per-rank batch / step time.
local moe = require "moe"
local nn = moe.nn
local D = moe.distributed
io.stdout:setvbuf("line")

local args, quick = {}, os.getenv("MOE_BENCH_QUICK") ~= nil
for _, a in ipairs(arg or {}) do
  if a == "--quick" then quick = true else args[#args + 1] = a end
end
local case = args[1]
local rank, W = D.rank(), D.world_size()
local function out(k, v)
  if type(v) == "number" then v = (v == math.floor(v) and math.abs(v) < 2 ^ 53) and ("%d"):format(v) or ("%.6g"):format(v) end
  if rank == 0 then print(("%s\t%s"):format(k, tostring(v))) end
end

-- seconds per call of f: the slowest rank's, the best of `rounds` rounds of
-- `iters` calls (after `warm` calls)
local function time(f, iters, rounds, warm)
  for _ = 1, warm or 1 do f() end
  local best = math.huge
  for _ = 1, rounds do
    D.barrier()
    local t0 = moe.now()
    for _ = 1, iters do f() end
    local t = moe.tensor({ (moe.now() - t0) / iters }, { dtype = "float64" })
    D.all_reduce(t, "max")
    best = math.min(best, t[1])
  end
  return best
end

-- The gradient averaging of a data-parallel step: the one piece to swap as
-- issue 17 lands. sync.prepare() before backward, sync.finish() after it.
-- With moe.distributed.Reducer (buckets all-reduced while backward runs) when
-- this build has it, unless MOE_BENCH_SYNC=all_reduce; otherwise one blocking
-- all_reduce(mean) of each gradient after backward. `locals` are the rank-local
-- parameters (an expert-parallel layer's own experts): their gradients already
-- hold every rank's tokens, and are divided by the world size (the loss is the
-- mean of the ranks' losses), as fit{} does. One rank: nothing to do.
local function grad_sync(params, locals)
  locals = locals or {}
  if W == 1 then return { name = "none (one rank)", prepare = function() end, finish = function() end } end
  if os.getenv("MOE_BENCH_SYNC") == "none" then -- (the ranks compute side by side, nothing sent: the machine's ceiling)
    return { name = "none (no communication)", prepare = function() end, finish = function() end }
  end
  if os.getenv("MOE_BENCH_SYNC") == "barrier" then -- (the ranks in lockstep, nothing sent: what waiting alone costs)
    return { name = "barrier (no data sent)", prepare = function() end, finish = function() D.barrier() end }
  end
  if D.Reducer and os.getenv("MOE_BENCH_SYNC") ~= "all_reduce" then
    local list, reduced = {}, {}
    for _, p in ipairs(params) do
      if locals[p] then list[#list + 1] = p else reduced[#reduced + 1] = p end
    end
    local ok, r = pcall(D.Reducer, reduced, { local_params = list })
    if ok then
      return { name = "moe.distributed.Reducer", prepare = function() r:prepare() end,
        finish = function() r:finish() end }
    end
    out("reducer_failed", (tostring(r):gsub("%s+", " ")))
  end
  return { name = "all_reduce of each gradient", prepare = function() end, finish = function()
    moe.no_grad(function()
      for _, p in ipairs(params) do
        if locals[p] then
          if p.grad then p.grad = p.grad / W end
        else
          if not p.grad then p.grad = moe.zeros(p:shape()) end -- (every rank must join each call)
          D.all_reduce(p.grad, "mean")
        end
      end
    end)
  end }
end

local function numel(params)
  local n = 0
  for _, p in ipairs(params) do n = n + p:numel() end
  return n
end

-- ------------------------------------------------------------ the sparse layer
local function sparse(ep)
  local T, H, F, E = 4096, 512, 2048, 8
  if quick then T, H, F = 256, 32, 64 end
  local function layer_of()
    local o = { experts = nn.FeedForwardExperts { num_experts = E, d_ff = F },
      router = nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = 2 },
      train_capacity_factor = 1.25 }
    if ep then o.expert_parallel = true end -- (only then: a build without the option rejects it)
    return nn.MoeLayer(o)
  end
  moe.manual_seed(1) -- the same weights on every rank
  local ok, layer = pcall(layer_of)
  if not ok then
    out("skipped", "nn.MoeLayer has no expert_parallel here: " .. (tostring(layer):gsub("^.-:%d+: ", "")))
    return
  end
  moe.manual_seed(100 + rank) -- each rank its own tokens
  local x = moe.randn(1, T, H, { requires_grad = true })
  layer(x) -- built
  local params = layer:parameters()
  local locals = ep and nn.expert_parallel_params and nn.expert_parallel_params(layer) or {}
  local sync = grad_sync(params, locals)
  local function step()
    local y = layer(x)
    layer:zero_grad()
    x.grad = nil
    sync.prepare()
    y:sum():backward()
    sync.finish()
  end
  local t = time(step, 1, quick and 2 or 5, 2)
  local nlocal = 0
  for p in pairs(locals) do nlocal = nlocal + p:numel() end
  out("sync", sync.name)
  out("ranks", W)
  out("threads", D.info().threads)
  out("tokens_per_rank", T)
  out("shape", ("T=%d H=%d d_ff=%d E=%d k=2"):format(T, H, F, E))
  out("params_reduced", numel(params) - nlocal) -- all-reduced each step (floats)
  out("params_local", nlocal)
  out("step_s", t)
  out("tokens_per_s", W * T / t)
end

-- ------------------------------------------------------------ the census MMoE
local function census()
  local ds = moe.datasets.census_income { seed = 1, tasks = { "income", "never_married" } }
  return ds.train.x, { income = ds.train.y.income, never_married = ds.train.y.never_married }, ds.num_features
end

local function mmoe_model(features)
  moe.manual_seed(1) -- the same weights on every rank
  local x = moe.Input { shape = { features } }
  local tasks = nn.MMoE { units = 4, num_experts = 8, num_tasks = 2 }(x)
  local outs = {}
  for i, name in ipairs { "income", "never_married" } do
    local h = nn.Dense { units = 8, activation = "relu" }(tasks[i])
    outs[name] = nn.Dense { units = 1, activation = "sigmoid", name = name }(h)
  end
  local model = moe.Model { inputs = x, outputs = outs }
  model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = "binary_crossentropy" }
  model(moe.zeros(1, features)) -- built
  return model
end

local function rows(x, y, idx)
  return x:index_select(1, idx), { income = y.income:index_select(1, idx),
    never_married = y.never_married:index_select(1, idx) }
end

-- one data-parallel step as fit{}'s (without its gather and metrics) and as
-- PyTorch DDP's: forward, loss, backward with the gradients averaged, Adam
local function dp_step(model, params, sync, xb, yb)
  local loss = model:compute_loss(yb, model(xb))
  model:zero_grad()
  sync.prepare()
  loss:backward()
  sync.finish()
  model.optimizer:step(params)
end

local function mmoe_step(B)
  local x, y, features = census()
  local model = mmoe_model(features)
  local params = model:parameters()
  local sync = grad_sync(params)
  -- a few batches per rank, gathered beforehand (global batch s: rows
  -- (s*N + rank)*B + 1 .. +B), cycled
  local nb = quick and 2 or 8
  local bx, by = {}, {}
  for s = 0, nb - 1 do
    local first = (s * W + rank) * B
    bx[s + 1], by[s + 1] = rows(x, y, moe.arange(first + 1, first + B + 1))
  end
  local i = 0
  local function step()
    i = i % nb + 1
    dp_step(model, params, sync, bx[i], by[i])
  end
  local iters = B <= 64 and 200 or 20
  local t = time(step, quick and 5 or iters, quick and 2 or 5, 10)
  out("sync", sync.name)
  out("ranks", W)
  out("threads", D.info().threads)
  out("batch_per_rank", B)
  out("params_reduced", numel(params))
  out("step_s", t)
  out("samples_per_s", W * B / t)
end

-- whether fit{} has data parallelism: an unknown option is fit's first check
local function fit_is_distributed(model)
  local ok, err = pcall(model.fit, model, { distributed = true })
  return not (not ok and tostring(err):find("unknown option 'distributed'", 1, true))
end

local function mmoe_fit()
  local B = 1024
  local x, y, features = census()
  local n = x:size(1)
  if quick then
    n = 8 * B
    x, y = rows(x, y, moe.arange(1, n + 1))
  end
  local model = mmoe_model(features)
  local epoch
  if fit_is_distributed(model) then
    -- (fit{} is data parallel by itself when there are several ranks: the
    -- 1-rank run is a plain fit, what one process gets)
    out("how", "fit{} (data parallel by itself at several ranks)")
    epoch = function() model:fit { x = x, y = y, batch_size = B, epochs = 1, verbose = 0, seed = 1 } end
  else
    -- no data-parallel fit in this build: the same epoch by hand (every rank
    -- the same shuffled order, its slice of each global batch of N x B rows;
    -- the last partial global batch is dropped)
    out("how", "a hand-written data-parallel loop (fit{} has no distributed option in this build)")
    local params = model:parameters()
    local sync = grad_sync(params)
    local e = 0
    epoch = function()
      e = e + 1
      local order = moe.tensor(moe.data.permutation(n, e), { dtype = "int64" })
      for s = 0, math.floor(n / (W * B)) - 1 do
        local xb, yb = rows(x, y, order:narrow(1, (s * W + rank) * B + 1, B))
        dp_step(model, params, sync, xb, yb)
      end
    end
  end
  local t = time(epoch, 1, quick and 2 or 5, 1)
  out("ranks", W)
  out("threads", D.info().threads)
  out("batch_per_rank", B)
  out("rows", n)
  out("epoch_s", t)
  out("samples_per_s", n / t)
end

local function export(path)
  assert(W == 1, "export: one process")
  local x, y = census()
  moe.io.save_tensors(path, { x = x, income = y.income:reshape(-1, 1):float(),
    never_married = y.never_married:reshape(-1, 1):float() })
  out("rows", x:size(1))
  out("features", x:size(2))
  out("wrote", path)
end

if case == "sparse_dp" then sparse(false)
elseif case == "sparse_ep" then sparse(true)
elseif case == "mmoe_step" then mmoe_step(tonumber(args[2]) or 1024)
elseif case == "mmoe_fit" then mmoe_fit()
elseif case == "export" then export(assert(args[2], "export FILE"))
else
  error("usage: bench/dist_scale.lua sparse_dp|sparse_ep|mmoe_step B|mmoe_fit|export FILE [--quick]", 0)
end
