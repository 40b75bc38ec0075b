"""Settings, in one home: pydantic models read by the Python API, the YAML files and
the CLI alike. Unknown keys are errors that name the key; every value is validated
(float settings must be finite). :func:`load_yaml` reads a settings file (a key given
twice is an error) and :func:`explain` turns a validation error into one line per key."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_validator,
)


def check_block_size(value: Any) -> int | str:
    """A block size is a positive int (pixels) or ``"*"`` (every scalar); anything else raises."""
    if value == "*" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"block_size must be a positive int or '*', got {value!r}")


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N (N a GPU index) or mps, got {value!r}")
    return value


def _units_in_order(value: Any) -> Any:
    """``{unit: modules}`` as ``[[unit, modules], ...]``: the units' order is the
    partition's, and files are written with sorted keys."""
    return [[unit, paths] for unit, paths in value.items()] if isinstance(value, dict) else value


MomentDecay = Annotated[float, Field(ge=0, lt=1)]  # an Adam beta
Units = Annotated[tuple[str, ...] | tuple[tuple[str, tuple[str, ...] | str], ...] | None, BeforeValidator(_units_in_order)]
BlockSize = Annotated[int | Literal["*"], PlainValidator(check_block_size, json_schema_input_type=int | Literal["*"])]
Device = Annotated[str, AfterValidator(_check_device)]


def _augment_mode(value: Any) -> Any:
    """``true``/``false`` (the setting's former values) as ``"auto"``/``"none"``."""
    return {True: "auto", False: "none"}.get(value, value) if isinstance(value, bool) else value


# written as true/false where the former boolean meant the same, so that existing config
# files, run identities and job ids stay as they were
Augment = Annotated[Literal["auto", "resized_crop", "pad_crop", "none"], BeforeValidator(_augment_mode),
                    PlainSerializer(lambda mode: {"auto": True, "none": False}.get(mode, mode), return_type=bool | str)]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def digest(self) -> str:
        """Content hash of the resolved settings (order-independent), 12 hex digits."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


TABLE_KEYS = {"image_column": ("csv", "hf"), "label_column": ("csv", "hf"), "label_columns": ("csv", "hf"),
              "split_column": ("csv",), "train_split": ("csv", "hf"), "test_split": ("csv", "hf")}


class DataConfig(Settings):
    """Which images: a built-in synthetic domain or a real data set, and its shuffle."""

    kind: Literal["synthetic", "domainnet", "chexpert", "folder", "csv", "hf"] = "synthetic"
    name: str = Field("real", description="synthetic domain (source, real, clipart, sketch, xray) or DomainNet domain")
    root: str | None = Field(None, description="data set folder (real data only); csv: the CSV file, or a folder "
                             "holding train.csv and test.csv; hf: a save_to_disk folder or a hub name")
    image_size: int = Field(32, ge=8)
    n_train: int | None = Field(None, ge=1, description="training examples (a seeded subsample of real data when "
                                "smaller; each class's share for folder, csv and hf)")
    n_test: int | None = Field(None, ge=1)
    num_classes: int | None = Field(None, ge=2, description="classes of a synthetic domain; folder, csv, hf and "
                                    "domainnet: keep the first num_classes classes (by name / by label)")
    seed: int = Field(0, description="seed of the synthetic generator or of the real-data subsample")
    block_size: BlockSize | None = Field(None, description="block shuffle: block size in pixels or '*'; None = unshuffled")
    shuffle_seed: int = 0
    decode_size: int | None = Field(None, ge=8, description="image files and hf images: the side they are "
                                    "decoded (and cached) at, shorter side resized then centre crop; the loaders crop "
                                    "or resample them to image_size. None = image_size below 64 pixels, else 8/7 of "
                                    "it (256 for 224)")
    image_column: str | None = Field(None, description="csv: column of image paths (None = 'path'); hf: column of "
                                     "images (None = 'image')")
    label_column: str | None = Field(None, description="csv, hf: column of class labels (None = 'label')")
    label_columns: tuple[str, ...] | None = Field(None, description="csv, hf: 0/1 columns, one per label, of a "
                                                  "multi-label data set (instead of label_column)")
    split_column: str | None = Field(None, description="csv: column naming each row's split (train_split or "
                                     "test_split); None = a seeded split, 20% of each class in test")
    train_split: str | None = Field(None, description="hf: name of the training split; csv: its split_column value "
                                    "(None = 'train')")
    test_split: str | None = Field(None, description="hf: name of the test split; csv: its split_column value "
                                   "(None = 'test')")

    @model_validator(mode="after")
    def _table_keys(self) -> "DataConfig":
        """The keys of labelled tables (csv, hf) only where they apply."""
        for key, kinds in TABLE_KEYS.items():
            if getattr(self, key) is not None and self.kind not in kinds:
                raise ValueError(f"{key} does not apply to data kind {self.kind!r} (only to {' and '.join(kinds)}); "
                                 f"remove {key}")
        if self.label_column is not None and self.label_columns is not None:
            raise ValueError("give label_column (one class per image) or label_columns (0/1 columns of a "
                             "multi-label data set), not both")
        if self.label_columns is not None and self.num_classes is not None:
            raise ValueError("num_classes does not apply to a multi-label data set (label_columns): list the labels "
                             "to keep in label_columns and remove num_classes")
        if self.kind == "csv" and self.split_column is None and (self.train_split or self.test_split):
            raise ValueError("train_split and test_split name values of split_column in a CSV: set split_column, or "
                             "remove them")
        return self

    @model_validator(mode="after")
    def _decode_size(self) -> "DataConfig":
        if self.decode_size is not None and self.kind == "synthetic":
            raise ValueError("decode_size applies to decoded images (folder, csv, hf, domainnet, chexpert), not to "
                             "synthetic data; remove decode_size")
        if self.decode_size is not None and self.decode_size < self.image_size:
            raise ValueError(f"decode_size {self.decode_size} is smaller than image_size {self.image_size}: the "
                             "network sees image_size crops of the decoded images; raise decode_size or remove it")
        return self

    @model_validator(mode="after")
    def _block_divides(self) -> "DataConfig":
        if isinstance(self.block_size, int) and self.image_size % self.block_size:
            raise ValueError(f"block_size {self.block_size} does not divide image_size {self.image_size}")
        if self.kind != "synthetic" and not self.root:
            raise ValueError(f"data kind {self.kind!r} needs root: the folder of the data set")
        if self.kind == "chexpert" and self.num_classes is not None:
            raise ValueError("num_classes does not apply to data kind 'chexpert', whose labels are its five "
                             "observations; remove num_classes")
        return self


class ModelConfig(Settings):
    arch: str = Field("small_resnet", description="small_resnet, fixup_resnet50, a torchvision name, timm:<name>, "
                      "or an import path package.module:callable (called with num_classes= and kwargs)")
    width: int = Field(16, ge=1, description="small_resnet base width")
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the builder (the torchvision/timm "
                                   "constructor, or an import path's callable)")
    head: str | None = Field(None, description="module name of the classifier head, re-initialised for "
                             "fine-tuning; None = found by name (fc, head, classifier, else the last Linear)")


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
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (momentum, nesterov) or adamw (adamw_betas, "
                                               "adamw_eps; weight decay decoupled, none on biases and norm scales)")
    adamw_betas: tuple[MomentDecay, MomentDecay] = Field((0.9, 0.999), description="AdamW's moment decay rates")
    adamw_eps: float = Field(1e-8, gt=0, description="AdamW's denominator term")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="training loss only: class targets smoothed "
                                   "towards uniform, 0/1 labels to y(1-e)+e/2; 0 = off")
    bn_momentum: float | None = Field(None, ge=0, le=1, description="momentum of every BatchNorm's running "
                                      "statistics (0 = frozen); None = the model's own")
    mixup_alpha: float = Field(0.0, ge=0, description="mixup Beta(alpha, alpha); 0 = off")
    augment: Augment = Field("auto", description="resized_crop (RandomResizedCrop + flip), pad_crop (4-pixel "
                             "padded crop + flip), none, or auto (true): pad_crop below 64 pixels, else "
                             "resized_crop; false = none; always none for shuffled data")
    seed: int = Field(0, description="seeds the init, the data order, augmentation and mixup")
    checkpoint_every: int = Field(1, ge=1, description="save weights every k epochs (epoch 0 and the last always)")
    test_every: int = Field(1, ge=1, description="evaluate on the test split every k epochs (epoch 0 and the last "
                            "always; the others' test columns are NaN, and best is the best of the evaluated)")
    eval_batch_size: int = Field(256, ge=1)
    clean_train_examples: int | None = Field(1000, ge=1, description="train examples for the eval-mode train accuracy")
    device: Device = Field("auto", description="auto, cpu, cuda, cuda:N, mps")
    bf16: bool = Field(False, description="bf16 autocast (CUDA only)")
    channels_last: bool = False
    deterministic: bool = Field(True, description="CUDA: deterministic cuDNN/cuBLAS kernels, so reruns and resumed "
                                                 "runs give identical weights (CPU runs always do)")
    num_workers: int = Field(0, ge=0)
    freeze: int = Field(0, ge=0, description="the first k units of the partition (modules) keep their initial "
                        "weights: no gradient, BatchNorm statistics not updated; 0 = train every unit")
    modules: Units = Field(None, description="the partition whose leading units freeze counts: module names or "
                           "{unit: [module names]}; None = the model family's default")

    @model_validator(mode="after")
    def _milestones(self) -> "TrainConfig":
        if self.schedule.kind == "multistep" and not self.schedule.milestones:
            raise ValueError("schedule kind 'multistep' needs milestones, e.g. [30, 60, 90]")
        return self

    @model_validator(mode="after")
    def _modules_need_freeze(self) -> "TrainConfig":
        if self.modules is not None and self.freeze == 0:
            raise ValueError("modules sets the units that freeze counts; set freeze (leading units to freeze) or "
                             "remove modules")
        return self

    @property
    def partition_modules(self) -> tuple[str, ...] | dict[str, tuple[str, ...] | str] | None:
        """``modules`` as the ``modules=`` argument takes it (unit pairs as a mapping)."""
        if self.modules and isinstance(self.modules[0], tuple):
            return dict(self.modules)
        return self.modules  # type: ignore[return-value]

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
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({error.problem}); quote it, "
                             f"e.g. {dotted}='{raw}'") from error
    return result


def load_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``; invalid YAML, or a key given twice in one mapping
    (where YAML would keep the last silently), is a ``ValueError`` naming the file and line."""
    import yaml

    path = Path(path)

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in first_line:
                    raise ValueError(f"{path}, line {line}: key {key!r} is given twice in one mapping (first on line "
                                     f"{first_line[key]}); keep one")
                first_line.setdefault(key, line)
            return super().construct_mapping(node, deep)

    try:
        with path.open("rb") as stream:  # bytes: YAML decodes them, and a bad byte is a YAMLError naming the file
            return yaml.load(stream, Loader=UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error


def explain(error: ValidationError, model: type[BaseModel]) -> str:
    """One line per invalid key of ``model``'s settings: ``  key.path: message``;
    unknown keys list the allowed ones."""
    items = error.errors()
    lines = []
    for item in items:
        loc = item["loc"]
        if item["type"] == "too_short" and any(other["loc"][:len(loc)] == loc != other["loc"] for other in items):
            continue  # a tuple counts only its valid items: its length error follows from the ones listed
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = f"; allowed keys: {', '.join(parent.model_fields)}" if parent is not None else ""
            message = f"unknown key{allowed}"
        elif item["type"] == "literal_error":
            message = f"invalid value {item.get('input')!r}; {item['msg'].lower()}"
        lines.append(f"  {'.'.join(str(part) for part in loc)}: {message}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The settings model found by following ``path`` (field names, list indices) from ``model``."""
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = _settings_model(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _settings_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _settings_model(arg)) is not None), None)
