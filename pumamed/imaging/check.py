"""``python -m pumamed data check`` for imaging: every registered dataset, counts per split and class.

Reads file lists and metadata (no full decode) and decodes the first image of each dataset, so a
dataset whose files are present but unreadable is reported ``broken`` rather than ``ok``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pumamed.datacheck import DatasetReport, safe_check
from pumamed.imaging.registry import DATASETS, dataset_splits, _sample_table


def _counter(name: str, data_dir: Path):
    def count(_path: Path) -> dict:
        frame = dataset_splits(name, data_dir=data_dir)
        table, _ = _sample_table(name, data_dir, None, None)
        table.decode(0, 32)  # proves the files decode, cheaply
        counts: dict = {"images": int(len(frame))}
        for split in ("train", "val", "test"):
            counts[split] = int((frame["split"] == split).sum())
        if table.task == "multilabel":
            totals = table.labels.sum(axis=0).astype(int)
            counts["no_finding"] = int((table.labels.sum(axis=1) == 0).sum())
            counts.update({c: int(n) for c, n in zip(table.class_names, totals)})
        else:
            for split in ("train", "val", "test"):
                in_split = table.labels[(frame["split"] == split).to_numpy()]
                per_class = np.bincount(in_split, minlength=len(table.class_names))
                counts.update({f"{split}/{c}": int(n) for c, n in zip(table.class_names, per_class)})
        if frame["patient_id"].notna().any():
            counts["patients"] = int(frame["patient_id"].nunique())
        return counts

    return count


def reports(data_dir) -> list[DatasetReport]:
    data_dir = Path(data_dir)
    found = []
    for name, info in DATASETS.items():
        hint = f"{info.title}; expected at <data dir>/{info.relative_path}; test = {info.test_split}"
        found.append(safe_check(name, "imaging", data_dir / info.relative_path, _counter(name, data_dir), hint=hint))
    return found
