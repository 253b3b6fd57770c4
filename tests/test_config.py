"""Typed run configs read from TOML: every key checked, errors naming the key."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from genzoo.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    TrainConfig,
    build_dataclass,
    dump_toml,
    load_run_config,
    run_config_from_dict,
)

REPO = Path(__file__).resolve().parents[1]

GOOD = """
[model]
name = "made"
hidden_sizes = [32, 32]
num_masks = 2

[data]
name = "digits"

[train]
epochs = 3
lr = 0.01
batch_size = 50
lr_schedule = "cosine"
seed = 7
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_load_run_config(tmp_path):
    config = load_run_config(_write(tmp_path, GOOD))
    assert isinstance(config, RunConfig)
    assert config.model_name == "made"
    assert config.model_hyperparameters == {"hidden_sizes": [32, 32], "num_masks": 2}
    assert config.data == DataConfig(name="digits")
    assert config.train.epochs == 3 and config.train.batch_size == 50 and config.train.seed == 7
    assert config.train.lr == 0.01 and config.train.lr_schedule == "cosine"
    # unspecified keys take their defaults
    assert config.train.patience == TrainConfig().patience
    assert config.data.binarization == "none"


def test_an_int_is_accepted_for_a_float(tmp_path):
    config = load_run_config(_write(tmp_path, "[train]\nlr = 1\n"))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_empty_file_gives_the_defaults(tmp_path):
    config = load_run_config(_write(tmp_path, ""))
    assert config.train == TrainConfig() and config.data == DataConfig() and config.model == {}


def test_unknown_table(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown table \[trian\]"):
        load_run_config(_write(tmp_path, GOOD + "\n[trian]\nepochs = 1\n"))


def test_unknown_key_in_train(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, "[train]\nepochs = 2\nlearning_rate = 0.1\n"))
    message = str(info.value)
    assert "unknown key 'learning_rate'" in message and "[train]" in message
    assert "lr" in message  # the valid keys are listed


def test_unknown_key_in_data(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'binarisation'"):
        load_run_config(_write(tmp_path, '[data]\nbinarisation = "dynamic"\n'))


@pytest.mark.parametrize(
    "table, line, key",
    [
        ("train", "epochs = 0", "epochs"),
        ("train", "epochs = -3", "epochs"),
        ("train", "epochs = 2.5", "epochs"),
        ("train", "epochs = true", "epochs"),
        ("train", 'lr = "x"', "lr"),
        ("train", "lr = 0", "lr"),
        ("train", "lr = -0.1", "lr"),
        ("train", "batch_size = 0", "batch_size"),
        ("train", "eval_batch_size = 0", "eval_batch_size"),
        ("train", 'lr_schedule = "linear"', "lr_schedule"),
        ("train", "lr_decay = 1.5", "lr_decay"),
        ("train", "lr_decay = 0", "lr_decay"),
        ("train", "lr_milestones = [3, 2]", "lr_milestones"),
        ("train", "lr_milestones = [0, 2]", "lr_milestones"),
        ("train", 'lr_milestones = ["a"]', "lr_milestones"),
        ("train", 'lr_schedule = "multistep"', "lr_milestones"),
        ("train", "adam_eps = 0", "adam_eps"),
        ("train", "weight_decay = -1", "weight_decay"),
        ("train", "l1_penalty = -1e-4", "l1_penalty"),
        ("train", "grad_clip = -1", "grad_clip"),
        ("train", "patience = -1", "patience"),
        ("train", "eval_every = 0", "eval_every"),
        ("train", "max_seconds = -1", "max_seconds"),
        ("train", 'seed = "0"', "seed"),
        ("data", 'binarization = "static"', "binarization"),
        ("data", 'name = ""', "name"),
        ("data", "name = 3", "name"),
        ("data", "eval_binarization_seed = 1.5", "eval_binarization_seed"),
    ],
)
def test_bad_values_name_the_key(tmp_path, table, line, key):
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, f"[{table}]\n{line}\n"))
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_model_name_must_be_a_string(tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        load_run_config(_write(tmp_path, "[model]\nname = 3\n"))


def test_invalid_toml(tmp_path):
    path = _write(tmp_path, "[train\nepochs = = 2\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        load_run_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "nope.toml")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_dump_and_load_round_trip(tmp_path):
    config = RunConfig(
        model={"name": "made", "hidden_sizes": (8, 4), "order_agnostic": True, "mask_seed": 3},
        data=DataConfig(name='C:\\data\\my "digits".npy', binarization="dynamic", eval_binarization_seed=9),
        train=TrainConfig(epochs=5, lr=3e-4, lr_schedule="exponential", lr_decay=0.9, grad_clip=1.5, seed=11),
    )
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(config.to_dict()))
    loaded = load_run_config(path)
    assert loaded.data == config.data
    assert loaded.train == config.train
    assert loaded.model == {"name": "made", "hidden_sizes": [8, 4], "order_agnostic": True, "mask_seed": 3}


def test_dump_toml_refuses_unsupported_values():
    with pytest.raises(TypeError):
        dump_toml({"model": {"x": {"nested": 1}}})
    assert "x" not in dump_toml({"model": {"x": None}})


def test_run_config_from_dict_checks_like_the_file():
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        run_config_from_dict({"train": {"epoch": 3}})
    config = run_config_from_dict({"model": {"name": "nade"}, "train": {"epochs": 4}})
    assert config.model_name == "nade" and config.train.epochs == 4


def test_build_dataclass_types():
    @dataclasses.dataclass
    class Example:
        sizes: tuple[int, ...] = ()
        flag: bool = False
        rate: float = 1.0

    assert build_dataclass(Example, {"sizes": [1, 2], "flag": True, "rate": 2}) == Example((1, 2), True, 2.0)
    with pytest.raises(ConfigError, match=r"sizes\[1\] must be an integer"):
        build_dataclass(Example, {"sizes": [1, "2"]})
    with pytest.raises(ConfigError, match="flag must be true or false"):
        build_dataclass(Example, {"flag": 1})
    with pytest.raises(ConfigError, match="rate must be a number"):
        build_dataclass(Example, {"rate": True})


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.toml")) if (REPO / "configs").is_dir() else [],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_are_valid(path):
    from genzoo.models.base import model_config_class

    config = load_run_config(path)
    if "name" in config.model:
        build_dataclass(model_config_class(config.model_name), config.model_hyperparameters,
                        where=f"{path} [model]")


# -- what `genzoo list MODEL` reads from a config class ----------------------------------------------


@dataclasses.dataclass
class _Base:
    #: alpha and beta,
    #: described over two lines
    alpha: int = 1
    beta: str = "b"  # a plain comment is not documentation

    epsilon: int = 0  # after a blank line: not in alpha's run


@dataclasses.dataclass
class _Extended(_Base):
    #: a field of the subclass
    gamma: typing.Literal["x", "y"] = "x"
    #: another
    delta: tuple[int, ...] = (1, 2)
    zeta: int = 3  # in delta's run


def test_field_docs_read_the_doc_comments_of_a_class_and_its_bases():
    from genzoo.config import field_docs

    assert field_docs(_Extended) == {"alpha": "alpha and beta, described over two lines",
                                     "beta": "alpha and beta, described over two lines",
                                     "gamma": "a field of the subclass", "delta": "another", "zeta": "another"}


def test_field_docs_of_a_class_without_source_is_empty():
    from genzoo.config import field_docs

    made_up = dataclasses.make_dataclass("MadeUp", [("x", int, dataclasses.field(default=0))])
    assert field_docs(made_up) == {}


def test_field_kind_names_literal_choices_and_lists():
    from genzoo.config import field_kind

    hints = typing.get_type_hints(_Extended)
    assert field_kind(hints["gamma"]) == 'one of "x", "y"'
    assert field_kind(hints["delta"]) == "list of int"
    assert field_kind(hints["alpha"]) == "int"
