"""A user's own data file (.npy, .npz or .csv), validated row by row on load.

* ``.npy``: one array, one example per row, flat (N, D) or image-shaped (N, H, W) / (N, C, H, W).
* ``.npz``: arrays ``train``, ``valid`` and ``test``, or a single array that is split 80/10/10.
* ``.csv``: one example per line, comma-separated numbers, no header.

Values must be binary (0/1) or 8-bit integers (0..255); anything else is refused with a one-line
error naming the file, the row and the value.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from genzoo.data.download import DataError

__all__ = ["load_user_file", "load_examples", "infer_kind", "USER_FILE_SUFFIXES"]

USER_FILE_SUFFIXES = (".npy", ".npz", ".csv")
_USER_SPLIT_SEED = 0


def _read_csv(path: Path) -> np.ndarray:
    rows: list[list[float]] = []
    blank_row: int | None = None  # blank lines may only end the file, so row numbers stay true
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or all(not cell.strip() for cell in row):
                blank_row = i
                continue
            if blank_row is not None:
                raise DataError(f"{path}: row {blank_row} is empty")
            try:
                values = [float(cell) for cell in row]
            except ValueError:
                bad = next(cell for cell in row if not _is_number(cell))
                raise DataError(f"{path}: row {i} has {bad.strip()!r}, which is not a number") from None
            if rows and len(values) != len(rows[0]):
                raise DataError(f"{path}: row {i} has {len(values)} values, the rows before it {len(rows[0])}")
            rows.append(values)
    if not rows:
        raise DataError(f"{path} holds no data")
    return np.asarray(rows)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _as_examples(array: np.ndarray, where: str) -> np.ndarray:
    """Check an array of examples and bring it to (N, D) or (N, C, H, W)."""
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{where} has dtype {array.dtype}; expected numbers")
    if array.ndim < 2 or array.ndim > 4:
        raise DataError(f"{where} has shape {array.shape}; expected one example per row: (N, D), (N, H, W) or (N, C, H, W)")
    if len(array) == 0:
        raise DataError(f"{where} holds no examples")
    array = array.astype(np.float64) if array.dtype == bool else array
    flat = array.reshape(len(array), -1)
    nan_rows = np.isnan(flat).any(axis=1) if np.issubdtype(flat.dtype, np.floating) else np.zeros(len(flat), bool)
    if nan_rows.any():
        raise DataError(f"{where}: row {int(nan_rows.argmax())} contains NaN")
    infer_kind(flat, where)
    return array[:, None] if array.ndim == 3 else array


def infer_kind(flat: np.ndarray, where: str) -> str:
    """'binary' if every value is 0 or 1, 'grayscale' for integers 0..255; else a DataError."""
    binary = (flat == 0) | (flat == 1)
    if binary.all():
        return "binary"
    eight_bit = (flat == np.round(flat)) & (flat >= 0) & (flat <= 255)
    if eight_bit.all():
        return "grayscale"
    row, col = (int(i) for i in np.argwhere(~eight_bit)[0])
    raise DataError(
        f"{where}: row {row} has value {flat[row, col]:g} at column {col}; expected binary values (0/1) or 8-bit integers (0..255)"
    )


def _read_arrays(path: str | Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The arrays of a user's file, by name ("all" for a .npy or .csv), not yet validated."""
    path = Path(path)
    if path.suffix not in USER_FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(USER_FILE_SUFFIXES)}")
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    try:
        if path.suffix == ".csv":
            return path, {"all": _read_csv(path)}
        if path.suffix == ".npy":
            return path, {"all": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as f:
            return path, {key: f[key] for key in f.files}
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} could not be read as {path.suffix}: {error}") from None


def load_examples(path: str | Path) -> np.ndarray:
    """Every example of a user's file, validated and in file order (nothing split off): what
    ``genzoo eval --input`` scores. A .npz must hold a single array."""
    path, arrays = _read_arrays(path)
    if len(arrays) != 1:
        raise DataError(f"{path} holds arrays {sorted(arrays)}; expected a single array of examples")
    (only,) = arrays.values()
    return _as_examples(only, str(path))


def load_user_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a user's data file; returns {"train", "valid", "test"} arrays."""
    path, arrays = _read_arrays(path)
    if {"train", "valid", "test"} <= set(arrays):
        splits = {s: _as_examples(arrays[s], f"{path}[{s}]") for s in ("train", "valid", "test")}
        shapes = {s: a.shape[1:] for s, a in splits.items()}
        if len(set(shapes.values())) != 1:
            raise DataError(f"{path}: the splits' example shapes differ: {shapes}")
        return splits
    if len(arrays) != 1:
        raise DataError(f"{path} holds arrays {sorted(arrays)}; expected 'train', 'valid' and 'test', or a single array")
    (only,) = arrays.values()
    examples = _as_examples(only, str(path))
    if len(examples) < 3:
        raise DataError(f"{path} holds {len(examples)} examples; at least 3 are needed for train/valid/test")
    order = np.random.default_rng(_USER_SPLIT_SEED).permutation(len(examples))
    n_valid = n_test = max(1, len(examples) // 10)
    n_train = len(examples) - n_valid - n_test
    examples = examples[order]
    return {"train": examples[:n_train], "valid": examples[n_train : n_train + n_valid], "test": examples[n_train + n_valid :]}
