"""Layers shared across model families."""
from genzoo.nn.masked import MaskedLinear
from genzoo.nn.masked_conv import ActivationCache, MaskedConv2d, pixelcnn_mask

__all__ = ["ActivationCache", "MaskedConv2d", "MaskedLinear", "pixelcnn_mask"]
