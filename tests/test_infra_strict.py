"""Strict checks of the infrastructure (found missing by mutation testing): the data folder's
precedence, sha256-checked downloads of more than one block, device resolution, seeding, the
kernel cache's keys and digests, the eval-mode sampler, and the model registry."""
from __future__ import annotations

import hashlib
import io
import random
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import genzoo
from genzoo import kernels
from genzoo.data import DataError

# -- the data folder ---------------------------------------------------------------------------------


def test_an_empty_data_dir_or_genzoo_data_counts_as_unset(tmp_path, monkeypatch):
    """`--data-dir ""` and `GENZOO_DATA=` (an unset shell variable expanded) mean "not chosen": they
    must not become Path("") -- the current working folder -- which would scatter data sets."""
    from genzoo.data import data_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GENZOO_DATA", "")
    assert data_dir() == tmp_path / "cache" / "genzoo"
    assert data_dir("") == tmp_path / "cache" / "genzoo"
    monkeypatch.setenv("GENZOO_DATA", str(tmp_path / "env"))
    assert data_dir("") == tmp_path / "env"
    assert data_dir(None) == tmp_path / "env"


def test_the_data_folder_expands_a_tilde_from_either_source(tmp_path, monkeypatch):
    """A quoted "~/data" (in a config file or an environment variable) is the home folder's."""
    from genzoo.data import data_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENZOO_DATA", "~/env-data")
    assert data_dir() == tmp_path / "home" / "env-data"
    assert data_dir("~/explicit") == tmp_path / "home" / "explicit"


# -- downloads (no network: urlopen is faked) --------------------------------------------------------


class _Response(io.BytesIO):
    def __init__(self, data: bytes, length: str | None):
        super().__init__(data)
        self.headers = {} if length is None else {"Content-Length": length}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(monkeypatch, data: bytes, length: str | None = "auto", seen: list | None = None):
    def urlopen(url, timeout=None):
        if seen is not None:
            seen.append(timeout)
        return _Response(data, str(len(data)) if length == "auto" else length)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


#: more than the 1 MiB the download reads and hashes at a time
_LARGE = bytes(range(256)) * (3 * 4096 + 17)


def test_a_download_of_several_blocks_is_counted_and_hashed_whole(tmp_path, monkeypatch):
    """Length and sha256 are of the whole transfer, not of its last (or first) 1 MiB block: a
    correct 3 MiB file is accepted, and one differing only in its last byte is refused."""
    from genzoo.data.download import find_or_download, sha256_of

    assert len(_LARGE) > 3 * (1 << 20)
    _serve(monkeypatch, _LARGE)
    good = hashlib.sha256(_LARGE).hexdigest()
    path = find_or_download("big.bin", "http://example.invalid/big.bin", good, tmp_path, "demo")
    assert path.read_bytes() == _LARGE and sha256_of(path) == good

    tampered = _LARGE[:-1] + b"\x00"
    _serve(monkeypatch, tampered)
    with pytest.raises(DataError, match="the server sent a different file"):
        find_or_download("other.bin", "http://example.invalid/other.bin", good, tmp_path, "demo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_sha256_of_reads_the_whole_file(tmp_path):
    from genzoo.data.download import sha256_of

    path = tmp_path / "f"
    path.write_bytes(_LARGE)
    assert sha256_of(path) == hashlib.sha256(_LARGE).hexdigest()
    path.write_bytes(b"")
    assert sha256_of(path) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("length", [None, "0"], ids=["no header", "zero"])
def test_a_missing_or_zero_content_length_leaves_the_decision_to_the_sha256(tmp_path, monkeypatch, length):
    """A server that sends no length (or a 0, as some proxies do for a streamed body) is not refused
    for it: the sha256 decides."""
    from genzoo.data.download import find_or_download

    data = b"0 1 1 0\n" * 50
    _serve(monkeypatch, data, length)
    path = find_or_download("f.amat", "http://example.invalid/f.amat", hashlib.sha256(data).hexdigest(), tmp_path, "demo")
    assert path.read_bytes() == data


def test_a_download_creates_its_folder(tmp_path, monkeypatch):
    """The data folder (~/.cache/genzoo on a first run) may not exist yet."""
    from genzoo.data.download import find_or_download

    data = b"content"
    _serve(monkeypatch, data)
    folder = tmp_path / "not" / "yet"
    path = find_or_download("f.bin", "http://example.invalid/f.bin", hashlib.sha256(data).hexdigest(), folder, "demo")
    assert path == folder / "f.bin" and path.read_bytes() == data


def test_a_download_has_a_timeout(tmp_path, monkeypatch):
    """Without one, a stalled server hangs a training run forever."""
    from genzoo.data.download import find_or_download

    seen: list = []
    data = b"content"
    _serve(monkeypatch, data, seen=seen)
    find_or_download("f.bin", "http://example.invalid/f.bin", hashlib.sha256(data).hexdigest(), tmp_path, "demo")
    assert len(seen) == 1 and seen[0] is not None and 0 < seen[0] < 3600


def test_a_url_urllib_refuses_is_a_data_error(tmp_path, monkeypatch):
    """urlopen raises ValueError for a URL it cannot parse (a mistyped mirror): a DataError that
    names the URL, not a traceback."""
    from genzoo.data.download import find_or_download

    def urlopen(url, timeout=None):
        raise ValueError(f"unknown url type: {url!r}")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="could not be downloaded from htp:/bad"):
        find_or_download("f.bin", "htp:/bad", "0" * 64, tmp_path, "demo")
    assert list(tmp_path.iterdir()) == []


# -- devices and seeding -------------------------------------------------------------------------------


def test_auto_picks_cuda_exactly_when_torch_sees_a_gpu(monkeypatch):
    from genzoo.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_cuda_index_must_be_below_the_device_count(monkeypatch):
    """With two GPUs, cuda:0 and cuda:1 exist and cuda:2 does not (an off-by-one would let it through
    to fail later, when the model moves there)."""
    from genzoo.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="torch sees 2 CUDA devices"):
        resolve_device("cuda:2")
    for name in ("gpu", "CPU", "mps", ""):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(name)


def test_seed_everything_seeds_all_three_generators_with_the_seed_itself():
    """Python's, numpy's and torch's generators, each from the seed given (numpy's from it mod 2**32,
    the range numpy accepts: a seed of 2**31 + 5 is not the same run as a seed of 5)."""
    from genzoo.devices import seed_everything

    seed = 2**31 + 5
    seed_everything(seed)
    drawn = (random.random(), np.random.random(), torch.rand(()).item())
    expected = (random.Random(seed).random(), np.random.RandomState(seed).random_sample(),
                torch.rand((), generator=torch.Generator().manual_seed(seed)).item())
    assert drawn == expected
    seed_everything(2**32 + 7)  # beyond numpy's range: reduced, not refused
    assert np.random.random() == np.random.RandomState(7).random_sample()


def test_flush_subnormal_floats_turns_subnormal_results_into_zero():
    from genzoo.devices import flush_subnormal_floats

    tiny = torch.tensor([1e-30], dtype=torch.float32)
    try:
        if not flush_subnormal_floats():
            pytest.skip("this CPU cannot flush subnormal floats")
        assert (tiny * 1e-10).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
    assert (tiny * 1e-10).item() != 0.0  # the check can fail: unflushed, the product is subnormal


# -- the eval-mode sampler -----------------------------------------------------------------------------


def test_a_sampler_that_raises_still_restores_every_mode():
    """sample() puts the model in eval mode for the draw; an error inside the model's sampler (here a
    keyword it does not take) must not leave a model that was training in eval mode, where the
    trainer's next steps would silently run without dropout or batch statistics."""
    model = genzoo.build_model("transformer", (6,), num_layers=1, num_heads=2, embed_dim=4, dropout=0.5)
    model.train()
    child = next(m for m in model.modules() if m is not model)
    child.eval()
    modes = [m.training for m in model.modules()]
    assert True in modes and False in modes
    with pytest.raises(TypeError):
        model.sample(2, no_such_option=1)
    assert [m.training for m in model.modules()] == modes


def test_the_sampler_runs_in_eval_mode_without_autograd(monkeypatch):
    """What the model's own _sample sees: every module in eval mode and gradients off; afterwards the
    modes are back."""
    model = genzoo.build_model("made", (5,), hidden_sizes=[8])
    model.train()
    seen = []

    def _sample(n, generator, **options):
        seen.append(([m.training for m in model.modules()], torch.is_grad_enabled()))
        return torch.zeros(n, 5)

    monkeypatch.setattr(model, "_sample", _sample)
    model.sample(3)
    assert seen == [([False] * len(list(model.modules())), False)]
    assert all(m.training for m in model.modules())


def test_samples_of_a_float64_model_carry_no_graph():
    model = genzoo.build_model("realnvp", (4,), data_kind="real").double()
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and not x.requires_grad and x.grad_fn is None


def test_sample_of_zero_keeps_the_models_dtype_and_shape():
    model = genzoo.build_model("fvsbn", (1, 2, 3)).double()
    empty = model.sample(0)
    assert empty.shape == (0, 1, 2, 3) and empty.dtype == torch.float64


@pytest.mark.parametrize("n, error", [(-1, ValueError), (2.0, TypeError), (True, TypeError), ("3", TypeError)])
def test_sample_refuses_a_count_that_is_not_a_non_negative_int(n, error):
    model = genzoo.build_model("fvsbn", (4,))
    with pytest.raises(error, match="n must be a non-negative integer"):
        model.sample(n)


# -- build_model, the registry --------------------------------------------------------------------------


@pytest.mark.parametrize("data_shape", [b"\x01\x08", bytearray(b"\x04"), memoryview(b"\x04"), (1, 0), (0, 4), [], (np.int64(2), 0)])
def test_build_model_refuses_bytes_zero_sizes_and_no_sizes(data_shape):
    """bytes iterate as ints (b"\\x01\\x08" would pass for (1, 8)); a zero size or no size at all is a
    model of no dimensions."""
    with pytest.raises(ValueError, match="data_shape must be a tuple of positive integers"):
        genzoo.build_model("fvsbn", data_shape)


def test_an_integer_data_shape_of_any_kind_is_one_dimension():
    for size in (5, np.int32(5), torch.tensor(5)):
        assert genzoo.build_model("fvsbn", size).data_shape == (5,)


@pytest.mark.parametrize("hyperparameters, key", [
    ({"hidden_sizes": "abc"}, "hidden_sizes"),
    ({"hidden_size": 8}, "hidden_size"),
    ({"num_masks": 1.5}, "num_masks"),
    ({"num_masks": True}, "num_masks"),
])
def test_build_model_refuses_an_unknown_or_mistyped_hyperparameter_by_name(hyperparameters, key):
    """The documented contract: a ValueError naming the key (not a TypeError from the dataclass, nor a
    model built with a string where a list of sizes belongs)."""
    with pytest.raises(ValueError, match=key):
        genzoo.build_model("made", (6,), **hyperparameters)


def test_an_unknown_model_is_a_value_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'gpt'.*fvsbn"):
        genzoo.build_model("gpt", (4,))


def test_list_models_is_sorted_and_every_model_knows_its_registered_name():
    from genzoo.models.base import model_config_class

    names = genzoo.list_models()
    assert names == sorted(names) and len(set(names)) == len(names) and "made" in names
    for name in names:
        model = genzoo.build_model(name, (1, 4, 4)) if name not in ("pixelcnn", "gated-pixelcnn", "vqvae") else None
        cls = type(model) if model is not None else None
        if cls is not None:
            assert cls.name == name and isinstance(model.config, model_config_class(name))


def test_a_second_registration_of_a_name_is_refused():
    from genzoo.models.base import _REGISTRY, register_model

    before = dict(_REGISTRY)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("made", object)(type("Impostor", (genzoo.GenerativeModel,), {}))
    assert _REGISTRY == before


def test_model_info_reads_family_likelihoods_and_title_from_the_model_module():
    from genzoo.models.base import model_info

    glow = model_info("glow")
    assert (glow.family, glow.likelihood, glow.likelihood_on_real_data) == ("flows", "lower_bound", "exact")
    assert glow.likelihood_depends_on_data
    made = model_info("made")
    assert (made.family, made.likelihood, made.likelihood_on_real_data) == ("autoregressive", "exact", "exact")
    assert not made.likelihood_depends_on_data
    assert not made.title.endswith((" ", ".", ",", ":", ";")) and made.title.startswith("MADE")


def test_the_package_exports_load_model():
    assert "load_model" in genzoo.__all__ and callable(genzoo.load_model)


# -- the kernel loader and its cache ---------------------------------------------------------------------


@pytest.mark.parametrize("value, enabled", [("0", False), ("false", False), ("No", False), ("off", False),
                                            (" OFF ", False), ("FALSE", False), ("1", True), ("yes", True), ("", True)])
def test_kernels_are_switched_off_by_any_spelling_of_no(monkeypatch, value, enabled):
    monkeypatch.setenv("GENZOO_KERNELS", value)
    assert kernels.kernels_enabled() is enabled


def test_the_compiler_is_cc_from_the_environment_when_it_exists(monkeypatch, tmp_path):
    """$CC wins where it names a program; a $CC that does not exist is passed over (not handed to
    subprocess, where it would fail every build), and with no compiler at all there is none."""
    fake = tmp_path / "my-cc"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert kernels._compiler() == str(fake)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert kernels._compiler() != str(tmp_path / "no-such-cc")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert kernels._compiler() is None


def test_a_cache_folder_setting_expands_a_tilde(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", "~/kernel-cache")
    assert kernels._cache_folder() == (tmp_path / "kernel-cache").resolve()


class _FakeBuilds:
    """Stands in for the compiler and dlopen: each build writes a library file and its digest, as
    the real _build does, and records the target; ``broken`` targets fail to load."""

    def __init__(self, monkeypatch):
        self.built: list[Path] = []
        self.broken: set[str] = set()
        monkeypatch.setattr(kernels, "_build", self.build)
        monkeypatch.setattr(kernels.ctypes, "CDLL", self.open)

    def build(self, source, compiler, flags, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(" ".join(flags).encode())
        kernels._digest_path(target).write_text(kernels._file_sha256(target) + "\n")
        self.built.append(target)
        return True

    def open(self, path):
        if Path(path).name in self.broken:
            raise OSError("cannot load")
        return ("library", path)


def test_the_cache_key_covers_the_source_the_flags_the_compiler_and_the_cpu(monkeypatch, tmp_path):
    """A cached library is reused for exactly the same build and never for another: a changed
    kernel source, compiler version or CPU each get a library of their own (running code built for
    another CPU with -march=native can crash with SIGILL)."""
    fake = _FakeBuilds(monkeypatch)
    source = tmp_path / "k.c"
    source.write_text("int f(void) { return 1; }\n")
    folder = tmp_path / "cache"
    load = lambda version="cc 1": kernels._load_from(folder, "k", source, "cc", version)  # noqa: E731

    first = load()
    assert len(fake.built) == 1 and first == ("library", str(fake.built[0]))
    assert load() == first and len(fake.built) == 1  # cached: not built again
    load(version="cc 2")
    source.write_text("int f(void) { return 2; }\n")
    load()
    monkeypatch.setattr(kernels, "_cpu_signature", lambda: "flags : another cpu")
    load()
    assert len(fake.built) == 4 and len({p.name for p in fake.built}) == 4


def test_each_flag_set_has_its_own_library_and_one_that_does_not_load_falls_through(monkeypatch, tmp_path):
    """When dlopen refuses the best build (-march=native on a CPU the compiler misjudged), the loader
    tries the next flag set -- under a name of its own, not the refused library's."""
    fake = _FakeBuilds(monkeypatch)
    source = tmp_path / "k.c"
    source.write_text("int f(void) { return 1; }\n")
    monkeypatch.setattr(kernels, "_FLAG_SETS", [["-O3", "-march=native"], ["-O3"]])
    best = kernels._load_from(tmp_path / "a", "k", source, "cc", "cc 1")
    fake.broken.add(Path(best[1]).name)
    fallback = kernels._load_from(tmp_path / "b", "k", source, "cc", "cc 1")
    assert fallback is not None and Path(fallback[1]).name != Path(best[1]).name
    assert Path(fallback[1]).read_bytes() == b"-O3"


def test_a_digest_without_its_library_is_not_intact(tmp_path):
    library = tmp_path / "k.so"
    kernels._digest_path(library).write_text(hashlib.sha256(b"").hexdigest() + "\n")
    assert not kernels._intact(library)
    library.write_bytes(b"")
    assert kernels._intact(library)


def test_a_kernel_that_cannot_be_built_anywhere_falls_back_with_a_warning(monkeypatch, tmp_path):
    """Both the cache folder and the private temporary one unusable: the models fall back to
    PyTorch (None, with a warning), never an OSError from inside a model."""
    monkeypatch.setattr(kernels, "_compiler", lambda: "cc")

    def unusable(folder, *args):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(kernels, "_load_from", unusable)
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", str(tmp_path))
    with pytest.warns(UserWarning) as record:
        assert kernels.load.__wrapped__("nade") is None
    messages = [str(w.message) for w in record]
    assert any("cannot use the kernel cache folder" in m for m in messages)
    assert any("could not compile the nade kernel" in m for m in messages)


def test_the_cpu_signature_is_the_cpus_feature_flags():
    """-march=native compiles for the CPU's instruction-set extensions: the key must change with
    them, which the model name alone does not (a VM may hide AVX-512 on the same model)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    flags = [line for line in lines if line.startswith(("flags", "Features"))]
    if not flags:
        pytest.skip("/proc/cpuinfo lists no flags here")
    assert kernels._cpu_signature() == flags[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sample_refuses_half_precision_like_log_prob(dtype):
    model = genzoo.build_model("fvsbn", (4,)).to(dtype)
    with pytest.raises(TypeError, match="genzoo models run in float32 or float64"):
        model.sample(2)
    with pytest.raises(TypeError, match="genzoo models run in float32 or float64"):
        model.sample(0)


def test_load_model_defaults_to_the_best_checkpoint_on_the_cpu(monkeypatch):
    """genzoo.load_model(run) is the run's best model (the one its test NLL is reported for) on the
    CPU, whatever GPU is around: its defaults are handed to genzoo.training.load_model as such."""
    import genzoo.training

    calls = []
    monkeypatch.setattr(genzoo.training, "load_model", lambda *args: calls.append(args) or "model")
    assert genzoo.load_model("run") == "model"
    assert genzoo.load_model("run", "last", "cuda") == "model"
    assert calls == [("run", "best", "cpu"), ("run", "last", "cuda")]
