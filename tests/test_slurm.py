"""The SLURM executor: resources sized to the partition, explicit settings that win, a
refused request as one line, dead tasks recorded with SLURM's reason, and ``status``
asking SLURM about tasks on other hosts. The last tests run on a real single-node
cluster (``.ci/start-slurm.sh``, as root): they skip where there is none, and fail where
``TRANSFERSCOPE_REQUIRE_SLURM=1`` (set by ``.ci/run``) says there must be one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_study import _final_weights, _train_only
from typer.testing import CliRunner

from transferscope.cli import app
from transferscope.io import write_json
from transferscope.study import StudySpec, build_plan
from transferscope.study import slurm as slurm_module
from transferscope.study.executors import SlurmExecutor, SlurmSettings
from transferscope.study.runner import open_study
from transferscope.study.slurm import Node, Partition, find_partition, parse_sinfo, refusal, request
from transferscope.study.store import Store
from transferscope.train import TrainingRun
from transferscope.train.run_dir import checkpoint_path

SINFO = """debug*|cpu1|2|24105|(null)|infinite
gpu|g1|32|256000|gpu:a100:4(S:0-1),shard:8|2-00:00:00
gpu|g2|16|128000|gpu:2|2-00:00:00
"""
CONSOLE_NOISE = ("sacct", "accounting storage", "Bypassing", "submitit", "Traceback")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "synthetic-cache"
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(folder))
    return folder


# ------------------------------------------------------------ without a cluster
def test_sinfo_gives_the_default_partition_its_gpus_and_time_limit():
    debug, gpu = parse_sinfo(SINFO, None), parse_sinfo(SINFO, "gpu")
    assert debug == Partition("debug", (Node("cpu1", 2, 24105, 0),), None)
    assert [node.gpus for node in gpu.nodes] == [4, 2] and gpu.max_minutes == 2 * 24 * 60
    with pytest.raises(ValueError, match="partition 'a100' does not exist; choose one of: debug, gpu"):
        parse_sinfo(SINFO, "a100")
    assert [slurm_module.parse_minutes(t) for t in ("30", "1:30:00", "45:00", "1-02:00:00", "UNLIMITED")] == \
        [30, 90, 45, 26 * 60, None]


def test_default_requests_fit_the_partition_and_the_kind_of_job():
    debug, gpu = parse_sinfo(SINFO, None), parse_sinfo(SINFO, "gpu")
    training, analysis = request(debug, "training"), request(debug, "analysis")
    assert (training.gpus, training.cpus, training.mem_gb, training.minutes) == (0, 2, 23, 240)  # capped at the node
    assert (analysis.gpus, analysis.cpus, analysis.mem_gb) == (0, 2, 16)
    training, analysis = request(gpu, "training"), request(gpu, "analysis")
    assert (training.gpus, training.cpus, training.mem_gb) == (1, 8, 32)
    assert (analysis.gpus, analysis.cpus, analysis.mem_gb) == (1, 4, 16)
    short = Partition("short", gpu.nodes, max_minutes=30)
    assert request(short, "training").minutes == 30
    assert [slurm_module.profile(kind) for kind in ("pretrain", "finetune", "cka")] == ["training", "training",
                                                                                       "analysis"]


def test_explicit_settings_win_and_impossible_ones_name_the_setting():
    debug, gpu = parse_sinfo(SINFO, None), parse_sinfo(SINFO, "gpu")
    explicit = request(gpu, "training", gpus=0, cpus=1, mem_gb=4, minutes=600)
    assert (explicit.gpus, explicit.cpus, explicit.mem_gb, explicit.minutes) == (0, 1, 4, 600)
    mixed = Partition("mixed", (Node("big", 64, 512000, 0), Node("small-gpu", 4, 20000, 1)))
    capped = request(mixed, "training")  # at the node that has the GPU
    assert (capped.gpus, capped.cpus, capped.mem_gb) == (1, 4, 19)
    impossible = {"gpus_per_job=1: partition debug has no GPUs": dict(gpus=1),
                  "cpus_per_job=64: .* at most 2 CPUs; set cpus_per_job=2 or less": dict(cpus=64),
                  "mem_gb=100000: .* at most 23 GB": dict(mem_gb=100000),
                  "time_minutes=5000: .* at most 2880 minutes": dict(minutes=5000, partition=gpu),
                  "gpus_per_job=8: partition gpu has at most 4 GPUs": dict(gpus=8, partition=gpu)}
    for message, settings in impossible.items():
        with pytest.raises(ValueError, match=message):
            request(settings.pop("partition", debug), "training", **settings)


def test_a_refusal_names_the_setting_to_change():
    cases = {"sbatch: error: Invalid generic resource (gres) specification": "gpus_per_job",
             "sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: "
             "Requested node configuration is not available": "mem_gb",
             "sbatch: error: Batch job submission failed: Invalid feature specification": "extra.constraint"}
    for said, setting in cases.items():
        message = str(refusal(said))
        assert "\n" not in message and f"change --slurm {setting}" in message and "sbatch: error" not in message


@pytest.mark.parametrize("alive, state", [(True, "running"), (False, "interrupted"), (None, "running")])
def test_status_asks_slurm_about_a_task_on_another_host(tmp_path, monkeypatch, alive, state):
    asked = []
    monkeypatch.setattr(slurm_module, "task_alive", lambda task: asked.append(task) or alive)
    write_json(tmp_path / "jobs" / "a" / "running.json", {"host": "node-7", "pid": 1, "slurm_task": "12_3"})
    write_json(tmp_path / "jobs" / "b" / "running.json", {"host": "node-7", "pid": 1})  # not a SLURM task
    assert (Store(tmp_path).state("a"), Store(tmp_path).state("b")) == (state, "running")
    assert asked == ["12_3"]


def test_running_json_names_the_slurm_task(tmp_path, monkeypatch):
    spec = StudySpec.model_validate(_train_only())
    job = build_plan(spec)[0]
    Store(tmp_path).register([job])
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    Store(tmp_path).mark_running(job)
    assert json.loads((Store(tmp_path).job_dir(job) / "running.json").read_text())["slurm_task"] == "41_2"


def test_a_task_killed_before_recording_anything_is_failed_with_the_reason(tmp_path):
    """submitit's local cluster: the task's process is killed while its job runs."""
    spec = StudySpec.model_validate(_train_only())
    pretrain = build_plan(spec)[0]
    store = Store(tmp_path)
    store.register(build_plan(spec))
    settled = {}
    executor = SlurmExecutor(SlurmSettings(cluster="local"), echo=lambda _line: None)
    runner = threading.Thread(target=executor.run, args=(tmp_path, [pretrain], settled.__setitem__))
    runner.start()
    running = store.job_dir(pretrain) / "running.json"
    deadline = time.time() + 240
    while time.time() < deadline and not running.is_file():
        time.sleep(0.02)
    os.kill(json.loads(running.read_text())["pid"], signal.SIGKILL)
    runner.join(timeout=120)
    assert settled == {pretrain.id: "failed"}
    assert store.state(pretrain) == "failed"
    assert "ended before its job did: no result, submitit state" in store.error(pretrain)


# ------------------------------------------------------------ on a real cluster
def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    states = answer.stdout.split()
    if answer.returncode != 0 or not {"idle", "mixed", "allocated", "completing"} & set(states):
        return f"the cluster does not answer with a node up (sinfo: {answer.stderr.strip() or states})"
    return None


@pytest.fixture(scope="module")
def cluster() -> Partition:
    problem = _cluster_problem()
    if problem is not None:
        message = f"no SLURM cluster here ({problem}); start one with `.ci/start-slurm.sh` (as root)"
        if os.environ.get("TRANSFERSCOPE_REQUIRE_SLURM") == "1":
            pytest.fail(f"{message}; TRANSFERSCOPE_REQUIRE_SLURM=1 says there must be one")
        pytest.skip(message)
    return find_partition(None)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferscope.cli", *args], capture_output=True, text=True,
                          timeout=900)


def _wait_for(paths, what: str, timeout: float = 300) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(paths())
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_study_with_default_resources_survives_a_cancelled_task(cluster, tmp_path):
    spec = _train_only()
    spec["source"]["recipe"]["epochs"] = 4  # long enough to be cancelled while it trains
    study, out = tmp_path / "study.yaml", tmp_path / "out"
    study.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "transferscope.cli", "run", str(study), "--out", str(out), "--executor", "slurm",
               "--no-report"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running = _wait_for(lambda: out.glob("jobs/pretrain-*/running.json"), "pre-training to start")
    info = json.loads(running.read_text())
    task = info["slurm_task"]
    # submitit's task ignores SIGTERM, so SLURM kills it only after KillWait (5 s), time enough for the
    # tiny run to finish: hold it still, cancel, and kill it as SLURM then would.
    os.kill(info["pid"], signal.SIGSTOP)
    subprocess.run(["scancel", task], check=True)
    os.kill(info["pid"], signal.SIGKILL)
    console, _ = first.communicate(timeout=600)
    assert first.returncode == 1, console  # a job failed
    assert f"SLURM job {task.split('_')[0]}:" in console and "no GPU" in console, console
    assert not [noise for noise in CONSOLE_NOISE if noise.lower() in console.lower()], console
    _, store, jobs = open_study(out)
    states = {job.label: store.state(job) for job in jobs}
    assert states == {"P (source)": "failed", "P-T real s0": "pending", "RI-T real s0": "done"}, states
    error = store.error(next(job for job in jobs if job.kind == "pretrain"))
    assert f"task {task} ended before its job did" in error and "CANCELLED" in error
    status = CliRunner().invoke(app, ["status", str(out)])
    assert status.exit_code == 0 and "CANCELLED" in status.output, status.output
    scripts = "\n".join(path.read_text() for path in out.glob("slurm/*/*_submission.sh"))
    assert "--partition=debug" in scripts and "gpu" not in scripts.lower() and "gres" not in scripts
    node = max(cluster.nodes, key=lambda node: node.cpus)
    assert f"--cpus-per-task={min(8, node.cpus)}" in scripts
    assert task in (out / "logs" / "slurm.log").read_text()

    again = _cli("run", str(study), "--out", str(out), "--executor", "slurm", "--no-report")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "study tiny: 3 done" in again.stdout and "1/3 jobs already complete" in again.stdout
    assert not [noise for noise in CONSOLE_NOISE if noise.lower() in (again.stdout + again.stderr).lower()]


def _task_state(task: str) -> str:
    return subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", task, "-o", "%T"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.usefixtures("cluster")
def test_a_requeued_task_resumes_its_run_to_the_same_weights(tmp_path):
    """``scontrol requeue`` of a pre-training task after its first epoch; its second
    attempt continues from resume.pt (the epochs before it are not trained again) and
    the study ends with the weights of an uninterrupted local run. The task is stopped
    from the moment it is seen at an epoch, and killed right after the requeue (SLURM
    would kill it KillWait seconds later, after letting it train on), so the first
    attempt never finishes the run however fast it trains."""
    epochs = 8
    spec = _train_only()
    spec["source"]["recipe"]["epochs"] = epochs
    study, out = tmp_path / "study.yaml", tmp_path / "out"
    study.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "transferscope.cli", "run", str(study), "--out", str(out), "--executor", "slurm",
               "--no-report"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    resume = _wait_for(lambda: out.glob("jobs/pretrain-*/run/resume.pt"), "pre-training's first epoch")
    run = resume.parent
    running = json.loads((run.parent / "running.json").read_text())
    task = running["slurm_task"]
    os.kill(running["pid"], signal.SIGSTOP)
    subprocess.run(["scontrol", "requeue", task], check=True)
    os.kill(running["pid"], signal.SIGKILL)
    _wait_for(lambda: [1] if _task_state(task) == "PENDING" else [], f"task {task} to be requeued", timeout=60)
    # between the two attempts: what the first one left
    reached = torch.load(resume, weights_only=True)["epoch"]
    assert 1 <= reached < epochs and not TrainingRun(run).complete, f"requeued too late (epoch {reached})"
    before = TrainingRun(run).metrics.query("epoch <= @reached").reset_index(drop=True)
    epoch_zero = checkpoint_path(run, 0).stat()
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True)  # not BeginTime + 2 min
    console, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and "study tiny: 3 done" in console, console
    assert not [noise for noise in CONSOLE_NOISE if noise.lower() in console.lower()], console

    after = TrainingRun(run).metrics
    assert list(after["epoch"]) == list(range(epochs + 1))
    pd.testing.assert_frame_equal(after.query("epoch <= @reached").reset_index(drop=True), before)  # not retrained
    assert (checkpoint_path(run, 0).stat().st_ino, checkpoint_path(run, 0).stat().st_mtime_ns) == \
        (epoch_zero.st_ino, epoch_zero.st_mtime_ns)
    local = _cli("run", str(study), "--out", str(tmp_path / "local"), "--executor", "local", "--no-report")
    assert local.returncode == 0, local.stdout + local.stderr
    resumed, uninterrupted = _final_weights(out), _final_weights(tmp_path / "local")
    assert resumed.keys() == uninterrupted.keys()
    for job_id, weights in uninterrupted.items():
        for key, tensor in weights.items():
            assert torch.equal(resumed[job_id][key], tensor), (job_id, key)


@pytest.mark.parametrize("setting, names", [("mem_gb=100000", "mem_gb"), ("extra.constraint=no-such-feature",
                                                                           "extra.constraint")])
@pytest.mark.usefixtures("cluster")
def test_a_request_the_cluster_cannot_meet_is_one_line(tmp_path, setting, names):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(_train_only()))
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path / "out"), "--executor", "slurm",
                                      "--slurm", setting])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and names in lines[0] and "Traceback" not in result.output, result.output
    assert not list((tmp_path / "out").glob("jobs/*/running.json"))


@pytest.mark.usefixtures("cluster")
def test_status_of_a_task_elsewhere_follows_its_slurm_state(tmp_path):
    job = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=100M", "--wrap", "sleep 120"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        write_json(tmp_path / "jobs" / "a" / "running.json", {"host": "another-node", "pid": 1, "slurm_task": job})
        assert Store(tmp_path).state("a") == "running"
    finally:
        subprocess.run(["scancel", job], check=True)
    deadline = time.time() + 60
    while time.time() < deadline and Store(tmp_path).state("a") == "running":
        time.sleep(0.2)
    assert Store(tmp_path).state("a") == "interrupted"
