"""The study: a YAML spec, its plan of content-addressed jobs, executors, results."""

from .plan import Job, build_plan
from .runner import open_study, run_study
from .spec import StudySpec, load_study

__all__ = ["Job", "StudySpec", "build_plan", "load_study", "open_study", "run_study"]
