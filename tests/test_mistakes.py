import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferscope.analysis.mistake_overlap import mistake_examples, mistakes
from transferscope.models import build_model


class Readout(nn.Module):
    """Returns logits stored in its inputs: x[:, channel, 0, :] (lets a test design the mistakes)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x[:, self.channel, 0, :]


def _one_hot_logits(predictions: np.ndarray, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(predictions), n_classes).float()


def _designed(n_common, n_only_a, n_only_b, n_right, n_classes=4, batch_size=37):
    """Loader whose inputs make Readout(0) and Readout(1) err on exactly the given counts."""
    wrong_a = np.repeat([1, 1, 0, 0], [n_common, n_only_a, n_only_b, n_right]).astype(bool)
    wrong_b = np.repeat([1, 0, 1, 0], [n_common, n_only_a, n_only_b, n_right]).astype(bool)
    order = np.random.default_rng(0).permutation(len(wrong_a))
    wrong_a, wrong_b = wrong_a[order], wrong_b[order]
    targets = np.random.default_rng(1).integers(0, n_classes, len(wrong_a))
    pred_a = np.where(wrong_a, (targets + 1) % n_classes, targets)
    pred_b = np.where(wrong_b, (targets + 2) % n_classes, targets)
    x = torch.stack([_one_hot_logits(pred_a, n_classes), _one_hot_logits(pred_b, n_classes)], 1)[:, :, None, :]
    y = torch.as_tensor(targets)
    loader = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    return {"a": Readout(0), "b": Readout(1)}, loader, wrong_a, wrong_b


def _mcnemar_by_hand(b: int, c: int) -> float:
    n = b + c
    if n < 25:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
        return min(1.0, 2 * tail)
    statistic = (abs(b - c) - 1) ** 2 / n
    return math.erfc(math.sqrt(statistic / 2))  # survival function of chi-square with 1 df


@pytest.mark.parametrize("counts, method", [((40, 3, 10, 147), "exact-binomial"), ((25, 30, 12, 133), "chi-square-cc")])
def test_counts_and_mcnemar_against_hand_computation(counts, method):
    models, loader, wrong_a, wrong_b = _designed(*counts)
    row = mistakes(models, loader, n_bootstrap=200).iloc[0]
    n = len(wrong_a)
    assert (row["common"], row["only_a"], row["only_b"], row["both_right"]) == counts
    assert row["common_fraction"] == pytest.approx(np.mean(wrong_a & wrong_b))
    assert row["uncommon_fraction"] == pytest.approx(np.mean(wrong_a ^ wrong_b))
    assert row["error_a"] == pytest.approx(wrong_a.mean()) and row["error_b"] == pytest.approx(wrong_b.mean())
    assert row["n_units"] == n and row["unit"] == "example" and row["threshold"] == "argmax"
    assert row["mcnemar_method"] == method
    assert row["mcnemar_p"] == pytest.approx(_mcnemar_by_hand(counts[1], counts[2]), rel=1e-9)


def test_no_discordant_pair_gives_p_one():
    models, loader, _, _ = _designed(10, 0, 0, 30)
    row = mistakes(models, loader, n_bootstrap=100).iloc[0]
    assert row["mcnemar_p"] == 1.0 and row["uncommon"] == 0
    assert row["uncommon_ci_low"] == 0 and row["uncommon_ci_high"] == 0


def test_bootstrap_interval_contains_estimate_is_seeded_and_has_binomial_width():
    models, loader, _, _ = _designed(120, 40, 30, 210)  # n = 400
    first = mistakes(models, loader, n_bootstrap=2000, seed=3)
    again = mistakes(models, loader, n_bootstrap=2000, seed=3)
    other = mistakes(models, loader, n_bootstrap=2000, seed=4)
    columns = ["common_ci_low", "common_ci_high", "uncommon_ci_low", "uncommon_ci_high"]
    np.testing.assert_array_equal(first[columns], again[columns])
    assert not np.array_equal(first[columns], other[columns])
    row = first.iloc[0]
    for kind in ("common", "uncommon"):
        p = row[f"{kind}_fraction"]
        assert row[f"{kind}_ci_low"] < p < row[f"{kind}_ci_high"]
        # percentile bootstrap of a proportion ~ normal interval p ± 1.96 sqrt(p(1-p)/n)
        half_width = 1.959964 * math.sqrt(p * (1 - p) / 400)
        assert row[f"{kind}_ci_high"] - row[f"{kind}_ci_low"] == pytest.approx(2 * half_width, rel=0.15)
    assert (row["n_bootstrap"], row["seed"], row["confidence"]) == (2000, 3, 0.95)


def test_multilabel_example_label_units_with_per_label_threshold():
    torch.manual_seed(0)
    n, labels = 90, 3
    logits_a, logits_b = torch.randn(n, labels), torch.randn(n, labels)
    targets = (torch.rand(n, labels) < 0.4).float()
    x = torch.stack([logits_a, logits_b], 1)[:, :, None, :]
    loader = [(x[i:i + 32], targets[i:i + 32]) for i in range(0, n, 32)]
    threshold = [0.3, 0.5, 0.7]
    row = mistakes({"a": Readout(0), "b": Readout(1)}, loader, threshold=threshold, n_bootstrap=200).iloc[0]

    def wrong(logits):  # float64 NumPy reference
        probability = 1 / (1 + np.exp(-logits.double().numpy()))
        return (probability >= np.array(threshold)) != targets.numpy().astype(bool)

    wa, wb = wrong(logits_a), wrong(logits_b)
    assert row["unit"] == "example-label" and row["n_units"] == n * labels and row["n_examples"] == n
    assert row["common"] == (wa & wb).sum() and row["only_a"] == (wa & ~wb).sum() and row["only_b"] == (~wa & wb).sum()
    assert row["threshold"] == "0.3,0.5,0.7"
    assert row["common_ci_low"] <= row["common_fraction"] <= row["common_ci_high"]
    # a different per-label threshold changes the count
    other = mistakes({"a": Readout(0), "b": Readout(1)}, loader, threshold=0.5, n_bootstrap=50).iloc[0]
    wa5 = (1 / (1 + np.exp(-logits_a.double().numpy())) >= 0.5) != targets.numpy().astype(bool)
    assert other["error_a"] == pytest.approx(wa5.mean()) and other["threshold"] == "0.5"


def _small_models():
    models = {}
    for name, seed in (("P-T:s0", 0), ("P-T:s1", 1), ("RI-T:s0", 2)):
        torch.manual_seed(seed)
        models[name] = build_model("small_resnet", 5, width=8)
    torch.manual_seed(10)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 5, (64,))
    return models, x, y


def test_real_models_match_reference_pairs_and_are_unchanged():
    models, x, y = _small_models()
    models["P-T:s0"].train()
    models["P-T:s1"].eval()
    before = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 64, 32)]
    frame = mistakes(models, loader, n_bootstrap=100)
    assert list(zip(frame.model_a, frame.model_b)) == [("P-T:s0", "P-T:s1"), ("P-T:s0", "RI-T:s0"),
                                                       ("P-T:s1", "RI-T:s0")]
    with torch.no_grad():
        wrong = {name: (m.eval()(x).argmax(1) != y).numpy() for name, m in copy.deepcopy(models).items()}
    for row in frame.itertuples():
        assert row.common == (wrong[row.model_a] & wrong[row.model_b]).sum()
        assert row.only_b == (~wrong[row.model_a] & wrong[row.model_b]).sum()
    for name, model in models.items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[name][key]), key
    assert models["P-T:s0"].training and all(m.training for m in models["P-T:s0"].modules())
    assert not any(m.training for m in models["P-T:s1"].modules())
    chosen = mistakes(models, loader, pairs=[("RI-T:s0", "P-T:s1")], n_bootstrap=50)
    assert list(zip(chosen.model_a, chosen.model_b)) == [("RI-T:s0", "P-T:s1")]


def test_shuffling_loader_gives_the_same_table():
    models, x, y = _small_models()
    fixed = mistakes(models, [(x, y)], n_bootstrap=50)
    shuffled = mistakes(models, DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True), n_bootstrap=50)
    columns = ["common", "only_a", "only_b", "both_right"]
    np.testing.assert_array_equal(fixed[columns], shuffled[columns])


def test_mistake_examples_in_loader_order():
    models, loader, wrong_a, wrong_b = _designed(20, 6, 9, 65)
    masks = {"common": wrong_a & wrong_b, "only_a": wrong_a & ~wrong_b, "only_b": ~wrong_a & wrong_b}
    everything = mistake_examples(models, loader, "a", "b", limit=None)
    first = mistake_examples(models, loader, "a", "b", limit=4)
    assert set(everything) == set(first) == set(masks)
    for category, mask in masks.items():
        expected = np.flatnonzero(mask).tolist()
        assert everything[category] == expected
        assert first[category] == expected[:4]


def test_clear_errors():
    models, loader, _, _ = _designed(5, 5, 5, 5)
    with pytest.raises(ValueError, match="no model named 'c'; the models are: a, b; name pairs by the keys"):
        mistakes(models, loader, pairs=[("a", "c")])
    with pytest.raises(ValueError, match="no model named 'z'"):
        mistake_examples(models, loader, "a", "z")
    with pytest.raises(TypeError):
        mistakes(models, loader, [("a", "b")])  # settings are keyword-only
    with pytest.raises(ValueError, match="got 1 model"):
        mistakes({"a": models["a"]}, loader)
    with pytest.raises(ValueError, match="per-label threshold applies to multi-label targets only"):
        mistakes(models, loader, threshold=[0.5, 0.5])
    with pytest.raises(ValueError, match="limit must be a non-negative count"):
        mistake_examples(models, loader, "a", "b", limit=-1)
    with pytest.raises(ValueError, match="confidence must lie in"):
        mistakes(models, loader, confidence=95)
    with pytest.raises(ValueError, match="yielded no examples"):
        mistakes(models, [])
    targets = torch.zeros(8, 3)
    x = torch.zeros(8, 2, 1, 3)
    with pytest.raises(ValueError, match="threshold has 2 values but the targets have 3 labels"):
        mistakes(models, [(x, targets)], threshold=[0.5, 0.5])


def test_labels_outside_the_models_classes_are_an_error():
    models, loader, _, _ = _designed(5, 5, 5, 5, n_classes=4)
    x, y = loader[0]
    with pytest.raises(ValueError, match="labels run from 0 to 7, but the model has 4 outputs"):
        mistakes(models, [(x, torch.where(y == 3, 7, y))], n_bootstrap=10)
    with pytest.raises(ValueError, match="the targets have 3 labels but the model has 4 outputs"):
        mistakes(models, [(x, torch.ones(len(y), 3))], n_bootstrap=10)
