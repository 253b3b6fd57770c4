"""The interface every genzoo model implements, and the model registry.

A model learns p_θ(x) over data of a fixed ``data_shape`` and offers

* ``log_prob(x) -> (B,)``: log p_θ(x) in nats, exact or a bound, as ``likelihood`` says;
* ``sample(n) -> (n, *data_shape)``: draws from p_θ;
* ``loss(x) -> scalar``: what training minimizes (the mean negative log-likelihood or bound).

These public methods check their arguments once, here, for every model; a model implements
``_log_prob``, ``_sample`` and, where training minimizes something else, ``_loss``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import operator
import sys
from typing import Any, Callable, ClassVar, Iterator, Literal

import torch
from torch import nn

from genzoo.config import ConfigError, build_dataclass

__all__ = [
    "GenerativeModel",
    "Likelihood",
    "register_model",
    "build_model",
    "list_models",
    "ModelInfo",
    "model_info",
    "model_config_class",
]

Likelihood = Literal["exact", "lower_bound", "none"]


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block, then every submodule back in the mode it was in."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def sampler(method: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A public sampling method: runs without autograd and in eval mode (each submodule back in its
    mode afterwards), so that it draws from the p_θ that ``log_prob`` scores even when called
    directly on a model in train mode (dropout would otherwise perturb every draw)."""

    @functools.wraps(method)
    def in_evaluation_mode(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad(), evaluation_mode(self):
            return method(self, *args, **kwargs)

    return in_evaluation_mode


def _checked_sample_count(n: Any) -> int:
    """``n`` as a Python int, or a one-line error naming it (a bool is refused: ``sample(True)``
    is a slip, not a count of one)."""
    count = _as_int(n)
    if count is None:
        raise TypeError(f"n must be a non-negative integer, got {n!r}")
    if count < 0:
        raise ValueError(f"n must be a non-negative integer, got {count}")
    return count


def _checked_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _checked_data_shape(data_shape: Any) -> tuple[int, ...]:
    """``data_shape`` (an int or a sequence of ints) as a tuple of positive ints, or a one-line
    ``ValueError``: a zero or negative size, a float or a string would otherwise surface as a
    torch error (or, for a zero, as a model of no dimensions) somewhere inside a model's layers."""
    problem = ValueError(f"data_shape must be a tuple of positive integers, got {data_shape!r}")
    if isinstance(data_shape, (str, bytes, bytearray, memoryview)):
        raise problem
    if _as_int(data_shape) is not None:
        data_shape = (data_shape,)
    try:
        sizes = tuple(_as_int(s) for s in data_shape)
    except TypeError:
        raise problem from None
    if not sizes or any(s is None or s <= 0 for s in sizes):
        raise problem
    return sizes  # type: ignore[return-value]


def _as_int(value: Any) -> int | None:
    """``value`` as a Python int where it is an integer (numpy integers and 0-d integer tensors
    included, by ``__index__``), else None; a bool is not taken for a size or a count."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


class GenerativeModel(nn.Module):
    """Base class: subclasses set ``likelihood`` and ``support`` and implement ``_log_prob`` on
    flat, validated input and ``_sample`` on a checked count; ``_loss`` where training minimizes
    something other than the mean NLL. The public ``log_prob``, ``sample`` and ``loss`` check
    their arguments here, once for every model, and pass extra keywords (a label ``y``, a
    ``temperature``) on to the model's own method."""

    likelihood: ClassVar[Likelihood] = "exact"
    #: what ``log_prob`` returns on binary or 8-bit data where that differs from ``likelihood``
    #: (a flow's exact density becomes a dequantization bound there); None where it does not
    likelihood_on_discrete_data: ClassVar[Likelihood | None] = None
    #: the values a data point may take: "binary" ({0, 1}), "grayscale" (integers 0..255) or
    #: "real"; a model whose config has a ``data_kind`` field sets it per instance, and the
    #: trainer fills that field in from the data set's kind unless the config sets it
    support: ClassVar[str] = "binary"

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = _checked_data_shape(data_shape)
        self.num_dims = math.prod(self.data_shape)
        self._checks_input_values = True

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @contextlib.contextmanager
    def input_values_checked_by_caller(self) -> Iterator[None]:
        """Within this block ``log_prob`` and ``loss`` check the shape of their input but not its
        values (NaN, the model's support): for a caller that checked all of its data once, as
        the trainer does each epoch. Each value check ends in a read of its result on the host,
        which on a GPU waits for every queued kernel: at every training step, a stall."""
        previous, self._checks_input_values = self._checks_input_values, False
        try:
            yield
        finally:
            self._checks_input_values = previous

    def compute_threads(self) -> contextlib.AbstractContextManager:
        """The thread plan under which the trainer and the evaluator run this model's steps. By
        default nothing changes (PyTorch's own threads do the work); a model whose CPU work runs in
        genzoo's C kernels returns ``genzoo.kernels.threads_for_kernels()``."""
        return contextlib.nullcontext()

    def _check_input_shape(self, x: torch.Tensor) -> None:
        """Refuse a non-tensor, or a tensor neither image-shaped (B, *data_shape) nor flat (B, D)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        shape = tuple(x.shape[1:])
        if x.dim() < 2 or (shape != self.data_shape and shape != (self.num_dims,)):
            forms = [f"(B, {', '.join(map(str, self.data_shape))})"]
            if len(self.data_shape) > 1:  # flat data has one form only
                forms.append(f"(B, {self.num_dims})")
            raise ValueError(f"input has shape {tuple(x.shape)}; this model expects {' or '.join(forms)}")

    def flatten_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x`` and return it as (B, D): image-shaped or flat input both accepted."""
        self._check_input_shape(x)
        self._check_precision()
        if x.is_complex():
            raise TypeError(f"input is complex ({x.dtype}); this model scores real values")
        if not x.is_floating_point():
            x = x.to(self._dtype())  # integers and bools, exactly as the model's float (not via float32)
        if not self._checks_input_values or x.is_meta:  # a meta tensor has no values to check
            return x.reshape(len(x), self.num_dims).to(self.device, dtype=self._dtype())
        if torch.isnan(x).any():
            row = int(torch.isnan(x.reshape(len(x), -1)).any(1).nonzero()[0])
            raise ValueError(f"input row {row} contains NaN")
        x = x.reshape(len(x), self.num_dims)
        if self.support == "binary":
            bad = (x != 0) & (x != 1)
            if bad.any():
                row, col = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"input row {row} has value {x[row, col].item():g} at dimension {col}; "
                    "a Bernoulli model needs values in {0, 1}"
                )
        elif self.support == "grayscale":
            bad = (x != torch.round(x)) | (x < 0) | (x > 255)
            if bad.any():
                row, col = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"input row {row} has value {x[row, col].item():g} at dimension {col}; "
                    "8-bit data needs integers in {0, …, 255}"
                )
        elif self.support == "real":
            bad = ~torch.isfinite(x)
            if bad.any():
                row, col = (int(i) for i in bad.nonzero()[0])
                raise ValueError(f"input row {row} has value {x[row, col].item():g} at dimension {col}; values must be finite")
            # checked again in the model's dtype: 1e39 is finite in float64 and inf in float32
            overflow = ~torch.isfinite(x.to(self._dtype()))
            if overflow.any():
                row, col = (int(i) for i in overflow.nonzero()[0])
                dtype = str(self._dtype()).removeprefix("torch.")
                raise ValueError(f"input row {row} has value {x[row, col].item():g} at dimension {col}, beyond the "
                                 f"range of the model's {dtype} (±{torch.finfo(self._dtype()).max:g})")
        return x.to(self.device, dtype=self._dtype())

    @property
    def likelihood_detail(self) -> str:
        """Which likelihood or bound ``log_prob`` computes, in words (e.g. the number of draws of
        a Monte Carlo bound); empty where ``likelihood`` says it all."""
        return ""

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before training epoch ``epoch`` (1-based) of ``epochs``, and again
        on resume: schedules that depend on training progress (KL warm-up, a Gumbel-softmax
        temperature, a two-stage switch) are set here as a pure function of ``epoch``, so a
        resumed run sets them exactly as an uninterrupted one. Does nothing by default."""

    def validation_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """What the trainer's per-epoch validation scores: ``log_prob`` unless a model overrides
        it with a cheaper estimate of the same quantity (an IWAE bound with fewer importance
        samples than the test bound's thousands), described by ``validation_detail``."""
        return self.log_prob(x)

    @property
    def validation_detail(self) -> str:
        """``likelihood_detail`` of what ``validation_log_prob`` computes."""
        return self.likelihood_detail

    @property
    def training_stage(self) -> str:
        """The stage of a staged training schedule (set by ``on_epoch_start``; "" for one stage).
        When it changes between epochs the trainer starts early stopping over: the best
        validation NLL and the count of epochs without improvement are reset, so ``best.pt``
        holds a model of the latest stage."""
        return ""

    @property
    def final_training_stage(self) -> bool:
        """False while a later training stage is still to come: patience then never ends the run
        (it would stop before the last stage ran)."""
        return True

    @property
    def first_epoch_of_final_stage(self) -> int:
        """The epoch the last training stage starts at (1 for one stage): a time budget's fitted plan
        is never shorter, and a run that ends before it says so (and how to continue it)."""
        return 1

    def adapt_saved_optimizer_state(self, moments: dict[nn.Parameter, dict]) -> None:
        """Before a resume loads the optimizer's state (``moments``: each parameter's saved state,
        to replace entries of): bring it into the layout that loading gave the weights, where a
        model rewrites an older checkpoint's (MADE). Nothing by default."""

    def epoch_metrics(self) -> dict[str, float]:
        """Model-specific figures of the epoch just trained (e.g. codebook usage), merged by the
        trainer into that epoch's metrics.jsonl record. None by default."""
        return {}

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _check_precision(self) -> None:
        """float16 and bfloat16 are refused: the models' bounds, quantizers and flows need float32
        (they gave -inf, values off by thousands of nats, or errors from inside torch)."""
        dtype = self._dtype()
        if dtype in (torch.float16, torch.bfloat16):
            raise TypeError(f"this model's parameters are {str(dtype).removeprefix('torch.')}; genzoo models run in "
                            "float32 or float64 (model.float())")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_θ(x) in nats, shape (B,); an empty batch gives an empty (0,) tensor."""
        x = self.flatten_input(x)
        if len(x) == 0:  # known without the model, some of whose reshapes (B, …, -1) fail on B = 0
            return x.new_empty(0)
        return self._log_prob(x)

    def loss(self, x: torch.Tensor, **options: Any) -> torch.Tensor:
        """What training minimizes (the mean NLL unless the model says otherwise), from a non-empty
        batch: the mean of none is 0/0, which would surface as NaN or a ZeroDivisionError. The
        shape is checked first, so a wrong shape is reported as such."""
        self._check_input_shape(x)
        if len(x) == 0:
            raise ValueError("loss needs at least one example, got an empty batch")
        return self._loss(x, **options)

    def training_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_θ(x) as a training step estimates it, shape (B,): what the default ``loss``
        averages. ``log_prob`` itself, unless a model trains on a cheaper random estimate and
        overrides this (MADE with K masks: one mask per minibatch; a VAE: its training bound with
        fresh draws)."""
        return self.log_prob(x)

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.training_log_prob(x).mean()

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @sampler
    def sample(self, n: int, generator: torch.Generator | None = None, **options: Any) -> torch.Tensor:
        """``n`` samples, shape (n, *data_shape), drawn from p_θ in either mode: the sampler runs in
        eval mode (no dropout, no batch statistics, no training-step state). ``n = 0`` gives an
        empty batch without running the sampler (several reshape by (n, -1), which zero rows
        leave undefined)."""
        n = _checked_sample_count(n)
        generator = _checked_generator(generator)
        self._check_precision()
        if n == 0:
            return torch.empty((0, *self.data_shape), dtype=self._dtype(), device=self.device)
        return self._sample(n, generator, **options)

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unflatten(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.data_shape)


_REGISTRY: dict[str, tuple[type[GenerativeModel], type]] = {}


def register_model(name: str, config_class: type) -> Callable[[type[GenerativeModel]], type[GenerativeModel]]:
    """Class decorator: make a model buildable by name with its typed config dataclass."""

    def wrap(cls: type[GenerativeModel]) -> type[GenerativeModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (cls, config_class)
        cls.name = name
        return cls

    return wrap


def _lookup(name: str) -> tuple[type[GenerativeModel], type]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def model_config_class(name: str) -> type:
    return _lookup(name)[1]


def build_model(name: str, data_shape: tuple[int, ...] | int, **hyperparameters: Any) -> GenerativeModel:
    """Build a registered model, e.g. ``build_model("made", data_shape=(1, 28, 28), hidden_sizes=[500])``.

    Hyperparameters are checked against the model's config dataclass: an unknown key or a
    value of the wrong type raises ``ValueError`` naming the key.
    """
    cls, config_class = _lookup(name)
    data_shape = _checked_data_shape(data_shape)  # before the model's layers see it
    try:
        config = build_dataclass(config_class, hyperparameters, where=f"model {name!r}")
    except ConfigError as error:
        raise ValueError(str(error)) from None
    return cls(data_shape, config)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What ``genzoo list`` says of a registered model."""

    name: str
    family: str  #: the models/ folder it lives in: autoregressive, latent, flows, …
    likelihood: str  #: what its log_prob returns on binary and 8-bit data (every built-in data set)
    title: str  #: the model's name as its module's docstring opens, without the reference
    likelihood_on_real_data: str  #: what its log_prob returns on real-valued data, where it accepts them

    @property
    def likelihood_depends_on_data(self) -> bool:
        return self.likelihood_on_real_data != self.likelihood


def model_info(name: str) -> ModelInfo:
    """A registered model's family, likelihood kind and title (from its module, so the paper's
    name stays in one place: the docstring the model file opens with)."""
    cls, _ = _lookup(name)
    module = sys.modules[cls.__module__]
    first_line = (module.__doc__ or name).strip().splitlines()[0]
    title = first_line.split(" (")[0].rstrip(" .,:;")
    on_discrete = cls.likelihood_on_discrete_data or cls.likelihood
    return ModelInfo(name, cls.__module__.split(".")[-2], str(on_discrete), title, str(cls.likelihood))


def config_as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
