"""Gather a study's outputs into tidy tables under ``DIR/results/`` (Parquet + CSV):
``runs`` (one row per training run), ``curves`` (per-epoch metrics), ``feature_reuse``
(Fig. 3), ``checkpoints`` (Fig. 7), ``freeze`` and ``freeze_plan`` (the freeze sweep and
the recommendation it checks), ``source_score`` (brought weights scored on the source
data), one table per analysis kind (each row tagged with its target and job id; the criticality
tables also with ``data``, "source" on P's rows, :func:`with_criticality_data`) and
``findings`` (a verdict per claim of the paper, :func:`transferscope.analysis.findings`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..analysis.checkpoints import checkpoint_table
from ..analysis.claims import findings
from ..analysis.feature_reuse import feature_reuse_table, summarize_run
from ..analysis.freeze_plan import freeze_plans, freeze_table
from ..analysis.source_comparison import best_source_rows, compare_sources, reuse_by_module
from ..io import read_table, write_table
from ..train import TrainingRun
from .plan import ANALYSIS_KINDS, TRAIN_KINDS, Job, source_plans
from .spec import StudySpec
from .store import Store


def _block_label(block_size, image_size: int) -> str:
    return str(image_size) if block_size is None else str(block_size)


def source_metrics(store: Store, jobs: list[Job]) -> pd.DataFrame | None:
    """P's test score per pre-training epoch (a run's metrics columns): the pre-training
    run's metrics, or brought weights (and their trajectory) scored on the source data;
    None until that job is done."""
    for job in jobs:
        if job.kind == "pretrain" and store.state(job) == "done":
            return TrainingRun(store.job_dir(job) / "run").metrics
        if job.kind == "source_score" and store.state(job) == "done":
            return read_table(store.job_dir(job) / "result")
    return None


def training_tables(spec: StudySpec, store: Store, jobs: list[Job]) -> dict[str, pd.DataFrame]:
    source = source_metrics(store, jobs)
    tables: dict[str, pd.DataFrame] = {}
    if source is not None and not spec.one_source.pretrains:
        tables["source_score"] = source
    runs, curves = [], []
    for job in jobs:
        if job.kind not in TRAIN_KINDS or store.state(job) != "done":
            continue
        meta = dict(job.config["meta"])
        run = TrainingRun(store.job_dir(job) / "run")
        metrics = run.metrics
        image_size = run.config.data.image_size
        meta |= {"job": job.id, "kind": job.kind, "block": _block_label(meta["block_size"], image_size),
                 "best_epoch": run.best_epoch}
        runs.append(meta | summarize_run(metrics, series=spec.shuffle.speed_series))
        curves.append(metrics.assign(**{k: v for k, v in meta.items() if k != "block_size"}))
    if not runs:
        return tables
    runs_frame = pd.DataFrame(runs).drop(columns="block_size")
    tables["runs"] = runs_frame
    tables["curves"] = pd.concat(curves, ignore_index=True)
    last = spec.one_source.final_epoch  # None: brought weights without a trajectory
    finetuned = runs_frame[runs_frame["kind"] == "finetune"]
    from_p = finetuned["from_epoch"].isna() if last is None else finetuned["from_epoch"] == last
    main = finetuned[(finetuned["role"] == "RI-T") | ((finetuned["role"] == "P-T") & from_p)]
    sweep_runs = main[main["permutation_seed"].notna()]  # its own unshuffled baseline included, not the main runs
    swept = sweep_runs[sweep_runs["target"].isin(spec.shuffle.targets or [t.label for t in spec.targets])]
    if spec.shuffle.block_sizes and not swept.empty:
        tables["feature_reuse"] = feature_reuse_table(swept.rename(columns={"block": "block_size"}))
    sweep = finetuned[(finetuned["role"] == "P-T") & finetuned["permutation_seed"].isna()
                      & finetuned["target"].isin(spec.checkpoints.targets or [t.label for t in spec.targets])]
    if spec.checkpoints.epochs and source is not None and not sweep.empty:
        sweep = sweep.assign(from_epoch=sweep["from_epoch"].astype(int)).rename(columns={"from_epoch": "checkpoint_epoch"})
        tables["checkpoints"] = checkpoint_table(sweep, source)
    frozen = runs_frame[runs_frame["kind"] == "frozen"]
    if not frozen.empty:
        tables["freeze"] = _freeze_table(main, frozen, tables["curves"])
    return tables


def _freeze_table(main: pd.DataFrame, frozen: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The freeze sweep (:func:`~transferscope.analysis.freeze_plan.freeze_table`): the
    frozen runs and, as k = 0, the main P-T runs of their targets and seeds."""
    unfrozen = main[(main["role"] == "P-T") & main["permutation_seed"].isna() & main["target"].isin(frozen["target"])
                    & main["seed"].isin(frozen["seed"])]
    return freeze_table(pd.concat([unfrozen.assign(freeze=0), frozen], ignore_index=True), curves)


def analysis_tables(store: Store, jobs: list[Job]) -> dict[str, pd.DataFrame]:
    """Concatenate every finished analysis job's result tables, per kind and table name."""
    found: dict[str, list[pd.DataFrame]] = {}
    for job in jobs:
        if job.kind not in ANALYSIS_KINDS or store.state(job) != "done":
            continue
        for path in sorted(store.job_dir(job).glob("*.parquet")):
            name = job.kind if path.stem == "result" else f"{job.kind}_{path.stem}"
            found.setdefault(name, []).append(read_table(path).assign(target=job.target, job=job.id))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in found.items()}


CRITICALITY_TABLES = ("criticality", "criticality_grid")


def with_criticality_data(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The criticality tables with a column ``data`` after ``target``: ``"target"`` for
    a target's P-T and RI-T models (on its test data, ``target`` its label), ``"source"``
    for P (on the source test data, along its pre-training; ``target`` empty)."""
    for name in CRITICALITY_TABLES:
        frame = tables.get(name)
        if frame is not None and "data" not in frame.columns:
            frame.insert(frame.columns.get_loc("target") + 1, "data", frame["target"].isna().map(
                {True: "source", False: "target"}))
    return tables


def source_tables(spec: StudySpec, store: Store, jobs: list[Job]) -> dict[str, pd.DataFrame]:
    """The tables of a one-source study, the findings last (computed from the others)."""
    tables = training_tables(spec, store, jobs) | with_criticality_data(analysis_tables(store, jobs))
    plans = freeze_plans(tables["rewind"], tables.get("criticality"), tolerance=spec.freeze.tolerance) \
        if "rewind" in tables else pd.DataFrame()
    if not plans.empty:  # the freeze recommendation of each target's P-T model
        tables["freeze_plan"] = plans
    tables["findings"] = findings(tables)
    return tables


def several_sources_tables(spec: StudySpec, store: Store) -> dict[str, pd.DataFrame]:
    """A study of several sources: each table of each source's study with a first column
    ``source`` (shared RI-T rows appear under every source), the findings with the
    :func:`~transferscope.analysis.source_comparison.best_source_rows`, and the tables
    ``sources`` (:func:`~transferscope.analysis.source_comparison.compare_sources`) and
    ``source_reuse`` (:func:`~transferscope.analysis.source_comparison.reuse_by_module`)."""
    per_source = {str(label): source_tables(single, store, jobs) for label, single, jobs in source_plans(spec)}
    names = dict.fromkeys(name for tables in per_source.values() for name in tables)
    tables = {name: pd.concat([frame.assign(source=label)[["source", *frame.columns]]
                               for label, source in per_source.items() if (frame := source.get(name)) is not None],
                              ignore_index=True) for name in names}
    best = pd.DataFrame(best_source_rows(per_source))
    tables["findings"] = pd.concat([tables["findings"], best], ignore_index=True) if not best.empty \
        else tables["findings"]
    tables["sources"] = compare_sources(per_source)
    tables["source_reuse"] = reuse_by_module(per_source)
    return tables


def collect_results(spec: StudySpec, store: Store, jobs: list[Job]) -> dict[str, pd.DataFrame]:
    """Write every table (:func:`source_tables`, or :func:`several_sources_tables` for a
    study of several sources) to ``DIR/results/<name>.parquet`` and ``.csv``; return them."""
    tables = several_sources_tables(spec, store) if spec.sources else source_tables(spec, store, jobs)
    folder = Path(store.root) / "results"
    for name, frame in tables.items():
        write_table(frame, folder / name)
    return tables
