"""PyTorch peer of models/mmoe_census.lua for issue 18's results table: the
census MMoE (bench/peers/mmoe_model.py: 8 experts x 4 units, a softmax gate per
task, towers Dense(8, relu) -> Dense(1, sigmoid)) trained on exactly moelua's
split, as the script trains it: Adam (lr 1e-3), the sum of the tasks' binary
cross-entropies, batch 32, the rows reshuffled each epoch; after each epoch the
ROC-AUC of each task on the validation and test sets, and the epoch with the
best mean validation AUC kept. One run per seed (the weights and the shuffle;
the split is the file's), then the mean, std and best test AUC per task.

usage:
  build/moelua run bench/census_export.lua /tmp/census.safetensors [--tasks income|education]
  python3 bench/peers/torch_census_mmoe.py /tmp/census.safetensors [--epochs 8] [--seeds 10] [--seed 1]

Prints one line per seed and task (seed, task, best epoch, val and test AUC),
then the summary; name<TAB>value lines with --tsv. torch.set_num_threads(1)
unless --threads N. The protocol (the bundled UCI census-income test file,
split 50/25/25 by moelua's seeded permutation) is the file's."""
import argparse, json, os, struct, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mmoe_model import MMoE  # noqa: E402


def read_safetensors(path):
    """({name: tensor}, metadata) of a safetensors file of float32 entries, read
    by hand: an 8-byte little-endian header length, the JSON header, the data."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {e['dtype']}, expected F32")
        b, end = e["data_offsets"]
        out[name] = torch.frombuffer(data[b:end], dtype=torch.float32).reshape(e["shape"])
    return out, header.get("__metadata__", {})


def roc_auc(y, s):
    """exact ROC-AUC of scores s for 0/1 labels y: the Mann-Whitney statistic,
    tied scores sharing their average rank"""
    y, s = y.reshape(-1).double(), s.reshape(-1).double()
    order = torch.argsort(s)
    # average ranks of ties, by runs of equal sorted scores
    _, counts = torch.unique_consecutive(s[order], return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2  # 1-based average rank of each run
    ranks = torch.repeat_interleave(avg, counts)
    r = torch.empty_like(ranks)
    r[order] = ranks
    npos = y.sum()
    nneg = len(y) - npos
    return float(((r * y).sum() - npos * (npos + 1) / 2) / (npos * nneg))


def rechub_ple(F_, units, tasks):
    """torch-rechub 0.9.0's PLE as models/mmoe_census.lua --model ple builds nn.PLE: 2 levels, 2 specific
    experts per task and 4 shared, experts of `units` units, towers of 8; a list of [B, 1] probabilities.
    Only rechub's model files are imported (bench/peers/rechub_models.py)."""
    from rechub_models import import_rechub
    DenseFeature, _, PLE = import_rechub()
    ple = PLE([DenseFeature("x", embed_dim=F_)], ["classification"] * tasks, n_level=2, n_expert_specific=2,
              n_expert_shared=4, expert_params={"dims": [units]}, tower_params_list=[{"dims": [8]}] * tasks)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ple = ple

        def forward(self, x):
            y = self.ple({"x": x})
            return [y[:, t:t + 1] for t in range(tasks)]
    return Wrapped()


def run(d, tasks, seed, epochs, batch, model_name="mmoe", units=4):
    torch.manual_seed(seed)
    xtr = d["train.x"]
    if model_name == "ple":
        model = rechub_ple(xtr.shape[1], units, len(tasks))
    else:
        model = MMoE(F_=xtr.shape[1], U=units, E=8, tasks=len(tasks))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best = None
    n = xtr.shape[0]
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n)
        for b in range(0, n, batch):
            idx = perm[b:b + batch]
            outs = model(xtr[idx])
            loss = sum(F.binary_cross_entropy(o, d["train." + t][idx]) for o, t in zip(outs, tasks))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            aucs = {}
            for s in ("val", "test"):
                outs = model(d[s + ".x"])
                for o, t in zip(outs, tasks):
                    aucs[(s, t)] = roc_auc(d[s + "." + t], o)
        mean_val = sum(aucs[("val", t)] for t in tasks) / len(tasks)
        if best is None or mean_val > best[1]:
            best = (epoch, mean_val, aucs)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tsv", action="store_true")
    ap.add_argument("--model", choices=["mmoe", "ple"], default="mmoe",
                    help="the census MMoE, or torch-rechub's PLE as mmoe_census.lua --model ple builds it")
    ap.add_argument("--units", type=int, default=4, help="units of each expert")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d, meta = read_safetensors(a.data)
    tasks = meta.get("tasks", "income,never_married").split(",")
    print(f"PyTorch {torch.__version__} {a.model} ({a.units} units a expert) on {a.data} (tasks {', '.join(tasks)}; split seed {meta.get('seed')}, "
          f"source {meta.get('source')}): {a.seeds} seeds from {a.seed}, {a.epochs} epochs, batch {a.batch_size}")
    res = {t: [] for t in tasks}
    t0 = time.time()
    for seed in range(a.seed, a.seed + a.seeds):
        epoch, _, aucs = run(d, tasks, seed, a.epochs, a.batch_size, a.model, a.units)
        for t in tasks:
            res[t].append(aucs[("test", t)])
            print(f"seed {seed} {t}: best epoch {epoch}, val AUC {aucs[('val', t)]:.4f}, test AUC {aucs[('test', t)]:.4f}")
    for t in tasks:
        v = torch.tensor(res[t], dtype=torch.float64)
        std = float(v.std()) if len(v) > 1 else 0.0
        print(f"{t}: test AUC mean {float(v.mean()):.4f} +- {std:.4f} (std over {len(v)} seeds), best {float(v.max()):.4f}")
        if a.tsv:
            print(f"torch_{a.model}.{t}.mean\t{float(v.mean()):.6f}\ntorch_{a.model}.{t}.std\t{std:.6f}\ntorch_{a.model}.{t}.best\t{float(v.max()):.6f}")
    print(f"{time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
