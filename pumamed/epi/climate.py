"""Annual climate per municipality from the weekly ERA5 aggregates of the ``graphari`` package.

The files are wide (one column per municipality, its code *without* the leading zero: ``1001``) and
one row per epidemiological week ``YYYY/WW``. Values: 2 m mean temperature in °C and total
precipitation in mm per week (the package does not state units; the ranges -1..36 °C and
0..851 mm/week only fit these). A year counts when at least 50 of its weeks are present.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from pumamed.epi.io import epi_dir, normalize_cvegeo, require_file
from pumamed.errors import DataError

ERA5_DIR = Path("era5_weekly_municipal_graphari")
MIN_WEEKS = 50


def read_climate_weekly(data_dir=None, variable: str = "temperature") -> pd.DataFrame:
    """Long table ``CVEGEO, year, week, value`` for ``temperature`` or ``precipitation``."""
    files = {"temperature": "2m_mean_temperature.csv", "precipitation": "total_precipitation.csv"}
    if variable not in files:
        raise DataError(f"variable must be one of {list(files)}")
    return _weekly(str(epi_dir(data_dir)), files[variable]).copy()


@functools.lru_cache(maxsize=4)
def _weekly(root: str, name: str) -> pd.DataFrame:
    path = require_file(Path(root) / ERA5_DIR / name, f"ERA5 weekly climate ({name})")
    wide = pd.read_csv(path)
    if "Epidemiological_Week" not in wide.columns:
        raise DataError(f"{name}: expected an Epidemiological_Week column")
    week = wide.pop("Epidemiological_Week").astype(str).str.split("/", expand=True)
    codes = normalize_cvegeo(pd.Series(wide.columns), name=f"{name} header").to_numpy()
    long = pd.DataFrame(wide.to_numpy(), columns=codes)
    long["year"] = week[0].astype(int).to_numpy()
    long["week"] = week[1].astype(int).to_numpy()
    long = long.melt(id_vars=["year", "week"], var_name="CVEGEO", value_name="value")
    return long[["CVEGEO", "year", "week", "value"]]


def read_climate_annual(data_dir=None) -> pd.DataFrame:
    """``CVEGEO, year, temperature_mean_c, precipitation_mm`` (sum of weekly totals), for years
    with >= 50 weeks of data; precipitation is scaled to 52 weeks when a year has 50-51."""
    root = str(epi_dir(data_dir))
    return _annual(root).copy()


@functools.lru_cache(maxsize=4)
def _annual(root: str) -> pd.DataFrame:
    temperature = _weekly(root, "2m_mean_temperature.csv")
    precipitation = _weekly(root, "total_precipitation.csv")
    t = temperature.groupby(["CVEGEO", "year"])["value"].agg(["mean", "count"])
    p = precipitation.groupby(["CVEGEO", "year"])["value"].agg(["sum", "count"])
    out = pd.DataFrame({
        "temperature_mean_c": t["mean"].where(t["count"] >= MIN_WEEKS),
        "precipitation_mm": (p["sum"] * 52 / p["count"].clip(upper=52)).where(p["count"] >= MIN_WEEKS),
    }).reset_index()
    return out.dropna(how="all", subset=["temperature_mean_c", "precipitation_mm"]).reset_index(drop=True)


def _panel_sources():
    from pumamed.epi.panel import PanelSource, Variable

    source = "ERA5 weekly municipal aggregates (graphari 1.1.0)"
    return [PanelSource("climate", "ERA5 annual climate", lambda root: read_climate_annual(root), (
        Variable("temperature_mean_c", "geography", "Mean 2 m air temperature (climate)", "°C", source, "2003-2024"),
        Variable("precipitation_mm", "geography", "Total precipitation (climate)", "mm/year", source, "2003-2024"),
    ), time_varying=True)]


class _LazySources:
    def __iter__(self):
        return iter(_panel_sources())


PANEL_SOURCES = _LazySources()
