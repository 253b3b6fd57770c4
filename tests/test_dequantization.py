"""Dequantization: the bound E_q[log p((x + u)/L) − log q(u|x)] − D log L on discrete data is below
the exact discrete log P(x) = log ∫_cell p, which small cases let us integrate; the variational
q tightens it; evaluation is deterministic, training draws fresh noise."""
from __future__ import annotations

import math

import pytest
import torch

import genzoo
from conftest import all_binary, binary_index, outcome_chisquare_p_value, randomize
from genzoo.models.flows.transforms import ActNorm
from genzoo.models.flows import UniformDequantization, VariationalDequantization, dequantization_bound

FLOWS = ["nice", "realnvp", "glow"]
SMALL = {
    # Gaussian tails: with the logistic prior and a logit, y's density can have an integrable
    # singularity y^(1/a − 1) at the cell edges that a midpoint grid does not resolve
    "nice": {"hidden_size": 8, "hidden_layers": 1, "prior": "gaussian"},
    "realnvp": {"hidden_channels": 4, "hidden_layers": 1, "couplings_per_scale": 1},
    "glow": {"hidden_channels": 4, "hidden_layers": 1, "steps_per_level": 2},
}


def _model(name, shape, kind, dequantization="uniform", **extra):
    torch.manual_seed(0)
    hp = {**SMALL[name], "data_kind": kind, "dequantization": dequantization, "preprocess": "logit",
          "logit_alpha": 0.0, "dequant_layers": 2, "dequant_hidden_size": 8, **extra}
    model = randomize(genzoo.build_model(name, shape, **hp).double(), seed=5, std=0.4).eval()
    for module in model.modules():  # p stays as randomized when a test trains q in training mode
        if isinstance(module, ActNorm):
            module.initialized.fill_(True)
    return model


def _exact_log_probs(model, x: torch.Tensor, points_per_side: int) -> torch.Tensor:
    """log P(x) = log ∫ over x's cell of p(y) dy, by the midpoint rule, for each row of x."""
    L, D = model.levels, model.num_dims
    offsets = (torch.arange(points_per_side, dtype=torch.float64) + 0.5) / points_per_side
    mesh = torch.stack([m.reshape(-1) for m in torch.meshgrid(*([offsets] * D), indexing="ij")], dim=1)
    out = []
    with torch.no_grad():
        for row in x:
            y = (row + mesh) / L
            out.append(torch.logsumexp(model.log_density(y), 0) - D * math.log(L) - math.log(len(mesh)))
    return torch.stack(out)


@pytest.mark.parametrize("name", FLOWS)
def test_a_draw_at_the_top_of_a_cell_stays_inside_it_in_float32(name):
    """x + u rounds up to x + 1 in float32 for x ≥ 128 and u within 8e-6 of 1 (and a float64
    uniform can round to u = 1 itself): y must stay below the cell's edge, or the logit of y = 1
    makes the bound NaN and training stops."""
    model = _model(name, (2,), "grayscale").float()
    x = torch.tensor([[255.0, 128.0], [0.0, 1.0]])
    y_max = (x + 1) / 256
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    for u in (1.0, below_one, 1 - 4e-6):
        noise = torch.full_like(x, u)
        with torch.no_grad():
            value = dequantization_bound(model.log_density, x, model.dequantizer, noise, 256)
        assert torch.isfinite(value).all(), (u, value)
    # and a draw inside the cell is not moved
    captured = []
    with torch.no_grad():
        dequantization_bound(lambda y: captured.append(y) or y.sum(1), x, model.dequantizer, torch.full_like(x, 0.5), 256)
    assert torch.equal(captured[0], (x + 0.5) / 256) and (captured[0] < y_max).all()


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize("kind", ["binary", "grayscale"])
def test_discrete_samples_follow_the_models_cell_probabilities(name, kind):
    """A flow's discrete sample floor(L·y) must be distributed as P(x) = ∫_cell p, the likelihood
    its bound is below: χ² over all the outcomes (the four binary pairs, or the 256 levels of one
    pixel), which rejects the cell probabilities of a differently initialized flow."""
    shape, x = ((2,), all_binary(2)) if kind == "binary" else ((1,), torch.arange(256, dtype=torch.float64)[:, None])
    model = _model(name, shape, kind)
    exact = _exact_log_probs(model, x, 400 if kind == "binary" else 64).exp()
    torch.manual_seed(1)
    other = randomize(genzoo.build_model(name, shape, **{**SMALL[name], "data_kind": kind, "logit_alpha": 0.0}).double(),
                      seed=9, std=0.4).eval()
    other_exact = _exact_log_probs(other, x, 400 if kind == "binary" else 64).exp()
    assert 0.5 * (exact - other_exact).abs().sum() > 0.05, "the control must differ from the model"
    samples = model.sample(20_000, generator=torch.Generator().manual_seed(0)).reshape(20_000, -1)
    outcomes = binary_index(samples) if kind == "binary" else samples[:, 0].long()
    assert outcome_chisquare_p_value(outcomes, exact / exact.sum()) > 1e-3
    assert outcome_chisquare_p_value(outcomes, other_exact / other_exact.sum()) < 1e-6


def _bound_draws(model, x: torch.Tensor, draws: int, seed: int = 0) -> torch.Tensor:
    """(draws, B) single-draw values of the bound, for the mean and its standard error."""
    generator = torch.Generator().manual_seed(seed)
    noise = model.dequantizer.draw_noise((draws * len(x), x.shape[1]), generator, x)
    with torch.no_grad():
        values = dequantization_bound(model.log_density, x.repeat(draws, 1), model.dequantizer, noise, model.levels)
    return values.reshape(draws, len(x))


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_bound_is_below_the_exact_discrete_likelihood_on_binary_pairs(name, dequantization):
    model = _model(name, (2,), "binary", dequantization)
    x = all_binary(2)
    exact = _exact_log_probs(model, x, 400)
    # the discrete model is normalized: the four cells tile (0, 1)^2, where the logit flow lives
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-3)
    values = _bound_draws(model, x, 2000)
    bound, stderr = values.mean(0), values.std(0) / math.sqrt(len(values))
    assert (bound <= exact + 4 * stderr).all(), (bound, exact, stderr)
    assert (exact - bound).max() > 10 * stderr.max(), "a Jensen gap this test can see"


@pytest.mark.parametrize("name", FLOWS)
def test_bound_is_below_the_exact_discrete_likelihood_on_8bit_values(name):
    model = _model(name, (1,), "grayscale")
    x = torch.arange(256, dtype=torch.float64)[:, None]
    exact = _exact_log_probs(model, x, 64)
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-3)
    values = _bound_draws(model, x, 500)
    bound, stderr = values.mean(0), values.std(0) / math.sqrt(len(values))
    assert (bound <= exact + 4 * stderr + 1e-9).all()
    # the model's evaluation is that bound, the mean over eval_draws seeded draws
    model.config.eval_draws = 500
    assert torch.allclose(model.log_prob(x), _bound_draws_shared(model, x, 500, model.config.eval_seed), rtol=0, atol=1e-9)


def _bound_draws_shared(model, x, draws, seed):
    """The evaluation's estimate: the same seeded draws for every row."""
    generator = torch.Generator().manual_seed(seed)
    noise = model.dequantizer.draw_noise((draws, model.num_dims), generator, x)
    with torch.no_grad():
        return torch.stack([dequantization_bound(model.log_density, x, model.dequantizer, n.expand_as(x), model.levels)
                            for n in noise]).mean(0)


def test_uniform_bound_is_log_density_minus_d_log_256_on_8bit_data():
    """The bits/dim convention of ../shared/PROTOCOLS.md: log P(x) ≥ E_u[log p((x + u)/256)] − D log 256."""
    model = _model("realnvp", (1, 4, 4), "grayscale", eval_draws=1, eval_seed=3)
    x = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(0)).double()
    u = UniformDequantization().draw_noise((1, 16), torch.Generator().manual_seed(3), x)[0]
    expected = model.log_density((x + u) / 256) - 16 * math.log(256)
    assert torch.allclose(model.log_prob(x), expected, rtol=0, atol=1e-10)


def test_variational_dequantization_tightens_the_bound():
    """Training q(u | x) alone, with p fixed, raises the bound towards log P(x) and never past it."""
    model = _model("realnvp", (2,), "binary", "variational")
    x = all_binary(2)
    exact = _exact_log_probs(model, x, 400)
    uniform = _model("realnvp", (2,), "binary", "uniform")
    uniform.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("dequantizer.")})
    uniform_bound = _bound_draws(uniform, x, 2000).mean(0)
    for p in model.parameters():
        p.requires_grad_(False)
    q_params = list(model.dequantizer.parameters())
    for p in q_params:
        p.requires_grad_(True)
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(q_params, lr=1e-2)
    model.train()
    for _ in range(150):
        loss = -model.log_prob(x.repeat(32, 1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    values = _bound_draws(model, x, 2000)
    bound, stderr = values.mean(0), values.std(0) / math.sqrt(len(values))
    assert bound.mean() > uniform_bound.mean() + 0.05, (bound, uniform_bound, exact)
    assert (bound <= exact + 4 * stderr).all()


def test_training_draws_fresh_noise_and_evaluation_is_deterministic():
    model = _model("glow", (1, 4, 4), "grayscale", eval_draws=2)
    x = torch.randint(0, 256, (4, 1, 4, 4), generator=torch.Generator().manual_seed(0)).double()
    model.train()
    assert not torch.equal(model.log_prob(x), model.log_prob(x))
    model.eval()
    first = model.log_prob(x)
    assert torch.equal(first, model.log_prob(x))
    assert torch.allclose(model.log_prob(x[1:2]), first[1:2], rtol=0, atol=1e-10), "a row's value does not depend on its batch"
    other_seed = _model("glow", (1, 4, 4), "grayscale", eval_draws=2, eval_seed=1)
    assert not torch.allclose(other_seed.log_prob(x), first)


def test_variational_q_is_a_normalized_density_on_the_unit_cell():
    """log q(u | x) = log N(ε) − log |det ∂u/∂ε|: q is a normalized density on the unit cell."""
    torch.manual_seed(0)
    q = randomize(VariationalDequantization(2, levels=256, num_layers=2, hidden_size=8).double(), std=0.4)
    # the change of variables ε → u, checked against the brute-force Jacobian
    x = torch.tensor([[17.0, 200.0]], dtype=torch.float64)
    eps = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for row in eps:
        u, log_q = q(x, row[None])
        J = torch.autograd.functional.jacobian(lambda e: q(x, e[None])[0][0], row)
        log_normal = -0.5 * (row**2).sum() - math.log(2 * math.pi)
        assert torch.allclose(log_q[0], log_normal - torch.linalg.slogdet(J)[1], atol=1e-10)
        assert ((u > 0) & (u < 1)).all()
