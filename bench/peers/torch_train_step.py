"""PyTorch CPU peer for bench/run.lua's training section: the same models and
steps, timed the same way (best of several repetitions). Prints name<TAB>us.
usage: python3 bench/peers/torch_train_step.py STEPS   (pip install torch)"""
import sys, time
import torch

from timing import best, threads

torch.set_num_threads(threads())
steps = int(sys.argv[1])
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

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    print(f"{name}\t{best(step, steps) * 1e6:.1f}", flush=True)


mlp_case("mlp 7-32-16-1, batch 256", 7, [32, 16], 256)
mlp_case("mlp 512-1024-1024-1, batch 512", 512, [1024, 1024], 512)
