"""Shared fixtures.

Real-data tests read ``PUMAMED_DATA_DIR`` (``.ci/run`` points it at ``../shared/data``). When it
is absent they skip with a reason, except under CI (``CI`` set), where a missing data directory
is a failure: CI must never go green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pumamed import config

ROOT = Path(__file__).resolve().parent.parent


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path} (set PUMAMED_DATA_DIR to the shared data folder)"
    if os.environ.get("CI"):
        pytest.fail(message + " -- CI must not skip real-data tests")
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data directory (``$PUMAMED_DATA_DIR``, else ``../shared/data`` beside the project)."""
    env = os.environ.get(config.DATA_DIR_ENV)
    root = Path(env).resolve() if env else (ROOT.parent / "shared" / "data").resolve()
    return _require(root, "data directory")


@pytest.fixture(scope="session")
def imaging_root(data_root: Path) -> Path:
    return _require(data_root / "imaging", "imaging data")


@pytest.fixture(scope="session")
def epi_root(data_root: Path) -> Path:
    return _require(data_root / "epi", "epidemiological data")


@pytest.fixture(autouse=True)
def _data_dir_env(monkeypatch, request):
    """Point the library at the real data directory unless a test overrides it itself."""
    if not os.environ.get(config.DATA_DIR_ENV):
        default = (ROOT.parent / "shared" / "data").resolve()
        if default.exists():
            monkeypatch.setenv(config.DATA_DIR_ENV, str(default))
