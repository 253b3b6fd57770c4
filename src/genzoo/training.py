"""One trainer for every model: Adam, minibatches, a learning-rate schedule, gradient clipping,
validation each epoch, early stopping, atomic checkpoints (best and last) and exact resume.

A run folder holds::

    config.toml            the resolved run config
    metrics.jsonl          one JSON record per epoch
    checkpoints/last.pt    written after every epoch, or every ``checkpoint_every`` epochs (or
                           ``checkpoint_every_minutes``) and when the run stops (resume starts here)
    checkpoints/best.pt    the model of the epoch with the best validation NLL (no optimizer state)
    loss_curve.png
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from genzoo.checkpoint import (CheckpointError, check_resumable, load_checkpoint, load_weights, model_from_checkpoint,
                               save_checkpoint)
from genzoo.config import RunConfig, TrainConfig, as_toml_values, dump_toml, load_run_config, run_config_from_dict
from genzoo.data import TrainingData, make_training_data
from genzoo.data.download import DataError
from genzoo.data.registry import is_user_file
from genzoo.devices import resolve_device, seed_everything, tune_cpu_process
from genzoo.evaluation import evaluate
from genzoo.files import atomic_write_text
from genzoo.images import save_loss_curve
from genzoo.models import GenerativeModel, build_model
from genzoo.models.base import model_config_class

__all__ = ["Trainer", "TrainResult", "RunFolder", "load_run", "load_model", "weight_l1_norm"]

#: what a non-finite loss or validation NLL calls for
DIVERGENCE_ADVICE = ("lower the learning rate, or check the config's loss weights and ranges (e.g. an extreme "
                     "l1_penalty, weight_decay or commitment) and the data")
#: training steps between two reads of the running loss (for the progress bar and the NaN check)
LOSS_READ_EVERY = 25


@dataclass
class RunFolder:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def loss_curve(self) -> Path:
        return self.path / "loss_curve.png"

    def checkpoint(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise ValueError(f"unknown checkpoint {which!r}; use best or last")
        return self.best if which == "best" else self.last

    def discard(self, keep: Path | None = None) -> None:
        """Remove what a previous run left here (its config, checkpoints, metrics, pictures,
        evaluations, and the samples ``genzoo sample`` writes by default, which would show the old model), only
        genzoo's own file names, and never ``keep`` (the new run's data file, if it lies here)."""
        default_samples = (self.path / "samples.png", self.path / "samples.npy")
        kept = keep.resolve() if keep is not None else None
        for path in (self.config, self.last, self.best, self.metrics, self.loss_curve, *default_samples,
                     *self.path.glob("eval_*.json")):
            if kept is None or not path.exists() or path.resolve() != kept:
                path.unlink(missing_ok=True)
        self.remove_partial_writes()

    def leftovers(self) -> list[str]:
        """The files of an earlier run (or a user's with the same names) that a new run here
        would replace or leave stale beside its own."""
        names = [self.config, self.metrics, self.best, self.loss_curve, *sorted(self.path.glob("eval_*.json"))]
        return [str(path.relative_to(self.path)) for path in names if path.exists()]

    def remove_partial_writes(self) -> None:
        """Delete checkpoint temp files that a killed process left half written (a finished write
        renames its temp file, so any left over is garbage)."""
        folder = self.last.parent
        if folder.is_dir():
            for path in folder.glob("*.pt*.tmp"):
                path.unlink(missing_ok=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records. A last line without its newline is a write cut short (a full
        disk, a kill) and is dropped, as its epoch's checkpoint was never written after it; any
        other line that is not a record is an error naming it."""
        if not self.metrics.exists():
            return []
        text = self.metrics.read_text()
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if number == len(lines) and not text.endswith("\n"):
                    break
                raise ValueError(f"{self.metrics} line {number} is not a JSON record ({error.msg}): the file is "
                                 "corrupt; delete that line (and the ones after it) to resume the run") from None
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) or isinstance(record["epoch"], bool):
                raise ValueError(f"{self.metrics} line {number} is not an epoch record: the file is corrupt")
            records.append(record)
        return records


def load_run(run_dir: str | Path, checkpoint: str = "best",
             device: str | torch.device = "cpu") -> tuple[RunFolder, dict[str, Any], GenerativeModel]:
    """A training run's folder, the payload of its ``checkpoint`` ("best" or "last") and the model
    it holds, in eval mode on ``device`` ("auto", "cpu" or "cuda"). Loading never runs code from
    the file (``genzoo.checkpoint``)."""
    run = RunFolder(Path(run_dir))
    if run.path.exists() and not run.path.is_dir():
        raise FileNotFoundError(f"{run_dir} is a file; give the run folder (what train --out named)")
    if not run.path.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    path = run.checkpoint(checkpoint)
    payload = load_checkpoint(path)
    device = resolve_device(device) if isinstance(device, str) else device
    return run, payload, model_from_checkpoint(payload, path).to(device).eval()


def check_same_data(payload: dict[str, Any], data: TrainingData, fingerprint: str, name: str, action: str) -> None:
    """A DataError, beginning with ``action``, unless ``data`` is what the checkpoint's run was
    trained on: the same shape and, where the checkpoint records it, the same splits' sha256."""
    saved = tuple(payload.get("data_shape", data.data_shape))
    if saved != tuple(data.data_shape):
        was, now = ("x".join(map(str, shape)) for shape in (saved, data.data_shape))
        raise DataError(f"{action}: the run was trained on data of shape {was}, but {name!r} now gives {now}; "
                        "the data changed since")
    if payload.get("data_sha256", fingerprint) != fingerprint:  # older checkpoints do not record it
        raise DataError(f"{action}: {name!r} is not the data the run was trained on (its splits' sha256 "
                        "differs); the data changed since")


def load_model(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> GenerativeModel:
    """The trained model of a run folder (what ``genzoo train --out RUN_DIR`` wrote), ready to score
    and sample: ``genzoo.load_model("runs/made").log_prob(x)``."""
    return load_run(run_dir, checkpoint, device)[2]


@dataclass
class TrainResult:
    model: GenerativeModel
    epochs_completed: int
    best_epoch: int
    best_valid_nll: float
    train_seconds: float
    stopped_because: str
    data: TrainingData  # the splits the run used (valid/test as evaluated)
    #: (first epoch, planned epoch total) for each epoch total the run has followed, in order: one
    #: pair unless a resume changed the total (the lr schedule is stretched at each change) or
    #: fit_epochs_to_max_seconds shortened it
    epoch_plans: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    #: the epoch total planned before fit_epochs_to_max_seconds shortened it in this session, else None
    fitted_from_epochs: int | None = None


def make_optimizer(model: GenerativeModel, config: RunConfig) -> torch.optim.Optimizer:
    """Adam; the fused kernel where this torch has one for the device (1.7x faster MADE steps on CPU)."""
    params = list(model.parameters())
    train = config.train
    options = {"lr": train.lr, "eps": train.adam_eps, "weight_decay": train.weight_decay}
    try:
        return torch.optim.Adam(params, **options, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, **options)


def cosine_factor(epoch: int, total_epochs: int) -> float:
    """The cosine schedule's lr multiplier after ``epoch`` of ``total_epochs``: (1 + cos(π·t/T)) / 2."""
    return (1.0 + math.cos(math.pi * min(epoch, total_epochs) / total_epochs)) / 2.0


def make_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> torch.optim.lr_scheduler.LRScheduler:
    train = config.train
    if train.lr_schedule == "cosine":
        # closed form read from the live config rather than CosineAnnealingLR, whose saved T_max
        # would outlive a resume with a new epoch total and swing the lr back up to its start;
        # here a longer run stretches the remaining schedule to its new end
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: cosine_factor(epoch, train.epochs))
    if train.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train.lr_decay)
    if train.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(train.lr_milestones), gamma=train.lr_decay)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def saved_optimizer_state_in_model_layout(model: GenerativeModel, optimizer: torch.optim.Optimizer,
                                          state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's optimizer state, with each model (a model inside another, like a VQ-VAE's
    prior, included) given its parameters' saved moments to adapt to the layout its weights loaded
    in (``GenerativeModel.adapt_saved_optimizer_state``); the checkpoint's own dicts are untouched.
    ``state`` has the structure ``check_resumable`` checks."""
    state = {**state, "state": {key: dict(value) for key, value in state["state"].items()}}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [i for group in state["param_groups"] for i in group["params"]]
    if len(params) != len(saved_ids):
        return state  # load_optimizer_state refuses it
    moments = {param: state["state"][saved_id] for param, saved_id in zip(params, saved_ids)
               if saved_id in state["state"]}
    for module in model.modules():
        if isinstance(module, GenerativeModel):
            module.adapt_saved_optimizer_state(moments)
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore a checkpoint's optimizer state, refusing one whose parameters are not this model's:
    torch checks only how many there are, and Adam would then step with moments of other shapes."""
    problem = None
    saved_groups = state.get("param_groups", [])
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in optimizer.param_groups]:
        problem = (f"it has {sum(len(g['params']) for g in saved_groups)} parameters, "
                   f"the model {sum(len(g['params']) for g in optimizer.param_groups)}")
    else:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved_ids = [i for group in saved_groups for i in group["params"]]
        for index, (param, saved_id) in enumerate(zip(params, saved_ids)):
            moments = state.get("state", {}).get(saved_id, {})
            shapes = {tuple(v.shape) for v in moments.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
            if shapes and shapes != {tuple(param.shape)}:
                problem = f"parameter {index} has shape {tuple(param.shape)}, its saved state {sorted(shapes)[0]}"
                break
    if problem is not None:
        raise ValueError(f"the checkpoint's optimizer state does not fit this model ({problem}): it was saved by "
                         f"another genzoo version or model layout; evaluate or sample from the run, or train anew")
    optimizer.load_state_dict(state)


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> None:
    """Restore a checkpoint's scheduler state, including one saved by CosineAnnealingLR (the cosine
    schedule before it became a LambdaLR): the epoch count carries over, the schedule is the config's."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and "lr_lambdas" not in state:
        state = {key: value for key, value in state.items() if key not in ("T_max", "eta_min")}
        state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(state)
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        # the optimizer's saved lr is the old plan's (0 at the end of a finished cosine run); a
        # resume with a new epoch total trains its next epoch at the stretched plan's lr instead
        lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs


def check_config_matches_checkpoint(config: RunConfig, payload: dict[str, Any], run: RunFolder) -> None:
    """Refuse a resume whose config.toml says something else than the config last.pt was trained
    with (a file cut short by a full disk reads as defaults; a hand edit would change the run
    silently). Only the epoch total and the time budget may differ: a resume changes those."""
    saved = payload.get("config")
    if not isinstance(saved, dict):
        return  # check_resumable names what the checkpoint lacks
    try:
        trained = as_toml_values(run_config_from_dict(saved, where="checkpoint").to_dict())
    except ValueError:
        return
    current = as_toml_values(config.to_dict())
    for table in sorted(set(trained) | set(current)):
        ours, theirs = current.get(table, {}), trained.get(table, {})
        for key in sorted(set(ours) | set(theirs)):
            if (table, key) in (("train", "epochs"), ("train", "max_seconds")) or ours.get(key) == theirs.get(key):
                continue
            raise CheckpointError(
                f"{run.config} says {table}.{key} = {ours.get(key)!r}, but {run.last} was trained with "
                f"{theirs.get(key)!r}: restore config.toml (a resume continues the run as it was trained), "
                "or start a new run with another --out")


class RunInUseError(ValueError):
    """Another process trains in this run folder."""


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively while a run trains there: a second ``genzoo train`` or
    ``--resume`` on the same folder is refused, instead of two runs interleaving their metrics and
    overwriting each other's checkpoints. The lock goes with the process (even when it is killed).
    Where ``fcntl`` is missing (Windows), runs are not locked."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    try:
        with open(lock_path, "a") as handle:
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunInUseError(f"{folder} is in use by another genzoo train (or --resume); wait for it "
                                        "to finish, or choose another --out") from None
                except OSError:
                    pass  # a file system without locks (some NFS): train unlocked rather than not at all
            yield
    finally:
        # a run that failed before writing anything leaves no folder behind it
        if created and [p.name for p in folder.iterdir()] in ([], [".lock"]):
            lock_path.unlink(missing_ok=True)
            folder.rmdir()


def plan_before_fitting(epoch_plans: Any) -> int | None:
    """For checkpoints without ``fitted_from_epochs``: the epoch total a run planned before its last
    plan shortened it, from [(start epoch, total), ...]; None if the last plan is not shorter."""
    totals = [plan[1] for plan in epoch_plans or [] if isinstance(plan, (list, tuple)) and len(plan) == 2]
    if len(totals) >= 2 and all(isinstance(t, int) for t in totals[-2:]) and totals[-1] < totals[-2]:
        return totals[-2]
    return None


def random_states(data_order: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """The random streams a resume must continue: the data order, torch's CPU generator and, on a
    GPU, that device's generator (a VAE's training draws and dropout masks come from it there)."""
    states = {"data_order": data_order.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_random_states(states: dict[str, torch.Tensor], data_order: torch.Generator, device: torch.device) -> None:
    """Set the streams ``random_states`` saved; a GPU stream saved on another device type is left
    as seeded (a run moved between CPU and GPU cannot repeat its draws anyway)."""
    data_order.set_state(states["data_order"])
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and isinstance(states.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(states["cuda"], device)


def weight_l1_norm(model: nn.Module) -> torch.Tensor:
    """Σ|w| over the weights of the linear and convolutional layers, the L1 penalty's norm.

    A masked layer counts its masked weight (entries the mask removes are not parameters of the
    model, so they are not penalized); biases and normalization parameters are never counted, nor
    are frozen weights (``requires_grad`` off: e.g. a VQ-VAE's autoencoder while its prior trains).
    A module whose weights are bare parameters names them in ``penalized_weights()`` (NADE's W, V)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for module in model.modules():
        if callable(getattr(module, "penalized_weights", None)):
            for weight in module.penalized_weights():
                if weight.requires_grad:
                    total = total + weight.abs().sum()
        elif hasattr(module, "masked_weight"):
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                total = total + module.masked_weight().abs().sum()
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight.requires_grad:
            total = total + module.weight.abs().sum()
    return total


def checkpoint_due(epoch: int, train_cfg: TrainConfig, seconds_since_write: float) -> bool:
    """Whether last.pt is written after ``epoch`` on its schedule: every ``checkpoint_every``
    epochs, or once ``checkpoint_every_minutes`` have passed since the last write."""
    minutes = train_cfg.checkpoint_every_minutes
    return epoch % train_cfg.checkpoint_every == 0 or (minutes > 0 and seconds_since_write >= 60 * minutes)


def validation_due(epoch: int, train_cfg: TrainConfig) -> bool:
    """Whether the trainer validates after ``epoch``: every ``eval_every`` epochs and at the end."""
    return epoch % train_cfg.eval_every == 0 or epoch == train_cfg.epochs


def fitted_epochs(epoch: int, seconds: float, train_cfg: TrainConfig) -> int:
    """The planned epoch total shortened to what fits in ``max_seconds``, ``seconds`` of training
    having gone into the first ``epoch`` epochs: at least ``epoch``, at most the plan."""
    per_epoch = seconds / epoch
    remaining = max(0.0, train_cfg.max_seconds - seconds)
    affordable = epoch + (int(remaining / per_epoch) if per_epoch > 0 else train_cfg.epochs)
    return max(epoch, min(train_cfg.epochs, affordable))


def previous_validation_epoch(epoch: int, train_cfg: TrainConfig) -> int:
    """The scheduled validation before ``epoch`` (0 before the first), for counting patience in epochs."""
    return (epoch - 1) // train_cfg.eval_every * train_cfg.eval_every


class Trainer:
    """Train ``config``'s model on its data, writing everything to ``run_dir``.

    >>> Trainer(config, "runs/made").fit()            # doctest: +SKIP
    >>> Trainer.resume("runs/made").fit()             # continues from checkpoints/last.pt
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, device: torch.device | str = "cpu",
                 data_dir: str | None = None, progress: bool | None = None, overwrite: bool = False):
        if "name" not in config.model:
            raise ValueError("the run config names no model ([model] name = ...)")
        self.config = config
        self.run = RunFolder(Path(run_dir))
        self.device = torch.device(device)
        if self.device.type == "cpu":
            tune_cpu_process()
        self.data_dir = data_dir
        self.progress = progress
        self.overwrite = overwrite  # replace a run already in run_dir (only once data and model are built)
        self._resume_payload: dict[str, Any] | None = None

    @classmethod
    def resume(cls, run_dir: str | Path, device: torch.device | str = "cpu", data_dir: str | None = None,
               progress: bool | None = None, epochs: int | None = None,
               max_seconds: float | None = None) -> "Trainer":
        """A trainer that continues the run in ``run_dir`` from its last checkpoint, optionally with
        a new total number of ``epochs`` (kept for later resumes) or a new ``max_seconds`` budget
        (for this resume; it counts the run's training so far). Both are checked as a new run's."""
        run = RunFolder(Path(run_dir))
        payload = load_checkpoint(run.last)
        config = load_run_config(run.config) if run.config.exists() else None
        if config is None:
            raise CheckpointError(f"{run.config} is missing: cannot resume {run_dir}")
        check_config_matches_checkpoint(config, payload, run)
        # checkpoints from before the field was kept: the last plan shorter than the one before it
        fitted_from = payload.get("fitted_from_epochs", plan_before_fitting(payload.get("epoch_plans")))
        if (epochs is None and max_seconds is not None and config.train.fit_epochs_to_max_seconds
                and isinstance(fitted_from, int) and fitted_from > config.train.epochs):
            # config.toml holds the plan fitted to the old budget (1 of 50 epochs, say): a larger
            # budget is fitted from the plan before it, or the resume would train nothing (a plan
            # the user cut with --epochs is theirs: no fitting recorded it)
            epochs = fitted_from
        changes = {key: value for key, value in (("epochs", epochs), ("max_seconds", max_seconds)) if value is not None}
        with run_folder_lock(run.path):  # config.toml is not rewritten under a run that trains
            cls._apply_resume_changes(run, run_dir, config, payload, changes, epochs)
        trainer = cls(config, run_dir, device, data_dir, progress)
        trainer._resume_payload = payload
        return trainer

    @staticmethod
    def _apply_resume_changes(run: RunFolder, run_dir: str | Path, config: RunConfig, payload: dict[str, Any],
                              changes: dict[str, Any], epochs: int | None) -> None:
        """Check a resume's new epochs and max_seconds as a new run's, and keep a new epoch total
        in config.toml for later resumes."""
        if changes:
            raw = config.to_dict()
            raw["train"].update(changes)
            checked = run_config_from_dict(raw, where="--resume")
            done = payload.get("epoch")
            if epochs is not None and isinstance(done, int) and checked.train.epochs < done:
                raise ValueError(f"--resume: {run_dir} has trained {done} epochs already; "
                                 f"epochs must be at least {done}, got {checked.train.epochs}")
            if checked.train.epochs != config.train.epochs:
                config.train.epochs = checked.train.epochs
                atomic_write_text(run.config, dump_toml(config.to_dict()))  # a later resume keeps the new total
            config.train.max_seconds = checked.train.max_seconds

    # -- set-up -------------------------------------------------------------------------
    def _build_model(self, data: TrainingData) -> GenerativeModel:
        name = self.config.model_name
        adapts = "data_kind" in {f.name for f in dataclasses.fields(model_config_class(name))}
        if adapts:
            # a model that adapts to its data: record the data's kind in the resolved config (so
            # config.toml and the checkpoints rebuild the same model) unless the config sets it
            self.config.model.setdefault("data_kind", data.kind)
        model = build_model(name, data.data_shape, **self.config.model_hyperparameters)
        if model.support == "binary" and data.kind != "binary":
            raise DataError(
                f"model {name!r} needs binary data, but {self.config.data.name!r} is 8-bit {data.kind}; "
                'set binarization = "dynamic" in [data] (or --binarization dynamic)'
            )
        if model.support != data.kind:
            raise DataError(
                f"model {name!r} is configured for {model.support} data, but {self.config.data.name!r} is {data.kind}"
                + (f'; set data_kind = "{data.kind}" in [model] (or leave it out)' if adapts else "")
            )
        return model.to(self.device)

    # -- the loop -----------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train (or continue) the run, holding its folder's lock throughout."""
        with run_folder_lock(self.run.path):
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg = self.config
        train_cfg = cfg.train
        seed_everything(train_cfg.seed)
        data = make_training_data(self.config.data, self.data_dir, labels=self._conditional())
        data_fingerprint = data.fingerprint()
        model = self._build_model(data)
        # the steps skip their per-batch value checks, so the data is checked here, once (a one-line
        # ValueError naming the row); a dynamic draw is binary by construction
        if not data.dynamic:
            model.flatten_input(data.train_source)
        final_stage = model.first_epoch_of_final_stage
        optimizer = make_optimizer(model, self.config)
        scheduler = make_scheduler(optimizer, cfg)
        data_order = torch.Generator().manual_seed(train_cfg.seed + 1)

        start_epoch, best_nll, best_epoch, stale, seconds = 0, math.inf, 0, 0, 0.0
        last_validated = 0  # the epoch of the last validation, from which patience counts
        stage: str | None = None  # the model's training_stage in the last epoch trained
        if self._resume_payload is not None:
            payload = self._resume_payload
            check_resumable(payload, self.run.last)
            # a user's data file replaced since: another shape would fail inside the weights' loading,
            # the same shape would silently train on something else
            check_same_data(payload, data, data_fingerprint, cfg.data.name, f"cannot resume {self.run.path}")
            self.run.remove_partial_writes()
            load_weights(model, payload["model"], f"{self.run.last} does not match this run's model")
            load_optimizer_state(optimizer, saved_optimizer_state_in_model_layout(model, optimizer, payload["optimizer"]))
            load_scheduler_state(scheduler, payload["scheduler"])
            try:
                restore_random_states(payload["rng"], data_order, self.device)
            except (RuntimeError, TypeError) as error:
                raise CheckpointError(f"{self.run.last} holds random-generator states torch cannot use "
                                      f"({str(error).splitlines()[0][:120]}): the file is corrupt") from None
            start_epoch = payload["epoch"]
            best_nll, best_epoch = payload["best_valid_nll"], payload["best_epoch"]
            stale, seconds = payload["epochs_without_improvement"], payload["train_seconds"]
            # checkpoints from before it was kept knew only the scheduled validations
            saved_validation = payload.get("last_validated_epoch")
            last_validated = (saved_validation if isinstance(saved_validation, int) and not isinstance(saved_validation, bool)
                              else previous_validation_epoch(start_epoch + 1, train_cfg))
            stage = payload.get("training_stage")
            # checkpoints from before the plans were kept know only the total they were saved under
            epoch_plans = [tuple(plan) for plan in payload.get("epoch_plans", [(0, payload["config"]["train"]["epochs"])])]
            if epoch_plans[-1][1] != train_cfg.epochs:
                epoch_plans.append((start_epoch, train_cfg.epochs))
            self._drop_metrics_after(start_epoch)
        else:
            epoch_plans = [(0, train_cfg.epochs)]
            if train_cfg.init_from:
                self._initialize_from(model, train_cfg.init_from)
            self._start_run_folder()

        valid = data.valid.reshape(len(data.valid), -1)
        stopped_because = "completed all epochs"
        fitted_from: int | None = None  # the epoch total planned before fit_epochs_to_max_seconds shortened it
        fits_to_time = train_cfg.fit_epochs_to_max_seconds and train_cfg.max_seconds > 0
        epoch = start_epoch
        last_written = time.perf_counter()  # when last.pt was last written (or this session began)
        if train_cfg.patience and stale >= train_cfg.patience:
            stopped_because = f"no better validation NLL in {stale} epochs"
        elif train_cfg.max_seconds and seconds >= train_cfg.max_seconds and start_epoch < train_cfg.epochs:
            stopped_because = f"reached max_seconds = {train_cfg.max_seconds:g}"
        else:
            for epoch in range(start_epoch + 1, train_cfg.epochs + 1):
                tic = time.perf_counter()
                model.on_epoch_start(epoch, train_cfg.epochs)
                if stage is not None and model.training_stage != stage:
                    best_nll, stale = math.inf, 0  # a new stage: early stopping starts over
                stage = model.training_stage
                train_x = data.train_epoch(data_order).reshape(len(data.train_source), -1)
                epoch_lr = optimizer.param_groups[0]["lr"]  # the epoch's own; the scheduler's step sets the next
                train_loss = self._train_one_epoch(model, optimizer, train_x, data_order, epoch, data.train_labels)
                epoch_seconds = time.perf_counter() - tic
                seconds += epoch_seconds
                fitted = fitted_epochs(epoch, seconds, train_cfg) if fits_to_time else train_cfg.epochs
                fitted = max(fitted, min(final_stage, train_cfg.epochs))  # the last stage is never fitted away
                if fitted < train_cfg.epochs:
                    # before the scheduler's step, so that the next epoch's lr is already on the new plan
                    train_cfg.epochs = fitted
                    if fitted_from is None:
                        fitted_from = epoch_plans[-1][1]
                        epoch_plans.append((epoch, train_cfg.epochs))
                    else:  # one fitted plan a session, however often it shortens
                        epoch_plans[-1] = (epoch_plans[-1][0], train_cfg.epochs)
                    atomic_write_text(self.run.config, dump_toml(cfg.to_dict()))  # a resume keeps the fitted plan
                scheduler.step()
                out_of_time = bool(train_cfg.max_seconds) and seconds >= train_cfg.max_seconds
                record = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "lr": epoch_lr,
                    "epoch_seconds": epoch_seconds,
                    "examples_per_second": len(train_x) / epoch_seconds,
                    **model.epoch_metrics(),
                }
                improved = False
                if validation_due(epoch, train_cfg) or out_of_time:
                    result = evaluate(model, valid, "valid", train_cfg.eval_batch_size, validation=True,
                                      labels=data.valid_labels, progress=self.progress)
                    if not math.isfinite(result.nll_nats):  # before anything of this epoch is written
                        kept = (f"{self.run.last} holds the last good epoch" if self.run.last.exists() else
                                "no epoch was saved: start the run again with --overwrite")
                        raise FloatingPointError(
                            f"validation NLL became {result.nll_nats} at epoch {epoch} (training loss {train_loss:.4g}); "
                            f"{DIVERGENCE_ADVICE}; {kept}")
                    improved = result.nll_nats < best_nll
                    if improved:
                        best_nll, best_epoch, stale = result.nll_nats, epoch, 0
                    elif model.final_training_stage:  # patience never ends a run before its last stage
                        stale += epoch - last_validated
                    last_validated = epoch
                    record.update({
                        "valid_nll": result.nll_nats,
                        "valid_bits_per_dim": result.bits_per_dim,
                        **({"valid_likelihood": result.likelihood_detail} if result.likelihood_detail else {}),
                    })
                with open(self.run.metrics, "a") as f:
                    f.write(json.dumps(record, allow_nan=False) + "\n")
                stop = None
                if train_cfg.patience and stale >= train_cfg.patience:
                    stop = f"no better validation NLL in {stale} epochs"
                elif out_of_time and epoch < train_cfg.epochs:  # at the last epoch the run is complete
                    stop = f"reached max_seconds = {train_cfg.max_seconds:g}"
                model_payload = {
                    "config": cfg.to_dict(),
                    "data_shape": list(data.data_shape),
                    "data_sha256": data_fingerprint,
                    "model": model.state_dict(),
                    "epoch": epoch,
                    "best_valid_nll": best_nll,
                    "best_epoch": best_epoch,
                    "train_seconds": seconds,
                    "training_stage": stage,
                    "epoch_plans": [list(plan) for plan in epoch_plans],
                    "last_validated_epoch": last_validated,
                    # the plan a time fit shortened in this session: a resume with a larger budget refits from it
                    "fitted_from_epochs": fitted_from,
                }
                # best.pt first: a run stopped between the two writes resumes from the last.pt before,
                # redoes this epoch and writes both again; the other order would leave a stale best.pt.
                # A new best also writes last.pt (whatever checkpoint_every says), so that best.pt is
                # never of an epoch a resume would redo: redone on another plan, it might not come back
                if improved:
                    save_checkpoint(model_payload, self.run.best)  # evaluation needs no optimizer state
                if (improved or stop or epoch == train_cfg.epochs
                        or checkpoint_due(epoch, train_cfg, time.perf_counter() - last_written)):
                    save_checkpoint({
                        **model_payload,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epochs_without_improvement": stale,
                        "rng": random_states(data_order, self.device),
                    }, self.run.last)
                    last_written = time.perf_counter()
                validated = f", valid NLL {record['valid_nll']:.3f} nats{' (best)' if improved else ''}" if "valid_nll" in record else ""
                self._say(
                    f"epoch {epoch}/{train_cfg.epochs}: train loss {train_loss:.3f}{validated}, "
                    f"{record['examples_per_second']:.0f} examples/s"
                )
                if stop:
                    stopped_because = stop
                    break
                if epoch >= train_cfg.epochs:  # the plan was shortened to end here
                    break
            if fitted_from is not None and stopped_because == "completed all epochs":
                stopped_because = (f"completed all epochs, fitted to max_seconds = {train_cfg.max_seconds:g}: "
                                   f"{train_cfg.epochs} of the {fitted_from} planned")
        if 1 < final_stage and epoch < final_stage:  # e.g. a VQ-VAE planned to end before its prior trains
            needs = [f"--epochs N (N ≥ {final_stage})"] if train_cfg.epochs < final_stage else []
            if stopped_because.startswith("reached max_seconds") or not needs:
                needs.append("a larger --max-seconds")
            stopped_because += (f"; it ended before its last training stage, which starts at epoch {final_stage}: "
                                f"continue it with --resume and {' and '.join(needs)}")
        self.write_loss_curve()
        # ready to score, as load_model returns it: no dropout, a flow's fixed dequantization noise
        best = model_from_checkpoint(load_checkpoint(self.run.best), self.run.best).to(self.device).eval()
        return TrainResult(best, epoch, best_epoch, best_nll, seconds, stopped_because, data, epoch_plans, fitted_from)

    def write_loss_curve(self) -> None:
        """loss_curve.png from the epochs in metrics.jsonl (none yet: nothing to plot); also after
        an interrupted run, whose folder would otherwise have none until it is resumed."""
        records = self.run.read_metrics()
        if records:
            save_loss_curve(records, self.run.loss_curve,
                            title=f"{self.config.model_name} on {self.config.data.name}")

    def _train_one_epoch(self, model: GenerativeModel, optimizer: torch.optim.Optimizer, train_x: torch.Tensor,
                         data_order: torch.Generator, epoch: int, train_y: torch.Tensor | None = None) -> float:
        cfg = self.config.train
        model.train()
        # the epoch's data and order live on the model's device, so a step copies nothing from the host
        order = torch.randperm(len(train_x), generator=data_order).to(self.device)
        train_x = train_x.to(self.device)
        train_y = train_y.to(self.device) if train_y is not None else None
        # the running loss stays on the device: reading it is a host sync, which on a GPU would stall
        # the queue of kernels at every step, so it is read every LOSS_READ_EVERY steps
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        batches = order.split(cfg.batch_size)
        with (tqdm(batches, desc=f"epoch {epoch}", disable=self._progress_disabled(), leave=False) as bar,
              model.input_values_checked_by_caller(), model.compute_threads()):
            for step, index in enumerate(bar, 1):
                x = train_x[index]
                # a class-conditional model learns p(x | y) from the data set's labels
                loss = model.loss(x) if train_y is None else model.loss(x, y=train_y[index])
                objective = loss + cfg.l1_penalty * weight_l1_norm(model) if cfg.l1_penalty else loss
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                total += loss.detach() * len(index)
                count += len(index)
                if step % LOSS_READ_EVERY == 0 or step == len(batches):
                    mean = total.item() / count
                    if not math.isfinite(mean):
                        raise FloatingPointError(
                            f"training loss became {mean} at epoch {epoch} (by step {step}); {DIVERGENCE_ADVICE}"
                        )
                    bar.set_postfix(loss=f"{mean:.3f}")
        return total.item() / count

    # -- bookkeeping --------------------------------------------------------------------
    def _conditional(self) -> bool:
        """Whether the model is class-conditional: its config has ``num_classes`` > 0."""
        fields = {f.name: f for f in dataclasses.fields(model_config_class(self.config.model_name))}
        if "num_classes" not in fields:
            return False
        return int(self.config.model.get("num_classes", fields["num_classes"].default)) > 0

    @staticmethod
    def _initialize_from(model: GenerativeModel, path: str) -> None:
        """Load the model weights of checkpoint ``path`` (``[train] init_from``; a run folder
        means its best checkpoint) into ``model``."""
        if Path(path).is_dir():
            path = str(RunFolder(Path(path)).best)
        payload = load_checkpoint(path)  # CheckpointError, one line, if missing or corrupt
        state = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in payload["model"].items()}
        load_weights(model, state, f"init_from: checkpoint {path} does not match this run's model")

    def _start_run_folder(self) -> None:
        data_file = Path(self.config.data.name) if is_user_file(self.config.data.name) else None
        if self.overwrite:
            self.run.discard(keep=data_file)
        if self.run.last.exists():
            raise FileExistsError(
                f"{self.run.path} already holds a run; resume it with --resume (Trainer.resume), replace it "
                f"with --overwrite (Trainer(..., overwrite=True)), or choose another --out"
            )
        leftovers = [] if self.overwrite else self.run.leftovers()
        if leftovers:  # a run stopped before its first checkpoint, or files of the user's own
            raise FileExistsError(
                f"{self.run.path} holds {', '.join(leftovers)} of an earlier run (or of yours) that this one would "
                f"replace; start it anew with --overwrite (Trainer(..., overwrite=True)), or choose another --out"
            )
        self.run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run.config, dump_toml(self.config.to_dict()))
        self.run.metrics.unlink(missing_ok=True)

    def _drop_metrics_after(self, epoch: int) -> None:
        """Forget records of epochs the last checkpoint does not hold (a crash between the two writes)."""
        kept = [r for r in self.run.read_metrics() if r["epoch"] <= epoch]
        atomic_write_text(self.run.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def _progress_disabled(self) -> bool | None:
        return None if self.progress is None else not self.progress

    def _say(self, message: str) -> None:
        if self.progress is not False:
            tqdm.write(message)
