"""Layers shared across model families."""
from genzoo.nn.masked import MaskedLinear, RowBlock, RowBlockMaskedLinear, row_blocks, row_blocks_fraction
from genzoo.nn.masked_conv import ActivationCache, MaskedConv2d, pixelcnn_mask

__all__ = ["ActivationCache", "MaskedConv2d", "MaskedLinear", "RowBlock", "RowBlockMaskedLinear", "pixelcnn_mask",
           "row_blocks", "row_blocks_fraction"]
