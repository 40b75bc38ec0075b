"""Model soups (Wortsman et al. 2022): weights against a float64 NumPy average of the
members' state dicts, BatchNorm recalibration, scores against evaluating the
hand-averaged model, the greedy recipe on models whose held-out scores are set by
construction, errors, the findings row, and the study's soup jobs (tests/test_study.py runs
one)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from test_study import tiny_spec
from torch import nn

from transferscope.analysis import claims, soup
from transferscope.analysis.soups import soup_model
from transferscope.evaluation import evaluate, recalibrate_batchnorm
from transferscope.models import build_model
from transferscope.report.page import Section
from transferscope.report.sections import soups as soups_section
from transferscope.study import StudySpec, build_plan

HOLDS, FAILS, INCONCLUSIVE = claims.VERDICTS


def _batches(n: int, seed: int, batch: int = 16, multilabel: bool = False) -> list:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=generator)
    y = ((torch.rand(n, 3, generator=generator) < 0.5).float() if multilabel
         else torch.randint(0, 3, (n,), generator=generator))
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _bn_model(seed: int) -> nn.Module:
    """A width-4 small_resnet with its own weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = build_model("small_resnet", 3, width=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.2 * seed, 0.3)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(10 + seed)
    return model.eval()


@pytest.fixture(scope="module")
def members() -> dict[str, nn.Module]:
    return {f"P-T:s{seed}": _bn_model(seed) for seed in range(3)}


@pytest.fixture(scope="module")
def data():
    return _batches(48, seed=0), _batches(32, seed=1)  # evaluation, recalibration (training) data


def _hand_average(models, keys=None) -> dict[str, np.ndarray]:
    """float64 NumPy mean of every floating entry (of ``keys``); the first model's elsewhere."""
    states = [{k: v.detach().numpy().astype(np.float64) for k, v in m.state_dict().items()} for m in models]
    return {key: (np.mean([state[key] for state in states], axis=0)
                  if value.dtype.kind == "f" and (keys is None or key.startswith(keys)) else states[0][key])
            for key, value in ((k, v.numpy()) for k, v in models[0].state_dict().items())}


def _hand_model(models, keys=None) -> nn.Module:
    model = copy.deepcopy(models[0])
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)).to(models[0].state_dict()[k].dtype)
                           for k, v in _hand_average(models, keys).items()})
    return model


def _assert_state(model: nn.Module, expected: dict[str, np.ndarray], skip=()) -> None:
    for key, value in model.state_dict().items():
        if key.endswith(skip):
            continue
        np.testing.assert_allclose(value.numpy().astype(np.float64), expected[key], rtol=1e-6, atol=1e-7, err_msg=key)


# ----------------------------------------------------------------- weights
def test_uniform_soup_is_the_arithmetic_mean_of_the_members(members):
    models = list(members.values())
    averaged = soup_model(members, bn="follow")
    expected = _hand_average(models)
    _assert_state(averaged, expected)
    assert averaged.conv1[1].num_batches_tracked.item() == 10  # an integer count: the first member's


def test_recalibrated_soup_has_the_mean_weights_and_recalibrated_statistics(members, data):
    models = list(members.values())
    _, train = data
    averaged = soup_model(members, recalibration_loader=train)  # auto: the model has BatchNorm
    reference = recalibrate_batchnorm(_hand_model(models), train)
    _assert_state(averaged, _hand_average(models), skip=("running_mean", "running_var", "num_batches_tracked"))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(averaged.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(averaged.conv1[1].running_mean, torch.from_numpy(
        _hand_average(models)["conv1.1.running_mean"]).float())  # recomputed, not averaged


def test_keep_takes_the_first_members_statistics_and_modules_average_only_those_units(members):
    models = list(members.values())
    kept = soup_model(members, bn="keep")
    expected = _hand_average(models)
    first = models[0].state_dict()
    for key, value in kept.state_dict().items():
        wanted = first[key].numpy() if key.endswith(("running_mean", "running_var")) else expected[key]
        np.testing.assert_allclose(value.numpy(), wanted, rtol=1e-6, atol=1e-7, err_msg=key)
    partial = soup_model(members, modules=["conv1", "layer1"], bn="follow")
    _assert_state(partial, _hand_average(models, keys=("conv1.", "layer1.")))
    assert torch.equal(partial.fc.weight, models[0].fc.weight)


# ----------------------------------------------------------------- scores
@pytest.mark.parametrize("bn", ["follow", "recalibrate"])
def test_soup_scores_as_the_hand_averaged_model(members, data, bn):
    models = list(members.values())
    test, train = data
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in members.items()}
    models[1].train()
    frame = soup(members, test, bn=bn, recalibration_loader=train, n_bootstrap=200)
    assert models[1].training and not models[0].training  # modes restored, weights untouched
    for name, model in members.items():
        assert all(torch.equal(v, before[name][k]) for k, v in model.state_dict().items())
    models[1].eval()
    hand = _hand_model(models)
    prepare = (lambda m: recalibrate_batchnorm(copy.deepcopy(m), train)) if bn == "recalibrate" else (lambda m: m)
    expected = evaluate(prepare(hand), test)
    row = frame.set_index("model").loc["soup:uniform"]
    assert row["score"] == pytest.approx(expected["accuracy"]) and row["loss"] == pytest.approx(expected["loss"],
                                                                                              rel=1e-5)
    member_scores = [evaluate(prepare(m), test)["accuracy"] for m in models]
    assert list(frame["model"]) == [*members, "soup:uniform"] and list(frame["score"][:3]) == member_scores
    assert row["gain"] == pytest.approx(row["score"] - np.mean(member_scores))
    assert row["members"] == "P-T:s0, P-T:s1, P-T:s2" and row["n_members"] == 3
    assert set(frame["bn"]) == {bn} and set(frame["metric"]) == {"accuracy"} and set(frame["modules"]) == {"network"}
    assert set(frame["recalibration_batches"].isna()) == {True} and set(frame["n_examples"]) == {48}
    assert frame["gain"][:3].isna().all() and frame["held_out_score"].isna().all()


def test_gain_interval_is_the_bootstrap_of_per_example_differences(members, data):
    test, _ = data
    frame = soup(members, test, bn="follow", n_bootstrap=300, seed=3, confidence=0.9)
    x = torch.cat([x for x, _ in test])
    y = torch.cat([y for _, y in test]).numpy()
    with torch.no_grad():
        right = [(m(x).argmax(1).numpy() == y).astype(float) for m in members.values()]
        soup_right = (_hand_model(list(members.values()))(x).argmax(1).numpy() == y).astype(float)
    differences = soup_right - np.mean(right, axis=0)
    reference = stats.bootstrap((differences,), np.mean, n_resamples=300, confidence_level=0.9, method="percentile",
                                rng=np.random.default_rng(3)).confidence_interval
    row = frame.iloc[-1]
    assert row["gain"] == pytest.approx(differences.mean())
    assert (row["gain_ci_low"], row["gain_ci_high"]) == pytest.approx((reference.low, reference.high))


@pytest.mark.parametrize("multilabel", [False, True])
def test_a_soup_of_copies_scores_as_its_member(multilabel, data):
    model = _bn_model(0)
    test, train = _batches(48, seed=2, multilabel=multilabel), data[1]
    frame = soup({"a": model, "b": copy.deepcopy(model)}, test, recalibration_loader=train, n_bootstrap=50)
    assert frame["score"].nunique() == 1 and frame["metric"].iloc[0] == ("auc" if multilabel else "accuracy")
    assert frame.iloc[-1][["gain", "gain_ci_low", "gain_ci_high"]].tolist() == pytest.approx([0, 0, 0], abs=1e-9)


def test_multilabel_gain_interval_brackets_the_gain():
    test = _batches(48, seed=4, multilabel=True)
    frame = soup([_bn_model(0), _bn_model(1)], test, bn="follow", n_bootstrap=100)
    row = frame.iloc[-1]
    assert list(frame["model"]) == ["0", "1", "soup:uniform"] and row["metric"] == "auc"
    assert row["gain_ci_low"] < row["gain"] < row["gain_ci_high"]


# ----------------------------------------------------------------- the greedy recipe
def _scored(values) -> nn.Module:
    """A linear model on one-hot inputs whose class-1 logit on example j is values[j]
    (class 0: 0): right on j, when every target is 1, exactly where values[j] > 0; a
    soup's logits are the mean of its members'."""
    model = nn.Linear(len(values), 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = torch.tensor(values, dtype=torch.float32)
    return model


GREEDY_MEMBERS = {  # held-out score: the fraction of positive entries
    "c": [-10] * 5 + [1] * 5,  # 0.5
    "a": [1] * 8 + [-1] * 2,  # 0.8: the best
    "e": [1] * 8 + [-1] * 2,  # 0.8: a tie with a, which comes first
    "b": [-5, -5] + [1] * 7 + [-1],  # 0.7, but wrong where a is right: averaging it drops the score
    "d": [-0.5] * 4 + [1] * 4 + [5, 5],  # 0.6, right where a is wrong: averaging it lifts the score to 1
}


def test_greedy_soup_adds_members_in_held_out_order_while_the_score_does_not_drop():
    held_out = [(torch.eye(10), torch.ones(10, dtype=torch.int64))]
    models = {name: _scored(values) for name, values in GREEDY_MEMBERS.items()}
    frame = soup(models, held_out, recipe=["uniform", "greedy"], held_out=held_out, n_bootstrap=50)
    rows = frame.set_index("model")
    assert rows.loc[list(GREEDY_MEMBERS), "held_out_score"].tolist() == [0.5, 0.8, 0.8, 0.7, 0.6]
    greedy = rows.loc["soup:greedy"]
    # a; e (tie, score stays 0.8: added); b (0.6 < 0.8: skipped); d (1.0: added); c (0.5: skipped)
    assert greedy["members"] == "a, e, d" and greedy["n_members"] == 3
    assert greedy["held_out_score"] == 1.0 and greedy["score"] == 1.0
    assert greedy["gain"] == pytest.approx(1.0 - np.mean([0.5, 0.8, 0.8, 0.7, 0.6]))
    assert rows.loc["soup:uniform", "members"] == "c, a, e, b, d" and math.isnan(rows.loc["soup:uniform",
                                                                                          "held_out_score"])


# ----------------------------------------------------------------- errors
def test_errors_name_the_problem_and_the_fix(members, data):
    test, _ = data
    with pytest.raises(ValueError, match="different state-dict entries.*same architecture"):
        soup({"a": _bn_model(0), "wide": build_model("small_resnet", 3, width=8)}, test)
    with pytest.raises(ValueError, match="held_out=<a loader"):
        soup(members, test, recipe="greedy")
    with pytest.raises(ValueError, match="two or more models; got 1 \\(P-T:s0\\)"):
        soup({"P-T:s0": members["P-T:s0"]}, test)
    with pytest.raises(ValueError, match="recipe must be one of 'uniform', 'greedy'"):
        soup(members, test, recipe="mean")
    with pytest.raises(ValueError, match="recalibration_loader"):
        soup(members, test, bn="recalibrate")


# ----------------------------------------------------------------- the findings row
def soup_table(pt: tuple[float, float, float], rit: tuple[float, float, float], groups=("P-T", "RI-T")):
    """A soup job's table: two members and the uniform soup per group, the soups'
    (gain, gain_ci_low, gain_ci_high) as given."""
    rows = []
    for group, (gain, low, high) in zip(("P-T", "RI-T"), (pt, rit)):
        if group not in groups:
            continue
        members = [{"model": f"{group}:s{seed}", "members": f"{group}:s{seed}", "n_members": 1, "score": 0.8,
                    "gain": math.nan, "gain_ci_low": math.nan, "gain_ci_high": math.nan} for seed in (0, 1)]
        soup_row = {"model": "soup:uniform", "members": f"{group}:s0, {group}:s1", "n_members": 2,
                    "score": 0.8 + gain, "gain": gain, "gain_ci_low": low, "gain_ci_high": high}
        rows += [{**row, "group": group} for row in (*members, soup_row)]
    return pd.DataFrame(rows).assign(target="real", metric="accuracy", n_examples=500)


KEEPS, LOSES = (0.01, -0.01, 0.03), (-0.30, -0.35, -0.25)


@pytest.mark.parametrize("pt, rit, verdict, shown", [
    (KEEPS, LOSES, HOLDS, "P-T"),
    ((-0.20, -0.25, -0.15), LOSES, FAILS, "P-T"),  # the P-T soup loses more than the tolerance
    (KEEPS, (-0.01, -0.03, 0.01), FAILS, "RI-T"),  # the RI-T soup keeps its members' score
    ((-0.04, -0.08, 0.0), LOSES, INCONCLUSIVE, "P-T"),  # P-T's interval straddles −0.05
    (KEEPS, (-0.06, -0.10, -0.02), INCONCLUSIVE, "RI-T"),  # so does RI-T's
])
def test_soup_claim_verdicts(pt, rit, verdict, shown):
    found = claims.pt_soups_average({"soup": soup_table(pt, rit)})
    assert len(found) == 1
    row = found.iloc[0]
    assert row["verdict"] == verdict and row["claim"] == "P-T solutions can be averaged; RI-T solutions cannot"
    assert (row["value"], row["ci_low"], row["ci_high"]) == (pt if shown == "P-T" else rit)
    assert row["n"] == 500 and row["n_kind"] == "test examples" and "-0.05" in row["rule"].replace("−", "-")
    assert claims.SOUP_TOLERANCE == 0.05


def test_soup_claim_needs_both_groups_and_is_a_findings_row():
    assert claims.pt_soups_average({"soup": soup_table(KEEPS, LOSES, groups=("P-T",))}).empty
    assert claims.pt_soups_average({}).empty
    findings = claims.findings({"soup": soup_table(KEEPS, LOSES)})
    assert list(findings["claim"]) == ["P-T solutions can be averaged; RI-T solutions cannot"]
    with pytest.raises(ValueError, match="group"):
        claims.pt_soups_average({"soup": soup_table(KEEPS, LOSES).drop(columns="group")})


def test_the_report_section_draws_members_and_soups_or_says_why_not():
    one_seed = Section("soups", "soups")
    soups_section(one_seed, {}, spec=StudySpec.model_validate(tiny_spec(seeds=[0])))
    assert "this study has one: set `seeds` to two or more" in one_seed.missing
    drawn = Section("soups", "soups")
    soups_section(drawn, {"soup": soup_table(KEEPS, LOSES)}, spec=StudySpec.model_validate(tiny_spec()))
    assert not drawn.missing and [name for name, _ in drawn.figures] == ["members"]
    assert "real, P-T: soup:uniform 0.810 vs the members' mean 0.800 (gain +0.010 [-0.010, 0.030])" in drawn.caption
    assert "Findings: “P-T solutions can be averaged; RI-T solutions cannot” holds on real." in drawn.caption


# ----------------------------------------------------------------- the study
@pytest.mark.parametrize("seeds, planned", [([0, 1], 1), ([0], 0)])
def test_the_study_plans_a_soup_job_per_target_with_two_seeds(seeds, planned):
    spec = StudySpec.model_validate(tiny_spec(seeds=seeds))
    jobs = [job for job in build_plan(spec) if job.kind == "soup"]
    assert len(jobs) == planned * len(spec.targets)
    for job in jobs:
        assert set(job.config["models"]) == {f"{kind}:s{seed}" for kind in ("P-T", "RI-T") for seed in seeds}
        assert job.config["settings"]["recalibration_batches"] == 8 and job.config["settings"]["enabled"]
    off = tiny_spec(seeds=seeds)
    off["analyses"]["soup"] = {"enabled": False}
    assert not [job for job in build_plan(StudySpec.model_validate(off)) if job.kind == "soup"]
