"""Settings validation: positive block sizes, device names, finite floats, duplicate
YAML keys, and one line per invalid key (no stray consequential lines), for the study
file and `transferscope train` alike."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from test_study import tiny_spec, write_spec
from typer.testing import CliRunner

from transferscope.cli import app
from transferscope.config import DataConfig, TrainConfig, explain, load_yaml
from transferscope.data.shuffle import BlockShuffle
from transferscope.study import load_study
from transferscope.study.spec import Analyses, Recipe, ShuffleSweep


def _words(output: str) -> str:
    """CLI output with line breaks (the console wraps long lines) as single spaces."""
    return " ".join(output.split())


def _study_error(tmp_path: Path, spec: dict) -> str:
    with pytest.raises(ValueError) as caught:
        load_study(write_spec(tmp_path / "study.yaml", spec))
    return str(caught.value)


@pytest.mark.parametrize("size", [0, -4, True, 2.0, "4"])
def test_block_sizes_must_be_positive_ints_or_star_everywhere(tmp_path, size):
    message = f"block_size must be a positive int or '\\*', got {size!r}"
    with pytest.raises(ValidationError, match=message):
        DataConfig(block_size=size)
    with pytest.raises(ValidationError, match=message):
        ShuffleSweep(block_sizes=(4, size))
    with pytest.raises(ValueError, match=message):
        BlockShuffle(size)
    spec = tiny_spec(shuffle={"block_sizes": [4, size]})
    assert f"\n  shuffle.block_sizes.1: block_size must be a positive int or '*', got {size!r}" in _study_error(tmp_path, spec)
    assert ShuffleSweep(block_sizes=(1, 8, "*")).block_sizes == (1, 8, "*")


def test_plan_of_a_zero_block_size_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["plan", str(write_spec(tmp_path / "s.yaml", tiny_spec(shuffle={"block_sizes": [0]})))])
    assert result.exit_code == 2, result.output
    assert "shuffle.block_sizes.0: block_size must be a positive int" in _words(result.output)
    assert "ZeroDivisionError" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_that_torch_understands_pass(device):
    assert TrainConfig(device=device).device == device
    assert Recipe(device=device).device == device


@pytest.mark.parametrize("device", ["gpu0", "cuda0", "cuda:", "cuda:x", "CPU", "", "cpu "])
def test_other_device_names_are_rejected_before_anything_runs(tmp_path, device):
    message = f"device must be auto, cpu, cuda, cuda:N (N a GPU index) or mps, got {device!r}"
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(device=device)
    spec = tiny_spec()
    spec["finetune"]["device"] = device
    assert f"\n  finetune.device: {message}" in _study_error(tmp_path, spec)


def _float_fields(model: type[BaseModel], prefix: tuple = ()) -> list[tuple[tuple, bool]]:
    """(path, is_tuple) of every float setting under ``model``, through nested settings models."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _float_fields(annotation, (*prefix, name))
        elif annotation is float or float in args:
            found.append(((*prefix, name), annotation is not float and typing.get_origin(annotation) is tuple))
    return found


def _set(settings: dict, path: tuple, value) -> dict:
    node = settings
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return settings


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_setting_must_be_finite(tmp_path, value):
    train_fields = _float_fields(TrainConfig)
    analysis_fields = _float_fields(Analyses)
    assert {("lr",), ("momentum",), ("schedule", "gamma")} <= {path for path, _ in train_fields}
    assert (("interpolation", "alphas"), True) in analysis_fields
    for path, is_tuple in train_fields:
        with pytest.raises(ValidationError, match="finite number"):
            TrainConfig.model_validate(_set({}, path, [value] if is_tuple else value))
    for path, is_tuple in analysis_fields:
        spec = _set(tiny_spec(), ("analyses", *path), [0.5, value] if is_tuple else value)
        key = ".".join(("analyses", *path)) + (".1" if is_tuple else "")
        assert f"\n  {key}: Input should be a finite number" in _study_error(tmp_path, spec)


def test_a_nested_error_is_listed_alone(tmp_path):
    spec = tiny_spec()
    spec["targets"] = spec["targets"][:1]
    spec["shuffle"]["targets"] = spec["checkpoints"]["targets"] = spec["analyses"]["criticality"]["targets"] = None
    spec["targets"][0]["data"]["bogus"] = 1
    message = _study_error(tmp_path, spec)
    assert message.splitlines()[1:] == ["  targets.0.data.bogus: unknown key; allowed keys: kind, name, root, image_size, "
                                        "n_train, n_test, num_classes, seed, block_size, shuffle_seed, decode_size, "
                                        "image_column, label_column, label_columns, split_column, train_split, test_split"]
    spec["targets"] = []
    assert "targets: Tuple should have at least 1 item" in _study_error(tmp_path, spec)  # a real length error stays


def test_explain_strips_the_value_error_prefix():
    with pytest.raises(ValidationError) as caught:
        TrainConfig.model_validate({"data": {"block_size": 5}, "epochs": -1})
    assert explain(caught.value, TrainConfig).splitlines() == [
        "  data: block_size 5 does not divide image_size 32", "  epochs: Input should be greater than or equal to 0"]


@pytest.mark.parametrize("text, line, key", [
    ("epochs: 1\nlr: 0.1\nepochs: 2\n", 3, "epochs"),
    ("data:\n  kind: synthetic\n  name: real\n  name: clipart\n", 4, "name"),
    ("targets:\n  - label: a\n    label: b\n", 3, "label"),
    ("1: a\n1: b\n", 2, 1),
])
def test_a_key_given_twice_is_an_error_naming_file_line_and_key(tmp_path, text, line, key):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"settings.yaml, line {line}: key {key!r} is given twice"):
        load_yaml(path)
    assert yaml.safe_load(text)  # plain YAML keeps the last one silently


def test_yaml_without_duplicates_loads_as_usual(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &base {lr: 0.1, epochs: 2}\nrun:\n  <<: *base\n  epochs: 3\nother: {epochs: 1}\n")
    assert load_yaml(path) == yaml.safe_load(path.read_text())
    path.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="ok.yaml is not valid YAML"):
        load_yaml(path)


def test_study_and_train_files_reject_duplicate_keys(tmp_path):
    study = write_spec(tmp_path / "study.yaml", tiny_spec())
    study.write_text(study.read_text() + "seeds: [3]\n")
    with pytest.raises(ValueError, match="key 'seeds' is given twice"):
        load_study(study)
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 1\nlr: 0.1\nlr: 0.5\n")
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "train.yaml, line 3: key 'lr' is given twice" in _words(result.output), result.output
    assert not (tmp_path / "run").exists()


def test_train_lists_every_invalid_key(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("lr: .inf\ndevice: gpu0\ndata: {block_size: -4}\n")
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    for line in ("data.block_size: block_size must be a positive int or '*', got -4", "lr: Input should be a finite number",
                 "device: device must be auto, cpu, cuda, cuda:N"):
        assert line in _words(result.output)
    assert not (tmp_path / "run").exists()
