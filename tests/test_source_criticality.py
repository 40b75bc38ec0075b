"""P's module criticality on the source data along its pre-training trajectory (issue 10):
planned for brought weights with source.checkpoints from epoch 0 and source.data, and for
P pre-trained here with analyses.criticality.source: true; one job, its rows under
``data == "source"``; the report draws P beside the targets' models or says what it needs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from transferscope.analysis import network_criticality
from transferscope.config import DataConfig
from transferscope.data import load_domain
from transferscope.evaluation import cache_batches
from transferscope.models import build_model, load_weights, save_weights
from transferscope.report import build_report
from transferscope.report.figures import criticality as criticality_figures
from transferscope.report.page import Section
from transferscope.report.sections import module_criticality
from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study.executors import LocalExecutor
from transferscope.study.jobs import execute_job
from transferscope.study.store import Store

RECIPE = {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32}
SOURCE_DATA = {"kind": "synthetic", "name": "source", "image_size": 16, "n_train": 64, "n_test": 32, "num_classes": 4}
TARGET = {"label": "real", "data": {"kind": "synthetic", "name": "real", "image_size": 16, "n_train": 64,
                                    "n_test": 32}}
CRITICALITY = {"alphas": [0.5, 1.0], "sigmas": [0.02, 0.2], "samples": 1, "max_examples": 32, "threshold": 2.0}
ANALYSES = {**{name: {"enabled": False} for name in
               ("cka", "distance", "mistakes", "interpolation", "basin", "rewind", "spectrum", "soup")},
            "criticality": CRITICALITY}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))


def study(p: dict, **criticality) -> dict:
    """A one-target study of source ``p`` with ``criticality`` settings."""
    return {"name": "source-criticality", "model": {"arch": "small_resnet", "width": 4}, "source": p,
            "targets": [TARGET], "finetune": {**RECIPE, "lr": 0.01}, "scratch": RECIPE, "seeds": [0],
            "analyses": {**ANALYSES, "criticality": {**CRITICALITY, **criticality}}}


def bent_trajectory(folder: Path) -> dict[int, str]:
    """Epochs 0, 1, 2 of a brought P: two seeded inits, and between them a point far off
    the straight line (epoch 2 plus large noise on every parameter)."""
    states = {}
    for epoch, seed in ((0, 0), (2, 1)):
        torch.manual_seed(seed)
        states[epoch] = build_model("small_resnet", 4, width=4).state_dict()
    model = build_model("small_resnet", 4, width=4)
    parameters = {name for name, _ in model.named_parameters()}
    generator = torch.Generator().manual_seed(2)
    states[1] = {key: value + 3 * torch.randn(value.shape, generator=generator) if key in parameters else value
                 for key, value in states[2].items()}
    return {epoch: str(save_weights(states[epoch], folder / f"p{epoch}.safetensors")) for epoch in sorted(states)}


def criticality_jobs(spec: dict) -> list:
    return [job for job in build_plan(StudySpec.model_validate(spec)) if job.kind == "criticality"]


def source_jobs(spec: dict) -> list:
    return [job for job in criticality_jobs(spec) if "source" in job.config]


@pytest.fixture(scope="module")
def brought_study(tmp_path_factory):
    """A brought P with a bent 3-checkpoint trajectory and source data, criticality on:
    run and reported."""
    folder = tmp_path_factory.mktemp("source-criticality")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        trajectory = bent_trajectory(folder)
        spec = StudySpec.model_validate(study({"checkpoints": trajectory, "data": SOURCE_DATA}))
        counts = run_study(spec, folder / "study", LocalExecutor(progress=False), Console(file=io.StringIO()))
        build_report(folder / "study")
    return spec, folder / "study", trajectory, counts


def test_a_brought_trajectory_from_epoch_0_plans_one_source_criticality_job(tmp_path):
    trajectory = bent_trajectory(tmp_path)
    spec = study({"checkpoints": trajectory, "data": SOURCE_DATA})
    jobs = {job.id: job for job in build_plan(StudySpec.model_validate(spec))}
    (source,) = source_jobs(spec)
    weights = {job.config["weights"]: job.id for job in jobs.values() if job.kind == "weights"}
    assert source.target is None and list(source.config["models"]) == ["P"]
    assert source.config["source"]["trajectory"] == [[epoch, weights[path]] for epoch, path in trajectory.items()]
    assert sorted(source.deps) == sorted(weights.values())
    assert source.config["models"]["P"]["job"] == weights[trajectory[2]]
    targets = [job for job in criticality_jobs(spec) if job.id != source.id]
    assert sorted(next(iter(job.config["models"])) for job in targets) == ["P-T:s0", "RI-T:s0"]

    # switching P's criticality off removes its job and changes no other job's id
    off = {job.id for job in build_plan(StudySpec.model_validate(study(spec["source"], source=False)))}
    assert off == set(jobs) - {source.id}


@pytest.mark.parametrize("checkpoints, data, needs", [
    ({1: "p1", 2: "p2"}, True, r"source.checkpoints with epoch 0 \(P's initial weights\) and P's epoch; it has \[1, 2\]"),
    ({0: "p0", 2: "p2"}, False, r"needs source.data \(the data P was pre-trained on"),
])
def test_without_epoch_0_or_source_data_none_is_planned_and_the_report_says_why(tmp_path, checkpoints, data,
                                                                                  needs):
    trajectory = bent_trajectory(tmp_path)
    source = {"checkpoints": {epoch: trajectory[int(name[1])] for epoch, name in checkpoints.items()}}
    if data:
        source["data"] = SOURCE_DATA
    spec = study(source)
    assert source_jobs(spec) == [] and len(criticality_jobs(spec)) == 2  # P-T and RI-T only
    section = Section("criticality", "Module criticality (Fig. 6)")
    module_criticality(section, {}, spec=StudySpec.model_validate(spec))
    assert section.missing.startswith("No results yet")
    assert "P's criticality on its source data is not measured:" in section.missing
    assert re.search(needs, section.missing)

    with pytest.raises(ValueError, match="analyses.criticality.source is true, but P's criticality on its source data "
                                         "cannot be measured: it needs"):
        build_plan(StudySpec.model_validate(study(source, source=True)))


def test_the_brought_trajectory_is_walked_on_the_source_data(brought_study):
    spec, root, trajectory, counts = brought_study
    assert counts == {"done": len(build_plan(spec))}
    table = pd.read_parquet(root / "results" / "criticality.parquet")
    p_rows = table[table["data"] == "source"]
    assert set(p_rows["model"]) == {"P"} and p_rows["target"].isna().all()
    assert set(table.loc[table["data"] == "target", "target"]) == {"real"}
    assert set(zip(p_rows["path"], p_rows["start"])) == {("direct", "final"), ("optimization", "final")}  # no θ_opt

    # the job's rows are P's criticality on the source test data along [epoch 0, 1, 2]
    states = [load_weights(path) for path in trajectory.values()]
    model = build_model("small_resnet", 4, width=4)
    model.load_state_dict(states[-1])
    domain = load_domain(DataConfig(**SOURCE_DATA))
    batches = cache_batches(domain.loader("test", 256, limit=32))
    expected = {path: network_criticality(model.eval(), states[0], batches, method="fast", path=path,
                                          path_states=states, **CRITICALITY).set_index("module")["criticality"]
                for path in ("direct", "optimization")}
    for path, values in expected.items():
        found = p_rows[p_rows["path"] == path].set_index("module")["criticality"]
        pd.testing.assert_series_equal(found.loc[values.index], values, check_names=False)
    # the bend matters: a job that walked the straight line would give the direct path's values
    assert (expected["optimization"] > expected["direct"]).any()


def test_the_report_draws_p_beside_the_targets_models(brought_study):
    _, root, _, _ = brought_study
    html = (root / "report" / "index.html").read_text()
    assert 'class="error"' not in html
    summary = (root / "report" / "summary.md").read_text()
    section = summary.split("## Module criticality (Fig. 6)", 1)[1].split("\n## ", 1)[0]
    assert "P on source data network" in section and "from its initial weights to P along its pre-training" in section
    assert "not measured" not in section
    tables = {"criticality": pd.read_parquet(root / "results" / "criticality.parquet")}
    figure = criticality_figures.plot_criticality_bars(tables["criticality"], "real")
    (legend,) = figure.legends  # one legend, below the panels
    assert "P on source data" in [text.get_text() for text in legend.get_texts()]
    # θ_opt panels have no P (brought weights have no best epoch): nothing is drawn for it there, not ∞
    best_panels = [ax for ax in figure.axes if ax.get_visible() and "θ_opt" in ax.get_title()]
    assert best_panels and "P on source data" in figure.axes[0].get_xlabel()  # its network value, under its panel
    for ax in best_panels:
        assert "P on source data" not in [bars.get_label() for bars in ax.containers]
        assert "P on source data" not in ax.get_xlabel()


def test_a_pretrain_here_study_gets_it_when_asked(tmp_path):
    source = {"data": SOURCE_DATA, "recipe": {**RECIPE, "epochs": 2}}
    assert source_jobs(study(source)) == []  # off by default for P pre-trained here (the demo stays as it is)
    section = Section("criticality", "Module criticality (Fig. 6)")
    module_criticality(section, {}, spec=StudySpec.model_validate(study(source)))
    assert "set analyses.criticality.source: true" in section.missing

    spec = StudySpec.model_validate(study(source, source=True))
    jobs = build_plan(spec)
    (job,) = [job for job in jobs if job.kind == "criticality" and "source" in job.config]
    pretrain = next(job for job in jobs if job.kind == "pretrain")
    assert job.deps == (pretrain.id,) and job.config["source"]["trajectory"] == []
    store = Store(tmp_path / "study")
    store.register(jobs)
    for one in (pretrain, job):
        assert execute_job(store.root, one.id) == "done", store.error(one)
    rows = pd.read_parquet(store.job_dir(job) / "result.parquet")
    grid = pd.read_parquet(store.job_dir(job) / "grid.parquet")
    assert set(rows["model"]) == {"P"} and set(rows["path"]) == {"direct", "optimization"}
    best_epoch = int(pd.read_json(store.job_dir(pretrain) / "run" / "status.json", typ="series")["best_epoch"])
    assert set(rows["start"]) == ({"final", "best"} if best_epoch > 0 else {"final"})
    assert set(grid["module"]) == {"conv1"} and rows["n_examples"].eq(32).all()
