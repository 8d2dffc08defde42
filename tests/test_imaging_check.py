"""``python -m pumamed data check`` for imaging datasets: counts per split and class, broken/missing."""

from __future__ import annotations

import json

from pumamed.datacheck import BROKEN, MISSING, OK
from pumamed.imaging import DATASETS
from pumamed.imaging.check import reports


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


def test_data_check_cli_lists_imaging_datasets(data_root, monkeypatch, capsys):
    """The real CLI entry point (in-process, imaging domain only, so other domains' checks do
    not slow this test down)."""
    from pumamed import datacheck
    from pumamed.cli import main

    monkeypatch.setattr(datacheck, "DOMAIN_CHECK_MODULES", ("pumamed.imaging.check",))
    assert main(["data", "check", "--data-dir", str(data_root), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    imaging = {d["name"]: d for d in payload["datasets"] if d["group"] == "imaging"}
    assert set(imaging) == set(DATASETS) and all(d["status"] == OK for d in imaging.values())
    assert imaging["busi"]["counts"]["images"] == 624
    assert main(["data", "check", "--data-dir", str(data_root)]) == 0
    text = capsys.readouterr().out
    assert "brain_tumor_mri" in text and "train/glioma=" in text and "6 ok, 0 broken" in text
