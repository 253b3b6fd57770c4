"""The ``genzoo`` command line, end to end on the small digits data set (in-process, except one
subprocess call of the installed console script)."""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genzoo
from conftest import cli_error_line
from genzoo.checkpoint import load_checkpoint, model_from_checkpoint
from genzoo.cli import main
from genzoo.config import load_run_config, tomllib
from genzoo.evaluation import evaluate
from genzoo.training import RunFolder


# -- train --------------------------------------------------------------------------------------------


def test_train_writes_a_run_folder(trained_run):
    run = RunFolder(trained_run)
    config = load_run_config(run.config)
    assert config.model == {"name": "made", "hidden_sizes": [32]}
    assert config.data.name == "digits" and config.train.epochs == 2
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert run.best.is_file() and run.last.is_file() and run.loss_curve.is_file()
    model = model_from_checkpoint(load_checkpoint(run.last))
    assert model.name == "made" and model.config.hidden_sizes == (32,) and model.data_shape == (1, 8, 8)


def test_train_prints_a_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "1", "--out", str(run), "--quiet",
                 "--seed", "3", "--batch-size", "300", "--lr", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "trained fvsbn for 1 epoch (completed all epochs)" in out and str(run) in out
    config = load_run_config(RunFolder(run).config)
    assert (config.train.seed, config.train.batch_size, config.train.lr) == (3, 300, 0.02)


def test_a_spiral_fvsbn_run_keeps_its_order(tmp_path):
    """The order lives in the config, not in the weights: a loaded run must rebuild the spiral masks."""
    from genzoo.models.autoregressive.orders import dimension_order

    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "1", "-p", "model.order=spiral",
                 "--out", str(run), "--quiet"]) == 0
    model = genzoo.load_model(run)
    assert model.config.order == "spiral"
    assert torch.equal(model.generation_order(), dimension_order("spiral", (1, 8, 8)))
    raster = genzoo.build_model("fvsbn", (1, 8, 8))
    raster.load_state_dict(model.state_dict())
    x = genzoo.load_dataset("digits", "test")[:50]
    assert not torch.allclose(model.log_prob(x), raster.log_prob(x))
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "grid.png"), "--quiet"]) == 0


def test_train_from_a_config_file_with_overrides(tmp_path):
    config_file = tmp_path / "made.toml"
    config_file.write_text('[model]\nname = "made"\nhidden_sizes = [16]\nnum_masks = 2\n\n'
                           '[data]\nname = "digits"\n\n[train]\nepochs = 3\nlr = 0.005\n')
    run = tmp_path / "run"
    assert main(["train", "made", "--config", str(config_file), "--epochs", "1", "-p", "order_agnostic=true",
                 "--out", str(run), "--quiet"]) == 0
    config = load_run_config(RunFolder(run).config)
    assert config.model == {"name": "made", "hidden_sizes": [16], "num_masks": 2, "order_agnostic": True}
    assert config.train.epochs == 1 and config.train.lr == 0.005
    assert [r["lr"] for r in RunFolder(run).read_metrics()] == [0.005]


def test_train_resume(run_copy, capsys):
    assert main(["train", "made", "--out", str(run_copy), "--resume", "--epochs", "3", "--quiet"]) == 0
    assert "trained made for 3 epochs" in capsys.readouterr().out
    assert [r["epoch"] for r in RunFolder(run_copy).read_metrics()] == [1, 2, 3]
    assert load_checkpoint(RunFolder(run_copy).last)["epoch"] == 3


# -- eval ---------------------------------------------------------------------------------------------


def test_eval(trained_run, capsys):
    assert main(["eval", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "test NLL =" in out and "nats" in out and "bits/dim" in out and "exact" in out
    record = json.loads((trained_run / "eval_test.json").read_text())
    assert record["likelihood"] == "exact" and record["split"] == "test" and record["checkpoint"] == "best"
    assert record["model"] == "made" and record["dataset"] == "digits" and record["num_examples"] == 180
    assert record["bits_per_dim"] == pytest.approx(record["nll_nats"] / (64 * math.log(2)), rel=1e-12)
    assert f"{record['nll_nats']:.2f}" in out
    # the reported number is the model's NLL on the test split
    model = model_from_checkpoint(load_checkpoint(RunFolder(trained_run).best))
    test = genzoo.load_dataset("digits", "test")
    assert record["nll_nats"] == pytest.approx(evaluate(model, test.reshape(180, -1)).nll_nats, rel=1e-6)


def test_eval_last_checkpoint_on_valid_matches_the_training_record(trained_run):
    assert main(["eval", str(trained_run), "--split", "valid", "--checkpoint", "last", "--batch-size", "64"]) == 0
    record = json.loads((trained_run / "eval_valid.json").read_text())
    assert record["epoch"] == 2
    assert record["nll_nats"] == pytest.approx(RunFolder(trained_run).read_metrics()[-1]["valid_nll"], rel=1e-6)


def _digits_test_file(tmp_path, suffix=".npy", rows=7):
    """The first rows of the digits test split in a user's file, image-shaped in .npy."""
    x = genzoo.load_dataset("digits", "test")[:rows].numpy()
    path = tmp_path / f"mine{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    else:
        np.savetxt(path, x.reshape(rows, -1), fmt="%d", delimiter=",")
    return path, torch.from_numpy(x)


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_eval_input_scores_each_example_of_a_users_file(trained_run, tmp_path, capsys, suffix):
    path, x = _digits_test_file(tmp_path, suffix)
    scores = tmp_path / f"scores{suffix}"
    assert main(["eval", str(trained_run), "--input", str(path), "--scores", str(scores), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{path.name} NLL =" in out and "exact" in out and str(scores) in out
    model = model_from_checkpoint(load_checkpoint(RunFolder(trained_run).best))
    with torch.no_grad():
        expected = model.log_prob(x).double().numpy()
    if suffix == ".npy":
        written = np.load(scores)
    else:
        header, *rows = scores.read_text().splitlines()
        assert header == "log_p_nats,nll_bits_per_dim"
        table = np.array([[float(v) for v in row.split(",")] for row in rows])
        assert np.allclose(table[:, 1], -table[:, 0] / (64 * math.log(2)), atol=1e-5)
        written = table[:, 0]
    assert written.shape == (7,) and np.allclose(written, expected, atol=1e-5), "scores in input order"
    record = json.loads((trained_run / f"eval_input-{path.name}.json").read_text())
    assert record["input"] == str(path) and record["num_examples"] == 7 and record["split"] == path.name
    assert record["nll_nats"] == pytest.approx(-expected.mean(), rel=1e-6)


@pytest.mark.parametrize("command", ["eval", "encode"])
def test_split_and_input_together_are_a_usage_error(command, tmp_path, capsys):
    # --input replaces the split: given both, one of them would be ignored without a word
    extra = ["--out", str(tmp_path / "z.npy")] if command == "encode" else []
    with pytest.raises(SystemExit) as info:
        main([command, str(tmp_path), "--split", "valid", "--input", str(tmp_path / "x.npy"), *extra])
    assert info.value.code == 2
    assert "--input: not allowed with argument --split" in capsys.readouterr().err


def test_eval_input_refuses_a_file_that_does_not_fit_the_model(trained_run, tmp_path, capsys):
    path, x = _digits_test_file(tmp_path)
    flat = x.reshape(len(x), -1).numpy()
    bad_value = flat.copy()
    bad_value[5, 9] = 7  # an 8-bit value: a valid data file, but not binary
    cases = {
        "eight_bit.npy": (bad_value, "row 5 has value 7 at dimension 9"),  # the file's row, not the batch's
        "narrow.npy": (flat[:, :10], "examples have 10 values; this run's model takes 64 (1x8x8)"),
        "fraction.npy": (flat * 0.5, "expected binary values"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        assert main(["eval", str(trained_run), "--input", str(tmp_path / name), "--batch-size", "2"]) == 2
        line = cli_error_line(capsys)
        assert name in line and message in line, line
    np.savez(tmp_path / "two.npz", a=flat, b=flat)
    assert main(["eval", str(trained_run), "--input", str(tmp_path / "two.npz")]) == 2
    assert "expected a single array" in cli_error_line(capsys)
    assert main(["eval", str(trained_run), "--input", str(path), "--scores", str(tmp_path / "s.txt")]) == 2
    assert "use a .npy or .csv file" in cli_error_line(capsys)
    assert not (trained_run / "eval_input-eight_bit.npy.json").exists()


def test_load_model_gives_the_runs_trained_model_in_eval_mode(trained_run, tmp_path):
    model = genzoo.load_model(trained_run)
    assert isinstance(model, genzoo.GenerativeModel) and not model.training
    reference = model_from_checkpoint(load_checkpoint(RunFolder(trained_run).best))
    x = genzoo.load_dataset("digits", "test")[:20]
    with torch.no_grad():
        assert torch.equal(model.log_prob(x), reference.eval().log_prob(x))
    last = genzoo.load_model(str(trained_run), checkpoint="last", device="auto")
    assert last.device.type in ("cpu", "cuda")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        genzoo.load_model(tmp_path / "no-such-run")
    with pytest.raises(ValueError, match="unknown checkpoint 'newest'"):
        genzoo.load_model(trained_run, checkpoint="newest")


def test_import_genzoo_stays_light():
    code = "import sys, genzoo; print(sorted(m for m in ('genzoo.training', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_eval_of_a_missing_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "no-such-run")]) == 2
    line = cli_error_line(capsys)
    assert "no-such-run" in line and "does not exist" in line


def test_eval_of_a_corrupt_checkpoint(run_copy, capsys):
    RunFolder(run_copy).best.write_bytes(b"\x00garbage" * 64)
    assert main(["eval", str(run_copy)]) == 2
    assert "corrupt" in cli_error_line(capsys)


def test_eval_of_a_run_without_checkpoints(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    assert main(["eval", str(tmp_path / "empty-run")]) == 2
    assert "does not exist" in cli_error_line(capsys)


# -- sample -------------------------------------------------------------------------------------------


def test_sample(trained_run, tmp_path, capsys):
    png = tmp_path / "OUT.png"
    assert main(["sample", str(trained_run), "-n", "9", "--out", str(png)]) == 0
    assert "drew 9 samples" in capsys.readouterr().out
    with Image.open(png) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size == (128, 128)  # a 3x3 grid of 8x8 digits, 2-pixel padding, zoom 4
    x = np.load(tmp_path / "OUT.npy")
    assert x.shape == (9, 1, 8, 8) and x.dtype == np.uint8
    assert set(np.unique(x)) <= {0, 1}
    assert 0 < x.mean() < 1


def test_sample_is_reproducible_and_naive_equals_fast(trained_run, tmp_path):
    def draw(name, *extra):
        png = tmp_path / f"{name}.png"
        assert main(["sample", str(trained_run), "-n", "16", "--out", str(png), *extra]) == 0
        return np.load(png.with_suffix(".npy"))

    fast = draw("fast", "--seed", "7")
    assert np.array_equal(draw("again", "--seed", "7"), fast)
    assert np.array_equal(draw("naive", "--seed", "7", "--sampler", "naive"), fast)
    assert not np.array_equal(draw("other", "--seed", "8"), fast)


def test_sample_in_batches_draws_the_batches_from_one_seeded_stream(trained_run, tmp_path, capsys):
    png = tmp_path / "batched.png"
    assert main(["sample", str(trained_run), "-n", "7", "--batch-size", "3", "--seed", "5", "--out", str(png)]) == 0
    batched = np.load(png.with_suffix(".npy"))
    model = genzoo.load_model(trained_run)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        expected = torch.cat([model.sample(n, generator=generator) for n in (3, 3, 1)])
    assert batched.shape == (7, 1, 8, 8) and np.array_equal(batched, expected.numpy().astype(np.uint8))
    # fewer samples than a batch: one draw of all of them, as before batching existed
    assert main(["sample", str(trained_run), "-n", "5", "--seed", "5", "--out", str(png)]) == 0
    with torch.no_grad():
        whole = model.sample(5, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(np.load(png.with_suffix(".npy")), whole.numpy().astype(np.uint8))
    capsys.readouterr()
    assert main(["sample", str(trained_run), "-n", "5", "--batch-size", "0", "--out", str(png)]) == 2
    assert "--batch-size must be at least 1" in cli_error_line(capsys)


def test_sample_defaults_to_the_run_folder(run_copy):
    assert main(["sample", str(run_copy), "-n", "4", "--checkpoint", "last"]) == 0
    assert (run_copy / "samples.png").is_file()
    assert np.load(run_copy / "samples.npy").shape == (4, 1, 8, 8)


def test_sample_needs_at_least_one(trained_run, tmp_path, capsys):
    assert main(["sample", str(trained_run), "-n", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "-n must be at least 1" in cli_error_line(capsys)


# -- list ---------------------------------------------------------------------------------------------


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "models:" in out and "data sets:" in out
    for name in genzoo.list_models() + genzoo.list_datasets():
        assert f"  {name}" in out
    assert "1437/180/180" in out and "1x8x8" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    for name in genzoo.list_models():
        # every built-in data set is binary or 8-bit: what log_prob returns there is what is listed
        on_builtin_data = genzoo.build_model(name, (1, 8, 8)).likelihood
        assert rows[name][2].rstrip("*") == on_builtin_data, f"{name}: the listed likelihood kind is wrong"
        real_valued = type(genzoo.build_model(name, (1, 8, 8))).support == "real"
        if real_valued:  # a flow: exact on real-valued data, so its entry is starred and footnoted
            assert genzoo.build_model(name, (1, 8, 8), data_kind="real").likelihood == "exact"
            assert rows[name][2] == on_builtin_data + "*", f"{name}: a data-dependent likelihood is not marked"
        else:
            assert not rows[name][2].endswith("*"), name
    assert rows["glow"][2] == "lower_bound*" and "exact on real-valued data" in out
    assert rows["made"][1] == "autoregressive" and rows["vae"][1] == "latent" and rows["glow"][1] == "flows"
    assert "MADE: the masked autoencoder for distribution estimation" in out


def test_list_a_model_shows_its_hyperparameters(capsys):
    assert main(["list", "fvsbn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fvsbn: FVSBN: the fully visible sigmoid belief network (autoregressive; log_prob: exact)")
    assert '  order = "raster"  (one of "raster", "spiral", "subgrid-spiral")' in out
    assert "the order of the chain rule" in out
    assert main(["list", "glow"]) == 0
    assert "log_prob: lower_bound on binary and 8-bit data, exact on real-valued data" in capsys.readouterr().out


def test_list_a_model_prints_a_comment_shared_by_a_run_of_fields_once_under_the_last(capsys):
    assert main(["list", "realnvp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shared = "dequantization draws per example in evaluation, and their seed"
    assert sum(shared in line for line in lines) == 1
    at = next(i for i, line in enumerate(lines) if shared in line)
    assert [line.split(" = ")[0].strip() for line in lines[at - 2:at]] == ["eval_draws", "eval_seed"]


@pytest.mark.parametrize("name", genzoo.list_models())
def test_list_a_model_shows_every_hyperparameter_with_a_default_that_builds_it(name, capsys):
    """Each listed `key = value` is valid TOML for `-p`, and the listed values build the model."""
    from genzoo.models.base import model_config_class

    assert main(["list", name]) == 0
    listed = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and " = " in line:
            key, rest = line.strip().split(" = ", 1)
            listed[key] = tomllib.loads(f"v = {rest.rsplit('  (', 1)[0]}")["v"]
    fields = [f.name for f in dataclasses.fields(model_config_class(name)) if f.init]
    assert list(listed) == fields
    assert genzoo.build_model(name, (1, 8, 8), **listed).config == genzoo.build_model(name, (1, 8, 8)).config


@pytest.mark.parametrize("name", genzoo.list_models())
def test_every_hyperparameter_has_a_doc_comment(name):
    """`genzoo list MODEL` explains each key: a new field needs a #: comment (or a place in a
    documented run of fields)."""
    from genzoo.config import field_docs
    from genzoo.models.base import model_config_class

    config_class = model_config_class(name)
    undocumented = [f.name for f in dataclasses.fields(config_class) if f.init and f.name not in field_docs(config_class)]
    assert undocumented == []


def test_list_an_unknown_model(capsys):
    assert main(["list", "gpt"]) == 2
    line = cli_error_line(capsys)
    assert "unknown model 'gpt'" in line and "fvsbn" in line


def test_a_reader_that_leaves_early_ends_the_command_quietly(monkeypatch, capsys):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["list"]) == 141
    assert capsys.readouterr().err == ""


def test_genzoo_list_piped_into_head_prints_no_traceback():
    command = f"{shlex.quote(sys.executable)} -m genzoo list | head -n 1"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stdout == "models:\n"
    assert "Traceback" not in result.stderr


# -- errors: exit code 2, one line on stderr ----------------------------------------------------------


def test_unknown_model(tmp_path, capsys):
    assert main(["train", "gpt", "--data", "digits", "--out", str(tmp_path / "run")]) == 2
    line = cli_error_line(capsys)
    assert "unknown model 'gpt'" in line and "made" in line
    assert not (tmp_path / "run").exists()


def test_unknown_dataset(tmp_path, capsys):
    assert main(["train", "made", "--data", "cifar", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "unknown data set 'cifar'" in cli_error_line(capsys)


def test_unknown_param(tmp_path, capsys):
    assert main(["train", "made", "--data", "digits", "-p", "hiden_sizes=[8]", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    assert "unknown key 'hiden_sizes'" in cli_error_line(capsys)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_param_value(tmp_path, capsys):
    assert main(["train", "made", "--data", "digits", "-p", "num_masks=0", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    assert "num_masks" in cli_error_line(capsys)


def test_params_reach_the_train_and_data_tables(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "1", "-p", "train.weight_decay=1e-4",
                 "-p", "train.lr_schedule=cosine", "-p", "data.binarization=none", "-p", "model.name=fvsbn",
                 "--out", str(run), "--quiet"]) == 0
    config = load_run_config(run / "config.toml")
    assert config.train.weight_decay == 1e-4 and config.train.lr_schedule == "cosine"


@pytest.mark.parametrize("param, message", [
    ("optim.lr=1", "unknown table 'optim'"),
    ("train.momentum=0.9", "unknown key 'momentum'"),
    ("train.lr_schedule=step", "lr_schedule"),
])
def test_bad_table_params_are_refused(tmp_path, capsys, param, message):
    assert main(["train", "fvsbn", "--data", "digits", "-p", param, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert message in cli_error_line(capsys)


def test_param_without_equals_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "made", "-p", "hidden_sizes"])
    assert info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[train\nepochs = 2\n", "not valid TOML"),
        ("[train]\nepochs = 0\n", "epochs"),
        ("[train]\nlr = \"x\"\n", "lr"),
        ("[optimizer]\nlr = 0.1\n", "unknown table [optimizer]"),
        ('[model]\nname = "nade"\n', "configures model 'nade'"),
    ],
    ids=["invalid-toml", "bad-epochs", "bad-lr", "unknown-table", "other-model"],
)
def test_bad_config_file(tmp_path, capsys, text, expected):
    config_file = tmp_path / "bad.toml"
    config_file.write_text(text)
    assert main(["train", "made", "--config", str(config_file), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert expected in cli_error_line(capsys)


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "made", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in cli_error_line(capsys)


def test_training_over_an_existing_run(trained_run, capsys):
    before = RunFolder(trained_run).last.read_bytes()
    assert main(["train", "made", "--data", "digits", "--epochs", "1", "--out", str(trained_run), "--quiet"]) == 2
    assert "already holds a run" in cli_error_line(capsys)
    assert RunFolder(trained_run).last.read_bytes() == before


def test_overwrite_starts_afresh(run_copy, capsys):
    assert main(["eval", str(run_copy)]) == 0
    assert (run_copy / "eval_test.json").is_file()
    capsys.readouterr()
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "1", "--out", str(run_copy), "--overwrite",
                 "--quiet"]) == 0
    run = RunFolder(run_copy)
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    assert load_run_config(run.config).model == {"name": "fvsbn"}
    assert load_checkpoint(run.last)["config"]["model"] == {"name": "fvsbn"}
    assert not (run_copy / "eval_test.json").exists(), "a stale evaluation of the old run survived"


def test_resume_and_overwrite_contradict(run_copy, capsys):
    before = RunFolder(run_copy).last.read_bytes()
    assert main(["train", "made", "--out", str(run_copy), "--resume", "--overwrite"]) == 2
    assert "contradict" in cli_error_line(capsys)
    assert RunFolder(run_copy).last.read_bytes() == before


def test_a_failing_overwrite_keeps_the_old_run(run_copy, capsys):
    run = RunFolder(run_copy)
    before = run.last.read_bytes()
    assert main(["train", "made", "--data", "digits", "-p", "hiden_sizes=[8]", "--out", str(run_copy),
                 "--overwrite", "--quiet"]) == 2
    assert "unknown key 'hiden_sizes'" in cli_error_line(capsys)
    assert run.last.is_file() and run.last.read_bytes() == before
    assert len(run.read_metrics()) == 2


def test_eval_input_records_of_two_files_with_one_stem_both_stay(trained_run, tmp_path):
    npy, _ = _digits_test_file(tmp_path, ".npy")
    csv, _ = _digits_test_file(tmp_path, ".csv")
    assert npy.stem == csv.stem
    for path in (npy, csv):
        assert main(["eval", str(trained_run), "--input", str(path), "--quiet"]) == 0
    for path in (npy, csv):
        assert json.loads((trained_run / f"eval_input-{path.name}.json").read_text())["input"] == str(path)


@pytest.mark.parametrize("model, options, message", [
    ("fvsbn", [], "holds a 'made' run, not 'fvsbn'"),
    ("made", ["--data", "mnist5k"], "--data sets data.name = 'mnist5k' (the run's: 'digits')"),
    ("made", ["--lr", "0.5", "--batch-size", "7"], "--batch-size sets train.batch_size = 7"),
    ("made", ["-p", "hidden_sizes=[7]"], "-p hidden_sizes sets model.hidden_sizes = [7] (the run's: [32])"),
    ("made", ["--config", "configs/nade.toml"], "sets model.name = 'nade'"),
    ("made", ["--seed", "3"], "--seed sets train.seed = 3"),
])
def test_resume_refuses_what_it_would_ignore(run_copy, capsys, model, options, message):
    before = RunFolder(run_copy).last.read_bytes()
    assert main(["train", model, "--out", str(run_copy), "--resume", "--epochs", "3", *options]) == 2
    assert message in cli_error_line(capsys)
    assert RunFolder(run_copy).last.read_bytes() == before


def test_resume_accepts_the_same_command_again(run_copy):
    # the command that made the run (trained_run), with --resume and more epochs
    assert main(["train", "made", "--data", "digits", "--epochs", "3", "-p", "hidden_sizes=[32]",
                 "--out", str(run_copy), "--resume", "--quiet"]) == 0
    assert [r["epoch"] for r in RunFolder(run_copy).read_metrics()] == [1, 2, 3]


def test_resume_accepts_a_hyperparameter_at_its_default(run_copy):
    """config.toml keeps only the hyperparameters a run set; -p KEY=DEFAULT is the run's value
    (it was refused: "the run's: None")."""
    assert main(["train", "made", "--out", str(run_copy), "--resume", "--epochs", "3", "-p", "num_masks=1",
                 "-p", "order_agnostic=false", "-p", "hidden_sizes=[32]", "--quiet"]) == 0
    assert [r["epoch"] for r in RunFolder(run_copy).read_metrics()] == [1, 2, 3]


def test_resume_takes_a_new_time_budget(run_copy, capsys):
    assert main(["train", "made", "--out", str(run_copy), "--resume", "--epochs", "3", "--max-seconds", "1000",
                 "--quiet"]) == 0
    assert [r["epoch"] for r in RunFolder(run_copy).read_metrics()] == [1, 2, 3]


@pytest.mark.parametrize("param, options", [
    ("data.name=nosuch", ["--data", "digits"]),
    ("train.epochs=0", ["--epochs", "1"]),
    ("train.lr=1e-3", ["--lr", "1e-2"]),
])
def test_a_value_set_by_both_p_and_its_option_is_refused(tmp_path, capsys, param, options):
    # otherwise the option wins and the -p value is never even checked
    assert main(["train", "fvsbn", *options, "-p", param, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    key = param.split("=")[0]
    assert f"{key} is set twice" in cli_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("first, second, key", [
    ("train.epochs=1", "train.epochs=2", "train.epochs"),
    ("train.lr=1e-3", "train.lr=1e-2", "train.lr"),
    ("hidden_sizes=[8]", "model.hidden_sizes=[9]", "model.hidden_sizes"),  # one key, two spellings
])
def test_a_key_given_twice_by_p_is_refused(tmp_path, capsys, first, second, key):
    """-p k=1 -p k=2 is a slip, not a choice of the last value (a resume refused it already)."""
    out = tmp_path / "run"
    assert main(["train", "made", "--data", "digits", "-p", first, "-p", second, "--out", str(out), "--quiet"]) == 2
    assert f"{key} is set twice, by -p " in cli_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("command, message", [
    (["eval", "RUN", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["encode", "RUN", "--batch-size", "-1", "--out", "z.npy"], "argument --batch-size: must be at least 1, got -1"),
    (["train", "fvsbn", "--seed", "99999999999999999999999"], "argument --seed: must be an integer from 0 to 2**63 - 1"),
    (["sample", "RUN", "--seed", "-1"], "argument --seed: must be an integer from 0 to 2**63 - 1"),
])
def test_bad_numbers_are_usage_errors(capsys, command, message):
    with pytest.raises(SystemExit) as info:
        main(command)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_output_paths_are_checked_before_the_work(trained_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = [
        (["sample", str(trained_run), "-n", "4", "--out", str(tmp_path / "grid.npy")], "not an image file name"),
        (["sample", str(trained_run), "-n", "4", "--out", str(tmp_path / "grid")], "not an image file name"),
        (["sample", str(trained_run), "-n", "4", "--out", str(a_file / "grid.png")], f"{a_file} is a file, not a folder"),
        (["sample", str(trained_run), "-n", "4", "--out", str(tmp_path)], "is a folder; give a file name"),
        (["eval", str(trained_run), "--scores", str(a_file / "s.npy")], f"{a_file} is a file, not a folder"),
        (["train", "fvsbn", "--data", "digits", "--out", str(a_file)], f"--out {a_file} is a file"),
        (["train", "fvsbn", "--data", "digits", "--out", str(a_file / "run")], f"{a_file / 'run'}: not a directory"),
        (["eval", str(a_file)], f"{a_file} is a file; give the run folder"),
    ]
    for command, message in cases:
        assert main(command) == 2, command
        assert message in cli_error_line(capsys), command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], "nothing written"


def test_sample_refuses_an_n_that_cannot_fit_in_memory(trained_run, capsys):
    assert main(["sample", str(trained_run), "-n", str(10**14)]) == 2
    assert "GB in memory" in cli_error_line(capsys)


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads Linux's /proc/meminfo")
def test_available_memory_counts_reclaimable_cache():
    from genzoo.cli import _available_memory_bytes

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    available = _available_memory_bytes()
    assert available is not None and 0 < available <= total
    assert available >= 0.5 * free  # MemAvailable adds the reclaimable cache to (most of) the free pages


def test_out_of_memory_is_one_line(monkeypatch, tmp_path, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 25600000000000 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr("genzoo.cli.Trainer.fit", fail)
    assert main(["train", "fvsbn", "--data", "digits", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    line = cli_error_line(capsys)
    assert "not enough memory" in line and "25600000000000 bytes" in line and "enforce fail" not in line


@pytest.mark.parametrize("new_width, message", [
    (17, "trained on data of shape 16, but {data!r} now gives 17"),
    (16, "{data!r} is not the data the run was trained on"),
], ids=["other-shape", "same-shape"])
def test_eval_of_a_run_whose_data_file_changed(tmp_path, capsys, new_width, message):
    data = tmp_path / "data.npy"
    rng = np.random.default_rng(0)
    np.save(data, (rng.random((60, 16)) < 0.3).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", str(data), "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--quiet"]) == 0  # the same file: scored
    capsys.readouterr()
    np.save(data, (rng.random((60, new_width)) < 0.3).astype(np.float32))
    assert main(["eval", str(run)]) == 2
    assert message.format(data=str(data)) in cli_error_line(capsys)
    if new_width == 16:
        assert main(["eval", str(run), "--input", str(data), "--quiet"]) == 0  # what the message suggests


def test_resume_needs_out(capsys):
    assert main(["train", "made", "--resume"]) == 2
    assert "--resume needs --out" in cli_error_line(capsys)


def test_8bit_data_without_binarization(tmp_path, capsys):
    data = tmp_path / "gray.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 8, 8)).astype(np.uint8))
    assert main(["train", "nade", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "binarization" in cli_error_line(capsys)
    # and with it, training works
    assert main(["train", "nade", "--data", str(data), "--binarization", "dynamic", "--epochs", "1",
                 "-p", "hidden_size=4", "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_invalid_data_file(tmp_path, capsys):
    data = tmp_path / "half.csv"
    data.write_text("0,1\n1,0.5\n0,0\n")
    assert main(["train", "fvsbn", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    line = cli_error_line(capsys)
    assert "row 1" in line and "0.5" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys):
    assert main(["train", "made", "--data", "digits", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "no CUDA device" in cli_error_line(capsys)


@pytest.mark.parametrize("name, message", [
    ("cuda:7", "torch sees 2 CUDA devices (cuda:0 to cuda:1)"), ("cuda:-1", "unknown device 'cuda:-1'"),
    ("cudax", "unknown device 'cudax'"), ("cuda 0", "unknown device 'cuda 0'"), ("cuda:0:1", "unknown device"),
])
def test_a_bad_cuda_device_is_one_line_on_a_machine_with_gpus(monkeypatch, tmp_path, capsys, name, message):
    """torch.device raises RuntimeError for these, which used to reach the user as a traceback; an
    index past the devices used to fail only when the model moved there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert genzoo.devices.resolve_device("cuda:1") == torch.device("cuda:1")
    assert main(["train", "made", "--data", "digits", "--device", name, "--out", str(tmp_path / "run")]) == 2
    assert message in cli_error_line(capsys)


# -- help ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["sample"], ["list"]], ids=lambda c: c[0] if c else "top")
def test_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: genzoo")


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: genzoo" in capsys.readouterr().err


def test_installed_console_script():
    script = Path(sys.executable).parent / "genzoo"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "genzoo.cli"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: genzoo" in result.stdout
    for name in ("train", "eval", "sample", "list"):
        assert name in result.stdout


# -- Ctrl-C -------------------------------------------------------------------------------------------


def _interrupted_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_ctrl_c_during_training_says_how_to_continue(run_copy, tmp_path, monkeypatch, capsys):
    def interrupted_fit(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(genzoo.training.Trainer, "fit", interrupted_fit)
    (run_copy / "loss_curve.png").unlink()
    assert main(["train", "made", "--resume", "--epochs", "4", "--out", str(run_copy)]) == 130
    assert (run_copy / "loss_curve.png").is_file()  # the epochs trained so far, plotted
    line = _interrupted_line(capsys)
    assert line.startswith("genzoo: training interrupted")
    assert f"continue with: genzoo train made --resume --out {run_copy}" in line
    # interrupted before any epoch was saved: there is nothing to resume
    fresh = tmp_path / "fresh"
    assert main(["train", "made", "--data", "digits", "-p", "hidden_sizes=[8]", "--out", str(fresh)]) == 130
    line = _interrupted_line(capsys)
    assert "no epoch was saved yet" in line and "--overwrite" in line


def test_ctrl_c_in_another_command_ends_in_one_line(trained_run, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(genzoo.cli, "evaluate_with_scores", interrupted)
    assert main(["eval", str(trained_run)]) == 130
    assert _interrupted_line(capsys) == "genzoo: interrupted"


def test_train_fit_epochs_to_time_reaches_the_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "100000", "--max-seconds", "0.5",
                 "--fit-epochs-to-time", "-p", "train.lr_schedule=\"cosine\"", "--out", str(run), "--quiet"]) == 0
    assert "fitted to max_seconds = 0.5" in capsys.readouterr().out
    config = load_run_config(run / "config.toml")
    assert config.train.fit_epochs_to_max_seconds and config.train.epochs < 100000
    assert main(["train", "fvsbn", "--data", "digits", "--fit-epochs-to-time", "--out", str(tmp_path / "r2")]) == 2
    assert "needs a time budget" in cli_error_line(capsys)


# -- SIGTERM (kill, a batch system's preemption) -----------------------------------------------------


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    """A real SIGTERM to a real `genzoo train`: the run ends in one line that says how to resume
    (exit status 143), its lock is released and the resume it names trains on."""
    run = tmp_path / "run"
    last = RunFolder(run).last
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "genzoo.cli", "train", "made", "--data", "digits", "-p", "hidden_sizes=[8]",
               "--epochs", "100000", "--quiet", "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), process.stderr.read() if process.poll() is not None else "no last.pt"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + 15, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("genzoo: training stopped by SIGTERM")
    assert f"continue with: genzoo train made --resume --out {run}" in err
    assert (run / "loss_curve.png").is_file()
    # the lock went with the process, and the run resumes where it stopped
    saved = load_checkpoint(last)["epoch"]
    assert main(["train", "made", "--resume", "--epochs", str(saved + 1), "--quiet", "--out", str(run)]) == 0
    assert load_checkpoint(last)["epoch"] == saved + 1


def test_sigterm_handler_is_restored_after_a_command(trained_run, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGTERM)

    def terminated(*args, **kwargs):
        assert signal.getsignal(signal.SIGTERM) is not before  # the command's own handler
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(genzoo.cli, "evaluate_with_scores", terminated)
    assert main(["eval", str(trained_run)]) == 143
    assert _interrupted_line(capsys) == "genzoo: stopped by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_a_checkpoint_write_stays_a_sigterm(tmp_path, monkeypatch):
    """torch's zip writer turns an exception inside it into a RuntimeError; save_checkpoint gives
    back the signal's own exception, so the command still exits as SIGTERM."""
    def cut(*args, **kwargs):
        try:
            raise genzoo.cli.Terminated
        except genzoo.cli.Terminated as stop:
            raise RuntimeError("unexpected pos") from stop

    monkeypatch.setattr(torch, "save", cut)
    with pytest.raises(genzoo.cli.Terminated):
        genzoo.checkpoint.save_checkpoint({"model": {}}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
