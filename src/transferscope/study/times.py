"""Where a study's time went: the wall seconds each done job recorded in its done.json
(split into stages by the job's own process, so SLURM tasks are measured alike), per job
kind, and the last report build's seconds per part and section."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ..io import read_json
from .runner import open_study
from .store import REPORT_TIMES

STAGE_ORDER = ("data", "models", "train", "analysis", "write")
"""The stages in the order of a job's life; any other recorded stage follows them."""
OTHER = "other"
"""The part of a job's wall time in no stage: reading its description, marking it."""


def job_times(root: str | Path) -> dict[str, dict]:
    """Per kind of job (in plan order), over its done jobs: ``jobs`` (count), ``seconds``
    (wall, summed), ``cpu_seconds`` (the job processes' CPU time, summed) and ``stages``
    (wall seconds per stage, summed; ``"other"``: the rest)."""
    _, store, jobs = open_study(root)
    kinds: dict[str, dict] = {}
    for job in jobs:
        record = store.done_record(job)
        if "seconds" not in record:
            continue
        entry = kinds.setdefault(job.kind, {"jobs": 0, "seconds": 0.0, "cpu_seconds": 0.0, "stages": Counter()})
        stages = record.get("stages", {})
        entry["jobs"] += 1
        entry["seconds"] += record["seconds"]
        entry["cpu_seconds"] += record.get("cpu_seconds", 0.0)
        entry["stages"].update(stages)
        entry["stages"][OTHER] += record["seconds"] - sum(stages.values())
    return kinds


def _stage_names(kinds: dict[str, dict]) -> list[str]:
    recorded = {name for entry in kinds.values() for name in entry["stages"]}
    extra = sorted(recorded - {*STAGE_ORDER, OTHER})
    return [name for name in (*STAGE_ORDER, *extra) if name in recorded] + [OTHER]


def times_table(root: str | Path) -> Table:
    """A rich table of the done jobs' wall seconds per kind: count, total, mean, the
    total of each stage, and the CPU seconds of the jobs (which grow less than wall time
    on a loaded machine); a last row sums every kind."""
    kinds = job_times(root)
    names = _stage_names(kinds)
    table = Table(title=f"job time in {escape(str(root))} (wall seconds, as each job measured itself)")
    for column in ("kind", "jobs", "total", "mean", *names, "cpu"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    totals: dict = {"jobs": 0, "seconds": 0.0, "cpu_seconds": 0.0, "stages": Counter()}
    for kind, entry in sorted(kinds.items(), key=lambda item: -item[1]["seconds"]):
        table.add_row(kind, *_cells(entry, names))
        for key in ("jobs", "seconds", "cpu_seconds"):
            totals[key] += entry[key]
        totals["stages"].update(entry["stages"])
    table.add_section()
    table.add_row("all jobs", *_cells(totals, names))
    return table


def _cells(entry: dict, names: list[str]) -> list[str]:
    mean = entry["seconds"] / entry["jobs"] if entry["jobs"] else 0.0
    return [str(entry["jobs"]), f"{entry['seconds']:.1f}", f"{mean:.1f}",
            *(f"{entry['stages'][name]:.1f}" if name in entry["stages"] else "" for name in names),
            f"{entry['cpu_seconds']:.1f}"]


def report_table(root: str | Path) -> Table | None:
    """A rich table of the last report build's seconds: collecting the results, building
    each section (its figures made in this process), writing the figure files (in
    parallel: wall time, and each section's drawing seconds summed over its figures),
    writing the page; None when no report recorded its times."""
    path = Path(root) / REPORT_TIMES
    if not path.is_file():
        return None
    times = read_json(path)
    table = Table(title=f"report time ({times['seconds']:.1f} s)")
    for column in ("part", "seconds", "figures", "drawing seconds"):
        table.add_column(column, justify="left" if column == "part" else "right")
    stages = defaultdict(float, times["stages"])
    table.add_row("collect results", f"{stages['results']:.1f}", "", "")
    for key, section in sorted(times["sections"].items(), key=lambda item: -item[1]["build"]):
        table.add_row(f"section {key}", f"{section['build']:.1f}", str(section["figures"] or ""),
                      f"{section['figure_seconds']:.1f}" if section["figures"] else "")
    table.add_row("write figures (in parallel)", f"{stages['figures']:.1f}",
                  str(sum(section["figures"] for section in times["sections"].values())),
                  f"{sum(section['figure_seconds'] for section in times['sections'].values()):.1f}")
    table.add_row("write page", f"{stages['page']:.1f}", "", "")
    return table
