"""Stricter checks of the flows: the coupling masks alternate so that every entry is updated, a
freshly built coupling is the identity (its network's last layer starts at zero), batch
normalization's running averages and its single-row case, the Real NVP layer counts, and the
dequantization bound's terms written out by hand.

Written from a mutation audit: each test fails on a small change (a mask parity, a momentum, an
initialization, a Jacobian term of q) that inversion and brute-force log-determinant checks cannot
see, because the changed flow is still a valid flow.
"""
from __future__ import annotations

import math

import pytest
import torch

import genzoo
from conftest import randomize
from genzoo.models.flows import StandardLogistic, StandardNormal, UniformDequantization, dequantization_bound
from genzoo.models.flows.transforms import (
    AdditiveCoupling,
    AffineCoupling,
    BatchNormFlow,
    Compose,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    conv_net,
    mlp,
)

SMALL = {
    "nice": {"hidden_size": 8, "hidden_layers": 1, "num_couplings": 4},
    "realnvp": {"hidden_channels": 4, "hidden_layers": 1, "couplings_per_scale": 2},
    "glow": {"hidden_channels": 4, "hidden_layers": 1, "steps_per_level": 2},
}


# -- masks ---------------------------------------------------------------------------------------------


def test_masks_of_opposite_parity_are_complements():
    for first, second in [(alternating_mask(7, 0), alternating_mask(7, 1)),
                          (checkerboard_mask((2, 3, 4), 0), checkerboard_mask((2, 3, 4), 1)),
                          (channel_mask((5, 2, 2), 0), channel_mask((5, 2, 2), 1)),
                          (channel_mask((4,), 0), channel_mask((4,), 1))]:
        assert ((first == 0) | (first == 1)).all() and 0 < first.sum() < first.numel()
        assert torch.equal(first + second, torch.ones_like(first))
    assert alternating_mask(5, 0).tolist() == [1, 0, 1, 0, 1]
    assert checkerboard_mask((1, 2, 2), 0)[0].tolist() == [[1, 0], [0, 1]]
    assert channel_mask((4,), 0).tolist() == [1, 1, 0, 0]


def _coupling_runs(module: torch.nn.Module):
    """The masks of each run of consecutive couplings of one Compose (other layers in between
    allowed, a factor-out or another Compose ends the run's scope)."""
    for compose in module.modules():
        if not isinstance(compose, Compose):
            continue
        masks = [t.mask for t in compose.transforms if isinstance(t, (AdditiveCoupling, AffineCoupling))]
        if len(masks) >= 2:
            yield masks


@pytest.mark.parametrize("name, shape", [("nice", (6,)), ("realnvp", (1, 8, 8)), ("realnvp", (5,))])
def test_successive_couplings_alternate_so_every_entry_is_updated(name, shape):
    """Real NVP (section 3.5) and NICE alternate the kept half, so that a stack of couplings
    changes every entry: consecutive couplings of the same kind are complements."""
    model = genzoo.build_model(name, shape, data_kind="real", **SMALL[name])
    runs = list(_coupling_runs(model))
    assert runs
    for masks in runs:
        for a, b in zip(masks[:-1], masks[1:]):
            if a.shape == b.shape:
                assert torch.equal(a + b, torch.ones_like(a))


def test_nice_changes_every_dimension_with_the_others():
    """Every output of a NICE stack depends on some other input: no dimension is only ever kept."""
    torch.manual_seed(0)
    model = randomize(genzoo.build_model("nice", (6,), data_kind="real", **SMALL["nice"]).double(), seed=1, std=0.5)
    x = torch.randn(6, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: model.transform(v[None])[0][0], x)
    off_diagonal = J - torch.diag(torch.diagonal(J))
    assert (off_diagonal.abs().sum(1) > 1e-6).all()


def test_real_nvp_has_the_papers_layer_counts():
    """Per scale k checkerboard couplings, a squeeze, k channel couplings; the last scale k + 1
    checkerboard couplings (section 3.6: 3, 3 and 4)."""
    model = genzoo.build_model("realnvp", (1, 8, 8), data_kind="real", hidden_channels=4, hidden_layers=1,
                               couplings_per_scale=3, num_scales=2)
    couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    checker = [c for c in couplings if c.mask.shape == (1, 8, 8)]
    channel = [c for c in couplings if c.mask.shape == (4, 4, 4)]
    last = [c for c in couplings if c.mask.shape == (2, 4, 4)]
    assert (len(checker), len(channel), len(last)) == (3, 3, 4)


# -- a fresh coupling is the identity ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nice", "realnvp", "glow"])
def test_fresh_couplings_start_as_the_identity(name):
    """The conditioner's last layer starts at zero (Glow, section 3.3), so each coupling starts as
    the identity with log-determinant 0; the models' couplings are built that way."""
    torch.manual_seed(0)
    model = genzoo.build_model(name, (1, 4, 4), data_kind="real", **SMALL[name]).double()
    couplings = [m for m in model.modules() if isinstance(m, (AdditiveCoupling, AffineCoupling))]
    assert couplings
    for c in couplings:
        x = torch.randn(3, *c.mask.shape, dtype=torch.float64)
        z, logdet = c(x)
        assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
    for net in (mlp(4, 8, 4), conv_net(2, 4, 4)):
        assert all((p == 0).all() for p in net[-1].parameters())


# -- batch normalization ---------------------------------------------------------------------------------


def test_batchnorm_running_averages_move_by_the_momentum():
    layer = BatchNormFlow(2, momentum=0.05).double().train()
    x = torch.randn(32, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 2
    per_channel = x.transpose(0, 1).reshape(2, -1)
    layer(x)
    assert torch.allclose(layer.running_mean, 0.05 * per_channel.mean(1), rtol=0, atol=1e-12)
    assert torch.allclose(layer.running_var, 0.95 + 0.05 * per_channel.var(1, unbiased=False), rtol=0, atol=1e-12)


def test_batchnorm_with_one_row_in_training_uses_the_running_averages():
    """A one-row batch has no variance to estimate (per-channel vectors): it uses the running averages
    as in evaluation, instead of dividing by sqrt(0 + ε)."""
    layer = BatchNormFlow(3).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    z_eval, ld_eval = layer.eval()(x)
    z_train, ld_train = layer.train()(x)
    assert torch.equal(z_train, z_eval) and torch.equal(ld_train, ld_eval)
    assert torch.allclose(layer.inverse(z_train), x, rtol=0, atol=1e-12)


# -- the base distributions and the dequantization bound ---------------------------------------------------


def test_base_log_densities_are_the_normal_and_logistic_ones():
    z = torch.tensor([[0.3, -2.0, 1.5]], dtype=torch.float64)
    normal = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1)
    logistic = (-z - 2 * torch.log1p(torch.exp(-z))).sum(1)
    assert torch.allclose(StandardNormal().log_prob(z), normal, rtol=0, atol=1e-12)
    assert torch.allclose(StandardLogistic().log_prob(z), logistic, rtol=0, atol=1e-12)


def test_uniform_dequantization_bound_on_binary_data_is_log_density_minus_d_log_2():
    """log P(x) ≥ log p((x + u)/2) − D log 2 with log q = 0, on a flow with its logit."""
    torch.manual_seed(0)
    model = randomize(genzoo.build_model("realnvp", (3,), data_kind="binary", **SMALL["realnvp"]).double(),
                      seed=2, std=0.3).eval()
    x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    u = torch.tensor([[0.25, 0.5, 0.9], [0.1, 0.6, 0.3]], dtype=torch.float64)
    with torch.no_grad():
        value = dequantization_bound(model.log_density, x, UniformDequantization(), u, 2)
        expected = model.log_density((x + u) / 2) - 3 * math.log(2)
    assert torch.allclose(value, expected, rtol=0, atol=1e-12)


def test_evaluation_averages_the_bound_over_its_draws():
    """eval_draws = 3: log_prob is the mean of the three seeded single-draw bounds, not their sum."""
    torch.manual_seed(0)
    model = randomize(genzoo.build_model("nice", (3,), data_kind="binary", preprocess="logit", eval_draws=3,
                                         **SMALL["nice"]).double(), seed=2, std=0.3).eval()
    x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    noise = UniformDequantization().draw_noise((3, 3), torch.Generator().manual_seed(0), x)
    with torch.no_grad():
        singles = torch.stack([dequantization_bound(model.log_density, x, model.dequantizer, n.expand_as(x), 2)
                               for n in noise])
        assert torch.allclose(model.log_prob(x), singles.mean(0), rtol=0, atol=1e-12)


def test_variational_dequantizers_networks_see_x_scaled_to_minus_one_one():
    """q(u | x)'s coupling networks take [ε_kept, 2x/(L − 1) − 1]: the context is x rescaled, as the
    docstring states, whatever the coupling's own input."""
    from genzoo.models.flows import VariationalDequantization

    q = VariationalDequantization(2, levels=256, num_layers=2, hidden_size=4).double()
    seen = []
    hooks = [c.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())) for c in q.couplings]
    x = torch.tensor([[0.0, 255.0], [51.0, 127.5]], dtype=torch.float64)
    q(x, torch.zeros(2, 2, dtype=torch.float64))
    for h in hooks:
        h.remove()
    assert len(seen) == 2
    for inputs in seen:
        assert torch.allclose(inputs[:, 2:], torch.tensor([[-1.0, 1.0], [-0.6, 0.0]], dtype=torch.float64))
