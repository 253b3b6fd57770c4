"""Bad arguments to the model API get a one-line ValueError or TypeError naming the argument,
never a raw torch error: for every registered model (the checks live in GenerativeModel, so a
new model is covered as soon as it registers) and for build_model's data_shape."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import genzoo
from conftest import ALL_MODELS, build_tiny

DATA_SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def models() -> dict[str, genzoo.GenerativeModel]:
    """One tiny model per registered name, built once: the checks run before any model code."""
    return {name: build_tiny(name, DATA_SHAPE).eval() for name in genzoo.list_models()}


# -- sample(n, generator) --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("n, error", [(-1, ValueError), (2.5, TypeError), ("3", TypeError), (True, TypeError)])
def test_sample_refuses_a_bad_count(models, name, n, error):
    with pytest.raises(error, match=r"^n must be a non-negative integer, got "):
        models[name].sample(n)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_sample_refuses_a_generator_that_is_not_one(models, name):
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator or None, got int"):
        models[name].sample(3, generator=5)
    with pytest.raises(TypeError, match=r"^generator must be"):
        models[name].sample(3, 5)  # by position too


@pytest.mark.parametrize("name", ALL_MODELS)
def test_sample_of_zero_is_an_empty_batch(models, name):
    model = models[name]
    x = model.sample(0)
    assert x.shape == (0, *DATA_SHAPE)
    assert x.dtype == next(model.parameters()).dtype


@pytest.mark.parametrize("name", ["fvsbn", "vae", "realnvp"])
def test_sample_accepts_numpy_integers(models, name):
    assert models[name].sample(np.int64(2)).shape == (2, *DATA_SHAPE)


def test_the_error_messages_are_one_line(models):
    model = models["fvsbn"]
    with pytest.raises(TypeError) as info:
        model.sample(2.5)
    assert str(info.value) == "n must be a non-negative integer, got 2.5"
    with pytest.raises(ValueError) as info:
        model.sample(-1)
    assert str(info.value) == "n must be a non-negative integer, got -1"


# -- loss and log_prob on an empty batch -----------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_loss_refuses_an_empty_batch(models, name, training):
    # its mean would be 0/0: NaN, a ZeroDivisionError or a reshape error depending on the model
    model = models[name].train(training)
    try:
        for empty in (torch.zeros(0, 64), torch.zeros(0, *DATA_SHAPE)):
            with pytest.raises(ValueError, match=r"^loss needs at least one example, got an empty batch$"):
                model.loss(empty)
    finally:
        model.eval()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_loss_reports_a_wrong_shape_before_an_empty_batch(models, name):
    with pytest.raises(ValueError, match=r"input has shape \(0, 5\)"):
        models[name].loss(torch.zeros(0, 5))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_log_prob_of_an_empty_batch_is_empty(models, name):
    log_p = models[name].log_prob(torch.zeros(0, 64))
    assert log_p.shape == (0,)


# -- build_model(name, data_shape) -----------------------------------------------------------------


@pytest.mark.parametrize("data_shape", [(1, -8, 8), (0,), 0, -3, (), "abc", (1, 8.5, 8), True, (True, 4), None])
def test_build_model_refuses_a_bad_data_shape(data_shape):
    with pytest.raises(ValueError, match=r"^data_shape must be a tuple of positive integers, got "):
        genzoo.build_model("fvsbn", data_shape=data_shape)


@pytest.mark.parametrize("data_shape, expected", [
    ([1, 8, 8], (1, 8, 8)),
    (np.int64(4), (4,)),
    ((np.int64(2), 3), (2, 3)),
    (torch.Size([2, 3]), (2, 3)),
])
def test_build_model_accepts_integer_sizes_of_any_kind(data_shape, expected):
    model = genzoo.build_model("fvsbn", data_shape)
    assert model.data_shape == expected
    assert all(type(s) is int for s in model.data_shape)


@pytest.mark.parametrize("data_shape, expected", [
    ((16,), "this model expects (B, 16)"),
    ((1, 4, 4), "this model expects (B, 1, 4, 4) or (B, 16)"),
])
def test_a_wrong_shape_names_each_accepted_form_once(data_shape, expected):
    model = genzoo.build_model("fvsbn", data_shape)
    with pytest.raises(ValueError) as info:
        model.log_prob(torch.zeros(2, 17))
    assert str(info.value).endswith(expected)


# -- hyperparameters' values --------------------------------------------------------------------


def test_hyperparameters_accept_numpy_integers_and_numbers():
    model = genzoo.build_model("made", DATA_SHAPE, hidden_sizes=[np.int64(8)], num_masks=np.int32(2))
    assert model.config.hidden_sizes == (8,) and type(model.config.num_masks) is int
    assert genzoo.build_model("nade", DATA_SHAPE, hidden_size=np.uint8(6)).config.hidden_size == 6
    assert genzoo.build_model("glow", DATA_SHAPE, temperature=np.float32(0.5)).config.temperature == 0.5


@pytest.mark.parametrize("name, hyperparameters, message", [
    ("nade", {"hidden_size": np.bool_(True)}, "hidden_size must be an integer"),
    ("vae", {"eval_seed": 2**64}, "eval_seed must be an integer from -2**63 to 2**63 - 1, got 18446744073709551616"),
    ("made", {"mask_seed": -(2**63) - 1}, "mask_seed must be an integer from -2**63"),
    ("glow", {"temperature": float("inf")}, "temperature must be positive and finite, got inf"),
    ("realnvp", {"temperature": float("nan")}, "temperature must be positive and finite, got nan"),
])
def test_hyperparameters_out_of_range_are_refused_by_name(name, hyperparameters, message):
    with pytest.raises(ValueError) as info:
        genzoo.build_model(name, DATA_SHAPE, **hyperparameters)
    assert message in str(info.value)


def test_a_large_mask_seed_builds_and_negative_seeds_keep_their_masks():
    big = genzoo.build_model("made", (6,), hidden_sizes=[8], num_masks=2, mask_seed=2**62)
    assert big.mask_degrees(1)[1].shape == (8,)
    # a negative seed draws the masks it drew before seeds were taken modulo 2**64 (torch wraps it so)
    from genzoo.models.autoregressive.made import made_degrees

    negative = genzoo.build_model("made", (6,), hidden_sizes=[8], num_masks=2, mask_seed=-3, order_agnostic=True)
    for k in range(2):
        before = made_degrees(6, (8,), True, seed=-3 * 100_003 + k)
        assert all(torch.equal(a, b) for a, b in zip(negative.mask_degrees(k), before))


@pytest.mark.parametrize("name", ["nice", "realnvp", "glow"])
@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), "hot", True])
def test_a_flow_refuses_a_bad_sampling_temperature(models, name, temperature):
    with pytest.raises(ValueError, match=r"^temperature must be a positive finite number, got "):
        models[name].sample(2, temperature=temperature)
