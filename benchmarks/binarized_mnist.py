"""Train and evaluate any model that has a config here (FVSBN, NADE, MADE, the VAEs, ...) on
binarized MNIST under both protocols (see ../shared/PROTOCOLS.md): static (the fixed
binarization) and dynamic (a fresh Bernoulli draw of 8-bit MNIST each epoch, test on one seeded
draw).

    python benchmarks/binarized_mnist.py --models fvsbn nade made --protocols static dynamic \
        --max-seconds 600 [--threads N] [--device auto] [--data-dir DIR] [--runs DIR] [--results DIR]
    python benchmarks/binarized_mnist.py --models made-ensemble --protocols static ...

(made-ensemble is the paper's two-layer, 77 M-parameter model, a GPU run with a static config
only; made-ensemble-1layer is the one-layer ensemble that a CPU can train.) Each run uses
configs/<model>.toml (static) or configs/dynamic/<model>.toml; a model without the config of a
requested protocol is refused before anything trains. A run trains on the train split with early
stopping on valid, restores the best epoch and reports the test NLL. An existing run folder is
resumed, and --epochs extends a finished run (its record then lists each epoch total the run
followed). Records go to <results>/binarized-mnist.json (records with the same model and protocol
are replaced) and a markdown table to <results>/binarized-mnist.md; --results defaults to
benchmarks/results.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import (REPO, add_results_option, add_threads_option, command_line, config_names, default_data_dir,
                    device_description, fit_or_resume, merge_records, refuse_unknown_models, use_threads)
from genzoo.config import load_run_config
from genzoo.devices import resolve_device
from genzoo.evaluation import evaluate

# Published figures (test NLL, nats) the targets are set against.
ANCHORS = {
    ("fvsbn", "static"): "97.45 (Larochelle & Murray 2011)",
    ("nade", "static"): "88.33 (Uria et al. 2016)",
    ("made", "static"): "88.40 (Germain et al. 2015)",
    # the authors' command for their best MNIST figure trains two hidden layers of 8,000 units
    ("made-ensemble", "static"): "86.64 (Germain et al. 2015, two hidden layers of 8,000)",
    ("made-ensemble-1layer", "static"): "none verified (Germain et al.'s 86.64 is the two-layer made-ensemble)",
    ("made-ensemble-2x2000", "static"): "none (Germain et al.'s 86.64 is made-ensemble, 8,000 units a layer)",
    ("fvsbn", "dynamic"): "96.58 (pytorch-generative)",
    ("fvsbn-subgrid-spiral", "dynamic"): "96.58 (pytorch-generative, raster order)",
    ("fvsbn-subgrid-spiral", "static"): "97.45 (Larochelle & Murray 2011, raster order)",
    ("nade", "dynamic"): "85.65 (pytorch-generative)",
    ("made", "dynamic"): "84.87 (pytorch-generative)",
    # IWAE-5000 test bounds, Burda et al. 2016 Table 1 (dynamic binarization)
    ("vae", "dynamic"): "86.76 (Burda et al. 2016, VAE k=1, one layer); target ≤ 86.8",
    ("iwae-k5", "dynamic"): "85.54 (Burda et al. 2016, IWAE k=5, one layer)",
    ("iwae-k50", "dynamic"): "84.78 (Burda et al. 2016, IWAE k=50, one layer); target ≤ 84.8",
    ("iwae-2layer", "dynamic"): "82.90 (Burda et al. 2016, IWAE k=50, two layers); target ≤ 83.0",
    # Burda et al.'s appendix D repeats the one-layer models on the fixed binarization
    ("vae", "static"): "88.71 (Burda et al. 2016, appendix D, k=1, one layer)",
    ("iwae-k5", "static"): "87.63 (Burda et al. 2016, appendix D, IWAE k=5, one layer)",
    ("iwae-k50", "static"): "87.10 (Burda et al. 2016, appendix D, IWAE k=50, one layer)",
    ("iwae-2layer", "static"): "none static (Burda et al. 2016, dynamic: 82.90)",
    ("vqvae", "static"): "none (van den Oord et al. 2017 report no binarized-MNIST NLL)",
    ("gumbel-vae", "static"): "none (Jang et al. 2017 report the training ELBO, not IWAE-5000)",
    ("transformer", "dynamic"): "79.17 (ImageGPT, pytorch-generative); target < 79.2",
    ("pixelcnn", "static"): "81.30 (PixelVAE paper, Table 1); target ≤ 81.5",
    ("gated-pixelcnn", "static"): "80.10 (PixelVAE paper, Table 1); target ≤ 80.5",
    ("pixelcnn", "dynamic"): "81.45 (pytorch-generative)",
    ("gated-pixelcnn", "dynamic"): "81.50 (pytorch-generative)",
}


def config_folder(protocol: str) -> Path:
    return REPO / "configs" / ("dynamic" if protocol == "dynamic" else "")


def config_path(model: str, protocol: str) -> Path:
    return config_folder(protocol) / f"{model}.toml"


def run_one(model: str, protocol: str, args: argparse.Namespace, device: torch.device) -> dict:
    path = config_path(model, protocol)
    config = load_run_config(path)
    config.train.fit_epochs_to_max_seconds = args.fit_epochs_to_time
    run_dir = Path(args.runs) / f"{model}-{protocol}"
    result = fit_or_resume(config, run_dir, device, args.data_dir, args.max_seconds, args.epochs)
    data_test = result.data.test
    tic = time.perf_counter()
    evaluation = evaluate(result.model, data_test.reshape(len(data_test), -1), "test", batch_size=500, progress=None)
    record = {
        "model": model,
        "dataset": config.data.name if protocol == "static" else "binarized-mnist (dynamic from mnist)",
        "protocol": protocol,
        "split": "test",
        "nll_nats": evaluation.nll_nats,
        "bits_per_dim": evaluation.bits_per_dim,
        "standard_error_nats": evaluation.standard_error_nats,
        "likelihood": evaluation.likelihood,
        "likelihood_detail": evaluation.likelihood_detail,
        "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "stopped_because": result.stopped_because,
        "train_seconds": result.train_seconds,
        "eval_seconds": time.perf_counter() - tic,
        "params": sum(p.numel() for p in result.model.parameters()),
        "device": device_description(device),
        "config": str(path.relative_to(REPO)),
        "command": command_line(),
        "anchor": ANCHORS.get((model, protocol), ""),
    }
    fitted = result.fitted_from_epochs is not None
    if fitted:
        # --fit-epochs-to-time shortened the plan so that the schedule ends within the budget
        record["fitted_from_epochs"] = result.fitted_from_epochs
    if len(result.epoch_plans) > 1 + fitted:
        # the lr schedule was planned for fewer epochs and then stretched: say so, since a fresh
        # run of the command would follow one schedule over all the epochs instead
        record["extended_from_epochs"] = result.epoch_plans[0][1]
        record["epoch_plans"] = [list(plan) for plan in result.epoch_plans]
    if protocol == "dynamic":
        record["test_binarization_seed"] = config.data.eval_binarization_seed
    print(json.dumps(record))
    return record


def epochs_per_plan(record: dict) -> list[int]:
    """The epochs a run trained under each epoch total it followed, e.g. [120, 100, 80] for a
    120-epoch run extended to 220 and then to 300 (records from before the plans were kept name
    only the first total)."""
    plans = record.get("epoch_plans") or [[0, record["extended_from_epochs"]], [record["extended_from_epochs"], None]]
    starts = [start for start, _ in plans] + [record["epochs"]]
    return [end - start for start, end in zip(starts, starts[1:])]


def markdown_table(records: list[dict]) -> str:
    lines = ["| protocol | model | test NLL (nats) | bits/dim | likelihood | epochs | train time | device | paper / peer |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(records, key=lambda r: (r["protocol"], r["model"])):
        epochs = str(r["epochs"])
        if "epoch_plans" in r or "extended_from_epochs" in r:  # a run extended with --epochs (see the README)
            epochs += f" ({' + '.join(str(n) for n in epochs_per_plan(r))})"
        if "fitted_from_epochs" in r:
            epochs += f" of {r['fitted_from_epochs']} (fitted to the time budget)"
        bound = "≤ " if r.get("likelihood", "exact") != "exact" else ""  # both cells are the same bound
        lines.append(
            f"| {r['protocol']} | {r['model']} | {bound}{r['nll_nats']:.2f} | {bound}{r['bits_per_dim']:.4f} | {r['likelihood']} | "
            f"{epochs} | {r['train_seconds'] / 60:.0f} min | {r['device']} | {r['anchor']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fvsbn", "nade", "made"])
    parser.add_argument("--protocols", nargs="+", default=["static", "dynamic"], choices=["static", "dynamic"])
    parser.add_argument("--max-seconds", type=float, default=0, help="training-time budget per run (0: none)")
    parser.add_argument("--epochs", type=int, default=0, help="override the configs' epoch count")
    parser.add_argument("--fit-epochs-to-time", action="store_true",
                        help="with --max-seconds: shorten each run's planned epochs to what fits in the budget "
                             "(fit_epochs_to_max_seconds), so that its lr schedule ends instead of being cut off")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--runs", default=str(REPO / "benchmarks" / "runs"), help="folder for the run folders")
    add_results_option(parser, "binarized-mnist.json and .md")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.fit_epochs_to_time and not args.max_seconds:
        parser.error("--fit-epochs-to-time needs --max-seconds")
    for protocol in args.protocols:
        refuse_unknown_models(parser, args.models, config_names(config_folder(protocol)),
                              f"no {protocol} config ({config_path('<model>', protocol).relative_to(REPO)})")
    return args


def main() -> None:
    args = parse_args()
    use_threads(args.threads)
    device = resolve_device(args.device)
    results_json = args.results / "binarized-mnist.json"
    for protocol in args.protocols:
        for model in args.models:
            records = merge_records(results_json, [run_one(model, protocol, args, device)], key=("model", "protocol"))
            (args.results / "binarized-mnist.md").write_text(markdown_table(records) + "\n")
    print(markdown_table(json.loads(results_json.read_text())))


if __name__ == "__main__":
    main()
