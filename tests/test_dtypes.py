"""Unusual but legitimate tensors and dtypes: a changed default dtype, half precision (refused),
CPU autocast, integer and complex input, empty batches, and the memory of scoring many rows."""
from __future__ import annotations

import pytest
import torch

import genzoo
from conftest import all_binary


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_nades_kernel_keeps_float32_buffers_under_a_float64_default(float64_default):
    """Its buffers took the default dtype, and the C code read their doubles as floats: wrong
    log_prob, gradients and samples, silently."""
    from genzoo.kernels.nade import nade_kernel_available

    model = genzoo.build_model("nade", (6,), hidden_size=5).float()
    if not nade_kernel_available(torch.zeros(1, dtype=torch.float32)):
        pytest.skip("the NADE C kernel cannot be built here")
    reference = genzoo.build_model("nade", (6,), hidden_size=5, backend="torch").float()
    reference.load_state_dict(model.state_dict())
    x = all_binary(6).float()
    assert torch.allclose(model.log_prob(x), reference.log_prob(x), atol=1e-5)
    samples = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert set(samples.unique().tolist()) <= {0.0, 1.0}


def test_glow_builds_in_the_default_dtype(float64_default):
    """Its 1×1 convolutions were float32 whatever the default, so a float64 default broke Glow."""
    model = genzoo.build_model("glow", (1, 4, 4), hidden_channels=4, steps_per_level=1, data_kind="real")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert torch.isfinite(model.log_prob(torch.randn(3, 1, 4, 4))).all()
    assert model.sample(2).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["made", "glow", "vqvae"])
def test_half_precision_models_are_refused_in_one_line(name, dtype):
    hp = {"made": {"hidden_sizes": [8]}, "glow": {"hidden_channels": 4, "steps_per_level": 1},
          "vqvae": {"architecture": "mlp", "hidden_size": 8, "latent_positions": 2, "num_codes": 4, "code_dim": 2,
                    "prior_hidden_sizes": [8]}}[name]
    model = genzoo.build_model(name, (1, 4, 4), **hp).to(dtype)
    x = torch.zeros(2, 1, 4, 4)
    for call in (lambda: model.log_prob(x), lambda: model.loss(x), lambda: model.sample(2)):
        with pytest.raises(TypeError, match=f"parameters are {str(dtype).removeprefix('torch.')}; .*float32"):
            call()


def test_a_row_block_made_trains_under_cpu_autocast():
    """The blocks' backward mixed bfloat16 gradients with float32 weights and failed."""
    model = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[500])
    assert type(model.layers[0]).__name__ == "RowBlockMaskedLinear"
    x = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(x)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_integer_input_reaches_a_float64_model_exactly_and_complex_input_is_refused():
    model = genzoo.build_model("nice", (2,), hidden_size=4, hidden_layers=1, data_kind="real").double()
    big = torch.tensor([[16777217, 0]], dtype=torch.int64)  # 2**24 + 1: not a float32
    assert torch.equal(model.flatten_input(big), torch.tensor([[16777217.0, 0.0]], dtype=torch.float64))
    with pytest.raises(TypeError, match="complex"):
        genzoo.build_model("fvsbn", (2,)).log_prob(torch.tensor([[1 + 5j, 0j]]))


def test_an_empty_batch_of_codes_or_examples_through_a_vqvae():
    for architecture in ("mlp", "conv"):
        model = genzoo.build_model("vqvae", (1, 4, 4), architecture=architecture, hidden_size=8, latent_positions=2,
                                   hidden_channels=4, downsample=1, num_codes=4, code_dim=2, prior_hidden_sizes=[8])
        codes = model.encode(torch.zeros(0, 1, 4, 4))
        assert codes.shape == (0, *model.grid)
        assert model.decode(codes).shape == (0, 1, 4, 4)


def test_the_iwae_bound_takes_rows_a_block_at_a_time(monkeypatch):
    """All rows at once held (chunk, B, D) tensors: about 6 GB for 10,000 MNIST rows. The blocks
    give the same values as one pass."""
    import genzoo.models.latent.vae as vae_module

    model = genzoo.build_model("vae", (6,), hidden_sizes=[8], latent_sizes=[2], eval_samples=40,
                               eval_chunk=10).double().eval()
    x = all_binary(6)
    with torch.no_grad():
        whole = model.log_prob(x)
    seen = []
    real = type(model).log_weights
    monkeypatch.setattr(vae_module, "IWAE_VALUES_PER_PASS", 10 * 6 * 16)  # 16 rows a pass
    monkeypatch.setattr(type(model), "log_weights", lambda self, part, d, *a: seen.append(len(part)) or real(self, part, d, *a))
    with torch.no_grad():
        blocked = model.log_prob(x)
    assert max(seen) == 16 and torch.allclose(blocked, whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, shape", [("made", (1, 2, 3)), ("transformer", (1, 2, 3)), ("pixelcnn", (1, 2, 3)),
                                         ("nade", (1, 2, 3)), ("fvsbn", (1, 2, 3))])
def test_the_uniform_samplers_take_uniforms_of_any_float_dtype_and_shape(name, shape):
    """u of another dtype than the model's failed inside a layer; an empty u crashed PixelCNN."""
    from conftest import tiny_hyperparameters

    model = genzoo.build_model(name, shape, **tiny_hyperparameters(name)).eval()
    u = torch.rand(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = model.sample_naive(u.float())
    for sampler in (model.sample_naive, model.sample_from_uniforms):
        assert torch.equal(sampler(u), expected)
        assert torch.equal(sampler(u.reshape(5, *shape)), expected)
        assert sampler(u[:0]).shape == (0, 6)
        with pytest.raises(ValueError, match=r"uniforms have shape \(5, 7\); this model draws \(B, 6\)"):
            sampler(torch.rand(5, 7))
