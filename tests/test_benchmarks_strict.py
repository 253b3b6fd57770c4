"""The benchmarks' figures, checked against values derived independently: every ratio the scripts
publish (speedups, GFLOP/s, fractions of the matmul rate, samples/s) is recomputed here from the
per-round figures a fake clock or a fake timer hands them, each record field is traced to its
source, results files keep what a run did not replace, and the published tables are the records'.
Nothing here trains on MNIST or times a real benchmark: the scripts' parts are called with tiny
models and fakes."""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import binarized_mnist  # noqa: E402
import common  # noqa: E402
import dynamic_draws  # noqa: E402
import flows  # noqa: E402
import genzoo  # noqa: E402
import peer_style  # noqa: E402
import sampling  # noqa: E402
import speed  # noqa: E402
from conftest import all_binary  # noqa: E402

CPU = torch.device("cpu")


class FakeClock:
    """time.perf_counter stand-in: it moves only when a fake workload advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


# -- common.py: timing ---------------------------------------------------------------------------

def test_median_seconds_is_the_median_of_the_timed_calls_after_the_warmup(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)
    durations = iter([100.0, 5.0, 1.0, 3.0])  # the warm-up call is slow and must not count
    assert common.median_seconds(lambda: clock.advance(next(durations)), repeats=3, warmup=1) == 3.0


# -- common.py: the machine and the command ------------------------------------------------------

def test_the_cpu_model_is_read_from_the_model_name_line_not_the_model_number(tmp_path, monkeypatch):
    """/proc/cpuinfo lists "model : 1" (a number) before "model name": only the latter names it."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    monkeypatch.setattr(common, "CPUINFO", cpuinfo)
    assert common.cpu_model_name() == "AMD EPYC 7B13"


def test_a_processor_name_is_preferred_to_the_machine_type(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CPUINFO", tmp_path / "none")
    monkeypatch.setattr(common.platform, "processor", lambda: "arm")
    monkeypatch.setattr(common.platform, "machine", lambda: "arm64")
    assert common.device_description(CPU) == f"cpu (arm, {torch.get_num_threads()} threads)"


def test_the_command_names_both_thread_variables(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "speed.py"), "--repeats", "9"])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    assert common.command_line() == "OMP_NUM_THREADS=2 MKL_NUM_THREADS=3 python benchmarks/speed.py --repeats 9"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert common.command_line() == "MKL_NUM_THREADS=3 python benchmarks/speed.py --repeats 9"


def test_at_least_accepts_its_minimum_and_refuses_below_it():
    parse = common.at_least(1)
    assert parse("1") == 1 and parse("7") == 7
    with pytest.raises(argparse.ArgumentTypeError):
        parse("0")
    with pytest.raises(argparse.ArgumentTypeError):
        parse("two")


def test_threads_sets_torchs_thread_count_and_zero_keeps_it(monkeypatch):
    calls = []
    monkeypatch.setattr(common.torch, "set_num_threads", calls.append)
    common.use_threads(0)
    assert calls == []
    common.use_threads(3)
    assert calls == [3]


# -- common.py: results files --------------------------------------------------------------------

def test_merging_replaces_only_records_with_the_whole_key_and_keeps_the_rest(tmp_path):
    path = tmp_path / "nested" / "records.json"
    assert common.merge_records(path, [{"model": "made", "protocol": "static", "nll": 1}], ("model", "protocol")) == [
        {"model": "made", "protocol": "static", "nll": 1}]
    common.merge_records(path, [{"model": "made", "protocol": "dynamic", "nll": 2},
                                {"model": "nade", "protocol": "static", "nll": 3}], ("model", "protocol"))
    merged = common.merge_records(path, [{"model": "made", "protocol": "static", "nll": 4}], ("model", "protocol"))
    # the same model under another protocol is another record: only (made, static) is replaced
    assert merged == [{"model": "made", "protocol": "dynamic", "nll": 2}, {"model": "nade", "protocol": "static", "nll": 3},
                      {"model": "made", "protocol": "static", "nll": 4}]
    assert json.loads(path.read_text()) == merged


def _run_folder(tmp_path, *files):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text("")
    (run / "metrics.jsonl").write_text("")
    for name in files:
        (run / name).write_text("")
    return run


@pytest.mark.parametrize("files, killed", [
    ((), True),
    (("checkpoints/last.pt",), False),
    (("checkpoints/best.pt",), False),  # a finished run whose last.pt is gone
    (("eval_test.json",), False),  # a run with an evaluation and no checkpoint left
])
def test_only_a_run_with_nothing_but_its_config_and_metrics_counts_as_killed_in_its_first_epoch(tmp_path, files, killed):
    assert common.stopped_before_its_first_checkpoint(_run_folder(tmp_path, *files)) is killed


# -- binarized_mnist.py: a record's fields come from the run and its evaluation -------------------

def _evaluation(**fields):
    values = dict(nll_nats=91.5, bits_per_dim=0.25, standard_error_nats=0.75, likelihood="lower_bound",
                  likelihood_detail="IWAE, k = 5000")
    return SimpleNamespace(**{**values, **fields})


def _fake_result(model, test, **fields):
    values = dict(model=model, data=SimpleNamespace(test=test), epochs_completed=7, best_epoch=5,
                  stopped_because="early stopping", train_seconds=12.5, fitted_from_epochs=None, epoch_plans=[(0, 7)])
    return SimpleNamespace(**{**values, **fields})


@pytest.fixture
def fake_nll_run(tmp_path, monkeypatch):
    """binarized_mnist.run_one with its config in tmp_path, and the run and its evaluation faked:
    returns (run, the arguments fit_or_resume and evaluate were called with)."""
    (tmp_path / "fvsbn.toml").write_text('[model]\nname = "fvsbn"\n[data]\nname = "digits"\neval_binarization_seed = 77\n'
                                         '[train]\nepochs = 3\n')
    monkeypatch.setattr(binarized_mnist, "config_path", lambda model, protocol: tmp_path / "fvsbn.toml")
    monkeypatch.setattr(binarized_mnist, "REPO", tmp_path)
    model = genzoo.build_model("fvsbn", (1, 2, 2))
    test = all_binary(4, torch.float32).reshape(16, 1, 2, 2)
    seen = {}

    def run(protocol="static", **result_fields):
        def fit(config, run_dir, device, data_dir, max_seconds, epochs):
            seen["fit"] = (run_dir, max_seconds, epochs, config.train.fit_epochs_to_max_seconds)
            return _fake_result(model, test, **result_fields)

        def evaluate(m, x, split, **kwargs):
            seen["evaluate"] = (m, x, split)
            return _evaluation()

        monkeypatch.setattr(binarized_mnist, "fit_or_resume", fit)
        monkeypatch.setattr(binarized_mnist, "evaluate", evaluate)
        args = argparse.Namespace(max_seconds=60.0, epochs=9, fit_epochs_to_time=False, runs=str(tmp_path / "runs"),
                                  data_dir=None)
        return binarized_mnist.run_one("fvsbn", protocol, args, CPU)

    return run, seen, model, test


def test_an_nll_record_carries_the_evaluation_and_the_run_it_came_from(fake_nll_run, tmp_path):
    run, seen, model, test = fake_nll_run
    record = run("static")
    assert {k: record[k] for k in ("nll_nats", "bits_per_dim", "standard_error_nats", "likelihood",
                                   "likelihood_detail")} == vars(_evaluation())
    assert record["epochs"] == 7 and record["best_epoch"] == 5  # epochs trained, not the best one
    assert record["train_seconds"] == 12.5 and record["stopped_because"] == "early stopping"
    assert record["params"] == torch.nn.utils.parameters_to_vector(model.parameters()).numel()
    assert record["dataset"] == "digits" and record["protocol"] == "static" and record["split"] == "test"
    assert record["anchor"].startswith("97.45")  # ANCHORS[(fvsbn, static)], Larochelle & Murray
    assert "test_binarization_seed" not in record and "extended_from_epochs" not in record
    # the run folder and the budget of the command line; the evaluation on the flattened test split
    assert seen["fit"] == (tmp_path / "runs" / "fvsbn-static", 60.0, 9, False)
    evaluated_model, x, split = seen["evaluate"]
    assert evaluated_model is model and split == "test" and torch.equal(x, test.reshape(16, 4))


def test_a_dynamic_record_names_its_test_draw_and_its_anchor(fake_nll_run, tmp_path):
    run, seen, _, _ = fake_nll_run
    record = run("dynamic")
    assert record["test_binarization_seed"] == 77
    assert record["dataset"] == "binarized-mnist (dynamic from mnist)"
    assert record["anchor"].startswith("96.58")  # pytorch-generative's dynamic FVSBN
    assert seen["fit"][0] == tmp_path / "runs" / "fvsbn-dynamic"


def test_an_extended_run_records_its_first_total_and_every_plan(fake_nll_run):
    run, _, _, _ = fake_nll_run
    # stopped at 90 of a 120-epoch plan, resumed with --epochs 200, early-stopped at 150
    record = run(epochs_completed=150, epoch_plans=[(0, 120), (90, 200)])
    assert record["extended_from_epochs"] == 120
    assert record["epoch_plans"] == [[0, 120], [90, 200]]
    assert binarized_mnist.epochs_per_plan(record) == [90, 60]


def test_fit_epochs_to_time_needs_a_budget(capsys):
    with pytest.raises(SystemExit):
        binarized_mnist.parse_args(["--fit-epochs-to-time"])
    assert "--fit-epochs-to-time needs --max-seconds" in capsys.readouterr().err


def _nll_record(model, protocol, nll):
    return {"model": model, "protocol": protocol, "nll_nats": nll, "bits_per_dim": nll / 784 / math.log(2),
            "likelihood": "exact", "epochs": 1, "train_seconds": 60.0, "device": "cpu", "anchor": ""}


def test_the_nll_script_keeps_other_records_and_writes_the_table_of_all(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "binarized-mnist.json").write_text(json.dumps([_nll_record("made", "static", 88.0),
                                                          _nll_record("fvsbn", "static", 120.0)]))
    monkeypatch.setattr(binarized_mnist, "run_one",
                        lambda model, protocol, args, device: _nll_record(model, protocol, {"static": 97.0, "dynamic": 96.0}[protocol]))
    monkeypatch.setattr(sys, "argv", ["binarized_mnist.py", "--models", "fvsbn", "nade", "--protocols", "static",
                                      "dynamic", "--results", str(out)])
    binarized_mnist.main()
    records = json.loads((out / "binarized-mnist.json").read_text())
    assert sorted((r["model"], r["protocol"], r["nll_nats"]) for r in records) == [
        ("fvsbn", "dynamic", 96.0), ("fvsbn", "static", 97.0), ("made", "static", 88.0),
        ("nade", "dynamic", 96.0), ("nade", "static", 97.0)]
    assert (out / "binarized-mnist.md").read_text() == binarized_mnist.markdown_table(records) + "\n"


# -- speed.py: work counts and rates -------------------------------------------------------------

def _counted_flops(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def test_the_matmul_reference_counts_the_flops_it_executes():
    product, flops = speed.matmul_call(CPU, n=8)
    assert flops == _counted_flops(product) == 2 * 8**3


def test_made_steps_bare_products_count_the_flops_they_execute():
    products, flops = speed.made_step_matmuls_call(CPU, hidden=16, batch=4)
    assert flops == _counted_flops(products)


def test_the_memory_stream_moves_each_float_in_and_out():
    stream, moved = speed.memory_stream_call(CPU, floats=1000)
    assert moved == 1000 * 4 * 2  # float32: read and written once


def test_adams_bytes_per_parameter_are_the_tensors_a_step_reads_and_writes():
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([parameter])
    parameter.grad = torch.ones(3)
    optimizer.step()
    moments = [s for s in optimizer.state[parameter].values() if torch.is_tensor(s) and s.shape == parameter.shape]
    reads = 2 + len(moments)  # the parameter, its gradient, the moments
    writes = 1 + len(moments)  # the parameter, the moments
    assert speed.ADAM_BYTES_PER_PARAMETER == parameter.element_size() * (reads + writes)


def test_matmul_gflops_divides_the_products_flops_by_its_median_time(monkeypatch):
    monkeypatch.setattr(speed, "matmul_call", lambda device: (lambda: None, 6e9))
    monkeypatch.setattr(speed, "median_seconds", lambda call, repeats: 2.0)
    assert speed.matmul_gflops(CPU) == 3.0


def _recording_builds(monkeypatch, seen):
    """genzoo.build_model and peer_style.build whose models record the batch sizes of their losses."""
    real_build, real_peer = genzoo.build_model, peer_style.build

    def record_losses(model):
        loss = model.loss
        model.loss = lambda x: (seen.append(len(x)), loss(x))[1]
        return model

    monkeypatch.setattr(genzoo, "build_model", lambda *a, **k: record_losses(real_build(*a, **k)))
    monkeypatch.setattr(peer_style, "build",
                        lambda *a, **k: (lambda m, o: (record_losses(m), o))(*real_peer(*a, **k)))


@pytest.mark.parametrize("peer", [False, True])
def test_a_training_call_counts_every_example_it_trains_on(monkeypatch, peer):
    seen = []
    _recording_builds(monkeypatch, seen)
    monkeypatch.setitem(speed.CONFIGS, "made", ({"hidden_sizes": [16]}, 5))
    call, examples = speed.training_steps_call("made", CPU, steps=3, peer=peer)
    call()
    assert seen == [5, 5, 5] and examples == sum(seen)


def test_a_step_runs_under_both_of_the_trainers_contexts():
    entered = []

    class Model:
        def input_values_checked_by_caller(self):
            return _context(entered, "unchecked")

        def compute_threads(self):
            return _context(entered, "threads")

    with speed.trainer_step_context(Model()):
        assert entered == ["unchecked", "threads"]


def _context(entered, name):
    import contextlib

    @contextlib.contextmanager
    def context():
        entered.append(name)
        yield

    return context()


def test_a_rate_is_work_over_the_seconds_of_each_round(monkeypatch):
    monkeypatch.setattr(speed, "interleaved_seconds", lambda calls, rounds: {"a": [2.0, 4.0], "b": [1.0, 0.5]})
    assert speed.interleaved_rates({"a": (None, 8.0), "b": (None, 3.0)}, 2) == {"a": [4.0, 2.0], "b": [3.0, 6.0]}


def test_the_step_breakdown_times_each_part_and_skips_the_first_steps(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(speed.time, "perf_counter", clock)
    steps = []

    class Loss:
        def backward(self):
            clock.advance(0.005)

    class Model:
        def loss(self, x):
            steps.append(x)
            clock.advance(0.003 + (1.0 if len(steps) <= 2 else 0.0))  # the first two allocate
            return Loss()

    class Optimizer:
        def zero_grad(self, set_to_none=True):
            pass

        def step(self):
            clock.advance(0.007)

    monkeypatch.setattr(speed, "training_setup", lambda name, device, steps: (Model(), Optimizer(), 4, None))
    parts = speed.train_step_breakdown_ms("made", CPU, repeats=1, steps=1)
    assert len(steps) == 1 + 2  # one timed step after the two that allocate
    assert parts == pytest.approx({"forward": 3.0, "backward": 5.0, "optimizer": 7.0})


def test_the_fast_sampling_call_uses_the_fast_sampler(monkeypatch):
    calls = []
    real_build = genzoo.build_model

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.sample_from_uniforms = lambda u: calls.append("fast")
        model.sample_naive = lambda u: calls.append("naive")
        return model

    monkeypatch.setattr(genzoo, "build_model", build)
    draws = speed.sampling_calls("fvsbn", CPU, n=2)
    draws["fast"]()
    draws["naive"]()
    assert calls == ["fast", "naive"]


# per-round figures whose medians of ratios differ from the ratios of medians
GENZOO = [100.0, 300.0, 200.0]
PEER_STYLE = [50.0, 100.0, 40.0]  # ratios 2, 3, 5: median 3; medians give 200 / 50 = 4
DENSE = [50.0, 200.0, 50.0]  # genzoo / dense: 2, 1.5, 4 -> 2
WITHOUT_SUMS = [80.0, 150.0, 250.0]  # genzoo / without sums: 1.25, 2, 0.8 -> 1.25
BARE = [4e9, 9e9, 5e9]
MATMUL = [10e9, 10e9, 20e9]
STREAM = [1e9, 3e9, 2e9]


def _fake_rates(contenders, rounds):
    assert rounds == 3
    rates = {"genzoo": GENZOO, "peer-style": PEER_STYLE, "dense products": DENSE, "without sums": WITHOUT_SUMS,
             "bare products": BARE,
             "matmul": MATMUL, "memory stream": STREAM}
    return {name: rates[name] for name in contenders}


@pytest.fixture
def fake_made_parts(monkeypatch):
    """The MADE comparison's contenders replaced by labels (nothing is built or timed at 784×8000)."""
    monkeypatch.setattr(speed, "interleaved_rates", _fake_rates)
    monkeypatch.setattr(speed, "training_steps_call",
                        lambda name, device, steps=8, peer=False, overrides=None: (("steps", name, peer, overrides), 1.0))
    monkeypatch.setattr(speed, "made_step_matmuls_call", lambda device, hidden, batch: ("bare", hidden, batch))
    monkeypatch.setattr(speed, "matmul_call", lambda device: ("matmul", 0.0))
    monkeypatch.setattr(speed, "memory_stream_call", lambda device: ("stream", 0.0))


def test_made_comparison_derives_every_figure_from_the_same_rounds(fake_made_parts):
    hyper, batch = {"hidden_sizes": [1000]}, 4  # wide enough for row blocks: executed < dense
    dense, executed = speed.made_train_flops_per_example(genzoo.build_model("made", (1, 28, 28), **hyper),
                                                         speed.benchmark_batches(batch, 8, CPU))
    assert dense == 5 * 2 * 784 * 1000 and executed < 0.9 * dense
    made = speed.made_comparison(CPU, hyper, batch, 3, ("genzoo", 1.0), ("peer", 1.0))
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(a, b))  # noqa: E731
    assert made["train_flops_per_example_dense"] == dense and made["train_flops_per_example_executed"] == executed
    assert made["train_gflops_executed"] == pytest.approx(200.0 * executed / 1e9)
    assert made["train_gflops_dense_equivalent"] == pytest.approx(200.0 * dense / 1e9)
    assert made["dense_products_train_examples_per_second"] == 50.0
    assert made["dense_products_train_gflops"] == pytest.approx(50.0 * dense / 1e9)
    assert made["row_blocks_speedup"] == pytest.approx(2.0)
    assert made["step_matmuls_gflops"] == pytest.approx(5.0)
    # a step of ``batch`` examples: batch · dense FLOPs at the bare products' median rate, in ms
    assert made["step_matmuls_ms"] == pytest.approx(1e3 * batch * dense / 5e9)
    assert made["matmul_gflops_interleaved"] == pytest.approx(10.0)
    assert made["fraction_of_matmul_peak"] == pytest.approx(ratio([g * executed for g in GENZOO], MATMUL))
    assert made["dense_equivalent_fraction_of_matmul_peak"] == pytest.approx(ratio([g * dense for g in GENZOO], MATMUL))
    assert made["dense_products_fraction_of_matmul_peak"] == pytest.approx(ratio([d * dense for d in DENSE], MATMUL))
    assert made["step_matmuls_fraction_of_matmul_peak"] == pytest.approx(ratio(BARE, MATMUL))
    assert made["memory_stream_gbps_interleaved"] == pytest.approx(2.0)
    # the fractions are per-round ratios, not ratios of medians
    assert made["fraction_of_matmul_peak"] != pytest.approx(200.0 * executed / 10e9)


def test_the_speed_record_derives_every_ratio_from_its_rounds(fake_made_parts, tmp_path, monkeypatch):
    peaks = iter([100.0, 300.0])
    monkeypatch.setattr(speed, "matmul_gflops", lambda device, repeats: next(peaks))
    monkeypatch.setattr(speed, "tune_cpu_process", lambda: {})
    monkeypatch.setitem(speed.CONFIGS, "made", ({"hidden_sizes": [16]}, 4))
    fast, naive = [1.0, 4.0, 5.0], [10.0, 12.0, 100.0]  # naive / fast per round: 10, 3, 20 -> 10
    monkeypatch.setattr(speed, "sampling_calls", lambda name, device: {"fast": None, "naive": None})
    monkeypatch.setattr(speed, "interleaved_seconds", lambda calls, rounds: {"fast": fast, "naive": naive})
    monkeypatch.setattr(speed, "train_step_breakdown_ms",
                        lambda name, device, repeats: {"forward": 1.0, "backward": 2.0, "optimizer": 4.0})
    real_rates = speed.interleaved_rates

    def rates(contenders, rounds):
        # the baseline is the peer-style model, genzoo's the library's own
        assert contenders["peer-style"][0][2] is True and contenders["genzoo"][0][2] is False
        return real_rates(contenders, rounds)

    monkeypatch.setattr(speed, "interleaved_rates", rates)
    monkeypatch.setattr(sys, "argv", ["speed.py", "--repeats", "3", "--results", str(tmp_path)])
    speed.main()
    record = json.loads((tmp_path / "speed-cpu.json").read_text())
    for name, entry in record["models"].items():
        peer = speed.PEER[name]
        assert entry["train_examples_per_second"] == 200.0 and entry["peer_style_train_examples_per_second"] == 50.0
        assert entry["train_speedup_vs_peer_style"] == pytest.approx(3.0)
        assert entry["train_speedup_vs_peer_quoted"] == pytest.approx(200.0 / peer["train_examples_per_second"])
        assert entry["sample16_seconds_fast"] == 4.0 and entry["sample16_seconds_naive"] == 12.0
        assert entry["fast_over_naive_sampling"] == pytest.approx(10.0)
        assert entry["sampling_speedup_vs_peer_quoted"] == pytest.approx(peer["sample16_seconds"] / 4.0)
        assert entry["peer_quoted"] == peer
        if name in speed.WITHOUT_SUMS:
            assert entry["without_sums_train_examples_per_second"] == 150.0
            assert entry["binary_input_sums_speedup"] == pytest.approx(1.25)
        else:
            assert "binary_input_sums_speedup" not in entry
    assert set(record["models"]) == {"fvsbn", "nade", "made"}
    parameters = sum(p.numel() for p in genzoo.build_model("made", (1, 28, 28), hidden_sizes=[16]).parameters())
    assert record["models"]["made"]["optimizer_gbps"] == pytest.approx(7 * 4 * parameters / 4e-3 / 1e9)
    assert record["matmul_gflops_readings"] == [100.0, 10.0, 300.0] and record["matmul_gflops"] == 10.0
    assert record["rounds"] == 3
    assert (tmp_path / "speed-cpu.md").read_text() == speed.markdown_table(record) + "\n"


# -- sampling.py -------------------------------------------------------------------------------

def test_naive_sampling_timed_whole_when_no_dims_are_given(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(sampling.time, "perf_counter", clock)
    model = genzoo.build_model("fvsbn", (1, 2, 2))
    model.sample_naive = lambda u: clock.advance(7.0)
    u = model.draw_uniforms(3, torch.Generator().manual_seed(0))
    assert sampling.naive_seconds(model, u, 0) == 7.0
    assert sampling.naive_seconds(model, u, 4) == 7.0  # all of D: the whole sampler


def test_naive_sampling_from_some_dims_is_scaled_to_all_of_them(monkeypatch):
    """One network pass per dimension: k passes timed, scaled by D / k, is D passes."""
    clock = FakeClock()
    monkeypatch.setattr(sampling.time, "perf_counter", clock)
    model = genzoo.build_model("fvsbn", (1, 2, 2))
    logits = model.conditional_logits
    model.conditional_logits = lambda x: (clock.advance(1.0), logits(x))[1]
    u = model.draw_uniforms(3, torch.Generator().manual_seed(0))
    assert sampling.naive_seconds(model, u, 2) == pytest.approx(4.0)
    assert sampling.naive_seconds(model, u, 1) == pytest.approx(4.0)


def test_brief_training_steps_and_leaves_the_model_in_eval_mode():
    model = genzoo.build_model("fvsbn", (1, 2, 2))
    before = [p.detach().clone() for p in model.parameters()]
    x = all_binary(4, torch.float32)
    assert sampling.train_briefly(model, x, 0) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert sampling.train_briefly(model, x, 0.05, batch_size=4) > 0
    assert not model.training
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _fake_measure(monkeypatch, naive_dims=64):
    times = iter([0.5, 0.25])  # fast, then speculative
    monkeypatch.setattr(sampling, "median_seconds",
                        lambda fn, repeats, warmup=1: ([fn() for _ in range(repeats)], next(times))[1])
    naive_runs = iter([9.0, 1.0, 3.0])
    monkeypatch.setattr(sampling, "naive_seconds", lambda model, u, dims: next(naive_runs))
    acceptance, per_call, seeds = iter([0.9, 0.5, 0.1]), iter([3.0, 1.0, 2.0]), []

    def speculative(model, draft, batch, gamma, generator):
        seeds.append(generator.initial_seed())
        return None, SimpleNamespace(acceptance_rate=next(acceptance), dimensions_per_target_call=next(per_call))

    monkeypatch.setattr(sampling, "speculative_sample", speculative)
    args = argparse.Namespace(train_seconds=0, batch=16, repeats=3, naive_dims=naive_dims, gamma=4, draft="fvsbn")
    return sampling.measure("fvsbn", None, args, CPU, None), seeds


def test_a_sampling_record_derives_its_rates_and_ratios_from_medians(monkeypatch):
    record, seeds = _fake_measure(monkeypatch)
    naive, fast, spec = 3.0, 0.5, 0.25  # the median of the naive runs, the timers' medians
    assert record["naive_samples_per_second"] == pytest.approx(16 / naive)
    assert record["fast_samples_per_second"] == pytest.approx(16 / fast)
    assert record["speculative_samples_per_second"] == pytest.approx(16 / spec)
    assert record["fast_over_naive"] == pytest.approx(naive / fast)
    assert record["speculative_over_naive"] == pytest.approx(naive / spec)
    assert record["speculative_over_fast"] == pytest.approx(fast / spec)
    assert record["acceptance_rate"] == 0.5 and record["dimensions_per_target_call"] == 2.0
    assert seeds == [0, 1, 2]  # each repeat draws anew
    assert record["naive_extrapolated_from_dims"] == 64 and record["weights"] == "random init"


def test_a_naive_sampler_timed_over_all_dims_is_not_marked_extrapolated(monkeypatch):
    record, _ = _fake_measure(monkeypatch, naive_dims=784)
    assert record["naive_extrapolated_from_dims"] is None


def _sampling_record(model, naive_dims=None):
    return {"model": model, "weights": "random init", "naive_samples_per_second": 1.0, "fast_samples_per_second": 2.0,
            "speculative_samples_per_second": 3.0, "fast_over_naive": 2.0, "speculative_over_naive": 3.0,
            "speculative_over_fast": 1.5, "acceptance_rate": 0.5, "gamma": 4, "draft": "fvsbn",
            "naive_extrapolated_from_dims": naive_dims, "device": "cpu", "threads": 1}


def test_an_extrapolated_naive_rate_is_starred_and_explained():
    table = sampling.markdown_table([_sampling_record("nade", 16), _sampling_record("made")])
    assert "| nade | random init | 1* |" in table and "| made | random init | 1 |" in table
    assert "the first 16 of 784 full passes" in table


def test_the_sampling_table_keeps_the_models_of_earlier_runs(tmp_path, monkeypatch):
    (tmp_path / "sampling-cpu.json").write_text(json.dumps([_sampling_record("nade", 16)]))
    monkeypatch.setattr(sampling, "measure", lambda name, draft, args, device, train_x: _sampling_record(name))
    monkeypatch.setattr(sys, "argv", ["sampling.py", "--models", "fvsbn", "--train-seconds", "0", "--results",
                                      str(tmp_path)])
    sampling.main()
    records = json.loads((tmp_path / "sampling-cpu.json").read_text())
    assert [r["model"] for r in records] == ["nade", "fvsbn"]
    assert (tmp_path / "sampling-cpu.md").read_text() == sampling.markdown_table(records) + "\n"


# -- dynamic_draws.py --------------------------------------------------------------------------

def test_the_draws_are_scored_on_their_own_seeds_and_summarized(monkeypatch):
    pixels = torch.randint(0, 256, (6, 2, 3), generator=torch.Generator().manual_seed(1)).float()
    monkeypatch.setattr(dynamic_draws, "load_splits", lambda name, data_dir: ({"test": pixels}, None))
    monkeypatch.setattr(dynamic_draws, "evaluate",
                        lambda model, x, split, batch_size=1000: SimpleNamespace(nll_nats=float(x.sum())))
    recorded = torch.ones(6, 1, 2, 3)
    result = SimpleNamespace(model=None, data=SimpleNamespace(test=recorded, train_source=torch.zeros(9, 6)),
                             best_epoch=4)
    config = SimpleNamespace(data=SimpleNamespace(eval_binarization_seed=1234))
    args = argparse.Namespace(draws=4, data_dir=None)
    record = dynamic_draws.test_draws("fvsbn", config, result, args, False, CPU)
    probabilities = pixels.reshape(6, -1) / 255
    scores = [float(torch.bernoulli(probabilities, generator=torch.Generator().manual_seed(10_000 + i)).sum())
              for i in range(4)]
    assert len(set(scores)) > 1
    assert record["draw_mean_nll_nats"] == pytest.approx(sum(scores) / 4)
    mean = sum(scores) / 4
    assert record["draw_sd_nll_nats"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in scores) / 3))
    assert (record["draw_min_nll_nats"], record["draw_max_nll_nats"]) == (min(scores), max(scores))
    assert record["draw_seeds"] == "10000..10003" and record["draws"] == 4
    assert record["recorded_draw_nll_nats"] == 36.0 and record["recorded_draw_seed"] == 1234
    assert record["train_images"] == 9 and record["best_epoch"] == 4 and record["note"] == ""


def test_the_protocol_run_shares_the_nll_benchmarks_folder_and_its_data(monkeypatch, tmp_path):
    seen = []

    class FakeTrainer:
        def __init__(self, config, run_dir, *args, **kwargs):
            self.run_dir = run_dir

        def fit(self):
            seen.append((self.run_dir, genzoo.training.make_training_data))
            return "result"

    monkeypatch.setattr(dynamic_draws, "Trainer", FakeTrainer)
    original = genzoo.training.make_training_data
    args = argparse.Namespace(runs=str(tmp_path), data_dir=None)
    assert dynamic_draws.train("fvsbn", None, False, args, CPU) == "result"
    assert dynamic_draws.train("fvsbn", None, True, args, CPU) == "result"
    # binarized_mnist.py trains the dynamic protocol in <runs>/<model>-dynamic
    assert seen == [(tmp_path / "fvsbn-dynamic", original),
                    (tmp_path / "fvsbn-dynamic-60k", dynamic_draws.training_data_with_valid)]


def test_a_run_on_train_plus_valid_is_kept_beside_the_protocols(monkeypatch, tmp_path):
    monkeypatch.setattr(dynamic_draws, "train", lambda model, config, with_valid, args, device: with_valid)
    monkeypatch.setattr(dynamic_draws, "test_draws", lambda model, config, with_valid_result, args, with_valid, device:
                        {"model": model, "train_images": 60000 if with_valid else 50000})
    monkeypatch.setattr(sys, "argv", ["dynamic_draws.py", "--models", "fvsbn", "--with-valid", "--results", str(tmp_path)])
    dynamic_draws.main()
    assert json.loads((tmp_path / "dynamic-draws.json").read_text()) == [
        {"model": "fvsbn", "train_images": 50000}, {"model": "fvsbn", "train_images": 60000}]


# -- flows.py ----------------------------------------------------------------------------------

def test_the_sampling_rate_is_images_over_the_median_seconds(monkeypatch):
    drawn = []
    model = SimpleNamespace(sample=lambda batch, generator: drawn.append(batch))
    monkeypatch.setattr(flows, "median_seconds", lambda draw, repeats, warmup: (draw(), 2.0)[1])
    assert flows.sampling_rate(model, 10, CPU) == 5.0
    assert drawn == [10]


@pytest.fixture
def fake_flow_run(monkeypatch, tmp_path):
    seen = {}

    def run(model_name, dataset, data_kind, eval_draws=0):
        model = genzoo.build_model("nice", (1, 2, 2), data_kind=data_kind)

        def fit(config, run_dir, device, data_dir, max_seconds, epochs):
            seen["fit"] = (config, run_dir)
            return SimpleNamespace(model=model, data=SimpleNamespace(test=torch.zeros(3, 1, 2, 2)), epochs_completed=2,
                                   best_epoch=1, stopped_because="x", train_seconds=1.0)

        monkeypatch.setattr(flows, "fit_or_resume", fit)
        monkeypatch.setattr(flows, "evaluate", lambda m, x, split, **kwargs: _evaluation(nll_nats=20.0))
        monkeypatch.setattr(flows, "sampling_rate", lambda m, batch, device: 123.0)
        args = argparse.Namespace(eval_draws=eval_draws, runs=str(tmp_path / "runs"), data_dir=None, max_seconds=0,
                                  epochs=0, sample_batch=5)
        return flows.run_one(model_name, dataset, args, CPU)

    return run, seen


def test_an_8bit_flow_record_gives_the_log_likelihood_of_the_unit_interval_data(fake_flow_run):
    run, _ = fake_flow_run
    record = run("nice", "mnist", "grayscale")
    # log p(y) for y = (x + u) / 256: the density of (x + u) times 256^D, D = 4
    assert record["log_likelihood_unit_interval_nats"] == pytest.approx(-20.0 + 4 * math.log(256))
    assert record["protocol"] == "uniform dequantization" and record["sampling_images_per_second"] == 123.0
    assert record["anchor"].startswith("4.36")


def test_a_binary_flow_record_has_no_unit_interval_figure_and_no_8bit_anchor(fake_flow_run):
    run, _ = fake_flow_run
    record = run("nice", "binarized-mnist", "binary")
    assert "log_likelihood_unit_interval_nats" not in record
    assert record["protocol"] == "static" and record["anchor"] == ""


def test_a_flow_run_gets_the_data_set_and_the_eval_draws_asked_for(fake_flow_run, tmp_path):
    run, seen = fake_flow_run
    run("nice", "binarized-mnist", "binary", eval_draws=3)
    config, run_dir = seen["fit"]
    assert config.data.name == "binarized-mnist" and config.model["eval_draws"] == 3
    assert "data_kind" not in config.model and run_dir == tmp_path / "runs" / "nice-binarized-mnist"


def test_the_flows_script_keeps_each_models_records_per_data_set(monkeypatch, tmp_path):
    monkeypatch.setattr(flows, "run_one", lambda model, dataset, args, device: {
        "model": model, "dataset": dataset, "nll_nats": 1.0, "bits_per_dim": 1.0, "dequantization": "uniform",
        "eval_draws": 1, "epochs": 1, "train_seconds": 60.0, "sampling_images_per_second": 1.0, "device": "cpu",
        "anchor": ""})
    monkeypatch.setattr(sys, "argv", ["flows.py", "--models", "nice", "--datasets", "mnist", "binarized-mnist",
                                      "--results", str(tmp_path)])
    flows.main()
    records = json.loads((tmp_path / "flows.json").read_text())
    assert [(r["model"], r["dataset"]) for r in records] == [("nice", "mnist"), ("nice", "binarized-mnist")]
    assert (tmp_path / "flows.md").read_text() == flows.markdown_table(records) + "\n"


def test_the_flows_table_is_sorted_and_marks_bounds():
    record = {"nll_nats": 1.0, "bits_per_dim": 0.5, "dequantization": "uniform", "eval_draws": 1, "epochs": 1,
              "train_seconds": 60.0, "sampling_images_per_second": 1.0, "device": "cpu", "anchor": ""}
    rows = flows.markdown_table([{**record, "model": "nice", "dataset": "mnist", "log_likelihood_unit_interval_nats": 9.0},
                                 {**record, "model": "glow", "dataset": "mnist"},
                                 {**record, "model": "nice", "dataset": "binarized-mnist"}]).splitlines()[2:5]
    assert [row.split(" | ")[:2] for row in rows] == [["| binarized-mnist", "nice"], ["| mnist", "glow"], ["| mnist", "nice"]]
    assert "| ≤ 1.00 | ≤ 0.5000 | uniform dequantization bound | 1 | ≥ 9.00 |" in rows[2]


# -- peer_style.py: the baselines are real autoregressive models ---------------------------------

def _per_example_nll(model, x):
    return torch.stack([model.loss(row[None]) for row in x])


@pytest.mark.parametrize("name", ["nade", "made", "fvsbn"])
def test_each_peer_style_baseline_is_a_normalized_distribution(name):
    """The baselines time the same work as genzoo's models only if they compute the same thing:
    an autoregressive NLL, exp(−loss) summing to 1 over all 2^D inputs."""
    torch.manual_seed(0)
    model, optimizer = peer_style.build(name, 4, {"hidden_size": 3, "hidden_sizes": [8]})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.5)
    x = all_binary(4, torch.float32)
    with torch.no_grad():
        nll = _per_example_nll(model, x)
        assert torch.exp(-nll.double()).sum().item() == pytest.approx(1.0, abs=1e-5)
        assert model.loss(x).item() == pytest.approx(nll.mean().item(), rel=1e-5)  # the batch mean
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 1e-3


def test_the_in_place_made_masks_its_weights_before_each_forward():
    model, _ = peer_style.build("made", 4, {"hidden_sizes": [8]})
    model.loss(all_binary(4, torch.float32))
    assert torch.equal(model.hidden.weight * (1 - model.mask_hidden), torch.zeros_like(model.hidden.weight))
    assert torch.equal(model.out.weight * (1 - model.mask_out), torch.zeros_like(model.out.weight))


# -- the published tables are the published records' ---------------------------------------------

RESULTS = common.RESULTS
README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("script, name", [(flows, "flows"), (sampling, "sampling-cpu")])
def test_the_published_tables_and_the_readme_show_the_records(script, name):
    table = script.markdown_table(json.loads((RESULTS / f"{name}.json").read_text())) + "\n"
    assert (RESULTS / f"{name}.md").read_text() == table
    assert table in README


SPEED_TABLES = [path for path in sorted(RESULTS.glob("speed-*.json")) if path.with_suffix(".md").exists()]


@pytest.mark.parametrize("path", SPEED_TABLES, ids=lambda path: path.name)
def test_each_speed_table_is_its_records(path):
    assert path.with_suffix(".md").read_text() == speed.markdown_table(json.loads(path.read_text())) + "\n"


@pytest.mark.parametrize("name", ["speed-cpu", "speed-cpu-middle-host", "speed-cpu-peer-speed-host"])
def test_the_readmes_speed_tables_are_the_records(name):
    assert speed.markdown_table(json.loads((RESULTS / f"{name}.json").read_text())) in README


@pytest.mark.parametrize("path", sorted(RESULTS.glob("speed-*.json")), ids=lambda path: path.name)
def test_each_published_speed_ratio_follows_from_its_record(path):
    record = json.loads(path.read_text())
    for name, entry in record["models"].items():
        peer = speed.PEER[name]
        assert entry["peer_quoted"] == peer
        assert entry["train_speedup_vs_peer_quoted"] == pytest.approx(
            entry["train_examples_per_second"] / peer["train_examples_per_second"], rel=1e-9)
        assert entry["sampling_speedup_vs_peer_quoted"] == pytest.approx(
            peer["sample16_seconds"] / entry["sample16_seconds_fast"], rel=1e-9)
        assert (entry["hyperparameters"], entry["train_batch_size"]) == (speed.CONFIGS[name][0], speed.CONFIGS[name][1])
    made = record["models"]["made"]
    if "train_flops_per_example_dense" in made:
        assert made["train_flops_per_example_dense"] == 5 * 2 * 784 * 8000
        assert made["train_gflops_executed"] / made["train_gflops_dense_equivalent"] == pytest.approx(
            made["train_flops_per_example_executed"] / made["train_flops_per_example_dense"], rel=1e-9)
    if "step_matmuls_ms" in made and "train_flops_per_example_dense" in made:
        assert made["step_matmuls_ms"] == pytest.approx(
            1e3 * 64 * made["train_flops_per_example_dense"] / (made["step_matmuls_gflops"] * 1e9), rel=1e-9)
    if "matmul_gflops_readings" in record and "matmul_gflops_interleaved" in made:
        assert record["matmul_gflops"] == record["matmul_gflops_readings"][1] == made["matmul_gflops_interleaved"]


def test_each_published_sampling_ratio_follows_from_its_rates():
    for r in json.loads((RESULTS / "sampling-cpu.json").read_text()):
        naive, fast, spec = r["naive_samples_per_second"], r["fast_samples_per_second"], r["speculative_samples_per_second"]
        assert r["fast_over_naive"] == pytest.approx(fast / naive, rel=1e-9)
        assert r["speculative_over_naive"] == pytest.approx(spec / naive, rel=1e-9)
        assert r["speculative_over_fast"] == pytest.approx(spec / fast, rel=1e-9)


def test_each_published_flow_figure_follows_from_its_nll():
    for r in json.loads((RESULTS / "flows.json").read_text()):
        D = 784
        if r["dataset"] == "mnist":
            assert r["log_likelihood_unit_interval_nats"] == pytest.approx(-r["nll_nats"] + D * math.log(256), rel=1e-12)
            assert r["bits_per_dim"] == pytest.approx(r["nll_nats"] / (D * math.log(2)), rel=1e-9)
        else:
            assert "log_likelihood_unit_interval_nats" not in r
