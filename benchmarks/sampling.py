"""Sampling speed of the autoregressive models at 28×28, batch 16: naive (one full network pass per
dimension) vs the model's fast sampler (caches) vs speculative sampling with a cheap draft, all
measured in the same run, with the draft's acceptance rate.

    python benchmarks/sampling.py [--train-seconds 30] [--repeats 3] [--naive-dims 64] [--gamma 4] \
        [--threads N] [--results DIR]

Each model has its config's hyperparameters (configs/<model>.toml). With --train-seconds S > 0,
every target and the draft (an FVSBN, or a small MADE with --draft made) first take S seconds of
Adam steps on binarized-MNIST training minibatches (the trainer's optimizer; no validation), so
the draft agrees with the target often enough for the acceptance rate to mean something; with
S = 0 all weights are the random initialization. Naive sampling costs D identical full passes, so
with --naive-dims k it is timed over the first k dimensions and scaled by D / k (recorded as
``naive_extrapolated_from_dims``); --naive-dims 0 times the whole sampler. Figures are medians
over --repeats runs. Only the autoregressive models (those that draw from uniforms, draw_uniforms)
are accepted. Writes <results>/sampling-<device type>.json and .md (--results defaults to
benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import genzoo
from common import (REPO, add_results_option, add_threads_option, at_least, command_line, default_data_dir,
                    device_description, median_seconds, merge_records, refuse_unknown_models, use_threads)
from genzoo.config import DataConfig, RunConfig, load_run_config
from genzoo.data import make_training_data
from genzoo.devices import resolve_device
from genzoo.models.base import model_info
from genzoo.sampling import speculative_sample
from genzoo.training import make_optimizer

SHAPE = (1, 28, 28)
DRAFTS = {"fvsbn": {}, "made": {"hidden_sizes": [64]}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autoregressive_models() -> list[str]:
    """The registered models this script can time: the chain-rule family, whose samplers draw from
    uniforms (draw_uniforms) and which have a naive sampler to compare with."""
    return [name for name in genzoo.list_models() if model_info(name).family == "autoregressive"]


def config_hyperparameters(name: str) -> dict:
    """The model's hyperparameters in configs/<name>.toml (its defaults where there is none)."""
    path = REPO / "configs" / f"{name}.toml"
    return load_run_config(path).model_hyperparameters if path.is_file() else {}


def train_briefly(model: genzoo.GenerativeModel, train_x: torch.Tensor, seconds: float, batch_size: int = 64) -> int:
    """Adam steps (the trainer's optimizer, its default lr) on random minibatches for ``seconds``;
    returns the number of steps."""
    if seconds <= 0:
        return 0
    optimizer = make_optimizer(model, RunConfig())
    generator = torch.Generator().manual_seed(0)
    model.train()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        index = torch.randint(len(train_x), (batch_size,), generator=generator)
        loss = model.loss(train_x[index].to(model.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval()
    return steps


@torch.no_grad()
def naive_seconds(model, u: torch.Tensor, dims: int) -> float:
    """One naive sample of the batch: the whole ``sample_naive``, or its first ``dims`` passes
    (the same loop as ``BernoulliAutoregressive.sample_naive``) scaled by D / dims."""
    if dims <= 0 or dims >= model.num_dims:
        tic = time.perf_counter()
        model.sample_naive(u)
        _sync(u.device)
        return time.perf_counter() - tic
    x = torch.zeros_like(u)
    tic = time.perf_counter()
    for d in model.generation_order()[:dims].tolist():
        logits = model.conditional_logits(x)[:, d]
        x[:, d] = (u[:, d] < torch.sigmoid(logits)).to(x.dtype)
    _sync(u.device)
    return (time.perf_counter() - tic) * model.num_dims / dims


def measure(name: str, draft, args, device, train_x) -> dict:
    torch.manual_seed(0)
    model = genzoo.build_model(name, SHAPE, **config_hyperparameters(name)).to(device)
    steps = train_briefly(model, train_x, args.train_seconds)
    u = model.draw_uniforms(args.batch, torch.Generator(device=device).manual_seed(0))
    with torch.no_grad():
        fast = median_seconds(lambda: (model.sample_from_uniforms(u), _sync(device)), args.repeats, warmup=0)
    naive_runs = sorted(naive_seconds(model, u, args.naive_dims) for _ in range(args.repeats))
    naive = naive_runs[len(naive_runs) // 2]
    stats = []

    def speculative():
        _, s = speculative_sample(model, draft, args.batch, args.gamma, torch.Generator(device=device).manual_seed(len(stats)))
        _sync(device)
        stats.append(s)

    spec = median_seconds(speculative, args.repeats, warmup=0)
    acceptance = sorted(s.acceptance_rate for s in stats)[len(stats) // 2]
    per_call = sorted(s.dimensions_per_target_call for s in stats)[len(stats) // 2]
    record = {
        "model": name,
        "hyperparameters": config_hyperparameters(name),
        "weights": f"trained {args.train_seconds:g} s ({steps} Adam steps, batch 64)" if steps else "random init",
        "batch": args.batch,
        "naive_samples_per_second": args.batch / naive,
        "fast_samples_per_second": args.batch / fast,
        "speculative_samples_per_second": args.batch / spec,
        "fast_over_naive": naive / fast,
        "speculative_over_naive": naive / spec,
        "speculative_over_fast": fast / spec,
        "acceptance_rate": acceptance,
        "dimensions_per_target_call": per_call,
        "gamma": args.gamma,
        "draft": f"{args.draft} {DRAFTS[args.draft]}".strip(),
        "naive_extrapolated_from_dims": args.naive_dims if 0 < args.naive_dims < model.num_dims else None,
        "repeats": args.repeats,
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "command": command_line(),
    }
    print(json.dumps({k: record[k] for k in ("model", "weights", "naive_samples_per_second", "fast_samples_per_second",
                                             "speculative_samples_per_second", "acceptance_rate")}))
    return record


def markdown_table(records: list[dict]) -> str:
    lines = ["| model | weights | naive samples/s | fast samples/s | speculative samples/s | fast / naive | "
             "spec. / naive | spec. / fast | acceptance (γ) | draft | device, threads |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        naive = f"{r['naive_samples_per_second']:.3g}" + ("*" if r["naive_extrapolated_from_dims"] else "")
        lines.append(
            f"| {r['model']} | {r['weights']} | {naive} | {r['fast_samples_per_second']:.3g} | "
            f"{r['speculative_samples_per_second']:.3g} | {r['fast_over_naive']:.1f}× | {r['speculative_over_naive']:.1f}× | "
            f"{r['speculative_over_fast']:.2f}× | {r['acceptance_rate']:.2f} ({r['gamma']}) | {r['draft']} | "
            f"{r['device']}, {r['threads']} |"
        )
    if any(r["naive_extrapolated_from_dims"] for r in records):
        dims = sorted({r["naive_extrapolated_from_dims"] for r in records if r["naive_extrapolated_from_dims"]})
        lines.append("")
        lines.append(f"\\* naive: the first {'/'.join(map(str, dims))} of 784 full passes timed and scaled by 784 / k "
                     "(every pass costs the same). Batch 16, 28×28, medians of repeats; ratios measured in one run.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_models = [m for m in ("fvsbn", "nade", "made", "transformer", "pixelcnn", "gated-pixelcnn")
                      if m in autoregressive_models()]
    parser.add_argument("--models", nargs="+", default=default_models)
    parser.add_argument("--draft", choices=sorted(DRAFTS), default="fvsbn")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--naive-dims", type=int, default=64, help="time this many naive passes and scale (0: all)")
    parser.add_argument("--train-seconds", type=float, default=30.0, help="brief training of each model and the draft (0: random init)")
    add_threads_option(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=default_data_dir())
    add_results_option(parser, "sampling-<device type>.json and .md")
    args = parser.parse_args(argv)
    refuse_unknown_models(parser, args.models, autoregressive_models(),
                          "not an autoregressive model (no draw_uniforms to sample from)")
    return args


def main() -> None:
    args = parse_args()
    use_threads(args.threads)
    device = resolve_device(args.device)
    train_x = None
    if args.train_seconds > 0:
        data = make_training_data(DataConfig(name="binarized-mnist"), args.data_dir)
        train_x = data.train_source.reshape(len(data.train_source), -1)
    torch.manual_seed(0)
    draft = genzoo.build_model(args.draft, SHAPE, **DRAFTS[args.draft]).to(device)
    draft_steps = train_briefly(draft, train_x, args.train_seconds)
    draft.eval()
    print(f"device: {device_description(device)}; draft {args.draft}: {draft_steps} training steps")
    records = [measure(name, draft, args, device, train_x) for name in args.models]
    out = args.results / f"sampling-{device.type}.json"
    merged = merge_records(out, records, key=("model",))
    out.with_suffix(".md").write_text(markdown_table(merged) + "\n")
    print(markdown_table(records))
    print(f"written to {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
