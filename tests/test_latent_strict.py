"""Stricter checks of the latent-variable models' maths, each derived independently of the code
under test: the bounds' exact formulas, the observation models against hand-written densities,
the samplers against their probabilities, β's place in the log-weights, the Gumbel straight-through
estimator's gradient, and the vector quantizer's losses and EMA update.

Written from a mutation audit: each test fails on a small change of the code (a mean made a sum,
a flipped sample, a lost β, a wrong gradient path) that the other tests let through.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.nn import functional as F

import genzoo
from conftest import all_binary, outcome_chisquare_p_value, quantizer_with, randomize
from genzoo.models.latent.bounds import (
    bernoulli_log_prob,
    discretized_logistic_log_prob,
    elbo_bound,
    gaussian_log_prob,
    softplus,
    standard_normal_log_prob,
)
from genzoo.models.latent.gumbel_vae import gumbel_noise, gumbel_softmax
from genzoo.models.latent.vae import mlp


N_DIMS = 5


def tiny_vae(**hp) -> genzoo.GenerativeModel:
    hp = {"hidden_sizes": [8], "latent_sizes": [2], "eval_samples": 50, "eval_chunk": 16, **hp}
    return randomize(genzoo.build_model("vae", (N_DIMS,), **hp).double(), seed=1, std=0.7).eval()


def tiny_gumbel(**hp) -> genzoo.GenerativeModel:
    hp = {"hidden_sizes": [6], "num_latents": 2, "num_categories": 3, "activation": "tanh", "eval_samples": 20,
          "eval_chunk": 8, **hp}
    return randomize(genzoo.build_model("gumbel-vae", (N_DIMS,), **hp).double(), seed=4, std=1.0).eval()


# -- the bounds' formulas ------------------------------------------------------------------------------


def test_elbo_is_the_mean_log_weight_and_the_vae_trains_on_it():
    """ELBO = (1/k) Σ log w_i: a sum would still sit below the IWAE bound (log-weights are negative),
    so the inequality tests cannot tell them apart."""
    log_w = torch.tensor([[-1.0, -4.0], [-3.0, -2.0], [-5.0, -9.0]], dtype=torch.float64)
    assert torch.equal(elbo_bound(log_w), torch.tensor([-3.0, -5.0], dtype=torch.float64))
    assert torch.equal(elbo_bound(log_w, dim=1), torch.tensor([-2.5, -2.5, -7.0], dtype=torch.float64))
    model = tiny_vae(k=4)
    x = all_binary(N_DIMS)[:6]
    torch.manual_seed(7)
    noise = model.draw_noise(4, None, rows=len(x))
    expected = model.log_weights(x, noise).mean(0)
    torch.manual_seed(7)
    assert torch.allclose(model.training_log_prob(x), expected, rtol=0, atol=1e-12)


def test_the_iwae_trains_on_the_importance_weighted_bound():
    """objective = "iwae": log (1/k) Σ_i w_i of the same k draws, by hand."""
    model = randomize(genzoo.build_model("iwae", (N_DIMS,), hidden_sizes=[8], latent_sizes=[2], k=5).double(),
                      seed=1, std=0.7)
    x = all_binary(N_DIMS)[:6]
    torch.manual_seed(7)
    log_w = model.log_weights(x, model.draw_noise(5, None, rows=len(x)))
    torch.manual_seed(7)
    expected = torch.log(log_w.exp().mean(0))
    assert torch.allclose(model.training_log_prob(x), expected, rtol=0, atol=1e-12)


def test_log_weights_are_the_hand_computed_joint_minus_proposal():
    """log w = log p(x|z) + log N(z; 0, I) − log N(z; μ, σ²) for z = μ + σ ε, every term written out."""
    model = tiny_vae()
    x = all_binary(N_DIMS)[[3, 21]]
    eps = torch.randn(3, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        mean, log_std = model.posterior(x)
        std = log_std.exp()
        z = mean + std * eps  # (3, B, 2)
        log_q = (-0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = model.decoder(z.reshape(-1, 2)).reshape(3, 2, N_DIMS)
        log_px = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)
        assert torch.allclose(model.log_weights(x, [eps]), log_px + log_prior - log_q, rtol=0, atol=1e-12)
        # β weighs only the KL part: β = 0 leaves the reconstruction term alone
        assert torch.allclose(model.log_weights(x, [eps], beta=0.0), log_px, rtol=0, atol=1e-12)
        assert torch.allclose(model.log_weights(x, [eps], beta=0.3), log_px + 0.3 * (log_prior - log_q),
                              rtol=0, atol=1e-12)


def test_the_training_bound_uses_the_warm_up_beta():
    """During KL warm-up the training bound is log p(x|z) + β (log p(z) − log q(z|x)) on the same draws."""
    model = tiny_vae(kl_warmup_epochs=4)
    model.on_epoch_start(2, 10)
    assert model.beta == 0.25
    x = all_binary(N_DIMS)[:5]
    torch.manual_seed(3)
    noise = model.draw_noise(1, None, rows=len(x))
    expected = model.log_weights(x, noise, beta=0.25)[0]
    torch.manual_seed(3)
    assert torch.allclose(model.training_log_prob(x), expected, rtol=0, atol=1e-12)
    assert not torch.allclose(expected, model.log_weights(x, noise, beta=1.0)[0])


def test_two_layer_log_weights_include_every_conditional():
    """q(z1, z2|x) = q(z1|x) q(z2|z1) and p(z1, z2) = p(z2) p(z1|z2), written out by hand."""
    model = tiny_vae(latent_sizes=[3, 2], top_hidden_sizes=[4])
    x = all_binary(N_DIMS)[[5, 30]]
    gen = torch.Generator().manual_seed(2)
    e1 = torch.randn(4, 1, 3, generator=gen, dtype=torch.float64)
    e2 = torch.randn(4, 1, 2, generator=gen, dtype=torch.float64)

    def normal(z, m, ls):
        return (-0.5 * ((z - m) / ls.exp()) ** 2 - ls - 0.5 * math.log(2 * math.pi)).sum(-1)

    with torch.no_grad():
        m1, s1 = model.posterior(x)
        z1 = m1 + s1.exp() * e1
        m2, s2 = model.encoder_top(z1.reshape(-1, 3)).reshape(4, 2, 4).chunk(2, -1)
        z2 = m2 + s2.exp() * e2
        pm, ps = model.decoder_top(z2.reshape(-1, 2)).reshape(4, 2, 6).chunk(2, -1)
        logits = model.decoder(z1.reshape(-1, 3)).reshape(4, 2, N_DIMS)
        log_px = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)
        expected = (log_px + normal(z2, torch.zeros_like(z2), torch.zeros_like(z2)) + normal(z1, pm, ps)
                    - normal(z1, m1, s1) - normal(z2, m2, s2))
        assert torch.allclose(model.log_weights(x, [e1, e2]), expected, rtol=0, atol=1e-12)


def test_gaussian_log_densities_match_scipy():
    z = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    mean = torch.tensor([[0.1, 0.5, -0.4]], dtype=torch.float64)
    log_std = torch.tensor([[-0.7, 0.2, 1.1]], dtype=torch.float64)
    expected = stats.norm.logpdf(z.numpy(), mean.numpy(), np.exp(log_std.numpy())).sum()
    assert gaussian_log_prob(z, mean, log_std).item() == pytest.approx(expected, abs=1e-12)
    assert standard_normal_log_prob(z).item() == pytest.approx(stats.norm.logpdf(z.numpy()).sum(), abs=1e-12)


# -- observation models ------------------------------------------------------------------------------


def test_bernoulli_log_prob_is_the_log_of_the_success_probability_of_each_bit():
    """x log σ(l) + (1 − x) log σ(−l): a flipped x is normalized too, so only a direct check sees it."""
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    logits = torch.tensor([[2.0, 2.0, -0.5, -3.0]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    expected = torch.log(torch.where(x == 1, p, 1 - p)).sum(-1)
    assert torch.allclose(bernoulli_log_prob(x, logits), expected, rtol=0, atol=1e-12)


def test_softplus_is_exact_far_into_the_tail():
    """softplus(t) = t + log1p(e^−t): torch's default cut-over at t > 20 drops e^−t ≈ 2e−9."""
    t = torch.tensor([15.0, 25.0, 35.0, 45.0], dtype=torch.float64)
    assert torch.allclose(softplus(t), t + torch.log1p(torch.exp(-t)), rtol=0, atol=1e-15)


def test_discretized_logistic_bins_are_the_pixel_values_rescaled_to_minus_one_one():
    """P(x) = σ((c + h − μ)/s) − σ((c − h − μ)/s) with c = 2x/255 − 1 and h = 1/255, edges to ±∞,
    computed directly (the sum-to-one check holds for any bin placement)."""
    x = torch.tensor([0.0, 1.0, 64.0, 127.0, 128.0, 200.0, 254.0, 255.0], dtype=torch.float64)
    mean = torch.tensor(0.13, dtype=torch.float64)
    log_scale = torch.tensor(-1.7, dtype=torch.float64)
    s = log_scale.exp()
    c = 2 * x / 255 - 1
    upper = torch.where(x == 255, torch.ones_like(x), torch.sigmoid((c + 1 / 255 - mean) / s))
    lower = torch.where(x == 0, torch.zeros_like(x), torch.sigmoid((c - 1 / 255 - mean) / s))
    expected = torch.log(upper - lower)
    assert torch.allclose(discretized_logistic_log_prob(x, mean, log_scale), expected, rtol=1e-10, atol=1e-12)


def test_encoder_sees_8bit_pixels_in_minus_one_one():
    model = tiny_vae(data_kind="grayscale")
    x = torch.tensor([[0.0, 255.0, 127.5, 51.0, 204.0]], dtype=torch.float64)
    assert torch.allclose(model.encoder_input(x), torch.tensor([[-1.0, 1.0, 0.0, -0.6, 0.6]], dtype=torch.float64))
    assert torch.equal(tiny_vae().encoder_input(x), x)  # binary data as it is


def test_binary_observation_samples_follow_the_decoder_probabilities():
    model = tiny_vae()
    logits = torch.tensor([[-2.0, -0.5, 0.0, 1.0, 3.0]], dtype=torch.float64).expand(20000, -1)
    x = model.observation_sample(logits, torch.Generator().manual_seed(0))
    p = torch.sigmoid(logits[0])
    se = torch.sqrt(p * (1 - p) / len(x))
    assert ((x.mean(0) - p).abs() < 4 * se).all()


def test_grayscale_observation_samples_follow_the_discretized_logistic():
    """x ~ p(x|z): the χ² fit of 20,000 draws to the 256 bin masses, which rejects a one-level shift."""
    model = tiny_vae(data_kind="grayscale")
    mean, log_scale = 0.21, -4.5
    out = torch.tensor([[mean] * N_DIMS + [log_scale] * N_DIMS], dtype=torch.float64).expand(4000, -1)
    x = model.observation_sample(out, torch.Generator().manual_seed(0)).reshape(-1).long()
    values = torch.arange(256, dtype=torch.float64)
    probs = discretized_logistic_log_prob(values, torch.tensor(mean, dtype=torch.float64),
                                          torch.tensor(log_scale, dtype=torch.float64)).exp()
    assert outcome_chisquare_p_value(x, probs) > 1e-3
    assert outcome_chisquare_p_value((x + 1).clamp(max=255), probs) < 1e-6  # control: one level off


def test_the_decoders_mean_and_the_encoders_code():
    """decode is E[x|z] = σ(logits) for binary data; encode is the posterior mean μ, not σ."""
    model = tiny_vae()
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(model.decode(z), torch.sigmoid(model.decoder(z)), rtol=0, atol=1e-12)
    x = all_binary(N_DIMS)[[1, 9, 17]]
    assert torch.allclose(model.encode(x), model.posterior(x)[0], rtol=0, atol=0)


def test_the_mlp_has_no_activation_after_its_last_layer():
    """Decoder logits, means and log-stds are unbounded: a tanh after the last layer would cap them."""
    net = mlp([3, 4, 5], "tanh")
    assert [type(m) for m in net] == [torch.nn.Linear, torch.nn.Tanh, torch.nn.Linear]
    assert [type(m) for m in mlp([3, 4, 5], "relu", final_activation=True)][-1] is torch.nn.ReLU


def test_validation_and_evaluation_use_their_own_k():
    model = tiny_vae(eval_samples=40, valid_samples=3)
    x = all_binary(N_DIMS)[:4]
    assert torch.equal(model.validation_log_prob(x), model.iwae_bound(x, 3))
    assert torch.equal(model.log_prob(x), model.iwae_bound(x, 40))
    assert not torch.allclose(model.iwae_bound(x, 3), model.iwae_bound(x, 40))


def test_two_layer_prior_draws_z1_from_p_z1_given_z2():
    """z2 ~ N(0, I), then z1 ~ N(μ(z2), σ(z2)²): with p(z1|z2) fixed at N(0.5, 3²), z1's moments."""
    model = tiny_vae(latent_sizes=[3, 2], top_hidden_sizes=[4])
    last = model.decoder_top[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5] * 3 + [math.log(3.0)] * 3, dtype=torch.float64))
    z = model.prior_latents(20000, torch.Generator().manual_seed(0))
    assert z.shape == (20000, 3)
    assert ((z.mean(0) - 0.5).abs() < 4 * 3 / math.sqrt(len(z))).all()
    assert ((z.std(0) / 3 - 1).abs() < 4 / math.sqrt(2 * len(z))).all()


# -- Gumbel-softmax ------------------------------------------------------------------------------------


def test_temperature_schedule_values():
    """τ = max(τ_min, τ_0 exp(−r · epoch)) at the 1-based epoch, set by on_epoch_start."""
    from genzoo.models.latent.gumbel_vae import gumbel_temperature

    assert gumbel_temperature(1, 2.0, 0.5, 0.3) == pytest.approx(2.0 * math.exp(-0.3), rel=1e-15)
    assert gumbel_temperature(3, 2.0, 0.5, 0.3) == pytest.approx(2.0 * math.exp(-0.9), rel=1e-15)
    assert gumbel_temperature(10, 2.0, 0.5, 0.3) == 0.5
    model = tiny_gumbel(tau_initial=2.0, tau_min=0.5, anneal_rate=0.3)
    assert model.tau == 2.0
    for epoch in (1, 2, 5, 10):
        model.on_epoch_start(epoch, 10)
        assert model.tau == pytest.approx(max(0.5, 2.0 * math.exp(-0.3 * epoch)), rel=1e-15)


def test_straight_through_gradient_is_the_relaxed_one():
    """one_hot + y − sg(y): forward the one-hot draw, backward exactly ∂y (not −∂y, not 0)."""
    gen = torch.Generator().manual_seed(3)
    base = torch.log_softmax(torch.randn(4, 3, generator=gen, dtype=torch.float64), -1)
    g = gumbel_noise(torch.rand(4, 3, generator=gen, dtype=torch.float64))
    upstream = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grads = []
    for hard in (True, False):
        log_probs = base.clone().requires_grad_()
        (gumbel_softmax(log_probs, g, 0.7, hard=hard) * upstream).sum().backward()
        grads.append(log_probs.grad)
    assert grads[1].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-14)


def test_straight_through_decoder_sees_one_hot_draws(monkeypatch):
    model = tiny_gumbel(straight_through=True).train()
    seen = []
    original = model.decoder_output
    monkeypatch.setattr(model, "decoder_output", lambda y: seen.append(y.detach()) or original(y))
    model.training_terms(all_binary(N_DIMS)[:4])
    (y,) = seen
    assert torch.allclose(y, F.one_hot(y.argmax(-1), 3).double(), rtol=0, atol=1e-12)


def test_gumbel_training_terms_average_over_the_k_draws(monkeypatch):
    """With the same Gumbel noise repeated k times, the average over k draws is the one-draw value."""
    x = all_binary(N_DIMS)[:4]
    one = tiny_gumbel(k=1).train()
    three = tiny_gumbel(k=3).train()
    g = gumbel_noise(torch.rand(1, len(x), 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    monkeypatch.setattr(one, "draw_noise", lambda k, generator, rows=1: [g.expand(k, -1, -1, -1)])
    monkeypatch.setattr(three, "draw_noise", lambda k, generator, rows=1: [g.expand(k, -1, -1, -1)])
    rec1, kl1 = one.training_terms(x)
    rec3, kl3 = three.training_terms(x)
    assert torch.allclose(rec1, rec3, rtol=0, atol=1e-12) and torch.allclose(kl1, kl3, rtol=0, atol=1e-12)


def test_gumbel_log_weights_scale_only_the_prior_over_proposal_term_by_beta():
    model = tiny_gumbel()
    x = all_binary(N_DIMS)[:3]
    g = gumbel_noise(torch.rand(2, 1, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    with torch.no_grad():
        full = model.log_weights(x, [g])
        recon = model.log_weights(x, [g], beta=0.0)
        half = model.log_weights(x, [g], beta=0.5)
        z = F.one_hot((model.posterior(x) + g).argmax(-1), 3).double()
        logits = model.decoder_output(z)
        expected = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)
    assert torch.allclose(recon, expected, rtol=0, atol=1e-12)
    assert torch.allclose(half, 0.5 * (full + recon), rtol=0, atol=1e-12)


def test_categorical_kl_to_the_uniform_prior_by_brute_force():
    """KL(q || uniform) = Σ_n Σ_c π_nc (log π_nc − log 1/K) over N > 1 latents (N = 1 cannot tell
    N log K from log K)."""
    from genzoo.models.latent.bounds import categorical_kl_uniform

    log_probs = torch.log_softmax(torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0),
                                              dtype=torch.float64), -1)
    expected = torch.tensor([sum(float(p) * (math.log(float(p)) - math.log(1 / 4)) for p in row.exp().reshape(-1))
                             for row in log_probs], dtype=torch.float64)
    assert torch.allclose(categorical_kl_uniform(log_probs), expected, rtol=0, atol=1e-12)


def test_gumbel_training_bound_is_reconstruction_minus_beta_kl():
    """During KL warm-up: relaxed reconstruction − β · KL, on the same Gumbel draws (the existing
    schedule check compares losses at different τ, whose reconstruction terms differ)."""
    model = tiny_gumbel(kl_warmup_epochs=4).train()
    model.on_epoch_start(3, 10)
    assert model.beta == 0.5
    x = all_binary(N_DIMS)[:6]
    torch.manual_seed(11)
    reconstruction, kl = model.training_terms(x)
    assert (kl > 0).all()
    torch.manual_seed(11)
    assert torch.allclose(model.training_log_prob(x), reconstruction - 0.5 * kl, rtol=0, atol=1e-12)


def test_gumbel_prior_draws_every_category_uniformly():
    model = tiny_gumbel(num_latents=1, num_categories=4)
    z = model.prior_latents(8000, torch.Generator().manual_seed(0))
    assert z.shape == (8000, 1, 4) and (z.sum(-1) == 1).all()
    outcomes = z[:, 0].argmax(-1)
    assert outcome_chisquare_p_value(outcomes, torch.full((4,), 0.25, dtype=torch.float64)) > 1e-3


# -- the vector quantizer ------------------------------------------------------------------------------


def test_commitment_moves_only_the_encoder_and_the_codebook_loss_only_the_codes():
    """β‖z_e − sg(e)‖² has no gradient into the codebook; ‖sg(z_e) − e‖² none into the encoder."""
    gen = torch.Generator().manual_seed(0)
    q = quantizer_with(torch.randn(4, 2, generator=gen, dtype=torch.float64), ema=False)
    z = torch.randn(6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    out = q(z)
    codes = q.codebook.detach()[out.indices]
    out.commitment.sum().backward()
    assert q.codebook.grad is None or (q.codebook.grad == 0).all()
    assert torch.allclose(z.grad, 2 * (z.detach() - codes), rtol=0, atol=1e-12)
    z.grad = None
    q.zero_grad()
    out = q(z)
    out.codebook_loss.sum().backward()
    assert z.grad is None or (z.grad == 0).all()
    assert q.codebook.grad.abs().sum() > 0


def test_ema_update_follows_the_formula_with_laplace_smoothing():
    """N ← γN + (1−γ)n, m ← γm + (1−γ)Σz, e = m / ((N + ε)/(ΣN + Kε) · ΣN), by hand; with a large ε
    so that the smoothing is visible."""
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]], dtype=torch.float64)
    decay, eps = 0.8, 0.5
    q = quantizer_with(codebook, ema=True, decay=decay, epsilon=eps, dead_code_steps=0)
    z = torch.tensor([[1.0, 2.0], [0.5, -1.0], [9.0, 12.0], [11.0, 7.0], [12.0, 11.0]], dtype=torch.float64)
    indices = torch.tensor([0, 0, 1, 1, 1])
    q.update(z, indices)
    n = torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64)
    sums = torch.stack([z[:2].sum(0), z[2:].sum(0), torch.zeros(2, dtype=torch.float64)])
    count = decay * torch.ones(3, dtype=torch.float64) + (1 - decay) * n
    ema_sum = decay * codebook + (1 - decay) * sums
    total = count.sum()
    smoothed = (count + eps) / (total + 3 * eps) * total
    assert torch.allclose(q.ema_count, count, rtol=0, atol=1e-12)
    assert torch.allclose(q.codebook, ema_sum / smoothed[:, None], rtol=0, atol=1e-12)


def test_a_code_chosen_once_is_not_dead_and_usage_is_counted():
    q = quantizer_with(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]], dtype=torch.float64),
                   ema=True, decay=0.5, dead_code_steps=5)
    z = torch.tensor([[0.1, 0.0], [0.0, 0.2], [5.0, 5.1]], dtype=torch.float64)
    for _ in range(3):
        q.update(z, q.nearest(z))
    assert q.steps_unused.tolist() == [0, 0, 3]
    assert q.usage.tolist() == [6, 3, 0]


# -- VQ-VAE objective ----------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_vqvae_stage_one_loss_equals_its_terms_by_hand(update):
    """−log p(x|z_q) + β‖z_e − e‖² (+ ‖z_e − e‖² when the codes learn by gradient) − log P(codes)."""
    model = randomize(genzoo.build_model("vqvae", (6,), architecture="mlp", hidden_size=8, latent_positions=2,
                                         num_codes=4, code_dim=2, prior_hidden_sizes=[8], commitment=0.3,
                                         codebook_update=update).double(), seed=2, std=0.7).eval()
    x = all_binary(6)[::5]
    with torch.no_grad():
        z_e = model.coder.encode(x).reshape(-1, 2)
        codes = model.quantizer.nearest(z_e)
        e = model.quantizer.codebook[codes]
        dist = ((z_e - e) ** 2).sum(1).reshape(len(x), -1).sum(1)
        logits = model.coder.decode(e.reshape(len(x), 1, 2, 2))
        log_px = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(1)
        prior = model._prior_log_prob(codes.reshape(len(x), 1, 2))
        per_row = -log_px + 0.3 * dist + (dist if update == "loss" else 0) - prior
        assert model.loss(x).item() == pytest.approx(per_row.mean().item(), rel=1e-12)


def test_vqvae_reconstruction_gradient_reaches_the_encoder_through_the_codes():
    """The straight-through estimator: with β = 0 and the prior's gradient disjoint, the encoder is
    trained by the reconstruction term alone, so its gradient must not vanish."""
    model = randomize(genzoo.build_model("vqvae", (6,), architecture="mlp", hidden_size=8, latent_positions=2,
                                         num_codes=4, code_dim=2, prior_hidden_sizes=[8], commitment=0.0
                                         ).double(), seed=2, std=0.7).eval()
    model.loss(all_binary(6)[::3]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.coder.encoder.parameters())
