-- The census MMoE (models/mmoe_census.lua, `make run`) trained with its experts'
-- GEMMs in bf16 reaches the fp32 test AUCs within 0.002: both runs in full (8
-- epochs, same seed), one after the other (~25 s on two cores).
local H = require "helpers"

local bin = os.getenv("MOELUA_BIN") or "build/moelua"

local function train(precision)
  local out, err, rc = H.sh(("%s run models/mmoe_census.lua --precision %s"):format(bin, precision))
  assert.equal(0, rc, out .. err)
  local income, nm = out:match("test AUC: income ([%d.]+)%s+never_married ([%d.]+)")
  assert.is_truthy(income, out .. err)
  return tonumber(income), tonumber(nm), out
end

describe("census MMoE in bf16", function()
  it("reaches the fp32 test AUC within 0.002 on both tasks", function()
    local i32, n32 = train("fp32")
    local i16, n16, out = train("bf16")
    assert.matches("experts' GEMMs in bf16 on ", out, 1, true)
    assert.is_true(math.abs(i16 - i32) <= 0.002, ("income AUC: bf16 %.4f, fp32 %.4f"):format(i16, i32))
    assert.is_true(math.abs(n16 - n32) <= 0.002, ("never_married AUC: bf16 %.4f, fp32 %.4f"):format(n16, n32))
    assert.is_true(i32 > 0.94 and n32 > 0.99, ("fp32 AUCs %.4f / %.4f below the README's"):format(i32, n32))
  end)

  it("--precision refuses other values", function()
    local out, err, rc = H.sh(("%s run models/mmoe_census.lua --precision fp16 --smoke"):format(bin))
    assert.is_true(rc ~= 0)
    assert.matches("--precision must be fp32 or bf16, got 'fp16'", out .. err, 1, true)
  end)
end)
