"""Vector quantization with a learned codebook (van den Oord, Vinyals & Kavukcuoglu 2017).

A codebook of K vectors e_1…e_K ∈ R^D replaces each encoder output z_e by its nearest code:

    k(z_e) = argmin_k ‖z_e − e_k‖²,        z_q = e_{k(z_e)}.

The argmin has no gradient; the straight-through estimator copies the decoder's gradient at z_q
to z_e unchanged, by passing z_e + sg(z_q − z_e) (equal to z_q in value) to the decoder. The
encoder is held near its codes by the commitment loss β‖z_e − sg(z_q)‖², and the codes move
either by the codebook loss ‖sg(z_e) − z_q‖² or, as in the paper's appendix, by exponential
moving averages of the vectors each code is assigned (decay γ, counts Laplace-smoothed by ε so
that a code that has never been chosen never divides by zero):

    N_k ← γ N_k + (1 − γ) n_k,      m_k ← γ m_k + (1 − γ) Σ_{i: k(z_i) = k} z_i,
    Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j,      e_k = m_k / Ñ_k.

A code left unused for ``dead_code_steps`` training steps is restarted at a random current
encoder output (Dhariwal et al. 2020, Jukebox), so the whole codebook stays in use. Codebook
usage is measured by the perplexity exp(H(p)) of the code frequencies p: K when every code is used
equally often, 1 when a single code is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["VectorQuantizer", "Quantized", "perplexity"]


@dataclass
class Quantized:
    #: z_e + sg(z_q − z_e): the codes' values with the straight-through gradient to z_e, (N, D)
    z_q: torch.Tensor
    #: the nearest code of each row, (N,) int64
    indices: torch.Tensor
    #: ‖z_e − sg(z_q)‖² per row, (N,)
    commitment: torch.Tensor
    #: ‖sg(z_e) − z_q‖² per row, (N,): moves the codes when they are learned by gradient
    codebook_loss: torch.Tensor


def perplexity(counts: torch.Tensor) -> float:
    """exp(H(p)) of the frequencies p = counts / Σ counts (0 · log 0 = 0)."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class VectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of size ``code_dim``, learned by EMA (``ema=True``,
    the codebook is then a buffer) or by gradient (a parameter, with ``codebook_loss``)."""

    def __init__(self, num_codes: int, code_dim: int, ema: bool = True, decay: float = 0.99,
                 epsilon: float = 1e-5, dead_code_steps: int = 100):
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.ema, self.decay, self.epsilon, self.dead_code_steps = ema, decay, epsilon, dead_code_steps
        codebook = torch.randn(num_codes, code_dim)
        if ema:
            self.register_buffer("codebook", codebook)
            # the EMA state starts as if every code had been seen once at its initial position
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # training steps since each code was last chosen (saved, so a resumed run restarts the same codes)
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))
        # this epoch's code counts and restarts, for the run's metrics (reset by the model each epoch)
        self.register_buffer("usage", torch.zeros(num_codes, dtype=torch.long), persistent=False)
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """argmin_k ‖z − e_k‖² for each row of z (N, D), as (N,) int64."""
        distances = torch.cdist(z.unsqueeze(0), self.codebook.to(z.dtype).unsqueeze(0),
                                compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)
        return distances.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """The code vectors e_k of an index tensor of any shape, shape (*indices.shape, D)."""
        return self.codebook[indices]

    def forward(self, z: torch.Tensor) -> Quantized:
        indices = self.nearest(z.detach())
        codes = self.lookup(indices)
        commitment = (z - codes.detach()).pow(2).sum(dim=1)
        codebook_loss = (z.detach() - codes).pow(2).sum(dim=1)
        z_q = z + (codes - z).detach()  # straight-through: value z_q, gradient to z as if identity
        return Quantized(z_q, indices, commitment, codebook_loss)

    @torch.no_grad()
    def update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """One training step's codebook bookkeeping from the encoder outputs z (N, D) and their
        codes: the EMA update (if ``ema``), usage counts, and restarts of dead codes."""
        z = z.detach().to(self.codebook.dtype)
        counts = torch.bincount(indices, minlength=self.num_codes)
        self.usage += counts
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, z)
            self.ema_count.mul_(self.decay).add_(counts.to(self.ema_count.dtype), alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.epsilon) / (total + self.num_codes * self.epsilon) * total
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_steps:
            self.restart_dead_codes(z)

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor) -> int:
        """Move every code unused for ``dead_code_steps`` steps to a random row of z (drawn with
        the global generator, which the trainer's checkpoints restore); returns how many moved."""
        dead = (self.steps_unused >= self.dead_code_steps).nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        rows = torch.randint(len(z), (len(dead),), device=z.device)
        fresh = z[rows]
        self.codebook.data[dead] = fresh
        if self.ema:
            # the restarted code's average starts over, as if it had been seen once at its new place
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = fresh
        self.steps_unused[dead] = 0
        self.restarts += len(dead)
        return len(dead)

    def reset_usage(self) -> None:
        self.usage.zero_()
        self.restarts.zero_()

    def extra_repr(self) -> str:
        update = f"ema, decay={self.decay}" if self.ema else "gradient"
        return f"num_codes={self.num_codes}, code_dim={self.code_dim}, update={update}, dead_code_steps={self.dead_code_steps}"
