-- Documentation entries: the moe module, tensors and their ops (read by moe.doc).
-- An entry is { name, signature, summary, details =, args =, options =,
-- returns =, example =, aliases =, see = }; `method = true` marks an op that
-- is also a tensor method (its signature is written as the method, t:op(...)).

-- dtype_default: the default as shown ("\"float32\"" unless given)
local function creation_opts(dtype_default)
  return {
    { "dtype", "string", dtype_default or "\"float32\"", "float32, float64, int32, int64 or bool" },
    { "device", "string", "moe.get_default_device()", "\"cpu\" or \"cuda\"" },
    { "requires_grad", "boolean", "false", "make the new tensor a leaf that records gradients (float dtypes only)" },
  }
end
local LIKE = {
  { "dtype", "string", "t's dtype", "float32, float64, int32, int64 or bool" },
  { "device", "string", "t's device", "\"cpu\" or \"cuda\"" },
  { "requires_grad", "boolean", "false", "a leaf that records gradients" },
}

local S = {}

-- one entry per elementwise op of the same shape
local function unary(name, what, example)
  return { name, ("t:%s()"):format(name), what, method = true,
    returns = "a new tensor of t's shape (float ops on integer tensors give float32).",
    example = example or ("moe.tensor{-1, 0, 2}:%s()"):format(name) }
end
local function binary(name, what, example)
  return { name, ("t:%s(other)"):format(name), what, method = true,
    details = "other is a tensor or a number; the shapes broadcast as in NumPy, and mixed dtypes promote "
      .. "(bool < int32 < int64 < float32 < float64; a number takes the tensor's dtype).",
    example = example }
end
local function inplace(name, what)
  return { name, ("t:%s(other)"):format(name), what, method = true,
    details = "In place: other (a tensor or a number) must broadcast to t's shape, and t must not require grad "
      .. "while gradients are recorded (use the op without the underscore). Returns t.",
    example = ("local t = moe.ones(3); t:%s(2)"):format(name) }
end
local function compare(name, what)
  return { name, ("t:%s(other)"):format(name), what, method = true,
    returns = "a bool tensor of the broadcast shape.", example = ("moe.arange(1, 5):%s(2)"):format(name) }
end
local REDUCE_DETAILS = "dim is a number (negative counts from the end) or a list of dims; without it every "
  .. "element is reduced to a 0-dim tensor. keepdim (a boolean, or {keepdim = true}) keeps the reduced dims "
  .. "with size 1."
local function reduce(name, what)
  return { name, ("t:%s([dim], [keepdim])"):format(name), what, method = true, details = REDUCE_DETAILS,
    example = ("moe.tensor{{1, 2}, {3, 4}}:%s(2)"):format(name) }
end

S[#S + 1] = { id = "moe", title = "The moe module", intro =
  "`local moe = require \"moe\"` (preloaded as the global `moe` in the REPL and in `moelua -e`). Every tensor op "
  .. "is both a function and a method (`moe.sum(t, 2)` is `t:sum(2)`); dims and indices are 1-based, negative dims "
  .. "count from the end; sizes are varargs or one table; an options table comes last.",
  entries = {
    { "moe", "moe", "Tensors, autograd and Mixture-of-Experts layers for LuaJIT, on a C engine.",
      details = "Submodules load on first use: moe.nn (layers), moe.optim, moe.losses, moe.metrics, moe.callbacks, "
        .. "moe.data, moe.datasets, moe.plot, moe.io, moe.cuda, moe.initializers, moe.regularizers, "
        .. "moe.constraints, moe.testing, moe.doc. Models: moe.Sequential, moe.Model, moe.Input, moe.load.\n"
        .. "help(x) explains a function, class, object or name: help(moe.randn), help(moe.nn.Dense), "
        .. "help(model.fit), help \"nn.Dense\", help \"fit\". `moelua doc NAME` prints the same on the command "
        .. "line, and docs/api.md holds every entry.",
      example = "local x = moe.randn(4, 3)\nprint(x:sum(2))\nhelp(moe.nn.Dense)" },
    { "help", "moe.help([x])", "Prints the documentation of x: a function, a class, an object (its class), a "
      .. "module, or a name as a string.",
      details = "A name may be written with or without moe. (\"nn.Dense\", \"moe.randn\"), as a method "
        .. "(\"t:sum\", \"model:fit\", \"nn.Module:fit\") or by its last part alone (\"Dense\", \"fit\") when that "
        .. "is unambiguous; an ambiguous name lists its candidates. help() prints the overview. In the REPL and in "
        .. "`moelua -e` code, help is also a global.",
      aliases = { "doc.help" }, returns = "nothing (it prints).", example = "help(moe.nn.Dense)\nhelp \"fit\"\nhelp(model.fit)",
      see = { "doc.find", "doc.search" } },
    { "core", "moe.core", "The C binding (`moe.core`): every tensor op, plus the plumbing that the Lua library uses "
      .. "and that is not part of the public API (checkpoint bytes, the fused optimizer step, routing plans).",
      details = "Use the functions on moe itself; moe.core's others may change without notice." },
    { "config", "moe.config()", "What this process runs on: the version, the BLAS and its kernel set (who chose "
      .. "it, and why), the sgemm library, the CPU's features, the bf16 GEMMs' backend, the experts' precision and "
      .. "the CUDA backend.",
      returns = "a table {version, luajit, blas, sgemm, bf16, precision, cuda = {built, devices}} whose "
        .. "tostring is a readable report.", example = "print(moe.config())" },
    { "now", "moe.now()", "Seconds on a monotonic clock (CLOCK_MONOTONIC), for timing loops.",
      returns = "a number.", example = "local t0 = moe.now(); work(); print(moe.now() - t0)" },
    { "set_printoptions", "moe.set_printoptions(opts)", "Sets how tensors print.",
      options = {
        { "threshold", "integer", "1000", "tensors with more elements show only edgeitems entries at each end of every dim" },
        { "edgeitems", "integer", "3", "entries shown at each end of a summarized dim" },
        { "precision", "integer", "4", "digits after the decimal point" },
        { "linewidth", "integer", "80", "accepted for PyTorch's name; the printer does not wrap rows" },
      }, example = "moe.set_printoptions { precision = 2 }" },
    { "manual_seed", "moe.manual_seed(seed)", "Resets the random generator (Philox4x32-10) to seed, an integer in "
      .. "[0, 2^64): every random op after it is reproducible, on the CPU and on a CUDA device alike.",
      example = "moe.manual_seed(42); local a = moe.rand(3)" },
    { "set_default_device", "moe.set_default_device(device)", "Where creation functions (zeros, randn, tensor, "
      .. "...) put new tensors: \"cpu\" (the default) or \"cuda\" (an error when no device is available).",
      details = "A creation call's own device option overrides it; ops put their results on the device of their "
        .. "inputs whatever the default.", example = "moe.set_default_device(\"cuda\")", see = { "get_default_device" } },
    { "get_default_device", "moe.get_default_device()", "The default device of creation functions: \"cpu\" or \"cuda\".",
      returns = "a string." },
    { "set_precision", "moe.set_precision(p)", "The precision of the experts' GEMMs (the sparse MoeLayer's grouped "
      .. "GEMMs, TabularMoELayer's and MMoE/OMoE's expert kernels), forward and backward: \"fp32\" (the default) "
      .. "or \"bf16\" (float32 operands rounded to bfloat16, fp32 sums and outputs, fp32 master weights).",
      details = "Routers, gates, Dense layers and towers stay fp32. moe.config().bf16 says which backend runs the "
        .. "bf16 GEMMs on the CPU.", returns = "the previous precision.", example = "local old = moe.set_precision(\"bf16\")",
      see = { "get_precision", "cuda.set_precision" } },
    { "get_precision", "moe.get_precision()", "The experts' GEMM precision: \"fp32\" or \"bf16\".", returns = "a string." },
    { "set_deterministic", "moe.set_deterministic(on)", "Deterministic mode for the device's float scatters "
      .. "(scatter_add, index_add, and so the sparse layer's combine and the backward of index_select/gather): "
      .. "with on = true they add each destination's sources in source order, giving the CPU's bits every run, "
      .. "at the cost of a sort per call.",
      details = "The CPU sums in source order in either mode; reductions, sort and topk are deterministic in both.",
      returns = "the previous mode (a boolean).", example = "moe.set_deterministic(true)" },
    { "get_deterministic", "moe.get_deterministic()", "Whether deterministic mode is on.", returns = "a boolean." },
    { "set_num_threads", "moe.set_num_threads(n)", "The CPU threads of this process from now on: the kernels' "
      .. "thread pool and OpenBLAS's (BLIS, oneDNN and the bf16 GEMMs are given the same count), at most 8; 0 "
      .. "restores the default (the cores, or MOE_NUM_THREADS). Under mpirun each rank starts with one when "
      .. "several share the machine (moe.distributed.info().threads_reason says why).",
      returns = "the previous count.", example = "moe.set_num_threads(1)" },
    { "get_num_threads", "moe.get_num_threads()", "The CPU threads of this process.", returns = "an integer." },
    { "peak_bytes", "moe.peak_bytes([reset])", "The most tensor bytes live at once since the last reset; "
      .. "reset = true starts a new measurement.", returns = "a number of bytes.",
      example = "moe.peak_bytes(true); step(); print(moe.peak_bytes())" },
    { "empty_cache", "moe.empty_cache()", "Hands back to the system the freed host blocks that wait in the "
      .. "allocator's cache for the next tensor of their size.", returns = "the number of bytes freed.",
      see = { "cuda.empty_cache" } },
  } }

S[#S + 1] = { id = "create", title = "Creating tensors", intro =
  "dtypes: `float32` (the default), `float64`, `int32`, `int64`, `bool`. Sizes are varargs (`moe.zeros(2, 3)`) "
  .. "or one table (`moe.zeros{2, 3}`); the options table comes last.",
  entries = {
    { "tensor", "moe.tensor(data, [opts])", "A new tensor from a nested table of numbers (or booleans), a number, or "
      .. "another tensor (a copy, a new leaf).",
      details = "Nested tables must be rectangular; a hole ({1, nil, 3}) or a value the dtype cannot hold is an "
        .. "error. Numbers give float32, booleans bool, unless opts.dtype says otherwise; from a tensor the dtype "
        .. "and device are kept unless given.",
      options = creation_opts(), example = "local x = moe.tensor({{1, 2}, {3, 4}}, { dtype = \"float64\" })" },
    { "zeros", "moe.zeros(size..., [opts])", "A tensor of zeros.", options = creation_opts(),
      example = "moe.zeros(2, 3)" },
    { "ones", "moe.ones(size..., [opts])", "A tensor of ones.", options = creation_opts(), example = "moe.ones{4}" },
    { "full", "moe.full(size..., value, [opts])", "A tensor filled with value (a number, or a boolean for bool); "
      .. "the last number of the varargs is the value (moe.full(2, 3, 7) is 2x3 sevens), or moe.full({2, 3}, 7).",
      options = creation_opts(), example = "moe.full({2, 2}, 0.5)" },
    { "empty", "moe.empty(size..., [opts])", "A tensor whose values are not set (whatever the memory held): for "
      .. "outputs that are overwritten.", options = creation_opts(), example = "local buf = moe.empty(1024)" },
    { "rand", "moe.rand(size..., [opts])", "Uniform samples in [0, 1) (float32 or float64).",
      options = creation_opts(), example = "moe.rand(3, 2)", see = { "manual_seed" } },
    { "randn", "moe.randn(size..., [opts])", "Samples of the standard normal distribution N(0, 1) (float32 or "
      .. "float64; Box-Muller on the Philox generator, drawn on the device itself for device = \"cuda\").",
      options = creation_opts(), example = "local w = moe.randn(3, 2, { requires_grad = true })", see = { "manual_seed" } },
    { "randint", "moe.randint(low, high, size..., [opts])", "Uniform random integers in [low, high], both ends "
      .. "included (as math.random).", options = creation_opts("\"int64\""), example = "moe.randint(1, 6, 10)" },
    { "randperm", "moe.randperm(n, [opts])", "A random permutation of 1..n.", options = creation_opts("\"int64\""),
      example = "local order = moe.randperm(100)" },
    { "arange", "moe.arange([start = 0], end, [step = 1], [opts])", "Values from start up to, not including, end "
      .. "(half-open, as NumPy).",
      details = "The dtype is int64 when start, end and step are all integers, else float32.",
      options = creation_opts("int64 for integer arguments, else float32"), example = "moe.arange(5)          -- 0 1 2 3 4\nmoe.arange(1, 2, 0.25)" },
    { "linspace", "moe.linspace(start, stop, steps, [opts])", "steps values evenly spaced from start to stop, both "
      .. "included.", options = creation_opts(), example = "moe.linspace(0, 1, 5)" },
    { "eye", "moe.eye(n, [m = n], [opts])", "The n x m identity matrix.", options = creation_opts(),
      example = "moe.eye(3)" },
    { "zeros_like", "moe.zeros_like(t, [opts])", "Zeros of t's shape, on t's device, of t's dtype unless opts.dtype "
      .. "says otherwise.", options = LIKE },
    { "ones_like", "moe.ones_like(t, [opts])", "Ones of t's shape, dtype and device.", options = LIKE },
    { "empty_like", "moe.empty_like(t, [opts])", "An unset tensor of t's shape, dtype and device.", options = LIKE },
    { "rand_like", "moe.rand_like(t, [opts])", "Uniform [0, 1) samples of t's shape, dtype and device.", options = LIKE },
    { "randn_like", "moe.randn_like(t, [opts])", "N(0, 1) samples of t's shape, dtype and device.", options = LIKE },
    { "full_like", "moe.full_like(t, value, [opts])", "value in t's shape, dtype and device.", options = LIKE },
    { "is_tensor", "moe.is_tensor(v)", "Whether v is a tensor.", returns = "a boolean." },
  } }

S[#S + 1] = { id = "tensor", title = "Tensors: fields and information", intro =
  "A tensor is a strided view onto a storage, on the CPU or a CUDA device. Arithmetic operators work with NumPy "
  .. "broadcasting (`+ - * / ^` and unary `-`); `#t` is the size of dim 1; `t[i]` selects along dim 1 (a number "
  .. "for a 1-D tensor), `t[{i, {a, b}, {}}]` selects, narrows (inclusive ranges, negative from the end) or keeps "
  .. "dims, and `t[...] = value` writes through the view.",
  entries = {
    { "Tensor", "moe.Tensor", "The methods shared by every tensor: every op documented here with a t:op(...) form.",
      details = "Indexing: t[i], t[{i, {a, b}, {}}]; assignment t[{...}] = number or tensor. Fields: t.grad, "
        .. "t.requires_grad, t.grad_fn, t.is_leaf.", list_members = true, members_prefix = "Tensor",
      example = "local t = moe.arange(12):view(3, 4)\nprint(t[2], t[{ {}, {2, 3} }])" },
    { "Tensor.grad", "t.grad", "The gradient accumulated by backward (a tensor of t's shape), or nil; assign nil to "
      .. "zero it (as PyTorch's set_to_none) or a tensor of t's shape and dtype.", field = true },
    { "Tensor.requires_grad", "t.requires_grad", "Whether ops on t are recorded for backward; assignable on a leaf "
      .. "of a float dtype (t.requires_grad = true).", field = true },
    { "Tensor.grad_fn", "t.grad_fn", "The name of the op that made t (a string), or nil for a leaf.", field = true },
    { "Tensor.is_leaf", "t.is_leaf", "Whether t was made by the user rather than by a recorded op.", field = true },
    { "shape", "t:shape()", "The sizes, as a new Lua list ({} for a 0-dim tensor).", method = true,
      example = "moe.zeros(2, 3):shape()   -- {2, 3}" },
    { "size", "t:size([dim])", "The size of dim (negative counts from the end), or the whole shape as t:shape().",
      method = true, example = "print(x:size(1), x:size(-1))" },
    { "dim", "t:dim()", "The number of dims.", method = true },
    { "numel", "t:numel()", "The number of elements.", method = true },
    { "dtype", "t:dtype()", "The dtype's name: \"float32\", \"float64\", \"int32\", \"int64\" or \"bool\".", method = true },
    { "device", "t:device()", "\"cpu\" or \"cuda\".", method = true },
    { "stride", "t:stride([dim])", "The stride (in elements) of dim, or the list of strides.", method = true },
    { "is_contiguous", "t:is_contiguous()", "Whether the elements lie in row-major order without gaps.", method = true },
    { "Tensor:storage_offset", "t:storage_offset()", "The view's offset (in elements) into its storage." },
    { "Tensor:same_storage", "t:same_storage(other)", "Whether t and other are views of the same storage." },
    { "item", "t:item()", "The value of a one-element tensor, as a Lua number (a boolean for bool); reads a device "
      .. "tensor back.", method = true, example = "moe.ones(3):sum():item()   -- 3" },
    { "totable", "t:totable()", "The values as nested Lua lists (numbers, or booleans for bool).", method = true,
      example = "moe.eye(2):totable()   -- {{1, 0}, {0, 1}}" },
    { "is_same_size", "t:is_same_size(other)", "Whether the two tensors have the same shape.", method = true },
  } }

S[#S + 1] = { id = "views", title = "Tensors: views, copies, dtypes and devices", intro =
  "Views share their storage with the tensor they come from: a write through one is seen by the other.",
  entries = {
    { "view", "t:view(size...)", "A view of t with another shape (same number of elements; one size may be -1, "
      .. "inferred); t must be laid out so that no copy is needed (reshape copies when it must).", method = true,
      example = "moe.arange(6):view(2, -1)" },
    { "reshape", "t:reshape(size...)", "t with another shape: a view when the layout allows, else a copy; one size "
      .. "may be -1.", method = true, example = "x:reshape(x:size(1), -1)" },
    { "view_as", "t:view_as(other)", "t:view(other:shape()).", method = true },
    { "flatten", "t:flatten()", "t:reshape(-1): a 1-D tensor of every element.", method = true },
    { "expand", "t:expand(size... | other)", "A broadcast view of t to a larger shape (or to other's shape): dims of "
      .. "size 1 repeat without copying; -1 keeps a size; new leading dims may be added.", method = true,
      example = "moe.ones(3, 1):expand(3, 4)" },
    { "expand_as", "t:expand_as(other)", "t:expand(other).", method = true },
    { "transpose", "t:transpose([dim1, dim2])", "A view with dim1 and dim2 swapped (a 2-D tensor's two dims when "
      .. "none are given).", method = true, example = "x:transpose()  -- a matrix's transpose" },
    { "permute", "t:permute(dims...)", "A view with the dims reordered (one entry per dim, as varargs or one table).",
      method = true, example = "x:permute(2, 3, 1)" },
    { "narrow", "t:narrow(dim, start, length)", "The view of length entries of dim from start (1-based; negative "
      .. "counts from the end).", method = true, example = "x:narrow(1, 2, 3)   -- rows 2..4" },
    { "select", "t:select(dim, index)", "The slice at index of dim (1-based, negative from the end); the dim "
      .. "disappears.", method = true, example = "x:select(2, -1)   -- the last column" },
    { "squeeze", "t:squeeze([dim])", "A view without dims of size 1 (every such dim, or only dim when it has size 1).",
      method = true },
    { "unsqueeze", "t:unsqueeze(dim)", "A view with a new dim of size 1 at dim (1..t:dim() + 1).", method = true,
      example = "moe.ones(3):unsqueeze(1):shape()  -- {1, 3}" },
    { "split", "t:split(size | sizes, [dim = 1])", "Views of t along dim: of size entries each (the last may be "
      .. "smaller), or of the given list of sizes (which must add up to the dim's size).", method = true,
      returns = "a list of tensors.", example = "local a, b = unpack(moe.arange(10):split({ 3, 7 }))" },
    { "chunk", "t:chunk(n, [dim = 1])", "n views of (nearly) equal size along dim, as torch.chunk.", method = true,
      returns = "a list of tensors." },
    { "contiguous", "t:contiguous()", "t itself when contiguous, else a contiguous copy.", method = true },
    { "clone", "t:clone()", "A copy with its own storage (recorded: gradients flow back to t).", method = true },
    { "copy_", "t:copy_(src)", "Copies src (a tensor broadcastable to t, from any device and dtype; or a number) "
      .. "into t. Returns t.", method = true },
    { "fill_", "t:fill_(value)", "Sets every element to value (a number or boolean). Returns t.", method = true },
    { "zero_", "t:zero_()", "t:fill_(0).", method = true },
    { "to", "t:to(dtype | device | {dtype = ...})", "t converted to a dtype (\"float32\", \"float64\", \"int32\", "
      .. "\"int64\", \"bool\"; t itself when it has it already), or moved to \"cuda\" or \"cpu\".", method = true,
      details = "Conversion to an integer dtype truncates toward zero and saturates at the dtype's range.",
      aliases = { "type", "Tensor:type" }, example = "local d = x:to(\"float64\")\nlocal g = x:to(\"cuda\")" },
    { "float", "t:float()", "t:to(\"float32\").", method = true },
    { "double", "t:double()", "t:to(\"float64\").", method = true },
    { "int", "t:int()", "t:to(\"int32\").", method = true },
    { "long", "t:long()", "t:to(\"int64\").", method = true },
    { "bool", "t:bool()", "t:to(\"bool\") (non-zero is true).", method = true },
    { "cpu", "t:cpu()", "t's values on the host (t itself when already there).", method = true },
    { "Tensor:cuda", "t:cuda()", "t's values on the CUDA device (t itself when already there); an error when no "
      .. "device is available. (moe.cuda is the device module.)", see = { "cuda" } },
    { "pin_memory", "t:pin_memory()", "A contiguous copy of a host tensor in pinned (page-locked) memory (t itself "
      .. "when it already is one), from which copies to the device run asynchronously (fit gathers its batches there "
      .. "for a device model).", details = "Pinned memory is the CUDA driver's: without a device (or in a build "
      .. "without CUDA) it is an error that says so, as it is for a tensor already on the device.", method = true,
      example = "local xb = x:index_select(1, idx):pin_memory()\nlocal xg = xb:cuda()" },
    { "is_pinned", "t:is_pinned()", "Whether t lies in pinned host memory (false for ordinary host memory and for "
      .. "device tensors).", method = true, returns = "a boolean." },
  } }

S[#S + 1] = { id = "math", title = "Tensors: elementwise math", intro =
  "Binary ops take a tensor or a number on either side and broadcast as NumPy does. `a + b` is `a:add(b)`, and "
  .. "so on for `- * / ^`; unary `-a` is `a:neg()`. Integer `/` gives float32.",
  entries = {
    binary("add", "Elementwise a + b.", "moe.ones(2, 3):add(moe.arange(3))"),
    binary("sub", "Elementwise a - b."),
    binary("mul", "Elementwise a * b."),
    binary("div", "Elementwise a / b (float32 for integer operands)."),
    binary("pow", "Elementwise a ^ b."),
    binary("maximum", "The elementwise larger of a and b (ties split the gradient evenly)."),
    binary("minimum", "The elementwise smaller of a and b."),
    inplace("add_", "t = t + other, in place."),
    inplace("sub_", "t = t - other, in place."),
    inplace("mul_", "t = t * other, in place."),
    inplace("div_", "t = t / other, in place."),
    inplace("pow_", "t = t ^ other, in place."),
    inplace("maximum_", "t = maximum(t, other), in place."),
    inplace("minimum_", "t = minimum(t, other), in place."),
    compare("eq", "Elementwise a == b."),
    compare("ne", "Elementwise a ~= b."),
    compare("lt", "Elementwise a < b."),
    compare("le", "Elementwise a <= b."),
    compare("gt", "Elementwise a > b."),
    compare("ge", "Elementwise a >= b."),
    unary("neg", "Elementwise -t."),
    unary("abs", "Elementwise |t|."),
    unary("relu", "Elementwise max(t, 0)."),
    unary("sign", "Elementwise sign: -1, 0 or 1."),
    unary("square", "Elementwise t * t."),
    unary("exp", "Elementwise e^t."),
    unary("log", "Elementwise natural logarithm."),
    unary("sqrt", "Elementwise square root."),
    unary("rsqrt", "Elementwise 1 / sqrt(t)."),
    unary("tanh", "Elementwise hyperbolic tangent."),
    unary("sigmoid", "Elementwise 1 / (1 + e^-t)."),
    unary("gelu", "Elementwise GELU, exact (t * Phi(t), with erf; in float32 a rational fit of erf, absolute error "
      .. "under 4e-7)."),
    unary("softplus", "Elementwise log(1 + e^t), computed stably."),
    unary("log1p", "Elementwise log(1 + t), accurate near 0."),
    unary("expm1", "Elementwise e^t - 1, accurate near 0."),
    unary("floor", "Elementwise floor."),
    unary("ceil", "Elementwise ceiling."),
    unary("round", "Elementwise rounding to the nearest integer, halves to even."),
    { "clamp", "t:clamp([min], [max])", "Elementwise min(max(t, min), max); either bound may be nil, and they may "
      .. "be given as {min = ..., max = ...}.", method = true, example = "x:clamp(0, 6)" },
    { "where", "moe.where(cond, a, b)", "Elementwise a where cond (a bool tensor) is true, else b; a and b are "
      .. "tensors or numbers, and the three broadcast together.", method = true,
      details = "As a method the condition comes first: cond:where(a, b).",
      example = "moe.where(x:gt(0), x, x * 0.2)" },
  } }

S[#S + 1] = { id = "reduce", title = "Tensors: reductions and scans", intro = REDUCE_DETAILS,
  entries = {
    reduce("sum", "The sum of the elements, over every dim or the given ones."),
    reduce("mean", "The mean, over every dim or the given ones."),
    reduce("prod", "The product, over every dim or the given ones."),
    { "var", "t:var([dim], [opts])", "The variance, unbiased (divided by n - 1) unless {unbiased = false} (or "
      .. "{correction = 0}); over every dim or the given ones.", method = true,
      options = { { "keepdim", "boolean", "false", "keep reduced dims with size 1" },
        { "unbiased", "boolean", "true", "divide by n - 1 (false: by n)" },
        { "correction", "integer", "1", "divide by n - correction" } },
      example = "x:var(1, { unbiased = false })" },
    { "std", "t:std([dim], [opts])", "The standard deviation: sqrt of var, with var's options.", method = true,
      options = { { "keepdim", "boolean", "false", "keep reduced dims with size 1" },
        { "unbiased", "boolean", "true", "divide by n - 1 (false: by n)" },
        { "correction", "integer", "1", "divide by n - correction" } } },
    { "max", "t:max([dim], [keepdim]) | t:max(other)", "The largest element (a 0-dim tensor); along a dim, the "
      .. "values and their 1-based indices; with a tensor argument, the elementwise maximum.", method = true,
      returns = "a tensor, or (with a dim) values and indices.", example = "local v, i = x:max(2)" },
    { "min", "t:min([dim], [keepdim]) | t:min(other)", "The smallest element; along a dim, values and 1-based "
      .. "indices; with a tensor argument, the elementwise minimum.", method = true,
      returns = "a tensor, or (with a dim) values and indices." },
    reduce("argmax", "The 1-based index of the largest element (of the flattened tensor, or along dim)."),
    reduce("argmin", "The 1-based index of the smallest element (of the flattened tensor, or along dim)."),
    reduce("logsumexp", "log(sum(exp(t))), computed stably."),
    reduce("all", "Whether every element is non-zero (true), as a bool tensor."),
    reduce("any", "Whether some element is non-zero (true), as a bool tensor."),
    { "softmax", "t:softmax([dim = -1])", "exp(t) normalized to sum to 1 along dim (the last by default).",
      method = true, example = "logits:softmax()" },
    { "log_softmax", "t:log_softmax([dim = -1])", "log(softmax(t)), computed stably.", method = true },
    { "cumsum", "t:cumsum([dim = -1])", "Running sums along dim.", method = true },
    { "cumprod", "t:cumprod([dim = -1])", "Running products along dim.", method = true },
  } }

S[#S + 1] = { id = "index", title = "Tensors: matmul, sorting, indexing, joining", intro =
  "Index tensors are int64 (or int32) and 1-based, like every index in moelua.",
  entries = {
    { "matmul", "t:matmul(other, [precision])", "Matrix product: 2-D x 2-D, batched (leading dims broadcast), and "
      .. "1-D vectors as in NumPy; transposed views go to BLAS without a copy.", method = true,
      details = "precision \"bf16\" rounds float32 operands to bfloat16 (fp32 sums), as moe.set_precision's expert GEMMs.",
      example = "moe.randn(2, 3):matmul(moe.randn(3, 4))" },
    { "linear", "moe.linear(x, w, [b], [activation], [precision])", "activation(x w + b) as one op: the output "
      .. "starts as the bias, one GEMM accumulates into it, and a \"relu\", \"sigmoid\" or \"tanh\" activation is "
      .. "applied in place (nn.Dense runs on it).",
      args = { { "x", "tensor", "[..., in]" }, { "w", "tensor", "[in, out]" }, { "b", "tensor or nil", "[out]" },
        { "activation", "string or nil", "relu, sigmoid, tanh or linear" },
        { "precision", "string or nil", "fp32 or bf16" } },
      example = "local y = moe.linear(x, w, b, \"relu\")" },
    { "topk", "t:topk(k, [dim = -1], [largest = true])", "The k largest (or smallest) entries along dim, in order.",
      method = true, returns = "values and their 1-based indices (int64).", example = "local v, i = x:topk(2)" },
    { "sort", "t:sort([dim = -1], [descending = false])", "The entries sorted along dim (stable).", method = true,
      returns = "values and their 1-based indices.", example = "local v, i = x:sort(1, true)" },
    { "argsort", "t:argsort([dim = -1], [descending = false])", "The 1-based indices that sort t along dim.",
      method = true },
    { "gather", "t:gather(dim, index)", "out[i][j] = t[index[i][j]][j] for dim 1 (and so on): values picked along dim "
      .. "by a 1-based index tensor of the output's shape.", method = true,
      example = "probs:gather(2, labels:view(-1, 1))" },
    { "scatter_add", "t:scatter_add(dim, index, src)", "A copy of t with src's values added at the 1-based positions "
      .. "index gives along dim (the reverse of gather).", method = true },
    { "scatter_add_", "t:scatter_add_(dim, index, src)", "scatter_add in place. Returns t.", method = true },
    { "index_select", "t:index_select(dim, index)", "The slices of t at the 1-based indices (a 1-D tensor) along dim.",
      method = true, example = "x:index_select(1, moe.tensor({3, 1}, { dtype = \"int64\" }))" },
    { "index_add", "t:index_add(dim, index, src)", "A copy of t with src's slices added at the 1-based indices "
      .. "along dim (repeated indices accumulate).", method = true },
    { "index_add_", "t:index_add_(dim, index, src)", "index_add in place. Returns t.", method = true },
    { "bincount", "t:bincount([weights], [minlength]) | t:bincount{weights, minlength}", "Counts of each value "
      .. "1..n of a 1-D integer tensor (n is the largest value, or minlength if larger); with weights, their sums.",
      method = true, returns = "an int64 tensor of counts (or of the weights' float dtype).",
      example = "moe.tensor({1, 3, 3}, { dtype = \"int64\" }):bincount()   -- 1 0 2" },
    { "cat", "moe.cat(tensors, [dim = 1])", "The tensors (a list) joined along an existing dim.",
      example = "moe.cat({ a, b }, 2)" },
    { "stack", "moe.stack(tensors, [dim = 1])", "The tensors (a list, equal shapes) joined along a new dim.",
      example = "moe.stack({ a, b })" },
  } }

S[#S + 1] = { id = "fused", title = "Fused Mixture-of-Experts ops", intro =
  "The C ops under the MoE layers, each with its backward; usable directly.",
  entries = {
    { "mixture", "moe.mixture(h, g)", "The gate-weighted sum of expert outputs: out[b, u] = sum_e g[b, e] h[b, u, e] "
      .. "(MMoE's mixture).", args = { { "h", "tensor", "[B, U, E] expert outputs" }, { "g", "tensor", "[B, E] gates" } },
      returns = "a [B, U] tensor." },
    { "gate_scale", "moe.gate_scale(h, g, [opts])", "Scales expert e's units h[b, (e-1)U+1 .. eU] by its gate "
      .. "g[b, e] (TabularMoELayer's gating), optionally after a relu, and optionally appends the gates.",
      args = { { "h", "tensor", "[B, E*U] hidden units" }, { "g", "tensor", "[B, E] gates" } },
      options = { { "relu", "boolean", "false", "apply relu to h first" },
        { "append_gate", "boolean", "false", "append g as E extra columns" } },
      returns = "a [B, E*U] tensor ([B, E*U + E] with append_gate)." },
    { "grouped_matmul", "moe.grouped_matmul(x, w, [bias], counts, [precision])", "One GEMM per expert on contiguous "
      .. "row groups: rows 1..counts[1] of x times w[1], the next counts[2] rows times w[2], and so on (the sparse "
      .. "MoeLayer's experts).",
      args = { { "x", "tensor", "[A, K] rows sorted by expert" }, { "w", "tensor", "[E, K, N]" },
        { "bias", "tensor or nil", "[E, N]" }, { "counts", "int64 tensor", "[E] rows per expert, summing to A" },
        { "precision", "string or nil", "fp32 or bf16" } },
      returns = "an [A, N] tensor." },
  } }

S[#S + 1] = { id = "autograd", title = "Autograd", intro =
  "Ops on tensors that require grad are recorded; `loss:backward()` fills the leaves' `.grad`, which accumulates "
  .. "until it is set to nil.",
  entries = {
    { "backward", "t:backward([grad], [opts])", "Back-propagates from t (a scalar, or with grad of t's shape) into "
      .. "the .grad of every leaf that requires grad; the graph's buffers are freed unless retain_graph is set.",
      method = true, options = { { "retain_graph", "boolean", "false", "keep the graph for a second backward" } },
      example = "local loss = x:matmul(w):sum()\nloss:backward()\nprint(w.grad)" },
    { "detach", "t:detach()", "A tensor sharing t's storage, outside the graph (no gradient flows through it).",
      method = true },
    { "requires_grad_", "t:requires_grad_([on = true])", "Sets t.requires_grad (float leaves only). Returns t.",
      method = true },
    { "Tensor:has_grad", "t:has_grad()", "Whether t.grad is set (without making a tensor for it)." },
    { "no_grad", "moe.no_grad(fn, ...)", "Calls fn(...) with gradient recording off (restored on return and on "
      .. "error).", returns = "what fn returns.", example = "moe.no_grad(function() w:sub_(w.grad * 0.1) end)" },
    { "enable_grad", "moe.enable_grad(fn, ...)", "Calls fn(...) with recording on, inside a no_grad region.",
      returns = "what fn returns." },
    { "set_grad_enabled", "moe.set_grad_enabled(on)", "Turns gradient recording on or off.",
      returns = "the previous setting (a boolean)." },
    { "is_grad_enabled", "moe.is_grad_enabled()", "Whether gradient recording is on.", returns = "a boolean." },
  } }

return S
