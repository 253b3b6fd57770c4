"""Autoregressive models by the chain rule; for binary vectors:

    log p(x) = Σ_d log p(x_d | x_<d),   p(x_d = 1 | x_<d) = σ(ℓ_d(x_<d)),

where the order of the dimensions is ``generation_order`` and each model computes all D logits
ℓ_d in one pass (``conditional_logits``). Sampling draws uniforms u ∈ [0, 1)^D and sets
x_d = 1[u_d < σ(ℓ_d)] dimension by dimension; feeding the same u to two samplers must give
the same x, which is how the fast samplers are tested against ``sample_naive``.

``chain_rule_conditionals`` names the conditionals a model offers for its own distribution
("binary", "categorical" or ""); generic tools (speculative sampling, the generic autoregressive
tests) go by it rather than by the model's class, since a model may decide per instance
(PixelCNN and Gated PixelCNN: binary or 8-bit data; a class-conditional Gated PixelCNN: none).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.nn import functional as F

from genzoo.models.base import GenerativeModel, sampler

__all__ = ["ChainRuleModel", "BernoulliAutoregressive", "CategoricalAutoregressive"]


def uniforms_sampler(method: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A sampler that takes the uniforms u (B, D) fixing its draws (``sample_naive``,
    ``sample_from_uniforms``): as ``sampler`` (eval mode, no autograd), with u checked (its shape,
    flat or the data's), moved to the model's device and dtype (another dtype failed inside a layer),
    and no uniforms giving no samples."""

    @functools.wraps(method)
    def with_checked_uniforms(self: "ChainRuleModel", u: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not isinstance(u, torch.Tensor) or not u.is_floating_point():
            raise TypeError(f"uniforms must be a floating-point tensor, got {getattr(u, 'dtype', type(u).__name__)}")
        if u.dim() > 2 and tuple(u.shape[1:]) == self.data_shape:
            u = u.reshape(len(u), self.num_dims)
        if u.dim() != 2 or u.shape[1] != self.num_dims:
            raise ValueError(f"uniforms have shape {tuple(u.shape)}; this model draws (B, {self.num_dims})")
        u = u.to(self.device, self._dtype())
        if len(u) == 0:
            return u.new_zeros(0, self.num_dims)
        return method(self, u, *args, **kwargs)

    return sampler(with_checked_uniforms)


class ChainRuleModel(GenerativeModel):
    """What every chain-rule model shares: the generation order, the uniforms that drive
    sampling, and the reference sampler, which draws one dimension at a time with
    ``draw_dimension`` after a full pass of the network."""

    likelihood = "exact"

    @property
    def chain_rule_conditionals(self) -> str:
        """Which conditionals p(x_d | x_<d), computed from x alone in one pass, define the model's
        distribution by the chain rule:

        * "binary": ``conditional_logits(x)``, the logits (B, D) of p(x_d = 1 | x_<d);
        * "categorical": ``conditional_log_probs(x)``, log p(x_d = v | x_<d) of shape (B, D, V);
        * "": none, e.g. a class-conditional model, whose likelihood without a label is a mixture
          over classes.

        A mixture over orderings (MADE with num_masks > 1) offers its active ordering's
        conditionals, whose product is then one component of its ``log_prob``, not all of it."""
        return ""

    def generation_order(self) -> torch.Tensor:
        """The dimensions in the order they are generated (natural order unless overridden)."""
        return torch.arange(self.num_dims)

    def draw_dimension(self, x: torch.Tensor, d: int, u_d: torch.Tensor) -> torch.Tensor:
        """x_d drawn from p(x_d | x_<d) by the uniforms u_d (B,), given x (B, D) with x_<d filled in."""
        raise NotImplementedError

    def draw_uniforms(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        u = torch.rand(n, self.num_dims, generator=generator, device=device)
        return u.to(self.device, self._dtype())

    @torch.no_grad()
    def _sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n samples with the model's fastest exact sampler."""
        return self.unflatten(self.sample_from_uniforms(self.draw_uniforms(n, generator)))

    @uniforms_sampler
    def sample_from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """The fast sampler; models override it. Must equal ``sample_naive(u)``."""
        return self.sample_naive(u)

    @uniforms_sampler
    def sample_naive(self, u: torch.Tensor) -> torch.Tensor:
        """Reference sampler: one full network pass per dimension (D passes)."""
        x = torch.zeros_like(u)
        for d in self.generation_order().tolist():
            x[:, d] = self.draw_dimension(x, d, u[:, d])
        return x


class BernoulliAutoregressive(ChainRuleModel):
    support = "binary"

    @property
    def chain_rule_conditionals(self) -> str:
        return "binary"

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ℓ_d of p(x_d = 1 | x_<d) for every d, shape (B, D), from flat x of shape (B, D)."""
        raise NotImplementedError

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conditional_logits(x)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)

    def draw_dimension(self, x: torch.Tensor, d: int, u_d: torch.Tensor) -> torch.Tensor:
        return (u_d < torch.sigmoid(self.conditional_logits(x)[:, d])).to(x.dtype)


class CategoricalAutoregressive(ChainRuleModel):
    """The chain rule over V-valued dimensions (8-bit pixels: V = 256):

        log p(x) = Σ_d log p(x_d | x_<d),   p(x_d = v | x_<d) = softmax(ℓ_d(x_<d))_v.

    Sampling by inverse CDF from uniforms u ∈ [0, 1)^D: x_d = #{v < V − 1 : F_d(v) ≤ u_d} with
    F_d(v) = Σ_{w ≤ v} p(x_d = w | x_<d); the same u give the same x for every exact sampler."""

    support = "grayscale"
    num_values: int = 256

    @property
    def chain_rule_conditionals(self) -> str:
        return "categorical"

    def conditional_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_d = v | x_<d) for every d and v, shape (B, D, V), from flat x of shape (B, D)."""
        raise NotImplementedError

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = self.conditional_log_probs(x)
        return log_probs.gather(2, x.long().unsqueeze(2)).squeeze(2).sum(dim=1)

    @staticmethod
    def inverse_cdf(log_probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The value v with F(v − 1) ≤ u < F(v), from (B, V) log-probabilities and (B,) uniforms."""
        cdf = torch.cumsum(log_probs.exp(), dim=-1)
        index = (cdf[..., :-1] <= u.unsqueeze(-1)).sum(dim=-1)  # the last value takes F's round-off
        return index.to(u.dtype)

    def draw_dimension(self, x: torch.Tensor, d: int, u_d: torch.Tensor) -> torch.Tensor:
        return self.inverse_cdf(self.conditional_log_probs(x)[:, d], u_d)
