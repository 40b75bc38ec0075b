"""Benchmark of compare_representations (minibatch CKA, every module pair of two small
ResNets) against the bare forward passes of the same two models over the same batches,
timed side by side (interleaved repeats), and its largest error against a float64 NumPy
reference computed from the stored features with Song et al.'s HSIC_1 formula.

    .venv/bin/python benchmarks/bench_cka.py [--width 16 --image-size 32 --examples 2000 --batch-size 256]
    .venv/bin/python benchmarks/bench_cka.py --arch resnet18 --image-size 112 --examples 512 --batch-size 64

The Gram matrices cost n·d multiply-adds per example and hooked module (n the batch,
d the module's output size); the forward pass costs about C_in·k² per output value of
every convolution. So the ratio is worst for narrow networks on small images with large
batches, and falls with width, depth and batch size; the script prints both FLOP counts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from transferscope.analysis.similarity import compare_representations
from transferscope.data import ImageLoader, ImageSet
from transferscope.evaluation import eval_mode, model_device
from transferscope.models import build_model, modules

TARGET_RATIO = 1.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="small_resnet", help="small_resnet or a torchvision classifier (resnet18, ...)")
    parser.add_argument("--width", type=int, default=16, help="small_resnet base width")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats (min and median kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser.parse_args()


@torch.no_grad()
def bare_forward(models: dict[str, torch.nn.Module], loader) -> None:
    """The two forward passes alone, inputs moved to the models' device as
    compare_representations moves them; waits for the GPU to finish."""
    for model in models.values():
        model.eval()
    device = model_device(next(iter(models.values())))
    for inputs, _ in loader:
        for model in models.values():
            model(inputs.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()


def unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_1 of Song et al. (2012), Eq. 5, written from the formula."""
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    ones = np.ones(n)
    return float((np.trace(K @ L) + (ones @ K @ ones) * (ones @ L @ ones) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * (K @ ones) @ (L @ ones)) / (n * (n - 3)))


@torch.no_grad()
def numpy_reference(models: dict[str, torch.nn.Module], loader: ImageLoader) -> np.ndarray:
    """Minibatch CKA of the two models, every module pair, in float64 NumPy from the features."""
    (name_a, a), (name_b, b) = models.items()
    features: dict[tuple[str, str], np.ndarray] = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, key=(name, layer): features.__setitem__(
        key, out.flatten(1).double().cpu().numpy()))
        for name, model in models.items() for layer, module in modules(model).items()]
    modules_a, modules_b = list(modules(a)), list(modules(b))
    device = model_device(a)
    cross = np.zeros((len(modules_a), len(modules_b)))
    self_a, self_b = np.zeros(len(modules_a)), np.zeros(len(modules_b))
    try:
        with eval_mode(a), eval_mode(b):
            for inputs, _ in loader:
                a(inputs.to(device))
                b(inputs.to(device))
                grams_a = [features[(name_a, layer)] @ features[(name_a, layer)].T for layer in modules_a]
                grams_b = [features[(name_b, layer)] @ features[(name_b, layer)].T for layer in modules_b]
                self_a += [unbiased_hsic(K, K) for K in grams_a]
                self_b += [unbiased_hsic(L, L) for L in grams_b]
                cross += [[unbiased_hsic(K, L) for L in grams_b] for K in grams_a]
    finally:
        for handle in handles:
            handle.remove()
    return cross / np.sqrt(np.outer(self_a, self_b))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = {name: build_model(args.arch, args.classes, width=args.width).to(args.device) for name in ("a", "b")}
    images = torch.randint(0, 256, (args.examples, 3, args.image_size, args.image_size), dtype=torch.uint8)
    data = ImageSet(images, torch.randint(0, args.classes, (args.examples,)))
    loader = ImageLoader(data, args.batch_size, mean=[0.5] * 3, std=[0.25] * 3)
    n_modules = len(modules(models["a"]))
    arch = f"small_resnet(width={args.width})" if args.arch == "small_resnet" else args.arch
    print(f"two {arch} x {n_modules} modules ({n_modules ** 2} module pairs), "
          f"{args.examples} examples {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          + (f"{torch.get_num_threads()} CPU threads" if args.device == "cpu" else torch.cuda.get_device_name()))

    first_batch = [next(iter(loader))]
    with FlopCounterMode(display=False) as bare_flops:
        bare_forward(models, first_batch)
    with FlopCounterMode(display=False) as cka_flops:
        compare_representations(models, first_batch)
    bare_gflop, cka_gflop = bare_flops.get_total_flops() / 1e9, cka_flops.get_total_flops() / 1e9
    print(f"per batch: forward passes {bare_gflop:.2f} GFLOP; compare_representations {cka_gflop:.2f} GFLOP "
          f"(Gram and HSIC products add {cka_gflop - bare_gflop:.2f} GFLOP = "
          f"{(cka_gflop - bare_gflop) / bare_gflop:.0%} of the forward passes)")

    bare_forward(models, loader)  # warm-up
    compare_representations(models, loader)
    bare_times, cka_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        bare_forward(models, loader)
        bare_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        frame = compare_representations(models, loader)
        cka_times.append(time.perf_counter() - start)

    reference = numpy_reference(models, loader)
    error = np.abs(frame["cka"].to_numpy().reshape(reference.shape) - reference).max()
    bare, timed = min(bare_times), min(cka_times)
    print(f"bare forward (2 models)     min {bare:.3f} s   median {np.median(bare_times):.3f} s")
    print(f"compare_representations     min {timed:.3f} s   median {np.median(cka_times):.3f} s")
    print(f"ratio (min / min)           {timed / bare:.3f}x   "
          f"(median / median {np.median(cka_times) / np.median(bare_times):.3f}x)"
          f"   target <= {TARGET_RATIO:.2f}x: {'met' if timed / bare <= TARGET_RATIO else 'NOT met'}")
    print(f"max abs error vs float64 NumPy reference: {error:.2e} over {reference.size} module pairs")


if __name__ == "__main__":
    main()
