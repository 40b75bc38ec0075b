"""Model soups (Wortsman et al. 2022): each member's test score beside the score of the
weight average of the members, per group of seeds (P-T, RI-T) and target."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...analysis.soups import SOUP_PREFIX
from .findings import verdict_sentence
from .layout import first_column, legend_below, panel_grid


def _is_soup(models: pd.Series) -> np.ndarray:
    return models.astype(str).str.startswith(SOUP_PREFIX).to_numpy()


def _plot_group(ax, x: int, rows: pd.DataFrame) -> None:
    """Members as dots around their mean (dashed), each soup as a diamond whose bar is
    its gain's interval placed on its score."""
    members, soups = rows[~_is_soup(rows["model"])], rows[_is_soup(rows["model"])]
    ax.scatter(np.full(len(members), x - 0.15), members["score"], color="0.45", s=18, zorder=3,
               label="members (seeds)")
    ax.hlines(members["score"].mean(), x - 0.3, x + 0.3, color="0.45", linestyle="--", label="mean of the members")
    for offset, (_, row) in enumerate(soups.iterrows()):
        below, above = row["gain"] - row["gain_ci_low"], row["gain_ci_high"] - row["gain"]
        ax.errorbar(x + 0.15 + 0.1 * offset, row["score"], yerr=np.clip([[below], [above]], 0, None), fmt="D",
                    color=f"C{offset}", capsize=3, zorder=4, label=row["model"])


def plot_soups(frame: pd.DataFrame) -> Figure:
    """Member scores and their soups' scores, one panel per target (two a row, the legend
    below), one column per group (``group``: the members' kind); a soup's bar is the
    bootstrap interval of its gain over the members' mean, placed on its score.

    Parameters
    ----------
    frame : pandas.DataFrame
        :func:`transferscope.analysis.soup` rows with ``target`` and ``group``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    targets = sorted(frame["target"].unique())
    figure, axes = panel_grid(len(targets), 5.0, 3.4, sharey=True)
    for ax, target in zip(axes, targets):
        part = frame[frame["target"] == target]
        groups = list(dict.fromkeys(part["group"]))
        for x, group in enumerate(groups):
            _plot_group(ax, x, part[part["group"] == group])
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(target)
        ax.grid(axis="y", alpha=0.3)
    for ax in first_column(axes):
        ax.set_ylabel(" / ".join(dict.fromkeys(frame["metric"])))
    legend_below(figure, axes)
    figure.suptitle("Fine-tuned models and their weight average (model soup)")
    return figure


def caption_soups(frame: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """What to expect of soups from the paper, each soup's score against its members'
    here, and the findings' ``verdicts`` on the claim."""
    parts = []
    for (target, group), rows in frame.groupby(["target", "group"], sort=True):
        members = rows[~_is_soup(rows["model"])]
        for _, row in rows[_is_soup(rows["model"])].iterrows():
            parts.append(f"{target}, {group}: {row['model']} {row['score']:.3f} vs the members' mean "
                         f"{members['score'].mean():.3f} (gain {row['gain']:+.3f} [{row['gain_ci_low']:.3f}, "
                         f"{row['gain_ci_high']:.3f}])")
    return ("Averaging the weights of fine-tuned models (a model soup, Wortsman et al. 2022) works when they lie in "
            "one basin: the paper finds the P-T solutions in one basin and the RI-T solutions in different ones "
            "(Sec. 3.3), so a P-T soup should score as well as its members and an RI-T soup should not. Bars: the "
            "soup's score with the bootstrap interval of its gain over the test examples. Here: " + "; ".join(parts)
            + ". " + verdict_sentence(verdicts)).strip()
