"""Benchmark of compare_representations (minibatch linear CKA, every module pair of two
models) against the bare forward passes of the same two models and against the CKA
packages users would pick (torch-cka, cka-pytorch, pytorch-cka: optional contenders, each
skipped when it is not installed), timed side by side in one process (the contenders
alternate within every repeat), with each one's largest error against a float64 NumPy
reference computed from the stored features with Song et al.'s HSIC_1 formula.

    .venv/bin/python benchmarks/bench_cka.py            # small ResNet (width 16) at 32 px, 256 examples: < 1 min
    .venv/bin/python benchmarks/bench_cka.py --table    # the issue-14 table, 512 examples: + ResNet-18 at 32 and 64 px
    .venv/bin/python benchmarks/bench_cka.py --arch resnet18 --image-size 64 --examples 512 --repeats 7

Every setting: 6 modules per model (36 module pairs), batch 128. The
ratios printed are a contender's time over transferscope's (> 1: transferscope is faster),
from the minimum and the median over the repeats. The Gram matrices cost n·d
multiply-adds per example and hooked module (n the batch, d the module's output size);
the forward pass costs about C_in·k² per output value of every convolution, so the
extra work is largest, relative to the forward passes, for narrow networks on small
images: the script prints both FLOP counts. "bare forward" runs the models as given
(NCHW); on CPU transferscope runs them in channels_last memory, whose convolutions are
faster, so it can take less time than the bare forward passes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from transferscope.analysis.similarity import GRAM_BLOCK, compare_representations
from transferscope.evaluation import eval_mode, model_device
from transferscope.models import build_model, modules

TABLE = (("small_resnet", 32), ("resnet18", 32), ("resnet18", 64))  # (arch, image size) of --table
PACKAGES = {"torch-cka": "torch_cka", "cka-pytorch": "cka_pytorch", "pytorch-cka": "cka"}  # pip name: import name


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="store_true", help=f"every setting of {TABLE} (arch, image size)")
    parser.add_argument("--arch", default="small_resnet", help="small_resnet or a torchvision classifier (resnet18, ...)")
    parser.add_argument("--width", type=int, default=16, help="small_resnet base width")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=None,
                        help="examples per run (default 256, and the issue's 512 with --table)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (min and median kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--packages", nargs="*", default=list(PACKAGES), choices=list(PACKAGES), metavar="PACKAGE",
                        help=f"the CKA packages to compare with, of {list(PACKAGES)} (default: every one installed)")
    return parser.parse_args()


class ReadyBatches:
    """Batches ``(inputs, targets)`` made once, as a loader: iterable, sized, with the
    ``dataset`` attribute torch-cka prints (not a list: pytorch-cka reads a list as a
    list of loaders)."""

    dataset = "random images"

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


Contender = Callable[[dict[str, nn.Module], ReadyBatches], "np.ndarray | None"]  # -> CKA of the module pairs


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bare_forward(models: dict[str, nn.Module], batches: ReadyBatches) -> None:
    """The two forward passes alone, in eval mode, inputs moved to the models' device as
    compare_representations moves them; waits for the GPU to finish."""
    device = model_device(next(iter(models.values())))
    with eval_mode(models["a"]), eval_mode(models["b"]):
        for inputs, _ in batches:
            for model in models.values():
                model(inputs.to(device))
    _synchronize(device)


def transferscope_cka(models: dict[str, nn.Module], batches: ReadyBatches) -> np.ndarray:
    frame = compare_representations(models, batches)
    _synchronize(model_device(models["a"]))
    return frame["cka"].to_numpy().reshape(len(modules(models["a"])), -1)


def torch_cka_contender(models: dict[str, nn.Module]) -> Contender:
    """torch-cka's CKA on deep copies of the models: it never removes its hooks, so it gets
    models of its own, hooked once."""
    from torch_cka import CKA

    names = list(modules(models["a"]))
    copies = [copy.deepcopy(models[name]) for name in ("a", "b")]
    device = str(model_device(models["a"]))
    calculator = CKA(*copies, model1_name="a", model2_name="b", model1_layers=names, model2_layers=names,
                     device=device)

    def run(_models: dict[str, nn.Module], batches: ReadyBatches) -> np.ndarray:
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar, which cannot be turned off
            calculator.compare(batches, batches)
        return calculator.export()["CKA"].cpu().numpy()

    return run


def cka_pytorch_contender(_models: dict[str, nn.Module]) -> Contender:
    """cka-pytorch's CKACalculator, built (hooks on the top-level modules) and removed per call."""
    from cka_pytorch.cka import CKACalculator

    def run(models: dict[str, nn.Module], batches: ReadyBatches) -> np.ndarray:
        names = list(modules(models["a"]))
        calculator = CKACalculator(models["a"], models["b"], model1_layers=names, model2_layers=names,
                                   hook_recursive=False, verbose=False)
        try:
            matrix = calculator.calculate_cka_matrix(batches, num_epochs=1)
            _synchronize(model_device(models["a"]))
            return matrix.cpu().numpy()
        finally:
            calculator.reset()  # removes its hooks

    return run


def pytorch_cka_contender(_models: dict[str, nn.Module]) -> Contender:
    """pytorch-cka's compute_cka (hooks registered and removed per call)."""
    from cka import compute_cka

    def run(models: dict[str, nn.Module], batches: ReadyBatches) -> np.ndarray:
        names = list(modules(models["a"]))
        matrix = compute_cka(models["a"], models["b"], batches, layers=names, device=model_device(models["a"]),
                             progress=False)[0]
        _synchronize(model_device(models["a"]))
        return matrix.cpu().numpy()

    return run


PACKAGE_CONTENDERS = {"torch-cka": torch_cka_contender, "cka-pytorch": cka_pytorch_contender,
                      "pytorch-cka": pytorch_cka_contender}


def installed(packages: list[str]) -> list[str]:
    """Those of ``packages`` that can be imported."""
    return [name for name in packages if importlib.util.find_spec(PACKAGES[name]) is not None]


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
def numpy_reference(models: dict[str, nn.Module], batches: ReadyBatches) -> np.ndarray:
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
            for inputs, _ in batches:
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


@torch.no_grad()
def flop_line(models: dict[str, nn.Module], batch: ReadyBatches) -> str:
    """FLOPs per batch of the forward passes (counted) and of the Gram matrices ``X X^T`` of
    the hooked modules (``2 n^2 d`` each for ``d`` features; transferscope multiplies only
    the blocks on and below the diagonal, which FlopCounterMode does not see)."""
    with FlopCounterMode(display=False) as counter:
        bare_forward(models, batch)
    sizes: list[int] = []
    for model in models.values():
        handles = [module.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
                   for module in modules(model).values()]
        with eval_mode(model):
            model(batch.batches[0][0].to(model_device(model)))
        for handle in handles:
            handle.remove()
    n = len(batch.batches[0][0])
    blocks = -(-n // GRAM_BLOCK)
    bare, grams = counter.get_total_flops() / 1e9, sum(2 * n * n * d for d in sizes) / 1e9
    return (f"per batch: forward passes {bare:.2f} GFLOP; Gram matrices of the hooked modules {grams:.2f} GFLOP "
            f"({grams / bare:.0%} of the forward passes; transferscope multiplies {(1 + 1 / blocks) / 2:.0%} of them)")


def time_contenders(contenders: dict[str, Contender], models: dict[str, nn.Module], batches: ReadyBatches,
                    repeats: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds per run of every contender, alternating within each repeat (after one
    warm-up run each), and each one's last result."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict[str, np.ndarray] = {}
    for name, run in contenders.items():
        results[name] = run(models, batches)
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            results[name] = run(models, batches)
            times[name].append(time.perf_counter() - start)
    return times, results


def bench_setting(args: argparse.Namespace, arch: str, image_size: int) -> None:
    torch.manual_seed(args.seed)
    models = {name: build_model(arch, args.classes, width=args.width).to(args.device).eval() for name in ("a", "b")}
    inputs = torch.randn(args.examples, 3, image_size, image_size)
    targets = torch.randint(0, args.classes, (args.examples,))
    batches = ReadyBatches([(inputs[i:i + args.batch_size], targets[i:i + args.batch_size])
                            for i in range(0, args.examples, args.batch_size)])
    n_modules = len(modules(models["a"]))
    name = f"small_resnet(width={args.width})" if arch == "small_resnet" else arch
    device = f"{torch.get_num_threads()} CPU threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"\n== two {name} x {n_modules} modules ({n_modules ** 2} module pairs), {args.examples} examples "
          f"{image_size}x{image_size}, batch {args.batch_size}, {device}")
    print(flop_line(models, ReadyBatches(batches.batches[:1])))

    packages = installed(args.packages)
    missing = [package for package in args.packages if package not in packages]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)} (pip install {' '.join(missing)} to compare)")
    contenders: dict[str, Contender] = {"bare forward": lambda m, b: bare_forward(m, b),
                                        "transferscope": transferscope_cka}
    contenders.update({package: PACKAGE_CONTENDERS[package](models) for package in packages})
    times, results = time_contenders(contenders, models, batches, args.repeats)

    reference = numpy_reference(models, batches)
    ours_min, ours_median = min(times["transferscope"]), float(np.median(times["transferscope"]))
    print(f"{'contender':<16}{'min s':>9}{'median s':>10}{'÷ transferscope (min, median)':>32}{'max abs error':>15}")
    for contender, seconds in times.items():
        result = results[contender]
        error = "" if result is None else f"{np.abs(np.asarray(result, dtype=np.float64) - reference).max():.1e}"
        ratio = f"{min(seconds) / ours_min:.2f}x, {np.median(seconds) / ours_median:.2f}x"
        print(f"{contender:<16}{min(seconds):>9.3f}{np.median(seconds):>10.3f}{ratio:>32}{error:>15}")
    fastest = min((package for package in packages), key=lambda package: min(times[package]), default=None)
    if fastest is not None:
        ratio = min(times[fastest]) / ours_min
        print(f"fastest package {fastest}: {ratio:.2f}x transferscope's time "
              f"(goal >= 1.00x: {'met' if ratio >= 1.0 else 'NOT met'})")
    print(f"transferscope / bare forward: {ours_min / min(times['bare forward']):.2f}x")


def main() -> None:
    args = parse_args()
    if args.examples is None:
        args.examples = 512 if args.table else 256
    if args.threads:
        torch.set_num_threads(args.threads)
    for arch, image_size in TABLE if args.table else ((args.arch, args.image_size),):
        bench_setting(args, arch, image_size)


if __name__ == "__main__":
    main()
