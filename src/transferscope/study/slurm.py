"""SLURM seen from the submitting side: what a partition offers (``sinfo``), what each
kind of job asks of it, why the cluster refuses a request, and the state of submitted
tasks (``squeue``, then ``sacct``; neither needs accounting for the tasks the controller
still holds). Commands' complaints go to this module's logger (the study's
``logs/slurm.log`` during a run), never to the console."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Iterable

logger = logging.getLogger(__name__)

# A task in one of these states may still finish its job (submitit requeues a preempted
# or timed-out task); any other state is final.
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "REQUEUED",
                    "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED"})
GONE = "GONE"  # the controller answered and lists the task nowhere (cancelled before it started, or purged)
TRAINING_KINDS = frozenset({"pretrain", "finetune", "frozen"})
DEFAULT_MINUTES = 240


@dataclass(frozen=True)
class Need:
    """What one job of a kind asks for by default (capped at the node's size)."""
    cpus: int
    mem_gb: float


# training: data loading and augmentation on the CPUs; analyses only evaluate models
NEEDS = {"training": Need(cpus=8, mem_gb=32), "analysis": Need(cpus=4, mem_gb=16)}


def profile(kind: str) -> str:
    """The resource profile of a job kind: "training" or "analysis"."""
    return "training" if kind in TRAINING_KINDS else "analysis"


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[Node, ...]
    max_minutes: int | None = None  # None: no time limit

    @property
    def gpus(self) -> int:
        """GPUs of the partition's best-equipped node."""
        return max(node.gpus for node in self.nodes)


@dataclass(frozen=True)
class Request:
    """What each task of one submission asks for."""
    partition: str
    gpus: int
    cpus: int
    mem_gb: float
    minutes: int

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}" if self.gpus else "no GPU"
        cpus = f"{self.cpus} CPU{'s' if self.cpus > 1 else ''}"
        return f"{cpus}, {self.mem_gb:g} GB, {gpus}, {self.minutes} min on {self.partition}"


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """Run a SLURM command; what it says on stderr goes to the log."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.info("%s: %s", command[0], error)
        return subprocess.CompletedProcess(command, 1, "", str(error))
    if result.stderr.strip():
        logger.info("%s: %s", " ".join(command[:2]), result.stderr.strip())
    return result


# ------------------------------------------------------------------ the partition
def find_partition(name: str | None) -> Partition:
    """The partition ``name`` (the cluster's default one when None) as ``sinfo`` lists
    it; a ``ValueError`` naming the partitions there are when it does not exist."""
    result = _run(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G|%l"])
    if result.returncode != 0:
        raise ValueError(f"--executor slurm: sinfo failed ({result.stderr.strip() or 'no answer'}); check that the "
                         "SLURM controller is up (`sinfo` on this machine)")
    return parse_sinfo(result.stdout, name)


def parse_sinfo(text: str, name: str | None) -> Partition:
    """The partition ``name`` (default: the one sinfo marks with ``*``) of the output of
    ``sinfo -h -N -o "%P|%N|%c|%m|%G|%l"``."""
    nodes: dict[str, list[Node]] = {}
    limits: dict[str, int | None] = {}
    default = None
    for line in text.splitlines():
        if line.count("|") != 5:
            continue
        partition, node, cpus, memory, gres, limit = line.strip().split("|")
        if partition.endswith("*"):
            partition = default = partition[:-1]
        nodes.setdefault(partition, []).append(Node(node, int(cpus.rstrip("+")), int(memory.rstrip("+")),
                                                    gpu_count(gres)))
        limits[partition] = parse_minutes(limit)
    chosen = name or default
    if chosen not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        what = f"partition {chosen!r} does not exist" if chosen else "the cluster has no default partition"
        raise ValueError(f"--slurm partition: {what}; choose one of: {known} (--slurm partition=NAME)")
    return Partition(chosen, tuple(nodes[chosen]), limits[chosen])


def gpu_count(gres: str) -> int:
    """GPUs in a node's GRES, e.g. ``gpu:a100:4(S:0-1),shard:8`` -> 4; ``(null)`` -> 0."""
    return sum(int(count) for count in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def parse_minutes(limit: str) -> int | None:
    """A SLURM time limit (``infinite``, ``days-hh:mm:ss``, ``hh:mm:ss``, ``mm:ss``, ``mm``) in whole minutes."""
    if not limit or limit.lower() in ("infinite", "unlimited", "n/a"):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


def this_machine() -> Partition:
    """This machine as a one-node partition (submitit's local and debug clusters)."""
    import torch

    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return Partition("local", (Node("local", os.cpu_count() or 1, memory_mb, torch.cuda.device_count()),))


# ------------------------------------------------------------------ the request
def request(partition: Partition, kind_profile: str, *, gpus: int | None = None, cpus: int | None = None,
            mem_gb: float | None = None, minutes: int | None = None, check: bool = True) -> Request:
    """What each task of ``kind_profile`` asks of ``partition``: the explicit values where
    given, else one GPU where the partition has GPUs (none where it has not) and the
    profile's CPUs and memory, capped at the smallest node that can run it, and
    ``DEFAULT_MINUTES`` capped at the partition's limit. With ``check``, an explicit
    value that no node (or the time limit) can satisfy is a ``ValueError`` that names
    the setting and what the partition offers."""
    need = NEEDS[kind_profile]
    gpus = (1 if partition.gpus else 0) if gpus is None else gpus
    able = [node for node in partition.nodes if node.gpus >= gpus]
    if check:
        _check(partition, able, gpus=gpus, cpus=cpus, mem_gb=mem_gb, minutes=minutes)
    able = able or list(partition.nodes)
    limit = partition.max_minutes
    return Request(partition=partition.name, gpus=gpus,
                   cpus=cpus or min(need.cpus, min(node.cpus for node in able)),
                   mem_gb=mem_gb or min(need.mem_gb, min(node.memory_mb for node in able) // 1024 or 1),
                   minutes=minutes or min(DEFAULT_MINUTES, limit or DEFAULT_MINUTES))


def _check(partition: Partition, able: list[Node], **asked: float | None) -> None:
    where = f"partition {partition.name}"
    if not able:
        offer = f"has at most {partition.gpus} GPUs per node" if partition.gpus else "has no GPUs (no gpu GRES)"
        raise ValueError(f"--slurm gpus_per_job={asked['gpus']}: {where} {offer}; set gpus_per_job="
                         f"{partition.gpus} or less, or choose a partition with GPUs (--slurm partition=NAME)")
    largest = {"cpus": (max(node.cpus for node in able), "CPUs", "cpus_per_job"),
               "mem_gb": (max(node.memory_mb for node in able) // 1024, "GB of memory", "mem_gb"),
               "minutes": (partition.max_minutes, "minutes of time limit", "time_minutes")}
    for key, (most, unit, setting) in largest.items():
        value = asked[key]
        if value is not None and most is not None and value > most:
            raise ValueError(f"--slurm {setting}={value:g}: the nodes of {where} offer at most {most:g} {unit}; set "
                             f"{setting}={most:g} or less (or leave it out to fit the partition)")


# sbatch's complaint -> the --slurm setting to change
_REFUSALS = (("memory", "mem_gb"), ("gres", "gpus_per_job"), ("gpu", "gpus_per_job"), ("cpu", "cpus_per_job"),
             ("time limit", "time_minutes"), ("partition", "partition"), ("feature", "extra.constraint"),
             ("account", "extra.account"), ("qos", "extra.qos"))


def refusal(message: str) -> ValueError:
    """The error for a submission sbatch refused (``message``: what it said), naming the
    ``--slurm`` setting to change."""
    lines = [line.strip().removeprefix("sbatch: error: ") for line in message.splitlines() if line.strip()]
    text = "; ".join(dict.fromkeys(lines)) or "no reason given"
    setting = next((setting for word, setting in _REFUSALS if word in text.lower()), None)
    fix = f"change --slurm {setting}" if setting else "check the --slurm settings (partition, extra.*)"
    return ValueError(f"SLURM refused the job request ({text}); {fix} and rerun")


# ------------------------------------------------------------------ task states
@dataclass(frozen=True)
class TaskState:
    state: str  # SLURM's (RUNNING, CANCELLED, TIMEOUT, ...), or GONE
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state.split()[0] in ACTIVE

    def describe(self) -> str:
        if self.state == GONE:
            return "SLURM no longer lists it (cancelled before it started, or its record expired)"
        reason = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"SLURM state {self.state}{reason}"


def current_task() -> str | None:
    """This process's SLURM task (``123_4`` in a job array, ``123`` otherwise); None outside SLURM."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def task_states(tasks: Iterable[str]) -> dict[str, TaskState] | None:
    """The state of each task id (``123`` or ``123_4``): squeue's for the tasks the
    controller holds, else sacct's (where accounting is enabled), else GONE. None when
    the controller does not answer (the states are then unknown, not final)."""
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        return {}
    jobs = ",".join(sorted({task.split("_")[0] for task in tasks}))
    result = _run(["squeue", "-h", "-r", "-t", "all", "-j", jobs, "-o", "%i|%T|%r"])
    if result.returncode != 0 and "invalid job id" not in result.stderr.lower():
        return None
    states = _parse_states(result.stdout)
    missing = [task for task in tasks if task not in states]
    if missing:
        accounted = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing)])
        states.update({task: state for task, state in _parse_states(accounted.stdout).items() if task not in states})
    return {task: states.get(task, TaskState(GONE)) for task in tasks}


def _parse_states(text: str) -> dict[str, TaskState]:
    states = {}
    for line in text.splitlines():
        task, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if task and state:
            states[task] = TaskState(state, reason)
    return states


def task_alive(task: str) -> bool | None:
    """Whether SLURM task ``task`` may still run its job; None when SLURM cannot say
    (no squeue here, or the controller does not answer)."""
    states = task_states([task])
    return None if states is None else states[task].active
