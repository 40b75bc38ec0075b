"""Writing figures: PNG and PDF files, and the PNG as base64 for the self-contained page.
Kept free of heavy imports so that worker processes start fast."""

from __future__ import annotations

import base64
import io
import pickle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")


def save_figure(figure_or_pickle, folder: str | Path, stem: str) -> str:
    """Write ``folder/stem.png`` and ``.pdf``; return the PNG as base64. Accepts a
    Figure or a pickled one (what crosses to a worker process)."""
    figure = pickle.loads(figure_or_pickle) if isinstance(figure_or_pickle, bytes) else figure_or_pickle
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    (folder / f"{stem}.png").write_bytes(buffer.getvalue())
    figure.savefig(folder / f"{stem}.pdf")
    return base64.b64encode(buffer.getvalue()).decode()
