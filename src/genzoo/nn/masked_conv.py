"""Masked 2-D convolutions for autoregressive image models (raster order, one input channel).

A convolution with kernel W ∈ R^{O×C×kh×kw}, a fixed 0/1 mask M ∈ {0,1}^{kh×kw} and an
*anchor* (ar, ac), the kernel tap that sits on the output pixel:

    y[:, r, c] = b + Σ_{i,j} (M ⊙ W)[:, :, i, j] · x[:, r + i − ar, c + j − ac],

with zeros outside the image. The mask multiplies the weight inside the forward pass
(``F.conv2d(x, mask * weight, bias)``), never ``weight.data *= mask``, so masked taps get zero
gradient and the parameter is never changed behind the optimizer's back.

PixelCNN's masks (van den Oord et al. 2016) for a k×k kernel anchored at its centre:
type A sees the rows above and the pixels to the left (not the pixel itself): the first layer;
type B also sees the centre: every later layer, whose features at a pixel already depend only on
the pixels before it. Gated PixelCNN's stacks are unmasked rectangles placed by their anchor
(e.g. a (k//2)×k kernel anchored one row below itself sees only the rows above).

``at(cache, r, c)`` computes the output at one pixel from a zero-padded cache of the input (the
cached generation of Ramachandran et al. 2017): the same sum as the full convolution, restricted
to the output pixel.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MaskedConv2d", "pixelcnn_mask", "ActivationCache"]


def pixelcnn_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """The k×k mask of type "A" (rows above, pixels to the left) or "B" (A plus the centre)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"a PixelCNN mask needs an odd kernel size, got {kernel_size}")
    k = kernel_size // 2
    mask = torch.zeros(kernel_size, kernel_size)
    mask[:k, :] = 1
    mask[k, : k + (mask_type == "B")] = 1
    return mask


class MaskedConv2d(nn.Module):
    """A convolution whose kernel is multiplied by a fixed mask and placed by an anchor tap."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 anchor: tuple[int, int], mask: torch.Tensor | None = None, bias: bool = True):
        super().__init__()
        kh, kw = kernel_size
        self.kernel_size = (kh, kw)
        self.anchor = (int(anchor[0]), int(anchor[1]))
        self.conv = nn.Conv2d(in_channels, out_channels, (kh, kw), bias=bias)
        mask = torch.ones(kh, kw) if mask is None else mask.float()
        if mask.shape != (kh, kw):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, kernel is {kh}x{kw}")
        self.register_buffer("mask", mask, persistent=False)

    @classmethod
    def pixelcnn(cls, in_channels: int, out_channels: int, kernel_size: int, mask_type: str) -> "MaskedConv2d":
        """PixelCNN's k×k type-A or type-B convolution, anchored at the kernel's centre."""
        k = kernel_size // 2
        return cls(in_channels, out_channels, (kernel_size, kernel_size), (k, k), pixelcnn_mask(kernel_size, mask_type))

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    def masked_weight(self) -> torch.Tensor:
        return self.conv.weight * self.mask

    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding that puts the anchor on the output pixel;
        negative on a side the kernel does not reach (F.pad then crops)."""
        (kh, kw), (ar, ac) = self.kernel_size, self.anchor
        return ac, kw - 1 - ac, ar, kh - 1 - ar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.padding()), self.masked_weight(), self.bias)

    def at(self, cache: "ActivationCache", r: int, c: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The output at pixel (r, c), shape (B, out_channels), from the cached input;
        ``weight`` is ``masked_weight()`` computed once per sampling run (saves a multiply per pixel)."""
        weight = self.masked_weight() if weight is None else weight
        (kh, kw), (ar, ac) = self.kernel_size, self.anchor
        top, left = cache.pad + r - ar, cache.pad + c - ac
        patch = cache.data[:, :, top : top + kh, left : left + kw]
        out = patch.reshape(len(patch), -1) @ weight.reshape(len(weight), -1).T
        return out if self.bias is None else out + self.bias


    def row_at(self, cache: "ActivationCache", r: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The outputs along row r, shape (B, out_channels, W), from the cached input."""
        weight = self.masked_weight() if weight is None else weight
        kh, (ar, ac) = self.kernel_size[0], self.anchor
        top = cache.pad + r - ar
        out = F.conv2d(cache.data[:, :, top : top + kh, :], weight, self.bias)[:, :, 0]
        start = cache.pad - ac  # output column j reads padded columns j … j + kw − 1
        return out[:, :, start : start + cache.width]


class ActivationCache:
    """One layer's input, (B, C, H, W) zero-padded by ``pad`` on every side, filled in pixel by
    pixel as generation proceeds; pixels not yet generated are zero and only ever meet masked
    (zero) taps."""

    def __init__(self, batch: int, channels: int, height: int, width: int, pad: int, like: torch.Tensor):
        self.pad = pad
        self.width = width
        self.data = like.new_zeros(batch, channels, height + 2 * pad, width + 2 * pad)

    def write(self, r: int, c: int, value: torch.Tensor) -> None:
        self.data[:, :, self.pad + r, self.pad + c] = value

    def write_row(self, r: int, value: torch.Tensor) -> None:
        """Row r at once, value of shape (B, C, W)."""
        self.data[:, :, self.pad + r, self.pad : self.pad + self.width] = value
