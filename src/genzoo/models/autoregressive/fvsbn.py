"""FVSBN: the fully visible sigmoid belief network (Neal 1992; Frey 1998), a logistic
regression per dimension on the dimensions before it:

    p(x_d = 1 | x_<d) = σ(b_d + Σ_{j<d} W_dj x_j),   W strictly lower triangular.

``log_prob`` is one masked matrix product; sampling updates one logit per step in O(d), so a
whole sample costs O(D²) — the cost of a single forward pass.

References: Frey, "Graphical Models for Machine Learning and Digital Communication" (1998);
Larochelle & Murray, "The Neural Autoregressive Distribution Estimator" (AISTATS 2011), Table 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genzoo.models.autoregressive.base import BernoulliAutoregressive
from genzoo.models.base import register_model
from genzoo.nn import MaskedLinear

__all__ = ["FVSBN", "FVSBNConfig"]


@dataclass
class FVSBNConfig:
    """FVSBN has no hyperparameters beyond the data shape."""


@register_model("fvsbn", FVSBNConfig)
class FVSBN(BernoulliAutoregressive):
    def __init__(self, data_shape: tuple[int, ...], config: FVSBNConfig | None = None):
        super().__init__(data_shape)
        self.config = config or FVSBNConfig()
        strictly_lower = torch.ones(self.num_dims, self.num_dims).tril(-1)
        self.linear = MaskedLinear(self.num_dims, self.num_dims, mask=strictly_lower)
        nn.init.zeros_(self.linear.weight)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    @torch.no_grad()
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear.masked_weight(), self.linear.bias
        x = torch.zeros_like(u)
        for d in range(self.num_dims):
            logit = bias[d] + x[:, :d] @ weight[d, :d]
            x[:, d] = (u[:, d] < torch.sigmoid(logit)).to(x.dtype)
        return x
