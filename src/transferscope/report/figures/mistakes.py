"""Sec. 3.2 of Neyshabur, Sedghi & Zhang (2020): common and uncommon mistakes.

Takes :func:`transferscope.analysis.mistake_overlap.mistakes` frames whose models are named
``"<role>:<tag>"`` (``"P-T:s0"``, ``"RI-T:s1"``), optionally with a ``target`` column;
pairs are grouped by role into P-T/P-T, P-T/RI-T and RI-T/RI-T.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .findings import verdict_sentence
from .layout import first_column, legend_below, panel_grid
from .names import pair_type

MISTAKE_PAIRS = (("P-T", "P-T"), ("P-T", "RI-T"), ("RI-T", "RI-T"))
KINDS = (("common", "common (both wrong)"), ("uncommon", "uncommon (one wrong)"))


def _by_pair_type(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (target, pair type): mean common/uncommon fraction over the pairs, and the
    envelope of their bootstrap intervals."""
    missing = {"model_a", "model_b", "common_fraction", "uncommon_fraction", "common_ci_low", "common_ci_high",
               "uncommon_ci_low", "uncommon_ci_high"} - set(frame.columns)
    if missing:
        raise ValueError(f"not a mistakes() frame: columns {sorted(missing)} are missing")
    rows = frame.assign(pair=[pair_type(a, b, MISTAKE_PAIRS, sep="/") for a, b in zip(frame.model_a, frame.model_b)])
    rows = rows.dropna(subset=["pair"])
    if rows.empty:
        raise ValueError("no pair is P-T/P-T, P-T/RI-T or RI-T/RI-T; name models like 'P-T:s0', 'RI-T:s1'")
    keys = ["target", "pair"] if "target" in rows.columns else ["pair"]
    grouped = rows.groupby(keys, sort=False).agg(
        common=("common_fraction", "mean"), common_low=("common_ci_low", "min"), common_high=("common_ci_high", "max"),
        uncommon=("uncommon_fraction", "mean"), uncommon_low=("uncommon_ci_low", "min"),
        uncommon_high=("uncommon_ci_high", "max"), n_pairs=("model_a", "size"),
    ).reset_index()
    order = {"/".join(p): i for i, p in enumerate(MISTAKE_PAIRS)}
    return grouped.sort_values("pair", key=lambda s: s.map(order), kind="stable")


def _confidence(frame: pd.DataFrame) -> str:
    return f"{100 * frame['confidence'].iloc[0]:g}%" if "confidence" in frame.columns else ""


def plot_mistakes(frame: pd.DataFrame) -> Figure:
    """Common vs uncommon mistakes (percent of units) per pair type, one panel per target
    (two a row, the legend below); whiskers: the bootstrap interval (the envelope over
    pairs when a type has several)."""
    stats = _by_pair_type(frame)
    targets = list(dict.fromkeys(stats["target"])) if "target" in stats.columns else [None]
    figure, axes = panel_grid(len(targets), 5.0, 3.6, sharey=True)
    for ax, target in zip(axes, targets):
        part = stats if target is None else stats[stats["target"] == target]
        x = np.arange(len(part))
        for offset, (kind, label) in zip((-0.2, 0.2), KINDS):
            mean = 100 * part[kind].to_numpy()
            err = 100 * np.vstack([part[kind] - part[f"{kind}_low"], part[f"{kind}_high"] - part[kind]])
            ax.bar(x + offset, mean, 0.4, yerr=np.clip(err, 0, None), capsize=3, label=label)
        ax.set_xticks(x, [f"{p}\n({n} pair{'s' if n > 1 else ''})" for p, n in zip(part["pair"], part["n_pairs"])])
        ax.set_xlabel("model pair")
        if target is not None:
            ax.set_title(f"target: {target}")
    for ax in first_column(axes):
        ax.set_ylabel("mistakes (% of units)")
    unit = f" per {frame['unit'].iloc[0]}" if "unit" in frame.columns else ""
    legend_below(figure, axes, title=f"whiskers: bootstrap {_confidence(frame)} interval")
    figure.suptitle(f"Common and uncommon mistakes{unit} (Sec. 3.2)")
    return figure


def _title(labels: Tensor, index: int, class_names: Sequence[str]) -> str:
    """Class name of example ``index``, or its positive labels for multi-label targets."""
    def name(j: int) -> str:
        return class_names[j] if j < len(class_names) else str(j)

    if labels.ndim == 2:
        positive = [name(j) for j in labels[index].nonzero().flatten().tolist()]
        return ", ".join(positive) or "no finding"
    return name(int(labels[index]))


def plot_mistake_examples(
    images: Tensor,
    indices_by_category: Mapping[str, Sequence[int]],
    class_names: Sequence[str],
    labels: Tensor,
    title: str | None = None,
) -> Figure:
    """Image grids, one row per category (e.g. ``common``, ``only_a``, ``only_b`` from
    :func:`transferscope.analysis.mistake_overlap.mistake_examples`), each image titled with
    its true class (or positive labels). ``images``: uint8 ``(N, C, H, W)``."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, C, H, W) with 1 or 3 channels, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not indices_by_category:
        raise ValueError("indices_by_category is empty; pass e.g. {'common': [...], 'only_a': [...]}")
    columns = max(1, max(len(v) for v in indices_by_category.values()))
    figure = Figure(figsize=(1.3 * columns + 1, 1.5 * len(indices_by_category) + 0.6), layout="constrained")
    axes = np.array(figure.subplots(len(indices_by_category), columns, squeeze=False))
    for row, (category, indices) in zip(axes, indices_by_category.items()):
        for column, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(indices):
                image = images[indices[column]].permute(1, 2, 0).cpu().numpy()
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
                ax.set_title(_title(labels, indices[column], class_names), fontsize=7)
            else:
                ax.set_frame_on(False)
        row[0].set_ylabel(f"{category}\n({len(indices)} shown)")
        if not indices:
            row[0].text(0.5, 0.5, "no examples", ha="center", va="center", transform=row[0].transAxes)
    figure.suptitle(title or "Mistakes (Sec. 3.2)\ntitles: true class", fontsize=10)
    return figure


def caption_mistakes(frame: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """What Sec. 3.2 of the paper found, what these fractions show (mean over targets and
    pairs), and the findings' ``verdicts`` on the claim."""
    stats = _by_pair_type(frame)
    means = stats.groupby("pair", sort=False)[["common", "uncommon"]].mean()
    numbers = "; ".join(f"{pair} {100 * r.common:.1f}% common, {100 * r.uncommon:.1f}% uncommon"
                        for pair, r in means.iterrows())
    return ("Paper (Sec. 3.2): two P-T models make similar mistakes (many common, few uncommon), while "
            "P-T/RI-T and RI-T/RI-T pairs have many uncommon mistakes. Here (mean over pairs): "
            f"{numbers}. {verdict_sentence(verdicts)}").strip()
