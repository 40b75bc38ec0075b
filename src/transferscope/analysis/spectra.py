"""Singular-value spectrum of each module's weights, which Neyshabur, Sedghi & Zhang
(2020) leave to future work in their conclusion: what does fine-tuning keep of P's spectrum?

Every weight parameter with at least two dimensions in a unit of the module partition
(``modules=``, :class:`transferscope.models.Partition`; ``rest`` for the tensors a list
leaves out) is read as a matrix W of shape
``out x (in * k * k)`` (a convolution's kernel flattened per output channel, a linear
layer as it is) and its singular values σ_1 ≥ σ_2 ≥ … are computed in float64
(``torch.linalg.svdvals``). :func:`spectrum_summary` condenses them per tensor:

- energy in the top k: Σ_{i≤k} σ_i² / Σ_i σ_i² (1 when k reaches the rank);
- stable rank ‖W‖_F² / ‖W‖_2² = Σ σ_i² / σ_1² (Rudelson & Vershynin 2007);
- effective rank exp(H(p)) with p_i = σ_i / Σ_j σ_j and H the Shannon entropy
  (Roy & Vetterli 2007).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..models import Modules, module_state_keys


@torch.no_grad()
def spectrum(model: nn.Module, *, modules: Modules = None) -> pd.DataFrame:
    """Singular values σ_1 ≥ σ_2 ≥ … of every weight matrix of each partition module, in float64.

    Parameters
    ----------
    model : torch.nn.Module
        Not changed. Its parameters with ndim ≥ 2 are read as matrices ``out x (in*k*k)``.
    modules : list of str, mapping of str to list of str, or Partition, optional
        The units: module names (exact), or ``{unit: [module, ...]}``
        (:class:`transferscope.models.Partition`); default: the model family's partition.

    Returns
    -------
    pandas.DataFrame
        One row per ``(module, parameter, index)``, ``module`` the unit: ``singular_value`` (``index`` 0 is the
        largest), the matrix size ``rows``, ``cols`` and the parameter's ``shape``.

    Raises
    ------
    ValueError
        For an unknown module name (the message lists those that exist), or modules
        without any weight matrix.
    """
    parameters = dict(model.named_parameters())
    groups = module_state_keys(model, modules)
    rows = []
    for module, keys in groups.items():
        for key in keys:
            weight = parameters.get(key)
            if weight is None or weight.ndim < 2:
                continue
            matrix = weight.detach().to("cpu", torch.float64).reshape(weight.shape[0], -1)
            values = torch.linalg.svdvals(matrix).numpy()
            rows.append(pd.DataFrame({
                "module": module, "parameter": key, "shape": "x".join(map(str, weight.shape)),
                "rows": matrix.shape[0], "cols": matrix.shape[1],
                "index": np.arange(len(values)), "singular_value": values,
            }))
    if not rows:
        raise ValueError(f"{type(model).__name__} has no weight with 2 or more dimensions in modules "
                         f"{list(groups)}; nothing to decompose")
    return pd.concat(rows, ignore_index=True)


def _summarise(values: np.ndarray, top_k: Sequence[int]) -> dict:
    energy = values**2
    total = energy.sum()
    row = {
        "n_singular": len(values),
        "spectral_norm": values[0],
        "frobenius_norm": np.sqrt(total),
        "stable_rank": total / energy[0] if energy[0] > 0 else np.nan,
    }
    if values.sum() > 0:
        p = values / values.sum()
        p = p[p > 0]
        row["effective_rank"] = float(np.exp(-(p * np.log(p)).sum()))
    else:
        row["effective_rank"] = np.nan
    for k in top_k:
        row[f"energy_top{k}"] = energy[:k].sum() / total if total > 0 else np.nan
    return row


def spectrum_summary(frame: pd.DataFrame, *, top_k: Sequence[int] = (1, 5, 10)) -> pd.DataFrame:
    """Condense each weight matrix's spectrum:

    - energy in the top k: Σ_{i≤k} σ_i² / Σ_i σ_i²;
    - stable rank ‖W‖_F² / ‖W‖_2² = Σ σ_i² / σ_1²;
    - effective rank exp(H(p)), p_i = σ_i / Σ_j σ_j, H the Shannon entropy.

    Parameters
    ----------
    frame : pandas.DataFrame
        A :func:`spectrum` frame; every column but ``index`` and ``singular_value``
        (``shape``, an added ``model``…) is kept as a group key.
    top_k : sequence of int
        The k of the ``energy_top{k}`` columns.

    Returns
    -------
    pandas.DataFrame
        One row per ``(module, parameter)`` (and other keys): ``n_singular``,
        ``spectral_norm``, ``frobenius_norm``, ``stable_rank``, ``effective_rank`` and
        ``energy_top{k}`` for each k.

    References
    ----------
    Rudelson & Vershynin (2007) (stable rank); Roy & Vetterli (2007) (effective rank).
    """
    required = {"module", "parameter", "index", "singular_value"}
    if missing := required - set(frame.columns):
        raise ValueError(f"not a spectrum frame: columns {sorted(missing)} are missing; pass the output of spectrum()")
    if not top_k or any(int(k) < 1 for k in top_k):
        raise ValueError(f"top_k must list positive counts, got {list(top_k)}")
    keys = [c for c in frame.columns if c not in {"index", "singular_value"}]
    rows = []
    for group, part in frame.groupby(keys, sort=False):
        values = np.sort(part["singular_value"].to_numpy(np.float64))[::-1]
        rows.append({**dict(zip(keys, group)), **_summarise(values, [int(k) for k in top_k])})
    return pd.DataFrame(rows)
