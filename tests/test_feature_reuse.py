"""Run summaries, the Fig. 3 block-shuffle table and the Fig. 7 checkpoint table, on
small hand-written metrics tables whose numbers are checked by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from transferscope.analysis import checkpoint_table, feature_reuse_table, optimization_speed, summarize_run
from transferscope.analysis.feature_reuse import score_column


def metrics_table(metric: str, test: list[float], train: list[float]) -> pd.DataFrame:
    """A run's metrics: epochs 0..E, test and clean training scores named by ``metric``."""
    return pd.DataFrame({"epoch": range(len(test)), "test_loss": 1.0, f"test_{metric}": test,
                         f"train_clean_{metric}": train})


def test_summarize_run_reads_the_score_named_by_the_metric():
    metrics = metrics_table("auc", [0.5, 0.8, 0.7], [0.1, 0.6, 0.9])
    summary = summarize_run(metrics)
    assert summary == {"final_score": 0.7, "best_score": 0.8, "optimization_speed": pytest.approx(0.75),
                       "epochs": 2, "metric": "auc", "speed_series": "clean"}
    assert score_column(metrics, "train_clean") == "train_clean_auc"
    with pytest.raises(ValueError, match=r"train_running_accuracy or train_running_auc: the columns are"):
        optimization_speed(metrics, series="running")
    with pytest.raises(TypeError):
        optimization_speed(metrics, "clean")  # settings are keyword-only


def runs_table() -> pd.DataFrame:
    rows = []
    for block, pt, rit in (("32", (0.8, 0.9), (0.4, 0.6)), ("4", (0.5, 0.5), (0.4, 0.4))):
        for seed in (0, 1):
            rows.append({"target": "xray", "metric": "auc", "role": "P-T", "block_size": block, "seed": seed,
                         "final_score": pt[seed], "optimization_speed": pt[seed] - 0.1})
            rows.append({"target": "xray", "metric": "auc", "role": "RI-T", "block_size": block, "seed": seed,
                         "final_score": rit[seed], "optimization_speed": rit[seed] - 0.1})
    return pd.DataFrame(rows)


def test_feature_reuse_table_keeps_the_metric_and_computes_the_drops():
    table = feature_reuse_table(runs_table()).set_index("block_size")
    assert set(table["metric"]) == {"auc"}
    assert table.loc["32", "PT_final_score_mean"] == pytest.approx(0.85)
    assert table.loc["32", "final_score_relative_drop"] == pytest.approx(100 * (0.85 - 0.5) / 0.85)
    assert table.loc["4", "optimization_speed_relative_drop"] == pytest.approx(100 * (0.4 - 0.3) / 0.4)
    with pytest.raises(ValueError, match=r"the runs table lacks columns \['metric'\] \(it has \["):
        feature_reuse_table(runs_table().drop(columns="metric"))


def test_checkpoint_table_names_both_metrics():
    finetuned = runs_table().query("role == 'P-T' and block_size == '32'").assign(
        checkpoint_epoch=[0, 1]).drop(columns=["role", "block_size"])
    source = metrics_table("accuracy", [0.1, 0.3], [0.2, 0.4])
    table = checkpoint_table(finetuned, source)
    assert list(table["source_score"]) == [0.1, 0.3] and set(table["source_metric"]) == {"accuracy"}
    assert list(table["final_score_mean"]) == [0.8, 0.9] and set(table["metric"]) == {"auc"}
    with pytest.raises(ValueError, match=r"lacks columns \['checkpoint_epoch'\]"):
        checkpoint_table(finetuned.drop(columns="checkpoint_epoch"), source)
    with pytest.raises(ValueError, match=r"no row for checkpoint epochs \[5\]"):
        checkpoint_table(finetuned.assign(checkpoint_epoch=[0, 5]), source)
