"""State-dict utilities shared by the weight I/O and the analyses: a model or a state
dict read as a state dict (:func:`as_state_dict`), the check that one state dict fits a
model or another state dict (:func:`check_compatible`), which module a state key belongs
to (:func:`in_modules`), and the BatchNorm layers of a
model with their state keys (:func:`batchnorm_layers`, :func:`has_batchnorm`,
:func:`batchnorm_buffer_keys`)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

ModelOrState = nn.Module | Mapping[str, Tensor]
SHOWN_KEYS = 8  # keys listed per kind of mismatch in an error message
ARCHITECTURE_FIX = ("build both from the same architecture settings (arch, width, blocks, number of classes), "
                    "or use weights saved from such a model")


def as_state_dict(model_or_state: ModelOrState, what: str = "the weights") -> Mapping[str, Tensor]:
    """The state dict of a model, or the mapping itself.

    Parameters
    ----------
    model_or_state
        An ``nn.Module`` or a state dict (``{name: tensor}``).
    what
        How an error names the argument.

    Returns
    -------
    Mapping[str, Tensor]
        ``model.state_dict()`` (tensors shared with the model), or ``model_or_state``.
    """
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    if isinstance(model_or_state, Mapping):
        return model_or_state
    raise TypeError(f"{what} must be an nn.Module or a state dict ({{name: tensor}}), got "
                    f"{type(model_or_state).__name__}; read a weights file with transferscope.models.load_weights")


def in_modules(key: str, modules: Iterable[str]) -> bool:
    """Whether state key ``key`` belongs to one of ``modules`` (exact dotted names:
    ``"layer1"`` owns ``"layer1.0.conv1.weight"``, not ``"layer10.weight"``)."""
    return any(key == module or key.startswith(module + ".") for module in modules)


def _listed(items: Sequence[str], separator: str = ", ") -> str:
    shown = separator.join(items[:SHOWN_KEYS])
    return shown + (f" … ({len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS else "")


def _prefix_hint(longer: Sequence[str], shorter: Sequence[str], owner: str) -> str:
    """Say so when the keys of ``longer`` are those of ``shorter`` behind one prefix
    (DataParallel's ``module.``, torch.compile's ``_orig_mod.``, a wrapper module)."""
    if not longer or not shorter or not longer[0].endswith(shorter[0]) or longer[0] == shorter[0]:
        return ""
    prefix = longer[0][:-len(shorter[0])]
    if not all(key.startswith(prefix) for key in longer) or {key[len(prefix):] for key in longer} != set(shorter):
        return ""
    return (f"; the keys of {owner} carry the extra prefix {prefix!r} (a wrapper such as DataParallel or "
            f"torch.compile): strip it, e.g. {{k.removeprefix({prefix!r}): v for k, v in state.items()}}")


def check_compatible(state: ModelOrState, reference: ModelOrState, *, keys: Iterable[str] | None = None,
                     skip_prefixes: Sequence[str] = (), shapes: bool = True, what: str = "the weights",
                     reference_name: str = "the model") -> None:
    """Raise unless ``state`` has the entries of ``reference``, with the same shapes.

    Parameters
    ----------
    state
        The weights to check (a model or a state dict).
    reference
        The model (or state dict) they must fit.
    keys
        Check only these keys of ``reference`` (e.g. the modules being rewound): they
        must be in ``state``, whose other entries are not looked at. Default: every key,
        and ``state`` must hold no key that ``reference`` lacks.
    skip_prefixes
        Modules (e.g. a classifier head) whose keys are not checked.
    shapes
        Also compare shapes (off where shapes may legitimately differ, e.g. a head sized
        for other classes, which the caller handles).
    what, reference_name
        How the message names ``state`` and ``reference``.

    Raises
    ------
    ValueError
        Naming every missing key, every unexpected key and every shape mismatch (the
        first few of each), and the fix.
    """
    own, other = as_state_dict(reference, reference_name), as_state_dict(state, what)
    checked = [key for key in (own if keys is None else keys) if not in_modules(key, skip_prefixes)]
    missing = [key for key in checked if key not in other]
    unexpected = [key for key in other if key not in own and not in_modules(key, skip_prefixes)] if keys is None else []
    wrong_shape = [key for key in checked if key in other and other[key].shape != own[key].shape] if shapes else []
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    if missing:
        parts.append(f"missing from {what}: {_listed(missing)}")
    if unexpected:
        parts.append(f"not in {reference_name}: {_listed(unexpected)}")
    if wrong_shape:
        parts.append("shape mismatch: " + _listed(
            [f"{key}: {tuple(other[key].shape)} in {what} vs {tuple(own[key].shape)} in {reference_name}"
             for key in wrong_shape], "; "))
    model_class = f" ({type(reference).__name__})" if isinstance(reference, nn.Module) else ""
    hint = _prefix_hint(unexpected, missing, what) or _prefix_hint(missing, unexpected, reference_name)
    raise ValueError(f"{what} and {reference_name}{model_class} have different state-dict entries: "
                     f"{' | '.join(parts)}{hint}; {ARCHITECTURE_FIX}")


def batchnorm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """``{name: layer}`` of every BatchNorm layer of ``model`` (1d, 2d, 3d, SyncBatchNorm, lazy)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, _BatchNorm)}


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (whose running statistics are a choice in
    interpolation, rewinding and criticality)."""
    return bool(batchnorm_layers(model))


def batchnorm_buffer_keys(model: nn.Module, *, running_stats_only: bool = False) -> list[str]:
    """State-dict keys of the BatchNorm buffers of ``model``, in state-dict order.

    Parameters
    ----------
    model
        Any model.
    running_stats_only
        Only the floating running statistics (``running_mean``, ``running_var``), not
        the integer ``num_batches_tracked``.

    Returns
    -------
    list[str]
        Keys such as ``"layer1.0.bn1.running_mean"`` (modules and buffers in
        state-dict order).
    """
    return [f"{name}.{buffer_name}" if name else buffer_name
            for name, layer in batchnorm_layers(model).items()
            for buffer_name, buffer in layer.named_buffers(recurse=False)
            if not running_stats_only or buffer.is_floating_point()]
