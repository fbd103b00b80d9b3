"""PyTorch CPU peer for bench/run.lua's training section: the same models and
steps, timed the same way (best of several repetitions). Prints name<TAB>us.
usage: python3 bench/peers/torch_train_step.py STEPS [compile]   (pip install torch)
compile: the wide MLP only, its forward and loss, and Adam's step, under
torch.compile (inductor); its compile time is reported apart (compile_s)."""
import sys
import torch

from timing import compiler, run, steady, threads

torch.set_num_threads(threads())
steps = int(sys.argv[1])
compiled = "compile" in sys.argv[2:]
jit = compiler(compiled)
torch.manual_seed(1)


def mlp_case(name, din, hidden, batch):
    layers, d = [], din
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
        d = h
    layers += [torch.nn.Linear(d, 1), torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, din), (torch.rand(batch, 1) > 0.5).float()
    loss_fn = torch.nn.BCELoss()
    loss_of = jit(lambda: loss_fn(model(x), y))
    opt_step = jit(opt.step)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of().backward()
        opt_step()

    print(f"{name}\t{steady(step, steps, 5, 20, compiled) * 1e6:.1f}", flush=True)


if not compiled:
    mlp_case("mlp 7-32-16-1, batch 256", 7, [32, 16], 256)
run(lambda: mlp_case("mlp 512-1024-1024-1, batch 512", 512, [1024, 1024], 512))
