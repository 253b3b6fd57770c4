"""Where data files live, and how they are fetched: a cache folder and sha256-checked downloads."""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from genzoo.files import give_new_file_mode
from genzoo.paths import user_cache_dir

__all__ = ["DataError", "data_dir", "find_or_download", "sha256_of"]


class DataError(ValueError):
    """A data set is missing, corrupt, or a user's data file is invalid."""


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder: ``explicit`` (``--data-dir``), else $GENZOO_DATA, else the user cache
    folder ($XDG_CACHE_HOME/genzoo or ~/.cache/genzoo)."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("GENZOO_DATA"):
        return Path(os.environ["GENZOO_DATA"]).expanduser()
    return user_cache_dir()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_length(response) -> int | None:
    try:
        return int(response.headers.get("Content-Length", "")) or None
    except ValueError:  # a malformed header: the sha256 still decides
        return None


def _download(url: str, target: Path, sha256: str) -> None:
    """Fetch ``url`` into ``target``: written under a temporary name beside it, checked (length
    and sha256), then renamed into place, so that a failed, wrong or interrupted download never
    leaves a file a later run would trust, nor its temporary file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix=".genzoo-", suffix=".part") as tmp:
            tmp_path = Path(tmp.name)
            with urllib.request.urlopen(url, timeout=60) as response:
                expected_bytes, received = _content_length(response), 0
                with tqdm(total=expected_bytes, unit="B", unit_scale=True, desc=f"download {target.name}",
                          disable=None) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        tmp.write(block)
                        received += len(block)
                        bar.update(len(block))
        if expected_bytes is not None and received != expected_bytes:
            raise DataError(f"the transfer stopped after {received:,} of {expected_bytes:,} bytes")
        actual = sha256_of(tmp_path)
        if actual != sha256:
            raise DataError(f"the server sent a different file (sha256 {actual}, expected {sha256})")
        give_new_file_mode(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)  # gone already after the rename


def find_or_download(filename: str, url: str, sha256: str, folder: Path, dataset: str,
                     files_to_put: str | None = None) -> Path:
    """Return ``folder/filename``, downloading it (sha256-verified) if it is not there yet;
    offline, the error says to put ``files_to_put`` (default: the file itself) in the folder."""
    target = folder / filename
    if target.exists():
        return target
    try:
        _download(url, target, sha256)
    # OSError: offline, HTTP errors, an unwritable folder; HTTPException: a connection cut inside a
    # chunked response; ValueError (DataError too): a short or wrong file, a URL urllib refuses
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise DataError(
            f"data set {dataset!r} is not in {folder} and could not be downloaded from {url} ({error}); "
            f"put {files_to_put or filename} there, or point --data-dir / GENZOO_DATA at the folder that holds it"
        ) from None
    return target
