"""The study file: one YAML document, validated by pydantic, that describes a whole
paper-style study (source, targets, model, recipes, seeds, sweeps, analyses).

A recipe is every :class:`~transferscope.config.TrainConfig` setting the study does not
set per run; an analysis's settings are its function's keyword-only parameters
(:func:`.settings.keyword_settings`). Unknown keys and invalid values are errors naming
the key and the allowed values."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import BeforeValidator, Field, ValidationError, create_model, field_validator, model_validator

from ..analysis.basins import basin
from ..analysis.distance import param_distance
from ..analysis.freeze_plan import DEFAULT_TOLERANCE
from ..analysis.interpolation import interpolate
from ..analysis.mistake_overlap import mistakes
from ..analysis.module_criticality import criticality
from ..analysis.rewinding import rewind
from ..analysis.similarity import compare_representations
from ..analysis.soups import soup
from ..analysis.spectra import spectrum_summary
from ..config import BlockSize, DataConfig, ModelConfig, Settings, TrainConfig, explain, load_yaml
from ..models.partition import check_modules
from ..models.pretrained import TIMM, TORCHVISION, check_weights
from .settings import AnalysisSettings, DerivedSettings, keyword_settings

_PER_RUN = {"data", "model", "init", "seed", "freeze", "modules"}  # freeze: the freeze sweep
_RECIPE_FIELDS: dict[str, Any] = {name: (field.annotation, field) for name, field in TrainConfig.model_fields.items()
                                  if name not in _PER_RUN}
Recipe = create_model(
    "Recipe",
    __base__=DerivedSettings,
    __doc__="A training recipe: every TrainConfig setting but data, model, init and seed, which the study sets.",
    **_RECIPE_FIELDS,
)


# Each analysis's settings are its function's keyword-only parameters (defaults there);
# below: what the job supplies, validation, the study's deliberate defaults, study-only fields.
# The classes are built at run time: Any to type checkers, which cannot follow their fields.
_TEST_EXAMPLES = "evaluate on the first max_examples test examples; None = all"
CKASettings: Any = keyword_settings(
    "CKASettings", compare_representations, set_by_job=("modules", "pairs"), doc="CKA between modules (Table 1).",
    checks={"bandwidth": Field(gt=0)},
    study={"max_examples": (int, Field(1000, ge=4, description="test examples")),
           "batch_size": (int, Field(250, ge=4, description="examples per batch (the minibatch estimator's)"))})
DistanceSettings: Any = keyword_settings(
    "DistanceSettings", param_distance, set_by_job=("modules",), doc="Parameter distance (Table 2).",
    defaults={"include_head": False})  # Table 2 compares bodies: P's head is sized for the source's classes
MistakesSettings: Any = keyword_settings(
    "MistakesSettings", mistakes, set_by_job=("pairs",), doc="Common and uncommon mistakes (Sec. 3.2).",
    checks={"threshold": (float, Field(gt=0, lt=1, description="multi-label: one threshold for every label")),
            "n_bootstrap": Field(ge=10), "confidence": Field(gt=0, lt=1)},
    study={"max_examples": (int | None, Field(None, ge=1, description=_TEST_EXAMPLES))})
InterpolationSettings: Any = keyword_settings(
    "InterpolationSettings", interpolate, set_by_job=("recalibration_loader", "split"),
    doc="Loss along the straight path between two models (Fig. 4).",
    checks={"recalibration_batches": Field(ge=1), "max_examples": Field(ge=1, description=_TEST_EXAMPLES),
            "vmap_chunk": Field(ge=1)},
    defaults={"recalibration_batches": 8, "max_examples": 1000})  # bounded cost on large data sets
BasinSettings: Any = keyword_settings(
    "BasinSettings", basin, set_by_job=("recalibration_loader", "split"), doc="(ε, δ)-basins (Definition 3.1).",
    checks={"threshold": Field(gt=0, description="boundary: loss passes (1 + threshold) × the larger endpoint loss"),
            "rise": Field(gt=0, description="walls: conditions 2-3 ask the loss to reach μ + rise·ε"),
            "sigmas": Field(min_length=1), "n_segment": Field(ge=3), "n_noise": Field(ge=1), "seed": Field(ge=0),
            "max_examples": Field(ge=1, description=_TEST_EXAMPLES), "recalibration_batches": Field(ge=1),
            "initial_step": Field(gt=0), "max_extent": Field(gt=0),
            "boundary_tol": Field(gt=0, description="precision in λ of the boundary search")},
    defaults={"recalibration_batches": 8, "max_examples": 500})  # bounded cost on large data sets
RewindSettings: Any = keyword_settings(
    "RewindSettings", rewind, set_by_job=("modules", "recalibration_loader"),
    doc="Rewinding one module to its initial value (Fig. 5).",
    checks={"recalibration_batches": Field(ge=1, description="bn=recalibrate: training batches; None = all"),
            "max_examples": Field(ge=1, description="train and test examples; None = all")},
    defaults={"max_examples": 1000})  # bounded cost on large data sets
CriticalitySettings: Any = keyword_settings(
    "CriticalitySettings", criticality,
    set_by_job=("modules", "path", "path_states", "start", "best_state", "method", "split"),
    doc="Module criticality (Definition 3.2, Fig. 6), per module and on the (α, σ) grid of heatmap_module.",
    checks={"threshold": Field(gt=0, description="feasible: mean noisy loss <= threshold x loss at the end point"),
            "alphas": Field(min_length=1, description="points in (0, 1] along the path (1 = end point); "
                                                      "None = 11 points"),
            "sigmas": Field(min_length=1, description="noise levels (relative to the module norm for "
                                                      "noise=frobenius); None = 11 points"),
            "samples": Field(ge=1), "seed": Field(ge=0), "max_examples": Field(ge=1, description=_TEST_EXAMPLES)},
    defaults={"max_examples": 512},  # bounded cost on large data sets
    study={"heatmap_module": (str, Field("conv1", description="module whose (α, σ) grid is drawn")),
           "targets": (tuple[str, ...] | None, Field(None, description="targets to analyse; None = all")),
           "source": (bool | None, Field(None, description="also P on the source data, from its initial weights "
                                         "along its pre-training trajectory: None = where brought weights come with "
                                         "source.checkpoints from epoch 0 and source.data; true = also for P "
                                         "pre-trained here (an error where it cannot be measured); false = never"))})
CriticalitySettings.PRESENTATION = CriticalitySettings.PRESENTATION | {"source"}  # which models, not their numbers
SpectrumSettings: Any = keyword_settings("SpectrumSettings", spectrum_summary, doc="Singular-value spectra of the weights.")
SoupSettings: Any = keyword_settings(
    "SoupSettings", soup, set_by_job=("recipe", "held_out", "recalibration_loader", "modules", "split"),
    doc="Uniform soups of the P-T seeds and of the RI-T seeds (Wortsman et al. 2022); planned with two or more seeds.",
    checks={"recalibration_batches": Field(ge=1, description="bn=recalibrate: training batches; None = all"),
            "n_bootstrap": Field(ge=10), "seed": Field(ge=0), "confidence": Field(gt=0, lt=1)},
    defaults={"recalibration_batches": 8},  # bounded cost on large data sets
    study={"max_examples": (int | None, Field(None, ge=1, description=_TEST_EXAMPLES))})


class Analyses(Settings):
    cka: CKASettings = CKASettings()
    distance: DistanceSettings = DistanceSettings()
    mistakes: MistakesSettings = MistakesSettings()
    interpolation: InterpolationSettings = InterpolationSettings()
    basin: BasinSettings = BasinSettings()
    rewind: RewindSettings = RewindSettings()
    criticality: CriticalitySettings = CriticalitySettings()
    spectrum: SpectrumSettings = SpectrumSettings()
    soup: SoupSettings = SoupSettings()

    @classmethod
    def settings_model(cls, kind: str) -> type[AnalysisSettings]:
        """The settings model of analysis ``kind`` (a job's ``config["settings"]`` validates against it)."""
        return cast(type[AnalysisSettings], cls.model_fields[kind].annotation)


class ShuffleSweep(Settings):
    """Sec. 3.1: train P-T and RI-T on block-shuffled targets."""

    block_sizes: tuple[BlockSize, ...] = ()
    permutation_seeds: tuple[int, ...] = (0,)
    run_seeds: tuple[int, ...] = (0,)
    targets: tuple[str, ...] | None = Field(None, description="targets to sweep; None = all")
    speed_series: Literal["clean", "running"] = "clean"


class CheckpointSweep(Settings):
    """Sec. 3.5: fine-tune from several pre-training checkpoints."""

    epochs: tuple[int, ...] = ()
    run_seeds: tuple[int, ...] = (0,)
    targets: tuple[str, ...] | None = None


def _freeze_short_form(value: Any) -> Any:
    """``freeze: [0, 1, 2]`` and ``freeze: auto`` are short for ``freeze: {units: ...}``."""
    return {"units": value} if isinstance(value, (list, tuple, str)) else value


class FreezeSweep(Settings):
    """P-T runs with the first k units of the partition frozen at P's weights
    (``TrainConfig.freeze``; job kind ``frozen``), which check the freeze recommendation
    from rewinding (:mod:`transferscope.analysis.freeze_plan`).

    ``auto`` asks for 0, the recommendation and one past it; the recommendation is known
    only once the rewind job has run, after the plan is made, so ``auto`` plans every k
    the partition allows (0 to its number of units − 1: the last unit, holding the
    re-initialised head, always trains), and the findings judge the recommendation
    against all of them. k = 0 is the main P-T run of a seed."""

    units: tuple[Annotated[int, Field(ge=0)], ...] | Literal["auto"] = Field(
        (), description="numbers k of leading units to freeze, e.g. [0, 1, 2]; auto: every k the partition allows")
    run_seeds: tuple[int, ...] | None = Field(None, description="seeds of the frozen runs; None = the study's seeds")
    targets: tuple[str, ...] | None = Field(None, description="targets to sweep; None = all")
    tolerance: float = Field(DEFAULT_TOLERANCE, ge=0, description="the recommendation: leading modules whose "
                             "rewinding to P's weights costs at most this much score (0.01 = one point)")


class Source(Settings):
    """P, the source model: pre-trained by the study (``data`` + ``recipe``), or brought
    as ``weights`` (a file, ``torchvision:<WeightsEnum>.<member>``, ``timm:<name>``),
    optionally with its pre-training trajectory ``checkpoints`` and the ``data`` it was
    trained on (used only to report P's source score)."""

    data: DataConfig | None = Field(None, description="source data: P is pre-trained on it (with recipe), or "
                                    "brought weights are scored on it")
    recipe: Recipe | None = Field(None, description="pre-train P on data with this recipe")
    seed: int = Field(0, description="seed of pre-training")
    weights: str | None = Field(None, description="P's weights: a safetensors or torch file, "
                                "torchvision:<WeightsEnum>.<member> or timm:<name>; default: the last of checkpoints")
    checkpoints: dict[int, str] = Field({}, description="P's pre-training trajectory {epoch: weights} (Fig. 7 and "
                                        "the checkpoint sweep); its last epoch is P")

    @field_validator("weights")
    @classmethod
    def _weights_form(cls, value: str | None) -> str | None:
        return None if value is None else check_weights(value)

    @field_validator("checkpoints")
    @classmethod
    def _trajectory(cls, value: dict[int, str]) -> dict[int, str]:
        negative = [epoch for epoch in value if epoch < 0]
        if negative:
            raise ValueError(f"epochs are >= 0, got {negative}")
        return {epoch: check_weights(weights) for epoch, weights in sorted(value.items())}

    @model_validator(mode="after")
    def _one_kind(self) -> "Source":
        brought = self.weights is not None or bool(self.checkpoints)
        if self.recipe is not None and brought:
            raise ValueError("source takes either data + recipe (pre-train P here) or weights (+ checkpoints), not "
                             "both; remove one")
        if self.recipe is None and not brought:
            raise ValueError("source needs data + recipe (pre-train P here) or weights: P's pre-trained weights, "
                             "a safetensors or torch file, torchvision:<WeightsEnum>.<member> or timm:<name>")
        if self.recipe is not None and self.data is None:
            raise ValueError("source.recipe pre-trains P on source.data; give data")
        if brought and self.seed != 0:
            raise ValueError("source.seed seeds pre-training, and P's weights are given; remove seed")
        return self

    @property
    def pretrains(self) -> bool:
        """True when the study pre-trains P (``data`` + ``recipe``)."""
        return self.recipe is not None

    @property
    def p_weights(self) -> str | None:
        """P's brought weights (``weights``, else the trajectory's last); None when pre-trained here."""
        if self.pretrains:
            return None
        return self.weights if self.weights is not None else self.checkpoints[max(self.checkpoints)]

    @property
    def final_epoch(self) -> int | None:
        """P's epoch: the recipe's last, the trajectory's last, or None (weights without a trajectory)."""
        if self.recipe is not None:
            return self.recipe.epochs
        return max(self.checkpoints) if self.checkpoints else None

    @property
    def origin(self) -> str:
        """P's origin in a few words: the source data's name, or the weights' name."""
        weights = self.p_weights
        if weights is None:
            return self.data.name if self.data is not None else "source"
        return weights if weights.startswith((TORCHVISION, TIMM)) else Path(weights).name


class NamedSource(Source):
    """One of several sources of a study (``sources:``): a :class:`Source` with a label."""

    label: str = Field(description="short name of this source in tables and figures, e.g. supervised")

    @field_validator("label")
    @classmethod
    def _usable_label(cls, label: str) -> str:
        if not label.strip() or label.strip() != label or label in ("RI-T", "random init"):
            raise ValueError(f"a source label is a non-empty name without surrounding spaces, not 'RI-T' or "
                             f"'random init' (the floor every study has), got {label!r}")
        return label


class Target(Settings):
    label: str = Field(description="short name used in tables and figures")
    data: DataConfig


class StudySpec(Settings):
    name: str = "study"
    model: ModelConfig = ModelConfig()
    source: Source | None = Field(None, description="P, the source model (the one-source form of sources)")
    sources: tuple[NamedSource, ...] = Field((), description="several sources compared in one study, each with a "
                                             "label; jobs they share (RI-T runs) run once")
    targets: tuple[Target, ...] = Field(min_length=1)
    finetune: Recipe = Field(description="recipe of P-T runs")
    scratch: Recipe = Field(description="recipe of RI-T runs")
    seeds: tuple[int, ...] = Field((0, 1), min_length=1)
    shuffle: ShuffleSweep = ShuffleSweep()
    checkpoints: CheckpointSweep = CheckpointSweep()
    freeze: Annotated[FreezeSweep, BeforeValidator(_freeze_short_form)] = FreezeSweep()
    analyses: Analyses = Analyses()
    modules: tuple[str, ...] | dict[str, tuple[str, ...] | str] | None = Field(
        None, description="the module partition of every analysis: module names (e.g. [conv1, layer1.0]) or "
                          "{unit: [module names]} (e.g. {stem: [_conv_stem, _bn0]}); tensors no unit lists form unit "
                          "'rest'; None = the model family's default (transferscope.models.Partition)")

    @field_validator("modules")
    @classmethod
    def _partition(cls, modules: tuple[str, ...] | dict[str, tuple[str, ...] | str] | None):
        check_modules(modules)
        return modules

    @model_validator(mode="after")
    def _heatmap_unit(self) -> "StudySpec":
        criticality = self.analyses.criticality
        if self.modules is not None and criticality.enabled and criticality.heatmap_module not in self.modules:
            raise ValueError(f"analyses.criticality.heatmap_module {criticality.heatmap_module!r} is no unit of "
                             f"modules ({', '.join(self.modules)}); set it to one of them")
        return self

    @field_validator("targets")
    @classmethod
    def _unique_labels(cls, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        labels = [t.label for t in targets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"target labels must be unique, got {labels}")
        first: dict[DataConfig, str] = {}
        for target in targets:  # a label decides no number: two targets of one data would be one set of jobs
            other = first.setdefault(target.data, target.label)
            if other != target.label:
                raise ValueError(f"targets {other!r} and {target.label!r} have the same data; give each target "
                                 "its own data (another name, seed or folder), or drop one")
        return targets

    @model_validator(mode="after")
    def _one_source_form(self) -> "StudySpec":
        if (self.source is None) == (not self.sources):
            raise ValueError("give either source (one source model) or sources (a list of labelled sources), "
                             "not both" if self.sources else "the study needs source (one source model) or sources")
        labels = [source.label for source in self.sources]
        if len(set(labels)) != len(labels):
            raise ValueError(f"source labels must be unique, got {labels}")
        self.per_source()  # each source with the rest of the study must be a valid one-source study
        return self

    def per_source(self) -> list[tuple[str | None, "StudySpec"]]:
        """The study as one-source studies: ``[(None, self)]`` for ``source:``, else
        ``(label, the study with that source)`` per entry of ``sources:``, in order."""
        if not self.sources:
            return [(None, self)]
        common = self.model_dump(exclude={"sources", "source"})
        singles: list[tuple[str | None, StudySpec]] = []
        for source in self.sources:
            try:
                single = StudySpec.model_validate(common | {"source": source.model_dump(exclude={"label"})})
            except ValidationError as error:
                problems = (line.strip().removeprefix(": ") for line in explain(error, StudySpec).splitlines())
                raise ValueError(f"source {source.label!r}: {'; '.join(problems)}") from None
            singles.append((source.label, single))
        return singles

    @property
    def one_source(self) -> Source:
        """P of a one-source study (``source:``); a several-source study has none."""
        if self.source is None:
            raise ValueError("this study has several sources; take each with per_source()")
        return self.source

    @model_validator(mode="after")
    def _references(self) -> "StudySpec":
        if self.source is None:
            return self  # several sources: per_source() validates each one-source study
        labels = {t.label for t in self.targets}
        for where, chosen in (("shuffle.targets", self.shuffle.targets), ("checkpoints.targets", self.checkpoints.targets),
                              ("analyses.criticality.targets", self.analyses.criticality.targets),
                              ("freeze.targets", self.freeze.targets)):
            unknown = set(chosen or ()) - labels
            if unknown:
                raise ValueError(f"{where} names unknown targets {sorted(unknown)}; targets are {sorted(labels)}")
        self._check_checkpoint_epochs(self.source)
        for target in self.targets:
            for size in self.shuffle.block_sizes:
                if isinstance(size, int) and target.data.image_size % size:
                    raise ValueError(f"shuffle.block_sizes: {size} does not divide image_size "
                                     f"{target.data.image_size} of target {target.label!r}")
        return self

    def _check_checkpoint_epochs(self, source: Source) -> None:
        """The checkpoint sweep's epochs exist in P's pre-training (or brought trajectory)."""
        epochs = self.checkpoints.epochs
        if source.recipe is not None:
            last = source.recipe.epochs
            bad = [e for e in epochs if not 0 <= e <= last]
            if bad:
                raise ValueError(f"checkpoints.epochs {bad} lie outside pre-training epochs 0..{last}")
        else:
            absent = [e for e in epochs if e not in source.checkpoints]
            if absent:
                raise ValueError(f"checkpoints.epochs {absent}: with brought weights, P-T starts from the epochs of "
                                 f"the trajectory source.checkpoints (it has {sorted(source.checkpoints) or 'none'}); "
                                 "add {epoch: weights} there")
            if epochs and source.data is None:
                raise ValueError("checkpoints.epochs: Fig. 7 puts each checkpoint's source score beside it; give "
                                 "source.data (the data P was pre-trained on)")

    def target(self, label: str) -> Target:
        return next(t for t in self.targets if t.label == label)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study YAML file; errors name the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file not found: {path}")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of study settings at the top level")
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"invalid study file {path}:\n{explain(error, StudySpec)}") from None
