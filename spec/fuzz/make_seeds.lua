-- make_seeds.lua -- writes the seed corpora of spec/fuzz/csv and spec/fuzz/ckpt.
--   build/moelua spec/fuzz/make_seeds.lua [outdir]     (default: spec/fuzz)
-- The committed seeds were made by this script; the regression inputs
-- (named regress-*) were found by the fuzzers and are added by hand.
local moe = require "moe"
local nn = moe.nn
local out = arg[1] or "spec/fuzz"
os.execute(("mkdir -p '%s/csv' '%s/ckpt'"):format(out, out))

local function write(name, s)
  local f = assert(io.open(out .. "/" .. name, "wb"))
  f:write(s)
  f:close()
end
local function read(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local function gzip(name, s)
  write(name, s)
  assert(os.execute(("gzip -n -9 -c '%s/%s' > '%s/%s.gz'"):format(out, name, out, name)))
end

-- CSV: header and not, numbers and categories, quotes, missing values, other separators
write("csv/basic.csv", "age,income,city\n25,50000.5,Paris\n31,-1e3,Berlin\n47,0x10,Paris\n")
write("csv/quotes.csv", 'id,text,n\n1,"a, b",2\n2,"say ""hi""",3\n3,"two\nlines",4\n4, "padded" ,5\n')
write("csv/missing.csv", "a,b,c\n1,,x\nNA,2,?\n?,null,\n,3,y\n")
write("csv/noheader.csv", "1,red,0.5\n2,blue,\n3,red,1.5\n")
write("csv/semicolon.csv", "skip me\n1;a;2\n3;b;4\n")
write("csv/tabs.tsv", "a\tb\tc\n1\t x \t2\n3\ty\t\n")
write("csv/crlf.csv", "a,b\r\n1,2\r\n\r\n3,4\r\n")
write("csv/spaces.txt", "# comment\n# comment\nx y z\n1 2 3\n4 5 6\n")
write("csv/bad-quote.csv", 'a,b\n"open,1\n')
write("csv/ragged.csv", "a,b\n1,2,3\n")
gzip("csv/census.csv", "73, Not in universe, 0, 0, High school graduate, 0, Not in universe, Widowed\n" ..
  "58, Self-employed-not incorporated, 4, 34, Some college but no degree, 0, Not in universe, Divorced\n" ..
  "18, Not in universe, 0, 0, 10th grade, 0, High school, Never married\n")
os.remove(out .. "/csv/census.csv")
gzip("csv/basic.csv", read(out .. "/csv/basic.csv"))

-- checkpoints: plain tensors of every dtype (0-d, empty, metadata) and model files
local ckpt = out .. "/ckpt/"
moe.save_tensors(ckpt .. "tensors.safetensors", {
  w = moe.tensor { { 1.5, -2 }, { 0, 3.25 } },
  d = moe.tensor({ 1, 2, 3 }, { dtype = "float64" }),
  i = moe.tensor({ -1, 7 }, { dtype = "int32" }),
  l = moe.tensor({ 2 ^ 40 }, { dtype = "int64" }),
  b = moe.tensor { true, false },
  s = moe.tensor(4),
  e = moe.zeros(0, 3),
}, { note = "seed" })
moe.save_tensors(ckpt .. "empty.safetensors", {})

moe.manual_seed(1)
local seq = moe.Sequential { nn.Dense { units = 3, activation = "relu" }, nn.Dense { units = 1 }, input_shape = { 2 } }
seq:save(ckpt .. "sequential.moe")
seq:compile { optimizer = moe.optim.Adam { lr = 0.01 }, loss = "mse" }
seq:train_on_batch(moe.randn(4, 2), moe.randn(4, 1))
seq:save(ckpt .. "sequential-adam.moe")

local x = moe.Input { shape = { 3 }, name = "features" }
local h = nn.Dense { units = 2, activation = "tanh" }(x)
local m = moe.Model { inputs = x, outputs = {
  a = nn.Dense { units = 1, activation = "sigmoid", name = "a" }(h),
  b = nn.Dense { units = 2, activation = "softmax", name = "b" }(h) } }
m:compile { optimizer = moe.optim.SGD { lr = 0.1, momentum = 0.9 },
  loss = { a = "binary_crossentropy", b = "categorical_crossentropy" } }
m:train_on_batch(moe.randn(4, 3), { a = moe.rand(4, 1):gt(0.5):float(), b = moe.randint(1, 2, 4) })
m:save(ckpt .. "functional.moe")

-- the same files in the assembled form ("{header}\0data", see ckpt_driver.lua)
for _, name in ipairs { "tensors.safetensors", "sequential-adam.moe", "functional.moe" } do
  local s = read(ckpt .. name)
  local n = 0
  for i = 8, 1, -1 do n = n * 256 + s:byte(i) end
  local header = s:sub(9, 8 + n):gsub(" +$", "")
  write("ckpt/assembled-" .. name, header .. "\0" .. s:sub(9 + n))
end
