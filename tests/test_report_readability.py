"""The report read at page width: legends that hide no data, fonts that stay legible once
a figure is scaled to the page, tables that fit the page, and sections that say when the
study does not ask for their analysis (its settings shown as code)."""

import itertools
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from test_report_browser import INSTALL, _playwright
from test_study import tiny_spec

from transferscope.analysis.spectra import spectrum, spectrum_summary
from transferscope.models import build_model
from transferscope.report.figures.cka import plot_table1
from transferscope.report.figures.criticality import plot_criticality_bars, plot_rewind
from transferscope.report.figures.distance import plot_module_distances
from transferscope.report.figures.freeze import plot_freeze
from transferscope.report.figures.layout import first_column, panel_grid
from transferscope.report.figures.mistakes import plot_mistakes
from transferscope.report.figures.soups import plot_soups
from transferscope.report.figures.spectrum import plot_spectra
from transferscope.report.page import Section, _build_section, page_context, render_page
from transferscope.report.render import save_figure
from transferscope.report.sections import (
    basins,
    feature_reuse,
    feature_similarity,
    freezing,
    pretraining_checkpoints,
    soups,
    spectra,
)
from transferscope.study import StudySpec

MODELS = ["P", "P-T:s0", "P-T:s1", "RI-T:s0", "RI-T:s1"]
MODULES = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
PAGE_PIXELS = 1152  # templates/index.html.j2: body max-width 1200px less 1.5em padding each side
PNG_DPI = 110  # render.save_figure
FONT_FLOOR_PT = 8.0  # the smallest text of the other figures once shown at page width
TARGETS = ("real", "clipart", "sketch", "xray")


def cka_frame() -> pd.DataFrame:
    """Every pair of MODELS on the same module, with high CKA in the early modules (as in
    the demo study, where the legend used to sit on the conv1 and layer1 bars)."""
    return pd.DataFrame([{"model_a": a, "model_b": b, "module_a": module, "module_b": module,
                          "cka": 0.95 - 0.08 * depth * ("RI-T" in a + b), "estimator": "minibatch",
                          "kernel": "linear", "debiased": True, "n_examples": 500}
                         for a, b in itertools.combinations(MODELS, 2) for depth, module in enumerate(MODULES)])


def distance_frame(targets=TARGETS) -> pd.DataFrame:
    """Per-module and whole-network distances of every pair of MODELS on four targets."""
    return pd.DataFrame([{"model_a": a, "model_b": b, "target": target, "module": module,
                          "distance": (0.1 + depth) * (30.0 if "RI-T" in a + b else 1.0), "include_head": False}
                         for target in targets for a, b in itertools.combinations(MODELS, 2)
                         for depth, module in enumerate([*MODULES[:-1], "network"])])


def mistakes_frame(targets=TARGETS) -> pd.DataFrame:
    """Mistake fractions of every P-T/RI-T pair of MODELS on each target."""
    return pd.DataFrame([{"model_a": a, "model_b": b, "target": target, "common_fraction": 0.1 + 0.1 * index,
                          "uncommon_fraction": 0.6 - 0.1 * index, "common_ci_low": 0.05, "common_ci_high": 0.4,
                          "uncommon_ci_low": 0.1, "uncommon_ci_high": 0.7, "confidence": 0.95, "unit": "example"}
                         for target in targets for index, (a, b) in enumerate(itertools.combinations(MODELS[1:], 2))])


def freeze_frame(targets=("real",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The freeze sweep's table (k = 0, 1, 2, as in the demo: the best score at k = 1,
    training time falling with k) and a rewinding recommendation of k = 5 per target."""
    table = pd.DataFrame([{"target": target, "freeze": k, "metric": "accuracy", "final_score_mean": score,
                           "final_score_std": 0.0, "final_score_count": 1, "train_seconds_mean": seconds}
                          for target in targets for k, score, seconds in ((0, 0.856, 16.3), (1, 0.864, 11.4),
                                                                          (2, 0.860, 6.7))])
    return table, pd.DataFrame({"target": list(targets), "freeze": 5})


def rewind_frame(targets=TARGETS) -> pd.DataFrame:
    """Rewinding each module of P-T and RI-T models, as in the demo: P-T keeps its score
    until fc, RI-T is far below; xray is scored by AUC."""
    return pd.DataFrame([{"model": model, "target": target, "module": module, "split": "test", "bn": "follow",
                          "metric": "auc" if target == "xray" else "accuracy",
                          "score": (0.85 - 0.5 * (module == "fc")) if "P-T" in model else 0.1 + 0.02 * depth,
                          "base_score": 0.86 if "P-T" in model else 0.27}
                         for target in targets for model in MODELS[1:] for depth, module in enumerate(MODULES)])


DEMO_CRITICALITY = {  # μ per module (conv1 ... fc) and the network, per panel and role, from the demo report
    ("direct", "final"): {"P-T": [1.6, 0.52, 1.15, 18.5, 103, 82, 207], "RI-T": [112, 290, 18.6, 27, 17.6, 2.15, 470]},
    ("direct", "best"): {"P-T": [1.6, 0.5, 9.8, 17.8, 101, 82, 211], "RI-T": [112, 290, 18.6, 27, 17.6, 2.15, 470]},
    ("optimization", "final"): {"P-T": [0.4, 0.53, 4.5, 8.1, 58, 82, 154],
                                "RI-T": [112, 165, 18.6, 27, 40, 2.15, 364]},
    ("optimization", "best"): {"P-T": [0.4, 0.52, 4.3, 7.8, 57, 81, 151], "RI-T": [112, 165, 18.6, 27, 40, 2.15, 364]},
}


def criticality_frame() -> pd.DataFrame:
    """The demo's module criticality on one target (where the optimization panels' legend
    used to cover the RI-T conv1 bar)."""
    return pd.DataFrame([{"model": f"{role}:s0", "target": "real", "path": path, "start": start, "module": module,
                          "criticality": value}
                         for (path, start), by_role in DEMO_CRITICALITY.items() for role, values in by_role.items()
                         for module, value in zip([*MODULES, "network"], values)])


def soup_frame(targets=TARGETS) -> pd.DataFrame:
    """Two members and their uniform soup per group and target, as in the demo: the P-T
    soup scores as its members, the RI-T soup far below them; xray is scored by AUC."""
    rows = []
    for target in targets:
        for group, members, soup_score in (("P-T", (0.864, 0.862), 0.862), ("RI-T", (0.222, 0.266), 0.124)):
            gain = soup_score - np.mean(members)
            rows += [{"model": f"{group}:s{seed}", "score": score, "gain": np.nan, "gain_ci_low": np.nan,
                      "gain_ci_high": np.nan} for seed, score in enumerate(members)]
            rows.append({"model": "soup:uniform", "score": soup_score, "gain": gain, "gain_ci_low": gain - 0.04,
                         "gain_ci_high": gain + 0.04})
            for row in rows[-3:]:
                row.update(group=group, target=target, metric="auc" if target == "xray" else "accuracy")
    return pd.DataFrame(rows)


def spectrum_frames() -> dict[str, pd.DataFrame]:
    """The spectra of three width-16 ResNets (the demo's six modules), keyed by model."""
    torch.manual_seed(0)
    return {name: spectrum(build_model("small_resnet", 10, width=16)) for name in ("P", "P-T:s0", "RI-T:s0")}


def _covered(figure) -> list[str]:
    """The data (by axes title) that a legend of ``figure`` overlaps once drawn: the part
    of a bar inside its axes (a log axis clips bars from 0), and the points along a line
    (its segments sampled) inside its axes."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
    assert legends
    boxes = [legend.get_window_extent(renderer) for legend in legends]
    bars = [(f"{ax.get_title()} bar x={bar.get_x():.2f}", Bbox.intersection(bar.get_window_extent(renderer), ax.bbox))
            for ax in figure.axes for container in ax.containers for bar in getattr(container, "patches", [])]
    assert all(extent is not None for _, extent in bars)
    points = []
    for ax in figure.axes:
        for line in ax.get_lines():
            ends = line.get_transform().transform(line.get_xydata())
            sampled = [ends[i] + t * (ends[i + 1] - ends[i]) for i in range(len(ends) - 1) for t in np.linspace(0, 1, 50)]
            points += [(f"{ax.get_title()} line {line.get_label()}", x, y) for x, y in sampled or ends
                       if ax.bbox.contains(x, y)]
    assert len(bars) + len(points) > 20
    cut = [f"legend beyond the figure {box}" for box in boxes
           if box.x0 < 0 or box.y0 < 0 or box.x1 > figure.bbox.x1 or box.y1 > figure.bbox.y1]
    return sorted({name for name, extent in bars for box in boxes if box.overlaps(extent)}
                  | {name for name, x, y in points for box in boxes if box.contains(x, y)}) + cut


def two_bn_modes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` measured with BatchNorm statistics followed and recalibrated (longer legend labels)."""
    return pd.concat([frame, frame.assign(bn="recalibrate", score=frame["score"] - 0.05)], ignore_index=True)


@pytest.mark.parametrize("draw", [
    lambda: plot_table1(cka_frame()), lambda: plot_module_distances(distance_frame()),
    lambda: plot_module_distances(distance_frame(("real",))), lambda: plot_criticality_bars(criticality_frame()),
    lambda: plot_mistakes(mistakes_frame()), lambda: plot_mistakes(mistakes_frame(("real",))),
    lambda: plot_rewind(rewind_frame()), lambda: plot_rewind(two_bn_modes(rewind_frame(("real",)))),
    lambda: plot_freeze(*freeze_frame()), lambda: plot_freeze(*freeze_frame(("real", "clipart", "sketch"))),
    lambda: plot_spectra(spectrum_frames())],
    ids=["cka", "distance", "distance-1", "criticality", "mistakes", "mistakes-1", "rewind", "rewind-1-two-bn",
         "freeze", "freeze-3", "spectrum"])
def test_the_legend_hides_no_data_and_fits_the_figure(draw):
    assert _covered(draw()) == []


def test_the_freeze_figure_ticks_the_recommended_k_beside_the_run_ones():
    figure = plot_freeze(*freeze_frame(("real", "clipart", "sketch")))
    shown = [ax for ax in figure.axes if ax.get_visible() and ax.get_xlabel()]
    assert len(shown) == 3 and all(list(ax.get_xticks()) == [0, 1, 2, 5] for ax in shown)


def test_a_long_legend_makes_the_figure_taller_not_its_panel_shorter():
    heights = []
    for frame in (rewind_frame(("real",)), two_bn_modes(rewind_frame(("real",)))):  # 4, then 8 entries in one column
        figure = plot_rewind(frame)
        FigureCanvasAgg(figure).draw()
        heights.append(figure.axes[0].get_position().height * figure.get_figheight())
    assert heights[1] == pytest.approx(heights[0], abs=0.1)


def _small_text(figure, tmp_path) -> tuple[dict[str, float], set[str]]:
    """The texts of ``figure`` smaller than :data:`FONT_FLOOR_PT` once its PNG (drawn as
    the report draws it, with plain log tick labels) is shown at page width, with the
    size they are shown at; and every text it shows."""
    save_figure(figure, tmp_path, "figure")
    shown = min(1.0, PAGE_PIXELS / (figure.get_figwidth() * PNG_DPI))  # the page shrinks a wider PNG
    texts = [text for text in figure.findobj(Text) if text.get_visible() and text.get_text().strip()]
    small = {text.get_text(): round(text.get_fontsize() * shown, 1) for text in texts
             if text.get_fontsize() * shown < FONT_FLOOR_PT}
    return small, {text.get_text() for text in texts}


@pytest.mark.parametrize("targets", [("real",), ("real", "clipart", "sketch"), TARGETS])
def test_distance_text_is_legible_at_page_width(tmp_path, targets):
    figure = plot_module_distances(distance_frame(targets))
    small, texts = _small_text(figure, tmp_path)
    assert texts >= {"target: real", "conv1", "RI-T&P", "pair (mean, min-max)"}
    assert small == {}
    assert sum(ax.get_visible() for ax in figure.axes) == len(targets)


@pytest.mark.parametrize("targets", [("real",), ("real", "clipart", "sketch"), TARGETS], ids=["1", "3", "4"])
@pytest.mark.parametrize("draw, expected", [(lambda t: plot_mistakes(mistakes_frame(t)), {"P-T/RI-T\n(4 pairs)"}),
                                            (lambda t: plot_rewind(rewind_frame(t)), {"RI-T rewound", "fc"}),
                                            (lambda t: plot_soups(soup_frame(t)), {"members (seeds)", "RI-T"})],
                         ids=["mistakes", "rewind", "soups"])
def test_panels_per_target_are_legible_at_page_width(tmp_path, targets, draw, expected):
    figure = draw(targets)
    small, texts = _small_text(figure, tmp_path)
    assert expected <= texts and any(text.endswith(targets[-1]) for text in texts)  # the last target's panel
    assert small == {}
    assert sum(ax.get_visible() for ax in figure.axes) == len(targets)


def legend_under_the_panels(figure) -> bool:
    """Whether ``figure`` has one legend, a figure legend wholly below its shown panels."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    shown = [ax for ax in figure.axes if ax.get_visible()]
    (legend,) = [*figure.legends, *(ax.get_legend() for ax in shown if ax.get_legend() is not None)]
    box = legend.get_window_extent(canvas.get_renderer())
    return legend in figure.legends and all(box.y1 <= ax.get_tightbbox().y0 for ax in shown)


@pytest.mark.parametrize("draw", [lambda: plot_soups(soup_frame()), lambda: plot_soups(soup_frame(("real",))),
                                  lambda: plot_spectra(spectrum_frames())], ids=["soups", "soups-1", "spectrum"])
def test_one_legend_lies_under_the_panels(draw):
    assert legend_under_the_panels(draw())


def test_the_spectra_keep_three_modules_a_row_legible_at_page_width(tmp_path):
    figure = plot_spectra(spectrum_frames())
    small, texts = _small_text(figure, tmp_path)
    assert small == {}
    assert {"conv1", "fc", "model", "RI-T:s0", "σ_i / σ_1 (log scale)"} <= texts
    assert figure.get_figwidth() == pytest.approx(12.0)  # three 4-inch panels a row


def test_criticality_panels_state_the_network_value_of_each_role(tmp_path):
    figure = plot_criticality_bars(criticality_frame())
    small, texts = _small_text(figure, tmp_path)
    assert small == {}
    assert {"module (network μ: P-T 154, RI-T 364)", "P-T", "RI-T"} <= texts


def _section(builder, key: str = "key", **changes) -> Section:
    """Section ``key`` as ``builder`` makes it with no tables, for tiny_spec with ``changes``."""
    section = Section(key, "title")
    builder(section, {}, spec=StudySpec.model_validate(tiny_spec(**changes)))
    return section


def _missing(builder, **changes) -> str:
    return _section(builder, **changes).missing


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
    assert "this study has one seed: set `seeds` to two or more" in _missing(basins, seeds=[0])
    assert _missing(basins, seeds=[0], analyses={"basin": {"enabled": False}}).startswith(
        "This study does not run the basin analysis")
    assert _missing(basins).startswith("No results yet for basin")


@pytest.mark.parametrize("builder, kind", [(soups, "soup"), (basins, "basin")])
def test_an_analysis_turned_off_says_so_before_it_says_one_seed_is_too_few(builder, kind):
    both = _missing(builder, seeds=[0], analyses={kind: {"enabled": False}})
    assert both == f"This study does not run the {kind} analysis (set `analyses.{kind}.enabled: true` to run it)."
    assert "set `seeds` to two or more" in _missing(builder, seeds=[0])  # on, one seed


def test_the_freeze_section_is_not_run_when_the_study_asks_for_no_freeze_sweep():
    not_asked = _section(freezing)  # tiny_spec has no freeze: key
    assert not_asked.not_run
    assert not_asked.missing.startswith("This study does not run the freeze sweep (set `freeze: auto`")
    asked = _section(freezing, freeze="auto")
    assert not asked.not_run and asked.missing.startswith("No results yet for freeze")


NOT_ASKED = {  # section key: its builder, and the changes to tiny_spec that make it say the study does not ask for it
    "feature-reuse": (feature_reuse, {"shuffle": {"block_sizes": []}}),
    "checkpoints": (pretraining_checkpoints, {"checkpoints": {"epochs": []}}),
    "freeze": (freezing, {}),
    "soups": (soups, {"seeds": [0]}),
    "basin": (basins, {"seeds": [0]}),
    "cka": (feature_similarity, {"analyses": {"cka": {"enabled": False}}}),
}


def test_the_page_shows_the_settings_of_every_missing_message_as_code():
    sections = [_section(builder, key, **changes) for key, (builder, changes) in NOT_ASKED.items()]
    assert all(section.not_run and "`" in section.missing for section in sections)
    sections.append(_section(feature_similarity, "distance"))  # asked for, no results yet
    page = render_page(page_context(StudySpec.model_validate(tiny_spec()), sections, counts="no jobs"))
    for section in sections:
        shown = re.search(rf'<section id="{section.key}">.*?<p class="missing">(.*?)</p>', page, re.DOTALL).group(1)
        assert "`" not in shown and "<code>" in shown, (section.key, shown)
    assert "(set <code>shuffle.block_sizes</code> in the study, e.g. <code>shuffle: {block_sizes: [8, 4, 1]}</code>," in page
    assert "P&#39;s weights" in page  # the rest of a message is still escaped
    assert '<a href="#freeze">title</a> <span class="status">(not run)</span>' in page


def _spectrum_tables() -> dict[str, pd.DataFrame]:
    """The spectrum tables of a study shaped like the demo (width-16 ResNet, three models,
    four targets), made as the spectrum job and the results make them."""
    frames, summaries = [], []
    for target in TARGETS:
        values = pd.concat([spectrum(build_model("small_resnet", 10, width=16)).assign(model=name)
                            for name in ("P", "P-T:s0", "RI-T:s0")], ignore_index=True)
        frames.append(values.assign(target=target, job="spectrum-a22561cf5ca2"))
        summaries.append(spectrum_summary(values).assign(target=target, job="spectrum-a22561cf5ca2"))
    return {"spectrum": pd.concat(frames, ignore_index=True), "spectrum_summary": pd.concat(summaries, ignore_index=True)}


@pytest.mark.browser
def test_the_spectrum_summary_fits_the_page_in_chromium(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(f"the browser test needs the system's Chromium (no `chromium` on PATH): {INSTALL}")
    spec = StudySpec.model_validate(tiny_spec())
    section = Section("spectrum", "Module spectra")
    _build_section(section, spectra, _spectrum_tables(), spec=spec)
    assert not section.failures and len(section.tables[0][1]) > 100
    assert list(section.tables[0][1].columns[:5]) == ["target", "model", "module", "parameter", "shape"]
    page = tmp_path / "index.html"
    page.write_text(render_page(page_context(spec, [section], counts="")))
    with _playwright()() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            window = browser.new_page(viewport={"width": 1400, "height": 900})  # the page: its 1200 px maximum
            window.goto(page.as_uri(), wait_until="load")
            widths = "box => [box.scrollWidth, box.clientWidth]"
            boxes = [window.locator("#spectrum .preview").evaluate(widths)]  # the first rows
            window.locator("#spectrum summary").click()
            boxes.append(window.locator("#spectrum details .scroll").evaluate(widths))  # all rows, the widest cells
        finally:
            browser.close()
    assert all(0 < width <= shown for width, shown in boxes), boxes  # nothing scrolls out of sight


@pytest.mark.parametrize("per_row, starts", [(2, [0, 2, 4]), (3, [0, 3])])
def test_first_column_follows_the_grid_of_panel_grid(per_row, starts):
    _, axes = panel_grid(5, 2.0, 2.0, per_row=per_row)
    assert [list(axes).index(ax) for ax in first_column(axes)] == starts
