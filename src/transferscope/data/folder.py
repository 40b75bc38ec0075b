"""Any folder of images in torchvision's ``ImageFolder`` layout as a domain::

    <root>/<class>/<image>                      split here, per class, by test_fraction
    <root>/train/<class>/<image>                or split already made
    <root>/test/<class>/<image>

Class folders and image files are found with ``torchvision.datasets.folder``
(``find_classes``, ``make_dataset``, ``IMG_EXTENSIONS``). ``num_classes`` keeps the
first classes in sorted order; ``n_train`` / ``n_test`` keep a seeded subsample with each
class's share (when smaller than the split); at least two classes are required.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .domain import Domain
from .files import IMAGENET_MEAN, IMAGENET_STD, FileImageDataset, seeded_order


def shuffled_classes(labels: Sequence[int], seed: int) -> list[list[int]]:
    """The indices of each class (classes in label order), each list in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.as_tensor(labels)
    return [torch.nonzero(values == label).flatten()[torch.randperm(int((values == label).sum()),
                                                                    generator=generator)].tolist()
            for label in values.unique().tolist()]


def split_per_class(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded train/test split that puts ``round(test_fraction * n_c)`` of
    each class's ``n_c`` examples in test."""
    train, test = [], []
    for members in shuffled_classes(labels, seed):
        n_test = round(test_fraction * len(members))
        test += members[:n_test]
        train += members[n_test:]
    return train, test


def stratified_subsample(labels: Sequence[int], keep: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded subsample of ``keep`` examples in which each class has
    its share of ``labels`` (quotas ``keep * n_c / n`` rounded by largest remainder);
    all indices when ``keep`` is None or not smaller than ``len(labels)``."""
    if keep is None or keep >= len(labels):
        return list(range(len(labels)))
    members = shuffled_classes(labels, seed)
    quotas = torch.tensor([len(m) * keep / len(labels) for m in members], dtype=torch.float64)
    take = quotas.floor().long()
    by_remainder = torch.argsort(take - quotas, stable=True)  # largest fractional part first
    take[by_remainder[:keep - int(take.sum())]] += 1
    return sorted(index for chosen, k in zip(members, take.tolist()) for index in chosen[:k])


def check_subsample(keep: int | None, available: int, setting: str, where: str) -> None:
    """``n_train`` / ``n_test`` may not ask for more examples than a split has: the run
    would silently train or test on fewer than the study file says."""
    if keep is not None and keep > available:
        raise ValueError(f"{setting} {keep} asked for, but {where} has {available} examples; lower {setting} to at "
                         f"most {available}, or leave it out to use them all")


def first_classes(classes: list[str], class_to_idx: dict[str, int], num_classes: int | None,
                  root: Path) -> tuple[list[str], dict[str, int]]:
    """The first ``num_classes`` of the sorted ``classes`` and their indices (all when
    None); more than there are is an error."""
    if num_classes is not None and num_classes > len(classes):
        raise ValueError(f"num_classes {num_classes} asked for, but {root} has {len(classes)} class folders "
                         f"({', '.join(classes)}): lower num_classes or add class folders")
    kept = classes[:num_classes]
    return kept, {c: class_to_idx[c] for c in kept}


def image_folder_domain(root: str | os.PathLike, image_size: int = 224, test_fraction: float = 0.2, seed: int = 0,
                        n_train: int | None = None, n_test: int | None = None, num_classes: int | None = None,
                        extensions: tuple[str, ...] | None = None, name: str | None = None,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Domain:
    """A single-label domain from the class folders under ``root``: ``root/train`` and
    ``root/test`` when both exist (same class folders in each), else the classes under
    ``root`` split per class with ``test_fraction`` and ``seed``. ``num_classes`` keeps
    the first classes in sorted order (None = all; at least two); ``n_train`` /
    ``n_test`` keep a :func:`stratified_subsample` of each split, seeded with ``seed``
    (None, or more than the split holds = all). Examples are stored in
    a seeded random order (see :func:`~transferscope.data.files.seeded_order`). Images:
    decoded as :class:`~transferscope.data.files.FileImageDataset` does (shorter side
    resized to 8/7 of ``image_size`` from 64 pixels, centre crop), seen by the network at
    ``image_size``; normalised with ``mean``/``std`` (ImageNet's by default).
    ``extensions``: torchvision's ``IMG_EXTENSIONS`` by default.
    ``name`` defaults to the folder's name."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset  # a 3 s import

    extensions = IMG_EXTENSIONS if extensions is None else extensions
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        raise ValueError(f"{root} has a {'train' if has_train else 'test'} folder but no "
                         f"{'test' if has_train else 'train'} folder: give both, or neither (one folder per class "
                         f"under {root}, split by test_fraction)")
    if has_train:
        classes, class_to_idx = find_classes(root / "train")
        test_classes, _ = find_classes(root / "test")
        if test_classes != classes:
            raise ValueError(f"class folders of {root / 'test'} differ from those of {root / 'train'}: "
                             f"missing in test {sorted(set(classes) - set(test_classes))}, "
                             f"not in train {sorted(set(test_classes) - set(classes))}")
        classes, class_to_idx = first_classes(classes, class_to_idx, num_classes, root)
        train = make_dataset(root / "train", class_to_idx, extensions=extensions)
        test = make_dataset(root / "test", class_to_idx, extensions=extensions)
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        found, found_to_idx = find_classes(root)
        classes, class_to_idx = first_classes(found, found_to_idx, num_classes, root)
        samples = make_dataset(root, class_to_idx, extensions=extensions)
        train_index, test_index = split_per_class([label for _, label in samples], test_fraction, seed)
        train, test = [samples[i] for i in train_index], [samples[i] for i in test_index]
        if not train or not test:
            raise ValueError(f"test_fraction {test_fraction} leaves no {'test' if train else 'training'} image "
                             f"from the {len(samples)} images in {root}: {'raise' if train else 'lower'} it")

    def dataset(samples: list[tuple[str, int]], keep: int | None, split: str) -> FileImageDataset:
        check_subsample(keep, len(samples), f"n_{split}", f"the {split} split of {root}")
        samples = [samples[i] for i in stratified_subsample([label for _, label in samples], keep, seed)]
        order = seeded_order(len(samples), seed).tolist()
        return FileImageDataset([samples[i][0] for i in order], [samples[i][1] for i in order], image_size, classes)

    return Domain(name=name or root.name, train=dataset(train, n_train, "train"), test=dataset(test, n_test, "test"),
                  classes=classes, multilabel=False, mean=list(mean), std=list(std))
