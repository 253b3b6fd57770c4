"""Autoregressive models of binary data: p(x) = Π_d p(x_d | x_<d)."""
from genzoo.models.autoregressive.base import BernoulliAutoregressive
from genzoo.models.autoregressive.fvsbn import FVSBN, FVSBNConfig
from genzoo.models.autoregressive.made import MADE, MADEConfig
from genzoo.models.autoregressive.nade import NADE, NADEConfig
from genzoo.models.autoregressive.pixelcnn import PixelCNN, PixelCNNConfig  # noqa: F401
from genzoo.models.autoregressive.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig  # noqa: F401
from genzoo.models.autoregressive.transformer import Transformer, TransformerConfig  # noqa: F401

__all__ = ["BernoulliAutoregressive", "FVSBN", "FVSBNConfig", "MADE", "MADEConfig", "NADE", "NADEConfig"]
