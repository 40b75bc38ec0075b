"""Analyses of Neyshabur, Sedghi & Zhang (2020), one file each: plain functions on
models, loaders and tensors that return tidy DataFrames and never change the models.

The functions are exported here (``transferscope.analysis.cka`` is the CKA function);
no module file has a function's name, so each module's helpers are reached by the
file's name: ``transferscope.analysis.similarity.gram_matrix`` (CKA),
``mistake_overlap`` (mistakes), ``spectra`` (spectrum), ``basins``, ``rewinding``,
``module_criticality``, ``interpolation``, ``distance``, ``feature_reuse``,
``checkpoints``, ``soups`` (soup), ``freeze_plan``, ``claims`` (the findings' claims and rules)."""

from .basins import basin
from .checkpoints import checkpoint_table
from .claims import findings
from .distance import param_distance
from .feature_reuse import feature_reuse_table, optimization_speed, relative_drop, summarize_run
from .freeze_plan import freeze_recommendation, freeze_table
from .interpolation import barrier, interpolate
from .mistake_overlap import mistake_examples, mistakes
from .module_criticality import criticality, criticality_value, network_criticality
from .rewinding import rewind
from .similarity import cka, compare_representations
from .soups import soup
from .spectra import spectrum, spectrum_summary

__all__ = [
    "barrier", "basin", "checkpoint_table", "cka", "compare_representations", "criticality", "criticality_value",
    "feature_reuse_table", "findings", "freeze_recommendation", "freeze_table", "interpolate", "mistake_examples",
    "mistakes", "network_criticality", "optimization_speed", "param_distance", "relative_drop", "rewind", "soup",
    "spectrum", "spectrum_summary", "summarize_run",
]
