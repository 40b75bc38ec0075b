"""Where a study's time goes: every job records its wall seconds split into stages in
its done.json (measured by ``execute_job`` in the job's own process, which every executor
calls: in-process, pool worker, SLURM task), the report records its parts and sections,
and ``transferscope status --times`` / ``run --profile`` show them."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from test_study import _train_only, write_spec
from typer.testing import CliRunner

from transferscope import cli, timing
from transferscope.report import build_report
from transferscope.report.sections import SECTIONS
from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study import jobs as job_runners
from transferscope.study.executors import LocalExecutor
from transferscope.study.runner import open_study
from transferscope.study.store import REPORT_TIMES
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
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=250))
    plain = CliRunner().invoke(cli.app, ["status", str(folder)])
    assert plain.exit_code == 0, plain.output
    assert "job time" not in cli.console.file.getvalue()
    result = CliRunner().invoke(cli.app, ["status", str(folder), "--times"])
    assert result.exit_code == 0, result.output
    assert "job time" in cli.console.file.getvalue() and "report time" in cli.console.file.getvalue()
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=250))
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
