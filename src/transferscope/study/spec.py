"""The study file: one YAML document, validated by pydantic, that describes a whole
paper-style study (source, targets, model, recipes, seeds, sweeps, analyses).

Unknown keys and invalid values are errors naming the key and the allowed values."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from ..config import BlockSize, DataConfig, ModelConfig, Settings, TrainConfig, explain, load_yaml

_PER_RUN = {"data", "model", "init", "seed"}
Recipe = create_model(
    "Recipe",
    __base__=Settings,
    __doc__="A training recipe: every TrainConfig setting but data, model, init and seed, which the study sets.",
    **{name: (field.annotation, field) for name, field in TrainConfig.model_fields.items() if name not in _PER_RUN},
)


class CKASettings(Settings):
    enabled: bool = True
    estimator: Literal["minibatch", "full"] = "minibatch"
    kernel: Literal["linear", "rbf"] = "linear"
    debiased: bool = False
    max_examples: int = Field(1000, ge=4)
    batch_size: int = Field(250, ge=4)


class DistanceSettings(Settings):
    enabled: bool = True
    include_head: bool = False
    include_bn_affine: bool = True
    include_bn_buffers: bool = False


class MistakesSettings(Settings):
    enabled: bool = True
    threshold: float = Field(0.5, gt=0, lt=1)
    n_bootstrap: int = Field(1000, ge=10)
    max_examples: int | None = None


class InterpolationSettings(Settings):
    enabled: bool = True
    alphas: tuple[float, ...] = tuple(round(-0.5 + 0.1 * i, 2) for i in range(21))
    bn: Literal["auto", "recalibrate", "follow", "keep"] = "auto"
    recalibration_batches: int = Field(8, ge=1)
    max_examples: int | None = Field(1000, ge=1)


class BasinSettings(Settings):
    enabled: bool = True
    threshold: float = Field(0.05, gt=0, description="boundary: loss passes (1 + threshold) × the larger endpoint loss")
    rise: float = Field(2.0, gt=0, description="walls: conditions 2-3 ask the loss to reach μ + rise·ε")
    sigmas: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02, 0.05)
    n_segment: int = Field(20, ge=3)
    n_noise: int = Field(5, ge=1)
    recalibration_batches: int = Field(8, ge=1)
    boundary_tol: float = Field(1e-3, gt=0, description="precision in λ of the boundary search")
    max_examples: int | None = Field(500, ge=1)


class RewindSettings(Settings):
    enabled: bool = True
    bn: Literal["auto", "recalibrate", "follow", "keep"] = "follow"
    recalibration_batches: int | None = Field(None, ge=1, description="bn=recalibrate: training batches; None = all")
    max_examples: int | None = Field(1000, ge=1)


class CriticalitySettings(Settings):
    enabled: bool = True
    noise: Literal["absolute", "frobenius", "per_filter"] = "frobenius"
    threshold: float = Field(1.01, gt=0, description="feasible: mean noisy loss <= threshold x loss at the end point")
    alphas: tuple[float, ...] = Field(tuple(round(i / 11, 4) for i in range(1, 12)), min_length=1,
                                      description="points in (0, 1] along the path (1 = end point)")
    sigmas: tuple[float, ...] = Field(tuple(round(i / 11, 4) for i in range(1, 12)), min_length=1,
                                      description="noise levels (relative to the module norm for noise=frobenius)")
    samples: int = Field(10, ge=1)
    max_examples: int | None = Field(512, ge=1)
    heatmap_module: str = "conv1"
    targets: tuple[str, ...] | None = Field(None, description="targets to analyse; None = all")


class SpectrumSettings(Settings):
    enabled: bool = True
    top_k: tuple[int, ...] = (1, 5, 10)


class Analyses(Settings):
    cka: CKASettings = CKASettings()
    distance: DistanceSettings = DistanceSettings()
    mistakes: MistakesSettings = MistakesSettings()
    interpolation: InterpolationSettings = InterpolationSettings()
    basin: BasinSettings = BasinSettings()
    rewind: RewindSettings = RewindSettings()
    criticality: CriticalitySettings = CriticalitySettings()
    spectrum: SpectrumSettings = SpectrumSettings()


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


class Source(Settings):
    data: DataConfig
    recipe: Recipe  # type: ignore[valid-type]
    seed: int = 0


class Target(Settings):
    label: str = Field(description="short name used in tables and figures")
    data: DataConfig


class StudySpec(Settings):
    name: str = "study"
    model: ModelConfig = ModelConfig()
    source: Source
    targets: tuple[Target, ...] = Field(min_length=1)
    finetune: Recipe = Field(description="recipe of P-T runs")  # type: ignore[valid-type]
    scratch: Recipe = Field(description="recipe of RI-T runs")  # type: ignore[valid-type]
    seeds: tuple[int, ...] = Field((0, 1), min_length=1)
    shuffle: ShuffleSweep = ShuffleSweep()
    checkpoints: CheckpointSweep = CheckpointSweep()
    analyses: Analyses = Analyses()

    @field_validator("targets")
    @classmethod
    def _unique_labels(cls, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        labels = [t.label for t in targets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"target labels must be unique, got {labels}")
        return targets

    @model_validator(mode="after")
    def _references(self) -> "StudySpec":
        labels = {t.label for t in self.targets}
        for where, chosen in (("shuffle.targets", self.shuffle.targets), ("checkpoints.targets", self.checkpoints.targets),
                              ("analyses.criticality.targets", self.analyses.criticality.targets)):
            unknown = set(chosen or ()) - labels
            if unknown:
                raise ValueError(f"{where} names unknown targets {sorted(unknown)}; targets are {sorted(labels)}")
        last = self.source.recipe.epochs
        bad = [e for e in self.checkpoints.epochs if not 0 <= e <= last]
        if bad:
            raise ValueError(f"checkpoints.epochs {bad} lie outside pre-training epochs 0..{last}")
        for target in self.targets:
            for size in self.shuffle.block_sizes:
                if isinstance(size, int) and target.data.image_size % size:
                    raise ValueError(f"shuffle.block_sizes: {size} does not divide image_size "
                                     f"{target.data.image_size} of target {target.label!r}")
        return self

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
