"""VQ-VAE: the vector quantizer, the bound, the two training stages with the shared trainer, and
the command line (the generic interface tests in test_models.py cover it through ``TINY``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import genzoo
from conftest import all_binary, quantizer_with, randomize, tiny_run_config
from genzoo.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from genzoo.cli import main
from genzoo.config import ConfigError, TrainConfig, build_dataclass, load_run_config
from genzoo.data.download import DataError
from genzoo.models.latent.vqvae import VQVAE, bits_to_codes, codes_to_bits
from genzoo.nn.quantizer import perplexity
from genzoo.training import RunFolder, Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: a small MLP VQ-VAE for trainer runs on digits (fast: the data set has 1437 training images)
TINY_RUN = {"architecture": "mlp", "hidden_size": 32, "latent_positions": 4, "num_codes": 8, "code_dim": 4,
            "prior_hidden_sizes": [16], "dead_code_steps": 5, "autoencoder_epochs": 2}


# -- the quantizer ------------------------------------------------------------------------------


def test_nearest_code_is_chosen():
    generator = torch.Generator().manual_seed(0)
    codebook = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    q = quantizer_with(codebook)
    z = torch.randn(200, 3, generator=generator, dtype=torch.float64)
    brute = torch.stack([((z - e) ** 2).sum(1) for e in codebook], dim=1).argmin(1)
    out = q(z)
    assert torch.equal(out.indices, brute)
    assert torch.allclose(out.z_q, codebook[brute], rtol=0, atol=1e-12)  # z + (e - z): equal up to rounding
    # each code is its own nearest code
    assert torch.equal(q.nearest(codebook), torch.arange(16))
    assert torch.allclose(out.commitment, ((z - codebook[brute]) ** 2).sum(1))


def test_straight_through_passes_the_decoder_gradient_unchanged():
    generator = torch.Generator().manual_seed(1)
    q = quantizer_with(torch.randn(8, 4, generator=generator, dtype=torch.float64), ema=False)
    z = torch.randn(10, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    out = q(z)
    upstream = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    (out.z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)
    # the codes themselves get no gradient through the straight-through path: only the codebook loss moves them
    assert q.codebook.grad is None or (q.codebook.grad == 0).all()
    q.zero_grad()
    out = q(z)
    out.codebook_loss.sum().backward()
    assert q.codebook.grad.abs().sum() > 0


def test_ema_with_zero_decay_moves_a_code_to_the_mean_of_its_vectors():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]], dtype=torch.float64)
    q = quantizer_with(codebook, ema=True, decay=0.0, epsilon=1e-12, dead_code_steps=0)
    z = torch.tensor([[1.0, 2.0], [0.5, -1.0], [9.0, 12.0], [11.0, 7.0], [12.0, 11.0]], dtype=torch.float64)
    indices = q.nearest(z)
    assert indices.tolist() == [0, 0, 1, 1, 1]
    q.update(z, indices)
    assert torch.allclose(q.codebook[0], z[:2].mean(0), rtol=0, atol=1e-9)
    assert torch.allclose(q.codebook[1], z[2:].mean(0), rtol=0, atol=1e-9)
    # control: with decay 0.9 the code moves only part of the way
    slow = quantizer_with(codebook, ema=True, decay=0.9, dead_code_steps=0)
    slow.update(z, indices)
    assert not torch.allclose(slow.codebook[0], z[:2].mean(0), atol=1e-3)
    assert (slow.codebook[0] - codebook[0]).norm() < (z[:2].mean(0) - codebook[0]).norm()


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_are_restarted_at_encoder_outputs(ema):
    torch.manual_seed(0)
    codebook = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]], dtype=torch.float64)
    q = quantizer_with(codebook, ema=ema, decay=0.5, dead_code_steps=2)
    z = torch.randn(20, 2, dtype=torch.float64)  # every row nearest to code 0
    q.update(z, q.nearest(z))
    assert torch.allclose(q.codebook[1:], codebook[1:], atol=1e-3), "restarted after one step: too early"
    assert int(q.restarts) == 0
    q.update(z, q.nearest(z))
    assert int(q.restarts) == 3
    for code in q.codebook[1:]:
        assert (z == code).all(1).any(), "a restarted code must sit on a current encoder output"
    assert q.steps_unused.tolist() == [0, 0, 0, 0]
    if ema:  # the moving average of a restarted code starts over at its new place
        assert torch.equal(q.ema_sum[1:], q.codebook[1:]) and (q.ema_count[1:] == 1).all()
    # restarted codes are now used
    assert len(q.nearest(z).unique()) > 1


def test_perplexity():
    assert perplexity(torch.full((8,), 5)) == pytest.approx(8.0)
    assert perplexity(torch.tensor([0, 7, 0, 0])) == pytest.approx(1.0)
    assert 1.0 < perplexity(torch.tensor([1, 3, 0, 0])) < 2.0


def test_bits_round_trip():
    codes = torch.arange(16).reshape(2, 2, 4)
    bits = codes_to_bits(codes, 4)
    assert bits.shape == (2, 32)
    assert bits[0, :4].tolist() == [0, 0, 0, 0] and bits[0, 4:8].tolist() == [0, 0, 0, 1]  # MSB first
    assert torch.equal(bits_to_codes(bits, 4, (2, 4)), codes)


# -- the model ----------------------------------------------------------------------------------


def tiny_conv(**overrides) -> VQVAE:
    hp = {"hidden_channels": 4, "downsample": 1, "num_codes": 4, "code_dim": 2, "prior_hidden_sizes": [8]}
    hp.update(overrides)
    return genzoo.build_model("vqvae", (1, 2, 4), **hp)


def test_bound_equals_its_terms_computed_by_hand():
    model = randomize(tiny_conv().double(), seed=2).eval()
    x = all_binary(8)[::7].reshape(-1, 1, 2, 4)
    z_e = model.coder.encode(x.reshape(len(x), -1))  # (B, h, w, D)
    assert z_e.shape == (len(x), 1, 2, 2)
    codebook = model.quantizer.codebook
    distances = ((z_e.unsqueeze(-2) - codebook) ** 2).sum(-1)  # (B, h, w, K)
    codes = distances.argmin(-1)
    assert torch.equal(model.encode(x), codes)
    logits = model.coder.decode(codebook[codes])
    flat = x.reshape(len(x), -1)
    log_px_given_z = (flat * F.logsigmoid(logits) + (1 - flat) * F.logsigmoid(-logits)).sum(1)
    bits = torch.tensor([[(int(c) >> (1 - j)) & 1 for c in row.reshape(-1) for j in range(2)] for row in codes],
                        dtype=torch.float64)
    log_prior = model.prior.log_prob(bits)
    assert torch.allclose(model.log_prob(x), log_px_given_z + log_prior, rtol=0, atol=1e-10)
    assert model.likelihood == "lower_bound"
    assert "ELBO" in model.likelihood_detail
    assert torch.allclose(model.decode(codes).reshape(len(x), -1), torch.sigmoid(logits))


def test_bound_sums_to_at_most_one_over_all_inputs():
    model = randomize(tiny_conv().double(), seed=5, std=0.7).eval()
    log_p = model.log_prob(all_binary(8).reshape(-1, 1, 2, 4))
    total = log_p.exp().sum().item()
    assert total <= 1.0
    # the bound is tight where q is right: summed exactly over the codes, log p(x) is larger
    bits = all_binary(model.prior.num_dims).flip(1)  # every code grid
    grids = bits_to_codes(bits, 2, model.grid)
    log_prior = model.prior.log_prob(bits)
    x = all_binary(8)
    logits = model.coder.decode(model.quantizer.lookup(grids))  # (G, 8)
    log_lik = -F.binary_cross_entropy_with_logits(logits.unsqueeze(0).expand(len(x), -1, -1),
                                                  x.unsqueeze(1).expand(-1, len(grids), -1), reduction="none").sum(-1)
    exact = torch.logsumexp(log_lik + log_prior, dim=1)
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-10)
    assert (log_p <= exact + 1e-12).all()


def test_samples_are_binary_and_reproducible():
    model = randomize(tiny_conv(), seed=3, std=0.5).eval()
    a = model.sample(50, generator=torch.Generator().manual_seed(4))
    b = model.sample(50, generator=torch.Generator().manual_seed(4))
    c = model.sample(50, generator=torch.Generator().manual_seed(5))
    assert a.shape == (50, 1, 2, 4) and ((a == 0) | (a == 1)).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_latent_api_shapes_and_errors():
    model = randomize(genzoo.build_model("vqvae", (1, 8, 8), hidden_channels=4, downsample=2, num_codes=8,
                                         code_dim=2, prior_hidden_sizes=[8]), std=0.5).eval()
    x = genzoo.load_dataset("digits", "test")[:3]
    codes = model.encode(x)
    assert codes.shape == (3, 2, 2) and codes.dtype == torch.int64
    means = model.decode(codes)
    assert means.shape == (3, 1, 8, 8) and (means >= 0).all() and (means <= 1).all()
    strip = model.interpolate(x[0], x[1], 5)
    assert strip.shape == (5, 1, 8, 8)
    assert torch.allclose(strip[0], model.decode(codes[:1])[0]) and torch.allclose(strip[-1], model.decode(codes[1:2])[0])
    with pytest.raises(ValueError, match="0..7"):
        model.decode(torch.full((1, 2, 2), 8))
    with pytest.raises(ValueError, match=r"\(B, 2, 2\)"):
        model.decode(torch.zeros(1, 3, 3, dtype=torch.long))


@pytest.mark.parametrize("hp, key", [({"num_codes": 6}, "num_codes"), ({"num_codes": 1}, "num_codes"),
                                     ({"ema_decay": 1.0}, "ema_decay"), ({"stages": "all"}, "stages"),
                                     ({"autoencoder_epochs": 0}, "autoencoder_epochs"),
                                     ({"prior_model": "glow"}, "prior_model")])
def test_bad_hyperparameters_name_the_key(hp, key):
    with pytest.raises(ValueError, match=key):
        genzoo.build_model("vqvae", 4, **hp)


def test_reconstructs_a_tiny_data_set_after_short_training():
    torch.manual_seed(0)
    x = genzoo.load_dataset("digits", "train")[:32].float()
    model = genzoo.build_model("vqvae", (1, 8, 8), hidden_channels=16, downsample=1, num_codes=16, code_dim=8,
                               dead_code_steps=10, prior_hidden_sizes=[16])
    variance = x.var(0, unbiased=False).mean().item()

    def error() -> float:
        model.eval()
        return ((model.decode(model.encode(x)) - x) ** 2).mean().item()

    untrained = error()
    assert untrained > 0.5 * variance  # the negative control: untrained weights do not reconstruct
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.on_epoch_start(1, 1)
    model.train()
    for _ in range(200):
        loss = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.05 * variance
    metrics = model.epoch_metrics()
    assert metrics["codebook_perplexity"] > 4 and metrics["dead_codes_restarted"] >= 1


# -- training stages with the shared trainer --------------------------------------------------------


def run_config(epochs: int, **model_hp):
    return tiny_run_config("vqvae", epochs=epochs, model_hp={**TINY_RUN, **model_hp}, batch_size=200)


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def two_stage_runs(tmp_path_factory):
    """A 4-epoch two-stage run (switch after epoch 2), and the same run split by a resume at the switch."""
    root = tmp_path_factory.mktemp("vqvae")
    whole = Trainer(run_config(4), root / "whole", progress=False).fit()
    Trainer(run_config(2), root / "split", progress=False).fit()
    stage_one = state(root / "split" / "checkpoints" / "last.pt")
    split = Trainer.resume(root / "split", progress=False, epochs=4).fit()
    return root, whole, split, stage_one


def test_a_resumed_run_equals_an_uninterrupted_one_across_the_switch(two_stage_runs):
    root, whole, split, _ = two_stage_runs
    a, b = state(root / "whole" / "checkpoints" / "last.pt"), state(root / "split" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra, rb = RunFolder(root / "whole").read_metrics(), RunFolder(root / "split").read_metrics()
    drop = ("epoch_seconds", "examples_per_second")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rb]
    assert (whole.best_epoch, whole.best_valid_nll) == (split.best_epoch, split.best_valid_nll)


def test_stage_two_leaves_the_autoencoder_unchanged_and_best_is_a_stage_two_model(two_stage_runs):
    root, whole, _, stage_one = two_stage_runs
    final = state(root / "split" / "checkpoints" / "last.pt")
    autoencoder = [k for k in final if not k.startswith("prior.")]
    assert any(k.startswith("coder.") for k in autoencoder) and "quantizer.codebook" in autoencoder
    for key in autoencoder:
        assert torch.equal(final[key], stage_one[key]), key
    assert any(not torch.equal(final[k], stage_one[k]) for k in final if k.startswith("prior.")), "the prior did not train"
    # best.pt is reset at the switch: it holds a stage-two epoch
    assert whole.best_epoch >= 3
    records = RunFolder(root / "whole").read_metrics()
    assert all(r["codebook_perplexity"] > 1 for r in records)
    assert records[0]["dead_codes_restarted"] >= 1 and records[3]["dead_codes_restarted"] == 0


def test_an_l1_penalty_does_not_move_the_frozen_autoencoder_in_stage_two(tmp_path):
    """The trainer's L1 penalty covers the model's weights; in stage two it must not reach the
    frozen encoder and decoder (it used to shrink them, changing the codes the prior learns)."""
    config = tiny_run_config("vqvae", epochs=2, model_hp=TINY_RUN, batch_size=200, l1_penalty=1e-2)
    Trainer(config, tmp_path / "run", progress=False).fit()
    stage_one = state(tmp_path / "run" / "checkpoints" / "last.pt")
    Trainer.resume(tmp_path / "run", progress=False, epochs=3).fit()
    final = state(tmp_path / "run" / "checkpoints" / "last.pt")
    for key in (k for k in final if not k.startswith("prior.")):
        assert torch.equal(final[key], stage_one[key]), key
    assert any(not torch.equal(final[k], stage_one[k]) for k in final if k.startswith("prior.")), "the prior did not train"


def test_a_run_that_ends_before_the_prior_stage_says_so(tmp_path):
    """A 2-epoch plan with the switch after epoch 2 used to report "completed all epochs", its
    best.pt a stage-one model with an untrained prior."""
    result = Trainer(run_config(2), tmp_path / "run", progress=False).fit()
    assert result.stopped_because.startswith("completed all epochs")
    assert "ended before its last training stage, which starts at epoch 3" in result.stopped_because
    assert "ended before" not in Trainer(run_config(3), tmp_path / "whole", progress=False).fit().stopped_because


def test_patience_does_not_end_stage_one_and_restarts_at_the_switch(tmp_path, monkeypatch):
    calls = []

    def worsening(self, x):  # every validation is worse than the one before
        calls.append(1)
        return torch.full((len(x),), -float(len(calls)), dtype=self._dtype())

    monkeypatch.setattr(VQVAE, "validation_log_prob", worsening)
    config = run_config(6, autoencoder_epochs=3)
    config.train.patience = 1
    result = Trainer(config, tmp_path / "both", progress=False).fit()
    # stage one (epochs 1-3) runs to its end despite patience 1; stage two's first epoch is its best
    assert (result.epochs_completed, result.best_epoch) == (5, 4)
    assert "no better validation NLL" in result.stopped_because
    # control: a one-stage run stops after one epoch without improvement
    calls.clear()
    config = run_config(6, stages="autoencoder")
    config.train.patience = 1
    result = Trainer(config, tmp_path / "one", progress=False).fit()
    assert (result.epochs_completed, result.best_epoch) == (2, 1)


def test_prior_stage_alone_starts_from_init_from(two_stage_runs, tmp_path):
    root, _, _, stage_one = two_stage_runs
    source = root / "split" / "checkpoints" / "best.pt"
    config = run_config(1, stages="prior")
    config.train.init_from = str(source)
    Trainer(config, tmp_path / "prior", progress=False).fit()
    start, trained = state(source), state(tmp_path / "prior" / "checkpoints" / "last.pt")
    for key in trained:
        if not key.startswith("prior."):
            assert torch.equal(trained[key], start[key]), key
    assert any(not torch.equal(trained[k], start[k]) for k in trained if k.startswith("prior."))
    # control: without init_from the autoencoder is a fresh one
    fresh = Trainer(run_config(1, stages="prior"), tmp_path / "fresh", progress=False).fit()
    assert not torch.equal(fresh.model.state_dict()["quantizer.codebook"], start["quantizer.codebook"])


def test_init_from_rejects_missing_corrupt_and_mismatched_files(two_stage_runs, tmp_path):
    root = two_stage_runs[0]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    payload = load_checkpoint(root / "split" / "checkpoints" / "last.pt")
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("prior.")}
    save_checkpoint(payload, other)
    for path, message in [(tmp_path / "missing.pt", "does not exist"), (corrupt, "corrupt"), (other, "does not match")]:
        config = run_config(1, stages="prior")
        config.train.init_from = str(path)
        with pytest.raises(CheckpointError, match=message) as info:
            Trainer(config, tmp_path / "run", progress=False).fit()
        assert "\n" not in str(info.value)
        assert not (tmp_path / "run" / "config.toml").exists(), "nothing is written before the weights load"
    with pytest.raises(ConfigError, match="init_from"):
        build_dataclass(TrainConfig, {"init_from": 3})


def test_eight_bit_data_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "gray.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, size=(40, 1, 4, 4), dtype=np.uint8))
    config = run_config(1)
    config.data.name = str(path)
    with pytest.raises(DataError, match="binary data.*binarization"):
        Trainer(config, tmp_path / "run", progress=False).fit()


# -- the command line ---------------------------------------------------------------------------


def test_cli_train_eval_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vqvae", "--config", str(CONFIGS / "vqvae-digits.toml"), "--epochs", "3",
                 "-p", "autoencoder_epochs=2", "--out", str(run), "--quiet"]) == 0
    records = RunFolder(run).read_metrics()
    assert len(records) == 3 and all("codebook_perplexity" in r for r in records)
    assert main(["eval", str(run)]) == 0
    result = json.loads((run / "eval_test.json").read_text())
    assert result["likelihood"] == "lower_bound" and "ELBO" in result["likelihood_detail"]
    # better than the uniform model's 64 ln 2 = 44.4 nats (the untrained model scores 53-59; this
    # run about 35)
    assert 0 < result["nll_nats"] < 64 * math.log(2) and math.isfinite(result["bits_per_dim"])
    assert "≤" in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "16", "--out", str(tmp_path / "grid.png")]) == 0
    samples = np.load(tmp_path / "grid.npy")
    assert samples.shape[0] == 16 and set(np.unique(samples)) <= {0, 1}
    # the latent commands: code grids to .npy and back, and an interpolation strip
    assert main(["encode", str(run), "--split", "test", "--out", str(tmp_path / "codes.npy")]) == 0
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (180, 2, 2) and codes.dtype == np.int64 and 0 <= codes.min() and codes.max() < 16
    assert main(["decode", str(run), str(tmp_path / "codes.npy"), "--out", str(tmp_path / "decoded.png")]) == 0
    decoded = np.load(tmp_path / "decoded.npy")
    assert decoded.shape == (180, 1, 8, 8) and decoded.min() >= 0 and decoded.max() <= 1
    assert main(["interpolate", str(run), "--pair", "0", "1", "--steps", "5", "--out", str(tmp_path / "strip.png")]) == 0
    assert np.load(tmp_path / "strip.npy").shape == (5, 1, 8, 8)


@pytest.mark.parametrize("name", ["vqvae.toml", "dynamic/vqvae.toml", "vqvae-digits.toml"])
def test_shipped_configs_load_and_build(name):
    config = load_run_config(CONFIGS / name)
    assert config.model_name == "vqvae"
    shape = (1, 8, 8) if config.data.name == "digits" else (1, 28, 28)
    model = genzoo.build_model("vqvae", shape, **config.model_hyperparameters)
    assert model.config.autoencoder_epochs < config.train.epochs


@pytest.mark.parametrize("hp, key", [({"prior_model": "nade", "prior_hidden_sizes": [500]}, "prior_hidden_sizes"),
                                     ({"prior_model": "made", "prior_hidden_size": 500}, "prior_hidden_size"),
                                     ({"prior_model": "fvsbn", "prior_hidden_size": 10}, "prior_hidden_size")])
def test_a_prior_size_the_chosen_prior_ignores_is_refused(hp, key):
    with pytest.raises(ValueError, match=f"{key} sizes a .* prior, but prior_model"):
        genzoo.build_model("vqvae", (1, 8, 8), **hp)


def test_a_budget_that_stops_stage_one_asks_for_more_time_not_epochs(tmp_path):
    result = Trainer(tiny_run_config("vqvae", epochs=4, model_hp=TINY_RUN, batch_size=200, max_seconds=1e-9),
                     tmp_path / "run", progress=False).fit()
    assert result.stopped_because.startswith("reached max_seconds")
    assert "continue it with --resume and a larger --max-seconds" in result.stopped_because


def test_a_finished_two_stage_run_resumed_as_is_does_not_claim_it_ended_early(tmp_path):
    config = tiny_run_config("vqvae", epochs=3, model_hp=TINY_RUN, batch_size=200)
    Trainer(config, tmp_path / "run", progress=False).fit()
    again = Trainer.resume(tmp_path / "run", progress=False).fit()
    assert "ended before" not in again.stopped_because


def test_a_short_plan_stopped_by_its_budget_asks_for_both(tmp_path):
    result = Trainer(tiny_run_config("vqvae", epochs=2, model_hp={**TINY_RUN, "autoencoder_epochs": 3}, batch_size=200,
                                     max_seconds=1e-9), tmp_path / "run", progress=False).fit()
    assert "continue it with --resume and --epochs N (N ≥ 4) and a larger --max-seconds" in result.stopped_because
