"""Centred kernel alignment (CKA) between representations: Table 1 of Neyshabur, Sedghi &
Zhang (2020), "feature similarity" of P, P-T and RI-T per module.

CKA (Kornblith et al. 2019, "Similarity of neural network representations revisited",
Sec. 3) of two representations of the same ``n`` examples, with Gram matrices ``K`` and ``L``::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))
    linear kernel  K = X X^T
    RBF kernel     K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2)),  with (``bandwidth_rule``)
        "kornblith"    sigma^2 = bandwidth^2 * median_{i,j} |x_i - x_j|^2   (all n^2 entries, diagonal zeros included;
                                                                          Kornblith et al.'s reference code)
        "offdiagonal"  sigma   = bandwidth * median_{i<j} |x_i - x_j|        (the n(n-1)/2 distinct pairs)

HSIC estimators, both Frobenius inner products of transformed Gram matrices::

    biased    HSIC_0(K, L) = tr(K H L H) / (n-1)^2 = <H K H, H L H> / (n-1)^2,  H = I - 11^T/n
              (Gretton et al. 2005)
    unbiased  HSIC_1(K, L) = [tr(K~ L~) + 1^T K~ 1 * 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))
                           = <U(K), U(L)> / (n(n-3)),  K~ = K with a zero diagonal
              (Song et al. 2012, Eq. 5; U is the U-centring of Szekely & Rizzo 2014, Def. 1:
              U(K)_ij = K~_ij - K~_i./(n-2) - K~_.j/(n-2) + K~_../((n-1)(n-2)) off the diagonal, 0 on it)

"Debiased CKA" uses HSIC_1 (Nguyen, Raghu & Kornblith 2021, Sec. 3.1). The *minibatch*
estimator of that paper (Eq. 3) averages HSIC_1 over batches of examples::

    CKA_minibatch = mean_i HSIC_1(K_i, L_i) / sqrt(mean_i HSIC_1(K_i, K_i) * mean_i HSIC_1(L_i, L_i))

so its memory does not grow with ``n``; the *full* estimator keeps every feature and
computes CKA on all ``n`` examples at once. Values are never clipped: HSIC_1 can make
CKA negative.

Numerics: features are shifted by the mean of their first ``SHIFT_EXAMPLES`` examples in
float32 (float64 when they are float64; never TF32 on a GPU) before their Gram matrix is
taken, which changes neither the centred Gram matrix nor pairwise distances but removes
the cancellation of large means (as centring would, reading 16 rows instead of all n);
everything after the Gram matrix is float64, where the linear Gram matrix is centred
exactly. Only the blocks on and below the diagonal of ``X X^T`` are multiplied. On CPU
the models run in channels_last memory during :func:`compare_representations` (their
convolutions take 35-40% less time; the features are equal to rounding, read in memory
order, which no Gram matrix depends on).
"""

from __future__ import annotations

import itertools
import math
from contextlib import ExitStack
from functools import partial
from typing import Callable, Iterable, Literal, Mapping, Sized, cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..evaluation import channels_last, eval_mode, model_device
from ..models import Modules, Partition
from ..progress import progress

Kernel = Literal["linear", "rbf"]
Estimator = Literal["minibatch", "full"]
BandwidthRule = Literal["kornblith", "offdiagonal"]
KERNELS = ("linear", "rbf")
ESTIMATORS = ("minibatch", "full")
BANDWIDTH_RULES = ("kornblith", "offdiagonal")
MIN_UNBIASED_EXAMPLES = 4  # HSIC_1 divides by n(n-3) and (n-2)


def _check_settings(kernel: str, bandwidth: float, bandwidth_rule: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth is a positive fraction of the median pairwise distance, got {bandwidth}")
    if bandwidth_rule not in BANDWIDTH_RULES:
        raise ValueError(f"bandwidth_rule must be one of {BANDWIDTH_RULES} (the median behind the RBF bandwidth), "
                         f"got {bandwidth_rule!r}")


def _check_examples(n: int, unbiased: bool) -> None:
    needed = MIN_UNBIASED_EXAMPLES if unbiased else 2
    if n < needed:
        raise ValueError(f"the {'unbiased' if unbiased else 'biased'} HSIC estimator needs at least {needed} examples, "
                         f"got {n}: pass more examples")


def _as_features(features: Tensor | np.ndarray, name: str) -> Tensor:
    """``(n, ...)`` tensor or array -> detached ``(n, d)`` tensor (one row per example)."""
    tensor = torch.as_tensor(features).detach()
    if tensor.ndim < 2:
        raise ValueError(f"{name} must hold one feature vector per example, shape (n, d) or (n, ...), "
                         f"got shape {tuple(tensor.shape)}")
    return tensor.flatten(1)


def _median(values: Tensor) -> Tensor:
    """Median as numpy defines it (mean of the two middle values for an even count)."""
    ordered = values.sort().values
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2


SHIFT_EXAMPLES = 16  # features are shifted by the mean of this many examples before their Gram matrix
GRAM_BLOCK = 64  # rows per block of the Gram product (only the blocks on and below the diagonal are multiplied)
CHUNK_VALUES = 2 ** 22  # CPU: the shifted features are made in column chunks of at most this many values (16 MiB)
MIN_CHUNK_COLUMNS = 256


def _shifted_gram(work: Tensor) -> Tensor:
    """``(x_i - s) . (x_j - s)`` for the rows ``x_i`` of ``work`` (``(n, d)``), ``s`` the mean
    of its first ``SHIFT_EXAMPLES`` rows, in the dtype of ``work``.

    Only the column blocks (of ``GRAM_BLOCK``) on and below the diagonal are multiplied and
    then mirrored: ``(1 + 1/b) / 2`` of the multiply-adds of one ``n x n x d`` product, ``b =
    ceil(n / GRAM_BLOCK)`` (3/4 at n = 128). On CPU, features of more than ``CHUNK_VALUES``
    values are shifted chunk by chunk of columns into one reused buffer (a whole shifted
    copy of 32 MiB or more is fresh, page-faulted memory on every call); smaller ones, and
    all on a GPU, in one piece: few operations, each a parallel region on CPU, which
    costs most on a machine whose cores are shared.
    """
    n, d = work.shape
    head = work[:SHIFT_EXAMPLES]
    shift = torch.full((len(head),), 1 / len(head), dtype=work.dtype, device=work.device) @ head  # GEMV: fast on CPU
    width = d if work.device.type != "cpu" else min(d, max(MIN_CHUNK_COLUMNS, CHUNK_VALUES // n))
    gram = torch.zeros(n, n, dtype=work.dtype, device=work.device)
    buffer = torch.empty(n, width, dtype=work.dtype, device=work.device)
    blocks = [(first, min(first + GRAM_BLOCK, n)) for first in range(0, n, GRAM_BLOCK)]
    for start in range(0, d, width):
        chunk = buffer[:, :min(width, d - start)]
        torch.sub(work[:, start:start + width], shift[start:start + width], out=chunk)
        for first, last in blocks:
            gram[first:, first:last].addmm_(chunk[first:], chunk[first:last].T)
    for first, last in blocks:
        gram[first:last, last:] = gram[last:, first:last].T
    return gram


def gram_matrix(features: Tensor, *, kernel: Kernel = "linear", bandwidth: float = 0.5,
                bandwidth_rule: BandwidthRule = "kornblith") -> Tensor:
    """The ``n x n`` float64 Gram matrix of ``features`` for the linear or RBF kernel.

    Linear ``K = X X^T``; RBF ``K_ij = exp(-d_ij^2 / (2 sigma^2))``, ``d_ij = |x_i - x_j|``,
    with the bandwidth of ``bandwidth_rule``:

    - ``"kornblith"`` (default): ``sigma^2 = bandwidth^2 * median_{i,j} d_ij^2``, the median
      over all ``n^2`` entries of the squared-distance matrix, its ``n`` diagonal zeros
      included, as the reference code of Kornblith et al. (2019) computes it
      (``rbf(x, threshold)`` in their ``CKA.ipynb``: ``sq_median_distance =
      np.median(sq_distances)``; ``threshold`` is ``bandwidth`` here);
    - ``"offdiagonal"``: ``sigma = bandwidth * median_{i<j} d_ij``, the median over the
      ``n(n-1)/2`` distinct pairs (this package's convention before issue 11; the two
      differ by the diagonal zeros, which pull the median down).

    Medians of an even count are the mean of the two middle values (as ``numpy.median``).
    The features are shifted by the mean of their first ``SHIFT_EXAMPLES`` examples first
    (which changes neither ``H K H`` nor the distances, and removes a large common
    offset), in float32 (float64 features stay float64) with full-precision float32
    products (no TF32 on GPUs, whose float64 units may be 64x slower); autocast is off.
    The linear Gram matrix is then centred in float64: it is ``H X X^T H`` with
    ``H = I - 11^T/n``, the Gram matrix of the centred features.

    Parameters
    ----------
    features : Tensor
        ``(n, ...)``, one row per example (flattened).
    kernel : {"linear", "rbf"}
    bandwidth : float
        RBF only: sigma as a fraction of the median pairwise distance (the reference
        code's ``threshold``).
    bandwidth_rule : {"kornblith", "offdiagonal"}
        RBF only: which median sets sigma (above).

    Returns
    -------
    Tensor
        float64 ``(n, n)``, on the features' device.

    Raises
    ------
    ValueError
        For an RBF kernel whose median pairwise distance is 0.

    References
    ----------
    Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network
    representations revisited", ICML, Sec. 3, and its reference code
    (github.com/google-research/google-research, ``representation_similarity``).
    """
    gram = _kernel_matrix(features, kernel, bandwidth, bandwidth_rule)
    if kernel == "linear":
        means = gram.mean(0)  # the row means too: the Gram matrix is symmetric
        gram.sub_(means).sub_(means[:, None]).add_(means.mean())
    return gram


def _rows(features: Tensor) -> Tensor:
    """``(n, d)``: one row per example, the features in memory order (the channels last in
    a channels_last tensor, with no copy). The Gram matrix, the distances and so CKA do
    not depend on the order of the features."""
    if features.dim() == 4 and not features.is_contiguous() and features.is_contiguous(
            memory_format=torch.channels_last):
        return features.permute(0, 2, 3, 1).flatten(1)
    return features.flatten(1)


def _on_device_of(model: nn.Module, inputs: Tensor) -> Tensor:
    """``inputs`` on the model's device; image batches in channels_last memory on CPU,
    where :func:`_register_hooks` holds the model so."""
    device = model_device(model)
    inputs = inputs.to(device)
    return inputs.contiguous(memory_format=torch.channels_last) if device.type == "cpu" and inputs.dim() == 4 else inputs


def _kernel_matrix(features: Tensor, kernel: Kernel, bandwidth: float, bandwidth_rule: BandwidthRule) -> Tensor:
    """:func:`gram_matrix` without its last step: the linear kernel's matrix is that of the
    shifted features, which differs from the centred one by a row/column effect that
    :func:`hsic_operand` removes exactly (H.H and U-centring)."""
    features = _rows(features.detach())
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(features.device.type, enabled=False):
            gram = _shifted_gram(features.to(dtype)).double()
    finally:
        torch.set_float32_matmul_precision(precision)
    if kernel == "linear":
        return gram
    norms = gram.diagonal()
    squared = (norms[:, None] + norms[None, :] - 2 * gram).clamp_(min=0).fill_diagonal_(0)
    if bandwidth_rule == "kornblith":
        variance = bandwidth ** 2 * _median(squared.flatten())
    else:
        upper = torch.triu_indices(len(gram), len(gram), offset=1, device=gram.device)
        variance = (bandwidth * _median(squared[upper[0], upper[1]].sqrt())) ** 2
    if not variance > 0:
        raise ValueError("the RBF bandwidth is 0: the median distance between examples is 0 (most examples have "
                         "identical features); use kernel='linear' or more varied inputs")
    return torch.exp(-squared / (2 * variance))


def hsic_operand(gram: Tensor, *, debiased: bool) -> Tensor:
    """``M(K)`` such that ``<M(K), M(L)>_F`` is the HSIC estimate of two Gram matrices.

    Biased ``M(K) = H K H / (n-1)`` (HSIC_0, ``H = I - 11^T/n``); unbiased
    ``M(K) = U(K) / sqrt(n(n-3))`` (HSIC_1, ``U`` the U-centring of the module docstring).

    Parameters
    ----------
    gram : Tensor
        ``(n, n)`` Gram matrix (:func:`gram_matrix`).
    debiased : bool
        HSIC_1 instead of HSIC_0; needs ``n >= 4``.

    Returns
    -------
    Tensor
        ``(n, n)``, the dtype of ``gram``.

    References
    ----------
    Gretton et al. (2005) (HSIC_0); Song et al. (2012), Eq. 5 (HSIC_1); Szekely & Rizzo
    (2014), Def. 1 (U-centring).
    """
    n = gram.shape[-1]
    _check_examples(n, debiased)
    if debiased:
        operand = gram.clone()
        operand.diagonal(dim1=-2, dim2=-1).zero_()
        rows, cols = operand.sum(-1, keepdim=True), operand.sum(-2, keepdim=True)
        total = rows.sum(-2, keepdim=True)
        operand.sub_(rows / (n - 2)).sub_(cols / (n - 2)).add_(total / ((n - 1) * (n - 2)))
        operand.diagonal(dim1=-2, dim2=-1).zero_()
        return operand.div_(math.sqrt(n * (n - 3)))
    rows, cols = gram.mean(-1, keepdim=True), gram.mean(-2, keepdim=True)
    return (gram - rows - cols + rows.mean(-2, keepdim=True)) / (n - 1)


def _cka_from_hsic(cross: Tensor, self_a: Tensor, self_b: Tensor) -> Tensor:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), elementwise over module pairs
    (``cross`` is ``(L_a, L_b)``, ``self_a`` ``(L_a,)``, ``self_b`` ``(L_b,)``)."""
    return cross / torch.sqrt(self_a[:, None] * self_b[None, :])


def cka(X: Tensor | np.ndarray, Y: Tensor | np.ndarray, *, kernel: Kernel = "linear", debiased: bool = False,
        bandwidth: float = 0.5, bandwidth_rule: BandwidthRule = "kornblith") -> float:
    """CKA of two representations of the same examples, in float64.

        CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

    with ``K``, ``L`` the Gram matrices of ``X`` and ``Y`` (module docstring).

    Parameters
    ----------
    X, Y : Tensor or numpy.ndarray
        ``(n, d1, ...)`` and ``(n, d2, ...)``: one row per example, the same ``n`` examples.
    kernel : {"linear", "rbf"}
    debiased : bool
        The unbiased HSIC_1 instead of HSIC_0 (needs ``n >= 4``).
    bandwidth : float
        RBF only: sigma as a fraction of the median pairwise distance.
    bandwidth_rule : {"kornblith", "offdiagonal"}
        RBF only: the median behind sigma (:func:`gram_matrix`); "kornblith" is the
        reference implementation's.

    Returns
    -------
    float
        CKA, never clipped (HSIC_1 can make it negative); NaN when a representation is
        constant over the examples.

    References
    ----------
    Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network
    representations revisited", Sec. 3; Nguyen, Raghu & Kornblith (2021), Sec. 3.1.
    """
    _check_settings(kernel, bandwidth, bandwidth_rule)
    x, y = _as_features(X, "X"), _as_features(Y, "Y")
    if len(x) != len(y):
        raise ValueError(f"X and Y must describe the same examples: X has {len(x)} rows, Y has {len(y)}")
    _check_examples(len(x), debiased)
    gram = partial(_kernel_matrix, kernel=kernel, bandwidth=bandwidth, bandwidth_rule=bandwidth_rule)
    a = hsic_operand(gram(x.double()), debiased=debiased)
    b = hsic_operand(gram(y.double()), debiased=debiased)
    return float(_cka_from_hsic((a * b).sum().reshape(1, 1), (a * a).sum().reshape(1), (b * b).sum().reshape(1)))


def _resolve_pairs(models: Mapping[str, nn.Module], pairs: Iterable[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if pairs is None:
        if len(models) < 2:
            raise ValueError(f"compare_representations needs at least two models, got {list(models)}; "
                             "pass pairs=[(name, name)] to compare a model with itself")
        return list(itertools.combinations(models, 2))
    resolved = []
    for pair in pairs:
        names = tuple(pair)
        if len(names) != 2 or any(name not in models for name in names):
            raise ValueError(f"each pair must name two of the models {list(models)}, got {names!r}")
        resolved.append((names[0], names[1]))
    if not resolved:
        raise ValueError("pairs is empty: list (model_a, model_b) tuples, or leave pairs=None for every pair")
    return resolved


def _partitions(modules: Modules | Mapping[str, Modules], models: Mapping[str, nn.Module]) -> dict[str, Modules]:
    """The ``modules=`` setting of each model: ``modules`` itself for every model, or, for a
    mapping keyed by model names, each model's entry (None: its default partition)."""
    if isinstance(modules, Mapping):
        named = [key for key in modules if key in models]
        if named and len(named) < len(modules):
            unknown = [key for key in modules if key not in models]
            raise ValueError(f"modules= names models {unknown}, but the models are {list(models)}: key the mapping "
                             "by the names of the models dict (or by unit names only, for one partition of every model)")
        if named:  # one modules= setting per model
            return {name: cast(Modules, modules.get(name)) for name in models}
    shared = cast(Modules, modules)  # one setting (a mapping: of unit names) for every model
    return {name: shared for name in models}


class _HSICSums:
    """Running sums over batches of HSIC(K_a, K_b) for every module pair of every model
    pair, and of HSIC(K, K) for every module of every model."""

    def __init__(self, pairs: list[tuple[str, str]], module_counts: Mapping[str, int], device: torch.device,
                 unbiased: bool) -> None:
        self.pairs = pairs
        self.device = device
        self.unbiased = unbiased
        self.cross = {pair: torch.zeros(module_counts[pair[0]], module_counts[pair[1]], dtype=torch.float64,
                                        device=device) for pair in pairs}
        self.self = {name: torch.zeros(count, dtype=torch.float64, device=device)
                     for name, count in module_counts.items()}

    def add(self, grams: Mapping[str, list[Tensor]]) -> None:
        """``grams[model]``: the Gram matrices of its modules for one batch. Their HSIC
        operands ``M(K)`` (one at a time: ``n x n`` operations stay serial on CPU) become the
        rows of one ``(L, n^2)`` matrix per model, so one product gives every HSIC of a
        model pair for the batch."""
        rows = {name: torch.stack([hsic_operand(gram.to(self.device), debiased=self.unbiased).flatten()
                                   for gram in module_grams])
                for name, module_grams in grams.items()}
        for name, matrix in rows.items():
            self.self[name] += (matrix * matrix).sum(1)
        for a, b in self.pairs:
            self.cross[(a, b)] += rows[a] @ rows[b].T

    def cka(self, pair: tuple[str, str]) -> np.ndarray:
        """Ratio of the sums = ratio of the means over batches (the counts cancel)."""
        return _cka_from_hsic(self.cross[pair], self.self[pair[0]], self.self[pair[1]]).cpu().numpy()


def _hook(store: dict[str, Tensor], model: str, name: str, keep_features: bool,
          gram: Callable[[Tensor], Tensor]) -> Callable[[nn.Module, object, object], None]:
    """Forward hook: store the module's Gram matrix for the batch (minibatch), or a copy of
    its flattened features (full); never the output itself or an autograd graph."""

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"module {name!r} of model {model!r} returned {type(output).__name__}, not a tensor; "
                            "hook a module whose output is a tensor (pass modules=...)")
        if name in store:
            raise RuntimeError(f"module {name!r} of model {model!r} ran more than once in one forward pass; hook a "
                               "module that runs once per batch (pass modules=...)")
        if keep_features:
            dtype = torch.float64 if output.dtype == torch.float64 else torch.float32
            store[name] = _rows(output.detach()).to(dtype, copy=True)
        else:
            store[name] = gram(output)

    return hook


def _register_hooks(cleanup: ExitStack, models: Mapping[str, nn.Module], hooked: Mapping[str, Mapping[str, nn.Module]],
                    stores: Mapping[str, dict[str, Tensor]], keep_features: bool,
                    gram: Callable[[Tensor], Tensor]) -> None:
    """Put every hooked model in eval mode (in channels_last memory on CPU, where its
    convolutions run faster) and hook its modules, all undone by ``cleanup``."""
    for name, modules in hooked.items():
        cleanup.enter_context(eval_mode(models[name]))
        if model_device(models[name]).type == "cpu":
            cleanup.enter_context(channels_last(models[name]))
        for module_name, module in modules.items():
            handle = module.register_forward_hook(_hook(stores[name], name, module_name, keep_features, gram))
            cleanup.callback(handle.remove)


def _batch_inputs(batch: Tensor | tuple[Tensor, ...] | list[Tensor], index: int, estimator: Estimator) -> Tensor:
    """The inputs of batch ``index`` (``(inputs, targets)`` or bare inputs), checked to be
    large enough for the minibatch estimator."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if estimator == "minibatch" and len(inputs) < MIN_UNBIASED_EXAMPLES:
        raise ValueError(
            f"batch {index} has {len(inputs)} examples, but the minibatch CKA estimator (unbiased HSIC) needs "
            f"at least {MIN_UNBIASED_EXAMPLES} in every batch; use a larger batch size, or drop_last=True so "
            "that a small last batch is skipped")
    return inputs


def _cka_rows(sums: _HSICSums, model_pairs: list[tuple[str, str]], hooked: Mapping[str, Mapping[str, nn.Module]],
              settings: Mapping[str, object]) -> list[dict[str, object]]:
    """One row per ``(model_a, model_b, module_a, module_b)``: its CKA and ``settings``."""
    rows = []
    for a, b in model_pairs:
        values = sums.cka((a, b))
        for (i, module_a), (j, module_b) in itertools.product(enumerate(hooked[a]), enumerate(hooked[b])):
            rows.append({"model_a": a, "model_b": b, "module_a": module_a, "module_b": module_b,
                         "cka": float(values[i, j]), **settings})
    return rows


def _take(store: dict[str, Tensor], model: str, names: Iterable[str]) -> list[Tensor]:
    """Empty ``store`` for the next batch, returning the values of modules ``names`` in order."""
    missing = [name for name in names if name not in store]
    if missing:
        raise RuntimeError(f"modules {missing} of model {model!r} did not run in the forward pass; hook modules that "
                           "the forward pass uses (pass modules=...)")
    return [store.pop(name) for name in names]


@torch.no_grad()
def compare_representations(
    models: Mapping[str, nn.Module],
    loader: Iterable,
    *,
    modules: Modules | Mapping[str, Modules] = None,
    estimator: Estimator = "minibatch",
    kernel: Kernel = "linear",
    debiased: bool = False,
    bandwidth: float = 0.5,
    pairs: Iterable[tuple[str, str]] | None = None,
    bandwidth_rule: BandwidthRule = "kornblith",
) -> pd.DataFrame:
    """CKA between the hooked modules of every pair of models over the same examples.

    Each batch of ``loader`` goes through each model once, in eval mode, without
    gradient; modes are restored and hooks removed, even on error. The minibatch
    estimator (Nguyen et al. 2021, Eq. 3) averages the unbiased HSIC_1 over batches::

        CKA_minibatch = mean_i HSIC_1(K_i, L_i) / sqrt(mean_i HSIC_1(K_i, K_i) * mean_i HSIC_1(L_i, L_i))

    the full estimator computes :func:`cka` on all ``n`` examples at once.

    Parameters
    ----------
    models : mapping of str to torch.nn.Module
        ``{name: model}``.
    loader : iterable
        Batches ``(inputs, targets)`` or bare inputs, the same for every model.
    modules : list of str, mapping of str to list of str, or Partition, optional
        The units of every model (:class:`transferscope.models.Partition`: module names,
        or ``{unit: [module, ...]}``), or per model ``{model name: units}``. Each unit is
        represented by the output of its last listed module (a grouped unit ``stem:
        [_conv_stem, _bn0]`` by ``_bn0``'s; the ResNet stem by ``conv1``'s); ``rest``, which
        is no module, is not compared. Default: the model family's partition (conv1,
        layer1..4, fc for ResNets).
    estimator : {"minibatch", "full"}
        ``"minibatch"`` always uses HSIC_1, needs at least 4 examples in every batch, and
        ignores ``debiased``. ``"full"`` keeps the features of every hooked module
        (memory ``n x d`` per module) and uses HSIC_1 if ``debiased`` else HSIC_0.
    kernel : {"linear", "rbf"}
    debiased : bool
        Full estimator only: HSIC_1 instead of HSIC_0.
    bandwidth : float
        RBF only: sigma as a fraction of the median pairwise distance.
    pairs : iterable of (str, str), optional
        ``(model_a, model_b)`` name pairs; default every pair of distinct models, in dict order.
    bandwidth_rule : {"kornblith", "offdiagonal"}
        RBF only: the median behind sigma (:func:`gram_matrix`); the default is the
        convention of Kornblith et al.'s reference code.

    Returns
    -------
    pandas.DataFrame
        One row per ``(model_a, model_b, module_a, module_b)`` (units) with ``cka`` and the
        settings behind it: ``estimator``, ``kernel``, ``debiased`` (the HSIC estimator
        used), ``n_examples``, ``batch_size`` (largest batch; ``n_examples`` for the full
        estimator), ``bandwidth`` (RBF only, else NaN) and ``bandwidth_rule`` (RBF only,
        else None).

    Raises
    ------
    ValueError
        For an unknown model or module name (the message lists those that exist), a
        batch too small for the minibatch estimator, or an empty loader.

    References
    ----------
    Kornblith, Norouzi, Lee & Hinton (2019), Sec. 3; Nguyen, Raghu & Kornblith (2021),
    Sec. 3.1 and Eq. 3; Neyshabur, Sedghi & Zhang (2020), Table 1.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    _check_settings(kernel, bandwidth, bandwidth_rule)
    gram = partial(_kernel_matrix, kernel=kernel, bandwidth=bandwidth, bandwidth_rule=bandwidth_rule)
    if not isinstance(models, Mapping) or not all(isinstance(model, nn.Module) for model in models.values()):
        raise TypeError("models must be a dict mapping names to torch.nn.Module instances")
    model_pairs = _resolve_pairs(models, pairs)
    used = [name for name in models if any(name in pair for pair in model_pairs)]
    partitions = _partitions(modules, models)
    hooked = {name: Partition.of(models[name], partitions[name]).outputs(models[name]) for name in used}
    unbiased = debiased or estimator == "minibatch"
    keep_features = estimator == "full"
    stores: dict[str, dict[str, Tensor]] = {name: {} for name in used}
    features: dict[str, list[list[Tensor]]] = {name: [] for name in used}  # full estimator: per batch, per module
    sums = _HSICSums(model_pairs, {name: len(hooked[name]) for name in used}, model_device(models[used[0]]), unbiased)
    n_examples = largest_batch = 0
    with ExitStack() as cleanup:
        _register_hooks(cleanup, models, hooked, stores, keep_features, gram)
        total = len(loader) if isinstance(loader, Sized) else None
        for index, batch in enumerate(progress(loader, "CKA", total=total)):
            inputs = _batch_inputs(batch, index, estimator)
            for name in used:
                models[name](_on_device_of(models[name], inputs))
            batch_values = {name: _take(stores[name], name, hooked[name]) for name in used}
            if keep_features:
                for name, values in batch_values.items():
                    features[name].append(values)
            else:
                sums.add(batch_values)
            n_examples += len(inputs)
            largest_batch = max(largest_batch, len(inputs))
    if n_examples == 0:
        raise ValueError("the loader yielded no batches")
    if keep_features:
        _check_examples(n_examples, unbiased)
        sums.add({name: [gram(torch.cat(per_module)) for per_module in zip(*features.pop(name))] for name in used})
        largest_batch = n_examples
    settings = {"estimator": estimator, "kernel": kernel, "debiased": unbiased, "n_examples": n_examples,
                "batch_size": largest_batch, "bandwidth": bandwidth if kernel == "rbf" else float("nan"),
                "bandwidth_rule": bandwidth_rule if kernel == "rbf" else None}
    return pd.DataFrame(_cka_rows(sums, model_pairs, hooked, settings))
