-- Shared by the census model scripts: reads the bundled UCI census-income (KDD)
-- file through zlib, keeps the numeric columns, standardizes them and splits the
-- rows 80/20 with a seeded permutation.
--   local d = dofile(here .. "/models/census_data.lua")(path)
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
  if f == nil then error("census data: cannot open " .. p, 0) end
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

return function(path)
  local t0 = os.clock()
  local rows, labels = load(path)
  local x = moe.tensor(rows)                      -- [N, F] float32
  local y = moe.tensor(labels):view(-1, 1)        -- [N, 1]
  local n = x:size(1)
  print(("loaded %d rows x %d features from %s (%.2fs)"):format(n, x:size(2), path, os.clock() - t0))
  local mean, std = x:mean(1, true), x:std(1, true) + 1e-6
  x = (x - mean) / std
  moe.manual_seed(0)
  local perm = moe.randperm(n)
  local ntrain = math.floor(n * 0.8)
  local tr, va = perm:narrow(1, 1, ntrain), perm:narrow(1, ntrain + 1, n - ntrain)
  return { names = names, xtr = x:index_select(1, tr), ytr = y:index_select(1, tr),
           xva = x:index_select(1, va), yva = y:index_select(1, va) }
end
