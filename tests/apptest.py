"""Opening a page through the real router (``app.py``) with Streamlit's AppTest, shared by the
page tests so that every page is tested the way users reach it."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
HOME = "views/home.py"


def open_page(page: str, presentation: bool = False, timeout: float = 180) -> AppTest:
    """Run the router, switch to ``page`` (a path relative to the project root) and run it."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    if presentation:
        at.session_state["presentation_mode"] = True
    at.run()
    if page != HOME:
        at.switch_page(page)
        at.run()
    return at
