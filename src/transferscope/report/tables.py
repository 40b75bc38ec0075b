"""The report's tables as people read them: every number of a column at one readable
precision (:func:`format_column`), the columns that are the same in every row stated
once above the table, long tables collapsed after their first rows, and a table wider
than the page scrolling inside its own box. Full precision stays in ``results/``."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from ..analysis.claims import FAILS, HOLDS, INCONCLUSIVE

MISSING = "–"
PREVIEW_ROWS = 10
"""Rows shown of a collapsed table."""
COLLAPSE_ABOVE = 15
"""Tables with more rows are collapsed to their first :data:`PREVIEW_ROWS`."""
LONG_TEXT = 40
"""Text cells longer than this may wrap (class ``long``); the others stay on one line."""
SAME_IN_EVERY_ROW = "Same in every row: "
NOT_SHOWN = ("job",)
"""Columns left out of the page: the id of the job that computed a row (in ``results/``)."""

_P_VALUE = re.compile(r"(^|_)p(_?value)?$")
_COUNT = re.compile(r"^n_|_count$|^count$")
_PERCENT = re.compile(r"relative_drop$|percent")
_SCORE = re.compile(r"score|accuracy|auc|loss|error|fraction|ci_low|ci_high|speed|barrier|energy")


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """A named index (the pairs of Table 1, the targets of Table 2) as leading columns."""
    return frame.reset_index() if any(name is not None for name in frame.index.names) else frame


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _numbers(values: pd.Series) -> pd.Series | None:
    """``values`` as floats when every value present is a number (a column of ints and
    Nones stored as objects counts); None for text and booleans."""
    if pd.api.types.is_bool_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    present = [value for value in values if not _missing(value)]
    if present and all(_is_number(value) for value in present):
        return pd.Series([float(value) if _is_number(value) else math.nan for value in values], index=values.index)
    return None


def _integral(finite: pd.Series) -> bool:
    return bool((finite == finite.round()).all())


def _significant_decimals(finite: pd.Series, digits: int = 3) -> int | None:
    """Decimals that show ``digits`` significant digits of the column's smallest nonzero
    magnitude, but of none more than 100 times below its median magnitude (a value at
    round-off level does not widen the column); None when the median magnitude calls
    for scientific notation."""
    magnitudes = finite[finite != 0].abs()
    if magnitudes.empty:
        return 0
    exponents = np.floor(np.log10(magnitudes.to_numpy()))
    typical = math.floor(float(np.median(exponents)))
    if typical >= 6 or typical < -4:
        return None
    return min(max(digits - 1 - max(int(exponents.min()), typical - 2), 0), 6)


def column_format(name: object, values: pd.Series) -> str | None:
    """The format spec of every number of a column, decided from its name and values
    (None for a column of text or booleans). One precision per column: p-values (``p``,
    ``*_p``, ``p_value``) in scientific notation with 2 significant digits; counts
    (integer columns, ``n_*``, ``*_count``) as integers; relative drops (percent) with
    1 decimal; scores, losses, errors, fractions, barriers and energies with 3 decimals;
    settings typed by hand (no value has more than 3 significant digits) as given; any
    other number at the decimals that show 3 significant digits of its small values
    (:func:`_significant_decimals`)."""
    floats = _numbers(values)
    if floats is None:
        return None
    name = str(name).lower()
    finite = floats[floats.map(math.isfinite)]
    if _P_VALUE.search(name):
        return ".1e"
    if pd.api.types.is_integer_dtype(values) or (_COUNT.search(name) and _integral(finite)):
        return ",d" if _COUNT.search(name) else "d"
    if _PERCENT.search(name):
        return ".1f"
    if _SCORE.search(name):
        return ".3f"
    if all(float(f"{value:.3g}") == value for value in finite):
        return "g"  # settings and grid values as typed: 0.0001, 0.5, 1.05
    decimals = _significant_decimals(finite)
    return ".2e" if decimals is None else f".{decimals}f"


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _cells(values: pd.Series, spec: str | None) -> list[str]:
    """``values`` as text in format ``spec`` (as given when None); missing values ``–``."""
    floats = None if spec is None else _numbers(values)
    if spec is None or floats is None:
        return [MISSING if _missing(value) else str(value) for value in values]
    integer = spec.endswith("d")
    return [MISSING if math.isnan(value) else format(int(value) if integer else value, spec) for value in floats]


def format_column(name: object, values: pd.Series) -> tuple[list[str], str | None]:
    """The cells of one column as text in its :func:`column_format`, and that format
    (None for text, shown left-aligned)."""
    spec = column_format(name, values)
    return _cells(values, spec), spec


SETTING_FORMATS = (None, "d", ",d", "g")
"""Formats of the columns that may be settings (text, integers, values typed by hand);
a measured number (a score, a p-value, a distance) stays in its rows even when equal."""


def _setting(values: pd.Series, spec: str | None) -> bool:
    """Whether a column is a setting that holds one value in every row."""
    if spec not in SETTING_FORMATS or pd.api.types.is_bool_dtype(values):
        return False
    try:
        return values.nunique(dropna=False) == 1
    except TypeError:  # unhashable cells (lists) are never stated once
        return False


@dataclass(frozen=True)
class Column:
    """One column as shown: its name, text cells, whether it is numeric, and whether it
    is a setting with one value in every row."""

    name: str
    cells: list[str]
    numeric: bool
    constant: bool


def _columns(frame: pd.DataFrame) -> list[Column]:
    """The columns of ``frame`` as shown; ``X_mean`` and ``X_std`` become one column
    ``X mean ± std`` (both at the mean's precision; the mean alone where std is missing)."""
    names = [str(name) for name in frame.columns]
    columns = []
    for i, name in enumerate(names):
        values = frame.iloc[:, i]
        std_name = name.removesuffix("_mean") + "_std"
        if name.endswith("_std") and name.removesuffix("_std") + "_mean" in names:
            continue
        if name.endswith("_mean") and std_name in names:
            std = frame.iloc[:, names.index(std_name)]
            spec = column_format(name, values)
            cells = [mean if deviation == MISSING else f"{mean} ± {deviation}"
                     for mean, deviation in zip(_cells(values, spec), _cells(std, spec))]
            columns.append(Column(f"{name.removesuffix('_mean')} mean ± std", cells, spec is not None, False))
        else:
            cells, spec = format_column(name, values)
            columns.append(Column(name, cells, spec is not None, _setting(values, spec)))
    return columns


@dataclass(frozen=True)
class DisplayTable:
    """A table ready to show: ``constants`` (column -> text) hold in every row; ``columns``,
    ``numeric`` (per column) and ``rows`` (text cells) are the rest."""

    constants: dict[str, str]
    columns: list[str]
    numeric: list[bool]
    rows: list[list[str]]


def display_table(frame: pd.DataFrame) -> DisplayTable:
    """``frame`` as shown (:func:`format_column`, mean ± std merged, no
    :data:`NOT_SHOWN` column); with two or more rows, the settings that hold one value in
    every row (the one target, a BatchNorm mode, a sample size) become ``constants``, as
    long as some column remains."""
    frame = with_labels(frame)
    columns = _columns(frame.drop(columns=[name for name in NOT_SHOWN if name in frame.columns]))
    hoist = len(frame) > 1 and not all(column.constant for column in columns)
    constants = {column.name: column.cells[0] for column in columns if hoist and column.constant}
    kept = [column for column in columns if column.name not in constants]
    return DisplayTable(constants, [column.name for column in kept], [column.numeric for column in kept],
                        [list(row) for row in zip(*(column.cells for column in kept))] if kept else [])


def _header(name: str) -> Markup:
    """A column name that may wrap after its underscores."""
    return Markup("_<wbr>").join(escape(part) for part in name.split("_"))


VERDICT_CLASSES = {HOLDS: "holds", FAILS: "fails", INCONCLUSIVE: "inconclusive"}


def _cell(text: str, numeric: bool, column: str = "") -> str:
    """One cell; a ``verdict`` column's findings verdict gets the class ``verdict`` and one
    per verdict (:data:`VERDICT_CLASSES`), which the page colours."""
    kind = "num" if numeric else "long" if len(text) > LONG_TEXT else ""
    if column == "verdict" and text in VERDICT_CLASSES:
        kind = f"verdict {VERDICT_CLASSES[text]}"
    return f'<td class="{kind}">{escape(text)}</td>' if kind else f"<td>{escape(text)}</td>"


def _html_rows(table: DisplayTable, rows: list[list[str]]) -> str:
    head = "".join(f'<th class="num">{_header(name)}</th>' if numeric else f"<th>{_header(name)}</th>"
                   for name, numeric in zip(table.columns, table.numeric))
    body = "".join("<tr>" + "".join(_cell(cell, numeric, column) for cell, numeric, column
                                    in zip(row, table.numeric, table.columns)) + "</tr>\n"
                   for row in rows)
    return f'<table class="data">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>'


def constants_text(constants: dict[str, str]) -> str:
    """The line that states the columns that are the same in every row."""
    return SAME_IN_EVERY_ROW + "; ".join(f"{name} = {value}" for name, value in constants.items())


def html_table(frame: pd.DataFrame) -> Markup:
    """The HTML of one report table: the constant columns stated once above it, the
    table in a box that scrolls sideways when it is wider than the page, and past
    :data:`COLLAPSE_ABOVE` rows only the first :data:`PREVIEW_ROWS` until the reader
    opens all of them."""
    table = display_table(frame)
    parts = ['<div class="table-block">']
    if table.constants:
        items = "; ".join(f"<code>{escape(name)}</code> = {escape(value)}" for name, value in table.constants.items())
        parts.append(f'<p class="constants">{SAME_IN_EVERY_ROW}{items}</p>')
    if len(table.rows) > COLLAPSE_ABOVE:
        parts += [f'<div class="scroll preview">{_html_rows(table, table.rows[:PREVIEW_ROWS])}</div>',
                  f'<details class="all-rows"><summary>All {len(table.rows)} rows</summary>'
                  f'<div class="scroll">{_html_rows(table, table.rows)}</div></details>']
    else:
        parts.append(f'<div class="scroll">{_html_rows(table, table.rows)}</div>')
    parts.append("</div>")
    return Markup("\n".join(parts))
