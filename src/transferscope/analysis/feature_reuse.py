"""Feature reuse vs low-level statistics: the block-shuffle sweep (Sec. 3.1, Fig. 3).

Target images are block-shuffled (:class:`transferscope.data.BlockShuffle`), which
destroys visual features but keeps low-level statistics; if P-T still beats RI-T on
shuffled data, part of the benefit of pre-training is not feature reuse.

Measures (Neyshabur et al. 2020, Sec. 3.1):
- final performance: test accuracy (or mean AUC) after the last epoch;
- optimization speed: the mean training accuracy over all training epochs 1..E
  (which series, clean eval-mode or running train-mode accuracy, is a setting);
- relative drop: ``100 · (A_PT − A_RIT) / A_PT``.
"""

from __future__ import annotations

import math

import pandas as pd

from ..evaluation import score_metric

SPEED_SERIES = ("clean", "running")


def score_column(metrics: pd.DataFrame, split: str) -> str:
    """The column of a run's metrics table holding the headline score of ``split``.

    Parameters
    ----------
    metrics : pandas.DataFrame
        A run's metrics table (:attr:`transferscope.train.TrainingRun.metrics`).
    split : str
        ``"test"``, ``"train_clean"`` or ``"train_running"``.

    Returns
    -------
    str
        ``f"{split}_accuracy"`` or ``f"{split}_auc"`` (:func:`transferscope.evaluation.score_metric`).
    """
    return f"{split}_{score_metric(metrics, f'{split}_')}"


def block_size_key(block_size: int | str) -> float:
    """Sort key of a block size (``16``, ``"4"``, ``"*"``): numerically from the largest
    (the unshuffled image) down to 1, then ``"*"`` (every scalar shuffled) last.

    Parameters
    ----------
    block_size : int or str
        A block size as in the ``block_size`` column of :func:`feature_reuse_table`.

    Returns
    -------
    float
        ``-size``, or ``inf`` for ``"*"``.
    """
    return math.inf if str(block_size) == "*" else -int(block_size)


def _require(table: pd.DataFrame, columns: set[str], what: str, fix: str) -> None:
    if missing := columns - set(table.columns):
        raise ValueError(f"{what} lacks columns {sorted(missing)} (it has {list(table.columns)}); {fix}")


def optimization_speed(metrics: pd.DataFrame, *, series: str = "clean") -> float:
    """Optimization speed: the mean over epochs 1..E of the training score.

    Parameters
    ----------
    metrics : pandas.DataFrame
        A run's metrics table, with ``epoch`` and ``train_clean_*`` / ``train_running_*`` scores.
    series : {"clean", "running"}
        Eval mode on a fixed training subset, or the train-mode running accuracy.

    Returns
    -------
    float
        ``mean_{e=1..E} A_train(e)``.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Sec. 3.1.
    """
    if series not in SPEED_SERIES:
        raise ValueError(f"series must be one of {SPEED_SERIES}, got {series!r}")
    trained = metrics[metrics["epoch"] >= 1]
    if trained.empty:
        raise ValueError("optimization speed needs at least one trained epoch")
    return float(trained[score_column(metrics, f"train_{series}")].mean())


def relative_drop(a_pt: float, a_rit: float) -> float:
    """How much of P-T's performance RI-T lacks: ``100 · (A_PT − A_RIT) / A_PT``.

    Parameters
    ----------
    a_pt, a_rit : float
        The same measure (final score, optimization speed) for P-T and RI-T.

    Returns
    -------
    float
        The drop in percent of ``a_pt``.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Sec. 3.1.
    """
    if a_pt == 0:
        raise ValueError("relative drop is undefined when A_PT is 0")
    return 100.0 * (a_pt - a_rit) / a_pt


def summarize_run(metrics: pd.DataFrame, *, series: str = "clean") -> dict[str, float | int | str]:
    """Final and best test score, and optimization speed, of one run.

    Parameters
    ----------
    metrics : pandas.DataFrame
        The run's metrics table.
    series : {"clean", "running"}
        As in :func:`optimization_speed`.

    Returns
    -------
    dict
        ``final_score`` (last epoch), ``best_score``, ``optimization_speed``, ``epochs``,
        ``metric`` (``"accuracy"`` or ``"auc"``) and ``speed_series``.
    """
    test = score_column(metrics, "test")
    return {"final_score": float(metrics.sort_values("epoch")[test].iloc[-1]),
            "best_score": float(metrics[test].max()),
            "optimization_speed": optimization_speed(metrics, series=series),
            "epochs": int(metrics["epoch"].max()),
            "metric": test.removeprefix("test_"), "speed_series": series}


def feature_reuse_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Aggregate run summaries into the Fig. 3 table.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run: ``target``, ``metric``, ``role`` (``"P-T"``/``"RI-T"``),
        ``block_size``, ``seed``, ``final_score``, ``optimization_speed``
        (:func:`summarize_run` plus the run's labels).

    Returns
    -------
    pandas.DataFrame
        One row per ``(target, metric, block_size)``: mean, std and count over seeds of
        each measure for each role (``PT_final_score_mean``, ``RIT_optimization_speed_std``…)
        and the relative drops ``final_score_relative_drop`` and
        ``optimization_speed_relative_drop`` (:func:`relative_drop` of the means).

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Sec. 3.1, Fig. 3.
    """
    _require(runs, {"target", "metric", "role", "block_size", "seed", "final_score", "optimization_speed"},
             "the runs table", "pass one row per run: summarize_run(metrics) with target, role, block_size, seed")
    runs = runs.assign(block_size=runs["block_size"].astype(str))
    stats = (runs.groupby(["target", "metric", "block_size", "role"])[["final_score", "optimization_speed"]]
             .agg(["mean", "std", "count"]))
    stats.columns = [f"{measure}_{stat}" for measure, stat in stats.columns]
    wide = stats.unstack("role")
    wide.columns = [f"{role}_{name}".replace("-", "") for name, role in wide.columns]
    wide = wide.reset_index()
    for measure in ("final_score", "optimization_speed"):
        if f"PT_{measure}_mean" in wide and f"RIT_{measure}_mean" in wide:
            wide[f"{measure}_relative_drop"] = [
                relative_drop(pt, rit) if pt else float("nan")
                for pt, rit in zip(wide[f"PT_{measure}_mean"], wide[f"RIT_{measure}_mean"])]
    return wide
