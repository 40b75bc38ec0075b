"""Shared state-dict utilities: the compatibility check and its messages, model-or-state
coercion, membership of keys in modules, BatchNorm detection."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

from transferscope.models import build_model
from transferscope.models.state import (
    as_state_dict,
    batchnorm_buffer_keys,
    batchnorm_layers,
    check_compatible,
    has_batchnorm,
    in_modules,
)


def small(width: int = 4, num_classes: int = 3, blocks: tuple[int, ...] = (1, 1, 1, 1)) -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_resnet", num_classes, width=width, blocks=blocks)


def no_batchnorm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.LayerNorm([4, 6, 6]), nn.Flatten(),
                         nn.Linear(144, 2))


# ---------------------------------------------------------------- compatibility check


def test_compatible_states_pass_whatever_the_key_order():
    model = small()
    reversed_state = dict(reversed(list(model.state_dict().items())))
    check_compatible(reversed_state, model)
    check_compatible(model, small())  # a model is read as its state dict


def test_message_names_missing_unexpected_and_shapes_and_the_fix():
    model = small(width=4)
    state = dict(small(width=8).state_dict())
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as raised:
        check_compatible(state, model, what="initial", reference_name="the trained model")
    message = str(raised.value)
    assert message.startswith("initial and the trained model (SmallResNet) have different state-dict entries: ")
    assert "missing from initial: fc.bias" in message
    assert "not in the trained model: extra.weight" in message
    assert "conv1.0.weight: (8, 3, 3, 3) in initial vs (4, 3, 3, 3) in the trained model" in message
    assert "same architecture settings (arch, width, blocks, number of classes)" in message
    # long lists are cut after 8 keys, saying how many more
    assert re.search(r"shape mismatch: (?:[^;|]+; ){7}[^;|]+ … \(\d+ more\)", message)


def test_subset_of_keys_and_skipped_modules():
    model, deeper = small(), small(blocks=(2, 1, 1, 1))
    fc_keys = ["fc.weight", "fc.bias"]
    check_compatible(deeper.state_dict(), model, keys=fc_keys)  # other entries are not looked at
    with pytest.raises(ValueError, match="missing from the weights: layer1.1.conv1.weight"):
        check_compatible(model.state_dict(), deeper)
    other_head = small(num_classes=5)
    check_compatible(other_head, model, skip_prefixes=("fc",))
    check_compatible(other_head, model, shapes=False)
    with pytest.raises(ValueError, match=r"fc\.weight: \(5, 32\) in the weights vs \(3, 32\) in the model"):
        check_compatible(other_head, model)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_a_wrapper_prefix_is_named_with_the_fix(prefix):
    model = small()
    wrapped = {prefix + key: value for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"the keys of the weights carry the extra prefix '{re.escape(prefix)}'"):
        check_compatible(wrapped, model)
    with pytest.raises(ValueError, match=f"the keys of the model carry the extra prefix '{re.escape(prefix)}'"):
        check_compatible(model.state_dict(), wrapped)


def test_partial_prefix_overlap_gives_no_prefix_hint():
    model = small()
    state = {("module." + key if key.startswith("fc.") else key): value for key, value in model.state_dict().items()}
    state.pop("module.fc.bias")
    with pytest.raises(ValueError) as raised:
        check_compatible(state, model)
    assert "prefix" not in str(raised.value)


# ---------------------------------------------------------------- coercion, key membership


def test_as_state_dict_of_a_model_a_mapping_and_a_wrong_type():
    model = small()
    state = as_state_dict(model)
    assert list(state) == list(model.state_dict())
    assert state["fc.weight"].data_ptr() == model.fc.weight.data_ptr()  # shares the model's tensors
    mapping = {"w": torch.zeros(2)}
    assert as_state_dict(mapping) is mapping
    with pytest.raises(TypeError, match=r"initial must be an nn.Module or a state dict.*got str.*load_weights"):
        as_state_dict("weights.safetensors", "initial")


def test_in_modules_matches_dotted_names_exactly():
    assert in_modules("layer1.0.conv1.weight", ["layer1"])
    assert in_modules("fc", ["fc"])
    assert not in_modules("layer10.weight", ["layer1"])
    assert not in_modules("fc.weight", [])


# ---------------------------------------------------------------- BatchNorm detection


def test_batchnorm_detection_on_torchvision_resnet18():
    model = torchvision.models.resnet18(num_classes=3)
    assert has_batchnorm(model)
    layers = batchnorm_layers(model)
    expected = [name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)]
    assert list(layers) == expected and len(layers) == 20  # bn1, 2 per block x 8, 3 downsample
    keys = batchnorm_buffer_keys(model)
    assert keys == [key for key in model.state_dict() if key.endswith(("running_mean", "running_var",
                                                                          "num_batches_tracked"))]
    stats = batchnorm_buffer_keys(model, running_stats_only=True)
    assert stats[:2] == ["bn1.running_mean", "bn1.running_var"] and len(stats) == 40
    assert all(model.state_dict()[key].is_floating_point() for key in stats)


def test_batchnorm_detection_on_a_model_without_batchnorm():
    model = no_batchnorm()
    assert not has_batchnorm(model)
    assert batchnorm_layers(model) == {} and batchnorm_buffer_keys(model) == []


def test_batchnorm_at_the_root_and_1d():
    assert batchnorm_buffer_keys(nn.BatchNorm1d(3)) == ["running_mean", "running_var", "num_batches_tracked"]
    assert list(batchnorm_layers(nn.Sequential(nn.Linear(2, 2), nn.SyncBatchNorm(2)))) == ["1"]
