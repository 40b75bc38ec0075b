"""Running one job of a study: a training run, brought weights materialised (and scored
on the source data), or an analysis that loads the models it names and calls the
analysis function (the study layer only composes)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import pandas as pd
import torch
from torch import nn

from ..allocator import reuse_freed_memory
from ..config import DataConfig, ModelConfig, TrainConfig
from ..data import Domain, load_domain
from ..evaluation import cache_batches, evaluate, score_metric
from ..io import write_table
from ..models import Modules, Partition, load_into, load_weights, save_weights
from ..models.pretrained import load_pretrained, pretrained_model
from ..models.registry import build_configured
from ..roles import Role
from ..timing import recording, stage
from ..train import TrainingRun, train
from ..train.run_dir import checkpoint_path
from ..train.trainer import resolve_device
from .job import Job
from .spec import Analyses
from .store import Store


def execute_job(root: str | Path, job_id: str, progress: bool = False) -> str:
    """Run job ``job_id`` of the study in ``root`` unless it is done; record the
    outcome in its folder and return its state ("done" or "failed"). Its wall and CPU
    time, in all and per stage (:mod:`transferscope.timing`), go into done.json. Errors never
    propagate (not even when failed.json cannot be written): a failed job does not stop
    the others. The job's process keeps the memory it frees for reuse
    (:func:`transferscope.allocator.reuse_freed_memory`)."""
    reuse_freed_memory()
    store = Store(root)
    try:
        with recording() as stages:
            job = store.load(job_id)
            if store.state(job) == "done":
                return "done"
            store.mark_running(job)
            missing = [dep for dep in job.deps if store.state(dep) != "done"]
            if missing:
                raise RuntimeError(f"dependencies not complete: {', '.join(missing)}")
            RUNNERS[job.kind](store, job, progress)
            store.mark_done(job, stages.record())
    except Exception as error:  # noqa: BLE001 - recorded in failed.json
        store.mark_failed(job_id, error)
        return "failed"
    return "done"


# ---------------------------------------------------------------------- helpers
@lru_cache(maxsize=16)
def _domain(data_json: str, cache_dir: str | None) -> Domain:
    with stage("data"):
        return load_domain(DataConfig.model_validate_json(data_json), cache_dir=cache_dir)


def data_cache(store: Store, data: DataConfig) -> str | None:
    """Where a study's image files are decoded once and read from by every job (its
    ``cache/`` folder); synthetic data keep their own cache (``TRANSFERSCOPE_CACHE``)."""
    return None if data.kind == "synthetic" else str(store.root / "cache")


def domain_of(config: TrainConfig, store: Store) -> Domain:
    """The images of a run (cached per process); a block shuffle is not part of them but
    of the loaders the trainer builds, so shuffled runs share the domain."""
    data = config.data.model_copy(update={"block_size": None, "shuffle_seed": 0})
    return _domain(data.model_dump_json(), data_cache(store, data))


def run_of(store: Store, ref: dict) -> TrainingRun:
    return TrainingRun(store.job_dir(ref["job"]) / "run")


WEIGHTS_FILE = "weights.safetensors"  # in a weights job's folder: the brought weights, materialised


def final_weights(store: Store, job: Job) -> Path:
    """The file of a training or weights job's final weights."""
    if job.kind == "weights":
        return store.job_dir(job) / WEIGHTS_FILE
    run = store.job_dir(job) / "run"
    return checkpoint_path(run, TrainingRun(run).config.epochs)


def _placed(model: nn.Module, device: str, channels_last: bool) -> nn.Module:
    """``model`` in eval mode on ``device`` (``auto``: the GPU when there is one), in
    channels_last memory where asked."""
    model = model.to(resolve_device(device))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def load_model(store: Store, ref: dict, checkpoint: str | int | None = None) -> nn.Module:
    """The model of a training job at a checkpoint (``ref["checkpoint"]`` by default),
    or of a weights job (brought P, with its own classifier), in eval mode on the run's
    device, in channels_last memory when the run trained that way."""
    job = store.load(ref["job"])
    if job.kind == "weights":
        with stage("models"):
            model = pretrained_model(ModelConfig.model_validate(job.config["model"]),
                                     load_weights(final_weights(store, job)))
            return _placed(model, job.config["device"], job.config["channels_last"])
    run = run_of(store, ref)
    config = run.config
    outputs = domain_of(config, store).num_outputs
    with stage("models"):
        model = build_configured(config.model, outputs)
        load_into(model, run.checkpoint(ref["checkpoint"] if checkpoint is None else checkpoint))
        return _placed(model, config.device, config.channels_last)


def _init_weights(store: Store, init: dict) -> Path:
    """The file a P-T run starts from: a weights job's, or pre-training's checkpoint."""
    source = store.load(init["job"])
    if source.kind == "weights":
        return final_weights(store, source)
    path = checkpoint_path(store.job_dir(source) / "run", init["epoch"])
    if not path.is_file():
        raise FileNotFoundError(f"pre-training saved no checkpoint at epoch {init['epoch']} ({path}); "
                                "set the source recipe's checkpoint_every so that it does")
    return path


def _train_job(store: Store, job: Job, progress: bool) -> None:
    config = TrainConfig.model_validate(job.config["train"])
    init = job.config.get("init")
    if init is not None:
        config = config.model_copy(update={"init": str(_init_weights(store, init))})
    domain = domain_of(config, store)
    with stage("train"):
        train(config, store.job_dir(job) / "run", progress=progress, domain=domain)


def _weights_job(store: Store, job: Job, progress: bool) -> None:
    """Read brought weights (a file, torchvision's, timm's), check that they fit the
    study's architecture, and write them as safetensors in the job's folder."""
    with stage("models"):
        state = load_pretrained(job.config["weights"], progress=progress)
        pretrained_model(ModelConfig.model_validate(job.config["model"]), state)  # names every mismatch
    with stage("write"):
        save_weights(state, final_weights(store, job))


def _source_score_job(store: Store, job: Job, _progress: bool) -> None:
    """Brought P (and each checkpoint of its trajectory) scored on the source test data:
    one row per checkpoint, in a run's metrics columns (``epoch``, ``test_loss``,
    ``test_<metric>``)."""
    config = job.config
    data = DataConfig.model_validate(config["data"])
    domain = _domain(data.model_dump_json(), data_cache(store, data))
    loader = domain.loader("test", config["eval_batch_size"], channels_last=config["channels_last"])
    rows = []
    for epoch, job_id in config["checkpoints"]:
        model = load_model(store, {"job": job_id, "checkpoint": "final"})
        _check_source_outputs(model, loader, domain.num_outputs)
        with stage("analysis"):
            result = evaluate(model, loader)
        metric = score_metric(result)
        rows.append({"epoch": epoch, "test_loss": result["loss"], f"test_{metric}": result[metric]})
    with stage("write"):
        write_table(pd.DataFrame(rows), store.job_dir(job) / "result")


def _check_source_outputs(model: nn.Module, loader, classes: int) -> None:
    """P's outputs are the source data's classes (its source score and criticality are
    computed on those labels)."""
    with torch.no_grad():
        outputs = model(next(iter(loader))[0][:1].to(next(model.parameters()).device)).shape[-1]
    if outputs != classes:
        raise ValueError(f"P has {outputs} outputs, source.data {classes} classes; P's source score and criticality "
                         "need the data P was pre-trained on, labelled as P's outputs (or leave out source.data)")


def job_modules(config: dict) -> Modules:
    """The study's ``modules:`` from an analysis job's config (:func:`.plan.modules_config`;
    None: each model's default partition)."""
    modules = config.get("modules")
    return dict(modules) if modules and isinstance(modules[0], list) else modules


class AnalysisInputs:
    """What an analysis job reads: its settings (validated: the defaults fill what the
    job file leaves out), its models (by role name), and the target's unshuffled test
    data and training data (for BatchNorm recalibration)."""

    def __init__(self, store: Store, job: Job) -> None:
        self.store, self.job = store, job
        self.settings = Analyses.settings_model(job.kind).model_validate(job.config["settings"])
        self.arguments = self.settings.arguments()
        self.modules = job_modules(job.config)
        self.refs: dict[str, dict] = job.config["models"]
        target_ref = next(ref for name, ref in self.refs.items() if Role.parse(name).kind != "P")
        self.config = run_of(store, target_ref).config
        self.domain = domain_of(self.config, store)

    def model(self, name: str, checkpoint: str | int | None = None) -> nn.Module:
        return load_model(self.store, self.refs[name], checkpoint)

    def models(self, names=None) -> dict[str, nn.Module]:
        return {name: self.model(name) for name in (names or self.refs)}

    def fresh_model(self, seed: int) -> nn.Module:
        """A freshly initialised network of the target runs' architecture (initialised
        as an RI-T run is, under ``seed``), placed as the runs' models are."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_configured(self.config.model, self.domain.num_outputs)
        return _placed(model, self.config.device, self.config.channels_last)

    def run(self, name: str) -> TrainingRun:
        return run_of(self.store, self.refs[name])

    def test_loader(self, max_examples: int | None = None, batch_size: int | None = None):
        return self.domain.loader("test", batch_size or self.config.eval_batch_size, limit=max_examples,
                                  channels_last=self.config.channels_last)

    def train_loader(self, batch_size: int | None = None):
        """Training images without augmentation, in a fixed shuffled order."""
        return self.domain.loader("train", batch_size or self.config.batch_size, shuffle=True, seed=0,
                                  channels_last=self.config.channels_last)

    def write(self, frame, name: str = "result") -> None:
        with stage("write"):
            write_table(frame, self.store.job_dir(self.job) / name)


def _distance_job(inputs: AnalysisInputs) -> None:
    from ..analysis.distance import param_distance

    models = inputs.models()
    names = list(models)
    frames = [param_distance(models[a], models[b], modules=inputs.modules, **inputs.arguments).assign(model_a=a, model_b=b)
              for i, a in enumerate(names) for b in names[i + 1:]]
    inputs.write(pd.concat(frames, ignore_index=True))


def _mistakes_job(inputs: AnalysisInputs) -> None:
    from ..analysis.mistake_overlap import mistake_examples, mistakes

    models = inputs.models()
    loader = inputs.test_loader(inputs.settings.max_examples)
    frame = mistakes(models, loader, **inputs.arguments)
    inputs.write(frame)
    pairs = list(zip(frame["model_a"], frame["model_b"]))
    a, b = next(((a, b) for a, b in pairs if (Role.parse(a).kind, Role.parse(b).kind) == ("P-T", "RI-T")), pairs[0])
    found = mistake_examples(models, loader, a, b, limit=8, threshold=inputs.settings.threshold)
    examples = [{"model_a": a, "model_b": b, "category": category, "index": index}
                for category, indices in found.items() for index in indices]
    inputs.write(pd.DataFrame(examples, columns=["model_a", "model_b", "category", "index"]), "examples")


def _spectrum_job(inputs: AnalysisInputs) -> None:
    from ..analysis.spectra import spectrum, spectrum_summary

    frames = [spectrum(model, modules=inputs.modules).assign(model=name) for name, model in inputs.models().items()]
    values = pd.concat(frames, ignore_index=True)
    inputs.write(values)
    inputs.write(spectrum_summary(values, **inputs.arguments), "summary")


def _interpolation_job(inputs: AnalysisInputs) -> None:
    from ..analysis.interpolation import barrier

    test, train = inputs.test_loader(inputs.settings.max_examples), inputs.train_loader()
    curves, barriers = [], []
    for a, b in inputs.job.config["pairs"]:
        curve = interpolation_curve(inputs.model(a), inputs.model(b), test, recalibration_loader=train,
                                    **inputs.arguments)
        curves.append(curve.assign(model_a=a, model_b=b))
        barriers.append({"model_a": a, "model_b": b, "bn": curve["bn"].iloc[0], **barrier(curve)})
    inputs.write(pd.concat(curves, ignore_index=True))
    inputs.write(pd.DataFrame(barriers), "barriers")


def interpolation_curve(model_a: nn.Module, model_b: nn.Module, loader, **arguments) -> pd.DataFrame:
    """:func:`~transferscope.analysis.interpolate`; where the two models are bit-identical
    (a run whose best epoch is its last, against its final weights), Θ(α) is that model
    at every α (``torch.lerp`` is exact for equal ends), so it is evaluated once and its
    row repeated for each α."""
    from ..analysis.interpolation import DEFAULT_ALPHAS, interpolate

    if not _equal_states(model_a.state_dict(), model_b.state_dict()):
        return interpolate(model_a, model_b, loader, **arguments)
    alphas = [float(alpha) for alpha in arguments.pop("alphas", DEFAULT_ALPHAS)]
    once = interpolate(model_a, model_b, loader, alphas=alphas[:1], **arguments)
    return pd.concat([once.assign(alpha=alpha) for alpha in alphas], ignore_index=True)


def _basin_job(inputs: AnalysisInputs) -> None:
    from ..analysis.basins import basin

    test, train = inputs.test_loader(inputs.settings.max_examples), inputs.train_loader()
    frames = [basin(inputs.model(a), inputs.model(b), test, recalibration_loader=train, **inputs.arguments)
              .assign(model_a=a, model_b=b) for a, b in inputs.job.config["pairs"]]
    inputs.write(pd.concat(frames, ignore_index=True))


def _cka_job(inputs: AnalysisInputs) -> None:
    from ..analysis.similarity import compare_representations

    loader = inputs.test_loader(inputs.settings.max_examples, inputs.settings.batch_size)
    models = inputs.models()
    floor = inputs.job.config.get("chance_floor")
    if floor is not None:
        models[floor["model"]] = inputs.fresh_model(floor["seed"])
    inputs.write(compare_representations(models, loader, modules=inputs.modules, **inputs.arguments))


def _rewind_job(inputs: AnalysisInputs) -> None:
    from ..analysis.rewinding import rewind

    splits = {"train": inputs.train_loader(), "test": inputs.test_loader()}
    frames = [rewind(inputs.model(name), inputs.run(name).checkpoint("init"), splits,
                     recalibration_loader=splits["train"], modules=inputs.modules, **inputs.arguments).assign(model=name)
              for name in inputs.refs]
    inputs.write(pd.concat(frames, ignore_index=True))


class Trajectory(NamedTuple):
    """A model's way from its start: θ^0, its checkpoints from θ^0 on (the optimization
    path) and θ_opt (None where no best epoch after 0 is defined: θ_F is the only start)."""

    initial: Mapping[str, torch.Tensor]
    states: Sequence[Mapping[str, torch.Tensor]]
    best: Mapping[str, torch.Tensor] | None


def run_trajectory(run: TrainingRun) -> Trajectory:
    """A training run's trajectory: its saved epochs, its best checkpoint (θ_opt at epoch 0
    is the initialisation itself: no path to walk from it)."""
    return Trajectory(run.checkpoint("init"), [run.checkpoint(epoch) for epoch in run.epochs()],
                      run.checkpoint("best") if run.best_epoch > 0 else None)


def brought_trajectory(store: Store, checkpoints: list) -> Trajectory:
    """Brought weights' trajectory (``[[epoch, weights job id], ...]`` from epoch 0): no
    best epoch is known."""
    states = [load_weights(final_weights(store, store.load(job_id))) for _, job_id in checkpoints]
    return Trajectory(states[0], states, None)


def model_criticality(final: nn.Module, trajectory: Trajectory, batches, settings, modules: Modules,
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-module criticality of one model (value by the exact fast search) and the full
    (α, σ) grid of ``settings.heatmap_module`` (Fig. 6), along the direct and optimization
    paths from θ_F and, where the trajectory has it, θ_opt. Where θ_opt is θ_F (the best
    epoch is the last), θ_opt's rows are θ_F's, computed once."""
    from ..analysis.module_criticality import criticality, network_criticality

    heatmap_unit = Partition.of(final, modules).select([settings.heatmap_module])
    starts = ("final", "best") if trajectory.best is not None else ("final",)
    best_is_final = trajectory.best is not None and _equal_states(trajectory.best, final.state_dict())
    variant = {"path_states": trajectory.states, "best_state": trajectory.best}
    values: list[pd.DataFrame] = []
    heatmaps: list[pd.DataFrame] = []
    for path in ("direct", "optimization"):
        for start in starts:
            if start == "best" and best_is_final:  # the same end point: the same numbers
                values.append(values[-1].assign(start=start))
                heatmaps.append(heatmaps[-1].assign(start=start))
                continue
            arguments = {**settings.arguments(), **variant, "path": path, "start": start}
            values.append(network_criticality(final, trajectory.initial, batches, modules=modules, method="fast",
                                              **arguments))
            heatmaps.append(criticality(final, trajectory.initial, batches, modules=heatmap_unit, method="grid",
                                        **arguments))
    return pd.concat(values, ignore_index=True), pd.concat(heatmaps, ignore_index=True)


def _write_criticality(folder: Path, results: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    """Each model's criticality rows (``result``) and heatmap grid (``grid``), tagged with its name."""
    with stage("write"):
        for index, name in enumerate(("result", "grid")):
            write_table(pd.concat([frames[index].assign(model=model) for model, frames in results.items()],
                                  ignore_index=True), folder / name)


def _criticality_job(inputs: AnalysisInputs) -> None:
    """:func:`model_criticality` of each model of a target, on its test data, along its
    fine-tuning run."""
    batches = cache_batches(inputs.test_loader(inputs.settings.max_examples))
    _write_criticality(inputs.store.job_dir(inputs.job), {
        name: model_criticality(inputs.model(name, "final"), run_trajectory(inputs.run(name)), batches,
                                inputs.settings, inputs.modules) for name in inputs.refs})


def _source_criticality_job(store: Store, job: Job) -> None:
    """:func:`model_criticality` of P on the source test data, from its initial weights
    along its pre-training: the pre-training run's checkpoints (θ_opt its best), or the
    brought trajectory ``source.checkpoints`` (θ_F only)."""
    settings = Analyses.settings_model("criticality").model_validate(job.config["settings"])
    source, ref = job.config["source"], job.config["models"]["P"]
    data = DataConfig.model_validate(source["data"])
    domain = _domain(data.model_dump_json(), data_cache(store, data))
    loader = domain.loader("test", source["eval_batch_size"], limit=settings.max_examples,
                           channels_last=source["channels_last"])
    final = load_model(store, ref)
    _check_source_outputs(final, loader, domain.num_outputs)
    batches = cache_batches(loader)
    p_job = store.load(ref["job"])
    trajectory = run_trajectory(run_of(store, ref)) if p_job.kind == "pretrain" \
        else brought_trajectory(store, source["trajectory"])
    _write_criticality(store.job_dir(job), {"P": model_criticality(final, trajectory, batches, settings,
                                                                   job_modules(job.config))})


def _criticality_runner(store: Store, job: Job, progress: bool) -> None:
    """A target's models (:func:`_criticality_job`), or P on the source data
    (:func:`_source_criticality_job`: its config has ``source``), charged to "analysis"."""
    if "source" not in job.config:
        _analysis(_criticality_job)(store, job, progress)
        return
    with stage("analysis"):
        _source_criticality_job(store, job)


def _soup_job(inputs: AnalysisInputs) -> None:
    """The uniform soup of the P-T seeds and that of the RI-T seeds, each group's rows
    tagged with its kind (column ``group``)."""
    from ..analysis.soups import soup

    test, train = inputs.test_loader(inputs.settings.max_examples), inputs.train_loader()
    kinds = {name: Role.parse(name).kind for name in inputs.refs}
    frames = [soup(inputs.models([name for name in kinds if kinds[name] == kind]), test, recalibration_loader=train,
                   **inputs.arguments).assign(group=kind) for kind in dict.fromkeys(kinds.values())]
    inputs.write(pd.concat(frames, ignore_index=True))


def _equal_states(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same tensors, bit for bit."""
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key].to(a[key].device)) for key in a)


def _analysis(function: Callable[[AnalysisInputs], None]) -> Callable[[Store, Job, bool], None]:
    """A runner that calls ``function`` on the job's inputs, its time charged to the
    stage "analysis" (but for the data, models and writing it asks for)."""

    def run(store: Store, job: Job, _progress: bool) -> None:
        with stage("analysis"):
            function(AnalysisInputs(store, job))

    return run


RUNNERS: dict[str, Callable[[Store, Job, bool], None]] = {
    "pretrain": _train_job, "finetune": _train_job, "frozen": _train_job, "weights": _weights_job,
    "source_score": _source_score_job,
    "distance": _analysis(_distance_job), "mistakes": _analysis(_mistakes_job),
    "spectrum": _analysis(_spectrum_job), "interpolation": _analysis(_interpolation_job),
    "basin": _analysis(_basin_job), "cka": _analysis(_cka_job), "rewind": _analysis(_rewind_job),
    "criticality": _criticality_runner, "soup": _analysis(_soup_job),
}
