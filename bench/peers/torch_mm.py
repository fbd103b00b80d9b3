"""PyTorch's sgemm (torch.mm into a preallocated output: MKL or oneDNN inside
torch) as a peer of bench/run.lua's matmul table. Prints MxKxN<TAB>GFLOP/s.
usage: python3 bench/peers/torch_mm.py MxKxN ...   (pip install torch)"""
import sys
import torch

from timing import best, threads

torch.set_num_threads(threads())
for shape in sys.argv[1:]:
    m, k, n = (int(v) for v in shape.split("x"))
    a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    f = lambda: torch.mm(a, b, out=c)
    flop = 2.0 * m * k * n
    f()
    t = best(f, max(1, int(2e9 / flop)), 7)
    print(f"{shape}\t{flop / t / 1e9:.2f}", flush=True)
