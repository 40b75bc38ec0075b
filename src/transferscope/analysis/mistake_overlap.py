"""Common and uncommon mistakes of pairs of models (Neyshabur, Sedghi & Zhang 2020, Sec. 3.2).

For models a and b on the same n units, every unit falls in one cell of the paired
2x2 table: both wrong (``common``), only a wrong (``only_a``), only b wrong
(``only_b``), both right. The paper's *uncommon* mistakes are ``only_a + only_b``.

A unit is an example for class-index targets (wrong: ``argmax(logits) != target``),
and an (example, label) pair for multi-label 0/1 targets (wrong:
``(sigmoid(logit) >= threshold) != label``, with one threshold or one per label).

Statistics per pair:
- McNemar's test of equal error rates on the discordant counts b = only_a, c = only_b
  (McNemar 1947): exact two-sided binomial test of b ~ Bin(b + c, 1/2) when b + c < 25
  (statistic recorded: min(b, c)), else the chi-square statistic with continuity
  correction (|b − c| − 1)² / (b + c), 1 degree of freedom. With multi-label units the
  labels of one example are not independent, so read that p-value as descriptive.
- Percentile bootstrap intervals (Efron & Tibshirani 1993) for the common fraction and
  the uncommon fraction. Examples are resampled (with all their labels, a cluster
  bootstrap for multi-label units), the same resamples for both fractions, seeded.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

from ..evaluation import Batches, is_multilabel, predict
from ..progress import progress

EXACT_BELOW = 25  # discordant count under which McNemar's test is the exact binomial one
BOOTSTRAP_BATCH_ELEMENTS = 20_000_000  # resampled values held in memory at once


def _thresholds(threshold: float | Sequence[float], n_labels: int) -> Tensor:
    values = torch.as_tensor(threshold, dtype=torch.float64).reshape(-1)
    if values.numel() not in (1, n_labels):
        raise ValueError(f"threshold has {values.numel()} values but the targets have {n_labels} labels; "
                         "pass one float or one threshold per label")
    if ((values < 0) | (values > 1)).any():
        raise ValueError(f"thresholds are probabilities in [0, 1], got {values.tolist()}")
    return values


def _threshold_label(threshold: float | Sequence[float], multilabel: bool) -> str:
    """The decision rule as recorded in the frame: 'argmax', '0.5' or '0.3,0.5,…' (per label)."""
    if not multilabel:
        return "argmax"
    return ",".join(f"{value:g}" for value in torch.as_tensor(threshold, dtype=torch.float64).reshape(-1).tolist())


def _wrong(logits: Tensor, targets: Tensor, threshold: float | Sequence[float]) -> Tensor:
    """Bool ``(N, 1)`` (class indices) or ``(N, L)`` (0/1 labels): where the prediction is wrong."""
    if is_multilabel(targets):
        cut = _thresholds(threshold, targets.shape[1])
        return (torch.sigmoid(logits.double()) >= cut) != targets.bool()
    if not isinstance(threshold, (int, float)):
        raise ValueError("a per-label threshold applies to multi-label targets only; these targets are class indices")
    return (logits.argmax(1) != targets)[:, None]


def _check_models(models: Mapping[str, nn.Module], names: Iterable[str]) -> None:
    missing = [name for name in names if name not in models]
    if missing:
        raise ValueError(f"no model named {', '.join(map(repr, missing))}; the models are: {', '.join(models)}; "
                         "name pairs by the keys of the models dict")


def _cells(wrong_a: Tensor, wrong_b: Tensor) -> dict[str, Tensor]:
    """Masks of the mistake categories: both wrong, only a wrong, only b wrong."""
    return {"common": wrong_a & wrong_b, "only_a": wrong_a & ~wrong_b, "only_b": ~wrong_a & wrong_b}


def _predict_together(models: Mapping[str, nn.Module], loader: Batches) -> tuple[dict[str, Tensor], Tensor]:
    """Logits of every model and the targets, in loader order, from ONE pass over the
    loader: each model sees exactly the same inputs even when the loader shuffles or augments."""
    logits: dict[str, list[Tensor]] = {name: [] for name in models}
    targets = []
    for x, y in loader:
        for name, model in models.items():
            logits[name].append(predict(model, [(x, y)], name=f"model {name!r}")[0])
        targets.append(y.cpu())
    if not targets:
        raise ValueError("the loader yielded no examples")
    return {name: torch.cat(parts) for name, parts in logits.items()}, torch.cat(targets)


def _mcnemar(only_a: int, only_b: int) -> tuple[float, float, str]:
    """(statistic, p-value, method) of McNemar's test on the discordant counts."""
    discordant = only_a + only_b
    if discordant == 0:
        return 0.0, 1.0, "exact-binomial"  # no discordant unit: no evidence of a difference
    if discordant < EXACT_BELOW:
        return float(min(only_a, only_b)), float(stats.binomtest(only_a, discordant, 0.5).pvalue), "exact-binomial"
    statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
    return float(statistic), float(stats.chi2.sf(statistic, df=1)), "chi-square-cc"


def _bootstrap_interval(per_example: np.ndarray, n_bootstrap: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example values."""
    result = stats.bootstrap(
        (per_example,), np.mean, n_resamples=n_bootstrap, confidence_level=confidence, method="percentile",
        vectorized=True, batch=max(1, BOOTSTRAP_BATCH_ELEMENTS // len(per_example)), rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _pair_row(wrong_a: Tensor, wrong_b: Tensor, n_bootstrap: int, seed: int, confidence: float) -> dict:
    cells = {**_cells(wrong_a, wrong_b), "both_right": ~wrong_a & ~wrong_b}
    n_units = wrong_a.numel()
    row: dict = {"n_units": n_units, "n_examples": wrong_a.shape[0]}
    for cell, mask in cells.items():
        row[cell] = int(mask.sum())
    for cell in cells:
        row[f"{cell}_fraction"] = row[cell] / n_units
    row["uncommon"] = row["only_a"] + row["only_b"]
    row["uncommon_fraction"] = row["uncommon"] / n_units
    row["error_a"] = float(wrong_a.double().mean())
    row["error_b"] = float(wrong_b.double().mean())
    row["mcnemar_statistic"], row["mcnemar_p"], row["mcnemar_method"] = _mcnemar(row["only_a"], row["only_b"])
    # per-example fraction of wrong labels (0/1 for one label); their mean is the unit fraction
    common = cells["common"].double().mean(1).numpy()
    uncommon = (cells["only_a"] | cells["only_b"]).double().mean(1).numpy()
    row["common_ci_low"], row["common_ci_high"] = _bootstrap_interval(common, n_bootstrap, seed, confidence)
    row["uncommon_ci_low"], row["uncommon_ci_high"] = _bootstrap_interval(uncommon, n_bootstrap, seed, confidence)
    return row


def mistakes(
    models: Mapping[str, nn.Module],
    loader: Batches,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    threshold: float | Sequence[float] = 0.5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Common and uncommon mistakes of pairs of models on one loader (Sec. 3.2 of the paper).

    Every unit falls in one cell of the paired 2x2 table (both wrong ``common``, only a
    wrong ``only_a``, only b wrong ``only_b``, ``both_right``); uncommon mistakes are
    ``only_a + only_b``. McNemar's test on b = only_a, c = only_b is the exact binomial
    test of b ~ Bin(b + c, 1/2) when b + c < 25, else χ² = (|b − c| − 1)² / (b + c) with
    1 degree of freedom; intervals are percentile bootstraps over examples (module docstring).

    Parameters
    ----------
    models : mapping of str to torch.nn.Module
        ``{name: model}``, each run once in eval mode (modes restored) on the same batches.
    loader : iterable of (Tensor, Tensor)
        Evaluation batches.
    pairs : sequence of (str, str), optional
        ``(model_a, model_b)`` names; default every unordered pair, in dict order.
    threshold : float or sequence of float
        Multi-label targets only: the probability cut, one or one per label (class
        indices use the argmax, recorded as ``"argmax"``).
    n_bootstrap : int
        Bootstrap resamples.
    seed : int
        Seed of the resamples (the same for both fractions).
    confidence : float
        Level of the bootstrap intervals, in (0, 1).

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``model_a``, ``model_b``, ``unit`` (``"example"`` or
        ``"example-label"``), ``n_units``, ``n_examples``; the counts and ``*_fraction``
        of ``common``, ``only_a``, ``only_b``, ``both_right``, ``uncommon`` (fractions of
        ``n_units``); ``error_a``, ``error_b``; ``mcnemar_statistic``, ``mcnemar_p``,
        ``mcnemar_method``; ``common_ci_low``/``_high``, ``uncommon_ci_low``/``_high``;
        and the settings ``threshold``, ``n_bootstrap``, ``seed``, ``confidence``.

    Raises
    ------
    ValueError
        For a pair naming a model that ``models`` lacks (the message lists them), fewer
        than two models, or invalid settings.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Sec. 3.2; McNemar (1947); Efron & Tibshirani (1993).
    """
    if len(models) < 2 and pairs is None:
        raise ValueError(f"mistakes compares pairs of models; got {len(models)} model(s)")
    model_pairs = list(itertools.combinations(models, 2)) if pairs is None else [(a, b) for a, b in pairs]
    _check_models(models, {name for pair in model_pairs for name in pair})
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    used = {name: models[name] for name in models if any(name in pair for pair in model_pairs)}
    logits, targets = _predict_together(used, loader)
    wrong = {name: _wrong(values, targets, threshold) for name, values in logits.items()}
    multilabel = is_multilabel(targets)
    rows = []
    for a, b in progress(model_pairs, "mistakes: bootstrap per pair", total=len(model_pairs)):
        row: dict[str, object] = {"model_a": a, "model_b": b, "unit": "example-label" if multilabel else "example"}
        row.update(_pair_row(wrong[a], wrong[b], n_bootstrap, seed, confidence))
        row.update(threshold=_threshold_label(threshold, multilabel), n_bootstrap=n_bootstrap, seed=seed,
                   confidence=confidence)
        rows.append(row)
    return pd.DataFrame(rows)


def mistake_examples(
    models: Mapping[str, nn.Module],
    loader: Batches,
    model_a: str,
    model_b: str,
    *,
    limit: int | None = 16,
    threshold: float | Sequence[float] = 0.5,
) -> dict[str, list[int]]:
    """Examples of each kind of mistake of two models, for the example grids of Sec. 3.2.

    Parameters
    ----------
    models : mapping of str to torch.nn.Module
        ``{name: model}``; only ``model_a`` and ``model_b`` run, once each.
    loader : iterable of (Tensor, Tensor)
        Evaluation batches.
    model_a, model_b : str
        Names of the two models in ``models``.
    limit : int or None
        At most this many indices per category (None: all).
    threshold : float or sequence of float
        As in :func:`mistakes`.

    Returns
    -------
    dict of str to list of int
        Indices (loader order) of the examples where both models err (``"common"``),
        only ``model_a`` (``"only_a"``) or only ``model_b`` (``"only_b"``); for
        multi-label targets an example qualifies when any of its labels does.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Sec. 3.2.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be a non-negative count or None (all), got {limit}")
    _check_models(models, (model_a, model_b))
    logits, targets = _predict_together({model_a: models[model_a], model_b: models[model_b]}, loader)
    wrong_a, wrong_b = (_wrong(logits[name], targets, threshold).any(1) for name in (model_a, model_b))
    indices = {category: torch.nonzero(mask).flatten().tolist() for category, mask in _cells(wrong_a, wrong_b).items()}
    return {category: found if limit is None else found[:limit] for category, found in indices.items()}
