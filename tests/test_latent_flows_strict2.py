"""Stricter checks left over from the second pass of the latent/flow mutation audit (AREA lf2):
VQ-VAE samples follow the decoder's Bernoulli probabilities, and the invertible 1×1 convolution
multiplies vectors by W (not Wᵀ), as it does 1×1 images.

Each test fails on a small change that the existing checks cannot see: a VQ-VAE sampler that draws
x = 1 with probability 1 − p still returns binary, reproducible samples (and the bound does not
involve the sampler), and a vector 1×1 convolution by Wᵀ is still a valid flow with the same
log-determinant that inverts exactly.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import genzoo
from conftest import randomize
from genzoo.models.flows.transforms import InvertibleConv1x1


def test_vqvae_samples_follow_the_decoders_bernoulli_probabilities():
    """Each pixel of a sample is 1 with the marginal probability Σ_c P(c) σ(decoder(e_c)), summed
    here over every code grid c (2 positions × 4 codes) with P from the prior's exact log_prob.
    A sampler drawing u > p instead of u < p gives 1 − that probability."""
    model = randomize(genzoo.build_model("vqvae", (1, 2, 4), hidden_channels=4, downsample=1, num_codes=4,
                                         code_dim=2, prior_hidden_sizes=[8]).double(), seed=5, std=0.7).eval()
    assert model.grid == (1, 2) and model.code_bits == 2
    grids = torch.tensor(list(itertools.product(range(4), repeat=2))).reshape(-1, 1, 2)  # (16, 1, 2)
    # the prior's bits: each code most significant bit first, positions in row-major order
    bits = torch.tensor([[(int(c) >> (1 - j)) & 1 for c in g.reshape(-1) for j in range(2)] for g in grids],
                        dtype=torch.float64)
    prior = model.prior.log_prob(bits).exp()
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-10)
    probs = model.decode(grids).reshape(len(grids), -1)  # (16, 8) Bernoulli probabilities
    marginal = (prior.unsqueeze(1) * probs).sum(0)  # (8,)
    assert (marginal - 0.5).abs().max() > 0.15  # far enough from ½ for a flipped draw to show
    n = 6000
    samples = model.sample(n, generator=torch.Generator().manual_seed(11)).reshape(n, -1)
    assert ((samples == 0) | (samples == 1)).all()
    # a pixel's frequency has standard error ≤ 0.5/√6000 ≈ 0.0065; 0.035 is more than 5 of them
    assert torch.allclose(samples.mean(0), marginal, atol=0.035)


def test_invertible_conv_multiplies_vectors_by_w_as_it_does_1x1_images():
    """z = W x for a vector x (z_i = Σ_j W_ij x_j), the same as the layer gives the vector as a
    1×1 image (the docstring's contract); a vector path computing x W (= Wᵀ x) still inverts with
    the same log |det W| and so passes every flow check."""
    layer = randomize(InvertibleConv1x1(4, generator=torch.Generator().manual_seed(0)).double(), seed=3, std=0.6)
    weight = layer.weight().detach()
    assert not torch.allclose(weight, weight.t())  # otherwise W and Wᵀ could not be told apart
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.stack([torch.stack([sum(weight[i, j] * row[j] for j in range(4)) for i in range(4)])
                            for row in x])
    z, logdet = layer(x)
    assert torch.allclose(z, expected, rtol=0, atol=1e-12)
    z_image, logdet_image = layer(x[:, :, None, None])
    assert torch.allclose(z, z_image[:, :, 0, 0], rtol=0, atol=1e-12)
    assert torch.allclose(logdet, logdet_image, rtol=0, atol=1e-12)
    assert torch.allclose(layer.inverse(z), x, rtol=0, atol=1e-10)
