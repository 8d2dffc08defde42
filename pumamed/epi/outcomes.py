"""Diabetes-related health outcomes per municipality.

Readers (record level -> per municipality and year):

(a) COVID-19 open data of the Health Ministry (SSA/DGE), both layouts: the 2020 layout
    (``RESULTADO``) and the 2021+ layout (``CLASIFICACION_FINAL``, ``INDIGENA`` ...). Files are
    latin-1 (2020) or UTF-8 with BOM (2021): decoding falls back automatically. Codes 1 = yes,
    2 = no, 97/98/99 = not applicable / unknown / not specified (-> missing, never "no").
    ``FECHA_DEF`` ``9999-99-99`` means alive; files written from R carry ``-001-11-30`` instead
    (R's rendering of the impossible date): both are "alive". -> :func:`covid_by_municipality`.
(b) INEGI death records (``defunciones registradas``; 59-column layout, parquet or CSV): ICD-10
    ``causa_def`` E10-E14 = diabetes; ``edad`` is coded unit + value (1xxx hours, 2xxx days,
    3xxx months, 4xxx years, x998 unknown). -> :func:`diabetes_deaths_by_municipality`.
(c) DGIS hospital discharges (``egresos``): no sample exists here, so the reader is driven by a
    user-editable column mapping (:data:`EGRESOS_COLUMNS`, overridable by a dict or a JSON file)
    defaulting to the public DGIS layout. -> :func:`egresos_by_municipality`.
(d) ENSANUT 2018 small-area estimates (INEGI): % adults with diagnosed diabetes (also obesity,
    hypertension) with standard error, 90 % CI and CV. -> :func:`read_ensanut_2018`.
(e) Any aggregated table (CSV in any encoding, xlsx, parquet) with a municipality code and a count:
    :func:`read_outcome_table`.

Reduced form (the demo pack, ``pumamed/demo``): ``outcomes/municipal_tables/<source>.csv`` holds,
for each source of (a), (b) and (d), the per-municipality table the panel builds from it
(:func:`municipal_outcome_table`), so the pack ships aggregated counts and never a patient or a
death record. The record-level files win when both are present.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed.epi.io import (
    cvegeo_from_parts,
    decode_bytes,
    disk_cached,
    epi_dir,
    normalize_cvegeo,
    read_bytes,
    require_file,
    to_number,
)
from pumamed.errors import DataError

log = logging.getLogger(__name__)

OUTCOMES = Path("outcomes")
COVID_NATIONAL = OUTCOMES / "covid19_ssa_20200517_national" / "200517COVID19MEXICO.csv.zip"
COVID_BC_2021 = OUTCOMES / "covid19_ssa_bc_bcs_2021_covidmx" / "datos_abiertos_covid19_prueba.zip"
COVID_BC_STATES = ("02", "03")  # the 2021 extract holds medical units of Baja California (Sur) only
DEFUN_SONORA = OUTCOMES / "inegi_defun_sonora_2017_2021"
ENSANUT_2018 = OUTCOMES / "ensanut2018_small_area_mun_prevalence" / "a_peq_prev_2018.xlsx"
EGRESOS_DIR = OUTCOMES / "dgis_egresos"  # where users put DGIS discharge files (not shipped)
MUNICIPAL_TABLES = OUTCOMES / "municipal_tables"  # reduced form, see the module docstring

DIABETES_ICD10 = ("E10", "E11", "E12", "E13", "E14")
SSA_YES, SSA_NO = 1, 2
SSA_MISSING = (97, 98, 99)
# Death-date sentinels meaning "did not die": the official one and R's rendering of it.
ALIVE_SENTINELS = ("9999-99-99", "-001-11-30")


# ------------------------------------------------------------------------------ text tables

def read_csv_any(path_or_buffer, *, encoding: str | None = None, sep: str | None = None,
                 dtype=str, member: str | None = None, columns=None,
                 nrows: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """A CSV from a path, bytes or upload (plain or inside a .zip), in any common encoding.

    Encoding: UTF-8 (with or without BOM) first, then cp1252, then latin-1, unless given; a
    fallback adds a note. Separator: sniffed among ``, ; | TAB`` unless given. ``columns``: read
    only these (absent ones are simply not returned, so callers report them). Returns
    ``(frame, notes)``.
    """
    raw, name = read_bytes(path_or_buffer)
    notes: list[str] = []
    if raw[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                members = [m for m in archive.namelist() if m.lower().endswith((".csv", ".txt"))]
                if member:
                    members = [m for m in members if Path(m).name == member]
                if len(members) != 1:
                    raise DataError(f"{name}: expected one CSV inside the zip, found {members or 'none'}")
                raw = archive.read(members[0])
                name = f"{name}:{members[0]}"
        except zipfile.BadZipFile as exc:
            raise DataError(f"{name}: damaged zip file ({exc})") from exc
    text, used, note = decode_bytes(raw, encoding)
    if note:
        notes.append(f"{name}: {note}")
    if sep is None:
        first = text[:5000].splitlines()[0] if text.strip() else ""
        counts = {candidate: first.count(candidate) for candidate in (",", ";", "|", "\t")}
        sep = max(counts, key=counts.get) if any(counts.values()) else ","
    try:
        wanted = None if columns is None else {str(c) for c in columns}
        usecols = None if wanted is None else (lambda c: str(c).strip().lstrip("\ufeff") in wanted)
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=dtype, keep_default_na=False, na_values=[""],
                            usecols=usecols, nrows=nrows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{name}: not a readable CSV ({exc})") from exc
    frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    return frame, notes


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing columns {missing}; the file has {list(frame.columns)[:15]}"
                        f"{' ...' if frame.shape[1] > 15 else ''}")


def _ssa_flag(values: pd.Series) -> pd.Series:
    """SSA 1/2/97/98/99 -> True / False / <NA>."""
    codes = pd.to_numeric(values, errors="coerce")
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[codes == SSA_YES] = True
    out[codes == SSA_NO] = False
    return out


# ----------------------------------------------------------------------------------- COVID-19

COVID_REQUIRED = ("ENTIDAD_RES", "MUNICIPIO_RES", "TIPO_PACIENTE", "FECHA_INGRESO", "FECHA_DEF", "DIABETES",
                  "UCI", "INTUBADO")
COVID_COLUMNS = (*COVID_REQUIRED, "RESULTADO", "CLASIFICACION_FINAL", "EDAD", "SEXO")


def read_covid_records(path_or_buffer, encoding: str | None = None) -> pd.DataFrame:
    """SSA COVID-19 patient records (2020 or 2021+ layout), normalised.

    Columns: ``CVEGEO`` (residence), ``year`` (of admission), ``admission_date``, ``death_date``,
    ``age``, ``sex`` (1 female, 2 male as in SSA), ``diabetes``, ``hospitalized``, ``icu``,
    ``intubated``, ``died``, ``confirmed`` (nullable booleans; 97/98/99 -> <NA>), ``layout``.
    ``attrs['notes']`` lists decoding fallbacks and death dates that were neither a date nor a
    sentinel.
    """
    frame, notes = read_csv_any(path_or_buffer, encoding=encoding, columns=COVID_COLUMNS)
    _require(frame, COVID_REQUIRED, "COVID-19 open data")
    layout = "2021+" if "CLASIFICACION_FINAL" in frame.columns else "2020"
    death_text = frame["FECHA_DEF"].astype("string").str.strip()
    sentinel = death_text.isin(ALIVE_SENTINELS) | death_text.isna()
    # The sentinels must be removed before parsing: '-001-11-30' parses as a date in year -1.
    death = pd.to_datetime(death_text.where(~sentinel), format="%Y-%m-%d", errors="coerce")
    odd = death.isna() & ~sentinel
    if odd.any():
        notes.append(f"{int(odd.sum())} FECHA_DEF values are neither a date nor 9999-99-99/-001-11-30 "
                     f"(e.g. {death_text[odd].iloc[0]!r}); counted as alive")
    admission = pd.to_datetime(frame["FECHA_INGRESO"].astype("string").str.strip(), format="%Y-%m-%d", errors="coerce")
    if admission.isna().all():
        raise DataError("COVID-19 open data: FECHA_INGRESO holds no readable date (expected YYYY-MM-DD)")
    if layout == "2020":
        result = pd.to_numeric(frame.get("RESULTADO"), errors="coerce")
        confirmed = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        confirmed[result == 1] = True
        confirmed[result == 2] = False  # 3 = pending stays <NA>
    else:
        final = pd.to_numeric(frame["CLASIFICACION_FINAL"], errors="coerce")
        confirmed = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        confirmed[final.isin([1, 2, 3])] = True  # confirmed by association, committee or lab
        confirmed[final == 7] = False  # negative
    patient_type = pd.to_numeric(frame["TIPO_PACIENTE"], errors="coerce")
    out = pd.DataFrame({
        "CVEGEO": cvegeo_from_parts(frame["ENTIDAD_RES"], frame["MUNICIPIO_RES"]).to_numpy(),
        "year": admission.dt.year.astype("Int64").to_numpy(),
        "admission_date": admission.to_numpy(),
        "death_date": death.to_numpy(),
        "age": pd.to_numeric(frame.get("EDAD"), errors="coerce").to_numpy() if "EDAD" in frame else np.nan,
        "sex": pd.to_numeric(frame.get("SEXO"), errors="coerce").to_numpy() if "SEXO" in frame else np.nan,
        "diabetes": _ssa_flag(frame["DIABETES"]).to_numpy(),
        "hospitalized": (patient_type == 2).to_numpy(),
        "icu": _ssa_flag(frame["UCI"]).to_numpy(),
        "intubated": _ssa_flag(frame["INTUBADO"]).to_numpy(),
        "died": death.notna().to_numpy(),
        "confirmed": confirmed.to_numpy(),
        "layout": layout,
    })
    out.attrs["notes"] = notes
    return out


def covid_by_municipality(records: pd.DataFrame, *, diabetic_only: bool = True,
                          confirmed_only: bool = False) -> pd.DataFrame:
    """Per (CVEGEO, year): ``patients, hospitalized, icu, intubated, deaths`` and severity shares
    ``hospitalized_share`` (of patients), ``icu_share`` and ``intubated_share`` (of hospitalized),
    ``death_share`` (case fatality among patients). ``diabetic_only`` keeps DIABETES == 1;
    ``confirmed_only`` keeps laboratory/clinically confirmed SARS-CoV-2 cases."""
    frame = records
    if diabetic_only:
        frame = frame[frame["diabetes"].fillna(False).astype(bool)]
    if confirmed_only:
        frame = frame[frame["confirmed"].fillna(False).astype(bool)]
    frame = frame.assign(icu_yes=frame["icu"].fillna(False).astype(bool),
                         intubated_yes=frame["intubated"].fillna(False).astype(bool))
    table = frame.groupby(["CVEGEO", "year"]).agg(
        patients=("hospitalized", "size"), hospitalized=("hospitalized", "sum"),
        icu=("icu_yes", "sum"), intubated=("intubated_yes", "sum"), deaths=("died", "sum"),
    ).reset_index()
    for column in ("patients", "hospitalized", "icu", "intubated", "deaths"):
        table[column] = table[column].astype(int)
    table["hospitalized_share"] = table["hospitalized"] / table["patients"]
    hospitalized = table["hospitalized"].where(table["hospitalized"] > 0)
    table["icu_share"] = table["icu"] / hospitalized
    table["intubated_share"] = table["intubated"] / hospitalized
    table["death_share"] = table["deaths"] / table["patients"]
    table["year"] = table["year"].astype(int)
    return table.sort_values(["CVEGEO", "year"]).reset_index(drop=True)


def load_covid_national_2020(data_dir=None) -> pd.DataFrame:
    """Records of the national release of 2020-05-17 (172,294 patients)."""
    path = require_file(epi_dir(data_dir) / COVID_NATIONAL, "COVID-19 national open data 2020-05-17")
    return _covid_records_cached(str(path)).copy()


def load_covid_bc_2021(data_dir=None) -> pd.DataFrame:
    """Records of the Baja California / Baja California Sur extract, Jul-Aug 2021 (58,964)."""
    path = require_file(epi_dir(data_dir) / COVID_BC_2021, "COVID-19 open data extract BC/BCS 2021")
    return _covid_records_cached(str(path)).copy()


@functools.lru_cache(maxsize=4)
def _covid_records_cached(path: str) -> pd.DataFrame:
    records = read_covid_records(path)
    notes = records.attrs.get("notes", [])
    for note in notes:
        log.info(note)
    return records


# ------------------------------------------------------------------------------ death records

DEFUN_COLUMNS = ("ent_resid", "mun_resid", "causa_def", "sexo", "edad", "anio_regis", "anio_ocur")


def decode_inegi_age(edad) -> pd.Series:
    """INEGI ``edad`` (4 digits: unit + value) -> age in years (float).

    1xxx hours, 2xxx days, 3xxx months, 4xxx years; a value of 998 (e.g. 4998) or 999 is
    unknown -> NaN. Infants get fractional ages (``2015`` -> 15 days = 0.041 years).
    """
    code = pd.to_numeric(pd.Series(edad), errors="coerce")
    unit, value = code // 1000, code % 1000
    per_year = unit.map({1: 24 * 365.25, 2: 365.25, 3: 12.0, 4: 1.0})
    years = value / per_year
    return years.where(~value.isin([998, 999]) & per_year.notna()).astype(float)


def read_death_records(paths) -> pd.DataFrame:
    """INEGI death records (one or several parquet/CSV files in the original layout), normalised.

    Columns: ``CVEGEO`` (residence), ``year_registration``, ``year_occurrence`` (<NA> when
    unknown), ``cause`` (ICD-10, 4 chars), ``diabetes`` (E10-E14), ``sex`` (male/female/<NA>),
    ``age_years``. Extra columns of some years (the 2018 file's junk columns) are ignored.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for path in paths:
        path = Path(path)
        require_file(path, f"death records {path.name}")
        if path.suffix.lower() == ".parquet":
            try:
                raw = pd.read_parquet(path)
            except Exception as exc:
                raise DataError(f"{path.name}: unreadable parquet ({exc})") from exc
        else:
            raw, _ = read_csv_any(path)
        raw.columns = [str(c).strip().lower() for c in raw.columns]
        _require(raw, DEFUN_COLUMNS, f"death records {path.name}")
        frames.append(raw[list(DEFUN_COLUMNS)])
    raw = pd.concat(frames, ignore_index=True)
    cause = raw["causa_def"].astype("string").str.strip().str.upper()
    occurrence = pd.to_numeric(raw["anio_ocur"], errors="coerce")
    sex = pd.to_numeric(raw["sexo"], errors="coerce").map({1: "male", 2: "female"})
    return pd.DataFrame({
        "CVEGEO": cvegeo_from_parts(raw["ent_resid"], raw["mun_resid"]).to_numpy(),
        "year_registration": pd.to_numeric(raw["anio_regis"], errors="coerce").astype("Int64").to_numpy(),
        "year_occurrence": occurrence.where(occurrence.between(1900, 2100)).astype("Int64").to_numpy(),
        "cause": cause.to_numpy(),
        "diabetes": cause.str[:3].isin(DIABETES_ICD10).fillna(False).to_numpy(),
        "sex": sex.to_numpy(),
        "age_years": decode_inegi_age(raw["edad"]).to_numpy(),
    })


def load_death_records_sonora(data_dir=None) -> pd.DataFrame:
    """The Sonora 2017-2021 death records shipped in ``outcomes/inegi_defun_sonora_2017_2021``."""
    folder = epi_dir(data_dir) / DEFUN_SONORA
    files = sorted(folder.glob("raw_data_Defunciones*.parquet"))
    if not files:
        raise DataError(f"INEGI death records not found at {folder}")
    return _deaths_cached(tuple(str(f) for f in files)).copy()


@functools.lru_cache(maxsize=4)
def _deaths_cached(files: tuple) -> pd.DataFrame:
    return read_death_records([Path(f) for f in files])


def diabetes_deaths_by_municipality(records: pd.DataFrame, year_basis: str = "registration") -> pd.DataFrame:
    """Per (CVEGEO, year): ``deaths_all_causes, diabetes_deaths, diabetes_deaths_male,
    diabetes_deaths_female, diabetes_death_age_mean, diabetes_death_share`` (% of all deaths).

    ``year_basis='registration'`` (INEGI's publication basis, complete for every file) or
    ``'occurrence'`` (epidemiological; the latest year lacks deaths registered later).
    """
    if year_basis not in ("registration", "occurrence"):
        raise DataError("year_basis must be 'registration' or 'occurrence'")
    column = f"year_{year_basis}"
    frame = records.dropna(subset=[column]).assign(year=lambda f: f[column].astype(int))
    diabetic = frame[frame["diabetes"]]
    table = frame.groupby(["CVEGEO", "year"]).size().rename("deaths_all_causes").to_frame()
    table["diabetes_deaths"] = diabetic.groupby(["CVEGEO", "year"]).size()
    for sex in ("male", "female"):
        table[f"diabetes_deaths_{sex}"] = diabetic[diabetic["sex"] == sex].groupby(["CVEGEO", "year"]).size()
    table["diabetes_death_age_mean"] = diabetic.groupby(["CVEGEO", "year"])["age_years"].mean()
    table = table.reset_index()
    for name in ("diabetes_deaths", "diabetes_deaths_male", "diabetes_deaths_female"):
        table[name] = table[name].fillna(0).astype(int)
    table["diabetes_death_share"] = 100 * table["diabetes_deaths"] / table["deaths_all_causes"]
    return table.sort_values(["CVEGEO", "year"]).reset_index(drop=True)


# ------------------------------------------------------------------------------- DGIS egresos

# Logical field -> column of the public DGIS "egresos hospitalarios" open data (SINBA/SAEH).
# Users with another layout pass their own mapping (dict or JSON file with the same keys).
EGRESOS_COLUMNS: dict[str, str] = {
    "diagnosis": "AFECPRIN",        # principal diagnosis, ICD-10 (3 or 4 characters)
    "state": "ENTIDAD",             # state of residence
    "municipality": "MUNIC",        # municipality of residence
    "length_of_stay": "DIAS_ESTA",  # days of stay
    "discharge_reason": "MOTEGRE",  # motive of discharge
    "discharge_date": "EGRESO",     # date of discharge (its year is the panel year)
    "age": "EDAD",
    "sex": "SEXO",
}
EGRESOS_REQUIRED = ("diagnosis", "state", "municipality")
# MOTEGRE codes meaning the patient died in hospital (5 = defunción in the DGIS catalogue).
EGRESOS_DEATH_CODES: tuple[str, ...] = ("5",)


def load_egresos_mapping(path) -> dict:
    """A JSON column mapping ``{"diagnosis": "...", ...}`` (keys of :data:`EGRESOS_COLUMNS`, plus
    optional ``"death_codes": [...]`` and ``"year": 2019`` for files without a date column)."""
    try:
        mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the egresos column mapping {path}: {exc}") from exc
    if not isinstance(mapping, dict):
        raise DataError("the egresos column mapping must be a JSON object")
    return mapping


def read_egresos(path_or_buffer, mapping: dict | str | Path | None = None, *, encoding: str | None = None,
                 sep: str | None = None, year: int | None = None) -> pd.DataFrame:
    """DGIS hospital discharge records through a column mapping, normalised.

    ``mapping`` overrides :data:`EGRESOS_COLUMNS` key by key (a dict or a JSON file path); it may
    also give ``death_codes`` and a fixed ``year``. Returns ``CVEGEO, year, diagnosis,
    length_of_stay, died, age, sex``. Raises :class:`DataError` naming the missing columns and the
    mapping key to edit.
    """
    if isinstance(mapping, (str, Path)):
        mapping = load_egresos_mapping(mapping)
    mapping = dict(mapping or {})
    death_codes = tuple(str(c) for c in mapping.pop("death_codes", EGRESOS_DEATH_CODES))
    year = mapping.pop("year", year)
    unknown = [k for k in mapping if k not in EGRESOS_COLUMNS]
    if unknown:
        raise DataError(f"unknown egresos mapping keys {unknown}; valid keys: {list(EGRESOS_COLUMNS)}")
    columns = {**EGRESOS_COLUMNS, **mapping}
    # National files hold millions of discharges and ~50 columns: read only the mapped ones.
    frame, notes = read_csv_any(path_or_buffer, encoding=encoding, sep=sep, columns=set(columns.values()))
    missing = {k: columns[k] for k in EGRESOS_REQUIRED if columns[k] not in frame.columns}
    if year is None and columns["discharge_date"] not in frame.columns:
        missing["discharge_date"] = columns["discharge_date"]
    if missing:
        header, _ = read_csv_any(path_or_buffer, encoding=encoding, sep=sep, columns=None, nrows=0)
        raise DataError("egresos file lacks " + ", ".join(f"{v!r} (mapping key {k!r})" for k, v in missing.items())
                        + f"; its columns are {list(header.columns)[:15]}. Edit the column mapping.")
    if year is None:
        dates = frame[columns["discharge_date"]].astype("string").str.strip()
        parsed = pd.to_datetime(dates, errors="coerce", dayfirst=not dates.str.match(r"^\d{4}-").fillna(False).any())
        years = parsed.dt.year
    else:
        years = pd.Series(int(year), index=frame.index)
    diagnosis = frame[columns["diagnosis"]].astype("string").str.strip().str.upper().str.replace(".", "", regex=False)
    optional = {k: frame[columns[k]] if columns[k] in frame.columns else pd.Series(np.nan, index=frame.index)
                for k in ("length_of_stay", "discharge_reason", "age", "sex")}
    reason = optional["discharge_reason"].astype("string").str.strip().str.lstrip("0")
    died = reason.isin([c.lstrip("0") for c in death_codes]).fillna(False)
    out = pd.DataFrame({
        "CVEGEO": cvegeo_from_parts(frame[columns["state"]], frame[columns["municipality"]]).to_numpy(),
        "year": years.astype("Int64").to_numpy(),
        "diagnosis": diagnosis.to_numpy(),
        "length_of_stay": to_number(optional["length_of_stay"]).to_numpy(),
        "died": died.to_numpy(),
        "age": to_number(optional["age"]).to_numpy(),
        "sex": optional["sex"].astype("string").to_numpy(),
    })
    out.attrs["notes"] = notes
    return out


def egresos_by_municipality(records: pd.DataFrame, icd_prefixes=DIABETES_ICD10) -> pd.DataFrame:
    """Per (CVEGEO, year) among discharges whose principal diagnosis starts with ``icd_prefixes``:
    ``discharges, length_of_stay_mean, length_of_stay_median, in_hospital_deaths, death_share``."""
    prefixes = tuple(icd_prefixes)
    frame = records[records["diagnosis"].fillna("").str.startswith(prefixes)].dropna(subset=["year"])
    table = frame.groupby(["CVEGEO", "year"]).agg(
        discharges=("diagnosis", "size"), length_of_stay_mean=("length_of_stay", "mean"),
        length_of_stay_median=("length_of_stay", "median"), in_hospital_deaths=("died", "sum"),
    ).reset_index()
    table["in_hospital_deaths"] = table["in_hospital_deaths"].astype(int)
    table["death_share"] = table["in_hospital_deaths"] / table["discharges"]
    table["year"] = table["year"].astype(int)
    return table.sort_values(["CVEGEO", "year"]).reset_index(drop=True)


def find_egresos_files(data_dir=None) -> list[Path]:
    folder = epi_dir(data_dir) / EGRESOS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".txt", ".zip"))


def load_egresos(data_dir=None) -> pd.DataFrame:
    """Diabetes discharges from every file in ``outcomes/dgis_egresos/`` (mapping from
    ``outcomes/dgis_egresos/mapping.json`` if present, else :data:`EGRESOS_COLUMNS`)."""
    files = find_egresos_files(data_dir)
    if not files:
        raise DataError(f"DGIS egresos files not found at {epi_dir(data_dir) / EGRESOS_DIR} "
                        "(optional: put the public EGRESOS_*.csv/.txt files there)")
    mapping_file = epi_dir(data_dir) / EGRESOS_DIR / "mapping.json"
    mapping = load_egresos_mapping(mapping_file) if mapping_file.exists() else None
    tables = [egresos_by_municipality(read_egresos(f, mapping)) for f in files]
    return pd.concat(tables, ignore_index=True).groupby(["CVEGEO", "year"], as_index=False).agg(
        discharges=("discharges", "sum"), length_of_stay_mean=("length_of_stay_mean", "mean"),
        length_of_stay_median=("length_of_stay_median", "median"),
        in_hospital_deaths=("in_hospital_deaths", "sum")).assign(
        death_share=lambda t: t["in_hospital_deaths"] / t["discharges"])


# ---------------------------------------------------------------------------------- ENSANUT

ENSANUT_INDICATORS = {"diabetes": "diabetes", "obesidad": "obesity", "hipertensi": "hypertension"}
ENSANUT_ESTIMATORS = {"valor": "pct", "error": "se", "limite inferior": "ci90_low",
                      "limite superior": "ci90_high", "coeficiente": "cv"}


def read_ensanut_2018(data_dir=None) -> pd.DataFrame:
    """INEGI/ENSANUT 2018 small-area prevalence per municipality (2,457 rows).

    Columns ``CVEGEO`` and, for ``diabetes``, ``obesity``, ``hypertension``:
    ``<x>_prev_pct`` (% adults 20+), ``<x>_prev_se``, ``<x>_prev_ci90_low``,
    ``<x>_prev_ci90_high``, ``<x>_prev_cv`` (coefficient of variation, %). National and state
    totals are dropped; ``NA`` (not published: too imprecise) -> NaN.
    """
    path = require_file(epi_dir(data_dir) / ENSANUT_2018, "ENSANUT 2018 small-area prevalence (a_peq_prev_2018.xlsx)")
    return disk_cached("ensanut2018", [path], lambda: _read_ensanut(path), version="2").copy()


def _read_ensanut(path: Path) -> pd.DataFrame:
    try:
        raw = pd.read_excel(path, sheet_name="Enfermedades de riesgo (mun)", skiprows=2, dtype=str)
    except ValueError as exc:
        raise DataError(f"{path.name}: sheet 'Enfermedades de riesgo (mun)' not found ({exc})") from exc
    columns = list(raw.columns)
    code_col, estimator_col = columns[0], next((c for c in columns if c.lower().startswith("estimador")), None)
    if estimator_col is None:
        raise DataError(f"{path.name}: no 'Estimador' column")
    raw = raw[raw[code_col].astype("string").str.strip().str.fullmatch(r"\d{5}").fillna(False)]
    raw = raw[~raw[code_col].str.endswith("000")]  # national and state totals
    estimator = raw[estimator_col].map(_ascii_lower)
    long_parts = []
    for column in columns:
        key = next((v for k, v in ENSANUT_INDICATORS.items() if k in _ascii_lower(column)), None)
        if key is None or column == code_col:
            continue
        for prefix, suffix in ENSANUT_ESTIMATORS.items():
            rows = estimator.str.startswith(prefix)
            part = pd.DataFrame({"CVEGEO": raw.loc[rows, code_col].str.strip(),
                                 "name": f"{key}_prev_{suffix}", "value": to_number(raw.loc[rows, column])})
            long_parts.append(part)
    if not long_parts:
        raise DataError(f"{path.name}: no diabetes/obesity/hypertension columns found")
    long = pd.concat(long_parts, ignore_index=True)
    if long.duplicated(["CVEGEO", "name"]).any():
        raise DataError(f"{path.name}: duplicated municipality rows")
    wide = long.pivot(index="CVEGEO", columns="name", values="value").reset_index()
    wide.columns.name = None
    order = ["CVEGEO"] + [f"{k}_prev_{s}" for k in ("diabetes", "obesity", "hypertension")
                          for s in ENSANUT_ESTIMATORS.values() if f"{k}_prev_{s}" in wide.columns]
    return wide[order].sort_values("CVEGEO").reset_index(drop=True)


def _ascii_lower(text) -> str:
    import unicodedata

    text = unicodedata.normalize("NFKD", str(text))
    return "".join(c for c in text if not unicodedata.combining(c)).lower().strip()


# --------------------------------------------------------------------- generic outcome tables

def read_outcome_table(path_or_buffer, count_col: str, code_col: str = "CVEGEO", population_col: str | None = None,
                       *, year_col: str | None = "year", year: int | None = None, state_col: str | None = None,
                       severity_cols=(), sheet_name=0, encoding: str | None = None,
                       reference_codes=None) -> pd.DataFrame:
    """An aggregated outcome table from a user: CSV (any encoding), xlsx or parquet.

    Returns ``CVEGEO, year, count`` (+ ``population`` and ``rate_per_100k`` when
    ``population_col`` is given, + the ``severity_cols`` as numbers). Codes may lack their zero
    padding (``1001``); with ``state_col`` the code column holds the 3-digit municipality only.
    ``year_col`` may be absent from the file if ``year`` is given. ``attrs['notes']`` says e.g.
    which encoding was used; ``attrs['unknown_codes']`` lists codes outside ``reference_codes``.

    Raises :class:`DataError` for missing columns, duplicated (code, year) rows, non-numeric or
    negative counts, and codes that are not municipality codes.
    """
    frame, notes, name = _read_any_table(path_or_buffer, sheet_name=sheet_name, encoding=encoding)
    frame.columns = [str(c).strip() for c in frame.columns]
    needed = [code_col, count_col] + ([population_col] if population_col else []) + list(severity_cols)
    if state_col:
        needed.append(state_col)
    if year is None and year_col:
        needed.append(year_col)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; the table has {list(frame.columns)[:15]}")
    repeated = [c for c in needed if f"{c}.1" in frame.columns]
    if repeated:
        raise DataError(f"{name}: column(s) {repeated} appear more than once; keep one of each")
    if state_col:
        codes = cvegeo_from_parts(frame[state_col], frame[code_col])
        codes = normalize_cvegeo(codes, name=f"{state_col}+{code_col}")
    else:
        codes = normalize_cvegeo(frame[code_col], name=code_col)
    if codes.isna().any():
        raise DataError(f"{name}: {int(codes.isna().sum())} rows have no municipality code in {code_col!r}")
    if year is not None:
        years = pd.Series(int(year), index=frame.index)
    elif year_col:
        years = to_number(frame[year_col])
        if years.isna().any():
            raise DataError(f"{name}: column {year_col!r} has missing or non-numeric years")
    else:
        years = pd.Series(pd.NA, index=frame.index)
    counts = to_number(frame[count_col])
    bad = counts.isna() & frame[count_col].astype("string").str.strip().fillna("").ne("")
    if bad.any():
        raise DataError(f"{name}: column {count_col!r} has non-numeric values, e.g. "
                        f"{frame.loc[bad, count_col].iloc[0]!r}")
    if (counts < 0).any():
        raise DataError(f"{name}: column {count_col!r} has negative counts")
    out = pd.DataFrame({"CVEGEO": codes.to_numpy(), "year": years.astype("Int64").to_numpy(), "count": counts.to_numpy()})
    duplicated = out.duplicated(["CVEGEO", "year"], keep=False)
    if duplicated.any():
        examples = out.loc[duplicated, ["CVEGEO", "year"]].drop_duplicates().head(5)
        listed = ", ".join(f"{c}/{y}" if pd.notna(y) else str(c) for c, y in examples.itertuples(index=False))
        raise DataError(f"{name}: duplicated municipality codes ({int(duplicated.sum())} rows), e.g. {listed}; "
                        "aggregate them first or add a year column")
    if population_col:
        population = to_number(frame[population_col])
        if (population <= 0).any():
            raise DataError(f"{name}: column {population_col!r} has zero or negative populations")
        out["population"] = population.to_numpy()
        out["rate_per_100k"] = 1e5 * out["count"] / out["population"]
    for column in severity_cols:
        out[column] = to_number(frame[column]).to_numpy()
    if reference_codes is not None:
        unknown = sorted(set(out["CVEGEO"]) - set(reference_codes))
        out.attrs["unknown_codes"] = unknown
        if unknown:
            notes.append(f"{len(unknown)} codes are not among the reference municipalities, e.g. {unknown[:5]}")
    out.attrs["notes"] = notes
    return out.sort_values(["CVEGEO", "year"]).reset_index(drop=True)


def _read_any_table(path_or_buffer, *, sheet_name=0, encoding=None) -> tuple[pd.DataFrame, list[str], str]:
    raw, name = read_bytes(path_or_buffer)
    lower = name.lower()
    if raw[:4] == b"PAR1" or lower.endswith(".parquet"):
        try:
            return pd.read_parquet(io.BytesIO(raw)), [], name
        except Exception as exc:
            raise DataError(f"{name}: unreadable parquet ({exc})") from exc
    if lower.endswith((".xlsx", ".xlsm")) or (raw[:4] == b"PK\x03\x04" and b"xl/" in raw[:2000]):
        try:
            return pd.read_excel(io.BytesIO(raw), sheet_name=sheet_name, dtype=str), [], name
        except Exception as exc:
            raise DataError(f"{name}: unreadable Excel workbook ({exc})") from exc
    frame, notes = read_csv_any(raw, encoding=encoding)
    return frame, [n.replace("<bytes>", name) for n in notes], name


# ------------------------------------------------------------------------------ panel sources

_SSA = "SSA/DGE datos abiertos COVID-19"
_COVID_COUNTS = ("patients", "hospitalized", "icu", "intubated", "deaths")


def _covid_variables(year_label: str):
    from pumamed.epi.panel import Variable

    labels = {
        "patients": ("COVID-19-suspect patients with diabetes", "patients", "count"),
        "hospitalized": ("… of them hospitalized", "patients", "count"),
        "icu": ("… of them in ICU", "patients", "count"),
        "intubated": ("… of them intubated", "patients", "count"),
        "deaths": ("… of them deceased", "deaths", "count"),
        "hospitalized_share": ("Share of diabetic COVID-19 patients hospitalized", "fraction", "share"),
        "icu_share": ("Share of hospitalized diabetic patients in ICU", "fraction", "share"),
        "intubated_share": ("Share of hospitalized diabetic patients intubated", "fraction", "share"),
        "death_share": ("Case fatality among diabetic COVID-19 patients", "fraction", "share"),
    }
    out = [Variable(f"covid_diabetic_{k}", "outcome", label, unit, _SSA, year_label, kind, k)
           for k, (label, unit, kind) in labels.items()]
    out.append(Variable("covid_patients_all", "outcome", "All COVID-19-suspect patients (denominator)", "patients",
                        _SSA, year_label, "count", "patients_all"))
    return tuple(out)


def _covid_panel_table(records: pd.DataFrame) -> pd.DataFrame:
    diabetic = covid_by_municipality(records, diabetic_only=True)
    everyone = covid_by_municipality(records, diabetic_only=False)[["CVEGEO", "year", "patients"]]
    table = everyone.rename(columns={"patients": "patients_all"}).merge(diabetic, on=["CVEGEO", "year"], how="left")
    for column in _COVID_COUNTS:
        table[column] = table[column].fillna(0).astype(int)
    return table


def _load_covid_2020(root: Path) -> pd.DataFrame:
    return _covid_panel_table(load_covid_national_2020(root))


def _load_covid_2021(root: Path) -> pd.DataFrame:
    records = load_covid_bc_2021(root)
    # Only BC/BCS medical units report in this extract: residents of other states are a sliver of
    # their state's cases and would read as near-zero counts. Keep BC/BCS residents only.
    records = records[records["CVEGEO"].str[:2].isin(COVID_BC_STATES)]
    return _covid_panel_table(records)


def _load_deaths(root: Path) -> pd.DataFrame:
    return diabetes_deaths_by_municipality(load_death_records_sonora(root))


def _load_ensanut(root: Path) -> pd.DataFrame:
    return read_ensanut_2018(root)


def _load_egresos(root: Path) -> pd.DataFrame:
    return load_egresos(root)


# Panel source name -> (the full-data file or folder it is computed from, the loader).
_RECORD_SOURCES = {
    "covid_2020": (COVID_NATIONAL, _load_covid_2020),
    "covid_2021_bc": (COVID_BC_2021, _load_covid_2021),
    "deaths_sonora": (DEFUN_SONORA, _load_deaths),
    "ensanut_2018": (ENSANUT_2018, _load_ensanut),
}
MUNICIPAL_TABLE_SOURCES = tuple(_RECORD_SOURCES)


def municipal_outcome_table(source: str, data_dir=None) -> pd.DataFrame:
    """The per-municipality table of one outcome source (``covid_2020``, ``covid_2021_bc``,
    ``deaths_sonora``, ``ensanut_2018``): computed from the full-data files when they are present,
    else read from the reduced form ``outcomes/municipal_tables/<source>.csv``."""
    if source not in _RECORD_SOURCES:
        raise DataError(f"unknown outcome source {source!r}; choose from {list(_RECORD_SOURCES)}")
    root = epi_dir(data_dir)
    full, loader = _RECORD_SOURCES[source]
    reduced = root / MUNICIPAL_TABLES / f"{source}.csv"
    if not (root / full).exists() and reduced.is_file():
        return read_municipal_table(reduced)
    return loader(root)  # raises the usual "not found" message when neither form is there


def read_municipal_table(path) -> pd.DataFrame:
    """A reduced-form outcome table: ``CVEGEO`` (5-digit text), optionally ``year``, and numbers."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"CVEGEO": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path.name}: unreadable ({exc})") from exc
    if "CVEGEO" not in table.columns:
        raise DataError(f"{path.name}: no CVEGEO column")
    table["CVEGEO"] = normalize_cvegeo(table["CVEGEO"])
    if "year" in table.columns:
        table["year"] = table["year"].astype(int)
    return table


def _tables_or_records(source: str):
    return lambda root: municipal_outcome_table(source, root)


def _panel_sources():
    from pumamed.epi.panel import PanelSource, Variable

    inegi = "INEGI defunciones registradas (Sonora residents)"
    ensanut = "INEGI small-area estimates from ENSANUT 2018"
    ensanut_vars = []
    for key, label in (("diabetes", "diagnosed diabetes"), ("obesity", "obesity"),
                       ("hypertension", "diagnosed hypertension")):
        ensanut_vars += [
            Variable(f"{key}_prev_pct", "outcome", f"Adults 20+ with {label}", "%", ensanut, "2018", "continuous"),
            Variable(f"{key}_prev_se", "outcome", f"Standard error of {label} prevalence", "percentage points",
                     ensanut, "2018", "flag"),
            Variable(f"{key}_prev_ci90_low", "outcome", f"{label.capitalize()} prevalence, 90% CI lower", "%",
                     ensanut, "2018", "flag"),
            Variable(f"{key}_prev_ci90_high", "outcome", f"{label.capitalize()} prevalence, 90% CI upper", "%",
                     ensanut, "2018", "flag"),
            Variable(f"{key}_prev_cv", "outcome", f"Coefficient of variation of {label} prevalence", "%",
                     ensanut, "2018", "flag"),
        ]
    dgis = "DGIS egresos hospitalarios (user-supplied)"
    covid_counts = tuple(f"covid_diabetic_{k}" for k in _COVID_COUNTS) + ("covid_patients_all",)
    return [
        PanelSource("covid_2020", "COVID-19 national release 2020-05-17", _tables_or_records("covid_2020"),
                    _covid_variables("2020"), time_varying=True, fill_zero=covid_counts,
                    records_column="patients_all"),
        PanelSource("covid_2021_bc", "COVID-19 extract BC/BCS Jul-Aug 2021", _tables_or_records("covid_2021_bc"),
                    _covid_variables("2021"), time_varying=True, coverage=COVID_BC_STATES, fill_zero=covid_counts,
                    records_column="patients_all"),
        PanelSource("deaths_sonora", "INEGI death records, Sonora 2017-2021", _tables_or_records("deaths_sonora"), (
            Variable("diabetes_deaths", "outcome", "Deaths with diabetes (E10-E14) as underlying cause", "deaths",
                     inegi, "2017-2021", "count"),
            Variable("diabetes_deaths_male", "outcome", "Diabetes deaths, men", "deaths", inegi, "2017-2021", "count"),
            Variable("diabetes_deaths_female", "outcome", "Diabetes deaths, women", "deaths", inegi, "2017-2021", "count"),
            Variable("diabetes_death_age_mean", "outcome", "Mean age at diabetes death", "years", inegi, "2017-2021"),
            Variable("diabetes_death_share", "outcome", "Diabetes deaths among all deaths", "%", inegi, "2017-2021",
                     "share"),
            Variable("deaths_all_causes_records", "outcome", "Deaths, all causes (death records)", "deaths", inegi,
                     "2017-2021", "count", "deaths_all_causes"),
        ), time_varying=True, coverage="listed", records_column="diabetes_deaths",
            fill_zero=("diabetes_deaths", "diabetes_deaths_male", "diabetes_deaths_female", "deaths_all_causes_records")),
        PanelSource("ensanut_2018", "ENSANUT 2018 small-area prevalence", _tables_or_records("ensanut_2018"), tuple(ensanut_vars)),
        PanelSource("egresos", "DGIS hospital discharges (diabetes, E10-E14)", _load_egresos, (
            Variable("diabetes_discharges", "outcome", "Hospital discharges with diabetes as principal diagnosis",
                     "discharges", dgis, "", "count", "discharges"),
            Variable("diabetes_discharge_los_mean", "outcome", "Mean length of stay, diabetes discharges", "days",
                     dgis, "", "continuous", "length_of_stay_mean"),
            Variable("diabetes_discharge_deaths", "outcome", "In-hospital deaths, diabetes discharges", "deaths",
                     dgis, "", "count", "in_hospital_deaths"),
            Variable("diabetes_discharge_death_share", "outcome", "In-hospital fatality, diabetes discharges",
                     "fraction", dgis, "", "share", "death_share"),
        ), time_varying=True, coverage="listed"),
    ]


class _LazySources:
    """Built on first use (panel imports this module; these sources need panel's dataclasses)."""

    def __iter__(self):
        return iter(_panel_sources())


PANEL_SOURCES = _LazySources()
