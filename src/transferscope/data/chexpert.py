"""CheXpert (Irvin et al., AAAI 2019) as a multi-label domain, with the protocol of the
transfer paper (Neyshabur et al. 2020): five labels; a blank entry
is negative; an uncertain entry (-1) is positive for Edema and Atelectasis and negative
for the others (the "U-Ones"/"U-Zeros" choice of Irvin et al., per label); train and
test are two disjoint parts of one seeded permutation of ``train.csv``.

The CSV's ``Path`` column reads like
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``: relative to the
folder that *contains* the data set folder. ``root`` is the data set folder (the one
holding ``train.csv``); paths are resolved against ``root.parent``, or against
``root`` itself when the images are found there instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .domain import Domain
from .files import IMAGENET_MEAN, IMAGENET_STD, FileImageDataset, seeded_order

LABELS = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
UNCERTAIN_ONES = ("Edema", "Atelectasis")


def chexpert_targets(frame: pd.DataFrame, labels: Sequence[str] = LABELS,
                     uncertain_ones: Sequence[str] = UNCERTAIN_ONES) -> Tensor:
    """float32 ``(N, L)`` 0/1 targets from the CSV's label columns: 1 -> 1, 0 -> 0,
    blank -> 0, uncertain (-1) -> 1 for the labels in ``uncertain_ones``, else 0."""
    missing = [label for label in labels if label not in frame.columns]
    if missing:
        raise ValueError(f"CheXpert CSV has no column {missing}; its columns are {list(frame.columns)}")
    stray = [label for label in uncertain_ones if label not in labels]
    if stray:
        raise ValueError(f"uncertain_ones {stray} are not among the labels {list(labels)}")
    values = frame[list(labels)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    known = np.isin(values, (-1.0, 0.0, 1.0)) | frame[list(labels)].isna().to_numpy()
    if not known.all():
        row, column = np.argwhere(~known)[0]
        raise ValueError(f"CheXpert CSV row {frame.index[row]} ({frame.iloc[row].get('Path', '')}), column {labels[column]!r}: "
                         f"{frame[labels[column]].iloc[row]} is not 1, 0, -1 or blank")
    uncertain_value = np.array([1.0 if label in uncertain_ones else 0.0 for label in labels])
    targets = np.where(values == -1.0, uncertain_value, np.nan_to_num(values, nan=0.0))
    return torch.from_numpy(targets).float()


def image_base(root: Path, first_path: str) -> Path:
    """The folder the CSV's paths are relative to: ``root.parent`` (the official layout)
    or ``root``, whichever holds the first listed image."""
    for base in (root.parent, root):
        if (base / first_path).is_file():
            return base
    raise FileNotFoundError(
        f"CheXpert image {first_path} is neither under {root.parent} nor under {root}: root must be the data set "
        f"folder holding the CSV and the train/ images (e.g. .../CheXpert-v1.0-small)")


def split_sizes(count: int, n_train: int | None, n_test: int | None) -> tuple[int, int]:
    """Sizes of the two disjoint parts; ``None`` takes what the other leaves (half each
    when both are ``None``)."""
    if n_train is None:
        n_train = count // 2 if n_test is None else count - n_test
    if n_test is None:
        n_test = count - n_train
    if n_train < 1 or n_test < 1 or n_train + n_test > count:
        raise ValueError(f"cannot split {count} CheXpert rows into disjoint train ({n_train}) and test ({n_test}) "
                         f"parts: pass n_train + n_test <= {count} (or None to take the rest)")
    return n_train, n_test


def chexpert_domain(root: str | os.PathLike, csv: str = "train.csv", image_size: int = 224,
                    n_train: int | None = 50_000, n_test: int | None = 50_000, seed: int = 0,
                    labels: Sequence[str] = LABELS, uncertain_ones: Sequence[str] = UNCERTAIN_ONES,
                    frontal_only: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Domain:
    """CheXpert under ``root`` as a multi-label domain whose classes are ``labels``.

    Rows of ``root/csv`` (only frontal views with ``frontal_only``) are permuted with
    ``seed``; train is the first ``n_train`` of them, test the next ``n_test``. Targets
    follow :func:`chexpert_targets`. Images: decoded as
    :class:`~transferscope.data.files.FileImageDataset` does (shorter side resized to 8/7
    of ``image_size`` from 64 pixels, centre crop), seen by the network at ``image_size``;
    normalised with ``mean``/``std`` (ImageNet's by default). The paper
    does not state its permutation seed.
    """
    root = Path(root)
    csv_path = root / csv
    if not csv_path.is_file():
        raise FileNotFoundError(f"CheXpert CSV {csv_path} not found: root must be the data set folder "
                                f"(e.g. .../CheXpert-v1.0-small) holding {csv}")
    frame = pd.read_csv(csv_path)
    if "Path" not in frame.columns:
        raise ValueError(f"{csv_path} has no 'Path' column; its columns are {list(frame.columns)}")
    if frontal_only:
        if "Frontal/Lateral" not in frame.columns:
            raise ValueError(f"frontal_only needs the 'Frontal/Lateral' column, which {csv_path} lacks")
        frame = frame[frame["Frontal/Lateral"] == "Frontal"]
    if frame.empty:
        raise ValueError(f"{csv_path} lists no images" + (" with a frontal view" if frontal_only else ""))
    targets = chexpert_targets(frame, labels, uncertain_ones)
    base = image_base(root, frame["Path"].iloc[0])
    paths = [base / path for path in frame["Path"]]
    n_train, n_test = split_sizes(len(frame), n_train, n_test)
    order = seeded_order(len(frame), seed)

    def part(index: Tensor) -> FileImageDataset:
        return FileImageDataset([paths[i] for i in index.tolist()], targets[index], image_size, list(labels))

    return Domain(name="chexpert", train=part(order[:n_train]), test=part(order[n_train:n_train + n_test]),
                  classes=list(labels), multilabel=True, mean=list(mean), std=list(std))
