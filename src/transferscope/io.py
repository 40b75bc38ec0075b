"""Atomic file writes: a reader never sees a half-written file, so an interrupted run
leaves either the old file or the new one, never a corrupt one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a tidy table as Parquet, and as CSV beside it for a quick look."""
    path = Path(path)
    with atomic_path(path.with_suffix(".parquet")) as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        frame.to_csv(tmp, index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(Path(path).with_suffix(".parquet"))


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files that :func:`atomic_path` leaves under ``folder`` when
    its process is killed mid-write (call only while nothing else writes there)."""
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)


def content_hash(obj: Any, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``obj`` as canonical JSON (keys
    sorted, ``json.dumps`` defaults otherwise): equal content, in any key order, gives one
    digest. Job ids and settings digests use it; changing it would rename stored results.

    Parameters
    ----------
    obj
        JSON-serialisable data (a ``TypeError`` otherwise, never a silent ``str()``).
    length
        Hex digits kept (at most 64).

    Returns
    -------
    str
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]
