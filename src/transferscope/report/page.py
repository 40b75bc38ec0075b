"""The report: one self-contained HTML page (figures embedded) and a Markdown summary,
with every figure and table of the paper for one study, regenerated from its results.

Each section is built by one function from the result tables; a section whose jobs are
missing says so instead of breaking the page."""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jinja2
import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from .. import __version__
from ..io import write_text
from ..study.results import collect_results
from ..study.runner import open_study
from .sections import SECTIONS

matplotlib.use("Agg")


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


def _save(figure: Figure, folder: Path, stem: str) -> str:
    """Write PNG and PDF; return the PNG as base64 for embedding."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    (folder / f"{stem}.png").write_bytes(buffer.getvalue())
    figure.savefig(folder / f"{stem}.pdf")
    return base64.b64encode(buffer.getvalue()).decode()


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(classes="data", index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0)


def build_report(root: str | Path) -> Path:
    """Write ``root/report/index.html``, ``summary.md`` and ``figures/``; return the HTML path."""
    root = Path(root)
    spec, store, jobs = open_study(root)
    tables = collect_results(spec, store, jobs)
    folder = root / "report"
    figures_dir = folder / "figures"
    states = Counter(store.state(job) for job in jobs)
    sections = []
    for key, title, builder in SECTIONS:
        section = Section(key, title)
        try:
            builder(section, tables, spec, store, jobs)
        except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
            section.error = f"this section could not be drawn: {type(error).__name__}: {error}"
        for name, figure in section.figures:
            stem = f"{key}_{name}"
            section.rendered_figures.append({"name": name, "name_stem": stem, "file": f"figures/{stem}.png",
                                             "data": _save(figure, figures_dir, stem)})
        section.rendered_tables = [{"name": name, "html": _html_table(frame)} for name, frame in section.tables]
        sections.append(section)
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
    html_path = folder / "index.html"
    write_text(html_path, environment.get_template("index.html.j2").render(**context))
    write_text(folder / "summary.md", _markdown(sections, context))
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
            lines += ["", f"**{name}**", "", frame.to_markdown(index=False, floatfmt=".4g")]
        lines.append("")
    return "\n".join(lines)


SectionBuilder = Callable[[Section, dict, object, object, list], None]
