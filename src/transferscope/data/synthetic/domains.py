"""The built-in synthetic domains: each name's renderer, classes and default sizes,
:func:`generate_split` (seeded streams per domain, split and chunk), the CheXpert-like
multi-label targets of ``xray``, and :func:`synthetic_domain`, which caches generated
splits as safetensors keyed by a hash of the arguments and ``GENERATOR_VERSION``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ...io import atomic_path, content_hash
from ..chexpert import LABELS as XRAY_LABELS
from ..domain import Domain
from ..tensors import ImageSet
from .catalogue import SOURCE_SHAPES, SOURCE_TEXTURES, TARGET_SHAPES
from .geometry import Draw
from .render import render_clipart, render_natural, render_sketch, render_xray

GENERATOR_VERSION = 1
SYNTHETIC_DOMAINS = ("source", "real", "clipart", "sketch", "xray")
CHUNK = 512
"""Images rendered together from one random stream; changing it changes the images."""

XRAY_PREVALENCE = (0.15, 0.25, 0.12, 0.3, 0.4)
"""Designed marginal prevalence of Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion."""
_XRAY_LOADINGS = np.array([[1.2, 0.0], [1.0, 0.3], [0.0, 1.0], [0.2, 0.9], [0.8, 0.6]])
"""Loadings of each finding on two latent causes (heart failure, infection/collapse): correlated findings."""


def _xray_targets(n: int, rng: np.random.Generator) -> Tensor:
    """Labels = 1[loadings @ z + e > threshold], z (2 causes) and e standard normal;
    the thresholds give the designed prevalences in expectation."""
    latent = rng.standard_normal((n, 2)) @ _XRAY_LOADINGS.T + rng.standard_normal((n, len(XRAY_LABELS)))
    spread = np.sqrt((_XRAY_LOADINGS ** 2).sum(1) + 1)
    thresholds = np.array([NormalDist().inv_cdf(1 - p) for p in XRAY_PREVALENCE]) * spread
    return torch.from_numpy((latent > thresholds).astype(np.float32))


@dataclass(frozen=True)
class _Spec:
    render: Callable[..., Tensor]  # (targets, draw, image_size, *, classes) -> float (n, 3, H, W)
    all_classes: tuple[str, ...]
    default_classes: int
    n_train: int
    n_test: int
    multilabel: bool = False


def _source_classes() -> tuple[str, ...]:
    """Texture-major order: the first k classes cover all shapes before repeating textures."""
    return tuple(f"{shape}/{texture}" for texture in SOURCE_TEXTURES for shape in SOURCE_SHAPES)


_SPECS: dict[str, _Spec] = {
    "source": _Spec(partial(render_natural, scene="noise"), _source_classes(), 40, 12_000, 2_000),
    "real": _Spec(partial(render_natural, scene="sky"), tuple(TARGET_SHAPES), 10, 400, 1_000),
    "clipart": _Spec(render_clipart, tuple(TARGET_SHAPES), 10, 400, 1_000),
    "sketch": _Spec(render_sketch, tuple(TARGET_SHAPES), 10, 400, 1_000),
    "xray": _Spec(render_xray, XRAY_LABELS, 5, 400, 1_000, multilabel=True),
}


def _resolve_classes(name: str, spec: _Spec, num_classes: int | None) -> list[str]:
    if num_classes is None:
        return list(spec.all_classes[: spec.default_classes])
    if spec.multilabel:
        if num_classes != len(spec.all_classes):
            raise ValueError(f"synthetic domain {name!r} has exactly {len(spec.all_classes)} labels "
                             f"({', '.join(spec.all_classes)}); leave num_classes unset")
        return list(spec.all_classes)
    if not 2 <= num_classes <= len(spec.all_classes):
        raise ValueError(f"synthetic domain {name!r} offers 2 to {len(spec.all_classes)} classes, "
                         f"got num_classes={num_classes}")
    return list(spec.all_classes[:num_classes])


def generate_split(name: str, split: str, n: int, image_size: int, classes: Sequence[str], seed: int) -> ImageSet:
    """Render ``n`` images of one split (no cache). Targets come from the stream
    (seed, domain, split); each chunk of ``CHUNK`` images from (seed, domain, split, chunk)."""
    spec = _SPECS[name]
    key = [seed, SYNTHETIC_DOMAINS.index(name), ("train", "test").index(split)]
    target_rng = np.random.default_rng(key)
    if spec.multilabel:
        targets = _xray_targets(n, target_rng)
    else:
        targets = torch.from_numpy(target_rng.permutation(np.arange(n) % len(classes)))
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        batch = targets[start:start + CHUNK]
        # chunk + 1: a seed sequence ending in 0 would equal the shorter one of the targets
        draw = Draw(np.random.default_rng([*key, chunk + 1]), len(batch))
        pixels = spec.render(batch, draw, image_size, classes=classes)
        images[start:start + CHUNK] = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, targets, list(classes))


def default_cache_dir() -> Path:
    """``$TRANSFERSCOPE_CACHE``, else ``~/.cache/transferscope``."""
    return Path(os.environ.get("TRANSFERSCOPE_CACHE") or Path.home() / ".cache" / "transferscope")


def _cache_path(cache_dir: Path, arguments: dict) -> Path:
    digest = content_hash({"generator_version": GENERATOR_VERSION, **arguments}, length=16)
    return cache_dir / f"synthetic-{arguments['name']}-{digest}.safetensors"


def _read_cache(path: Path, classes: list[str], sizes: dict[str, int], image_size: int) -> dict[str, ImageSet] | None:
    """The cached splits, or None when the file is missing; a file that is unreadable or
    does not hold what the arguments ask for is reported and ignored (regenerated)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        splits = {split: ImageSet(tensors[f"{split}_images"], tensors[f"{split}_targets"], classes)
                  for split in sizes}
        for split, data in splits.items():
            if tuple(data.images.shape) != (sizes[split], 3, image_size, image_size):
                raise ValueError(f"{split} images have shape {tuple(data.images.shape)}")
        return splits
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        warnings.warn(f"synthetic data cache {path} is unreadable ({error}); regenerating it", stacklevel=3)
        return None


def synthetic_domain(name: str, *, n_train: int | None = None, n_test: int | None = None, image_size: int = 32,
                     num_classes: int | None = None, seed: int = 0,
                     cache_dir: str | os.PathLike | None = None) -> Domain:
    """A built-in synthetic domain (see :mod:`transferscope.data.synthetic`), generated once and cached.

    ``n_train``/``n_test``/``num_classes`` default to the domain's demo sizes (source:
    12,000/2,000 images, 40 classes; targets: 400/1,000 images, 10 classes; xray: 5
    labels). Normalisation: per-channel mean and std of the train split. A cache file
    that cannot be read is regenerated with a warning.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown synthetic domain {name!r}; choose one of {', '.join(SYNTHETIC_DOMAINS)}")
    spec = _SPECS[name]
    sizes = {"train": spec.n_train if n_train is None else n_train, "test": spec.n_test if n_test is None else n_test}
    for split, count in sizes.items():
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"n_{split} must be a positive number of images, got {count!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8 pixels, got {image_size!r}")
    classes = _resolve_classes(name, spec, num_classes)
    arguments = {"name": name, "n_train": sizes["train"], "n_test": sizes["test"], "image_size": image_size,
                 "classes": classes, "seed": seed}
    path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), arguments)
    splits = _read_cache(path, classes, sizes, image_size)
    if splits is None:
        splits = {split: generate_split(name, split, count, image_size, classes, seed) for split, count in sizes.items()}
        tensors = {f"{split}_{part}": getattr(data, part).contiguous()
                   for split, data in splits.items() for part in ("images", "targets")}
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={"arguments": json.dumps(arguments),
                                                       "generator_version": str(GENERATOR_VERSION)})
        except OSError as error:
            warnings.warn(f"cannot write the synthetic data cache {path} ({error}); continuing without it",
                          stacklevel=2)
    mean, std = splits["train"].channel_stats()
    return Domain(name=name, train=splits["train"], test=splits["test"], classes=classes,
                  multilabel=spec.multilabel, mean=mean, std=std)
