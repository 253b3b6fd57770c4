"""Evaluation: NLL in nats, bits per dimension, and the report line."""
from __future__ import annotations

import math

import pytest
import torch

import genzoo
from conftest import ALL_MODELS, build_tiny, randomize, random_input
from genzoo.evaluation import Evaluation, evaluate, evaluate_with_scores, mean_log_prob


@pytest.mark.parametrize("name", ALL_MODELS)
def test_evaluate_reports_nll_and_bits_per_dim(name):
    model = randomize(build_tiny(name, (1, 4, 4)).double(), seed=1)
    x = random_input(model, 50).reshape(50, -1)
    model.eval()
    log_p = model.log_prob(x)
    model.train()
    result = evaluate(model, x, "valid", batch_size=7)
    assert isinstance(result, Evaluation)
    assert result.split == "valid" and result.num_examples == 50
    assert result.likelihood == model.likelihood
    assert result.nll_nats == pytest.approx(-log_p.mean().item(), rel=1e-12)
    assert result.bits_per_dim == pytest.approx(result.nll_nats / (16 * math.log(2)), rel=1e-12)
    assert result.standard_error_nats == pytest.approx(log_p.std().item() / math.sqrt(50), rel=1e-9)
    assert model.training, "evaluate must restore the training mode"
    # batching does not change the result
    assert evaluate(model, x, "valid", batch_size=1000).nll_nats == pytest.approx(result.nll_nats, rel=1e-12)


def test_mean_log_prob_is_per_example_and_in_eval_mode():
    model = randomize(genzoo.build_model("made", (6,), hidden_sizes=[8], num_masks=3).double()).train()
    x = random_input(model, 13)
    per_example = mean_log_prob(model, x, batch_size=4)
    assert per_example.shape == (13,)
    model.eval()
    assert torch.allclose(per_example, model.log_prob(x), rtol=0, atol=1e-12)
    assert int(model.training_step) == 0  # eval mode: the mask cycle did not advance


def test_describe_mentions_an_exact_likelihood():
    model = genzoo.build_model("fvsbn", (3,))
    x = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    result = evaluate(model, x, "test")
    text = result.describe()
    assert "exact" in text and "NLL =" in text and "test" in text and "3 examples" in text
    assert f"{result.nll_nats:.2f}" in text
    record = result.to_dict()
    assert record["likelihood"] == "exact"
    assert set(record) >= {"split", "nll_nats", "bits_per_dim", "num_examples", "standard_error_nats"}


def test_describe_marks_a_bound():
    result = Evaluation("test", 90.0, 0.16, "lower_bound", 10, 1.0)
    assert "NLL ≤ 90.00 nats (≤ 0.1600 bits/dim" in result.describe()
    assert "NLL = 90.00 nats (0.1600 bits/dim" in Evaluation("test", 90.0, 0.16, "exact", 10, 1.0).describe()


def test_describe_of_one_example_has_no_standard_error():
    model = genzoo.build_model("fvsbn", (3,))
    text = evaluate(model, torch.tensor([[0.0, 1.0, 1.0]]), "test").describe()
    assert "1 example)" in text and "nan" not in text and "s.e." not in text


def test_uniform_model_has_one_bit_per_dim():
    """A fresh FVSBN with zero weights and zero biases is uniform: exactly 1 bit/dim."""
    model = genzoo.build_model("fvsbn", (1, 3, 3)).double()
    torch.nn.init.zeros_(model.linear.bias)
    x = random_input(model, 20)
    result = evaluate(model, x.reshape(20, -1))
    assert result.nll_nats == pytest.approx(9 * math.log(2), rel=1e-12)
    assert result.bits_per_dim == pytest.approx(1.0, rel=1e-12)
    assert result.standard_error_nats == pytest.approx(0.0, abs=1e-12)


def test_a_model_without_likelihood_cannot_be_evaluated():
    class NoLikelihood(genzoo.GenerativeModel):
        likelihood = "none"

        def __init__(self):
            super().__init__((2,))
            self.p = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(ValueError, match="no likelihood"):
        evaluate(NoLikelihood(), torch.zeros(3, 2))


def test_progress_bar_shown_when_asked_and_on_a_terminal_only_by_default(capsys):
    model = genzoo.build_model("fvsbn", (6,))
    x = random_input(model, 20)
    evaluate(model, x, "valid", batch_size=4, progress=True)
    assert "eval valid" in capsys.readouterr().err
    for progress in (False, None):  # None: tqdm's own check finds no terminal under pytest
        evaluate(model, x, "valid", batch_size=4, progress=progress)
        assert capsys.readouterr().err == ""


def test_evaluate_with_scores_returns_what_it_averaged():
    model = randomize(genzoo.build_model("nade", (5,), hidden_size=4).double(), seed=2)
    x = random_input(model, 9)
    summary, log_p = evaluate_with_scores(model, x, "test", batch_size=4)
    assert log_p.shape == (9,) and log_p.dtype == torch.float64
    assert summary.nll_nats == pytest.approx(-log_p.mean().item(), rel=1e-12)
    with torch.no_grad():
        assert torch.allclose(log_p, model.eval().log_prob(x).double(), atol=1e-12)
