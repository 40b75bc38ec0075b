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

import pandas as pd

SPEED_SERIES = ("clean", "running")


def score_column(metrics: pd.DataFrame, split: str) -> str:
    """Column of the headline score for ``split`` ("test", "train_clean", "train_running")."""
    for name in (f"{split}_accuracy", f"{split}_auc"):
        if name in metrics:
            return name
    raise KeyError(f"metrics table has no {split}_accuracy or {split}_auc column; columns: {list(metrics)}")


def optimization_speed(metrics: pd.DataFrame, series: str = "clean") -> float:
    """Mean over epochs 1..E of the training accuracy (``series`` "clean": eval mode on
    a fixed training subset; "running": the train-mode running accuracy)."""
    if series not in SPEED_SERIES:
        raise ValueError(f"series must be one of {SPEED_SERIES}, got {series!r}")
    trained = metrics[metrics["epoch"] >= 1]
    if trained.empty:
        raise ValueError("optimization speed needs at least one trained epoch")
    return float(trained[score_column(metrics, f"train_{series}")].mean())


def relative_drop(a_pt: float, a_rit: float) -> float:
    """``100 · (A_PT − A_RIT) / A_PT``: how much of P-T's performance RI-T lacks."""
    if a_pt == 0:
        raise ValueError("relative drop is undefined when A_PT is 0")
    return 100.0 * (a_pt - a_rit) / a_pt


def summarize_run(metrics: pd.DataFrame, series: str = "clean") -> dict[str, float]:
    """Final and best test score, and optimization speed, of one run's metrics table."""
    test = score_column(metrics, "test")
    return {"final_score": float(metrics.sort_values("epoch")[test].iloc[-1]),
            "best_score": float(metrics[test].max()),
            "optimization_speed": optimization_speed(metrics, series),
            "epochs": int(metrics["epoch"].max()),
            "metric": test.removeprefix("test_"), "speed_series": series}


def feature_reuse_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Aggregate run summaries into the Fig. 3 table.

    ``runs``: one row per run with columns ``target, role ("P-T"/"RI-T"), block_size,
    seed, final_score, optimization_speed``. Returns one row per (target, block_size)
    with the mean and std over seeds for each role and the relative drops of final
    performance and of optimization speed."""
    required = {"target", "role", "block_size", "seed", "final_score", "optimization_speed"}
    if missing := required - set(runs):
        raise KeyError(f"runs table lacks columns {sorted(missing)}")
    runs = runs.assign(block_size=runs["block_size"].astype(str))
    stats = (runs.groupby(["target", "block_size", "role"])[["final_score", "optimization_speed"]]
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
