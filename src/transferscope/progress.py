"""Progress bars for long analyses: one rich bar per call, shown only on an interactive
terminal and never when ``TRANSFERSCOPE_PROGRESS=0`` (batch jobs, CI, logs).

Use ``for item in progress(items, "rewinding", total=len(items)):``. The bar is
transient (it disappears when the loop ends) and writes to stderr, so tables printed on
stdout stay clean.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

Item = TypeVar("Item")


def progress_enabled() -> bool:
    """True when stderr is a terminal and ``TRANSFERSCOPE_PROGRESS`` is not ``0``."""
    return os.environ.get("TRANSFERSCOPE_PROGRESS", "1") != "0" and sys.stderr.isatty()


def progress(items: Iterable[Item], description: str, *, total: int | None = None) -> Iterator[Item]:
    """Yield ``items`` unchanged, with a transient progress bar when :func:`progress_enabled`."""
    if not progress_enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description=description, total=total, transient=True, console=Console(stderr=True))
