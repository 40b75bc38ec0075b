import copy

import pytest
import torch
from torch import nn

from transferscope.cached_prefix import CachedPrefixEvaluator
from transferscope.evaluation import loss_fn
from transferscope.models import build_model, module_state_keys


def _batches(n=8, size=16, classes=4, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _perturb(model, keys, scale=0.5, seed=1):
    """Move the parameters among ``keys`` (BatchNorm statistics stay valid)."""
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key in keys:
            if key in parameters:
                parameters[key].add_(scale * torch.randn(parameters[key].shape, generator=generator))


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(("arch", "module", "skipped", "size"),
                         [("small_resnet", "layer3", "layer1", 16), ("resnet18", "layer2", "maxpool", 32)])
def test_suffix_equals_the_full_forward_after_the_module_moves(arch, module, skipped, size):
    torch.manual_seed(0)
    model = build_model(arch, 4, width=8).eval()
    batches = _batches(size=size)
    evaluator = CachedPrefixEvaluator(model, batches)
    keys = module_state_keys(model)[module]
    assert evaluator.cache_inputs_of(module, changing=keys) and evaluator.cached_module == module
    calls = _count_calls(getattr(model, skipped))
    _perturb(model, keys)  # the module moves after its inputs were cached
    suffix = evaluator.logits()
    assert not calls  # the prefix did not run
    with torch.no_grad():
        full = [model(x) for x, _ in batches]
    assert all(torch.equal(a, b) for a, b in zip(suffix, full))  # exact on the CPU
    expected = sum(float(loss_fn(out, y, reduction="none").double().sum()) for out, (_, y) in zip(full, batches)) / 8
    assert evaluator.loss() == expected and evaluator.n_examples == 8
    assert evaluator.suffix_matches_full_forward()
    assert not any(m._forward_pre_hooks for m in model.modules())  # only the counting hook is left
    assert all(type(getattr(model, name)).__name__ != "_PassThrough" for name, _ in model.named_children())
    evaluator.clear_cache()
    assert evaluator.cached_module is None
    calls.clear()
    evaluator.logits()
    assert len(calls) == len(batches)  # full forward passes again


def test_nothing_is_cached_without_a_prefix_or_for_a_module_called_twice():
    torch.manual_seed(0)
    model = build_model("small_resnet", 4, width=8).eval()
    evaluator = CachedPrefixEvaluator(model, _batches())
    assert not evaluator.cache_inputs_of("conv1")  # it runs first
    twice = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
    shared = nn.Sequential(twice[0], nn.Linear(6, 6), twice[0], nn.Linear(6, 3)).eval()
    evaluator = CachedPrefixEvaluator(shared, [(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))])
    assert not evaluator.cache_inputs_of("0") and evaluator.cached_module is None


def test_nothing_is_cached_when_a_changing_module_runs_before():
    torch.manual_seed(0)
    model = build_model("small_resnet", 4, width=8).eval()
    evaluator = CachedPrefixEvaluator(model, _batches())
    assert not evaluator.cache_inputs_of("layer3", changing=module_state_keys(model)["layer1"])
    assert evaluator.cache_inputs_of("layer3", changing=module_state_keys(model)["layer4"])


class SkipOverModule(nn.Module):
    """``c`` reads the output of ``a`` past ``b`` too; ``widen`` makes that output wider."""

    def __init__(self, widen=False):
        super().__init__()
        self.a = nn.Linear(6, 8 if widen else 6)
        self.b, self.c = nn.Linear(8 if widen else 6, 8 if widen else 6), nn.Linear(8 if widen else 6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.c(self.b(h) + h)


def test_a_skip_over_the_module_is_detected_and_a_failing_suffix_raises():
    torch.manual_seed(0)
    batches = [(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))]
    same_width = CachedPrefixEvaluator(SkipOverModule(), batches)
    assert same_width.cache_inputs_of("b")
    assert not same_width.suffix_matches_full_forward()
    wider = CachedPrefixEvaluator(SkipOverModule(widen=True), batches)
    assert wider.cache_inputs_of("b")
    with pytest.raises(RuntimeError, match="from module 'b' on its cached inputs failed") as raised:
        wider.suffix_matches_full_forward()
    assert isinstance(raised.value.__cause__, RuntimeError) and "size of tensor" in str(raised.value.__cause__)
    assert isinstance(wider.model.a, nn.Linear)  # restored after the failure


def test_a_deep_copy_keeps_working_with_its_own_cache():
    torch.manual_seed(0)
    model = build_model("small_resnet", 4, width=8).eval()
    work = copy.deepcopy(model)
    evaluator = CachedPrefixEvaluator(work, _batches())
    assert evaluator.cache_inputs_of("fc", changing=module_state_keys(work)["fc"])
    assert evaluator.loss() == CachedPrefixEvaluator(model, _batches()).loss()


def test_caching_takes_one_full_pass_whose_loss_sums_it_keeps_and_loss_sums_are_lazy():
    """cache_inputs_of runs one full forward per batch (it also finds the prefix on the
    first) and keeps that pass's loss sums, cacheable or not; loss_sums computes the
    batches asked for, in the order asked, only when asked; the check can be limited
    to the first batches."""
    torch.manual_seed(0)
    model = build_model("small_resnet", 4, width=8).eval()
    batches = _batches(n=12, batch=4)
    with torch.no_grad():
        expected = [float(loss_fn(model(x), y, reduction="none").double().sum()) for x, y in batches]
    evaluator = CachedPrefixEvaluator(model, batches)
    stem, head = _count_calls(model.conv1), _count_calls(model.fc)
    assert not evaluator.cache_inputs_of("conv1") and evaluator.full_loss_sums == expected
    assert evaluator.cache_inputs_of("layer3", changing=module_state_keys(model)["layer3"])
    assert evaluator.full_loss_sums == expected and len(stem) == len(head) == 6  # 3 batches, twice
    assert evaluator.loss() == sum(expected) / 12 and len(stem) == 6  # the suffix only
    head.clear()
    sums = evaluator.loss_sums([2, 0])
    assert not head
    assert next(sums) == expected[2] and len(head) == 1
    assert list(sums) == [expected[0]] and len(head) == 2
    head.clear()
    assert evaluator.suffix_matches_full_forward(n_batches=1) and len(head) == 2 and len(stem) == 7


def test_regrouped_evaluates_the_same_examples_in_other_batches_from_the_cached_inputs():
    """A regrouped evaluator gives each example the loss the original gives it (to
    rounding), with no new pass through the prefix when the inputs are cached; without
    a cache it makes full forward passes."""
    torch.manual_seed(0)
    model = build_model("small_resnet", 4, width=8).eval()
    evaluator = CachedPrefixEvaluator(model, _batches(n=12, batch=5))
    groups = [torch.tensor([11, 0, 6]), torch.tensor([3, 9, 1, 10, 2]), torch.tensor([4, 5, 7, 8])]
    plain = evaluator.regrouped(groups)
    assert plain.cached_module is None and plain.n_examples == 12
    assert evaluator.cache_inputs_of("layer2", changing=module_state_keys(model)["layer2"])
    _perturb(model, module_state_keys(model)["layer2"])
    per_example = torch.cat(list(evaluator.example_losses()))
    stem = _count_calls(model.conv1)
    regrouped = evaluator.regrouped(groups)
    assert regrouped.cached_module == "layer2"
    for group, losses in zip(groups, regrouped.example_losses()):
        torch.testing.assert_close(losses, per_example[group], rtol=1e-5, atol=1e-6)
    assert not stem  # the suffix only
    for group, losses in zip(groups, plain.example_losses()):
        torch.testing.assert_close(losses, per_example[group], rtol=1e-5, atol=1e-6)
    assert len(stem) == 3
    assert evaluator.full_loss_sums == [float(losses.sum()) for losses in evaluator.full_losses]


def test_the_cached_inputs_are_held_once_and_a_regrouped_evaluator_gathers_them_in_their_memory_format():
    """Caching packs every batch's inputs into one tensor (each batch a view of it); a
    regrouped evaluator shares that tensor (no second copy) and gathers its batches'
    rows at each call, channels_last kept, with the original's per-example losses."""
    torch.manual_seed(0)
    model = build_model("small_resnet", 4, width=8).eval().to(memory_format=torch.channels_last)
    batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in _batches(n=12, batch=5)]
    evaluator = CachedPrefixEvaluator(model, batches)
    assert evaluator.cache_inputs_of("layer2", changing=module_state_keys(model)["layer2"])
    cached = [args[0] for args, _ in evaluator._inputs]
    assert [len(value) for value in cached] == [5, 5, 2]
    assert len({value.untyped_storage().data_ptr() for value in cached}) == 1  # one tensor, three views
    per_example = torch.cat(list(evaluator.example_losses()))
    groups = [torch.tensor([11, 0, 6]), torch.tensor([3, 9, 1, 10, 2]), torch.tensor([4, 5, 7, 8])]
    regrouped = evaluator.regrouped(groups)
    assert regrouped._inputs == [] and regrouped._columns is evaluator._columns
    formats = []
    model.layer2.register_forward_pre_hook(
        lambda _module, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    for group, losses in zip(groups, regrouped.example_losses()):
        torch.testing.assert_close(losses, per_example[group], rtol=1e-5, atol=1e-6)
    assert formats == [True, True, True]


class _Pooled(nn.Module):
    """conv, then ``head`` on the pooled features, called with a keyword argument when ``keyword``."""

    def __init__(self, keyword: bool) -> None:
        super().__init__()
        self.conv, self.keyword = nn.Conv2d(3, 4, 3), keyword
        self.head = _Head()

    def forward(self, x):
        features = self.conv(x)
        return self.head(features, scale=2.0) if self.keyword else self.head(features)


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, features, scale=1.0):
        return self.fc(features.mean((2, 3)) * scale)


@pytest.mark.parametrize("keyword", [False, True])
def test_inputs_that_do_not_pack_into_one_tensor_are_kept_per_call(keyword):
    """A batch of another image size (other feature shape), or a keyword argument: the
    inputs are kept call by call (the first call's as a view), and the suffix still gives
    the full forward's logits; a regrouped evaluator of keyword calls makes full passes."""
    torch.manual_seed(0)
    model = _Pooled(keyword).eval()
    sizes = (8, 8) if keyword else (8, 6)
    batches = [(torch.randn(4, 3, size, size), torch.randint(0, 3, (4,))) for size in sizes]
    evaluator = CachedPrefixEvaluator(model, batches)
    assert evaluator.cache_inputs_of("head", changing=["head.fc.weight", "head.fc.bias"])
    assert [args[0].shape[-1] for args, _ in evaluator._inputs] == [size - 2 for size in sizes]
    _perturb(model, ["head.fc.weight"])
    with torch.no_grad():
        full = [model(x) for x, _ in batches]
    for logits, expected in zip(evaluator.logits(), full):
        torch.testing.assert_close(logits, expected)
    if keyword:
        assert evaluator.regrouped([torch.tensor([7, 0, 3]), torch.tensor([1, 2, 4, 5, 6])]).cached_module is None
