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
from transferscope.io import read_table
from transferscope.models import Partition
from transferscope.models.registry import build_model
from transferscope.report import sections
from transferscope.report.page import Section
from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study.executors import LocalExecutor
from transferscope.study.results import collect_results
from transferscope.study.store import Store
from transferscope.train import TrainingRun
from transferscope.train import trainer as trainer_module
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


def test_freeze_zero_keeps_the_run_identity(monkeypatch):
    """A run folder written before freeze existed resumes: at their defaults, freeze and
    modules are not part of the identity that run_identity hashes."""
    hashed = []
    monkeypatch.setattr(trainer_module, "content_hash", lambda fields: hashed.append(fields) or "digest")
    run_identity(TrainConfig(epochs=3))
    run_identity(TrainConfig(epochs=3, freeze=1, modules=["conv1"]))
    assert not {"freeze", "modules"} & set(hashed[0])
    assert (hashed[1]["freeze"], hashed[1]["modules"]) == (1, ["conv1"])


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


# ----------------------------------------------------------------- the study
RECIPE = {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32, "device": "cpu"}
OFF = ("cka", "mistakes", "interpolation", "basin", "criticality", "spectrum", "distance")


def study(**extra) -> dict:
    data = {"kind": "synthetic", "image_size": 16, "n_train": 64, "n_test": 64}
    return {"name": "freeze", "model": {"arch": "small_resnet", "width": 4},
            "source": {"data": {**data, "name": "source", "num_classes": 4}, "recipe": RECIPE},
            "targets": [{"label": "real", "data": {**data, "name": "real"}},
                        {"label": "sketch", "data": {**data, "name": "sketch"}}],
            "finetune": RECIPE, "scratch": RECIPE, "seeds": [0, 1],
            "analyses": {**{name: {"enabled": False} for name in OFF}, "rewind": {"max_examples": 64}}, **extra}


def plan(spec: dict) -> list:
    return build_plan(StudySpec.model_validate(spec))


def test_the_study_plans_frozen_p_t_runs():
    jobs = plan(study(freeze={"units": [0, 1, 3], "targets": ["real"]}))
    frozen = [job for job in jobs if job.kind == "frozen"]
    assert sorted((job.target, job.config["meta"]["seed"], job.config["meta"]["freeze"]) for job in frozen) == [
        ("real", seed, k) for seed in (0, 1) for k in (1, 3)]  # k = 0 is the main P-T run of each seed
    for job in frozen:
        config = TrainConfig.model_validate(job.config["train"])
        assert config.freeze == job.config["meta"]["freeze"] and config.modules is None
        assert job.label.endswith(f"freeze={config.freeze}") and job.deps == (job.config["init"]["job"],)
    assert len(jobs) == len(plan(study())) + 4
    assert [job.kind for job in plan(study(freeze=[1], modules=["conv1", "layer1"])) if job.kind == "frozen"] == [
        "frozen"] * 4


def test_auto_plans_every_k_the_partition_allows_and_k_is_checked():
    frozen = {job.config["meta"]["freeze"] for job in plan(study(freeze="auto")) if job.kind == "frozen"}
    assert frozen == {1, 2, 3, 4, 5}  # small_resnet: conv1, layer1..layer4, fc; fc always trains
    modules = {"stem": ["conv1"], "body": ["layer1", "layer2", "layer3", "layer4"]}  # + rest
    jobs = [job for job in plan(study(freeze="auto", modules=modules)) if job.kind == "frozen"]
    assert {job.config["meta"]["freeze"] for job in jobs} == {1, 2}
    assert TrainConfig.model_validate(jobs[0].config["train"]).partition_modules == {
        "stem": ("conv1",), "body": ("layer1", "layer2", "layer3", "layer4")}
    with pytest.raises(ValueError, match=r"k = \[6\] would freeze every unit of the partition \(conv1, layer1, "
                                         r"layer2, layer3, layer4, fc\); the last unit trains, so k is at most 5"):
        plan(study(freeze=[1, 6]))
    with pytest.raises(ValueError, match="freeze.targets names unknown targets"):
        StudySpec.model_validate(study(freeze={"units": [1], "targets": ["clipart"]}))


def test_a_freeze_sweep_keeps_every_other_job_id():
    base = {job.id for job in plan(study())}
    assert base == {job.id for job in plan(study(freeze=[]))}  # the default
    swept = {job.id: job for job in plan(study(freeze=[0, 2]))}
    assert base <= set(swept) and {swept[i].kind for i in set(swept) - base} == {"frozen"}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))


def test_a_study_with_a_freeze_sweep_reports_it(tmp_path):
    spec = StudySpec.model_validate(study(freeze=[0, 1], seeds=[0], targets=study()["targets"][:1]))
    assert run_study(spec, tmp_path, LocalExecutor(progress=False)) == {"done": 5}  # P, P-T, RI-T, frozen, rewind
    jobs = build_plan(spec)
    frozen, pretrain = (next(job for job in jobs if job.kind == kind) for kind in ("frozen", "pretrain"))
    p_weights = TrainingRun(tmp_path / "jobs" / pretrain.id / "run").checkpoint("final")
    final = TrainingRun(tmp_path / "jobs" / frozen.id / "run").checkpoint("final")
    conv1 = [key for key in final if key.startswith("conv1.")]
    assert conv1 and all(torch.equal(final[key], p_weights[key]) for key in conv1)  # P's stem, untouched
    tables = collect_results(spec, Store(tmp_path), jobs)  # also written under results/
    runs, plans = read_table(tmp_path / "results" / "freeze.parquet"), tables["freeze_plan"]
    assert list(runs["freeze"]) == [0, 1] and (runs["final_score_count"] == 1).all()
    assert list(plans["module"]) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert (plans["model"] == "P-T:s0").all() and plans["freeze"].nunique() == 1
    assert "Freezing the leading modules that rewinding recommends keeps the best final score" in set(
        tables["findings"]["claim"])
    section = Section("freeze", "Freeze plans checked by runs")
    sections.freezing(section, tables, spec=spec)
    assert [name for name, _ in section.figures] == ["freeze"] and len(section.tables) == 2 and not section.missing
    assert f"rewinding recommends freezing k = {plans['freeze'].iloc[0]}" in section.caption
    assert ("freeze", "Freeze plans checked by runs", sections.freezing) in sections.SECTIONS
    empty = Section("freeze", "Freeze plans checked by runs")
    sections.freezing(empty, {}, spec=spec)
    assert "recommendation comes from the rewind analysis" in empty.missing and not empty.not_run  # asked for
