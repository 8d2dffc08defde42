"""The municipal panel: one tidy table per (CVEGEO, year) plus a data-quality report.

Rows are the 2,469 municipalities of the 2020 census (the geometry is the reference list) times
every year for which at least one *year-varying* source has data (pollutant exposure, deaths,
COVID-19 records, the CONAPO 1990-2015 series ...). Cross-sectional sources (the 2020 census,
CONAPO 2020, CONEVAL 2015, UNDP HDI ...) are repeated on every year of a municipality: their
reference year is in :func:`variable_catalog`'s ``year`` column, so nobody mistakes the 2020
marginalization index for a 1995 measurement.

A source whose files are absent is reported ``missing`` and its columns are left empty; a source
that fails to read is reported ``error`` with the message. The panel is built either way, so a user
holding only part of the data still gets a panel -- and a report saying exactly what is not there.

Codes in a source that are not among the 2,469 municipalities (``xx999`` "unknown", municipalities
dissolved or renumbered, typos) are listed one by one in ``quality.unmatched``.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pumamed.epi.io import epi_dir
from pumamed.errors import DataError, MissingDataError

log = logging.getLogger(__name__)

GROUPS = ("geography", "population", "socioeconomic", "pollutant", "outcome")
KEY = ["CVEGEO", "year"]
REFERENCE_YEAR = 2020


@dataclass(frozen=True)
class Variable:
    """One panel column. ``kind``: continuous | count | share | category | flag | text."""

    name: str
    group: str
    label: str
    unit: str
    source: str
    year: str
    kind: str = "continuous"
    raw: str = ""  # column of the loader's table it comes from (default: the same name)

    def __post_init__(self):
        if not self.raw:
            object.__setattr__(self, "raw", self.name)


@dataclass(frozen=True)
class PanelSource:
    """A reader plugged into the panel.

    ``load(root)`` returns a table with ``CVEGEO`` (and ``year`` when ``time_varying``) and the
    columns named in ``variables[i].raw``. ``coverage`` says which municipalities the source is
    meant to cover: ``'national'``, a tuple of 2-digit state codes, or ``'listed'`` (the states
    present in the table, e.g. Sonora for the Sonora death records), so that absent
    municipalities inside the coverage become 0 for the ``fill_zero`` counts and stay NaN outside.
    """

    key: str
    label: str
    load: Callable[[Path], pd.DataFrame]
    variables: tuple[Variable, ...]
    time_varying: bool = False
    coverage: str | tuple[str, ...] = "national"
    fill_zero: tuple[str, ...] = ()  # count columns where "not listed" means zero within coverage
    fill_value: dict = field(default_factory=dict)  # column -> value for rows the source does not list
    records_column: str | None = None  # loader column counting underlying records (patients, deaths)


@dataclass
class PanelQuality:
    """What went into the panel and what did not."""

    sources: pd.DataFrame
    missingness: pd.DataFrame
    unmatched: pd.DataFrame
    n_municipalities: int
    years: list[int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "n_municipalities": self.n_municipalities,
            "years": self.years,
            "sources": _records(self.sources),
            "missingness": _records(self.missingness),
            "unmatched": _records(self.unmatched),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PanelQuality":
        return cls(sources=pd.DataFrame(data["sources"]), missingness=pd.DataFrame(data["missingness"]),
                   unmatched=pd.DataFrame(data["unmatched"], columns=["source", "CVEGEO", "reason", "rows", "records"]),
                   n_municipalities=int(data["n_municipalities"]), years=[int(y) for y in data["years"]],
                   notes=list(data.get("notes", [])))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)

    def to_text(self, max_unmatched: int = 40) -> str:
        lines = [f"municipalities: {self.n_municipalities}; years: {_year_span(self.years)}", "", "sources:"]
        for row in self.sources.itertuples(index=False):
            status = f"[{row.status:7}]"
            detail = (f"rows={row.rows:,} codes={row.codes:,} joined={row.joined:,} "
                      f"unmatched={row.unmatched:,} municipalities_with_data={row.municipalities_with_data:,} "
                      f"({row.coverage_pct:.1f}%) years={row.years}")
            lines.append(f"  {status} {row.source:28} {detail if row.status == 'ok' else row.message}")
        lines += ["", "missingness (municipalities without a value in the years the variable is reported):"]
        worst = self.missingness.sort_values(["pct_missing_in_years", "name"], ascending=[False, True])
        for row in worst.itertuples(index=False):
            lines.append(f"  {row.name:44} {row.group:13} {row.pct_missing_in_years:6.1f}%  "
                         f"(years {row.years_with_data})")
        lines += ["", f"codes that failed to join: {len(self.unmatched)}"]
        for row in self.unmatched.head(max_unmatched).itertuples(index=False):
            records = "" if pd.isna(row.records) else f" records={int(row.records)}"
            lines.append(f"  {row.source:28} {row.CVEGEO}  {row.reason}  rows={row.rows}{records}")
        if len(self.unmatched) > max_unmatched:
            lines.append(f"  ... {len(self.unmatched) - max_unmatched} more (in the JSON report)")
        if self.notes:
            lines += ["", "notes:"] + [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- the sources

def _v(name, group, label, unit, source, year, kind="continuous", raw=""):
    return Variable(name, group, label, unit, source, str(year), kind, raw or name)


def _load_geography(root: Path) -> pd.DataFrame:
    from pumamed.epi.geometry import EQUAL_AREA_CRS, load_municipalities

    muni = load_municipalities(root)
    projected = muni.geometry.to_crs(EQUAL_AREA_CRS)
    centroids = projected.centroid.to_crs(muni.crs)
    return pd.DataFrame({
        "CVEGEO": muni["CVEGEO"], "state_code": muni["CVE_ENT"], "state_name": muni["NOM_ENT"],
        "municipality_name": muni["NOMGEO"], "area_km2": projected.area / 1e6,
        "centroid_lon": centroids.x, "centroid_lat": centroids.y,
    })


def _load_location(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_location

    return read_location(root)


def _load_population(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_age_quartiles_2020, read_census_attributes, read_population_2020

    pop = read_population_2020(root)
    census = read_census_attributes(root)[["CVEGEO", "afromexican", "indigenous_language", "metro_area"]]
    ages = read_age_quartiles_2020(root)
    out = pop.merge(census, on="CVEGEO", how="outer").merge(ages, on="CVEGEO", how="outer")
    total = out["total"].astype(float)
    out["afromexican_pct"] = 100 * out["afromexican"].astype(float) / total
    out["indigenous_language_pct"] = 100 * out["indigenous_language"].astype(float) / total
    out["male_pct"] = 100 * out["hombres"].astype(float) / total
    return out


def _load_imm_2020(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_imm_2020

    return read_imm_2020(root)


def _load_imm_history(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_imm_history

    return read_imm_history(root)


def _load_coneval(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_coneval_2015

    return read_coneval_2015(root)


def _load_hdi(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_hdi

    return read_hdi(root)


def _load_iaim(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_migration_index

    return read_migration_index(root)


def _load_vital_2019(root: Path) -> pd.DataFrame:
    from pumamed.epi.socio import read_vital_2019

    return read_vital_2019(root).assign(year=2019)


_INEGI_GEO = "INEGI Marco Geoestadístico 2020 (mxmaps)"
_CENSUS = "INEGI Censo de Población y Vivienda 2020"
_IMM = "CONAPO Índice de marginación 2020"
_CONEVAL = "CONEVAL pobreza municipal 2015"
_HDI = "PNUD IDH municipal (2015)"

_BASE_SOURCES: list[PanelSource] = [
    PanelSource("geography", "municipal polygons (mxmaps)", _load_geography, (
        _v("state_code", "geography", "State code (CVE_ENT)", "", _INEGI_GEO, 2020, "text"),
        _v("state_name", "geography", "State", "", _INEGI_GEO, 2020, "text"),
        _v("municipality_name", "geography", "Municipality", "", _INEGI_GEO, 2020, "text"),
        _v("area_km2", "geography", "Area", "km²", _INEGI_GEO, 2020),
        _v("centroid_lon", "geography", "Centroid longitude", "degrees", _INEGI_GEO, 2020),
        _v("centroid_lat", "geography", "Centroid latitude", "degrees", _INEGI_GEO, 2020),
    )),
    PanelSource("location", "municipal seat altitude (INEGI AGEEML)", _load_location, (
        _v("altitude_m", "geography", "Altitude of the municipal seat", "m", "INEGI AGEEML", 2020),
    )),
    PanelSource("population_2020", "population census 2020", _load_population, (
        _v("population", "population", "Population (census 2020)", "persons", _CENSUS, 2020, "count", "total"),
        _v("population_male", "population", "Male population", "persons", _CENSUS, 2020, "count", "hombres"),
        _v("population_female", "population", "Female population", "persons", _CENSUS, 2020, "count", "mujeres"),
        _v("population_male_pct", "population", "Male share of population", "%", _CENSUS, 2020, raw="male_pct"),
        _v("population_density_km2", "population", "Population density", "persons/km²", _CENSUS, 2020, raw="densidad"),
        _v("age_q1", "population", "Age, first quartile", "years", _CENSUS, 2020, raw="Q1"),
        _v("age_median", "population", "Median age", "years", _CENSUS, 2020, raw="Q2"),
        _v("age_q3", "population", "Age, third quartile", "years", _CENSUS, 2020, raw="Q3"),
        _v("indigenous_pct", "population", "Indigenous population (self-identified)", "%",
           "INEGI Encuesta Intercensal 2015", 2015, raw="porcentaje_indigena"),
        _v("indigenous_language_pct", "population", "Speakers of an indigenous language", "%", _CENSUS, 2020),
        _v("afromexican_pct", "population", "Afro-Mexican population", "%", _CENSUS, 2020),
        _v("metro_area", "geography", "Metropolitan area (2015)", "", "CONAPO/INEGI/SEDATU zonas metropolitanas 2015",
           2015, "text"),
    )),
    PanelSource("imm_2020", "CONAPO marginalization 2020", _load_imm_2020, (
        _v("ses_illiteracy_pct", "socioeconomic", "Illiterate, 15+", "%", _IMM, 2020, raw="ANALF"),
        _v("ses_no_basic_education_pct", "socioeconomic", "Without complete basic education, 15+", "%", _IMM, 2020, raw="SBASC"),
        _v("ses_no_drainage_pct", "socioeconomic", "Dwellings without drainage or toilet", "%", _IMM, 2020, raw="OVSDE"),
        _v("ses_no_electricity_pct", "socioeconomic", "Dwellings without electricity", "%", _IMM, 2020, raw="OVSEE"),
        _v("ses_no_piped_water_pct", "socioeconomic", "Dwellings without piped water", "%", _IMM, 2020, raw="OVSAE"),
        _v("ses_dirt_floor_pct", "socioeconomic", "Dwellings with dirt floor", "%", _IMM, 2020, raw="OVPT"),
        _v("ses_overcrowding_pct", "socioeconomic", "Overcrowded dwellings", "%", _IMM, 2020, raw="VHAC"),
        _v("ses_small_localities_pct", "socioeconomic", "Living in localities < 5,000", "%", _IMM, 2020, raw="PL.5000"),
        _v("ses_low_wage_pct", "socioeconomic", "Workers earning up to 2 minimum wages", "%", _IMM, 2020, raw="PO2SM"),
        _v("ses_marginalization_index", "socioeconomic", "Marginalization index 2020 (higher = less marginalized)",
           "index", _IMM, 2020, raw="IM_2020"),
        _v("ses_marginalization_index_norm", "socioeconomic", "Normalised marginalization index 2020 (0-1)",
           "index", _IMM, 2020, raw="IMN_2020"),
        _v("ses_marginalization_degree", "socioeconomic", "Marginalization degree 2020", "", _IMM, 2020,
           "category", "GM_2020"),
    )),
    PanelSource("coneval_2015", "CONEVAL poverty 2015", _load_coneval, (
        _v("ses_poverty_pct", "socioeconomic", "Population in poverty", "%", _CONEVAL, 2015, raw="pobreza"),
        _v("ses_extreme_poverty_pct", "socioeconomic", "Population in extreme poverty", "%", _CONEVAL, 2015, raw="pobreza_e"),
        _v("ses_moderate_poverty_pct", "socioeconomic", "Population in moderate poverty", "%", _CONEVAL, 2015, raw="pobreza_m"),
        _v("ses_vulnerable_deprivation_pct", "socioeconomic", "Vulnerable by social deprivation", "%", _CONEVAL, 2015, raw="vul_car"),
        _v("ses_vulnerable_income_pct", "socioeconomic", "Vulnerable by income", "%", _CONEVAL, 2015, raw="vul_ing"),
        _v("ses_not_poor_not_vulnerable_pct", "socioeconomic", "Neither poor nor vulnerable", "%", _CONEVAL, 2015, raw="npnv"),
        _v("ses_educational_lag_pct", "socioeconomic", "Educational lag", "%", _CONEVAL, 2015, raw="ic_rezedu"),
        _v("ses_no_health_access_pct", "socioeconomic", "No access to health services", "%", _CONEVAL, 2015, raw="ic_asalud"),
        _v("ses_no_social_security_pct", "socioeconomic", "No access to social security", "%", _CONEVAL, 2015, raw="ic_segsoc"),
        _v("ses_poor_housing_pct", "socioeconomic", "Poor housing quality and space", "%", _CONEVAL, 2015, raw="ic_cv"),
        _v("ses_no_housing_services_pct", "socioeconomic", "No basic housing services", "%", _CONEVAL, 2015, raw="ic_sbv"),
        _v("ses_no_food_access_pct", "socioeconomic", "No access to food", "%", _CONEVAL, 2015, raw="ic_ali"),
        _v("ses_one_plus_deprivations_pct", "socioeconomic", "At least one social deprivation", "%", _CONEVAL, 2015, raw="carencias"),
        _v("ses_three_plus_deprivations_pct", "socioeconomic", "Three or more social deprivations", "%", _CONEVAL, 2015, raw="carencias3"),
        _v("ses_below_welfare_line_pct", "socioeconomic", "Income below the welfare line", "%", _CONEVAL, 2015, raw="plb"),
        _v("ses_below_min_welfare_line_pct", "socioeconomic", "Income below the minimum welfare line", "%", _CONEVAL, 2015, raw="plbm"),
    )),
    PanelSource("hdi", "UNDP municipal HDI", _load_hdi, (
        _v("ses_hdi", "socioeconomic", "Human Development Index", "index 0-1", _HDI, 2015, raw="idh"),
        _v("ses_mean_schooling_years", "socioeconomic", "Mean years of schooling", "years", _HDI, 2015,
           raw="anio_promedio_escolaridad"),
        _v("ses_expected_schooling_years", "socioeconomic", "Expected years of schooling", "years", _HDI, 2015,
           raw="anios_esperados_escolaridad"),
        _v("ses_income_per_capita_usd", "socioeconomic", "Income per capita (annual)", "USD PPP 2010", _HDI, 2015,
           raw="ingreso_per_capita"),
    )),
    PanelSource("migration_index", "CONAPO migration intensity", _load_iaim, (
        _v("ses_migration_intensity", "socioeconomic", "Mexico-US migration intensity index", "index",
           "CONAPO IAIM 2010", 2010, raw="iaim"),
    )),
    PanelSource("imm_1990_2015", "CONAPO marginalization 1990-2015", _load_imm_history, (
        _v("ses_marginalization_index_hist", "socioeconomic",
           "Marginalization index, 1990-2015 editions (higher = more marginalized; not the 2020 scale)",
           "index", "CONAPO Índice de marginación 1990-2015", "1990-2015", raw="IM"),
        _v("ses_marginalization_degree_hist", "socioeconomic", "Marginalization degree, 1990-2015 editions", "",
           "CONAPO Índice de marginación 1990-2015", "1990-2015", "category", "GM"),
        _v("population_conapo_hist", "population", "Population in the CONAPO edition's census/count", "persons",
           "CONAPO Índice de marginación 1990-2015", "1990-2015", "count", "POB_TOT"),
    ), time_varying=True),
    PanelSource("vital_2019", "INEGI deaths 2019 (all causes)", _load_vital_2019, (
        _v("deaths_all_causes", "outcome", "Registered deaths, all causes", "deaths",
           "INEGI defunciones registradas 2019", 2019, "count", "defunciones"),
    ), time_varying=True, records_column="defunciones"),
]


def _extra_sources() -> list[PanelSource]:
    """Sources defined next to their readers (pollutants, outcomes); absent modules are skipped."""
    found: list[PanelSource] = []
    for module_name in ("pumamed.epi.climate", "pumamed.epi.pollutants", "pumamed.epi.outcomes"):
        try:
            module = __import__(module_name, fromlist=["PANEL_SOURCES"])
        except ImportError as exc:
            log.debug("panel: %s unavailable (%s)", module_name, exc)
            continue
        found.extend(getattr(module, "PANEL_SOURCES", ()))
    return found


def panel_sources() -> list[PanelSource]:
    return [*_BASE_SOURCES, *_extra_sources()]


# ----------------------------------------------------------------------------------- public API

def variable_catalog() -> pd.DataFrame:
    """Every panel column with ``name, group, label, unit, source, year, kind``.

    ``group`` is one of ``geography, population, socioeconomic, pollutant, outcome``; pages use it
    to offer variables by theme. ``kind`` tells numbers (continuous, count, share) from labels
    (category, text) and data-quality companions (``flag``). Needs no data files.
    """
    rows = [{"name": "CVEGEO", "group": "geography", "label": "Municipality code (state + municipality)",
             "unit": "", "source": _INEGI_GEO, "year": "2020", "kind": "text"},
            {"name": "year", "group": "geography", "label": "Year", "unit": "", "source": "panel",
             "year": "", "kind": "text"}]
    variables = ([v for source in panel_sources() for v in source.variables] + [POPULATION_ESTIMATE]
                 + [d[0] for d in DERIVED])
    for var in variables:
        rows.append({"name": var.name, "group": var.group, "label": var.label, "unit": var.unit,
                     "source": var.source, "year": var.year, "kind": var.kind})
    catalog = pd.DataFrame(rows, columns=["name", "group", "label", "unit", "source", "year", "kind"])
    return catalog.drop_duplicates("name").reset_index(drop=True)


def build_panel(data_dir=None) -> tuple[pd.DataFrame, PanelQuality]:
    """Assemble the panel and its quality report from every source found under ``data_dir``.

    Returns copies; repeated calls are served from memory.
    """
    panel, quality = _build_cached(str(epi_dir(data_dir)))
    return panel.copy(), quality


def load_panel(data_dir=None, year: int | None = None) -> pd.DataFrame:
    """The panel (see module doc); ``year`` keeps one cross-section of the 2,469 municipalities."""
    panel, quality = _build_cached(str(epi_dir(data_dir)))
    if year is None:
        return panel.copy()
    year = int(year)
    if year not in quality.years:
        raise DataError(f"no data for year {year}; the panel covers {_year_span(quality.years)}")
    return panel[panel["year"] == year].reset_index(drop=True)


def panel_years(data_dir=None) -> list[int]:
    return list(_build_cached(str(epi_dir(data_dir)))[1].years)


def clear_cache() -> None:
    _build_cached.cache_clear()


@functools.lru_cache(maxsize=2)
def _build_cached(root: str) -> tuple[pd.DataFrame, PanelQuality]:
    """Memory cache over a disk cache (parquet + JSON in :func:`pumamed.epi.io.cache_dir`) keyed by
    every file under the epi folder (path, size, mtime) and the source code of the data layer, so
    a changed file or a changed reader rebuilds it."""
    from pumamed.epi.io import cache_dir, parquet_cached

    root_path = Path(root)

    def build():
        return assemble(root_path, panel_sources())

    if cache_dir() is None or not root_path.is_dir():
        return build()
    name = f"panel-{_panel_cache_key(root_path)}"

    def read(path: Path):
        return pd.read_parquet(path), PanelQuality.from_dict(json.loads(path.with_suffix(".json").read_text()))

    def write(result, tmp: Path):
        panel, quality = result
        (tmp.parent / f"{name}.json").write_text(quality.to_json())  # beside the parquet, before it
        panel.to_parquet(tmp, index=False)

    return parquet_cached(name, build, read=read, write=write)


def _panel_cache_key(root: Path) -> str:
    import hashlib

    digest = hashlib.sha256(b"panel-v2")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    package = Path(__file__).resolve().parent
    for module in ("io", "geometry", "socio", "climate", "pollutants", "outcomes", "panel"):
        source = package / f"{module}.py"
        if source.exists():
            digest.update(source.read_bytes())
    return digest.hexdigest()[:20]


def assemble(root: Path, sources: list[PanelSource]) -> tuple[pd.DataFrame, PanelQuality]:
    """Join ``sources`` onto the municipal reference list; see :func:`build_panel`."""
    reference = _reference_codes(root)
    ref_set = set(reference)
    status_rows, unmatched_rows, notes = [], [], []
    static_parts, varying_parts = [], []
    loaded: dict[str, pd.DataFrame] = {}

    for source in sources:
        base = {"source": source.key, "label": source.label, "rows": 0, "codes": 0, "joined": 0,
                "unmatched": 0, "municipalities_with_data": 0, "coverage_pct": 0.0, "years": "", "message": ""}
        try:
            table = source.load(root)
        except DataError as exc:
            status = "missing" if "not found" in str(exc) else "error"
            status_rows.append({**base, "status": status, "message": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - one broken source must not take the panel down
            log.exception("panel source %s failed", source.key)
            status_rows.append({**base, "status": "error", "message": f"{type(exc).__name__}: {exc}"})
            continue
        raw_cols = [v.raw for v in source.variables]
        missing_cols = [c for c in raw_cols if c not in table.columns]
        if missing_cols:
            status_rows.append({**base, "status": "error", "message": f"loader lacks columns {missing_cols}"})
            continue
        keep = ["CVEGEO", "year"] if source.time_varying else ["CVEGEO"]
        frame = table[keep + raw_cols].rename(columns={v.raw: v.name for v in source.variables})
        codes = frame["CVEGEO"].dropna().unique()
        unmatched = sorted(set(codes) - ref_set)
        counts = frame["CVEGEO"].value_counts()
        records = (table.groupby("CVEGEO")[source.records_column].sum()
                   if source.records_column and source.records_column in table.columns else None)
        for code in unmatched:
            unmatched_rows.append({"source": source.key, "CVEGEO": code, "reason": _unmatched_reason(code),
                                   "rows": int(counts.get(code, 0)),
                                   "records": None if records is None else int(records.get(code, 0))})
        frame = frame[frame["CVEGEO"].isin(ref_set)]
        value_cols = [v.name for v in source.variables]
        has_value = frame[value_cols].notna().any(axis=1)
        with_data = frame.loc[has_value, "CVEGEO"].nunique()
        years = sorted(frame["year"].dropna().astype(int).unique().tolist()) if source.time_varying else []
        status_rows.append({**base, "status": "ok", "rows": int(len(table)), "codes": int(len(codes)),
                            "joined": int(len(codes) - len(unmatched)), "unmatched": len(unmatched),
                            "municipalities_with_data": int(with_data),
                            "coverage_pct": 100.0 * with_data / max(1, len(reference)),
                            "years": _year_span(years) if years else _static_year(source)})
        loaded[source.key] = frame
        (varying_parts if source.time_varying else static_parts).append((source, frame))

    # 2020 (census, CONAPO 2020, the geometry) is always a panel year: it is the cross-section most
    # analyses start from, even when no year-varying source reports that year.
    years = sorted({REFERENCE_YEAR} | {int(y) for _, f in varying_parts for y in f["year"].dropna().unique()})
    panel = pd.MultiIndex.from_product([reference, years], names=KEY).to_frame(index=False)
    panel["CVEGEO"] = panel["CVEGEO"].astype("str")
    for source, frame in static_parts:
        dup = frame["CVEGEO"].duplicated()
        if dup.any():
            notes.append(f"{source.key}: {dup.sum()} duplicated codes dropped (first kept)")
            frame = frame[~dup]
        panel = panel.merge(frame, on="CVEGEO", how="left")
    for source, frame in varying_parts:
        frame = frame.assign(year=frame["year"].astype(int))
        dup = frame.duplicated(KEY)
        if dup.any():
            notes.append(f"{source.key}: {dup.sum()} duplicated (code, year) rows dropped (first kept)")
            frame = frame[~dup]
        covered_states = _covered_states(source, frame)
        value_frame = frame
        # Two sources may feed the same columns for different years/states (the 2020 and 2021
        # COVID-19 releases): values already present win, the new source fills the gaps.
        shared = [c for c in value_frame.columns if c not in KEY and c in panel.columns]
        if shared:
            value_frame = value_frame.rename(columns={c: f"{c}__new" for c in shared})
        panel = panel.merge(value_frame, on=KEY, how="left")
        for column in shared:
            panel[column] = panel[column].combine_first(panel.pop(f"{column}__new"))
        if source.fill_zero:
            # Within the source's coverage (its states, its years) a municipality not listed had no case.
            in_years = panel["year"].isin(frame["year"].unique())
            in_states = panel["CVEGEO"].str[:2].isin(covered_states) if covered_states is not None else True
            mask = in_years & in_states
            for column in source.fill_zero:
                panel.loc[mask & panel[column].isna(), column] = 0
        for column, value in source.fill_value.items():
            panel[column] = panel[column].fillna(value)
    # Columns of sources that failed still exist (all missing), so pages never KeyError.
    absent = [v.name for s in sources for v in s.variables if v.name not in panel.columns]
    if absent:
        filler = pd.DataFrame(np.nan, index=panel.index, columns=list(dict.fromkeys(absent)))
        panel = pd.concat([panel, filler], axis=1)
    ordered = KEY + [v.name for s in sources for v in s.variables if v.name not in KEY]
    panel = panel[list(dict.fromkeys(ordered))].sort_values(KEY).reset_index(drop=True)
    panel = _derive(panel, notes, root)

    quality = PanelQuality(
        sources=pd.DataFrame(status_rows, columns=["source", "label", "status", "rows", "codes", "joined",
                                                   "unmatched", "municipalities_with_data", "coverage_pct",
                                                   "years", "message"]),
        missingness=_missingness(panel, [*sources, PanelSource(
            "derived", "derived rates", lambda root: None, (POPULATION_ESTIMATE, *(d[0] for d in DERIVED)))]),
        unmatched=pd.DataFrame(unmatched_rows, columns=["source", "CVEGEO", "reason", "rows", "records"]),
        n_municipalities=len(reference), years=years, notes=notes,
    )
    return panel, quality


def write_panel(panel: pd.DataFrame, path) -> Path:
    """Write the panel as CSV (UTF-8, codes stay text) or parquet, chosen by the suffix."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        panel.to_parquet(path, index=False)
    elif path.suffix.lower() == ".csv":
        panel.to_csv(path, index=False)
    else:
        raise DataError(f"`out` must end in .csv or .parquet, not {path.suffix or 'nothing'}")
    return path


# ----------------------------------------------------------------------------------- internals

def _reference_codes(root: Path) -> list[str]:
    """The 2,469 municipal codes: from the geometry, else CONAPO 2020 (so a panel without polygons
    still builds)."""
    try:
        from pumamed.epi.geometry import load_municipalities

        return load_municipalities(root)["CVEGEO"].tolist()
    except DataError:
        from pumamed.epi.socio import read_imm_2020

        try:
            return read_imm_2020(root)["CVEGEO"].tolist()
        except MissingDataError as exc:
            raise MissingDataError("neither the municipal polygons (geo_mxmaps_2020) nor CONAPO IMM 2020 were "
                                   "found: the panel needs one of them as the list of municipalities") from exc


def _covered_states(source: PanelSource, frame: pd.DataFrame):
    if source.coverage == "national":
        return None
    if source.coverage == "listed":
        return sorted(frame["CVEGEO"].str[:2].unique())
    return list(source.coverage)


def _unmatched_reason(code: str) -> str:
    if code.endswith("999"):
        return "unspecified municipality (xx999)"
    if code.endswith("000"):
        return "state total (xx000)"
    if code[:2] > "32" or code[:2] == "00":
        return "not a state code (abroad or unknown)"
    return "code not among the 2,469 municipalities of 2020"


# Rates computed once, so that every page and model uses the same definition. The denominator is
# ``population_est``: the 2020 census population of the municipality scaled, year by year, by its
# state's CONAPO mid-year projection relative to 2020 (no municipal intercensal series is in the
# data). Without the projections file it is the 2020 census population itself.
POPULATION_ESTIMATE = Variable(
    "population_est", "population", "Population estimate for the year (census 2020 x state projection ratio)",
    "persons", "derived: INEGI census 2020 x CONAPO state projections", "2010-2024", "continuous")
DERIVED: tuple[tuple[Variable, str, float], ...] = (
    (Variable("diabetes_mortality_per_100k", "outcome",
              "Diabetes deaths per 100,000 inhabitants (crude)", "per 100,000",
              "derived: diabetes_deaths / population_est", "2017-2021", "continuous"), "diabetes_deaths", 1e5),
    (Variable("covid_diabetic_patients_per_100k", "outcome",
              "Diabetic COVID-19 patients per 100,000 inhabitants", "per 100,000",
              "derived: covid_diabetic_patients / population_est", "2020,2021", "continuous"),
     "covid_diabetic_patients", 1e5),
    (Variable("deaths_all_causes_per_1000", "outcome", "Deaths (all causes) per 1,000 inhabitants",
              "per 1,000", "derived: deaths_all_causes / population_est", "2019", "continuous"),
     "deaths_all_causes", 1e3),
)


def _population_estimate(panel: pd.DataFrame, root: Path, notes: list[str]) -> pd.Series:
    population = panel["population"].astype(float) if "population" in panel else pd.Series(np.nan, index=panel.index)
    try:
        from pumamed.epi.socio import read_state_projections

        projections = read_state_projections(root)
    except DataError as exc:
        notes.append(f"population_est = census 2020 population for every year ({exc})")
        return population
    mid = projections.set_index(["CVE_ENT", "year"])["population_mid"]
    base = projections[projections["year"] == REFERENCE_YEAR].set_index("CVE_ENT")["population_mid"]
    keys = pd.MultiIndex.from_arrays([panel["CVEGEO"].str[:2], panel["year"].astype(int)])
    ratio = mid.reindex(keys).to_numpy() / base.reindex(panel["CVEGEO"].str[:2]).to_numpy()
    # Scaling a 2020 count by its state's growth is fair for a decade around 2020, not for 1990
    # (fast-growing cities would be overstated by half): no estimate outside that window.
    near = panel["year"].between(REFERENCE_YEAR - 10, REFERENCE_YEAR + 10).to_numpy()
    return population * pd.Series(np.where(near, ratio, np.nan), index=panel.index)


def _derive(panel: pd.DataFrame, notes: list[str], root: Path) -> pd.DataFrame:
    estimate = _population_estimate(panel, root, notes)
    derived = {POPULATION_ESTIMATE.name: estimate}
    denominator = estimate.where(estimate > 0)
    for variable, numerator, scale in DERIVED:
        if numerator not in panel:
            derived[variable.name] = pd.Series(np.nan, index=panel.index)
        else:
            derived[variable.name] = scale * panel[numerator].astype(float) / denominator
    return pd.concat([panel, pd.DataFrame(derived, index=panel.index)], axis=1)


def _missingness(panel: pd.DataFrame, sources: list[PanelSource]) -> pd.DataFrame:
    rows, seen = [], set()
    for source in sources:
        for var in source.variables:
            if var.name in seen:  # fed by several sources (COVID-19 2020 and 2021): report once
                continue
            seen.add(var.name)
            column = panel[var.name]
            present = column.notna()
            years = sorted(panel.loc[present, "year"].unique().tolist())
            in_years = panel["year"].isin(years)
            rows.append({"name": var.name, "group": var.group, "source": source.key, "n": int(len(column)),
                         "n_missing": int((~present).sum()),
                         "pct_missing": 100.0 * float((~present).mean()) if len(column) else 100.0,
                         # Missing among the years the variable is reported at all: the number that
                         # says how many municipalities a source leaves out.
                         "pct_missing_in_years": (100.0 * float((~present[in_years]).mean())
                                                  if in_years.any() else 100.0),
                         "years_with_data": _year_span(years) if years else "none"})
    return pd.DataFrame(rows, columns=["name", "group", "source", "n", "n_missing", "pct_missing",
                                       "pct_missing_in_years", "years_with_data"])


def _static_year(source: PanelSource) -> str:
    years = sorted({v.year for v in source.variables})
    return ",".join(years)


def _year_span(years) -> str:
    years = sorted(int(y) for y in years)
    if not years:
        return ""
    if years == list(range(years[0], years[-1] + 1)) and len(years) > 2:
        return f"{years[0]}-{years[-1]}"
    return ",".join(str(y) for y in years)


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", force_ascii=False))
