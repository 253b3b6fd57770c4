"""Autoregressive models (FVSBN, NADE, MADE): samplers, the autoregressive property, MADE's masks,
and each model checked against a direct implementation of its defining formula."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import genzoo
from conftest import MODEL_VARIANTS, all_binary, chisquare_p_value, randomize
from genzoo.models.autoregressive import BernoulliAutoregressive
from genzoo.models.autoregressive.made import made_degrees, made_masks
from genzoo.nn import MaskedLinear


def autoregressive_variants() -> list:
    """The model variants with binary chain-rule conditionals (``conditional_logits``)."""
    out = []
    for param in MODEL_VARIANTS:
        name, hp = param.values
        if getattr(genzoo.build_model(name, 3, **hp), "chain_rule_conditionals", "") == "binary":
            out.append(param)
    return out


AR_VARIANTS = autoregressive_variants()

#: variants for the fast-versus-naive sampler check on 64 dims
SAMPLER_VARIANTS = [
    pytest.param("fvsbn", {}, id="fvsbn"),
    pytest.param("nade", {"hidden_size": 16}, id="nade"),
    pytest.param("nade", {"hidden_size": 7, "chunk_size": 5}, id="nade-small-chunks"),
    pytest.param("made", {"hidden_sizes": [48]}, id="made-1mask"),
    pytest.param("made", {"hidden_sizes": [48], "num_masks": 4}, id="made-4masks"),
    pytest.param("made", {"hidden_sizes": [48], "order_agnostic": True}, id="made-order-agnostic"),
    pytest.param("made", {"hidden_sizes": [48], "num_masks": 3, "order_agnostic": True}, id="made-oa-3masks"),
    pytest.param("made", {"hidden_sizes": [40, 40]}, id="made-2layers"),
    pytest.param("made", {"hidden_sizes": [100, 20], "num_masks": 2, "order_agnostic": True}, id="made-2layers-oa"),
    pytest.param("made", {"hidden_sizes": [10, 70, 5], "mask_seed": 3}, id="made-3layers-narrow"),
    pytest.param("made", {"hidden_sizes": [48], "direct_connections": True}, id="made-direct"),
    pytest.param("made", {"hidden_sizes": [40, 40], "direct_connections": True, "row_blocks_min_weights": 0},
                 id="made-row-blocks"),
    pytest.param("made", {"hidden_sizes": [40, 40], "num_masks": 3, "order_agnostic": True, "direct_connections": True},
                 id="made-direct-oa-3masks"),
]


# -- samples follow log_prob -----------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["fast", "naive"])
@pytest.mark.parametrize("name, hp", AR_VARIANTS)
def test_samples_follow_the_model_distribution(name, hp, sampler):
    """χ² test of 20,000 samples against exp(log_prob) on the 16 outcomes of n = 4, with a
    negative control: the same samples against another model's probabilities must be rejected."""
    n, num = 4, 20_000
    model = randomize(genzoo.build_model(name, (n,), **hp).double(), seed=21).eval()
    other = randomize(genzoo.build_model(name, (n,), **hp).double(), seed=22).eval()
    probabilities = model.log_prob(all_binary(n)).exp()
    other_probabilities = other.log_prob(all_binary(n)).exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-10)
    assert (probabilities - other_probabilities).abs().sum() > 0.2, "the negative control is too weak"

    generator = torch.Generator().manual_seed(1234)
    if sampler == "fast":
        x = model.sample(num, generator=generator)
    else:
        x = model.sample_naive(model.draw_uniforms(num, generator))
    assert x.shape == (num, n)

    assert chisquare_p_value(x, probabilities) > 1e-3
    assert chisquare_p_value(x, other_probabilities) < 1e-6


def test_chisquare_helper_rejects_a_slightly_wrong_distribution():
    """The helper is able to fail: samples from p do not fit p perturbed by a few percent."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    idx = torch.multinomial(p, 50_000, replacement=True, generator=generator)
    x = torch.stack([idx % 2, idx // 2], dim=1).double()
    assert chisquare_p_value(x, p) > 1e-3
    q = torch.tensor([0.13, 0.2, 0.3, 0.37], dtype=torch.float64)
    assert chisquare_p_value(x, q) < 1e-6


# -- fast samplers equal the naive one ---------------------------------------------------------------


@pytest.mark.parametrize("name, hp", SAMPLER_VARIANTS)
def test_fast_sampler_equals_naive_sampler(name, hp):
    D = 64
    model = randomize(genzoo.build_model(name, (D,), **hp).double(), seed=5).eval()
    u = torch.rand(300, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    fast = model.sample_from_uniforms(u.clone())
    naive = model.sample_naive(u.clone())
    assert fast.shape == naive.shape == (300, D)
    assert torch.equal(fast, naive)
    # both samplers are deterministic functions of the uniforms, and not constant
    assert torch.equal(model.sample_from_uniforms(u.clone()), fast)
    assert 0.05 < fast.mean().item() < 0.95
    assert len(torch.unique(fast, dim=0)) > 150  # most draws distinct: far from a constant sampler


@pytest.mark.parametrize("name, hp", SAMPLER_VARIANTS)
def test_sample_is_the_fast_sampler_on_drawn_uniforms(name, hp):
    model = randomize(genzoo.build_model(name, (1, 4, 4), **hp), seed=2).eval()
    x = model.sample(20, generator=torch.Generator().manual_seed(4))
    u = model.draw_uniforms(20, torch.Generator().manual_seed(4))
    assert u.shape == (20, 16) and ((u >= 0) & (u < 1)).all()
    assert torch.equal(x, model.sample_from_uniforms(u).reshape(20, 1, 4, 4))


# -- the autoregressive property ----------------------------------------------------------------------


def _jacobian_abs(model: BernoulliAutoregressive, num_points: int = 6) -> torch.Tensor:
    """Σ over a few random inputs of |∂ logits_i / ∂ x_j|, shape (D, D)."""
    D = model.num_dims
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(D, D, dtype=torch.float64)
    for p in range(num_points):
        if p == 0:
            x = torch.randn(1, D, generator=generator, dtype=torch.float64)
        else:
            x = torch.randint(0, 2, (1, D), generator=generator).double()
        jac = torch.autograd.functional.jacobian(model.conditional_logits, x)
        total += jac.reshape(D, D).abs()
    return total


def _allowed(order: torch.Tensor) -> torch.Tensor:
    """allowed[i, j] = input j comes strictly before output i in ``order``."""
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    return position[None, :] < position[:, None]


def _check_autoregressive(model: BernoulliAutoregressive, dense: bool) -> None:
    order = model.generation_order()
    assert sorted(order.tolist()) == list(range(model.num_dims))
    allowed = _allowed(order)
    jac = _jacobian_abs(model)
    forbidden = jac[~allowed]
    assert torch.equal(forbidden, torch.zeros_like(forbidden)), "an output depends on itself or a later input"
    assert jac[allowed].sum() > 0, "no output depends on any input"
    if dense:
        assert (jac[allowed] > 0).all(), "an allowed dependency is missing"


@pytest.mark.parametrize(
    "name",
    ["fvsbn", "nade"],
)
def test_fvsbn_and_nade_are_autoregressive_in_the_natural_order(name):
    """Jacobian check: ∂ℓ_i/∂x_j is exactly zero unless j < i, and nonzero for every j < i."""
    hp = {"hidden_size": 6} if name == "nade" else {}
    model = randomize(genzoo.build_model(name, (8,), **hp), seed=1).double()
    assert torch.equal(model.generation_order(), torch.arange(8))
    _check_autoregressive(model, dense=True)


@pytest.mark.parametrize("name, hp", AR_VARIANTS)
def test_autoregressive_property_by_perturbation(name, hp):
    """Gradient-free version of the check: changing input j leaves every logit at or before j's
    position unchanged (to rounding) and changes some later one."""
    D = 7
    model = randomize(genzoo.build_model(name, (D,), **hp).double(), seed=12)
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(0, 2, (16, D), generator=generator).double()
    num_masks = getattr(model.config, "num_masks", 1)
    for k in range(num_masks):
        if hasattr(model, "use_mask"):
            model.use_mask(k)
        order = model.generation_order()
        position = torch.empty_like(order)
        position[order] = torch.arange(D)
        base = model.conditional_logits(x)
        later_changed = 0.0
        for j in range(D):
            flipped = x.clone()
            flipped[:, j] = 1 - flipped[:, j]
            delta = (model.conditional_logits(flipped) - base).abs().max(0).values
            not_after = position <= position[j]
            assert (delta[not_after] < 1e-12).all(), f"mask {k}: flipping x_{j} changes an earlier logit"
            later_changed += delta[~not_after].sum().item()
        assert later_changed > 1e-6


@pytest.mark.parametrize(
    "hp",
    [
        {"hidden_sizes": [16, 16], "num_masks": 3},
        {"hidden_sizes": [16, 16], "num_masks": 3, "order_agnostic": True},
        {"hidden_sizes": [32], "num_masks": 2, "order_agnostic": True, "mask_seed": 5},
        {"hidden_sizes": [4, 20, 6], "num_masks": 2},
        {"hidden_sizes": [16], "num_masks": 3, "order_agnostic": True, "direct_connections": True},
    ],
    ids=["natural", "order-agnostic", "oa-one-layer", "three-layers", "direct"],
)
def test_made_is_autoregressive_under_every_mask(hp):
    D = 8
    model = randomize(genzoo.build_model("made", (D,), **hp).double(), seed=4)
    orders = []
    for k in range(model.config.num_masks):
        model.use_mask(k)
        order = model.generation_order()
        orders.append(order.tolist())
        if not hp.get("order_agnostic"):
            assert torch.equal(order, torch.arange(D))
        _check_autoregressive(model, dense=False)
        # structural check, independent of ReLU: the product of the masks connects output i
        # to input j only if j comes before i
        connectivity = torch.eye(D, dtype=torch.float64)
        for layer in model.layers:
            connectivity = layer.mask.double() @ connectivity
        assert connectivity.shape == (D, D)
        assert (connectivity[~_allowed(order)] == 0).all()
        assert connectivity.sum() > 0
        if model.direct is not None:
            assert (model.direct.mask[~_allowed(order)] == 0).all()
            assert torch.equal(model.direct.mask.bool(), _allowed(order))  # every earlier input, directly
    if hp.get("order_agnostic"):
        assert len({tuple(o) for o in orders}) > 1, "order-agnostic masks share one ordering"


@pytest.mark.parametrize(
    "name, hp",
    [
        pytest.param("fvsbn", {}, id="fvsbn"),
        pytest.param("nade", {"hidden_size": 5, "chunk_size": 3}, id="nade"),
        pytest.param("made", {"hidden_sizes": [9, 9]}, id="made"),
    ],
)
def test_conditional_logits_gradient_with_respect_to_the_input(name, hp):
    """Autograd's gradient of the logits w.r.t. x matches finite differences."""
    model = randomize(genzoo.build_model(name, (6,), **hp).double(), seed=2)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(model.conditional_logits, (x,), raise_exception=False)


def test_jacobian_check_is_able_to_fail():
    """An unmasked MADE (all-ones masks) violates the property, and the check says so."""
    model = randomize(genzoo.build_model("made", (6,), hidden_sizes=[12]).double())
    for layer in model.layers:
        layer.set_mask(torch.ones_like(layer.mask))
    with pytest.raises(AssertionError, match="depends on itself or a later input"):
        _check_autoregressive(model, dense=False)


# -- MADE masks ---------------------------------------------------------------------------------------


def _current_masks(model) -> list[torch.Tensor]:
    return [layer.mask.clone() for layer in model.layers]


def test_made_masks_are_fixed():
    model = genzoo.build_model("made", (10,), hidden_sizes=[20, 20], num_masks=3, order_agnostic=True)
    first = {}
    for k in (0, 1, 2):
        model.use_mask(k)
        first[k] = _current_masks(model)
    for k in (2, 0, 1, 0, 2):
        model.use_mask(k)
        assert all(torch.equal(a, b) for a, b in zip(_current_masks(model), first[k]))
    # the masks do differ between indices (else cycling would be pointless)
    assert any(not torch.equal(a, b) for a, b in zip(first[0], first[1]))
    # the degrees are a pure function of the config: a second model gets the same masks
    twin = genzoo.build_model("made", (10,), hidden_sizes=[20, 20], num_masks=3, order_agnostic=True)
    for k in (0, 1, 2):
        twin.use_mask(k)
        assert all(torch.equal(a, b) for a, b in zip(_current_masks(twin), first[k]))
        assert all(torch.equal(a, b) for a, b in zip(model.mask_degrees(k), twin.mask_degrees(k)))
    # another mask_seed gives other masks
    other = genzoo.build_model("made", (10,), hidden_sizes=[20, 20], num_masks=3, order_agnostic=True, mask_seed=1)
    other.use_mask(0)
    assert any(not torch.equal(a, b) for a, b in zip(_current_masks(other), first[0]))


@pytest.mark.parametrize("order_agnostic", [False, True])
def test_made_degrees_follow_the_paper(order_agnostic):
    D, hidden = 9, (30, 7, 25)
    degrees = made_degrees(D, hidden, order_agnostic, seed=42)
    assert len(degrees) == 4
    assert sorted(degrees[0].tolist()) == list(range(1, D + 1))
    if not order_agnostic:
        assert degrees[0].tolist() == list(range(1, D + 1))
    for below, layer, size in zip(degrees[:-1], degrees[1:], hidden):
        assert layer.shape == (size,)
        assert layer.min() >= (below.min() if below is not degrees[0] else 1)
        assert layer.max() <= D - 1
    masks = made_masks(degrees)
    assert [m.shape for m in masks] == [(30, D), (7, 30), (25, 7), (D, 25)]
    for m in masks:
        assert ((m == 0) | (m == 1)).all()
    assert torch.equal(masks[0], (degrees[1][:, None] >= degrees[0][None, :]).float())
    assert torch.equal(masks[-1], (degrees[0][:, None] > degrees[3][None, :]).float())


def test_made_eval_log_prob_is_deterministic_and_is_the_mask_mixture():
    D, K = 7, 3
    model = randomize(genzoo.build_model("made", (D,), hidden_sizes=[16, 16], num_masks=K,
                                         order_agnostic=True).double(), seed=8).eval()
    x = all_binary(D)[::5]
    a = model.log_prob(x)
    b = model.log_prob(x)
    assert torch.equal(a, b)
    per_mask = []
    for k in range(K):
        model.use_mask(k)
        logits = model.conditional_logits(x)
        per_mask.append(-F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1))
    per_mask = torch.stack(per_mask)
    expected = torch.log(per_mask.exp().mean(0))
    assert torch.allclose(a, expected, rtol=0, atol=1e-12)
    assert int(model.training_step) == 0, "evaluation must not advance the training mask cycle"
    # the components are genuinely different distributions
    assert (per_mask[0] - per_mask[1]).abs().max() > 1e-3


def test_made_mixture_log_prob_is_differentiable():
    """The evaluated K-mask likelihood is a differentiable function of the weights; its gradient
    equals that of a direct implementation of (1/K) Σ_k p_k(x)."""
    D, K = 6, 3
    model = randomize(genzoo.build_model("made", (D,), hidden_sizes=[10], num_masks=K).double(), seed=1).eval()
    x = all_binary(D)[::4]
    components = []
    for k in range(K):
        masks = made_masks(model.mask_degrees(k))
        h = torch.relu(x @ (model.layers[0].weight * masks[0]).t() + model.layers[0].bias)
        logits = h @ (model.layers[1].weight * masks[1]).t() + model.layers[1].bias
        components.append(-F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1))
    expected_loss = -(torch.logsumexp(torch.stack(components), 0) - math.log(K)).mean()
    expected = torch.autograd.grad(expected_loss, list(model.parameters()))
    loss = model.loss(x)
    assert torch.allclose(loss, expected_loss, rtol=0, atol=1e-12)
    loss.backward()
    for p, g in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, g, rtol=0, atol=1e-10)


def test_made_training_cycles_through_the_masks():
    D, K = 6, 3
    model = randomize(genzoo.build_model("made", (D,), hidden_sizes=[16, 16], num_masks=K).double(), seed=2)
    x = all_binary(D)[::3]
    model.eval()
    component = []
    for k in range(K):
        model.use_mask(k)
        logits = model.conditional_logits(x)
        component.append(-F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1))
    assert "training_step" in model.state_dict()
    mixture = torch.logsumexp(torch.stack(component), dim=0) - math.log(K)
    model.train()
    for step in range(7):
        assert int(model.training_step) == step
        log_p = model.training_log_prob(x)
        assert int(model.training_step) == step + 1
        assert torch.allclose(log_p, component[step % K], rtol=0, atol=1e-12)
        # log_prob is the mixture in training mode too, and does not advance the cycle
        assert torch.allclose(model.log_prob(x), mixture, rtol=0, atol=1e-12)
        assert int(model.training_step) == step + 1
    assert torch.allclose(model.loss(x), -component[7 % K].mean(), rtol=0, atol=1e-12)
    # a single-mask MADE does not count steps: training and evaluation agree
    single = genzoo.build_model("made", (D,), hidden_sizes=[8]).train()
    single.training_log_prob(x.float())
    assert int(single.training_step) == 0


def test_made_mask_cycle_survives_a_state_dict_round_trip():
    model = genzoo.build_model("made", (5,), hidden_sizes=[8], num_masks=3).train()
    x = torch.zeros(2, 5)
    for _ in range(4):
        model.training_log_prob(x)
    copy = genzoo.build_model("made", (5,), hidden_sizes=[8], num_masks=3).train()
    for _ in range(2):  # the copy's own cycle is at step 2 before the load (2 % 3 != 4 % 3)
        copy.training_log_prob(x)
    copy.load_state_dict(model.state_dict())
    assert int(copy.training_step) == 4
    copy.training_log_prob(x)
    assert copy._active_mask == 4 % 3 and int(copy.training_step) == 5


def test_made_training_steps_read_nothing_back_from_the_device(monkeypatch):
    """A training step of a K-mask MADE on a GPU must not wait for the GPU: no value read back
    (a meta tensor has none, so any read raises) and no blocking copy of mask degrees from the
    host (each mask's degrees are copied once)."""
    D, K = 6, 3
    model = genzoo.build_model("made", (D,), hidden_sizes=[8, 8], num_masks=K).train()
    x = all_binary(D)[:4]
    model.training_log_prob(x)  # the first step reads the cycle's position from the buffer
    drawn = []
    real_mask_degrees = type(model).mask_degrees
    monkeypatch.setattr(type(model), "mask_degrees", lambda self, k: drawn.append(k) or real_mask_degrees(self, k))
    model.to("meta")
    x = x.to("meta")
    with model.input_values_checked_by_caller():
        for _ in range(2 * K):
            model.loss(x).backward()
    assert sorted(drawn) == list(range(K)), "each mask's degrees are moved to the device once"
    with pytest.raises(RuntimeError):  # the check is not vacuous: reading a value from the meta device raises
        model.loss(x).item()


# -- each model against its defining formula -----------------------------------------------------


def test_fvsbn_matches_its_formula():
    D = 7
    model = randomize(genzoo.build_model("fvsbn", (D,)).double(), seed=3)
    W, b = model.linear.weight, model.linear.bias  # W has entries on and above the diagonal too
    x = all_binary(D)[::7]
    expected = torch.zeros(len(x), dtype=torch.float64)
    for d in range(D):
        logit = b[d] + x[:, :d] @ W[d, :d]
        p = torch.sigmoid(logit)
        expected += torch.where(x[:, d] == 1, p.log(), (1 - p).log())
    assert torch.allclose(model.log_prob(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_nade_matches_its_formula(chunk_size):
    D, H = 6, 5
    model = randomize(genzoo.build_model("nade", (D,), hidden_size=H, chunk_size=chunk_size).double(), seed=4)
    x = all_binary(D)[::3]
    expected = torch.zeros(len(x), dtype=torch.float64)
    for d in range(D):
        h = torch.sigmoid(model.c + x[:, :d] @ model.W[:, :d].t())
        p = torch.sigmoid(model.b[d] + h @ model.V[d])
        expected += torch.where(x[:, d] == 1, p.log(), (1 - p).log())
    assert torch.allclose(model.log_prob(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("direct", [False, True], ids=["plain", "direct"])
def test_made_matches_its_formula(direct):
    D, K = 5, 2
    model = randomize(genzoo.build_model("made", (D,), hidden_sizes=[9, 11], num_masks=K,
                                         order_agnostic=True, direct_connections=direct).double(), seed=6).eval()
    x = all_binary(D)
    components = []
    for k in range(K):
        degrees = model.mask_degrees(k)
        masks = made_masks(degrees)
        h = x
        for layer, mask in zip(model.layers[:-1], masks[:-1]):
            h = torch.relu(h @ (layer.weight * mask).t() + layer.bias)
        logits = h @ (model.layers[-1].weight * masks[-1]).t() + model.layers[-1].bias
        if direct:  # A ⊙ M^direct, M^direct_{d,j} = 1[m⁰(d) > m⁰(j)]
            direct_mask = (degrees[0][:, None] > degrees[0][None, :]).double()
            logits = logits + x @ (model.direct.weight * direct_mask).t()
        p = torch.sigmoid(logits)
        components.append(torch.where(x == 1, p.log(), (1 - p).log()).sum(1))
    expected = torch.logsumexp(torch.stack(components), 0) - math.log(K)
    assert torch.allclose(model.log_prob(x), expected, rtol=0, atol=1e-10)


# -- MaskedLinear ------------------------------------------------------------------------------------


def test_masked_linear_masks_the_weight_and_its_gradient():
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    layer = MaskedLinear(3, 2, mask=mask).double()
    before = layer.weight.detach().clone()
    x = torch.randn(4, 3, dtype=torch.float64)
    y = layer(x)
    assert torch.allclose(y, x @ (before * mask.double()).t() + layer.bias, rtol=0, atol=1e-12)
    y.sum().backward()
    assert (layer.weight.grad[mask == 0] == 0).all()
    assert (layer.weight.grad[mask == 1] != 0).all()
    assert torch.equal(layer.weight.detach(), before), "the mask must not be applied to the parameter in place"
    assert "mask" not in layer.state_dict()


def test_masked_linear_rejects_a_mask_of_the_wrong_shape():
    layer = MaskedLinear(3, 2)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 2\), weight has \(2, 3\)"):
        layer.set_mask(torch.ones(3, 2))


def test_masked_linear_copies_a_mask_unless_told_not_to():
    layer = MaskedLinear(3, 2)
    mask = torch.ones(2, 3)
    layer.set_mask(mask)
    mask[0, 0] = 0  # the caller's tensor changes; the layer's copy does not
    assert layer.mask[0, 0] == 1
    fresh = torch.zeros(2, 3)
    layer.set_mask(fresh, copy=False)
    assert layer.mask is fresh


def test_made_degree_masks_match_the_definition():
    degrees = made_degrees(6, (9, 7), order_agnostic=True, seed=4)
    hidden_1, hidden_2, output = made_masks(degrees)
    for mask, d_out, d_in, strict in [(hidden_1, degrees[1], degrees[0], False), (hidden_2, degrees[2], degrees[1], False),
                                      (output, degrees[0], degrees[2], True)]:
        assert mask.dtype == torch.float32
        for k in range(len(d_out)):
            for j in range(len(d_in)):
                assert mask[k, j] == float(d_out[k] > d_in[j] if strict else d_out[k] >= d_in[j])


def test_made_masks_are_built_on_the_degrees_device():
    # The model builds each mask where its weights live; "meta" stands in for a GPU on CPU-only CI.
    degrees = [d.to("meta") for d in made_degrees(6, (9,), order_agnostic=True, seed=4)]
    assert all(mask.device.type == "meta" for mask in made_masks(degrees))


# -- FVSBN in the spiral orders --------------------------------------------------------------------------


def test_spiral_positions_of_a_small_grid():
    from genzoo.models.autoregressive.orders import spiral_positions

    # 3 × 4 grid, row-major numbers:  0  1  2  3 /  4  5  6  7 /  8  9 10 11
    assert spiral_positions(3, 4) == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
    assert spiral_positions(4, 1) == [0, 1, 2, 3]
    assert spiral_positions(1, 1) == [0]
    for height, width in [(28, 28), (5, 7), (6, 2)]:
        assert sorted(spiral_positions(height, width)) == list(range(height * width))


def test_subgrid_spiral_positions_of_a_small_grid():
    from genzoo.models.autoregressive.orders import subgrid_spiral_positions

    # 3 × 4 grid:  0  1  2  3 /  4  5  6  7 /  8  9 10 11
    # even rows & even columns {0, 2, 8, 10} along their spiral, then even & odd {1, 3, 9, 11},
    # odd & even {4, 6}, odd & odd {5, 7}
    assert subgrid_spiral_positions(3, 4) == [0, 2, 10, 8, 1, 3, 11, 9, 4, 6, 5, 7]
    assert subgrid_spiral_positions(1, 5) == [0, 2, 4, 1, 3]
    for height, width in [(28, 28), (5, 7), (1, 1), (2, 9)]:
        assert sorted(subgrid_spiral_positions(height, width)) == list(range(height * width))


def test_dimension_orders_keep_a_positions_channels_together():
    from genzoo.models.autoregressive.orders import dimension_order

    assert torch.equal(dimension_order("raster", (2, 3, 3)), torch.arange(18))
    # two 2 × 2 channels: spiral positions 0, 1, 3, 2, each position's two channels in turn
    assert dimension_order("spiral", (2, 2, 2)).tolist() == [0, 4, 1, 5, 3, 7, 2, 6]
    assert dimension_order("spiral", (2, 2)).tolist() == [0, 1, 3, 2]  # no channel axis
    assert torch.equal(dimension_order("spiral", (5,)), torch.arange(5))  # a flat vector is one row
    assert dimension_order("subgrid-spiral", (2, 1, 2)).tolist() == [0, 2, 1, 3]
    with pytest.raises(ValueError, match="unknown order 'zigzag'; known: raster, spiral, subgrid-spiral"):
        dimension_order("zigzag", (4,))


SPIRAL_ORDERS = {  # on a 3 × 3 image
    "spiral": [0, 1, 2, 5, 8, 7, 6, 3, 4],
    "subgrid-spiral": [0, 2, 8, 6, 1, 7, 3, 5, 4],
}


def _spiral_fvsbn(data_shape, seed, order="spiral"):
    return randomize(genzoo.build_model("fvsbn", data_shape, order=order).double(), seed=seed).eval()


@pytest.mark.parametrize("order", SPIRAL_ORDERS)
def test_spiral_fvsbn_sums_to_one_and_is_autoregressive_in_its_order(order):
    model = _spiral_fvsbn((1, 3, 3), seed=1, order=order)
    assert model.generation_order().tolist() == SPIRAL_ORDERS[order]
    assert model.log_prob(all_binary(9)).exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    _check_autoregressive(model, dense=True)
    # not the raster model: the centre pixel (last in both orders) depends on the pixels after it in raster order
    raster = genzoo.build_model("fvsbn", (1, 3, 3)).double()
    raster.load_state_dict(model.state_dict())
    assert (model.log_prob(all_binary(9)) - raster.log_prob(all_binary(9))).abs().max() > 1e-3


@pytest.mark.parametrize("order", SPIRAL_ORDERS)
def test_spiral_fvsbn_matches_its_formula(order):
    """log p(x) = Σ_k log p(x_{π_k} | x_{π_<k}) with the order π written out directly."""
    model = _spiral_fvsbn((1, 3, 3), seed=3, order=order)
    order = SPIRAL_ORDERS[order]
    W, b = model.linear.weight, model.linear.bias
    x = all_binary(9)
    expected = torch.zeros(len(x), dtype=torch.float64)
    for k, d in enumerate(order):
        earlier = order[:k]
        p = torch.sigmoid(b[d] + x[:, earlier] @ W[d, earlier])
        expected += torch.where(x[:, d] == 1, p.log(), (1 - p).log())
    assert torch.allclose(model.log_prob(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("order", SPIRAL_ORDERS)
@pytest.mark.parametrize("sampler", ["fast", "naive"])
def test_spiral_fvsbn_samples_follow_its_distribution(sampler, order):
    # 2 × 3 images, where neither order is the raster one
    model, other = _spiral_fvsbn((1, 2, 3), 21, order), _spiral_fvsbn((1, 2, 3), 22, order)
    assert not torch.equal(model.generation_order(), torch.arange(6))
    probabilities = model.log_prob(all_binary(6)).exp()
    generator = torch.Generator().manual_seed(1234)
    if sampler == "fast":
        x = model.sample(20_000, generator=generator).reshape(20_000, 6)
    else:
        x = model.sample_naive(model.draw_uniforms(20_000, generator))
    assert chisquare_p_value(x, probabilities) > 1e-3
    assert chisquare_p_value(x, other.log_prob(all_binary(6)).exp()) < 1e-6


@pytest.mark.parametrize("order", SPIRAL_ORDERS)
def test_spiral_fvsbn_fast_sampler_equals_naive_sampler(order):
    model = _spiral_fvsbn((1, 6, 7), seed=5, order=order)
    u = torch.rand(200, 42, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    fast = model.sample_from_uniforms(u.clone())
    assert torch.equal(fast, model.sample_naive(u.clone()))
    assert len(torch.unique(fast, dim=0)) > 100


def test_an_unknown_fvsbn_order_is_refused_with_its_name():
    with pytest.raises(ValueError, match="order") as info:
        genzoo.build_model("fvsbn", (1, 4, 4), order="zigzag")
    assert "zigzag" in str(info.value) and "\n" not in str(info.value)
