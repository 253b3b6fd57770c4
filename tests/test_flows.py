"""Normalizing flows: every transform and every whole flow inverts and has the right
log-determinant, densities integrate to one, actnorm's data-dependent initialization, input
checks, sampling, and the command line end to end on ``digits``. The dequantization bounds
are in test_dequantization.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

import genzoo
from conftest import randomize
from genzoo.cli import main
from genzoo.config import load_run_config
from genzoo.evaluation import evaluate
from genzoo.models.flows import StandardLogistic, StandardNormal
from genzoo.models.flows.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNormFlow,
    Compose,
    FactorOut,
    InvertibleConv1x1,
    Logit,
    Reshape,
    Scaling,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    conv_net,
    mlp,
)
from genzoo.training import RunFolder

FLOWS = ["nice", "realnvp", "glow"]

#: small architectures, one per flow
SMALL = {
    "nice": {"hidden_size": 8, "hidden_layers": 1, "num_couplings": 4},
    "realnvp": {"hidden_channels": 4, "hidden_layers": 1, "couplings_per_scale": 1},
    "glow": {"hidden_channels": 4, "hidden_layers": 1, "steps_per_level": 2},
}


def _transforms():
    """(id, factory, event shape, input kind) for every transform, in configurations that
    exercise each code path (vector and image input, both mask parities, factor-out)."""

    def coupling_stack():
        shape = (4, 2, 2)
        return Compose(
            AffineCoupling(channel_mask(shape, 0), conv_net(4, 4, 8, 1)),
            ActNorm(4),
            InvertibleConv1x1(4),
            AffineCoupling(channel_mask(shape, 1), conv_net(4, 4, 8, 1)),
        )

    return [
        ("additive-coupling", lambda: AdditiveCoupling(alternating_mask(6, 0), mlp(6, 8, 6, 2)), (6,), "real"),
        ("additive-coupling-odd", lambda: AdditiveCoupling(alternating_mask(5, 1), mlp(5, 8, 5)), (5,), "real"),
        ("affine-coupling-vector", lambda: AffineCoupling(alternating_mask(6, 1), mlp(6, 8, 12)), (6,), "real"),
        ("affine-coupling-checkerboard", lambda: AffineCoupling(checkerboard_mask((2, 4, 4), 0), conv_net(2, 4, 4, 2)),
         (2, 4, 4), "real"),
        ("affine-coupling-checkerboard-odd", lambda: AffineCoupling(checkerboard_mask((1, 3, 3), 1), conv_net(1, 4, 2)),
         (1, 3, 3), "real"),
        ("affine-coupling-channel", lambda: AffineCoupling(channel_mask((4, 2, 2), 1), conv_net(4, 4, 8)), (4, 2, 2), "real"),
        ("scaling", lambda: Scaling((6,)), (6,), "real"),
        ("actnorm-image", lambda: ActNorm(3), (3, 2, 2), "real"),
        ("actnorm-vector", lambda: ActNorm(5), (5,), "real"),
        ("batchnorm", lambda: _with_running_stats(BatchNormFlow(3)), (3, 2, 2), "real"),
        ("conv1x1-image", lambda: InvertibleConv1x1(3), (3, 2, 2), "real"),
        ("conv1x1-vector", lambda: InvertibleConv1x1(5), (5,), "real"),
        ("squeeze", lambda: Squeeze(), (2, 4, 4), "real"),
        ("logit", lambda: Logit(0.05), (6,), "unit"),
        ("logit-no-alpha", lambda: Logit(0.0), (6,), "unit"),
        ("reshape", lambda: Reshape((12,), (3, 2, 2)), (12,), "real"),
        ("factor-out", lambda: FactorOut((4, 2, 2), 2, Compose(AffineCoupling(channel_mask((2, 2, 2)), conv_net(2, 4, 4)),
                                                                 Squeeze())), (4, 2, 2), "real"),
        ("compose", coupling_stack, (4, 2, 2), "real"),
    ]


def _with_running_stats(layer: BatchNormFlow) -> BatchNormFlow:
    layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    layer.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    return layer


TRANSFORMS = [pytest.param(factory, shape, kind, id=name) for name, factory, shape, kind in _transforms()]


def _input(shape, kind, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "unit":
        return torch.rand((batch, *shape), generator=generator, dtype=torch.float64) * 0.98 + 0.01
    return torch.randn((batch, *shape), generator=generator, dtype=torch.float64)


def _ready(transform: torch.nn.Module) -> torch.nn.Module:
    """float64, eval mode, random (non-identity) parameters; buffers kept."""
    torch.manual_seed(0)
    return randomize(transform.double(), seed=1, std=0.5).eval()


def _brute_force_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log |det ∂fn/∂x| for each row of x, from the full Jacobian of one example at a time."""
    out = []
    for row in x:
        J = jacobian(lambda v: fn(v.reshape(1, *row.shape)).reshape(-1), row.reshape(-1))
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign != 0, "the Jacobian is singular"
        out.append(logabsdet)
    return torch.stack(out)


# -- every transform ---------------------------------------------------------------------------------


@pytest.mark.parametrize("factory, shape, kind", TRANSFORMS)
def test_transform_inverts_both_ways(factory, shape, kind):
    t = _ready(factory())
    x = _input(shape, kind)
    z, logdet = t(x)
    assert z.shape == (3, *t.out_shape(shape)) and logdet.shape == (3,)
    assert torch.allclose(t.inverse(z), x, rtol=0, atol=1e-10), "x -> z -> x"
    z2 = torch.randn((3, *t.out_shape(shape)), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(t(t.inverse(z2))[0], z2, rtol=0, atol=1e-10), "z -> x -> z"


@pytest.mark.parametrize("factory, shape, kind", TRANSFORMS)
def test_transform_logdet_matches_the_brute_force_jacobian(factory, shape, kind):
    t = _ready(factory())
    x = _input(shape, kind, seed=2)
    _, logdet = t(x)
    expected = _brute_force_logdet(lambda v: t(v)[0], x)
    assert torch.allclose(logdet, expected, rtol=0, atol=1e-8)


def test_transforms_are_not_the_identity():
    """The inversion checks above would be vacuous on an identity map."""
    for name, factory, shape, kind in _transforms():
        if name in ("squeeze", "reshape"):
            continue
        t = _ready(factory())
        x = _input(shape, kind)
        z, logdet = t(x)
        assert not torch.allclose(z.reshape(3, -1), x.reshape(3, -1)), name


def test_batchnorm_uses_batch_statistics_in_training():
    layer = BatchNormFlow(2).double().train()
    x = torch.randn(64, 2, 3, 3, dtype=torch.float64) * 3 + 2
    z, logdet = layer(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    var = x.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=False)
    assert torch.allclose(logdet, (-0.5 * torch.log(var + layer.eps)).sum().expand(64) * 9)
    assert not torch.equal(layer.running_mean, torch.zeros(2, dtype=torch.float64))


# -- actnorm's data-dependent initialization ----------------------------------------------------------


def test_actnorm_initializes_from_the_first_training_batch():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 4, 4, dtype=torch.float64) * torch.tensor([0.5, 3.0, 10.0]).view(1, 3, 1, 1) + 7
    layer = ActNorm(3).double().train()
    assert not bool(layer.initialized)
    z, _ = layer(x)
    assert bool(layer.initialized)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(z.var(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-6)
    # a second batch does not re-initialize
    bias = layer.bias.detach().clone()
    layer(x * 2 + 1)
    assert torch.equal(layer.bias.detach(), bias)


def test_actnorm_does_not_initialize_in_eval_mode_or_after_loading():
    x = torch.randn(16, 4) * 5 + 3
    layer = ActNorm(4).eval()
    z, _ = layer(x)
    assert torch.equal(z, x) and not bool(layer.initialized)
    layer.train()(x)
    restored = ActNorm(4)
    restored.load_state_dict(layer.state_dict())
    assert bool(restored.initialized)
    restored.train()(torch.randn(16, 4))  # other data: no re-initialization
    assert torch.equal(restored.bias, layer.bias) and torch.equal(restored.log_scale, layer.log_scale)


def test_glow_initializes_every_actnorm_on_its_first_training_step():
    model = genzoo.build_model("glow", (1, 8, 8), data_kind="real", **SMALL["glow"]).double()
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm)]
    outputs = []
    hooks = [a.register_forward_hook(lambda mod, inp, out: outputs.append(out[0])) for a in actnorms]
    x = torch.randn(64, 1, 8, 8, dtype=torch.float64) * 2 + 1
    model.train().loss(x).backward()
    for hook in hooks:
        hook.remove()
    assert all(bool(a.initialized) for a in actnorms) and len(outputs) == len(actnorms)
    for z in outputs:
        assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(z.shape[1], dtype=torch.float64), atol=1e-8)
        assert torch.allclose(z.var(dim=(0, 2, 3), unbiased=False), torch.ones(z.shape[1], dtype=torch.float64), atol=1e-4)


def test_conv1x1_lu_parameters_give_the_weight_and_its_determinant():
    layer = _ready(InvertibleConv1x1(4))
    W = layer.weight()
    assert torch.allclose(torch.linalg.slogdet(W)[1], layer.log_s.sum(), atol=1e-10)
    fresh = InvertibleConv1x1(4).double()
    assert torch.allclose(fresh.weight() @ fresh.weight().t(), torch.eye(4, dtype=torch.float64), atol=1e-6), \
        "W starts as a rotation"


# -- whole flows ---------------------------------------------------------------------------------------

FLOW_CASES = [
    pytest.param(name, shape, kind, id=f"{name}-{'x'.join(map(str, shape))}-{kind}")
    for name in FLOWS
    for shape, kind in [((1, 8, 8), "real"), ((1, 4, 4), "grayscale"), ((5,), "real"), ((1, 3, 4), "binary")]
]


def _flow(name, shape, kind, **extra):
    """A small flow with random weights. On discrete data with α = 0 in the logit (α > 0 is checked
    on the Logit transform itself): z → x → z then stays well conditioned where the sigmoid saturates."""
    if kind != "real":
        extra.setdefault("logit_alpha", 0.0)
    torch.manual_seed(0)
    model = genzoo.build_model(name, shape, data_kind=kind, **{**SMALL[name], **extra}).double()
    return randomize(model, seed=3, std=0.3).eval()


def _flow_input(model, batch=3, seed=0):
    """Points where the flow's transform is defined: R^D, or (0, 1)^D after dequantization."""
    generator = torch.Generator().manual_seed(seed)
    if model.levels is None:
        return torch.randn(batch, model.num_dims, generator=generator, dtype=torch.float64)
    return torch.rand(batch, model.num_dims, generator=generator, dtype=torch.float64) * 0.9 + 0.05


@pytest.mark.parametrize("name, shape, kind", FLOW_CASES)
def test_whole_flow_inverts_both_ways(name, shape, kind):
    model = _flow(name, shape, kind)
    y = _flow_input(model)
    z, _ = model.transform(y)
    assert z.shape == (3, *model.latent_shape)
    assert torch.allclose(model.transform.inverse(z), y, rtol=0, atol=1e-9)
    z2 = model.base.sample((3, *model.latent_shape), torch.Generator().manual_seed(1), torch.float64, "cpu")
    if not isinstance(model.transform.transforms[0], Logit):
        assert torch.allclose(model.transform(model.transform.inverse(z2))[0], z2, rtol=0, atol=1e-9)
    else:
        # after the logit: a base draw may land where y = σ(v) is 1 − 1e-11, which float64 holds
        # to only ~5 digits of 1 − y; the rest of the flow inverts to float precision
        body = Compose(*model.transform.transforms[1:])
        assert torch.allclose(body(body.inverse(z2))[0], z2, rtol=0, atol=1e-9)
        assert torch.allclose(model.transform(model.transform.inverse(z2))[0], z2, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, shape, kind", FLOW_CASES)
def test_whole_flow_log_density_matches_the_brute_force_jacobian(name, shape, kind):
    model = _flow(name, shape, kind)
    y = _flow_input(model, seed=4)
    logdet = _brute_force_logdet(lambda v: model.transform(v)[0], y)
    expected = model.base.log_prob(model.transform(y)[0]) + logdet
    assert torch.allclose(model.log_density(y), expected, rtol=0, atol=1e-8)
    if kind == "real":
        assert torch.allclose(model.log_prob(y), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", FLOWS)
def test_image_flows_use_the_multi_scale_architecture(name):
    model = genzoo.build_model(name, (1, 8, 8), data_kind="real", **SMALL[name])
    kinds = {type(m).__name__ for m in model.modules()}
    if name == "nice":
        assert {"AdditiveCoupling", "Scaling"} <= kinds
        assert isinstance(model.base, StandardLogistic)
    else:
        assert {"AffineCoupling", "Squeeze", "FactorOut", "ActNorm"} <= kinds
        assert isinstance(model.base, StandardNormal)
    if name == "glow":
        assert "InvertibleConv1x1" in kinds
    batch = genzoo.build_model("realnvp", (1, 8, 8), data_kind="real", norm="batch", **SMALL["realnvp"])
    assert any(isinstance(m, BatchNormFlow) for m in batch.modules())


# -- the density integrates to one ----------------------------------------------------------------------


def _grid(low, high, n, dims):
    step = (high - low) / n
    centres = low + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    mesh = torch.meshgrid(*([centres] * dims), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1), step**dims


@pytest.mark.parametrize("name", FLOWS)
def test_density_integrates_to_one_in_two_dimensions(name):
    model = _flow(name, (2,), "real")
    points, cell = _grid(-12.0, 12.0, 400, 2)
    with torch.no_grad():
        total = (model.log_prob(points).exp().sum() * cell).item()
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", FLOWS)
def test_dequantized_density_integrates_to_one_on_the_unit_square(name):
    """On discrete data the flow is a density on (0, 1)^D (logit pre-processing included)."""
    model = _flow(name, (2,), "binary", preprocess="logit")
    points, cell = _grid(0.0, 1.0, 600, 2)
    with torch.no_grad():
        total = (model.log_density(points).exp().sum() * cell).item()
    assert total == pytest.approx(1.0, abs=5e-3)


def test_a_hand_stacked_flow_integrates_to_one_in_one_dimension():
    """A user's own flow from the transforms: logit, actnorm, scaling, a 1x1 'convolution'.
    With α > 0 the logit maps (−α/(1−2α), 1 + α/(1−2α)) onto R, so that is where y's density lives."""
    torch.manual_seed(0)
    alpha = 0.01
    flow = Compose(Logit(alpha), ActNorm(1), Scaling((1,)), InvertibleConv1x1(1)).double().eval()
    with torch.no_grad():  # parameters away from the identity (a sharp edge a grid cannot resolve avoided)
        flow.transforms[1].bias.fill_(0.7)
        flow.transforms[1].log_scale.fill_(-0.4)
        flow.transforms[2].log_scale.fill_(0.6)
        flow.transforms[3].log_s.fill_(0.1)
    base = StandardNormal()
    margin = alpha / (1 - 2 * alpha)
    y, cell = _grid(-margin, 1.0 + margin, 20000, 1)
    with torch.no_grad():
        z, logdet = flow(y)
        total = ((base.log_prob(z) + logdet).exp().sum() * cell).item()
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", FLOWS)
def test_one_dimensional_models_integrate_to_one(name):
    model = _flow(name, (1,), "real")
    x, cell = _grid(-30.0, 30.0, 20000, 1)
    with torch.no_grad():
        total = (model.log_prob(x).exp().sum() * cell).item()
    assert total == pytest.approx(1.0, abs=1e-4)


# -- likelihood kind, input checks, sampling --------------------------------------------------------------


@pytest.mark.parametrize("name", FLOWS)
def test_likelihood_kind_follows_the_data_kind(name):
    for kind, support, likelihood in [("real", "real", "exact"), ("binary", "binary", "lower_bound"),
                                      ("grayscale", "grayscale", "lower_bound")]:
        model = genzoo.build_model(name, (1, 4, 4), data_kind=kind, **SMALL[name])
        assert (model.support, model.likelihood) == (support, likelihood)
    default = genzoo.build_model(name, (1, 4, 4), **SMALL[name])
    assert default.support == "grayscale" and "256-level" in default.likelihood_detail
    assert "1 draw per example" in default.likelihood_detail
    variational = genzoo.build_model(name, (1, 4, 4), dequantization="variational", eval_draws=8, **SMALL[name])
    assert "variational dequantization bound" in variational.likelihood_detail and "8 draws" in variational.likelihood_detail


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize("value, where", [(0.5, "0.5"), (256.0, "256"), (-1.0, "-1"), (float("inf"), "inf")])
def test_grayscale_flows_refuse_values_outside_0_to_255(name, value, where):
    model = genzoo.build_model(name, (1, 4, 4), data_kind="grayscale", **SMALL[name])
    x = torch.full((3, 1, 4, 4), 17.0)
    x[1, 0, 2, 1] = value  # row 1, flat dimension 9
    with pytest.raises(ValueError) as info:
        model.log_prob(x)
    message = str(info.value)
    assert f"row 1 has value {where} at dimension 9" in message and "0, …, 255" in message and "\n" not in message


@pytest.mark.parametrize("name", FLOWS)
def test_binary_and_real_flows_refuse_bad_values(name):
    binary = genzoo.build_model(name, (6,), data_kind="binary", **SMALL[name])
    with pytest.raises(ValueError, match=r"row 0 has value 2 at dimension 3; .*\{0, 1\}"):
        binary.log_prob(torch.tensor([[0, 1, 0, 2, 1, 1.0]]))
    real = genzoo.build_model(name, (6,), data_kind="real", **SMALL[name])
    with pytest.raises(ValueError, match=r"row 1 has value -inf at dimension 0; values must be finite"):
        real.log_prob(torch.tensor([[0.0] * 6, [-math.inf] + [0.0] * 5]))
    # finite in float64, inf in the model's float32: refused rather than scored NaN
    beyond = torch.zeros(2, 6, dtype=torch.float64)
    beyond[1, 5] = 1e39
    with pytest.raises(ValueError, match=r"row 1 has value 1e\+39 at dimension 5, beyond the range of the model's float32"):
        real.log_prob(beyond)
    assert torch.isfinite(real.double().log_prob(beyond[:1])).all()


@pytest.mark.parametrize(
    "name, hp, key",
    [
        ("nice", {"data_kind": "color"}, "data_kind"),
        ("nice", {"eval_draws": 0}, "eval_draws"),
        ("nice", {"logit_alpha": 0.5}, "logit_alpha"),
        ("nice", {"prior": "cauchy"}, "prior"),
        ("nice", {"num_couplings": 0}, "num_couplings"),
        ("realnvp", {"num_scales": 0}, "num_scales"),
        ("realnvp", {"norm": "layer"}, "norm"),
        ("realnvp", {"dequantization": "gaussian"}, "dequantization"),
        ("glow", {"steps_per_level": 0}, "steps_per_level"),
        ("glow", {"temperature": 0.0}, "temperature"),
        ("glow", {"hidden_channels": 2.5}, "hidden_channels"),
    ],
)
def test_bad_flow_hyperparameters_name_the_key(name, hp, key):
    with pytest.raises(ValueError, match=key):
        genzoo.build_model(name, (1, 4, 4), **hp)


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize("kind, levels", [("grayscale", 256), ("binary", 2)])
def test_samples_are_in_the_data_space(name, kind, levels):
    model = _flow(name, (1, 4, 4), kind)
    x = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 1, 4, 4) and x.dtype == torch.float64
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= levels - 1
    assert len(x.unique()) > 1
    assert torch.isfinite(model.log_prob(x)).all()


@pytest.mark.parametrize("name", FLOWS)
def test_sampling_at_a_temperature(name):
    model = _flow(name, (1, 4, 4), "real")
    base_z = model.base.sample((400, *model.latent_shape), torch.Generator().manual_seed(0), torch.float64, "cpu", 0.5)
    assert base_z.std().item() == pytest.approx(0.5 * (1 if name != "nice" else math.pi / math.sqrt(3)), rel=0.1)
    g = torch.Generator().manual_seed(2)
    cold = model.sample(200, generator=g, temperature=0.1)
    hot = model.sample(200, generator=torch.Generator().manual_seed(2))
    assert cold.std(dim=0).mean() < hot.std(dim=0).mean()
    configured = _flow(name, (1, 4, 4), "real", temperature=0.1)
    assert torch.allclose(configured.sample(200, generator=torch.Generator().manual_seed(2)), cold)


# -- the command line, end to end on digits --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params",
    [
        ("nice", ["hidden_size=32", "hidden_layers=2"]),
        ("realnvp", ["hidden_channels=8", "couplings_per_scale=1", "norm=\"batch\""]),
        ("glow", ["hidden_channels=8", "steps_per_level=2", "dequantization=\"variational\"", "dequant_hidden_size=16",
                  "eval_draws=2"]),
    ],
)
def test_cli_trains_evaluates_and_samples_a_flow_on_digits(name, params, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", name, "--data", "digits", "--epochs", "2", "--out", str(run), "--quiet", "--lr", "3e-3"]
    for p in params:
        args += ["-p", p]
    assert main(args) == 0
    config = load_run_config(RunFolder(run).config)
    assert config.model["data_kind"] == "binary", "the trainer records the data kind in the resolved config"
    records = RunFolder(run).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2] and all(math.isfinite(r["valid_nll"]) for r in records)
    # a bound on the log-probability of binary data: NLL ≥ 0
    assert all(r["valid_nll"] > 0 for r in records)
    capsys.readouterr()

    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "NLL ≤" in out and "dequantization bound on the 2-level data" in out
    import json

    record = json.loads((run / "eval_test.json").read_text())
    assert record["likelihood"] == "lower_bound" and "draw" in record["likelihood_detail"]

    png = tmp_path / "samples.png"
    assert main(["sample", str(run), "-n", "9", "--out", str(png)]) == 0
    samples = np.load(png.with_suffix(".npy"))
    assert samples.shape == (9, 1, 8, 8) and samples.dtype == np.uint8 and set(np.unique(samples)) <= {0, 1}
    # --temperature: the model's sample(temperature=) with the same seed; a bad one is one line
    cold = tmp_path / "cold.png"
    assert main(["sample", str(run), "-n", "9", "--temperature", "0.3", "--out", str(cold), "--quiet"]) == 0
    model = genzoo.load_model(run)
    expected = model.sample(9, generator=torch.Generator().manual_seed(0), temperature=0.3)
    assert np.array_equal(np.load(cold.with_suffix(".npy")), expected.numpy().astype(np.uint8))
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "9", "--temperature", "0", "--out", str(cold)]) == 2
    assert "temperature must be a positive finite number" in capsys.readouterr().err

    assert main(["train", name, "--data", "digits", "--epochs", "3", "--out", str(run), "--resume", "--quiet"]) == 0
    assert [r["epoch"] for r in RunFolder(run).read_metrics()] == [1, 2, 3]


def test_cli_refuses_a_data_kind_that_is_not_the_data(tmp_path, capsys):
    code = main(["train", "realnvp", "--data", "digits", "--epochs", "1", "-p", "data_kind=\"grayscale\"",
                 "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("genzoo: error: model 'realnvp' is configured for grayscale data, but 'digits' is binary; "
                   'set data_kind = "binary" in [model] (or leave it out)')


def test_a_flow_trains_on_8bit_data_in_bits_per_dim(tmp_path):
    """An 8-bit user file: the trainer sets data_kind = "grayscale"; the bound is in bits/dim."""
    rng = np.random.default_rng(0)
    data = np.clip(rng.normal(128, 40, size=(120, 1, 4, 4)).round(), 0, 255).astype(np.float32)
    path = tmp_path / "pixels.npy"
    np.save(path, data)
    run = tmp_path / "run"
    assert main(["train", "glow", "--data", str(path), "--epochs", "2", "--out", str(run), "--quiet",
                 "-p", "hidden_channels=8", "-p", "steps_per_level=1", "--batch-size", "32"]) == 0
    config = load_run_config(RunFolder(run).config)
    assert config.model["data_kind"] == "grayscale"
    from genzoo.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(RunFolder(run).best))
    result = evaluate(model, torch.tensor(data).reshape(120, -1))
    assert result.likelihood == "lower_bound"
    # a Gaussian blob of σ = 40 levels has about log2(40·sqrt(2πe)) ≈ 7.4 bits of entropy per pixel
    assert 5.0 < result.bits_per_dim < 9.0
    samples = model.sample(10)
    assert torch.equal(samples, samples.round()) and samples.min() >= 0 and samples.max() <= 255


def test_more_squeezes_than_the_image_takes_are_refused_not_turned_into_a_column():
    """Glow with 3 levels on 28×28 MNIST used to become one 784-channel column, with no squeeze
    or split and about 200× the parameters, silently; an odd image still becomes a column."""
    with pytest.raises(ValueError, match=r"glow: num_levels = 3 squeezes the 28×28 image 3 times .* at most 2"):
        genzoo.build_model("glow", (1, 28, 28), num_levels=3, hidden_channels=4)
    with pytest.raises(ValueError, match=r"realnvp: num_scales = 4 .* at most 2"):
        genzoo.build_model("realnvp", (1, 28, 28), num_scales=4, hidden_channels=4)
    assert genzoo.build_model("glow", (1, 28, 28), num_levels=2, hidden_channels=4) is not None
    odd = genzoo.build_model("realnvp", (1, 3, 4), num_scales=2, hidden_channels=4, data_kind="real")
    assert torch.isfinite(odd.log_prob(torch.rand(2, 1, 3, 4))).all()
