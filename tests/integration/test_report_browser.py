"""report.html in a real browser (Debian's chromium, driven by playwright; it never downloads one): it loads with
no console error and no request but its own file, every image decodes, the print stylesheet applies (and it
prints to a PDF of several pages), and a screenshot is saved. Without chromium this fails under CI (the env CI set; .ci/run installs it) and skips
elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import run_cli
from report_run import build_report_run, light_copy

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("LMFORGE_TEST_CHROMIUM", "/usr/bin/chromium")
OFFLINE = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def report_run(debug_data_run, tmp_path_factory) -> Path:
    return build_report_run(debug_data_run, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path, checked before the run is built."""
    missing = [what for what, there in (("chromium", shutil.which(CHROMIUM)),
                                        ("the playwright package", _has_playwright())) if not there]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install chromium; pip install -r requirements-dev.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return shutil.which(CHROMIUM)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def test_report_in_a_headless_browser(chromium, report_run, tmp_path):
    from playwright.sync_api import sync_playwright

    root = light_copy(report_run, tmp_path / "run")
    code, out, err = run_cli("report", str(root))
    assert code == 0, err
    url = (root / "report.html").resolve().as_uri()
    errors, requests = [], []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=OFFLINE, viewport={"width": 1366, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda request: requests.append(request.url))
            page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
            page.goto(url, wait_until="load")
            images = page.eval_on_selector_all("img", "all => all.map(i => [i.alt, i.complete, i.naturalWidth])")
            sections = page.eval_on_selector_all("section", "all => all.map(s => s.id)")
            heading = page.inner_text("h1")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            page.emulate_media(media="print")
            nav_in_print = page.eval_on_selector("nav", "n => getComputedStyle(n).display")
            pdf = page.pdf(format="A4")  # what printing makes
        finally:
            context.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("data:")] == [url]
    assert len(images) >= 10 and all(done and width > 0 for _, done, width in images), images
    assert sections[0] == "glance" and sections[-1] == "recipe" and "secure" in sections
    assert heading == "lmforge run report: debug"
    assert nav_in_print == "none"
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) >= 3
    shot = (tmp_path / "report.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000
