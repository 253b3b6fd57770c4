"""Normalizing flows: exact log-likelihood by the change of variables, one-pass sampling.

    log p(x) = log p_Z(f(x)) + log |det ∂f/∂x|,        x = f⁻¹(z), z ~ p_Z.

``transforms`` holds the composable invertible pieces; ``nice``, ``realnvp`` and ``glow`` the
models; ``dequantization`` the uniform and variational (Flow++) bounds for discrete data.
"""
from genzoo.models.flows import transforms
from genzoo.models.flows.base import FlowConfig, FlowModel, StandardLogistic, StandardNormal
from genzoo.models.flows.dequantization import UniformDequantization, VariationalDequantization, dequantization_bound
from genzoo.models.flows.glow import Glow, GlowConfig
from genzoo.models.flows.nice import NICE, NICEConfig
from genzoo.models.flows.realnvp import RealNVP, RealNVPConfig

__all__ = [
    "transforms", "FlowConfig", "FlowModel", "StandardLogistic", "StandardNormal",
    "UniformDequantization", "VariationalDequantization", "dequantization_bound",
    "Glow", "GlowConfig", "NICE", "NICEConfig", "RealNVP", "RealNVPConfig",
]
