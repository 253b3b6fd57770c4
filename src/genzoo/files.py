"""Writing a file so that nothing half-written is ever read: every file genzoo writes (checkpoints,
config.toml, evaluations, scores, samples, pictures) goes to a temporary file beside its target,
is flushed to disk, and is renamed over the target. A failure (a full disk, Ctrl-C) leaves the
previous file as it was and no temporary file behind, and its error names the file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "give_new_file_mode", "naming_the_file"]


def give_new_file_mode(path: str | Path) -> None:
    """Give ``path`` the mode a new file gets under this process's umask (0o644 under 022): a
    temporary file is created 0o600, and a rename keeps that, so other users of a shared folder
    could not read it. A file system without modes (FAT, some network mounts) keeps its own."""
    try:
        os.chmod(path, 0o666 & ~_umask())
    except OSError:
        pass


def _umask() -> int:
    """The process's umask: read from Linux's /proc (setting it to read it back would race with
    other threads creating files), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` with ``write(file)``: into ``<name>.<random>.tmp`` in its folder, fsync'd,
    readable as a new file would be under the umask, renamed into place, and the folder fsync'd
    so that the rename itself survives a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        give_new_file_mode(tmp)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise naming_the_file(error, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def naming_the_file(error: OSError, path: str | Path) -> OSError:
    """``error`` with ``path`` as its file where it names none: "[Errno 28] No space left on
    device" alone does not say which of a run's files could not be written."""
    if error.filename is not None:
        return error
    if error.errno is not None:
        return OSError(error.errno, error.strerror, str(path))
    return OSError(f"{path}: {error}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform whose folders cannot be opened: the rename is as durable as it gets
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder (EINVAL); the file itself is on disk
    finally:
        os.close(fd)
