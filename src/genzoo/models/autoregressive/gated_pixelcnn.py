"""Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016,
"Conditional Image Generation with PixelCNN Decoders"), with cached generation.

Two stacks of features per pixel (r, c), in raster order:

* the vertical stack vˡ(r, c) sees the rows above r (all columns within its growing window);
* the horizontal stack hˡ(r, c) sees the pixels to the left in row r, and the vertical stack.

Together their receptive field is every earlier pixel within the window: no blind spot. With
gated units g(a) = tanh(a₁) ⊙ σ(a₂) (a split in two halves along the features) and a class
label y (optional) entering every layer as a learned bias e_y:

    first layer  (k₀ × k₀):  a_v = V⁰ ⋆ x   (the k₀//2 rows above r)
                             a_h = H⁰ ⋆ x   (the k₀//2 pixels left of c)
                             v⁰ = g(a_v + e⁰_v(y)),  h⁰ = g(a_h + W⁰_vh a_v + e⁰_h(y))
    layer l ≥ 1 (k × k):     a_v = Vˡ ⋆ vˡ⁻¹  (rows r − k//2 … r of vˡ⁻¹, which see only rows < r)
                             a_h = Hˡ ⋆ hˡ⁻¹  (pixels c − k//2 … c of row r)
                             vˡ = g(a_v + eˡ_v(y))
                             hˡ = hˡ⁻¹ + Wˡ_res g(a_h + Wˡ_vh a_v + eˡ_h(y))
    output                   ℓ = 1×1(ReLU(1×1(ReLU(h^L))))

The paper shifts the vertical stack down one row before feeding it to the horizontal one; here
the first vertical convolution stops one row above r and later ones include row r, which is the
same receptive field without the shift. Outputs as in PixelCNN: a Bernoulli logit for binary
pixels, a 256-way softmax for 8-bit ones.

Cached generation (Ramachandran et al. 2017): the vertical stack at row r depends on the rows
above only, so it is computed for the whole row once row r − 1 is drawn; the horizontal stack
and the output are then computed pixel by pixel from the cached layer inputs.

References: van den Oord et al., "Conditional Image Generation with PixelCNN Decoders"
(NeurIPS 2016); Ramachandran et al., "Fast Generation for Convolutional Autoregressive Models"
(ICLR workshop 2017).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from genzoo.config import require
from genzoo.models.autoregressive.pixelcnn import PixelAutoregressive, PixelModelConfig, pointwise
from genzoo.models.base import register_model
from genzoo.nn.masked_conv import ActivationCache, MaskedConv2d

__all__ = ["GatedPixelCNN", "GatedPixelCNNConfig", "gate"]


def gate(a: torch.Tensor) -> torch.Tensor:
    """tanh(a₁) ⊙ σ(a₂), the halves along dimension 1 (features)."""
    a1, a2 = a.chunk(2, dim=1)
    return torch.tanh(a1) * torch.sigmoid(a2)


def _bias(embedding: nn.Embedding | None, y: torch.Tensor | None, spatial: bool) -> torch.Tensor | float:
    """The label's per-layer bias e(y), (B, F) or (B, F, 1, 1); 0 for an unconditional model."""
    if embedding is None:
        return 0.0
    e = embedding(y)
    return e[:, :, None, None] if spatial else e


@dataclass
class GatedPixelCNNConfig(PixelModelConfig):
    #: features per stack (the gated units); the convolutions produce twice as many
    channels: int = 128
    #: gated layers after the first
    num_layers: int = 10
    #: K > 0: a class-conditional model p(x | y), y ∈ {0, …, K − 1}
    num_classes: int = 0

    def __post_init__(self) -> None:
        require(self.channels >= 1, f"gated-pixelcnn: channels must be positive, got {self.channels}")
        require(self.num_layers >= 0, f"gated-pixelcnn: num_layers must be non-negative, got {self.num_layers}")
        require(self.num_classes >= 0, f"gated-pixelcnn: num_classes must be non-negative, got {self.num_classes}")
        self.check_pixel_settings("gated-pixelcnn", min_kernel_size=3)


class GatedLayer(nn.Module):
    """One gated layer of both stacks; ``first`` is the input layer (no residual); the ``last``
    layer's vertical stack only feeds its own horizontal one (no gated vertical output)."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool, last: bool, num_classes: int):
        super().__init__()
        k = kernel_size // 2
        self.first = first
        # vertical: rows r − k … r − 1 (first layer) or r − k … r (later), columns c − k … c + k
        self.vertical = MaskedConv2d(in_channels, 2 * channels, (k if first else k + 1, kernel_size), anchor=(k, k))
        # horizontal: columns c − k … c − 1 (first layer) or c − k … c (later) of row r
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, k if first else k + 1), anchor=(0, k))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.residual = None if first else nn.Conv2d(channels, channels, 1)
        self.label_v = nn.Embedding(num_classes, 2 * channels) if num_classes and not last else None
        self.last = last
        self.label_h = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        a_v = self.vertical(v)
        v_out = None if self.last else gate(a_v + _bias(self.label_v, y, spatial=True))
        h_new = gate(self.horizontal(h) + self.v_to_h(a_v) + _bias(self.label_h, y, spatial=True))
        h_out = h_new if self.residual is None else h + self.residual(h_new)
        return v_out, h_out


@register_model("gated-pixelcnn", GatedPixelCNNConfig)
class GatedPixelCNN(PixelAutoregressive):
    def __init__(self, data_shape: tuple[int, ...], config: GatedPixelCNNConfig | None = None):
        cfg = config or GatedPixelCNNConfig()
        super().__init__(data_shape, cfg.data_kind, cfg.num_classes)
        self.config = cfg
        C = cfg.channels
        L = cfg.num_layers
        self.layers = nn.ModuleList(
            [GatedLayer(1, C, cfg.first_kernel_size, True, L == 0, cfg.num_classes)]
            + [GatedLayer(C, C, cfg.kernel_size, False, l == L, cfg.num_classes) for l in range(1, L + 1)]
        )
        self.head = nn.Conv2d(C, cfg.head_channels, 1)
        self.out = nn.Conv2d(cfg.head_channels, self.out_values, 1)

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """h^L, the horizontal stack's output (B, C, H, W)."""
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, y)
        return h

    # -- cached generation -------------------------------------------------------------
    def start_generation(self, batch: int, y: torch.Tensor | None, like: torch.Tensor) -> SimpleNamespace:
        cfg, H, W = self.config, self.height, self.width
        pad = max(cfg.first_kernel_size, cfg.kernel_size) // 2
        x = ActivationCache(batch, 1, H, W, pad, like)
        # layer l reads layer l − 1's stacks (layer 0 reads the image for both)
        v_in = [x] + [ActivationCache(batch, cfg.channels, H, W, pad, like) for _ in self.layers[1:]]
        h_in = [x] + [ActivationCache(batch, cfg.channels, H, W, pad, like) for _ in self.layers[1:]]
        return SimpleNamespace(
            x=x, v_in=v_in, h_in=h_in,
            v_weights=[layer.vertical.masked_weight() for layer in self.layers],
            h_weights=[layer.horizontal.masked_weight() for layer in self.layers],
            label_v=[_bias(layer.label_v, y, spatial=False) for layer in self.layers],
            label_h=[_bias(layer.label_h, y, spatial=False) for layer in self.layers],
            a_v=[None] * len(self.layers),  # this row's vertical pre-activations, (B, 2C, W) per layer
        )

    def begin_row(self, state: SimpleNamespace, r: int) -> None:
        """The vertical stack of row r, all columns: it depends on the rows above only."""
        for l, layer in enumerate(self.layers):
            a_v = layer.vertical.row_at(state.v_in[l], r, state.v_weights[l])
            state.a_v[l] = a_v
            if l + 1 < len(self.layers):
                label = state.label_v[l]
                v = gate(a_v + (label[:, :, None] if torch.is_tensor(label) else label))
                state.v_in[l + 1].write_row(r, v)

    def logits_at(self, state: SimpleNamespace, r: int, c: int) -> torch.Tensor:
        h = None
        for l, layer in enumerate(self.layers):
            if l > 0:
                state.h_in[l].write(r, c, h)
            a_h = layer.horizontal.at(state.h_in[l], r, c, state.h_weights[l])
            h_new = gate(a_h + pointwise(layer.v_to_h, state.a_v[l][:, :, c]) + state.label_h[l])
            h = h_new if layer.residual is None else h + pointwise(layer.residual, h_new)
        return pointwise(self.out, F.relu(pointwise(self.head, F.relu(h))))
