"""Analysis settings of a study, derived from the analysis functions' signatures: each
keyword-only parameter of the function becomes a setting with the function's annotation
and default, so a default lives in one place and a new parameter is a new setting.

A settings model adds only what the study itself decides, declared explicitly:
validation ``checks`` on derived settings, study ``defaults`` that deliberately differ
from the function's (each must differ), and ``study`` fields that are no parameter of
the function (``enabled``, ``max_examples`` of the test loader, ``targets``, ...)."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Iterable, Mapping, Union

from pydantic import create_model
from pydantic.fields import FieldInfo

from ..config import Settings

_SEQUENCES = {collections.abc.Sequence, collections.abc.Iterable}


class DerivedSettings(Settings):
    """Settings whose fields are built at run time (:func:`keyword_settings`, the study's
    ``Recipe``): type checkers see any attribute."""

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...


class AnalysisSettings(DerivedSettings):
    """Settings of one analysis of the study. ``ARGUMENTS``: the settings that are
    keyword arguments of the analysis function; ``PRESENTATION``: settings that choose
    what is run or shown but never change a number (left out of job ids)."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ()
    PRESENTATION: ClassVar[frozenset[str]] = frozenset({"enabled", "targets"})

    enabled: bool = True

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the analysis function: ``fn(models..., loader, **settings.arguments())``."""
        return {name: getattr(self, name) for name in self.ARGUMENTS}


def _setting_type(annotation: Any) -> Any:
    """``annotation`` with sequences read as tuples (a YAML list validates to a tuple,
    which compares equal to a tuple default), inside unions too."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _SEQUENCES and args:
        return types.GenericAlias(tuple, (_setting_type(args[0]), ...))
    if origin in (Union, type(int | None)):
        return Union[tuple(_setting_type(arg) for arg in args)]
    return annotation


def keyword_settings(name: str, function: Callable, *, set_by_job: Iterable[str] = (),
                     checks: Mapping[str, FieldInfo | tuple[Any, FieldInfo]] | None = None,
                     defaults: Mapping[str, Any] | None = None,
                     study: Mapping[str, tuple[Any, Any]] | None = None, doc: str = "") -> type[AnalysisSettings]:
    """A settings model with one field per keyword-only parameter of ``function`` but
    those in ``set_by_job`` (loaders, checkpoints, labels the job supplies).

    ``checks``: ``Field(...)`` constraints for a derived setting (no default), or
    ``(narrower type, Field(...))``; ``defaults``: study defaults that differ from the
    function's; ``study``: ``(annotation, Field or default)`` of settings that are not
    parameters of ``function``. A name in the wrong place is a ``TypeError`` at import."""
    checks, defaults, study = dict(checks or {}), dict(defaults or {}), dict(study or {})
    parameters = {p.name: p for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY}
    excluded = set(set_by_job)
    derived = [key for key in parameters if key not in excluded]
    misplaced = {"checks": set(checks) - set(derived), "defaults": set(defaults) - set(derived),
                 "study": set(study) & set(parameters), "set_by_job": excluded - set(parameters),
                 "no default (set it by the job)": {key for key in derived
                                                    if parameters[key].default is inspect.Parameter.empty}}
    same = [key for key, value in defaults.items() if key in parameters and value == parameters[key].default]
    if any(misplaced.values()) or same:
        raise TypeError(f"{name}: settings misplaced {({k: sorted(v) for k, v in misplaced.items() if v})}; study "
                        f"defaults equal to {function.__name__}'s own: {same} (declare a default once)")
    hints = typing.get_type_hints(function)
    fields: dict[str, Any] = {}
    for key in derived:
        annotation, check = _setting_type(hints[key]), checks.get(key, FieldInfo())
        if isinstance(check, tuple):
            annotation, check = check
        fields[key] = (Annotated[annotation, check], defaults.get(key, parameters[key].default))
    fields.update(study)  # after the function's settings, as declared
    model = create_model(name, __base__=AnalysisSettings, __doc__=doc, **fields)
    model.ARGUMENTS = tuple(derived)
    return model
