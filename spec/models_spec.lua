-- The bundled model scripts run end to end on the bundled data.
local bin = os.getenv("MOELUA_BIN") or "build/moelua"

describe("models/census_logreg.lua", function()
  it("trains on the bundled census data and beats the majority class", function()
    local p = io.popen(bin .. " run models/census_logreg.lua data/census-income.test.gz 60 2>&1")
    local out = p:read("*a")
    p:close()
    local rows = tonumber(out:match("loaded (%d+) rows"))
    assert.are.equal(99762, rows, out)
    local first = tonumber(out:match("epoch   1  train loss ([%d.]+)"))
    local last_acc = tonumber(out:match("epoch  60 .-val accuracy ([%d.]+)"))
    local last_loss = tonumber(out:match("epoch  60  train loss ([%d.]+)"))
    local base = tonumber(out:match("majority%-class accuracy on validation: ([%d.]+)"))
    assert.is_true(math.abs(first - math.log(2)) < 1e-3, out)   -- zero weights: loss ln 2
    assert.is_true(last_loss < 0.25, out)
    assert.is_true(last_acc > base, out)
  end)
end)
