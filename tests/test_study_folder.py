"""The study folder under concurrent and hostile conditions: one `run` or `report` at a
time (a lock naming its holder), pool workers that die with their `run`, an index
written atomically, stale temporaries removed, damaged job descriptions rebuilt, job
failures recorded even on a full disk, and files that honour the umask."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from test_study import _train_only, tiny_spec, write_spec
from typer.testing import CliRunner

from transferscope.cli import app
from transferscope.io import json_text, read_json, write_json, write_table, write_text
from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study.jobs import execute_job
from transferscope.study.store import LOCK_FILE, Store, StudyBusy


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "synthetic-cache"
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(folder))
    return folder


class NoJobs:
    """An executor that runs nothing: `run_study` then only sets the folder up."""

    def run(self, root, jobs, report) -> None:
        pass


def long_study(tmp_path: Path) -> Path:
    """A study whose pre-training runs for minutes: something to kill mid-way."""
    spec = _train_only()
    spec["source"]["recipe"]["epochs"] = 500
    return write_spec(tmp_path / "study.yaml", spec)


def start_run(study: Path, out: Path, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "transferscope.cli", "run", str(study), "--out", str(out), "--no-report", *options]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll ``condition`` until it holds (fails if ``process`` ends first or nothing happens)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"never saw {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: it no longer runs)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
    return found


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------- the lock and pool workers
def test_a_busy_study_refuses_a_second_run_and_a_killed_pool_run_leaves_nothing_running(tmp_path):
    """While a `run --executor pool` works, a second `run` or a `report` exits at once with
    one line naming it; SIGKILL of that run ends its workers and frees the folder."""
    study, out = long_study(tmp_path), tmp_path / "out"
    run = start_run(study, out, "--executor", "pool", "--workers", "2")
    workers = []
    try:
        lock = out / LOCK_FILE
        wait_for(lambda: lock.is_file() and f'"pid": {run.pid}' in lock.read_text(), run, "the lock taken")
        for args in (["run", str(study), "--out", str(out)], ["report", str(out)]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"pid {run.pid} on host {socket.gethostname()}" in lines[0], result.stderr
        wait_for(lambda: list(out.glob("jobs/pretrain-*/running.json")), run, "a worker start the pre-training")
        workers = children(run.pid)
        assert read_json(next(out.glob("jobs/pretrain-*/running.json")))["pid"] in workers
        run.send_signal(signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], "pool workers outlived their run"
    finally:
        run.kill()
        kill_all(workers)
    assert not list(out.glob("jobs/*/done.json")), "nothing finished: the second run executed no job"
    with Store(out).lock():  # a killed holder leaves the folder free
        pass


def test_the_lock_is_exclusive_and_released(tmp_path):
    store = Store(tmp_path)
    with store.lock():
        with pytest.raises(StudyBusy, match=f"pid {os.getpid()} on host"), Store(tmp_path).lock():
            pass
    with store.lock():
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""  # no stale holder recorded once released


def test_an_index_write_during_another_does_not_collide(tmp_path):
    spec = StudySpec.model_validate(_train_only())
    run_study(spec, tmp_path, NoJobs())
    store, jobs = Store(tmp_path), build_plan(spec)

    class WriteMeanwhile:
        """The job list of the outer write; listing it writes the index once more."""

        def __iter__(self):
            store.write_index(jobs[:1])
            return iter(jobs)

    store.write_index(WriteMeanwhile())
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == len(jobs)
    assert not list(tmp_path.glob("*.tmp*"))


def test_without_prctl_a_worker_watches_its_parent():
    """The portable fallback (any OS but Linux): a thread ends the worker once its parent is gone."""
    worker = textwrap.dedent("""
        import os, sys, time
        from transferscope.study import executors
        parent = os.getppid()
        sys.platform = "darwin"  # take the path of systems without prctl
        executors._exit_with_parent(parent)
        print(os.getpid(), flush=True)
        time.sleep(120)
    """)
    middle = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        pid = int(middle.stdout.readline())
        assert alive(pid)
        middle.kill()
        middle.wait()
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), "the worker outlived its parent"
    finally:
        middle.kill()
        kill_all([pid] if pid else [])


# ------------------------------------------------------------ folder upkeep and failures
def test_run_removes_stale_temporaries_and_rebuilds_damaged_job_descriptions_and_index(tmp_path):
    spec = StudySpec.model_validate(_train_only())
    run_study(spec, tmp_path, NoJobs())
    jobs = build_plan(spec)
    store = Store(tmp_path)
    first, busy = store.job_dir(jobs[0]), store.job_dir(jobs[1])
    stale = [tmp_path / ".index.sqlite.1a2b3c4d.tmp", tmp_path / ".index.sqlite.1a2b3c4d.tmp-journal",
             tmp_path / "index.sqlite.tmp", tmp_path / "results" / ".runs.parquet.1a2b3c4d.tmp",
             first / ".running.json.1a2b3c4d.tmp", first / "run" / "checkpoints" / ".epoch_001.safetensors.1a.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    write_json(busy / "running.json", {"host": "another-node", "pid": 1, "started": 0})  # a SLURM task elsewhere
    in_use = busy / ".failed.json.1a2b3c4d.tmp"
    in_use.write_bytes(b"being written")
    (first / "job.json").write_text('{"id": "trunc')
    (tmp_path / "index.sqlite").write_bytes(b"not a database")
    run_study(spec, tmp_path, NoJobs())
    with sqlite3.connect(tmp_path / "index.sqlite") as db:  # the index is output only: rewritten whole
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == len(jobs)
    assert [path for path in stale if path.exists()] == []
    assert in_use.exists(), "a job running elsewhere keeps its temporaries"
    assert (first / "job.json").read_text() == json_text(jobs[0].to_json())
    assert store.load(jobs[0].id) == jobs[0]


def test_a_job_whose_failure_cannot_be_recorded_still_returns_failed(tmp_path, monkeypatch, capsys):
    spec = StudySpec.model_validate(_train_only())
    run_study(spec, tmp_path, NoJobs())
    job = build_plan(spec)[0]

    def disk_full(path, _obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("transferscope.study.store.write_json", disk_full)
    assert execute_job(tmp_path, job.id) == "failed"
    assert execute_job(tmp_path, "pretrain-000000000000") == "failed"  # no such job: an error, not an exception
    stderr = capsys.readouterr().err
    assert f"job {job.id} failed" in stderr and "No space left on device" in stderr


# ------------------------------------------------------------------- permissions
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"x": 1})
        write_table(pd.DataFrame({"x": [1]}), tmp_path / "c")
        spec = StudySpec.model_validate(tiny_spec())
        run_study(spec, tmp_path / "study", NoJobs())
    finally:
        os.umask(previous)
    written = [tmp_path / name for name in ("a.txt", "b.json", "c.parquet", "c.csv")]
    written += [tmp_path / "study" / name for name in ("study.yaml", "index.sqlite", LOCK_FILE)]
    written += list((tmp_path / "study").glob("jobs/*/job.json"))[:3]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == \
        {path.name: oct(0o666 & ~umask) for path in written}
