"""Findings at a glance: the verdict per claim of the paper
(:func:`transferscope.analysis.findings`) as the report shows it, and as the captions
quote it."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _value_text(row: pd.Series) -> str:
    """The value, its interval in brackets and its p-value, where there are ones."""
    text = f"{row['value']:.3g}"
    if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
        text += f" [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"
    if np.isfinite(row["p_value"]):
        text += f" (p = {row['p_value']:.2g})"
    return text


def findings_display(findings: pd.DataFrame) -> pd.DataFrame:
    """The findings table as shown: (source, for several,) claim, section, target,
    verdict, value (with its interval or p-value) and n (with what it counts)."""
    sources = {"source": findings["source"].astype(str)} if "source" in findings else {}  # several sources
    return pd.DataFrame(sources | {
        "claim": findings["claim"], "section": findings["section"], "target": findings["target"].astype(str),
        "verdict": findings["verdict"], "value": [_value_text(row) for _, row in findings.iterrows()],
        "n": [f"{n} {kind}".strip() for n, kind in zip(findings["n"], findings["n_kind"])],
    })


def verdict_sentence(verdicts: pd.DataFrame | None) -> str:
    """The findings' verdicts on the claims of ``verdicts`` (rows of the findings table),
    one sentence per claim, as a caption quotes them; "" without rows."""
    if verdicts is None or verdicts.empty:
        return ""
    sentences = []
    for claim, rows in verdicts.groupby("claim", sort=False):
        targets = rows.groupby("verdict", sort=False)["target"].agg(lambda names: ", ".join(map(str, names)))
        sentences.append(f"Findings: “{claim}” " + "; ".join(f"{verdict} on {names}"
                                                            for verdict, names in targets.items()) + ".")
    return " ".join(sentences)
