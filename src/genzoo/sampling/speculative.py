"""Speculative sampling of an autoregressive target p with a cheap draft q of the same dimensions
and generation order (Leviathan, Kalman & Matias 2023; Chen et al. 2023).

Each round, for every sample at its own step t (in generation order):

1. the draft proposes x̃_t, …, x̃_{t+γ−1}, each from its own conditional q(· | x_<t, x̃ before it);
2. the target scores all of them in ONE call: its conditionals on the batch with the proposals
   filled in give p(· | x_<t, x̃_t … x̃_{t+j−1}) for j = 0 … γ at once;
3. proposal j is accepted with probability min(1, p(x̃_{t+j}) / q(x̃_{t+j})); at the first
   rejection, x_{t+j} is drawn from the residual norm(max(0, p − q)) and the rest discarded (for
   a binary dimension the residual puts all its mass on the value that was not proposed: the
   rejected value had p < q, so the other has p > q);
4. if all γ are accepted, one more dimension is drawn from p(· | x_<t+γ), which step 2 computed.

Every dimension is then exactly distributed as p given the ones before it, whatever q is: the
draft only changes the speed, through the acceptance rate. Rows advance by different amounts, so
each row keeps its own step; a row that has reached D leaves the batch.

A model qualifies by its ``chain_rule_conditionals`` (``genzoo.models.autoregressive.ChainRuleModel``):
binary models ("binary": ``conditional_logits``) and V-valued ones ("categorical":
``conditional_log_probs``, 8-bit pixels) are both handled, as distributions over V values per
dimension (V = 2 for binary data); a model without them ("", or not a chain-rule model) is refused.

References: Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative
Decoding" (ICML 2023); Chen et al., "Accelerating Large Language Model Decoding with Speculative
Sampling" (2023).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from genzoo.models.base import GenerativeModel, evaluation_mode

__all__ = ["SpeculativeStats", "check_speculative_pair", "speculative_sample"]


@dataclass
class SpeculativeStats:
    #: rounds, each one call of the target on the rows still running
    target_calls: int = 0
    draft_calls: int = 0
    #: draft proposals made and accepted, summed over rows
    proposed: int = 0
    accepted: int = 0
    #: dimensions generated, summed over rows (n · D at the end)
    dimensions: int = 0
    #: (row, round) pairs: how many times some row was advanced
    row_rounds: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def dimensions_per_target_call(self) -> float:
        """Mean dimensions a row gains per round (1 for plain sampling, up to γ + 1)."""
        return self.dimensions / self.row_rounds if self.row_rounds else float("nan")

    def __add__(self, other: "SpeculativeStats") -> "SpeculativeStats":
        """The statistics of two draws together (e.g. two batches of samples)."""
        return SpeculativeStats(**{name: getattr(self, name) + getattr(other, name) for name in asdict(self)})

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate,
                "dimensions_per_target_call": self.dimensions_per_target_call}


def _name(model: GenerativeModel) -> str:
    return getattr(model, "name", type(model).__name__)


def _kind(model: GenerativeModel) -> str:
    """"binary" or "categorical": which conditionals define the model's distribution; "" for
    none (a model that is not a chain-rule model has no ``chain_rule_conditionals``)."""
    return getattr(model, "chain_rule_conditionals", "")


def check_speculative_pair(target: GenerativeModel, draft: GenerativeModel) -> None:
    """Refuse, with a one-line ValueError, a pair that speculative sampling cannot use exactly."""
    for role, model in (("target", target), ("draft", draft)):
        if getattr(model, "num_classes", 0):  # checked first: such a model offers no conditionals either
            raise ValueError(f"speculative sampling of class-conditional models is not supported (the {role} {_name(model)!r})")
        if not _kind(model):
            raise ValueError(
                f"speculative sampling needs autoregressive models of binary or 8-bit data; the {role} "
                f"{_name(model)!r} is not one"
            )
    masks = int(getattr(getattr(target, "config", None), "num_masks", 1))
    if masks > 1:
        # its log_prob is a mixture over masks, not the product of the active mask's conditionals
        raise ValueError(
            f"speculative sampling needs a target whose conditionals define its distribution; "
            f"the target {_name(target)!r} is a {masks}-mask mixture (use num_masks = 1)"
        )
    if target.data_shape != draft.data_shape:
        raise ValueError(f"draft data shape {draft.data_shape} differs from the target's {target.data_shape}")
    if _kind(target) != _kind(draft):
        raise ValueError(f"the draft models {draft.support} data and the target {target.support} data")
    if not torch.equal(target.generation_order().cpu(), draft.generation_order().cpu()):
        raise ValueError("the draft generates the dimensions in another order than the target")


def conditional_probs(model: GenerativeModel, x: torch.Tensor) -> torch.Tensor:
    """p(x_d = v | x_<d) for every dimension d and value v, shape (B, D, V); V = 2 for binary."""
    if _kind(model) == "binary":
        return _binary_probs(model.conditional_logits(x))
    return model.conditional_log_probs(x).exp()


def _binary_probs(logits: torch.Tensor) -> torch.Tensor:
    p_one = torch.sigmoid(logits)
    return torch.stack([1 - p_one, p_one], dim=-1)


def _draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The value v with W(v − 1) ≤ u·W(V − 1) < W(v), W the cumulative sum of non-negative,
    possibly unnormalized ``weights`` (B, V); u (B,) uniform. The last value takes round-off."""
    cdf = torch.cumsum(weights, dim=-1)
    return (cdf[..., :-1] <= (u * cdf[..., -1])[..., None]).sum(dim=-1)


@torch.no_grad()
def speculative_sample(
    target: GenerativeModel,
    draft: GenerativeModel,
    n: int,
    gamma: int = 4,
    generator: torch.Generator | None = None,
    cached: bool = True,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Draw n exact samples of ``target`` (shape (n, *data_shape)) with ``draft`` proposing
    ``gamma`` dimensions per round; returns the samples and the statistics.

    A binary target with a ``cached_verifier(n, gamma)`` (the Transformer's KV cache) scores each
    round's γ + 1 new positions against its cache instead of a full ``conditional_logits`` pass
    (``cached=False`` forces the full pass); the logits, and so the samples, are the same. A γ
    above the number of dimensions D is taken as D, the most a round can use. Both models sample
    in eval mode, whatever mode they are in (each is back in its own mode afterwards)."""
    check_speculative_pair(target, draft)
    if gamma < 1:
        raise ValueError(f"gamma must be at least 1, got {gamma}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    # a round can use at most D proposals, and a larger γ would only size the buffers and the
    # KV cache for steps that never come; eval mode: dropout would move the target off its p_θ
    with evaluation_mode(target), evaluation_mode(draft):
        return _sample_in_rounds(target, draft, n, min(gamma, target.num_dims), generator, cached)


def _sample_in_rounds(target: GenerativeModel, draft: GenerativeModel, n: int, gamma: int,
                      generator: torch.Generator | None, cached: bool) -> tuple[torch.Tensor, SpeculativeStats]:
    device, dtype = target.device, target._dtype()
    D = target.num_dims
    order = target.generation_order().to(device)
    gen_device = generator.device if generator is not None else device

    def uniforms(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=gen_device).to(device, dtype)

    x = torch.zeros(n, D, device=device, dtype=dtype)
    position = torch.zeros(n, dtype=torch.long, device=device)  # each row's next step
    stats = SpeculativeStats()
    steps = torch.arange(gamma + 1, device=device)
    use_verifier = cached and _kind(target) == "binary" and hasattr(target, "cached_verifier")
    verifier = target.cached_verifier(n, gamma) if use_verifier else None
    draft_dtype = draft._dtype()
    while True:
        rows = (position < D).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        xr, t = x[rows], position[rows]
        B = len(rows)
        k = t[:, None] + steps  # (B, γ+1): the steps scored this round
        valid = k < D
        dims = order[k.clamp(max=D - 1)]  # the dimensions those steps set
        # 1. the draft proposes γ dimensions, each from its own conditional
        proposals = torch.zeros(B, gamma, dtype=torch.long, device=device)
        q_proposed = torch.ones(B, gamma, device=device, dtype=dtype)
        q_all = []
        for j in range(gamma):
            if not valid[:, j].any():
                q_all.append(q_all[-1])  # never used: no row has step t + j
                continue
            q = conditional_probs(draft, xr.to(draft_dtype)).to(dtype)
            stats.draft_calls += 1
            q = q[torch.arange(B, device=device), dims[:, j]]  # (B, V)
            q_all.append(q)
            proposals[:, j] = _draw(q, uniforms(B))
            q_proposed[:, j] = q.gather(1, proposals[:, j:j + 1]).squeeze(1)
            # a step past the end is never written (its dimension is clamped onto the last step's)
            column = dims[:, j:j + 1]
            xr.scatter_(1, column, torch.where(valid[:, j:j + 1], proposals[:, j:j + 1].to(dtype), xr.gather(1, column)))
        # 2. the target scores every proposal, and the step after them, in one call: (B, γ+1, V)
        if verifier is not None:  # inputs of steps t … t+γ: the values at steps t−1 … t+γ−1
            previous = xr.gather(1, order[(k - 1).clamp(0, D - 1)])
            p = _binary_probs(verifier.logits(previous, rows, t))
        else:
            probs = conditional_probs(target, xr)
            p = probs.gather(1, dims[..., None].expand(-1, -1, probs.shape[-1]))
        stats.target_calls += 1
        # 3. accept x̃ with probability min(1, p(x̃)/q(x̃)): r·q(x̃) < p(x̃) for r ~ U[0, 1)
        p_proposed = p[:, :gamma].gather(2, proposals[..., None]).squeeze(2)
        accept = (uniforms(B, gamma) * q_proposed < p_proposed) & valid[:, :gamma]
        num_accepted = accept.long().cumprod(dim=1).sum(dim=1)  # leading accepted proposals
        num_valid = valid[:, :gamma].sum(dim=1)
        stats.proposed += int(num_valid.sum())
        stats.accepted += int(num_accepted.sum())
        # 4. the step after the accepted ones: from the residual max(0, p − q) after a rejection,
        #    from p when all were accepted; past the end there is nothing to draw
        rejected = num_accepted < num_valid
        at = num_accepted[:, None]
        p_next = p.gather(1, at[..., None].expand(-1, 1, p.shape[-1])).squeeze(1)  # (B, V)
        q_next = torch.stack(q_all, dim=1).gather(1, at.clamp(max=gamma - 1)[..., None].expand(-1, 1, p.shape[-1])).squeeze(1)
        residual = (p_next - q_next).clamp(min=0)
        # a rejection needs p(x̃) < q(x̃), so the residual has mass; the guard is for round-off
        usable = rejected & (residual.sum(dim=1) > 0)
        value = _draw(torch.where(usable[:, None], residual, p_next), uniforms(B)).to(dtype)
        final_step = t + num_accepted
        writes = final_step < D
        final_dims = dims.gather(1, at).squeeze(1)
        current = xr.gather(1, final_dims[:, None]).squeeze(1)
        xr.scatter_(1, final_dims[:, None], torch.where(writes, value, current)[:, None])
        advance = num_accepted + writes.long()
        stats.dimensions += int(advance.sum())
        stats.row_rounds += B
        x[rows] = xr
        position[rows] = t + advance
    return target.unflatten(x), stats
