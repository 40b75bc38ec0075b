"""Several sources in one study (issue 15): the ``sources:`` form, one plan whose shared
jobs (RI-T runs) run once, results tagged by source, the comparison table and its
verdicts checked against a hand computation, and a report with a block per source."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from scipy import stats
from test_byo import OFF, RECIPE, TARGET, weights_file

from transferscope.analysis.claims import FAILS, HOLDS, INCONCLUSIVE
from transferscope.analysis.source_comparison import RANDOM_INIT, best_source_rows, compare_sources
from transferscope.report import build_report
from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study.executors import LocalExecutor
from transferscope.study.runner import plan_table


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))


def two_sources(folder, **changes) -> dict:
    sources = [{"label": "early", "weights": str(weights_file(folder / "a.safetensors", 0))},
               {"label": "late", "weights": str(weights_file(folder / "b.safetensors", 1))}]
    spec = {"name": "two", "model": {"arch": "small_resnet", "width": 4}, "sources": sources, "targets": [TARGET],
            "finetune": {**RECIPE, "lr": 0.01}, "scratch": RECIPE, "seeds": [0, 1],
            "analyses": OFF | {"distance": {}, "cka": {"max_examples": 32, "batch_size": 16}}}
    return spec | changes


# ------------------------------------------------------------------ the study file and the plan
def test_source_and_sources_are_exclusive_and_labels_unique(tmp_path):
    spec = two_sources(tmp_path)
    with pytest.raises(ValueError, match="either source .* or sources"):
        StudySpec.model_validate(spec | {"source": {"weights": spec["sources"][0]["weights"]}})
    with pytest.raises(ValueError, match="needs source"):
        StudySpec.model_validate({k: v for k, v in spec.items() if k != "sources"})
    with pytest.raises(ValueError, match="source labels must be unique"):
        StudySpec.model_validate(spec | {"sources": [spec["sources"][0]] * 2})
    with pytest.raises(ValueError, match="not 'RI-T'"):
        StudySpec.model_validate(spec | {"sources": [spec["sources"][0] | {"label": "RI-T"}]})


def test_each_source_is_validated_as_a_one_source_study(tmp_path):
    spec = two_sources(tmp_path, checkpoints={"epochs": [0]})
    with pytest.raises(ValueError, match="source 'early'.*checkpoints.epochs"):
        StudySpec.model_validate(spec)


def test_rit_runs_are_shared_and_pt_runs_are_per_source(tmp_path):
    jobs = build_plan(StudySpec.model_validate(two_sources(tmp_path)))
    ids = [job.id for job in jobs]
    assert len(ids) == len(set(ids))
    runs = [job for job in jobs if job.kind == "finetune"]
    rit = [job for job in runs if job.config["meta"]["role"] == "RI-T"]
    pt = [job for job in runs if job.config["meta"]["role"] == "P-T"]
    assert len(rit) == 2 and all(not job.label.startswith("[") for job in rit)  # once, for both sources
    assert sorted(job.label.split("]")[0] for job in pt) == ["[early", "[early", "[late", "[late"]
    one = two_sources(tmp_path)
    single = build_plan(StudySpec.model_validate(
        {k: v for k, v in one.items() if k != "sources"} | {"source": {"weights": one["sources"][0]["weights"]}}))
    assert {job.id for job in single} <= set(ids)  # the first source's jobs are those of its own study


# ------------------------------------------------------------------ the comparison, by hand
def _tables(final: dict[str, list[float]], floor: list[float]) -> dict[str, dict[str, pd.DataFrame]]:
    """Per source a runs table: its P-T seeds' final scores and the shared RI-T seeds."""
    def runs(scores: list[float], role: str) -> pd.DataFrame:
        return pd.DataFrame({"kind": "finetune", "role": role, "seed": range(len(scores)), "permutation_seed": np.nan,
                             "from_epoch": np.nan, "metric": "accuracy", "final_score": scores,
                             "optimization_speed": scores, "target": "real"})
    return {label: {"runs": pd.concat([runs(scores, "P-T"), runs(floor, "RI-T")], ignore_index=True)}
            for label, scores in final.items()}


def test_comparison_means_and_the_best_source_verdict_match_a_welch_test():
    per_source = _tables({"a": [0.80, 0.82, 0.81], "b": [0.60, 0.63, 0.61]}, [0.30, 0.31, 0.29])
    table = compare_sources(per_source).set_index("source")
    assert list(table.index) == ["a", "b", RANDOM_INIT]
    assert table.loc["b", "final_score_mean"] == pytest.approx(np.mean([0.60, 0.63, 0.61]))
    assert table.loc["a", "final_score_std"] == pytest.approx(np.std([0.80, 0.82, 0.81], ddof=1))
    rows = pd.DataFrame(best_source_rows(per_source))
    final = rows[rows["claim"] == "a gives the highest final test score"].iloc[0]
    reference = stats.ttest_ind([0.80, 0.82, 0.81], [0.60, 0.63, 0.61], equal_var=False)
    low, high = reference.confidence_interval(0.95)
    assert (final["ci_low"], final["ci_high"]) == pytest.approx((low, high))
    assert final["verdict"] == HOLDS and final["source"] == "a"


@pytest.mark.parametrize(("scores", "verdict"), [
    ({"a": [0.800, 0.801, 0.802], "b": [0.800, 0.8005, 0.8015]}, FAILS),  # a tie within one point
    ({"a": [0.90, 0.70], "b": [0.75, 0.76]}, INCONCLUSIVE),     # seeds too spread to decide
    ({"a": [0.80], "b": [0.70]}, HOLDS),                        # one seed: beyond the 0.05 margin
    ({"a": [0.80], "b": [0.78]}, INCONCLUSIVE)])                # one seed: within it
def test_best_source_verdict_branches(scores, verdict):
    rows = pd.DataFrame(best_source_rows(_tables(scores, [0.1] * len(scores["a"]))))
    assert rows.loc[rows["claim"].str.endswith("final test score"), "verdict"].item() == verdict


# ------------------------------------------------------------------ end to end
def test_two_sources_run_and_report_a_block_per_source(tmp_path):
    spec = StudySpec.model_validate(two_sources(tmp_path))
    counts = run_study(spec, tmp_path / "study", LocalExecutor(progress=False), Console(file=io.StringIO()))
    assert counts == {"done": len(build_plan(spec))}
    build_report(tmp_path / "study")
    results = tmp_path / "study" / "results"
    runs = pd.read_parquet(results / "runs.parquet")
    assert set(runs["source"]) == {"early", "late"}
    rit = runs[runs["role"] == "RI-T"]
    assert rit.groupby("seed")["job"].nunique().eq(1).all()  # one RI-T job per seed, listed under both sources
    comparison = pd.read_parquet(results / "sources.parquet")
    assert list(comparison["source"]) == ["early", "late", RANDOM_INIT]
    assert comparison.loc[comparison["source"] != RANDOM_INIT, ["cka_p_pt", "distance_p_pt"]].notna().all().all()
    findings = pd.read_parquet(results / "findings.parquet")
    assert findings["claim"].str.contains("gives the highest final test score").any()
    assert {"early", "late"} <= set(findings["source"])
    summary = (tmp_path / "study" / "report" / "summary.md").read_text()
    for heading in ("## Findings at a glance", "## Sources compared", "## early: Learning curves",
                    "## late: Parameter distance"):
        assert heading in summary
    html = (tmp_path / "study" / "report" / "index.html").read_text()
    assert 'class="error"' not in html


def test_the_plan_table_shows_source_labels_as_text(tmp_path):
    console = Console(file=io.StringIO(), width=200)
    console.print(plan_table(StudySpec.model_validate(two_sources(tmp_path))))
    assert "[early] P-T real s0" in console.file.getvalue()  # not read as rich markup
