"""Speculative sampling: exact in distribution whatever the draft (χ² against the target's
log_prob over all 16 inputs, with a negative control), acceptance rate 1 when the draft is the
target, sane statistics, refusal of unusable pairs, and the CLI end to end on digits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import genzoo
from conftest import all_binary, cli_error_line, randomize
from genzoo.cli import main
from genzoo.sampling import SpeculativeStats, speculative_sample

N = 4
NUM_SAMPLES = 20_000


def build(name: str, shape, seed: int, std: float = 1.0, **hp):
    return randomize(genzoo.build_model(name, shape, **hp).double(), seed=seed, std=std).eval()


def frequencies(x: torch.Tensor) -> np.ndarray:
    """Counts of the 2^N binary vectors, indexed like ``all_binary`` (dimension 0 least significant)."""
    index = (x.reshape(len(x), -1).long() * (2 ** torch.arange(N))).sum(dim=1)
    return np.bincount(index.numpy(), minlength=2**N)


def chi2_p_value(counts: np.ndarray, model) -> float:
    probabilities = model.log_prob(all_binary(N)).exp().detach().numpy()
    return chisquare(counts, probabilities / probabilities.sum() * counts.sum()).pvalue


PAIRS = {
    # a transformer target with a bad draft: a randomly initialized FVSBN
    "transformer<-fvsbn": (("transformer", {"num_layers": 2, "num_heads": 2, "embed_dim": 8}, 0.8),
                           ("fvsbn", {}, 1.5)),
    # a non-natural generation order: both MADEs draw the same random ordering from mask_seed 0
    "made-order-agnostic<-made": (("made", {"hidden_sizes": [16, 16], "order_agnostic": True}, 1.0),
                                  ("made", {"hidden_sizes": [4], "order_agnostic": True}, 1.0)),
    # FVSBN's named orders: on a flat vector, subgrid-spiral is the even dimensions, then the odd
    "fvsbn-subgrid-spiral<-fvsbn-subgrid-spiral": (("fvsbn", {"order": "subgrid-spiral"}, 1.5),
                                                   ("fvsbn", {"order": "subgrid-spiral"}, 1.5)),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_speculative_samples_are_distributed_as_the_target(pair):
    (t_name, t_hp, t_std), (d_name, d_hp, d_std) = PAIRS[pair]
    target = build(t_name, (N,), seed=1, std=t_std, **t_hp)
    draft = build(d_name, (N,), seed=2, std=d_std, **d_hp)
    p = target.log_prob(all_binary(N)).exp()
    q = draft.log_prob(all_binary(N)).exp()
    assert 0.5 * (p - q).abs().sum() > 0.2, "the draft should be far from the target"
    x, stats = speculative_sample(target, draft, NUM_SAMPLES, gamma=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (NUM_SAMPLES, N)
    counts = frequencies(x)
    assert chi2_p_value(counts, target) > 1e-3
    # negative control: the same test rejects the draft's distribution
    assert chi2_p_value(counts, draft) < 1e-12
    assert 0.05 < stats.acceptance_rate < 0.95


def test_the_chi2_test_rejects_a_subtly_wrong_sampler():
    """Negative control for the sampler itself: accepting every proposal (no correction) gives
    the draft's distribution, which the χ² test must reject; it must accept plain target samples."""
    (t_name, t_hp, t_std), (d_name, d_hp, d_std) = PAIRS["transformer<-fvsbn"]
    target = build(t_name, (N,), seed=1, std=t_std, **t_hp)
    draft = build(d_name, (N,), seed=2, std=d_std, **d_hp)
    g = torch.Generator().manual_seed(1)
    assert chi2_p_value(frequencies(target.sample(NUM_SAMPLES, generator=g)), target) > 1e-3
    assert chi2_p_value(frequencies(draft.sample(NUM_SAMPLES, generator=g)), target) < 1e-12


def binned_chi2_p_value(x: torch.Tensor, joint: torch.Tensor, bins: int = 4) -> float:
    """χ² of samples (n, 2) of 8-bit values against a joint (256, 256) probability table, both
    binned into bins × bins cells; cells expected to hold fewer than 5 samples are pooled."""
    width = 256 // bins
    expected = joint.reshape(bins, width, bins, width).sum(dim=(1, 3)).reshape(-1).numpy() * len(x)
    cells = (x[:, 0].long() // width * bins + x[:, 1].long() // width).numpy()
    counts = np.bincount(cells, minlength=bins * bins)
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return chisquare(counts, expected / expected.sum() * counts.sum()).pvalue


@pytest.mark.skipif("pixelcnn" not in genzoo.list_models(), reason="no 8-bit autoregressive model registered")
def test_speculative_sampling_of_8_bit_pixels_is_exact():
    """V = 256 values per dimension (conditional_log_probs), a 1×2 image: the joint of the two
    pixels (binned) matches the target. The draft is the target with perturbed weights, close
    enough that a quarter of proposals are accepted: then drawing from p instead of the residual
    max(0, p − q) after a rejection would be caught (p-value ~1e-140)."""
    hp = {"hidden_channels": 4, "num_blocks": 1, "head_channels": 4, "first_kernel_size": 3, "data_kind": "grayscale"}
    target = build("pixelcnn", (1, 1, 2), seed=1, **hp)
    draft = build("pixelcnn", (1, 1, 2), seed=1, **hp)
    noise = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=noise, dtype=p.dtype))

    def joint(model) -> torch.Tensor:
        grid = torch.stack([torch.arange(256.0, dtype=torch.float64), torch.zeros(256, dtype=torch.float64)], dim=1)
        log_p = model.conditional_log_probs(grid)  # row v: p(x_0 = ·) and p(x_1 = · | x_0 = v)
        return (log_p[0, 0][:, None] + log_p[:, 1]).exp().detach()

    x, stats = speculative_sample(target, draft, 6000, gamma=2, generator=torch.Generator().manual_seed(7))
    x = x.reshape(len(x), 2)
    assert (x == x.round()).all() and x.min() >= 0 and x.max() <= 255
    assert binned_chi2_p_value(x, joint(target)) > 1e-3
    assert binned_chi2_p_value(x, joint(draft)) < 1e-12  # negative control
    assert 0.1 < stats.acceptance_rate < 0.5


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_a_draft_equal_to_the_target_is_always_accepted(gamma):
    target = build("made", (1, 3, 4), seed=3, hidden_sizes=[16])
    x, stats = speculative_sample(target, target, 50, gamma=gamma, generator=torch.Generator().manual_seed(2))
    D = target.num_dims
    assert stats.acceptance_rate == 1.0
    # every round sets γ accepted dimensions plus one drawn from p, until the last round
    assert stats.target_calls == -(-D // (gamma + 1))
    assert stats.dimensions == 50 * D
    assert x.shape == (50, 1, 3, 4) and ((x == 0) | (x == 1)).all()


@pytest.mark.parametrize("gamma", [1, 3, 7])
def test_kv_cached_verification_equals_full_passes(gamma):
    """The Transformer target scores proposals against its KV cache (per-row positions, rolled
    back on rejection); the samples equal those of full conditional_logits passes."""
    target = build("transformer", (1, 4, 5), seed=8, std=0.7, num_layers=2, num_heads=2, embed_dim=8)
    draft = build("fvsbn", (1, 4, 5), seed=9)
    cached, s1 = speculative_sample(target, draft, 64, gamma, torch.Generator().manual_seed(6))
    full, s2 = speculative_sample(target, draft, 64, gamma, torch.Generator().manual_seed(6), cached=False)
    assert torch.equal(cached, full)
    assert s1 == s2 and 0 < s1.acceptance_rate < 1  # rejections happened, so rollbacks were exercised


def test_statistics_are_consistent():
    target = build("transformer", (1, 3, 4), seed=4, std=0.7, num_layers=2, num_heads=2, embed_dim=8)
    draft = build("fvsbn", (1, 3, 4), seed=5)
    n, D, gamma = 40, 12, 4
    x, stats = speculative_sample(target, draft, n, gamma=gamma, generator=torch.Generator().manual_seed(3))
    assert stats.dimensions == n * D
    assert 0 < stats.accepted < stats.proposed <= stats.row_rounds * gamma
    # each row-round adds its accepted proposals plus at most one more dimension
    assert stats.accepted + stats.row_rounds >= stats.dimensions >= stats.accepted + stats.row_rounds - n
    assert D / (gamma + 1) <= stats.target_calls <= D
    assert stats.draft_calls <= stats.target_calls * gamma
    assert 1 <= stats.dimensions_per_target_call <= gamma + 1
    record = stats.to_dict()
    assert record["acceptance_rate"] == stats.acceptance_rate
    assert torch.isfinite(target.log_prob(x)).all()


def test_reproducible_with_a_generator():
    target = build("made", (6,), seed=6, hidden_sizes=[8])
    draft = build("fvsbn", (6,), seed=7)
    a, _ = speculative_sample(target, draft, 30, generator=torch.Generator().manual_seed(4))
    b, _ = speculative_sample(target, draft, 30, generator=torch.Generator().manual_seed(4))
    c, _ = speculative_sample(target, draft, 30, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "target, draft, message",
    [
        (("made", (6,), {}), ("fvsbn", (7,), {}), "data shape"),
        (("made", (1, 2, 3), {}), ("fvsbn", (6,), {}), "data shape"),
        (("made", (6,), {"order_agnostic": True}), ("fvsbn", (6,), {}), "order"),
        (("made", (6,), {"num_masks": 3}), ("fvsbn", (6,), {}), "mixture"),
        (("fvsbn", (1, 2, 3), {"order": "spiral"}), ("fvsbn", (1, 2, 3), {}), "order"),
        (("nice", (6,), {"hidden_size": 4, "hidden_layers": 1}), ("fvsbn", (6,), {}), "autoregressive"),
        (("made", (6,), {}), ("nice", (6,), {"hidden_size": 4, "hidden_layers": 1}), "autoregressive"),
    ],
)
def test_unusable_pairs_are_refused(target, draft, message):
    t = genzoo.build_model(target[0], target[1], **target[2])
    d = genzoo.build_model(draft[0], draft[1], **draft[2])
    with pytest.raises(ValueError, match=message) as info:
        speculative_sample(t, d, 4)
    assert "\n" not in str(info.value)


CONDITIONALS = [
    ("fvsbn", (6,), {}, "binary"),
    ("nade", (6,), {"hidden_size": 4}, "binary"),
    ("made", (6,), {"hidden_sizes": [8]}, "binary"),
    ("transformer", (1, 2, 3), {"num_layers": 1, "num_heads": 1, "embed_dim": 4}, "binary"),
    ("pixelcnn", (1, 2, 3), {"hidden_channels": 4, "num_blocks": 1, "head_channels": 2}, "binary"),
    ("pixelcnn", (1, 2, 3), {"hidden_channels": 4, "num_blocks": 1, "head_channels": 2, "data_kind": "grayscale"},
     "categorical"),
    ("gated-pixelcnn", (1, 2, 3), {"channels": 2, "num_layers": 1, "head_channels": 2}, "binary"),
    ("gated-pixelcnn", (1, 2, 3), {"channels": 2, "num_layers": 1, "head_channels": 2, "data_kind": "grayscale"},
     "categorical"),
    ("gated-pixelcnn", (1, 2, 3), {"channels": 2, "num_layers": 1, "head_channels": 2, "num_classes": 3}, ""),
    ("gated-pixelcnn", (1, 2, 3), {"channels": 2, "num_layers": 1, "head_channels": 2, "num_classes": 3,
                                   "data_kind": "grayscale"}, ""),
]


@pytest.mark.parametrize("name, shape, hp, kind", CONDITIONALS,
                         ids=[f"{name}-{hp.get('data_kind', 'binary')}{'-conditional' if hp.get('num_classes') else ''}"
                              for name, _, hp, _ in CONDITIONALS])
def test_chain_rule_conditionals_say_what_the_model_offers(name, shape, hp, kind):
    """"binary": conditional_logits, "categorical": conditional_log_probs, each the conditionals
    whose product is log_prob; "": none (a class-conditional model's log_prob is a mixture)."""
    model = build(name, shape, seed=0, std=0.5, **hp)
    assert model.chain_rule_conditionals == kind
    x = torch.randint(0, 2 if model.support == "binary" else 256, (5, model.num_dims),
                      generator=torch.Generator().manual_seed(0)).double()
    if kind == "binary":
        logits = model.conditional_logits(x)
        expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        assert torch.allclose(model.log_prob(x), expected)
    elif kind == "categorical":
        log_probs = model.conditional_log_probs(x)
        assert torch.allclose(model.log_prob(x), log_probs.gather(2, x.long()[..., None]).sum((1, 2)))


@pytest.mark.parametrize("role", ["target", "draft"])
def test_class_conditional_models_are_refused(role):
    conditional = build("gated-pixelcnn", (1, 2, 3), seed=0, channels=2, num_layers=1, head_channels=2, num_classes=3)
    plain = build("gated-pixelcnn", (1, 2, 3), seed=1, channels=2, num_layers=1, head_channels=2)
    target, draft = (conditional, plain) if role == "target" else (plain, conditional)
    with pytest.raises(ValueError, match=f"class-conditional models is not supported \\(the {role}") as info:
        speculative_sample(target, draft, 4)
    assert "\n" not in str(info.value)


def test_gamma_must_be_positive():
    model = genzoo.build_model("fvsbn", 4)
    with pytest.raises(ValueError, match="gamma"):
        speculative_sample(model, model, 4, gamma=0)


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speculative")
    out = {"draft": root / "made", "target": root / "transformer", "other": root / "other"}
    assert main(["train", "made", "--data", "digits", "--epochs", "1", "-p", "hidden_sizes=[32]",
                 "--out", str(out["draft"]), "--quiet"]) == 0
    assert main(["train", "transformer", "--data", "digits", "--epochs", "1", "-p", "num_layers=1",
                 "-p", "num_heads=2", "-p", "embed_dim=8", "--out", str(out["target"]), "--quiet"]) == 0
    data = root / "sixteen.npy"
    np.save(data, (np.random.default_rng(0).random((200, 16)) < 0.3).astype(np.float32))
    assert main(["train", "fvsbn", "--data", str(data), "--epochs", "1", "--out", str(out["other"]), "--quiet"]) == 0
    return out


def test_cli_speculative_sampling(runs, tmp_path, capsys):
    png = tmp_path / "spec.png"
    assert main(["sample", str(runs["target"]), "--sampler", "speculative", "--draft", str(runs["draft"]),
                 "--gamma", "3", "-n", "8", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "drew 8 samples" in out and "samples/s" in out and "speculative sampler" in out
    assert "acceptance rate" in out
    rate = float(out.split("acceptance rate ")[1].split(",")[0])
    assert 0 < rate <= 1
    x = np.load(png.with_suffix(".npy"))
    assert x.shape == (8, 1, 8, 8) and set(np.unique(x)) <= {0, 1}


def test_cli_speculative_sampling_in_batches(runs, tmp_path, capsys):
    """--batch-size bounds the rows drawn at once; the first batch is what a smaller -n draws."""
    def draw(n, *extra):
        png = tmp_path / f"spec{n}.png"
        assert main(["sample", str(runs["target"]), "--sampler", "speculative", "--draft", str(runs["draft"]),
                     "-n", str(n), "--seed", "3", "--out", str(png), "--quiet", *extra]) == 0
        return np.load(png.with_suffix(".npy")), capsys.readouterr().out

    small, _ = draw(4)
    whole, _ = draw(10)
    assert not np.array_equal(whole[:4], small), "drawn at once, the first rows differ: the test can tell"
    batched, out = draw(10, "--batch-size", "4")
    assert batched.shape == (10, 1, 8, 8)
    assert np.array_equal(batched[:4], small)
    assert not np.array_equal(batched[4:8], small)  # the next batch continues the generator
    assert "drew 10 samples" in out and "acceptance rate" in out


def test_speculative_statistics_add_up():
    a = SpeculativeStats(target_calls=3, draft_calls=9, proposed=12, accepted=6, dimensions=20, row_rounds=10)
    b = SpeculativeStats(target_calls=2, draft_calls=4, proposed=8, accepted=6, dimensions=10, row_rounds=4)
    total = a + b
    assert (total.target_calls, total.draft_calls, total.proposed, total.accepted, total.dimensions,
            total.row_rounds) == (5, 13, 20, 12, 30, 14)
    assert total.acceptance_rate == pytest.approx(12 / 20)
    assert sum([a, b], SpeculativeStats()) == total


def test_cli_fast_and_naive_transformer_samples_agree(runs, tmp_path):
    def draw(sampler):
        png = tmp_path / f"{sampler}.png"
        assert main(["sample", str(runs["target"]), "--sampler", sampler, "-n", "4", "--seed", "3", "--out", str(png)]) == 0
        return np.load(png.with_suffix(".npy"))

    assert np.array_equal(draw("fast"), draw("naive"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sampler", "speculative"], "needs --draft"),
        (["--sampler", "speculative", "--draft", "{other}"], "data shape"),
        (["--sampler", "speculative", "--draft", "{draft}", "--gamma", "0"], "--gamma must be at least 1"),
        (["--draft", "{draft}"], "only used with --sampler speculative"),
        (["--sampler", "speculative", "--draft", "{missing}"], "does not exist"),
    ],
)
def test_cli_speculative_errors(runs, tmp_path, capsys, extra, message):
    paths = {"other": runs["other"], "draft": runs["draft"], "missing": tmp_path / "nope"}
    extra = [e.format(**paths) for e in extra]
    code = main(["sample", str(runs["target"]), "-n", "2", "--out", str(tmp_path / "x.png"), *extra])
    assert code == 2
    assert message in cli_error_line(capsys)


def test_a_target_in_train_mode_with_dropout_is_sampled_in_eval_mode():
    """A freshly built model is in train mode; speculative sampling must still draw from the p_θ
    that log_prob scores in eval mode (not through dropout), and leave both modes as they were."""
    target = randomize(genzoo.build_model("transformer", (N,), num_layers=2, num_heads=2, embed_dim=8,
                                          dropout=0.5).double(), seed=1, std=0.8)
    draft = build("fvsbn", (N,), seed=2, std=1.5).train()
    x, _ = speculative_sample(target, draft, NUM_SAMPLES, gamma=3, generator=torch.Generator().manual_seed(0))
    assert target.training and draft.training
    assert all(m.training for m in target.modules())
    assert chi2_p_value(frequencies(x), target.eval()) > 1e-3


@pytest.mark.parametrize("name, hp", [("transformer", {"num_layers": 1, "num_heads": 2, "embed_dim": 8, "dropout": 0.5}),
                                      ("made", {"hidden_sizes": [8]}),
                                      ("pixelcnn", None)])
def test_the_public_samplers_draw_in_eval_mode(name, hp):
    """sample_naive and sample_from_uniforms called directly on a model in train mode give what
    they give in eval mode, and leave the model in train mode."""
    shape = (1, 2, 2) if name == "pixelcnn" else (N,)
    kwargs = {} if hp is None else hp
    model = randomize(genzoo.build_model(name, shape, **kwargs).double(), seed=3)
    u = torch.rand(64, N, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    in_train = [model.sample_naive(u), model.sample_from_uniforms(u)]
    assert model.training
    model.eval()
    for x in in_train:
        assert torch.equal(x, model.sample_naive(u))


def test_a_gamma_beyond_the_dimensions_is_taken_as_the_dimensions():
    """γ > D: a round can use D proposals at most, so a huge γ costs no more than γ = D (it used to
    size its buffers and KV cache by γ and run out of memory) and stays exact."""
    (t_name, t_hp, t_std), (d_name, d_hp, d_std) = PAIRS["transformer<-fvsbn"]
    target = build(t_name, (N,), seed=1, std=t_std, **t_hp)
    draft = build(d_name, (N,), seed=2, std=d_std, **d_hp)
    g = torch.Generator().manual_seed(0)
    x, stats = speculative_sample(target, draft, NUM_SAMPLES, gamma=10**9, generator=g)
    assert chi2_p_value(frequencies(x), target) > 1e-3
    same, _ = speculative_sample(target, draft, 500, gamma=N, generator=torch.Generator().manual_seed(5))
    huge, _ = speculative_sample(target, draft, 500, gamma=10**9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(same, huge)
