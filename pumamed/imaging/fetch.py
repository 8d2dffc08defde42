"""Download the imaging datasets that have a stable public URL (``python -m pumamed data fetch imaging``).

Only the MedMNIST archives qualify: their publisher keeps them at a fixed Zenodo record and lists
an MD5 for each (the ``medmnist`` package's ``INFO``), which is pinned here. The other registered
datasets come from copies in repositories without a release (see each ``SOURCE.txt``) or under a
licence that asks for a form (mini-MIAS), and are listed as not downloadable.

Downloads go through :mod:`pooch` into a temporary folder; pooch checks the pinned hash and a
file is moved into place (atomically) only when it matches. A file already present is never
replaced: when it differs from the published one (e.g. a copy with the test split held back) it
is kept and reported. ``mirror=`` (or ``$PUMAMED_IMAGING_MIRROR``) replaces each URL by
``<mirror>/<file name>``, for an institutional mirror or an offline copy; the hash still applies.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pumamed.errors import DataError, InputError
from pumamed.fetching import FetchResult, PlannedFile, install_verified

MIRROR_ENV = "PUMAMED_IMAGING_MIRROR"
ZENODO_RECORD = "https://zenodo.org/records/10519652/files/{name}?download=1"  # MedMNIST+ (v3) record


@dataclass(frozen=True)
class RemoteFile:
    dataset: str
    relative_path: str  # below the data directory
    url: str
    known_hash: str     # "<algorithm>:<hex>" as pooch takes it
    licence: str


DOWNLOADABLE: tuple[RemoteFile, ...] = (
    RemoteFile("pneumoniamnist", "imaging/pneumoniamnist.npz", ZENODO_RECORD.format(name="pneumoniamnist.npz"),
               "md5:28209eda62fecd6e6a2d98b1501bb15f", "CC BY 4.0"),
    RemoteFile("breastmnist", "imaging/breastmnist.npz", ZENODO_RECORD.format(name="breastmnist.npz"),
               "md5:750601b1f35ba3300ea97c75c52ff8f6", "CC BY 4.0"),
)
NOT_DOWNLOADABLE = {
    "nih_cxr14_1000": "a subset staged from a repository copy; the full set is at nihcc.app.box.com (manual)",
    "brain_tumor_mri": "Kaggle download needs an account (kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset)",
    "busi": "distributed by its authors on request pages, no pinned file",
    "mini_mias": "research-use licence; download by hand from the MIAS site (peipa.essex.ac.uk)",
}


def file_hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def matches(path: Path, known_hash: str) -> bool:
    algorithm, expected = known_hash.split(":", 1)
    return Path(path).is_file() and file_hash(path, algorithm) == expected


def chosen(only=None, files: tuple[RemoteFile, ...] = DOWNLOADABLE) -> list[RemoteFile]:
    if not only:
        return list(files)
    known = {f.dataset: f for f in files}
    unknown = [name for name in only if name not in known]
    if unknown:
        hints = "; ".join(f"{n}: {NOT_DOWNLOADABLE[n]}" for n in unknown if n in NOT_DOWNLOADABLE)
        raise InputError(f"cannot fetch {', '.join(unknown)}: downloadable imaging datasets are "
                         f"{', '.join(known)}" + (f" ({hints})" if hints else ""))
    return [known[name] for name in only]


def fetch_imaging(data_dir, only=None, dry_run: bool = False, *, mirror: str | None = None,
                  files: tuple[RemoteFile, ...] = DOWNLOADABLE, progressbar: bool = True) -> FetchResult:
    """Download the MedMNIST archives into ``<data_dir>/imaging``. Returns what was planned and done
    (:class:`pumamed.fetching.FetchResult`; ``.ok`` when every requested file is present
    afterwards, not when a download failed or did not match its pinned hash)."""
    root = Path(data_dir)
    mirror = (mirror or os.environ.get(MIRROR_ENV) or "").rstrip("/") or None
    plan = []
    for remote in chosen(only, files):
        target = root / remote.relative_path
        if not target.exists():
            state = "missing"
        else:
            state = "ok" if matches(target, remote.known_hash) else "differs"
        url = f"{mirror}/{Path(remote.relative_path).name}" if mirror else remote.url
        plan.append((remote, target, state, url))
    result = FetchResult(root / "imaging", [PlannedFile(r.relative_path, state, url, r.licence)
                                            for r, _, state, url in plan],
                         dry_run=dry_run, manual={} if only else dict(NOT_DOWNLOADABLE))
    todo = [p for p in plan if p[2] == "missing"]
    if dry_run or not todo:
        return result
    try:
        (root / "imaging").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {root / 'imaging'}: {exc}") from exc

    import pooch

    with tempfile.TemporaryDirectory(prefix="pumamed-fetch-") as scratch:
        for remote, target, _, url in todo:
            try:
                downloaded = Path(pooch.retrieve(url, known_hash=remote.known_hash, fname=target.name,
                                                 path=scratch, progressbar=progressbar))
            except Exception as exc:  # noqa: BLE001 - pooch raises ValueError on a hash mismatch; report, go on
                first = (str(exc).strip().splitlines() or [""])[0]
                result.events.append(("failed", remote.relative_path, f"{type(exc).__name__}: {first[:240]}"))
                continue
            install_verified(downloaded, target)
            result.events.append(("installed", remote.relative_path, ""))
    return result
