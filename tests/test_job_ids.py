"""Stable job ids (issue 12): a job's id hashes the settings that differ from their
defaults, the jobs it depends on and the job schema version; a new setting with a
default, a renamed target or a presentation field (enabled, targets) keeps stored ids."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import create_model
from typer.testing import CliRunner

from transferscope.cli import app
from transferscope.config import TrainConfig
from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study import job as job_module
from transferscope.study import plan as plan_module
from transferscope.study.executors import LocalExecutor
from transferscope.study.spec import Analyses, BasinSettings, DistanceSettings
from transferscope.study.store import Store

RECIPE = {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32}
OFF = ("cka", "mistakes", "interpolation", "basin", "rewind", "criticality", "spectrum")
SPEC = {
    "name": "ids",
    "model": {"arch": "small_resnet", "width": 4},
    "source": {"data": {"kind": "synthetic", "name": "source", "image_size": 16, "n_train": 64, "n_test": 32,
                        "num_classes": 4}, "recipe": RECIPE},
    "targets": [{"label": "real", "data": {"kind": "synthetic", "name": "real", "image_size": 16, "n_train": 32,
                                           "n_test": 32}}],
    "finetune": RECIPE, "scratch": RECIPE, "seeds": [0],
    "analyses": {**{name: {"enabled": False} for name in OFF}, "distance": {"include_bn_buffers": True}},
}


def spec_dict(**analyses) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["analyses"] = {**spec["analyses"], **analyses}
    return spec


def ids(spec: dict, model: type[StudySpec] = StudySpec) -> dict[str, str]:
    return {f"{job.kind} {job.label}": job.id for job in build_plan(model.model_validate(spec))}


def with_new_settings(monkeypatch) -> type[StudySpec]:
    """A StudySpec whose basin and distance settings and whose TrainConfig each have one
    more setting, with a default: what a later release adds."""
    basin = create_model("BasinSettings", __base__=BasinSettings, new_knob=(int, 3))
    distance = create_model("DistanceSettings", __base__=DistanceSettings, new_flag=(bool, False))
    analyses = create_model("Analyses", __base__=Analyses, basin=(basin, basin()), distance=(distance, distance()))
    monkeypatch.setattr(plan_module, "TrainConfig", create_model("TrainConfig", __base__=TrainConfig,
                                                                 new_rate=(float, 0.5)))
    return create_model("StudySpec", __base__=StudySpec, analyses=(analyses, analyses()))


class Recording(LocalExecutor):
    """Runs the jobs it is given, and remembers which."""

    def __init__(self) -> None:
        super().__init__(progress=False)
        self.asked: list[str] = []

    def run(self, root, jobs, report) -> None:
        self.asked += [job.id for job in jobs]
        super().run(root, jobs, report)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A study (P, P-T, RI-T and a parameter distance) run to completion."""
    folder = tmp_path_factory.mktemp("ids") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        assert run_study(StudySpec.model_validate(SPEC), folder, LocalExecutor(progress=False)) == {"done": 4}
    return folder


def test_a_new_defaulted_setting_keeps_a_finished_study(finished, monkeypatch):
    extended = with_new_settings(monkeypatch)
    assert ids(SPEC, extended) == ids(SPEC)
    executor = Recording()
    assert run_study(extended.model_validate(SPEC), finished, executor) == {"done": 4}
    assert executor.asked == []  # nothing to redo
    store = Store(finished)
    assert all(store.state(job) == "done" for job in build_plan(extended.model_validate(SPEC)))


def test_a_new_setting_given_a_value_changes_only_the_jobs_it_affects(monkeypatch):
    extended = with_new_settings(monkeypatch)
    base = ids(SPEC, extended)
    changed = ids(spec_dict(distance={"include_bn_buffers": True, "new_flag": True}), extended)
    assert {key for key in base if base[key] != changed[key]} == {"distance distance real"}


def test_only_non_default_values_count():
    base = ids(SPEC)
    explicit = spec_dict(distance={"include_bn_buffers": True, "include_bn_affine": True})  # the default, spelled out
    assert ids(explicit) == base
    changed = ids(spec_dict(distance={"include_bn_buffers": True, "include_bn_affine": False}))
    assert {key for key in base if base[key] != changed[key]} == {"distance distance real"}
    scratch = copy.deepcopy(SPEC)
    scratch["scratch"] = {**RECIPE, "lr": 0.01}
    changed = ids(scratch)
    assert {key for key in base if base[key] != changed[key]} == {"finetune RI-T real s0", "distance distance real"}


def test_presentation_fields_and_target_labels_are_not_hashed():
    base = ids(spec_dict(criticality={"targets": ["real"], "samples": 1, "alphas": [1.0], "sigmas": [0.1]}))
    assert ids(spec_dict(criticality={"samples": 1, "alphas": [1.0], "sigmas": [0.1]})) == base  # targets: None
    renamed = copy.deepcopy(SPEC)
    renamed["targets"][0]["label"] = "photos"
    assert sorted(ids(renamed).values()) == sorted(ids(SPEC).values())


def test_two_targets_of_one_data_are_an_error():
    spec = copy.deepcopy(SPEC)
    spec["targets"].append({**spec["targets"][0], "label": "again"})
    with pytest.raises(ValueError, match="targets 'real' and 'again' have the same data"):
        StudySpec.model_validate(spec)


def test_the_schema_version_is_hashed(monkeypatch):
    base = ids(SPEC)
    monkeypatch.setattr(job_module, "JOB_SCHEMA", job_module.JOB_SCHEMA + 1)
    bumped = ids(SPEC)
    assert not set(base.values()) & set(bumped.values())


def test_ids_are_pinned():
    """The ids of this spec under schema 2: a change here strands every stored result,
    so it must come with a schema bump."""
    assert job_module.JOB_SCHEMA == 2
    assert ids(SPEC) == {"pretrain P (source)": "pretrain-b06d5d9a2517", "finetune P-T real s0": "finetune-a63ee78078c3",
                         "finetune RI-T real s0": "finetune-d8fa6f58742f", "distance distance real": "distance-5d28137841be"}


def test_settings_reach_the_analysis_function(finished):
    from transferscope.io import read_table

    job = next(job for job in build_plan(StudySpec.model_validate(SPEC)) if job.kind == "distance")
    frame = read_table(Store(finished).job_dir(job) / "result.parquet")
    assert frame["include_bn_buffers"].all() and not frame["include_head"].any()  # set / the study's default


def test_run_writes_the_report_unless_told_not_to(finished, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(SPEC))
    report = finished / "report" / "index.html"
    assert not report.exists()  # run_study alone writes none
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(finished), "--no-report"])
    assert result.exit_code == 0, result.output
    assert not report.exists()
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(finished)])
    assert result.exit_code == 0, result.output
    assert report.is_file()
