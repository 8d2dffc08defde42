"""Readers: each turns one on-disk layout into a :class:`SampleTable` (one row per image, labels,
the source's own split, metadata, and a function that decodes image ``i`` at a given size).

Layouts: MedMNIST ``.npz``; image folders (class folders, optionally inside split folders);
NIH ChestX-ray14 (image folders + ``Data_Entry_2017*.csv``); mini-MIAS (``labels.csv`` +
``abnormalities.csv``). DICOM files inside image folders are read with :mod:`.dicom`.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pumamed.errors import DataError, PumaMedError
from PIL import Image

from pumamed.imaging.decode import (
    array_square_resize,
    array_to_uint8,
    decode_to_square,
    rgb_to_grey,
    square_resize,
)
from pumamed.imaging.splits import canonical_split

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm", ".pbm"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES

# Columns every metadata frame carries (NaN/None where the source does not say).
COMMON_COLUMNS = ("dataset", "modality", "split", "label", "class_name", "patient_id", "sex", "age",
                  "view", "density", "path", "source_index")


@dataclass
class SampleTable:
    """Everything a reader knows about a dataset, before splitting and decoding."""

    name: str
    modality: str
    task: str
    class_names: list[str]
    frame: pd.DataFrame          # one row per sample; column "official_split" = the source's own split
    labels: np.ndarray           # (N,) int64, or (N, C) float32 multi-hot
    decode: Callable[[int, int], np.ndarray]  # (row index, size) -> uint8 size x size
    fingerprint: str             # changes when the underlying files change (cache key)
    notes: list[str] = field(default_factory=list)
    lesions: pd.DataFrame | None = None  # mini-MIAS annotations (one row per lesion)

    def __len__(self) -> int:
        return len(self.frame)


def _fingerprint(*parts) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _file_fingerprint(paths: list[Path]) -> str:
    stats = []
    for p in paths:
        st = p.stat()
        stats.append((str(p), st.st_size, st.st_mtime_ns))
    return _fingerprint(stats)


def decode_file(path: str | Path, size: int) -> np.ndarray:
    """Decode one image file (raster or DICOM) to uint8 size x size.

    A file that cannot be decoded is a :class:`DataError` naming it, so the user knows which file
    of a large folder to remove or replace."""
    path = Path(path)
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            from pumamed.imaging.dicom import read_dicom

            return square_resize(Image.fromarray(array_to_uint8(read_dicom(path).pixels, 0.0, 1.0)), size)
        return decode_to_square(path, size)
    except DataError:
        raise
    except PumaMedError as exc:
        raise DataError(f"{path}: cannot be decoded ({exc}); remove or replace this file") from exc
    except OSError as exc:  # vanished or unreadable file
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


# --------------------------------------------------------------------------- MedMNIST
def read_medmnist(path: Path, name: str | None = None, modality: str = "unknown",
                  class_names: list[str] | None = None) -> SampleTable:
    """A MedMNIST ``.npz`` of any size: ``{split}_images`` (N,H,W) or (N,H,W,3) uint8 and
    ``{split}_labels`` (N,), (N,1) (one label) or (N,C) (multi-label, e.g. ChestMNIST). Splits that
    are absent (a held-back test) are simply not there."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path.name} is not a readable .npz file ({exc})") from exc
    if not hasattr(archive, "files"):  # a bare .npy saved under an .npz name
        raise DataError(f"{path.name} is a single array, not a MedMNIST .npz archive")
    try:
        return _medmnist_table(archive, path, name, modality, class_names)
    except ValueError as exc:
        # np.load refuses object arrays (pickles) with ValueError; never retry with allow_pickle.
        raise DataError(f"{path.name}: unusable array data ({exc}); MedMNIST archives hold plain "
                        "uint8 images and integer labels") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path.name} is damaged or truncated ({exc})") from exc


def _medmnist_table(archive, path: Path, name, modality, class_names) -> SampleTable:
    with archive:
        keys = set(archive.files)
        image_arrays, label_arrays, split_names = [], [], []
        for key in sorted(keys):
            match = re.fullmatch(r"(.+)_images", key)
            if not match:
                continue
            prefix = match.group(1)
            if f"{prefix}_labels" not in keys:
                raise DataError(f"{path.name}: {key} has no matching {prefix}_labels")
            images = archive[key]
            labels = archive[f"{prefix}_labels"]
            if images.ndim not in (3, 4) or len(images) != len(labels):
                raise DataError(f"{path.name}: {key} has shape {images.shape} and {prefix}_labels "
                                f"{labels.shape}; expected (N,H,W[,3]) and N labels")
            image_arrays.append(images)
            label_arrays.append(labels.reshape(len(labels), -1))
            split_names += [canonical_split(prefix) or prefix] * len(labels)
    if not image_arrays:
        raise DataError(f"{path.name} holds no '<split>_images' arrays (keys: {sorted(keys)})")
    if sum(len(a) for a in label_arrays) == 0:
        raise DataError(f"{path.name} holds no images (every '<split>_images' array is empty)")
    for labels_part in label_arrays:
        if labels_part.dtype.kind not in "biuf":
            raise DataError(f"{path.name}: labels must be numbers, got dtype {labels_part.dtype}")
        values = labels_part.astype(np.float64, copy=False)
        if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
            raise DataError(f"{path.name}: labels must be non-negative whole numbers (class indices or 0/1 "
                            "multi-hot); found negative, fractional or missing values")
    widths = {a.shape[1] for a in label_arrays}
    if len(widths) != 1:
        raise DataError(f"{path.name}: label widths differ between splits: {sorted(widths)}")
    sizes = {a.shape[1:3] for a in image_arrays}
    if len(sizes) != 1:
        raise DataError(f"{path.name}: image sizes differ between splits: {sorted(sizes)}")
    images = np.concatenate(image_arrays)
    raw_labels = np.concatenate(label_arrays)
    if images.ndim == 4:  # RGB MedMNIST variants: luma, kept at 0..255
        images = array_to_uint8(rgb_to_grey(images), 0, 255)
    elif images.dtype != np.uint8:
        images = array_to_uint8(images)

    if raw_labels.shape[1] == 1:
        labels = raw_labels[:, 0].astype(np.int64)
        n_classes = int(labels.max()) + 1
        task = "binary" if n_classes <= 2 else "multiclass"
        class_names = list(class_names) if class_names else [f"class_{i}" for i in range(max(n_classes, 2))]
        label_column = labels
        class_column = [class_names[i] if i < len(class_names) else str(i) for i in labels]
    else:
        labels = raw_labels.astype(np.float32)
        task = "multilabel"
        class_names = list(class_names) if class_names else [f"finding_{i}" for i in range(labels.shape[1])]
        label_column = ["|".join(class_names[j] for j in np.flatnonzero(row)) or "none" for row in labels]
        class_column = label_column
    n = len(images)
    name = name or path.stem
    frame = pd.DataFrame({
        "dataset": name, "modality": modality, "official_split": split_names, "label": label_column,
        "class_name": class_column, "patient_id": None, "sex": None, "age": np.nan, "view": None,
        "density": None, "path": str(path), "source_index": np.arange(n),
        "original_height": images.shape[1], "original_width": images.shape[2],
    })

    def decode(i: int, size: int) -> np.ndarray:
        return array_square_resize(images[i], size)

    return SampleTable(name, modality, task, class_names, frame, labels, decode,
                       _file_fingerprint([path]))


# --------------------------------------------------------------------------- image folders
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def read_image_folder(root: Path, name: str | None = None, modality: str = "unknown",
                      class_names: list[str] | None = None) -> SampleTable:
    """One folder per class, optionally inside split folders (train/valid/val/test/Training/...).

    Class folder names become the class names (sorted, or the order given in ``class_names``).
    Images may sit in sub-folders of a class folder. Hidden folders (``.ipynb_checkpoints``) are
    skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    top = _subdirs(root)
    split_dirs = [d for d in top if canonical_split(d.name)]
    rows = []
    if split_dirs:
        for split_dir in split_dirs:
            for class_dir in _subdirs(split_dir):
                rows += [(f, canonical_split(split_dir.name), class_dir.name) for f in _image_files(class_dir)]
    else:
        for class_dir in top:
            rows += [(f, None, class_dir.name) for f in _image_files(class_dir)]
    if not rows:
        raise DataError(f"no images found in class folders under {root} (expected <class>/<image> or "
                        "<split>/<class>/<image>, with PNG, JPEG, TIFF, BMP or DICOM files)")
    found = sorted({c for _, _, c in rows})
    if class_names:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DataError(f"{root}: unexpected class folder(s) {unknown}; expected {list(class_names)}")
        class_names = list(class_names)
    else:
        class_names = found
    if len(class_names) < 2:
        raise DataError(f"{root}: found only one class folder ({class_names}); need at least two")
    index = {c: i for i, c in enumerate(class_names)}
    paths = [r[0] for r in rows]
    labels = np.array([index[c] for _, _, c in rows], dtype=np.int64)
    name = name or root.name
    frame = pd.DataFrame({
        "dataset": name, "modality": modality, "official_split": [r[1] for r in rows], "label": labels,
        "class_name": [r[2] for r in rows], "patient_id": None, "sex": None, "age": np.nan, "view": None,
        "density": None, "path": [str(p) for p in paths], "source_index": np.arange(len(rows)),
    })
    task = "binary" if len(class_names) == 2 else "multiclass"

    def decode(i: int, size: int) -> np.ndarray:
        return decode_file(paths[i], size)

    return SampleTable(name, modality, task, class_names, frame, labels, decode, _file_fingerprint(paths))


# --------------------------------------------------------------------------- NIH ChestX-ray14
NIH_FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
                "Hernia"]
_NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                "View Position", "OriginalImageWidth", "OriginalImageHeight", "PixelSpacingX", "PixelSpacingY"]


def read_data_entry(path: Path) -> pd.DataFrame:
    """An NIH ``Data_Entry_2017*.csv[.gz]`` (2017 or v2020 layout) with tidy column names.

    The official header names 9 columns over 11 fields (``OriginalImage[Width,Height]`` spans two),
    so the header is replaced by explicit names. Ages like ``058Y`` (2017 file) become numbers.
    """
    try:
        frame = pd.read_csv(path, header=None, skiprows=1, dtype=str)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {Path(path).name}: {exc}") from exc
    if frame.shape[1] < 7:
        raise DataError(f"{Path(path).name}: expected the ChestX-ray14 Data_Entry columns, got {frame.shape[1]}")
    frame = frame.iloc[:, : len(_NIH_COLUMNS)]
    frame.columns = _NIH_COLUMNS[: frame.shape[1]]
    age = frame["Patient Age"].str.extract(r"(\d+)\s*([YMD]?)", expand=True)
    years = pd.to_numeric(age[0], errors="coerce")
    years = years.where(age[1].isin(["", "Y"]) | age[1].isna(), years / np.where(age[1] == "M", 12, 365))
    frame["Patient Age"] = years
    return frame


def read_nih_cxr14(root: Path, name: str | None = None, task: str = "multilabel") -> SampleTable:
    """ChestX-ray14: PNG files anywhere under ``root`` (file name = NIH "Image Index") joined with
    ``Data_Entry_2017*.csv[.gz]`` (or a ``labels.csv`` carrying the same columns).

    ``task="multilabel"``: 14 findings, multi-hot ("No Finding" = all zeros).
    ``task="binary"``: normal (No Finding) vs abnormal (any finding).
    Own split: ``test_list.txt`` / ``train_val_list.txt`` when present (official NIH split), else
    the first folder level (train/valid/test).
    """
    root = Path(root)
    if task not in ("multilabel", "binary"):
        raise DataError(f"ChestX-ray14 task must be 'multilabel' or 'binary', not {task!r}")
    entries = sorted(root.glob("Data_Entry_2017*.csv*"))
    if entries:
        # Prefer the newest release (v2020 corrects labels of the 2017 file).
        entries.sort(key=lambda p: ("v2020" in p.name, "full" in p.name, p.name))
        meta = read_data_entry(entries[-1])
        meta_source = entries[-1].name
    elif (root / "labels.csv").is_file():
        try:
            meta = pd.read_csv(root / "labels.csv", dtype={"Patient ID": str})
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {root / 'labels.csv'}: {exc}") from exc
        meta_source = "labels.csv"
    else:
        raise DataError(f"{root}: no Data_Entry_2017*.csv metadata file (needed for the 14 findings)")
    files = {p.name: p for p in root.rglob("*.png") if not any(s.startswith(".") for s in p.parts)}
    if not files:
        raise DataError(f"{root}: no PNG images found")
    if "Image Index" not in meta.columns or "Finding Labels" not in meta.columns:
        raise DataError(f"{root}: {meta_source} lacks the 'Image Index' / 'Finding Labels' columns of ChestX-ray14")
    meta = meta[meta["Image Index"].isin(files)].drop_duplicates("Image Index")
    if meta.empty:
        raise DataError(f"{root}: none of the {len(files)} PNG file(s) is listed in {meta_source} "
                        "(is it the ChestX-ray14 Data_Entry table for these images?)")
    for column in ("Patient ID", "Patient Gender", "View Position", "Follow-up #", "Patient Age"):
        if column not in meta.columns:
            meta[column] = None
    missing = len(files) - len(meta)
    notes = [f"metadata from {meta_source}"]
    if missing:
        notes.append(f"{missing} image(s) without a metadata row skipped")
    meta = meta.sort_values("Image Index").reset_index(drop=True)
    paths = [files[i] for i in meta["Image Index"]]

    train_list, test_list = root / "train_val_list.txt", root / "test_list.txt"
    if test_list.is_file():
        test_names = set(test_list.read_text().split())
        official = ["test" if i in test_names else "train" for i in meta["Image Index"]]
        notes.append("own split from test_list.txt / train_val_list.txt")
    else:
        official = [canonical_split(p.relative_to(root).parts[0]) if len(p.relative_to(root).parts) > 1 else None
                    for p in paths]
        if train_list.is_file():
            notes.append("train_val_list.txt found without test_list.txt: folder split used")

    findings = meta["Finding Labels"].fillna("No Finding").str.split("|")
    multi_hot = np.array([[float(f in row) for f in NIH_FINDINGS] for row in findings], dtype=np.float32)
    label_text = meta["Finding Labels"].fillna("No Finding").to_list()
    if task == "multilabel":
        labels, class_names, label_column = multi_hot, list(NIH_FINDINGS), label_text
        class_column = label_text
    else:
        labels = (multi_hot.sum(axis=1) > 0).astype(np.int64)
        class_names = ["normal", "abnormal"]
        label_column, class_column = labels, [class_names[i] for i in labels]
    name = name or root.name
    folder_class = [p.parent.name for p in paths]
    frame = pd.DataFrame({
        "dataset": name, "modality": "chest_xray", "official_split": official, "label": label_column,
        "class_name": class_column, "patient_id": meta["Patient ID"].astype(str).str.lstrip("0").to_numpy(),
        "sex": meta["Patient Gender"].to_numpy(), "age": pd.to_numeric(meta["Patient Age"], errors="coerce").to_numpy(),
        "view": meta["View Position"].to_numpy(), "density": None, "path": [str(p) for p in paths],
        "source_index": np.arange(len(paths)), "image_index": meta["Image Index"].to_numpy(),
        "follow_up": pd.to_numeric(meta["Follow-up #"], errors="coerce").to_numpy(),
        "folder_class": folder_class, "findings": label_text,
    })
    for extra in ("OriginalImageWidth", "OriginalImageHeight", "OrigWidth", "OrigHeight"):
        if extra in meta:
            frame["original_" + ("width" if "Width" in extra else "height")] = pd.to_numeric(meta[extra], errors="coerce").to_numpy()

    def decode(i: int, size: int) -> np.ndarray:
        return decode_file(paths[i], size)

    return SampleTable(name, "chest_xray", task, class_names, frame, labels, decode,
                       _file_fingerprint(paths + entries[-1:]), notes)


# --------------------------------------------------------------------------- mini-MIAS
MIAS_CLASSES = ["normal", "benign", "malignant"]
MIAS_DENSITY = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
MIAS_FRAME = 1024  # abnormality coordinates are in the 1024 x 1024 frame, origin bottom-left


def read_mini_mias(root: Path, name: str | None = None) -> SampleTable:
    """mini-MIAS: ``labels.csv`` (one row per image) + ``abnormalities.csv`` (one row per lesion).

    MIAS numbers the two mammograms of one woman consecutively (mdb001/mdb002, ...), so
    ``patient_id`` = ``(number + 1) // 2``; splits are patient-wise on it.
    """
    root = Path(root)
    labels_csv = root / "labels.csv"
    if not labels_csv.is_file():
        raise DataError(f"{root}: labels.csv not found")
    try:
        table = pd.read_csv(labels_csv, dtype={"refnum": str})
    except (OSError, ValueError) as exc:  # ParserError, EmptyDataError and UnicodeDecodeError are ValueErrors
        raise DataError(f"cannot read {labels_csv}: {exc}") from exc
    required = {"refnum", "label", "background_tissue", "file"}
    if not required <= set(table.columns):
        raise DataError(f"{labels_csv}: missing column(s) {sorted(required - set(table.columns))}")
    unknown = sorted(set(table["label"]) - set(MIAS_CLASSES))
    if unknown:
        raise DataError(f"{labels_csv}: unknown label(s) {unknown}")
    paths = [root / f for f in table["file"]]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise DataError(f"{root}: {len(absent)} image file(s) listed in labels.csv are missing, e.g. {absent[0]}")
    labels = table["label"].map({c: i for i, c in enumerate(MIAS_CLASSES)}).to_numpy(dtype=np.int64)
    digits = table["refnum"].astype("string").str.extract(r"(\d+)")[0]
    if digits.isna().any():
        bad = table.loc[digits.isna().to_numpy(), "refnum"].iloc[0]
        raise DataError(f"{labels_csv}: refnum {bad!r} has no image number (expected e.g. mdb001)")
    number = digits.astype(int)
    lesions = read_mias_lesions(root) if (root / "abnormalities.csv").is_file() else None
    name = name or root.name
    frame = pd.DataFrame({
        "dataset": name, "modality": "mammography", "official_split": None, "label": labels,
        "class_name": table["label"].to_numpy(), "patient_id": ("mias" + ((number + 1) // 2).map("{:03d}".format)).to_numpy(),
        "sex": "F", "age": np.nan, "view": "MLO", "density": table["background_tissue"].to_numpy(),
        "path": [str(p) for p in paths], "source_index": np.arange(len(table)), "refnum": table["refnum"].to_numpy(),
        "density_name": table["background_tissue"].map(MIAS_DENSITY).to_numpy(),
        "abnormality_classes": table.get("abnormality_classes", pd.Series([None] * len(table))).to_numpy(),
    })
    if lesions is not None:
        located = lesions.dropna(subset=["x", "y", "radius"]).groupby("refnum").size()
        frame["n_lesions_located"] = frame["refnum"].map(located).fillna(0).astype(int).to_numpy()

    def decode(i: int, size: int) -> np.ndarray:
        return decode_file(paths[i], size)

    extra = [root / "abnormalities.csv"] if lesions is not None else []
    return SampleTable(name, "mammography", "multiclass", list(MIAS_CLASSES), frame, labels, decode,
                       _file_fingerprint(paths + [labels_csv] + extra), lesions=lesions)


def read_mias_lesions(root: Path) -> pd.DataFrame:
    """``abnormalities.csv`` with numeric x, y, radius (NaN where MIAS gives none, e.g. NOTE 3)."""
    try:
        lesions = pd.read_csv(Path(root) / "abnormalities.csv", dtype={"refnum": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {Path(root) / 'abnormalities.csv'}: {exc}") from exc
    if "refnum" not in lesions.columns:
        raise DataError(f"{Path(root) / 'abnormalities.csv'}: missing column 'refnum'")
    for column in ("x", "y", "radius"):
        lesions[column] = pd.to_numeric(lesions[column], errors="coerce") if column in lesions else np.nan
    return lesions


def mias_lesion_mask(lesions: pd.DataFrame, refnum: str, size: int) -> np.ndarray:
    """Boolean size x size mask of the circles annotated for ``refnum`` (all False if none).

    MIAS gives the centre (x, y) with the origin at the *bottom-left* of the 1024 x 1024 frame
    and a radius in the same units; image rows count from the top, hence ``row = 1024 - y``.
    The images are square, so padding never shifts the frame.
    """
    mask = np.zeros((size, size), dtype=bool)
    rows = lesions[(lesions["refnum"] == refnum)].dropna(subset=["x", "y", "radius"])
    if rows.empty:
        return mask
    scale = size / MIAS_FRAME
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    for x, y, r in rows[["x", "y", "radius"]].itertuples(index=False):
        col, row, rad = x * scale, (MIAS_FRAME - y) * scale, max(r * scale, 0.5)
        mask |= (xx - col) ** 2 + (yy - row) ** 2 <= rad ** 2
    return mask


def mias_lesion_boxes(lesions: pd.DataFrame, refnum: str, size: int) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (left, top, right, bottom) in size x size pixel coordinates of each lesion."""
    boxes = []
    scale = size / MIAS_FRAME
    for x, y, r in lesions[lesions["refnum"] == refnum].dropna(subset=["x", "y", "radius"])[["x", "y", "radius"]].itertuples(index=False):
        col, row, rad = x * scale, (MIAS_FRAME - y) * scale, r * scale
        boxes.append((max(0, int(col - rad)), max(0, int(row - rad)), min(size, int(np.ceil(col + rad))),
                      min(size, int(np.ceil(row + rad)))))
    return boxes
