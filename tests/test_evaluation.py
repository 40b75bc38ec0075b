"""Shared evaluation: metrics against float64 NumPy references written from the
definitions, mode restoration, BatchNorm recalibration against statistics computed by
hand, and cached evaluation subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from transferscope.evaluation import (
    cache_batches,
    eval_mode,
    evaluate,
    has_batchnorm,
    loss_fn,
    metrics,
    model_device,
    per_label_auc,
    predict,
    recalibrate_batchnorm,
    roc_auc,
    score_metric,
    score_name,
)


def auc_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted 1/2, over all pairs."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    diff = positives[:, None] - negatives[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def bce_reference(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples and labels of -[y log s(z) + (1-y) log(1-s(z))], s the sigmoid."""
    log_p = -np.logaddexp(0.0, -logits)  # log s(z)
    log_not_p = -np.logaddexp(0.0, logits)  # log(1 - s(z))
    return float(-(labels * log_p + (1 - labels) * log_not_p).mean())


def test_multiclass_metrics_match_numpy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 5, generator=generator) * 3
    targets = torch.randint(0, 5, (300,), generator=generator)
    z, y = logits.double().numpy(), targets.numpy()
    log_softmax = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    out = metrics(logits, targets)
    assert out["n"] == 300
    assert out["accuracy"] == pytest.approx(np.mean(z.argmax(1) == y), abs=1e-12)
    assert out["loss"] == pytest.approx(-log_softmax[np.arange(300), y].mean(), rel=1e-6)
    per_example = loss_fn(logits, targets, reduction="none")
    np.testing.assert_allclose(per_example.double().numpy(), -log_softmax[np.arange(300), y], rtol=1e-5, atol=1e-6)
    assert score_name(targets) == "accuracy"


@pytest.mark.parametrize("decimals", [None, 1, 0])  # continuous scores, some ties, many ties
def test_roc_auc_matches_the_pairwise_definition(decimals):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    assert roc_auc(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)) == pytest.approx(
        auc_reference(scores.astype(np.float32).astype(np.float64), labels), abs=1e-12)


def test_roc_auc_known_values():
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert np.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_per_label_auc_ranks_every_column_on_its_own():
    """All columns are ranked in one call (the bootstrap's fast path): each column's AUC is
    still its own pairwise AUC, ties included, and a one-class column is NaN."""
    rng = np.random.default_rng(3)
    labels = (rng.random((120, 4)) < 0.3).astype(np.float32)
    labels[:, 2] = 0.0  # no positives: undefined
    scores = np.round(rng.normal(size=(120, 4)) + labels, 1).astype(np.float32)  # ties within columns
    aucs = per_label_auc(torch.tensor(scores), torch.tensor(labels))
    assert np.isnan(aucs[2])
    for j in (0, 1, 3):
        assert aucs[j] == pytest.approx(auc_reference(scores[:, j].astype(np.float64), labels[:, j]), abs=1e-12)


def test_multilabel_metrics_match_numpy():
    rng = np.random.default_rng(2)
    labels = (rng.random((150, 4)) < 0.4).astype(np.float32)
    labels[:, 3] = 0  # a label with no positive: its AUC is undefined and left out of the mean
    logits = (rng.normal(size=(150, 4)) + 1.5 * labels).astype(np.float32)
    logits[:, 1] = np.round(logits[:, 1])  # ties
    out = metrics(torch.tensor(logits), torch.tensor(labels))
    assert set(out) == {"loss", "auc", "n"} and out["n"] == 150
    z, y = logits.astype(np.float64), labels.astype(np.float64)
    assert out["loss"] == pytest.approx(bce_reference(z, y), rel=1e-6)
    assert out["auc"] == pytest.approx(np.mean([auc_reference(z[:, j], y[:, j]) for j in range(3)]), abs=1e-12)
    per_example = loss_fn(torch.tensor(logits), torch.tensor(labels), reduction="none")
    assert per_example.shape == (150,)
    assert per_example.double().mean().item() == pytest.approx(out["loss"], rel=1e-6)
    assert score_name(torch.tensor(labels)) == "auc"
    assert np.isnan(metrics(torch.tensor(logits[:, 3:]), torch.tensor(labels[:, 3:]))["auc"])


def test_score_metric_reads_back_the_name_score_name_gave():
    """The metric of a metrics dict or table is read from its score column; a table that
    gathers both kinds of task takes the column holding values; anything else is a
    ValueError naming the columns."""
    assert score_metric(metrics(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))) == "accuracy"
    assert score_metric({"loss": 1.0, "auc": float("nan")}) == "auc"  # a diverged model still has its metric
    mixed = pd.DataFrame({"test_accuracy": [float("nan")] * 2, "test_auc": [0.7, 0.8], "train_clean_auc": [0.9, 1]})
    assert score_metric(mixed, "test_") == "auc" and score_metric(mixed, "train_clean_") == "auc"
    with pytest.raises(ValueError, match=r"test_accuracy or test_auc: the columns are \['loss'\]"):
        score_metric(pd.DataFrame({"loss": [1.0]}), "test_")
    with pytest.raises(ValueError, match="both hold values"):
        score_metric(mixed.assign(test_accuracy=0.5), "test_")


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.bn(self.conv(x)).mean((2, 3))))


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def test_eval_mode_restores_every_submodule():
    model = Mixed()
    model.train()
    model.bn.eval()  # a frozen BN inside a training model
    before = modes(model)
    with eval_mode(model):
        assert not any(modes(model).values())
    assert modes(model) == before
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            raise RuntimeError("inside")
    assert modes(model) == before


def test_predict_and_evaluate_over_batches():
    torch.manual_seed(0)
    model = Mixed().train()
    x = torch.randn(70, 3, 8, 8)
    y = torch.randint(0, 3, (70,))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 70, 32)]
    logits, targets = predict(model, batches)
    assert model.training and model.drop.training  # mode restored
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    assert torch.allclose(logits, expected, atol=1e-5) and torch.equal(targets, y)
    assert not logits.requires_grad
    assert evaluate(model, batches) == metrics(logits, targets)
    assert model_device(model) == torch.device("cpu")


class SingleNorm(nn.Module):
    """conv -> BN -> head: the BN inputs are conv(x), computed by hand in the test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.bn(self.conv(x)).mean((2, 3))))


def bn_inputs(model: SingleNorm, x: torch.Tensor) -> np.ndarray:
    """conv(x) in float64 as (channels, values)."""
    out = F.conv2d(x.double(), model.conv.weight.detach().double(), model.conv.bias.detach().double())
    return out.transpose(0, 1).reshape(out.shape[1], -1).numpy()


def recalibration_setup():
    torch.manual_seed(0)
    model = SingleNorm()
    model.eval()
    model.bn.momentum = 0.3
    x = torch.randn(96, 3, 10, 10) * 2 + 1
    return model, x


def test_recalibration_is_exact_for_one_batch():
    model, x = recalibration_setup()
    params = {k: v.clone() for k, v in model.named_parameters()}
    out = recalibrate_batchnorm(model, [(x, None)])
    assert out is model
    values = bn_inputs(model, x)
    np.testing.assert_allclose(model.bn.running_mean.double().numpy(), values.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn.running_var.double().numpy(), values.var(1, ddof=1), rtol=1e-5)
    assert model.bn.momentum == 0.3 and not model.training and not model.bn.training
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())


def test_recalibration_averages_equal_batches_and_respects_max_batches():
    model, x = recalibration_setup()
    chunks = x.split(24)  # 4 equal batches
    recalibrate_batchnorm(model, [(c, None) for c in chunks])
    values = bn_inputs(model, x)
    np.testing.assert_allclose(model.bn.running_mean.double().numpy(), values.mean(1), rtol=1e-5, atol=1e-6)
    # momentum=None: the running variance is the average of the per-batch unbiased variances
    per_batch = np.mean([bn_inputs(model, c).var(1, ddof=1) for c in chunks], axis=0)
    np.testing.assert_allclose(model.bn.running_var.double().numpy(), per_batch, rtol=1e-5)

    recalibrate_batchnorm(model, [(c, None) for c in chunks], max_batches=1)
    first = bn_inputs(model, chunks[0])
    np.testing.assert_allclose(model.bn.running_mean.double().numpy(), first.mean(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(model, [])


def test_recalibration_without_batchnorm_changes_nothing():
    model = nn.Sequential(nn.Linear(3, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not has_batchnorm(model) and has_batchnorm(SingleNorm())
    recalibrate_batchnorm(model, [(torch.randn(4, 3), None)])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def counted(batches: list, counter: list):
    for batch in batches:
        counter.append(1)
        yield batch


@pytest.mark.parametrize("limit, sizes, consumed", [(70, [32, 32, 6], 3), (64, [32, 32], 2), (None, [32, 32, 32, 4], 4),
                                                    (1000, [32, 32, 32, 4], 4)])
def test_cache_batches_limit(limit, sizes, consumed):
    x = torch.arange(100.0).view(100, 1)
    y = torch.arange(100)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 100, 32)]
    counter: list = []
    cached = cache_batches(counted(batches, counter), limit)
    assert [len(b[0]) for b in cached] == sizes
    assert len(counter) == consumed  # stops reading the loader once it has enough
    total = sum(sizes)
    assert torch.equal(torch.cat([b[0] for b in cached]), x[:total])
    assert torch.equal(torch.cat([b[1] for b in cached]), y[:total])
    with pytest.raises(ValueError, match="no examples"):
        cache_batches([])


@pytest.mark.parametrize("targets, message", [
    (torch.tensor([0, 1, 5, 2]), r"labels run from 0 to 5, but the model has 5 outputs .*num_classes"),
    (torch.tensor([0, -1, 2, 2]), r"labels run from -1 to 2"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), r"class-index targets must be int64, got torch.float32: convert them with .long\(\)"),
    (torch.ones(4, 3), r"the targets have 3 labels but the model has 5 outputs: build the model with num_classes=3"),
    (torch.full((4, 5), 0.5), r"multi-label targets must be 0 or 1, got 0.5"),
    (torch.zeros(4, 5, 1), r"targets must be int64 \(N,\) class indices or float \(N, L\) 0/1 labels"),
    (torch.zeros(3, dtype=torch.long), r"3 targets for 4 outputs"),
])
def test_targets_that_do_not_fit_the_outputs_are_errors(targets, message):
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match=message):
        metrics(logits, targets)
    model = nn.Linear(2, 5)
    with pytest.raises(ValueError, match=message):
        evaluate(model, [(torch.randn(4, 2), targets)])


def test_targets_that_fit_pass_the_check():
    logits = torch.randn(4, 5)
    assert metrics(logits, torch.tensor([0, 4, 2, 1]))["n"] == 4
    assert "auc" in metrics(logits, torch.tensor([[0, 1, 1, 0, 1]] * 2 + [[1, 0, 0, 1, 0]] * 2).float())
