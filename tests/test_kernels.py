"""The fused C kernels (genzoo.kernels) against the PyTorch reference they replace, and their
fallback when no kernel can be built."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import genzoo
import genzoo.kernels as kernels
from conftest import all_binary, chisquare_p_value, randomize
from genzoo.kernels.nade import NADELogitsKernel, NADEMeanNLLKernel, nade_kernel_available, nade_sample_kernel
from genzoo.models.autoregressive.nade import _NADELogits

needs_nade_kernel = pytest.mark.skipif(
    not nade_kernel_available(torch.zeros(1)), reason="the NADE C kernel cannot be built here (no C compiler?)"
)


def _nade_parameters(D: int, H: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = ((H, D), (H,), (D, H), (D,))
    return [(torch.randn(*s, generator=g) * 0.7).requires_grad_() for s in shapes]


@needs_nade_kernel
@pytest.mark.parametrize("B, D, H, threads", [(1, 1, 1, 1), (5, 9, 3, 1), (37, 50, 13, 2), (64, 20, 33, 3)])
def test_nade_kernel_matches_the_reference_logits_and_all_gradients(B, D, H, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # one slice per thread: exercises the per-thread accumulators
    try:
        x = (torch.rand(B, D, generator=torch.Generator().manual_seed(1)) < 0.4).float()
        x[0, 0] = 0.3  # non-binary input: the kernel must use x's value, not just test for 1
        x.requires_grad_()
        params = _nade_parameters(D, H, seed=2)
        g = torch.randn(B, D, generator=torch.Generator().manual_seed(3))
        reference = _NADELogits.apply(x, *params, 4)
        fused = NADELogitsKernel.apply(x, *params)
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
        expected = torch.autograd.grad(reference, (x, *params), g)
        got = torch.autograd.grad(fused, (x, *params), g)
        for name, e, o in zip(["x", "W", "c", "V", "b"], expected, got):
            torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")
    finally:
        torch.set_num_threads(previous)


def _nade_input(kind: str, B: int, D: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "sparse":  # MNIST-like: a changes at few positions, long segments in the backward walk
        return (torch.rand(B, D, generator=g) < 0.13).float()
    if kind == "dense":
        return (torch.rand(B, D, generator=g) < 0.5).float()
    if kind == "ones":  # a changes at every d: segments of length one
        return torch.ones(B, D)
    if kind == "zeros":  # a never changes: one segment spans the whole walk
        return torch.zeros(B, D)
    if kind == "real":  # non-binary values (and some exact zeros): the kernel must use x's value
        x = torch.randn(B, D, generator=g) * 0.8
        return x.masked_fill_(torch.rand(B, D, generator=g) < 0.4, 0.0)
    raise ValueError(kind)


# B covers 1, exact blocks and block remainders (per thread) for block sizes 4, 8 and 16; H covers
# sizes below, at and above the kernel's vector width (the kernel pads H to a multiple of it).
@needs_nade_kernel
@pytest.mark.parametrize("kind", ["sparse", "dense", "ones", "zeros", "real"])
@pytest.mark.parametrize("B, D, H, threads", [(1, 3, 1, 1), (8, 11, 7, 1), (9, 30, 16, 1), (23, 29, 13, 1),
                                              (37, 40, 33, 2), (40, 17, 20, 3), (19, 1, 5, 2)])
@pytest.mark.parametrize("x_grad", [False, True], ids=["no-dx", "dx"])
def test_nade_kernel_gradients_match_float64_on_every_input_kind(kind, B, D, H, threads, x_grad):
    """Without dx the kernel folds gradients per segment of constant a; with dx it keeps dL/da exact
    at every d: both paths, on sparse, dense and non-binary inputs, against a float64 reference."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = _nade_input(kind, B, D, seed=B * D + H).requires_grad_(x_grad)
        params = _nade_parameters(D, H, seed=H)
        g = torch.randn(B, D, generator=torch.Generator().manual_seed(7))
        fused = NADELogitsKernel.apply(x, *params)
        inputs = (x, *params) if x_grad else tuple(params)
        got = torch.autograd.grad(fused, inputs, g)
        x64 = x.detach().double().requires_grad_(x_grad)
        params64 = [p.detach().double().requires_grad_() for p in params]
        reference = _NADELogits.apply(x64, *params64, 4)
        expected = torch.autograd.grad(reference, (x64, *params64) if x_grad else tuple(params64), g.double())
        torch.testing.assert_close(fused, reference.float(), rtol=1e-5, atol=2e-5)
        names = ["x", "W", "c", "V", "b"] if x_grad else ["W", "c", "V", "b"]
        for name, e, o in zip(names, expected, got):
            assert o.dtype == torch.float32 and o.shape == e.shape and o.is_contiguous(), name
            torch.testing.assert_close(o, e.float(), rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")
    finally:
        torch.set_num_threads(previous)


@needs_nade_kernel
@pytest.mark.parametrize("kind", ["sparse", "dense", "ones", "zeros", "real"])
@pytest.mark.parametrize("B, D, H, threads", [(1, 3, 1, 1), (8, 11, 7, 1), (9, 30, 16, 1), (23, 29, 13, 1),
                                              (37, 40, 33, 2), (40, 17, 20, 3), (19, 1, 5, 2)])
def test_nade_training_walk_matches_float64_loss_and_gradients(kind, B, D, H, threads):
    """The one-walk training pass (gradients from prefix sums, no backward walk) gives the mean
    -log p(x) and the gradients of W, c, V and b of a float64 reference, on every input kind."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = _nade_input(kind, B, D, seed=B * D + H)
        params = _nade_parameters(D, H, seed=H)
        loss = NADEMeanNLLKernel.apply(x, *params)
        got = torch.autograd.grad(2.5 * loss, params)  # backward scales the walk's gradients
        params64 = [p.detach().double().requires_grad_() for p in params]
        logits64 = _NADELogits.apply(x.double(), *params64, 4)
        reference = torch.nn.functional.binary_cross_entropy_with_logits(logits64, x.double(), reduction="sum") / B
        expected = torch.autograd.grad(2.5 * reference, params64)
        torch.testing.assert_close(loss.double(), reference.detach(), rtol=1e-5, atol=1e-5)
        for name, e, o in zip(["W", "c", "V", "b"], expected, got):
            assert o.dtype == torch.float32 and o.shape == e.shape, name
            torch.testing.assert_close(o, e.float(), rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")
    finally:
        torch.set_num_threads(previous)


@needs_nade_kernel
def test_nade_loss_takes_the_training_walk_only_when_gradients_follow(monkeypatch):
    import genzoo.models.autoregressive.nade as nade_module

    walks, walk = [], NADEMeanNLLKernel.apply
    monkeypatch.setattr(nade_module.NADEMeanNLLKernel, "apply", lambda *args: walks.append(1) or walk(*args))
    model = randomize(genzoo.build_model("nade", (10,), hidden_size=6), seed=1, std=0.5)
    x = (torch.rand(30, 10, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    reference = -model.log_prob(x).mean()
    torch.testing.assert_close(model.loss(x), reference, rtol=1e-6, atol=1e-5)
    assert walks == [1]
    with torch.no_grad():
        model.loss(x)  # no gradients: the logits kernel
    model.loss(x.clone().requires_grad_())  # x needs a gradient: the logits kernel and its dx path
    torch_backend = genzoo.build_model("nade", (10,), hidden_size=6, backend="torch")
    torch_backend.loss(x)
    assert walks == [1]
    with pytest.raises(ValueError, match="shape"):
        model.loss(x[:, :9])  # the input is still checked


@needs_nade_kernel
def test_nade_kernel_no_dx_and_dx_paths_agree_on_parameter_gradients():
    """The segment-folding path (training: x needs no gradient) and the exact per-d path (x needs
    one) compute the same parameter gradients, here at NADE's real size on MNIST-like input."""
    B, D, H = 21, 784, 50
    x = _nade_input("sparse", B, D, seed=11)
    params = _nade_parameters(D, H, seed=12)
    g = torch.randn(B, D, generator=torch.Generator().manual_seed(13))
    folded = torch.autograd.grad(NADELogitsKernel.apply(x, *params), params, g)
    exact = torch.autograd.grad(NADELogitsKernel.apply(x.clone().requires_grad_(), *params), params, g)
    for name, a, b in zip(["W", "c", "V", "b"], folded, exact):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


@needs_nade_kernel
def test_nade_kernel_backward_can_run_twice_on_one_graph():
    """The backward walk consumes a copy of the saved pre-activations, never the saved tensor."""
    x = (torch.rand(6, 10) < 0.5).float()
    params = _nade_parameters(10, 4, seed=5)
    out = NADELogitsKernel.apply(x, *params).sum()
    first = torch.autograd.grad(out, params, retain_graph=True)
    second = torch.autograd.grad(out, params)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


@needs_nade_kernel
def test_nade_kernel_sums_to_one_and_is_autoregressive():
    n = 8
    model = randomize(genzoo.build_model("nade", (n,), hidden_size=6, backend="kernel"), seed=7)
    total = model.log_prob(all_binary(n).float()).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-5)
    x = torch.rand(1, n, requires_grad=True)
    logits = model.conditional_logits(x)
    for i in range(n):
        (grad,) = torch.autograd.grad(logits[0, i], x, retain_graph=True)
        assert torch.all(grad[0, i:] == 0), f"logit {i} depends on x_j for some j >= {i}"
        if i > 0:
            assert grad[0, :i].abs().sum() > 0


@needs_nade_kernel
def test_nade_backends_agree_on_log_prob_and_loss_gradients():
    torch.manual_seed(0)
    kernel = genzoo.build_model("nade", (30,), hidden_size=9, backend="kernel")
    reference = genzoo.build_model("nade", (30,), hidden_size=9, backend="torch")
    reference.load_state_dict(kernel.state_dict())
    x = (torch.rand(11, 30) < 0.3).float()
    torch.testing.assert_close(kernel.log_prob(x), reference.log_prob(x), rtol=1e-5, atol=1e-4)
    kernel.loss(x).backward()
    reference.loss(x).backward()
    for (name, a), b in zip(kernel.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


@needs_nade_kernel
@pytest.mark.parametrize("B, D, H, threads", [(37, 50, 13, 2), (64, 20, 33, 3), (24, 300, 100, 2)])
def test_nade_kernel_sampler_draws_what_the_reference_samplers_draw(B, D, H, threads):
    """The same uniforms give the same samples as the PyTorch incremental sampler and the naive
    one (D full passes). The kernel draws with libm's expf where PyTorch's sigmoid is vectorized, so
    a draw whose uniform lies within a rounding error of its probability may differ: one sample of
    the batch is allowed to."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # blocks of 8 examples, a remainder, and one slice per thread
    try:
        kernel = randomize(genzoo.build_model("nade", (D,), hidden_size=H, backend="kernel"), seed=D, std=0.5).eval()
        reference = genzoo.build_model("nade", (D,), hidden_size=H, backend="torch").eval()
        reference.load_state_dict(kernel.state_dict())
        u = torch.rand(B, D, generator=torch.Generator().manual_seed(H))
        drawn = kernel.sample_from_uniforms(u)
        assert drawn.shape == (B, D) and 0.05 < drawn.mean().item() < 0.95
        for other in (reference.sample_from_uniforms(u), reference.sample_naive(u)):
            assert (drawn != other).any(dim=1).sum().item() <= 1
    finally:
        torch.set_num_threads(previous)


@needs_nade_kernel
def test_nade_kernel_samples_follow_the_model_distribution():
    """χ² test of the kernel's samples against exp(log_prob) on the 16 outcomes of n = 4, with the
    same samples rejected against another model's probabilities."""
    n, num = 4, 20_000
    model = randomize(genzoo.build_model("nade", (n,), hidden_size=5, backend="kernel"), seed=21).eval()
    other = randomize(genzoo.build_model("nade", (n,), hidden_size=5, backend="kernel"), seed=22).eval()
    probabilities = model.log_prob(all_binary(n).float()).exp().double()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    x = model.sample(num, generator=torch.Generator().manual_seed(1234))
    assert chisquare_p_value(x, probabilities) > 1e-3
    assert chisquare_p_value(x, other.log_prob(all_binary(n).float()).exp().double()) < 1e-6


@needs_nade_kernel
def test_nade_kernel_sampler_takes_the_uniforms_as_given():
    """u = 0 draws every x_d = 1 (p > 0) and u just below 1 draws every x_d = 0 (p < 1)."""
    params = [p.detach() for p in _nade_parameters(30, 7, seed=4)]
    assert torch.equal(nade_sample_kernel(torch.zeros(9, 30), *params), torch.ones(9, 30))
    assert torch.equal(nade_sample_kernel(torch.full((9, 30), 1 - 2**-24), *params), torch.zeros(9, 30))


def test_nade_auto_backend_uses_pytorch_for_float64():
    model = randomize(genzoo.build_model("nade", (5,), hidden_size=4).double(), seed=8)
    assert not nade_kernel_available(model.W)
    assert model.log_prob(all_binary(5)).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_nade_kernel_backend_refuses_what_it_cannot_run():
    model = genzoo.build_model("nade", (5,), hidden_size=4, backend="kernel").double()
    with pytest.raises(ValueError, match="backend 'kernel' needs float32"):
        model.log_prob(all_binary(5))
    with pytest.raises(ValueError, match="backend 'kernel' needs float32"):
        model.sample(3)


def test_nade_backend_is_checked_on_build():
    with pytest.raises(ValueError, match="backend must be one of auto, kernel, torch"):
        genzoo.build_model("nade", (5,), backend="cuda")


def test_kernel_loader_falls_back_without_a_compiler(monkeypatch):
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C compiler found"):
        assert kernels.load.__wrapped__("nade") is None


def test_kernel_loader_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("GENZOO_KERNELS", "0")
    assert kernels.load.__wrapped__("nade") is None


def test_kernel_loader_falls_back_when_compilation_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_compiler", lambda: "false")  # a "compiler" that always fails
    with pytest.warns(UserWarning, match="could not compile the nade kernel"):
        assert kernels.load.__wrapped__("nade") is None
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


@needs_nade_kernel
def test_kernel_loader_builds_into_its_cache_once(monkeypatch, tmp_path):
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", str(tmp_path))
    assert kernels.load.__wrapped__("nade") is not None
    built = sorted(tmp_path.iterdir())
    assert [p.name.split("-")[0] for p in built] == ["nade", "nade"]
    assert [p.suffixes[-1] for p in built] == [".so", ".sha256"]  # the library and its digest
    stamps = [p.stat().st_mtime_ns for p in built]
    assert kernels.load.__wrapped__("nade") is not None
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())] == stamps


def _best_library_path(tmp_path) -> Path:
    return next(p for p in tmp_path.iterdir() if p.suffix == ".so")


@needs_nade_kernel
@pytest.mark.parametrize("damage", ["garbage", "empty", "no digest"])
def test_a_damaged_cached_library_is_rebuilt_with_the_best_flags(monkeypatch, tmp_path, damage):
    """A damaged library used to be trusted (a truncated one crashes dlopen with SIGBUS) or, when
    dlopen refused it, skipped for a build with weaker flags, never rebuilt (27x slower NADE)."""
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", str(tmp_path))
    best = kernels.load.__wrapped__("nade")._name
    library = _best_library_path(tmp_path)
    if damage == "no digest":
        kernels._digest_path(library).unlink()
    else:
        # a new file renamed over it: writing into the library in place would truncate pages this
        # process has mapped (SIGBUS later, at exit)
        damaged = library.with_name("damaged.tmp")
        damaged.write_bytes(b"" if damage == "empty" else b"not an ELF file" * 64)
        os.replace(damaged, library)
    assert kernels.load.__wrapped__("nade")._name == best
    assert kernels._intact(library) and len(list(tmp_path.iterdir())) == 2


@needs_nade_kernel
def test_an_unusable_cache_folder_builds_in_a_temporary_one(monkeypatch, tmp_path):
    """A cache folder that cannot be created (here: under a file) used to make every NADE call
    fail; the kernel is built in a private temporary folder instead, with a warning."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", str(tmp_path / "a-file" / "kernels"))
    with pytest.warns(UserWarning, match="cannot use the kernel cache folder .*a-file/kernels"):
        library = kernels.load.__wrapped__("nade")
    assert library is not None and library.nade_lanes() >= 1


@pytest.mark.parametrize("value", ["", "  ", "."])
def test_the_kernel_cache_folder_is_absolute_and_an_empty_setting_is_unset(monkeypatch, tmp_path, value):
    """dlopen looks a name without a slash up on the system's library path, not in the folder
    the library was compiled into."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", value)
    folder = kernels._cache_folder()
    assert folder.is_absolute()
    if value.strip():
        assert folder == tmp_path.resolve()
    else:
        monkeypatch.delenv("GENZOO_KERNEL_CACHE")
        assert folder == kernels._cache_folder()


def test_an_interrupted_build_leaves_no_temporary_file(monkeypatch, tmp_path):
    monkeypatch.setenv("GENZOO_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_compiler", lambda: "cc")

    def interrupted(command, **kwargs):
        if "--version" in command:
            return subprocess.CompletedProcess(command, 0, "cc 1.0", "")
        raise KeyboardInterrupt  # Ctrl-C while the compiler runs

    monkeypatch.setattr(kernels.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kernels.load.__wrapped__("nade")
    assert list(tmp_path.iterdir()) == []


# -- threads ------------------------------------------------------------------------------------


@pytest.fixture
def two_torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_threads_for_kernels_gives_pytorch_one_thread_and_the_kernels_the_rest(two_torch_threads):
    assert kernels.kernel_threads() == 2
    with kernels.threads_for_kernels():
        assert (torch.get_num_threads(), kernels.kernel_threads()) == (1, 2)
        with kernels.threads_for_kernels():  # nested: the outer plan holds
            assert (torch.get_num_threads(), kernels.kernel_threads()) == (1, 2)
        assert (torch.get_num_threads(), kernels.kernel_threads()) == (1, 2)
    assert (torch.get_num_threads(), kernels.kernel_threads()) == (2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with kernels.threads_for_kernels():
            raise RuntimeError("boom")
    assert (torch.get_num_threads(), kernels.kernel_threads()) == (2, 2)


def _record_nade_kernel_threads(monkeypatch) -> list[tuple[int, int]]:
    """(kernel threads, PyTorch threads) at each split of a NADE kernel call's work."""
    import genzoo.kernels.nade as nade_kernels

    seen, slices = [], nade_kernels._slices

    def recording(n):
        seen.append((kernels.kernel_threads(), torch.get_num_threads()))
        return slices(n)

    monkeypatch.setattr(nade_kernels, "_slices", recording)
    return seen


@needs_nade_kernel
def test_nade_trains_and_evaluates_on_the_kernel_threads(two_torch_threads, monkeypatch, tmp_path):
    from conftest import tiny_run_config
    from genzoo.training import Trainer

    seen = _record_nade_kernel_threads(monkeypatch)
    Trainer(tiny_run_config("nade", epochs=1, model_hp={"hidden_size": 8}), tmp_path / "run", progress=False).fit()
    assert seen and set(seen) == {(2, 1)}  # every training and validation call: two kernel threads, PyTorch on one
    assert torch.get_num_threads() == 2  # restored after the run


@needs_nade_kernel
def test_nade_thread_plan_keeps_results_and_leaves_other_backends_alone(two_torch_threads):
    model = randomize(genzoo.build_model("nade", (12,), hidden_size=7), seed=3)
    x = (torch.rand(40, 12, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    outside = model.log_prob(x)
    with model.compute_threads():
        assert torch.get_num_threads() == 1
        torch.testing.assert_close(model.log_prob(x), outside, rtol=0, atol=0)  # the same slices
    reference = genzoo.build_model("nade", (12,), hidden_size=7, backend="torch")
    with reference.compute_threads():
        assert torch.get_num_threads() == 2  # PyTorch does its work: nothing to hand over


def test_the_kernel_cache_is_never_the_data_folder(monkeypatch, tmp_path):
    """With GENZOO_DATA at a shared data folder, NADE wrote compiled libraries into it."""
    monkeypatch.delenv("GENZOO_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("GENZOO_DATA", str(tmp_path / "shared-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kernels._cache_folder() == (tmp_path / "cache" / "genzoo" / "kernels").resolve()
