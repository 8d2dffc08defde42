"""Benchmarks run end to end on real images and report what they claim (no timed assertions:
the figures themselves are for the closing notes, measured with the full settings)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pumamed.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_augment_reports_both_paths_and_the_ratio_to_the_faster_baseline(imaging_root, capsys):
    code = main(["bench", "augment", "--data-dir", str(imaging_root.parent), "--images", "32", "--batch-size", "8",
                 "--workers", "0", "1", "--rounds", "2", "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["contender"]: r["images_per_s"] for r in result["rows"]}
    assert set(rows) == {"v2 per image, DataLoader workers=0", "v2 per image, DataLoader workers=1",
                         "BatchAugment on the device"}
    assert all(rate > 0 for rate in rows.values()) and result["images"] == 32
    baselines = {name: rate for name, rate in rows.items() if name.startswith("v2")}
    assert result["baseline"] == max(baselines, key=baselines.get)
    assert result["ratio_vs_baseline"] == pytest.approx(rows["BatchAugment on the device"] / max(baselines.values()),
                                                        abs=0.01)


def test_bench_train_reports_every_contender_and_a_ratio(imaging_root, capsys):
    code = main(["bench", "train", "--data-dir", str(imaging_root.parent), "--peers", "monai,pythae", "--size", "64", "--batch-size", "4",
                 "--steps", "1", "--rounds", "2", "--warmup", "1", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["contender"]: r for r in result["rows"]}
    ours = rows["PumaMedNet"]
    assert ours["images_per_s"] > 0 and len(ours["rounds"]) == 2
    assert rows["PumaMedNet + on-device augmentation"]["images_per_s"] > 0
    peers = [rows[name] for name in ("MONAI VarAutoEncoder", "Pythae BetaVAE")]
    if importlib.util.find_spec("monai") is None:
        # Peers are optional (requirements-bench.txt): reported as missing, never a crash.
        assert all(p["images_per_s"] is None and "not installed" in p["note"] for p in peers)
        assert result["ratio_vs_best_peer"] is None
    else:
        monai = rows["MONAI VarAutoEncoder"]
        # "comparable parameter count": the peer's widths are picked to match ours.
        assert abs(monai["params"] - ours["params"]) < 0.25 * ours["params"], (monai["params"], ours["params"])
        best = max(p["images_per_s"] for p in peers if p["images_per_s"])
        assert result["ratio_vs_best_peer"] == pytest.approx(ours["images_per_s"] / best, abs=0.01)
