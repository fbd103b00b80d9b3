-- A small token model with the sparse MoeLayer (TF Model Garden semantics):
-- Embedding -> x + MoeLayer(x) -> LayerNormalization -> Dense(vocab), trained to
-- map every token of a random sequence through a fixed random permutation of
-- the vocabulary (a per-token lookup that experts can split between them; the
-- point is the router's behaviour, the task itself is easy).
-- Runs the tokens-choose top-2 router and the experts-choose router, printing
-- the router's metrics after each epoch; --plot DIR draws each router's tokens
-- per expert (after training) and its experts' share of the tokens per epoch
-- (a heatmap).
--
--   moelua run models/switch_moe.lua [--epochs 6] [--router both|tokens|experts] [--experts 8]
--                                     [--n 2000] [--seed 1] [--plot DIR|FILE.svg|FILE.png] [--smoke]
--   mpirun -np 2 moelua run models/switch_moe.lua --expert-parallel
--   (--help lists every option)
--
-- --expert-parallel divides the experts among the ranks (nn.MoeLayer's
-- expert_parallel) and trains data parallel otherwise: each rank takes its
-- batch_size sequences of every global batch of batch_size x ranks, the
-- non-expert gradients are averaged over the ranks, the experts' divided by
-- the world size (nn.expert_parallel_params); rank 0 prints.
local moe = require "moe"
local nn = moe.nn
local cli = require "moe.cli"
local data = moe.data
local dist = moe.distributed

local opts = cli.parse(arg, {
  usage = "moelua run models/switch_moe.lua [options]",
  about = "A token model with the sparse MoeLayer (tokens-choose top-2 and experts-choose routers) learning a\n"
    .. "fixed permutation of the vocabulary; prints the router's metrics after each epoch.",
  { "epochs", 6, "training epochs", min = 1 },
  { "router", "both", "which routers to train", choices = { "tokens", "experts", "both" } },
  { "experts", 8, "number of experts", min = 1 },
  { "n", 2000, "sequences of synthetic data (90% train, 10% test)", min = 10 },
  { "seq_len", 32, "tokens per sequence", min = 1 },
  { "vocab", 64, "vocabulary size", min = 2 },
  { "hidden", 64, "embedding width", min = 1 },
  { "d_ff", 128, "hidden width of each expert's feed-forward network", min = 1 },
  { "seed", 1, "the seed of the data, the weights and the batch order" },
  { "batch_size", 32, "sequences per batch", min = 1 },
  { "lr", 3e-3, "Adam's learning rate", type = "number", min = 0 },
  cli.device_option(),
  cli.plot_option("tokens_<router>: tokens per expert; experts_<router>: each expert's share over the epochs"),
  { "smoke", false, "a short run (1 epoch, 256 sequences), for the test suite" },
  { "expert_parallel", false, "divide the experts among the ranks of mpirun -np N (data parallel otherwise; "
    .. "batch_size sequences per rank)" },
})
local rank, world = dist.rank(), dist.world_size()
local print = rank == 0 and print or function() end -- (one rank prints)
if opts.expert_parallel and opts.experts % world ~= 0 then
  cli.fail(("--expert-parallel: --experts %d must be a multiple of the ranks (%d)"):format(opts.experts, world))
end
local kinds = opts.router == "both" and { "tokens", "experts" } or { opts.router }
local figure_names = {}
for _, kind in ipairs(kinds) do
  figure_names[#figure_names + 1] = "tokens_" .. kind
  figure_names[#figure_names + 1] = "experts_" .. kind
end
local figures = cli.figures(opts.plot, figure_names) -- (--plot) checked and made before training
if opts.expert_parallel and figures then cli.fail("--plot is not available with --expert-parallel yet") end
if opts.smoke then opts.epochs, opts.n = 1, 256 end
local V, S, E = opts.vocab, opts.seq_len, opts.experts

moe.manual_seed(opts.seed)
local perm = moe.tensor(data.permutation(V, opts.seed), { dtype = "int64" })
local tokens = moe.randint(1, V, { opts.n, S }, { dtype = "int64" }) -- inclusive
local targets = perm:index_select(1, tokens:reshape(-1)):view(opts.n, S)
local ntr = math.floor(opts.n * 0.9)
print(("synthetic sequences: %d x %d tokens, vocabulary %d; train %d, test %d"):format(opts.n, S, V, ntr, opts.n - ntr))

local function build(kind)
  moe.manual_seed(opts.seed)
  local router = kind == "tokens"
    and nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = 2, router_z_loss_weight = 1e-3,
      load_balancing_loss_weight = 1e-2, jitter_noise = 0.01 }
    or nn.ExpertsChooseMaskedRouter { num_experts = E, router_z_loss_weight = 1e-3, jitter_noise = 0.01 }
  local moe_layer = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = opts.d_ff },
    router = router, train_capacity_factor = 1.25, eval_capacity_factor = 2.0, name = "moe",
    expert_parallel = opts.expert_parallel }
  local inp = moe.Input { shape = { S }, dtype = "int64" }
  local h = nn.Embedding { input_dim = V, output_dim = opts.hidden }(inp)
  h = nn.LayerNormalization {}(nn.Add {} { h, moe_layer(h) })
  local model = moe.Model { inputs = inp, outputs = nn.Dense { units = V, name = "logits" }(h), name = "switch_" .. kind }
  local sce = moe.losses.sparse_categorical_crossentropy
  model:to(opts.device) -- (--device) its weights there; fit moves each batch
  model:compile { optimizer = moe.optim.Adam { lr = opts.lr },
    loss = function(y, p, o) return sce(y, p, { from_logits = true, sample_weight = o and o.sample_weight }) end }
  return model, moe_layer
end

local train_parallel, parallel_accuracy -- (--expert-parallel, below)
local function token_accuracy(model, x, y)
  local p = model:predict(x, { batch_size = 256 })
  return p:argmax(3):eq(y):float():mean():item()
end

-- the data + expert parallel loop of --expert-parallel (every rank runs it):
-- one global batch of batch_size x world sequences per step, each rank its
-- slice; the same shuffled order on every rank
local sce_ = moe.losses.sparse_categorical_crossentropy
function train_parallel(model, x, y, show)
  local own = nn.expert_parallel_params(model)
  local per, n = opts.batch_size, x:size(1)
  local steps = math.max(1, math.floor(n / (per * world)))
  for epoch = 1, opts.epochs do
    model:train()
    local order = data.permutation(n, opts.seed + epoch)
    local total = 0
    for s = 0, steps - 1 do
      local idx = {}
      for i = 1, per do idx[i] = order[(s * per * world + rank * per + i - 1) % n + 1] end
      local it = moe.tensor(idx, { dtype = "int64" })
      model:zero_grad()
      local loss = sce_(y:index_select(1, it), model(x:index_select(1, it)), { from_logits = true })
      for _, l in ipairs(model:losses()) do loss = loss + l end
      loss:backward()
      local params = model:parameters()
      for _, p in ipairs(params) do
        local g = p.grad or moe.zeros_like(p) -- (every rank reduces every gradient, in the same order)
        if own[p] then p.grad = g / world else p.grad = dist.all_reduce(g, "mean") end
      end
      model.optimizer:step(params)
      total = total + loss:item()
    end
    local mean = moe.tensor({ total / steps }, { dtype = "float64" })
    show.on_epoch_end(nil, epoch, { loss = dist.all_reduce(mean, "mean"):item() })
  end
end

-- test token accuracy over every rank's slice of the test set
function parallel_accuracy(model, x, y)
  model:eval()
  local n = x:size(1)
  local lo, hi = math.floor(n * rank / world) + 1, math.floor(n * (rank + 1) / world)
  local counts = moe.zeros(2, { dtype = "float64" })
  moe.no_grad(function()
    local xs, ys = x:narrow(1, lo, hi - lo + 1), y:narrow(1, lo, hi - lo + 1)
    local right = model(xs):argmax(3):eq(ys):float():sum():item()
    counts = moe.tensor({ right, ys:numel() }, { dtype = "float64" })
  end)
  dist.all_reduce(counts, "sum")
  model:train()
  local c = counts:totable()
  return c[1] / c[2]
end

for _, kind in ipairs(kinds) do
  local model, layer = build(kind)
  print(("\n%s-choose routing (%d experts%s)"):format(kind, E, kind == "tokens" and ", top-2" or ""))
  local show = { on_epoch_end = function(_, epoch, logs)
    local m = layer:metrics() -- of the epoch's last batch (experts-choose has no load-balancing loss)
    local parts = { ("epoch %d  loss %.4f"):format(epoch, logs.loss) }
    for _, k in ipairs { "load_balancing_loss", "router_z_loss", "fraction_tokens_left_behind", "router_confidence",
                         "expert_usage", "rank_imbalance" } do
      if m[k] then parts[#parts + 1] = ("%s %.4f"):format(k, m[k]) end
    end
    print(table.concat(parts, "  "))
  end }
  local history, acc
  if opts.expert_parallel then
    train_parallel(model, tokens:narrow(1, 1, ntr), targets:narrow(1, 1, ntr), show)
    acc = parallel_accuracy(model, tokens:narrow(1, ntr + 1, opts.n - ntr), targets:narrow(1, ntr + 1, opts.n - ntr))
  else
    history = model:fit { x = tokens:narrow(1, 1, ntr), y = targets:narrow(1, 1, ntr), epochs = opts.epochs,
      batch_size = opts.batch_size, verbose = 0, callbacks = { show }, seed = opts.seed }
    acc = token_accuracy(model, tokens:narrow(1, ntr + 1, opts.n - ntr), targets:narrow(1, ntr + 1, opts.n - ntr))
  end
  print(("%s-choose: test token accuracy %.4f"):format(kind, acc))
  if figures then
    model:predict(tokens:narrow(1, 1, 64))
    print("wrote " .. moe.plot.tokens_per_expert(layer.last_plan.counts, figures["tokens_" .. kind],
      { title = kind .. "-choose: tokens per expert" }))
    -- the router's expert_<e>_tokens over the epochs: how the load moves between experts as it trains
    print("wrote " .. moe.plot.expert_load(history, figures["experts_" .. kind],
      { title = kind .. "-choose: share of the routed tokens per expert" }))
  end
end
