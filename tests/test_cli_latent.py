"""End to end from the command line: train a VAE (and a Gumbel-softmax VAE) on ``digits``, evaluate
its IWAE bound, sample, and encode / decode / interpolate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_error_line
from genzoo.cli import main

SMALL = ["-p", "eval_samples=50", "-p", "valid_samples=10", "-p", "hidden_sizes=[32]"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli_latent") / "vae"
    code = main(["train", "vae", "--data", "digits", "--epochs", "2", *SMALL, "-p", "latent_sizes=[4]",
                 "--out", str(run), "--quiet"])
    assert code == 0
    return run


def test_eval_reports_the_bound_and_its_k(vae_run, capsys):
    assert main(["eval", str(vae_run)]) == 0
    out = capsys.readouterr().out
    assert "test NLL ≤" in out and "IWAE bound, k = 50 importance samples" in out
    record = json.loads((vae_run / "eval_test.json").read_text())
    assert record["likelihood"] == "lower_bound" and record["likelihood_detail"].endswith("k = 50 importance samples")
    assert 5 < record["nll_nats"] < 64 * np.log(2)  # better than the uniform model's 44.4 nats
    metrics = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["valid_likelihood"] == "IWAE bound, k = 10 importance samples"


def test_sample(vae_run, tmp_path):
    png = tmp_path / "samples.png"
    assert main(["sample", str(vae_run), "-n", "9", "--out", str(png)]) == 0
    x = np.load(png.with_suffix(".npy"))
    assert png.is_file() and x.shape == (9, 1, 8, 8) and set(np.unique(x)) <= {0, 1}


def test_encode_decode_interpolate(vae_run, tmp_path, capsys):
    z_file = tmp_path / "z.npy"
    assert main(["encode", str(vae_run), "--split", "test", "--out", str(z_file)]) == 0
    z = np.load(z_file)
    assert z.shape == (180, 4) and z.dtype == np.float32 and np.isfinite(z).all()
    grid = tmp_path / "grid.png"
    assert main(["decode", str(vae_run), str(z_file), "--out", str(grid)]) == 0
    means = np.load(grid.with_suffix(".npy"))
    assert grid.is_file() and means.shape == (180, 1, 8, 8) and ((means >= 0) & (means <= 1)).all()
    # --input encodes a file of examples the same way
    binary = (means[:5] > 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", binary)
    assert main(["encode", str(vae_run), "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "zx.npy")]) == 0
    assert np.load(tmp_path / "zx.npy").shape == (5, 4)
    # eval --input on a bound model: the scores are labelled as lower bounds
    scores = tmp_path / "scores.csv"
    assert main(["eval", str(vae_run), "--input", str(tmp_path / "x.npy"), "--scores", str(scores)]) == 0
    assert "x.npy NLL ≤" in capsys.readouterr().out
    assert scores.read_text().splitlines()[0] == "log_p_lower_bound_nats,nll_upper_bound_bits_per_dim"
    # --input files are checked as --data files are
    np.save(tmp_path / "half.npy", binary * 0.5)
    assert main(["encode", str(vae_run), "--input", str(tmp_path / "half.npy"), "--out", str(tmp_path / "z2.npy")]) == 2
    assert "half.npy: row 0" in cli_error_line(capsys)
    strip = tmp_path / "strip.png"
    assert main(["interpolate", str(vae_run), "--pair", "0", "7", "--steps", "5", "--out", str(strip)]) == 0
    path = np.load(strip.with_suffix(".npy"))
    assert strip.is_file() and path.shape == (5, 1, 8, 8)
    # the ends of the strip decode the two examples' posterior means
    assert np.allclose(path[0], means[0], atol=1e-5) and np.allclose(path[-1], means[7], atol=1e-5)
    assert not np.allclose(path[2], path[0], atol=1e-3)
    capsys.readouterr()
    assert main(["interpolate", str(vae_run), "--pair", "0", "999", "--out", str(strip)]) == 2
    assert "out of range" in cli_error_line(capsys)


def test_decode_refuses_latents_beyond_the_models_float32_and_interpolate_checks_memory(vae_run, tmp_path, capsys,
                                                                                       monkeypatch):
    """1e300 is finite in float64 but inf in the model's float32: it decoded to NaN images with
    exit code 0. A huge --steps is refused before it is drawn, as a huge -n is."""
    z = np.zeros((3, 4))
    z[2, 1] = 1e300
    np.save(tmp_path / "z.npy", z)
    assert main(["decode", str(vae_run), str(tmp_path / "z.npy"), "--out", str(tmp_path / "d.png")]) == 2
    assert "latent row 2 holds a value beyond the range of the model's float32" in cli_error_line(capsys)
    import genzoo.cli

    monkeypatch.setattr(genzoo.cli, "_available_memory_bytes", lambda: 100_000_000)
    assert main(["interpolate", str(vae_run), "--pair", "0", "1", "--steps", "100000",
                 "--out", str(tmp_path / "s.png")]) == 2
    assert "--steps 100000: 100000 images of 64 values need about 0.2 GB in memory" in cli_error_line(capsys)


def test_gumbel_vae_encodes_to_category_indices(tmp_path):
    run = tmp_path / "gumbel"
    assert main(["train", "gumbel-vae", "--data", "digits", "--epochs", "1", *SMALL, "-p", "num_latents=3",
                 "-p", "num_categories=4", "-p", "straight_through=true", "--out", str(run), "--quiet"]) == 0
    assert main(["encode", str(run), "--split", "valid", "--out", str(tmp_path / "codes.npy")]) == 0
    codes = np.load(tmp_path / "codes.npy")
    assert codes.dtype == np.int64 and codes.shape[1] == 3 and codes.min() >= 0 and codes.max() < 4
    assert main(["decode", str(run), str(tmp_path / "codes.npy"), "--out", str(tmp_path / "d.png")]) == 0
    assert np.load(tmp_path / "d.npy").shape == (len(codes), 1, 8, 8)


def test_a_model_without_latents_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "fvsbn"
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    for command in (["encode", str(run), "--out", str(tmp_path / "z.npy")],
                    ["interpolate", str(run), "--pair", "0", "1", "--out", str(tmp_path / "s.png")]):
        assert main(command) == 2
        assert "has no latent space" in cli_error_line(capsys)
    assert main(["decode", str(tmp_path / "missing"), str(tmp_path / "z.npy"), "--out", str(tmp_path / "d.png")]) == 2
    assert "does not exist" in cli_error_line(capsys)
