"""Freeze plans (issue 15): the recommendation from a rewind table, frozen training runs
(the first k units bit-identical to the init, out of the optimizer), the study's freeze
runs, and the findings rows on the recommendation and the checkpoint advice."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from transferscope.analysis import claims, freeze_recommendation, freeze_table
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


# ----------------------------------------------------------------- the recommendation
MODULES = ["conv1", "layer1", "layer2", "layer3", "fc"]


def rewind_table(costs, *, base=0.8, model="P-T:s0", train_costs=None) -> pd.DataFrame:
    """rewind() rows of one model: test scores base − cost per module (train: other costs)."""
    rows = []
    for split, split_costs in (("train", train_costs or [0.5] * len(costs)), ("test", costs)):
        rows += [{"module": module, "split": split, "loss": 1.0, "score": base - cost, "metric": "accuracy",
                  "base_loss": 0.5, "base_score": base, "n_examples": 200, "bn": "follow",
                  "recalibration_batches": None, "max_examples": 1000, "model": model}
                 for module, cost in zip(MODULES, split_costs)]
    return pd.DataFrame(rows)


def test_the_recommendation_is_the_longest_prefix_within_tolerance():
    plan = freeze_recommendation(rewind_table([0.0, 0.01, 0.03, 0.0, 0.5]), tolerance=0.01)
    assert plan.freeze == 2  # a cost equal to the tolerance counts; layer3 is cheap but follows layer2
    table = plan.table
    assert list(table["module"]) == MODULES and list(table["position"]) == list(range(5))
    assert list(table["within_tolerance"]) == [True, True, False, True, False]
    assert list(table["frozen"]) == [True, True, False, False, False]
    assert np.allclose(table["cost"], [0.0, 0.01, 0.03, 0.0, 0.5])
    assert np.allclose(table["cumulative_cost"], [0.0, 0.01, 0.04, 0.04, 0.54])
    assert (table["split"] == "test").all() and (table["tolerance"] == 0.01).all()
    assert freeze_recommendation(rewind_table([0.0, 0.01, 0.03, 0.0, 0.5]), tolerance=0.03).freeze == 4


@pytest.mark.parametrize("costs, freeze", [
    ([0.2, 0.0, 0.0, 0.0, 0.0], 0),  # the first module is critical: nothing frozen
    ([0.3, 0.4, 0.5, 0.6, 0.7], 0),  # all critical
    ([0.0, -0.01, 0.005, 0.0, 0.0], 5),  # none critical: every module (a gain is a negative cost)
    ([0.0, math.nan, 0.0, 0.0, 0.0], 1),  # an unknown cost is not within the tolerance
])
def test_all_critical_freezes_nothing_and_none_critical_freezes_all(costs, freeze):
    assert freeze_recommendation(rewind_table(costs)).freeze == freeze


def test_the_split_the_model_and_criticality_choose_the_rows():
    frame = pd.concat([rewind_table([0.0, 0.0, 0.5, 0.5, 0.5], train_costs=[0.5] * 5),
                       rewind_table([0.5] * 5, model="P-T:s1")], ignore_index=True)
    assert freeze_recommendation(frame, model="P-T:s0").freeze == 2
    assert freeze_recommendation(frame, model="P-T:s0", split="train").freeze == 0
    with pytest.raises(ValueError, match=r"several models \(P-T:s0, P-T:s1\); pass model="):
        freeze_recommendation(frame)
    with pytest.raises(ValueError, match="no split 'valid'"):
        freeze_recommendation(frame, model="P-T:s0", split="valid")
    with pytest.raises(ValueError, match="several rows for modules"):
        freeze_recommendation(pd.concat([rewind_table([0.0] * 5)] * 2))
    with pytest.raises(ValueError, match="tolerance is a score cost >= 0"):
        freeze_recommendation(frame, model="P-T:s0", tolerance=-0.1)
    critical = pd.DataFrame({"module": [*MODULES, "network"], "criticality": [0.1, 5.0, 0.1, 0.1, 9.0, 14.3],
                             "model": "P-T:s0"})
    plan = freeze_recommendation(frame, model="P-T:s0", criticality=critical)
    assert plan.freeze == 2 and list(plan.table["criticality"]) == [0.1, 5.0, 0.1, 0.1, 9.0]
    assert freeze_recommendation(frame, model="P-T:s0", criticality=critical, max_criticality=1.0).freeze == 1
    with pytest.raises(ValueError, match=r"no modules \['fc'\]"):
        freeze_recommendation(frame, model="P-T:s0", criticality=critical[critical["module"] != "fc"])



# ----------------------------------------------------------------- the findings rows
HOLDS, FAILS, INCONCLUSIVE = claims.VERDICTS


def freeze_runs(scores: dict[int, list[float]], seconds: dict[int, float] | None = None):
    """The study's freeze table built by freeze_table from runs rows and their curves."""
    runs, curves = [], []
    for k, values in scores.items():
        for seed, score in enumerate(values):
            job = f"run-k{k}-s{seed}"
            runs.append({"target": "real", "metric": "accuracy", "freeze": k, "seed": seed, "final_score": score,
                         "job": job})
            curves += [{"job": job, "epoch": epoch, "train_seconds": (seconds or {}).get(k, 10.0 - k) / 2}
                       for epoch in (1, 2)]
    return freeze_table(pd.DataFrame(runs), pd.DataFrame(curves))


def plan_table(freeze: int) -> pd.DataFrame:
    return pd.DataFrame({"target": "real", "module": MODULES, "freeze": freeze})


def test_freeze_table_aggregates_score_and_training_time():
    table = freeze_runs({0: [0.80, 0.82], 2: [0.70, 0.72]}, seconds={0: 10.0, 2: 6.0})
    assert list(table["freeze"]) == [0, 2] and np.allclose(table["final_score_mean"], [0.81, 0.71])
    assert np.allclose(table["train_seconds_mean"], [10.0, 6.0]) and list(table["final_score_count"]) == [2, 2]
    with pytest.raises(ValueError, match="no rows for runs"):
        freeze_table(pd.DataFrame([{"target": "real", "metric": "accuracy", "freeze": 1, "seed": 0,
                                    "final_score": 0.5, "job": "lost"}]), pd.DataFrame(columns=["job", "train_seconds"]))


TIGHT = (-0.001, 0.0, 0.001)  # three seeds' offsets: a tight interval


@pytest.mark.parametrize("scores, recommended, verdict", [
    ({0: 0.80, 1: 0.801, 2: 0.70}, 1, HOLDS),  # the recommendation is the best k
    ({0: 0.80, 1: 0.799, 2: 0.70}, 1, HOLDS),  # within a point of the best, tightly
    ({0: 0.80, 1: 0.79, 2: 0.70}, 2, FAILS),  # the best k is better beyond the uncertainty
    ({0: 0.80, 1: 0.79, 2: 0.70}, 1, FAILS),
])
def test_freeze_claim_verdicts(scores, recommended, verdict):
    table = freeze_runs({k: [score + offset for offset in TIGHT] for k, score in scores.items()})
    row = claims.freeze_recommendation_right({"freeze": table, "freeze_plan": plan_table(recommended)})
    assert len(row) == 1 and row["verdict"].iloc[0] == verdict, row["statistic"].iloc[0]
    assert f"recommended k = {recommended}" in row["statistic"].iloc[0] and row["n"].iloc[0] == 3


def test_freeze_claim_is_inconclusive_with_one_seed_or_an_unrun_recommendation():
    one_seed = freeze_runs({0: [0.80], 1: [0.79]})
    row = claims.freeze_recommendation_right({"freeze": one_seed, "freeze_plan": plan_table(1)}).iloc[0]
    assert row["verdict"] == INCONCLUSIVE and math.isnan(row["ci_low"])  # 0.01 ± 0.05 reaches both bounds
    assert "training time 9 s vs 10 s with nothing frozen" in row["statistic"]
    row = claims.freeze_recommendation_right({"freeze": one_seed, "freeze_plan": plan_table(3)}).iloc[0]
    assert row["verdict"] == INCONCLUSIVE and "k = 3 was not run" in row["statistic"]
    assert claims.freeze_recommendation_right({"freeze": one_seed}).empty
    found = claims.findings({"freeze": one_seed, "freeze_plan": plan_table(1)})
    assert list(found["claim"]) == ["Freezing the leading modules that rewinding recommends keeps the best final score"]


def checkpoint_rows(scores: dict[int, float], seeds: int = 3) -> pd.DataFrame:
    offsets = TIGHT if seeds == 3 else (0.0,)
    return pd.DataFrame([{"target": "real", "metric": "accuracy", "checkpoint_epoch": epoch,
                          "final_score_mean": score, "final_score_std": np.std(offsets, ddof=1) if seeds > 1 else math.nan,
                          "final_score_count": seeds, "source_score": 0.5 + epoch / 20, "source_metric": "accuracy"}
                         for epoch, score in scores.items()])


@pytest.mark.parametrize("scores, seeds, verdict, advised", [
    ({0: 0.5, 2: 0.80, 4: 0.801, 6: 0.80}, 3, HOLDS, 2),  # epoch 2 is within a point of the best, tightly
    ({0: 0.5, 2: 0.6, 4: 0.7, 6: 0.8}, 3, FAILS, 6),  # every earlier checkpoint is worse: only the last will do
    ({0: 0.5, 2: 0.78, 4: 0.80}, 1, INCONCLUSIVE, 2),  # one seed: within ±0.05 of the best, but not a point
])
def test_checkpoint_advice_verdicts(scores, seeds, verdict, advised):
    row = claims.checkpoint_advice({"checkpoints": checkpoint_rows(scores, seeds)})
    assert len(row) == 1 and row["verdict"].iloc[0] == verdict, row["statistic"].iloc[0]
    assert row["statistic"].iloc[0].startswith(f"advice: fine-tune from epoch {advised},")
    assert "An earlier pre-training checkpoint" in claims.findings({"checkpoints": checkpoint_rows(scores, seeds)})[
        "claim"].str.cat()
