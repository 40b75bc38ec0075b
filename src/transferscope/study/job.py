"""A job of a study and its id. The id hashes only what decides the job's numbers: its
kind, the settings that differ from their defaults (:func:`decisive`), the jobs it
depends on, and :data:`JOB_SCHEMA`. A new setting with a default therefore keeps every
stored job's id, and so does renaming a target or a label.

Bump :data:`JOB_SCHEMA` whenever stored results must not be reused: a default that
changes, an output column renamed, a formula fixed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..io import content_hash

JOB_SCHEMA = 2  # 2: the issue-12 vocabulary (columns renamed); ids hash non-default settings only


def decisive(settings: BaseModel) -> dict[str, Any]:
    """The settings that decide numbers, as JSON: those that differ from their defaults
    (recursively), without the model's ``PRESENTATION`` fields (``enabled``, ``targets``)."""
    presentation = set(getattr(type(settings), "PRESENTATION", ()))
    return settings.model_dump(mode="json", exclude_defaults=True, exclude=presentation)


@dataclass(frozen=True)
class Job:
    """``config``: everything the job needs to run (written to its job.json);
    ``identity``: what its id hashes (see the module docstring)."""

    kind: str
    label: str
    config: dict[str, Any]
    deps: tuple[str, ...] = ()
    target: str | None = None
    cost: float = 0.0  # estimated images through the network (forward or forward+backward)
    identity: dict[str, Any] = field(default_factory=dict, compare=False)
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            digest = content_hash({"schema": JOB_SCHEMA, "kind": self.kind, "identity": self.identity,
                                   "deps": sorted(self.deps)})
            object.__setattr__(self, "id", f"{self.kind}-{digest}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "config": self.config, "deps": list(self.deps),
                "target": self.target, "cost": self.cost, "schema": JOB_SCHEMA, "identity": self.identity}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(kind=data["kind"], label=data["label"], config=data["config"], deps=tuple(data["deps"]),
                   target=data["target"], cost=data["cost"], identity=data.get("identity", {}), id=data["id"])
