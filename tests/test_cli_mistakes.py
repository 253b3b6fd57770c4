"""Realistic mistakes on the command line get one line and exit code 2, and nothing is lost: no
setting a command cannot honour is dropped in silence, no input file is written over, and a run
keeps working from another folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_error_line
from genzoo.cli import main
from genzoo.config import load_run_config
from genzoo.training import RunFolder

QUIET = ["--quiet"]


@pytest.fixture
def made_run(tmp_path) -> Path:
    run = tmp_path / "made"
    assert main(["train", "made", "--data", "digits", "--epochs", "2", "-p", "hidden_sizes=[16]",
                 "--out", str(run), *QUIET]) == 0
    return run


@pytest.fixture(scope="module")
def latent_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latent_mistakes")
    runs = {"vae": root / "vae", "gumbel-vae": root / "gumbel"}
    small = ["-p", "eval_samples=10", "-p", "valid_samples=5", "-p", "hidden_sizes=[16]"]
    assert main(["train", "vae", "--data", "digits", "--epochs", "1", *small, "-p", "latent_sizes=[4]",
                 "--out", str(runs["vae"]), *QUIET]) == 0
    assert main(["train", "gumbel-vae", "--data", "digits", "--epochs", "1", *small, "-p", "num_latents=3",
                 "-p", "num_categories=4", "--out", str(runs["gumbel-vae"]), *QUIET]) == 0
    return runs


# -- --resume: every value it is given is checked, and none is dropped --------------------------------


@pytest.mark.parametrize("budget", ["nan", "-5"])
def test_resume_refuses_a_bad_max_seconds_before_training(made_run, capsys, budget):
    best_before = RunFolder(made_run).best.read_bytes()
    assert main(["train", "made", "--out", str(made_run), "--resume", "--epochs", "4", "--max-seconds", budget, *QUIET]) == 2
    assert "max_seconds must be non-negative" in cli_error_line(capsys)
    assert RunFolder(made_run).best.read_bytes() == best_before
    assert main(["eval", str(made_run), "--quiet"]) == 0


def test_resume_refuses_fewer_epochs_than_it_has_trained(made_run, capsys):
    assert main(["train", "made", "--out", str(made_run), "--resume", "--epochs", "1", *QUIET]) == 2
    assert "has trained 2 epochs already; epochs must be at least 2, got 1" in cli_error_line(capsys)
    assert load_run_config(made_run / "config.toml").train.epochs == 2


def test_resume_takes_epochs_from_a_train_param(made_run, capsys):
    assert main(["train", "made", "--out", str(made_run), "--resume", "-p", "train.epochs=3", *QUIET]) == 0
    assert "trained made for 3 epochs" in capsys.readouterr().out
    assert load_run_config(made_run / "config.toml").train.epochs == 3


def test_resume_refuses_epochs_given_twice(made_run, capsys):
    assert main(["train", "made", "--out", str(made_run), "--resume", "--epochs", "3", "-p", "train.epochs=4", *QUIET]) == 2
    assert "train.epochs is set twice" in cli_error_line(capsys)


def test_resume_says_how_to_change_the_epochs_a_config_file_sets(made_run, tmp_path, capsys):
    config = tmp_path / "longer.toml"
    config.write_text('[model]\nname = "made"\nhidden_sizes = [16]\n[data]\nname = "digits"\n[train]\nepochs = 6\n')
    assert main(["train", "made", "--out", str(made_run), "--resume", "--config", str(config), *QUIET]) == 2
    line = cli_error_line(capsys)
    assert f"--config {config} sets train.epochs = 6 (the run's: 2)" in line and "only --epochs and --max-seconds" in line


def test_a_param_cannot_swap_the_model(tmp_path, capsys):
    assert main(["train", "made", "--data", "digits", "-p", "name=nade", "--out", str(tmp_path / "r"), *QUIET]) == 2
    assert "-p name=nade names another model than the command's 'made'" in cli_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [["train", "made", "--data", ""], ["train", "made", "--data", "digits", "--out", ""],
                                  ["eval", ""], ["sample", " "]])
def test_empty_paths_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "must not be empty" in capsys.readouterr().err


# -- a run works from another folder ---------------------------------------------------------------------


def test_a_run_on_a_relative_data_file_works_from_another_folder(tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    rng = np.random.default_rng(0)
    np.save(work / "mine.npy", (rng.random((40, 9)) < 0.4).astype(np.float32))
    monkeypatch.chdir(work)
    assert main(["train", "fvsbn", "--data", "mine.npy", "--epochs", "1", "--out", "run", *QUIET]) == 0
    assert load_run_config(work / "run" / "config.toml").data.name == str(work / "mine.npy")
    # resuming with the same relative name is the same data
    assert main(["train", "fvsbn", "--data", "mine.npy", "--out", "run", "--resume", "--epochs", "2", *QUIET]) == 0
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(work / "run"), "--quiet"]) == 0
    assert main(["train", "fvsbn", "--out", str(work / "run"), "--resume", "--epochs", "3", *QUIET]) == 0


# -- outputs never replace inputs ------------------------------------------------------------------------


def test_decode_refuses_to_write_over_its_latents(latent_runs, tmp_path, capsys):
    z = tmp_path / "z.npy"
    assert main(["encode", str(latent_runs["vae"]), "--out", str(z)]) == 0
    before = z.read_bytes()
    assert main(["decode", str(latent_runs["vae"]), str(z), "--out", str(tmp_path / "z.png")]) == 2
    assert "the command's own input" in cli_error_line(capsys)
    assert z.read_bytes() == before


def test_eval_refuses_to_write_scores_over_its_input(made_run, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 1, 8, 8), np.float32))
    assert main(["eval", str(made_run), "--input", str(x), "--scores", str(x), "--quiet"]) == 2
    assert "--scores would write" in cli_error_line(capsys)
    assert np.load(x).shape == (3, 1, 8, 8)


def test_encode_refuses_an_output_name_numpy_would_change(latent_runs, tmp_path, capsys):
    assert main(["encode", str(latent_runs["vae"]), "--out", str(tmp_path / "z.csv")]) == 2
    assert "give a name ending in .npy" in cli_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# -- decode checks its latents --------------------------------------------------------------------------


@pytest.mark.parametrize("model, latents, message", [
    ("vae", np.zeros((3, 7), np.float32), "latents must have shape (B, 4), got (3, 7)"),
    ("vae", np.zeros((3, 4, 1), np.float32), "latents must have shape (B, 4), got (3, 4, 1)"),
    ("vae", np.full((3, 4), np.nan, np.float32), "latent row 0 is not finite"),
    ("vae", np.array([["a"] * 4] * 3), "holds an array of <U1; expected numbers"),
    ("gumbel-vae", np.zeros((3, 5), np.int64), "latents must have shape (B, 3) of integers or (B, 3, 4) or (B, 12)"),
    ("gumbel-vae", np.zeros((3, 3), np.float32), "got (3, 3) of torch.float32"),
])
def test_decode_refuses_latents_of_the_wrong_shape_or_kind(latent_runs, tmp_path, capsys, model, latents, message):
    path = tmp_path / "z.npy"
    np.save(path, latents)
    assert main(["decode", str(latent_runs[model]), str(path), "--out", str(tmp_path / "d.png")]) == 2
    assert message in cli_error_line(capsys)
    assert not (tmp_path / "d.png").exists()


def test_decode_refuses_a_pickle_and_another_format(latent_runs, tmp_path, capsys):
    pickled = tmp_path / "z.npy"
    np.save(pickled, np.array([[object()]] * 2, dtype=object), allow_pickle=True)
    assert main(["decode", str(latent_runs["vae"]), str(pickled), "--out", str(tmp_path / "d.png")]) == 2
    assert "which genzoo never loads" in cli_error_line(capsys)
    text = tmp_path / "z.txt"
    text.write_text("0 0 0 0\n")
    assert main(["decode", str(latent_runs["vae"]), str(text), "--out", str(tmp_path / "d.png")]) == 2
    assert "expected a .npy file" in cli_error_line(capsys)


# -- other one-line errors ---------------------------------------------------------------------------------


def test_a_kernel_nade_run_without_its_kernel_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    run = tmp_path / "nade"
    assert main(["train", "nade", "--data", "digits", "--epochs", "1", "-p", "hidden_size=8", "-p", "backend=kernel",
                 "--out", str(run), *QUIET]) == 0
    monkeypatch.setattr("genzoo.models.autoregressive.nade.nade_kernel_available", lambda *tensors: False)
    assert main(["eval", str(run), "--quiet"]) == 2
    assert "backend 'kernel' needs float32 tensors on the CPU and a C compiler" in cli_error_line(capsys)


@pytest.mark.parametrize("content", [b"see README", b"hi", b"\x80\x02}q\x00."])
def test_a_checkpoint_of_stray_bytes_is_a_one_line_error(made_run, capsys, content):
    RunFolder(made_run).best.write_bytes(content)
    assert main(["eval", str(made_run), "--quiet"]) == 2
    assert "is corrupt or not a genzoo checkpoint" in cli_error_line(capsys)


def test_init_from_takes_a_run_folder_and_names_a_mismatch(made_run, tmp_path, capsys):
    run = tmp_path / "again"
    assert main(["train", "made", "--data", "digits", "--epochs", "1", "-p", "hidden_sizes=[16]",
                 "-p", f"train.init_from={made_run}", "--out", str(run), *QUIET]) == 0
    assert main(["train", "nade", "--data", "digits", "--epochs", "1", "-p", "hidden_size=8",
                 "-p", f"train.init_from={made_run}", "--out", str(tmp_path / "other"), *QUIET]) == 2
    line = cli_error_line(capsys)
    assert "does not match this run's model: Error(s) in loading state_dict for NADE: Missing key(s)" in line


def test_gamma_without_the_speculative_sampler_is_refused(made_run, tmp_path, capsys):
    assert main(["sample", str(made_run), "-n", "2", "--gamma", "3", "--out", str(tmp_path / "s.png")]) == 2
    assert "--gamma is only used with --sampler speculative" in cli_error_line(capsys)


# -- checkpoints: Ctrl-C, write order, and files a resume cannot use --------------------------------------


def test_ctrl_c_inside_torchs_zip_writer_is_still_a_ctrl_c(tmp_path, monkeypatch):
    """torch's writer answers a KeyboardInterrupt with its own RuntimeError on closing the zip."""
    from genzoo.checkpoint import save_checkpoint

    def interrupted_writer(obj, f, *args, **kwargs):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 543488 vs 543440")

    monkeypatch.setattr(torch, "save", interrupted_writer)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_best_is_written_before_last(tmp_path, monkeypatch):
    import genzoo.training

    written = []
    real_save = genzoo.training.save_checkpoint
    monkeypatch.setattr(genzoo.training, "save_checkpoint", lambda payload, path: (written.append(Path(path).name),
                                                                                    real_save(payload, path)))
    assert main(["train", "fvsbn", "--data", "digits", "--epochs", "2", "--out", str(tmp_path / "r"), *QUIET]) == 0
    assert written[:2] == ["best.pt", "last.pt"] and written.count("last.pt") == 2


def test_resume_from_a_best_pt_copied_over_last_pt_is_refused(made_run, capsys):
    run = RunFolder(made_run)
    run.last.write_bytes(run.best.read_bytes())
    assert main(["train", "made", "--out", str(made_run), "--resume", "--epochs", "3", *QUIET]) == 2
    assert "lacks 'optimizer': it is not a last.pt that genzoo train wrote" in cli_error_line(capsys)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p["rng"].update(torch=torch.zeros(3)), "random-generator states torch cannot use"),
    (lambda p: p.update(epoch="2"), "its 'epoch' is a str"),
    (lambda p: p.update(model=[torch.zeros(2)]), "its config, data shape or model weights are not what genzoo writes"),
])
def test_a_damaged_last_pt_is_a_one_line_error(made_run, capsys, damage, message):
    from genzoo.checkpoint import save_checkpoint

    run = RunFolder(made_run)
    payload = torch.load(run.last, weights_only=True)
    damage(payload)
    save_checkpoint(payload, run.last)
    assert main(["train", "made", "--out", str(made_run), "--resume", "--epochs", "3", *QUIET]) == 2
    assert message in cli_error_line(capsys)


def test_ctrl_c_after_a_resume_with_its_own_budget_says_to_keep_it(made_run, monkeypatch, capsys):
    import genzoo.training

    def interrupted_fit(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(genzoo.training.Trainer, "fit", interrupted_fit)
    assert main(["train", "made", "--out", str(made_run), "--resume", "--epochs", "9", "--max-seconds", "60"]) == 130
    err = capsys.readouterr().err
    assert f"continue with: genzoo train made --resume --out {made_run} --max-seconds 60" in err


def test_a_flipped_byte_in_the_weights_is_caught_by_their_checksum(tmp_path):
    from genzoo.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    weights = {"w": torch.full((64,), 1234.5), "b": torch.zeros(3, dtype=torch.bfloat16)}
    path = tmp_path / "c.pt"
    save_checkpoint({"config": {}, "data_shape": [4], "model": weights}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], weights["w"])
    data = bytearray(path.read_bytes())
    at = bytes(data).index(np.float32(1234.5).tobytes() * 4) + 21  # inside the weights, not the zip's headers
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="its model weights differ from the sha256 written with them"):
        load_checkpoint(path)
    # a checkpoint written before the checksum loads as it did
    legacy = {**torch.load(tmp_path / "c.pt", weights_only=True)}
    legacy.pop("model_sha256")
    torch.save(legacy, path)
    assert load_checkpoint(path)["model"]["w"].shape == (64,)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code-from-a-checkpoint",))


def test_a_malicious_pickle_is_refused_in_one_line_without_torchs_warning(tmp_path, monkeypatch):
    import pickle
    import warnings

    from genzoo.checkpoint import CheckpointError, load_checkpoint

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "genzoo-checkpoint", "x": _RunsCode()}, protocol=4))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(CheckpointError, match="refuses to unpickle"):
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert caught == [] and not (tmp_path / "ran-code-from-a-checkpoint").exists()


def test_eval_of_one_example_writes_strict_json(made_run, tmp_path):
    import json

    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, 1, 8, 8), np.float32))
    assert main(["eval", str(made_run), "--input", str(one), "--quiet"]) == 0
    text = (made_run / "eval_input-one.npy.json").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert record["standard_error_nats"] is None and record["nll_nats"] > 0


def test_a_numpy_or_pillow_memory_error_is_one_line(made_run, tmp_path, monkeypatch, capsys):
    import genzoo.cli

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(genzoo.cli, "save_image_grid", out_of_memory)
    assert main(["sample", str(made_run), "-n", "4", "--out", str(tmp_path / "s.png"), "--quiet"]) == 2
    assert "not enough memory for this command" in cli_error_line(capsys)


def test_the_sample_memory_check_counts_the_grid(made_run, monkeypatch, capsys):
    import genzoo.cli

    # 100,000 samples of 64 values: 25.6 MB as float32, about 230 MB with the grid
    monkeypatch.setattr(genzoo.cli, "_available_memory_bytes", lambda: 100_000_000)
    assert main(["sample", str(made_run), "-n", "100000", "--quiet"]) == 2
    assert "need about 0.2 GB in memory (the samples, their .npy and the PNG grid)" in cli_error_line(capsys)


def test_sample_grids_are_scaled_by_the_models_support_not_by_the_values(made_run, tmp_path, monkeypatch):
    """A grayscale model's samples of levels 0 and 1 are near-black images, not white bits."""
    import genzoo.cli

    data = tmp_path / "dark.npy"
    levels = np.random.default_rng(0).integers(0, 2, (60, 1, 4, 4)).astype(np.uint8)
    levels[0, 0, 0, 0] = 255  # 8-bit data, mostly of levels 0 and 1
    np.save(data, levels)
    run = tmp_path / "run"
    assert main(["train", "pixelcnn", "--data", str(data), "--epochs", "1", "-p", "hidden_channels=8",
                 "-p", "num_blocks=1", "-p", "head_channels=8", "--out", str(run), *QUIET]) == 0
    ranges = []
    real_grid = genzoo.cli.save_image_grid
    monkeypatch.setattr(genzoo.cli, "save_image_grid",
                        lambda x, png, **kw: (ranges.append(kw["value_range"]), real_grid(x, png, **kw)))
    for source in (run, made_run):
        assert main(["sample", str(source), "-n", "4", "--out", str(tmp_path / "s.png"), "--quiet"]) == 0
    assert ranges == ["8-bit", "unit"]


def test_temperature_is_for_flows_only(made_run, tmp_path, capsys):
    assert main(["sample", str(made_run), "-n", "4", "--temperature", "0.5", "--out", str(tmp_path / "s.png")]) == 2
    assert "--temperature is for flows (nice, realnvp, glow); 'made' has none" in cli_error_line(capsys)
