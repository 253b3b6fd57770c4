"""The variational autoencoder (Kingma & Welling 2014), with one or two stochastic layers.

A latent z with prior p(z) = N(0, I) and a decoder p_θ(x|z); an encoder q_φ(z|x) = N(μ_φ(x),
diag σ_φ(x)²) sampled by the reparameterization z = μ + σ ⊙ ε, ε ~ N(0, I), so that gradients
flow through the draw. Training maximizes the ELBO

    log p(x) ≥ E_q[log p(x|z)] − β · KL(q(z|x) || p(z)),   β = 1 (β < 1 only during KL warm-up),

estimated with k draws as the mean log-weight; ``objective = "iwae"`` trains with the k-sample
importance-weighted bound instead (``iwae.py``). With two stochastic layers (Burda et al. 2016,
``latent_sizes = [100, 50]``)

    q(z1, z2 | x) = q(z1|x) q(z2|z1),     p(x, z1, z2) = p(z2) p(z1|z2) p(x|z1),

every conditional a diagonal Gaussian from an MLP. The decoder p(x|z1) is Bernoulli (logits) for
binary data and, for 8-bit data (``data_kind = "grayscale"``), a per-pixel discretized logistic
over the 256 values (PixelCNN++, edge bins to ±∞). ``architecture = "conv"`` puts stride-2
convolutions in front of the encoder MLP and transposed convolutions after the decoder MLP.

``log_prob`` is the IWAE bound L_k with k = ``eval_samples`` (5,000 in the benchmark), the
k draws seeded and shared by every row (so a row's bound does not depend on its batch or on the
mode), computed ``eval_chunk`` draws at a time for all rows at once. KL warm-up (Sønderby et al.
2016) raises β linearly from 0 at epoch 1 to 1 at epoch ``kl_warmup_epochs + 1``; β only weighs
the training loss, never ``log_prob``.

References: Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014); Burda, Grosse &
Salakhutdinov, "Importance Weighted Autoencoders" (ICLR 2016).

Example::

    model = build_model("vae", (1, 28, 28), latent_sizes=[50], eval_samples=5000)
    model.loss(x).backward()          # negative ELBO (β-weighted during warm-up)
    model.log_prob(x)                 # IWAE-5000 lower bound on log p(x), per row
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from genzoo.config import require
from genzoo.models.base import GenerativeModel, register_model
from genzoo.models.latent.bounds import (
    bernoulli_log_prob,
    chunked_iwae_bound,
    discretized_logistic_log_prob,
    discretized_logistic_mean,
    elbo_bound,
    gaussian_log_prob,
    iwae_bound,
    standard_normal_log_prob,
)

__all__ = ["LatentConfig", "VAEConfig", "LatentVariableModel", "VAE", "kl_warmup_beta", "mlp",
           "ConvEncoder", "ConvDecoder"]

LEVELS = {"binary": 2, "grayscale": 256}


#: values of one (chunk, rows, D) tensor in an evaluation pass of the IWAE bound (16 MB in float32)
IWAE_VALUES_PER_PASS = 1 << 22

@dataclass
class LatentConfig:
    """Settings shared by the latent-variable models (the model configs add their latents)."""

    #: "binary" (Bernoulli decoder) or "grayscale" (discretized logistic over 0..255); set by the trainer
    data_kind: Literal["binary", "grayscale"] = "binary"
    #: "mlp": fully connected encoder and decoder; "conv": stride-2 convolutions, then the MLP
    architecture: Literal["mlp", "conv"] = "mlp"
    #: MLP hidden layers between the data and the (first) latent, encoder side; the decoder mirrors them
    hidden_sizes: tuple[int, ...] = (200, 200)
    #: conv only: channels of the stride-2 convolutions in front of the MLP
    channels: tuple[int, ...] = (32, 64)
    #: the hidden layers' nonlinearity
    activation: Literal["tanh", "relu"] = "tanh"
    #: k of the IWAE bound ``log_prob`` reports, the draws per chunk, and their seed
    eval_samples: int = 5000
    eval_chunk: int = 100
    eval_seed: int = 0
    #: k of the cheaper IWAE bound the trainer's per-epoch validation reports
    valid_samples: int = 50
    #: β rises linearly from 0 (epoch 1) to 1 (epoch kl_warmup_epochs + 1); 0: no warm-up
    kl_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        self.channels = tuple(self.channels)
        require(all(h >= 1 for h in self.hidden_sizes), f"latent: hidden_sizes must be positive, got {self.hidden_sizes}")
        require(self.architecture == "conv" or len(self.hidden_sizes) >= 1,
                "latent: hidden_sizes needs at least one layer with architecture = \"mlp\"")
        require(len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
                f"latent: channels must be positive (and at least one), got {self.channels}")
        require(self.eval_samples >= 1, f"latent: eval_samples must be at least 1, got {self.eval_samples}")
        require(self.eval_chunk >= 1, f"latent: eval_chunk must be at least 1, got {self.eval_chunk}")
        require(self.valid_samples >= 1, f"latent: valid_samples must be at least 1, got {self.valid_samples}")
        require(self.kl_warmup_epochs >= 0, f"latent: kl_warmup_epochs must be non-negative, got {self.kl_warmup_epochs}")


@dataclass
class VAEConfig(LatentConfig):
    #: sizes of the stochastic layers, bottom (next to x) first: [50] or [100, 50]
    latent_sizes: tuple[int, ...] = (50,)
    #: two stochastic layers: MLP hidden layers between z1 and z2 (q(z2|z1); p(z1|z2) mirrors them)
    top_hidden_sizes: tuple[int, ...] = (100, 100)
    #: the training objective: the k-sample ELBO or the k-sample IWAE bound
    objective: Literal["elbo", "iwae"] = "elbo"
    #: k, the draws per example in training
    k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.latent_sizes = tuple(self.latent_sizes)
        self.top_hidden_sizes = tuple(self.top_hidden_sizes)
        require(len(self.latent_sizes) in (1, 2), f"vae: latent_sizes needs one or two layers, got {self.latent_sizes}")
        require(all(s >= 1 for s in self.latent_sizes), f"vae: latent_sizes must be positive, got {self.latent_sizes}")
        require(all(h >= 1 for h in self.top_hidden_sizes), f"vae: top_hidden_sizes must be positive, got {self.top_hidden_sizes}")
        require(self.k >= 1, f"vae: k must be at least 1, got {self.k}")


def kl_warmup_beta(epoch: int, warmup_epochs: int) -> float:
    """β at (1-based) ``epoch``: (epoch − 1)/warmup_epochs, capped at 1; 1 without warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, max(0, epoch - 1) / warmup_epochs)


# -- networks ------------------------------------------------------------------------------------

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(sizes: Sequence[int], activation: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, the activation between them (and after the
    last one when ``final_activation``)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def image_shape_of(data_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) a convolution sees: the data's own for images, a 1 x D strip for flat data."""
    if len(data_shape) == 3:
        return data_shape  # type: ignore[return-value]
    if len(data_shape) == 2:
        return (1, *data_shape)  # type: ignore[return-value]
    return (1, 1, math.prod(data_shape))


def _halve(size: int) -> int:
    """Output size of a kernel-3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions, then an MLP to ``out_features``; input flat (N, C·H·W)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: Sequence[int], hidden_sizes: Sequence[int],
                 out_features: int, activation: str):
        super().__init__()
        self.image_shape = image_shape
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
            c, h, w = c_out, _halve(h), _halve(w)
        self.convs = nn.Sequential(*layers)
        self.head = mlp([c * h * w, *hidden_sizes, out_features], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x.reshape(len(x), *self.image_shape)).flatten(1))


class ConvDecoder(nn.Module):
    """The mirror of ``ConvEncoder``: an MLP, then stride-2 transposed convolutions back to the
    exact image size with ``out_per_pixel`` outputs per pixel; returns (N, out_per_pixel · C·H·W),
    output kind major (all first outputs, then all second ones)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: Sequence[int], hidden_sizes: Sequence[int],
                 in_features: int, out_per_pixel: int, activation: str):
        super().__init__()
        c, h, w = image_shape
        sizes = [(h, w)]
        for _ in channels:
            sizes.append((_halve(sizes[-1][0]), _halve(sizes[-1][1])))
        self.start_shape = (channels[-1], *sizes[-1])
        self.head = mlp([in_features, *reversed(hidden_sizes), math.prod(self.start_shape)], activation, final_activation=True)
        outs = [*reversed(channels[:-1]), c * out_per_pixel]
        layers: list[nn.Module] = []
        c_in = channels[-1]
        for i, c_out in enumerate(outs):
            (h_in, w_in), (h_out, w_out) = sizes[len(outs) - i], sizes[len(outs) - i - 1]
            padding = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))  # 0 or 1: hits the size exactly
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=padding))
            if i < len(outs) - 1:
                layers.append(ACTIVATIONS[activation]())
            c_in = c_out
        self.deconvs = nn.Sequential(*layers)
        self.out_per_pixel = out_per_pixel

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.deconvs(self.head(z).reshape(len(z), *self.start_shape))
        return y.reshape(len(z), -1)  # channels are kind-major: (N, P·C, H, W) -> (N, P·C·H·W)


def apply_flat(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Run ``net`` (which takes (N, F)) on z with any leading dimensions, e.g. (k, B, F)."""
    return net(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)


# -- the shared latent-variable machinery --------------------------------------------------------


class LatentVariableModel(GenerativeModel):
    """What the latent-variable models share: the observation model p(x|z), the seeded and
    chunked IWAE evaluation bound, the cheaper validation bound, KL warm-up, and the latent API
    (``encode``, ``decode``, ``interpolate``).

    Subclasses implement ``draw_noise(k, generator)`` (the k draws' noise, each tensor (k, 1, …)
    so that it broadcasts over the rows), ``log_weights(x, noise, beta) -> (k, B)``,
    ``training_bound(x) -> (B,)``, ``prior_latents(n, generator)``, ``decoder_output(z)``,
    ``encode(x)`` and ``latent_point(z)`` (z as a point the decoder takes).
    """

    likelihood = "lower_bound"

    def __init__(self, data_shape: tuple[int, ...], config: LatentConfig):
        super().__init__(data_shape)
        self.config = config
        self.support = config.data_kind
        self.levels = LEVELS[config.data_kind]
        #: outputs per dimension of the decoder: a logit, or a logistic's mean and log-scale
        self.out_per_dim = 1 if config.data_kind == "binary" else 2
        self.beta = 1.0

    # -- building blocks for subclasses ----------------------------------------------------------
    def make_encoder(self, out_features: int) -> nn.Module:
        cfg = self.config
        if cfg.architecture == "conv":
            return ConvEncoder(image_shape_of(self.data_shape), cfg.channels, cfg.hidden_sizes, out_features, cfg.activation)
        return mlp([self.num_dims, *cfg.hidden_sizes, out_features], cfg.activation)

    def make_decoder(self, in_features: int) -> nn.Module:
        cfg = self.config
        if cfg.architecture == "conv":
            return ConvDecoder(image_shape_of(self.data_shape), cfg.channels, cfg.hidden_sizes, in_features,
                               self.out_per_dim, cfg.activation)
        return mlp([in_features, *reversed(cfg.hidden_sizes), self.out_per_dim * self.num_dims], cfg.activation)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees: binary x as it is, 8-bit pixels rescaled to [−1, 1]."""
        return x if self.levels == 2 else 2 * x / (self.levels - 1) - 1

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None, kind: str = "normal") -> torch.Tensor:
        """Standard normal or uniform draws on the generator's device, drawn in float32 (so the
        seeded evaluation draws are the same whatever the model's dtype), then moved to the model."""
        device = generator.device if generator is not None else self.device
        draw = torch.randn if kind == "normal" else torch.rand
        return draw(shape, generator=generator, device=device, dtype=torch.float32).to(self.device, self._dtype())

    # -- the observation model p(x|z) ------------------------------------------------------------
    def observation_log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) from the decoder output ``out`` (..., P·D); x (B, D) broadcasts."""
        if self.levels == 2:
            return bernoulli_log_prob(x, out)
        mean, log_scale = out.split(self.num_dims, -1)
        return discretized_logistic_log_prob(x, mean, log_scale, self.levels).sum(-1)

    def observation_mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z]: Bernoulli probabilities, or the mean pixel value in 0..255."""
        if self.levels == 2:
            return torch.sigmoid(out)
        mean, log_scale = out.split(self.num_dims, -1)
        return discretized_logistic_mean(mean, log_scale, self.levels)

    def observation_sample(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = self.noise(tuple(out.shape[:-1]) + (self.num_dims,), generator, "uniform")
        if self.levels == 2:
            return (u < torch.sigmoid(out)).to(out.dtype)
        mean, log_scale = out.split(self.num_dims, -1)
        u = u.clamp(1e-6, 1 - 1e-6)
        c = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))  # a logistic draw in [−1, 1] units
        return torch.round((c + 1) * (self.levels - 1) / 2).clamp(0, self.levels - 1)

    # -- bounds ----------------------------------------------------------------------------------
    def draw_noise(self, k: int, generator: torch.Generator | None) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def log_weights(self, x: torch.Tensor, noise: Sequence[torch.Tensor], beta: float = 1.0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def training_bound(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def iwae_bound(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """L_k for flat, validated x: k seeded draws shared by every row, ``eval_chunk`` at a time."""
        if len(x) == 0:  # the draws' (k, B, …) reshapes fail on B = 0
            return x.new_empty(0)
        generator = torch.Generator().manual_seed(self.config.eval_seed)
        draws = self.draw_noise(k, generator)
        chunk = self.config.eval_chunk
        # a pass holds (chunk, rows, D) tensors: rows are taken a block at a time, so that scoring
        # a whole test set does not take gigabytes (10,000 MNIST rows took about 6 GB at once)
        rows = max(1, IWAE_VALUES_PER_PASS // (chunk * self.num_dims))
        return torch.cat([chunked_iwae_bound(lambda d, part=part: self.log_weights(part, d), draws, chunk)
                          for part in x.split(rows)])

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.iwae_bound(x, self.config.eval_samples)

    def validation_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.iwae_bound(self.flatten_input(x), self.config.valid_samples)

    @property
    def likelihood_detail(self) -> str:
        return f"IWAE bound, k = {self.config.eval_samples} importance samples"

    @property
    def validation_detail(self) -> str:
        return f"IWAE bound, k = {self.config.valid_samples} importance samples"

    def training_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The training bound per row (fresh draws; β-weighted KL during warm-up): what the
        default ``loss`` averages, where ``log_prob`` is the evaluation's seeded L_k."""
        return self.training_bound(self.flatten_input(x))

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.beta = kl_warmup_beta(epoch, self.config.kl_warmup_epochs)

    # -- generation and the latent API -----------------------------------------------------------
    def prior_latents(self, n: int, generator: torch.Generator | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def latent_point(self, z: torch.Tensor) -> torch.Tensor:
        """z as the decoder takes it (a float tensor (B, …)); codes are mapped by subclasses."""
        return z.to(self.device, self._dtype())

    def latent_row_shapes(self) -> dict[tuple[int, ...], str]:  # pragma: no cover - abstract
        """The shapes of one latent that ``decode`` takes, each with the values it holds: "real"
        (any finite numbers) or "index" (integers)."""
        raise NotImplementedError

    def _check_latents(self, z: torch.Tensor) -> None:
        forms = self.latent_row_shapes()
        kind = forms.get(tuple(z.shape[1:])) if z.dim() >= 1 else None
        accepted = " or ".join(f"(B, {', '.join(map(str, shape))})" + (" of integers" if values == "index" else "")
                               for shape, values in forms.items())
        if kind is None or (kind == "index") == z.is_floating_point() or z.dtype == torch.bool or z.is_complex():
            raise ValueError(f"latents must have shape {accepted}, got {tuple(z.shape)} of {z.dtype}")
        if z.is_floating_point() and not torch.isfinite(z).all():
            row = int((~torch.isfinite(z.reshape(len(z), -1))).any(1).nonzero()[0])
            raise ValueError(f"latent row {row} is not finite (NaN or infinity)")
        # checked again in the model's dtype: 1e300 is finite in float64 and inf in float32
        if z.is_floating_point() and not torch.isfinite(z.to(self._dtype())).all():
            row = int((~torch.isfinite(z.to(self._dtype()).reshape(len(z), -1))).any(1).nonzero()[0])
            raise ValueError(f"latent row {row} holds a value beyond the range of the model's "
                             f"{str(self._dtype()).removeprefix('torch.')}")

    @torch.no_grad()
    def _sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z), then x ~ p(x|z): n draws in the data's space."""
        out = self.decoder_output(self.prior_latents(n, generator))
        return self.unflatten(self.observation_sample(out, generator))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean E[x|z], shape (B, *data_shape)."""
        self._check_latents(z)
        if len(z) == 0:
            return torch.empty(0, *self.data_shape, device=self.device, dtype=self._dtype())
        return self.unflatten(self.observation_mean(self.decoder_output(self.latent_point(z))))

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
        """Decoded means along the straight line between the latents of two inputs: (steps, *data_shape)."""
        if steps < 2:
            raise ValueError(f"interpolation needs at least 2 steps, got {steps}")
        za = self.latent_point(self.encode(x_a.reshape(1, -1)))
        zb = self.latent_point(self.encode(x_b.reshape(1, -1)))
        t = torch.linspace(0, 1, steps, dtype=za.dtype, device=za.device).reshape(steps, *([1] * (za.dim() - 1)))
        return self.decode((1 - t) * za + t * zb)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register_model("vae", VAEConfig)
class VAE(LatentVariableModel):
    """Gaussian latents in one or two stochastic layers; see the module docstring."""

    def __init__(self, data_shape: tuple[int, ...], config: VAEConfig | None = None):
        config = config or VAEConfig()
        super().__init__(data_shape, config)
        sizes = config.latent_sizes
        self.encoder = self.make_encoder(2 * sizes[0])  # q(z1|x): mean and log-std
        self.decoder = self.make_decoder(sizes[0])  # p(x|z1)
        if len(sizes) == 2:
            hidden = config.top_hidden_sizes
            self.encoder_top = mlp([sizes[0], *hidden, 2 * sizes[1]], config.activation)  # q(z2|z1)
            self.decoder_top = mlp([sizes[1], *reversed(hidden), 2 * sizes[0]], config.activation)  # p(z1|z2)

    @property
    def two_layers(self) -> bool:
        return len(self.config.latent_sizes) == 2

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z1|x): mean and log-std, each (B, latent_sizes[0])."""
        mean, log_std = self.encoder(self.encoder_input(x)).chunk(2, -1)
        return mean, log_std

    def draw_noise(self, k: int, generator: torch.Generator | None, rows: int = 1) -> list[torch.Tensor]:
        return [self.noise((k, rows, size), generator) for size in self.config.latent_sizes]

    def log_weights(self, x: torch.Tensor, noise: Sequence[torch.Tensor], beta: float = 1.0) -> torch.Tensor:
        """log p(x|z1) + β [log p(z) − log q(z|x)] for z = μ + σ ε, one per noise draw: (k, B)."""
        mean, log_std = self.posterior(x)
        z1 = mean + torch.exp(log_std) * noise[0]  # the reparameterization trick, (k, B, L1)
        log_q = gaussian_log_prob(z1, mean, log_std)
        if self.two_layers:
            mean2, log_std2 = apply_flat(self.encoder_top, z1).chunk(2, -1)
            z2 = mean2 + torch.exp(log_std2) * noise[1]
            log_q = log_q + gaussian_log_prob(z2, mean2, log_std2)
            prior_mean, prior_log_std = apply_flat(self.decoder_top, z2).chunk(2, -1)
            log_prior = standard_normal_log_prob(z2) + gaussian_log_prob(z1, prior_mean, prior_log_std)
        else:
            log_prior = standard_normal_log_prob(z1)
        log_px = self.observation_log_prob(x, apply_flat(self.decoder, z1))
        return log_px + beta * (log_prior - log_q)

    def training_bound(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        log_w = self.log_weights(x, self.draw_noise(cfg.k, None, rows=len(x)), self.beta)
        return elbo_bound(log_w) if cfg.objective == "elbo" else iwae_bound(log_w)

    def prior_latents(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """z1 from the prior: N(0, I), or z2 ~ N(0, I) then z1 ~ p(z1|z2) with two layers."""
        sizes = self.config.latent_sizes
        z = self.noise((n, sizes[-1]), generator)
        if self.two_layers:
            mean, log_std = self.decoder_top(z).chunk(2, -1)
            z = mean + torch.exp(log_std) * self.noise((n, sizes[0]), generator)
        return z

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        return apply_flat(self.decoder, z)

    def latent_row_shapes(self) -> dict[tuple[int, ...], str]:
        return {(self.config.latent_sizes[0],): "real"}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean μ of q(z1|x), (B, latent_sizes[0])."""
        return self.posterior(self.flatten_input(x))[0]
