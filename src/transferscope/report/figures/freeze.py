"""Freeze plans checked by runs: final score and training time of P-T against the number
k of leading units frozen at P's weights, with the recommendation from rewinding
(:mod:`transferscope.analysis.freeze_plan`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .findings import verdict_sentence
from .layout import legend_below, panel_grid


def recommendations(plans: pd.DataFrame | None) -> dict[str, int]:
    """The recommended k per target (several P-T models: the smallest)."""
    if plans is None or plans.empty:
        return {}
    return {target: int(k) for target, k in plans.groupby("target")["freeze"].min().items()}


def plot_freeze(table: pd.DataFrame, plans: pd.DataFrame | None = None) -> Figure:
    """Final score (mean, error bar ± one std over seeds) and training time (mean) against
    k, one panel per target; the recommended k marked (and ticked); one legend below."""
    targets = sorted(table["target"].unique())
    recommended = recommendations(plans)
    figure, axes = panel_grid(len(targets), 4.2, 3.4)
    legend_axes = []
    for ax, target in zip(axes, targets):
        frame = table[table["target"] == target].sort_values("freeze")
        k = frame["freeze"].to_numpy()
        ax.errorbar(k, frame["final_score_mean"], yerr=np.nan_to_num(frame["final_score_std"].to_numpy()), fmt="o-",
                    capsize=2, color="tab:blue", label=f"final score (n={int(frame['final_score_count'].max())})")
        ax.set_xlabel("leading units frozen (k)")
        ax.set_ylabel(frame["metric"].iloc[0])
        ax.set_xticks(sorted({*k.tolist(), *([recommended[target]] if target in recommended else [])}))
        ax.set_title(target)
        ax.grid(alpha=0.3)
        time_ax = ax.twinx()
        time_ax.plot(k, frame["train_seconds_mean"], "s--", color="tab:orange", label="training time")
        time_ax.set_ylabel("training time (s)")
        time_ax.set_ylim(bottom=0)
        if target in recommended:
            ax.axvline(recommended[target], color="tab:green", linestyle=":",
                       label=f"recommended k = {recommended[target]}")
        legend_axes += [ax, time_ax]
    legend_below(figure, legend_axes, fontsize="small")
    figure.suptitle("P-T with the first k units frozen at P's weights")
    return figure


def caption_freeze(table: pd.DataFrame | None, plans: pd.DataFrame | None,
                   verdicts: pd.DataFrame | None = None) -> str:
    """The recommendation per target, the best k of the runs and their training times,
    and the findings' ``verdicts``."""
    parts = []
    recommended = recommendations(plans)
    for target in sorted(set(recommended) | set([] if table is None else table["target"])):
        text = f"{target}: rewinding recommends freezing k = {recommended[target]}" if target in recommended \
            else f"{target}: no recommendation (no rewinding of a P-T model)"
        frame = None if table is None else table[table["target"] == target].set_index("freeze")
        if frame is not None and len(frame):
            best = frame["final_score_mean"].idxmax()
            text += (f"; the runs' best k = {best} ({frame.loc[best, 'final_score_mean']:.3f} final "
                     f"{frame.loc[best, 'metric']}); training time from {frame['train_seconds_mean'].iloc[0]:.3g} s "
                     f"(k = {frame.index[0]}) to {frame['train_seconds_mean'].iloc[-1]:.3g} s (k = {frame.index[-1]})")
        parts.append(text)
    return ("A module whose rewinding to its pre-trained value costs at most the tolerance in score can stay frozen "
            "at it; the recommendation is the longest such prefix of modules (rewinding is measured one module at a "
            "time, so the frozen runs check the joint effect). Here: " + "; ".join(parts) + ". "
            + verdict_sentence(verdicts)).strip()
