-- Documentation entries: optimizers, schedules, losses, metrics, callbacks (read by moe.doc).

local S = {}

-- an optimizer's defaults come from the class itself (its hyperparameters)
local function hp_of(name) return function(moe) return moe.optim[name]().hp end end
local function probe(path)
  return function(moe)
    local f = moe
    for part in path:gmatch("[^%.]+") do f = f[part] end
    return f { __doc_probe = true }
  end
end
local CLIP = {
  { "clip_norm", "number", "none", "clip the gradients' global norm to this (also clipnorm, global_clipnorm); "
    .. "step() then returns the norm before clipping" },
  { "clip_value", "number", "none", "clip each gradient element to [-v, v] (also clipvalue)" },
}
local function opt_entry(name, summary, opts, example)
  for _, c in ipairs(CLIP) do opts[#opts + 1] = c end
  return { "optim." .. name, ("moe.optim.%s{...}"):format(name), summary, options = opts,
    defaults_from = hp_of(name), probe_options = probe("optim." .. name),
    details = "Options take Keras's names too (learning_rate, beta_1, beta_2, epsilon, rho). lr may be a "
      .. "schedule (a function of the step count, or an moe.optim.schedules object). Hyperparameters are checked "
      .. "as PyTorch does; NaN and infinite values are refused.",
    example = example or ("local opt = moe.optim.%s { lr = 1e-3 }\nopt:step(model:parameters())"):format(name),
    see = { "optim.Optimizer:step" } }
end
local LR = { "lr", "number or schedule", nil, "the learning rate (also learning_rate)" }
local WD = { "weight_decay", "number", nil, "L2 penalty added to the gradient (PyTorch's)" }

S[#S + 1] = { id = "optim", title = "Optimizers (moe.optim)", intro =
  "PyTorch's update rules and defaults (`torch.optim`). `opt:step(params)` updates the given parameters from their "
  .. "`.grad` in one fused C pass, then applies the constraints of the layers that own them; parameters without a "
  .. "gradient are skipped.",
  entries = {
    { "optim", "moe.optim", "Optimizers (SGD, Adam, AdamW, RMSprop, Adagrad), learning-rate schedules and "
      .. "ReduceLROnPlateau." },
    opt_entry("SGD", "Stochastic gradient descent, with momentum, dampening and Nesterov momentum as torch.optim.SGD.",
      { LR, { "momentum", "number", nil, ">= 0" }, { "dampening", "number", nil, "in [0, 1]" },
        { "nesterov", "boolean", nil, "needs momentum > 0 and dampening 0" }, WD }),
    opt_entry("Adam", "Adam (Kingma and Ba), as torch.optim.Adam.",
      { LR, { "beta1", "number", nil, "in [0, 1) (also beta_1)" }, { "beta2", "number", nil, "in [0, 1) (also beta_2)" },
        { "eps", "number", nil, "(also epsilon)" }, WD }),
    opt_entry("AdamW", "Adam with decoupled weight decay, as torch.optim.AdamW.",
      { LR, { "beta1", "number", nil, "in [0, 1)" }, { "beta2", "number", nil, "in [0, 1)" }, { "eps", "number", nil, "" },
        { "weight_decay", "number", nil, "decoupled: the weights shrink by lr * weight_decay each step" } }),
    opt_entry("RMSprop", "RMSprop, as torch.optim.RMSprop.",
      { LR, { "alpha", "number", nil, "the square average's decay, in [0, 1] (also rho)" }, { "eps", "number", nil, "" },
        WD, { "momentum", "number", nil, ">= 0" } }),
    opt_entry("Adagrad", "Adagrad, as torch.optim.Adagrad.",
      { LR, { "lr_decay", "number", nil, ">= 0" }, { "eps", "number", nil, "" }, WD,
        { "initial_accumulator_value", "number", nil, ">= 0" } }),
    { "optim.Optimizer", "moe.optim.Optimizer", "The methods every optimizer has (SGD, Adam, ... are built on it)." },
    { "optim.Optimizer:step", "opt:step(params, [{skip = flag}])", "One update of every parameter in the list that "
      .. "has a gradient (a schedule's lr is taken for this step first).",
      details = "With clip_norm set it returns the global gradient norm before clipping: a number for CPU "
        .. "parameters, a 0-dim float64 device tensor for CUDA ones (norm:item() reads it). skip: a one-element bool "
        .. "tensor on the parameters' device; when it holds true the update changes nothing (decided on the "
        .. "device), though the step counters advance (retract takes them back).",
      returns = "the gradient norm with clip_norm, else nil.", example = "loss:backward()\nopt:step(model:parameters())" },
    { "optim.Optimizer:retract", "opt:retract()", "Takes back the counters of the last step (its parameters' step "
      .. "counts, the iterations), for a step that step{skip} called off; the weights and moments are left as they "
      .. "are. Only the last step can be taken back: a second retract is an error.",
      example = "local bad = moe.no_grad(function() return (loss - loss):ne(0) end) -- NaN or an infinity\n"
        .. "loss:backward()\nopt:step(model:parameters(), { skip = bad })\nif bad:item() then opt:retract() end" },
    { "optim.Optimizer:zero_grad", "opt:zero_grad(params)", "Sets .grad of every parameter in the list to nil." },
    { "optim.Optimizer:get_lr", "opt:get_lr()", "The current learning rate.", returns = "a number." },
    { "optim.Optimizer:set_lr", "opt:set_lr(lr)", "Sets the learning rate (a finite number >= 0)." },
    { "optim.Optimizer:get_config", "opt:get_config()", "{class_name, config = hyperparameters, iterations} (what "
      .. "a checkpoint stores)." },
    { "optim.Optimizer:state_tensors", "opt:state_tensors(names, params)", "The per-parameter state (moments, step "
      .. "counts) as named tensors for a checkpoint.", returns = "a table name -> tensor, and the names with state." },
    { "optim.Optimizer:load_state_tensors", "opt:load_state_tensors(names, params, tensors, with_state)", "Restores "
      .. "the state state_tensors wrote (strict: missing, misshapen or unused tensors are errors)." },
    { "optim.get", "moe.optim.get(spec)", "An optimizer from a name (sgd, adam, adamw, rmsprop, adagrad: a new one "
      .. "with the defaults) or an optimizer object (itself)." },
    { "optim.from_config", "moe.optim.from_config(config)", "An optimizer from get_config's table (moe.load uses it)." },
    { "optim.schedules", "moe.optim.schedules", "Learning-rate schedules: objects called with the optimizer's step "
      .. "count (0 for the first step) that return the learning rate; give one as lr.", namespace = true,
      example = "local opt = moe.optim.Adam { lr = moe.optim.schedules.CosineDecay {\n"
        .. "  initial_learning_rate = 1e-3, decay_steps = 1000 } }" },
    { "optim.schedules.StepDecay", "moe.optim.schedules.StepDecay{...}", "lr = initial_learning_rate * "
      .. "gamma^floor(step / step_size) (PyTorch's StepLR).", covers = { "get_config" },
      options = { { "initial_learning_rate", "number", "required", "" }, { "step_size", "integer", "required", "" },
        { "gamma", "number", "0.1", "" } } },
    { "optim.schedules.ExponentialDecay", "moe.optim.schedules.ExponentialDecay{...}", "lr = initial_learning_rate * "
      .. "decay_rate^(step / decay_steps), the exponent floored when staircase (Keras).", covers = { "get_config" },
      options = { { "initial_learning_rate", "number", "required", "" }, { "decay_steps", "integer", "required", "" },
        { "decay_rate", "number", "required", "" }, { "staircase", "boolean", "false", "" } } },
    { "optim.schedules.CosineDecay", "moe.optim.schedules.CosineDecay{...}", "A linear warm-up from "
      .. "initial_learning_rate to warmup_target over warmup_steps, then a cosine from the peak down to alpha * peak "
      .. "over decay_steps (Keras 3).", covers = { "get_config" },
      options = { { "initial_learning_rate", "number", "required", "" }, { "decay_steps", "integer", "required", "" },
        { "alpha", "number", "0", "the final fraction of the peak" },
        { "warmup_target", "number", "none", "the peak (none: no warm-up, the peak is initial_learning_rate)" },
        { "warmup_steps", "integer", "0", "" } } },
    { "optim.schedules.from_config", "moe.optim.schedules.from_config(config)", "A schedule from its get_config table." },
    { "optim.ReduceLROnPlateau", "moe.optim.ReduceLROnPlateau{optimizer, ...}", "Lowers an optimizer's learning rate "
      .. "when a monitored value stops improving: call plateau:step(value) once per epoch (it returns the lr).",
      details = "After patience epochs without an improvement beyond min_delta the lr becomes max(lr * factor, "
        .. "min_lr) (a schedule is dropped), then cooldown epochs pass before counting again. "
        .. "moe.callbacks.ReduceLROnPlateau does the same inside fit.",
      options = { { "optimizer", "optimizer", "required", "" }, { "mode", "string", "\"min\"", "min or max" },
        { "factor", "number", "0.1", "in (0, 1)" }, { "patience", "integer", "10", "" },
        { "min_delta", "number", "1e-4", "" }, { "cooldown", "integer", "0", "" }, { "min_lr", "number", "0", "" } } },
  } }

-- ------------------------------------------------------------------ losses

local LOSS_OPTS = {
  { "reduction", "string", "\"mean\"", "\"mean\" (Keras's sum_over_batch_size: the sum of the weighted per-sample "
    .. "losses over the batch size), \"sum\" or \"none\" (the per-sample values)" },
  { "sample_weight", "tensor", "none", "[B], or broadcastable to the per-sample losses" },
}
local function loss_opts(extra)
  local out = {}
  for _, o in ipairs(extra or {}) do out[#out + 1] = o end
  for _, o in ipairs(LOSS_OPTS) do out[#out + 1] = o end
  return out
end
local LOGITS = { "from_logits", "boolean", "false", "y_pred holds logits rather than probabilities" }
local SMOOTH = { "label_smoothing", "number", "0", "in [0, 1]" }

S[#S + 1] = { id = "losses", title = "Losses (moe.losses)", intro =
  "`loss(y_true, y_pred, [opts])` -> a tensor. As in Keras, a loss is first averaged over the last axis (one value "
  .. "per sample), then reduced over the batch. Every loss is numerically stable (no NaN or infinity at "
  .. "probabilities of 0 or 1, or at logits of +-100).",
  entries = {
    { "losses", "moe.losses", "Loss functions with Keras's names; compile{loss = name} takes them by name." },
    { "losses.mean_squared_error", "moe.losses.mean_squared_error(y_true, y_pred, [opts])", "The mean of (y_pred - "
      .. "y_true)^2 per sample, reduced over the batch.", options = loss_opts(), aliases = { "losses.mse" },
      example = "moe.losses.mse(y, p)" },
    { "losses.mean_absolute_error", "moe.losses.mean_absolute_error(y_true, y_pred, [opts])", "The mean of |y_pred - "
      .. "y_true| per sample.", options = loss_opts(), aliases = { "losses.mae" } },
    { "losses.huber", "moe.losses.huber(y_true, y_pred, [opts])", "0.5 e^2 where |e| <= delta, delta (|e| - 0.5 "
      .. "delta) elsewhere, e = y_pred - y_true.", options = loss_opts { { "delta", "number", "1", "> 0" } },
      aliases = { "losses.huber_loss" } },
    { "losses.binary_crossentropy", "moe.losses.binary_crossentropy(y_true, y_pred, [opts])", "Binary cross-entropy "
      .. "from probabilities (clipped to [1e-7, 1 - 1e-7], as Keras) or from logits (softplus(z) - z y, exact for any z).",
      options = loss_opts { LOGITS, SMOOTH }, aliases = { "losses.bce" },
      example = "moe.losses.binary_crossentropy(y, logits, { from_logits = true })" },
    { "losses.categorical_crossentropy", "moe.losses.categorical_crossentropy(y_true, y_pred, [opts])",
      "Cross-entropy over the last axis: y_true one-hot [B, C], or integer class ids [B] (1-based).",
      options = loss_opts { LOGITS, SMOOTH } },
    { "losses.sparse_categorical_crossentropy", "moe.losses.sparse_categorical_crossentropy(y_true, y_pred, [opts])",
      "Cross-entropy with integer class ids 1..C as y_true ([B] or [B, 1]).", options = loss_opts { LOGITS, SMOOTH } },
    { "losses.get", "moe.losses.get(spec)", "A loss function from a name, a function, or {name, opt = ...} (e.g. "
      .. "{\"binary_crossentropy\", from_logits = true})." },
  } }

-- ------------------------------------------------------------------ metrics

local METRIC_OPTS = { { "name", "string", "the metric's name", "the name in the logs" },
  { "threshold", "number", "0.5", "a binary prediction is positive above it" } }
local function metric_class(name, what, key)
  return { "metrics." .. name, ("moe.metrics.%s{...}"):format(name), what .. (" (the stateful form of "
    .. "compile{metrics = {\"%s\"}})."):format(key), options = METRIC_OPTS,
    example = ("local m = moe.metrics.%s {}\nm:update(y, p)\nprint(m:result())"):format(name) }
end

S[#S + 1] = { id = "metrics", title = "Metrics (moe.metrics)", intro =
  "Functions of whole sets, and stateful objects that the trainer updates batch by batch: `m:update(y_true, "
  .. "y_pred, [sample_weight])`, `m:result()`, `m:reset()`. The stateful ones are exact over an epoch (counts and "
  .. "sums; AUC keeps every label and score), not means of batch values.",
  entries = {
    { "metrics", "moe.metrics", "Evaluation metrics with Keras's names and conventions." },
    { "metrics.roc_auc", "moe.metrics.roc_auc(y_true, y_score, [sample_weight])", "The exact area under the ROC "
      .. "curve; tied scores count half, as scikit-learn's roc_auc_score. An error when only one class is present.",
      aliases = { "metrics.auc" }, returns = "a number.", example = "moe.metrics.roc_auc(y, p)" },
    { "metrics.binary_accuracy", "moe.metrics.binary_accuracy(y_true, y_pred, [sample_weight])", "The fraction of "
      .. "rows where (y_pred > 0.5) equals (y_true > 0.5).", returns = "a number." },
    { "metrics.accuracy", "moe.metrics.accuracy(y_true, y_pred, [sample_weight])", "Accuracy: argmax agreement for "
      .. "class scores [n, k] (targets one-hot or class ids), binary accuracy for [n] or [n, 1].", returns = "a number." },
    { "metrics.categorical_accuracy", "moe.metrics.categorical_accuracy(y_true, y_pred, [sample_weight])", "The "
      .. "fraction of rows whose argmax of y_pred [n, classes] matches y_true (one-hot or class ids).",
      returns = "a number." },
    { "metrics.precision", "moe.metrics.precision(y_true, y_pred, [sample_weight])", "tp / (tp + fp) of binary "
      .. "predictions (y_pred > 0.5); 0 when nothing is predicted positive.", returns = "a number." },
    { "metrics.recall", "moe.metrics.recall(y_true, y_pred, [sample_weight])", "tp / (tp + fn) of binary "
      .. "predictions.", returns = "a number." },
    { "metrics.mse", "moe.metrics.mse(y_true, y_pred, [sample_weight])", "The mean squared error (per row over the "
      .. "other dims, then over rows).", returns = "a number." },
    { "metrics.mae", "moe.metrics.mae(y_true, y_pred, [sample_weight])", "The mean absolute error.",
      returns = "a number." },
    { "metrics.get", "moe.metrics.get(spec)", "A fresh metric object from a name (auc, roc_auc, accuracy, acc, "
      .. "binary_accuracy, categorical_accuracy, precision, recall, mse, mean_squared_error, mae, "
      .. "mean_absolute_error), or an object with update, result and reset (itself)." },
    { "metrics.Metric", "moe.metrics.Metric", "The methods of every metric object." },
    { "metrics.Metric:update", "m:update(y_true, y_pred, [sample_weight])", "Adds a batch (predictions are detached)." },
    { "metrics.Metric:result", "m:result()", "The value over everything since the last reset (NaN for an empty "
      .. "mean, or an AUC missing a class).", returns = "a number." },
    { "metrics.Metric:reset", "m:reset()", "Forgets every batch." },
    { "metrics.Metric:sync", "m:sync(dist)", "Makes the state that of every rank's samples together (sums "
      .. "all-reduced; AUC gathers every label, score and weight, so it stays exact); every rank calls it. A "
      .. "distributed fit or evaluate calls it before result(); a metric of your own defines sync_impl(self, dist) "
      .. "for that." },
    metric_class("AUC", "Exact ROC-AUC over every batch since reset", "auc"),
    metric_class("Accuracy", "Accuracy (argmax for class scores, else binary)", "accuracy"),
    metric_class("BinaryAccuracy", "Binary accuracy", "binary_accuracy"),
    metric_class("CategoricalAccuracy", "Categorical accuracy", "categorical_accuracy"),
    metric_class("MeanSquaredError", "Mean squared error", "mse"),
    metric_class("MeanAbsoluteError", "Mean absolute error", "mae"),
    metric_class("Precision", "Precision of binary predictions", "precision"),
    metric_class("Recall", "Recall of binary predictions", "recall"),
  } }

-- ------------------------------------------------------------------ callbacks

local function cb_defaults(name, required)
  return function(moe) return moe.callbacks[name](required) end
end
local MODE = { "mode", "string", nil, "\"auto\" (max for names with acc, auc, precision or recall, else min), "
  .. "\"min\" or \"max\"" }
local MONITOR = { "monitor", "string", nil, "a name in the epoch's logs (loss, val_loss, val_<output>_auc, ...)" }
local VERBOSE = { "verbose", "integer", nil, "> 0 prints what the callback does" }

S[#S + 1] = { id = "callbacks", title = "Callbacks (moe.callbacks)", intro =
  "A callback is a table with any of the hooks `on_train_begin(logs)`, `on_train_end(logs)`, "
  .. "`on_epoch_begin(epoch, logs)`, `on_epoch_end(epoch, logs)`, `on_batch_begin(batch, logs)`, "
  .. "`on_batch_end(batch, logs)` (and `on_test_begin/end` for evaluate), called as methods; epochs and batches "
  .. "count from 1. fit sets `cb.model`; `cb.model.stop_training = true` stops training. Plain tables work too.",
  entries = {
    { "callbacks", "moe.callbacks", "Keras's training callbacks, for fit{callbacks = {...}}.",
      example = "model:fit { x = x, y = y, epochs = 20, validation_split = 0.2,\n"
        .. "  callbacks = { moe.callbacks.EarlyStopping { patience = 2, restore_best_weights = true } } }" },
    { "callbacks.EarlyStopping", "moe.callbacks.EarlyStopping{...}", "Stops training after patience epochs without "
      .. "an improvement of the monitored value beyond min_delta.",
      options = { MONITOR, MODE, { "patience", "integer", nil, "" }, { "min_delta", "number", nil, "" },
        { "baseline", "number", nil, "a value to beat from the start" },
        { "restore_best_weights", "boolean", nil, "at the end, the weights of the best epoch" }, VERBOSE },
      defaults_from = cb_defaults("EarlyStopping"), probe_options = probe("callbacks.EarlyStopping") },
    { "callbacks.ModelCheckpoint", "moe.callbacks.ModelCheckpoint{filepath, ...}", "Saves the model (model:save, "
      .. "atomic) after each epoch, or only when the monitored value improves.",
      options = { { "filepath", "string", "required", "may hold {epoch} and log names with a format: "
          .. "\"ckpt-{epoch}-{val_loss:.4f}.moe\"" },
        MONITOR, MODE, { "save_best_only", "boolean", nil, "" }, { "min_delta", "number", nil, "" }, VERBOSE },
      defaults_from = cb_defaults("ModelCheckpoint", { filepath = "x" }), probe_options = probe("callbacks.ModelCheckpoint") },
    { "callbacks.ReduceLROnPlateau", "moe.callbacks.ReduceLROnPlateau{...}", "Multiplies the optimizer's lr by "
      .. "factor (down to min_lr) after patience epochs without improvement, then waits cooldown epochs; logs lr.",
      options = { MONITOR, { "factor", "number", nil, "in (0, 1)" }, { "patience", "integer", nil, "" }, MODE,
        { "min_delta", "number", nil, "" }, { "cooldown", "integer", nil, "" }, { "min_lr", "number", nil, ">= 0" }, VERBOSE },
      defaults_from = cb_defaults("ReduceLROnPlateau"), probe_options = probe("callbacks.ReduceLROnPlateau") },
    { "callbacks.CSVLogger", "moe.callbacks.CSVLogger{filename, ...}", "One CSV row per epoch (the epoch, then the "
      .. "logs by name); the file is rewritten whole after each epoch (atomic rename).",
      options = { { "filename", "string", "required", "" }, { "separator", "string", nil, "" },
        { "append", "boolean", nil, "keep the rows of an existing file" } },
      defaults_from = cb_defaults("CSVLogger", { filename = "x" }), probe_options = probe("callbacks.CSVLogger") },
    { "callbacks.LearningRateScheduler", "moe.callbacks.LearningRateScheduler{schedule}", "Sets the optimizer's lr at "
      .. "the start of each epoch to schedule(epoch, lr); logs lr.",
      options = { { "schedule", "function", "required", "function(epoch, lr) -> new lr" },
        { "verbose", "integer", nil, "accepted (Keras's option); nothing is printed" } },
      defaults_from = cb_defaults("LearningRateScheduler", { schedule = function() end }),
      probe_options = probe("callbacks.LearningRateScheduler") },
    { "callbacks.TerminateOnNaN", "moe.callbacks.TerminateOnNaN{}", "Stops at the first batch whose loss is NaN or "
      .. "infinite (fit also stops on its own, keeping finite weights).", options = {},
      probe_options = probe("callbacks.TerminateOnNaN") },
    { "callbacks.TensorBoard", "moe.callbacks.TensorBoard{...}", "Writes the logs as TensorBoard scalars, laid out "
      .. "as Keras does: log_dir/train and log_dir/validation each get an event file (moe.tensorboard), which "
      .. "`tensorboard --logdir DIR` shows side by side.",
      details = "Every epoch writes epoch_<name> at step = the epoch (counted from 1): the loss, the compiled "
        .. "metrics, the layer metrics (a sparse router's router_z_loss, expert_<e>_tokens, ...) and "
        .. "epoch_learning_rate under train; the val_ values, without their prefix, under validation (a "
        .. "validation directory is made only when there are val_ values). update_freq \"batch\" or N also writes "
        .. "batch_<name> (batch_loss, ...) after every (N-th) batch, at step = the batch's number counted over all "
        .. "epochs and fits of this callback. Each record is flushed as it is written; the files close at the end "
        .. "of fit, and another fit starts new ones.",
      options = { { "log_dir", "string", nil, "the directory (made with its parents if missing, without a shell)" },
        { "update_freq", "string or integer", nil, "\"epoch\", \"batch\" or N (every N batches)" } },
      defaults_from = cb_defaults("TensorBoard"), probe_options = probe("callbacks.TensorBoard"),
      example = "model:fit { x = x, y = y, epochs = 10, validation_split = 0.2,\n"
        .. "  callbacks = { moe.callbacks.TensorBoard { log_dir = \"runs/exp1\" } } }\n"
        .. "-- then: tensorboard --logdir runs/exp1",
      see = { "tensorboard.SummaryWriter" } },
    { "callbacks.LambdaCallback", "moe.callbacks.LambdaCallback{on_epoch_end = fn, ...}", "A callback from plain "
      .. "functions (called without self) for any of the hooks on_train_begin, on_train_end, on_epoch_begin, "
      .. "on_epoch_end, on_batch_begin, on_batch_end.",
      example = "moe.callbacks.LambdaCallback { on_epoch_end = function(epoch, logs) print(epoch, logs.loss) end }" },
  } }

-- ------------------------------------------------------------------ tensorboard

S[#S + 1] = { id = "tensorboard", title = "TensorBoard event files (moe.tensorboard)", intro =
  "Scalars written as TensorBoard event files, which TensorBoard's own readers load "
  .. "(`bench/peers/tensorboard_check.py` checks them with the tensorboard package). "
  .. "moe.callbacks.TensorBoard uses it during fit.",
  entries = {
    { "tensorboard", "moe.tensorboard", "TensorBoard's event files (scalars), as PyTorch's "
      .. "torch.utils.tensorboard writes them.",
      example = "local w = moe.tensorboard.SummaryWriter(\"runs/exp1\")\nw:add_scalar(\"loss\", 0.25, 1)\nw:close()" },
    { "tensorboard.SummaryWriter", "moe.tensorboard.SummaryWriter(log_dir)", "Opens a new event file for scalars "
      .. "in log_dir, log_dir/events.out.tfevents.<time>.<host>.<pid>.<n> (PyTorch's SummaryWriter).",
      details = "log_dir is made with its parents if missing (without a shell: any name works); each writer "
        .. "gets a file of its own, also beside another writer's in the same directory. w.path is the file. "
        .. "Every record is written whole and flushed, so TensorBoard can read the file while it grows.",
      args = { { "log_dir", "string", "the directory" } }, returns = "a writer.",
      example = "local w = moe.tensorboard.SummaryWriter(\"runs/exp1\")\n"
        .. "for step = 1, 3 do w:add_scalar(\"loss\", 1 / step, step) end\nw:close()",
      see = { "callbacks.TensorBoard" } },
    { "tensorboard.SummaryWriter:add_scalar", "w:add_scalar(tag, value, step, [wall_time])", "One scalar: an Event "
      .. "at step holding value (stored as a float32, as TensorBoard's simple_value; NaN is kept) under tag.",
      args = { { "tag", "string", "non-empty" }, { "value", "number", "" },
        { "step", "integer", ">= 0 (below 2^53)" },
        { "wall_time", "number", "seconds since the epoch (default: now)" } } },
    { "tensorboard.SummaryWriter:write_scalars", "w:write_scalars(values, step, [wall_time])", "Several scalars "
      .. "in one Event: a simple_value for each tag of the table values whose value is a number (others are "
      .. "left out), in sorted order; nothing is written when none is a number." },
    { "tensorboard.SummaryWriter:flush", "w:flush()", "Flushes the file (every record already is, as it is "
      .. "written)." },
    { "tensorboard.SummaryWriter:close", "w:close()", "Closes the file; writing afterwards is an error." },
    { "tensorboard.crc32c", "moe.tensorboard.crc32c(s)", "The CRC-32C (Castagnoli) of a string, as TFRecord "
      .. "frames use.", returns = "a number in [0, 2^32)." },
    { "tensorboard.masked_crc32c", "moe.tensorboard.masked_crc32c(s)", "TFRecord's masked CRC-32C of s (rotated "
      .. "right by 15 bits, plus 0xa282ead8).", returns = "a number in [0, 2^32)." },
    { "tensorboard.record", "moe.tensorboard.record(data)", "The TFRecord framing of one record: the length "
      .. "(uint64), its masked CRC, the data, the data's masked CRC (little-endian).", returns = "a string." },
    { "tensorboard.mkdirs", "moe.tensorboard.mkdirs(path)", "Makes path and its missing parents (as mkdir -p, "
      .. "without a shell).", returns = "true, or nil and a message." },
  } }

S.internal = {
  { "^callbacks%.[%w_]+:on_[%w_]+$", "the hooks, documented on moe.callbacks" },
  { "^metrics%.[%w_]+:[%w_]+_impl$", "the kinds' parts behind update, result and reset" },
  { "^metrics%.lazy_add$", "the trainer's device-side sums" },
  { "^metrics%.lazy_value$", "the trainer's device-side sums" },
}

return S
