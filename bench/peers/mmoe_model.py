"""The census MMoE in PyTorch, as moelua's models/mmoe_census.lua builds it:
499 inputs, 8 experts x 4 units (relu), one softmax gate per task, towers
Dense(8, relu) -> Dense(1, sigmoid). Shared by the peers torch_moe.py,
torch_ddp_mmoe.py and torch_gpu_census.py."""
import torch
import torch.nn.functional as F


class MMoE(torch.nn.Module):
    def __init__(self, F_=499, U=4, E=8, tasks=2):
        super().__init__()
        self.ek = torch.nn.Parameter(torch.randn(F_, U, E) * F_ ** -0.5)
        self.eb = torch.nn.Parameter(torch.zeros(U, E))
        self.gk = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(F_, E) * F_ ** -0.5) for _ in range(tasks)])
        self.gb = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(E)) for _ in range(tasks)])
        self.towers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(U, 8), torch.nn.ReLU(),
                                                               torch.nn.Linear(8, 1), torch.nn.Sigmoid())
                                           for _ in range(tasks)])

    def forward(self, x):
        h = F.relu(torch.tensordot(x, self.ek, dims=1) + self.eb)        # [B,U,E]
        outs = []
        for gk, gb, tower in zip(self.gk, self.gb, self.towers):
            g = F.softmax(x @ gk + gb, -1)                              # [B,E]
            outs.append(tower((h * g.unsqueeze(1)).sum(-1)))
        return outs
