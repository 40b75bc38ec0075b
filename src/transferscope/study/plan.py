"""From a study spec to a plan: the list of jobs, each identified by the hash of the
settings that decide its numbers and of the jobs it depends on (:mod:`.job`), so that
changing one setting changes only the jobs it affects (and those downstream of them).

P comes from a ``pretrain`` job, or, for brought weights, from a ``weights`` job per
distinct weights (P and each checkpoint of its trajectory) whose id hashes only their
content (:func:`~transferscope.models.pretrained.weights_identity`), and a
``source_score`` job scores them on the source data when it is given. A user's
architecture (an import path) adds its file's digest to the identity of every job
that builds it. The architecture is built on the meta device first, so that a bad one
fails the plan, before any job runs."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch

from ..analysis.claims import FLOOR_MODEL
from ..analysis.module_criticality import DEFAULT_GRID
from ..config import TrainConfig
from ..data.load import example_counts
from ..io import content_hash
from ..models.partition import Partition
from ..models.pretrained import weights_identity
from ..models.registry import arch_source, build_configured, check_buildable
from ..roles import Role
from ..seeding import derive_seed
from .job import Job, decisive
from .spec import StudySpec

TRAIN_KINDS = ("pretrain", "finetune", "frozen")  # frozen: P-T with its first k units frozen
SOURCE_KINDS = ("weights", "source_score")  # P brought as weights, and its score on the source data
ANALYSIS_KINDS = ("cka", "distance", "mistakes", "spectrum", "interpolation", "basin", "soup", "rewind",
                  "criticality")
PARTITIONED = ("cka", "distance", "spectrum", "rewind", "criticality")  # analyses that take the study's modules:
__all__ = ["ANALYSIS_KINDS", "SOURCE_KINDS", "TRAIN_KINDS", "Job", "Planner", "build_plan", "levels"]


def _train_cost(config: TrainConfig) -> float:
    """Images through the network: 3 passes (forward+backward) per training image, one
    per evaluated image, per epoch; the image counts of files on disk where the data has
    them (:func:`~transferscope.data.load.example_counts`)."""
    n_train, n_test = example_counts(config.data)
    evaluated = n_test + min(n_train, config.clean_train_examples or n_train)
    return config.epochs * (3 * n_train + evaluated) + evaluated


class Planner:
    """Builds the jobs of a study in dependency order."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.jobs: dict[str, Job] = {}
        check_buildable(spec.model)
        self.arch_source = arch_source(spec.model.arch)

    def add(self, job: Job) -> Job:
        self.jobs.setdefault(job.id, job)
        return self.jobs[job.id]

    def _built(self, config: dict[str, Any], identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A job's config and identity, with the file and digest of a user's architecture
        where the model is one (editing that file reruns every job that builds it)."""
        if self.arch_source is None:
            return config, identity
        return config | {"arch_source": self.arch_source}, identity | {"arch_source": self.arch_source["sha256"]}

    # ------------------------------------------------------------------ the source model P
    def pretrain(self) -> Job:
        source = self.spec.one_source
        recipe, data = source.recipe, source.data
        assert recipe is not None and data is not None  # only a source that pre-trains has this job
        config = TrainConfig(data=data, model=self.spec.model, seed=source.seed, **recipe.model_dump())
        meta = {"role": "P", "target": None, "seed": source.seed, "block_size": None, "permutation_seed": None,
                "from_epoch": None}
        job_config, identity = self._built({"train": config.model_dump(mode="json"), "meta": meta},
                                           {"train": decisive(config)})
        return self.add(Job("pretrain", "P (source)", job_config,
                            cost=_train_cost(config), identity=identity))

    def weights(self, weights: str) -> Job:
        """The job that materialises brought weights in its folder; its id hashes their
        content only (one job, one copy, per distinct weights)."""
        recipe = self.spec.finetune
        config = {"weights": weights, "model": self.spec.model.model_dump(mode="json"), "device": recipe.device,
                  "channels_last": recipe.channels_last}
        return self.add(Job("weights", f"P weights {Path(weights).name}", config,
                            identity={"weights": weights_identity(weights)}))

    def source_model(self, epoch: int | None = None) -> Job:
        """The job that holds P (``epoch`` None or P's own), or P at ``epoch`` of its
        pre-training run or brought trajectory."""
        source = self.spec.one_source
        if source.pretrains:
            return self.pretrain()
        if epoch is not None and epoch != source.final_epoch:
            return self.weights(source.checkpoints[epoch])
        weights = source.p_weights
        assert weights is not None  # a source that pre-trains nothing brings weights
        return self.weights(weights)

    def source_score(self) -> Job | None:
        """Brought weights scored on the source data (P, and each checkpoint of its
        trajectory), when the study gives ``source.data``."""
        spec, source = self.spec, self.spec.one_source
        if source.pretrains or source.data is None:
            return None
        trajectory: dict[int | None, Job] = {epoch: self.weights(weights)
                                             for epoch, weights in source.checkpoints.items()}
        trajectory = trajectory or {None: self.source_model()}
        recipe = spec.finetune
        checkpoints = [[epoch, job.id] for epoch, job in trajectory.items()]
        config, identity = self._built(
            {"data": source.data.model_dump(mode="json"), "model": spec.model.model_dump(mode="json"),
             "checkpoints": checkpoints, "eval_batch_size": recipe.eval_batch_size, "device": recipe.device,
             "channels_last": recipe.channels_last},
            {"data": decisive(source.data), "model": decisive(spec.model), "checkpoints": checkpoints})
        return self.add(Job("source_score", "P source score", config, tuple(job.id for job in trajectory.values()),
                            cost=len(trajectory) * (source.data.n_test or 1000), identity=identity))

    def source_criticality(self) -> Job | None:
        """P's criticality on the source data, from its initial weights along its
        pre-training (the run's checkpoints, or the brought ``source.checkpoints``) and the
        direct path, where it applies (:func:`source_criticality_needs`); one job, whose
        config has ``source`` (the data, and the brought trajectory's weights jobs)."""
        spec, source, crit = self.spec, self.spec.one_source, self.spec.analyses.criticality
        needs = source_criticality_needs(spec)
        if needs is not None and crit.enabled and crit.source:
            raise ValueError(f"analyses.criticality.source is true, but P's criticality on its source data cannot be "
                             f"measured: {needs}")
        if needs is not None:
            return None
        assert source.data is not None  # source_criticality_needs: P's criticality needs source data
        p_job = self.source_model()
        brought = {} if source.pretrains else {epoch: self.weights(weights).id
                                               for epoch, weights in source.checkpoints.items()}
        trajectory = [[epoch, job_id] for epoch, job_id in brought.items()]
        recipe = source.recipe if source.recipe is not None else spec.finetune
        models = {"P": self.model_ref(p_job)}
        config: dict[str, Any] = {
            "settings": crit.model_dump(mode="json"), "models": models,
            "source": {"data": source.data.model_dump(mode="json"), "trajectory": trajectory,
                       "eval_batch_size": recipe.eval_batch_size, "channels_last": recipe.channels_last}}
        identity: dict[str, Any] = {"settings": decisive(crit), "models": models, "data": decisive(source.data),
                                    "model": decisive(spec.model), "trajectory": trajectory}
        if spec.modules is not None:
            config["modules"] = identity["modules"] = modules_config(spec.modules)
        config, identity = self._built(config, identity)
        deps = tuple(sorted({p_job.id, *brought.values()}))
        cost = criticality_cost(crit, source.data.n_test or 1000, variants=4 if source.pretrains else 2)
        return self.add(Job("criticality", "criticality P (source data)", config, deps, cost=cost, identity=identity))

    def _check_trajectory(self) -> None:
        """Brought weights and a trajectory: its last checkpoint must be P itself."""
        source = self.spec.one_source
        if source.pretrains or not source.checkpoints or source.weights is None:
            return
        last = max(source.checkpoints)
        if self.weights(source.weights).id != self.weights(source.checkpoints[last]).id:
            raise ValueError(f"source.checkpoints ends at epoch {last} with other weights than source.weights; the "
                             "trajectory ends at P: make its last epoch P's weights, or drop source.weights (it "
                             "defaults to the last checkpoint)")

    def finetune(self, target: str, kind: str, seed: int, *, block_size=None, permutation_seed: int = 0,
                 from_epoch: int | None = None, freeze: int = 0) -> Job:
        """A P-T run (``kind`` "P-T": init from P at ``from_epoch``, default its last
        epoch) or an RI-T run. A run of the block-shuffle sweep (``block_size`` set; the
        image size for its unshuffled baseline) trains without augmentation, as the paper's
        shuffled runs must, so that every point of the sweep has one recipe; its meta has a
        ``permutation_seed`` (NaN for the runs outside the sweep). A P-T run with its first
        ``freeze`` units frozen is a job of kind ``frozen`` with ``freeze`` in its meta. The
        runs of the three sweeps (shuffle, checkpoints, freeze) are tested at epoch 0 and
        their last epoch only (``test_every``): the sweeps report final scores, and the
        optimization speed comes from the training series."""
        spec = self.spec
        data = spec.target(target).data.model_copy(update={"block_size": block_size, "shuffle_seed": permutation_seed})
        recipe = (spec.finetune if kind == "P-T" else spec.scratch).model_dump()
        if block_size is not None:
            recipe["augment"] = False
        if freeze:
            recipe |= {"freeze": freeze, "modules": spec.modules}
        last = spec.one_source.final_epoch
        if block_size is not None or freeze or (kind == "P-T" and from_epoch not in (None, last)):
            recipe["test_every"] = max(1, recipe["epochs"])  # a sweep reports final scores: test at 0 and the end
        config = TrainConfig(data=data, model=spec.model, seed=seed, **recipe)
        meta = {"role": kind, "target": target, "seed": seed, "block_size": block_size,
                "permutation_seed": permutation_seed if block_size is not None else None,
                "from_epoch": (last if from_epoch is None else from_epoch) if kind == "P-T" else None}
        if freeze:
            meta["freeze"] = freeze
        job_config: dict[str, Any] = {"train": config.model_dump(mode="json"), "meta": meta}
        identity: dict[str, Any] = {"train": decisive(config)}
        deps: tuple[str, ...] = ()
        label = f"{kind} {target} s{seed}"
        if kind == "P-T":
            source = self.source_model(meta["from_epoch"])
            job_config["init"] = {"job": source.id, "epoch": meta["from_epoch"]}
            if source.kind == "pretrain":  # brought weights: the weights job's id names them
                identity["init_epoch"] = meta["from_epoch"]
            deps = (source.id,)
            if meta["from_epoch"] != last:
                label += f" from P@{from_epoch}"
        if block_size is not None:
            label += f" block={block_size} perm={permutation_seed}"
        if freeze:
            label += f" freeze={freeze}"
        job_config, identity = self._built(job_config, identity)
        return self.add(Job("frozen" if freeze else "finetune", label, job_config, deps, target,
                            cost=_train_cost(config), identity=identity))

    # ------------------------------------------------------------------ analyses
    def model_ref(self, job: Job, checkpoint: str | int = "final") -> dict[str, Any]:
        return {"job": job.id, "checkpoint": checkpoint}

    def analysis(self, kind: str, target: str, models: dict[str, dict], cost: float, label: str = "",
                 **extra: Any) -> Job:
        """Analysis ``kind`` of ``models`` (role name -> model reference) with the
        study's settings for it."""
        settings = getattr(self.spec.analyses, kind)
        if kind in PARTITIONED and self.spec.modules is not None:
            extra = {"modules": modules_config(self.spec.modules), **extra}
        config = {"settings": settings.model_dump(mode="json"), "models": models, **extra}
        identity = {"settings": decisive(settings), "models": models, **extra}
        deps = tuple(sorted({ref["job"] for ref in models.values()}))
        return self.add(Job(kind, f"{kind} {target}{label}", config, deps, target, cost=cost, identity=identity))

    def build(self) -> list[Job]:
        spec = self.spec
        self._check_trajectory()
        pretrain = self.source_model()
        self.source_score()
        self.source_criticality()
        sweep = spec.shuffle
        freeze_units = self.freeze_units() if spec.freeze.units else ()
        for target in spec.targets:
            label = target.label
            pt = {seed: self.finetune(label, "P-T", seed) for seed in spec.seeds}
            rit = {seed: self.finetune(label, "RI-T", seed) for seed in spec.seeds}
            if sweep.block_sizes and (sweep.targets is None or label in sweep.targets):
                self._shuffle_sweep(label, target.data.image_size)
            if spec.checkpoints.targets is None or label in spec.checkpoints.targets:
                for epoch in spec.checkpoints.epochs:
                    for seed in spec.checkpoints.run_seeds:
                        self.finetune(label, "P-T", seed, from_epoch=epoch)
            self._freeze_sweep(label, freeze_units)
            self._analyses(label, pretrain, pt, rit)
        return list(self.jobs.values())

    def freeze_units(self) -> tuple[int, ...]:
        """The freeze sweep's numbers k of frozen leading units: ``auto`` = every k from 0
        to the partition's units − 1 (:class:`~.spec.FreezeSweep`)."""
        units = self.unit_names()
        chosen = tuple(range(len(units))) if self.spec.freeze.units == "auto" else self.spec.freeze.units
        too_many = [k for k in chosen if k >= len(units)]
        if too_many:
            raise ValueError(f"freeze: k = {too_many} would freeze every unit of the partition ({', '.join(units)}); "
                             f"the last unit trains, so k is at most {len(units) - 1}")
        return chosen

    def unit_names(self) -> list[str]:
        """The units of the study's partition (``modules``), from the model built on the
        meta device (on the CPU when its builder needs real tensors)."""
        try:
            with torch.device("meta"):
                model = build_configured(self.spec.model, 2)
        except Exception:  # noqa: BLE001 - a builder that reads values back: check_buildable let it pass
            model = build_configured(self.spec.model, 2)
        return Partition.of(model, self.spec.modules).names

    def _freeze_sweep(self, target: str, units: tuple[int, ...]) -> None:
        """P-T runs with the first k units frozen, per k and run seed (k = 0: the main P-T run)."""
        sweep = self.spec.freeze
        if sweep.targets is None or target in sweep.targets:
            for seed in sweep.run_seeds or self.spec.seeds:
                for k in units:
                    self.finetune(target, "P-T", seed, freeze=k)

    def _shuffle_sweep(self, target: str, image_size: int) -> None:
        """P-T and RI-T runs per block size, permutation and run seed, and the sweep's own
        unshuffled point (block size = image size) on the same recipe (no augmentation)."""
        sweep = self.spec.shuffle
        for seed in sweep.run_seeds:
            for kind in ("P-T", "RI-T"):
                self.finetune(target, kind, seed, block_size=image_size)
                for size in sweep.block_sizes:
                    for perm in sweep.permutation_seeds:
                        self.finetune(target, kind, seed, block_size=size, permutation_seed=perm)

    def _analyses(self, target: str, pretrain: Job, pt: dict[int, Job], rit: dict[int, Job]) -> None:
        spec, settings = self.spec, self.spec.analyses
        data = spec.target(target).data
        n_test = data.n_test or 1000
        first = min(spec.seeds)
        runs = {Role("P"): pretrain} | {Role("P-T", s): job for s, job in pt.items()} \
            | {Role("RI-T", s): job for s, job in rit.items()}
        models = {str(role): self.model_ref(job) for role, job in runs.items()}
        if settings.cka.enabled:  # with a fresh network of the same architecture: the chance floor
            floor = {"model": FLOOR_MODEL, "seed": derive_seed(first, "cka chance floor")}
            self.analysis("cka", target, models, (len(models) + 1) * min(n_test, settings.cka.max_examples),
                          chance_floor=floor)
        if settings.distance.enabled:
            self.analysis("distance", target, models, 0)
        if settings.mistakes.enabled:
            trained = {str(role): models[str(role)] for role in runs if role.kind != "P"}
            self.analysis("mistakes", target, trained, len(trained) * n_test)
        firsts = [Role("P-T", first), Role("RI-T", first)]
        if settings.spectrum.enabled:
            self.analysis("spectrum", target, {str(r): models[str(r)] for r in [Role("P"), *firsts]}, 0)
        pairs = self._pairs()
        if settings.interpolation.enabled:
            interp = settings.interpolation
            best = {role.at("best"): self.model_ref(runs[role], "best") for role in firsts}
            refs = models | {str(role): ref for role, ref in best.items()}
            evaluated = min(n_test, interp.max_examples or n_test)
            recalibrated = 64 * interp.recalibration_batches if interp.recalibration_batches else data.n_train or 1000
            cost = (len(pairs) + 2) * len(interp.alphas) * (evaluated + recalibrated)
            self.analysis("interpolation", target, refs, cost,
                          pairs=_names(pairs + [(role, role.at(None)) for role in best]))
        same_kind = [(a, b) for a, b in pairs if a.kind == b.kind]
        if settings.basin.enabled and same_kind:
            basin = settings.basin
            evaluated = min(n_test, basin.max_examples or n_test)
            cost = len(same_kind) * (basin.n_segment + 2 * len(basin.sigmas) * basin.n_noise + 20) * evaluated
            self.analysis("basin", target, models, cost, pairs=_names(same_kind))
        self._soup(target, models, n_test)
        chosen = {str(role): models[str(role)] for role in firsts}
        if settings.rewind.enabled:
            self.analysis("rewind", target, chosen, 2 * 7 * 2 * min(n_test, settings.rewind.max_examples or n_test))
        crit = settings.criticality
        if crit.enabled and (crit.targets is None or target in crit.targets):
            cost = criticality_cost(crit, n_test)
            for name, ref in chosen.items():  # one job per model, so that they run side by side
                self.analysis("criticality", target, {name: ref}, cost, f" {name}")

    def _soup(self, target: str, models: dict[str, dict], n_test: int) -> None:
        """The soup job of a target (its final P-T and RI-T models), when the study has
        two or more seeds: a soup averages several."""
        spec, soup = self.spec, self.spec.analyses.soup
        if not soup.enabled or len(spec.seeds) < 2:
            return
        members = {name: ref for name, ref in models.items() if Role.parse(name).kind != "P"}
        evaluated = min(n_test, soup.max_examples or n_test)
        n_train = spec.target(target).data.n_train
        recalibrated = 64 * soup.recalibration_batches if soup.recalibration_batches else n_train or 1000
        self.analysis("soup", target, members, (len(members) + 2) * (evaluated + recalibrated))

    def _pairs(self) -> list[tuple[Role, Role]]:
        """P-T/P-T and RI-T/RI-T pairs of consecutive seeds, and P-T/RI-T of each seed."""
        seeds = list(self.spec.seeds)
        pairs = [(Role(kind, a), Role(kind, b)) for kind in ("P-T", "RI-T") for a, b in zip(seeds, seeds[1:])]
        return pairs + [(Role("P-T", s), Role("RI-T", s)) for s in seeds]


def criticality_cost(crit: Any, n_test: int, variants: int = 4) -> int:
    """Images through the network of one model's criticality: per (path, start) variant,
    the fast search of every module and the heatmap module's grid."""
    evaluated = min(n_test, crit.max_examples or n_test)
    alphas, sigmas = len(crit.alphas or DEFAULT_GRID), len(crit.sigmas or DEFAULT_GRID)
    return variants * (6 * alphas * 4 + alphas * sigmas) * crit.samples * evaluated


def source_criticality_needs(spec: StudySpec) -> str | None:
    """Why a one-source study measures no criticality of P on its source data, in a few
    words naming what it needs (None: it measures it). It needs source data and a
    trajectory with its start: P pre-trained here (with ``analyses.criticality.source:
    true``), or brought ``source.checkpoints`` from epoch 0 (on by default)."""
    source, crit = spec.one_source, spec.analyses.criticality
    if not crit.enabled:
        return "analyses.criticality is disabled"
    if crit.source is False:
        return "analyses.criticality.source is false"
    if source.data is None:
        return ("it needs source.data (the data P was pre-trained on, labelled as P's outputs) and source.checkpoints "
                "from epoch 0")
    if source.pretrains:
        return None if crit.source else "it is off by default for P pre-trained here; set analyses.criticality.source: true"
    if 0 not in source.checkpoints or len(source.checkpoints) < 2:
        return ("it needs P's trajectory from its start: source.checkpoints with epoch 0 (P's initial weights) and P's "
                f"epoch; it has {sorted(source.checkpoints) or 'none'}")
    return None


def modules_config(modules: tuple[str, ...] | dict[str, tuple[str, ...] | str]) -> list:
    """The study's ``modules:`` as an analysis job stores it: a list of names, or of
    ``[unit, modules]`` pairs, so that the units keep their order in the job file (whose
    mapping keys are sorted); :func:`.jobs.job_modules` reads it back."""
    if isinstance(modules, dict):
        return [[unit, paths if isinstance(paths, str) else list(paths)] for unit, paths in modules.items()]
    return list(modules)


def _names(pairs: list[tuple[Role, Role]]) -> list[list[str]]:
    """Pairs of roles as stored in a job's config: lists of two names."""
    return [[str(a), str(b)] for a, b in pairs]


def build_plan(spec: StudySpec) -> list[Job]:
    """Every job of the study, dependencies before dependants. A study of several
    sources is the union of its one-source studies (:meth:`StudySpec.per_source`): a job
    they share (an RI-T run, whose id names no source) is one job; the label of a job of
    one source starts with that source's label."""
    plans = [(label, jobs) for label, _, jobs in source_plans(spec)]
    if len(plans) == 1:
        return plans[0][1]
    uses = Counter(job.id for _, jobs in plans for job in jobs)
    merged: dict[str, Job] = {}
    for label, jobs in plans:
        for job in jobs:
            own = uses[job.id] < len(plans)
            merged.setdefault(job.id, replace(job, label=f"[{label}] {job.label}") if own else job)
    return list(merged.values())


SourcePlans = list[tuple[str | None, StudySpec, list[Job]]]
_kept_plans: ContextVar[dict[str, SourcePlans] | None] = ContextVar("kept_plans", default=None)


@contextmanager
def plans_kept() -> Iterator[None]:
    """Within the block, :func:`source_plans` plans a study (a spec of given content) once
    and gives the same plans back after (a report reads them several times). Nested
    blocks share the outermost one's plans."""
    if _kept_plans.get() is not None:
        yield
        return
    token = _kept_plans.set({})
    try:
        yield
    finally:
        _kept_plans.reset(token)


def source_plans(spec: StudySpec) -> SourcePlans:
    """Each source's one-source study and its jobs (shared jobs in every source's list);
    planned once per study inside :func:`plans_kept`."""
    kept = _kept_plans.get()
    if kept is None:
        return _plan_sources(spec)
    key = content_hash(spec.model_dump(mode="json"), length=64)
    if key not in kept:
        kept[key] = _plan_sources(spec)
    return kept[key]


def _plan_sources(spec: StudySpec) -> SourcePlans:
    return [(label, single, Planner(single).build()) for label, single in spec.per_source()]


def levels(jobs: list[Job]) -> list[list[Job]]:
    """Group jobs into waves whose dependencies all lie in earlier waves."""
    by_id = {job.id: job for job in jobs}
    depth: dict[str, int] = {}

    def level(job: Job) -> int:
        if job.id not in depth:
            depth[job.id] = 1 + max((level(by_id[d]) for d in job.deps if d in by_id), default=-1)
        return depth[job.id]

    waves: dict[int, list[Job]] = {}
    for job in jobs:
        waves.setdefault(level(job), []).append(job)
    return [waves[k] for k in sorted(waves)]
