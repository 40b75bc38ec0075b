"""The trainer's throughput against a bare PyTorch loop doing the same work, side by
side in one run (target: trainer overhead under 5%).

Both use the same model and init (``small_resnet``), the same data (random uint8
tensors in memory), batch size, SGD (momentum 0.9, weight decay 1e-4), normalisation
and augmentation (random crop + flip, ``random_crop_flip``), and the same evaluations:
before training and after every epoch, the test set and the first
``--clean-train-examples`` training images (the trainer's eval-mode train accuracy).
The trainer also writes checkpoints, metrics, ``resume.pt`` and its status every
epoch; that is part of what is measured.

Two ratios: train phase (the trainer's own ``images_per_second``/``train_seconds``
metrics against the bare loop's timed train phase) and whole wall time. Runs alternate
(bare, trainer, bare, trainer, ...) and the median of ``--repeats`` is reported.

    .venv/bin/python benchmarks/bench_train_overhead.py [--threads 2] [--epochs 3] [--device cpu]

Other processes on the machine perturb timings: compare the ratios of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.nn import functional as F

from transferscope.config import DataConfig, ModelConfig, TrainConfig
from transferscope.data.domain import Domain
from transferscope.data.tensors import ImageSet, random_crop_flip
from transferscope.models.registry import build_model
from transferscope.train.trainer import Trainer


def random_domain(n_train: int, n_test: int, size: int, classes: int) -> Domain:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_train + n_test, 3, size, size), generator=generator, dtype=torch.uint8)
    targets = torch.randint(0, classes, (n_train + n_test,), generator=generator)
    names = [f"class{k}" for k in range(classes)]
    train = ImageSet(images[:n_train], targets[:n_train], names)
    mean, std = train.channel_stats()
    return Domain("bench", train, ImageSet(images[n_train:], targets[n_train:], names), names, False, mean, std)


def bare_loop(config: TrainConfig, domain: Domain, device: torch.device) -> dict[str, float]:
    """Plain PyTorch: index the uint8 tensor, normalise, augment, step; evaluate."""
    torch.manual_seed(config.seed)
    model = build_model("small_resnet", domain.num_outputs, width=config.model.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    mean = torch.tensor(domain.mean).view(1, -1, 1, 1)
    std = torch.tensor(domain.std).view(1, -1, 1, 1)
    images, targets = domain.train.images, domain.train.targets
    clean = (images[:config.clean_train_examples], targets[:config.clean_train_examples])
    generator = torch.Generator().manual_seed(config.seed)

    @torch.no_grad()
    def evaluate(split_images: torch.Tensor, split_targets: torch.Tensor) -> float:
        model.eval()
        correct = 0
        for start in range(0, len(split_images), config.eval_batch_size):
            x = ((split_images[start:start + config.eval_batch_size].float() / 255 - mean) / std).to(device)
            correct += int((model(x).argmax(1).cpu() == split_targets[start:start + config.eval_batch_size]).sum())
        model.train()
        return correct / len(split_images)

    started = time.perf_counter()
    evaluate(domain.test.images, domain.test.targets)
    evaluate(*clean)
    train_seconds, seen = 0.0, 0
    for _ in range(config.epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, len(images) - config.batch_size + 1, config.batch_size):
            index = order[start:start + config.batch_size]
            x = random_crop_flip((images[index].float() / 255 - mean) / std, 4, generator).to(device)
            y = targets[index].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            seen += len(x)
        float(loss_sum)  # the epoch's loss, read once (synchronises a GPU like the trainer's epoch end)
        train_seconds += time.perf_counter() - epoch_start
        evaluate(domain.test.images, domain.test.targets)
        evaluate(*clean)
    return {"images_per_second": seen / train_seconds, "wall_seconds": time.perf_counter() - started}


def trainer_run(config: TrainConfig, domain: Domain, progress: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        run = Trainer(config, out_dir, progress=progress, domain=domain).run()
        wall = time.perf_counter() - started
        table = run.metrics.iloc[1:]
        seen = (table["images_per_second"] * table["train_seconds"]).sum()
        return {"images_per_second": seen / table["train_seconds"].sum(), "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-test", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--clean-train-examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; medians are reported")
    parser.add_argument("--progress", action="store_true", help="show the trainer's progress bar")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    domain = random_domain(args.n_train, args.n_test, args.image_size, args.classes)
    config = TrainConfig(data=DataConfig(image_size=args.image_size), model=ModelConfig(width=args.width),
                         epochs=args.epochs, batch_size=args.batch_size, lr=0.05, augment=True, device=str(device),
                         clean_train_examples=args.clean_train_examples)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}; small_resnet width {args.width}, "
          f"{args.n_train} train / {args.n_test} test images of {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, {args.epochs} epochs. Other processes on the machine perturb timings.")
    bare_loop(config.model_copy(update={"epochs": 1}), domain, device)  # warm-up: one-time kernel set-up
    results: dict[str, list[dict[str, float]]] = {"bare": [], "trainer": []}
    for _ in range(args.repeats):
        results["bare"].append(bare_loop(config, domain, device))
        results["trainer"].append(trainer_run(config, domain, args.progress))
    median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}
    bare, trainer = median["bare"], median["trainer"]
    print(f"{'':10} {'train images/s':>15} {'wall s':>8}")
    for name in ("bare", "trainer"):
        print(f"{name:10} {median[name]['images_per_second']:>15,.0f} {median[name]['wall_seconds']:>8.2f}")
    train_overhead = bare["images_per_second"] / trainer["images_per_second"] - 1
    wall_overhead = trainer["wall_seconds"] / bare["wall_seconds"] - 1
    print(f"train phase: bare/trainer images/s = {1 + train_overhead:.3f} (trainer overhead {100 * train_overhead:+.1f}%)")
    print(f"whole run:   trainer/bare wall time = {1 + wall_overhead:.3f} (trainer overhead {100 * wall_overhead:+.1f}%)")
    pairs = zip(results["bare"], results["trainer"])
    print("per repeat (bare/trainer images/s, trainer/bare wall): " + ", ".join(
        f"{b['images_per_second'] / t['images_per_second']:.3f} {t['wall_seconds'] / b['wall_seconds']:.3f}"
        for b, t in pairs) + " (the spread is the noise from other processes)")
    print(f"target: overhead under 5%: train phase {'met' if train_overhead < 0.05 else 'NOT met'}, "
          f"whole run {'met' if wall_overhead < 0.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
