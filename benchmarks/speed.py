"""Training throughput and sampling speed of FVSBN, NADE and MADE at the closest peer's published
configurations, against this machine's own float32 matmul rate and against peer-style baselines
(peer_style.py), all measured in the same run.

    python benchmarks/speed.py [--device auto] [--repeats 5]

Writes benchmarks/results/speed-<device type>.json. Figures are medians over --repeats runs; the
matmul rate is read three times (start, next to MADE's step, end) and fractions of peak use the
highest reading.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

import genzoo
import peer_style
from common import RESULTS, command_line, device_description, median_seconds
from genzoo.config import RunConfig
from genzoo.devices import resolve_device, tune_cpu_process
from genzoo.nn import row_blocks_fraction
from genzoo.training import make_optimizer

D = 784
# The closest peer's figures on a 2-thread machine (quoted in the issue, not re-measured here).
PEER = {
    "made": {"train_examples_per_second": 500, "sample16_seconds": 12.0},
    "nade": {"train_examples_per_second": 500, "sample16_seconds": 0.16},
    "fvsbn": {"train_examples_per_second": 1900, "sample16_seconds": 17.0},
}
CONFIGS = {  # the peer's published hyperparameters
    "made": ({"hidden_sizes": [8000]}, 64),
    "nade": ({"hidden_size": 500}, 512),
    "fvsbn": ({}, 512),
}


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = median_seconds(lambda: (a @ b, _sync(device)), repeats)
    return 2 * n**3 / seconds / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def made_step_matmuls_gflops(device: torch.device, hidden: int, batch: int, repeats: int) -> float:
    """GFLOP/s of the five bare matrix products of one MADE training step at its own (skinny)
    shapes — forward x·W₁ᵀ and h·W₂ᵀ, backward the gradients of W₂, h and W₁ — with nothing
    else: the rate a step could reach if masking, ReLU, the loss and Adam cost nothing."""
    x, g_out = torch.randn(batch, D, device=device), torch.randn(batch, D, device=device)
    h, g_h = torch.randn(batch, hidden, device=device), torch.randn(batch, hidden, device=device)
    w1, w2 = torch.randn(hidden, D, device=device), torch.randn(D, hidden, device=device)

    def products():
        x @ w1.t(), h @ w2.t(), g_out.t() @ h, g_out @ w2, g_h.t() @ x
        _sync(device)

    return batch * 5 * 2 * D * hidden / median_seconds(products, repeats) / 1e9


def made_train_flops_per_example(model) -> tuple[float, float]:
    """Floating-point operations of one example's training step, (dense, executed). Each masked
    layer does its forward product, the gradient of its weight and — unless it reads the data —
    the gradient of its input, 2 FLOPs per multiply-add; a one-hidden-layer MADE has five products
    of 2·D·H (forward x·W₁ᵀ and h·W₂ᵀ; the gradients of W₂, of h and of W₁). Dense counts every
    weight; executed counts only the row blocks a layer multiplies (genzoo.nn.masked)."""
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
        executed += products * 2 * shape[0] * shape[1] * fraction
    return dense, executed


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
    x = (torch.rand(batch * steps, D, generator=torch.Generator().manual_seed(0)) < 0.13).float().to(device)
    return model, optimizer, batch, x


def trainer_input_checks(model: torch.nn.Module):
    """As in the trainer, which checks an epoch's values once: steps skip genzoo's per-batch value
    checks (a peer-style model has none)."""
    checked = getattr(model, "input_values_checked_by_caller", None)
    return checked() if checked else contextlib.nullcontext()


def train_throughput(name: str, device: torch.device, repeats: int, steps: int = 8, peer: bool = False,
                     overrides: dict | None = None) -> float:
    """Training examples per second: genzoo's model and optimizer, or the peer-style baseline."""
    model, optimizer, batch, x = training_setup(name, device, steps, peer, overrides)

    def run_steps():
        with trainer_input_checks(model):
            for xb in x.split(batch):
                loss = model.loss(xb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        _sync(device)

    return batch * steps / median_seconds(run_steps, repeats)


def train_step_breakdown_ms(name: str, device: torch.device, repeats: int, steps: int = 8) -> dict[str, float]:
    """Median milliseconds of one training step's parts: the loss (forward), its backward pass and
    the optimizer step — where the time goes beyond the matrix products."""
    model, optimizer, _, x = training_setup(name, device, steps=1)
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for step in range(steps * max(1, repeats) + 2):
        tic = time.perf_counter()
        with trainer_input_checks(model):
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


def sampling_seconds(name: str, device: torch.device, repeats: int, naive: bool, n: int = 16) -> float:
    hyper, _ = CONFIGS[name]
    model = genzoo.build_model(name, (1, 28, 28), **hyper).to(device).eval()
    u = model.draw_uniforms(n, torch.Generator(device=device).manual_seed(0))
    sampler = model.sample_naive if naive else model.sample_from_uniforms
    with torch.no_grad():
        return median_seconds(lambda: (sampler(u), _sync(device)), repeats if not naive else max(1, repeats // 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cpu_settings = tune_cpu_process() if device.type == "cpu" else {}  # as the Trainer does

    # This host's matmul rate drifts by a third within minutes, so the peak is read at the start,
    # next to MADE's step and at the end, and fractions of peak use the highest reading: a slow
    # spell during one reading can make them look worse, never better.
    peak_readings = [matmul_gflops(device, repeats=args.repeats)]
    print(f"device: {device_description(device)}; float32 matmul (2048²): {peak_readings[0]:.1f} GFLOP/s")
    record = {"device": device_description(device), "threads": torch.get_num_threads(), "matmul_gflops": None,
              "glibc_keeps_freed_memory": cpu_settings.get("glibc_keeps_freed_memory", False),
              "command": command_line(), "models": {}}
    for name in ("fvsbn", "nade", "made"):
        hyper, batch = CONFIGS[name]
        rate = train_throughput(name, device, args.repeats)
        peer_rate = train_throughput(name, device, max(1, args.repeats // 2), steps=2, peer=True)
        fast = sampling_seconds(name, device, args.repeats, naive=False)
        naive = sampling_seconds(name, device, args.repeats, naive=True)
        entry = {
            "hyperparameters": hyper,
            "train_batch_size": batch,
            "train_examples_per_second": rate,
            "peer_style_train_examples_per_second": peer_rate,
            "train_speedup_vs_peer_style": rate / peer_rate,
            "sample16_seconds_fast": fast,
            "sample16_seconds_naive": naive,
            "fast_over_naive_sampling": naive / fast,
            "peer_quoted": PEER[name],
            "train_speedup_vs_peer_quoted": rate / PEER[name]["train_examples_per_second"],
            "sampling_speedup_vs_peer_quoted": PEER[name]["sample16_seconds"] / fast,
        }
        line = (f"{name:6s} train {rate:8.0f} examples/s (batch {batch}; {rate / peer_rate:.1f}x the peer-style "
                f"baseline's {peer_rate:.0f}; {entry['train_speedup_vs_peer_quoted']:.1f}x the peer's quoted rate) | "
                f"16 samples: fast {fast:.3f} s, naive {naive:.2f} s ({naive / fast:.0f}x)")
        if name == "made":
            dense_flops, executed_flops = made_train_flops_per_example(
                genzoo.build_model(name, (1, 28, 28), **hyper).to(device))
            dense_rate = train_throughput(name, device, args.repeats, overrides={"row_blocks": 0})
            bare = made_step_matmuls_gflops(device, hyper["hidden_sizes"][0], batch, args.repeats)
            peak_readings.append(matmul_gflops(device, repeats=args.repeats))
            entry.update({
                "train_flops_per_example_dense": dense_flops,
                "train_flops_per_example_executed": executed_flops,
                "train_gflops_executed": rate * executed_flops / 1e9,
                "train_gflops_dense_equivalent": rate * dense_flops / 1e9,
                "dense_products_train_examples_per_second": dense_rate,
                "dense_products_train_gflops": dense_rate * dense_flops / 1e9,
                "row_blocks_speedup": rate / dense_rate,
                "step_matmuls_gflops": bare,
            })
            breakdown = train_step_breakdown_ms(name, device, args.repeats)
            entry["step_breakdown_ms"] = breakdown
            entry["step_matmuls_ms"] = 1e3 * batch * dense_flops / (bare * 1e9)
            line += (f" | row blocks: {executed_flops / dense_flops:.0%} of the dense products, "
                     f"{entry['train_gflops_executed']:.1f} GFLOP/s executed "
                     f"({entry['train_gflops_dense_equivalent']:.1f} dense-equivalent); with dense products "
                     f"{dense_rate:.0f} examples/s, {entry['dense_products_train_gflops']:.1f} GFLOP/s "
                     f"(row blocks {entry['row_blocks_speedup']:.2f}x) | the five dense products alone, batch {batch}: "
                     f"{bare:.1f} GFLOP/s | step: "
                     + ", ".join(f"{part} {ms:.1f} ms" for part, ms in breakdown.items())
                     + f"; the bare dense products {entry['step_matmuls_ms']:.1f} ms")
        print(line)
        record["models"][name] = entry
    peak_readings.append(matmul_gflops(device, repeats=args.repeats))
    record["matmul_gflops_readings"] = peak_readings
    record["matmul_gflops"] = max(peak_readings)
    made = record["models"]["made"]
    peak = record["matmul_gflops"]
    made["fraction_of_matmul_peak"] = made["train_gflops_executed"] / peak
    made["dense_equivalent_fraction_of_matmul_peak"] = made["train_gflops_dense_equivalent"] / peak
    made["dense_products_fraction_of_matmul_peak"] = made["dense_products_train_gflops"] / peak
    made["step_matmuls_fraction_of_matmul_peak"] = made["step_matmuls_gflops"] / peak
    print(f"float32 matmul readings: {', '.join(f'{r:.1f}' for r in peak_readings)} GFLOP/s; against the highest, "
          f"MADE's step executes {made['fraction_of_matmul_peak']:.0%} (dense-equivalent "
          f"{made['dense_equivalent_fraction_of_matmul_peak']:.0%}); with dense products "
          f"{made['dense_products_fraction_of_matmul_peak']:.0%}; the bare dense products "
          f"{made['step_matmuls_fraction_of_matmul_peak']:.0%}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"speed-{device.type}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
