"""Every page registered in the router renders through the real router, without exceptions."""

from __future__ import annotations

import pytest
from pathlib import Path
from streamlit.testing.v1 import AppTest

from tests.apptest import open_page
from views._frame import PAGES, available_pages

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 180  # first runs train nothing, but may load models and fit statistics on real data


def _run_page(page_file: str, presentation: bool = False) -> AppTest:
    return open_page(page_file, presentation, timeout=TIMEOUT)


def test_every_registered_page_file_exists():
    missing = [p.file for p in PAGES if p not in available_pages()]
    assert not missing, f"pages registered in the router but missing: {missing}"


@pytest.mark.parametrize("page", [p.file for p in PAGES], ids=[p.url_path for p in PAGES])
def test_page_renders_without_exception(page):
    at = _run_page(page)
    assert not at.exception, [e.value for e in at.exception]
    assert at.title or at.header or at.markdown, "page rendered nothing"


@pytest.mark.parametrize("page", [p.file for p in PAGES], ids=[p.url_path for p in PAGES])
def test_page_renders_in_presentation_mode(page):
    at = _run_page(page, presentation=True)
    assert not at.exception, [e.value for e in at.exception]


def test_home_lists_datasets_and_device(data_root):
    at = _run_page("views/home.py")
    labels = [m.label for m in at.metric]
    assert "Compute device" in labels
    assert at.dataframe, "the datasets table is missing"


def test_home_without_data_or_models_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PUMAMED_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(tmp_path / "no_models"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    text = " ".join(m.value for m in at.info) + " ".join(w.value for w in at.warning)
    assert "PUMAMED_DATA_DIR" in text
    assert "python -m pumamed train" in text
