"""Training throughput and sampling speed of FVSBN, NADE and MADE at the closest peer's published
configurations, against this machine's own float32 matmul rate and against peer-style baselines
(peer_style.py), all measured in the same run.

    python benchmarks/speed.py [--device auto] [--repeats 5] [--name STEM] [--results DIR]

Writes <results>/<name>.json and .md (the README's table); --results defaults to benchmarks/results
and --name to speed-<device type>, so a run on another host can be kept under its own name
(e.g. --name speed-cpu-middle-host). Whatever is compared (a model against its peer-style
baseline; MADE's step against its dense-product variant, its bare products and the 2048² matmul;
a model's fast sampler against its naive one) is timed interleaved: each of --repeats rounds runs
every contender once, a rate or time is the median over rounds, and a ratio is the median of the
ratios taken within each round, so that a slow spell of a shared host moves both sides alike.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import genzoo
import peer_style
from common import (add_results_option, at_least, command_line, device_description, interleaved_seconds,
                    median_ratio, median_seconds)
from genzoo.config import RunConfig
from genzoo.devices import resolve_device, tune_cpu_process
from genzoo.nn import row_blocks_fraction
from genzoo.nn.masked import sums_ones
from genzoo.training import make_optimizer

D = 784
# The closest peer's figures on a 2-thread machine (quoted in the issue, not re-measured here).
PEER = {
    "made": {"train_examples_per_second": 500, "sample16_seconds": 12.0},
    "nade": {"train_examples_per_second": 500, "sample16_seconds": 0.16},
    "fvsbn": {"train_examples_per_second": 1900, "sample16_seconds": 17.0},
}
#: the same model multiplying in the layers that read x, where genzoo sums over its ones instead
WITHOUT_SUMS = {"fvsbn": {"binary_input_sums": False}, "made": {"binary_input_sums": False}}
#: training steps in one timed call of genzoo's model (benchmark_batches gives them their data)
TIMED_STEPS = 8
CONFIGS = {  # the peer's published hyperparameters
    "made": ({"hidden_sizes": [8000]}, 64),
    "nade": ({"hidden_size": 500}, 512),
    "fvsbn": ({}, 512),
}


def matmul_call(device: torch.device, n: int = 2048) -> tuple[Callable[[], None], float]:
    """One n × n float32 matrix product, the machine's reference rate; (call, FLOPs per call)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def product():
        a @ b
        _sync(device)

    return product, 2.0 * n**3


def memory_stream_call(device: torch.device, floats: int = 1 << 26) -> tuple[Callable[[], None], float]:
    """An in-place add over 256 MB (each float read and written once, as Adam updates its tensors
    in place), the machine's reference for memory-bound work; (call, bytes moved per call). A copy
    to a second buffer is no reference here: on the CPU it ran at about half this rate."""
    buffer = torch.rand(floats, device=device)

    def stream():
        buffer.add_(1.0)
        _sync(device)

    return stream, 2.0 * 4 * floats


#: bytes a fused Adam step moves per float32 parameter: reads the parameter, its gradient and two
#: moments, writes the parameter and the moments
ADAM_BYTES_PER_PARAMETER = 7 * 4


def matmul_gflops(device: torch.device, repeats: int = 5) -> float:
    product, flops = matmul_call(device)
    return flops / median_seconds(product, repeats) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def made_step_matmuls_call(device: torch.device, hidden: int, batch: int) -> tuple[Callable[[], None], float]:
    """The five bare dense matrix products of one MADE training step at its own (skinny) shapes —
    forward x·W₁ᵀ and h·W₂ᵀ, backward the gradients of W₂, h and W₁ — with nothing else: the rate
    a dense step could reach if masking, ReLU, the loss and Adam cost nothing; (call, FLOPs per call)."""
    x, g_out = torch.randn(batch, D, device=device), torch.randn(batch, D, device=device)
    h, g_h = torch.randn(batch, hidden, device=device), torch.randn(batch, hidden, device=device)
    w1, w2 = torch.randn(hidden, D, device=device), torch.randn(D, hidden, device=device)

    def products():
        x @ w1.t(), h @ w2.t(), g_out.t() @ h, g_out @ w2, g_h.t() @ x
        _sync(device)

    return products, batch * 5 * 2.0 * D * hidden


def made_train_flops_per_example(model, x: torch.Tensor | None = None) -> tuple[float, float]:
    """Floating-point operations of one example's training step, (dense, executed). Each masked
    layer does its forward product, the gradient of its weight and — unless it reads the data —
    the gradient of its input, 2 FLOPs per multiply-add; a one-hidden-layer MADE has five products
    of 2·D·H (forward x·W₁ᵀ and h·W₂ᵀ; the gradients of W₂, of h and of W₁). Dense counts every
    weight; executed counts only the row blocks a layer multiplies (genzoo.nn.masked), and for a
    layer that sums weight columns over the ones of the training data ``x`` (``binary_input``),
    one FLOP per addition: in the forward pass and again in the weight gradient, each one of x
    adds a stored row of every block that uses its column. Without ``x`` such a layer counts as
    the products it would otherwise take."""
    layers = [(layer, i == 0) for i, layer in enumerate(model.layers)]
    if model.direct is not None:
        layers.append((model.direct, True))
    dense = executed = 0.0
    for layer, reads_data in layers:
        shape = tuple(layer.weight.shape)
        blocks = layer.active_row_blocks()
        fraction = 1.0 if blocks is None else row_blocks_fraction(blocks, shape)
        products = 2 if reads_data else 3
        dense += products * 2 * shape[0] * shape[1]
        if blocks is not None and reads_data and getattr(layer, "binary_input", False) and x is not None \
                and sums_ones(x):
            rows_using_column = torch.zeros(shape[1], dtype=torch.float64)
            for block in blocks:
                rows_using_column[:block.used] += block.end - block.start
            executed += 2 * float((x.double().cpu() @ rows_using_column).mean())
        else:
            executed += products * 2 * shape[0] * shape[1] * fraction
    return dense, executed


def benchmark_batches(batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """``steps`` batches of binary data with 13% ones, about binarized MNIST's share."""
    return (torch.rand(batch * steps, D, generator=torch.Generator().manual_seed(0)) < 0.13).float().to(device)


def training_setup(name: str, device: torch.device, steps: int, peer: bool = False, overrides: dict | None = None):
    """The model, its optimizer, the batch size and ``steps`` batches of binary data for timing
    training at the peer's configuration: genzoo's model and optimizer, or the peer-style baseline."""
    hyper, batch = CONFIGS[name]
    if peer:
        model, optimizer = peer_style.build(name, D, hyper)
        model = model.to(device)
    else:
        model = genzoo.build_model(name, (1, 28, 28), **hyper, **(overrides or {})).to(device)
        optimizer = make_optimizer(model, RunConfig())  # the trainer's own optimizer
    return model, optimizer, batch, benchmark_batches(batch, steps, device)


def trainer_step_context(model: torch.nn.Module) -> contextlib.ExitStack:
    """What the trainer's steps run under: no per-batch value checks (the trainer checks an epoch's
    values once) and the model's thread plan (a peer-style model has neither)."""
    stack = contextlib.ExitStack()
    for name in ("input_values_checked_by_caller", "compute_threads"):
        if hasattr(model, name):
            stack.enter_context(getattr(model, name)())
    return stack


def training_steps_call(name: str, device: torch.device, steps: int = TIMED_STEPS, peer: bool = False,
                        overrides: dict | None = None) -> tuple[Callable[[], None], float]:
    """``steps`` training steps of genzoo's model and optimizer, or of the peer-style baseline;
    (call, examples per call)."""
    model, optimizer, batch, x = training_setup(name, device, steps, peer, overrides)

    def run_steps():
        with trainer_step_context(model):
            for xb in x.split(batch):
                loss = model.loss(xb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        _sync(device)

    return run_steps, float(batch * steps)


def interleaved_rates(contenders: dict[str, tuple[Callable[[], None], float]], rounds: int) -> dict[str, list[float]]:
    """Work per second of each contender in each round (examples, FLOPs or bytes, as its call counts)."""
    seconds = interleaved_seconds({name: call for name, (call, _) in contenders.items()}, rounds)
    return {name: [work / t for t in seconds[name]] for name, (_, work) in contenders.items()}


def train_step_breakdown_ms(name: str, device: torch.device, repeats: int, steps: int = 8) -> dict[str, float]:
    """Median milliseconds of one training step's parts: the loss (forward), its backward pass and
    the optimizer step — where the time goes beyond the matrix products."""
    model, optimizer, _, x = training_setup(name, device, steps=1)
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    with trainer_step_context(model):
        for step in range(steps * max(1, repeats) + 2):
            tic = time.perf_counter()
            loss = model.loss(x)
            _sync(device)
            forward_done = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _sync(device)
            backward_done = time.perf_counter()
            optimizer.step()
            _sync(device)
            if step >= 2:  # the first steps allocate the optimizer's state
                parts["forward"].append(forward_done - tic)
                parts["backward"].append(backward_done - forward_done)
                parts["optimizer"].append(time.perf_counter() - backward_done)
    return {part: 1e3 * statistics.median(seconds) for part, seconds in parts.items()}


def sampling_calls(name: str, device: torch.device, n: int = 16) -> dict[str, Callable[[], None]]:
    """Drawing ``n`` samples from the same uniforms with the model's fast sampler and with its
    naive one (a full pass of the network per dimension), to be timed in the same rounds."""
    hyper, _ = CONFIGS[name]
    model = genzoo.build_model(name, (1, 28, 28), **hyper).to(device).eval()
    u = model.draw_uniforms(n, torch.Generator(device=device).manual_seed(0))

    def timed(sampler: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def draw():
            with torch.no_grad():
                sampler(u)
            _sync(device)
        return draw

    return {"fast": timed(model.sample_from_uniforms), "naive": timed(model.sample_naive)}


def made_comparison(device: torch.device, hyper: dict, batch: int, rounds: int,
                    genzoo_steps: tuple[Callable[[], None], float],
                    peer_steps: tuple[Callable[[], None], float]) -> dict:
    """MADE's step against its dense-product variant, its variant without sums of columns (row
    blocks only), its bare dense products and the 2048² matmul,
    all interleaved with the peer-style baseline: rates, and fractions of the matmul rate taken
    within each round."""
    dense_flops, executed_flops = made_train_flops_per_example(
        genzoo.build_model("made", (1, 28, 28), **hyper).to(device), benchmark_batches(batch, TIMED_STEPS, device))
    rates = interleaved_rates({
        "genzoo": genzoo_steps,
        "peer-style": peer_steps,
        "dense products": training_steps_call("made", device, overrides={"row_blocks": 0}),
        "without sums": training_steps_call("made", device, overrides=WITHOUT_SUMS["made"]),
        "bare products": made_step_matmuls_call(device, hyper["hidden_sizes"][0], batch),
        "matmul": matmul_call(device),
        "memory stream": memory_stream_call(device),
    }, rounds)
    matmul = rates["matmul"]
    executed = [r * executed_flops for r in rates["genzoo"]]
    dense_equivalent = [r * dense_flops for r in rates["genzoo"]]
    dense_products = [r * dense_flops for r in rates["dense products"]]
    bare = rates["bare products"]
    median = statistics.median
    return {
        "rates": rates,
        "train_flops_per_example_dense": dense_flops,
        "train_flops_per_example_executed": executed_flops,
        "train_gflops_executed": median(executed) / 1e9,
        "train_gflops_dense_equivalent": median(dense_equivalent) / 1e9,
        "dense_products_train_examples_per_second": median(rates["dense products"]),
        "dense_products_train_gflops": median(dense_products) / 1e9,
        "row_blocks_speedup": median_ratio(rates["genzoo"], rates["dense products"]),
        "step_matmuls_gflops": median(bare) / 1e9,
        "step_matmuls_ms": 1e3 * batch * dense_flops / median(bare),
        "matmul_gflops_interleaved": median(matmul) / 1e9,
        "fraction_of_matmul_peak": median_ratio(executed, matmul),
        "dense_equivalent_fraction_of_matmul_peak": median_ratio(dense_equivalent, matmul),
        "dense_products_fraction_of_matmul_peak": median_ratio(dense_products, matmul),
        "step_matmuls_fraction_of_matmul_peak": median_ratio(bare, matmul),
        "memory_stream_gbps_interleaved": median(rates["memory stream"]) / 1e9,
    }


LABELS = {"fvsbn": "FVSBN, batch 512", "nade": "NADE H=500, batch 512", "made": "MADE 784-8000-784, batch 64"}


def markdown_table(record: dict) -> str:
    """The README's table of one run: training rates, sampling times and their ratios."""
    lines = ["| model (peer's config) | train examples/s | × peer-style baseline, same run | × peer's quoted rate | "
             "16 samples, fast | 16 samples, naive | fast vs naive | × peer's quoted sampling |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in record["models"].items():
        lines.append(
            f"| {LABELS.get(name, name)} | {e['train_examples_per_second']:,.0f} | {e['train_speedup_vs_peer_style']:.3g}× "
            f"({e['peer_style_train_examples_per_second']:,.0f}) | {e['train_speedup_vs_peer_quoted']:.3g}× | "
            f"{e['sample16_seconds_fast']:.3g} s | {e['sample16_seconds_naive']:.2f} s | "
            f"{e['fast_over_naive_sampling']:.0f}× | {e['sampling_speedup_vs_peer_quoted']:.0f}× |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=at_least(1), default=5,
                        help="interleaved rounds of each comparison (1 or 2 only for a smoke run: a figure wants 5 or more)")
    parser.add_argument("--name", help="the records' file stem (default: speed-<device type>)")
    add_results_option(parser, "<name>.json and .md")
    args = parser.parse_args(argv)
    if args.name is not None and (not args.name or Path(args.name).name != args.name):
        parser.error(f"--name is a file stem inside --results, got {args.name!r}")
    return args


def record_paths(args: argparse.Namespace, device: torch.device) -> tuple[Path, Path]:
    """Where the run's record and its markdown table go: <results>/<name>.json and .md."""
    stem = args.name or f"speed-{device.type}"
    return args.results / f"{stem}.json", args.results / f"{stem}.md"


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cpu_settings = tune_cpu_process() if device.type == "cpu" else {}  # as the Trainer does

    peak_readings = [matmul_gflops(device, repeats=args.repeats)]
    print(f"device: {device_description(device)}; float32 matmul (2048²): {peak_readings[0]:.1f} GFLOP/s")
    record = {"device": device_description(device), "threads": torch.get_num_threads(), "matmul_gflops": None,
              "glibc_keeps_freed_memory": cpu_settings.get("glibc_keeps_freed_memory", False),
              "timing": "interleaved rounds (training, and fast against naive sampling); rates and times are "
                        "medians over rounds, ratios medians of per-round ratios",
              "rounds": args.repeats, "command": command_line(), "models": {}}
    for name in ("fvsbn", "nade", "made"):
        hyper, batch = CONFIGS[name]
        genzoo_steps = training_steps_call(name, device)
        peer_steps = training_steps_call(name, device, steps=2, peer=True)
        if name == "made":
            made = made_comparison(device, hyper, batch, args.repeats, genzoo_steps, peer_steps)
            rates = made.pop("rates")
        else:
            contenders = {"genzoo": genzoo_steps, "peer-style": peer_steps}
            if name in WITHOUT_SUMS:
                contenders["without sums"] = training_steps_call(name, device, overrides=WITHOUT_SUMS[name])
            rates = interleaved_rates(contenders, args.repeats)
        rate, peer_rate = statistics.median(rates["genzoo"]), statistics.median(rates["peer-style"])
        sampling = interleaved_seconds(sampling_calls(name, device), args.repeats)
        fast, naive = statistics.median(sampling["fast"]), statistics.median(sampling["naive"])
        entry = {
            "hyperparameters": hyper,
            "train_batch_size": batch,
            "train_examples_per_second": rate,
            "peer_style_train_examples_per_second": peer_rate,
            "train_speedup_vs_peer_style": median_ratio(rates["genzoo"], rates["peer-style"]),
            "sample16_seconds_fast": fast,
            "sample16_seconds_naive": naive,
            "fast_over_naive_sampling": median_ratio(sampling["naive"], sampling["fast"]),
            "peer_quoted": PEER[name],
            "train_speedup_vs_peer_quoted": rate / PEER[name]["train_examples_per_second"],
            "sampling_speedup_vs_peer_quoted": PEER[name]["sample16_seconds"] / fast,
        }
        line = (f"{name:6s} train {rate:8.0f} examples/s (batch {batch}; {entry['train_speedup_vs_peer_style']:.1f}x "
                f"the peer-style baseline's {peer_rate:.0f}; {entry['train_speedup_vs_peer_quoted']:.1f}x the peer's "
                f"quoted rate) | 16 samples: fast {fast:.3f} s, naive {naive:.2f} s "
                f"({entry['fast_over_naive_sampling']:.0f}x)")
        if "without sums" in rates:
            entry["without_sums_train_examples_per_second"] = statistics.median(rates["without sums"])
            entry["binary_input_sums_speedup"] = median_ratio(rates["genzoo"], rates["without sums"])
            line += (f" | multiplying in the layers that read x instead of summing over its ones: "
                     f"{entry['without_sums_train_examples_per_second']:.0f} examples/s (sums "
                     f"{entry['binary_input_sums_speedup']:.2f}x)")
        if name == "made":
            entry.update(made)
            entry["step_breakdown_ms"] = train_step_breakdown_ms(name, device, args.repeats)
            parameters = sum(p.numel() for p in genzoo.build_model("made", (1, 28, 28), **hyper).parameters())
            entry["optimizer_gbps"] = (ADAM_BYTES_PER_PARAMETER * parameters
                                       / (entry["step_breakdown_ms"]["optimizer"] / 1e3) / 1e9)
            line += (f" | executed: {made['train_flops_per_example_executed'] / made['train_flops_per_example_dense']:.0%}"
                     f" of the dense products' FLOPs (row blocks, and sums over the ones of x), "
                     f"{made['train_gflops_executed']:.1f} GFLOP/s executed "
                     f"({made['train_gflops_dense_equivalent']:.1f} dense-equivalent); with dense products "
                     f"{made['dense_products_train_examples_per_second']:.0f} examples/s, "
                     f"{made['dense_products_train_gflops']:.1f} GFLOP/s (row blocks and sums "
                     f"{made['row_blocks_speedup']:.2f}x) | "
                     f"the five dense products alone, batch {batch}: {made['step_matmuls_gflops']:.1f} GFLOP/s, "
                     f"{made['step_matmuls_ms']:.1f} ms a step | step: "
                     + ", ".join(f"{part} {ms:.1f} ms" for part, ms in entry["step_breakdown_ms"].items())
                     + f" | Adam moves {entry['optimizer_gbps']:.0f} GB/s, an in-place add over 256 MB "
                       f"{made['memory_stream_gbps_interleaved']:.0f} GB/s")
        print(line)
        record["models"][name] = entry
    peak_readings.append(matmul_gflops(device, repeats=args.repeats))
    made = record["models"]["made"]
    record["matmul_gflops_readings"] = [peak_readings[0], made["matmul_gflops_interleaved"], peak_readings[1]]
    record["matmul_gflops"] = made["matmul_gflops_interleaved"]
    print(f"float32 matmul: {peak_readings[0]:.1f} GFLOP/s at the start, {made['matmul_gflops_interleaved']:.1f} "
          f"interleaved with MADE's step, {peak_readings[1]:.1f} at the end. Within each round, MADE's step executes "
          f"{made['fraction_of_matmul_peak']:.0%} of the matmul rate (dense-equivalent "
          f"{made['dense_equivalent_fraction_of_matmul_peak']:.0%}); with dense products "
          f"{made['dense_products_fraction_of_matmul_peak']:.0%}; the bare dense products "
          f"{made['step_matmuls_fraction_of_matmul_peak']:.0%} (medians over {args.repeats} rounds)")
    out_json, out_md = record_paths(args, device)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    out_md.write_text(markdown_table(record) + "\n")
    print(f"written to {out_json} and {out_md}")


if __name__ == "__main__":
    main()
