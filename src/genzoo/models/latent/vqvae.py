"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017): compress to a grid of discrete codes, then
learn a prior over the codes.

**Stage one, the autoencoder.** An encoder maps x to an h × w grid of D-dimensional vectors
z_e(x); each is replaced by its nearest code of a K-vector codebook (``genzoo.nn.quantizer``),
z_q = e_{k(z_e)}, and a decoder gives Bernoulli logits of p(x | z_q). The gradient of the
reconstruction term reaches the encoder by the straight-through estimator; the objective is

    L₁ = −log p(x | z_q(x)) + β ‖z_e(x) − sg(z_q(x))‖²  (+ ‖sg(z_e(x)) − z_q(x)‖² without EMA),

the codebook following its assigned vectors by exponential moving averages (or by the codebook
loss), dead codes restarted at current encoder outputs.

**Stage two, the prior.** Each code index is written with b = log₂ K bits, so the code grid is a
binary vector c(x) of h·w·b dimensions, and one of genzoo's exact autoregressive models (MADE,
NADE or FVSBN) learns P(c) on the codes of the frozen encoder: L₂ = −log P(c(x)). (The prior
also trains on the detached codes during stage one: its gradient is disjoint from the
autoencoder's, so stage one is the paper's, the validation bound is meaningful from the first
epoch and stage two starts from a warm prior.)

**Likelihood.** With the deterministic encoder q(c | x) = 1[c = c(x)] (entropy 0) the ELBO is

    log p(x) ≥ log p(x | z_q(x)) + log P(c(x)),

exact to compute, with no sampling; ``log_prob`` returns it. ``sample`` draws codes from the prior,
decodes them and draws x ~ Bernoulli.

Reference: van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning"
(NeurIPS 2017).
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from genzoo.config import require
from genzoo.models.base import GenerativeModel, build_model, register_model
from genzoo.nn.quantizer import VectorQuantizer, perplexity

__all__ = ["VQVAE", "VQVAEConfig", "codes_to_bits", "bits_to_codes"]

Stage = Literal["autoencoder", "prior"]


@dataclass
class VQVAEConfig:
    #: "conv": strided convolutions to an (H/2^s) × (W/2^s) grid (flat data is a 1 × D image);
    #: "mlp": a fully connected encoder to a 1 × ``latent_positions`` grid (any data shape)
    architecture: Literal["conv", "mlp"] = "conv"
    #: conv: channels of the hidden layers, stride-2 steps s, residual blocks at the grid's size
    hidden_channels: int = 64
    downsample: int = 2
    residual_blocks: int = 1
    #: mlp: hidden units and number of code vectors per example
    hidden_size: int = 256
    latent_positions: int = 16
    #: K (a power of two, each code is written with log2 K bits for the prior) and D
    num_codes: int = 64
    code_dim: int = 16
    #: β of the commitment loss
    commitment: float = 0.25
    #: "ema": moving averages of assigned vectors (decay γ, Laplace smoothing ε); "loss": the codebook loss
    codebook_update: Literal["ema", "loss"] = "ema"
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    #: restart a code unused for this many training steps; 0 never restarts
    dead_code_steps: int = 100
    #: the prior over the code bits: a genzoo autoregressive model and its size
    prior_model: Literal["made", "nade", "fvsbn"] = "made"
    #: a MADE prior's hidden layers (prior_model = "made" only)
    prior_hidden_sizes: tuple[int, ...] = (256,)
    #: a NADE prior's hidden units (prior_model = "nade" only)
    prior_hidden_size: int = 64
    #: what training optimizes: "both" (stage one for ``autoencoder_epochs``, then stage two),
    #: "autoencoder" (stage one only) or "prior" (stage two only; start from a stage-one run with
    #: [train] init_from)
    stages: Literal["both", "autoencoder", "prior"] = "both"
    autoencoder_epochs: int = 10

    def __post_init__(self) -> None:
        self.prior_hidden_sizes = tuple(self.prior_hidden_sizes)
        require(self.hidden_channels >= 1, f"vqvae: hidden_channels must be positive, got {self.hidden_channels}")
        require(self.downsample >= 0, f"vqvae: downsample must be non-negative, got {self.downsample}")
        require(self.residual_blocks >= 0, f"vqvae: residual_blocks must be non-negative, got {self.residual_blocks}")
        require(self.hidden_size >= 1, f"vqvae: hidden_size must be positive, got {self.hidden_size}")
        require(self.latent_positions >= 1, f"vqvae: latent_positions must be positive, got {self.latent_positions}")
        require(self.num_codes >= 2 and self.num_codes & (self.num_codes - 1) == 0,
                f"vqvae: num_codes must be a power of two (at least 2), got {self.num_codes}")
        require(self.code_dim >= 1, f"vqvae: code_dim must be positive, got {self.code_dim}")
        require(0 <= self.commitment < math.inf, f"vqvae: commitment must be non-negative and finite, got {self.commitment}")
        require(0 <= self.ema_decay < 1, f"vqvae: ema_decay must lie in [0, 1), got {self.ema_decay}")
        require(0 < self.ema_epsilon < math.inf, f"vqvae: ema_epsilon must be positive and finite, got {self.ema_epsilon}")
        require(self.dead_code_steps >= 0, f"vqvae: dead_code_steps must be non-negative, got {self.dead_code_steps}")
        require(len(self.prior_hidden_sizes) >= 1 and all(h >= 1 for h in self.prior_hidden_sizes),
                f"vqvae: prior_hidden_sizes must be positive layer sizes, got {self.prior_hidden_sizes}")
        require(self.prior_hidden_size >= 1, f"vqvae: prior_hidden_size must be positive, got {self.prior_hidden_size}")
        require(self.autoencoder_epochs >= 1, f"vqvae: autoencoder_epochs must be at least 1, got {self.autoencoder_epochs}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, used_by in (("prior_hidden_sizes", "made"), ("prior_hidden_size", "nade")):
            value = getattr(self, key)
            require(self.prior_model == used_by or (tuple(value) if isinstance(value, list) else value) == defaults[key],
                    f"vqvae: {key} sizes a {used_by} prior, but prior_model = {self.prior_model!r}")


def codes_to_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(B, *grid) code indices → (B, positions · bits) binary floats, most significant bit first."""
    shifts = torch.arange(bits - 1, -1, -1, device=codes.device)
    return ((codes.reshape(len(codes), -1, 1) >> shifts) & 1).reshape(len(codes), -1)


def bits_to_codes(bits: torch.Tensor, num_bits: int, grid: tuple[int, ...]) -> torch.Tensor:
    """The inverse of ``codes_to_bits``: (B, positions · bits) → (B, *grid) int64."""
    weights = 2 ** torch.arange(num_bits - 1, -1, -1, device=bits.device)
    return (bits.reshape(len(bits), -1, num_bits).long() * weights).sum(-1).reshape(len(bits), *grid)


class ResidualBlock(nn.Module):
    """x + Conv1x1(ReLU(Conv3x3(ReLU(x)))), the paper's residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def image_shape(data_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of image data; any other shape is read as one row of pixels, (1, 1, D)."""
    return data_shape if len(data_shape) == 3 else (1, 1, math.prod(data_shape))  # type: ignore[return-value]


class ConvCoder(nn.Module):
    """The convolutional encoder and decoder: s stride-2 convolutions down to the code grid (the
    image zero-padded to a multiple of 2^s, the decoder's output cropped back), residual blocks."""

    def __init__(self, data_shape: tuple[int, ...], cfg: VQVAEConfig):
        super().__init__()
        self.channels, self.height, self.width = image_shape(data_shape)
        step = 2 ** cfg.downsample
        self.padded = (-(-self.height // step) * step, -(-self.width // step) * step)
        self.grid = (self.padded[0] // step, self.padded[1] // step)
        c, hc = self.channels, cfg.hidden_channels
        down = [layer for i in range(cfg.downsample)
                for layer in (nn.Conv2d(c if i == 0 else hc, hc, 4, stride=2, padding=1), nn.ReLU())]
        self.encoder = nn.Sequential(
            *down, nn.Conv2d(c if cfg.downsample == 0 else hc, hc, 3, padding=1),
            *[ResidualBlock(hc) for _ in range(cfg.residual_blocks)], nn.ReLU(), nn.Conv2d(hc, cfg.code_dim, 1))
        up = [layer for i in range(cfg.downsample)
              for layer in (nn.ReLU(), nn.ConvTranspose2d(hc, c if i == cfg.downsample - 1 else hc, 4, stride=2, padding=1))]
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.code_dim, hc, 3, padding=1), *[ResidualBlock(hc) for _ in range(cfg.residual_blocks)],
            *(up or [nn.ReLU(), nn.Conv2d(hc, c, 3, padding=1)]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Flat x (B, D) → z_e as (B, h, w, D_code)."""
        x = x.reshape(len(x), self.channels, self.height, self.width)
        x = F.pad(x, (0, self.padded[1] - self.width, 0, self.padded[0] - self.height))
        return self.encoder(x).permute(0, 2, 3, 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D_code) → Bernoulli logits, flat (B, D)."""
        logits = self.decoder(z.permute(0, 3, 1, 2))[:, :, : self.height, : self.width]
        return logits.flatten(1)  # not reshape(B, -1), which an empty batch leaves undefined


class MLPCoder(nn.Module):
    """A fully connected encoder to ``latent_positions`` code vectors (grid 1 × L) and back."""

    def __init__(self, data_shape: tuple[int, ...], cfg: VQVAEConfig):
        super().__init__()
        D, H, L, Dc = math.prod(data_shape), cfg.hidden_size, cfg.latent_positions, cfg.code_dim
        self.grid = (1, L)
        self.code_dim = Dc
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, L * Dc))
        self.decoder = nn.Sequential(nn.Linear(L * Dc, H), nn.ReLU(), nn.Linear(H, D))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).reshape(len(x), *self.grid, self.code_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.flatten(1))


@register_model("vqvae", VQVAEConfig)
class VQVAE(GenerativeModel):
    likelihood = "lower_bound"
    support = "binary"

    def __init__(self, data_shape: tuple[int, ...], config: VQVAEConfig | None = None):
        super().__init__(data_shape)
        self.config = cfg = config or VQVAEConfig()
        self.coder = ConvCoder(self.data_shape, cfg) if cfg.architecture == "conv" else MLPCoder(self.data_shape, cfg)
        self.grid: tuple[int, int] = self.coder.grid
        self.code_bits = int(math.log2(cfg.num_codes))
        self.quantizer = VectorQuantizer(cfg.num_codes, cfg.code_dim, ema=cfg.codebook_update == "ema",
                                         decay=cfg.ema_decay, epsilon=cfg.ema_epsilon,
                                         dead_code_steps=cfg.dead_code_steps)
        prior_dims = math.prod(self.grid) * self.code_bits
        prior_hp = {"made": {"hidden_sizes": list(cfg.prior_hidden_sizes)},
                    "nade": {"hidden_size": cfg.prior_hidden_size}, "fvsbn": {}}[cfg.prior_model]
        self.prior = build_model(cfg.prior_model, (prior_dims,), **prior_hp)
        self.stage: Stage = "prior" if cfg.stages == "prior" else "autoencoder"

    # -- the training schedule --------------------------------------------------------------
    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        cfg = self.config
        if cfg.stages == "both":
            self.stage = "autoencoder" if epoch <= cfg.autoencoder_epochs else "prior"
        # stage two trains the prior alone: frozen, the autoencoder is also out of reach of what
        # the trainer adds to the loss (an L1 penalty would otherwise keep shrinking its weights)
        for part in (self.coder, self.quantizer):
            part.requires_grad_(self.stage != "prior")
        self.quantizer.reset_usage()

    @property
    def training_stage(self) -> str:
        return self.stage

    @property
    def final_training_stage(self) -> bool:
        return self.stage == "prior" or self.config.stages == "autoencoder"

    @property
    def first_epoch_of_final_stage(self) -> int:
        return self.config.autoencoder_epochs + 1 if self.config.stages == "both" else 1

    def epoch_metrics(self) -> dict[str, float]:
        usage = self.quantizer.usage
        if usage.sum() == 0:
            return {}
        return {"codebook_perplexity": perplexity(usage), "dead_codes_restarted": float(self.quantizer.restarts)}

    # -- the pieces -------------------------------------------------------------------------
    def _encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """z_e(x) of flat x as (B, h, w, D_code)."""
        return self.coder.encode(x)

    def _quantize(self, z_e: torch.Tensor):
        return self.quantizer(z_e.reshape(-1, self.config.code_dim))

    def _reconstruction_log_prob(self, codes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z_q) for code vectors (B, h, w, D_code) and flat x, per row."""
        logits = self.coder.decode(codes)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)

    def _prior_log_prob(self, indices: torch.Tensor, training: bool = False) -> torch.Tensor:
        """log P(codes); ``training``: as the prior's training step estimates it (a K-mask MADE
        prior: one mask per step)."""
        bits = codes_to_bits(indices, self.code_bits).to(self._dtype())
        return self.prior.training_log_prob(bits) if training else self.prior.log_prob(bits)

    # -- likelihood and training objective --------------------------------------------------
    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z_q(x)) + log P(c(x)): z_q is the code itself (no straight-through), so the
        bound's gradient is its true one (zero with respect to the encoder)."""
        indices = self.quantizer.nearest(self._encode_continuous(x).reshape(-1, self.config.code_dim))
        indices = indices.reshape(len(x), *self.grid)
        return self._reconstruction_log_prob(self.quantizer.lookup(indices), x) + self._prior_log_prob(indices)

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """The current stage's objective, mean over the batch (nats per example). In training mode
        it also moves the codebook (EMA, dead-code restarts; stage one) and counts code usage."""
        x = self.flatten_input(x)
        if self.stage == "prior":
            with torch.no_grad():  # the autoencoder is frozen: its codes are the prior's data
                indices = self.encode(x)
            if self.training:
                self.quantizer.usage += torch.bincount(indices.reshape(-1), minlength=self.config.num_codes)
            return -self._prior_log_prob(indices, training=True).mean()
        z_e = self._encode_continuous(x)
        q = self._quantize(z_e)
        indices = q.indices.reshape(len(x), *self.grid)
        objective = -self._reconstruction_log_prob(q.z_q.reshape(z_e.shape), x)
        objective = objective + self.config.commitment * q.commitment.reshape(len(x), -1).sum(1)
        if not self.quantizer.ema:
            objective = objective + q.codebook_loss.reshape(len(x), -1).sum(1)
        objective = objective - self._prior_log_prob(indices, training=True)  # the prior on detached codes
        if self.training:
            self.quantizer.update(z_e.reshape(-1, self.config.code_dim), q.indices)
        return objective.mean()

    @property
    def likelihood_detail(self) -> str:
        return "ELBO log p(x|z_q(x)) + log P(codes(x)) of the deterministic encoder (exact, no sampling)"

    # -- sampling and the latent API ------------------------------------------------------------
    @torch.no_grad()
    def _sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes from the prior, decoded, then x ~ Bernoulli(σ(logits)) with the same generator."""
        codes = bits_to_codes(self.prior.sample(n, generator=generator).reshape(n, -1), self.code_bits, self.grid)
        probs = self.decode(codes.to(self.device)).reshape(n, -1)
        device = generator.device if generator is not None else self.device
        u = torch.rand(probs.shape, generator=generator, device=device, dtype=probs.dtype).to(self.device)
        return self.unflatten((u < probs).to(probs.dtype))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code grid of each input, (B, h, w) int64."""
        x = self.flatten_input(x)
        indices = self.quantizer.nearest(self._encode_continuous(x).reshape(-1, self.config.code_dim))
        return indices.reshape(len(x), *self.grid)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Bernoulli probabilities (B, *data_shape) of code grids (B, h, w)."""
        codes = torch.as_tensor(codes, device=self.device)
        if codes.shape[1:] != self.grid or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers of shape (B, {self.grid[0]}, {self.grid[1]}), got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.num_codes):
            raise ValueError(f"codes must lie in 0..{self.config.num_codes - 1}")
        return self.unflatten(torch.sigmoid(self.coder.decode(self.quantizer.lookup(codes.long()))))

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
        """Decoded means along the straight path between the encoder outputs of x_a and x_b,
        each point quantized: (steps, *data_shape)."""
        if steps < 2:
            raise ValueError(f"steps must be at least 2, got {steps}")
        ends = self._encode_continuous(self.flatten_input(torch.stack([x_a.reshape(-1), x_b.reshape(-1)])))
        t = torch.linspace(0, 1, steps, device=self.device, dtype=ends.dtype).reshape(-1, 1, 1, 1)
        path = (1 - t) * ends[0] + t * ends[1]
        indices = self.quantizer.nearest(path.reshape(-1, self.config.code_dim)).reshape(steps, *self.grid)
        return self.decode(indices)
