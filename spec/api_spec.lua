-- The public `moe` table lists what users call; the binding's plumbing stays
-- in moe.core. The mode switch is train()/eval(); the trainer's methods live
-- in one file (lua/moe/trainer.lua).
local moe = require "moe"

describe("the public moe table", function()
  it("holds no plumbing: the trainer's, optimizers', checkpoint reader's and config's helpers stay in moe.core", function()
    for _, name in ipairs { "st_save", "st_read_header", "st_read_tensor", "st_checksum", "get_flat", "set_flat",
                            "optim_step", "take_interrupt", "defer_interrupts", "live", "gather_rows",
                            "shuffled_range", "auc_acc", "roc_auc", "route_plan", "bce", "blas_choose",
                            "bf16_choose", "sgemm_forget", "backend_kernels", "cuda_info" } do
      assert.is_nil(rawget(moe, name), "moe." .. name .. " is plumbing")
      assert.is_function(moe.core[name], "moe.core." .. name)
    end
  end)

  it("keeps what users call: tensor ops, creation, the documented fused ops and the lazily loaded modules", function()
    for _, name in ipairs { "tensor", "zeros", "randn", "matmul", "linear", "grouped_matmul", "mixture", "gate_scale",
                            "bincount", "where", "cat", "no_grad", "manual_seed", "config", "set_precision" } do
      assert.is_function(moe[name], "moe." .. name)
    end
    for _, name in ipairs { "nn", "optim", "losses", "data", "metrics", "callbacks" } do
      assert.is_table(moe[name], "moe." .. name)
    end
    assert.is_table(moe.Model)
    assert.is_nil(rawget(moe, "metatable"))
  end)

  it("defines each trainer method once, in lua/moe/trainer.lua", function()
    local nn = moe.nn
    for _, name in ipairs { "compile", "compute_loss", "train_on_batch", "fit", "evaluate", "predict" } do
      local info = debug.getinfo(nn.Module[name], "S")
      assert.matches("lua/moe/trainer%.lua$", info.source, name)
    end
    local m = moe.Sequential { nn.Dense { units = 1 }, input_shape = { 2 } }
    assert.equal(m, m:eval())
    assert.equal(m, m:train())
  end)
end)
