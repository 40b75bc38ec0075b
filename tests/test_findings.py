"""The findings table: each claim's verdict branches (holds / does not hold /
inconclusive) on constructed study tables in the real column layout (built by the real
analysis functions where that is cheap), and no row where a table is missing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from transferscope.analysis import (
    barrier,
    checkpoint_table,
    compare_representations,
    feature_reuse_table,
    mistakes,
    param_distance,
)
from transferscope.analysis import claims as f
from transferscope.models import NETWORK

TARGET = "real"
HOLDS, FAILS, INCONCLUSIVE = f.VERDICTS


def only_row(frame: pd.DataFrame) -> pd.Series:
    assert len(frame) == 1, frame
    row = frame.iloc[0]
    assert row["target"] == TARGET and row["verdict"] in f.VERDICTS and row["rule"] and row["statistic"]
    return row


# ----------------------------------------------------------------- runs (Sec. 3.1)
def run_row(role: str, seed: int, score: float, **extra) -> dict:
    """One row of collect_results' runs table (meta + summarize_run)."""
    return {"role": role, "target": TARGET, "seed": seed, "permutation_seed": math.nan,
            "from_epoch": 3.0 if role == "P-T" else math.nan, "job": f"finetune-{role}{seed}", "kind": "finetune",
            "block": "32", "best_epoch": 2, "final_score": score, "best_score": score, "optimization_speed": score,
            "epochs": 4, "metric": "accuracy", "speed_series": "clean", **extra}


def runs_table(pt, rit) -> pd.DataFrame:
    """Main runs with the given scores, plus a pre-training row and P-T runs of the shuffle
    and checkpoint sweeps whose scores would change every verdict if they were counted."""
    rows = [run_row("P-T", seed, score) for seed, score in enumerate(pt)]
    rows += [run_row("RI-T", seed, score) for seed, score in enumerate(rit)]
    rows += [run_row("P", 0, 0.5, kind="pretrain", target=None, from_epoch=math.nan),
             run_row("P-T", 0, 0.0, permutation_seed=0.0, block="4"), run_row("P-T", 0, 0.0, from_epoch=1.0)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("claim", [f.pt_ends_higher, f.pt_optimizes_faster])
@pytest.mark.parametrize("pt, rit, verdict", [
    ((0.80, 0.82, 0.81), (0.60, 0.62, 0.61), HOLDS),
    ((0.700, 0.701, 0.699), (0.700, 0.702, 0.698), FAILS),  # tight interval around 0: no advantage
    ((0.60, 0.62, 0.61), (0.80, 0.82, 0.81), FAILS),
    ((0.80, 0.60), (0.70, 0.65), INCONCLUSIVE),
    ((0.80,), (0.70,), HOLDS),  # one seed: 0.10 > the 0.05 margin
    ((0.72,), (0.70,), INCONCLUSIVE),  # one seed: 0.02 is within it
])
def test_pt_beats_rit_over_seeds(claim, pt, rit, verdict):
    row = only_row(claim({"runs": runs_table(pt, rit)}))
    assert row["verdict"] == verdict
    assert row["value"] == pytest.approx(np.mean(pt) - np.mean(rit))
    assert row["n"] == min(len(pt), len(rit)) and row["n_kind"] == "seeds per role"
    if len(pt) > 1:
        assert row["ci_low"] < row["value"] < row["ci_high"] and 0 <= row["p_value"] <= 1
    else:
        assert math.isnan(row["ci_low"]) and "margin" in row["statistic"]


def test_pt_runs_from_brought_weights_are_the_main_runs():
    """P brought as weights: no P-T run has a pre-training epoch, and all of them count."""
    rows = [run_row("P-T", seed, score, from_epoch=math.nan) for seed, score in enumerate((0.80, 0.82, 0.81))]
    rows += [run_row("RI-T", seed, score) for seed, score in enumerate((0.60, 0.62, 0.61))]
    row = only_row(f.pt_ends_higher({"runs": pd.DataFrame(rows)}))
    assert row["verdict"] == HOLDS and row["n"] == 3


def test_welch_interval_matches_scipy():
    a, b = [0.8, 0.82, 0.81, 0.86], [0.6, 0.62, 0.7]
    estimate = f._difference(a, b)
    test = stats.ttest_ind(a, b, equal_var=False)
    low, high = test.confidence_interval(0.95)
    assert (estimate.ci_low, estimate.ci_high, estimate.p_value) == pytest.approx((low, high, test.pvalue))


# ----------------------------------------------------------------- mistakes (real mistakes())
class Readout(nn.Module):
    """Returns the logits stored in channel ``channel`` of its inputs."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x[:, self.channel, 0, :]


def mistakes_table(wrong: dict[str, np.ndarray], n_classes: int = 4) -> pd.DataFrame:
    """mistakes() of models that err exactly where ``wrong`` says, as the study stores it."""
    targets = np.random.default_rng(1).integers(0, n_classes, len(next(iter(wrong.values()))))
    logits = [nn.functional.one_hot(torch.as_tensor(np.where(mask, (targets + 1) % n_classes, targets)), n_classes)
              for mask in wrong.values()]
    x, y = torch.stack(logits, 1).float()[:, :, None, :], torch.as_tensor(targets)
    models = {name: Readout(channel) for channel, name in enumerate(wrong)}
    loader = [(x[i:i + 100], y[i:i + 100]) for i in range(0, len(y), 100)]
    return mistakes(models, loader, n_bootstrap=200).assign(target=TARGET, job="mistakes-1")


def first(n: int, total: int) -> np.ndarray:
    return np.arange(total) < n


def scattered(p: float, total: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(total) < p


def test_mistakes_verdicts():
    n = 400
    shared = {"P-T:s0": first(60, n), "P-T:s1": first(55, n) | (np.arange(n) >= n - 5)}
    scattered_rit = {"RI-T:s0": scattered(0.3, n, 2), "RI-T:s1": scattered(0.3, n, 3)}
    holds = only_row(f.pt_pairs_share_mistakes({"mistakes": mistakes_table(shared | scattered_rit)}))
    assert holds["verdict"] == HOLDS and holds["ci_low"] > 0 and holds["n"] == n and holds["n_kind"] == "examples"
    assert "P-T/RI-T" in holds["statistic"] or "RI-T/RI-T" in holds["statistic"]
    # the RI-T models err together, the P-T models apart
    swapped = {"P-T:s0": scattered(0.3, n, 2), "P-T:s1": scattered(0.3, n, 3), "RI-T:s0": first(60, n),
               "RI-T:s1": first(60, n)}
    fails = only_row(f.pt_pairs_share_mistakes({"mistakes": mistakes_table(swapped)}))
    assert fails["verdict"] == FAILS and fails["ci_high"] < 0 and "RI-T/RI-T" in fails["statistic"]
    few = {name: scattered(0.3, 60, seed) for seed, name in enumerate(["P-T:s0", "P-T:s1", "RI-T:s0", "RI-T:s1"])}
    unsure = only_row(f.pt_pairs_share_mistakes({"mistakes": mistakes_table(few)}))
    assert unsure["verdict"] == INCONCLUSIVE and unsure["ci_low"] < 0 < unsure["ci_high"]
    assert f.pt_pairs_share_mistakes({"mistakes": mistakes_table({k: shared[k] for k in shared})}).empty


def test_one_seed_final_score_needs_mcnemar_to_agree():
    runs = {"runs": runs_table((0.80,), (0.70,))}
    agreeing = mistakes_table({"P-T:s0": first(80, 400), "RI-T:s0": first(120, 400)})
    row = only_row(f.pt_ends_higher(runs | {"mistakes": agreeing}))
    assert row["verdict"] == HOLDS and row["p_value"] < 0.05 and row["n_kind"].startswith("examples")
    # the same scores, but on the test examples the two models' error rates do not differ
    tied = mistakes_table({"P-T:s0": first(100, 400), "RI-T:s0": np.arange(400) >= 300})
    row = only_row(f.pt_ends_higher(runs | {"mistakes": tied}))
    assert row["verdict"] == INCONCLUSIVE and row["p_value"] > 0.5 and "McNemar" in row["statistic"]


# ----------------------------------------------------------------- block shuffle (real feature_reuse_table())
def sweep(final: dict[str, tuple], speed: dict[str, tuple] | None = None) -> dict[str, pd.DataFrame]:
    """feature_reuse_table() of runs whose P-T/RI-T scores per block are ``(pt seeds, rit seeds)``."""
    rows = []
    for block, (pt, rit) in final.items():
        speeds = (speed or {}).get(block, (pt, rit))
        for role, scores, fast in (("P-T", pt, speeds[0]), ("RI-T", rit, speeds[1])):
            rows += [{"target": TARGET, "metric": "accuracy", "role": role, "block_size": block, "seed": seed,
                      "final_score": score, "optimization_speed": fast[seed]} for seed, score in enumerate(scores)]
    return {"feature_reuse": feature_reuse_table(pd.DataFrame(rows))}


STAR = ((0.2, 0.2, 0.2), (0.2, 0.2, 0.2))


@pytest.mark.parametrize("unshuffled, small, verdict, value", [
    (((0.80, 0.81, 0.79), (0.50, 0.52, 0.48)), ((0.60, 0.61, 0.59), (0.55, 0.56, 0.54)), HOLDS, 0.25),
    (((0.800, 0.801, 0.799), (0.50, 0.501, 0.499)), ((0.60, 0.601, 0.599), (0.30, 0.301, 0.299)), FAILS, 0.0),
    (((0.9, 0.7, 0.8), (0.5, 0.6, 0.4)), ((0.7, 0.5, 0.6), (0.4, 0.6, 0.3)), INCONCLUSIVE, 0.4 / 3),
    (((0.80,), (0.50,)), ((0.60,), (0.50,)), HOLDS, 0.2),  # one seed: beyond the margin
    (((0.80,), (0.50,)), ((0.60,), (0.33,)), INCONCLUSIVE, 0.03),
])
def test_advantage_shrinks_with_block_size(unshuffled, small, verdict, value):
    row = only_row(f.advantage_shrinks_with_block_size(sweep({"32": unshuffled, "4": small, "8": unshuffled,
                                                                "*": STAR})))
    assert row["verdict"] == verdict and row["value"] == pytest.approx(value, abs=1e-9)
    assert "block 4" in row["statistic"]  # the smallest block size, not '*'
    assert f.advantage_shrinks_with_block_size(sweep({"32": unshuffled})).empty


@pytest.mark.parametrize("pt, rit, verdict", [
    ((0.50, 0.52, 0.51), (0.30, 0.31, 0.29), HOLDS),
    ((0.300, 0.301, 0.299), (0.300, 0.302, 0.298), FAILS),
    ((0.5, 0.2, 0.35), (0.3, 0.4, 0.2), INCONCLUSIVE),
])
def test_speed_advantage_on_shuffled_pixels(pt, rit, verdict):
    scores = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    row = only_row(f.speed_advantage_on_shuffled_pixels(sweep({"32": scores, "*": scores}, {"*": (pt, rit)})))
    assert row["verdict"] == verdict and row["value"] == pytest.approx(np.mean(pt) - np.mean(rit))
    assert f.speed_advantage_on_shuffled_pixels(sweep({"32": scores, "4": scores})).empty


# ----------------------------------------------------------------- CKA (Table 1)
PAIR_MODELS = {"P-T&P-T": lambda i: (f"P-T:s{i}", f"P-T:s{i + 1}"), "P-T&P": lambda i: ("P", f"P-T:s{i}"),
               "P-T&RI-T": lambda i: (f"P-T:s{i}", f"RI-T:s{i}"), "RI-T&RI-T": lambda i: (f"RI-T:s{i}", f"RI-T:s{i + 1}")}


def cka_table(values: dict[str, dict[str, list[float]]], floors: dict[str, float] | None = None) -> pd.DataFrame:
    """compare_representations() rows: ``values[module][pair type]`` = CKA of each pair;
    cross-module rows of CKA 0.99 (ignored), and floor rows against the model 'RI'."""
    rows = []
    settings = {"estimator": "minibatch", "kernel": "linear", "debiased": True, "n_examples": 256, "batch_size": 64,
                "bandwidth": math.nan, "bandwidth_rule": None, "target": TARGET, "job": "cka-1"}
    for module, pairs in values.items():
        for pair, cka_values in pairs.items():
            for i, value in enumerate(cka_values):
                a, b = PAIR_MODELS[pair](i)
                rows.append({"model_a": a, "model_b": b, "module_a": module, "module_b": module, "cka": value})
                rows.append({"model_a": a, "model_b": b, "module_a": module, "module_b": "other", "cka": 0.99})
        if floors and module in floors:
            rows.append({"model_a": "P-T:s0", "model_b": f.FLOOR_MODEL, "module_a": module, "module_b": module,
                         "cka": floors[module]})
    return pd.DataFrame(rows).assign(**settings)


TABLE1 = {"conv1": {"P-T&P-T": [0.80, 0.82], "P-T&P": [0.60, 0.62], "P-T&RI-T": [0.30, 0.32], "RI-T&RI-T": [0.2, 0.22]},
          "layer2": {"P-T&P-T": [0.60, 0.61], "P-T&P": [0.40, 0.42], "P-T&RI-T": [0.10, 0.12], "RI-T&RI-T": [0.1, 0.1]}}


def test_cka_most_similar_pair_holds_without_floor_rows():
    row = only_row(f.pt_pairs_most_similar({"cka": cka_table(TABLE1)}))
    assert row["verdict"] == HOLDS and "no chance-floor rows" in row["statistic"]
    assert row["value"] == pytest.approx(0.195) and "P-T&P at layer2" in row["statistic"]
    assert row["n"] == 2 and row["ci_low"] > 0


def test_cka_does_not_hold_where_another_pair_is_more_similar():
    values = {**TABLE1, "layer2": {**TABLE1["layer2"], "P-T&RI-T": [0.90, 0.91]}}
    per_module = f.cka_module_verdicts(cka_table(values)).set_index("module")
    assert per_module.loc["conv1", "verdict"] == HOLDS and per_module.loc["layer2", "verdict"] == FAILS
    assert per_module.loc["layer2", "other"] == "P-T&RI-T"
    assert only_row(f.pt_pairs_most_similar({"cka": cka_table(values)}))["verdict"] == FAILS


def test_cka_inconclusive_where_the_chance_floor_is_close():
    frame = cka_table(TABLE1, floors={"conv1": 0.75, "layer2": 0.2})
    per_module = f.cka_module_verdicts(frame).set_index("module")
    assert per_module.loc["conv1", "verdict"] == INCONCLUSIVE and per_module.loc["conv1", "floor"] == 0.75
    assert per_module.loc["layer2", "verdict"] == HOLDS
    row = only_row(f.pt_pairs_most_similar({"cka": frame}))
    assert row["verdict"] == INCONCLUSIVE and "within 0.1 of P-T&P-T at conv1" in row["statistic"]
    low_floors = only_row(f.pt_pairs_most_similar({"cka": cka_table(TABLE1, floors={"conv1": 0.3})}))
    assert low_floors["verdict"] == HOLDS and "floors below" in low_floors["statistic"]


def test_cka_one_pair_per_type_decides_only_beyond_the_margin():
    close = {"layer1": {"P-T&P-T": [0.50], "P-T&RI-T": [0.47]}}
    assert only_row(f.pt_pairs_most_similar({"cka": cka_table(close)}))["verdict"] == INCONCLUSIVE
    far = {"layer1": {"P-T&P-T": [0.50], "P-T&RI-T": [0.40]}}
    assert only_row(f.pt_pairs_most_similar({"cka": cka_table(far)}))["verdict"] == HOLDS


def test_findings_read_real_compare_representations_output():
    """The real CKA table (with a fresh-network floor named 'RI') goes through."""
    torch.manual_seed(0)
    names = ["P", "P-T:s0", "P-T:s1", "RI-T:s0", "RI-T:s1", f.FLOOR_MODEL]
    models = {name: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)) for name in names}
    loader = [(torch.randn(32, 6), torch.zeros(32)) for _ in range(2)]
    cka = compare_representations(models, loader).assign(target=TARGET, job="cka-1")
    row = only_row(f.findings({"cka": cka}))
    assert row["claim"].startswith("P-T/P-T is the most similar pair") and np.isfinite(row["value"])
    assert set(f.cka_module_verdicts(cka)["module"]) == {"0", "2"}
    assert f.cka_module_verdicts(cka)["floor"].notna().all()


# ----------------------------------------------------------------- distance (real param_distance())
def distance_table(pt_scale: float, rit_scale: float, seeds=(0, 1)) -> pd.DataFrame:
    """param_distance() of every pair of P and its perturbations, as the distance job writes it."""
    generator = torch.Generator().manual_seed(0)
    base = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
    models = {"P": base}
    for kind, scale in (("P-T", pt_scale), ("RI-T", rit_scale)):
        for seed in seeds:
            moved = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
            with torch.no_grad():
                for mine, theirs in zip(moved.parameters(), base.parameters()):
                    mine.copy_(theirs + scale * torch.randn(theirs.shape, generator=generator))
            models[f"{kind}:s{seed}"] = moved
    names = list(models)
    frames = [param_distance(models[a], models[b]).assign(model_a=a, model_b=b)
              for i, a in enumerate(names) for b in names[i + 1:]]
    return pd.concat(frames, ignore_index=True).assign(target=TARGET, job="distance-1")


@pytest.mark.parametrize("pt_scale, rit_scale, seeds, verdict", [
    (0.01, 0.5, (0, 1), HOLDS),  # one pair per same-kind type: ratio ≈ 50 > 1.5
    (0.01, 0.5, (0, 1, 2), HOLDS),
    (0.5, 0.01, (0, 1), FAILS),
    (0.01, 0.012, (0, 1), INCONCLUSIVE),  # ratio ≈ 1.2: within the single-pair factor
])
def test_pt_models_closer(pt_scale, rit_scale, seeds, verdict):
    row = only_row(f.pt_models_closer({"distance": distance_table(pt_scale, rit_scale, seeds)}))
    assert row["verdict"] == verdict
    assert row["value"] == pytest.approx(rit_scale / pt_scale, rel=0.3)
    if len(seeds) == 3:
        assert 1 < row["ci_low"] < row["value"] < row["ci_high"]


# ----------------------------------------------------------------- barriers and basins
def curve(bump: float, metric: str = "accuracy", n_examples: int = 1000) -> pd.DataFrame:
    """An interpolate() curve whose score dips by ``bump`` at λ = 0.5 (and is lower outside [0, 1])."""
    alphas = np.round(np.arange(-0.2, 1.21, 0.1), 10)
    score = 0.8 - bump * np.sin(np.pi * np.clip(alphas, 0, 1)) - 0.3 * ((alphas < 0) | (alphas > 1))
    return pd.DataFrame({"alpha": alphas, "split": "test", "loss": 1 - score, "score": score, "metric": metric,
                         "n_examples": n_examples, "bn": "follow", "recalibration_batches": 0, "batched": False})


def interpolation_tables(bumps: dict[tuple[str, str], float], metric: str = "accuracy") -> dict[str, pd.DataFrame]:
    """The interpolation job's two tables: the curves and their barriers."""
    curves, barriers = [], []
    for (a, b), bump in bumps.items():
        one = curve(bump, metric).assign(model_a=a, model_b=b)
        curves.append(one)
        barriers.append({"model_a": a, "model_b": b, "bn": "follow", **barrier(one)})
    return {"interpolation": pd.concat(curves, ignore_index=True).assign(target=TARGET, job="interp-1"),
            "interpolation_barriers": pd.DataFrame(barriers).assign(target=TARGET, job="interp-1")}


@pytest.mark.parametrize("bump, verdict_pt, verdict_rit", [
    (0.005, HOLDS, FAILS),  # binomial half-width ≈ 0.025 at 1,000 examples
    (0.2, FAILS, HOLDS),
    (0.05, INCONCLUSIVE, INCONCLUSIVE),
])
def test_barrier_verdicts_for_one_pair(bump, verdict_pt, verdict_rit):
    # a best/final pair of one run with a huge barrier is not a pair of two solutions
    pt = interpolation_tables({("P-T:s0", "P-T:s1"): bump, ("P-T:s0:best", "P-T:s0"): 0.5})
    row = only_row(f.no_barrier_between_pt(pt))
    assert row["verdict"] == verdict_pt and row["value"] == pytest.approx(bump, abs=1e-9)
    assert row["n"] == 1000 and row["ci_high"] - row["ci_low"] > 0.04
    rit = interpolation_tables({("RI-T:s0", "RI-T:s1"): bump})
    assert only_row(f.barrier_between_rit(rit))["verdict"] == verdict_rit
    assert f.barrier_between_rit(pt).empty and f.no_barrier_between_pt(rit).empty


def test_barrier_over_several_pairs_and_without_curves():
    several = interpolation_tables({("P-T:s0", "P-T:s1"): 0.01, ("P-T:s1", "P-T:s2"): 0.012,
                                    ("P-T:s2", "P-T:s3"): 0.011})
    row = only_row(f.no_barrier_between_pt(several))
    assert row["verdict"] == HOLDS and row["n"] == 3 and row["n_kind"] == "model pairs"
    auc = interpolation_tables({("P-T:s0", "P-T:s1"): 0.04}, metric="auc")  # no binomial error: ±0.02
    assert only_row(f.no_barrier_between_pt(auc))["verdict"] == INCONCLUSIVE
    barriers_only = {"interpolation_barriers": interpolation_tables({("P-T:s0", "P-T:s1"): 0.01})
                     ["interpolation_barriers"]}
    row = only_row(f.no_barrier_between_pt(barriers_only))
    assert row["verdict"] == HOLDS and math.isnan(row["ci_low"])


def basin_table(in_basin: dict[tuple[str, str], bool]) -> pd.DataFrame:
    """basin() rows (two σ per pair) with model_a/model_b, as the basin job writes them."""
    rows = []
    for (a, b), inside in in_basin.items():
        for sigma in (0.01, 0.02):
            rows.append({"sigma": sigma, "delta": sigma * 100, "holds": inside, "mu": 0.5, "epsilon": 0.01,
                         "basin_delta": 1.0 if inside else math.nan, "basin_delta_exact": inside,
                         "in_basin": inside, "n_parameters": 10_000, "bn": "follow", "split": "test",
                         "model_a": a, "model_b": b})
    return pd.DataFrame(rows).assign(target=TARGET, job="basin-1")


@pytest.mark.parametrize("outcomes, verdict, value", [
    ((True, True), HOLDS, 1.0), ((False, False), FAILS, 0.0), ((True, False), INCONCLUSIVE, 0.5)])
def test_pt_pairs_in_one_basin(outcomes, verdict, value):
    pairs = {(f"P-T:s{i}", f"P-T:s{i + 1}"): inside for i, inside in enumerate(outcomes)}
    rit = {("RI-T:s0", "RI-T:s1"): not outcomes[0]}
    row = only_row(f.pt_pairs_in_one_basin({"basin": basin_table(pairs | rit)}))
    assert row["verdict"] == verdict and row["value"] == value and row["n"] == 2
    assert row["ci_low"] <= value <= row["ci_high"]


# ----------------------------------------------------------------- criticality
MODULES = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]


def criticality_table(values: list[float]) -> pd.DataFrame:
    """network_criticality() rows of a P-T model (direct path from θ_F) with ``values``, and
    rows that must be ignored: another path, an RI-T model, the network total."""
    rows = []
    for model, path, mus in (("P-T:s0", "direct", values), ("P-T:s0", "optimization", values[::-1]),
                             ("RI-T:s0", "direct", values[::-1])):
        for module, mu in zip(MODULES + [NETWORK], list(mus) + [sum(mus)]):
            rows.append({"module": module, "criticality": mu, "alpha": 0.5, "sigma": 0.1, "path": path,
                         "start": "final", "noise": "gaussian", "threshold": 0.01, "samples": 4, "method": "bisection",
                         "n_examples": 64, "bn": "follow", "model": model})
    return pd.DataFrame(rows).assign(target=TARGET, job="criticality-1")


@pytest.mark.parametrize("values, verdict", [
    ([1, 2, 3, 4, 5, math.inf], HOLDS),  # rho = 1, exact p = 1/720
    ([6, 5, 4, 3, 2, 1], FAILS),
    ([3, 1, 2, 6, 4, 5], INCONCLUSIVE),  # rho = 0.66, p ≈ 0.09
])
def test_criticality_grows_with_depth(values, verdict):
    row = only_row(f.criticality_grows_with_depth({"criticality": criticality_table(values)}))
    assert row["verdict"] == verdict and row["n"] == len(MODULES) and row["n_kind"] == "modules"
    if verdict == HOLDS:
        assert row["value"] == pytest.approx(1.0) and row["p_value"] == pytest.approx(1 / 720)


# ----------------------------------------------------------------- checkpoints (real checkpoint_table())
def checkpoints(final: dict[int, tuple], source: list[float]) -> dict[str, pd.DataFrame]:
    rows = [{"target": TARGET, "metric": "accuracy", "checkpoint_epoch": epoch, "seed": seed, "final_score": score,
             "optimization_speed": score} for epoch, scores in final.items() for seed, score in enumerate(scores)]
    metrics = pd.DataFrame({"epoch": range(len(source)), "test_loss": 1.0, "test_accuracy": source})
    return {"checkpoints": checkpoint_table(pd.DataFrame(rows), metrics)}


SOURCE = [0.1, 0.3, 0.5, 0.55, 0.6, 0.65, 0.7]


@pytest.mark.parametrize("last, verdict", [
    ((0.750, 0.751, 0.749), HOLDS),
    ((0.850, 0.851, 0.849), FAILS),
    ((0.9, 0.6, 0.75), INCONCLUSIVE),
])
def test_checkpoint_plateau(last, verdict):
    final = {0: (0.3, 0.31, 0.29), 2: (0.7, 0.71, 0.69), 4: (0.750, 0.751, 0.749), 6: last}
    row = only_row(f.checkpoint_plateau(checkpoints(final, SOURCE)))
    assert row["verdict"] == verdict and "from epoch 6 minus from epoch 4" in row["statistic"]
    assert row["value"] == pytest.approx(np.mean(last) - 0.75)


def test_checkpoint_plateau_needs_a_rising_source():
    final = {0: (0.3,), 2: (0.7,), 4: (0.7,)}
    row = only_row(f.checkpoint_plateau(checkpoints(final, [0.7] * 5)))
    assert row["verdict"] == INCONCLUSIVE and "no plateau to test" in row["statistic"]
    one_seed = only_row(f.checkpoint_plateau(checkpoints({0: (0.3,), 2: (0.7,), 4: (0.9,)}, [0.1, 0.5, 0.6, 0.6, 0.7])))
    assert one_seed["verdict"] == FAILS and math.isnan(one_seed["ci_low"])  # 0.2 beyond tolerance + margin


# ----------------------------------------------------------------- the table
def test_findings_has_one_row_per_testable_claim_in_order():
    tables = {"runs": runs_table((0.8, 0.82), (0.6, 0.61)), "criticality": criticality_table([1, 2, 3, 4, 5, 6])}
    table = f.findings(tables)
    assert list(table.columns) == f.COLUMNS
    assert list(table["claim"]) == ["P-T ends higher than RI-T", "P-T optimizes faster than RI-T",
                                    "Criticality grows with depth"]
    assert list(table["section"]) == ["Sec. 3.1, Fig. 2", "Sec. 3.1, Fig. 2", "Sec. 3.4, Fig. 6"]
    pd.testing.assert_frame_equal(table, f.findings(tables))  # deterministic
    empty = f.findings({"runs": runs_table((0.8,), (0.6,)).iloc[0:0]})
    assert empty.empty and list(empty.columns) == f.COLUMNS


def test_every_claim_without_its_table_gives_no_row():
    for claim in f.CLAIMS:
        assert claim({}).empty, claim.__name__
    assert f.findings({}).empty


def test_a_table_without_a_needed_column_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"the runs table lacks columns \['optimization_speed'\]"):
        f.findings({"runs": runs_table((0.8,), (0.6,)).drop(columns="optimization_speed")})
