"""Table 1 of Neyshabur, Sedghi & Zhang (2020): feature similarity (CKA) per module for the
pairs P-T&P, P-T&P-T, P-T&RI-T and RI-T&RI-T, from the frame of
:func:`transferscope.analysis.similarity.compare_representations`.

Model names carry a role and a seed separated by ``":"`` (``"P"``, ``"P-T:s0"``,
``"RI-T:s1"``); a row's pair is named by the roles of its two models. Table values are
means over the available seed pairs of the same module in both models (``module_a ==
module_b``); a model against itself is left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...analysis.claims import FLOOR_MODEL
from .findings import verdict_sentence
from .layout import LEGEND_HEIGHT, legend_below
from .names import role

PAPER_PAIRS = ("P-T&P", "P-T&P-T", "P-T&RI-T", "RI-T&RI-T")
_PAIR_OF_ROLES = {frozenset({"P-T", "P"}): "P-T&P", frozenset({"P-T"}): "P-T&P-T",
                  frozenset({"P-T", "RI-T"}): "P-T&RI-T", frozenset({"RI-T"}): "RI-T&RI-T"}
_SETTINGS = ("estimator", "kernel", "debiased", "batch_size", "bandwidth", "bandwidth_rule")
_REQUIRED = ("model_a", "model_b", "module_a", "module_b", "cka")
PAPER_FINDING = ("The paper (Table 1, CheXpert, ResNet-50) found P-T&P-T the most similar pair, falling with depth "
                 "(0.67/0.82/0.61/0.41/0.16 for conv1/layer1-4), and P-T&RI-T and RI-T&RI-T near 0 (below 0.01 but "
                 "0.04-0.08 at layer4)")


def _checked(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [column for column in _REQUIRED if column not in frame.columns]
    if missing:
        raise ValueError(f"the CKA frame lacks columns {missing}; pass the frame of compare_representations")
    settings = [column for column in _SETTINGS if column in frame.columns]
    if settings and len(frame[settings].drop_duplicates()) > 1:
        raise ValueError(f"the CKA frame mixes settings {frame[settings].drop_duplicates().to_dict('records')}, whose "
                         "values are not comparable; select one, e.g. frame[frame.estimator == 'minibatch']")
    return frame


def _setting_text(frame: pd.DataFrame) -> str:
    first = frame.iloc[0]
    parts = [f"{first['estimator']} CKA" if "estimator" in frame else "CKA"]
    if "kernel" in frame:
        parts.append(f"{first['kernel']} kernel" + (", debiased" if first.get("debiased", False) else ""))
    if "n_examples" in frame:
        parts.append(f"n = {int(frame['n_examples'].max())}")
    return ", ".join(parts)


def _module_order(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["module_a"]))


def paper_pair_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows comparing the same module of two distinct models whose roles form one of the
    paper's pairs, with a ``pair`` column (``"P-T&RI-T"``...)."""
    frame = _checked(frame)
    rows = frame[(frame["module_a"] == frame["module_b"]) & (frame["model_a"] != frame["model_b"])]
    pairs = [_PAIR_OF_ROLES.get(frozenset({role(a), role(b)})) for a, b in zip(rows["model_a"], rows["model_b"])]
    return rows.assign(pair=pairs).dropna(subset=["pair"])


def table1_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 1: mean CKA over seed pairs, one row per paper pair present (in the paper's
    order), one column per module (in the frame's order)."""
    rows = paper_pair_rows(frame)
    if rows.empty:
        raise ValueError("no rows compare two models of the paper's roles (P, P-T, RI-T) on the same module; "
                         "name models '<role>:<seed>', e.g. 'P-T:s0'")
    table = rows.pivot_table(index="pair", columns="module_a", values="cka", aggfunc="mean")
    table = table.loc[[pair for pair in PAPER_PAIRS if pair in table.index], _module_order(rows)]
    table.index.name, table.columns.name = "pair", "module"
    return table


def floor_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The chance floor next to Table 1: mean CKA between the models of each role and a
    freshly initialised network of the same architecture (model :data:`FLOOR_MODEL`),
    one row per role (``"P-T&RI"``...), one column per module as in Table 1; empty
    without floor rows."""
    frame = _checked(frame)
    is_floor = (frame["model_a"] == FLOOR_MODEL) | (frame["model_b"] == FLOOR_MODEL)
    rows = frame[is_floor & (frame["module_a"] == frame["module_b"]) & (frame["model_a"] != frame["model_b"])]
    if rows.empty:
        return pd.DataFrame()
    other = rows["model_a"].where(rows["model_b"] == FLOOR_MODEL, rows["model_b"])
    rows = rows.assign(pair=[f"{role(name)}&{FLOOR_MODEL}" for name in other])
    table = rows.pivot_table(index="pair", columns="module_a", values="cka", aggfunc="mean")
    order = [f"{kind}&{FLOOR_MODEL}" for kind in ("P-T", "RI-T", "P")]
    table = table.loc[[p for p in order if p in table.index] + [p for p in table.index if p not in order],
                      _module_order(rows)]
    table.index.name, table.columns.name = "pair", "module"
    return table


def plot_table1(frame: pd.DataFrame) -> Figure:
    """Grouped bars of Table 1: mean CKA per module and pair, whiskers from the lowest to the
    highest seed pair."""
    rows = paper_pair_rows(frame)
    table = table1_frame(frame)
    spread = rows.groupby(["pair", "module_a"])["cka"].agg(["min", "max", "count"])
    low, high = (spread[stat].unstack().reindex(index=table.index, columns=table.columns) for stat in ("min", "max"))
    counts = spread["count"].groupby(level="pair").max()
    modules = list(table.columns)
    width = 1.4 * len(modules) + 2.5
    figure = Figure(figsize=(width, 4.0 + LEGEND_HEIGHT), layout="constrained")
    axes = figure.add_subplot()
    bar_width = 0.8 / len(table)
    x = np.arange(len(modules))
    for index, pair in enumerate(table.index):
        means = table.loc[pair].to_numpy()
        errors = np.clip([means - low.loc[pair].to_numpy(), high.loc[pair].to_numpy() - means], 0, None)
        axes.bar(x + (index - (len(table) - 1) / 2) * bar_width, means, bar_width, yerr=errors, capsize=2,
                 label=f"{pair} ({counts[pair]} pair{'s' if counts[pair] > 1 else ''})")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(x, modules)
    axes.set_xlabel("module")
    axes.set_ylabel(f"CKA ({_setting_text(rows)})")
    axes.set_title("Feature similarity per module (Table 1): mean over seed pairs, whiskers min-max")
    legend_below(figure, [axes], title="pair", fontsize="small")
    return figure


def plot_cka_heatmap(frame: pd.DataFrame, model_a: str, model_b: str) -> Figure:
    """Module x module CKA between ``model_a`` (rows) and ``model_b`` (columns), annotated."""
    frame = _checked(frame)
    forward = frame[(frame["model_a"] == model_a) & (frame["model_b"] == model_b)]
    backward = frame[(frame["model_a"] == model_b) & (frame["model_b"] == model_a)]
    rows = forward if not forward.empty else backward.rename(columns={"module_a": "module_b", "module_b": "module_a"})
    if rows.empty:
        available = sorted(set(zip(frame["model_a"], frame["model_b"])))
        raise ValueError(f"no CKA rows for models {model_a!r} and {model_b!r}; the frame has pairs {available}")
    modules_a, modules_b = _module_order(rows), list(dict.fromkeys(rows["module_b"]))
    matrix = rows.pivot_table(index="module_a", columns="module_b", values="cka").loc[modules_a, modules_b].to_numpy()
    low, high = min(0.0, float(np.nanmin(matrix))), max(1.0, float(np.nanmax(matrix)))
    figure = Figure(figsize=(0.8 * len(modules_b) + 2.5, 0.6 * len(modules_a) + 1.8), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="viridis", vmin=low, vmax=high)
    for (i, j), value in np.ndenumerate(matrix):
        bright = (value - low) / (high - low) > 0.6
        axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small",
                  color="black" if bright else "white")
    axes.set_xticks(range(len(modules_b)), modules_b)
    axes.set_yticks(range(len(modules_a)), modules_a)
    axes.set_xlabel(f"module of {model_b}")
    axes.set_ylabel(f"module of {model_a}")
    axes.set_title(f"CKA between {model_a} and {model_b} ({_setting_text(rows)})", fontsize="medium")
    figure.colorbar(image, ax=axes, label="CKA")
    return figure


def caption_cka(frame: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """What the paper found in Table 1, what these numbers show, and the findings'
    ``verdicts`` on the claim."""
    table = table1_frame(frame)
    modules = list(table.columns)
    found = []
    if "P-T&P-T" in table.index:
        values = table.loc["P-T&P-T"]
        steps = np.diff(values.to_numpy())
        trend = ("decreases with depth" if (steps <= 0).all() else "increases with depth" if (steps >= 0).all()
                 else f"is not monotone in depth (lowest {values.min():.2f} at {values.idxmin()})")
        found.append(f"P-T&P-T goes from {values.iloc[0]:.2f} ({modules[0]}) to {values.iloc[-1]:.2f} "
                     f"({modules[-1]}) and {trend}")
    if "P-T&P" in table.index:
        values = table.loc["P-T&P"]
        found.append(f"P-T&P goes from {values.iloc[0]:.2f} ({modules[0]}) to {values.iloc[-1]:.2f} ({modules[-1]})")
    for pair in ("P-T&RI-T", "RI-T&RI-T"):
        if pair in table.index:
            values = table.loc[pair]
            found.append(f"{pair} is at most {values.max():.2f} ({values.idxmax()}) and on average {values.mean():.2f}")
    highest = table.idxmax().value_counts()
    found.append("the most similar pair is " + ", ".join(f"{pair} at {count} of {len(modules)} modules"
                                                          for pair, count in highest.items()))
    return (f"{PAPER_FINDING}. Here ({_setting_text(paper_pair_rows(frame))}, mean over seed pairs): "
            + "; ".join(found) + ". " + verdict_sentence(verdicts)).strip()
