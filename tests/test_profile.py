"""Where a study's time goes: every job records its wall seconds split into stages in
its done.json (measured by ``execute_job`` in the job's own process, which every executor
calls: in-process, pool worker, SLURM task), the report records its parts and sections,
and ``transferscope status --times`` / ``run --profile`` show them."""

from __future__ import annotations

import copy
import functools
import io
import json
import shutil

import pandas as pd
import pytest
import torch
from rich.console import Console
from test_study import _train_only, tiny_spec, write_spec
from typer.testing import CliRunner

from transferscope import cli, timing
from transferscope.analysis import basins, interpolation, module_criticality
from transferscope.io import read_json, read_table, write_json
from transferscope.models import build_model, save_weights
from transferscope.report import build_report
from transferscope.report.sections import SECTIONS
from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study import jobs as job_runners
from transferscope.study.executors import LocalExecutor
from transferscope.study.runner import open_study
from transferscope.study.store import REPORT_TIMES, Store
from transferscope.study.times import OTHER, job_times, report_table, times_table


def _spec() -> dict:
    spec = _train_only()
    spec["analyses"].update({"distance": {}, "mistakes": {"n_bootstrap": 20}})
    return spec


@pytest.fixture(scope="module")
def profiled_study(tmp_path_factory):
    """A tiny study (P, P-T, RI-T, distance, mistakes) and its report."""
    folder = tmp_path_factory.mktemp("profiled")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        spec = _spec()
        job_runners._domain.cache_clear()  # each domain made anew, by the first job that needs it
        counts = run_study(StudySpec.model_validate(spec), folder, LocalExecutor(progress=False))
        build_report(folder)
    assert set(counts) == {"done"}
    return spec, folder


def _done(folder):
    _, store, jobs = open_study(folder)
    return {job.id: (job, json.loads((store.job_dir(job) / "done.json").read_text())) for job in jobs}


def test_every_job_records_its_stages_within_its_wall_time(profiled_study):
    _, folder = profiled_study
    done = _done(folder)
    assert {job.kind for job, _ in done.values()} == {"pretrain", "finetune", "distance", "mistakes"}
    for job, record in done.values():
        stages = record["stages"]
        assert set(record["cpu_stages"]) == set(stages) and record["cpu_seconds"] > 0, job.label
        assert all(seconds >= 0 for seconds in (*stages.values(), *record["cpu_stages"].values())), job.label
        assert sum(stages.values()) <= record["seconds"], job.label
        assert sum(record["cpu_stages"].values()) <= record["cpu_seconds"], job.label
        if job.kind in ("pretrain", "finetune"):
            assert stages["train"] > 0, job.label
        else:
            assert {"models", "analysis", "write"} <= set(stages) and stages["analysis"] > 0, job.label
    # each domain is made once per process: by the first job that needs it (source, real)
    assert sum("data" in record["stages"] for job, record in done.values() if job.kind in ("pretrain", "finetune")) == 2


def test_kind_totals_add_up_the_jobs(profiled_study):
    _, folder = profiled_study
    done = _done(folder)
    kinds = job_times(folder)
    assert sum(entry["jobs"] for entry in kinds.values()) == len(done)
    for kind, entry in kinds.items():
        records = [record for job, record in done.values() if job.kind == kind]
        assert entry["jobs"] == len(records)
        assert entry["seconds"] == pytest.approx(sum(record["seconds"] for record in records))
        assert entry["cpu_seconds"] == pytest.approx(sum(record["cpu_seconds"] for record in records))
        assert sum(entry["stages"].values()) == pytest.approx(entry["seconds"])  # "other" is the rest
        assert entry["stages"][OTHER] >= 0


def test_report_records_each_section_and_its_figures(profiled_study):
    _, folder = profiled_study
    times = json.loads((folder / REPORT_TIMES).read_text())
    assert set(times["sections"]) == {key for key, _, _ in SECTIONS}
    assert sum(times["stages"].values()) <= times["seconds"]
    assert set(times["stages"]) == {"results", "sections", "figures", "page"}
    pngs = list((folder / "report" / "figures").glob("*.png"))
    assert sum(section["figures"] for section in times["sections"].values()) == len(pngs) > 0
    assert sum(section["build"] for section in times["sections"].values()) <= times["stages"]["sections"]


def _text(table) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=250).print(table)
    return buffer.getvalue()


def test_times_table_shows_each_kind_and_stage(profiled_study):
    _, folder = profiled_study
    text = _text(times_table(folder))
    for word in ("pretrain", "finetune", "distance", "mistakes", "all jobs",
                 "data", "models", "train", "analysis", "write", OTHER, "cpu"):
        assert word in text, word
    report = _text(report_table(folder))
    assert "collect results" in report and "write figures" in report
    assert all(f"section {key}" in report for key, _, _ in SECTIONS)


def test_status_times_and_run_profile_print_the_tables(profiled_study, tmp_path, monkeypatch):
    spec, folder = profiled_study
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=80))  # as in a log: 80 columns
    plain = CliRunner().invoke(cli.app, ["status", str(folder)])
    assert plain.exit_code == 0, plain.output
    assert "job time" not in cli.console.file.getvalue()
    result = CliRunner().invoke(cli.app, ["status", str(folder), "--times"])
    assert result.exit_code == 0, result.output
    printed = cli.console.file.getvalue()
    assert "job time" in printed and "report time" in printed
    assert "…" not in printed and "analysis" in printed  # the tables are as wide as they need, not cut
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=80))
    result = CliRunner().invoke(cli.app, ["run", str(write_spec(tmp_path / "study.yaml", spec)), "--out", str(folder),
                                          "--profile"])  # all done: nothing runs, the tables are printed
    assert result.exit_code == 0, result.output
    printed = cli.console.file.getvalue()
    assert f"{len(build_plan(StudySpec.model_validate(spec)))}/" in printed
    assert "job time" in printed and "mistakes" in printed and "report time" in printed


def test_nested_stages_count_once(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 4.0, 10.0, 10.5, 11.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(timing.time, "process_time", lambda: 0.0)
    with timing.recording() as stages:  # made at 0
        with timing.stage("analysis"):  # 1
            with timing.stage("models"):  # 3
                pass  # 4: models 1 s, analysis 2 s so far
        # 4: analysis closed at 4 (2 s + 0 s)
        with timing.stage("write"):  # 10
            pass  # 10.5
        assert stages.snapshot() == {"analysis": 2.0, "models": 1.0, "write": 0.5}
    with timing.stage("data"):  # not recording: nothing is charged, no clock is read
        pass
    assert stages.totals == {"analysis": 2.0, "models": 1.0, "write": 0.5}


# ------------------------------------------------- cuts of the demo's time, same numbers
@pytest.fixture(scope="module")
def criticality_study(tmp_path_factory):
    """P, P-T:s0, RI-T:s0 on one target (2 fine-tuning epochs) and their criticality jobs."""
    folder = tmp_path_factory.mktemp("criticality")
    spec = _train_only()
    spec["finetune"]["epochs"] = spec["scratch"]["epochs"] = 2
    spec["analyses"]["criticality"] = tiny_spec()["analyses"]["criticality"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        assert set(run_study(StudySpec.model_validate(spec), folder, LocalExecutor(progress=False))) == {"done"}
    _, store, jobs = open_study(folder)
    job = next(job for job in jobs if job.kind == "criticality" and job.label.endswith("P-T:s0"))
    return store, job


def _make_best(store, job, epoch: int) -> None:
    """Make ``epoch`` the P-T run's best epoch (its weights the best checkpoint)."""
    run = store.job_dir(job.config["models"]["P-T:s0"]["job"]) / "run"
    shutil.copyfile(run / "checkpoints" / f"epoch_{epoch:03d}.safetensors", run / "checkpoints" / "best.safetensors")
    write_json(run / "status.json", {**read_json(run / "status.json"), "best_epoch": epoch})


def _rerun(store, job, monkeypatch, **patches) -> tuple[list[str], dict]:
    """Run the criticality job again; the ``start`` of every criticality computed, and its tables."""
    starts = []
    for name in ("criticality", "network_criticality"):
        function = getattr(module_criticality, name)
        monkeypatch.setattr(module_criticality, name, functools.partial(_spy, function, starts))
    for name, value in patches.items():
        monkeypatch.setattr(job_runners, name, value)
    (store.job_dir(job) / "done.json").unlink()
    assert job_runners.execute_job(store.root, job.id) == "done"
    return starts, {name: read_table(store.job_dir(job) / name) for name in ("result", "grid")}


def _spy(function, starts, *args, **kwargs):
    starts.append(kwargs["start"])
    return function(*args, **kwargs)


def test_criticality_from_a_best_epoch_that_is_the_last_is_computed_once(criticality_study, monkeypatch):
    store, job = criticality_study
    _make_best(store, job, 2)  # θ_opt = θ_F
    starts, tables = _rerun(store, job, monkeypatch)
    assert set(starts) == {"final"}  # the fast search and the heatmap grid of each path, from θ_F only
    forced_starts, forced = _rerun(store, job, monkeypatch, _equal_states=lambda _a, _b: False)
    assert forced_starts.count("best") == forced_starts.count("final")
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(frame, forced[name], check_exact=True)  # the same numbers, the same rows in the same order
        assert set(frame["start"]) == {"final", "best"}


def test_criticality_from_an_earlier_best_epoch_is_computed(criticality_study, monkeypatch):
    store, job = criticality_study
    _make_best(store, job, 1)
    starts, tables = _rerun(store, job, monkeypatch)
    assert starts.count("best") == starts.count("final") > 0
    final, best = (tables["result"].query(f"start == '{start}'").drop(columns="start").reset_index(drop=True)
                   for start in ("final", "best"))
    assert not final.equals(best)


def test_basin_evaluates_the_loss_at_each_point_once():
    evaluated = []

    def loss_at(alpha: float, noise) -> float:  # a bowl: the boundary lies a little beyond both ends
        if noise is None:
            evaluated.append(alpha)
        return (alpha - 0.5) ** 2 + 1.0 + (0.0 if noise is None else float(noise.square().sum()))

    frame = basins.basin_along(loss_at, 10, 1.0, sigmas=[0.01], n_segment=4, n_noise=1, sigma_floor=None)
    assert len(evaluated) == len(set(evaluated)) > 4
    assert frame["alpha_lo"].iloc[0] == pytest.approx(0.5 - 0.3125 ** 0.5, abs=1e-3)  # (α − ½)² + 1 = 1.05 · 1.25


def test_interpolation_of_a_model_with_itself_is_evaluated_at_one_alpha(toy_domain, monkeypatch):
    torch.manual_seed(0)
    model = build_model("small_resnet", toy_domain.num_outputs, width=4).eval()
    other = build_model("small_resnet", toy_domain.num_outputs, width=4).eval()
    test, train = toy_domain.loader("test", 32), toy_domain.loader("train", 32, shuffle=True, seed=0)
    arguments = {"alphas": (-0.5, 0, 0.25, 1, 1.5), "bn": "recalibrate", "recalibration_batches": 2}
    full = interpolation.interpolate(model, copy.deepcopy(model), test, recalibration_loader=train, **arguments)
    evaluated = []
    monkeypatch.setattr(interpolation, "interpolate", functools.partial(_spy_alphas, interpolation.interpolate, evaluated))
    once = job_runners.interpolation_curve(model, copy.deepcopy(model), test, recalibration_loader=train, **arguments)
    assert evaluated == [[-0.5]]
    pd.testing.assert_frame_equal(once, full, check_exact=True)
    assert once["loss"].nunique() == 1
    job_runners.interpolation_curve(model, other, test, recalibration_loader=train, **arguments)
    assert evaluated[-1] == list(arguments["alphas"])


def _spy_alphas(function, evaluated, *args, **kwargs):
    evaluated.append(list(kwargs["alphas"]))
    return function(*args, **kwargs)


def test_brought_weights_jobs_record_their_stages(tmp_path):
    weights = save_weights(build_model("small_resnet", 4, width=4), tmp_path / "p.safetensors")
    spec = _train_only()
    spec["source"] = {"weights": str(weights), "data": tiny_spec()["source"]["data"]}
    store = Store(tmp_path / "study")
    jobs = [job for job in build_plan(StudySpec.model_validate(spec)) if job.kind in ("weights", "source_score")]
    store.register(jobs)
    for job in jobs:
        assert job_runners.execute_job(store.root, job.id) == "done"
    stages = {job.kind: set(store.done_record(job)["stages"]) for job in jobs}
    assert stages["weights"] == {"models", "write"}
    assert {"models", "analysis", "write"} <= stages["source_score"]
