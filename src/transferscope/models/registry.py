"""The model registry: every architecture name :func:`build_model` accepts.

Names are registered one by one with :func:`register` (the small CPU ResNet, the Fixup
ResNet-50 of the paper, a user's own builders), or recognised by their form through a
*family* (:func:`register_family`): torchvision classifier names, ``timm:<name>``. A new
kind of name (such as the import paths ``package.module:callable`` of the
bring-your-own-model issue) is one more family; :func:`build_model` does not change.

A builder is called as ``builder(num_classes, in_channels=..., **kwargs)`` and returns
a freshly initialised ``nn.Module``; ``width`` and ``blocks`` (the size of the small
ResNet) are passed only to builders whose signature names them.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from .fixup_resnet import fixup_resnet50
from .small_resnet import SmallResNet

Builder = Callable[..., nn.Module]
SIZE_SETTINGS = ("width", "blocks")  # passed only to builders that name them


@dataclass(frozen=True)
class Family:
    """Architecture names recognised by their form rather than registered one by one.

    ``resolve(arch)`` returns the builder for ``arch``, or ``None`` when ``arch`` is not
    of this family; ``description`` says in an error message which names it accepts;
    ``names()`` lists them where they can be listed (``()`` for an open set)."""

    description: str
    resolve: Callable[[str], Builder | None]
    names: Callable[[], Sequence[str]] = tuple  # default: an open set, nothing to list


_BUILDERS: dict[str, Builder] = {}
_FAMILIES: list[Family] = []


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that makes a builder available to :func:`build_model` (and to the study
    YAML's ``model.arch``) under ``name``.

    Parameters
    ----------
    name
        The architecture name; without ``":"`` (reserved for families such as
        ``timm:<name>``) and not registered yet.

    Returns
    -------
    Callable
        The decorator; it returns the builder unchanged. The builder is called as
        ``builder(num_classes, in_channels=..., **kwargs)`` (plus ``width=``/``blocks=``
        when its signature names them) and returns a freshly initialised model.

    Examples
    --------
    >>> @register("tiny_mlp")  # doctest: +SKIP
    ... def tiny_mlp(num_classes, in_channels=3):
    ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    """
    if ":" in name or not name.strip():
        raise ValueError(f"cannot register {name!r}: a model name is non-empty and has no ':' (reserved for "
                         "families such as 'timm:<name>')")
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered ({_describe(_BUILDERS[name])}); choose another name")

    def decorator(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        return builder

    return decorator


def register_family(family: Family) -> None:
    """Recognise the names of ``family`` in :func:`build_model`; families are tried in
    the order they were registered, after the registered names."""
    _FAMILIES.append(family)


def list_models() -> list[str]:
    """Every name :func:`build_model` accepts that can be listed: the registered names
    and torchvision's classifiers, sorted (timm models are ``timm:<name>``, see
    ``timm.list_models()``)."""
    return sorted({*_BUILDERS, *(name for family in _FAMILIES for name in family.names())})


def get_builder(arch: str) -> Builder:
    """The builder of ``arch``: a registered name, else the first family that knows it.

    Raises
    ------
    ValueError
        For an unknown name, listing the registered names, the families, close matches
        and how to add a model.
    """
    if arch in _BUILDERS:
        return _BUILDERS[arch]
    for family in _FAMILIES:
        builder = family.resolve(arch)
        if builder is not None:
            return builder
    close = difflib.get_close_matches(arch, list_models(), n=3)
    raise ValueError(
        f"unknown architecture {arch!r}{f' (did you mean {close[0]!r}?)' if close else ''}; known are the "
        f"registered {', '.join(_BUILDERS)}, {', '.join(family.description for family in _FAMILIES)} "
        f"(transferscope.models.list_models() lists them all); to add your own architecture, decorate its "
        f"builder with @transferscope.models.register({arch!r})"
    )


def build_model(arch: str, num_classes: int, *, in_channels: int = 3, width: int | None = None,
                blocks: Sequence[int] | None = None, **kwargs: Any) -> nn.Module:
    """Return a freshly initialised model (seed the global RNG first for a fixed init).

    Parameters
    ----------
    arch
        A name of :func:`list_models` (``"small_resnet"``, ``"fixup_resnet50"``, a
        torchvision classifier such as ``"resnet18"``, a registered name) or
        ``"timm:<name>"`` (optional extra).
    num_classes
        Outputs of the classifier.
    in_channels
        Input channels (torchvision models take 3).
    width, blocks
        Base width and the 4 stage depths of ``small_resnet`` (its defaults when
        ``None``); ignored by builders that do not take them.
    **kwargs
        Passed to the builder (e.g. to the torchvision/timm constructor).

    Returns
    -------
    nn.Module
    """
    builder = get_builder(arch)
    accepted = inspect.signature(builder).parameters
    sizes = {name: value for name, value in (("width", width), ("blocks", blocks))
             if value is not None and name in accepted}
    return builder(num_classes, in_channels=in_channels, **sizes, **kwargs)


def _describe(builder: Builder) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


@register("small_resnet")
def small_resnet(num_classes: int, *, in_channels: int = 3, width: int = 16,
                 blocks: Sequence[int] = (1, 1, 1, 1)) -> SmallResNet:
    """The small CPU ResNet (:class:`~transferscope.models.SmallResNet`)."""
    return SmallResNet(num_classes, width=width, blocks=blocks, in_channels=in_channels)


register("fixup_resnet50")(fixup_resnet50)


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _torchvision(arch: str) -> Builder | None:
    """torchvision's classifier ``arch`` with random weights (3 input channels)."""
    if arch not in _torchvision_names():
        return None

    def build(num_classes: int, *, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        import torchvision

        if in_channels != 3:
            raise ValueError(f"torchvision model {arch!r} takes 3 input channels, not {in_channels}")
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)

    return build


def _timm(arch: str) -> Builder | None:
    """timm's model ``timm:<name>`` with random weights (optional extra)."""
    if not arch.startswith("timm:"):
        return None

    def build(num_classes: int, *, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        try:
            import timm
        except ImportError as error:
            raise ImportError("timm models need the optional extra: pip install 'transferscope[timm]'") from error
        return timm.create_model(arch.removeprefix("timm:"), pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)

    return build


register_family(Family("a torchvision classifier such as resnet18 or resnet50", _torchvision, _torchvision_names))
register_family(Family("'timm:<name>' for a timm model (optional extra: pip install 'transferscope[timm]')", _timm))
