"""A domain: a train and a test split with their normalisation, and the loaders the
trainer and analyses read. Splits are in-memory :class:`ImageSet` s (synthetic data,
small subsets) or file-backed datasets returning ``(uint8 (C, H, W) image, target)``
(DomainNet, CheXpert, image folders); both go through the same batch pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from .shuffle import BlockShuffle
from .tensors import ImageLoader, ImageSet, split_size

if TYPE_CHECKING:
    from ..config import DataConfig


@dataclass
class Domain:
    name: str
    train: ImageSet | Dataset
    test: ImageSet | Dataset
    classes: list[str]
    multilabel: bool
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])

    def __post_init__(self) -> None:
        if not self.multilabel and len(self.classes) < 2:
            raise ValueError(f"domain {self.name!r} has {len(self.classes)} class(es) {self.classes}, and accuracy "
                             "over one class means nothing: give at least two classes (an image folder needs one "
                             "sub-folder per class)")

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int | None:
        """Side of the (square) images the loaders yield, when the split knows it: a
        file-backed or cached split's ``image_size`` (its images are stored larger and
        cropped to it), else the side of an :class:`ImageSet`'s images."""
        size = getattr(self.train, "image_size", None)
        if size is None and isinstance(self.train, ImageSet):
            return int(self.train.images.shape[-1])
        return size

    def split(self, name: str) -> ImageSet | Dataset:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    def loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
               augment: str | bool = "none", block_shuffle: BlockShuffle | None = None, drop_last: bool = False,
               device: str | torch.device = "cpu", channels_last: bool = False, num_workers: int = 0,
               limit: int | None = None) -> ImageLoader:
        """Batches of ``split`` at :attr:`image_size`, normalised with this domain's
        statistics, augmented by ``augment`` (see :class:`ImageLoader`); ``limit`` keeps
        the first examples only (a fixed evaluation subset)."""
        data = self.split(split)
        if limit is not None and limit < split_size(data):
            data = (ImageSet(data.images[:limit], data.targets[:limit], list(data.classes)) if isinstance(data, ImageSet)
                    else torch.utils.data.Subset(data, range(limit)))  # a slice: no copy of memory-mapped images
        return ImageLoader(data, batch_size, mean=self.mean, std=self.std, shuffle=shuffle, seed=seed, augment=augment,
                           image_size=self.image_size, block_shuffle=block_shuffle, drop_last=drop_last,
                           device=device, channels_last=channels_last, num_workers=num_workers)


def block_shuffle_for(config: "DataConfig") -> BlockShuffle | None:
    """The fixed permutation of a data config, or None when the images are not shuffled
    (no block size, or a block as large as the image)."""
    if config.block_size is None or config.block_size == config.image_size:
        return None
    return BlockShuffle(config.block_size, seed=config.shuffle_seed)
