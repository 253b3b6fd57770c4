"""The benchmarks' interleaved timing: every round runs every contender, and ratios pair rounds."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
from common import interleaved_seconds, median_ratio  # noqa: E402


def test_each_round_runs_every_contender_once_in_a_rotated_order():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    seconds = interleaved_seconds(contenders, rounds=4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {name: len(times) for name, times in seconds.items()} == {"a": 4, "b": 4, "c": 4}


def test_a_slow_spell_cancels_from_the_ratio_of_one_round(monkeypatch):
    # a fake clock: "fast" takes 1 unit and "slow" 2, both 10x longer during the third round
    clock = {"now": 0.0, "round": 0, "calls": 0}

    def work(units):
        def call():
            clock["now"] += units * (10 if clock["round"] == 2 else 1)
            clock["calls"] += 1
            if clock["calls"] % 2 == 0:
                clock["round"] += 1
        return call

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["now"])
    seconds = interleaved_seconds({"fast": work(1), "slow": work(2)}, rounds=3, warmup=0)
    assert seconds == {"fast": [1, 1, 10], "slow": [2, 2, 20]}
    assert median_ratio(seconds["slow"], seconds["fast"]) == 2


def test_median_ratio_pairs_rounds_rather_than_medians():
    # medians alone would give 3 / 3 = 1; the rounds give 3, 0.5, 3
    assert median_ratio([3.0, 1.0, 9.0], [1.0, 2.0, 3.0]) == 3.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rounds"):
        interleaved_seconds({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="equally long"):
        median_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        median_ratio([], [])


def test_the_speed_table_shows_each_model_with_its_same_run_ratios():
    from speed import markdown_table
    entry = {"train_examples_per_second": 1140.4, "train_speedup_vs_peer_style": 1.82,
             "peer_style_train_examples_per_second": 630.2, "train_speedup_vs_peer_quoted": 2.28,
             "sample16_seconds_fast": 0.1634, "sample16_seconds_naive": 9.29, "fast_over_naive_sampling": 56.9,
             "sampling_speedup_vs_peer_quoted": 73.4}
    table = markdown_table({"models": {"made": entry}}).splitlines()
    assert len(table) == 3
    # three significant figures: a ratio just under a 2x target must not print as "2.0x"
    assert table[2] == "| MADE 784-8000-784, batch 64 | 1,140 | 1.82× (630) | 2.28× | 0.163 s | 9.29 s | 57× | 73× |"
    entry["train_speedup_vs_peer_quoted"] = 1.986
    assert "| 1.99× |" in markdown_table({"models": {"made": entry}})
