"""Device choice and seeding."""
from __future__ import annotations

import ctypes
import ctypes.util
import random

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything", "keep_freed_cpu_memory", "flush_subnormal_floats", "tune_cpu_process"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_allocator_tuned = False


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for, but torch sees no CUDA device")
        try:
            device = torch.device(name)
        except RuntimeError:  # "cudax", "cuda:-1", "cuda 0"
            raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:INDEX") from None
        count = torch.cuda.device_count()
        if device.type != "cuda" or (device.index is not None and not 0 <= device.index < count):
            raise ValueError(f"--device {name}: torch sees {count} CUDA device{'s' if count != 1 else ''} "
                             f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return device
    raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keep_freed_cpu_memory(limit_bytes: int = 1 << 30) -> bool:
    """Let glibc's malloc reuse freed blocks of up to ``limit_bytes`` instead of returning them to
    the system.

    PyTorch's CPU allocator hands every tensor to malloc, and glibc serves blocks over 32 MiB
    (after its adaptive threshold) with a fresh mmap: each training step then page-faults its
    large temporaries (a 784x8000 masked weight, its gradient) back in, which on a 2-core machine
    costs MADE about a third of its step time. Process-wide, so the trainer calls it, not import.
    Returns whether the setting was applied (only with glibc).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, limit_bytes) and mallopt(_M_TRIM_THRESHOLD, 2 * limit_bytes))
    return _allocator_tuned


def flush_subnormal_floats() -> bool:
    """Treat subnormal floats (|x| < 1.2e-38 in float32) as zero in CPU arithmetic.

    x86 CPUs take a slow microcode path, ~100x slower, for every operation on a subnormal. Adam
    drives the moments of parameters whose gradients vanish (a MADE's masked-out weights under
    weight decay, dead units) down into that range, and an epoch then slows several-fold: a
    784-8000-784 MADE with weight decay went from 1,143 to 145 examples/s, with half of Adam's
    first moments subnormal. Values that small never change a likelihood. Process-wide, so the
    trainer calls it, not import. Returns whether the CPU supports it.
    """
    return bool(torch.set_flush_denormal(True))


def tune_cpu_process() -> dict[str, bool]:
    """The process-wide CPU settings that training runs under (the trainer and the speed
    benchmark both call this, so they measure the same thing); says which took effect."""
    return {"glibc_keeps_freed_memory": keep_freed_cpu_memory(), "flushes_subnormal_floats": flush_subnormal_floats()}
