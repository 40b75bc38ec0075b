"""Running one job of a study: a training run, or an analysis that loads the trained
models it names and calls the analysis function (the study layer only composes)."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

from torch import nn

from ..config import DataConfig, TrainConfig
from ..data import Domain, load_domain
from ..io import write_table
from ..models import build_model, load_into
from ..train import TrainingRun, train
from ..train.run_dir import checkpoint_path
from .plan import Job
from .store import Store


def execute_job(root: str | Path, job_id: str, progress: bool = False) -> str:
    """Run job ``job_id`` of the study in ``root`` unless it is done; record the
    outcome in its folder and return its state ("done" or "failed"). Errors never
    propagate: a failed job does not stop the others."""
    store = Store(root)
    job = store.load(job_id)
    if store.state(job) == "done":
        return "done"
    started = time.perf_counter()
    store.mark_running(job)
    try:
        missing = [dep for dep in job.deps if store.state(dep) != "done"]
        if missing:
            raise RuntimeError(f"dependencies not complete: {', '.join(missing)}")
        RUNNERS[job.kind](store, job, progress)
    except Exception as error:  # noqa: BLE001 - recorded in failed.json
        store.mark_failed(job, error)
        return "failed"
    store.mark_done(job, time.perf_counter() - started)
    return "done"


# ---------------------------------------------------------------------- helpers
@lru_cache(maxsize=16)
def _domain(data_json: str) -> Domain:
    return load_domain(DataConfig.model_validate_json(data_json))


def domain_of(config: TrainConfig, **unshuffled: bool) -> Domain:
    """The run's domain (cached per process); ``unshuffled=True`` drops its block shuffle."""
    data = config.data.model_copy(update={"block_size": None}) if unshuffled.get("unshuffled") else config.data
    return _domain(data.model_dump_json())


def run_of(store: Store, ref: dict) -> TrainingRun:
    return TrainingRun(store.job_dir(ref["job"]) / "run")


def load_model(store: Store, ref: dict, checkpoint: str | int | None = None) -> nn.Module:
    """The model of a training job at a checkpoint (``ref["checkpoint"]`` by default)."""
    run = run_of(store, ref)
    config = run.config
    model = build_model(config.model.arch, domain_of(config).num_outputs, width=config.model.width,
                        blocks=config.model.blocks)
    load_into(model, run.checkpoint(ref["checkpoint"] if checkpoint is None else checkpoint))
    return model.eval()


def _train_job(store: Store, job: Job, progress: bool) -> None:
    config = TrainConfig.model_validate(job.config["train"])
    init = job.config.get("init")
    if init is not None:
        path = checkpoint_path(store.job_dir(init["job"]) / "run", init["epoch"])
        if not path.is_file():
            raise FileNotFoundError(f"pre-training saved no checkpoint at epoch {init['epoch']} ({path}); "
                                    "set the source recipe's checkpoint_every so that it does")
        config = config.model_copy(update={"init": str(path)})
    train(config, store.job_dir(job) / "run", progress=progress)


def result_path(store: Store, job: Job, name: str = "result") -> Path:
    return store.job_dir(job) / name


RUNNERS: dict[str, Callable[[Store, Job, bool], None]] = {"pretrain": _train_job, "finetune": _train_job}
