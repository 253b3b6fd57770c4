"""Data sets: the registry, users' own files (and their validation), and training data."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import genzoo
from conftest import SHARED_DATA, requires_shared_data
from genzoo.config import DataConfig
from genzoo.data import DATASETS, DataError, dataset_info, load_splits, make_training_data
from genzoo.data.files import load_user_file


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


# -- the registry ----------------------------------------------------------------------------------


def test_list_datasets():
    names = genzoo.list_datasets()
    assert names == sorted(DATASETS)
    assert {"digits", "mnist5k", "mnist", "binarized-mnist"} <= set(names)
    for name in names:
        info = dataset_info(name)
        assert info.name == name
        assert info.kind in ("binary", "grayscale")
        assert len(info.sizes) == 3 and all(s > 0 for s in info.sizes)


@pytest.mark.parametrize("name, shape", [("digits", (1, 8, 8)), ("mnist5k", (1, 28, 28))], ids=["digits", "mnist5k"])
def test_packaged_datasets(name, shape):
    info = DATASETS[name]
    assert info.data_shape == shape and info.kind == "binary"
    splits = {split: genzoo.load_dataset(name, split) for split in ("train", "valid", "test")}
    for split, size in zip(("train", "valid", "test"), info.sizes):
        x = splits[split]
        assert x.shape == (size, *shape)
        assert x.dtype == torch.float32
        assert _is_binary(x)
        assert 0.05 < x.mean().item() < 0.6  # neither blank nor saturated
    # the default split is train
    assert torch.equal(genzoo.load_dataset(name), splits["train"])
    # deterministic: the loader itself (not only the cache) gives the same arrays twice
    again = info.loader(None)
    for split in ("train", "valid", "test"):
        assert np.array_equal(again[split], splits[split].numpy())


def test_digits_splits_are_a_shuffled_partition():
    from sklearn.datasets import load_digits

    images = (load_digits().images > 8).astype(np.float32).reshape(-1, 64)
    splits = [genzoo.load_dataset("digits", s).reshape(-1, 64).numpy() for s in ("train", "valid", "test")]
    together = np.concatenate(splits)
    assert len(together) == len(images) == 1797
    # the same multiset of rows
    assert np.array_equal(np.unique(together, axis=0, return_counts=True)[1],
                          np.unique(images, axis=0, return_counts=True)[1])
    # shuffled: the packaged order is sorted by class in places; the train split must not be a prefix
    assert not np.array_equal(splits[0], images[: len(splits[0])])


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"unknown data set 'no-such-data'") as info:
        genzoo.load_dataset("no-such-data")
    message = _one_line(info)
    assert "digits" in message and ".npy" in message


def test_unknown_split():
    with pytest.raises(DataError, match=r"unknown split 'training'"):
        genzoo.load_dataset("digits", "training")


def test_load_splits_reports_the_kind():
    splits, kind = load_splits("digits")
    assert kind == "binary"
    assert set(splits) == {"train", "valid", "test"}


# -- users' files -------------------------------------------------------------------------------------


def _binary(n: int, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (n, d)).astype(np.uint8)


def test_user_npy_flat(tmp_path):
    data = _binary(40)
    path = tmp_path / "flat.npy"
    np.save(path, data)
    splits = {s: genzoo.load_dataset(str(path), s) for s in ("train", "valid", "test")}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [32, 4, 4]
    together = torch.cat([splits["train"], splits["valid"], splits["test"]]).numpy()
    assert together.shape == (40, 12)
    # the three splits are a permutation of the rows
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, data.astype(float).tolist()))
    _, kind = load_splits(str(path))
    assert kind == "binary"


def test_user_npy_images_get_a_channel(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, (30, 5, 6))
    path = tmp_path / "images.npy"
    np.save(path, data)
    x = genzoo.load_dataset(str(path), "valid")
    assert x.shape == (3, 1, 5, 6)
    _, kind = load_splits(str(path))
    assert kind == "grayscale"


def test_user_npy_bool(tmp_path):
    path = tmp_path / "bool.npy"
    np.save(path, _binary(10).astype(bool))
    assert _is_binary(genzoo.load_dataset(str(path)))


def test_user_npz_with_splits(tmp_path):
    arrays = {"train": _binary(20, seed=1), "valid": _binary(5, seed=2), "test": _binary(6, seed=3)}
    path = tmp_path / "splits.npz"
    np.savez(path, **arrays)
    for split, array in arrays.items():
        assert np.array_equal(genzoo.load_dataset(str(path), split).numpy(), array)


def test_user_npz_single_array(tmp_path):
    path = tmp_path / "single.npz"
    np.savez(path, anything=_binary(50))
    sizes = [len(genzoo.load_dataset(str(path), s)) for s in ("train", "valid", "test")]
    assert sizes == [40, 5, 5]


def test_user_csv(tmp_path):
    data = _binary(30, d=7)
    path = tmp_path / "data.csv"
    path.write_text("\n".join(",".join(map(str, row)) for row in data) + "\n\n")
    splits = load_user_file(path)
    together = np.concatenate([splits[s] for s in ("train", "valid", "test")])
    assert together.shape == (30, 7)
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, data.astype(float).tolist()))


def test_user_file_split_is_deterministic(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, _binary(40))
    a, b = load_user_file(path), load_user_file(path)
    for split in ("train", "valid", "test"):
        assert np.array_equal(a[split], b[split])


# invalid files: each gives a one-line DataError that names the problem and the row


def test_user_file_with_a_half(tmp_path):
    data = _binary(10).astype(np.float64)
    data[6, 4] = 0.5
    path = tmp_path / "half.npy"
    np.save(path, data)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path))
    message = _one_line(info)
    assert "row 6" in message and "0.5" in message and "column 4" in message and str(path) in message


def test_user_file_with_nan(tmp_path):
    data = _binary(10).astype(np.float64)
    data[3, 0] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, data)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path))
    assert "row 3 contains NaN" in _one_line(info)


def test_user_csv_with_nan(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("0,1,1\n1,0,0\n1,nan,0\n")
    with pytest.raises(DataError) as info:
        load_user_file(path)
    assert "row 2 contains NaN" in _one_line(info)


def test_user_csv_non_numeric_cell(tmp_path):
    path = tmp_path / "words.csv"
    path.write_text("0,1,1\n1,zero,0\n1,1,0\n")
    with pytest.raises(DataError) as info:
        load_user_file(path)
    message = _one_line(info)
    assert "row 1" in message and "'zero'" in message and "not a number" in message


def test_user_csv_header_is_refused(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("a,b,c\n0,1,1\n1,0,0\n1,1,0\n")
    with pytest.raises(DataError, match=r"row 0 has 'a'"):
        load_user_file(path)


def test_user_csv_ragged_rows(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("0,1,1\n1,0,0\n1,1\n0,0,0\n")
    with pytest.raises(DataError) as info:
        load_user_file(path)
    message = _one_line(info)
    assert "row 2 has 2 values" in message and "3" in message


def test_user_csv_empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="holds no data"):
        load_user_file(path)


def test_user_file_one_dimensional(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.array([0, 1, 1, 0, 1]))
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path))
    message = _one_line(info)
    assert "shape (5,)" in message and "one example per row" in message


def test_user_file_too_few_examples(tmp_path):
    path = tmp_path / "two.npy"
    np.save(path, _binary(2))
    with pytest.raises(DataError, match="at least 3"):
        load_user_file(path)


def test_user_file_missing(tmp_path):
    path = tmp_path / "missing.npy"
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path))
    assert "does not exist" in _one_line(info)


@pytest.mark.parametrize("suffix", [".txt", ".pt", ".NPY"])
def test_user_file_wrong_suffix(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    np.save(tmp_path / "data.npy", _binary(10))
    path.write_bytes((tmp_path / "data.npy").read_bytes())
    with pytest.raises(DataError) as info:
        load_user_file(path)
    message = _one_line(info)
    assert "unsupported file type" in message and suffix in message
    # through the registry an unknown suffix is an unknown data set name
    with pytest.raises(DataError):
        genzoo.load_dataset(str(path))


def test_user_file_that_is_not_an_npy(tmp_path):
    path = tmp_path / "garbage.npy"
    path.write_bytes(b"this is not numpy data" * 10)
    with pytest.raises(DataError) as info:
        load_user_file(path)
    assert "could not be read as .npy" in _one_line(info)


def test_user_npz_with_mismatched_splits(tmp_path):
    path = tmp_path / "mismatch.npz"
    np.savez(path, train=_binary(10, d=4), valid=_binary(3, d=5), test=_binary(3, d=4))
    with pytest.raises(DataError, match="shapes differ"):
        load_user_file(path)


def test_user_npz_with_two_unnamed_arrays(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=_binary(10), b=_binary(10))
    with pytest.raises(DataError, match="expected 'train', 'valid' and 'test', or a single array"):
        load_user_file(path)


def test_user_npz_invalid_value_names_the_split(tmp_path):
    valid = _binary(4).astype(np.int64)
    valid[2, 1] = 300
    path = tmp_path / "bad.npz"
    np.savez(path, train=_binary(10), valid=valid, test=_binary(4))
    with pytest.raises(DataError) as info:
        load_user_file(path)
    message = _one_line(info)
    assert "[valid]" in message and "row 2" in message and "300" in message


def test_user_file_of_strings(tmp_path):
    path = tmp_path / "strings.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"], ["e", "f"]]))
    with pytest.raises(DataError, match="expected numbers"):
        load_user_file(path)


def test_load_dataset_returns_a_fresh_tensor(tmp_path):
    path = tmp_path / "float32.npy"
    np.save(path, _binary(20).astype(np.float32))
    first = genzoo.load_dataset(str(path))
    expected = first.clone()
    first.fill_(7.0)  # e.g. a user's in-place preprocessing
    assert torch.equal(genzoo.load_dataset(str(path)), expected)


def test_a_rewritten_user_file_is_read_again(tmp_path):
    path = tmp_path / "changing.npy"
    np.save(path, np.zeros((20, 4), np.uint8))
    assert genzoo.load_dataset(str(path)).sum() == 0
    np.save(path, np.ones((20, 4), np.uint8))
    assert genzoo.load_dataset(str(path)).sum() > 0


def test_csv_blank_lines_inside_the_data_are_refused_with_their_row(tmp_path):
    word = tmp_path / "word.csv"
    word.write_text("0,1\n\n1,x\n0,0\n1,1\n")
    half = tmp_path / "half.csv"
    half.write_text("0,1\n\n1,0.5\n0,0\n1,1\n")
    with pytest.raises(DataError) as word_error:
        load_user_file(word)
    with pytest.raises(DataError) as half_error:
        load_user_file(half)
    # A blank line inside the data would shift every later row number: it is refused, named.
    assert "row 1 is empty" in str(word_error.value)
    assert "row 1 is empty" in str(half_error.value)
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("0,1\n1,0.5\n0,0\n\n\n")
    with pytest.raises(DataError, match="row 1 has value 0.5"):
        load_user_file(trailing)


# -- where data lives, and downloads (no network: urlopen is faked) ----------------------------------


def test_data_dir_precedence(tmp_path, monkeypatch):
    from genzoo.data import data_dir

    monkeypatch.delenv("GENZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache" / "genzoo"
    monkeypatch.setenv("GENZOO_DATA", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fake_urlopen(monkeypatch, data: bytes | None):
    import urllib.request

    def urlopen(url, timeout=None):
        if data is None:
            raise urllib.error.URLError("Temporary failure in name resolution")
        return _FakeResponse(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_download_checks_the_sha256(tmp_path, monkeypatch):
    from genzoo.data.download import find_or_download

    content = b"0 1 1 0\n" * 100
    _fake_urlopen(monkeypatch, content)
    path = find_or_download("file.amat", "http://example.invalid/file.amat", hashlib.sha256(content).hexdigest(),
                            tmp_path, "demo")
    assert path == tmp_path / "file.amat" and path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.amat"]

    _fake_urlopen(monkeypatch, b"tampered")
    with pytest.raises(DataError) as info:
        find_or_download("other.amat", "http://example.invalid/other.amat", "0" * 64, tmp_path, "demo")
    message = _one_line(info)
    assert "http://example.invalid/other.amat" in message and "the server sent a different file (sha256" in message
    assert "put other.amat there" in message and str(tmp_path) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.amat"], "a bad download was left behind"


def test_a_downloaded_file_is_readable_by_whoever_may_read_the_folder(tmp_path, monkeypatch):
    """A temporary file is created 0o600 and a rename keeps that: in a shared GENZOO_DATA folder,
    every other user was refused the downloaded data set."""
    from genzoo.data.download import find_or_download

    content = b"0 1\n" * 10
    _fake_urlopen(monkeypatch, content)
    previous = os.umask(0o022)
    try:
        path = find_or_download("f.amat", "http://example.invalid/f.amat", hashlib.sha256(content).hexdigest(),
                                tmp_path, "demo")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


class _CutResponse(_FakeResponse):
    """A response whose connection drops: ``cut`` bytes of the promised body, then an error or EOF."""

    def __init__(self, data: bytes, cut: int, error: Exception | None, length: str | None = None):
        super().__init__(data[:cut])
        self.headers = {"Content-Length": length if length is not None else str(len(data))}
        self.error = error

    def read(self, size=-1):
        block = super().read(size)
        if not block and self.error is not None:
            raise self.error
        return block


@pytest.mark.parametrize("case, expected", [
    ("short", "the transfer stopped after 100 of 400 bytes"),
    ("chunked cut", "IncompleteRead"),
    ("bad length", "the server sent a different file"),
    ("interrupted", None),
])
def test_a_broken_download_is_one_line_and_leaves_the_folder_clean(tmp_path, monkeypatch, case, expected):
    """A short body, a chunked response cut mid-stream (http.client.IncompleteRead, which used to end
    in a traceback), a malformed Content-Length (ValueError, likewise) and Ctrl-C during the
    transfer: none leaves a file or a temporary file behind."""
    import http.client
    import urllib.request

    from genzoo.data.download import find_or_download

    data = b"x" * 400
    response = {"short": lambda: _CutResponse(data, 100, None),
                "chunked cut": lambda: _CutResponse(data, 100, http.client.IncompleteRead(b"x" * 100)),
                "bad length": lambda: _CutResponse(data, 100, None, length="12abc"),
                "interrupted": lambda: _CutResponse(data, 100, KeyboardInterrupt())}[case]
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: response())
    if expected is None:
        with pytest.raises(KeyboardInterrupt):
            find_or_download("f.bin", "http://example.invalid/f.bin", "0" * 64, tmp_path, "demo")
    else:
        with pytest.raises(DataError) as info:
            find_or_download("f.bin", "http://example.invalid/f.bin", "0" * 64, tmp_path, "demo")
        message = _one_line(info)
        assert expected in message and "http://example.invalid/f.bin" in message and "put f.bin there" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("xdg", ["", "relative/cache"])
def test_an_empty_or_relative_xdg_cache_home_is_ignored(monkeypatch, xdg):
    """The XDG spec: a relative value is invalid; it used to give each working folder its own cache."""
    from genzoo.data import data_dir

    monkeypatch.delenv("GENZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert data_dir() == Path.home() / ".cache" / "genzoo"


def test_an_existing_file_is_not_downloaded_again(tmp_path, monkeypatch):
    from genzoo.data.download import find_or_download

    (tmp_path / "here.bin").write_bytes(b"local")
    _fake_urlopen(monkeypatch, None)  # any download attempt would fail
    assert find_or_download("here.bin", "http://example.invalid/x", "0" * 64, tmp_path, "demo").read_bytes() == b"local"


def test_download_failure_is_a_clear_data_error(tmp_path, monkeypatch):
    from genzoo.data.download import find_or_download

    _fake_urlopen(monkeypatch, None)
    with pytest.raises(DataError) as info:
        find_or_download("x.npz", "http://example.invalid/x.npz", "0" * 64, tmp_path, "mnist")
    message = _one_line(info)
    assert "'mnist'" in message and str(tmp_path) in message and "GENZOO_DATA" in message
    assert "from http://example.invalid/x.npz" in message  # where to fetch it by hand
    assert list(tmp_path.iterdir()) == []


def test_offline_binarized_mnist_names_every_file_that_would_do(tmp_path, monkeypatch):
    _fake_urlopen(monkeypatch, None)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset("binarized-mnist", "test", data_dir=str(tmp_path))
    message = _one_line(info)
    assert "binarized_mnist.npz (arrays train, valid, test)" in message
    assert "binarized_mnist_{train,valid,test}.amat" in message


def test_a_wrong_binarized_mnist_file_is_refused(tmp_path):
    np.savez(tmp_path / "binarized_mnist.npz", train=np.zeros((5, 784), np.uint8),
             valid=np.zeros((5, 784), np.uint8), test=np.zeros((5, 784), np.uint8))
    with pytest.raises(DataError, match="not the right one"):
        genzoo.load_dataset("binarized-mnist", "test", data_dir=str(tmp_path))


def test_a_wrong_mnist_file_is_refused(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((10, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"lacks the arrays \['x_test'\]"):
        genzoo.load_dataset("mnist", "test", data_dir=str(tmp_path))


# -- training data ---------------------------------------------------------------------------------


def test_training_data_without_binarization():
    data = make_training_data(DataConfig(name="digits"))
    assert not data.dynamic and data.kind == "binary"
    assert data.data_shape == (1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(data.train_epoch(generator), data.train_source)
    assert torch.equal(data.valid, genzoo.load_dataset("digits", "valid"))


def test_dynamic_binarization_of_binary_data_is_refused():
    with pytest.raises(DataError, match="already binary"):
        make_training_data(DataConfig(name="digits", binarization="dynamic"))


def test_dynamic_binarization_of_a_user_file(tmp_path):
    path = tmp_path / "gray.npy"
    pixels = np.random.default_rng(0).integers(0, 256, (60, 4, 4)).astype(np.uint8)
    np.save(path, pixels)
    data = make_training_data(DataConfig(name=str(path), binarization="dynamic", eval_binarization_seed=3))
    assert data.dynamic and data.kind == "binary"
    assert data.train_source.min() >= 0 and data.train_source.max() <= 1
    assert _is_binary(data.valid) and _is_binary(data.test)
    again = make_training_data(DataConfig(name=str(path), binarization="dynamic", eval_binarization_seed=3))
    assert torch.equal(data.valid, again.valid) and torch.equal(data.test, again.test)
    other = make_training_data(DataConfig(name=str(path), binarization="dynamic", eval_binarization_seed=4))
    assert not torch.equal(data.valid, other.valid)


# -- the offline MNIST files (optional) --------------------------------------------------------------


@requires_shared_data
def test_binarized_mnist_test_split():
    x = genzoo.load_dataset("binarized-mnist", "test", data_dir=str(SHARED_DATA))
    assert x.shape == (10_000, 1, 28, 28)
    assert _is_binary(x)
    assert x.mean().item() == pytest.approx(0.132512, abs=1e-5)
    # the README's orientation check: the mean image is not transposed (ink is in the centre rows)
    mean_image = x.mean(0)[0]
    assert mean_image[:, 14].sum() > mean_image[:, 2].sum()


@requires_shared_data
def test_mnist_dynamic_binarization():
    config = DataConfig(name="mnist", binarization="dynamic")
    data = make_training_data(config, str(SHARED_DATA))
    assert data.dynamic and data.kind == "binary"
    assert data.train_source.shape == (50_000, 1, 28, 28)
    assert data.valid.shape == data.test.shape == (10_000, 1, 28, 28)
    assert _is_binary(data.valid) and _is_binary(data.test)
    assert data.test.mean().item() == pytest.approx(0.1325, abs=2e-3)
    again = make_training_data(config, str(SHARED_DATA))
    assert torch.equal(data.valid, again.valid) and torch.equal(data.test, again.test)

    generator = torch.Generator().manual_seed(0)
    first, second = data.train_epoch(generator), data.train_epoch(generator)
    assert _is_binary(first) and _is_binary(second)
    assert not torch.equal(first, second)
    # a draw never sets a pixel whose gray level is 0
    assert not (first.bool() & (data.train_source == 0)).any()
    assert first.mean().item() == pytest.approx(0.1307, abs=2e-3)


@requires_shared_data
def test_mnist_is_grayscale_without_binarization():
    splits, kind = load_splits("mnist", str(SHARED_DATA))
    assert kind == "grayscale"
    assert splits["train"].shape == (50_000, 1, 28, 28)
    assert splits["valid"].shape == (10_000, 1, 28, 28)
    assert splits["test"].max().item() == 255 and splits["test"].min().item() == 0
