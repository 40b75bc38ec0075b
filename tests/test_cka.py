"""CKA against float64 NumPy references written from the formulas (Kornblith et al. 2019;
Song et al. 2012; Nguyen et al. 2021), its invariances, and the contract of
compare_representations (hooks removed, models unchanged, no autograd, clear errors)."""

import copy

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

from transferscope.analysis.similarity import cka, compare_representations
from transferscope.models import build_model, modules

SETTINGS = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]


# ---------------------------------------------------------------- float64 references
def kornblith_rbf(x: np.ndarray, threshold: float) -> np.ndarray:
    """``gram_rbf`` of Kornblith et al.'s reference code (CKA.ipynb), transcribed: sigma^2 =
    threshold^2 * median of all n^2 squared distances, diagonal zeros included."""
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold ** 2 * sq_median_distance))


def gram(X: np.ndarray, kernel: str, fraction: float = 0.5, rule: str = "kornblith") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    if kernel == "linear":
        return X @ X.T
    if rule == "kornblith":
        return kornblith_rbf(X, fraction)
    sigma = fraction * np.median(pdist(X))  # "offdiagonal": the median of the n(n-1)/2 distances
    return np.exp(-cdist(X, X, "sqeuclidean") / (2 * sigma ** 2))


def hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """tr(K H L H) / (n-1)^2 (Gretton et al. 2005)."""
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), Eq. 5."""
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def reference_cka(K: np.ndarray, L: np.ndarray, debiased: bool) -> float:
    hsic = hsic_unbiased if debiased else hsic_biased
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def related_features(seed: int, n: int = 40) -> tuple[torch.Tensor, np.ndarray]:
    """X (n, 6, 3) float32 tensor and Y (n, 5) float64 array, nonlinearly related."""
    generator = np.random.default_rng(seed)
    X = generator.normal(size=(n, 6, 3))
    Y = np.tanh(X.reshape(n, -1) @ generator.normal(size=(18, 5))) + 0.3 * generator.normal(size=(n, 5))
    return torch.tensor(X, dtype=torch.float32), Y


# ---------------------------------------------------------------- cka()
@pytest.mark.parametrize("kernel,debiased", SETTINGS)
def test_cka_matches_float64_reference(kernel, debiased):
    X, Y = related_features(0)
    expected = reference_cka(gram(X.double().numpy(), kernel), gram(Y, kernel), debiased)
    value = cka(X, Y, kernel=kernel, debiased=debiased)
    assert isinstance(value, float)
    assert 0.1 < expected < 0.99
    assert value == pytest.approx(expected, abs=1e-10)


def test_rbf_bandwidth_is_a_fraction_of_the_median_distance():
    X, Y = related_features(1)
    for fraction in (0.2, 1.0):
        expected = reference_cka(gram(X.numpy(), "rbf", fraction), gram(Y, "rbf", fraction), False)
        assert cka(X, Y, kernel="rbf", bandwidth=fraction) == pytest.approx(expected, abs=1e-10)
    assert abs(cka(X, Y, kernel="rbf", bandwidth=0.2) - cka(X, Y, kernel="rbf", bandwidth=1.0)) > 1e-3


def test_rbf_bandwidth_rules_match_their_float64_references_and_differ():
    """Issue 11: the default RBF bandwidth is the reference code's (median of all n^2 squared
    distances); the median of the off-diagonal distances is the other rule. 64 points."""
    generator = np.random.default_rng(11)
    X = generator.normal(size=(64, 12))
    Y = np.tanh(X @ generator.normal(size=(12, 6))) + 0.5 * generator.normal(size=(64, 6))
    values = {}
    for rule in ("kornblith", "offdiagonal"):
        for debiased in (False, True):
            expected = reference_cka(gram(X, "rbf", 0.5, rule), gram(Y, "rbf", 0.5, rule), debiased)
            value = cka(X, Y, kernel="rbf", debiased=debiased, bandwidth_rule=rule)
            assert value == pytest.approx(expected, abs=1e-9)
        values[rule] = cka(X, Y, kernel="rbf", bandwidth_rule=rule)
    assert cka(X, Y, kernel="rbf") == values["kornblith"]  # the reference convention is the default
    assert abs(values["kornblith"] - values["offdiagonal"]) > 1e-4
    with pytest.raises(ValueError, match=r"bandwidth_rule must be one of \('kornblith', 'offdiagonal'\)"):
        cka(X, Y, kernel="rbf", bandwidth_rule="median")


@pytest.mark.parametrize("kernel,debiased", SETTINGS)
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(kernel, debiased):
    X, Y = related_features(2)
    X = X.double().flatten(1)
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(18, 18, dtype=torch.float64))
    base = cka(X, Y, kernel=kernel, debiased=debiased)
    assert cka(7.5 * X @ Q, Y, kernel=kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(X, 0.01 * Y, kernel=kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)
    stretched = X * torch.linspace(0.1, 3.0, 18, dtype=torch.float64)  # not isotropic: changes CKA
    assert abs(cka(stretched, Y, kernel=kernel, debiased=debiased) - base) > 1e-3


def test_debiased_cka_is_not_clipped_to_zero():
    generator = np.random.default_rng(3)
    X, Y = generator.normal(size=(10, 4)), generator.normal(size=(10, 4))  # independent
    expected = reference_cka(gram(X, "linear"), gram(Y, "linear"), True)
    assert expected < -0.05
    assert cka(X, Y, debiased=True) == pytest.approx(expected, abs=1e-10)


def test_cka_rejects_bad_input():
    X, Y = related_features(4)
    with pytest.raises(ValueError, match="at least 4 examples"):
        cka(X[:3], Y[:3], debiased=True)
    assert np.isfinite(cka(X[:3], Y[:3]))  # the biased estimator works with 3
    with pytest.raises(ValueError, match="same examples"):
        cka(X, Y[:-1])
    with pytest.raises(ValueError, match="kernel"):
        cka(X, Y, kernel="cosine")
    with pytest.raises(ValueError, match="one feature vector per example"):
        cka(X[:, 0, 0], Y)
    assert np.isnan(cka(np.ones((10, 3)), Y[:10]))  # a constant representation has no CKA


# ---------------------------------------------------------------- compare_representations
def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"a": build_model("small_resnet", 5, width=8), "b": build_model("small_resnet", 5, width=8)}


def tiny_batches(sizes=(32, 32, 32, 4)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(size, 3, 16, 16), torch.randint(0, 5, (size,))) for size in sizes]


@torch.no_grad()
def captured_features(model: torch.nn.Module, batches) -> dict[str, list[np.ndarray]]:
    """Per module, the float64 features of each batch, captured by the test's own hooks."""
    features: dict[str, list[np.ndarray]] = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: features.setdefault(name, []).append(
        out.flatten(1).double().numpy())) for name, module in modules(model).items()]
    model.eval()
    for x, _ in batches:
        model(x)
    for handle in handles:
        handle.remove()
    return features


def frame_matrix(frame, a: str, b: str) -> np.ndarray:
    rows = frame[(frame.model_a == a) & (frame.model_b == b)]
    matrix = rows.pivot(index="module_a", columns="module_b", values="cka")
    return matrix.loc[rows.module_a.unique(), rows.module_b.unique()].to_numpy()


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_minibatch_estimator_equals_mean_of_per_batch_unbiased_hsic(kernel):
    models, batches = tiny_models(), tiny_batches()
    frame = compare_representations(models, batches, kernel=kernel)
    ga, gb = ({layer: [gram(x, kernel) for x in batch_features] for layer, batch_features in
               captured_features(copy.deepcopy(models[name]), batches).items()} for name in ("a", "b"))
    layers = list(ga)

    def mean_hsic(grams_x, grams_y):  # Nguyen et al. (2021), Eq. 3: mean over batches of HSIC_1
        return np.mean([hsic_unbiased(K, L) for K, L in zip(grams_x, grams_y)])

    expected = np.array([[mean_hsic(ga[la], gb[lb]) / np.sqrt(mean_hsic(ga[la], ga[la]) * mean_hsic(gb[lb], gb[lb]))
                          for lb in layers] for la in layers])
    assert np.abs(frame_matrix(frame, "a", "b") - expected).max() < 1e-6
    assert np.abs(expected).max() > 0.1
    assert list(frame.columns) == ["model_a", "model_b", "module_a", "module_b", "cka", "estimator", "kernel",
                                   "debiased", "n_examples", "batch_size", "bandwidth", "bandwidth_rule"]
    assert len(frame) == 36
    assert set(frame.estimator) == {"minibatch"} and set(frame.debiased) == {True}
    assert set(frame.n_examples) == {100} and set(frame.batch_size) == {32}


@pytest.mark.parametrize("kernel,debiased", SETTINGS)
def test_full_estimator_equals_direct_formula(kernel, debiased):
    models, batches = tiny_models(), tiny_batches((40, 40, 20))
    layers = ["conv1", "layer2", "layer4", "fc"]
    frame = compare_representations(models, batches, modules=layers, estimator="full", kernel=kernel, debiased=debiased)
    fa, fb = (captured_features(copy.deepcopy(models[name]), batches) for name in ("a", "b"))
    grams_a = [gram(np.concatenate(fa[layer]), kernel) for layer in layers]
    grams_b = [gram(np.concatenate(fb[layer]), kernel) for layer in layers]
    expected = np.array([[reference_cka(K, L, debiased) for L in grams_b] for K in grams_a])
    assert np.abs(frame_matrix(frame, "a", "b") - expected).max() < 1e-6
    assert set(frame.n_examples) == {100} and set(frame.batch_size) == {100} and set(frame.debiased) == {debiased}


def test_compare_representations_passes_the_rbf_bandwidth_and_its_rule():
    models, batches = tiny_models(), tiny_batches((40, 40, 20))
    layers = ["layer2", "fc"]
    fa, fb = (captured_features(copy.deepcopy(models[name]), batches) for name in ("a", "b"))
    for rule, fraction in (("kornblith", 0.5), ("offdiagonal", 0.8)):
        frame = compare_representations(models, batches, modules=layers, estimator="full", kernel="rbf",
                                        bandwidth=fraction, bandwidth_rule=rule)
        expected = np.array([[reference_cka(gram(np.concatenate(fa[la]), "rbf", fraction, rule),
                                            gram(np.concatenate(fb[lb]), "rbf", fraction, rule), False)
                              for lb in layers] for la in layers])
        assert np.abs(frame_matrix(frame, "a", "b") - expected).max() < 1e-6
        assert set(frame.bandwidth) == {fraction} and set(frame.bandwidth_rule) == {rule}
    assert compare_representations(models, batches, modules=["fc"])["bandwidth_rule"].isna().all()  # linear kernel


@pytest.mark.parametrize("estimator,kernel", [("minibatch", "linear"), ("minibatch", "rbf"), ("full", "linear")])
def test_model_against_its_deep_copy_is_exactly_one(estimator, kernel):
    models = tiny_models()
    models["copy"] = copy.deepcopy(models["a"])
    frame = compare_representations(models, tiny_batches(), estimator=estimator, kernel=kernel,
                                    pairs=[("a", "copy"), ("a", "b")])
    same = frame[(frame.model_b == "copy") & (frame.module_a == frame.module_b)]
    assert len(same) == 6
    assert np.abs(same.cka.to_numpy() - 1.0).max() < 1e-12
    other = frame[(frame.model_b == "b") & (frame.module_a == frame.module_b)]
    assert other.cka.max() < 0.999  # a different model does not score 1


def test_batch_too_small_for_unbiased_estimator_raises():
    with pytest.raises(ValueError, match=r"batch 2 has 3 examples.*at least 4.*drop_last=True"):
        compare_representations(tiny_models(), tiny_batches((32, 32, 3)))


def test_unknown_module_or_model_name_lists_the_existing_ones():
    models = tiny_models()
    with pytest.raises(ValueError, match=r"'layer'.*conv1, layer1, layer2"):
        compare_representations(models, tiny_batches(), modules=["layer"])
    with pytest.raises(ValueError, match="'layer9'"):
        compare_representations(models, tiny_batches(), modules={"b": ["layer9"]})
    with pytest.raises(ValueError, match=r"modules= names models \['c'\], but the models are \['a', 'b'\]"):
        compare_representations(models, tiny_batches(), modules={"a": ["fc"], "c": ["fc"]})
    assert all(not module._forward_hooks for model in models.values() for module in model.modules())


def test_pairs_and_modules_select_the_rows():
    models = tiny_models()

    class Broken(torch.nn.Module):
        def forward(self, _x):
            raise AssertionError("a model in no pair must not run")

    models["unused"] = Broken()
    frame = compare_representations(models, tiny_batches(), modules={"a": ["conv1", "layer4"], "b": ["fc"]},
                                    pairs=[("b", "a"), ("a", "a")])
    assert list(zip(frame.model_a, frame.model_b, frame.module_a, frame.module_b)) == [
        ("b", "a", "fc", "conv1"), ("b", "a", "fc", "layer4"),
        ("a", "a", "conv1", "conv1"), ("a", "a", "conv1", "layer4"),
        ("a", "a", "layer4", "conv1"), ("a", "a", "layer4", "layer4")]
    self_rows = frame[(frame.model_a == "a") & (frame.module_a == frame.module_b)]
    assert np.abs(self_rows.cka.to_numpy() - 1.0).max() < 1e-12
    three = compare_representations({**tiny_models(), "c": build_model("small_resnet", 5, width=8)}, tiny_batches())
    assert list(dict.fromkeys(zip(three.model_a, three.model_b))) == [("a", "b"), ("a", "c"), ("b", "c")]
    with pytest.raises(ValueError, match="at least two models"):
        compare_representations({"a": models["a"]}, tiny_batches())
    with pytest.raises(ValueError, match="each pair must name two of the models"):
        compare_representations(models, tiny_batches(), pairs=[("a", "z")])


def test_hooked_module_must_run_once_per_forward():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.unused, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.block(self.block(x)))

    torch.manual_seed(0)
    models = {"a": Shared(), "b": Shared()}
    batches = [torch.randn(8, 4)]
    assert len(compare_representations(models, batches, modules=["head"])) == 1  # bare-tensor batches work
    with pytest.raises(RuntimeError, match="'block' of model 'a' ran more than once"):
        compare_representations(models, batches, modules=["block"])
    with pytest.raises(RuntimeError, match=r"\['unused'\] of model 'a' did not run"):
        compare_representations(models, batches, modules=["unused"], estimator="full")
    assert all(not m._forward_hooks for model in models.values() for m in model.modules())


def broken_loader(batches):
    yield from batches[:2]
    raise RuntimeError("loader failed mid-way")


@pytest.mark.parametrize("outcome", ["success", "error mid-loader"])
def test_hooks_removed_and_models_unchanged(outcome):
    models = tiny_models()
    models["a"].train()
    models["a"].layer2.eval()  # mixed modes must come back exactly
    models["b"].eval()
    modes = {name: [m.training for m in model.modules()] for name, model in models.items()}
    states = {name: copy.deepcopy(model.state_dict()) for name, model in models.items()}
    if outcome == "success":
        compare_representations(models, tiny_batches(), estimator="full")
        compare_representations(models, tiny_batches())
    else:
        with pytest.raises(RuntimeError, match="loader failed"):
            compare_representations(models, broken_loader(tiny_batches()))
    for name, model in models.items():
        assert [m.training for m in model.modules()] == modes[name]
        assert all(not m._forward_hooks for m in model.modules())
        state = model.state_dict()
        assert all(torch.equal(state[key], value) for key, value in states[name].items())  # BN stats too
        assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_features_do_not_require_grad():
    models = tiny_models()
    seen = []
    probe = models["a"].layer3.register_forward_hook(
        lambda _m, _i, out: seen.append((out.requires_grad, out.grad_fn is None, torch.is_grad_enabled())))
    try:
        compare_representations(models, tiny_batches())
    finally:
        probe.remove()
    assert seen == [(False, True, False)] * 4


def test_settings_are_keyword_only():
    X, Y = related_features(0)
    with pytest.raises(TypeError):
        cka(X, Y, "rbf")
    with pytest.raises(TypeError):
        compare_representations(tiny_models(), tiny_batches(), ["fc"])


def test_module_helpers_are_reachable_beside_the_function_of_the_same_name():
    """``transferscope.analysis.cka`` is the function; the module's helpers are reached by
    the module's own name (issue 12: no module shadowed by a function)."""
    import transferscope.analysis as analysis
    import transferscope.analysis.mistake_overlap as mistake_overlap
    import transferscope.analysis.similarity as similarity
    import transferscope.analysis.spectra as spectra

    assert analysis.cka is similarity.cka and callable(analysis.cka)
    X = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(similarity.gram_matrix(X), (X - X.mean(0)) @ (X - X.mean(0)).T)
    assert analysis.mistakes is mistake_overlap.mistakes and analysis.spectrum is spectra.spectrum
