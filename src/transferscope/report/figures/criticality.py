"""Figs. 5-6 of Neyshabur, Sedghi & Zhang (2020): module rewinding and module criticality.

Frames: :func:`transferscope.analysis.rewinding.rewind` output (Fig. 5),
:func:`transferscope.analysis.module_criticality.network_criticality` output (bars) and
:func:`transferscope.analysis.module_criticality.criticality` grids (Fig. 6 heatmaps), each
with a ``model`` column (``"<role>:<tag>"`` such as ``"P-T:s0"``, ``"RI-T:s1"``) and,
in a study, a ``target`` column; the study's criticality tables also have ``data``
(:func:`transferscope.study.results.with_criticality_data`), whose ``"source"`` rows are P
on the source data, drawn beside each target's models as :data:`SOURCE_ROLE`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from ...models import NETWORK
from .layout import legend_below, panel_grid
from .names import role

PANELS = (("direct", "final"), ("direct", "best"), ("optimization", "final"), ("optimization", "best"))
START_LABEL = {"final": "from θ_F", "best": "from θ_opt"}
SOURCE_ROLE = "P on source data"  # P's rows (data "source"): along its pre-training, on the source test data


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = sorted(set(columns) - set(frame.columns))
    if missing:
        raise ValueError(f"the {what} frame lacks columns {missing}")


def _with_roles(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["role"] = frame["model"].map(role) if "model" in frame.columns else "model"
    return frame


def _one_target(frame: pd.DataFrame, target: str | None) -> tuple[pd.DataFrame, str | None]:
    """Rows of ``target``; the only target when none is named."""
    if "target" not in frame.columns:
        return frame, target
    targets = list(dict.fromkeys(frame["target"]))
    if target is None:
        if len(targets) > 1:
            raise ValueError(f"the frame holds targets {targets}; pass target=<one of them>")
        target = targets[0]
    if target not in targets:
        raise ValueError(f"no target {target!r} in the frame; it holds {targets}")
    return frame[frame["target"] == target], target


def _metric(frame: pd.DataFrame) -> str:
    """The one metric (``"accuracy"`` or ``"auc"``) of the rewind rows of one target."""
    metrics = list(dict.fromkeys(frame["metric"]))
    if len(metrics) != 1:
        raise ValueError(f"the rewind rows of one target have several metrics {metrics}; pass one target's rows")
    return metrics[0]


def _test_rows(frame: pd.DataFrame) -> pd.DataFrame:
    splits = list(dict.fromkeys(frame["split"]))
    return frame[frame["split"] == ("test" if "test" in splits else splits[0])]


def _series_label(name: str, bn: str, several_bn: bool) -> str:
    return f"{name} (BN {bn})" if several_bn else name


def plot_rewind(frame: pd.DataFrame) -> Figure:
    """Fig. 5: test performance after rewinding each module to its initial value (the
    pre-trained weights for P-T, the random init for RI-T), mean over models of a role
    with min-max bars; dashed lines mark the unchanged models. One panel per target, two
    a row, one colour per role (and BN mode) in every panel, the legend below."""
    _require(frame, ["module", "split", "bn", "score", "base_score", "metric"], "rewind")
    rows = _with_roles(_test_rows(frame))
    targets = list(dict.fromkeys(rows["target"])) if "target" in rows.columns else [None]
    modules = list(dict.fromkeys(rows["module"]))
    several_bn = rows["bn"].nunique() > 1
    series = list(dict.fromkeys(zip(rows["role"], rows["bn"])))
    figure, axes = panel_grid(len(targets), 5.0, 3.4)
    for ax, target in zip(axes, targets):
        part = rows if target is None else rows[rows["target"] == target]
        metric = _metric(part)  # targets differ in metric
        scale, unit = (100.0, " (%)") if metric == "accuracy" else (1.0, "")
        for (name, bn), group in part.groupby(["role", "bn"], sort=False):
            stats = group.groupby("module")["score"].agg(["mean", "min", "max"]).reindex(modules) * scale
            colour = f"C{series.index((name, bn))}"
            ax.errorbar(np.arange(len(modules)), stats["mean"], color=colour, marker="o", capsize=3,
                        yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                        label=_series_label(name, bn, several_bn) + " rewound")
            ax.axhline(group["base_score"].mean() * scale, color=colour, linestyle="--",
                       label=_series_label(name, bn, several_bn) + " unchanged")
        ax.set_xticks(np.arange(len(modules)), modules)
        ax.set_xlabel("module rewound to its initial value")
        ax.set_ylabel(f"test {'accuracy' if metric == 'accuracy' else 'mean AUC'}{unit}")
        ax.set_title("Module rewinding" + (f" — {target}" if target is not None else ""))
    legend_below(figure, axes)
    return figure


def caption_rewind(frame: pd.DataFrame) -> str:
    """What the paper found (Fig. 5) and the drop per module and role here."""
    _require(frame, ["module", "split", "score", "base_score", "metric"], "rewind")
    rows = _with_roles(_test_rows(frame))
    targets = list(dict.fromkeys(rows["target"])) if "target" in rows.columns else [None]
    parts = []
    for target in targets:
        part = rows if target is None else rows[rows["target"] == target]
        scale, unit, digits = (100.0, "accuracy points", 1) if _metric(part) == "accuracy" else (1.0, "AUC", 3)
        part = part.assign(drop=(part["base_score"] - part["score"]) * scale)
        modules = list(dict.fromkeys(part["module"]))
        for name, group in part.groupby("role", sort=False):
            drops = group.groupby("module")["drop"].mean().reindex(modules)
            listed = ", ".join(f"{module} {value:.{digits}f}" for module, value in drops.items())
            where = f"{target} " if target is not None else ""
            parts.append(f"{where}{name} ({unit}): {listed} (most critical {drops.idxmax()})")
    return ("Rewinding one module to its initial value while the others keep their trained values "
            "(Zhang et al. 2019): the paper (Fig. 5) found the lower modules of P-T models robust to rewinding "
            "to the pre-trained weights and the higher modules more critical. "
            "Here the mean drop in test score when rewinding each module is — " + "; ".join(parts) + ".")


def on_source(frame: pd.DataFrame) -> pd.Series:
    """Which rows are P's, measured on the source data (``data == "source"``)."""
    return frame["data"].eq("source") if "data" in frame.columns else pd.Series(False, index=frame.index)


def _criticality_rows(frame: pd.DataFrame, target: str | None) -> tuple[pd.DataFrame, str | None]:
    """Rows of ``target``'s models and P's rows on the source data (role
    :data:`SOURCE_ROLE`); P's alone (target None) when the frame has no other."""
    _require(frame, ["module", "criticality", "path", "start"], "criticality")
    rows = _with_roles(frame)
    source = on_source(rows)
    p_rows = rows[source].assign(role=SOURCE_ROLE)
    if source.all():
        return p_rows, None
    rows, target = _one_target(rows[~source], target)
    return pd.concat([rows, p_rows], ignore_index=True), target


def _role_bars(ax, part: pd.DataFrame, modules: list[str], x: np.ndarray, width: float, top: float, name: str,
               color: str) -> float:
    """One role's bars in a panel: mean μ_i per module with min-max whiskers, ∞ drawn at
    ``top``, 0 said at the bottom (no bar on a log axis). Returns the role's mean network
    criticality."""
    stats = part[part["module"] != NETWORK].groupby("module")["criticality"].agg(["mean", "min", "max"])
    stats = stats.reindex(modules)
    shown = stats["mean"].where(np.isfinite(stats["mean"]), top)
    ax.bar(x, shown, width, color=color, capsize=2, label=name,
           yerr=[(stats["mean"] - stats["min"]).where(np.isfinite(stats["mean"]), 0),
                 (stats["max"] - stats["mean"]).where(np.isfinite(stats["max"]), 0)])
    for xi, value in zip(x, stats["mean"]):
        if not np.isfinite(value):
            ax.text(xi, top, "∞", ha="center", va="bottom", color=color)
        elif value == 0:
            ax.text(xi, 0.01, "0", ha="center", va="bottom", color=color, transform=ax.get_xaxis_transform())
    return float(part.loc[part["module"] == NETWORK, "criticality"].mean())


def plot_criticality_bars(frame: pd.DataFrame, target: str | None = None) -> Figure:
    """Per-module criticality μ_i (Definition 3.2) by role, one panel per path (direct,
    optimization) and end point (θ_F, θ_opt); mean over models with min-max bars, log
    scale; ∞ marks modules with no feasible grid point. A role has one colour in every
    panel; a panel leaves out the models that have no such end point (θ_opt of a run
    whose best epoch is 0, of brought P). Panels two a row, the network criticality of
    each role under its panel; the legend below them, where it hides no bar."""
    rows, target = _criticality_rows(frame, target)
    panels = [panel for panel in PANELS if ((rows["path"] == panel[0]) & (rows["start"] == panel[1])).any()]
    modules = list(dict.fromkeys(rows.loc[rows["module"] != NETWORK, "module"]))
    roles = list(dict.fromkeys(rows["role"]))
    figure, axes = panel_grid(len(panels), 5.5, 3.6)
    for ax, (path, start) in zip(axes, panels):
        panel = rows[(rows["path"] == path) & (rows["start"] == start)]
        finite = panel.loc[np.isfinite(panel["criticality"]), "criticality"]
        top = float(finite.max()) * 3 if len(finite) else 1.0
        present = [name for name in roles if (panel["role"] == name).any()]
        width = 0.8 / len(present)
        totals = []
        for index, name in enumerate(present):
            x = np.arange(len(modules)) + (index - (len(present) - 1) / 2) * width
            total = _role_bars(ax, panel[panel["role"] == name], modules, x, width, top, name, f"C{roles.index(name)}")
            totals.append(f"{name} {total:.3g}")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(modules)), modules)
        ax.set_xlabel(f"module (network μ: {', '.join(totals)})")
        ax.set_ylabel("criticality μ = min α²‖θ_F−θ_0‖²/σ²")
        ax.set_title(f"{path} path, {START_LABEL[start]}" + (f" — {target}" if target is not None else ""))
    legend_below(figure, axes, title="role (bars: mean over models, whiskers: min-max)")
    return figure


def caption_criticality(frame: pd.DataFrame, target: str | None = None) -> str:
    """What the paper found (Sec. 3.4, Fig. 6) and network criticality per role here."""
    rows, _ = _criticality_rows(frame, target)
    parts = []
    for (path, start), panel in rows.groupby(["path", "start"], sort=False):
        per_role = []
        for name, part in panel.groupby("role", sort=False):
            modules = part[part["module"] != NETWORK].groupby("module", sort=False)["criticality"].mean()
            infinite = int((~np.isfinite(modules)).sum())
            per_role.append(f"{name} network {part.loc[part['module'] == NETWORK, 'criticality'].mean():.3g}, "
                            f"most critical {modules.idxmax()}" + (f", {infinite} module(s) with no feasible point"
                                                                    if infinite else ""))
        parts.append(f"{path} path {START_LABEL[start]}: " + "; ".join(per_role))
    source = (f" {SOURCE_ROLE}: P itself, on the source test data, from its initial weights to P along its "
              "pre-training (the optimization path through its saved checkpoints) and the direct path."
              if (rows["role"] == SOURCE_ROLE).any() else "")
    return ("Module criticality (Chatterji et al. 2020; Definition 3.2 of the paper) is small when a module can "
            "move back towards its initial value under noise without raising the loss; the paper (Fig. 6) found "
            "the lower modules of P-T models less critical and criticality larger in the higher layers. "
            "Here: " + " | ".join(parts) + "." + source)


def _cell_edges(values: np.ndarray) -> np.ndarray:
    """Edges of cells centred on sorted grid ``values`` (midpoints, ends mirrored)."""
    if len(values) == 1:
        half = abs(values[0]) / 2 or 0.5
        return np.array([values[0] - half, values[0] + half])
    middle = (values[:-1] + values[1:]) / 2
    return np.concatenate([[values[0] - (middle[0] - values[0])], middle, [values[-1] + (values[-1] - middle[-1])]])


def _feasible_outline(feasible: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray) -> list:
    """Segments on the border between feasible cells and infeasible ones (or the grid edge)."""
    padded = np.pad(feasible, 1, constant_values=False)
    segments = []
    for i, j in zip(*np.nonzero(feasible)):
        x0, x1, y0, y1 = x_edges[j], x_edges[j + 1], y_edges[i], y_edges[i + 1]
        if not padded[i, j + 1]:
            segments.append([(x0, y0), (x1, y0)])
        if not padded[i + 2, j + 1]:
            segments.append([(x0, y1), (x1, y1)])
        if not padded[i + 1, j]:
            segments.append([(x0, y0), (x0, y1)])
        if not padded[i + 1, j + 2]:
            segments.append([(x1, y0), (x1, y1)])
    return segments


def plot_criticality_heatmaps(grid_frames: pd.DataFrame | Sequence[pd.DataFrame], module: str | None = None) -> Figure:
    """Fig. 6: mean loss over noise draws on the (σ, α) grid of one module, one panel
    per path (direct, optimization) and end point (θ_F, θ_opt), feasible region
    outlined, the minimising point starred. Takes full grids (``method="grid"``) of one
    model."""
    grid = pd.concat(list(grid_frames), ignore_index=True) if not isinstance(grid_frames, pd.DataFrame) else grid_frames
    _require(grid, ["module", "alpha", "sigma", "loss_mean", "feasible", "measure", "path", "start", "method"], "grid")
    modules = list(dict.fromkeys(grid["module"]))
    if module is None and len(modules) > 1:
        raise ValueError(f"the grids hold modules {modules}; pass module=<one of them>")
    grid = grid[grid["module"] == (module or modules[0])]
    if grid.empty:
        raise ValueError(f"no grid rows for module {module!r}; the grids hold {modules}")
    if (grid["method"] != "grid").any():
        raise ValueError("heatmaps need full grids: compute them with criticality(..., method='grid')")
    if grid.duplicated(["path", "start", "alpha", "sigma"]).any():
        raise ValueError("several grids share a (path, start); pass the grids of one model and one target")
    panels = [panel for panel in PANELS if ((grid["path"] == panel[0]) & (grid["start"] == panel[1])).any()]
    positive = grid.loc[grid["loss_mean"] > 0, "loss_mean"]
    low, high = float(positive.min()), float(positive.max())
    norm = LogNorm(low, high) if high > 10 * low else Normalize(low, high)  # noise can blow the loss up
    figure, axes = panel_grid(len(panels), 5.0, 4.0)
    for ax, (path, start) in zip(axes, panels):
        panel = grid[(grid["path"] == path) & (grid["start"] == start)]
        loss = panel.pivot(index="alpha", columns="sigma", values="loss_mean")
        feasible = panel.pivot(index="alpha", columns="sigma", values="feasible").astype(bool).to_numpy()
        x_edges, y_edges = _cell_edges(loss.columns.to_numpy(float)), _cell_edges(loss.index.to_numpy(float))
        ax.pcolormesh(x_edges, y_edges, loss.to_numpy(), norm=norm, cmap="viridis")
        ax.add_collection(LineCollection(_feasible_outline(feasible, x_edges, y_edges), colors="white", linewidths=2))
        rows, cols = np.nonzero(feasible)
        ax.plot(loss.columns.to_numpy(float)[cols], loss.index.to_numpy(float)[rows], "o", color="white",
                markeredgecolor="black", markeredgewidth=0.5, markersize=4, linestyle="none", label="feasible")
        best = panel[panel["feasible"]]
        value = math.inf
        if len(best):
            row = best.loc[best["measure"].idxmin()]
            value = float(row["measure"])
            ax.plot(row["sigma"], row["alpha"], marker="*", color="red", markersize=12, label="argmin μ")
        ax.set_xlabel("noise σ" + (" (relative)" if panel["noise"].iloc[0] != "absolute" else ""))
        ax.set_ylabel("α (0 = initial, 1 = end point)")
        ax.set_title(f"{module or modules[0]}: {path} path, {START_LABEL[start]}, μ = {value:.3g}")
    figure.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes),
                    label="mean loss over noise draws")
    legend_below(figure, axes, fontsize="small")  # inside a panel it hid the cells of a corner
    return figure
