"""PyTorch peer of bench/gpu.lua's sparse MoE cases (issue 15), on the same GPU.
usage: python3 bench/peers/torch_gpu_moe.py [--device cuda|cpu] [--quick] [--json FILE]
Per E in (8, 64) and precision in (fp32, tf32, bf16): the top-2 tokens-choose
layer, dropless, forward + backward of sum(y), in two forms:
  gather_scatter: softmax router, topk, argsort by expert, index_select, one
    GEMM pair per expert (gelu between), gate scale, index_add (as torch_moe.py);
  grouped_mm: the same routing, the experts' GEMMs as torch.nn.functional.grouped_mm
    over the expert-sorted rows (where this PyTorch has it; its kernels take bf16).
Plus dense: one torch.mm of the same FLOPs, [T*k, H] x [H, 6*d_ff].
fp32: allow_tf32 off; tf32: torch.backends.cuda.matmul.allow_tf32; bf16: autocast
to bfloat16 around the experts (router in fp32), fp32 master weights.
Median of N steps after 2 warm-up steps, each ending in torch.cuda.synchronize()."""
import argparse, json, statistics, time
import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
ap.add_argument("--quick", action="store_true")
ap.add_argument("--json")
args = ap.parse_args()
dev = torch.device(args.device)
T, H, D, K, Es, N = 16384, 1024, 4096, 2, (8, 64), 5
if args.quick:
    T, H, D, Es, N = 256, 64, 128, (8,), 2


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(f, warm=2, n=N):
    for _ in range(warm):
        f()
    sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def set_precision(p):
    tf32 = p == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def layer(E, p, grouped):
    g = torch.Generator(device="cpu").manual_seed(1)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dev).requires_grad_()
    x = mk(T, H)
    wr = mk(H, E, scale=0.02)
    w1, w2 = mk(E, H, D, scale=0.02), mk(E, D, H, scale=0.02)
    b1 = torch.zeros(E, D, device=dev, requires_grad=True)
    b2 = torch.zeros(E, H, device=dev, requires_grad=True)
    bf16 = p == "bf16"

    def experts(rows, counts_t, counts):
        if grouped:
            offs = torch.cumsum(counts_t, 0).to(torch.int32)
            dt = torch.bfloat16  # grouped_mm's kernels take bf16 (PyTorch 2.11); fp32/tf32 rows try fp32
            dt = dt if bf16 else rows.dtype
            h = F.gelu(F.grouped_mm(rows.to(dt), w1.to(dt), offs=offs) + b1.to(dt).repeat_interleave(counts_t, 0, output_size=rows.shape[0]))
            return F.grouped_mm(h, w2.to(dt), offs=offs).float() + b2.repeat_interleave(counts_t, 0, output_size=rows.shape[0])
        outs, at = [], 0
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            for e in range(E):
                r = rows[at:at + counts[e]]
                outs.append(F.gelu(r @ w1[e] + b1[e]) @ w2[e] + b2[e])
                at += counts[e]
        return torch.cat(outs).float()

    def step():
        probs = F.softmax(x @ wr, -1)               # the router, fp32
        gate, idx = probs.topk(K, -1)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        tok = torch.arange(T, device=dev).repeat_interleave(K)[order]
        gsort = gate.reshape(-1)[order]
        counts_t = torch.bincount(flat, minlength=E)
        counts = counts_t.tolist() if not grouped else None
        rows = x.index_select(0, tok)
        y = experts(rows, counts_t, counts) * gsort.unsqueeze(1)
        out = torch.zeros_like(x).index_add(0, tok, y)
        out.sum().backward()
        for t in (x, wr, w1, w2, b1, b2):
            t.grad = None

    set_precision(p)
    try:
        t = timed(step)
    finally:
        set_precision("fp32")
    return {"s": t, "tflops": 12.0 * T * K * H * D / t / 1e12}


def dense(p):
    a = torch.randn(T * K, H, device=dev)
    b = torch.randn(H, 6 * D, device=dev)
    if p == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    set_precision(p)
    try:
        t = timed(lambda: torch.mm(a, b))
    finally:
        set_precision("fp32")
    return {"s": t, "tflops": 2.0 * T * K * H * 6 * D / t / 1e12, "shape": f"{T*K}x{H}x{6*D}"}


def attempt(f, *a):
    try:
        return f(*a)
    except Exception as e:  # an unsupported dtype of grouped_mm, out of memory ...
        return {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"}
    finally:
        if dev.type == "cuda":
            torch.cuda.empty_cache()


res = {"torch": torch.__version__, "device": str(dev), "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
       "shape": {"T": T, "H": H, "d_ff": D, "k": K}, "moe": {}, "dense": {}}
for p in ("fp32", "tf32", "bf16"):
    res["dense"][p] = attempt(dense, p)
    for E in Es:
        r = {"gather_scatter": attempt(layer, E, p, False)}
        r["grouped_mm"] = attempt(layer, E, p, True) if hasattr(F, "grouped_mm") else {"error": "no torch.nn.functional.grouped_mm"}
        res["moe"][f"E{E}_{p}"] = r
        print(f"E={E} {p}: " + ", ".join(f"{k} " + (f"{v['s']:.4f} s {v['tflops']:.1f} TFLOP/s" if "s" in v else v["error"]) for k, v in r.items()), flush=True)
    d = res["dense"][p]
    print(f"dense {p}: " + (f"{d['tflops']:.1f} TFLOP/s" if "s" in d else d["error"]), flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
