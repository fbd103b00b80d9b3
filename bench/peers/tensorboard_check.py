"""Reads moelua's TensorBoard event files with TensorBoard's own reader and
checks them against the History of the fit that wrote them.

usage: python3 bench/peers/tensorboard_check.py [MOELUA]      (pip install tensorboard)
       python3 bench/peers/tensorboard_check.py --logdir DIR  (just print what DIR holds)

With no --logdir it runs MOELUA (default build/moelua) on a small sparse-MoE
fit with moe.callbacks.TensorBoard{update_freq = 2} and validation data, then
loads log_dir/train and log_dir/validation with
tensorboard.backend.event_processing's EventAccumulator (the reader behind
TensorBoard's scalar dashboard: it checks each record's CRCs and migrates
simple_value scalars to the scalars plugin's tensors). Every epoch_<name> must
equal the History's value (as float32) at steps 1..epochs, and batch_loss
each second batch's loss. Exits 1 on a mismatch."""
import json
import os
import subprocess
import sys
import tempfile

from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util
import numpy as np

FIT = r"""
local moe = require "moe"
local nn = moe.nn
local out = arg[1]
moe.manual_seed(3)
local V, S, E = 16, 6, 4
local x = moe.randint(1, V, { 96, S }, { dtype = "int64" })
local perm = {}
for v = 1, V do perm[v] = (v * 5) % V + 1 end
local y = moe.tensor(perm, { dtype = "int64" }):index_select(1, x:reshape(-1)):view(96, S)
local inp = moe.Input { shape = { S }, dtype = "int64" }
local h = nn.Embedding { input_dim = V, output_dim = 8 }(inp)
h = nn.MoeLayer { experts = nn.FeedForwardExperts { num_experts = E, d_ff = 8 },
  router = nn.TokensChooseMaskedRouter { num_experts = E, num_selected_experts = 2, router_z_loss_weight = 1e-3,
    load_balancing_loss_weight = 1e-2 } }(h)
local m = moe.Model { inputs = inp, outputs = nn.Dense { units = V }(h) }
local sce = moe.losses.sparse_categorical_crossentropy
m:compile { optimizer = moe.optim.Adam { lr = 1e-2 },
  loss = function(yt, p, o) return sce(yt, p, { from_logits = true, sample_weight = o and o.sample_weight }) end }
local batches = {}
local probe = { on_batch_end = function(_, _, logs) batches[#batches + 1] = logs.loss end }
local hist = m:fit { x = x:narrow(1, 1, 80), y = y:narrow(1, 1, 80), batch_size = 16, epochs = 4, verbose = 0,
  validation_data = { x:narrow(1, 81, 16), y:narrow(1, 81, 16) },
  callbacks = { probe, moe.callbacks.TensorBoard { log_dir = out .. "/logs", update_freq = 2 } } }
local f = assert(io.open(out .. "/history.json", "w"))
f:write(moe.io.json_encode({ history = hist.history, batches = batches, lr = m.optimizer:get_lr() }))
f:close()
"""


def load(run_dir):
    acc = pea.EventAccumulator(run_dir, size_guidance={pea.TENSORS: 0})
    acc.Reload()
    scalars = acc.PluginTagToContent("scalars")
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto).item()), e.wall_time)
                    for e in acc.Tensors(tag)]
    return out, set(scalars)


def show(logdir):
    for run in sorted(os.listdir(logdir)):
        data, _ = load(os.path.join(logdir, run))
        for tag in sorted(data):
            print(run, tag, [(s, round(v, 6)) for s, v, _ in data[tag]])


def f32(v):
    return float(np.float32(v))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--logdir":
        show(sys.argv[2])
        return 0
    moelua = sys.argv[1] if len(sys.argv) > 1 else "build/moelua"
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "fit.lua")
        with open(script, "w") as f:
            f.write(FIT)
        subprocess.run([moelua, script, tmp], check=True)
        with open(os.path.join(tmp, "history.json")) as f:
            ref = json.load(f)
        hist = ref["history"]
        epochs = len(hist["loss"])
        train, train_plugin = load(os.path.join(tmp, "logs", "train"))
        val, val_plugin = load(os.path.join(tmp, "logs", "validation"))

        def check(what, got, want):
            nonlocal bad
            if got != want:
                bad += 1
                print(f"MISMATCH {what}: {got} != {want}")

        for name, vals in sorted(hist.items()):
            run, tags, plugin = (val, name[4:], val_plugin) if name.startswith("val_") else (train, name, train_plugin)
            tag = "epoch_" + tags
            check(tag + " in the scalars plugin", tag in plugin, True)
            got = [(s, v) for s, v, _ in run.get(tag, [])]
            check(tag, got, [(e + 1, f32(vals[e])) for e in range(epochs)])
        b = ref["batches"]
        check("batch_loss", [(s, v) for s, v, _ in train.get("batch_loss", [])],
              [(i, f32(b[i - 1])) for i in range(2, len(b) + 1, 2)])
        check("epoch_learning_rate", [v for _, v, _ in train.get("epoch_learning_rate", [])], [f32(ref["lr"])] * epochs)
        expected = {"epoch_" + n for n in hist if not n.startswith("val_")} | {"batch_loss", "epoch_learning_rate"}
        check("train tags", set(train), expected)
        check("validation tags", set(val), {"epoch_" + n[4:] for n in hist if n.startswith("val_")})
        ntags = len(train) + len(val)
        print(f"tensorboard {__import__('tensorboard').__version__}: read {ntags} tags "
              f"({sum(len(v) for v in train.values()) + sum(len(v) for v in val.values())} scalars) "
              f"from train/ and validation/; {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
