"""Autoregressive models by the chain rule: p(x) = Π_d p(x_d | x_<d)."""
from genzoo.models.autoregressive.base import BernoulliAutoregressive, CategoricalAutoregressive, ChainRuleModel
from genzoo.models.autoregressive.fvsbn import FVSBN, FVSBNConfig
from genzoo.models.autoregressive.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from genzoo.models.autoregressive.made import MADE, MADEConfig
from genzoo.models.autoregressive.nade import NADE, NADEConfig
from genzoo.models.autoregressive.pixelcnn import PixelCNN, PixelCNNConfig
from genzoo.models.autoregressive.transformer import Transformer, TransformerConfig

__all__ = [
    "BernoulliAutoregressive", "CategoricalAutoregressive", "ChainRuleModel",
    "FVSBN", "FVSBNConfig", "GatedPixelCNN", "GatedPixelCNNConfig", "MADE", "MADEConfig",
    "NADE", "NADEConfig", "PixelCNN", "PixelCNNConfig", "Transformer", "TransformerConfig",
]
