"""A VAE with categorical latents relaxed by the Gumbel-softmax (Jang, Gu & Poole 2017), also
known as the Concrete distribution (Maddison, Mnih & Teh 2017).

N independent categorical latents z_n of K classes each, a uniform prior p(z_n = c) = 1/K, an
encoder giving q(z_n = c | x) = π_nc, and a decoder p(x|z) taking the N one-hot vectors. A
categorical draw is argmax_c (log π_c + g_c) with g_c = −log(−log u_c), u_c ~ U(0, 1) (the
Gumbel-max trick); its relaxation

    y = softmax((log π + g) / τ)

is a differentiable point of the simplex that tends to the one-hot draw as τ → 0. Training
maximizes the relaxed ELBO

    E_g[log p(x | y)] − β · KL(q(z|x) || uniform),   KL = Σ_n Σ_c π_nc log π_nc + N log K (exact),

with τ annealed per epoch, τ = max(τ_min, τ_0 · exp(−r · epoch)). With ``straight_through`` the
decoder sees the one-hot argmax in the forward pass, and the gradient is the relaxed one:
y_ST = one_hot(argmax y) + y − stop_gradient(y).

``log_prob`` is the IWAE bound with k = ``eval_samples`` *discrete* draws z_i ~ q(z|x) (Gumbel-
max, no relaxation):

    L_k = log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x),

a valid lower bound on the discrete model's log p(x) = log Σ_z p(x|z) p(z), because the z_i are
exact draws of the proposal q and the weights use its exact probabilities; the relaxation only
shapes the training gradient. Like the VAE's, the draws are seeded and shared by every row.

References: Jang et al., "Categorical Reparameterization with Gumbel-Softmax" (ICLR 2017);
Maddison et al., "The Concrete Distribution" (ICLR 2017).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch.nn import functional as F

from genzoo.config import require
from genzoo.models.base import register_model
from genzoo.models.latent.bounds import categorical_kl_uniform, categorical_log_prob
from genzoo.models.latent.vae import LatentConfig, LatentVariableModel, apply_flat

__all__ = ["GumbelVAE", "GumbelVAEConfig", "gumbel_noise", "gumbel_softmax", "gumbel_temperature"]


@dataclass
class GumbelVAEConfig(LatentConfig):
    #: N categorical latents of K classes each (Jang et al.: 30 of 10)
    num_latents: int = 30
    num_categories: int = 10
    #: MLP hidden layers, encoder side (the decoder mirrors them), and their nonlinearity
    hidden_sizes: tuple[int, ...] = (512, 256)
    activation: Literal["tanh", "relu"] = "relu"
    #: τ = max(tau_min, tau_initial · exp(−anneal_rate · epoch))
    tau_initial: float = 1.0
    tau_min: float = 0.5
    anneal_rate: float = 0.0
    #: forward the one-hot argmax, backpropagate the relaxed gradient
    straight_through: bool = False
    #: relaxed draws per example in training
    k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_latents >= 1, f"gumbel-vae: num_latents must be at least 1, got {self.num_latents}")
        require(self.num_categories >= 2, f"gumbel-vae: num_categories must be at least 2, got {self.num_categories}")
        require(0 < self.tau_initial < math.inf, f"gumbel-vae: tau_initial must be positive and finite, got {self.tau_initial}")
        require(0 < self.tau_min <= self.tau_initial,
                f"gumbel-vae: tau_min must lie in (0, tau_initial], got {self.tau_min}")
        require(0 <= self.anneal_rate < math.inf,
                f"gumbel-vae: anneal_rate must be non-negative and finite, got {self.anneal_rate}")
        require(self.k >= 1, f"gumbel-vae: k must be at least 1, got {self.k}")


def gumbel_temperature(epoch: int, tau_initial: float, tau_min: float, anneal_rate: float) -> float:
    """τ at (1-based) ``epoch``: max(τ_min, τ_0 · exp(−r · epoch))."""
    return max(tau_min, tau_initial * math.exp(-anneal_rate * epoch))


def gumbel_noise(uniform: torch.Tensor) -> torch.Tensor:
    """g = −log(−log u), the Gumbel(0, 1) draw for each uniform u."""
    return -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))


def gumbel_softmax(log_probs: torch.Tensor, gumbel: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """The relaxed draw softmax((log π + g)/τ) over the last dimension; ``hard`` returns the
    straight-through draw (one-hot forward, relaxed gradient)."""
    soft = torch.softmax((log_probs + gumbel) / tau, -1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return one_hot + soft - soft.detach()


@register_model("gumbel-vae", GumbelVAEConfig)
class GumbelVAE(LatentVariableModel):
    """Categorical latents, Gumbel-softmax training, discrete-draw IWAE evaluation."""

    def __init__(self, data_shape: tuple[int, ...], config: GumbelVAEConfig | None = None):
        config = config or GumbelVAEConfig()
        super().__init__(data_shape, config)
        self.latent_shape = (config.num_latents, config.num_categories)
        self.encoder = self.make_encoder(math.prod(self.latent_shape))  # the logits of q(z|x)
        self.decoder = self.make_decoder(math.prod(self.latent_shape))
        self.tau = config.tau_initial

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        super().on_epoch_start(epoch, epochs)
        cfg = self.config
        self.tau = gumbel_temperature(epoch, cfg.tau_initial, cfg.tau_min, cfg.anneal_rate)

    def posterior(self, x: torch.Tensor) -> torch.Tensor:
        """log π of q(z|x), (B, N, K)."""
        logits = self.encoder(self.encoder_input(x)).reshape(len(x), *self.latent_shape)
        return torch.log_softmax(logits, -1)

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        return apply_flat(self.decoder, z.flatten(-2))

    @property
    def log_prior(self) -> float:
        """log p(z) of any z under the uniform prior: −N log K."""
        return -self.config.num_latents * math.log(self.config.num_categories)

    # -- bounds ----------------------------------------------------------------------------------
    def draw_noise(self, k: int, generator: torch.Generator | None, rows: int = 1) -> list[torch.Tensor]:
        return [gumbel_noise(self.noise((k, rows, *self.latent_shape), generator, "uniform"))]

    def log_weights(self, x: torch.Tensor, noise: Sequence[torch.Tensor], beta: float = 1.0) -> torch.Tensor:
        """log p(x|z) + β [log p(z) − log q(z|x)] for discrete z = one_hot(argmax(log π + g)): (k, B)."""
        log_pi = self.posterior(x)
        z = F.one_hot((log_pi + noise[0]).argmax(-1), self.config.num_categories).to(log_pi.dtype)  # (k, B, N, K)
        log_q = categorical_log_prob(z, log_pi)
        return self.observation_log_prob(x, self.decoder_output(z)) + beta * (self.log_prior - log_q)

    def training_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the relaxed reconstruction term E_g[log p(x|y)], averaged over k draws; the exact
        KL(q || uniform)), each (B,), with fresh Gumbel draws."""
        cfg = self.config
        log_pi = self.posterior(x)
        (g,) = self.draw_noise(cfg.k, None, rows=len(x))
        y = gumbel_softmax(log_pi, g, self.tau, hard=cfg.straight_through)
        reconstruction = self.observation_log_prob(x, self.decoder_output(y)).mean(0)
        return reconstruction, categorical_kl_uniform(log_pi)

    def training_bound(self, x: torch.Tensor) -> torch.Tensor:
        reconstruction, kl = self.training_terms(x)
        return reconstruction - self.beta * kl

    # -- generation and the latent API -----------------------------------------------------------
    def prior_latents(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """One-hot draws from the uniform prior, (n, N, K)."""
        K = self.config.num_categories
        u = self.noise((n, self.config.num_latents), generator, "uniform")
        return F.one_hot((u * K).long().clamp(max=K - 1), K).to(u.dtype)

    def latent_point(self, z: torch.Tensor) -> torch.Tensor:
        """Category indices (B, N) as one-hot vectors; points of the simplex (B, N, K) or
        (B, N·K) as they are."""
        if not z.is_floating_point():
            if z.numel() and (z.min() < 0 or z.max() >= self.config.num_categories):
                raise ValueError(f"category indices must lie in 0..{self.config.num_categories - 1}")
            z = F.one_hot(z.long(), self.config.num_categories)
        return z.to(self.device, self._dtype()).reshape(len(z), *self.latent_shape)

    def latent_row_shapes(self) -> dict[tuple[int, ...], str]:
        N, K = self.latent_shape
        return {(N,): "index", (N, K): "real", (N * K,): "real"}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable category of each latent under q(z|x): (B, N) int64."""
        return self.posterior(self.flatten_input(x)).argmax(-1)
