"""The trainer on the toy domains: the metrics table, checkpoints (epoch 0, every k,
best), lr schedules, bias lr, mixup, augmentation off for shuffled data, the P-T
initialisation, exact resumption (in process and after a SIGKILL), failures and bad
inputs, multi-label targets."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import Dataset

from transferscope.config import ScheduleConfig, TrainConfig, apply_overrides
from transferscope.data.domain import Domain
from transferscope.data.shuffle import BlockShuffle
from transferscope.evaluation import evaluate
from transferscope.io import read_json
from transferscope.models.registry import build_model
from transferscope.models.weights import load_into
from transferscope.train.run_dir import TrainingRun
from transferscope.train.trainer import Trainer, TrainingFailed, build_run_model, parameter_groups

COLUMNS = {"epoch", "train_loss", "train_running_accuracy", "lr", "images_per_second", "train_seconds",
           "test_loss", "test_accuracy", "train_clean_accuracy"}
DETERMINISTIC = ["epoch", "train_loss", "train_running_accuracy", "lr", "test_loss", "test_accuracy",
                 "train_clean_accuracy"]
# every source of randomness on: data order, crop + flip, mixup
RESUMABLE = dict(epochs=4, augment=True, mixup_alpha=0.4)


def train(config: TrainConfig, out_dir: Path, domain: Domain, **kwargs) -> TrainingRun:
    return Trainer(config, out_dir, progress=False, domain=domain).run(**kwargs)


def assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, toy_domain, toy_train_config) -> TrainingRun:
    """An uninterrupted 4-epoch run, checkpoint every epoch."""
    return train(toy_train_config(**RESUMABLE), tmp_path_factory.mktemp("reference"), toy_domain)


# ---------------------------------------------------------------- the table and checkpoints


def test_metrics_table(reference_run, toy_domain):
    table = reference_run.metrics
    assert set(table.columns) == COLUMNS
    assert table["epoch"].tolist() == [0, 1, 2, 3, 4]
    first = table.iloc[0]
    assert math.isnan(first["train_loss"]) and math.isnan(first["images_per_second"]) and first["train_seconds"] == 0
    assert first["lr"] == 0.05
    trained = table.iloc[1:]
    assert np.isfinite(trained[["train_loss", "train_running_accuracy", "test_loss"]].to_numpy()).all()
    assert (trained["train_seconds"] > 0).all()
    seen = trained["images_per_second"] * trained["train_seconds"]
    np.testing.assert_allclose(seen, 128)  # 4 full batches of 32 per epoch
    assert table["test_accuracy"].iloc[-1] > 0.6  # chance is 1/3
    assert pd.read_csv(reference_run.path / "metrics.csv")["epoch"].tolist() == [0, 1, 2, 3, 4]
    # the table tells the truth about the saved weights: re-evaluate epochs 0 and 4
    config = reference_run.config
    for epoch in (0, 4):
        model = build_model("small_resnet", 3, width=8)
        load_into(model, reference_run.checkpoint(epoch))
        test = evaluate(model, toy_domain.loader("test", config.eval_batch_size))
        clean = evaluate(model, toy_domain.loader("train", config.eval_batch_size, limit=config.clean_train_examples))
        row = table.iloc[epoch]
        assert row["test_loss"] == pytest.approx(test["loss"], rel=1e-5)
        assert row["test_accuracy"] == test["accuracy"]
        assert row["train_clean_accuracy"] == clean["accuracy"]
    status = reference_run.status
    assert status["state"] == "complete" and status["epoch"] == 4
    assert status["final"]["test_accuracy"] == table["test_accuracy"].iloc[-1]


def test_epoch_zero_is_the_initial_model(reference_run, toy_domain):
    assert reference_run.epochs() == [0, 1, 2, 3, 4]
    initial = build_run_model(reference_run.config, toy_domain).state_dict()
    assert_same_weights(reference_run.checkpoint(0), initial)
    assert_same_weights(reference_run.checkpoint("init"), initial)
    assert differs(reference_run.checkpoint(1), initial)


def test_best_checkpoint_is_the_best_test_epoch(reference_run):
    table = reference_run.metrics
    best_epoch = int(table.loc[table["test_accuracy"].idxmax(), "epoch"])  # first epoch reaching the max
    assert reference_run.best_epoch == best_epoch
    assert reference_run.status["best_score"] == table["test_accuracy"].max()
    assert_same_weights(reference_run.checkpoint("best"), reference_run.checkpoint(best_epoch))
    assert_same_weights(reference_run.checkpoint("final"), reference_run.checkpoint(4))


def test_test_every_skips_test_epochs_and_changes_nothing_else(tmp_path, reference_run, toy_domain,
                                                              toy_train_config):
    """test_every=3 over 4 epochs evaluates the test split at epochs 0, 3 and 4 only: the
    other rows' test columns are NaN, the evaluated ones and every other column equal the
    run that tests each epoch, the weights are the same, and best is the best evaluated."""
    run = train(toy_train_config(**RESUMABLE, test_every=3), tmp_path, toy_domain)
    table, reference = run.metrics, reference_run.metrics
    tested = table["epoch"].isin([0, 3, 4])
    assert table.loc[~tested, ["test_loss", "test_accuracy"]].isna().all().all()
    pd.testing.assert_frame_equal(table.loc[tested, DETERMINISTIC], reference.loc[tested, DETERMINISTIC])
    others = [column for column in DETERMINISTIC if not column.startswith("test_")]
    pd.testing.assert_frame_equal(table[others], reference[others])
    assert_same_weights(run.checkpoint("final"), reference_run.checkpoint("final"))
    best = int(table.loc[table["test_accuracy"].idxmax(), "epoch"])
    assert run.best_epoch == best in (0, 3, 4)
    assert_same_weights(run.checkpoint("best"), reference_run.checkpoint(best))


# ---------------------------------------------------------------- optimisation settings


@pytest.mark.parametrize("schedule, epochs, every, saved, factors", [
    (ScheduleConfig(kind="constant"), 3, 5, [0, 3], [1, 1, 1]),
    (ScheduleConfig(kind="step", step_size=2, gamma=0.5), 5, 2, [0, 2, 4, 5], [1, 1, 0.5, 0.5, 0.25]),
    (ScheduleConfig(kind="multistep", milestones=(1, 3), gamma=0.1), 4, 3, [0, 3, 4], [1, 0.1, 0.1, 0.01]),
    (ScheduleConfig(kind="cosine"), 4, 1, [0, 1, 2, 3, 4], [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
], ids=["constant", "step", "multistep", "cosine"])
def test_schedules_and_checkpoint_every(tmp_path, toy_domain_factory, toy_train_config, schedule, epochs, every, saved,
                                        factors):
    config = toy_train_config(schedule=schedule, epochs=epochs, checkpoint_every=every, lr=0.04)
    run = train(config, tmp_path, toy_domain_factory(n_train=64, n_test=32))
    np.testing.assert_allclose(run.metrics["lr"], [0.04] + [0.04 * f for f in factors], rtol=1e-12)
    assert run.epochs() == saved
    assert (run.path / "checkpoints" / "best.safetensors").is_file()


def test_bias_lr_factor_scales_bias_updates(tmp_path, toy_domain_factory, toy_train_config):
    domain = toy_domain_factory(n_train=32, n_test=32)  # one step: the same gradient in both runs
    runs = {factor: train(toy_train_config(epochs=1, bias_lr_factor=factor), tmp_path / str(factor), domain)
            for factor in (1.0, 0.1)}
    start, full, low = (runs[1.0].checkpoint(0), runs[1.0].checkpoint(1), runs[0.1].checkpoint(1))
    assert_same_weights(runs[0.1].checkpoint(0), start)
    biases = [k for k in start if k.endswith(".bias")]
    assert "fc.bias" in biases and "conv1.1.bias" in biases
    for key in start:
        if key in biases:
            torch.testing.assert_close(low[key] - start[key], 0.1 * (full[key] - start[key]), rtol=1e-4, atol=1e-7)
        elif start[key].is_floating_point() and "running" not in key:
            assert torch.equal(low[key], full[key]), key
    groups = torch.load(runs[0.1].path / "resume.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.05, pytest.approx(0.005)]


def test_parameter_groups_follow_fixup_names():
    model = torch.nn.Module()
    model.conv = torch.nn.Conv2d(1, 1, 1)
    model.scale = torch.nn.Parameter(torch.ones(1))
    model.bias1a = torch.nn.Parameter(torch.zeros(1))
    normal, low = parameter_groups(model, 0.1, 0.1)
    assert normal["lr"] == 0.1 and low["lr"] == pytest.approx(0.01)
    assert [id(p) for p in normal["params"]] == [id(model.conv.weight)]
    assert {id(p) for p in low["params"]} == {id(model.conv.bias), id(model.scale), id(model.bias1a)}


def test_mixup_changes_training(tmp_path, reference_run, toy_domain, toy_train_config):
    plain = train(toy_train_config(**{**RESUMABLE, "mixup_alpha": 0.0, "epochs": 1}), tmp_path, toy_domain)
    assert_same_weights(plain.checkpoint(0), reference_run.checkpoint(0))
    assert differs(plain.checkpoint(1), reference_run.checkpoint(1))  # the reference run has mixup on


def test_augmentation_is_off_for_shuffled_data(toy_domain, toy_train_config):
    mean = torch.tensor(toy_domain.mean).view(1, -1, 1, 1)
    std = torch.tensor(toy_domain.std).view(1, -1, 1, 1)
    normalised = (toy_domain.train.images.float() / 255 - mean) / std
    for block_size, shuffled in ((4, True), ("*", True), (16, False), (None, False)):
        trainer = Trainer(toy_train_config(augment=True, data={"block_size": block_size}), "unused", progress=False,
                          domain=toy_domain)
        loader = trainer.train_loader
        assert loader.augment == ("none" if shuffled else "pad_crop")
        assert (loader.block_shuffle is not None) is shuffled
        reference = BlockShuffle(block_size, seed=0)(normalised) if shuffled else normalised
        loader.set_epoch(1)
        x = torch.cat([batch for batch, _ in loader])
        # an exact copy of some (shuffled) training image for every input iff nothing augmented it
        exact = (x.flatten(1)[:, None, :] == reference.flatten(1)[None, :, :]).all(2).any(1)
        assert bool(exact.all()) is shuffled
    assert not Path("unused").exists()


def test_pretrained_init_keeps_all_but_the_head(tmp_path, toy_domain, toy_domain_factory, toy_train_config):
    source = train(toy_train_config(epochs=1, seed=5), tmp_path / "P", toy_domain)
    pretrained = source.checkpoint("final")
    target = toy_domain_factory(num_classes=2, seed=3)
    config = toy_train_config(epochs=1, init=str(source.path / "checkpoints" / "epoch_001.safetensors"))
    run = train(config, tmp_path / "P-T", target)
    start = run.checkpoint(0)
    fresh = build_run_model(config.model_copy(update={"init": None}), target).state_dict()
    for key, value in start.items():
        assert torch.equal(value, fresh[key] if key.startswith("fc.") else pretrained[key]), key
    assert start["fc.weight"].shape == (2, 64)
    assert differs(run.checkpoint(1), start)


# ---------------------------------------------------------------- resuming


def test_resume_after_an_exception_equals_an_uninterrupted_run(tmp_path, reference_run, toy_domain,
                                                               toy_train_config):
    config = toy_train_config(**RESUMABLE)

    def crash(epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt("stop after epoch 2")

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, toy_domain, on_epoch_end=crash)
    assert read_json(tmp_path / "status.json")["state"] == "running"
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["epoch"] == 2
    finished: list[int] = []
    run = train(config, tmp_path, toy_domain, on_epoch_end=finished.append)
    assert finished == [3, 4]
    assert_same_weights(run.checkpoint("final"), reference_run.checkpoint("final"))
    assert_same_weights(run.checkpoint("best"), reference_run.checkpoint("best"))
    pd.testing.assert_frame_equal(run.metrics[DETERMINISTIC], reference_run.metrics[DETERMINISTIC])
    assert run.status["best_epoch"] == reference_run.status["best_epoch"]


TRAIN_SCRIPT = '''
"""Train the toy run of argv: domain.pt config.json out_dir (one torch thread)."""
import json
import sys

import torch

from transferscope.config import TrainConfig
from transferscope.data.domain import Domain
from transferscope.data.tensors import ImageSet
from transferscope.train.trainer import Trainer

torch.set_num_threads(1)
domain_path, config_path, out_dir = sys.argv[1:4]
saved = torch.load(domain_path, weights_only=True)
splits = {name: ImageSet(saved[name + "_images"], saved[name + "_targets"], saved["classes"])
          for name in ("train", "test")}
domain = Domain("toy", splits["train"], splits["test"], saved["classes"], False, saved["mean"], saved["std"])
config = TrainConfig.model_validate(json.loads(open(config_path).read()))
Trainer(config, out_dir, progress=False, domain=domain).run()
'''


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference_run, toy_domain, toy_train_config):
    config = toy_train_config(**RESUMABLE)
    (tmp_path / "train_toy.py").write_text(TRAIN_SCRIPT)
    torch.save({"train_images": toy_domain.train.images, "train_targets": toy_domain.train.targets,
                "test_images": toy_domain.test.images, "test_targets": toy_domain.test.targets,
                "classes": toy_domain.classes, "mean": toy_domain.mean, "std": toy_domain.std},
               tmp_path / "domain.pt")
    (tmp_path / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    out = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen([sys.executable, str(tmp_path / "train_toy.py"), str(tmp_path / "domain.pt"),
                                    str(tmp_path / "config.json"), str(out)], stderr=stderr)
        deadline = time.monotonic() + 120
        while not (out / "resume.pt").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"no resume.pt to kill at: {(tmp_path / 'stderr.txt').read_text()}")
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    assert read_json(out / "status.json")["state"] == "running"
    assert torch.load(out / "resume.pt", weights_only=True)["epoch"] < 4
    run = train(config, out, toy_domain)
    assert run.complete
    assert_same_weights(run.checkpoint("final"), reference_run.checkpoint("final"))
    pd.testing.assert_frame_equal(run.metrics[DETERMINISTIC], reference_run.metrics[DETERMINISTIC])


def test_rerun_of_a_complete_run_returns_at_once(reference_run, toy_domain):
    files = sorted(p for p in reference_run.path.rglob("*") if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]
    called: list[int] = []
    run = Trainer(reference_run.config, reference_run.path, progress=False, domain=toy_domain).run(
        on_epoch_end=called.append)
    assert run.complete and called == []
    assert sorted(p for p in reference_run.path.rglob("*") if p.is_file()) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps


def test_another_config_in_the_same_folder_is_refused(reference_run, toy_domain, toy_train_config):
    before = (reference_run.path / "config.json").read_text()
    other = toy_train_config(**{**RESUMABLE, "lr": 0.01})
    with pytest.raises(ValueError, match="holds a run with a different config; use another out_dir"):
        Trainer(other, reference_run.path, progress=False, domain=toy_domain).run()
    assert (reference_run.path / "config.json").read_text() == before


# ---------------------------------------------------------------- failures and bad inputs


class ImagesWithNaN(Dataset):
    """File-backed style dataset whose float images carry a NaN pixel."""

    def __init__(self, domain: Domain) -> None:
        self.images, self.targets = domain.train.images, domain.train.targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index].float()
        image[0, 0, 0] = float("nan")
        return image, self.targets[index]


@pytest.mark.parametrize("cause", ["nan_data", "huge_lr"])
def test_non_finite_loss_stops_the_run(tmp_path, toy_domain, toy_train_config, cause):
    if cause == "nan_data":
        domain = Domain("nan", ImagesWithNaN(toy_domain), toy_domain.test, toy_domain.classes, False,
                        toy_domain.mean, toy_domain.std)
        config = toy_train_config(epochs=2)
    else:
        domain, config = toy_domain, toy_train_config(epochs=3, lr=1e30)
    with pytest.raises(TrainingFailed, match=r"loss became (nan|inf) at epoch \d, step \d+ .*lower the learning rate"
                                             r".*check the data for NaN/inf") as failure:
        train(config, tmp_path, domain)
    if cause == "nan_data":
        assert "at epoch 1, step 0" in str(failure.value)
    status = read_json(tmp_path / "status.json")
    assert status["state"] == "failed" and status["error"] == str(failure.value)
    assert not TrainingRun(tmp_path).complete


def test_bad_inputs_get_clear_errors(toy_domain, toy_train_config):
    with pytest.raises(ValueError, match="batch_size 500 is larger than the 128 training examples; lower batch_size"):
        Trainer(toy_train_config(batch_size=500), "unused", progress=False, domain=toy_domain)
    with pytest.raises(ValidationError, match="block_size 5 does not divide image_size 16"):
        toy_train_config(data={"block_size": 5})
    with pytest.raises(ValidationError, match="block_size must be a positive int or '\\*'"):
        toy_train_config(data={"block_size": 0})
    with pytest.raises(ValidationError, match=r"'multistep' needs milestones, e.g. \[30, 60, 90\]"):
        toy_train_config(schedule=ScheduleConfig(kind="multistep"))
    with pytest.raises(ValueError, match="bf16 autocast is for CUDA devices; set bf16=false on CPU"):
        Trainer(toy_train_config(bf16=True), "unused", progress=False, domain=toy_domain)
    with pytest.raises(ValidationError, match="learning_rate"):
        TrainConfig(learning_rate=0.1)  # unknown keys are named
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available; use device='cpu' or 'auto'"):
            Trainer(toy_train_config(device="cuda"), "unused", progress=False, domain=toy_domain)
    assert not Path("unused").exists()


def test_overrides_and_digest():
    settings = {"epochs": 3, "data": {"image_size": 16}}
    overridden = apply_overrides(settings, ["data.block_size=4", "lr=0.01", "schedule.kind=multistep",
                                            "schedule.milestones=[1, 2]"])
    assert settings == {"epochs": 3, "data": {"image_size": 16}}  # the input is not mutated
    config = TrainConfig.model_validate(overridden)
    assert (config.data.block_size, config.lr, config.schedule.milestones) == (4, 0.01, (1, 2))
    assert config.shuffled
    assert config.digest() == TrainConfig.model_validate(dict(reversed(list(overridden.items())))).digest()
    assert config.digest() != TrainConfig.model_validate({**overridden, "lr": 0.02}).digest()
    with pytest.raises(ValueError, match="must look like key=value"):
        apply_overrides(settings, ["epochs"])
    with pytest.raises(ValueError, match="'epochs' is not a section"):
        apply_overrides(settings, ["epochs.sub=1"])


def test_multilabel_targets_train_and_report_auc(tmp_path, toy_multilabel_domain, toy_train_config):
    run = Trainer(toy_train_config(epochs=3), tmp_path, progress=True, domain=toy_multilabel_domain).run()
    table = run.metrics
    assert set(table.columns) == COLUMNS - {"test_accuracy", "train_clean_accuracy"} | {"test_auc", "train_clean_auc"}
    assert table["test_auc"].iloc[-1] > 0.75 > table["test_auc"].iloc[0]
    assert run.status["best_score"] == table["test_auc"].max()
    assert run.checkpoint("final")["fc.weight"].shape == (3, 64)
