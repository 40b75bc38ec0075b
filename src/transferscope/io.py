"""Atomic file writes: a reader never sees a half-written file, so an interrupted run
leaves either the old file or the new one, never a corrupt one. Files are created with
the permissions the umask gives (0644 under the usual 022), like any other file."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def _create_temporary(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``path``, mode 0666 less the umask
    (``mkstemp`` would make it 0600, and that mode survives the rename)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``."""
    path = Path(path)
    with naming_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temporary(path)
    try:
        with naming_errors(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def naming_errors(path: Path) -> Iterator[None]:
    """Make an OSError that names no file (a full disk fails a write, not an open) name ``path``."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj: Any) -> str:
    """The text :func:`write_json` writes for ``obj``."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json_text(obj))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a damaged one is a ``JSONDecodeError`` that names the file."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise json.JSONDecodeError(f"{path} is damaged (not valid JSON): {error.msg}", error.doc, error.pos) from None


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


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex (a missing file is a FileNotFoundError naming it)."""
    with naming_errors(Path(path)), open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
