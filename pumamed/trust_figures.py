"""Tables of a checkpoint's trust figures (``trust.json``, see :mod:`pumamed.net.trust`) for
model cards, without importing PyTorch (the home page lists models without loading them)."""

from __future__ import annotations


def calibration_rows(report: dict) -> list[dict]:
    """Table rows (before / after) of a trust report's test calibration, for model cards."""
    cal = (report.get("test") or {}).get("calibration") or {}
    if not cal:
        return []
    rows = []
    for when in ("before", "after"):
        rows.append({"probabilities": f"{when} calibration" + (f" (T = {cal['temperature']:.2f})"
                                                               if when == "after" else ""),
                     "ECE (15 bins)": round(cal[when]["ece"], 4), "Brier": round(cal[when]["brier"], 4),
                     "NLL": round(cal[when]["nll"], 4),
                     "macro AUC": None if cal["macro_auc"][when] is None else round(cal["macro_auc"][when], 4)})
    return rows


def ood_rows(report: dict) -> list[dict]:
    """Table rows of a trust report's test OOD figures: the false alarms, then one row per dataset."""
    ood = (report.get("test") or {}).get("ood") or {}
    if not ood:
        return []
    rows = [{"images": "own test images (false alarms)", "relation": "in distribution",
             "flagged": round(ood["false_alarm_rate"], 4), "AUROC": None}]
    for name, row in ood.get("datasets", {}).items():
        rows.append({"images": name, "relation": f"{row['relation']} OOD ({row['modality']})",
                     "flagged": round(row["flagged"], 4), "AUROC": round(row["auroc"], 4)})
    return rows
