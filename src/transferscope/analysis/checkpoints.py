"""Which pre-training checkpoint to fine-tune from (Sec. 3.5, Fig. 7).

Fine-tuning from the checkpoints of one pre-training run (epochs 0..E) shows when the
benefit of pre-training appears; the paper found that it saturates well before the end
of pre-training, around the first lr decay, while source accuracy keeps rising.
"""

from __future__ import annotations

import pandas as pd

from .feature_reuse import score_column


def checkpoint_table(finetuned: pd.DataFrame, source_metrics: pd.DataFrame) -> pd.DataFrame:
    """Join fine-tuning results with the source accuracy of each pre-training checkpoint.

    ``finetuned``: one row per run with ``target, checkpoint_epoch, seed, final_score,
    optimization_speed``; ``source_metrics``: the pre-training run's metrics table.
    Returns one row per (target, checkpoint_epoch) with means over seeds and the
    checkpoint's source test score."""
    source = source_metrics[["epoch", score_column(source_metrics, "test")]].rename(
        columns={"epoch": "checkpoint_epoch", score_column(source_metrics, "test"): "source_score"})
    summary = (finetuned.groupby(["target", "checkpoint_epoch"])[["final_score", "optimization_speed"]]
               .agg(["mean", "std", "count"]))
    summary.columns = [f"{measure}_{stat}" for measure, stat in summary.columns]
    table = summary.reset_index().merge(source, on="checkpoint_epoch", how="left")
    missing = table[table["source_score"].isna()]["checkpoint_epoch"].unique()
    if len(missing):
        raise ValueError(f"pre-training metrics have no row for checkpoint epochs {sorted(missing)}")
    return table.sort_values(["target", "checkpoint_epoch"]).reset_index(drop=True)
