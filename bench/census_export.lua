-- bench/census_export.lua: one census-income split, as moe.datasets.census_income
-- makes it, written as a safetensors file for the PyTorch peers, so that they
-- train and test on exactly the rows and features moelua does.
--
--   build/moelua run bench/census_export.lua OUT.safetensors [--tasks income|education] [--seed 1]
--
-- --tasks: the MMoE paper's census task groups, income = {income, never_married},
-- education = {education, never_married}. The file holds, for each set s of
-- train, val and test: s.x [n, features] and s.<task> [n, 1] (0/1), float32;
-- its metadata names the tasks in order, the seed and the source file.
local moe = require "moe"
local cli = require "moe.cli"
local GROUPS = { income = { "income", "never_married" }, education = { "education", "never_married" } }
local opts = cli.parse(arg, {
  usage = "moelua run bench/census_export.lua OUT.safetensors [options]",
  about = "One census-income split (moe.datasets.census_income) as safetensors, for the PyTorch peers.",
  { "tasks", "income", "the task group: income (income, never_married) or education (education, never_married)",
    check = function(v) return GROUPS[v] ~= nil, "expected income or education" end },
  { "seed", 1, "the split's seed", min = 0 },
  { "out", "", "the file to write (also the first argument)", positional = true, metavar = "PATH" },
})
local out = opts.out ~= "" and opts.out or cli.fail("an output path is needed: moelua run bench/census_export.lua OUT.safetensors")
local tasks = GROUPS[opts.tasks]
local ds = moe.datasets.census_income { tasks = tasks, seed = opts.seed }
local t = {}
for _, s in ipairs { "train", "val", "test" } do
  t[s .. ".x"] = ds[s].x:float()
  for _, name in ipairs(tasks) do t[s .. "." .. name] = ds[s].y[name]:reshape(-1, 1):float() end
end
moe.io.save_tensors(out, t, { tasks = table.concat(tasks, ","), seed = tostring(opts.seed),
  source = tostring(ds.path) })
print(("wrote %s: %d features; train %d, val %d, test %d rows; tasks %s"):format(out, ds.num_features,
  ds.train.x:size(1), ds.val.x:size(1), ds.test.x:size(1), table.concat(tasks, ", ")))
