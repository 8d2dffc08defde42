"""Uploaded files (bytes from the app) to a validated image: PNG, JPEG, TIFF, DICOM, NIfTI.

Guards, in order: size (``max_bytes``), empty file, format sniffed from the content (the file
name only breaks ties, e.g. a preamble-less DICOM), a pixel-count limit checked from the header
*before* decoding (decompression bombs; for NIfTI a cap on the decompressed bytes), then a full
decode whose failures (truncated, corrupt) become :class:`~pumamed.errors.InputError` with a
message for the user. Nothing is written to disk: every reader works on ``BytesIO``.

The metadata dict is safe to show: format facts only, and for DICOM the whitelist of
:func:`pumamed.imaging.dicom.safe_metadata` (no names, ids, dates or institutions). EXIF and PNG
text chunks are never copied (they can hold names or places).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
import torch
from PIL import Image

from pumamed.errors import InputError
from pumamed.imaging.decode import DEFAULT_MAX_PIXELS, array_to_uint8, open_image, pil_to_grey, square_resize
from pumamed.imaging.dicom import is_dicom_bytes, read_dicom
from pumamed.imaging.nifti import AXIS_NAMES, is_nifti_bytes, read_nifti

MAX_UPLOAD_BYTES = 50 * 1024 * 1024        # 50 MiB: a CR/DX DICOM or a brain MRI volume fits
MAX_UPLOAD_PIXELS = 40_000_000            # 40 Mpx: above any radiograph (~ 4300 x 3500 = 15 Mpx)
SUPPORTED = "PNG, JPEG, TIFF, DICOM (.dcm) or NIfTI (.nii, .nii.gz)"
RASTER_FORMATS = {"PNG", "JPEG", "TIFF"}


@dataclass
class UploadedImage:
    image: torch.Tensor          # float32 1 x S x S in [0, 1]
    metadata: dict = field(default_factory=dict)  # safe to display / export
    description: str = ""        # one line for the page, e.g. "DICOM CR 2048x2500, window 2000/4000"
    kind: str = ""               # png | jpeg | tiff | dicom | nifti
    original_size: tuple[int, int] = (0, 0)  # (height, width) before padding / resizing

    @property
    def array(self) -> np.ndarray:
        """The image as uint8 S x S (for display)."""
        return (self.image[0].numpy() * 255.0 + 0.5).astype(np.uint8)


def sniff_format(data: bytes, filename: str = "") -> str | None:
    """'png', 'jpeg', 'tiff', 'dicom', 'nifti' from magic bytes (file name only as a fallback)."""
    name = (filename or "").lower()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if is_dicom_bytes(data):
        return "dicom"
    if is_nifti_bytes(data):
        return "nifti"
    if data[:2] == b"\x1f\x8b" and (name.endswith(".nii.gz") or name.endswith(".gz")):
        return "nifti"
    if name.endswith((".dcm", ".dicom")) or (PurePath(name).suffix == "" and len(data) > 8):
        # DICOM written without the 128-byte preamble: only trusted if it parses as DICOM later.
        return "dicom-raw"
    return None


def _tensor(square: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(square).unsqueeze(0).float().div_(255.0)


def _read_raster(data: bytes, kind: str, size: int, max_pixels: int) -> UploadedImage:
    image = open_image(data, max_pixels=max_pixels)
    if image.format not in RASTER_FORMATS:
        raise InputError(f"unsupported image format {image.format}; upload {SUPPORTED}")
    width, height = image.size
    mode, fmt = image.mode, image.format
    n_frames = getattr(image, "n_frames", 1)
    try:
        if fmt == "JPEG" and mode in ("L", "RGB", "YCbCr"):
            image.draft("L", (size, size))
        image.load()
        grey = pil_to_grey(image)
        square = square_resize(grey, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"the {fmt} file is corrupt or truncated ({exc})") from exc
    finally:
        image.close()
    bits = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32, "1": 1}.get(mode, 8)
    metadata = {"format": fmt, "mode": mode, "width": width, "height": height, "bits_per_sample": bits}
    if n_frames > 1:
        metadata["frames"] = n_frames
    notes = []
    if mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F", "1"):
        notes.append(f"{mode} converted to grey")
    if width != height:
        notes.append("padded to square")
    if n_frames > 1:
        notes.append(f"first of {n_frames} pages")
    description = f"{fmt} {width}x{height} {mode}" + (f" ({', '.join(notes)})" if notes else "")
    return UploadedImage(_tensor(square), metadata, description, kind, (height, width))


def _read_dicom(data: bytes, size: int, max_pixels: int, frame: int | None, window) -> UploadedImage:
    dicom = read_dicom(data, frame=frame, window=window, max_pixels=max_pixels)
    height, width = dicom.pixels.shape
    if height * width > max_pixels:
        raise InputError(f"DICOM image is {width}x{height}, above the limit of {max_pixels:,} pixels")
    square = square_resize(Image.fromarray(array_to_uint8(dicom.pixels, 0.0, 1.0)), size)
    meta = dict(dicom.metadata)
    meta.update({"format": "DICOM", "frame": dicom.frame, "frames": dicom.n_frames})
    parts = [f"DICOM {meta.get('Modality', '')} {width}x{height}".replace("  ", " ")]
    if dicom.window:
        parts.append(f"window {dicom.window[0]:g}/{dicom.window[1]:g}")
    else:
        parts.append("percentile 0.5-99.5 scaling")
    if meta.get("PhotometricInterpretation") == "MONOCHROME1":
        parts.append("MONOCHROME1 inverted")
    if dicom.n_frames > 1:
        parts.append(f"frame {dicom.frame + 1} of {dicom.n_frames}")
    return UploadedImage(_tensor(square), meta, ", ".join(parts), "dicom", (height, width))


def _read_nifti(data: bytes, size: int, max_bytes: int, slice_index: int | None, axis: int) -> UploadedImage:
    volume = read_nifti(data, max_decompressed=max(4 * max_bytes, 256 * 1024 * 1024))
    plane = volume.slice(slice_index, axis)
    index = volume.n_slices(axis) // 2 if slice_index is None else int(slice_index)
    square = square_resize(Image.fromarray(array_to_uint8(plane, 0.0, 1.0)), size)
    meta = dict(volume.metadata)
    meta.update({"format": "NIfTI", "axis": axis, "plane": AXIS_NAMES[axis], "slice": index,
                 "n_slices": volume.n_slices(axis)})
    shape = "x".join(str(s) for s in volume.data.shape)
    description = (f"NIfTI volume {shape}, {AXIS_NAMES[axis]} slice {index} of {volume.n_slices(axis)}, "
                   "intensities scaled by the 0.5-99.5 percentiles")
    return UploadedImage(_tensor(square), meta, description, "nifti", plane.shape)


def read_upload(data: bytes, filename: str = "", size: int = 128, max_bytes: int = MAX_UPLOAD_BYTES,
                max_pixels: int = MAX_UPLOAD_PIXELS, slice_index: int | None = None, axis: int = 2,
                frame: int | None = None, window: tuple[float, float] | None = None) -> UploadedImage:
    """Validate and decode one uploaded file into a 1 x ``size`` x ``size`` image.

    ``slice_index`` / ``axis``: which NIfTI slice (default the middle axial one).
    ``frame`` / ``window``: multi-frame DICOM frame (default middle) and a (center, width) override.
    Raises :class:`InputError` for empty, too large, corrupt or unsupported files.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InputError("the upload must be given as bytes")
    label = f"'{PurePath(filename).name}'" if filename else "the file"
    if len(data) == 0:
        raise InputError(f"{label} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InputError(f"{label} is {len(data) / 2**20:.1f} MiB, above the upload limit of "
                         f"{max_bytes / 2**20:.0f} MiB")
    try:
        size = int(size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"size must be an integer number of pixels, got {size!r}") from exc
    if not 8 <= size <= 1024:
        raise InputError(f"size must be between 8 and 1024 pixels, got {size}")
    max_pixels = min(int(max_pixels), DEFAULT_MAX_PIXELS)
    kind = sniff_format(data, filename)
    if kind in ("png", "jpeg", "tiff"):
        return _read_raster(data, kind, int(size), max_pixels)
    if kind == "dicom":
        return _read_dicom(data, int(size), max_pixels, frame, window)
    if kind == "nifti":
        return _read_nifti(data, int(size), max_bytes, slice_index, axis)
    named = _named_format(filename)
    if kind == "dicom-raw":
        if not _parses_as_dicom(data):
            if named == "DICOM":
                raise InputError(f"{label} is not a DICOM file, or a corrupt one: it has no DICOM header "
                                 "('DICM' at byte 128) and its content does not parse as DICOM data")
            raise InputError(f"{label} is not a supported image: upload {SUPPORTED}")
        try:
            return _read_dicom(data, int(size), max_pixels, frame, window)
        except InputError as exc:
            raise InputError(f"{label} is not a supported image: upload {SUPPORTED} ({exc})") from exc
    if named:
        # The name promises a format the content does not have: say so, not "unsupported".
        raise InputError(f"{label} is named as a {named} image, but its content is not {named}: the file is "
                         f"corrupt or of another kind (supported: {SUPPORTED})")
    raise InputError(f"{label} is not a supported image: upload {SUPPORTED}")


_NAMED_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
                  ".dcm": "DICOM", ".dicom": "DICOM", ".nii": "NIfTI", ".gz": "NIfTI"}


def _named_format(filename: str) -> str | None:
    """The supported format a file's name claims (by extension), or None."""
    return _NAMED_FORMATS.get(PurePath((filename or "").lower()).suffix)


def _parses_as_dicom(data: bytes) -> bool:
    """Whether preamble-less bytes parse into a DICOM data set with at least one of the tags every
    image file carries (a text file force-parsed by pydicom gives garbage tags, none of these)."""
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        # SOP Class UID, Modality, Study Instance UID, Rows, Columns, Photometric Interpretation
        return any(tag in ds for tag in (0x00080016, 0x00080060, 0x0020000D, 0x00280010, 0x00280011, 0x00280004))
    except Exception:  # noqa: BLE001 - pydicom raises many types for non-DICOM bytes
        return False
