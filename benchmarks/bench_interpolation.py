"""Time per α of interpolate() against the loops it replaces, side by side in one run (the
contenders alternate within every repeat), with the largest difference of their results:

- bn="recalibrate" (ResNet-18, 32 px, 512 examples, 11 α by default): interpolate() against
  a hand loop that writes Θ(α) into one copy of the model in place, recalibrates its
  BatchNorm statistics on the same batches (evaluation.recalibrate_batchnorm) and evaluates it;
- bn="follow" (small_resnet): the per-α loop against the batched path (torch.func.vmap over
  stacked weights).

    python benchmarks/bench_interpolation.py                 # CPU (about a minute on 2 cores)
    python benchmarks/bench_interpolation.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferscope.analysis.interpolation import interpolate
from transferscope.evaluation import recalibrate_batchnorm
from transferscope.models import build_model

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet18", help="model of the bn='recalibrate' comparison")
    parser.add_argument("--recalibrate-alphas", type=int, default=11, help="number of α in [0, 1] (recalibrate)")
    parser.add_argument("--width", type=int, default=8, help="small_resnet width of the vmap comparison")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=512, help="evaluation examples (as many recalibrate)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--alphas", type=int, default=16, help="number of α in [-0.5, 1.5] (vmap comparison)")
    parser.add_argument("--chunk", type=int, default=8, help="α per vmapped forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def alternate(contenders: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds per run of every contender, alternating within each repeat after one
    warm-up run each, and each one's last result."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results = {name: run() for name, run in contenders.items()}
    for _ in range(repeats):
        for name, run in contenders.items():
            _synchronize()
            start = time.perf_counter()
            results[name] = run()
            _synchronize()
            times[name].append(time.perf_counter() - start)
    return times, results


@torch.no_grad()
def hand_loop(model_a: nn.Module, model_b: nn.Module, batches: Batches, recalibration: Batches,
              alphas: np.ndarray) -> np.ndarray:
    """The loop a user would write: Θ(α) lerped into one copy in place (integer buffers from
    model_a), BatchNorm recalibrated on the same batches, then evaluated. Returns the losses."""
    model = copy.deepcopy(model_a)
    state_a, state_b, targets = model_a.state_dict(), model_b.state_dict(), model.state_dict()
    labels = torch.cat([y for _, y in batches])
    losses = []
    for alpha in alphas:
        for key, target in targets.items():
            if target.is_floating_point():
                torch.lerp(state_a[key], state_b[key], float(alpha), out=target)
            else:
                target.copy_(state_a[key])
        recalibrate_batchnorm(model, recalibration)
        model.eval()
        logits = torch.cat([model(x).float().cpu() for x, _ in batches])
        losses.append(float(F.cross_entropy(logits, labels.cpu())))
    return np.array(losses)


def random_batches(args: argparse.Namespace, device: torch.device, seed: int) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(args.examples, 3, args.image_size, args.image_size, generator=generator).to(device)
    y = torch.randint(0, 10, (args.examples,), generator=generator).to(device)
    return [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, args.examples, args.batch_size)]


def per_alpha_line(name: str, seconds: list[float], count: int) -> str:
    return f"{name:<14}{1000 * min(seconds) / count:>12.1f}{1000 * np.median(seconds) / count:>14.1f}"


def bench_recalibrate(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    models = [build_model(args.arch, 10).to(device) for _ in range(2)]
    batches, recalibration = random_batches(args, device, 1), random_batches(args, device, 2)
    alphas = np.linspace(0, 1, args.recalibrate_alphas)
    times, results = alternate({
        "interpolate": lambda: interpolate(*models, batches, alphas=alphas, bn="recalibrate",
                                           recalibration_loader=recalibration)["loss"].to_numpy(),
        "hand loop": lambda: hand_loop(*models, batches, recalibration, alphas)}, args.repeats)
    print(f"\n== bn='recalibrate': {args.arch}, {args.examples} examples {args.image_size}x{args.image_size} "
          f"(as many to recalibrate on), batch {args.batch_size}, {len(alphas)} α")
    print(f"{'path':<14}{'min ms/α':>12}{'median ms/α':>14}")
    for name, seconds in times.items():
        print(per_alpha_line(name, seconds, len(alphas)))
    ratio = min(times["interpolate"]) / min(times["hand loop"])
    median_ratio = np.median(times["interpolate"]) / np.median(times["hand loop"])
    print(f"interpolate / hand loop: {ratio:.3f}x (min), {median_ratio:.3f}x (median); "
          f"max |loss difference| {np.abs(results['interpolate'] - results['hand loop']).max():.2e}")


def bench_vmap(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    models = [build_model("small_resnet", 10, width=args.width).to(device).eval() for _ in range(2)]
    batches = random_batches(args, device, 3)
    alphas = np.linspace(-0.5, 1.5, args.alphas)

    def run(batched: bool):
        return interpolate(*models, batches, alphas=alphas, bn="follow", batched=batched, vmap_chunk=args.chunk)

    times, results = alternate({"loop": lambda: run(False), "vmap": lambda: run(True)}, args.repeats)
    print(f"\n== bn='follow': small_resnet width {args.width}, {args.examples} examples "
          f"{args.image_size}x{args.image_size}, {args.alphas} α, vmap chunk {args.chunk}")
    print(f"{'path':<14}{'min ms/α':>12}{'median ms/α':>14}")
    for name, seconds in times.items():
        print(per_alpha_line(name, seconds, len(alphas)))
    loop, vmapped = results["loop"], results["vmap"]
    print(f"speed-up of vmap over loop: {min(times['loop']) / min(times['vmap']):.2f}x; "
          f"max |loss difference| {np.abs(loop['loss'] - vmapped['loss']).max():.2e}, "
          f"max |accuracy difference| {np.abs(loop['score'] - vmapped['score']).max():.2e}")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    bench_recalibrate(args, device)
    bench_vmap(args, device)


if __name__ == "__main__":
    main()
