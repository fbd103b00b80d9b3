-- bench/moe.lua CASE [quick]: one MoE benchmark case in this process (so its
-- peak memory is its own); prints name<TAB>value lines. Run by bench/run.lua.
local moe = require "moe"
local nn = moe.nn
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "bench"
package.path = here .. "/?.lua;" .. package.path
local best = require("timing").best
local function peak_mib()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s+(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
end
local case, quick = arg[1], arg[2] ~= nil
moe.manual_seed(1)

-- the sparse layer of the "sparse" cases and its forward + backward step
local T, H, D, E = 4096, 512, 2048, 8
local function sparse_layer()
  local layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = D },
    router = nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = 2 },
    train_capacity_factor = 1.25 }
  local x = moe.randn(1, T, H, { requires_grad = true })
  local function step()
    local y = layer(x)
    y:sum():backward()
    x.grad = nil
    layer:zero_grad()
  end
  step()
  -- expert-FFN flops of a step: 12 x kept pairs x H x d_ff (fwd 2 GEMMs, bwd 4)
  return layer, step, 12 * layer.last_plan.token:numel() * H * D
end

if case == "sparse" then
  local layer, step, flops = sparse_layer()
  -- the peers: one sgemm of an expert's shape (rows = capacity) in each library
  -- of bench/sgemm_peers.lua, timed interleaved with the layer's steps so that
  -- all see the same state of this shared machine (torch.mm: bench/run.lua)
  local C = layer:capacity(T)
  local gemms = require("sgemm_peers").gemms(C, H, D)
  local settled = require("timing").settled
  local t, tg = math.huge, {}
  for _ = 1, quick and 2 or 5 do
    t = math.min(t, best(step, 1, 1))
    for _, g in ipairs(gemms) do tg[g.name] = math.min(tg[g.name] or math.huge, settled(g.f, 5, 1)) end
  end
  print(("sparse_moe_s\t%.6f"):format(t))
  print(("sparse_moe_gflops\t%.2f"):format(flops / t / 1e9))
  print(("expert_shape\t%dx%dx%d"):format(C, H, D))
  for _, g in ipairs(gemms) do print(("sgemm_gflops %s\t%.2f"):format(g.name, 2 * C * H * D / tg[g.name] / 1e9)) end
elseif case == "sparse_bf16" then
  -- bf16 expert GEMMs (fp32 master weights and router) against the same layer's
  -- fp32 experts, interleaved in this process; where moe.set_precision exists
  if not moe.set_precision then
    print("n/a\tmoe.set_precision not in this build")
  else
    local _, step, flops = sparse_layer()
    local t = { fp32 = math.huge, bf16 = math.huge }
    for _ = 1, quick and 1 or 3 do
      for _, p in ipairs { "fp32", "bf16" } do
        moe.set_precision(p)
        t[p] = math.min(t[p], best(step, 1, 2)) -- of 2: a switch may convert weights once
      end
    end
    moe.set_precision("fp32")
    for _, p in ipairs { "fp32", "bf16" } do
      print(("sparse_%s_s\t%.6f"):format(p, t[p]))
      print(("sparse_%s_gflops\t%.2f"):format(p, flops / t[p] / 1e9))
    end
  end
elseif case == "mmoe32" or case == "mmoe1024" then
  local batch = case == "mmoe32" and 32 or 1024
  local x = moe.Input { shape = { 499 } }
  local tasks = nn.MMoE { units = 4, num_experts = 8, num_tasks = 2 }(x)
  local outs = {}
  for i = 1, 2 do
    outs[i] = nn.Dense { units = 1, activation = "sigmoid" }(nn.Dense { units = 8, activation = "relu" }(tasks[i]))
  end
  local model = moe.Model { inputs = x, outputs = outs }
  model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = "binary_crossentropy" }
  local xb = moe.randn(batch, 499)
  local y = { moe.rand(batch, 1):gt(0.5):float(), moe.rand(batch, 1):gt(0.5):float() }
  local function step() model:train_on_batch(xb, y) end
  for _ = 1, 10 do step() end
  local n = batch <= 64 and 200 or 20
  local t = best(step, quick and math.floor(n / 5) or n, 3)
  print(("mmoe_%d_samples_per_s\t%.1f"):format(batch, batch / t))
elseif case == "tabular" then
  local batch = 1024
  local layer = nn.TabularMoELayer { num_experts = 8, expert_units = 32 }
  local x = moe.randn(batch, 64, { requires_grad = true })
  local function step()
    layer(x):sum():backward()
    x.grad = nil
    layer:zero_grad()
  end
  for _ = 1, 10 do step() end
  local t = best(step, quick and 20 or 100, 3)
  print(("tabular_samples_per_s\t%.1f"):format(batch / t))
elseif case == "fit_overhead" then
  -- the trainer's cost beyond the kernels: fit{} (shuffled batch gather, forward,
  -- backward, optimizer step, loss and AUC accumulation, progress bookkeeping)
  -- against a bare loop of train_on_batch over batches gathered beforehand
  local n, batch = 32768, 32
  local x = moe.Input { shape = { 499 } }
  local tasks = nn.MMoE { units = 4, num_experts = 8, num_tasks = 2 }(x)
  local outs = {}
  for i, name in ipairs { "a", "b" } do
    outs[name] = nn.Dense { units = 1, activation = "sigmoid", name = name }(nn.Dense { units = 8, activation = "relu" }(tasks[i]))
  end
  local model = moe.Model { inputs = x, outputs = outs }
  model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = "binary_crossentropy", metrics = { "auc" } }
  local xs = moe.randn(n, 499)
  local ys = { a = moe.rand(n, 1):gt(0.5):float(), b = moe.rand(n, 1):gt(0.5):float() }
  local steps = n / batch
  local bx, by = {}, {}
  for i = 1, steps do
    local idx = moe.arange((i - 1) * batch + 1, i * batch)
    bx[i], by[i] = xs:index_select(1, idx), { a = ys.a:index_select(1, idx), b = ys.b:index_select(1, idx) }
  end
  local now = require("timing").now
  local reps = quick and 1 or 7 -- best of 7: each epoch is 0.25 s, and bursts of other work on the machine hit whole epochs
  local t_fit, t_bare = math.huge, math.huge
  for _ = 1, reps do
    local t0 = now()
    model:fit { x = xs, y = ys, batch_size = batch, epochs = 1, verbose = 0 }
    t_fit = math.min(t_fit, (now() - t0) / steps)
    t0 = now()
    for i = 1, steps do model:train_on_batch(bx[i], by[i]) end
    t_bare = math.min(t_bare, (now() - t0) / steps)
  end
  print(("fit_us_per_step\t%.2f"):format(t_fit * 1e6))
  print(("bare_us_per_step\t%.2f"):format(t_bare * 1e6))
end
print(("peak_rss_mib\t%.1f"):format(peak_mib()))
