"""PyTorch CPU peers for bench/moe.lua: the same layers and steps, timed the
same way (best of several repetitions). Prints name<TAB>value lines.
usage: python3 bench/peers/torch_moe.py CASE [quick] [compile | bf16]   (pip install torch)
CASE: sparse | mmoe32 | mmoe1024 | tabular; the last line is the peak RSS.
compile: the step under torch.compile (inductor; mmoe and tabular), compile
time reported apart; bf16: the sparse layer under bf16 autocast, where the CPU
has bf16 (AVX512-BF16 or AMX)."""
import resource, sys
import torch

from timing import best, compiler, has_cpu_bf16, run, steady, threads
from mmoe_model import MMoE
import torch.nn.functional as F

torch.set_num_threads(threads())
torch.manual_seed(1)
case, flags = sys.argv[1], set(sys.argv[2:])
quick, compiled, bf16 = "quick" in flags, "compile" in flags, "bf16" in flags
jit = compiler(compiled)


# --- sparse MoE layer, tokens-choose top-2 with capacity, gather/scatter dispatch
def sparse_moe(T=4096, H=512, D=2048, E=8, k=2, cf=1.25):
    if bf16 and not has_cpu_bf16():
        print("skipped\tCPU has no AVX512-BF16/AMX")
        return
    x = torch.randn(T, H, requires_grad=True)
    wr = (torch.randn(H, E) * 0.02).requires_grad_()
    w1 = (torch.randn(E, H, D) * H ** -0.5).requires_grad_()
    b1 = torch.zeros(E, D, requires_grad=True)
    w2 = (torch.randn(E, D, H) * D ** -0.5).requires_grad_()
    b2 = torch.zeros(E, H, requires_grad=True)
    C = int(round(cf * T / E))

    def forward():
        with torch.autocast("cpu", enabled=False):                      # an fp32 router
            probs = F.softmax(x @ wr, -1)
        gate, idx = probs.topk(k, -1)                                   # [T,k]
        flat = idx.t().reshape(-1)                                      # rank-major priority
        onehot = F.one_hot(flat, E)
        pos = (onehot.cumsum(0) * onehot).sum(-1) - 1
        keep = pos < C
        tok = torch.arange(T).repeat(k)[keep]
        exp = flat[keep]
        g = gate.t().reshape(-1)[keep]
        order = torch.argsort(exp, stable=True)
        tok, exp, g = tok[order], exp[order], g[order]
        counts = torch.bincount(exp, minlength=E).tolist()
        rows = x.index_select(0, tok)
        outs, at = [], 0
        for e in range(E):
            r = rows[at:at + counts[e]]
            h = F.gelu(r @ w1[e] + b1[e])
            outs.append(h @ w2[e] + b2[e])
            at += counts[e]
        out = (torch.cat(outs) * g.unsqueeze(1)).to(x.dtype)
        return torch.zeros_like(x).index_add(0, tok, out), int(keep.sum())

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # "bf16": expert GEMMs in bf16
            y, kept = forward()
        y.sum().backward()
        for p in (x, wr, w1, b1, w2, b2):
            p.grad = None
        return kept

    kept = step()
    t = best(step, 1, 2 if quick else 4)
    flops = 12.0 * kept * H * D
    print(f"sparse_moe_s\t{t:.6f}")
    print(f"sparse_moe_gflops\t{flops / t / 1e9:.2f}")


# --- MMoE on census-shaped data: 499 inputs, 8 experts x 4 units, 2 tasks, towers of 8
# (bench/peers/mmoe_model.py)
def mmoe(batch):
    model = MMoE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 499)
    ys = [(torch.rand(batch, 1) > 0.5).float() for _ in range(2)]

    @jit
    def loss_of(x):
        return sum(F.binary_cross_entropy(o, y) for o, y in zip(model(x), ys))
    opt_step = jit(opt.step)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(x).backward()
        opt_step()

    n = 50 if batch <= 64 else 10
    t = steady(step, n // (5 if quick else 1), compiled=compiled)
    print(f"mmoe_{batch}_samples_per_s\t{batch / t:.1f}")


# --- TabularMoELayer F=64, E=8, U=32, forward + backward
def tabular(batch=1024, F_=64, E=8, U=32):
    x = torch.randn(batch, F_, requires_grad=True)
    w1 = torch.nn.Parameter(torch.randn(E, F_, U) * 0.1)
    b1 = torch.nn.Parameter(torch.zeros(E, 1, U))
    w2 = torch.nn.Parameter(torch.randn(E, U, F_) * 0.1)
    b2 = torch.nn.Parameter(torch.zeros(E, 1, F_))
    wg = torch.nn.Parameter(torch.randn(F_, E) * 0.1)
    bg = torch.nn.Parameter(torch.zeros(E))
    params = [x, w1, b1, w2, b2, wg, bg]

    @jit
    def forward(x):
        h = F.relu(x @ w1 + b1)                                         # [E,B,U]
        y = h @ w2 + b2                                                 # [E,B,F]
        g = F.softmax(x @ wg + bg, -1)                                  # [B,E]
        return (y.permute(1, 2, 0) * g.unsqueeze(1)).sum(-1)

    def step():
        forward(x).sum().backward()
        for p in params:
            p.grad = None

    t = steady(step, 20 if quick else 100, compiled=compiled)
    print(f"tabular_samples_per_s\t{batch / t:.1f}")


run({"sparse": sparse_moe, "mmoe32": lambda: mmoe(32), "mmoe1024": lambda: mmoe(1024), "tabular": tabular}[case])
print(f"peak_rss_mib\t{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
