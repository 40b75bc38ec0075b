"""Training runs: pre-training P, and P-T / RI-T on a target (Sec. 2 of the paper).

SGD with momentum and weight decay, or AdamW (Loshchilov & Hutter 2019) with no decay
on biases and norm scales (biases and scales optionally at a lower lr, as for the
paper's Fixup ResNet-50), constant/step/multistep/cosine schedules, optional mixup
(Zhang et al. 2018) and label smoothing (training loss only), an optional BatchNorm
momentum, augmentation off for shuffled data, optionally the first ``freeze`` units of
the partition frozen at their initial weights (:func:`freeze_leading_units`). A
checkpoint at epoch 0 (before any update) and every ``checkpoint_every`` epochs plus the
best one; per-epoch metrics as a tidy table. Every source of randomness is seeded from
``(seed, epoch)`` (:mod:`transferscope.seeding`), so a killed run resumes from its last
finished epoch (or, when its ``resume.pt`` is damaged, trains again from epoch 0) and
ends with the same weights as an uninterrupted one. A run folder is bound to the run's
identity (:func:`run_identity`), not to how its init path is spelled.

:func:`train` also takes your own ``nn.Module`` (and a state dict to fine-tune from):
it trains through the same loop, checkpoints and resume, and its architecture and
initial weights become part of the run's identity.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import os
import pickle
import shutil
import time
import warnings
from contextlib import contextmanager
from functools import cached_property, partial
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from ..config import TrainConfig
from ..data import Domain, block_shuffle_for, load_domain
from ..data.tensors import split_size
from ..evaluation import evaluate, loss_fn, score_metric
from ..io import atomic_path, content_hash, file_sha256, read_json, remove_stale_temporaries, write_json, write_table
from ..models import init_for_finetuning, load_weights, save_weights
from ..models.partition import Partition
from ..models.registry import build_configured
from ..models.state import ModelOrState, as_state_dict
from ..seeding import numpy_generator, torch_generator
from .run_dir import TrainingRun, checkpoint_path


class TrainingFailed(RuntimeError):
    """A run stopped (non-finite loss, bad data); its status.json says why."""


NONFINITE_CHECK_STEPS = 25
RESUME_DAMAGE = (OSError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError, LookupError, TypeError)
"""What reading a damaged or foreign resume.pt raises (truncated or garbage bytes, missing
keys, mismatched shapes); any other error while resuming is a bug and propagates."""


def use_deterministic_cuda() -> None:
    """Deterministic cuDNN convolutions and cuBLAS products for this process: CUDA's
    fastest kernels add in a varying order, so two runs' weights would differ in the last
    bits (and a resumed run would not match an uninterrupted one)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use device='cpu' or 'auto'")
    return device


def parameter_groups(model: nn.Module, lr: float, bias_lr_factor: float) -> list[dict]:
    """Two groups of the parameters that require gradients (a frozen unit's do not):
    weights at ``lr``; biases and scales (names ending in 'bias*' or 'scale*', Fixup's
    convention) at ``lr * bias_lr_factor``."""
    low: list[nn.Parameter] = []
    normal: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (low if leaf.startswith(("bias", "scale")) else normal).append(parameter)
    groups = [{"params": normal, "lr": lr}]
    if low:
        groups.append({"params": low, "lr": lr * bias_lr_factor})
    return groups


def decay_exempt(model: nn.Module) -> set[str]:
    """Parameters AdamW does not decay, the usual ViT fine-tuning practice: every
    parameter of at most one dimension (biases, norm scales, Fixup's scalars) and those a
    timm model names in ``no_weight_decay()`` (position embeddings, class tokens)."""
    named = getattr(model, "no_weight_decay", None)
    exempt = set(named()) if callable(named) else set()
    return exempt | {name for name, parameter in model.named_parameters() if parameter.ndim <= 1}


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay on every parameter) or AdamW (decoupled weight decay,
    none on :func:`decay_exempt` parameters), both on :func:`parameter_groups`."""
    groups = parameter_groups(model, config.lr, config.bias_lr_factor)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=config.nesterov)
    exempt_names = decay_exempt(model)
    exempt = {id(parameter) for name, parameter in model.named_parameters() if name in exempt_names}
    split = [{**group, "params": [p for p in group["params"] if (id(p) in exempt) == no_decay],
              "weight_decay": 0.0 if no_decay else config.weight_decay}
             for group in groups for no_decay in (False, True)]
    return torch.optim.AdamW([group for group in split if group["params"]], lr=config.lr,
                             betas=config.adamw_betas, eps=config.adamw_eps)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm of ``model``; a model
    without one is an error (the setting would do nothing)."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"bn_momentum is {momentum} but the model has no BatchNorm layer; remove bn_momentum")
    for module in norms:
        module.momentum = momentum


def freeze_leading_units(model: nn.Module, config: TrainConfig) -> list[nn.Module]:
    """Freeze the first ``config.freeze`` units of the partition ``config.modules``: their
    parameters stop requiring gradients, so the optimizer (weight decay included) leaves
    them out. Returns their BatchNorm layers, which training keeps in eval mode so that
    their running statistics do not move: the frozen units stay bit-identical to epoch 0."""
    if config.freeze == 0:
        return []
    units = Partition.of(model, config.partition_modules).units
    if config.freeze >= len(units):
        raise ValueError(f"freeze {config.freeze} would freeze every unit of the partition "
                         f"({', '.join(unit.name for unit in units)}); the last one must train: set freeze to at "
                         f"most {len(units) - 1}")
    frozen = {key for unit in units[:config.freeze] for key in unit.keys}
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return [module for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and any(f"{name}.{key}".lstrip(".") in frozen for key in module.state_dict())]


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch lr schedule (torch's own schedulers)."""
    schedule = config.schedule
    if schedule.kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, schedule.step_size, schedule.gamma)
    if schedule.kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), schedule.gamma)
    if schedule.kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(config.epochs, 1))
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def build_run_model(config: TrainConfig, domain: Domain, model: nn.Module | None = None,
                    init: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The model a run starts from: the seeded init of ``config.model`` (or a copy of
    ``model``), then (for P-T) the pre-trained weights of ``config.init`` (or the state
    dict ``init``) everywhere but the re-initialised head (``config.model.head``, else
    found by name)."""
    torch.manual_seed(config.seed)
    model = build_configured(config.model, domain.num_outputs) if model is None else copy.deepcopy(model)
    pretrained = load_weights(config.init) if config.init is not None else init
    if pretrained is not None:
        init_for_finetuning(model, pretrained, head=config.model.head)
    return model


# ModelConfig, DataConfig and TrainConfig settings added after run folders were first written: left
# out of the identity at their defaults, so that those runs keep theirs
_LATER_MODEL_SETTINGS = ("kwargs", "head")
_LATER_DATA_SETTINGS = ("decode_size", "image_column", "label_column", "label_columns", "split_column", "train_split",
                        "test_split")
_LATER_TRAIN_SETTINGS = ("optimizer", "adamw_betas", "adamw_eps", "label_smoothing", "bn_momentum", "freeze", "modules",
                         "test_every")


def run_identity(config: TrainConfig, model: nn.Module | None = None,
                 init: Mapping[str, torch.Tensor] | None = None) -> str:
    """Digest of what decides a run's numbers: its config with ``init`` replaced by the
    SHA-256 of the init weights (a file's bytes, or the given state dict's tensors), so a
    moved or differently spelled init is the same run; for a given ``model``,
    ``config.model`` replaced by the digests of its architecture
    (:func:`architecture_digest`) and of its initial weights (:func:`state_digest`)."""
    fields = config.model_dump(mode="json")
    for part, settings, later in ((fields["model"], config.model, _LATER_MODEL_SETTINGS),
                                  (fields["data"], config.data, _LATER_DATA_SETTINGS),
                                  (fields, config, _LATER_TRAIN_SETTINGS)):
        for key in later:
            if getattr(settings, key) == type(settings).model_fields[key].default:
                del part[key]
    if config.init is not None:
        path = Path(config.init)
        if not path.is_file():
            raise FileNotFoundError(f"init weights not found: {path}; set init to the pre-trained weights file")
        fields["init"] = f"sha256:{file_sha256(path)}"
    if init is not None:
        fields["init"] = f"state:{state_digest(init)}"
    if model is not None:
        fields["model"] = {"architecture": architecture_digest(model), "state": state_digest(model.state_dict())}
    return content_hash(fields)


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def architecture_digest(model: nn.Module) -> str:
    """Digest of a model's architecture: its ``repr`` (every module's class and settings)
    and the source files of its module classes outside torch, so that editing the code of
    a module (its ``forward``) makes another run."""
    files = set()
    for cls in {type(module) for module in model.modules()}:
        if cls.__module__.partition(".")[0] == "torch":
            continue
        try:
            files.add(inspect.getsourcefile(cls))
        except (TypeError, OSError):  # defined in C or interactively: its repr stands for it
            continue
    return content_hash({"repr": repr(model), "sources": sorted(file_sha256(f) for f in files if f)}, 64)


def _mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator, generator: torch.Generator):
    """Mixup: x' = λx + (1−λ)x[π], λ ~ Beta(α, α); returns x', y, y[π], λ."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def _test_score(row: dict) -> float:
    """The test score (accuracy or mean AUC) of one row of a run's metrics."""
    return row[f"test_{score_metric(row, 'test_')}"]


class Trainer:
    """One run in ``out_dir``; :meth:`run` trains (resuming when possible)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, progress: bool = True,
                 domain: Domain | None = None, cache_dir: str | None = None, model: nn.Module | None = None,
                 init: ModelOrState | None = None) -> None:
        if init is not None and config.init is not None:
            raise ValueError("the init weights are given twice, as config.init and as init=; give one")
        self.config = config
        self.model = None if model is None else copy.deepcopy(model)  # the start, whatever the caller does next
        self.init = None if init is None else {key: value.detach().clone() for key, value in as_state_dict(init).items()}
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = resolve_device(config.device)
        if config.deterministic and self.device.type == "cuda":
            use_deterministic_cuda()
        if config.bf16 and self.device.type != "cuda":
            raise ValueError("bf16 autocast is for CUDA devices; set bf16=false on CPU")
        self.domain = domain or load_domain(config.data, cache_dir=cache_dir)
        if self.domain.image_size not in (None, config.data.image_size):
            raise ValueError(f"the domain's images are {self.domain.image_size} pixels but data.image_size is "
                             f"{config.data.image_size}; set data.image_size to match (block sizes depend on it)")
        shuffle = block_shuffle_for(config.data)
        loader = partial(self.domain.loader, block_shuffle=shuffle, device=self.device,
                         channels_last=config.channels_last, num_workers=config.num_workers)
        self.train_loader = loader("train", config.batch_size, shuffle=True, seed=config.seed,
                                   augment=config.augment if shuffle is None else "none", drop_last=True)
        if len(self.train_loader) == 0:
            raise ValueError(f"batch_size {config.batch_size} is larger than the {split_size(self.domain.train)} "
                             "training examples; lower batch_size")
        self.test_batches = loader("test", config.eval_batch_size)
        self.clean_train_batches = loader("train", config.eval_batch_size, limit=config.clean_train_examples)

    # ----------------------------------------------------------------- bookkeeping
    @cached_property
    def identity(self) -> str:
        return run_identity(self.config, self.model, self.init)

    def _check_folder(self) -> None:
        """Refuse a folder holding finished epochs of a run with another identity; start over
        in one whose run never finished an epoch; record this config (init as spelled now)."""
        config_path = self.out_dir / "config.json"
        config_json = self.config.model_dump(mode="json")
        if config_path.is_file():
            run = TrainingRun(self.out_dir)
            if (self.out_dir / "resume.pt").is_file() or max(run.epochs(), default=0) >= 1:
                # folders written before run identities hold the whole config's digest
                if run.status.get("digest") not in (self.identity, self.config.digest()):
                    raise ValueError(f"{self.out_dir} holds a run with a different config; use another out_dir or "
                                     "delete the folder to start over (that run has finished epochs; the content "
                                     "of the init weights, and a given model's architecture and weights, are part "
                                     "of a run's config)")
            elif read_json(config_path) != config_json:
                self._start_over()
        if not config_path.is_file() or read_json(config_path) != config_json:
            write_json(config_path, config_json)

    def _start_over(self) -> None:
        """Delete what a run that never finished an epoch wrote (status first, so the folder
        never looks complete with the new config)."""
        (self.out_dir / "status.json").unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)
        for suffix in (".parquet", ".csv"):
            (self.out_dir / "metrics").with_suffix(suffix).unlink(missing_ok=True)

    def _status(self, state: str, **extra) -> None:
        write_json(self.out_dir / "status.json", {"state": state, "digest": self.identity,
                                                  "augment": self.train_loader.augment, **extra})

    def _evaluate(self, model: nn.Module, *, test: bool = True) -> dict[str, float]:
        """The epoch's test loss and score (NaN where ``test`` is false: an epoch that
        ``test_every`` skips) and its eval-mode score on the clean training subset."""
        # NaN outputs score NaN here; the training loop's loss check stops a diverged run
        tested = evaluate(model, self.test_batches, allow_nonfinite=True) if test else None
        clean = evaluate(model, self.clean_train_batches, allow_nonfinite=True)
        metric = score_metric(clean)
        return {"test_loss": tested["loss"] if tested else math.nan,
                f"test_{metric}": tested[metric] if tested else math.nan, f"train_clean_{metric}": clean[metric]}

    # ----------------------------------------------------------------- the loop
    def run(self, on_epoch_end: Callable[[int], None] | None = None) -> TrainingRun:
        """Train to ``config.epochs``; resume from ``resume.pt`` if present.
        ``on_epoch_end(epoch)`` is called after an epoch's files are written."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._check_folder()
        remove_stale_temporaries(self.out_dir)
        if TrainingRun(self.out_dir).complete:
            return TrainingRun(self.out_dir)
        config = self.config
        resume_path = self.out_dir / "resume.pt"
        model, optimizer, scheduler = self._fresh_state()
        rows: list[dict] = []
        best = {"score": -math.inf, "epoch": 0}
        start = 1
        if resume_path.is_file():
            try:
                start, best, rows = self._resume(resume_path, model, optimizer, scheduler)
            except RESUME_DAMAGE as error:  # train again from epoch 0, named below; a bug in _resume propagates
                reason = f"{type(error).__name__}: {str(error).strip().partition(chr(10))[0]}"
                warnings.warn(f"cannot resume from {resume_path} ({reason}); deleting it and training the run "
                              "again from epoch 0 (same seeds, so the same weights)", stacklevel=2)
                resume_path.unlink()
                model, optimizer, scheduler = self._fresh_state()
        if start == 1:
            rows.append(self._epoch_zero(model, best))
        self._status("running", epoch=start - 1)
        self.first_epoch = start
        with self._progress_bar(start) as (bar, task):
            for epoch in range(start, config.epochs + 1):
                row = self._train_epoch(model, optimizer, epoch, bar, task)
                row.update(self._evaluate(model, test=epoch % config.test_every == 0 or epoch == config.epochs))
                row["lr"] = scheduler.get_last_lr()[0]
                scheduler.step()
                rows.append(row)
                if _test_score(row) > best["score"]:
                    best = {"score": _test_score(row), "epoch": epoch}
                    save_weights(model, self.out_dir / "checkpoints" / "best.safetensors")
                if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                    save_weights(model, checkpoint_path(self.out_dir, epoch))
                write_table(pd.DataFrame(rows), self.out_dir / "metrics")
                with atomic_path(resume_path) as tmp:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "epoch": epoch,
                                "best_score": best["score"], "best_epoch": best["epoch"]}, tmp)
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
        self._status("complete", epoch=config.epochs, best_epoch=best["epoch"], best_score=best["score"],
                     final=rows[-1])
        return TrainingRun(self.out_dir)

    def _fresh_state(self) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The run's model at epoch 0 (on its device), its optimizer and lr schedule."""
        config = self.config
        model = build_run_model(config, self.domain, self.model, self.init).to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.bn_momentum is not None:
            set_bn_momentum(model, config.bn_momentum)
        self.frozen_norms = freeze_leading_units(model, config)
        optimizer = make_optimizer(config, model)
        return model, optimizer, make_scheduler(config, optimizer)

    def _resume(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, dict, list[dict]]:
        """Load ``resume.pt`` into the model, optimizer and schedule; returns the first epoch
        to train, the best score so far and the metrics rows before it."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["epoch"] + 1
        rows = [row for row in TrainingRun(self.out_dir).metrics.to_dict("records") if row["epoch"] < start]
        return start, {"score": state["best_score"], "epoch": state["best_epoch"]}, rows

    def _epoch_zero(self, model: nn.Module, best: dict) -> dict:
        row = {"epoch": 0, "train_loss": float("nan"), "train_running_accuracy": float("nan"), "lr": self.config.lr,
               "images_per_second": float("nan"), "train_seconds": 0.0, **self._evaluate(model)}
        save_weights(model, checkpoint_path(self.out_dir, 0))
        save_weights(model, self.out_dir / "checkpoints" / "best.safetensors")
        best["score"] = _test_score(row)
        write_table(pd.DataFrame([row]), self.out_dir / "metrics")
        return row

    def _train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, bar, task) -> dict:
        config = self.config
        model.train()
        for norm in self.frozen_norms:
            norm.eval()
        self.train_loader.set_epoch(epoch)
        generator = torch_generator(config.seed, "mixup permutation", epoch)
        rng = numpy_generator(config.seed, "mixup weight", epoch)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16)
        train_loss = partial(loss_fn, label_smoothing=config.label_smoothing)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        started = time.perf_counter()
        for step, (x, y) in enumerate(self.train_loader):
            with autocast:
                if config.mixup_alpha > 0:
                    x, y_a, y_b, lam = _mixup(x, y, config.mixup_alpha, rng, generator)
                    logits = model(x)
                    loss = lam * train_loss(logits, y_a) + (1 - lam) * train_loss(logits, y_b)
                else:
                    logits = model(x)
                    loss = train_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss.detach() * len(x)
                if y.ndim == 1:
                    correct += (logits.argmax(1) == y).sum()
                else:
                    correct += ((logits > 0) == y.bool()).float().mean(1).sum()
            seen += len(x)
            # A NaN/inf loss stays in the running sum; reading it waits for the GPU, so on CUDA
            # look every NONFINITE_CHECK_STEPS steps (the failed run's weights are never saved).
            if (self.device.type == "cpu" or (step + 1) % NONFINITE_CHECK_STEPS == 0
                    or step == len(self.train_loader) - 1) and not torch.isfinite(loss_sum):
                where = f"step {step}" if self.device.type == "cpu" else f"step {step} or earlier"
                message = (f"loss became {loss_sum.item()} at epoch {epoch}, {where} (lr {config.lr}); "
                           "lower the learning rate, check the data for NaN/inf values, or turn bf16 off")
                self._status("failed", error=message, epoch=epoch)
                raise TrainingFailed(message)
            if bar is not None and (step % 10 == 0 or seen == len(self.train_loader) * config.batch_size):
                done_before = (epoch - self.first_epoch) * len(self.train_loader) * config.batch_size
                bar.update(task, completed=done_before + seen, description=f"{self.out_dir.name} epoch {epoch}/{config.epochs} "
                           f"loss {loss_sum.item() / seen:.3f} acc {correct.item() / seen:.3f}",
                           speed=f"{seen / (time.perf_counter() - started):.0f} img/s")
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "train_loss": loss_sum.item() / seen, "train_running_accuracy": correct.item() / seen,
                "images_per_second": seen / seconds, "train_seconds": seconds}

    @contextmanager
    def _progress_bar(self, start: int) -> Iterator[tuple[Progress | None, int | None]]:
        """A rich bar over all remaining training images: epoch, loss, accuracy, images/s."""
        if not self.progress:
            yield None, None
            return
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[speed]}"), TimeRemainingColumn())
        total = len(self.train_loader) * self.config.batch_size * max(self.config.epochs - start + 1, 0)
        with Progress(*columns, transient=True) as progress:
            yield progress, progress.add_task(f"{self.out_dir.name} epoch {start}", total=total, speed="")


def train(config: TrainConfig, out_dir: str | Path, model: nn.Module | None = None, init: ModelOrState | None = None,
          *, progress: bool = True, domain: Domain | None = None, cache_dir: str | None = None) -> TrainingRun:
    """Train one run into ``out_dir`` (resuming it if it was interrupted).

    Parameters
    ----------
    config
        The run's settings (data, recipe, seed; ``model`` and ``init`` unless given here).
    out_dir
        The run folder (:class:`~transferscope.train.TrainingRun` reads it).
    model
        Your own ``nn.Module`` to train instead of building ``config.model``: copied (the
        caller's module is never changed), its current weights are the start (epoch 0),
        its output size must match the data's classes. Its architecture and weights are
        part of the run's identity: resuming needs the same model, another one in the
        same folder is refused. Read the trained weights back with
        ``run.checkpoint("final")``.
    init
        A state dict (or model) to fine-tune from, as ``config.init`` does for a file:
        loaded everywhere but the classifier head (``config.model.head``, else found by
        name), which keeps its fresh initialisation.
    progress, domain, cache_dir
        A progress bar; the data (else loaded from ``config.data``); the synthetic data cache.

    Returns
    -------
    TrainingRun
    """
    return Trainer(config, out_dir, progress=progress, domain=domain, cache_dir=cache_dir, model=model,
                   init=init).run()
