"""Inventory of the data directory: which known datasets are present, with counts.

Each domain (``pumamed.imaging``, ``pumamed.epi``) provides ``check.reports(data_dir)`` returning
:class:`DatasetReport` objects. A dataset that is absent is ``missing`` (not an error: users
may hold only part of the data); one that is present but unreadable is ``broken``, which makes
``python -m pumamed data check`` exit non-zero.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK, MISSING, BROKEN = "ok", "missing", "broken"

# Domains whose ``check`` module contributes reports, in display order.
DOMAIN_CHECK_MODULES = ("pumamed.imaging.check", "pumamed.epi.check")


@dataclass
class DatasetReport:
    name: str
    group: str
    path: str
    status: str
    counts: dict = field(default_factory=dict)
    message: str = ""
    hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_data_dir(data_dir: Path) -> list[DatasetReport]:
    """Run every domain's checks against ``data_dir``; never raises for bad data."""
    data_dir = Path(data_dir)
    reports: list[DatasetReport] = []
    for module_name in DOMAIN_CHECK_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for report in module.reports(data_dir):
            reports.append(report)
    return reports


def safe_check(name: str, group: str, path: Path, counter, hint: str = "") -> DatasetReport:
    """Build a report for one dataset: missing when ``path`` is absent, broken if ``counter`` fails.

    ``counter(path)`` returns a dict of counts; any exception it raises marks the dataset broken
    with the exception's message, so one bad dataset never hides the others.
    """
    path = Path(path)
    if not path.exists():
        return DatasetReport(name, group, str(path), MISSING, hint=hint)
    try:
        counts = counter(path)
    except Exception as exc:  # noqa: BLE001 - turned into a report, that is the point
        return DatasetReport(name, group, str(path), BROKEN, message=f"{type(exc).__name__}: {exc}", hint=hint)
    return DatasetReport(name, group, str(path), OK, counts=counts, hint=hint)
