"""PyTorch peer of bench/gpu.lua's census MMoE epochs (issue 15), on the same GPU.
usage: python3 bench/peers/torch_gpu_census.py [--device cuda|cpu] [--quick] [--json FILE]
The census MMoE of torch_moe.py (499 inputs, 8 experts x 4 units, 2 tasks,
towers of 8, Adam lr 1e-3, binary cross-entropy), one epoch over 32,768 rows
already on the device, shuffled batches of 32 and 1024 (randperm, index per
batch, as fit{} does), median of 3 epochs after one warm-up epoch, each ending
in a read of the last loss (which waits for the device)."""
import argparse, json, os, statistics, sys, time
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mmoe_model import MMoE  # noqa: E402  (the census MMoE, shared with torch_moe.py)


ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
ap.add_argument("--quick", action="store_true")
ap.add_argument("--json")
args = ap.parse_args()
dev = torch.device(args.device)
rows = 2048 if args.quick else 32768
torch.manual_seed(1)


def epoch_time(batch):
    model = MMoE().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(rows, 499, device=dev)
    ys = [(torch.rand(rows, 1, device=dev) > 0.5).float() for _ in range(2)]

    def epoch():
        perm = torch.randperm(rows, device=dev)
        loss = None
        for i in range(0, rows, batch):
            idx = perm[i:i + batch]
            xb = x.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            loss = sum(F.binary_cross_entropy(o, y.index_select(0, idx)) for o, y in zip(model(xb), ys))
            loss.backward()
            opt.step()
        return loss.item()

    epoch()
    ts = []
    for _ in range(1 if args.quick else 3):
        t0 = time.perf_counter()
        epoch()
        ts.append(time.perf_counter() - t0)
    t = statistics.median(ts)
    return {"epoch_s": t, "samples_per_s": rows / t, "rows": rows}


res = {"torch": torch.__version__, "device": str(dev)}
for b in (32, 1024):
    try:
        res[str(b)] = epoch_time(b)
        print(f"census MMoE batch {b}: {res[str(b)]['epoch_s']:.3f} s/epoch, {res[str(b)]['samples_per_s']:.0f} samples/s", flush=True)
    except Exception as e:
        res[str(b)] = {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"}
        print(f"census MMoE batch {b}: {res[str(b)]['error']}", flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
