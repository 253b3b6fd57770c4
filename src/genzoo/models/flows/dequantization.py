"""Dequantization: how a density on (0, 1)^D scores discrete data.

Discrete data x ∈ {0, …, L − 1}^D (L = 256 for 8-bit pixels, L = 2 for binary) is lifted to
y = (x + u) / L with u ∈ [0, 1)^D drawn from q(u | x). For any density p on y,

    P(x) = ∫_{[0,1)^D} p((x + u) / L) L^{−D} du ≥ exp E_q[log p((x + u) / L) − log q(u | x)] · L^{−D},

so  log P(x) ≥ E_q[log p(y) − log q(u | x)] − D log L  (Jensen), with the Jacobian L^{−D} of the
scaling counted. The model whose ``log_prob`` returns this is a lower bound on the log
probability of the discrete data under the discrete model P(x) = ∫ over x's cell of p.

* **Uniform** (Theis et al. 2016; Real NVP, Glow): q(u | x) = U[0, 1)^D, log q = 0.
* **Variational** (Flow++, Ho et al. 2019, section 3.1): u = σ(g(ε; x)), ε ~ N(0, I), where g is
  a conditional flow of affine couplings whose networks see x, so
  log q(u | x) = log N(ε) − log |det ∂g/∂ε| − Σ log σ'(g(ε; x)). Trained jointly with p, it
  tightens the bound.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from genzoo.models.flows.transforms import AffineCoupling, alternating_mask, event_sum, mlp

__all__ = ["UniformDequantization", "VariationalDequantization", "dequantization_bound"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class UniformDequantization(nn.Module):
    """q(u | x) = U[0, 1)^D: u is the noise itself and log q(u | x) = 0."""

    name = "uniform"

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        device = generator.device if generator is not None else like.device
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).to(like.device, like.dtype)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log q(u | x)) for flat x (B, D) and noise (B, D)."""
        return noise, x.new_zeros(len(x))


class VariationalDequantization(nn.Module):
    """Flow++'s variational dequantization with a small conditional flow on flat vectors:
    ``num_layers`` affine couplings (alternating halves) whose MLPs see [ε_kept, x scaled to [−1, 1]]."""

    name = "variational"

    def __init__(self, num_dims: int, levels: int, num_layers: int = 4, hidden_size: int = 256):
        super().__init__()
        self.levels = levels
        self.couplings = nn.ModuleList(
            AffineCoupling(alternating_mask(num_dims, parity=i % 2), mlp(2 * num_dims, hidden_size, 2 * num_dims))
            for i in range(num_layers)
        )

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        device = generator.device if generator is not None else like.device
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float64).to(like.device, like.dtype)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context = 2 * x / (self.levels - 1) - 1
        log_q = -event_sum(0.5 * noise**2) - noise.shape[1] * _HALF_LOG_2PI
        a = noise
        for coupling in self.couplings:
            a, logdet = coupling(a, context)
            log_q = log_q - logdet
        # u = σ(a): log σ'(a) = log σ(a) + log σ(−a)
        log_q = log_q - event_sum(F.logsigmoid(a) + F.logsigmoid(-a))
        return torch.sigmoid(a), log_q


def dequantization_bound(log_density, x: torch.Tensor, dequantizer: nn.Module, noise: torch.Tensor,
                         levels: int) -> torch.Tensor:
    """One draw of log p((x + u) / L) − log q(u | x) − D log L for each row of flat x; its
    expectation over q is a lower bound on log P(x). ``log_density`` maps y (B, D) to (B,)."""
    u, log_q = dequantizer(x, noise)
    # u < 1 in exact arithmetic, but x + u rounds up to x + 1 for large x (float32: x ≥ 128 and
    # u within 8e-6 of 1), which puts y = 1 under a logit; so y itself is kept below its cell's
    # upper edge, (x + 1) / L (exact: L is a power of two)
    upper = torch.nextafter((x + 1) / levels, torch.zeros_like(x))
    y = torch.minimum((x + u) / levels, upper)
    return log_density(y) - log_q - x.shape[1] * math.log(levels)
