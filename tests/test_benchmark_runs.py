"""The benchmarks' shared run driver: a benchmark re-run continues the run folder it left."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import fit_or_resume  # noqa: E402
from conftest import tiny_run_config  # noqa: E402


def test_a_second_call_resumes_the_run_and_trains_only_the_added_epochs(tmp_path):
    run_dir = tmp_path / "made-static"
    device = torch.device("cpu")
    first = fit_or_resume(tiny_run_config(epochs=1), run_dir, device, None)
    assert first.epochs_completed == 1
    # the config asks for 1 epoch; the override extends the same run to 3
    second = fit_or_resume(tiny_run_config(epochs=1), run_dir, device, None, epochs=3)
    assert second.epochs_completed == 3
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3, "the resumed run trained epochs 2 and 3 only"


def test_a_resumed_run_trains_to_the_new_time_budget(tmp_path):
    # the first call stops at its budget; the second, with a larger one, must train on to it and
    # not stop at the budget the run folder's config.toml still holds
    run_dir, device = tmp_path / "fvsbn-static", torch.device("cpu")
    first = fit_or_resume(tiny_run_config("fvsbn", epochs=100000), run_dir, device, None, max_seconds=0.3)
    assert first.stopped_because == "reached max_seconds = 0.3"
    second = fit_or_resume(tiny_run_config("fvsbn", epochs=100000), run_dir, device, None, max_seconds=0.8)
    assert second.stopped_because == "reached max_seconds = 0.8"
    assert second.epochs_completed > first.epochs_completed
    assert second.train_seconds >= 0.8


def test_the_nll_benchmark_fits_a_budgeted_run_and_records_it(tmp_path, monkeypatch):
    import argparse

    import binarized_mnist

    monkeypatch.setattr(binarized_mnist, "config_path", lambda model, protocol: tmp_path / "fvsbn.toml")
    (tmp_path / "fvsbn.toml").write_text('[model]\nname = "fvsbn"\n[data]\nname = "digits"\n'
                                         '[train]\nepochs = 100000\nlr_schedule = "cosine"\n')
    monkeypatch.setattr(binarized_mnist, "REPO", tmp_path)
    args = argparse.Namespace(max_seconds=1.0, epochs=0, fit_epochs_to_time=True, runs=str(tmp_path / "runs"),
                              data_dir=None)
    record = binarized_mnist.run_one("fvsbn", "static", args, torch.device("cpu"))
    assert record["fitted_from_epochs"] == 100000 and record["epochs"] < 100000
    assert record["stopped_because"].startswith("completed all epochs, fitted to max_seconds = 1")
    assert "extended_from_epochs" not in record
    # every field the issue asks of a record, with bits/dim from the NLL
    assert set(record) >= {"model", "dataset", "protocol", "split", "nll_nats", "bits_per_dim", "likelihood", "epochs",
                           "train_seconds", "params", "device", "command"}
    assert record["bits_per_dim"] == pytest.approx(record["nll_nats"] / (64 * math.log(2)))


def test_every_published_record_has_the_issues_fields():
    import json

    from common import RESULTS

    fields = {"model", "dataset", "protocol", "split", "nll_nats", "bits_per_dim", "likelihood", "epochs",
              "train_seconds", "params", "device", "command"}
    for record in json.loads((RESULTS / "binarized-mnist.json").read_text()):
        assert fields <= set(record), (record["model"], record["protocol"], fields - set(record))
        assert record["bits_per_dim"] == pytest.approx(record["nll_nats"] / (784 * math.log(2)), rel=1e-9)


def test_a_benchmark_run_stopped_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch):
    """The run folder then holds config.toml and no last.pt, which a new run refuses without
    --overwrite: the benchmarks' "call again" workflow must start it over."""
    import genzoo.training

    real_evaluate = genzoo.training.evaluate

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(genzoo.training, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        fit_or_resume(tiny_run_config("fvsbn", epochs=2), tmp_path / "run", torch.device("cpu"), None)
    monkeypatch.setattr(genzoo.training, "evaluate", real_evaluate)
    assert fit_or_resume(tiny_run_config("fvsbn", epochs=2), tmp_path / "run", torch.device("cpu"),
                         None).epochs_completed == 2


def test_a_finished_runs_files_are_never_wiped_by_a_benchmark(tmp_path):
    """Only a run killed in its first epoch starts over: a finished run whose last.pt was removed
    keeps its best.pt and evaluations, and the new run is refused as usual."""
    run = tmp_path / "run"
    fit_or_resume(tiny_run_config("fvsbn", epochs=1), run, torch.device("cpu"), None)
    (run / "checkpoints" / "last.pt").unlink()
    (run / "eval_test.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds config.toml"):
        fit_or_resume(tiny_run_config("fvsbn", epochs=1), run, torch.device("cpu"), None)
    assert (run / "eval_test.json").exists() and (run / "checkpoints" / "best.pt").exists()
