"""Strict checks of the ``genzoo`` command line that a mutation audit of ``genzoo.cli`` found missing:
how -p KEY=VALUE is parsed, the seed's exact range, and command outputs checked against values
computed independently of the CLI (never against the CLI's own earlier output)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import genzoo
from conftest import cli_error_line
from genzoo.checkpoint import load_checkpoint, model_from_checkpoint
from genzoo.cli import build_parser, main
from genzoo.config import load_run_config
from genzoo.sampling import speculative_sample
from genzoo.training import RunFolder


def _params(*texts: str) -> list:
    return build_parser().parse_args(["train", "made", *[a for t in texts for a in ("-p", t)]]).param


# -- -p KEY=VALUE -------------------------------------------------------------------------------------


def test_a_param_value_may_itself_hold_an_equals_sign():
    """Only the first '=' separates KEY from VALUE: a data file named a=b.npy, or a TOML string with
    '=' in it, is the value whole."""
    assert _params("data.name=runs/a=b.npy", 'k="x=y"') == [("data.name", "runs/a=b.npy"), ("k", "x=y")]


def test_a_param_key_is_stripped_of_spaces():
    """`-p "hidden_sizes = [8]"` (spaces around '=', as a TOML file writes them) names hidden_sizes."""
    assert _params("hidden_sizes = [8]", " train.lr =0.5") == [("hidden_sizes", [8]), ("train.lr", 0.5)]


def test_a_param_without_equals_names_the_bad_argument(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "made", "-p", "hidden_sizes"])
    assert info.value.code == 2
    assert "--param takes KEY=VALUE, got 'hidden_sizes'" in capsys.readouterr().err


# -- seeds --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["train", "made"], ["sample", "RUN"]])
def test_the_seed_range_is_exactly_0_to_2_63_minus_1(command, capsys):
    """Both ends are accepted (a TOML integer, as config.toml keeps the seed, is a signed 64-bit one),
    one past either end is a usage error."""
    parser = build_parser()
    for seed in (0, 2**63 - 1):
        assert parser.parse_args([*command, "--seed", str(seed)]).seed == seed
    for seed in (-1, 2**63):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*command, "--seed", str(seed)])
        assert info.value.code == 2
        assert "must be an integer from 0 to 2**63 - 1" in capsys.readouterr().err


# -- train's options: a zero is a value, not "unset" --------------------------------------------------


def test_a_zero_option_overrides_the_config_file(tmp_path, capsys):
    """--seed 0 and --max-seconds 0 are values the user gave: they replace a config file's seed and
    budget (a falsy value must not count as "option not given"), and --epochs 0 is refused rather
    than replaced by the file's epochs."""
    config_file = tmp_path / "c.toml"
    config_file.write_text('[data]\nname = "digits"\n\n[train]\nepochs = 1\nseed = 5\nmax_seconds = 1000.0\n')
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--config", str(config_file), "--seed", "0", "--max-seconds", "0",
                 "--out", str(run), "--quiet"]) == 0
    config = load_run_config(run / "config.toml")
    assert config.train.seed == 0 and config.train.max_seconds == 0
    capsys.readouterr()
    assert main(["train", "fvsbn", "--config", str(config_file), "--epochs", "0", "--out", str(tmp_path / "r2"),
                 "--quiet"]) == 2
    assert "epochs" in cli_error_line(capsys)
    assert main(["train", "fvsbn", "--config", str(config_file), "--seed", "0", "-p", "train.seed=3",
                 "--out", str(tmp_path / "r3"), "--quiet"]) == 2
    assert "train.seed is set twice" in cli_error_line(capsys)


# -- sample -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def draft_run(tmp_path_factory) -> Path:
    """An FVSBN on digits: a draft for the MADE run (same data shape and natural order)."""
    run = tmp_path_factory.mktemp("cli_strict_draft") / "fvsbn"
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    return run


def test_speculative_sample_defaults_to_gamma_4_and_adds_up_the_batches_statistics(trained_run, draft_run, tmp_path,
                                                                                   capsys):
    """The CLI's speculative samples are speculative_sample's with the documented default γ = 4,
    drawn batch by batch from one seeded generator, and the printed statistics are those of all
    the batches together (not of one)."""
    png = tmp_path / "spec.png"
    assert main(["sample", str(trained_run), "--sampler", "speculative", "--draft", str(draft_run), "-n", "7",
                 "--batch-size", "3", "--seed", "11", "--out", str(png), "--quiet"]) == 0
    out = capsys.readouterr().out
    target, draft = genzoo.load_model(trained_run), genzoo.load_model(draft_run)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        batches = [speculative_sample(target, draft, n, 4, generator) for n in (3, 3, 1)]
    expected = torch.cat([x for x, _ in batches])
    assert np.array_equal(np.load(png.with_suffix(".npy")), expected.numpy().astype(np.uint8))
    calls = sum(stats.target_calls for _, stats in batches)
    accepted = sum(stats.accepted for _, stats in batches)
    proposed = sum(stats.proposed for _, stats in batches)
    assert calls > batches[0][1].target_calls  # the test can tell the total from the first batch
    assert f"gamma 4, acceptance rate {accepted / proposed:.3f}, {calls} target calls" in out


# -- --resume ------------------------------------------------------------------------------------------


def test_resume_refuses_epochs_given_twice_by_two_params(run_copy, capsys):
    """Two -p train.epochs=... on a resume: which one the user meant is unknown, so neither is taken
    (the last one winning silently would train to a number the user may not have meant)."""
    best_before = RunFolder(run_copy).best.read_bytes()
    assert main(["train", "made", "--out", str(run_copy), "--resume", "-p", "train.epochs=3", "-p", "train.epochs=4",
                 "--quiet"]) == 2
    assert "train.epochs is set twice, by -p train.epochs and by -p train.epochs" in cli_error_line(capsys)
    assert RunFolder(run_copy).best.read_bytes() == best_before
    assert load_run_config(run_copy / "config.toml").train.epochs == 2


def test_the_default_run_folder_is_runs_model_dash_data_stem(tmp_path, monkeypatch):
    """Without --out, a run goes to runs/MODEL-DATA with the data file's stem (runs/fvsbn-mine for
    --data mine.npy, as --help says), in the current folder."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "mine.npy", (np.random.default_rng(0).random((40, 6)) < 0.5).astype(np.float32))
    assert main(["train", "fvsbn", "--data", "mine.npy", "--epochs", "1", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fvsbn-mine"]
    assert load_run_config(tmp_path / "runs" / "fvsbn-mine" / "config.toml").data.name == str(tmp_path / "mine.npy")


# -- eval ---------------------------------------------------------------------------------------------


def test_eval_record_names_the_split_and_checkpoint_it_scored(trained_run):
    """eval --split valid --checkpoint last: the record (in eval_valid.json) says so, its epoch is the
    last checkpoint's, and its NLL is that checkpoint's mean -log p over the valid split, computed here
    directly from the model."""
    assert main(["eval", str(trained_run), "--split", "valid", "--checkpoint", "last", "--batch-size", "7",
                 "--quiet"]) == 0
    record = json.loads((trained_run / "eval_valid.json").read_text())
    payload = load_checkpoint(RunFolder(trained_run).last)
    assert (record["split"], record["checkpoint"], record["epoch"]) == ("valid", "last", payload["epoch"])
    model = model_from_checkpoint(payload).eval()
    valid = genzoo.load_dataset("digits", "valid")
    with torch.no_grad():
        log_p = model.log_prob(valid.reshape(len(valid), -1)).double()
    assert record["num_examples"] == len(valid) == 180
    assert record["nll_nats"] == pytest.approx(-log_p.mean().item(), rel=1e-6)
    assert record["bits_per_dim"] == pytest.approx(-log_p.mean().item() / (64 * math.log(2)), rel=1e-6)


# -- class-conditional runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory) -> Path:
    """A small class-conditional gated PixelCNN on digits (which has labels)."""
    run = tmp_path_factory.mktemp("cli_strict_conditional") / "gated"
    assert main(["train", "gated-pixelcnn", "--data", "digits", "--epochs", "1", "-p", "channels=4",
                 "-p", "num_layers=1", "-p", "head_channels=4", "-p", "num_classes=10",
                 "--out", str(run), "--quiet"]) == 0
    return run


def test_eval_of_a_conditional_run_scores_x_given_its_label(conditional_run, tmp_path, capsys):
    """The recorded NLL is -mean log p(x | y) with each test example's own label (computed here),
    not log p(x | some other label); an --input file, which has no labels, is refused."""
    assert main(["eval", str(conditional_run), "--batch-size", "50", "--quiet"]) == 0
    record = json.loads((conditional_run / "eval_test.json").read_text())
    model = genzoo.load_model(conditional_run)
    x, y = genzoo.load_dataset("digits", "test"), genzoo.data.load_labels("digits")["test"]
    with torch.no_grad():
        log_p = model.log_prob(x, y=y).double()
        shuffled = model.log_prob(x, y=y.roll(1)).double()
    assert record["nll_nats"] == pytest.approx(-log_p.mean().item(), rel=1e-6)
    assert abs(log_p.mean() - shuffled.mean()) > 1e-3  # the labels matter: the test can tell
    path = tmp_path / "x.npy"
    np.save(path, x[:3].numpy())
    capsys.readouterr()
    assert main(["eval", str(conditional_run), "--input", str(path)]) == 2
    assert "is class-conditional" in cli_error_line(capsys)


@pytest.mark.parametrize("sampler", ["fast", "naive"])
def test_sample_with_a_label_draws_that_class(conditional_run, tmp_path, sampler):
    """sample --label 3 is the model's own draw given y = 3 from the seeded generator (both samplers)."""
    png = tmp_path / "three.png"
    assert main(["sample", str(conditional_run), "-n", "5", "--label", "3", "--seed", "4", "--sampler", sampler,
                 "--out", str(png), "--quiet"]) == 0
    model = genzoo.load_model(conditional_run)
    with torch.no_grad():
        expected = model.sample(5, generator=torch.Generator().manual_seed(4), y=3)
        other = model.sample(5, generator=torch.Generator().manual_seed(4), y=0)
    assert not torch.equal(expected, other)  # the label changes the draw: the test can tell
    assert np.array_equal(np.load(png.with_suffix(".npy")), expected.numpy().astype(np.uint8))


def test_eval_of_a_dynamically_binarized_runs_train_split_scores_one_seeded_draw(tmp_path):
    """With --binarization dynamic the train split is pixel probabilities; eval --split train scores
    one Bernoulli draw of it from the data config's eval_binarization_seed (so the figure is
    reproducible), never the probabilities themselves."""
    data = tmp_path / "gray.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (40, 1, 3, 3)).astype(np.uint8))
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", str(data), "--binarization", "dynamic", "--epochs", "1",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--split", "train", "--quiet"]) == 0
    record = json.loads((run / "eval_train.json").read_text())
    config = load_run_config(run / "config.toml")
    probabilities = genzoo.load_dataset(data, "train") / 255.0
    x = torch.bernoulli(probabilities, generator=torch.Generator().manual_seed(config.data.eval_binarization_seed))
    model = genzoo.load_model(run)
    with torch.no_grad():
        expected = -model.log_prob(x.reshape(len(x), -1)).double().mean().item()
    assert record["num_examples"] == len(x) and record["nll_nats"] == pytest.approx(expected, rel=1e-6)



def test_the_naive_sampler_of_a_model_without_one_is_a_one_line_error(tmp_path, capsys):
    """A flow has no naive (one pass per dimension) sampler: --sampler naive is refused in one line,
    not an AttributeError traceback."""
    run = tmp_path / "nice"
    assert main(["train", "nice", "--data", "digits", "--epochs", "1", "-p", "hidden_size=8", "-p", "hidden_layers=1",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "2", "--sampler", "naive", "--out", str(tmp_path / "x.png")]) == 2
    assert "model 'nice' has no naive sampler" in cli_error_line(capsys)
    assert not (tmp_path / "x.png").exists()


# -- encode / decode / interpolate --------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli_strict_vae") / "vae"
    assert main(["train", "vae", "--data", "digits", "--epochs", "1", "-p", "eval_samples=5", "-p", "valid_samples=5",
                 "-p", "hidden_sizes=[16]", "-p", "latent_sizes=[3]", "--out", str(run), "--quiet"]) == 0
    return run


def test_interpolate_checks_steps_and_pair_and_writes_one_row(vae_run, tmp_path, capsys):
    """--steps 1 and a negative --pair index (Python would silently take the last example) are
    refused; a valid strip is one row of --steps images, the .npy the decoded path's means."""
    out = tmp_path / "strip.png"
    for extra, message in [(["--pair", "0", "1", "--steps", "1"], "--steps must be at least 2, got 1"),
                           (["--pair", "-1", "0"], "--pair index -1 is out of range"),
                           (["--pair", "0", "180"], "--pair index 180 is out of range")]:
        assert main(["interpolate", str(vae_run), *extra, "--out", str(out)]) == 2, extra
        assert message in cli_error_line(capsys)
    assert not out.exists()
    assert main(["interpolate", str(vae_run), "--pair", "2", "5", "--steps", "6", "--out", str(out)]) == 0
    from PIL import Image
    with Image.open(out) as image:
        width, height = image.size
    assert width > 5 * height  # six 8x8 images side by side, not a 3x2 grid
    model = genzoo.load_model(vae_run)
    test = genzoo.load_dataset("digits", "test").reshape(180, -1)
    with torch.no_grad():
        expected = model.interpolate(test[2], test[5], 6)
    assert np.allclose(np.load(out.with_suffix(".npy")), expected.numpy(), atol=1e-6)


def test_decode_refuses_a_flat_vector_of_latents(vae_run, tmp_path, capsys):
    """A 1-D array is not one latent per row: refused in one line, not decoded as something else."""
    z = tmp_path / "z.npy"
    np.save(z, np.zeros(3, dtype=np.float32))
    assert main(["decode", str(vae_run), str(z), "--out", str(tmp_path / "d.png")]) == 2
    assert "expected one latent per row" in cli_error_line(capsys)


def test_scores_may_not_overwrite_the_input_under_another_spelling(trained_run, tmp_path, monkeypatch, capsys):
    """--scores naming the --input file by another path (relative, or through '..') is still the
    input: refused, and the file is left as it was."""
    x = genzoo.load_dataset("digits", "test")[:4].reshape(4, -1).numpy()
    (tmp_path / "sub").mkdir()
    path = tmp_path / "x.npy"
    np.save(path, x)
    before = path.read_bytes()
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["eval", str(trained_run), "--input", "../x.npy", "--scores", str(path), "--quiet"]) == 2
    assert "--scores would write" in cli_error_line(capsys)
    assert path.read_bytes() == before


# -- errors -------------------------------------------------------------------------------------------


def test_a_multi_line_error_is_reported_as_its_first_line(monkeypatch, capsys):
    """The one-line contract holds for an error whose message has several lines (as some of NumPy's
    and torch's do): stderr is its first line only, exit status 2."""
    import genzoo.cli as cli

    def fail(args):
        raise ValueError("the first line\nthe second line\n  and a third")

    monkeypatch.setattr(cli, "_cmd_list", fail)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "genzoo: error: the first line\n"


def test_encode_refuses_to_write_its_latents_over_its_input(vae_run, tmp_path, capsys):
    """encode --input FILE --out FILE (the same .npy) would replace the examples with their latents."""
    path = tmp_path / "x.npy"
    np.save(path, genzoo.load_dataset("digits", "test")[:4].reshape(4, -1).numpy())
    before = path.read_bytes()
    assert main(["encode", str(vae_run), "--input", str(path), "--out", str(path)]) == 2
    assert "--out would write" in cli_error_line(capsys)
    assert path.read_bytes() == before
