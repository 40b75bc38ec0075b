"""The study: a YAML spec, its plan of content-addressed jobs, executors, results.

Names are imported on first use, so that importing a light part (``study.store``)
does not load the analyses the spec is derived from."""

from importlib import import_module

_HOMES = {"Job": "job", "StudySpec": "spec", "load_study": "spec", "build_plan": "plan", "open_study": "runner",
          "run_study": "runner"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
