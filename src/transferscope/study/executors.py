"""Executors: run a wave of independent jobs in-process, in a process pool (one GPU
per worker where there are GPUs), or on a SLURM cluster through submitit (job arrays,
a cap on concurrent tasks, requeue on preemption and timeout).

Every executor calls the same :func:`transferscope.study.jobs.execute_job` with the
study folder and a job id; jobs read their description from the folder, so nothing
but two strings crosses a process or machine boundary."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Literal

import submitit
import torch
from pydantic import Field

from ..config import Settings
from .jobs import execute_job

Report = Callable[[str, str], None]  # (job id, final state)


class SlurmSettings(Settings):
    partition: str | None = None
    time_minutes: int = Field(240, ge=1)
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int = Field(8, ge=1)
    mem_gb: int = Field(32, ge=1)
    max_concurrent: int = Field(64, ge=1, description="cap on array tasks running at once")
    cluster: Literal["slurm", "local", "debug"] | None = Field(None, description="None = SLURM if available")
    extra: dict[str, str] = Field(default_factory=dict, description="more slurm_* parameters for submitit")


class LocalExecutor:
    """One job at a time, in this process."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, root: Path, job_ids: list[str], report: Report) -> None:
        for job_id in job_ids:
            report(job_id, execute_job(root, job_id, progress=self.progress))


def _start_worker(queue, threads: int) -> None:
    """Give a pool worker its GPU (if any) and its share of the CPU cores: more torch
    threads than cores makes OpenMP spin against itself (20x slower here)."""
    if queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())
    torch.set_num_threads(threads)


class PoolExecutor:
    """``workers`` processes, each with cores/workers torch threads; on a machine with
    GPUs, each worker sees one GPU."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, root: Path, job_ids: list[str], report: Report) -> None:
        context = multiprocessing.get_context("spawn")
        queue = None
        gpus = torch.cuda.device_count()
        if gpus:
            queue = context.Queue()
            for worker in range(self.workers):
                queue.put(worker % gpus)
        workers = min(self.workers, len(job_ids))
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(queue, threads)) as pool:
            futures = {pool.submit(execute_job, root, job_id, False): job_id for job_id in job_ids}
            for future in as_completed(futures):
                report(futures[future], future.result())


class _SubmititJob(submitit.helpers.Checkpointable):
    """A picklable call of one job; on preemption or timeout submitit requeues it with
    the same arguments, and the job resumes from what it wrote."""

    def __call__(self, root: str, job_id: str) -> str:
        return execute_job(Path(root), job_id, progress=False)


class SlurmExecutor:
    """Job arrays through submitit (``cluster="local"`` runs them as local processes)."""

    def __init__(self, settings: SlurmSettings) -> None:
        self.settings = settings

    def run(self, root: Path, job_ids: list[str], report: Report) -> None:
        s = self.settings
        executor = submitit.AutoExecutor(folder=root / "slurm" / "%j", cluster=s.cluster)
        executor.update_parameters(timeout_min=s.time_minutes, gpus_per_node=s.gpus_per_job,
                                   cpus_per_task=s.cpus_per_job, mem_gb=s.mem_gb, name="transferscope")
        if executor.cluster == "slurm":
            executor.update_parameters(slurm_array_parallelism=s.max_concurrent,
                                       **({"slurm_partition": s.partition} if s.partition else {}),
                                       **{f"slurm_{k}": v for k, v in s.extra.items()})
        submitted = executor.map_array(_SubmititJob(), [str(root)] * len(job_ids), job_ids)
        for job_id, handle in zip(job_ids, submitted):
            try:
                report(job_id, handle.result())
            except Exception:  # noqa: BLE001 - the job folder holds the error; the study goes on
                report(job_id, "failed")
