"""Models by name, the module partition the analyses use, and weight I/O (safetensors,
weights-only torch files, the P-T initialisation with a re-initialised head)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torchvision
from torch import nn

from transferscope.evaluation import has_batchnorm
from transferscope.models import list_models, register
from transferscope.models import registry as registry_module
from transferscope.models.partition import head_name, module_state_keys, modules
from transferscope.models.registry import build_model
from transferscope.models.weights import init_for_finetuning, load_into, load_weights, save_weights

RESNET_PARTITION = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]


def small(num_classes: int = 5, width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_resnet", num_classes, width=width)


@pytest.fixture(scope="module")
def fixup() -> nn.Module:
    torch.manual_seed(0)
    return build_model("fixup_resnet50", 10)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", 5)


class Custom(nn.Module):
    """A non-ResNet model: a scalar parameter registered first, a parameter-free child."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1))
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1)) * self.temperature


# ---------------------------------------------------------------- building models


def test_small_resnet_shapes_and_widths():
    model = small(num_classes=7, width=8)
    for size in (16, 32):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
    assert model.conv1[0].out_channels == 8
    for stage in range(1, 5):
        block = getattr(model, f"layer{stage}")[0]
        assert block.conv2.out_channels == 8 * 2 ** (stage - 1)
    assert model.fc.in_features == 64
    deeper = build_model("small_resnet", 3, width=4, blocks=(2, 1, 1, 3), in_channels=1)
    assert [len(getattr(deeper, f"layer{i}")) for i in range(1, 5)] == [2, 1, 1, 3]
    assert deeper(torch.randn(1, 1, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match="4 stage depths"):
        build_model("small_resnet", 3, blocks=(1, 1, 1))


def test_same_seed_same_init():
    assert all(torch.equal(a, b) for a, b in zip(small(seed=3).state_dict().values(),
                                                 small(seed=3).state_dict().values()))
    assert not torch.equal(small(seed=3).fc.weight, small(seed=4).fc.weight)


def test_torchvision_resnet18_by_name(resnet18):
    assert isinstance(resnet18, torchvision.models.ResNet)
    assert resnet18.fc.out_features == 5
    assert resnet18(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    torch.manual_seed(1)
    assert not torch.equal(build_model("resnet18", 5).conv1.weight, resnet18.conv1.weight)  # random, not pretrained
    with pytest.raises(ValueError, match="3 input channels"):
        build_model("resnet18", 5, in_channels=1)


def test_fixup_resnet50_has_no_batchnorm_and_fixup_init(fixup):
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in fixup.modules())
    assert not has_batchnorm(fixup)
    blocks = [block for name in RESNET_PARTITION[1:5] for block in getattr(fixup, name)]
    assert len(blocks) == 16
    for block in blocks:
        assert torch.count_nonzero(block.conv3.weight) == 0
        assert torch.equal(block.scale.detach(), torch.ones(1))
        assert all(torch.equal(getattr(block, f"bias{i}{s}").detach(), torch.zeros(1)) for i in (1, 2, 3) for s in "ab")
    assert torch.count_nonzero(fixup.fc.weight) == 0 and torch.count_nonzero(fixup.fc.bias) == 0
    # Fixup (Zhang et al. 2019): He init N(0, 2/fan_out) scaled by L^(-1/(2m-2)), L=16 branches, m=3
    conv = fixup.layer4[1].conv2
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9)) * 16 ** (-1 / 4)
    assert float(conv.weight.detach().std()) == pytest.approx(expected_std, rel=0.02)
    with torch.no_grad():
        logits = fixup(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert torch.count_nonzero(logits) == 0  # zero classifier at init


def test_unknown_architecture_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet7'.*small_resnet.*fixup_resnet50.*resnet18.*"
                                         r"timm:<name>.*list_models\(\).*@transferscope\.models\.register\('resnet7'\)"):
        build_model("resnet7", 3)
    with pytest.raises(ValueError, match=r"'small_resnt' \(did you mean 'small_resnet'\?\)"):
        build_model("small_resnt", 3)


@pytest.fixture
def registry(monkeypatch):
    """The registry's own table, restored after the test."""
    monkeypatch.setattr(registry_module, "_BUILDERS", dict(registry_module._BUILDERS))
    return registry_module


def test_list_models_names_builtins_and_torchvision():
    names = list_models()
    assert {"small_resnet", "fixup_resnet50", "resnet18", "resnet50"} <= set(names)
    assert names == sorted(names)
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)


@pytest.mark.usefixtures("registry")
def test_register_a_custom_builder():
    calls = []

    @register("tiny_mlp")
    def tiny_mlp(num_classes: int, *, in_channels: int = 3, width: int = 4, depth: int = 1) -> nn.Module:
        calls.append((num_classes, in_channels, width, depth))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, width), nn.ReLU(), nn.Linear(width, num_classes))

    assert "tiny_mlp" in list_models()
    model = build_model("tiny_mlp", 3, in_channels=1, width=6, blocks=(2, 2, 2, 2), depth=2)
    assert calls == [(3, 1, 6, 2)]  # width (named by the builder) passed, blocks (not named) left out
    assert model(torch.randn(5, 1, 2, 2)).shape == (5, 3)
    build_model("resnet18", 4, width=8)  # torchvision builders take no width: ignored, as before
    with pytest.raises(ValueError, match="'tiny_mlp' is already registered.*choose another name"):
        register("tiny_mlp")
    with pytest.raises(ValueError, match="has no ':'"):
        register("mine:net")


def test_a_new_family_reaches_build_model_unchanged(registry, monkeypatch):
    """How import-path models (issue 10) plug in: a family resolves names by their form."""
    monkeypatch.setattr(registry, "_FAMILIES", list(registry._FAMILIES))
    registry.register_family(registry.Family(
        "'linear:<n>'", lambda arch: (lambda num_classes, **_settings: nn.Linear(int(arch[7:]), num_classes))
        if arch.startswith("linear:") else None))
    assert build_model("linear:7", 2).weight.shape == (2, 7)
    with pytest.raises(ValueError, match="'linear:<n>'"):
        build_model("lin:7", 2)


# ---------------------------------------------------------------- the module partition


def test_default_partition_of_resnets(resnet18, fixup):
    for model in (small(), resnet18, fixup):
        partition = modules(model)
        assert list(partition) == RESNET_PARTITION
        assert all(partition[name] is getattr(model, name) for name in RESNET_PARTITION)


def test_default_partition_of_other_models():
    sequential = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    assert list(modules(sequential)) == ["0", "3"]
    assert head_name(sequential) == "3"
    custom = Custom()
    assert list(modules(custom)) == ["features", "head"]
    assert head_name(custom) == "head"
    with pytest.raises(ValueError, match="no Linear layer"):
        head_name(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_partition_names_are_exact():
    model = small()
    chosen = modules(model, ["layer1.0.conv1", "fc"])
    assert list(chosen) == ["layer1.0.conv1", "fc"]
    assert chosen["layer1.0.conv1"] is model.layer1[0].conv1
    for bad in (["layer"], ["conv"], ["fc", "layer9"], [""]):
        with pytest.raises(KeyError, match=r"matched exactly.*conv1, layer1, layer2, layer3, layer4, avgpool, fc"):
            modules(model, bad)
    with pytest.raises(ValueError, match="no module named 'layer9'"):  # the package's missing-name error type
        module_state_keys(model, modules=["layer9"])


def assert_each_key_once(model: nn.Module, groups: dict[str, list[str]]) -> None:
    counts = Counter(key for keys in groups.values() for key in keys)
    assert set(counts) == set(model.state_dict()) and set(counts.values()) == {1}


def test_state_keys_of_the_default_partition(resnet18, fixup):
    model = small()
    groups = module_state_keys(model)
    assert_each_key_once(model, groups)
    assert {"conv1.0.weight", "conv1.1.running_var", "conv1.1.num_batches_tracked"} <= set(groups["conv1"])
    assert "layer2.0.shortcut.1.running_mean" in groups["layer2"]
    assert groups["fc"] == ["fc.weight", "fc.bias"]

    groups = module_state_keys(resnet18)
    assert_each_key_once(resnet18, groups)
    assert groups["conv1"] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                               "bn1.num_batches_tracked"]

    groups = module_state_keys(fixup)
    assert_each_key_once(fixup, groups)
    assert groups["conv1"] == ["bias1", "conv1.weight"]
    assert groups["fc"] == ["bias2", "fc.weight", "fc.bias"]
    assert "layer4.2.scale" in groups["layer4"]

    custom = Custom()
    groups = module_state_keys(custom)
    assert_each_key_once(custom, groups)
    assert groups["features"][0] == "temperature"  # keys before the first module join it


def test_state_keys_of_an_explicit_partition():
    model = small()
    groups = module_state_keys(model, ["layer1", "fc"])
    assert list(groups) == ["layer1", "fc", "rest"]  # the tensors no unit lists are a unit, not dropped
    assert groups["layer1"] == [k for k in model.state_dict() if k.startswith("layer1.")]
    assert groups["fc"] == ["fc.weight", "fc.bias"]
    assert groups["rest"] == [k for k in model.state_dict() if not k.startswith(("layer1.", "fc."))]


# ---------------------------------------------------------------- weight files


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def test_safetensors_round_trip(tmp_path):
    model = small()
    model.train()
    model(torch.randn(4, 3, 16, 16))  # move the BN buffers off their defaults
    path = save_weights(model, tmp_path / "w.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # atomic: no temporary left
    loaded = load_weights(path)
    assert_same_state(loaded, model.state_dict())
    fresh = small(seed=1)
    load_into(fresh, loaded)
    assert_same_state(fresh.state_dict(), model.state_dict())
    save_weights(model.state_dict(), tmp_path / "state.safetensors")
    assert_same_state(load_weights(tmp_path / "state.safetensors"), model.state_dict())


def test_torch_files_plain_nested_and_dataparallel(tmp_path):
    state = small().state_dict()
    torch.save(state, tmp_path / "plain.pt")
    assert_same_state(load_weights(tmp_path / "plain.pt"), state)
    prefixed = {f"module.{k}": v for k, v in state.items()}
    torch.save({"state_dict": prefixed, "epoch": 3, "best_acc": 0.5}, tmp_path / "nested.pth")
    assert_same_state(load_weights(tmp_path / "nested.pth"), state)
    torch.save({"model": state, "optimizer": {"lr": 0.1}}, tmp_path / "model.ckpt")
    assert_same_state(load_weights(tmp_path / "model.ckpt"), state)
    torch.save({"epoch": 3}, tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        load_weights(tmp_path / "nothing.pt")


class Payload:
    """Unpickling this runs code (writes a marker file): what weights_only must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('executed')",)


def test_torch_file_with_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    torch.save({"weight": torch.zeros(2), "payload": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"(?s)evil\.pt as a weights-only torch file.*safetensors"):
        load_weights(tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_weight_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weight file not found: .*absent.safetensors"):
        load_weights(tmp_path / "absent.safetensors")


def test_init_for_finetuning_loads_all_but_the_head():
    source = small(num_classes=10, seed=0).state_dict()
    target = small(num_classes=4, seed=1)
    fresh_head = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("fc.")}
    assert init_for_finetuning(target, source) is target
    for key, value in target.state_dict().items():
        if key.startswith("fc."):
            assert torch.equal(value, fresh_head[key])
        else:
            assert torch.equal(value, source[key]), key
    assert target.fc.weight.shape == (4, 64)
    assert not torch.equal(target.fc.weight[:4], source["fc.weight"][:4])


def test_mismatching_body_names_the_keys():
    source = small(width=16).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch: conv1\.0\.weight: \(16, 3, 3, 3\) in the weights vs "
                                         r"\(8, 3, 3, 3\) in the model"):
        init_for_finetuning(small(width=8), source)
    torch.manual_seed(0)
    other = build_model("resnet18", 5).state_dict()
    with pytest.raises(ValueError, match=r"missing from the weights: conv1\.0\.weight.*not in the model: conv1\.weight"):
        load_into(small(), other)


def test_load_into_skips_prefixes_and_keeps_them():
    model = small(seed=2)
    before = model.layer4[0].conv1.weight.clone()
    source = {k: v for k, v in small(seed=0).state_dict().items() if not k.startswith("layer4.")}
    load_into(model, source, skip_prefixes=("layer4",))
    assert torch.equal(model.layer4[0].conv1.weight, before)
    assert torch.equal(model.conv1[0].weight, source["conv1.0.weight"])
