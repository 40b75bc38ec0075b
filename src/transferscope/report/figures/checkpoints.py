"""Fig. 7 of the paper: fine-tuning from pre-training checkpoints."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .findings import verdict_sentence


def plot_checkpoints(table: pd.DataFrame) -> Figure:
    """Final performance and optimization speed of P-T against the pre-training epoch it
    started from, one panel per target, the source test score shaded behind."""
    targets = sorted(table["target"].unique())
    figure = Figure(figsize=(4.2 * len(targets), 3.4), layout="constrained")
    axes = figure.subplots(1, len(targets), squeeze=False)[0]
    for ax, target in zip(axes, targets):
        frame = table[table["target"] == target].sort_values("checkpoint_epoch")
        x = frame["checkpoint_epoch"].to_numpy()
        ax.fill_between(x, 0, frame["source_score"], color="0.85", label="source test score of checkpoint")
        for measure, marker in (("final_score", "o-"), ("optimization_speed", "s--")):
            ax.errorbar(x, frame[f"{measure}_mean"], yerr=np.nan_to_num(frame[f"{measure}_std"].to_numpy()),
                        fmt=marker, capsize=2, label=measure.replace("_", " "))
        ax.set_xlabel("pre-training epoch fine-tuned from")
        ax.set_ylabel(" / ".join(dict.fromkeys([*frame["metric"], *frame["source_metric"]])))
        ax.set_ylim(0, 1.05)
        ax.set_title(target)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("Fine-tuning from pre-training checkpoints (Fig. 7)")
    return figure


def caption_checkpoints(table: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """What Fig. 7 of the paper found, the final scores per checkpoint here, and the
    findings' ``verdicts`` on the claim."""
    parts = []
    for target, frame in table.groupby("target"):
        frame = frame.sort_values("checkpoint_epoch")
        best = frame["final_score_mean"].max()
        reach = frame[frame["final_score_mean"] >= best - 0.01]["checkpoint_epoch"].min()
        parts.append(f"{target}: final score {frame['final_score_mean'].iloc[0]:.3f} from epoch "
                     f"{frame['checkpoint_epoch'].iloc[0]} to {frame['final_score_mean'].iloc[-1]:.3f} from epoch "
                     f"{frame['checkpoint_epoch'].iloc[-1]}; within 0.01 of the best ({best:.3f}) from epoch {reach}")
    return ("The paper found that the benefit of pre-training appears early and saturates around the first lr "
            "decay, while source accuracy keeps rising, so later checkpoints are not better starting points. "
            "Here: " + "; ".join(parts) + ". " + verdict_sentence(verdicts)).strip()
