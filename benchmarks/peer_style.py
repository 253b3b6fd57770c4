"""Baselines written the way the closest peer library's implementations work (as described in
the issue), so that speed ratios are measured in one run on one machine rather than against
figures quoted from another machine. They are timing references only — not genzoo code, and
not the peer's own source:

- NADE: a Python loop over the 784 dimensions, updating the hidden pre-activation by one
  column per step, differentiated by autograd;
- MADE: masks applied in place to the weights (``weight.data *= mask``) before every forward,
  a non-fused Adam;
- FVSBN: one logistic regression per dimension, evaluated in a loop over dimensions.

Sampling in all three re-runs the full network once per dimension (D passes), which is what
genzoo's ``sample_naive`` does, so the naive-sampling times in speed.py are the peer-style ones.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LoopNADE(nn.Module):
    def __init__(self, D: int, H: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(H, D) * 0.01)
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter(torch.randn(D, H) * 0.01)
        self.b = nn.Parameter(torch.zeros(D))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c.expand(len(x), -1)
        logits = []
        for d in range(x.shape[1]):
            logits.append(torch.sigmoid(a) @ self.V[d] + self.b[d])
            a = a + x[:, d : d + 1] * self.W[:, d]
        logits = torch.stack(logits, dim=1)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()


class InPlaceMaskedMADE(nn.Module):
    def __init__(self, D: int, H: int):
        super().__init__()
        self.hidden, self.out = nn.Linear(D, H), nn.Linear(H, D)
        degrees_in = torch.arange(1, D + 1)
        degrees_hidden = torch.randint(1, D, (H,), generator=torch.Generator().manual_seed(0))
        self.register_buffer("mask_hidden", (degrees_hidden[:, None] >= degrees_in[None, :]).float())
        self.register_buffer("mask_out", (degrees_in[:, None] > degrees_hidden[None, :]).float())

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.hidden.weight.data *= self.mask_hidden
        self.out.weight.data *= self.mask_out
        logits = self.out(F.relu(self.hidden(x)))
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()


class LoopFVSBN(nn.Module):
    def __init__(self, D: int):
        super().__init__()
        self.regressions = nn.ModuleList(nn.Linear(max(d, 1), 1) for d in range(D))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        logits = [self.regressions[0](torch.zeros_like(x[:, :1]))]
        logits += [self.regressions[d](x[:, :d]) for d in range(1, x.shape[1])]
        logits = torch.cat(logits, dim=1)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()


def build(name: str, D: int, hyperparameters: dict) -> tuple[nn.Module, torch.optim.Optimizer]:
    if name == "nade":
        model = LoopNADE(D, hyperparameters["hidden_size"])
    elif name == "made":
        model = InPlaceMaskedMADE(D, hyperparameters["hidden_sizes"][0])
    elif name == "fvsbn":
        model = LoopFVSBN(D)
    else:
        raise KeyError(name)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)
