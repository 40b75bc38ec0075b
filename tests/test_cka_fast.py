"""The fast CKA path (issue 14): features shifted by the mean of their first examples, the Gram
product from its blocks on and below the diagonal, column chunks on CPU for large features.
Compared with an independent float64 NumPy reference written
from the formulas, with the block and chunk sizes shrunk so that every ragged edge is hit."""

import numpy as np
import pytest
import torch
from torch import nn

from transferscope.analysis import similarity
from transferscope.analysis.similarity import compare_representations, gram_matrix


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 5 rows and chunks of 7 columns: ragged last blocks and chunks everywhere."""
    monkeypatch.setattr(similarity, "GRAM_BLOCK", 5)
    monkeypatch.setattr(similarity, "CHUNK_VALUES", 1)
    monkeypatch.setattr(similarity, "MIN_CHUNK_COLUMNS", 7)


def centred_gram(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    centred = X - X.mean(axis=0)
    return centred @ centred.T


def hsic_1(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), Eq. 5."""
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def module_outputs(model: nn.Sequential, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The outputs of modules "0" (flatten, 48 values), "2" (ReLU, 9) and "3" (1 value) of
    ``model``, called one by one (no hooks), as float64 arrays."""
    with torch.no_grad():
        flat = model[0](x)
        hidden = model[2](model[1](flat))
        return {"0": flat.double().numpy(), "2": hidden.double().numpy(), "3": model[3](hidden).double().numpy()}


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 9), nn.ReLU(), nn.Linear(9, 1))


@pytest.mark.parametrize("blocks", ["default", "small"])
def test_minibatch_cka_matches_float64_numpy_reference(blocks, request):
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    generator = torch.Generator().manual_seed(0)
    x = 300 + torch.randn(70, 3, 4, 4, generator=generator)  # a large common offset: the shift must remove it
    batches = [(x[start:start + 25], torch.zeros(len(x[start:start + 25]))) for start in range(0, 70, 25)]  # 25, 25, 20
    models = {"a": mlp(0), "b": mlp(1)}
    names = ["0", "2", "3"]
    frame = compare_representations(models, batches, modules=names)

    sums = {key: 0.0 for key in [(a, b) for a in names for b in names] + [("a", m) for m in names]
            + [("b", m) for m in names]}
    for inputs, _ in batches:
        features = {model: module_outputs(models[model], inputs) for model in models}
        grams = {model: {name: centred_gram(f) for name, f in features[model].items()} for model in models}
        for a in names:
            sums[("a", a)] += hsic_1(grams["a"][a], grams["a"][a])
            sums[("b", a)] += hsic_1(grams["b"][a], grams["b"][a])
            for b in names:
                sums[(a, b)] += hsic_1(grams["a"][a], grams["b"][b])
    expected = [sums[(a, b)] / np.sqrt(sums[("a", a)] * sums[("b", b)]) for a in names for b in names]
    assert frame[["module_a", "module_b"]].values.tolist() == [[a, b] for a in names for b in names]
    assert np.abs(frame["cka"].to_numpy() - expected).max() < 1e-7
    assert np.ptp(expected) > 0.1  # the pairs differ, so a mix-up of pairs would show


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("n,d", [(5, 1), (12, 3), (23, 40), (64, 200)])
def test_gram_matrix_with_ragged_blocks_and_chunks_is_the_centred_gram(n, d):
    generator = np.random.default_rng(n)
    X = 50 + generator.normal(size=(n, d))
    expected = centred_gram(X)
    assert np.abs(gram_matrix(torch.tensor(X)).numpy() - expected).max() < 1e-9 * np.abs(expected).max()
    float32 = gram_matrix(torch.tensor(X, dtype=torch.float32)).numpy()
    assert np.abs(float32 - centred_gram(X.astype(np.float32))).max() < 1e-5 * np.abs(expected).max()


def test_batches_are_shown_with_a_progress_bar(monkeypatch):
    shown = []

    def recording_progress(items, description, *, total=None):
        shown.append((description, total))
        yield from items

    monkeypatch.setattr(similarity, "progress", recording_progress)
    x = torch.randn(40, 3, 4, 4)
    batches = [(x[:20], torch.zeros(20)), (x[20:], torch.zeros(20))]
    models = {"a": mlp(0), "b": mlp(1)}
    frame = compare_representations(models, batches, modules=["2", "3"])
    assert shown == [("CKA", 2)]
    monkeypatch.undo()
    assert frame.equals(compare_representations(models, batches, modules=["2", "3"]))


def test_cpu_forward_passes_run_channels_last_and_give_every_tensor_back():
    """On CPU the models run in channels_last memory (inputs and convolution kernels),
    and each parameter gets its own tensor back after; CKA is the float64 reference's
    from the models' NCHW features (the Gram matrix does not depend on the order of the
    features, so channels_last features are read in memory order, with no copy)."""
    from transferscope.models import build_model

    torch.manual_seed(0)
    models = {name: build_model("small_resnet", 4, width=8).eval() for name in "ab"}
    x = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    batches = [(x[:12], None), (x[12:], None)]
    convs = {name: next(module for module in model.modules() if isinstance(module, nn.Conv2d))
             for name, model in models.items()}
    kernels = {name: (conv.weight, conv.weight.data_ptr()) for name, conv in convs.items()}
    seen = []
    models["a"].layer1.register_forward_pre_hook(lambda _m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
    frame = compare_representations(models, batches, modules=["conv1", "layer1", "layer3"])
    assert seen == [True, True]
    for name, conv in convs.items():
        weight, pointer = kernels[name]
        assert conv.weight is weight and weight.data_ptr() == pointer and weight.is_contiguous()
    features = {}
    handles = [getattr(model, layer).register_forward_hook(
        lambda _m, _i, out, key=(name, layer): features.setdefault(key, []).append(out.flatten(1).double().numpy()))
        for name, model in models.items() for layer in ("conv1", "layer1", "layer3")]
    with torch.no_grad():
        for inputs, _ in batches:
            models["a"](inputs), models["b"](inputs)
    for handle in handles:
        handle.remove()
    for row in frame.itertuples():
        grams = [[centred_gram(f) for f in features[(model, layer)]]
                 for model, layer in ((row.model_a, row.module_a), (row.model_b, row.module_b))]
        cross = sum(hsic_1(K, L) for K, L in zip(*grams))
        selves = [sum(hsic_1(K, K) for K in per_batch) for per_batch in grams]
        assert abs(row.cka - cross / np.sqrt(selves[0] * selves[1])) < 1e-6


def test_the_gram_matrix_of_channels_last_features_is_that_of_their_nchw_copy():
    x = torch.relu(torch.randn(10, 6, 5, 4, generator=torch.Generator().manual_seed(2))) + 3
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    torch.testing.assert_close(gram_matrix(channels_last), gram_matrix(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gram_matrix(channels_last).numpy(), centred_gram(x.double().numpy()), rtol=1e-5,
                               atol=1e-5)
