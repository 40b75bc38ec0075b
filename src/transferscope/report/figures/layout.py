"""Layouts of figures read at page width: panels at most :data:`PANELS_PER_ROW` a row
(so that a figure of many panels is not shrunk until its text is illegible), and one
legend below the panels, where it hides no data."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import rcParams
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend import Legend

PANELS_PER_ROW = 2
LEGEND_HEIGHT = 0.8
"""Inches below the panels for the suptitle and a legend of :data:`LEGEND_ROWS` rows."""
LEGEND_ROWS = 2
ROW_EMS = 1.5
"""Height of a legend row, in ems of its font."""
HANDLE_INCHES = 0.9
"""Width of a legend entry's handle and the spacing around it."""
CHARACTER_EMS = 0.6
"""Mean width of a label's character, in ems of its font (a little more than the default font's)."""


def panel_grid(n_panels: int, panel_width: float, panel_height: float, per_row: int = PANELS_PER_ROW,
               **subplots) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of ``n_panels`` axes of about ``panel_width`` x
    ``panel_height`` inches, at most ``per_row`` a row, with room for a title and a legend
    below; returns the figure and its ``n_panels`` axes (the unused ones of the last row
    are hidden). ``subplots`` go to :meth:`Figure.subplots` (``sharey``)."""
    columns = min(n_panels, per_row)
    rows = math.ceil(n_panels / columns)
    figure = Figure(figsize=(columns * panel_width, rows * panel_height + LEGEND_HEIGHT), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, **subplots).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return figure, axes[:n_panels]


def first_column(axes: np.ndarray) -> list[Axes]:
    """The axes of a :func:`panel_grid` that start a row (those that carry a y label),
    whatever its ``per_row``."""
    return [ax for ax in axes if ax.get_subplotspec().is_first_col()]


def legend_below(figure: Figure, axes, **options) -> Legend:
    """One legend for ``figure``, centred below its panels (it overlaps none), with the
    entries of every axes of ``axes`` once each, in order of appearance, in as many
    columns as fit the figure's width; ``options`` go to :meth:`Figure.legend`
    (``title``, ``ncols``, ``fontsize``)."""
    entries: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    points = FontProperties(size=options.get("fontsize", rcParams["legend.fontsize"])).get_size_in_points()
    entry_inches = HANDLE_INCHES + CHARACTER_EMS * points / 72 * max(map(len, entries), default=0)
    fitting = max(1, int(figure.get_figwidth() // entry_inches))
    options.setdefault("ncols", min(len(entries), fitting) or 1)
    extra_rows = math.ceil(len(entries) / options["ncols"]) - LEGEND_ROWS
    if extra_rows > 0:  # taller, rather than panels squashed
        figure.set_figheight(figure.get_figheight() + extra_rows * ROW_EMS * points / 72)
    return figure.legend(list(entries.values()), list(entries), loc="outside lower center", **options)
