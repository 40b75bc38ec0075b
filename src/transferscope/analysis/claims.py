"""Findings at a glance: for each claim of Neyshabur, Sedghi & Zhang (2020) that a
study's tables can test, a verdict (``holds``, ``does not hold``, ``inconclusive``)
computed from the numbers with their uncertainty. This module is the one place where
the decision rules live; the report's captions quote its verdicts.

Input: the result tables of a study, ``{name: DataFrame}`` as
:func:`transferscope.study.results.collect_results` returns them (``runs``,
``feature_reuse``, ``checkpoints``, ``mistakes``, ``cka``, ``distance``,
``interpolation``, ``interpolation_barriers``, ``basin``, ``soup``, ``criticality``), each with a
``target`` column; models are named by role (``"P"``, ``"P-T:s0"``, ``"RI-T:s1"``,
``"P-T:s0:best"``). A claim whose table is missing gets no row.

Uncertainty (every interval is two-sided at level 1 − :data:`ALPHA`):

- over seeds: the difference of two means with Welch's t-interval (a linear contrast
  of independent group means with Welch–Satterthwaite degrees of freedom);
- over examples: the bootstrap intervals the mistakes table carries, McNemar's test
  of its paired 2x2 tables, a binomial standard error of an accuracy;
- a claim backed by one seed (or one model pair) has no interval: it is decided only
  when the effect exceeds a stated margin (the ``SINGLE_*`` constants), else it is
  ``inconclusive``; its ``ci_low``/``ci_high`` are NaN.

Everything is deterministic (exact tests, closed-form intervals; the one permutation
test is exact up to 8 modules and seeded beyond).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..models import NETWORK
from ..roles import Role
from .feature_reuse import _require, block_size_key
from .soups import SOUP_PREFIX

# ----------------------------------------------------------------- thresholds
ALPHA = 0.05  # level of every test; intervals are 95%
# Scores (accuracy or mean AUC) and fractions of units are in [0, 1].
NEGLIGIBLE_SCORE = 0.01  # a difference under one point of accuracy/AUC is no advantage worth the name
SINGLE_SEED_SCORE_MARGIN = 0.05  # one seed on ~1,000 test images varies by 2-3 points (DESIGN.md §7): ask twice that
NEGLIGIBLE_FRACTION = 0.01  # uncommon mistakes: one percent of the units
NEGLIGIBLE_CKA = 0.02  # CKA differences under 0.02 are within estimator noise at a few hundred examples
SINGLE_PAIR_CKA_MARGIN = 0.05  # one pair of models per type: CKA must differ by more than this to decide
FLOOR_MARGIN = 0.1  # a module whose chance floor is within 0.1 of P-T&P-T's CKA shows no room for transfer
NEGLIGIBLE_DISTANCE_RATIO = 1.05  # RI-T pairs less than 5% farther than P-T pairs: no ordering worth the name
SINGLE_PAIR_DISTANCE_RATIO = 1.5  # one pair per type: the distances must differ by more than a factor 1.5
BARRIER_TOLERANCE = 0.05  # an error rise above the chord of more than 5 points is a barrier (Fig. 4: tens of points)
SINGLE_PAIR_BARRIER_MARGIN = 0.02  # one pair without a binomial error: ±2 points around its barrier
SOUP_TOLERANCE = BARRIER_TOLERANCE  # a two-seed soup is the path's midpoint: its drop is the barrier at λ = ½
PLATEAU_TOLERANCE = 0.01  # later checkpoints "stop helping" when they add under one point of final score
SOURCE_RISE = 0.02  # the source score "still rises" when it gains at least two points after the plateau starts
MAX_EXACT_MODULES = 8  # permutation test of Spearman's rho: exact up to 8! orderings, else seeded resamples

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
FLOOR_MODEL = "RI"  # CKA rows against a freshly initialised network name it "RI" (or "RI:<tag>")
COLUMNS = ["claim", "section", "target", "verdict", "statistic", "value", "ci_low", "ci_high", "p_value", "n",
           "n_kind", "rule"]
_Z = float(stats.norm.ppf(1 - ALPHA / 2))
_KIND_ORDER = ("P-T", "RI-T", "P")


# ----------------------------------------------------------------- estimates
@dataclass(frozen=True)
class Estimate:
    """A number with its interval (NaN when there is none), p-value, and what backs it."""

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    n: int = 0
    n_kind: str = ""

    def bounds(self, margin: float) -> tuple[float, float]:
        """The interval, or ``value ± margin`` when there is none (one seed or pair)."""
        if np.isfinite(self.ci_low) and np.isfinite(self.ci_high):
            return self.ci_low, self.ci_high
        return self.value - margin, self.value + margin

    def scaled(self, function: Callable[[float], float]) -> Estimate:
        """The same estimate on another (monotone increasing) scale."""
        return Estimate(function(self.value), function(self.ci_low), function(self.ci_high), self.p_value, self.n,
                        self.n_kind)


def _contrast(terms: Sequence[tuple[float, float, float, float]], n_kind: str = "seeds") -> Estimate:
    """Σ sign·mean of independent group means, with Welch's t-interval.

    Parameters
    ----------
    terms : sequence of (sign, mean, std, count)
        One per group: the sign of its mean in the contrast, its mean, sample std
        (ddof 1) and number of values.
    n_kind : str
        What the counts count.

    Returns
    -------
    Estimate
        ``value`` = Σ sign·mean; with every count ≥ 2, the interval
        ``value ± t_{1−α/2, ν}·se``, se² = Σ std²/count, Welch–Satterthwaite
        ν = (Σ v)² / Σ v²/(count − 1) with v = std²/count, and the two-sided p-value of
        value = 0; otherwise no interval. ``n`` is the smallest count.

    References
    ----------
    Welch (1947); Satterthwaite (1946).
    """
    value = float(sum(sign * mean for sign, mean, _, _ in terms))
    counts = [int(count) for *_, count in terms]
    if min(counts) < 2:
        return Estimate(value, n=min(counts), n_kind=n_kind)
    variances = [std**2 / count for _, _, std, count in terms]
    se = math.sqrt(sum(variances))
    if se == 0:
        return Estimate(value, value, value, float(value == 0), min(counts), n_kind)
    df = sum(variances) ** 2 / sum(v**2 / (count - 1) for v, count in zip(variances, counts))
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * se
    return Estimate(value, value - half, value + half, float(2 * stats.t.sf(abs(value) / se, df)), min(counts),
                    n_kind)


def _summary(values: Iterable[float]) -> tuple[float, float, int]:
    array = np.asarray(list(values), dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan, len(array)


def _difference(a: Iterable[float], b: Iterable[float], n_kind: str = "seeds") -> Estimate:
    """mean(a) − mean(b) with Welch's t-interval (:func:`_contrast`); no interval when a
    group has one value."""
    return _contrast([(1, *_summary(a)), (-1, *_summary(b))], n_kind)


def _greater(estimate: Estimate, *, negligible: float, margin: float) -> str:
    """Verdict on "the effect is positive": ``holds`` when the interval lies above 0,
    ``does not hold`` when it lies below ``negligible`` (no advantage worth the name),
    else ``inconclusive``; without an interval, ``value ± margin`` stands for it."""
    low, high = estimate.bounds(margin)
    return HOLDS if low > 0 else FAILS if high < negligible else INCONCLUSIVE


def _every(verdicts: Iterable[str]) -> str:
    """A claim made of parts: ``holds`` when all hold, ``does not hold`` when one does
    not, else ``inconclusive``."""
    verdicts = list(verdicts)
    return HOLDS if all(v == HOLDS for v in verdicts) else FAILS if FAILS in verdicts else INCONCLUSIVE


# ----------------------------------------------------------------- model names
def _role(name: object) -> Role | None:
    try:
        return Role.parse(str(name))
    except ValueError:
        return None


def _pair_type(model_a: object, model_b: object, sep: str = "&") -> str | None:
    """The paper's name of a pair of two distinct final models (``"P-T&RI-T"``,
    ``"P-T&P"``…), kinds in the order P-T, RI-T, P; None for a best checkpoint, a model
    against itself, or a name that is no role."""
    a, b = _role(model_a), _role(model_b)
    if a is None or b is None or a.checkpoint or b.checkpoint or a == b:
        return None
    return sep.join(sorted((a.kind, b.kind), key=_KIND_ORDER.index))


def _with_pair_types(frame: pd.DataFrame, sep: str = "&") -> pd.DataFrame:
    types = [_pair_type(a, b, sep) for a, b in zip(frame["model_a"], frame["model_b"])]
    return frame.assign(pair_type=types).dropna(subset=["pair_type"])


def _targets(frame: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    return frame.groupby("target", sort=False)


def _table(tables: Mapping[str, pd.DataFrame], name: str, columns: Iterable[str], fix: str) -> pd.DataFrame | None:
    """Table ``name`` (None when the study has none or it is empty), its columns checked."""
    frame = tables.get(name)
    if frame is None or frame.empty:
        return None
    _require(frame, set(columns) | {"target"}, f"the {name} table", fix)
    return frame


_CLAIM_SECTIONS = """
    Parameters
    ----------
    tables : mapping of str to pandas.DataFrame
        The study's result tables by name (:func:`findings`).

    Returns
    -------
    pandas.DataFrame
        This claim's rows of the findings table (columns :data:`COLUMNS`), one per
        target; empty when the table it needs is missing.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), the section named above.
    """


def _claim(function: Callable[[Mapping[str, pd.DataFrame]], pd.DataFrame]):
    """Register a claim function's docstring sections (the same for every claim)."""
    function.__doc__ = (function.__doc__ or "").rstrip() + "\n" + _CLAIM_SECTIONS
    return function


def _row(claim: str, section: str, target: object, verdict: str, statistic: str, estimate: Estimate,
         rule: str) -> dict:
    return {"claim": claim, "section": section, "target": target, "verdict": verdict, "statistic": statistic,
            "value": estimate.value, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
            "p_value": estimate.p_value, "n": estimate.n, "n_kind": estimate.n_kind, "rule": rule}


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def _interval_text(estimate: Estimate, margin: float | str) -> str:
    """The interval in words, or the margin that stands for it (a number: ``±margin``)."""
    if np.isfinite(estimate.ci_low):
        return f"{100 * (1 - ALPHA):g}% interval [{estimate.ci_low:.3g}, {estimate.ci_high:.3g}]"
    return f"no interval (one value per group): decided with a {f'±{margin:g}' if isinstance(margin, float) else margin} margin"


# ----------------------------------------------------------------- Sec. 3.1: training runs
RUN_COLUMNS = ("kind", "role", "seed", "permutation_seed", "from_epoch", "metric", "final_score", "optimization_speed")


def _main_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The unshuffled P-T and RI-T runs of the main comparison: fine-tuning runs without
    a block shuffle (``permutation_seed`` NaN), P-T from the last pre-training epoch
    (``from_epoch`` is NaN for every P-T run when P is brought as weights without a
    trajectory: then all of them)."""
    tuned = runs[(runs["kind"] == "finetune") & runs["permutation_seed"].isna()]
    is_pt = tuned["role"] == "P-T"
    latest = tuned.loc[is_pt, "from_epoch"].max()
    from_latest = tuned["from_epoch"].isna() if pd.isna(latest) else tuned["from_epoch"] == latest
    return tuned[~is_pt | from_latest]


def _mcnemar(tables: Mapping[str, pd.DataFrame], target: object, pt: pd.DataFrame, rit: pd.DataFrame) -> dict | None:
    """The mistakes row of the single P-T seed against the single RI-T seed (class-index
    targets only: the test of error rates on the same examples), or None."""
    frame = tables.get("mistakes")
    if frame is None or frame.empty or not {"mcnemar_p", "error_a", "error_b", "unit"} <= set(frame.columns):
        return None
    names = {str(Role("P-T", int(pt["seed"].iloc[0]))), str(Role("RI-T", int(rit["seed"].iloc[0])))}
    for row in frame[frame["target"] == target].to_dict("records"):
        if {row["model_a"], row["model_b"]} == names and row["unit"] == "example":
            return row
    return None


def _pt_beats_rit(tables: Mapping[str, pd.DataFrame], measure: str, claim: str, words: str,
                  use_mcnemar: bool) -> pd.DataFrame:
    runs = _table(tables, "runs", RUN_COLUMNS, "pass collect_results(...)['runs']")
    if runs is None:
        return _frame([])
    rows = []
    for target, group in _targets(_main_runs(runs)):
        pt, rit = (group[group["role"] == kind] for kind in ("P-T", "RI-T"))
        if pt.empty or rit.empty:
            continue
        estimate = _difference(pt[measure], rit[measure], "seeds per role")
        verdict = _greater(estimate, negligible=NEGLIGIBLE_SCORE, margin=SINGLE_SEED_SCORE_MARGIN)
        metric = group["metric"].iloc[0]
        statistic = (f"{words} ({metric}) of P-T minus RI-T: {pt[measure].mean():.3f} vs {rit[measure].mean():.3f} "
                     f"over {len(pt)} and {len(rit)} seed(s); {_interval_text(estimate, SINGLE_SEED_SCORE_MARGIN)}")
        rule = (f"Welch t over seeds: holds if the interval lies above 0, does not hold if below {NEGLIGIBLE_SCORE}; "
                f"one seed: the difference must exceed ±{SINGLE_SEED_SCORE_MARGIN}")
        paired = _mcnemar(tables, target, pt, rit) if use_mcnemar and estimate.n < 2 else None
        if paired is not None:
            p, pt_is_a = paired["mcnemar_p"], paired["model_a"].startswith("P-T")
            error_gap = (paired["error_b"] - paired["error_a"]) * (1 if pt_is_a else -1)
            agrees = p < ALPHA and (error_gap > 0) == (verdict == HOLDS)
            verdict = verdict if verdict == INCONCLUSIVE or agrees else INCONCLUSIVE
            estimate = Estimate(estimate.value, p_value=float(p), n=int(paired["n_examples"]),
                                n_kind="examples (one seed per role)")
            statistic += (f"; McNemar on the same {int(paired['n_examples'])} test examples: error rates differ by "
                          f"{error_gap:.3f}, p = {p:.2g}")
            rule += f", and McNemar's test (p < {ALPHA}) must agree"
        rows.append(_row(claim, "Sec. 3.1, Fig. 2", target, verdict, statistic, estimate, rule))
    return _frame(rows)


@_claim
def pt_ends_higher(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """P-T ends higher than RI-T (final test score; Sec. 3.1, Fig. 2).

    Rule: the mean final score of the P-T seeds minus that of the RI-T seeds (main,
    unshuffled runs of the ``runs`` table), with Welch's t-interval over seeds; holds if
    the interval lies above 0, does not hold if it lies below :data:`NEGLIGIBLE_SCORE`
    (one point: P-T has no advantage worth the name), else inconclusive. With one seed
    per role there is no interval: the difference must exceed
    :data:`SINGLE_SEED_SCORE_MARGIN` (one seed on ~1,000 test images varies by 2-3
    points), and where the mistakes table pairs those two models on class-index
    targets, McNemar's test of their error rates on the same examples must agree
    (p < :data:`ALPHA`, same sign), else inconclusive.
    """
    return _pt_beats_rit(tables, "final_score", "P-T ends higher than RI-T", "final test score", True)


@_claim
def pt_optimizes_faster(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """P-T optimizes faster than RI-T (optimization speed = mean training score over the
    epochs; Sec. 3.1, Fig. 2).

    Rule: as :func:`pt_ends_higher` on ``optimization_speed`` (Welch over seeds, 0 and
    :data:`NEGLIGIBLE_SCORE` bounds, :data:`SINGLE_SEED_SCORE_MARGIN` for one seed); no
    McNemar (the speed is a mean over epochs, not one test pass).
    """
    return _pt_beats_rit(tables, "optimization_speed", "P-T optimizes faster than RI-T", "optimization speed", False)


# ----------------------------------------------------------------- Sec. 3.1: block shuffle
def _group_stats(row: pd.Series, role: str, measure: str) -> tuple[float, float, float]:
    return row[f"{role}_{measure}_mean"], row[f"{role}_{measure}_std"], row[f"{role}_{measure}_count"]


def _blocks(frame: pd.DataFrame) -> tuple[str | None, str | None]:
    """(unshuffled block = the largest, smallest block size below it or '*' when there
    is no other); None where the sweep has none."""
    sizes = {str(size) for size in frame["block_size"]}
    numeric = sorted((s for s in sizes if s != "*"), key=block_size_key)  # the unshuffled size first
    if not numeric:
        return None, None
    return numeric[0], numeric[-1] if len(numeric) > 1 else "*" if "*" in sizes else None


def _feature_reuse(tables: Mapping[str, pd.DataFrame], measure: str) -> pd.DataFrame | None:
    columns = [f"{role}_{measure}_{stat}" for role in ("PT", "RIT") for stat in ("mean", "std", "count")]
    frame = _table(tables, "feature_reuse", ["block_size", "metric", *columns], "pass feature_reuse_table(...)")
    return None if frame is None else frame.assign(block_size=frame["block_size"].astype(str))


@_claim
def advantage_shrinks_with_block_size(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The P-T advantage in final score shrinks as blocks get smaller (Sec. 3.1, Fig. 3).

    Rule: the gap (P-T − RI-T final score) on unshuffled images (the largest block of
    the sweep) minus the gap at the smallest block size (``"*"`` when the sweep has no
    other), with Welch's t-interval over the seeds of the four groups; holds if it lies
    above 0, does not hold if below :data:`NEGLIGIBLE_SCORE`; one seed per group:
    decided only beyond ±:data:`SINGLE_SEED_SCORE_MARGIN`.
    """
    frame = _feature_reuse(tables, "final_score")
    if frame is None:
        return _frame([])
    rows = []
    for target, group in _targets(frame):
        unshuffled, small = _blocks(group)
        if small is None:
            continue
        by_block = group.set_index("block_size")
        first, last = by_block.loc[unshuffled], by_block.loc[small]
        terms = [(sign * side, *_group_stats(row, role, "final_score"))
                 for sign, row in ((1, first), (-1, last)) for side, role in ((1, "PT"), (-1, "RIT"))]
        estimate = _contrast(terms, "seeds per role and block")
        gaps = [row["PT_final_score_mean"] - row["RIT_final_score_mean"] for row in (first, last)]
        statistic = (f"P-T − RI-T final {group['metric'].iloc[0]} unshuffled (block {unshuffled}: {gaps[0]:.3f}) "
                     f"minus at block {small} ({gaps[1]:.3f}); "
                     f"{_interval_text(estimate, SINGLE_SEED_SCORE_MARGIN)}")
        rule = (f"Welch t over seeds: holds if the gap shrinks (interval above 0), does not hold if the interval lies "
                f"below {NEGLIGIBLE_SCORE}; one seed: beyond ±{SINGLE_SEED_SCORE_MARGIN}")
        rows.append(_row("The P-T advantage in final score shrinks as blocks get smaller", "Sec. 3.1, Fig. 3",
                         target, _greater(estimate, negligible=NEGLIGIBLE_SCORE, margin=SINGLE_SEED_SCORE_MARGIN),
                         statistic, estimate, rule))
    return _frame(rows)


@_claim
def speed_advantage_on_shuffled_pixels(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """P-T keeps an optimization-speed advantage on fully shuffled images (block ``"*"``:
    every scalar permuted; Sec. 3.1, Fig. 3), evidence that low-level statistics transfer.

    Rule: P-T − RI-T optimization speed at block ``"*"``, Welch's t-interval over seeds;
    holds above 0, does not hold below :data:`NEGLIGIBLE_SCORE`; one seed: beyond
    ±:data:`SINGLE_SEED_SCORE_MARGIN`. No row when the sweep has no ``"*"``.
    """
    frame = _feature_reuse(tables, "optimization_speed")
    if frame is None:
        return _frame([])
    rows = []
    for target, group in _targets(frame[frame["block_size"] == "*"]):
        row = group.iloc[0]
        estimate = _contrast([(1, *_group_stats(row, "PT", "optimization_speed")),
                             (-1, *_group_stats(row, "RIT", "optimization_speed"))], "seeds per role")
        statistic = (f"optimization speed ({row['metric']}) of P-T minus RI-T at block *: "
                     f"{row['PT_optimization_speed_mean']:.3f} vs {row['RIT_optimization_speed_mean']:.3f}; "
                     f"{_interval_text(estimate, SINGLE_SEED_SCORE_MARGIN)}")
        rule = (f"Welch t over seeds: holds if the interval lies above 0, does not hold if below {NEGLIGIBLE_SCORE}; "
                f"one seed: beyond ±{SINGLE_SEED_SCORE_MARGIN}")
        rows.append(_row("P-T keeps an optimization-speed advantage on fully shuffled images", "Sec. 3.1, Fig. 3",
                         target, _greater(estimate, negligible=NEGLIGIBLE_SCORE, margin=SINGLE_SEED_SCORE_MARGIN),
                         statistic, estimate, rule))
    return _frame(rows)


# ----------------------------------------------------------------- Sec. 3.2: mistakes
MISTAKE_COLUMNS = ("model_a", "model_b", "unit", "n_units", "uncommon_fraction", "uncommon_ci_low",
                   "uncommon_ci_high", "confidence")


def _uncommon(rows: pd.DataFrame) -> tuple[float, float]:
    """(mean uncommon fraction over pairs, its variance): the examples' part from the
    bootstrap intervals (normal width; pairs share the examples, so the mean's standard
    error is bounded by the mean of theirs) plus, with several pairs, the seeds' part
    (variance over pairs / count)."""
    widths = rows["uncommon_ci_high"] - rows["uncommon_ci_low"]
    se_examples = float((widths / (2 * stats.norm.ppf((1 + rows["confidence"]) / 2))).mean())
    seeds = float(rows["uncommon_fraction"].var(ddof=1)) / len(rows) if len(rows) > 1 else 0.0
    return float(rows["uncommon_fraction"].mean()), se_examples**2 + seeds


@_claim
def pt_pairs_share_mistakes(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Two P-T models make fewer uncommon mistakes (one right, the other wrong) than
    P-T/RI-T and RI-T/RI-T pairs (Sec. 3.2).

    Rule: for each other pair type X, the mean uncommon fraction of X minus that of
    P-T/P-T, with a normal interval whose variance adds, for both types, the examples'
    part (from the bootstrap intervals of the mistakes table) and, where a type has
    several pairs, the seeds' part; holds if both intervals lie above 0, does not hold
    if one lies below :data:`NEGLIGIBLE_FRACTION` (one percent of the units), else
    inconclusive. The row reports the comparison with the lowest interval.
    """
    frame = _table(tables, "mistakes", MISTAKE_COLUMNS, "pass mistakes() output with target")
    if frame is None:
        return _frame([])
    rows = []
    for target, group in _targets(_with_pair_types(frame, sep="/")):
        types = {name: part for name, part in group.groupby("pair_type")}
        others = [name for name in ("P-T/RI-T", "RI-T/RI-T") if name in types]
        if "P-T/P-T" not in types or not others:
            continue
        base, base_var = _uncommon(types["P-T/P-T"])
        results = []
        for name in others:
            mean, variance = _uncommon(types[name])
            se = math.sqrt(variance + base_var)
            value = mean - base
            p = float(2 * stats.norm.sf(abs(value) / se)) if se > 0 else float(value == 0)
            estimate = Estimate(value, value - _Z * se, value + _Z * se, p, int(group["n_units"].min()),
                                "example-label units" if group["unit"].iloc[0] == "example-label" else "examples")
            results.append((name, estimate, _greater(estimate, negligible=NEGLIGIBLE_FRACTION, margin=0.0)))
        name, estimate, _ = min(results, key=lambda item: item[1].ci_low)
        counts = ", ".join(f"{len(part)} {kind}" for kind, part in types.items())
        statistic = (f"uncommon mistakes (fraction of units) of {name} minus P-T/P-T: "
                     f"{estimate.value + base:.3f} vs {base:.3f}; pairs: {counts}; "
                     f"{_interval_text(estimate, 0.0)}")
        rule = (f"normal interval (bootstrap over examples + spread over pairs) of uncommon(X) − uncommon(P-T/P-T) "
                f"for X = P-T/RI-T and RI-T/RI-T: holds if all lie above 0, does not hold if one lies below "
                f"{NEGLIGIBLE_FRACTION}")
        rows.append(_row("P-T/P-T pairs make fewer uncommon mistakes than P-T/RI-T and RI-T/RI-T pairs", "Sec. 3.2",
                         target, _every(v for *_, v in results), statistic, estimate, rule))
    return _frame(rows)


# ----------------------------------------------------------------- Sec. 3.2, Table 1: CKA
CKA_COLUMNS = ("model_a", "model_b", "module_a", "module_b", "cka")
CKA_OTHERS = ("P-T&P", "P-T&RI-T", "RI-T&RI-T")


def _is_floor(name: object) -> bool:
    return str(name).split(":", 1)[0] == FLOOR_MODEL


def cka_module_verdicts(cka: pd.DataFrame) -> pd.DataFrame:
    """Per (target, module): is P-T&P-T the most similar pair by CKA?

    Parameters
    ----------
    cka : pandas.DataFrame
        :func:`transferscope.analysis.similarity.compare_representations` output with
        ``target``; rows where one model is :data:`FLOOR_MODEL` (a freshly initialised
        network of the same architecture) are chance floors.

    Returns
    -------
    pandas.DataFrame
        One row per (target, module) with P-T&P-T pairs: ``verdict``, the comparison
        with the lowest interval (``other`` pair type, ``value`` = CKA(P-T&P-T) −
        CKA(other) of the means over pairs, ``ci_low``, ``ci_high``, ``p_value``, ``n``
        = the fewest pairs of a type), ``pt_pt`` (mean CKA of P-T&P-T) and ``floor``
        (the highest CKA against a fresh network; NaN without floor rows).

    Notes
    -----
    Rule: for each other pair type (P-T&P, P-T&RI-T, RI-T&RI-T) the difference of mean
    CKA over pairs with Welch's t-interval; holds when every interval lies above 0, does
    not hold when one lies below :data:`NEGLIGIBLE_CKA`; with one pair in a type, the
    difference must exceed ±:data:`SINGLE_PAIR_CKA_MARGIN`. Inconclusive whatever the
    pairs where the chance floor is within :data:`FLOOR_MARGIN` of P-T&P-T's CKA: there
    CKA is high for reasons that have nothing to do with transfer (issue 11: a stem's
    CKA of 0.9999 between P and a fresh network).
    """
    _require(cka, set(CKA_COLUMNS) | {"target"}, "the cka table", "pass compare_representations() output with target")
    same = cka[(cka["module_a"] == cka["module_b"]) & (cka["model_a"] != cka["model_b"])]
    floors = same[[_is_floor(a) or _is_floor(b) for a, b in zip(same["model_a"], same["model_b"])]]
    pairs = _with_pair_types(same)
    rows = []
    for (target, module), group in pairs.groupby(["target", "module_a"], sort=False):
        types = {name: part["cka"] for name, part in group.groupby("pair_type")}
        others = [name for name in CKA_OTHERS if name in types]
        if "P-T&P-T" not in types or not others:
            continue
        results = []
        for name in others:
            estimate = _difference(types["P-T&P-T"], types[name], "model pairs per type")
            results.append((name, estimate, _greater(estimate, negligible=NEGLIGIBLE_CKA, margin=SINGLE_PAIR_CKA_MARGIN)))
        name, estimate, _ = min(results, key=lambda item: item[1].bounds(SINGLE_PAIR_CKA_MARGIN)[0])
        floor_values = floors.loc[(floors["target"] == target) & (floors["module_a"] == module), "cka"]
        floor = float(floor_values.max()) if len(floor_values) else math.nan
        pt_pt = float(types["P-T&P-T"].mean())
        verdict = INCONCLUSIVE if floor >= pt_pt - FLOOR_MARGIN else _every(v for *_, v in results)
        rows.append({"target": target, "module": module, "verdict": verdict, "other": name,
                     "value": estimate.value, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
                     "p_value": estimate.p_value, "n": min(len(values) for values in types.values()),
                     "pt_pt": pt_pt, "floor": floor})
    return pd.DataFrame(rows, columns=["target", "module", "verdict", "other", "value", "ci_low", "ci_high", "p_value",
                                       "n", "pt_pt", "floor"])


@_claim
def pt_pairs_most_similar(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """P-T&P-T is the most similar pair by CKA at each module (Sec. 3.2, Table 1).

    Rule: :func:`cka_module_verdicts` per module; the claim holds when it holds at every
    module, does not hold when it does not hold at one, else inconclusive (a module
    whose chance floor is within :data:`FLOOR_MARGIN` of P-T&P-T makes it
    inconclusive). The row reports the module with the lowest interval.
    """
    frame = tables.get("cka")
    if frame is None or frame.empty:
        return _frame([])
    per_module = cka_module_verdicts(frame)
    has_floor = any(_is_floor(a) or _is_floor(b) for a, b in zip(frame["model_a"], frame["model_b"]))
    rows = []
    for target, group in _targets(per_module):
        lows = group["ci_low"].where(group["ci_low"].notna(), group["value"] - SINGLE_PAIR_CKA_MARGIN)
        worst = group.loc[lows.idxmin()]
        estimate = Estimate(worst["value"], worst["ci_low"], worst["ci_high"], worst["p_value"], int(group["n"].min()),
                            "model pairs per type")
        floored = group[group["floor"] >= group["pt_pt"] - FLOOR_MARGIN]
        floor_text = (f"chance floor within {FLOOR_MARGIN} of P-T&P-T at {', '.join(floored['module'])}"
                      if len(floored) else "chance floors below P-T&P-T at every module" if has_floor
                      else f"no chance-floor rows (model {FLOOR_MODEL!r}) in the cka table: decided without a floor")
        statistic = (f"CKA of P-T&P-T minus {worst['other']} at {worst['module']} (the tightest of {len(group)} "
                     f"modules): {worst['pt_pt']:.3f} vs {worst['pt_pt'] - worst['value']:.3f}; "
                     f"{_interval_text(estimate, SINGLE_PAIR_CKA_MARGIN)}; {floor_text}")
        rule = (f"per module, Welch t over model pairs of CKA(P-T&P-T) − CKA(X), X = P-T&P, P-T&RI-T, RI-T&RI-T: holds "
                f"if all lie above 0 at every module, does not hold if one lies below {NEGLIGIBLE_CKA}; one pair: "
                f"±{SINGLE_PAIR_CKA_MARGIN}; inconclusive at a module whose floor is within {FLOOR_MARGIN}")
        rows.append(_row("P-T/P-T is the most similar pair by CKA at each module", "Sec. 3.2, Table 1", target,
                         _every(group["verdict"]), statistic, estimate, rule))
    return _frame(rows)


# ----------------------------------------------------------------- Sec. 3.2, Table 2: distance
@_claim
def pt_models_closer(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """P-T models are closer to each other and to P than RI-T models are (whole-network
    L2 distance; Sec. 3.2, Table 2).

    Rule: two comparisons, RI-T&RI-T against P-T&P-T and RI-T&P against P-T&P, each the
    difference of mean log distances over pairs (a ratio of geometric means) with
    Welch's t-interval; holds when both ratios' intervals lie above 1, does not hold
    when one lies below :data:`NEGLIGIBLE_DISTANCE_RATIO`; with one pair in a type the
    ratio must exceed the factor :data:`SINGLE_PAIR_DISTANCE_RATIO` either way.
    ``value``, ``ci_low``, ``ci_high`` are the ratio (far / close) of the comparison
    with the lowest interval.
    """
    frame = _table(tables, "distance", ("model_a", "model_b", "module", "distance"), "pass param_distance() rows "
                   "with model_a, model_b and target")
    if frame is None:
        return _frame([])
    whole = _with_pair_types(frame[frame["module"] == NETWORK].dropna(subset=["distance"]))
    margin = math.log(SINGLE_PAIR_DISTANCE_RATIO)
    rows = []
    for target, group in _targets(whole):
        types = {name: np.log(part["distance"].to_numpy(float)) for name, part in group.groupby("pair_type")}
        comparisons = [(far, close) for far, close in (("RI-T&RI-T", "P-T&P-T"), ("RI-T&P", "P-T&P"))
                       if far in types and close in types]
        if not comparisons:
            continue
        results = [(far, close, _difference(types[far], types[close], "model pairs per type"))
                   for far, close in comparisons]
        verdicts = [_greater(estimate, negligible=math.log(NEGLIGIBLE_DISTANCE_RATIO), margin=margin)
                    for *_, estimate in results]
        far, close, estimate = min(results, key=lambda item: item[2].bounds(margin)[0])
        ratio = estimate.scaled(math.exp)
        means = ", ".join(f"{name} {np.exp(values).mean():.4g}" for name, values in types.items())
        statistic = (f"ratio of geometric-mean L2 distances {far} / {close} = {ratio.value:.3g} (whole network; "
                     f"means {means}); {_interval_text(ratio, f'factor-{SINGLE_PAIR_DISTANCE_RATIO:g}')}")
        rule = (f"Welch t on log distances over pairs for RI-T&RI-T vs P-T&P-T and RI-T&P vs P-T&P: holds if both "
                f"ratios lie above 1, does not hold if one lies below {NEGLIGIBLE_DISTANCE_RATIO}; one pair: a factor "
                f"{SINGLE_PAIR_DISTANCE_RATIO} either way")
        rows.append(_row("P-T models are closer to each other and to P than RI-T models are (L2)",
                         "Sec. 3.2, Table 2", target, _every(verdicts), statistic, ratio, rule))
    return _frame(rows)


# ----------------------------------------------------------------- Sec. 3.3: barriers and basins
def _barrier_estimate(pairs: pd.DataFrame, curves: pd.DataFrame | None) -> Estimate:
    """Mean error barrier over pairs with a t-interval; one pair: a binomial interval of
    the accuracy at the barrier's α (class-index targets, when the curve is there), else
    none."""
    if len(pairs) > 1:
        return _contrast([(1, *_summary(pairs["error_barrier"]))], "model pairs")
    pair = pairs.iloc[0]
    value = float(pair["error_barrier"])
    if curves is None or pair["metric"] != "accuracy":
        return Estimate(value, n=1, n_kind="model pairs")
    at = curves[(curves["model_a"] == pair["model_a"]) & (curves["model_b"] == pair["model_b"])
                & np.isclose(curves["alpha"], pair["error_barrier_alpha"])]
    if at.empty:
        return Estimate(value, n=1, n_kind="model pairs")
    error, n = 1 - float(at["score"].iloc[0]), int(at["n_examples"].iloc[0])
    half = _Z * math.sqrt(error * (1 - error) / n)
    return Estimate(value, value - half, value + half, n=n, n_kind="examples (one pair)")


def _barrier_claim(tables: Mapping[str, pd.DataFrame], kind: str, expect_barrier: bool, claim: str) -> pd.DataFrame:
    frame = _table(tables, "interpolation_barriers", ("model_a", "model_b", "error_barrier", "error_barrier_alpha",
                                                      "metric"), "pass the barriers of interpolate() curves")
    if frame is None:
        return _frame([])
    curves = tables.get("interpolation")
    if curves is not None and not {"model_a", "model_b", "alpha", "score", "n_examples"} <= set(curves.columns):
        curves = None
    pairs = _with_pair_types(frame, sep="/")
    rows = []
    for target, group in _targets(pairs[pairs["pair_type"] == f"{kind}/{kind}"]):
        estimate = _barrier_estimate(group, None if curves is None else curves[curves["target"] == target])
        low, high = estimate.bounds(SINGLE_PAIR_BARRIER_MARGIN)
        above, below = low > BARRIER_TOLERANCE, high < BARRIER_TOLERANCE
        verdict = (HOLDS if (above if expect_barrier else below) else FAILS if (below if expect_barrier else above)
                   else INCONCLUSIVE)
        statistic = (f"error barrier (1 − {group['metric'].iloc[0]}, rise above the chord on λ ∈ [0, 1]) between two "
                     f"{kind} solutions, mean over {len(group)} pair(s): {estimate.value:.3f}; "
                     f"{_interval_text(estimate, SINGLE_PAIR_BARRIER_MARGIN)}")
        side = "above" if expect_barrier else "below"
        rule = (f"holds if the interval lies {side} {BARRIER_TOLERANCE}, does not hold if it lies on the other side; "
                f"t over pairs, one pair: binomial error at the barrier's λ (accuracy) or ±{SINGLE_PAIR_BARRIER_MARGIN}")
        rows.append(_row(claim, "Sec. 3.3, Fig. 4", target, verdict, statistic, estimate, rule))
    return _frame(rows)


@_claim
def no_barrier_between_pt(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """No performance barrier between two P-T solutions (Sec. 3.3, Fig. 4).

    Rule: the error barrier of the final P-T/P-T pairs (``interpolation_barriers``;
    best-checkpoint pairs left out), mean over pairs with a t-interval, or for one pair
    the binomial interval of the error at the barrier's λ (accuracy, from the
    ``interpolation`` curves; else ±:data:`SINGLE_PAIR_BARRIER_MARGIN`); holds when the
    interval lies below :data:`BARRIER_TOLERANCE` (5 points: the paper's RI-T barriers
    are tens of points), does not hold when it lies above, else inconclusive.
    """
    return _barrier_claim(tables, "P-T", False, "No performance barrier between two P-T solutions")


@_claim
def barrier_between_rit(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """A performance barrier between two RI-T solutions (Sec. 3.3, Fig. 4).

    Rule: as :func:`no_barrier_between_pt` on the RI-T/RI-T pairs, reversed: holds when
    the interval lies above :data:`BARRIER_TOLERANCE`, does not hold when below.
    """
    return _barrier_claim(tables, "RI-T", True, "A performance barrier between two RI-T solutions")


@_claim
def pt_pairs_in_one_basin(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Two P-T solutions lie in one (ε, δ)-basin (Sec. 3.3, Definition 3.1, Table 3).

    Rule: each P-T/P-T pair of the ``basin`` table is in one basin or not
    (``in_basin``: walls at some δ searched); holds when every pair is, does not hold
    when none is, inconclusive when they disagree. ``value`` is the fraction of pairs
    in one basin with its Clopper–Pearson interval. A pair is backed by two seeds; the
    frame carries no per-draw noise of the wall estimates, so no finer rule applies.
    """
    frame = _table(tables, "basin", ("model_a", "model_b", "in_basin"), "pass basin() output with model_a, model_b")
    if frame is None:
        return _frame([])
    keys = ["target", "model_a", "model_b"] + [c for c in ("bn", "split") if c in frame.columns]
    per_pair = _with_pair_types(frame.groupby(keys, sort=False, dropna=False).first().reset_index(), sep="/")
    rows = []
    for target, group in _targets(per_pair[per_pair["pair_type"] == "P-T/P-T"]):
        inside, n = int(group["in_basin"].astype(bool).sum()), len(group)
        interval = stats.binomtest(inside, n).proportion_ci(1 - ALPHA, method="exact")
        estimate = Estimate(inside / n, float(interval.low), float(interval.high), n=n, n_kind="P-T/P-T pairs")
        verdict = HOLDS if inside == n else FAILS if inside == 0 else INCONCLUSIVE
        statistic = (f"{inside} of {n} P-T/P-T pair(s) in one basin (walls at some δ searched); Clopper–Pearson "
                     f"{100 * (1 - ALPHA):g}% interval of the fraction [{estimate.ci_low:.2f}, {estimate.ci_high:.2f}]")
        rows.append(_row("P-T pairs lie in one basin", "Sec. 3.3, Def. 3.1", target, verdict, statistic, estimate,
                         "holds if every P-T/P-T pair is in one basin, does not hold if none is, else inconclusive"))
    return _frame(rows)


# ----------------------------------------------------------------- Sec. 3.3 in practice: model soups
SOUP_COLUMNS = ("model", "group", "n_members", "score", "metric", "n_examples", "gain", "gain_ci_low", "gain_ci_high")


def _soup_verdict(estimate: Estimate, averages: bool) -> str:
    """Verdict from a soup's gain interval on "the soup keeps its members' score"
    (``averages``: the interval lies above −:data:`SOUP_TOLERANCE`) or on "it loses
    more than the tolerance" (not ``averages``: the interval lies below it)."""
    low, high = estimate.bounds(0.0)
    keeps, loses = low > -SOUP_TOLERANCE, high < -SOUP_TOLERANCE
    return HOLDS if (keeps if averages else loses) else FAILS if (loses if averages else keeps) else INCONCLUSIVE


@_claim
def pt_soups_average(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """P-T solutions can be averaged; RI-T solutions cannot (the model soups of Wortsman
    et al. 2022: the practical side of Sec. 3.3, P-T solutions in one basin).

    Rule: for the uniform soup of each group of seeds (``soup`` table, row
    ``soup:uniform``, column ``group`` P-T or RI-T), its gain = test score minus the
    mean score of its members, with the percentile bootstrap interval over test
    examples that the table carries. The P-T part holds when the interval lies above
    −:data:`SOUP_TOLERANCE` (the soup loses less than 5 points, if anything) and does
    not hold when it lies below; the RI-T part holds when its interval lies below
    −:data:`SOUP_TOLERANCE` (a drop larger than the tolerance, significantly) and does
    not hold when it lies above. The claim holds when both parts hold, does not hold
    when one does not, else inconclusive; the row reports the part that decides (P-T
    when both hold). A target needs both groups (two or more seeds).
    """
    frame = _table(tables, "soup", SOUP_COLUMNS, "pass soup() output with group (the members' kind: P-T or RI-T)")
    if frame is None:
        return _frame([])
    rule = (f"percentile bootstrap over test examples of soup − mean member score: holds if P-T's interval lies "
            f"above −{SOUP_TOLERANCE} and RI-T's below −{SOUP_TOLERANCE}; does not hold if P-T's lies below or "
            f"RI-T's above −{SOUP_TOLERANCE}; else inconclusive")
    rows = []
    for target, group in _targets(frame[frame["model"] == f"{SOUP_PREFIX}uniform"]):
        soups = {kind: part.iloc[0] for kind, part in group.groupby("group") if kind in ("P-T", "RI-T")}
        if len(soups) < 2:
            continue
        estimates = {kind: Estimate(float(row["gain"]), float(row["gain_ci_low"]), float(row["gain_ci_high"]),
                                    n=int(row["n_examples"]), n_kind="test examples") for kind, row in soups.items()}
        verdicts = {"P-T": _soup_verdict(estimates["P-T"], True), "RI-T": _soup_verdict(estimates["RI-T"], False)}
        verdict = _every(verdicts.values())
        shown = next(kind for kind in ("P-T", "RI-T") if verdicts[kind] == verdict)
        parts = "; ".join(f"{kind} soup of {int(row['n_members'])} seeds {row['score']:.3f}, gain "
                          f"{estimates[kind].value:+.3f} [{estimates[kind].ci_low:.3f}, {estimates[kind].ci_high:.3f}]"
                          for kind, row in soups.items())
        statistic = f"uniform soup score minus the mean score of its members ({group['metric'].iloc[0]}): {parts}"
        rows.append(_row("P-T solutions can be averaged; RI-T solutions cannot", "Sec. 3.3", target, verdict,
                         statistic, estimates[shown], rule))
    return _frame(rows)


# ----------------------------------------------------------------- Sec. 3.4: criticality
def _spearman_increase(values: np.ndarray) -> Estimate:
    """Spearman's ρ of position (depth) and ``values`` (ties and ∞ ranked) with the
    one-sided p-value of a permutation test of ρ > 0, exact up to
    :data:`MAX_EXACT_MODULES` values, seeded resamples beyond."""
    depth = np.arange(len(values), dtype=float)
    depth -= depth.mean()

    def rho(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        ranks = stats.rankdata(sample, axis=axis)
        ranks = ranks - ranks.mean(axis=axis, keepdims=True)
        return (ranks * depth).sum(axis) / np.sqrt((ranks**2).sum(axis) * (depth**2).sum())

    if len(np.unique(values)) < 2:
        return Estimate(math.nan, n=len(values), n_kind="modules")
    test = stats.permutation_test((values,), rho, permutation_type="pairings", vectorized=True, alternative="greater",
                                  n_resamples=math.factorial(MAX_EXACT_MODULES), rng=np.random.default_rng(0))
    return Estimate(float(test.statistic), p_value=float(test.pvalue), n=len(values), n_kind="modules")


@_claim
def criticality_grows_with_depth(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Module criticality of P-T models grows with depth (Sec. 3.4, Fig. 6: lower
    modules less critical).

    Rule: μ_i of each module (``criticality`` table, direct path from θ_F where the
    table has ``path``/``start``, the ``network`` total left out), mean over the P-T
    models, against the module's position in the partition: Spearman's ρ with a
    one-sided exact permutation test (μ = ∞ ranks highest); holds if ρ > 0 with
    p < :data:`ALPHA`, does not hold if ρ ≤ 0, else inconclusive (with 5 modules
    p < 0.05 needs ρ ≥ 0.9).
    """
    frame = _table(tables, "criticality", ("model", "module", "criticality"), "pass network_criticality() rows "
                   "with model and target")
    if frame is None:
        return _frame([])
    for column, value in (("path", "direct"), ("start", "final")):
        if column in frame.columns:
            frame = frame[frame[column] == value]
    is_pt = np.array([getattr(_role(model), "kind", None) == "P-T" for model in frame["model"]], dtype=bool)
    frame = frame[is_pt & (frame["module"] != NETWORK).to_numpy()]
    rows = []
    for target, group in _targets(frame):
        means = group.groupby("module", sort=False)["criticality"].mean()
        if len(means) < 2:
            continue
        estimate = _spearman_increase(means.to_numpy(float))
        verdict = (INCONCLUSIVE if not np.isfinite(estimate.value) else FAILS if estimate.value <= 0
                   else HOLDS if estimate.p_value < ALPHA else INCONCLUSIVE)
        listed = ", ".join(f"{module} {value:.3g}" for module, value in means.items())
        statistic = (f"Spearman ρ of module depth and criticality μ (mean over {group['model'].nunique()} P-T "
                     f"model(s), direct path from θ_F): {estimate.value:.2f}, one-sided permutation p = "
                     f"{estimate.p_value:.2g}; μ: {listed}")
        rows.append(_row("Criticality grows with depth", "Sec. 3.4, Fig. 6", target, verdict, statistic, estimate,
                         f"holds if ρ > 0 with p < {ALPHA}, does not hold if ρ ≤ 0, else inconclusive"))
    return _frame(rows)


# ----------------------------------------------------------------- Sec. 3.5: checkpoints
CHECKPOINT_COLUMNS = ("checkpoint_epoch", "metric", "final_score_mean", "final_score_std", "final_score_count",
                      "source_score")


@_claim
def checkpoint_plateau(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Fine-tuning from later pre-training checkpoints stops helping after a plateau
    while the source accuracy still rises (Sec. 3.5, Fig. 7).

    Rule: e* is the latest checkpoint after which the source score still rises by at
    least :data:`SOURCE_RISE` up to the last checkpoint; the gain = final score from the
    last checkpoint minus from e*, with Welch's t-interval over seeds; holds when the
    interval lies below :data:`PLATEAU_TOLERANCE` (later checkpoints add less than a
    point), does not hold when it lies above it, else inconclusive; one seed: the gain
    must clear the tolerance by :data:`SINGLE_SEED_SCORE_MARGIN`. Without such an e*
    (the source does not rise after any earlier checkpoint) the claim cannot be tested:
    inconclusive.
    """
    frame = _table(tables, "checkpoints", CHECKPOINT_COLUMNS, "pass checkpoint_table(...)")
    if frame is None:
        return _frame([])
    claim = ("Fine-tuning from later pre-training checkpoints stops helping after a plateau while source accuracy "
             "still rises")
    rule = (f"e* = latest checkpoint whose source score is ≥ {SOURCE_RISE} below the last's; Welch t over seeds of "
            f"final(last) − final(e*): holds if the interval lies below {PLATEAU_TOLERANCE}, does not hold if above; "
            f"one seed: ±{SINGLE_SEED_SCORE_MARGIN}")
    rows = []
    for target, group in _targets(frame):
        group = group.sort_values("checkpoint_epoch")
        last = group.iloc[-1]
        rising = group[group["source_score"] <= last["source_score"] - SOURCE_RISE]
        if rising.empty:
            statistic = (f"the source score rises by less than {SOURCE_RISE} after every earlier checkpoint "
                         f"(epochs {', '.join(map(str, group['checkpoint_epoch']))}): no plateau to test")
            rows.append(_row(claim, "Sec. 3.5, Fig. 7", target, INCONCLUSIVE, statistic,
                             Estimate(math.nan, n=len(group), n_kind="checkpoints"), rule))
            continue
        start = rising.iloc[-1]
        estimate = _contrast([(1, last["final_score_mean"], last["final_score_std"], last["final_score_count"]),
                             (-1, start["final_score_mean"], start["final_score_std"], start["final_score_count"])],
                            "seeds per checkpoint")
        low, high = estimate.bounds(SINGLE_SEED_SCORE_MARGIN)
        verdict = HOLDS if high < PLATEAU_TOLERANCE else FAILS if low > PLATEAU_TOLERANCE else INCONCLUSIVE
        statistic = (f"final {last['metric']} from epoch {int(last['checkpoint_epoch'])} minus from epoch "
                     f"{int(start['checkpoint_epoch'])} ({last['final_score_mean']:.3f} vs "
                     f"{start['final_score_mean']:.3f}) while the source score rises {start['source_score']:.3f} → "
                     f"{last['source_score']:.3f}; {_interval_text(estimate, SINGLE_SEED_SCORE_MARGIN)}")
        rows.append(_row(claim, "Sec. 3.5, Fig. 7", target, verdict, statistic, estimate, rule))
    return _frame(rows)


# ----------------------------------------------------------------- in practice: freeze plans and checkpoint advice
FREEZE_COLUMNS = ("freeze", "metric", "final_score_mean", "final_score_std", "final_score_count", "train_seconds_mean")


def _gap_to_best(group: pd.DataFrame, row: pd.Series, n_kind: str) -> Estimate:
    """Final score of the group's best row (highest mean) minus ``row``'s, with Welch's
    t-interval over seeds; the best row against itself gets the interval of two
    independent draws of it."""
    best = group.loc[group["final_score_mean"].idxmax()]
    return _contrast([(sign, item["final_score_mean"], item["final_score_std"], item["final_score_count"])
                      for sign, item in ((1, best), (-1, row))], n_kind)


def _within_best(estimate: Estimate) -> bool:
    """The best's score minus another's cannot be told from 0: its interval (one seed:
    ±:data:`SINGLE_SEED_SCORE_MARGIN`) reaches 0."""
    return estimate.bounds(SINGLE_SEED_SCORE_MARGIN)[0] <= 0


def _as_good_as_best(estimate: Estimate) -> bool:
    """The best's score minus another's lies below :data:`NEGLIGIBLE_SCORE`, interval and all."""
    return estimate.bounds(SINGLE_SEED_SCORE_MARGIN)[1] < NEGLIGIBLE_SCORE


@_claim
def freeze_recommendation_right(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The freeze recommendation from rewinding was right: P-T with the recommended k
    leading units frozen ends within the uncertainty of the best k, at its lower cost
    (Sec. 3.4, Fig. 5, put to use; :mod:`transferscope.analysis.freeze_plan`).

    Rule: k_rec = the recommendation of the ``freeze_plan`` table (several P-T models: the
    smallest k); among the k of the ``freeze`` runs, the best has the highest mean final
    score; gap = final(best) − final(k_rec), Welch's t-interval over seeds (k_rec = best:
    the best against itself). Does not hold when the interval lies above 0 (the best k
    is better beyond the uncertainty); holds when it lies below :data:`NEGLIGIBLE_SCORE`
    (following the recommendation loses less than a point, if anything); else
    inconclusive, as when k_rec was not run. One seed per k: ±:data:`SINGLE_SEED_SCORE_MARGIN`
    stands for the interval. Training time (one wall-clock measurement per run, no
    interval) is reported beside, not decided on.
    """
    runs = _table(tables, "freeze", FREEZE_COLUMNS, "pass freeze_table(...)")
    plans = _table(tables, "freeze_plan", ("freeze", "module"), "pass freeze_plans(...)")
    if runs is None or plans is None:
        return _frame([])
    claim = "Freezing the leading modules that rewinding recommends keeps the best final score"
    rule = (f"Welch t over seeds of final(best k) − final(recommended k): does not hold if the interval lies above 0, "
            f"holds if below {NEGLIGIBLE_SCORE}; one seed: ±{SINGLE_SEED_SCORE_MARGIN}")
    rows = []
    for target, group in _targets(runs):
        plan = plans[plans["target"] == target]
        if plan.empty:
            continue
        recommended, by_k = int(plan["freeze"].min()), group.set_index("freeze", drop=False)
        best = by_k.loc[by_k["final_score_mean"].idxmax()]
        if recommended not in by_k.index:
            statistic = (f"the recommended k = {recommended} was not run (runs at k = "
                         f"{', '.join(map(str, by_k.index))}): add it to freeze")
            rows.append(_row(claim, "Sec. 3.4, Fig. 5", target, INCONCLUSIVE, statistic,
                             Estimate(math.nan, n=len(by_k), n_kind="values of k"), rule))
            continue
        chosen = by_k.loc[recommended]
        estimate = _gap_to_best(group, chosen, "seeds per k")
        verdict = FAILS if estimate.bounds(SINGLE_SEED_SCORE_MARGIN)[0] > 0 else \
            HOLDS if _as_good_as_best(estimate) else INCONCLUSIVE
        safe = [int(k) for k, row in by_k.iterrows() if _within_best(_gap_to_best(group, row, "seeds per k"))]
        time_text = (f"training time {chosen['train_seconds_mean']:.3g} s vs {by_k.loc[0, 'train_seconds_mean']:.3g} s "
                     "with nothing frozen" if 0 in by_k.index else
                     f"training time {chosen['train_seconds_mean']:.3g} s")
        statistic = (f"final {chosen['metric']} with the recommended k = {recommended} frozen "
                     f"{chosen['final_score_mean']:.3f} vs the best k = {int(best['freeze'])} "
                     f"{best['final_score_mean']:.3f}; {_interval_text(estimate, SINGLE_SEED_SCORE_MARGIN)}; "
                     f"{time_text}; k within the uncertainty of the best: {', '.join(map(str, safe))}")
        rows.append(_row(claim, "Sec. 3.4, Fig. 5", target, verdict, statistic, estimate, rule))
    return _frame(rows)


@_claim
def checkpoint_advice(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Advice from the checkpoint sweep: the earliest pre-training checkpoint whose
    fine-tuned final score is within the uncertainty of the best, and whether it is
    earlier than the last, i.e. pre-training could have stopped there (Sec. 3.5, Fig. 7).

    Rule: the best checkpoint has the highest mean final score; checkpoint e is within
    the uncertainty of the best when final(best) − final(e), with Welch's t-interval over
    seeds (one seed: ±:data:`SINGLE_SEED_SCORE_MARGIN`), reaches 0; the advice a is the
    earliest such checkpoint. The claim "an earlier checkpoint than the last does as well
    as the best" does not hold when a is the last checkpoint (every earlier one is worse
    beyond the uncertainty), holds when a is earlier and its gap's interval lies below
    :data:`NEGLIGIBLE_SCORE` (a loses less than a point, if anything), else inconclusive
    (a cannot be told from the best, but the uncertainty is wider than a point).
    """
    frame = _table(tables, "checkpoints", CHECKPOINT_COLUMNS, "pass checkpoint_table(...)")
    if frame is None:
        return _frame([])
    claim = "An earlier pre-training checkpoint fine-tunes as well as the best"
    rule = (f"advice = earliest checkpoint whose Welch t-interval over seeds of final(best) − final(e) reaches 0 (one "
            f"seed: ±{SINGLE_SEED_SCORE_MARGIN}); does not hold if it is the last checkpoint, holds if earlier and "
            f"that interval lies below {NEGLIGIBLE_SCORE}, else inconclusive")
    rows = []
    for target, group in _targets(frame):
        group = group.sort_values("checkpoint_epoch")
        best = group.loc[group["final_score_mean"].idxmax()]
        gaps = [(row, _gap_to_best(group, row, "seeds per checkpoint")) for _, row in group.iterrows()]
        advised, estimate = next((row, gap) for row, gap in gaps if _within_best(gap))
        last = group["checkpoint_epoch"].max()
        verdict = FAILS if advised["checkpoint_epoch"] == last else \
            HOLDS if _as_good_as_best(estimate) else INCONCLUSIVE
        statistic = (f"advice: fine-tune from epoch {int(advised['checkpoint_epoch'])}, the earliest within the "
                     f"uncertainty of the best (epoch {int(best['checkpoint_epoch'])}): final {best['metric']} "
                     f"{advised['final_score_mean']:.3f} vs {best['final_score_mean']:.3f}, last epoch {int(last)}; "
                     f"{_interval_text(estimate, SINGLE_SEED_SCORE_MARGIN)}")
        rows.append(_row(claim, "Sec. 3.5, Fig. 7", target, verdict, statistic, estimate, rule))
    return _frame(rows)


# ----------------------------------------------------------------- the table
CLAIMS: tuple[Callable[[Mapping[str, pd.DataFrame]], pd.DataFrame], ...] = (
    pt_ends_higher, pt_optimizes_faster, advantage_shrinks_with_block_size, speed_advantage_on_shuffled_pixels,
    pt_pairs_share_mistakes, pt_pairs_most_similar, pt_models_closer, no_barrier_between_pt, barrier_between_rit,
    pt_pairs_in_one_basin, pt_soups_average, criticality_grows_with_depth, freeze_recommendation_right,
    checkpoint_plateau, checkpoint_advice,
)


def findings(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The findings table: one row per (claim, target) that the study's tables can test.

    Parameters
    ----------
    tables : mapping of str to pandas.DataFrame
        The study's result tables by name, as
        :func:`transferscope.study.results.collect_results` returns them. A claim
        whose table is missing or empty gets no row.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: ``claim``, ``section`` (of the paper), ``target``,
        ``verdict`` (one of :data:`VERDICTS`), ``statistic`` (what was compared, in
        words), ``value``, ``ci_low``, ``ci_high`` (NaN without an interval),
        ``p_value`` (NaN where no test applies), ``n`` and ``n_kind`` (what backs the
        number: seeds, model pairs, examples, modules) and ``rule`` (the decision
        rule). Claims in the paper's order (:data:`CLAIMS`, each function's docstring
        states its rule and thresholds).

    Raises
    ------
    ValueError
        When a table is present but lacks a column a claim needs (the message names it).

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Sec. 3.1-3.5.
    """
    frames = [frame for claim in CLAIMS if not (frame := claim(tables)).empty]
    return pd.concat(frames, ignore_index=True) if frames else _frame([])
