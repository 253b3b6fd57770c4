"""Checkpoints: round trip, refusal of corrupt, foreign and malicious files, atomic writes."""
from __future__ import annotations

import pytest
import torch

import genzoo
from conftest import randomize, random_input
from genzoo.checkpoint import FORMAT, CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint

CONFIG = {"model": {"name": "made", "hidden_sizes": [8], "num_masks": 2}, "data": {"name": "digits"}, "train": {}}

#: set by _run_payload when a malicious checkpoint is unpickled
EXECUTED: dict[str, bool] = {"ran": False}


def _run_payload(*args) -> str:
    """What a tampered checkpoint tries to run on load (a harmless stand-in for os.system)."""
    EXECUTED["ran"] = True
    return "pwned"


class Malicious:
    def __reduce__(self):
        return (_run_payload, ("echo pwned",))


def _payload(seed: int = 0) -> tuple[dict, genzoo.GenerativeModel]:
    model = randomize(genzoo.build_model("made", (1, 2, 3), hidden_sizes=[8], num_masks=2), seed=seed, std=0.5)
    payload = {"config": CONFIG, "data_shape": [1, 2, 3], "model": model.state_dict(), "epoch": 3,
               "best_valid_nll": 1.5, "rng": {"torch": torch.get_rng_state()}}
    return payload, model


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".pt." in p.name)


def test_round_trip(tmp_path):
    payload, model = _payload()
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(payload, path)
    assert path.is_file()
    assert _leftovers(path.parent) == []
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["format_version"] == 1
    assert loaded["epoch"] == 3 and loaded["best_valid_nll"] == 1.5 and loaded["data_shape"] == [1, 2, 3]
    assert torch.equal(loaded["rng"]["torch"], payload["rng"]["torch"])
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value)

    rebuilt = model_from_checkpoint(loaded, path)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    x = random_input(model, 10)
    model.eval(), rebuilt.eval()
    assert torch.equal(rebuilt.log_prob(x), model.log_prob(x))


def test_save_overwrites(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(_payload(0)[0], path)
    save_checkpoint({**_payload(1)[0], "epoch": 4}, path)
    assert load_checkpoint(path)["epoch"] == 4
    assert _leftovers(tmp_path) == []


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint file


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 100, b"\x80\x02}q\x00.", b"PK\x03\x04" + b"\x00" * 50],
    ids=["empty", "garbage", "pickle-of-nothing", "zip-header"],
)
def test_garbage_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(_payload()[0], path)
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 30, 100):
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match="corrupt") as info:
            load_checkpoint(path)
        # torch's own reason, its first sentence only: no advice about torch.load cut off mid-word
        assert str(info.value).endswith(")") and "If you are seeing this error" not in str(info.value)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="not a genzoo checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a genzoo checkpoint"):
        load_checkpoint(path)


def test_wrong_format_version(tmp_path):
    path = tmp_path / "future.pt"
    payload, _ = _payload()
    torch.save({**payload, "format": FORMAT, "format_version": 99}, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


@pytest.mark.parametrize("missing", ["config", "data_shape", "model"])
def test_incomplete_checkpoint(tmp_path, missing):
    payload, _ = _payload()
    del payload[missing]
    path = tmp_path / "partial.pt"
    save_checkpoint(payload, path)
    with pytest.raises(CheckpointError, match=f"lacks '{missing}'"):
        load_checkpoint(path)


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    path = tmp_path / "evil.pt"
    payload, _ = _payload()
    torch.save({**payload, "format": FORMAT, "format_version": 1, "extra": Malicious()}, path)

    EXECUTED["ran"] = False
    with pytest.raises(CheckpointError, match="corrupt or not a genzoo checkpoint"):
        load_checkpoint(path)
    assert EXECUTED["ran"] is False, "loading the checkpoint executed code from it"

    # control: the file really does carry live code, which an unsafe load would run
    torch.load(path, weights_only=False)
    assert EXECUTED["ran"] is True
    EXECUTED["ran"] = False


def test_model_from_checkpoint_with_mismatched_weights(tmp_path):
    payload, _ = _payload()
    payload["config"] = {**CONFIG, "model": {"name": "made", "hidden_sizes": [9], "num_masks": 2}}
    with pytest.raises(CheckpointError, match="does not match model 'made'"):
        model_from_checkpoint(payload, "x.pt")


@pytest.mark.parametrize(
    "model_config",
    [{"name": "nosuch"}, {"name": "made", "hidden_sizes": "big"}, {"hidden_sizes": [8]}],
    ids=["unknown-model", "bad-hyperparameter", "no-name"],
)
def test_model_from_checkpoint_with_invalid_config(model_config):
    payload, _ = _payload()
    payload["config"] = {**CONFIG, "model": model_config}
    with pytest.raises(CheckpointError, match="invalid model config"):
        model_from_checkpoint(payload, "x.pt")


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    old_payload, old_model = _payload(0)
    save_checkpoint(old_payload, path)
    old_bytes = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    new_payload, _ = _payload(1)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(new_payload, path)
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert _leftovers(tmp_path) == [], "a temporary file was left behind"
    loaded = load_checkpoint(path)
    for key, value in old_model.state_dict().items():
        assert torch.equal(loaded["model"][key], value)


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    """A KeyboardInterrupt mid-write is not an Exception, and must be cleaned up as well."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(_payload(0)[0], path)
    old_bytes = path.read_bytes()

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_payload(1)[0], path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert _leftovers(tmp_path) == []


def test_save_writes_beside_the_target_then_renames(tmp_path, monkeypatch):
    """While torch.save runs, the target still holds the old checkpoint."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(_payload(0)[0], path)
    old_bytes = path.read_bytes()
    real_save = torch.save
    seen = {}

    def spying_save(obj, f, *args, **kwargs):
        seen["target_during_write"] = path.read_bytes()
        seen["file"] = getattr(f, "name", None)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spying_save)
    save_checkpoint({**_payload(1)[0], "epoch": 9}, path)
    monkeypatch.undo()
    assert seen["target_during_write"] == old_bytes
    assert load_checkpoint(path)["epoch"] == 9
    assert _leftovers(tmp_path) == []


def test_a_full_disk_inside_torchs_zip_writer_is_an_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch's writer turns the OSError into "RuntimeError: ... unexpected pos 3008 vs 2902", which
    reached the user as a traceback with exit code 1."""
    import errno

    path = tmp_path / "last.pt"
    old_payload, _ = _payload(0)
    save_checkpoint(old_payload, path)
    before = path.read_bytes()

    def full_disk_save(obj, f, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3008 vs 2902")

    monkeypatch.setattr(torch, "save", full_disk_save)
    new_payload, _ = _payload(1)
    with pytest.raises(OSError) as info:
        save_checkpoint(new_payload, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
