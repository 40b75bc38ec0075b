"""From a study spec to a plan: the list of jobs, each identified by the hash of its
resolved config and of the jobs it depends on, so that changing one setting changes
only the jobs it affects (and those downstream of them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig
from ..io import content_hash
from .spec import StudySpec

TRAIN_KINDS = ("pretrain", "finetune")
ANALYSIS_KINDS = ("cka", "distance", "mistakes", "spectrum", "interpolation", "basin", "rewind", "criticality")


@dataclass(frozen=True)
class Job:
    kind: str
    label: str
    config: dict[str, Any]
    deps: tuple[str, ...] = ()
    target: str | None = None
    cost: float = 0.0  # estimated images through the network (forward or forward+backward)
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            digest = content_hash({"kind": self.kind, "config": self.config, "deps": sorted(self.deps)})
            object.__setattr__(self, "id", f"{self.kind}-{digest}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "config": self.config, "deps": list(self.deps),
                "target": self.target, "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        return cls(kind=data["kind"], label=data["label"], config=data["config"], deps=tuple(data["deps"]),
                   target=data["target"], cost=data["cost"], id=data["id"])


def _train_cost(config: TrainConfig, n_train: int | None, n_test: int | None) -> float:
    """Images through the network: 3 passes (forward+backward) per training image, one
    per evaluated image, per epoch."""
    n_train, n_test = n_train or 0, n_test or 0
    evaluated = n_test + min(n_train, config.clean_train_examples or n_train)
    return config.epochs * (3 * n_train + evaluated) + evaluated


class Planner:
    """Builds the jobs of a study in dependency order."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.jobs: dict[str, Job] = {}

    def add(self, job: Job) -> Job:
        self.jobs.setdefault(job.id, job)
        return self.jobs[job.id]

    # ------------------------------------------------------------------ training
    def pretrain(self) -> Job:
        source = self.spec.source
        config = TrainConfig(data=source.data, model=self.spec.model, seed=source.seed, **source.recipe.model_dump())
        meta = {"role": "P", "target": None, "seed": source.seed, "block_size": None, "permutation_seed": None,
                "from_epoch": None}
        return self.add(Job("pretrain", "P (source)", {"train": config.model_dump(mode="json"), "meta": meta},
                            cost=_train_cost(config, source.data.n_train, source.data.n_test)))

    def finetune(self, target: str, role: str, seed: int, *, block_size=None, permutation_seed: int = 0,
                 from_epoch: int | None = None) -> Job:
        """A P-T run (init from P at ``from_epoch``, default its last epoch) or an RI-T run."""
        spec = self.spec
        data = spec.target(target).data.model_copy(update={"block_size": block_size, "shuffle_seed": permutation_seed})
        recipe = spec.finetune if role == "P-T" else spec.scratch
        config = TrainConfig(data=data, model=spec.model, seed=seed, **recipe.model_dump())
        last = spec.source.recipe.epochs
        meta = {"role": role, "target": target, "seed": seed, "block_size": block_size,
                "permutation_seed": permutation_seed if block_size is not None else None,
                "from_epoch": (last if from_epoch is None else from_epoch) if role == "P-T" else None}
        job_config: dict[str, Any] = {"train": config.model_dump(mode="json"), "meta": meta}
        deps: tuple[str, ...] = ()
        label = f"{role} {target} s{seed}"
        if role == "P-T":
            pretrain = self.pretrain()
            job_config["init"] = {"job": pretrain.id, "epoch": meta["from_epoch"]}
            deps = (pretrain.id,)
            if meta["from_epoch"] != last:
                label += f" from P@{from_epoch}"
        if block_size is not None:
            label += f" block={block_size} perm={permutation_seed}"
        return self.add(Job("finetune", label, job_config, deps, target,
                            cost=_train_cost(config, data.n_train, data.n_test)))

    # ------------------------------------------------------------------ analyses
    def model_ref(self, job: Job, checkpoint: str | int = "final") -> dict[str, Any]:
        return {"job": job.id, "checkpoint": checkpoint}

    def analysis(self, kind: str, target: str, models: dict[str, dict], settings: dict, cost: float,
                 label: str = "", **extra: Any) -> Job:
        config = {"settings": settings, "models": models, **extra}
        deps = tuple(sorted({ref["job"] for ref in models.values()}))
        return self.add(Job(kind, f"{kind} {target}{label}", config, deps, target, cost=cost))

    def build(self) -> list[Job]:
        spec = self.spec
        pretrain = self.pretrain()
        sweep = spec.shuffle
        for target in spec.targets:
            label = target.label
            pt = {seed: self.finetune(label, "P-T", seed) for seed in spec.seeds}
            rit = {seed: self.finetune(label, "RI-T", seed) for seed in spec.seeds}
            if sweep.targets is None or label in sweep.targets:
                for size in sweep.block_sizes:
                    for perm in sweep.permutation_seeds:
                        for seed in sweep.run_seeds:
                            for role in ("P-T", "RI-T"):
                                self.finetune(label, role, seed, block_size=size, permutation_seed=perm)
            if spec.checkpoints.targets is None or label in spec.checkpoints.targets:
                for epoch in spec.checkpoints.epochs:
                    for seed in spec.checkpoints.run_seeds:
                        self.finetune(label, "P-T", seed, from_epoch=epoch)
            self._analyses(label, pretrain, pt, rit)
        return list(self.jobs.values())

    def _analyses(self, target: str, pretrain: Job, pt: dict[int, Job], rit: dict[int, Job]) -> None:
        spec, settings = self.spec, self.spec.analyses
        data = spec.target(target).data
        n_test = data.n_test or 1000
        first = min(spec.seeds)
        models = {"P": self.model_ref(pretrain)}
        models |= {f"P-T:s{s}": self.model_ref(job) for s, job in pt.items()}
        models |= {f"RI-T:s{s}": self.model_ref(job) for s, job in rit.items()}
        if settings.cka.enabled:
            self.analysis("cka", target, models, settings.cka.model_dump(mode="json"),
                          len(models) * min(n_test, settings.cka.max_examples))
        if settings.distance.enabled:
            self.analysis("distance", target, models, settings.distance.model_dump(mode="json"), 0)
        if settings.mistakes.enabled:
            trained = {k: v for k, v in models.items() if k != "P"}
            self.analysis("mistakes", target, trained, settings.mistakes.model_dump(mode="json"), len(trained) * n_test)
        if settings.spectrum.enabled:
            chosen = {"P": models["P"], f"P-T:s{first}": models[f"P-T:s{first}"],
                      f"RI-T:s{first}": models[f"RI-T:s{first}"]}
            self.analysis("spectrum", target, chosen, settings.spectrum.model_dump(mode="json"), 0)
        pairs = self._pairs()
        if settings.interpolation.enabled:
            refs = dict(models)
            for role, jobs in (("P-T", pt), ("RI-T", rit)):
                refs[f"{role}:s{first}:best"] = self.model_ref(jobs[first], "best")
            interp = settings.interpolation
            evaluated = min(n_test, interp.max_examples or n_test)
            cost = (len(pairs) + 2) * len(interp.alphas) * (evaluated + interp.recalibration_batches * 64)
            self.analysis("interpolation", target, refs, interp.model_dump(mode="json"), cost,
                          pairs=pairs + [[f"P-T:s{first}:best", f"P-T:s{first}"],
                                         [f"RI-T:s{first}:best", f"RI-T:s{first}"]])
        same_role = [pair for pair in pairs if pair[0].split(":")[0] == pair[1].split(":")[0]]
        if settings.basin.enabled and same_role:
            basin = settings.basin
            evaluated = min(n_test, basin.max_examples or n_test)
            cost = len(same_role) * (basin.n_segment + 2 * len(basin.sigmas) * basin.n_noise + 20) * evaluated
            self.analysis("basin", target, models, basin.model_dump(mode="json"), cost, pairs=same_role)
        chosen = {f"P-T:s{first}": models[f"P-T:s{first}"], f"RI-T:s{first}": models[f"RI-T:s{first}"]}
        if settings.rewind.enabled:
            self.analysis("rewind", target, chosen, settings.rewind.model_dump(mode="json"),
                          2 * 7 * 2 * min(n_test, settings.rewind.max_examples or n_test))
        crit = settings.criticality
        if crit.enabled and (crit.targets is None or target in crit.targets):
            evaluated = min(n_test, crit.max_examples or n_test)
            grid = len(crit.alphas) * len(crit.sigmas)
            cost = 4 * (6 * len(crit.alphas) * 4 + grid) * crit.samples * evaluated
            for name, ref in chosen.items():  # one job per model, so that they run side by side
                self.analysis("criticality", target, {name: ref}, crit.model_dump(mode="json"), cost, f" {name}")

    def _pairs(self) -> list[list[str]]:
        """P-T/P-T and RI-T/RI-T pairs of consecutive seeds, and P-T/RI-T of each seed."""
        seeds = list(self.spec.seeds)
        pairs = [[f"{role}:s{a}", f"{role}:s{b}"] for role in ("P-T", "RI-T") for a, b in zip(seeds, seeds[1:])]
        return pairs + [[f"P-T:s{s}", f"RI-T:s{s}"] for s in seeds]


def build_plan(spec: StudySpec) -> list[Job]:
    """Every job of the study, dependencies before dependants."""
    return Planner(spec).build()


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
