"""Module rewinding (Zhang, Bengio & Singer 2019, "Are all layers created equal?";
Fig. 5 of Neyshabur, Sedghi & Zhang 2020).

For each module i of the partition, the trained network Θ^F gets module i set back
to its value in a reference state Θ^0 (the run's epoch-0 checkpoint: the random init
for RI-T, the pre-trained weights for P-T), every other module keeping its trained
value; loss and accuracy (or mean AUC) of that network on each split are compared
with those of the unchanged network. A module is *robust* when rewinding it costs
little, *critical* when performance collapses.

BatchNorm is handled explicitly (``bn`` column):

- ``"rewind"``: the module's BN parameters *and* running statistics are rewound with
  its weights (rewinding to the very same weights changes nothing);
- ``"keep"``: parameters are rewound, BN running statistics keep their trained values;
- ``"recalibrate"``: after rewinding, every BN layer's statistics are recomputed on
  training data (:func:`transferscope.evaluation.recalibrate_batchnorm`). The base
  columns still describe the unchanged trained network.
"""

from __future__ import annotations

import copy
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from ..evaluation import Batches, cache_batches, evaluate, recalibrate_batchnorm
from ..models import module_state_keys

ModelOrState = nn.Module | Mapping[str, Tensor]
BN_MODES = ("rewind", "keep", "recalibrate")


def as_state_dict(model_or_state: ModelOrState) -> Mapping[str, Tensor]:
    """The state dict of a model, or the mapping itself."""
    return model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state


def check_state(state: Mapping[str, Tensor], model: nn.Module, keys: Iterable[str], what: str) -> None:
    """Raise naming the first of ``keys`` that ``state`` lacks or holds with another shape."""
    own = model.state_dict()
    for key in keys:
        if key not in state:
            raise ValueError(f"{what} has no tensor {key!r}; pass a state dict (or model) of the same "
                             f"architecture as the trained model")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ValueError(f"{what} holds {key!r} with shape {tuple(state[key].shape)} but the model has "
                             f"{tuple(own[key].shape)}; check the architecture, width and number of classes")


def _named_splits(loaders: Mapping[str, Batches] | Batches) -> dict[str, Batches]:
    """``{split: loader}``; a single loader is the ``"test"`` split."""
    if isinstance(loaders, Mapping):
        if not loaders:
            raise ValueError("loaders is empty; pass {'test': loader} or {'train': ..., 'test': ...}")
        return dict(loaders)
    return {"test": loaders}


def _buffer_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_buffers()}


@torch.no_grad()
def rewind(
    model: nn.Module,
    initial: ModelOrState,
    loaders: Mapping[str, Batches] | Batches,
    modules: Sequence[str] | None = None,
    bn: str = "rewind",
    recalibration_loader: Batches | None = None,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """Rewind each module of ``model`` to its value in ``initial`` and evaluate.

    ``initial``: a model or state dict of the same architecture (the epoch-0 checkpoint
    or any other). ``loaders``: ``{split: loader}`` or one loader (named ``"test"``);
    each split is cached once (first ``max_examples`` examples). ``modules``: partition
    names (default: :func:`transferscope.models.modules`). ``bn``: ``"rewind"``,
    ``"keep"`` or ``"recalibrate"`` (module docstring); ``"recalibrate"`` needs
    ``recalibration_loader`` (training data).

    Returns one row per (module, split): ``module, split, loss, accuracy`` (or ``auc``),
    ``base_loss, base_accuracy`` (or ``base_auc``) of the unchanged model, ``n``
    (examples), ``bn``, ``max_examples``.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if bn == "recalibrate" and recalibration_loader is None:
        raise ValueError("bn='recalibrate' recomputes BatchNorm statistics on training data: "
                         "pass recalibration_loader=<training loader>")
    groups = module_state_keys(model, modules)
    initial_state = as_state_dict(initial)
    check_state(initial_state, model, [key for keys in groups.values() for key in keys], "initial")
    splits = {name: cache_batches(loader, max_examples) for name, loader in _named_splits(loaders).items()}

    work = copy.deepcopy(model)
    trained = copy.deepcopy(work.state_dict())
    buffers = _buffer_names(work)
    base = {name: evaluate(work, batches, name="the trained model") for name, batches in splits.items()}
    rows = []
    for module, keys in groups.items():
        work.load_state_dict(trained)
        own = work.state_dict()
        for key in keys:
            if not (bn == "keep" and key in buffers):
                own[key].copy_(initial_state[key])
        if bn == "recalibrate":
            recalibrate_batchnorm(work, recalibration_loader)
        for split, batches in splits.items():
            scores = evaluate(work, batches, name=f"the model with {module!r} rewound (bn={bn!r})")
            rows.append({"module": module, "split": split,
                         **{name: value for name, value in scores.items() if name != "n"},
                         **{f"base_{name}": value for name, value in base[split].items() if name != "n"},
                         "n": scores["n"], "bn": bn, "max_examples": max_examples})
    return pd.DataFrame(rows)
