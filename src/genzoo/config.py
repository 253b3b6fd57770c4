"""Typed configuration: dataclasses filled from TOML (or keyword arguments) and checked on load.

A run's TOML file has three tables::

    [model]              # name, then the model's own hyperparameters
    name = "made"
    hidden_sizes = [8000]

    [data]
    name = "binarized-mnist"

    [train]
    epochs = 100
    lr = 1e-3

Unknown keys and values of the wrong type are refused with the key named.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import operator
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "DataConfig", "TrainConfig", "RunConfig", "build_dataclass", "load_run_config", "dump_toml"]


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _toml_kind(value: Any) -> str:
    """A value's kind in TOML's words, for errors about a file: "a string", "an integer", ..."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked (and, where lossless, converted) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        # any integer type (NumPy's too), but not a bool
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        value = operator.index(value)
        # what torch can hold: a seed or size past it fails later with an overflow naming no key
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{key} must be an integer from -2**63 to 2**63 - 1, got {value}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def build_dataclass(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``values``, refusing unknown keys and ill-typed values."""
    if not isinstance(values, Mapping):
        # a string would otherwise be read key by key, one character each ("unknown key 'd'")
        raise ConfigError(f"{where} must be a table of keys and values, got {_toml_kind(values)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(sorted(names))}"
        )
    checked = {k: _coerce(v, hints[k], f"{where}: {k}") for k, v in values.items()}
    try:
        return cls(**checked)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


def require(condition: bool, message: str) -> None:
    """For ``__post_init__`` range checks: raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


@dataclass
class DataConfig:
    #: a registered data set name or the path of a .npy/.npz/.csv file
    name: str = "mnist5k"
    #: for 8-bit data: "dynamic" draws a fresh Bernoulli(pixel/255) binarization each epoch
    #: (valid and test use one seeded draw); "none" keeps the data as it is
    binarization: Literal["none", "dynamic"] = "none"
    #: seed of the fixed draw of the valid and test splits under dynamic binarization
    eval_binarization_seed: int = 1234

    def __post_init__(self) -> None:
        require(bool(self.name), "data: name must not be empty")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine", "exponential", "multistep"] = "constant"
    #: the factor of the exponential schedule (every epoch) and of the multistep one (at each milestone)
    lr_decay: float = 1.0
    #: multistep: the epochs after which the learning rate is multiplied by lr_decay (increasing)
    lr_milestones: tuple[int, ...] = ()
    #: Adam's ε, added to √v in its denominator (Burda et al. 2016 use 1e-4)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    #: λ of an L1 penalty λ·Σ|w| added to the training loss, over the weights of linear and
    #: convolutional layers and NADE's W and V (a masked layer's masked entries excluded; never
    #: biases, nor a flow's invertible 1×1 convolutions): sparse
    #: weights, e.g. an FVSBN's logistic regressions ignoring far-away pixels
    l1_penalty: float = 0.0
    #: clip the global gradient norm to this value; 0 turns clipping off
    grad_clip: float = 0.0
    #: stop after this many epochs without a better validation NLL; 0 never stops early
    patience: int = 0
    #: validate (and keep the best checkpoint) every this many epochs, and always at the end;
    #: for models whose validation costs more than an epoch, e.g. a 32-mask MADE ensemble
    eval_every: int = 1
    #: write checkpoints/last.pt every this many epochs, with each new best (so that best.pt is
    #: never of an epoch a resume redoes) and always when the run stops; for
    #: models whose checkpoint costs much next to an epoch (a 77 M-parameter MADE with its Adam
    #: state is 0.9 GB); a resume redoes the epochs trained since the last one
    checkpoint_every: int = 1
    #: also write checkpoints/last.pt once this many minutes have passed since the last write;
    #: 0: never by time. For a run whose epochs take seconds on a GPU and minutes on a CPU, so
    #: that ``checkpoint_every`` can stay high for the GPU while a CPU run stopped without
    #: warning loses at most these minutes
    checkpoint_every_minutes: float = 0.0
    eval_batch_size: int = 1000
    #: stop training after this much time (seconds of training epochs: validation and checkpoint
    #: writes are not counted); 0 means no limit
    max_seconds: float = 0.0
    #: with max_seconds: after each epoch, shorten the planned epochs to as many as fit in
    #: max_seconds at the mean epoch time so far, so that the learning-rate schedule (a cosine's
    #: fall to zero) ends when the time does instead of being cut off part-way; never lengthens
    #: the plan
    fit_epochs_to_max_seconds: bool = False
    seed: int = 0
    #: a checkpoint (or a run folder: its best.pt) whose model weights initialize a new run (e.g.
    #: stage two of a two-stage model from a stage-one run); "" starts from the model's own initialization
    init_from: str = ""

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"train: epochs must be at least 1, got {self.epochs}")
        require(self.batch_size >= 1, f"train: batch_size must be at least 1, got {self.batch_size}")
        require(self.eval_batch_size >= 1, f"train: eval_batch_size must be at least 1, got {self.eval_batch_size}")
        # isfinite: `lr = inf` is valid TOML and passes `> 0`, but only turns the loss into nan
        require(math.isfinite(self.lr) and self.lr > 0, f"train: lr must be a positive finite number, got {self.lr}")
        require(0 < self.lr_decay <= 1, f"train: lr_decay must lie in (0, 1], got {self.lr_decay}")
        self.lr_milestones = tuple(self.lr_milestones)
        require(all(m >= 1 for m in self.lr_milestones) and list(self.lr_milestones) == sorted(set(self.lr_milestones)),
                f"train: lr_milestones must be increasing epochs of at least 1, got {list(self.lr_milestones)}")
        require(self.lr_schedule != "multistep" or bool(self.lr_milestones),
                'train: lr_schedule = "multistep" needs lr_milestones, e.g. [10, 20]')
        require(math.isfinite(self.adam_eps) and self.adam_eps > 0,
                f"train: adam_eps must be a positive finite number, got {self.adam_eps}")
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                f"train: weight_decay must be a non-negative finite number, got {self.weight_decay}")
        require(math.isfinite(self.l1_penalty) and self.l1_penalty >= 0,
                f"train: l1_penalty must be a non-negative finite number, got {self.l1_penalty}")
        # 0 is the way to turn clipping off; an infinite norm bound would only hide that
        require(math.isfinite(self.grad_clip) and self.grad_clip >= 0,
                f"train: grad_clip must be a non-negative finite number (0 turns clipping off), got {self.grad_clip}")
        require(self.patience >= 0, f"train: patience must be non-negative, got {self.patience}")
        require(self.eval_every >= 1, f"train: eval_every must be at least 1, got {self.eval_every}")
        require(self.checkpoint_every >= 1, f"train: checkpoint_every must be at least 1, got {self.checkpoint_every}")
        require(math.isfinite(self.checkpoint_every_minutes) and self.checkpoint_every_minutes >= 0,
                f"train: checkpoint_every_minutes must be a non-negative finite number (0: never by time), "
                f"got {self.checkpoint_every_minutes}")
        # max_seconds = inf is allowed: like 0, it never stops the run
        require(self.max_seconds >= 0, f"train: max_seconds must be non-negative, got {self.max_seconds}")
        # ... but fitting the epochs to it divides the time left, which must then be finite
        require(not self.fit_epochs_to_max_seconds or 0 < self.max_seconds < math.inf,
                "train: fit_epochs_to_max_seconds needs a time budget: set max_seconds to a finite number of seconds")


@dataclass
class RunConfig:
    """Everything a training run needs: ``model`` holds the name and the model's hyperparameters."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # Built in Python, a wrong type would fail far from here: a string model as "names no
        # model", a dict data as an AttributeError mid-run. run_config_from_dict builds from dicts.
        _require_instance(self.model, dict, "model", "a dict of the model's name and hyperparameters, e.g. {'name': 'made'}")
        _require_instance(self.data, DataConfig, "data", "a DataConfig, e.g. DataConfig(name='digits')")
        _require_instance(self.train, TrainConfig, "train", "a TrainConfig, e.g. TrainConfig(epochs=10)")

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "data": dataclasses.asdict(self.data), "train": dataclasses.asdict(self.train)}


def _require_instance(value: Any, cls: type, name: str, expected: str) -> None:
    """RunConfig's field ``name`` must hold a ``cls``; ``expected`` says what to pass instead."""
    if not isinstance(value, cls):
        raise ConfigError(f"RunConfig: {name} must be {expected}, got {type(value).__name__} {value!r}")


#: what each table of a run config looks like, for the error when a file gives a scalar instead
_TABLE_EXAMPLES = {"model": '[model] name = "made"', "data": '[data] name = "digits"', "train": "[train] epochs = 10"}


def _table(raw: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    """``raw[name]`` (empty if absent), refused unless it is a table: `data = "digits"` is a
    string, and iterating it would complain about keys 'd', 'i', ... instead."""
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{name}] must be a table (e.g. {_TABLE_EXAMPLES[name]}), got {_toml_kind(value)}")
    return value


def run_config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a run config must be a table of [model], [data] and [train], got {_toml_kind(raw)}")
    unknown = sorted(set(raw) - {"model", "data", "train"})
    if unknown:
        raise ConfigError(f"unknown table [{unknown[0]}] in {where}; valid tables: [model], [data], [train]")
    model = dict(_table(raw, "model", where))
    if "name" in model and not isinstance(model["name"], str):
        raise ConfigError(f"{where}: model.name must be a string")
    data = build_dataclass(DataConfig, _table(raw, "data", where), where=f"{where} [data]")
    train = build_dataclass(TrainConfig, _table(raw, "train", where), where=f"{where} [train]")
    return RunConfig(model=model, data=data, train=train)


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run config from TOML, checking every key."""
    path = Path(path)
    try:
        raw = tomllib.loads(_read_toml_text(path))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    try:
        return run_config_from_dict(raw, where=str(path))
    except ConfigError as error:
        if str(path) in str(error):
            raise
        # a range check ("train: lr must be ...") names its key but not the file it came from
        raise ConfigError(f"{path}: {error}") from None


def _read_toml_text(path: Path) -> str:
    """The text of TOML file ``path``; each way reading it can fail is a ConfigError naming it."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as error:
        # is_dir, not IsADirectoryError alone: Windows reports a directory as PermissionError
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        # TOML is UTF-8 by definition: decoding with the locale's encoding could misread it
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {content[error.start]:#04x} at "
                          f"position {error.start}); TOML files must be UTF-8") from None


def toml_value(value: Any) -> str:
    """``value`` written as TOML, as a config file or ``-p KEY=VALUE`` takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comments of dataclass ``cls`` (and of the dataclasses it extends), one line per
    field; {} where the source cannot be read. A comment documents the run of fields right below
    it (e.g. ``eval_samples``, ``eval_chunk`` and ``eval_seed`` under one comment that names all
    three), up to the next comment or blank line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        comment: list[str] = []  # the lines of the comment being read
        current = ""  # the comment that documents the run of fields being read
        for line in source.splitlines()[1:]:
            stripped = line.strip()
            if stripped.startswith("#:"):
                comment.append(stripped[2:].strip())
                continue
            field = re.match(r"(\w+)\s*:", stripped)
            if field is None:
                current = ""
            else:
                current = " ".join(comment).replace("``", "") if comment else current
                if current:
                    docs[field.group(1)] = current
            comment = []
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: doc for name, doc in docs.items() if name in names}


def field_kind(tp: Any) -> str:
    """A field's type in a reader's words: "one of "a", "b"" for a Literal, else the type's name."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(toml_value(v) for v in args)
    if origin in (tuple, list) and args:
        return f"list of {_type_name(args[0])}"
    return _type_name(tp)


def as_toml_values(value: Any) -> Any:
    """``value`` as a TOML file gives it back: tuples (a Python caller's ``(32,)``) as lists."""
    if isinstance(value, dict):
        return {key: as_toml_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_toml_values(item) for item in value]
    return value


def dump_toml(tables: dict[str, dict[str, Any]]) -> str:
    """Write a dict of flat tables as TOML (None values are left out)."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
