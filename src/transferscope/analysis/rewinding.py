"""Module rewinding (Zhang, Bengio & Singer 2019, "Are all layers created equal?";
Fig. 5 of Neyshabur, Sedghi & Zhang 2020).

For each unit i of the module partition (``modules=``,
:class:`transferscope.models.Partition`; a grouped unit such as ``stem: [_conv_stem,
_bn0]`` is rewound as a whole, and ``rest``, the tensors a list leaves out, is rewound as
one more unit), the trained network Θ^F gets unit i set back to its value in a reference
state Θ^0 (the run's epoch-0 checkpoint: the random init
for RI-T, the pre-trained weights for P-T), every other module keeping its trained
value; loss and score (accuracy, or mean AUC) of that network on each split are
compared with those of the unchanged network. A module is *robust* when rewinding it
costs little, *critical* when performance collapses.

BatchNorm running statistics (``bn``, :mod:`transferscope.analysis.batchnorm_modes`;
the resolved mode is recorded in column ``bn``):

- ``"follow"`` (default): the module's BN running statistics are rewound with its
  weights (rewinding to the very same weights changes nothing);
- ``"keep"``: parameters are rewound, BN running statistics keep their trained values;
- ``"recalibrate"``: after rewinding, every BN layer's statistics are recomputed on
  training data (:func:`transferscope.evaluation.recalibrate_batchnorm`; the batches
  are read once). The base columns still describe the unchanged trained network;
- ``"auto"``: "recalibrate" when the model has BatchNorm and ``recalibration_loader``
  is given, else "follow".
"""

from __future__ import annotations

import copy
from typing import Mapping

import pandas as pd
import torch
from torch import nn

from ..evaluation import Batches, cache_batches, evaluate, recalibrate_batchnorm, score_columns, score_name
from ..models import Modules, module_state_keys
from ..models.state import ModelOrState, as_state_dict, batchnorm_buffer_keys, check_compatible
from ..progress import progress
from .batchnorm_modes import BnMode, recalibration_data, resolve_bn_mode


def _named_splits(loaders: Mapping[str, Batches] | Batches) -> dict[str, Batches]:
    """``{split: loader}``; a single loader is the ``"test"`` split."""
    if isinstance(loaders, Mapping):
        if not loaders:
            raise ValueError("loaders is empty; pass {'test': loader} or {'train': ..., 'test': ...}")
        return dict(loaders)
    return {"test": loaders}


@torch.no_grad()
def rewind(
    model: nn.Module,
    initial: ModelOrState,
    loaders: Mapping[str, Batches] | Batches,
    *,
    modules: Modules = None,
    bn: BnMode = "follow",
    recalibration_loader: Batches | None = None,
    recalibration_batches: int | None = None,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """Rewind each module of ``model`` to its value in ``initial`` and evaluate.

    Parameters
    ----------
    model : torch.nn.Module
        The trained network Θ^F. Not changed.
    initial : torch.nn.Module or mapping of str to Tensor
        Θ^0, a model or state dict of the same architecture (the epoch-0 checkpoint or
        any other).
    loaders : mapping of str to loader, or one loader
        ``{split: loader}``, or one loader (the ``"test"`` split); each split's first
        ``max_examples`` examples are cached once.
    modules : list of str, mapping of str to list of str, or Partition, optional
        The units to rewind, one at a time: module names, or ``{unit: [module, ...]}``
        (:class:`transferscope.models.Partition`); default: the model family's partition.
        Tensors no unit lists are rewound together as unit ``"rest"``.
    bn : {"follow", "keep", "recalibrate", "auto"}
        BatchNorm running statistics of the rewound network (module docstring).
    recalibration_loader : iterable of (Tensor, Tensor), optional
        Training data for "recalibrate".
    recalibration_batches : int, optional
        Recalibrate on the first ``recalibration_batches`` batches (default: all),
        read once and reused for every module (a one-shot iterator is fine).
    max_examples : int, optional
        Evaluate on the first ``max_examples`` examples of each split (default: all).

    Returns
    -------
    pandas.DataFrame
        One row per (unit, split): ``module`` (the unit), ``split``, ``loss``, ``score``,
        ``metric`` (``"accuracy"`` or ``"auc"``), ``base_loss`` and ``base_score`` of
        the unchanged model, ``n_examples``, ``bn`` (the resolved mode),
        ``recalibration_batches``, ``max_examples``.

    Raises
    ------
    ValueError
        For an unknown module (naming those that exist), an ``initial`` that lacks a
        rewound tensor or holds one of another shape, an unknown or inapplicable ``bn``
        mode, no loaders, or a network with NaN or inf outputs.

    References
    ----------
    Zhang, Bengio & Singer (2019), "Are all layers created equal?", arXiv:1902.01996.
    Neyshabur, Sedghi & Zhang (2020), "What is being transferred in transfer
    learning?", NeurIPS, Fig. 5.
    """
    bn_mode = resolve_bn_mode(model, bn, recalibration_loader)
    groups = module_state_keys(model, modules)
    initial_state = as_state_dict(initial, "initial")
    check_compatible(initial_state, model, keys=[key for keys in groups.values() for key in keys], what="initial",
                     reference_name="the trained model")
    splits = {name: cache_batches(loader, max_examples) for name, loader in _named_splits(loaders).items()}
    recalibration = recalibration_data(bn_mode, recalibration_loader, recalibration_batches)

    work = copy.deepcopy(model)
    trained = copy.deepcopy(work.state_dict())
    kept = set(batchnorm_buffer_keys(work)) if bn_mode == "keep" else set()
    metrics = {name: score_name(batches[0][1]) for name, batches in splits.items()}
    base = {name: evaluate(work, batches, name="the trained model") for name, batches in splits.items()}
    settings = {"bn": bn_mode, "recalibration_batches": recalibration_batches if bn_mode == "recalibrate" else None,
                "max_examples": max_examples}
    rows = []
    for module, keys in progress(groups.items(), "rewinding modules", total=len(groups)):
        work.load_state_dict(trained)
        own = work.state_dict()
        for key in keys:
            if key not in kept:
                own[key].copy_(initial_state[key])
        if recalibration is not None:  # bn mode "recalibrate"
            recalibrate_batchnorm(work, recalibration)
        for split, batches in splits.items():
            scores = evaluate(work, batches, name=f"the model with {module!r} rewound (bn={bn_mode!r})")
            base_scores = score_columns(base[split], metrics[split])
            rows.append({"module": module, "split": split, **score_columns(scores, metrics[split]),
                         "base_loss": base_scores["loss"], "base_score": base_scores["score"], **settings})
    return pd.DataFrame(rows)
