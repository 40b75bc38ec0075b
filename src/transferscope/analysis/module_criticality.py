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
criticality is Σ_i μ_i.

A grid too coarse for a module resolves itself: when no point of the grid is feasible
(μ_i would be +inf, and so would Σ_i μ_i), σ is extended below the grid's smallest
σ_min by halving, σ_min/2, σ_min/4, … (the last step clipped to ``sigma_floor``), every
α at each new σ (``method="fast"``: α ascending up to the first feasible one, the
smallest μ at that σ), until a σ has a feasible point or ``sigma_floor`` has been
searched. When less noise can only help (feasibility monotone in σ), this finds the
largest feasible σ to within a factor 2 (the resolution of the default grid at its low
end, σ_min = 1/11 beside 2/11). μ_i is then the minimum over every evaluated point,
extension included; it stays +inf only when nothing is feasible down to
``sigma_floor``, and ``sigma_searched_min`` (the grid's smallest σ, or the last σ of
the extension) says how far down the search went.

Noise, per tensor W of module i (``noise``); W^F is its end value, θ_i^F the module:

- ``"absolute"``: std σ per coordinate (the TensorFlow reference implementation);
- ``"frobenius"``: std σ · ‖θ_i^F‖_F / √n_i per coordinate, n_i the module's parameter
  count, so E‖u‖²_F = σ²‖θ_i^F‖²_F: noise proportional to the module's Frobenius norm
  (Neyshabur et al. 2020, Sec. 3.4);
- ``"per_filter"``: std σ · ‖W^F[j]‖ / √numel(W^F[j]) for output filter j (index on
  dim 0; the filters of a 1-D tensor are its entries).

BatchNorm (``bn`` column ``"follow"``, the one mode here): the module's BN affine
parameters are parameters like any other (they move along the path, get noise and
count in the norm); its running statistics follow the path but get no noise and do not
count in the norm; integer buffers stay at the end value. The network is evaluated in
eval mode.

Randomness: the noise of grid point (α index a, σ index s, sample k) comes from a
fresh ``torch.Generator`` seeded by ``SeedSequence(seed, spawn_key=(a, s, k))``
(:func:`noise_generator`), so every point is reproducible on its own and both methods
see the same draws (the TensorFlow reference consumed one generator); the
k-th σ of the downward extension has σ index ``len(sigmas) + k − 1``.

Cost: the modules that run before module i never change, so their output (the input
of module i) is computed once and each evaluation runs module i and the rest of the
network only (:class:`transferscope.cached_prefix.CachedPrefixEvaluator`: its inputs
are captured in the full forward pass that gives L(Θ^F), and the cache is checked
against the full forward on the first batch at a perturbed point before use, full
forward passes otherwise).
``method="fast"`` (``"bisection"``, its earlier name, is an alias) returns the grid's
μ_i exactly, on every input, with fewer points and draws and no assumption on how
feasibility depends on σ: it evaluates the grid's points in ascending order of
α²‖Δ‖²/σ² (ties in grid order) and stops at the first feasible one, which is the
grid's minimiser; every point it reports before that has a smaller measure and is
infeasible, and those are exactly the points that must be evaluated to prove that no
feasible point beats μ_i. Its rows are therefore the grid's points of measure below
μ_i, plus the minimiser (and points tied with it that come first in grid order): the
feasible frontier where it decides μ_i (for every α, no σ with α²‖Δ‖²/σ² < μ_i is
feasible; on the minimiser's row the frontier is the minimiser's σ). The whole frontier
(the largest feasible σ of every α) and the heatmap need ``method="grid"``.

At a point the fast path first tries to prove it infeasible cheaply. The examples are
regrouped into :data:`EARLY_STOP_CHUNKS` chunks by descending loss at Θ^F (at most a
batch each, :meth:`CachedPrefixEvaluator.regrouped`: a second copy of the evaluation
batches; the cached inputs are shared and gathered chunk by chunk),
and it evaluates the first chunk at every draw, then the second, …, stopping as soon as
the loss sums so far exceed ε times the examples of all ``samples`` draws: losses are
≥ 0, so the mean is then bound to exceed ε. Such a point reports ``n_samples`` 0 and NaN
losses. The sums of other batches of the same examples may round differently, so this
bound is taken with a margin (:data:`CHUNK_MARGIN`, ε(1 + 1e-4) + 1e-6 per example; on
CPU the per-example losses were bit-identical in chunks and in the grid's batches on
``benchmarks/bench_criticality.py``). A point its chunks do not rule out is evaluated as
the grid does it, in the grid's batches, draw by draw (the batches of highest mean loss
at Θ^F first), stopping once the loss sums exceed the same bound without margin (the
sums are the grid's): its ``feasible`` is the grid's, and a point drawn in full has the
grid's ``loss_mean`` and ``loss_std`` (each draw's batch sums are added in batch order,
as the grid does); one stopped there reports its complete draws (``n_samples`` below
``samples``; NaN losses for none). The chunks are what make the fast path fast: most of
an infeasible point's loss sits in its high-loss examples, so a fraction of the
examples proves it, and smaller batches run faster per example on a CPU; keeping them
apart from the grid's batches keeps every reported number the grid's. A point holds
``samples`` copies of the module's parameters (one noisy copy per draw).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence, get_args

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..cached_prefix import CachedPrefixEvaluator
from ..evaluation import Batches, cache_batches
from ..models import NETWORK, REST, Modules, Partition
from ..models.partition import ModuleNotFoundInModel, Unit
from ..models.state import ModelOrState, as_state_dict, check_compatible
from ..progress import progress

DEFAULT_GRID = tuple(np.arange(1, 12) / 11)  # 11 points in (0, 1]
PATHS = ("direct", "optimization")
STARTS = ("final", "best")
Noise = Literal["absolute", "frobenius", "per_filter"]
ThresholdMode = Literal["relative", "absolute"]
NOISES: tuple[str, ...] = get_args(Noise)
THRESHOLD_MODES: tuple[str, ...] = get_args(ThresholdMode)
METHODS = ("grid", "fast")
METHOD_ALIASES = {"bisection": "fast"}  # the fast path's earlier name
EARLY_STOP_MARGIN = 1e-9  # relative: a point is dropped early only when rounding cannot make its mean feasible
EARLY_STOP_CHUNKS = 4  # the fast path first evaluates a point on the examples in this many chunks
CHUNK_MARGIN = (1e-4, 1e-6)  # ε(1 + 1e-4) + 1e-6 bounds the mean of the chunked losses of a feasible point
BN_MODE = "follow"  # running statistics move with the module along the path (module docstring)
POINT_COLUMNS = ["module", "alpha", "sigma", "loss_mean", "loss_std", "n_samples", "feasible", "measure"]
SETTING_COLUMNS = ["path", "start", "noise", "threshold", "threshold_mode", "samples", "seed", "method", "split",
                   "n_examples", "bn", "delta_norm_sq", "base_loss", "loss_limit", "sigma_floor", "sigma_searched_min"]

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


def _units(model: nn.Module, modules: Modules) -> list[Unit]:
    """The units to measure: those of ``modules`` (:class:`transferscope.models.Partition`;
    ``rest``, the tensors a list or mapping leaves out, is not measured), or the default
    partition's."""
    try:
        partition = Partition.of(model, modules)
    except ModuleNotFoundInModel as error:  # its message lists the modules that exist
        raise ValueError(str(error)) from error
    return [unit for unit in partition.units if isinstance(modules, Partition) or unit.name != REST]


def _grid_axis(values: Sequence[float] | None, name: str, low_open: bool) -> np.ndarray:
    """The sorted, checked values of ``alphas`` or ``sigmas`` (default: :data:`DEFAULT_GRID`)."""
    grid = np.unique(np.asarray(DEFAULT_GRID if values is None else values, dtype=float))
    if grid.size == 0 or grid.max() > 1 or grid.min() < 0 or (low_open and grid.min() <= 0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be a non-empty list of values in {interval}, got {list(grid)}")
    return grid


def _same_module_tensors(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: Sequence[str]) -> bool:
    return all(torch.equal(a[key].detach().cpu(), b[key].detach().cpu()) for key in keys)


def _check_settings(path: str, path_states: Sequence[ModelOrState] | None, start: str,
                    best_state: ModelOrState | None, noise: str, threshold: float, threshold_mode: str, samples: int,
                    seed: int, method: str) -> None:
    """Raise ``ValueError`` for an unknown choice or a missing input, naming the fix."""
    for value, name, allowed in ((path, "path", PATHS), (start, "start", STARTS), (noise, "noise", NOISES),
                                 (threshold_mode, "threshold_mode", THRESHOLD_MODES),
                                 (method, "method", METHODS + tuple(METHOD_ALIASES))):
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


@dataclass(frozen=True)
class _Grid:
    """The (α, σ) grid, the noise draws at each point and how the grid is searched."""

    alphas: np.ndarray
    sigmas: np.ndarray
    samples: int
    seed: int
    method: str


class _MovingModule:
    """Unit ``unit`` of a working copy of the model (eval mode), placed at θ_i(α)
    (:meth:`move_to`) plus noise on its parameters (:meth:`add_noise`).

    ``name``: the unit's name; ``entry``: its first module, whose inputs may be cached;
    ``moving``: its floating tensors (parameters and BatchNorm statistics), which
    follow the path; ``params``: its parameters, which get the noise and make up
    ‖θ_i^F − θ_i^0‖ (``delta_norm_sq``).
    """

    def __init__(self, model: nn.Module, initial: ModelOrState, unit: Unit, *, path: str,
                 path_states: Sequence[ModelOrState] | None, start: str, best_state: ModelOrState | None,
                 noise: str) -> None:
        self.name, self.entry, self.model = unit.name, unit.paths[0], copy.deepcopy(model).eval()
        self.state = self.model.state_dict()
        keys = list(unit.keys)
        parameter_names = {key for key, _ in self.model.named_parameters()}
        self.params = [key for key in keys if key in parameter_names]
        self.moving = [key for key in keys if self.state[key].is_floating_point()]
        if not self.params:
            raise ValueError(f"module {self.name!r} has no parameters to perturb")
        initial_values = self._module_tensors(initial, "initial")
        if start == "best" and best_state is not None:  # _check_settings: start="best" comes with best_state
            check_compatible(best_state, self.model, keys=list(self.state), what="best_state")
            self.model.load_state_dict(as_state_dict(best_state))
        end = {key: self.state[key].clone() for key in self.moving}
        if path == "optimization" and path_states is not None:  # _check_settings: it comes with path_states
            self.point = self._optimization_path(initial_values, end, path_states, start)
        else:
            self.point = partial(_direct_point, initial_values, end, keys=self.moving)
        self.delta_norm_sq = sum(float((end[key].double() - initial_values[key].double()).pow(2).sum())
                                 for key in self.params)
        self.scales = {key: scale.to(self.state[key].device, self.state[key].dtype)
                       for key, scale in _noise_scales(end, self.params, noise).items()}
        self.values: State = {}

    def _module_tensors(self, model_or_state: ModelOrState, what: str) -> State:
        state = as_state_dict(model_or_state)
        check_compatible(state, self.model, keys=self.moving, what=what)
        return {key: state[key].detach().to(self.state[key].device) for key in self.moving}

    def _optimization_path(self, initial: State, end: State, path_states: Sequence[ModelOrState],
                           start: str) -> Callable[[float], State]:
        """θ_i(α) along the checkpoints, up to the first that reaches the end point."""
        states = [self._module_tensors(state, f"path_states[{index}]") for index, state in enumerate(path_states)]
        arrivals = [index for index, state in enumerate(states) if _same_module_tensors(state, end, self.moving)]
        if not _same_module_tensors(states[0], initial, self.moving) or not arrivals:
            raise ValueError(f"path_states must start at initial and reach the end point ({start!r}: "
                             f"{'best_state' if start == 'best' else 'model'}) for module {self.name!r}; "
                             "pass the run's checkpoints from epoch 0")
        states = states[:arrivals[0] + 1]
        return partial(point_on_path, states, path_positions(states, self.params), keys=self.moving)

    def move_to(self, alpha: float) -> None:
        """Set the module to θ_i(α), without noise."""
        self.values = self.point(alpha)
        for key in self.moving:
            self.state[key].copy_(self.values[key])

    def noisy_parameters(self, sigma: float, generator: torch.Generator) -> State:
        """θ_i(α) + σ·scale·u for the module's parameters, u ~ N(0, I) from ``generator``."""
        return {key: self.values[key] + sigma * self.scales[key] * torch.randn(
                    self.state[key].shape, generator=generator).to(self.state[key].device, self.state[key].dtype)
                for key in self.params}

    def set_parameters(self, values: State) -> None:
        for key, value in values.items():
            self.state[key].copy_(value)

    def add_noise(self, sigma: float, generator: torch.Generator) -> None:
        """Set the module's parameters to θ_i(α) + σ·scale·u, u ~ N(0, I) from ``generator``."""
        self.set_parameters(self.noisy_parameters(sigma, generator))


def _end_point_losses(module: _MovingModule, evaluator: CachedPrefixEvaluator, grid: _Grid, *,
                      cache_prefix: bool) -> list[Tensor]:
    """Per-example losses of each batch at the end point. With ``cache_prefix``, from the full
    forward pass that caches the module's inputs; the cache is kept when the suffix
    reproduces the full forward on the first batch at a perturbed point (the first α,
    the largest σ), else a warning and full forward passes."""
    if not cache_prefix:
        return list(evaluator.example_losses())
    if not evaluator.cache_inputs_of(module.entry, module.moving):
        return evaluator.full_losses
    largest = len(grid.sigmas) - 1
    module.move_to(float(grid.alphas[0]))
    module.add_noise(float(grid.sigmas[largest]), noise_generator(grid.seed, 0, largest, 0))
    if not evaluator.suffix_matches_full_forward(n_batches=1):
        warnings.warn(f"running {type(module.model).__name__} from {module.name!r} on cached inputs does not "
                      "reproduce the full forward; evaluating with full forward passes instead", stacklevel=2)
        evaluator.clear_cache()
    return evaluator.full_losses


def _chunks_by_loss(losses: Sequence[Tensor], largest_batch: int) -> list[Tensor]:
    """The examples (indices into the batches in order) by descending loss at the end
    point, in :data:`EARLY_STOP_CHUNKS` chunks of at most ``largest_batch``."""
    order = torch.argsort(torch.cat(list(losses)), descending=True, stable=True)
    size = min(largest_batch, math.ceil(len(order) / EARLY_STOP_CHUNKS))
    return list(order.split(size))


class _Search:
    """Evaluates (α, σ) points of one module's grid, one row per point in ``rows``;
    ``sigmas``: the grid's σ, then those of the downward extension; ``batch_order``:
    the batches by descending mean loss at the end point, the order in which a draw
    evaluates them (so that an infeasible point's losses pass the early-stop bound soon);
    ``chunks`` (``method="fast"``): the examples regrouped by descending loss at the end
    point (:func:`_chunks_by_loss`), evaluated by ``chunk_evaluator``."""

    def __init__(self, module: _MovingModule, evaluator: CachedPrefixEvaluator, grid: _Grid, limit: float,
                 end_point_losses: Sequence[Tensor]) -> None:
        self.module, self.evaluator, self.grid, self.limit = module, evaluator, grid, limit
        self.rows: list[dict[str, Any]] = []
        self.sigmas = [float(sigma) for sigma in grid.sigmas]
        self.alpha_index: int | None = None  # where the module is now
        sizes = [len(losses) for losses in end_point_losses]
        self.batch_order = sorted(range(len(sizes)),
                                  key=lambda index: -float(end_point_losses[index].sum()) / max(sizes[index], 1))
        self.chunks = _chunks_by_loss(end_point_losses, max(sizes)) if grid.method == "fast" else []
        self.chunk_evaluator = evaluator.regrouped(self.chunks) if self.chunks else None

    def measure(self, alpha_index: int, sigma_index: int) -> float:
        """α²‖θ_i^F − θ_i^0‖²/σ² of a point."""
        return float(self.grid.alphas[alpha_index]) ** 2 * self.module.delta_norm_sq / self.sigmas[sigma_index] ** 2

    def draw(self, alpha_index: int, sigma_index: int, sample: int) -> Iterator[float]:
        """Loss sums of the batches, in ``batch_order`` and one at a time as asked for, at
        θ_i(α) plus noise draw ``sample`` of the point (the module at θ_i(α))."""
        generator = noise_generator(self.grid.seed, alpha_index, sigma_index, sample)
        self.module.add_noise(self.sigmas[sigma_index], generator)
        return self.evaluator.loss_sums(self.batch_order)

    def chunk_sums(self, alpha_index: int, sigma_index: int) -> Iterator[float]:
        """Loss sums of the ``chunks`` at the point's noise draws, one at a time as asked
        for: the first chunk at every draw, then the second, … (the module at θ_i(α))."""
        draws = [self.module.noisy_parameters(self.sigmas[sigma_index],
                                              noise_generator(self.grid.seed, alpha_index, sigma_index, sample))
                 for sample in range(self.grid.samples)]
        assert self.chunk_evaluator is not None  # made for method="fast", the only caller
        for chunk in range(len(self.chunks)):
            for parameters in draws:
                self.module.set_parameters(parameters)
                yield from self.chunk_evaluator.loss_sums([chunk])

    def proven_infeasible(self, alpha_index: int, sigma_index: int) -> bool:
        """Whether the point's loss sums over the ``chunks`` exceed ε times the examples of
        all draws by more than rounding could explain (:data:`CHUNK_MARGIN`), stopping at
        the first chunk that shows it (losses are ≥ 0)."""
        relative, per_example = CHUNK_MARGIN
        budget = (self.limit * (1 + relative) + per_example) * self.grid.samples * self.evaluator.n_examples
        drawn = 0.0
        for value in self.chunk_sums(alpha_index, sigma_index):
            drawn += value
            if drawn > budget:
                return True
        return False

    def sample_loss(self, alpha_index: int, sigma_index: int, sample: int, drawn: float,
                    budget: float) -> tuple[float | None, float]:
        """Mean loss of draw ``sample`` (None when a batch is left out) and ``drawn``, the
        point's loss sums so far, plus its batches'; it stops once that exceeds ``budget``."""
        sums = {}
        for index, value in zip(self.batch_order, self.draw(alpha_index, sigma_index, sample)):
            sums[index] = value
            drawn += value
            if drawn > budget:
                break
        if len(sums) < len(self.batch_order):
            return None, drawn
        return sum(sums[index] for index in range(len(sums))) / self.evaluator.n_examples, drawn  # as loss()

    def is_feasible(self, alpha_index: int, sigma_index: int, *, stop_early: bool) -> bool:
        """Mean loss over the noise draws at (α, σ) ≤ ε, recorded as a row of ``rows``;
        ``stop_early`` (module docstring): stop once the losses prove the point infeasible,
        on the ``chunks`` or within the grid's batches."""
        if alpha_index != self.alpha_index:
            self.module.move_to(float(self.grid.alphas[alpha_index]))
            self.alpha_index = alpha_index
        losses = [] if stop_early and self.proven_infeasible(alpha_index, sigma_index) else self.draw_losses(
            alpha_index, sigma_index, stop_early=stop_early)
        feasible = len(losses) == self.grid.samples and float(np.mean(losses)) <= self.limit
        self.rows.append({"alpha": float(self.grid.alphas[alpha_index]), "sigma": self.sigmas[sigma_index],
                          "loss_mean": float(np.mean(losses)) if losses else math.nan,
                          "loss_std": float(np.std(losses)) if losses else math.nan,
                          "n_samples": len(losses), "feasible": feasible,
                          "measure": self.measure(alpha_index, sigma_index)})
        return feasible

    def draw_losses(self, alpha_index: int, sigma_index: int, *, stop_early: bool) -> list[float]:
        """Mean loss of each complete draw at (α, σ), in the grid's batches; ``stop_early``:
        stop drawing once the loss sums drawn exceed ε times the examples of all draws
        (losses are ≥ 0, so the mean is bound to exceed ε), possibly within a draw."""
        budget = (self.limit * self.grid.samples * self.evaluator.n_examples * (1 + EARLY_STOP_MARGIN)
                  if stop_early else math.inf)
        losses, drawn = [], 0.0
        for sample in range(self.grid.samples):
            loss, drawn = self.sample_loss(alpha_index, sigma_index, sample, drawn, budget)
            if loss is not None:
                losses.append(loss)
            if drawn > budget:
                break
        return losses

    def search(self, points: Sequence[tuple[int, int]]) -> bool:
        """Whether one of ``points`` ((α index, σ index), in grid order) is feasible:
        every point (``method="grid"``), or in ascending order of measure up to the first
        feasible one (``"fast"``; module docstring), its rows then put in grid order."""
        if self.grid.method == "grid":
            return any([self.is_feasible(*point, stop_early=False) for point in points])  # a list: all evaluated
        first = len(self.rows)
        ordered = sorted(points, key=lambda point: self.measure(*point))  # stable: ties stay in grid order
        found = any(self.is_feasible(*point, stop_early=True) for point in ordered)
        self.rows[first:] = sorted(self.rows[first:], key=lambda row: (row["alpha"], row["sigma"]))
        return found

    def grid_points(self) -> bool:
        """Search the grid; whether a point is feasible."""
        return self.search([(alpha_index, sigma_index) for alpha_index in range(len(self.grid.alphas))
                            for sigma_index in range(len(self.grid.sigmas))])

    def extend_down(self, floor: float) -> None:
        """σ_min/2, σ_min/4, … (the last clipped to ``floor``), every α, until one σ
        has a feasible point (module docstring)."""
        sigma = self.sigmas[0]
        while sigma > floor:
            sigma = max(sigma / 2, floor)
            self.sigmas.append(sigma)
            if self.search([(alpha_index, len(self.sigmas) - 1) for alpha_index in range(len(self.grid.alphas))]):
                return


def _module_grid(module: _MovingModule, batches: Batches, grid: _Grid, *, threshold: float, threshold_mode: str,
                 cache_prefix: bool, sigma_floor: float | None) -> pd.DataFrame:
    """The evaluated points of one module, with its base loss, ε and ‖Δ‖²."""
    evaluator = CachedPrefixEvaluator(module.model, batches)
    end_point_losses = _end_point_losses(module, evaluator, grid, cache_prefix=cache_prefix)
    base_loss = sum(float(losses.sum()) for losses in end_point_losses) / evaluator.n_examples  # as evaluator.loss()
    limit = threshold * base_loss if threshold_mode == "relative" else threshold
    search = _Search(module, evaluator, grid, limit, end_point_losses)
    if not search.grid_points() and sigma_floor is not None:
        search.extend_down(sigma_floor)
    frame = pd.DataFrame(search.rows)
    return frame.assign(module=module.name, n_examples=evaluator.n_examples, bn=BN_MODE,
                        delta_norm_sq=module.delta_norm_sq, base_loss=base_loss, loss_limit=limit,
                        sigma_floor=math.nan if sigma_floor is None else sigma_floor,
                        sigma_searched_min=min(search.sigmas))


@torch.no_grad()
def criticality(
    model: nn.Module,
    initial: ModelOrState,
    loader: Batches,
    *,
    modules: Modules = None,
    path: str = "direct",
    path_states: Sequence[ModelOrState] | None = None,
    start: str = "final",
    best_state: ModelOrState | None = None,
    noise: Noise = "frobenius",
    threshold: float = 1.01,
    threshold_mode: ThresholdMode = "relative",
    alphas: Sequence[float] | None = None,
    sigmas: Sequence[float] | None = None,
    samples: int = 10,
    seed: int = 0,
    max_examples: int | None = None,
    method: str = "grid",
    split: str = "test",
    cache_prefix: bool = True,
    sigma_floor: float | None = 1e-4,
) -> pd.DataFrame:
    """The (α, σ) grid of module criticality for each of ``modules``.

    Module i moves to θ_i(α) + u (noise on its parameters, std σ per the ``noise``
    rule), every other module at its end value; (α, σ) is feasible when the mean loss
    over ``samples`` draws is at most ε, and

        μ_i = min over feasible (α, σ) of  α² · ‖θ_i^F − θ_i^0‖²_F / σ²

    (:func:`criticality_value`; paths, noise, BatchNorm and the search in the module
    docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The trained network: its architecture, and θ^F for ``start="final"``. Not changed.
    initial : torch.nn.Module or mapping of str to Tensor
        θ^0, the start of the path (the run's epoch-0 checkpoint), as a model or state dict.
    loader : iterable of (Tensor, Tensor)
        Evaluation batches; the first ``max_examples`` examples are cached once.
    modules : list of str, mapping of str to list of str, or Partition, optional
        The units to measure (:class:`transferscope.models.Partition`): module names
        (exact; a default unit takes its group, e.g. the stem BatchNorm with ``conv1``),
        or ``{unit: [module, ...]}``; ``rest``, the tensors a list or mapping leaves
        out, is not measured (pass a Partition to measure it). Default: the model
        family's partition.
    path : {"direct", "optimization"}
        The straight line from θ_i^0 to θ_i^F, or the polyline through ``path_states``.
    path_states : sequence of models or state dicts, optional
        The run's checkpoints from θ^0 on, used up to the first that equals the end
        point; required for ``path="optimization"``.
    start : {"final", "best"}
        The end point Θ^F: ``model`` itself, or ``best_state`` (θ_opt).
    best_state : torch.nn.Module or mapping of str to Tensor, optional
        θ_opt, required for ``start="best"``.
    noise : {"absolute", "frobenius", "per_filter"}
        Scale of the noise per coordinate at a given σ (module docstring).
    threshold : float
        ε = threshold · L(Θ^F) (``threshold_mode="relative"``) or ε = threshold (``"absolute"``).
    threshold_mode : {"relative", "absolute"}
    alphas, sigmas : sequence of float, optional
        The grid: α in [0, 1], σ in (0, 1]; default 11 points in (0, 1] each.
    samples : int
        Noise draws per grid point.
    seed : int
        Seed of the noise (:func:`noise_generator`: one generator per (α, σ, sample)).
    max_examples : int, optional
        Evaluate on the first ``max_examples`` examples of ``loader`` (default: all).
    method : {"grid", "fast", "bisection"}
        ``"grid"``: every grid point (the heatmap and the whole feasible frontier);
        ``"fast"``: the same μ_i and minimiser exactly, from the grid points of measure
        below μ_i and the minimiser only (module docstring); ``"bisection"`` is an alias
        of ``"fast"`` (recorded as ``"fast"``).
    split : str
        Name of the data in ``loader``, recorded in the ``split`` column.
    cache_prefix : bool
        Run only module i and what follows on its cached inputs
        (:class:`transferscope.cached_prefix.CachedPrefixEvaluator`) when that reproduces
        the full forward pass.
    sigma_floor : float or None
        When no grid point of a module is feasible, search σ below the grid down to
        ``sigma_floor`` (module docstring); None: the grid only. Below the grid's
        smallest σ it changes nothing.

    Returns
    -------
    pandas.DataFrame
        One row per evaluated (module, alpha, sigma) in grid order (every grid point for
        ``method="grid"``, then those of the downward extension): ``loss_mean``,
        ``loss_std`` (population std) over the ``n_samples`` complete draws, ``feasible``,
        ``measure`` = α²‖θ_i^F − θ_i^0‖²/σ², the settings, ``n_examples``, ``bn``
        ("follow"), ``delta_norm_sq``, ``base_loss`` (at Θ^F), ``loss_limit`` (ε),
        ``sigma_floor`` (NaN for None) and ``sigma_searched_min`` (the grid's smallest
        σ, or the last σ of the downward extension).

    Raises
    ------
    ValueError
        For an unknown module (naming those that exist), an unknown choice, a missing
        ``path_states`` or ``best_state``, states of another architecture, or a
        ``sigma_floor`` that is not positive.

    References
    ----------
    Chatterji, Neyshabur & Sedghi (2020), "The intriguing role of module criticality in
    the generalization of deep networks", ICLR. Neyshabur, Sedghi & Zhang (2020), "What is
    being transferred in transfer learning?", NeurIPS, Definition 3.2 and Fig. 6.
    """
    _check_settings(path, path_states, start, best_state, noise, threshold, threshold_mode, samples, seed, method)
    method = METHOD_ALIASES.get(method, method)
    if sigma_floor is not None and not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be a positive σ (or None to search the grid only), got {sigma_floor}")
    grid = _Grid(_grid_axis(alphas, "alphas", low_open=False), _grid_axis(sigmas, "sigmas", low_open=True), samples,
                 seed, method)
    units = _units(model, modules)
    batches = cache_batches(loader, max_examples)
    frames = [_module_grid(_MovingModule(model, initial, unit, path=path, path_states=path_states, start=start,
                                         best_state=best_state, noise=noise),
                           batches, grid, threshold=threshold, threshold_mode=threshold_mode, cache_prefix=cache_prefix,
                           sigma_floor=sigma_floor)
              for unit in progress(units, "criticality of modules", total=len(units))]
    frame = pd.concat(frames, ignore_index=True).assign(
        path=path, start=start, noise=noise, threshold=threshold, threshold_mode=threshold_mode, samples=samples,
        seed=seed, method=method, split=split)
    return frame[POINT_COLUMNS + SETTING_COLUMNS]


def _best_row(frame: pd.DataFrame) -> pd.Series | None:
    """The feasible row of least measure, or None when no row is feasible."""
    if frame["module"].nunique() != 1:
        raise ValueError("the frame holds several modules; call this per module (frame.groupby('module'))")
    feasible = frame[frame["feasible"].astype(bool)]
    return None if feasible.empty else feasible.loc[feasible["measure"].idxmin()]


def criticality_value(frame: pd.DataFrame) -> float:
    """The criticality μ_i of one module from its :func:`criticality` grid.

    Parameters
    ----------
    frame : pandas.DataFrame
        The rows of one module (``frame.groupby("module")`` for several).

    Returns
    -------
    float
        μ_i = min over feasible rows of α²‖θ_i^F − θ_i^0‖²_F/σ² (Definition 3.2);
        +inf when no row is feasible.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Definition 3.2; Chatterji et al. (2020).
    """
    row = _best_row(frame)
    return math.inf if row is None else float(row["measure"])


def _module_summary(grid: pd.DataFrame) -> dict[str, Any]:
    """μ_i of one module, its minimising (α, σ) (NaN when nothing is feasible) and settings."""
    best, first = _best_row(grid), grid.iloc[0]
    return {"module": first["module"], "criticality": math.inf if best is None else float(best["measure"]),
            "alpha": math.nan if best is None else best["alpha"], "sigma": math.nan if best is None else best["sigma"],
            **{column: first[column] for column in SETTING_COLUMNS}}


def network_criticality(
    model: nn.Module,
    initial: ModelOrState,
    loader: Batches,
    *,
    modules: Modules = None,
    **settings: Any,
) -> pd.DataFrame:
    """Network criticality: Σ_i μ_i over the modules.

    Parameters
    ----------
    model, initial, loader, modules
        As in :func:`criticality`.
    **settings
        Further keyword settings of :func:`criticality` (``path``, ``method``,
        ``max_examples``, …).

    Returns
    -------
    pandas.DataFrame
        One row per module: ``criticality`` (μ_i), the minimising ``alpha`` and
        ``sigma`` (NaN when nothing is feasible), the settings, ``n_examples``, ``bn``,
        ``delta_norm_sq``, ``base_loss`` and ``sigma_searched_min`` (a module with
        μ_i = +inf has no feasible point down to that σ); then a row
        ``module="network"`` with Σ_i μ_i and Σ_i ‖θ_i^F − θ_i^0‖².

    References
    ----------
    Chatterji, Neyshabur & Sedghi (2020); Neyshabur, Sedghi & Zhang (2020), Sec. 3.4.
    """
    grid = criticality(model, initial, loader, modules=modules, **settings)
    frame = pd.DataFrame([_module_summary(part) for _, part in grid.groupby("module", sort=False)])
    network = {column: frame[column].iloc[0] for column in frame.columns}
    network.update(module=NETWORK, criticality=float(frame["criticality"].sum()), alpha=math.nan, sigma=math.nan,
                   delta_norm_sq=float(frame["delta_norm_sq"].sum()), base_loss=math.nan, loss_limit=math.nan,
                   sigma_searched_min=math.nan)
    return pd.concat([frame, pd.DataFrame([network])], ignore_index=True)
