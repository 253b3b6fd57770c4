"""Checkpoint checks pinned down where mutation testing found the other tests blind: the weights'
checksum covers their dtypes and shapes, not only their bytes."""
from __future__ import annotations

import pytest
import torch

from genzoo.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, weights_sha256

CONFIG = {"model": {"name": "fvsbn"}, "data": {"name": "digits"}, "train": {}}


def test_the_weights_checksum_covers_names_dtypes_and_shapes():
    """The same bytes read as another dtype or shape are other weights: a corrupt tensor header
    in the file must not pass the checksum."""
    w = torch.arange(12, dtype=torch.float32)
    base = weights_sha256({"w": w})
    assert weights_sha256({"w": w.clone()}) == base
    assert weights_sha256({"w": w.reshape(3, 4)}) != base
    assert weights_sha256({"w": w.reshape(4, 3)}) != weights_sha256({"w": w.reshape(3, 4)})
    assert weights_sha256({"w": w.view(torch.int32)}) != base
    assert weights_sha256({"v": w}) != base
    # the order the names come in is not part of the weights
    a, b = torch.ones(2), torch.zeros(3)
    assert weights_sha256({"a": a, "b": b}) == weights_sha256({"b": b, "a": a})


@pytest.mark.parametrize("change", [lambda t: t.reshape(2, 3), lambda t: t.view(torch.int32)], ids=["shape", "dtype"])
def test_a_checkpoint_whose_tensor_was_reinterpreted_is_refused(tmp_path, change):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"config": CONFIG, "data_shape": [6], "model": {"w": torch.linspace(0, 1, 6)}}, path)
    payload = load_checkpoint(path)
    payload["model"]["w"] = change(payload["model"]["w"])  # the same bytes, another header
    torch.save(payload, path)  # the checksum written with the original weights is kept
    with pytest.raises(CheckpointError, match="differ from the sha256 written with them"):
        load_checkpoint(path)


@pytest.mark.parametrize("shape", [[0], [1, 0, 8], [-2], [2.0], ["8"], "8", [True, 8]])
def test_a_checkpoint_with_an_impossible_data_shape_is_refused(tmp_path, shape):
    """A data shape holds positive integers: a 0 or negative size, a float, a string or a bool is damage."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"config": CONFIG, "data_shape": shape, "model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="its config, data shape or model weights are not what genzoo writes"):
        load_checkpoint(path)


def _resumable() -> dict:
    return {"optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "epoch": 2, "best_valid_nll": 3.5,
            "best_epoch": 1, "epochs_without_improvement": 1, "train_seconds": 0.25,
            "rng": {"data_order": torch.zeros(5, dtype=torch.uint8), "torch": torch.zeros(5, dtype=torch.uint8)}}


def test_check_resumable_accepts_what_the_trainer_writes():
    from genzoo.checkpoint import check_resumable

    check_resumable(_resumable(), "last.pt")
    check_resumable({**_resumable(), "best_valid_nll": float("inf"), "train_seconds": 3}, "last.pt")
    check_resumable({**_resumable(), "best_valid_nll": 4}, "last.pt")  # an NLL that happens to be whole


@pytest.mark.parametrize("key", ["epoch", "best_epoch", "epochs_without_improvement", "best_valid_nll", "train_seconds"])
def test_check_resumable_refuses_a_bool_where_a_number_belongs(key):
    """True is an int to isinstance, but no epoch count or NLL genzoo writes."""
    from genzoo.checkpoint import check_resumable

    with pytest.raises(CheckpointError, match=f"its '{key}' is a bool"):
        check_resumable({**_resumable(), key: True}, "last.pt")


@pytest.mark.parametrize("rng", [{}, {"torch": torch.zeros(5, dtype=torch.uint8)},
                                 {"data_order": torch.zeros(5, dtype=torch.uint8), "torch": [0, 1]}])
def test_check_resumable_refuses_missing_random_generator_states(rng):
    from genzoo.checkpoint import check_resumable

    with pytest.raises(CheckpointError, match="its random-generator states are missing"):
        check_resumable({**_resumable(), "rng": rng}, "last.pt")


@pytest.mark.parametrize("weights", [{"w": [0.0, 1.0]}, {"w": 1.5}, {3: torch.zeros(2)}], ids=["list", "float", "int-name"])
def test_a_checkpoint_whose_weights_are_not_named_tensors_is_a_checkpoint_error(tmp_path, weights):
    """Weights that are not str → tensor are damage: a one-line CheckpointError, not an
    AttributeError from deep inside the checksum or torch's loader."""
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "genzoo-checkpoint", "format_version": 1, "config": CONFIG, "data_shape": [2],
                "model": weights, "model_sha256": "0" * 64}, path)
    with pytest.raises(CheckpointError, match="its config, data shape or model weights are not what genzoo writes"):
        load_checkpoint(path)


def test_naming_the_file_keeps_an_error_that_already_names_one():
    """Only an error naming no file gets the target's name: one that names its own (the temporary
    file, a folder that could not be made) is passed on as it is."""
    import errno

    from genzoo.files import naming_the_file

    own = PermissionError(errno.EACCES, "Permission denied", "/run/checkpoints/last.pt.x1.tmp")
    assert naming_the_file(own, "/run/checkpoints/last.pt") is own
    named = naming_the_file(OSError(errno.ENOSPC, "No space left on device"), "/run/last.pt")
    assert (named.errno, named.filename) == (errno.ENOSPC, "/run/last.pt")
    bare = naming_the_file(OSError("disk gone"), "/run/last.pt")
    assert str(bare) == "/run/last.pt: disk gone"


def test_atomic_write_text_writes_utf8(tmp_path):
    """config.toml is TOML, UTF-8 by definition: a data path or model name beyond ASCII must come
    back as written (and load as a config)."""
    from genzoo.config import load_run_config
    from genzoo.files import atomic_write_text

    text = '[model]\nname = "made"\n\n[data]\nname = "données/σ-数.npy"\n'
    path = atomic_write_text(tmp_path / "config.toml", text)
    assert path.read_bytes() == text.encode("utf-8")
    assert load_run_config(path).data.name == "données/σ-数.npy"


def test_a_checkpoints_temporary_file_is_one_a_resume_would_clean_up(tmp_path):
    """A killed write leaves its temporary file behind; RunFolder.remove_partial_writes finds them
    by name (``*.pt*.tmp``), so the name atomic_write gives them must match."""
    from genzoo.files import atomic_write
    from genzoo.training import RunFolder

    run = RunFolder(tmp_path)
    seen = []

    def write(f):
        seen.extend(p.name for p in run.last.parent.iterdir())
        f.write(b"x")

    atomic_write(run.last, write)
    assert len(seen) == 1 and seen[0].startswith("last.pt.") and seen[0].endswith(".tmp")
    assert [p.name for p in run.last.parent.glob("*.pt*.tmp")] == []  # renamed into place
    (run.last.parent / seen[0]).write_bytes(b"half")  # as a killed process leaves it
    run.remove_partial_writes()
    assert sorted(p.name for p in run.last.parent.iterdir()) == ["last.pt"]
