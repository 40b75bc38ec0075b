"""Module criticality: the naive full grid (a full forward pass at every grid point
and noise draw) against the fast path (activation cache + the grid's points in
ascending order of measure up to the first feasible one, each stopped as soon as its
losses, chunk by chunk of its examples, prove it infeasible; exact on every input),
on the same model, data and
settings, side by side in one run (in a process that keeps freed memory for reuse, as
a study's jobs do, :mod:`transferscope.allocator`; ``--default-allocator``: not): after a warm-up pass, the two alternate (grid
first for the first module, fast first for the next, ...), so that a shared machine's
load falls on both alike.

A width-16 small ResNet is trained for a few epochs on a few hundred learnable
random images (class templates plus noise); criticality of each requested module is
measured from the epoch-0 weights to the trained ones on a fixed evaluation subset.

    .venv/bin/python benchmarks/bench_criticality.py            # defaults below (issue 14's setting)
    .venv/bin/python benchmarks/bench_criticality.py --grid 11 --samples 10

Columns: wall times (summed over ``--repeats``) and their ratio, μ from each path,
the (α, σ) grid indices of the minimiser, the grid points, complete noise draws and
forward passes of a batch or chunk (set-up included) of the fast path against the grid's, and the α
rows of the full grid where feasibility is not monotone in σ (where bisection over σ,
the earlier fast path, could miss the minimiser); the run fails if the two paths
disagree on μ or its minimiser.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from transferscope.allocator import reuse_freed_memory
from transferscope.analysis.module_criticality import criticality, criticality_value
from transferscope.evaluation import loss_fn
from transferscope.models import build_model


def learnable_images(n: int, classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images = a fixed random template per class + Gaussian noise of std 3 (templates
    from seed 0): learnable, but not to zero test loss in two epochs."""
    templates = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=generator)
    return templates[y] + 3.0 * torch.randn(n, 3, size, size, generator=generator), y


def batches_of(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def train(model: torch.nn.Module, batches, epochs: int) -> torch.nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    return model.eval()


def non_monotone_rows(grid) -> int:
    """α rows of a full grid whose feasible σ are not a prefix of the σ grid."""
    return sum(bool((np.diff(rows.sort_values("sigma")["feasible"].to_numpy(int)) > 0).any())
               for _, rows in grid.groupby("alpha"))


def grid_index(values: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(values - value))) if np.isfinite(value) else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-examples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--examples", type=int, default=512, help="evaluation examples")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--grid", type=int, default=7, help="points of the alpha and sigma grids")
    parser.add_argument("--sigma-max", type=float, default=0.1, help="sigma grid: grid points in (0, sigma-max]")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--modules", nargs="+", default=["layer1", "layer4"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings stable on a shared CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each path per module, alternating")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc thresholds as they are (not as a study's jobs set them): some "
                             "batches' memory is then mapped afresh at each call, by a threshold that depends on the "
                             "history of the process, and times move by 10-25%% between runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.default_allocator:
        reuse_freed_memory()  # as a study's job process does

    torch.manual_seed(0)
    initial = build_model("small_resnet", args.classes, width=args.width).eval()
    x_train, y_train = learnable_images(args.train_examples, args.classes, args.image_size, seed=1)
    final = train(copy.deepcopy(initial), batches_of(x_train, y_train, 32), args.epochs)
    evaluation = batches_of(*learnable_images(args.examples, args.classes, args.image_size, seed=2), args.batch_size)

    alphas = np.arange(1, args.grid + 1) / args.grid
    sigmas = args.sigma_max * np.arange(1, args.grid + 1) / args.grid
    settings = dict(alphas=alphas, sigmas=sigmas, samples=args.samples, noise="frobenius", threshold=1.01)
    print(f"small_resnet width {args.width}, {args.image_size}x{args.image_size} images, {args.examples} evaluation "
          f"examples, {args.grid}x{args.grid} grid (sigma in (0, {args.sigma_max}]), {args.samples} samples, "
          f"{torch.get_num_threads()} thread(s), "
          f"{'default malloc' if args.default_allocator else 'freed memory reused (as in a study job)'}")
    passes: list[int] = []
    final.fc.register_forward_hook(lambda *_: passes.append(1))  # one call per batch forward pass, full or suffix
    with torch.no_grad():
        for x, _ in evaluation:  # warm-up: the first pass of each shape pays one-time set-up costs
            final(x)
    print(f"{'module':8} {'naive s':>9} {'fast s':>8} {'ratio':>6} {'naive mu':>12} {'fast mu':>12} "
          f"{'naive (a,s)':>12} {'fast (a,s)':>11} {'points':>7} {'draws':>9} {'passes':>9} {'non-monotone rows':>17}")
    totals = {"grid": 0.0, "fast": 0.0}
    runs = 0
    for module in args.modules:
        times, frames, counts = {"grid": 0.0, "fast": 0.0}, {}, {}
        for _ in range(args.repeats):
            for method in ("grid", "fast") if runs % 2 == 0 else ("fast", "grid"):
                passes.clear()
                start = time.perf_counter()
                frames[method] = criticality(final, initial, evaluation, modules=[module], method=method,
                                             cache_prefix=method == "fast", **settings)
                times[method] += time.perf_counter() - start
                counts[method] = len(passes)
            runs += 1
        totals = {method: totals[method] + times[method] for method in totals}
        grid, fast = frames["grid"], frames["fast"]
        values = [criticality_value(frame) for frame in (grid, fast)]
        points = []
        for frame in (grid, fast):
            best = frame[frame["feasible"]]
            best = best.loc[best["measure"].idxmin()] if len(best) else None
            points.append("none" if best is None else
                          f"({grid_index(alphas, best['alpha'])},{grid_index(sigmas, best['sigma'])})")
        print(f"{module:8} {times['grid']:9.1f} {times['fast']:8.1f} {times['grid'] / times['fast']:6.1f} "
              f"{values[0]:12.5g} {values[1]:12.5g} {points[0]:>12} {points[1]:>11} {len(fast):3d}/{len(grid)} "
              f"{fast['n_samples'].sum():4d}/{grid['n_samples'].sum()} {counts['fast']:4d}/{counts['grid']} "
              f"{non_monotone_rows(grid):>8d}/{args.grid}")
        if values[0] != values[1] or points[0] != points[1]:
            raise SystemExit(f"{module}: the fast path's mu or minimiser differs from the grid's")
    print(f"total: naive {totals['grid']:.1f} s, fast {totals['fast']:.1f} s, "
          f"speed-up {totals['grid'] / totals['fast']:.2f}x")


if __name__ == "__main__":
    main()
