"""Wall time split into named stages (data, models, train, analysis, write, ...).

A :class:`Stages` stopwatch charges every moment to the innermost stage open at that
moment, so nested stages never count twice and the stage totals never exceed the
elapsed time. It keeps the process's CPU seconds (all its threads) per stage alike: on
a shared machine wall time grows with the load, CPU time much less. A job process
records one while its job runs (:func:`recording`); code anywhere below marks what it
does with ``with stage("data"): ...``, which does nothing when no stopwatch is
recording (a library call, a test)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Stages:
    """Exclusive wall (and CPU) time per stage since the stopwatch was made."""

    def __init__(self) -> None:
        self.started = self._since = time.perf_counter()
        self.cpu_started = self._cpu_since = time.process_time()
        self.totals: dict[str, float] = {}
        self.cpu_totals: dict[str, float] = {}
        self._open: list[str] = []

    def _charge(self) -> None:
        """Add the time since the last change to the innermost open stage."""
        now, cpu = time.perf_counter(), time.process_time()
        if self._open:
            name = self._open[-1]
            self.totals[name] = self.totals.get(name, 0.0) + now - self._since
            self.cpu_totals[name] = self.cpu_totals.get(name, 0.0) + cpu - self._cpu_since
        self._since, self._cpu_since = now, cpu

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def cpu_elapsed(self) -> float:
        return time.process_time() - self.cpu_started

    def snapshot(self) -> dict[str, float]:
        """The wall totals so far (the open stages charged up to now)."""
        self._charge()
        return dict(self.totals)

    def record(self) -> dict:
        """What a job records: wall ``seconds``, ``cpu_seconds``, and both per stage."""
        stages = self.snapshot()  # first: no stage is charged past the elapsed time
        return {"seconds": self.elapsed(), "cpu_seconds": self.cpu_elapsed(), "stages": stages,
                "cpu_stages": dict(self.cpu_totals)}


_recording: Stages | None = None


@contextmanager
def recording() -> Iterator[Stages]:
    """A stopwatch that :func:`stage` charges in this process meanwhile."""
    global _recording
    outer, _recording = _recording, Stages()
    try:
        yield _recording
    finally:
        _recording = outer


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the time inside to stage ``name`` of the recording stopwatch (if any)."""
    if _recording is None:
        yield
        return
    with _recording.stage(name):
        yield
