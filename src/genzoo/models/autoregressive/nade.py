"""NADE: the neural autoregressive distribution estimator (Larochelle & Murray 2011).

Each conditional is a one-hidden-layer network whose input weights are shared across d:

    h_d = σ(c + W_{:,<d} x_<d),     p(x_d = 1 | x_<d) = σ(b_d + V_d · h_d).

Because a_d = c + W_{:,<d} x_<d grows by one column per step (a_{d+1} = a_d + W_{:,d} x_d),
all D hidden states cost O(DH) — here a cumulative sum over d — and sampling updates a_d in
place, O(DH) per sample instead of the O(D²H) of re-running the network per dimension.

Two implementations of the same logits: ``_NADELogits`` below, in PyTorch (any device and
dtype; the reference), and a fused C kernel (``genzoo/kernels/nade.c``) used for float32 on
the CPU, which walks d for a block of examples at once with a_d in L1 cache, recomputes σ(a_d)
only where x_d ≠ 0 (a changes nowhere else), and never materializes the (B, D, H) activations
(``benchmarks/speed.py`` measures it against a per-dimension loop). Sampling on that path is the
kernel's walk too, each x_d drawn as soon as its logit is known; the PyTorch loop in
``sample_from_uniforms`` is the reference elsewhere. Training on that path (``loss`` when
gradients follow) is one walk as well: with g_d = σ(logit_d) − x_d known at each d, the
gradient of W's column j is x_j Σ_{d>j} ∂L/∂a_d = x_j (T − P_j), the total of the ∂L/∂a_d
minus their running sum up to j, so no walk back down d is needed.

References: Larochelle & Murray, "The Neural Autoregressive Distribution Estimator"
(AISTATS 2011); Uria, Côté, Gregor, Murray & Larochelle, "Neural Autoregressive Distribution
Estimation" (JMLR 2016).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from genzoo.config import require
from genzoo.kernels import threads_for_kernels
from genzoo.kernels.nade import NADELogitsKernel, NADEMeanNLLKernel, nade_kernel_available, nade_sample_kernel
from genzoo.models.autoregressive.base import BernoulliAutoregressive, uniforms_sampler
from genzoo.models.base import register_model

__all__ = ["NADE", "NADEConfig"]

BACKENDS = ("auto", "kernel", "torch")


@dataclass
class NADEConfig:
    #: H, the hidden units shared by every conditional
    hidden_size: int = 500
    #: examples per chunk of the O(B·D·H) hidden-state tensor, to bound memory (PyTorch path)
    chunk_size: int = 8
    #: "auto": the fused C kernel (genzoo.kernels) for float32 on the CPU where it compiles, else
    #: PyTorch; "kernel": insist on the kernel; "torch": the reference PyTorch code only
    backend: str = "auto"

    def __post_init__(self) -> None:
        require(self.hidden_size >= 1, f"nade: hidden_size must be at least 1, got {self.hidden_size}")
        require(self.chunk_size >= 1, f"nade: chunk_size must be at least 1, got {self.chunk_size}")
        require(self.backend in BACKENDS, f"nade: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


def hidden_states(x_t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h_d = σ(c + Σ_{j<d} W_{:,j} x_j) for every d, from x transposed to (D, B); returns (D, B, H).

    Dimension-major, so the exclusive cumulative sum over d adds contiguous (B, H) slabs.
    """
    contributions = x_t.unsqueeze(-1) * weight.t().unsqueeze(1)  # W_{:,j} x_j
    return contributions.cumsum(0).sub_(contributions).add_(bias).sigmoid_()


class _NADELogits(torch.autograd.Function):
    """ℓ_d = b_d + V_d · h_d for all d, with a hand-written backward pass that recomputes h
    chunk by chunk instead of storing the (B, D, H) activations (2× faster than autograd here,
    and memory O(chunk · D · H)):

        ∂L/∂V_d = Σ_b g_bd h_bd,   δ_bd = g_bd V_d ⊙ h_bd ⊙ (1 − h_bd),
        ∂L/∂c = Σ_{b,d} δ_bd,       ∂L/∂W_{:,j} = Σ_b x_bj Σ_{d>j} δ_bd,
        ∂L/∂x_bj = W_{:,j} · Σ_{d>j} δ_bd   (only when x requires a gradient).
    """

    @staticmethod
    def forward(ctx, x, W, c, V, b, chunk_size: int):
        logits = []
        for x_chunk in x.split(chunk_size):
            h = hidden_states(x_chunk.t(), W, c)
            logits.append(torch.bmm(h, V.unsqueeze(-1)).squeeze(-1).t())
        ctx.save_for_backward(x, W, c, V)
        ctx.chunk_size = chunk_size
        return torch.cat(logits) + b

    @staticmethod
    def backward(ctx, grad_logits):
        x, W, c, V = ctx.saved_tensors
        dW, dc, dV = torch.zeros_like(W), torch.zeros_like(c), torch.zeros_like(V)
        dx = [] if ctx.needs_input_grad[0] else None
        for x_chunk, g_chunk in zip(x.split(ctx.chunk_size), grad_logits.split(ctx.chunk_size)):
            x_t, g_t = x_chunk.t(), g_chunk.t().contiguous()
            h = hidden_states(x_t, W, c)
            dV += torch.bmm(g_t.unsqueeze(1), h).squeeze(1)
            delta = h.mul_(1 - h).mul_(g_t.unsqueeze(-1) * V.unsqueeze(1))
            total = delta.sum(0)
            dc += total.sum(0)
            later = delta.cumsum(0).neg_().add_(total)  # Σ_{d>j} δ_d
            dW += torch.bmm(x_t.contiguous().unsqueeze(1), later).squeeze(1).t()
            if dx is not None:
                dx.append(torch.bmm(later, W.t().unsqueeze(-1)).squeeze(-1).t())
        dx = torch.cat(dx) if dx is not None else None
        return dx, dW, dc, dV, grad_logits.sum(0), None


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

    def penalized_weights(self) -> list[torch.Tensor]:
        """The weights a trainer's L1 penalty covers: W and V (not the biases)."""
        return [self.W, self.V]

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernel(x, self.W):
            return NADELogitsKernel.apply(x, self.W, self.c, self.V, self.b)
        return _NADELogits.apply(x, self.W, self.c, self.V, self.b, self.config.chunk_size)

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of -log p(x). On the kernel path, when gradients will be taken, the kernel's
        training walk computes it and the parameters' gradients in one walk up d."""
        x = self.flatten_input(x)
        if (torch.is_grad_enabled() and self.W.requires_grad and not x.requires_grad
                and self._use_kernel(x, self.W)):
            return NADEMeanNLLKernel.apply(x, self.W, self.c, self.V, self.b)
        return -self._log_prob(x).mean()

    def compute_threads(self) -> contextlib.AbstractContextManager:
        """On the kernel path, the kernel's threads do the work and PyTorch's ops run on one thread."""
        return threads_for_kernels() if self._use_kernel(self.W) else contextlib.nullcontext()

    def _use_kernel(self, *tensors: torch.Tensor) -> bool:
        if self.config.backend == "torch":
            return False
        if nade_kernel_available(*tensors):
            return True
        if self.config.backend == "kernel":
            raise ValueError("nade: backend 'kernel' needs float32 tensors on the CPU and a C compiler; "
                             "use backend = 'auto' to fall back to PyTorch")
        return False

    @uniforms_sampler
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """x_d = 1[u_d < p(x_d = 1 | x_<d)], updating a_d in place: O(DH) per sample."""
        if self._use_kernel(u, self.W):
            return nade_sample_kernel(u, self.W, self.c, self.V, self.b)
        x = torch.zeros_like(u)
        a = self.c.expand(len(u), -1).clone()
        for d in range(self.num_dims):
            p = torch.sigmoid(torch.sigmoid(a) @ self.V[d] + self.b[d])
            x[:, d] = (u[:, d] < p).to(x.dtype)
            a += x[:, d, None] * self.W[:, d]
        return x
