"""DomainNet (Peng et al., "Moment Matching for Multi-Source Domain Adaptation", ICCV
2019) read from its official split files, with the protocol of the transfer paper
(Neyshabur et al. 2020): train and test each subsampled to 50,000 images with
seed 2020 when larger.

Expected layout (the official download, unzipped)::

    <root>/<name>_train.txt     lines "<name>/<class>/<file>.jpg <label>"
    <root>/<name>_test.txt
    <root>/<name>/<class>/<file>.jpg
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from .domain import Domain
from .files import IMAGENET_MEAN, IMAGENET_STD, FileImageDataset, seeded_order


@dataclass(frozen=True)
class SplitLine:
    """One example of a split file, with where it was read (for error messages)."""

    path: str
    label: int
    file: Path
    line: int


def read_split_file(path: Path) -> list[SplitLine]:
    """Parse a DomainNet split file: one ``relative/path.jpg label`` per line (blank
    lines skipped); a malformed line is an error naming the file and line number."""
    if not path.is_file():
        raise FileNotFoundError(
            f"DomainNet split file {path} not found: root must hold the official split files "
            f"<name>_train.txt and <name>_test.txt (lines '<name>/<class>/<file>.jpg <label>') "
            f"next to the <name>/ image folder")
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        fields = text.strip().rsplit(maxsplit=1)
        if len(fields) != 2 or not fields[1].isdigit():
            raise ValueError(f"{path}, line {number}: expected '<relative/image/path> <label>' "
                             f"with a non-negative integer label, got {text!r}")
        lines.append(SplitLine(fields[0], int(fields[1]), path, number))
    if not lines:
        raise ValueError(f"DomainNet split file {path} lists no images")
    return lines


def class_names(lines: Sequence[SplitLine]) -> list[str]:
    """Class names sorted by label: the folder holding each image (``<name>/<class>/<file>``).
    Labels and folders must correspond one to one, and labels run from 0 to K-1."""
    folder_of: dict[int, str] = {}
    label_of: dict[str, int] = {}
    for item in lines:
        folder = PurePosixPath(item.path).parent.name
        known_folder = folder_of.setdefault(item.label, folder)
        known_label = label_of.setdefault(folder, item.label)
        if (known_folder, known_label) != (folder, item.label):
            raise ValueError(f"{item.file}, line {item.line}: image {item.path} (class folder {folder!r}) has label "
                             f"{item.label}, but elsewhere in the split files label {item.label} is class "
                             f"{known_folder!r} and class {folder!r} is label {known_label}")
    count = len(folder_of)
    for item in lines:
        if item.label >= count:
            raise ValueError(f"{item.file}, line {item.line}: label {item.label} out of range: the split files "
                             f"name {count} class folders, so labels must run from 0 to {count - 1}")
    return [folder_of[label] for label in range(count)]


def domainnet_domain(root: str | os.PathLike, name: str, image_size: int = 224, n_train: int | None = 50_000,
                     n_test: int | None = 50_000, seed: int = 2020, num_classes: int | None = None,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Domain:
    """The DomainNet domain ``name`` (e.g. real, clipart, quickdraw) under ``root``.

    ``num_classes`` keeps the classes with labels ``0 .. num_classes - 1`` (None = all).
    Train and test each keep a seeded random ``n_train`` / ``n_test`` of their split
    file when larger (``None`` = all), stored in seeded random order (see
    :func:`~transferscope.data.files.seeded_order`). Images: decoded as
    :class:`~transferscope.data.files.FileImageDataset` does (shorter side resized to 8/7
    of ``image_size`` from 64 pixels, centre crop), seen by the network at ``image_size``;
    normalised with ``mean``/``std`` (ImageNet's by default).
    """
    root = Path(root)
    train_lines = read_split_file(root / f"{name}_train.txt")
    test_lines = read_split_file(root / f"{name}_test.txt")
    classes = class_names(train_lines + test_lines)
    if num_classes is not None:
        if num_classes > len(classes):
            raise ValueError(f"num_classes {num_classes} asked for, but the {name} split files of {root} name "
                             f"{len(classes)} classes: lower num_classes")
        classes = classes[:num_classes]
        train_lines, test_lines = ([line for line in lines if line.label < num_classes]
                                   for lines in (train_lines, test_lines))

    def split(lines: list[SplitLine], keep: int | None) -> FileImageDataset:
        order = seeded_order(len(lines), seed, keep).tolist()
        return FileImageDataset([root / lines[i].path for i in order], [lines[i].label for i in order],
                                image_size, classes)

    return Domain(name=name, train=split(train_lines, n_train), test=split(test_lines, n_test), classes=classes,
                  multilabel=False, mean=list(mean), std=list(std))
