"""``python -m pumamed data check`` for imaging datasets: counts per split and class, broken/missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pumamed.datacheck import BROKEN, MISSING, OK
from pumamed.imaging import DATASETS
from pumamed.imaging.check import reports

ROOT = Path(__file__).resolve().parent.parent


def test_reports_cover_every_imaging_dataset_with_split_and_class_counts(data_root):
    found = {r.name: r for r in reports(data_root)}
    assert set(found) == set(DATASETS)
    assert all(r.status == OK for r in found.values()), {n: r.message for n, r in found.items()}
    brain = found["brain_tumor_mri"].counts
    assert brain["images"] == 5708 == brain["train"] + brain["val"] + brain["test"]
    assert sum(brain[f"{s}/glioma"] for s in ("train", "val", "test")) == 1321
    nih = found["nih_cxr14_1000"].counts
    assert nih["images"] == 800 and nih["no_finding"] == 399 and nih["Effusion"] == 141
    assert found["mini_mias"].counts["patients"] > 100
    assert found["pneumoniamnist"].counts["test"] == 524  # the own val split serves as test


def test_missing_and_broken_datasets_are_reported(tmp_path):
    busi = tmp_path / "imaging" / "busi"
    for cls in ("benign", "malignant", "normal"):
        (busi / cls).mkdir(parents=True)
        (busi / cls / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    found = {r.name: r for r in reports(tmp_path)}
    assert found["busi"].status == BROKEN and "not a readable image" in found["busi"].message
    assert found["mini_mias"].status == MISSING


def test_data_check_cli_lists_imaging_datasets(data_root):
    env = dict(os.environ, PUMAMED_DATA_DIR=str(data_root), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "pumamed", "data", "check", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    payload = json.loads(result.stdout)
    imaging = {d["name"]: d for d in payload["datasets"] if d["group"] == "imaging"}
    assert set(imaging) == set(DATASETS) and all(d["status"] == OK for d in imaging.values())
    assert imaging["busi"]["counts"]["images"] == 624
