"""Bad input at every entry point: one table of cases, each run the same way.

Entry points: uploads (``pumamed.imaging.uploads.read_upload``), the data directory
(``pumamed.imaging.load_dataset``), user tables (``pumamed.epi.outcomes.read_outcome_table`` and the
diabetes-model pipeline ``pumamed.epi.modeling.build_design``), checkpoints
(``pumamed.net.load_model``) and CLI flags (``python -m pumamed ...`` in a subprocess).

Every library case must raise a :class:`pumamed.errors.PumaMedError` subclass (never a raw
KeyError / ValueError / MemoryError) with a short, one-line, readable message; every CLI case must
exit non-zero with exactly one stderr line starting with ``error:`` and no traceback. Cases marked
``expect="ok"`` are messy-but-valid input that must *work* (e.g. codes without zero padding).
The UI half (image explorer upload, diabetes-models table upload) runs the real pages through the
router with AppTest and checks that an ``st.error`` is shown and no exception box.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pumamed.errors import CheckpointError, DataError, InputError, PumaMedError

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


# =============================================================================== file builders
def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def ramp_png(size: int = 48) -> bytes:
    return png_bytes(np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1)))


def noise_png(size: int = 64) -> bytes:
    """Incompressible content, so that cutting the file really removes image data."""
    return png_bytes(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares ``width`` x ``height`` (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def nifti_claiming(shape: tuple[int, int, int]) -> bytes:
    """A 4x4x4 NIfTI whose header is edited to declare ``shape`` (nibabel would allocate it)."""
    import nibabel as nib

    raw = bytearray(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    struct.pack_into("<8h", raw, 40, 3, *shape, 1, 1, 1, 1)
    return bytes(raw)


def dicom_bytes(rows: int = 32, columns: int = 32, with_pixels: bool = True, rle_bomb: bool = False) -> bytes:
    """A DICOM CR image built with pydicom; ``rle_bomb``: RLE-compressed zeros declaring rows x columns."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    meta.TransferSyntaxUID = RLELossless if rle_bomb else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelRepresentation = 0
    if rle_bomb:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        # RLE: one segment; each (0x81, 0) pair expands to 128 zero bytes.
        runs = b"\x81\x00" * (rows * columns // 128)
        frame = struct.pack("<16I", 1, 64, *([0] * 14)) + runs
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        if with_pixels:
            ds.PixelData = (np.arange(rows * columns) % 4096).astype(np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def jpeg_cmyk() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (40, 30), (10, 20, 30, 40)).save(out, "JPEG")
    return out.getvalue()


def png_16bit() -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.arange(50 * 60).reshape(50, 60) % 4000).astype(np.uint16)).save(out, "PNG")
    return out.getvalue()


def class_folder(root: Path, corrupt: str | None = None) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            (root / label / f"{i}.png").write_bytes(png_bytes(np.full((16, 16), 40 * i, np.uint8)))
    if corrupt:
        (root / "a" / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def tiny_checkpoint(folder: Path, latent: int = 4) -> Path:
    import torch

    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=latent, widths=(4, 8, 8), num_classes=2))
    save_checkpoint(folder, model, card_text="# tiny\n\nfor tests\n")
    return folder


class Marker:
    """Unpickling this would create a file: proof that nobody unpickled it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# =============================================================================== case table
@dataclass(frozen=True)
class Case:
    id: str
    entry: str                      # upload | data | table | checkpoint | cli
    action: Callable | None = None  # library: action(tmp_path) -> result (should raise)
    error: type = PumaMedError      # expected exception class
    match: str = ""                 # regular expression the message must contain (case-insensitive)
    argv: Callable | None = None    # cli: argv(tmp_path) -> list[str]
    expect: str = "error"           # "error" or "ok"
    check: Callable | None = None   # for expect="ok": check(result)
    needs: tuple = field(default=())  # fixtures needed: "data" (the real data directory)


def _upload(data: bytes, name: str, **kw):
    from pumamed.imaging.uploads import read_upload

    return lambda tmp: read_upload(data, name, **kw)


def _dataset(build: Callable[[Path], Path], split: str = "all", size: int = 32):
    def action(tmp):
        from pumamed.imaging import load_dataset

        dataset = load_dataset(build(tmp), split=split, size=size)
        dataset.preload()  # decode: corrupt files only show up here
        return dataset
    return action


def _npz(tmp: Path, name: str, **arrays) -> Path:
    np.savez(tmp / name, **arrays)
    return tmp / name


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _nih_folder(tmp: Path, csv_text: bytes) -> Path:
    root = tmp / "nih"
    (root / "images").mkdir(parents=True)
    (root / "images" / "00000001_000.png").write_bytes(ramp_png(16))
    (root / "Data_Entry_2017.csv").write_bytes(csv_text)
    return root


def _table(data: bytes | Callable[[Path], Path], count_col="count", **kw):
    def action(tmp):
        from pumamed.epi.outcomes import read_outcome_table

        source = data(tmp) if callable(data) else data
        return read_outcome_table(source, count_col, **kw)
    return action


def _design(data: bytes, **kw):
    def action(tmp):
        from pumamed.epi.modeling import ModelSpec, build_design

        spec = ModelSpec.of(outcome="table", table_bytes=data, table_name="upload.csv", run_boosting=False,
                         run_spatial=False, data_dir=os.environ.get("PUMAMED_DATA_DIR"), **kw)
        return build_design(spec)
    return action


def _excel(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_excel(tmp / "table.xlsx", index=False)
    return tmp / "table.xlsx"


def _parquet(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(tmp / "table.parquet")
    return tmp / "table.parquet"


def _checkpoint(edit: Callable[[Path], None]):
    def action(tmp):
        from pumamed.net import load_model

        folder = tiny_checkpoint(tmp / "ckpt")
        edit(folder)
        return load_model(folder, device="cpu")
    return action


def _other_shape(folder: Path) -> None:
    other = tiny_checkpoint(folder.parent / "other", latent=6)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")


def _other_arch(folder: Path) -> None:
    from pumamed.net import save_checkpoint
    from pumamed.net.baseline import ResNet18Classifier, ResNetConfig

    save_checkpoint(folder.parent / "resnet", ResNet18Classifier(ResNetConfig(image_size=32, num_classes=2)))
    shutil.copy(folder.parent / "resnet" / "model.safetensors", folder / "model.safetensors")


def _set_config(folder: Path, **model_values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model_values)
    (folder / "config.json").write_text(json.dumps(config))


def _pickle_as_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(pickle.dumps({"w": Marker(str(folder / "UNPICKLED"))}))


def _torch_save_as_weights(folder: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(3)}, folder / "model.safetensors")


def _outcome_csv(tmp: Path, text: str, name: str = "outcome.csv") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


GOOD_TABLE = b"CVEGEO,count\n1001,5\n1002,7\n"

CASES: list[Case] = [
    # ------------------------------------------------------------------ uploads
    Case("upload-empty", "upload", _upload(b"", "scan.png"), InputError, "empty"),
    Case("upload-truncated-png", "upload", _upload(noise_png()[:2000], "scan.png"), InputError, "corrupt|truncated"),
    Case("upload-corrupt-header", "upload", _upload(noise_png()[:24], "scan.png"), InputError, "readable|truncated"),
    Case("upload-pdf-renamed-png", "upload", _upload(b"%PDF-1.7\n1 0 obj <<>> endobj\n" * 20, "report.png"),
         InputError, "named as a PNG image.*corrupt or of another kind"),
    Case("upload-exe-renamed-png", "upload", _upload(b"MZ\x90\x00" + bytes(600), "setup.png"), InputError,
         "named as a PNG image.*corrupt or of another kind"),
    Case("upload-random-bytes-png", "upload", _upload(bytes(range(100)), "scan.png"), InputError,
         "corrupt or of another kind"),
    Case("upload-text-renamed-dcm", "upload", _upload(b"patient notes, not an image\n" * 10, "notes.dcm"),
         InputError, "not a DICOM file, or a corrupt one"),
    Case("upload-decompression-bomb", "upload", _upload(png_claiming(100_000, 100_000), "bomb.png"), InputError,
         "too large|limit"),
    Case("upload-huge-dimensions", "upload", _upload(png_claiming(7_000, 7_000), "big.png"), InputError,
         "limit"),
    Case("upload-over-byte-limit", "upload", _upload(noise_png(), "scan.png", max_bytes=1000), InputError,
         "upload limit"),
    Case("upload-bad-size", "upload", _upload(ramp_png(), "scan.png", size="large"), InputError, "size"),
    Case("upload-nifti-memory-bomb", "upload", _upload(nifti_claiming((30_000, 30_000, 30_000)), "brain.nii"),
         InputError, "limit|truncated"),
    Case("upload-nifti-truncated", "upload", _upload(nifti_claiming((64, 64, 64)), "brain.nii"), InputError,
         "truncated"),
    Case("upload-nifti-bad-gzip", "upload", _upload(b"\x1f\x8b" + b"junk" * 40, "brain.nii.gz"), InputError,
         "gzip"),
    Case("upload-dicom-no-pixels", "upload", _upload(dicom_bytes(with_pixels=False), "report.dcm"), InputError,
         "no pixel data"),
    Case("upload-dicom-truncated-pixels", "upload", _upload(dicom_bytes()[:-600], "cut.dcm"), InputError,
         "damaged|inconsistent"),
    Case("upload-dicom-rle-bomb", "upload", _upload(dicom_bytes(12_000, 12_000, rle_bomb=True), "bomb.dcm"),
         InputError, "limit"),
    Case("upload-cmyk-jpeg", "upload", _upload(jpeg_cmyk(), "cmyk.jpg"), expect="ok",
         check=lambda r: r.image.shape == (1, 128, 128) and "CMYK" in r.description),
    Case("upload-16bit-png", "upload", _upload(png_16bit(), "xray16.png", size=64), expect="ok",
         check=lambda r: r.image.shape == (1, 64, 64) and float(r.image.max()) > 0.9
         and r.metadata["bits_per_sample"] == 16),
    # ------------------------------------------------------------------ data directory
    Case("data-missing-folder", "data", _dataset(lambda t: t / "no_such_folder"), DataError, "neither"),
    Case("data-registered-but-absent", "data",
         lambda t: __import__("pumamed.imaging", fromlist=["x"]).load_dataset("busi", "all", 32, data_dir=t),
         DataError, "not found"),
    Case("data-empty-folder", "data", _dataset(lambda t: (t / "empty").mkdir() or t / "empty"), DataError,
         "no images"),
    Case("data-npz-not-a-zip", "data", _dataset(lambda t: _write(t, "x.npz", b"PK\x03\x04" + bytes(100))),
         DataError, "not a readable"),
    Case("data-npz-truncated", "data",
         _dataset(lambda t: _write(t, "x.npz", _npz(t, "ok.npz", train_images=np.zeros((40, 8, 8), np.uint8),
                                                     train_labels=np.arange(40) % 2).read_bytes()[:300])),
         DataError, "readable|damaged|truncated"),
    Case("data-npz-object-arrays", "data",
         _dataset(lambda t: _npz(t, "obj.npz", train_images=np.array([np.zeros(3), np.zeros(4)], dtype=object),
                                 train_labels=np.array([0, 1]))),
         DataError, "unusable|pickle"),
    Case("data-npz-nan-labels", "data",
         _dataset(lambda t: _npz(t, "nan.npz", train_images=np.zeros((4, 8, 8), np.uint8),
                                 train_labels=np.array([np.nan, 0, 1, 1]))),
         DataError, "labels"),
    Case("data-npz-negative-labels", "data",
         _dataset(lambda t: _npz(t, "neg.npz", train_images=np.zeros((4, 8, 8), np.uint8),
                                 train_labels=np.array([-1, 0, 1, 1]))),
         DataError, "labels"),
    Case("data-folder-with-corrupt-image", "data", _dataset(lambda t: class_folder(t / "imgs", corrupt="bad.png")),
         DataError, r"bad\.png"),
    Case("data-folder-single-class", "data",
         _dataset(lambda t: (class_folder(t / "one"), shutil.rmtree(t / "one" / "b"))[0]), DataError, "one class"),
    Case("data-nih-wrong-csv", "data", _dataset(lambda t: _nih_folder(t, b"a,b,c,d,e,f,g,h\n1,2,3,4,5,6,7,8\n")),
         DataError, "listed"),
    Case("data-nih-empty-csv", "data", _dataset(lambda t: _nih_folder(t, b"")), DataError, "Data_Entry"),
    Case("data-nih-binary-csv", "data", _dataset(lambda t: _nih_folder(t, b"\xff\xfe\x00\x01\x02" * 50)),
         DataError, "Data_Entry"),
    Case("data-bad-split", "data", _dataset(lambda t: class_folder(t / "imgs"), split="holdout"), InputError,
         "split"),
    # ------------------------------------------------------------------ user tables
    Case("table-unpadded-codes-work", "table", _table(b"CVEGEO,count\n1001,5\n2002,7\n9007,1\n", year_col=None),
         expect="ok", check=lambda t: list(t["CVEGEO"]) == ["01001", "02002", "09007"]),
    Case("table-float-codes-work", "table", _table(b"CVEGEO;count\n1001.0;5\n2002.0;7\n", year_col=None),
         expect="ok", check=lambda t: list(t["CVEGEO"]) == ["01001", "02002"]),
    Case("table-latin1-works", "table", _table("CVEGEO,defunciones,año\n1001,5,2020\n".encode("latin-1"),
                                               count_col="defunciones", year_col="año"),
         expect="ok", check=lambda t: t["count"].tolist() == [5.0] and any("UTF-8" in n for n in t.attrs["notes"])),
    Case("table-xlsx-integer-codes-work", "table",
         _table(lambda t: _excel(t, pd.DataFrame({"CVEGEO": [1001, 19039], "count": [3, 4]})), year_col=None),
         expect="ok", check=lambda t: list(t["CVEGEO"]) == ["01001", "19039"]),
    Case("table-parquet-integer-codes-work", "table",
         _table(lambda t: _parquet(t, pd.DataFrame({"CVEGEO": [1001, 19039], "count": [3, 4]})), year_col=None),
         expect="ok", check=lambda t: list(t["CVEGEO"]) == ["01001", "19039"]),
    Case("table-utf16-works", "table", _table("CVEGEO,count\n1001,5\n".encode("utf-16"), year_col=None),
         expect="ok", check=lambda t: list(t["CVEGEO"]) == ["01001"] and t["count"].tolist() == [5.0]),
    Case("table-duplicated-columns", "table", _table(b"CVEGEO,count,count\n1001,5,6\n", year_col=None), DataError,
         "more than once"),
    Case("table-missing-code-column", "table", _table(b"code,count\n1001,5\n", year_col=None), DataError,
         "missing column"),
    Case("table-duplicated-codes", "table", _table(b"CVEGEO,count\n1001,5\n01001,6\n", year_col=None), DataError,
         "duplicated"),
    Case("table-non-numeric-count", "table", _table(b"CVEGEO,count\n1001,many\n", year_col=None), DataError,
         "non-numeric"),
    Case("table-negative-count", "table", _table(b"CVEGEO,count\n1001,-4\n", year_col=None), DataError, "negative"),
    Case("table-not-a-code", "table", _table(b"CVEGEO,count\nAGS01,4\n", year_col=None), DataError,
         "not municipality codes"),
    Case("table-empty-file", "table", _table(b"", year_col=None), DataError, "not a readable CSV"),
    Case("table-broken-xlsx", "table", _table(lambda t: _write(t, "t.xlsx", b"PK\x03\x04 not a workbook"),
                                              year_col=None), DataError, "Excel"),
    Case("table-broken-parquet", "table", _table(lambda t: _write(t, "t.parquet", b"PAR1 not parquet"),
                                                 year_col=None), DataError, "parquet"),
    Case("table-zero-population", "table", _table(b"CVEGEO,count,pop\n1001,5,0\n", population_col="pop",
                                                  year_col=None), DataError, "population"),
    Case("model-nan-only-count", "table", _design(b"CVEGEO,count\n1001,\n1002,\n1003,\n"), DataError, "",
         needs=("data",)),
    Case("model-constant-zero-count", "table",
         _design(("CVEGEO,count\n" + "".join(f"{s:02d}{m:03d},0\n" for s in range(1, 33) for m in (1, 2, 3)))
                 .encode()), DataError, "zero", needs=("data",)),
    Case("model-n-smaller-than-p", "table", _design(b"CVEGEO,count\n1001,5\n1002,7\n1003,2\n"), DataError,
         "at least", needs=("data",)),
    Case("model-codes-outside-panel", "table", _design(b"CVEGEO,count\n99001,5\n99002,7\n"), DataError,
         "no code", needs=("data",)),
    Case("model-unknown-covariate", "table", _design(GOOD_TABLE, covariates=("no_such_column",)), DataError,
         "unknown covariate", needs=("data",)),
    # ------------------------------------------------------------------ checkpoints
    Case("ckpt-other-shape", "checkpoint", _checkpoint(_other_shape), CheckpointError, "wrong shape"),
    Case("ckpt-other-architecture", "checkpoint", _checkpoint(_other_arch), CheckpointError, "architecture"),
    Case("ckpt-pickle-as-safetensors", "checkpoint", _checkpoint(_pickle_as_weights), CheckpointError,
         "not a safetensors"),
    Case("ckpt-torch-save-as-safetensors", "checkpoint", _checkpoint(_torch_save_as_weights), CheckpointError,
         "not a safetensors"),
    Case("ckpt-truncated-weights", "checkpoint",
         _checkpoint(lambda f: _write(f, "model.safetensors", (f / "model.safetensors").read_bytes()[:500])),
         CheckpointError, "safetensors"),
    Case("ckpt-missing-config", "checkpoint", _checkpoint(lambda f: (f / "config.json").unlink()),
         CheckpointError, "config.json"),
    Case("ckpt-corrupt-config-json", "checkpoint", _checkpoint(lambda f: _write(f, "config.json", b"{\"arch\": ")),
         CheckpointError, "JSON"),
    Case("ckpt-config-bad-value", "checkpoint", _checkpoint(lambda f: _set_config(f, latent_dim="many")),
         CheckpointError, "config"),
    Case("ckpt-unknown-arch", "checkpoint",
         _checkpoint(lambda f: _write(f, "config.json", json.dumps(
             {**json.loads((f / "config.json").read_text()), "arch": "vit-huge"}).encode())),
         CheckpointError, "unknown architecture"),
    Case("ckpt-metrics-not-utf8", "checkpoint", _checkpoint(lambda f: _write(f, "metrics.json", b"\xff\xfe\x00{")),
         CheckpointError, "metrics.json"),
    Case("ckpt-config-memory-bomb", "checkpoint", _checkpoint(lambda f: _set_config(f, latent_dim=10**9)),
         CheckpointError, "invalid PumaMedNet config: latent_dim <= 4096"),
    Case("ckpt-config-huge-image", "checkpoint", _checkpoint(lambda f: _set_config(f, image_size=2**20)),
         CheckpointError, "image_size must be 8-1024"),
    Case("ckpt-missing-folder", "checkpoint",
         lambda t: __import__("pumamed.net", fromlist=["x"]).load_model(t / "nothing_here", device="cpu"),
         CheckpointError, "does not exist"),
    # ------------------------------------------------------------------ CLI flags
    Case("cli-unknown-dataset", "cli", argv=lambda t: ["train", "--dataset", "no_such_dataset", "--epochs", "1"],
         match="neither a known dataset"),
    Case("cli-bad-size-value", "cli", argv=lambda t: ["train", "--dataset", "breastmnist", "--size", "-64"],
         match="size"),
    Case("cli-size-not-a-number", "cli", argv=lambda t: ["train", "--dataset", "breastmnist", "--size", "abc"],
         match="invalid int"),
    Case("cli-missing-model-dir", "cli",
         argv=lambda t: ["evaluate", "--model", str(t / "no_model"), "--dataset", "breastmnist"],
         match="does not exist"),
    Case("cli-pickled-model", "cli",
         argv=lambda t: ["evaluate", "--model", str(tiny_checkpoint(t / "m") and _pickle_as_weights(t / "m")
                                                    or t / "m"), "--dataset", "breastmnist"],
         match="not a safetensors"),
    Case("cli-outcome-csv-missing-column", "cli",
         argv=lambda t: ["epi", "model", "--json", "--outcome", _outcome_csv(t, "code,count\n1001,5\n")],
         match="missing column"),
    Case("cli-unknown-outcome", "cli", argv=lambda t: ["epi", "model", "--outcome", "no_such_outcome"],
         match="unknown count outcome"),
]

LIBRARY_CASES = [c for c in CASES if c.entry != "cli"]
CLI_CASES = [c for c in CASES if c.entry == "cli"]


def _assert_readable(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "Traceback" not in message
    assert "\n" not in message.strip(), f"message spans several lines: {message!r}"
    assert len(message) < 600, f"message too long ({len(message)} characters)"


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=[c.id for c in LIBRARY_CASES])
def test_library_entry_point(case: Case, tmp_path, request):
    if "data" in case.needs:
        request.getfixturevalue("epi_root")
    if case.expect == "ok":
        result = case.action(tmp_path)
        assert case.check(result), f"{case.id}: unexpected result {result!r}"
        return
    with pytest.raises(PumaMedError) as caught:
        case.action(tmp_path)
    assert isinstance(caught.value, case.error), f"{case.id}: {type(caught.value).__name__}, not {case.error.__name__}"
    message = str(caught.value)
    _assert_readable(message)
    if case.match:
        import re

        assert re.search(case.match, message, re.IGNORECASE), f"{case.id}: {message!r} lacks /{case.match}/"
    # a planted pickle is never unpickled on the way to the error
    assert not list(tmp_path.rglob("UNPICKLED"))


# ------------------------------------------------------------------------------- CLI cases
@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, data_root):
    """Run every CLI case at once (each is a fresh interpreter; in parallel they cost one start-up)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PUMAMED_DATA_DIR=str(data_root))
    running = {}
    for case in CLI_CASES:
        tmp = tmp_path_factory.mktemp(case.id)
        argv = [sys.executable, "-m", "pumamed", *case.argv(tmp)]
        running[case.id] = subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
    results = {}
    for case_id, proc in running.items():
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[case_id] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_entry_point(case: Case, cli_results):
    import re

    code, _, err = cli_results[case.id]
    assert code not in (0, None), f"{case.id}: exit code {code}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case.id}: stderr should be one line, got {len(lines)}:\n{err[-2000:]}"
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in err and "unexpected" not in lines[0], lines[0]
    assert re.search(case.match, lines[0], re.IGNORECASE), f"{case.id}: {lines[0]!r} lacks /{case.match}/"


def test_case_table_is_broad():
    """At least 30 cases, and every entry point covered."""
    assert len(CASES) >= 30
    assert {c.entry for c in CASES} == {"upload", "data", "table", "checkpoint", "cli"}
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# =============================================================================== UI cases
UI_UPLOADS = [
    ("truncated.png", noise_png()[:2000], "image/png"),
    ("report.png", b"%PDF-1.7\n1 0 obj <<>> endobj\n" * 20, "image/png"),
    ("setup.png", b"MZ\x90\x00" + bytes(600), "image/png"),
    ("empty.png", b"", "image/png"),
    ("bomb.png", png_claiming(100_000, 100_000), "image/png"),
    ("nopixels.dcm", dicom_bytes(with_pixels=False), "application/dicom"),
]


@pytest.fixture(scope="module")
def ui_models(tmp_path_factory) -> Path:
    import torch

    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    root = tmp_path_factory.mktemp("ui_models")
    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=8, widths=(8, 16, 16, 16), num_classes=3,
                                        class_names=["normal", "benign", "malignant"]))
    save_checkpoint(root / "tiny", model, config={"data": {"datasets": ["mini_mias"]}}, card_text="# tiny\n")
    return root


def _ui_ok_but_error(at, what: str) -> None:
    assert not at.exception, f"{what}: exception box {[e.value for e in at.exception]}"
    assert at.error, f"{what}: no st.error shown"
    for element in at.error:
        assert "Traceback" not in element.value
        assert "unexpected" not in element.value, f"{what}: an unexpected error, not a user error: {element.value}"
    # the "Technical details" expander is only for bugs
    assert not [e for e in at.expander if e.label == "Technical details"], f"{what}: traceback expander shown"


def test_ui_image_explorer_bad_uploads(monkeypatch, ui_models, imaging_root):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(ui_models))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("views/image_explorer.py")
    at.session_state["ie_source"] = "Upload"
    at.run()
    assert not at.exception
    for name, data, mime in UI_UPLOADS:
        at.file_uploader(key="ie_upload").set_value((name, data, mime))
        at.run()
        _ui_ok_but_error(at, name)
        assert any(name in e.value for e in at.error), f"the message should name {name}"
    # a good file afterwards works: the page recovers
    at.file_uploader(key="ie_upload").set_value(("ramp.png", ramp_png(), "image/png"))
    at.run()
    assert not at.exception and not at.error
    assert any("upload · ramp.png" in c.value for c in at.caption)


UI_TABLES = [
    ("missing_column.csv", b"code,count\n1001,5\n", "missing column"),
    ("duplicated.csv", b"CVEGEO,count\n1001,5\n01001,7\n", "duplicated"),
    ("not_codes.csv", b"CVEGEO,count\nAGS,5\n", "not municipality codes"),
    ("binary.xlsx", b"PK\x03\x04 garbage", "zip"),  # named by content: a damaged zip
    ("nan_only.csv", b"CVEGEO,count\n1001,\n1002,\n", ""),
]


def test_ui_models_page_bad_tables(epi_root):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("views/epi_models.py")
    at.session_state["models_outcome_kind"] = "Upload a table"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    for name, data, expected in UI_TABLES:
        mime = "text/csv" if name.endswith(".csv") else "application/octet-stream"
        at.file_uploader(key="models_upload").set_value((name, data, mime))
        at.run()
        _ui_ok_but_error(at, name)
        if expected:
            assert any(expected.lower() in e.value.lower() for e in at.error), [e.value for e in at.error]
