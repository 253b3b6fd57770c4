"""The benchmark scripts' command lines: where they write, what they refuse, what their records say
about the machine and the command that made them."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import binarized_mnist  # noqa: E402
import common  # noqa: E402
import dynamic_draws  # noqa: E402
import flows  # noqa: E402
import sampling  # noqa: E402
import speed  # noqa: E402

SCRIPTS = [binarized_mnist, dynamic_draws, flows, sampling, speed]


def usage_error(script, argv, capsys) -> str:
    """The one-line error a script's parser stops ``argv`` with."""
    with pytest.raises(SystemExit) as stop:
        script.parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# -- --results: a trial run can write elsewhere than the published records ------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.__name__)
def test_every_script_writes_where_results_says_and_defaults_to_the_published_folder(script, tmp_path):
    assert script.parse_args([]).results == common.RESULTS
    assert script.parse_args(["--results", str(tmp_path)]).results == tmp_path


def test_a_trial_run_writes_its_records_under_results_and_names_its_threads(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fvsbn.toml").write_text('[model]\nname = "fvsbn"\n[data]\nname = "digits"\n'
                                                     '[train]\nepochs = 1\n')
    monkeypatch.setattr(binarized_mnist, "REPO", tmp_path)  # the configs folder
    argv = ["--models", "fvsbn", "--protocols", "static", "--threads", "1", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "binarized_mnist.py"), *argv])
    published = {path.name: path.stat().st_mtime_ns for path in common.RESULTS.iterdir()}
    threads = torch.get_num_threads()
    try:
        binarized_mnist.main()
    finally:
        torch.set_num_threads(threads)
    [record] = json.loads((tmp_path / "out" / "binarized-mnist.json").read_text())
    assert (tmp_path / "out" / "binarized-mnist.md").read_text().startswith("| protocol |")
    assert {path.name: path.stat().st_mtime_ns for path in common.RESULTS.iterdir()} == published
    assert record["device"].endswith(", 1 threads)")
    assert " --threads 1 " in record["command"]


def test_sampling_writes_under_results(tmp_path):
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(BENCHMARKS / "sampling.py"), "--models", "fvsbn", "--train-seconds", "0",
                    "--repeats", "1", "--naive-dims", "1", "--batch", "1", "--threads", "1", "--results", str(out)],
                   check=True, capture_output=True, cwd=tmp_path)
    assert json.loads((out / "sampling-cpu.json").read_text())[0]["model"] == "fvsbn"
    assert (out / "sampling-cpu.md").is_file()


# -- speed.py --name: a record kept under a host's name says the command that writes it -------------

def test_speed_name_chooses_the_files_and_defaults_to_the_device(tmp_path):
    cpu = torch.device("cpu")
    assert speed.record_paths(speed.parse_args([]), cpu) == (common.RESULTS / "speed-cpu.json",
                                                             common.RESULTS / "speed-cpu.md")
    args = speed.parse_args(["--name", "speed-cpu-some-host", "--results", str(tmp_path)])
    assert speed.record_paths(args, cpu) == (tmp_path / "speed-cpu-some-host.json", tmp_path / "speed-cpu-some-host.md")


def test_speed_name_is_a_file_stem(capsys):
    assert "--name is a file stem" in usage_error(speed, ["--name", "../elsewhere"], capsys)


SPEED_RECORDS = sorted(common.RESULTS.glob("speed-*.json"))


@pytest.mark.parametrize("path", SPEED_RECORDS, ids=lambda path: path.name)
def test_each_speed_records_command_writes_that_record(path):
    command = shlex.split(json.loads(path.read_text())["command"])
    assert command[:2] == ["python", "benchmarks/speed.py"]
    assert speed.record_paths(speed.parse_args(command[2:]), torch.device("cpu"))[0].name == path.name


# -- a model a script cannot run is refused before anything runs -----------------------------------

@pytest.mark.parametrize("script, argv, named, accepted", [
    (binarized_mnist, ["--models", "no-such-model"], "'no-such-model'", "fvsbn"),
    (binarized_mnist, ["--models", "made-ensemble", "--protocols", "dynamic"], "no dynamic config", "made"),
    (flows, ["--models", "no-such-model"], "'no-such-model'", "realnvp"),
    (dynamic_draws, ["--models", "no-such-model"], "'no-such-model'", "fvsbn"),
    (sampling, ["--models", "nade", "vae"], "'vae'", "nade"),
], ids=["binarized_mnist", "binarized_mnist-protocol", "flows", "dynamic_draws", "sampling"])
def test_a_model_without_what_the_script_needs_is_a_usage_error(script, argv, named, accepted, capsys):
    error = usage_error(script, argv, capsys)
    assert named in error and "accepted:" in error and accepted in error.split("accepted:")[1]


@pytest.mark.parametrize("script, option", [(sampling, "--repeats"), (speed, "--repeats"), (dynamic_draws, "--draws")])
def test_nothing_to_take_a_median_of_is_a_usage_error(script, option, capsys):
    assert f"argument {option}: must be at least 1, got 0" in usage_error(script, [option, "0"], capsys)


def test_every_default_model_is_accepted():
    for script in (binarized_mnist, flows, dynamic_draws, sampling):
        script.parse_args([])


def gpu_run(tmp_path, *arguments: str, python: str = "python3") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BENCHMARKS / "gpu_run.sh"), *arguments], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHON": python})


@pytest.mark.parametrize("arguments, says", [
    (["nosuch"], "no static config for model 'nosuch'"),
    (["made-ensemble", "dynamic"], "no dynamic config for model 'made-ensemble'"),
    (["fvsbn", "neither"], "PROTOCOL must be static or dynamic"),
])
def test_gpu_run_refuses_a_model_it_cannot_run_before_doing_anything(tmp_path, arguments, says):
    result = gpu_run(tmp_path, "out", *arguments)
    assert result.returncode == 2 and says in result.stderr and result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_gpu_run_takes_a_relative_out_dir_from_the_callers_folder(tmp_path):
    # PYTHON=true stands in for the training: the run then stops at copying its missing metrics
    gpu_run(tmp_path, "relative-out", "fvsbn", python="true")
    assert (tmp_path / "relative-out" / "fvsbn-static.log").is_file()
    assert not (REPO / "relative-out").exists()


# -- the machine and the command a record names ----------------------------------------------------

def test_a_cpu_is_named_by_its_model(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n")
    monkeypatch.setattr(common, "CPUINFO", cpuinfo)
    monkeypatch.setattr(common.platform, "processor", lambda: "")
    monkeypatch.setattr(common.platform, "machine", lambda: "x86_64")
    threads = torch.get_num_threads()
    assert common.device_description(torch.device("cpu")) == f"cpu (AMD EPYC 7B13, x86_64, {threads} threads)"
    monkeypatch.setattr(common, "CPUINFO", tmp_path / "none")  # no /proc: as before
    assert common.device_description(torch.device("cpu")) == f"cpu (x86_64, {threads} threads)"


def test_the_command_names_an_environment_that_set_the_thread_count(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "binarized_mnist.py"), "--models", "fvsbn"])
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert common.command_line() == "python benchmarks/binarized_mnist.py --models fvsbn"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert common.command_line() == "OMP_NUM_THREADS=1 python benchmarks/binarized_mnist.py --models fvsbn"


def test_the_command_of_a_script_outside_the_repository_is_its_full_path(monkeypatch, tmp_path):
    """A benchmark's main() called by a test runner installed outside the repository (or a copied
    script) used to fail with relative_to's ValueError before training anything."""
    outside = tmp_path / "runner.py"
    monkeypatch.setattr(sys, "argv", [str(outside), "--models", "fvsbn"])
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert common.command_line() == f"python {outside.resolve().as_posix()} --models fvsbn"


# -- flows' records name their protocol ------------------------------------------------------------

@pytest.mark.parametrize("data_kind, dequantization, expected", [
    ("binary", "uniform", "static"),
    ("grayscale", "uniform", "uniform dequantization"),
    ("grayscale", "variational", "variational dequantization"),
    ("real", "uniform", "continuous"),
])
def test_a_flow_record_names_its_protocol(data_kind, dequantization, expected):
    import genzoo

    model = genzoo.build_model("nice", (1, 4, 4), data_kind=data_kind, dequantization=dequantization)
    assert flows.protocol(model) == expected


@pytest.mark.parametrize("name", ["binarized-mnist.json", "flows.json", "dynamic-draws.json"])
def test_every_likelihood_record_names_its_protocol(name):
    assert all(record.get("protocol") for record in json.loads((common.RESULTS / name).read_text()))
