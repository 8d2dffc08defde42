"""``python -m pumamed data check`` for the epi folder: one report per source, with counts.

Each counter reads its dataset with the same reader the panel uses (so "ok" means "usable"), and
compares every file that has a checksum in the fetch manifest: a file whose sha256 differs from
the published one is reported *broken* (damaged download or local edit) instead of silently used.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from pumamed.datacheck import DatasetReport, safe_check
from pumamed.epi.io import epi_dir

GROUP = "epi"
FETCH_HINT = "python -m pumamed data fetch epi --only {folder}"
DEMO_HINT = "a reduced form written by `python -m pumamed data build-demo` (the demo pack)"


def _verify(root: Path, folder: str) -> None:
    """Raise if a manifest file of ``folder`` is present but differs from its published sha256."""
    from pumamed.epi.fetch import manifest_entries, verify_file

    for entry in manifest_entries(only=[folder]):
        target = root / entry["path"]
        if target.exists() and not verify_file(target, entry["sha256"], entry.get("size")):
            raise ValueError(f"{entry['path']} differs from the published file (sha256 mismatch): "
                             "re-fetch it with `python -m pumamed data fetch epi`")


def _checked(root: Path, folder: str, counter):
    def run(path):
        if folder is not None:  # None: a derived folder (the demo pack's), no published checksums
            _verify(root, folder)
        return counter(path)

    return run


def reports(data_dir) -> list[DatasetReport]:
    """Reports for every epi source under ``data_dir`` (the data root or the epi folder)."""
    root = epi_dir(data_dir)
    specs = [
        ("epi/geometry (mxmaps 2020)", "geo_mxmaps_2020", "geo_mxmaps_2020/raw/data/mxmunicipio.map.RData",
         lambda p: _count_geometry(root)),
        ("epi/census tabulations", "geo_mxmaps_2020", "geo_mxmaps_2020/raw/data-raw/censo/2020.csv",
         lambda p: _count_census(root)),
        ("epi/CONAPO IMM 2020", "conapo_imm_2020", "conapo_imm_2020/IMM_2020.csv", lambda p: _count_imm(root)),
        ("epi/CONAPO IMM 1990-2015", "conapo_imm_1990_2015",
         "conapo_imm_1990_2015/Base_Indice_de_marginacion_municipal_90-15.csv", lambda p: _count_imm_history(root)),
        ("epi/CONEVAL, HDI, population", "mucinoab_muni_indicators", "mucinoab_muni_indicators",
         lambda p: _count_mucinoab(root)),
        ("epi/RAMA 2024 (hourly, or daily means)", "rama_cdmx_2024_hourly", "rama_cdmx_2024_hourly",
         lambda p: _count_rama(root)),
        ("epi/RAMA daily city-wide", "rama_cdmx_daily_2015_2023", "rama_cdmx_daily_2015_2023/rama_2023_05.csv",
         lambda p: _count_rama_daily(root)),
        ("epi/SINAICA monthly", "sinaica_stations_monthly", "sinaica_stations_monthly/monthly_pollution.csv",
         lambda p: _count_sinaica(root)),
        ("epi/INEGI catalogues", "inegi_mg_catalogs_isaacarroyov",
         "inegi_mg_catalogs_isaacarroyov/cve_nom_municipios.csv", lambda p: _count_catalog(root)),
        ("epi/ERA5 weekly climate", "era5_weekly_municipal_graphari",
         "era5_weekly_municipal_graphari/2m_mean_temperature.csv", lambda p: _count_climate(root)),
        ("epi/COVID-19 national 2020", "outcomes/covid19_ssa_20200517_national",
         "outcomes/covid19_ssa_20200517_national/200517COVID19MEXICO.csv.zip", _count_zip_csv),
        ("epi/COVID-19 BC/BCS 2021", "outcomes/covid19_ssa_bc_bcs_2021_covidmx",
         "outcomes/covid19_ssa_bc_bcs_2021_covidmx/datos_abiertos_covid19_prueba.zip", _count_zip_csv),
        ("epi/INEGI deaths Sonora", "outcomes/inegi_defun_sonora_2017_2021",
         "outcomes/inegi_defun_sonora_2017_2021", lambda p: _count_deaths(root)),
        ("epi/ENSANUT 2018 small areas", "outcomes/ensanut2018_small_area_mun_prevalence",
         "outcomes/ensanut2018_small_area_mun_prevalence/a_peq_prev_2018.xlsx", lambda p: _count_ensanut(root)),
        ("epi/outcome tables per municipality (reduced form)", None,
         "outcomes/municipal_tables", lambda p: _count_municipal_tables(root)),
        ("epi/death-record catalogues", "outcomes/inegi_defun_dictionary_catalogs_2017_2018",
         "outcomes/inegi_defun_dictionary_catalogs_2017_2018", _count_files),
        ("epi/DGIS death catalogues", "outcomes/dgis_defun_catalogs_2019_2020",
         "outcomes/dgis_defun_catalogs_2019_2020", _count_files),
    ]
    out = [safe_check(name, GROUP, root / relative, _checked(root, folder, counter),
                      hint=FETCH_HINT.format(folder=folder) if folder else DEMO_HINT)
           for name, folder, relative, counter in specs]
    out.append(safe_check("epi/DGIS egresos (optional)", GROUP, root / "outcomes" / "dgis_egresos",
                          lambda p: _count_egresos(root),
                          hint="put public DGIS EGRESOS files there; see docs/epi_data.md"))
    return out


# --------------------------------------------------------------------------------- counters

def _count_geometry(root: Path) -> dict:
    from pumamed.epi.geometry import load_municipalities, load_states

    municipalities = load_municipalities(root)
    return {"municipalities": len(municipalities), "states": len(load_states(root)),
            "invalid": int((~municipalities.geometry.is_valid).sum())}


def _count_census(root: Path) -> dict:
    from pumamed.epi.socio import read_census_population_2020

    census = read_census_population_2020(root)
    return {"municipalities": len(census), "population": int(census["total"].sum())}


def _count_imm(root: Path) -> dict:
    from pumamed.epi.socio import read_imm_2020

    return {"municipalities": len(read_imm_2020(root))}


def _count_imm_history(root: Path) -> dict:
    from pumamed.epi.socio import read_imm_history

    history = read_imm_history(root)
    return {"rows": len(history), "editions": int(history["year"].nunique())}


def _count_mucinoab(root: Path) -> dict:
    from pumamed.epi.socio import read_coneval_2015, read_hdi, read_population_2020

    population = read_population_2020(root)
    return {"coneval": len(read_coneval_2015(root)), "hdi": len(read_hdi(root)), "population": len(population),
            "sex_scale_fixed": int(population["sex_scale_factor"].iloc[0])}


def _count_rama(root: Path) -> dict:
    from pumamed.epi.pollutants import has_rama_hourly, load_rama_hourly, rama_station_daily

    if not has_rama_hourly(root):  # the reduced form of the demo pack
        daily = rama_station_daily(root)
        return {"form": "daily means", "stations": int(daily["station_key"].nunique()),
                "pollutants": int(daily["pollutant"].nunique()), "station_days": len(daily)}
    hourly = load_rama_hourly(root)
    return {"stations": int(hourly["station_key"].nunique()), "pollutants": int(hourly["pollutant"].nunique()),
            "valid_hours": len(hourly)}


def _count_municipal_tables(root: Path) -> dict:
    from pumamed.epi.outcomes import MUNICIPAL_TABLES, MUNICIPAL_TABLE_SOURCES, read_municipal_table

    counts = {}
    for source in MUNICIPAL_TABLE_SOURCES:
        path = root / MUNICIPAL_TABLES / f"{source}.csv"
        if path.is_file():
            counts[source] = len(read_municipal_table(path))
    if not counts:
        raise ValueError(f"no table of {list(MUNICIPAL_TABLE_SOURCES)} in {root / MUNICIPAL_TABLES}")
    return counts


def _count_rama_daily(root: Path) -> dict:
    from pumamed.epi.pollutants import load_rama_daily_citywide

    return {"days": len(load_rama_daily_citywide(root))}


def _count_sinaica(root: Path) -> dict:
    from pumamed.epi.pollutants import load_sinaica_monthly, load_stations

    monthly = load_sinaica_monthly(root)
    stations = load_stations(root)
    return {"stations": int(monthly["station_key"].nunique()), "values": len(monthly),
            "dropped": int(monthly["value"].isna().sum()), "rescaled": int((monthly["flag"] == "unit_rescaled").sum()),
            "lon_sign_fixed": int(stations["lon_sign_fixed"].sum())}


def _count_catalog(root: Path) -> dict:
    import pandas as pd

    table = pd.read_csv(root / "inegi_mg_catalogs_isaacarroyov" / "cve_nom_municipios.csv", dtype=str)
    return {"codes": len(table)}


def _count_climate(root: Path) -> dict:
    import pandas as pd

    from pumamed.epi.climate import ERA5_DIR
    from pumamed.epi.io import normalize_cvegeo

    counts = {}
    for name, key in (("2m_mean_temperature.csv", "temperature_weeks"), ("total_precipitation.csv", "precipitation_weeks")):
        weeks = pd.read_csv(root / ERA5_DIR / name, usecols=["Epidemiological_Week"])["Epidemiological_Week"]
        counts[key] = len(weeks)
    header = pd.read_csv(root / ERA5_DIR / "2m_mean_temperature.csv", nrows=0).columns[1:]
    counts["municipalities"] = int(normalize_cvegeo(pd.Series(header)).nunique())
    return counts


def _count_zip_csv(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad:
            raise ValueError(f"damaged member {bad} in {path.name}")
        member = next(n for n in archive.namelist() if n.lower().endswith(".csv"))
        lines = 0
        with archive.open(member) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                lines += block.count(b"\n")
    return {"patients": lines - 1}


def _count_deaths(root: Path) -> dict:
    from pumamed.epi.outcomes import load_death_records_sonora

    records = load_death_records_sonora(root)
    return {"deaths": len(records), "diabetes_deaths": int(records["diabetes"].sum())}


def _count_ensanut(root: Path) -> dict:
    from pumamed.epi.outcomes import read_ensanut_2018

    return {"municipalities": len(read_ensanut_2018(root))}


def _count_files(path: Path) -> dict:
    return {"files": sum(1 for p in Path(path).rglob("*") if p.is_file() and p.name != "SOURCE.txt")}


def _count_egresos(root: Path) -> dict:
    from pumamed.epi.outcomes import load_egresos

    table = load_egresos(root)
    return {"municipality_years": len(table), "discharges": int(table["discharges"].sum())}
