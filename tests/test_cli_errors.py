"""Bad inputs a user can give the command line (study and training YAML files, options,
data folders, damaged study folders, a full disk): each ends with exit code 2 and one
line on stderr that names the key or the path, without a traceback, and changes no
file of the study folder. ``CASES`` is also what the before/after count of issue 13
runs (each case as a real process)."""

from __future__ import annotations

import copy
import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml
from PIL import Image
from test_study import tiny_spec
from typer.testing import CliRunner

from transferscope.cli import app
from transferscope.study import StudySpec, run_study


@dataclass
class Case:
    args: list[str]
    names: str  # the key or path the error line must name
    unchanged: list[Path] = field(default_factory=list)  # folders whose files must stay as they are
    absent: list[Path] = field(default_factory=list)  # paths the command must not create
    env: dict[str, str] = field(default_factory=dict)
    file_size_limit: int | None = None  # bytes: writes past it fail as on a full disk (needs a real process)
    missing_modules: list[str] = field(default_factory=list)  # made unimportable, as when an extra is not installed


class Scene:
    """Files for one case under ``tmp``: study and training YAML files, data folders, and
    copies of a prepared study folder (every job pending)."""

    def __init__(self, tmp: Path, prepared: Path) -> None:
        self.tmp, self.prepared = tmp, prepared

    def out(self) -> Path:
        return self.tmp / "out"

    def text(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def study(self, *changes: tuple[str, object], drop: str | None = None) -> str:
        """The tiny study with ``key.path = value`` changes (list indices as numbers)."""
        spec = copy.deepcopy(tiny_spec())
        for key, value in changes:
            *parents, leaf = key.split(".")
            node = spec
            for part in parents:
                node = node[int(part)] if part.isdigit() else node[part]
            node[int(leaf) if leaf.isdigit() else leaf] = value
        if drop:
            del spec[drop]
        return self.text("study.yaml", yaml.safe_dump(spec, sort_keys=False))

    def run(self, *changes, drop: str | None = None, names: str | None = None) -> Case:
        """``run`` of a changed study into a new folder, which must not appear; the error
        names the first changed key unless ``names`` says otherwise."""
        names = names or (changes[0][0] if changes else drop)
        return Case(["run", self.study(*changes, drop=drop), "--out", str(self.out())], names, absent=[self.out()])

    def train_config(self, **settings) -> str:
        base = {"data": {"name": "real", "image_size": 16, "n_train": 32, "n_test": 16},
                "model": {"arch": "small_resnet", "width": 4}, "epochs": 1, "batch_size": 16, "device": "cpu"}
        return self.text("train.yaml", yaml.safe_dump({**base, **settings}, sort_keys=False))

    def train(self, names: str, *overrides: str, **settings) -> Case:
        return Case(["train", self.train_config(**settings), "--out", str(self.tmp / "run"), *overrides], names)

    def images(self, classes: dict[str, int], corrupt: str | None = None) -> str:
        """An image folder with ``classes[c]`` images of each class ``c``."""
        root = self.tmp / "images"
        root.mkdir()
        for name, count in classes.items():
            (root / name).mkdir()
            for i in range(count):
                Image.new("RGB", (16, 16), (20 * i, 80, 120)).save(root / name / f"{i}.png")
        if corrupt:
            (root / corrupt).write_bytes(b"not an image")
        return str(root)

    def folder_train(self, root: str, names: str) -> Case:
        return self.train(names, data={"kind": "folder", "root": root, "image_size": 16}, batch_size=4)

    def damaged(self, command: str, damage: Callable[[Path], str]) -> Case:
        """``command`` on a copy of the prepared study folder after ``damage(folder)``,
        which returns what the error must name."""
        folder = self.tmp / "damaged-study"
        shutil.copytree(self.prepared, folder)
        names = damage(folder)
        args = ["run", str(folder / "study.yaml"), "--out", str(folder)] if command == "run" else [command, str(folder)]
        return Case(args, names, unchanged=[folder])


def first_job(folder: Path) -> Path:
    return sorted((folder / "jobs").glob("finetune-*"))[0]


def overwrite(path: Path, content: str) -> str:
    path.write_text(content)
    return path.name


CASES: dict[str, Callable[[Scene], Case]] = {
    # ---------------------------------------------------------------- study YAML files
    "yaml syntax error": lambda s: Case(["run", s.text("bad.yaml", "name: [tiny\n"), "--out", str(s.out())], "bad.yaml",
                                        absent=[s.out()]),
    "empty study file": lambda s: Case(["run", s.text("empty.yaml", ""), "--out", str(s.out())], "empty.yaml",
                                       absent=[s.out()]),
    "list at the top level": lambda s: Case(["run", s.text("list.yaml", "- 1\n- 2\n"), "--out", str(s.out())],
                                            "list.yaml", absent=[s.out()]),
    "duplicate key": lambda s: Case(["run", s.text("dup.yaml", Path(s.study()).read_text() + "seeds: [3]\n"), "--out",
                                     str(s.out())], "seeds", absent=[s.out()]),
    "binary study file": lambda s: Case(["run", s.text("binary.yaml", b"name: \x80\x81 tiny\n"), "--out", str(s.out())],
                                        "binary.yaml", absent=[s.out()]),
    "unknown key": lambda s: s.run(("source.recipe.lrr", 0.1)),
    "wrong type of list": lambda s: s.run(("seeds", "abc")),
    "wrong type of number": lambda s: s.run(("source.recipe.epochs", "ten")),
    "unknown target in shuffle": lambda s: s.run(("shuffle.targets", ["nope"])),
    "unknown target in criticality": lambda s: s.run(("analyses.criticality.targets", ["nope"])),
    "block size 0 (plan)": lambda s: Case(["plan", s.study(("shuffle.block_sizes", [0]))], "block_sizes"),
    "negative block size": lambda s: s.run(("shuffle.block_sizes", [-4])),
    "block size not dividing": lambda s: s.run(("shuffle.block_sizes", [5])),
    "device gpu0": lambda s: s.run(("finetune.device", "gpu0")),
    "lr .inf": lambda s: s.run(("finetune.lr", float("inf"))),
    "lr .nan": lambda s: s.run(("scratch.lr", float("nan"))),
    "invalid choice": lambda s: s.run(("analyses.cka.kernel", "poly")),
    "duplicate target labels": lambda s: s.run(("targets.1.label", "real"), names="labels must be unique"),
    "checkpoint epoch out of range": lambda s: s.run(("checkpoints.epochs", [0, 99])),
    "no targets": lambda s: s.run(("targets", [])),
    "model width 0": lambda s: s.run(("model.width", 0)),
    "folder data without root": lambda s: s.run(("targets.0.data.kind", "folder"), names="root"),
    "unknown data kind": lambda s: s.run(("targets.0.data.kind", "imagenet")),
    "missing source": lambda s: s.run(drop="source"),
    "study file is a folder": lambda s: Case(["run", str(s.tmp), "--out", str(s.out())], s.tmp.name,
                                             absent=[s.out()]),
    "missing study file": lambda s: Case(["run", str(s.tmp / "nothere.yaml"), "--out", str(s.out())], "nothere.yaml",
                                         absent=[s.out()]),
    "plan of a missing study file": lambda s: Case(["plan", str(s.tmp / "nothere.yaml")], "nothere.yaml"),
    # ---------------------------------------------------------------- options
    "--workers 0": lambda s: Case(["run", s.study(), "--out", str(s.out()), "--executor", "pool", "--workers", "0"],
                                  "--workers", absent=[s.out()]),
    "unknown executor": lambda s: Case(["run", s.study(), "--out", str(s.out()), "--executor", "cloud"], "--executor",
                                       absent=[s.out()]),
    "--slurm without =": lambda s: Case(["run", s.study(), "--out", str(s.out()), "--executor", "slurm", "--slurm",
                                         "partition"], "--slurm", absent=[s.out()]),
    "--slurm unknown key": lambda s: Case(["run", s.study(), "--out", str(s.out()), "--executor", "slurm", "--slurm",
                                           "queue=gpu", "--slurm", "cluster=local"], "queue", absent=[s.out()]),
    "--slurm bad value": lambda s: Case(["run", s.study(), "--out", str(s.out()), "--executor", "slurm", "--slurm",
                                         "time_minutes=0", "--slurm", "cluster=local"], "time_minutes",
                                        absent=[s.out()]),
    "slurm without sbatch": lambda s: Case(["run", s.study(), "--out", str(s.out()), "--executor", "slurm"], "sbatch",
                                           absent=[s.out()], env={"PATH": str(s.tmp)}),
    "--out names a file": lambda s: Case(["run", s.study(), "--out", s.text("a-file", "x")], "a-file"),
    "--out under a file": lambda s: Case(["run", s.study(), "--out", str(Path(s.text("a-file", "x")) / "study")],
                                         "a-file"),
    "preview --out under a file": lambda s: Case(["data", "preview", "real", "--out",
                                                  str(Path(s.text("a-file", "x")) / "grid.png")], "a-file"),
    "preview of an unknown domain": lambda s: Case(["data", "preview", "nope", "--out", str(s.tmp / "grid.png")],
                                                   "nope", absent=[s.tmp / "grid.png"]),
    "preview of 0 images": lambda s: Case(["data", "preview", "real", "--out", str(s.tmp / "grid.png"), "--n", "0"],
                                          "n must", absent=[s.tmp / "grid.png"]),
    "preview of an unknown split": lambda s: Case(["data", "preview", "real", "--out", str(s.tmp / "grid.png"),
                                                   "--split", "valid"], "valid", absent=[s.tmp / "grid.png"]),
    "status of a folder that is no study": lambda s: Case(["status", str(s.tmp)], s.tmp.name, unchanged=[s.tmp]),
    "status of a missing folder": lambda s: Case(["status", str(s.tmp / "nothere")], "nothere",
                                                 absent=[s.tmp / "nothere"]),
    "report of a folder that is no study": lambda s: Case(["report", str(s.tmp)], s.tmp.name, unchanged=[s.tmp]),
    # ---------------------------------------------------------------- `train`
    "train: missing config": lambda s: Case(["train", str(s.tmp / "nothere.yaml"), "--out", str(s.tmp / "run")],
                                            "nothere.yaml", absent=[s.tmp / "run"]),
    "train: yaml syntax error": lambda s: Case(["train", s.text("bad.yaml", "epochs: [1\n"), "--out",
                                                str(s.tmp / "run")], "bad.yaml", absent=[s.tmp / "run"]),
    "train: empty config": lambda s: Case(["train", s.text("empty.yaml", ""), "--out", str(s.tmp / "run")],
                                          "empty.yaml", absent=[s.tmp / "run"]),
    "train: duplicate key": lambda s: Case(["train", s.text("dup.yaml", "epochs: 1\nepochs: 2\n"), "--out",
                                            str(s.tmp / "run")], "epochs", absent=[s.tmp / "run"]),
    "train: unknown key": lambda s: s.train("epochz", epochz=3),
    "train: device gpu0": lambda s: s.train("device", device="gpu0"),
    "train: lr .inf": lambda s: s.train("lr", lr=float("inf")),
    "train: block size 0": lambda s: s.train("block_size", data={"name": "real", "image_size": 16, "block_size": 0}),
    "train: override without =": lambda s: s.train("epochs5", "epochs5"),
    "train: override of an unknown key": lambda s: s.train("epochz", "epochz=5"),
    "train: override that is not YAML": lambda s: s.train("epochs", "epochs=[1"),
    "train: --out names a file": lambda s: Case(["train", s.train_config(), "--out", s.text("a-file", "x")], "a-file"),
    "train: init file missing": lambda s: s.train("missing.safetensors", init=str(s.tmp / "missing.safetensors")),
    "train: init file damaged": lambda s: s.train("bad.safetensors", init=s.text("bad.safetensors", "not weights")),
    "train: optional extra missing": lambda s: dataclasses.replace(s.train("timm", model={"arch": "timm:resnet18"}),
                                                       missing_modules=["timm"]),
    "train: unknown architecture": lambda s: s.train("resnet999", model={"arch": "resnet999"}),
    "train: data folder missing": lambda s: s.folder_train(str(s.tmp / "no-images"), "no-images"),
    "train: empty data folder": lambda s: s.folder_train(s.images({}), "images"),
    "train: one class": lambda s: s.folder_train(s.images({"a": 8}), "class"),
    "train: corrupt image": lambda s: s.folder_train(s.images({"a": 8, "b": 8}, corrupt="a/broken.png"),
                                                     "broken.png"),
    # ---------------------------------------------------------------- damaged study folders
    "status: study.yaml not YAML": lambda s: s.damaged("status", lambda f: overwrite(f / "study.yaml", "name: [x\n")),
    "report: study.yaml invalid": lambda s: s.damaged("report", lambda f: overwrite(
        f / "study.yaml", (f / "study.yaml").read_text().replace("seeds:", "seedz:"))),
    "status: running.json damaged": lambda s: s.damaged("status", lambda f: overwrite(
        first_job(f) / "running.json", '{"host": "x", "pi')),
    "status: running.json not an object": lambda s: s.damaged("status", lambda f: overwrite(
        first_job(f) / "running.json", "[]")),
    "status: failed.json damaged": lambda s: s.damaged("status", lambda f: overwrite(first_job(f) / "failed.json",
                                                                                      "\x00\x00")),
    "run: running.json damaged": lambda s: s.damaged("run", lambda f: overwrite(first_job(f) / "running.json", "{")),
    # 4 bytes: Python's tempfile probes each temporary folder with a 4-byte write when a
    # dependency (dill, imported by torch when present) asks for one at import time; the
    # lock file fits, the study file that run writes next does not
    "run: disk full": lambda s: dataclasses.replace(s.damaged("run", lambda _folder: "study.yaml"),
                                                    file_size_limit=4),
}


@pytest.fixture(scope="module")
def prepared_study(tmp_path_factory) -> Path:
    """A study folder as `run` sets it up (study.yaml, job descriptions, index), no job run."""

    class NoJobs:
        def run(self, root, jobs, report) -> None:
            pass

    folder = tmp_path_factory.mktemp("prepared") / "study"
    run_study(StudySpec.model_validate(tiny_spec()), folder, NoJobs())
    return folder


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def invoke(case: Case) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the command, in this process or (to limit the
    file size) in a child process."""
    if case.file_size_limit is None:
        result = CliRunner().invoke(app, case.args, env=case.env)
        return result.exit_code, result.stdout, result.stderr

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_size_limit, case.file_size_limit))

    done = subprocess.run([sys.executable, "-m", "transferscope.cli", *case.args], capture_output=True, text=True,
                          env={**os.environ, **case.env}, preexec_fn=limit, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_naming_it(name, tmp_path, prepared_study, monkeypatch):
    case = CASES[name](Scene(tmp_path, prepared_study))
    for module in case.missing_modules:  # the test extra installs timm; the case is a machine without it
        monkeypatch.setitem(sys.modules, module, None)
    before = {folder: snapshot(folder) for folder in case.unchanged}
    code, stdout, stderr = invoke(case)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 2, (code, stdout, stderr)
    assert len(lines) == 1 and case.names in lines[0], stderr
    for folder, files in before.items():
        assert snapshot(folder) == files, f"{folder} changed"
    assert not [path for path in case.absent if path.exists()]


def test_there_are_at_least_40_bad_inputs():
    assert len(CASES) >= 40


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(app, ["--debug", "status", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError)
    plain = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert plain.exit_code == 2 and plain.exception is not None and not isinstance(plain.exception, FileNotFoundError)
