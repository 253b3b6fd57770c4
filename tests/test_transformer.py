"""The causal Transformer: autoregressive by its attention mask, KV-cached sampling identical to
the uncached one, dropout only in training. (Normalization over all 2^8 inputs, gradients, state
round trips and input checks come from the generic tests in test_models.py.)"""
from __future__ import annotations

import pytest
import torch

import genzoo
from conftest import randomize
from genzoo.models.autoregressive.transformer import raster_grid

TINY = {"num_layers": 2, "num_heads": 2, "embed_dim": 8}


def build(shape, seed: int = 0, std: float = 0.5, **hp) -> genzoo.GenerativeModel:
    return randomize(genzoo.build_model("transformer", shape, **{**TINY, **hp}).double(), seed=seed, std=std).eval()


@pytest.mark.parametrize("shape", [(1, 3, 4), (7,)], ids=["image", "flat"])
def test_logit_i_depends_only_on_inputs_before_i(shape):
    """∂ℓ_i/∂x_j = 0 for every j ≥ i (the pixel embedding is differentiable in x), and the
    check is not vacuous: every ℓ_i with i ≥ 1 depends on x_{i−1} and on x_0."""
    model = build(shape, seed=1)
    D = model.num_dims
    x = torch.randint(0, 2, (D,), generator=torch.Generator().manual_seed(0)).double()
    jacobian = torch.autograd.functional.jacobian(lambda v: model.conditional_logits(v[None])[0], x)
    assert jacobian.shape == (D, D)
    on_or_after = torch.triu(torch.ones(D, D, dtype=torch.bool))  # j ≥ i
    assert torch.all(jacobian[on_or_after] == 0)
    assert (torch.diagonal(jacobian, offset=-1).abs() > 1e-8).all()
    assert (jacobian[1:, 0].abs() > 1e-8).all()


def test_a_leaky_mask_would_be_caught(monkeypatch):
    """Negative control: with the causal mask dropped, the same Jacobian test fails."""
    from genzoo.models.autoregressive import transformer as module

    attention = torch.nn.functional.scaled_dot_product_attention
    model = build((5,), seed=2)
    x = torch.ones(5, dtype=torch.float64)
    monkeypatch.setattr(module.F, "scaled_dot_product_attention",
                        lambda q, k, v, dropout_p=0.0, is_causal=False, **kw: attention(q, k, v, dropout_p=dropout_p))
    jacobian = torch.autograd.functional.jacobian(lambda v: model.conditional_logits(v[None])[0], x)
    assert jacobian.triu().abs().max() > 1e-8


@pytest.mark.parametrize("shape", [(1, 4, 5), (9,)], ids=["image", "flat"])
def test_kv_cached_sampling_equals_naive_sampling(shape):
    model = build(shape, seed=3, std=0.7)
    u = torch.rand(64, model.num_dims, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    naive = model.sample_naive(u)
    cached = model.sample_from_uniforms(u)
    assert torch.equal(cached, naive)
    assert 0.05 < naive.mean() < 0.95 and len(naive.unique(dim=0)) > 30  # not a degenerate model


def test_cached_logits_equal_full_pass_for_blocks_of_several_tokens():
    """The cache also takes several new positions at once (explicit offset causal mask)."""
    model = build((1, 3, 4), seed=4, std=1.0)
    x = torch.randint(0, 2, (6, 12), generator=torch.Generator().manual_seed(2)).double()
    full = model.conditional_logits(x)
    inputs = model._inputs(x)
    cache = model.new_cache(len(x))
    pieces = [model.logits_cached(inputs[:, a:b], cache) for a, b in [(0, 1), (1, 5), (5, 6), (6, 12)]]
    assert cache.length == 12
    assert torch.allclose(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-12)


def test_cached_sampling_in_float32_matches_too():
    model = randomize(genzoo.build_model("transformer", (1, 4, 4), **TINY), seed=5, std=0.5).eval()
    u = torch.rand(32, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.sample_from_uniforms(u), model.sample_naive(u))


def test_dropout_is_active_in_training_and_off_in_eval():
    model = build((1, 3, 4), seed=6, dropout=0.5)
    x = torch.randint(0, 2, (4, 12), generator=torch.Generator().manual_seed(4)).double()
    model.train()
    a, b = model.log_prob(x), model.log_prob(x)
    assert not torch.equal(a, b), "dropout=0.5 in training should make log_prob random"
    model.eval()
    c, d = model.log_prob(x), model.log_prob(x)
    assert torch.equal(c, d)
    no_dropout = build((1, 3, 4), seed=6, dropout=0.0)
    assert torch.allclose(c, no_dropout.log_prob(x), rtol=0, atol=1e-12)


def test_positions_are_two_dimensional():
    assert raster_grid((1, 28, 28)) == (28, 28)
    assert raster_grid((1, 3, 4)) == (3, 4)
    assert raster_grid((10,)) == (1, 10)
    model = genzoo.build_model("transformer", (1, 3, 4), **TINY)
    assert model.row_embedding.num_embeddings == 3 and model.column_embedding.num_embeddings == 4
    assert model.rows.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert model.columns.tolist() == [0, 1, 2, 3] * 3


@pytest.mark.parametrize(
    "hp, key",
    [({"embed_dim": 10, "num_heads": 4}, "num_heads"), ({"num_layers": 0}, "num_layers"),
     ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout"), ({"embed_dim": 0}, "embed_dim")],
)
def test_bad_hyperparameters_name_the_key(hp, key):
    with pytest.raises(ValueError, match=key):
        genzoo.build_model("transformer", 4, **hp)
