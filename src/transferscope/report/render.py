"""Writing figures: PNG and PDF files, and the PNG as base64 for the self-contained page.
Kept free of heavy imports so that worker processes start fast."""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import re
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib import ticker

from ..io import atomic_path

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

matplotlib.use("Agg")

PLAIN_TEXT: dict[RcKeyType, Any] = {"text.parse_math": False}
"""Settings under which the report makes and draws figures: every text is shown as
given (a target label such as ``"cost $5 to $8"`` is not read as mathtext)."""


class PlainLogFormatter(ticker.LogFormatter):
    """Log-axis tick labels as plain numbers (``0.1``, ``1``, ``10``): matplotlib's default
    log labels are mathtext, which :data:`PLAIN_TEXT` would show as ``$\\mathdefault{10^{1}}$``."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def plain_log_ticks(figure) -> None:
    """Give every log axis of ``figure`` that has matplotlib's mathtext labels
    :class:`PlainLogFormatter` labels instead (the same ticks are labelled)."""
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log" and isinstance(axis.get_major_formatter(), ticker.LogFormatterMathtext):
                base = axis.get_transform().base
                axis.set_major_formatter(PlainLogFormatter(base))
                axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))

_SAFE_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,79}")


def file_stem(name: str) -> str:
    """A file-name stem for ``name``: the name itself when it is at most 80 ASCII letters,
    digits, ``.``, ``_`` or ``-``; otherwise an ASCII slug of it (at most 70 characters)
    and 8 hex digits of its hash, so that names with the same slug (``"a/b"``,
    ``"a?b"``) still get different files."""
    if _SAFE_STEM.fullmatch(name):
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip(".-")[:70].rstrip(".-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def save_figure(figure_or_pickle, folder: str | Path, stem: str) -> str:
    """Write ``folder/stem.png`` and ``.pdf`` atomically (a killed write leaves the old
    file or none, never a truncated one); return the PNG as base64. Accepts a Figure or
    a pickled one (what crosses to a worker process)."""
    figure = pickle.loads(figure_or_pickle) if isinstance(figure_or_pickle, bytes) else figure_or_pickle
    folder = Path(folder)
    plain_log_ticks(figure)
    buffer = io.BytesIO()
    with matplotlib.rc_context(PLAIN_TEXT):
        figure.savefig(buffer, format="png", dpi=110)
        with atomic_path(folder / f"{stem}.png") as tmp:
            tmp.write_bytes(buffer.getvalue())
        with atomic_path(folder / f"{stem}.pdf") as tmp:
            figure.savefig(tmp, format="pdf")
    return base64.b64encode(buffer.getvalue()).decode()


def save_figure_timed(figure_or_pickle, folder: str | Path, stem: str) -> tuple[str, float]:
    """:func:`save_figure`, and the seconds it took in the process that drew it."""
    started = time.perf_counter()
    data = save_figure(figure_or_pickle, folder, stem)
    return data, time.perf_counter() - started
