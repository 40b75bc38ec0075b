"""The module partition (transferscope.models.Partition): the default partition of each
family users bring, built by torchvision on the meta device (no weights, no downloads);
lists and mappings with the unit `rest`; grouped units in the analyses and the study."""

import copy
import json
import math
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from test_study import tiny_spec
from torch import nn
from torchvision import models as tv

from transferscope.analysis.distance import param_distance
from transferscope.analysis.module_criticality import criticality
from transferscope.analysis.rewinding import rewind
from transferscope.analysis.similarity import compare_representations
from transferscope.analysis.spectra import spectrum
from transferscope.io import json_text
from transferscope.models import Partition, build_model, module_state_keys, modules
from transferscope.study import StudySpec, build_plan
from transferscope.study.jobs import job_modules


def _stages(count: int) -> list[str]:
    return [f"stage{index}" for index in range(1, count + 1)]


RESNET = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
FAMILIES = {  # torchvision builder and its keyword arguments -> the documented unit names
    "resnet18": (tv.resnet18, {}, RESNET),
    "resnext50_32x4d": (tv.resnext50_32x4d, {}, RESNET),
    "wide_resnet50_2": (tv.wide_resnet50_2, {}, RESNET),
    "efficientnet_b0": (tv.efficientnet_b0, {}, ["stem", *_stages(7), "head", "classifier"]),
    "mobilenet_v2": (tv.mobilenet_v2, {}, ["stem", *_stages(7), "head", "classifier"]),
    "mobilenet_v3_small": (tv.mobilenet_v3_small, {}, ["stem", *_stages(5), "head", "classifier"]),
    "convnext_tiny": (tv.convnext_tiny, {}, ["stem", *_stages(4), "classifier"]),
    "swin_t": (tv.swin_t, {}, ["embedding", *_stages(4), "head"]),
    "vit_b_16": (tv.vit_b_16, {"image_size": 32}, ["embedding", *[f"block{i}" for i in range(12)], "head"]),
}


def on_meta(builder, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return builder(**kwargs)


def assert_partitions_every_tensor(model: nn.Module, partition: Partition) -> None:
    """Every state key (parameters and buffers) in exactly one unit; the units' parameter
    counts sum to the model's."""
    counts = Counter(key for unit in partition.units for key in unit.keys)
    assert set(counts) == set(model.state_dict()) and set(counts.values()) == {1}
    assert {name for name, _ in model.named_parameters()} <= set(counts)
    assert {name for name, _ in model.named_buffers()} <= set(counts)
    assert sum(partition.n_parameters(model).values()) == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- default partitions of real architectures
@pytest.mark.parametrize("family", FAMILIES)
def test_default_partition_of_each_torchvision_family(family):
    builder, kwargs, names = FAMILIES[family]
    model = on_meta(builder, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a family's default partition warns about nothing
        partition = Partition.of(model)
    assert partition.names == names
    assert partition.rest is None
    assert_partitions_every_tensor(model, partition)
    assert list(partition.outputs(model)) == names  # every unit has a module whose output CKA compares


def test_the_documented_contents_of_the_units():
    resnet = on_meta(tv.resnet18)
    assert Partition.of(resnet)["conv1"].paths == ("conv1", "bn1")
    assert modules(resnet)["conv1"] is resnet.conv1  # the stem is represented by conv1's output, as before
    assert Partition.of(on_meta(tv.efficientnet_b0))["stage3"].paths == ("features.3",)
    mobilenet = Partition.of(on_meta(tv.mobilenet_v3_small))  # one stage: consecutive blocks of one output width
    assert [mobilenet[name].paths for name in _stages(5)] == [
        ("features.1",), ("features.2", "features.3"), ("features.4", "features.5", "features.6"),
        ("features.7", "features.8"), ("features.9", "features.10", "features.11")]
    assert Partition.of(on_meta(tv.convnext_tiny))["stage2"].paths == ("features.2", "features.3")
    assert Partition.of(on_meta(tv.swin_t))["head"].paths == ("norm", "head")
    vit = on_meta(tv.vit_b_16, image_size=32)
    embedding = Partition.of(vit)["embedding"]
    assert set(embedding.keys) == {"class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"}
    assert modules(vit)["embedding"] is vit.conv_proj and modules(vit)["head"] is vit.heads


class MBConv(nn.Module):
    """A tiny inverted-residual block with lukemelas' attribute names."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        hidden = 2 * in_channels
        self._expand_conv, self._bn0 = nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden)
        self._project_conv, self._bn2 = nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self._bn0(self._expand_conv(x)))
        return self._bn2(self._project_conv(torch.relu(self._bn1(self._depthwise_conv(x)))))


class LukemelasEfficientNet(nn.Module):
    """A stand-in for efficientnet_pytorch's EfficientNet: its names, four tiny blocks of
    output widths 8 | 12, 12 | 16 (three stages)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self._blocks = nn.ModuleList([MBConv(8, 8, 1), MBConv(8, 12, 2), MBConv(12, 12, 1), MBConv(12, 16, 2)])
        self._conv_head, self._bn1 = nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32)
        self._avg_pooling, self._dropout = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.0)
        self._fc, self._swish = nn.Linear(32, num_classes), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))


def test_default_partition_of_lukemelas_efficientnet():
    model = LukemelasEfficientNet()
    partition = Partition.of(model)
    assert partition.names == ["stem", "stage1", "stage2", "stage3", "head", "classifier"]
    assert [unit.paths for unit in partition.units] == [
        ("_conv_stem", "_bn0"), ("_blocks.0",), ("_blocks.1", "_blocks.2"), ("_blocks.3",), ("_conv_head", "_bn1"),
        ("_fc",)]
    assert_partitions_every_tensor(model, partition)


class FeatureInfoNet(nn.Module):
    """timm's layout: a root tensor, a stem ending in a parameter-free feature module,
    blocks of which some are feature modules (``feature_info``), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1))
        self.conv_stem, self.bn1, self.act1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.blocks = nn.Sequential(*(nn.Conv2d(4, 4, 3) for _ in range(4)))
        self.conv_head, self.classifier = nn.Conv2d(4, 8, 1), nn.Linear(8, 2)
        self.feature_info = [{"num_chs": 4, "reduction": 1, "module": "act1"},
                             {"num_chs": 4, "reduction": 1, "module": "blocks.1"},
                             {"num_chs": 4, "reduction": 1, "module": "blocks.3"}]


def test_feature_info_units_end_at_each_feature_module():
    model = FeatureInfoNet()
    partition = Partition.of(model)
    assert partition.names == ["act1", "blocks.1", "blocks.3", "head"]
    assert [unit.paths for unit in partition.units] == [
        ("cls_token", "conv_stem", "bn1"), ("blocks.0", "blocks.1"), ("blocks.2", "blocks.3"), ("conv_head", "classifier")]
    outputs = partition.outputs(model)
    assert outputs["act1"] is model.act1 and outputs["blocks.3"] is model.blocks[3] and outputs["head"] is model.classifier
    assert_partitions_every_tensor(model, partition)


def test_timm_models_through_feature_info():
    timm = pytest.importorskip("timm")  # the optional extra; the stand-in above tests the same code without it
    for name in ("efficientnet_b0", "vit_tiny_patch16_224", "convnext_atto"):
        model = on_meta(timm.create_model, model_name=name, pretrained=False)
        partition = Partition.of(model)
        assert partition.names == [info["module"] for info in model.feature_info] + ["head"]
        assert_partitions_every_tensor(model, partition)


class OneBigChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 2)


def test_other_models_get_their_top_level_children_and_a_warning_when_one_dominates():
    model = OneBigChild()
    with pytest.warns(UserWarning, match=r"puts 416 of its 450 parameters in unit 'body'.*modules: \[body\.0, body\.1, "
                                         r"body\.2, head\]"):
        partition = Partition.of(model)
    assert partition.names == ["body", "head"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Partition.of(model, ["body.0", "body.2", "head"])  # an explicit partition: no warning
        balanced = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        assert Partition.of(balanced).names == ["0", "2"]


# ---------------------------------------------------------------- lists and mappings
def test_tensors_no_unit_lists_form_the_unit_rest():
    """The user's case of issue 10: listing _conv_stem but not _bn0 silently dropped _bn0."""
    model = LukemelasEfficientNet()
    partition = Partition.of(model, ["_conv_stem", "_blocks", "_conv_head", "_fc"])
    assert partition.names == ["_conv_stem", "_blocks", "_conv_head", "_fc", "rest"]
    assert partition.rest.paths == ("_bn0", "_bn1") and partition.rest.output is None
    assert_partitions_every_tensor(model, partition)
    grouped = Partition.of(model, {"stem": ["_conv_stem", "_bn0"], "body": "_blocks", "top": ["_conv_head", "_bn1", "_fc"]})
    assert grouped.names == ["stem", "body", "top"]
    assert grouped["stem"].keys == tuple(k for k in model.state_dict() if k.startswith(("_conv_stem.", "_bn0.")))
    assert grouped.outputs(model)["stem"] is model._bn0  # a grouped unit: its last listed module's output
    assert_partitions_every_tensor(model, grouped)


def test_a_list_entry_is_a_default_unit_or_a_module():
    model = on_meta(tv.resnet18)
    partition = Partition.of(model, ["conv1", "layer1.0", "fc"])
    assert partition["conv1"].paths == ("conv1", "bn1")  # the default unit conv1, with the stem's BatchNorm
    assert partition["layer1.0"].keys == tuple(k for k in model.state_dict() if k.startswith("layer1.0."))
    assert partition.rest.paths == ("layer1.1", "layer2", "layer3", "layer4")
    assert module_state_keys(model, ["fc"])["rest"][0] == "conv1.weight"
    vit = on_meta(tv.vit_b_16, image_size=32)  # tensor names work in a mapping
    tokens = Partition.of(vit, {"tokens": ["class_token", "encoder.pos_embedding"], "patches": ["conv_proj"]})
    assert tokens["tokens"].keys == ("class_token", "encoder.pos_embedding")
    with pytest.raises(ValueError, match=r"units \['tokens'\] hold tensors but no module"):
        tokens.outputs(vit)


@pytest.mark.parametrize("setting, message", [
    (["layer1", "layer1"], r"lists \['layer1'\] twice"),
    ({"a": ["layer1"], "b": ["layer2", "layer1"]}, r"'layer1' is listed twice \(in units 'a' and 'b'\)"),
    ({"a": ["layer1"], "b": ["layer1.0.conv1"]}, r"'layer1\.0\.conv1' \(unit 'b'\) lies inside 'layer1' \(unit 'a'\)"),
    (["conv1", "bn1"], r"'bn1' is listed twice \(in units 'conv1' and 'bn1'\)"),
    (["layer9"], r"no module named 'layer9' in ResNet.*top-level modules are: conv1, bn1.*default units are: conv1, "
                 r"layer1"),
    ({"rest": ["fc"]}, r"\['rest'\] cannot name a unit"),
    (["network"], r"\['network'\] cannot name a unit"),
    ("fc", r"not a string: modules=\['fc'\]"),
    ([], "non-empty lists"),
    ({"stem": []}, "non-empty lists"),
])
def test_setting_errors_name_the_problem(setting, message):
    with pytest.raises(ValueError, match=message):
        Partition.of(on_meta(tv.resnet18), setting)


def test_select_takes_some_units_of_a_partition():
    model = on_meta(tv.resnet18)
    chosen = Partition.of(model).select(["layer2", "conv1"])
    assert chosen.names == ["layer2", "conv1"] and chosen["conv1"].paths == ("conv1", "bn1")
    assert Partition.of(model, chosen) is chosen  # a Partition is a modules= setting as it is
    with pytest.raises(ValueError, match="no unit named 'stem' in the partition; its units are: conv1, layer1"):
        Partition.of(model).select(["stem"])


# ---------------------------------------------------------------- grouped units in the analyses
STEM = {"stem": ["_conv_stem", "_bn0"], "blocks": ["_blocks"]}  # _conv_head, _bn1, _fc: rest


@pytest.fixture(scope="module")
def lukemelas_pair():
    torch.manual_seed(0)
    initial = LukemelasEfficientNet().eval()
    final = copy.deepcopy(initial)
    with torch.no_grad():
        for parameter in final.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        final.train()
        final(torch.randn(16, 3, 16, 16))  # move the BatchNorm statistics too
    return final.eval(), initial


def _batches(n=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 16, 16, generator=generator), torch.randint(0, 3, (n,), generator=generator))]


def _loss(model, batches):
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]))


def test_rewinding_a_grouped_unit_rewinds_all_its_modules(lukemelas_pair):
    final, initial = lukemelas_pair
    batches = _batches()
    frame = rewind(final, initial, batches, modules=STEM).set_index("module")
    assert list(frame.index) == ["stem", "blocks", "rest"]
    both = copy.deepcopy(final)
    both._conv_stem.load_state_dict(initial._conv_stem.state_dict())
    both._bn0.load_state_dict(initial._bn0.state_dict())
    assert frame.loss["stem"] == pytest.approx(_loss(both, batches), rel=1e-5)
    conv_only = rewind(final, initial, batches, modules=["_conv_stem"]).set_index("module")
    assert conv_only.loss["_conv_stem"] != pytest.approx(frame.loss["stem"], rel=1e-3)  # _bn0 stayed trained there
    rest = copy.deepcopy(final)  # rest: every tensor but _conv_stem's, rewound together
    for name in ("_bn0", "_blocks", "_conv_head", "_bn1", "_fc"):
        getattr(rest, name).load_state_dict(getattr(initial, name).state_dict())
    assert conv_only.loss["rest"] == pytest.approx(_loss(rest, batches), rel=1e-5)


def test_distance_of_a_grouped_unit_counts_all_its_tensors(lukemelas_pair):
    final, initial = lukemelas_pair
    frame = param_distance(final, initial, modules=STEM).set_index("module")
    assert list(frame.index) == ["stem", "blocks", "rest", "network"]
    a, b = final.state_dict(), initial.state_dict()
    stem = [k for k in a if k.startswith(("_conv_stem.", "_bn0.")) and k.rsplit(".", 1)[1] in ("weight", "bias")]
    expected = math.sqrt(sum(((a[k].double().numpy() - b[k].double().numpy()) ** 2).sum() for k in stem))
    assert frame.distance["stem"] == pytest.approx(expected, rel=1e-12)
    assert frame.n_tensors["stem"] == 3  # conv weight, BN weight and bias (BN buffers off by default)
    units = frame.drop(index="network")
    assert math.sqrt((units.distance ** 2).sum()) == pytest.approx(frame.distance["network"], rel=1e-12)


def test_criticality_moves_every_module_of_a_grouped_unit(lukemelas_pair):
    final, initial = lukemelas_pair
    batches = _batches()
    grid = criticality(final, initial, batches, modules=STEM, alphas=[0.0, 1.0], sigmas=[1e-6], samples=1)
    assert list(grid.module.unique()) == ["stem", "blocks"]  # rest is not measured by criticality
    stem = grid[grid.module == "stem"].set_index("alpha")
    both = copy.deepcopy(final)  # α = 0: _conv_stem and _bn0, statistics too, at their initial values
    both._conv_stem.load_state_dict(initial._conv_stem.state_dict())
    both._bn0.load_state_dict(initial._bn0.state_dict())
    assert stem.loss_mean[0.0] == pytest.approx(_loss(both, batches), rel=1e-4)
    assert stem.loss_mean[1.0] == pytest.approx(_loss(final, batches), rel=1e-4)
    a, b = final.state_dict(), initial.state_dict()
    delta = sum(float((a[key].double() - b[key].double()).pow(2).sum()) for key, _ in final.named_parameters()
                if key.startswith(("_conv_stem.", "_bn0.")))
    assert stem.delta_norm_sq.iloc[0] == pytest.approx(delta, rel=1e-12)


def test_cka_and_spectra_of_grouped_units():
    torch.manual_seed(0)
    models = {"a": build_model("small_resnet", 4, width=8).eval(), "b": build_model("small_resnet", 4, width=8).eval()}
    batches = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    grouped = compare_representations(models, batches, modules={"early": ["conv1", "layer1"], "late": ["layer4", "fc"]})
    single = compare_representations(models, batches, modules=["layer1", "fc"])
    assert list(grouped.module_a.unique()) == ["early", "late"]
    np.testing.assert_array_equal(grouped.cka, single.cka)  # each unit is its last listed module's output
    values = spectrum(models["a"], modules={"early": ["conv1", "layer1"]})
    assert set(values.module) == {"early", "rest"}
    assert {key for key in values.parameter if key.startswith(("conv1.", "layer1."))} == {
        key for key in values[values.module == "early"].parameter}


# ---------------------------------------------------------------- the study's modules:
def test_study_modules_reach_every_analysis_that_takes_them():
    grouped = {"stem": ["conv1"], "body": ["layer1", "layer2", "layer3"], "top": ["layer4", "fc"]}
    base = {job.label: job for job in build_plan(StudySpec.model_validate(tiny_spec()))}
    spec = tiny_spec(modules=grouped)
    spec["analyses"]["criticality"]["heatmap_module"] = "stem"
    jobs = {job.label: job for job in build_plan(StudySpec.model_validate(spec))}
    changed = {label for label, job in jobs.items() if base[label].id != job.id}
    assert {label.split()[0] for label in changed} == {"cka", "distance", "spectrum", "rewind", "criticality"}
    for label in changed:  # as the job reads it back from its job file, whose mapping keys are sorted
        stored = json.loads(json_text(jobs[label].config))
        assert list(job_modules(stored).items()) == list(grouped.items())
    assert job_modules(json.loads(json_text(build_plan(StudySpec.model_validate(tiny_spec(modules=["conv1", "layer4"])))[
        -1].config))) == ["conv1", "layer4"]
    with pytest.raises(ValueError, match=r"heatmap_module 'conv1' is no unit of modules \(stem, body, top\)"):
        StudySpec.model_validate(tiny_spec(modules=grouped))
    with pytest.raises(ValueError, match=r"(?s)modules.*\[.rest.\] cannot name a unit"):
        StudySpec.model_validate(tiny_spec(modules={"rest": ["fc"]}))


def test_partition_tables_have_a_row_per_unit_in_order():
    model = LukemelasEfficientNet()
    sizes = pd.Series(Partition.of(model).n_parameters(model))
    assert list(sizes.index) == ["stem", "stage1", "stage2", "stage3", "head", "classifier"]
    assert sizes["stem"] == 8 * 3 * 9 + 2 * 8 and sizes["classifier"] == 32 * 3 + 3
