"""Table 2 of Neyshabur, Sedghi & Zhang (2020): parameter distance between models.

The study frame is :func:`transferscope.analysis.distance.param_distance` output with
``model_a``, ``model_b`` (names ``"<role>:<tag>"`` such as ``"P"``, ``"P-T:s0"``,
``"RI-T:s1"``) and ``target`` columns added. Model names are grouped by role into pair
types (:mod:`.names`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...models import NETWORK
from .findings import verdict_sentence
from .layout import first_column, legend_below, panel_grid
from .names import pair_type

TABLE2_PAIRS = (("P-T", "P-T"), ("RI-T", "RI-T"), ("P-T", "P"), ("RI-T", "P"))
SETTINGS = ("include_head", "include_bn_affine", "include_bn_buffers")


def _with_pairs(frame: pd.DataFrame, order: Sequence[tuple[str, str]] = TABLE2_PAIRS) -> pd.DataFrame:
    """Rows of known pair types, with a ``pair`` column; checks the columns and settings."""
    missing = {"model_a", "model_b", "target", "module", "distance"} - set(frame.columns)
    if missing:
        raise ValueError(f"the distance frame lacks columns {sorted(missing)}; add model_a, model_b and target "
                         "to each param_distance() frame before concatenating")
    present = [c for c in SETTINGS if c in frame.columns]
    if not present:
        raise ValueError(f"the distance frame lacks the settings columns {list(SETTINGS)}, which say what each "
                         "distance counts; make it from param_distance() frames (transferscope.analysis.distance), "
                         "which carry them, as the distance job's results/distance table does")
    settings = frame[present].drop_duplicates()
    if len(settings) > 1:
        raise ValueError(f"the frame mixes {len(settings)} settings of {', '.join(settings.columns)}; "
                         "select one before making the table (distances with and without the head differ)")
    labels = [pair_type(a, b, order) for a, b in zip(frame["model_a"], frame["model_b"])]
    out = frame.assign(pair=labels).dropna(subset=["pair", "distance"])
    if out.empty:
        raise ValueError("no pair of the frame is one of "
                         f"{', '.join('&'.join(p) for p in order)}; name models like 'P', 'P-T:s0', 'RI-T:s1'")
    return out


def _ordered(pairs: Sequence[str], order: Sequence[tuple[str, str]] = TABLE2_PAIRS, sep: str = "&") -> list[str]:
    return [label for label in (sep.join(p) for p in order) if label in set(pairs)]


def table2_frame(frame: pd.DataFrame, module: str = NETWORK) -> pd.DataFrame:
    """The layout of Table 2: one row per target domain, one column per pair type
    (P-T&P-T, RI-T&RI-T, P-T&P, RI-T&P, those present), each cell the mean distance of
    ``module`` (default the whole network) over the pairs of that type (e.g. the seeds)."""
    rows = _with_pairs(frame)
    rows = rows[rows["module"] == module]
    if rows.empty:
        present = ", ".join(map(str, frame["module"].unique()))
        raise ValueError(f"no row for module {module!r}; modules present: {present}")
    table = rows.pivot_table(index="target", columns="pair", values="distance", aggfunc="mean", sort=False)
    table = table[_ordered(table.columns)]
    table.columns.name = f"{module} distance"
    return table


def plot_module_distances(frame: pd.DataFrame) -> Figure:
    """Per-module L2 distance for each pair type, one panel per target domain (two panels
    a row, so that the figure is read at page width): bars are the mean over the pairs of
    a type, whiskers their min-max range."""
    rows = _with_pairs(frame)
    rows = rows[rows["module"] != NETWORK]
    modules = list(dict.fromkeys(rows["module"]))
    pairs = _ordered(rows["pair"].unique())
    targets = list(dict.fromkeys(rows["target"]))
    figure, axes = panel_grid(len(targets), max(5.0, 0.9 * len(modules) + 1.0), 3.4, sharey=True)
    width = 0.8 / max(len(pairs), 1)
    for ax, target in zip(axes, targets):
        stats = (rows[rows["target"] == target].groupby(["pair", "module"])["distance"]
                 .agg(["mean", "min", "max"]))
        for offset, pair in enumerate(pairs):
            if pair not in stats.index.get_level_values(0):
                continue
            cells = stats.loc[pair].reindex(modules)
            x = np.arange(len(modules)) + (offset - (len(pairs) - 1) / 2) * width
            err = np.vstack([cells["mean"] - cells["min"], cells["max"] - cells["mean"]])
            ax.bar(x, cells["mean"], width, yerr=err, capsize=2, label=pair)
        ax.set_xticks(np.arange(len(modules)), modules)
        ax.set_yscale("log")
        ax.set_title(f"target: {target}")
        ax.set_xlabel("module")
    for ax in first_column(axes):
        ax.set_ylabel("L2 parameter distance (log scale)")
    legend_below(figure, axes, title="pair (mean, min-max)", ncols=len(pairs))
    figure.suptitle("Parameter distance per module (Table 2)")
    return figure


def caption_distance(frame: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """What Table 2 of the paper found, what these whole-network distances show, and the
    findings' ``verdicts`` on the claim (rows of :func:`transferscope.analysis.findings`)."""
    table = table2_frame(frame)
    means = table.mean(axis=0)
    numbers = ", ".join(f"{pair} {value:.3g}" for pair, value in means.items())
    whole = _with_pairs(frame).query("module == @NETWORK")
    n_skipped = int((whole["n_skipped"] > 0).sum()) if "n_skipped" in whole.columns else 0
    note = (f" ({n_skipped} of {len(whole)} (pair, target) rows leave out head tensors whose shapes differ.)"
            if n_skipped else "")
    return (f"Paper (Table 2): P-T models are close to each other and to P, while RI-T models are far from "
            f"each other and from P. Here the whole-network L2 distance, mean over {len(table)} target(s), is "
            f"{numbers}.{note} {verdict_sentence(verdicts)}").strip()
