"""The model registry: every architecture name :func:`build_model` accepts.

Names are registered one by one with :func:`register` (the small CPU ResNet, the Fixup
ResNet-50 of the paper, a user's own builders), or recognised by their form through a
*family* (:func:`register_family`): torchvision classifier names, ``timm:<name>``, and
import paths ``package.module:callable`` (a user's own architecture: the callable is
called with ``num_classes=`` and the model settings' ``kwargs``). A new kind of name is
one more family; :func:`build_model` does not change. :func:`arch_source` names the file
whose code an architecture comes from (an import path's), so that a study reruns what
depends on it when that file changes.

A builder is called as ``builder(num_classes, in_channels=..., **kwargs)`` and returns
a freshly initialised ``nn.Module``; ``width`` and ``blocks`` (the size of the small
ResNet) are passed only to builders whose signature names them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from ..io import file_sha256
from .fixup_resnet import fixup_resnet50
from .small_resnet import SmallResNet

if TYPE_CHECKING:
    from ..config import ModelConfig

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Family:
    """Architecture names recognised by their form rather than registered one by one.

    ``resolve(arch)`` returns the builder for ``arch``, or ``None`` when ``arch`` is not
    of this family; ``description`` says in an error message which names it accepts;
    ``names()`` lists them where they can be listed (``()`` for an open set);
    ``source_file(arch)`` is the file holding the code of a user's architecture (its
    digest is part of the identity of every run built from it), ``None`` for library code."""

    description: str
    resolve: Callable[[str], Builder | None]
    names: Callable[[], Sequence[str]] = tuple  # default: an open set, nothing to list
    source_file: Callable[[str], Path | None] = lambda _: None  # library code by default


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
    return _build(get_builder(arch), num_classes, in_channels, {"width": width, "blocks": blocks}, kwargs)


def _build(builder: Builder, num_classes: int, in_channels: int, sizes: dict[str, Any],
           kwargs: dict[str, Any]) -> nn.Module:
    """Call ``builder`` with the ``sizes`` its signature names (unless ``kwargs`` gives
    them) and ``kwargs``."""
    accepted = inspect.signature(builder).parameters
    sizes = {name: value for name, value in sizes.items()
             if value is not None and name in accepted and name not in kwargs}
    return builder(num_classes, in_channels=in_channels, **sizes, **kwargs)


def build_configured(settings: ModelConfig, num_classes: int) -> nn.Module:
    """:func:`build_model` with the model settings of a run or study: ``arch``, ``width``
    and ``blocks`` (to builders that name them), ``kwargs`` (which win over those two)."""
    return _build(get_builder(settings.arch), num_classes, 3, {"width": settings.width, "blocks": settings.blocks},
                  dict(settings.kwargs))


def check_buildable(settings: ModelConfig) -> None:
    """Build the configured model on the meta device (no memory, no weights), so that an
    unknown or broken architecture fails before any job runs; where a builder cannot run
    on the meta device, importing it is the check. Raises a one-line ``ValueError`` (an
    ``ImportError`` for a missing optional package)."""
    get_builder(settings.arch)
    try:
        with torch.device("meta"):
            build_configured(settings, 2)
    except (ValueError, ImportError):
        raise
    except Exception as error:  # any failure of the user's code, named in one line
        if "meta" in str(error):
            return  # the builder needs real tensors (e.g. reads a value back); it imported
        kwargs = f" with kwargs {dict(settings.kwargs)}" if settings.kwargs else ""
        message = str(error).strip().partition("\n")[0]
        raise ValueError(f"model.arch {settings.arch!r}{kwargs} cannot be built ({type(error).__name__}: {message}); "
                         "fix model.arch or model.kwargs") from error


def arch_source(arch: str) -> dict[str, str] | None:
    """The file holding the code of a user's architecture ``arch`` (an import path's
    callable) and its SHA-256, ``{"file": ..., "sha256": ...}``; ``None`` for registered
    names and library families."""
    if arch in _BUILDERS:
        return None
    for family in _FAMILIES:
        if family.resolve(arch) is not None:
            path = family.source_file(arch)
            return None if path is None else {"file": str(path), "sha256": file_sha256(path)}
    return None


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


_IMPORT_PATH = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def _imported(arch: str) -> Callable[..., nn.Module] | None:
    """The callable an import path ``package.module:callable`` names, imported; ``None``
    when ``arch`` is not of that form (``timm:<name>`` is timm's)."""
    match = _IMPORT_PATH.fullmatch(arch)
    if match is None or arch.startswith("timm:"):
        return None
    module_name, name = match["module"], match["name"]
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(f"model.arch {arch!r}: cannot import module {module_name!r} ({error}); put the folder that "
                         "holds it on PYTHONPATH (e.g. PYTHONPATH=examples) or install its package") from error
    except Exception as error:  # the user's module failed while importing: name it
        raise ValueError(f"model.arch {arch!r}: importing {module_name!r} failed ({type(error).__name__}: "
                         f"{error})") from error
    for part in name.split("."):
        if not hasattr(target, part):
            public = sorted(n for n in dir(target) if not n.startswith("_"))
            raise ValueError(f"model.arch {arch!r}: {module_name!r} has no attribute {name!r}; it defines "
                             f"{', '.join(public[:20])}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model.arch {arch!r}: {name!r} is not callable; name a class or a function that returns "
                         "the model")
    return target


def _import_path(arch: str) -> Builder | None:
    """A user's architecture ``package.module:callable``, called with ``num_classes=`` and
    the builder keyword arguments (``in_channels`` only where its signature names it)."""
    function = _imported(arch)
    if function is None:
        return None

    def build(num_classes: int, *, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        accepted: Any
        try:
            accepted = inspect.signature(function).parameters
        except (TypeError, ValueError):  # a builtin without a signature: pass what is given
            accepted = {}
        if "in_channels" in accepted:
            kwargs["in_channels"] = in_channels
        elif in_channels != 3:
            raise ValueError(f"{arch} takes no in_channels argument, and the data have {in_channels} channels")
        model = function(num_classes=num_classes, **kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    return build


def _import_path_file(arch: str) -> Path | None:
    """The file that defines the callable of import path ``arch``."""
    function = _imported(arch)
    if function is None:
        return None
    module = inspect.getmodule(function)
    try:
        path = inspect.getsourcefile(inspect.unwrap(function)) or (module and inspect.getsourcefile(module))
    except TypeError:  # defined in C, or nowhere on disk
        return None
    return None if path is None else Path(path)


register_family(Family("an import path 'package.module:callable' for your own architecture (called with "
                       "num_classes= and model.kwargs)", _import_path, source_file=_import_path_file))
