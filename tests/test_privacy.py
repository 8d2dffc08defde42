"""Patient-identifying DICOM tags never leave the reader.

A DICOM built with pydicom carries a patient name, id, birth date, institution, referring
physician, accession number, study date, address and a private tag. Through
``pumamed.imaging.uploads.read_upload`` and through the image explorer page (AppTest, via the
router) none of these values may reach: the returned metadata and description, any element the
page renders (every element's protobuf, so captions, tables, JSON, metrics, markdown...), the
media the page serves (images and the PNG/GIF downloads), the ``st.cache_data`` stores, log
records, stdout/stderr, or any file written during the test (temporary folder, caches, the
project tree). Uploads are decoded from memory: nothing lands in the temporary folder.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")

PHI = {
    "PatientName": "Quixotl^Zenobia^Marisol",
    "PatientID": "PHI-77341-QX",
    "PatientBirthDate": "19230517",
    "InstitutionName": "Hospital Zacatecolotl Norte",
    "ReferringPhysicianName": "Vandersnoot^Ignatius",
    "AccessionNumber": "ACC99887766",
    "StudyDate": "20190311",
    "PatientAddress": "Calle Falsa 742 Springfield",
    "OtherPatientIDs": "ALT-55501",
    "StationName": "XRAYROOM-QX7",
}
PRIVATE_VALUE = "PRIVATE-TAG-SECRET-4411"
# Distinctive fragments (names are also searched by their parts: "Quixotl", "Zenobia").
NEEDLES = sorted({*PHI.values(), PRIVATE_VALUE, "Quixotl", "Zenobia", "Vandersnoot", "Zacatecolotl",
                  "PHI-77341", "19230517"})


def phi_dicom(with_pixels: bool = True) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.add_new(0x00091010, "LO", PRIVATE_VALUE)
    ds.PatientSex, ds.PatientAge, ds.Modality, ds.ViewPosition = "F", "093Y", "CR", "PA"
    ds.Rows, ds.Columns = 64, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if with_pixels:
        yy, xx = np.mgrid[0:64, 0:48]
        ds.PixelData = ((yy * 40 + xx * 20) % 4096).astype(np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert PHI["PatientName"].encode() in data  # the trap is armed
    return data


def leaks(text) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = str(text)
    return [n for n in NEEDLES if n in text or n.replace("^", " ") in text]


def test_read_upload_drops_identifying_tags(caplog):
    from pumamed.imaging.uploads import read_upload

    caplog.set_level(logging.DEBUG)
    uploaded = read_upload(phi_dicom(), "scan.dcm", size=64)
    assert uploaded.kind == "dicom" and uploaded.image.shape == (1, 64, 64)
    assert not leaks(repr(uploaded.metadata)), uploaded.metadata
    assert not leaks(uploaded.description)
    # Non-identifying facts are kept; the age is bucketed (HIPAA safe harbour: 90+).
    assert uploaded.metadata["Modality"] == "CR" and uploaded.metadata["PatientSex"] == "F"
    assert uploaded.metadata["PatientAgeYears"] == "90+"
    for key in PHI:
        assert key not in uploaded.metadata
    assert not leaks(caplog.text)


def test_errors_do_not_quote_identifying_tags():
    from pumamed.errors import InputError
    from pumamed.imaging.uploads import read_upload

    with pytest.raises(InputError) as caught:
        read_upload(phi_dicom(with_pixels=False), "report.dcm")
    assert not leaks(str(caught.value))
    with pytest.raises(InputError) as caught:
        read_upload(phi_dicom()[:-1000], "cut.dcm")
    assert not leaks(str(caught.value))


def _files_written_since(start: float, roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            try:
                if ".git" in path.parts or not path.is_file() or path.stat().st_mtime < start:
                    continue
            except OSError:
                continue
            found.append(path)
    return found


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("privacy_models")
    save_tiny_checkpoint(root / "chest_tiny", ["normal", "abnormal"], ["nih_cxr14_1000"],
                         [1.0, 0.5, 0.2, 0.1, 0, 0, 0, 0], "# chest_tiny\n")
    return root


def _walk(node):
    yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _walk(child)


def _cache_payloads() -> list[bytes]:
    from streamlit.runtime.caching import cache_data_api

    payloads = []
    for caches in list(cache_data_api._data_caches._function_caches.values()):
        for cache in list(caches.values()):
            memory = getattr(cache.storage, "_mem_cache", {})
            for value in list(memory.values()):
                payloads.append(value if isinstance(value, bytes) else repr(value).encode())
    return payloads


def test_explorer_page_never_shows_logs_exports_or_caches_phi(monkeypatch, tmp_path, tiny_models, caplog,
                                                                capfd, imaging_root):
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import AppTest

    # Private temporary and cache folders, so that anything written can be found.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(var, str(private_tmp))
    monkeypatch.setenv("PUMAMED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(tiny_models))
    caplog.set_level(logging.DEBUG)

    media: list[tuple[str, bytes]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        data = path_or_data if isinstance(path_or_data, bytes) else Path(path_or_data).read_bytes()
        media.append((mimetype, data))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    start = time.time() - 1

    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("views/image_explorer.py")
    at.session_state["ie_source"] = "Upload"
    at.run()
    at.file_uploader(key="ie_upload").set_value(("scan.dcm", phi_dicom(), "application/dicom"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any("upload · scan.dcm" in c.value for c in at.caption), "the upload was not used"
    # The page's exports exist (traversal grid PNG and GIF) and are part of the media checked.
    assert at.get("download_button"), "no export offered"

    # 1. everything rendered
    rendered = [str(getattr(node, "proto", "")) for node in _walk(at._tree)]
    assert len(rendered) > 20
    for text in rendered:
        assert not leaks(text), f"PHI rendered: {leaks(text)} in {text[:300]}"
    # 2. media: images shown and files offered for download
    assert any(m.startswith("image/png") for m, _ in media) and any(m == "image/gif" for m, _ in media), \
        [m for m, _ in media]
    for mimetype, data in media:
        assert not leaks(data), f"PHI in served {mimetype}"
    # 3. caches
    payloads = _cache_payloads()
    assert payloads, "no st.cache_data entry found: the check would prove nothing"
    for payload in payloads:
        assert not leaks(payload), "PHI stored in st.cache_data"
    # 4. logs and console
    assert not leaks(caplog.text), "PHI logged"
    out, err = capfd.readouterr()
    assert not leaks(out) and not leaks(err), "PHI printed"
    # 5. files: nothing in the private temporary folder; nothing written anywhere with PHI
    assert not list(private_tmp.rglob("*")), f"files left in the temporary folder: {list(private_tmp.rglob('*'))}"
    written = _files_written_since(start, [tmp_path, ROOT])
    for path in written:
        try:
            content = path.read_bytes()
        except OSError:
            continue
        assert not leaks(content), f"PHI written to {path}"
        assert b"DICM" not in content[:200], f"the upload was copied to {path}"
