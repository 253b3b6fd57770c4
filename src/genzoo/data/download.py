"""Where data files live, and how they are fetched: a cache folder and sha256-checked downloads."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["DataError", "data_dir", "find_or_download", "sha256_of"]


class DataError(ValueError):
    """A data set is missing, corrupt, or a user's data file is invalid."""


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder: ``explicit`` (``--data-dir``), else $GENZOO_DATA, else ~/.cache/genzoo."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("GENZOO_DATA"):
        return Path(os.environ["GENZOO_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "genzoo"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        tmp.write(block)
                        bar.update(len(block))
        except BaseException:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    actual = sha256_of(tmp_path)
    if actual != sha256:
        tmp_path.unlink(missing_ok=True)
        raise DataError(f"download of {url} is corrupt: sha256 {actual}, expected {sha256}")
    shutil.move(str(tmp_path), target)


def find_or_download(filename: str, url: str, sha256: str, folder: Path, dataset: str,
                     files_to_put: str | None = None) -> Path:
    """Return ``folder/filename``, downloading it (sha256-verified) if it is not there yet;
    offline, the error says to put ``files_to_put`` (default: the file itself) in the folder."""
    target = folder / filename
    if target.exists():
        return target
    try:
        _download(url, target, sha256)
    except DataError:
        raise
    except OSError as error:
        raise DataError(
            f"data set {dataset!r} is not in {folder} and could not be downloaded ({error}); "
            f"put {files_to_put or filename} there, or point --data-dir / GENZOO_DATA at the folder that holds it"
        ) from None
    return target
