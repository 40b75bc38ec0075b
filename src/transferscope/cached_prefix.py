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
        self._columns: list[Tensor] | None = None  # the cached inputs, one tensor per argument, a row per example
        self._groups: list[Tensor] | None = None  # regrouped: the rows of _columns in each batch

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
        :attr:`batches` in order). It holds its own copy of the batches; the cached
        inputs, when they are tensors with one row per example, it shares with this
        evaluator and gathers for each call (in place of the copy every call makes), so it
        runs the same suffix with no new full pass and no second copy of them; otherwise
        it makes full forward passes."""
        inputs = torch.cat([x for x, _ in self.batches]), torch.cat([y for _, y in self.batches])
        other = CachedPrefixEvaluator(self.model, [(inputs[0][group], inputs[1][group]) for group in groups])
        if self.cached_module is None or self._columns is None:
            return other
        other.cached_module, other._prefix, other._columns = self.cached_module, self._prefix, self._columns
        other._groups = [group.to(self._columns[0].device) for group in groups]
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
        captured = _Capture([len(y) for _, y in self.batches])
        capture = self.model.get_submodule(name).register_forward_pre_hook(captured, with_kwargs=True)
        recorders = self._record_calls(events)
        try:
            for x, y in self.batches:
                self.full_losses.append(_example_losses(self.model(x), y))
                _remove(recorders)  # the order of the modules in one forward pass is enough
        finally:
            _remove([capture, *recorders])
        prefix = _modules_before(events, name, changing)
        if not prefix or captured.calls != len(self.batches):
            return False
        self.cached_module, self._inputs, self._prefix, self._columns = name, captured.inputs(), prefix, captured.columns
        return True

    def clear_cache(self) -> None:
        """Back to full forward passes."""
        self.cached_module, self._inputs, self._prefix, self._columns, self._groups = None, [], [], None, None

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
        harmless; gathered from the shared rows in a regrouped evaluator) when cached,
        else from a full forward pass."""
        x = self.batches[index][0]
        if self.cached_module is None:
            return self.model(x)
        if self._groups is not None:
            assert self._columns is not None  # set together by regrouped
            inputs: Inputs = (tuple(column[self._groups[index]] for column in self._columns), {})
        else:
            inputs = _clone_inputs(*self._inputs[index])
        handle = self.model.get_submodule(self.cached_module).register_forward_pre_hook(
            lambda _module, _args, _kwargs: inputs, with_kwargs=True)
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


def _memory_format(tensor: Tensor) -> torch.memory_format:
    channels_last = tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(
        memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


class _Capture:
    """A forward pre-hook that keeps the inputs of each call, one call per batch: written
    straight into one tensor per positional argument (:attr:`columns`, the batches' rows
    in order, in the first call's memory format) while every call's inputs are positional
    tensors with one row per example of its batch, of one shape beyond the rows, dtype and
    device per argument; as a copy per call from the first call that is not (the calls
    before it stay views of the columns)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.calls = 0
        self.columns: list[Tensor] | None = None
        self.copies: list[Inputs] | None = None  # once the calls are not packable

    def __call__(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        index, self.calls = self.calls, self.calls + 1
        if self.copies is None and self._packable(index, args, kwargs):
            if self.columns is None:
                self.columns = [torch.empty((sum(self.sizes), *value.shape[1:]), dtype=value.dtype,
                                            device=value.device, memory_format=_memory_format(value)) for value in args]
            start = sum(self.sizes[:index])
            for column, value in zip(self.columns, args):
                column[start:start + len(value)].copy_(value.detach())
            return
        if self.copies is None:
            self.copies = _batch_views(self.columns, self.sizes[:index]) if self.columns is not None else []
            self.columns = None
        self.copies.append(_clone_inputs(args, kwargs))

    def _packable(self, index: int, args: tuple, kwargs: dict) -> bool:
        if kwargs or index >= len(self.sizes) or not args:
            return False
        likes = self.columns if self.columns is not None else args
        return len(args) == len(likes) and all(
            isinstance(value, Tensor) and value.dim() > 0 and len(value) == self.sizes[index]
            and value.shape[1:] == like.shape[1:] and value.dtype == like.dtype and value.device == like.device
            for value, like in zip(args, likes))

    def inputs(self) -> list[Inputs]:
        """The inputs of each call: views of :attr:`columns`, or the copies."""
        return self.copies if self.copies is not None else _batch_views(self.columns or [], self.sizes)


def _batch_views(columns: list[Tensor], sizes: list[int]) -> list[Inputs]:
    """The inputs of each batch of ``sizes``: views of its rows of ``columns``."""
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    return [(tuple(column[start:stop] for column in columns), {}) for start, stop in zip(bounds, bounds[1:])]


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
