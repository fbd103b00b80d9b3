-- The documentation registry (lua/moe/doc.lua, lua/moe/doc_*.lua): every public
-- name and every layer option has an entry, the layer defaults shown are the
-- classes' own, docs/api.md is what `make docs` writes now, and help(x) /
-- `moelua doc NAME` find entries by object and by name.
local moe = require "moe"
local doc = require "moe.doc"
local H = require "helpers"
local bin = os.getenv("MOELUA_BIN") or "build/moelua"

-- what help(...) prints
local function help_text(...)
  local out = {}
  local write = io.write
  io.write = function(...) for i = 1, select("#", ...) do out[#out + 1] = tostring((select(i, ...))) end end
  local ok, err = pcall(doc.help, ...)
  io.write = write
  assert(ok, err)
  return table.concat(out)
end

local function list(t) return table.concat(t, ", ") end

describe("the documentation registry", function()
  it("has an entry for every public name: the moe table, its submodules, their classes' methods, tensor methods", function()
    local missing = doc.undocumented()
    assert.are.equal(0, #missing, "public names without an entry in lua/moe/doc_*.lua: " .. list(missing))
  end)

  it("walks the names it must: functions, layers, methods of models, optimizers, frames, tensors", function()
    local names = {}
    for _, p in ipairs(doc.public_names()) do names[p.name] = true end
    for _, n in ipairs { "randn", "tensor", "config", "Sequential", "Model", "Input", "load", "help", "nn.Dense",
                         "nn.MoeLayer", "nn.Module:fit", "nn.Module:summary", "Sequential:add", "optim.Adam",
                         "optim.Optimizer:step", "optim.schedules.CosineDecay", "losses.huber", "metrics.AUC",
                         "metrics.Metric:update", "callbacks.EarlyStopping", "data.read_csv", "data.Frame:take",
                         "datasets.census_income", "plot.history", "cuda.is_available", "io.json_encode",
                         "initializers.glorot_uniform", "regularizers.l2", "constraints.max_norm",
                         "testing.gradcheck", "doc.search", "Tensor:has_grad", "Tensor:sum" } do
      assert.is_true(names[n] ~= nil, n .. " is not among the public names walked")
    end
    local n = 0
    for _ in pairs(names) do n = n + 1 end
    assert.is_true(n > 600, "only " .. n .. " public names walked")
  end)

  it("fails on a public name that gains no entry, and on an entry that names nothing", function()
    local nn = moe.nn
    nn.brand_new_helper = function() end
    moe.optim.Optimizer.brand_new_method = function() end
    local ok, missing = pcall(doc.undocumented)
    nn.brand_new_helper, moe.optim.Optimizer.brand_new_method = nil, nil
    assert(ok, missing)
    assert.are.same({ "nn.brand_new_helper", "optim.Optimizer:brand_new_method" }, missing)
    doc.entries["nn.Gone"] = { name = "nn.Gone", summary = "a removed layer" }
    local stale = doc.stale()
    doc.entries["nn.Gone"] = nil
    assert.are.same({ "nn.Gone" }, stale)
    assert.are.same({}, doc.stale())
  end)

  it("documents every option of every layer class, read from the class itself, and nothing it does not take", function()
    local problems = doc.option_problems()
    assert.are.equal(0, #problems, list(problems))
    -- the options are the class's: a new option, or one the entry lacks, is caught
    local nn = moe.nn
    local e = doc.entries["nn.Dense"]
    local saved = e.options
    local fewer = {}
    for _, o in ipairs(saved) do if o[1] ~= "use_bias" then fewer[#fewer + 1] = o end end
    e.options = fewer
    local p1 = doc.option_problems()
    e.options = saved
    assert.are.same({ "nn.Dense: option 'use_bias' has no entry" }, p1)
    local Probe = nn.Module:extend("DocSpecProbe")
    function Probe:init(opts)
      nn.Module.init(self, opts)
      self:_options(opts, { alpha = 0.5, beta = nn.REQUIRED })
    end
    nn.DocSpecProbe = Probe
    local p2 = doc.option_problems()
    local m2 = doc.undocumented()
    nn.DocSpecProbe, nn.registry.DocSpecProbe = nil, nil
    assert.are.same({ "nn.DocSpecProbe: option 'alpha' has no entry", "nn.DocSpecProbe: option 'beta' has no entry" }, p2)
    assert.are.same({ "nn.DocSpecProbe" }, m2)
  end)

  it("reads the options the non-layer functions take from their own errors (optimizers, callbacks, models)", function()
    -- an optimizer entry that dropped an option is caught, as a layer's is
    local e = doc.entries["optim.SGD"]
    local saved = e.options
    local fewer = {}
    for _, o in ipairs(saved) do if o[1] ~= "nesterov" then fewer[#fewer + 1] = o end end
    e.options = fewer
    local p = doc.option_problems()
    e.options = saved
    assert.are.same({ "optim.SGD: option 'nesterov' has no entry" }, p)
    for _, name in ipairs { "optim.Adam", "callbacks.EarlyStopping", "Sequential", "Model", "nn.Lambda",
                            "initializers.variance_scaling" } do
      assert.is_function(doc.entries[name].probe_options, name)
    end
  end)

  it("shows each layer's defaults as the class sets them", function()
    local nn = moe.nn
    local cases = {
      { "nn.Dense", { units = 3 } }, { "nn.BatchNormalization", {} }, { "nn.MMoE", { units = 2, num_experts = 2, num_tasks = 2 } },
      { "nn.TokensChooseMaskedRouter", { num_experts = 2 } }, { "nn.Dropout", { rate = 0.5 } },
    }
    for _, c in ipairs(cases) do
      local name, args = c[1], c[2]
      local layer = doc.resolve(name)(args)
      local shown, typ = {}, {}
      for _, o in ipairs(doc.options_of(doc.entries[name])) do shown[o[1]], typ[o[1]] = o[3], o[2] end
      local n = 0
      for k, v in pairs(layer:get_config()) do
        if shown[k] ~= nil and args[k] == nil then
          -- false is "none" for an option that holds an object, false for a boolean one
          local want = (v == false and typ[k] ~= "boolean") and "none" or doc.value_str(v, typ[k])
          assert.are.equal(want, shown[k], name .. " option " .. k)
          n = n + 1
        end
      end
      assert.is_true(n > 0, name)
      for k in pairs(args) do assert.are.equal("required", shown[k], name .. " option " .. k) end
    end
    assert.are.equal("0.99", ({ doc.options_of(doc.entries["nn.BatchNormalization"])[2][3] })[1])
  end)

  it("gives every entry a summary, and examples that compile", function()
    for _, e in ipairs(doc.ordered()) do
      assert.is_string(e.summary, e.name .. " has no summary")
      assert.is_true(#e.summary > 3, e.name)
      if e.example then
        local f, err = loadstring(e.example, "=" .. e.name)
        assert(f, ("%s's example does not compile: %s"):format(e.name, tostring(err)))
      end
    end
  end)

  it("docs/api.md is what `make docs` writes now, and covers every entry", function()
    local ok, text = pcall(H.read_file, "docs/api.md")
    assert(ok, "docs/api.md is missing: run make docs")
    assert(text == doc.markdown(), "docs/api.md is out of date: run make docs (and commit it)")
    for _, e in ipairs(doc.ordered()) do
      assert(text:find("### `" .. doc.title(e) .. "`", 1, true), e.name .. " is not in docs/api.md")
    end
    assert.matches("| `units` | integer | `required` |", text, 1, true)
  end)
end)

describe("help", function()
  it("explains a class, a function, a method and an object, by the object itself", function()
    local nn = moe.nn
    local dense = help_text(nn.Dense)
    assert.matches("^moe%.nn%.Dense{units, %.%.%.}\n", dense)
    assert.matches("units%s+integer, required", dense)
    assert.matches("use_bias%s+boolean, default true", dense)
    assert.matches("kernel_initializer%s+initializer, default \"glorot_uniform\"", dense)
    assert.matches("^moe%.randn%(size%.%.%., %[opts%]%)", help_text(moe.randn))
    local m = moe.Sequential { nn.Dense { units = 2 }, input_shape = { 3 } }
    assert.matches("^model:fit{x, y, %.%.%.}", help_text(m.fit))
    assert.matches("validation_split", help_text(m.fit))
    assert.are.equal(help_text(nn.Dense), help_text(nn.Dense { units = 4 }))   -- an instance: its class
    assert.matches("^moe%.Sequential", help_text(m))
    assert.matches("^moe%.Tensor", help_text(moe.ones(2)))
    assert.matches("^moe%.sum%(t, %[dim%], %[keepdim%]%)   t:sum", help_text(moe.ones(2).sum))
    assert.matches("^moe%.optim%.Adam", help_text(moe.optim.Adam { lr = 0.1 }))
    assert.matches("^moe%.nn\n", help_text(moe.nn))
    -- a TensorBoard writer is an object of its class, whose methods have entries
    local dir = os.tmpname()
    os.remove(dir)
    local w = moe.tensorboard.SummaryWriter(dir)
    local writer, add = help_text(w), help_text(w.add_scalar)
    w:close()
    os.execute("rm -rf '" .. dir .. "'")
    assert.matches("^moe%.tensorboard%.SummaryWriter%(log_dir%)", writer)
    assert.matches("^w:add_scalar%(tag, value, step", add)
  end)

  it("finds names as users type them, and says when a name is unknown or ambiguous", function()
    assert.are.equal(help_text(moe.nn.Dense), help_text("nn.Dense"))
    assert.are.equal(help_text(moe.nn.Dense), help_text("moe.nn.Dense"))
    assert.are.equal(help_text(moe.nn.Dense), help_text("Dense"))
    assert.are.equal(help_text(moe.sum), help_text("t:sum"))
    assert.are.equal(help_text(moe.nn.Module.fit), help_text("model:fit"):gsub("\n%(model:fit also.*$", ""))
    local fit = help_text("fit")
    assert.matches("^model:fit", fit)
    assert.matches("%(fit also names data%.FeatureEncoder:fit%)", fit)
    assert.matches("no documentation for 'nosuch'", help_text("nosuch"))
    assert.matches("'gate_weights' could mean nn%.MMoE:gate_weights, nn%.TabularMoELayer:gate_weights",
      help_text("gate_weights"))
    assert.matches("^moe\n", help_text())
    assert.matches("no documentation for this function", help_text(function() end))
    local ok, err = pcall(function() moe.help(moe.nn.Dense, moe.randn) end)
    assert.is_false(ok)
    assert.matches("docs_spec%.lua:%d+: help: expected one thing", err)
  end)

  it("is moe.help, and `moelua doc NAME` prints the same entry; unknown names exit 1", function()
    assert.are.equal(doc.help, moe.help)
    local out, err, rc = H.sh(bin .. " doc nn.Dense")
    assert.are.equal(0, rc, err)
    assert.are.equal(help_text("nn.Dense"), out)
    local _, err2, rc2 = H.sh(bin .. " doc no_such_thing")
    assert.are.equal(1, rc2)
    assert.matches("no entry for 'no_such_thing'", err2)
    local out3, _, rc3 = H.sh(bin .. " doc --search capacity")
    assert.are.equal(0, rc3)
    assert.matches("nn%.MoeLayer", out3)
    local _, _, rc4 = H.sh(bin .. " doc --check")
    assert.are.equal(0, rc4)
    local md, _, rc5 = H.sh(bin .. " doc --markdown")
    assert.are.equal(0, rc5)
    assert.are.equal(doc.markdown(), md)
    local usage, _, rc6 = H.sh(bin .. " doc --help")
    assert.are.equal(0, rc6)
    assert.matches("usage: moelua doc NAME", usage)
    local _, _, rc7 = H.sh(bin .. " doc --bogus")
    assert.are.equal(2, rc7)
  end)
end)
