"""The study layer: YAML validation, plan hashing, running, resuming after a kill,
failure isolation, executors (pool, submitit local), status and the report."""

from __future__ import annotations

import copy
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from transferscope.analysis import claims
from transferscope.cli import app, preset_path
from transferscope.report import build_report
from transferscope.study import StudySpec, build_plan, load_study, run_study
from transferscope.study import jobs as job_runners
from transferscope.study.executors import LocalExecutor, PoolExecutor, SlurmExecutor, SlurmSettings
from transferscope.study.runner import open_study
from transferscope.train import TrainingRun

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ONLY = {name: {"enabled": False} for name in
              ("cka", "distance", "mistakes", "interpolation", "basin", "rewind", "criticality", "spectrum")}


def tiny_spec(**changes) -> dict:
    """A study that trains in seconds: 16x16 images, width-4 ResNet, one epoch each."""
    spec = {
        "name": "tiny",
        "model": {"arch": "small_resnet", "width": 4},
        "source": {"data": {"kind": "synthetic", "name": "source", "image_size": 16, "n_train": 128, "n_test": 64,
                            "num_classes": 4},
                   "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32}},
        "targets": [{"label": "real", "data": {"kind": "synthetic", "name": "real", "image_size": 16,
                                               "n_train": 64, "n_test": 48}},
                    {"label": "xray", "data": {"kind": "synthetic", "name": "xray", "image_size": 16,
                                               "n_train": 64, "n_test": 48}}],
        "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 32, "clean_train_examples": 32},
        "scratch": {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32},
        "seeds": [0, 1],
        "shuffle": {"block_sizes": [4, "*"], "targets": ["real"]},
        "checkpoints": {"epochs": [0, 1], "targets": ["real"]},
        "analyses": {
            "cka": {"max_examples": 32, "batch_size": 16},
            "mistakes": {"n_bootstrap": 20},
            "interpolation": {"alphas": [-0.5, 0.0, 0.5, 1.0], "max_examples": 32, "recalibration_batches": 1},
            "basin": {"sigmas": [0.05], "n_segment": 3, "n_noise": 1, "max_examples": 32,
                      "recalibration_batches": 1},
            "rewind": {"max_examples": 32},
            "criticality": {"alphas": [0.5, 1.0], "sigmas": [0.05, 0.2], "samples": 1, "max_examples": 32, "targets": ["real"]},
        },
    }
    for key, value in changes.items():
        spec[key] = value
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "synthetic-cache"
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(folder))
    return folder


# ---------------------------------------------------------------------------- spec
def test_unknown_key_is_named(tmp_path):
    spec = tiny_spec()
    spec["source"]["recipe"]["lrr"] = 0.1
    with pytest.raises(ValueError, match=r"source\.recipe\.lrr: unknown key"):
        load_study(write_spec(tmp_path / "s.yaml", spec))


def test_invalid_value_lists_the_allowed_ones(tmp_path):
    spec = tiny_spec()
    spec["analyses"]["cka"]["kernel"] = "poly"
    with pytest.raises(ValueError, match=r"analyses\.cka\.kernel: .*'linear'.*'rbf'"):
        load_study(write_spec(tmp_path / "s.yaml", spec))


def test_unknown_target_reference_and_bad_block_size(tmp_path):
    with pytest.raises(ValueError, match="unknown targets"):
        load_study(write_spec(tmp_path / "a.yaml", tiny_spec(shuffle={"block_sizes": [4], "targets": ["nope"]})))
    with pytest.raises(ValueError, match="does not divide image_size 16"):
        load_study(write_spec(tmp_path / "b.yaml", tiny_spec(shuffle={"block_sizes": [5]})))
    with pytest.raises(FileNotFoundError):
        load_study(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------- plan
def _ids(spec: dict) -> dict[str, str]:
    return {job.label + "|" + job.kind: job.id for job in build_plan(StudySpec.model_validate(spec))}


def test_changing_a_setting_changes_only_the_jobs_it_affects():
    base = _ids(tiny_spec())
    scratch = tiny_spec()
    scratch["scratch"]["lr"] = 0.2
    changed = {label for label, job_id in _ids(scratch).items() if base.get(label) != job_id}
    assert changed, "changing the RI-T lr must change some jobs"
    assert all(label.startswith("RI-T") or label.split("|")[1] not in ("finetune", "pretrain") for label in changed)
    assert not any(label.startswith(("P-T", "P (source)")) for label in changed)
    # every analysis job that reads an RI-T run changes; spectrum/rewind/criticality/cka... all do here
    assert {"cka real|cka", "distance xray|distance"} <= changed

    kernel = tiny_spec()
    kernel["analyses"]["cka"]["kernel"] = "rbf"
    changed = {label for label, job_id in _ids(kernel).items() if base.get(label) != job_id}
    assert changed == {"cka real|cka", "cka xray|cka"}


def test_plan_is_deterministic_and_dependencies_come_first():
    jobs = build_plan(StudySpec.model_validate(tiny_spec()))
    assert [j.id for j in jobs] == [j.id for j in build_plan(StudySpec.model_validate(tiny_spec()))]
    seen = set()
    for job in jobs:
        assert set(job.deps) <= seen
        seen.add(job.id)


def test_the_shuffle_sweep_runs_its_own_unshuffled_baseline_without_augmentation():
    jobs = [job for job in build_plan(StudySpec.model_validate(tiny_spec())) if job.kind == "finetune"]
    trained = [(job.config["meta"], job.config["train"]) for job in jobs]
    baseline = [(m, t) for m, t in trained if m["block_size"] == 16]
    assert sorted((m["role"], m["seed"]) for m, _ in baseline) == [("P-T", 0), ("RI-T", 0)]  # run_seeds (0,)
    assert all(m["target"] == "real" and m["permutation_seed"] == 0 and t["augment"] is False for m, t in baseline)
    shuffled = [(m, t) for m, t in trained if m["block_size"] not in (None, 16)]
    assert len(shuffled) == 4 and all(t["augment"] is False for _, t in shuffled)
    main = [(m, t) for m, t in trained if m["block_size"] is None]
    assert main and all(t["augment"] is True and m["permutation_seed"] is None for m, t in main)


def test_sweep_runs_are_tested_at_the_end_only_and_main_runs_every_epoch():
    """The demo's three sweeps (shuffle, checkpoints, freeze) report final scores: their runs
    test at epoch 0 and the last (test_every = epochs); the main runs, whose curves, best
    epoch and analyses need every epoch, keep the recipe's test_every."""
    spec = load_study(preset_path("demo"))
    trained = [job for job in build_plan(spec) if job.kind in ("finetune", "frozen")]
    last = spec.one_source.final_epoch

    def sweep(job) -> bool:
        meta = job.config["meta"]
        return (job.kind == "frozen" or meta["block_size"] is not None
                or (meta["role"] == "P-T" and meta["from_epoch"] != last))

    sweeps, main = [job for job in trained if sweep(job)], [job for job in trained if not sweep(job)]
    assert len(main) == 2 * len(spec.targets) * len(spec.seeds) and len(sweeps) > len(main)
    assert all(job.config["train"]["test_every"] == job.config["train"]["epochs"] for job in sweeps)
    assert all(job.config["train"]["test_every"] == 1 for job in main)


@pytest.mark.parametrize("name, minimum", [("paper-domainnet", 250), ("paper-chexpert", 90)])
def test_paper_presets_plan_without_the_data(name, minimum):
    spec = load_study(ROOT / "examples" / f"{name}.yaml")
    jobs = build_plan(spec)
    assert len(jobs) >= minimum
    finetune = [j for j in jobs if j.kind == "finetune"]
    assert {j.config["train"]["data"]["image_size"] for j in finetune} == {224}
    result = CliRunner().invoke(app, ["plan", str(ROOT / "examples" / f"{name}.yaml")])
    assert result.exit_code == 0, result.output


def test_demo_preset_is_valid():
    spec = load_study(preset_path("demo"))
    assert len(spec.targets) >= 2 and len(spec.seeds) >= 2


# ---------------------------------------------------------------------------- run
@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    spec = StudySpec.model_validate(tiny_spec())
    with pytest.MonkeyPatch.context() as patch:  # set before the function-scoped cache_dir, undone after
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        counts = run_study(spec, folder, LocalExecutor(progress=False))
        build_report(folder)
    return spec, folder, counts


def test_tiny_study_runs_every_analysis_and_reports(finished_study):
    spec, folder, counts = finished_study
    assert counts == {"done": len(build_plan(spec))}
    results = folder / "results"
    for name in ("runs", "curves", "feature_reuse", "checkpoints", "cka", "distance", "mistakes",
                 "interpolation", "interpolation_barriers", "basin", "rewind", "criticality", "criticality_grid",
                 "spectrum", "soup"):
        assert (results / f"{name}.parquet").is_file(), name
        assert (results / f"{name}.csv").is_file(), name
    runs = pd.read_parquet(results / "runs.parquet")
    assert set(runs["role"]) == {"P", "P-T", "RI-T"}
    html = (folder / "report" / "index.html").read_text()
    assert 'class="error"' not in html
    assert 'class="missing"' not in html
    for title in ("Fig. 2", "Fig. 3", "Sec. 3.2", "Table 1", "Table 2", "Fig. 4", "Definition 3.1", "Fig. 5",
                  "Fig. 6", "Fig. 7", "spectra", "model soups"):
        assert title in html, title
    assert "<td>P-T&amp;P-T</td>" in html  # Table 1 rows keep their pair labels
    sweep = runs[runs["permutation_seed"].notna() & (runs["block"] == "16")]  # the sweep's unshuffled baseline
    unshuffled = pd.read_parquet(results / "feature_reuse.parquet").query("block_size == '16'")
    assert len(sweep) == 2 and len(unshuffled) == 1
    for role, column in (("P-T", "PT_final_score_mean"), ("RI-T", "RIT_final_score_mean")):
        assert unshuffled[column].iloc[0] == sweep.loc[sweep["role"] == role, "final_score"].mean()
    summary = (folder / "report" / "summary.md").read_text()
    assert "| P-T&P-T " in summary and "| real " in summary  # and so do Table 1 and 2 in the summary
    figures = {p.name for p in (folder / "report" / "figures").glob("*.png")}
    assert len(figures) >= 12
    assert {p.stem for p in (folder / "report" / "figures").glob("*.pdf")} == {Path(f).stem for f in figures}
    assert (folder / "report" / "summary.md").read_text().count("![") == len(figures)
    with sqlite3.connect(folder / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0] == counts["done"]


def test_report_opens_with_the_findings_that_captions_quote(finished_study):
    _, folder, _ = finished_study
    findings = pd.read_parquet(folder / "results" / "findings.parquet")
    assert list(findings.columns) == claims.COLUMNS
    assert len(pd.read_csv(folder / "results" / "findings.csv")) == len(findings) > 0
    assert set(findings["verdict"]) <= set(claims.VERDICTS)
    assert {"P-T ends higher than RI-T", "P-T optimizes faster than RI-T",
            "P-T solutions can be averaged; RI-T solutions cannot"} <= set(findings["claim"])
    soups = pd.read_parquet(folder / "results" / "soup.parquet")  # one job per target: both groups
    assert set(soups["group"]) == {"P-T", "RI-T"} and set(soups["bn"]) == {"recalibrate"}
    html = (folder / "report" / "index.html").read_text()
    assert re.findall(r'<section id="([^"]+)">', html)[0] == "findings"
    assert 'class="verdict ' in html
    summary = (folder / "report" / "summary.md").read_text()
    assert re.findall(r"^## (.+)$", summary, re.MULTILINE)[0] == "Findings at a glance"
    distance = html[html.index('<section id="distance">'):]
    closer = findings[findings["claim"].str.startswith("P-T models are closer")]
    assert len(closer) > 0 and "as in the paper" not in html
    sentence = f"Findings: “{closer['claim'].iloc[0]}” {closer['verdict'].iloc[0]} on"
    assert sentence in distance[:distance.index("</section>")]
    cka = pd.read_parquet(folder / "results" / "cka.parquet")  # each model against a fresh network: the floor
    floor = cka[(cka["model_b"] == claims.FLOOR_MODEL) & (cka["module_a"] == cka["module_b"])]
    assert set(floor["model_a"]) == {"P", "P-T:s0", "P-T:s1", "RI-T:s0", "RI-T:s1"} and floor["cka"].notna().all()
    similarity = html[html.index('<section id="cka">'):]
    assert "Chance floor: CKA with a freshly initialised network" in similarity[:similarity.index("</section>")]


def test_second_run_skips_complete_jobs(finished_study, monkeypatch):
    spec, folder, _ = finished_study
    monkeypatch.setattr(job_runners, "RUNNERS", {})  # a job that ran again would fail: no runner for its kind
    counts = run_study(spec, folder, LocalExecutor(progress=False))
    assert counts == {"done": len(build_plan(spec))}


def test_status_command_lists_states(finished_study):
    _, folder, _ = finished_study
    result = CliRunner().invoke(app, ["status", str(folder)])
    assert result.exit_code == 0, result.output
    assert "finetune" in result.output and "done" in result.output


def _train_only(**changes) -> dict:
    spec = tiny_spec(analyses=copy.deepcopy(TRAIN_ONLY), shuffle={}, checkpoints={}, seeds=[0], **changes)
    spec["targets"] = spec["targets"][:1]
    return spec


def _final_weights(folder: Path) -> dict[str, dict]:
    spec, store, jobs = open_study(folder)
    return {job.id: TrainingRun(store.job_dir(job) / "run").checkpoint("final") for job in jobs}


def test_study_killed_mid_run_resumes_to_the_same_results(tmp_path, cache_dir):
    spec = _train_only()
    spec["finetune"]["epochs"] = spec["scratch"]["epochs"] = 4
    study = write_spec(tmp_path / "study.yaml", spec)
    env = {**os.environ, "TRANSFERSCOPE_CACHE": str(cache_dir)}
    command = [sys.executable, "-m", "transferscope.cli", "run", str(study), "--no-report"]
    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(killed.glob("jobs/finetune-*/run/resume.pt")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(killed.glob("jobs/finetune-*/run/resume.pt")), "the run never reached a fine-tuning epoch"
    assert not all((d / "done.json").is_file() for d in killed.glob("jobs/*")), "killed too late"
    subprocess.run(command + ["--out", str(killed)], env=env, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(command + ["--out", str(straight)], env=env, check=True, capture_output=True)
    resumed, uninterrupted = _final_weights(killed), _final_weights(straight)
    assert resumed.keys() == uninterrupted.keys()
    for job_id in resumed:
        for key, tensor in uninterrupted[job_id].items():
            assert torch.equal(resumed[job_id][key], tensor), (job_id, key)


def test_a_failed_job_does_not_stop_independent_jobs(tmp_path):
    broken = tmp_path / "broken-images"
    for split in ("train", "test"):
        for label in ("a", "b"):
            (broken / split / label).mkdir(parents=True)
            for i in range(20):
                Image.new("RGB", (16, 16), (10 * i, 80, 120)).save(broken / split / label / f"{i}.png")
    (broken / "train" / "a" / "corrupt.png").write_bytes(b"not an image")
    spec = _train_only()
    spec["targets"].append({"label": "folder", "data": {"kind": "folder", "name": "folder", "root": str(broken),
                                                        "image_size": 16}})
    study = write_spec(tmp_path / "study.yaml", spec)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 1, result.output
    _, store, jobs = open_study(out)
    states = {job.label: store.state(job) for job in jobs}
    assert states["P-T folder s0"] == "failed" and states["RI-T folder s0"] == "failed"
    assert states["P-T real s0"] == "done" and states["RI-T real s0"] == "done"
    assert "corrupt.png" in store.error(next(j for j in jobs if j.label == "RI-T folder s0"))
    status = CliRunner().invoke(app, ["status", str(out)])
    assert "failed" in status.output and "corrupt.png" in status.output
    assert (out / "report" / "index.html").is_file()


@pytest.mark.parametrize("executor", ["pool", "submitit-local"])
def test_other_executors_run_the_jobs(tmp_path, executor):
    spec = StudySpec.model_validate(_train_only())
    runner = PoolExecutor(2) if executor == "pool" else SlurmExecutor(SlurmSettings(cluster="local", gpus_per_job=0))
    counts = run_study(spec, tmp_path / "out", runner)
    assert counts == {"done": len(build_plan(spec))}
    if executor == "submitit-local":
        assert any((tmp_path / "out" / "slurm").iterdir())


def test_slurm_executor_without_slurm_says_so_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(_train_only()))
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path / "out"), "--executor", "slurm"])
    assert result.exit_code != 0
    assert "sbatch" in result.output and "cluster=local" in result.output
    assert not (tmp_path / "out" / "jobs").exists()


def test_report_on_a_partial_study_says_what_is_missing(tmp_path):
    spec = StudySpec.model_validate(tiny_spec())

    class PretrainOnly(LocalExecutor):
        def run(self, root, jobs, report):
            super().run(root, [job for job in jobs if job.kind == "pretrain"], report)

    run_study(spec, tmp_path, PretrainOnly(progress=False))
    build_report(tmp_path)
    html = (tmp_path / "report" / "index.html").read_text()
    assert 'class="error"' not in html
    assert html.count('class="missing"') >= 10
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
