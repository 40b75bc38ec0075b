"""The README stays true: every command it shows names a real subcommand, real files and
options that parse; the example studies it points at validate and plan."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands(prefix: str) -> list[list[str]]:
    """Command lines in the README's bash blocks that start with ``prefix`` (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line, comments=True)[1:] for line in text.splitlines() if line.startswith(prefix)]


CLI_COMMANDS = _commands(".venv/bin/transferscope ")


def _parse(args: list[str]) -> None:
    """Parse a command line as the CLI would, without running it: click parses every
    argument (an unknown subcommand or option is an error) before the eager --help exits."""
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, f"transferscope {' '.join(args)}: {result.output}"


def test_readme_shows_every_command():
    shown = {args[0] for args in CLI_COMMANDS}
    assert shown >= {"demo", "plan", "run", "status", "report", "train", "data"}


@pytest.mark.parametrize("args", CLI_COMMANDS, ids=[" ".join(a[:2]) for a in CLI_COMMANDS])
def test_readme_command_parses_and_its_files_exist(args):
    _parse(args)
    for arg in args:
        if arg.endswith((".yaml", ".py")):
            assert (ROOT / arg).is_file(), f"README names {arg}, which does not exist"


@pytest.mark.parametrize("study", sorted({a[1] for a in CLI_COMMANDS if a[0] in ("plan", "run")}))
def test_readme_studies_plan(study):
    result = CliRunner().invoke(app, ["plan", str(ROOT / study)])
    assert result.exit_code == 0, result.output
    assert "pending" in result.output


@pytest.mark.parametrize("script", _commands(".venv/bin/python benchmarks/"))
def test_readme_benchmarks_exist(script):
    assert (ROOT / script[0]).is_file(), f"README names {script[0]}, which does not exist"
