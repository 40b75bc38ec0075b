"""The ``transferscope`` command line (typer): demo, run, plan, status, report, train,
data preview.

An error a user can cause (a bad setting or option, a missing or damaged file, a full
disk, a folder in use, a missing optional package) ends the command with exit code 2
and one line on stderr that names the file or key and the fix; ``--debug`` shows the
traceback instead."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import UsageError  # type: ignore[no-redef,assignment]  # the same class, before typer vendored click

from .study.store import StudyBusy

_OS_FIXES: dict[int | None, str] = {
    errno.ENOSPC: "the disk is full: free space there (or choose a folder on another disk) and rerun; finished work "
                  "is kept",
    errno.EDQUOT: "the disk quota is used up: free space (or choose a folder on another disk) and rerun",
    errno.EFBIG: "the file size limit was reached: raise it (ulimit -f) or free space, and rerun",
    errno.EACCES: "no permission: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose a folder on a writable disk",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EEXIST: "a file is in the way where a folder is needed: choose another path or move that file",
    errno.EISDIR: "this is a folder where a file is needed: choose a file path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def describe(error: BaseException) -> str:
    """One line that says what went wrong, naming the file or key, and the fix."""
    if isinstance(error, ValidationError):
        from pydantic import BaseModel

        from .config import explain

        text = f"invalid {error.title} settings: {explain(error, BaseModel)}"
    elif isinstance(error, OSError) and error.filename is not None:
        files = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
        text = f"{files}: {error.strerror}; {_OS_FIXES.get(error.errno, 'check that path and its disk')}"
    elif isinstance(error, ImportError) and "pip install" not in str(error):
        text = f"{error}; install the missing package ({error.name or 'see the message'}) in this environment"
    elif isinstance(error, yaml.YAMLError):
        text = f"not valid YAML: {error}"
    elif isinstance(error, sqlite3.Error):
        text = f"SQLite error: {error}; delete the study folder's index.sqlite, `transferscope run` rewrites it"
    elif _is_safetensors_error(error):
        text = f"a weights file is damaged (not readable safetensors): {error}; delete it and rerun"
    else:
        text = str(error) or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(line if i == 0 else (" " if lines[i - 1].endswith(":") else "; ") + line
                   for i, line in enumerate(lines))


def _is_safetensors_error(error: BaseException) -> bool:
    from safetensors import SafetensorError

    return isinstance(error, SafetensorError)


USER_ERRORS = (ValueError, OSError, ImportError, yaml.YAMLError, sqlite3.Error, StudyBusy)


class _OneLineErrors(TyperGroup):
    """Ends any command on a user error with one line on stderr and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as error:  # a bad option or argument
            command = f"{error.ctx.command_path} --help" if error.ctx is not None else "--help"
            _fail(f"{error.format_message()} (see `{command}`)")
        except Exception as error:
            if ctx.params.get("debug") or not (isinstance(error, USER_ERRORS) or _is_safetensors_error(error)):
                raise
            _fail(describe(error))


app = typer.Typer(help="What is being transferred in transfer learning? Every analysis of Neyshabur, Sedghi & "
                       "Zhang (NeurIPS 2020) on your model and data.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=_OneLineErrors)
data_app = typer.Typer(help="Inspect data domains.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="on an error, show the full traceback")) -> None:
    pass


class ExecutorName(str, Enum):
    local = "local"
    pool = "pool"
    slurm = "slurm"


def _fail(message: str) -> None:
    typer.echo(f"{typer.style('error:', fg='red')} {message}", err=True)
    raise typer.Exit(code=2)


def _executor(name: ExecutorName, workers: int, slurm_options: list[str]):
    from .config import apply_overrides, explain
    from .study.executors import LocalExecutor, PoolExecutor, SlurmExecutor, SlurmSettings

    if name is ExecutorName.local:
        return LocalExecutor(progress=sys.stderr.isatty())
    if name is ExecutorName.pool:
        return PoolExecutor(workers)
    try:
        settings = SlurmSettings.model_validate(apply_overrides({}, slurm_options))
    except ValidationError as error:
        raise ValueError(f"--slurm: {explain(error, SlurmSettings)}") from error
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(f"--slurm: {describe(error)}") from error
    return SlurmExecutor(settings, echo=console.print)


def preset_path(name: str) -> Path:
    return Path(str(resources.files("transferscope") / "presets" / f"{name}.yaml"))


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="study folder to write"),
         executor: ExecutorName = typer.Option(ExecutorName.pool, help="local, pool or slurm"),
         workers: int = typer.Option(os.cpu_count() or 1, min=1,
                                     help="processes for --executor pool (default: one per core)"),
         profile: bool = typer.Option(False, "--profile", help="at the end, print where the time went "
                                                               "(as `transferscope status --times`)")
         ) -> None:
    """Run the built-in demo study (synthetic domains, small ResNet, CPU) end to end."""
    run(preset_path("demo"), out=out, executor=executor, workers=workers, slurm=[], no_report=False, profile=profile)


@app.command()
def run(study: Path = typer.Argument(..., help="study YAML file"),
        out: Path = typer.Option(..., help="study folder (created; re-running resumes)"),
        executor: ExecutorName = typer.Option(ExecutorName.local, help="local, pool or slurm"),
        workers: int = typer.Option(2, min=1, help="processes for --executor pool (one GPU each when there are GPUs)"),
        slurm: list[str] = typer.Option([], help="SLURM setting key=value, e.g. partition=gpu, time_minutes=600, "
                                                 "max_concurrent=32, cluster=local; gpus_per_job, cpus_per_job and "
                                                 "mem_gb left out fit the partition and the kind of job"),
        no_report: bool = typer.Option(False, "--no-report", help="skip writing the report at the end"),
        profile: bool = typer.Option(False, "--profile", help="at the end, print where the time went "
                                                              "(as `transferscope status --times`)")) -> None:
    """Run every job of a study that is not complete, then write its report."""
    from .study import load_study, run_study

    spec = load_study(study)
    counts = run_study(spec, out, _executor(executor, workers, slurm), console)
    if not no_report:
        from .report import write_report

        console.print(f"report: {write_report(out, force=False)}")
    if profile:
        _print_times(out)
    if counts.get("failed"):
        console.print(f"[yellow]{counts['failed']} job(s) failed; `transferscope status {out}` shows why[/]")
        raise typer.Exit(code=1)


@app.command()
def plan(study: Path = typer.Argument(..., help="study YAML file"),
         out: Optional[Path] = typer.Option(None, help="study folder, to show what is already done")) -> None:
    """List the jobs of a study, what is done, and the compute each needs."""
    from .study import load_study
    from .study.runner import plan_table

    console.print(plan_table(load_study(study), out))


@app.command()
def status(out: Path = typer.Argument(..., help="study folder"),
           times: bool = typer.Option(False, "--times", help="also the wall seconds per kind of job and stage "
                                                             "(data, models, train, analysis, write), and the "
                                                             "report's per section")) -> None:
    """Done / running / failed / pending jobs of a study folder, with the errors of failed ones."""
    from .study.runner import status_table

    table, failed = status_table(out)
    console.print(table)
    for job, error in failed:
        console.print(f"[red]failed[/] {escape(job.label)} ({job.id}): {escape(str(error))}")
    if times:
        _print_times(out)


def _print_times(out: Path) -> None:
    """Where a study's time went: per kind of job and stage, and the report's; each
    table as wide as its numbers need (a narrow terminal or a log would cut them)."""
    from rich.measure import Measurement

    from .study.times import report_table, times_table

    report = report_table(out)
    for table in (times_table(out), report):
        if table is None:
            console.print("no report times recorded yet (`transferscope report` writes them)")
            continue
        width = Measurement.get(console, console.options.update(max_width=1000), table).maximum
        Console(file=console.file, width=max(console.width, width), force_terminal=console.is_terminal).print(table)


@app.command()
def report(out: Path = typer.Argument(..., help="study folder")) -> None:
    """(Re)write the study's report from what is complete."""
    from .report import write_report

    console.print(f"report: {write_report(out)}")


@app.command()
def train(config: Path = typer.Argument(..., help="training config YAML (TrainConfig)"),
          out: Path = typer.Option(..., help="run folder (re-running resumes)"),
          overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. epochs=5 data.block_size=4")) -> None:
    """Train one run (P, P-T with init=..., or RI-T) from a YAML file."""
    from .config import TrainConfig, apply_overrides, explain
    from .train import TrainingFailed
    from .train import train as train_run

    try:
        settings = TrainConfig.model_validate(apply_overrides(_read_mapping(config), overrides or []))
    except ValidationError as error:
        raise ValueError(f"invalid training config {config}:\n{explain(error, TrainConfig)}") from error
    try:
        result = train_run(settings, out, progress=sys.stderr.isatty())
    except TrainingFailed as error:
        console.print(f"[red]run failed:[/] {error}")
        raise typer.Exit(code=1) from None
    final = result.status["final"]
    console.print(f"done: {out} — " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()
                                                 if k.startswith("test_")))


def _read_mapping(path: Path) -> dict:
    """The settings mapping of a YAML file."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    from .config import load_yaml

    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of settings at the top level, e.g. `epochs: 5`")
    return raw


class DataKind(str, Enum):
    folder = "folder"
    csv = "csv"
    hf = "hf"


@data_app.command("preview")
def data_preview(domain: Optional[str] = typer.Argument(None, help="synthetic domain: source, real, clipart, sketch, "
                                                                    "xray (or --study, or --kind and --path)"),
                 out: Path = typer.Option(..., help="PNG file to write"),
                 study: Optional[Path] = typer.Option(None, help="study YAML: preview a target's data, training "
                                                      "images augmented as its finetune recipe's augment"),
                 target: Optional[str] = typer.Option(None, help="--study's target label (default: its only one)"),
                 kind: Optional[DataKind] = typer.Option(None, help="your data, as a target's data.kind: folder, "
                                                         "csv or hf (with --path)"),
                 path: Optional[str] = typer.Option(None, help="--kind's data.root: image folder, CSV file, or hf "
                                                    "save_to_disk folder or hub name"),
                 data: list[str] = typer.Option([], "--data", help="more data settings of --kind, key=value "
                                                "(e.g. --data label_column=species --data image_size=224)"),
                 augment: Optional[str] = typer.Option(None, help="training augmentation to show: auto, "
                                                       "resized_crop, pad_crop, none (default: the study's; auto "
                                                       "for --kind; none for a synthetic domain)"),
                 n: int = typer.Option(64, help="number of examples"),
                 split: str = typer.Option("train", help="train or test"),
                 image_size: int = typer.Option(32, help="image size in pixels (synthetic domain, --kind)"),
                 seed: int = typer.Option(0, help="generator seed (synthetic domain), subsample seed (--kind)")) -> None:
    """Write a grid of example images, as the model sees them, of a built-in domain or of your data."""
    from .data.preview import save_data_preview, save_preview

    if (target is not None and study is None) or ((path is not None or data) and kind is None):
        raise ValueError("--target goes with --study, and --path and --data with --kind")
    if [domain is not None, study is not None, kind is not None].count(True) != 1:
        raise ValueError("give one of: a synthetic domain (data preview clipart --out grid.png), --study STUDY.yaml "
                         "[--target LABEL], or --kind folder|csv|hf --path DATA")
    if domain is not None:
        from .data.synthetic import synthetic_domain

        save_preview(synthetic_domain(domain, image_size=image_size, seed=seed), out, n=n, split=split,
                     augment=augment or "none")
    elif study is not None:
        config, recipe_augment = _study_target_data(study, target)
        save_data_preview(config, out, n=n, split=split, augment=augment or recipe_augment)
    else:
        from .config import DataConfig, apply_overrides, explain

        assert kind is not None
        if path is None:
            raise ValueError(f"--kind {kind.value} needs --path: the data's root (its folder, CSV file or hf data set)")
        settings = apply_overrides({"kind": kind.value, "root": path, "image_size": image_size, "seed": seed}, data)
        try:
            config = DataConfig.model_validate(settings)
        except ValidationError as error:
            raise ValueError(f"--data: {explain(error, DataConfig)}") from error
        save_data_preview(config, out, n=n, split=split, augment=augment or "auto")
    console.print(f"wrote {out}")


def _study_target_data(study: Path, target: Optional[str]):
    """The data of a study's target ``target`` (its only one when None) and the
    augmentation its P-T runs train with (the finetune recipe's ``augment``)."""
    from .study import load_study

    spec = load_study(study)
    labels = [t.label for t in spec.targets]
    if target is None and len(labels) > 1:
        raise ValueError(f"{study} has {len(labels)} targets ({', '.join(labels)}); choose one with --target")
    if target is not None and target not in labels:
        raise ValueError(f"{study} has no target {target!r}; its targets: {', '.join(labels)}")
    return spec.target(target or labels[0]).data, spec.finetune.augment


if __name__ == "__main__":
    app()
