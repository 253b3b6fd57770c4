"""Helpers shared by the benchmark scripts: timing, results files, machine description."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> str | None:
    shared = REPO.parent / "shared" / "data"
    return os.environ.get("GENZOO_DATA") or (str(shared) if shared.is_dir() else None)


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line() -> str:
    script = Path(sys.argv[0]).resolve().relative_to(REPO).as_posix()
    return " ".join(["python", script, *sys.argv[1:]])


def merge_records(path: Path, records: list[dict], key: tuple[str, ...]) -> list[dict]:
    """Replace records with the same key in the JSON list at ``path`` and write it back."""
    existing = json.loads(path.read_text()) if path.exists() else []
    new_keys = {tuple(r[k] for k in key) for r in records}
    merged = [r for r in existing if tuple(r.get(k) for k in key) not in new_keys] + records
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged
