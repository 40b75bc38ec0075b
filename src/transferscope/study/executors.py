"""Executors: run the incomplete jobs of a study in-process, in a process pool (one GPU
per worker where there are GPUs), or on a SLURM cluster through submitit (job arrays,
a cap on concurrent tasks, requeue on preemption and timeout).

A job starts once every job it depends on is done; one whose dependency failed is
skipped (it stays pending). Every executor calls the same
:func:`transferscope.study.jobs.execute_job` with the study folder and a job id; jobs
read their description from the folder, so nothing but two strings crosses a process
or machine boundary."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Literal

import submitit
import torch
from pydantic import Field

from ..config import Settings
from .jobs import execute_job
from .plan import Job, levels

Report = Callable[[str, str], None]  # (job id, final state: done, failed or skipped)


class _Tracker:
    """Outcome of each job of this run, to decide what may start and what is skipped."""

    def __init__(self, jobs: list[Job], report: Report) -> None:
        self.jobs = {job.id: job for job in jobs}
        self.outcome: dict[str, str] = {}
        self.report = report

    def settle(self, job_id: str, state: str) -> None:
        self.outcome[job_id] = state
        self.report(job_id, state)

    def ready(self, job: Job) -> bool:
        """All dependencies done (before this run, or in it)."""
        return all(self.outcome.get(dep, "done") == "done" for dep in job.deps)

    def waiting(self, job: Job) -> bool:
        return any(dep in self.jobs and dep not in self.outcome for dep in job.deps)

    def skip_blocked(self) -> None:
        """Settle as skipped every unsettled job whose dependency failed or was skipped."""
        changed = True
        while changed:
            changed = False
            for job in self.jobs.values():
                if job.id not in self.outcome and not self.waiting(job) and not self.ready(job):
                    self.settle(job.id, "skipped")
                    changed = True


class SlurmSettings(Settings):
    partition: str | None = None
    time_minutes: int = Field(240, ge=1)
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(8, ge=1)
    mem_gb: int = Field(32, ge=1)
    max_concurrent: int = Field(64, ge=1, description="cap on array tasks running at once")
    cluster: Literal["slurm", "local", "debug"] = Field("slurm", description="local or debug: submitit runs the "
                                                        "jobs here (to test a study before the cluster)")
    extra: dict[str, str] = Field(default_factory=dict, description="more slurm_* parameters for submitit")


class LocalExecutor:
    """One job at a time, in this process, in plan order."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, root: Path, jobs: list[Job], report: Report) -> None:
        tracker = _Tracker(jobs, report)
        for job in jobs:
            tracker.skip_blocked()
            if job.id not in tracker.outcome:
                tracker.settle(job.id, execute_job(root, job.id, progress=self.progress))


def _start_worker(queue, threads: int, parent: int) -> None:
    """Tie a pool worker's life to the ``run`` process ``parent``; give it its GPU (if
    any) and its share of the CPU cores: more torch threads than cores makes OpenMP
    spin against itself (20x slower here)."""
    _exit_with_parent(parent)
    if queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())
    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent: int) -> None:
    """Make this process die when ``parent`` does, even by SIGKILL (which lets no parent
    clean up): on Linux the kernel sends it SIGKILL (prctl PR_SET_PDEATHSIG), elsewhere
    a thread watches for the parent to go. What the job wrote is atomic, so the next
    ``run`` resumes it."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    if libc is None or libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="exit-with-parent").start()
    if os.getppid() != parent:  # the parent died before we could ask to follow it
        os._exit(1)


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


class PoolExecutor:
    """``workers`` processes, each with cores/workers torch threads; on a machine with
    GPUs, each worker sees one GPU. A job is submitted as soon as its dependencies are
    done, so no worker idles at the end of a stage while another finishes."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, root: Path, jobs: list[Job], report: Report) -> None:
        if not jobs:
            return
        context = multiprocessing.get_context("spawn")
        queue = None
        gpus = torch.cuda.device_count()
        if gpus:
            queue = context.Queue()
            for worker in range(self.workers):
                queue.put(worker % gpus)
        workers = min(self.workers, len(jobs))
        threads = max(1, (os.cpu_count() or 1) // workers)
        tracker = _Tracker(jobs, report)
        running: dict[Future, str] = {}
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(queue, threads, os.getpid())) as pool:
            while len(tracker.outcome) < len(jobs):
                tracker.skip_blocked()
                started = set(running.values())
                for job in jobs:
                    if (job.id not in tracker.outcome and job.id not in started and not tracker.waiting(job)
                            and tracker.ready(job)):
                        running[pool.submit(execute_job, root, job.id, False)] = job.id
                if not running:
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    tracker.settle(running.pop(future), future.result())


class _SubmititJob(submitit.helpers.Checkpointable):
    """A picklable call of one job; on preemption or timeout submitit requeues it with
    the same arguments, and the job resumes from what it wrote."""

    def __call__(self, root: str, job_id: str) -> str:
        return execute_job(Path(root), job_id, progress=False)


class SlurmExecutor:
    """Job arrays through submitit, one array per stage of the plan (``cluster="local"``
    runs them as local processes)."""

    def __init__(self, settings: SlurmSettings) -> None:
        if settings.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--executor slurm: SLURM is not available here (no sbatch on PATH); run from a login node "
                             "of the cluster, use --executor pool on this machine, or --slurm cluster=local to try "
                             "the submitit path with local processes")
        self.settings = settings

    def run(self, root: Path, jobs: list[Job], report: Report) -> None:
        s = self.settings
        executor = submitit.AutoExecutor(folder=root / "slurm" / "%j", cluster=s.cluster)
        executor.update_parameters(timeout_min=s.time_minutes, gpus_per_node=s.gpus_per_job,
                                   cpus_per_task=s.cpus_per_job, mem_gb=s.mem_gb, name="transferscope")
        if executor.cluster == "slurm":
            executor.update_parameters(slurm_array_parallelism=s.max_concurrent,
                                       **({"slurm_partition": s.partition} if s.partition else {}),
                                       **{f"slurm_{k}": v for k, v in s.extra.items()})
        tracker = _Tracker(jobs, report)
        for stage in levels(jobs):
            tracker.skip_blocked()
            ids = [job.id for job in stage if job.id not in tracker.outcome]
            if not ids:
                continue
            submitted = executor.map_array(_SubmititJob(), [str(root)] * len(ids), ids)
            for job_id, handle in zip(ids, submitted):
                try:
                    tracker.settle(job_id, handle.result())
                except Exception:  # noqa: BLE001 - the job folder holds the error; the study goes on
                    tracker.settle(job_id, "failed")
