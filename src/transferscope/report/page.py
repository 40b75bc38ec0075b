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
import re
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import jinja2
import matplotlib
import pandas as pd
from markupsafe import Markup, escape
from matplotlib.figure import Figure

from .. import __version__
from ..analysis.claims import INCONCLUSIVE
from ..io import write_json, write_text
from ..study.plan import Job, plans_kept, source_plans
from ..study.results import collect_results
from ..study.runner import open_study
from ..study.spec import StudySpec
from ..study.store import REPORT_TIMES
from ..timing import Stages
from .render import PLAIN_TEXT, file_stem, save_figure_timed
from .sections import SECTIONS, compared_sources
from .tables import constants_text, display_table, html_table


@dataclass
class Failure:
    """What could not be drawn, the error in one line, and its traceback."""

    what: str
    message: str
    traceback: str

    @classmethod
    def of(cls, what: str, error: BaseException) -> Failure:
        return cls(what, f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error)))


@dataclass
class Section:
    key: str
    title: str
    caption: str = ""
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    missing: str = ""
    not_run: bool = False  # missing because the study does not ask for it (sections._not_asked)
    failures: list[Failure] = field(default_factory=list)
    rendered_figures: list[dict] = field(default_factory=list)
    rendered_tables: list[dict] = field(default_factory=list)


def _outcome(call: Callable[[], tuple[str, float]]) -> tuple[str, float] | Exception:
    """The result of ``call()``, or the exception it raised."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - one figure that cannot be drawn must not stop the others
        return error


class _FigureWriter:
    """Writes figures (PNG + PDF) as the sections make them: in parallel worker processes
    when there are several cores (drawing dominates the report's time), so drawing
    overlaps the building of the later sections; in this process otherwise."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        workers = os.cpu_count() or 1
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 \
            else None
        self.calls: list[Callable[[], tuple[str, float]]] = []

    def submit(self, figure: Figure, stem: str) -> None:
        if self.pool is None:
            self.calls.append(partial(save_figure_timed, figure, self.folder, stem))
        else:
            self.calls.append(self.pool.submit(save_figure_timed, pickle.dumps(figure), self.folder, stem).result)

    def results(self) -> list[tuple[str, float] | Exception]:
        """Each figure's PNG as base64 with the seconds its drawing took, in the order
        submitted, or for a figure that could not be drawn, the exception."""
        return [_outcome(call) for call in self.calls]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def report_digest(store, jobs) -> str:
    """What the report depends on: the state of every job, and the package version."""
    states = sorted((job.id, store.state(job)) for job in jobs)
    return hashlib.sha256(json.dumps([__version__, states]).encode()).hexdigest()[:16]


def build_report(root: str | Path, force: bool = True) -> Path:
    """Write ``root/report/index.html``, ``summary.md`` and ``figures/``; return the HTML
    path. With ``force=False`` an existing report is kept when no job changed state.

    ``digest.txt`` is removed first and written last, so a build that is killed midway
    is redone by the next one. A section or figure that cannot be drawn says why on the
    page; the rest of the report is still written. The study is planned once
    (:func:`~transferscope.study.plan.plans_kept`)."""
    with plans_kept():
        return _build_report(Path(root), force)


def _build_report(root: Path, force: bool) -> Path:
    spec, store, jobs = open_study(root)
    folder = root / "report"
    html_path = folder / "index.html"
    digest = report_digest(store, jobs)
    if not force and html_path.is_file() and (folder / "digest.txt").is_file() \
            and (folder / "digest.txt").read_text() == digest:
        return html_path
    (folder / "digest.txt").unlink(missing_ok=True)
    stages = Stages()
    with stages.stage("results"):
        tables = collect_results(spec, store, jobs)
    figures_dir = folder / "figures"
    states = Counter(store.state(job) for job in jobs)
    sections = []
    times: dict[str, dict] = {}
    drawn: list[tuple[Section, str, str]] = []  # section, figure name, file stem
    with closing(_FigureWriter(figures_dir)) as writer:
        for key, title, builder, section_tables, inputs in section_plan(spec, tables, jobs):
            section = Section(key, title)
            with stages.stage("sections"):
                built = _build_section(section, builder, section_tables, store=store, **inputs)
                for name, figure in section.figures:
                    drawn.append((section, name, file_stem(f"{section.key}_{name}")))
                    writer.submit(figure, drawn[-1][2])
            times[key] = {"build": built, "figures": 0, "figure_seconds": 0.0}
            sections.append(section)
        with stages.stage("figures"):
            outcomes = writer.results()
    for (section, name, stem), outcome in zip(drawn, outcomes):
        if isinstance(outcome, Exception):
            section.failures.append(Failure.of(f"figure {name!r} could not be drawn", outcome))
        else:
            section.rendered_figures.append({"name": name, "name_stem": stem, "file": f"figures/{stem}.png",
                                             "data": outcome[0]})
            times[section.key]["figures"] += 1
            times[section.key]["figure_seconds"] += outcome[1]
    written = {f"{f['name_stem']}.{ext}" for section in sections for f in section.rendered_figures
               for ext in ("png", "pdf")}
    for stale in figures_dir.glob("*.*"):
        if stale.name not in written:
            stale.unlink()  # a figure of an earlier report that this one no longer draws, or a killed write
    context = page_context(spec, sections, ", ".join(f"{n} jobs {state}" for state, n in states.items()))
    with stages.stage("page"):
        write_text(html_path, render_page(context))
        write_text(folder / "summary.md", _markdown(sections, context))
    write_json(root / REPORT_TIMES, {"seconds": stages.elapsed(), "stages": stages.snapshot(), "sections": times})
    write_text(folder / "digest.txt", digest)
    return html_path


def page_context(spec: StudySpec, sections: list[Section], counts: str) -> dict:
    """What the page and the summary show of a study: its ``sections`` (built) and the
    ``counts`` of its jobs per state ("12 jobs done")."""
    return {
        "study": spec, "version": __version__, "sections": sections, "counts": counts,
        "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "source": ", ".join(s.label for s in spec.sources) if spec.sources else spec.one_source.origin,
        "targets": ", ".join(t.label for t in spec.targets),
        "model": f"{spec.model.arch} (width {spec.model.width})" if spec.model.arch == "small_resnet" else spec.model.arch,
    }


_CODE_SPAN = re.compile(r"`([^`]+)`")


def code_spans(text: str) -> Markup:
    """``text`` as HTML: escaped, its Markdown code spans (`` `analyses.cka.enabled` ``)
    shown as ``<code>`` (a section's message says what to set in Markdown, which
    ``summary.md`` shows as is)."""
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))


def render_page(context: dict) -> str:
    """The HTML page of :func:`page_context`."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("transferscope.report", "templates"),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]))
    environment.filters["code_spans"] = code_spans
    return environment.get_template("index.html.j2").render(**context)


def section_plan(spec: StudySpec, tables: dict, jobs: list[Job]) -> list[tuple]:
    """The report's sections as ``(key, title, builder, tables, inputs)``: :data:`SECTIONS`
    on the study's tables; for several sources, the findings (every source's) and the
    comparison of the sources, then every other section once per source, on that
    source's rows (``source`` column) and its one-source study."""
    if not spec.sources:
        return [(key, title, builder, tables, {"spec": spec, "jobs": jobs}) for key, title, builder in SECTIONS]
    (key, title, builder), *rest = SECTIONS
    plan = [(key, title, builder, tables, {"spec": spec, "jobs": jobs}),
            ("sources", "Sources compared", compared_sources, tables, {"spec": spec, "jobs": jobs})]
    for label, single, own in source_plans(spec):
        own_tables = {name: frame[frame["source"] == label].drop(columns="source")
                      for name, frame in tables.items() if "source" in frame}
        plan += [(f"{key}-{file_stem(str(label))}", f"{label}: {title}", builder, own_tables,
                  {"spec": single, "jobs": own}) for key, title, builder in rest]
    return plan


def _build_section(section: Section, builder, tables: dict, **inputs) -> float:
    """Let ``builder`` fill ``section`` from the tables; an error is shown in the section
    (one broken section must not hide the others), and its tables are made HTML. Returns
    the seconds it took."""
    started = time.perf_counter()
    try:
        with matplotlib.rc_context(PLAIN_TEXT):
            builder(section, tables, **inputs)
    except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
        section.failures.append(Failure.of("this section could not be drawn", error))
    section.rendered_tables = [{"name": name, "html": html_table(frame)} for name, frame in section.tables]
    return time.perf_counter() - started


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|$#])")


def _markdown_text(text: str) -> str:
    """``text`` shown as given in Markdown, on one line (it may hold a target label):
    characters that Markdown, its tables or its math would read are backslash-escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))


def _markdown_table(frame: pd.DataFrame) -> str:
    """The table as on the page (same precision, constant columns stated once above it,
    all rows), its text cells shown as given (escaped, not read as numbers)."""
    table = display_table(frame)
    cells = pd.DataFrame([[cell if numeric else _markdown_text(cell) for cell, numeric in zip(row, table.numeric)]
                          for row in table.rows], columns=table.columns)
    if "verdict" in cells:  # findings: a verdict stands out as on the page
        cells["verdict"] = cells["verdict"].map(lambda verdict: f"*{verdict}*" if verdict == INCONCLUSIVE
                                                else f"**{verdict}**")
    constants = f"{_markdown_text(constants_text(table.constants))}\n\n" if table.constants else ""
    return constants + cells.to_markdown(index=False, disable_numparse=True, colalign=[
        "right" if numeric else "left" for numeric in table.numeric])


def write_report(root: str | Path, force: bool = True) -> Path:
    """:func:`build_report` holding the study folder's lock (as ``transferscope run`` and
    ``transferscope report`` do), so that no run changes the folder meanwhile."""
    with plans_kept():
        _, store, _ = open_study(root)
        with store.lock():
            return build_report(root, force=force)


def _markdown(sections: list[Section], context: dict) -> str:
    lines = [f"# What is being transferred? — {_markdown_text(context['study'].name)}", "",
             f"transferscope {context['version']}, {context['generated']}; {context['counts']}.", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.missing:
            lines += [section.missing, ""]
        for failure in section.failures:
            lines += [_markdown_text(f"{failure.what}: {failure.message}"), ""]
        if section.caption:
            lines += [_markdown_text(section.caption), ""]
        lines += [f"![{_markdown_text(f['name'])}]({f['file']})" for f in section.rendered_figures]
        for name, frame in section.tables:
            lines += ["", f"**{name}**", "", _markdown_table(frame)]
        lines.append("")
    return "\n".join(lines)
