"""NIfTI volumes (nibabel) as 2-D slices with robust intensity normalisation.

- Volumes are reoriented to the closest canonical (RAS+) orientation, so ``axis=0`` gives
  sagittal, ``axis=1`` coronal and ``axis=2`` axial slices whatever the file's own orientation.
- Each slice is rotated 90 degrees so that the second in-plane axis points up (anterior or
  superior up), the usual way to look at RAS data.
- Intensities are scaled from the volume's 0.5th..99.5th percentile (over finite voxels) to
  [0, 1] and clipped: one hot voxel or a negative background cannot wash out the picture, and
  all slices of one volume share one scale.
- 4-D files (time series, multi-echo): ``volume`` picks the 3-D volume (default 0).
- Bytes are read in memory (nibabel ``FileHolder`` on ``BytesIO``); ``.nii.gz`` is
  decompressed with a size cap so a gzip bomb cannot fill memory.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pumamed.errors import InputError

ROBUST_PERCENTILES = (0.5, 99.5)
AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}
DEFAULT_MAX_DECOMPRESSED = 1 << 30  # 1 GiB of voxels at most


@dataclass
class NiftiVolume:
    data: np.ndarray                   # float32 3-D, RAS+ canonical, normalised to [0, 1]
    zooms: tuple[float, ...]           # voxel size in mm along the canonical axes
    metadata: dict = field(default_factory=dict)

    def n_slices(self, axis: int = 2) -> int:
        return int(self.data.shape[_check_axis(axis)])

    def slice(self, index: int | None = None, axis: int = 2) -> np.ndarray:
        """2-D float32 slice in [0, 1] (default: the middle slice), displayed anterior/superior up."""
        axis = _check_axis(axis)
        n = self.data.shape[axis]
        index = n // 2 if index is None else int(index)
        if not 0 <= index < n:
            raise InputError(f"slice {index} does not exist: the volume has {n} {AXIS_NAMES[axis]} slices "
                             f"(0..{n - 1})")
        plane = np.take(self.data, index, axis=axis)
        return np.ascontiguousarray(np.rot90(plane))

    def slices(self, size: int, axis: int = 2, step: int = 1, skip_empty: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """All slices along ``axis`` (every ``step``-th) as uint8 (K, size, size), with their indices.

        ``skip_empty`` drops slices whose content is (almost) all background.
        """
        from pumamed.imaging.decode import array_to_uint8, square_resize
        from PIL import Image

        axis = _check_axis(axis)
        images, kept = [], []
        for index in range(0, self.data.shape[axis], max(1, int(step))):
            plane = self.slice(index, axis)
            if skip_empty and (plane > 0.05).mean() < 0.01:
                continue
            images.append(square_resize(Image.fromarray(array_to_uint8(plane, 0.0, 1.0)), size))
            kept.append(index)
        if not images:
            return np.zeros((0, size, size), np.uint8), np.zeros(0, np.int64)
        return np.stack(images), np.array(kept)


def _check_axis(axis) -> int:
    try:
        axis = int(axis)
    except (TypeError, ValueError) as exc:
        raise InputError(f"axis must be 0 (sagittal), 1 (coronal) or 2 (axial), got {axis!r}") from exc
    if axis not in AXIS_NAMES:
        raise InputError(f"axis must be 0 (sagittal), 1 (coronal) or 2 (axial), got {axis}")
    return axis


def _gunzip(data: bytes, limit: int) -> bytes:
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                if out.tell() > limit:
                    raise InputError(f"the compressed NIfTI expands beyond {limit:,} bytes; refusing to load it")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"the .nii.gz file is not valid gzip data ({exc})") from exc
    return out.getvalue()


def _check_declared_size(image, available: int | None, max_decompressed: int) -> None:
    """Refuse a header whose dimensions promise more voxels than the file holds or than we agree
    to allocate: nibabel would otherwise allocate the declared array before reading anything (a
    360-byte file claiming 30000^3 voxels is a memory bomb)."""
    header = image.header
    try:
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = int(np.dtype(header.get_data_dtype()).itemsize)
        offset = int(getattr(header, "get_data_offset", lambda: 0)() or 0)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the NIfTI header is damaged ({exc})") from exc
    if any(n < 0 for n in shape):
        raise InputError(f"the NIfTI header declares negative dimensions {shape}")
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    # Output is float32: the cap applies to what we would hold in memory.
    if voxels * max(itemsize, 4) > max_decompressed:
        raise InputError(f"the NIfTI volume declares {'x'.join(map(str, shape))} voxels, above the limit of "
                         f"{max_decompressed:,} bytes in memory; crop or downsample it first")
    if available is not None and offset + voxels * itemsize > available:
        raise InputError(f"the NIfTI file is truncated: its header declares {'x'.join(map(str, shape))} voxels "
                         f"({offset + voxels * itemsize:,} bytes) but the file has {available:,} bytes")


def is_nifti_bytes(data: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic 'n+1' at 344) or NIfTI-2 (540, 'n+2' at 4), either endianness."""
    if len(data) >= 348 and data[344:347] == b"n+1":
        return True
    return len(data) >= 540 and data[4:7] == b"n+2"


def read_nifti(source, volume: int = 0, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> NiftiVolume:
    """Read a NIfTI-1/2 file (path, or bytes of ``.nii`` / ``.nii.gz``) as a normalised 3-D volume."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if not data:
                raise InputError("the NIfTI file is empty")
            if data[:2] == b"\x1f\x8b":
                data = _gunzip(data, max_decompressed)
            if not is_nifti_bytes(data):
                raise InputError("not a NIfTI-1 or NIfTI-2 file (header magic missing)")
            klass = nib.Nifti2Image if data[4:7] == b"n+2" else nib.Nifti1Image
            holder = nib.FileHolder(fileobj=io.BytesIO(data))
            image = klass.from_file_map({"header": holder, "image": holder})
            _check_declared_size(image, len(data), max_decompressed)
        else:
            image = nib.load(str(Path(source)))
            _check_declared_size(image, None, max_decompressed)
        image = nib.as_closest_canonical(image)
        array = np.asarray(image.dataobj, dtype=np.float32)
    except InputError:
        raise
    except (ImageFileError, ValueError, OSError, EOFError, TypeError, IndexError) as exc:
        raise InputError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 4:
        if not 0 <= volume < array.shape[3]:
            raise InputError(f"volume {volume} does not exist; the file has {array.shape[3]}")
        array = array[..., volume]
    elif array.ndim > 4:
        raise InputError(f"NIfTI with {array.ndim} dimensions is not supported (2-D, 3-D or 4-D only)")
    if array.size == 0:
        raise InputError("the NIfTI volume has no voxels")
    finite = array[np.isfinite(array)]
    low, high = np.percentile(finite, ROBUST_PERCENTILES) if finite.size else (0.0, 1.0)
    if high <= low:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    normalised = np.zeros_like(array) if high <= low else np.clip((array - low) / (high - low), 0, 1)
    normalised = np.nan_to_num(normalised, nan=0.0).astype(np.float32)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    metadata = {"shape": list(array.shape), "voxel_size_mm": list(zooms),
                "orientation": "".join(nib.aff2axcodes(image.affine)),
                "intensity_range": [float(low), float(high)], "percentiles": list(ROBUST_PERCENTILES)}
    return NiftiVolume(normalised, zooms, metadata)
