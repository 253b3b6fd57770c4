"""A linear layer whose weight is multiplied by a fixed 0/1 mask: y = x (M ⊙ W)ᵀ + b.

The mask multiplies the weight inside the forward pass (never ``weight.data *= mask``), so masked
entries get zero gradient and the parameter itself stays untouched.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MaskedLinear"]


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor | None = None, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: torch.Tensor, copy: bool = True) -> None:
        """Use ``mask`` from now on; ``copy=False`` adopts it as is (the caller gives up a fresh
        tensor, saving a copy when masks change at every step)."""
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, weight has {tuple(self.weight.shape)}")
        # A new tensor, not copy_(): a graph built under the previous mask still needs that mask.
        converted = mask.to(self.mask.device, self.mask.dtype)
        self.mask = converted.clone() if copy and converted is mask else converted

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)
