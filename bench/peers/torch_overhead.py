"""PyTorch (CPU, eager) peer for bench/run.lua's overhead table: ns per call of
the same small ops, best of 3 runs of n calls. Prints "name<TAB>ns" lines."""
import sys

import torch

from timing import best, threads

torch.set_num_threads(threads())
n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
x, y = torch.randn(8), torch.randn(8)
m1, m2 = torch.randn(32, 32), torch.randn(32, 32)
cases = [
    ("a + b (8 elements)", lambda: x + y),
    ("moe.tanh(a) (8 elements)", lambda: torch.tanh(x)),
    ("a:sum() (8 elements)", lambda: x.sum()),
    ("matmul 32x32", lambda: torch.matmul(m1, m2)),
    ("t:view(-1) (no copy)", lambda: m1.view(-1)),
]
for name, f in cases:
    print(f"{name}\t{best(f, n, 3) * 1e9:.0f}")
