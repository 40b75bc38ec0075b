"""A Hugging Face ``datasets`` data set (``kind: hf``) as a domain: a folder written by
``save_to_disk`` (read with ``load_from_disk``) or a hub name (``load_dataset``, through
the library's own cache; set ``HF_HUB_OFFLINE=1`` to use that cache without a network).

A ``DatasetDict`` gives its splits ``train_split`` and ``test_split`` (default
``"train"`` / ``"test"``); a single ``Dataset`` is split like a CSV without a split
column (:func:`~.csv_table.split_rows`). ``image_column`` (default ``"image"``) holds an
``Image`` feature (or raw bytes); images are decoded on access by the same code as image
files (:func:`~.files.read_image`: RGB, shorter side resized to the decode size of
``image_size``, centre crop), so a data set of PNG files gives the pixels those files
give. Labels are one
``label_column`` (default ``"label"``; class names from its ``ClassLabel`` feature when
it has one, else the sorted values) or several 0/1 ``label_columns`` (multi-label);
``num_classes``, ``n_train`` and ``n_test`` as for a CSV (:mod:`.csv_table`).

``datasets`` is an optional extra: ``pip install 'transferscope[hf]'``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from torch import Tensor
from torch.utils.data import Dataset

from .csv_table import labelled_splits, require_columns, wanted_labels
from .domain import Domain
from .files import IMAGENET_MEAN, IMAGENET_STD, ImageReadError, decode_size_for, read_image


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as error:
        raise ImportError("data kind 'hf' needs the optional extra: pip install 'transferscope[hf]'") from error
    return datasets


def load_hf(root: str) -> Any:
    """The ``Dataset`` or ``DatasetDict`` at ``root``: a ``save_to_disk`` folder, else a
    hub name; a hub name that cannot be loaded (offline with no cache, unknown) is a
    one-line ValueError."""
    datasets = _datasets()
    if Path(root).exists():
        return datasets.load_from_disk(root)
    try:
        return datasets.load_dataset(root)
    except OSError as error:  # ConnectionError offline, DatasetNotFoundError for an unknown name
        reason = " ".join(str(error).split())
        raise ValueError(f"Hugging Face data set {root!r} is no folder here and cannot be loaded from the hub "
                         f"({type(error).__name__}: {reason}); give the folder save_to_disk wrote, or a hub name "
                         "that is in the datasets cache (HF_HOME) or reachable") from error


def hf_splits(loaded: Any, root: str, train_split: str, test_split: str) -> tuple[Any, Any | None]:
    """The train and test ``Dataset`` of a ``DatasetDict`` (test None for a single
    ``Dataset``, which is split later); a missing split name is an error naming those there."""
    if not hasattr(loaded, "keys"):
        return loaded, None
    for split, setting in ((train_split, "train_split"), (test_split, "test_split")):
        if split not in loaded:
            raise ValueError(f"Hugging Face data set {root} has no split {split!r} (its splits: "
                             f"{', '.join(loaded.keys())}); set {setting} to one of them")
    return loaded[train_split], loaded[test_split]


def encoded_images(table: Any, image_column: str, source: str) -> Any:
    """The one-column ``Dataset`` of ``image_column`` whose items are encoded images (the
    ``Image`` feature with ``decode=False``: ``{"bytes", "path"}``; or raw bytes)."""
    datasets = _datasets()
    feature = table.features[image_column]
    if isinstance(feature, datasets.Image):
        return table.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return table.select_columns([image_column])
    images = [name for name, kind in table.features.items() if isinstance(kind, datasets.Image)]
    raise ValueError(f"column {image_column!r} of {source} holds {feature}, not images; set image_column to a column "
                     f"of images ({', '.join(images) or 'it has none'})")


class HFImageDataset(Dataset):
    """Images of a Hugging Face data set decoded on access like image files: item ``i``
    is ``(uint8 (3, S, S), targets[i])`` with ``S = decode_size``
    (:func:`~.files.read_image`, :func:`~.files.decode_size_for` ``(image_size)``, as a
    :class:`~.files.FileImageDataset`; the loaders crop or resample to ``image_size``),
    read from row ``rows[i]`` of ``images`` (see :func:`encoded_images`). Pickles into
    ``DataLoader`` workers as the memory-mapped table's file names. In a study, each
    split is decoded once into the decoded-image cache (:mod:`.image_cache`)."""

    def __init__(self, images: Any, rows: Sequence[int], targets: Tensor, image_size: int, classes: Sequence[str],
                 source: str, decode_size: int | None = None) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
        self.images, self.rows, self.targets = images, list(rows), targets
        self.image_size, self.classes, self.source = image_size, list(classes), source
        self.decode_size = decode_size_for(image_size, decode_size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        row = self.rows[index]
        encoded = self.images[row][self.images.column_names[0]]
        if isinstance(encoded, bytes):
            encoded = {"bytes": encoded, "path": None}
        try:
            image = read_image(io.BytesIO(encoded["bytes"]) if encoded["bytes"] else encoded["path"], self.decode_size)
        except ImageReadError as error:
            raise ImageReadError(f"{self.source} row {row}", error.reason) from error
        return image, self.targets[index]

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2

    def subset(self, index: Sequence[int] | Tensor) -> "HFImageDataset":
        chosen = [int(i) for i in index]
        return HFImageDataset(self.images, [self.rows[i] for i in chosen], self.targets[chosen], self.image_size,
                              self.classes, self.source, self.decode_size)

    def content(self) -> dict[str, Any]:
        """What decides the pixels of this split, for the decoded-image cache
        (:func:`~.image_cache.cache_key`): the data set's fingerprint (the ``datasets``
        library's digest of its data and of every transform, here the image column's
        selection), each Arrow file's path, size and modification time, the image
        column, and the rows in order."""
        files = []
        for cache_file in self.images.cache_files:
            stat = os.stat(cache_file["filename"])
            files.append([cache_file["filename"], stat.st_size, stat.st_mtime_ns])
        return {"fingerprint": self.images._fingerprint, "arrow_files": files,
                "image_column": self.images.column_names[0], "rows": self.rows}


def hf_domain(root: str | os.PathLike, *, image_column: str = "image", label_column: str | None = None,
              label_columns: Sequence[str] | None = None, train_split: str = "train", test_split: str = "test",
              image_size: int = 224, n_train: int | None = None, n_test: int | None = None,
              num_classes: int | None = None, seed: int = 0, name: str | None = None,
              mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Domain:
    """A Hugging Face data set as a domain (see the module docstring); splits are
    :class:`HFImageDataset` s, normalised with ``mean``/``std`` (ImageNet's by default).
    ``name`` defaults to the folder's name or the hub name's last part."""
    root = str(root)
    train_table, test_table = hf_splits(load_hf(root), root, train_split, test_split)
    label_column, wanted = wanted_labels(label_column, label_columns)
    labels = next(iter(wanted.values()))
    source = f"Hugging Face data set {root}"
    tables = [train_table] if test_table is None else [train_table, test_table]
    for table in tables:
        require_columns(table.column_names, {"image_column": [image_column], **wanted}, source)
    feature = train_table.features[labels[0]]
    names = feature.names if label_columns is None and hasattr(feature, "names") else None
    frame = pd.concat([label_frame(table, labels, split if test_table is not None else None)
                       for table, split in zip(tables, (train_split, test_split))])
    in_test = None if test_table is None else np.r_[np.zeros(len(train_table), bool), np.ones(len(test_table), bool)]
    targets, classes, train, test = labelled_splits(
        frame, label_column=label_column, label_columns=label_columns, in_test=in_test, n_train=n_train,
        n_test=n_test, num_classes=num_classes, seed=seed, source=source, names=names)

    def part(rows: list[int], split: int) -> HFImageDataset:
        """The rows of ``frame`` of one split, as rows of that split's table (one table
        holds both splits of a single Dataset)."""
        if test_table is None:
            table, offset, where = train_table, 0, source
        else:
            table, offset = tables[split], split * len(train_table)
            where = f"{source} split {(train_split, test_split)[split]}"
        return HFImageDataset(encoded_images(table, image_column, source), [row - offset for row in rows],
                              targets[rows], image_size, classes, where)

    return Domain(name=name or Path(root).name, train=part(train, 0), test=part(test, 1), classes=classes,
                  multilabel=label_columns is not None, mean=list(mean), std=list(std))


def label_frame(table: Any, labels: list[str], split: str | None) -> pd.DataFrame:
    """The label columns of one table, rows indexed ``"[split <s> ]row <i>"`` for errors."""
    frame = table.select_columns(labels).to_pandas()
    frame.index = [f"{'' if split is None else f'split {split} '}row {row}" for row in range(len(frame))]
    return frame
