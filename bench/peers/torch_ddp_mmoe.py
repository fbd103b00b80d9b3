"""PyTorch DDP peer of bench/dist_scale.lua's mmoe_step: the census MMoE's
data-parallel training step (zero_grad, forward, BCE of both tasks, backward
with DDP's bucketed all-reduce of the gradients, Adam) on the CPU, the gloo
backend, N processes of one thread each (torch.multiprocessing.spawn, a free
port on 127.0.0.1). One process runs the plain model, without DDP or a process
group: what one process gets, the base of the scaling ratio.

usage: python3 bench/peers/torch_ddp_mmoe.py --world N --batch B [--data FILE] [--quick]

--data: the census training rows as bench/dist_scale.lua's `export` writes
them (safetensors: x, income, never_married); without it, random rows of 499
features. Batch s of the run is rows (s*N + rank)*B + 1 .. +B of the file on
each rank, 8 batches cycled, as in moelua's case. A time is the slowest rank's,
best of 5 rounds (2 with --quick). Prints name<TAB>value lines (rank 0)."""
import argparse, json, os, socket, struct, sys, time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mmoe_model import MMoE  # noqa: E402


def read_safetensors(path):
    """{name: tensor} of a safetensors file (float32 entries), read by hand:
    an 8-byte little-endian header length, the JSON header, the data."""
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
    return out


def batches(args, rank, world):
    nb = 2 if args.quick else 8
    if args.data:
        t = read_safetensors(args.data)
        x, ys = t["x"], [t["income"].reshape(-1, 1), t["never_married"].reshape(-1, 1)]
    else:
        g = torch.Generator().manual_seed(7)
        n = nb * world * args.batch
        x = torch.randn(n, 499, generator=g)
        ys = [(torch.rand(n, 1, generator=g) > 0.5).float() for _ in range(2)]
    out = []
    for s in range(nb):
        first = (s * world + rank) * args.batch
        if first + args.batch > x.shape[0]:
            raise ValueError(f"{args.data}: {x.shape[0]} rows, too few for {nb} batches of {args.batch} x {world} ranks")
        sl = slice(first, first + args.batch)
        out.append((x[sl].contiguous(), [y[sl].contiguous() for y in ys]))
    return out, x.shape[1]


def worker(rank, world, port, args):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    data, features = batches(args, rank, world)
    torch.manual_seed(1)  # the same weights on every rank (DDP broadcasts rank 0's anyway)
    model = MMoE(F_=features)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    i = [0]

    def step():
        x, ys = data[i[0] % len(data)]
        i[0] += 1
        opt.zero_grad(set_to_none=True)
        loss = sum(F.binary_cross_entropy(o, y) for o, y in zip(net(x), ys))
        loss.backward()
        opt.step()

    def barrier():
        if world > 1:
            dist.barrier()

    def slowest(t):
        if world == 1:
            return t
        v = torch.tensor([t], dtype=torch.float64)
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        return v.item()

    for _ in range(10):
        step()
    iters = 5 if args.quick else (200 if args.batch <= 64 else 20)
    best = float("inf")
    for _ in range(2 if args.quick else 5):
        barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        best = min(best, slowest((time.perf_counter() - t0) / iters))
    if rank == 0:
        print(f"how\t{'DDP, gloo' if world > 1 else 'plain model, one process'}")
        print(f"torch\t{torch.__version__}")
        print(f"data\t{'census rows of ' + args.data if args.data else 'random rows'}")
        print(f"ranks\t{world}\nthreads\t{torch.get_num_threads()}\nbatch_per_rank\t{args.batch}")
        print(f"step_s\t{best:.6g}\nsamples_per_s\t{world * args.batch / best:.6g}", flush=True)
    if world > 1:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--data", default="")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.world == 1:
        worker(0, 1, 0, a)
    else:
        torch.multiprocessing.spawn(worker, args=(a.world, free_port(), a), nprocs=a.world, join=True)
