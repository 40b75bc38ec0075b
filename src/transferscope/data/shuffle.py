"""Block shuffling of images (Sec. 3.1 of Neyshabur et al. 2020).

An image of size H x W is cut into (H/b)(W/b) blocks of b x b pixels, and the blocks
are put back in an order fixed by a permutation drawn ONCE from ``seed``: the same
permutation for every image, train and test alike. Each block keeps its channels and
its inner layout. ``block_size="*"`` permutes all C*H*W scalars, across channels.
Shuffling is applied after resizing and normalisation, with augmentation off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import check_block_size


class BlockShuffle:
    """Callable on ``(C, H, W)`` or ``(N, C, H, W)`` tensors; returns the same shape.

    The permutation is a single index gather over a whole batch.
    """

    def __init__(self, block_size: int | str, seed: int = 0) -> None:
        self.block_size = check_block_size(block_size)
        self.seed = seed
        self._index: dict[tuple[int, int, int], Tensor] = {}

    def __repr__(self) -> str:
        return f"BlockShuffle(block_size={self.block_size!r}, seed={self.seed})"

    def index(self, channels: int, height: int, width: int) -> Tensor:
        """Gather index: over C*H*W values for ``"*"``, over H*W positions otherwise."""
        key = (channels, height, width)
        if key not in self._index:
            generator = torch.Generator().manual_seed(self.seed)
            if isinstance(self.block_size, int):
                self._index[key] = self._block_index(self.block_size, height, width, generator)
            else:  # "*"
                self._index[key] = torch.randperm(channels * height * width, generator=generator)
        return self._index[key]

    @staticmethod
    def _block_index(b: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        if height % b or width % b:
            raise ValueError(
                f"block size {b} does not divide the image size {height}x{width}; "
                f"use a divisor of both (e.g. {', '.join(str(d) for d in _divisors(height, width))}) or '*'"
            )
        rows, cols = height // b, width // b
        order = torch.randperm(rows * cols, generator=generator)
        # position grid as blocks: (rows, b, cols, b) -> (rows*cols, b, b)
        positions = torch.arange(height * width).reshape(rows, b, cols, b).permute(0, 2, 1, 3)
        positions = positions.reshape(rows * cols, b, b)
        # output block k takes input block order[k], laid back on the grid
        shuffled = positions[order].reshape(rows, cols, b, b).permute(0, 2, 1, 3)
        return shuffled.reshape(height * width)

    def __call__(self, images: Tensor) -> Tensor:
        if images.ndim not in (3, 4):
            raise ValueError(f"BlockShuffle takes (C, H, W) or (N, C, H, W) tensors, got shape {tuple(images.shape)}")
        single = images.ndim == 3
        batch = images.unsqueeze(0) if single else images
        n, c, h, w = batch.shape
        index = self.index(c, h, w).to(batch.device, non_blocking=True)  # no wait for the device's queue
        if self.block_size == "*":
            flat = batch.reshape(n, c * h * w)
            out = torch.gather(flat, 1, index.expand(n, -1))
        else:
            flat = batch.reshape(n, c, h * w)
            out = torch.gather(flat, 2, index.expand(n, c, -1))
        out = out.reshape(n, c, h, w)
        return out[0] if single else out


def _divisors(height: int, width: int) -> list[int]:
    return [d for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0]
