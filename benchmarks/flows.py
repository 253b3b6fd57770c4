"""Train and evaluate the normalizing flows (NICE, Real NVP, Glow) on 8-bit MNIST in bits/dim and
on binarized MNIST in nats (see ../shared/PROTOCOLS.md), and time their sampling.

    python benchmarks/flows.py --models nice realnvp glow --datasets mnist binarized-mnist \
        --max-seconds 600 [--eval-draws 1] [--device auto] [--data-dir DIR] [--runs DIR] [--results DIR]

Each run uses configs/flows/<model>.toml (its [data] is 8-bit mnist; for binarized-mnist the same
model is trained on the fixed binarization, where the trainer sets data_kind = "binary"),
trains with early stopping on valid, restores the best epoch and reports the test bound: the
uniform (or variational) dequantization lower bound on log P(x), so the NLL is an upper bound
("≤"), with the number of dequantization draws stated. On 8-bit data the figure is bits/dim
= −(E_u[log p((x + u)/256)] − D log 256) / (D ln 2); NICE is also given as the continuous
log-likelihood of the [0, 1]-rescaled data, E_u[log p(y)] = bound + D log 256, the unit of its paper.
Sampling throughput is the median of repeated draws of a batch of images. Each record names its
protocol: "static" on binary data (flows train on the data set's fixed binarization), on 8-bit
data the dequantization its bound is taken under ("uniform dequantization", "variational
dequantization"), and "continuous" on real-valued data, whose log-likelihood is exact.
A model without a config in configs/flows is refused before anything trains. Records go to
<results>/flows.json (a record with the same model and data set is replaced) and <results>/flows.md.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import (REPO, add_results_option, command_line, config_names, default_data_dir, device_description,
                    fit_or_resume, median_seconds, merge_records, refuse_unknown_models)
from genzoo.config import load_run_config
from genzoo.devices import resolve_device
from genzoo.evaluation import evaluate

# Published figures (test, dequantized 8-bit MNIST, bits/dim unless stated) and the targets.
ANCHORS = {
    ("nice", "mnist"): "4.36 bits/dim = +1980.50 nats on [0, 1] data (Dinh et al. 2015); 4.34 (pytorch-generative)",
    ("realnvp", "mnist"): "1.06 (Dinh et al. 2017, as reported by Grathwohl et al. 2019); target ≤ 1.10",
    ("glow", "mnist"): "1.05 (Kingma & Dhariwal 2018, as reported by Grathwohl et al. 2019); target ≤ 1.08",
}
OTHER_ANCHORS = "FFJORD 0.99, Residual Flow 0.97 (not in genzoo)"
CONFIGS = REPO / "configs" / "flows"


def config_path(model: str) -> Path:
    return CONFIGS / f"{model}.toml"


def protocol(model) -> str:
    """The protocol of ../shared/PROTOCOLS.md a flow's figure is under: on binary data the fixed
    binarization the data set comes with (static: flows.py never redraws it); on 8-bit data the
    dequantization its bound is taken under; on real-valued data (a data file) none, the
    log-likelihood being exact."""
    if model.support == "binary":
        return "static"
    return "continuous" if model.levels is None else f"{model.config.dequantization} dequantization"


def sampling_rate(model: torch.nn.Module, batch: int, device: torch.device) -> float:
    """Images per second of ``model.sample(batch)``, the median of 5 runs after a warm-up."""
    generator = torch.Generator(device=device).manual_seed(0)

    def draw():
        model.sample(batch, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return batch / median_seconds(draw, repeats=5, warmup=1)


def run_one(model_name: str, dataset: str, args: argparse.Namespace, device: torch.device) -> dict:
    path = config_path(model_name)
    config = load_run_config(path)
    config.data.name = dataset
    config.model.pop("data_kind", None)  # the trainer sets it from the data set
    if args.eval_draws:
        config.model["eval_draws"] = args.eval_draws
    run_dir = Path(args.runs) / f"{model_name}-{Path(dataset).stem}"
    result = fit_or_resume(config, run_dir, device, args.data_dir, args.max_seconds, args.epochs)
    model = result.model.eval()
    test = result.data.test
    tic = time.perf_counter()
    evaluation = evaluate(model, test.reshape(len(test), -1), "test", batch_size=500, progress=None)
    eval_seconds = time.perf_counter() - tic
    D = model.num_dims
    record = {
        "model": model_name,
        "dataset": dataset,
        "data_kind": model.support,
        "protocol": protocol(model),
        "split": "test",
        "nll_nats": evaluation.nll_nats,
        "bits_per_dim": evaluation.bits_per_dim,
        "standard_error_nats": evaluation.standard_error_nats,
        "likelihood": evaluation.likelihood,
        "likelihood_detail": evaluation.likelihood_detail,
        "dequantization": model.config.dequantization,
        "eval_draws": model.config.eval_draws,
        "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "stopped_because": result.stopped_because,
        "train_seconds": result.train_seconds,
        "eval_seconds": eval_seconds,
        "sampling_images_per_second": sampling_rate(model, args.sample_batch, device),
        "sampling_batch": args.sample_batch,
        "params": sum(p.numel() for p in model.parameters()),
        "device": device_description(device),
        "config": str(path.relative_to(REPO)),
        "command": command_line(),
        "anchor": ANCHORS.get((model_name, dataset), ""),
    }
    if model.levels == 256:
        # the continuous log-likelihood of y = (x + u)/256 ∈ [0, 1]^D: NICE's unit
        record["log_likelihood_unit_interval_nats"] = -evaluation.nll_nats + D * math.log(256)
    print(json.dumps(record))
    return record


def markdown_table(records: list[dict]) -> str:
    lines = ["| data | model | test NLL (nats) | bits/dim | likelihood | draws | log p on [0,1] data (nats) | epochs | "
             "train time | samples/s | device | paper / target |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(records, key=lambda r: (r["dataset"], r["model"])):
        unit = r.get("log_likelihood_unit_interval_nats")
        lines.append(
            f"| {r['dataset']} | {r['model']} | ≤ {r['nll_nats']:.2f} | ≤ {r['bits_per_dim']:.4f} | "
            f"{r['dequantization']} dequantization bound | {r['eval_draws']} | {'' if unit is None else f'≥ {unit:.2f}'} | "
            f"{r['epochs']} | {r['train_seconds'] / 60:.0f} min | {r['sampling_images_per_second']:,.0f} | "
            f"{r['device']} | {r['anchor']} |"
        )
    lines.append(f"\nOther published flows on dequantized 8-bit MNIST: {OTHER_ANCHORS}.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["nice", "realnvp", "glow"])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "binarized-mnist"],
                        help="mnist, binarized-mnist, or data files (a small .npz for a smoke run)")
    parser.add_argument("--max-seconds", type=float, default=0, help="training-time budget per run (0: none)")
    parser.add_argument("--epochs", type=int, default=0, help="override the configs' epoch count")
    parser.add_argument("--eval-draws", type=int, default=0, help="dequantization draws per test example (0: the config's)")
    parser.add_argument("--sample-batch", type=int, default=100, help="images per timed sampling call")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--runs", default=str(REPO / "benchmarks" / "runs"), help="folder for the run folders")
    add_results_option(parser, "flows.json and flows.md")
    args = parser.parse_args(argv)
    refuse_unknown_models(parser, args.models, config_names(CONFIGS), "no config in configs/flows")
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    results_json = args.results / "flows.json"
    for dataset in args.datasets:
        for model in args.models:
            records = merge_records(results_json, [run_one(model, dataset, args, device)], key=("model", "dataset"))
            (args.results / "flows.md").write_text(markdown_table(records) + "\n")
    print(markdown_table(json.loads(results_json.read_text())))


if __name__ == "__main__":
    main()
