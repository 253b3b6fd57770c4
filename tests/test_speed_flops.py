"""benchmarks/speed.py's count of a MADE training step's floating-point operations."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import genzoo  # noqa: E402
from genzoo.nn import row_blocks_fraction  # noqa: E402
from speed import made_train_flops_per_example  # noqa: E402


def test_dense_count_is_five_products_for_one_hidden_layer():
    model = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[1000], row_blocks=0)
    dense, executed = made_train_flops_per_example(model)
    assert dense == executed == 5 * 2 * 784 * 1000


def test_executed_count_follows_the_row_blocks():
    model = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[1000], direct_connections=True)
    dense, executed = made_train_flops_per_example(model)
    # first layer and direct connections read the data (2 products), the output layer 3
    assert dense == 2 * (2 + 3) * 784 * 1000 + 2 * 2 * 784 * 784
    fractions = [row_blocks_fraction(layer.row_blocks, tuple(layer.weight.shape))
                 for layer in (*model.layers, model.direct)]
    areas = [784 * 1000, 784 * 1000, 784 * 784]
    assert executed == pytest.approx(sum(2 * p * f * a for p, f, a in zip((2, 3, 2), fractions, areas)), rel=1e-12)
    assert 0.5 < executed / dense < 0.6


def test_off_the_cpu_every_product_counts_as_dense():
    model = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[1000]).to("meta")
    dense, executed = made_train_flops_per_example(model)
    assert dense == executed


def test_layers_that_sum_columns_count_one_flop_per_addition():
    """Forward and weight gradient each add, for every one of x, a row of every block that uses
    its column: counted here from the shapes of the stored tables (W[rows, :used]ᵀ is used × rows),
    independently of the row blocks' bookkeeping that the count reads."""
    model = genzoo.build_model("made", (1, 28, 28), hidden_sizes=[1000], direct_connections=True)
    x = (torch.rand(6, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
    _, products_only = made_train_flops_per_example(model)
    dense, executed = made_train_flops_per_example(model, x)
    output_layer = model.layers[1]
    output_flops = 3 * 2 * 784 * 1000 * row_blocks_fraction(output_layer.row_blocks, (784, 1000))
    adds = 0.0
    for layer in (model.layers[0], model.direct):
        assert layer.binary_input
        rows_per_column = torch.zeros(784)
        for table in layer.weight_blocks:
            used, rows = table.shape
            rows_per_column[:used] += rows
        adds += 2 * sum(float(rows_per_column[row.bool()].sum()) for row in x) / len(x)
    assert executed == pytest.approx(output_flops + adds, rel=1e-9)
    assert executed < 0.6 * products_only < dense
    # data that is not zeros and ones is multiplied, and counted as products
    assert made_train_flops_per_example(model, x * 0.5)[1] == products_only
