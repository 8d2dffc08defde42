"""Outcome readers: COVID-19 (both layouts), INEGI death records, DGIS egresos, ENSANUT, generic tables."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from pumamed.epi import outcomes as O
from pumamed.errors import DataError

COVID_2020_HEADER = ("FECHA_ACTUALIZACION,ID_REGISTRO,ORIGEN,SECTOR,ENTIDAD_UM,SEXO,ENTIDAD_NAC,ENTIDAD_RES,"
                     "MUNICIPIO_RES,TIPO_PACIENTE,FECHA_INGRESO,FECHA_SINTOMAS,FECHA_DEF,INTUBADO,NEUMONIA,EDAD,"
                     "NACIONALIDAD,EMBARAZO,HABLA_LENGUA_INDIG,DIABETES,EPOC,ASMA,INMUSUPR,HIPERTENSION,OTRA_COM,"
                     "CARDIOVASCULAR,OBESIDAD,RENAL_CRONICA,TABAQUISMO,OTRO_CASO,RESULTADO,MIGRANTE,"
                     "PAIS_NACIONALIDAD,PAIS_ORIGEN,UCI")


def _covid_row(ent, mun, tipo, fecha_def, intubado, diabetes, uci, resultado=1):
    return (f'"2020-05-17","x","2","3","{ent}","2","{ent}","{ent}","{mun}",{tipo},"2020-04-01","2020-03-28",'
            f'"{fecha_def}",{intubado},2,60,1,97,2,{diabetes},2,2,2,2,2,2,2,2,2,2,{resultado},99,"México","99",{uci}')


@pytest.fixture(scope="module")
def covid_2020(epi_root):
    return O.load_covid_national_2020(epi_root)


def test_covid_national_counts_match_the_release(covid_2020):
    records = covid_2020
    assert len(records) == 172294 and set(records["layout"]) == {"2020"}
    diabetic = records[records["diabetes"].fillna(False).astype(bool)]
    assert len(diabetic) == 22780
    assert int(diabetic["hospitalized"].sum()) == 12359
    assert int(diabetic["icu"].fillna(False).sum()) == 1140
    assert int(diabetic["intubated"].fillna(False).sum()) == 1113
    assert int(diabetic["died"].sum()) == 2999
    assert diabetic["CVEGEO"].nunique() == 1277
    assert int(records["diabetes"].isna().sum()) == 695  # 98 = se ignora -> unknown, not "no"
    assert int(records["died"].sum()) == 7731
    assert any("not UTF-8" in note for note in records.attrs["notes"])  # the release is latin-1
    table = O.covid_by_municipality(records)
    assert int(table["patients"].sum()) == 22780 and table["CVEGEO"].nunique() == 1277
    row = table.iloc[int(table["patients"].idxmax())]
    assert row["hospitalized_share"] == pytest.approx(row["hospitalized"] / row["patients"])
    assert row["death_share"] == pytest.approx(row["deaths"] / row["patients"])
    assert 0 <= table["icu_share"].max() <= 1


def test_covid_2021_layout_and_r_written_death_dates(epi_root):
    records = O.load_covid_bc_2021(epi_root)
    assert len(records) == 58964 and set(records["layout"]) == {"2021+"}
    # '-001-11-30' is how R wrote 9999-99-99: those 57,816 patients are alive.
    assert int(records["died"].sum()) == 58964 - 57816
    diabetic = records[records["diabetes"].fillna(False).astype(bool)]
    assert (len(diabetic), int(diabetic["hospitalized"].sum()), int(diabetic["icu"].fillna(False).sum()),
            int(diabetic["died"].sum())) == (3979, 877, 65, 365)
    assert records["CVEGEO"].nunique() == 91


def test_covid_codes_encodings_and_errors(tmp_path):
    rows = [
        _covid_row("26", "030", 2, "2020-04-10", 1, 1, 1),      # hospitalized, ICU, intubated, died
        _covid_row("26", "030", 1, "9999-99-99", 97, 1, 97),    # outpatient: 97 = not applicable
        _covid_row("26", "030", 2, "-001-11-30", 2, 1, 2),      # R-written "alive"
        _covid_row("26", "030", 1, "9999-99-99", 97, 98, 97),   # diabetes unknown
        _covid_row("26", "018", 1, "9999-99-99", 97, 2, 97),    # not diabetic
    ]
    text = COVID_2020_HEADER + "\n" + "\n".join(rows) + "\n"
    path = tmp_path / "covid.csv"
    path.write_bytes(text.encode("latin-1"))
    records = O.read_covid_records(path)
    assert records["diabetes"].isna().sum() == 1
    assert records["died"].tolist() == [True, False, False, False, False]
    assert any("not UTF-8" in note for note in records.attrs["notes"])
    table = O.covid_by_municipality(records).set_index("CVEGEO")
    assert table.loc["26030", ["patients", "hospitalized", "icu", "intubated", "deaths"]].tolist() == [3, 2, 1, 1, 1]
    assert table.loc["26030", "icu_share"] == pytest.approx(0.5)
    assert "26018" not in table.index
    everyone = O.covid_by_municipality(records, diabetic_only=False).set_index("CVEGEO")
    assert everyone.loc["26018", "patients"] == 1
    # The same file in UTF-8 reads identically, without a note.
    utf8 = tmp_path / "covid_utf8.csv"
    utf8.write_text(text, encoding="utf-8")
    assert O.read_covid_records(utf8).attrs["notes"] == []
    broken = tmp_path / "broken.csv"
    broken.write_text(text.replace("DIABETES", "DIABETIS"), encoding="utf-8")
    with pytest.raises(DataError, match=r"missing columns \['DIABETES'\]"):
        O.read_covid_records(broken)


def test_inegi_age_coding():
    ages = O.decode_inegi_age([4072, 4000, 2015, 3006, 1012, 4998, 9999])
    assert ages[0] == 72 and ages[1] == 0
    assert ages[2] == pytest.approx(15 / 365.25) and ages[3] == pytest.approx(0.5)
    assert ages[4] == pytest.approx(12 / 8766)
    assert np.isnan(ages[5]) and np.isnan(ages[6])


def test_death_records_sonora(epi_root):
    records = O.load_death_records_sonora(epi_root)
    assert len(records) == 105945
    assert records["CVEGEO"].str.fullmatch(r"26\d{3}").all()
    per_year = records[records["diabetes"]].groupby("year_registration").size().to_dict()
    assert per_year == {2017: 1829, 2018: 1545, 2019: 1614, 2020: 2267, 2021: 1784}
    assert int(records["diabetes"].sum()) == 9039
    causes = records.loc[records["diabetes"], "cause"].str[:3].value_counts().to_dict()
    assert causes == {"E11": 4981, "E14": 3819, "E10": 214, "E12": 22, "E13": 3}
    table = O.diabetes_deaths_by_municipality(records)
    assert int(table["diabetes_deaths"].sum()) == 9039
    real = table[~table["CVEGEO"].str.endswith("999")]
    assert real.loc[real["diabetes_deaths"] > 0, "CVEGEO"].nunique() == 71
    assert (table["diabetes_deaths_male"] + table["diabetes_deaths_female"] <= table["diabetes_deaths"]).all()
    hermosillo = table.set_index(["CVEGEO", "year"]).loc[("26030", 2020)]
    assert 0 < hermosillo["diabetes_death_share"] < 30 and 50 < hermosillo["diabetes_death_age_mean"] < 80
    by_occurrence = O.diabetes_deaths_by_municipality(records, year_basis="occurrence")
    assert by_occurrence["year"].min() < 2017  # late registrations of earlier deaths
    assert int(by_occurrence["diabetes_deaths"].sum()) == 9039


def test_egresos_through_the_public_layout_and_a_custom_mapping(tmp_path):
    header = "ID|CLUES|EGRESO|INGRE|DIAS_ESTA|EDAD|CVEEDAD|SEXO|ENTIDAD|MUNIC|LOC|DERHAB|MOTEGRE|AFECPRIN"
    lines = [
        "1|SRSSA000001|2019-03-02|2019-02-25|5|67|4|2|26|030|0001|1|1|E119",
        "2|SRSSA000001|2019-05-10|2019-05-01|9|71|4|1|26|030|0001|1|5|E112",
        "3|SRSSA000001|2019-07-01|2019-06-30|1|45|4|1|26|030|0001|1|2|J189",
        "4|SRSSA000002|2019-08-15|2019-08-10|5|58|4|2|26|18|0001|1|1|E10",
        "5|SRSSA000002|2020-01-03|2019-12-28|6|80|4|2|26|018|0001|1|5|E149",
    ]
    path = tmp_path / "EGRESO_2019.txt"
    path.write_bytes(("\n".join([header, *lines]) + "\n").encode("latin-1"))
    records = O.read_egresos(path)
    assert records["CVEGEO"].tolist() == ["26030", "26030", "26030", "26018", "26018"]
    table = O.egresos_by_municipality(records).set_index(["CVEGEO", "year"])
    assert table.loc[("26030", 2019), "discharges"] == 2  # J189 (pneumonia) is not diabetes
    assert table.loc[("26030", 2019), "length_of_stay_mean"] == pytest.approx(7.0)
    assert table.loc[("26030", 2019), "in_hospital_deaths"] == 1
    assert table.loc[("26018", 2020), "discharges"] == 1

    renamed = pd.read_csv(path, sep="|", dtype=str).rename(columns={
        "AFECPRIN": "diag_principal", "ENTIDAD": "ent_res", "MUNIC": "mun_res", "DIAS_ESTA": "estancia",
        "MOTEGRE": "motivo", "EGRESO": "fecha_egreso"})
    renamed["motivo"] = renamed["motivo"].replace({"5": "D"})
    custom = tmp_path / "otro.csv"
    renamed.to_csv(custom, index=False)
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps({"diagnosis": "diag_principal", "state": "ent_res", "municipality": "mun_res",
                                        "length_of_stay": "estancia", "discharge_reason": "motivo",
                                        "discharge_date": "fecha_egreso", "death_codes": ["D"]}))
    again = O.egresos_by_municipality(O.read_egresos(custom, mapping_file)).set_index(["CVEGEO", "year"])
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(DataError, match="mapping key 'diagnosis'"):
        O.read_egresos(custom)
    with pytest.raises(DataError, match="unknown egresos mapping keys"):
        O.read_egresos(path, {"diagnostico": "AFECPRIN"})


def test_egresos_folder_feeds_the_loader(tmp_path):
    folder = tmp_path / "epi" / O.EGRESOS_DIR
    folder.mkdir(parents=True)
    (folder / "EGRESO_2019.csv").write_text(
        "AFECPRIN,ENTIDAD,MUNIC,DIAS_ESTA,MOTEGRE,EGRESO\nE119,9,7,3,1,2019-02-01\nE109,09,007,5,5,2019-03-01\n",
        encoding="utf-8")
    table = O.load_egresos(tmp_path)
    assert table.to_dict("records")[0] == {"CVEGEO": "09007", "year": 2019, "discharges": 2,
                                           "length_of_stay_mean": 4.0, "length_of_stay_median": 4.0,
                                           "in_hospital_deaths": 1, "death_share": 0.5}
    with pytest.raises(DataError, match="not found"):
        O.load_egresos(tmp_path / "nowhere")


def test_ensanut_small_area_prevalence(epi_root):
    ensanut = O.read_ensanut_2018(epi_root)
    assert len(ensanut) == 2457 and ensanut["CVEGEO"].is_unique
    assert not ensanut["CVEGEO"].str.endswith("000").any()
    diabetes = ensanut["diabetes_prev_pct"]
    assert diabetes.notna().all()
    assert diabetes.mean() == pytest.approx(10.34, abs=0.01)
    assert diabetes.min() == pytest.approx(2.08, abs=0.01) and diabetes.max() == pytest.approx(31.67, abs=0.01)
    ags = ensanut.set_index("CVEGEO").loc["01001"]
    assert ags["diabetes_prev_pct"] == pytest.approx(7.495861, abs=1e-5)
    assert ags["diabetes_prev_se"] == pytest.approx(0.726815, abs=1e-5)
    assert ags["diabetes_prev_ci90_low"] < ags["diabetes_prev_pct"] < ags["diabetes_prev_ci90_high"]
    # The published CV is SE / value in percent.
    assert ags["diabetes_prev_cv"] == pytest.approx(100 * ags["diabetes_prev_se"] / ags["diabetes_prev_pct"], rel=1e-3)
    assert {"obesity_prev_pct", "hypertension_prev_se"} <= set(ensanut.columns)


def test_generic_outcome_table_formats(tmp_path):
    frame = pd.DataFrame({"clave": [1001, 26030, 9007], "anio": [2020, 2020, 2020], "casos": [5, 12, 40],
                          "pob": [948990, 936263, 1835486], "hosp": [2, 5, 11]})
    expected_codes = ["01001", "09007", "26030"]
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    table = O.read_outcome_table(csv, "casos", code_col="clave", year_col="anio", population_col="pob",
                                 severity_cols=["hosp"])
    assert table["CVEGEO"].tolist() == expected_codes
    assert table.set_index("CVEGEO").loc["26030", "rate_per_100k"] == pytest.approx(12 / 936263 * 1e5)
    assert table.attrs["notes"] == []
    xlsx = tmp_path / "t.xlsx"
    frame.to_excel(xlsx, index=False)
    pd.testing.assert_frame_equal(
        O.read_outcome_table(xlsx, "casos", code_col="clave", year_col="anio")[["CVEGEO", "year", "count"]],
        table[["CVEGEO", "year", "count"]])
    parquet = tmp_path / "t.parquet"
    frame.to_parquet(parquet)
    assert O.read_outcome_table(parquet, "casos", code_col="clave", year_col="anio")["CVEGEO"].tolist() == expected_codes
    # An upload (bytes) in cp1252 with accents and ';' separators, as Excel in Spanish writes it.
    text = "municipio;clave;casos\nAcapulco de Juárez;12001;7\nMérida;31050;3\n"
    table = O.read_outcome_table(io.BytesIO(text.encode("cp1252")), "casos", code_col="clave", year=2019,
                                 reference_codes=["12001"])
    assert table["year"].tolist() == [2019, 2019]
    assert any("decoded as cp1252" in n for n in table.attrs["notes"])
    assert table.attrs["unknown_codes"] == ["31050"]
    # State and municipality in separate columns.
    split = pd.DataFrame({"ent": [26, 26], "mun": [30, 18], "n": [1, 2]})
    split.to_csv(tmp_path / "split.csv", index=False)
    assert O.read_outcome_table(tmp_path / "split.csv", "n", code_col="mun", state_col="ent", year=2020)[
        "CVEGEO"].tolist() == ["26018", "26030"]


def test_generic_outcome_table_errors(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"CVEGEO": ["01001", "01001"], "year": [2020, 2020], "count": [1, 2]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="duplicated municipality codes.*01001/2020"):
        O.read_outcome_table(path, "count")
    with pytest.raises(DataError, match=r"missing column\(s\) \['deaths'\]"):
        O.read_outcome_table(path, "deaths")
    pd.DataFrame({"CVEGEO": ["01001"], "year": [2020], "count": ["many"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="non-numeric"):
        O.read_outcome_table(path, "count")
    pd.DataFrame({"CVEGEO": ["Aguascalientes"], "year": [2020], "count": [3]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="not municipality codes"):
        O.read_outcome_table(path, "count")
    pd.DataFrame({"CVEGEO": ["01001"], "year": [2020], "count": [-3]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="negative"):
        O.read_outcome_table(path, "count")
    with pytest.raises(DataError, match="cannot be decoded as utf-8"):
        O.read_outcome_table(io.BytesIO("CVEGEO,year,count\n01001,2020,3\nMéxico,,\n".encode("cp1252")),
                             "count", encoding="utf-8")
