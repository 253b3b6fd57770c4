"""Pixel models (PixelCNN, Gated PixelCNN, the Transformer), their masked convolutions and
speculative sampling, held to exact values: the layers' mask types, cached generation with a
kernel wider than the first layer's, the KV cache over blocks of any size, the speculative
sampler's bookkeeping, modes and refusals, and the shared interface's caller-checked inputs."""
from __future__ import annotations

import pytest
import torch

import genzoo
from conftest import randomize
from genzoo.nn.masked_conv import pixelcnn_mask


def build(name: str, shape, seed: int = 0, std: float = 0.7, **hp) -> genzoo.GenerativeModel:
    return randomize(genzoo.build_model(name, shape, **hp).double(), seed=seed, std=std).eval()


def test_pixelcnn_has_a_type_a_first_layer_and_type_b_masks_after_it():
    """van den Oord et al.: the first layer hides the pixel itself (type A); every later masked
    convolution sees the centre (type B), whose input at a pixel already depends only on the
    pixels before it. A type-A mask in the blocks would still be causal (so the causality and
    normalization tests pass) but drops the centre tap the paper's model has."""
    model = build("pixelcnn", (1, 4, 4), hidden_channels=4, num_blocks=2, head_channels=2,
                  first_kernel_size=5, kernel_size=3)
    assert torch.equal(model.first.mask, pixelcnn_mask(5, "A"))
    assert model.first.mask[2, 2] == 0
    for block in model.blocks:
        assert torch.equal(block.conv.mask, pixelcnn_mask(3, "B"))
        assert block.conv.mask[1, 1] == 1
    # and the centre tap is used: a block's output at (r, c) changes with its input at (r, c)
    block = model.blocks[0].conv
    x = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    base = block(x)[0, :, 1, 1]
    x[0, :, 1, 1] = 1.0
    assert not torch.allclose(block(x)[0, :, 1, 1], base)


@pytest.mark.parametrize(
    "name, hp",
    [
        ("pixelcnn", {"hidden_channels": 4, "num_blocks": 2, "head_channels": 3}),
        ("pixelcnn", {"hidden_channels": 4, "num_blocks": 1, "head_channels": 3, "data_kind": "grayscale"}),
        ("gated-pixelcnn", {"channels": 3, "num_layers": 2, "head_channels": 3}),
    ],
    ids=["pixelcnn", "pixelcnn-8bit", "gated"],
)
def test_cached_sampler_equals_the_naive_one_when_later_kernels_are_wider_than_the_first(name, hp):
    """kernel_size 5 after a 3×3 first layer: the caches must be padded for the widest kernel
    (pad 2), not the first one's (pad 1), or the cached sampler reads the wrong pixels."""
    model = build(name, (1, 4, 5), seed=3, std=0.8, **hp, first_kernel_size=3, kernel_size=5)
    u = torch.rand(6, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fast = model.sample_from_uniforms(u)
    assert torch.equal(fast, model.sample_naive(u))
    assert len(fast.unique()) > 1


# -- speculative sampling ------------------------------------------------------------------------


@pytest.mark.parametrize("num_masks", [2, 3])
def test_a_target_that_is_any_mixture_of_masks_is_refused(num_masks):
    """A MADE with K ≥ 2 masks scores the average over its masks, not the product of the active
    mask's conditionals: K = 2 is as much a mixture as K = 3."""
    from genzoo.sampling import speculative_sample

    target = genzoo.build_model("made", (6,), hidden_sizes=[8], num_masks=num_masks)
    draft = genzoo.build_model("fvsbn", (6,))
    with pytest.raises(ValueError, match="mixture"):
        speculative_sample(target, draft, 4)


@pytest.mark.parametrize("role", ["draft", "target"])
def test_a_binary_and_an_8bit_model_do_not_pair(role):
    """A binary model and an 8-bit one of the same shape and order: the draft's proposals would
    be values the target has no probability for; refused with a ValueError naming the kinds."""
    from genzoo.sampling import speculative_sample

    binary = build("pixelcnn", (1, 1, 3), hidden_channels=2, num_blocks=1, head_channels=2, first_kernel_size=3)
    gray = build("pixelcnn", (1, 1, 3), hidden_channels=2, num_blocks=1, head_channels=2, first_kernel_size=3,
                 data_kind="grayscale")
    target, draft = (binary, gray) if role == "draft" else (gray, binary)
    with pytest.raises(ValueError, match="data") as info:
        speculative_sample(target, draft, 4, gamma=2)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("D, gamma, rounds, proposed", [(5, 3, 2, 4), (7, 2, 3, 5), (4, 4, 1, 4), (6, 1, 3, 3)])
def test_a_draft_equal_to_the_target_counts_only_the_proposals_it_could_make(D, gamma, rounds, proposed):
    """Draft = target: every proposal is accepted, so each round advances γ + 1 dimensions, and
    the last round proposes only the steps left before D (D = 5, γ = 3: 3 + 1, then 1 proposal
    and nothing to draw). The acceptance rate is exactly 1 and the counts are exact."""
    from genzoo.sampling import speculative_sample

    n = 7
    model = build("made", (D,), seed=3, std=1.0, hidden_sizes=[8])
    x, stats = speculative_sample(model, model, n, gamma=gamma, generator=torch.Generator().manual_seed(0))
    assert stats.acceptance_rate == 1.0
    assert stats.proposed == stats.accepted == n * proposed
    assert stats.target_calls == rounds and stats.row_rounds == n * rounds
    assert stats.dimensions == n * D
    assert stats.draft_calls == sum(min(gamma, D - t) for t in range(0, D, gamma + 1))


def test_a_draft_in_train_mode_with_dropout_proposes_in_eval_mode():
    """The draft, too, proposes in eval mode: through dropout (drawn from the global RNG, not the
    generator) the same generator would no longer reproduce the samples. Its mode is restored."""
    from genzoo.sampling import speculative_sample

    target = build("made", (6,), seed=1, std=1.0, hidden_sizes=[8])
    draft = randomize(genzoo.build_model("transformer", (6,), num_layers=1, num_heads=2, embed_dim=8,
                                         dropout=0.5).double(), seed=2, std=0.8).train()
    runs = []
    for seed in (10, 11):
        torch.manual_seed(seed)  # a different global RNG each time: it must not matter
        runs.append(speculative_sample(target, draft, 200, gamma=3, generator=torch.Generator().manual_seed(0)))
        assert draft.training and all(m.training for m in draft.modules())
    in_eval = speculative_sample(target, draft.eval(), 200, gamma=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][0], in_eval[0])
    assert runs[0][1] == runs[1][1] == in_eval[1]


def test_cached_false_scores_with_full_passes_not_the_kv_cache(monkeypatch):
    """``cached=False`` forces the full conditional_logits pass: the KV-cached verifier is not
    even built (else the cached-equals-full comparison would compare the cache with itself)."""
    from genzoo.models.autoregressive.transformer import Transformer
    from genzoo.sampling import speculative_sample

    target = build("transformer", (1, 2, 3), seed=4, num_layers=1, num_heads=2, embed_dim=8)
    draft = build("fvsbn", (1, 2, 3), seed=5)
    cached, _ = speculative_sample(target, draft, 30, gamma=2, generator=torch.Generator().manual_seed(1))

    def refuse(self, n, gamma):
        raise AssertionError("the KV-cached verifier was used with cached=False")

    monkeypatch.setattr(Transformer, "cached_verifier", refuse)
    full, _ = speculative_sample(target, draft, 30, gamma=2, generator=torch.Generator().manual_seed(1), cached=False)
    assert torch.equal(cached, full)
    with pytest.raises(AssertionError, match="KV-cached"):
        speculative_sample(target, draft, 30, gamma=2, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mask_shape", [(1, 3), (3, 1), (2, 3), (1, 1)])
def test_a_mask_of_another_shape_than_the_kernel_is_refused(mask_shape):
    """A (1, 3) or (1, 1) mask would broadcast over a 3×3 kernel without complaint (a mask that
    hides nothing, or the wrong taps): refused when the layer is built."""
    from genzoo.nn.masked_conv import MaskedConv2d

    with pytest.raises(ValueError, match="mask has shape"):
        MaskedConv2d(1, 2, (3, 3), anchor=(1, 1), mask=torch.ones(mask_shape))
    MaskedConv2d(1, 2, (3, 3), anchor=(1, 1), mask=torch.ones(3, 3))  # the right shape is fine


def test_fractional_labels_are_refused_and_whole_float_labels_accepted():
    """A label of 1.5 is a mistake, not class 1 (``.long()`` would truncate it silently); a float
    label that is a whole number is that class."""
    model = build("gated-pixelcnn", (1, 2, 2), channels=2, num_layers=1, head_channels=2, first_kernel_size=3,
                  num_classes=3)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    for bad in (torch.tensor([1.5, 0.0]), 1.5, torch.tensor(0.25)):
        with pytest.raises(ValueError, match="integers"):
            model.log_prob(x, y=bad)
    assert torch.equal(model.log_prob(x, y=torch.tensor([1.0, 2.0])), model.log_prob(x, y=torch.tensor([1, 2])))


@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn"])
def test_the_network_sees_8bit_levels_in_unit_range(name):
    """The network's input is level / 255: 0 → 0 and 255 → 1 exactly (what every saved model was
    trained on: another scale would change a loaded checkpoint's likelihoods); binary is as is."""
    hp = {"hidden_channels": 2, "num_blocks": 1} if name == "pixelcnn" else {"channels": 2, "num_layers": 1}
    gray = build(name, (1, 2, 2), head_channels=2, first_kernel_size=3, data_kind="grayscale", **hp)
    levels = torch.tensor([0.0, 51.0, 255.0], dtype=torch.float64)
    assert torch.equal(gray.scale(levels), torch.tensor([0.0, 0.2, 1.0], dtype=torch.float64))
    binary = build(name, (1, 2, 2), head_channels=2, first_kernel_size=3, **hp)
    assert torch.equal(binary.scale(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))


def test_gated_layers_after_the_first_read_their_own_pixel_and_row():
    """Gated PixelCNN's first layer sees rows above r (vertical) and columns left of c
    (horizontal) only; every later layer's horizontal convolution also reads column c of its
    input and its vertical one row r (its inputs there already depend only on earlier pixels).
    Dropping that tap keeps the model causal (the causality tests pass) but is not the paper's."""
    model = build("gated-pixelcnn", (1, 5, 5), channels=2, num_layers=2, head_channels=2, first_kernel_size=3,
                  kernel_size=3, std=1.0)
    r = c = 2
    for l, layer in enumerate(model.layers):
        channels = layer.horizontal.conv.in_channels
        impulse = torch.zeros(1, channels, 5, 5, dtype=torch.float64)
        impulse[0, :, r, c] = 1.0
        with torch.no_grad():
            h_at = layer.horizontal(impulse)[0, :, r, c]
            v_at = layer.vertical(impulse)[0, :, r, c]
            h_bias = layer.horizontal(torch.zeros_like(impulse))[0, :, r, c]
            v_bias = layer.vertical(torch.zeros_like(impulse))[0, :, r, c]
            # the pixel left of c and the row above r are read by every layer
            left, above = torch.zeros_like(impulse), torch.zeros_like(impulse)
            left[0, :, r, c - 1] = 1.0
            above[0, :, r - 1, c] = 1.0
            assert not torch.allclose(layer.horizontal(left)[0, :, r, c], h_bias)
            assert not torch.allclose(layer.vertical(above)[0, :, r, c], v_bias)
        if l == 0:
            assert torch.equal(h_at, h_bias) and torch.equal(v_at, v_bias)
        else:
            assert not torch.allclose(h_at, h_bias), f"layer {l}'s horizontal stack ignores column c"
            assert not torch.allclose(v_at, v_bias), f"layer {l}'s vertical stack ignores row r"
        # and never the pixel to the right, nor the row below
        right, below = torch.zeros_like(impulse), torch.zeros_like(impulse)
        right[0, :, r, c + 1] = 1.0
        below[0, :, r + 1, c] = 1.0
        with torch.no_grad():
            assert torch.equal(layer.horizontal(right)[0, :, r, c], h_bias)
            assert torch.equal(layer.vertical(below)[0, :, r, c], v_bias)


# -- the Transformer's KV cache ------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [[(0, 2), (2, 4), (4, 6)], [(0, 1), (1, 3), (3, 4), (4, 6)], [(0, 3), (3, 5), (5, 6)]])
def test_cached_logits_of_every_block_size_equal_the_full_pass(blocks):
    """Only a block of ONE new position may attend to the cache unmasked; any block of two or
    more (two included, at the start and after a prefix) needs the offset causal mask, or its
    first position sees the second's input."""
    model = randomize(genzoo.build_model("transformer", (6,), num_layers=2, num_heads=2, embed_dim=8).double(),
                      seed=6, std=1.0).eval()
    x = torch.randint(0, 2, (8, 6), generator=torch.Generator().manual_seed(3)).double()
    full = model.conditional_logits(x)
    inputs = model._inputs(x)
    cache = model.new_cache(len(x))
    pieces = [model.logits_cached(inputs[:, a:b], cache) for a, b in blocks]
    assert cache.length == 6
    assert torch.allclose(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-12)


def test_a_multi_channel_shape_counts_channels_and_rows_as_raster_rows():
    """(C, H, W) data: the raster has C·H rows of W columns (channel c's row r is raster row
    c·H + r); each position gets its own (row, column) embedding, and the model is a normalized
    distribution whose cached sampler equals the naive one."""
    from genzoo.models.autoregressive.transformer import raster_grid
    from conftest import all_binary

    assert raster_grid((2, 3, 4)) == (6, 4)
    assert raster_grid((3, 1, 5)) == (3, 5)
    model = randomize(genzoo.build_model("transformer", (2, 2, 3), num_layers=1, num_heads=2, embed_dim=8).double(),
                      seed=7, std=0.8).eval()
    assert model.row_embedding.num_embeddings == 4 and model.column_embedding.num_embeddings == 3
    assert model.rows.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert model.columns.tolist() == [0, 1, 2] * 4
    assert model.log_prob(all_binary(12)).exp().sum().item() == pytest.approx(1.0, abs=1e-10)
    u = torch.rand(16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(model.sample_from_uniforms(u), model.sample_naive(u))


# -- the shared interface's input checks ---------------------------------------------------------


def test_nested_caller_checked_blocks_restore_the_outer_blocks_state():
    """``input_values_checked_by_caller`` nests (an evaluation inside a training epoch that
    vouched for its data): leaving the inner block restores the outer one's state (checks still
    off), and leaving the outer one turns them back on."""
    model = genzoo.build_model("fvsbn", (4,))
    x = torch.tensor([[0.0, 1.0, 0.5, 1.0]])
    with model.input_values_checked_by_caller():
        with model.input_values_checked_by_caller():
            model.log_prob(x)
        model.log_prob(x)  # still inside the outer block: not refused
    with pytest.raises(ValueError, match="row 0 has value 0.5"):
        model.log_prob(x)


def test_input_is_converted_to_the_models_dtype_also_when_the_caller_checked_it():
    """Inside ``input_values_checked_by_caller`` only the value checks are skipped: float32 or
    integer input to a float64 model is still converted, and scores as it does outside."""
    model = randomize(genzoo.build_model("made", (6,), hidden_sizes=[8]).double(), seed=1)
    x = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 1]], dtype=torch.float32)
    expected = model.log_prob(x)
    assert expected.dtype == torch.float64
    with model.input_values_checked_by_caller():
        for given in (x, x.long(), x.reshape(2, 6)):
            assert torch.equal(model.log_prob(given), expected)
        assert model.loss(x).dtype == torch.float64
