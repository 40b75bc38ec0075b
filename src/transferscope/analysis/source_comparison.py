"""Several sources compared on one target: which pre-trained model transfers best, and
how much of it is reused (issue 15). Each source is one one-source study (its P, its
P-T runs); the RI-T runs, shared by all, are the floor ("random init").

Per target and source: the final score and optimization speed of its P-T seeds (Sec. 3.1
of Neyshabur et al. 2020), the CKA between P and its P-T models at each module (feature
reuse, Table 1) and the L2 distance between them (Table 2)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from .claims import (
    NEGLIGIBLE_SCORE,
    SINGLE_SEED_SCORE_MARGIN,
    _difference,
    _greater,
    _interval_text,
    _main_runs,
    _pair_type,
    _row,
)

RANDOM_INIT = "random init"  # the RI-T runs, the floor every source is measured against
MEASURES = {"final_score": "final test score", "optimization_speed": "optimization speed"}
COMPARISON_COLUMNS = ["target", "source", "metric", "n_seeds", "final_score_mean", "final_score_std",
                      "optimization_speed_mean", "optimization_speed_std", "cka_p_pt", "distance_p_pt"]


def _seeds(per_source: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """The main P-T runs of every source and the RI-T runs once (as ``random init``):
    one row per run, with its ``source``."""
    frames, floor = [], None
    for label, tables in per_source.items():
        runs = tables.get("runs")
        if runs is None or runs.empty:
            continue
        main = _main_runs(runs)
        frames.append(main[main["role"] == "P-T"].assign(source=label))
        floor = main[main["role"] == "RI-T"].assign(source=RANDOM_INIT) if floor is None else floor
    return pd.concat(frames + ([floor] if floor is not None else []), ignore_index=True) if frames else pd.DataFrame()


def _p_to_pt(tables: Mapping[str, pd.DataFrame], name: str, value: str, module: str) -> pd.DataFrame:
    """Rows of table ``name`` between P and a P-T model (for CKA: a module against
    itself), averaged over the P-T seeds: ``target``, ``module``, ``value``."""
    frame = tables.get(name)
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["target", "module", value])
    types = [_pair_type(a, b) for a, b in zip(frame["model_a"], frame["model_b"])]
    frame = frame[[t == "P-T&P" for t in types]]
    if module != "module":
        frame = frame[frame["module_a"] == frame["module_b"]].rename(columns={"module_a": "module"})
    frame = frame[frame["module"] != "network"] if "module" in frame else frame
    return frame.groupby(["target", "module"], sort=False, as_index=False)[value].mean()


def reuse_by_module(per_source: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """Per target, source and module: CKA between P and its P-T models (the module
    against itself, mean over seeds) and their L2 distance (mean over seeds).

    Returns
    -------
    pandas.DataFrame
        ``target``, ``source``, ``module``, ``cka`` and ``distance`` (NaN where the
        study has no such table).
    """
    frames = []
    for label, tables in per_source.items():
        cka = _p_to_pt(tables, "cka", "cka", "module_a")
        distance = _p_to_pt(tables, "distance", "distance", "module")
        both = cka.merge(distance, on=["target", "module"], how="outer", sort=False)
        order = list(dict.fromkeys([*cka["module"], *distance["module"]]))  # the partition's order, not the alphabet
        frames.append(both.sort_values("module", key=lambda names: names.map(order.index), kind="stable")
                      .assign(source=label))
    if not frames:
        return pd.DataFrame(columns=["target", "source", "module", "cka", "distance"])
    return pd.concat(frames, ignore_index=True)[["target", "source", "module", "cka", "distance"]]


def compare_sources(per_source: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per target and source (and ``random init``, the shared RI-T runs): mean
    and std over seeds of the final score and optimization speed, and the mean over
    modules of :func:`reuse_by_module`'s CKA and distance between P and P-T.

    Parameters
    ----------
    per_source : mapping of str to mapping of str to pandas.DataFrame
        Each source's result tables (as :func:`~transferscope.study.results.collect_results`
        makes them for a one-source study), by source label.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COMPARISON_COLUMNS`, sources in the given order, the floor last.
    """
    runs = _seeds(per_source)
    if runs.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    stats = runs.groupby(["target", "source"], sort=False).agg(
        metric=("metric", "first"), n_seeds=("seed", "size"),
        final_score_mean=("final_score", "mean"), final_score_std=("final_score", "std"),
        optimization_speed_mean=("optimization_speed", "mean"),
        optimization_speed_std=("optimization_speed", "std")).reset_index()
    reuse = reuse_by_module(per_source).groupby(["target", "source"], as_index=False)[["cka", "distance"]].mean()
    reuse = reuse.rename(columns={"cka": "cka_p_pt", "distance": "distance_p_pt"})
    return stats.merge(reuse, on=["target", "source"], how="left")[COMPARISON_COLUMNS]


def best_source_rows(per_source: Mapping[str, Mapping[str, pd.DataFrame]]) -> list[dict]:
    """Findings rows "<source> gives the highest <measure>" per target and measure.

    Rule: the source (or ``random init``) with the highest mean over its seeds against
    the runner-up, as :func:`~transferscope.analysis.claims.pt_ends_higher` compares P-T
    with RI-T: Welch's t-interval over seeds of the difference; holds if it lies above
    0, does not hold if below :data:`~.claims.NEGLIGIBLE_SCORE` (the two tie), else
    inconclusive; with one seed per source the difference must exceed
    :data:`~.claims.SINGLE_SEED_SCORE_MARGIN`.
    """
    runs = _seeds(per_source)
    rows = []
    for target, group in (runs.groupby("target", sort=False) if not runs.empty else ()):
        for measure, words in MEASURES.items():
            means = group.groupby("source", sort=False)[measure].mean().sort_values(ascending=False, kind="stable")
            if len(means) < 2 or not np.isfinite(means.iloc[:2]).all():
                continue
            best, second = means.index[0], means.index[1]
            estimate = _difference(group.loc[group["source"] == best, measure],
                                   group.loc[group["source"] == second, measure], "seeds per source")
            verdict = _greater(estimate, negligible=NEGLIGIBLE_SCORE, margin=SINGLE_SEED_SCORE_MARGIN)
            statistic = (f"{words} ({group['metric'].iloc[0]}) of {best} minus the runner-up {second}: "
                         f"{means.iloc[0]:.3f} vs {means.iloc[1]:.3f}; "
                         f"{_interval_text(estimate, SINGLE_SEED_SCORE_MARGIN)}")
            rule = (f"Welch t over seeds, best source against the runner-up: holds if the interval lies above 0, "
                    f"does not hold if below {NEGLIGIBLE_SCORE}; one seed: the difference must exceed "
                    f"±{SINGLE_SEED_SCORE_MARGIN}")
            rows.append(_row(f"{best} gives the highest {words}", "sources compared", target, verdict, statistic,
                             estimate, rule) | {"source": best})
    return rows
