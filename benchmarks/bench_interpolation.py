"""Time per α of the interpolation loop (load a state, evaluate) against the batched
path (torch.func.vmap over stacked weights), side by side in one run, on a
small_resnet with BatchNorm in "follow" mode; prints the largest difference of
their results too.

    python benchmarks/bench_interpolation.py                 # CPU
    python benchmarks/bench_interpolation.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from transferscope.analysis.interpolation import interpolate
from transferscope.models import build_model


def _timed(run, repeats: int):
    run()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--alphas", type=int, default=16, help="number of α in [-0.5, 1.5]")
    parser.add_argument("--chunk", type=int, default=8, help="α per vmapped forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    models = [build_model("small_resnet", 10, width=args.width).to(device).eval() for _ in range(2)]
    x = torch.randn(args.examples, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.examples,), device=device)
    loader = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, args.examples, args.batch_size)]
    alphas = np.linspace(-0.5, 1.5, args.alphas)

    def run(batched: bool):
        return interpolate(*models, loader, alphas=alphas, bn="follow", batched=batched, vmap_chunk=args.chunk)

    loop_time, loop = _timed(lambda: run(False), args.repeats)
    vmap_time, vmapped = _timed(lambda: run(True), args.repeats)
    print(f"device {device}, torch threads {torch.get_num_threads()}, small_resnet width {args.width}, "
          f"{args.examples} examples {args.image_size}x{args.image_size}, {args.alphas} α, vmap chunk {args.chunk}")
    print(f"{'path':<10}{'ms per α':>12}")
    print(f"{'loop':<10}{1000 * loop_time / args.alphas:>12.2f}")
    print(f"{'vmap':<10}{1000 * vmap_time / args.alphas:>12.2f}")
    print(f"speed-up of vmap over loop: {loop_time / vmap_time:.2f}x")
    print(f"max |loss difference| {np.abs(loop['loss'] - vmapped['loss']).max():.2e}, "
          f"max |accuracy difference| {np.abs(loop['score'] - vmapped['score']).max():.2e}")


if __name__ == "__main__":
    main()
