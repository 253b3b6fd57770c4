"""A linear layer whose weight is multiplied by a fixed 0/1 mask: y = x (M ⊙ W)ᵀ + b.

The mask multiplies the weight inside the forward pass (never ``weight.data *= mask``), so masked
entries get zero gradient and the parameter itself stays untouched.

Row blocks. An autoregressive mask whose units are sorted by degree is a staircase: about half of
it is zeros, in whole blocks. ``RowBlockMaskedLinear`` splits the rows into blocks and stores, as
its parameters, only what each block can see: W[rows, :used], where the columns from ``used`` on
are masked in every row of the block. It multiplies only those — the columns every row sees as
they are, and a narrow band of columns some rows see, masked — so for a 784-8000-784 MADE it does
56% of the dense multiply-adds, and the optimizer updates 56% of the weights instead of all of
them (Adam's state never covers a weight the mask removes). Its state dict holds the full
``weight`` (zeros where no row of a block looks), so checkpoints do not depend on the blocks.
The blocked products run on the CPU only, where they were measured; on a GPU the layer assembles
M ⊙ W and takes one dense product, which costs little more than the launches the blocks would add.

Binary inputs. A layer whose inputs are a Bernoulli model's data (x ∈ {0,1}, ``binary_input``)
needs no multiplications at all: with S(x) the columns where x is 1,

    y = b + Σ_{j ∈ S(x)} (M ⊙ W)[:, j],        ∂L/∂W[:, j] = M[:, j] ⊙ Σ_{examples with x_j = 1} ∂L/∂y,

sums of weight columns for the output and sums of output gradients for the weight gradient, each
an ``embedding_bag``. Binarized MNIST is 13% ones, so this reads about an eighth of what the
product multiplies (measured: forward and weight gradient of a 784 → 8,000 layer at batch 64,
2.4 ms against 9.9 ms for the dense products on a 2-core CPU; even at half ones they break even).
Such a layer stores each block transposed, W[rows, :used]ᵀ, so that a column of W is one
contiguous row of the lookup table and the weight gradient comes out in the parameter's layout
(not as a column-major view of the usual shape: torch's fused Adam runs 3.6× slower on those).
A batch that is not binary, or has more than ``SPARSE_INPUT_MAX_DENSITY`` ones, takes the
products. Like the row-block products, the sums are differentiable once (no double backward).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["MaskedLinear", "RowBlock", "RowBlockMaskedLinear", "row_blocks", "row_blocks_fraction",
           "row_block_linear", "binary_row_block_linear", "binary_masked_linear", "sums_ones"]


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


def _add_input_gradient(grad_x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, band: torch.Tensor,
                        full: int, used: int) -> None:
    """grad_x[:, :used] += g · (M ⊙ W) for a block: its unmasked columns ``w[:, :full]`` as they are
    and its masked ``band`` (columns full..used)."""
    if full:
        grad_x[:, :full].addmm_(g, w[:, :full])
    if used > full:
        grad_x[:, full:used].addmm_(g, band)


class _RowBlockLinear(torch.autograd.Function):
    """y = x (M ⊙ W)ᵀ + b from each block's W[rows, :used] and M[rows, :used], with the
    gradients of x, of each block's weights and of b."""

    @staticmethod
    # under CPU autocast the products would run in bfloat16 against float32 weights in backward:
    # the blocks run in float32 with autocast off (as a dense masked layer's weights would)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, bias, block_masks, blocks, *block_weights):
        splits = [_column_split(b) for b in blocks]
        bands = [w[:, full:used] * m[:, full:used] for w, m, (full, used) in zip(block_weights, block_masks, splits)]
        outputs = []
        for block, (full, used), w, band in zip(blocks, splits, block_weights, bands):
            rows = slice(block.start, block.end)
            y = bias[rows].expand(len(x), -1) if bias is not None else x.new_zeros(len(x), block.end - block.start)
            for inputs, part in ((x[:, :full], w[:, :full]), (x[:, full:used], band)):
                if part.shape[1]:
                    y = torch.addmm(y, inputs, part.t())
            outputs.append(y)
        ctx.save_for_backward(x, *block_weights)
        ctx.blocks, ctx.splits, ctx.bands, ctx.block_masks, ctx.has_bias = blocks, splits, bands, block_masks, bias is not None
        return torch.cat(outputs, dim=1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad_out):
        x, *block_weights = ctx.saved_tensors
        needs_x, needs_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if needs_x else None
        grad_weights = []
        for i, (block, (full, used), w, band, m) in enumerate(
                zip(ctx.blocks, ctx.splits, block_weights, ctx.bands, ctx.block_masks)):
            g = grad_out[:, block.start:block.end]
            if needs_x:
                _add_input_gradient(grad_x, g, w, band, full, used)
            if not ctx.needs_input_grad[4 + i]:
                grad_weights.append(None)
                continue
            grad_w = torch.mm(g.t(), x[:, :used])  # every column of it is used, none wasted
            if used > full:
                grad_w[:, full:].mul_(m[:, full:used])
            grad_weights.append(grad_w)
        grad_bias = grad_out.sum(dim=0) if ctx.has_bias and needs_bias else None
        return (grad_x, grad_bias, None, None, *grad_weights)


#: above this fraction of ones a binary batch takes the products: summing weight columns costs in
#: proportion to the ones, and broke even with the dense products at half ones (see the docstring)
SPARSE_INPUT_MAX_DENSITY = 0.4


def sums_ones(x: torch.Tensor) -> bool:
    """Whether ``x`` (a 2-D batch) is binary with few enough ones for the sums of columns."""
    if x.dim() != 2 or not x.dtype.is_floating_point or x.numel() == 0:
        return False
    ones = x == 1
    return bool(torch.logical_or(ones, x == 0).all()) and int(ones.sum()) <= SPARSE_INPUT_MAX_DENSITY * x.numel()


def _bags(sizes: torch.Tensor) -> torch.Tensor:
    """embedding_bag's offsets for consecutive bags of the given sizes."""
    offsets = torch.zeros_like(sizes)
    torch.cumsum(sizes[:-1], dim=0, out=offsets[1:])
    return offsets


def _column_sums(columns: torch.Tensor, ones_before: torch.Tensor, lo: int, hi: int, table: torch.Tensor) -> torch.Tensor:
    """For each row r of the batch, the sum of ``table``'s rows j − lo over the ones of x[r] in
    columns [lo, hi); ``columns`` lists every one's column, row by row, and ``ones_before[:, t]``
    counts a row's ones in columns < t."""
    keep = (columns >= lo) & (columns < hi)
    return F.embedding_bag(columns[keep] - lo, table, _bags(ones_before[:, hi] - ones_before[:, lo]), mode="sum")


def _ones_by_column(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ones of x column by column: the batch row of each, and where each column's run starts."""
    return x.t().nonzero()[:, 1], _bags((x != 0).sum(dim=0))


def _summed_gradient(ones_by_column: tuple[torch.Tensor, torch.Tensor], g: torch.Tensor, used: int) -> torch.Tensor:
    """The transposed weight gradient of columns [0, used): row j sums g over the batch's rows
    whose x_j is 1."""
    rows_of_ones, first_one_of_column = ones_by_column
    ones_used = int(first_one_of_column[used]) if used < len(first_one_of_column) else len(rows_of_ones)
    return F.embedding_bag(rows_of_ones[:ones_used], g.contiguous(), first_one_of_column[:used], mode="sum")


class _BinaryRowBlockLinear(torch.autograd.Function):
    """y = x (M ⊙ W)ᵀ + b for binary x, as sums of weight columns over the ones of x (see the
    module docstring), from each block's transposed weights W[rows, :used]ᵀ and mask."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, bias, mask_tables, blocks, *tables):
        columns = x.nonzero()[:, 1]  # row by row, as the bags take them
        ones_before = F.pad((x != 0).cumsum(dim=1), (1, 0))  # counted in integers: exact in any dtype
        outputs = []
        for block, (full, used), table, mask in zip(blocks, map(_column_split, blocks), tables, mask_tables):
            parts = [_column_sums(columns, ones_before, lo, hi, part) for lo, hi, part in (
                (0, full, table[:full]), (full, used, table[full:used] * mask[full:used])) if hi > lo]
            y = parts[0] if parts else x.new_zeros(len(x), block.end - block.start)
            for part in parts[1:]:
                y += part
            outputs.append(y)
        ctx.save_for_backward(x, *tables)
        ctx.blocks, ctx.mask_tables, ctx.has_bias = blocks, mask_tables, bias is not None
        y = torch.cat(outputs, dim=1)
        return y.add_(bias) if bias is not None else y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad_out):
        x, *tables = ctx.saved_tensors
        needs_x, needs_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if needs_x else None
        ones_by_column = _ones_by_column(x)
        grad_tables = []
        for i, (block, (full, used), table, mask) in enumerate(
                zip(ctx.blocks, map(_column_split, ctx.blocks), tables, ctx.mask_tables)):
            g = grad_out[:, block.start:block.end]
            if needs_x:
                _add_input_gradient(grad_x, g, table.t(), (table[full:used] * mask[full:used]).t(), full, used)
            if not ctx.needs_input_grad[4 + i]:
                grad_tables.append(None)
                continue
            grad_table = _summed_gradient(ones_by_column, g, used)
            if used > full:
                grad_table[full:].mul_(mask[full:used])
            grad_tables.append(grad_table)
        grad_bias = grad_out.sum(dim=0) if ctx.has_bias and needs_bias else None
        return (grad_x, grad_bias, None, None, *grad_tables)


class _BinaryLinear(torch.autograd.Function):
    """y = x (M ⊙ W)ᵀ + b for binary x and a dense mask, as sums of the columns of M ⊙ W over the
    ones of x, with the gradient of W as sums of ∂L/∂y (see the module docstring)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, weight, mask, bias):
        table = (weight * mask).t().contiguous()  # column j of M ⊙ W as row j
        y = F.embedding_bag(x.nonzero()[:, 1], table, _bags((x != 0).sum(dim=1)), mode="sum")
        if bias is not None:
            y += bias
        ctx.save_for_backward(x, table if ctx.needs_input_grad[0] else None, mask)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad_out):
        x, table, mask = ctx.saved_tensors
        grad_x = grad_out @ table.t() if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_table = _summed_gradient(_ones_by_column(x), grad_out, x.shape[1])
            grad_weight = torch.mul(grad_table.t(), mask, out=torch.empty_like(mask))
        grad_bias = grad_out.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, grad_weight, None, grad_bias


def binary_masked_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, M ⊙ W, bias)`` for a 2-D batch of zeros and ones, by sums of the columns of
    M ⊙ W (transposed afresh at each call, as a dense layer's mask may change between calls)."""
    return _BinaryLinear.apply(x, weight, mask, bias)


def binary_row_block_linear(x: torch.Tensor, tables: list[torch.Tensor], bias: torch.Tensor | None,
                            mask_tables: list[torch.Tensor], blocks: tuple[RowBlock, ...]) -> torch.Tensor:
    """``row_block_linear`` for a 2-D batch of zeros and ones, by sums of weight columns, from the
    blocks' transposed weights W[rows, :used]ᵀ and masks M[rows, :used]ᵀ."""
    return _BinaryRowBlockLinear.apply(x, bias, tuple(mask_tables), blocks, *tables)


def row_block_linear(x: torch.Tensor, block_weights: list[torch.Tensor], bias: torch.Tensor | None,
                     block_masks: list[torch.Tensor], blocks: tuple[RowBlock, ...]) -> torch.Tensor:
    """``F.linear(x, M ⊙ W, bias)`` from the row blocks' weights W[rows, :used] and masks
    M[rows, :used] only."""
    flat = x.reshape(-1, x.shape[-1])
    out_features = blocks[-1].end
    return _RowBlockLinear.apply(flat, bias, tuple(block_masks), blocks, *block_weights).reshape(
        *x.shape[:-1], out_features)


def check_row_blocks(blocks: tuple[RowBlock, ...], mask: torch.Tensor) -> None:
    """Refuse blocks that do not tile the rows of ``mask`` or that drop a column it uses."""
    ends = [b.start for b in blocks[1:]]
    if blocks[0].start != 0 or blocks[-1].end != mask.shape[0] or ends != [b.end for b in blocks[:-1]]:
        raise ValueError(f"row blocks cover rows {blocks[0].start}..{blocks[-1].end} with gaps or overlaps, "
                         f"the mask has {mask.shape[0]}")
    for b in blocks:
        if (mask[b.start:b.end, b.used:] != 0).any():
            raise ValueError(f"row block {b.start}..{b.end} ends at column {b.used}, but the mask uses columns past it")


class MaskedLinear(nn.Linear):
    """The dense masked layer: every weight is a parameter, and the mask may change (K masks take
    turns in a MADE ensemble). ``binary_input``: on the CPU, a batch of zeros and ones with few
    enough ones is summed over instead of multiplied (``binary_masked_linear``; the table
    M ⊙ W is transposed at each call, which pays where the batch is large against the layer)."""

    #: the dense layer multiplies every block (see ``RowBlockMaskedLinear``)
    row_blocks = None
    binary_input = False

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor | None = None, bias: bool = True,
                 binary_input: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.binary_input = binary_input
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

    def active_row_blocks(self) -> tuple[RowBlock, ...] | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # what the product would refuse or compute in another dtype (x's width or dtype is not the
        # weight's, or autocast would run it in bfloat16) takes the product
        if (self.binary_input and self.weight.device.type == "cpu" and x.shape[-1] == self.in_features
                and x.dtype == self.weight.dtype and not torch.is_autocast_enabled("cpu")
                and sums_ones(flat := x.reshape(-1, x.shape[-1]))):
            return binary_masked_linear(flat, self.weight, self.mask, self.bias).reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.masked_weight(), self.bias)


class RowBlockMaskedLinear(nn.Module):
    """y = x (M ⊙ W)ᵀ + b for a fixed mask M, with only each row block's W[rows, :used] stored
    (``weight_blocks``; see the module docstring). ``weight`` is the full matrix, assembled.
    ``binary_input``: the inputs are zeros and ones, summed over instead of multiplied, and each
    block is stored transposed, W[rows, :used]ᵀ."""

    binary_input = False

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                 blocks: tuple[RowBlock, ...], binary_input: bool = False):
        super().__init__()
        if mask.shape != weight.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
        check_row_blocks(blocks, mask)
        self.out_features, self.in_features = weight.shape
        self.row_blocks = blocks
        self.binary_input = binary_input
        layout = (lambda t: t.t().contiguous()) if binary_input else torch.clone
        self.weight_blocks = nn.ParameterList(
            nn.Parameter(layout(weight.detach()[b.start:b.end, :b.used])) for b in blocks)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        mask = mask.to(weight.dtype)
        self.register_buffer("mask", mask.clone(), persistent=False)
        for i, b in enumerate(blocks):
            self.register_buffer(f"block_mask_{i}", layout(mask[b.start:b.end, :b.used]), persistent=False)
        self.register_state_dict_post_hook(RowBlockMaskedLinear._save_full_weight)
        self.register_load_state_dict_pre_hook(RowBlockMaskedLinear._load_full_weight)

    @classmethod
    def from_dense(cls, layer: MaskedLinear, blocks: tuple[RowBlock, ...],
                   binary_input: bool = False) -> "RowBlockMaskedLinear":
        """The same layer (its weights, bias and mask) stored by row block."""
        return cls(layer.weight, layer.bias, layer.mask, blocks, binary_input)

    def _stored_masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"block_mask_{i}") for i in range(len(self.row_blocks))]

    def _as_blocks(self, stored: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.t() for t in stored] if self.binary_input else list(stored)

    def block_weights(self) -> list[torch.Tensor]:
        """Each block's W[rows, :used] (a transposed view where the layer stores it transposed)."""
        return self._as_blocks(self.weight_blocks)

    def block_masks(self) -> list[torch.Tensor]:
        """Each block's M[rows, :used]."""
        return self._as_blocks(self._stored_masks())

    def block_grads(self) -> list[torch.Tensor | None]:
        """Each block's gradient, shaped as W[rows, :used] (None for a block without one)."""
        return [None if w.grad is None else w.grad.t() if self.binary_input else w.grad for w in self.weight_blocks]

    @property
    def weight(self) -> torch.Tensor:
        """The full weight matrix: each block's stored columns, zeros after them."""
        return torch.cat([F.pad(w, (0, self.in_features - b.used)) for w, b in zip(self.block_weights(), self.row_blocks)])

    def masked_weight(self) -> torch.Tensor:
        return torch.cat([F.pad(w * m, (0, self.in_features - b.used))
                          for w, m, b in zip(self.block_weights(), self.block_masks(), self.row_blocks)])

    def active_row_blocks(self) -> tuple[RowBlock, ...] | None:
        """The row blocks the forward pass multiplies: none off the CPU (see the module docstring)."""
        return self.row_blocks if self.mask.device.type == "cpu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_row_blocks() is None:
            return F.linear(x, self.masked_weight(), self.bias)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer takes {self.in_features}")
        if self.binary_input and x.dtype == self.weight_blocks[0].dtype and sums_ones(flat := x.reshape(-1, x.shape[-1])):
            return binary_row_block_linear(flat, list(self.weight_blocks), self.bias, self._stored_masks(),
                                           self.row_blocks).reshape(*x.shape[:-1], self.out_features)
        return row_block_linear(x, self.block_weights(), self.bias, self.block_masks(), self.row_blocks)

    def extra_repr(self) -> str:
        stored = sum(w.numel() for w in self.weight_blocks)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"row_blocks={len(self.row_blocks)}, stored_weights={stored / (self.in_features * self.out_features):.0%}"
                + (", binary_input=True" if self.binary_input else ""))

    @staticmethod
    def _save_full_weight(module: "RowBlockMaskedLinear", state_dict, prefix, local_metadata) -> None:
        for i in range(len(module.row_blocks)):
            del state_dict[f"{prefix}weight_blocks.{i}"]
        state_dict[prefix + "weight"] = module.weight.detach()

    @staticmethod
    def _load_full_weight(module: "RowBlockMaskedLinear", state_dict, prefix, local_metadata, strict,
                          missing_keys, unexpected_keys, error_msgs) -> None:
        weight = state_dict.pop(prefix + "weight", None)
        if weight is None:
            return  # reported as missing weight_blocks by load_state_dict itself
        expected = (module.out_features, module.in_features)
        if tuple(weight.shape) != expected:
            error_msgs.append(f"size mismatch for {prefix}weight: the checkpoint has {tuple(weight.shape)}, "
                              f"the model {expected}")
            return
        for i, b in enumerate(module.row_blocks):
            block = weight[b.start:b.end, :b.used]
            # contiguous, for load_state_dict(assign=True): a strided view would slow fused Adam
            state_dict[f"{prefix}weight_blocks.{i}"] = (block.t() if module.binary_input else block).contiguous()
