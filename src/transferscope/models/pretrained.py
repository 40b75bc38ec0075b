"""Pre-trained weights a user brings: a safetensors or torch file (read with
``weights_only=True``), torchvision's published weights
(``torchvision:<WeightsEnum>.<member>``, fetched through torchvision's own mechanism and
torch's hub cache), or timm's (``timm:<name>``, optional extra; fetched by timm from the
Hugging Face hub into its cache, ``HF_HUB_CACHE``: offline, :func:`timm_cache_file` is
the file to place there, as the error says).

:func:`weights_identity` is what a study's job id hashes for them without loading them
(a file's SHA-256; the enum name and the published URL, which carries the file's hash),
so that planning never downloads and replacing a file reruns what depends on it;
:func:`load_pretrained` reads them; :func:`pretrained_model` builds the configured
architecture with the weights' own classifier and loads them into it.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..io import file_sha256
from .registry import build_configured
from .weights import StateDict, load_into, load_weights

if TYPE_CHECKING:
    from ..config import ModelConfig

TORCHVISION, TIMM = "torchvision:", "timm:"
TIMM_SNAPSHOT = "local"  # the snapshot folder of timm weights placed in the hub cache by hand
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: <name>-<sha256 prefix>.<ext>
_FORMS = ("a safetensors or torch file, torchvision:<WeightsEnum>.<member> (e.g. "
          "torchvision:ResNet50_Weights.IMAGENET1K_V2) or timm:<name>")


def check_weights(text: str) -> str:
    """``text`` as a weights setting: ``torchvision:``/``timm:`` names checked for their
    form, a file path made absolute (so a study folder can be reopened from anywhere) and
    checked to exist. Raises a ``ValueError`` naming the accepted forms."""
    text = text.strip()
    if text.startswith(TORCHVISION):
        if not re.fullmatch(r"\w+\.\w+", text.removeprefix(TORCHVISION)):
            raise ValueError(f"{text!r}: torchvision weights are named <WeightsEnum>.<member>, e.g. "
                             "torchvision:ResNet50_Weights.IMAGENET1K_V2")
        return text
    if text.startswith(TIMM):
        if not text.removeprefix(TIMM):
            raise ValueError("timm: needs a model name, e.g. timm:resnet50.a1_in1k")
        return text
    path = Path(text).expanduser().absolute()
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}; give {_FORMS}")
    return str(path)


def describe_weights(text: str) -> str:
    """Where weights come from, in words, for the report."""
    if text.startswith(TORCHVISION):
        return f"torchvision's published weights {text.removeprefix(TORCHVISION)}"
    if text.startswith(TIMM):
        return f"timm's pretrained weights of {text.removeprefix(TIMM)}"
    return f"the weights file {text}"


def weights_identity(text: str) -> dict[str, str]:
    """What decides the content of weights ``text``, without loading them: a file's
    SHA-256; torchvision's enum name and published URL (whose file name carries the
    file's hash); timm's model name and version."""
    if text.startswith(TORCHVISION):
        name = text.removeprefix(TORCHVISION)
        return {"torchvision": name, "url": _torchvision_weights(name).url}
    if text.startswith(TIMM):
        return {"timm": text.removeprefix(TIMM), "timm_version": _timm().__version__}
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}; put it back, or change the study's weights")
    stat = path.stat()
    return {"sha256": _file_digest((str(path.resolve()), stat.st_size, stat.st_mtime_ns))}


@lru_cache(maxsize=64)
def _file_digest(version: tuple[str, int, int]) -> str:
    """The SHA-256 of the file ``version = (path, size, modification time)``: hashed once
    per process until the file changes."""
    return file_sha256(version[0])


def load_pretrained(text: str, *, progress: bool = False) -> StateDict:
    """The state dict of weights ``text`` (see the module docstring)."""
    if text.startswith(TORCHVISION):
        return _load_torchvision(text.removeprefix(TORCHVISION), progress)
    if text.startswith(TIMM):
        return _load_timm(text.removeprefix(TIMM))
    return load_weights(text)


def torchvision_cache_file(name: str) -> Path:
    """Where torch's hub cache keeps torchvision's weights ``name``
    (``<torch.hub.get_dir()>/checkpoints/<file name of the URL>``; ``TORCH_HOME`` moves it)."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _torchvision_weights(name: str) -> Any:
    """torchvision's weights enum member ``<WeightsEnum>.<member>``."""
    import torchvision

    enum_name, _, member = name.partition(".")
    enum = getattr(torchvision.models, enum_name, None)
    if enum is None or not hasattr(enum, "__members__"):
        raise ValueError(f"torchvision has no weights {enum_name!r}; names look like ResNet50_Weights.IMAGENET1K_V2 "
                         "(torchvision.models.get_model_weights('resnet50') lists a model's)")
    if member not in enum.__members__:
        raise ValueError(f"torchvision's {enum_name} has no member {member!r}; it has {', '.join(enum.__members__)}")
    return enum[member]


def _load_torchvision(name: str, progress: bool) -> StateDict:
    """torchvision's weights through its own mechanism (``get_state_dict``: torch's hub
    cache, downloaded when missing and then checked against the hash in the file name).
    A cached file is checked here too: torch trusts its cache, but the study's job id
    stands for the published file."""
    weights = _torchvision_weights(name)
    cached = torchvision_cache_file(name)
    if cached.is_file():
        _check_published_hash(cached, name)
    try:
        return dict(weights.get_state_dict(progress=progress, check_hash=True, weights_only=True))
    except OSError as error:  # URLError and socket errors are OSErrors: no network, or no such URL
        if cached.is_file():
            raise
        reason = getattr(error, "reason", None) or error
        raise OSError(f"cannot download torchvision's {name} from {weights.url} ({reason}); offline, place that file "
                      f"at {cached} (torch's hub cache: torch.hub.get_dir(), moved by TORCH_HOME)") from error


def _check_published_hash(path: Path, name: str) -> None:
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    digest = file_sha256(path)
    if not digest.startswith(match[1]):
        raise ValueError(f"{path} is not torchvision's {name}: its SHA-256 begins {digest[:len(match[1])]}, the "
                         f"published file's {match[1]}; delete it (it is downloaded again) or put the published file "
                         "there")


def timm_cache_file(name: str) -> tuple[Path, Path | None]:
    """Where timm looks for its pretrained weights ``name`` before downloading them, and
    the file naming that folder's snapshot (None where there is none): for weights on the
    Hugging Face hub, ``<HF_HUB_CACHE>/models--<org>--<repo>/snapshots/<snapshot>/model.safetensors``
    and ``refs/<revision>`` (``main``), which holds just the snapshot's name
    (:data:`TIMM_SNAPSHOT` for a file placed by hand); else the file of their URL in
    torch's hub cache (``<torch.hub.get_dir()>/checkpoints/``)."""
    config = _timm().models.get_pretrained_cfg(name)
    if config is None or not (config.hf_hub_id or config.url):
        raise ValueError(f"timm has no pretrained weights {name!r}; timm.list_pretrained() lists those it has")
    if not config.hf_hub_id:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(config.url).path), None
    from huggingface_hub import constants

    repo, _, revision = config.hf_hub_id.partition("@")
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    return folder / "snapshots" / TIMM_SNAPSHOT / "model.safetensors", folder / "refs" / (revision or "main")


def _load_timm(name: str) -> StateDict:
    """timm's pretrained weights ``name`` through its own mechanism (the Hugging Face hub
    and its cache); offline with nothing cached, a one-line OSError naming the file to
    place (:func:`timm_cache_file`)."""
    timm = _timm()
    try:
        return dict(timm.create_model(name, pretrained=True).state_dict())
    except OSError as error:  # LocalEntryNotFoundError offline, URLError / socket errors for a URL
        weights, ref = timm_cache_file(name)
        reason = " ".join(str(getattr(error, "reason", None) or error).split())
        place = (f"place its state dict (safetensors) at {weights} and write {TIMM_SNAPSHOT} into {ref} "
                 f"(printf {TIMM_SNAPSHOT} > {ref}; the Hugging Face hub cache: HF_HUB_CACHE, default "
                 "$HF_HOME/hub; HF_HUB_OFFLINE=1 skips the network)") if ref else f"place that file at {weights}"
        raise OSError(f"cannot download timm's pretrained weights {name} ({type(error).__name__}: {reason}); "
                      f"offline, {place}; or give source.weights a file of them") from error


def _timm() -> Any:
    try:
        import timm
    except ImportError as error:
        raise ImportError("timm weights need the optional extra: pip install 'transferscope[timm]'") from error
    return timm


def pretrained_outputs(settings: ModelConfig, state: StateDict) -> int:
    """The number of outputs of the classifier that ``state`` holds for the configured
    architecture: the size, in ``state``, of the dimension that changes when the
    architecture is built for another number of classes."""
    def shapes(num_classes: int) -> dict[str, torch.Size]:
        return {key: value.shape for key, value in build_configured(settings, num_classes).state_dict().items()}

    try:
        with torch.device("meta"):
            three, five = shapes(3), shapes(5)
    except (NotImplementedError, RuntimeError):  # a builder that needs real tensors
        three, five = shapes(3), shapes(5)
    for key, shape in three.items():
        if shape != five.get(key) and key in state:
            dim = next(i for i, (a, b) in enumerate(zip(shape, five[key])) if a != b)
            return int(state[key].shape[dim])
    raise ValueError(f"cannot find the classifier of {settings.arch} in the weights (no tensor whose size follows "
                     "num_classes is among their keys); check that the weights belong to this architecture")


def pretrained_model(settings: ModelConfig, state: StateDict) -> nn.Module:
    """The configured architecture with as many outputs as the classifier in ``state``,
    holding ``state`` (names and shapes checked, every mismatch named)."""
    model = build_configured(settings, pretrained_outputs(settings, state))
    load_into(model, state)
    return model
