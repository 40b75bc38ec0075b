"""The study folder: one content-addressed folder per job, and an SQLite index.

::

    DIR/jobs/<kind>-<hash>/job.json      what the job is (kind, label, config, deps)
                          /running.json  host and pid (and SLURM task) while it runs
                          /failed.json   the error of its last attempt
                          /done.json     completion marker, written last: wall and CPU seconds,
                                         in all and per stage, as the job's process measured them
                          /run/ or result.parquet   its outputs
    DIR/index.sqlite                     one row per job, for SQL queries
    DIR/report/times.json                the last report build's seconds, per part and section
    DIR/.lock                            held (flock) by the `run` or `report` working on DIR

A job is complete exactly when ``done.json`` exists; everything else a job writes
goes first, atomically, so an interrupted job is simply run again (training jobs
resume from their last finished epoch).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import sys
import time
import traceback
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..io import atomic_path, json_text, naming_errors, read_json, remove_stale_temporaries, write_json
from . import slurm
from .job import Job

STATES = ("done", "running", "failed", "interrupted", "pending")
LOCK_FILE = ".lock"
REPORT_TIMES = Path("report") / "times.json"


class StudyBusy(Exception):
    """Another process holds the study folder (see :meth:`Store.lock`)."""


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def job_dir(self, job: Job | str) -> Path:
        return self.root / "jobs" / (job if isinstance(job, str) else job.id)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the study folder for this process (``run`` and ``report`` do, so that two
        never work on one folder at once); :class:`StudyBusy` when another process holds
        it. An ``flock``: the kernel drops it when its holder dies, so a killed run never
        leaves it taken. Job processes (pool workers, SLURM tasks) do not take it: they
        write only their own job folder."""
        path = self.root / LOCK_FILE
        with naming_errors(path):
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StudyBusy(f"study folder {self.root} is in use by {_holder(path)}; wait until it finishes, "
                                "or stop that process") from None
            with naming_errors(path):
                os.ftruncate(descriptor, 0)
                os.write(descriptor, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
            try:
                yield
            finally:
                os.ftruncate(descriptor, 0)
        finally:
            os.close(descriptor)

    def remove_stale_temporaries(self) -> None:
        """Delete what writes killed mid-way left behind: temporaries in the folder itself,
        in results/ and report/, and in every job folder whose job is not running now
        (elsewhere, e.g. a SLURM task). Call only while holding :meth:`lock`."""
        for pattern in ("*.tmp", ".*.tmp-journal"):  # *.tmp: also index.sqlite.tmp of older versions
            for path in self.root.glob(pattern):
                path.unlink(missing_ok=True)
        for folder in (self.root / "results", self.root / "report"):
            remove_stale_temporaries(folder)
        for folder in self.root.glob("jobs/*"):
            if self.state(folder.name) != "running":
                remove_stale_temporaries(folder)

    def register(self, jobs: Iterable[Job]) -> None:
        """Write each job's description so that any worker can run it by id (again where
        the file is damaged or differs: the plan is the truth)."""
        for job in jobs:
            path = self.job_dir(job) / "job.json"
            text = json_text(job.to_json())
            if not path.is_file() or path.read_text(errors="replace") != text:
                write_json(path, job.to_json())

    def load(self, job_id: str) -> Job:
        return Job.from_json(read_json(self.job_dir(job_id) / "job.json"))

    def state(self, job: Job | str) -> str:
        folder = self.job_dir(job)
        if (folder / "done.json").is_file():
            return "done"
        running = folder / "running.json"
        if running.is_file():
            return "running" if _running(_read_marker(running)) else "interrupted"
        if (folder / "failed.json").is_file():
            return "failed"
        return "pending"

    def error(self, job: Job | str) -> str | None:
        path = self.job_dir(job) / "failed.json"
        return _read_marker(path).get("error") if path.is_file() else None

    def mark_running(self, job: Job) -> None:
        (self.job_dir(job) / "failed.json").unlink(missing_ok=True)
        task = slurm.current_task()
        write_json(self.job_dir(job) / "running.json", {"host": socket.gethostname(), "pid": os.getpid(),
                                                        "started": time.time(), **({"slurm_task": task} if task else {})})

    def mark_done(self, job: Job, times: dict) -> None:
        """Mark ``job`` complete, recording ``times``: its wall ``seconds`` and the rest of
        :meth:`transferscope.timing.Stages.record`."""
        write_json(self.job_dir(job) / "done.json", {**times, "finished": time.time()})
        (self.job_dir(job) / "running.json").unlink(missing_ok=True)

    def mark_failed(self, job: Job | str, error: BaseException) -> None:
        """Record why a job failed in its failed.json; where even that cannot be written
        (a full disk), say it on stderr instead: this never raises."""
        folder = self.job_dir(job)
        try:
            write_json(folder / "failed.json", {"error": f"{type(error).__name__}: {error}",
                                                "traceback": "".join(traceback.format_exception(error)),
                                                "finished": time.time()})
            (folder / "running.json").unlink(missing_ok=True)
        except OSError as unwritten:
            print(f"job {folder.name} failed ({type(error).__name__}: {error}), and failed.json could not record it: "
                  f"{unwritten}", file=sys.stderr)

    def seconds(self, job: Job) -> float | None:
        path = self.job_dir(job) / "done.json"
        return _read_marker(path).get("seconds") if path.is_file() else None

    def done_record(self, job: Job) -> dict:
        """What a done job recorded in its done.json (its times); {} for a job not done."""
        path = self.job_dir(job) / "done.json"
        return _read_marker(path) if path.is_file() else {}

    def write_index(self, jobs: Iterable[Job]) -> Path:
        """(Re)write ``index.sqlite``: table ``jobs(id, kind, label, target, state, seconds, error, folder)``."""
        path = self.root / "index.sqlite"
        with atomic_path(path) as tmp:
            try:
                with closing(sqlite3.connect(tmp)) as db:
                    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT, label TEXT, target TEXT, "
                               "state TEXT, seconds REAL, error TEXT, folder TEXT)")
                    db.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                        (job.id, job.kind, job.label, job.target, self.state(job), self.seconds(job), self.error(job),
                         str(self.job_dir(job))) for job in jobs])
                    db.commit()
            except sqlite3.Error as error:
                raise OSError(None, f"SQLite could not write the index ({error})", str(path)) from error
        return path


def _read_marker(path: Path) -> dict:
    """A job's running/done/failed.json; a damaged one is an error that says what to do."""
    try:
        info = read_json(path)
        if not isinstance(info, dict):
            raise ValueError(f"{path} is damaged (not a JSON object)")
    except ValueError as error:
        raise ValueError(f"{error}; delete it and rerun `transferscope run`, which redoes or resumes that job") from None
    return info


def _holder(path: Path) -> str:
    """Who holds the lock file ``path``, as its holder recorded it."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):  # holder not recorded yet
        return "another process"


def _running(info: dict) -> bool:
    """Whether the process a running.json names still runs: its pid on this host; the
    SLURM task's state elsewhere (running when neither can tell)."""
    if info.get("host") == socket.gethostname():
        return _alive(info.get("pid", -1))
    task = info.get("slurm_task")
    return task is None or slurm.task_alive(task) is not False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
