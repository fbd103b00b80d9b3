-- Naive references for the bf16 specs: rounding to bfloat16 written with
-- math.frexp on Lua doubles (independent of the C code's bit trick), and GEMMs
-- as plain double loops over the rounded operands. Nothing here calls the op
-- it is used to check.
local R = {}

local function round_half_even(s) -- s >= 0
  local r = math.floor(s)
  local f = s - r
  if f > 0.5 or (f == 0.5 and r % 2 == 1) then r = r + 1 end
  return r
end

-- v (a float32 value) rounded to the nearest bfloat16, ties to even: 8
-- significant bits, float32's exponent range (spacing 2^-133 below 2^-126),
-- overflow to infinity; NaN and infinities stay
function R.bf16(v)
  if v ~= v or v == 0 or v == math.huge or v == -math.huge then return v end
  local a = math.abs(v)
  local _, e = math.frexp(a) -- a = m 2^e, m in [0.5, 1)
  local q = 2 ^ (math.max(e, -125) - 8)
  local r = round_half_even(a / q) * q
  if r >= 2 ^ 128 then r = math.huge end
  return v < 0 and -r or r
end

-- the bf16 value an AVX512-BF16 dot product (vdpbf16ps, oneDNN's bf16 kernels)
-- multiplies: R.bf16(v), with a subnormal result read as zero (the instruction
-- treats denormal inputs as zero whatever MXCSR says)
function R.bf16_daz(v)
  local r = R.bf16(v)
  if r ~= 0 and math.abs(r) < 2 ^ -126 then return 0 end
  return r
end

-- a tensor's values as a Lua matrix (2-D) of doubles
function R.mat(t)
  local v = t:to("float64"):totable()
  return v
end

local function id(v) return v end

-- C = A B as doubles over the operands mapped by f (R.bf16, or none), with
-- S[m][n] = sum_k |a b| (for error bounds); A [M][K], B [K][N] Lua matrices
function R.gemm(A, B, f)
  f = f or id
  local M, K, N = #A, #B, #B[1]
  local C, S = {}, {}
  for m = 1, M do
    C[m], S[m] = {}, {}
    for n = 1, N do
      local s, sa = 0, 0
      for k = 1, K do
        local p = f(A[m][k]) * f(B[k][n])
        s = s + p
        sa = sa + math.abs(p)
      end
      C[m][n], S[m][n] = s, sa
    end
  end
  return C, S
end

function R.transpose(A)
  local T = {}
  for j = 1, #A[1] do
    T[j] = {}
    for i = 1, #A do T[j][i] = A[i][j] end
  end
  return T
end

-- rows first..last of A
function R.rows(A, first, last)
  local out = {}
  for i = first, last do out[#out + 1] = A[i] end
  return out
end

-- max over elements of |got - want| / (tol_rel * S + tol_abs); <= 1 passes
function R.worst(got, want, S, tol_rel, tol_abs)
  local w = 0
  for i = 1, #want do
    for j = 1, #want[i] do
      local d = math.abs(got[i][j] - want[i][j]) / (tol_rel * (S and S[i][j] or 0) + (tol_abs or 0))
      if d ~= d then d = math.huge end
      if d > w then w = d end
    end
  end
  return w
end

-- fp32 accumulation: a sum of K products differs from the exact one by at most
-- ~K 2^-24 sum|products|; the specs allow 2^-16 of sum|products| (K <= 64 here)
R.ACC = 2 ^ -16

return R
