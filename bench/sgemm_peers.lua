-- The sgemm peers make bench holds moelua against: every float32 GEMM library
-- on the machine that LuaJIT's FFI can call, each on preallocated row-major
-- buffers (so a peer pays no allocation, no argument checking, no Lua binding)
-- and on the thread count moelua's BLAS uses. Each library loads under pcall: a
-- missing one is listed with the reason. (torch.mm, in another process, is
-- bench/peers/torch_mm.py.)
--   local sp = require "sgemm_peers"
--   sp.threads, sp.names              -- moelua's BLAS threads; {"OpenBLAS", ...}
--   sp.missing                        -- {"BLIS: not installed (...)", ...}
--   local g = sp.gemms(M, K, N)       -- { {name=, f=}, ... } computing C = A B
--   g.free()
local ffi = require "ffi"
ffi.cdef [[
void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int n);
void bli_sgemm(int transa, int transb, int64_t m, int64_t n, int64_t k, const float *alpha,
               const float *a, int64_t rsa, int64_t csa, const float *b, int64_t rsb, int64_t csb,
               const float *beta, float *c, int64_t rsc, int64_t csc);
void bli_thread_set_num_threads(int64_t n);
int dnnl_sgemm(char ta, char tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
               int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void omp_set_num_threads(int n);
void *malloc(size_t); void free(void *);
]]

local M = { names = {}, missing = {} }
local ok, openblas = pcall(ffi.load, "openblas")
if not ok then openblas = ffi.load("libopenblas.so.0") end
M.threads = openblas.openblas_get_num_threads()

local one, zero = ffi.new("float[1]", 1), ffi.new("float[1]", 0)
-- name, library, set-up once loaded, C = A[M,K] B[K,N] (row-major, contiguous)
local libs = {
  -- (its thread count set at each call: moelua's own GEMMs change it, e.g. to
  -- one thread while its OpenBLAS-split runs one call per core)
  { "OpenBLAS", function() return openblas end, nil,
    function(l, m, k, n, A, B, C)
      l.openblas_set_num_threads(M.threads)
      l.cblas_sgemm(101, 111, 111, m, n, k, 1, A, k, B, n, 0, C, n)
    end },
  { "BLIS", "libblis.so.4", function(l) l.bli_thread_set_num_threads(M.threads) end,
    function(l, m, k, n, A, B, C) l.bli_sgemm(0, 0, m, n, k, one, A, k, 1, B, n, 1, zero, C, n, 1) end },
  -- oneDNN's dnnl_sgemm is row-major (dnnl.h, since v1.0); its OpenMP threads
  { "oneDNN", "libdnnl.so.2", function() ffi.load("libgomp.so.1").omp_set_num_threads(M.threads) end,
    function(l, m, k, n, A, B, C) l.dnnl_sgemm(78, 78, m, n, k, 1, A, k, B, n, 0, C, n) end },
}
local loaded = {}
for _, s in ipairs(libs) do
  local ok_, lib = pcall(function()
    local l = type(s[2]) == "string" and ffi.load(s[2]) or s[2]()
    if s[3] then s[3](l) end
    return l
  end)
  if ok_ then
    loaded[#loaded + 1] = { name = s[1], lib = lib, call = s[4] }
    M.names[#M.names + 1] = s[1]
  else
    M.missing[#M.missing + 1] = ("%s: not installed (%s)"):format(s[1], (tostring(lib):gsub("^.-: ", "")))
  end
end

local function buffer(n, mod)
  local p = ffi.cast("float *", ffi.C.malloc(n * 4))
  for i = 0, n - 1 do p[i] = (i % mod) * 0.1 end
  return p
end

-- the peers as closures on buffers of one shape; each result is checked once
-- against OpenBLAS's (a peer that disagrees is dropped with the reason)
function M.gemms(m, k, n)
  local A, B = buffer(m * k, 7), buffer(k * n, 5)
  local out, bufs = {}, { A, B }
  local ref
  for _, p in ipairs(loaded) do
    local C = buffer(m * n, 1)
    bufs[#bufs + 1] = C
    local f = function() p.call(p.lib, m, k, n, A, B, C) end
    f()
    if not ref then ref = C end
    local err = 0
    for i = 0, m * n - 1, 97 do err = math.max(err, math.abs(C[i] - ref[i]) / (math.abs(ref[i]) + 1)) end
    if err < 1e-3 then
      out[#out + 1] = { name = p.name, f = f }
    else
      M.missing[#M.missing + 1] = ("%s: wrong result at %dx%dx%d (rel. error %.2g), skipped"):format(p.name, m, k, n, err)
    end
  end
  function out.free() for _, b in ipairs(bufs) do ffi.C.free(b) end end
  return out
end

-- the best of a { name = GFLOP/s } table: name, value
function M.best_of(g)
  local bn, bv
  for name, v in pairs(g) do if not bv or v > bv then bn, bv = name, v end end
  return bn, bv
end

return M
