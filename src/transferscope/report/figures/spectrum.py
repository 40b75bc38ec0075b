"""Module spectra (the paper's future work): normalized singular values of P, P-T and
RI-T overlaid, one panel per module, from :func:`transferscope.analysis.spectra.spectrum`
frames keyed by model name."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...analysis.spectra import spectrum_summary
from .layout import legend_below, panel_grid

MODULES_PER_ROW = 3
"""Panels a row: three of a ResNet's six modules still read at page width (their text
shown at 8.7 pt or more)."""


def _check(frames: Mapping[str, pd.DataFrame]) -> None:
    if not frames:
        raise ValueError("pass {model name: spectrum(model)} for at least one model")
    for name, frame in frames.items():
        missing = {"module", "parameter", "index", "singular_value"} - set(frame.columns)
        if missing:
            raise ValueError(f"frame of {name!r} is not a spectrum() frame: columns {sorted(missing)} are missing")


def plot_spectra(frames: Mapping[str, pd.DataFrame]) -> Figure:
    """One panel per module (:data:`MODULES_PER_ROW` a row): σ_i / σ_1 against i for
    every weight matrix of the module, one colour per model, log scale; the models'
    legend below the panels."""
    _check(frames)
    modules = list(dict.fromkeys(m for frame in frames.values() for m in frame["module"]))
    figure, axes = panel_grid(len(modules), 4.0, 3.2, per_row=MODULES_PER_ROW)
    colours = {name: f"C{i}" for i, name in enumerate(frames)}
    for ax, module in zip(axes, modules):
        for name, frame in frames.items():
            part = frame[frame["module"] == module]
            label: str | None = name  # one legend entry per model
            for _, tensor in part.groupby("parameter", sort=False):
                values = tensor.sort_values("index")["singular_value"].to_numpy()
                if values[0] == 0:
                    continue  # an all-zero matrix has no normalized spectrum
                ax.plot(np.arange(1, len(values) + 1), values / values[0], color=colours[name], alpha=0.7,
                        linewidth=1.0, label=label)
                label = None
        ax.set_yscale("log")
        ax.set_title(module)
        ax.set_xlabel("singular value index i")
        ax.set_ylabel("σ_i / σ_1 (log scale)")
    legend_below(figure, axes, title="model")
    figure.suptitle("Normalized singular values of each weight matrix, per module")
    return figure


def caption_spectrum(frames: Mapping[str, pd.DataFrame]) -> str:
    """What the paper proposed and what these spectra show: per model, the mean stable rank
    and mean energy in the top singular value over the weight matrices."""
    _check(frames)
    parts = []
    for name, frame in frames.items():
        summary = spectrum_summary(frame, top_k=(1,))
        parts.append(f"{name} stable rank {summary['stable_rank'].mean():.2f}, "
                     f"top-1 energy {100 * summary['energy_top1'].mean():.1f}%")
    return ("The paper leaves the spectrum of each module to future work. Here, averaged over the weight "
            f"matrices of each model: {'; '.join(parts)}.")
