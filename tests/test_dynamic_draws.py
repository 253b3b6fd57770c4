"""benchmarks/dynamic_draws.py: the train + valid data it measures with, and the trainer left as it was."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import genzoo.training  # noqa: E402
from dynamic_draws import training_data_with_valid  # noqa: E402
from genzoo.config import DataConfig, load_run_config  # noqa: E402
from genzoo.data import make_training_data  # noqa: E402
from genzoo.data.registry import load_splits  # noqa: E402


@pytest.fixture
def gray_file(tmp_path):
    path = tmp_path / "gray.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (200, 4, 4)).astype(np.uint8))
    return str(path)


def test_train_plus_valid_appends_the_valid_images_probabilities(gray_file):
    config = DataConfig(name=gray_file, binarization="dynamic")
    protocol = make_training_data(config)
    both = training_data_with_valid(config)
    splits, _ = load_splits(gray_file)
    n = len(protocol.train_source)
    assert len(both.train_source) == n + len(splits["valid"])
    assert torch.equal(both.train_source[:n], protocol.train_source)
    assert torch.equal(both.train_source[n:], splits["valid"] / 255.0)
    # the recorded valid and test draws are the protocol's own
    assert torch.equal(both.valid, protocol.valid) and torch.equal(both.test, protocol.test)


def test_the_script_leaves_the_trainers_data_loader_as_it_found_it(monkeypatch, tmp_path):
    import dynamic_draws

    def failing_fit(self):
        assert genzoo.training.make_training_data is training_data_with_valid
        raise RuntimeError("stop")

    monkeypatch.setattr(genzoo.training.Trainer, "fit", failing_fit)
    args = type("Args", (), {"runs": str(tmp_path), "data_dir": None})()
    original = genzoo.training.make_training_data
    config = load_run_config(Path(dynamic_draws.REPO) / "configs" / "dynamic" / "fvsbn.toml")
    with pytest.raises(RuntimeError, match="stop"):
        dynamic_draws.train("fvsbn", config, True, args, torch.device("cpu"))
    assert genzoo.training.make_training_data is original
