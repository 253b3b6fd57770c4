"""Layers that read binary data sum weight columns over the ones of x instead of multiplying
(genzoo.nn.masked, ``binary_input``), and MADE's layers that read x use them."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

import genzoo
import genzoo.nn.masked as masked
from conftest import all_binary, randomize, resume_beside, tiny_run_config
from genzoo.checkpoint import load_checkpoint
from genzoo.nn import MaskedLinear, RowBlockMaskedLinear, row_blocks
from genzoo.nn.masked import MIN_UNMASKED_COLUMNS, SPARSE_INPUT_MAX_DENSITY, sums_ones
from genzoo.training import RunFolder, Trainer
from test_row_blocks import MASKS


def binary_layer(mask: torch.Tensor, num_blocks: int, bias: bool = True, seed: int = 0):
    """A dense masked layer (float64, random weights) and the same layer stored for binary input."""
    torch.manual_seed(seed)
    dense = MaskedLinear(mask.shape[1], mask.shape[0], mask=mask, bias=bias).double()
    with torch.no_grad():
        dense.weight.normal_()
        if bias:
            dense.bias.normal_()
    return dense, RowBlockMaskedLinear.from_dense(dense, row_blocks(mask, num_blocks), binary_input=True)


def sparse_batch(rows: int, cols: int, density: float = 0.2, seed: int = 0) -> torch.Tensor:
    x = (torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) < density).double()
    x[0] = 0  # a row without ones
    x[-1, -1] = 1  # a one in the last column, which no staircase row block may use
    return x


def calls_of(monkeypatch, name: str) -> list[int]:
    """Count the calls of genzoo.nn.masked's ``name`` from now on."""
    calls, original = [], getattr(masked, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(masked, name, counted)
    return calls


def full_weight_grad(layer) -> torch.Tensor:
    """A layer's weight gradient as the full matrix (a row-block layer's blocks, zeros after them)."""
    if not isinstance(layer, RowBlockMaskedLinear):
        return layer.weight.grad
    grad = torch.zeros(layer.out_features, layer.in_features, dtype=layer.weight_blocks[0].dtype)
    for block, block_grad in zip(layer.row_blocks, layer.block_grads()):
        grad[block.start:block.end, :block.used] = block_grad
    return grad


def assert_sums_match_the_product(summing, dense, x: torch.Tensor) -> None:
    """The summing layer's output and its weight, bias and input gradients are the dense masked
    layer's (float64), with x needing no gradient and then needing one."""
    g = torch.randn(*x.shape[:-1], dense.out_features, dtype=torch.float64)
    for x_needs_grad in (False, True):
        x_dense, x_summing = (x.clone().requires_grad_(x_needs_grad) for _ in range(2))
        expected, got = dense(x_dense), summing(x_summing)
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)
        dense.zero_grad(), summing.zero_grad()
        (expected * g).sum().backward()
        (got * g).sum().backward()
        assert torch.allclose(full_weight_grad(summing), dense.weight.grad, rtol=0, atol=1e-12)
        if dense.bias is not None:
            assert torch.allclose(summing.bias.grad, dense.bias.grad, rtol=0, atol=1e-12)
        if x_needs_grad:
            assert torch.allclose(x_summing.grad, x_dense.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("num_blocks", [1, 4, 100])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_sums_of_columns_give_the_masked_product_and_its_gradients(kind, num_blocks, bias, monkeypatch):
    mask = MASKS[kind]()
    dense, layer = binary_layer(mask, num_blocks, bias)
    sums = calls_of(monkeypatch, "binary_row_block_linear")
    assert_sums_match_the_product(layer, dense, sparse_batch(9, mask.shape[1]))
    assert len(sums) == 2, "the binary batch must take the sums of columns"


def test_the_wide_staircase_sums_both_an_unmasked_prefix_and_a_band():
    _, layer = binary_layer(MASKS["wide-staircase"](), 4)
    splits = [masked._column_split(b) for b in layer.row_blocks]
    assert any(full >= MIN_UNMASKED_COLUMNS and used > full for full, used in splits)
    assert any(full == 0 and used > 0 for full, used in splits)


def test_only_the_binary_layers_weight_gradients_are_made_when_a_block_needs_none():
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    layer.weight_blocks[1].requires_grad_(False)
    x = sparse_batch(6, dense.in_features)
    (layer(x) ** 2).sum().backward()
    (dense(x) ** 2).sum().backward()
    assert layer.weight_blocks[1].grad is None and layer.block_grads()[1] is None
    for i, (block, grad) in enumerate(zip(layer.row_blocks, layer.block_grads())):
        if i != 1:
            assert torch.allclose(grad, dense.weight.grad[block.start:block.end, :block.used], rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch", ["all-zero", "one-row", "leading-dims"])
def test_sums_of_columns_on_edge_batches(batch, monkeypatch):
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    x = {"all-zero": torch.zeros(4, 120, dtype=torch.float64),
         "one-row": sparse_batch(1, 120, seed=3),
         "leading-dims": sparse_batch(6, 120).reshape(2, 3, 120)}[batch]
    if batch == "one-row":
        x[0, 5] = 1
    sums = calls_of(monkeypatch, "binary_row_block_linear")
    assert layer(x).shape == (*x.shape[:-1], 40) and len(sums) == 1
    assert_sums_match_the_product(layer, dense, x)
    assert len(sums) == 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_sums_of_columns_count_the_ones_exactly_in_half_precision(dtype, monkeypatch):
    """Bags are counted in integers: bfloat16 counts exactly only to 256 and float16 to 2048, so
    counting in x's dtype put a row's ones into the next row's bag. Here every row has more
    than 256 ones, and one column is 1 in 2,101 rows (more than 2048, and odd)."""
    monkeypatch.setattr(masked, "SPARSE_INPUT_MAX_DENSITY", 1.0)
    rows, cols = 2101, 700
    x = (torch.rand(rows, cols, generator=torch.Generator().manual_seed(0)) < 0.45).to(dtype)
    x[:, 3] = 1
    x[:, 5] = 0
    mask = torch.ones(6, cols)
    dense, layer = binary_layer(mask.double(), 2)
    summing = MaskedLinear(cols, 6, mask=mask, binary_input=True)
    summing.load_state_dict({k: v.float() for k, v in dense.state_dict().items()})
    summing, layer = summing.to(dtype), layer.to(dtype)
    sums = calls_of(monkeypatch, "binary_masked_linear")
    y = summing(x)
    y.float().sum().backward()
    assert len(sums) == 1
    expected = dense(x.double())
    assert torch.allclose(y.double(), expected, rtol=0.05, atol=0.5)
    grad, expected_grad = summing.weight.grad.double(), torch.ones(6, rows, dtype=torch.float64) @ x.double()
    assert grad[:, 5].eq(0).all()
    if dtype == torch.float16:  # counts below 2048 are exact: a bag shifted by one shows
        others = [j for j in range(cols) if j != 3]
        assert torch.equal(grad[:, others], expected_grad[:, others])
        assert (grad[:, 3] - rows).abs().max() <= 1
    else:  # bfloat16 rounds the sums themselves: within 1%
        assert torch.allclose(grad, expected_grad, rtol=0.01, atol=0)
    got = layer(x)
    assert torch.allclose(got.double(), expected, rtol=0.05, atol=0.5)


@pytest.mark.parametrize("batch", ["half", "dense-ones", "nan", "negative-zero"])
def test_other_batches_take_the_products_or_the_sums_as_they_should(batch, monkeypatch):
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    x = sparse_batch(5, 120)
    if batch == "half":
        x[2, 3] = 0.5
    elif batch == "dense-ones":
        x = torch.ones(5, 120, dtype=torch.float64)
    elif batch == "nan":
        x[1, 1] = float("nan")
    else:
        x[x == 0] = -0.0
    sums, products = calls_of(monkeypatch, "binary_row_block_linear"), calls_of(monkeypatch, "row_block_linear")
    got, expected = layer(x), dense(x)
    if batch == "nan":
        assert torch.equal(got.isnan(), expected.isnan()) and got.isnan().any()
        got, expected = got.nan_to_num(), expected.nan_to_num()
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert (len(sums), len(products)) == ((1, 0) if batch == "negative-zero" else (0, 1))


def test_sums_ones_takes_binary_batches_with_few_ones_only():
    x = torch.zeros(10, 10)
    x.view(-1)[: int(SPARSE_INPUT_MAX_DENSITY * 100)] = 1
    assert sums_ones(x)
    x.view(-1)[int(SPARSE_INPUT_MAX_DENSITY * 100)] = 1
    assert not sums_ones(x), "one more one than the threshold allows"
    assert sums_ones(torch.zeros(3, 4)) and sums_ones(torch.zeros(3, 4, dtype=torch.float16))
    for other in (torch.full((3, 4), 0.5), torch.tensor([[0.0, float("nan")]]), torch.tensor([[0.0, 2.0]]),
                  torch.zeros(3, 4, dtype=torch.long), torch.zeros(0, 4), torch.zeros(4), torch.zeros(2, 2, 2)):
        assert not sums_ones(other), other


def test_a_binary_layer_stores_its_blocks_transposed_and_saves_the_same_weight():
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    rows = RowBlockMaskedLinear.from_dense(dense, layer.row_blocks)
    for block, stored, view in zip(layer.row_blocks, layer.weight_blocks, layer.block_weights()):
        assert stored.shape == (block.used, block.end - block.start) and stored.is_contiguous()
        assert torch.equal(view, dense.weight[block.start:block.end, :block.used])
    assert torch.equal(layer.state_dict()["weight"], rows.state_dict()["weight"])
    assert torch.equal(layer.masked_weight(), dense.masked_weight())
    # either layout loads what the other saved
    _, other = binary_layer(MASKS["wide-staircase"](), 4, seed=1)
    other.load_state_dict(rows.state_dict())
    assert torch.equal(other.weight, layer.weight) and "binary_input=True" in repr(other)


def test_a_binary_layer_off_the_cpu_takes_the_assembled_product(monkeypatch):
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    x = sparse_batch(5, 120)
    monkeypatch.setattr(RowBlockMaskedLinear, "active_row_blocks", lambda self: None)
    sums = calls_of(monkeypatch, "binary_row_block_linear")
    assert torch.allclose(layer(x), dense(x), rtol=0, atol=1e-12) and not sums
    assert layer.to("meta")(x.to("meta")).shape == (5, 40)


def test_sums_of_columns_under_cpu_autocast_run_in_float32(monkeypatch):
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    dense, layer = dense.float(), layer.float()
    x = sparse_batch(5, 120).float()
    sums = calls_of(monkeypatch, "binary_row_block_linear")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
        got.square().sum().backward()
    assert got.dtype == torch.float32 and len(sums) == 1
    expected = dense(x)
    assert torch.allclose(got, expected, atol=1e-5)
    expected.square().sum().backward()
    for block, grad in zip(layer.row_blocks, layer.block_grads()):
        assert torch.allclose(grad, dense.weight.grad[block.start:block.end, :block.used], atol=1e-4)


def test_a_dense_binary_layer_under_autocast_or_another_dtype_takes_the_product(monkeypatch):
    """The sums would return float32 where autocast's product returns bfloat16, and would accept
    a float64 batch that the product refuses: both take the product."""
    layer = MaskedLinear(120, 40, mask=MASKS["wide-staircase"]().float(), binary_input=True)
    sums = calls_of(monkeypatch, "binary_masked_linear")
    x = sparse_batch(5, 120).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(RuntimeError):
        layer(x.double())
    assert not sums
    assert layer(x).dtype == torch.float32 and len(sums) == 1


def test_binary_layers_refuse_a_batch_of_another_width():
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    summing = MaskedLinear(120, 40, mask=MASKS["wide-staircase"](), binary_input=True).double()
    for narrow_or_wide in (sparse_batch(3, 100), torch.cat([sparse_batch(3, 120), torch.zeros(3, 4, dtype=torch.float64)], 1)):
        with pytest.raises(ValueError, match=f"input has {narrow_or_wide.shape[1]} features, the layer takes 120"):
            layer(narrow_or_wide)
        with pytest.raises(RuntimeError):
            summing(narrow_or_wide)


def test_loading_with_assign_keeps_the_transposed_blocks_contiguous():
    dense, layer = binary_layer(MASKS["wide-staircase"](), 4)
    _, other = binary_layer(MASKS["wide-staircase"](), 4, seed=1)
    other.load_state_dict(layer.state_dict(), assign=True)
    assert all(w.is_contiguous() for w in other.weight_blocks)
    x = sparse_batch(4, 120)
    assert torch.allclose(other(x), dense(x), rtol=0, atol=1e-12)


def test_made_sums_columns_in_the_layers_that_read_x_only():
    model = genzoo.build_model("made", (64,), hidden_sizes=[48, 40], direct_connections=True,
                               row_blocks_min_weights=0)
    kinds = [getattr(layer, "binary_input", None) for layer in model.masked_layers()]
    assert kinds == [True, False, False, True], "first layer and direct connections read x; the others h"
    assert bool(model.input_layers_transposed)
    ensemble = genzoo.build_model("made", (64,), hidden_sizes=[48], num_masks=2)
    assert not bool(ensemble.input_layers_transposed), "an ensemble's layers stay dense"
    products = genzoo.build_model("made", (64,), hidden_sizes=[48, 40], direct_connections=True,
                                  row_blocks_min_weights=0, binary_input_sums=False)
    assert [getattr(layer, "binary_input", None) for layer in products.masked_layers()] == [False] * 4
    assert not bool(products.input_layers_transposed)
    products.load_state_dict(model.state_dict())
    x = sparse_batch(7, 64)
    assert torch.allclose(products.double().log_prob(x), model.double().log_prob(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("direct", [False, True], ids=["plain", "direct"])
def test_made_with_sums_of_columns_is_normalized_and_equals_the_dense_model(direct, monkeypatch):
    # all 2^n inputs are half ones: let every binary batch take the sums
    monkeypatch.setattr(masked, "SPARSE_INPUT_MAX_DENSITY", 1.0)
    sums = calls_of(monkeypatch, "binary_row_block_linear")
    hp = dict(hidden_sizes=[24, 20], direct_connections=direct, row_blocks_min_weights=0)
    blocked = genzoo.build_model("made", (8,), **hp).double()
    dense = genzoo.build_model("made", (8,), **hp, row_blocks=0, binary_input_sums=False).double()
    dense.load_state_dict(blocked.state_dict())
    x = all_binary(8)
    assert torch.allclose(blocked.log_prob(x).exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    assert len(sums) == 1 + direct, "the first layer (and the direct connections) summed"
    assert torch.allclose(blocked.log_prob(x), dense.log_prob(x), rtol=0, atol=1e-12)
    assert len(sums) == 2 + direct * 2, "the product model must not sum"


@pytest.mark.parametrize("order", ["raster", "subgrid-spiral"])
def test_fvsbn_sums_columns_and_stays_normalized(order, monkeypatch):
    monkeypatch.setattr(masked, "SPARSE_INPUT_MAX_DENSITY", 1.0)
    sums = calls_of(monkeypatch, "binary_masked_linear")
    model = randomize(genzoo.build_model("fvsbn", (1, 3, 3), order=order).double())
    products = genzoo.build_model("fvsbn", (1, 3, 3), order=order, binary_input_sums=False).double()
    products.load_state_dict(model.state_dict())
    assert model.linear.binary_input and not products.linear.binary_input
    x = all_binary(9)
    assert torch.allclose(model.log_prob(x).exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    assert len(sums) == 1
    assert torch.allclose(model.log_prob(x), products.log_prob(x), rtol=0, atol=1e-12)
    assert len(sums) == 2, "the product model must not sum"
    model.loss(x).backward()
    products.loss(x).backward()
    for a, b in zip(model.parameters(), products.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_a_dense_binary_layer_sums_what_it_would_multiply(kind, bias, monkeypatch):
    mask = MASKS[kind]()
    torch.manual_seed(0)
    dense = MaskedLinear(mask.shape[1], mask.shape[0], mask=mask, bias=bias).double()
    summing = MaskedLinear(mask.shape[1], mask.shape[0], mask=mask, bias=bias, binary_input=True).double()
    summing.load_state_dict(dense.state_dict())
    sums = calls_of(monkeypatch, "binary_masked_linear")
    assert_sums_match_the_product(summing, dense, sparse_batch(9, mask.shape[1]))
    assert summing.weight.grad.is_contiguous() and len(sums) == 2


def test_a_dense_binary_layer_takes_the_product_for_other_batches_and_off_the_cpu(monkeypatch):
    mask = MASKS["wide-staircase"]()
    summing = MaskedLinear(120, 40, mask=mask, binary_input=True).double()
    sums = calls_of(monkeypatch, "binary_masked_linear")
    for x in (torch.full((3, 120), 0.5, dtype=torch.float64), torch.ones(3, 120, dtype=torch.float64)):
        assert torch.allclose(summing(x), F.linear(x, summing.weight * mask, summing.bias), rtol=0, atol=1e-12)
    assert summing(sparse_batch(2, 120).reshape(2, 1, 120)).shape == (2, 1, 40) and len(sums) == 1
    assert summing.to("meta")(sparse_batch(3, 120).to("meta")).shape == (3, 40) and len(sums) == 1


def test_a_dense_binary_layers_backward_uses_the_mask_of_its_forward():
    """K masks take turns in a MADE ensemble: a mask set after the forward pass must not reach the
    gradient of the graph built before it."""
    first, second = MASKS["random"](), 1 - MASKS["random"]()
    layer = MaskedLinear(29, 17, mask=first, binary_input=True).double()
    x = sparse_batch(5, 29)
    y = layer(x)
    layer.set_mask(second)
    y.sum().backward()
    expected = torch.ones(5, 17, dtype=torch.float64).t() @ x * first
    assert torch.allclose(layer.weight.grad, expected, rtol=0, atol=1e-12)


def _fit(config, run_dir, **kwargs):
    return Trainer(config, run_dir, progress=False, **kwargs).fit()


def test_resuming_a_made_checkpoint_saved_before_the_blocks_were_transposed(tmp_path):
    """A checkpoint whose input layers' Adam moments are in the earlier row-by-row layout (and
    without ``input_layers_transposed``) resumes exactly as the same run saved now does."""
    run_dir = tmp_path / "now"
    hp = {"hidden_sizes": [32], "direct_connections": True, "row_blocks_min_weights": 0}
    _fit(tiny_run_config("made", epochs=1, model_hp=hp, lr=0.01), run_dir)
    payload = load_checkpoint(RunFolder(run_dir).last)
    legacy = {**payload, "model": dict(payload["model"]), "optimizer": copy.deepcopy(payload["optimizer"])}
    del legacy["model"]["input_layers_transposed"], legacy["model_sha256"]
    model = genzoo.build_model("made", (64,), **hp)
    names = [name for name, _ in model.named_parameters()]
    transposed = [i for i, name in enumerate(names) if name.startswith(("layers.0.weight_blocks", "direct.weight_blocks"))]
    assert len(transposed) == 16
    for i in transposed:
        for key in ("exp_avg", "exp_avg_sq"):
            legacy["optimizer"]["state"][i][key] = legacy["optimizer"]["state"][i][key].t().contiguous()
    resumed = resume_beside(run_dir, legacy, legacy_dir := tmp_path / "legacy")
    for (name, a), b in zip(resumed[run_dir].state_dict().items(), resumed[legacy_dir].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


@pytest.mark.parametrize("saved_sums, resumed_sums", [(True, False), (False, True), (True, True), (False, False)])
def test_adam_moments_follow_the_input_layers_layout_between_models(saved_sums, resumed_sums):
    """Moments saved with the input layers' blocks transposed (or not) load into a model laid out
    the other way transposed, and as they are into one laid out the same way; the saved state is
    left untouched."""
    from genzoo.training import load_optimizer_state, saved_optimizer_state_in_model_layout
    hp = dict(hidden_sizes=[40], direct_connections=True, row_blocks_min_weights=0)
    saved = genzoo.build_model("made", (64,), **hp, binary_input_sums=saved_sums)
    optimizer = torch.optim.Adam(saved.parameters(), lr=0.01)
    saved.loss(sparse_batch(8, 64).float()).backward()
    optimizer.step()
    state_dict, optimizer_state = saved.state_dict(), copy.deepcopy(optimizer.state_dict())
    if not saved_sums:
        del state_dict["input_layers_transposed"]  # as a checkpoint from before the flag
    resumed = genzoo.build_model("made", (64,), **hp, binary_input_sums=resumed_sums)
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=0.01)
    resumed.load_state_dict(state_dict)
    adapted = saved_optimizer_state_in_model_layout(resumed, resumed_optimizer, optimizer_state)
    load_optimizer_state(resumed_optimizer, adapted)
    for layer_name in ("layers.0", "direct"):
        old, new = saved.get_submodule(layer_name), resumed.get_submodule(layer_name)
        for old_param, new_param, old_block, new_block in zip(old.weight_blocks, new.weight_blocks,
                                                              old.block_weights(), new.block_weights()):
            moment = resumed_optimizer.state[new_param]["exp_avg"]
            as_block = moment.t() if resumed_sums else moment
            expected = optimizer.state[old_param]["exp_avg"]
            assert torch.equal(as_block, expected.t() if saved_sums else expected)
            assert torch.equal(new_block, old_block)
    assert all(torch.equal(v["exp_avg"], optimizer.state_dict()["state"][k]["exp_avg"])
               for k, v in optimizer_state["state"].items())


@pytest.mark.parametrize("saved_sums", [False, True], ids=["older-layout", "same-layout"])
def test_square_blocks_moments_follow_the_flag_not_the_shape(saved_sums):
    """A square block's moments have the same shape in either layout: only the checkpoint's
    ``input_layers_transposed`` flag tells whether to transpose them."""
    from genzoo.training import saved_optimizer_state_in_model_layout
    hp = dict(hidden_sizes=[8], row_blocks=2, row_blocks_min_weights=0, mask_seed=1)
    resumed = genzoo.build_model("made", (8,), **hp)
    square = [p for p in resumed.layers[0].weight_blocks if p.shape[0] == p.shape[1]]
    assert square, "the config must give the first layer a square block"
    saved = genzoo.build_model("made", (8,), **hp, binary_input_sums=saved_sums)
    optimizer = torch.optim.Adam(saved.parameters(), lr=0.01)
    saved.loss(sparse_batch(8, 8, density=0.3).float()).backward()
    optimizer.step()
    state_dict, optimizer_state = saved.state_dict(), copy.deepcopy(optimizer.state_dict())
    if not saved_sums:
        del state_dict["input_layers_transposed"]
    resumed.load_state_dict(state_dict)
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=0.01)
    adapted = saved_optimizer_state_in_model_layout(resumed, resumed_optimizer, optimizer_state)
    names = [name for name, _ in resumed.named_parameters()]
    for param in square:
        i = next(j for j, p in enumerate(resumed.parameters()) if p is param)
        saved_param = dict(saved.named_parameters())[names[i]]
        expected = optimizer.state[saved_param]["exp_avg"]
        assert torch.equal(adapted["state"][i]["exp_avg"], expected if saved_sums else expected.t())
