"""The report's tables as people read them: one readable precision per column, settings
constant over a table stated once, long tables collapsed, block sizes in numeric order,
and log-axis tick labels as plain numbers."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from transferscope.analysis.feature_reuse import block_size_key
from transferscope.report.figures.feature_reuse import block_order
from transferscope.report.figures.findings import findings_display, verdict_sentence
from transferscope.report.page import _markdown_table
from transferscope.report.render import PLAIN_TEXT, plain_log_ticks
from transferscope.report.tables import COLLAPSE_ABOVE, PREVIEW_ROWS, display_table, format_column, html_table


def _cells(name: str, values) -> list[str]:
    return format_column(name, pd.Series(values))[0]


def test_each_kind_of_column_has_one_readable_precision():
    assert _cells("mcnemar_p", [1.146e-53, 0.4531, 1.0]) == ["1.1e-53", "4.5e-01", "1.0e+00"]
    assert _cells("score", [0.002828, 0.7384, 1.0]) == ["0.003", "0.738", "1.000"]
    assert _cells("common_fraction", [0.5, np.nan]) == ["0.500", "–"]
    assert _cells("n_parameters", [19902, 11_173_962]) == ["19,902", "11,173,962"]
    assert _cells("PT_final_score_count", [2.0, np.nan]) == ["2", "–"]  # a count made float by a missing value
    assert _cells("seed", [0, 1]) == ["0", "1"]
    assert _cells("final_score_relative_drop", [28.571429, 0.0]) == ["28.6", "0.0"]
    assert _cells("sigma", [0.0001, 0.05, 1.05]) == ["0.0001", "0.05", "1.05"]  # settings as typed
    assert _cells("distance", [22.157152, 0.041430, 19.0]) == ["22.157", "0.041", "19.000"]  # small values readable
    assert _cells("mu", [2.44245, 1.5, 1e-13]) == ["2.4425", "1.5000", "0.0000"]  # round-off does not widen the column
    assert _cells("epsilon", [0.04559, 0.050397]) == ["0.0456", "0.0504"]
    assert _cells("norm", [1.5123e8, 2.2567e8]) == ["1.51e+08", "2.26e+08"]
    assert _cells("recalibration_batches", [None, 8]) == ["–", "8"]  # ints and Nones stored as objects
    assert _cells("metric", ["accuracy", None]) == ["accuracy", "–"]
    assert format_column("in_basin", pd.Series([True, False])) == (["True", "False"], None)
    assert format_column("pair", pd.Series(["a|b"])) == (["a|b"], None)


def test_settings_constant_over_a_table_are_stated_once_and_mean_std_share_a_cell():
    frame = pd.DataFrame({"target": ["real", "real"], "block_size": ["16", "*"], "bn": ["follow", "follow"],
                          "PT_final_score_mean": [0.114583, 0.145833], "PT_final_score_std": [0.014731, np.nan],
                          "PT_final_score_count": [2, 1], "n_examples": [32, 32], "threshold": [1.05, 1.05],
                          "loss": [2.5, 2.5], "in_basin": [True, True], "job": ["reuse-1", "reuse-2"]})
    table = display_table(frame)
    assert table.constants == {"target": "real", "bn": "follow", "n_examples": "32", "threshold": "1.05"}
    # measured values stay in their rows even when equal; no job id
    assert table.columns == ["block_size", "PT_final_score mean ± std", "PT_final_score_count", "loss", "in_basin"]
    assert table.rows == [["16", "0.115 ± 0.015", "2", "2.500", "True"], ["*", "0.146", "1", "2.500", "True"]]
    assert table.numeric == [False, True, True, True, False]
    assert display_table(frame.iloc[:1]).constants == {}  # one row: nothing is repeated
    same = display_table(pd.DataFrame({"a": [1, 1], "b": ["x", "x"]}))
    assert same.constants == {} and same.rows == [["1", "x"], ["1", "x"]]  # some column must remain


def test_a_long_table_is_collapsed_after_its_first_rows_and_scrolls_in_its_own_box():
    frame = pd.DataFrame({"module": [f"layer{i}" for i in range(COLLAPSE_ABOVE + 5)], "bn": "follow", "score": 0.5})
    page = str(html_table(frame))
    preview, details = page.split("<details", 1)
    assert preview.count("<tr>") == PREVIEW_ROWS + 1 and "layer9" in preview and "layer10" not in preview
    assert details.count("<tr>") == len(frame) + 1 and f"All {len(frame)} rows" in details
    assert page.count('<div class="scroll') == 2
    assert '<p class="constants">Same in every row: <code>bn</code> = follow</p>' in page
    short = str(html_table(frame.iloc[:COLLAPSE_ABOVE]))
    assert "<details" not in short and short.count("<tr>") == COLLAPSE_ABOVE + 1


def test_cells_headers_and_constants_are_escaped():
    frame = pd.DataFrame({"label": ["<b>x</b>", "<b>x</b>"], "pair": ["P-T&P-T", "a|b"], "n_units": [1, 2]})
    page = str(html_table(frame))
    assert "<b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "<td>P-T&amp;P-T</td>" in page
    assert '<th class="num">n_<wbr>units</th>' in page


def test_markdown_tables_show_the_page_precision_and_the_constants():
    frame = pd.DataFrame({"pair": ["a|b", "c"], "bn": ["follow", "follow"], "mcnemar_p": [1.146e-53, 0.5]})
    text = _markdown_table(frame)
    assert text.startswith("Same in every row: bn = follow\n\n")
    assert "1.1e-53" in text and "5.0e-01" in text and "a\\|b" in text and "follow |" not in text


def _findings():
    nan = float("nan")
    return pd.DataFrame({"claim": ["A", "A", "B"], "section": ["Sec. 3.1"] * 3, "target": ["real", "clip", "real"],
                         "verdict": ["holds", "does not hold", "inconclusive"], "statistic": ["s"] * 3,
                         "value": [0.12345, -0.2, 0.5], "ci_low": [0.05, nan, nan], "ci_high": [0.2, nan, nan],
                         "p_value": [nan, 0.031, nan], "n": [3, 400, 1], "n_kind": ["seeds per role", "examples", ""],
                         "rule": ["r"] * 3})


def test_findings_show_each_verdict_styled_with_its_interval_or_p_value():
    shown = findings_display(_findings())
    assert list(shown.columns) == ["claim", "section", "target", "verdict", "value", "n"]
    assert list(shown["value"]) == ["0.123 [0.05, 0.2]", "-0.2 (p = 0.031)", "0.5"]
    assert list(shown["n"]) == ["3 seeds per role", "400 examples", "1"]
    html = html_table(shown)
    for verdict, css in (("holds", "holds"), ("does not hold", "fails"), ("inconclusive", "inconclusive")):
        assert f'<td class="verdict {css}">{verdict}</td>' in html
    markdown = _markdown_table(shown)
    assert "| **holds** " in markdown and "| **does not hold** " in markdown and "| *inconclusive* " in markdown
    assert verdict_sentence(_findings()) == ("Findings: “A” holds on real; does not hold on clip. "
                                             "Findings: “B” inconclusive on real.")
    assert verdict_sentence(None) == ""


def test_block_sizes_run_from_the_unshuffled_size_down_with_star_last():
    assert block_order(["*", "1", "2", "32", "8"]) == ["32", "8", "2", "1", "*"]
    assert sorted([4, "*", 16, "2"], key=block_size_key) == [16, 4, "2", "*"]


def test_log_axis_ticks_are_plain_numbers_under_plain_text():
    with matplotlib.rc_context(PLAIN_TEXT):
        figure = Figure()
        ax = figure.subplots()
        ax.set_yscale("log")
        ax.plot([1, 2, 3], [0.01, 0.5, 30])
        plain_log_ticks(figure)
        FigureCanvasAgg(figure).draw()
    labels = [label.get_text() for label in ax.get_yticklabels() if label.get_text()]
    assert {"0.01", "0.1", "1", "10"} <= set(labels) and not any("$" in label for label in labels)
