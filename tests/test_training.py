"""The Trainer: run folders, exact resume, seeding, early stopping, schedules, data checks."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import genzoo
import genzoo.training
from conftest import last_checkpoint_epochs, one_second_epochs, resume_beside, tiny_run_config
from genzoo.checkpoint import CheckpointError, load_checkpoint
from genzoo.config import ConfigError, TrainConfig, load_run_config
from genzoo.data import DataError
from genzoo.models.autoregressive.made import made_degrees
from genzoo.nn import MaskedLinear
from genzoo.training import RunFolder, Trainer, weight_l1_norm

#: metrics that measure wall-clock time, which two identical runs do not share
TIMING_KEYS = {"epoch_seconds", "examples_per_second"}
METRIC_KEYS = {"epoch", "train_loss", "valid_nll", "valid_bits_per_dim", "lr"} | TIMING_KEYS


def _fit(config, run_dir, **kwargs):
    return Trainer(config, run_dir, progress=False, **kwargs).fit()


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for key, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][key]), f"optimizer state {index}.{key} differs"


def test_run_folder_contents(tmp_path):
    config = tiny_run_config("made", epochs=2, lr=1e-2, seed=3)
    run_dir = tmp_path / "run"
    result = _fit(config, run_dir)
    run = RunFolder(run_dir)

    assert load_run_config(run.config).to_dict() == config.to_dict()
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    lines = run.metrics.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) == r for line, r in zip(lines, records))
    for r in records:
        assert set(r) == METRIC_KEYS
        assert all(math.isfinite(v) for v in r.values())
        assert r["valid_bits_per_dim"] == pytest.approx(r["valid_nll"] / (64 * math.log(2)), rel=1e-12)
        assert r["lr"] == 1e-2
        assert r["epoch_seconds"] > 0 and r["examples_per_second"] > 0
    # it learns: better than the uniform distribution's 64 ln 2 nats
    assert records[-1]["valid_nll"] < 64 * math.log(2) - 5
    # the returned model is ready to score, as genzoo.load_model returns it
    assert not any(m.training for m in result.model.modules())

    for path in (run.best, run.last):
        payload = load_checkpoint(path)
        assert payload["data_shape"] == [1, 8, 8]
        assert payload["config"] == config.to_dict()
    last = load_checkpoint(run.last)
    assert last["epoch"] == 2
    best_epoch = min(records, key=lambda r: r["valid_nll"])["epoch"]
    assert load_checkpoint(run.best)["epoch"] == best_epoch
    with Image.open(run.loss_curve) as image:
        image.verify()
        assert image.format == "PNG"
    assert not list(run_dir.rglob("*.tmp"))

    assert result.epochs_completed == 2
    assert result.best_epoch == best_epoch
    assert result.best_valid_nll == min(r["valid_nll"] for r in records)
    assert result.stopped_because == "completed all epochs"
    # the returned model is the best checkpoint's, and scores the recorded NLL on valid
    valid = genzoo.load_dataset("digits", "valid")
    from genzoo.evaluation import evaluate

    assert evaluate(result.model, valid.reshape(len(valid), -1)).nll_nats == pytest.approx(result.best_valid_nll, rel=1e-9)


RESUME_CASES = [
    # (model, hyperparameters, batch size, epochs before the interruption): with 1437 training
    # examples, batch 100 gives 15 steps an epoch and batch 110 gives 14, so the MADE mask cycle
    # is mid-way (step % K != 0) at the interruption and a lost training_step would show
    pytest.param("made", {"hidden_sizes": [16], "num_masks": 2}, 100, 1, id="made-2masks"),
    pytest.param("made", {"hidden_sizes": [16], "num_masks": 3}, 110, 2, id="made-3masks"),
    pytest.param("nade", {"hidden_size": 8}, 100, 2, id="nade"),
    pytest.param("made", {"hidden_sizes": [32], "direct_connections": True, "row_blocks_min_weights": 0}, 100, 2,
                 id="made-row-blocks"),
]


@pytest.mark.parametrize("model, hp, batch_size, first_epochs", RESUME_CASES)
def test_resume_is_exact(tmp_path, model, hp, batch_size, first_epochs):
    """4 epochs in one go equal `first_epochs` epochs and then a resume to 4, bit for bit."""
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    _fit(tiny_run_config(model, epochs=4, model_hp=hp, batch_size=batch_size, lr=3e-3), run_a)
    _fit(tiny_run_config(model, epochs=first_epochs, model_hp=hp, batch_size=batch_size, lr=3e-3), run_b)
    interrupted = load_checkpoint(RunFolder(run_b).last)
    assert interrupted["epoch"] == first_epochs
    if "num_masks" in hp:
        assert int(interrupted["model"]["training_step"]) % hp["num_masks"] != 0, "the check is vacuous"

    result = Trainer.resume(run_b, epochs=4, progress=False).fit()
    assert result.epochs_completed == 4

    a, b = load_checkpoint(RunFolder(run_a).last), load_checkpoint(RunFolder(run_b).last)
    assert a["epoch"] == b["epoch"] == 4
    _assert_same_state(a["model"], b["model"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["best_epoch"] == b["best_epoch"] and a["best_valid_nll"] == b["best_valid_nll"]
    assert torch.equal(a["rng"]["data_order"], b["rng"]["data_order"])
    _assert_same_state(load_checkpoint(RunFolder(run_a).best)["model"], load_checkpoint(RunFolder(run_b).best)["model"])

    records_a, records_b = RunFolder(run_a).read_metrics(), RunFolder(run_b).read_metrics()
    assert [r["epoch"] for r in records_b] == [1, 2, 3, 4]
    assert _untimed(records_a) == _untimed(records_b)


def test_resume_is_exact_with_dynamic_binarization(tmp_path):
    """The per-epoch Bernoulli draws come from the checkpointed data-order generator."""
    data = tmp_path / "gray.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (300, 4, 4)).astype(np.uint8))
    common = dict(model_hp={"hidden_size": 6}, data=str(data), binarization="dynamic", batch_size=32, lr=1e-2)
    _fit(tiny_run_config("nade", epochs=3, **common), tmp_path / "a")
    _fit(tiny_run_config("nade", epochs=1, **common), tmp_path / "b")
    Trainer.resume(tmp_path / "b", epochs=3, progress=False).fit()
    a, b = load_checkpoint(RunFolder(tmp_path / "a").last), load_checkpoint(RunFolder(tmp_path / "b").last)
    _assert_same_state(a["model"], b["model"])
    assert _untimed(RunFolder(tmp_path / "a").read_metrics()) == _untimed(RunFolder(tmp_path / "b").read_metrics())


class _Crash(Exception):
    pass


def _crash_at_validation(monkeypatch, n: int) -> None:
    """Make the run's n-th validation raise _Crash, as a power cut would before that epoch's checkpoint."""
    real_evaluate = genzoo.training.evaluate
    calls = {"n": 0}

    def crashing_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise _Crash("power cut")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(genzoo.training, "evaluate", crashing_evaluate)


def test_resume_after_a_crash_mid_epoch_is_exact(tmp_path, monkeypatch):
    """A run with a cosine schedule dies during epoch 3; resuming reproduces the uninterrupted run
    (the half-done epoch 3 is redone from the epoch-2 checkpoint)."""
    hp = {"hidden_sizes": [16], "num_masks": 3}
    config = dict(model_hp=hp, batch_size=110, lr=1e-2, lr_schedule="cosine", grad_clip=5.0, seed=4)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    _fit(tiny_run_config("made", epochs=4, **config), run_a)

    _crash_at_validation(monkeypatch, 3)
    with pytest.raises(_Crash):
        _fit(tiny_run_config("made", epochs=4, **config), run_b)
    monkeypatch.undo()
    assert load_checkpoint(RunFolder(run_b).last)["epoch"] == 2

    Trainer.resume(run_b, progress=False).fit()
    a, b = load_checkpoint(RunFolder(run_a).last), load_checkpoint(RunFolder(run_b).last)
    _assert_same_state(a["model"], b["model"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert _untimed(RunFolder(run_a).read_metrics()) == _untimed(RunFolder(run_b).read_metrics())


@pytest.mark.parametrize("epochs, every, expected", [(5, 2, [2, 4, 5]), (6, 3, [3, 6]), (3, 1, [1, 2, 3]), (2, 5, [2])])
def test_checkpoint_every_writes_last_on_its_schedule_and_at_the_end(tmp_path, monkeypatch, epochs, every, expected):
    written = last_checkpoint_epochs(monkeypatch)
    _scripted_validation(monkeypatch, [5.0] + [6.0] * 9)  # one best, at epoch 1
    _fit(tiny_run_config("fvsbn", epochs=epochs, checkpoint_every=every), tmp_path / "run")
    assert written == sorted({1} | set(expected))  # and with each new best


def _scripted_validation(monkeypatch, nlls: list[float]) -> None:
    """Validation NLLs in the order given, one per validation."""
    real_evaluate = genzoo.training.evaluate
    remaining = list(nlls)

    def scripted(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        return dataclasses.replace(result, nll_nats=remaining.pop(0))

    monkeypatch.setattr(genzoo.training, "evaluate", scripted)


def test_a_new_best_also_writes_last_so_a_resume_never_redoes_the_best_epoch(tmp_path, monkeypatch):
    """With checkpoint_every = 3, best.pt of epoch 4 outlived a crash at epoch 5 whose last.pt was
    of epoch 3: a resume on a stretched plan redid epoch 4 differently, and best.pt stayed a model
    of a discarded epoch."""
    written = last_checkpoint_epochs(monkeypatch)
    _scripted_validation(monkeypatch, [10.0, 11.0, 12.0, 9.0, 13.0, 14.0])
    result = _fit(tiny_run_config("fvsbn", epochs=6, checkpoint_every=3), tmp_path / "run")
    assert written == [1, 3, 4, 6] and result.best_epoch == 4
    assert load_checkpoint(RunFolder(tmp_path / "run").best)["epoch"] <= load_checkpoint(RunFolder(tmp_path / "run").last)["epoch"]


def test_checkpoint_every_writes_last_when_a_run_stops_early(tmp_path, monkeypatch):
    written = last_checkpoint_epochs(monkeypatch)
    result = _fit(tiny_run_config("fvsbn", epochs=10, checkpoint_every=4, max_seconds=1e-9), tmp_path / "run")
    assert result.stopped_because.startswith("reached max_seconds") and written == [1]


def test_resume_after_a_crash_between_checkpoints_is_exact(tmp_path, monkeypatch):
    """With checkpoint_every = 2 a run dies in epoch 4 after logging epoch 3, which no checkpoint
    holds: the resume drops epoch 3's record, redoes epochs 3 and 4 from the epoch-2 checkpoint,
    and ends where the uninterrupted run does."""
    config = dict(model_hp={"hidden_sizes": [16], "num_masks": 3}, batch_size=110, lr=1e-2, lr_schedule="cosine",
                  checkpoint_every=2, seed=5)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    # epoch 3 is no new best (a new best would write last.pt too)
    _scripted_validation(monkeypatch, [5.0, 4.0, 6.0, 7.0, 8.0])
    _fit(tiny_run_config("made", epochs=5, **config), run_a)
    monkeypatch.undo()

    _scripted_validation(monkeypatch, [5.0, 4.0, 6.0])
    _crash_at_validation(monkeypatch, 4)
    with pytest.raises(_Crash):
        _fit(tiny_run_config("made", epochs=5, **config), run_b)
    monkeypatch.undo()
    assert load_checkpoint(RunFolder(run_b).last)["epoch"] == 2
    assert [r["epoch"] for r in RunFolder(run_b).read_metrics()] == [1, 2, 3]

    _scripted_validation(monkeypatch, [6.0, 7.0, 8.0])
    Trainer.resume(run_b, progress=False).fit()
    a, b = load_checkpoint(RunFolder(run_a).last), load_checkpoint(RunFolder(run_b).last)
    assert a["epoch"] == b["epoch"] == 5
    _assert_same_state(a["model"], b["model"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert _untimed(RunFolder(run_a).read_metrics()) == _untimed(RunFolder(run_b).read_metrics())


def test_the_best_checkpoint_holds_the_model_without_the_optimizer(tmp_path):
    result = _fit(tiny_run_config("made", epochs=2), tmp_path / "run")
    best = load_checkpoint(RunFolder(tmp_path / "run").best)
    assert "optimizer" not in best and "rng" not in best
    assert best["epoch"] == result.best_epoch
    _assert_same_state(best["model"], result.model.state_dict())


def test_checkpoint_every_must_be_positive():
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1, got 0"):
        tiny_run_config("made", checkpoint_every=0)


def test_an_epoch_reads_the_running_loss_only_every_few_steps(tmp_path, monkeypatch):
    """Each read of a tensor's value is a host sync (a stall on a GPU): an epoch of 144 steps reads
    the running loss ceil(144 / LOSS_READ_EVERY) times and once more at its end, and the loss it
    reports is the mean of its steps' losses."""
    from genzoo.models.autoregressive import FVSBN

    losses = []
    real_loss = FVSBN.loss

    def recording_loss(self, x):
        loss = real_loss(self, x)
        losses.append((loss.detach().clone(), len(x)))
        return loss

    monkeypatch.setattr(FVSBN, "loss", recording_loss)
    reads = {"n": 0}
    real_item = torch.Tensor.item

    def counting_item(self):
        reads["n"] += 1
        return real_item(self)

    trainer = Trainer(tiny_run_config("fvsbn", epochs=1, batch_size=10), tmp_path / "run", progress=False)
    data = genzoo.training.make_training_data(trainer.config.data)
    model = trainer._build_model(data)
    optimizer = genzoo.training.make_optimizer(model, trainer.config)
    train_x = data.train_source.reshape(len(data.train_source), -1)
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    mean = trainer._train_one_epoch(model, optimizer, train_x, torch.Generator().manual_seed(0), epoch=1)
    monkeypatch.undo()

    steps = math.ceil(len(train_x) / 10)
    assert len(losses) == steps == 144
    assert reads["n"] == math.ceil(steps / genzoo.training.LOSS_READ_EVERY) + 1
    expected = sum(float(loss) * n for loss, n in losses) / sum(n for _, n in losses)
    assert mean == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "exponential", "multistep", "constant"])
def test_extending_a_finished_run_trains_its_next_epoch_at_the_new_plans_lr(tmp_path, monkeypatch, schedule):
    """A finished cosine run's optimizer holds lr 0; the first epoch of its extension must train at
    the stretched plan's lr, not at that 0 (and the other schedules keep their lr)."""
    extra = {"exponential": {"lr_decay": 0.5}, "multistep": {"lr_decay": 0.1, "lr_milestones": (1,)}}.get(schedule, {})
    config = tiny_run_config("fvsbn", epochs=2, lr=1e-2, lr_schedule=schedule, **extra)
    run_dir = tmp_path / "run"
    _fit(config, run_dir)
    lrs_at_start = {}
    train_one_epoch = Trainer._train_one_epoch

    def recording(self, model, optimizer, train_x, order, epoch, labels):
        lrs_at_start[epoch] = optimizer.param_groups[0]["lr"]
        return train_one_epoch(self, model, optimizer, train_x, order, epoch, labels)

    monkeypatch.setattr(Trainer, "_train_one_epoch", recording)
    Trainer.resume(run_dir, epochs=4, progress=False).fit()
    expected = {"cosine": 1e-2 * genzoo.training.cosine_factor(2, 4), "exponential": 1e-2 * 0.25,
                "multistep": 1e-3, "constant": 1e-2}[schedule]
    assert lrs_at_start[3] == pytest.approx(expected)
    assert lrs_at_start[3] > 0


def test_a_gpu_runs_checkpoint_carries_its_devices_generator(monkeypatch):
    """On a GPU a VAE's training draws and dropout come from the device's generator: a resume must
    restore it (only the CPU's was saved, so a resumed GPU run replayed epoch 1's draws)."""
    from genzoo.training import random_states, restore_random_states

    device_states = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([7, 8], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: device_states.update({str(device): state}))
    order = torch.Generator().manual_seed(1)
    states = random_states(order, torch.device("cuda:0"))
    assert torch.equal(states["cuda"], torch.tensor([7, 8], dtype=torch.uint8))
    restore_random_states(states, torch.Generator(), torch.device("cuda:0"))
    assert torch.equal(device_states["cuda:0"], states["cuda"])
    assert "cuda" not in random_states(order, torch.device("cpu"))
    device_states.clear()
    restore_random_states(states, torch.Generator(), torch.device("cpu"))
    assert device_states == {}


def test_resume_drops_metrics_the_checkpoint_does_not_hold(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("made", epochs=2), run_dir)
    run = RunFolder(run_dir)
    with open(run.metrics, "a") as f:  # a crash between the metrics write and the checkpoint
        f.write(json.dumps({"epoch": 3, "train_loss": 0.0, "valid_nll": 0.0}) + "\n")
    Trainer.resume(run_dir, epochs=3, progress=False).fit()
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["valid_nll"] > 0


def test_same_seed_same_weights_different_seed_different_weights(tmp_path):
    states = {}
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        _fit(tiny_run_config("made", epochs=1, seed=seed), tmp_path / name)
        states[name] = load_checkpoint(RunFolder(tmp_path / name).last)["model"]
    _assert_same_state(states["a"], states["b"])
    assert any(not torch.equal(states["a"][k], states["c"][k]) for k in states["a"])


def test_an_existing_run_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    before = RunFolder(run_dir).last.read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    assert RunFolder(run_dir).last.read_bytes() == before
    assert len(RunFolder(run_dir).read_metrics()) == 1


def test_early_stopping(tmp_path):
    """With a learning rate far below float32 resolution the weights never change, so validation
    never improves after epoch 1 and patience 2 stops the run after epoch 3."""
    run_dir = tmp_path / "run"
    result = _fit(tiny_run_config("made", epochs=10, lr=1e-30, patience=2), run_dir)
    records = RunFolder(run_dir).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert len({r["valid_nll"] for r in records}) == 1, "the weights changed: the setting is not what the test assumes"
    assert result.epochs_completed == 3
    assert result.best_epoch == 1
    assert result.stopped_because == "no better validation NLL in 2 epochs"
    last = load_checkpoint(RunFolder(run_dir).last)
    assert last["epoch"] == 3 and last["epochs_without_improvement"] == 2
    assert load_checkpoint(RunFolder(run_dir).best)["epoch"] == 1

    # resuming a run that has stopped early does not train further
    again = Trainer.resume(run_dir, epochs=20, progress=False).fit()
    assert again.stopped_because == "no better validation NLL in 2 epochs"
    assert again.epochs_completed == 3
    assert len(RunFolder(run_dir).read_metrics()) == 3


def test_no_early_stopping_without_patience(tmp_path):
    result = _fit(tiny_run_config("made", epochs=4, lr=1e-30, patience=0), tmp_path / "run")
    assert result.epochs_completed == 4 and result.stopped_because == "completed all epochs"


def test_max_seconds_stops_after_the_first_epoch(tmp_path):
    result = _fit(tiny_run_config("fvsbn", epochs=5, max_seconds=1e-9), tmp_path / "run")
    assert result.epochs_completed == 1
    assert result.stopped_because.startswith("reached max_seconds")


def test_eval_every_validates_on_its_schedule_and_at_the_end(tmp_path):
    run_dir = tmp_path / "run"
    result = _fit(tiny_run_config("made", epochs=5, lr=1e-2, eval_every=2), run_dir)
    records = RunFolder(run_dir).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    validated = [r for r in records if "valid_nll" in r]
    assert [r["epoch"] for r in validated] == [2, 4, 5]
    assert set(records[0]) == METRIC_KEYS - {"valid_nll", "valid_bits_per_dim"}
    best = min(validated, key=lambda r: r["valid_nll"])
    assert (result.best_epoch, result.best_valid_nll) == (best["epoch"], best["valid_nll"])
    assert load_checkpoint(RunFolder(run_dir).best)["epoch"] == best["epoch"]
    assert RunFolder(run_dir).loss_curve.exists()


def test_patience_counts_epochs_when_validating_every_few(tmp_path):
    """The weights never change (see test_early_stopping): validation at 2 is the best, 4 and 6
    are not, and patience 4 counts the epochs since, so the run stops after epoch 6."""
    result = _fit(tiny_run_config("made", epochs=20, lr=1e-30, patience=4, eval_every=2), tmp_path / "run")
    assert result.epochs_completed == 6 and result.best_epoch == 2
    assert result.stopped_because == "no better validation NLL in 4 epochs"


def test_a_run_that_runs_out_of_time_in_its_last_epoch_is_complete(tmp_path):
    result = _fit(tiny_run_config("fvsbn", epochs=1, max_seconds=1e-9), tmp_path / "run")
    assert result.epochs_completed == 1 and result.stopped_because == "completed all epochs"


def test_max_seconds_validates_the_epoch_it_stops_at(tmp_path):
    run_dir = tmp_path / "run"
    result = _fit(tiny_run_config("fvsbn", epochs=10, eval_every=5, max_seconds=1e-9), run_dir)
    assert result.epochs_completed == 1 and result.best_epoch == 1
    assert "valid_nll" in RunFolder(run_dir).read_metrics()[0]


def test_resume_with_eval_every_keeps_counting_patience(tmp_path):
    """Stopped after epoch 4 (validated at 2 and 4) and resumed, the run validates at 6 and stops
    there, as the uninterrupted run does: the epochs without improvement carry over."""
    config = dict(lr=1e-30, patience=4, eval_every=2)
    whole = _fit(tiny_run_config("made", epochs=20, **config), tmp_path / "whole")
    _fit(tiny_run_config("made", epochs=4, **config), tmp_path / "part")
    resumed = Trainer.resume(tmp_path / "part", epochs=20, progress=False).fit()
    assert whole.epochs_completed == resumed.epochs_completed == 6
    assert whole.stopped_because == resumed.stopped_because == "no better validation NLL in 4 epochs"
    records = [r for r in RunFolder(tmp_path / "part").read_metrics() if "valid_nll" in r]
    assert [r["epoch"] for r in records] == [2, 4, 6]


@pytest.mark.parametrize(
    "schedule, extra, expected",
    [
        ("constant", {}, [0.01, 0.01, 0.01]),
        ("exponential", {"lr_decay": 0.5}, [0.01, 0.005, 0.0025]),
        ("cosine", {}, [0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in (0, 1, 2)]),
        ("multistep", {"lr_decay": 0.5, "lr_milestones": (1, 3)}, [0.01, 0.005, 0.005]),
    ],
)
def test_learning_rate_schedules(tmp_path, schedule, extra, expected):
    """Each epoch's record holds the lr it trained at (the first epoch: the configured lr)."""
    config = tiny_run_config("fvsbn", epochs=3, lr=0.01, lr_schedule=schedule, batch_size=500, **extra)
    _fit(config, tmp_path / "run")
    lrs = [r["lr"] for r in RunFolder(tmp_path / "run").read_metrics()]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_extending_a_cosine_run_stretches_the_rest_of_its_schedule(tmp_path):
    """A resume with a new epoch total continues the cosine toward the new end (it used to keep
    the old period and swing the lr back up to its starting value)."""
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=2, lr=0.01, lr_schedule="cosine", batch_size=500), run_dir)
    Trainer.resume(run_dir, epochs=4, progress=False).fit()
    lrs = [r["lr"] for r in RunFolder(run_dir).read_metrics()]
    cosine = lambda e, total: 0.01 * (1 + math.cos(math.pi * e / total)) / 2  # noqa: E731
    assert lrs == pytest.approx([cosine(0, 2), cosine(1, 2), cosine(2, 4), cosine(3, 4)], abs=1e-15)
    assert lrs[2] > 0.0 and lrs[3] > 0.0


def test_a_run_keeps_the_history_of_its_epoch_totals(tmp_path):
    """Each resume that changes the epoch total starts a new plan; one that keeps it does not."""
    run_dir = tmp_path / "run"
    assert _fit(tiny_run_config("fvsbn", epochs=2, lr=0.01, lr_schedule="cosine", batch_size=500), run_dir).epoch_plans == [(0, 2)]
    assert Trainer.resume(run_dir, epochs=3, progress=False).fit().epoch_plans == [(0, 2), (2, 3)]
    assert Trainer.resume(run_dir, progress=False).fit().epoch_plans == [(0, 2), (2, 3)]
    assert Trainer.resume(run_dir, epochs=5, progress=False).fit().epoch_plans == [(0, 2), (2, 3), (3, 5)]
    assert load_checkpoint(RunFolder(run_dir).last)["epoch_plans"] == [[0, 2], [2, 3], [3, 5]]


def test_a_checkpoint_without_epoch_plans_resumes_under_its_saved_total(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=2, lr=0.01, batch_size=500), run_dir)
    last = RunFolder(run_dir).last
    payload = load_checkpoint(last)
    del payload["epoch_plans"]
    genzoo.training.save_checkpoint(payload, last)
    assert Trainer.resume(run_dir, epochs=3, progress=False).fit().epoch_plans == [(0, 2), (2, 3)]


def _in_drawn_numbering(tensor: torch.Tensor, rows, columns) -> torch.Tensor:
    """``tensor`` (a weight, a bias or their Adam moments) as saved before MADE sorted its units."""
    drawn = tensor.clone()
    if rows is not None:
        drawn[rows] = tensor
    if columns is not None:
        drawn[:, columns] = drawn.clone()
    return drawn


def test_resuming_an_older_made_checkpoint_relabels_adams_moments_with_the_weights(tmp_path):
    """A checkpoint saved before hidden units were sorted (weights and Adam's moments in the drawn
    numbering) resumes exactly as the same run saved in the sorted numbering does."""
    run_dir = tmp_path / "sorted"
    _fit(tiny_run_config("made", epochs=1, model_hp={"hidden_sizes": [16, 12]}), run_dir)
    model = genzoo.build_model("made", (1, 8, 8), hidden_sizes=[16, 12])
    cfg = model.config
    drawn = made_degrees(model.num_dims, cfg.hidden_sizes, cfg.order_agnostic, seed=cfg.mask_seed * 100_003)
    orders, previous = {}, None
    for i, degrees in enumerate([*drawn[1:], None]):
        rows = torch.argsort(degrees, stable=True) if degrees is not None else None
        orders[f"layers.{i}.weight"], orders[f"layers.{i}.bias"] = (rows, previous), (rows, None)
        previous = rows
    payload = load_checkpoint(RunFolder(run_dir).last)
    legacy = {**payload, "model": dict(payload["model"]), "optimizer": copy.deepcopy(payload["optimizer"])}
    del legacy["model"]["hidden_units_sorted"], legacy["model_sha256"]  # both came later
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    assert all(isinstance(layer, MaskedLinear) for layer in model.layers), "dense layers keep Adam's shapes"
    for name, (rows, columns) in orders.items():
        legacy["model"][name] = _in_drawn_numbering(payload["model"][name], rows, columns)
        moments = legacy["optimizer"]["state"][index[name]]
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key] = _in_drawn_numbering(moments[key], rows, columns)
    resumed = resume_beside(run_dir, legacy, legacy_dir := tmp_path / "legacy")
    for (name, a), b in zip(resumed[run_dir].state_dict().items(), resumed[legacy_dir].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    for a, b in zip(*(_untimed(RunFolder(d).read_metrics()) for d in (run_dir, legacy_dir)), strict=True):
        assert a == pytest.approx(b, rel=1e-5), a["epoch"]


def test_resume_refuses_optimizer_state_of_other_parameters(tmp_path):
    """A run saved while MADE kept every weight (its Adam moments full-sized) cannot resume into the
    row-block layout: a clear error instead of Adam stepping with moments of other shapes."""
    run_dir = tmp_path / "run"
    hp = {"hidden_sizes": [32], "row_blocks_min_weights": 0}
    _fit(tiny_run_config("made", epochs=1, model_hp=hp, lr=0.01), run_dir)
    last = RunFolder(run_dir).last
    payload = load_checkpoint(last)
    dense = genzoo.build_model("made", (64,), hidden_sizes=[32], row_blocks=0)
    optimizer = torch.optim.Adam(dense.parameters(), lr=0.01)
    dense.loss(torch.ones(2, 64)).backward()
    optimizer.step()
    good = payload["optimizer"]
    payload["optimizer"] = optimizer.state_dict()
    genzoo.training.save_checkpoint(payload, last)
    with pytest.raises(ValueError, match=r"optimizer state does not fit this model \(it has 4 parameters, the model 18\)"):
        Trainer.resume(run_dir, epochs=2, progress=False).fit()
    good["state"][0]["exp_avg"] = torch.zeros(3, 3)
    payload["optimizer"] = good
    genzoo.training.save_checkpoint(payload, last)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(32,\), its saved state \(3, 3\)"):
        Trainer.resume(run_dir, epochs=2, progress=False).fit()


def test_a_checkpoint_from_the_old_cosine_scheduler_resumes(tmp_path):
    """Runs saved while the cosine schedule was a CosineAnnealingLR still resume."""
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=2, lr=0.01, lr_schedule="cosine", batch_size=500), run_dir)
    last = RunFolder(run_dir).last
    payload = load_checkpoint(last)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    for _ in range(2):
        optimizer.step()  # (no gradients: a no-op that keeps the scheduler from warning)
        old.step()
    payload["scheduler"] = old.state_dict()
    genzoo.training.save_checkpoint(payload, last)
    Trainer.resume(run_dir, epochs=4, progress=False).fit()
    lrs = [r["lr"] for r in RunFolder(run_dir).read_metrics()]
    assert lrs[2:] == pytest.approx([0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (2, 3)], abs=1e-15)


def test_binary_model_on_8bit_data_needs_binarization(tmp_path):
    data = tmp_path / "gray.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (40, 8, 8)).astype(np.uint8))
    run_dir = tmp_path / "run"
    with pytest.raises(DataError) as info:
        _fit(tiny_run_config("made", epochs=1, data=str(data)), run_dir)
    message = str(info.value)
    assert "binarization" in message and "8-bit" in message and "\n" not in message
    assert not RunFolder(run_dir).last.exists()

    result = _fit(tiny_run_config("made", epochs=1, data=str(data), binarization="dynamic"), run_dir)
    assert result.epochs_completed == 1
    assert load_checkpoint(RunFolder(run_dir).last)["data_shape"] == [1, 8, 8]


def test_a_non_finite_loss_stops_training(tmp_path, monkeypatch):
    from genzoo.models.autoregressive import FVSBN

    monkeypatch.setattr(FVSBN, "loss", lambda self, x: self.linear.bias.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 1"):
        _fit(tiny_run_config("fvsbn", epochs=2), tmp_path / "run")
    assert not RunFolder(tmp_path / "run").last.exists()


def test_the_trainer_checks_its_training_values_before_its_steps(tmp_path, monkeypatch):
    """Steps skip the per-batch value checks, so the trainer checks its training data at once."""
    real = genzoo.training.make_training_data

    def data_with_a_bad_value(*args, **kwargs):
        data = real(*args, **kwargs)
        data.train_source = data.train_source.clone()
        data.train_source[7, 0, 2, 3] = 0.5
        return data

    monkeypatch.setattr(genzoo.training, "make_training_data", data_with_a_bad_value)
    with pytest.raises(ValueError, match=r"input row 7 has value 0.5 at dimension 19"):
        _fit(tiny_run_config("made", epochs=1), tmp_path / "run")


def test_config_without_a_model_name(tmp_path):
    config = tiny_run_config("made")
    config.model.pop("name")
    with pytest.raises(ValueError, match="names no model"):
        Trainer(config, tmp_path / "run")


def test_unknown_hyperparameter_fails_before_the_run_folder_is_made(tmp_path):
    config = tiny_run_config("made", model_hp={"hidden_sizes": [8], "dropout": 0.1})
    with pytest.raises(ValueError, match="unknown key 'dropout'"):
        _fit(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_with_a_new_total_records_it(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    Trainer.resume(run_dir, epochs=2, progress=False).fit()
    assert load_run_config(RunFolder(run_dir).config).train.epochs == 2
    # a later plain resume keeps the new total: nothing is left to do
    result = Trainer.resume(run_dir, progress=False).fit()
    assert result.epochs_completed == 2
    assert [r["epoch"] for r in RunFolder(run_dir).read_metrics()] == [1, 2]
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        Trainer.resume(run_dir, epochs=0)


def test_run_folder_discard(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    (run_dir / "eval_test.json").write_text("{}")
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "samples.png").write_text("the old model's samples")
    (run_dir / "samples.npy").write_text("the old model's samples")
    (run_dir / "my_grid.png").write_text("a name the user chose")
    (run_dir / "checkpoints" / "last.ptq1w2e3.tmp").write_text("half a write")
    RunFolder(run_dir).discard()
    left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock")
    assert left == ["my_grid.png", "notes.txt"]
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)  # no FileExistsError after a discard


def test_overwrite_never_deletes_the_runs_own_data_file(tmp_path):
    """A data file named like a run's output (samples.npy) in the run folder used to be deleted by
    --overwrite, so the run could then never be evaluated or resumed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = run_dir / "samples.npy"
    np.save(data, genzoo.load_dataset("digits", "train")[:200].numpy())
    config = tiny_run_config("fvsbn", epochs=1, data=str(data))
    _fit(config, run_dir)
    _fit(config, run_dir, overwrite=True)
    assert data.is_file()


def test_a_new_run_refuses_a_folder_with_files_it_would_replace(tmp_path):
    """A folder without last.pt (a run stopped before its first checkpoint, or the user's own
    config.toml) was taken as free: its config.toml replaced, its metrics deleted, its best.pt kept
    beside the new run's config."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text("[tool]\nimportant = 1\n")
    with pytest.raises(FileExistsError, match="holds config.toml of an earlier run .* --overwrite"):
        _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    assert (run_dir / "config.toml").read_text() == "[tool]\nimportant = 1\n"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir, overwrite=True)


def test_resume_removes_half_written_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    partial = [run_dir / "checkpoints" / name for name in ("last.ptx8a1.tmp", "best.pt_k2z.tmp")]
    for path in partial:
        path.write_bytes(b"killed mid-write")
    Trainer.resume(run_dir, epochs=2, progress=False).fit()
    assert not any(path.exists() for path in partial)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("new_width, message", [
    (17, "trained on data of shape 16, but .* now gives 17"),
    (16, "is not the data the run was trained on"),
], ids=["other-shape", "same-shape"])
def test_resume_on_a_replaced_data_file_is_refused(tmp_path, new_width, message):
    data = tmp_path / "data.npy"
    rng = np.random.default_rng(0)
    np.save(data, (rng.random((60, 16)) < 0.3).astype(np.float32))
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1, data=str(data)), run_dir)
    assert len(load_checkpoint(RunFolder(run_dir).last)["data_sha256"]) == 64
    np.save(data, (rng.random((60, new_width)) < 0.3).astype(np.float32))  # the user's file replaced
    before = RunFolder(run_dir).last.read_bytes()
    with pytest.raises(DataError, match=message):
        Trainer.resume(run_dir, epochs=2, progress=False).fit()
    assert RunFolder(run_dir).last.read_bytes() == before


def test_a_checkpoint_without_a_data_fingerprint_still_resumes(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    last = RunFolder(run_dir).last
    payload = load_checkpoint(last)
    del payload["data_sha256"]  # as written before the fingerprint was kept
    torch.save(payload, last)
    assert Trainer.resume(run_dir, epochs=2, progress=False).fit().epochs_completed == 2


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer.resume(tmp_path / "nothing-here")


def test_resume_without_the_config(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    RunFolder(run_dir).config.unlink()
    with pytest.raises(CheckpointError, match="config.toml is missing"):
        Trainer.resume(run_dir)


def test_run_folder_checkpoint_names(tmp_path):
    run = RunFolder(tmp_path)
    assert run.checkpoint() == run.best and run.checkpoint("last") == run.last
    with pytest.raises(ValueError, match="unknown checkpoint 'first'"):
        run.checkpoint("first")
    assert run.read_metrics() == []


def test_keep_freed_cpu_memory_is_idempotent_and_harmless():
    import platform

    from genzoo.devices import keep_freed_cpu_memory

    first = keep_freed_cpu_memory()
    assert first == (platform.libc_ver()[0] == "glibc")  # applied exactly where glibc's mallopt exists
    assert keep_freed_cpu_memory() == first
    x = torch.randn(3000, 3000)  # a 36 MB block, above glibc's default mmap threshold
    del x
    assert torch.ones(3000, 3000).sum().item() == 9_000_000


def test_trainer_flushes_subnormal_floats_on_the_cpu(tmp_path):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal, 1.2e-38
    assert (tiny * 1.0).item() != 0  # kept (slowly) by default
    Trainer(tiny_run_config(), tmp_path / "run", progress=False)
    assert (tiny * 1.0).item() == 0


def test_trainer_calls_the_epoch_hook_and_validates_with_the_cheaper_score(tmp_path, monkeypatch):
    """The trainer announces every epoch (also after a resume) and scores validation with
    ``validation_log_prob``, recording its detail in the metrics."""
    from genzoo.models.autoregressive.made import MADE

    seen, validated = [], []
    monkeypatch.setattr(MADE, "on_epoch_start", lambda self, epoch, epochs: seen.append((epoch, epochs)))

    def cheap(self, x):
        validated.append(len(x))
        return self.log_prob(x) - 1.0  # visibly different from log_prob

    monkeypatch.setattr(MADE, "validation_log_prob", cheap)
    monkeypatch.setattr(MADE, "validation_detail", property(lambda self: "a cheaper estimate"))
    result = Trainer(tiny_run_config(epochs=2), tmp_path / "run", progress=False).fit()
    assert seen == [(1, 2), (2, 2)]
    assert validated and sum(validated) == 2 * 180  # the digits valid split, once per epoch
    records = RunFolder(tmp_path / "run").read_metrics()
    assert all(r["valid_likelihood"] == "a cheaper estimate" for r in records)
    assert result.best_valid_nll == pytest.approx(min(r["valid_nll"] for r in records))
    Trainer.resume(tmp_path / "run", progress=False, epochs=3).fit()
    assert seen[-1] == (3, 3)


# -- L1 penalty --------------------------------------------------------------------------------------


def test_weight_l1_norm_counts_weights_not_biases_nor_masked_entries():
    fvsbn = genzoo.build_model("fvsbn", 6)
    torch.nn.init.normal_(fvsbn.linear.weight)
    torch.nn.init.normal_(fvsbn.linear.bias)
    expected = (fvsbn.linear.weight * torch.ones(6, 6).tril(-1)).abs().sum()
    assert torch.allclose(weight_l1_norm(fvsbn), expected)
    assert weight_l1_norm(fvsbn) < fvsbn.linear.weight.abs().sum()  # the masked entries are left out

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Conv2d(1, 2, 3), torch.nn.LayerNorm(2))
    expected = net[0].weight.abs().sum() + net[2].weight.abs().sum()
    assert torch.allclose(weight_l1_norm(net), expected)


def test_l1_penalty_makes_weights_sparse(tmp_path):
    def weights(l1: float) -> torch.Tensor:
        config = tiny_run_config("fvsbn", epochs=3, lr=1e-2, l1_penalty=l1)
        model = _fit(config, tmp_path / f"l1-{l1}").model
        return model.linear.masked_weight()[model.linear.mask.bool()]

    plain, penalized = weights(0.0), weights(3e-2)
    assert penalized.abs().sum() < 0.5 * plain.abs().sum()
    assert (penalized.abs() < 1e-2).float().mean() > (plain.abs() < 1e-2).float().mean() + 0.2


def test_adam_eps_reaches_the_optimizer():
    model = genzoo.build_model("fvsbn", 4)
    default = genzoo.training.make_optimizer(model, tiny_run_config("fvsbn"))
    burda = genzoo.training.make_optimizer(model, tiny_run_config("fvsbn", adam_eps=1e-4))
    assert default.param_groups[0]["eps"] == 1e-8
    assert burda.param_groups[0]["eps"] == 1e-4


# -- fitting the planned epochs to the time budget -------------------------------------------------


def test_fitting_shortens_the_plan_so_the_cosine_schedule_ends_in_time(tmp_path, monkeypatch):
    one_second_epochs(monkeypatch)
    config = tiny_run_config("fvsbn", epochs=20, lr=0.01, lr_schedule="cosine", max_seconds=5.5,
                             fit_epochs_to_max_seconds=True)
    result = _fit(config, tmp_path / "run")
    # after epoch 1 (1 s), 4.5 s are left: 4 more epochs fit, so the plan becomes 5
    assert result.epochs_completed == 5 and result.fitted_from_epochs == 20
    assert result.epoch_plans == [(0, 20), (1, 5)]
    assert result.stopped_because == "completed all epochs, fitted to max_seconds = 5.5: 5 of the 20 planned"
    lrs = [r["lr"] for r in RunFolder(tmp_path / "run").read_metrics()]
    # each epoch's record holds the lr it trained at: epoch 1 the full lr, then the 5-epoch cosine,
    # whose last epoch trains at its last step before zero
    assert lrs == pytest.approx([0.01 * genzoo.training.cosine_factor(e, 5) for e in range(0, 5)], abs=1e-12)
    assert lrs[0] == 0.01 and lrs[-1] > 0
    assert load_run_config(tmp_path / "run" / "config.toml").train.epochs == 5  # a resume keeps the plan
    assert Trainer.resume(tmp_path / "run", progress=False).fit().epochs_completed == 5


def test_a_larger_budget_on_resume_is_fitted_from_the_plan_before_fitting(tmp_path, monkeypatch):
    """config.toml keeps the fitted plan (5 of 20); a resume with a larger --max-seconds and no
    --epochs used to train nothing ("completed all epochs"). It fits the new budget from the 20."""
    one_second_epochs(monkeypatch)
    config = tiny_run_config("fvsbn", epochs=20, lr=0.01, lr_schedule="cosine", max_seconds=5.5,
                             fit_epochs_to_max_seconds=True)
    _fit(config, tmp_path / "run")
    result = Trainer.resume(tmp_path / "run", progress=False, max_seconds=9.5).fit()
    # after epoch 6 (6 s), 3.5 s are left: 3 more epochs fit, so the plan becomes 9
    assert result.epochs_completed == 9 and result.epoch_plans[-1] == (6, 9)
    assert load_run_config(tmp_path / "run" / "config.toml").train.epochs == 9
    # an explicit --epochs is still the user's
    assert Trainer.resume(tmp_path / "run", progress=False, max_seconds=20, epochs=9).fit().epochs_completed == 9


def test_without_fitting_the_budget_cuts_the_schedule_part_way(tmp_path, monkeypatch):
    one_second_epochs(monkeypatch)
    config = tiny_run_config("fvsbn", epochs=20, lr=0.01, lr_schedule="cosine", max_seconds=5.5)
    result = _fit(config, tmp_path / "run")
    assert result.epochs_completed == 6 and result.stopped_because == "reached max_seconds = 5.5"
    assert result.fitted_from_epochs is None and result.epoch_plans == [(0, 20)]
    assert RunFolder(tmp_path / "run").read_metrics()[-1]["lr"] > 0.0075  # 79% of the start: cut off mid-fall


def test_fitted_epochs_stays_between_the_epochs_done_and_the_plan():
    from genzoo.training import fitted_epochs

    config = TrainConfig(epochs=20, max_seconds=5.5, fit_epochs_to_max_seconds=True)
    assert fitted_epochs(1, 1.0, config) == 5
    assert fitted_epochs(3, 0.3, config) == 20  # fast epochs: the plan, never more
    assert fitted_epochs(3, 2.0, config) == 8  # 3.5 s left at 2/3 s an epoch: 5 more
    assert fitted_epochs(3, 9.0, config) == 3  # already over budget: end now


def test_fitting_needs_a_time_budget():
    with pytest.raises(ConfigError, match="fit_epochs_to_max_seconds needs a time budget"):
        TrainConfig(fit_epochs_to_max_seconds=True)


def test_a_run_folder_in_use_is_refused_and_a_failed_new_run_leaves_no_folder(tmp_path, capsys):
    """Two trainers on one folder used to interleave their metrics and overwrite each other's
    checkpoints, both exiting 0."""
    from genzoo.cli import main
    from genzoo.training import RunInUseError, run_folder_lock

    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    with run_folder_lock(run_dir):  # another process's training, as far as the lock goes
        with pytest.raises(RunInUseError, match="in use by another genzoo train"):
            Trainer.resume(run_dir, epochs=2, progress=False).fit()
        assert main(["train", "fvsbn", "--out", str(run_dir), "--resume", "--epochs", "2"]) == 2
        assert "in use by another genzoo train" in capsys.readouterr().err
    assert Trainer.resume(run_dir, epochs=2, progress=False).fit().epochs_completed == 2
    missing = tmp_path / "never"
    with pytest.raises(DataError):
        _fit(tiny_run_config("fvsbn", epochs=1, data=str(tmp_path / "no-such-file.npy")), missing)
    assert not missing.exists()


def test_a_metrics_line_cut_short_is_dropped_and_a_corrupt_one_is_named(tmp_path):
    """A full disk during the metrics append left a line without its newline, after which every
    resume failed with "Expecting ',' delimiter" naming no file."""
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=2), run_dir)
    run = RunFolder(run_dir)
    with open(run.metrics, "a") as f:
        f.write('{"epoch": 3, "train_loss": 1')
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    Trainer.resume(run_dir, epochs=3, progress=False).fit()
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    lines = run.metrics.read_text().splitlines()
    run.metrics.write_text("\n".join([lines[0], '{"epoch": 2, "train', lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON record"):
        run.read_metrics()


def test_a_resume_refuses_a_config_toml_that_differs_from_the_checkpoints(tmp_path):
    """A config.toml cut short (read with defaults) or edited by hand used to change the resumed run
    silently: here its batch size and learning rate."""
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1, lr=0.01, batch_size=50), run_dir)
    config = RunFolder(run_dir).config
    config.write_text(config.read_text().split("[train]")[0])  # the [train] table lost
    with pytest.raises(CheckpointError, match=r"says train\.batch_size = 100, but .*last\.pt was trained with 50"):
        Trainer.resume(run_dir, epochs=2, progress=False)


def test_a_nan_validation_stops_the_run_before_anything_of_its_epoch_is_written(tmp_path, monkeypatch):
    """A NaN validation NLL used to be accepted: a NaN token in metrics.jsonl, last.pt overwritten
    with a model that scores NaN, and an error about a missing best.pt at the end."""
    _scripted_validation(monkeypatch, [5.0, math.nan])
    run_dir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"validation NLL became nan at epoch 2 .*lower the learning rate"):
        _fit(tiny_run_config("fvsbn", epochs=3), run_dir)
    run = RunFolder(run_dir)
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    assert load_checkpoint(run.last)["epoch"] == 1 and load_checkpoint(run.best)["epoch"] == 1


def test_patience_counts_from_the_last_validation_across_a_resume(tmp_path, monkeypatch):
    """eval_every = 2 and a time budget that ends at epoch 5 (validated off the schedule): the
    resumed run counted epoch 5 twice and stopped at epoch 6, two epochs after its best, with
    patience 3."""
    one_second_epochs(monkeypatch)
    nlls = [9.0, 8.0, 8.5, 8.6, 8.7, 8.8]  # validations at epochs 2, 4, 5 (budget), then 6, 8, ...
    config = dict(epochs=12, eval_every=2, patience=3)
    _scripted_validation(monkeypatch, nlls[:3])
    _fit(tiny_run_config("fvsbn", max_seconds=5, **config), tmp_path / "run")
    monkeypatch.undo()
    one_second_epochs(monkeypatch)
    _scripted_validation(monkeypatch, nlls[3:])
    result = Trainer.resume(tmp_path / "run", progress=False, max_seconds=1000).fit()
    # best at epoch 4; the epochs without a better one are counted once each: 5, then 6 (2 in
    # all), then 7 and 8 (4): the run stops at 8, as an uninterrupted one validating at 5 would
    assert result.best_epoch == 4 and result.epochs_completed == 8


def test_the_l1_penalty_covers_nades_weights(tmp_path):
    """NADE's W and V are bare parameters: the L1 norm counted none of them, so l1_penalty did
    nothing for NADE."""
    from genzoo.training import weight_l1_norm

    model = genzoo.build_model("nade", (6,), hidden_size=4, backend="torch")
    assert weight_l1_norm(model).item() == pytest.approx((model.W.abs().sum() + model.V.abs().sum()).item())
    runs = [_fit(tiny_run_config("nade", epochs=1, model_hp={"hidden_size": 8, "backend": "torch"}, l1_penalty=penalty),
                 tmp_path / str(penalty)).model for penalty in (0.0, 0.1)]
    assert not torch.allclose(runs[0].W, runs[1].W)


def test_gradient_clipping_bounds_the_norm_adam_steps_with(tmp_path, monkeypatch):
    """The gradient's global norm when Adam steps is at most grad_clip (no other test could tell a
    trainer that never clipped)."""
    norms = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    _fit(tiny_run_config("fvsbn", epochs=1, grad_clip=0.01), tmp_path / "clipped")
    assert norms and max(norms) <= 0.01 * (1 + 1e-5)
    norms.clear()
    _fit(tiny_run_config("fvsbn", epochs=1), tmp_path / "free")
    assert max(norms) > 0.01


def test_a_plan_cut_with_epochs_is_not_brought_back_by_a_larger_budget(tmp_path, monkeypatch):
    """Only a plan a time fit shortened is refitted from the one before it: --epochs 2 after a
    5-epoch plan is the user's, and a later --max-seconds alone used to restore the 5."""
    one_second_epochs(monkeypatch)
    config = tiny_run_config("fvsbn", epochs=5, max_seconds=1000, fit_epochs_to_max_seconds=True)
    _crash_at_validation(monkeypatch, 2)
    with pytest.raises(_Crash):
        _fit(config, tmp_path / "run")
    monkeypatch.undo()
    assert Trainer.resume(tmp_path / "run", progress=False, epochs=2).fit().epochs_completed == 2
    assert Trainer.resume(tmp_path / "run", progress=False, max_seconds=2000).fit().epochs_completed == 2


def test_a_run_given_tuples_in_python_resumes(tmp_path):
    """config.toml reads a tuple back as a list: (32,) against [32] refused every resume of a run
    configured in Python with a tuple."""
    config = tiny_run_config("made", epochs=1, model_hp={"hidden_sizes": (16,)})
    _fit(config, tmp_path / "run")
    assert Trainer.resume(tmp_path / "run", epochs=2, progress=False).fit().epochs_completed == 2


def test_a_refused_resume_leaves_the_training_runs_config_alone(tmp_path):
    from genzoo.training import RunInUseError, run_folder_lock

    _fit(tiny_run_config("fvsbn", epochs=1), tmp_path / "run")
    before = RunFolder(tmp_path / "run").config.read_text()
    with run_folder_lock(tmp_path / "run"):
        with pytest.raises(RunInUseError):
            Trainer.resume(tmp_path / "run", epochs=7, progress=False)
    assert RunFolder(tmp_path / "run").config.read_text() == before


def test_a_file_system_without_locks_still_trains(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert _fit(tiny_run_config("fvsbn", epochs=1), tmp_path / "run").epochs_completed == 1


def test_a_nan_at_the_first_validation_says_nothing_was_saved(tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [math.nan])
    with pytest.raises(FloatingPointError, match="no epoch was saved: start the run again with --overwrite"):
        _fit(tiny_run_config("fvsbn", epochs=2), tmp_path / "run")


def test_the_loss_curve_takes_its_format_from_the_file_name(tmp_path):
    from genzoo.images import save_loss_curve

    records = [{"epoch": 1, "train_loss": 2.0, "valid_nll": 2.1}, {"epoch": 2, "train_loss": 1.5, "valid_nll": 1.7}]
    assert save_loss_curve(records, tmp_path / "curve.pdf").read_bytes().startswith(b"%PDF")
    assert save_loss_curve(records, tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")


def test_a_checkpoint_from_before_fitted_from_epochs_still_refits_a_larger_budget(tmp_path, monkeypatch):
    one_second_epochs(monkeypatch)
    config = tiny_run_config("fvsbn", epochs=20, lr=0.01, lr_schedule="cosine", max_seconds=5.5,
                             fit_epochs_to_max_seconds=True)
    _fit(config, tmp_path / "run")
    last = RunFolder(tmp_path / "run").last
    payload = load_checkpoint(last)
    del payload["fitted_from_epochs"]
    genzoo.training.save_checkpoint(payload, last)
    assert Trainer.resume(tmp_path / "run", progress=False, max_seconds=9.5).fit().epochs_completed == 9


def test_the_loss_curve_of_an_unknown_suffix_is_a_png(tmp_path):
    from genzoo.images import save_loss_curve

    records = [{"epoch": 1, "train_loss": 2.0, "valid_nll": 2.1}]
    assert save_loss_curve(records, tmp_path / "curve.v2").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("optimizer_state", [
    {"state": [], "param_groups": "x"},
    {"state": {}, "param_groups": [1]},
    {"state": {0: 5}, "param_groups": [{"params": [0, 1]}]},
    {"state": {}, "param_groups": [{"lr": 0.1}]},
], ids=["state-not-a-dict", "group-not-a-dict", "moments-not-a-dict", "group-without-params"])
def test_resume_refuses_an_optimizer_state_of_another_structure(tmp_path, optimizer_state):
    """A checkpoint whose optimizer entry is not a torch optimizer's state dict is corrupt: a clear
    error naming the file, not a TypeError from inside the loading."""
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1), run_dir)
    last = RunFolder(run_dir).last
    payload = load_checkpoint(last)
    payload["optimizer"] = optimizer_state
    genzoo.training.save_checkpoint(payload, last)
    with pytest.raises(CheckpointError, match=r"last\.pt: the checkpoint's optimizer state is not a torch optimizer's"):
        Trainer.resume(run_dir, epochs=2, progress=False).fit()


class _MinuteClock:
    """A stand-in for the trainer's ``time`` module whose clock moves one minute at each reading."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 60.0
        return self.now


@pytest.mark.parametrize("minutes, expected", [(0.0, [1, 4, 5]), (2.5, [1, 2, 3, 4, 5]), (4.5, [1, 3, 4, 5])])
def test_checkpoint_every_minutes_writes_last_once_the_minutes_have_passed(tmp_path, monkeypatch, minutes, expected):
    """Each reading of the fake clock is one minute: an epoch reads it twice (its start and end)
    and the checkpoint check once, and a write sets the time of the last write. With 2.5 minutes,
    the check after each epoch finds at least 3 minutes since the last write; with 4.5 only every
    other epoch does; with 0 only checkpoint_every (4), the best (epoch 1) and the end write."""
    written = last_checkpoint_epochs(monkeypatch)
    _scripted_validation(monkeypatch, [5.0] + [6.0] * 9)  # one best, at epoch 1
    monkeypatch.setattr(genzoo.training, "time", _MinuteClock())
    _fit(tiny_run_config("fvsbn", epochs=5, checkpoint_every=4, checkpoint_every_minutes=minutes), tmp_path / "run")
    assert written == expected


@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_checkpoint_every_minutes_must_be_a_non_negative_finite_number(value):
    with pytest.raises(ValueError, match="checkpoint_every_minutes must be a non-negative finite number"):
        tiny_run_config("fvsbn", checkpoint_every_minutes=value)
