"""Small fused CPU kernels in plain C, compiled once per machine with the system C compiler.

A kernel is a ``.c`` file beside this module. :func:`load` compiles it into a shared library in
the genzoo cache folder (keyed by the source, the flags, the compiler and the CPU, so a cached
library is never run on a machine it was not built for) and opens it with :mod:`ctypes`; calls
through ctypes release the GIL, so Python threads run kernel slices in parallel. Nothing here is
required: with no C compiler, or with ``GENZOO_KERNELS=0``, :func:`load` returns ``None`` and the
models fall back to their pure-PyTorch code, which is also the reference the kernels are tested
against.

Threads. A kernel splits its work over :func:`kernel_threads` threads of its own. While a loop
runs a kernel step after step (training, evaluation), :func:`threads_for_kernels` hands the
process's threads to the kernels and runs PyTorch's own ops on one thread: PyTorch's idle OpenMP
threads spin-wait after each parallel op, on the very cores the kernel's threads then need (with
them, the kernel's second thread ran its half of a NADE step 1.3-1.4x slower than the first).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch

from genzoo.paths import user_cache_dir

__all__ = ["load", "kernels_enabled", "kernel_threads", "threads_for_kernels", "thread_pool", "pointer"]

# -ffast-math is avoided on purpose: linking with it can switch the whole process to
# flush-to-zero. These are the parts of it the kernels need (vectorized reductions, reciprocals).
_OPTIMIZE = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
             "-fassociative-math", "-freciprocal-math", "-ffinite-math-only"]
_FLAG_SETS = [
    _OPTIMIZE + ["-march=native", "-mrecip=all"],  # x86 with gcc or clang
    _OPTIMIZE + ["-mcpu=native"],                  # arm64
    _OPTIMIZE,
]


def kernels_enabled() -> bool:
    return os.environ.get("GENZOO_KERNELS", "1").strip().lower() not in {"0", "false", "no", "off"}


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_folder() -> Path:
    """``$GENZOO_KERNEL_CACHE`` (empty means unset), else the user cache folder's ``kernels``
    (never the data folder: $GENZOO_DATA may be a shared, read-only set of data files); absolute,
    because ``dlopen`` looks a name without a slash up on the system's library path."""
    configured = os.environ.get("GENZOO_KERNEL_CACHE", "").strip()
    return (Path(configured).expanduser() if configured else user_cache_dir() / "kernels").resolve()


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(library: Path) -> bool:
    """Whether ``library`` is the file its build wrote, by the digest written beside it: a
    truncated library crashes ``dlopen`` with SIGBUS, and a damaged one is never rebuilt
    otherwise (the loader would move on to slower flags)."""
    try:
        return library.exists() and _digest_path(library).read_text().strip() == _file_sha256(library)
    except OSError:
        return False


def _build(source: Path, compiler: str, flags: list[str], target: Path) -> bool:
    """Compile ``source`` into ``target`` with its digest beside it; False if the compiler fails.
    Both files are written under temporary names and renamed into place (atomic), so that a
    concurrent or interrupted build never leaves a half-written library, nor its temporary file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    digest_tmp = Path(tmp + ".sha256")
    try:
        command = [compiler, *flags, "-shared", "-fPIC", str(source), "-o", tmp, "-lm"]
        if subprocess.run(command, capture_output=True, text=True).returncode != 0:
            return False
        with open(tmp, "rb") as built:
            os.fsync(built.fileno())  # on disk before the rename makes it the cached library
        digest_tmp.write_text(_file_sha256(Path(tmp)) + "\n")
        os.replace(digest_tmp, _digest_path(target))
        os.replace(tmp, target)
        return True
    finally:
        for leftover in (Path(tmp), digest_tmp):
            leftover.unlink(missing_ok=True)


def _load_from(folder: Path, name: str, source: Path, compiler: str, version: str) -> ctypes.CDLL | None:
    """The kernel built with the best flag set that compiles and loads, cached in ``folder``."""
    for flags in _FLAG_SETS:
        key = hashlib.sha256("\0".join([source.read_text(), *flags, version, platform.machine(),
                                        _cpu_signature()]).encode()).hexdigest()[:16]
        target = folder / f"{name}-{key}.so"
        if not _intact(target) and not _build(source, compiler, flags, target):
            continue
        try:
            return ctypes.CDLL(str(target))
        except OSError:
            continue
    return None


@lru_cache(maxsize=None)
def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel ``name`` (``kernels/<name>.c``), or None where it cannot be built."""
    if not kernels_enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn(f"genzoo: no C compiler found; the {name} kernel falls back to PyTorch (slower)")
        return None
    source = Path(__file__).with_name(f"{name}.c")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    folder = _cache_folder()
    try:
        library = _load_from(folder, name, source, compiler, version)
    except OSError as error:  # a cache folder that cannot be created or written
        warnings.warn(f"genzoo: cannot use the kernel cache folder {folder} ({error.strerror or error}); "
                      f"building the {name} kernel in a temporary folder (set GENZOO_KERNEL_CACHE to a writable folder to keep it)")
        # a library stays loaded after its file is removed, so the folder can go at once
        with tempfile.TemporaryDirectory(prefix="genzoo-kernels-", ignore_cleanup_errors=True) as private:
            try:
                library = _load_from(Path(private), name, source, compiler, version)
            except OSError:
                library = None
    if library is None:
        warnings.warn(f"genzoo: could not compile the {name} kernel with {compiler}; falling back to PyTorch (slower)")
    return library


_kernel_threads: int | None = None  # set by threads_for_kernels


def kernel_threads() -> int:
    """How many threads a kernel call splits its work over: PyTorch's intra-op thread count, or,
    inside :func:`threads_for_kernels`, the count PyTorch had on entering it."""
    return _kernel_threads or torch.get_num_threads()


@contextmanager
def threads_for_kernels() -> Iterator[None]:
    """Within this block the kernels keep PyTorch's thread count and PyTorch's own ops run on one
    thread (see the module docstring); both are restored on leaving it. Nested blocks keep the
    outermost count."""
    global _kernel_threads
    previous_kernel, previous_torch = _kernel_threads, torch.get_num_threads()
    _kernel_threads = previous_kernel or previous_torch
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous_torch)
        _kernel_threads = previous_kernel


@lru_cache(maxsize=None)
def thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="genzoo-kernel")


def pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr() if tensor is not None else None)
