"""Which pre-training checkpoint to fine-tune from (Sec. 3.5, Fig. 7).

Fine-tuning from the checkpoints of one pre-training run (epochs 0..E) shows when the
benefit of pre-training appears; the paper found that it saturates well before the end
of pre-training, around the first lr decay, while source accuracy keeps rising.
"""

from __future__ import annotations

import pandas as pd

from .feature_reuse import _require, score_column


def checkpoint_table(finetuned: pd.DataFrame, source_metrics: pd.DataFrame) -> pd.DataFrame:
    """Join fine-tuning results with the source score of each pre-training checkpoint.

    Parameters
    ----------
    finetuned : pandas.DataFrame
        One row per fine-tuning run: ``target``, ``metric``, ``checkpoint_epoch``,
        ``seed``, ``final_score``, ``optimization_speed``
        (:func:`transferscope.analysis.summarize_run` plus the run's labels).
    source_metrics : pandas.DataFrame
        The pre-training run's metrics table, one row per epoch.

    Returns
    -------
    pandas.DataFrame
        One row per ``(target, metric, checkpoint_epoch)``: mean, std and count over seeds
        of ``final_score`` and ``optimization_speed``, the checkpoint's ``source_score``
        (test score of the pre-training run at that epoch) and its ``source_metric``.

    Raises
    ------
    ValueError
        When a column is missing, or the pre-training metrics lack a checkpoint's epoch.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Sec. 3.5, Fig. 7.
    """
    _require(finetuned, {"target", "metric", "checkpoint_epoch", "seed", "final_score", "optimization_speed"},
             "the fine-tuning runs table", "pass one row per run: summarize_run(metrics) with target, "
             "checkpoint_epoch, seed")
    test = score_column(source_metrics, "test")
    source = (source_metrics[["epoch", test]].rename(columns={"epoch": "checkpoint_epoch", test: "source_score"})
              .assign(source_metric=test.removeprefix("test_")))
    summary = (finetuned.groupby(["target", "metric", "checkpoint_epoch"])[["final_score", "optimization_speed"]]
               .agg(["mean", "std", "count"]))
    summary.columns = [f"{measure}_{stat}" for measure, stat in summary.columns]
    table = summary.reset_index().merge(source, on="checkpoint_epoch", how="left")
    missing = sorted(int(epoch) for epoch in table[table["source_score"].isna()]["checkpoint_epoch"].unique())
    if missing:
        raise ValueError(f"pre-training metrics have no row for checkpoint epochs {missing} (they have epochs "
                         f"{sorted(int(epoch) for epoch in source['checkpoint_epoch'])}): pass the metrics of the "
                         "run that saved those checkpoints")
    return table.sort_values(["target", "checkpoint_epoch"]).reset_index(drop=True)
