"""A PNG grid of example images of a domain, each titled with its class (or, for
multi-label domains, its positive labels), to check by eye what a domain holds."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..io import atomic_path
from .domain import Domain
from .tensors import ImageSet, split_size

_CELL_INCHES = 1.2  # width of one cell of the grid
_LINE_INCHES = 6 * 1.15 / 72  # one caption line at 6 pt


def _examples(data, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` images (uint8 (N, C, H, W)) and targets of an ImageSet or a dataset of items."""
    if isinstance(data, ImageSet):
        return data.images[:count], data.targets[:count]
    items = [data[i] for i in range(count)]
    return torch.stack([torch.as_tensor(image) for image, _ in items]), torch.stack([torch.as_tensor(t) for _, t in items])


def _caption(target: Tensor, classes: list[str]) -> str:
    if target.ndim == 1:  # multi-label: the positive labels, one a line
        names = [classes[j] if j < len(classes) else f"label {j}" for j in target.nonzero().flatten().tolist()]
        return "\n".join(names) or "no finding"
    index = int(target)
    return classes[index] if index < len(classes) else f"class {index}"


def save_preview(domain: Domain, path: str | os.PathLike, n: int = 64, split: str = "train") -> Path:
    """Write a grid of the first ``n`` images of ``split`` (or all, if fewer) to ``path``
    as a PNG, each titled with its class or label set; returns the path.

    The grid is one mosaic image in one axes (fast for many images), captions above cells."""
    if n < 1:
        raise ValueError(f"n must be at least 1 image, got {n}")
    data = domain.split(split)
    count = min(n, split_size(data))
    if count == 0:
        raise ValueError(f"the {split} split of domain {domain.name!r} is empty; nothing to preview")
    images, targets = _examples(data, count)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
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
    figure = Figure(figsize=(_CELL_INCHES * columns, _CELL_INCHES * rows * cell_h / cell_w + 0.5))
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / figure.get_figheight()))
    for index, (image, caption) in enumerate(zip(images, captions)):
        row, column = divmod(index, columns)
        top, left = row * cell_h + caption_height, column * cell_w + pad // 2
        mosaic[top:top + height, left:left + width] = image.permute(1, 2, 0)
        axes.text(left + width / 2, top - 0.5, caption, ha="center", va="bottom", fontsize=6, linespacing=1.0)
    axes.imshow(mosaic.numpy(), interpolation="nearest")
    axes.axis("off")
    figure.suptitle(f"{domain.name} — {split} split: {count} of {split_size(data)} images", fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path
