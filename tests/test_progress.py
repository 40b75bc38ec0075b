"""Progress bars of long analyses: on only for a terminal, off with TRANSFERSCOPE_PROGRESS=0,
and never changing what is iterated."""

import io
import sys

from transferscope.progress import progress, progress_enabled


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv("TRANSFERSCOPE_PROGRESS", raising=False)
    assert not progress_enabled()
    assert list(progress(iter(range(5)), "counting")) == [0, 1, 2, 3, 4]
    assert sys.stderr.getvalue() == ""


def test_progress_on_for_a_terminal_and_off_by_environment(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    monkeypatch.delenv("TRANSFERSCOPE_PROGRESS", raising=False)
    assert progress_enabled()
    assert list(progress(range(3), "counting", total=3)) == [0, 1, 2]
    monkeypatch.setenv("TRANSFERSCOPE_PROGRESS", "0")
    assert not progress_enabled()
