-- moe.datasets: the data of the MMoE paper's experiments, ready to fit.
--
--   local ds = moe.datasets.census_income{ tasks = { "income", "never_married" }, seed = 1 }
--   ds.train.x [n, d] float32; ds.train.y.income, ds.train.y.never_married [n, 1];
--   ds.train.instance_weight [n] (the census weights: pass them as sample_weight to use them);
--   ds.val, ds.test alike;
--   ds.num_features, ds.task_names, ds.feature_names, ds.encoder
--
--   local syn = moe.datasets.synthetic{ n = 12000, correlation = 0.8, seed = 1 }
--   syn.x [n, 100], syn.y = { y1 = [n, 1], y2 = [n, 1] }
--
--   local d = moe.datasets.census_numeric{ path = "data/census-income.test.gz" }
--   d.xtr, d.ytr, d.xva, d.yva: the numeric columns, standardized; income > 50k; 80/20
local moe = require "moe"
local error = moe._error -- every error is raised at the user's line (init.lua)
local data = require "moe.data"

local datasets = {}

-- ------------------------------------------------------------------ census-income

-- the 42 columns of the UCI census-income (KDD) files, as the MMoE seed names them
datasets.CENSUS_COLUMNS = { "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour",
  "hs_college", "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
  "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
  "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
  "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father",
  "country_mother", "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits", "weeks_worked",
  "year", "income_50k" }

-- one-hot encoded, as in the seed (the two industry/occupation codes are categories)
datasets.CENSUS_CATEGORICAL = { "class_worker", "det_ind_code", "det_occ_code", "education", "hs_college",
  "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member", "unemp_reason",
  "full_or_part_emp", "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
  "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "fam_under_18", "country_father",
  "country_mother", "country_self", "citizenship", "vet_question" }

-- standardised (instance_weight is a sample weight, not a feature)
datasets.CENSUS_NUMERIC = { "age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp",
  "own_or_self", "vet_benefits", "weeks_worked", "year" }

local COLLEGE = {
  ["Associates degree-academic program"] = true, ["Associates degree-occup /vocational"] = true,
  ["Bachelors degree(BA AB BS)"] = true, ["Masters degree(MA MS MEng MEd MSW MBA)"] = true,
  ["Prof school degree (MD DDS DVM LLB JD)"] = true, ["Doctorate degree(PhD EdD)"] = true,
}

-- the paper's tasks: label column, and whether a level is the positive class
datasets.CENSUS_TASKS = {
  income = { column = "income_50k", positive = function(v) return v == "50000+." end },
  never_married = { column = "marital_stat", positive = function(v) return v == "Never married" end },
  -- "education level at least college": a college degree (associate's or higher)
  education = { column = "education", positive = function(v) return COLLEGE[v] == true end },
}

-- the bundled file, found from the working directory, the checkout moe is loaded from, or
-- the prefix it is installed in
function datasets.default_path(name)
  name = name or "census-income.test.gz"
  local candidates = { "data/" .. name }
  local init = package.searchpath and package.searchpath("moe", package.path)
  if init then
    local root = init:match("^(.*)/lua/moe/init%.lua$") or init:match("^(.*)/moe/init%.lua$")
    if root then candidates[#candidates + 1] = root .. "/data/" .. name end
    -- `make install` puts the data in PREFIX/share/moelua/data
    local prefix = init:match("^(.*)/share/lua/5%.1/moe/init%.lua$")
    if prefix then candidates[#candidates + 1] = prefix .. "/share/moelua/data/" .. name end
  end
  for _, p in ipairs(candidates) do
    local f = io.open(p, "rb")
    if f then f:close(); return p end
  end
  return candidates[1]
end

local function label_tensor(frame, task)
  local spec = datasets.CENSUS_TASKS[task]
  local levels = frame:levels(spec.column)
  local map = { 0 } -- code 0 (missing): negative
  for i, l in ipairs(levels) do map[i + 1] = spec.positive(l) and 1 or 0 end
  return moe.tensor(map):index_select(1, frame:codes(spec.column):to("int64") + 1):view(-1, 1)
end

-- census_income{path, tasks = {"income", "never_married"}, seed = 1, split = {train=.5, val=.25, test=.25}}
function datasets.census_income(opts)
  opts = opts or {}
  local path = opts.path or datasets.default_path()
  local tasks = opts.tasks or { "income", "never_married" }
  if type(tasks) ~= "table" or #tasks == 0 then error(("census_income: tasks must be a list of task names, got %s"):format(moe._show(tasks)), 2) end
  local drop = { marital_stat = true, income_50k = true, instance_weight = true }
  for _, t in ipairs(tasks) do
    local spec = datasets.CENSUS_TASKS[t]
    if not spec then
      error(("census_income: unknown task '%s' (income, never_married, education)"):format(tostring(t)), 2)
    end
    drop[spec.column] = true
  end
  -- "NA" is a level of hisp_origin (not available), not a missing value: the
  -- reference reads the file with pandas, whose fields keep their leading space
  local frame = data.read_csv(path, { header = false, columns = datasets.CENSUS_COLUMNS, keep_default_na = false,
    dtypes = { det_ind_code = "categorical", det_occ_code = "categorical" } })
  local cat, num = {}, {}
  for _, c in ipairs(datasets.CENSUS_CATEGORICAL) do if not drop[c] then cat[#cat + 1] = c end end
  for _, c in ipairs(datasets.CENSUS_NUMERIC) do if not drop[c] then num[#num + 1] = c end end
  local parts = data.split(frame:nrows(), opts.split or { train = 0.5, val = 0.25, test = 0.25, seed = opts.seed or 1 })
  local enc = data.FeatureEncoder { categorical = cat, numeric = num }
  enc:fit(frame:take(parts.train))
  local ds = { encoder = enc, feature_names = enc:feature_names(), task_names = tasks, path = path,
    nrows = frame:nrows() }
  ds.num_features = #ds.feature_names
  for name, rows in pairs(parts) do
    local f = frame:take(rows)
    local y = {}
    for _, t in ipairs(tasks) do y[t] = label_tensor(f, t) end
    ds[name] = { x = enc:transform(f), y = y, instance_weight = f:values("instance_weight"):float(), rows = rows }
  end
  return ds
end

-- census_numeric{path}: the census file's seven numeric columns (age, wage per
-- hour, capital gains and losses, dividends, persons worked for, weeks worked),
-- standardized, and income > 50k as the label; rows split 80/20 by a
-- permutation drawn after moe.manual_seed(0). Returns { names, xtr [n, 7],
-- ytr [n, 1], xva, yva, nrows, path, seconds } (the census_logreg and
-- census_mlp scripts' data). Read line by line through zlib, as the file is.
local census_numeric_columns = { age = 0, wage_per_hour = 5, capital_gains = 16, capital_losses = 17,
  dividends = 18, num_persons_worked = 30, weeks_worked = 39 } -- 0-based, as in the UCI description

local function read_census_numeric(path, names)
  local ffi = require "ffi"
  pcall(ffi.cdef, [[
typedef struct gzFile_s *gzFile;
gzFile gzopen(const char *path, const char *mode);
char *gzgets(gzFile file, char *buf, int len);
int gzclose(gzFile file);
]])
  local z = ffi.load("z")
  local f = z.gzopen(path, "rb")
  if f == nil then error(("census_numeric: cannot open %s"):format(moe._show(path)), 2) end
  local buf = ffi.new("char[8192]")
  local rows, labels = {}, {}
  while z.gzgets(f, buf, 8192) ~= nil do
    local line = ffi.string(buf)
    local fields = {}
    for v in (line:gsub("[\r\n]+$", "") .. ","):gmatch("%s*(.-),") do fields[#fields + 1] = v end
    if #fields >= 42 then
      local row = {}
      for i, name in ipairs(names) do row[i] = tonumber(fields[census_numeric_columns[name] + 1]) or 0 end
      rows[#rows + 1] = row
      labels[#labels + 1] = fields[42]:find("50000%+") and 1 or 0
    end
  end
  z.gzclose(f)
  return rows, labels
end

function datasets.census_numeric(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error(("census_numeric: expected a table of options, got %s"):format(moe._show(opts)), 2) end
  local path = opts.path or datasets.default_path()
  if type(path) ~= "string" then error(("census_numeric: path must be a string, got %s"):format(moe._show(path)), 2) end
  local names = {}
  for name in pairs(census_numeric_columns) do names[#names + 1] = name end
  table.sort(names)
  local t0 = os.clock()
  local rows, labels = read_census_numeric(path, names)
  if #rows == 0 then error(("census_numeric: no rows of 42 fields in '%s'"):format(path), 2) end
  local x = moe.tensor(rows)                      -- [N, F] float32
  local y = moe.tensor(labels):view(-1, 1)        -- [N, 1]
  local n = x:size(1)
  local mean, std = x:mean(1, true), x:std(1, true) + 1e-6
  x = (x - mean) / std
  moe.manual_seed(0)
  local perm = moe.randperm(n)
  local ntrain = math.floor(n * 0.8)
  local tr, va = perm:narrow(1, 1, ntrain), perm:narrow(1, ntrain + 1, n - ntrain)
  return { names = names, xtr = x:index_select(1, tr), ytr = y:index_select(1, tr),
           xva = x:index_select(1, va), yva = y:index_select(1, va), nrows = n, path = path,
           seconds = os.clock() - t0 }
end

-- ------------------------------------------------------------------ synthetic (MMoE paper)

-- Box-Muller normals from the data module's seeded generator (moe's global
-- generator is left alone)
local function normals(seed)
  local u = data.uniform(seed)
  local spare
  return function()
    if spare then local s = spare; spare = nil; return s end
    local a, b = u(), u()
    local r = math.sqrt(-2 * math.log(a))
    spare = r * math.sin(2 * math.pi * b)
    return r * math.cos(2 * math.pi * b)
  end
end

-- synthetic{n = 12000, dim = 100, correlation = 0.8, c = 0.3, m = 5, noise = 0.1, seed = 1}:
-- the paper's two regression tasks, whose label correlation is set by
-- `correlation` (the cosine between the tasks' weight vectors):
--   w1 = c u1, w2 = c (rho u1 + sqrt(1 - rho^2) u2), u1 _|_ u2 unit vectors,
--   y_k = w_k.x + sum_j sin(alpha_j w_k.x + beta_j) + N(0, noise^2), x ~ N(0, I)
function datasets.synthetic(opts)
  opts = opts or {}
  local n, dim = opts.n or 12000, opts.dim or 100
  local rho, c, m, noise = opts.correlation or 0.8, opts.c or 0.3, opts.m or 5, opts.noise or 0.1
  if type(n) ~= "number" or n < 1 or n ~= math.floor(n) then error(("synthetic: n must be a positive integer, got %s"):format(moe._show(n)), 2) end
  if type(dim) ~= "number" or dim < 2 or dim ~= math.floor(dim) then error(("synthetic: dim must be an integer >= 2, got %s"):format(moe._show(dim)), 2) end
  if type(rho) ~= "number" or rho < -1 or rho > 1 then error(("synthetic: correlation must be in [-1, 1], got %s"):format(moe._show(rho)), 2) end
  local g = normals(opts.seed or 1)
  local u1, u2 = {}, {}
  for i = 1, dim do u1[i] = g() end
  local mean, var = 0, 0
  for i = 1, dim do mean = mean + u1[i] end
  mean = mean / dim
  for i = 1, dim do var = var + (u1[i] - mean) ^ 2 end
  local sd = math.sqrt(var / dim)
  for i = 1, dim do u1[i] = (u1[i] - mean) / (sd * math.sqrt(dim)) end   -- unit norm
  for i = 1, dim do u2[i] = g() end
  local dot = 0
  for i = 1, dim do dot = dot + u2[i] * u1[i] end
  local norm = 0
  for i = 1, dim do u2[i] = u2[i] - dot * u1[i]; norm = norm + u2[i] ^ 2 end
  norm = math.sqrt(norm)
  for i = 1, dim do u2[i] = u2[i] / norm end
  local w1, w2 = {}, {}
  for i = 1, dim do
    w1[i] = c * u1[i]
    w2[i] = c * (rho * u1[i] + math.sqrt(1 - rho * rho) * u2[i])
  end
  local alpha, beta = {}, {}
  for j = 1, m do alpha[j] = g() end
  for j = 1, m do beta[j] = g() end
  local X, Y1, Y2 = {}, {}, {}
  for r = 1, n do
    local row, a, b = {}, 0, 0
    for i = 1, dim do
      local v = g()
      row[i] = v
      a = a + w1[i] * v
      b = b + w2[i] * v
    end
    local s1, s2 = 0, 0
    for j = 1, m do
      s1 = s1 + math.sin(alpha[j] * a + beta[j])
      s2 = s2 + math.sin(alpha[j] * b + beta[j])
    end
    X[r] = row
    Y1[r] = { a + s1 + noise * g() }
    Y2[r] = { b + s2 + noise * g() }
  end
  return { x = moe.tensor(X), y = { y1 = moe.tensor(Y1), y2 = moe.tensor(Y2) }, w1 = moe.tensor(w1),
    w2 = moe.tensor(w2), correlation = rho, task_names = { "y1", "y2" } }
end

return datasets
