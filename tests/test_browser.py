"""A real headless Chromium opens every registered page of ``streamlit run app.py``, twice: on the
demo pack (no data directory: what a fresh clone serves) and on the full data (``PUMAMED_DATA_DIR``).

Fails on any Streamlit exception box shown, and on a "not found" message. Screenshots are kept in
``tests/artifacts/screenshots/`` (or ``$PUMAMED_SCREENSHOT_DIR``) for people to look at.
The page list comes from the router's registry, so new pages are covered automatically.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser_support import ROOT, headless_chromium, streamlit_server
from views._frame import PAGES

SCREENSHOTS = Path(os.environ.get("PUMAMED_SCREENSHOT_DIR", ROOT / "tests" / "artifacts" / "screenshots"))
PAGE_TIMEOUT_S = 240

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(request):
    """A ``streamlit run app.py`` server on the data source ``request.param`` (``pack``: no
    PUMAMED_DATA_DIR, run from the repository, whose data/ holds only its README; ``full``: the
    real data directory)."""
    source = getattr(request, "param", "full")
    env = dict(os.environ)
    if source == "pack":
        env.pop("PUMAMED_DATA_DIR", None)
    elif not Path(env.get("PUMAMED_DATA_DIR", "/nonexistent")).is_dir():
        message = "the full data directory (PUMAMED_DATA_DIR) is not set or absent"
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must run the browser test on the full data")
        pytest.skip(message)
    with streamlit_server(env, f"streamlit_server_{source}.log") as url:
        yield url, source


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as chromium:
        yield chromium


def wait_for_script_idle(page, timeout_s: float = PAGE_TIMEOUT_S) -> None:
    """Wait until the app has rendered and the script is no longer running (stable for 2 s)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    idle_since = None
    while time.time() < deadline:
        state = page.evaluate(
            "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
            " return a ? a.getAttribute('data-test-script-state') : null; }"
        )
        # "initial" means the script has not started yet: not idle.
        running = (state in ("running", "initial") or
                   page.locator('[data-testid="stStatusWidget"]').count() > 0)
        if not running:
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= 2.0:
                return
        else:
            idle_since = None
        time.sleep(0.25)
    raise AssertionError("the page was still running after the timeout")


def wait_for_charts(page, timeout_s: float = 60) -> None:
    """Wait until every plotly chart on the page has drawn its SVG/canvas, then let it settle,
    so that screenshots show the figures rather than placeholders."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        pending = page.evaluate(
            "() => Array.from(document.querySelectorAll('[data-testid=\"stPlotlyChart\"]'))"
            ".filter(c => !c.querySelector('.main-svg, canvas')).length"
        )
        if pending == 0:
            break
        time.sleep(0.5)
    time.sleep(1.0)


# The full data in both modes; the pack in the normal mode only (presentation mode changes the
# layout, not the data, and each browser pass costs minutes on a 2-core machine).
VARIANTS = [("full", False), ("full", True), ("pack", False)]


@pytest.mark.parametrize("spec", PAGES, ids=[p.url_path for p in PAGES])
@pytest.mark.parametrize("server,presentation", VARIANTS, ids=["full-normal", "full-presentation", "pack-normal"],
                         indirect=["server"])
def test_page_opens_without_exception(server, browser, spec, presentation):
    server, source = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    try:
        path = "" if spec.default else spec.url_path
        page.goto(f"{server}/{path}", wait_until="domcontentloaded", timeout=60_000)
        wait_for_script_idle(page)
        not_found = page.get_by_text("Page not found")
        assert not_found.count() == 0, f"{spec.url_path}: Streamlit said 'Page not found'"
        if presentation:
            page.get_by_text("Presentation mode").first.click(timeout=60_000, no_wait_after=True)
            wait_for_script_idle(page)
        wait_for_charts(page)
        name = f"{spec.url_path}{'_presentation' if presentation else ''}{'_pack' if source == 'pack' else ''}.png"
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
        exceptions = page.locator('[data-testid="stException"]')
        texts = [exceptions.nth(i).inner_text()[:500] for i in range(exceptions.count())]
        assert not texts, f"exception shown on {spec.title}: {texts}"
        body = page.locator('[data-testid="stMain"], section.main').first.inner_text()
        heading = "PumaMed Explorer" if spec.default else spec.title  # the page's own st.title
        assert heading in body, f"{spec.title}: its title {heading!r} is not on the page"
        assert len(body.replace(heading, "").strip()) > 200, f"{spec.title} shows little beyond its title"
        assert "not found" not in body.lower(), f"{spec.title} on the {source} data says something is missing"
        assert ("Demo sample (" in body) == (source == "pack"), f"demo banner wrong on the {source} data"
    finally:
        context.close()
    assert not page_errors, f"JavaScript errors on {spec.title}: {page_errors}"
