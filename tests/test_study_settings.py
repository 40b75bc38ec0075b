"""The study's analysis settings are derived from the analysis functions' signatures
(one default per setting, in the function), and the study layer's structure: it does
not import the report, and data kinds are one table (issue 12)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest
import yaml
from pydantic import Field, ValidationError
from test_study import tiny_spec

import transferscope.study
from transferscope.analysis.basins import DEFAULT_SIGMAS, basin
from transferscope.analysis.distance import param_distance
from transferscope.analysis.interpolation import DEFAULT_ALPHAS, interpolate
from transferscope.analysis.mistake_overlap import mistakes
from transferscope.analysis.module_criticality import criticality
from transferscope.analysis.rewinding import rewind
from transferscope.analysis.similarity import compare_representations
from transferscope.analysis.soups import soup
from transferscope.analysis.spectra import spectrum_summary
from transferscope.config import DataConfig
from transferscope.data import load, load_domain
from transferscope.study import StudySpec
from transferscope.study.settings import keyword_settings
from transferscope.study.spec import Analyses

# The study's deliberate defaults, each differing from its function's (cost bounds on
# large data sets; Table 2 compares bodies, as P's head has other classes).
STUDY_DEFAULTS = {
    ("distance", "include_head"): False,
    ("interpolation", "recalibration_batches"): 8, ("interpolation", "max_examples"): 1000,
    ("basin", "recalibration_batches"): 8, ("basin", "max_examples"): 500,
    ("rewind", "max_examples"): 1000, ("criticality", "max_examples"): 512, ("soup", "recalibration_batches"): 8,
}


FUNCTIONS = {"cka": compare_representations, "distance": param_distance, "mistakes": mistakes,
             "interpolation": interpolate, "basin": basin, "rewind": rewind, "criticality": criticality,
             "spectrum": spectrum_summary, "soup": soup}


def _function_defaults(kind: str) -> dict:
    function = FUNCTIONS[kind]
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("kind", FUNCTIONS)
def test_every_analysis_setting_has_its_functions_default(kind):
    settings, defaults = Analyses.settings_model(kind)(), _function_defaults(kind)
    assert settings.ARGUMENTS and set(settings.ARGUMENTS) <= set(defaults)
    for name in settings.ARGUMENTS:
        expected = STUDY_DEFAULTS.get((kind, name), defaults[name])
        assert getattr(settings, name) == (tuple(expected) if isinstance(expected, list) else expected), name


def test_the_defaults_that_drifted_are_the_functions():
    assert set(FUNCTIONS) == set(Analyses.model_fields)
    analyses = Analyses()
    assert analyses.basin.n_noise == inspect.signature(basin).parameters["n_noise"].default == 10
    assert analyses.basin.sigmas == DEFAULT_SIGMAS and analyses.interpolation.alphas == DEFAULT_ALPHAS
    assert analyses.criticality.alphas is None and analyses.criticality.sigmas is None  # the function's exact grid


def test_a_keyword_parameter_becomes_a_validated_setting():
    def analysis(model, loader, *, alpha: float = 0.5, sizes: Sequence[int] = (1, 2), mode: str = "a") -> None:
        """A future analysis."""

    settings = keyword_settings("Future", analysis, set_by_job=("mode",), checks={"alpha": Field(gt=0)},
                                study={"max_examples": (int, 10)})
    value = settings.model_validate({"sizes": [3], "max_examples": 5})
    assert value.arguments() == {"alpha": 0.5, "sizes": (3,)}  # a YAML list is a tuple, like the default
    with pytest.raises(ValidationError, match="greater than 0"):
        settings(alpha=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        settings(mode="b")  # supplied by the job


@pytest.mark.parametrize("arguments, problem", [
    ({"defaults": {"alpha": 0.5}}, "equal to analysis's own: \\['alpha'\\]"),
    ({"checks": {"beta": Field(gt=0)}}, "'checks': \\['beta'\\]"),
    ({"study": {"alpha": (float, 1.0)}}, "'study': \\['alpha'\\]"),
    ({"set_by_job": ("loader",)}, "'set_by_job': \\['loader'\\]"),
])
def test_a_setting_declared_in_the_wrong_place_is_an_error(arguments, problem):
    def analysis(model, loader, *, alpha: float = 0.5) -> None:
        """An analysis."""

    with pytest.raises(TypeError, match=problem):
        keyword_settings("Wrong", analysis, **arguments)


def test_yaml_errors_list_the_derived_keys_and_modes(tmp_path):
    from transferscope.study import load_study

    spec = tiny_spec()
    spec["analyses"]["basin"]["n_noize"] = 2
    spec["analyses"]["rewind"]["bn"] = "sometimes"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError) as error:
        load_study(path)
    message = str(error.value)
    assert "analyses.basin.n_noize: unknown key; allowed keys: enabled, threshold, sigmas, n_segment, n_noise" in message
    assert "analyses.rewind.bn: invalid value 'sometimes'; input should be 'auto', 'recalibrate', 'follow' or " \
           "'keep'" in message


def test_analysis_jobs_store_every_setting_and_read_them_back():
    from transferscope.study import build_plan

    jobs = build_plan(StudySpec.model_validate(tiny_spec()))
    basin_job = next(job for job in jobs if job.kind == "basin")
    settings = Analyses.settings_model("basin").model_validate(basin_job.config["settings"])
    assert basin_job.config["settings"]["boundary_tol"] == 1e-3  # a default, written out for the reader
    assert settings.arguments()["n_noise"] == 1 and settings.arguments()["seed"] == 0


def test_the_study_layer_does_not_import_the_report():
    """Not at import, and not inside a function either (the report imports the study)."""
    study = Path(transferscope.study.__file__).parent
    for path in study.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "report" not in (node.module or ""), f"{path.name} imports {node.module}"
    code = ("import sys, transferscope.study as s, transferscope.study.jobs, transferscope.study.results, "
            "transferscope.study.executors; s.run_study, s.build_plan, s.open_study; "
            "print(sorted(m for m in sys.modules if m.startswith('transferscope.report')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_data_kinds_are_one_table(monkeypatch):
    assert set(load.BUILDERS) == set(DataConfig.model_fields["kind"].annotation.__args__)
    built = []
    monkeypatch.setitem(load.BUILDERS, "synthetic", lambda config, _cache_dir: built.append(config) or "domain")
    assert load_domain(DataConfig()) == "domain" and built == [DataConfig()]
    with pytest.raises(ValueError, match="unknown data kind 'tiff'; known kinds: synthetic, domainnet"):
        load_domain(DataConfig.model_construct(kind="tiff"))
