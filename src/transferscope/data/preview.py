"""A PNG grid of example images of a domain, each titled with its class (or, for
multi-label domains, its positive labels), to check by eye what a domain holds: the
images as the domain's loader gives them to the model (at its image size, after the
augmentation and block shuffle asked for), mapped back to pixels."""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..io import atomic_path
from .domain import Domain, block_shuffle_for
from .load import load_domain
from .shuffle import BlockShuffle
from .tensors import split_size

if TYPE_CHECKING:
    from ..config import DataConfig

_CELL_INCHES = 1.2  # width of one cell of the grid
_LINE_INCHES = 6 * 1.15 / 72  # one caption line at 6 pt
_TITLE_LINE_INCHES = 10 * 1.2 / 72  # one title line at 10 pt
_TITLE_CHARS_PER_INCH = 11  # of the 10 pt title


def model_inputs(domain: Domain, count: int, split: str = "train", *, augment: str | bool = "none",
                 block_shuffle: BlockShuffle | None = None, seed: int = 0) -> tuple[Tensor, Tensor, str]:
    """The first ``count`` examples of ``split`` as the model sees them (the domain's
    loader: cropped to its image size, augmented by ``augment`` with draws seeded by
    ``seed``, block-shuffled), as uint8 pixels ``(N, 3, H, W)`` (the normalisation
    undone), their targets, and the resolved augmentation mode."""
    loader = domain.loader(split, count, seed=seed, augment=augment, block_shuffle=block_shuffle, limit=count)
    inputs, targets = next(iter(loader))
    mean, std = (torch.tensor(values).view(1, -1, 1, 1) for values in (domain.mean, domain.std))
    pixels = (inputs * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels, targets, loader.augment


def _caption(target: Tensor, classes: list[str]) -> str:
    if target.ndim == 1:  # multi-label: the positive labels, one a line
        names = [classes[j] if j < len(classes) else f"label {j}" for j in target.nonzero().flatten().tolist()]
        return "\n".join(names) or "no finding"
    index = int(target)
    return classes[index] if index < len(classes) else f"class {index}"


def save_preview(domain: Domain, path: str | os.PathLike, n: int = 64, split: str = "train", *,
                 augment: str | bool = "none", block_shuffle: BlockShuffle | None = None, seed: int = 0) -> Path:
    """Write a grid of the first ``n`` images of ``split`` (or all, if fewer) to ``path``
    as a PNG, each titled with its class or label set; returns the path. The images are
    those the model sees (:func:`model_inputs`: ``augment``, e.g. a training recipe's,
    and ``block_shuffle`` applied).

    The grid is one mosaic image in one axes (fast for many images), captions above cells."""
    if n < 1:
        raise ValueError(f"n must be at least 1 image, got {n}")
    data = domain.split(split)
    count = min(n, split_size(data))
    if count == 0:
        raise ValueError(f"the {split} split of domain {domain.name!r} is empty; nothing to preview")
    images, targets, augmented = model_inputs(domain, count, split, augment=augment, block_shuffle=block_shuffle,
                                              seed=seed)
    captions = [_caption(t, domain.classes) for t in targets]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    lines = max(caption.count("\n") + 1 for caption in captions)
    height, width = images.shape[2:]
    pad = max(1, width // 10)
    cell_w = width + pad
    caption_height = math.ceil(lines * _LINE_INCHES / _CELL_INCHES * cell_w) + 1  # in image pixels
    cell_h = caption_height + height + pad
    mosaic = torch.full((rows * cell_h, columns * cell_w, 3), 255, dtype=torch.uint8)
    shown = "" if augmented == "none" else f", augment {augmented}"
    shown += "" if block_shuffle is None else f", block-shuffled (block {block_shuffle.block_size})"
    title = textwrap.fill(f"{domain.name} — {split} split: {count} of {split_size(data)} images{shown}",
                          max(24, int(_CELL_INCHES * columns * _TITLE_CHARS_PER_INCH)))
    heading = 0.4 + _TITLE_LINE_INCHES * title.count("\n")
    figure = Figure(figsize=(_CELL_INCHES * columns, _CELL_INCHES * rows * cell_h / cell_w + heading + 0.1))
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0 - heading / figure.get_figheight()))
    for index, (image, caption) in enumerate(zip(images, captions)):
        row, column = divmod(index, columns)
        top, left = row * cell_h + caption_height, column * cell_w + pad // 2
        mosaic[top:top + height, left:left + width] = image.permute(1, 2, 0)
        axes.text(left + width / 2, top - 0.5, caption, ha="center", va="bottom", fontsize=6, linespacing=1.0)
    axes.imshow(mosaic.numpy(), interpolation="nearest")
    axes.axis("off")
    figure.suptitle(title, fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def save_data_preview(config: DataConfig, path: str | os.PathLike, n: int = 64, split: str = "train", *,
                      augment: str | bool = "auto", seed: int = 0) -> Path:
    """:func:`save_preview` of the data a config describes (any kind: a study's target,
    a training run's ``data``), as a run trains on them: the training split augmented by
    ``augment`` (the recipe's; none for block-shuffled data, whose block shuffle is
    applied), the test split as evaluated. Returns the path."""
    shuffle = block_shuffle_for(config)
    shown = augment if split == "train" and shuffle is None else "none"
    return save_preview(load_domain(config), path, n=n, split=split, augment=shown, block_shuffle=shuffle, seed=seed)
