"""The binarized-MNIST benchmark's table: runs extended with --epochs, bounds, the published copies."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from binarized_mnist import epochs_per_plan, markdown_table  # noqa: E402
from common import RESULTS  # noqa: E402


def _record(**fields):
    return {"protocol": "static", "model": "made", "nll_nats": 88.0, "bits_per_dim": 0.16, "likelihood": "exact",
            "train_seconds": 60.0, "device": "cpu", "anchor": "", **fields}


def test_epochs_per_plan_splits_a_twice_extended_run():
    record = _record(epochs=300, extended_from_epochs=120, epoch_plans=[[0, 120], [120, 220], [220, 300]])
    assert epochs_per_plan(record) == [120, 100, 80]
    assert "| 300 (120 + 100 + 80) |" in markdown_table([record])


def test_a_run_extended_before_it_ended_counts_the_epochs_it_trained_under_each_total():
    # stopped at epoch 90 of 120, resumed for 200 in all, then early-stopped at 150
    assert epochs_per_plan(_record(epochs=150, epoch_plans=[[0, 120], [90, 200]])) == [90, 60]


def test_records_from_before_the_plans_were_kept_still_read():
    assert epochs_per_plan(_record(epochs=220, extended_from_epochs=120)) == [120, 100]
    assert "| 220 (120 + 100) |" in markdown_table([_record(epochs=220, extended_from_epochs=120)])


def test_a_run_never_extended_shows_its_epochs_alone():
    assert "| 20 | 1 min |" in markdown_table([_record(epochs=20)])


def test_a_run_fitted_to_its_time_budget_says_how_many_epochs_were_planned():
    assert "| 140 of 300 (fitted to the time budget) |" in markdown_table([_record(epochs=140, fitted_from_epochs=300)])


def test_a_bound_is_marked_on_its_nll_and_on_its_bits_per_dim():
    assert "| ≤ 88.00 | ≤ 0.1600 | lower_bound |" in markdown_table([_record(epochs=1, likelihood="lower_bound")])
    assert "| 88.00 | 0.1600 | exact |" in markdown_table([_record(epochs=1)])


def test_the_published_table_and_the_readme_show_the_records():
    table = markdown_table(json.loads((RESULTS / "binarized-mnist.json").read_text())) + "\n"
    assert (RESULTS / "binarized-mnist.md").read_text() == table
    assert table in (REPO / "README.md").read_text()
