"""Figures of the weight analyses: parameter distance (Table 2), mistakes (Sec. 3.2), spectra."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from transferscope.analysis import claims
from transferscope.analysis.distance import param_distance
from transferscope.analysis.mistake_overlap import mistakes
from transferscope.analysis.spectra import spectrum, spectrum_summary
from transferscope.models import build_model, init_for_finetuning
from transferscope.report.figures.distance import caption_distance, plot_module_distances, table2_frame
from transferscope.report.figures.mistakes import caption_mistakes, plot_mistake_examples, plot_mistakes
from transferscope.report.figures.spectrum import caption_spectrum, plot_spectra


def _finetuned(pretrained, seed, step=0.01):
    """A stand-in for P-T: P's weights (new 10-class head) moved a little."""
    torch.manual_seed(seed)
    model = init_for_finetuning(build_model("small_resnet", 10, width=8), pretrained.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(step * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    pretrained = build_model("small_resnet", 12, width=8)
    out = {"P": pretrained, "P-T:s0": _finetuned(pretrained, 1), "P-T:s1": _finetuned(pretrained, 2)}
    for seed in (0, 1):
        torch.manual_seed(100 + seed)
        out[f"RI-T:s{seed}"] = build_model("small_resnet", 10, width=8)
    return out


@pytest.fixture(scope="module")
def distance_frame(models):
    pairs = [("P-T:s0", "P-T:s1"), ("RI-T:s0", "RI-T:s1"), ("P-T:s0", "P"), ("P-T:s1", "P"),
             ("RI-T:s0", "P"), ("RI-T:s1", "P")]
    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 12- vs 10-class head is skipped (reported in the frame)
        for target in ("clipart", "sketch"):
            for a, b in pairs:
                frames.append(param_distance(models[a], models[b]).assign(model_a=a, model_b=b, target=target))
    return pd.concat(frames, ignore_index=True)


def _labelled(figure, panels):
    axes = [ax for ax in figure.axes if ax.get_visible() and ax.has_data()]
    assert len(axes) == panels
    assert all(ax.get_xlabel() for ax in axes)
    assert axes[0].get_ylabel()
    return axes


def test_table2_layout_and_values(distance_frame):
    table = table2_frame(distance_frame)
    assert list(table.index) == ["clipart", "sketch"]
    assert list(table.columns) == ["P-T&P-T", "RI-T&RI-T", "P-T&P", "RI-T&P"]
    whole = distance_frame[(distance_frame.module == "network") & (distance_frame.target == "sketch")]
    expected = whole[(whole.model_b == "P") & whole.model_a.str.startswith("P-T")]["distance"].mean()
    assert table.loc["sketch", "P-T&P"] == pytest.approx(expected)
    layer1 = table2_frame(distance_frame, module="layer1")
    assert layer1.loc["clipart", "RI-T&RI-T"] != table.loc["clipart", "RI-T&RI-T"]
    with pytest.raises(ValueError, match="mixes 2 settings"):
        table2_frame(pd.concat([distance_frame, distance_frame.assign(include_head=False)]))


def test_distance_plot_and_caption(distance_frame):
    figure = plot_module_distances(distance_frame)
    assert isinstance(figure, Figure)
    axes = _labelled(figure, panels=2)
    assert {t.get_text() for t in axes[0].get_xticklabels()} == {"conv1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["P-T&P-T", "RI-T&RI-T", "P-T&P", "RI-T&P"]
    verdicts = claims.pt_models_closer({"distance": distance_frame})
    caption = caption_distance(distance_frame, verdicts)
    means = table2_frame(distance_frame).mean()
    for pair in ("P-T&P-T", "RI-T&RI-T", "P-T&P", "RI-T&P"):
        assert f"{pair} {means[pair]:.3g}" in caption
    # P-T moved 0.01 per weight from P, RI-T are independent draws: the caption quotes the findings' verdict
    assert set(verdicts["verdict"]) == {"holds"} and "as in the paper" not in caption
    assert f"Findings: “{verdicts['claim'].iloc[0]}” holds on clipart, sketch." in caption
    assert "8 of 12 (pair, target) rows leave out head tensors" in caption  # every pair with P: 12- vs 10-class head


class Readout(torch.nn.Module):
    """Returns the logits stored in channel ``channel`` of its inputs."""

    def __init__(self, channel):
        super().__init__()
        self.channel = channel

    def forward(self, x):
        return x[:, self.channel, 0, :]


@pytest.fixture(scope="module")
def mistake_frame():
    """Predictions shaped like the paper's: the two P-T models share most mistakes
    (5% of examples differ), the RI-T models err independently of them and each other."""
    generator = np.random.default_rng(0)
    n, classes = 300, 5
    y = generator.integers(0, classes, n)
    wrong_pt = generator.random(n) < 0.3
    wrong = {"P-T:s0": wrong_pt, "P-T:s1": wrong_pt ^ (generator.random(n) < 0.05),
             "RI-T:s0": generator.random(n) < 0.45, "RI-T:s1": generator.random(n) < 0.45}
    predictions = [np.where(w, (y + 1) % classes, y) for w in wrong.values()]
    x = torch.nn.functional.one_hot(torch.as_tensor(np.stack(predictions, 1)), classes).float()[:, :, None, :]
    models = {name: Readout(channel) for channel, name in enumerate(wrong)}
    loader = [(x[i:i + 100], torch.as_tensor(y[i:i + 100])) for i in range(0, n, 100)]
    return mistakes(models, loader, n_bootstrap=200).assign(target="clipart")


def test_mistakes_plot_and_caption(mistake_frame):
    figure = plot_mistakes(mistake_frame)
    assert isinstance(figure, Figure)
    axes = _labelled(figure, panels=1)
    ticks = [t.get_text().split("\n")[0] for t in axes[0].get_xticklabels()]
    assert ticks == ["P-T/P-T", "P-T/RI-T", "RI-T/RI-T"]
    assert "4 pairs" in axes[0].get_xticklabels()[1].get_text()
    verdicts = claims.pt_pairs_share_mistakes({"mistakes": mistake_frame})
    caption = caption_mistakes(mistake_frame, verdicts)
    pt_rit = mistake_frame[mistake_frame.model_a.str.startswith("P-T") & mistake_frame.model_b.str.startswith("RI-T")]
    assert f"P-T/RI-T {100 * pt_rit.common_fraction.mean():.1f}% common" in caption
    assert f"{100 * pt_rit.uncommon_fraction.mean():.1f}% uncommon" in caption
    assert "Paper (Sec. 3.2)" in caption and "as in the paper" not in caption
    assert list(verdicts["verdict"]) == ["holds"] and f"“{verdicts['claim'].iloc[0]}” holds on clipart." in caption
    figure = plot_mistakes(mistake_frame.drop(columns="target"))  # a frame without targets: one panel
    assert len(figure.axes) == 1 and not figure.axes[0].get_title()


def test_mistake_example_grids():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 3, (12,))
    indices = {"common": [0, 3, 5], "only_a": [1], "only_b": []}
    figure = plot_mistake_examples(images, indices, ["circle", "square", "star"], labels)
    assert isinstance(figure, Figure)
    rows = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
    assert rows == ["common\n(3 shown)", "only_a\n(1 shown)", "only_b\n(0 shown)"]
    assert figure.axes[1].get_title() == ["circle", "square", "star"][int(labels[3])]
    gray = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    multilabel = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    figure = plot_mistake_examples(gray, {"common": [0, 1]}, ["Edema", "Effusion", "Atelectasis"], multilabel)
    assert [ax.get_title() for ax in figure.axes] == ["Edema, Atelectasis", "no finding"]
    with pytest.raises(ValueError, match="uint8"):
        plot_mistake_examples(images.float(), indices, [], labels)


def test_spectra_plot_and_caption(models):
    frames = {name: spectrum(models[name]) for name in ("P", "P-T:s0", "RI-T:s0")}
    figure = plot_spectra(frames)
    assert isinstance(figure, Figure)
    axes = _labelled(figure, panels=6)
    assert all(ax.get_yscale() == "log" and ax.get_ylabel() for ax in axes)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["P", "P-T:s0", "RI-T:s0"]
    caption = caption_spectrum(frames)
    stable = spectrum_summary(frames["RI-T:s0"])["stable_rank"].mean()
    assert f"RI-T:s0 stable rank {stable:.2f}" in caption
    assert "future work" in caption


def test_figures_reject_bad_frames(distance_frame):
    with pytest.raises(ValueError, match="lacks columns"):
        table2_frame(distance_frame.drop(columns="target"))
    with pytest.raises(ValueError, match="not a mistakes"):
        plot_mistakes(pd.DataFrame({"model_a": ["a"]}))
    with pytest.raises(ValueError, match="spectrum"):
        plot_spectra({"P": pd.DataFrame({"module": ["fc"]})})
