"""Downloading the epi files: pinned URLs, checksums, corrupted files, dry run, data check.

There is no internet here: the public files are served from the reference copies by an HTTP
server on 127.0.0.1, which exercises the same pooch download path as the real thing.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest

from pumamed.datacheck import BROKEN, MISSING, OK
from pumamed.epi import check, fetch
from pumamed.errors import InputError


@pytest.fixture()
def serve():
    """``serve(folder) -> base URL`` of a local HTTP server over ``folder``."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def test_manifest_is_pinned_and_complete(epi_root):
    manifest = fetch.load_manifest()
    entries = manifest["files"]
    assert len(entries) >= 150
    for entry in entries:
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), entry["path"]
        url = entry["url"]
        if url is None:
            continue
        # Every GitHub URL names a 40-hex commit, never a branch.
        if "githubusercontent" in url:
            assert re.search(r"/[0-9a-f]{40}/", url), url
    # The commits are those named in each folder's SOURCE.txt.
    for entry in entries:
        if entry["url"] and "githubusercontent" in entry["url"]:
            commit = re.search(r"/([0-9a-f]{40})/", entry["url"]).group(1)
            source = (epi_root / entry["folder"] / "SOURCE.txt").read_text(encoding="utf-8")
            assert commit in source, (entry["path"], commit)
    # Checksums match the reference copies (spot check: small files).
    small = [e for e in entries if e["size"] < 200_000][:20]
    for entry in small:
        assert fetch.verify_file(epi_root / entry["path"], entry["sha256"], entry["size"]), entry["path"]


def _report(result) -> str:
    from pumamed.commands.data import fetch_report

    return "\n".join(fetch_report(result, "epi"))


def test_fetch_from_local_server(tmp_path, epi_root, serve):
    base = serve(epi_root)
    target = tmp_path / "data"
    only = ["conapo_imm_2020", "rama_cdmx_daily_2015_2023"]
    # Dry run: lists, touches nothing.
    result = fetch.fetch_epi(target, only=only, dry_run=True, mirror=base)
    assert result.ok and result.count("missing") == 2 and not target.exists()
    assert "2 missing" in _report(result)

    result = fetch.fetch_epi(target, only=only, mirror=base, progressbar=False)
    assert result.ok and len(result.installed) == 2
    imm = target / "epi" / "conapo_imm_2020" / "IMM_2020.csv"
    assert imm.read_bytes() == (epi_root / "conapo_imm_2020" / "IMM_2020.csv").read_bytes()
    # The fetched copy is usable by the readers.
    from pumamed.epi.socio import read_imm_2020

    assert len(read_imm_2020(target)) == 2469

    # Second run: everything verified, nothing downloaded.
    result = fetch.fetch_epi(target, only=only, mirror=base, progressbar=False)
    assert result.ok and not result.installed and "2 verified" in _report(result)

    # A locally damaged file is detected and replaced by a verified copy.
    imm.write_bytes(imm.read_bytes()[:-10])
    result = fetch.fetch_epi(target, only=["conapo_imm_2020"], dry_run=True, mirror=base)
    assert result.count("corrupted") == 1 and "1 corrupted" in _report(result)
    assert fetch.fetch_epi(target, only=["conapo_imm_2020"], mirror=base, progressbar=False).ok
    assert fetch.verify_file(imm, fetch.manifest_entries(["conapo_imm_2020"])[0]["sha256"])


def test_corrupted_download_is_not_installed(tmp_path, epi_root, serve):
    mirror = tmp_path / "mirror"
    source = epi_root / "conapo_imm_2020" / "IMM_2020.csv"
    (mirror / "conapo_imm_2020").mkdir(parents=True)
    data = bytearray(source.read_bytes())
    data[500] = ord("9") if data[500] != ord("9") else ord("8")  # one changed digit
    (mirror / "conapo_imm_2020" / "IMM_2020.csv").write_bytes(bytes(data))
    target = tmp_path / "data"
    result = fetch.fetch_epi(target, only=["conapo_imm_2020"], mirror=serve(mirror), progressbar=False)
    assert not result.ok and result.failures == ["conapo_imm_2020/IMM_2020.csv"]
    assert not (target / "epi" / "conapo_imm_2020" / "IMM_2020.csv").exists()
    assert "nothing unverified was installed" in _report(result)


def test_unknown_dataset_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown epi dataset"):
        fetch.fetch_epi(tmp_path, only=["no_such_folder"], dry_run=True)


@pytest.mark.slow
def test_data_check_reports_every_source(epi_root):
    reports = check.reports(epi_root.parent)
    by_name = {r.name: r for r in reports}
    assert len(reports) >= 16
    assert all(r.group == "epi" for r in reports)
    assert by_name["epi/CONAPO IMM 2020"].status == OK
    assert by_name["epi/CONAPO IMM 2020"].counts == {"municipalities": 2469}
    assert by_name["epi/COVID-19 national 2020"].counts == {"patients": 172294}
    assert by_name["epi/DGIS egresos (optional)"].status == MISSING
    assert not [r.name for r in reports if r.status == BROKEN]


def test_data_check_flags_a_tampered_file(tmp_path, epi_root):
    copy = tmp_path / "epi" / "conapo_imm_2020"
    copy.mkdir(parents=True)
    data = (epi_root / "conapo_imm_2020" / "IMM_2020.csv").read_text(encoding="utf-8")
    (copy / "IMM_2020.csv").write_text(data.replace("948 990", "948 991"), encoding="utf-8")
    shutil.copy(epi_root / "conapo_imm_2020" / "SOURCE.txt", copy / "SOURCE.txt")
    reports = {r.name: r for r in check.reports(tmp_path)}
    broken = reports["epi/CONAPO IMM 2020"]
    assert broken.status == BROKEN and "sha256 mismatch" in broken.message
    assert reports["epi/CONAPO IMM 1990-2015"].status == MISSING
