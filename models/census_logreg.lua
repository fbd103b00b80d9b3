-- A first model on the bundled UCI census-income (KDD) data: logistic regression
-- for "income > 50k" from the numeric columns, trained with full-batch gradient
-- descent written out by hand (autograd and the layer library come later).
--
--   moelua run models/census_logreg.lua [path.gz] [epochs]
local moe = require "moe"
local ffi = require "ffi"

ffi.cdef [[
typedef struct gzFile_s *gzFile;
gzFile gzopen(const char *path, const char *mode);
char *gzgets(gzFile file, char *buf, int len);
int gzclose(gzFile file);
]]
local z = ffi.load("z")

local here = (arg and arg[0] or ""):match("^(.*)/models/[^/]*$") or "."
local path = arg[1] or (here .. "/data/census-income.test.gz")
local epochs = tonumber(arg[2]) or 300

-- numeric columns of the census file (0-based positions as in the UCI description)
local columns = { age = 0, wage_per_hour = 5, capital_gains = 16, capital_losses = 17,
                  dividends = 18, num_persons_worked = 30, weeks_worked = 39 }
local names = {}
for name in pairs(columns) do names[#names + 1] = name end
table.sort(names)

local function load(p)
  local f = z.gzopen(p, "rb")
  if f == nil then error("census_logreg: cannot open " .. p, 0) end
  local buf = ffi.new("char[8192]")
  local rows, labels = {}, {}
  while z.gzgets(f, buf, 8192) ~= nil do
    local line = ffi.string(buf)
    local fields = {}
    for v in (line:gsub("[\r\n]+$", "") .. ","):gmatch("%s*(.-),") do fields[#fields + 1] = v end
    if #fields >= 42 then
      local row = {}
      for i, name in ipairs(names) do row[i] = tonumber(fields[columns[name] + 1]) or 0 end
      rows[#rows + 1] = row
      labels[#labels + 1] = fields[42]:find("50000%+") and 1 or 0
    end
  end
  z.gzclose(f)
  return rows, labels
end

local t0 = os.clock()
local rows, labels = load(path)
local x = moe.tensor(rows)                      -- [N, F] float32
local y = moe.tensor(labels):view(-1, 1)        -- [N, 1]
local n = x:size(1)
print(("loaded %d rows x %d features from %s (%.2fs)"):format(n, x:size(2), path, os.clock() - t0))

-- standardize; split 80/20 with a seeded permutation
local mean, std = x:mean(1, true), x:std(1, true) + 1e-6
x = (x - mean) / std
moe.manual_seed(0)
local perm = moe.randperm(n)
local ntrain = math.floor(n * 0.8)
local tr, va = perm:narrow(1, 1, ntrain), perm:narrow(1, ntrain + 1, n - ntrain)
local xtr, ytr = x:index_select(1, tr), y:index_select(1, tr)
local xva, yva = x:index_select(1, va), y:index_select(1, va)

local w = moe.zeros(x:size(2), 1)
local b = moe.zeros(1)
local lr = 0.5
local function bce(p, t)
  local eps = 1e-7
  p = p:clamp(eps, 1 - eps)
  return -(t * p:log() + (1 - t) * (1 - p):log()):mean():item()
end
local function accuracy(p, t) return p:gt(0.5):eq(t):to("float32"):mean():item() end

for epoch = 1, epochs do
  local p = (xtr:matmul(w) + b):sigmoid()       -- [N, 1]
  local g = (p - ytr) / ntrain                  -- dL/dlogit for mean BCE
  w:sub_(xtr:transpose():matmul(g) * lr)
  b:sub_(g:sum(1) * lr)
  if epoch == 1 or epoch % 50 == 0 or epoch == epochs then
    local pv = (xva:matmul(w) + b):sigmoid()
    print(("epoch %3d  train loss %.4f  val loss %.4f  val accuracy %.4f"):format(
      epoch, bce(p, ytr), bce(pv, yva), accuracy(pv, yva)))
  end
end
local base = 1 - yva:mean():item()
print(("majority-class accuracy on validation: %.4f"):format(base))
for i, name in ipairs(names) do print(("  weight %-20s %+.4f"):format(name, w[i][1])) end
