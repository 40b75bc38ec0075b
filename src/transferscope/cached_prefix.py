"""Evaluate a model many times on the same batches, running only the modules that change.

Analyses that move one module of a network and re-evaluate it at many points (module
criticality, and module rewinding or noise around a module) see every module that runs
before the moved one compute the same thing at every evaluation. A
:class:`CachedPrefixEvaluator` holds fixed batches on the model's device and, after
:meth:`~CachedPrefixEvaluator.cache_inputs_of`, feeds the moved module the inputs it
received once, in place of running the modules before it (the *prefix*): each
evaluation runs the moved module and what follows (the *suffix*) only.

That is exact when the network reads the prefix's outputs only through the moved
module's inputs. A network can break this, e.g. with a skip connection from inside the
prefix to after the module; :meth:`~CachedPrefixEvaluator.suffix_matches_full_forward`
compares the two at the current weights so a caller can check before relying on the
cache (and :meth:`~CachedPrefixEvaluator.clear_cache` goes back to full forward passes).

    evaluator = CachedPrefixEvaluator(model.eval(), cache_batches(loader, 512))
    evaluator.loss()                                   # full forward passes
    if evaluator.cache_inputs_of("layer3", changing=module_state_keys(model)["layer3"]):
        ...                                            # move layer3's weights
        assert evaluator.suffix_matches_full_forward()
        evaluator.loss()                               # runs layer3, layer4, fc only
"""

from __future__ import annotations

from functools import partial
from typing import Any, Collection

import torch
from torch import Tensor, nn

from .evaluation import Batches, loss_fn, model_device

CHECK_TOLERANCE = 1e-5
Inputs = tuple[tuple, dict]  # positional and keyword arguments of one call


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else value


def _clone_inputs(args: tuple, kwargs: dict) -> Inputs:
    return tuple(map(_clone, args)), {name: _clone(value) for name, value in kwargs.items()}


class _PassThrough(nn.Module):
    """Stands in for a prefix module: returns its first input unchanged."""

    def forward(self, x: Any, *_args: Any, **_kwargs: Any) -> Any:
        return x


class CachedPrefixEvaluator:
    """Logits and mean loss of ``model`` on fixed ``batches``, at its current weights.

    The model runs as it is (weights, train/eval mode: put it in eval mode first), so a
    caller changes its weights in place between evaluations. Nothing is cached until
    :meth:`cache_inputs_of`; the model is restored after every call (pass-throughs and
    hooks are removed in ``finally``).

    Parameters
    ----------
    model : torch.nn.Module
        The network to evaluate; its weights may change between calls.
    batches : iterable of (Tensor, Tensor)
        ``(inputs, targets)`` batches, read once and moved to the model's device
        (:func:`transferscope.evaluation.cache_batches` makes a fixed subset of a loader).

    Attributes
    ----------
    batches : list of (Tensor, Tensor)
        The batches on the model's device.
    n_examples : int
        Number of examples in ``batches``.
    cached_module : str or None
        Name of the module whose inputs are cached (None: full forward passes).
    """

    def __init__(self, model: nn.Module, batches: Batches) -> None:
        self.model = model
        device = model_device(model)
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        self.n_examples = sum(len(y) for _, y in self.batches)
        self.cached_module: str | None = None
        self._inputs: list[Inputs] = []
        self._prefix: list[str] = []

    @torch.no_grad()
    def full_logits(self) -> list[Tensor]:
        """Logits of each batch from full forward passes (whatever is cached)."""
        return [self.model(x) for x, _ in self.batches]

    @torch.no_grad()
    def logits(self) -> list[Tensor]:
        """Logits of each batch: from the cached module's inputs on, when cached."""
        return self._suffix_logits() if self.cached_module is not None else self.full_logits()

    def mean_loss(self, logits: list[Tensor]) -> float:
        """Mean per-example loss (:func:`transferscope.evaluation.loss_fn`) of ``logits``
        against the targets of the batches, summed in float64."""
        total = sum(float(loss_fn(out.float(), y, reduction="none").double().sum())
                    for out, (_, y) in zip(logits, self.batches))
        return total / self.n_examples

    def loss(self) -> float:
        """Mean loss over the batches at the model's current weights."""
        return self.mean_loss(self.logits())

    @torch.no_grad()
    def cache_inputs_of(self, name: str, changing: Collection[str] = ()) -> bool:
        """Cache the inputs that module ``name`` receives in each batch, so that
        :meth:`logits` runs it and what follows only.

        Parameters
        ----------
        name : str
            A module of the model, as in ``model.get_submodule(name)``.
        changing : collection of str
            State-dict keys the caller will change between evaluations (those of
            ``name`` itself, typically).

        Returns
        -------
        bool
            True when the inputs are cached; False (full forward passes, nothing
            cached) when ``name`` does not run exactly once per forward pass, no
            module runs entirely before it, or one that does holds a changing key
            (then the inputs of ``name`` are not fixed).
        """
        self.clear_cache()
        prefix = self._modules_before(name, changing)
        if not prefix:
            return False
        captured: list[Inputs] = []
        handle = self.model.get_submodule(name).register_forward_pre_hook(
            lambda _module, args, kwargs: captured.append(_clone_inputs(args, kwargs)), with_kwargs=True)
        try:
            self.full_logits()
        finally:
            handle.remove()
        self.cached_module, self._inputs, self._prefix = name, captured, prefix
        return True

    def clear_cache(self) -> None:
        """Back to full forward passes."""
        self.cached_module, self._inputs, self._prefix = None, [], []

    @torch.no_grad()
    def suffix_matches_full_forward(self, tolerance: float = CHECK_TOLERANCE) -> bool:
        """Whether the cached evaluation gives the full forward's logits at the current
        weights (``torch.allclose`` with ``rtol = atol = tolerance``, NaN equal to NaN).

        Raises
        ------
        RuntimeError
            When the suffix cannot run on the cached inputs (chained to the error it
            raised), naming the module and the way out.
        """
        if self.cached_module is None:
            return True
        full = self.full_logits()
        try:
            suffix = self._suffix_logits()
        except Exception as error:
            raise RuntimeError(
                f"running {type(self.model).__name__} from module {self.cached_module!r} on its cached inputs failed "
                f"({type(error).__name__}: {error}); the network probably reads the output of a module before "
                f"{self.cached_module!r} elsewhere too (e.g. a skip connection over it): evaluate with full forward "
                "passes instead (cache_prefix=False in the analyses)") from error
        return all(torch.allclose(a, b, rtol=tolerance, atol=tolerance, equal_nan=True) for a, b in zip(suffix, full))

    def _suffix_logits(self) -> list[Tensor]:
        """Logits with the prefix modules replaced by pass-throughs and the cached
        module fed its captured inputs (fresh copies, so in-place ops stay harmless)."""
        assert self.cached_module is not None
        pending = iter(self._inputs)  # the cached module runs once per batch, in order

        def feed(_module: nn.Module, _args: tuple, _kwargs: dict) -> Inputs:
            return _clone_inputs(*next(pending))

        handle = self.model.get_submodule(self.cached_module).register_forward_pre_hook(feed, with_kwargs=True)
        originals = {name: self.model.get_submodule(name) for name in self._prefix}
        try:
            for name in self._prefix:
                self._set(name, _PassThrough())
            return [self.model(x) for x, _ in self.batches]
        finally:
            handle.remove()
            for name, module in originals.items():
                self._set(name, module)

    def _set(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent), child, module)

    def _modules_before(self, name: str, changing: Collection[str]) -> list[str] | None:
        """Outermost modules whose every call ends before ``name`` begins (from one
        forward pass recorded with hooks); None when ``name`` does not run exactly once
        or one of those modules holds a ``changing`` key."""
        events: list[str] = []

        def record(module_name: str, *_: Any) -> None:
            events.append(module_name)

        handles = []
        try:
            for module_name, module in self.model.named_modules():
                if module_name:
                    handles.append(module.register_forward_pre_hook(partial(record, module_name)))
                    handles.append(module.register_forward_hook(partial(record, module_name)))
            self.model(self.batches[0][0])
        finally:
            for handle in handles:
                handle.remove()
        if events.count(name) != 2:
            return None
        begin = events.index(name)
        last_event = {module_name: index for index, module_name in enumerate(events)}
        done = {module_name for module_name, index in last_event.items() if index < begin}
        if any(key.startswith(module_name + ".") for module_name in done for key in changing):
            return None
        return [module_name for module_name in done if module_name.rpartition(".")[0] not in done]
