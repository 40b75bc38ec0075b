"""The report: every figure and table of the paper for one study, as an HTML page and a
Markdown summary."""

from .page import build_report

__all__ = ["build_report"]
