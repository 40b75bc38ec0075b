"""Models: the small CPU ResNet, torchvision/timm by name, Fixup ResNet-50, the module
partition the analyses use, and weight I/O."""

from .fixup_resnet import FixupResNet, fixup_resnet50
from .partition import NETWORK, head_name, module_state_keys, modules
from .registry import build_model
from .small_resnet import SmallResNet
from .weights import init_for_finetuning, load_into, load_weights, save_weights

__all__ = [
    "NETWORK", "FixupResNet", "SmallResNet", "build_model", "fixup_resnet50", "head_name", "init_for_finetuning",
    "load_into", "load_weights", "module_state_keys", "modules", "save_weights",
]
