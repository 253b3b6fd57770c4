"""Evaluation: negative log-likelihood in nats per example and bits per dimension.

bits/dim = NLL / (D · ln 2). For a model whose ``likelihood`` is "lower_bound" the NLL reported
is an upper bound, and is labelled so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from genzoo.models import GenerativeModel

__all__ = ["Evaluation", "evaluate", "evaluate_with_scores", "mean_log_prob"]


@dataclass
class Evaluation:
    split: str
    nll_nats: float
    bits_per_dim: float
    likelihood: str
    num_examples: int
    standard_error_nats: float
    #: the model's ``likelihood_detail``: which bound, how many draws ("" when nothing to add)
    likelihood_detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        relation = "=" if self.likelihood == "exact" else "≤"
        # one example has no spread to estimate a standard error from
        spread = f"± {self.standard_error_nats:.2f} s.e., " if math.isfinite(self.standard_error_nats) else ""
        examples = f"{self.num_examples} example{'' if self.num_examples == 1 else 's'}"
        return (
            f"{self.split} NLL {relation} {self.nll_nats:.2f} nats ({'≤ ' if relation == '≤' else ''}"
            f"{self.bits_per_dim:.4f} bits/dim, "
            f"{spread}likelihood: {self.likelihood}"
            f"{' (' + self.likelihood_detail + ')' if self.likelihood_detail else ''}, {examples})"
        )


@torch.no_grad()
def mean_log_prob(model: GenerativeModel, x: torch.Tensor, batch_size: int = 1000, progress: bool | None = False,
                  desc: str = "eval", score: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) for every row of x (or ``score(x)``, one of the model's own scoring methods),
    computed in batches in eval mode; returns (N,) on the CPU. With ``labels`` (a class-conditional
    model), log p(x | y) by ``model.log_prob(x, y=labels)``. ``progress``: a progress bar over the
    batches; None shows it only on a terminal."""
    score = model.log_prob if score is None else score
    was_training = model.training
    model.eval()
    try:
        with model.compute_threads():
            return _scores(model, x, batch_size, progress, desc, score, labels)
    finally:
        model.train(was_training)


def _scores(model: GenerativeModel, x: torch.Tensor, batch_size: int, progress: bool | None, desc: str,
            score: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
    disable = None if progress is None else not progress  # tqdm's None: shown on a terminal only
    if labels is not None:
        pairs = zip(x.split(batch_size), labels.split(batch_size))
        out = [model.log_prob(batch.to(model.device), y=y.to(model.device)).cpu()
               for batch, y in tqdm(pairs, desc=desc, disable=disable, leave=False,
                                    total=math.ceil(len(x) / batch_size))]
        return torch.cat(out)
    out = [score(batch.to(model.device)).cpu()
           for batch in tqdm(x.split(batch_size), desc=desc, disable=disable, leave=False)]
    return torch.cat(out)


def evaluate(model: GenerativeModel, x: torch.Tensor, split: str = "test", batch_size: int = 1000,
             progress: bool | None = False, validation: bool = False, labels: torch.Tensor | None = None) -> Evaluation:
    """NLL of ``model`` on ``x``; ``validation=True`` scores with ``model.validation_log_prob``
    (what the trainer uses each epoch: a cheaper bound for models whose test bound is costly);
    ``labels``: the class labels of x, for a class-conditional model (the NLL of x given y)."""
    return evaluate_with_scores(model, x, split, batch_size, progress, validation, labels)[0]


def evaluate_with_scores(model: GenerativeModel, x: torch.Tensor, split: str = "test", batch_size: int = 1000,
                         progress: bool | None = False, validation: bool = False,
                         labels: torch.Tensor | None = None) -> tuple[Evaluation, torch.Tensor]:
    """``evaluate``, and the per-example scores it averaged: log p(x) in nats, shape (N,), float64
    (a lower bound on it where ``model.likelihood`` is "lower_bound")."""
    if model.likelihood == "none":
        raise ValueError(f"model {getattr(model, 'name', type(model).__name__)!r} has no likelihood to evaluate")
    score = model.validation_log_prob if validation else model.log_prob
    detail = model.validation_detail if validation else model.likelihood_detail
    if labels is not None:
        detail = "; ".join(filter(None, [detail, "conditional on the class labels"]))
    log_p = mean_log_prob(model, x, batch_size, progress, desc=f"eval {split}", score=score, labels=labels).double()
    nll = float(-log_p.mean())
    stderr = float(log_p.std() / math.sqrt(len(log_p))) if len(log_p) > 1 else float("nan")
    summary = Evaluation(split, nll, nll / (model.num_dims * math.log(2)), model.likelihood, len(log_p), stderr, detail)
    return summary, log_p
