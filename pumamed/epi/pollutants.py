"""Air pollution: station measurements -> annual station means -> municipal exposure.

Two station networks are read:

* **RAMA** (Mexico City, SEDEMA), hourly 2024, one CSV per pollutant, one column per station;
  ``-99`` marks a missing hour; units ppb (O3, NO, NO2, NOX, SO2), ppm (CO), µg/m³ (PM10, PM2.5,
  PMCO). Station coordinates from ``stations_aire_zmvm.csv``.
* **SINAICA** (national network, INECC), monthly station means 2000-2021 already aggregated from
  daily values by the source repository. Gases come in ppm, particles in µg/m³, but some months and
  some stations are off by a factor of 1000 (ppb written as ppm) or are simply implausible; the
  station catalogue writes some longitudes without their minus sign.

Harmonisation (all documented in the ``flag`` column of :func:`load_sinaica_monthly`):

1. Units: gases other than CO are converted ppm -> ppb (x1000), so both networks share the units in
   :data:`POLLUTANTS` (ppb for O3/NO/NO2/NOx/SO2, ppm for CO, µg/m³ for particles).
2. A value implausible as published but plausible divided by 1000 was written in ppb in a ppm
   column: divided by 1000 (``unit_rescaled``).
3. Values outside the plausible range of a *monthly mean* (:data:`POLLUTANTS` ``monthly_range``)
   are dropped (``out_of_range``); so are months more than tenfold away from the station's own
   median (``station_outlier``) and PM2.5 months above the same station's PM10 (``pm25_gt_pm10``,
   physically impossible: PM2.5 is part of PM10).

Reduced form (the demo pack, ``pumamed/demo``): instead of the hourly files,
``rama_cdmx_2024_hourly/station_daily_means_2024.csv.gz`` holds one row per station, pollutant
and day: the mean of the day's valid hours and how many there were (``pollutant, station_code,
date, mean, hours``), written by :func:`rama_station_daily`. Everything but the hourly plot is
computed from daily means, so both forms give the same annual means and exposure.

Annual station means need enough data (:func:`station_annual_means`): RAMA days count when at
least 18 of 24 hours are valid, years when >= 75 % of days are valid and every quarter has >= 50 %
of its days; SINAICA years need >= 9 valid months with every quarter represented. Annual means
above a credible maximum (:attr:`Pollutant.annual_max`) are flagged ``plausible=False`` and not
used for exposure.

Municipal exposure (:func:`municipal_exposure`), per municipality, year and pollutant: the mean
of the stations *inside* the municipality if there are any (``coverage='in_municipality'``), else an
inverse-distance-weighted mean (power 2) of the stations within ``radius_km`` of the municipal
centroid (``coverage='idw'``), else missing (``coverage='none'``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed.epi.io import epi_dir, require_file
from pumamed.errors import DataError

log = logging.getLogger(__name__)

RAMA_DIR = Path("rama_cdmx_2024_hourly")
RAMA_DAILY_MEANS = "station_daily_means_2024.csv.gz"  # reduced form, see the module docstring
RAMA_DAILY = Path("rama_cdmx_daily_2015_2023") / "rama_2023_05.csv"
SINAICA_DIR = Path("sinaica_stations_monthly")
RAMA_MISSING = -99
EARTH_RADIUS_KM = 6371.0088

DEFAULT_RADIUS_KM = 50.0
DEFAULT_POWER = 2.0
MIN_DAY_HOURS = 18
MIN_YEAR_FRACTION = 0.75
MIN_QUARTER_FRACTION = 0.5
MIN_MONTHS = 9


@dataclass(frozen=True)
class Pollutant:
    key: str
    label: str
    unit: str
    column: str  # panel column
    monthly_range: tuple[float, float]  # plausible monthly mean, in ``unit``
    rama_file: str | None
    sinaica_column: str | None
    sinaica_factor: float  # multiply SINAICA values by this to get ``unit``
    # Highest credible *annual* mean: about three times the highest annual means published for
    # Mexican cities. Station-years above it (instrument faults that survive the monthly checks,
    # e.g. Poza Rica PM2.5 ~100 µg/m³) are kept in the table but flagged not plausible.
    annual_max: float = float("inf")


POLLUTANTS: dict[str, Pollutant] = {p.key: p for p in (
    Pollutant("pm25", "PM2.5", "µg/m³", "pm25_ugm3", (1.0, 150.0), "2024PM25.csv", "PM2.5", 1.0, annual_max=75.0),
    Pollutant("pm10", "PM10", "µg/m³", "pm10_ugm3", (3.0, 300.0), "2024PM10.csv", "PM10", 1.0, annual_max=150.0),
    Pollutant("pmco", "Coarse PM (PM10-PM2.5)", "µg/m³", "pmco_ugm3", (0.5, 250.0), "2024PMCO.csv", None, 1.0,
              annual_max=100.0),
    Pollutant("o3", "Ozone", "ppb", "o3_ppb", (2.0, 120.0), "2024O3.csv", "O3", 1000.0, annual_max=80.0),
    Pollutant("no", "Nitric oxide", "ppb", "no_ppb", (0.1, 300.0), "2024NO.csv", None, 1000.0, annual_max=150.0),
    Pollutant("no2", "Nitrogen dioxide", "ppb", "no2_ppb", (1.0, 150.0), "2024NO2.csv", "NO2", 1000.0, annual_max=80.0),
    Pollutant("nox", "Nitrogen oxides", "ppb", "nox_ppb", (1.0, 400.0), "2024NOX.csv", "NOx", 1000.0, annual_max=200.0),
    Pollutant("so2", "Sulphur dioxide", "ppb", "so2_ppb", (0.1, 200.0), "2024SO2.csv", None, 1000.0, annual_max=80.0),
    Pollutant("co", "Carbon monoxide", "ppm", "co_ppm", (0.05, 10.0), "2024CO.csv", "CO", 1.0, annual_max=5.0),
)}


def _check_pollutants(pollutants) -> list[str]:
    if pollutants is None:
        return list(POLLUTANTS)
    wanted = [pollutants] if isinstance(pollutants, str) else list(pollutants)
    unknown = [p for p in wanted if p not in POLLUTANTS]
    if unknown:
        raise DataError(f"unknown pollutant(s) {unknown}; choose from {list(POLLUTANTS)}")
    return wanted


# --------------------------------------------------------------------------------- stations

def load_stations(data_dir=None) -> pd.DataFrame:
    """Station catalogue of both networks.

    Columns: ``station_key`` (``RAMA:AJM``, ``SINAICA:32``), ``network`` (RAMA|SINAICA),
    ``station_id``, ``station_code``, ``station_name``, ``network_name``, ``lon``, ``lat``,
    ``lon_sign_fixed`` (the published longitude lacked its minus sign). Only stations with
    coordinates inside Mexico's bounding box are kept.
    """
    return _stations(str(epi_dir(data_dir))).copy()


@functools.lru_cache(maxsize=4)
def _stations(root: str) -> pd.DataFrame:
    parts = []
    rama_path = Path(root) / RAMA_DIR / "stations_aire_zmvm.csv"
    if rama_path.exists():
        rama = pd.read_csv(rama_path, dtype={"station_code": str})
        parts.append(pd.DataFrame({
            "station_key": "RAMA:" + rama["station_code"], "network": "RAMA",
            "station_id": rama["station_code"], "station_code": rama["station_code"],
            "station_name": rama["station_name"], "network_name": "Valle de México (RAMA)",
            "lon": rama["lon"].astype(float), "lat": rama["lat"].astype(float), "lon_sign_fixed": False,
        }))
    sinaica_path = Path(root) / SINAICA_DIR / "stations_sinaica_rsinaica.csv"
    if sinaica_path.exists():
        cat = pd.read_csv(sinaica_path, dtype={"station_code": str, "network_name": str})
        lon = pd.to_numeric(cat["lon"], errors="coerce")
        lat = pd.to_numeric(cat["lat"], errors="coerce")
        # Mexico lies entirely west of Greenwich: a positive longitude of the right magnitude is a
        # lost minus sign (station 397 'CENICA 1' reads 98.80 instead of -98.80).
        fixed = lon.between(86.0, 118.5)
        lon = lon.where(~fixed, -lon)
        network = cat["network_name"]
        monthly_path = Path(root) / SINAICA_DIR / "map_stations.csv"
        if monthly_path.exists():  # the catalogue leaves some network names empty
            names = pd.read_csv(monthly_path).set_index("station_id")["network_name"]
            network = network.fillna(cat["station_id"].map(names))
        parts.append(pd.DataFrame({
            "station_key": "SINAICA:" + cat["station_id"].astype(str), "network": "SINAICA",
            "station_id": cat["station_id"].astype(str), "station_code": cat["station_code"],
            "station_name": cat["station_name"], "network_name": network,
            "lon": lon, "lat": lat, "lon_sign_fixed": fixed,
        }))
    if not parts:
        raise DataError(f"no station catalogue found under {Path(root) / RAMA_DIR} or {Path(root) / SINAICA_DIR}")
    stations = pd.concat(parts, ignore_index=True)
    inside = stations["lon"].between(-118.5, -86.5) & stations["lat"].between(14.4, 32.8)
    dropped = (~inside).sum()
    if dropped:
        log.info("stations: %d without usable coordinates dropped", dropped)
    return stations[inside].drop_duplicates("station_key").reset_index(drop=True)


# ------------------------------------------------------------------------------------ RAMA

def load_rama_hourly(data_dir=None, pollutants=None) -> pd.DataFrame:
    """RAMA hourly concentrations, long format.

    Columns: ``station_key, station_code, date`` (calendar day), ``hour`` (1-24, the hour ending
    at that time), ``pollutant``, ``value`` (``-99`` -> NaN; negative readings -> NaN), ``unit``.
    Only rows with a value are returned.
    """
    keys = [p for p in _check_pollutants(pollutants) if POLLUTANTS[p].rama_file]
    root = epi_dir(data_dir)
    frames = [_rama_one(str(root), key) for key in keys]
    frames = [f for f in frames if f is not None]
    if not frames:
        raise DataError(f"RAMA hourly files not found under {root / RAMA_DIR}")
    from pandas.api.types import union_categoricals

    categorical = ["station_key", "station_code", "pollutant", "unit"]
    out = pd.concat([f.drop(columns=categorical) for f in frames], ignore_index=True)
    for column in categorical:
        out[column] = union_categoricals([f[column] for f in frames])
    return out[["station_key", "station_code", "date", "hour", "pollutant", "value", "unit"]]


@functools.lru_cache(maxsize=16)
def _rama_one(root: str, key: str) -> pd.DataFrame | None:
    pollutant = POLLUTANTS[key]
    path = Path(root) / RAMA_DIR / pollutant.rama_file
    if not path.exists():
        return None
    wide = pd.read_csv(path)
    if not {"FECHA", "HORA"} <= set(wide.columns):
        raise DataError(f"{path.name}: expected FECHA and HORA columns, got {list(wide.columns)[:5]}")
    stations = [c for c in wide.columns if c not in ("FECHA", "HORA")]
    # Parse dates on the 8,784 wide rows, not the ~300,000 long ones.
    dates = pd.to_datetime(wide["FECHA"], format="%Y-%m-%d", errors="coerce").to_numpy()
    hours = pd.to_numeric(wide["HORA"], errors="coerce").to_numpy()
    if np.isnat(dates).any() or np.isnan(hours).any():
        raise DataError(f"{path.name}: unreadable dates in FECHA or hours in HORA")
    values = wide[stations].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    # -99 is the documented missing code; any other negative concentration is an instrument fault.
    keep = np.isfinite(values) & (values >= 0)
    rows, cols = np.nonzero(keep)
    n = len(rows)
    out = pd.DataFrame({
        "station_key": pd.Categorical.from_codes(cols, categories=[f"RAMA:{c}" for c in stations]),
        "station_code": pd.Categorical.from_codes(cols, categories=list(stations)),
        "date": dates[rows], "hour": hours[rows].astype(np.int16),
        "pollutant": pd.Categorical.from_codes(np.zeros(n, int), categories=[key]),
        "value": values[rows, cols],
        "unit": pd.Categorical.from_codes(np.zeros(n, int), categories=[pollutant.unit]),
    })
    return out


def has_rama_hourly(data_dir=None) -> bool:
    """Whether any RAMA hourly file is present (the demo pack has daily means only)."""
    folder = epi_dir(data_dir) / RAMA_DIR
    return any((folder / p.rama_file).is_file() for p in POLLUTANTS.values() if p.rama_file)


def rama_station_daily(data_dir=None, pollutants=None) -> pd.DataFrame:
    """Daily RAMA station means: ``station_key, station_code, pollutant, date, mean, hours``
    (``hours`` = valid hours of the day; every day with at least one valid hour is listed).

    Computed from the hourly files when present, else read from the reduced daily form
    (:data:`RAMA_DAILY_MEANS`). Apply the completeness rule with ``hours >= MIN_DAY_HOURS``.
    """
    keys = [p for p in _check_pollutants(pollutants) if POLLUTANTS[p].rama_file]
    root = epi_dir(data_dir)
    table = _rama_daily_all(str(root))
    return table[table["pollutant"].isin(keys)].reset_index(drop=True).copy()


@functools.lru_cache(maxsize=4)
def _rama_daily_all(root: str) -> pd.DataFrame:
    if has_rama_hourly(root):
        hourly = load_rama_hourly(root)
        daily = (hourly.groupby(["station_key", "station_code", "pollutant", "date"], observed=True)["value"]
                 .agg(["mean", "count"]).reset_index().rename(columns={"count": "hours"}))
        for column in ("station_key", "station_code", "pollutant"):
            daily[column] = daily[column].astype(str)
        return daily[["station_key", "station_code", "pollutant", "date", "mean", "hours"]]
    path = require_file(Path(root) / RAMA_DIR / RAMA_DAILY_MEANS, "RAMA hourly files or their daily means")
    try:
        raw = pd.read_csv(path, dtype={"pollutant": str, "station_code": str})
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path.name}: unreadable ({exc})") from exc
    needed = {"pollutant", "station_code", "date", "mean", "hours"}
    if not needed <= set(raw.columns):
        raise DataError(f"{path.name}: expected columns {sorted(needed)}, got {list(raw.columns)}")
    unknown = sorted(set(raw["pollutant"]) - set(POLLUTANTS))
    if unknown:
        raise DataError(f"{path.name}: unknown pollutant(s) {unknown}")
    return pd.DataFrame({
        "station_key": "RAMA:" + raw["station_code"], "station_code": raw["station_code"],
        "pollutant": raw["pollutant"], "date": pd.to_datetime(raw["date"], format="%Y-%m-%d"),
        "mean": raw["mean"].astype(float), "hours": raw["hours"].astype(int),
    })


def load_rama_daily_citywide(data_dir=None) -> pd.DataFrame:
    """City-wide daily means of Mexico City 2015-2023 (all-station average; not station level).

    Columns ``date`` and one column per pollutant in :data:`POLLUTANTS` units.
    """
    path = require_file(epi_dir(data_dir) / RAMA_DAILY, "RAMA daily city-wide means")
    raw = pd.read_csv(path)
    if "fecha" not in raw.columns:
        raise DataError(f"{path.name}: expected a 'fecha' column")
    out = pd.DataFrame({"date": pd.to_datetime(raw["fecha"], format="%d/%m/%Y", errors="coerce")})
    for column in raw.columns:
        key = column.lower().replace(".", "")
        if key in POLLUTANTS:
            out[key] = pd.to_numeric(raw[column], errors="coerce")
    return out.dropna(subset=["date"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------ SINAICA

def load_sinaica_monthly(data_dir=None, harmonise: bool = True) -> pd.DataFrame:
    """SINAICA monthly station means, long format with harmonised units.

    Columns: ``station_key, station_id, network_name, year, month, pollutant, raw_value``
    (as published), ``value`` (in :data:`POLLUTANTS` units; NaN when dropped), ``unit``, ``flag``
    (``ok``, ``unit_rescaled``, ``out_of_range``, ``station_outlier``, ``pm25_gt_pm10``).
    ``harmonise=False`` only converts units (no rescaling or outlier removal).
    """
    return _sinaica(str(epi_dir(data_dir)), bool(harmonise)).copy()


@functools.lru_cache(maxsize=4)
def _sinaica(root: str, harmonise: bool) -> pd.DataFrame:
    path = require_file(Path(root) / SINAICA_DIR / "monthly_pollution.csv", "SINAICA monthly station means")
    raw = pd.read_csv(path)
    needed = ["year", "month", "station_id"]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataError(f"{path.name}: missing columns {missing}")
    value_cols = {p.sinaica_column: p.key for p in POLLUTANTS.values() if p.sinaica_column in raw.columns}
    long = raw.melt(id_vars=["year", "month", "station_id", "network_name"], value_vars=list(value_cols),
                    var_name="column", value_name="raw_value").dropna(subset=["raw_value"])
    long["pollutant"] = long["column"].map(value_cols)
    factor = long["pollutant"].map({k: p.sinaica_factor for k, p in POLLUTANTS.items()})
    out = pd.DataFrame({
        "station_key": "SINAICA:" + long["station_id"].astype(int).astype(str),
        "station_id": long["station_id"].astype(int).astype(str),
        "network_name": long["network_name"],
        "year": long["year"].astype(int), "month": long["month"].astype(int),
        "pollutant": long["pollutant"], "raw_value": long["raw_value"].astype(float),
        "value": long["raw_value"].astype(float) * factor,
        "unit": long["pollutant"].map({k: p.unit for k, p in POLLUTANTS.items()}),
        "flag": "ok",
    }).reset_index(drop=True)
    if harmonise:
        out = harmonise_monthly(out)
    return out.sort_values(["station_key", "pollutant", "year", "month"]).reset_index(drop=True)


def harmonise_monthly(frame: pd.DataFrame) -> pd.DataFrame:
    """Unit rescaling and outlier removal on a long monthly table (see module doc)."""
    out = frame.copy()
    low = out["pollutant"].map({k: p.monthly_range[0] for k, p in POLLUTANTS.items()})
    high = out["pollutant"].map({k: p.monthly_range[1] for k, p in POLLUTANTS.items()})
    series = ["station_key", "pollutant"]

    # (1) implausible as published but plausible once divided by 1000: the station wrote ppb in a
    #     ppm column (whole years of some stations, e.g. SINAICA 33 ozone from 2017 on).
    rescale = ~out["value"].between(low, high) & (out["value"] / 1000).between(low, high)
    out.loc[rescale, "value"] = out.loc[rescale, "value"] / 1000
    out.loc[rescale, "flag"] = "unit_rescaled"

    # (2) physically implausible monthly means.
    bad = ~out["value"].between(low, high)
    out.loc[bad, "flag"] = "out_of_range"
    out.loc[bad, "value"] = np.nan

    # (3) months tenfold away from what the same station usually measures.
    median = out.groupby(series)["value"].transform("median")
    ratio = np.abs(np.log10(out["value"] / median))
    outlier = out["value"].notna() & (ratio > 1)
    out.loc[outlier, "flag"] = "station_outlier"
    out.loc[outlier, "value"] = np.nan

    # (4) PM2.5 above PM10 at the same station and month (5 % tolerance for instrument noise).
    month_key = ["station_key", "year", "month"]
    pm = out[out["pollutant"].isin(["pm25", "pm10"])].pivot_table(index=month_key, columns="pollutant",
                                                                   values="value", aggfunc="first")
    if {"pm25", "pm10"} <= set(pm.columns):
        impossible = pm.index[(pm["pm25"] > 1.05 * pm["pm10"]).to_numpy()]
        if len(impossible):
            marks = pd.MultiIndex.from_frame(out[month_key]).isin(impossible) & out["pollutant"].eq("pm25").to_numpy()
            out.loc[marks, "flag"] = "pm25_gt_pm10"
            out.loc[marks, "value"] = np.nan
    return out


# ------------------------------------------------------------------------------ annual means

def station_annual_means(data_dir=None, pollutants=None, *, min_day_hours: int = MIN_DAY_HOURS,
                         min_year_fraction: float = MIN_YEAR_FRACTION,
                         min_quarter_fraction: float = MIN_QUARTER_FRACTION,
                         min_months: int = MIN_MONTHS, valid_only: bool = False) -> pd.DataFrame:
    """Annual mean per station, year and pollutant, with the completeness rule applied.

    Columns: ``station_key, network, year, pollutant, value, unit, n_periods`` (valid days for
    RAMA, valid months for SINAICA), ``completeness`` (share of the year covered), ``valid``
    (meets the rule), ``plausible`` (at most :attr:`Pollutant.annual_max`), ``lon, lat``.
    ``valid_only=True`` drops years failing the rule.
    """
    keys = _check_pollutants(pollutants)
    root = str(epi_dir(data_dir))
    table = _annual(root, min_day_hours, float(min_year_fraction), float(min_quarter_fraction), int(min_months))
    table = table[table["pollutant"].isin(keys)]
    if valid_only:
        table = table[table["valid"]]
    return table.reset_index(drop=True).copy()


@functools.lru_cache(maxsize=8)
def _annual(root: str, min_day_hours: int, min_year_fraction: float, min_quarter_fraction: float,
            min_months: int) -> pd.DataFrame:
    parts = []
    if (Path(root) / RAMA_DIR).is_dir():
        try:
            daily = _rama_daily_all(root)
        except DataError:
            daily = None
        if daily is not None:
            parts.append(_rama_annual(daily, min_day_hours, min_year_fraction, min_quarter_fraction))
    if (Path(root) / SINAICA_DIR / "monthly_pollution.csv").exists():
        parts.append(_sinaica_annual(_sinaica(root, True), min_months))
    if not parts:
        raise DataError(f"no pollutant measurements found under {root} (rama_cdmx_2024_hourly/, sinaica_stations_monthly/)")
    annual = pd.concat(parts, ignore_index=True)
    annual["plausible"] = annual["value"] <= annual["pollutant"].map({k: p.annual_max for k, p in POLLUTANTS.items()})
    stations = _stations(root)[["station_key", "lon", "lat"]]
    annual = annual.merge(stations, on="station_key", how="left")
    no_coords = annual["lon"].isna()
    if no_coords.any():
        log.info("annual means: %d station-years without coordinates", no_coords.sum())
    return annual.sort_values(["pollutant", "year", "station_key"]).reset_index(drop=True)


def _rama_annual(daily: pd.DataFrame, min_day_hours: int, min_year_fraction: float,
                 min_quarter_fraction: float) -> pd.DataFrame:
    keys = ["station_key", "pollutant"]
    daily = daily[daily["hours"] >= min_day_hours].copy()
    daily["year"] = daily["date"].dt.year
    daily["quarter"] = daily["date"].dt.quarter
    daily["station_key"] = daily["station_key"].astype(str)
    daily["pollutant"] = daily["pollutant"].astype(str)
    group = [*keys, "year"]
    table = daily.groupby(group).agg(value=("mean", "mean"), n_periods=("mean", "size")).reset_index()
    per_quarter = daily.groupby([*group, "quarter"]).size().unstack("quarter").reindex(columns=range(1, 5)).fillna(0)
    years = per_quarter.index.get_level_values("year").to_numpy()
    leap = ((years % 4 == 0) & (years % 100 != 0)) | (years % 400 == 0)
    quarter_days = np.stack([90 + leap, np.full_like(years, 91), np.full_like(years, 92), np.full_like(years, 92)], axis=1)
    quarter_ok = ((per_quarter.to_numpy() / quarter_days) >= min_quarter_fraction).all(axis=1)
    table = table.merge(pd.DataFrame({**{k: per_quarter.index.get_level_values(k) for k in group},
                                      "quarter_ok": quarter_ok}), on=group)
    table["completeness"] = table["n_periods"] / np.where(
        ((table["year"] % 4 == 0) & (table["year"] % 100 != 0)) | (table["year"] % 400 == 0), 366, 365)
    table["valid"] = (table["completeness"] >= min_year_fraction) & table["quarter_ok"]
    table["network"] = "RAMA"
    table["unit"] = table["pollutant"].map({k: p.unit for k, p in POLLUTANTS.items()})
    return table[["station_key", "network", "year", "pollutant", "value", "unit", "n_periods", "completeness", "valid"]]


def _sinaica_annual(monthly: pd.DataFrame, min_months: int) -> pd.DataFrame:
    good = monthly[monthly["value"].notna()].copy()
    good["quarter"] = (good["month"] - 1) // 3 + 1
    grouped = good.groupby(["station_key", "pollutant", "year"])
    table = grouped.agg(value=("value", "mean"), n_periods=("month", "nunique"),
                        quarters=("quarter", "nunique")).reset_index()
    table["network"] = "SINAICA"
    table["unit"] = table["pollutant"].map({k: p.unit for k, p in POLLUTANTS.items()})
    table["completeness"] = table["n_periods"] / 12
    table["valid"] = (table["n_periods"] >= min_months) & (table["quarters"] == 4)
    return table[["station_key", "network", "year", "pollutant", "value", "unit", "n_periods", "completeness", "valid"]]


# ------------------------------------------------------------------------- municipal exposure

def haversine_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance matrix (km) between points 1 (rows) and points 2 (columns)."""
    lon1, lat1 = np.radians(np.asarray(lon1, float))[:, None], np.radians(np.asarray(lat1, float))[:, None]
    lon2, lat2 = np.radians(np.asarray(lon2, float))[None, :], np.radians(np.asarray(lat2, float))[None, :]
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def idw(distances_km: np.ndarray, values: np.ndarray, radius_km: float, power: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-distance-weighted mean per row over columns within ``radius_km``.

    Returns ``(estimate, n_used)``; rows without a station in range get NaN. A station closer
    than 10 m gets the weight of one at 10 m (so co-located stations do not divide by zero).
    """
    within = distances_km <= radius_km
    weights = np.where(within, 1.0 / np.maximum(distances_km, 0.01) ** power, 0.0)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = (weights * values[None, :]).sum(axis=1) / total
    estimate[total == 0] = np.nan
    return estimate, within.sum(axis=1)


def municipal_exposure(data_dir=None, pollutants=None, years=None, *, radius_km: float = DEFAULT_RADIUS_KM,
                       power: float = DEFAULT_POWER, method: str = "hybrid") -> pd.DataFrame:
    """Annual exposure per municipality, year and pollutant from valid, plausible annual station means.

    ``method='hybrid'`` (default): stations inside the municipality if any, else IDW within
    ``radius_km`` of the centroid; ``'idw'``: IDW for every municipality. Output columns:
    ``CVEGEO, year, pollutant, value, unit, coverage`` (in_municipality | idw), ``n_stations``,
    ``nearest_km``. Municipality-years without any station in range are not listed (the panel
    shows them as missing with coverage 'none').
    """
    if method not in ("hybrid", "idw"):
        raise DataError("method must be 'hybrid' or 'idw'")
    if radius_km <= 0 or power <= 0:
        raise DataError("radius_km and power must be positive")
    root = str(epi_dir(data_dir))
    keys = tuple(_check_pollutants(pollutants))
    table = _exposure(root, keys, float(radius_km), float(power), method)
    if years is not None:
        wanted = [years] if np.isscalar(years) else list(years)
        table = table[table["year"].isin([int(y) for y in wanted])]
    return table.reset_index(drop=True).copy()


@functools.lru_cache(maxsize=8)
def _exposure(root: str, keys: tuple, radius_km: float, power: float, method: str) -> pd.DataFrame:
    from pumamed.epi.geometry import EQUAL_AREA_CRS, load_municipalities

    annual = _annual(root, MIN_DAY_HOURS, MIN_YEAR_FRACTION, MIN_QUARTER_FRACTION, MIN_MONTHS)
    annual = annual[annual["valid"] & annual["plausible"] & annual["pollutant"].isin(keys) & annual["lon"].notna()]
    muni = load_municipalities(root)
    centroids = muni.geometry.to_crs(EQUAL_AREA_CRS).centroid.to_crs(muni.crs)
    m_lon, m_lat = centroids.x.to_numpy(), centroids.y.to_numpy()
    codes = muni["CVEGEO"].to_numpy()

    # Which municipality each station stands in (point in polygon).
    import geopandas as gpd

    stations = annual[["station_key", "lon", "lat"]].drop_duplicates("station_key")
    points = gpd.GeoDataFrame(stations, geometry=gpd.points_from_xy(stations["lon"], stations["lat"]), crs=muni.crs)
    located = gpd.sjoin(points, muni[["CVEGEO", "geometry"]], how="left", predicate="within")
    station_muni = located.drop_duplicates("station_key").set_index("station_key")["CVEGEO"]

    rows = []
    for (pollutant, year), block in annual.groupby(["pollutant", "year"]):
        # Co-located stations of both networks would count twice; average per station key first.
        block = block.groupby("station_key", as_index=False).agg(value=("value", "mean"), lon=("lon", "first"),
                                                                 lat=("lat", "first"))
        distances = haversine_km(m_lon, m_lat, block["lon"], block["lat"])
        values = block["value"].to_numpy(float)
        estimate, n_used = idw(distances, values, radius_km, power)
        nearest = distances.min(axis=1)
        coverage = np.where(np.isnan(estimate), "none", "idw").astype(object)
        n_stations = n_used.astype(int)
        if method == "hybrid":
            inside = block["station_key"].map(station_muni)
            for code, group in block.assign(muni=inside.to_numpy()).dropna(subset=["muni"]).groupby("muni"):
                index = np.searchsorted(codes, code)
                if index < len(codes) and codes[index] == code:
                    estimate[index] = group["value"].mean()
                    coverage[index] = "in_municipality"
                    n_stations[index] = len(group)
        keep = coverage != "none"
        rows.append(pd.DataFrame({
            "CVEGEO": codes[keep], "year": int(year), "pollutant": pollutant, "value": estimate[keep],
            "unit": POLLUTANTS[pollutant].unit, "coverage": coverage[keep], "n_stations": n_stations[keep],
            "nearest_km": nearest[keep],
        }))
    if not rows:
        return pd.DataFrame(columns=["CVEGEO", "year", "pollutant", "value", "unit", "coverage", "n_stations", "nearest_km"])
    return pd.concat(rows, ignore_index=True).sort_values(["pollutant", "year", "CVEGEO"]).reset_index(drop=True)


def exposure_wide(data_dir=None, **kwargs) -> pd.DataFrame:
    """:func:`municipal_exposure` pivoted to one row per (CVEGEO, year): ``pm25_ugm3``,
    ``pm25_coverage``, ``pm25_n_stations`` ... for every pollutant."""
    long = municipal_exposure(data_dir, **kwargs)
    out = None
    for key, block in long.groupby("pollutant"):
        p = POLLUTANTS[key]
        part = block[["CVEGEO", "year", "value", "coverage", "n_stations"]].rename(columns={
            "value": p.column, "coverage": f"{key}_coverage", "n_stations": f"{key}_n_stations"})
        out = part if out is None else out.merge(part, on=["CVEGEO", "year"], how="outer")
    if out is None:
        return pd.DataFrame(columns=["CVEGEO", "year"])
    for key, p in POLLUTANTS.items():
        for column in (p.column, f"{key}_coverage", f"{key}_n_stations"):
            if column not in out.columns:
                out[column] = np.nan
    return out.sort_values(["CVEGEO", "year"]).reset_index(drop=True)


def exposure_by_pollutant(exposure: pd.DataFrame) -> pd.DataFrame:
    """A long exposure table (:func:`municipal_exposure`) with one value column per pollutant, one
    row per (CVEGEO, year): the layout correlations and variance inflation read."""
    return exposure.pivot_table(index=["CVEGEO", "year"], columns="pollutant", values="value").reset_index()


def comparable_pollutants(wide: pd.DataFrame, min_values: int = 10) -> tuple[list[str], list[str]]:
    """Which pollutants of a table with one column per pollutant (:func:`exposure_by_pollutant`)
    can be compared: those with at least ``min_values`` values (for pairwise correlations), and
    among them the set measured together most often (each at least half as often as the most
    measured one: the national network's set), for variance inflation on complete rows."""
    columns = [k for k in POLLUTANTS if k in wide.columns and wide[k].notna().sum() >= min_values]
    if not columns:
        return [], []
    coverage = wide[columns].notna().mean()
    return columns, [k for k in columns if coverage[k] >= 0.5 * coverage.max()]


def station_series(data_dir=None, pollutant: str = "pm25", network: str = "rama",
                   resolution: str = "daily") -> pd.DataFrame:
    """One pollutant's time series per station, ``station_key, time, value``.

    ``network="rama"``: Mexico City's stations, ``resolution="hourly"`` (the hour ending at
    ``hour``) or ``"daily"`` (means of the days with at least :data:`MIN_DAY_HOURS` valid hours,
    the completeness rule of the annual means; read from the hourly files or their daily means).
    ``network="sinaica"``: the national monthly means (dated on the 15th), harmonised values only.
    """
    key = _check_pollutants([pollutant])[0]
    if network == "sinaica":
        monthly = load_sinaica_monthly(data_dir)
        monthly = monthly[(monthly["pollutant"] == key) & monthly["value"].notna()]
        time = pd.to_datetime(dict(year=monthly["year"], month=monthly["month"], day=15))
        return pd.DataFrame({"station_key": monthly["station_key"], "time": time, "value": monthly["value"]})
    if network != "rama":
        raise DataError(f"network must be 'rama' or 'sinaica', not {network!r}")
    if resolution == "hourly":
        hourly = load_rama_hourly(data_dir, pollutants=[key])
        time = pd.to_datetime(hourly["date"]) + pd.to_timedelta(hourly["hour"].astype(int) - 1, unit="h")
        return pd.DataFrame({"station_key": hourly["station_key"].astype(str), "time": time, "value": hourly["value"]})
    if resolution != "daily":
        raise DataError(f"resolution must be 'hourly' or 'daily', not {resolution!r}")
    daily = rama_station_daily(data_dir, pollutants=[key])
    daily = daily[daily["hours"] >= MIN_DAY_HOURS]
    return daily.rename(columns={"date": "time", "mean": "value"})[["station_key", "time", "value"]]


# ------------------------------------------------------------------------------- panel source

def _panel_variables():
    from pumamed.epi.panel import Variable

    variables = []
    source = "RAMA hourly (SEDEMA) + SINAICA monthly (INECC); IDW within 50 km"
    for key, p in POLLUTANTS.items():
        variables.append(Variable(p.column, "pollutant", f"{p.label}, annual mean exposure", p.unit, source,
                                  "2000-2024", "continuous", p.column))
        variables.append(Variable(f"{key}_coverage", "pollutant",
                                  f"{p.label}: how the exposure was obtained (in_municipality / idw / none)",
                                  "", source, "2000-2024", "flag", f"{key}_coverage"))
        variables.append(Variable(f"{key}_n_stations", "pollutant", f"{p.label}: stations used", "stations",
                                  source, "2000-2024", "flag", f"{key}_n_stations"))
    return tuple(variables)


def _panel_load(root: Path) -> pd.DataFrame:
    return exposure_wide(root)


def _panel_sources():
    from pumamed.epi.panel import PanelSource

    fill = {}
    for key in POLLUTANTS:
        fill[f"{key}_coverage"] = "none"
        fill[f"{key}_n_stations"] = 0
    return [PanelSource("pollutants", "air pollution exposure (RAMA + SINAICA)", _panel_load,
                        _panel_variables(), time_varying=True, fill_value=fill)]


class _LazySources:
    """PANEL_SOURCES is built on first use: panel imports this module, and this module's sources
    need panel's dataclasses (a plain module-level list would be a circular import)."""

    def __iter__(self):
        return iter(_panel_sources())


PANEL_SOURCES = _LazySources()
