"""NADE: the neural autoregressive distribution estimator (Larochelle & Murray 2011).

Each conditional is a one-hidden-layer network whose input weights are shared across d:

    h_d = σ(c + W_{:,<d} x_<d),     p(x_d = 1 | x_<d) = σ(b_d + V_d · h_d).

Because a_d = c + W_{:,<d} x_<d grows by one column per step (a_{d+1} = a_d + W_{:,d} x_d),
all D hidden states cost O(DH) — here a cumulative sum over d — and sampling updates a_d in
place, O(DH) per sample instead of the O(D²H) of re-running the network per dimension.

References: Larochelle & Murray, "The Neural Autoregressive Distribution Estimator"
(AISTATS 2011); Uria, Côté, Gregor, Murray & Larochelle, "Neural Autoregressive Distribution
Estimation" (JMLR 2016).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genzoo.config import require
from genzoo.models.autoregressive.base import BernoulliAutoregressive
from genzoo.models.base import register_model

__all__ = ["NADE", "NADEConfig"]


@dataclass
class NADEConfig:
    hidden_size: int = 500
    #: examples per chunk of the O(B·D·H) hidden-state tensor, to bound memory
    chunk_size: int = 256

    def __post_init__(self) -> None:
        require(self.hidden_size >= 1, f"nade: hidden_size must be at least 1, got {self.hidden_size}")
        require(self.chunk_size >= 1, f"nade: chunk_size must be at least 1, got {self.chunk_size}")


def hidden_preactivations(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """a_d = c + Σ_{j<d} W_{:,j} x_j for every d, shape (B, D, H): an exclusive cumulative sum."""
    contributions = x.unsqueeze(-1) * weight.t()  # (B, D, H): W_{:,j} x_j
    inclusive = contributions.cumsum(dim=1)
    return bias + inclusive - contributions


@register_model("nade", NADEConfig)
class NADE(BernoulliAutoregressive):
    def __init__(self, data_shape: tuple[int, ...], config: NADEConfig | None = None):
        super().__init__(data_shape)
        self.config = config or NADEConfig()
        D, H = self.num_dims, self.config.hidden_size
        self.W = nn.Parameter(torch.randn(H, D) * 0.01)
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter(torch.randn(D, H) * 0.01)
        self.b = nn.Parameter(torch.zeros(D))

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        chunks = []
        for x_chunk in x.split(self.config.chunk_size):
            h = torch.sigmoid(hidden_preactivations(x_chunk, self.W, self.c))
            chunks.append((h * self.V).sum(-1) + self.b)
        return torch.cat(chunks)

    @torch.no_grad()
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(u)
        a = self.c.expand(len(u), -1).clone()
        for d in range(self.num_dims):
            p = torch.sigmoid(torch.sigmoid(a) @ self.V[d] + self.b[d])
            x[:, d] = (u[:, d] < p).to(x.dtype)
            a += x[:, d, None] * self.W[:, d]
        return x
