"""The names of a study's models: ``"P"`` (pre-trained on the source), ``"P-T:s0"``
(fine-tuned from P, seed 0), ``"RI-T:s1"`` (trained from a random init, seed 1), and
``"P-T:s0:best"`` (that run's best checkpoint instead of its final weights).

:class:`Role` is the one parser and formatter of these names; tables and job files
store them as strings."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

KINDS = ("P", "P-T", "RI-T")
_NAME = re.compile(r"(?P<kind>[^:]+)(?::s(?P<seed>\d+))?(?::(?P<checkpoint>[A-Za-z_]\w*))?")


@dataclass(frozen=True)
class Role:
    """A model of the study: its ``kind`` (one of :data:`KINDS`), the ``seed`` of its
    run (None for P, whose seed is the source's), and the ``checkpoint`` it stands for
    when not the final weights (e.g. ``"best"``)."""

    kind: str
    seed: int | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model role {self.kind!r}; roles are {', '.join(KINDS)}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"a role's seed is >= 0, got {self.seed}")

    @classmethod
    def parse(cls, name: str) -> Role:
        """The role a name spells (``"P-T:s0:best"`` -> ``Role("P-T", 0, "best")``); a
        ``ValueError`` names the expected form."""
        match = _NAME.fullmatch(str(name))
        if match is None or match["kind"] not in KINDS:
            raise ValueError(f"{name!r} is not a model role: expected <role>[:s<seed>][:<checkpoint>] with role "
                             f"one of {', '.join(KINDS)}, e.g. 'P', 'P-T:s0' or 'RI-T:s1:best'")
        seed = match["seed"]
        return cls(match["kind"], None if seed is None else int(seed), match["checkpoint"])

    def at(self, checkpoint: str | None) -> Role:
        """This run's model at ``checkpoint`` (None: its final weights)."""
        return replace(self, checkpoint=checkpoint)

    def __str__(self) -> str:
        parts = [self.kind] + ([f"s{self.seed}"] if self.seed is not None else [])
        return ":".join(parts + ([self.checkpoint] if self.checkpoint else []))
