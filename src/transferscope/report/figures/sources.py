"""Several sources compared (:mod:`transferscope.analysis.source_comparison`): per
target, each source's final score and optimization speed (mean ± std over seeds, random
init as the floor), and per module how much of P its P-T models keep (CKA P-T&P) and
how far fine-tuning moves them (L2 P-T&P)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...analysis.source_comparison import RANDOM_INIT


def plot_source_scores(comparison: pd.DataFrame) -> Figure:
    """One panel per measure (final score, optimization speed): bars per target, one
    per source, with ± one std over seeds (none for one seed)."""
    targets = list(dict.fromkeys(comparison["target"]))
    sources = list(dict.fromkeys(comparison["source"]))
    figure = Figure(figsize=(4.2 * 2, 3.4), layout="constrained")
    width = 0.8 / len(sources)
    for ax, measure, title in zip(figure.subplots(1, 2), ("final_score", "optimization_speed"),
                                  ("final test score", "optimization speed")):
        for i, source in enumerate(sources):
            rows = comparison[comparison["source"] == source].set_index("target").reindex(targets)
            errors = rows[f"{measure}_std"].fillna(0).to_numpy()
            ax.bar(np.arange(len(targets)) + (i - (len(sources) - 1) / 2) * width, rows[f"{measure}_mean"], width,
                   yerr=errors, capsize=3, label=source, hatch="//" if source == RANDOM_INIT else None,
                   color="0.8" if source == RANDOM_INIT else None, edgecolor="0.3")
        ax.set_xticks(np.arange(len(targets)), targets)
        ax.set_title(f"{title} ({comparison['metric'].iloc[0]})")
        ax.set_ylim(0, 1)
    figure.axes[0].legend(fontsize="small", title="source")
    return figure


def plot_source_reuse(reuse: pd.DataFrame, target: str) -> Figure:
    """For one target: CKA between P and its P-T models per module (what is reused) and
    their L2 distance (how far fine-tuning moves them), one line per source."""
    rows = reuse[reuse["target"] == target]
    modules = list(dict.fromkeys(rows["module"]))
    figure = Figure(figsize=(4.2 * 2, 3.4), layout="constrained")
    for ax, column, title in zip(figure.subplots(1, 2), ("cka", "distance"),
                                 ("CKA of P and P-T (module vs itself)", "L2 distance of P and P-T")):
        for source, part in rows.groupby("source", sort=False):
            part = part.set_index("module").reindex(modules)
            ax.plot(range(len(modules)), part[column], marker="o", label=str(source))
        ax.set_xticks(range(len(modules)), modules, rotation=30, ha="right")
        ax.set_title(title)
    figure.axes[0].set_ylim(0, 1.02)
    figure.axes[0].legend(fontsize="small", title="source")
    figure.suptitle(f"{target}: what each source's fine-tuned models keep of it")
    return figure
