"""The report read at page width: legends that hide no bar, fonts that stay legible once
a figure is scaled to the page, and sections that say when the study does not ask for
their analysis."""

import itertools

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from test_study import tiny_spec

from transferscope.report.figures.cka import plot_table1
from transferscope.report.figures.distance import plot_module_distances
from transferscope.report.page import Section
from transferscope.report.render import save_figure
from transferscope.report.sections import basins, feature_reuse, feature_similarity
from transferscope.study import StudySpec

MODELS = ["P", "P-T:s0", "P-T:s1", "RI-T:s0", "RI-T:s1"]
MODULES = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
PAGE_PIXELS = 1152  # templates/index.html.j2: body max-width 1200px less 1.5em padding each side
PNG_DPI = 110  # render.save_figure
FONT_FLOOR_PT = 8.0  # the smallest text of the other figures once shown at page width


def cka_frame() -> pd.DataFrame:
    """Every pair of MODELS on the same module, with high CKA in the early modules (as in
    the demo study, where the legend used to sit on the conv1 and layer1 bars)."""
    return pd.DataFrame([{"model_a": a, "model_b": b, "module_a": module, "module_b": module,
                          "cka": 0.95 - 0.08 * depth * ("RI-T" in a + b), "estimator": "minibatch",
                          "kernel": "linear", "debiased": True, "n_examples": 500}
                         for a, b in itertools.combinations(MODELS, 2) for depth, module in enumerate(MODULES)])


def distance_frame(targets=("real", "clipart", "sketch", "xray")) -> pd.DataFrame:
    """Per-module and whole-network distances of every pair of MODELS on four targets."""
    return pd.DataFrame([{"model_a": a, "model_b": b, "target": target, "module": module,
                          "distance": (0.1 + depth) * (30.0 if "RI-T" in a + b else 1.0), "include_head": False}
                         for target in targets for a, b in itertools.combinations(MODELS, 2)
                         for depth, module in enumerate([*MODULES[:-1], "network"])])


def _bar_overlaps(figure) -> list[str]:
    """The bars (by axes title and x) that a legend of ``figure`` overlaps, once drawn:
    the part of a bar inside its axes (a log axis clips bars from 0)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    shown = [(ax, bar, Bbox.intersection(bar.get_window_extent(renderer), ax.bbox)) for ax in figure.axes
             for container in ax.containers for bar in getattr(container, "patches", [])]
    assert len(shown) > 20 and all(extent is not None for _, _, extent in shown)
    return [f"{ax.get_title()} x={bar.get_x():.2f}" for ax, bar, extent in shown if box.overlaps(extent)]


@pytest.mark.parametrize("draw", [lambda: plot_table1(cka_frame()), lambda: plot_module_distances(distance_frame())],
                         ids=["cka", "distance"])
def test_the_legend_hides_no_bar(draw):
    assert _bar_overlaps(draw()) == []


@pytest.mark.parametrize("targets", [("real",), ("real", "clipart", "sketch"), ("real", "clipart", "sketch", "xray")])
def test_distance_text_is_legible_at_page_width(tmp_path, targets):
    figure = plot_module_distances(distance_frame(targets))
    save_figure(figure, tmp_path, "distance")  # as the report draws it (plain log tick labels)
    shown = min(1.0, PAGE_PIXELS / (figure.get_figwidth() * PNG_DPI))  # the page shrinks a wider PNG
    texts = [text for text in figure.findobj(Text) if text.get_visible() and text.get_text().strip()]
    assert {text.get_text() for text in texts} >= {"target: real", "conv1", "RI-T&P", "pair (mean, min-max)"}
    small = {text.get_text(): round(text.get_fontsize() * shown, 1) for text in texts
             if text.get_fontsize() * shown < FONT_FLOOR_PT}
    assert small == {}
    assert sum(ax.get_visible() for ax in figure.axes) == len(targets)


def _missing(builder, **changes) -> str:
    section = Section("key", "title")
    builder(section, {}, spec=StudySpec.model_validate(tiny_spec(**changes)))
    return section.missing


def test_a_section_says_when_the_study_does_not_ask_for_its_analysis():
    no_sweep = {key: value for key, value in tiny_spec().items() if key != "shuffle"}
    section = Section("feature-reuse", "Feature reuse: block shuffling (Fig. 3)")
    feature_reuse(section, {}, spec=StudySpec.model_validate(no_sweep))
    assert section.missing.startswith("This study does not run the block-shuffle sweep")
    assert "`shuffle: {block_sizes: [" in section.missing and "No results yet" not in section.missing
    assert _missing(feature_reuse).startswith("No results yet for feature_reuse")  # asked for: not run yet

    off = _missing(feature_similarity, analyses={"cka": {"enabled": False}})
    assert off == "This study does not run the cka analysis (set `analyses.cka.enabled: true` to run it)."
    assert _missing(feature_similarity).startswith("No results yet for cka")


def test_basins_say_that_one_seed_has_no_pair_of_one_kind():
    assert "this study has one seed: set seeds to two or more" in _missing(basins, seeds=[0])
    assert _missing(basins, seeds=[0], analyses={"basin": {"enabled": False}}).startswith(
        "This study does not run the basin analysis")
    assert _missing(basins).startswith("No results yet for basin")
