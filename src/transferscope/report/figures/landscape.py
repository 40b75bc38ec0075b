"""Fig. 4 and Table 3 of Neyshabur, Sedghi & Zhang (2020): the loss landscape between
solutions — interpolation curves, performance barriers and (ε, δ)-basins.

Study frames are :func:`transferscope.analysis.interpolation.interpolate` (or
:func:`transferscope.analysis.basins.basin`) outputs with columns ``pair`` (e.g.
``"P-T:s0|P-T:s1"``), ``pair_type`` (e.g. ``"P-T/P-T"``, ``"best/final P-T"``) and
``target`` added; without ``pair``, the pair is ``"<model_a>|<model_b>"`` from columns
``model_a`` and ``model_b``, and a frame without either is one pair. One curve is one
(target, pair type, pair) and, where the frame has them, one ``bn`` mode and ``split``
(:data:`CURVE_SETTINGS`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from transferscope.analysis.interpolation import barrier

from .findings import verdict_sentence

PAIR_ORDER = ("P-T/P-T", "RI-T/RI-T", "P-T/RI-T")
GROUPS = ("target", "pair_type", "pair")
CURVE_SETTINGS = ("bn", "split")  # settings that make separate curves of one pair, where the frame has them
BASIN_COLUMNS = ("mu", "epsilon", "alpha_lo", "alpha_hi", "basin_delta", "in_basin", "n_parameters", "distance",
                 "threshold", "rise", "n_segment", "n_noise", "seed", "bn")
PAPER_DELTAS = "49.14, 98.28"


def _grouped(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``target``, ``pair_type`` and ``pair`` columns (``pair`` from
    ``model_a`` and ``model_b`` where the frame has them; filled in for one curve)."""
    if "pair" not in frame.columns and {"model_a", "model_b"} <= set(frame.columns):
        frame = frame.assign(pair=[f"{a}|{b}" for a, b in zip(frame["model_a"], frame["model_b"])])
    defaults = {"target": "target", "pair_type": "pair", "pair": "a|b"}
    return frame.assign(**{c: v for c, v in defaults.items() if c not in frame.columns})


def _curve_keys(frame: pd.DataFrame) -> list[str]:
    """The columns whose values tell one curve of a :func:`_grouped` frame from another."""
    return list(GROUPS) + [column for column in CURVE_SETTINGS if column in frame.columns]


def _ordered_types(types: pd.Series) -> list[str]:
    present = list(dict.fromkeys(types))
    return [t for t in PAIR_ORDER if t in present] + [t for t in present if t not in PAIR_ORDER]


def _metric(frame: pd.DataFrame) -> str:
    """The one metric (``"accuracy"`` or ``"auc"``) of the curves of one target."""
    missing = [column for column in ("score", "metric") if column not in frame.columns]
    if missing:
        raise ValueError(f"the interpolation frame lacks columns {missing}; pass interpolate() output")
    metrics = list(dict.fromkeys(frame["metric"]))
    if len(metrics) != 1:
        raise ValueError(f"the curves of one target have several metrics {metrics}; pass one target's rows")
    return metrics[0]


def plot_interpolation(frame: pd.DataFrame) -> Figure:
    """Test accuracy (or mean AUC) and loss against λ for each pair type, one row of
    panels per target; lines are the mean over the pairs of a type, bands their
    min-max range where a type has several pairs. Dotted lines mark λ = 0 and 1."""
    rows = _grouped(frame)
    targets = list(dict.fromkeys(rows["target"]))
    figure = Figure(figsize=(10.0, 3.6 * len(targets)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(targets), 2, squeeze=False))
    for (ax_score, ax_loss), target in zip(axes, targets):
        part = rows[rows["target"] == target]
        scale, score_label = (100.0, "test accuracy (%)") if _metric(part) == "accuracy" else (1.0, "test mean AUC")
        for pair_type in _ordered_types(part["pair_type"]):
            curves = part[part["pair_type"] == pair_type]
            n_pairs = curves["pair"].nunique()
            for ax, column, factor in ((ax_score, "score", scale), (ax_loss, "loss", 1.0)):
                stats = curves.groupby("alpha")[column].agg(["mean", "min", "max"]) * factor
                (line,) = ax.plot(stats.index, stats["mean"], marker=".", label=f"{pair_type} ({n_pairs} pair"
                                  f"{'s' if n_pairs > 1 else ''})")
                if n_pairs > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
        for ax, label in ((ax_score, score_label), (ax_loss, "test loss")):
            for endpoint in (0.0, 1.0):
                ax.axvline(endpoint, color="0.6", linestyle=":", linewidth=1)
            ax.set_xlabel("interpolation coefficient λ  (Θ = (1−λ)Θ₁ + λΘ₂)")
            ax.set_ylabel(label)
            ax.set_title(f"target: {target} — {label}")
    handles, labels = axes[0, 1].get_legend_handles_labels()
    figure.legend(handles, labels, title="pair type (line: mean over pairs; band: min-max)", loc="outside lower center",
                  ncols=min(len(labels), 4), fontsize="small")
    figure.suptitle("Linear interpolation between solutions (Fig. 4)")
    return figure


def barrier_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Performance barriers of every curve of a frame of concatenated interpolation curves.

    Parameters
    ----------
    frame : pandas.DataFrame
        :func:`transferscope.analysis.interpolation.interpolate` outputs, each named by
        ``pair`` (or ``model_a`` and ``model_b``), with ``target`` and ``pair_type``
        where there are several (module docstring).

    Returns
    -------
    pandas.DataFrame
        One row per curve: ``target``, ``pair_type``, ``pair`` (and ``bn``, ``split``
        where the frame has them), the loss and error barriers of the curve
        (:func:`transferscope.analysis.interpolation.barrier`; error = 1 − score) and the
        ``metric`` of the score (accuracy or AUC).

    Raises
    ------
    ValueError
        When the columns leave several rows at one α in a curve (curves that no column
        tells apart), or as :func:`~transferscope.analysis.interpolation.barrier`.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Sec. 3.3 and Fig. 4.
    """
    rows = _grouped(frame)
    keys = _curve_keys(rows)
    table = []
    for key, curve in rows.groupby(keys, sort=False, dropna=False):
        if "alpha" in curve and curve["alpha"].duplicated().any():
            raise ValueError(
                f"the interpolation frame has several rows at one α for {dict(zip(keys, key))}: it holds several "
                f"curves that its columns {keys} do not tell apart; name each curve before concatenating, e.g. "
                "pd.concat([interpolate(a, b, loader).assign(model_a='a', model_b='b'), ...]), or add a 'pair' column")
        table.append({**dict(zip(keys, key)), **barrier(curve)})
    return pd.DataFrame(table)


def caption_interpolation(frame: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """What Fig. 4 of the paper found, the barriers measured here (max over pairs), and
    the findings' ``verdicts`` on its claims."""
    table = barrier_table(frame)
    parts = []
    for pair_type in _ordered_types(table["pair_type"]):
        rows = table[table["pair_type"] == pair_type]
        parts.append(f"{pair_type} error barrier {100 * rows['error_barrier'].max():.1f} points, "
                     f"loss barrier {rows['loss_barrier'].max():.3f} (max over {len(rows)} pair(s))")
    metrics = " and ".join(f"1 − {m}" for m in dict.fromkeys(table["metric"]))
    return ("Paper (Fig. 4): no performance barrier on the line between two P-T solutions, a barrier between two "
            f"RI-T solutions. Here, on λ ∈ [0, 1] (error = {metrics}): " + "; ".join(parts) + ". "
            + verdict_sentence(verdicts)).strip()


def basin_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, pair type, pair[, bn, split]) of
    :func:`transferscope.analysis.basins.basin` frames: μ, ε, the boundary α, the basin's
    δ (smallest δ searched where conditions 2 and 3 hold; NaN if none) and its σ = δ/√n,
    whether that δ is only an upper bound (``at_grid_min``: the conditions hold at the
    smallest σ searched, from the frame's ``basin_delta_exact``; for frames without it,
    δ at the grid's smallest), and the settings."""
    rows = _grouped(frame)
    missing = {"basin_delta", "mu", "epsilon", "delta", "n_parameters"} - set(rows.columns)
    if missing:
        raise ValueError(f"the basin frame lacks columns {sorted(missing)}; pass basin() output")
    keys = _curve_keys(rows)
    groups = rows.groupby(keys, sort=False, dropna=False)
    table = groups[[c for c in BASIN_COLUMNS if c in rows and c not in keys]].first().reset_index()
    table.insert(table.columns.get_loc("basin_delta") + 1, "basin_sigma",
                 table["basin_delta"] / np.sqrt(table["n_parameters"]))
    bound = (table["in_basin"] & ~groups["basin_delta_exact"].first().to_numpy().astype(bool)
             if "basin_delta_exact" in rows else np.isclose(table["basin_delta"], groups["delta"].min().to_numpy()))
    table.insert(table.columns.get_loc("basin_sigma") + 1, "at_grid_min", bound)
    return table


def caption_basin(frame: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """What the paper found about basins, per pair type the measured basins, and the
    findings' ``verdicts`` on the claim."""
    table = basin_table(frame)
    parts = []
    for pair_type in _ordered_types(table["pair_type"]):
        rows = table[table["pair_type"] == pair_type]
        found = rows[rows["in_basin"]]
        bound = "≤ " if len(found) and found.loc[found["basin_delta"].idxmin(), "at_grid_min"] else ""
        delta = (f"smallest δ {bound}{found['basin_delta'].min():.3g} (σ {found['basin_sigma'].min():.3g})"
                 if len(found) else "no δ of the grid")
        parts.append(f"{pair_type}: {len(found)}/{len(rows)} pair(s) in one basin, {delta}, "
                     f"ε {rows['epsilon'].mean():.3g}, μ {rows['mu'].mean():.3g}")
    note = (" Where δ is marked ≤, the smallest σ searched already satisfies conditions 2 and 3, so δ is an upper "
            "bound; lower sigma_floor to resolve it." if table["at_grid_min"].any() else "")
    return ("Paper (Sec. 3.3, Def. 3.1): solutions fine-tuned from pre-trained weights stay in one (ε, δ)-basin; "
            f"of its Table 3 (DomainNet, Fixup ResNet-50) this report knows only the δ values {PAPER_DELTAS} "
            "(σ = 0.01, 0.02 per coordinate × √n, n ≈ 24.16M), not its ε and μ. Here (walls at μ + "
            f"{table['rise'].iloc[0]:g}ε): " + "; ".join(parts) + "." + note + " " + verdict_sentence(verdicts)).strip()
