"""Row-block masked products (genzoo.nn.masked) and MADE's sorted hidden units that use them."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import genzoo
from conftest import all_binary, randomize
from genzoo.models.autoregressive.made import made_degrees, made_masks
from genzoo.nn import MaskedLinear, RowBlock, RowBlockMaskedLinear, row_blocks, row_blocks_fraction
from genzoo.nn.masked import MIN_UNMASKED_COLUMNS, row_block_linear


def staircase_mask(rows: int, cols: int, strict: bool, seed: int = 0) -> torch.Tensor:
    """A MADE-like mask with sorted row degrees: row r sees the columns of degree ≤ (or <) its own."""
    generator = torch.Generator().manual_seed(seed)
    out_degrees = torch.randint(1, cols, (rows,), generator=generator).sort().values
    in_degrees = torch.arange(1, cols + 1)
    compare = torch.gt if strict else torch.ge
    return compare(out_degrees[:, None], in_degrees[None, :]).double()


def random_mask(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < 0.5).double()


MASKS = {
    "staircase": lambda: staircase_mask(37, 23, strict=False),
    # wide enough that blocks have unmasked prefixes of MIN_UNMASKED_COLUMNS or more
    "wide-staircase": lambda: staircase_mask(40, 120, strict=False, seed=2),
    "strict-staircase": lambda: staircase_mask(23, 37, strict=True, seed=1),
    "lower-triangular": lambda: torch.ones(19, 19, dtype=torch.float64).tril(-1),
    "random": lambda: random_mask(17, 29),
    "all-zero-rows": lambda: torch.cat([torch.zeros(5, 11), torch.ones(6, 11)]).double(),
}


# -- row_blocks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("num_blocks", [1, 3, 8, 100])
def test_row_blocks_are_exact_bounds_of_each_block(kind, num_blocks):
    """Columns before ``full`` are 1 in every row of a block and ``full`` is the longest such
    prefix; columns from ``used`` on are 0 in every row and ``used`` is the smallest such bound."""
    mask = MASKS[kind]()
    blocks = row_blocks(mask, num_blocks)
    assert blocks[0].start == 0 and blocks[-1].end == len(mask)
    assert all(a.end == b.start for a, b in zip(blocks[:-1], blocks[1:]))
    assert len(blocks) == min(num_blocks, len(mask))
    for b in blocks:
        part = mask[b.start:b.end]
        assert (part[:, :b.full] == 1).all() and (part[:, b.used:] == 0).all()
        if b.full < mask.shape[1]:
            assert (part[:, b.full] == 0).any(), "full is not the longest all-ones prefix"
        if b.used > b.full:
            assert (part[:, b.used - 1] == 1).any(), "used is not the tightest bound"


def test_row_blocks_of_a_staircase_skip_about_half_of_it():
    mask = staircase_mask(800, 784, strict=False)
    assert row_blocks_fraction(row_blocks(mask, 1), tuple(mask.shape)) > 0.99
    fraction = row_blocks_fraction(row_blocks(mask, 8), tuple(mask.shape))
    assert 0.5 < fraction < 0.6


# -- the product and its gradients --------------------------------------------------------------------


def blocked_product(x, weight, bias, mask, blocks):
    """The row-block product of the full ``weight``'s blocks (views, so gradients reach ``weight``)."""
    block_weights = [weight[b.start:b.end, :b.used] for b in blocks]
    block_masks = [mask[b.start:b.end, :b.used] for b in blocks]
    return row_block_linear(x, block_weights, bias, block_masks, blocks)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("num_blocks", [1, 4, 100])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_row_block_product_and_gradients_equal_the_dense_masked_product(kind, num_blocks, bias):
    mask = MASKS[kind]()
    rows, cols = mask.shape
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(rows, generator=generator, dtype=torch.float64, requires_grad=True) if bias else None
    x = torch.randn(6, cols, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, rows, generator=generator, dtype=torch.float64)

    dense = F.linear(x, weight * mask, b)
    blocked = blocked_product(x, weight, b, mask, row_blocks(mask, num_blocks))
    assert torch.allclose(blocked, dense, rtol=0, atol=1e-12)
    inputs = [x, weight] + ([b] if bias else [])
    expected = torch.autograd.grad(dense, inputs, upstream)
    got = torch.autograd.grad(blocked, inputs, upstream)
    for name, e, g in zip(["x", "weight", "bias"], expected, got):
        assert torch.allclose(g, e, rtol=0, atol=1e-12), f"gradient of {name} differs"
    assert (got[1][mask == 0] == 0).all()


def test_the_wide_staircase_exercises_both_kinds_of_prefix():
    fulls = [b.full for b in row_blocks(MASKS["wide-staircase"](), 4)]
    assert min(fulls) < MIN_UNMASKED_COLUMNS <= max(fulls)


def test_row_block_product_passes_gradcheck():
    mask = staircase_mask(9, 6, strict=True)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(9, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=generator, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    blocks = row_blocks(mask, 3)
    assert torch.autograd.gradcheck(lambda x, w, b: blocked_product(x, w, b, mask, blocks), (x, weight, bias))


def row_block_layer(rows=12, cols=10, num_blocks=4, seed=0) -> RowBlockMaskedLinear:
    mask = staircase_mask(rows, cols, strict=False, seed=seed).float()
    return RowBlockMaskedLinear.from_dense(MaskedLinear(cols, rows, mask=mask), row_blocks(mask, num_blocks))


def test_row_block_layer_keeps_leading_dimensions_and_skips_unneeded_gradients():
    layer = row_block_layer()
    x = torch.randn(2, 3, 10)
    y = layer(x)
    assert y.shape == (2, 3, 12)
    assert torch.allclose(y, F.linear(x, layer.weight * layer.mask, layer.bias), atol=1e-6)
    y.sum().backward()  # x needs no gradient: only the weights' and the bias's are made
    assert all(w.grad is not None for w in layer.weight_blocks) and layer.bias.grad is not None and x.grad is None


def test_row_block_layer_stores_only_the_blocks_and_saves_the_full_weight():
    dense = MaskedLinear(10, 12, mask=staircase_mask(12, 10, strict=False).float())
    blocks = row_blocks(dense.mask, 4)
    layer = RowBlockMaskedLinear.from_dense(dense, blocks)
    assert [tuple(w.shape) for w in layer.weight_blocks] == [(b.end - b.start, b.used) for b in blocks]
    assert sum(w.numel() for w in layer.parameters()) == sum((b.end - b.start) * b.used for b in blocks) + 12
    assert torch.equal(layer.masked_weight(), dense.masked_weight())
    # every weight the mask lets through is kept; what no row of a block sees reads as zero
    kept = torch.zeros(12, 10, dtype=torch.bool)
    for b in blocks:
        kept[b.start:b.end, :b.used] = True
    assert torch.equal(layer.weight[kept], dense.weight[kept]) and (layer.weight[~kept] == 0).all()
    state = layer.state_dict()
    assert sorted(state) == ["bias", "weight"], "checkpoints hold the full weight, whatever the blocks"
    assert torch.equal(state["weight"], layer.weight)
    dense_copy = MaskedLinear(10, 12, mask=dense.mask)
    dense_copy.load_state_dict(state)
    assert torch.equal(dense_copy.masked_weight(), dense.masked_weight())
    other = row_block_layer(seed=0, num_blocks=3)  # other blocks of the same mask load it too
    other.load_state_dict(dense.state_dict())
    assert torch.equal(other.masked_weight(), dense.masked_weight())
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: the checkpoint has \(12, 9\)"):
        other.load_state_dict({"weight": torch.zeros(12, 9), "bias": torch.zeros(12)})
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict({"bias": torch.zeros(12)})


def test_row_block_layer_checks_its_blocks():
    mask = staircase_mask(12, 10, strict=False).float()
    dense = MaskedLinear(10, 12, mask=mask)
    assert dense.row_blocks is None and dense.active_row_blocks() is None
    with pytest.raises(ValueError, match="row blocks cover rows 0..6 with gaps or overlaps, the mask has 12"):
        RowBlockMaskedLinear.from_dense(dense, (RowBlock(0, 6, 3, 5),))
    last = row_blocks(mask, 1)[0]
    with pytest.raises(ValueError, match=f"ends at column {last.used - 1}, but the mask uses columns past it"):
        RowBlockMaskedLinear.from_dense(dense, (RowBlock(0, 12, 0, last.used - 1),))
    with pytest.raises(ValueError, match="mask has shape"):
        RowBlockMaskedLinear(torch.zeros(12, 10), None, torch.ones(12, 9), row_blocks(mask, 2))


# -- MADE: hidden units in order of degree ------------------------------------------------------------


def test_made_with_one_mask_numbers_hidden_units_in_order_of_degree():
    model = genzoo.build_model("made", (10,), hidden_sizes=[30, 20])
    degrees = model.mask_degrees(0)
    drawn = made_degrees(10, (30, 20), order_agnostic=False, seed=0)
    assert bool(model.hidden_units_sorted)
    for got, raw in zip(degrees[1:], drawn[1:]):
        assert torch.equal(got, raw.sort().values)
    assert torch.equal(degrees[0], drawn[0])
    ensemble = genzoo.build_model("made", (10,), hidden_sizes=[30], num_masks=3)
    assert not bool(ensemble.hidden_units_sorted), "K masks keep each mask's own drawn degrees"
    assert torch.equal(ensemble.mask_degrees(1)[1], made_degrees(10, (30,), False, seed=1)[1])


def _drawn_numbering_state(model) -> dict:
    """The model's state in the numbering of units as drawn, as saved before units were sorted."""
    cfg = model.config
    drawn = made_degrees(model.num_dims, cfg.hidden_sizes, cfg.order_agnostic, seed=cfg.mask_seed * 100_003)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "hidden_units_sorted"}
    previous = None
    for i, degrees in enumerate([*drawn[1:], None]):
        w, b = f"layers.{i}.weight", f"layers.{i}.bias"
        if previous is not None:
            state[w][:, previous] = state[w].clone()
        if degrees is not None:
            previous = torch.argsort(degrees, stable=True)
            state[w][previous] = state[w].clone()
            state[b][previous] = state[b].clone()
    return state


@pytest.mark.parametrize("saved_flag", [None, False], ids=["no-flag", "flag-false"])
@pytest.mark.parametrize("direct", [False, True], ids=["plain", "direct"])
def test_made_relabels_a_checkpoint_saved_in_the_drawn_numbering(direct, saved_flag):
    """A one-mask checkpoint whose units are numbered as drawn (saved before units were sorted:
    no ``hidden_units_sorted``, or False) loads relabelled, and gives the same log p(x)."""
    D = 6
    sorted_model = randomize(genzoo.build_model("made", (D,), hidden_sizes=[13, 9], direct_connections=direct,
                                                row_blocks_min_weights=0).double(), seed=3)
    old_state = _drawn_numbering_state(sorted_model)
    if saved_flag is not None:
        old_state["hidden_units_sorted"] = torch.tensor(saved_flag)
    assert not torch.equal(old_state["layers.0.weight"], sorted_model.state_dict()["layers.0.weight"])
    untouched = {k: v.clone() for k, v in old_state.items()}
    model = genzoo.build_model("made", (D,), hidden_sizes=[13, 9], direct_connections=direct,
                               row_blocks_min_weights=0).double()
    model.load_state_dict(old_state)
    assert bool(model.hidden_units_sorted)
    assert all(isinstance(layer, RowBlockMaskedLinear) for layer in model.masked_layers())
    x = all_binary(D)
    assert torch.allclose(model.log_prob(x), sorted_model.log_prob(x), rtol=0, atol=1e-10)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sorted_model.state_dict()[key]), key
    assert all(torch.equal(old_state[k], v) for k, v in untouched.items()), "the caller's tensors are not changed"


def test_made_refuses_a_one_mask_checkpoint_for_an_ensemble():
    one_mask = genzoo.build_model("made", (6,), hidden_sizes=[13])
    ensemble = genzoo.build_model("made", (6,), hidden_sizes=[13], num_masks=3)
    with pytest.raises(RuntimeError, match="the checkpoint is a one-mask MADE .*this model has num_masks = 3"):
        ensemble.load_state_dict(one_mask.state_dict())
    ensemble.load_state_dict(genzoo.build_model("made", (6,), hidden_sizes=[13], num_masks=3).state_dict())


def test_made_initial_weights_are_relabelled_with_the_units():
    """Under one seed, the sorted model starts as the drawn-numbering model did before sorting."""
    torch.manual_seed(11)
    model = genzoo.build_model("made", (8,), hidden_sizes=[12])
    torch.manual_seed(11)
    unsorted_init = [torch.nn.Linear(8, 12), torch.nn.Linear(12, 8)]  # what MADE's layers drew
    permutation = torch.argsort(made_degrees(8, (12,), False, seed=0)[1], stable=True)
    masks = [layer.mask for layer in model.layers]
    assert torch.equal(model.layers[0].masked_weight(), unsorted_init[0].weight[permutation] * masks[0])
    assert torch.equal(model.layers[0].bias, unsorted_init[0].bias[permutation])
    assert torch.equal(model.layers[1].masked_weight(), unsorted_init[1].weight[:, permutation] * masks[1])
    assert torch.equal(model.layers[1].bias, unsorted_init[1].bias)


@pytest.mark.parametrize(
    "hp",
    [{"hidden_sizes": [16, 16]}, {"hidden_sizes": [20], "direct_connections": True}, {"hidden_sizes": [8, 24, 6]}],
    ids=["two-layers", "direct", "three-layers"],
)
def test_made_row_blocks_give_the_dense_log_prob_and_gradients(hp):
    D = 7
    blocked = randomize(genzoo.build_model("made", (D,), row_blocks_min_weights=0, **hp).double(), seed=5)
    dense = genzoo.build_model("made", (D,), row_blocks=0, **hp).double()
    dense.load_state_dict(blocked.state_dict())
    assert all(isinstance(layer, RowBlockMaskedLinear) for layer in blocked.masked_layers()), \
        "the test must exercise every layer's blocks"
    assert all(isinstance(layer, MaskedLinear) and layer.row_blocks is None for layer in dense.masked_layers())
    x = all_binary(D)
    assert torch.allclose(blocked.log_prob(x).exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(blocked.log_prob(x), dense.log_prob(x), rtol=0, atol=1e-10)
    blocked.loss(x).backward()
    dense.loss(x).backward()
    for i, (stored, full) in enumerate(zip(blocked.masked_layers(), dense.masked_layers())):
        grad = torch.zeros_like(full.weight)
        for block, block_grad in zip(stored.row_blocks, stored.block_grads()):
            grad[block.start:block.end, :block.used] = block_grad
        assert torch.allclose(grad, full.weight.grad, rtol=0, atol=1e-10), f"layer {i}"
        if full.bias is not None:
            assert torch.allclose(stored.bias.grad, full.bias.grad, rtol=0, atol=1e-10), f"layer {i}"
    stored_weights = sum(p.numel() for p in blocked.parameters())
    assert stored_weights < sum(p.numel() for p in dense.parameters()), "the optimizer sees fewer weights"


def test_made_row_blocks_only_where_they_save_work():
    big = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[1000], direct_connections=True)
    assert all(layer.row_blocks is not None for layer in [*big.layers, big.direct])  # 784 000 weights a layer
    small = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[100])  # 78 400 weights: dense
    assert all(layer.row_blocks is None for layer in small.layers)
    shuffled = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[1000], order_agnostic=True)
    # a random input order makes the first and last masks no staircase: their blocks would save little
    assert shuffled.layers[0].row_blocks is None and shuffled.layers[1].row_blocks is None
    with pytest.raises(ValueError, match="row_blocks must be 0"):
        genzoo.build_model("made", (4,), row_blocks=-1)


def test_made_inside_another_model_loads_an_older_state():
    """The older-checkpoint rule applies under a prefix too (e.g. a VQ-VAE's MADE prior)."""
    model = randomize(genzoo.build_model("made", (5,), hidden_sizes=[8], row_blocks_min_weights=0).double(), seed=2)
    outer = torch.nn.ModuleDict({"prior": model})
    state = {f"prior.{k}": v for k, v in _drawn_numbering_state(model).items()}
    assert len(state) == len(outer.state_dict()) - 1
    fresh = torch.nn.ModuleDict({"prior": genzoo.build_model("made", (5,), hidden_sizes=[8],
                                                             row_blocks_min_weights=0).double()})
    fresh.load_state_dict(state)
    assert bool(fresh["prior"].hidden_units_sorted)
    x = all_binary(5)
    assert torch.allclose(fresh["prior"].log_prob(x), model.log_prob(x), rtol=0, atol=1e-10)


def test_row_blocks_are_used_on_the_cpu_only(monkeypatch):
    """Elsewhere (a GPU; here the meta device stands in) the layer takes the dense product."""
    import genzoo.nn.masked as masked

    def refuse(*args):
        raise AssertionError("row blocks used")

    monkeypatch.setattr(masked, "row_block_linear", refuse)
    layer = row_block_layer()
    with pytest.raises(AssertionError, match="row blocks used"):
        layer(torch.randn(3, 10))
    assert layer.active_row_blocks() is layer.row_blocks
    layer = layer.to("meta")
    assert layer.row_blocks is not None and layer.active_row_blocks() is None
    assert layer(torch.randn(3, 10, device="meta")).shape == (3, 12)


def test_row_block_layer_off_the_cpu_gives_the_same_product_and_gradients():
    """The dense path (M ⊙ W assembled from the blocks) against the blocked one, on the CPU."""
    layer = row_block_layer(rows=20, cols=16, num_blocks=5).double()
    x = torch.randn(7, 16, dtype=torch.float64)
    blocked = layer(x)
    blocked.square().sum().backward()
    blocked_grads = [w.grad.clone() for w in layer.weight_blocks]
    layer.zero_grad()
    dense = F.linear(x, layer.masked_weight(), layer.bias)
    dense.square().sum().backward()
    assert torch.allclose(blocked, dense, rtol=0, atol=1e-12)
    for got, expected in zip(blocked_grads, layer.weight_blocks):
        assert torch.allclose(got, expected.grad, rtol=0, atol=1e-12)
