"""Every page registered in the router renders through the real router, without exceptions, on
both data sources a user meets: the demo pack (no data directory set: a fresh install) and the
full data (``PUMAMED_DATA_DIR``, ``../shared/data`` here and in CI)."""

from __future__ import annotations

import pytest
from pathlib import Path
from streamlit.testing.v1 import AppTest

from pumamed import config
from tests.apptest import open_page
from views._frame import PAGES, available_pages

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 180  # first runs train nothing, but may load models and fit statistics on real data
DEMO_BANNER = "Demo sample ("


def _run_page(page_file: str, presentation: bool = False) -> AppTest:
    return open_page(page_file, presentation, timeout=TIMEOUT)


@pytest.fixture(params=["pack", "full"])
def data_source(request, monkeypatch):
    """``pack``: no PUMAMED_DATA_DIR and a working directory without data/, as on a fresh clone;
    ``full``: the real data directory."""
    if request.param == "pack":
        monkeypatch.delenv(config.DATA_DIR_ENV, raising=False)
        monkeypatch.chdir(ROOT)  # the repository's data/ holds only its README
        assert config.data_source()[1] == "demo", "the pack is not what a fresh clone reads"
    else:
        request.getfixturevalue("data_root")  # skips (or fails under CI) without the full data
    return request.param


def _messages(at: AppTest) -> list[str]:
    return [str(m.value) for group in (at.info, at.warning, at.error) for m in group]


def test_every_registered_page_file_exists():
    missing = [p.file for p in PAGES if p not in available_pages()]
    assert not missing, f"pages registered in the router but missing: {missing}"


@pytest.mark.parametrize("page", [p.file for p in PAGES], ids=[p.url_path for p in PAGES])
def test_page_renders_without_exception(page, data_source):
    at = _run_page(page)
    assert not at.exception, [e.value for e in at.exception]
    assert at.title or at.header or at.markdown, "page rendered nothing"
    messages = _messages(at)
    not_found = [m for m in messages if "not found" in m.lower()]
    assert not not_found, f"{page} on the {data_source} data says something is missing: {not_found}"
    banner = [m for m in messages if m.startswith(f"**{DEMO_BANNER}")]
    if data_source == "pack":
        assert banner and "PUMAMED_DATA_DIR" in banner[0], "the demo banner is missing"
    else:
        assert not banner, "the demo banner shows although the full data is in use"


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
