"""Freeze plans (issue 15): the recommendation from a rewind table, frozen training runs
(the first k units bit-identical to the init, out of the optimizer), the study's freeze
runs, and the findings rows on the recommendation and the checkpoint advice."""

from __future__ import annotations

import pytest
import torch

from transferscope.config import TrainConfig
from transferscope.io import content_hash
from transferscope.models import Partition
from transferscope.models.registry import build_model
from transferscope.train.trainer import Trainer, run_identity

FROZEN = 2  # conv1 (with the stem's bn1) and layer1 of small_resnet


# ----------------------------------------------------------------- frozen training
def test_a_frozen_run_leaves_its_leading_units_bit_identical(tmp_path, toy_domain, toy_train_config):
    config = toy_train_config(epochs=1, freeze=FROZEN, weight_decay=0.01)
    run = Trainer(config, tmp_path, progress=False, domain=toy_domain).run()
    start, end = run.checkpoint(0), run.checkpoint("final")
    units = Partition.of(build_model("small_resnet", 3, width=8)).units
    frozen = [key for unit in units[:FROZEN] for key in unit.keys]
    assert any("running_mean" in key for key in frozen) and any("num_batches_tracked" in key for key in frozen)
    for key in frozen:  # parameters and BatchNorm buffers
        assert torch.equal(start[key], end[key]), key
    for unit in units[FROZEN:]:
        assert any(not torch.equal(start[key], end[key]) for key in unit.keys), unit.name


def test_the_optimizer_leaves_frozen_parameters_out(tmp_path, toy_domain, toy_train_config):
    trainer = Trainer(toy_train_config(freeze=FROZEN, modules=["conv1", "layer1", "layer2"]), tmp_path,
                      progress=False, domain=toy_domain)
    model, optimizer, _ = trainer._fresh_state()
    optimized = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    for name, parameter in model.named_parameters():
        frozen = name.startswith(("conv1.", "layer1."))
        assert (id(parameter) in optimized) != frozen and parameter.requires_grad != frozen, name


def test_freezing_every_unit_is_refused(tmp_path, toy_domain, toy_train_config):
    def fresh(freeze: int):
        config = toy_train_config(freeze=freeze, modules={"stem": ["conv1"], "body": ["layer1", "layer2"]})
        return Trainer(config, tmp_path, progress=False, domain=toy_domain)._fresh_state()

    fresh(2)  # units stem, body and rest: the first two may freeze
    with pytest.raises(ValueError, match=r"freeze 3 would freeze every unit of the partition \(stem, body, rest\); "
                                         "the last one must train: set freeze to at most 2"):
        fresh(3)


def test_modules_keep_their_order_and_need_freeze():
    config = TrainConfig(freeze=1, modules={"stem": ["conv1", "bn1"], "body": "layer1"})
    again = TrainConfig.model_validate_json(config.model_dump_json())
    assert list(again.partition_modules) == ["stem", "body"] and again == config
    with pytest.raises(ValueError, match="modules sets the units that freeze counts"):
        TrainConfig(modules=["conv1"])


def test_freeze_zero_keeps_the_run_identity():
    """A run folder written before freeze existed resumes: at their defaults, freeze and
    modules are not part of the identity."""
    config = TrainConfig(epochs=3)
    fields = config.model_dump(mode="json", exclude={"freeze", "modules", "optimizer", "adamw_betas", "adamw_eps",
                                                     "label_smoothing", "bn_momentum"})
    for key in ("kwargs", "head"):
        del fields["model"][key]
    assert run_identity(config) == content_hash(fields)
    assert run_identity(config.model_copy(update={"freeze": 1})) != run_identity(config)
