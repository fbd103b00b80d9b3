-- Naive references for the specs: tensors flattened to Lua arrays, and plain
-- loops over multi-indices. Nothing here calls the op it is used to check.
local moe = require "moe"
local H = {}

function H.numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end

-- row-major flat values of a tensor, read element by element through t[...]
function H.flat(t)
  local out = {}
  local function rec(v)
    if type(v) == "table" then for _, x in ipairs(v) do rec(x) end else out[#out + 1] = v end
  end
  local tt = t:totable()
  if type(tt) ~= "table" then return { tt } end
  rec(tt)
  return out
end

-- multi-index (1-based) of flat position p (0-based) for shape
function H.unravel(p, shape)
  local idx = {}
  for d = #shape, 1, -1 do
    idx[d] = p % shape[d] + 1
    p = math.floor(p / shape[d])
  end
  return idx
end

function H.ravel(idx, shape)
  local p = 0
  for d = 1, #shape do p = p * shape[d] + (idx[d] - 1) end
  return p
end

function H.broadcast_shape(a, b)
  local n = math.max(#a, #b)
  local out = {}
  for i = 1, n do
    local sa = a[i - (n - #a)] or 1
    local sb = b[i - (n - #b)] or 1
    assert(sa == sb or sa == 1 or sb == 1, "shapes do not broadcast")
    out[i] = sa == 1 and sb or sa
  end
  return out
end

-- value of flat array `v` (shape s) at the broadcast multi-index idx (of shape out)
function H.bget(v, s, idx)
  local lead = #idx - #s
  local sub = {}
  for d = 1, #s do
    local i = idx[d + lead]
    sub[d] = s[d] == 1 and 1 or i
  end
  return v[H.ravel(sub, s) + 1]
end

-- elementwise reference: f applied over broadcast operands
function H.map(f, ...)
  local ops = { ... }
  local shape = {}
  for _, o in ipairs(ops) do shape = H.broadcast_shape(shape, o:shape()) end
  local vals = {}
  for k, o in ipairs(ops) do vals[k] = H.flat(o) end
  local out = {}
  for p = 0, H.numel(shape) - 1 do
    local idx = H.unravel(p, shape)
    local args = {}
    for k, o in ipairs(ops) do args[k] = H.bget(vals[k], o:shape(), idx) end
    out[p + 1] = f(unpack(args))
  end
  return out, shape
end

function H.same_shape(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

-- max abs difference with NaN equal to NaN; returns math.huge on shape mismatch
function H.maxdiff(t, ref, shape)
  if shape and not H.same_shape(t:shape(), shape) then return math.huge end
  local v = H.flat(t)
  if #v ~= #ref then return math.huge end
  local m = 0
  for i = 1, #v do
    local a, b = v[i], ref[i]
    if type(a) == "boolean" then a = a and 1 or 0 end
    if type(b) == "boolean" then b = b and 1 or 0 end
    if a ~= a or b ~= b then
      if (a ~= a) ~= (b ~= b) then return math.huge end
    elseif a ~= b then
      if a == math.huge or a == -math.huge or b == math.huge or b == -math.huge then return math.huge end
      local d = math.abs(a - b) / math.max(1, math.abs(b))
      if d > m then m = d end
    end
  end
  return m
end

function H.random_shape(ndim, maxsize)
  local s = {}
  for i = 1, ndim do s[i] = math.random(1, maxsize or 4) end
  return s
end

-- a tensor with the given shape in one of several memory layouts: contiguous,
-- a transposed view, a narrowed view of a bigger tensor, or an expanded view.
function H.layout(shape, kind, opts)
  opts = opts or {}
  local dt = opts.dtype or "float64"
  local function gen(s)
    if dt == "int64" or dt == "int32" then return moe.randint(-5, 5, s, { dtype = dt }) end
    return moe.randn(s, { dtype = dt })
  end
  local nd = #shape
  if kind == "transposed" and nd >= 2 then
    local s = {}
    for i = 1, nd do s[i] = shape[i] end
    s[1], s[nd] = s[nd], s[1]
    local t = gen(s):transpose(1, nd)
    return t
  elseif kind == "narrowed" and nd >= 1 then
    local s = {}
    for i = 1, nd do s[i] = shape[i] end
    s[nd] = s[nd] + 3
    return gen(s):narrow(nd, 2, shape[nd])
  elseif kind == "expanded" and nd >= 1 then
    local s = {}
    for i = 1, nd do s[i] = shape[i] end
    s[1] = 1
    return gen(s):expand(shape)
  end
  return gen(shape)
end
H.layouts = { "contiguous", "transposed", "narrowed", "expanded" }

-- files and processes: a fresh temporary path (nothing created), a file's bytes,
-- bytes written to a file (returns the path), and a shell command's stdout,
-- stderr and exit code (input: text on its stdin)
-- a layer's get_weights() are the weights a fixture case set, in its order,
-- shapes and names, bit for bit (c: {weights, shapes, names}; list: the tensors
-- set); returns them
function H.assert_weights_as_set(layer, c, list)
  local assert = require "luassert" -- busted's assert (specs see it as a global; this module does not)
  local got = layer:get_weights()
  assert.equal(#c.weights, #got)
  for i, w in ipairs(got) do
    assert.same(c.shapes[i], w:shape(), c.names[i])
    assert.equal(0, (w - list[i]):abs():max():item(), c.names[i])
  end
  return got
end

function H.tmpname(suffix)
  local n = os.tmpname()
  os.remove(n)
  return n .. (suffix or "")
end

function H.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function H.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

function H.sh(cmd, input)
  local out, err = H.tmpname(), H.tmpname()
  local full = cmd .. " >" .. out .. " 2>" .. err
  local inp
  if input then
    inp = H.write_file(H.tmpname(), input)
    full = full .. " <" .. inp
  end
  local ok, _, code = os.execute(full)
  local rc = type(ok) == "number" and math.floor(ok / 256) or code -- LuaJIT returns the status number
  if inp then os.remove(inp) end
  local function slurp(p) local f = io.open(p); local s = f and f:read("*a") or ""; if f then f:close() end; os.remove(p); return s end
  return slurp(out), slurp(err), rc
end

-- the message of the error raised by f(...)
function H.error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error, got success")
  return tostring(err)
end

-- in a spec that needs a CUDA device (or the emulator): false, and the test
-- pending as "skipped: no CUDA device" (scripts/test.sh counts them), when there
-- is none; `pending` is the spec file's own (busted's, not a global)
function H.need_device(pending)
  if not require("moe").cuda.is_available() then
    pending("skipped: no CUDA device")
    return false
  end
  return true
end

-- ---------------------------------------------------------------- MPI runs
-- What the specs that run scripts under mpirun share (distributed, reducer,
-- expert_parallel, dist_fit).

local function ok_status(r) return r == 0 or r == true end
local function shq(x) return "'" .. tostring(x):gsub("'", "'\\''") .. "'" end

-- why the MPI cases are skipped here, or nil when they run
function H.mpi_skip_reason()
  if not require("moe").distributed.is_available() then
    return "skipped: this moelua was built without MPI (Debian's libopenmpi-dev was not found at build time)"
  end
  if not ok_status(os.execute("command -v mpirun >/dev/null 2>&1")) then
    return "skipped: mpirun is not installed (Debian's openmpi-bin; scripts/deps.sh installs it)"
  end
end

-- a file's bytes, or nil when it cannot be read
function H.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Each rank's own output. mpirun's --tag-output is not enough: on a busy
-- machine it tags where its reads of a rank's pipe end, even inside a line,
-- and pieces of lines come out of order. So each rank runs under a shell that
-- sends its stdout and stderr straight to dir/rank.<r>.stdout and .stderr,
-- with no mpirun between.
local function rank_wrap(dir)
  return "sh -c 'd=\"$1\"; shift; exec \"$@\" >\"$d/rank.$OMPI_COMM_WORLD_RANK.stdout\" "
    .. "2>\"$d/rank.$OMPI_COMM_WORLD_RANK.stderr\"' sh " .. shq(dir)
end
-- {[rank] = {lines}} of one stream ("stdout" or "stderr") from those files
local function rank_lines(dir, stream)
  local out = {}
  for r = 0, 255 do
    local s = H.read_file(("%s/rank.%d.%s"):format(dir, r, stream))
    if not s then break end
    local lines = {}
    for line in s:gmatch("[^\n]+") do lines[#lines + 1] = line end
    out[r] = lines
  end
  return out
end

-- H.mpi_runner(timeout) -> runner: runner.run(np, src, opts) writes src as a
-- script in a fresh directory and runs it on np ranks under mpirun (np = 0:
-- one plain process), under `timeout` seconds, so that a hang fails instead of
-- blocking the suite. opts: file (a script to run instead of src), args, env (a
-- prefix of the command, such as "env -u X "), timeout. Returns {rc, secs, dir,
-- script, out, err, lines = {[rank] = {stdout lines}}, errs = {[rank] =
-- {stderr lines}}}; out and err hold mpirun's own output, then every rank's; a
-- rank that printed nothing has no entry in lines (or errs). runner.dir() is
-- the runner's temporary directory; runner.cleanup() removes it.
local is_root
function H.mpi_runner(timeout)
  if is_root == nil then is_root = io.popen("id -u"):read("*l") == "0" end
  -- vader's single-copy mechanism (CMA) needs ptrace rights that containers often lack
  local MPIRUN = "mpirun --oversubscribe --tag-output --mca btl_vader_single_copy_mechanism none"
    .. (is_root and " --allow-run-as-root" or "")
  -- (LeakSanitizer counts MPI's own allocations at exit)
  local ENV = os.getenv("MOELUA_ASAN") and "ASAN_OPTIONS=detect_leaks=0 " or ""
  local bin = os.getenv("MOELUA_BIN") or "build/moelua"
  local tmp, n = nil, 0
  local R = {}
  -- the runner's own temporary directory (made on first use), for a spec's other files too
  function R.dir()
    if not tmp then
      tmp = os.tmpname()
      os.remove(tmp)
      assert(ok_status(os.execute("mkdir -p " .. shq(tmp))))
    end
    return tmp
  end
  function R.run(np, src, opts)
    opts = opts or {}
    local tmp = R.dir()
    n = n + 1
    local dir = ("%s/run%d"):format(tmp, n)
    assert(ok_status(os.execute("mkdir -p " .. shq(dir))))
    local script = opts.file or (dir .. "/script.lua")
    if not opts.file then
      local f = assert(io.open(script, "wb"))
      f:write(src)
      f:close()
    end
    local launch = np > 0 and ("%s -np %d %s "):format(MPIRUN, np, rank_wrap(dir)) or ""
    local cmd = ("cd %s && %s%stimeout -k 5 %d %s%s run %s %s > out 2> err; echo $?"):format(shq(dir), ENV,
      opts.env or "", opts.timeout or timeout, launch, shq(bin), shq(script), opts.args or "")
    local t0 = require("moe").now()
    local p = io.popen(cmd)
    local rc = tonumber(p:read("*a"))
    p:close()
    local r = { rc = rc, secs = require("moe").now() - t0, dir = dir, script = script,
      out = H.read_file(dir .. "/out") or "", err = H.read_file(dir .. "/err") or "", lines = {}, errs = {} }
    if np == 0 then
      r.lines[0], r.errs[0] = {}, {}
      for line in r.out:gmatch("[^\n]+") do table.insert(r.lines[0], line) end
      for line in r.err:gmatch("[^\n]+") do table.insert(r.errs[0], line) end
      return r
    end
    for _, s in ipairs { { "stdout", "lines", "out" }, { "stderr", "errs", "err" } } do
      for rk, l in pairs(rank_lines(dir, s[1])) do
        if #l > 0 then
          r[s[2]][rk] = l
          r[s[3]] = r[s[3]] .. table.concat(l, "\n") .. "\n"
        end
      end
    end
    return r
  end
  function R.cleanup() if tmp then os.execute("rm -rf " .. shq(tmp)) end end
  return R
end

return H
