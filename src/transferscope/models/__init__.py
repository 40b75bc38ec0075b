"""Models: the registry of architectures by name (the small CPU ResNet, Fixup ResNet-50,
torchvision/timm, your own), the module partition the analyses use, state-dict
utilities and weight I/O."""

from .fixup_resnet import FixupResNet, fixup_resnet50
from .partition import NETWORK, REST, Modules, Partition, check_modules, head_name, module_state_keys, modules
from .registry import build_model, list_models, register
from .small_resnet import SmallResNet
from .weights import init_for_finetuning, load_into, load_weights, save_weights

__all__ = [
    "NETWORK", "REST", "FixupResNet", "Modules", "Partition", "SmallResNet", "build_model", "check_modules",
    "fixup_resnet50", "head_name", "init_for_finetuning", "list_models", "load_into", "load_weights",
    "module_state_keys", "modules", "register", "save_weights",
]
