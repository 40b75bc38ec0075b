"""The report: every figure and table of the paper for one study, as an HTML page and a
Markdown summary. :func:`build_report` writes it; :func:`write_report` does so holding
the study folder's lock."""


def build_report(*args, **kwargs):
    """See :func:`transferscope.report.page.build_report` (imported on first use, so that
    figure-writing worker processes need not load the analyses)."""
    from .page import build_report as build

    return build(*args, **kwargs)


def write_report(*args, **kwargs):
    """See :func:`transferscope.report.page.write_report` (imported on first use)."""
    from .page import write_report as write

    return write(*args, **kwargs)


__all__ = ["build_report", "write_report"]
