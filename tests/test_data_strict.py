"""Data, held to exact values: a user file's kind over all of its splits, dynamic binarization's
probabilities (pixel / 255) and its reproducible draws, the fingerprint's sensitivity to every
split and to shape, and the labels that make_training_data attaches to each split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, requires_shared_data
from genzoo.config import DataConfig
from genzoo.data import load_labels, load_splits, make_training_data
from genzoo.data.training_data import TrainingData


def test_a_file_with_binary_train_and_8bit_test_splits_is_8bit(tmp_path):
    """The kind of a user's .npz is that of ALL its splits: a binary train split with 8-bit
    valid/test splits is 8-bit data (a binary model could not score the test split)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.npz"
    np.savez(path, train=rng.integers(0, 2, (10, 4)), valid=rng.integers(0, 256, (3, 4)),
             test=rng.integers(0, 256, (3, 4)))
    _, kind = load_splits(str(path))
    assert kind == "grayscale"
    # and the other way round: an 8-bit train split with binary valid/test
    path2 = tmp_path / "mixed2.npz"
    np.savez(path2, train=rng.integers(0, 256, (10, 4)), valid=rng.integers(0, 2, (3, 4)),
             test=rng.integers(0, 2, (3, 4)))
    assert load_splits(str(path2))[1] == "grayscale"
    path3 = tmp_path / "binary.npz"
    np.savez(path3, train=rng.integers(0, 2, (10, 4)), valid=rng.integers(0, 2, (3, 4)), test=rng.integers(0, 2, (3, 4)))
    assert load_splits(str(path3))[1] == "binary"


@pytest.fixture
def gray_file(tmp_path):
    path = tmp_path / "gray.npy"
    pixels = np.random.default_rng(5).integers(0, 256, (100, 3, 3)).astype(np.uint8)
    pixels[:, 0, 0] = 255  # always on under x ~ Bernoulli(pixel / 255)
    pixels[:, 0, 1] = 0  # always off
    np.save(path, pixels)
    return str(path)


def test_dynamic_binarization_uses_pixel_over_255(gray_file):
    """Dynamic binarization draws x ~ Bernoulli(pixel / 255): the train source is exactly the
    8-bit splits divided by 255, so a white pixel (255) is 1 in every draw."""
    data = make_training_data(DataConfig(name=gray_file, binarization="dynamic"))
    splits, _ = load_splits(gray_file)
    assert torch.equal(data.train_source, splits["train"] / 255.0)
    assert data.train_source.max().item() == 1.0
    draw = data.train_epoch(torch.Generator().manual_seed(0))
    assert (draw[:, 0, 0, 0] == 1).all() and (draw[:, 0, 0, 1] == 0).all()
    assert (data.valid[:, 0, 0, 0] == 1).all() and (data.test[:, 0, 0, 0] == 1).all()


def test_each_epochs_draw_is_fixed_by_the_generator(gray_file):
    """train_epoch draws with the generator it is given: the same seed gives the same epoch (a
    resumed run sees the data an uninterrupted one saw), another seed another draw."""
    data = make_training_data(DataConfig(name=gray_file, binarization="dynamic"))
    torch.manual_seed(123)
    a = data.train_epoch(torch.Generator().manual_seed(7))
    torch.manual_seed(456)  # the global RNG must not matter
    b = data.train_epoch(torch.Generator().manual_seed(7))
    c = data.train_epoch(torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _data(train, valid, test) -> TrainingData:
    return TrainingData(train, valid, test, "binary", dynamic=False)


def test_the_fingerprint_sees_every_split_and_its_shape():
    """The fingerprint guards eval and resume against a changed data file: a change confined to
    any one split changes it, and so does a reshape of the same bytes (other examples)."""
    g = torch.Generator().manual_seed(0)
    train, valid, test = (torch.randint(0, 2, (n, 6), generator=g).float() for n in (8, 4, 4))
    base = _data(train, valid, test).fingerprint()
    assert _data(train.clone(), valid.clone(), test.clone()).fingerprint() == base
    for i in range(3):
        splits = [train.clone(), valid.clone(), test.clone()]
        splits[i][0, 0] = 1 - splits[i][0, 0]
        assert _data(*splits).fingerprint() != base, f"a change to split {i} went unnoticed"
    # the same values read as (4, 12) instead of (8, 6): other examples, another fingerprint
    assert _data(train.reshape(4, 12), valid.reshape(2, 12), test.reshape(2, 12)).fingerprint() != base


def test_make_training_data_attaches_each_splits_own_labels():
    """labels=True: each split's labels are that split's (digits' valid and test are both 180
    rows, so a swap would keep every shape)."""
    data = make_training_data(DataConfig(name="digits"), labels=True)
    labels = load_labels("digits")
    assert torch.equal(data.train_labels, labels["train"])
    assert torch.equal(data.valid_labels, labels["valid"])
    assert torch.equal(data.test_labels, labels["test"])
    assert not torch.equal(labels["valid"], labels["test"])


def test_a_small_channels_last_image_array_is_refused(tmp_path):
    """(N, H, W, C) with C = 3 saved as is reads as (N, C', H', W') with width 3: refused, also for
    images as small as 5×5 (a tiny RGB set), not only for large H."""
    from genzoo.data import DataError
    from genzoo.data.files import load_user_file

    path = tmp_path / "rgb.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (10, 5, 5, 3)).astype(np.uint8))
    with pytest.raises(DataError, match="channels-last"):
        load_user_file(path)


@pytest.mark.parametrize("n, held_out", [(100, 10), (29, 2), (5, 1), (3, 1)])
def test_a_single_array_is_split_80_10_10(tmp_path, n, held_out):
    """A single array is split 80/10/10: valid and test get ⌊N/10⌋ rows each (at least one),
    train the rest; every row lands in exactly one split."""
    from genzoo.data.files import load_user_file

    rows = np.arange(n)[:, None] >> np.arange(8) & 1  # row i holds the bits of i: rows are distinct
    path = tmp_path / "rows.npy"
    np.save(path, rows.astype(np.uint8))
    splits = load_user_file(path)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [n - 2 * held_out, held_out, held_out]
    ids = np.concatenate([(splits[s] * (1 << np.arange(8))).sum(1) for s in ("train", "valid", "test")])
    assert sorted(ids.tolist()) == list(range(n))


def test_a_single_array_is_shuffled_before_it_is_split(tmp_path):
    """The rows are shuffled (with a fixed seed) before the split, so a file sorted by class does
    not put its last class alone into the test split: the held-out rows are not the file's tail."""
    from genzoo.data.files import load_user_file

    rows = (np.arange(100)[:, None] >> np.arange(8) & 1).astype(np.uint8)
    path = tmp_path / "sorted.npy"
    np.save(path, rows)
    splits = load_user_file(path)
    ids = {s: (splits[s] * (1 << np.arange(8))).sum(1).astype(int).tolist() for s in ("train", "valid", "test")}
    assert ids["test"] != list(range(90, 100)) and ids["valid"] != list(range(80, 90))
    assert min(ids["test"]) < 80  # some test row comes from the first 80 of the file
    assert ids == {s: (a * (1 << np.arange(8))).sum(1).astype(int).tolist()
                   for s, a in load_user_file(path).items()}  # and the shuffle is the same every time


@requires_shared_data
def test_mnist_splits_and_labels_are_the_npz_rows_they_should_be():
    """8-bit MNIST: train is the first 50,000 of the npz's training images and valid the last
    10,000 (disjoint), test its test images; the labels of each split are those same rows' labels,
    read here straight from the file."""
    splits, _ = load_splits("mnist", str(SHARED_DATA))
    labels = load_labels("mnist", str(SHARED_DATA))
    with np.load(SHARED_DATA / "mnist.npz") as npz:
        x_train, y_train, x_test, y_test = npz["x_train"], npz["y_train"], npz["x_test"], npz["y_test"]
    assert np.array_equal(splits["train"].numpy()[:, 0], x_train[:50_000])
    assert np.array_equal(splits["valid"].numpy()[:, 0], x_train[50_000:])
    assert np.array_equal(splits["test"].numpy()[:, 0], x_test)
    assert np.array_equal(labels["train"].numpy(), y_train[:50_000])
    assert np.array_equal(labels["valid"].numpy(), y_train[50_000:])
    assert np.array_equal(labels["test"].numpy(), y_test)
