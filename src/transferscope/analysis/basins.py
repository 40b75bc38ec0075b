"""Do two solutions lie in one (ε, δ)-basin? (Neyshabur, Sedghi & Zhang 2020,
Sec. 3.3, Definition 3.1.)

How we read Definition 3.1. For a loss ℓ on R^n and a convex set S, let μ be the
mean of ℓ under the uniform distribution on S. S is an (ε, δ)-basin when

1. flat inside: E_{θ~U(S)} |ℓ(θ) − μ| ≤ ε;
2. walls under noise: for every boundary point θ_∂ of S (the end of S on a ray from
   one point of S through another), E_{u~N(0, (δ²/n)·I_n)} [ℓ(θ_∂ + u)] − μ ≥ rise·ε;
3. walls along the ray: for the unit direction d of that ray, E_{ν~N(0, δ²)}
   [ℓ(θ_∂ + |ν|·d)] − μ ≥ rise·ε.

Noise of per-coordinate std σ = δ/√n has norm ≈ δ, hence δ = σ·√n (the paper's
δ = 49.14 and 98.28 are σ = 0.01 and 0.02 for n ≈ 24.16M parameters). Our reading
of the paper puts the walls at ``rise = 2`` (2ε above μ); walls at μ + ε are
``rise = 1`` — a setting, recorded in the frame.
Conditions 2 and 3 ask the loss to *rise* past the basin level at distance δ (the
basin has walls); both get easier as δ grows, so "the" δ of a basin is the smallest
δ of a grid for which both hold. When they already hold at the grid's smallest σ, that
δ is only an upper bound, and the grid refines itself: σ_min/2, σ_min/4, … (the last
step clipped to ``sigma_floor``) until the conditions fail at some σ. δ is then the
smallest δ that holds with the next smaller searched δ failing, a number resolved to
a factor 2 (``basin_delta_exact``); it stays a bound (δ ≤ …) only when the conditions
still hold at ``sigma_floor``.

Procedure for two solutions θ_a, θ_b (S is a segment of their line, Θ(α) =
(1 − α)θ_a + αθ_b):

- Boundary: walk outward from α = 1 (and from α = 0) in doubling steps
  (``initial_step``, 2·``initial_step``, …) until the loss exceeds the level
  (1 + ``threshold``)·max(ℓ(θ_a), ℓ(θ_b)); refine the crossing inside the last step
  with Brent's method (``boundary_tol`` in α). S = [Θ(α_lo), Θ(α_hi)]. Keep the
  threshold small (default 5%) so the boundary sits at the foot of the walls: when
  the level already exceeds μ + rise·ε, conditions 2 and 3 hold for every δ > 0, and
  δ is only a bound at ``sigma_floor`` (the report marks it "≤").
- μ and ε: the uniform expectation over S by the midpoint rule on ``n_segment``
  evenly spaced α in [α_lo, α_hi]; ε = mean |ℓ − μ|, the smallest ε that satisfies
  condition 1.
- Conditions 2 and 3, for each σ of ``sigmas`` (δ = σ·√n), at both ends of S, each
  as the mean over ``n_noise`` draws: Gaussian noise of std σ on every parameter
  (n = ``n_parameters``, the number of parameters; buffers are not perturbed), and a
  step of |ν|, ν ~ N(0, δ²), outward along the segment (distance measured over the
  parameters). The same
  standard-normal draws (seeded by ``seed``) serve every σ, so the estimates vary
  smoothly with σ.
"""

from __future__ import annotations

from functools import cache
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.optimize import brentq
from torch import Tensor, nn

from ..evaluation import Batches, cache_batches
from ..progress import progress
from .batchnorm_modes import BnMode
from .interpolation import LinearPath

LossAt = Callable[[float, "Tensor | None"], float]

DEFAULT_SIGMAS = (0.002, 0.005, 0.01, 0.02, 0.05)


def _draws(seed: int, stream: int, count: int, size: int) -> Iterator[Tensor]:
    """``count`` standard-normal float64 vectors of ``size``, the same for every call
    with the same (seed, stream); drawn one at a time so that only one is in memory."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))
    for _ in range(count):
        yield torch.randn(size, generator=generator, dtype=torch.float64)


def _boundary(loss: Callable[[float], float], start: float, side: int, level: float,
              initial_step: float, max_extent: float, tol: float) -> float:
    """First α beyond ``start`` (towards ``side`` = ±1) where the loss crosses ``level``."""
    inner, step = start, initial_step
    while step <= max_extent:
        outer = start + side * step
        value = loss(outer)
        if not np.isfinite(value):
            raise ValueError(f"the loss is {value} at α = {outer:g} (BatchNorm variances extrapolated with "
                             "bn='follow' can turn negative: use bn='recalibrate')")
        if value > level:
            return float(brentq(lambda alpha: loss(alpha) - level, inner, outer, xtol=tol))
        inner, step = outer, 2 * step
    raise ValueError(f"the loss stayed below the boundary level {level:.4g} for α up to {max_extent} beyond the "
                     f"{'second' if side > 0 else 'first'} solution; lower threshold or raise max_extent")


def basin_along(
    loss_at: LossAt,
    n_parameters: int,
    distance: float,
    *,
    threshold: float = 0.05,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    n_segment: int = 20,
    n_noise: int = 10,
    seed: int = 0,
    rise: float = 2.0,
    initial_step: float = 0.1,
    max_extent: float = 100.0,
    boundary_tol: float = 1e-3,
    sigma_floor: float | None = 1e-4,
) -> pd.DataFrame:
    """The (ε, δ)-basin test of the module docstring on any loss along a line.

    Parameters
    ----------
    loss_at : callable (float, Tensor or None) -> float
        ``loss_at(α, noise)``: the loss at Θ(α) plus ``noise`` (None, or a float64
        vector of the ``n_parameters`` perturbed coordinates).
    n_parameters : int
        n, the number of perturbed coordinates (δ = σ·√n).
    distance : float
        ‖θ_b − θ_a‖ over those coordinates (positive).
    threshold : float
        The boundary is where the loss passes (1 + threshold)·max(ℓ(θ_a), ℓ(θ_b)).
    sigmas : sequence of float
        Noise stds per coordinate, σ; δ = σ·√n.
    n_segment : int
        Points of the midpoint rule for μ and ε over S.
    n_noise : int
        Draws per condition estimate.
    seed : int
        Seed of the standard-normal draws (the same for every σ).
    rise : float
        Walls at μ + rise·ε.
    initial_step, max_extent, boundary_tol : float
        The boundary search: first step in α, largest distance in α searched beyond an
        endpoint, precision in α of Brent's method.
    sigma_floor : float or None
        When both conditions hold at the smallest σ of ``sigmas``, search smaller σ
        down to ``sigma_floor`` (module docstring); None: the grid only.

    Returns
    -------
    pandas.DataFrame
        One row per σ searched (ascending; the grid's and those of the refinement):
        ``sigma``, ``delta``, ``noise_loss_lo|hi`` and ``extrapolation_loss_lo|hi`` (the
        condition estimates at both ends of S), ``noise_holds``,
        ``extrapolation_holds``, ``holds``; and in every row μ (``mu``), ε
        (``epsilon``), ``wall`` = μ + rise·ε, the boundary ``alpha_lo``, ``alpha_hi``,
        ``endpoint_loss``, ``level``, ``basin_delta`` (smallest δ searched where both
        conditions hold at both ends; NaN if none), ``basin_delta_exact`` (True when a
        smaller searched δ fails, so ``basin_delta`` is a number; False when it is an
        upper bound or NaN), ``in_basin``, ``sigma_searched_min`` (the smallest σ
        searched), ``n_parameters``, ``distance`` and every setting (``sigma_floor``
        NaN for None).

    Raises
    ------
    ValueError
        For invalid settings (``sigma_floor`` included), identical solutions, a
        non-finite loss on the search, or a loss that never reaches the boundary level
        within ``max_extent``.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Sec. 3.3 and Definition 3.1.
    """
    if threshold <= 0 or rise <= 0 or initial_step <= 0 or boundary_tol <= 0:
        raise ValueError("threshold, rise, initial_step and boundary_tol must be positive")
    if n_segment < 2 or n_noise < 1:
        raise ValueError(f"need n_segment >= 2 and n_noise >= 1, got {n_segment} and {n_noise}")
    if not len(sigmas) or min(sigmas) <= 0:
        raise ValueError(f"sigmas must be a non-empty list of positive noise stds, got {list(sigmas)}")
    if sigma_floor is not None and not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be a positive σ (or None to search the grid only), got {sigma_floor}")
    if not distance > 0:
        raise ValueError("the two solutions have identical parameters, so the segment has no direction; "
                         "pass two different solutions")

    @cache  # each α once: Brent's method starts from the two ends of a bracket already evaluated
    def loss(alpha: float) -> float:
        return float(loss_at(float(alpha), None))

    endpoint_loss = max(loss(0.0), loss(1.0))
    level = (1 + threshold) * endpoint_loss
    ends = {"lo": _boundary(loss, 0.0, -1, level, initial_step, max_extent, boundary_tol),
            "hi": _boundary(loss, 1.0, +1, level, initial_step, max_extent, boundary_tol)}
    grid = ends["lo"] + (np.arange(n_segment) + 0.5) / n_segment * (ends["hi"] - ends["lo"])
    inside = np.array([loss(alpha) for alpha in grid])
    mu = float(inside.mean())
    epsilon = float(np.abs(inside - mu).mean())
    wall = mu + rise * epsilon
    outward = {"lo": -1.0, "hi": 1.0}
    streams = {"lo": 0, "hi": 1}  # noise of end e: stream streams[e]; extrapolation steps: stream 2 + streams[e]
    steps = {end: next(_draws(seed, 2 + stream, 1, n_noise)).abs().tolist() for end, stream in streams.items()}

    def conditions(sigma: float) -> dict[str, float | bool]:
        """Conditions 2 and 3 at both ends of S for noise std σ (δ = σ·√n)."""
        delta = sigma * np.sqrt(n_parameters)
        row: dict[str, float | bool] = {"sigma": sigma, "delta": delta}
        for end, alpha in ends.items():
            row[f"noise_loss_{end}"] = float(np.mean(
                [loss_at(alpha, sigma * z) for z in _draws(seed, streams[end], n_noise, n_parameters)]))
            row[f"extrapolation_loss_{end}"] = float(np.mean(
                [loss(alpha + outward[end] * delta * step / distance) for step in steps[end]]))
        row["noise_holds"] = min(row["noise_loss_lo"], row["noise_loss_hi"]) >= wall
        row["extrapolation_holds"] = min(row["extrapolation_loss_lo"], row["extrapolation_loss_hi"]) >= wall
        row["holds"] = row["noise_holds"] and row["extrapolation_holds"]
        return row

    ordered = sorted(float(s) for s in sigmas)
    rows = [conditions(sigma) for sigma in progress(ordered, "basin: walls per σ", total=len(ordered))]
    while sigma_floor is not None and rows[0]["holds"] and rows[0]["sigma"] > sigma_floor:
        rows.insert(0, conditions(max(rows[0]["sigma"] / 2, sigma_floor)))  # refine a δ at the smallest σ
    frame = pd.DataFrame(rows)
    holding = frame.loc[frame["holds"], "delta"]
    summary = {
        "mu": mu, "epsilon": epsilon, "wall": wall, "alpha_lo": ends["lo"], "alpha_hi": ends["hi"],
        "endpoint_loss": endpoint_loss, "level": level,
        "basin_delta": float(holding.min()) if len(holding) else float("nan"),
        "basin_delta_exact": bool(len(holding)) and bool(holding.min() > frame["delta"].min()),
        "in_basin": bool(len(holding)), "sigma_searched_min": float(frame["sigma"].min()),
        "n_parameters": n_parameters, "distance": distance, "threshold": threshold, "rise": rise,
        "n_segment": n_segment, "n_noise": n_noise, "seed": seed, "initial_step": initial_step,
        "boundary_tol": boundary_tol, "sigma_floor": float("nan") if sigma_floor is None else sigma_floor,
    }
    return frame.assign(**summary)


def basin(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Batches,
    *,
    threshold: float = 0.05,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    n_segment: int = 20,
    n_noise: int = 10,
    seed: int = 0,
    max_examples: int | None = None,
    bn: BnMode = "auto",
    recalibration_loader: Batches | None = None,
    recalibration_batches: int | None = None,
    rise: float = 2.0,
    initial_step: float = 0.1,
    max_extent: float = 100.0,
    boundary_tol: float = 1e-3,
    split: str = "test",
    sigma_floor: float | None = 1e-4,
) -> pd.DataFrame:
    """(ε, δ)-basin test (Definition 3.1, read as in the module docstring) of the
    segment through two solutions, on their loss along Θ(α) = (1 − α)·θ_a + α·θ_b.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Two solutions of the same architecture. Not changed.
    loader : iterable of (Tensor, Tensor)
        Evaluation batches; the first ``max_examples`` examples are cached once.
    threshold, sigmas, n_segment, n_noise, seed, rise, initial_step, max_extent, boundary_tol, sigma_floor
        As in :func:`basin_along`.
    max_examples : int, optional
        Evaluate on the first ``max_examples`` examples (default: all).
    bn : {"auto", "recalibrate", "follow", "keep"}
        BatchNorm running statistics along the line, as in
        :func:`transferscope.analysis.interpolation.interpolate`; with "recalibrate"
        they are recomputed at every evaluated point, noise included.
    recalibration_loader : iterable of (Tensor, Tensor), optional
        Training data for "recalibrate".
    recalibration_batches : int, optional
        Recalibrate on the first ``recalibration_batches`` batches (default: all),
        read once.
    split : str
        Name of the data in ``loader``, recorded in the ``split`` column.

    Returns
    -------
    pandas.DataFrame
        :func:`basin_along`'s frame (n = the number of parameters of the model; buffers
        are not perturbed) plus ``bn`` (the resolved mode), ``recalibration_batches``,
        ``split`` and ``n_examples``.

    Raises
    ------
    ValueError
        As :func:`basin_along`, and for models of different architectures or with NaN
        or inf weights, or an unknown or inapplicable ``bn`` mode.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Sec. 3.3, Definition 3.1 and Table 3.
    """
    path = LinearPath(model_a, model_b, bn=bn, recalibration_loader=recalibration_loader,
                      recalibration_batches=recalibration_batches)
    batches = cache_batches(loader, max_examples)

    def loss_at(alpha: float, noise: Tensor | None) -> float:
        return path.evaluate(alpha, batches, noise)["loss"]

    frame = basin_along(loss_at, path.n_parameters, path.parameter_distance(), threshold=threshold, sigmas=sigmas,
                        n_segment=n_segment, n_noise=n_noise, seed=seed, rise=rise, initial_step=initial_step,
                        max_extent=max_extent, boundary_tol=boundary_tol, sigma_floor=sigma_floor)
    return frame.assign(bn=path.bn_mode, recalibration_batches=path.recalibration_batches, split=split,
                        n_examples=sum(len(y) for _, y in batches))
