"""The report of a small study as people read it: its tables in block-size order at the
page's precision, and (marked ``browser``) the page opened alone, offline, in the system's
Chromium at 1280×800: nothing wider than the window, every figure loaded, every in-page
link resolving, no console error, long tables opening, figures kept whole in print."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from transferscope.report import build_report
from transferscope.study import StudySpec, run_study
from transferscope.study.executors import LocalExecutor

LABEL = "real-" + "x" * 150  # a long label without spaces must wrap, not widen the page
INSTALL = ("install it with `apt-get install -y chromium` (what .ci/run does), or deselect this test with "
           "`pytest -m 'not browser'`")


def _data(name: str, **extra) -> dict:
    return {"kind": "synthetic", "name": name, "image_size": 16, "n_train": 48, "n_test": 32, **extra}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The HTML report of a finished study: one target, one seed, one epoch each; the
    block-shuffle sweep (8, 2, *), mistakes (p-values) and rewinding (a long table)."""
    recipe = {"epochs": 1, "lr": 0.05, "batch_size": 16, "clean_train_examples": 16}
    off = ("cka", "distance", "interpolation", "basin", "criticality", "spectrum")
    spec = {
        "name": "browser", "model": {"arch": "small_resnet", "width": 4},
        "source": {"data": _data("source", num_classes=4), "recipe": recipe},
        "targets": [{"label": LABEL, "data": _data("real")}],
        "finetune": recipe, "scratch": recipe, "seeds": [0],
        "shuffle": {"block_sizes": [8, 2, "*"]}, "checkpoints": {"epochs": []},
        "analyses": {"mistakes": {"n_bootstrap": 20}, "rewind": {"max_examples": 16},
                     **{name: {"enabled": False} for name in off}},
    }
    folder = tmp_path_factory.mktemp("browser") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))
        assert set(run_study(StudySpec.model_validate(spec), folder, LocalExecutor(progress=False))) == {"done"}
        return build_report(folder)


def _section(page: str, key: str) -> str:
    return re.search(rf'<section id="{key}">.*?</section>', page, re.DOTALL).group()


def _first_table(html: str) -> dict[str, list[str]]:
    """The columns (header -> cells) of the first table in ``html``."""
    table = re.search(r"<table.*?</table>", html, re.DOTALL).group()
    headers = [re.sub(r"<wbr>", "", header) for header in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)]
    return {header: [row[i] for row in rows if row] for i, header in enumerate(headers)}


def test_tables_show_block_sizes_in_order_and_numbers_at_the_page_precision(report):
    page = report.read_text()
    sweep = _first_table(_section(page, "feature-reuse").split("<h4>Block-shuffle sweep</h4>")[1])
    assert sweep["block_size"] == ["16", "8", "2", "*"]
    assert all(re.fullmatch(r"0\.\d{3}", cell) for cell in sweep["PT_final_score mean ± std"])  # one seed: no std
    mistakes = _first_table(_section(page, "mistakes"))
    assert all(re.fullmatch(r"\d\.\de[+-]\d\d", p) for p in mistakes["mcnemar_p"]), mistakes["mcnemar_p"]
    assert all(re.fullmatch(r"0\.\d{3}", cell) for cell in mistakes["common_fraction"])
    rewind = _section(page, "rewind")
    assert '<details class="all-rows"><summary>All 24 rows</summary>' in rewind
    assert re.search(r"Same in every row: .*<code>bn</code> = follow", rewind)
    assert "rewind-" not in rewind  # job ids stay in results/


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[test]'")
    return sync_playwright


@pytest.mark.browser
def test_report_reads_in_chromium_at_1280_pixels_alone_and_offline(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(f"the browser test needs the system's Chromium (no `chromium` on PATH): {INSTALL}")
    alone = tmp_path / "index.html"  # no figures/ folder beside it: the page is one file
    shutil.copy(report, alone)
    problems: list[str] = []
    with _playwright()() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.route(re.compile(r"^(?!file:|data:)"), lambda route: (problems.append(route.request.url), route.abort()))
            page.goto(alone.as_uri(), wait_until="load")
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            images = page.evaluate("Array.from(document.images, image => [image.alt, image.complete && image.naturalWidth])")
            links = page.evaluate("""Array.from(document.querySelectorAll('a[href^="#"]'), link =>
                [link.getAttribute('href'), !!document.getElementById(decodeURIComponent(link.hash.slice(1)))])""")
            sections = page.evaluate("Array.from(document.querySelectorAll('section[id]'), section => section.id)")
            rewind = page.locator("#rewind .table-block")
            rewind.locator("summary").click()
            opened = [rewind.locator(".preview").is_visible(), rewind.locator("details .scroll").is_visible()]
            page.emulate_media(media="print")
            breaks = page.evaluate("Array.from(document.querySelectorAll('figure'), f => getComputedStyle(f).breakInside)")
        finally:
            browser.close()
    assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px window"
    assert len(images) == report.read_text().count("<img ") >= 5
    assert all(loaded for _, loaded in images), [alt for alt, loaded in images if not loaded]
    assert all(found for _, found in links), [href for href, found in links if not found]
    assert {href for href, _ in links} == {f"#{key}" for key in sections}  # the contents list every section
    assert opened == [False, True]  # opening a long table shows all its rows instead of the first ones
    assert set(breaks) == {"avoid"}
    assert not problems, problems
