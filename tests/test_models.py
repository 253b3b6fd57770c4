"""The interface every registered model must honour (zuko-style: one parametrized test per
property over ``genzoo.list_models()``, so a new model is covered as soon as it registers)."""
from __future__ import annotations

import io
import math

import pytest
import torch

import genzoo
from conftest import ALL_MODELS, GRADCHECK_STD, MODEL_VARIANTS, all_binary, build_tiny, randomize, random_input

IMAGE_SHAPE = (1, 3, 4)  # 12 dims, deliberately not square


def test_registry_lists_the_known_models():
    names = genzoo.list_models()
    assert names == sorted(names)
    assert {"fvsbn", "nade", "made", "nice", "realnvp", "glow"} <= set(names)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_metadata(name):
    model = build_tiny(name, IMAGE_SHAPE)
    assert isinstance(model, genzoo.GenerativeModel)
    assert model.name == name
    assert model.likelihood in ("exact", "lower_bound", "none")
    assert model.support in ("binary", "grayscale", "real")
    assert model.data_shape == IMAGE_SHAPE
    assert model.num_dims == math.prod(IMAGE_SHAPE)
    assert model.device == torch.device("cpu")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_log_prob_shape_and_values(name):
    model = randomize(build_tiny(name, IMAGE_SHAPE).double()).eval()
    x = random_input(model, 7)
    log_p = model.log_prob(x)
    assert log_p.shape == (7,)
    assert log_p.dtype == torch.float64
    assert torch.isfinite(log_p).all()
    if model.support == "binary" and model.likelihood in ("exact", "lower_bound"):
        # a probability mass (or a lower bound on one) is at most 1
        assert (log_p <= 1e-12).all()
    # the batch rows are independent: one row alone gives the same value
    assert torch.allclose(model.log_prob(x[2:3]), log_p[2:3], rtol=0, atol=1e-12)
    if model.likelihood == "exact":
        # loss is the mean negative log-likelihood
        assert torch.allclose(model.loss(x), -log_p.mean(), rtol=0, atol=1e-12)
    else:
        # a bound's training objective (an ELBO, a k-sample IWAE bound) need not be the
        # evaluated bound, but it must be a finite scalar
        loss = model.loss(x)
        assert loss.dim() == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_float32_and_float64_agree(name):
    model = randomize(build_tiny(name, IMAGE_SHAPE), std=0.5).eval()
    x = random_input(model, 5)
    log_p32 = model.log_prob(x)
    assert log_p32.dtype == torch.float32
    log_p64 = model.double().log_prob(x.double())
    assert torch.allclose(log_p32.double(), log_p64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, hp", MODEL_VARIANTS)
def test_gradients_reach_every_parameter(name, hp):
    model = randomize(genzoo.build_model(name, IMAGE_SHAPE, **hp).double(), seed=3)
    model.train()
    loss = model.loss(random_input(model, 16, seed=1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    # A weight matrix stored by row block (genzoo.nn.RowBlockMaskedLinear) counts as one: a block
    # of units that only dead ReLUs feed may rightly get no gradient from one batch.
    gradient_sums: dict[str, torch.Tensor] = {}
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{param_name} has a non-finite gradient"
        weight_name = param_name.split(".weight_blocks.")[0] + ".weight" if ".weight_blocks." in param_name else param_name
        gradient_sums[weight_name] = gradient_sums.get(weight_name, 0) + p.grad.abs().sum()
    for weight_name, total in gradient_sums.items():
        assert total > 0, f"{weight_name} has an all-zero gradient"


class _LogProb(torch.nn.Module):
    """Wraps a model so that torch.func.functional_call can swap its parameters."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, x):
        return self.inner.log_prob(x)



@pytest.mark.parametrize("name, hp", MODEL_VARIANTS)
def test_parameter_gradients_match_finite_differences(name, hp):
    """gradcheck of log_prob with respect to every parameter (catches a wrong hand-written backward)."""
    hp = {k: ([5, 7] if k == "hidden_sizes" else v) for k, v in hp.items()}
    if name == "nade":
        hp.update(hidden_size=4, chunk_size=3)
    model = randomize(genzoo.build_model(name, (5,), **hp).double(), seed=13, std=GRADCHECK_STD.get(name, 1.0)).eval()
    wrapper = _LogProb(model)
    x = random_input(model, 7, seed=2).reshape(7, -1)
    names = [n for n, _ in wrapper.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in wrapper.named_parameters())

    def log_prob(*ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(log_prob, params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_train_and_eval_mode_agree(name):
    """With the tiny configs (one MADE mask) the training objective is the evaluated likelihood;
    MADE with several masks is covered in test_autoregressive."""
    model = randomize(build_tiny(name, IMAGE_SHAPE).double())
    x = random_input(model, 9)
    # a model may set itself up on its first training batch (Glow's data-dependent actnorm
    # initialization); the two modes must agree from then on
    model.train()
    model.log_prob(x)
    model.eval()
    eval_log_p = model.log_prob(x)
    assert torch.equal(model.log_prob(x), eval_log_p), "eval-mode log_prob is not deterministic"
    model.train()
    train_log_p = model.log_prob(x)
    assert torch.allclose(train_log_p, eval_log_p, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, hp", MODEL_VARIANTS)
def test_samples_have_the_right_shape_and_values(name, hp):
    model = randomize(genzoo.build_model(name, IMAGE_SHAPE, **hp).double()).eval()
    x = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, *IMAGE_SHAPE)
    assert x.dtype == torch.float64
    assert not x.requires_grad
    if model.support == "binary":
        assert ((x == 0) | (x == 1)).all()
    else:
        assert torch.isfinite(x).all()
    # samples are valid input to log_prob
    assert torch.isfinite(model.log_prob(x)).all()
    assert model.sample(1).shape == (1, *IMAGE_SHAPE)


@pytest.mark.parametrize("name, hp", MODEL_VARIANTS)
def test_sampling_is_reproducible_with_a_generator(name, hp):
    model = randomize(genzoo.build_model(name, (20,), **hp), std=0.3).eval()
    a = model.sample(16, generator=torch.Generator().manual_seed(5))
    b = model.sample(16, generator=torch.Generator().manual_seed(5))
    c = model.sample(16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name, hp", MODEL_VARIANTS)
def test_state_dict_round_trip(name, hp):
    torch.manual_seed(0)
    source = randomize(genzoo.build_model(name, IMAGE_SHAPE, **hp).double(), seed=11).eval()
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    torch.manual_seed(1)
    target = genzoo.build_model(name, IMAGE_SHAPE, **hp).double().eval()
    x = random_input(source, 8)
    assert not torch.allclose(target.log_prob(x), source.log_prob(x)), "the control is vacuous"
    target.load_state_dict(state)
    assert torch.equal(target.log_prob(x), source.log_prob(x))
    for (k1, v1), (k2, v2) in zip(source.state_dict().items(), target.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(source.sample(10, generator=g1), target.sample(10, generator=g2))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_repr(name):
    model = build_tiny(name, IMAGE_SHAPE)
    text = repr(model)
    assert isinstance(text, str) and text
    assert type(model).__name__ in text


# -- normalization ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, hp", MODEL_VARIANTS)
def test_probabilities_sum_to_one_over_all_binary_inputs(name, hp):
    """Σ_x p(x) = 1 over all 2^8 inputs, with random (non-uniform) weights, in float64."""
    n = 8
    model = randomize(genzoo.build_model(name, (n,), **hp).double(), seed=7).eval()
    if model.support != "binary" or model.likelihood == "none":
        pytest.skip("only binary models with a likelihood can be summed exhaustively")
    log_p = model.log_prob(all_binary(n))
    # the weights are far from uniform, so the check is not trivial
    assert log_p.max() - log_p.min() > 1.0
    total = log_p.exp().sum().item()
    if model.likelihood == "exact":
        assert total == pytest.approx(1.0, abs=1e-10)
    else:
        assert total <= 1.0 + 1e-10


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_initialization_is_normalized_too(name):
    n = 6
    model = build_tiny(name, (n,)).double().eval()
    if model.support != "binary" or model.likelihood != "exact":
        pytest.skip("exact binary models only")
    assert model.log_prob(all_binary(n)).exp().sum().item() == pytest.approx(1.0, abs=1e-10)


# -- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_flat_and_image_shaped_input_agree(name):
    model = randomize(build_tiny(name, (1, 8, 8)).double()).eval()
    x = random_input(model, 5)
    assert x.shape == (5, 1, 8, 8)
    assert torch.equal(model.log_prob(x), model.log_prob(x.reshape(5, 64)))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_integer_and_bool_input_is_accepted(name):
    model = randomize(build_tiny(name, (10,)).double()).eval()
    if model.support != "binary":
        pytest.skip("binary models only")
    x = random_input(model, 4)
    expected = model.log_prob(x)
    assert torch.equal(model.log_prob(x.long()), expected)
    assert torch.equal(model.log_prob(x.bool()), expected)


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize(
    "shape",
    [(4, 1, 8, 7), (4, 63), (4, 65), (4, 8, 8), (64,), (4, 1, 1, 8, 8)],
    ids=["wrong-image", "too-few", "too-many", "no-channel", "unbatched", "extra-dim"],
)
def test_log_prob_rejects_wrong_shapes(name, shape):
    model = build_tiny(name, (1, 8, 8))
    with pytest.raises(ValueError, match=r"shape") as info:
        model.log_prob(torch.zeros(shape))
    message = str(info.value)
    assert str(tuple(shape)) in message
    assert "(B, 1, 8, 8)" in message and "(B, 64)" in message


@pytest.mark.parametrize("name", ALL_MODELS)
def test_log_prob_rejects_non_binary_values(name):
    model = build_tiny(name, (1, 8, 8))
    if model.support != "binary":
        pytest.skip("binary models only")
    x = torch.zeros(4, 1, 8, 8)
    x[2, 0, 1, 3] = 0.5  # row 2, flat dimension 11
    with pytest.raises(ValueError) as info:
        model.log_prob(x)
    message = str(info.value)
    assert "row 2" in message and "0.5" in message and "dimension 11" in message
    assert "{0, 1}" in message
    assert "\n" not in message

    x = torch.zeros(3, 64)
    x[1, 5] = float("inf")
    with pytest.raises(ValueError, match=r"row 1 has value inf"):
        model.log_prob(x)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_log_prob_rejects_nan(name):
    model = build_tiny(name, (1, 8, 8))
    x = torch.zeros(5, 1, 8, 8)
    x[3, 0, 7, 7] = float("nan")
    with pytest.raises(ValueError, match=r"row 3 contains NaN"):
        model.log_prob(x)


def test_value_checks_are_skipped_only_inside_the_callers_block():
    model = genzoo.build_model("fvsbn", (4,))
    x = torch.tensor([[0.0, 1.0, 0.5, 1.0]])
    with model.input_values_checked_by_caller():
        assert torch.isfinite(model.log_prob(x)).all()  # not refused: the caller vouched for it
        with pytest.raises(ValueError, match="input has shape"):
            model.log_prob(torch.zeros(2, 5))  # shapes are still checked
    with pytest.raises(ValueError, match="row 0 has value 0.5"):
        model.log_prob(x)
    with pytest.raises(RuntimeError, match="boom"), model.input_values_checked_by_caller():
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="row 0 has value 0.5"):  # restored after an exception too
        model.log_prob(x)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_log_prob_rejects_non_tensors(name):
    model = build_tiny(name, (4,))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.log_prob([[0, 1, 0, 1]])


# -- build_model --------------------------------------------------------------------------------


def test_build_model_accepts_an_int_shape():
    model = genzoo.build_model("fvsbn", 5)
    assert model.data_shape == (5,)
    assert model.num_dims == 5


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model'") as info:
        genzoo.build_model("no-such-model", 4)
    for name in genzoo.list_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_build_model_unknown_hyperparameter(name):
    with pytest.raises(ValueError, match=r"unknown key 'not_a_hyperparameter'"):
        genzoo.build_model(name, 4, not_a_hyperparameter=1)


@pytest.mark.parametrize(
    "name, hp, key",
    [
        ("made", {"hiden_sizes": [4]}, "hiden_sizes"),
        ("made", {"hidden_sizes": "abc"}, "hidden_sizes"),
        ("made", {"hidden_sizes": [4.5]}, "hidden_sizes"),
        ("made", {"hidden_sizes": []}, "hidden_sizes"),
        ("made", {"hidden_sizes": [8, 0]}, "hidden_sizes"),
        ("made", {"num_masks": 0}, "num_masks"),
        ("made", {"num_masks": 1.5}, "num_masks"),
        ("made", {"num_masks": True}, "num_masks"),
        ("made", {"order_agnostic": "yes"}, "order_agnostic"),
        ("made", {"mask_seed": "0"}, "mask_seed"),
        ("nade", {"hidden_size": 0}, "hidden_size"),
        ("nade", {"hidden_size": "8"}, "hidden_size"),
        ("nade", {"chunk_size": 0}, "chunk_size"),
        ("fvsbn", {"hidden_size": 8}, "hidden_size"),
    ],
)
def test_build_model_bad_hyperparameters_name_the_key(name, hp, key):
    with pytest.raises(ValueError, match=key):
        genzoo.build_model(name, 4, **hp)


def test_build_model_converts_lists_to_tuples():
    model = genzoo.build_model("made", 4, hidden_sizes=[5, 6])
    assert model.config.hidden_sizes == (5, 6)
    assert [layer.out_features for layer in model.layers] == [5, 6, 4]


@pytest.mark.parametrize("name, hp", MODEL_VARIANTS + [("transformer", {"dropout": 0.5})])
def test_sampling_is_the_same_in_training_mode_and_leaves_the_mode_alone(name, hp):
    """Samples come from p_θ however the module is set: no dropout, batch statistics or
    training-step state while sampling; and each submodule keeps the mode it had."""
    model = randomize(genzoo.build_model(name, IMAGE_SHAPE, **hp).double(), seed=4)
    model.train()
    model.log_prob(random_input(model, 4))  # a model that sets itself up on its first training batch has done so
    first = next(m for m in model.modules() if m is not model) if len(list(model.modules())) > 1 else model
    first.eval()  # one submodule in another mode than its parent
    modes = [m.training for m in model.modules()]
    in_training = model.sample(5, generator=torch.Generator().manual_seed(7))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model.sample(5, generator=torch.Generator().manual_seed(7)), in_training)
    model.eval()
    assert torch.equal(model.sample(5, generator=torch.Generator().manual_seed(7)), in_training)


def test_a_k_mask_made_trains_after_sampling_under_inference_mode():
    model = genzoo.build_model("made", (6,), hidden_sizes=[16], num_masks=3)
    optimizer = torch.optim.Adam(model.parameters())
    x = all_binary(6)[::5]
    for _ in range(4):  # each step's mask was last built inside inference mode
        optimizer.zero_grad()
        model.train().loss(x).backward()
        optimizer.step()
        with torch.inference_mode():
            model.sample(4)
            model.eval().log_prob(x)
