"""The ``transferscope`` command line (typer): demo, run, plan, status, report, train,
data preview."""

from __future__ import annotations

import os
import sys
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="What is being transferred in transfer learning? Every analysis of Neyshabur, Sedghi & "
                       "Zhang (NeurIPS 2020) on your model and data.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Inspect data domains.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()


class ExecutorName(str, Enum):
    local = "local"
    pool = "pool"
    slurm = "slurm"


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code=2)


def _executor(name: ExecutorName, workers: int, slurm_options: list[str]):
    from .config import apply_overrides
    from .study.executors import LocalExecutor, PoolExecutor, SlurmExecutor, SlurmSettings

    if name is ExecutorName.local:
        return LocalExecutor(progress=sys.stderr.isatty())
    if name is ExecutorName.pool:
        return PoolExecutor(workers)
    return SlurmExecutor(SlurmSettings.model_validate(apply_overrides({}, slurm_options)))


def preset_path(name: str) -> Path:
    return Path(str(resources.files("transferscope") / "presets" / f"{name}.yaml"))


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="study folder to write"),
         executor: ExecutorName = typer.Option(ExecutorName.pool, help="local, pool or slurm"),
         workers: int = typer.Option(os.cpu_count() or 1, help="processes for --executor pool (default: one per core)")
         ) -> None:
    """Run the built-in demo study (synthetic domains, small ResNet, CPU) end to end."""
    run(preset_path("demo"), out=out, executor=executor, workers=workers, slurm=[], no_report=False)


@app.command()
def run(study: Path = typer.Argument(..., help="study YAML file"),
        out: Path = typer.Option(..., help="study folder (created; re-running resumes)"),
        executor: ExecutorName = typer.Option(ExecutorName.local, help="local, pool or slurm"),
        workers: int = typer.Option(2, help="processes for --executor pool (one GPU each when there are GPUs)"),
        slurm: list[str] = typer.Option([], help="SLURM setting key=value, e.g. partition=gpu, time_minutes=600, "
                                                 "max_concurrent=32, cluster=local"),
        no_report: bool = typer.Option(False, "--no-report", help="skip writing the report at the end")) -> None:
    """Run every job of a study that is not complete, then write its report."""
    from .study import load_study, run_study

    try:
        spec = load_study(study)
        counts = run_study(spec, out, _executor(executor, workers, slurm), console, report=not no_report)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    if counts.get("failed"):
        console.print(f"[yellow]{counts['failed']} job(s) failed; `transferscope status {out}` shows why[/]")
        raise typer.Exit(code=1)


@app.command()
def plan(study: Path = typer.Argument(..., help="study YAML file"),
         out: Optional[Path] = typer.Option(None, help="study folder, to show what is already done")) -> None:
    """List the jobs of a study, what is done, and the compute each needs."""
    from .study import load_study
    from .study.runner import plan_table

    try:
        console.print(plan_table(load_study(study), out))
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))


@app.command()
def status(out: Path = typer.Argument(..., help="study folder")) -> None:
    """Done / running / failed / pending jobs of a study folder, with the errors of failed ones."""
    from .study.runner import status_table

    try:
        table, failed = status_table(out)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    console.print(table)
    for job, error in failed:
        console.print(f"[red]failed[/] {job.label} ({job.id}): {error}")


@app.command()
def report(out: Path = typer.Argument(..., help="study folder")) -> None:
    """(Re)write the study's report from what is complete."""
    from .report import build_report

    try:
        console.print(f"report: {build_report(out)}")
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))


@app.command()
def train(config: Path = typer.Argument(..., help="training config YAML (TrainConfig)"),
          out: Path = typer.Option(..., help="run folder (re-running resumes)"),
          overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. epochs=5 data.block_size=4")) -> None:
    """Train one run (P, P-T with init=..., or RI-T) from a YAML file."""
    from pydantic import ValidationError

    from .config import TrainConfig, apply_overrides, explain, load_yaml
    from .train import TrainingFailed
    from .train import train as train_run

    if not config.is_file():
        _fail(f"config file not found: {config}")
    try:
        settings = TrainConfig.model_validate(apply_overrides(load_yaml(config) or {}, overrides or []))
        result = train_run(settings, out, progress=sys.stderr.isatty())
    except ValidationError as error:
        _fail(f"invalid training config {config}:\n{explain(error, TrainConfig)}")
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    except TrainingFailed as error:
        console.print(f"[red]run failed:[/] {error}")
        raise typer.Exit(code=1) from None
    final = result.status["final"]
    console.print(f"done: {out} — " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()
                                                 if k.startswith("test_")))


@data_app.command("preview")
def data_preview(domain: str = typer.Argument(..., help="synthetic domain: source, real, clipart, sketch, xray"),
                 out: Path = typer.Option(..., help="PNG file to write"),
                 n: int = typer.Option(64, help="number of examples"),
                 split: str = typer.Option("train", help="train or test"),
                 image_size: int = typer.Option(32, help="image size in pixels"),
                 seed: int = typer.Option(0, help="generator seed")) -> None:
    """Write a grid of example images of a built-in domain."""
    from .data.preview import save_preview
    from .data.synthetic import synthetic_domain

    try:
        save_preview(synthetic_domain(domain, image_size=image_size, seed=seed), out, n=n, split=split)
    except (ValueError, KeyError) as error:
        _fail(str(error))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
