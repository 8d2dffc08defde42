"""Downloading the MedMNIST archives: pinned hashes, a tampered download, files already present.

No internet here: the "published" files are fixtures served by an HTTP server on 127.0.0.1,
with their hashes pinned in the same way as the real ones, so the pooch download path is the real one.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from pumamed.errors import InputError
from pumamed.imaging import fetch
from pumamed.imaging.registry import load_dataset


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    folder = tmp_path / "published"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _medmnist_fixture(path) -> str:
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in
              (("train", 12), ("val", 6), ("test", 6))}
    arrays.update({f"{s}_labels": np.arange(n, dtype=np.uint8).reshape(n, 1) % 2 for s, n in
                   (("train", 12), ("val", 6), ("test", 6))})
    np.savez_compressed(path, **arrays)
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def _remote(name, url, known_hash):
    return fetch.RemoteFile(name, f"imaging/{name}.npz", url, known_hash, "CC BY 4.0")


def test_published_files_are_pinned():
    for remote in fetch.DOWNLOADABLE:
        algorithm, digest = remote.known_hash.split(":")
        assert algorithm in ("md5", "sha256") and len(digest) == {"md5": 32, "sha256": 64}[algorithm]
        assert "zenodo.org/records/" in remote.url, "a versioned record, not a 'latest' link"


def _report(result) -> str:
    from pumamed.commands.data import fetch_report

    return "\n".join(fetch_report(result, "imaging"))


def test_fetch_from_local_server_installs_a_verified_file(tmp_path, server):
    folder, base = server
    known = _medmnist_fixture(folder / "pneumoniamnist.npz")
    files = (_remote("pneumoniamnist", f"{base}/pneumoniamnist.npz", known),)
    target = tmp_path / "data"
    assert fetch.fetch_imaging(target, dry_run=True, files=files).ok
    assert not target.exists(), "a dry run touches nothing"
    assert fetch.fetch_imaging(target, files=files, progressbar=False).installed == ["imaging/pneumoniamnist.npz"]
    installed = target / "imaging" / "pneumoniamnist.npz"
    assert installed.read_bytes() == (folder / "pneumoniamnist.npz").read_bytes()
    assert len(load_dataset("pneumoniamnist", split="test", size=28, data_dir=target)) == 6
    result = fetch.fetch_imaging(target, files=files, progressbar=False)
    assert result.ok and "[ok     ]" in _report(result)


def test_tampered_download_is_not_installed(tmp_path, server):
    folder, base = server
    known = _medmnist_fixture(folder / "breastmnist.npz")
    data = bytearray((folder / "breastmnist.npz").read_bytes())
    data[-40] ^= 0xFF
    (folder / "breastmnist.npz").write_bytes(bytes(data))
    files = (_remote("breastmnist", f"{base}/breastmnist.npz", known),)
    result = fetch.fetch_imaging(tmp_path / "data", files=files, progressbar=False)
    assert not result.ok
    assert not (tmp_path / "data" / "imaging" / "breastmnist.npz").exists()
    assert "nothing unverified was installed" in _report(result)


def test_a_different_local_copy_is_kept(tmp_path, server):
    folder, base = server
    known = _medmnist_fixture(folder / "breastmnist.npz")
    mine = tmp_path / "data" / "imaging" / "breastmnist.npz"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own copy")
    files = (_remote("breastmnist", f"{base}/breastmnist.npz", known),)
    result = fetch.fetch_imaging(tmp_path / "data", files=files, progressbar=False)
    assert result.ok
    assert mine.read_bytes() == b"my own copy"
    assert "differs" in _report(result)


def test_unknown_or_manual_dataset_is_an_input_error():
    with pytest.raises(InputError, match="Kaggle"):
        fetch.chosen(["brain_tumor_mri"])
    with pytest.raises(InputError, match="downloadable imaging datasets are pneumoniamnist, breastmnist"):
        fetch.chosen(["nonsense"])
