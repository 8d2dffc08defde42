"""Socioeconomic and population tables per municipality (CONAPO, CONEVAL, UNDP, INEGI).

Every reader returns one row per municipality with ``CVEGEO`` as 5-character text and keeps the
publisher's column names (so a user can compare with the official documentation); the panel
(:mod:`pumamed.epi.panel`) renames them to readable snake_case. Quirks handled here:

* CONAPO IMM 2020: blank row and national row under the header, footnote rows at the end, spaces
  as thousands separators, em-dash for n/a, an unnamed last column (national rank -> ``LUG_NAC``).
* CONAPO IMM 1990-2015: ``CVE_MUN`` is an integer (zero-padded here), ``-`` for n/a, names padded
  with spaces.
* INEGI population 2020 (mucinoab): ``hombres``/``mujeres`` are 100x too large. The factor is
  *detected* from the data (``hombres + mujeres`` against ``total``), so a corrected release of
  the file is read unchanged.
* INEGI census tabulations (mxmaps ``data-raw/censo``): windows-1252 with three header lines.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed.epi.io import cvegeo_from_parts, epi_dir, normalize_cvegeo, require_file, to_number
from pumamed.errors import DataError

log = logging.getLogger(__name__)

IMM_2020 = Path("conapo_imm_2020") / "IMM_2020.csv"
IMM_1990_2015 = Path("conapo_imm_1990_2015") / "Base_Indice_de_marginacion_municipal_90-15.csv"
MUCINOAB = Path("mucinoab_muni_indicators")
CENSUS_DIR = Path("geo_mxmaps_2020") / "raw" / "data-raw" / "censo"
MXMAPS_ATTRS = Path("geo_mxmaps_2020") / "raw" / "data" / "df_mxmunicipio_2020.RData"

# The nine CONAPO 2020 indicators (official short names) and what they measure (all % of the
# relevant population or dwellings).
IMM_2020_INDICATORS = {
    "ANALF": "% population 15+ illiterate",
    "SBASC": "% population 15+ without complete basic education",
    "OVSDE": "% occupants of dwellings without drainage or toilet",
    "OVSEE": "% occupants of dwellings without electricity",
    "OVSAE": "% occupants of dwellings without piped water",
    "OVPT": "% occupants of dwellings with dirt floor",
    "VHAC": "% dwellings with overcrowding",
    "PL.5000": "% population in localities under 5,000 inhabitants",
    "PO2SM": "% employed population earning up to 2 minimum wages",
}
IMM_DEGREES = ["Muy bajo", "Bajo", "Medio", "Alto", "Muy alto"]


def _codes_table(frame: pd.DataFrame, code: pd.Series, source: str) -> pd.DataFrame:
    """Insert CVEGEO first and refuse duplicated codes (a silent duplicate doubles joins)."""
    frame = frame.copy()
    frame.insert(0, "CVEGEO", normalize_cvegeo(code, name=f"{source} code").to_numpy())
    dup = frame["CVEGEO"][frame["CVEGEO"].duplicated()].unique()
    if len(dup):
        raise DataError(f"{source}: duplicated municipality codes {', '.join(dup[:5])}")
    return frame.sort_values("CVEGEO").reset_index(drop=True)


# ---------------------------------------------------------------------------------- CONAPO 2020

def read_imm_2020(data_dir=None) -> pd.DataFrame:
    """CONAPO marginalization index 2020: 2,469 municipalities.

    Columns: ``CVEGEO, CVE_ENT, NOM_ENT, NOM_MUN, POB_TOT`` (int), the nine indicators
    (:data:`IMM_2020_INDICATORS`, floats, %), ``IM_2020`` (index), ``GM_2020`` (ordered category
    Muy bajo..Muy alto), ``IMN_2020`` (normalised index 0-1), ``LUG_NAC`` (national rank).
    """
    return _imm_2020(str(epi_dir(data_dir))).copy()


@functools.lru_cache(maxsize=4)
def _imm_2020(root: str) -> pd.DataFrame:
    path = require_file(Path(root) / IMM_2020, "CONAPO IMM 2020 (conapo_imm_2020/IMM_2020.csv)")
    raw = pd.read_csv(path, dtype=str, encoding="utf-8", keep_default_na=False)
    raw = raw.rename(columns={c: "LUG_NAC" for c in raw.columns if c.startswith("Unnamed")})
    needed = ["CVE_ENT", "NOM_ENT", "CVE_MUN", "NOM_MUN", "POB_TOT", *IMM_2020_INDICATORS,
              "IM_2020", "GM_2020", "IMN_2020"]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataError(f"{path.name}: missing columns {missing}")
    # Municipal rows carry a 4-5 digit code; the blank row, 'Nacional' and footnotes do not.
    rows = raw[raw["CVE_MUN"].str.strip().str.fullmatch(r"\d{4,5}")]
    out = pd.DataFrame({
        "CVE_ENT": rows["CVE_ENT"].str.strip().str.zfill(2),
        "NOM_ENT": rows["NOM_ENT"].str.strip(),
        "NOM_MUN": rows["NOM_MUN"].str.strip(),
        "POB_TOT": to_number(rows["POB_TOT"]).astype("Int64"),
    })
    for column in [*IMM_2020_INDICATORS, "IM_2020", "IMN_2020"]:
        out[column] = to_number(rows[column])
    out["GM_2020"] = pd.Categorical(rows["GM_2020"].str.strip(), categories=IMM_DEGREES, ordered=True)
    if "LUG_NAC" in rows:
        out["LUG_NAC"] = to_number(rows["LUG_NAC"]).astype("Int64")
    return _codes_table(out, rows["CVE_MUN"], "IMM 2020")


# ----------------------------------------------------------------------------- CONAPO 1990-2015

def read_imm_history(data_dir=None) -> pd.DataFrame:
    """CONAPO marginalization 1990, 1995, 2000, 2005, 2010, 2015 in long format.

    Columns: ``CVEGEO, year, NOM_ENT, NOM_MUN, POB_TOT``, the indicators of each edition
    (``ANALF, SPRIM, OVSDE, OVSEE, OVSAE, VHAC, OVPT, PL<5000, PO2SM``, ...; missing where an
    edition did not publish one), ``IM`` (index; not on the 2020 scale), ``GM`` (degree),
    ``IND0A100``, ``LUG_NAC``. One row per (CVEGEO, year).
    """
    return _imm_history(str(epi_dir(data_dir))).copy()


@functools.lru_cache(maxsize=4)
def _imm_history(root: str) -> pd.DataFrame:
    path = require_file(Path(root) / IMM_1990_2015, "CONAPO IMM 1990-2015")
    raw = pd.read_csv(path, dtype=str, encoding="utf-8", keep_default_na=False)
    year_col = next((c for c in raw.columns if c.upper() in ("AÑO", "ANO", "ANIO", "YEAR")), None)
    if year_col is None or "CVE_MUN" not in raw.columns:
        raise DataError(f"{path.name}: expected CVE_MUN and AÑO columns, got {list(raw.columns)}")
    raw = raw[raw["CVE_MUN"].str.strip().str.fullmatch(r"\d{4,5}")]  # drops the 'Nacional' rows
    out = pd.DataFrame({
        "CVEGEO": normalize_cvegeo(raw["CVE_MUN"], name="CVE_MUN").to_numpy(),
        "year": to_number(raw[year_col]).astype("Int64").to_numpy(),
        "NOM_ENT": raw["ENT"].str.strip().to_numpy(),
        "NOM_MUN": raw["MUN"].str.strip().to_numpy(),
    })
    for column in raw.columns:
        if column in ("CVE_ENT", "ENT", "CVE_MUN", "MUN", year_col, "GM"):
            continue
        out[column] = to_number(raw[column]).to_numpy()
    out["POB_TOT"] = out["POB_TOT"].astype("Int64")
    out["GM"] = pd.Categorical(raw["GM"].str.strip().replace({"-": None}).to_numpy(),
                               categories=IMM_DEGREES, ordered=True)
    dup = out.duplicated(["CVEGEO", "year"])
    if dup.any():
        raise DataError(f"{path.name}: duplicated (municipality, year) rows, e.g. "
                        f"{out.loc[dup, ['CVEGEO', 'year']].head(3).values.tolist()}")
    return out.sort_values(["CVEGEO", "year"]).reset_index(drop=True)


# ------------------------------------------------------------------------------ CONEVAL poverty

CONEVAL_INDICATORS = {
    "pobreza": "poverty", "pobreza_e": "extreme poverty", "pobreza_m": "moderate poverty",
    "vul_car": "vulnerable by social deprivation", "vul_ing": "vulnerable by income",
    "npnv": "not poor and not vulnerable", "ic_rezedu": "educational lag",
    "ic_asalud": "no access to health services", "ic_segsoc": "no access to social security",
    "ic_cv": "poor housing quality and space", "ic_sbv": "no basic housing services",
    "ic_ali": "no access to food", "carencias": "at least one social deprivation",
    "carencias3": "three or more social deprivations", "plb": "income below the welfare line",
    "plbm": "income below the minimum welfare line",
}


def read_coneval_2015(data_dir=None, measure: str = "percent") -> pd.DataFrame:
    """CONEVAL municipal poverty 2015 (2,457 municipalities; 12 created later are absent).

    ``measure='percent'`` (% of population) or ``'people'`` (persons). Columns: ``CVEGEO`` and the
    official short names in :data:`CONEVAL_INDICATORS`.
    """
    if measure not in ("percent", "people"):
        raise DataError("measure must be 'percent' or 'people'")
    return _coneval(str(epi_dir(data_dir)), measure).copy()


@functools.lru_cache(maxsize=8)
def _coneval(root: str, measure: str) -> pd.DataFrame:
    name = ("indicadores_de_pobreza_municipal_2015_porcentaje.csv" if measure == "percent"
            else "indicadores_de_pobreza_municipal_2015_poblacion.csv")
    path = require_file(Path(root) / MUCINOAB / name, f"CONEVAL poverty 2015 ({name})")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require_columns(raw, ["entidad", "municipio", *CONEVAL_INDICATORS], path.name)
    out = pd.DataFrame({c: to_number(raw[c]) for c in CONEVAL_INDICATORS})
    return _codes_table(out, cvegeo_from_parts(raw["entidad"], raw["municipio"]), "CONEVAL 2015")


# ----------------------------------------------------------------------------------- UNDP HDI

def read_hdi(data_dir=None) -> pd.DataFrame:
    """UNDP municipal Human Development Index (2015 data, new methodology), 2,456 municipalities.

    Columns: ``CVEGEO, idh, anio_promedio_escolaridad, anios_esperados_escolaridad,
    ingreso_per_capita`` (annual, 2010 USD PPP as published by UNDP Mexico).
    """
    return _hdi(str(epi_dir(data_dir))).copy()


@functools.lru_cache(maxsize=4)
def _hdi(root: str) -> pd.DataFrame:
    path = require_file(Path(root) / MUCINOAB / "IDH_Municipios.csv", "UNDP municipal HDI (IDH_Municipios.csv)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = ["idh", "anio_promedio_escolaridad", "anios_esperados_escolaridad", "ingreso_per_capita"]
    _require_columns(raw, ["ent", "mun", *columns], path.name)
    out = pd.DataFrame({c: to_number(raw[c]) for c in columns})
    return _codes_table(out, cvegeo_from_parts(raw["ent"], raw["mun"]), "UNDP HDI")


def read_migration_index(data_dir=None) -> pd.DataFrame:
    """CONAPO absolute index of Mexico-US migration intensity (IAIM), 2,469 municipalities."""
    return _iaim(str(epi_dir(data_dir))).copy()


@functools.lru_cache(maxsize=4)
def _iaim(root: str) -> pd.DataFrame:
    path = require_file(Path(root) / MUCINOAB / "IAIM_Municipio.csv", "CONAPO migration index (IAIM_Municipio.csv)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require_columns(raw, ["ent", "mun", "iaim"], path.name)
    return _codes_table(pd.DataFrame({"iaim": to_number(raw["iaim"])}),
                        cvegeo_from_parts(raw["ent"], raw["mun"]), "IAIM")


# ----------------------------------------------------------------------------- population 2020

def detect_scale_factor(parts: pd.DataFrame, total: pd.Series, *, candidates=(1, 10, 100, 1000)) -> int:
    """The power of ten by which ``parts`` (columns summing to ``total``) are inflated.

    Picks the candidate that makes ``sum(parts)/factor`` match ``total`` for the most rows;
    raises :class:`DataError` if none matches at least 95 % of rows (the file is then wrong in a
    way we do not know how to fix).
    """
    summed = parts.sum(axis=1, min_count=len(parts.columns))
    ok = summed.notna() & total.notna() & (total > 0)
    if not ok.any():
        raise DataError("cannot check the sex columns: no complete rows")
    best, best_share = None, 0.0
    for factor in candidates:
        share = float((np.abs(summed[ok] / factor - total[ok]) <= np.maximum(1.0, 0.001 * total[ok])).mean())
        if share > best_share:
            best, best_share = factor, share
    if best is None or best_share < 0.95:
        raise DataError("male + female does not add up to the total population under any power-of-ten "
                        f"scale (best match {best_share:.0%} of rows)")
    return int(best)


def read_population_2020(data_dir=None) -> pd.DataFrame:
    """INEGI 2020 census population per municipality (2,469 rows).

    Columns: ``CVEGEO, total, hombres, mujeres, densidad`` (per km²), ``extension_territorial``
    (km²), ``porcentaje_indigena`` (2015), plus ``sex_scale_factor`` (the factor by which the
    published sex columns were divided: 100 for the mucinoab file, 1 for a correct one).
    """
    return _population(str(epi_dir(data_dir))).copy()


@functools.lru_cache(maxsize=4)
def _population(root: str) -> pd.DataFrame:
    path = require_file(Path(root) / MUCINOAB / "poblacion_municipios.csv", "INEGI population 2020 (poblacion_municipios.csv)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require_columns(raw, ["entidad", "municipio", "total", "hombres", "mujeres"], path.name)
    numbers = pd.DataFrame({c: to_number(raw[c]) for c in raw.columns
                            if c not in ("entidad", "entidad_nombre", "municipio", "municipio_nombre")})
    factor = detect_scale_factor(numbers[["hombres", "mujeres"]], numbers["total"])
    if factor != 1:
        log.info("%s: male/female columns are %dx too large; divided", path.name, factor)
    out = pd.DataFrame({
        "total": numbers["total"].round().astype("Int64"),
        "hombres": (numbers["hombres"] / factor).round().astype("Int64"),
        "mujeres": (numbers["mujeres"] / factor).round().astype("Int64"),
        "densidad": numbers.get("densidad"),
        "extension_territorial": numbers.get("extension_territorial"),
        "porcentaje_indigena": numbers.get("porcentaje_indigena"),
        "sex_scale_factor": factor,
    })
    return _codes_table(out, cvegeo_from_parts(raw["entidad"], raw["municipio"]), "population 2020")


def read_age_quartiles_2020(data_dir=None) -> pd.DataFrame:
    """Age quartiles (Q1, Q2 = median age, Q3) per municipality, INEGI census 2020."""
    root = epi_dir(data_dir)
    path = require_file(root / MUCINOAB / "cuartiles_municipios_2020.csv", "age quartiles 2020")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require_columns(raw, ["entidad", "municipio", "Q1", "Q2", "Q3"], path.name)
    out = pd.DataFrame({c: to_number(raw[c]) for c in ("Q1", "Q2", "Q3")})
    return _codes_table(out, cvegeo_from_parts(raw["entidad"], raw["municipio"]), "age quartiles")


def read_vital_2019(data_dir=None) -> pd.DataFrame:
    """INEGI 2019 registered deaths (all causes) and births by municipality of residence.

    State totals (``000``) dropped; unspecified municipalities (``999``) kept as codes ``xx999`` so
    they show up in the join report rather than vanish. (The companion file
    ``fertilidad_entidad_municipio_2020.csv`` is not used: several of its codes are wrong, e.g.
    Cintalapa filed under Chiapilla's 07028.)"""
    root = epi_dir(data_dir)
    tables = []
    for name, value in (("defunciones_municipio_2019.csv", "defunciones"), ("nacimientos.csv", "nacimientos")):
        path = require_file(root / MUCINOAB / name, name)
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        _require_columns(raw, ["entidad", "municipio", value], name)
        raw = raw[raw["municipio"].str.strip().str.lstrip("0") != ""]  # state totals
        codes = cvegeo_from_parts(raw["entidad"], raw["municipio"])
        tables.append(_codes_table(pd.DataFrame({value: to_number(raw[value]).to_numpy()}), codes, name))
    out = tables[0]
    for table in tables[1:]:
        out = out.merge(table, on="CVEGEO", how="outer")
    return out.sort_values("CVEGEO").reset_index(drop=True)


def read_location(data_dir=None) -> pd.DataFrame:
    """Municipal seat latitude/longitude (decimal degrees, west negative) and altitude (m), INEGI.

    The published coordinates are degree-minute-second text without a hemisphere sign
    (``102°32´18.793``); Mexico is north and west, so longitudes are made negative.
    """
    root = epi_dir(data_dir)
    path = require_file(root / MUCINOAB / "lat_lon_alt_municipios.csv", "lat_lon_alt_municipios.csv")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require_columns(raw, ["ent", "mun", "latitud", "longitud", "altitud"], path.name)
    out = pd.DataFrame({
        "latitude": raw["latitud"].map(parse_dms).to_numpy(),
        "longitude": -raw["longitud"].map(parse_dms).abs().to_numpy(),
        "altitude_m": to_number(raw["altitud"]).to_numpy(),
    })
    return _codes_table(out, cvegeo_from_parts(raw["ent"], raw["mun"]), "lat/lon/alt")


def parse_dms(text) -> float:
    """``22°03´26.004`` -> 22.0572; plain decimals pass through; unparseable -> NaN."""
    import re

    if text is None or (isinstance(text, float) and np.isnan(text)):
        return np.nan
    numbers = re.findall(r"\d+(?:\.\d+)?", str(text))
    if not numbers:
        return np.nan
    values = [float(n) for n in numbers[:3]] + [0.0] * (3 - min(3, len(numbers)))
    return values[0] + values[1] / 60 + values[2] / 3600


def read_census_attributes(data_dir=None) -> pd.DataFrame:
    """Census 2020 attributes compiled by mxmaps (``df_mxmunicipio_2020``): population by sex,
    Afro-Mexican population, population speaking an indigenous language, metro area."""
    from pumamed.epi.geometry import read_rdata_frame

    root = epi_dir(data_dir)
    table = read_rdata_frame(require_file(root / MXMAPS_ATTRS, "df_mxmunicipio_2020.RData"))
    out = pd.DataFrame({
        "NOM_ENT": table["state_name"].astype(str).to_numpy(),
        "NOM_MUN": table["municipio_name"].astype(str).to_numpy(),
        "pop": table["pop"].astype("Int64").to_numpy(),
        "pop_male": table["pop_male"].astype("Int64").to_numpy(),
        "pop_female": table["pop_female"].astype("Int64").to_numpy(),
        "afromexican": table["afromexican"].astype("Int64").to_numpy(),
        "indigenous_language": table["indigenous_language"].astype("Int64").to_numpy(),
        "metro_area": table["metro_area"].astype("str").to_numpy(),
    })
    return _codes_table(out, table["region"], "df_mxmunicipio_2020")


def read_census_tabulation(path, *, header_lines: int = 3, encoding: str | None = None) -> pd.DataFrame:
    """An INEGI census tabulation as exported by INEGI's query tool (``data-raw/censo/*.csv``).

    Layout: windows-1252; three title lines; a header row whose first cells are empty (code, name
    and, in the 1990-2010 file, sex); the national row (code ``' '``), state rows
    (``=CONCATENAR(0,01)``), then municipal rows with codes like ``' 01 001 '``; a source footnote.
    Numbers use commas as thousands separators. ``encoding=None`` reads INEGI's windows-1252 and
    also a copy re-saved as UTF-8 (strict UTF-8 is tried first: cp1252 text is almost never valid
    UTF-8, while the reverse would silently produce mojibake).

    Returns one row per municipal line: ``CVEGEO``, ``NOM_MUN``, ``sex`` (only when the table has
    a sex column: Total/Hombre/Mujer), then the numeric columns under their published headers.
    """
    import io

    path = Path(path)
    require_file(path, f"census tabulation {path.name}")
    raw = path.read_bytes()
    if encoding is None:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("windows-1252", errors="strict") if _is_cp1252(raw) else None
        if text is None:
            raise DataError(f"{path.name} is neither UTF-8 nor windows-1252 text")
    else:
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise DataError(f"{path.name} is not {encoding}: {exc}") from exc
    try:
        frame = pd.read_csv(io.StringIO(text), skiprows=header_lines, dtype=str, keep_default_na=False,
                            on_bad_lines="skip")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path.name}: not an INEGI tabulation ({exc})") from exc
    columns = [str(c).strip() for c in frame.columns]
    # Header cells of the label columns are empty ("Unnamed: 0" ...); the last one is a trailing comma.
    label_count = 0
    for name in columns:
        if name.startswith("Unnamed") or name == "":
            label_count += 1
        else:
            break
    if label_count < 2:
        raise DataError(f"{path.name}: expected two empty header cells (code, name) after {header_lines} title lines")
    names = ["code", "NOM_MUN", "sex"][:label_count] + columns[label_count:]
    frame.columns = names
    frame = frame.loc[:, [c for c in frame.columns if not c.startswith("Unnamed")]]
    code = frame["code"].str.strip()
    municipal = code.str.fullmatch(r"\d{2}\s+\d{3}")
    frame = frame[municipal].copy()
    out = pd.DataFrame({"CVEGEO": code[municipal].str.replace(r"\s+", "", regex=True).to_numpy(),
                        "NOM_MUN": frame["NOM_MUN"].str.strip().to_numpy()})
    if "sex" in frame.columns:
        out["sex"] = frame["sex"].str.strip().to_numpy()
    for column in frame.columns[label_count:]:
        out[column] = to_number(frame[column]).to_numpy()
    return out.reset_index(drop=True)


def _is_cp1252(raw: bytes) -> bool:
    try:
        raw.decode("windows-1252")
    except UnicodeDecodeError:
        return False
    return True


def read_census_population_2020(data_dir=None) -> pd.DataFrame:
    """Total, male and female population 2020 from INEGI's tabulation (``censo/2020.csv``)."""
    root = epi_dir(data_dir)
    table = read_census_tabulation(require_file(root / CENSUS_DIR / "2020.csv", "census tabulation 2020.csv"))
    table = table.rename(columns={"Total": "total", "Hombres": "hombres", "Mujeres": "mujeres"})
    _require_columns(table, ["total", "hombres", "mujeres"], "censo/2020.csv")
    for column in ("total", "hombres", "mujeres"):
        table[column] = table[column].round().astype("Int64")
    return _codes_table(table.drop(columns="CVEGEO"), table["CVEGEO"], "censo/2020.csv")


def read_census_population_history(data_dir=None) -> pd.DataFrame:
    """Population by sex in the 1990, 1995, 2000, 2005 and 2010 censuses and counts, long format:
    ``CVEGEO, year, total, hombres, mujeres`` (``censo/1990-2010.csv``)."""
    root = epi_dir(data_dir)
    table = read_census_tabulation(require_file(root / CENSUS_DIR / "1990-2010.csv", "census tabulation 1990-2010.csv"))
    if "sex" not in table.columns:
        raise DataError("censo/1990-2010.csv: expected a sex column")
    year_cols = [c for c in table.columns if str(c).isdigit()]
    long = table.melt(id_vars=["CVEGEO", "sex"], value_vars=year_cols, var_name="year", value_name="value")
    wide = long.pivot_table(index=["CVEGEO", "year"], columns="sex", values="value", aggfunc="first").reset_index()
    wide = wide.rename(columns={"Total": "total", "Hombre": "hombres", "Mujer": "mujeres"})
    wide["year"] = wide["year"].astype(int)
    wide.columns.name = None
    return wide[["CVEGEO", "year", "total", "hombres", "mujeres"]].sort_values(["CVEGEO", "year"]).reset_index(drop=True)


PROJECTIONS = Path("inegi_mg_catalogs_isaacarroyov") / "conapo_pob_ent_gender_1950_2070.csv"


def read_state_projections(data_dir=None) -> pd.DataFrame:
    """CONAPO state population projections 1950-2070 (total of both sexes):
    ``CVE_ENT, year, population_start, population_mid`` (1 January and mid-year)."""
    return _projections(str(epi_dir(data_dir))).copy()


@functools.lru_cache(maxsize=4)
def _projections(root: str) -> pd.DataFrame:
    path = require_file(Path(root) / PROJECTIONS, "CONAPO state population projections")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require_columns(raw, ["n_year", "cve_ent", "genero", "pob_start_year", "pob_mid_year"], path.name)
    total = raw[(raw["genero"].str.strip().str.lower() == "total") & (raw["cve_ent"].str.strip().str.lstrip("0") != "")]
    out = pd.DataFrame({
        "CVE_ENT": total["cve_ent"].str.strip().str.zfill(2).to_numpy(),
        "year": to_number(total["n_year"]).astype(int).to_numpy(),
        "population_start": to_number(total["pob_start_year"]).to_numpy(),
        "population_mid": to_number(total["pob_mid_year"]).to_numpy(),
    })
    if out.duplicated(["CVE_ENT", "year"]).any():
        raise DataError(f"{path.name}: duplicated state-year rows")
    return out.sort_values(["CVE_ENT", "year"]).reset_index(drop=True)


def _require_columns(frame: pd.DataFrame, columns, source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing columns {missing} (found {list(frame.columns)[:12]})")
