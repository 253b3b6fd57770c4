"""NICE: non-linear independent components estimation (Dinh, Krueger & Bengio 2015).

The data vector is split by a partition (I₁, I₂) of its dimensions, and an additive coupling
layer keeps one part and shifts the other by a function of it (section 3.2, eq. 4–5):

    z_{I₁} = x_{I₁},        z_{I₂} = x_{I₂} + m(x_{I₁}),        log |det ∂z/∂x| = 0,

inverted by x_{I₂} = z_{I₂} − m(z_{I₁}), whatever the network m. Layers alternate the partition
(here odd and even dimensions), so every dimension is changed. Being volume preserving, they are
followed by a diagonal scaling layer (section 3.3), z ← exp(s) ⊙ z with log |det| = Σ_d s_d.
The prior is a product of standard logistics (section 3.4) or of standard Gaussians:

    log p(x) = Σ_d log p_d(f_d(x)) + Σ_d s_d.

On MNIST the paper uses 4 coupling layers, each m an MLP of 5 hidden layers of 1000 ReLUs, a
logistic prior, and data dequantized and rescaled to [0, 1], so its published +1980.50 nats is
log p(y) for y = (x + u) / 256 (no logit); ``preprocess = "none"`` is the default here to match.

Reference: Dinh et al., "NICE: Non-linear Independent Components Estimation" (ICLR 2015 workshop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genzoo.config import require
from genzoo.models.base import register_model
from genzoo.models.flows.base import FlowConfig, FlowModel, StandardLogistic, StandardNormal
from genzoo.models.flows.transforms import AdditiveCoupling, Scaling, alternating_mask, mlp

__all__ = ["NICE", "NICEConfig"]


@dataclass
class NICEConfig(FlowConfig):
    #: additive coupling layers, and the width and depth of the MLP inside each
    num_couplings: int = 4
    hidden_size: int = 1000
    hidden_layers: int = 5
    #: the base distribution p_Z (the paper: logistic for MNIST)
    prior: Literal["logistic", "gaussian"] = "logistic"
    #: discrete data only: "logit" maps y ∈ (0, 1) to R first (Jacobian counted); "none" keeps y
    preprocess: Literal["logit", "none"] = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_couplings >= 1, f"nice: num_couplings must be at least 1, got {self.num_couplings}")
        require(self.hidden_size >= 1, f"nice: hidden_size must be positive, got {self.hidden_size}")
        require(self.hidden_layers >= 1, f"nice: hidden_layers must be at least 1, got {self.hidden_layers}")


@register_model("nice", NICEConfig)
class NICE(FlowModel):
    def __init__(self, data_shape: tuple[int, ...], config: NICEConfig | None = None):
        config = config or NICEConfig()
        super().__init__(data_shape, config)
        D = self.num_dims
        body = [
            AdditiveCoupling(alternating_mask(D, parity=i % 2), mlp(D, config.hidden_size, D, config.hidden_layers))
            for i in range(config.num_couplings)
        ]
        body.append(Scaling((D,)))
        self.set_flow(body, StandardLogistic() if config.prior == "logistic" else StandardNormal())
