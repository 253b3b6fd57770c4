"""The built-in data sets are the published ones, bit for bit, wherever their files come from; and
a user's file is read as it is stored (byte order, exact values, encoding), never unpickled."""
from __future__ import annotations

import hashlib
import tempfile
import urllib.error
import urllib.request

import numpy as np
import pytest

import genzoo
from conftest import SHARED_DATA, requires_shared_data
from genzoo.data import DataError, sources


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the original files' formats ---------------------------------------------------------------------


def test_amat_bytes_are_larochelles_text_format():
    bits = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    assert sources.amat_bytes(bits) == b"0 1 1\n1 0 0\n"


def test_idx_bytes_are_lecuns_format():
    images = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    assert sources.idx_bytes(images) == bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])
    assert sources.idx_bytes(np.array([7, 9], np.uint8))[:4] == bytes([0, 0, 8, 1])


# -- binarized MNIST, checked against the .amat files' sha256 ---------------------------------------------


@pytest.fixture
def tiny_binarized_mnist(monkeypatch):
    """Binarized MNIST shrunk to 3/2/2 rows, with the sha256 of those rows' .amat text as the originals'."""
    rng = np.random.default_rng(0)
    splits = {split: (rng.random((n, 784)) < 0.2).astype(np.uint8) for split, n in
              {"train": 3, "valid": 2, "test": 2}.items()}
    monkeypatch.setattr(sources, "_BINARIZED_MNIST_SIZES", {s: len(a) for s, a in splits.items()})
    monkeypatch.setattr(sources, "_BINARIZED_MNIST_SHA256",
                        {s: hashlib.sha256(sources.amat_bytes(a)).hexdigest() for s, a in splits.items()})
    return splits


def _write_amat(folder, splits):
    for split, bits in splits.items():
        (folder / f"binarized_mnist_{split}.amat").write_bytes(sources.amat_bytes(bits))


def test_binarized_mnist_from_amat_files_is_saved_as_npz_and_read_back(tmp_path, tiny_binarized_mnist):
    _write_amat(tmp_path, tiny_binarized_mnist)
    first = sources.load_binarized_mnist(str(tmp_path))
    assert (tmp_path / "binarized_mnist.npz").is_file()
    for split in ("amat", "npz"):
        again = sources.load_binarized_mnist(str(tmp_path)) if split == "npz" else first
        assert all(np.array_equal(again[s].reshape(-1, 784), tiny_binarized_mnist[s]) for s in again)


def test_a_flipped_bit_in_binarized_mnist_npz_is_refused(tmp_path, tiny_binarized_mnist):
    splits = dict(tiny_binarized_mnist)
    splits["test"] = splits["test"].copy()
    splits["test"][1, 300] ^= 1
    np.savez_compressed(tmp_path / "binarized_mnist.npz", **splits)
    with pytest.raises(DataError) as info:
        sources.load_binarized_mnist(str(tmp_path))
    message = _one_line(info)
    assert "binarized_mnist.npz[test] differs from the original data set" in message and "delete it" in message


def test_a_transposed_binarized_mnist_npz_is_refused(tmp_path, tiny_binarized_mnist):
    splits = {s: a.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784).copy() for s, a in tiny_binarized_mnist.items()}
    np.savez_compressed(tmp_path / "binarized_mnist.npz", **splits)
    with pytest.raises(DataError, match=r"\[train\] differs from the original data set"):
        sources.load_binarized_mnist(str(tmp_path))


def test_a_binarized_mnist_npz_of_floats_is_refused(tmp_path, tiny_binarized_mnist):
    np.savez_compressed(tmp_path / "binarized_mnist.npz", **{s: a.astype(np.float32) for s, a in tiny_binarized_mnist.items()})
    with pytest.raises(DataError, match=r"\[train\] has dtype float32, expected uint8"):
        sources.load_binarized_mnist(str(tmp_path))


def test_a_damaged_amat_file_is_refused_and_no_npz_is_written(tmp_path, tiny_binarized_mnist):
    _write_amat(tmp_path, tiny_binarized_mnist)
    valid = tmp_path / "binarized_mnist_valid.amat"
    text = bytearray(valid.read_bytes())
    text[10] = ord("1") if text[10] == ord("0") else ord("0")
    valid.write_bytes(bytes(text))
    with pytest.raises(DataError) as info:
        sources.load_binarized_mnist(str(tmp_path))
    assert f"{valid} differs from the original data set" in _one_line(info)
    assert not (tmp_path / "binarized_mnist.npz").exists()


def test_a_truncated_amat_file_is_a_data_error_naming_it(tmp_path, tiny_binarized_mnist):
    _write_amat(tmp_path, tiny_binarized_mnist)
    train = tmp_path / "binarized_mnist_train.amat"
    train.write_bytes(train.read_bytes()[:-500])
    with pytest.raises(DataError) as info:
        sources.load_binarized_mnist(str(tmp_path))
    message = _one_line(info)
    assert message.startswith(f"{train} could not be read as .amat")


def test_amat_files_in_a_read_only_folder_are_used_without_saving_the_npz(tmp_path, tiny_binarized_mnist, monkeypatch):
    _write_amat(tmp_path, tiny_binarized_mnist)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # the folder cannot take a new file
    loaded = sources.load_binarized_mnist(str(tmp_path))
    assert np.array_equal(loaded["test"].reshape(-1, 784), tiny_binarized_mnist["test"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"binarized_mnist_{s}.amat" for s in tiny_binarized_mnist)


@requires_shared_data
def test_the_shared_binarized_mnist_passes_the_amat_checksums():
    loaded = sources.load_binarized_mnist(str(SHARED_DATA))
    assert {s: len(a) for s, a in loaded.items()} == {"train": 50_000, "valid": 10_000, "test": 10_000}


# -- 8-bit MNIST, checked against the IDX files' md5 ---------------------------------------------------


@pytest.fixture
def tiny_mnist(monkeypatch):
    """mnist.npz shrunk to 4 training and 2 test images, with their IDX md5 as the originals'."""
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), "y_train": rng.integers(0, 10, 4, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), "y_test": rng.integers(0, 10, 2, dtype=np.uint8)}
    monkeypatch.setattr(sources, "_MNIST_SHAPES", {k: a.shape for k, a in arrays.items()})
    monkeypatch.setattr(sources, "_MNIST_IDX_MD5", {k: hashlib.md5(sources.idx_bytes(a)).hexdigest() for k, a in arrays.items()})
    return arrays


def test_mnist_arrays_that_match_the_idx_checksums_load(tmp_path, tiny_mnist):
    np.savez(tmp_path / "mnist.npz", **tiny_mnist)  # not the download's bytes: the arrays are what is checked
    loaded = sources.load_mnist(str(tmp_path))
    assert np.array_equal(loaded["test"][:, 0], tiny_mnist["x_test"])
    assert np.array_equal(sources.load_mnist_labels(str(tmp_path))["test"], tiny_mnist["y_test"])


@pytest.mark.parametrize("damage, expected", [
    (lambda a: (a / 255.0).astype(np.float32), "has dtype float32, expected uint8"),  # already scaled to 0..1
    (lambda a: a.astype(np.int16), "has dtype int16, expected uint8"),
    (lambda a: np.where(a == a.max(), a - 1, a).astype(np.uint8), "differs from the original data set (its md5 is"),
])
def test_a_changed_mnist_image_array_is_refused(tmp_path, tiny_mnist, damage, expected):
    np.savez(tmp_path / "mnist.npz", **{**tiny_mnist, "x_train": damage(tiny_mnist["x_train"])})
    with pytest.raises(DataError) as info:
        sources.load_mnist(str(tmp_path))
    assert f"mnist.npz[x_train] {expected}" in _one_line(info)


def test_changed_mnist_labels_are_refused(tmp_path, tiny_mnist):
    np.savez(tmp_path / "mnist.npz", **{**tiny_mnist, "y_test": (tiny_mnist["y_test"] + 1) % 10})
    with pytest.raises(DataError, match=r"mnist.npz\[y_test\] differs from the original data set"):
        sources.load_mnist_labels(str(tmp_path))


@requires_shared_data
def test_the_shared_mnist_passes_the_idx_checksums():
    assert len(sources.load_mnist(str(SHARED_DATA))["train"]) == 50_000
    assert len(sources.load_mnist_labels(str(SHARED_DATA))["train"]) == 50_000


def _offline(url, timeout=None):
    raise urllib.error.URLError("Temporary failure in name resolution")


def test_a_change_of_genzoo_data_within_a_process_is_seen(tmp_path, tiny_mnist, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    np.savez(first / "mnist.npz", **tiny_mnist)
    monkeypatch.setenv("GENZOO_DATA", str(first))
    assert len(genzoo.load_dataset("mnist", "test")) == 2
    monkeypatch.setenv("GENZOO_DATA", str(second))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)  # the test must not reach the network
    with pytest.raises(DataError, match=str(second)):
        genzoo.load_dataset("mnist", "test")  # offline, and the folder is empty


# -- a user's file, read as it is stored ----------------------------------------------------------------


def test_a_big_endian_npy_is_read(tmp_path):
    bits = (np.random.default_rng(0).random((10, 16)) < 0.5).astype(">f4")
    np.save(tmp_path / "big.npy", bits)
    splits, kind = genzoo.data.load_splits(str(tmp_path / "big.npy"))
    assert kind == "binary"
    assert sum(float(s.sum()) for s in splits.values()) == float(bits.sum()) > 0


@pytest.mark.parametrize("value, shown", [(1.0000001, "1.0000001"), (254.9999999, "254.9999999"), (0.5, "0.5"),
                                          (1e30, "1e+30")])
def test_a_bad_value_is_shown_as_stored_not_rounded(tmp_path, value, shown):
    x = np.zeros((10, 4))
    x[7, 3] = value
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(tmp_path / "x.npy"))
    assert f"row 7 has value {shown} at column 3" in _one_line(info)


@pytest.mark.parametrize("dtype", ["m8[s]", "M8[s]"])
def test_time_arrays_are_refused_as_not_numbers(tmp_path, dtype):
    np.save(tmp_path / "t.npy", np.zeros((10, 4)).astype(dtype))
    with pytest.raises(DataError, match=r"has dtype (timedelta|datetime)64\[s\]; expected numbers"):
        genzoo.load_dataset(str(tmp_path / "t.npy"))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_an_object_array_is_refused_as_a_pickle_and_never_loaded(tmp_path, suffix):
    path = tmp_path / f"objects{suffix}"
    array = np.empty((10, 4), dtype=object)
    array[:] = 0
    (np.save if suffix == ".npy" else np.savez)(path, array)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path))
    assert "holds an array of Python objects (a pickle), which genzoo never loads" in _one_line(info)


def test_an_unreadable_npz_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    np.savez(path, np.zeros((10, 4)))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(np, "load", refuse)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path))
    assert _one_line(info) == f"{path} could not be read: Permission denied"


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff".encode() + b"0,1,1\r\n1,0,0\r\n1,1,1\r\n")
    assert genzoo.load_dataset(str(path), "train").shape[1:] == (3,)


def test_a_channels_last_array_is_refused_with_the_fix(tmp_path):
    np.save(tmp_path / "hwc.npy", np.zeros((10, 8, 8, 1), np.uint8))
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(tmp_path / "hwc.npy"))
    assert "looks channels-last (N, H, W, C)" in _one_line(info) and "np.moveaxis(x, -1, 1)" in str(info.value)
    np.save(tmp_path / "chw.npy", np.zeros((10, 1, 8, 8), np.uint8))
    assert genzoo.load_dataset(str(tmp_path / "chw.npy")).shape[1:] == (1, 8, 8)
