"""Bad data input is one clear line naming the file and the problem (a DataError; `genzoo: error:`, exit 2)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import genzoo
from genzoo.cli import main
from genzoo.data import DataError, load_labels

#: bytes that are neither a .npy header nor a zip archive: NumPy takes them for a pickle
RANDOM_BYTES = np.random.default_rng(0).bytes(4000)
NOT_A_VALID_NPZ = "not a valid .npz file (corrupt, or not written by numpy)"


def _message(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, f"expected one line, got {message!r}"
    return message


def _assert_never_suggests_unpickling(message: str) -> None:
    assert "allow_pickle" not in message and "unpickl" not in message.lower() and "pickle" not in message


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genzoo: error: "), lines
    return lines[0]


def _train(data: str, out: Path, *extra: str) -> list[str]:
    return ["train", "fvsbn", "--data", data, "--epochs", "1", "--out", str(out), "--overwrite", "--quiet", *extra]


# -- 1. a corrupt .npy/.npz -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_a_corrupt_user_file_is_named_and_not_offered_unpickling(tmp_path, suffix):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(RANDOM_BYTES)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path), "train")
    message = _message(info)
    assert str(path) in message and f"not a valid {suffix} file (corrupt, or not written by numpy)" in message
    _assert_never_suggests_unpickling(message)


def test_a_truncated_user_npz_is_a_data_error(tmp_path):
    # a damaged zip raises zipfile.BadZipFile, which is no ValueError
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=np.ones((10, 4)))
    path = tmp_path / "truncated.npz"
    path.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path), "train")
    assert str(path) in _message(info) and NOT_A_VALID_NPZ in _message(info)


def test_a_corrupt_user_file_through_the_cli(tmp_path, capsys):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(RANDOM_BYTES)
    line = _cli_error(capsys, _train(str(path), tmp_path / "run"))
    assert str(path) in line and NOT_A_VALID_NPZ in line
    _assert_never_suggests_unpickling(line)


@pytest.mark.parametrize("name, filename", [("binarized-mnist", "binarized_mnist.npz"), ("mnist", "mnist.npz")])
def test_a_corrupt_registry_file_is_named_with_what_to_do(tmp_path, name, filename):
    path = tmp_path / filename
    path.write_bytes(RANDOM_BYTES)
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(name, "test", data_dir=str(tmp_path))
    message = _message(info)
    assert str(path) in message and NOT_A_VALID_NPZ in message
    assert "delete it so it is downloaded again" in message
    _assert_never_suggests_unpickling(message)


def test_a_corrupt_mnist_file_is_named_when_loading_labels(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(RANDOM_BYTES)
    with pytest.raises(DataError) as info:
        load_labels("mnist", data_dir=str(tmp_path))
    assert str(tmp_path / "mnist.npz") in _message(info) and NOT_A_VALID_NPZ in _message(info)


def test_a_corrupt_registry_file_through_the_cli(tmp_path, capsys):
    (tmp_path / "binarized_mnist.npz").write_bytes(RANDOM_BYTES)
    line = _cli_error(capsys, _train("binarized-mnist", tmp_path / "run", "--data-dir", str(tmp_path)))
    assert str(tmp_path / "binarized_mnist.npz") in line and NOT_A_VALID_NPZ in line
    assert "delete it so it is downloaded again" in line
    _assert_never_suggests_unpickling(line)


# -- 2. complex numbers -----------------------------------------------------------------------------


def test_complex_values_are_refused_not_cast(tmp_path):
    path = tmp_path / "complex.npy"
    np.save(path, np.array([[1 + 0j, 0j]] * 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "discards the imaginary part" would fail the test
        with pytest.raises(DataError) as info:
            genzoo.load_dataset(str(path), "train")
    assert _message(info) == f"{path} has dtype complex128; expected real numbers"


# -- 3. a file of an unsupported type ---------------------------------------------------------------


def test_an_existing_file_of_an_unsupported_type_is_not_an_unknown_data_set(tmp_path):
    path = tmp_path / "good.txt"
    np.save(tmp_path / "good.npy", np.ones((5, 4)))
    path.write_bytes((tmp_path / "good.npy").read_bytes())
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path), "train")
    message = _message(info)
    assert str(path) in message and "unsupported file type '.txt'; use one of .npy, .npz, .csv" in message
    assert "unknown data set" not in message


@pytest.mark.parametrize("name", ["data.txt", "folder/data", "missing.dat"])
def test_a_name_that_looks_like_a_path_is_treated_as_a_file(name):
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(name, "train")
    message = _message(info)
    assert name in message and "unsupported file type" in message and "unknown data set" not in message


def test_a_bare_unknown_name_is_still_an_unknown_data_set():
    with pytest.raises(DataError) as info:
        genzoo.load_dataset("nosuch", "train")
    assert _message(info).startswith("unknown data set 'nosuch'; available: ")


def test_an_unsupported_file_type_through_the_cli(tmp_path, capsys):
    path = tmp_path / "good.txt"
    path.write_text("0,1\n1,0\n0,0\n")
    line = _cli_error(capsys, _train(str(path), tmp_path / "run"))
    assert str(path) in line and "unsupported file type '.txt'" in line


# -- 4. a name that is not a string -----------------------------------------------------------------


@pytest.mark.parametrize("name, type_name", [(None, "NoneType"), (5, "int")])
def test_a_name_of_the_wrong_type_is_a_data_error(name, type_name):
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(name, "train")
    assert _message(info) == f"data set name must be a string or a path, got {type_name}"
    with pytest.raises(DataError, match="must be a string or a path"):
        load_labels(name)


def test_a_pathlib_path_is_a_fine_name(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, np.ones((10, 4)))
    assert genzoo.load_dataset(path, "train").shape[1:] == (4,)


# -- 5. a CSV with another separator ----------------------------------------------------------------


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_with_another_separator_is_quoted_short_with_the_cause(tmp_path, separator):
    path = tmp_path / "semicolons.csv"
    row = separator.join(["1", "0"] * 400)  # 1,600 characters, read as a single cell
    path.write_text("\n".join([row] * 5) + "\n")
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path), "train")
    message = _message(info)
    assert str(path) in message and "row 0" in message and "which is not a number" in message
    assert repr(row[:20] + "...") in message and len(message) < len(str(path)) + 150
    assert message.endswith("(expected comma-separated values)")


def test_a_short_bad_csv_cell_is_quoted_whole_without_the_separator_hint(tmp_path):
    path = tmp_path / "word.csv"
    path.write_text("0,1\n1,zero\n")
    with pytest.raises(DataError) as info:
        genzoo.load_dataset(str(path), "train")
    assert _message(info) == f"{path}: row 1 has 'zero', which is not a number"
