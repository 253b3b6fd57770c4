"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks"),
with the cached generation of Ramachandran et al. (2017).

Pixels in raster order i = r·W + c; every pixel's distribution is a function of the pixels
before it, computed for all pixels at once by masked convolutions:

    h⁰ = Conv_A^{k₀×k₀}(x)                                      (type A: the pixel itself is hidden)
    hˡ = hˡ⁻¹ + Conv^{1×1}(ReLU(Conv_B^{k×k}(ReLU(Conv^{1×1}(ReLU(hˡ⁻¹))))))   (residual blocks, 2h→h→h→2h)
    ℓ  = Conv^{1×1}(ReLU(Conv^{1×1}(ReLU(h^L))))

Binary data: p(x_i = 1 | x_<i) = σ(ℓ_i). 8-bit data: p(x_i = v | x_<i) = softmax(ℓ_i)_v over
256 values. The stack of type-B masks has a *blind spot*: pixels up and to the right of the
receptive field's edge (e.g. (r − 1, c + 2) with 3×3 kernels) never reach (r, c); Gated PixelCNN
removes it.

Cached generation: every layer's output at pixel i depends on x_<i only, so once x_<i is drawn
each layer's output at i is computed from the cached outputs of the layer below at the pixels
its kernel covers — one pixel's worth of work per layer instead of a full pass over the image
(HW times less than the naive sampler, which re-runs the network once per pixel).

``PixelAutoregressive`` below is the part shared with Gated PixelCNN: the data kind (binary or
8-bit), the optional class label y (log p(x | y); without a label, the uniform mixture
p(x) = (1/K) Σ_y p(x | y)), the naive and the cached samplers, and ``chain_rule_conditionals``,
which tells generic tools (speculative sampling) which conditionals define the distribution.

References: van den Oord et al., "Pixel Recurrent Neural Networks" (ICML 2016); Ramachandran
et al., "Fast Generation for Convolutional Autoregressive Models" (ICLR workshop 2017).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from genzoo.config import require
from genzoo.models.autoregressive.base import CategoricalAutoregressive, ChainRuleModel, uniforms_sampler
from genzoo.models.base import register_model
from genzoo.nn.masked_conv import ActivationCache, MaskedConv2d

__all__ = ["PixelCNN", "PixelCNNConfig", "PixelModelConfig", "PixelAutoregressive", "image_size", "pointwise"]


def image_size(data_shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of single-channel data: (1, H, W) images, or flat (D,) data as a 1×D image."""
    if len(data_shape) == 1:
        return 1, data_shape[0]
    if len(data_shape) == 3 and data_shape[0] == 1:
        return data_shape[1], data_shape[2]
    raise ValueError(
        f"convolutional autoregressive models need single-channel (1, H, W) images or flat (D,) data, got shape {data_shape}"
    )


def pointwise(conv: nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution applied to the feature vectors (B, C) of one pixel."""
    return F.linear(v, conv.weight[:, :, 0, 0], conv.bias)


class PixelAutoregressive(ChainRuleModel):
    """A raster-order image model for binary ("binary") or 8-bit ("grayscale") pixels, optionally
    conditioned on a class label. Subclasses implement ``features(x, y) -> (B, F, H, W)`` (read by
    the ``head`` and ``out`` layers: V_out = 1 logit, or 256 logits) and the cached sampler's
    ``start_generation``, ``begin_row`` and ``logits_at``.

    It offers ``conditional_logits`` (binary data) or ``conditional_log_probs`` (8-bit data), and
    ``chain_rule_conditionals`` says which of them defines its distribution: "binary" or
    "categorical", and "" for a class-conditional model, whose likelihood without a label is a
    mixture over classes, not a product of conditionals."""

    num_classes: int = 0
    num_values: int = CategoricalAutoregressive.num_values

    def __init__(self, data_shape: tuple[int, ...], data_kind: str, num_classes: int = 0):
        super().__init__(data_shape)
        self.height, self.width = image_size(self.data_shape)
        self.support = data_kind
        self.num_classes = num_classes
        self.out_values = 1 if data_kind == "binary" else self.num_values

    # -- labels ------------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """Class-conditional: p(x | y), y ∈ {0, …, num_classes − 1}."""
        return self.num_classes > 0

    @property
    def chain_rule_conditionals(self) -> str:
        if self.conditional:
            return ""
        return "binary" if self.support == "binary" else "categorical"

    def _labels(self, y: torch.Tensor | int | None, batch: int) -> torch.Tensor | None:
        """y as (B,) class indices on the model's device; None for an unconditional model."""
        if not self.conditional:
            if y is not None:
                raise ValueError(f"model {self.name!r} is unconditional (num_classes = 0) but got labels y")
            return None
        if y is None:
            raise ValueError(f"model {self.name!r} is class-conditional: pass labels y")
        y = torch.as_tensor(y, device=self.device)
        if y.is_floating_point():
            if (y != torch.round(y)).any():
                raise ValueError("labels y must be integers")
        y = y.long().reshape(-1)
        if len(y) == 1:
            y = y.expand(batch)
        if len(y) != batch:
            raise ValueError(f"got {len(y)} labels for {batch} examples")
        if ((y < 0) | (y >= self.num_classes)).any():
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got {y.min().item()}..{y.max().item()}")
        return y

    # -- the chain rule ----------------------------------------------------------------
    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The network's view of pixel values: {0, 1} as is, 8-bit levels in [0, 1]."""
        return x if self.support == "binary" else x / (self.num_values - 1)

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        """The last layer's features (B, F, H, W), read by the 1×1 ``head`` and ``out`` layers."""
        raise NotImplementedError

    def network(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(F.relu(self.head(F.relu(self.features(x, y)))))

    def _outputs(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Per-pixel outputs (B, D, V_out) from flat x (B, D)."""
        image = self.scale(x).reshape(len(x), 1, self.height, self.width)
        return self.network(image, y).flatten(2).transpose(1, 2)

    def conditional_logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Binary data: the logits of p(x_i = 1 | x_<i, y), shape (B, D)."""
        if self.support != "binary":
            raise ValueError(f"conditional_logits is for binary data; this model is {self.support} (use conditional_log_probs)")
        return self._outputs(x, self._labels(y, len(x)))[..., 0]

    def conditional_log_probs(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """8-bit data: log p(x_i = v | x_<i, y), shape (B, D, 256)."""
        if self.support == "binary":
            raise ValueError("conditional_log_probs is for 8-bit data; this model is binary (use conditional_logits)")
        return F.log_softmax(self._outputs(x, self._labels(y, len(x))), dim=-1)

    def _log_prob_given(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        image = self.scale(x).reshape(len(x), 1, self.height, self.width)
        out = self.network(image, y).flatten(2)  # (B, V_out, D): the softmax runs over contiguous features
        if self.support == "binary":
            return -F.binary_cross_entropy_with_logits(out[:, 0], x, reduction="none").sum(dim=1)
        return F.log_softmax(out, dim=1).gather(1, x.long().unsqueeze(1)).squeeze(1).sum(dim=1)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conditional:
            return self._log_prob_given(x, None)
        # no label: the exact likelihood of the uniform mixture over classes
        per_class = torch.stack([
            self._log_prob_given(x, torch.full((len(x),), k, dtype=torch.long, device=x.device))
            for k in range(self.num_classes)
        ])
        return torch.logsumexp(per_class, dim=0) - math.log(self.num_classes)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """log p(x | y) in nats, shape (B,); without y (conditional model) log (1/K) Σ_y p(x | y)."""
        x = self.flatten_input(x)
        if y is None:
            return self._log_prob(x)
        return self._log_prob_given(x, self._labels(y, len(x)))

    def _loss(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        return -self.log_prob(x, y).mean()

    # -- sampling (raster order: ChainRuleModel's generation_order and draw_uniforms) ------
    def _labels_for_sampling(self, u: torch.Tensor, y) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The labels to sample with; a conditional model given none draws y uniformly from the
        first uniform, rescaled so that it stays U[0, 1) for the first pixel (one set of draws
        fixes the whole sample, as the fast/naive identity needs)."""
        if not self.conditional or y is not None:
            return self._labels(y, len(u)), u
        K = self.num_classes
        y = torch.clamp((u[:, 0] * K).long(), max=K - 1)
        u = u.clone()
        u[:, 0] = u[:, 0] * K - y
        return y, u

    def _draw(self, out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One pixel from its outputs (B, V_out) and uniforms (B,)."""
        if self.support == "binary":
            return (u < torch.sigmoid(out[:, 0])).to(u.dtype)
        return CategoricalAutoregressive.inverse_cdf(F.log_softmax(out, dim=-1), u)

    def draw_dimension(self, x: torch.Tensor, d: int, u_d: torch.Tensor,
                       y: torch.Tensor | int | None = None) -> torch.Tensor:
        """x_d drawn by the uniforms u_d (B,) given x (B, D) with x_<d filled in (and labels y)."""
        return self._draw(self._outputs(x, self._labels(y, len(x)))[:, d], u_d)

    @torch.no_grad()
    def _sample(self, n: int, generator: torch.Generator | None = None, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """n samples (of class y, for a conditional model) by the cached sampler."""
        return self.unflatten(self.sample_from_uniforms(self.draw_uniforms(n, generator), y))

    @uniforms_sampler
    def sample_naive(self, u: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Reference sampler: the whole network once per pixel (D passes)."""
        y, u = self._labels_for_sampling(u, y)
        x = torch.zeros_like(u)
        for d in range(self.num_dims):
            x[:, d] = self._draw(self._outputs(x, y)[:, d], u[:, d])
        return x

    @uniforms_sampler
    def sample_from_uniforms(self, u: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Cached generation: each layer computed once per pixel; equals ``sample_naive(u, y)``."""
        y, u = self._labels_for_sampling(u, y)
        x = torch.zeros_like(u)
        state = self.start_generation(len(u), y, u)
        for r in range(self.height):
            self.begin_row(state, r)
            for c in range(self.width):
                d = r * self.width + c
                x[:, d] = self._draw(self.logits_at(state, r, c), u[:, d])
                state.x.write(r, c, self.scale(x[:, d]).unsqueeze(1))
        return x

    def start_generation(self, batch: int, y: torch.Tensor | None, like: torch.Tensor) -> SimpleNamespace:
        """Empty per-layer caches (``.x`` is the input image's); weights masked once."""
        raise NotImplementedError  # pragma: no cover - abstract

    def begin_row(self, state: SimpleNamespace, r: int) -> None:
        """Work that depends only on the rows above r (none here; Gated PixelCNN's vertical stack)."""

    def logits_at(self, state: SimpleNamespace, r: int, c: int) -> torch.Tensor:
        """The outputs (B, V_out) at pixel (r, c), every layer computed at that pixel only."""
        raise NotImplementedError  # pragma: no cover - abstract


@dataclass
class PixelModelConfig:
    """The settings of a convolutional pixel model's input layer, output head and data."""

    #: the masked convolutions' kernel (k) and the type-A first layer's (k₀)
    kernel_size: int = 3
    first_kernel_size: int = 7
    #: channels of the 1×1 convolutions of the output head
    head_channels: int = 32
    #: "binary": Bernoulli pixels; "grayscale": 256-way softmax over 8-bit pixels
    data_kind: Literal["binary", "grayscale"] = "binary"

    def check_pixel_settings(self, model: str, min_kernel_size: int) -> None:
        require(self.kernel_size >= min_kernel_size and self.kernel_size % 2 == 1,
                f"{model}: kernel_size must be odd and at least {min_kernel_size}, got {self.kernel_size}")
        require(self.first_kernel_size >= 3 and self.first_kernel_size % 2 == 1,
                f"{model}: first_kernel_size must be odd and at least 3, got {self.first_kernel_size}")
        require(self.head_channels >= 1, f"{model}: head_channels must be positive, got {self.head_channels}")


@dataclass
class PixelCNNConfig(PixelModelConfig):
    #: features in the residual stream (2h in the paper); the blocks' bottleneck has half as many
    hidden_channels: int = 128
    #: residual blocks after the first layer
    num_blocks: int = 15

    def __post_init__(self) -> None:
        require(self.hidden_channels >= 2, f"pixelcnn: hidden_channels must be at least 2, got {self.hidden_channels}")
        require(self.num_blocks >= 0, f"pixelcnn: num_blocks must be non-negative, got {self.num_blocks}")
        self.check_pixel_settings("pixelcnn", min_kernel_size=1)


class ResidualBlock(nn.Module):
    """h + 1×1(ReLU(B^{k×k}(ReLU(1×1(ReLU(h)))))), 2h → h → h → 2h features."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.conv = MaskedConv2d.pixelcnn(channels // 2, channels // 2, kernel_size, "B")
        self.expand = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.expand(F.relu(self.conv(F.relu(self.reduce(F.relu(h))))))


@register_model("pixelcnn", PixelCNNConfig)
class PixelCNN(PixelAutoregressive):
    def __init__(self, data_shape: tuple[int, ...], config: PixelCNNConfig | None = None):
        cfg = config or PixelCNNConfig()
        super().__init__(data_shape, cfg.data_kind)
        self.config = cfg
        self.first = MaskedConv2d.pixelcnn(1, cfg.hidden_channels, cfg.first_kernel_size, "A")
        self.blocks = nn.ModuleList(ResidualBlock(cfg.hidden_channels, cfg.kernel_size) for _ in range(cfg.num_blocks))
        self.head = nn.Conv2d(cfg.hidden_channels, cfg.head_channels, 1)
        self.out = nn.Conv2d(cfg.head_channels, self.out_values, 1)

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """h^L, the last residual block's output (B, 2h, H, W)."""
        h = self.first(x)
        for block in self.blocks:
            h = block(h)
        return h

    # -- cached generation -------------------------------------------------------------
    def start_generation(self, batch: int, y: torch.Tensor | None, like: torch.Tensor) -> SimpleNamespace:
        cfg, H, W = self.config, self.height, self.width
        pad = max(cfg.first_kernel_size, cfg.kernel_size) // 2
        return SimpleNamespace(
            x=ActivationCache(batch, 1, H, W, pad, like),
            first=self.first.masked_weight(),
            # the input of each block's masked convolution, and its masked weight
            blocks=[ActivationCache(batch, cfg.hidden_channels // 2, H, W, pad, like) for _ in self.blocks],
            weights=[block.conv.masked_weight() for block in self.blocks],
        )

    def logits_at(self, state: SimpleNamespace, r: int, c: int) -> torch.Tensor:
        h = self.first.at(state.x, r, c, state.first)
        for block, cache, weight in zip(self.blocks, state.blocks, state.weights):
            cache.write(r, c, F.relu(pointwise(block.reduce, F.relu(h))))
            h = h + pointwise(block.expand, F.relu(block.conv.at(cache, r, c, weight)))
        return pointwise(self.out, F.relu(pointwise(self.head, F.relu(h))))
