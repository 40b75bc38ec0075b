"""The report survives odd target labels (slashes, mathtext, HTML and Markdown
characters, 260 characters, two labels with the same slug), a figure or section that
cannot be drawn, and a build killed while writing a figure."""

from __future__ import annotations

import html
import io
import multiprocessing
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from PIL import Image

from transferscope.report import build_report
from transferscope.report.figures import feature_reuse as reuse_figures
from transferscope.report.figures import training as training_figures
from transferscope.report.render import file_stem
from transferscope.study import StudySpec, run_study
from transferscope.study.executors import LocalExecutor

SPECIAL = "<i>cost $\\notacommand$</i> | *x*"  # HTML, mathtext that does not parse, Markdown
LONG = "x" * 260
SAME_SLUG = ("a/b", "a?b")
LABELS = (*SAME_SLUG, LONG, SPECIAL)
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def _data(name: str, **extra) -> dict:
    return {"kind": "synthetic", "name": name, "image_size": 16, "n_train": 32, "n_test": 16, **extra}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A finished study with the odd labels as targets: training and the block-shuffle
    sweep (a figure file per target) only, one epoch of 32 images each."""
    recipe = {"epochs": 1, "lr": 0.05, "batch_size": 16, "clean_train_examples": 16}
    off = ("cka", "distance", "mistakes", "interpolation", "basin", "rewind", "criticality", "spectrum")
    spec = {
        "name": "odd | labels", "model": {"arch": "small_resnet", "width": 4},
        "source": {"data": _data("source", num_classes=4), "recipe": recipe},
        "targets": [{"label": label, "data": _data("real", seed=i)} for i, label in enumerate(LABELS)],
        "finetune": recipe, "scratch": recipe, "seeds": [0],
        "shuffle": {"block_sizes": [4], "targets": [*SAME_SLUG, LONG]},
        "analyses": {name: {"enabled": False} for name in off},
    }
    folder = tmp_path_factory.mktemp("odd-labels")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        counts = run_study(StudySpec.model_validate(spec), folder / "study", LocalExecutor(progress=False))
        build_report(folder / "study")
    assert set(counts) == {"done"}
    return folder / "study"


def _copy(study: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(study, tmp_path / "study"))


def _listed_figures(report: Path) -> list[Path]:
    """The PNG files that summary.md shows."""
    return [report / name for name in re.findall(r"!\[.*?\]\((figures/[^)]+\.png)\)", (report / "summary.md").read_text())]


def _assert_figures_valid(report: Path) -> None:
    """Every figure listed has a PNG that opens and a complete PDF."""
    pngs = _listed_figures(report)
    assert pngs
    for png in pngs:
        pdf = png.with_suffix(".pdf")
        with Image.open(png) as image:
            image.verify()
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF"), pdf.name


def _assert_only_listed_figures(report: Path) -> None:
    assert sorted(p.name for p in (report / "figures").iterdir()) == \
        sorted(name for png in _listed_figures(report) for name in (png.name, png.with_suffix(".pdf").name))


def test_file_stem_is_safe_bounded_and_unique():
    assert file_stem("criticality_heatmap_real_P-T-s0") == "criticality_heatmap_real_P-T-s0"
    stems = [file_stem(name) for name in ("a/b", "a?b", "a-b", "x" * 260, "x" * 261, "Straße/ü", "???", "..", "")]
    assert len(set(stems)) == len(stems)
    assert all(SAFE_NAME.fullmatch(stem) and not stem.startswith(".") for stem in stems), stems


def test_odd_labels_get_safe_figure_files_and_are_shown_as_given(study):
    report = study / "report"
    page = (report / "index.html").read_text()
    summary = (report / "summary.md").read_text()
    assert 'class="error"' not in page
    _assert_figures_valid(report)
    _assert_only_listed_figures(report)
    names = [png.stem for png in _listed_figures(report)]
    assert all(SAFE_NAME.fullmatch(name) for name in names), names
    assert len(set(names)) == len(names)
    assert sum(name.startswith("feature-reuse_bars_") for name in names) == 3  # a/b and a?b apart
    for label in LABELS:
        assert html.escape(label, quote=False) in page, label[:20]
    assert SPECIAL not in page  # escaped, not markup
    assert "\\<i\\>cost \\$\\\\notacommand\\$\\</i\\> \\| \\*x\\*" in summary
    assert "odd \\| labels" in summary.splitlines()[0]
    for table in re.findall(r"(?:^\|.*\n)+", summary, flags=re.MULTILINE):
        cells = {len(re.findall(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(cells) == 1, table  # no label adds a column


def test_a_figure_or_section_that_cannot_be_drawn_is_reported_in_its_section(study, tmp_path, monkeypatch):
    def undrawable(*_args, **_kwargs) -> Figure:
        figure = Figure()
        figure.text(0.5, 0.5, "$\\notacommand$", parse_math=True)  # fails only when drawn
        return figure

    def broken(*_args, **_kwargs):
        raise RuntimeError("no curves today")

    monkeypatch.setattr(reuse_figures, "plot_feature_reuse", undrawable)
    monkeypatch.setattr(training_figures, "plot_learning_curves", broken)
    folder = _copy(study, tmp_path)
    build_report(folder)
    page = (folder / "report" / "index.html").read_text()
    curves, reuse = (re.search(rf'<section id="{key}">.*?</section>', page, re.DOTALL).group()
                     for key in ("curves", "feature-reuse"))
    assert "this section could not be drawn: RuntimeError: no curves today" in curves
    assert "<details><summary>traceback</summary>" in curves and "in broken" in curves
    assert reuse.count('class="error"') == 3
    assert "could not be drawn: ValueError" in reuse and "notacommand" in reuse
    assert reuse.count("<img ") == 1 and "<table" in reuse  # the strip and the table are still there
    summary = (folder / "report" / "summary.md").read_text()
    assert "RuntimeError: no curves today" in summary
    _assert_figures_valid(folder / "report")
    _assert_only_listed_figures(folder / "report")  # the old curves and heatmaps are gone


def _build_killed_while_writing_a_pdf(folder: Path) -> None:
    """Rebuild the report in this (forked) process, which SIGKILLs itself halfway
    through writing its first PDF."""
    savefig = Figure.savefig

    def write_half_then_die(self, fname, **kwargs):
        if kwargs.get("format") == "pdf" or str(fname).endswith(".pdf"):
            buffer = io.BytesIO()
            savefig(self, buffer, **{**kwargs, "format": "pdf"})
            with open(fname, "wb") as file:
                file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return savefig(self, fname, **kwargs)

    Figure.savefig = write_half_then_die
    os.cpu_count = lambda: 1  # the figures are written in this process
    build_report(folder, force=True)


def test_a_report_killed_while_writing_a_figure_is_redone_by_the_next_build(study, tmp_path):
    folder = _copy(study, tmp_path)
    report = folder / "report"
    child = multiprocessing.get_context("fork").Process(target=_build_killed_while_writing_a_pdf, args=(folder,))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    _assert_figures_valid(report)  # the old figures are untouched
    assert list(report.glob("figures/.*.pdf.*.tmp")), "the build was not killed while writing a PDF"
    assert not (report / "digest.txt").exists()
    build_report(folder, force=False)  # what `run` does at its end
    assert (report / "digest.txt").is_file()
    _assert_figures_valid(report)
    _assert_only_listed_figures(report)  # no temporary file of the killed build is left
