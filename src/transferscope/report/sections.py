"""One function per section of the report: each reads the study's result tables, adds
figures, tables and a caption computed from the numbers, or says what is missing. A
section function is called as ``f(section, tables, spec=, store=, jobs=)`` and names the
inputs it reads; ``**_`` takes the others."""

from __future__ import annotations

from typing import Callable

import pandas as pd
import torch

from ..analysis import claims
from ..analysis.feature_reuse import block_size_key
from ..data import ImageSet, load_domain
from ..evaluation import score_metric
from ..models.pretrained import describe_weights
from ..roles import Role
from ..study.plan import source_criticality_needs
from ..study.sanity import identical_models
from .figures import checkpoints as checkpoint_figures
from .figures import cka as cka_figures
from .figures import criticality as criticality_figures
from .figures import distance as distance_figures
from .figures import feature_reuse as reuse_figures
from .figures import findings as findings_figures
from .figures import freeze as freeze_figures
from .figures import landscape as landscape_figures
from .figures import mistakes as mistake_figures
from .figures import names
from .figures import soups as soup_figures
from .figures import sources as source_figures
from .figures import spectrum as spectrum_figures
from .figures import training as training_figures


def _pairs(frame) -> list[tuple[str, str]]:
    """The ``(model_a, model_b)`` pairs of a frame, in order of first appearance."""
    return list(dict.fromkeys(zip(frame["model_a"], frame["model_b"])))


def _not_asked(spec, name: str) -> str:
    """Why ``spec`` makes no table ``name`` and how to ask for it (its analysis is off, its
    block-shuffle, checkpoint or freeze sweep is empty, or it has one seed where the
    analysis pairs seeds), settings in backticks (shown as code); "" when the spec asks for
    it. An analysis that is off says so first, whatever else it lacks."""
    if name in type(spec.analyses).model_fields and not getattr(spec.analyses, name).enabled:
        return f"This study does not run the {name} analysis (set `analyses.{name}.enabled: true` to run it)."
    if name == "feature_reuse" and not spec.shuffle.block_sizes:
        return ("This study does not run the block-shuffle sweep (set `shuffle.block_sizes` in the study, e.g. "
                "`shuffle: {block_sizes: [8, 4, 1]}`, to run it).")
    if name == "checkpoints" and not spec.checkpoints.epochs:
        return ("This study fine-tunes from no pre-training checkpoint: set `checkpoints.epochs` (with brought "
                "weights, also give their trajectory `source.checkpoints` {epoch: weights} and `source.data`, for "
                "each checkpoint's source score).")
    if name == "freeze" and not spec.freeze.units:
        return ("This study does not run the freeze sweep (set `freeze: auto`, or a list of k such as "
                "`freeze: [0, 1, 2]`, to fine-tune P-T with its first k units frozen at P's weights).")
    if name in ("soup", "basin") and len(spec.seeds) < 2:
        holds = ("A soup averages the fine-tuned models of several seeds, and this study has one" if name == "soup"
                 else "A basin holds two fine-tuned models of one kind (P-T and P-T, RI-T and RI-T), and this study "
                 "has one seed")
        return f"{holds}: set `seeds` to two or more (e.g. `seeds: [0, 1]`)."
    return ""


def _need(section, tables: dict, spec, *names: str) -> bool:
    """True when every table is present; otherwise mark the section as missing: the
    analyses ``spec`` does not ask for (``section.not_run``), or else the tables with no
    results yet. The training tables count only once a fine-tuning run is done."""
    def present(name: str) -> bool:
        frame = tables.get(name)
        if frame is None or frame.empty:
            return False
        return name not in ("runs", "curves") or (frame["kind"] == "finetune").any()

    absent = [name for name in names if not present(name)]
    if absent:
        not_asked = [reason for reason in (_not_asked(spec, name) for name in absent) if reason]
        section.not_run = bool(not_asked)
        section.missing = " ".join(not_asked) or (
            f"No results yet for {', '.join(absent)}: the jobs that produce them have not completed (see "
            "`transferscope status`).")
    return not absent


def _verdicts(tables: dict, *claim_functions) -> pd.DataFrame:
    """The findings' rows of these claims (the same functions, on the same tables, as
    ``results/findings``), for a caption to quote."""
    return pd.concat([claim(tables) for claim in claim_functions], ignore_index=True)


def _quoting(caption: str, tables: dict, *claim_functions) -> str:
    """``caption`` followed by the findings' verdicts on these claims."""
    return f"{caption} {findings_figures.verdict_sentence(_verdicts(tables, *claim_functions))}".strip()


def findings_at_a_glance(section, tables, spec, **_) -> None:
    """One verdict per claim of the paper that this study tests, with its uncertainty."""
    if not _need(section, tables, spec, "findings"):
        return
    section.tables.append(("Verdict per claim and target", findings_figures.findings_display(tables["findings"])))
    section.caption = (f"Each claim of the paper that this study can test, and whether it holds here: "
                       f"{claims.HOLDS!r}, {claims.FAILS!r} or {claims.INCONCLUSIVE!r} (the evidence does not "
                       f"decide), from the value with its {100 * (1 - claims.ALPHA):g}% interval [in brackets] or "
                       "p-value and the number of seeds, pairs or examples behind it. results/findings.csv states "
                       "each comparison and its rule (transferscope.analysis.claims).")


def source_model(section, tables, spec, store, jobs) -> None:
    """Where P came from, its source score, and models that should differ but do not."""
    source = spec.one_source
    if source.pretrains:
        text = (f"P was pre-trained by this study on the {source.data.kind} data {source.data.name!r} "
                f"({source.recipe.epochs} epochs, seed {source.seed}).")
        runs = tables.get("runs")
        p_runs = runs[runs["role"] == "P"] if runs is not None else pd.DataFrame()
        if len(p_runs):
            text += f" Its final source test {p_runs['metric'].iloc[0]}: {p_runs['final_score'].iloc[0]:.3f}."
    else:
        text = f"P is {describe_weights(source.p_weights)}"
        if source.checkpoints:
            text += f", with its pre-training trajectory at epochs {', '.join(map(str, source.checkpoints))}"
        score = tables.get("source_score")
        if source.data is None:
            text += "; no source data are given (source.data), so its source score is not reported."
        elif score is None:
            text += f"; its score on the source data {source.data.name!r} is not computed yet."
        else:
            metric = score_metric(score, "test_")
            final = score.iloc[-1]
            text += f"; its source test {metric} on {source.data.name!r}: {final[f'test_{metric}']:.3f}."
            section.tables.append(("P's score on the source data (per checkpoint of its trajectory)", score))
    warnings = identical_models(spec, store, jobs)
    section.caption = " ".join([text, *(f"Warning: {warning}." for warning in warnings)])


def learning_curves(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "curves", "runs"):
        return
    last = spec.one_source.final_epoch
    section.figures.append(("curves", training_figures.plot_learning_curves(tables["curves"], last)))
    section.tables.append(("Final test score and optimization speed (mean, std, count over seeds)",
                           training_figures.final_table(tables["runs"], last)))
    section.caption = _quoting(training_figures.caption_learning_curves(tables["runs"], last), tables,
                               claims.pt_ends_higher, claims.pt_optimizes_faster)


def feature_reuse(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "feature_reuse"):
        return
    table = tables["feature_reuse"]
    for target in sorted(table["target"].unique()):
        section.figures.append((f"bars_{target}", reuse_figures.plot_feature_reuse(table, target)))
    first = spec.target(sorted(table["target"].unique())[0])
    sizes = [str(first.data.image_size), *map(str, spec.shuffle.block_sizes)]
    images, _, _ = _test_images(first.data, [0])
    section.figures.append(("strip", reuse_figures.plot_shuffle_strip(images[0], sizes)))
    section.tables.append(("Block-shuffle sweep", table.sort_values(
        ["target", "block_size"], key=lambda column: column.map(block_size_key) if column.name == "block_size" else column,
        kind="stable")))
    section.caption = _quoting(reuse_figures.caption_feature_reuse(table), tables,
                               claims.advantage_shrinks_with_block_size, claims.speed_advantage_on_shuffled_pixels)


def pretraining_checkpoints(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "checkpoints"):
        return
    table = tables["checkpoints"]
    section.figures.append(("checkpoints", checkpoint_figures.plot_checkpoints(table)))
    section.tables.append(("Fine-tuning from pre-training checkpoints", table))
    section.caption = checkpoint_figures.caption_checkpoints(
        table, _verdicts(tables, claims.checkpoint_plateau, claims.checkpoint_advice))



def freezing(section, tables, spec, **_) -> None:
    """The freeze recommendation from rewinding, and the P-T runs with the first k units
    frozen that check it; "not run" when there is neither and the study asks for no
    freeze sweep."""
    plans, runs = tables.get("freeze_plan"), tables.get("freeze")
    has_plans, has_runs = plans is not None and not plans.empty, runs is not None and not runs.empty
    if not has_plans and not has_runs:
        _need(section, tables, spec, "freeze")
        section.missing += (" The freeze recommendation comes from the rewind analysis of a P-T model "
                            "(`analyses.rewind`).")
        return
    if has_runs:
        section.figures.append(("freeze", freeze_figures.plot_freeze(runs, plans)))
        section.tables.append(("Final score and training time per number of frozen leading units (mean, std, count "
                               "over seeds)", runs))
    if has_plans:
        section.tables.append(("Freeze recommendation: the cost of rewinding each module alone", plans))
    section.caption = freeze_figures.caption_freeze(runs, plans, _verdicts(tables, claims.freeze_recommendation_right))


def _test_images(data, indices):
    """uint8 test images at ``indices``, their labels and the class names of a target."""
    domain = load_domain(data.model_copy(update={"block_size": None}))
    if isinstance(domain.test, ImageSet):
        subset = domain.test.subset(indices)
        return subset.images, subset.targets, domain.classes
    items = [domain.test[i] for i in indices]
    return (torch.stack([image for image, _ in items]), torch.stack([target for _, target in items]),
            domain.classes)


def mistakes(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "mistakes"):
        return
    frame = tables["mistakes"]
    section.figures.append(("bars", mistake_figures.plot_mistakes(frame)))
    section.caption = mistake_figures.caption_mistakes(frame, _verdicts(tables, claims.pt_pairs_share_mistakes))
    examples = tables.get("mistakes_examples")
    if examples is not None and not examples.empty:
        target = sorted(examples["target"].unique())[0]
        part = examples[examples["target"] == target]
        pairs = _pairs(part)
        a, b = next((p for p in pairs if names.pair_type(*p, [("P-T", "RI-T")])), pairs[0])
        chosen = part[(part["model_a"] == a) & (part["model_b"] == b)]
        indices = sorted(set(chosen["index"]))
        images, labels, classes = _test_images(spec.target(target).data, indices)
        position = {index: i for i, index in enumerate(indices)}
        row_titles = {"common": "both wrong", "only_a": f"only {a}\nwrong", "only_b": f"only {b}\nwrong"}
        by_category = {title: [position[i] for i in chosen[chosen["category"] == category]["index"]]
                       for category, title in row_titles.items()}
        section.figures.append(("examples", mistake_figures.plot_mistake_examples(
            images, by_category, classes, labels, title=f"{target}: mistakes of {a} and {b}")))
    columns = ["target", "model_a", "model_b", "common_fraction", "only_a_fraction", "only_b_fraction",
               "uncommon_fraction", "common_ci_low", "common_ci_high", "mcnemar_p", "n_units", "unit"]
    section.tables.append(("Mistakes per pair", frame[[c for c in columns if c in frame]]))


def feature_similarity(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "cka"):
        return
    frame = tables["cka"]
    section.tables.append(("CKA per module (Table 1 layout; mean over seed pairs)", cka_figures.table1_frame(frame)))
    floor = cka_figures.floor_frame(frame)
    if not floor.empty:
        section.tables.append(("Chance floor: CKA with a freshly initialised network of the same architecture (RI)",
                               floor))
    section.figures.append(("table1", cka_figures.plot_table1(frame)))
    target = sorted(frame["target"].unique())[0]
    part = frame[frame["target"] == target]
    pairs = _pairs(part)
    for wanted in (("P-T", "P-T"), ("P-T", "RI-T")):
        pair = next((p for p in pairs if names.pair_type(*p, [wanted])), None)
        if pair is not None:
            heatmap = cka_figures.plot_cka_heatmap(part, *pair)
            heatmap.suptitle(f"{target}: CKA between every module of {pair[0]} and {pair[1]}")
            section.figures.append((f"heatmap_{names.role(pair[0])}_{names.role(pair[1])}", heatmap))
    section.caption = cka_figures.caption_cka(frame, _verdicts(tables, claims.pt_pairs_most_similar))


def distances(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "distance"):
        return
    frame = tables["distance"]
    section.tables.append(("Whole-network L2 distance (Table 2 layout; mean over seed pairs)",
                           distance_figures.table2_frame(frame)))
    section.figures.append(("modules", distance_figures.plot_module_distances(frame)))
    section.caption = distance_figures.caption_distance(frame, _verdicts(tables, claims.pt_models_closer))


def spectra(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "spectrum"):
        return
    frame = tables["spectrum"]
    target = sorted(frame["target"].unique())[0]
    part = frame[frame["target"] == target]
    frames = {name: group.drop(columns=["model", "target", "job"]) for name, group in part.groupby("model", sort=False)}
    section.figures.append(("spectra", spectrum_figures.plot_spectra(frames)))
    section.caption = spectrum_figures.caption_spectrum(frames) + f" (target {target})"
    if "spectrum_summary" in tables:
        section.tables.append(("Spectrum summary per weight matrix", _summary_shown(tables["spectrum_summary"])))


SPECTRUM_KEYS = ("target", "model", "module", "parameter", "shape")
SPECTRUM_DERIVED = ("rows", "cols", "n_singular")
"""The summary columns that its ``shape`` already says (left out so that the table fits
the page; ``results/spectrum_summary`` keeps them)."""


def _summary_shown(summary: pd.DataFrame) -> pd.DataFrame:
    """The spectrum summary as the page shows it: the columns that name a weight matrix
    first, then its measures, without those its shape says (:data:`SPECTRUM_DERIVED`)."""
    keys = [column for column in SPECTRUM_KEYS if column in summary]
    return summary[keys + [column for column in summary if column not in (*keys, *SPECTRUM_DERIVED)]]


def _with_pair_types(frame):
    """Add ``pair`` ("a|b") and ``pair_type`` ("P-T/RI-T", or "best/final P-T" for a run's
    best checkpoint against its final one) to a frame with model_a, model_b."""
    def pair_type(a: str, b: str) -> str:
        if Role.parse(a).checkpoint == "best":
            return f"best/final {names.role(a)}"
        return f"{names.role(a)}/{names.role(b)}"

    return frame.assign(pair=[f"{a}|{b}" for a, b in zip(frame["model_a"], frame["model_b"])],
                        pair_type=[pair_type(a, b) for a, b in zip(frame["model_a"], frame["model_b"])])


def interpolation(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "interpolation"):
        return
    frame = _with_pair_types(tables["interpolation"])
    section.figures.append(("curves", landscape_figures.plot_interpolation(frame)))
    section.tables.append(("Performance barriers on λ ∈ [0, 1]", landscape_figures.barrier_table(frame)))
    section.caption = landscape_figures.caption_interpolation(
        frame, _verdicts(tables, claims.no_barrier_between_pt, claims.barrier_between_rit))


def basins(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "basin"):
        return
    frame = _with_pair_types(tables["basin"])
    section.tables.append(("(ε, δ)-basins (Definition 3.1)", landscape_figures.basin_table(frame)))
    section.caption = landscape_figures.caption_basin(frame, _verdicts(tables, claims.pt_pairs_in_one_basin))


def soups(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "soup"):
        return
    frame = tables["soup"]
    section.figures.append(("members", soup_figures.plot_soups(frame)))
    columns = ["target", "group", "model", "members", "score", "metric", "gain", "gain_ci_low", "gain_ci_high", "bn"]
    section.tables.append(("Members and their weight average", frame[[c for c in columns if c in frame]]))
    section.caption = soup_figures.caption_soups(frame, _verdicts(tables, claims.pt_soups_average))


def rewinding(section, tables, spec, **_) -> None:
    if not _need(section, tables, spec, "rewind"):
        return
    frame = tables["rewind"]
    section.figures.append(("modules", criticality_figures.plot_rewind(frame)))
    section.tables.append(("Performance after rewinding one module to its initial value", frame))
    section.caption = criticality_figures.caption_rewind(frame)


def module_criticality(section, tables, spec, **_) -> None:
    """Fig. 6 per target, with P's criticality on the source data beside its models (or
    alone), the heatmaps, and one line on what P's own criticality needs where it is not
    measured (:func:`~transferscope.study.plan.source_criticality_needs`)."""
    needs = source_criticality_needs(spec)
    note = f" P's criticality on its source data is not measured: {needs}." \
        if needs is not None and spec.analyses.criticality.enabled else ""
    if not _need(section, tables, spec, "criticality"):
        section.missing += note
        return
    frame = tables["criticality"]
    source = criticality_figures.on_source(frame)
    captions = []
    for target in sorted(frame.loc[~source, "target"].unique()) or [None]:
        section.figures.append((f"bars_{target or 'source'}", criticality_figures.plot_criticality_bars(frame, target)))
        captions.append(f"{target or 'P on the source data'}: {criticality_figures.caption_criticality(frame, target)}")
    grid = tables.get("criticality_grid")
    if grid is not None and not grid.empty:
        grid = grid.assign(target=grid["target"].where(~criticality_figures.on_source(grid), "source data"))
        for (target, model), part in grid.groupby(["target", "model"], sort=True):
            figure = criticality_figures.plot_criticality_heatmaps(part)
            figure.suptitle(f"{target}, {model}, module {part['module'].iloc[0]}: mean loss on the (σ, α) grid (Fig. 6)")
            section.figures.append((f"heatmap_{target}_{model.replace(':', '-')}".replace(" ", "-"), figure))
    section.caption = _quoting(" ".join(captions), tables, claims.criticality_grows_with_depth) + note
    columns = ["target", "data", "model", "path", "start", "module", "criticality", "alpha", "sigma", "noise",
               "threshold"]
    section.tables.append(("Module criticality μ_i (Definition 3.2)", frame[[c for c in columns if c in frame]]))


def compared_sources(section, tables, spec, **_) -> None:
    """Several sources: which gives the best final score and optimization speed per
    target, and how much of each its P-T models reuse (CKA and L2 of P and P-T)."""
    if not _need(section, tables, spec, "sources"):
        return
    comparison = tables["sources"]
    section.figures.append(("scores", source_figures.plot_source_scores(comparison)))
    reuse = tables.get("source_reuse")
    if reuse is not None and not reuse.dropna(subset=["cka", "distance"], how="all").empty:
        for target in dict.fromkeys(reuse["target"]):
            section.figures.append((f"reuse_{target}", source_figures.plot_source_reuse(reuse, target)))
    findings = tables["findings"]
    best = findings[findings["section"] == "sources compared"]
    section.caption = ("Each source's P-T runs (mean ± std over seeds) against random init (the RI-T runs every "
                       "source shares), and per module the CKA and L2 distance between P and its P-T models. "
                       + findings_figures.verdict_sentence(best))
    section.tables.append(("Sources per target", comparison))


SECTIONS: list[tuple[str, str, Callable[..., None]]] = [
    ("findings", "Findings at a glance", findings_at_a_glance),
    ("source", "The source model P", source_model),
    ("curves", "Learning curves (Fig. 2)", learning_curves),
    ("feature-reuse", "Feature reuse: block shuffling (Fig. 3)", feature_reuse),
    ("mistakes", "Common and uncommon mistakes (Sec. 3.2)", mistakes),
    ("cka", "Feature similarity: CKA (Table 1)", feature_similarity),
    ("distance", "Parameter distance (Table 2)", distances),
    ("interpolation", "Loss interpolation and performance barriers (Fig. 4)", interpolation),
    ("basin", "Basins in the loss landscape (Definition 3.1)", basins),
    ("soups", "Averaging fine-tuned models: model soups (Wortsman et al. 2022)", soups),
    ("rewind", "Rewinding modules (Fig. 5)", rewinding),
    ("criticality", "Module criticality (Fig. 6)", module_criticality),
    ("freeze", "Freeze plans checked by runs", freezing),
    ("checkpoints", "Which pre-training checkpoint (Fig. 7)", pretraining_checkpoints),
    ("spectrum", "Module spectra (the paper's future work)", spectra),
]
