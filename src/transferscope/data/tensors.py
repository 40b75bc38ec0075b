"""In-memory image sets as uint8 tensors and a batch loader with no per-item Python.

Small data sets (the synthetic domains, a subsample of a real one) live as one uint8
tensor ``(N, C, H, W)``; file-backed datasets yield uint8 images through a torch
``DataLoader``. Either way the loader converts, normalises, augments and
block-shuffles whole batches. Any other iterable of ``(inputs, targets)`` batches
(a plain torch ``DataLoader``) works with every analysis too.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Iterator, Sequence, cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..seeding import torch_generator
from .shuffle import BlockShuffle


@dataclass
class ImageSet:
    """``images``: uint8 ``(N, C, H, W)``; ``targets``: int64 ``(N,)`` class indices or
    float32 ``(N, L)`` multi-label 0/1 targets; ``classes``: class or label names."""

    images: Tensor
    targets: Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2

    @property
    def num_outputs(self) -> int:
        """Width of the classifier head: number of classes, or of labels."""
        if self.multilabel:
            return self.targets.shape[1]
        return len(self.classes) if self.classes else int(self.targets.max()) + 1

    def subset(self, index: Tensor | Sequence[int]) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.targets[index], list(self.classes))

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixel values scaled to [0, 1]."""
        pixels = self.images.transpose(0, 1).reshape(self.images.shape[1], -1).double() / 255.0
        return pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-3).tolist()


def split_size(split: ImageSet | Dataset) -> int:
    """Examples in a split: an :class:`ImageSet`, or a dataset of ``(image, target)`` items,
    which must define ``__len__`` (torch's ``Dataset`` type does not declare it)."""
    return len(cast(Sized, split))


def random_crop_flip(batch: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random ``padding``-pixel translation (zero padded) and horizontal flip, per image,
    as one gather over the batch (the standard CIFAR augmentation)."""
    n, c, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    rows = torch.arange(h)[None, :] + dy[:, None]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class ImageLoader:
    """Iterate ``(inputs, targets)`` batches of an :class:`ImageSet` (indexed in memory)
    or of a dataset of ``(uint8 (C, H, W), target)`` items (read by ``num_workers``).

    Pixels become ``(x / 255 - mean) / std``; then, in this order, optional random
    crop + flip (``augment``; refused together with a block shuffle, as in the paper)
    and the block shuffle. The order of examples and the augmentation draws depend on
    ``(seed, epoch)`` only, so any epoch can be replayed exactly (``set_epoch``).
    """

    def __init__(
        self,
        data: ImageSet | Dataset,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        block_shuffle: BlockShuffle | None = None,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if augment and block_shuffle is not None:
            raise ValueError("augmentation must be off for block-shuffled data (Sec. 3.1 of the paper)")
        self.data = data
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.block_shuffle = block_shuffle
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.num_workers = num_workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = split_size(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def prepare(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 batch -> normalised, augmented, shuffled float batch on the device."""
        x = (images.float() / 255.0 - self.mean) / self.std
        if self.augment:
            x = random_crop_flip(x, 4, generator or torch.Generator().manual_seed(self.seed))
        if self.block_shuffle is not None:
            x = self.block_shuffle(x)
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch_generator(self.seed, "loader", self.epoch)
        n = split_size(self.data)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        chunks = [order[start:start + self.batch_size] for start in range(0, len(self) * self.batch_size, self.batch_size)]
        if isinstance(self.data, ImageSet):
            raw: Iterator[tuple[Tensor, Tensor]] = ((self.data.images[i], self.data.targets[i]) for i in chunks)
        else:
            raw = iter(DataLoader(self.data, batch_sampler=[c.tolist() for c in chunks], num_workers=self.num_workers))
        for images, targets in raw:
            yield self.prepare(images, generator), targets.to(self.device)
