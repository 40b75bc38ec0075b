"""Bring your own model and data (issue 10): a weights source (a file, torchvision's
weights from torch's hub cache, no network), an import-path architecture, your own
nn.Module through the trainer, the report of every combination, and the warning when
runs that should differ are bit-identical."""

from __future__ import annotations

import copy
import hashlib
import io
import re
import sys
import urllib.error
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from transferscope.cli import app, describe
from transferscope.config import ModelConfig
from transferscope.models import build_model, save_weights
from transferscope.models.pretrained import load_pretrained, weights_identity
from transferscope.models.registry import build_configured, check_buildable
from transferscope.report import build_report
from transferscope.study import StudySpec, build_plan, load_study, run_study
from transferscope.study.executors import LocalExecutor
from transferscope.study.jobs import execute_job
from transferscope.study.store import Store
from transferscope.train import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32}
SOURCE_DATA = {"kind": "synthetic", "name": "source", "image_size": 16, "n_train": 64, "n_test": 32, "num_classes": 4}
TARGET = {"label": "real", "data": {"kind": "synthetic", "name": "real", "image_size": 16, "n_train": 64,
                                    "n_test": 48}}
OFF = {name: {"enabled": False} for name in
       ("cka", "distance", "mistakes", "interpolation", "basin", "rewind", "criticality", "spectrum")}
SMALL_ANALYSES = {
    "cka": {"max_examples": 32, "batch_size": 16},
    "mistakes": {"n_bootstrap": 20},
    "interpolation": {"alphas": [0.0, 0.5, 1.0], "max_examples": 32, "recalibration_batches": 1},
    "basin": {"sigmas": [0.05], "n_segment": 3, "n_noise": 1, "max_examples": 32, "recalibration_batches": 1},
    "rewind": {"enabled": False},  # P takes no part in rewinding and criticality (tests/test_study.py runs them)
    "criticality": {"enabled": False},
}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))


def weights_file(path: Path, seed: int, num_classes: int = 4) -> Path:
    """A width-4 small ResNet's weights (seeded init), as a brought P."""
    torch.manual_seed(seed)
    return save_weights(build_model("small_resnet", num_classes, width=4), path)


def study(source: dict, **changes) -> dict:
    spec = {"name": "byo", "model": {"arch": "small_resnet", "width": 4}, "source": source, "targets": [TARGET],
            "finetune": {**RECIPE, "lr": 0.01}, "scratch": RECIPE, "seeds": [0], "analyses": OFF}
    return spec | changes


def plan(spec: dict) -> dict[str, object]:
    return {f"{job.kind} {job.label}": job for job in build_plan(StudySpec.model_validate(spec))}


# ------------------------------------------------------------------ a weights file as P
@pytest.fixture(scope="module")
def trajectory_study(tmp_path_factory):
    """Brought P with its trajectory (epochs 0 and 1) and source data, the Fig. 7 sweep
    and the analyses (one seed: no basin, which compares runs of one kind), run and
    reported."""
    folder = tmp_path_factory.mktemp("byo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        first, last = weights_file(folder / "p0.safetensors", 0), weights_file(folder / "p1.pt.safetensors", 1)
        spec = StudySpec.model_validate(study(
            {"checkpoints": {0: str(first), 1: str(last)}, "data": SOURCE_DATA},
            checkpoints={"epochs": [0]}, analyses=SMALL_ANALYSES))
        counts = run_study(spec, folder / "study", LocalExecutor(progress=False), Console(file=io.StringIO()))
        build_report(folder / "study")
    return spec, folder, counts


def test_a_weights_file_source_plans_no_pretraining(tmp_path):
    weights = weights_file(tmp_path / "p.safetensors", 0)
    jobs = plan(study({"weights": str(weights)}))
    kinds = [job.kind for job in jobs.values()]
    assert "pretrain" not in kinds and kinds.count("weights") == 1 and "source_score" not in kinds
    source = next(job for job in jobs.values() if job.kind == "weights")
    pt = jobs["finetune P-T real s0"]
    assert pt.deps == (source.id,) and pt.config["init"]["job"] == source.id
    assert source.identity == {"weights": {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}

    # the same bytes under another name are the same job; other bytes rerun exactly what depends on them
    copied = tmp_path / "copy.safetensors"
    copied.write_bytes(weights.read_bytes())
    assert {job.id for job in plan(study({"weights": str(copied)})).values()} == {job.id for job in jobs.values()}
    weights_file(weights, 1)
    changed = {name for name, job in plan(study({"weights": str(weights)})).items() if jobs[name].id != job.id}
    assert changed == {name for name in jobs if name.startswith(("weights", "finetune P-T"))}


def test_a_trajectory_is_one_weights_job_per_distinct_file(tmp_path):
    first, last = weights_file(tmp_path / "a.safetensors", 0), weights_file(tmp_path / "b.safetensors", 1)
    source = {"weights": str(last), "checkpoints": {0: str(first), 3: str(last)}, "data": SOURCE_DATA}
    jobs = plan(study(source, checkpoints={"epochs": [0, 3]}))
    weights = {job.config["weights"]: job for job in jobs.values() if job.kind == "weights"}
    assert set(weights) == {str(first), str(last)}  # P and the trajectory's last epoch: one job, one copy
    assert jobs["finetune P-T real s0 from P@0"].deps == (weights[str(first)].id,)
    assert jobs["finetune P-T real s0"].deps == (weights[str(last)].id,)
    assert jobs["finetune P-T real s0"].config["meta"]["from_epoch"] == 3
    assert sorted(jobs["source_score P source score"].deps) == sorted(job.id for job in weights.values())

    with pytest.raises(ValueError, match="trajectory ends at P"):
        plan(study({"weights": str(first), "checkpoints": {0: str(first), 3: str(last)}}))
    with pytest.raises(ValueError, match=r"checkpoints.epochs \[2\].*it has \[0, 3\]"):
        StudySpec.model_validate(study(source, checkpoints={"epochs": [2]}))
    with pytest.raises(ValueError, match="give source.data"):
        StudySpec.model_validate(study({"checkpoints": source["checkpoints"]}, checkpoints={"epochs": [0]}))
    with pytest.raises(ValueError, match="either data \\+ recipe .* or weights"):
        StudySpec.model_validate(study({"weights": str(last), "data": SOURCE_DATA, "recipe": RECIPE}))
    with pytest.raises(ValueError, match="weights file not found"):
        StudySpec.model_validate(study({"weights": str(tmp_path / "missing.pt")}))


def test_trajectory_study_runs_and_reports_every_section(trajectory_study):
    spec, folder, counts = trajectory_study
    assert counts == {"done": len(build_plan(spec))}
    results = folder / "study" / "results"
    for name in ("runs", "curves", "checkpoints", "source_score", "cka", "distance", "mistakes", "interpolation",
                 "spectrum"):
        assert (results / f"{name}.parquet").is_file(), name
    score = pd.read_parquet(results / "source_score.parquet")
    assert list(score["epoch"]) == [0, 1] and score["test_accuracy"].between(0, 1).all()
    sweep = pd.read_parquet(results / "checkpoints.parquet")
    assert sorted(sweep["checkpoint_epoch"]) == [0, 1]
    assert list(sweep.sort_values("checkpoint_epoch")["source_score"]) == list(score["test_accuracy"])
    cka = pd.read_parquet(results / "cka.parquet")
    assert "P" in set(cka["model_a"]) | set(cka["model_b"])  # brought P is analysed beside the runs

    html = (folder / "study" / "report" / "index.html").read_text()
    assert 'class="error"' not in html
    summary = (folder / "study" / "report" / "summary.md").read_text()
    sections = dict(part.split("\n", 1) for part in summary.split("\n## ")[1:])
    assert not any(body.strip().startswith("No results yet") for body in sections.values())
    not_asked = sorted(title for title, body in sections.items() if body.strip().startswith("This study does not run"))
    assert not_asked == ["Feature reuse: block shuffling (Fig. 3)", "Freeze plans checked by runs",
                         "Module criticality (Fig. 6)", "Rewinding modules (Fig. 5)"]
    assert "this study has one seed" in sections["Basins in the loss landscape (Definition 3.1)"]
    for title in ("The source model P", "Fig. 2", "Sec. 3.2", "Table 1", "Table 2", "Fig. 4", "Fig. 7", "spectra"):
        assert any(title in heading for heading in sections) and title in html, title
    assert "P is the weights file" in summary and "trajectory at epochs 0, 1" in summary
    assert "source test accuracy" in summary


def test_weights_without_data_or_sweeps_report_what_they_need(tmp_path):
    weights = weights_file(tmp_path / "p.safetensors", 0, num_classes=10)
    spec = StudySpec.model_validate(study({"weights": str(weights)}, analyses={**OFF, "distance": {}}))
    counts = run_study(spec, tmp_path / "study", LocalExecutor(progress=False), Console(file=io.StringIO()))
    assert counts == {"done": 4}  # P's weights, P-T, RI-T, distance
    build_report(tmp_path / "study")
    summary = (tmp_path / "study" / "report" / "summary.md").read_text()
    assert "no source data are given (source.data)" in summary
    assert "fine-tunes from no pre-training checkpoint: set `checkpoints.epochs`" in summary
    assert "source.checkpoints" in summary
    html = (tmp_path / "study" / "report" / "index.html").read_text()
    assert 'class="error"' not in html and "Fig. 2" in html and "Table 2" in html
    runs = pd.read_parquet(tmp_path / "study" / "results" / "runs.parquet")
    assert set(runs["role"]) == {"P-T", "RI-T"} and runs["from_epoch"].isna().all()


# ------------------------------------------------------------------ torchvision's weights, from torch's cache
RESNET18 = "torchvision:ResNet18_Weights.IMAGENET1K_V1"


def cache_file(torch_home: Path, url: str) -> Path:
    return torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]


def test_torchvision_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    """torchvision verifies a file's hash only when it downloads it; a cached file is
    trusted by torch, and checked here against the hash its published name carries."""
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", _offline)
    torch.manual_seed(0)
    state = build_model("resnet18", 1000).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    published = ResNet18_Weights.IMAGENET1K_V1.url
    wrong = cache_file(tmp_path / "torch", published)  # our bytes under the published name
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"is not torchvision's ResNet18_Weights.IMAGENET1K_V1: its SHA-256 begins "
                                         r"[0-9a-f]{8}, the published file's f37072fd; delete it"):
        load_pretrained(RESNET18)

    # the same mechanism for a published name whose hash is our file's: the enum's URL names it
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    url = published.replace("f37072fd", digest[:8])
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", url)
    wrong.rename(cache_file(tmp_path / "torch", url))
    loaded = load_pretrained(RESNET18)
    assert set(loaded) == set(state) and all(torch.equal(loaded[key], state[key]) for key in state)
    assert weights_identity(RESNET18) == {"torchvision": "ResNet18_Weights.IMAGENET1K_V1", "url": url}

    # in a study: P's weights job materialises them
    assert_weights_job_writes(tmp_path, RESNET18, "resnet18", state)


def assert_weights_job_writes(tmp_path, weights: str, arch: str, state: dict) -> None:
    """In a study, P's weights job materialises ``weights`` (the architecture checked) as
    exactly ``state``."""
    spec = StudySpec.model_validate(study({"weights": weights}, model={"arch": arch}))
    jobs = {job.kind: job for job in build_plan(spec)}
    store = Store(tmp_path / "study")
    store.register(jobs.values())
    assert execute_job(store.root, jobs["weights"].id) == "done", store.error(jobs["weights"])
    written = load_pretrained(str(store.job_dir(jobs["weights"]) / "weights.safetensors"))
    assert all(torch.equal(written[key], state[key]) for key in state)


def _offline(*_args, **_kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_offline_with_an_empty_cache_names_the_file_to_place(tmp_path, monkeypatch):
    from torchvision.models import ResNet50_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "urlopen", _offline)
    with pytest.raises(OSError) as raised:
        load_pretrained("torchvision:ResNet50_Weights.IMAGENET1K_V2")
    message = describe(raised.value)
    expected = cache_file(tmp_path / "torch", ResNet50_Weights.IMAGENET1K_V2.url)
    assert "\n" not in message and str(expected) in message and ResNet50_Weights.IMAGENET1K_V2.url in message
    assert "Name or service not known" in message and "offline, place that file at" in message
    with pytest.raises(ValueError, match="has no member 'IMAGENET9'; it has IMAGENET1K_V1, IMAGENET1K_V2"):
        weights_identity("torchvision:ResNet50_Weights.IMAGENET9")
    monkeypatch.setitem(sys.modules, "timm", None)  # timm not installed
    with pytest.raises(ImportError, match=r"pip install 'transferscope\[timm\]'"):
        weights_identity("timm:resnet18.a1_in1k")


def test_the_torchvision_example_plans_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", _offline)
    result = CliRunner().invoke(app, ["plan", str(ROOT / "examples" / "byo-torchvision.yaml")])
    assert result.exit_code == 0, result.output
    assert "weights" in result.output and "pretrain" not in result.output


# ------------------------------------------------------------------ an import-path architecture
NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, width=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''


def test_an_import_path_architecture_builds_plans_and_reruns_when_its_file_changes(tmp_path, monkeypatch):
    module = tmp_path / "user_net_a.py"
    module.write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_net_a", raising=False)
    model = build_model("user_net_a:Net", 5, width=9, blocks=(2, 2, 2, 2))  # sizes go to builders that name them
    assert model.head.out_features == 5 and model.head.in_features == 4
    settings = {"arch": "user_net_a:Net", "kwargs": {"width": 6}, "head": "head"}
    assert build_configured(ModelConfig(**settings), 5).head.in_features == 6  # model.kwargs reach the callable
    check_buildable(ModelConfig(**settings))

    jobs = plan(study({"data": SOURCE_DATA, "recipe": RECIPE}, model=settings))
    pretrain = jobs["pretrain P (source)"]
    assert pretrain.config["arch_source"] == {"file": str(module), "sha256": hashlib.sha256(module.read_bytes())
                                              .hexdigest()}
    module.write_text(NET + "\n# an edit\n")
    edited = plan(study({"data": SOURCE_DATA, "recipe": RECIPE}, model=settings))
    assert all(edited[name].id != job.id for name, job in jobs.items())  # every job builds it

    folder = tmp_path / "study"
    spec = StudySpec.model_validate(study({"data": SOURCE_DATA, "recipe": RECIPE}, model=settings))
    assert run_study(spec, folder, LocalExecutor(progress=False), Console(file=io.StringIO())) == {"done": 3}
    run_config = yaml.safe_load((folder / "study.yaml").read_text())["model"]
    assert run_config == settings | {"width": 16, "blocks": [1, 1, 1, 1]}


@pytest.mark.parametrize("arch, message", [
    ("no_such_module_x:Net", r"cannot import module 'no_such_module_x' .*PYTHONPATH"),
    ("user_net_b:Nope", r"'user_net_b' has no attribute 'Nope'; it defines Net"),
    ("user_net_b:Net", r"cannot be built \(TypeError: .*unexpected keyword argument 'depth'\); fix model.arch or "
                       "model.kwargs"),
])
def test_plan_fails_in_one_line_before_any_job_runs(tmp_path, monkeypatch, arch, message):
    (tmp_path / "user_net_b.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_net_b", raising=False)
    spec = study({"data": SOURCE_DATA, "recipe": RECIPE}, model={"arch": arch, "kwargs": {"depth": 2}})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    for command in (["plan", str(path)], ["run", str(path), "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert re.search(message, result.output.replace("\n", "")) and result.output.count("error:") == 1
    assert not (tmp_path / "out" / "jobs").exists()


def test_the_own_model_example_plans(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["plan", "examples/byo-own-model.yaml"])
    assert result.exit_code == 0, result.output
    spec = load_study(ROOT / "examples" / "byo-own-model.yaml")
    assert spec.model.arch == "own_model:TinyNet" and spec.targets[0].data.kind == "csv"


# ------------------------------------------------------------------ your own nn.Module through the trainer
class Mine(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def test_your_own_module_trains_and_resumes_bit_identical(tmp_path, toy_domain, toy_train_config):
    config = toy_train_config(epochs=3, augment=True, mixup_alpha=0.4)
    torch.manual_seed(5)
    model = Mine()
    before = copy.deepcopy(model.state_dict())
    reference = train(config, tmp_path / "reference", model, progress=False, domain=toy_domain)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # never changed
    assert all(torch.equal(before[key], value) for key, value in reference.checkpoint(0).items())  # epoch 0

    def crash(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("stop after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "resumed", progress=False, domain=toy_domain, model=model).run(on_epoch_end=crash)
    resumed = train(config, tmp_path / "resumed", model=model, progress=False, domain=toy_domain)
    final, expected = resumed.checkpoint("final"), reference.checkpoint("final")
    assert set(final) == set(expected) and all(torch.equal(final[key], expected[key]) for key in final)
    assert resumed.status["digest"] == reference.status["digest"]

    # another module, or the same module with other weights, is another run
    torch.manual_seed(6)
    with pytest.raises(ValueError, match="holds a run with a different config"):
        train(config, tmp_path / "resumed", model=Mine(), progress=False, domain=toy_domain)


def test_your_own_module_fine_tunes_from_a_state_dict(tmp_path, toy_domain, toy_train_config):
    torch.manual_seed(1)
    pretrained = Mine(num_classes=7).state_dict()  # another head: re-initialised, the rest loaded
    torch.manual_seed(2)
    model = Mine()
    run = train(toy_train_config(epochs=1), tmp_path, model, init=pretrained, progress=False, domain=toy_domain)
    start = run.checkpoint(0)
    assert all(torch.equal(start[key], pretrained[key]) for key in start if not key.startswith("fc."))
    assert torch.equal(start["fc.weight"], model.fc.weight)
    with pytest.raises(ValueError, match="given twice"):
        train(toy_train_config(init=str(save_weights(pretrained, tmp_path / "p.safetensors"))), tmp_path / "b",
              model, init=pretrained, progress=False, domain=toy_domain)


# ------------------------------------------------------------------ runs that should differ
def test_bit_identical_p_and_rit_are_warned_about(tmp_path):
    """Source = target with the scratch recipe and seed: P and RI-T are one run."""
    target = TARGET["data"]
    spec = StudySpec.model_validate(study({"data": target, "recipe": RECIPE}))
    output = io.StringIO()
    run_study(spec, tmp_path, LocalExecutor(progress=False), Console(file=output, width=400))
    assert re.search(r"warning: real: (P and RI-T:s0|RI-T:s0 and P) have bit-identical final weights",
                     output.getvalue()), output.getvalue()
    build_report(tmp_path)
    assert "have bit-identical final weights" in (tmp_path / "report" / "summary.md").read_text()


# ------------------------------------------------------------------ timm's weights, from the Hugging Face hub cache
TIMM_WEIGHTS = "test_resnet.r160_in1k"  # timm's smallest ResNet (0.5 M parameters), published on the hub


def test_timm_weights_come_from_the_hub_cache_where_the_offline_error_says(tmp_path, monkeypatch):
    """Offline with an empty hub cache, the one-line error names the file to place and the
    ref naming its folder; placed there, timm's own loader reads it, and a study's weights
    job materialises it."""
    from huggingface_hub import constants

    from transferscope.models.pretrained import timm_cache_file

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import, as HF_HUB_CACHE
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(OSError) as raised:
        load_pretrained(f"timm:{TIMM_WEIGHTS}")
    weights, ref = timm_cache_file(TIMM_WEIGHTS)
    folder = hub / "models--timm--test_resnet.r160_in1k"
    assert (weights, ref) == (folder / "snapshots" / "local" / "model.safetensors", folder / "refs" / "main")
    message = describe(raised.value)
    assert "\n" not in message and "LocalEntryNotFoundError" in message
    assert f"place its state dict (safetensors) at {weights} and write local into {ref}" in message

    torch.manual_seed(0)
    state = build_model("timm:test_resnet", 1000).state_dict()  # timm's architecture, our weights
    save_weights(state, weights)
    ref.parent.mkdir()
    ref.write_text("local")
    loaded = load_pretrained(f"timm:{TIMM_WEIGHTS}")
    assert set(loaded) == set(state) and all(torch.equal(loaded[key], state[key]) for key in state)

    assert_weights_job_writes(tmp_path, f"timm:{TIMM_WEIGHTS}", "timm:test_resnet", state)
