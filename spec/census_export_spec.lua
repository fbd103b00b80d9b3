-- bench/census_export.lua: the split the PyTorch peers train on is moelua's own
local moe = require "moe"
local H = require "spec.helpers"
local bin = os.getenv("MOELUA_BIN") or "build/moelua"

describe("bench/census_export.lua", function()
  it("writes train/val/test features and 0/1 labels equal to moe.datasets.census_income's, tasks in the metadata", function()
    local path = H.tmpname(".safetensors")
    local out, err, rc = H.sh(("%s run bench/census_export.lua %s --tasks education --seed 3"):format(bin, path))
    assert.are.equal(0, rc, err)
    assert.truthy(out:find("tasks education, never_married", 1, true), out)
    local t, md = moe.io.load_tensors(path)
    os.remove(path)
    assert.are.equal("education,never_married", md.tasks)
    assert.are.equal("3", md.seed)
    local ds = moe.datasets.census_income { tasks = { "education", "never_married" }, seed = 3 }
    for _, s in ipairs { "train", "val", "test" } do
      local x = t[s .. ".x"]
      assert.are.same(ds[s].x:shape(), x:shape())
      assert.are.equal(0, (x - ds[s].x:float()):abs():max():item(), s)
      for _, task in ipairs { "education", "never_married" } do
        local y = t[s .. "." .. task]
        assert.are.same({ ds[s].x:size(1), 1 }, y:shape())
        local want = ds[s].y[task]:reshape(-1, 1):float()
        assert.are.equal(0, (y - want):abs():max():item(), s .. "." .. task)
        local pos = y:sum():item()
        assert.is_true(pos > 0 and pos < y:size(1), "both classes present") -- 0/1 labels, both present
        assert.are.equal(pos, (y * y):sum():item()) -- only 0s and 1s
      end
    end
  end)

  it("refuses an unknown task group and a missing path, naming them", function()
    local _, err, rc = H.sh(("%s run bench/census_export.lua %s --tasks incom"):format(bin, H.tmpname()))
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("incom", 1, true) and err:find("income or education", 1, true), err)
    _, err, rc = H.sh(("%s run bench/census_export.lua"):format(bin))
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("output path", 1, true), err)
  end)
end)
