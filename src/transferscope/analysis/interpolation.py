"""Linear interpolation between two solutions and the performance barrier
(Neyshabur, Sedghi & Zhang 2020, Sec. 3.3, Fig. 4).

The path is Θ(α) = (1 − α)·Θ_a + α·Θ_b over every parameter and floating buffer;
α outside [0, 1] extrapolates. Integer buffers (``num_batches_tracked``) are taken
from model_a. The paper's Fixup ResNet-50 had no BatchNorm; for models with
BatchNorm the running statistics at Θ(α) are a choice, recorded in column ``bn``:

- ``"recalibrate"``: recompute them on training data at every α
  (:func:`transferscope.evaluation.recalibrate_batchnorm`), the default ("auto")
  for models with BatchNorm;
- ``"interpolate"``: interpolate them like the weights (endpoints exact; when
  extrapolating, a variance can turn negative and the outputs NaN — a RuntimeWarning
  says so; use "recalibrate" there);
- ``"keep_a"``: use model_a's statistics at every α;
- ``"none"``: the model has no BatchNorm (what "auto" resolves to then).

:class:`LinearPath` holds the two states and one working copy; the basin test
(:mod:`transferscope.analysis.basin`) walks the same path.

The performance barrier of a curve m(α) is the largest excess of m over the straight
line between its endpoints, max_{α∈[0,1]} m(α) − [(1 − α)·m(0) + α·m(1)], for the
loss and for the error (1 − accuracy, or 1 − mean AUC for multi-label targets).
"""

from __future__ import annotations

import copy
import warnings
from itertools import islice
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from transferscope.evaluation import (
    Batches,
    cache_batches,
    eval_mode,
    evaluate,
    has_batchnorm,
    metrics,
    model_device,
    nonfinite_error,
    nonfinite_weights,
    recalibrate_batchnorm,
)

BN_MODES = ("auto", "recalibrate", "interpolate", "keep_a", "none")
EVAL_MODE_BN = ("interpolate", "keep_a", "none")  # modes the batched (vmap) path supports
# "auto" takes the vmap path only for models this small: on an H100 (bench_interpolation.py)
# vmap ran 2.9x faster than the loop at 78k parameters, 1.9x at 309k, 0.77x at 1.2M.
VMAP_MAX_PARAMETERS = 500_000


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise ``ValueError`` naming the first state-dict entry whose name or shape differs."""
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    for key, tensor in state_a.items():
        if key not in state_b:
            raise ValueError(f"architectures differ: model_a has {key!r} {tuple(tensor.shape)}, model_b has no such "
                             f"entry; interpolate two models built with the same architecture and settings")
        if tensor.shape != state_b[key].shape:
            raise ValueError(f"architectures differ at {key!r}: model_a {tuple(tensor.shape)} vs model_b "
                             f"{tuple(state_b[key].shape)}; interpolate two models built with the same settings")
    extra = [key for key in state_b if key not in state_a]
    if extra:
        raise ValueError(f"architectures differ: model_b has {extra[0]!r} {tuple(state_b[extra[0]].shape)}, "
                         f"model_a has no such entry")


def resolve_bn_mode(model: nn.Module, bn: str, has_recalibration_data: bool) -> str:
    """The BatchNorm mode actually used: "auto" -> "recalibrate" with BatchNorm, else "none"."""
    if bn not in BN_MODES:
        raise ValueError(f"unknown bn mode {bn!r}; choose one of {', '.join(BN_MODES)}")
    with_bn = has_batchnorm(model)
    mode = ("recalibrate" if with_bn else "none") if bn == "auto" else bn
    if with_bn and mode == "none":
        raise ValueError("the model has BatchNorm: choose bn='recalibrate', 'interpolate' or 'keep_a' (or 'auto')")
    if not with_bn and mode != "none":
        raise ValueError(f"bn={bn!r} needs BatchNorm layers but the model has none; use bn='auto' or 'none'")
    if mode == "recalibrate" and not has_recalibration_data:
        raise ValueError("bn='recalibrate' recomputes BatchNorm statistics at every α and needs recalibration_loader "
                         "(a loader of training data); or choose bn='interpolate' or 'keep_a'")
    return mode


def _batchnorm_buffer_keys(model: nn.Module) -> set[str]:
    return {f"{name}.{buffer}" if name else buffer
            for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for buffer, tensor in module.named_buffers(recurse=False) if tensor.is_floating_point()}


class LinearPath:
    """Θ(α) = (1 − α)·Θ_a + α·Θ_b on one working deep copy of model_a (the caller's
    models are never written to). ``bn`` is resolved with :func:`resolve_bn_mode`;
    for "recalibrate" the first ``recalibration_batches`` batches of
    ``recalibration_loader`` (None = all) are cached once, so every α is recalibrated
    on the same data. ``load(α, noise)`` puts Θ(α) (+ noise on the parameters, a flat
    vector in ``parameters()`` order) into ``self.model``; ``stacked(αs)`` gives the
    states of several α with a leading α axis, for ``torch.func.vmap``."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, bn: str = "auto",
                 recalibration_loader: Batches | None = None, recalibration_batches: int | None = None) -> None:
        check_same_architecture(model_a, model_b)
        for name, model in (("model_a", model_a), ("model_b", model_b)):
            if nonfinite_weights(model):
                raise nonfinite_error(name, model)
        self.bn_mode = resolve_bn_mode(model_a, bn, recalibration_loader is not None)
        self.recalibration_batches = recalibration_batches if self.bn_mode == "recalibrate" else None
        self.recalibration_data = None
        if self.bn_mode == "recalibrate":
            if recalibration_batches is not None and recalibration_batches < 1:
                raise ValueError(f"recalibration_batches must be >= 1 (or None for the whole loader), "
                                 f"got {recalibration_batches}")
            self.recalibration_data = cache_batches(islice(recalibration_loader, recalibration_batches))
        self.model = copy.deepcopy(model_a)
        device = model_device(self.model)
        self.state_a = {k: v.detach() for k, v in model_a.state_dict().items()}
        self.state_b = {k: v.detach().to(device) for k, v in model_b.state_dict().items()}
        kept = _batchnorm_buffer_keys(self.model) if self.bn_mode == "keep_a" else set()
        self.moving = [k for k, v in self.state_a.items() if v.is_floating_point() and k not in kept]
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

    def _check_variances(self, state: dict[str, Tensor], alphas: Sequence[float]) -> None:
        """Warn when extrapolated BatchNorm variances ("interpolate" mode) are not positive."""
        if self.bn_mode != "interpolate":
            return
        bad = [k for k, v in state.items() if k.endswith("running_var") and k in self.moving and bool((v <= 0).any())]
        if bad:
            warnings.warn(f"at α in {list(alphas)} the extrapolated BatchNorm variance {bad[0]!r} has non-positive "
                          "entries, so the outputs are NaN; use bn='recalibrate' to extrapolate a model with BatchNorm",
                          RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def load(self, alpha: float, noise: Tensor | None = None) -> nn.Module:
        state = self.state_at(alpha)
        self._check_variances(state, [alpha])
        self.model.load_state_dict(state)
        if noise is not None:  # a flat vector in parameters() order (any memory format)
            offset = 0
            for parameter in self.model.parameters():
                count = parameter.numel()
                parameter.add_(noise[offset:offset + count].reshape(parameter.shape).to(parameter))
                offset += count
        if self.bn_mode == "recalibrate":
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
        self._check_variances(buffers, alphas)
        return {k: at(k) for k in self.parameter_names}, buffers


@torch.no_grad()
def _evaluate_batched(path: LinearPath, alphas: Sequence[float], batches: Batches, chunk: int) -> list[dict]:
    """Metrics at several α per forward pass: ``vmap`` over stacked weights with
    ``functional_call``; BatchNorm runs in eval mode on the stacked running statistics."""
    model = path.model
    device = model_device(model)
    targets = torch.cat([y.cpu() for _, y in batches])
    forward = vmap(lambda params, buffers, x: functional_call(model, (params, buffers), (x,)), in_dims=(0, 0, None))
    results = []
    with eval_mode(model):
        for start in range(0, len(alphas), chunk):
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
    alphas: Iterable[float],
    bn: str = "auto",
    recalibration_loader: Batches | None = None,
    recalibration_batches: int | None = None,
    split: str = "test",
    max_examples: int | None = None,
    batched: bool | str = "auto",
    vmap_chunk: int = 8,
) -> pd.DataFrame:
    """Loss and accuracy (or mean AUC) at Θ(α) = (1 − α)Θ_a + αΘ_b for every α
    (Sec. 3.3, Fig. 4 of the paper; α outside [0, 1] extrapolates).

    The first ``max_examples`` examples of ``loader`` are cached once and reused for
    every α. ``bn``: see the module docstring; "recalibrate" uses the first
    ``recalibration_batches`` batches of ``recalibration_loader`` (None = all), also
    cached once. ``batched``: evaluate ``vmap_chunk`` values of α per forward pass
    with ``torch.func.vmap`` (BatchNorm in eval mode only); "auto" turns it on when
    the model is on CUDA, has at most ``VMAP_MAX_PARAMETERS`` parameters and the BN
    mode allows it. A model with NaN or inf weights is an error; an α whose outputs
    are NaN or inf (far outside [0, 1]) gets a NaN loss and score and a RuntimeWarning.
    The caller's models are never modified. Returns one row per α:
    ``alpha, split, loss, accuracy|auc, n, bn, recalibration_batches, batched``.
    """
    values = _check_alphas(alphas)
    if batched not in (True, False, "auto"):
        raise ValueError(f"batched must be True, False or 'auto', got {batched!r}")
    if vmap_chunk < 1:
        raise ValueError(f"vmap_chunk must be >= 1, got {vmap_chunk}")
    path = LinearPath(model_a, model_b, bn, recalibration_loader, recalibration_batches)
    if batched is True and path.bn_mode not in EVAL_MODE_BN:
        raise ValueError("batched=True evaluates BatchNorm in eval mode and cannot recalibrate per α; "
                         "use batched=False, or bn='interpolate' or 'keep_a'")
    use_vmap = batched is True or (batched == "auto" and path.bn_mode in EVAL_MODE_BN
                                   and model_device(model_a).type == "cuda"
                                   and path.n_parameters <= VMAP_MAX_PARAMETERS)
    batches = cache_batches(loader, max_examples)
    if use_vmap:
        results = _evaluate_batched(path, values, batches, vmap_chunk)
    else:
        results = [path.evaluate(alpha, batches) for alpha in values]
    _warn_nonfinite(values, results)
    settings = {"bn": path.bn_mode, "recalibration_batches": path.recalibration_batches, "batched": use_vmap}
    rows = [{"alpha": alpha, "split": split, **result, **settings} for alpha, result in zip(values, results)]
    return pd.DataFrame(rows)


def barrier(curve: pd.DataFrame, metric: str | Sequence[str] = ("loss", "error")) -> dict[str, float]:
    """Performance barrier of one interpolation curve (Sec. 3.3): for each metric m,
    ``{m}_barrier`` = max_{α∈[0,1]} m(α) − [(1 − α)·m(0) + α·m(1)] (≥ 0, since the
    endpoints count) and ``{m}_barrier_alpha``, the α where it is reached. ``metric``:
    "loss", "error" (1 − accuracy, or 1 − auc) or both. α outside [0, 1] is ignored;
    α = 0 and α = 1 must be on the curve."""
    names = [metric] if isinstance(metric, str) else list(metric)
    unknown = [m for m in names if m not in ("loss", "error")]
    if unknown:
        raise ValueError(f"unknown barrier metric {unknown[0]!r}; choose 'loss' and/or 'error'")
    if "alpha" not in curve or curve["alpha"].duplicated().any():
        raise ValueError("barrier needs one interpolation curve with an 'alpha' column and one row per α; "
                         "group a study frame by pair first (see report.figures.landscape.barrier_table)")
    inside = curve[(curve["alpha"] >= 0) & (curve["alpha"] <= 1)].sort_values("alpha")
    if not {0.0, 1.0} <= set(inside["alpha"]):
        raise ValueError("barrier needs the endpoints α = 0 and α = 1 on the curve; include them in alphas")
    alpha = inside["alpha"].to_numpy(float)
    result: dict[str, float] = {}
    for name in names:
        if name == "loss":
            values = inside["loss"].to_numpy(float)
        elif "accuracy" in inside:
            values = 1.0 - inside["accuracy"].to_numpy(float)
        elif "auc" in inside:
            values = 1.0 - inside["auc"].to_numpy(float)
        else:
            raise ValueError("the error barrier needs an 'accuracy' or 'auc' column")
        line = (1 - alpha) * values[alpha == 0][0] + alpha * values[alpha == 1][0]
        peak = int(np.argmax(values - line))
        result[f"{name}_barrier"] = float(values[peak] - line[peak])
        result[f"{name}_barrier_alpha"] = float(alpha[peak])
    return result
