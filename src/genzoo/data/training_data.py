"""The data a training run sees: a per-epoch train set and fixed valid/test sets.

With ``binarization = "dynamic"`` (for 8-bit data), the train set is a fresh Bernoulli draw
x ~ Bernoulli(pixel / 255) each epoch, and the valid and test sets are one draw each from a
recorded seed, so their scores are comparable across runs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from genzoo.config import DataConfig
from genzoo.data.download import DataError
from genzoo.data.registry import load_labels, load_splits

__all__ = ["TrainingData", "make_training_data"]


@dataclass
class TrainingData:
    train_source: torch.Tensor  # binary data, or pixel probabilities when dynamic
    valid: torch.Tensor
    test: torch.Tensor
    kind: str  # kind of what the model sees: "binary" or "grayscale"
    dynamic: bool
    #: class labels of each split (long tensors), loaded only for class-conditional models
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.valid.shape[1:])

    def fingerprint(self) -> str:
        """sha256 of the splits as a run sees them (the train source, valid, test), kept in its
        checkpoints so that a later eval or resume can tell that a data file has changed since."""
        digest = hashlib.sha256()
        for split in (self.train_source, self.valid, self.test):
            digest.update(repr(tuple(split.shape)).encode())
            digest.update(split.detach().cpu().contiguous().numpy())
        return digest.hexdigest()

    def train_epoch(self, generator: torch.Generator) -> torch.Tensor:
        """The training examples for one epoch (a fresh binarization when dynamic)."""
        if self.dynamic:
            return torch.bernoulli(self.train_source, generator=generator)
        return self.train_source


def make_training_data(config: DataConfig, data_dir: str | None = None, labels: bool = False) -> TrainingData:
    """The splits of ``config``'s data set; ``labels=True`` adds each split's class labels (a
    DataError if the set has none). Binarization keeps the rows in order, so labels still match."""
    data = _make_training_data(config, data_dir)
    if labels:
        y = load_labels(config.name, data_dir)
        data.train_labels, data.valid_labels, data.test_labels = y["train"], y["valid"], y["test"]
    return data


def _make_training_data(config: DataConfig, data_dir: str | None = None) -> TrainingData:
    splits, kind = load_splits(config.name, data_dir)
    if config.binarization == "none":
        return TrainingData(splits["train"], splits["valid"], splits["test"], kind, dynamic=False)
    if kind != "grayscale":
        raise DataError(f"data set {config.name!r} is already binary; dynamic binarization needs 8-bit data")
    probabilities = {s: x / 255.0 for s, x in splits.items()}
    generator = torch.Generator().manual_seed(config.eval_binarization_seed)
    valid = torch.bernoulli(probabilities["valid"], generator=generator)
    test = torch.bernoulli(probabilities["test"], generator=generator)
    return TrainingData(probabilities["train"], valid, test, "binary", dynamic=True)
