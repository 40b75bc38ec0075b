"""Report figures and tables of the loss landscape (Fig. 4, Table 3)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from transferscope.analysis.basins import basin_along
from transferscope.report.figures.landscape import (
    PAPER_DELTAS,
    barrier_table,
    basin_table,
    caption_basin,
    caption_interpolation,
    plot_interpolation,
)

ALPHAS = np.linspace(-0.5, 1.5, 41)
# (pair_type, pair, accuracy bump, loss bump): P-T pairs flat, RI-T pairs with a barrier.
CURVES = [
    ("P-T/P-T", "P-T:s0|P-T:s1", 0.004, 0.01),
    ("P-T/P-T", "P-T:s0|P-T:s2", 0.002, 0.02),
    ("RI-T/RI-T", "RI-T:s0|RI-T:s1", 0.30, 1.2),
    ("RI-T/RI-T", "RI-T:s0|RI-T:s2", 0.25, 1.0),
    ("P-T/RI-T", "P-T:s0|RI-T:s0", 0.40, 1.6),
    ("best/final P-T", "P-T:s0:best|P-T:s0:final", 0.001, 0.005),
]


def _study_frame(metric: str = "accuracy") -> pd.DataFrame:
    parts = []
    for target, offset in (("real", 0.0), ("clipart", 0.05)):
        for pair_type, pair, acc_bump, loss_bump in CURVES:
            inside = np.sin(np.pi * np.clip(ALPHAS, 0, 1))
            outside = np.maximum(np.abs(ALPHAS - 0.5) - 0.5, 0)
            parts.append(pd.DataFrame({
                "alpha": ALPHAS, "split": "test",
                "loss": 1.0 + offset + loss_bump * inside + 8 * outside**2,
                "score": 0.7 - offset - acc_bump * inside - 0.5 * outside, "metric": metric,
                "n_examples": 500, "bn": "follow", "recalibration_batches": None, "batched": False,
                "pair": pair, "pair_type": pair_type, "target": target,
            }))
    return pd.concat(parts, ignore_index=True)


def test_plot_interpolation_returns_labelled_figure():
    figure = plot_interpolation(_study_frame())
    assert isinstance(figure, Figure)
    axes = figure.get_axes()
    assert len(axes) == 4  # 2 targets × (accuracy, loss)
    for ax in axes:
        assert ax.get_xlabel().startswith("interpolation coefficient λ") and ax.get_ylabel() and ax.get_title()
    assert axes[0].get_ylabel() == "test accuracy (%)" and axes[1].get_ylabel() == "test loss"
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:3] == ["P-T/P-T (2 pairs)", "RI-T/RI-T (2 pairs)", "P-T/RI-T (1 pair)"]
    assert len(axes[1].collections) == 2  # min-max bands only for the types with several pairs
    auc_figure = plot_interpolation(_study_frame("auc"))
    assert auc_figure.get_axes()[0].get_ylabel() == "test mean AUC"


def test_barrier_table_matches_the_bumps():
    table = barrier_table(_study_frame())
    assert len(table) == 2 * len(CURVES)
    for pair_type, pair, acc_bump, loss_bump in CURVES:
        rows = table[table["pair"] == pair]
        assert rows["loss_barrier"].to_numpy() == pytest.approx(loss_bump, abs=1e-12)
        assert rows["error_barrier"].to_numpy() == pytest.approx(acc_bump, abs=1e-12)
        assert (rows["loss_barrier_alpha"] == 0.5).all() and (rows["pair_type"] == pair_type).all()
    assert set(table["metric"]) == {"accuracy"}
    single = barrier_table(_study_frame().query("pair == 'P-T:s0|P-T:s1' and target == 'real'")
                           .drop(columns=["pair", "pair_type", "target"]))
    assert len(single) == 1 and single["loss_barrier"].iloc[0] == pytest.approx(0.01)


def test_barrier_table_of_concatenated_interpolate_frames_has_one_row_per_curve():
    """Issue 11: interpolate() frames named by model_a/model_b (no pair column) were merged
    into one pair, and the error told the user to see barrier_table itself."""
    study = _study_frame().query("target == 'real'")
    curves = []
    for _, pair, _, _ in CURVES[:3]:
        a, b = pair.split("|")
        curve = study[study["pair"] == pair].drop(columns=["pair", "pair_type", "target"])
        curves.append(curve.assign(model_a=a, model_b=b))
    recalibrated = curves[2].assign(bn="recalibrate", loss=curves[2]["loss"] + 0.5 * np.sin(np.pi * np.clip(ALPHAS, 0, 1)))
    table = barrier_table(pd.concat([*curves, recalibrated], ignore_index=True))
    assert list(table["pair"]) == [pair for _, pair, _, _ in CURVES[:3]] + [CURVES[2][1]]
    assert list(table["bn"]) == ["follow"] * 3 + ["recalibrate"]
    assert table["loss_barrier"].to_numpy() == pytest.approx([c[3] for c in CURVES[:3]] + [CURVES[2][3] + 0.5])
    assert table["error_barrier"].to_numpy() == pytest.approx([c[2] for c in CURVES[:3]] + [CURVES[2][2]])
    unnamed = pd.concat([curve.drop(columns=["model_a", "model_b"]) for curve in curves], ignore_index=True)
    with pytest.raises(ValueError, match=r"several rows at one α.*do not tell apart.*assign\(model_a='a', "
                                         r"model_b='b'\).*'pair' column") as raised:
        barrier_table(unnamed)
    assert "see" not in str(raised.value)


def test_targets_with_different_metrics_and_frames_without_scores():
    mixed = pd.concat([_study_frame().query("target == 'real'"), _study_frame("auc").query("target == 'clipart'")])
    figure = plot_interpolation(mixed)
    assert [ax.get_ylabel() for ax in figure.get_axes()[::2]] == ["test accuracy (%)", "test mean AUC"]
    table = barrier_table(mixed)
    assert dict(zip(table["target"], table["metric"])) == {"real": "accuracy", "clipart": "auc"}
    assert "error = 1 − accuracy and 1 − auc" in caption_interpolation(mixed)
    old_style = _study_frame().rename(columns={"score": "accuracy"}).drop(columns="metric")
    with pytest.raises(ValueError, match=r"lacks columns \['score', 'metric'\]; pass interpolate\(\) output"):
        plot_interpolation(old_style)
    with pytest.raises(ValueError, match=r"\['score', 'metric'\]"):
        barrier_table(old_style)


def test_caption_interpolation_states_the_numbers():
    caption = caption_interpolation(_study_frame())
    assert "no performance barrier" in caption and "RI-T" in caption
    assert "P-T/P-T error barrier 0.4 points, loss barrier 0.020 (max over 4 pair(s))" in caption
    assert "RI-T/RI-T error barrier 30.0 points, loss barrier 1.200" in caption
    assert "P-T/RI-T error barrier 40.0 points" in caption


def _basin_study(rise: float = 2.0, sigmas=(0.01, 0.1)) -> pd.DataFrame:
    """Two quadratic bowls ℓ = ‖θ‖² (n = 50): a P-T pair and a RI-T pair whose segment
    sits further from the minimum."""
    frames = []
    for pair_type, pair, offset in (("P-T/P-T", "P-T:s0|P-T:s1", 0.5), ("RI-T/RI-T", "RI-T:s0|RI-T:s1", 2.0)):
        def loss_at(alpha, noise, offset=offset):
            theta = np.zeros(50)
            theta[0], theta[1] = alpha - 0.5, offset
            theta = theta + (noise.numpy() if noise is not None else 0)
            return float(theta @ theta)
        frame = basin_along(loss_at, 50, 1.0, sigmas=sigmas, n_segment=50, n_noise=5, rise=rise)
        frames.append(frame.assign(pair=pair, pair_type=pair_type, target="real", bn="follow"))
    return pd.concat(frames, ignore_index=True)


def test_basin_table_and_caption():
    study = _basin_study()
    table = basin_table(study)
    assert len(table) == 2
    assert {"mu", "epsilon", "alpha_lo", "alpha_hi", "basin_delta", "basin_sigma", "at_grid_min"} <= set(table)
    assert table["basin_sigma"].to_numpy() == pytest.approx(table["basin_delta"].to_numpy() / math.sqrt(50))
    first = study[study["pair"] == "P-T:s0|P-T:s1"].iloc[0]
    assert table.loc[0, "mu"] == first["mu"] and table.loc[0, "epsilon"] == first["epsilon"]
    caption = caption_basin(study)
    assert PAPER_DELTAS in caption and "μ + 2ε" in caption
    for _, row in table.iterrows():
        assert f"ε {row['epsilon']:.3g}, μ {row['mu']:.3g}" in caption
        bound = "≤ " if row["at_grid_min"] else ""
        assert f"smallest δ {bound}{row['basin_delta']:.3g}" in caption


def test_basin_caption_marks_only_bounds_with_le():
    """Issue 11: a δ that the refinement resolved (walls at μ + 4ε, P-T pair) is a number; one
    that holds down to sigma_floor (walls at μ + 2ε, cleared for every δ) is a bound, "≤"."""
    study = pd.concat([_basin_study(rise=4.0, sigmas=(0.1, 0.5)).query("pair_type == 'P-T/P-T'"),
                       _basin_study().query("pair_type == 'RI-T/RI-T'")], ignore_index=True)
    table = basin_table(study).set_index("pair_type")
    assert not table.loc["P-T/P-T", "at_grid_min"] and table.loc["RI-T/RI-T", "at_grid_min"]
    resolved = study.loc[study["pair_type"] == "P-T/P-T", "basin_delta"].iloc[0]
    assert resolved > study.loc[study["pair_type"] == "P-T/P-T", "delta"].min()  # a failing δ lies below it
    caption = caption_basin(study)
    assert f"P-T/P-T: 1/1 pair(s) in one basin, smallest δ {resolved:.3g} " in caption
    assert "RI-T/RI-T: 1/1 pair(s) in one basin, smallest δ ≤ " in caption and "lower sigma_floor" in caption


def test_basin_table_rejects_other_frames():
    with pytest.raises(ValueError, match="basin"):
        basin_table(_study_frame())
