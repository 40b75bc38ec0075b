"""In-memory image sets as uint8 tensors and a batch loader with no per-item Python.

Small data sets (the synthetic domains, a subsample of a real one) live as one uint8
tensor ``(N, C, H, W)`` (decoded real images: a memory-mapped file, see
:mod:`.image_cache`); file-backed datasets yield uint8 images through a torch
``DataLoader``. Either way the loader moves the uint8 batch to its device and there
converts, crops or augments, normalises and block-shuffles the whole batch. Any other
iterable of ``(inputs, targets)`` batches (a plain torch ``DataLoader``) works with
every analysis too.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Iterator, Sequence, cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..seeding import torch_generator
from .shuffle import BlockShuffle

AUGMENT_MODES = ("auto", "resized_crop", "pad_crop", "none")
LARGE_IMAGE = 64
"""From this side on (pixels), ``augment="auto"`` is the random resized crop and files
are decoded larger than the network sees them (:func:`~.files.decode_size_for`)."""
PAD = 4  # pixels of the padded crop
RESIZED_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
RESIZED_CROP_ATTEMPTS = 10


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


def resolve_augment(augment: str | bool, image_size: int) -> str:
    """The augmentation a loader of ``image_size``-pixel images applies: ``"auto"`` (or
    ``True``) is ``"pad_crop"`` below :data:`LARGE_IMAGE` pixels and ``"resized_crop"``
    from there on; ``False`` is ``"none"``."""
    if isinstance(augment, bool):
        augment = "auto" if augment else "none"
    if augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)} (or true/false), got {augment!r}")
    if augment == "auto":
        return "pad_crop" if image_size < LARGE_IMAGE else "resized_crop"
    return augment


def random_crop_flip(batch: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random ``padding``-pixel translation (zero padded) and horizontal flip, per image,
    as one gather over the batch (the standard CIFAR augmentation). The draws come from
    ``generator`` (a CPU one); the gather runs where ``batch`` is (the draws are copied
    there without waiting for the device, so that the CPU prepares the next batch while
    the device trains on this one)."""
    n, c, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    rows = torch.arange(h)[None, :] + dy[:, None]
    device = batch.device
    return padded[torch.arange(n, device=device)[:, None, None, None], torch.arange(c, device=device)[None, :, None, None],
                  rows.to(device, non_blocking=True)[:, None, :, None],
                  cols.to(device, non_blocking=True)[:, None, None, :]]


def resized_crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
                       scale: tuple[float, float] = RESIZED_CROP_SCALE,
                       ratio: tuple[float, float] = RESIZED_CROP_RATIO) -> Tensor:
    """int64 ``(n, 4)`` boxes ``(top, left, box_height, box_width)``, torchvision's
    ``RandomResizedCrop.get_params`` for a whole batch: per image, the first of
    :data:`RESIZED_CROP_ATTEMPTS` draws of an area fraction in ``scale`` and a
    log-uniform aspect ratio in ``ratio`` that fits the image, at a uniform position;
    when none fits, the central crop of the nearest allowed ratio."""
    attempts = RESIZED_CROP_ATTEMPTS
    area = torch.rand(n, attempts, generator=generator) * (scale[1] - scale[0]) + scale[0]
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(n, attempts, generator=generator) * (high - low) + low)
    target = area * (height * width)
    box_w = torch.sqrt(target * aspect).round().long()
    box_h = torch.sqrt(target / aspect).round().long()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits
    box_h, box_w = box_h.gather(1, first)[:, 0], box_w.gather(1, first)[:, 0]
    top = (torch.rand(n, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - box_w + 1)).long()
    fallback_h, fallback_w = _central_box(height, width, ratio)
    none_fit = ~fits.any(1)
    box_h = torch.where(none_fit, fallback_h, box_h)
    box_w = torch.where(none_fit, fallback_w, box_w)
    top = torch.where(none_fit, (height - box_h) // 2, top)
    left = torch.where(none_fit, (width - box_w) // 2, left)
    return torch.stack((top, left, box_h, box_w), 1)


def _central_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """Height and width of torchvision's fallback crop: the whole image, narrowed to the
    nearest aspect ratio in ``ratio``."""
    if width / height < min(ratio):
        return int(round(width / min(ratio))), width
    if width / height > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def resample_boxes(images: Tensor, boxes: Tensor, flip: Tensor, size: tuple[int, int]) -> Tensor:
    """Each image's box ``(top, left, box_height, box_width)`` resampled to ``size``,
    mirrored where ``flip``: one bilinear ``grid_sample`` over the float batch, sampling
    at half-pixel centres clamped to the box, as ``resized_crop`` followed by a flip does
    (torchvision, ``antialias=False``)."""
    n, _, height, width = images.shape
    boxes = boxes.to(images.device, torch.float32, non_blocking=True)  # no wait for the device's queue
    top, left, box_h, box_w = boxes.unbind(1)

    def centres(start: Tensor, extent: Tensor, steps: int) -> Tensor:
        offsets = (torch.arange(steps, device=images.device, dtype=torch.float32) + 0.5) / steps
        return torch.minimum(torch.maximum(start[:, None] + offsets * extent[:, None] - 0.5, start[:, None]),
                             (start + extent - 1)[:, None])

    ys = centres(top, box_h, size[0])
    xs = centres(left, box_w, size[1])
    xs = torch.where(flip.to(images.device, non_blocking=True)[:, None], xs.flip(1), xs)
    grid_x = ((2 * xs + 1) / width - 1)[:, None, :].expand(n, size[0], size[1])
    grid_y = ((2 * ys + 1) / height - 1)[:, :, None].expand(n, size[0], size[1])
    return torch.nn.functional.grid_sample(images, torch.stack((grid_x, grid_y), -1), mode="bilinear",
                                           padding_mode="border", align_corners=False)


def resized_crop_flip(images: Tensor, boxes: Tensor, flip: Tensor, size: tuple[int, int],
                      rows: Tensor | None = None) -> Tensor:
    """Grey levels (float32 integers 0..255) ``(len(boxes), C, *size)``: the box ``k``
    ``(top, left, box_height, box_width)`` of the uint8 image ``rows[k]`` (default ``k``)
    of ``images``, resampled bilinearly to ``size`` (half-pixel centres, no antialiasing)
    and mirrored where ``flip[k]``: torchvision's ``resized_crop(..., antialias=False)``
    of a uint8 image, then ``horizontal_flip``. On the CPU, torch's uint8 kernel per
    image, reading the boxes in place (no copy of the stored images); elsewhere one
    batched :func:`resample_boxes`, rounded (within one grey level of the CPU's)."""
    if images.device.type != "cpu":
        return resample_boxes((images if rows is None else images[rows]).float(), boxes, flip, size).round_()
    out = torch.empty((len(boxes), images.shape[1], *size))
    rows_list = range(len(boxes)) if rows is None else rows.tolist()
    for k, (row, (top, left, height, width), mirror) in enumerate(zip(rows_list, boxes.tolist(), flip.tolist())):
        crop = torch.nn.functional.interpolate(images[row:row + 1, :, top:top + height, left:left + width], size=size,
                                               mode="bilinear", align_corners=False, antialias=False)[0]
        out[k].copy_(crop.flip(-1) if mirror else crop)
    return out


def centre_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """The centre ``size`` of each image (offsets rounded as torchvision's ``center_crop``)."""
    height, width = images.shape[-2:]
    if (height, width) == size:
        return images
    top, left = int(round((height - size[0]) / 2)), int(round((width - size[1]) / 2))
    return images[..., top:top + size[0], left:left + size[1]]


class ImageLoader:
    """Iterate ``(inputs, targets)`` batches of an :class:`ImageSet` (indexed in memory)
    or of a dataset of ``(uint8 (C, H, W), target)`` items (read by ``num_workers``).

    Each uint8 batch moves to ``device`` first (a quarter of the float bytes); there it
    becomes ``image_size`` square (default: the stored size) and ``(x / 255 - mean) /
    std``, augmented by ``augment`` (refused together with a block shuffle, as in the
    paper), and finally block-shuffled:

    - ``"none"``: the centre ``image_size`` crop of the stored image (the ImageNet
      evaluation transform, ``Resize(256)`` + ``CenterCrop(224)``, for images stored at
      256 pixels);
    - ``"pad_crop"``: that crop, shifted by up to 4 pixels (zero padded) and flipped
      with probability 1/2;
    - ``"resized_crop"``: ``RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4,
      4/3))`` of the stored uint8 image (bilinear, no antialiasing) and a flip
      (:func:`resized_crop_flip`);
    - ``"auto"`` (or ``True``): ``"pad_crop"`` below 64 pixels, else ``"resized_crop"``;
      ``False``: ``"none"``. The ``augment`` attribute holds the resolved mode.

    The order of examples and the augmentation draws depend on ``(seed, epoch)`` only
    (drawn on the CPU whatever the device), so any epoch can be replayed exactly
    (``set_epoch``).
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
        augment: str | bool = "none",
        image_size: int | None = None,
        block_shuffle: BlockShuffle | None = None,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.image_size = image_size
        decides = augment is True or augment == "auto"  # only "auto" depends on the size
        side = image_size if image_size is not None or not decides else _stored_side(data)
        self.augment = resolve_augment(augment, side or 0)
        if self.augment != "none" and block_shuffle is not None:
            raise ValueError("augmentation must be off for block-shuffled data (Sec. 3.1 of the paper)")
        self.data = data
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.scale, self.shift = 1 / (255.0 * self.std), -self.mean / self.std  # the same map in two in-place steps
        self.shuffle = shuffle
        self.seed = seed
        self.block_shuffle = block_shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.num_workers = num_workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = split_size(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def prepare(self, images: Tensor, generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        """uint8 batch (or the ``rows`` of uint8 ``images``) -> on the device: cropped or
        augmented, normalised, shuffled floats."""
        generator = generator or torch.Generator().manual_seed(self.seed)
        in_place = self.augment == "resized_crop" and self.device.type == "cpu"  # crops read from the store
        if rows is not None and not in_place:
            images, rows = gather(images, rows, pin=self.device.type == "cuda"), None
        images = images.to(self.device, non_blocking=True)
        count, (height, width) = len(images) if rows is None else len(rows), images.shape[-2:]
        size = (height, width) if self.image_size is None else (self.image_size, self.image_size)
        if size[0] > height or size[1] > width:
            raise ValueError(f"images of {height}x{width} pixels cannot be cropped to {size[0]}x{size[1]}; store "
                             "them at least as large as image_size")
        if self.augment == "resized_crop":
            boxes = resized_crop_boxes(count, height, width, generator)
            flip = torch.rand(count, generator=generator) < 0.5
            x = resized_crop_flip(images, boxes, flip, size, rows).mul_(self.scale).add_(self.shift)
        else:
            x = (centre_crop(images, size).float() / 255.0 - self.mean) / self.std
            if self.augment == "pad_crop":
                x = random_crop_flip(x, PAD, generator)
        if self.block_shuffle is not None:
            x = self.block_shuffle(x)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch_generator(self.seed, "loader", self.epoch)
        n = split_size(self.data)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        chunks = [order[start:start + self.batch_size] for start in range(0, len(self) * self.batch_size, self.batch_size)]
        pin = self.device.type == "cuda"  # pinned batches copy to the GPU while it computes
        if isinstance(self.data, ImageSet):
            for rows in chunks:
                targets = gather(self.data.targets, rows, pin).to(self.device, non_blocking=True)
                yield self.prepare(self.data.images, generator, rows), targets
            return
        for images, targets in DataLoader(self.data, batch_sampler=[c.tolist() for c in chunks],
                                          num_workers=self.num_workers, pin_memory=pin):
            yield self.prepare(images, generator), targets.to(self.device, non_blocking=True)


def gather(tensor: Tensor, index: Tensor, pin: bool = False) -> Tensor:
    """``tensor[index]`` along the first dimension (``index_select``: a copy per row, 15x
    faster than advanced indexing on the CPU), into page-locked memory when ``pin``;
    channels-last images (a decoded-image cache) stay channels last."""
    if tensor.ndim == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return gather(tensor.permute(0, 2, 3, 1), index, pin).permute(0, 3, 1, 2)
    if not pin:
        return torch.index_select(tensor, 0, index)
    out = torch.empty((len(index), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
    return torch.index_select(tensor, 0, index, out=out)


def _stored_side(data: ImageSet | Dataset) -> int:
    """Side of a split's stored images (what ``"auto"`` decides on when no image size is given)."""
    if isinstance(data, ImageSet):
        return int(data.images.shape[-1])
    side = getattr(data, "image_size", None)
    return int(side) if side is not None else int(data[0][0].shape[-1])
