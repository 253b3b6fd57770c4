"""Evaluation, held to exact values: the labelled (class-conditional) path over a last partial
batch, the model's mode restored whichever it was, bits/dim of a model whose NLL is known in
closed form, and the validation score with its own detail."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import genzoo
from conftest import build_tiny, randomize, random_input
from genzoo.evaluation import evaluate, evaluate_with_scores, mean_log_prob


def conditional_model() -> genzoo.GenerativeModel:
    return randomize(genzoo.build_model("gated-pixelcnn", (1, 2, 2), channels=2, num_layers=1, head_channels=3,
                                        first_kernel_size=3, num_classes=3).double(), seed=4).eval()


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])
def test_labelled_evaluation_pairs_every_example_with_its_own_label(batch_size):
    """With labels, each row is scored given ITS label, one at a time as the reference; 10 rows
    in batches of 3 or 4 end in a partial batch, which must be scored and paired too. The labels
    are chosen so that a shifted or reversed pairing, or a dropped batch, changes the NLL."""
    model = conditional_model()
    x = random_input(model, 10, seed=3)
    y = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0, 2, 1])
    with torch.no_grad():
        reference = torch.stack([model.log_prob(x[i:i + 1], y=y[i:i + 1])[0] for i in range(10)])
        unlabelled = model.log_prob(x)
    # the labels matter: the conditional scores differ from each other and from the mixture
    assert (reference - unlabelled).abs().max() > 1e-3
    summary, scores = evaluate_with_scores(model, x, "test", batch_size=batch_size, labels=y)
    assert summary.num_examples == 10 and scores.shape == (10,)
    assert torch.allclose(scores, reference, rtol=0, atol=1e-12)
    assert summary.nll_nats == pytest.approx(-reference.mean().item(), rel=1e-12)
    assert summary.bits_per_dim == pytest.approx(-reference.mean().item() / (4 * math.log(2)), rel=1e-12)
    assert "conditional on the class labels" in summary.likelihood_detail
    # mean_log_prob's labelled path is the same pairing
    assert torch.allclose(mean_log_prob(model, x, batch_size=batch_size, labels=y), reference, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_evaluation_puts_the_model_back_in_the_mode_it_was_in(training):
    """Evaluation runs in eval mode and restores the caller's mode: a model in eval mode must
    not come back in train mode (its dropout would then be on for the caller's next samples)."""
    model = build_tiny("transformer", (4,), dropout=0.5).double()
    model.train(training)
    evaluate(model, random_input(model, 5), batch_size=2)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    mean_log_prob(model, random_input(model, 5), batch_size=2)
    assert model.training is training


def test_mean_is_over_examples_not_over_batch_means():
    """10 examples in batches of 4 (4 + 4 + 2): the NLL is the mean over the 10 examples; the
    mean of the three batch means would weight the last two examples double. An independent
    model with known per-example scores: FVSBN with only biases, p(x) = Π σ(±b_d)."""
    model = genzoo.build_model("fvsbn", (3,)).double()
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.copy_(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
    x = torch.tensor([[1, 1, 1]] * 8 + [[0, 0, 0]] * 2, dtype=torch.float64)
    b = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    log_p_ones = torch.nn.functional.logsigmoid(b).sum().item()
    log_p_zeros = torch.nn.functional.logsigmoid(-b).sum().item()
    expected = -(8 * log_p_ones + 2 * log_p_zeros) / 10
    result = evaluate(model, x, batch_size=4)
    assert result.nll_nats == pytest.approx(expected, rel=1e-12)
    assert result.bits_per_dim == pytest.approx(expected / (3 * math.log(2)), rel=1e-12)
    # the standard error of the mean: sample std (n − 1) over √n
    scores = torch.tensor([log_p_ones] * 8 + [log_p_zeros] * 2, dtype=torch.float64)
    assert result.standard_error_nats == pytest.approx(scores.std().item() / math.sqrt(10), rel=1e-12)


def test_validation_scores_and_detail_are_the_validation_ones():
    """``validation=True`` scores with validation_log_prob and labels the result with
    validation_detail (a VAE's cheaper bound: fewer importance samples), not the test ones."""
    model = build_tiny("vae", (6,)).double()
    assert model.validation_detail != model.likelihood_detail
    x = random_input(model, 4)
    valid = evaluate(model, x, "valid", validation=True)
    test = evaluate(model, x, "test")
    assert valid.likelihood_detail == model.validation_detail
    assert test.likelihood_detail == model.likelihood_detail


def test_scores_of_a_float32_model_are_averaged_in_float64():
    """evaluate_with_scores returns float64 scores whatever the model's dtype, and the NLL is
    their float64 mean (a float32 mean of many scores drifts in the 7th digit)."""
    model = randomize(build_tiny("made", (16,)), seed=3)  # float32
    x = random_input(model, 3000, seed=1)
    summary, scores = evaluate_with_scores(model, x, batch_size=1000)
    assert scores.dtype == torch.float64
    with torch.no_grad():
        reference = model.eval().log_prob(x).double()
    assert torch.equal(scores, reference)
    assert summary.nll_nats == -reference.mean().item()


# -- the sample grid a run writes beside its evaluation --------------------------------------------


def _grid(tmp_path, x, **options) -> np.ndarray:
    from PIL import Image

    from genzoo.images import save_image_grid

    with Image.open(save_image_grid(x, tmp_path / "grid.png", zoom=1, **options)) as image:
        return np.asarray(image)


def test_grid_places_every_image_in_its_own_cell_of_a_non_square_layout(tmp_path):
    """Image i sits in row i // ncols, column i % ncols, at padding + r·(h + padding) down and
    padding + c·(w + padding) across, for images wider than tall (so h and w cannot be mixed up);
    each image has its own gray level."""
    n, h, w, pad = 5, 2, 3, 1
    x = torch.stack([torch.full((1, h, w), 10.0 * (i + 1)) for i in range(n)])  # 8-bit levels 10..50
    grid = _grid(tmp_path, x, ncols=2, padding=pad, value_range="8-bit")
    assert grid.shape == (3 * (h + pad) + pad, 2 * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, 2)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        assert (grid[top:top + h, left:left + w] == 10 * (i + 1)).all(), f"image {i} misplaced"
    # what is not an image is the gray padding: each image's pixels counted once, nothing else
    assert (grid != 128).sum() == n * h * w


@pytest.mark.parametrize("n, columns", [(1, 1), (2, 2), (5, 3), (9, 3), (10, 4), (17, 5)])
def test_grid_defaults_to_ceil_sqrt_n_columns(tmp_path, n, columns):
    """Without ncols the grid is ⌈√n⌉ columns wide and ⌈n / columns⌉ rows tall."""
    grid = _grid(tmp_path, torch.zeros(n, 1, 2, 2), padding=1)
    rows = -(-n // columns)
    assert grid.shape == (rows * 3 + 1, columns * 3 + 1)


def test_values_outside_the_range_are_clipped_not_wrapped():
    """Pixel values beyond the range (a flow's or a VAE's mean beyond [0, 255]) saturate at black
    or white; a cast of 300 to uint8 would wrap to 44, and −20 to 236."""
    from genzoo.images import as_images

    x = torch.tensor([[[[-20.0, 0.0], [255.0, 300.0]]]])
    assert as_images(x, "8-bit")[0].tolist() == [[0, 0], [255, 255]]
    assert as_images(torch.tensor([[[[-0.5, 1.5]]]]), "unit")[0].tolist() == [[0, 255]]
