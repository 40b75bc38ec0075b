"""BatchNorm running statistics in the analyses that move weights (interpolate, basin,
rewind): one parameter ``bn=`` with the modes of :data:`BN_MODES`.

- ``"auto"``: "recalibrate" when the model has BatchNorm and recalibration data are
  given, else "follow";
- ``"recalibrate"``: recompute the statistics on ``recalibration_loader`` (the first
  ``recalibration_batches`` batches, cached once) at every evaluated point
  (:func:`transferscope.evaluation.recalibrate_batchnorm`);
- ``"follow"``: the statistics move with the weights (interpolated along a path,
  rewound with a module);
- ``"keep"``: the first (or trained) model's statistics stay.

The analyses record the resolved mode (never "auto") in their ``bn`` column.
"""

from __future__ import annotations

from itertools import islice
from typing import Literal, get_args

from torch import Tensor, nn

from ..evaluation import Batches, cache_batches
from ..models.state import has_batchnorm

BnMode = Literal["auto", "recalibrate", "follow", "keep"]
BN_MODES: tuple[str, ...] = get_args(BnMode)


def resolve_bn_mode(model: nn.Module, bn: str, recalibration_loader: Batches | None) -> str:
    """The mode actually used for ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose weights move.
    bn : {"auto", "recalibrate", "follow", "keep"}
        The mode asked for (module docstring).
    recalibration_loader : iterable of (Tensor, Tensor) or None
        Training data for "recalibrate".

    Returns
    -------
    str
        "recalibrate", "follow" or "keep".

    Raises
    ------
    ValueError
        For an unknown mode, "recalibrate" without ``recalibration_loader``, or
        "recalibrate" or "keep" on a model without BatchNorm.
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown bn mode {bn!r}; choose one of {', '.join(map(repr, BN_MODES))}")
    with_bn = has_batchnorm(model)
    if bn == "auto":
        return "recalibrate" if with_bn and recalibration_loader is not None else "follow"
    if not with_bn and bn != "follow":
        raise ValueError(f"bn={bn!r} acts on BatchNorm running statistics but the model has no BatchNorm; "
                         "use bn='auto' or 'follow'")
    if bn == "recalibrate" and recalibration_loader is None:
        raise ValueError("bn='recalibrate' recomputes BatchNorm statistics on training data: pass "
                         "recalibration_loader=<training loader>, or choose bn='follow' or 'keep'")
    return bn


def recalibration_data(bn_mode: str, recalibration_loader: Batches | None,
                       recalibration_batches: int | None) -> list[tuple[Tensor, Tensor]] | None:
    """The recalibration batches, read once: the first ``recalibration_batches``
    batches of ``recalibration_loader`` (None = all) for mode "recalibrate", else None
    (a one-shot iterator serves every evaluated point)."""
    if bn_mode != "recalibrate":
        return None
    assert recalibration_loader is not None, "resolve_bn_mode requires it for 'recalibrate'"
    if recalibration_batches is not None and recalibration_batches < 1:
        raise ValueError(f"recalibration_batches must be >= 1 (or None for the whole loader), "
                         f"got {recalibration_batches}")
    return cache_batches(islice(recalibration_loader, recalibration_batches))
