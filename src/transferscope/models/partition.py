"""The module partition: which named modules the analyses treat as units.

For ResNets (torchvision, the small CPU ResNet, Fixup) these are ``conv1``,
``layer1``..``layer4`` and ``fc``, the units of Tables 1-2 and Figs. 5-6 of the
paper; for any other model, its top-level children that hold parameters. A list of
module names (``modules=``) overrides the default; names are matched exactly, never by
substring.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import nn

from .state import in_modules

RESNET_MODULES = ("conv1", "layer1", "layer2", "layer3", "layer4", "fc")
NETWORK = "network"  # row label of whole-network values beside per-module ones (criticality, distance)


class ModuleNotFoundInModel(ValueError, KeyError):
    """A module name that the model does not have: a ValueError, like every missing-name
    error of the package (and a KeyError, as it was first; its message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _resolve(model: nn.Module, names: Sequence[str]) -> OrderedDict[str, nn.Module]:
    named = dict(model.named_modules())
    missing = [name for name in names if name not in named or name == ""]
    if missing:
        top = [n for n in named if n and "." not in n]
        raise ModuleNotFoundInModel(
            f"no module named {', '.join(map(repr, missing))} in {type(model).__name__}; "
            f"module names are matched exactly; top-level modules are: {', '.join(top)} "
            f"(nested modules are addressed with dots, e.g. 'layer1.0.conv1')"
        )
    return OrderedDict((name, named[name]) for name in names)


def _partition(model: nn.Module, names: Sequence[str] | None) -> OrderedDict[str, nn.Module]:
    if names is not None:
        return _resolve(model, list(names))
    children = dict(model.named_children())
    if all(name in children for name in RESNET_MODULES):
        return _resolve(model, RESNET_MODULES)
    with_params = [name for name, child in children.items() if any(True for _ in child.parameters())]
    return _resolve(model, with_params)


def modules(model: nn.Module, modules: Sequence[str] | None = None) -> OrderedDict[str, nn.Module]:
    """Ordered ``{name: module}`` of the units the analyses use (see module docstring);
    ``modules``: module names to use instead of the default partition."""
    return _partition(model, modules)


def module_state_keys(model: nn.Module, modules: Sequence[str] | None = None) -> OrderedDict[str, list[str]]:
    """State-dict keys (parameters and buffers) owned by each partition module.

    Keys of top-level modules outside the partition join the partition module that
    precedes them (torchvision's stem ``bn1`` belongs to ``conv1``), so that rewinding
    or measuring ``conv1`` moves the whole stem; keys before the first partition module
    join the first one. A model may name owners explicitly in a class attribute
    ``state_key_owners`` (Fixup's scalar ``bias2`` belongs to ``fc``).
    """
    partition = _partition(model, modules)
    groups: OrderedDict[str, list[str]] = OrderedDict((name, []) for name in partition)
    order = list(partition)
    explicit = getattr(model, "state_key_owners", {})
    current = order[0]
    for key in model.state_dict():
        owner = next((name for name in order if in_modules(key, [name])), None)
        if key in explicit and explicit[key] in groups:
            groups[explicit[key]].append(key)
            continue
        if owner is not None:
            current = owner
        elif modules is not None:
            continue  # with an explicit list, only the named modules' own keys count
        groups[current].append(key)
    return groups


def head_name(model: nn.Module) -> str:
    """Name of the classifier head: ``fc``, ``head``, ``classifier`` or the last Linear."""
    children = dict(model.named_children())
    for name in ("fc", "head", "classifier"):
        if name in children:
            return name
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no Linear layer to use as the classifier head; pass head=...")
    return linear[-1]
