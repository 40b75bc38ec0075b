"""Model soups: the weight average of fine-tuned models (Wortsman et al. 2022), the
practical side of Sec. 3.3 of Neyshabur, Sedghi & Zhang (2020): P-T solutions lie in
one basin, so their average should be as good as they are; RI-T solutions lie in
different basins, so their average should not.

For members θ_1..θ_k of one architecture, the uniform soup is

    θ_soup = (1/k) · Σ_i θ_i

on every floating parameter and buffer (accumulated in float64, stored in the
members' dtype). Integer buffers (BatchNorm's ``num_batches_tracked``) are counts, not
weights: they are copied from the base member (the first, or for the greedy soup the
best), and recalibration resets and recounts them. With ``modules=`` only those units
are averaged; every other tensor (the ``rest`` unit included) is the base member's.

The greedy soup (Wortsman et al. 2022, Alg. 1) sorts the members by their score on
``held_out`` data, best first, starts from the best and goes through the others in
that order, adding each one whose addition keeps the held-out score of the soup from
dropping (≥); a member whose addition would drop it is skipped and the next one tried.

BatchNorm running statistics (``bn``, :mod:`transferscope.analysis.batchnorm_modes`):
"recalibrate" recomputes them on ``recalibration_loader`` for every evaluated model,
the members included (as :func:`~transferscope.analysis.interpolate` does at its
endpoints, so that a soup of identical members scores exactly as the member); "follow"
averages them with the weights; "keep" takes the base member's.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, Mapping, Sequence, get_args

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

from ..evaluation import (
    Batches,
    cache_batches,
    evaluate,
    mean_auc,
    metrics,
    predict,
    recalibrate_batchnorm,
    score_columns,
    score_metric,
    score_name,
)
from ..models import NETWORK, REST, Modules, Partition
from ..models.state import batchnorm_buffer_keys, check_compatible
from .batchnorm_modes import BnMode, recalibration_data, resolve_bn_mode
from .mistake_overlap import _bootstrap_interval

SoupRecipe = Literal["uniform", "greedy"]
RECIPES: tuple[str, ...] = get_args(SoupRecipe)
SOUP_PREFIX = "soup:"  # the model column of a soup's row: "soup:uniform", "soup:greedy"
MEMBER_SEPARATOR = ", "  # between the member names of the members column


def _named(models: Mapping[str, nn.Module] | Sequence[nn.Module]) -> dict[str, nn.Module]:
    """``{name: model}`` (a sequence is named by position: "0", "1", …), checked: two or
    more models of one architecture."""
    if isinstance(models, Mapping):
        named = dict(models)
    elif isinstance(models, Sequence) and not isinstance(models, str):
        named = {str(index): model for index, model in enumerate(models)}
    else:
        raise TypeError(f"models must be a dict {{name: nn.Module}} or a list of nn.Module, got {type(models).__name__}")
    odd = [name for name, model in named.items() if not isinstance(model, nn.Module)]
    if odd:
        raise TypeError(f"models {odd} are no nn.Module; load weights into a model first "
                        "(transferscope.models.load_into)")
    if len(named) < 2:
        raise ValueError(f"a soup averages two or more models; got {len(named)} ({', '.join(named) or 'none'}): "
                         "pass the fine-tuned models of several seeds")
    first, reference = next(iter(named.items()))
    for name, model in named.items():
        check_compatible(model, reference, what=f"model {name!r}", reference_name=f"model {first!r}")
    return named


def _recipes(recipe: str | Sequence[str], held_out: Batches | None) -> tuple[str, ...]:
    recipes = (recipe,) if isinstance(recipe, str) else tuple(recipe)
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown or not recipes or len(set(recipes)) != len(recipes):
        raise ValueError(f"recipe must be one of {', '.join(map(repr, RECIPES))} or a list of distinct ones, "
                         f"got {recipe!r}")
    if "greedy" in recipes and held_out is None:
        raise ValueError("recipe 'greedy' ranks and adds members by their score on held-out data: pass "
                         "held_out=<a loader of data that is neither the training nor the test data>, or use "
                         "recipe='uniform'")
    return recipes


def averaged_keys(model: nn.Module, modules: Modules = None, bn: str = "follow") -> list[str]:
    """The state-dict keys that a soup averages.

    Parameters
    ----------
    model : torch.nn.Module
        A member (all members share its architecture).
    modules : list of str, mapping, or Partition, optional
        Average only these units (:class:`transferscope.models.Partition`; the ``rest``
        unit of a list is not averaged); None: the whole network.
    bn : {"follow", "keep", "recalibrate"}
        The resolved BatchNorm mode; "keep" leaves the running statistics out.

    Returns
    -------
    list of str
        The floating parameters and buffers of those units, in state-dict order.
    """
    state = model.state_dict()
    if modules is None:
        keys = list(state)
    else:
        keys = [key for unit in Partition.of(model, modules).units if unit.name != REST for key in unit.keys]
    kept = set(batchnorm_buffer_keys(model, running_stats_only=True)) if bn == "keep" else set()
    return [key for key in keys if state[key].is_floating_point() and key not in kept]


@torch.no_grad()
def _cook(members: Sequence[nn.Module], keys: Sequence[str], recalibration: Batches | None) -> nn.Module:
    """A copy of ``members[0]`` with the mean of the members on ``keys``, its BatchNorm
    statistics recomputed on ``recalibration`` when given."""
    model = copy.deepcopy(members[0])
    target = model.state_dict()  # shares storage with the copy
    states = [member.state_dict() for member in members]
    for key in keys:
        total = sum(state[key].detach().to(target[key].device, torch.float64) for state in states)
        target[key].copy_(total / len(states))
    if recalibration is not None:
        recalibrate_batchnorm(model, recalibration)
    return model


def soup_model(
    models: Mapping[str, nn.Module] | Sequence[nn.Module],
    *,
    modules: Modules = None,
    bn: BnMode = "auto",
    recalibration_loader: Batches | None = None,
    recalibration_batches: int | None = None,
) -> nn.Module:
    """The uniform soup of ``models`` as a new model: θ_soup = (1/k)·Σ_i θ_i (module
    docstring), BatchNorm statistics as ``bn`` says.

    Parameters
    ----------
    models : mapping of str to torch.nn.Module, or sequence of torch.nn.Module
        Two or more models of one architecture (the first is the base). Not changed.
    modules : list of str, mapping, or Partition, optional
        Average only these units; the other tensors are the first model's.
    bn : {"auto", "recalibrate", "follow", "keep"}
        BatchNorm running statistics of the soup (module docstring).
    recalibration_loader : iterable of (Tensor, Tensor), optional
        Training data for "recalibrate".
    recalibration_batches : int, optional
        Recalibrate on the first ``recalibration_batches`` batches (default: all).

    Returns
    -------
    torch.nn.Module
        A copy of the first model holding the soup's weights.

    Raises
    ------
    ValueError
        For fewer than two models, models of different architectures, or an unknown
        or inapplicable ``bn`` mode.

    References
    ----------
    Wortsman et al. (2022), "Model soups: averaging weights of multiple fine-tuned
    models improves accuracy without increasing inference time", ICML, Sec. 2.
    """
    named = list(_named(models).values())
    mode = resolve_bn_mode(named[0], bn, recalibration_loader)
    return _cook(named, averaged_keys(named[0], modules, mode),
                 recalibration_data(mode, recalibration_loader, recalibration_batches))


def _score(model: nn.Module, batches: Batches, name: str) -> float:
    result = evaluate(model, batches, name=name)
    return result[score_metric(result)]


def _greedy(named: Mapping[str, nn.Module], prepared: Mapping[str, nn.Module], keys: Sequence[str],
            recalibration: Batches | None, held_out: Batches) -> tuple[list[str], float, dict[str, float]]:
    """Wortsman et al.'s Alg. 1: (ingredients in the order added, the soup's held-out
    score, every member's held-out score). ``prepared``: the members as evaluated
    (recalibrated where the mode says so)."""
    scores = {name: _score(model, held_out, f"model {name!r}") for name, model in prepared.items()}
    ranked = sorted(named, key=lambda name: -scores[name])  # stable: ties keep the given order
    ingredients, best = ranked[:1], scores[ranked[0]]
    for name in ranked[1:]:
        candidate = _score(_cook([named[n] for n in [*ingredients, name]], keys, recalibration), held_out,
                           f"the soup of {', '.join([*ingredients, name])}")
        if candidate >= best:
            ingredients, best = [*ingredients, name], candidate
    return ingredients, best, scores


def _gain_interval(members: Sequence[Tensor], soup_logits: Tensor, targets: Tensor, n_bootstrap: int, seed: int,
                   confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval over examples of the soup's score minus the mean
    member score, the same resamples for every model. Accuracy: the mean of per-example
    differences d_i = 1[soup right on i] − mean_m 1[m right on i]; mean AUC (not a mean
    over examples): recomputed on every resample."""
    if score_name(targets) == "accuracy":
        right = [(logits.argmax(1) == targets).double() for logits in members]
        per_example = (soup_logits.argmax(1) == targets).double() - torch.stack(right).mean(0)
        return _bootstrap_interval(per_example.numpy(), n_bootstrap, seed, confidence)

    def gain(index: np.ndarray) -> float:
        chosen = torch.from_numpy(index)
        member_scores = [mean_auc(logits[chosen], targets[chosen]) for logits in members]  # finite: predict checked
        return mean_auc(soup_logits[chosen], targets[chosen]) - float(np.mean(member_scores))

    result = stats.bootstrap((np.arange(len(targets)),), gain, vectorized=False, n_resamples=n_bootstrap,
                             confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _modules_label(model: nn.Module, modules: Modules) -> str:
    """The averaged units as recorded: ``"network"`` or their names."""
    if modules is None:
        return NETWORK
    return ",".join(name for name in Partition.of(model, modules).names if name != REST)


@torch.no_grad()
def soup(
    models: Mapping[str, nn.Module] | Sequence[nn.Module],
    loader: Batches,
    *,
    recipe: SoupRecipe | Sequence[SoupRecipe] = "uniform",
    held_out: Batches | None = None,
    recalibration_loader: Batches | None = None,
    recalibration_batches: int | None = None,
    modules: Modules = None,
    bn: BnMode = "auto",
    split: str = "test",
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Score of each member and of the weight average of the members (Wortsman et al.
    2022; Sec. 3.3 of the paper: solutions in one basin can be averaged).

    The uniform soup is θ_soup = (1/k)·Σ_i θ_i over the k members (every floating
    parameter and buffer; integer buffers from the base member); the greedy soup adds
    members in order of held-out score while the held-out score does not drop (module
    docstring). Each soup's ``gain`` = score(soup) − (1/k)·Σ_i score(θ_i), the mean
    over all k members, with a percentile bootstrap interval over the examples of
    ``loader`` (the same resamples for every model).

    Parameters
    ----------
    models : mapping of str to torch.nn.Module, or sequence of torch.nn.Module
        ``{name: model}`` (a sequence is named "0", "1", …): two or more models of one
        architecture; the first is the uniform soup's base. Not changed.
    loader : iterable of (Tensor, Tensor)
        Evaluation batches, read once.
    recipe : {"uniform", "greedy"} or a sequence of them
        The soups to make (members are evaluated once for all).
    held_out : iterable of (Tensor, Tensor), optional
        Data that ranks the members and decides the greedy soup (required by "greedy";
        neither the training nor the test data).
    recalibration_loader : iterable of (Tensor, Tensor), optional
        Training data for ``bn="recalibrate"``.
    recalibration_batches : int, optional
        Recalibrate on the first ``recalibration_batches`` batches (default: all), read
        once.
    modules : list of str, mapping, or Partition, optional
        Average only these units (:class:`transferscope.models.Partition`); the other
        tensors are the base member's. It answers "can these modules be shared?"
        (e.g. the lower modules, which P-T models reuse). None: the whole network.
    bn : {"auto", "recalibrate", "follow", "keep"}
        BatchNorm running statistics (module docstring); "auto" recalibrates when the
        model has BatchNorm and ``recalibration_loader`` is given, else follows.
    split : str
        Name of the data in ``loader``, recorded in the ``split`` column.
    n_bootstrap : int
        Bootstrap resamples of the gain's interval.
    seed : int
        Seed of the resamples.
    confidence : float
        Level of the interval, in (0, 1).

    Returns
    -------
    pandas.DataFrame
        One row per member, then one per soup: ``model`` (the member's name, or
        ``"soup:uniform"`` / ``"soup:greedy"``), ``members`` (names, in the order
        averaged or added, joined by ", "), ``n_members``, ``split``, ``loss``,
        ``score``, ``metric`` (``"accuracy"`` or ``"auc"``), ``n_examples``,
        ``held_out_score`` (greedy: the members' and the soup's; else NaN), ``gain``,
        ``gain_ci_low``, ``gain_ci_high`` (soups; NaN for members), and the settings
        ``bn`` (resolved), ``recalibration_batches``, ``modules`` (``"network"`` or the
        averaged units), ``n_bootstrap``, ``seed``, ``confidence``.

    Raises
    ------
    ValueError
        For fewer than two models, models of different architectures (naming the
        differing entries), an unknown recipe, "greedy" without ``held_out``, an
        unknown or inapplicable ``bn`` mode, or invalid bootstrap settings.

    References
    ----------
    Wortsman et al. (2022), "Model soups: averaging weights of multiple fine-tuned
    models improves accuracy without increasing inference time", ICML, Sec. 2 and
    Alg. 1; Neyshabur, Sedghi & Zhang (2020), Sec. 3.3; Efron & Tibshirani (1993).
    """
    named = _named(models)
    recipes = _recipes(recipe, held_out)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    base = next(iter(named.values()))
    mode = resolve_bn_mode(base, bn, recalibration_loader)
    recalibration = recalibration_data(mode, recalibration_loader, recalibration_batches)
    keys = averaged_keys(base, modules, mode)
    batches = cache_batches(loader)
    prepared = {name: model if recalibration is None else _cook([model], keys, recalibration)
                for name, model in named.items()}
    logits = {name: predict(model, batches, name=f"model {name!r}")[0] for name, model in prepared.items()}
    targets = torch.cat([y.cpu() for _, y in batches])
    metric = score_name(targets)
    results = {name: metrics(values, targets) for name, values in logits.items()}
    mean_member = float(np.mean([result[metric] for result in results.values()]))
    held_scores: dict[str, float] = {}
    soups = []
    for made in recipes:
        ingredients, held_score = list(named), math.nan
        if made == "greedy":
            assert held_out is not None  # _recipes requires it
            ingredients, held_score, held_scores = _greedy(named, prepared, keys, recalibration,
                                                           cache_batches(held_out))
        name = SOUP_PREFIX + made
        soup_logits = predict(_cook([named[n] for n in ingredients], keys, recalibration), batches,
                              name=f"model {name!r}")[0]
        result = metrics(soup_logits, targets)
        low, high = _gain_interval(list(logits.values()), soup_logits, targets, n_bootstrap, seed, confidence)
        soups.append({"model": name, "members": MEMBER_SEPARATOR.join(ingredients), "n_members": len(ingredients),
                      **score_columns(result, metric), "held_out_score": held_score,
                      "gain": result[metric] - mean_member, "gain_ci_low": low, "gain_ci_high": high})
    members = [{"model": name, "members": name, "n_members": 1, **score_columns(results[name], metric),
                "held_out_score": held_scores.get(name, math.nan), "gain": math.nan, "gain_ci_low": math.nan,
                "gain_ci_high": math.nan} for name in named]
    settings = {"bn": mode, "recalibration_batches": recalibration_batches if recalibration is not None else None,
                "modules": _modules_label(base, modules), "n_bootstrap": n_bootstrap, "seed": seed,
                "confidence": confidence}
    frame = pd.DataFrame(members + soups).assign(split=split, **settings)
    return frame[["model", "members", "n_members", "split", "loss", "score", "metric", "n_examples", "held_out_score",
                  "gain", "gain_ci_low", "gain_ci_high", *settings]]
