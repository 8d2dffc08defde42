"""DICOM, NIfTI and upload handling, including the malformed inputs of issue 3."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from pumamed.errors import InputError
from pumamed.imaging import load_dataset, read_dicom, read_nifti, read_upload

SECRET_NAME, SECRET_ID = "Doe^Jane", "SECRET-4711"


def dicom_bytes(pixels: np.ndarray | None = None, photometric="MONOCHROME2", preamble=True, compress=None,
                ct=False, **tags) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if ct else SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = SECRET_NAME, SECRET_ID, "19300101"
    ds.InstitutionName, ds.StudyDate = "St Secret Hospital", "20240102"
    ds.PatientSex, ds.PatientAge, ds.Modality = "F", "093Y", "CT" if ct else "CR"
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixels is not None:
        frames = pixels.shape[0] if pixels.ndim == 3 else 1
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        ds.PixelData = pixels.tobytes()
        if compress:
            ds.compress(compress)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=preamble)
    return out.getvalue()


RAMP = np.tile(np.arange(64, dtype=np.uint16) * 64, (48, 1))  # 0..4032, brightest on the right


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kwargs.pop("format", "PNG"), **kwargs)
    return out.getvalue()


# ----------------------------------------------------------------------------- DICOM
def test_dicom_monochrome2_and_monochrome1_inversion():
    plain = read_dicom(dicom_bytes(RAMP)).pixels
    inverted = read_dicom(dicom_bytes(RAMP, photometric="MONOCHROME1")).pixels
    assert plain.shape == (48, 64) and plain[:, 0].max() < 0.05 and plain[:, -1].min() > 0.95
    assert np.allclose(inverted, 1.0 - plain)
    upload = read_upload(dicom_bytes(RAMP, photometric="MONOCHROME1"), "x.dcm", size=32)
    assert upload.image[0, 16, 0] > 0.9 and upload.image[0, 16, -1] < 0.1
    assert "MONOCHROME1 inverted" in upload.description


def test_dicom_rescale_and_window_in_hounsfield_units():
    stored = np.tile(np.arange(0, 2000, 2000 // 64, dtype=np.int16)[:64], (8, 1))  # HU = stored - 1024
    data = dicom_bytes(stored, ct=True, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    image = read_dicom(data)
    assert image.window == (40.0, 400.0)
    hu = stored.astype(float) - 1024
    expected = np.clip((hu - (40 - 200)) / 400, 0, 1)
    assert np.allclose(image.pixels, expected, atol=1e-5)
    # An explicit window overrides the file's (bone window).
    bone = read_dicom(data, window=(500, 2000)).pixels
    assert np.allclose(bone, np.clip((hu - (500 - 1000)) / 2000, 0, 1), atol=1e-5)


def test_dicom_without_window_uses_robust_percentiles():
    pixels = np.full((32, 32), 1000, np.uint16)
    pixels[:, 16:] = 2000
    pixels[0, 0] = 4095  # one hot pixel must not wash out the image
    image = read_dicom(dicom_bytes(pixels)).pixels
    assert image[5, 5] < 0.05 and image[5, 20] > 0.95


def test_dicom_without_pixel_data_is_a_clear_error():
    with pytest.raises(InputError, match="no pixel data"):
        read_upload(dicom_bytes(None), "report.dcm")


def test_dicom_identifying_tags_never_leak():
    upload = read_upload(dicom_bytes(RAMP), "scan.dcm", size=32)
    text = repr(upload.metadata) + upload.description + repr(upload)
    for secret in (SECRET_NAME, SECRET_ID, "Doe", "19300101", "St Secret Hospital", "20240102"):
        assert secret not in text
    for key in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDate", "SOPInstanceUID"):
        assert key not in upload.metadata
    assert upload.metadata["PatientSex"] == "F" and upload.metadata["PatientAgeYears"] == "90+"
    assert upload.metadata["Modality"] == "CR"


def test_dicom_rle_compressed_multiframe_and_no_preamble():
    frames = np.stack([RAMP, RAMP[:, ::-1], RAMP])
    image = read_dicom(dicom_bytes(frames, compress=RLELossless), frame=1)
    assert image.n_frames == 3 and image.frame == 1 and image.pixels[:, 0].min() > 0.95
    assert image.metadata["TransferSyntax"] == "RLE Lossless"
    assert read_dicom(dicom_bytes(frames)).frame == 1  # middle frame by default
    with pytest.raises(InputError, match="frame 7"):
        read_dicom(dicom_bytes(frames), frame=7)
    raw = read_upload(dicom_bytes(RAMP, preamble=False), "noext", size=16)
    assert raw.kind == "dicom"


def test_dicom_jpeg2000_compressed_decodes_losslessly():
    from pydicom.uid import JPEG2000Lossless

    image = read_dicom(dicom_bytes(RAMP, compress=JPEG2000Lossless))
    assert image.metadata["TransferSyntax"].startswith("JPEG 2000")
    assert np.allclose(image.pixels, read_dicom(dicom_bytes(RAMP)).pixels)


def test_dicom_files_inside_an_image_folder(tmp_path):
    for cls, pixels in (("dark", RAMP // 4), ("bright", RAMP)):
        for i in range(3):
            (tmp_path / "set" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "set" / cls / f"{i}.dcm").write_bytes(dicom_bytes(pixels, photometric="MONOCHROME1"))
    ds = load_dataset(tmp_path / "set", split="all", size=16)
    assert len(ds) == 6 and ds.class_names == ["bright", "dark"]
    image, _ = ds[0]
    assert image[0, 8, 0] > image[0, 8, -1]  # inverted ramp


# ----------------------------------------------------------------------------- NIfTI
def _volume():
    rng = np.random.default_rng(0)
    volume = rng.random((20, 30, 12)).astype(np.float32) * 100
    volume[:, :, 6] += np.arange(30)[None, :] * 10  # axial slice 6 has a gradient along y
    volume[3, 3, 3] = 1e6  # hot voxel
    return volume


def test_nifti_slices_axes_orientation_and_robust_scale():
    volume = _volume()
    image = nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0]))
    loaded = read_nifti(image.to_bytes())
    assert loaded.data.shape == (20, 30, 12) and loaded.zooms == (2.0, 2.0, 3.0)
    assert loaded.data.max() <= 1 and np.median(loaded.data) > 0.1  # hot voxel did not squash the rest
    assert loaded.slice(axis=0).shape == (12, 30) and loaded.slice(axis=1).shape == (12, 20)
    axial = loaded.slice(6, axis=2)
    assert axial.shape == (30, 20) and axial[0].mean() > axial[-1].mean()  # anterior (high y) is up
    # A left-right flipped affine (LAS) gives the same canonical volume.
    flipped = nib.Nifti1Image(volume[::-1].copy(), np.diag([-2.0, 2.0, 3.0, 1.0]))
    assert np.allclose(read_nifti(flipped.to_bytes()).data, loaded.data)
    with pytest.raises(InputError, match="slice 99"):
        loaded.slice(99, axis=2)
    with pytest.raises(InputError, match="axis"):
        loaded.slice(0, axis=3)
    stack, kept = loaded.slices(32, axis=2)
    assert stack.shape == (len(kept), 32, 32) and stack.dtype == np.uint8


def test_nifti_uploads_plain_gzip_nifti2_and_4d():
    volume = _volume()
    data = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
    upload = read_upload(data, "brain.nii", size=32)
    assert upload.kind == "nifti" and upload.metadata["slice"] == 6 and upload.image.shape == (1, 32, 32)
    chosen = read_upload(gzip.compress(data), "brain.nii.gz", size=32, slice_index=2, axis=0)
    assert chosen.metadata["slice"] == 2 and chosen.metadata["plane"] == "sagittal"
    assert read_upload(nib.Nifti2Image(volume, np.eye(4)).to_bytes(), "v2.nii", size=16).kind == "nifti"
    four_d = nib.Nifti1Image(np.stack([volume, volume * 0], axis=-1), np.eye(4)).to_bytes()
    assert read_upload(four_d, "fmri.nii", size=16).image.shape == (1, 16, 16)
    with pytest.raises(InputError):
        read_upload(data[:200], "cut.nii")
    with pytest.raises(InputError, match="gzip"):
        read_upload(b"\x1f\x8b" + b"garbage" * 20, "bad.nii.gz")


# ----------------------------------------------------------------------------- raster uploads
def test_zero_bytes_and_unsupported_and_oversized_files():
    with pytest.raises(InputError, match="empty"):
        read_upload(b"", "x.png")
    with pytest.raises(InputError, match="not a supported image"):
        read_upload(b"hello, this is text", "notes.txt")
    gif = png_bytes(Image.new("L", (8, 8)), format="GIF")
    with pytest.raises(InputError, match="not a supported image"):
        read_upload(gif, "anim.gif")
    with pytest.raises(InputError, match="upload limit"):
        read_upload(png_bytes(Image.new("L", (64, 64))), "big.png", max_bytes=10)


def test_truncated_png_is_a_clear_error(imaging_root):
    real = next((imaging_root / "busi" / "benign").glob("*.png")).read_bytes()
    assert read_upload(real, "ok.png", size=32).image.shape == (1, 32, 32)
    with pytest.raises(InputError, match="corrupt or truncated|not a readable"):
        read_upload(real[: len(real) // 2], "cut.png")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_before_decoding():
    with pytest.raises(InputError, match="too large|above the limit"):
        read_upload(_png_header_only(60_000, 60_000), "bomb.png")
    with pytest.raises(InputError, match="above the limit"):
        read_upload(_png_header_only(5000, 5000), "big.png", max_pixels=1_000_000)


def test_cmyk_jpeg_rgba_16bit_palette_and_tiff():
    grey = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    cmyk = Image.fromarray(grey).convert("RGB").convert("CMYK")
    upload = read_upload(png_bytes(cmyk, format="JPEG", quality=95), "cmyk.jpg", size=40)
    assert upload.metadata["mode"] == "CMYK" and upload.image[0, 20, 35] > upload.image[0, 20, 5]

    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    rgba[:, :20, 3] = 0  # left half transparent -> black
    upload = read_upload(png_bytes(Image.fromarray(rgba)), "rgba.png", size=40)
    assert float(upload.image[0, 20, 10]) == 0.0 and upload.image[0, 20, 35] > 0.5

    sixteen = Image.fromarray((grey.astype(np.uint16) * 16))  # 12-bit data in a 16-bit PNG
    assert sixteen.mode.startswith("I;16")
    upload = read_upload(png_bytes(sixteen), "16bit.png", size=40)
    assert upload.metadata["bits_per_sample"] == 16 and float(upload.image.max()) == 1.0

    palette = Image.fromarray(grey).convert("P")
    assert read_upload(png_bytes(palette), "p.png", size=40).image[0, 20, 35] > 0.5

    tiff = read_upload(png_bytes(Image.fromarray(grey), format="TIFF"), "scan.tif", size=40)
    assert tiff.kind == "tiff" and "padded to square" in tiff.description
    assert tiff.image.shape == (1, 40, 40) and float(tiff.image[0, 0, 20]) == 0.0  # padding rows are black


def test_uploads_do_not_copy_exif_or_text_chunks():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "patient Jane Doe")
    upload = read_upload(png_bytes(Image.new("L", (16, 16), 80), pnginfo=info), "t.png", size=16)
    assert "Jane" not in repr(upload.metadata) + upload.description
