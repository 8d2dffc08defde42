"""DICOM images (pydicom) to display-ready grey pixels, without patient-identifying data.

Pipeline for one frame:

1. decode the pixel data (uncompressed, deflated, RLE natively; JPEG, JPEG-LS, JPEG 2000 via
   Pillow / pylibjpeg plugins: see ``requirements.txt``); colour images go to luma;
2. modality LUT: ``RescaleSlope`` / ``RescaleIntercept`` (or a Modality LUT Sequence), so CT is
   in Hounsfield units;
3. VOI: an explicit ``window=(center, width)`` if given, else the file's first
   ``WindowCenter``/``WindowWidth``, else its VOI LUT Sequence, else a robust
   0.5-99.5 percentile range of the frame;
4. scale to [0, 1] and invert ``MONOCHROME1`` (where high values are dark) so bright = dense.

Privacy: :func:`safe_metadata` keeps only a whitelist of technical tags plus sex and an age
bucketed at 90+ (HIPAA safe harbour). Names, ids, dates, institutions, free text and private tags
are never copied, so they cannot be shown, logged or exported. Error messages never quote tag
values.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pumamed.errors import InputError

ROBUST_PERCENTILES = (0.5, 99.5)

# Tags that carry no identity (technical acquisition facts). Everything else is dropped.
SAFE_TAGS = (
    "Modality", "BodyPartExamined", "ViewPosition", "ImageLaterality", "Laterality", "PatientSex",
    "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "Manufacturer",
    "ManufacturerModelName", "KVP", "ExposureIndex", "PresentationIntentType",
)
# Never exported, whatever SAFE_TAGS says (kept as a guard for future edits and for tests).
IDENTIFYING_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "OtherPatientIDs", "OtherPatientNames",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "StudyDate",
    "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "DeviceSerialNumber", "StationName", "OperatorsName", "PerformingPhysicianName",
    "PatientTelephoneNumbers", "StudyID", "IssuerOfPatientID", "PatientMotherBirthName",
)


@dataclass
class DicomImage:
    pixels: np.ndarray                 # float32 H x W in [0, 1], bright = dense
    metadata: dict = field(default_factory=dict)  # safe whitelist only
    frame: int = 0
    n_frames: int = 1
    window: tuple[float, float] | None = None  # (center, width) used, None for percentile scaling


def _value(value):
    """A JSON-friendly copy of a pydicom element value."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import DSfloat, IS

    if isinstance(value, (MultiValue, list, tuple)):
        return [_value(v) for v in value]
    if isinstance(value, (DSfloat, float)):
        return float(value)
    if isinstance(value, (IS, int)):
        return int(value)
    return str(value)


def _age_years(age: str) -> float | None:
    """DICOM AS ('045Y', '006M', '010W', '003D') to years."""
    age = str(age).strip().upper()
    if len(age) < 2 or not age[:-1].isdigit():
        return None
    number, unit = int(age[:-1]), age[-1]
    return {"Y": number, "M": number / 12, "W": number / 52.18, "D": number / 365.25}.get(unit)


def safe_metadata(ds) -> dict:
    """The whitelisted, non-identifying metadata of a pydicom dataset (see module docstring)."""
    meta = {}
    for keyword in SAFE_TAGS:
        if keyword in IDENTIFYING_TAGS:
            continue
        element = ds.get(keyword)
        if element is None or element == "":
            continue
        try:
            meta[keyword] = _value(element)
        except Exception:  # noqa: BLE001 - a malformed value is simply left out
            continue
    age = _age_years(ds.get("PatientAge", "")) if ds.get("PatientAge") else None
    if age is not None:
        meta["PatientAgeYears"] = "90+" if age >= 90 else round(age, 1)
    transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if transfer is not None:
        meta["TransferSyntax"] = transfer.name
    sop = ds.get("SOPClassUID")
    if sop is not None:
        meta["SOPClass"] = getattr(sop, "name", "")
    return meta


def _read_dataset(source):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("the DICOM file is empty")
        fp = io.BytesIO(data)
    else:
        fp = Path(source)
    try:
        try:
            return pydicom.dcmread(fp)
        except InvalidDicomError:
            # Files written without the 128-byte preamble are still common; accept them only if
            # they parse into something with pixel data below.
            if hasattr(fp, "seek"):
                fp.seek(0)
            return pydicom.dcmread(fp, force=True)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise InputError(f"not a readable DICOM file ({type(exc).__name__})") from exc


def is_dicom_bytes(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


# Largest frame decoded (rows x columns), checked from the header *before* decoding: compressed
# pixel data (RLE, JPEG 2000) of a few MiB can declare a frame of many GiB (decompression bomb).
DEFAULT_MAX_PIXELS = 64_000_000


def read_dicom(source, frame: int | None = None, window: tuple[float, float] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> DicomImage:
    """Read one frame of a DICOM file (path or bytes) as display-ready grey pixels in [0, 1].

    ``frame``: for multi-frame files (default: the middle frame). ``window``: (center, width) in
    modality units (e.g. HU for CT) overriding the file's own window. ``max_pixels``: frames
    declaring more pixels than this are refused before their pixel data is decoded.
    """
    from pydicom import pixels

    ds = _read_dataset(source)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError("the DICOM file has no pixel data (it may be a report, a presentation state or "
                         "a DICOMDIR), so there is no image to show")
    for required in ("Rows", "Columns"):
        if required not in ds:
            raise InputError(f"the DICOM file lacks {required}, so its pixel data cannot be read")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError) as exc:
        raise InputError("the DICOM file has unreadable Rows/Columns") from exc
    if rows <= 0 or columns <= 0:
        raise InputError(f"the DICOM file declares an empty image ({columns}x{rows})")
    if rows * columns > max_pixels:
        raise InputError(f"the DICOM image is {columns}x{rows} = {rows * columns:,} pixels, above the limit of "
                         f"{max_pixels:,} (a guard against decompression bombs)")
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None or "TransferSyntaxUID" not in file_meta:
        # Preamble-less files without file meta: assume the DICOM default (implicit VR little endian).
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ImplicitVRLittleEndian

        ds.file_meta = file_meta if file_meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = n_frames // 2 if frame is None else int(frame)
    if not 0 <= index < n_frames:
        raise InputError(f"frame {index} does not exist; the file has {n_frames} frame(s)")
    try:
        array = pixels.pixel_array(ds, index=index if n_frames > 1 else None, raw=False)
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.TransferSyntaxUID
        raise InputError(f"cannot decode DICOM pixel data compressed as {syntax.name}: no installed decoder "
                         "handles it (install pylibjpeg with its plugins, or python-gdcm)") from exc
    except Exception as exc:  # noqa: BLE001 - truncated or inconsistent pixel data
        raise InputError(f"the DICOM pixel data is damaged or inconsistent ({type(exc).__name__})") from exc
    if array.ndim == 3 and array.shape[-1] in (3, 4):  # colour (already converted to RGB by pydicom)
        from pumamed.imaging.decode import rgb_to_grey

        array = rgb_to_grey(array)
        values = array.astype(np.float32)
        chosen = None
        low, high = np.percentile(values, ROBUST_PERCENTILES)
    else:
        if array.ndim != 2:
            raise InputError(f"unexpected DICOM pixel array shape {array.shape}")
        values = np.asarray(pixels.apply_modality_lut(array, ds), dtype=np.float32)
        chosen = None
        if window is not None:
            chosen = (float(window[0]), float(window[1]))
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            center, width = ds.WindowCenter, ds.WindowWidth
            center = float(center[0] if hasattr(center, "__len__") and not isinstance(center, str) else center)
            width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
            chosen = (center, width)
        if chosen is not None:
            if chosen[1] <= 0:
                raise InputError(f"window width must be positive, got {chosen[1]}")
            low, high = chosen[0] - chosen[1] / 2, chosen[0] + chosen[1] / 2
        elif "VOILUTSequence" in ds:
            values = np.asarray(pixels.apply_voi_lut(values, ds), dtype=np.float32)
            low, high = float(values.min()), float(values.max())
        else:
            finite = values[np.isfinite(values)]
            low, high = np.percentile(finite, ROBUST_PERCENTILES) if finite.size else (0.0, 1.0)
    if high <= low:
        scaled = np.zeros(values.shape, dtype=np.float32)
    else:
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return DicomImage(scaled, safe_metadata(ds), index, n_frames, chosen)
