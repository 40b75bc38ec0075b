"""Linear interpolation between two models and the performance barrier (Sec. 3.3)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import mannwhitneyu
from torch import nn

from transferscope.analysis.interpolation import LinearPath, barrier, interpolate
from transferscope.evaluation import evaluate, recalibrate_batchnorm
from transferscope.models import build_model


def _batches(n: int, classes: int = 3, size: int = 8, batch: int = 16, seed: int = 0, multilabel: bool = False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=generator)
    y = ((torch.rand(n, classes, generator=generator) < 0.5).float() if multilabel
         else torch.randint(0, classes, (n,), generator=generator))
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _bn_model(seed: int, mean_shift: float) -> nn.Module:
    """A small_resnet whose BatchNorm statistics are set far from the defaults, so that
    models a and b have clearly different running statistics (variances in [1, 1.5], so
    that extrapolating them to α = -0.5 or 1.5 keeps them positive)."""
    torch.manual_seed(seed)
    model = build_model("small_resnet", 3, width=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(mean_shift, 0.3)
                module.running_var.uniform_(1.0, 1.5)
                module.num_batches_tracked.fill_(seed + 5)
    return model.eval()


@pytest.fixture(scope="module")
def pair():
    return _bn_model(0, 0.5), _bn_model(1, -0.5)


@pytest.fixture(scope="module")
def data():
    return _batches(48, seed=0), _batches(32, seed=1)  # evaluation, recalibration (training) data


def _manual(model_a, model_b, alpha: float, keep_a_bn: bool = False) -> nn.Module:
    """(1 − α)Θ_a + αΘ_b built by hand from the state dicts (optionally a's BN buffers)."""
    model = copy.deepcopy(model_a)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    state = {}
    for key, a in sa.items():
        is_bn_buffer = key.endswith(("running_mean", "running_var"))
        if not a.is_floating_point() or (keep_a_bn and is_bn_buffer):
            state[key] = a.clone()
        else:
            state[key] = (1 - alpha) * a + alpha * sb[key]
    model.load_state_dict(state)
    return model


def _row(frame: pd.DataFrame, alpha: float) -> pd.Series:
    return frame.set_index("alpha").loc[alpha]


def test_endpoints_equal_the_models_own_evaluation(pair, data):
    a, b = pair
    test, _ = data
    frame = interpolate(a, b, test, alphas=[0.0, 1.0], bn="follow")
    for alpha, model in ((0.0, a), (1.0, b)):
        own = evaluate(model, test)
        assert _row(frame, alpha)["loss"] == pytest.approx(own["loss"], abs=1e-6)
        assert _row(frame, alpha)["score"] == pytest.approx(own["accuracy"], abs=1e-6)
    keep = interpolate(a, b, test, alphas=[0.0], bn="keep")
    assert keep["loss"].iloc[0] == pytest.approx(evaluate(a, test)["loss"], abs=1e-6)


def test_follow_mode_averages_the_buffers(pair, data):
    a, b = pair
    test, _ = data
    frame = interpolate(a, b, test, alphas=[0.5], bn="follow")
    manual = evaluate(_manual(a, b, 0.5), test)
    assert frame["loss"].iloc[0] == pytest.approx(manual["loss"], abs=1e-5)
    assert frame["score"].iloc[0] == pytest.approx(manual["accuracy"])
    assert frame["bn"].iloc[0] == "follow"


def test_keep_mode_keeps_a_statistics(pair, data):
    a, b = pair
    test, _ = data
    frame = interpolate(a, b, test, alphas=[0.5], bn="keep")
    kept = evaluate(_manual(a, b, 0.5, keep_a_bn=True), test)
    averaged = evaluate(_manual(a, b, 0.5), test)
    assert frame["loss"].iloc[0] == pytest.approx(kept["loss"], abs=1e-5)
    assert abs(kept["loss"] - averaged["loss"]) > 1e-3  # the two BN modes are distinguishable here


def test_recalibrate_mode_equals_manual_recalibration(pair, data):
    a, b = pair
    test, train = data
    frame = interpolate(a, b, test, alphas=[0.0, 0.5], recalibration_loader=train)  # "auto" -> recalibrate
    assert set(frame["bn"]) == {"recalibrate"}
    for alpha in (0.0, 0.5):
        manual = recalibrate_batchnorm(_manual(a, b, alpha), train)
        assert _row(frame, alpha)["loss"] == pytest.approx(evaluate(manual, test)["loss"], abs=1e-5)
    one = interpolate(a, b, test, alphas=[0.5], recalibration_loader=train, recalibration_batches=1)
    manual = recalibrate_batchnorm(_manual(a, b, 0.5), train[:1])
    assert one["loss"].iloc[0] == pytest.approx(evaluate(manual, test)["loss"], abs=1e-5)
    assert one["recalibration_batches"].iloc[0] == 1


def test_auto_follows_without_recalibration_data(pair, data):
    """"auto" recalibrates only when there are data to recalibrate on; otherwise the
    statistics follow the weights (it was an error before)."""
    a, b = pair
    test, _ = data
    auto = interpolate(a, b, test, alphas=[0.5])
    follow = interpolate(a, b, test, alphas=[0.5], bn="follow")
    assert auto["bn"].iloc[0] == "follow" and auto["loss"].iloc[0] == follow["loss"].iloc[0]


def test_extrapolation_equals_manual_build(pair, data):
    a, b = pair
    test, _ = data
    frame = interpolate(a, b, test, alphas=[-0.5, 1.5], bn="follow")
    for alpha in (-0.5, 1.5):
        manual = evaluate(_manual(a, b, alpha), test)
        assert _row(frame, alpha)["loss"] == pytest.approx(manual["loss"], rel=1e-5)
        assert _row(frame, alpha)["score"] == pytest.approx(manual["accuracy"])


def test_negative_extrapolated_variance_warns(pair, data):
    a, b = pair
    test, _ = data
    with pytest.warns(RuntimeWarning) as record:
        frame = interpolate(a, b, test, alphas=[4.0], bn="follow")  # 4·var_b − 3·var_a < 0 somewhere
    messages = [str(warning.message) for warning in record]
    assert any("running_var" in m and "bn='recalibrate'" in m for m in messages)
    assert any("at α in [4.0]" in m and "NaN or inf" in m for m in messages)
    assert np.isnan(frame["loss"].iloc[0]) and np.isnan(frame["score"].iloc[0])  # not argmax-of-NaN class 0


def _dead_channel_pair() -> tuple[nn.Module, nn.Module]:
    """Models whose running variances have exact zeros (dead channels), per BatchNorm:
    channel 0 is 0 in both, channel 1 is 0 in b only, channel 2 is 1 in a and 2 in b (so
    (1 − α)·1 + α·2 = 0 exactly at α = −1); the others lie in [1, 1.5]."""
    a, b = _bn_model(0, 0.5), _bn_model(1, -0.5)
    with torch.no_grad():
        for model, values in ((a, [0.0, 1.2, 1.0]), (b, [0.0, 0.0, 2.0])):
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_var[:3] = torch.tensor(values)
    return a, b


@pytest.mark.parametrize("batched", [False, True])
def test_dead_batchnorm_channels_warn_only_where_the_path_breaks_a_variance(data, batched):
    """Issue 11: zeros taken from an endpoint (dead channels) are the models' own statistics,
    with finite outputs: no warning on the segment nor where extrapolation keeps every
    variance usable; a warning where it makes one negative (α = 1.5: −0.5 × 1.2) or drives
    two positive endpoints to exactly 0 (α = −1)."""
    a, b = _dead_channel_pair()
    test, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = interpolate(a, b, test, alphas=[-0.5, 0.0, 0.3, 0.5, 1.0], bn="follow", batched=batched)
    assert np.isfinite(frame["loss"]).all()
    for alpha in (-1.0, 1.5):  # at 1.5 the outputs are NaN as well, with their own warning
        with pytest.warns(RuntimeWarning) as record:
            interpolate(a, b, test, alphas=[alpha], bn="follow", batched=batched)
        assert any(f"at α = {alpha:g} the extrapolated BatchNorm variance 'conv1.1.running_var' has negative "
                   "entries" in str(warning.message) for warning in record)


def test_broken_variances_rule_entry_by_entry():
    a, b = _dead_channel_pair()
    path = LinearPath(a, b, bn="follow")
    key = "conv1.1.running_var"
    for alpha, broken in ((0.0, False), (0.5, False), (1.0, False), (-0.5, False), (-1.0, True), (1.5, True)):
        assert (key in path.broken_variances(path.state_at(alpha))) is broken, alpha
    assert LinearPath(a, b, bn="keep").broken_variances(path.state_at(1.5)) == []  # kept statistics never break


def test_models_are_not_modified(pair, data):
    a, b = pair
    test, train = data
    a.train()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    modes = [[m.training for m in model.modules()] for model in (a, b)]
    try:
        interpolate(a, b, test, alphas=[0.0, 0.3, 1.2], recalibration_loader=train)
        interpolate(a, b, test, alphas=[0.3], bn="keep", batched=True)
        for model, state, mode in zip((a, b), before, modes):
            assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
            assert [m.training for m in model.modules()] == mode
    finally:
        a.eval()


def test_mismatched_architectures_name_the_parameter(data):
    test, _ = data
    torch.manual_seed(0)
    narrow, wide = build_model("small_resnet", 3, width=4), build_model("small_resnet", 3, width=8)
    with pytest.raises(ValueError, match=r"conv1\.0\.weight.*\(4, 3, 3, 3\).*\(8, 3, 3, 3\)"):
        interpolate(narrow, wide, test, alphas=[0.5], bn="follow")
    other_head = build_model("small_resnet", 5, width=4)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        interpolate(narrow, other_head, test, alphas=[0.5], bn="follow")
    deeper = build_model("small_resnet", 3, width=4, blocks=(2, 1, 1, 1))
    with pytest.raises(ValueError, match=r"missing from model_a: layer1\.1\."):
        interpolate(narrow, deeper, test, alphas=[0.5], bn="follow")


@pytest.mark.parametrize("bn", ["follow", "keep"])
def test_batched_equals_loop_with_batchnorm(pair, data, bn):
    a, b = pair
    test, _ = data
    alphas = [-0.5, 0.0, 0.2, 0.5, 0.8, 1.0, 1.5]
    loop = interpolate(a, b, test, alphas=alphas, bn=bn, batched=False)
    vmapped = interpolate(a, b, test, alphas=alphas, bn=bn, batched=True, vmap_chunk=3)
    assert not loop["batched"].any() and vmapped["batched"].all()
    np.testing.assert_allclose(vmapped["loss"], loop["loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped["score"], loop["score"], atol=1e-5)


def test_batched_equals_loop_without_batchnorm_and_multilabel():
    torch.manual_seed(3)
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3)) for _ in range(2)]
    test = _batches(40, multilabel=True, seed=4)
    loop = interpolate(*nets, test, alphas=[0.0, 0.4, 1.0, 1.3], batched=False)
    vmapped = interpolate(*nets, test, alphas=[0.0, 0.4, 1.0, 1.3], batched=True)
    assert set(loop["bn"]) == {"follow"} and set(loop["metric"]) == {"auc"}
    np.testing.assert_allclose(vmapped["loss"], loop["loss"], rtol=1e-5)
    np.testing.assert_allclose(vmapped["score"], loop["score"], atol=1e-5)


def _linear_pair(classes: int):
    torch.manual_seed(7)
    return nn.Linear(5, classes), nn.Linear(5, classes)


def _numpy_logits(a: nn.Linear, b: nn.Linear, alpha: float, x: np.ndarray) -> np.ndarray:
    weight = (1 - alpha) * a.weight.detach().double().numpy() + alpha * b.weight.detach().double().numpy()
    bias = (1 - alpha) * a.bias.detach().double().numpy() + alpha * b.bias.detach().double().numpy()
    return x @ weight.T + bias


def test_linear_model_matches_float64_numpy_reference():
    a, b = _linear_pair(4)
    generator = torch.Generator().manual_seed(8)
    x, y = torch.randn(60, 5, generator=generator), torch.randint(0, 4, (60,), generator=generator)
    alphas = [-0.5, 0.0, 0.3, 1.0, 1.7]
    frame = interpolate(a, b, [(x[:32], y[:32]), (x[32:], y[32:])], alphas=alphas)
    for alpha in alphas:
        logits = _numpy_logits(a, b, alpha, x.double().numpy())
        loss = np.mean(logsumexp(logits, axis=1) - logits[np.arange(60), y.numpy()])
        accuracy = np.mean(logits.argmax(1) == y.numpy())
        assert _row(frame, alpha)["loss"] == pytest.approx(loss, rel=1e-5)
        assert _row(frame, alpha)["score"] == pytest.approx(accuracy)


def test_multilabel_linear_model_matches_numpy_auc_and_bce():
    a, b = _linear_pair(3)
    generator = torch.Generator().manual_seed(9)
    x, y = torch.randn(50, 5, generator=generator), (torch.rand(50, 3, generator=generator) < 0.4).float()
    frame = interpolate(a, b, [(x, y)], alphas=[0.25, 1.4])
    for alpha in (0.25, 1.4):
        z = _numpy_logits(a, b, alpha, x.double().numpy())
        labels = y.double().numpy()
        bce = np.mean(np.logaddexp(0, z) - labels * z)
        aucs = [mannwhitneyu(z[labels[:, j] == 1, j], z[labels[:, j] == 0, j]).statistic
                / ((labels[:, j] == 1).sum() * (labels[:, j] == 0).sum()) for j in range(3)]
        assert _row(frame, alpha)["loss"] == pytest.approx(bce, rel=1e-5)
        assert _row(frame, alpha)["score"] == pytest.approx(np.mean(aucs), abs=1e-6)  # metrics() averages AUCs in float32


class CountingLoader:
    def __init__(self, batches):
        self.batches, self.iterations = batches, 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.batches)


def test_data_is_cached_once_and_max_examples_applies(pair, data):
    a, b = pair
    test, train = data
    loader, recalibration = CountingLoader(test), CountingLoader(train)
    frame = interpolate(a, b, loader, alphas=[0.0, 0.5, 1.0], recalibration_loader=recalibration, max_examples=20)
    assert loader.iterations == 1 and recalibration.iterations == 1
    assert set(frame["n_examples"]) == {20}
    first = [(test[0][0], test[0][1]), (test[1][0][:4], test[1][1][:4])]
    recalibrated_a = recalibrate_batchnorm(copy.deepcopy(a), train)
    assert _row(frame, 0.0)["loss"] == pytest.approx(evaluate(recalibrated_a, first)["loss"], abs=1e-5)


def test_load_writes_the_working_copy_in_place_and_restores_the_fixed_buffers(pair, monkeypatch):
    """LinearPath.load writes Θ(α) into the working copy's own tensors (no state dict of new
    tensors per α, no load_state_dict) and puts back model_a's fixed buffers: integer
    counters and, for "keep", the running statistics, whatever a recalibration or a caller
    left there."""
    a, b = pair
    path = LinearPath(a, b, bn="keep")
    storage = {key: tensor.data_ptr() for key, tensor in path.model.state_dict().items()}
    with torch.no_grad():
        for tensor in path.model.state_dict().values():
            tensor.add_(7)  # what a recalibration or an earlier α leaves behind
    monkeypatch.setattr(nn.Module, "load_state_dict", lambda *_args, **_kwargs: pytest.fail("load_state_dict used"))
    model = path.load(0.3)
    state_a, state_b = a.state_dict(), b.state_dict()
    for key, tensor in model.state_dict().items():
        assert tensor.data_ptr() == storage[key], key
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(tensor, state_a[key]), key
        else:
            assert torch.equal(tensor, torch.lerp(state_a[key], state_b[key], 0.3)), key


@pytest.mark.parametrize("batched,shown", [(False, [("interpolating", 5)]), (True, [("interpolating", 3)])])
def test_alphas_are_shown_with_a_progress_bar(pair, data, monkeypatch, batched, shown):
    from transferscope.analysis import interpolation

    a, b = pair
    test, _ = data
    calls = []

    def recording_progress(items, description, *, total=None):
        calls.append((description, total))
        yield from items

    monkeypatch.setattr(interpolation, "progress", recording_progress)
    frame = interpolate(a, b, test, alphas=np.linspace(0, 1, 5), bn="follow", batched=batched, vmap_chunk=2)
    assert calls == shown  # one bar over the α (batched: over the chunks of 2 α)
    monkeypatch.undo()
    assert frame.equals(interpolate(a, b, test, alphas=np.linspace(0, 1, 5), bn="follow", batched=batched,
                                    vmap_chunk=2))


def test_columns_and_resolved_modes(pair, data):
    a, b = pair
    test, _ = data
    frame = interpolate(a, b, test, alphas=np.linspace(0, 1, 3), bn="follow", split="val")
    assert list(frame) == ["alpha", "split", "loss", "score", "metric", "n_examples", "bn", "recalibration_batches",
                           "batched"]
    assert set(frame["metric"]) == {"accuracy"}
    assert set(frame["split"]) == {"val"} and not frame["batched"].any()  # "auto" is off on CPU
    a_lin, b_lin = _linear_pair(3)
    assert set(interpolate(a_lin, b_lin, [(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))], alphas=[0.5])["bn"]) == {"follow"}


def test_clear_errors(pair, data):
    a, b = pair
    test, train = data
    with pytest.raises(ValueError, match="recalibration_loader"):
        interpolate(a, b, test, alphas=[0.5], bn="recalibrate")
    with pytest.raises(ValueError, match="batched=True"):
        interpolate(a, b, test, alphas=[0.5], recalibration_loader=train, batched=True)
    with pytest.raises(ValueError, match="unknown bn mode"):
        interpolate(a, b, test, alphas=[0.5], bn="average")
    for old_name in ("none", "interpolate", "keep_a"):
        with pytest.raises(ValueError, match=f"unknown bn mode '{old_name}'.*'follow'"):
            interpolate(a, b, test, alphas=[0.5], bn=old_name)
    with pytest.raises(TypeError, match="positional"):  # settings are keyword-only
        interpolate(a, b, test, [0.5])
    with pytest.raises(ValueError, match="alphas is empty"):
        interpolate(a, b, test, alphas=[], bn="follow")
    with pytest.raises(ValueError, match="finite"):
        interpolate(a, b, test, alphas=[0.0, float("nan")], bn="follow")
    with pytest.raises(ValueError, match="recalibration_batches"):
        interpolate(a, b, test, alphas=[0.5], recalibration_loader=train, recalibration_batches=0)
    a_lin, b_lin = _linear_pair(3)
    with pytest.raises(ValueError, match="no BatchNorm.*bn='auto' or 'follow'"):
        interpolate(a_lin, b_lin, [(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))], alphas=[0.5], bn="keep")


def _curve(alpha: np.ndarray, loss: np.ndarray, **score) -> pd.DataFrame:
    """A curve; ``accuracy=`` or ``auc=`` give its ``score`` and ``metric`` columns."""
    frame = pd.DataFrame({"alpha": alpha, "loss": loss})
    for metric, values in score.items():
        frame = frame.assign(score=values, metric=metric)
    return frame


def test_barrier_of_a_known_bump():
    alpha = np.linspace(-0.5, 1.5, 41)  # contains 0, 0.5 and 1
    line = 2.0 + 0.5 * alpha
    loss = line + 0.3 * np.sin(np.pi * alpha)
    loss[alpha > 1] = 50.0  # extrapolation is ignored
    accuracy = 0.8 - 0.1 * alpha - 0.12 * np.sin(np.pi * np.clip(alpha, 0, 1))
    result = barrier(_curve(alpha, loss, accuracy=accuracy))
    assert result["loss_barrier"] == pytest.approx(0.3, abs=1e-12)
    assert result["loss_barrier_alpha"] == pytest.approx(0.5)
    assert result["error_barrier"] == pytest.approx(0.12, abs=1e-12)
    assert result["error_barrier_alpha"] == pytest.approx(0.5) and result["metric"] == "accuracy"
    assert barrier(_curve(alpha, loss, accuracy=accuracy), "loss") == {
        "loss_barrier": result["loss_barrier"], "loss_barrier_alpha": result["loss_barrier_alpha"]}


def test_barrier_matches_numpy_on_random_curve_and_auc():
    rng = np.random.default_rng(0)
    alpha = np.linspace(0, 1, 11)
    loss, auc = rng.uniform(0.5, 2.0, 11), rng.uniform(0.6, 0.9, 11)
    shuffled = rng.permutation(11)  # row order does not matter
    result = barrier(_curve(alpha[shuffled], loss[shuffled], auc=auc[shuffled]))
    excess = loss - ((1 - alpha) * loss[0] + alpha * loss[-1])
    error = 1 - auc
    error_excess = error - ((1 - alpha) * error[0] + alpha * error[-1])
    assert result["loss_barrier"] == pytest.approx(excess.max())
    assert result["loss_barrier_alpha"] == pytest.approx(alpha[excess.argmax()])
    assert result["error_barrier"] == pytest.approx(error_excess.max()) and result["metric"] == "auc"
    flat = barrier(_curve(alpha, 1.0 - 0.5 * alpha, accuracy=0.5 + 0.2 * alpha))  # linear: no barrier
    assert flat["loss_barrier"] == pytest.approx(0.0, abs=1e-12)
    assert flat["error_barrier"] == pytest.approx(0.0, abs=1e-12)


def test_barrier_errors():
    alpha = np.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="endpoints"):
        barrier(_curve(alpha[1:], np.ones(4), accuracy=np.ones(4)))
    with pytest.raises(ValueError, match="one row per"):
        barrier(_curve(np.r_[alpha, alpha], np.ones(10), accuracy=np.ones(10)))
    with pytest.raises(ValueError, match="unknown barrier quantity"):
        barrier(_curve(alpha, np.ones(5), accuracy=np.ones(5)), "accuracy")
    with pytest.raises(ValueError, match=r"error barrier needs the columns \['score', 'metric'\].*interpolate\(\)"):
        barrier(_curve(alpha, np.ones(5)))
    with pytest.raises(ValueError, match=r"loss barrier needs the columns \['loss'\]"):
        barrier(_curve(alpha, np.ones(5), accuracy=np.ones(5)).drop(columns="loss"), "loss")
    with pytest.raises(ValueError, match=r"needs the columns \['alpha'\]"):
        barrier(pd.DataFrame({"loss": [1.0]}))
