"""Both imaging pages load a checkpoint through one cache keyed by its path and modification time:
one copy in memory, and a retrained model is reloaded on either page."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.conftest import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_one_session_per_checkpoint_reloaded_when_the_file_changes(tmp_path):
    from views import _frame

    folder = save_tiny_checkpoint(tmp_path / "chest_tiny", ["normal", "abnormal"], ["nih_cxr14_1000"],
                                  [1.0, 0.5, 0.2, 0.1, 0, 0, 0, 0], "# chest_tiny\n")
    first = _frame.model_session(str(folder))
    assert _frame.model_session(str(folder)) is first  # one copy, whichever page asks
    weights = folder / "model.safetensors"
    later = weights.stat().st_mtime + 10
    os.utime(weights, (later, later))  # a retrained model
    assert _frame.model_session(str(folder)) is not first


def test_both_imaging_pages_load_models_only_through_the_shared_cache():
    for page in ("views/image_explorer.py", "views/explain_audit.py"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert not re.search(r"(?<![\w.])(load_session|load_model)\(", text), page
        assert "cached_session" in text or "model_session" in text, page
