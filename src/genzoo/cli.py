"""The ``genzoo`` command line: train, eval, sample, list.

    genzoo train made --data mnist5k --out runs/made
    genzoo eval runs/made
    genzoo sample runs/made -n 64 --out samples.png
    genzoo encode runs/vae --split test --out z.npy       # latent-variable models only
    genzoo decode runs/vae z.npy --out decoded.png
    genzoo interpolate runs/vae --pair 0 1 --steps 10 --out strip.png
    genzoo list
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import sys
import textwrap
import threading
import time
import typing
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from genzoo.config import (ConfigError, RunConfig, as_toml_values, build_dataclass, field_docs, field_kind,
                           load_run_config, run_config_from_dict, toml_value, tomllib)
from genzoo.data import DATASETS, DataError, load_examples, make_training_data
from genzoo.data.files import read_numpy_arrays
from genzoo.data.registry import is_user_file
from genzoo.devices import resolve_device
from genzoo.evaluation import evaluate_with_scores
from genzoo.files import atomic_write, atomic_write_text
from genzoo.images import image_format, save_image_grid
from genzoo.models import list_models
from genzoo.models.base import model_config_class, model_info
from genzoo.sampling import SpeculativeStats, check_speculative_pair, speculative_sample
from genzoo.training import Trainer, check_same_data, load_run

__all__ = ["main", "build_parser"]


def _parse_param(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE in TOML syntax: hidden_sizes=[500], num_masks=8, order_agnostic=true."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param takes KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word is a string
    return key.strip(), parsed


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


#: torch and NumPy take seeds in [0, 2⁶⁴); a larger one fails deep inside them
MAX_SEED = 2**63 - 1


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got {text}")
    return value


#: dimensions a speculative sampler's draft proposes per round, unless --gamma says
SPECULATIVE_GAMMA = 4


def _non_empty(text: str) -> str:
    """An option's value; an empty one (an unset shell variable) would mean the current folder or the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _path(text: str) -> Path:
    return Path(_non_empty(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genzoo", description="Train, evaluate and sample deep generative models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda (default: auto)")
        p.add_argument("--data-dir", default=None, help="folder with data files (default: $GENZOO_DATA or ~/.cache/genzoo)")

    train = commands.add_parser("train", help="train a model", description="Train MODEL on a data set; writes a run folder.")
    train.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(list_models())}")
    train.add_argument("--data", type=_non_empty, help=f"data set ({', '.join(DATASETS)}) or a .npy/.npz/.csv file (default: from --config, else mnist5k)")
    train.add_argument("--config", type=_path, help="TOML run config ([model], [data], [train] tables)")
    train.add_argument("--epochs", type=int, help="number of epochs")
    train.add_argument("--batch-size", type=_positive_int, help="minibatch size")
    train.add_argument("--lr", type=float, help="Adam learning rate")
    train.add_argument("--seed", type=_seed, help="fixes data order, initialization and sampling")
    train.add_argument("--binarization", choices=["none", "dynamic"], help="dynamic: a fresh Bernoulli draw of 8-bit data each epoch")
    train.add_argument("--max-seconds", type=float,
                       help="stop after this many seconds of training epochs (validation not counted)")
    train.add_argument("--fit-epochs-to-time", action="store_const", const=True, dest="fit_epochs_to_max_seconds",
                       help="with --max-seconds: shorten the planned epochs to what fits, so that the lr "
                            "schedule ends inside the budget ([train] fit_epochs_to_max_seconds)")
    train.add_argument("-p", "--param", type=_parse_param, action="append", default=[], metavar="KEY=VALUE",
                       help="a config value in TOML syntax: a model hyperparameter (-p hidden_sizes=[500]) or, "
                            "with its table named, any [train] or [data] key (-p train.weight_decay=1e-4); repeatable")
    train.add_argument("--out", type=_path, help="run folder (default: runs/MODEL-DATA)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="start afresh in --out even if it holds a run (its checkpoints are replaced)")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    add_common(train)

    ev = commands.add_parser("eval", help="test NLL of a trained run", description="Evaluate a run's checkpoint: NLL in nats and bits/dim.")
    ev.add_argument("run_dir", type=_path, metavar="RUN_DIR")
    ev_source = ev.add_mutually_exclusive_group()
    ev_source.add_argument("--split", default="test", choices=["train", "valid", "test"],
                           help="data split of the run's data set (default: test)")
    ev_source.add_argument("--input", type=_path, metavar="FILE",
                           help="score every example of this .npy, .csv or single-array .npz file instead of a split "
                                "(checked like a --data file); the record goes to RUN_DIR/eval_input-NAME.json")
    ev.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ev.add_argument("--batch-size", type=_positive_int, default=500)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--scores", type=_path, metavar="OUT.npy|OUT.csv",
                    help="also write each example's log p(x) in nats, in input order (a lower bound on it for "
                         "models whose likelihood is lower_bound); .csv adds the NLL in bits/dim")
    add_common(ev)

    sample = commands.add_parser("sample", help="draw samples from a trained run", description="Write a PNG grid and a .npy of samples.")
    sample.add_argument("run_dir", type=_path, metavar="RUN_DIR")
    sample.add_argument("-n", "--num-samples", type=int, default=64)
    sample.add_argument("--out", type=_path, help="PNG path (default: RUN_DIR/samples.png); the .npy goes beside it")
    sample.add_argument("--seed", type=_seed, default=0)
    sample.add_argument("--checkpoint", default="best", choices=["best", "last"])
    sample.add_argument("--sampler", default="fast", choices=["fast", "naive", "speculative"],
                        help="fast: the model's own sampler; naive: one full network pass per dimension; "
                             "speculative: a draft model proposes --gamma dimensions, the run's model checks them")
    sample.add_argument("--draft", type=_path, metavar="DRAFT_RUN_DIR",
                        help="run folder of the draft model for --sampler speculative (same data shape and order)")
    sample.add_argument("--gamma", type=int, help=f"dimensions the draft proposes per round (default: {SPECULATIVE_GAMMA})")
    sample.add_argument("--label", type=int, metavar="Y", help="class-conditional models (num_classes > 0): draw samples of class Y")
    sample.add_argument("--temperature", type=float, metavar="T",
                        help="flows: draw the base distribution at temperature T, 0 < T (default: the run's "
                             "temperature hyperparameter, 1 unless set)")
    sample.add_argument("--batch-size", type=int, default=500,
                        help="samples drawn at a time, to bound memory (default: 500); --seed and the batch size "
                             "fix the samples")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(sample)

    def add_split_input(p: argparse.ArgumentParser, input_help: str | None = None) -> None:
        """--split (and, given its help, --input FILE instead of it), --checkpoint and --batch-size."""
        source = p.add_mutually_exclusive_group()
        source.add_argument("--split", default="test", choices=["train", "valid", "test"], help="data split of the run's data set (default: test)")
        if input_help:
            source.add_argument("--input", type=_path, metavar="FILE", help=input_help)
        p.add_argument("--checkpoint", default="best", choices=["best", "last"])
        p.add_argument("--batch-size", type=_positive_int, default=500)

    encode = commands.add_parser("encode", help="latents of a latent-variable run's data (.npy)",
                                 description="Encode a split (or --input FILE) with a latent-variable model (vae, iwae, "
                                             "gumbel-vae, vqvae): VAE posterior means, or category/code indices.")
    encode.add_argument("run_dir", type=_path, metavar="RUN_DIR")
    add_split_input(encode, input_help="encode the examples of this .npy, .csv or single-array .npz file instead of --split")
    encode.add_argument("--out", type=_path, required=True, metavar="Z.npy", help="where the latents go")
    add_common(encode)

    decode = commands.add_parser("decode", help="decode latents (.npy) to an image grid",
                                 description="Decode latents (as written by encode) to the decoder's mean: a PNG grid "
                                             "and a .npy beside it.")
    decode.add_argument("run_dir", type=_path, metavar="RUN_DIR")
    decode.add_argument("latents", type=_path, metavar="Z.npy")
    decode.add_argument("--out", type=_path, required=True, metavar="GRID.png", help="PNG path; the .npy of the means goes beside it")
    decode.add_argument("--checkpoint", default="best", choices=["best", "last"])
    decode.add_argument("--batch-size", type=_positive_int, default=500)
    add_common(decode)

    interpolate = commands.add_parser("interpolate", help="decode a straight latent path between two examples",
                                      description="Decoded means along the straight line between the latents of "
                                                  "examples I and J of a split, written as one image row.")
    interpolate.add_argument("run_dir", type=_path, metavar="RUN_DIR")
    add_split_input(interpolate)
    interpolate.add_argument("--pair", type=int, nargs=2, required=True, metavar=("I", "J"), help="the two examples' indices")
    interpolate.add_argument("--steps", type=int, default=10, help="images in the strip, both ends included (default: 10)")
    interpolate.add_argument("--out", type=_path, required=True, metavar="STRIP.png", help="PNG path; the .npy goes beside it")
    add_common(interpolate)

    listing = commands.add_parser("list", help="list models and data sets, or one model's hyperparameters",
                                  description="Without MODEL: every model and data set. With MODEL: its "
                                              "hyperparameters, their defaults and what they do.")
    listing.add_argument("model", nargs="?", metavar="MODEL", help="a model name, e.g. fvsbn")
    return parser


def _train_config(args: argparse.Namespace) -> RunConfig:
    config = load_run_config(args.config) if args.config else RunConfig()
    model = dict(config.model)
    if model.get("name", args.model) != args.model:
        raise ConfigError(f"{args.config} configures model {model['name']!r}, but the command trains {args.model!r}")
    model["name"] = args.model
    raw = config.to_dict()
    raw["model"] = model
    for (table, name), value, source in _command_values(args):
        if (table, name) == ("model", "name") and value != args.model:
            # it would silently replace the model that the command names
            raise ConfigError(f"{source}={value} names another model than the command's {args.model!r}; "
                              f"train it with: genzoo train {value} ...")
        raw[table][name] = value
    config = run_config_from_dict(raw, where="command line")
    model_config_class(args.model)  # an unknown model fails here, before any data is read
    if is_user_file(config.data.name) and Path(config.data.name).exists():
        # as a path from anywhere: eval, sample and --resume may run in another folder
        config.data.name = str(Path(config.data.name).resolve())
    return config


def _param_target(key: str) -> tuple[str, str]:
    """(table, key) that ``-p KEY=...`` sets: "train.lr" -> ("train", "lr"); no table means the model."""
    table, _, name = key.rpartition(".")
    if table not in ("", "model", "train", "data"):
        raise ConfigError(f"-p {key}: unknown table {table!r}; use model., train. or data. (or no prefix for the model)")
    return table or "model", name


#: train's options that set a config value: option -> (table, key, argparse dest)
_CONFIG_OPTIONS = {
    "--data": ("data", "name", "data"),
    "--binarization": ("data", "binarization", "binarization"),
    "--epochs": ("train", "epochs", "epochs"),
    "--batch-size": ("train", "batch_size", "batch_size"),
    "--lr": ("train", "lr", "lr"),
    "--seed": ("train", "seed", "seed"),
    "--max-seconds": ("train", "max_seconds", "max_seconds"),
    "--fit-epochs-to-time": ("train", "fit_epochs_to_max_seconds", "fit_epochs_to_max_seconds"),
}


def _command_values(args: argparse.Namespace) -> list[tuple[tuple[str, str], object, str]]:
    """((table, key), value, source) for each config value train's command line sets: the -p values
    in order, then the options. A key set by both is refused: the option would silently win over
    -p (whose value then goes unchecked)."""
    given, by_param = [], {}
    for key, value in args.param:
        target = _param_target(key)
        if target in by_param:  # -p k=1 -p k=2: a slip, not a choice of the last
            raise ConfigError(f"{target[0]}.{target[1]} is set twice, by {by_param[target]} and by -p {key}; keep one")
        by_param[target] = f"-p {key}"
        given.append((target, value, f"-p {key}"))
    for option, (table, key, value) in _options_given(args).items():
        if (table, key) in by_param:
            raise ConfigError(f"{table}.{key} is set twice, by {by_param[(table, key)]} and by {option}; keep one")
        given.append(((table, key), value, option))
    return given


def _options_given(args: argparse.Namespace) -> dict[str, tuple[str, str, object]]:
    """option -> (table, key, value) for each of train's config-setting options on the command line."""
    given = {}
    for option, (table, key, dest) in _CONFIG_OPTIONS.items():
        value = getattr(args, dest)
        if value not in (None, ""):
            given[option] = (table, key, value)
    return given


#: what --resume may change: the run continues as its checkpoint and config.toml describe it
_RESUME_KEYS = {("train", "epochs"), ("train", "max_seconds")}


def _check_resume_arguments(args: argparse.Namespace, run_dir: Path) -> None:
    """Refuse what --resume would otherwise ignore: another model, or a config value, data set or
    hyperparameter that differs from the run's. The same command again with --resume is fine."""
    config_file = run_dir / "config.toml"
    if not config_file.exists():
        return  # Trainer.resume says what is missing
    saved = load_run_config(config_file)
    if saved.model_name != args.model:
        raise ValueError(f"{run_dir} holds a {saved.model_name!r} run, not {args.model!r}; "
                         f"resume it with: genzoo train {saved.model_name} --resume --out {run_dir}")
    wanted: dict[tuple[str, str], tuple[object, str]] = {}  # (table, key) -> (value, where the command sets it)
    if args.config is not None:
        for table, entries in load_run_config(args.config).to_dict().items():
            wanted.update({(table, key): (value, f"--config {args.config}") for key, value in entries.items()})
    wanted.update({target: (value, source) for target, value, source in _command_values(args)})
    # values compared as TOML reads them back: a tuple is its list
    run_values = as_toml_values({**saved.to_dict(), "model": {
        "name": saved.model_name, **_with_defaults(saved.model_name, saved.model_hyperparameters)}})
    # a config file's epochs and max_seconds are the run's own unless they differ: then say how to change them
    changes = [f"{source} sets {table}.{key} = {value!r} (the run's: {run_values[table].get(key)!r})"
               for (table, key), (value, source) in wanted.items()
               if ((table, key) not in _RESUME_KEYS or source.startswith("--config"))
               and not _same_value((table, key), run_values.get(table, {}).get(key), as_toml_values(value))]
    if changes:
        raise ValueError(f"--resume continues {run_dir} as it was configured, but {'; '.join(changes)}; only "
                         "--epochs and --max-seconds can change (start a new run with another --out for the rest)")


def _with_defaults(model_name: str, hyperparameters: dict[str, object]) -> dict[str, object]:
    """A run's hyperparameters with the model's defaults for those config.toml leaves out (it keeps
    only those set), so that -p KEY=DEFAULT on a resume is the run's own value."""
    try:
        resolved = build_dataclass(model_config_class(model_name), dict(hyperparameters), where="model")
    except (ConfigError, ValueError):
        return dict(hyperparameters)
    return {field.name: getattr(resolved, field.name) for field in dataclasses.fields(resolved) if field.init}


def _same_value(key: tuple[str, str], run_value: object, value: object) -> bool:
    """Whether a command's config value is the run's; a data file may be named by another path."""
    if run_value == value:
        return True
    if key == ("data", "name") and isinstance(value, str) and isinstance(run_value, str) and is_user_file(value):
        return Path(value).exists() and Path(run_value).exists() and Path(value).resolve() == Path(run_value).resolve()
    return False


def _resume_changes(args: argparse.Namespace) -> dict[str, object]:
    """The new epochs and max_seconds that a --resume command gives, by option or by -p train.KEY=..."""
    # each key comes at most once: _command_values refuses one set twice
    return {key: value for (table, key), value, _ in _command_values(args) if (table, key) in _RESUME_KEYS}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's preemption or time limit): a command stops as it does on
    Ctrl-C, so that its temporary files are removed and a training run says how to resume, rather
    than dying where it stands."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM (``stop``) during a command, with what the user needs to carry on (one line)."""

    def __init__(self, message: str, stop: KeyboardInterrupt):
        super().__init__(message)
        self.stop = stop


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> typing.Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the command runs (main thread only: Python
    delivers signals there), and restore the previous handler after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _how_stopped(stop: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped a command, in words, and its exit status as a shell reports a command killed
    by that signal: 128 + 15 (SIGTERM) or 128 + 2 (SIGINT)."""
    return ("stopped by SIGTERM", 128 + 15) if isinstance(stop, Terminated) else ("interrupted", 128 + 2)


def _budget_option(trainer: Trainer) -> str:
    """" --max-seconds T" where this command's budget is not the one config.toml keeps (a resume's own)."""
    budget = trainer.config.train.max_seconds
    saved = load_run_config(trainer.run.config).train.max_seconds if trainer.run.config.exists() else budget
    return f" --max-seconds {budget:g}" if budget != saved else ""


def _cmd_train(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    progress = False if args.quiet else None
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other; choose one")
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out RUN_DIR")
        _check_resume_arguments(args, args.out)
        trainer = Trainer.resume(args.out, device, args.data_dir, progress, **_resume_changes(args))
    else:
        config = _train_config(args)
        out = args.out or Path("runs") / f"{args.model}-{Path(config.data.name).stem}"
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; a run folder is a folder")
        trainer = Trainer(config, out, device, args.data_dir, progress, overwrite=args.overwrite)
    try:
        result = trainer.fit()
    except KeyboardInterrupt as stop:
        run = trainer.run
        if run.metrics.exists():
            trainer.write_loss_curve()
        if run.last.exists():
            next_step = (f"{run.last} holds the last saved epoch; continue with: "
                         f"genzoo train {trainer.config.model_name} --resume --out {run.path}{_budget_option(trainer)}")
        else:
            next_step = f"no epoch was saved yet in {run.path}; start it again with --overwrite"
        raise Interrupted(f"training {_how_stopped(stop)[0]}; {next_step}", stop) from None
    print(
        f"trained {trainer.config.model_name} for {result.epochs_completed} epoch{'' if result.epochs_completed == 1 else 's'} "
        f"({result.stopped_because}) "
        f"in {result.train_seconds:.1f} s; best valid NLL {result.best_valid_nll:.2f} nats at epoch {result.best_epoch}; "
        f"run folder {trainer.run.path}"
    )


def _cmd_eval(args: argparse.Namespace) -> None:
    if args.scores is not None and args.scores.suffix not in SCORE_FILE_SUFFIXES:
        raise ValueError(f"--scores {args.scores}: use a .npy or .csv file")
    if args.scores is not None:
        _check_output_path(args.scores, "--scores")
        if args.input is not None:
            _check_not_an_input(args.scores, args.input, "--scores")
    device = resolve_device(args.device)
    run, payload, model = load_run(args.run_dir, args.checkpoint, device)
    config = run_config_from_dict(payload["config"], where=str(run.path))
    conditional = getattr(model, "num_classes", 0) > 0  # scored given the split's class labels
    if args.input is not None:
        if conditional:
            raise ValueError(f"{config.model_name} is class-conditional and scores x given its label; "
                             "--input files carry no labels, so evaluate a --split instead")
        x, labels, name = _examples_from_file(model, args.input), None, args.input.name
        out = run.path / f"eval_input-{args.input.name}.json"  # the whole name: x.npy and x.csv differ
    else:
        (x, labels), name = _split_data(payload, args.split, args.data_dir, labels=conditional), args.split
        out = run.path / f"eval_{args.split}.json"
    tic = time.perf_counter()
    result, log_p = evaluate_with_scores(model, x.reshape(len(x), -1), name, args.batch_size,
                                         progress=False if args.quiet else None,
                                         labels=labels)
    record = {
        "model": config.model_name,
        "dataset": config.data.name,
        "binarization": config.data.binarization,
        "checkpoint": args.checkpoint,
        "epoch": payload.get("epoch"),
        **({"input": str(args.input)} if args.input is not None else {}),
        **result.to_dict(),
        "eval_seconds": time.perf_counter() - tic,
        "device": str(device),
    }
    # strict JSON: a figure that does not exist (the standard error of one example) is null, not NaN
    record = {key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in record.items()}
    atomic_write_text(out, json.dumps(record, indent=2, allow_nan=False) + "\n")
    print(result.describe())
    print(f"written to {out}")
    if args.scores is not None:
        _write_scores(args.scores, log_p, model)
        print(f"per-example log p(x) written to {args.scores}")


SCORE_FILE_SUFFIXES = (".npy", ".csv")


def _examples_from_file(model, path: Path) -> torch.Tensor:
    """A user's file of examples for ``--input`` (eval, encode), checked against the model: the number of
    values per example and the model's support (binary values for a Bernoulli model)."""
    x = torch.from_numpy(load_examples(path)).float()
    per_example = x[0].numel()
    if per_example != model.num_dims:
        shape = "x".join(map(str, model.data_shape))
        raise DataError(f"{path}: examples have {per_example} values; this run's model takes {model.num_dims} ({shape})")
    try:
        return model.flatten_input(x.reshape(len(x), -1))
    except ValueError as error:  # the model names the row and the value
        raise DataError(f"{path}: {error}") from None


def _write_scores(path: Path, log_p: torch.Tensor, model) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        atomic_write(path, lambda f: np.save(f, log_p.numpy()))
        return
    bound = model.likelihood == "lower_bound"
    nll_bits = -log_p / (model.num_dims * math.log(2))
    header = "log_p_lower_bound_nats,nll_upper_bound_bits_per_dim" if bound else "log_p_nats,nll_bits_per_dim"
    lines = [header] + [f"{a:.6f},{b:.6f}" for a, b in zip(log_p.tolist(), nll_bits.tolist())]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _cmd_sample(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise ValueError(f"-n must be at least 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None:
        _check_image_output(args.out)
    device = resolve_device(args.device)
    run, _, model = load_run(args.run_dir, args.checkpoint, device)
    _check_images_fit_in_memory(args.num_samples, model.num_dims)
    if args.sampler != "speculative" and (args.draft is not None or args.gamma is not None):
        raise ValueError(f"{'--draft' if args.draft is not None else '--gamma'} is only used with --sampler speculative")
    args.gamma = SPECULATIVE_GAMMA if args.gamma is None else args.gamma
    draft = None
    if args.sampler == "speculative":
        if args.draft is None:
            raise ValueError("--sampler speculative needs --draft DRAFT_RUN_DIR")
        if args.gamma < 1:
            raise ValueError(f"--gamma must be at least 1, got {args.gamma}")
        _, _, draft = load_run(args.draft, args.checkpoint, device)
        check_speculative_pair(model, draft)
    options: dict[str, object] = {} if args.label is None else {"y": args.label}
    if args.temperature is not None:
        if "temperature" not in {f.name for f in dataclasses.fields(model_config_class(model.name))}:
            raise ValueError(f"--temperature is for flows (nice, realnvp, glow); {model.name!r} has none")
        if args.sampler != "fast":
            raise ValueError(f"--temperature is used with the flow's own sampler, not --sampler {args.sampler}")
        options["temperature"] = args.temperature
    if args.label is not None and getattr(model, "num_classes", 0) == 0:
        raise ValueError(f"--label needs a class-conditional model (num_classes > 0); the run in {args.run_dir} is not one")
    if args.label is not None and draft is not None:
        raise ValueError("--label does not combine with --sampler speculative")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    stats = None
    tic = time.perf_counter()
    sizes = [min(args.batch_size, args.num_samples - start) for start in range(0, args.num_samples, args.batch_size)]
    bar = tqdm(sizes, desc="sample", unit="batch", leave=False, disable=True if args.quiet else None)
    with torch.no_grad():
        if draft is not None:
            batches = [speculative_sample(model, draft, n, args.gamma, generator) for n in bar]
            x = torch.cat([samples for samples, _ in batches])
            stats = sum((batch_stats for _, batch_stats in batches), SpeculativeStats())
        else:
            draw = _sampler(model, args.sampler, generator, options)
            x = torch.cat([draw(n) for n in bar])
    seconds = time.perf_counter() - tic
    png = args.out or run.path / "samples.png"
    _write_images(x, png, np.float32 if model.support == "real" else np.uint8, support=model.support)
    print(f"drew {args.num_samples} samples in {seconds:.3f} s ({args.num_samples / seconds:.1f} samples/s, {args.sampler} sampler)")
    if stats is not None:
        print(f"speculative: gamma {args.gamma}, acceptance rate {stats.acceptance_rate:.3f}, "
              f"{stats.target_calls} target calls, {stats.dimensions_per_target_call:.2f} dimensions per row per call")
    print(f"written to {png} and {png.with_suffix('.npy')}")


#: peak bytes per sampled value: the float32 samples, the .npy's copy, the image conversion's float
#: and uint8 copies and the grid zoomed 4× (16 pixels a value); 32.5 measured for 8×8 samples
SAMPLE_BYTES_PER_VALUE = 36


def _check_images_fit_in_memory(n: int, num_dims: int, option: str = "-n", images: str = "samples") -> None:
    """Refuse an -n (or --steps) whose images, kept in memory for the grid and the .npy, could not
    fit, instead of drawing until the machine runs out."""
    needed = SAMPLE_BYTES_PER_VALUE * n * num_dims
    available = _available_memory_bytes()
    if available is not None and needed > available:
        raise ValueError(f"{option} {n}: {n} {images} of {num_dims} values need about {needed / 1e9:,.1f} GB in memory "
                         f"(the {images}, their .npy and the PNG grid), and {available / 1e9:,.1f} GB are available; "
                         "ask for fewer")


def _available_memory_bytes() -> int | None:
    """Linux's MemAvailable (free memory plus the page cache it can reclaim: free memory alone can
    be small on a busy machine), else the free physical pages, else None (nothing to check with)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return None


def _sampler(model, sampler: str, generator: torch.Generator, options: dict):
    """n -> n samples of the run's model, by its own sampler or by the naive one (D passes);
    ``options`` are the sampler's keywords (a class label, a flow's temperature)."""
    if sampler == "naive":
        if not hasattr(model, "sample_naive"):
            raise ValueError(f"model {model.name!r} has no naive sampler")
        return lambda n: model.unflatten(model.sample_naive(model.draw_uniforms(n, generator), **options))
    return lambda n: model.sample(n, generator=generator, **options)


def _load_latent_run(run_dir: Path, which: str, device: torch.device):
    """A run whose model has a latent space (encode, decode, interpolate), else a one-line error."""
    run, payload, model = load_run(run_dir, which, device)
    if not all(callable(getattr(model, name, None)) for name in ("encode", "decode", "interpolate")):
        raise ValueError(f"model {model.name!r} of {run_dir} has no latent space; encode, decode and interpolate "
                         "need a latent-variable model (e.g. vae, iwae, gumbel-vae, vqvae)")
    return run, payload, model


def _split_data(payload: dict, split: str, data_dir: str | None,
                labels: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A split of the run's data set as ``genzoo eval`` scores it (flat rows; the training split
    of dynamically binarized data as one seeded draw), and its class labels if asked for."""
    config = run_config_from_dict(payload["config"], where="checkpoint")
    data = make_training_data(config.data, data_dir, labels=labels)
    # the run's data file may have been replaced since training: its splits would not be the run's
    check_same_data(payload, data, data.fingerprint(), config.data.name,
                    f"cannot score the run's {split} split (score a file with --input instead)")
    x = {"train": data.train_source, "valid": data.valid, "test": data.test}[split]
    y = {"train": data.train_labels, "valid": data.valid_labels, "test": data.test_labels}[split]
    if split == "train" and data.dynamic:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(config.data.eval_binarization_seed))
    return x.reshape(len(x), -1), y


def _check_output_path(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written (a folder, or under a file) before the work
    whose result would go there."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            break


def _check_not_an_input(output: Path, input_file: Path, option: str) -> None:
    """Refuse to write over the file that the command reads."""
    if output.exists() and input_file.exists() and output.resolve() == input_file.resolve():
        raise ValueError(f"{option} would write {output}, the command's own input; choose another name")


def _check_image_output(path: Path, option: str = "--out") -> None:
    _check_output_path(path, option)
    image_format(path)


def _write_images(x: torch.Tensor, png: Path, dtype: type, ncols: int | None = None, support: str | None = None) -> None:
    """A PNG grid of ``x`` and the array itself beside it (same name, .npy). ``support``: the
    model's ("binary" values and means lie in [0, 1], "grayscale" in [0, 255]); else guessed."""
    value_range = {"binary": "unit", "grayscale": "8-bit"}.get(support or "")
    save_image_grid(x, png, ncols=ncols, value_range=value_range)
    atomic_write(png.with_suffix(".npy"), lambda f: np.save(f, x.cpu().numpy().astype(dtype)))


def _cmd_encode(args: argparse.Namespace) -> None:
    _check_output_path(args.out, "--out")
    if args.out.suffix != ".npy":  # np.save would add .npy to any other name
        raise ValueError(f"--out {args.out}: the latents are written as .npy; give a name ending in .npy")
    if args.input is not None:
        _check_not_an_input(args.out, args.input, "--out")
    device = resolve_device(args.device)
    _, payload, model = _load_latent_run(args.run_dir, args.checkpoint, device)
    if args.input is not None:
        x = _examples_from_file(model, args.input)
    else:
        x, _ = _split_data(payload, args.split, args.data_dir)
    with torch.no_grad():
        z = torch.cat([model.encode(batch.to(device)).cpu() for batch in x.split(args.batch_size)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda f: np.save(f, z.numpy()))
    print(f"encoded {len(x)} examples to latents of shape {tuple(z.shape[1:])} ({z.dtype}); written to {args.out}")


def _cmd_decode(args: argparse.Namespace) -> None:
    _check_image_output(args.out)
    device = resolve_device(args.device)
    _, _, model = _load_latent_run(args.run_dir, args.checkpoint, device)
    if not args.latents.is_file():
        raise FileNotFoundError(f"latent file {args.latents} does not exist")
    if args.latents.suffix != ".npy":
        raise ValueError(f"latent file {args.latents}: expected a .npy file, as encode writes")
    _check_not_an_input(args.out.with_suffix(".npy"), args.latents, "--out")
    z = read_numpy_arrays(args.latents)["all"]
    if z.dtype.kind not in "biuf":
        raise ValueError(f"{args.latents} holds an array of {z.dtype}; expected numbers")
    z = torch.from_numpy(z.astype(z.dtype.newbyteorder("="), copy=False))
    if z.dim() < 2 or len(z) == 0:
        raise ValueError(f"{args.latents} holds an array of shape {tuple(z.shape)}; expected one latent per row (N, ...)")
    with torch.no_grad():
        x = torch.cat([model.decode(batch.to(device)).cpu() for batch in z.split(args.batch_size)])
    _write_images(x, args.out, np.float32, support=model.support)
    print(f"decoded {len(z)} latents; written to {args.out} and {args.out.with_suffix('.npy')}")


def _cmd_interpolate(args: argparse.Namespace) -> None:
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2, got {args.steps}")
    _check_image_output(args.out)
    device = resolve_device(args.device)
    _, payload, model = _load_latent_run(args.run_dir, args.checkpoint, device)
    _check_images_fit_in_memory(args.steps, model.num_dims, "--steps", "images")
    x, _ = _split_data(payload, args.split, args.data_dir)
    for index in args.pair:
        if not 0 <= index < len(x):
            raise ValueError(f"--pair index {index} is out of range for the {args.split} split ({len(x)} examples)")
    i, j = args.pair
    with torch.no_grad():
        strip = model.interpolate(x[i].to(device), x[j].to(device), args.steps).cpu()
    _write_images(strip, args.out, np.float32, ncols=args.steps, support=model.support)
    print(f"interpolated {args.split} examples {i} and {j} in {args.steps} steps; written to {args.out} and {args.out.with_suffix('.npy')}")


def _describe_model(name: str) -> None:
    info = model_info(name)  # an unknown name fails here, naming the known ones
    config_class = model_config_class(name)
    likelihood = info.likelihood + (f" on binary and 8-bit data, {info.likelihood_on_real_data} on real-valued data"
                                    if info.likelihood_depends_on_data else "")
    print(f"{name}: {info.title} ({info.family}; log_prob: {likelihood})")
    fields = [f for f in dataclasses.fields(config_class) if f.init]
    if not fields:
        print("no hyperparameters")
        return
    print("hyperparameters (-p KEY=VALUE, or the [model] table of a config file):")
    hints, docs = typing.get_type_hints(config_class), field_docs(config_class)
    for field, following in zip(fields, [*fields[1:], None]):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        print(f"  {field.name} = {toml_value(default)}  ({field_kind(hints[field.name])})")
        doc = docs.get(field.name)
        # a comment that documents a run of fields is printed once, under the last of them
        if doc and (following is None or docs.get(following.name) != doc):
            print(textwrap.fill(doc, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))


def _cmd_list(args: argparse.Namespace) -> None:
    if args.model is not None:
        _describe_model(args.model)
        return
    print("models:")
    print(f"  {'name':16s} {'family':15s} {'log_prob':13s} model")
    infos = [model_info(name) for name in list_models()]
    for info in infos:
        kind = info.likelihood + ("*" if info.likelihood_depends_on_data else "")
        print(f"  {info.name:16s} {info.family:15s} {kind:13s} {info.title}")
    if any(info.likelihood_depends_on_data for info in infos):
        print("  * on binary and 8-bit data (every data set below): a dequantization bound; exact on real-valued data")
    print("data sets:")
    for info in DATASETS.values():
        shape = "x".join(map(str, info.data_shape))
        print(f"  {info.name:16s} {info.kind:9s} {shape:8s} {'/'.join(map(str, info.sizes)):16s} {info.description}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"train": _cmd_train, "eval": _cmd_eval, "sample": _cmd_sample, "list": _cmd_list,
               "encode": _cmd_encode, "decode": _cmd_decode, "interpolate": _cmd_interpolate}[args.command]
    try:
        with sigterm_stops_like_ctrl_c():
            handler(args)
    except Interrupted as interruption:
        print(f"genzoo: {interruption}", file=sys.stderr)
        return _how_stopped(interruption.stop)[1]
    except KeyboardInterrupt as stop:
        what, status = _how_stopped(stop)
        print(f"genzoo: {what}", file=sys.stderr)
        return status
    except BrokenPipeError:
        # The reader left early (`genzoo list | head`): stop quietly, as Unix tools do, and keep
        # Python from failing again when it flushes stdout at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return 128 + 13  # killed by SIGPIPE, as a shell reports it
    except (ValueError, OSError, FloatingPointError) as error:
        # ConfigError, DataError and CheckpointError are ValueErrors: one line, no traceback.
        print(f"genzoo: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if "can't allocate memory" not in str(error) and not isinstance(error, torch.OutOfMemoryError):
            raise
        print(f"genzoo: error: not enough memory: {_allocation_failure(error)}", file=sys.stderr)
        return 2
    except MemoryError:  # NumPy's or Pillow's allocations, e.g. a PNG grid of very many samples
        print("genzoo: error: not enough memory for this command; ask for less (fewer samples, a smaller "
              "--batch-size)", file=sys.stderr)
        return 2
    return 0


def _one_line(error: Exception) -> str:
    """An error's message on one line. An OSError raised by the system ("[Errno 20] Not a
    directory: 'a/b'") becomes "a/b: not a directory"; genzoo's own say what they mean already."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror[0].lower()}{error.strerror[1:]}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _allocation_failure(error: RuntimeError) -> str:
    """What a failed allocation asked for, from torch's multi-line message."""
    lines = [line.strip() for line in str(error).splitlines() if "allocate" in line]
    text = lines[0] if lines else str(error).splitlines()[0]
    return text.split("] ", 1)[-1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
