"""The module partition: the units that the analyses treat as modules (the rows of the
distance, rewinding, criticality and spectrum tables; the representations CKA compares).

One resolver, :meth:`Partition.of`, turns ``modules=`` (an argument of every analysis;
``modules:`` in the study YAML) into a :class:`Partition`: unit name -> module paths ->
state-dict keys, every parameter and buffer in exactly one unit. ``modules`` is

- ``None``: the default partition of the model's family (below);
- a list: one unit per entry, either a unit of the default partition by its name
  (``conv1`` of a torchvision ResNet, which holds the stem's ``bn1``; ``stem`` of an
  EfficientNet) or else one module by its exact dotted path (``layer1.0``, ``_blocks.3``);
- a mapping from unit names to lists of exact module paths (or tensor names such as
  ``class_token``): ``{"stem": ["_conv_stem", "_bn0"], ...}`` is one unit of two modules;
- a :class:`Partition`, used as it is (``Partition.of(model).select(["stem"])`` for some
  units only).

Tensors that no unit of a list or mapping holds form a last unit ``rest``, which the
analyses report like any other unit (never silently dropped). A path listed twice, or
inside another listed path, is an error naming both; ``rest`` and ``network`` (the
whole-network row label :data:`NETWORK`) are no unit names.

A unit's representation, for CKA, is the output of its last listed module (a grouped unit
``stem: [_conv_stem, _bn0]`` is represented by ``_bn0``'s output; the ResNet stem by
``conv1``'s, its ``bn1`` joining it as a leftover); ``rest`` has none.

Default partitions, each holding every tensor of its family:

- ResNets with ``conv1``, ``layer1``..``layer4`` and ``fc`` children (torchvision
  ResNet/ResNeXt/Wide-ResNet, the small CPU ResNet, Fixup; the units of Tables 1-2 and
  Figs. 5-6 of the paper): those six units; tensors of other top-level modules join the
  unit before them (the stem's ``bn1`` joins ``conv1``), and a model may name owners in a
  class attribute ``state_key_owners`` (Fixup's scalar ``bias2`` belongs to ``fc``).
- torchvision EfficientNet (V1, V2): ``stem`` (``features.0``), ``stage1``..``stageN``
  (``features.1``..), ``head`` (the last ``features`` entry, the 1x1 convolution) and
  ``classifier``.
- EfficientNet with lukemelas' naming (``efficientnet_pytorch``): ``stem``
  (``_conv_stem``, ``_bn0``), ``stage1``..``stageN`` (consecutive ``_blocks.i`` of one
  output width), ``head`` (``_conv_head``, ``_bn1``) and ``classifier`` (``_fc``).
- torchvision MobileNetV2/V3: ``stem`` (``features.0``), ``stage1``..``stageN``
  (consecutive ``features.i`` of one output width), ``head`` (the last ``features`` entry)
  and ``classifier``.
- torchvision ConvNeXt: ``stem`` (``features.0``), ``stage1`` (``features.1``),
  ``stage2``.. (a downsampling layer with the stage after it) and ``classifier``.
- torchvision Swin: ``embedding`` (``features.0``), ``stage1``, ``stage2``.. (a patch
  merging layer with the stage after it) and ``head`` (``norm``, ``head``).
- torchvision ViT: ``embedding`` (``class_token``, ``conv_proj``,
  ``encoder.pos_embedding``), ``block0``..``block{L-1}`` (``encoder.layers.encoder_layer_i``)
  and ``head`` (``encoder.ln``, ``heads``).
- timm models, through ``feature_info``: one unit per feature module, named by its path,
  holding everything after the previous feature module up to and including it (the first
  also the stem), then ``head`` for what follows the last.
- anything else: its top-level children that hold parameters, other tensors joining the
  unit before them (or the first); a warning when one unit that has children holds more
  than half of the parameters, naming the ``modules`` setting that splits it.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from torch import nn

from .state import in_modules

RESNET_MODULES = ("conv1", "layer1", "layer2", "layer3", "layer4", "fc")
NETWORK = "network"  # row label of whole-network values beside per-module ones (criticality, distance)
REST = "rest"  # the unit of the tensors that no listed unit holds
RESERVED = (REST, NETWORK)
LARGEST_SHARE = 0.5  # a default unit holding more of the parameters than this is warned about
SHOWN_UNITS = 12  # names in the warning's example setting

Listed = tuple[str, tuple[str, ...], Union[str, None]]  # unit name, listed paths, output module (None: the last)


class ModuleNotFoundInModel(ValueError, KeyError):
    """A module name that the model does not have: a ValueError, like every missing-name
    error of the package (and a KeyError, as it was first; its message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Unit:
    """One unit: ``paths`` (modules or tensors it holds), ``keys`` (its state-dict keys,
    in state-dict order) and ``output`` (the module whose output represents it; None for
    ``rest``)."""

    name: str
    paths: tuple[str, ...]
    keys: tuple[str, ...]
    output: str | None


@dataclass(frozen=True)
class Partition:
    """The units of a model, in order: build it with :meth:`Partition.of` (module docstring)."""

    units: tuple[Unit, ...]

    @classmethod
    def of(cls, model: nn.Module, modules: Modules = None) -> Partition:
        """The partition of ``model`` that ``modules`` sets (module docstring).

        Parameters
        ----------
        model : torch.nn.Module
            Any model (one on the meta device works).
        modules : list of str, mapping of str to list of str, or Partition, optional
            The ``modules=`` setting; None takes the default partition of the family.

        Returns
        -------
        Partition
            Every state-dict key in exactly one unit; a last unit ``rest`` when a list or
            mapping leaves tensors out.

        Raises
        ------
        ValueError
            For a module name the model lacks (the message lists its top-level modules and
            default units), a path listed twice or inside another listed one (naming both),
            a reserved unit name, or a setting of another form.
        """
        check_modules(modules)
        if isinstance(modules, Partition):
            return modules
        if modules is None:
            return _default(model, warn=True)
        default = _default_units(model)
        listed: list[Listed]
        if isinstance(modules, Mapping):
            listed = [(name, tuple([paths] if isinstance(paths, str) else paths), None)
                      for name, paths in modules.items()]
        else:
            listed = [(entry, default[entry].paths, default[entry].output) if entry in default
                      else (entry, (entry,), None) for entry in modules]
        try:
            return _build(model, listed, leftovers_join=False)
        except ModuleNotFoundInModel as error:
            raise ModuleNotFoundInModel(f"{error}; the default units are: {', '.join(default)}") from None

    @property
    def names(self) -> list[str]:
        return [unit.name for unit in self.units]

    def __getitem__(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise ValueError(f"no unit named {name!r} in the partition; its units are: {', '.join(self.names)}")

    @property
    def rest(self) -> Unit | None:
        """The unit of the tensors that no listed unit holds, if any."""
        return next((unit for unit in self.units if unit.name == REST), None)

    def state_keys(self) -> OrderedDict[str, list[str]]:
        """``{unit: state-dict keys}``."""
        return OrderedDict((unit.name, list(unit.keys)) for unit in self.units)

    def select(self, names: Sequence[str]) -> Partition:
        """The units ``names`` only, in that order (to analyse some units of a partition)."""
        if isinstance(names, str) or len(set(names)) != len(names):
            raise ValueError(f"select takes a list of distinct unit names, got {names!r}")
        return Partition(tuple(self[name] for name in names))

    def outputs(self, model: nn.Module) -> OrderedDict[str, nn.Module]:
        """``{unit: the module whose output represents it}`` (``rest`` has none and is left out)."""
        without = [unit.name for unit in self.units if unit.output is None and unit.name != REST]
        if without:
            raise ValueError(f"units {without} hold tensors but no module, so they have no output to compare; "
                             "list a module in each")
        return OrderedDict((unit.name, model.get_submodule(unit.output)) for unit in self.units if unit.output)

    def n_parameters(self, model: nn.Module) -> OrderedDict[str, int]:
        """``{unit: number of parameters}`` (buffers not counted)."""
        sizes = {name: parameter.numel() for name, parameter in model.named_parameters(remove_duplicate=False)}
        return OrderedDict((unit.name, sum(sizes.get(key, 0) for key in unit.keys)) for unit in self.units)


Modules = Union[Sequence[str], Mapping[str, Union[Sequence[str], str]], Partition, None]


def check_modules(modules: Modules) -> None:
    """Raise ``ValueError`` unless ``modules`` has the form of the ``modules=`` setting
    (the checks that need no model: types, empty names, reserved and repeated names)."""
    if modules is None or isinstance(modules, Partition):
        return
    example = "e.g. modules=['layer1', 'layer2'] or modules={'stem': ['conv1', 'bn1'], 'body': ['layer1']}"
    if isinstance(modules, str):
        raise ValueError(f"modules must be a list of module names or a mapping of unit names to module names, "
                         f"not a string: modules=[{modules!r}]")
    groups = list(modules.values()) if isinstance(modules, Mapping) else [modules]
    names = list(modules) if isinstance(modules, (Mapping, Sequence)) else []
    paths = [path for group in groups if isinstance(group, Sequence) for path in ([group] if isinstance(group, str) else group)]
    unit_names = names if isinstance(modules, Mapping) else []
    if not names or not all(isinstance(group, Sequence) and len(group) for group in groups) \
            or not all(isinstance(name, str) for name in names + paths) or not all(unit_names):
        raise ValueError(f"modules needs names and non-empty lists of them ({example}), got {modules!r}; "
                         "None takes the default partition")
    reserved = [name for name in names if name in RESERVED]
    if reserved:
        raise ValueError(f"{reserved} cannot name a unit: {REST!r} holds the tensors no unit lists and {NETWORK!r} is "
                         "the whole network; name the unit otherwise with a mapping, e.g. modules={'my_rest': [...]}")
    if not isinstance(modules, Mapping) and len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"modules lists {twice} twice; every tensor belongs to one unit: list each module once")


def modules(model: nn.Module, modules: Modules = None) -> OrderedDict[str, nn.Module]:
    """Ordered ``{unit: module}`` of the partition, each unit's module the one whose output
    represents it (its last listed module; :meth:`Partition.outputs`). ``rest`` is left out."""
    return Partition.of(model, modules).outputs(model)


def module_state_keys(model: nn.Module, modules: Modules = None) -> OrderedDict[str, list[str]]:
    """Ordered ``{unit: state-dict keys}`` of the partition (parameters and buffers, BN
    buffers included; ``rest`` last when a list or mapping leaves tensors out)."""
    return Partition.of(model, modules).state_keys()


def head_name(model: nn.Module) -> str:
    """Name of the classifier head: ``fc``, ``head``, ``classifier`` or the last Linear."""
    children = dict(model.named_children())
    for name in ("fc", "head", "classifier"):
        if name in children:
            return name
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no Linear layer to use as the classifier head; pass head=...")
    return linear[-1]


# ---------------------------------------------------------------------- building a partition
def _owner(key: str, owners: Mapping[str, str]) -> str | None:
    """The unit of the listed path that holds ``key`` (paths never nest)."""
    parts = key.split(".")
    return next((owners[prefix] for prefix in (".".join(parts[:end]) for end in range(1, len(parts) + 1))
                 if prefix in owners), None)


def _item(key: str, ancestors: set[str]) -> str:
    """The shortest prefix of ``key`` that holds no listed path: the module (or tensor)
    that a leftover key is reported under."""
    parts = key.split(".")
    return next(prefix for prefix in (".".join(parts[:end]) for end in range(1, len(parts) + 1))
                if prefix not in ancestors)


def _check_paths(model: nn.Module, listed: Sequence[Listed], module_names: set[str], keys: Sequence[str]) -> None:
    known = module_names | set(keys)
    missing = [path for _, paths, _ in listed for path in paths if path not in known]
    if missing:
        top = [name for name, _ in model.named_children()]
        nested = next((name for name in sorted(module_names, key=len) if "." in name), "block.0")
        raise ModuleNotFoundInModel(
            f"no module named {', '.join(map(repr, missing))} in {type(model).__name__}; module names are matched "
            f"exactly; top-level modules are: {', '.join(top)} (nested modules are addressed with dots, e.g. "
            f"{nested!r})")
    seen: list[tuple[str, str]] = []
    for unit, paths, _ in listed:
        for path in paths:
            for other, other_unit in seen:
                if path == other:
                    raise ValueError(f"{path!r} is listed twice (in units {other_unit!r} and {unit!r}); every tensor "
                                     "belongs to one unit: list each module once")
                inner, outer = (path, other) if in_modules(path, [other]) else (other, path)
                if in_modules(inner, [outer]):
                    owner = {path: unit, other: other_unit}
                    raise ValueError(f"{inner!r} (unit {owner[inner]!r}) lies inside {outer!r} (unit {owner[outer]!r}); "
                                     "every tensor belongs to one unit: list either the module or its parts")
            seen.append((path, unit))


def _build(model: nn.Module, listed: Sequence[Listed], *, leftovers_join: bool) -> Partition:
    """Assign every state key to the unit whose listed path holds it; the others join the
    unit before them (``leftovers_join``, default partitions) or form ``rest``."""
    keys = list(model.state_dict())
    module_names = {name for name, _ in model.named_modules() if name}
    _check_paths(model, listed, module_names, keys)
    owners = {path: name for name, paths, _ in listed for path in paths}
    ancestors = {".".join(path.split(".")[:end]) for path in owners for end in range(1, path.count(".") + 1)}
    held: dict[str, list[str]] = {name: [] for name, _, _ in listed}
    extra: dict[str, list[str]] = {name: [] for name, _, _ in listed}
    held[REST], extra[REST] = [], []
    current = listed[0][0]
    for key in keys:
        owner = _owner(key, owners)
        if owner is not None:
            current = owner
            held[owner].append(key)
            continue
        target = current if leftovers_join else REST
        held[target].append(key)
        item = _item(key, ancestors)
        if item not in extra[target]:
            extra[target].append(item)
    units = [Unit(name, paths + tuple(extra[name]), tuple(held[name]),
                  output or next((path for path in reversed(paths) if path in module_names), None))
             for name, paths, output in listed]
    if held[REST]:
        units.append(Unit(REST, tuple(extra[REST]), tuple(held[REST]), None))
    return Partition(tuple(units))


# ---------------------------------------------------------------------- default partitions
def _default_units(model: nn.Module) -> dict[str, Unit]:
    """``{name: unit}`` of the default partition; none for a model that has none."""
    try:
        return {unit.name: unit for unit in _default(model, warn=False).units}
    except ValueError:
        return {}


def _default(model: nn.Module, *, warn: bool) -> Partition:
    """The default partition of ``model``'s family (module docstring)."""
    for family in (_resnet, _torchvision, _lukemelas_efficientnet, _timm_features):
        listed = family(model)
        if listed is not None:
            return _with_owners(model, listed)
    return _top_level(model, warn)


def _with_owners(model: nn.Module, listed: list[Listed]) -> Partition:
    """``listed`` plus the tensors that ``model.state_key_owners`` assigns, leftovers joining
    the unit before them."""
    owners = getattr(model, "state_key_owners", {})
    listed = [(name, paths + tuple(key for key, owner in owners.items() if owner == name), output)
              for name, paths, output in listed]
    return _build(model, listed, leftovers_join=True)


def _units(*groups: tuple[str, Sequence[str]]) -> list[Listed]:
    return [(name, tuple(paths), None) for name, paths in groups]


def _resnet(model: nn.Module) -> list[Listed] | None:
    children = dict(model.named_children())
    if not all(name in children for name in RESNET_MODULES):
        return None
    return _units(*((name, [name]) for name in RESNET_MODULES))


def _output_width(block: nn.Module) -> int | None:
    """Output channels of a block: those of its last convolution."""
    convs = [module for module in block.modules() if isinstance(module, nn.Conv2d)]
    return convs[-1].out_channels if convs else None


def _stages(prefix: str, blocks: Sequence[tuple[int, nn.Module]]) -> list[tuple[str, list[str]]]:
    """``stage1``, ``stage2``, ...: runs of consecutive blocks of one output width."""
    groups: list[list[str]] = []
    width: object = object()
    for index, block in blocks:
        if _output_width(block) != width:
            groups.append([])
            width = _output_width(block)
        groups[-1].append(f"{prefix}.{index}")
    return [(f"stage{number}", paths) for number, paths in enumerate(groups, start=1)]


def _paired_stages(features: nn.Sequential) -> list[tuple[str, list[str]]]:
    """``stage1`` = ``features.1``, then ``stage{k}`` = a downsampling layer and the stage after it."""
    pairs = [[f"features.{index}", f"features.{index + 1}"] for index in range(2, len(features) - 1, 2)]
    return [("stage1", ["features.1"])] + [(f"stage{number}", paths) for number, paths in enumerate(pairs, start=2)]


def _torchvision(model: nn.Module) -> list[Listed] | None:
    if not type(model).__module__.startswith("torchvision."):
        return None
    from torchvision import models as tv

    if isinstance(model, tv.VisionTransformer):
        layers = [name for name, _ in model.encoder.layers.named_children()]
        return _units(("embedding", ["class_token", "conv_proj", "encoder.pos_embedding"]),
                      *((f"block{index}", [f"encoder.layers.{name}"]) for index, name in enumerate(layers)),
                      ("head", ["encoder.ln", "heads"]))
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return None
    last = len(features) - 1
    if isinstance(model, tv.EfficientNet):
        stages = [(f"stage{index}", [f"features.{index}"]) for index in range(1, last)]
        return _units(("stem", ["features.0"]), *stages, ("head", [f"features.{last}"]), ("classifier", ["classifier"]))
    if isinstance(model, (tv.MobileNetV2, tv.MobileNetV3)):
        stages = _stages("features", [(index, features[index]) for index in range(1, last)])
        return _units(("stem", ["features.0"]), *stages, ("head", [f"features.{last}"]), ("classifier", ["classifier"]))
    if isinstance(model, tv.ConvNeXt):
        return _units(("stem", ["features.0"]), *_paired_stages(features), ("classifier", ["classifier"]))
    if isinstance(model, tv.SwinTransformer):
        return _units(("embedding", ["features.0"]), *_paired_stages(features), ("head", ["norm", "head"]))
    return None


def _lukemelas_efficientnet(model: nn.Module) -> list[Listed] | None:
    children = dict(model.named_children())
    if not {"_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc"} <= set(children):
        return None
    stages = _stages("_blocks", list(enumerate(children["_blocks"].children())))
    return _units(("stem", ["_conv_stem", "_bn0"]), *stages, ("head", ["_conv_head", "_bn1"]), ("classifier", ["_fc"]))


def _feature_modules(model: nn.Module) -> list[str] | None:
    """The module paths of timm's ``feature_info`` (a list of dicts, or timm's FeatureInfo)."""
    info: Any = getattr(model, "feature_info", None)
    entries = info.get_dicts() if hasattr(info, "get_dicts") else info
    if not isinstance(entries, Sequence) or not entries:
        return None
    paths = [entry.get("module", "") for entry in entries if isinstance(entry, Mapping)]
    module_names = {name for name, _ in model.named_modules() if name}
    return paths if len(paths) == len(entries) and all(path in module_names for path in paths) else None


def _timm_features(model: nn.Module) -> list[Listed] | None:
    """One unit per feature module, holding what runs after the previous one up to it
    (module registration order), then ``head``."""
    anchors = _feature_modules(model)
    if anchors is None:
        return None
    order = [name for name, _ in model.named_modules()]
    position = {name: index for index, name in enumerate(order)}
    ends = [max(position[name] for name in order if name == anchor or name.startswith(anchor + ".")) for anchor in anchors]
    ancestors = {".".join(path.split(".")[:end]) for path in anchors for end in range(1, path.count(".") + 1)}
    groups: dict[str, list[str]] = {name: [] for name in [*anchors, "head"]}
    for key in model.state_dict():
        owner_position = position[key.rpartition(".")[0]]
        unit = next((anchor for anchor, end in zip(anchors, ends) if owner_position <= end), "head")
        item = _item(key, ancestors)
        if item not in groups[unit]:
            groups[unit].append(item)
    return [(name, tuple(paths), name if name in anchors else None) for name, paths in groups.items() if paths]


def _top_level(model: nn.Module, warn: bool) -> Partition:
    """Top-level children with parameters, the other tensors joining the unit before them."""
    children = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not children:
        raise ValueError(f"{type(model).__name__} has no child module with parameters to make units of; pass "
                         "modules={'unit': ['tensor or module name', ...]} to name the units")
    result = _build(model, _units(*((name, [name]) for name in children)), leftovers_join=True)
    sizes = result.n_parameters(model)
    total = sum(sizes.values())
    largest = max(sizes, key=sizes.__getitem__)
    parts = [f"{largest}.{name}" for name, _ in model.get_submodule(largest).named_children()]
    if warn and parts and sizes[largest] > LARGEST_SHARE * total:
        split = [name for unit in sizes for name in (parts if unit == largest else [unit])]
        shown = ", ".join(split[:SHOWN_UNITS]) + (", ..." if len(split) > SHOWN_UNITS else "")
        warnings.warn(
            f"the default partition of {type(model).__name__} (its top-level children with parameters: "
            f"{', '.join(sizes)}) puts {sizes[largest]} of its {total} parameters in unit {largest!r}, which the "
            f"analyses treat as one module; split it with the modules setting (modules: in the study YAML, modules= "
            f"in Python), e.g. modules: [{shown}], or group modules into units with a mapping", stacklevel=4)
    return result
