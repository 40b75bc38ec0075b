"""A table of image paths and labels (``kind: csv``) as a domain, and the labelled-table
logic it shares with Hugging Face data sets (:mod:`.hf_datasets`).

``root`` is one CSV file, or a folder holding ``train.csv`` and ``test.csv`` (the CSV
counterpart of an image folder's ``train/`` and ``test/``)::

    path,label                    single-label: one column of class names or integers
    cats/1.png,cat
    path,cardiomegaly,edema       multi-label (label_columns): one 0/1 column per label
    xray/1.png,1,0

A relative image path resolves against the folder of the CSV that lists it. One CSV is
split by its ``split_column`` (rows whose value is ``train_split`` / ``test_split``,
default ``"train"`` / ``"test"``; other rows, e.g. ``"val"``, are left out), or without
one like an image folder: a seeded split with :data:`TEST_FRACTION` of each class in
test. Classes are the label values in sorted order (numerically for numbers, so the
integers ``0..K-1`` are their own class indices); ``num_classes`` keeps the first.
``n_train`` / ``n_test`` keep a seeded subsample of each split (each class's share, as
:func:`~.folder.stratified_subsample`; a plain seeded subsample for multi-label).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .domain import Domain
from .files import IMAGENET_MEAN, IMAGENET_STD, FileImageDataset, seeded_order
from .folder import check_subsample, split_per_class, stratified_subsample

TEST_FRACTION = 0.2  # the test share of a table with no split of its own (the folder kind's default)


def require_columns(columns: Sequence[str], wanted: Mapping[str, Sequence[str]], source: str) -> None:
    """A ValueError naming the first column of ``wanted`` (setting -> column names)
    that ``columns`` lacks, the columns there are, and the setting to change."""
    for setting, names in wanted.items():
        missing = [name for name in names if name not in columns]
        if missing:
            raise ValueError(f"{source} has no column {', '.join(map(repr, missing))} (its columns: "
                             f"{', '.join(map(str, columns))}); set {setting} to the right column")


def wanted_labels(label_column: str | None,
                  label_columns: Sequence[str] | None) -> tuple[str | None, dict[str, list[str]]]:
    """The label column (``"label"`` when neither is given; None for multi-label) and the
    label columns a table must have, keyed by their setting (for :func:`require_columns`)."""
    if label_columns is not None:
        return None, {"label_columns": list(label_columns)}
    label_column = label_column or "label"
    return label_column, {"label_column": [label_column]}


def class_targets(values: pd.Series, column: str, names: Sequence[str] | None = None) -> tuple[Tensor, list[str]]:
    """int64 class indices of a label column and the class names: ``names`` when the
    values are already indices into them (a ``ClassLabel``), else the distinct values
    sorted (numbers numerically). The index of ``values`` names each row in errors."""
    blank = values.isna().to_numpy()
    if blank.any():
        raise ValueError(f"{values.index[blank.argmax()]} has no label in column {column!r}: give every row a label "
                         "or remove the row")
    if names is not None:
        outside = ~values.isin(range(len(names))).to_numpy()
        if outside.any():
            raise ValueError(f"{values.index[outside.argmax()]}: label {values.iloc[outside.argmax()]!r} of column "
                             f"{column!r} is no class index 0..{len(names) - 1} (-1 means unlabelled): use a split "
                             "with labels")
        return torch.tensor(values.to_numpy(np.int64)), list(names)
    if not pd.api.types.is_numeric_dtype(values):
        values = values.astype(str)
    distinct = sorted(values.unique().tolist())
    index = {value: i for i, value in enumerate(distinct)}
    return torch.tensor(values.map(index).to_numpy(np.int64)), [str(value) for value in distinct]


def multilabel_targets(frame: pd.DataFrame, columns: Sequence[str]) -> Tensor:
    """float32 ``(N, L)`` targets of the 0/1 ``columns``; any other value (or a blank)
    is a ValueError naming its row (the frame's index) and column."""
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(f"{frame.index[row]}: column {columns[column]!r} holds {frame.iloc[row][columns[column]]!r}, "
                         "not 0 or 1; label_columns must be 0/1 columns (one per label of a multi-label data set)")
    return torch.tensor(values, dtype=torch.float32)


def table_targets(frame: pd.DataFrame, label_column: str | None, label_columns: Sequence[str] | None,
                  names: Sequence[str] | None = None) -> tuple[Tensor, list[str]]:
    """Targets and class (or label) names of a table: 0/1 ``label_columns`` (multi-label)
    or one ``label_column`` (see :func:`class_targets`)."""
    if label_columns is not None:
        return multilabel_targets(frame, label_columns), list(label_columns)
    assert label_column is not None
    return class_targets(frame[label_column], label_column, names)


def keep_first_classes(targets: Tensor, classes: list[str], num_classes: int | None,
                       source: str) -> tuple[Tensor, list[str]]:
    """A mask of the rows of the first ``num_classes`` classes (all when None) and
    those classes; more than there are is an error."""
    if num_classes is None:
        return torch.ones(len(targets), dtype=torch.bool), classes
    if num_classes > len(classes):
        raise ValueError(f"num_classes {num_classes} asked for, but {source} has {len(classes)} classes "
                         f"({', '.join(classes)}): lower num_classes")
    return targets < num_classes, classes[:num_classes]


def split_rows(targets: Tensor, in_test: np.ndarray | None, seed: int, source: str) -> tuple[list[int], list[int]]:
    """Row indices of train and test: ``in_test`` where the table has its own split, else
    a seeded split with :data:`TEST_FRACTION` in test (per class for class targets)."""
    if in_test is not None:
        return np.flatnonzero(~in_test).tolist(), np.flatnonzero(in_test).tolist()
    if targets.ndim == 1:
        train, test = split_per_class(targets.tolist(), TEST_FRACTION, seed)
    else:
        order = seeded_order(len(targets), seed).tolist()
        cut = round(TEST_FRACTION * len(order))
        train, test = order[cut:], order[:cut]
    if not train or not test:
        raise ValueError(f"{source}: a {TEST_FRACTION:.0%} test split of {len(targets)} rows leaves no "
                         f"{'test' if train else 'training'} row; add rows or give the test rows yourself")
    return train, test


def stored_rows(rows: Sequence[int], targets: Tensor, keep: int | None, seed: int) -> list[int]:
    """The rows of one split kept by ``keep`` (n_train / n_test: each class's share of a
    seeded subsample, or a seeded subsample for multi-label; all when None), in the
    seeded order the domain stores them in (see :func:`~.files.seeded_order`)."""
    part = targets[list(rows)]
    if part.ndim == 1:
        kept = stratified_subsample(part.tolist(), keep, seed)
    else:
        kept = sorted(seeded_order(len(part), seed, keep).tolist())
    return [rows[kept[i]] for i in seeded_order(len(kept), seed).tolist()]


def labelled_splits(frame: pd.DataFrame, *, label_column: str | None, label_columns: Sequence[str] | None,
                    in_test: np.ndarray | None, n_train: int | None, n_test: int | None, num_classes: int | None,
                    seed: int, source: str,
                    names: Sequence[str] | None = None) -> tuple[Tensor, list[str], list[int], list[int]]:
    """Targets of every row of ``frame``, the class names, and the stored train and test
    rows: :func:`table_targets`, :func:`keep_first_classes`, :func:`split_rows`,
    :func:`stored_rows`."""
    targets, classes = table_targets(frame, label_column, label_columns, names)
    kept, classes = keep_first_classes(targets, classes, num_classes, source)
    train, test = split_rows(targets, in_test, seed, source)
    kept_list = kept.tolist()
    train, test = [row for row in train if kept_list[row]], [row for row in test if kept_list[row]]
    if not train or not test:
        raise ValueError(f"{source} has no {'test' if train else 'training'} row"
                         + (f" of the first {num_classes} classes" if num_classes is not None else ""))
    check_subsample(n_train, len(train), "n_train", f"the training split of {source}")
    check_subsample(n_test, len(test), "n_test", f"the test split of {source}")
    return targets, classes, stored_rows(train, targets, n_train, seed), stored_rows(test, targets, n_test, seed)


def read_table(path: Path, image_column: str) -> tuple[pd.DataFrame, list[Path]]:
    """A CSV (rows indexed ``"<file> line <n>"`` for errors) and its image paths,
    relative ones resolved against the CSV's folder."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} not found: root must be a CSV file, or a folder holding train.csv "
                                "and test.csv")
    frame = pd.read_csv(path)
    if frame.empty:
        raise ValueError(f"{path} lists no images")
    frame.index = [f"{path.name} line {line}" for line in range(2, len(frame) + 2)]
    require_columns(frame.columns, {"image_column": [image_column]}, str(path))
    blank = frame[image_column].isna().to_numpy()
    if blank.any():
        raise ValueError(f"{frame.index[blank.argmax()]} has no image path in column {image_column!r}: fill it in or "
                         "remove the row")
    return frame, [path.parent / str(image) for image in frame[image_column]]


def read_tables(root: Path, image_column: str, split_column: str | None, train_split: str,
                test_split: str) -> tuple[pd.DataFrame, list[Path], np.ndarray | None]:
    """The rows of ``root`` (a CSV file, or a folder with train.csv and test.csv), their
    image paths, and which rows are test rows (None: the table has no split)."""
    if not root.is_dir():
        frame, paths = read_table(root, image_column)
        if split_column is None:
            return frame, paths, None
        require_columns(frame.columns, {"split_column": [split_column]}, str(root))
        split = frame[split_column].astype(str)
        for name, setting in ((train_split, "train_split"), (test_split, "test_split")):
            if not (split == name).any():
                raise ValueError(f"no row of {root} has {split_column} = {name!r} (its values: "
                                 f"{', '.join(sorted(split.unique()))}); set {setting} to the value of those rows")
        chosen = (split == train_split).to_numpy() | (split == test_split).to_numpy()
        return frame[chosen], [p for p, keep in zip(paths, chosen) if keep], (split == test_split).to_numpy()[chosen]
    if split_column is not None:
        raise ValueError(f"{root} is a folder, whose train.csv and test.csv are the splits; split_column applies to "
                         "one CSV file: remove split_column, or make root the CSV file")
    train, train_paths = read_table(root / "train.csv", image_column)
    test, test_paths = read_table(root / "test.csv", image_column)
    in_test = np.r_[np.zeros(len(train), bool), np.ones(len(test), bool)]
    return pd.concat([train, test]), train_paths + test_paths, in_test


def check_files(paths: Sequence[Path], image_column: str, source: str) -> None:
    """A FileNotFoundError naming a missing image (and how many are missing)."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(paths)} images that {source} lists are missing, e.g. "
                                f"{missing[0]} (column {image_column!r}; relative paths resolve against the CSV's "
                                "folder): fix the paths or remove those rows")


def csv_domain(root: str | os.PathLike, *, image_column: str = "path", label_column: str | None = None,
               label_columns: Sequence[str] | None = None, split_column: str | None = None,
               train_split: str = "train", test_split: str = "test", image_size: int = 224,
               n_train: int | None = None, n_test: int | None = None, num_classes: int | None = None, seed: int = 0,
               name: str | None = None, mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD) -> Domain:
    """The images a CSV lists, with their labels, as a domain (see the module docstring).

    ``label_column`` (default ``"label"``) holds each image's class; ``label_columns``
    instead makes a multi-label domain of those 0/1 columns. Splits are
    :class:`~.files.FileImageDataset` s whose images are decoded on access (shorter side
    resized to ``image_size``, centre crop) and normalised with ``mean``/``std``
    (ImageNet's by default). ``name`` defaults to the CSV's (or folder's) name.
    """
    root = Path(root)
    frame, paths, in_test = read_tables(root, image_column, split_column, train_split, test_split)
    label_column, labels = wanted_labels(label_column, label_columns)
    require_columns(frame.columns, labels, str(root))
    targets, classes, train, test = labelled_splits(
        frame, label_column=label_column, label_columns=label_columns, in_test=in_test, n_train=n_train,
        n_test=n_test, num_classes=num_classes, seed=seed, source=str(root))

    def part(rows: list[int]) -> FileImageDataset:
        chosen = [paths[row] for row in rows]
        check_files(chosen, image_column, str(root))
        return FileImageDataset(chosen, targets[rows], image_size, classes)

    return Domain(name=name or root.stem, train=part(train), test=part(test), classes=classes,
                  multilabel=label_columns is not None, mean=list(mean), std=list(std))
