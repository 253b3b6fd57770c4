"""FVSBN: the fully visible sigmoid belief network (Neal 1992; Frey 1998), a logistic
regression per dimension on the dimensions before it:

    p(x_d = 1 | x_<d) = σ(b_d + Σ_{j<d} W_dj x_j),   W strictly lower triangular,

where "<" is the generation order: raster (the papers'), or ``order = "spiral"`` or
``"subgrid-spiral"`` (see ``orders.py``), which give the later pixels more of their neighbours;
W is then strictly lower triangular once its rows and columns are put in that order.

``log_prob`` is one masked matrix product (on the CPU, for binary x, sums of the weight columns
over the ones of x: ``genzoo.nn.masked``); sampling updates one logit per step in O(d), so a
whole sample costs O(D²) — the cost of a single forward pass.

References: Frey, "Graphical Models for Machine Learning and Digital Communication" (1998);
Larochelle & Murray, "The Neural Autoregressive Distribution Estimator" (AISTATS 2011), Table 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genzoo.models.autoregressive.base import BernoulliAutoregressive, uniforms_sampler
from genzoo.models.autoregressive.orders import OrderName, dimension_order
from genzoo.models.base import register_model
from genzoo.nn import MaskedLinear

__all__ = ["FVSBN", "FVSBNConfig"]


@dataclass
class FVSBNConfig:
    #: the order of the chain rule (see ``orders.py``)
    order: OrderName = "raster"
    #: on the CPU, sum the weight columns over the ones of x instead of multiplying
    #: (genzoo.nn.masked's docstring); False multiplies
    binary_input_sums: bool = True


@register_model("fvsbn", FVSBNConfig)
class FVSBN(BernoulliAutoregressive):
    def __init__(self, data_shape: tuple[int, ...], config: FVSBNConfig | None = None):
        super().__init__(data_shape)
        self.config = config or FVSBNConfig()
        self.register_buffer("order", dimension_order(self.config.order, self.data_shape), persistent=False)
        position = torch.empty_like(self.order)
        position[self.order] = torch.arange(self.num_dims)
        earlier = position.unsqueeze(0) < position.unsqueeze(1)  # earlier[d, j]: x_j comes before x_d
        self.linear = MaskedLinear(self.num_dims, self.num_dims, mask=earlier.float(),
                                   binary_input=self.config.binary_input_sums)
        nn.init.zeros_(self.linear.weight)

    def generation_order(self) -> torch.Tensor:
        return self.order.cpu()

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    @uniforms_sampler
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        # in generation order the weights are strictly lower triangular: step k needs x_<k only
        weight, bias, u_in_order = self.linear.masked_weight(), self.linear.bias, u
        permuted = self.config.order != "raster"  # raster is the stored order: no copies
        if permuted:
            weight, bias, u_in_order = weight[self.order][:, self.order], bias[self.order], u[:, self.order]
        x_in_order = torch.zeros_like(u)
        for k in range(self.num_dims):
            logit = bias[k] + x_in_order[:, :k] @ weight[k, :k]
            x_in_order[:, k] = (u_in_order[:, k] < torch.sigmoid(logit)).to(u.dtype)
        if not permuted:
            return x_in_order
        x = torch.empty_like(u)
        x[:, self.order] = x_in_order
        return x
