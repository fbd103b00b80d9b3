-- Documentation entries: data, datasets, io, plot, cli, cuda, initializers,
-- regularizers, constraints, testing and doc itself (read by moe.doc).

local S = {}

local function probe(path)
  return function(moe)
    local f = moe
    for part in path:gmatch("[^%.]+") do f = f[part] end
    return f { __doc_probe = true }
  end
end
-- an initializer, regularizer or constraint: its defaults are a fresh object's fields
local function kind(mod, name, summary, opts, extra)
  local e = { mod .. "." .. name, ("moe.%s.%s{...}"):format(mod, name), summary, options = opts,
    defaults_from = function(moe) return moe[mod][name]() end, probe_options = probe(mod .. "." .. name),
    covers = { "get_config", "validate" } }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end
local SEED = { "seed", "integer", nil, "reseeds moe's generator (moe.manual_seed) before each draw" }

S[#S + 1] = { id = "data", title = "Data (moe.data)", intro =
  "Tabular data in a few lines: a CSV reader in C (plain or gzip), frames of numeric and categorical columns, an "
  .. "encoder fitted on training rows, and seeded splits and batches that leave moe's generator alone.",
  entries = {
    { "data", "moe.data", "CSV frames, feature encoding, splits and batches.",
      example = "local f = moe.data.read_csv(\"data/census-income.test.gz\", { header = false })\n"
        .. "local parts = moe.data.split(f:nrows(), { train = 0.8, test = 0.2, seed = 1 })" },
    { "data.read_csv", "moe.data.read_csv(path, [opts])", "Reads a CSV file (plain or gzip) into a frame: fields "
      .. "trimmed, double quotes (with \"\", separators and newlines inside), numeric columns detected (missing "
      .. "numbers as NaN), the others categorical. Malformed input is an error naming the line and column.",
      options = {
        { "header", "boolean", "true", "the first row names the columns (else they are \"1\", \"2\", ...)" },
        { "columns", "list of strings", "none", "names for a file without a header (needs header = false)" },
        { "sep", "string", "\",\"", "the field separator" },
        { "skip", "integer", "0", "lines to skip first" },
        { "na_values", "string or list", "none", "more spellings of a missing value" },
        { "keep_default_na", "boolean", "true", "also treat data.DEFAULT_NA_VALUES (and \"\") as missing" },
        { "dtypes", "table", "none", "column name -> \"numeric\" or \"categorical\", overriding the detection" },
      }, returns = "a data.Frame." },
    { "data.DEFAULT_NA_VALUES", "moe.data.DEFAULT_NA_VALUES", "The fields read_csv reads as missing by default "
      .. "(pandas's list: \"NA\", \"N/A\", \"NaN\", \"nan\", \"NULL\", \"null\", \"None\", \"<NA>\", \"#N/A\", ...)." },
    { "data.Frame", "moe.data.Frame", "What read_csv returns: named columns, numeric (float64 values, NaN where "
      .. "missing) or categorical (int32 codes into levels, 0 where missing). frame.columns lists the names.",
      example = "print(frame)   -- rows, columns and their kinds\nlocal ages = frame:values(\"age\")" },
    { "data.Frame:nrows", "frame:nrows()", "The number of rows." },
    { "data.Frame:ncols", "frame:ncols()", "The number of columns." },
    { "data.Frame:has", "frame:has(name)", "Whether the frame has that column." },
    { "data.Frame:is_numeric", "frame:is_numeric(name)", "Whether the column is numeric." },
    { "data.Frame:levels", "frame:levels(name)", "A categorical column's levels (strings, in order of first "
      .. "appearance)." },
    { "data.Frame:values", "frame:values(name)", "A numeric column as a float64 tensor (NaN where missing)." },
    { "data.Frame:codes", "frame:codes(name)", "A categorical column as an int32 tensor of 1-based codes into "
      .. "frame:levels(name), 0 where missing." },
    { "data.Frame:column", "frame:column(name)", "The column as a Lua list: numbers (NaN where missing) or strings "
      .. "(false where missing)." },
    { "data.Frame:take", "frame:take(indices)", "A new frame of the given rows (a list or int64 tensor of 1-based "
      .. "indices), in that order." },
    { "data.Frame:select", "frame:select(names)", "A new frame with only these columns, in this order." },
    { "data.Frame:drop", "frame:drop(names)", "A new frame without these columns." },
    { "data.FeatureEncoder", "moe.data.FeatureEncoder{categorical, numeric}", "Encodes frames into a float32 matrix: "
      .. "numerics standardised with the training rows' mean and (population) standard deviation, missing ones at "
      .. "the mean; categoricals one-hot over the training rows' levels (sorted), an unseen or missing value all "
      .. "zeros, so columns never shift between splits.",
      options = { { "categorical", "list of strings", "{}", "" }, { "numeric", "list of strings", "{}", "" } },
      example = "local enc = moe.data.FeatureEncoder { categorical = { \"education\" }, numeric = { \"age\" } }\n"
        .. "local x = enc:fit(train):transform(test)" },
    { "data.FeatureEncoder:fit", "enc:fit(frame)", "Learns the statistics and levels from frame. Returns enc." },
    { "data.FeatureEncoder:transform", "enc:transform(frame)", "Encodes frame.",
      returns = "a float32 tensor [n, #numeric + levels]." },
    { "data.FeatureEncoder:fit_transform", "enc:fit_transform(frame)", "enc:fit(frame):transform(frame)." },
    { "data.FeatureEncoder:feature_names", "enc:feature_names()", "The output columns' names: the numeric names, "
      .. "then \"column=level\" for each level." },
    { "data.split", "moe.data.split(n, [fractions])", "Splits the rows 1..n by a seeded permutation into parts of "
      .. "the given fractions (any names; each in (0, 1], adding up to at most 1; when they add up to 1 the last "
      .. "part takes the rest).",
      options = { { "train, val, test, ...", "number", "{train = 0.5, val = 0.25, test = 0.25}", "the parts' fractions" },
        { "seed", "integer", "1", "" } },
      returns = "a table part -> list of 1-based row indices.",
      example = "local s = moe.data.split(1000, { train = 0.8, test = 0.2, seed = 7 })" },
    { "data.batches", "moe.data.batches(n, batch_size, [opts])", "An iterator over batches of the rows 1..n: "
      .. "(int64 tensor of row indices, batch number).",
      options = { { "shuffle", "boolean", "true", "a new order on every call of batches" },
        { "seed", "integer", "a counter", "the order's seed (by default it advances each call)" },
        { "drop_last", "boolean", "false", "skip a last, smaller batch" } },
      example = "for idx in moe.data.batches(x:size(1), 32, { seed = 1 }) do\n  local xb = x:index_select(1, idx)\nend" },
    { "data.distributed_batches", "moe.data.distributed_batches(n, batch_size, opts)", "This rank's batches of "
      .. "one epoch, as PyTorch's DistributedSampler: one order of 1..n on every rank (the same seed), padded by "
      .. "its first rows to a multiple of world_size (cut down with drop_last), rank r taking positions r+1, "
      .. "r+1+world_size, ...; cut into batches of batch_size, the last smaller, as many on every rank. Batch k of "
      .. "all ranks together is batch k of one process with batch_size * world_size (when world_size divides n).",
      options = { { "rank", "integer", "required", "0-based" }, { "world_size", "integer", "required", "" },
        { "shuffle", "boolean", "true", "" }, { "seed", "integer", "a counter", "give the same on every rank" },
        { "drop_last", "boolean", "false", "drop the tail instead of padding" } },
      returns = "an iterator of (int64 row indices, batch number), and the rows per rank.",
      example = "local D = moe.distributed\nfor idx in moe.data.distributed_batches(n, 32, { rank = D.rank(), "
        .. "world_size = D.world_size(), seed = 1 }) do end" },
    { "data.permutation", "moe.data.permutation(n, seed)", "1..n in an order drawn from seed (Fisher-Yates on the "
      .. "data module's own generator).", returns = "a Lua list." },
    { "data.uniform", "moe.data.uniform(seed)", "A function drawing numbers uniform in (0, 1) from its own seeded "
      .. "generator (xorshift64*)." },
  } }

S[#S + 1] = { id = "datasets", title = "Datasets (moe.datasets)", intro =
  "The data of the MMoE paper's experiments, ready to fit.",
  entries = {
    { "datasets", "moe.datasets", "The UCI census-income data (bundled) and the paper's synthetic tasks." },
    { "datasets.census_income", "moe.datasets.census_income([opts])", "The census-income (KDD) file as the MMoE "
      .. "paper uses it: the label columns and marital_stat removed from the inputs, categoricals one-hot, numerics "
      .. "standardised on the training rows, the census instance_weight offered as a sample weight.",
      options = { { "path", "string", "datasets.default_path()", "" },
        { "tasks", "list of strings", "{\"income\", \"never_married\"}", "from income, never_married, education" },
        { "seed", "integer", "1", "the split's seed" },
        { "split", "table", "{train = 0.5, val = 0.25, test = 0.25}", "fractions for data.split" } },
      returns = "ds: ds.train, ds.val, ds.test (each {x [n, d] float32, y = {task = [n, 1]}, instance_weight [n], "
        .. "rows}), ds.num_features, ds.task_names, ds.feature_names, ds.encoder, ds.path, ds.nrows.",
      example = "local ds = moe.datasets.census_income { seed = 1 }\nprint(ds.num_features, ds.train.x:shape()[1])" },
    { "datasets.synthetic", "moe.datasets.synthetic([opts])", "The paper's two regression tasks whose label "
      .. "correlation is set by `correlation` (the cosine between the tasks' weight vectors): y_k = w_k.x + "
      .. "sum_j sin(alpha_j w_k.x + beta_j) + noise, x ~ N(0, I).",
      options = { { "n", "integer", "12000", "rows" }, { "dim", "integer", "100", "features (>= 2)" },
        { "correlation", "number", "0.8", "in [-1, 1]" }, { "c", "number", "0.3", "the weights' scale" },
        { "m", "integer", "5", "sine terms" }, { "noise", "number", "0.1", "the noise's standard deviation" },
        { "seed", "integer", "1", "" } },
      returns = "{x [n, dim], y = {y1 = [n, 1], y2 = [n, 1]}, w1, w2, correlation, task_names}." },
    { "datasets.census_numeric", "moe.datasets.census_numeric([opts])", "The census file's seven numeric "
      .. "columns (age, wage per hour, capital gains and losses, dividends, persons worked for, weeks worked), "
      .. "standardized over all rows, with income > 50k as the label, the rows split 80/20 by a random permutation "
      .. "(the census_logreg and census_mlp scripts' data).",
      details = "It calls moe.manual_seed(0) before drawing the permutation, so the split is always the same (and "
        .. "moe's generator is reseeded). The gzip file is read line by line; rows with fewer than 42 fields are "
        .. "skipped.",
      options = { { "path", "string", "datasets.default_path()", "" } },
      returns = "{names (the columns, sorted), xtr [n, 7] float32, ytr [n, 1], xva, yva, nrows, path, seconds}.",
      example = "local d = moe.datasets.census_numeric {}\nprint(d.xtr:shape()[1], d.xva:shape()[1])" },
    { "datasets.default_path", "moe.datasets.default_path([name])", "Where the bundled file name (default "
      .. "census-income.test.gz) is: data/ in the working directory, else next to the installed library." },
    { "datasets.CENSUS_COLUMNS", "moe.datasets.CENSUS_COLUMNS", "The 42 column names of the census-income files, "
      .. "as the MMoE seed names them." },
    { "datasets.CENSUS_CATEGORICAL", "moe.datasets.CENSUS_CATEGORICAL", "The columns census_income one-hot encodes." },
    { "datasets.CENSUS_NUMERIC", "moe.datasets.CENSUS_NUMERIC", "The columns census_income standardises." },
    { "datasets.CENSUS_TASKS", "moe.datasets.CENSUS_TASKS", "The tasks by name: {column, positive = function(level)}.",
      details = "income (income_50k is 50000+.), never_married (marital_stat is Never married), education "
        .. "(a college degree, associate's or higher).", lists = true },
  } }

S[#S + 1] = { id = "io", title = "Files (moe.io)", intro =
  "safetensors files with XXH3-64 checksums of the header and of every tensor in `__metadata__`; writes are "
  .. "atomic. Models use `model:save` and `moe.load`.",
  entries = {
    { "io", "moe.io", "safetensors files and exact JSON." },
    { "save_tensors", "moe.save_tensors(path, tensors, [metadata])", "Writes a table name -> tensor to a "
      .. "safetensors file (names sorted; device tensors from host copies), atomically, with checksums.",
      details = "metadata maps strings to strings; the checksum keys are reserved.", aliases = { "io.save_tensors" },
      example = "moe.save_tensors(\"w.safetensors\", { w = moe.randn(3, 2) })" },
    { "load_tensors", "moe.load_tensors(path)", "Reads a safetensors file (any writer's; moelua's checksums are "
      .. "verified when present).", aliases = { "io.load_tensors" },
      returns = "a table name -> tensor, and the metadata (without the checksum keys)." },
    { "io.read", "moe.io.read(path)", "The reader behind load_tensors.",
      returns = "tensors by name, the metadata, the names in file order, and whether checksums were verified." },
    { "io.write", "moe.io.write(path, names, tensors, [metadata])", "The writer behind save_tensors: the tensors "
      .. "(a list) under names (a list), in that order." },
    { "io.json_encode", "moe.io.json_encode(v)", "JSON with exact numbers (the fewest digits that read back to the "
      .. "same double) and sorted object keys.", returns = "a string, or nil and the reason." },
    { "io.json_decode", "moe.io.json_decode(s)", "Decodes JSON (lua-cjson).", returns = "the value, or nil and the reason." },
    { "io.json_string", "moe.io.json_string(s)", "A JSON string literal for s." },
    { "io.json", "moe.io.json", "The lua-cjson module (cjson.safe) moelua decodes with." },
    { "io.checksum_keys", "moe.io.checksum_keys", "The metadata keys moelua's checksums use (reserved): checksum, "
      .. "checksum.tensors, checksum.header." },
  } }

local TITLE = { "title", "string", "none", "" }
local XLABEL = { "xlabel", "string", "none", "" }
local YLABEL = { "ylabel", "string", "none", "" }

S[#S + 1] = { id = "plot", title = "Pictures (moe.plot)", intro =
  "Charts as SVG or PNG files (by the file's extension: another one is an error), drawn with cairo and written "
  .. "atomically (a temporary file renamed over the target). Each function returns the path, then a description of "
  .. "what it drew (every text, each panel's tick labels, line segments, bands, error bars, bars and heatmap cells, "
  .. "in pixels). A NaN, infinite or missing value is a gap: a line stops there and starts again after it, a bar or "
  .. "a heatmap cell is left out (grey). Axes whose values are all whole numbers (epochs, counts) get whole-number "
  .. "ticks only.",
  entries = {
    { "plot", "moe.plot", "Training curves, expert utilisation heatmaps, bars and line charts." },
    { "plot.history", "moe.plot.history(history, path, [opts])", "One panel per quantity (loss, then each metric "
      .. "in name order), the training curve and, where the history has val_<name>, the validation curve beside it, "
      .. "against the epoch (whole-number ticks).",
      details = "An epoch without a value for a quantity (a metric logged in some epochs only) is a gap in its "
        .. "curve. A sparse router's per-expert counts (expert_<e>_tokens) get no panel of their own: "
        .. "plot.expert_load draws them. Panels are laid out three to a row.",
      options = { { "metrics", "list of strings", "every logged name without val_", "the quantities, in this order" },
        TITLE },
      example = "moe.plot.history(model:fit { x = x, y = y, epochs = 5, validation_split = 0.2 }, \"curves.svg\")" },
    { "plot.lines", "moe.plot.lines(series, path, [opts])", "A line chart with markers of series {name = ..., "
      .. "x = {...}, y = {...}, err = {...}}: x defaults to 1..n, a missing or NaN x or y is a gap, and err (a "
      .. "spread per point, say the standard deviation over seeds) draws a band y +- err under the line, or "
      .. "error bars.",
      options = { TITLE, XLABEL, YLABEL, { "ylim", "{lo, hi}", "the data's range (with the bands)", "" },
        { "errors", "string", "\"band\"", "how err is drawn: \"band\" or \"bars\"" },
        { "err_label", "string or false", "\"\194\177 sd\"", "what err is, added to the names of series with "
          .. "err in the legend; false adds nothing" },
        { "integer_x", "boolean", "every x is whole", "whole-number x ticks; false for fractional ticks anyway" },
        { "xticks", "integer", "6", "about how many x ticks" },
        { "width", "integer", "720", "" }, { "height", "integer", "420", "" } },
      example = "moe.plot.lines({ { name = \"MMoE\", x = { 0.5, 0.9 }, y = { 0.045, 0.043 },\n"
        .. "                  err = { 0.002, 0.003 } } },\n"
        .. "  \"loss.svg\", { xlabel = \"correlation\", ylabel = \"test loss\", errors = \"bars\" })" },
    { "plot.panels", "moe.plot.panels(panels, path, [opts])", "Line charts side by side, cols to a row: each "
      .. "panel {title = ..., series = {...}, xlabel = ..., ylabel = ..., ylim = ...} is drawn as plot.lines draws "
      .. "its series, on its own axes with its own legend.",
      options = { TITLE, { "cols", "integer", "3", "panels per row" },
        { "errors", "string", "\"band\"", "how err is drawn: \"band\" or \"bars\"" },
        { "err_label", "string or false", "\"\194\177 sd\"", "what err is, in the legend" },
        { "markers", "boolean", "true", "false: lines without a marker at each point" },
        { "width", "integer", "440", "of each panel" }, { "height", "integer", "300", "of each panel" } },
      example = "moe.plot.panels({ { title = \"corr 0.5\", series = { { name = \"MMoE\", x = { 100, 200 }, y = { 0.3, 0.2 } } } },\n"
        .. "                  { title = \"corr 1.0\", series = { { name = \"MMoE\", x = { 100, 200 }, y = { 0.2, 0.1 } } } } },\n"
        .. "  \"curves.svg\", { cols = 2, errors = \"bars\" })" },
    { "plot.histograms", "moe.plot.histograms(panels, path, [opts])", "Histograms: each panel {title = ..., "
      .. "groups = {{name = ..., values = {...}}, ...}} overlays its groups' counts per bin as step outlines. "
      .. "Every panel shares the bins (over all the finite values, or opts.range), so that panels compare; a "
      .. "value outside the range counts in the edge bin, a NaN in none. The figure it returns holds bins = "
      .. "{lo, hi, width, counts[panel][group]}.",
      options = { { "bins", "integer", "20", "" }, { "range", "{lo, hi}", "the values' span", "" }, TITLE, XLABEL,
        { "ylabel", "string", "\"runs\"", "" }, { "cols", "integer", "3", "panels per row" } },
      example = "moe.plot.histograms({ { title = \"final loss\", groups = { { name = \"MMoE\", values = { 0.1, 0.2, 0.2 } } } } },\n"
        .. "  \"hist.png\", { bins = 10 })" },
    { "plot.bars", "moe.plot.bars(values, path, [opts])", "A bar chart of a list of numbers, or groups of bars from "
      .. "a list of lists of the same length (one color per series, with a legend); a NaN is no bar.",
      options = { { "labels", "list of strings", "1..n", "under the bars" },
        { "group_names", "list of strings", "series 1, series 2, ...", "the legend" },
        TITLE, XLABEL, YLABEL, { "width", "integer", "from the count", "" }, { "height", "integer", "400", "" } } },
    { "plot.heatmap", "moe.plot.heatmap(matrix, path, [opts])", "A grid of cells coloured by value, light (low) to "
      .. "dark blue (high), with a colour bar beside it; matrix is a list of rows (lists of numbers, all of one "
      .. "length) or a 2-D tensor. A NaN or missing value is a grey cell.",
      options = { { "row_labels", "list of strings", "1..rows", "" }, { "col_labels", "list of strings", "1..columns",
          "(shown every few columns when they are narrow)" },
        TITLE, XLABEL, YLABEL, { "vmin", "number", "the smallest value", "the lightest colour" },
        { "vmax", "number", "the largest value", "the darkest colour" },
        { "annotate", "boolean", "when the cells are big enough", "write each cell's value in it" },
        { "format", "string", "\"%.2f\"", "the cells' values' format" } },
      example = "moe.plot.heatmap({ { 0.7, 0.3 }, { 0.2, 0.8 } }, \"m.svg\",\n"
        .. "  { row_labels = { \"income\", \"marital\" }, col_labels = { \"E1\", \"E2\" } })" },
    { "plot.expert_utilisation", "moe.plot.expert_utilisation(gates, path, [opts])", "The mean gate weight of each "
      .. "expert for each task, as a tasks x experts heatmap (or grouped bars), from a list of [B, E] gate tensors "
      .. "(as MMoE:gate_weights gives), one [B, E] tensor (TabularMoELayer's) or lists of E numbers.",
      options = { { "task_names", "list of strings", "task 1, task 2, ...", "" },
        { "title", "string", "\"mean gate weight per expert\"", "" },
        { "kind", "string", "\"heatmap\"", "\"heatmap\" or \"bars\"" } },
      example = "moe.plot.expert_utilisation(mmoe:gate_weights(x), \"gates.svg\", { task_names = { \"income\", \"marital\" } })" },
    { "plot.expert_load", "moe.plot.expert_load(history, path, [opts])", "A sparse layer's routing over training: "
      .. "a heatmap of experts x epochs from the History's expert_<e>_tokens (its router's metrics: the mean "
      .. "tokens per batch sent to expert e), each epoch's column as shares of its tokens unless normalize = false.",
      details = "An error when the history has no expert_<e>_tokens, or several layers' (logged as "
        .. "<name>_expert_<e>_tokens) and no layer option chooses one; an epoch without counts is a grey column.",
      options = { { "layer", "string", "the only one", "the router layer's name, when several layers' counts are logged" },
        { "normalize", "boolean", "true", "shares of each epoch's tokens (false: the mean counts)" },
        { "title", "string", "from normalize", "" } },
      example = "local h = model:fit { x = x, y = y, epochs = 5 }\nmoe.plot.expert_load(h, \"load.svg\")" },
    { "plot.tokens_per_expert", "moe.plot.tokens_per_expert(counts, path, [opts])", "A sparse layer's routing "
      .. "(layer.last_plan.counts as a tensor, or a list of numbers) as bars, one per expert.",
      options = { { "title", "string", "\"tokens per expert\"", "" } } },
  } }

-- ------------------------------------------------------------------ cli

S[#S + 1] = { id = "cli", title = "Command-line options (moe.cli)", intro =
  "The parser the model scripts use, for scripts of your own: each option is `{ name, default, description, ... }`; "
  .. "`--batch-size 64`, `--batch-size=64` and `--smoke` (a boolean default is a flag) set `opts.batch_size` "
  .. "(dashes become underscores). A value takes the default's type: an integer default wants an integer (`type = "
  .. "\"number\"` allows fractions), a string default any string; `min`, `max` and `choices` bound it, `check(v)` "
  .. "may return false and a reason, and `positional = true` options are also taken, in order, from arguments that "
  .. "are not options. `--help` prints the usage and exits 0; a bad option or value prints what is wrong and the "
  .. "usage on stderr and exits 2, without a traceback.",
  entries = {
    { "cli", "moe.cli", "Command-line options for scripts: --help, usage errors, the --device and --plot options.",
      example = "local opts = moe.cli.parse(arg, {\n  usage = \"moelua run train.lua [options]\",\n"
        .. "  about = \"Trains a small model.\",\n  { \"epochs\", 10, \"epochs to train\", min = 1 },\n"
        .. "  { \"lr\", 1e-3, \"Adam's learning rate\" },\n  moe.cli.device_option(),\n"
        .. "  moe.cli.plot_option(\"the training curves\"),\n})" },
    { "cli.parse", "moe.cli.parse(args, spec)", "The options of args (a script's arg table) by spec; --help or -h "
      .. "prints cli.usage(spec) on stdout and exits 0, a usage error prints the message and the usage on stderr "
      .. "and exits 2.",
      details = "spec: usage (the usage line), about (the script's description, for --help) and the options, each "
        .. "{ name, default, description, type = \"number\", min, max, choices = {...}, check = fn, positional = "
        .. "true, metavar, default_text }. An unknown option names the near ones (did you mean ...?). The old "
        .. "form parse(args, {name = default, ...}, usage) takes options without descriptions.",
      returns = "a table option name -> value (the defaults for those not given)." },
    { "cli.read", "moe.cli.read(args, spec)", "What parse reads, without exiting: --help sets opts.help, and a bad "
      .. "option or value raises the table {cli_usage = message}.", returns = "a table option name -> value." },
    { "cli.usage", "moe.cli.usage([spec], [brief])", "The usage text: the usage line, the description (unless "
      .. "brief), then each option with its metavar, description and default. spec defaults to the one parse "
      .. "read last.", returns = "a string." },
    { "cli.fail", "moe.cli.fail(msg)", "A usage error found after parsing (a bad combination of options, a path "
      .. "that cannot be made): prints the script's name and msg, then the brief usage, on stderr and exits 2." },
    { "cli.device_option", "moe.cli.device_option()", "The --device option: cpu (the default) or cuda, which must "
      .. "be available (else a usage error that says why).", returns = "an option for parse's spec." },
    { "cli.check_device", "moe.cli.check_device(device)", "device when it is cpu, or cuda with a device present; "
      .. "else a usage error (cli.fail).", returns = "device." },
    { "cli.readable", "moe.cli.readable(path)", "An option's check that the file can be read (\"\" passes: "
      .. "no file given).", returns = "true, or false and the reason." },
    { "cli.plot_option", "moe.cli.plot_option([figures])", "The --plot DIR|FILE option (default \"\": no "
      .. "figures), its description naming the figures.", returns = "an option for parse's spec." },
    { "cli.figures", "moe.cli.figures(plot, names)", "Where each named figure goes for a --plot value: a .svg or "
      .. ".png file (one figure: that file; several: FILE_<name>.svg|png, its directory made if missing) or a "
      .. "directory (made with its parents if missing: DIR/<name>.svg). Another extension is a usage error, so a "
      .. "directory named switch.png is never made.",
      returns = "a table name -> path, or nil when plot is \"\" (no figures).",
      example = "local paths = moe.cli.figures(opts.plot, { \"curves\", \"experts\" })\n"
        .. "if paths then moe.plot.history(history, paths.curves) end" },
    { "cli.given", "moe.cli.given(opts, name)", "Whether the command line set the option name (rather than its "
      .. "default), for opts as parse or read returned them: a mode such as --quick can set other options only "
      .. "where they were not given." },
    { "cli.self_exe", "moe.cli.self_exe()", "The running moelua executable's path (from /proc/self/exe), to start "
      .. "more moelua processes with, as models/moe_vs_mmoe.lua starts its workers." },
    { "cli.cores", "moe.cli.cores()", "The CPUs this process may run on (nproc), at least 1." },
    { "cli.makedirs", "moe.cli.makedirs(path)", "Makes path and its missing parents as directories (as mkdir -p, "
      .. "without a shell, through LuaFileSystem).", returns = "true, or nil and a message." },
  } }

S[#S + 1] = { id = "cuda", title = "CUDA (moe.cuda)", intro =
  "Tensors move with `t:cuda()`, `t:to(\"cuda\")`, `model:cuda()`; ops run on the device of their tensors. "
  .. "Without a device (or a build without CUDA) the functions below say so.",
  entries = {
    { "cuda", "moe.cuda", "The CUDA device, as far as this build goes." },
    { "cuda.is_available", "moe.cuda.is_available()", "Whether a device and a driver are present (and the backend "
      .. "was built).", returns = "a boolean." },
    { "cuda.is_built", "moe.cuda.is_built()", "Whether this build has the CUDA backend.", returns = "a boolean." },
    { "cuda.device_count", "moe.cuda.device_count()", "The number of usable devices.", returns = "an integer." },
    { "cuda.info", "moe.cuda.info()", "The device facts: built, device_count, devices (names), runtime_version and "
      .. "driver_version (1000 * major + 10 * minor; 0: no driver), emulator, the memory counts (live, peak, cached, free, "
      .. "total, in bytes) and, when no device is usable, reason (why, in plain words).", returns = "a table." },
    { "cuda.memory_stats", "moe.cuda.memory_stats()", "{live, peak, cached, free, total} in bytes.", returns = "a table." },
    { "cuda.empty_cache", "moe.cuda.empty_cache()", "Frees the cached device blocks.", returns = "the bytes freed." },
    { "cuda.set_precision", "moe.cuda.set_precision(p)", "float32 GEMMs on the device: \"fp32\" (the default), "
      .. "\"tf32\" or \"bf16\" (operands rounded, fp32 accumulate). The sparse routers' GEMMs stay fp32; a GEMM "
      .. "given \"bf16\" itself (moe.set_precision's expert GEMMs) runs cuBLAS's bf16 whatever this says.",
      returns = "the previous precision." },
    { "cuda.get_precision", "moe.cuda.get_precision()", "The device's float32 GEMM precision.", returns = "a string." },
    { "cuda.syncs", "moe.cuda.syncs()", "The host's waits for the device so far: drains (waits for every queued "
      .. "kernel: t:item(), t:cpu(), a large copy from ordinary host memory) and waits (on one event).",
      returns = "{drains = n, waits = n}." },
    { "cuda.set_sync_debug", "moe.cuda.set_sync_debug(mode)", "\"warn\": each drain prints what it was and the Lua "
      .. "stack that caused it (as torch.cuda.set_sync_debug_mode); \"off\" (the default) stops that; any other "
      .. "mode is an error.", example = "moe.cuda.set_sync_debug(\"warn\")\nmodel:fit { x = x, y = y, epochs = 1 }\n"
      .. "moe.cuda.set_sync_debug(\"off\")\nprint(moe.cuda.syncs().drains)" },
  } }

S[#S + 1] = { id = "distributed", title = "Processes (moe.distributed)", intro =
  "Several processes working together, in torch.distributed's style, over MPI (Debian's OpenMPI): "
  .. "`mpirun -np 2 build/moelua run script.lua` starts two ranks. Ranks are 0-based, as mpirun's own messages "
  .. "number them; a list indexed by rank has rank r's entry at [r + 1]. Without mpirun (or in a build without "
  .. "MPI) the world is one rank and every collective is a copy. Collectives take host tensors of any dtype "
  .. "(bool reduces as logic: sum and max are or, prod and min are and), and cuda tensors through NCCL in a CUDA "
  .. "build that found nccl.h (one communicator per process, on its current device, made at the first device "
  .. "collective; the collectives are queued on the engine's stream, after the kernels before them, and the host "
  .. "does not wait; NCCL needs a GPU per rank). Every rank passes its tensor on the same device, and every rank "
  .. "must make the same calls in "
  .. "the same order. Each call first exchanges what every rank passed, so a mismatch (shape, dtype, op, root, "
  .. "collective) or a bad argument on any rank is an error on every rank, naming the ranks, not a hang. A rank "
  .. "whose script fails ends the job on every rank (MPI_Abort).",
  entries = {
    { "distributed", "moe.distributed", "Collectives between processes (ranks) started by mpirun." },
    { "distributed.is_available", "moe.distributed.is_available()", "Whether this build has the MPI backend "
      .. "(without it the world is one rank).", returns = "a boolean." },
    { "distributed.is_initialized", "moe.distributed.is_initialized()", "Whether this process has joined its "
      .. "world (moelua does under mpirun, before the script runs).", returns = "a boolean." },
    { "distributed.init", "moe.distributed.init()", "Joins the world: the MPI one under mpirun, else the 1-rank "
      .. "world. Idempotent; the collectives call it. Under mpirun with a build without MPI it is an error.",
      returns = "moe.distributed." },
    { "distributed.rank", "moe.distributed.rank()", "This process's rank, from 0.", returns = "an integer." },
    { "distributed.world_size", "moe.distributed.world_size()", "The number of ranks.", returns = "an integer." },
    { "distributed.barrier", "moe.distributed.barrier()", "Returns once every rank has called it." },
    { "distributed.is_main", "moe.distributed.is_main()", "Whether this is rank 0, the rank that prints and writes "
      .. "files (true in a 1-process world).", returns = "a boolean." },
    { "distributed.print", "moe.distributed.print(...)", "print on rank 0 only: a script's results once per job." },
    { "distributed.info", "moe.distributed.info()", "The world as this rank sees it: initialized, rank, "
      .. "world_size, local_rank and local_size (the ranks on this machine), launched (mpirun's process count, 0 "
      .. "without it), built, backend (\"mpi\" or \"local\"), library (the MPI library), thread_level, threads "
      .. "(this rank's CPU threads) and threads_reason, checks, and reason (why one rank, when so); for device "
      .. "tensors: nccl_built, nccl_version (nccl.h's at build time), nccl_library (the libnccl opened at run time, "
      .. "found on the loader's path or named by MOE_NCCL), nccl_ready and nccl_device (its communicator, once "
      .. "made), and nccl_reason (why device collectives cannot run, when so).",
      details = "When several ranks share a machine each runs one CPU thread (the thread pool and OpenBLAS), "
        .. "unless MOE_DIST_THREADS=n (n each) or MOE_NUM_THREADS says otherwise.",
      returns = "a table (tostring gives one line)." },
    { "distributed.set_checks", "moe.distributed.set_checks(on)", "false leaves out the exchange of the ranks' "
      .. "arguments before each collective (a few microseconds each); a mismatch then hangs or corrupts, as in MPI.",
      returns = "the previous setting." },
    { "distributed.all_reduce", "moe.distributed.all_reduce(t, [op])", "In place: t = op over every rank's t, op "
      .. "one of \"sum\" (the default), \"mean\" (float tensors), \"max\", \"min\", \"prod\". Every rank "
      .. "passes the same dtype and shape.", returns = "t.", example = "moe.distributed.all_reduce(grad, \"mean\")" },
    { "distributed.all_reduce_async", "moe.distributed.all_reduce_async(t, [op])", "all_reduce started at once "
      .. "(MPI_Iallreduce): w:is_completed() says whether it is done (and lets MPI move the data along), w:wait() "
      .. "waits and returns t. Leave t alone until then. On a cuda tensor it is queued on the stream (NCCL): "
      .. "is_completed asks its event, and wait orders the stream after it without waiting on the host.",
      returns = "a work handle w." },
    { "distributed.broadcast", "moe.distributed.broadcast(t, [root])", "In place: root's t (rank 0 by default) on "
      .. "every rank.", returns = "t." },
    { "distributed.all_gather", "moe.distributed.all_gather(t)", "Every rank's t, stacked along dim 1 in rank "
      .. "order; the ranks' first sizes may differ (a 0-dim t counts as one row).",
      returns = "the tensor, and the list of each rank's row count." },
    { "distributed.reduce_scatter", "moe.distributed.reduce_scatter(t, [op])", "t's dim 1 in world_size() equal "
      .. "blocks: rank r gets block r + 1 reduced over the ranks.", returns = "a new tensor." },
    { "distributed.all_to_all", "moe.distributed.all_to_all(t, send_counts)", "Rows of t to every rank: the first "
      .. "send_counts[1] to rank 0, the next send_counts[2] to rank 1, ...; the counts are exchanged first, then the "
      .. "rows in one MPI_Alltoallv (on cuda tensors, one grouped ncclSend/ncclRecv per peer). send_counts is a "
      .. "list of world_size() row counts (or a 1-d integer tensor). "
      .. "Differentiable: when t requires grad, the gradient goes back by the mirror all_to_all (each rank's send and "
      .. "receive counts swapped), so backward is a collective that every rank runs.",
      returns = "the rows received, in rank order, and recv_counts (a list).",
      example = "local y, recv = moe.distributed.all_to_all(tokens, { 3, 5 })" },
    { "distributed.Reducer", "moe.distributed.Reducer(params, [{bucket_cap_mb = 25, first_bucket_mb = 1, "
      .. "local_params = {...}}])", "Data-parallel gradients, as PyTorch DDP's reducer: after r:prepare(), "
      .. "backward, r:finish(), every param's .grad is the mean over the ranks. The params go into flat buckets "
      .. "in reverse order (the order backward finishes them; one dtype each, up to bucket_cap_mb MiB, the first "
      .. "up to first_bucket_mb, 0 for bucket_cap_mb: DDP's 1 MiB by default, so that sending starts early); a bucket's all-reduce starts during backward, as soon as its params' grads "
      .. "are final, in bucket order on every rank. Host float32 and float64 leaf tensors that require grad.",
      details = "A param's contribution is its .grad once backward has finished it (grads accumulated by "
        .. "earlier backward passes included), or zeros when it has none; after finish every param has a .grad "
        .. "(zeros when no rank had one). local_params (owned by one rank, as expert shards) are not sent: their "
        .. "grads are divided by world_size(). With moe.set_deterministic(true) each bucket is all-gathered and "
        .. "summed in rank order: bitwise the same on every rank and in every run (world_size() times the "
        .. "bytes). Building one is a collective: every rank passes the same params in the same order (checked: "
        .. "a mismatch or a bad argument on one rank is an error on every rank). In a 1-rank world nothing is "
        .. "copied or sent. Device params are not taken yet.",
      returns = "a reducer r.",
      example = "local r = moe.distributed.Reducer(params)\nr:prepare()\nloss:backward()\nr:finish()\n"
        .. "opt:step(params)" },
    { "distributed.Reducer:prepare", "r:prepare()", "Arms the reducer on this thread for this step's backward "
      .. "(once per step, before the step's last backward; every rank then runs the same number of backward "
      .. "passes before finish). A backward that reaches a param again after its grad was sent is an error.",
      returns = "r." },
    { "distributed.Reducer:finish", "r:finish()", "Starts the buckets still idle, waits for all, and writes "
      .. "the mean over the ranks into every param's .grad (in place when it has one).", returns = "r." },
    { "distributed.Reducer:stats", "r:stats()", "params, local_params, buckets, bytes, bucket_cap_bytes, "
      .. "first_bucket_bytes, world_size, steps, prepared, bucket_of (params[i]'s bucket; 1 starts first) and, "
      .. "of the last step: deterministic, started_in_backward (buckets started while backward ran), "
      .. "done_in_backward (found complete before backward returned), started_at_end (when the pass ended), "
      .. "started_in_finish, ready_after_first_start (params finished by backward after the first bucket "
      .. "started: the overlap) and unused (params without a grad on this rank).", returns = "a table." },
  } }

S[#S + 1] = { id = "initializers", title = "Initializers, regularizers, constraints", intro =
  "Keras's names and semantics. An initializer is called as `init(shape, dtype)` and returns a new tensor; a "
  .. "regularizer is called on a weight and returns a scalar penalty (joining the training loss); a constraint is "
  .. "called on a weight after each optimizer update and returns the projected weight. Each has `get_config()` and "
  .. "may be named by a string or a table {class_name = ..., config = {...}} in a layer's options.",
  entries = {
    { "initializers", "moe.initializers", "Weight initializers (glorot_uniform is the layers' default)." },
    kind("initializers", "variance_scaling", "Samples with variance scale / n, n the fan in, the fan out or their "
      .. "mean (Keras's fans: [in, out]; conv-like shapes multiply in the receptive field).",
      { { "scale", "number", nil, "> 0" }, { "mode", "string", nil, "fan_in, fan_out or fan_avg" },
        { "distribution", "string", nil, "truncated_normal (redrawn beyond 2 standard deviations, rescaled), "
          .. "untruncated_normal (or normal) or uniform" }, SEED }),
    kind("initializers", "glorot_uniform", "variance_scaling{scale = 1, mode = fan_avg, distribution = uniform}.", { SEED }),
    kind("initializers", "glorot_normal", "variance_scaling{scale = 1, mode = fan_avg, distribution = truncated_normal}.", { SEED }),
    kind("initializers", "he_normal", "variance_scaling{scale = 2, mode = fan_in, distribution = truncated_normal}.", { SEED }),
    kind("initializers", "he_uniform", "variance_scaling{scale = 2, mode = fan_in, distribution = uniform}.", { SEED }),
    kind("initializers", "lecun_normal", "variance_scaling{scale = 1, mode = fan_in, distribution = truncated_normal}.", { SEED }),
    kind("initializers", "lecun_uniform", "variance_scaling{scale = 1, mode = fan_in, distribution = uniform}.", { SEED }),
    kind("initializers", "truncated_normal", "Normal samples redrawn until within two standard deviations, then "
      .. "scaled (truncated_normal(0.02) gives the stddev).",
      { { "mean", "number", nil, "" }, { "stddev", "number", nil, "> 0" }, SEED }),
    kind("initializers", "random_normal", "Normal samples (random_normal(0.1) gives the stddev).",
      { { "mean", "number", nil, "" }, { "stddev", "number", nil, "> 0" }, SEED }),
    kind("initializers", "random_uniform", "Uniform samples in [minval, maxval).",
      { { "minval", "number", nil, "" }, { "maxval", "number", nil, "" }, SEED }),
    kind("initializers", "zeros", "Zeros.", {}),
    kind("initializers", "ones", "Ones.", {}),
    kind("initializers", "constant", "A constant value (constant(0.5) works too).", { { "value", "number", nil, "" } }),
    { "initializers.get", "moe.initializers.get(spec, [where])", "An initializer from nil, a name, a {class_name, "
      .. "config} table, an object or a function (where names the caller in errors)." },
    { "regularizers", "moe.regularizers", "Weight penalties for the *_regularizer options." },
    kind("regularizers", "l1", "l1 * sum(|w|) (l1(0.01) works too).", { { "l1", "number", nil, ">= 0" } }),
    kind("regularizers", "l2", "l2 * sum(w^2) (l2(0.01) works too).", { { "l2", "number", nil, ">= 0" } }),
    kind("regularizers", "l1_l2", "l1 * sum(|w|) + l2 * sum(w^2).",
      { { "l1", "number", nil, ">= 0" }, { "l2", "number", nil, ">= 0" } }),
    { "regularizers.get", "moe.regularizers.get(spec, [where])", "A regularizer from nil, a name, a table, an object "
      .. "or a function." },
    { "constraints", "moe.constraints", "Projections applied after each optimizer update (*_constraint options). "
      .. "axis is 1-based: Keras's axis=0 is axis=1 here (a Dense kernel's incoming weights per unit)." },
    kind("constraints", "max_norm", "Rescales the slices along axis whose norm exceeds max_value (max_norm(3) works "
      .. "too).", { { "max_value", "number", nil, "" }, { "axis", "integer", nil, "" } }),
    kind("constraints", "non_neg", "Zeroes the negative weights.", {}),
    kind("constraints", "unit_norm", "Scales the slices along axis to norm 1.", { { "axis", "integer", nil, "" } }),
    kind("constraints", "min_max_norm", "Moves the slices' norms into [min_value, max_value], a fraction rate of the way.",
      { { "min_value", "number", nil, "" }, { "max_value", "number", nil, "" }, { "rate", "number", nil, "" },
        { "axis", "integer", nil, "" } }),
    { "constraints.get", "moe.constraints.get(spec, [where])", "A constraint from nil, a name, a table, an object "
      .. "or a function." },
  } }

S[#S + 1] = { id = "testing", title = "Testing and documentation (moe.testing, moe.doc)", entries = {
    { "testing", "moe.testing", "Gradient checks." },
    { "testing.gradcheck", "moe.testing.gradcheck(f, inputs, [opts])", "Compares the analytic gradients of f (a "
      .. "function of the inputs, or a module: its parameters are checked too, in float64) with central finite "
      .. "differences in float64; float inputs become float64 leaves (their layout kept).",
      options = { { "eps", "number", "1e-6", "the step" }, { "atol", "number", "1e-5", "" }, { "rtol", "number", "1e-3", "" },
        { "seed", "integer", "1234", "reseeds before every evaluation, so dropout masks repeat" },
        { "check", "list of booleans", "every float input", "which inputs to check" } },
      returns = "true, or raises an error naming the worst element.",
      example = "moe.testing.gradcheck(function(x) return x:tanh():sum() end, { moe.randn(3, 2) })" },
    { "doc", "moe.doc", "The documentation registry behind help(x), `moelua doc NAME` and docs/api.md; its entries "
      .. "live in lua/moe/doc_*.lua.",
      details = "An entry is keyed by the name a user types without moe. (\"randn\", \"nn.Dense\", "
        .. "\"nn.Module:fit\", \"Tensor:has_grad\"); a layer's option defaults are read from the layer class itself." },
    { "doc.find", "moe.doc.find(name)", "The entry for a name as help takes it.",
      returns = "the entry (a table: name, sig, summary, details, options, example, ...), or nil and the candidates." },
    { "doc.search", "moe.doc.search(word)", "The names whose entry mentions word (case-insensitive).",
      returns = "a list of names.", example = "moe.doc.search(\"capacity\")" },
    { "doc.text", "moe.doc.text(entry)", "An entry as the text help prints." },
    { "doc.brief", "moe.doc.brief(entry, [max = 60])", "An entry's summary up to the end of its first sentence, "
      .. "cut to at most max characters (the one-line listings use it)." },
    { "doc.markdown", "moe.doc.markdown()", "The whole reference as Markdown (what `make docs` writes to docs/api.md)." },
    { "doc.main", "moe.doc.main(args)", "`moelua doc`'s command line: NAME..., --search WORD, --markdown, --check.",
      returns = "the exit status." },
    { "doc.entries", "moe.doc.entries", "Name -> entry, for every entry (after the registry is loaded)." },
    { "doc.sections", "moe.doc.sections", "The sections, in the reference's order." },
    { "doc.public_names", "moe.doc.public_names()", "Every public name: the moe table's fields, its submodules', "
      .. "their classes' methods and the tensor methods.", returns = "a list of {name, value}." },
    { "doc.undocumented", "moe.doc.undocumented()", "The public names without an entry (what spec/docs_spec.lua "
      .. "requires to be empty).", returns = "a list of names." },
    { "doc.option_problems", "moe.doc.option_problems()", "Options the code takes that their entry lacks, and "
      .. "documented options the code does not take: every layer class, and every entry that probes its function.",
      returns = "a list of messages." },
    { "doc.stale", "moe.doc.stale()", "Entries whose name stands for nothing.", returns = "a list of names." },
    { "doc.layer_options", "moe.doc.layer_options(class)", "The options a layer class declares and their defaults, "
      .. "read from the class.", returns = "a list of {name, default}, or nil." },
    { "doc.class_repr", "moe.doc.class_repr(class)", "A layer class as text: its call with the options' defaults "
      .. "(what printing nn.Dense shows)." },
    { "doc.layer_config_str", "moe.doc.layer_config_str(layer)", "A layer's options that differ from their "
      .. "defaults (required ones always), as they would be written: {units = 8, activation = \"relu\"}." },
  } }

S.internal = {
  { "^doc%.load$", "loads the registry" }, { "^doc%.ordered$", "the entries in order" },
  { "^doc%.resolve$", "name -> value" }, { "^doc%.is_class$", "the walker's test" },
  { "^doc%.entry_for$", "the coverage rule" }, { "^doc%.internal$", "this list" },
  { "^doc%.MODULES$", "the walked submodules" }, { "^doc%.COMMON_LAYER_OPTIONS$", "nn.Module's options" },
  { "^doc%.value_str$", "values as text" }, { "^doc%.name_of$", "value -> name" }, { "^doc%.wrap$", "text" },
  { "^doc%.title$", "text" }, { "^doc%.options_of$", "text" }, { "^doc%.kind_of$", "text" },
}

return S
