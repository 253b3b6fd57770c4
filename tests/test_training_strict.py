"""The trainer's logic pinned down where mutation testing found the other tests blind: the
cosine schedule past its plan, resume refusing every edited key, the legacy fitted-plan lookup,
a resume of a model whose training draws from torch's generator, and the L1 norm's frozen weights."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import genzoo
import genzoo.training
from conftest import last_checkpoint_epochs, one_second_epochs, tiny_run_config
from genzoo.checkpoint import CheckpointError, load_checkpoint
from genzoo.config import dump_toml, load_run_config
from genzoo.training import RunFolder, Trainer, cosine_factor, plan_before_fitting, weight_l1_norm


def _fit(config, run_dir, **kwargs):
    return Trainer(config, run_dir, progress=False, **kwargs).fit()


# -- the cosine schedule ---------------------------------------------------------------------------


def test_cosine_factor_follows_the_half_cosine_and_stays_at_zero_past_its_plan():
    """(1 + cos(π t / T)) / 2 from 1 at t = 0 to 0 at t = T; past T (an epoch count beyond the
    plan) it must stay 0, not climb back up the cosine's next half."""
    for total in (1, 3, 7):
        for epoch in range(total + 1):
            assert cosine_factor(epoch, total) == pytest.approx((1 + math.cos(math.pi * epoch / total)) / 2, abs=1e-15)
        assert cosine_factor(0, total) == 1.0
        assert cosine_factor(total, total) == pytest.approx(0.0, abs=1e-15)
        for beyond in (total + 1, 2 * total, 3 * total + 1):
            assert cosine_factor(beyond, total) == pytest.approx(0.0, abs=1e-15)


# -- resume refuses a config.toml that differs from last.pt's ---------------------------------------


@pytest.mark.parametrize("table, key, value", [
    ("train", "patience", 7),
    ("train", "seed", 11),
    ("train", "lr_schedule", "cosine"),
    ("train", "grad_clip", 1.5),
    ("data", "eval_binarization_seed", 99),
    ("model", "order", "subgrid-spiral"),
])
def test_a_resume_refuses_an_edit_of_any_key_but_epochs_and_max_seconds(tmp_path, table, key, value):
    """Every key of every table is compared (not only [train]'s batch size and lr): a hand edit of
    any of them would change the resumed run silently."""
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1, batch_size=500), run_dir)
    run = RunFolder(run_dir)
    raw = load_run_config(run.config).to_dict()
    assert raw[table].get(key) != value, "the edit changes nothing: the test is vacuous"
    raw[table][key] = value
    run.config.write_text(dump_toml(raw))
    with pytest.raises(CheckpointError, match=rf"says {table}\.{key} = .*but .*last\.pt was trained with"):
        Trainer.resume(run_dir, epochs=2, progress=False)


def test_a_resume_accepts_a_config_toml_with_another_epoch_total_and_time_budget(tmp_path):
    run_dir = tmp_path / "run"
    _fit(tiny_run_config("fvsbn", epochs=1, batch_size=500), run_dir)
    run = RunFolder(run_dir)
    raw = load_run_config(run.config).to_dict()
    raw["train"].update(epochs=2, max_seconds=1000.0)
    run.config.write_text(dump_toml(raw))
    assert Trainer.resume(run_dir, progress=False).fit().epochs_completed == 2


# -- the plan before a time fit, for checkpoints that do not record it ----------------------------


def test_plan_before_fitting_is_the_total_right_before_a_shortened_last_plan():
    assert plan_before_fitting([(0, 20), (1, 5)]) == 20
    # a run extended from 20 to 30, then fitted to 6: the plan it shortened is the 30, not the first
    assert plan_before_fitting([(0, 20), (2, 30), (3, 6)]) == 30
    assert plan_before_fitting([[0, 20], [2, 30], [3, 6]]) == 30  # as a checkpoint stores them
    assert plan_before_fitting([(0, 5), (2, 8)]) is None  # lengthened: nothing was fitted
    assert plan_before_fitting([(0, 20), (1, 5), (7, 9)]) is None  # the last plan is longer
    assert plan_before_fitting([(0, 5)]) is None
    assert plan_before_fitting(None) is None and plan_before_fitting([]) is None


# -- resume restores torch's own generator ----------------------------------------------------------


def test_resume_of_a_vae_repeats_its_training_draws(tmp_path):
    """A VAE's reparameterized draws come from torch's global generator, which a resume restores:
    without it the resumed epochs draw other noise and end on other weights (the MADE and NADE
    resume tests draw nothing, so they cannot tell)."""
    common = dict(model_hp={"hidden_sizes": [8], "latent_sizes": [3], "eval_samples": 4, "eval_chunk": 4,
                            "valid_samples": 2}, batch_size=200, lr=1e-2)
    _fit(tiny_run_config("vae", epochs=2, **common), tmp_path / "a")
    _fit(tiny_run_config("vae", epochs=1, **common), tmp_path / "b")
    # something between the two sessions draws from torch's generator (another model, a test)
    torch.manual_seed(12345)
    torch.randn(100)
    Trainer.resume(tmp_path / "b", epochs=2, progress=False).fit()
    a, b = (load_checkpoint(RunFolder(tmp_path / name).last) for name in "ab")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"{key} differs"
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


# -- the L1 norm skips frozen weights ----------------------------------------------------------------


def test_weight_l1_norm_leaves_out_frozen_linear_conv_masked_and_bare_weights():
    """Frozen weights (requires_grad off, e.g. a VQ-VAE's autoencoder while its prior trains) are
    not penalized, whichever way a module holds them."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Conv2d(1, 2, 3))
    both = net[0].weight.abs().sum() + net[1].weight.abs().sum()
    assert weight_l1_norm(net).item() == pytest.approx(both.item())
    net[1].requires_grad_(False)
    assert weight_l1_norm(net).item() == pytest.approx(net[0].weight.abs().sum().item())
    net[0].requires_grad_(False)
    net.add_module("free", torch.nn.Linear(2, 2))  # the norm needs one live parameter to sit beside
    assert weight_l1_norm(net).item() == pytest.approx(net.free.weight.abs().sum().item())

    fvsbn = genzoo.build_model("fvsbn", 6)
    torch.nn.init.normal_(fvsbn.linear.weight)
    masked = (fvsbn.linear.weight * torch.ones(6, 6).tril(-1)).abs().sum()
    assert weight_l1_norm(fvsbn).item() == pytest.approx(masked.item())
    fvsbn.linear.requires_grad_(False)
    holder = torch.nn.ModuleDict({"fvsbn": fvsbn, "free": torch.nn.Linear(2, 2)})
    assert weight_l1_norm(holder).item() == pytest.approx(holder["free"].weight.abs().sum().item())

    nade = genzoo.build_model("nade", (6,), hidden_size=4, backend="torch")
    bare = (nade.W.abs().sum() + nade.V.abs().sum()).item()
    assert weight_l1_norm(nade).item() == pytest.approx(bare)
    nade.W.requires_grad_(False)
    assert weight_l1_norm(nade).item() == pytest.approx(nade.V.abs().sum().item())
    nade.V.requires_grad_(False)
    assert weight_l1_norm(nade).item() == 0.0


# -- fitting the plan to the time budget ---------------------------------------------------------


def test_a_fitted_plan_never_outlasts_the_budget_at_the_mean_epoch_time():
    """The epochs a fit adds are those that fit whole in the time left (rounded down): 4.8 s left
    at 1 s an epoch is 4 more epochs, not 5, which would run past max_seconds."""
    from genzoo.config import TrainConfig
    from genzoo.training import fitted_epochs

    for budget in (5.5, 5.8, 5.99, 7.0, 12.3):
        config = TrainConfig(epochs=50, max_seconds=budget, fit_epochs_to_max_seconds=True)
        for done, seconds in ((1, 1.0), (2, 2.5), (3, 1.7), (4, 4.2)):
            per_epoch = seconds / done
            expected = min(50, max(done, done + math.floor((budget - seconds) / per_epoch)))
            fitted = fitted_epochs(done, seconds, config)
            assert fitted == expected, (budget, done, seconds)
            assert fitted == done or fitted * per_epoch <= budget + 1e-9


def test_previous_validation_epoch_is_the_last_scheduled_validation_before_an_epoch():
    """For checkpoints without last_validated_epoch: the largest multiple of eval_every below the
    epoch (0 before the first), never the epoch itself or one after the checkpoint."""
    from genzoo.config import TrainConfig
    from genzoo.training import previous_validation_epoch

    for every in (1, 2, 3, 5):
        config = TrainConfig(epochs=30, eval_every=every)
        for epoch in range(1, 25):
            expected = max([0] + [k for k in range(1, epoch) if k % every == 0])
            assert previous_validation_epoch(epoch, config) == expected, (every, epoch)


def test_a_larger_budget_refits_from_the_plan_before_fitting_only_when_that_plan_is_longer(tmp_path, monkeypatch):
    """A run fitted to 3 of 8 epochs whose config.toml was then given 12 (an edit a resume allows):
    a resume with a larger budget fits from the 12 the user set, not from the 8 before the fit."""
    one_second_epochs(monkeypatch)
    config = tiny_run_config("fvsbn", epochs=8, batch_size=500, max_seconds=3.5, fit_epochs_to_max_seconds=True)
    run_dir = tmp_path / "run"
    first = _fit(config, run_dir)
    assert first.epochs_completed == 3 and first.fitted_from_epochs == 8
    run = RunFolder(run_dir)
    raw = load_run_config(run.config).to_dict()
    raw["train"]["epochs"] = 12
    run.config.write_text(dump_toml(raw))
    # after epoch 4 (4 s), 6 s are left: 6 more epochs fit in the 12-epoch plan
    result = Trainer.resume(run_dir, progress=False, max_seconds=10).fit()
    assert result.epochs_completed == 10 and result.fitted_from_epochs == 12


# -- what last.pt holds when a run stops --------------------------------------------------------------


def _scripted_validation(monkeypatch, nlls: list[float]) -> None:
    """Validation NLLs in the order given, one per validation."""
    import dataclasses

    real_evaluate = genzoo.training.evaluate
    remaining = list(nlls)

    def scripted(*args, **kwargs):
        return dataclasses.replace(real_evaluate(*args, **kwargs), nll_nats=remaining.pop(0))

    monkeypatch.setattr(genzoo.training, "evaluate", scripted)


def test_a_run_stopped_by_patience_between_checkpoints_writes_last_at_its_stop(tmp_path, monkeypatch):
    """checkpoint_every = 4, best at epoch 1, patience 2: the run stops after epoch 3, which is
    neither a new best nor on the checkpoint schedule; last.pt must still be of epoch 3, or a
    resume would redo epochs 2 and 3 and their metrics would be dropped."""
    written = last_checkpoint_epochs(monkeypatch)
    _scripted_validation(monkeypatch, [5.0, 6.0, 7.0])
    result = _fit(tiny_run_config("fvsbn", epochs=10, batch_size=500, checkpoint_every=4, patience=2), tmp_path / "run")
    assert result.epochs_completed == 3 and result.stopped_because == "no better validation NLL in 2 epochs"
    assert written == [1, 3]
    last = load_checkpoint(RunFolder(tmp_path / "run").last)
    assert last["epoch"] == 3 and last["epochs_without_improvement"] == 2


# -- patience across a resume from an epoch that was not validated ------------------------------------


class _Crash(Exception):
    pass


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "without-last-validated-epoch"])
def test_patience_across_a_resume_from_an_unvalidated_epoch(tmp_path, monkeypatch, legacy):
    """eval_every = 2, patience 4, best at epoch 2 and never better after: an uninterrupted run
    stops at epoch 6. A run that dies validating epoch 4 keeps last.pt of epoch 3, which was not
    validated; resumed, it must count patience from epoch 2 (the last validation, which an older
    checkpoint without last_validated_epoch knows only from the schedule) and stop at 6 too."""
    config = dict(epochs=20, batch_size=500, eval_every=2, patience=4)
    _scripted_validation(monkeypatch, [5.0, 6.0, 6.0, 6.0, 6.0])
    whole = _fit(tiny_run_config("fvsbn", **config), tmp_path / "whole")
    assert whole.epochs_completed == 6 and whole.best_epoch == 2
    monkeypatch.undo()

    import dataclasses

    real_evaluate = genzoo.training.evaluate
    calls = []

    def crashing(*args, **kwargs):  # epoch 2 scores 5.0 as above; the validation of epoch 4 never ends
        calls.append(1)
        if len(calls) == 2:
            raise _Crash("power cut")
        return dataclasses.replace(real_evaluate(*args, **kwargs), nll_nats=5.0)

    monkeypatch.setattr(genzoo.training, "evaluate", crashing)
    with pytest.raises(_Crash):
        _fit(tiny_run_config("fvsbn", **config), tmp_path / "run")
    monkeypatch.undo()
    last_path = RunFolder(tmp_path / "run").last
    last = load_checkpoint(last_path)
    assert last["epoch"] == 3 and last["best_epoch"] == 2 and last["best_valid_nll"] == 5.0
    if legacy:
        del last["last_validated_epoch"]
        genzoo.training.save_checkpoint(last, last_path)
    _scripted_validation(monkeypatch, [6.0, 6.0, 6.0, 6.0])
    resumed = Trainer.resume(tmp_path / "run", progress=False).fit()
    assert resumed.epochs_completed == 6 and resumed.stopped_because == "no better validation NLL in 4 epochs"


# -- config checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("milestones", [(2, 2), (3, 2), (0, 2), (1, 1, 4)])
def test_lr_milestones_must_strictly_increase(milestones):
    """A repeated milestone would make MultiStepLR multiply by lr_decay twice at that epoch."""
    from genzoo.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="lr_milestones must be increasing epochs of at least 1"):
        TrainConfig(lr_schedule="multistep", lr_decay=0.5, lr_milestones=milestones)
    assert TrainConfig(lr_schedule="multistep", lr_decay=0.5, lr_milestones=(1, 2, 5)).lr_milestones == (1, 2, 5)


def test_integers_are_refused_exactly_past_what_torch_can_hold():
    """A seed is an int64 in torch: 2**63 - 1 is the largest accepted, 2**63 the first refused."""
    from genzoo.config import ConfigError, run_config_from_dict

    assert run_config_from_dict({"train": {"seed": 2**63 - 1}}).train.seed == 2**63 - 1
    assert run_config_from_dict({"train": {"seed": -(2**63)}}).train.seed == -(2**63)
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(ConfigError, match=r"seed must be an integer from -2\*\*63 to 2\*\*63 - 1"):
            run_config_from_dict({"train": {"seed": value}})


@dataclasses.dataclass
class _OptionalFields:
    size: int | None = None
    scale: float | None = 1.0


def test_build_dataclass_takes_none_for_an_optional_field_and_checks_the_rest():
    """A Python caller's None for an ``X | None`` field is the field's own "unset"; other values
    are checked as X."""
    from genzoo.config import ConfigError, build_dataclass

    assert build_dataclass(_OptionalFields, {"size": None, "scale": None}) == _OptionalFields(None, None)
    assert build_dataclass(_OptionalFields, {"size": 3, "scale": 2}) == _OptionalFields(3, 2.0)
    with pytest.raises(ConfigError, match="size must be an integer"):
        build_dataclass(_OptionalFields, {"size": "3"})


def test_resuming_a_run_that_finished_out_of_time_in_its_last_epoch_says_it_completed(tmp_path):
    """The budget ran out in the last epoch, so the run is complete; a resume without a new total
    trains nothing and must say so, not that it reached max_seconds."""
    run_dir = tmp_path / "run"
    assert _fit(tiny_run_config("fvsbn", epochs=1, batch_size=500, max_seconds=1e-9), run_dir).stopped_because == "completed all epochs"
    again = Trainer.resume(run_dir, progress=False).fit()
    assert again.epochs_completed == 1 and again.stopped_because == "completed all epochs"
    # with a new total, the spent budget stops the run before it trains
    more = Trainer.resume(run_dir, progress=False, epochs=3).fit()
    assert more.epochs_completed == 1 and more.stopped_because.startswith("reached max_seconds")


def test_a_run_stops_when_its_training_time_reaches_max_seconds_exactly(tmp_path, monkeypatch):
    """max_seconds is the training time allowed: at 3 s of one-second epochs the run stops after
    epoch 3 (it used to be read as "more than" by no test)."""
    one_second_epochs(monkeypatch)
    result = _fit(tiny_run_config("fvsbn", epochs=10, batch_size=500, max_seconds=3), tmp_path / "run")
    assert result.epochs_completed == 3 and result.stopped_because == "reached max_seconds = 3"


def test_the_recorded_training_loss_is_the_models_loss_without_the_l1_penalty(tmp_path, monkeypatch):
    """train_loss measures the model (its NLL or bound), comparable across l1_penalty settings; the
    penalty only shapes the gradient."""
    from genzoo.models.autoregressive import FVSBN

    losses = []
    real_loss = FVSBN.loss

    def recording_loss(self, x):
        loss = real_loss(self, x)
        losses.append((loss.item(), len(x)))
        return loss

    monkeypatch.setattr(FVSBN, "loss", recording_loss)
    trainer = Trainer(tiny_run_config("fvsbn", epochs=1, batch_size=300, l1_penalty=0.5), tmp_path / "run", progress=False)
    data = genzoo.training.make_training_data(trainer.config.data)
    model = trainer._build_model(data)
    torch.nn.init.normal_(model.linear.weight)  # a large norm: the penalty is far from negligible
    optimizer = genzoo.training.make_optimizer(model, trainer.config)
    train_x = data.train_source.reshape(len(data.train_source), -1)
    mean = trainer._train_one_epoch(model, optimizer, train_x, torch.Generator().manual_seed(0), epoch=1)
    expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert mean == pytest.approx(expected, rel=1e-6)
    assert 0.5 * weight_l1_norm(model).item() > 0.01 * expected  # the check is not vacuous


# -- two-stage models (a VQ-VAE: autoencoder for epochs 1-2, then its prior) ---------------------------

VQVAE = {"architecture": "mlp", "hidden_size": 8, "latent_positions": 2, "num_codes": 4, "code_dim": 2,
         "prior_hidden_sizes": [8], "autoencoder_epochs": 2}


def test_a_resume_at_the_stage_switch_still_restarts_the_best_model(tmp_path, monkeypatch):
    """Stage one scores 4.0 at best, stage two only 6.0 and 7.0: the best checkpoint must still be a
    stage-two model (a stage-one best.pt holds an untrained prior), also when the run was split by
    a resume right at the switch, where the stage the checkpoint was in says a new one began."""
    _scripted_validation(monkeypatch, [5.0, 4.0])
    _fit(tiny_run_config("vqvae", epochs=2, model_hp=VQVAE, batch_size=500), tmp_path / "run")
    monkeypatch.undo()
    _scripted_validation(monkeypatch, [6.0, 7.0])
    result = Trainer.resume(tmp_path / "run", progress=False, epochs=4).fit()
    assert result.best_epoch == 3 and result.best_valid_nll == 6.0
    assert load_checkpoint(RunFolder(tmp_path / "run").best)["training_stage"] == "prior"


def test_fitting_to_the_time_budget_never_plans_away_the_last_stage(tmp_path, monkeypatch):
    """1.5 s fit one one-second epoch, but the prior's stage starts at epoch 3: the fitted plan keeps
    it (3 epochs), and the budget then stops the run, which says it ended before that stage."""
    one_second_epochs(monkeypatch)
    config = tiny_run_config("vqvae", epochs=6, model_hp=VQVAE, batch_size=500, max_seconds=1.5,
                             fit_epochs_to_max_seconds=True)
    result = _fit(config, tmp_path / "run")
    assert result.epoch_plans == [(0, 6), (1, 3)] and result.fitted_from_epochs == 6
    assert result.epochs_completed == 2
    assert "ended before its last training stage, which starts at epoch 3" in result.stopped_because


def test_a_plan_shortened_twice_in_a_session_is_one_fitted_plan(tmp_path, monkeypatch):
    """Epochs of 1 s, 1 s, then 3 s with 10 s for a 20-epoch plan: after epoch 1 the plan becomes
    10, after epoch 3 (5 s at 5/3 s an epoch, 5 s left: 3 more) it becomes 6. The history records
    one fitted plan for the session, from epoch 1, now of 6 epochs."""
    durations = iter([1.0, 1.0, 3.0] + [1.0] * 20)
    clock = [0.0]
    monkeypatch.setattr(genzoo.training.time, "perf_counter", lambda: clock[0])
    train_one_epoch = Trainer._train_one_epoch

    def timed(self, *args, **kwargs):
        loss = train_one_epoch(self, *args, **kwargs)
        clock[0] += next(durations)
        return loss

    monkeypatch.setattr(Trainer, "_train_one_epoch", timed)
    config = tiny_run_config("fvsbn", epochs=20, batch_size=500, max_seconds=10, fit_epochs_to_max_seconds=True)
    result = _fit(config, tmp_path / "run")
    assert result.epoch_plans == [(0, 20), (1, 6)] and result.fitted_from_epochs == 20
    assert result.epochs_completed == 6
    assert load_checkpoint(RunFolder(tmp_path / "run").last)["epoch_plans"] == [[0, 20], [1, 6]]


def test_only_the_last_line_of_metrics_may_be_cut_short(tmp_path):
    """A file whose last line lacks its newline (a write cut short) still has its other lines
    checked: a corrupt line before it is an error naming it, not silently the end of the records."""
    run = RunFolder(tmp_path)
    run.metrics.write_text('{"epoch": 1}\n{"epoch": 2, "tra\n{"epoch": 3}\n{"epoch": 4, "train_lo')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON record"):
        run.read_metrics()
    run.metrics.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "train_lo')
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


@pytest.mark.parametrize("line", ['{"epoch": "2"}', '{"train_loss": 1.0}', '[1, 2]', '{"epoch": 2.0}', '{"epoch": true}'])
def test_a_metrics_line_that_is_json_but_no_epoch_record_is_named(tmp_path, line):
    """A resume compares each record's epoch with the checkpoint's: a record without an integer
    epoch is corruption named by its line, not a KeyError or TypeError later."""
    run = RunFolder(tmp_path)
    run.metrics.write_text('{"epoch": 1}\n' + line + '\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not an epoch record"):
        run.read_metrics()


def test_init_from_a_run_folder_takes_its_best_checkpoint(tmp_path, monkeypatch):
    """``[train] init_from`` naming a run folder means its best.pt (the model worth continuing
    from), here epoch 1, not last.pt of epoch 2."""
    _scripted_validation(monkeypatch, [4.0, 5.0])
    _fit(tiny_run_config("fvsbn", epochs=2, batch_size=500, lr=1e-2), tmp_path / "run")
    best, last = (load_checkpoint(RunFolder(tmp_path / "run").checkpoint(w))["model"] for w in ("best", "last"))
    assert not torch.equal(best["linear.weight"], last["linear.weight"]), "the check is vacuous"
    model = genzoo.build_model("fvsbn", (1, 8, 8))
    Trainer._initialize_from(model, str(tmp_path / "run"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key


def test_a_new_run_refuses_a_folder_holding_an_earlier_runs_evaluation(tmp_path):
    """eval_*.json of an earlier run would sit stale beside the new run's model."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval_test.json").write_text("{}")
    assert RunFolder(tmp_path / "run").leftovers() == ["eval_test.json"]
    with pytest.raises(FileExistsError, match="eval_test.json of an earlier run"):
        _fit(tiny_run_config("fvsbn", epochs=1, batch_size=500), tmp_path / "run")
