"""Checkpoints: written atomically, read without ever executing code from the file.

A checkpoint is a dict of tensors and plain values saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, which refuses anything but tensors and primitive containers,
so a tampered file cannot run code. It is written to a temporary file beside the target, flushed
to disk and renamed over it, so a crash mid-write never leaves a half-written checkpoint. The
model weights carry their sha256 (``model_sha256``): torch reads tensor bytes without checking
them, so a flipped bit on disk would otherwise load as a silently different model.
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from genzoo.config import ConfigError, run_config_from_dict
from genzoo.files import atomic_write, naming_the_file
from genzoo.models import GenerativeModel, build_model

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_weights", "check_resumable", "model_from_checkpoint", "FORMAT"]

FORMAT = "genzoo-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or not a genzoo checkpoint."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    if isinstance(payload.get("model"), dict):
        payload["model_sha256"] = weights_sha256(payload["model"])
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except RuntimeError as error:
        # torch's zip writer answers a Ctrl-C or a write error (a full disk) inside it with its own
        # RuntimeError ("unexpected pos ..."): report what happened, as one line naming the file
        cause = error.__context__
        if isinstance(cause, KeyboardInterrupt):  # SIGTERM's Terminated (a KeyboardInterrupt) stays itself
            raise cause from None
        if isinstance(cause, OSError):
            raise naming_the_file(cause, path) from None
        raise


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # torch warns about a file's pickle protocol before refusing it: the refusal says it all
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a genzoo checkpoint: it holds objects other than tensors and plain "
            "values, which genzoo refuses to unpickle (that could run code from the file)"
        ) from None
    except Exception as error:  # noqa: BLE001 - bytes that are no checkpoint make torch's reader fail in many ways
        # the first sentence of torch's reason: the rest is advice about torch.load, not about the file;
        # a KeyError's or IndexError's text (a stray byte, "pop from empty list") says nothing, so its type
        readable = isinstance(error, (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError))
        reason = str(error).strip().splitlines()[0].split(". ")[0].rstrip(".") if readable and str(error).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a genzoo checkpoint ({reason[:200] or type(error).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a genzoo checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('format_version')}; this genzoo reads {FORMAT_VERSION}")
    for key in ("config", "data_shape", "model"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}: it is incomplete")
    shape = payload["data_shape"]
    if (not isinstance(payload["config"], dict) or not isinstance(payload["model"], dict)
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["model"].items())
            or not isinstance(shape, (list, tuple))
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise CheckpointError(f"checkpoint {path} is corrupt: its config, data shape or model weights are not what genzoo writes")
    # checkpoints written before the checksum have none to check
    if "model_sha256" in payload and payload["model_sha256"] != weights_sha256(payload["model"]):
        raise CheckpointError(f"checkpoint {path} is corrupt: its model weights differ from the sha256 written with them")
    return payload


#: what a resume reads from last.pt beyond the model, with the types genzoo writes
_RESUME_ENTRIES = {"optimizer": dict, "scheduler": dict, "rng": dict, "epoch": int, "best_valid_nll": (int, float),
                   "best_epoch": int, "epochs_without_improvement": int, "train_seconds": (int, float)}


def check_resumable(payload: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint that a resume cannot continue from, e.g. a best.pt copied over last.pt."""
    for key, kind in _RESUME_ENTRIES.items():
        if key not in payload:
            raise CheckpointError(f"{path} lacks {key!r}: it is not a last.pt that genzoo train wrote "
                                  "(best.pt holds no optimizer state)")
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            raise CheckpointError(f"{path} is corrupt: its {key!r} is a {type(payload[key]).__name__}")
    if not all(isinstance(payload["rng"].get(key), torch.Tensor) for key in ("data_order", "torch")):
        raise CheckpointError(f"{path} is corrupt: its random-generator states are missing")
    if not _is_optimizer_state(payload["optimizer"]):
        raise CheckpointError(f"{path}: the checkpoint's optimizer state is not a torch optimizer's state dict: the "
                              "file is corrupt; evaluate or sample from the run, or train anew")


def _is_optimizer_state(state: dict[str, Any]) -> bool:
    """Whether ``state`` has the structure of a torch optimizer's state dict: {"state": {id: {name:
    value}}, "param_groups": [{"params": [id, ...], ...}]}."""
    return (isinstance(state.get("state"), dict) and all(isinstance(m, dict) for m in state["state"].values())
            and isinstance(state.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in state["param_groups"]))


def model_from_checkpoint(payload: dict[str, Any], path: str | Path = "checkpoint") -> GenerativeModel:
    """Rebuild the model a checkpoint was saved from and load its weights."""
    try:
        config = run_config_from_dict(payload["config"], where=str(path))
        model = build_model(config.model_name, tuple(payload["data_shape"]), **config.model_hyperparameters)
    except (ConfigError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} holds an invalid model config: {error}") from None
    load_weights(model, payload["model"], f"checkpoint {path} does not match model {config.model_name!r}")
    return model


def load_weights(model: torch.nn.Module, state: dict[str, Any], mismatch: str) -> None:
    """``model.load_state_dict(state)``; weights that do not fit are a one-line CheckpointError,
    ``mismatch`` followed by torch's first reason, shortened (the whole lists every key)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        # "Error(s) in loading state_dict for NADE:" says where; the line after it says what
        reason = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "")
        if len(reason) > 300:
            reason = reason[:300] + "..."
        raise CheckpointError(f"{mismatch}: {reason}") from None
