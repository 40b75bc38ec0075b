import copy

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from test_report_readability import legend_under_the_panels
from torch import nn

from transferscope.analysis.module_criticality import criticality, criticality_value, network_criticality
from transferscope.analysis.rewinding import rewind
from transferscope.models import build_model
from transferscope.report.figures.criticality import (
    caption_criticality,
    caption_rewind,
    plot_criticality_bars,
    plot_criticality_heatmaps,
    plot_rewind,
)


def _perturbed(model, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return moved


def _labelled(figure):
    axes = [ax for ax in figure.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    return axes


@pytest.fixture(scope="module")
def rewind_frame():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 16, 16, generator=generator), torch.randint(0, 4, (16,), generator=generator))]
    pretrained = build_model("small_resnet", 4, width=8)
    frames = []
    for name, start, scale in (("P-T:s0", pretrained, 0.02), ("P-T:s1", pretrained, 0.03),
                               ("RI-T:s0", build_model("small_resnet", 4, width=8), 0.3)):
        final = _perturbed(start, scale, seed=len(frames))
        frames.append(rewind(final, start, {"test": batches}).assign(model=name, target="clipart"))
    return pd.concat(frames, ignore_index=True)


def _mlp_models():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return source, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _mlp_batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator))]


SETTINGS = dict(alphas=[0.0, 0.5, 1.0], sigmas=[0.01, 0.1, 0.5], samples=2)


@pytest.fixture(scope="module")
def criticality_frame():
    pretrained, random_init = _mlp_models()
    frames = []
    for name, start, scale in (("P-T:s0", pretrained, 0.05), ("RI-T:s0", random_init, 0.5)):
        final = _perturbed(start, scale, seed=3)
        middle = _perturbed(start, scale / 2, seed=4)
        for path in ("direct", "optimization"):
            for end in ("final", "best"):
                frame = network_criticality(final, start, _mlp_batches(), path=path, start=end, best_state=final,
                                            path_states=[start, middle, final], **SETTINGS)
                frames.append(frame.assign(model=name, target="sketch"))
    return pd.concat(frames, ignore_index=True)


def test_plot_rewind(rewind_frame):
    figure = plot_rewind(rewind_frame)
    assert isinstance(figure, Figure)
    (ax,) = _labelled(figure)
    assert "accuracy" in ax.get_ylabel() and "clipart" in ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert {"P-T rewound", "RI-T rewound", "P-T unchanged"} <= set(labels)


def test_caption_rewind_states_computed_drops(rewind_frame):
    caption = caption_rewind(rewind_frame)
    ri = rewind_frame[rewind_frame["model"] == "RI-T:s0"].set_index("module")
    drop = 100 * (ri.loc["layer2", "base_score"] - ri.loc["layer2", "score"])
    assert f"layer2 {drop:.1f}" in caption.split("RI-T (accuracy points):")[1]
    assert "Fig. 5" in caption and "P-T (accuracy points):" in caption


def test_plot_criticality_bars(criticality_frame):
    figure = plot_criticality_bars(criticality_frame)
    axes = _labelled(figure)
    assert len(axes) == 4
    titles = {ax.get_title() for ax in axes}
    assert "optimization path, from θ_opt — sketch" in titles
    assert all(ax.get_yscale() == "log" for ax in axes)


def test_caption_criticality_states_network_values(criticality_frame):
    caption = caption_criticality(criticality_frame)
    rows = criticality_frame[(criticality_frame["model"] == "RI-T:s0") & (criticality_frame["path"] == "direct")
                             & (criticality_frame["start"] == "final")]
    total = rows.loc[rows["module"] == "network", "criticality"].iloc[0]
    assert f"RI-T network {total:.3g}" in caption
    assert "direct path from θ_F" in caption and "optimization path from θ_opt" in caption


def test_plot_criticality_heatmaps():
    pretrained, _ = _mlp_models()
    final = _perturbed(pretrained, 0.05, seed=3)
    middle = _perturbed(pretrained, 0.02, seed=4)
    grids = [criticality(final, pretrained, _mlp_batches(), modules=["2"], path=path, start=end, best_state=final,
                         path_states=[pretrained, middle, final], **SETTINGS)
             for path in ("direct", "optimization") for end in ("final", "best")]
    figure = plot_criticality_heatmaps(grids)
    axes = _labelled(figure)
    assert len(axes) == 4
    value = criticality_value(grids[0])
    assert axes[0].get_title() == f"2: direct path, from θ_F, μ = {value:.3g}"
    assert axes[0].get_xlabel().startswith("noise σ") and axes[0].get_ylabel().startswith("α")
    assert len(figure.axes) == 5  # four panels and the colour bar
    assert legend_under_the_panels(figure)  # none over the cells
    with pytest.raises(ValueError, match="method='grid'"):
        plot_criticality_heatmaps([grids[0].assign(method="bisection")])
    with pytest.raises(ValueError, match="module="):
        plot_criticality_heatmaps([grids[0], grids[1].assign(module="0")])


def test_feasible_outline_encloses_feasible_cells():
    from transferscope.report.figures.criticality import _feasible_outline

    feasible = np.array([[True, True], [True, False]])
    segments = _feasible_outline(feasible, np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]))
    # an L-shaped region of three unit cells has a perimeter of 8 unit edges
    assert len(segments) == 8
    lengths = [np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in segments]
    assert np.allclose(lengths, 1.0)
