"""Weight files: safetensors for everything we write; safetensors or torch files
(always ``weights_only=True``, never an arbitrary pickle) for what we read; and the
fine-tuning initialisation of the paper (load everything but the classifier head,
which is re-initialised for the target's classes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..io import atomic_path
from .partition import head_name
from .state import ModelOrState, as_state_dict, check_compatible, in_modules

StateDict = dict[str, Tensor]


def save_weights(model_or_state: ModelOrState, path: str | os.PathLike) -> Path:
    """Save a model's ``state_dict`` (or a state dict) as safetensors, atomically."""
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in as_state_dict(model_or_state).items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def load_weights(path: str | os.PathLike) -> StateDict:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file holding ``{"state_dict": ...}`` or ``{"model": ...}`` (common training
    checkpoint layouts) is unwrapped; DataParallel's ``module.`` prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as error:
            raise ValueError(f"{path} is damaged ({error}): it is not a complete safetensors file; delete it and "
                             "rerun the job that wrote it (for a training checkpoint: delete the run's folder and "
                             "train it again)") from error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways (zip, pickle, EOF): re-raised naming the file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot read {path} as a weights-only torch file ({reason}); transferscope never unpickles "
            "arbitrary objects: save it with torch.save(model.state_dict(), ...) or convert it to safetensors"
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in obj.items()}


def load_into(model: nn.Module, state: Mapping[str, Tensor], *, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into ``model``, checking names and shapes; keys under
    ``skip_prefixes`` are left at the model's own values. Errors name every mismatch
    (:func:`~transferscope.models.state.check_compatible`)."""
    check_compatible(state, model, skip_prefixes=skip_prefixes)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not in_modules(key, skip_prefixes):
                value.copy_(state[key])


def init_for_finetuning(model: nn.Module, pretrained: Mapping[str, Tensor], *, head: str | None = None) -> nn.Module:
    """Load ``pretrained`` into ``model`` except the classifier head, which keeps the
    model's fresh initialisation (sized for the target's classes): the P-T init of
    Neyshabur et al. (2020). Returns ``model``."""
    load_into(model, pretrained, skip_prefixes=(head or head_name(model),))
    return model
