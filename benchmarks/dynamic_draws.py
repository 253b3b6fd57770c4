"""How far a dynamic-protocol figure moves with its one test draw, and with the training set's size.

The dynamic protocol (../shared/PROTOCOLS.md) trains on 50,000 of MNIST's 60,000 training images
and reports one seeded Bernoulli draw of the test images. Peers differ on both counts (e.g.
pytorch-generative trains on all 60,000 and scores a fresh draw at each evaluation), so before
reading a gap to their figures this script measures both effects:

* the model of configs/dynamic/<model>.toml, trained as binarized_mnist.py trains it (same run
  folder, reused when finished), scored on the recorded draw and on --draws further seeded draws;
* with --with-valid, the same config trained on train + valid (60,000 images) in its own run
  folder, scored alike. Its validation draw is then part of its training images, so its best
  epoch is chosen on seen data: it is a measurement, never a protocol result.

    python benchmarks/dynamic_draws.py --models fvsbn [--draws 30] [--with-valid] [--results DIR]

Records go to <results>/dynamic-draws.json (one per model and training set; --results defaults to
benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import genzoo.training
from common import (REPO, add_results_option, at_least, command_line, config_names, default_data_dir,
                    device_description, merge_records, refuse_unknown_models, stopped_before_its_first_checkpoint)
from genzoo.config import RunConfig, load_run_config
from genzoo.data import TrainingData, make_training_data
from genzoo.data.registry import load_splits
from genzoo.devices import resolve_device
from genzoo.evaluation import evaluate
from genzoo.training import Trainer

DYNAMIC_CONFIGS = REPO / "configs" / "dynamic"
FIRST_DRAW_SEED = 10_000  # the further test draws use seeds 10000, 10001, …


def training_data_with_valid(config, data_dir=None, labels=False) -> TrainingData:
    """The protocol's data, with the valid images' pixel probabilities added to the train source."""
    data = make_training_data(config, data_dir, labels)
    splits, _ = load_splits(config.name, data_dir)
    data.train_source = torch.cat([data.train_source, splits["valid"] / 255.0])
    return data


def train(model: str, config: RunConfig, with_valid: bool, args: argparse.Namespace,
          device: torch.device) -> genzoo.training.TrainResult:
    run_dir = Path(args.runs) / (f"{model}-dynamic-60k" if with_valid else f"{model}-dynamic")
    original = genzoo.training.make_training_data
    if with_valid:
        genzoo.training.make_training_data = training_data_with_valid
    try:
        if (run_dir / "checkpoints" / "last.pt").exists():
            trainer = Trainer.resume(run_dir, device, args.data_dir, None)
        else:
            trainer = Trainer(config, run_dir, device, args.data_dir, progress=None,
                              overwrite=stopped_before_its_first_checkpoint(run_dir))
        return trainer.fit()
    finally:
        genzoo.training.make_training_data = original


def test_draws(model_name: str, config: RunConfig, result: genzoo.training.TrainResult, args: argparse.Namespace,
               with_valid: bool, device: torch.device) -> dict:
    model = result.model
    recorded = result.data.test
    splits, _ = load_splits("mnist", args.data_dir)
    probabilities = splits["test"].reshape(len(splits["test"]), -1) / 255.0
    scores = []
    for i in range(args.draws):
        draw = torch.bernoulli(probabilities, generator=torch.Generator().manual_seed(FIRST_DRAW_SEED + i))
        scores.append(evaluate(model, draw.to(device), "test", batch_size=500).nll_nats)
    return {
        "model": model_name,
        "protocol": "dynamic",
        "train_images": len(result.data.train_source),
        "recorded_draw_seed": config.data.eval_binarization_seed,
        "recorded_draw_nll_nats": evaluate(model, recorded.reshape(len(recorded), -1).to(device), "test").nll_nats,
        "draws": args.draws,
        "draw_seeds": f"{FIRST_DRAW_SEED}..{FIRST_DRAW_SEED + args.draws - 1}",
        "draw_mean_nll_nats": statistics.mean(scores),
        "draw_sd_nll_nats": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "draw_min_nll_nats": min(scores),
        "draw_max_nll_nats": max(scores),
        "best_epoch": result.best_epoch,
        "device": device_description(device),
        "command": command_line(),
        "note": "trained on train + valid: a measurement, not a protocol result" if with_valid else "",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fvsbn"])
    parser.add_argument("--draws", type=at_least(1), default=30, help="further seeded test draws to score")
    parser.add_argument("--with-valid", action="store_true", help="also train on train + valid (60,000 images)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--runs", default=str(REPO / "benchmarks" / "runs"), help="folder for the run folders")
    add_results_option(parser, "dynamic-draws.json")
    args = parser.parse_args(argv)
    refuse_unknown_models(parser, args.models, config_names(DYNAMIC_CONFIGS),
                          "no dynamic config (configs/dynamic/<model>.toml)")
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    for model in args.models:
        config = load_run_config(DYNAMIC_CONFIGS / f"{model}.toml")
        for with_valid in ([False, True] if args.with_valid else [False]):
            record = test_draws(model, config, train(model, config, with_valid, args, device), args, with_valid, device)
            print(json.dumps(record))
            merge_records(args.results / "dynamic-draws.json", [record], key=("model", "train_images"))


if __name__ == "__main__":
    main()
