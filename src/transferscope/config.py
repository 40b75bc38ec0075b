"""Settings, in one home: pydantic models read by the Python API, the YAML files and
the CLI alike. Unknown keys are errors that name the key; every value is validated."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

BlockSize = StrictInt | Literal["*"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def digest(self) -> str:
        """Content hash of the resolved settings (order-independent), 12 hex digits."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


class DataConfig(Settings):
    """Which images: a built-in synthetic domain or a real data set, and its shuffle."""

    kind: Literal["synthetic", "domainnet", "chexpert", "folder"] = "synthetic"
    name: str = Field("real", description="synthetic domain (source, real, clipart, sketch, xray) or DomainNet domain")
    root: str | None = Field(None, description="data set folder (real data only)")
    image_size: int = Field(32, ge=8)
    n_train: int | None = Field(None, ge=1, description="training examples (subsample of real data when smaller)")
    n_test: int | None = Field(None, ge=1)
    num_classes: int | None = Field(None, ge=2, description="classes of a synthetic domain")
    seed: int = Field(0, description="seed of the synthetic generator or of the real-data subsample")
    block_size: BlockSize | None = Field(None, description="block shuffle: block size in pixels or '*'; None = unshuffled")
    shuffle_seed: int = 0

    @field_validator("block_size")
    @classmethod
    def _positive(cls, value: BlockSize | None) -> BlockSize | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("block_size must be a positive int or '*'")
        return value

    @model_validator(mode="after")
    def _block_divides(self) -> "DataConfig":
        if isinstance(self.block_size, int) and self.image_size % self.block_size:
            raise ValueError(f"block_size {self.block_size} does not divide image_size {self.image_size}")
        if self.kind != "synthetic" and not self.root:
            raise ValueError(f"data kind {self.kind!r} needs root: the folder of the data set")
        return self


class ModelConfig(Settings):
    arch: str = Field("small_resnet", description="small_resnet, fixup_resnet50, a torchvision name, timm:<name>")
    width: int = Field(16, ge=1, description="small_resnet base width")
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)


class ScheduleConfig(Settings):
    kind: Literal["constant", "step", "multistep", "cosine"] = "constant"
    step_size: int = Field(30, ge=1, description="epochs between decays (step)")
    milestones: tuple[int, ...] = Field((), description="epochs at which the lr is multiplied by gamma (multistep)")
    gamma: float = Field(0.1, gt=0)


class TrainConfig(Settings):
    """One training run: pre-training P, or P-T / RI-T on a target."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    init: str | None = Field(None, description="weights to fine-tune from (head re-initialised); None = random init")
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    nesterov: bool = False
    bias_lr_factor: float = Field(1.0, gt=0, description="lr multiplier for biases and scales (0.1 in the paper)")
    schedule: ScheduleConfig = ScheduleConfig()
    mixup_alpha: float = Field(0.0, ge=0, description="mixup Beta(alpha, alpha); 0 = off")
    augment: bool = Field(True, description="random crop + flip; always off for shuffled data")
    seed: int = Field(0, description="seeds the init, the data order, augmentation and mixup")
    checkpoint_every: int = Field(1, ge=1, description="save weights every k epochs (epoch 0 and the last always)")
    eval_batch_size: int = Field(256, ge=1)
    clean_train_examples: int | None = Field(1000, ge=1, description="train examples for the eval-mode train accuracy")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    bf16: bool = Field(False, description="bf16 autocast (CUDA only)")
    channels_last: bool = False
    deterministic: bool = Field(True, description="CUDA: deterministic cuDNN/cuBLAS kernels, so reruns and resumed "
                                                 "runs give identical weights (CPU runs always do)")
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _milestones(self) -> "TrainConfig":
        if self.schedule.kind == "multistep" and not self.schedule.milestones:
            raise ValueError("schedule kind 'multistep' needs milestones, e.g. [30, 60, 90]")
        return self

    @property
    def shuffled(self) -> bool:
        return self.data.block_size is not None and self.data.block_size != self.data.image_size


def apply_overrides(settings: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict."""
    import yaml

    result = json.loads(json.dumps(settings))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. epochs=5 or data.block_size=4)")
        dotted, raw = item.split("=", 1)
        node = result
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return result
