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
from typing import Any, Collection, Iterable, Iterator, Sequence

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
    full_losses : list of Tensor
        Per-example float64 losses of each batch (:meth:`example_losses`) from the full
        forward pass that the last :meth:`cache_inputs_of` ran, at the weights of that
        time (empty before); :attr:`full_loss_sums` are their sums.
    """

    def __init__(self, model: nn.Module, batches: Batches) -> None:
        self.model = model
        device = model_device(model)
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        self.n_examples = sum(len(y) for _, y in self.batches)
        self.cached_module: str | None = None
        self.full_losses: list[Tensor] = []
        self._inputs: list[Inputs] = []
        self._prefix: list[str] = []

    @torch.no_grad()
    def logits(self) -> list[Tensor]:
        """Logits of each batch: from the cached module's inputs on, when cached."""
        return [self._batch_logits(index) for index in range(len(self.batches))]

    def loss(self) -> float:
        """Mean per-example loss (:func:`transferscope.evaluation.loss_fn`) over the
        batches at the model's current weights, summed in float64."""
        return sum(self.loss_sums()) / self.n_examples

    def loss_sums(self, order: Iterable[int] | None = None) -> Iterator[float]:
        """Float64 sum of the per-example losses of each batch in ``order`` (indices
        into :attr:`batches`; default: all, in order), one batch at a time as the
        caller asks for it (from the cached module's inputs on, when cached), at the
        weights of that moment; ``sum(self.loss_sums()) / self.n_examples`` is
        :meth:`loss` to the bit."""
        return (float(losses.sum()) for losses in self.example_losses(order))

    @torch.no_grad()
    def example_losses(self, order: Iterable[int] | None = None) -> Iterator[Tensor]:
        """The per-example losses (:func:`transferscope.evaluation.loss_fn`, in float64)
        of each batch in ``order``, as :meth:`loss_sums` computes them."""
        for index in range(len(self.batches)) if order is None else order:
            yield _example_losses(self._batch_logits(index), self.batches[index][1])

    @property
    def full_loss_sums(self) -> list[float]:
        """Loss sum of each batch (:meth:`loss_sums`) from the full forward pass that the
        last :meth:`cache_inputs_of` ran (empty before)."""
        return [float(losses.sum()) for losses in self.full_losses]

    def regrouped(self, groups: Sequence[Tensor]) -> CachedPrefixEvaluator:
        """An evaluator of the same model on the same examples in other batches:
        ``groups[j]`` lists the examples of batch j (indices into the examples of
        :attr:`batches` in order). Cached inputs that are tensors with one row per
        example go along, regrouped likewise (so it runs the same suffix with no new
        full pass); otherwise it makes full forward passes."""
        inputs = torch.cat([x for x, _ in self.batches]), torch.cat([y for _, y in self.batches])
        other = CachedPrefixEvaluator(self.model, [(inputs[0][group], inputs[1][group]) for group in groups])
        cached = [args for args, kwargs in self._inputs if not kwargs]
        sizes = [len(y) for _, y in self.batches]
        if self.cached_module is None or len(cached) != len(sizes) or not all(
                isinstance(value, Tensor) and len(value) == size for args, size in zip(cached, sizes) for value in args):
            return other
        columns = [torch.cat(values) for values in zip(*cached)]
        other.cached_module, other._prefix = self.cached_module, self._prefix
        other._inputs = [(tuple(column[group] for column in columns), {}) for group in groups]
        return other

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
            (then the inputs of ``name`` are not fixed). Either way the one full
            forward pass it ran (recording the order of the modules on the first
            batch, capturing the inputs of ``name``) leaves its loss sums in
            :attr:`full_loss_sums`.
        """
        self.clear_cache()
        self.full_losses = []
        events: list[str] = []
        captured: list[Inputs] = []
        capture = self.model.get_submodule(name).register_forward_pre_hook(
            lambda _module, args, kwargs: captured.append(_clone_inputs(args, kwargs)), with_kwargs=True)
        recorders = self._record_calls(events)
        try:
            for x, y in self.batches:
                self.full_losses.append(_example_losses(self.model(x), y))
                _remove(recorders)  # the order of the modules in one forward pass is enough
        finally:
            _remove([capture, *recorders])
        prefix = _modules_before(events, name, changing)
        if not prefix or len(captured) != len(self.batches):
            return False
        self.cached_module, self._inputs, self._prefix = name, captured, prefix
        return True

    def clear_cache(self) -> None:
        """Back to full forward passes."""
        self.cached_module, self._inputs, self._prefix = None, [], []

    @torch.no_grad()
    def suffix_matches_full_forward(self, tolerance: float = CHECK_TOLERANCE, n_batches: int | None = None) -> bool:
        """Whether the cached evaluation gives the full forward's logits at the current
        weights (``torch.allclose`` with ``rtol = atol = tolerance``, NaN equal to NaN),
        on the first ``n_batches`` batches (default: all).

        Raises
        ------
        RuntimeError
            When the suffix cannot run on the cached inputs (chained to the error it
            raised), naming the module and the way out.
        """
        if self.cached_module is None:
            return True
        indices = range(len(self.batches) if n_batches is None else min(n_batches, len(self.batches)))
        full = [self.model(self.batches[index][0]) for index in indices]
        try:
            suffix = [self._batch_logits(index) for index in indices]
        except Exception as error:
            raise RuntimeError(
                f"running {type(self.model).__name__} from module {self.cached_module!r} on its cached inputs failed "
                f"({type(error).__name__}: {error}); the network probably reads the output of a module before "
                f"{self.cached_module!r} elsewhere too (e.g. a skip connection over it): evaluate with full forward "
                "passes instead (cache_prefix=False in the analyses)") from error
        return all(torch.allclose(a, b, rtol=tolerance, atol=tolerance, equal_nan=True) for a, b in zip(suffix, full))

    def _batch_logits(self, index: int) -> Tensor:
        """Logits of batch ``index``: with the prefix modules replaced by pass-throughs
        and the cached module fed its captured inputs (fresh copies, so in-place ops stay
        harmless) when cached, else from a full forward pass."""
        x = self.batches[index][0]
        if self.cached_module is None:
            return self.model(x)
        inputs = self._inputs[index]
        handle = self.model.get_submodule(self.cached_module).register_forward_pre_hook(
            lambda _module, _args, _kwargs: _clone_inputs(*inputs), with_kwargs=True)
        originals = {name: self.model.get_submodule(name) for name in self._prefix}
        try:
            for name in self._prefix:
                self._set(name, _PassThrough())
            return self.model(x)
        finally:
            handle.remove()
            for name, module in originals.items():
                self._set(name, module)

    def _set(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent), child, module)

    def _record_calls(self, events: list[str]) -> list[Any]:
        """Hooks that append each module's name to ``events`` as its call begins and ends."""
        def record(module_name: str, *_: Any) -> None:
            events.append(module_name)

        handles = []
        for module_name, module in self.model.named_modules():
            if module_name:
                handles.append(module.register_forward_pre_hook(partial(record, module_name)))
                handles.append(module.register_forward_hook(partial(record, module_name)))
        return handles


def _remove(handles: list[Any]) -> None:
    """Remove the hooks of ``handles`` and forget them."""
    for handle in handles:
        handle.remove()
    handles.clear()


def _example_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """The per-example losses (:func:`transferscope.evaluation.loss_fn`), in float64."""
    return loss_fn(logits.float(), targets, reduction="none").double()


def _modules_before(events: list[str], name: str, changing: Collection[str]) -> list[str] | None:
    """Outermost modules whose every call ends before ``name`` begins, from the calls
    recorded in one forward pass (``events``); None when ``name`` does not run exactly
    once or one of those modules holds a ``changing`` key."""
    if events.count(name) != 2:
        return None
    begin = events.index(name)
    last_event = {module_name: index for index, module_name in enumerate(events)}
    done = {module_name for module_name, index in last_event.items() if index < begin}
    if any(key.startswith(module_name + ".") for module_name in done for key in changing):
        return None
    return [module_name for module_name in done if module_name.rpartition(".")[0] not in done]
