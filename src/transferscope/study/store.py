"""The study folder: one content-addressed folder per job, and an SQLite index.

::

    DIR/jobs/<kind>-<hash>/job.json      what the job is (kind, label, config, deps)
                          /running.json  host and pid while it runs
                          /failed.json   the error of its last attempt
                          /done.json     completion marker, written last
                          /run/ or result.parquet   its outputs
    DIR/index.sqlite                     one row per job, for SQL queries

A job is complete exactly when ``done.json`` exists; everything else a job writes
goes first, atomically, so an interrupted job is simply run again (training jobs
resume from their last finished epoch).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import traceback
from contextlib import closing
from pathlib import Path
from typing import Iterable

from ..io import read_json, write_json
from .plan import Job

STATES = ("done", "running", "failed", "interrupted", "pending")


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def job_dir(self, job: Job | str) -> Path:
        return self.root / "jobs" / (job if isinstance(job, str) else job.id)

    def register(self, jobs: Iterable[Job]) -> None:
        """Write each job's description (once) so that any worker can run it by id."""
        for job in jobs:
            path = self.job_dir(job) / "job.json"
            if not path.is_file():
                write_json(path, job.to_json())

    def load(self, job_id: str) -> Job:
        return Job.from_json(read_json(self.job_dir(job_id) / "job.json"))

    def state(self, job: Job | str) -> str:
        folder = self.job_dir(job)
        if (folder / "done.json").is_file():
            return "done"
        running = folder / "running.json"
        if running.is_file():
            info = read_json(running)
            if info.get("host") != socket.gethostname() or _alive(info.get("pid", -1)):
                return "running"
            return "interrupted"
        if (folder / "failed.json").is_file():
            return "failed"
        return "pending"

    def error(self, job: Job | str) -> str | None:
        path = self.job_dir(job) / "failed.json"
        return read_json(path)["error"] if path.is_file() else None

    def mark_running(self, job: Job) -> None:
        (self.job_dir(job) / "failed.json").unlink(missing_ok=True)
        write_json(self.job_dir(job) / "running.json",
                   {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})

    def mark_done(self, job: Job, seconds: float) -> None:
        write_json(self.job_dir(job) / "done.json", {"seconds": seconds, "finished": time.time()})
        (self.job_dir(job) / "running.json").unlink(missing_ok=True)

    def mark_failed(self, job: Job, error: BaseException) -> None:
        write_json(self.job_dir(job) / "failed.json",
                   {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
                    "finished": time.time()})
        (self.job_dir(job) / "running.json").unlink(missing_ok=True)

    def seconds(self, job: Job) -> float | None:
        path = self.job_dir(job) / "done.json"
        return read_json(path)["seconds"] if path.is_file() else None

    def write_index(self, jobs: Iterable[Job]) -> Path:
        """(Re)write ``index.sqlite``: table ``jobs(id, kind, label, target, state, seconds, error, folder)``."""
        path = self.root / "index.sqlite"
        tmp = path.with_suffix(".sqlite.tmp")
        tmp.unlink(missing_ok=True)
        with closing(sqlite3.connect(tmp)) as db:
            db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT, label TEXT, target TEXT, "
                       "state TEXT, seconds REAL, error TEXT, folder TEXT)")
            db.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                (job.id, job.kind, job.label, job.target, self.state(job), self.seconds(job), self.error(job),
                 str(self.job_dir(job))) for job in jobs])
            db.commit()
        os.replace(tmp, path)
        return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
