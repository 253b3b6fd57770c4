"""Bad config input fails with one ConfigError naming the file or key and the problem, never a
traceback from deeper down (a TypeError, an IsADirectoryError, a UnicodeDecodeError, ...)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from genzoo.cli import main
from genzoo.config import ConfigError, DataConfig, RunConfig, TrainConfig, load_run_config, run_config_from_dict


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


# 1. a scalar where a table belongs


@pytest.mark.parametrize("line, table, kind", [
    ("model = 3", "model", "an integer"),
    ("train = 5", "train", "an integer"),
    ('data = "digits"', "data", "a string"),
    ("train = [1, 2]", "train", "a list"),
    ("data = true", "data", "true/false"),
])
def test_a_scalar_where_a_table_belongs_is_refused(tmp_path, line, table, kind):
    path = _write(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"[{table}] must be a table (e.g. [{table}] " in message
    assert message.endswith(f"got {kind}")


def test_a_string_data_table_is_not_read_character_by_character():
    with pytest.raises(ConfigError, match=r"\[data\] must be a table") as info:
        run_config_from_dict({"data": "digits"}, where="checkpoint")
    assert "unknown key 'd'" not in str(info.value)
    assert str(info.value).startswith("checkpoint: ")


def test_a_run_config_that_is_not_a_table_is_refused():
    with pytest.raises(ConfigError, match=r"checkpoint: a run config must be a table .*got a list"):
        run_config_from_dict([1, 2], where="checkpoint")


def test_the_cli_reports_a_scalar_table_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, 'data = "digits"\n')
    code = main(["train", "made", "--config", str(path), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [f'genzoo: error: {path}: [data] must be a table (e.g. [data] name = "digits"), got a string']


# 2. a path that cannot be read


def test_a_directory_is_not_a_config_file(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a directory, not a TOML file") as info:
        load_run_config(folder)
    assert str(folder) in str(info.value)


def test_the_cli_reports_a_directory_config_in_one_line(tmp_path, capsys):
    code = main(["train", "made", "--config", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [f"genzoo: error: config file {tmp_path} is a directory, not a TOML file"]


def test_an_unreadable_config_file_is_named(tmp_path, monkeypatch):
    path = _write(tmp_path, "[train]\nepochs = 1\n")

    # monkeypatched, not chmod 000: the tests may run as root, who reads any file
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match="cannot read config file .*: Permission denied") as info:
        load_run_config(path)
    assert str(path) in str(info.value)


def test_a_missing_config_file_is_still_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_run_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


# 3. bytes that are not UTF-8


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xff at position 0\)") as info:
        load_run_config(path)
    assert str(path) in str(info.value)


def test_utf8_text_beyond_ascii_still_loads(tmp_path):
    path = _write(tmp_path, '# données ü\n[data]\nname = "digits-é.npy"\n')
    assert load_run_config(path).data.name == "digits-é.npy"


# 4. infinite floats where only a finite value makes sense


@pytest.mark.parametrize("key, problem", [
    ("lr", "lr must be a positive finite number"),
    ("adam_eps", "adam_eps must be a positive finite number"),
    ("weight_decay", "weight_decay must be a non-negative finite number"),
    ("l1_penalty", "l1_penalty must be a non-negative finite number"),
    ("grad_clip", "grad_clip must be a non-negative finite number"),
])
@pytest.mark.parametrize("value", ["inf", "+inf", "nan"])
def test_infinite_or_nan_floats_are_refused(tmp_path, key, problem, value):
    path = _write(tmp_path, f"[train]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=problem) as info:
        load_run_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["lr", "adam_eps", "weight_decay", "l1_penalty", "grad_clip"])
def test_infinite_floats_are_refused_in_python_too(key):
    with pytest.raises(ConfigError, match=f"train: {key} must be .*finite number.*, got inf"):
        TrainConfig(**{key: math.inf})


def test_the_cli_refuses_an_infinite_learning_rate_before_training(tmp_path, capsys):
    code = main(["train", "made", "--data", "digits", "--lr", "inf", "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == ["genzoo: error: train: lr must be a positive finite number, got inf"]
    assert not (tmp_path / "run").exists()


def test_an_infinite_max_seconds_still_means_no_limit(tmp_path):
    # like 0, inf never stops a run: it is a meaningful value, not an error
    assert load_run_config(_write(tmp_path, "[train]\nmax_seconds = inf\n")).train.max_seconds == math.inf
    with pytest.raises(ConfigError, match="max_seconds must be non-negative"):
        TrainConfig(max_seconds=-math.inf)


def test_fitting_epochs_to_an_infinite_budget_is_refused():
    # fitting divides the time left by the epoch time: an infinite budget cannot be divided up
    with pytest.raises(ConfigError, match="fit_epochs_to_max_seconds needs a time budget: .*finite"):
        TrainConfig(max_seconds=math.inf, fit_epochs_to_max_seconds=True)


# 5. RunConfig built in Python with the wrong types


@pytest.mark.parametrize("kwargs, field_name, expected, got", [
    ({"model": "fvsbn"}, "model", "a dict of the model's name", "got str 'fvsbn'"),
    ({"data": {"name": "digits"}}, "data", "a DataConfig", "got dict {'name': 'digits'}"),
    ({"data": "digits"}, "data", "a DataConfig", "got str 'digits'"),
    ({"train": {"epochs": 1}}, "train", "a TrainConfig", "got dict {'epochs': 1}"),
])
def test_run_config_refuses_fields_of_the_wrong_type(kwargs, field_name, expected, got):
    with pytest.raises(ConfigError) as info:
        RunConfig(**kwargs)
    message = str(info.value)
    assert message.startswith(f"RunConfig: {field_name} must be {expected}")
    assert message.endswith(got)
    assert "names no model" not in message


def test_run_config_of_the_right_types_still_builds():
    config = RunConfig(model={"name": "fvsbn"}, data=DataConfig(name="digits"), train=TrainConfig(epochs=1))
    assert config.model_name == "fvsbn" and config.data.name == "digits"
