"""Stricter checks of the autoregressive models (FVSBN, NADE, MADE), the masked layers and the
NADE kernel's Python side, written where a mutation audit found the rest of the suite blind:
each test names the behaviour it pins down and derives its expected value independently."""
from __future__ import annotations

import math

import pytest
import torch

import genzoo
from conftest import all_binary, randomize
from genzoo.training import weight_l1_norm


# -- NADE: the L1 penalty covers W and V only ------------------------------------------------------------


def test_nade_l1_penalty_covers_its_two_weight_matrices_not_its_biases():
    """The trainer's L1 penalty of a NADE is Σ|W| + Σ|V|; the biases b and c are left out."""
    model = randomize(genzoo.build_model("nade", (6,), hidden_size=4).double(), seed=2)
    expected = model.W.abs().sum() + model.V.abs().sum()
    assert torch.allclose(weight_l1_norm(model), expected, rtol=0, atol=1e-12)
    assert {id(p) for p in model.penalized_weights()} == {id(model.W), id(model.V)}


# -- the categorical inverse CDF ------------------------------------------------------------------------


def test_inverse_cdf_takes_the_value_whose_interval_holds_u_with_closed_left_ends():
    """v with F(v − 1) ≤ u < F(v): a uniform exactly on a CDF step belongs to the next value.
    The probabilities 1/4, 1/4, 1/2 are exact in binary, so the steps 0.25 and 0.5 are too."""
    from genzoo.models.autoregressive.base import CategoricalAutoregressive

    log_probs = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64).log().expand(6, 3)
    u = torch.tensor([0.0, 0.2, 0.25, 0.49, 0.5, 0.999], dtype=torch.float64)
    values = CategoricalAutoregressive.inverse_cdf(log_probs, u)
    assert values.tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert values.dtype == u.dtype


def test_inverse_cdf_gives_the_last_value_the_cdfs_round_off():
    """A CDF whose total falls short of 1 (round-off in exp and cumsum) still maps every u < 1 to a
    value in 0..V−1: u above F(V − 1) takes the last value, never the out-of-range V."""
    from genzoo.models.autoregressive.base import CategoricalAutoregressive

    probs = torch.tensor([0.5, 0.25, 0.2499], dtype=torch.float64)  # sums to 0.9999
    u = torch.tensor([0.99995, 1 - 2**-53, 0.6], dtype=torch.float64)
    values = CategoricalAutoregressive.inverse_cdf(probs.log().expand(3, 3), u)
    assert values.tolist() == [2.0, 2.0, 1.0]


# -- the uniforms that drive sampling ----------------------------------------------------------------


@pytest.mark.parametrize("name, hp", [("fvsbn", {}), ("nade", {"hidden_size": 4}), ("made", {"hidden_sizes": [8]})])
def test_drawn_uniforms_are_in_the_models_dtype(name, hp):
    """``draw_uniforms`` hands out the uniforms in the model's dtype (float64 here, where torch.rand
    draws float32), the same values a float32 model gets, so that one seed fixes the samples."""
    model = genzoo.build_model(name, (5,), **hp).double()
    u = model.draw_uniforms(7, torch.Generator().manual_seed(3))
    assert u.dtype == torch.float64 and u.shape == (7, 5)
    single = genzoo.build_model(name, (5,), **hp).draw_uniforms(7, torch.Generator().manual_seed(3))
    assert single.dtype == torch.float32
    assert torch.equal(u, single.double())


# -- FVSBN: its initial state ----------------------------------------------------------------------------


def test_a_new_fvsbn_starts_with_independent_dimensions():
    """The weights start at zero (only the biases are random): every conditional logit is b_d
    whatever the input, so the initial model is a product of Bernoulli(σ(b_d))."""
    model = genzoo.build_model("fvsbn", (6,)).double()
    assert torch.equal(model.linear.weight, torch.zeros(6, 6))
    x = all_binary(6)
    assert torch.allclose(model.conditional_logits(x), model.linear.bias.expand(64, 6), rtol=0, atol=0)
    p = torch.sigmoid(model.linear.bias)
    expected = torch.where(x == 1, p.log(), (1 - p).log()).sum(1)
    assert torch.allclose(model.log_prob(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, hp", [
    ("fvsbn", {}), ("fvsbn", {"order": "spiral"}), ("nade", {"hidden_size": 4, "backend": "torch"}),
    ("nade", {"hidden_size": 4}), ("made", {"hidden_sizes": [8]}), ("made", {"hidden_sizes": [8], "num_masks": 2}),
    ("made", {"hidden_sizes": [8, 8], "direct_connections": True, "row_blocks_min_weights": 0}),
])
def test_a_uniform_equal_to_its_probability_draws_zero_in_every_sampler(name, hp):
    """x_d = 1[u_d < p_d] with a strict inequality, in the fast and the naive sampler alike: with
    every parameter zero each p_d is exactly 1/2, so u = 1/2 draws all zeros and u just below 1/2
    all ones (u_0 of a 2-mask MADE picks the mask: 1/4 and 3/4 rescale to 1/2)."""
    model = genzoo.build_model(name, (2, 3), **hp).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    half = torch.full((4, 6), 0.5)
    below = torch.full((4, 6), 0.5 - 2**-20)
    if getattr(model.config, "num_masks", 1) == 2:
        half[:, 0] = torch.tensor([0.25, 0.75, 0.25, 0.75])
        below[:, 0] = torch.tensor([0.25, 0.75, 0.25, 0.75]) - 2**-21
    for sampler in (model.sample_from_uniforms, model.sample_naive):
        assert torch.equal(sampler(half), torch.zeros(4, 6))
        assert torch.equal(sampler(below), torch.ones(4, 6))


# -- MADE: which layers are stored by row blocks ----------------------------------------------------------


def test_made_row_blocks_threshold_counts_a_layer_of_exactly_that_many_weights():
    """``row_blocks_min_weights`` is the smallest layer that is split: at D = 6 and H = 10 the two
    network layers have 60 weights each and the direct connections 36, so a threshold of 60 splits
    both network layers and leaves the direct layer dense, and 61 splits none. Either way the
    model is the same: its log-likelihood does not depend on how its layers are stored."""
    from genzoo.nn import MaskedLinear, RowBlockMaskedLinear

    def build(threshold):
        return genzoo.build_model("made", (6,), hidden_sizes=[10], direct_connections=True,
                                  row_blocks_min_weights=threshold).double()

    kinds = {t: [type(layer) for layer in build(t).masked_layers()] for t in (36, 60, 61)}
    assert kinds[36] == [RowBlockMaskedLinear] * 3
    assert kinds[60] == [RowBlockMaskedLinear, RowBlockMaskedLinear, MaskedLinear]
    assert kinds[61] == [MaskedLinear] * 3
    reference = randomize(build(61), seed=4)
    x = all_binary(6)
    for threshold in (36, 60):
        model = build(threshold)
        model.load_state_dict(reference.state_dict())
        assert torch.allclose(model.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-12)


def test_made_ensemble_loads_a_checkpoint_saved_before_the_sorted_flag_existed():
    """A K-mask checkpoint from before ``hidden_units_sorted`` was saved lacks that key; K masks
    never sort their units, so it loads unchanged (no missing key), with the same likelihood."""
    D = 5
    saved = randomize(genzoo.build_model("made", (D,), hidden_sizes=[7], num_masks=2).double(), seed=6).eval()
    state = {k: v.clone() for k, v in saved.state_dict().items() if k != "hidden_units_sorted"}
    model = genzoo.build_model("made", (D,), hidden_sizes=[7], num_masks=2).double().eval()
    model.load_state_dict(state)
    assert not bool(model.hidden_units_sorted)
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = all_binary(D)
    assert torch.allclose(model.log_prob(x), saved.log_prob(x), rtol=0, atol=1e-12)


def test_made_one_mask_training_leaves_the_mask_cycle_alone():
    """With one mask there is no cycle: ``training_log_prob`` is ``log_prob`` and the step counter
    stays at 0; with K masks an empty batch draws no mask and advances nothing either."""
    D = 4
    x = all_binary(D)
    one = randomize(genzoo.build_model("made", (D,), hidden_sizes=[6]).double(), seed=1).train()
    assert torch.allclose(one.training_log_prob(x), one.log_prob(x), rtol=0, atol=0)
    assert int(one.training_step) == 0
    ensemble = genzoo.build_model("made", (D,), hidden_sizes=[6], num_masks=3).double().train()
    assert ensemble.training_log_prob(x[:0]).shape == (0,)
    assert int(ensemble.training_step) == 0
    ensemble.training_log_prob(x)
    assert int(ensemble.training_step) == 1


# -- row-block layers: a frozen block ------------------------------------------------------------------


def test_row_block_layer_gives_each_block_its_own_gradient_when_another_is_frozen():
    """Each block's weights get a gradient as their own ``requires_grad`` asks: with the first
    block frozen the others still get exactly the dense masked layer's gradient rows."""
    from genzoo.nn import MaskedLinear, RowBlockMaskedLinear, row_blocks

    generator = torch.Generator().manual_seed(0)
    degrees_out = torch.randint(1, 9, (12,), generator=generator).sort().values
    mask = (degrees_out[:, None] >= torch.arange(1, 10)[None, :]).double()
    dense = MaskedLinear(9, 12, mask=mask).double()
    layer = RowBlockMaskedLinear.from_dense(dense, row_blocks(mask, 3))
    layer.weight_blocks[0].requires_grad_(False)
    x = torch.randn(5, 9, generator=generator, dtype=torch.float64)
    g = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    (dense(x) * g).sum().backward()
    assert layer.weight_blocks[0].grad is None
    for block, w in list(zip(layer.row_blocks, layer.weight_blocks))[1:]:
        assert w.grad is not None
        assert torch.allclose(w.grad, dense.weight.grad[block.start:block.end, :block.used], rtol=0, atol=1e-12)


def test_row_block_layer_refuses_blocks_with_a_gap_or_an_overlap_inside():
    """Blocks that start at 0 and end at the last row can still leave a gap or overlap between
    them, which would drop rows or count them twice: both are refused."""
    from genzoo.nn import MaskedLinear, RowBlock, RowBlockMaskedLinear

    dense = MaskedLinear(4, 6, mask=torch.ones(6, 4))
    for blocks in [(RowBlock(0, 2, 4, 4), RowBlock(3, 6, 4, 4)), (RowBlock(0, 4, 4, 4), RowBlock(2, 6, 4, 4))]:
        with pytest.raises(ValueError, match="gaps or overlaps"):
            RowBlockMaskedLinear.from_dense(dense, blocks)
