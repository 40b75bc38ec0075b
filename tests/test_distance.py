import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from transferscope.analysis.distance import param_distance
from transferscope.models import build_model


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-default affine weights and running statistics."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor in (module.weight, module.bias, module.running_mean):
                    tensor.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model


def _model(seed: int, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_batchnorm(build_model("small_resnet", num_classes, width=8))


def _is_batchnorm_key(model: nn.Module, key: str) -> bool:
    owner = key.rsplit(".", 1)[0]
    return isinstance(model.get_submodule(owner), nn.BatchNorm2d)


def _reference(model_a, model_b, keys) -> float:
    """float64 NumPy: norm of the concatenated differences of ``keys``."""
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    difference = np.concatenate([state_a[k].double().numpy().ravel() - state_b[k].double().numpy().ravel()
                                 for k in keys])
    return float(np.linalg.norm(difference))


def _row(frame, module):
    return frame.set_index("module").loc[module]


def test_matches_numpy_reference_per_module_and_whole_network():
    a, b = _model(0), _model(1)
    frame = param_distance(a, b)
    assert list(frame["module"]) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc", "network"]
    parameters = [name for name, _ in a.named_parameters()]  # default: parameters incl. BN affine, no buffers
    assert _row(frame, "network")["distance"] == pytest.approx(_reference(a, b, parameters), rel=1e-12)
    assert _row(frame, "network")["n_parameters"] == sum(p.numel() for p in a.parameters())
    for module in ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]:
        keys = [k for k in parameters if k.startswith(module + ".")]
        row = _row(frame, module)
        assert row["distance"] == pytest.approx(_reference(a, b, keys), rel=1e-12)
        assert row["n_tensors"] == len(keys)
    # the whole network is the root of the summed squared module distances
    modules = frame[frame["module"] != "network"]
    assert math.sqrt((modules["distance"] ** 2).sum()) == pytest.approx(_row(frame, "network")["distance"], rel=1e-12)
    assert (frame["skipped"] == "").all() and (frame["n_skipped"] == 0).all()
    assert {"include_head", "include_bn_affine", "include_bn_buffers"} <= set(frame.columns)


def test_include_bn_buffers_counts_running_statistics_but_never_num_batches_tracked():
    a, b = _model(0), _model(1)
    frame = param_distance(a, b, include_bn_buffers=True)
    keys = [k for k in a.state_dict() if not k.endswith("num_batches_tracked")]
    assert any(k.endswith("running_var") for k in keys)
    assert _row(frame, "network")["distance"] == pytest.approx(_reference(a, b, keys), rel=1e-12)
    assert _row(frame, "network")["n_tensors"] == len(keys)


def test_invariants_copy_symmetry_triangle():
    a, b, c = _model(0), _model(1), _model(2)
    assert (param_distance(a, copy.deepcopy(a), include_bn_buffers=True)["distance"] == 0).all()
    ab, ba = param_distance(a, b), param_distance(b, a)
    np.testing.assert_array_equal(ab["distance"], ba["distance"])
    ac, bc = param_distance(a, c), param_distance(b, c)
    assert (ac["distance"] <= ab["distance"] + bc["distance"] + 1e-12).all()
    assert (ab["distance"] > 0).all()


@pytest.mark.parametrize(
    "key, flag",
    [("layer2.0.bn1.running_mean", "include_bn_buffers"),
     ("layer2.0.bn1.bias", "include_bn_affine"),
     ("fc.weight", "include_head")],
)
def test_each_flag_changes_exactly_its_tensors(key, flag):
    a = _model(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.state_dict()[key].add_(0.5)
    expected = _reference(a, b, [key])
    assert expected == pytest.approx(0.5 * math.sqrt(a.state_dict()[key].numel()), rel=1e-6)
    counted = param_distance(a, b, **{flag: True})
    excluded = param_distance(a, b, **{flag: False})
    assert _row(counted, "network")["distance"] == pytest.approx(expected, rel=1e-12)
    assert _row(excluded, "network")["distance"] == 0
    module = key.split(".")[0]
    assert _row(counted, module)["distance"] == pytest.approx(expected, rel=1e-12)
    # only the flagged tensors leave the count
    n_flagged = sum(1 for k in a.state_dict()
                    if (flag == "include_bn_buffers" and k.endswith(("running_mean", "running_var")))
                    or (flag == "include_bn_affine" and _is_batchnorm_key(a, k) and k.endswith(("weight", "bias")))
                    or (flag == "include_head" and k.startswith("fc.")))
    assert _row(counted, "network")["n_tensors"] - _row(excluded, "network")["n_tensors"] == n_flagged


def test_excluded_head_gives_nan_not_zero():
    frame = param_distance(_model(0), _model(1), include_head=False)
    fc = _row(frame, "fc")
    assert math.isnan(fc["distance"]) and fc["n_tensors"] == 0 and not fc["include_head"]


def test_head_of_other_shape_is_skipped_reported_and_warned():
    pretrained, finetuned = _model(0, num_classes=12), _model(1, num_classes=10)
    with pytest.warns(UserWarning, match="fc.weight, fc.bias"):
        frame = param_distance(pretrained, finetuned)
    assert _row(frame, "network")["skipped"] == "fc.weight, fc.bias"
    assert _row(frame, "network")["n_skipped"] == 2
    assert _row(frame, "fc")["skipped"] == "fc.weight, fc.bias"
    assert math.isnan(_row(frame, "fc")["distance"])
    assert _row(frame, "layer1")["skipped"] == ""
    body = [k for k, _ in pretrained.named_parameters() if not k.startswith("fc.")]
    assert _row(frame, "network")["distance"] == pytest.approx(_reference(pretrained, finetuned, body), rel=1e-12)


def test_state_dicts_accepted_and_models_unchanged():
    a, b = _model(0), _model(1)
    a.train()
    b.eval()
    before = [copy.deepcopy(m.state_dict()) for m in (a, b)]
    from_models = param_distance(a, b)
    from_state = param_distance(a.state_dict(), b)
    np.testing.assert_array_equal(from_models["distance"], from_state["distance"])
    for model, state in zip((a, b), before):
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key])
    assert a.training and all(m.training for m in a.modules())
    assert not b.training and not any(m.training for m in b.modules())


def test_module_subset():
    a, b = _model(0), _model(1)
    frame = param_distance(a, b, modules=["layer1"])
    assert list(frame["module"]) == ["layer1", "rest", "network"]  # the tensors layer1 leaves out: reported
    assert _row(frame, "network")["distance"] == _row(param_distance(a, b), "network")["distance"]
    units = frame[frame["module"] != "network"]
    assert math.sqrt((units["distance"] ** 2).sum()) == pytest.approx(_row(frame, "network")["distance"], rel=1e-12)


def test_clear_errors():
    a = _model(0)
    torch.manual_seed(1)
    deeper = build_model("small_resnet", 10, width=8, blocks=(2, 1, 1, 1))
    with pytest.raises(ValueError, match=r"not in model_a: layer1\.1\.conv1\.weight, .*same architecture settings"):
        param_distance(a, deeper)
    with pytest.raises(TypeError, match="at least one nn.Module"):
        param_distance(a.state_dict(), a.state_dict())
    torch.manual_seed(1)
    wider = build_model("small_resnet", 10, width=16)
    with pytest.raises(ValueError, match=r"conv1\.0\.weight has shape \(8, 3, 3, 3\) in model_a but \(16, 3, 3, 3\)"):
        param_distance(a, wider)
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        param_distance(a, _model(1), modules=["layer9"])
    with pytest.raises(TypeError):
        param_distance(a, _model(1), ["layer1"])  # settings are keyword-only
