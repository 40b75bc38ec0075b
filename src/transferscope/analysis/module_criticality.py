"""Module criticality (Chatterji, Neyshabur & Sedghi 2020, "The intriguing role of
module criticality in the generalization of deep networks"; Definition 3.2, Sec. 3.4
and Fig. 6 of Neyshabur, Sedghi & Zhang 2020).

Module i moves from its initial value θ_i^0 towards its end value θ_i^F while every
other module stays at its end value, and Gaussian noise u is added to module i only:

- ``path="direct"``: θ_i(α) = (1 − α)·θ_i^0 + α·θ_i^F;
- ``path="optimization"``: the saved checkpoints θ_i^0 = θ_i^(0), …, θ_i^(K) = θ_i^F
  (the run's checkpoints up to the first one equal to the end point, so the whole
  run serves θ_F and θ_opt alike);
  checkpoint k sits at α_k = (length of the polyline θ_i^(0..k)) / (its total length),
  L2 lengths over module i's parameters, and θ_i(α) interpolates linearly between
  the two neighbouring checkpoints (:func:`path_positions`, :func:`point_on_path`).

The end point Θ^F is the final network (``start="final"``) or the best checkpoint
θ_opt (``start="best"``). (α, σ) is *feasible* when the mean loss over ``samples``
noise draws is at most ε: ε = threshold · L(Θ^F) (``threshold_mode="relative"``;
the reference implementation used 1.01) or ε = threshold (``"absolute"``). Then

    μ_i = min over feasible (α, σ) of  α² · ‖θ_i^F − θ_i^0‖²_F / σ²

(Definition 3.2; the optimization path uses the same numerator), and the network
criticality is Σ_i μ_i. μ_i = +inf when no grid point is feasible.

Noise, per tensor W of module i (``noise``); W^F is its end value, θ_i^F the module:

- ``"absolute"``: std σ per coordinate (the TensorFlow reference implementation);
- ``"frobenius"``: std σ · ‖θ_i^F‖_F / √n_i per coordinate, n_i the module's parameter
  count, so E‖u‖²_F = σ²‖θ_i^F‖²_F: noise proportional to the module's Frobenius norm
  (Neyshabur et al. 2020, Sec. 3.4);
- ``"per_filter"``: std σ · ‖W^F[j]‖ / √numel(W^F[j]) for output filter j (index on
  dim 0; the filters of a 1-D tensor are its entries).

BatchNorm (``bn="stats-follow-path"``): the module's BN affine parameters are
parameters like any other (they move along the path, get noise and count in the
norm); its running statistics move along the path but get no noise and do not count
in the norm; integer buffers stay at the end value. The network is evaluated in eval
mode.

Randomness: the noise of grid point (α index a, σ index s, sample k) comes from a
fresh ``torch.Generator`` seeded by ``SeedSequence(seed, spawn_key=(a, s, k))``
(:func:`noise_generator`), so every point is reproducible on its own and grid and
bisection see the same draws (the TensorFlow reference consumed one generator).

Cost: the modules that run before module i never change, so their output (the input
of module i) is computed once and each evaluation runs module i and the rest of the
network only (``cache_prefix``; checked against the full forward at a perturbed point
before use, full forward otherwise). ``method="bisection"`` returns the value
without the heatmap: for each α (ascending) it searches the σ grid for the largest
feasible σ (steps of 1, 2, 4, … up from the bottom, then bisection), assuming
feasibility is monotone in σ (the feasible σ form an interval starting at the
smallest σ); it skips σ that could not lower the best μ found so far, and stops
drawing noise at a point as soon as it is proven infeasible (losses are
non-negative). Under that assumption it gives the grid's value exactly; near the
feasibility border the mean over few noise draws can break the assumption.
"""

from __future__ import annotations

import copy
import math
import warnings
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..evaluation import Batches, cache_batches, loss_fn, model_device
from ..models import module_state_keys
from .rewind import ModelOrState, as_state_dict, check_state

DEFAULT_GRID = tuple(np.arange(1, 12) / 11)  # 11 points in (0, 1]
PATHS = ("direct", "optimization")
STARTS = ("final", "best")
NOISES = ("absolute", "frobenius", "per_filter")
THRESHOLD_MODES = ("relative", "absolute")
METHODS = ("grid", "bisection")
BN_HANDLING = "stats-follow-path"
CHECK_TOLERANCE = 1e-5

State = dict[str, Tensor]


def noise_generator(seed: int, alpha_index: int, sigma_index: int, sample: int) -> torch.Generator:
    """A fresh CPU generator for one noise draw, seeded from (seed, α index, σ index, sample)."""
    state = np.random.SeedSequence(seed, spawn_key=(alpha_index, sigma_index, sample)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def path_positions(path_states: Sequence[Mapping[str, Tensor]], keys: Sequence[str]) -> np.ndarray:
    """α_k of each checkpoint: cumulative L2 length of the polyline through ``keys`` up
    to checkpoint k over its total length (0 for the first, 1 for the last)."""
    steps = [math.sqrt(sum(float((b[key].double() - a[key].double()).pow(2).sum()) for key in keys))
             for a, b in zip(path_states[:-1], path_states[1:])]
    lengths = np.concatenate([[0.0], np.cumsum(steps)])
    if lengths[-1] == 0:
        raise ValueError("the module does not move along path_states (all checkpoints are equal), "
                         "so positions on the optimization path are undefined; use path='direct'")
    return lengths / lengths[-1]


def point_on_path(path_states: Sequence[Mapping[str, Tensor]], positions: np.ndarray, alpha: float,
                  keys: Sequence[str]) -> State:
    """θ(α) on the optimization path: linear between the checkpoints around α."""
    last = len(path_states) - 2
    k = min(int(np.searchsorted(positions, alpha, side="right")) - 1, last)
    span = positions[k + 1] - positions[k]
    t = 1.0 if span == 0 else (alpha - positions[k]) / span
    return {key: torch.lerp(path_states[k][key].double(), path_states[k + 1][key].double(), t)
            .to(path_states[k][key].dtype) for key in keys}


def _direct_point(initial: Mapping[str, Tensor], end: Mapping[str, Tensor], alpha: float,
                  keys: Sequence[str]) -> State:
    return {key: torch.lerp(initial[key].double(), end[key].double(), alpha).to(end[key].dtype) for key in keys}


def _noise_scales(end: Mapping[str, Tensor], params: Sequence[str], noise: str) -> dict[str, Tensor]:
    """Per-element noise std at σ = 1 for each parameter (module docstring)."""
    if noise == "absolute":
        return {key: torch.ones(()) for key in params}
    if noise == "frobenius":
        norm = math.sqrt(sum(float(end[key].double().pow(2).sum()) for key in params))
        count = sum(end[key].numel() for key in params)
        return {key: torch.tensor(norm / math.sqrt(count)) for key in params}
    scales = {}
    for key in params:
        weight = end[key].double()
        if weight.ndim == 0:
            scales[key] = weight.abs()
            continue
        filters = weight.reshape(len(weight), -1)
        scale = filters.norm(dim=1) / math.sqrt(filters.shape[1])
        scales[key] = scale.view(-1, *([1] * (weight.ndim - 1)))
    return scales


def _largest_feasible(feasible: Callable[[int], bool], low: int, high: int) -> int:
    """Largest index in (low, high) where ``feasible`` holds, or ``low`` if none, for
    a ``feasible`` true on a prefix of the range: steps of 1, 2, 4, … up from ``low``
    (feasible regions are usually short), then bisection."""
    step = 1
    while low + step < high:
        if not feasible(low + step):
            high = low + step
            break
        low, step = low + step, 2 * step
    while high - low > 1:
        middle = (low + high) // 2
        if feasible(middle):
            low = middle
        else:
            high = middle
    return low


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else value


class _PassThrough(nn.Module):
    """Stands in for a module whose output is cached: returns its first input unchanged."""

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG002
        return x


class _Evaluator:
    """Mean loss of ``model`` (eval mode) over fixed batches with its current weights.

    After :meth:`cache_prefix`, only module ``start`` and what runs after it are
    computed: ``start`` receives its inputs captured once, and the modules that ran
    (every time) before it are swapped for pass-throughs during the forward.
    """

    def __init__(self, model: nn.Module, batches: Batches) -> None:
        self.model = model
        device = model_device(model)
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        self.n = sum(len(y) for _, y in self.batches)
        self.start: nn.Module | None = None
        self.inputs: list[tuple[tuple, dict]] = []
        self.prefix: list[str] = []

    def full_logits(self) -> list[Tensor]:
        return [self.model(x) for x, _ in self.batches]

    def suffix_logits(self) -> list[Tensor]:
        assert self.start is not None
        batch = [0]

        def feed(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:  # noqa: ARG001
            cached_args, cached_kwargs = self.inputs[batch[0]]
            return tuple(map(_clone, cached_args)), {name: _clone(v) for name, v in cached_kwargs.items()}

        handle = self.start.register_forward_pre_hook(feed, with_kwargs=True)
        originals = {name: self.model.get_submodule(name) for name in self.prefix}
        try:
            for name in self.prefix:
                self._set(name, _PassThrough())
            logits = []
            for index, (x, _) in enumerate(self.batches):
                batch[0] = index
                logits.append(self.model(x))
            return logits
        finally:
            handle.remove()
            for name, module in originals.items():
                self._set(name, module)

    def logits(self) -> list[Tensor]:
        return self.suffix_logits() if self.start is not None else self.full_logits()

    def mean_loss(self, logits: list[Tensor]) -> float:
        total = sum(float(loss_fn(out.float(), y, reduction="none").double().sum())
                    for out, (_, y) in zip(logits, self.batches))
        return total / self.n

    def loss(self) -> float:
        return self.mean_loss(self.logits())

    def _set(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent), child, module)

    def cache_prefix(self, start_name: str, perturbed_keys: Sequence[str]) -> bool:
        """Capture the inputs of ``start_name`` and find the modules to skip; False
        (nothing cached) when ``start_name`` does not run exactly once per forward or
        nothing runs before it."""
        prefix = self._modules_before(start_name, perturbed_keys)
        if not prefix:
            return False  # nothing runs before the module: the full forward is the suffix
        start = self.model.get_submodule(start_name)
        captured: list[tuple[tuple, dict]] = []
        handle = start.register_forward_pre_hook(
            lambda module, args, kwargs: captured.append((tuple(map(_clone, args)),
                                                          {k: _clone(v) for k, v in kwargs.items()})),
            with_kwargs=True)
        try:
            self.full_logits()
        finally:
            handle.remove()
        self.start, self.inputs, self.prefix = start, captured, prefix
        return True

    def drop_prefix(self) -> None:
        self.start, self.inputs, self.prefix = None, [], []

    def _modules_before(self, start_name: str, perturbed_keys: Sequence[str]) -> list[str] | None:
        """Outermost modules whose every call ends before ``start_name`` begins and
        that hold no perturbed tensor (from one forward recorded with hooks)."""
        events: list[str] = []
        record: Callable[..., None] = lambda name, *_: events.append(name)  # noqa: E731
        handles = []
        named = [name for name, _ in self.model.named_modules() if name]
        try:
            for name in named:
                module = self.model.get_submodule(name)
                handles.append(module.register_forward_pre_hook(partial(record, name)))
                handles.append(module.register_forward_hook(partial(record, name)))
            self.model(self.batches[0][0])
        finally:
            for handle in handles:
                handle.remove()
        if events.count(start_name) != 2:
            return None
        begin = events.index(start_name)
        last_event = {name: index for index, name in enumerate(events)}
        done = {name for name, index in last_event.items() if index < begin
                and not any(key.startswith(name + ".") for key in perturbed_keys)}
        return [name for name in done if name.rpartition(".")[0] not in done]


def _module_keys(model: nn.Module, module: str) -> list[str]:
    """State keys of ``module``: its partition group (stem BN with conv1, …) when it is
    a default partition module, else the named module's own keys."""
    groups = module_state_keys(model)
    return list(groups[module]) if module in groups else list(module_state_keys(model, [module])[module])


def _grid(values: Sequence[float] | None, name: str, low_open: bool) -> np.ndarray:
    grid = np.unique(np.asarray(DEFAULT_GRID if values is None else values, dtype=float))
    if grid.size == 0 or grid.max() > 1 or grid.min() < 0 or (low_open and grid.min() <= 0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be a non-empty list of values in {interval}, got {list(grid)}")
    return grid


def _same_module_tensors(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: Sequence[str]) -> bool:
    return all(torch.equal(a[key].detach().cpu(), b[key].detach().cpu()) for key in keys)


@torch.no_grad()
def criticality(
    model_final: nn.Module,
    model_initial: ModelOrState,
    loader: Batches,
    module: str,
    *,
    path: str = "direct",
    path_states: Sequence[ModelOrState] | None = None,
    start: str = "final",
    best_state: ModelOrState | None = None,
    noise: str = "frobenius",
    threshold: float = 1.01,
    threshold_mode: str = "relative",
    alphas: Sequence[float] | None = None,
    sigmas: Sequence[float] | None = None,
    samples: int = 10,
    seed: int = 0,
    max_examples: int | None = None,
    method: str = "grid",
    split: str = "test",
    cache_prefix: bool = True,
) -> pd.DataFrame:
    """The (α, σ) grid of module criticality for ``module`` (module docstring).

    ``model_final``: the trained model (its architecture, and θ^F for
    ``start="final"``); ``model_initial``: model or state dict of θ^0; ``best_state``:
    θ_opt for ``start="best"``; ``path_states``: the run's checkpoints from θ^0 (used up
    to the first that equals the end point) for ``path="optimization"``. Grids default to 11 points in (0, 1] (α may
    include 0); ``split`` names the data of ``loader`` (first ``max_examples``).

    Returns one row per evaluated (alpha, sigma) (all of them for ``method="grid"``):
    ``loss_mean, loss_std`` (population std) over the ``n_samples`` noise draws,
    ``feasible``, ``measure`` = α²‖θ^F − θ^0‖²/σ², ``delta_norm_sq``, ``base_loss``
    (at Θ^F), ``loss_limit`` (ε) and the settings. :func:`criticality_value` gives μ.
    """
    for value, name, allowed in ((path, "path", PATHS), (start, "start", STARTS), (noise, "noise", NOISES),
                                 (threshold_mode, "threshold_mode", THRESHOLD_MODES), (method, "method", METHODS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if path == "optimization" and (path_states is None or len(path_states) < 2):
        raise ValueError("path='optimization' needs path_states=[state at epoch 0, ..., state at the end point] "
                         "(at least two checkpoints of the run)")
    if start == "best" and best_state is None:
        raise ValueError("start='best' needs best_state=<the best checkpoint (θ_opt) as a model or state dict>")
    if samples < 1 or seed < 0 or threshold <= 0:
        raise ValueError(f"need samples >= 1, seed >= 0 and threshold > 0; got samples={samples}, seed={seed}, "
                         f"threshold={threshold}")
    alpha_grid, sigma_grid = _grid(alphas, "alphas", low_open=False), _grid(sigmas, "sigmas", low_open=True)

    keys = _module_keys(model_final, module)
    work = copy.deepcopy(model_final).eval()
    own = work.state_dict()
    parameter_names = {name for name, _ in work.named_parameters()}
    params = [key for key in keys if key in parameter_names]
    moving = [key for key in keys if own[key].is_floating_point()]  # parameters and BN statistics
    if not params:
        raise ValueError(f"module {module!r} has no parameters to perturb")

    def module_tensors(model_or_state: ModelOrState, what: str) -> State:
        state = as_state_dict(model_or_state)
        check_state(state, work, moving, what)
        return {key: state[key].detach().to(own[key].device) for key in moving}

    initial = module_tensors(model_initial, "model_initial")
    if start == "best":
        check_state(as_state_dict(best_state), work, list(own), "best_state")
        work.load_state_dict(as_state_dict(best_state))
    end = {key: own[key].clone() for key in moving}
    if path == "optimization":
        states = [module_tensors(state, f"path_states[{index}]") for index, state in enumerate(path_states)]
        arrivals = [index for index, state in enumerate(states) if _same_module_tensors(state, end, moving)]
        if not _same_module_tensors(states[0], initial, moving) or not arrivals:
            raise ValueError(f"path_states must start at model_initial and reach the end point ({start!r}: "
                             f"{'best_state' if start == 'best' else 'model_final'}) for module {module!r}; "
                             "pass the run's checkpoints from epoch 0")
        states = states[:arrivals[0] + 1]  # the path ends where the run first reaches the end point
        positions = path_positions(states, params)
        point = lambda alpha: point_on_path(states, positions, alpha, moving)  # noqa: E731
    else:
        point = lambda alpha: _direct_point(initial, end, alpha, moving)  # noqa: E731

    delta_norm_sq = sum(float((end[key].double() - initial[key].double()).pow(2).sum()) for key in params)
    scales = {key: scale.to(own[key].device, own[key].dtype) for key, scale in _noise_scales(end, params, noise).items()}
    evaluator = _Evaluator(work, cache_batches(loader, max_examples))
    base_loss = evaluator.loss()
    limit = threshold * base_loss if threshold_mode == "relative" else threshold

    def set_point(alpha_index: int) -> State:
        values = point(float(alpha_grid[alpha_index]))
        for key in moving:
            own[key].copy_(values[key])
        return values

    def add_noise(values: State, alpha_index: int, sigma_index: int, sample: int) -> None:
        generator = noise_generator(seed, alpha_index, sigma_index, sample)
        sigma = float(sigma_grid[sigma_index])
        for key in params:
            draw = torch.randn(own[key].shape, generator=generator).to(own[key].device, own[key].dtype)
            own[key].copy_(values[key] + sigma * scales[key] * draw)

    if cache_prefix and evaluator.cache_prefix(module, moving):
        add_noise(set_point(0), 0, len(sigma_grid) - 1, 0)
        try:
            full, suffix = evaluator.full_logits(), evaluator.suffix_logits()
            same = all(torch.allclose(a, b, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE, equal_nan=True)
                       for a, b in zip(suffix, full))
        except Exception:  # noqa: BLE001 - a forward that cannot run on cached inputs falls back below
            same = False
        if not same:
            warnings.warn(f"running {type(work).__name__} from {module!r} on cached inputs does not reproduce the "
                          "full forward; evaluating with full forward passes instead", stacklevel=2)
            evaluator.drop_prefix()

    rows = []

    def evaluate_point(alpha_index: int, values: State, sigma_index: int, *, stop_early: bool) -> bool:
        losses = []
        for sample in range(samples):
            add_noise(values, alpha_index, sigma_index, sample)
            losses.append(evaluator.loss())
            if stop_early and sum(losses) > limit * samples:
                break  # losses are >= 0: the mean over all samples exceeds the limit already
        alpha, sigma = float(alpha_grid[alpha_index]), float(sigma_grid[sigma_index])
        feasible = len(losses) == samples and float(np.mean(losses)) <= limit
        rows.append({"alpha": alpha, "sigma": sigma, "loss_mean": float(np.mean(losses)),
                     "loss_std": float(np.std(losses)), "n_samples": len(losses), "feasible": feasible,
                     "measure": alpha ** 2 * delta_norm_sq / sigma ** 2})
        return feasible

    if method == "grid":
        for alpha_index in range(len(alpha_grid)):
            values = set_point(alpha_index)
            for sigma_index in range(len(sigma_grid)):
                evaluate_point(alpha_index, values, sigma_index, stop_early=False)
    else:
        best = math.inf
        for alpha_index, alpha in enumerate(alpha_grid):
            if best == 0:
                break
            # σ at or below this bound cannot give α²‖Δ‖²/σ² < best: treat them as settled
            bound = 0.0 if math.isinf(best) else alpha * math.sqrt(delta_norm_sq / best)
            settled = int(np.searchsorted(sigma_grid, bound, side="right")) - 1
            values = set_point(alpha_index)
            largest = _largest_feasible(partial(evaluate_point, alpha_index, values, stop_early=True), settled,
                                        len(sigma_grid))
            if largest > settled:
                best = alpha ** 2 * delta_norm_sq / sigma_grid[largest] ** 2

    frame = pd.DataFrame(rows)
    settings = {"module": module, "path": path, "start": start, "noise": noise, "threshold": threshold,
                "threshold_mode": threshold_mode, "samples": samples, "seed": seed, "method": method, "split": split,
                "n": evaluator.n, "bn": BN_HANDLING, "delta_norm_sq": delta_norm_sq, "base_loss": base_loss,
                "loss_limit": limit}
    for name, value in settings.items():
        frame[name] = value
    columns = ["module", "alpha", "sigma", "loss_mean", "loss_std", "n_samples", "feasible", "measure"]
    return frame[columns + [name for name in settings if name not in columns]]


def _best_row(frame: pd.DataFrame) -> pd.Series | None:
    """The feasible row of least measure, or None when no row is feasible."""
    if frame["module"].nunique() != 1:
        raise ValueError("the frame holds several modules; call this per module (frame.groupby('module'))")
    feasible = frame[frame["feasible"].astype(bool)]
    return None if feasible.empty else feasible.loc[feasible["measure"].idxmin()]


def criticality_value(frame: pd.DataFrame) -> float:
    """μ = min over feasible rows of α²‖θ^F − θ^0‖²_F/σ² (Definition 3.2); +inf if none."""
    row = _best_row(frame)
    return math.inf if row is None else float(row["measure"])


def network_criticality(
    model_final: nn.Module,
    model_initial: ModelOrState,
    loader: Batches,
    modules: Sequence[str] | None = None,
    *,
    max_examples: int | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """Σ_i μ_i over the partition modules (Chatterji et al. 2020; Neyshabur et al. 2020
    Sec. 3.4). ``settings`` go to :func:`criticality`.

    One row per module (``criticality``, the minimising ``alpha`` and ``sigma``, NaN
    when nothing is feasible, ``delta_norm_sq``, ``base_loss`` and the settings) and a
    row ``module="total"`` with the sum.
    """
    batches = cache_batches(loader, max_examples)
    names = list(module_state_keys(model_final, modules))
    rows = []
    for name in names:
        grid = criticality(model_final, model_initial, batches, name, **settings)
        best = _best_row(grid)
        first = grid.iloc[0]
        rows.append({"module": name, "criticality": criticality_value(grid),
                     "alpha": math.nan if best is None else best["alpha"],
                     "sigma": math.nan if best is None else best["sigma"],
                     **{column: first[column] for column in grid.columns
                        if column not in ("module", "alpha", "sigma", "loss_mean", "loss_std", "n_samples",
                                          "feasible", "measure")}})
    frame = pd.DataFrame(rows)
    total = {column: frame[column].iloc[0] for column in frame.columns}
    total.update(module="total", criticality=float(frame["criticality"].sum()), alpha=math.nan, sigma=math.nan,
                 delta_norm_sq=float(frame["delta_norm_sq"].sum()), base_loss=math.nan, loss_limit=math.nan)
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
