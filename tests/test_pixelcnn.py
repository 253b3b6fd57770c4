"""PixelCNN and Gated PixelCNN: normalization, the autoregressive masks (and Gated PixelCNN's
missing blind spot), cached == naive sampling, class conditioning, and the CLI end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import genzoo
from conftest import all_binary, randomize
from genzoo.cli import main
from genzoo.nn.masked_conv import MaskedConv2d, pixelcnn_mask


def build(name: str, shape, seed: int = 0, std: float = 0.5, **hp) -> genzoo.GenerativeModel:
    return randomize(genzoo.build_model(name, shape, **hp).double(), seed=seed, std=std).eval()


PIXELCNN = {"hidden_channels": 6, "num_blocks": 2, "head_channels": 5}
GATED = {"channels": 4, "num_layers": 2, "head_channels": 5}


# -- the masks -----------------------------------------------------------------------------------


def test_pixelcnn_masks():
    a = pixelcnn_mask(3, "A")
    b = pixelcnn_mask(3, "B")
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert pixelcnn_mask(7, "A").sum() == 3 * 7 + 3
    with pytest.raises(ValueError, match="odd"):
        pixelcnn_mask(4, "A")
    with pytest.raises(ValueError, match="mask_type"):
        pixelcnn_mask(3, "C")


def test_masked_conv_leaves_its_weight_alone_and_masked_taps_get_no_gradient():
    torch.manual_seed(0)
    conv = MaskedConv2d.pixelcnn(2, 3, 3, "A")
    before = conv.weight.detach().clone()
    x = torch.randn(4, 2, 5, 5)
    conv(x).square().sum().backward()
    assert torch.equal(conv.weight, before)
    assert (conv.weight.grad[:, :, 1, 1:] == 0).all() and (conv.weight.grad[:, :, 2] == 0).all()
    assert (conv.weight.grad[:, :, 0] != 0).all()
    # the output at one pixel from a cache equals the full convolution there
    from genzoo.nn.masked_conv import ActivationCache

    cache = ActivationCache(4, 2, 5, 5, 1, x)
    cache.data[:, :, 1:-1, 1:-1] = x
    with torch.no_grad():
        assert torch.allclose(conv.at(cache, 2, 3), conv(x)[:, :, 2, 3], atol=1e-6)


# -- normalization -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, hp",
    [("pixelcnn", PIXELCNN), ("gated-pixelcnn", GATED), ("gated-pixelcnn", {**GATED, "num_classes": 3})],
    ids=["pixelcnn", "gated", "gated-conditional"],
)
def test_binary_probabilities_sum_to_one_over_all_3x3_images(name, hp):
    model = build(name, (1, 3, 3), std=1.0, **hp)
    x = all_binary(9).reshape(-1, 1, 3, 3)
    labels = [None] + list(range(model.num_classes))
    for y in labels:
        log_p = model.log_prob(x) if y is None else model.log_prob(x, y=y)
        assert log_p.max() - log_p.min() > 1.0  # far from uniform: the check is not trivial
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("name, hp", [("pixelcnn", {"hidden_channels": 2, "num_blocks": 1, "head_channels": 2}),
                                      ("gated-pixelcnn", {"channels": 2, "num_layers": 1, "head_channels": 2, "num_classes": 2})],
                         ids=["pixelcnn", "gated-conditional"])
def test_8bit_probabilities_sum_to_one_over_all_1x2_images(name, hp):
    model = build(name, (1, 1, 2), data_kind="grayscale", **hp)
    assert model.support == "grayscale"
    x = torch.cartesian_prod(torch.arange(256.0), torch.arange(256.0)).double().reshape(-1, 1, 1, 2)
    # each class's p(x | y); the label-free mixture is checked against them in the conditioning test
    for y in [None] if model.num_classes == 0 else range(model.num_classes):
        log_p = model.log_prob(x) if y is None else model.log_prob(x, y=y)
        assert log_p.max() - log_p.min() > 1.0
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_8bit_model_rejects_binary_only_calls_and_bad_values():
    model = build("pixelcnn", (1, 2, 2), data_kind="grayscale", **PIXELCNN)
    with pytest.raises(ValueError, match="conditional_log_probs"):
        model.conditional_logits(torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="8-bit data needs integers"):
        model.log_prob(torch.full((1, 4), 256.0, dtype=torch.float64))
    log_probs = model.conditional_log_probs(torch.zeros(3, 4, dtype=torch.float64))
    assert log_probs.shape == (3, 4, 256)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 4, dtype=torch.float64))


# -- the autoregressive property, and the blind spot ---------------------------------------------


def dependence(outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(D, D) matrix whose entry (i, j) is nonzero iff outputs (B, D, F) at pixel i depend on input
    pixel j: the gradient of a random combination of pixel i's outputs (one backward pass per
    pixel; a random combination cancels exactly with probability zero)."""
    weights = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(0), dtype=outputs.dtype)
    rows = []
    for i in range(outputs.shape[1]):
        (grad,) = torch.autograd.grad((outputs[:, i] * weights[:, i]).sum(), x, retain_graph=True)
        rows.append(grad.abs().sum(0))
    return torch.stack(rows)


def output_jacobian(model, x: torch.Tensor) -> torch.Tensor:
    """Which inputs j each pixel's outputs (logit or 256 logits) depend on."""
    x = x.clone().requires_grad_()
    return dependence(model._outputs(x, None), x)


def feature_jacobian(model, x: torch.Tensor) -> torch.Tensor:
    """Which inputs j each pixel's last-layer features h^L depend on: the receptive field before
    the pointwise ReLU head (which can switch a pixel's gradient off for every input and hide
    what the stacks see)."""
    x = x.clone().requires_grad_()
    h = model.features(x.reshape(len(x), 1, model.height, model.width)).flatten(2)  # (B, C, D)
    return dependence(h.transpose(1, 2), x)


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn"])
@pytest.mark.parametrize("kind", ["binary", "grayscale"])
def test_output_at_pixel_i_never_depends_on_pixels_from_i_on(name, layers, kind):
    depth = {"num_blocks": layers} if name == "pixelcnn" else {"num_layers": layers}
    hp = PIXELCNN if name == "pixelcnn" else GATED
    model = build(name, (1, 4, 5), std=1.0, **{**hp, **depth, "data_kind": kind, "first_kernel_size": 3})
    x = torch.randn(2, 20, dtype=torch.float64)
    jac = output_jacobian(model, x)
    future = torch.triu(torch.ones(20, 20, dtype=torch.bool))  # j >= i
    assert (jac[future] == 0).all()
    assert (jac[~future] != 0).any()  # the check is not vacuous


def test_gated_pixelcnn_has_no_blind_spot_and_pixelcnn_does():
    """Gated PixelCNN: every earlier pixel j < i reaches pixel i. PixelCNN with the same kernels
    and depth misses (r − 1, c + 2): the blind spot of stacked type-B masks."""
    H = W = 4
    gated = build("gated-pixelcnn", (1, H, W), std=1.0, **{**GATED, "num_layers": 3, "first_kernel_size": 3})
    x = torch.randn(32, H * W, dtype=torch.float64)  # many inputs: no pixel has all its head ReLUs off
    jac = feature_jacobian(gated, x)
    past = torch.tril(torch.ones(H * W, H * W, dtype=torch.bool), diagonal=-1)  # j < i
    assert (jac[past] != 0).all()

    pixelcnn = build("pixelcnn", (1, H, W), std=1.0, **{**PIXELCNN, "num_blocks": 3, "first_kernel_size": 3})
    jac = feature_jacobian(pixelcnn, x)
    assert (jac[torch.triu(torch.ones(H * W, H * W, dtype=torch.bool))] == 0).all()
    blind = [(r * W + c, (r - 1) * W + c + 2) for r in range(1, H) for c in range(W - 2)]
    assert all(jac[i, j] == 0 for i, j in blind)
    assert (jac[past] != 0).sum() > past.sum() // 2  # most of the past is seen, just not all


# -- cached generation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, hp",
    [
        ("pixelcnn", PIXELCNN),
        ("pixelcnn", {**PIXELCNN, "data_kind": "grayscale"}),
        ("gated-pixelcnn", GATED),
        ("gated-pixelcnn", {**GATED, "num_classes": 3}),
        ("gated-pixelcnn", {**GATED, "num_classes": 3, "data_kind": "grayscale", "first_kernel_size": 5}),
    ],
    ids=["pixelcnn", "pixelcnn-8bit", "gated", "gated-conditional", "gated-conditional-8bit"],
)
def test_cached_sampler_equals_the_naive_one(name, hp):
    model = build(name, (1, 5, 6), seed=2, std=0.7, **hp)
    u = torch.rand(7, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = [None] if model.num_classes == 0 else [None, 0, 2, torch.tensor([0, 1, 2, 0, 1, 2, 1])]
    for y in labels:
        fast = model.sample_from_uniforms(u, y)
        assert torch.equal(fast, model.sample_naive(u, y))
        assert len(fast.unique()) > 1  # not a constant image: the check is not vacuous
    # sample() uses the cached sampler with the same draws
    draws = model.draw_uniforms(4, torch.Generator().manual_seed(1))
    assert torch.equal(model.sample(4, generator=torch.Generator().manual_seed(1)).reshape(4, -1),
                       model.sample_naive(draws))


def test_flat_data_is_a_one_row_image():
    model = build("gated-pixelcnn", (7,), **GATED)
    assert (model.height, model.width) == (1, 7)
    u = torch.rand(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(model.sample_from_uniforms(u), model.sample_naive(u))
    with pytest.raises(ValueError, match=r"single-channel"):
        genzoo.build_model("pixelcnn", (3, 8, 8))


def test_samples_follow_log_prob_chi_squared():
    """Pearson χ² of 20,000 cached samples of a 2×2 image (16 outcomes, 15 d.o.f.) against
    exp(log_prob); a model with other weights is the control that must be rejected."""
    torch.manual_seed(0)
    model = build("gated-pixelcnn", (1, 2, 2), std=1.0, **{**GATED, "num_classes": 2})
    n = 20_000
    x = model.sample(n, generator=torch.Generator().manual_seed(4)).reshape(n, 4)
    codes = (x * torch.tensor([1, 2, 4, 8], dtype=x.dtype)).sum(1).long()
    observed = torch.bincount(codes, minlength=16).double()
    outcomes = all_binary(4)

    def chi2(probabilities):
        expected = n * probabilities
        return float(((observed - expected) ** 2 / expected).sum())

    p = model.log_prob(outcomes).exp().detach()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert chi2(p) < 37.7  # the 0.999 quantile of χ²(15)
    other = build("gated-pixelcnn", (1, 2, 2), seed=1, std=1.0, **{**GATED, "num_classes": 2})
    assert chi2(other.log_prob(outcomes).exp().detach()) > 37.7


# -- class conditioning --------------------------------------------------------------------------


def test_class_label_changes_samples_and_log_prob():
    model = build("gated-pixelcnn", (1, 4, 4), std=1.0, **{**GATED, "num_classes": 10})
    a = model.sample(32, generator=torch.Generator().manual_seed(0), y=3)
    b = model.sample(32, generator=torch.Generator().manual_seed(0), y=3)
    c = model.sample(32, generator=torch.Generator().manual_seed(0), y=7)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(model.log_prob(a, y=3), model.log_prob(a, y=7))
    # the labelless likelihood is the uniform mixture over the classes
    per_class = torch.stack([model.log_prob(a, y=k) for k in range(10)])
    assert torch.allclose(model.log_prob(a), torch.logsumexp(per_class, 0) - math.log(10), atol=1e-12)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        model.log_prob(a, y=10)
    with pytest.raises(ValueError, match="got 2 labels for 32"):
        model.log_prob(a, y=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        build("gated-pixelcnn", (1, 4, 4), **GATED).log_prob(a, y=3)


@pytest.mark.parametrize("key, value", [("kernel_size", 4), ("first_kernel_size", 1), ("num_classes", -1),
                                        ("channels", 0), ("data_kind", "real")])
def test_gated_config_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        genzoo.build_model("gated-pixelcnn", (1, 4, 4), **{key: value})


@pytest.mark.parametrize("key, value", [("kernel_size", 2), ("hidden_channels", 1), ("num_blocks", -1)])
def test_pixelcnn_config_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        genzoo.build_model("pixelcnn", (1, 4, 4), **{key: value})


# -- end to end: train → eval → sample -----------------------------------------------------------


def test_cli_pixelcnn_train_eval_sample(tmp_path, capsys):
    run = tmp_path / "pixelcnn"
    assert main(["train", "pixelcnn", "--data", "digits", "--epochs", "1", "-p", "hidden_channels=8",
                 "-p", "num_blocks=1", "-p", "head_channels=8", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run)]) == 0
    assert "test NLL = " in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert "samples/s" in capsys.readouterr().out
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (4, 1, 8, 8) and set(np.unique(x)) <= {0, 1}
    assert main(["sample", str(run), "--label", "3"]) == 2
    assert "--label needs a class-conditional model" in capsys.readouterr().err


def test_cli_conditional_gated_pixelcnn(tmp_path, capsys):
    run = tmp_path / "gated"
    assert main(["train", "gated-pixelcnn", "--data", "digits", "--epochs", "1", "-p", "channels=8",
                 "-p", "num_layers=1", "-p", "head_channels=8", "-p", "num_classes=10",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run)]) == 0
    assert "conditional on the class labels" in capsys.readouterr().out
    # the trainer's validation scored log p(x | y) too
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "conditional on the class labels" in metrics["valid_likelihood"]
    for sampler in ("fast", "naive"):
        assert main(["sample", str(run), "-n", "3", "--label", "3", "--sampler", sampler,
                     "--out", str(tmp_path / f"{sampler}.png")]) == 0
    # both samplers draw the same digits from the same seed
    assert np.array_equal(np.load(tmp_path / "fast.npy"), np.load(tmp_path / "naive.npy"))
    assert main(["sample", str(run), "--label", "10"]) == 2
    assert "labels must lie in 0..9" in capsys.readouterr().err


def test_conditional_model_on_data_without_labels_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "bits.npy"
    np.save(data, np.random.default_rng(0).integers(0, 2, (30, 1, 4, 4)).astype(np.uint8))
    code = main(["train", "gated-pixelcnn", "--data", str(data), "--epochs", "1", "-p", "num_classes=10",
                 "-p", "channels=2", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "has no class labels" in err and "digits" in err


def test_digits_labels_follow_their_images():
    from sklearn.datasets import load_digits

    from genzoo.data import load_labels, load_splits
    from genzoo.data.sources import _shuffled_split

    digits = load_digits()
    index = _shuffled_split(np.arange(len(digits.target)), (1437, 180, 180))
    splits, _ = load_splits("digits")
    labels = load_labels("digits")
    for split in ("train", "valid", "test"):
        images = (digits.images[index[split]] > 8).astype(np.float32)
        assert np.array_equal(splits[split].numpy()[:, 0], images)
        assert np.array_equal(labels[split].numpy(), digits.target[index[split]])


def test_chain_rule_conditionals_follow_data_kind_and_conditioning():
    """Binary models offer "binary" conditionals (conditional_logits), 8-bit ones "categorical"
    (conditional_log_probs), as speculative sampling and the generic autoregressive tests expect;
    a class-conditional model offers none, since without a label its likelihood is a mixture over
    classes. The kind is a property of the instance: the class is the registered one, plainly."""
    import copy
    import pickle

    from genzoo.models.autoregressive import ChainRuleModel, GatedPixelCNN, PixelCNN

    for name, hp, cls in [("pixelcnn", PIXELCNN, PixelCNN), ("gated-pixelcnn", GATED, GatedPixelCNN)]:
        binary = build(name, (1, 3, 3), **hp)
        gray = build(name, (1, 3, 3), **hp, data_kind="grayscale")
        assert type(binary) is cls and type(gray) is cls and isinstance(binary, ChainRuleModel)
        assert binary.chain_rule_conditionals == "binary" and gray.chain_rule_conditionals == "categorical"
        x = all_binary(9)
        assert torch.allclose(binary.log_prob(x), -torch.nn.functional.binary_cross_entropy_with_logits(
            binary.conditional_logits(x), x, reduction="none").sum(1))
        v = torch.randint(0, 256, (5, 9), generator=torch.Generator().manual_seed(0)).double()
        assert torch.allclose(gray.log_prob(v), gray.conditional_log_probs(v).gather(2, v.long()[..., None]).sum((1, 2)))
        with pytest.raises(ValueError, match="binary"):
            gray.conditional_logits(v)
        for model in (binary, gray):  # the chain-rule reference sampler draws through draw_dimension
            u = model.draw_uniforms(6, torch.Generator().manual_seed(1))
            assert torch.equal(ChainRuleModel.sample_naive(model, u), model.sample_from_uniforms(u))
        for model in (binary, gray):  # copies keep the class, the kind and the weights' names
            for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
                assert type(twin) is cls and twin.chain_rule_conditionals == model.chain_rule_conditionals
                assert list(twin.state_dict()) == list(model.state_dict())
                assert torch.equal(twin.log_prob(x if model.support == "binary" else v),
                                   model.log_prob(x if model.support == "binary" else v))
    conditional = build("gated-pixelcnn", (1, 3, 3), **GATED, num_classes=2)
    assert type(conditional) is GatedPixelCNN and conditional.chain_rule_conditionals == ""
    assert copy.deepcopy(conditional).chain_rule_conditionals == ""
    with pytest.raises(ValueError, match="pass labels y"):
        conditional.conditional_logits(all_binary(9))
    assert conditional.conditional_logits(all_binary(9), y=1).shape == (512, 9)
