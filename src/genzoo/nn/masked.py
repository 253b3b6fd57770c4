"""A linear layer whose weight is multiplied by a fixed 0/1 mask: y = x (M ⊙ W)ᵀ + b.

The mask multiplies the weight inside the forward pass (never ``weight.data *= mask``), so masked
entries get zero gradient and the parameter itself stays untouched.

Row blocks. An autoregressive mask whose units are sorted by degree is a staircase: about half of
it is zeros, in whole blocks. Given row blocks (``row_blocks``), the layer multiplies only what
each block of rows can see — the columns every row sees, as they are, and a narrow band of
columns some rows see, masked — and skips the rest. The result is the same product; for a
784-8000-784 MADE it does 56% of the dense multiply-adds and masks about 1/8 of the weight.
Row blocks are used on the CPU only, where they were measured (1.3-1.7x a MADE step): on a GPU
a dense product of this size costs little more than the launches the blocks would add.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["MaskedLinear", "RowBlock", "row_blocks", "row_blocks_fraction", "row_block_linear"]


@dataclass(frozen=True)
class RowBlock:
    """Rows [start, end) of a mask: columns [0, full) are 1 in every row of the block, columns
    [full, used) are 1 in some, and columns from ``used`` on are 0 in all of them."""

    start: int
    end: int
    full: int
    used: int


def row_blocks(mask: torch.Tensor, num_blocks: int) -> tuple[RowBlock, ...]:
    """Split the rows of ``mask`` into ``num_blocks`` near-equal blocks and find each block's
    all-ones prefix and last used column. Correct for any mask; it saves work where the mask is a
    staircase (rows sorted so that each sees a prefix of the columns)."""
    rows = mask.shape[0]
    num_blocks = max(1, min(num_blocks, rows))
    edges = [round(i * rows / num_blocks) for i in range(num_blocks + 1)]
    blocks = []
    for start, end in zip(edges[:-1], edges[1:]):
        part = mask[start:end] != 0
        full = int(part.all(dim=0).int().cumprod(dim=0).sum())
        seen = part.any(dim=0).nonzero()
        used = int(seen[-1]) + 1 if len(seen) else 0
        blocks.append(RowBlock(start, end, full, max(full, used)))
    return tuple(blocks)


def row_blocks_fraction(blocks: tuple[RowBlock, ...], shape: tuple[int, int]) -> float:
    """The fraction of the dense product that the blocks multiply."""
    return sum((b.end - b.start) * b.used for b in blocks) / (shape[0] * shape[1])


#: an unmasked prefix narrower than this is multiplied with the band instead: products with a
#: dimension that thin take a slow path (a 1000×64 by 64×1 gradient took 3 ms on a 2-core CPU)
MIN_UNMASKED_COLUMNS = 16


def _column_split(block: RowBlock) -> tuple[int, int]:
    """(columns multiplied as they are, columns used) for a block."""
    return (block.full if block.full >= MIN_UNMASKED_COLUMNS else 0), block.used


class _RowBlockLinear(torch.autograd.Function):
    """y = x (M ⊙ W)ᵀ + b, block by block, with the gradients of x, W and b."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, blocks):
        splits = [_column_split(b) for b in blocks]
        bands = [weight[b.start:b.end, full:used] * mask[b.start:b.end, full:used]
                 for b, (full, used) in zip(blocks, splits)]
        outputs = []
        for block, (full, used), band in zip(blocks, splits, bands):
            rows = slice(block.start, block.end)
            y = bias[rows].expand(len(x), -1) if bias is not None else x.new_zeros(len(x), block.end - block.start)
            for inputs, w in ((x[:, :full], weight[rows, :full]), (x[:, full:used], band)):
                if w.shape[1]:
                    y = torch.addmm(y, inputs, w.t())
            outputs.append(y)
        ctx.save_for_backward(x, weight, mask)
        ctx.blocks, ctx.splits, ctx.bands, ctx.has_bias = blocks, splits, bands, bias is not None
        return torch.cat(outputs, dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, mask = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_x = torch.zeros_like(x) if needs_x else None
        grad_weight = torch.empty_like(weight) if needs_weight else None
        for block, (full, used), band in zip(ctx.blocks, ctx.splits, ctx.bands):
            rows = slice(block.start, block.end)
            g = grad_out[:, rows]
            if needs_x:
                if full:
                    grad_x[:, :full].addmm_(g, weight[rows, :full])
                if used > full:
                    grad_x[:, full:used].addmm_(g, band)
            if needs_weight:
                # beta=0: the uninitialised memory is overwritten, never read
                if full:
                    grad_weight[rows, :full].addmm_(g.t(), x[:, :full], beta=0)
                if used > full:
                    grad_band = grad_weight[rows, full:used]
                    grad_band.addmm_(g.t(), x[:, full:used], beta=0)
                    grad_band.mul_(mask[rows, full:used])
                grad_weight[rows, used:].zero_()
        grad_bias = grad_out.sum(dim=0) if ctx.has_bias and needs_bias else None
        return grad_x, grad_weight, grad_bias, None, None


def row_block_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                     blocks: tuple[RowBlock, ...]) -> torch.Tensor:
    """``F.linear(x, weight * mask, bias)`` computed over the row blocks of ``mask`` only."""
    flat = x.reshape(-1, x.shape[-1])
    return _RowBlockLinear.apply(flat, weight, bias, mask, blocks).reshape(*x.shape[:-1], weight.shape[0])


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor | None = None, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)
        #: row blocks of the mask (see ``row_blocks``), or None for the dense masked product
        self.row_blocks: tuple[RowBlock, ...] | None = None
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: torch.Tensor, copy: bool = True, blocks: tuple[RowBlock, ...] | None = None) -> None:
        """Use ``mask`` from now on; ``copy=False`` adopts it as is (the caller gives up a fresh
        tensor, saving a copy when masks change at every step). ``blocks`` are the mask's row
        blocks (``row_blocks(mask, n)``), to skip its all-zero blocks; without them the product is
        dense."""
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, weight has {tuple(self.weight.shape)}")
        if blocks is not None and (blocks[0].start != 0 or blocks[-1].end != mask.shape[0]):
            raise ValueError(f"row blocks cover rows {blocks[0].start}..{blocks[-1].end}, the mask has {mask.shape[0]}")
        # A new tensor, not copy_(): a graph built under the previous mask still needs that mask.
        converted = mask.to(self.mask.device, self.mask.dtype)
        self.mask = converted.clone() if copy and converted is mask else converted
        self.row_blocks = blocks

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def active_row_blocks(self) -> tuple[RowBlock, ...] | None:
        """The row blocks the forward pass uses: none off the CPU (see the module docstring)."""
        return self.row_blocks if self.weight.device.type == "cpu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self.active_row_blocks()
        if blocks is None:
            return F.linear(x, self.masked_weight(), self.bias)
        return row_block_linear(x, self.weight, self.bias, self.mask, blocks)
