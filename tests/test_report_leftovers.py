"""Report leftovers: the contents list tells an analysis (or sweep) the study does not run
from one without results yet, a distance frame without its settings columns is refused by name,
and one report render, like one run, plans the study once."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_sources import two_sources

from transferscope.report import write_report
from transferscope.report.figures.distance import SETTINGS, table2_frame
from transferscope.study import StudySpec
from transferscope.study import plan as plan_module
from transferscope.study.runner import run_study, save_spec

CONTENTS_ENTRY = re.compile(r'<li><a href="#([^"]+)">[^<]*</a>(?: <span class="status">\(([^)]*)\)</span>)?</li>')


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A two-source study with no job run (mistakes off, no checkpoint sweep; distance on),
    its report written once while counting the one-source plans built: (html, count)."""
    folder = tmp_path_factory.mktemp("leftovers")
    spec = StudySpec.model_validate(two_sources(folder))
    save_spec(spec, folder / "study")
    calls = []
    build = plan_module.Planner.build
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(folder / "synthetic-cache"))
        patch.setattr(plan_module.Planner, "build", lambda planner: calls.append(planner) or build(planner))
        html = write_report(folder / "study").read_text()
    return html, len(calls), len(spec.sources)


def test_contents_say_not_run_for_an_analysis_not_asked_and_no_results_for_one_asked(rendered):
    html, _, _ = rendered
    tags = dict(CONTENTS_ENTRY.findall(html))
    for source in ("early", "late"):
        assert tags[f"mistakes-{source}"] == "not run"  # analyses.mistakes.enabled: false
        assert tags[f"checkpoints-{source}"] == "not run"  # checkpoints.epochs empty
        assert tags[f"freeze-{source}"] == "not run"  # no freeze: sweep
        assert tags[f"distance-{source}"] == "no results"  # asked for, its jobs not run
    assert "This study does not run the mistakes analysis" in html
    assert "No results yet for distance" in html
    assert "This study does not run the freeze sweep (set <code>freeze: auto</code>" in html


def test_one_render_plans_each_source_once(rendered):
    _, planned, n_sources = rendered
    assert planned == n_sources


def test_a_distance_frame_without_settings_columns_is_refused_by_name():
    frame = pd.DataFrame({"model_a": ["P-T:s0", "P-T:s0"], "model_b": ["P", "P"], "target": ["real", "real"],
                          "module": ["network", "layer1"], "distance": [1.0, 0.5]})
    with pytest.raises(ValueError, match="lacks the settings columns") as error:
        table2_frame(frame)
    assert all(column in str(error.value) for column in SETTINGS)
    assert "param_distance()" in str(error.value)


class _RunsNothing:
    def run(self, root, jobs, report) -> None:
        pass


def test_one_run_plans_each_source_once(tmp_path, monkeypatch):
    spec = StudySpec.model_validate(two_sources(tmp_path))
    calls = []
    build = plan_module.Planner.build
    monkeypatch.setattr(plan_module.Planner, "build", lambda planner: calls.append(planner) or build(planner))
    run_study(spec, tmp_path / "study", _RunsNothing())
    assert len(calls) == len(spec.sources)  # the plan, then the check for identical models, share it
