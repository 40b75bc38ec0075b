"""Images/s of BlockShuffle (one gather over the whole batch) against a per-image
unfold -> permute blocks -> fold implementation of the SAME permutation, side by side
in one run; both outputs are checked equal before timing.

    .venv/bin/python benchmarks/bench_shuffle.py [--threads 2] [--repeats 5] [--device cpu]

Timings on a shared machine are perturbed by other processes: compare the ratios of
one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch.nn import functional as F

from transferscope.data.shuffle import BlockShuffle

SETTINGS = [  # (batch, channels, size, block sizes)
    (512, 3, 32, [1, 2, 4, 8, 16, "*"]),
    (64, 3, 224, [1, 4, 7, 16, 56, 112, "*"]),
]


def block_order(shuffle: BlockShuffle, channels: int, height: int, width: int) -> torch.Tensor:
    """For each output block (row-major, unfold's order), the input block it shows: read
    from the top-left pixel of each output block in the object's gather index."""
    b = shuffle.block_size
    index = shuffle.index(channels, height, width)
    top_left = index.view(height, width)[::b, ::b].reshape(-1)
    return (top_left // width // b) * (width // b) + (top_left % width) // b


def per_image_unfold(images: torch.Tensor, shuffle: BlockShuffle) -> torch.Tensor:
    """The textbook implementation: one image at a time; unfold to blocks, permute the
    block axis, fold back (or, for "*", index the flattened image)."""
    n, c, h, w = images.shape
    out = torch.empty_like(images)
    if shuffle.block_size == "*":
        index = shuffle.index(c, h, w).to(images.device)
        for i in range(n):
            out[i] = images[i].reshape(-1)[index].view(c, h, w)
        return out
    b = shuffle.block_size
    order = block_order(shuffle, c, h, w).to(images.device)
    for i in range(n):
        blocks = F.unfold(images[i:i + 1], kernel_size=b, stride=b)  # (1, C*b*b, blocks)
        out[i] = F.fold(blocks[:, :, order], (h, w), kernel_size=b, stride=b)[0]
    return out


def seconds(function, repeats: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting; the median is reported")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}; other processes on the machine "
          "perturb timings, so read the ratios of this run")
    print(f"{'batch':>18} {'block':>6} {'gather img/s':>14} {'unfold img/s':>14} {'ratio':>8}")
    for n, c, size, block_sizes in SETTINGS:
        images = torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        for block_size in block_sizes:
            shuffle = BlockShuffle(block_size, seed=1)
            if not torch.equal(shuffle(images), per_image_unfold(images, shuffle)):
                raise AssertionError(f"outputs differ for block size {block_size} on {tuple(images.shape)}")
            gather = seconds(partial(shuffle, images), args.repeats, device)
            unfold = seconds(partial(per_image_unfold, images, shuffle), args.repeats, device)
            print(f"{f'{n}x{c}x{size}x{size}':>18} {block_size!s:>6} {n / gather:>14,.0f} {n / unfold:>14,.0f} "
                  f"{unfold / gather:>7.1f}x")


if __name__ == "__main__":
    main()
