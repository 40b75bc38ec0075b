"""Linear interpolation between two solutions and the performance barrier
(Neyshabur, Sedghi & Zhang 2020, Sec. 3.3, Fig. 4).

The path is Θ(α) = (1 − α)·Θ_a + α·Θ_b over every parameter and floating buffer;
α outside [0, 1] extrapolates. Integer buffers (``num_batches_tracked``) are taken
from model_a. The paper's Fixup ResNet-50 had no BatchNorm; for models with
BatchNorm the running statistics at Θ(α) are a choice (``bn``,
:mod:`transferscope.analysis.batchnorm_modes`), recorded in column ``bn``:

- ``"recalibrate"``: recompute them on training data at every α
  (:func:`transferscope.evaluation.recalibrate_batchnorm`), what "auto" resolves to
  for models with BatchNorm when ``recalibration_loader`` is given;
- ``"follow"``: interpolate them like the weights (endpoints exact; when
  extrapolating, a variance can turn negative and the outputs NaN — a RuntimeWarning
  says so, :meth:`LinearPath.broken_variances`; use "recalibrate" there); what "auto"
  resolves to otherwise;
- ``"keep"``: use model_a's statistics at every α.

:class:`LinearPath` holds the two states and one working copy; the basin test
(:mod:`transferscope.analysis.basins`) walks the same path.

The performance barrier of a curve m(α) is the largest excess of m over the straight
line between its endpoints, max_{α∈[0,1]} m(α) − [(1 − α)·m(0) + α·m(1)], for the
loss and for the error, 1 − score (1 − accuracy, or 1 − mean AUC for multi-label
targets).
"""

from __future__ import annotations

import copy
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..evaluation import (
    Batches,
    cache_batches,
    eval_mode,
    evaluate,
    metrics,
    model_device,
    nonfinite_error,
    nonfinite_weights,
    recalibrate_batchnorm,
    score_columns,
    score_name,
)
from ..models.state import batchnorm_buffer_keys, check_compatible
from ..progress import progress
from .batchnorm_modes import BnMode, recalibration_data, resolve_bn_mode

DEFAULT_ALPHAS = tuple(round(-0.5 + 0.1 * i, 2) for i in range(21))  # -0.5, -0.4, ..., 1.5
EVAL_MODE_BN = ("follow", "keep")  # modes the batched (vmap) path supports
# "auto" takes the vmap path only for models this small: on an H100 (bench_interpolation.py)
# vmap ran 2.9x faster than the loop at 78k parameters, 1.9x at 309k, 0.77x at 1.2M.
VMAP_MAX_PARAMETERS = 500_000


class LinearPath:
    """Θ(α) = (1 − α)·Θ_a + α·Θ_b on one working deep copy of model_a (the caller's
    models are never written to). ``bn`` is resolved with
    :func:`~transferscope.analysis.batchnorm_modes.resolve_bn_mode`; for "recalibrate"
    the first ``recalibration_batches`` batches of ``recalibration_loader`` (None = all)
    are cached once, so every α is recalibrated on the same data. ``load(α, noise)``
    puts Θ(α) (+ noise on the parameters, a flat vector in ``parameters()`` order) into
    ``self.model``; ``stacked(αs)`` gives the states of several α with a leading α
    axis, for ``torch.func.vmap``."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, *, bn: str = "auto",
                 recalibration_loader: Batches | None = None, recalibration_batches: int | None = None) -> None:
        check_compatible(model_a, model_b, what="model_a", reference_name="model_b")
        for name, model in (("model_a", model_a), ("model_b", model_b)):
            if nonfinite_weights(model):
                raise nonfinite_error(name, model)
        self.bn_mode = resolve_bn_mode(model_a, bn, recalibration_loader)
        self.recalibration_data = recalibration_data(self.bn_mode, recalibration_loader, recalibration_batches)
        self.recalibration_batches = recalibration_batches if self.bn_mode == "recalibrate" else None
        self.model = copy.deepcopy(model_a)
        device = model_device(self.model)
        self.state_a = {k: v.detach() for k, v in model_a.state_dict().items()}
        self.state_b = {k: v.detach().to(device) for k, v in model_b.state_dict().items()}
        kept = set(batchnorm_buffer_keys(self.model, running_stats_only=True)) if self.bn_mode == "keep" else set()
        self.moving = {k for k, v in self.state_a.items() if v.is_floating_point() and k not in kept}
        self.model_state = self.model.state_dict()  # the working copy's own tensors, which load() writes in place
        self.parameter_names = [name for name, _ in self.model.named_parameters()]
        self.buffer_names = [name for name, tensor in self.model.named_buffers()
                             if tensor.is_floating_point() and name in self.state_a]

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def parameter_distance(self) -> float:
        """‖θ_b − θ_a‖₂ over the parameters (float64)."""
        diff = [(self.state_b[k].double() - self.state_a[k].double()).flatten() for k in self.parameter_names]
        return float(torch.cat(diff).norm())

    def state_at(self, alpha: float) -> dict[str, Tensor]:
        # torch.lerp is exact at both endpoints: a + α(b − a) for |α| < 0.5, b − (b − a)(1 − α) otherwise.
        return {k: torch.lerp(a, self.state_b[k], alpha) if k in self.moving else a for k, a in self.state_a.items()}

    def broken_variances(self, state: Mapping[str, Tensor]) -> list[str]:
        """The BatchNorm ``running_var`` keys of ``state`` (Θ(α)) that the path has
        broken: an entry v(α) = (1 − α)·v_a + α·v_b is
        broken when

            v(α) < 0,  or  v(α) = 0 while v_a > 0 and v_b > 0.

        Why: BatchNorm divides by √(v + eps); a negative variance is no variance (NaN once
        v < −eps, meaningless above), and a zero reached from two positive endpoints is
        the border of that region, reached only by extrapolating. A zero taken from an
        endpoint (a dead channel, v_a = 0 or v_b = 0) is a statistic the model itself has,
        and its outputs are finite. For α in [0, 1], v(α) is a convex combination of two
        non-negative variances, hence never negative, and zero only where an endpoint
        is zero: nothing on the segment is ever broken. Empty unless ``bn="follow"``.
        """
        if self.bn_mode != "follow":
            return []
        broken = []
        for key, value in state.items():
            if key.endswith("running_var") and key in self.moving:
                a, b = self.state_a[key], self.state_b[key]
                if bool(((value < 0) | ((value == 0) & (a > 0) & (b > 0))).any()):
                    broken.append(key)
        return broken

    def _check_variances(self, state: Mapping[str, Tensor], alpha: float) -> None:
        """Warn when the path broke a BatchNorm variance at α (:meth:`broken_variances`)."""
        broken = self.broken_variances(state)
        if broken:
            warnings.warn(f"at α = {alpha:g} the extrapolated BatchNorm variance {broken[0]!r} has negative "
                          "entries (or zeros between two positive endpoints), so the outputs are NaN or meaningless; "
                          "use bn='recalibrate' to extrapolate a model with BatchNorm", RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def load(self, alpha: float, noise: Tensor | None = None) -> nn.Module:
        """Θ(α) (+ noise), written in place into the working copy's tensors: no state dict of
        new tensors per α (for a ResNet-18, 45 MB of fresh memory to fault in and copy again)."""
        for key, target in self.model_state.items():
            if key in self.moving:
                torch.lerp(self.state_a[key], self.state_b[key], alpha, out=target)
            else:
                target.copy_(self.state_a[key])
        self._check_variances(self.model_state, alpha)
        if noise is not None:  # a flat vector in parameters() order (any memory format)
            offset = 0
            for parameter in self.model.parameters():
                count = parameter.numel()
                parameter.add_(noise[offset:offset + count].reshape(parameter.shape).to(parameter))
                offset += count
        if self.recalibration_data is not None:  # bn mode "recalibrate"
            recalibrate_batchnorm(self.model, self.recalibration_data)
        return self.model

    def evaluate(self, alpha: float, batches: Batches, noise: Tensor | None = None) -> dict[str, float]:
        """Loss and accuracy (or mean AUC) at Θ(α) (+ noise) over ``batches``; NaN when
        the outputs there are NaN or inf (far along the path, the weights can overflow)."""
        return evaluate(self.load(alpha, noise), batches, allow_nonfinite=True)

    def stacked(self, alphas: Sequence[float]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Parameters and floating buffers at every α, each with a leading α axis."""
        def at(key: str) -> Tensor:
            a = self.state_a[key]
            if key not in self.moving:
                return a.expand(len(alphas), *a.shape)
            weight = torch.tensor(alphas, dtype=a.dtype, device=a.device).view(-1, *[1] * a.ndim)
            return torch.lerp(a.unsqueeze(0), self.state_b[key].unsqueeze(0), weight)

        buffers = {k: at(k) for k in self.buffer_names}
        for index, alpha in enumerate(alphas):
            self._check_variances({k: v[index] for k, v in buffers.items()}, alpha)
        return {k: at(k) for k in self.parameter_names}, buffers


@torch.no_grad()
def _evaluate_batched(path: LinearPath, alphas: Sequence[float], batches: Batches, chunk: int) -> list[dict]:
    """Metrics at several α per forward pass: ``vmap`` over stacked weights with
    ``functional_call``; BatchNorm runs in eval mode on the stacked running statistics."""
    model = path.model
    device = model_device(model)
    targets = torch.cat([y.cpu() for _, y in batches])
    forward = vmap(lambda params, buffers, x: functional_call(model, (params, buffers), (x,)), in_dims=(0, 0, None))
    results: list[dict] = []
    with eval_mode(model):
        starts = range(0, len(alphas), chunk)
        for start in progress(starts, "interpolating", total=len(starts)):
            params, buffers = path.stacked(alphas[start:start + chunk])
            logits = torch.cat([forward(params, buffers, x.to(device)).float().cpu() for x, _ in batches], dim=1)
            results.extend(metrics(per_alpha, targets) for per_alpha in logits)
    return results


def _check_alphas(alphas: Iterable[float]) -> list[float]:
    values = np.asarray(list(alphas), dtype=float)
    if values.size == 0:
        raise ValueError("alphas is empty; pass the interpolation coefficients, e.g. numpy.linspace(0, 1, 11)")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"alphas must be finite numbers, got {values.tolist()}")
    return values.tolist()


def _warn_nonfinite(alphas: Sequence[float], results: Sequence[dict]) -> None:
    """Warn naming the α whose loss is NaN or inf (their loss and score are reported as such)."""
    bad = [alpha for alpha, result in zip(alphas, results) if not np.isfinite(result["loss"])]
    if bad:
        warnings.warn(f"at α in {bad} the interpolated model's outputs or loss are NaN or inf (the weights are "
                      "extrapolated far from both models, or BatchNorm statistics broke); their loss and score are "
                      "NaN or inf in the table", RuntimeWarning, stacklevel=3)


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Batches,
    *,
    alphas: Iterable[float] = DEFAULT_ALPHAS,
    bn: BnMode = "auto",
    recalibration_loader: Batches | None = None,
    recalibration_batches: int | None = None,
    split: str = "test",
    max_examples: int | None = None,
    batched: bool | str = "auto",
    vmap_chunk: int = 8,
) -> pd.DataFrame:
    """Loss and score at Θ(α) = (1 − α)·Θ_a + α·Θ_b for every α (Sec. 3.3, Fig. 4 of
    the paper; α outside [0, 1] extrapolates).

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Two models of the same architecture (Θ_a at α = 0, Θ_b at α = 1). Not changed.
    loader : iterable of (Tensor, Tensor)
        Evaluation batches; the first ``max_examples`` examples are cached once and
        reused for every α.
    alphas : iterable of float
        The interpolation coefficients (default -0.5, -0.4, …, 1.5).
    bn : {"auto", "recalibrate", "follow", "keep"}
        BatchNorm running statistics at Θ(α) (module docstring); "auto" recalibrates
        when the model has BatchNorm and ``recalibration_loader`` is given, else follows.
    recalibration_loader : iterable of (Tensor, Tensor), optional
        Training data for "recalibrate".
    recalibration_batches : int, optional
        Recalibrate on the first ``recalibration_batches`` batches (default: all),
        read once.
    split : str
        Name of the data in ``loader``, recorded in the ``split`` column.
    max_examples : int, optional
        Evaluate on the first ``max_examples`` examples (default: all).
    batched : bool or "auto"
        Evaluate ``vmap_chunk`` values of α per forward pass with ``torch.func.vmap``
        (BatchNorm in eval mode only, so not with "recalibrate"); "auto" turns it on
        when the model is on CUDA and has at most ``VMAP_MAX_PARAMETERS`` parameters.
    vmap_chunk : int
        Values of α per batched forward pass.

    Returns
    -------
    pandas.DataFrame
        One row per α: ``alpha``, ``split``, ``loss``, ``score`` (accuracy, or mean
        AUC for multi-label targets), ``metric`` (``"accuracy"`` or ``"auc"``),
        ``n_examples``, ``bn`` (the resolved mode), ``recalibration_batches``,
        ``batched``. An α whose outputs are NaN or inf (far outside [0, 1]) gets a NaN
        loss and score and a RuntimeWarning. :func:`barrier` summarises the curve.

    Raises
    ------
    ValueError
        For models of different architectures or with NaN or inf weights, empty or
        non-finite ``alphas``, an unknown or inapplicable ``bn`` mode.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Sec. 3.3 and Fig. 4.
    """
    values = _check_alphas(alphas)
    if batched not in (True, False, "auto"):
        raise ValueError(f"batched must be True, False or 'auto', got {batched!r}")
    if vmap_chunk < 1:
        raise ValueError(f"vmap_chunk must be >= 1, got {vmap_chunk}")
    path = LinearPath(model_a, model_b, bn=bn, recalibration_loader=recalibration_loader,
                      recalibration_batches=recalibration_batches)
    if batched is True and path.bn_mode not in EVAL_MODE_BN:
        raise ValueError("batched=True evaluates BatchNorm in eval mode and cannot recalibrate per α; "
                         "use batched=False, or bn='follow' or 'keep'")
    use_vmap = batched is True or (batched == "auto" and path.bn_mode in EVAL_MODE_BN
                                   and model_device(model_a).type == "cuda"
                                   and path.n_parameters <= VMAP_MAX_PARAMETERS)
    batches = cache_batches(loader, max_examples)
    if use_vmap:
        results = _evaluate_batched(path, values, batches, vmap_chunk)
    else:
        results = [path.evaluate(alpha, batches) for alpha in progress(values, "interpolating", total=len(values))]
    _warn_nonfinite(values, results)
    metric = score_name(batches[0][1])
    settings = {"bn": path.bn_mode, "recalibration_batches": path.recalibration_batches, "batched": use_vmap}
    rows = [{"alpha": alpha, "split": split, **score_columns(result, metric), **settings}
            for alpha, result in zip(values, results)]
    return pd.DataFrame(rows)


BARRIER_QUANTITIES = ("loss", "error")


def _require_columns(curve: pd.DataFrame, columns: Sequence[str], need: str) -> None:
    missing = [column for column in columns if column not in curve]
    if missing:
        raise ValueError(f"{need} needs the columns {missing}, which the curve lacks (it has {list(curve.columns)}); "
                         "pass one curve of interpolate() output")


def barrier(curve: pd.DataFrame, quantities: str | Sequence[str] = BARRIER_QUANTITIES) -> dict[str, float | str]:
    """Performance barrier of one interpolation curve (Sec. 3.3).

    For each quantity m (the loss, or the error 1 − score),

        barrier_m = max_{α∈[0,1]} m(α) − [(1 − α)·m(0) + α·m(1)]

    (≥ 0, since the endpoints count). α outside [0, 1] is ignored.

    Parameters
    ----------
    curve : pandas.DataFrame
        One :func:`interpolate` curve (one row per α, α = 0 and α = 1 included);
        group a study frame by pair first (``report.figures.landscape.barrier_table``).
    quantities : {"loss", "error"} or a sequence of them
        The barriers to compute (default both).

    Returns
    -------
    dict
        ``{m}_barrier`` and ``{m}_barrier_alpha`` (the α where it is reached) for each
        quantity m; with "error", also ``metric``, the score the error is 1 − of
        (``"accuracy"`` or ``"auc"``).

    Raises
    ------
    ValueError
        For an unknown quantity, several rows per α, missing endpoints, or a missing
        ``alpha``, ``loss``, ``score`` or ``metric`` column.

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Sec. 3.3 and Fig. 4.
    """
    names = [quantities] if isinstance(quantities, str) else list(quantities)
    unknown = [m for m in names if m not in BARRIER_QUANTITIES]
    if unknown:
        raise ValueError(f"unknown barrier quantity {unknown[0]!r}; choose 'loss' and/or 'error'")
    _require_columns(curve, ["alpha"], "barrier")
    if curve["alpha"].duplicated().any():
        raise ValueError("barrier needs one interpolation curve with one row per α; "
                         "group a study frame by pair first (see report.figures.landscape.barrier_table)")
    inside = curve[(curve["alpha"] >= 0) & (curve["alpha"] <= 1)].sort_values("alpha")
    if not {0.0, 1.0} <= set(inside["alpha"]):
        raise ValueError("barrier needs the endpoints α = 0 and α = 1 on the curve; include them in alphas")
    alpha = inside["alpha"].to_numpy(float)
    result: dict[str, float | str] = {}
    for name in names:
        if name == "loss":
            _require_columns(curve, ["loss"], "the loss barrier")
            values = inside["loss"].to_numpy(float)
        else:
            _require_columns(curve, ["score", "metric"], "the error barrier")
            values = 1.0 - inside["score"].to_numpy(float)
            result["metric"] = str(inside["metric"].iloc[0])
        line = (1 - alpha) * values[alpha == 0][0] + alpha * values[alpha == 1][0]
        peak = int(np.argmax(values - line))
        result[f"{name}_barrier"] = float(values[peak] - line[peak])
        result[f"{name}_barrier_alpha"] = float(alpha[peak])
    return result
