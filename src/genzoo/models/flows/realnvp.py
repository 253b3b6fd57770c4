"""Real NVP: real-valued non-volume preserving flows (Dinh, Sohl-Dickstein & Bengio 2017).

An affine coupling layer with a binary mask b keeps x_A = b ⊙ x and scales and shifts the rest
(section 3.3, eq. 9):

    z = b ⊙ x + (1 − b) ⊙ (x ⊙ exp(s(b ⊙ x)) + t(b ⊙ x)),      log |det ∂z/∂x| = Σ (1 − b) ⊙ s(b ⊙ x),

inverted in one pass, with s and t convolutional networks. Masks are spatial checkerboards or
channel halves (section 3.4). The multi-scale architecture (section 3.6) repeats, per scale:

    3 checkerboard couplings → squeeze (C, H, W) → (4C, H/2, W/2) → 3 channel couplings →
    factor out half the channels (they go to the N(0, I) base at this scale),

and ends with 4 checkerboard couplings at the last scale; masks alternate parity so every entry
is updated. Each coupling is followed by a normalization layer: ``norm = "batch"`` (the paper's
batch normalization as a flow layer, section 3.7), ``"actnorm"`` (Glow's, data-initialized) or
``"none"``. Logit pre-processing of the dequantized data (section 4.1) has its Jacobian counted.

Departures, stated: s and t are plain stacks of ``hidden_layers`` convolutions with
``hidden_channels`` features (the paper uses ResNets with 8 blocks of 64 features);
s = scale · tanh(s_raw) as in the paper's implementation. Data that is not an image whose height
and width 2^(num_scales − 1) divides is treated as one (D, 1, 1) column: a single scale of
``2·couplings_per_scale`` alternating channel couplings.

Reference: Dinh et al., "Density estimation using Real NVP" (ICLR 2017).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genzoo.config import require
from genzoo.models.base import register_model
from genzoo.models.flows.base import FlowConfig, FlowModel, StandardNormal
from genzoo.models.flows.transforms import (
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    Compose,
    FactorOut,
    Reshape,
    Squeeze,
    Transform,
    channel_mask,
    checkerboard_mask,
    conv_net,
)

__all__ = ["RealNVP", "RealNVPConfig", "flow_image_shape"]


@dataclass
class RealNVPConfig(FlowConfig):
    #: scales of the multi-scale architecture (each but the last squeezes and factors out half)
    num_scales: int = 2
    #: couplings of each kind per scale (the paper: 3; the last scale has one more checkerboard)
    couplings_per_scale: int = 3
    #: channels and hidden layers of the network inside each coupling (hidden_layers + 1 convolutions)
    hidden_channels: int = 64
    hidden_layers: int = 2
    #: a normalization flow layer after each coupling (batch norm as in the paper, or actnorm)
    norm: Literal["batch", "actnorm", "none"] = "actnorm"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_scales >= 1, f"realnvp: num_scales must be at least 1, got {self.num_scales}")
        require(self.couplings_per_scale >= 1, f"realnvp: couplings_per_scale must be at least 1, got {self.couplings_per_scale}")
        require(self.hidden_channels >= 1, f"realnvp: hidden_channels must be positive, got {self.hidden_channels}")
        require(self.hidden_layers >= 1, f"realnvp: hidden_layers must be at least 1, got {self.hidden_layers}")


def flow_image_shape(data_shape: tuple[int, ...], num_squeezes: int, option: str = "") -> tuple[int, int, int]:
    """The (C, H, W) a convolutional flow works on: the data's own image shape if its
    ``num_squeezes`` squeezes divide it; flat data, or an image no squeeze divides (an odd side),
    as one (D, 1, 1) column. An image that takes some squeezes but fewer than asked is a
    ValueError naming ``option``, the key that sets them: as a column the flow would silently
    become another, much larger model (28×28 MNIST takes 2)."""
    if len(data_shape) == 3 and data_shape[1] * data_shape[2] > 1:
        c, h, w = data_shape
        if h % 2**num_squeezes == 0 and w % 2**num_squeezes == 0:
            return (c, h, w)
        most = next(k for k in range(num_squeezes, -1, -1) if h % 2**k == 0 and w % 2**k == 0)
        if most > 0:
            raise ValueError(f"{option or 'the flow'} squeezes the {h}×{w} image {num_squeezes} times (halving its "
                             f"height and width each time), which {h}×{w} does not allow: at most {most}")
    d = 1
    for s in data_shape:
        d *= s
    return (d, 1, 1)


def _norm(kind: str, channels: int) -> list[Transform]:
    if kind == "batch":
        return [BatchNormFlow(channels)]
    if kind == "actnorm":
        return [ActNorm(channels)]
    return []


def _couplings(shape: tuple[int, int, int], count: int, mask_kind: str, cfg: RealNVPConfig) -> list[Transform]:
    c, h, w = shape
    kernel = 3 if h * w > 1 else 1
    layers: list[Transform] = []
    for i in range(count):
        mask = checkerboard_mask(shape, i % 2) if mask_kind == "checkerboard" else channel_mask(shape, i % 2)
        layers.append(AffineCoupling(mask, conv_net(c, cfg.hidden_channels, 2 * c, cfg.hidden_layers, kernel)))
        layers += _norm(cfg.norm, c)
    return layers


def _scale(shape: tuple[int, int, int], scales_left: int, cfg: RealNVPConfig) -> Transform:
    """The flow from one scale on: couplings, squeeze, couplings, factor out, recurse."""
    c, h, w = shape
    k = cfg.couplings_per_scale
    if h * w == 1:  # a column: alternating channel couplings only
        return Compose(*_couplings(shape, 2 * k, "channel", cfg))
    if scales_left == 1:
        return Compose(*_couplings(shape, k + 1, "checkerboard", cfg))
    layers = _couplings(shape, k, "checkerboard", cfg)
    layers.append(Squeeze())
    shape = (4 * c, h // 2, w // 2)
    layers += _couplings(shape, k, "channel", cfg)
    keep = shape[0] // 2
    layers.append(FactorOut(shape, keep, _scale((keep, *shape[1:]), scales_left - 1, cfg)))
    return Compose(*layers)


@register_model("realnvp", RealNVPConfig)
class RealNVP(FlowModel):
    def __init__(self, data_shape: tuple[int, ...], config: RealNVPConfig | None = None):
        config = config or RealNVPConfig()
        super().__init__(data_shape, config)
        shape = flow_image_shape(self.data_shape, config.num_scales - 1,
                                 f"realnvp: num_scales = {config.num_scales} (a squeeze for each scale after the first)")
        self.set_flow([Reshape((self.num_dims,), shape), _scale(shape, config.num_scales, config)], StandardNormal())
