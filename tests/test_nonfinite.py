"""NaN or inf outputs never pass for a score: a model with non-finite weights is an
error naming it in evaluate, mistakes, rewind, interpolation and the basin test; far
along an interpolation path a non-finite loss is reported as NaN with a warning."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from transferscope.analysis.basins import basin
from transferscope.analysis.interpolation import interpolate
from transferscope.analysis.mistake_overlap import mistakes
from transferscope.analysis.rewinding import rewind
from transferscope.evaluation import evaluate, metrics, predict
from transferscope.models import build_model


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))


def _batches(n: int = 40, classes: int = 5) -> list:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 2, 2, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def _poisoned(model: nn.Module, name: str = "3.weight") -> nn.Module:
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.state_dict()[name].fill_(float("nan"))
    return broken


def test_metrics_of_nan_logits_are_nan_not_class_zero():
    logits = torch.full((5, 5), float("nan"))
    targets = torch.zeros(5, dtype=torch.long)  # argmax of NaN is 0: every "prediction" would be right
    out = metrics(logits, targets)
    assert math.isnan(out["loss"]) and math.isnan(out["accuracy"]) and out["n"] == 5
    labels = torch.ones(5, 5)
    assert math.isnan(metrics(logits.clone().fill_(float("inf")), labels)["auc"])


def test_evaluate_and_predict_name_a_model_with_nan_weights():
    broken = _poisoned(_mlp(0))
    with pytest.raises(ValueError, match=r"the model \(Sequential\) gives NaN or inf outputs.*'3\.weight'.*retrain"):
        evaluate(broken, _batches())
    with pytest.raises(ValueError, match="^run P gives NaN or inf outputs"):
        predict(broken, _batches(), name="run P")
    logits, _ = predict(broken, _batches(), allow_nonfinite=True)
    assert torch.isnan(logits).all()


def test_finite_weights_overflowing_to_inf_name_the_inputs():
    model = _mlp(0)
    x, y = _batches()[0]
    with pytest.raises(ValueError, match="gives NaN or inf outputs.*check its weights and the inputs"):
        evaluate(model, [(x * 1e38, y)])


def test_mistakes_names_the_model_with_nan_outputs():
    good, broken = _mlp(0), _poisoned(_mlp(1))
    with pytest.raises(ValueError, match="^model 'pretrained' gives NaN or inf outputs"):
        mistakes({"scratch": good, "pretrained": broken}, _batches(), n_bootstrap=10)


def test_rewind_names_the_broken_model():
    torch.manual_seed(0)
    model = build_model("small_resnet", 5, width=4).eval()
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,)))]
    with pytest.raises(ValueError, match="^the trained model gives NaN"):
        rewind(_poisoned(model, "fc.weight"), model, batches)
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    initial["layer2.0.conv1.weight"].fill_(float("inf"))
    with pytest.raises(ValueError, match="^the model with 'layer2' rewound \\(bn='follow'\\) gives NaN"):
        rewind(model, initial, batches, modules=["layer1", "layer2"])


@pytest.mark.parametrize("batched", [False, True])
def test_interpolation_rejects_nan_endpoints_and_reports_nan_far_outside(batched):
    a, b = _mlp(0), _mlp(1)
    with pytest.raises(ValueError, match="^model_b gives NaN or inf outputs.*'3.weight'"):
        interpolate(a, _poisoned(b), _batches(), alphas=[0.0, 0.5, 1.0], batched=batched)
    with pytest.warns(RuntimeWarning, match=r"at α in \[1e\+20\] .*NaN or inf"):
        frame = interpolate(a, b, _batches(), alphas=[0.0, 1.0, 1e20], batched=batched)
    far = frame.set_index("alpha").loc[1e20]
    assert np.isnan(far["loss"]) and np.isnan(far["score"])
    assert np.isfinite(frame["score"].iloc[:2]).all()


def test_basin_rejects_nan_endpoints():
    with pytest.raises(ValueError, match="^model_a gives NaN or inf outputs"):
        basin(_poisoned(_mlp(0)), _mlp(1), _batches(), n_noise=1, n_segment=3)
