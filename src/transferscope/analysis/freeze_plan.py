"""Which leading modules can stay frozen at their pre-trained weights: a recommendation
from module rewinding (and optionally module criticality), and the table of the runs
that check it (P-T runs with the first k units frozen, ``TrainConfig.freeze``).

The rule (:func:`freeze_recommendation`): walking the modules in partition order, module
i can stay frozen when rewinding it to its pre-trained value, every other module keeping
its fine-tuned value, costs at most ``tolerance`` in score (base score − rewound score,
accuracy or mean AUC); the recommendation is the longest prefix of such modules. Why:

- rewinding module i shows whether the fine-tuned network needs module i's change at
  all. Freezing keeps the module at exactly that pre-trained value and lets the later
  modules adapt to it during training, so a module that is cheap to rewind should cost
  no more frozen (Neyshabur et al. 2020, Sec. 3.4: lower modules of P-T are robust to
  rewinding and less critical, their features are reused);
- a prefix, because freezing the leading units is what saves work: no backward pass
  through them, no optimizer state or weight decay for them. A cheap module after an
  expensive one would save little and is left training;
- ``tolerance`` defaults to one point of score (:data:`DEFAULT_TOLERANCE`, the
  findings' ``NEGLIGIBLE_SCORE``): a loss smaller than that is no loss worth the name.

Rewinding is measured one module at a time. Freezing k modules together can cost more
than any one of them rewound alone (their costs may add up or interact), so the
recommendation is an estimate: the table's ``cumulative_cost`` (the sum of the prefix's
single costs) is an additive guess at the joint cost, not a measurement, and the
study's freeze runs (``freeze:``) measure the joint effect; the findings say whether the
recommendation was right (:func:`transferscope.analysis.claims.freeze_recommendation_right`).
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from ..models import NETWORK
from .claims import NEGLIGIBLE_SCORE, _role
from .feature_reuse import _require

DEFAULT_TOLERANCE = NEGLIGIBLE_SCORE  # one point of accuracy / AUC: a smaller loss is no loss worth the name
TIE = 1e-9  # a cost equal to the tolerance up to float rounding (scores are counts / n) is a tie: within
REWIND_COLUMNS = ("module", "split", "score", "base_score", "metric")


class FreezePlan(NamedTuple):
    """:func:`freeze_recommendation`'s answer: ``freeze`` (the number k of leading units to
    freeze, ``TrainConfig.freeze``) and ``table`` (one row per module)."""

    freeze: int
    table: pd.DataFrame


def _one_model(frame: pd.DataFrame, model: str | None, what: str) -> pd.DataFrame:
    """The rows of ``model`` (``frame`` itself when it has no ``model`` column)."""
    if "model" not in frame.columns:
        if model is not None:
            raise ValueError(f"{what} has no model column, so model={model!r} selects nothing; leave model=None")
        return frame
    names = list(dict.fromkeys(frame["model"]))
    if model is None:
        if len(names) > 1:
            raise ValueError(f"{what} holds several models ({', '.join(map(str, names))}); pass model= one of them")
        return frame
    if model not in names:
        raise ValueError(f"{what} has no model {model!r} (it has {', '.join(map(str, names))}); pass one of those")
    return frame[frame["model"] == model]


def _one_row_per_module(frame: pd.DataFrame, what: str) -> None:
    repeated = sorted(set(frame.loc[frame["module"].duplicated(), "module"]))
    if repeated:
        raise ValueError(f"{what} has several rows for modules {repeated} (several targets, bn modes or "
                         "settings); filter it to one row per module")


def _criticality_by_module(criticality: pd.DataFrame, model: str | None, modules: list[str]) -> pd.Series:
    """μ_i per module: the direct path from θ_F where the frame has ``path``/``start``
    (Fig. 6), the ``network`` row left out."""
    _require(criticality, {"module", "criticality"}, "the criticality frame", "pass network_criticality() output")
    frame = _one_model(criticality, model, "the criticality frame")
    for column, value in (("path", "direct"), ("start", "final")):
        if column in frame.columns:
            frame = frame[frame[column] == value]
    frame = frame[frame["module"] != NETWORK]
    _one_row_per_module(frame, "the criticality frame")
    missing = [module for module in modules if module not in set(frame["module"])]
    if missing:
        raise ValueError(f"the criticality frame has no modules {missing} (it has {list(frame['module'])}); pass "
                         "the criticality of the rewound model with the same modules=")
    return frame.set_index("module")["criticality"]


def freeze_recommendation(
    rewind_frame: pd.DataFrame,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    split: str = "test",
    model: str | None = None,
    criticality: pd.DataFrame | None = None,
    max_criticality: float | None = None,
) -> FreezePlan:
    """The longest prefix of modules whose rewinding to the pre-trained value each costs
    at most ``tolerance`` in score: what can be reused frozen (module docstring).

    cost_i = base_score − score_i (score after rewinding module i alone; a gain is a
    negative cost); module i is *within tolerance* when cost_i ≤ ``tolerance`` (a tie,
    up to float rounding :data:`TIE`, counts as within) and, with ``max_criticality``, μ_i ≤ ``max_criticality``; a NaN
    cost is not within. k = the number of leading modules, in the frame's order (the
    partition's), that are all within tolerance.

    Parameters
    ----------
    rewind_frame : pandas.DataFrame
        :func:`transferscope.analysis.rewind` output of a P-T model rewound to its
        pre-trained weights (its epoch-0 checkpoint): ``module``, ``split``, ``score``,
        ``base_score``, ``metric``, optionally ``model``.
    tolerance : float
        The largest score cost of rewinding one module that still lets it stay frozen.
    split : str
        The split whose scores decide.
    model : str, optional
        The model whose rows decide, when the frame holds several.
    criticality : pandas.DataFrame, optional
        :func:`transferscope.analysis.network_criticality` output of the same model
        (rows of the direct path from θ_F where it has ``path``/``start``): adds the
        column ``criticality`` (μ_i).
    max_criticality : float, optional
        With ``criticality``, a module must also have μ_i ≤ ``max_criticality``.

    Returns
    -------
    FreezePlan
        ``freeze`` (k) and ``table``: one row per module in partition order with
        ``module``, ``position`` (0-based), ``metric``, ``split``, ``score``,
        ``base_score``, ``cost``, ``cumulative_cost`` (the sum of the costs up to this
        module: an additive guess at the joint cost, since rewinding is measured one
        module at a time), ``within_tolerance``, ``frozen`` (position < k),
        ``tolerance``, ``model`` where the frame has one, and ``criticality`` when given.

    Raises
    ------
    ValueError
        For a missing column, split or model, several rows per module, a negative
        tolerance, ``max_criticality`` without ``criticality``, or a criticality frame
        that lacks a module.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Sec. 3.4, Figs. 5-6. Zhang, Bengio & Singer (2019), "Are all
    layers created equal?".
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance is a score cost >= 0 (0.01 = one point), got {tolerance}")
    if max_criticality is not None and criticality is None:
        raise ValueError("max_criticality needs the criticality frame; pass criticality=network_criticality(...)")
    _require(rewind_frame, set(REWIND_COLUMNS), "the rewind frame", "pass rewind() output")
    frame = _one_model(rewind_frame, model, "the rewind frame")
    splits = list(dict.fromkeys(frame["split"]))
    if split not in splits:
        raise ValueError(f"the rewind frame has no split {split!r} (it has {splits}); pass split= one of them")
    frame = frame[frame["split"] == split]
    _one_row_per_module(frame, "the rewind frame")
    columns = ["module", "metric", "split", "score", "base_score"] + (["model"] if "model" in frame.columns else [])
    table = frame[columns].reset_index(drop=True)
    table.insert(1, "position", range(len(table)))
    table["cost"] = table["base_score"] - table["score"]
    table["cumulative_cost"] = table["cost"].cumsum()
    within = table["cost"] <= tolerance + TIE  # NaN compares False
    if criticality is not None:
        table["criticality"] = _criticality_by_module(criticality, model, list(table["module"])).loc[
            table["module"]].to_numpy(float)
        if max_criticality is not None:
            within &= table["criticality"] <= max_criticality
    table["within_tolerance"] = within
    freeze = int(within.cumprod().sum())
    table["frozen"] = table["position"] < freeze
    table["tolerance"] = tolerance
    return FreezePlan(freeze, table)


def freeze_plans(rewind_frame: pd.DataFrame, criticality: pd.DataFrame | None = None, *,
                 tolerance: float = DEFAULT_TOLERANCE, split: str = "test") -> pd.DataFrame:
    """The recommendation for every P-T model of a study's rewind table, per target.

    Parameters
    ----------
    rewind_frame : pandas.DataFrame
        The study's ``rewind`` table (``target``, ``model`` and :func:`rewind`'s columns).
    criticality : pandas.DataFrame, optional
        The study's ``criticality`` table, for the ``criticality`` column.
    tolerance, split
        As in :func:`freeze_recommendation`.

    Returns
    -------
    pandas.DataFrame
        :func:`freeze_recommendation`'s tables, one per (target, P-T model), with
        ``target`` first and ``freeze`` (that plan's k) on every row; empty when no P-T
        model was rewound.

    References
    ----------
    As :func:`freeze_recommendation`.
    """
    _require(rewind_frame, {"target", "model"}, "the rewind table", "pass the study's rewind table")
    plans = []
    for (target, model), _ in rewind_frame.groupby(["target", "model"], sort=False):
        if getattr(_role(model), "kind", None) != "P-T":
            continue
        rows = rewind_frame[rewind_frame["target"] == target]
        critical = None if criticality is None else criticality[criticality["target"] == target]
        has_model = critical is not None and model in set(critical["model"])
        plan = freeze_recommendation(rows, tolerance=tolerance, split=split, model=model,
                                     criticality=critical if has_model else None)
        table = plan.table.assign(freeze=plan.freeze)
        table.insert(0, "target", target)
        plans.append(table)
    return pd.concat(plans, ignore_index=True) if plans else pd.DataFrame()


def freeze_table(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Final score and training time of P-T runs per number of frozen leading units.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per P-T run: ``target``, ``metric``, ``freeze`` (k), ``seed``,
        ``final_score`` and ``job`` (the study's ``runs`` rows).
    curves : pandas.DataFrame
        Per-epoch metrics with ``job`` and ``train_seconds`` (the study's ``curves``).

    Returns
    -------
    pandas.DataFrame
        One row per ``(target, metric, freeze)``: mean, std and count over seeds of
        ``final_score`` and of ``train_seconds`` (a run's training time: the sum over its
        epochs of the time spent in the training loop, evaluation left out; wall-clock,
        so comparable between runs on the same hardware and load).

    Raises
    ------
    ValueError
        When a column is missing, or a run has no curve.

    References
    ----------
    Issue 15 of transferscope: freeze plans checked by runs.
    """
    _require(runs, {"target", "metric", "freeze", "seed", "final_score", "job"}, "the freeze runs table",
             "pass one row per P-T run: summarize_run(metrics) with target, freeze, seed and job")
    _require(curves, {"job", "train_seconds"}, "the curves table", "pass the runs' per-epoch metrics with job")
    seconds = curves.groupby("job")["train_seconds"].sum()
    missing = sorted(set(runs["job"]) - set(seconds.index))
    if missing:
        raise ValueError(f"the curves table has no rows for runs {missing}; pass the curves of every run")
    frame = runs.assign(freeze=runs["freeze"].astype(int), train_seconds=runs["job"].map(seconds))
    summary = (frame.groupby(["target", "metric", "freeze"])[["final_score", "train_seconds"]]
               .agg(["mean", "std", "count"]))
    summary.columns = [f"{measure}_{stat}" for measure, stat in summary.columns]
    return summary.reset_index().sort_values(["target", "freeze"]).reset_index(drop=True)
