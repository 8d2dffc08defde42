"""What a download of public data files did: the result both fetchers return (public-health files,
:mod:`pumamed.epi.fetch`; MedMNIST archives, :mod:`pumamed.imaging.fetch`), and the one way a
verified download is installed. The ``data fetch`` command prints the result; nothing here prints.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PlannedFile:
    """One requested file: where it goes (relative path), what is there now (``ok``, ``missing``,
    ``corrupted`` or ``differs``), where it would come from (None: not downloadable)."""

    path: str
    state: str
    url: str | None
    licence: str = ""


@dataclass
class FetchResult:
    folder: Path  # where the files go
    planned: list[PlannedFile]
    download_bytes: int = 0  # of the files to download, where their size is known
    dry_run: bool = False
    # in order: ("installed", path, ""), ("failed", path, why) or ("rejected", path, why)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    manual: dict[str, str] = field(default_factory=dict)  # datasets to download by hand, and why

    def count(self, state: str) -> int:
        return sum(p.state == state for p in self.planned)

    @property
    def installed(self) -> list[str]:
        return [path for kind, path, _ in self.events if kind == "installed"]

    @property
    def failures(self) -> list[str]:
        return [path for kind, path, _ in self.events if kind != "installed"]

    @property
    def ok(self) -> bool:
        """Every requested file is present and verified (or kept as the user's own copy)."""
        return not self.failures


def install_verified(downloaded: Path, target: Path) -> None:
    """Copy a verified download to ``target`` under a temporary name, then rename it: a reader
    never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    shutil.copyfile(downloaded, partial)
    partial.replace(target)
