"""Helpers shared by the benchmark scripts: timing, results files, machine description, and the
options and checks every script's command line shares."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
CPUINFO = Path("/proc/cpuinfo")
#: environment variables that set torch's default thread count: a command run under one of them
#: reproduces its thread count only with it
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


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


def interleaved_seconds(contenders: dict[str, Callable[[], object]], rounds: int = 5,
                        warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each contender's call in each of ``rounds`` rounds. A round calls every
    contender once, in an order rotated from round to round, so that a slow spell of a shared host
    falls on all of them alike and a ratio taken within a round compares like with like."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            tic = time.perf_counter()
            contenders[name]()
            seconds[name].append(time.perf_counter() - tic)
    return seconds


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of numerator / denominator, each pair measured in the same round."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("median_ratio needs two equally long, non-empty lists of per-round figures")
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def cpu_model_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (e.g. "AMD EPYC"), or "" where there is
    none: platform.processor() is empty on Linux, so without it every host reads alike."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    names = [name for name in (cpu_model_name(), platform.processor() or platform.machine()) if name]
    return f"cpu ({', '.join(names)}, {torch.get_num_threads()} threads)"


def command_line() -> str:
    """The command that ran, with any environment variable that set its thread count in front."""
    settings = [f"{name}={os.environ[name]}" for name in THREAD_VARIABLES if name in os.environ]
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(REPO):  # else run from elsewhere (a test runner, a copy): its full path
        script = script.relative_to(REPO)
    return " ".join([*settings, "python", script.as_posix(), *sys.argv[1:]])


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum`` (a smaller one is a one-line usage
    error, not a traceback from the first median of nothing)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_results_option(parser: argparse.ArgumentParser, files: str) -> None:
    """--results DIR: where the records go, so that a trial run can write elsewhere than the
    published benchmarks/results."""
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"folder for {files} (default: benchmarks/results)")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """--threads N, so that a record's thread count is named in its command (see use_threads)."""
    parser.add_argument("--threads", type=at_least(0), default=0,
                        help="torch intra-op threads (0: torch's default, which OMP_NUM_THREADS sets)")


def use_threads(threads: int) -> None:
    """Run on ``threads`` intra-op threads (0: keep torch's default); call it before anything is
    built or timed."""
    if threads:
        torch.set_num_threads(threads)


def config_names(folder: Path) -> list[str]:
    """The models that have a config in ``folder`` (its *.toml files' stems)."""
    return sorted(path.stem for path in folder.glob("*.toml"))


def refuse_unknown_models(parser: argparse.ArgumentParser, models: Iterable[str], accepted: Iterable[str],
                          reason: str) -> None:
    """A one-line usage error, before anything is trained or timed, naming each model that is not
    ``accepted`` (``reason`` says why, e.g. "no static config") and what is accepted."""
    accepted = sorted(accepted)
    refused = [model for model in models if model not in accepted]
    if refused:
        parser.error(f"{reason} for {', '.join(map(repr, refused))}; accepted: {', '.join(accepted)}")


def merge_records(path: Path, records: list[dict], key: tuple[str, ...]) -> list[dict]:
    """Replace records with the same key in the JSON list at ``path`` and write it back."""
    existing = json.loads(path.read_text()) if path.exists() else []
    new_keys = {tuple(r[k] for k in key) for r in records}
    merged = [r for r in existing if tuple(r.get(k) for k in key) not in new_keys] + records
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


def stopped_before_its_first_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what a run killed in its first epoch leaves (config.toml, its
    metrics): a benchmark then starts it over. A finished run's checkpoints or evaluations are
    never deleted: a new run there is refused as usual."""
    from genzoo.training import RunFolder

    run = RunFolder(run_dir)
    return not (run.last.exists() or run.best.exists() or any(run_dir.glob("eval_*.json")))


def fit_or_resume(config, run_dir: Path, device: torch.device, data_dir: str | None,
                  max_seconds: float | None = None, epochs: int | None = None):
    """Train ``config`` in ``run_dir``, or continue the run already there (so that a benchmark cut
    short by its time budget picks up where it stopped); ``max_seconds`` and ``epochs`` override
    the config's. Returns the trainer's result."""
    from genzoo.training import Trainer

    if max_seconds:
        config.train.max_seconds = max_seconds
    if epochs:
        config.train.epochs = epochs
    trainer = Trainer(config, run_dir, device, data_dir, progress=None,
                      overwrite=stopped_before_its_first_checkpoint(Path(run_dir)))
    if trainer.run.last.exists():
        trainer = Trainer.resume(run_dir, device, data_dir, None, epochs=config.train.epochs)
        trainer.config.train.max_seconds = config.train.max_seconds
    return trainer.fit()
