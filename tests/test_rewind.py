import copy

import numpy as np
import pytest
import torch

from transferscope.analysis.rewinding import rewind
from transferscope.evaluation import recalibrate_batchnorm
from transferscope.models import build_model, module_state_keys


def _data(n=48, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def _trained_bn(model, batches):
    """Move the BatchNorm running statistics away from their initial values."""
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x * 2 + 1)
    return model.eval()


@pytest.fixture
def models():
    torch.manual_seed(0)
    initial = build_model("small_resnet", 4, width=8)
    final = copy.deepcopy(initial)
    with torch.no_grad():
        for param in final.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return _trained_bn(final, _data(seed=1)), initial


def _reference_metrics(model, batches):
    """Float64 NumPy cross-entropy and accuracy from the model's logits."""
    with torch.no_grad():
        logits = np.concatenate([model.eval()(x).double().numpy() for x, _ in batches])
    y = np.concatenate([t.numpy() for _, t in batches])
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -log_probs[np.arange(len(y)), y].mean(), (logits.argmax(1) == y).mean()


def test_rewinding_to_own_weights_changes_nothing(models):
    final, _ = models
    batches = _data()
    for bn in ("follow", "keep"):
        frame = rewind(final, final.state_dict(), {"test": batches}, bn=bn)
        assert (frame["loss"] == frame["base_loss"]).all()
        assert (frame["score"] == frame["base_score"]).all()
        assert (frame["bn"] == bn).all() and (frame["metric"] == "accuracy").all()
    assert list(frame["module"]) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]


def test_rewound_metrics_match_independent_reference(models):
    final, initial = models
    batches = _data()
    frame = rewind(final, initial, {"train": _data(seed=3), "test": batches})
    assert set(frame["split"]) == {"train", "test"} and len(frame) == 12
    keys = module_state_keys(final)
    for module in ("conv1", "layer3", "fc"):
        manual = copy.deepcopy(final)
        state = manual.state_dict()
        for key in keys[module]:
            state[key].copy_(initial.state_dict()[key])
        loss, accuracy = _reference_metrics(manual, batches)
        row = frame[(frame["module"] == module) & (frame["split"] == "test")].iloc[0]
        assert row["loss"] == pytest.approx(loss, rel=1e-5)
        assert row["score"] == pytest.approx(accuracy, abs=1e-12)
    base_loss, base_accuracy = _reference_metrics(final, batches)
    test_rows = frame[frame["split"] == "test"]
    assert np.allclose(test_rows["base_loss"], base_loss, rtol=1e-5)
    assert np.allclose(test_rows["base_score"], base_accuracy, rtol=0, atol=1e-12)
    assert (frame["loss"] != frame["base_loss"]).any()


def test_bn_modes_differ_when_statistics_differ(models):
    final, _ = models
    batches = _data()
    # same parameters as the trained model, BatchNorm statistics of a fresh model
    initial = copy.deepcopy(final)
    for module in initial.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
    keep = rewind(final, initial, batches, bn="keep")
    assert (keep["loss"] == keep["base_loss"]).all()  # only statistics differ, and they are kept
    rewound = rewind(final, initial, batches, bn="follow")
    with_bn = rewound["module"] != "fc"
    assert (rewound.loc[with_bn, "loss"] != rewound.loc[with_bn, "base_loss"]).all()
    assert (rewound.loc[~with_bn, "loss"] == rewound.loc[~with_bn, "base_loss"]).all()  # fc has no BatchNorm

    recalibration = _data(seed=5)
    recalibrated = rewind(final, initial, batches, bn="recalibrate", recalibration_loader=recalibration)
    assert (recalibrated["bn"] == "recalibrate").all()
    manual = recalibrate_batchnorm(copy.deepcopy(final), recalibration)
    loss, _ = _reference_metrics(manual, batches)  # same parameters: every module gives this network
    assert np.allclose(recalibrated["loss"], loss, rtol=1e-5)
    assert not np.allclose(recalibrated["loss"], rewound["loss"])


def test_recalibration_batches_are_read_once_from_a_one_shot_iterator(models):
    """The recalibration data are cached once for every module: a generator, which
    can be read only once, serves all six modules (it ran dry after the first)."""
    final, initial = models
    batches, recalibration = _data(), _data(n=64, seed=5)
    from_list = rewind(final, initial, batches, bn="recalibrate", recalibration_loader=recalibration)
    one_shot = rewind(final, initial, batches, bn="recalibrate", recalibration_loader=(b for b in recalibration))
    assert len(one_shot) == 6
    assert one_shot["loss"].tolist() == from_list["loss"].tolist()
    assert from_list["recalibration_batches"].isna().all()
    first_two = rewind(final, initial, batches, modules=["layer1"], bn="recalibrate",
                       recalibration_loader=(b for b in recalibration), recalibration_batches=2)
    manual = copy.deepcopy(final)
    state = manual.state_dict()
    for key in module_state_keys(final, ["layer1"])["layer1"]:
        state[key].copy_(initial.state_dict()[key])
    loss, _ = _reference_metrics(recalibrate_batchnorm(manual, recalibration[:2]), batches)
    assert first_two["loss"].iloc[0] == pytest.approx(loss, rel=1e-5)
    assert first_two["recalibration_batches"].iloc[0] == 2


def test_auto_recalibrates_only_with_recalibration_data(models):
    final, initial = models
    batches, recalibration = _data(), _data(seed=5)
    assert set(rewind(final, initial, batches, bn="auto")["bn"]) == {"follow"}
    auto = rewind(final, initial, batches, bn="auto", recalibration_loader=recalibration)
    explicit = rewind(final, initial, batches, bn="recalibrate", recalibration_loader=recalibration)
    assert set(auto["bn"]) == {"recalibrate"} and auto["loss"].tolist() == explicit["loss"].tolist()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    assert set(rewind(mlp, copy.deepcopy(mlp), batches, bn="auto", recalibration_loader=recalibration)["bn"]) == {
        "follow"}
    with pytest.raises(ValueError, match="no BatchNorm.*bn='auto' or 'follow'"):
        rewind(mlp, copy.deepcopy(mlp), batches, bn="keep")


def test_keep_rewinds_parameters_but_not_statistics(models):
    final, initial = models
    batches = _data()
    frame = rewind(final, initial, batches, modules=["layer2"], bn="keep")
    manual = copy.deepcopy(final)
    buffers = {name for name, _ in manual.named_buffers()}
    state = manual.state_dict()
    for key in module_state_keys(final, ["layer2"])["layer2"]:
        if key not in buffers:
            state[key].copy_(initial.state_dict()[key])
    loss, _ = _reference_metrics(manual, batches)
    assert frame["loss"].iloc[0] == pytest.approx(loss, rel=1e-5)


def test_multilabel_targets_report_auc(models):
    final, initial = models
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 16, 16, generator=generator)
    y = (torch.rand(40, 4, generator=generator) > 0.5).float()
    frame = rewind(final, initial, [(x, y)], max_examples=32)
    assert (frame["metric"] == "auc").all() and not {"auc", "accuracy", "n"} & set(frame.columns)
    assert (frame["n_examples"] == 32).all() and (frame["max_examples"] == 32).all()
    assert frame["score"].between(0, 1).all() and frame["base_score"].between(0, 1).all()


def test_model_is_not_mutated(models):
    final, initial = models
    final.train()
    before = copy.deepcopy(final.state_dict())
    rewind(final, initial, _data(), bn="recalibrate", recalibration_loader=_data(seed=2))
    assert final.training and all(m.training for m in final.modules())
    assert all(torch.equal(before[key], value) for key, value in final.state_dict().items())


def test_clear_errors(models):
    final, initial = models
    batches = _data()
    with pytest.raises(ValueError, match="unknown bn mode 'rewind'"):
        rewind(final, initial, batches, bn="rewind")
    with pytest.raises(ValueError, match="recalibration_loader"):
        rewind(final, initial, batches, bn="recalibrate")
    with pytest.raises(ValueError, match="recalibration_batches"):
        rewind(final, initial, batches, bn="recalibrate", recalibration_loader=batches, recalibration_batches=0)
    with pytest.raises(ValueError, match="layer9"):
        rewind(final, initial, batches, modules=["layer9"])
    with pytest.raises(TypeError, match="positional"):  # settings are keyword-only
        rewind(final, initial, batches, ["layer1"])
    state = dict(initial.state_dict())
    del state["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        rewind(final, state, batches)
    other = build_model("small_resnet", 7, width=8)
    with pytest.raises(ValueError, match="shape"):
        rewind(final, other, batches)
    with pytest.raises(ValueError, match="empty"):
        rewind(final, initial, {})
