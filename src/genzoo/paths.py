"""The user cache folder, shared by the data sets (unless a data folder is chosen) and the
compiled kernels: a leaf module, so that neither the models nor the data depend on the other."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/genzoo, or ~/.cache/genzoo where it is unset, empty or relative (the XDG
    spec: a relative one would give each working folder a cache of its own)."""
    xdg_cache = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg_cache) if xdg_cache and Path(xdg_cache).is_absolute() else Path.home() / ".cache"
    return cache / "genzoo"
