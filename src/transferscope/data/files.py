"""Shared pieces of the file-backed data sets (DomainNet, CheXpert, image folders):
decoding one image file to a fixed-size uint8 tensor, a dataset of ``(path, target)``
pairs, a seeded example order, and copying a (small) file-backed split into memory.

Every image is decoded with PIL, converted to RGB (greyscale is replicated to three
channels, an alpha channel is dropped), its shorter side resized to the decode size
(bilinear, antialiased) and the centre square of that side cropped. The decode size is
the image size below 64 pixels and 8/7 of it from there on (256 for 224), so that the
loader's centre crop to the image size is the usual evaluation transform of ImageNet
models (``Resize(256)`` + ``CenterCrop(224)``) and its random resized crop has the
margin ImageNet training takes it from.
"""

from __future__ import annotations

import os
from typing import IO, Sequence

import torch
from PIL import Image
from rich.progress import track
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .tensors import LARGE_IMAGE, ImageSet, split_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PROGRESS_MIN_ITEMS = 2000  # to_image_set shows a progress bar from this many images on


class ImageReadError(ValueError):
    """An image file that is missing, unreadable or not a decodable image.

    Raised as ``ImageReadError(path, reason)``. The one-argument form
    ``ImageReadError(message)`` is what torch's ``DataLoader`` uses to re-raise the
    error from a worker process (the worker's traceback, which names the file, becomes
    the message); ``path`` and ``reason`` are then ``None``.
    """

    def __init__(self, path: str | os.PathLike | IO[bytes], reason: str | None = None) -> None:
        if reason is None:
            self.path, self.reason = None, None
            super().__init__(str(path))
        else:
            self.path, self.reason = str(path), reason
            super().__init__(f"cannot read image {path}: {reason}; remove it from the split file or replace it")

    def __reduce__(self):
        return (type(self), (self.args[0],) if self.path is None else (self.path, self.reason))


def decode_size_for(image_size: int, decode_size: int | None = None) -> int:
    """The side images are decoded to for ``image_size``-pixel training: ``decode_size``
    when given (at least ``image_size``: the loaders crop from the decoded images), else
    ``image_size`` below :data:`~.tensors.LARGE_IMAGE` pixels and ``round(image_size * 8
    / 7)`` above (ImageNet's 256 for 224)."""
    if decode_size is None:
        return image_size if image_size < LARGE_IMAGE else round(image_size * 8 / 7)
    if decode_size < image_size:
        raise ValueError(f"decode_size {decode_size} is smaller than image_size {image_size}: images are cropped "
                         "to image_size from the decoded ones; raise decode_size or leave it unset")
    return decode_size


def read_image(path: str | os.PathLike | IO[bytes], image_size: int) -> Tensor:
    """Decode ``path`` (or an open binary file) to uint8 RGB ``(3, image_size,
    image_size)``: shorter side resized to ``image_size``, then centre crop."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(path, f"{type(error).__name__}: {error}") from error
    import torchvision.transforms.functional as F  # a 3 s import: only where images are decoded

    image = F.center_crop(F.resize(image, image_size), image_size)
    return F.pil_to_tensor(image)


class FileImageDataset(Dataset):
    """Images read from files on access: item ``i`` is ``(uint8 (3, S, S), targets[i])``
    with ``S = decode_size`` (see :func:`read_image`; default :func:`decode_size_for`
    ``(image_size)``); the loaders crop or resample them to ``image_size``, the side the
    network sees.

    ``targets``: int64 ``(N,)`` class indices or float32 ``(N, L)`` 0/1 labels;
    ``classes``: class or label names. Holds only paths and a tensor, so it pickles
    cheaply into ``DataLoader`` workers.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], targets: Tensor | Sequence[int], image_size: int,
                 classes: Sequence[str], decode_size: int | None = None) -> None:
        targets = torch.as_tensor(targets)
        if targets.ndim == 1:
            targets = targets.long()
        elif targets.ndim == 2:
            targets = targets.float()
        else:
            raise ValueError(f"targets must be (N,) class indices or (N, L) labels, got shape {tuple(targets.shape)}")
        if len(targets) != len(paths):
            raise ValueError(f"{len(paths)} image paths but {len(targets)} targets")
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        decode_size = decode_size_for(image_size, decode_size)
        self.paths = [str(path) for path in paths]
        self.targets = targets
        self.image_size = image_size
        self.decode_size = decode_size
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return read_image(self.paths[index], self.decode_size), self.targets[index]

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2

    def subset(self, index: Tensor | Sequence[int]) -> "FileImageDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        return FileImageDataset([self.paths[i] for i in index.tolist()], self.targets[index], self.image_size,
                                self.classes, self.decode_size)


def seeded_order(count: int, seed: int, keep: int | None = None) -> Tensor:
    """A seeded random permutation of ``range(count)``, cut to its first ``keep`` entries
    when ``keep`` is smaller. The loaders store examples in this order, so any prefix
    (``Domain.loader(limit=...)``) is a uniform random sample, not the first classes."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order if keep is None else order[:keep]


def to_image_set(dataset: Dataset, num_workers: int = 0, batch_size: int = 256) -> ImageSet:
    """Read every item of a dataset of ``(uint8 (C, H, W), target)`` (e.g. a small
    :class:`FileImageDataset` subset) into one in-memory :class:`ImageSet`; a progress
    bar shows from ``PROGRESS_MIN_ITEMS`` images on."""
    if split_size(dataset) == 0:
        raise ValueError("cannot make an ImageSet of an empty dataset")
    batches = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    images, targets = zip(*track(batches, description="reading images", disable=split_size(dataset) < PROGRESS_MIN_ITEMS))
    return ImageSet(torch.cat(images), torch.cat(targets), list(getattr(dataset, "classes", [])))
