"""Glow: generative flow with invertible 1×1 convolutions (Kingma & Dhariwal 2018).

One step of flow (section 3, table 1) is

    actnorm:      z = s ⊙ (x + b),                         log |det| = H·W·Σ log|s|
    1×1 conv:     z = W x per pixel, W = P L (U + diag(s)),  log |det| = H·W·Σ log|s_i|
    affine coupling on channel halves:
                  z_a = x_a,  z_b = x_b ⊙ exp(log s(x_a)) + t(x_a),  log |det| = Σ log s(x_a),

with actnorm initialized from the first minibatch to zero mean and unit variance per channel,
W a random rotation stored in LU form (section 3.2) so its log-determinant is O(C), and the
coupling network's last layer zero-initialized so each step starts as the identity. The
multi-scale architecture (Dinh et al. 2017) has L levels, each

    squeeze → K steps of flow → split (factor out half the channels; not after the last level).

Sampling at a temperature T draws z ~ N(0, T² I) (section 5; T = 1 samples the model exactly).

Departures, stated: the factored-out halves get the N(0, I) base (Real NVP) rather than Glow's
learned conditional prior; the coupling uses s = scale · tanh(s_raw) like the Real NVP layer here
(Glow: sigmoid(s_raw + 2)). Data that L squeezes do not fit is treated as one (D, 1, 1) column
with K steps and no squeeze or split, where the 1×1 convolution is a D×D invertible linear map.

Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions" (NeurIPS 2018).
"""
from __future__ import annotations

from dataclasses import dataclass

from genzoo.config import require
from genzoo.models.base import register_model
from genzoo.models.flows.base import FlowConfig, FlowModel, StandardNormal
from genzoo.models.flows.realnvp import flow_image_shape
from genzoo.models.flows.transforms import (
    ActNorm,
    AffineCoupling,
    Compose,
    FactorOut,
    InvertibleConv1x1,
    Reshape,
    Squeeze,
    Transform,
    channel_mask,
    conv_net,
)

__all__ = ["Glow", "GlowConfig", "glow_step"]


@dataclass
class GlowConfig(FlowConfig):
    #: L, the number of levels (each begins with a squeeze)
    num_levels: int = 2
    #: K, steps of flow per level
    steps_per_level: int = 8
    #: channels and hidden layers of the network inside each affine coupling (hidden_layers + 1 convolutions)
    hidden_channels: int = 128
    hidden_layers: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_levels >= 1, f"glow: num_levels must be at least 1, got {self.num_levels}")
        require(self.steps_per_level >= 1, f"glow: steps_per_level must be at least 1, got {self.steps_per_level}")
        require(self.hidden_channels >= 1, f"glow: hidden_channels must be positive, got {self.hidden_channels}")
        require(self.hidden_layers >= 1, f"glow: hidden_layers must be at least 1, got {self.hidden_layers}")


def glow_step(shape: tuple[int, int, int], hidden_channels: int, hidden_layers: int) -> list[Transform]:
    """actnorm → invertible 1×1 convolution → affine coupling (the first half of the channels conditions)."""
    c, h, w = shape
    kernel = 3 if h * w > 1 else 1
    return [
        ActNorm(c),
        InvertibleConv1x1(c),
        AffineCoupling(channel_mask(shape), conv_net(c, hidden_channels, 2 * c, hidden_layers, kernel)),
    ]


def _level(shape: tuple[int, int, int], levels_left: int, cfg: GlowConfig) -> Transform:
    c, h, w = shape
    if h * w == 1:  # a column: K steps, no squeeze
        return Compose(*[t for _ in range(cfg.steps_per_level) for t in glow_step(shape, cfg.hidden_channels, cfg.hidden_layers)])
    layers: list[Transform] = [Squeeze()]
    shape = (4 * c, h // 2, w // 2)
    for _ in range(cfg.steps_per_level):
        layers += glow_step(shape, cfg.hidden_channels, cfg.hidden_layers)
    if levels_left > 1:
        keep = shape[0] // 2
        layers.append(FactorOut(shape, keep, _level((keep, *shape[1:]), levels_left - 1, cfg)))
    return Compose(*layers)


@register_model("glow", GlowConfig)
class Glow(FlowModel):
    def __init__(self, data_shape: tuple[int, ...], config: GlowConfig | None = None):
        config = config or GlowConfig()
        super().__init__(data_shape, config)
        shape = flow_image_shape(self.data_shape, config.num_levels, f"glow: num_levels = {config.num_levels}")
        self.set_flow([Reshape((self.num_dims,), shape), _level(shape, config.num_levels, config)], StandardNormal())
