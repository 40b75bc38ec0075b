"""Build a model by name: the small CPU ResNet, any torchvision classifier, the Fixup
ResNet-50 of the paper, or a timm model (``timm:<name>``, optional extra)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .fixup_resnet import fixup_resnet50
from .small_resnet import SmallResNet


def build_model(arch: str, num_classes: int, *, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1, 1),
                in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Return a freshly initialised model (seed the global RNG first for a fixed init).

    ``arch``: ``"small_resnet"`` (``width``, ``blocks``), ``"fixup_resnet50"``, a
    torchvision classifier name such as ``"resnet18"`` or ``"resnet50"``, or
    ``"timm:<name>"``. Extra keyword arguments go to the torchvision/timm builder.
    """
    if arch == "small_resnet":
        return SmallResNet(num_classes, width=width, blocks=blocks, in_channels=in_channels)
    if arch == "fixup_resnet50":
        return fixup_resnet50(num_classes, in_channels=in_channels)
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError as error:
            raise ImportError("timm models need the optional extra: pip install 'transferscope[timm]'") from error
        return timm.create_model(arch.removeprefix("timm:"), pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(
            f"unknown architecture {arch!r}: use 'small_resnet', 'fixup_resnet50', 'timm:<name>' "
            f"or a torchvision classifier such as {', '.join(sorted(a for a in available if a.startswith('resnet')))}"
        )
    if in_channels != 3:
        raise ValueError(f"torchvision model {arch!r} takes 3 input channels, not {in_channels}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
