"""Sanity checks of a study's results: models that should differ but are bit-identical
(a source that is the target, trained with the same recipe and seed, makes P and RI-T
one run; a recipe that never updates the weights makes every seed one run)."""

from __future__ import annotations

from collections import defaultdict

from ..io import file_sha256
from ..roles import Role
from .job import Job
from .jobs import final_weights
from .plan import source_plans
from .spec import StudySpec
from .store import Store


def identical_models(spec: StudySpec, store: Store, jobs: list[Job]) -> list[str]:
    """One warning per target (and source, for several) whose models P, P-T and RI-T
    (each seed; unshuffled, from P itself) include two with bit-identical final weights
    (equal file bytes), among the finished runs."""
    if not spec.sources:
        return _identical_in(spec, store, jobs)
    return [f"source {label}: {warning}" for label, single, own in source_plans(spec)
            for warning in _identical_in(single, store, own)]


def _identical_in(spec: StudySpec, store: Store, jobs: list[Job]) -> list[str]:
    by_id = {job.id: job for job in jobs}
    models: dict[str, dict[str, Job]] = defaultdict(dict)
    for job in jobs:
        meta = job.config.get("meta", {})
        if job.kind != "finetune" or job.target is None or meta["block_size"] is not None \
                or store.state(job) != "done":
            continue
        if meta["role"] == "P-T":
            if meta["from_epoch"] != spec.one_source.final_epoch:
                continue
            models[job.target]["P"] = by_id[job.config["init"]["job"]]
        models[job.target][str(Role(meta["role"], meta["seed"]))] = job
    warnings = []
    for target, named in sorted(models.items()):
        by_size = defaultdict(list)
        for name, job in named.items():
            path = final_weights(store, job)
            by_size[path.stat().st_size].append((name, path))
        by_digest = defaultdict(list)
        for same_size in (group for group in by_size.values() if len(group) > 1):
            for name, path in same_size:
                by_digest[file_sha256(path)].append(name)
        for names in (names for names in by_digest.values() if len(names) > 1):
            warnings.append(f"{target}: {' and '.join(names)} have bit-identical final weights, though they should "
                            "differ (a source that is the target, trained with the same recipe and seed, makes P and "
                            "RI-T one run); check the source, targets, recipes and seeds")
    return warnings
