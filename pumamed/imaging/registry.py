"""Registry of the known imaging datasets and :func:`load_dataset`, the one entry point.

``load_dataset(name_or_path, split, size)`` returns an :class:`~pumamed.imaging.dataset.ImagingDataset`
for a registered name (``DATASETS``) or for any folder / ``.npz`` given by path (class folders,
ChestX-ray14 layout, mini-MIAS layout, MedMNIST archive). See ``docs/imaging_data.md``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed import config
from pumamed.errors import DataError, InputError
from pumamed.imaging.dataset import ImagingDataset
from pumamed.imaging.sources import (
    SampleTable,
    read_image_folder,
    read_medmnist,
    read_mini_mias,
    read_nih_cxr14,
    NIH_FINDINGS,
    MIAS_CLASSES,
)
from pumamed.imaging.splits import DEFAULT_HOLDOUT_FRACTION, SPLITS, assert_patient_disjoint, assign_splits

SIZES = (64, 128, 256)  # documented sizes; any size from 8 to 1024 works


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    modality: str
    task: str
    class_names: tuple[str, ...]
    relative_path: str          # below the data directory
    reader: str                 # medmnist | folder | nih_cxr14 | mini_mias
    test_split: str             # what split="test" means here
    patient_ids: bool = False
    citation: str = ""
    licence: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)
    # The tasks its labels can be read as (``load_dataset(task=...)``), the first being the one for
    # a model whose head is none of them; empty: only ``task``.
    label_views: tuple[str, ...] = ()

    def path(self, data_dir=None) -> Path:
        return config.data_dir(data_dir) / self.relative_path


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo(
        "nih_cxr14_1000", "NIH ChestX-ray14 (1000-image subset, 800 here)", "chest_xray", "multilabel",
        tuple(NIH_FINDINGS), "imaging/nih_cxr14_1000", "nih_cxr14",
        test_split="the own valid/ folder (test/ is held back) plus the train/ images of its patients; "
                   "val = 15% of train/ patients",
        patient_ids=True, citation="Wang et al., ChestX-ray8, CVPR 2017", licence="NIH Clinical Center (public)",
        notes="14 findings multi-label (pass task='binary' for normal vs abnormal); 64x64 PNG",
        label_views=("binary", "multilabel")),
    DatasetInfo(
        "pneumoniamnist", "PneumoniaMNIST (MedMNIST v2)", "chest_xray", "binary", ("normal", "pneumonia"),
        "imaging/pneumoniamnist.npz", "medmnist",
        test_split="the own val split (test is held back); val = 15% of train",
        citation="Yang et al., MedMNIST v2, Sci Data 2023; Kermany et al., Cell 2018", licence="CC BY 4.0",
        notes="28x28, pediatric chest X-ray"),
    DatasetInfo(
        "brain_tumor_mri", "Brain Tumor MRI (Kaggle, Nickparvar)", "brain_mri", "multiclass",
        ("glioma", "meningioma", "notumor", "pituitary"), "imaging/brain_tumor_mri", "folder",
        test_split="Testing/ when present; here it is held back, so test = 15% of Training/, val = 15%",
        citation="M. Nickparvar, Brain Tumor MRI Dataset (Kaggle, 2021)", licence="not verified",
        notes="224x224 JPEG; no patient ids (slices of one patient may fall in different splits)"),
    DatasetInfo(
        "busi", "Breast Ultrasound Images (BUSI)", "breast_ultrasound", "multiclass",
        ("benign", "malignant", "normal"), "imaging/busi", "folder",
        test_split="no own split: test = 15%, val = 15%, stratified",
        citation="Al-Dhabyani et al., Data in Brief 2020", licence="not verified",
        notes="256x256 PNG; no patient ids"),
    DatasetInfo(
        "breastmnist", "BreastMNIST (MedMNIST v2)", "breast_ultrasound", "binary", ("malignant", "normal+benign"),
        "imaging/breastmnist.npz", "medmnist",
        test_split="the own val split (test is held back); val = 15% of train",
        citation="Yang et al., MedMNIST v2, Sci Data 2023; Al-Dhabyani et al. 2020", licence="CC BY 4.0",
        notes="28x28; labels stored (N,)"),
    DatasetInfo(
        "mini_mias", "mini-MIAS mammograms", "mammography", "multiclass", tuple(MIAS_CLASSES),
        "imaging/mini_mias", "mini_mias",
        test_split="no own split: test = 15%, val = 15% of patients (image pairs), stratified",
        patient_ids=True, citation="Suckling et al., The MIAS database, 1994",
        licence="research use only (Licence.txt)",
        notes="512x512 PNG; lesion circles in abnormalities.csv; density F/G/D"),
)}

_TABLES: dict[tuple, SampleTable] = {}
_TABLES_LOCK = threading.Lock()


def _detect_reader(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "medmnist"
        raise DataError(f"{path}: not a dataset (expected a folder or a MedMNIST .npz)")
    if list(path.glob("Data_Entry_2017*.csv*")):
        return "nih_cxr14"
    if (path / "labels.csv").is_file() and (path / "abnormalities.csv").is_file():
        return "mini_mias"
    return "folder"


def _shallow_signature(path: Path) -> tuple:
    """Modification times of ``path`` and the folders up to two levels below it (split and class
    folders): adding or removing an image changes one of them, so a cached table is re-read."""
    stamps = [path.stat().st_mtime_ns]
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.is_dir()):
            stamps.append(child.stat().st_mtime_ns)
            stamps += [g.stat().st_mtime_ns for g in sorted(child.iterdir()) if g.is_dir()]
    return tuple(stamps)


def label_view_for(dataset: str, model_task: str | None) -> str | None:
    """The task to read ``dataset``'s labels as for a model whose head has ``model_task`` (NIH
    ChestX-ray14: binary or multi-label, as the model; binary for any other head), or None: the
    dataset's own."""
    info = DATASETS.get(str(dataset))
    if info is None or not info.label_views:
        return None
    return model_task if model_task in info.label_views else info.label_views[0]


def _read_table(reader: str, path: Path, name: str, modality: str, class_names, task: str | None) -> SampleTable:
    if reader == "medmnist":
        return read_medmnist(path, name=name, modality=modality, class_names=class_names)
    if reader == "folder":
        return read_image_folder(path, name=name, modality=modality, class_names=class_names)
    if reader == "nih_cxr14":
        return read_nih_cxr14(path, name=name, task=task or "multilabel")
    if reader == "mini_mias":
        return read_mini_mias(path, name=name)
    raise DataError(f"unknown reader {reader!r}")


def _sample_table(name_or_path, data_dir, task: str | None, modality: str | None) -> tuple[SampleTable, DatasetInfo | None]:
    name_or_path = os.fspath(name_or_path)
    info = DATASETS.get(name_or_path)
    if info is not None:
        path = info.path(data_dir)
        if not path.exists():
            raise DataError(f"dataset {info.name!r} not found at {path}; put it there or set "
                            f"{config.DATA_DIR_ENV} to the folder holding {info.relative_path}")
        reader, name, modality = info.reader, info.name, info.modality
        class_names = list(info.class_names) if info.reader != "nih_cxr14" else None
        if task not in (None, info.task) and task not in info.label_views:
            raise InputError(f"{info.name} is a {info.task} dataset; task={task!r} is not available")
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            known = ", ".join(DATASETS)
            raise DataError(f"{name_or_path!r} is neither a known dataset ({known}) nor an existing path")
        path = path.resolve()
        reader, name, class_names = _detect_reader(path), path.stem, None
        modality = modality or "unknown"
    key = (str(path), reader, name, modality, task, _shallow_signature(path))
    with _TABLES_LOCK:
        table = _TABLES.get(key)
    if table is None:
        table = _read_table(reader, path, name, modality, class_names, task)
        with _TABLES_LOCK:
            _TABLES[key] = table
    return table, info


def split_assignment(table: SampleTable, seed: int = 0,
                     fraction: float = DEFAULT_HOLDOUT_FRACTION) -> tuple[np.ndarray, str]:
    """Split ("train"/"val"/"test") of every sample of a table, and the rule used (see splits.py)."""
    if table.task == "multilabel":
        strata = pd.Series(np.where(table.labels.sum(axis=1) > 0, "abnormal", "normal"))
    else:
        strata = pd.Series(table.labels)
    groups = table.frame["patient_id"].reset_index(drop=True)
    split, rule = assign_splits(table.frame["official_split"], groups, strata, seed=seed, fraction=fraction)
    if groups.notna().any():
        assert_patient_disjoint(split, groups)
    return split, rule


def load_dataset(name_or_path, split: str = "train", size: int = 128, data_dir=None, *, transform=None,
                 task: str | None = None, modality: str | None = None, split_seed: int = 0,
                 holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, cache_dir=None) -> ImagingDataset:
    """One split of a dataset at ``size`` x ``size``.

    ``name_or_path``: a key of :data:`DATASETS` (read below ``data_dir``, default
    ``pumamed.config.data_dir()``) or a path to a class-folder tree, a ChestX-ray14 or mini-MIAS
    folder, or a MedMNIST ``.npz``.
    ``split``: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (see each DatasetInfo.test_split).
    ``transform``: applied to the 1 x S x S float tensor (torchvision.transforms.v2 work).
    ``task``: ChestX-ray14 only: ``"multilabel"`` (default) or ``"binary"`` (normal vs abnormal).
    ``split_seed`` / ``holdout_fraction``: the deterministic carve of missing splits.
    ``cache_dir``: optional folder for a decoded-image cache on disk (else ``$PUMAMED_CACHE_DIR``).
    """
    split = str(split).lower()
    if split not in (*SPLITS, "all"):
        raise InputError(f"split must be one of train, val, test, all; got {split!r}")
    try:
        size = int(size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"size must be an integer, got {size!r}") from exc
    if not 8 <= size <= 1024:
        raise InputError(f"size must be between 8 and 1024 pixels, got {size}")
    if not 0 < holdout_fraction < 0.5:
        raise InputError(f"holdout_fraction must be in (0, 0.5), got {holdout_fraction}")
    table, info = _sample_table(name_or_path, data_dir, task, modality)
    assignment, rule = split_assignment(table, seed=split_seed, fraction=holdout_fraction)
    if split == "all":
        indices = np.arange(len(table))
    else:
        indices = np.flatnonzero(assignment == split)
        if len(indices) == 0:
            counts = pd.Series(assignment).value_counts().to_dict()
            raise DataError(f"{table.name} has no {split!r} split ({rule}; images per split: {counts}); "
                            "add more images per class or use another split")
    dataset = ImagingDataset(table, indices, split, size, rule, transform=transform, cache_dir=cache_dir, info=info)
    dataset.metadata.insert(2, "split", assignment[indices])
    dataset.metadata = dataset.metadata.loc[:, ~dataset.metadata.columns.duplicated(keep="first")]
    return dataset


def dataset_splits(name_or_path, data_dir=None, task: str | None = None, split_seed: int = 0) -> pd.DataFrame:
    """The metadata of every sample with its split (no decoding): handy for tables and checks."""
    table, _ = _sample_table(name_or_path, data_dir, task, None)
    assignment, _ = split_assignment(table, seed=split_seed)
    frame = table.frame.copy()
    frame["split"] = assignment
    return frame


def available_datasets(data_dir=None) -> list[str]:
    """Registered dataset names whose files are present under ``data_dir``."""
    return [name for name, info in DATASETS.items() if info.path(data_dir).exists()]
