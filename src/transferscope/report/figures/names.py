"""Model names in study tables: role names such as ``"P"``, ``"P-T:s0"``, ``"RI-T:s1"``
(:class:`transferscope.roles.Role`); the role groups seeds into the paper's pair
types."""

from __future__ import annotations

from typing import Sequence

from ...roles import Role


def role(name: str) -> str:
    """Kind of a model name: ``"P-T:s0"`` -> ``"P-T"``, ``"P"`` -> ``"P"``; a name that
    is no role (a model of your own) is its own kind."""
    try:
        return Role.parse(name).kind
    except ValueError:
        return str(name)


def pair_type(model_a: str, model_b: str, order: Sequence[tuple[str, str]], sep: str = "&") -> str | None:
    """Label of the (unordered) role pair of two model names, as spelled in ``order``
    (``"P-T&P"`` for ``("P", "P-T:s0")``); None when the pair is not in ``order``."""
    roles = (role(model_a), role(model_b))
    for pair in order:
        if roles in (pair, pair[::-1]):
            return sep.join(pair)
    return None
