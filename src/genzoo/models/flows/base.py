"""What every flow model shares: the base distribution, the data kind, dequantization and sampling.

A flow model is an invertible ``transform`` f from the data side to a base z = f(y) with

    log p(y) = log p_Z(f(y)) + log |det ∂f/∂y|.

``data_kind`` says what the data is:

* ``"real"``: y = x ∈ R^D, ``log_prob`` is the exact density (``likelihood = "exact"``);
* ``"grayscale"`` (integers 0…255) or ``"binary"`` ({0, 1}): x is discrete, y = (x + u) / L is
  dequantized (``dequantization.py``), f starts with the logit pre-processing (its Jacobian
  counted), and ``log_prob`` returns the dequantization bound on the discrete log P(x)
  (``likelihood = "lower_bound"``). In training one draw u per example; in evaluation the mean
  over ``eval_draws`` draws, the same seeded draws for every row, so evaluation is deterministic
  and a row's value does not depend on its batch. ``sample`` returns data in the data's own
  space: x = ⌊L · f⁻¹(z)⌋ clamped to 0…L−1. Where f⁻¹ maps into [0, 1)^D that is a draw from the
  discrete model the bound is about, P(x) = ∫ p(y) over x's cell; the logit pre-processing
  guarantees it. Without it (``preprocess = "none"``, NICE's default) p may put mass outside the
  cube, which the clamp adds to the edge levels 0 and L−1: an undertrained NICE's samples saturate.

The trainer fills ``data_kind`` in from the data set unless the config sets it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from genzoo.config import require
from genzoo.models.base import GenerativeModel
from genzoo.models.flows.dequantization import UniformDequantization, VariationalDequantization, dequantization_bound
from genzoo.models.flows.transforms import Compose, Logit, Transform, event_sum

__all__ = ["FlowConfig", "FlowModel", "StandardNormal", "StandardLogistic", "LEVELS"]

#: number of values a dimension takes, per data kind (None: continuous)
LEVELS = {"binary": 2, "grayscale": 256, "real": None}


@dataclass
class FlowConfig:
    """Settings shared by every flow (the model configs add their architecture)."""

    #: "grayscale" (integers 0..255), "binary" ({0, 1}) or "real"; the trainer sets it from the data
    data_kind: Literal["grayscale", "binary", "real"] = "grayscale"
    #: discrete data only: "uniform" or "variational" (Flow++)
    dequantization: Literal["uniform", "variational"] = "uniform"
    #: variational dequantization: coupling layers and MLP width of q(u | x)
    dequant_layers: int = 4
    dequant_hidden_size: int = 256
    #: discrete data only: dequantization draws per example in evaluation, and their seed
    eval_draws: int = 1
    eval_seed: int = 0
    #: discrete data only: "logit" maps y ∈ (0, 1) to R first (Jacobian counted); "none" keeps y
    preprocess: Literal["logit", "none"] = "logit"
    logit_alpha: float = 1e-6
    #: the base is sampled at this temperature (z ~ N(0, T² I) for a Gaussian); 1 samples p exactly
    temperature: float = 1.0

    def __post_init__(self) -> None:
        require(self.dequant_layers >= 1, f"flow: dequant_layers must be at least 1, got {self.dequant_layers}")
        require(self.dequant_hidden_size >= 1, f"flow: dequant_hidden_size must be positive, got {self.dequant_hidden_size}")
        require(self.eval_draws >= 1, f"flow: eval_draws must be at least 1, got {self.eval_draws}")
        require(0 <= self.logit_alpha < 0.5, f"flow: logit_alpha must lie in [0, 0.5), got {self.logit_alpha}")
        require(0 < self.temperature < math.inf, f"flow: temperature must be positive and finite, got {self.temperature}")


class StandardNormal(nn.Module):
    """p_Z = N(0, I): log p(z) = −½ Σ z² − (D/2) log 2π."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * event_sum(z**2) - z[0].numel() * 0.5 * math.log(2 * math.pi)

    def sample(self, shape, generator, dtype, device, temperature: float = 1.0) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return temperature * torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


class StandardLogistic(nn.Module):
    """NICE's prior (section 3.4): log p(z) = −Σ [softplus(z) + softplus(−z)]."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -event_sum(F.softplus(z) + F.softplus(-z))

    def sample(self, shape, generator, dtype, device, temperature: float = 1.0) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        u = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
        u = u.clamp(torch.finfo(dtype).tiny, 1 - torch.finfo(dtype).eps)
        return temperature * (torch.log(u) - torch.log1p(-u))


class FlowModel(GenerativeModel):
    """A flow over flat data: ``transform`` maps y (B, D) to z, ``base`` scores z.

    Subclasses build their body of transforms (from the flat (D,) input) and call ``set_flow``.
    """

    likelihood = "exact"
    likelihood_on_discrete_data = "lower_bound"
    support = "real"

    def __init__(self, data_shape: tuple[int, ...], config: FlowConfig):
        super().__init__(data_shape)
        self.config = config
        self.support = config.data_kind
        self.levels = LEVELS[config.data_kind]
        self.likelihood = "exact" if self.levels is None else "lower_bound"
        if self.levels is None:
            self.dequantizer = None
        elif config.dequantization == "uniform":
            self.dequantizer = UniformDequantization()
        else:
            self.dequantizer = VariationalDequantization(self.num_dims, self.levels, config.dequant_layers,
                                                         config.dequant_hidden_size)

    def set_flow(self, body: list[Transform], base: nn.Module) -> None:
        pre = [Logit(self.config.logit_alpha)] if self.levels is not None and self.config.preprocess == "logit" else []
        self.transform = Compose(*pre, *body)
        self.base = base
        self.latent_shape = self.transform.out_shape((self.num_dims,))

    @property
    def likelihood_detail(self) -> str:
        if self.levels is None:
            return "exact density"
        draws = self.config.eval_draws
        return (f"{self.dequantizer.name} dequantization bound on the {self.levels}-level data, "
                f"{draws} draw{'s' if draws > 1 else ''} per example")

    # -- density ---------------------------------------------------------------------------------
    def log_density(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) of the continuous flow, for flat y (B, D)."""
        z, logdet = self.transform(y)
        return self.base.log_prob(z) + logdet

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.levels is None:
            return self.log_density(x)
        if self.training:
            noise = self.dequantizer.draw_noise(tuple(x.shape), None, x)
            return dequantization_bound(self.log_density, x, self.dequantizer, noise, self.levels)
        generator = torch.Generator().manual_seed(self.config.eval_seed)
        draws = self.dequantizer.draw_noise((self.config.eval_draws, self.num_dims), generator, x)
        total = x.new_zeros(len(x))
        for noise in draws:
            total = total + dequantization_bound(self.log_density, x, self.dequantizer, noise.expand_as(x), self.levels)
        return total / len(draws)

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def _sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> torch.Tensor:
        """n draws in the data's space (integers 0..L−1 as floats for discrete data), one inverse
        pass; ``temperature`` (default: the config's) scales the base."""
        if temperature is None:
            temperature = self.config.temperature
        elif (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
              or not 0 < temperature < math.inf):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        z = self.base.sample((n, *self.latent_shape), generator, self._dtype(), self.device, temperature)
        y = self.transform.inverse(z).reshape(n, self.num_dims)
        if self.levels is not None:
            y = torch.floor(y * self.levels).clamp(0, self.levels - 1)
        return self.unflatten(y)
