"""What a user or a disk does to run folders loses no work and gives no silent wrong
number: a moved study folder or init file resumes; a damaged resume.pt trains again to
the same weights; damaged or missing checkpoints are errors naming the file; stale
temporary files go; a run that never finished an epoch restarts with a new config."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from transferscope.io import read_json
from transferscope.models.weights import load_weights, save_weights
from transferscope.study import StudySpec, build_plan, load_study, run_study
from transferscope.study.executors import LocalExecutor
from transferscope.study.jobs import execute_job
from transferscope.study.store import Store
from transferscope.train.run_dir import TrainingRun, checkpoint_path
from transferscope.train.trainer import Trainer, TrainingFailed


def train(config, out_dir, domain, **kwargs) -> TrainingRun:
    return Trainer(config, out_dir, progress=False, domain=domain).run(**kwargs)


def crash_after(stop: int):
    """An ``on_epoch_end`` that interrupts the run once epoch ``stop`` is written."""
    def crash(epoch: int) -> None:
        if epoch == stop:
            raise KeyboardInterrupt(f"stop after epoch {stop}")
    return crash


def interrupted(config, out_dir, domain, stop: int) -> Path:
    with pytest.raises(KeyboardInterrupt):
        train(config, out_dir, domain, on_epoch_end=crash_after(stop))
    return Path(out_dir)


def assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_domain, toy_train_config) -> TrainingRun:
    """An uninterrupted 3-epoch run with mixup and augmentation (every random source on)."""
    return train(toy_train_config(epochs=3, augment=True, mixup_alpha=0.4), tmp_path_factory.mktemp("reference"),
                 toy_domain)


# ---------------------------------------------------------------- resume.pt and temporaries


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_resume_file_trains_again_to_the_same_weights(tmp_path, reference, toy_domain, damage):
    out = interrupted(reference.config, tmp_path, toy_domain, stop=2)
    resume = out / "resume.pt"
    data = resume.read_bytes()
    resume.write_bytes(os.urandom(4096) if damage == "garbage" else data[: len(data) // 2])
    finished: list[int] = []
    with pytest.warns(UserWarning, match=f"cannot resume from {resume}.*training the run again from epoch 0"):
        run = train(reference.config, out, toy_domain, on_epoch_end=finished.append)
    assert finished == [1, 2, 3] and run.complete
    assert torch.load(resume, weights_only=True)["epoch"] == 3
    for epoch in ("final", "best", 1):
        assert_same_weights(run.checkpoint(epoch), reference.checkpoint(epoch))
    assert run.metrics["epoch"].tolist() == [0, 1, 2, 3]
    assert run.metrics["test_loss"].tolist() == reference.metrics["test_loss"].tolist()


def test_a_bug_while_resuming_propagates_and_keeps_the_resume_file(tmp_path, reference, toy_domain, monkeypatch):
    """Only damage (unreadable bytes, missing keys, mismatched shapes) restarts a run from
    epoch 0; any other error while resuming is a bug, raised instead of deleting resume.pt."""
    out = interrupted(reference.config, tmp_path, toy_domain, stop=1)

    def buggy_resume(*_args):
        raise AttributeError("a bug in the resume code")

    monkeypatch.setattr(Trainer, "_resume", buggy_resume)
    with pytest.raises(AttributeError, match="a bug in the resume code"):
        train(reference.config, out, toy_domain)
    assert (out / "resume.pt").is_file()


def test_stale_temporary_files_are_removed_at_the_next_run(tmp_path, reference, toy_domain):
    out = interrupted(reference.config, tmp_path, toy_domain, stop=1)
    stale = [out / ".metrics.parquet.k3j2x9.tmp", out / "checkpoints" / ".epoch_002.safetensors.a8b1q0.tmp",
             out / ".resume.pt.zz81kq.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    run = train(reference.config, out, toy_domain)
    assert run.complete
    assert not any(path.exists() for path in stale)
    assert not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------- damaged and missing checkpoints


def test_damaged_checkpoint_error_names_the_file_and_the_fix(tmp_path, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.path, run_dir)
    path = checkpoint_path(run_dir, 1)
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], data[:4], b""):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=f"{path} is damaged .*delete it and rerun the job that wrote it"):
            load_weights(path)
        with pytest.raises(ValueError, match=f"{path} is damaged"):
            TrainingRun(run_dir).checkpoint(1)


def test_final_is_the_configured_last_epoch_and_a_missing_checkpoint_is_an_error(tmp_path, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.path, run_dir)
    run = TrainingRun(run_dir)
    last = checkpoint_path(run_dir, 3)
    assert_same_weights(run.checkpoint("final"), load_weights(last))
    last.unlink()
    assert run.epochs() == [0, 1, 2, 3]  # what the run saved, not what is left on disk
    for epoch in ("final", 3):
        with pytest.raises(FileNotFoundError, match=f"checkpoint {last} is missing from a complete run; "
                                                     f"delete {run_dir} .* and train it again"):
            run.checkpoint(epoch)
    checkpoint_path(run_dir, 0).unlink()
    with pytest.raises(FileNotFoundError, match="epoch_000.safetensors is missing"):
        run.checkpoint("init")


# ---------------------------------------------------------------- a run's identity


def test_resume_with_the_init_file_moved_and_spelled_relatively(tmp_path, monkeypatch, toy_domain,
                                                                toy_domain_factory, toy_train_config):
    source = train(toy_train_config(epochs=1, seed=5), tmp_path / "P", toy_domain)
    target = toy_domain_factory(num_classes=2, seed=3)
    first = tmp_path / "first" / "P.safetensors"
    save_weights(source.checkpoint("final"), first)
    config = toy_train_config(epochs=3, augment=True, init=str(first))
    out = interrupted(config, tmp_path / "P-T", target, stop=1)
    moved = tmp_path / "moved"
    shutil.move(first.parent, moved)
    monkeypatch.chdir(tmp_path)
    respelled = config.model_copy(update={"init": "moved/P.safetensors"})
    finished: list[int] = []
    run = train(respelled, "P-T", target, on_epoch_end=finished.append)
    assert finished == [2, 3]  # resumed, not started again
    assert run.config.init == "moved/P.safetensors"  # config.json records the init as spelled now
    straight = train(respelled, tmp_path / "straight", target)
    for epoch in ("final", "best", 0):
        assert_same_weights(run.checkpoint(epoch), straight.checkpoint(epoch))
    assert read_json(out / "status.json")["digest"] == read_json(tmp_path / "straight" / "status.json")["digest"]


def test_other_init_weights_at_the_same_path_are_another_run(tmp_path, toy_domain, toy_train_config):
    init = tmp_path / "P.safetensors"
    source = train(toy_train_config(epochs=1, seed=5), tmp_path / "P", toy_domain)
    save_weights(source.checkpoint(0), init)
    config = toy_train_config(epochs=2, init=str(init))
    out = interrupted(config, tmp_path / "P-T", toy_domain, stop=1)
    save_weights(source.checkpoint(1), init)  # the pre-trained file was replaced
    with pytest.raises(ValueError, match="holds a run with a different config; .*content of the init weights"):
        train(config, out, toy_domain)


def test_a_run_that_never_finished_an_epoch_restarts_with_a_new_config(tmp_path, reference, toy_domain):
    broken = reference.config.model_copy(update={"lr": 1e30})
    with pytest.raises(TrainingFailed, match="at epoch 1"):
        train(broken, tmp_path, toy_domain)
    assert read_json(tmp_path / "status.json")["state"] == "failed" and not (tmp_path / "resume.pt").exists()
    run = train(reference.config, tmp_path, toy_domain)
    assert run.complete and run.config == reference.config
    assert_same_weights(run.checkpoint("final"), reference.checkpoint("final"))
    assert run.metrics["test_loss"].tolist() == reference.metrics["test_loss"].tolist()


def test_a_folder_with_finished_epochs_refuses_another_config(tmp_path, reference, toy_domain):
    out = interrupted(reference.config, tmp_path, toy_domain, stop=1)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=f"{out} holds a run with a different config; use another out_dir or "
                                         "delete the folder to start over \\(that run has finished epochs"):
        train(reference.config.model_copy(update={"lr": 0.01}), out, toy_domain)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


# ---------------------------------------------------------------- the study layer

DISABLED = {name: {"enabled": False} for name in
            ("cka", "mistakes", "interpolation", "basin", "rewind", "criticality", "spectrum")}
STUDY = {
    "name": "robust",
    "model": {"arch": "small_resnet", "width": 4},
    "source": {"data": {"kind": "synthetic", "name": "source", "image_size": 16, "n_train": 64, "n_test": 32,
                        "num_classes": 4},
               "recipe": {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32}},
    "targets": [{"label": "real", "data": {"kind": "synthetic", "name": "real", "image_size": 16, "n_train": 64,
                                           "n_test": 32}}],
    "finetune": {"epochs": 3, "lr": 0.01, "batch_size": 32, "clean_train_examples": 32},
    "scratch": {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32},
    "seeds": [0],
    "analyses": DISABLED,
}


def run_killed_after_pt_epoch_two(study: Path, out: Path) -> None:
    """Run the study, and SIGKILL this (forked) process once the P-T run has written its
    epoch 2: a kill at an epoch boundary, with the parent's imports already done."""
    plain_run = Trainer.run

    def run(self, on_epoch_end=None):  # noqa: ARG001 - Trainer.run's signature; the kill replaces the callback
        def kill(epoch: int) -> None:
            if self.config.init is not None and epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return plain_run(self, on_epoch_end=kill)

    Trainer.run = run
    run_study(load_study(study), out, LocalExecutor(progress=False))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "synthetic-cache"


@pytest.fixture(autouse=True)
def synthetic_cache(cache, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(cache))


@pytest.fixture(scope="module")
def straight_study(tmp_path_factory, cache) -> Path:
    """The study run without interruption (training and a distance analysis)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(cache))
        folder = tmp_path_factory.mktemp("straight")
        spec = StudySpec.model_validate(STUDY)
        assert run_study(spec, folder, LocalExecutor(progress=False)) == {"done": len(build_plan(spec))}
    return folder


def training_jobs(spec: StudySpec) -> dict[str, str]:
    return {job.label: job.id for job in build_plan(spec) if job.kind in ("pretrain", "finetune")}


def test_study_killed_moved_and_resumed_by_another_spelling_ends_the_same(tmp_path, monkeypatch, straight_study):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    spec = StudySpec.model_validate(STUDY)
    killed = tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(target=run_killed_after_pt_epoch_two, args=(study, killed))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    pt = Path("jobs") / training_jobs(spec)["P-T real s0"]
    assert (killed / pt / "run" / "resume.pt").is_file() and not (killed / pt / "done.json").exists()
    assert read_json(killed / pt / "run" / "config.json")["init"].startswith(str(killed))
    shutil.move(killed, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    counts = run_study(spec, Path("moved"), LocalExecutor(progress=False))
    assert counts == {"done": len(build_plan(spec))}, Store("moved").error(pt.name)
    assert read_json(Path("moved") / pt / "run" / "config.json")["init"].startswith("moved/jobs/")
    for job_id in training_jobs(spec).values():
        resumed = TrainingRun(Path("moved") / "jobs" / job_id / "run")
        straight = TrainingRun(straight_study / "jobs" / job_id / "run")
        assert_same_weights(resumed.checkpoint("final"), straight.checkpoint("final"))
    distance = next(job.id for job in build_plan(spec) if job.kind == "distance")
    assert (Path("moved") / "jobs" / distance / "result.parquet").read_bytes() == \
        (straight_study / "jobs" / distance / "result.parquet").read_bytes()


def test_missing_final_checkpoint_fails_the_analyses_that_read_it(tmp_path, straight_study):
    folder = tmp_path / "study"
    shutil.copytree(straight_study, folder)
    spec = StudySpec.model_validate(STUDY)
    store = Store(folder)
    final = checkpoint_path(store.job_dir(training_jobs(spec)["P-T real s0"]) / "run", 3)
    final.unlink()
    distance = next(job for job in build_plan(spec) if job.kind == "distance")
    (store.job_dir(distance) / "done.json").unlink()
    assert execute_job(folder, distance.id) == "failed"
    assert store.state(distance) == "failed"
    assert f"checkpoint {final} is missing from a complete run" in store.error(distance)
