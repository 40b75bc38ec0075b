"""Parameter distance between two models, per module and for the whole network
(Neyshabur, Sedghi & Zhang 2020, Table 2).

For a set S of state-dict tensors, the distance is the L2 norm of the difference of
the flattened, concatenated tensors:

    d_S(Θ, Θ') = sqrt( Σ_{t ∈ S} ‖Θ_t − Θ'_t‖²_F ),

computed in float64. Each unit of the module partition (``modules=``,
:class:`transferscope.models.Partition`: conv1, layer1..layer4, fc for ResNets; a grouped
unit such as ``stem: [_conv_stem, _bn0]``; ``rest`` for the tensors a list leaves out)
gets its own S; the row ``module="network"``
(:data:`transferscope.models.NETWORK`) takes every counted tensor of the network. Which
tensors count is set by the flags:

- ``include_head``: the classifier head (``transferscope.models.head_name``);
- ``include_bn_affine``: weight and bias of BatchNorm layers;
- ``include_bn_buffers``: running_mean and running_var of BatchNorm layers.

``num_batches_tracked`` and other integer buffers never count. A head tensor whose
shape differs between the two models (a 1000-class head against a 10-class one) cannot
be compared: it is left out, named in the ``skipped`` column and warned about. Any
other difference of keys or shapes means two architectures, an error.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from ..models import NETWORK, Modules, head_name, module_state_keys
from ..models.state import ModelOrState, as_state_dict, batchnorm_layers, check_compatible, in_modules

BN_AFFINE = ("weight", "bias")
BN_BUFFERS = ("running_mean", "running_var")


def _check_is_head(model: nn.Module, key: str, shape_a: torch.Size, shape_b: torch.Size) -> None:
    """A shape may differ in the classifier head only (a head sized for other classes)."""
    head = head_name(model)
    if not in_modules(key, [head]):
        raise ValueError(
            f"{key} has shape {tuple(shape_a)} in model_a but {tuple(shape_b)} in model_b; outside the "
            f"classifier head ({head!r}) the two models must have one architecture (same width and depth)"
        )


def _excluded_keys(model: nn.Module, include_head: bool, include_bn_affine: bool,
                   include_bn_buffers: bool) -> set[str]:
    """State keys the flags leave out (num_batches_tracked always)."""
    excluded = set()
    for name in batchnorm_layers(model):
        prefix = f"{name}." if name else ""
        excluded.add(prefix + "num_batches_tracked")
        if not include_bn_affine:
            excluded.update(prefix + suffix for suffix in BN_AFFINE)
        if not include_bn_buffers:
            excluded.update(prefix + suffix for suffix in BN_BUFFERS)
    if not include_head:
        head = head_name(model)
        excluded.update(key for key in model.state_dict() if in_modules(key, [head]))
    return excluded


def _row(module: str, keys: Sequence[str], squared: Mapping[str, float], sizes: Mapping[str, int],
         skipped: Sequence[str]) -> dict:
    counted = [key for key in keys if key in squared]
    left_out = [key for key in keys if key in skipped]
    return {
        "module": module,
        # NaN, not 0, when nothing in the module was compared: 0 would claim equality
        "distance": sum(squared[key] for key in counted) ** 0.5 if counted else float("nan"),
        "n_parameters": sum(sizes[key] for key in counted),
        "n_tensors": len(counted),
        "skipped": ", ".join(left_out),
        "n_skipped": len(left_out),
    }


def param_distance(
    model_a: ModelOrState,
    model_b: ModelOrState,
    *,
    modules: Modules = None,
    include_head: bool = True,
    include_bn_affine: bool = True,
    include_bn_buffers: bool = False,
) -> pd.DataFrame:
    """L2 distance between the weights of two models of one architecture, per partition
    module and for the whole network:

        d_S(Θ, Θ') = sqrt( Σ_{t ∈ S} ‖Θ_t − Θ'_t‖²_F )

    in float64, S the counted tensors of a module (or of the network).

    Parameters
    ----------
    model_a, model_b : torch.nn.Module or mapping of str to Tensor
        Models or state dicts of one architecture; at least one must be a module, which
        supplies the partition, the BatchNorm layers and the head. Not changed.
    modules : list of str, mapping of str to list of str, or Partition, optional
        The units (:class:`transferscope.models.Partition`): module names, or
        ``{unit: [module, ...]}``; default: the model family's partition. Tensors no unit
        lists get a ``"rest"`` row; the ``"network"`` row always covers the whole network.
    include_head : bool
        Count the classifier head (:func:`transferscope.models.head_name`).
    include_bn_affine : bool
        Count the weight and bias of BatchNorm layers.
    include_bn_buffers : bool
        Count the running mean and variance of BatchNorm layers.

    Returns
    -------
    pandas.DataFrame
        One row per unit (``rest`` included), then ``module="network"``: ``module``, ``distance`` (NaN
        for a module with no counted tensor, e.g. ``fc`` with ``include_head=False``),
        ``n_parameters`` and ``n_tensors`` counted, ``skipped`` (head tensors whose
        shapes differ, left out with a warning) and ``n_skipped``, and the three flags.

    Raises
    ------
    ValueError
        When the state-dict keys differ, a shape differs outside the head, or a module
        name is unknown (the message lists those that exist).

    References
    ----------
    Neyshabur, Sedghi & Zhang (2020), Table 2.
    """
    reference = next((m for m in (model_a, model_b) if isinstance(m, nn.Module)), None)
    if reference is None:
        raise TypeError(
            "param_distance needs at least one nn.Module (it supplies the module partition, the "
            "BatchNorm layers and the head); build the architecture and pass it instead of a state dict"
        )
    state_a, state_b = as_state_dict(model_a, "model_a"), as_state_dict(model_b, "model_b")
    # keys only: a shape may differ in the head (left out below), nowhere else (_check_is_head)
    check_compatible(state_b, state_a, shapes=False, what="model_b", reference_name="model_a")
    excluded = _excluded_keys(reference, include_head, include_bn_affine, include_bn_buffers)

    squared, sizes, skipped = {}, {}, []
    for key, tensor_a in state_a.items():
        tensor_b = state_b[key]
        if key in excluded or not (tensor_a.is_floating_point() and tensor_b.is_floating_point()):
            continue
        if tensor_a.shape != tensor_b.shape:
            _check_is_head(reference, key, tensor_a.shape, tensor_b.shape)
            skipped.append(key)
            continue
        difference = tensor_a.detach().to("cpu", torch.float64) - tensor_b.detach().to("cpu", torch.float64)
        squared[key] = float(difference.square().sum())
        sizes[key] = tensor_a.numel()
    if skipped:
        warnings.warn(
            f"param_distance left out {len(skipped)} tensor(s) whose shapes differ between the models: "
            f"{', '.join(skipped)} (reported in the 'skipped' column; pass include_head=False to exclude a "
            "head sized for other classes explicitly)",
            stacklevel=2,
        )

    groups = module_state_keys(reference, modules)
    rows = [_row(name, keys, squared, sizes, skipped) for name, keys in groups.items()]
    rows.append(_row(NETWORK, list(state_a), squared, sizes, skipped))
    frame = pd.DataFrame(rows)
    frame["include_head"] = include_head
    frame["include_bn_affine"] = include_bn_affine
    frame["include_bn_buffers"] = include_bn_buffers
    return frame
