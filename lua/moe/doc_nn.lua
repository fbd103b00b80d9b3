-- Documentation entries: layers, models and nn.Module (read by moe.doc).
-- A layer's defaults are not written here: moe.doc reads them from the layer
-- class itself; an option's third field (its default) is left nil.

local ACT = "activation"          -- a name (nn.activations) or a function of a tensor
local INIT = "initializer"        -- a name, {class_name, config}, an initializer object or a function(shape, dtype)
local REG = "regularizer"         -- a name, {class_name, config}, an object or a function(w) -> scalar
local CON = "constraint"          -- a name, {class_name, config}, an object or a function(w) -> w

local S = {}

-- the weights options of a normalization layer (gamma and beta)
local function affine_opts()
  return {
    { "axis", "integer", nil, "the features' axis (negative from the end)" },
    { "epsilon", "number", nil, "added to the variance before the square root (>= 0)" },
    { "center", "boolean", nil, "learn beta (an offset)" },
    { "scale", "boolean", nil, "learn gamma (a scale)" },
    { "beta_initializer", INIT, nil, "" }, { "gamma_initializer", INIT, nil, "" },
    { "beta_regularizer", REG, nil, "" }, { "gamma_regularizer", REG, nil, "" },
    { "beta_constraint", CON, nil, "" }, { "gamma_constraint", CON, nil, "" },
  }
end

local function merge_layer(name, what)
  return { "nn." .. name, "moe.nn." .. name .. "{}", what,
    details = "Called on a list of at least two tensors of broadcastable shapes: layer{a, b, ...}.",
    options = {}, example = ("local y = moe.nn.%s {} { a, b }"):format(name) }
end

-- the options probe of a class that checks its options itself: called with
-- an unknown option, its error lists the options it takes
local function probe_with(path, extra)
  return function(moe)
    local o = { __doc_probe = true, name = "__doc_probe" }
    for k, v in pairs(extra or {}) do o[k] = v end
    local cls = moe
    for part in path:gmatch("[^%.]+") do cls = cls[part] end
    return cls(o)
  end
end

S[#S + 1] = { id = "nn", title = "Layers (moe.nn)", intro =
  "Layers have Keras's names and options. A layer builds its weights on its first call, from the input's shape; "
  .. "called on a tensor it computes at once, called on a `moe.Input` it adds a node to a functional model. "
  .. "Unknown options are errors. Every layer also takes the options of `nn.Module` (name, input_shape, dtype, "
  .. "trainable). Initializers, regularizers and constraints are given by name (\"glorot_uniform\", \"l2\", "
  .. "\"max_norm\"), as {class_name = ..., config = {...}}, as objects (moe.regularizers.l2(0.01)) or as functions; "
  .. "false means none.",
  entries = {
    { "nn", "moe.nn", "Layers and the Module base class: Dense, normalization, merging, Lambda, and the "
      .. "Mixture-of-Experts layers (dense mixtures and sparse token-routed ones).",
      example = "local nn = moe.nn\nlocal d = nn.Dense { units = 8, activation = \"relu\" }\nlocal y = d(moe.randn(4, 3))" },
    { "nn.Module", "moe.nn.Module{...}", "The base of every layer and model: named parameters, buffers and child "
      .. "modules, the lazy build, the training mode, weights I/O, and (from the trainer) compile/fit/evaluate/predict.",
      details = "Write a layer with nn.Module:extend(\"Name\"): give it init(opts) (call nn.Module.init(self, opts) "
        .. "first), build(input_shape) for weights that depend on the input (self:add_weight), and forward(...). "
        .. "Sub-layers assigned as fields (self.inner = nn.Dense{...}) become children; add_loss and add_metric "
        .. "report auxiliary losses and metrics. The options below are accepted by every layer.",
      options = {
        { "name", "string", "class name in snake_case + \"_\" + a counter", "the layer's name (unique in a model)" },
        { "input_shape", "list of integers", "none", "the input's shape without the batch dim (a Sequential's "
          .. "first layer: the model builds at once)" },
        { "dtype", "string", "the first float input's", "\"float32\" or \"float64\" for the weights; inputs of the "
          .. "other float dtype are cast to it" },
        { "trainable", "boolean", "true", "false: the weights are buffers, not parameters (not updated)" },
      },
      example = "local Scale = moe.nn.Module:extend(\"Scale\")\n"
        .. "function Scale:build(shape) self:add_weight(\"alpha\", { 1 }, { initializer = \"ones\" }) end\n"
        .. "function Scale:forward(x) return x * self.alpha end\n"
        .. "local y = Scale {}(moe.randn(2, 3))" },
    { "nn.Dense", nil, "A densely connected layer: y = activation(x W + b), W of shape [in, units], as one fused "
      .. "op (moe.linear; relu, sigmoid and tanh are applied inside it).",
      options = {
        { "units", "integer", nil, "output features (a positive integer)" },
        { "activation", ACT, nil, "applied to x W + b" },
        { "use_bias", "boolean", nil, "add b" },
        { "kernel_initializer", INIT, nil, "W's initial values" },
        { "bias_initializer", INIT, nil, "b's initial values" },
        { "kernel_regularizer", REG, nil, "a penalty on W, joining the training loss" },
        { "bias_regularizer", REG, nil, "a penalty on b" },
        { "activity_regularizer", REG, nil, "a penalty on the output (through add_loss)" },
        { "kernel_constraint", CON, nil, "applied to W after each optimizer update" },
        { "bias_constraint", CON, nil, "applied to b after each update" },
      },
      example = "local d = moe.nn.Dense { units = 32, activation = \"relu\", kernel_regularizer = \"l2\" }\nlocal y = d(x)" },
    { "nn.Activation", nil, "Applies an activation function (moe.nn.Activation(\"relu\") works too).",
      options = { { "activation", ACT, nil, "a name from nn.activations or a function" } },
      example = "local act = moe.nn.Activation { activation = \"gelu\" }" },
    { "nn.Dropout", nil, "Inverted dropout: in training, each element is zeroed with probability rate and the rest "
      .. "scaled by 1 / (1 - rate); in evaluation the identity (moe.nn.Dropout(0.2) works too).",
      options = { { "rate", "number", nil, "the drop probability, in [0, 1)" },
        { "noise_shape", "list of integers", nil, "the mask's shape (broadcast over the input), e.g. one mask per row" },
        { "seed", "integer", nil, "accepted and stored (Keras's option); the mask draws from moe's generator, "
          .. "which moe.manual_seed sets" } },
      example = "local drop = moe.nn.Dropout { rate = 0.2 }" },
    { "nn.BatchNormalization", nil, "Batch normalization with Keras's semantics: batch statistics in training "
      .. "(the moving ones updated as moving = moving * momentum + batch * (1 - momentum)), the moving statistics "
      .. "in evaluation.",
      details = "PyTorch's BatchNorm1d is { momentum = 0.9, epsilon = 1e-5, unbiased_moving_variance = true } "
        .. "(its momentum 0.1 is our 1 - momentum): training normalises with the biased batch variance either way.",
      options = (function()
        local o = affine_opts()
        table.insert(o, 2, { "momentum", "number", nil, "of the moving statistics, in [0, 1]" })
        o[#o + 1] = { "moving_mean_initializer", INIT, nil, "" }
        o[#o + 1] = { "moving_variance_initializer", INIT, nil, "" }
        o[#o + 1] = { "unbiased_moving_variance", "boolean", nil, "move the moving variance towards the batch's "
          .. "unbiased variance (times n / (n - 1), n the values per feature), as PyTorch does" }
        return o
      end)(),
      example = "local bn = moe.nn.BatchNormalization {}" },
    { "nn.LayerNormalization", nil, "Layer normalization over the last axis (or axis): (x - mean) / sqrt(var + "
      .. "epsilon) * gamma + beta, with gamma and beta of the axis' size.", options = affine_opts() },
    { "nn.Embedding", nil, "Integer ids (1-based) [...] -> vectors [..., output_dim], a row of an [input_dim, "
      .. "output_dim] table each.",
      options = { { "input_dim", "integer", nil, "the number of ids (ids are 1..input_dim)" },
        { "output_dim", "integer", nil, "the vectors' size" },
        { "embeddings_initializer", INIT, nil, "" }, { "embeddings_regularizer", REG, nil, "" },
        { "embeddings_constraint", CON, nil, "" }, { "activity_regularizer", REG, nil, "a penalty on the output" } },
      example = "local emb = moe.nn.Embedding { input_dim = 1000, output_dim = 16 }" },
    { "nn.Concatenate", nil, "Joins a list of tensors along axis: layer{a, b, ...}.",
      options = { { "axis", "integer", nil, "the dim to join along (negative from the end)" } },
      example = "local h = moe.nn.Concatenate {} { a, b }" },
    merge_layer("Add", "The elementwise sum of a list of tensors."),
    merge_layer("Subtract", "a - b - ... of a list of tensors."),
    merge_layer("Multiply", "The elementwise product of a list of tensors."),
    merge_layer("Average", "The elementwise mean of a list of tensors."),
    merge_layer("Maximum", "The elementwise maximum of a list of tensors."),
    merge_layer("Minimum", "The elementwise minimum of a list of tensors."),
    { "nn.Lambda", nil, "Any function of the inputs as a layer (moe.nn.Lambda(fn) works too).",
      details = "The function is not stored in checkpoints: moe.load takes it back through "
        .. "custom_objects[function_name].",
      options = { { "fn", "function", "required", "the layer's forward" },
        { "function_name", "string", "the layer's name", "the key moe.load looks up in custom_objects" } },
      probe_options = probe_with("nn.Lambda", { fn = function(x) return x end }),
      example = "local double = moe.nn.Lambda { fn = function(x) return x * 2 end, function_name = \"double\" }" },
    { "nn.Flatten", nil, "[B, ...] -> [B, everything else].", options = {} },
    { "nn.Reshape", nil, "[B, ...] -> [B, target_shape...] (one size may be -1).",
      options = { { "target_shape", "list of integers", nil, "the shape without the batch dim" } } },
    { "nn.activations", "moe.nn.activations", "The activation functions by name, for every activation option.",
      details = "linear, relu, sigmoid, tanh, softmax (last dim), log_softmax, gelu, softplus, softsign, swish, "
        .. "silu (= swish), exponential, elu, selu, leaky_relu (slope 0.2), relu6, hard_sigmoid.", lists = true },
    { "nn.get_activation", "moe.nn.get_activation(spec, [where])", "The function an activation option names: nil or "
      .. "false is linear, a function is itself, a string is looked up in nn.activations (where names the caller in "
      .. "the error for an unknown name).", returns = "a function." },
    { "nn.dropout", "moe.nn.dropout(x, rate, training, [noise_shape])", "Inverted dropout as a function: x itself "
      .. "unless training (and rate > 0)." },
    { "nn.is_module", "moe.nn.is_module(v)", "Whether v is a layer or model.", returns = "a boolean." },
    { "nn.registry", "moe.nn.registry", "Class name -> layer class, for every class defined (with extend too): what "
      .. "moe.load may construct." },
    { "nn.REQUIRED", "moe.nn.REQUIRED", "The marker of a required option in the defaults table a layer's init gives "
      .. "Module:_options (which checks and stores the options)." },
    { "nn.router_z_loss", "moe.nn.router_z_loss(logits)", "The router z-loss, unscaled: the mean over tokens of "
      .. "logsumexp(logits)^2.", returns = "a 0-dim tensor." },
  } }

-- ------------------------------------------------------------------ MoE layers

local ROUTER_OPTS = {
  { "num_experts", "integer", nil, "E" },
  { "jitter_noise", "number", nil, "in training, the router's inputs are multiplied by U(1 - eps, 1 + eps); in [0, 1)" },
  { "use_bias", "boolean", nil, "a bias [E] on the logits" },
  { "router_z_loss_weight", "number", nil, "weight of the z-loss joining the training loss (0: reported only)" },
  { "kernel_initializer", INIT, nil, "the [H, E] kernel (TF Model Garden's TruncatedNormal(stddev = 0.02))" },
  { "bias_initializer", INIT, nil, "" },
  { "export_metrics", "boolean", nil, "report the router's metrics through add_metric" },
  { "noisy_gating", "boolean", nil, "Shazeer et al.'s learned noise on the logits in training (a noise_kernel [H, E])" },
}
local function with(list, extra)
  local out = {}
  for _, o in ipairs(list) do out[#out + 1] = o end
  for _, o in ipairs(extra) do out[#out + 1] = o end
  return out
end

S[#S + 1] = { id = "moe_layers", title = "Mixture-of-Experts layers", intro =
  "Dense (soft) mixtures with the seeds' names and weights, and sparse token-routed layers with TF Model Garden's "
  .. "semantics. `get_weights()` gives each reference layer's own list; inside, the experts' weights are stacked "
  .. "so that all experts run as one GEMM.",
  entries = {
    { "nn.TabularMoELayer", nil, "[B, F] -> [B, F]: each expert is Dense(expert_units, relu) -> Dense(F), the "
      .. "gate softmax(x Wg + bg) over experts on the raw input, the output the gate-weighted sum of the experts.",
      details = "All experts run as two GEMMs with the fused moe.gate_scale between them. layer.last_gates holds "
        .. "the last call's gates [B, E].",
      options = { { "num_experts", "integer", nil, "E" }, { "expert_units", "integer", nil, "each expert's hidden units" } },
      example = "local y = moe.nn.TabularMoELayer { num_experts = 4, expert_units = 16 }(x)" },
    { "nn.TabularMoELayer:gate_weights", "layer:gate_weights(x)", "The gates softmax(x Wg + bg) for x [B, F] (or "
      .. "[..., F]).", returns = "a [B, E] tensor." },
    { "nn.GatedFeatureFusion", nil, "Called on exactly two inputs {a, b} of equal shape: g = activation([a; b] W + "
      .. "c), W [2F, F]; the output is g a + (1 - g) b.",
      options = { { "activation", ACT, nil, "the gate's activation" } },
      example = "local f = moe.nn.GatedFeatureFusion {} { a, b }" },
    { "nn.MMoE", nil, "Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) with the seed's weights and defaults: "
      .. "E experts shared by num_tasks tasks, one softmax gate per task; returns a list of num_tasks tensors [B, units].",
      details = "Weights: expert_kernel [F, units, E], expert_bias [units, E], gate_kernel_t [F, E] and gate_bias_t "
        .. "[E] for each gate (get_weights lists the expert kernel and bias, every gate kernel, then every gate "
        .. "bias). The weighted sum is the fused moe.mixture. layer.last_gates holds the last call's gates.",
      options = {
        { "units", "integer", nil, "each expert's output units" },
        { "num_experts", "integer", nil, "E" },
        { "num_tasks", "integer", nil, "the number of outputs" },
        { "num_gates", "integer", nil, "1 (one gate for every task: OMoE) or num_tasks; none means num_tasks" },
        { "expert_hidden_units", "list of integers", nil, "makes each expert an MLP with these hidden layers" },
        { "expert_activation", ACT, nil, "of the experts' outputs" },
        { "expert_hidden_activation", ACT, nil, "of the experts' hidden layers" },
        { "gate_activation", ACT, nil, "of the gates" },
        { "use_expert_bias", "boolean", nil, "" }, { "use_gate_bias", "boolean", nil, "" },
        { "expert_kernel_initializer", INIT, nil, "" }, { "gate_kernel_initializer", INIT, nil, "" },
        { "expert_bias_initializer", INIT, nil, "" }, { "gate_bias_initializer", INIT, nil, "" },
        { "expert_kernel_regularizer", REG, nil, "" }, { "gate_kernel_regularizer", REG, nil, "" },
        { "expert_bias_regularizer", REG, nil, "" }, { "gate_bias_regularizer", REG, nil, "" },
        { "expert_kernel_constraint", CON, nil, "" }, { "gate_kernel_constraint", CON, nil, "" },
        { "expert_bias_constraint", CON, nil, "" }, { "gate_bias_constraint", CON, nil, "" },
        { "activity_regularizer", REG, nil, "a penalty on each task's output" },
      },
      example = "local tasks = moe.nn.MMoE { units = 4, num_experts = 8, num_tasks = 2 }(x)   -- {[B,4], [B,4]}" },
    { "nn.MMoE:gate_weights", "layer:gate_weights(x)", "Each gate's weights for x [B, F], for plots of expert "
      .. "utilisation (moe.plot.expert_utilisation).", returns = "a list of [B, E] tensors, one per gate." },
    { "nn.MMoE:expert_outputs", "layer:expert_outputs(x)", "Every expert's output for x [B, F].",
      returns = "a [B, units, E] tensor (a view)." },
    { "nn.MMoE:gates_count", "layer:gates_count()", "The number of gates: num_gates, else num_tasks." },
    { "nn.OMoE", nil, "The one-gate mixture of the MMoE paper: MMoE with num_gates = 1, every task receiving the "
      .. "same mixture.",
      options = {
        { "units", "integer", nil, "" }, { "num_experts", "integer", nil, "" }, { "num_tasks", "integer", nil, "" },
        { "num_gates", "integer", nil, "none means 1 here" },
        { "expert_hidden_units", "list of integers", nil, "" }, { "expert_activation", ACT, nil, "" },
        { "expert_hidden_activation", ACT, nil, "" }, { "gate_activation", ACT, nil, "" },
        { "use_expert_bias", "boolean", nil, "" }, { "use_gate_bias", "boolean", nil, "" },
        { "expert_kernel_initializer", INIT, nil, "" }, { "gate_kernel_initializer", INIT, nil, "" },
        { "expert_bias_initializer", INIT, nil, "" }, { "gate_bias_initializer", INIT, nil, "" },
        { "expert_kernel_regularizer", REG, nil, "" }, { "gate_kernel_regularizer", REG, nil, "" },
        { "expert_bias_regularizer", REG, nil, "" }, { "gate_bias_regularizer", REG, nil, "" },
        { "expert_kernel_constraint", CON, nil, "" }, { "gate_kernel_constraint", CON, nil, "" },
        { "expert_bias_constraint", CON, nil, "" }, { "gate_bias_constraint", CON, nil, "" },
        { "activity_regularizer", REG, nil, "" },
      }, see = { "nn.MMoE" } },
    { "nn.SharedBottom", nil, "The MMoE paper's shared-bottom baseline: one MLP (hidden_units, then units, each "
      .. "Dense with activation) shared by every task, its output returned once per task like MMoE's.",
      options = { { "units", "integer", nil, "the last layer's units" }, { "num_tasks", "integer", nil, "" },
        { "hidden_units", "list of integers", nil, "hidden layers before the last" },
        { "activation", ACT, nil, "of every layer" }, { "kernel_initializer", INIT, nil, "" } } },
    { "nn.CGC", nil, "Customized Gate Control (Tang et al., RecSys 2020) as torch-rechub 0.9.0's CGC, on a dense "
      .. "input: per task n_expert_specific experts, n_expert_shared shared ones, and per task a gate over its own "
      .. "and the shared experts; returns a list of num_tasks tensors [B, expert_params.dims[last]] (one more, the "
      .. "shared gate's mixture of all experts, with shared_gate = true).",
      details = "Every expert and gate is rechub's MLP: for each size in dims, Dense -> BatchNormalization (PyTorch's: "
        .. "momentum 0.9 in our terms, epsilon 1e-5, unbiased_moving_variance) -> activation -> dropout; a gate is such "
        .. "an MLP of one size (its expert count) with softmax. Called on one tensor [B, F], or on rechub's list of "
        .. "num_tasks + 1 tensors (task t's experts and gate read input t, the shared ones the last). get_weights "
        .. "order: rechub's state_dict order without num_batches_tracked -- every task's experts (task 1's first), "
        .. "the shared experts, the task gates, the shared gate; per MLP layer the Dense kernel [in, out] (PyTorch's "
        .. "Linear weight transposed) and bias, then gamma, beta, moving_mean, moving_variance. layer.last_gates "
        .. "holds the last call's gates.",
      options = {
        { "n_expert_specific", "integer", nil, "experts per task" },
        { "n_expert_shared", "integer", nil, "shared experts (0 or more)" },
        { "expert_params", "table", nil, "{dims = {sizes...}, activation = \"relu\", dropout = 0}: every expert's MLP "
          .. "(activations: ours, plus rechub's \"leakyrelu\", slope 0.01)" },
        { "task_types", "list of strings", nil, "\"classification\" or \"regression\" per task (only the count "
          .. "matters here)" },
        { "num_tasks", "integer", nil, "the number of tasks, in place of task_types" },
        { "shared_gate", "boolean", nil, "add rechub's gate over all experts (a PLE level below the last)" },
      },
      example = "local outs = moe.nn.CGC { n_expert_specific = 2, n_expert_shared = 1, expert_params = { dims = { 16 } }, "
        .. "num_tasks = 2 }(x)   -- {[B,16], [B,16]}",
      see = { "nn.PLE" } },
    { "nn.PLE", nil, "Progressive Layered Extraction (Tang et al., RecSys 2020) with torch-rechub 0.9.0's options, on "
      .. "a dense input [B, F]: n_level CGC levels, every one but the last with the shared gate, level l reading "
      .. "level l - 1's per-task and shared outputs. With tower_params_list: each task's prediction [B, 1] (a list), "
      .. "after its tower MLP, a Dense(1) and rechub's prediction layer (sigmoid for \"classification\", the value "
      .. "for \"regression\"; with num_tasks in place of task_types, the logits). Without it: the last level's "
      .. "per-task outputs [B, expert_params.dims[last]], for towers of your own.",
      details = "get_weights order: the levels (cgc_1, ...: see nn.CGC), then the towers (each MLP's layers as in "
        .. "nn.CGC, then its output Dense kernel [in, 1] and bias) -- rechub's PLE state_dict order without "
        .. "num_batches_tracked, Linear weights transposed to [in, out]. Weights are initialised as our Dense "
        .. "(glorot_uniform, zero bias), not as PyTorch's Linear. Parity with rechub is specced in spec/ple_spec.lua.",
      options = {
        { "n_level", "integer", nil, "the number of CGC levels" },
        { "n_expert_specific", "integer", nil, "experts per task and level" },
        { "n_expert_shared", "integer", nil, "shared experts per level (0 or more)" },
        { "expert_params", "table", nil, "{dims = {sizes...}, activation = \"relu\", dropout = 0}: every expert's MLP" },
        { "tower_params_list", "list of tables", nil, "one {dims, activation, dropout} per task: the towers" },
        { "task_types", "list of strings", nil, "\"classification\" or \"regression\" per task" },
        { "num_tasks", "integer", nil, "the number of tasks, in place of task_types" },
      },
      example = "local ys = moe.nn.PLE { n_level = 2, n_expert_specific = 2, n_expert_shared = 1,\n"
        .. "  expert_params = { dims = { 16 } }, task_types = { \"classification\", \"classification\" },\n"
        .. "  tower_params_list = { { dims = { 8 } }, { dims = { 8 } } } }(x)   -- {[B,1], [B,1]}",
      see = { "nn.CGC", "nn.MMoE" } },
    { "nn.FeedForwardExperts", nil, "num_experts independent FFNs (TF Model Garden): Dense(d_ff, activation), "
      .. "inner dropout, Dense(H), output dropout; called on [E, tokens, H] (MoeLayer calls :grouped).",
      options = { { "num_experts", "integer", nil, "E" }, { "d_ff", "integer", nil, "the hidden size" },
        { "inner_dropout", "number", nil, "in [0, 1)" }, { "output_dropout", "number", nil, "in [0, 1)" },
        { "activation", ACT, nil, "" }, { "kernel_initializer", INIT, nil, "both kernels" },
        { "bias_initializer", INIT, nil, "both biases" } } },
    { "nn.FeedForwardExperts:grouped", "experts:grouped(rows, counts, expert)", "The experts on rows [A, H] sorted by "
      .. "expert, counts [E] (int64) rows each, through moe.grouped_matmul.", returns = "an [A, H] tensor." },
    { "nn.TokensChooseMaskedRouter", nil, "A router where every token picks its top-k experts (Switch/GShard "
      .. "style): every token's first choice is placed before any token's second, in token order (or by "
      .. "descending top-1 probability with batch_prioritized_routing); a pair beyond an expert's capacity is "
      .. "dropped; the combine weight is the router probability.",
      details = "Adds the Switch load-balancing loss (times its weight) and the z-loss; reports load_balancing_loss, "
        .. "router_z_loss, unscaled_router_z_loss, fraction_tokens_left_behind, router_confidence, expert_usage "
        .. "and expert_<e>_tokens through add_metric.",
      options = with(ROUTER_OPTS, {
        { "num_selected_experts", "integer", nil, "k, at most num_experts" },
        { "batch_prioritized_routing", "boolean", nil, "place tokens by descending top-1 probability" },
        { "ignore_padding_tokens", "boolean", nil, "an all-zero token is padding: never dispatched, left out of "
          .. "the load-balancing loss" },
        { "load_balancing_loss_weight", "number", nil, "weight of the load-balancing loss in the training loss" },
        { "renormalize_gates", "boolean", nil, "a token's kept top-k gates sum to 1" },
      }),
      example = "local r = moe.nn.TokensChooseMaskedRouter { num_experts = 8, num_selected_experts = 2 }" },
    { "nn.ExpertsChooseMaskedRouter", nil, "A router where every expert picks the capacity tokens of each group with "
      .. "the highest probability for it (no load-balancing loss; the metric is exported as 0, as TF Model Garden does).",
      options = ROUTER_OPTS },
    { "nn.MoeLayer", nil, "The sparse, token-routed MoE layer: x [B, S, H] (or [N, H]) -> the same shape. Tokens "
      .. "are routed per group of S * examples_per_group; each expert takes at most its capacity, "
      .. "int(round(capacity_factor * tokens_per_group / E)) with halves to even; a token dropped by every expert "
      .. "it chose outputs zeros.",
      details = "Dispatch is index-based (index_select, moe.grouped_matmul, index_add), forward and backward. "
        .. "layer.last_plan holds the last routing plan (token, expert, counts, gate). The router's losses and "
        .. "metrics join layer:losses() and layer:metrics(). With expert_parallel every rank must call the layer "
        .. "(forward and backward are collectives, with the same structure on every rank, even for a rank with no "
        .. "tokens); router and other weights stay data parallel (nn.expert_parallel_params lists the others).",
      options = {
        { "experts", "nn.FeedForwardExperts", "required", "the experts", extra = true },
        { "router", "a router", "required", "an nn.TokensChooseMaskedRouter or nn.ExpertsChooseMaskedRouter with "
          .. "the experts' num_experts", extra = true },
        { "train_capacity_factor", "number", nil, "capacity factor in training (> 0)" },
        { "eval_capacity_factor", "number", nil, "capacity factor in evaluation (> 0)" },
        { "examples_per_group", "number", nil, "sequences per routing group (> 0)" },
        { "dropless", "boolean", nil, "capacity grows to fit every token" },
        { "expert_parallel", "boolean", nil, "divide the experts among moe.distributed's ranks (rank r owns experts "
          .. "r*E/W+1 .. (r+1)*E/W; W must divide E): tokens travel to their expert's rank and back by all_to_all, "
          .. "forward and backward; the metrics rank_<r>_tokens (0-based r) and rank_imbalance (max/mean) show each "
          .. "rank's load. Each rank draws the whole layer's weights and keeps its slice, so 1 and N ranks start "
          .. "alike; get_weights, save and load see whole experts" },
      },
      probe = function(nn)
        return { experts = nn.FeedForwardExperts { num_experts = 1, d_ff = 1, name = "__doc_probe" },
          router = nn.TokensChooseMaskedRouter { num_experts = 1, name = "__doc_probe" } }
      end,
      example = "local layer = moe.nn.MoeLayer {\n"
        .. "  experts = moe.nn.FeedForwardExperts { num_experts = 8, d_ff = 64 },\n"
        .. "  router = moe.nn.TokensChooseMaskedRouter { num_experts = 8, num_selected_experts = 2 },\n"
        .. "  train_capacity_factor = 1.25 }\nlocal y = layer(moe.randn(2, 16, 32))" },
    { "nn.expert_parallel_params", "nn.expert_parallel_params(module)", "The weights that live on one rank only: "
      .. "the expert shards of expert-parallel MoeLayers. A data-parallel loop neither broadcasts nor all-reduces "
      .. "them; it divides their gradients by the world size (the global loss is the mean of the ranks' losses, and "
      .. "all_to_all's backward has summed every rank's share into the owner's gradient) and all-reduces the rest "
      .. "(mean).", returns = "a set {tensor = true}.",
      example = "local own = moe.nn.expert_parallel_params(model)\nfor _, p in ipairs(model:parameters()) do\n"
        .. "  if own[p] then p.grad = p.grad / W else moe.distributed.all_reduce(p.grad, \"mean\") end\nend" },
    { "nn.MoeLayer:capacity", "layer:capacity(tokens_per_group)", "Each expert's capacity for a group of that many "
      .. "tokens, in the current mode (train or eval capacity factor); -1 when dropless.", returns = "an integer." },
    { "nn.MoeLayerWithBackbone", nil, "An nn.MoeLayer plus a dense FFN on every token: output = moe_layer(x) + "
      .. "Dense(H)(dropout(activation(Dense(backbone_d_ff)(x)))).",
      options = {
        { "moe_layer", "nn.MoeLayer", "required", "the sparse layer", extra = true },
        { "backbone_d_ff", "integer", nil, "the backbone's hidden size" },
        { "dropout_rate", "number", nil, "dropout after the backbone's activation" },
        { "activation", ACT, nil, "the backbone's activation" },
        { "kernel_initializer", INIT, nil, "the backbone's kernels" },
      },
      probe = function(nn)
        return { moe_layer = nn.MoeLayer { name = "__doc_probe",
          experts = nn.FeedForwardExperts { num_experts = 1, d_ff = 1, name = "__doc_probe" },
          router = nn.TokensChooseMaskedRouter { num_experts = 1, name = "__doc_probe" } } }
      end },
  } }

-- ------------------------------------------------------------------ models

S[#S + 1] = { id = "models", title = "Models: Sequential, Model, Input, load", intro =
  "Models are modules: they have every nn.Module method, including compile, fit, evaluate, predict and save.",
  entries = {
    { "Sequential", "moe.Sequential{layer, ..., [input_shape], [name]}", "A stack of layers, each called on the "
      .. "previous one's output.",
      details = "A moe.Input may come first instead of input_shape. With an input shape the model builds at once "
        .. "(summary and parameters work before the first call).",
      aliases = { "nn.Sequential" },
      options = { { "name", "string", "\"sequential_<n>\"", "" },
        { "input_shape", "list of integers", "none", "the input's shape without the batch dim" } },
      probe_options = probe_with("Sequential"),
      example = "local m = moe.Sequential { moe.nn.Dense { units = 8, activation = \"relu\" },\n"
        .. "  moe.nn.Dense { units = 1 }, input_shape = { 4 } }\nprint(m)" },
    { "Sequential:add", "model:add(layer)", "Appends a layer (its name must be new to the model). Returns the model." },
    { "Sequential:build_for", "model:build_for(input_shape)", "Builds every layer for inputs of input_shape (without "
      .. "the batch dim) by one pass over a placeholder batch." },
    { "Model", "moe.Model{inputs = ..., outputs = ..., [name]}", "A functional model: the graph of layers called on "
      .. "moe.Input tensors between inputs and outputs.",
      details = "inputs and outputs are a symbolic tensor, a list or a table keyed by name; layers may be shared "
        .. "between branches, and models called as layers. Called on a tensor (or a table of tensors shaped like "
        .. "inputs), it returns outputs shaped like `outputs`.",
      aliases = { "nn.Model" },
      options = { { "inputs", "moe.Input or a table of them", "required", "" },
        { "outputs", "symbolic tensor or a table of them", "required", "" }, { "name", "string", "\"model_<n>\"", "" } },
      probe_options = probe_with("Model"),
      example = "local x = moe.Input { shape = { 20 } }\nlocal h = moe.nn.Dense { units = 8, activation = \"relu\" }(x)\n"
        .. "local m = moe.Model { inputs = x, outputs = { y = moe.nn.Dense { units = 1, name = \"y\" }(h) } }" },
    { "Model:input_names", "model:input_names()", "The names of the model's inputs, in the order of the inputs "
      .. "structure.", returns = "a list of strings." },
    { "Model:output_names", "model:output_names()", "The outputs' names: the keys of a table of outputs, or (for a "
      .. "list or a single output) the names of the layers that produce them, as Keras names them.",
      returns = "a table." },
    { "Input", "moe.Input{shape, [name], [dtype]}", "A symbolic input of a functional model; the batch dim is implied.",
      details = "Calling layers on it records the graph moe.Model takes; a symbolic tensor has :size(d) and :dim() "
        .. "(the batch size is -1) but no arithmetic: use nn.Add, nn.Multiply, nn.Lambda ...",
      options = { { "shape", "list of integers", "required", "the sizes without the batch dim" },
        { "name", "string", "\"input_<n>\"", "" },
        { "dtype", "string", "\"float32\"", "int64 for Embedding ids" } },
      returns = "a symbolic tensor.", example = "local x = moe.Input { shape = { 20 }, name = \"features\" }" },
    { "load", "moe.load(path, [opts])", "Rebuilds a model saved with model:save, bit for bit: the architecture, "
      .. "weights, layer names and (when it was compiled) the optimizer and its state.",
      details = "Only registered layer classes are constructed (no code is read from the file); checksums, tensor "
        .. "names, shapes and dtypes are checked, and anything unexpected is an error.",
      options = { { "custom_objects", "table", "none", "name -> function for Lambda layers" },
        { "compile", "boolean", "true", "false: leave the optimizer out" },
        { "expert_parallel", "boolean", "as saved", "make every MoeLayer expert parallel or not (the file holds "
          .. "whole experts either way; an expert-parallel layer keeps this rank's slice)" } },
      returns = "the model.", example = "local again = moe.load(\"census.moe\")", see = { "nn.Module:save" },
      probe_options = function(moe) return moe.load("x.moe", { __doc_probe = true }) end },
  } }

-- ------------------------------------------------------------------ Module methods

-- a trainer method's options, listed by its unknown-option error
local function probe_method(method, ...)
  local args = { ... }
  return function(moe)
    local m = moe.Sequential { name = "__doc_probe" }
    local a = {}
    for i, v in ipairs(args) do a[i] = v == "PROBE" and { __doc_probe = true } or v end
    return m[method](m, unpack(a))
  end
end

local FIT_OPTS = {
  { "x", "tensor or table of tensors", "required", "the inputs (rows are samples)" },
  { "y", "tensor or table of tensors", "required", "the targets, by output name for several outputs" },
  { "batch_size", "integer", "32", "" },
  { "epochs", "integer", "1", "" },
  { "validation_data", "table", "none", "{x, y[, sample_weight]} or {x = ..., y = ..., sample_weight = ...}: "
    .. "evaluated after every epoch, logged with a val_ prefix" },
  { "validation_split", "number", "none", "in (0, 1): the last rows (before shuffling) become validation data" },
  { "shuffle", "boolean", "true", "shuffle the rows every epoch" },
  { "sample_weight", "tensor", "none", "one weight per row" },
  { "class_weight", "table", "none", "weight by label value (0/1 for binary targets, 1-based class ids "
    .. "otherwise); by output name for several outputs" },
  { "callbacks", "list", "none", "moe.callbacks objects or tables with on_* methods" },
  { "verbose", "integer or \"auto\"", "1", "0 silent; 1 a progress line on a terminal and a line per epoch; "
    .. "2 a line per epoch" },
  { "initial_epoch", "integer", "0", "epochs are numbered from initial_epoch + 1" },
  { "seed", "integer", "none", "seeds the shuffle (each epoch's order from seed and the epoch)" },
  { "steps_per_epoch", "integer", "none", "at most this many batches per epoch" },
  { "distributed", "boolean", "several ranks", "data parallel over mpirun's ranks (false: each alone)" },
}

S[#S + 1] = { id = "module", title = "nn.Module methods", intro =
  "Every layer and model has these (`model:fit{...}`, `layer:get_weights()`); the trainer's methods (compile, "
  .. "compute_loss, train_on_batch, fit, evaluate, predict) live in lua/moe/trainer.lua.",
  entries = {
    { "nn.Module:extend", "nn.Module:extend(name)", "A new layer class named name, derived from this one (and "
      .. "registered for moe.load).", returns = "the class.", example = "local Scale = moe.nn.Module:extend(\"Scale\")" },
    { "nn.Module:init", "Class:init(opts)", "The constructor a class defines; a subclass's init calls its parent's "
      .. "(nn.Module.init(self, opts)) first. layer = Class{...} runs it." },
    { "nn.Module:build", "layer:build(input_shape)", "Makes the weights that depend on the input's shape ({batch, "
      .. "features...}; the batch may be -1). Called by the first call; calling it yourself builds the layer (so "
      .. "set_weights after it sticks); a Sequential's builds every layer." },
    { "nn.Module:forward", "layer:forward(...)", "The computation a class defines; layer(...) calls it (after "
      .. "building, with autocasting, losses and metrics reset per pass)." },
    { "nn.Module:add_weight", "layer:add_weight(name, shape, [opts])", "Makes a weight (a parameter, or a buffer "
      .. "when not trainable) and stores it as layer[name].",
      options = { { "initializer", INIT, "\"glorot_uniform\"", "" }, { "regularizer", REG, "none", "" },
        { "constraint", CON, "none", "" }, { "trainable", "boolean", "true", "" },
        { "dtype", "string", "the layer's", "" } },
      returns = "the tensor.", example = "self:add_weight(\"alpha\", { 1 }, { initializer = \"ones\" })" },
    { "nn.Module:add_module", "layer:add_module(name, child)", "Registers child (a module) as a sub-layer "
      .. "layer[name] (assigning a module to a field does the same).", returns = "the child." },
    { "nn.Module:add_loss", "layer:add_loss(t)", "Adds an auxiliary loss (a tensor) for this forward pass; it joins "
      .. "the training loss in compute_loss, fit and train_on_batch." },
    { "nn.Module:add_metric", "layer:add_metric(name, value)", "Reports a metric (a number or tensor) for this "
      .. "forward pass; fit and evaluate log its mean over the batches." },
    { "nn.Module:children", "layer:children()", "The direct sub-layers, in order.", returns = "a list." },
    { "nn.Module:modules", "layer:modules()", "Every module of the tree, depth first, each once, as {path, module} "
      .. "pairs (the root's path is \"\").", returns = "a list (do not modify it)." },
    { "nn.Module:get_layer", "model:get_layer(name)", "The sub-layer of that name (Keras's get_layer), or an error "
      .. "listing the names.", returns = "the layer." },
    { "nn.Module:parameters", "model:parameters()", "The trainable weights, each once (an error naming the unbuilt "
      .. "layer until the model is built).", returns = "a list of tensors.",
      example = "opt:step(model:parameters())" },
    { "nn.Module:named_parameters", "model:named_parameters()", "An iterator over (\"layer/sub/kernel\", tensor) of "
      .. "the trainable weights.", example = "for name, p in model:named_parameters() do print(name, p:shape()) end" },
    { "nn.Module:named_weights", "model:named_weights()", "Every weight (trainable and not), in Keras's order.",
      returns = "a list of names and a list of tensors." },
    { "nn.Module:count_params", "model:count_params()", "The number of weight values.",
      returns = "the total and the trainable count." },
    { "nn.Module:get_weights", "model:get_weights()", "Copies of every weight in Keras's order (Dense: kernel [in, "
      .. "out], then bias; a MoE layer: its reference layer's list). An expert-parallel layer's experts come whole, "
      .. "gathered from every rank (so every rank must call it), as a 1-rank model lists them.",
      returns = "a list of tensors." },
    { "nn.Module:set_weights", "model:set_weights(list)", "Copies the list (tensors or nested tables, in "
      .. "get_weights' order and shapes) into the weights; an expert-parallel layer takes whole experts and keeps "
      .. "this rank's slice." },
    { "nn.Module:zero_grad", "model:zero_grad()", "Sets every parameter's .grad to nil." },
    { "nn.Module:train", "model:train([on = true])", "The training mode (dropout, batch statistics) for the module "
      .. "and its children; train(false) is eval(). Returns the module." },
    { "nn.Module:eval", "model:eval()", "The evaluation mode. Returns the module." },
    { "nn.Module:is_training", "model:is_training()", "Whether the module is in training mode." },
    { "nn.Module:to", "model:to(what)", "Converts every weight to \"float32\" or \"float64\", or moves them to "
      .. "\"cuda\" or \"cpu\" (weights built later are made there). Returns the module." },
    { "nn.Module:double", "model:double()", "model:to(\"float64\")." },
    { "nn.Module:float", "model:float()", "model:to(\"float32\")." },
    { "nn.Module:cuda", "model:cuda()", "model:to(\"cuda\")." },
    { "nn.Module:cpu", "model:cpu()", "model:to(\"cpu\")." },
    { "nn.Module:device", "model:device()", "The device of the weights (the default device before they are built).",
      returns = "\"cpu\" or \"cuda\"." },
    { "nn.Module:losses", "model:losses()", "The auxiliary losses of the last forward pass and the weight "
      .. "regularization penalties (Keras's model.losses).", returns = "a list of tensors." },
    { "nn.Module:metrics", "model:metrics()", "The metrics layers added in the last forward pass.",
      returns = "a table name -> number." },
    { "nn.Module:output_shape", "layer:output_shape()", "The output shape recorded at the first call (the batch dim "
      .. "as called), or nil before it." },
    { "nn.Module:get_config", "layer:get_config()", "The options that rebuild the layer (what a checkpoint stores).",
      returns = "a table." },
    { "nn.Module:summary", "model:summary([opts])", "Prints a table of the layers, their output shapes and "
      .. "parameter counts, with the totals.",
      options = { { "print_fn", "function or false", "print", "where the text goes; false: return it instead" } },
      returns = "nothing, or the text with print_fn = false.", example = "model:summary()" },
    { "nn.Module:save", "model:save(path)", "Writes the model to one safetensors file (atomic, with checksums): the "
      .. "weights and optimizer state as tensors, the architecture, layer names, optimizer settings and compile "
      .. "options as JSON metadata.",
      details = "A model with expert-parallel layers saves collectively: every rank calls save, the experts (and "
        .. "their optimizer state) are gathered whole, rank 0 writes the one file, and every rank returns once it is "
        .. "complete (or raises rank 0's failure). The file is the one a 1-rank model writes, and loads at any world "
        .. "size that divides the experts.", see = { "load" } },
    { "nn.Module:compile", "model:compile{optimizer, loss, loss_weights, metrics}", "Sets up training; every name is "
      .. "checked here (an unknown optimizer, loss, metric or output name is an error naming compile).",
      options = {
        { "optimizer", "optimizer or name", "\"adam\"", "an moe.optim object, or sgd, adam, adamw, rmsprop, adagrad" },
        { "loss", "name, function, {name, opts...} or table", "\"mean_squared_error\"", "a loss for every output, or "
          .. "a table of losses by output name" },
        { "loss_weights", "table", "none", "output name -> weight" },
        { "metrics", "list or table", "none", "metric names or objects for every output, or lists by output name" },
      },
      returns = "the model.", probe_options = probe_method("compile", "PROBE"),
      example = "model:compile { optimizer = moe.optim.Adam { lr = 1e-3 }, loss = \"binary_crossentropy\",\n"
        .. "  metrics = { \"auc\" } }" },
    { "nn.Module:compute_loss", "model:compute_loss(y_true, y_pred, [sample_weight])", "The compiled loss of outputs "
      .. "y_pred against y_true (tensors, or tables keyed alike), weighted, plus the auxiliary losses.",
      returns = "the total (a tensor) and the per-output losses by name." },
    { "nn.Module:train_on_batch", "model:train_on_batch(x, y, [sample_weight])", "One optimizer step on one batch "
      .. "(moved to the model's device).", returns = "the loss, a number." },
    { "nn.Module:fit", "model:fit{x, y, ...}", "Trains for epochs over batches of x and y, with Keras's logs, "
      .. "callbacks and validation. Ctrl-C stops after the current batch; a NaN or infinite loss stops training "
      .. "and keeps the last finite weights.", options = FIT_OPTS, probe_options = probe_method("fit", "PROBE"),
      returns = "a History: history.history[name] (per-epoch values: loss, <output>_<metric>, val_...), "
        .. "history.epoch, history:last(name), history.stopped (why it stopped early, or nil).",
      example = "local h = model:fit { x = x, y = y, batch_size = 32, epochs = 5, validation_split = 0.2 }\n"
        .. "print(h:last(\"val_loss\"))", see = { "History", "callbacks" } },
    { "nn.Module:evaluate", "model:evaluate{x, y, [batch_size = 256], [sample_weight], [callbacks]}", "The compiled "
      .. "loss and metrics over x and y in evaluation mode, without recording (evaluate() without a table points at "
      .. "eval(), the mode switch).",
      options = { { "x", "tensor or table", "required", "" }, { "y", "tensor or table", "required", "" },
        { "batch_size", "integer", "256", "" }, { "sample_weight", "tensor", "none", "" },
        { "callbacks", "list", "none", "their on_test_begin / on_test_end run" },
        { "distributed", "boolean", "several ranks", "each rank evaluates its share of the rows (the same number of "
          .. "batches on every rank) and the logs are over all of them" },
        { "verbose", "integer", "none", "accepted for Keras's name; evaluate prints nothing" } },
      probe_options = probe_method("evaluate", "PROBE"),
      returns = "a table name -> number (loss, metrics, layer metrics)." },
    { "nn.Module:predict", "model:predict(x, [opts])", "The outputs for x in evaluation mode, without recording, "
      .. "batch by batch on the model's device, returned on x's device.",
      options = { { "batch_size", "integer", "256", "" },
        { "verbose", "integer", "none", "accepted for Keras's name; predict prints nothing" } },
      probe_options = probe_method("predict", "x", "PROBE"),
      returns = "a tensor, or a table keyed like the model's outputs; for 0 rows, empty [0, ...] tensors." },
    { "History", "History", "What fit returns (also a callback fit adds last): the per-epoch logs.",
      options_title = "Fields:",
      options = { { "history", "table", nil, "name -> list of per-epoch values" },
        { "epoch", "list", nil, "the epochs run" }, { "params", "table", nil, "{epochs, batch_size, samples}" },
        { "stopped", "string or nil", nil, "why training stopped early (NaN loss, Ctrl-C)" } } },
    { "History:last", "history:last(name)", "The last epoch's value of a logged quantity (nil if it was not logged).",
      example = "history:last(\"val_income_auc\")" },
    { "History:on_epoch_end", "history:on_epoch_end(epoch, logs)", "Records an epoch's logs (fit calls it)." },
  } }

S.internal = {
  { "^nn%.call_child$", "containers' call of a child that names it in errors" },
  { "^nn%.check_built$", "the not-built error of parameters()" },
  { "^nn%.class$", "defines a class (user code uses nn.Module:extend)" },
  { "^nn%.constraint_of$", "parameter -> constraint, for the optimizers" },
  { "^nn%.in_call$", "whether a layer call is running" },
  { "^nn%.is_symbolic$", "the functional API's test" },
  { "^nn%.keras_weights$", "get_weights' list" },
  { "^nn%.note_name$", "the automatic names' counters" },
  { "^nn%.out_shape_str$", "summary's shape text" },
  { "^nn%.positive_int$", "option checks of the layers" },
  { "^nn%.round_half_even$", "the sparse layer's capacity rounding" },
  { "^nn%.router_logits$", "the routers' shared forward" },
  { "^nn%.set_weight_budget$", "moe.load's allocation limit" },
  { "^nn%.expert_shards$", "expert_parallel_params with each shard's rank and slice (save, load)" },
  { "^nn%.shard_of$", "get_weights' views that are one rank's slice" },
  { "^nn%.shape_str$", "error messages' shape text" },
  { "^nn%.shapes_of$", "input shapes for build" },
  { "^nn%.structure_changed$", "cache invalidation" },
  { "^nn%.wrap_build$", "marks layers built" },
  { ":summary_rows$", "summary's rows" },
}

return S
