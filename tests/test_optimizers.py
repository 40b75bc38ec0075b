"""Optimizers and loss settings of a training run (issue 10): AdamW on the same parameter
groups as SGD, with decoupled weight decay and none on biases and norm scales; label
smoothing in the training loss only; a BatchNorm momentum override; resume stays
bit-identical; the study recipe takes the keys; defaults keep every run and job id."""

from __future__ import annotations

import copy
import io
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from transferscope import progress as progress_module
from transferscope.analysis.basins import basin
from transferscope.analysis.mistake_overlap import mistakes
from transferscope.analysis.module_criticality import criticality
from transferscope.analysis.rewinding import rewind
from transferscope.config import TrainConfig
from transferscope.evaluation import loss_fn
from transferscope.models import build_model
from transferscope.study import build_plan, load_study
from transferscope.train.run_dir import TrainingRun
from transferscope.train.trainer import Trainer, make_optimizer, run_identity, set_bn_momentum

ADAMW = dict(optimizer="adamw", lr=1e-2, weight_decay=0.05, bias_lr_factor=0.1, adamw_betas=(0.8, 0.99),
             adamw_eps=1e-6)


def train(config: TrainConfig, out_dir: Path, domain, **kwargs) -> TrainingRun:
    return Trainer(config, out_dir, progress=False, domain=domain).run(**kwargs)


class Net(nn.Module):
    """A conv, a BatchNorm, a Fixup-style scalar and a linear head."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, dtype=dtype)
        self.bn = nn.BatchNorm2d(4, dtype=dtype)
        self.scale = nn.Parameter(torch.ones(1, dtype=dtype))
        self.fc = nn.Linear(4, 3, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)) * self.scale)


def backward(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    dtype = model.fc.weight.dtype
    x = torch.randn(6, 3, 8, 8, generator=generator, dtype=dtype)
    y = torch.randint(0, 3, (6,), generator=generator)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()


# ---------------------------------------------------------------- AdamW


def test_adamw_groups_and_steps_match_torch_adamw_built_by_hand():
    config = TrainConfig(**ADAMW)
    model, reference = Net(), Net()
    optimizer = make_optimizer(config, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    settings = {name: (group["lr"], group["weight_decay"]) for group in optimizer.param_groups
                for name, parameter in model.named_parameters() if any(parameter is p for p in group["params"])}
    assert settings == {"conv.weight": (1e-2, 0.05), "fc.weight": (1e-2, 0.05),  # weights: lr, decayed
                        "bn.weight": (1e-2, 0.0),  # a norm scale: lr, not decayed
                        "conv.bias": (1e-3, 0.0), "bn.bias": (1e-3, 0.0), "fc.bias": (1e-3, 0.0),  # biases, scales:
                        "scale": (1e-3, 0.0)}  # lr * bias_lr_factor, not decayed
    params = dict(reference.named_parameters())
    by_hand = torch.optim.AdamW(
        [{"params": [params["conv.weight"], params["fc.weight"]], "lr": 1e-2, "weight_decay": 0.05},
         {"params": [params["bn.weight"]], "lr": 1e-2, "weight_decay": 0.0},
         {"params": [params[name] for name in ("conv.bias", "bn.bias", "scale", "fc.bias")], "lr": 1e-3,
          "weight_decay": 0.0}], betas=(0.8, 0.99), eps=1e-6)
    for step in range(3):
        for net, opt in ((model, optimizer), (reference, by_hand)):
            backward(net, step)
            opt.step()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, params[name]), name


def test_one_adamw_update_equals_the_formula_in_float64():
    """θ ← θ − lr·λ·θ − lr·m̂/(√v̂ + ε), m̂ = g, v̂ = g² after one step (Loshchilov & Hutter 2019)."""
    config = TrainConfig(**ADAMW)
    model = Net(torch.float64)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = make_optimizer(config, model)
    backward(model, 0)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    (beta1, beta2), eps = config.adamw_betas, config.adamw_eps
    for name, parameter in model.named_parameters():
        lr = 1e-2 if name.endswith("weight") else 1e-3
        decay = 0.05 if parameter.ndim > 1 else 0.0
        m_hat = (1 - beta1) * grads[name] / (1 - beta1)
        v_hat = (1 - beta2) * grads[name] ** 2 / (1 - beta2)
        expected = before[name] * (1 - lr * decay) - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(parameter.detach(), expected, rtol=1e-12, atol=1e-15)


def test_sgd_stays_the_default_optimizer():
    optimizer = make_optimizer(TrainConfig(), Net())
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(group["weight_decay"] == 1e-4 and group["momentum"] == 0.9 for group in optimizer.param_groups)


def test_timm_no_weight_decay_names_are_not_decayed():
    class WithToken(Net):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed"}

    model = WithToken()
    optimizer = make_optimizer(TrainConfig(**ADAMW), model)
    (group,) = [group for group in optimizer.param_groups if any(p is model.pos_embed for p in group["params"])]
    assert group["weight_decay"] == 0.0 and group["lr"] == 1e-2


def test_a_resumed_adamw_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, toy_domain, toy_train_config):
    config = toy_train_config(epochs=3, mixup_alpha=0.4, label_smoothing=0.1, bn_momentum=0.2, **ADAMW)

    def stop_after_first(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("stop after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", toy_domain, on_epoch_end=stop_after_first)
    finished: list[int] = []
    resumed = train(config, tmp_path / "resumed", toy_domain, on_epoch_end=finished.append)
    assert finished == [2, 3]
    straight = train(config, tmp_path / "straight", toy_domain)
    for epoch in (0, 1, 2, 3, "best"):
        a, b = resumed.checkpoint(epoch), straight.checkpoint(epoch)
        assert all(torch.equal(a[key], b[key]) for key in a), epoch
    assert resumed.metrics.equals(straight.metrics.assign(images_per_second=resumed.metrics["images_per_second"],
                                                          train_seconds=resumed.metrics["train_seconds"]))
    sgd = train(toy_train_config(epochs=1), tmp_path / "sgd", toy_domain).checkpoint(1)
    assert not torch.equal(sgd["fc.weight"], straight.checkpoint(1)["fc.weight"])  # the optimizer took effect


# ---------------------------------------------------------------- label smoothing


def test_label_smoothing_of_loss_fn_matches_the_formulas():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    classes = torch.tensor([0, 3, 1, 1, 2])
    smoothed = 0.8 * F.one_hot(classes, 4) + 0.2 / 4  # (1 − ε)·onehot + ε/K
    expected = -(smoothed * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss_fn(logits, classes, label_smoothing=0.2), expected)
    labels = (torch.rand(5, 4, generator=generator) < 0.5).double()
    target = labels * 0.8 + 0.1  # y(1 − ε) + ε/2
    expected = -(target * logits.sigmoid().log() + (1 - target) * (1 - logits.sigmoid()).log()).mean()
    torch.testing.assert_close(loss_fn(logits, labels, label_smoothing=0.2), expected)
    assert torch.equal(loss_fn(logits, labels, label_smoothing=0.0), loss_fn(logits, labels))


def test_the_training_loss_is_smoothed_and_the_evaluation_loss_is_not(tmp_path, toy_domain, toy_train_config):
    """One batch per epoch: epoch 1's train_loss is the loss of the initial weights on it."""
    config = toy_train_config(epochs=1, batch_size=len(toy_domain.train.targets), label_smoothing=0.3)
    trainer = Trainer(config, tmp_path / "smoothed", progress=False, domain=toy_domain)
    trainer.train_loader.set_epoch(1)
    ((x, y),) = list(trainer.train_loader)
    run = trainer.run()
    model = build_model("small_resnet", 3, width=8)
    model.load_state_dict(run.checkpoint(0))
    with torch.no_grad():
        log_probs = model.train()(x).double().log_softmax(1)
    smoothed = -((0.7 * F.one_hot(y, 3) + 0.3 / 3) * log_probs).sum(1).mean()
    assert run.metrics["train_loss"][1] == pytest.approx(float(smoothed), rel=1e-5)
    plain = train(config.model_copy(update={"label_smoothing": 0.0}), tmp_path / "plain", toy_domain)
    assert plain.metrics["train_loss"][1] == pytest.approx(float(-log_probs[torch.arange(len(y)), y].mean()), rel=1e-5)
    assert run.metrics["test_loss"][0] == plain.metrics["test_loss"][0]  # the same model, the same unsmoothed loss
    test = [(x, y) for x, y in trainer.test_batches]
    with torch.no_grad():
        model.eval()
        model.load_state_dict(run.checkpoint(1))
        logits = torch.cat([model(x) for x, _ in test]).double()
    unsmoothed = F.cross_entropy(logits, torch.cat([y for _, y in test]))
    assert run.metrics["test_loss"][1] == pytest.approx(float(unsmoothed), rel=1e-5)


# ---------------------------------------------------------------- BatchNorm momentum


def test_bn_momentum_is_set_on_every_batchnorm():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Sequential(nn.BatchNorm2d(3, momentum=0.5)), nn.BatchNorm3d(3))
    set_bn_momentum(model, 0.01)
    assert [module.momentum for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)] \
        == [0.01, 0.01, 0.01]


def test_bn_momentum_zero_freezes_the_running_statistics_while_training(tmp_path, toy_domain, toy_train_config):
    run = train(toy_train_config(epochs=1, bn_momentum=0.0), tmp_path / "frozen", toy_domain)
    start, end = run.checkpoint(0), run.checkpoint(1)
    statistics = [key for key in start if key.endswith(("running_mean", "running_var"))]
    assert len(statistics) > 4 and all(torch.equal(start[key], end[key]) for key in statistics)
    assert not torch.equal(start["fc.weight"], end["fc.weight"])
    default = train(toy_train_config(epochs=1), tmp_path / "default", toy_domain).checkpoint(1)
    assert not all(torch.equal(start[key], default[key]) for key in statistics)


def test_bn_momentum_on_a_model_without_batchnorm_is_an_error(tmp_path, toy_domain, toy_train_config):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    config = toy_train_config(epochs=1, bn_momentum=0.1)
    with pytest.raises(ValueError, match="bn_momentum is 0.1 but the model has no BatchNorm layer; remove bn_momentum"):
        Trainer(config, tmp_path, progress=False, domain=toy_domain, model=model).run()


# ---------------------------------------------------------------- settings, ids

STUDY = {
    "name": "optimizers",
    "model": {"arch": "small_resnet", "width": 4},
    "source": {"data": {"kind": "synthetic", "name": "source", "image_size": 16, "n_train": 64, "n_test": 32,
                        "num_classes": 4}, "recipe": {"epochs": 1, "lr": 0.05}},
    "targets": [{"label": "real", "data": {"kind": "synthetic", "name": "real", "image_size": 16, "n_train": 32,
                                           "n_test": 32}}],
    "finetune": {"epochs": 1, "lr": 0.05}, "scratch": {"epochs": 1, "lr": 0.05}, "seeds": [0],
    "analyses": {name: {"enabled": False} for name in
                 ("cka", "mistakes", "interpolation", "basin", "rewind", "criticality", "spectrum")},
}
# computed before optimizer, adamw_betas, adamw_eps, label_smoothing and bn_momentum existed
PINNED_JOB_IDS = {"P (source)": "pretrain-d8e5d391992d", "P-T real s0": "finetune-0c9d9358ce82",
                  "RI-T real s0": "finetune-bb2fd4630ef2", "distance real": "distance-c62bc61f532c"}
PINNED_RUN_IDENTITIES = {"default": "96c3346c29af", "changed": "7143cf68cb30"}
DEFAULTS = {"optimizer": "sgd", "adamw_betas": [0.9, 0.999], "adamw_eps": 1e-8, "label_smoothing": 0.0,
            "bn_momentum": None, "test_every": 1}


def plan_ids(tmp_path: Path, finetune: dict) -> dict[str, str]:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "finetune": {**STUDY["finetune"], **finetune}}))
    return {job.label: job.id for job in build_plan(load_study(path))}


def test_default_settings_keep_job_ids_and_run_identities(tmp_path):
    assert plan_ids(tmp_path, {}) == PINNED_JOB_IDS
    assert plan_ids(tmp_path, DEFAULTS) == PINNED_JOB_IDS  # the defaults spelled out
    assert run_identity(TrainConfig()) == PINNED_RUN_IDENTITIES["default"]
    assert run_identity(TrainConfig(**DEFAULTS)) == PINNED_RUN_IDENTITIES["default"]
    assert run_identity(TrainConfig(lr=0.05, epochs=2, mixup_alpha=0.2)) == PINNED_RUN_IDENTITIES["changed"]
    for key, value in {"optimizer": "adamw", "adamw_betas": (0.9, 0.95), "adamw_eps": 1e-6, "label_smoothing": 0.1,
                       "bn_momentum": 0.01, "test_every": 2}.items():
        assert run_identity(TrainConfig(**{key: value})) != PINNED_RUN_IDENTITIES["default"], key


def test_the_study_recipe_takes_the_new_keys(tmp_path):
    settings = {"optimizer": "adamw", "adamw_betas": [0.9, 0.95], "adamw_eps": 1e-6, "label_smoothing": 0.1,
                "bn_momentum": 0.01}
    ids = plan_ids(tmp_path, settings)
    assert {key for key in ids if ids[key] != PINNED_JOB_IDS[key]} == {"P-T real s0", "distance real"}  # and its user
    job = next(job for job in build_plan(load_study(tmp_path / "study.yaml")) if job.id == ids["P-T real s0"])
    config = TrainConfig.model_validate(job.config["train"])
    assert (config.optimizer, config.adamw_betas, config.adamw_eps, config.label_smoothing, config.bn_momentum) \
        == ("adamw", (0.9, 0.95), 1e-6, 0.1, 0.01)


@pytest.mark.parametrize("key, value, message", [
    ("optimizer", "adam", "finetune.optimizer: invalid value 'adam'; input should be 'sgd' or 'adamw'"),
    ("label_smoothing", 1.0, "finetune.label_smoothing: Input should be less than 1"),
    ("label_smoothing", -0.1, "finetune.label_smoothing: Input should be greater than or equal to 0"),
    ("bn_momentum", 1.5, "finetune.bn_momentum: Input should be less than or equal to 1"),
    ("adamw_betas", [0.9, 1.0], "finetune.adamw_betas.1: Input should be less than 1"),
    ("adamw_eps", 0, "finetune.adamw_eps: Input should be greater than 0"),
])
def test_the_study_recipe_rejects_bad_values_naming_the_key(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=f"invalid study file .*\n  {message}"):
        plan_ids(tmp_path, {key: value})


# ---------------------------------------------------------------- progress bars


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _mlp_pair():
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    final = copy.deepcopy(initial)
    with torch.no_grad():
        for parameter in final.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 12, generator=generator), torch.randint(0, 3, (8,), generator=generator))]
    return final, initial, batches


@pytest.mark.parametrize("analysis, label", [
    (lambda final, initial, batches: rewind(final, initial, batches), "rewinding modules"),
    (lambda final, initial, batches: criticality(final, initial, batches, alphas=[1.0], sigmas=[0.1], samples=1),
     "criticality of modules"),
    (lambda final, initial, batches: mistakes({"a": final, "b": initial}, batches, n_bootstrap=10),
     "mistakes: bootstrap per pair"),
    (lambda final, initial, batches: basin(final, initial, batches, sigmas=[0.01], n_noise=1, n_segment=2),
     "basin: walls per σ"),
])
def test_long_analyses_show_a_bar_on_a_terminal(monkeypatch, analysis, label):
    final, initial, batches = _mlp_pair()
    monkeypatch.setattr(progress_module, "progress_enabled", lambda: True)
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    shown = analysis(final, initial, batches)
    monkeypatch.setattr(progress_module, "progress_enabled", lambda: False)
    assert label in sys.stderr.getvalue()
    assert analysis(final, initial, batches).equals(shown)  # the bar changes no number
