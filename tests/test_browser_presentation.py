"""Presentation mode on a 1920x1080 screen, in a real headless Chromium.

For every registered page, in normal and in presentation mode: a screenshot of the first screen
(kept in ``tests/artifacts/screenshots/1920/`` or ``$PUMAMED_SCREENSHOT_DIR/1920``, for people to
look at), and the layout rules of a talk checked from the rendered page:

* the headline numbers (metric values) are larger than in normal mode and larger than their labels;
* the sidebar is collapsed (the pages move to a bar at the top);
* the title is not clipped under the app's header;
* the page's key figure (its first chart or image panel, or its first row of metrics where the
  page opens with them) lies entirely on the first screen, and no chart is taller than the screen.

The server and browser helpers are shared with ``test_browser.py`` (``tests/browser_support.py``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser_support import ROOT, chromium_or_skip, headless_chromium, streamlit_server
from views._frame import PAGES

SCREENSHOTS = Path(os.environ.get("PUMAMED_SCREENSHOT_DIR", ROOT / "tests" / "artifacts" / "screenshots")) / "1920"
SCREEN = {"width": 1920, "height": 1080}
PAGE_TIMEOUT_S = 300
# Pages whose key figure is their first row of metrics (the charts follow further down).
KEY_IS_METRICS = {"home", "socioeconomic_factors"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_url():
    chromium_or_skip()  # before starting a server that nothing could open
    with streamlit_server(dict(os.environ), "streamlit_presentation.log") as url:
        yield url


@pytest.fixture(scope="module")
def chromium(app_url):
    with headless_chromium() as browser:
        yield browser


def _wait_idle(page, timeout_s: float = PAGE_TIMEOUT_S) -> None:
    """Until the script has stopped running for 2 s and every plotly chart has drawn."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    deadline, idle_since = time.time() + timeout_s, None
    while time.time() < deadline:
        running = page.evaluate(
            "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
            " const s = a ? a.getAttribute('data-test-script-state') : null;"
            " return s === 'running' || s === 'initial' ||"
            " !!document.querySelector('[data-testid=\"stStatusWidget\"]'); }")
        pending = page.evaluate(
            "() => Array.from(document.querySelectorAll('[data-testid=\"stPlotlyChart\"]'))"
            ".filter(c => !c.querySelector('.main-svg, canvas')).length")
        if not running and not pending:
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= 2.0:
                time.sleep(1.0)  # let the charts settle for the screenshot
                return
        else:
            idle_since = None
        time.sleep(0.25)
    raise AssertionError("the page was still running after the timeout")


LAYOUT_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const size = e => e ? parseFloat(getComputedStyle(e).fontSize) : null;
  const text = e => e ? (e.querySelector('p') || e) : null;
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
                     return {top: r.top, bottom: r.bottom, height: r.height}; };
  const value = main.querySelector('[data-testid="stMetricValue"]');
  const label = main.querySelector('[data-testid="stMetricLabel"]');
  const sidebar = document.querySelector('[data-testid="stSidebar"]');
  const header = document.querySelector('[data-testid="stHeader"]');
  const figures = Array.from(main.querySelectorAll('[data-testid="stPlotlyChart"], [data-testid="stImage"]'))
      .filter(e => e.getBoundingClientRect().height > 50);
  return {
    value: size(text(value)), label: size(text(label)), metricRow: box(value),
    sidebarWidth: sidebar ? sidebar.getBoundingClientRect().width : 0,
    headerBottom: header ? header.getBoundingClientRect().bottom : 0,
    titleTop: box(main.querySelector('h1')) ? box(main.querySelector('h1')).top : null,
    figure: box(figures[0]), tallest: Math.max(0, ...figures.map(e => e.getBoundingClientRect().height)),
    exceptions: main.querySelectorAll('[data-testid="stException"]').length,
  };
}"""


def _open(chromium, app_url, spec, presentation: bool) -> dict:
    context = chromium.new_context(viewport=SCREEN)
    page = context.new_page()
    try:
        page.goto(f"{app_url}/{'' if spec.default else spec.url_path}", wait_until="domcontentloaded",
                  timeout=60_000)
        _wait_idle(page)
        if presentation:
            page.get_by_text("Presentation mode").first.click(timeout=60_000, no_wait_after=True)
            _wait_idle(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        mode = "presentation" if presentation else "normal"
        page.screenshot(path=str(SCREENSHOTS / f"{spec.url_path}_{mode}.png"))  # the first screen only
        return page.evaluate(LAYOUT_JS)
    finally:
        context.close()


@pytest.mark.parametrize("spec", PAGES, ids=[p.url_path for p in PAGES])
def test_presentation_mode_fits_one_1920x1080_screen(app_url, chromium, spec):
    normal = _open(chromium, app_url, spec, presentation=False)
    shown = _open(chromium, app_url, spec, presentation=True)
    assert not normal["exceptions"] and not shown["exceptions"], spec.title
    assert normal["sidebarWidth"] >= 200 and shown["sidebarWidth"] < 50, \
        f"presentation mode must collapse the sidebar ({normal['sidebarWidth']} -> {shown['sidebarWidth']} px)"
    assert shown["titleTop"] is not None and shown["titleTop"] >= shown["headerBottom"], \
        f"{spec.title}: title clipped under the header ({shown['titleTop']} < {shown['headerBottom']})"
    if normal["value"] is not None:
        assert shown["value"] > normal["value"], f"{spec.title}: metric values {shown['value']} px in " \
                                                 f"presentation vs {normal['value']} px normally"
        assert shown["value"] > shown["label"], f"{spec.title}: metric value smaller than its label"
    height = SCREEN["height"]
    assert shown["tallest"] <= height - shown["headerBottom"], \
        f"{spec.title}: a chart {shown['tallest']:.0f} px tall cannot fit one screen"
    key = shown["metricRow"] if spec.url_path in KEY_IS_METRICS or shown["figure"] is None else shown["figure"]
    assert key is not None, f"{spec.title}: no key figure found"
    assert key["bottom"] <= height, f"{spec.title}: the key figure ends at {key['bottom']:.0f} px, below the fold"
