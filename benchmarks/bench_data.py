"""Real-sized images per second: today's PIL path against the decoded-image cache with
on-device augmentation, side by side in one run (issue 14).

A fixture folder of ``--images`` JPEGs of ``--width`` x ``--height`` pixels (smooth
colour fields with noise, about the size of a DomainNet or ImageNet photo) is written
first. Then, on one CPU thread each (images per second per core):

- PIL path: what an epoch did before the cache, per image, for ``--size``-pixel
  training: :func:`read_image` (decode, shorter side resized, centre crop) in the
  loader, then the padded crop + flip;
- cache build: decoding every image once at the decode size (256 for 224) into the
  cache, with ``--workers`` processes (reported per process);
- cached path: the loader over the memory-mapped cache, random resized crop + flip to
  ``--size`` pixels on the CPU.

Target: cached >= 10x the PIL path per core. With ``--device cuda`` (bf16,
channels_last, torchvision ResNet-50 at ``--size``), also the trainer's images per
second fed from the cache (``--gpu-images`` cache rows, resized crop on the GPU)
against a bare training loop on random tensors already on the GPU, the ceiling (target
>= 90%).

    .venv/bin/python benchmarks/bench_data.py [--images 300] [--device cuda]

Other processes on the machine perturb timings: compare the ratios of one run only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferscope.config import DataConfig, ModelConfig, TrainConfig
from transferscope.data.domain import Domain
from transferscope.data.files import IMAGENET_MEAN, IMAGENET_STD, FileImageDataset, decode_size_for
from transferscope.data.image_cache import CachedImages, cached_split, default_workers
from transferscope.data.tensors import ImageLoader
from transferscope.train.trainer import Trainer


def write_fixture(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` JPEGs (quality 90): a random smooth colour field plus noise, so that they
    compress like photographs (tens of KiB) rather than like pure noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = np.clip(field + np.roll(noise, index, axis=1), 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def images_per_second(loader: ImageLoader, repeats: int) -> float:
    """Images through ``loader`` per second (best of ``repeats`` epochs, after one warm-up batch)."""
    next(iter(loader))
    best = 0.0
    for epoch in range(repeats):
        loader.set_epoch(epoch)
        started = time.perf_counter()
        seen = sum(len(x) for x, _ in loader)
        best = max(best, seen / (time.perf_counter() - started))
    return best


def cpu_rates(paths: list[Path], size: int, cache: Path, workers: int, batch: int, repeats: int) -> dict[str, float]:
    """Images per second per core of the three paths (see the module docstring)."""
    labels = [0] * len(paths)
    torch.set_num_threads(1)
    files = FileImageDataset(paths, labels, size, ["a"], decode_size=size)  # as before the cache: decoded at size
    loader = ImageLoader(files, batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, shuffle=True, augment="pad_crop")
    pil = images_per_second(loader, 1)
    started = time.perf_counter()
    split = cached_split(FileImageDataset(paths, labels, size, ["a"]), cache, workers=workers)
    build = len(paths) / (time.perf_counter() - started) / min(workers, len(paths))
    loader = ImageLoader(split, batch, mean=IMAGENET_MEAN, std=IMAGENET_STD, shuffle=True, augment="resized_crop",
                         image_size=size)
    return {"PIL path": pil, "cache build": build, "cached + resized crop": images_per_second(loader, repeats)}


def bare_loop(size: int, batch: int, steps: int, classes: int) -> float:
    """Images per second of ResNet-50 training steps on random tensors already on the GPU."""
    import torchvision

    model = torchvision.models.resnet50(num_classes=classes).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    best = 0.0
    for _ in range(2):  # best of two timed runs, as the trainer's best epoch
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        best = max(best, steps * batch / (time.perf_counter() - started))
    return best


def trainer_rate(paths: list[Path], size: int, cache: Path, rows: int, batch: int, classes: int, out: Path) -> float:
    """The trainer's images per second (its best epoch after the first) on ``rows``
    cache rows (the fixture's files repeated) with the resized crop on the GPU."""
    listed = [paths[i % len(paths)] for i in range(rows)]
    split = cached_split(FileImageDataset(listed, [i % classes for i in range(rows)], size,
                                          [str(k) for k in range(classes)]), cache)
    test = CachedImages(split.images[:batch], split.targets[:batch], split.classes, image_size=size)
    domain = Domain("bench", split, test, split.classes, False, list(IMAGENET_MEAN), list(IMAGENET_STD))
    config = TrainConfig(data=DataConfig(kind="folder", root=str(cache), image_size=size),
                         model=ModelConfig(arch="resnet50"), epochs=3, batch_size=batch, lr=0.1, augment="resized_crop",
                         device="cuda", bf16=True, channels_last=True, deterministic=False, eval_batch_size=batch,
                         clean_train_examples=batch)
    return float(Trainer(config, out, progress=False, domain=domain).run().metrics["images_per_second"].iloc[2:].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="fixture JPEGs")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--size", type=int, default=224, help="pixels the network sees")
    parser.add_argument("--workers", type=int, default=default_workers(), help="cache build processes")
    parser.add_argument("--batch", type=int, default=32, help="CPU loader batch (float batches over glibc's 32 MiB "
                        "mmap threshold, 56 images at 224 px, are page-faulted afresh every batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--gpu-images", type=int, default=16384, help="cache rows the trainer reads (cuda)")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-steps", type=int, default=60, help="bare-loop steps (cuda)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        paths = write_fixture(folder / "images", args.images, args.width, args.height)
        print(f"fixture: {args.images} JPEGs of {args.width}x{args.height} "
              f"({sum(p.stat().st_size for p in paths) / len(paths) / 1024:.0f} KiB each), "
              f"written in {time.perf_counter() - started:.1f} s; decode size {decode_size_for(args.size)} for "
              f"{args.size}-pixel training")
        rates = cpu_rates(paths, args.size, folder / "cache", args.workers, args.batch, args.repeats)
        pil = rates["PIL path"]
        print(f"{'path (one CPU thread)':<28}{'images/s per core':>18}{'x PIL path':>12}")
        for name, rate in rates.items():
            print(f"{name:<28}{rate:>18.0f}{rate / pil:>12.1f}")
        print(f"target: cached + resized crop >= 10x the PIL path per core: "
              f"{'met' if rates['cached + resized crop'] >= 10 * pil else 'NOT met'}")
        if args.device == "cuda":
            torch.set_num_threads(default_workers())
            ceiling = bare_loop(args.size, args.gpu_batch, args.gpu_steps, classes=100)
            trainer = trainer_rate(paths, args.size, folder / "cache", args.gpu_images, args.gpu_batch, 100,
                                   folder / "run")
            print(f"ResNet-50 at {args.size} px, bf16, channels_last, batch {args.gpu_batch} on "
                  f"{torch.cuda.get_device_name()}: bare loop on GPU tensors {ceiling:.0f} images/s, trainer from the "
                  f"cache {trainer:.0f} images/s = {100 * trainer / ceiling:.1f}% (target >= 90%)")


if __name__ == "__main__":
    main()
