-- moe.distributed on cuda tensors (src/dist/nccl.c): NCCL's collectives give
-- what the host backend gives on the same values, and a device that had no
-- NCCL would leave them as they are. NCCL puts one rank on each GPU, so on a
-- machine with one GPU this is the 1-rank world (no mpirun): there every
-- collective is a copy, which is the reference here, with the host's result on
-- the same input beside it. Without a device (or without NCCL) those tests are
-- pending and say why. Builds without NCCL (the emulator's, CUDA=0, NCCL=0)
-- check instead that a device collective says why it cannot run.
local moe = require "moe"
local H = require "helpers"
local dist = moe.distributed
local bin = os.getenv("MOELUA_BIN") or "build/moelua"

local info = dist.info()
local DTYPES = { "float32", "float64", "int32", "int64", "bool" }
local function is_float(dt) return dt == "float32" or dt == "float64" end

-- n values of dtype dt (integers, halves, and both signs: exact in every dtype)
local function values(dt, n, seed)
  local v = {}
  for i = 1, n do
    local x = ((i * 7 + seed * 13) % 23) - 11
    if dt == "bool" then v[i] = x > 0
    elseif is_float(dt) then v[i] = x * 0.5
    else v[i] = x end
  end
  return v
end
local function host(dt, n, seed) return moe.tensor(values(dt, n, seed), { dtype = dt }) end
local function flat(t)
  local out = {}
  local function rec(v) if type(v) == "table" then for _, x in ipairs(v) do rec(x) end else out[#out + 1] = v end end
  rec(t:totable())
  return out
end
local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

describe("moe.distributed on cuda tensors (NCCL)", function()
  it("info() says whether this build has NCCL, nccl.h's version and why not", function()
    assert.is_boolean(info.nccl_built)
    if info.nccl_built then
      assert.matches("^%d+%.%d+%.%d+$", info.nccl_version)
      assert.is_truthy(tostring(info):find("device tensors: NCCL " .. info.nccl_version, 1, true), tostring(info))
      -- the library opened at run time is the one info() names, or info() says why there is none
      assert.is_truthy(info.nccl_library:match("^%d+%.%d+%.%d+$") or info.nccl_reason, tostring(info))
    else
      assert.equal("", info.nccl_version)
      assert.is_false(info.nccl_ready)
      local want = moe.cuda.info().emulator and "the CUDA emulator build (CUDA=emu) has no NCCL"
        or not moe.cuda.is_built() and "built without CUDA, so without NCCL" or "NCCL"
      assert.is_truthy(info.nccl_reason:find(want, 1, true), info.nccl_reason)
      assert.is_truthy(tostring(info):find("device tensors: no NCCL (" .. info.nccl_reason .. ")", 1, true))
    end
  end)

  it("names a MOE_NCCL that does not open, in info() and in the error", function()
    if not info.nccl_built then pending("skipped: this build has no NCCL (" .. info.nccl_reason .. ")") return end
    local script = H.write_file(H.tmpname(".lua"), [[
local moe = require "moe"
local d = moe.distributed
print("reason=" .. tostring(d.info().nccl_reason))
if moe.cuda.is_available() then
  local ok, e = pcall(d.all_reduce, moe.ones(3):cuda())
  print("error=" .. tostring(e))
end
]])
    local out, err = H.sh(("env MOE_NCCL=/nonexistent/libnccl.so.2 %s run %s"):format(bin, script))
    os.remove(script)
    assert.is_truthy(out:find("reason=NCCL could not be opened from MOE_NCCL=/nonexistent/libnccl.so.2", 1, true),
      out .. err)
    if out:find("error=", 1, true) then
      assert.is_truthy(out:find("error=moe.distributed.all_reduce: not on this backend (cuda): device collectives need "
        .. "NCCL, and NCCL could not be opened from MOE_NCCL=/nonexistent/libnccl.so.2", 1, true), out)
    end
  end)

  it("a device collective in a build without NCCL says why, and leaves the tensor alone", function()
    if not H.need_device(pending) then return end
    if info.nccl_built then
      pending("skipped: this build has NCCL (the emulator build checks the error of a build without it)")
      return
    end
    local why = "not on this backend (cuda): device collectives need NCCL, and " .. info.nccl_reason
    local t = host("float32", 6, 1):view(2, 3):cuda()
    local calls = {
      all_reduce = function() dist.all_reduce(t, "sum") end,
      all_reduce_async = function() dist.all_reduce_async(t, "mean") end,
      broadcast = function() dist.broadcast(t, 0) end,
      all_gather = function() dist.all_gather(t) end,
      reduce_scatter = function() dist.reduce_scatter(t) end,
      all_to_all = function() dist.all_to_all(t, { 2 }) end,
    }
    for name, f in pairs(calls) do
      local e = err_of(f)
      assert.is_truthy(e:find("moe.distributed." .. name .. ": " .. why, 1, true), e)
    end
    assert.same(values("float32", 6, 1), flat(t:cpu()))
    -- the host's collectives still work beside it
    local h = host("float32", 6, 1)
    assert.same(values("float32", 6, 1), flat(dist.all_reduce(h, "sum")))
  end)

  describe("one rank on a device", function()
    local function need()
      if not H.need_device(pending) then return false end
      if not info.nccl_built then pending("skipped: this build has no NCCL (" .. info.nccl_reason .. ")") return false end
      -- (the machine's own lack, not the engine's: said, not failed)
      if info.nccl_library == "" then pending("skipped: no NCCL library here: " .. info.nccl_reason) return false end
      return true
    end

    it("all_reduce: every dtype and op, contiguous or strided, equals the host's result", function()
      if not need() then return end
      for _, dt in ipairs(DTYPES) do
        for _, op in ipairs { "sum", "max", "min", "prod", is_float(dt) and "mean" or nil } do
          local h = host(dt, 12, 2):view(3, 4)
          local t = h:cuda()
          assert.equal(t, dist.all_reduce(t, op))
          assert.equal("cuda", t:device())
          dist.all_reduce(h, op)
          assert.same(flat(h), flat(t:cpu()), dt .. " " .. op)
          assert.same(values(dt, 12, 2), flat(t:cpu()), dt .. " " .. op)
          -- a strided view: reduced in a contiguous copy, written back through the view
          local s = host(dt, 12, 3):view(4, 3):cuda():transpose(1, 2)
          local want = flat(s:cpu())
          dist.all_reduce(s, op)
          assert.same(want, flat(s:cpu()), dt .. " " .. op .. " strided")
        end
      end
    end)

    it("all_reduce is ordered with the kernels around it on the stream (no host wait between)", function()
      if not need() then return end
      local n = 2 ^ 20
      local x = moe.arange(n):to("float32"):cuda()
      local y = x * 2 -- a kernel before,
      dist.all_reduce(y, "mean")
      local z = y + 1 -- and one after
      local got = z:cpu()
      assert.equal(2 * (n - 1) + 1, got:max():item())
      assert.equal(0, (got - (moe.arange(n):to("float32") * 2 + 1)):abs():max():item())
    end)

    it("broadcast, all_gather, reduce_scatter and all_to_all equal the host's results", function()
      if not need() then return end
      for _, dt in ipairs(DTYPES) do
        local h = host(dt, 8, 4):view(4, 2)
        local t = h:cuda()
        assert.equal(t, dist.broadcast(t, 0))
        assert.same(flat(dist.broadcast(h, 0)), flat(t:cpu()), dt)

        local g, rows = dist.all_gather(t)
        local hg, hrows = dist.all_gather(h)
        assert.equal("cuda", g:device())
        assert.same(hg:shape(), g:shape())
        assert.same(flat(hg), flat(g:cpu()), dt)
        assert.same(hrows, rows)
        assert.same({ 4 }, rows)

        local op = dt == "bool" and "max" or "sum"
        local r = dist.reduce_scatter(t, op)
        assert.equal("cuda", r:device())
        assert.same(flat(dist.reduce_scatter(h, op)), flat(r:cpu()), dt)

        local a, recv = dist.all_to_all(t, { 4 })
        local ha, hrecv = dist.all_to_all(h, { 4 })
        assert.equal("cuda", a:device())
        assert.same(flat(ha), flat(a:cpu()), dt)
        assert.same(hrecv, recv)
      end
      -- no rows, and a 0-dim tensor (one row)
      local e = moe.zeros(0, 3):cuda()
      local g, rows = dist.all_gather(e)
      assert.same({ 0, 3 }, g:shape())
      assert.same({ 0 }, rows)
      local a, recv = dist.all_to_all(e, { 0 })
      assert.same({ 0, 3 }, a:shape())
      assert.same({ 0 }, recv)
      local s = moe.tensor(2.5):cuda()
      local gs = dist.all_gather(s)
      assert.same({ 1 }, gs:shape())
      assert.same({ 2.5 }, gs:cpu():totable())
      -- mean reduce_scatter divides on the device
      local m = dist.reduce_scatter(host("float64", 6, 5):cuda(), "mean")
      assert.same(values("float64", 6, 5), flat(m:cpu()))
    end)

    it("all_reduce_async: is_completed turns true, wait returns the tensor with the result", function()
      if not need() then return end
      local h = host("float32", 2 ^ 16, 6)
      local t = h:cuda()
      local w = dist.all_reduce_async(t, "mean")
      local spins = 0
      while not w:is_completed() do spins = spins + 1 end
      assert.equal(t, w:wait())
      assert.same(flat(h), flat(t:cpu()))
      local w2 = dist.all_reduce_async(t, "max")
      assert.equal(t, w2:wait()) -- (without a test first: the stream is ordered after it)
      assert.same(flat(h), flat(t:cpu()))
    end)

    it("says which device and library its communicator uses, and refuses a root that is not a rank", function()
      if not need() then return end
      dist.all_reduce(moe.ones(2):cuda())
      local i = dist.info()
      assert.is_true(i.nccl_ready)
      assert.equal(0, i.nccl_device)
      assert.matches("^%d+%.%d+%.%d+$", i.nccl_library)
      assert.is_truthy(tostring(i):find("on device 0", 1, true), tostring(i))
      local e = err_of(function() dist.broadcast(moe.ones(2):cuda(), 1) end)
      assert.is_truthy(e:find("moe.distributed.broadcast: root 1 is not a rank of this world (ranks are 0 to 0)", 1,
        true), e)
      e = err_of(function() dist.all_reduce(moe.ones(2):to("int32"):cuda(), "mean") end)
      assert.is_truthy(e:find('op "mean" needs a float tensor, got int32', 1, true), e)
    end)
  end)
end)
