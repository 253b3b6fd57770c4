"""Layers shared across model families."""
from genzoo.nn.masked import MaskedLinear

__all__ = ["MaskedLinear"]
