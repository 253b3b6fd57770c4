"""The latent-variable models' bounds, samplers and schedules (VAE, IWAE, Gumbel-softmax VAE).

The central checks use a tiny categorical model whose marginal log p(x) = logsumexp_z [log p(z)
+ log p(x|z)] is summed exactly, and whose expected IWAE bound E[L_k] is computed exactly too,
by enumerating every k-tuple of draws: the inequalities then hold without sampling noise.
"""
from __future__ import annotations

import itertools
import typing
import math

import pytest
import torch
from torch.nn import functional as F

import genzoo
from conftest import all_binary, randomize, tiny_run_config
from genzoo.models.latent.bounds import (
    categorical_kl_uniform,
    chunked_iwae_bound,
    discretized_logistic_log_prob,
    discretized_logistic_mean,
    elbo_bound,
    gaussian_kl_standard_normal,
    gaussian_log_prob,
    iwae_bound,
)
from genzoo.models.latent.gumbel_vae import gumbel_noise, gumbel_softmax, gumbel_temperature
from genzoo.models.latent.vae import kl_warmup_beta
from genzoo.training import Trainer

N_DIMS = 5


def tiny_vae(**hp) -> genzoo.GenerativeModel:
    hp = {"hidden_sizes": [8], "latent_sizes": [2], "eval_samples": 50, "eval_chunk": 16, **hp}
    return randomize(genzoo.build_model("vae", (N_DIMS,), **hp).double(), seed=1, std=0.7).eval()


def categorical_model(categories: int = 3) -> genzoo.GenerativeModel:
    model = genzoo.build_model("gumbel-vae", (N_DIMS,), hidden_sizes=[6], num_latents=1, num_categories=categories,
                               activation="tanh", eval_samples=4000, eval_chunk=500)
    return randomize(model.double(), seed=4, std=1.0).eval()


def enumerated_log_weights(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the one-latent categorical model: log q(c|x) (B, K), the log-weights of every
    category (B, K) and the exact log p(x) (B,)."""
    K = model.config.num_categories
    log_q = model.posterior(x)[:, 0, :]
    one_hots = torch.eye(K, dtype=x.dtype).reshape(K, 1, 1, K)  # (K, 1, N=1, K)
    log_px_z = model.observation_log_prob(x, model.decoder_output(one_hots)).T  # (B, K)
    log_joint = log_px_z + model.log_prior
    return log_q, log_joint - log_q, torch.logsumexp(log_joint, 1)


def expected_iwae(log_q: torch.Tensor, log_w: torch.Tensor, k: int) -> torch.Tensor:
    """E[L_k] exactly: Σ over every k-tuple of categories of Π q(c_i) · iwae_bound(log w[tuple])."""
    K = log_q.shape[1]
    tuples = torch.tensor(list(itertools.product(range(K), repeat=k)))  # (K^k, k)
    tuple_log_q = log_q[:, tuples].sum(-1)  # (B, K^k)
    bounds = iwae_bound(log_w[:, tuples], dim=-1)  # (B, K^k)
    return (tuple_log_q.exp() * bounds).sum(1)


# -- bounds --------------------------------------------------------------------------------------


def test_elbo_never_exceeds_the_iwae_bound_on_the_same_draws():
    model = tiny_vae()
    x = all_binary(N_DIMS)
    for seed in range(3):
        log_w = model.log_weights(x, model.draw_noise(10, torch.Generator().manual_seed(seed)))
        assert log_w.shape == (10, len(x))
        elbo, iwae = elbo_bound(log_w), iwae_bound(log_w)
        assert (elbo <= iwae + 1e-12).all()
        assert (iwae - elbo).max() > 1e-3  # the weights vary, so the inequality is strict somewhere


def test_chunked_bound_equals_the_one_shot_bound():
    model = tiny_vae()
    x = all_binary(N_DIMS)[:9]
    draws = model.draw_noise(37, torch.Generator().manual_seed(0))
    one_shot = iwae_bound(model.log_weights(x, draws))
    for chunk in (1, 5, 37, 100):
        chunked = chunked_iwae_bound(lambda d: model.log_weights(x, d), draws, chunk)
        assert torch.allclose(chunked, one_shot, rtol=0, atol=1e-12)
    assert torch.allclose(model.iwae_bound(x, 50), model.log_prob(x), rtol=0, atol=0)


def test_the_chunked_bound_keeps_no_activations_per_chunk_and_gives_the_same_gradient():
    """With autograd on, L_k's graph holds no chunk's activations (it held all k draws' before:
    hundreds of MB for k = 5,000), and its gradient equals the one-shot bound's."""
    model = tiny_vae(eval_chunk=50)
    x = all_binary(N_DIMS)[:8]
    draws = model.draw_noise(1000, torch.Generator().manual_seed(0))

    def saved_bytes_and_gradient(bound_of_draws):
        saved = []
        model.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            bound = bound_of_draws()
        bound.sum().backward()
        return sum(saved), [p.grad.clone() for p in model.parameters()]

    chunked_bytes, chunked_grads = saved_bytes_and_gradient(lambda: chunked_iwae_bound(
        lambda d: model.log_weights(x, d), draws, 50))
    one_shot_bytes, one_shot_grads = saved_bytes_and_gradient(lambda: iwae_bound(model.log_weights(x, draws)))
    assert chunked_bytes < 0.01 * one_shot_bytes
    for a, b in zip(chunked_grads, one_shot_grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_iwae_bound_grows_with_k_in_expectation():
    """A fixed VAE, many independent draws: mean L_1 < mean L_4 < mean L_16, each step larger
    than four standard errors (and L_1 is the ELBO's mean)."""
    model = tiny_vae()
    x = all_binary(N_DIMS)[[3, 17, 30]]
    generator = torch.Generator().manual_seed(5)
    means, errors = [], []
    for k in (1, 4, 16):
        bounds = torch.stack([iwae_bound(model.log_weights(x, model.draw_noise(k, generator))) for _ in range(400)])
        means.append(bounds.mean(0))
        errors.append(bounds.std(0) / math.sqrt(len(bounds)))
    for lo, hi, e_lo, e_hi in zip(means[:-1], means[1:], errors[:-1], errors[1:]):
        assert (hi - lo > 4 * torch.sqrt(e_lo**2 + e_hi**2)).all()
    # the exact log p(x) by quadrature over the 2-d latent bounds them all from above
    grid = torch.linspace(-8, 8, 401, dtype=torch.float64)
    z = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        log_joint = model.observation_log_prob(x, model.decoder_output(z[:, None, :])) - 0.5 * (z**2).sum(-1, keepdim=True) - math.log(2 * math.pi)
    exact = torch.logsumexp(log_joint, 0) + 2 * math.log(grid[1] - grid[0])
    assert (means[-1] < exact).all()
    assert (exact - means[-1] < exact - means[0]).all()


def test_categorical_bounds_against_the_exact_marginal():
    """ELBO ≤ E[L_2] ≤ … ≤ E[L_7] ≤ log p(x), the gap shrinking towards 0, and the ELBO computed
    from its exact KL agrees with E[L_1]."""
    model = categorical_model()
    x = all_binary(N_DIMS)
    with torch.no_grad():
        log_q, log_w, exact = enumerated_log_weights(model, x)
        expected = [expected_iwae(log_q, log_w, k) for k in range(1, 8)]
        # ELBO = E_q[log p(x|z)] − KL(q || uniform), exactly
        log_px_z = log_w + log_q - model.log_prior
        elbo = (log_q.exp() * log_px_z).sum(1) - categorical_kl_uniform(log_q[:, None, :])
    assert torch.allclose(elbo, expected[0], atol=1e-12)
    gaps = [exact - e for e in expected]
    assert (gaps[0] > 1e-3).all(), "the posterior should not be exact, else the check is vacuous"
    for a, b in zip(gaps[:-1], gaps[1:]):
        assert (b <= a + 1e-12).all() and (b >= -1e-12).all()
    assert (gaps[-1] < 0.35 * gaps[0]).all()
    # every bound's probabilities sum to at most 1 over all 2^n inputs (and the exact one to 1)
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    for e in expected:
        assert e.exp().sum().item() <= 1.0 + 1e-12


def test_the_models_discrete_draws_give_its_log_weights_and_approach_the_exact_marginal():
    model = categorical_model()
    x = all_binary(N_DIMS)
    with torch.no_grad():
        log_q, log_w, exact = enumerated_log_weights(model, x)
        # Gumbel noise that forces category c gives the enumerated log-weight of c
        for c in range(3):
            forced = torch.full((1, 1, 1, 3), -50.0, dtype=torch.float64)
            forced[..., c] = 50.0
            assert torch.allclose(model.log_weights(x, [forced])[0], log_w[:, c], atol=1e-12)
        small = model.iwae_bound(x, 2)
        large = model.log_prob(x)  # k = 4000 seeded draws
    # one Monte Carlo estimate of L_k may sit a little above log p(x) (exp L_k is unbiased for
    # p(x)); at k = 4000 it is close to it, and much closer than at k = 2
    assert (exact - large).abs().max() < 0.06
    assert (exact - small).abs().mean() > 5 * (exact - large).abs().mean()


# -- samplers ------------------------------------------------------------------------------------


def test_reparameterized_gaussian_draws_have_the_right_moments():
    model = tiny_vae(latent_sizes=[3])
    x = all_binary(N_DIMS)[[6]]
    mean, log_std = model.posterior(x)
    eps = model.draw_noise(20000, torch.Generator().manual_seed(0))[0]
    z = (mean + torch.exp(log_std) * eps)[:, 0]
    std = torch.exp(log_std)[0]
    se = std / math.sqrt(len(z))
    assert ((z.mean(0) - mean[0]).abs() < 4 * se).all()
    assert ((z.std(0) / std - 1).abs() < 4 / math.sqrt(2 * len(z))).all()
    # the draw's log-density matches a Monte Carlo KL to the prior
    kl = gaussian_kl_standard_normal(mean, log_std)[0]
    mc = (gaussian_log_prob(z, mean[0], log_std[0]) + 0.5 * (z**2).sum(-1) + 1.5 * math.log(2 * math.pi)).mean()
    assert abs(mc - kl) < 0.05


def test_gumbel_max_frequencies_match_the_probabilities():
    probs = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    n = 40000
    g = gumbel_noise(torch.rand(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    counts = torch.bincount((probs.log() + g).argmax(-1), minlength=3).double()
    se = torch.sqrt(probs * (1 - probs) / n)
    assert ((counts / n - probs).abs() < 4 * se).all()
    # negative control: uniform draws without the Gumbel transform give wrong frequencies
    wrong = torch.bincount((probs.log() + torch.rand(n, 3, dtype=torch.float64)).argmax(-1), minlength=3).double()
    assert ((wrong / n - probs).abs() > 4 * se).any()


def test_relaxed_draws_lie_on_the_simplex_and_harden_as_tau_falls():
    log_probs = torch.log_softmax(torch.randn(500, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1)
    g = gumbel_noise(torch.rand(500, 4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    for tau in (5.0, 1.0, 0.05):
        y = gumbel_softmax(log_probs, g, tau)
        assert (y >= 0).all() and torch.allclose(y.sum(-1), torch.ones(500, 4, dtype=torch.float64))
        assert torch.equal(y.argmax(-1), (log_probs + g).argmax(-1))  # the relaxation keeps the draw's argmax
    assert (gumbel_softmax(log_probs, g, 0.01).max(-1).values > 0.99).float().mean() > 0.95
    assert (gumbel_softmax(log_probs, g, 5.0).max(-1).values > 0.99).float().mean() < 0.05  # control


def test_straight_through_passes_gradients_to_the_encoder():
    model = genzoo.build_model("gumbel-vae", (N_DIMS,), hidden_sizes=[6], num_latents=2, num_categories=3,
                               straight_through=True).double().train()
    x = all_binary(N_DIMS)[:8]
    reconstruction, _ = model.training_terms(x)  # the KL term alone would reach the encoder anyway
    reconstruction.sum().backward()
    for p in model.encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the forward pass is the one-hot draw; without the straight-through term no gradient flows
    log_probs = torch.log_softmax(torch.randn(4, 3, dtype=torch.float64), -1).requires_grad_()
    g = gumbel_noise(torch.rand(4, 3, dtype=torch.float64))
    hard = gumbel_softmax(log_probs, g, 0.7, hard=True)
    assert torch.allclose(hard.detach(), F.one_hot((log_probs + g).argmax(-1), 3).double(), rtol=0, atol=1e-12)
    assert hard.requires_grad
    assert not F.one_hot((log_probs + g).argmax(-1), 3).double().requires_grad


# -- schedules -----------------------------------------------------------------------------------


def test_schedules_are_pure_functions_of_the_epoch():
    model = genzoo.build_model("gumbel-vae", (N_DIMS,), hidden_sizes=[4], num_latents=1, num_categories=3,
                               kl_warmup_epochs=4, tau_initial=2.0, tau_min=0.5, anneal_rate=0.3)
    assert model.beta == 1.0 and model.tau == 2.0  # used without the trainer: the true ELBO
    for epoch, beta in [(1, 0.0), (2, 0.25), (3, 0.5), (5, 1.0), (9, 1.0)]:
        model.on_epoch_start(epoch, 10)
        assert model.beta == beta == kl_warmup_beta(epoch, 4)
        assert model.tau == pytest.approx(max(0.5, 2.0 * math.exp(-0.3 * epoch)))
    assert gumbel_temperature(100, 2.0, 0.5, 0.3) == 0.5
    assert kl_warmup_beta(1, 0) == 1.0
    # β weighs the training loss only: log_prob is the same bound at every β
    x = all_binary(N_DIMS)[:4]
    model.on_epoch_start(1, 10)
    tau_warm = model.tau
    lp, torch_state = model.log_prob(x), torch.get_rng_state()
    loss_warm = model.loss(x)
    model.on_epoch_start(9, 10)
    assert torch.equal(model.log_prob(x), lp)
    # at one temperature and with the same Gumbel draws, β = 1 adds exactly the mean KL (comparing
    # at epoch 9's τ made the difference depend on the unseeded initialization)
    model.tau = tau_warm
    kl = categorical_kl_uniform(model.posterior(x.float())).mean()
    torch.set_rng_state(torch_state)
    assert kl > 0
    assert (model.loss(x) - loss_warm).item() == pytest.approx(kl.item(), abs=1e-5)


@pytest.mark.parametrize("name", ["vae", "gumbel-vae"])
def test_schedules_are_restored_on_resume(tmp_path, name):
    hp = {"hidden_sizes": [8], "eval_samples": 10, "valid_samples": 5, "kl_warmup_epochs": 4}
    hp.update({"latent_sizes": [3]} if name == "vae" else {"num_latents": 2, "num_categories": 3, "anneal_rate": 0.5})
    config = tiny_run_config(name, epochs=3, model_hp=hp)
    Trainer(config, tmp_path / "whole", progress=False).fit()
    short = tiny_run_config(name, epochs=2, model_hp=hp)
    Trainer(short, tmp_path / "resumed", progress=False).fit()
    Trainer.resume(tmp_path / "resumed", progress=False, epochs=3).fit()
    whole = Trainer(config, tmp_path / "whole", progress=False).run.read_metrics()
    resumed = Trainer(config, tmp_path / "resumed", progress=False).run.read_metrics()
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[2]["train_loss"] == pytest.approx(whole[2]["train_loss"], rel=1e-12)
    assert resumed[2]["valid_nll"] == pytest.approx(whole[2]["valid_nll"], rel=1e-12)


# -- the discretized logistic --------------------------------------------------------------------


def test_discretized_logistic_sums_to_one_over_256_values():
    values = torch.arange(256, dtype=torch.float64)
    for mean, log_scale in [(0.0, -2.0), (0.9, -6.0), (-1.3, 1.0), (0.2, -9.0), (1.0, -4.0)]:
        log_p = discretized_logistic_log_prob(values, torch.tensor(mean, dtype=torch.float64),
                                              torch.tensor(log_scale, dtype=torch.float64))
        assert torch.isfinite(log_p).all()
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-10)
        expected_mean = (log_p.exp() * values).sum()
        got = discretized_logistic_mean(torch.tensor([mean], dtype=torch.float64), torch.tensor([log_scale], dtype=torch.float64))
        assert got.item() == pytest.approx(expected_mean.item(), rel=1e-12)
    # the mode sits at the bin of the mean, and a narrow logistic puts almost all mass there
    log_p = discretized_logistic_log_prob(values, torch.tensor(0.0, dtype=torch.float64), torch.tensor(-8.0, dtype=torch.float64))
    assert int(log_p.argmax()) in (127, 128) and log_p.exp().max() > 0.49


def _exact_log_marginal(model, x: torch.Tensor, latent_grid: torch.Tensor) -> torch.Tensor:
    """log p(x) = log ∫ p(x|z) N(z; 0, I) dz of a one-layer VAE with a 1-d latent, by the
    midpoint rule on an even grid, for each row of x."""
    step = latent_grid[1] - latent_grid[0]
    log_prior = -0.5 * latent_grid**2 - 0.5 * math.log(2 * math.pi)
    with torch.no_grad():
        outputs = model.decoder_output(latent_grid[:, None, None])
        return torch.cat([torch.logsumexp(model.observation_log_prob(rows, outputs) + log_prior[:, None], 0)
                          for rows in x.split(8192)]) + math.log(step)


def test_gaussian_vae_bound_approaches_the_exact_marginal_from_below():
    """A 1-d latent lets quadrature give log p(x) exactly: the marginal sums to 1 over all 2^5
    inputs, and the model's L_k (k = 20,000) sits within Monte Carlo error of it, below on
    average (draws that are not from q, e.g. 20% too narrow, overshoot by 0.15 nats on average)."""
    model = randomize(genzoo.build_model("vae", (N_DIMS,), hidden_sizes=[8], latent_sizes=[1],
                                         eval_samples=20_000, eval_chunk=5_000).double(), seed=2, std=0.8).eval()
    x = all_binary(N_DIMS)
    exact = _exact_log_marginal(model, x, torch.linspace(-10, 10, 4001, dtype=torch.float64))
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        bound = model.log_prob(x)
    gap = exact - bound
    # above log p(x) only by Monte Carlo error; far below it where q fits p(z|x) poorly
    assert gap.mean() > 0 and gap.median() > -0.02 and gap.min() > -0.1, gap


def test_grayscale_vae_bound_is_a_bound_on_the_256_level_mass():
    """Over all 256² inputs of a 2-pixel model: the exact marginal sums to 1; exp(L_k) is an
    unbiased estimate of p(x), so its sum is 1 up to Monte Carlo error (a per-pixel density in
    place of the bin's mass sums to about 1,800)."""
    model = randomize(genzoo.build_model("vae", (2,), hidden_sizes=[4], latent_sizes=[1], data_kind="grayscale",
                                         eval_samples=64, eval_chunk=64).double(), seed=0, std=0.7).eval()
    grid = torch.cartesian_prod(torch.arange(256.0), torch.arange(256.0)).double()
    exact = _exact_log_marginal(model, grid, torch.linspace(-9, 9, 1201, dtype=torch.float64))
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        bound = model.log_prob(grid)
    assert bound.exp().sum().item() == pytest.approx(1.0, abs=0.05)
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert ((x == x.round()) & (x >= 0) & (x <= 255)).all()
    means = model.decode(model.encode(x))
    assert means.shape == (5, 2) and ((means >= 0) & (means <= 255)).all()


@pytest.mark.parametrize("name", ["vae", "iwae", "gumbel-vae"])
def test_the_loss_averages_the_training_bound_that_training_log_prob_gives(name):
    model = genzoo.build_model(name, (N_DIMS,), hidden_sizes=[8]).double()
    x = all_binary(N_DIMS)[:6]
    torch.manual_seed(3)
    per_row = model.training_log_prob(x)
    torch.manual_seed(3)
    assert model.loss(x).item() == pytest.approx(-per_row.mean().item(), rel=1e-12)
    assert per_row.shape == (6,) and not torch.allclose(per_row, model.log_prob(x))


@pytest.mark.parametrize("name, hp, key", [
    ("gumbel-vae", {"tau_initial": math.inf, "tau_min": math.inf}, "tau_initial"),
    ("gumbel-vae", {"anneal_rate": math.inf}, "anneal_rate"),
    ("vqvae", {"commitment": math.inf}, "commitment"),
    ("vqvae", {"ema_epsilon": math.inf}, "ema_epsilon"),
])
def test_infinite_hyperparameters_are_refused_by_name(name, hp, key):
    with pytest.raises(ValueError, match=f"{key} must be .*finite"):
        genzoo.build_model(name, (1, 4, 4), **hp)


def test_empty_and_boolean_latents():
    """An empty batch of latents decodes to an empty batch; a VQ-VAE refuses a boolean code grid
    (it would decode as codes 0 and 1) as the other decoders do."""
    vae = genzoo.build_model("vae", (1, 4, 4), hidden_sizes=[8], latent_sizes=[3])
    gumbel = genzoo.build_model("gumbel-vae", (1, 4, 4), hidden_sizes=[8], num_latents=2, num_categories=3)
    assert vae.decode(torch.zeros(0, 3)).shape == (0, 1, 4, 4)
    assert gumbel.decode(torch.zeros(0, 2, dtype=torch.long)).shape == (0, 1, 4, 4)
    assert vae.validation_log_prob(torch.zeros(0, 16)).shape == (0,)
    vq = genzoo.build_model("vqvae", (1, 4, 4), hidden_channels=4, downsample=1, num_codes=4, code_dim=2,
                            prior_hidden_sizes=[8])
    with pytest.raises(ValueError, match="codes must be integers .* torch.bool"):
        vq.decode(torch.ones(1, 2, 2, dtype=torch.bool))


def test_iwae_offers_only_the_objective_it_accepts():
    from genzoo.models.latent.iwae import IWAEConfig

    assert typing.get_args(typing.get_type_hints(IWAEConfig)["objective"]) == ("iwae",)
    with pytest.raises(ValueError, match="objective"):
        genzoo.build_model("iwae", (4,), objective="elbo")
