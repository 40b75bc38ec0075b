"""Table 1 figures: the pivot of the paper's pairs, the caption's numbers, and the plots on a
realistic frame from compare_representations."""

import copy
import io
import itertools

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from transferscope.analysis.similarity import compare_representations
from transferscope.models import build_model, modules
from transferscope.report.figures.cka import caption_cka, floor_frame, plot_cka_heatmap, plot_table1, table1_frame

MODELS = ["P", "P-T:s0", "P-T:s1", "RI-T:s0", "RI-T:s1"]
MODULES = ["conv1", "layer1", "fc"]
BASE = {"P-T&P": [0.7, 0.7, 0.5], "P-T&P-T": [0.8, 0.6, 0.3], "P-T&RI-T": [0.05, 0.02, 0.01],
        "RI-T&RI-T": [0.03, 0.01, 0.0], "P&RI-T": [0.5, 0.5, 0.5]}
PAIR = {("P", "P-T"): "P-T&P", ("P-T", "P-T"): "P-T&P-T", ("P-T", "RI-T"): "P-T&RI-T", ("RI-T", "RI-T"): "RI-T&RI-T",
        ("P", "RI-T"): "P&RI-T"}


def synthetic_frame() -> pd.DataFrame:
    """Diagonal value = BASE[pair] + 0.02 * (#s0 - #s1) over the two models, so the mean over
    seed pairs is BASE; off-diagonal layer pairs hold 9.0 and a model against itself 1.0
    (both must stay out of the table)."""
    rows = []
    for a, b in [*itertools.combinations(MODELS, 2), ("P-T:s0", "P-T:s0")]:
        roles = (a.split(":")[0], b.split(":")[0])
        shift = 0.02 * (sum(name.endswith("s0") for name in (a, b)) - sum(name.endswith("s1") for name in (a, b)))
        for (i, la), (j, lb) in itertools.product(enumerate(MODULES), repeat=2):
            value = 1.0 if a == b else BASE[PAIR[roles]][i] + shift if i == j else 9.0
            rows.append({"model_a": a, "model_b": b, "module_a": la, "module_b": lb, "cka": value,
                         "estimator": "minibatch", "kernel": "linear", "debiased": True, "n_examples": 500,
                         "batch_size": 100, "bandwidth": float("nan")})
    return pd.DataFrame(rows)


def test_table1_frame_averages_the_paper_pairs_on_the_diagonal():
    table = table1_frame(synthetic_frame())
    assert list(table.index) == ["P-T&P", "P-T&P-T", "P-T&RI-T", "RI-T&RI-T"]
    assert list(table.columns) == MODULES
    for pair in table.index:
        assert table.loc[pair].to_list() == pytest.approx(BASE[pair], abs=1e-12)


def test_chance_floor_sits_next_to_table1_per_role_and_module():
    frame = synthetic_frame()
    assert floor_frame(frame).empty
    settings = frame.iloc[0][["estimator", "kernel", "debiased", "n_examples", "batch_size", "bandwidth"]].to_dict()
    floor = pd.DataFrame([{"model_a": name, "model_b": "RI", "module_a": module, "module_b": module,
                           "cka": 0.1 * i + (0.02 if name.endswith("s1") else 0.0), **settings}
                          for name in MODELS for i, module in enumerate(MODULES)])
    table = floor_frame(pd.concat([frame, floor], ignore_index=True))
    assert list(table.columns) == MODULES
    assert set(table.index) == {f"{name.split(':')[0]}&RI" for name in MODELS}
    assert table.loc["P-T&RI"].to_list() == pytest.approx([0.01, 0.11, 0.21])  # mean of s0 and s1
    assert table1_frame(pd.concat([frame, floor])).equals(table1_frame(frame))  # floors stay out of Table 1


def test_table1_frame_refuses_mixed_settings():
    frame = synthetic_frame()
    other = frame.assign(estimator="full", batch_size=500)
    with pytest.raises(ValueError, match="mixes settings"):
        table1_frame(pd.concat([frame, other]))
    with pytest.raises(ValueError, match="no rows compare two models"):
        table1_frame(frame.assign(model_a="a", model_b="b"))


def test_caption_states_the_computed_numbers():
    caption = caption_cka(synthetic_frame())
    assert "P-T&P-T goes from 0.80 (conv1) to 0.30 (fc) and decreases with depth" in caption
    assert "the most similar pair is P-T&P at 2 of 3 modules, P-T&P-T at 1 of 3 modules" in caption
    assert "P-T&RI-T is at most 0.05 (conv1) and on average 0.03" in caption
    assert "RI-T&RI-T is at most 0.03 (conv1) and on average 0.01" in caption
    assert "minibatch CKA, linear kernel, debiased, n = 500" in caption
    assert "0.67/0.82/0.61/0.41/0.16" in caption  # the paper's values, for comparison


@pytest.fixture(scope="module")
def study_frame() -> pd.DataFrame:
    """CKA of a small study: P, two P-T (P plus seeded weight noise) and two RI-T models."""
    torch.manual_seed(0)
    pretrained = build_model("small_resnet", 4, width=8)
    models = {"P": pretrained}
    for seed in (0, 1):
        finetuned = copy.deepcopy(pretrained)
        torch.manual_seed(seed)
        with torch.no_grad():
            for parameter in finetuned.parameters():
                parameter.add_(0.3 * parameter.std().nan_to_num() * torch.randn_like(parameter))
        models[f"P-T:s{seed}"] = finetuned
        models[f"RI-T:s{seed}"] = build_model("small_resnet", 4, width=8)
    torch.manual_seed(2)
    batches = [(torch.randn(16, 3, 16, 16), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    return compare_representations(models, batches)


def rendered(figure: Figure) -> Figure:
    figure.savefig(io.BytesIO(), format="png")
    return figure


def test_plot_table1_on_a_study_frame(study_frame):
    figure = rendered(plot_table1(study_frame))
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "module" and "CKA" in axes.get_ylabel() and axes.get_title()
    assert [tick.get_text() for tick in axes.get_xticklabels()] == list(modules(build_model("small_resnet", 4)))
    (legend,) = figure.legends  # below the axes: it hides no bar
    assert [text.get_text() for text in legend.get_texts()] == [
        "P-T&P (2 pairs)", "P-T&P-T (1 pair)", "P-T&RI-T (4 pairs)", "RI-T&RI-T (1 pair)"]
    table = table1_frame(study_frame)
    assert table.loc["P-T&P-T"].mean() > table.loc["RI-T&RI-T"].mean() + 0.1  # perturbed copies share features
    assert "P-T&P-T goes from" in caption_cka(study_frame)


def test_plot_cka_heatmap_on_a_study_frame(study_frame):
    figure = rendered(plot_cka_heatmap(study_frame, "P-T:s1", "P"))  # stored as (P, P-T:s1): transposed
    axes, colorbar = figure.axes
    assert axes.get_xlabel() == "module of P" and axes.get_ylabel() == "module of P-T:s1" and axes.get_title()
    assert colorbar.get_ylabel() == "CKA"
    assert len(axes.texts) == 36
    rows = study_frame[(study_frame.model_a == "P") & (study_frame.model_b == "P-T:s1")]
    value = rows[(rows.module_a == "fc") & (rows.module_b == "conv1")].cka.item()
    labels = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in axes.texts}
    assert labels[(0, 5)] == f"{value:.2f}"  # row conv1 of P-T:s1, column fc of P
    with pytest.raises(ValueError, match="no CKA rows for models 'P' and 'X'"):
        plot_cka_heatmap(study_frame, "P", "X")
