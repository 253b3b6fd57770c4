"""A user's own data file (.npy, .npz or .csv), validated row by row on load.

* ``.npy``: one array, one example per row, flat (N, D) or image-shaped (N, H, W) / (N, C, H, W).
* ``.npz``: arrays ``train``, ``valid`` and ``test``, or a single array that is split 80/10/10.
* ``.csv``: one example per line, comma-separated numbers, no header.

Values must be binary (0/1) or 8-bit integers (0..255); anything else is refused with a one-line
error naming the file, the row and the value.
"""
from __future__ import annotations

import csv
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from genzoo.data.download import DataError

__all__ = ["load_user_file", "load_examples", "infer_kind", "read_numpy_arrays", "USER_FILE_SUFFIXES"]

USER_FILE_SUFFIXES = (".npy", ".npz", ".csv")
_USER_SPLIT_SEED = 0

#: what NumPy (and zipfile / zlib under it) raise for a .npy/.npz whose bytes are damaged or not NumPy's
_INVALID_NUMPY_FILE_ERRORS = (ValueError, EOFError, zipfile.BadZipFile, zlib.error)
#: a bad CSV cell is quoted up to this many characters: a row read as one cell can be thousands long
_QUOTED_CELL_LENGTH = 20


def _read_csv(path: Path) -> np.ndarray:
    rows: list[np.ndarray] = []  # a row of Python floats takes 4x the memory
    blank_row: int | None = None  # blank lines may only end the file, so row numbers stay true
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark
    with open(path, newline="", encoding="utf-8-sig") as f:
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
                raise DataError(f"{path}: row {i} has {_not_a_number(bad)}") from None
            if rows and len(values) != len(rows[0]):
                raise DataError(f"{path}: row {i} has {len(values)} values, the rows before it {len(rows[0])}")
            rows.append(np.array(values))
    if not rows:
        raise DataError(f"{path} holds no data")
    return np.stack(rows)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _not_a_number(cell: str) -> str:
    """A CSV cell that is not a number, quoted short, with the likely cause if it is a whole row."""
    cell = cell.strip()
    quoted = repr(cell if len(cell) <= _QUOTED_CELL_LENGTH else cell[:_QUOTED_CELL_LENGTH] + "...")
    # ';' or tab inside one cell: the file uses another separator, so each row was read as a single cell
    hint = " (expected comma-separated values)" if ";" in cell or "\t" in cell else ""
    return f"{quoted}, which is not a number{hint}"


def _as_examples(array: np.ndarray, where: str) -> np.ndarray:
    """Check an array of examples and bring it to (N, D) or (N, C, H, W)."""
    # refused, not cast: torch would silently drop the imaginary part
    if array.dtype.kind == "c":
        raise DataError(f"{where} has dtype {array.dtype}; expected real numbers")
    # bool, integers and floats; numpy also counts timedelta64 as a number
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {array.dtype}; expected numbers")
    if not array.dtype.isnative:  # e.g. a big-endian file from another machine: torch takes native order only
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim < 2 or array.ndim > 4:
        raise DataError(f"{where} has shape {array.shape}; expected one example per row: (N, D), (N, H, W) or (N, C, H, W)")
    if len(array) == 0:
        raise DataError(f"{where} holds no examples")
    if array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] > 4:
        # read as (N, C, H, W) it would be images of many channels and width 1 or 3
        raise DataError(f"{where} has shape {array.shape}, which looks channels-last (N, H, W, C); genzoo reads "
                        f"(N, C, H, W): save np.moveaxis(x, -1, 1) instead")
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
        f"{where}: row {row} has value {_exact(flat[row, col])} at column {col}; expected binary values (0/1) "
        f"or 8-bit integers (0..255)"
    )


def _exact(value: np.generic) -> str:
    """A value as it is stored, so that 1.0000001 does not print as the valid 1."""
    if np.issubdtype(type(value), np.floating) and np.isfinite(value) and abs(value) < 1e6:
        return np.format_float_positional(value, trim="-")
    return f"{value:g}" if np.issubdtype(type(value), np.floating) else str(value)


def read_numpy_arrays(path: Path, keys: Iterable[str] | None = None, advice: str = "") -> dict[str, np.ndarray]:
    """The arrays of a .npy file ({"all": array}) or of a .npz file (those of ``keys`` it holds, default
    all), never unpickled. A file NumPy cannot read is a one-line DataError naming it, ``advice`` appended."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray) and path.suffix == ".npy":
            return {"all": loaded}
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if path.suffix == ".npz":
                    wanted = loaded.files if keys is None else [key for key in keys if key in loaded.files]
                    return {key: loaded[key] for key in wanted}
        # else the other format under this suffix: refused below like any file that is not its suffix's
    except OSError as error:  # e.g. no permission to read it
        raise DataError(f"{path} could not be read: {error.strerror or error}") from None
    except _INVALID_NUMPY_FILE_ERRORS as error:
        if "allow_pickle" in str(error) and "Object arrays" in str(error):
            raise DataError(f"{path} holds an array of Python objects (a pickle), which genzoo never loads: "
                            f"save numbers instead{advice}") from None
        # else never NumPy's message: bytes it cannot place it takes for a pickle, and suggests allow_pickle=True
    # "could not be read as": the wording of the user file's other read errors (OSError, a bad .csv)
    raise DataError(f"{path} could not be read as {path.suffix}: it is not a valid {path.suffix} file "
                    f"(corrupt, or not written by numpy){advice}")


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
        return path, read_numpy_arrays(path)
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
