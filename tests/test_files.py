"""Atomic writes (genzoo.files): a failed write keeps the previous file, leaves no temporary file,
and its error names the file; a written file is readable as the umask says."""
from __future__ import annotations

import errno
import os

import pytest

from genzoo.files import atomic_write, atomic_write_text


def _full_disk_after(limit: int):
    """A writer that writes ``limit`` bytes, then fails as a full disk does."""
    def write(f):
        f.write(b"x" * limit)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_a_failed_write_keeps_the_previous_file_and_names_the_file(tmp_path):
    path = tmp_path / "eval_test.json"
    atomic_write_text(path, '{"nll": 1.0}\n')
    with pytest.raises(OSError) as info:
        atomic_write(path, _full_disk_after(10))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert str(path) in str(info.value)
    assert path.read_text() == '{"nll": 1.0}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_test.json"]


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "z.npy", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_a_written_file_is_readable_as_the_umask_says(tmp_path):
    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "config.toml", "x = 1\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
