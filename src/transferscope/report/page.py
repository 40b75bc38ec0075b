"""The report: one self-contained HTML page (figures embedded) and a Markdown summary,
with every figure and table of the paper for one study, regenerated from its results.

Each section is built by one function from the result tables; a section whose jobs are
missing says so instead of breaking the page."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import pickle
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jinja2
import pandas as pd
from matplotlib.figure import Figure

from .. import __version__
from ..io import write_text
from ..study.results import collect_results
from ..study.runner import open_study
from .render import save_figure
from .sections import SECTIONS


@dataclass
class Section:
    key: str
    title: str
    caption: str = ""
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    missing: str = ""
    error: str = ""
    rendered_figures: list[dict] = field(default_factory=list)
    rendered_tables: list[dict] = field(default_factory=list)


def _save_all(figures: list[tuple[Figure, str]], folder: Path) -> list[str]:
    """Write every figure (PNG + PDF), in parallel worker processes when there are
    several cores (drawing dominates the report's time); return the PNGs as base64."""
    workers = min(os.cpu_count() or 1, len(figures))
    if workers < 2:
        return [save_figure(figure, folder, stem) for figure, stem in figures]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(save_figure, pickle.dumps(figure), folder, stem) for figure, stem in figures]
        return [future.result() for future in futures]


def report_digest(store, jobs) -> str:
    """What the report depends on: the state of every job, and the package version."""
    states = sorted((job.id, store.state(job)) for job in jobs)
    return hashlib.sha256(json.dumps([__version__, states]).encode()).hexdigest()[:16]


def _with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """A named index (the pairs of Table 1, the targets of Table 2) as leading columns."""
    return frame.reset_index() if any(name is not None for name in frame.index.names) else frame


def _html_table(frame: pd.DataFrame) -> str:
    return _with_labels(frame).to_html(classes="data", index=False, float_format=lambda v: f"{v:.4g}", na_rep="–",
                                       border=0)


def build_report(root: str | Path, force: bool = True) -> Path:
    """Write ``root/report/index.html``, ``summary.md`` and ``figures/``; return the HTML
    path. With ``force=False`` an existing report is kept when no job changed state."""
    root = Path(root)
    spec, store, jobs = open_study(root)
    folder = root / "report"
    html_path = folder / "index.html"
    digest = report_digest(store, jobs)
    if not force and html_path.is_file() and (folder / "digest.txt").is_file() \
            and (folder / "digest.txt").read_text() == digest:
        return html_path
    tables = collect_results(spec, store, jobs)
    figures_dir = folder / "figures"
    states = Counter(store.state(job) for job in jobs)
    sections = []
    for key, title, builder in SECTIONS:
        section = Section(key, title)
        try:
            builder(section, tables, spec, store, jobs)
        except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
            section.error = f"this section could not be drawn: {type(error).__name__}: {error}"
        section.rendered_tables = [{"name": name, "html": _html_table(frame)} for name, frame in section.tables]
        sections.append(section)
    drawn = [(section, name, figure, f"{section.key}_{name}") for section in sections for name, figure in section.figures]
    images = _save_all([(figure, stem) for _, _, figure, stem in drawn], figures_dir)
    for (section, name, _, stem), data in zip(drawn, images):
        section.rendered_figures.append({"name": name, "name_stem": stem, "file": f"figures/{stem}.png", "data": data})
    written = {f"{f['name_stem']}.{ext}" for section in sections for f in section.rendered_figures
               for ext in ("png", "pdf")}
    for stale in figures_dir.glob("*.*"):
        if stale.name not in written:
            stale.unlink()  # a figure of an earlier report that this one no longer draws
    context = {
        "study": spec, "version": __version__, "sections": sections,
        "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "counts": ", ".join(f"{n} jobs {state}" for state, n in states.items()),
        "source": spec.source.data.name, "targets": ", ".join(t.label for t in spec.targets),
        "model": f"{spec.model.arch} (width {spec.model.width})" if spec.model.arch == "small_resnet" else spec.model.arch,
    }
    environment = jinja2.Environment(loader=jinja2.PackageLoader("transferscope.report", "templates"),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]))
    write_text(html_path, environment.get_template("index.html.j2").render(**context))
    write_text(folder / "summary.md", _markdown(sections, context))
    write_text(folder / "digest.txt", digest)
    return html_path


def _markdown(sections: list[Section], context: dict) -> str:
    lines = [f"# What is being transferred? — {context['study'].name}", "",
             f"transferscope {context['version']}, {context['generated']}; {context['counts']}.", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for text in (section.missing, section.error, section.caption):
            if text:
                lines += [text, ""]
        lines += [f"![{f['name']}]({f['file']})" for f in section.rendered_figures]
        for name, frame in section.tables:
            lines += ["", f"**{name}**", "", _with_labels(frame).to_markdown(index=False, floatfmt=".4g")]
        lines.append("")
    return "\n".join(lines)


SectionBuilder = Callable[[Section, dict, object, object, list], None]
