"""Run a study: plan it and execute the jobs that are not complete wave by wave (a job
runs once everything it depends on is done). Running it again skips what is complete
and resumes what is not. The report (:mod:`transferscope.report`) is built from the
study folder afterwards; this layer does not import it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..io import write_text
from .plan import Job, build_plan, plans_kept
from .sanity import identical_models
from .spec import StudySpec, load_study
from .store import STATES, Store

STUDY_FILE = "study.yaml"


def save_spec(spec: StudySpec, root: Path) -> None:
    write_text(root / STUDY_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def open_study(root: str | Path) -> tuple[StudySpec, Store, list[Job]]:
    """The spec, store and plan of an existing study folder."""
    root = Path(root)
    if not (root / STUDY_FILE).is_file():
        raise FileNotFoundError(f"{root} is not a study folder (no {STUDY_FILE}); run `transferscope run` first")
    spec = load_study(root / STUDY_FILE)
    return spec, Store(root), build_plan(spec)


def run_study(spec: StudySpec, root: str | Path, executor, console: Console | None = None) -> dict[str, int]:
    """Execute every incomplete job of ``spec`` into ``root``; returns job counts by state.
    Holds the study folder's lock throughout (:class:`~.store.StudyBusy` if another
    process holds it). Each source is planned once (:func:`~.plan.plans_kept`)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    store = Store(root)
    with store.lock(), plans_kept():
        store.remove_stale_temporaries()
        return _run_locked(spec, store, executor, console or Console())


def _run_locked(spec: StudySpec, store: Store, executor, console: Console) -> dict[str, int]:
    root = store.root
    save_spec(spec, root)
    jobs = build_plan(spec)
    store.register(jobs)
    by_id = {job.id: job for job in jobs}
    total = len(jobs)
    finished = sum(store.state(job) == "done" for job in jobs)
    started = time.perf_counter()
    if finished:
        console.print(f"{finished}/{total} jobs already complete in {root}")

    def announce(job_id: str, state: str) -> None:
        nonlocal finished
        finished += 1
        job = by_id[job_id]
        if state == "skipped":
            blocking = [by_id[d].label for d in job.deps if store.state(d) != "done"]
            detail = f"needs {', '.join(blocking)}, which did not complete"
        else:
            seconds = store.seconds(job)
            detail = f"{seconds:.1f}s" if seconds is not None else store.error(job) or ""
        colour = {"done": "green", "skipped": "yellow"}.get(state, "red")
        console.print(f"[{finished}/{total}] {escape(job.label)} ({job.kind}) [{colour}]{state}[/] {detail}")

    executor.run(root, [job for job in jobs if store.state(job) != "done"], announce)
    store.write_index(jobs)
    counts = Counter(store.state(job) for job in jobs)
    console.print(f"study {spec.name}: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
                  + f" ({time.perf_counter() - started:.0f}s)")
    for warning in identical_models(spec, store, jobs):
        console.print(f"[yellow]warning:[/] {warning}")
    return dict(counts)


def status_table(root: str | Path) -> tuple[Table, list[tuple[Job, str]]]:
    """A rich table of job counts by kind and state, and the failed jobs with errors."""
    spec, store, jobs = open_study(root)
    counts: dict[str, Counter] = {}
    failed = []
    for job in jobs:
        state = store.state(job)
        counts.setdefault(job.kind, Counter())[state] += 1
        if state == "failed":
            failed.append((job, store.error(job) or ""))
    table = Table(title=f"study {spec.name} in {root}")
    table.add_column("kind")
    for state in STATES:
        table.add_column(state, justify="right")
    for kind, counter in counts.items():
        table.add_row(kind, *(str(counter[state] or "") for state in STATES))
    return table, failed


def plan_table(spec: StudySpec, root: str | Path | None = None) -> Table:
    """A rich table of the plan: each job, its state (when ``root`` is given) and cost."""
    store = Store(root) if root is not None else None
    jobs = build_plan(spec)
    table = Table(title=f"plan of study {spec.name}: {len(jobs)} jobs, "
                        f"{sum(job.cost for job in jobs) / 1e6:.2f} M image passes")
    for column in ("job", "kind", "target", "state", "image passes", "id"):
        table.add_column(column, justify="right" if column == "image passes" else "left")
    for job in jobs:
        state = store.state(job) if store is not None and store.job_dir(job).exists() else "pending"
        table.add_row(escape(job.label), job.kind, escape(job.target or ""), state, f"{job.cost / 1e3:,.0f} k", job.id)
    return table
