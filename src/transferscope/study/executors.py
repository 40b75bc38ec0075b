"""Executors: run the incomplete jobs of a study in-process, in a process pool (one GPU
per worker where there are GPUs), or on a SLURM cluster through submitit (job arrays
sized to the partition, a cap on concurrent tasks, requeue on preemption and timeout,
tasks that SLURM ends recorded as failed).

A job starts once every job it depends on is done; one whose dependency failed is
skipped (it stays pending). Every executor calls the same
:func:`transferscope.study.jobs.execute_job` with the study folder and a job id; jobs
read their description from the folder, so nothing but two strings crosses a process
or machine boundary."""

from __future__ import annotations

import ctypes
import io
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Iterator, Literal

import submitit
import torch
from pydantic import Field
from submitit.core.utils import FailedJobError, UncompletedJobError

from ..config import Settings
from . import slurm
from .jobs import execute_job
from .plan import Job, levels
from .store import Store

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
    """``--slurm`` settings; the resources left out are sized to the partition and the
    job's kind (:func:`transferscope.study.slurm.request`)."""
    partition: str | None = Field(None, description="default: the cluster's default partition")
    time_minutes: int | None = Field(None, ge=1, description="default: 240, or the partition's limit when lower")
    gpus_per_job: int | None = Field(None, ge=0, description="default: 1 where the partition has GPUs, else 0")
    cpus_per_job: int | None = Field(None, ge=1, description="default: 8 for training, 4 for analyses, at most a node's")
    mem_gb: int | None = Field(None, ge=1, description="default: 32 for training, 16 for analyses, at most a node's")
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


class TaskEnded(RuntimeError):
    """A cluster task ended without its job recording an outcome (cancelled, timed out,
    lost with its node, killed)."""


LOOK_SECONDS = 1.0  # pause between two looks for finished tasks' results (files)
ASK_SECONDS = (1.0, 10.0)  # first and longest pause between two questions to SLURM about the tasks' states


class SlurmExecutor:
    """Job arrays through submitit, one per stage of the plan and resource profile
    (training, analysis), sized to the partition (:func:`.slurm.request`;
    ``cluster="local"`` runs them as local processes). Each task is watched through
    ``squeue``: one that SLURM ends without its job's outcome is recorded as failed with
    SLURM's state. submitit's messages and the SLURM commands' complaints go to
    ``DIR/logs/slurm.log``; ``echo`` shows each submission."""

    def __init__(self, settings: SlurmSettings, echo: Callable[[str], object] = print) -> None:
        if settings.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--executor slurm: SLURM is not available here (no sbatch on PATH); run from a login node "
                             "of the cluster, use --executor pool on this machine, or --slurm cluster=local to try "
                             "the submitit path with local processes")
        self.settings = settings
        self.echo = echo
        self.on_slurm = settings.cluster == "slurm"

    def run(self, root: Path, jobs: list[Job], report: Report) -> None:
        if not jobs:
            return
        s = self.settings
        partition = slurm.find_partition(s.partition) if self.on_slurm else slurm.this_machine()
        requests = {name: slurm.request(partition, name, gpus=s.gpus_per_job, cpus=s.cpus_per_job, mem_gb=s.mem_gb,
                                        minutes=s.time_minutes, check=self.on_slurm) for name in slurm.NEEDS}
        tracker = _Tracker(jobs, report)
        with _logging_to(root / "logs" / "slurm.log"):
            for stage in levels(jobs):
                tracker.skip_blocked()
                handles: dict[str, submitit.Job] = {}
                for name, request in requests.items():
                    todo = [job for job in stage if job.id not in tracker.outcome and slurm.profile(job.kind) == name]
                    if todo:
                        handles.update(self._submit(root, todo, request))
                self._wait(Store(root), handles, tracker)

    def _submit(self, root: Path, todo: list[Job], request: slurm.Request) -> dict[str, submitit.Job]:
        """Submit ``todo`` as one array; a request sbatch refuses is a ValueError naming the setting."""
        executor = submitit.AutoExecutor(folder=root / "slurm" / "%j", cluster=self.settings.cluster)
        executor.update_parameters(timeout_min=request.minutes, cpus_per_task=request.cpus, mem_gb=request.mem_gb,
                                   name="transferscope", **({"gpus_per_node": request.gpus} if request.gpus else {}))
        if self.on_slurm:
            executor.update_parameters(slurm_array_parallelism=self.settings.max_concurrent,
                                       slurm_partition=request.partition,
                                       **{f"slurm_{k}": v for k, v in self.settings.extra.items()})
        ids = [job.id for job in todo]
        try:
            with _output_to_log():
                handles = executor.map_array(_SubmititJob(), [str(root)] * len(ids), ids)
        except FailedJobError as error:
            raise slurm.refusal(str(error)) from None
        tasks = f"{len(todo)} task{'s' if len(todo) > 1 else ''}"
        self.echo(f"{'SLURM' if self.on_slurm else 'local'} job {handles[0].job_id.split('_')[0]}: {tasks}, each "
                  f"{request.describe()}")
        for job, handle in zip(todo, handles):
            slurm.logger.info("task %s runs %s (%s), output in %s", handle.job_id, job.label, job.id, handle.paths.folder)
        return dict(zip(ids, handles))

    def _wait(self, store: Store, handles: dict[str, submitit.Job], tracker: _Tracker) -> None:
        """Settle each job as its task ends: look for results every LOOK_SECONDS, and ask
        SLURM about the tasks every ASK_SECONDS (the pause growing while nothing ends)."""
        unsettled = dict(handles)
        pause, next_question = ASK_SECONDS[0], time.monotonic()
        while unsettled:
            states = None
            if self.on_slurm and time.monotonic() >= next_question:
                states = slurm.task_states(handle.job_id for handle in unsettled.values())
                next_question, pause = time.monotonic() + pause, min(pause * 1.5, ASK_SECONDS[1])
            for job_id, handle in list(unsettled.items()):
                outcome = self._outcome(store, job_id, handle, states)
                if outcome is not None:
                    tracker.settle(job_id, outcome)
                    del unsettled[job_id]
                    pause = ASK_SECONDS[0]
            if unsettled:
                time.sleep(LOOK_SECONDS)

    def _outcome(self, store: Store, job_id: str, handle: submitit.Job,
                 states: dict[str, slurm.TaskState] | None) -> str | None:
        """The job's outcome ("done" or "failed") once its task has ended, else None."""
        _refresh(handle.paths.folder)
        ended = self._how_ended(handle, states)
        if not (handle.paths.result_pickle.exists() or self.settings.cluster == "debug"):  # debug: in memory
            return None if ended is None else _ended(store, job_id, handle, f"no result, {ended}")
        try:
            return handle.result()
        except (UncompletedJobError, OSError, EOFError, pickle.UnpicklingError) as error:
            return _ended(store, job_id, handle, (str(error).strip().splitlines() or [type(error).__name__])[-1])

    def _how_ended(self, handle: submitit.Job, states: dict[str, slurm.TaskState] | None) -> str | None:
        """How the task ended (SLURM's or submitit's state); None while it may still run,
        or when SLURM does not answer."""
        if not self.on_slurm:
            return f"submitit state {handle.state}" if handle.done() else None
        state = None if states is None else states[handle.job_id]
        return None if state is None or state.active else state.describe()


def _ended(store: Store, job_id: str, handle: submitit.Job, why: str) -> str:
    """Record the job of a task that ended without an outcome as failed, saying why (a
    job that finished before its task was killed stays done)."""
    if store.state(job_id) == "done":
        return "done"
    store.mark_failed(job_id, TaskEnded(f"task {handle.job_id} ended before its job did: {why}; its output: "
                                        f"{handle.paths.stderr}"))
    return "failed"


def _refresh(folder: Path) -> None:
    """Make files another node wrote in ``folder`` visible here (NFS caches directory
    listings; a chmod revalidates them, as submitit does)."""
    try:
        folder.chmod(folder.stat().st_mode)
    except OSError:  # not created yet: the task has not started
        pass


@contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Send submitit's log and this package's SLURM messages to ``path`` (not the console) meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    loggers = [logging.getLogger("submitit"), slurm.logger]
    saved = [(each.handlers, each.propagate, each.level) for each in loggers]
    for each in loggers:
        each.handlers, each.propagate = [handler], False
        each.setLevel(logging.INFO)
    try:
        yield
    finally:
        for each, (handlers, propagate, level) in zip(loggers, saved):
            each.handlers, each.propagate = handlers, propagate
            each.setLevel(level)
        handler.close()


@contextmanager
def _output_to_log() -> Iterator[None]:
    """What submitit prints and warns meanwhile (sbatch's complaints among it) goes to the SLURM log."""
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, redirect_stdout(printed), redirect_stderr(printed):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for line in [*printed.getvalue().splitlines(), *(str(warning.message) for warning in caught)]:
                if line.strip():
                    slurm.logger.info("submitit: %s", line.strip())
