"""Shared helpers for the genzoo test suite.

Every model-level test is parametrized over ``genzoo.list_models()`` so that a newly registered
model is covered automatically; ``TINY`` only supplies small hyperparameters for the known ones
(an unknown model is built with its defaults).
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import genzoo
import genzoo.training
from genzoo.config import DataConfig, RunConfig, TrainConfig

# The suite's tensors are tiny: one intra-op thread avoids OpenMP hand-off overhead, which on a
# small (2-core) machine makes a 64x48 matmul ~200x slower than it needs to be.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded_global_random_state():
    """Each test starts from the same global random state, whatever ran before it: a test that
    draws without its own generator (an unseeded initialization) then gives the same result in
    any order, under ``-k`` or ``-x``, and for any PYTHONHASHSEED."""
    random.seed(0)
    torch.manual_seed(0)
    np.random.seed(0)
    yield


#: offline MNIST copies (optional): tests that need them skip when the folder is absent
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "binarized_mnist.npz").is_file() or not (SHARED_DATA / "mnist.npz").is_file(),
    reason=f"offline MNIST files not found in {SHARED_DATA}",
)

#: small hyperparameters for the known models
TINY: dict[str, dict] = {
    "fvsbn": {},
    "nade": {"hidden_size": 8},
    "made": {"hidden_sizes": [16, 16]},
    "pixelcnn": {"hidden_channels": 4, "num_blocks": 1, "head_channels": 4, "first_kernel_size": 3},
    "gated-pixelcnn": {"channels": 3, "num_layers": 1, "head_channels": 4, "first_kernel_size": 3},
    # the MLP coder fits any data shape; the convolutional one is an extra variant below
    "vqvae": {"architecture": "mlp", "hidden_size": 8, "latent_positions": 2, "num_codes": 4, "code_dim": 2,
              "prior_hidden_sizes": [8]},
    "transformer": {"num_layers": 2, "num_heads": 2, "embed_dim": 4},
    # latent-variable models: a handful of importance samples keeps the IWAE bound cheap here
    "vae": {"hidden_sizes": [8], "latent_sizes": [3], "eval_samples": 20, "eval_chunk": 8, "valid_samples": 5},
    "iwae": {"hidden_sizes": [8], "latent_sizes": [3], "k": 3, "eval_samples": 20, "eval_chunk": 8, "valid_samples": 5},
    "gumbel-vae": {"hidden_sizes": [8], "num_latents": 2, "num_categories": 3, "activation": "tanh",
                   "eval_samples": 20, "eval_chunk": 8, "valid_samples": 5},
    # flows on real data: the exact continuous density, so every generic test applies as written;
    # the dequantization bounds on binary and 8-bit data are the extra variants below
    "nice": {"hidden_size": 8, "hidden_layers": 1, "num_couplings": 2, "data_kind": "real"},
    "realnvp": {"hidden_channels": 4, "hidden_layers": 1, "couplings_per_scale": 1, "data_kind": "real"},
    "glow": {"hidden_channels": 4, "hidden_layers": 1, "steps_per_level": 2, "data_kind": "real"},
}

#: extra variants of the known models that exercise distinct code paths
EXTRA_VARIANTS: list[tuple[str, dict]] = [
    ("vqvae", {"hidden_channels": 4, "downsample": 1, "num_codes": 4, "code_dim": 2, "codebook_update": "loss",
               "prior_model": "nade", "prior_hidden_size": 4}),
    ("vae", {"hidden_sizes": [8], "latent_sizes": [3], "architecture": "conv", "channels": [3, 4],
             "eval_samples": 20, "eval_chunk": 8}),
    ("vae", {"hidden_sizes": [8], "latent_sizes": [4, 2], "top_hidden_sizes": [5], "k": 2, "eval_samples": 20, "eval_chunk": 8}),
    ("vae", {"hidden_sizes": [8], "latent_sizes": [3], "data_kind": "grayscale", "eval_samples": 20, "eval_chunk": 8}),
    ("iwae", {"hidden_sizes": [8], "latent_sizes": [4, 2], "top_hidden_sizes": [5], "k": 4, "eval_samples": 20, "eval_chunk": 8}),
    ("gumbel-vae", {"hidden_sizes": [8], "num_latents": 2, "num_categories": 3, "activation": "tanh",
                    "straight_through": True, "k": 2, "eval_samples": 20, "eval_chunk": 8}),
    ("gumbel-vae", {"hidden_sizes": [8], "num_latents": 2, "num_categories": 3, "activation": "tanh",
                    "architecture": "conv", "channels": [3], "data_kind": "grayscale", "eval_samples": 20, "eval_chunk": 8}),
    ("fvsbn", {"order": "subgrid-spiral"}),  # on flat data: even dimensions first, then odd
    ("made", {"hidden_sizes": [16, 16], "num_masks": 3}),
    ("made", {"hidden_sizes": [16, 16], "num_masks": 1, "order_agnostic": True}),
    ("made", {"hidden_sizes": [16, 16], "num_masks": 3, "order_agnostic": True}),
    ("made", {"hidden_sizes": [12], "num_masks": 2}),
    ("made", {"hidden_sizes": [12], "direct_connections": True}),
    # every layer multiplies its row blocks (large layers do by default; these are tiny)
    ("made", {"hidden_sizes": [16, 16], "direct_connections": True, "row_blocks_min_weights": 0}),
    ("made", {"hidden_sizes": [16, 16], "num_masks": 3, "order_agnostic": True, "direct_connections": True}),
    ("nade", {"hidden_size": 8, "backend": "torch"}),  # float32 NADE otherwise runs the C kernel
    ("pixelcnn", {"hidden_channels": 4, "num_blocks": 1, "head_channels": 2, "data_kind": "grayscale"}),
    ("gated-pixelcnn", {"channels": 3, "num_layers": 1, "head_channels": 4, "num_classes": 3}),
    ("gated-pixelcnn", {"channels": 3, "num_layers": 1, "head_channels": 2, "data_kind": "grayscale", "num_classes": 2}),
    ("nice", {"hidden_size": 8, "hidden_layers": 1, "data_kind": "binary", "prior": "gaussian"}),
    ("realnvp", {"hidden_channels": 4, "hidden_layers": 1, "couplings_per_scale": 1, "norm": "batch",
                 "data_kind": "binary", "dequantization": "variational", "dequant_layers": 2,
                 "dequant_hidden_size": 8, "eval_draws": 3}),
    ("glow", {"hidden_channels": 4, "hidden_layers": 1, "steps_per_level": 2, "data_kind": "grayscale"}),
]

#: the scale of the random weights in the finite-difference gradient check, where N(0, 1) is too
#: large: a flow composes several random maps, its log-density then reaches 1e4 nats and float64
#: central differences lose the check's 1e-6 tolerance to round-off (the gradients are right)
GRADCHECK_STD: dict[str, float] = {"nice": 0.3, "realnvp": 0.3, "glow": 0.3}


def tiny_hyperparameters(name: str) -> dict:
    return dict(TINY.get(name, {}))


def variant_id(name: str, hp: dict) -> str:
    if not hp:
        return name
    parts = []
    for k, v in hp.items():
        if isinstance(v, (list, tuple)):
            v = "x".join(map(str, v))
        parts.append(f"{k}={v}")
    return f"{name}[{','.join(parts)}]"


def model_variants() -> list:
    """Every registered model with tiny hyperparameters, plus the extra variants."""
    variants = [(name, tiny_hyperparameters(name)) for name in genzoo.list_models()]
    variants += [(n, hp) for n, hp in EXTRA_VARIANTS if n in genzoo.list_models()]
    return [pytest.param(n, hp, id=variant_id(n, hp)) for n, hp in variants]


ALL_MODELS = [pytest.param(name, id=name) for name in genzoo.list_models()]
MODEL_VARIANTS = model_variants()


def build_tiny(name: str, data_shape, **overrides) -> genzoo.GenerativeModel:
    hp = tiny_hyperparameters(name)
    hp.update(overrides)
    return genzoo.build_model(name, data_shape, **hp)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 1.0) -> torch.nn.Module:
    """Re-initialize every parameter from N(0, std²) so the model is far from uniform."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * std)
    return model


def all_binary(n: int, dtype=torch.float64) -> torch.Tensor:
    """All 2^n binary vectors, shape (2^n, n); row r is the binary expansion of r, dim 0 least significant."""
    rows = [[(r >> d) & 1 for d in range(n)] for r in range(2**n)]
    return torch.tensor(rows, dtype=dtype)


def random_input(model: genzoo.GenerativeModel, batch: int, seed: int = 0) -> torch.Tensor:
    """A batch of valid input for ``model`` (binary, 8-bit or real), image-shaped."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, *model.data_shape)
    if model.support == "binary":
        x = torch.randint(0, 2, shape, generator=generator).to(torch.float64)
    elif model.support == "grayscale":
        x = torch.randint(0, 256, shape, generator=generator).to(torch.float64)
    else:
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x.to(next(model.parameters()).dtype)


def tiny_run_config(model: str = "made", epochs: int = 2, data: str = "digits", binarization: str = "none",
                    model_hp: dict | None = None, **train) -> RunConfig:
    hp = {"hidden_sizes": [16]} if model == "made" and model_hp is None else (model_hp or tiny_hyperparameters(model))
    train.setdefault("batch_size", 100)
    return RunConfig(
        model={"name": model, **hp},
        data=DataConfig(name=data, binarization=binarization),
        train=TrainConfig(epochs=epochs, **train),
    )


def binary_index(x: torch.Tensor) -> torch.Tensor:
    """Row of bits → integer, dim 0 least significant (the order of ``all_binary``)."""
    n = x.shape[1]
    return (x.long() * (2 ** torch.arange(n))).sum(1)


def chisquare_p_value(samples: torch.Tensor, probabilities: torch.Tensor) -> float:
    """χ² goodness of fit of binary samples (N, n) to probabilities over the 2^n outcomes;
    outcomes with an expected count below 5 are pooled into one bin."""
    return outcome_chisquare_p_value(binary_index(samples), probabilities)


def outcome_chisquare_p_value(outcomes: torch.Tensor, probabilities: torch.Tensor) -> float:
    """χ² goodness of fit of outcome indices (N,) in 0..K−1 to probabilities (K,); outcomes with
    an expected count below 5 are pooled into one bin."""
    n_outcomes = len(probabilities)
    observed = np.bincount(outcomes.numpy(), minlength=n_outcomes).astype(np.float64)
    expected = probabilities.detach().numpy() * len(outcomes)
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    expected *= observed.sum() / expected.sum()
    return float(stats.chisquare(observed, expected).pvalue)


def one_second_epochs(monkeypatch) -> None:
    """A fake clock on which every training epoch takes exactly one second (for the time budget)."""
    clock = [0.0]
    monkeypatch.setattr(genzoo.training.time, "perf_counter", lambda: clock[0])
    train_one_epoch = genzoo.training.Trainer._train_one_epoch

    def timed(self, *args, **kwargs):
        loss = train_one_epoch(self, *args, **kwargs)
        clock[0] += 1.0
        return loss

    monkeypatch.setattr(genzoo.training.Trainer, "_train_one_epoch", timed)


def quantizer_with(codebook: torch.Tensor, **kwargs):
    """A float64 VectorQuantizer whose codebook (and EMA sums) start at ``codebook``."""
    from genzoo.nn.quantizer import VectorQuantizer

    q = VectorQuantizer(*codebook.shape, **kwargs).double()
    with torch.no_grad():
        q.codebook.copy_(codebook)
        if q.ema:
            q.ema_sum.copy_(codebook)
    return q


def last_checkpoint_epochs(monkeypatch) -> list[int]:
    """The epochs at which the trainer writes checkpoints/last.pt (a list that fills as it runs)."""
    written: list[int] = []
    real_save = genzoo.training.save_checkpoint

    def recording_save(payload, path):
        if path.name == "last.pt":
            written.append(payload["epoch"])
        real_save(payload, path)

    monkeypatch.setattr(genzoo.training, "save_checkpoint", recording_save)
    return written


def cli_error_line(capsys) -> str:
    """The one line ``genzoo: error: ...`` a refused command printed to stderr (no traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genzoo: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """`genzoo train made --data digits --epochs 2 -p hidden_sizes=[32] --out RUN --quiet`, once a module."""
    from genzoo.cli import main

    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "made", "--data", "digits", "--epochs", "2", "-p", "hidden_sizes=[32]",
                 "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run, for tests that change it."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def resume_beside(run_dir: Path, legacy_payload: dict, legacy_dir: Path, epochs: int = 3) -> dict[Path, genzoo.GenerativeModel]:
    """Copy the run in ``run_dir`` to ``legacy_dir`` with ``legacy_payload`` as its last checkpoint
    (the same run as an older genzoo saved it), resume both to ``epochs``, and return their models."""
    shutil.copytree(run_dir, legacy_dir)
    torch.save(legacy_payload, genzoo.training.RunFolder(legacy_dir).last)
    return {d: genzoo.training.Trainer.resume(d, epochs=epochs, progress=False).fit().model for d in (run_dir, legacy_dir)}
