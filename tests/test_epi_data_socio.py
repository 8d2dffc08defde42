"""Socioeconomic and population readers on the real CONAPO / CONEVAL / UNDP / INEGI files."""

from __future__ import annotations

import pandas as pd
import pytest

from pumamed.epi import socio
from pumamed.epi.io import normalize_cvegeo, to_number
from pumamed.errors import DataError


def test_imm_2020(epi_root):
    imm = socio.read_imm_2020(epi_root)
    assert len(imm) == 2469 and imm["CVEGEO"].is_unique
    assert imm["CVEGEO"].str.fullmatch(r"\d{5}").all()
    assert "Nacional" not in set(imm["NOM_ENT"])
    for column in socio.IMM_2020_INDICATORS:
        assert imm[column].notna().all(), column
        assert imm[column].between(0, 100).all(), column
    row = imm.set_index("CVEGEO").loc["12001"]  # Acapulco: ' 779 566' with spaces as separators
    assert row["NOM_MUN"] == "Acapulco de Juárez"
    assert row["POB_TOT"] == 779566
    assert row["ANALF"] == pytest.approx(5.85) and row["PO2SM"] == pytest.approx(75.21)
    assert row["IM_2020"] == pytest.approx(56.437) and row["GM_2020"] == "Bajo"
    assert row["LUG_NAC"] == 1780
    assert imm["POB_TOT"].sum() == 126014024  # the national row of the same file
    assert list(imm["GM_2020"].cat.categories) == socio.IMM_DEGREES


def test_imm_history_zero_padded_long_format(epi_root):
    history = socio.read_imm_history(epi_root)
    assert history["CVEGEO"].str.fullmatch(r"\d{5}").all()
    assert sorted(history["year"].unique()) == [1990, 1995, 2000, 2005, 2010, 2015]
    assert not history.duplicated(["CVEGEO", "year"]).any()
    ensenada = history.set_index(["CVEGEO", "year"]).loc[("02001", 2010)]  # CVE_MUN 2001 in the file
    assert ensenada["NOM_MUN"] == "Ensenada"  # padded with spaces in the file
    assert ensenada["POB_TOT"] == 466814 and ensenada["IM"] == pytest.approx(-1.361)
    assert history.groupby("year").size().loc[2015] == 2457


def test_coneval_hdi_migration(epi_root):
    coneval = socio.read_coneval_2015(epi_root)
    assert len(coneval) == 2457
    assert coneval.set_index("CVEGEO").loc["20067", "pobreza"] == pytest.approx(39.0)
    people = socio.read_coneval_2015(epi_root, measure="people")
    assert people.set_index("CVEGEO").loc["01001", "pobreza"] == 224949
    hdi = socio.read_hdi(epi_root)
    assert len(hdi) == 2456 and hdi["idh"].between(0, 1).all()
    assert hdi.set_index("CVEGEO").loc["01001", "idh"] == pytest.approx(0.7894316)
    assert len(socio.read_migration_index(epi_root)) == 2469


def test_population_sex_columns_fixed_by_detection(epi_root):
    pop = socio.read_population_2020(epi_root)
    assert len(pop) == 2469
    assert (pop["sex_scale_factor"] == 100).all()
    assert (pop["hombres"] + pop["mujeres"] == pop["total"]).mean() > 0.99
    ags = pop.set_index("CVEGEO").loc["01001"]
    assert (ags["total"], ags["hombres"], ags["mujeres"]) == (948990, 462073, 486917)


def test_sex_scale_detection_on_correct_and_broken_tables():
    total = pd.Series([100.0, 250.0, 1000.0])
    right = pd.DataFrame({"m": [49.0, 120.0, 480.0], "f": [51.0, 130.0, 520.0]})
    assert socio.detect_scale_factor(right, total) == 1
    assert socio.detect_scale_factor(right * 100, total) == 100
    with pytest.raises(DataError, match="does not add up"):
        socio.detect_scale_factor(right * 7, total)


def test_population_file_corrected_upstream_is_read_unchanged(tmp_path, epi_root):
    source = epi_root / socio.MUCINOAB / "poblacion_municipios.csv"
    frame = pd.read_csv(source, dtype=str)
    frame["hombres"] = (frame["hombres"].astype(int) // 100).astype(str)
    frame["mujeres"] = (frame["mujeres"].astype(int) // 100).astype(str)
    target = tmp_path / "epi" / socio.MUCINOAB
    target.mkdir(parents=True)
    frame.to_csv(target / "poblacion_municipios.csv", index=False)
    pop = socio.read_population_2020(tmp_path)
    assert (pop["sex_scale_factor"] == 1).all()
    assert pop.set_index("CVEGEO").loc["01001", "hombres"] == 462073


def test_location_and_vital(epi_root):
    location = socio.read_location(epi_root)
    assert len(location) == 2469
    assert location["longitude"].between(-118.5, -86.5).all()
    assert location["latitude"].between(14.4, 32.8).all()
    vital = socio.read_vital_2019(epi_root)
    assert vital.set_index("CVEGEO").loc["01001", "defunciones"] == 4983
    assert not vital["CVEGEO"].str.endswith("000").any()  # state totals dropped


def test_census_tabulations_windows_1252(epi_root):
    table = socio.read_census_tabulation(epi_root / socio.CENSUS_DIR / "afro.csv")
    assert len(table) == 2469 and table["CVEGEO"].str.fullmatch(r"\d{5}").all()
    names = table.set_index("CVEGEO")["NOM_MUN"]
    assert names.loc["32052"] == "Villa García"  # decoded as windows-1252, no mojibake
    assert table.set_index("CVEGEO").loc["01001", "Total"] == 948990
    census = socio.read_census_population_2020(epi_root)
    assert len(census) == 2469 and int(census["total"].sum()) == 126014024
    # The detected fix of the mucinoab sex columns reproduces INEGI's own tabulation exactly.
    fixed = socio.read_population_2020(epi_root).set_index("CVEGEO")
    census = census.set_index("CVEGEO").loc[fixed.index]
    assert (fixed["hombres"] == census["hombres"]).all() and (fixed["mujeres"] == census["mujeres"]).all()
    history = socio.read_census_population_history(epi_root)
    assert sorted(history["year"].unique()) == [1990, 1995, 2000, 2005, 2010]
    ags = history.set_index(["CVEGEO", "year"]).loc[("01001", 1990)]
    assert (ags["total"], ags["hombres"], ags["mujeres"]) == (506274, 245197, 261077)


def test_wrong_encoding_is_a_clear_error(tmp_path, epi_root):
    source = epi_root / socio.CENSUS_DIR / "2020.csv"
    with pytest.raises(DataError, match="is not utf-8"):
        socio.read_census_tabulation(source, encoding="utf-8")
    # The same table re-saved as UTF-8 reads identically under the default (auto) encoding.
    resaved = tmp_path / "2020_utf8.csv"
    resaved.write_text(source.read_bytes().decode("windows-1252"), encoding="utf-8")
    pd.testing.assert_frame_equal(socio.read_census_tabulation(resaved), socio.read_census_tabulation(source))
    garbage = tmp_path / "tab.csv"
    garbage.write_bytes("título\n".encode("utf-16"))
    with pytest.raises(DataError):
        socio.read_census_tabulation(garbage)


def test_code_helpers():
    assert normalize_cvegeo([1001, "2001", " 31050 ", 9001.0]).tolist() == ["01001", "02001", "31050", "09001"]
    with pytest.raises(DataError, match="not municipality codes"):
        normalize_cvegeo(["Nacional"])
    assert to_number([" 779 566", "—", "1,234.5", "-"]).tolist()[::2] == [779566.0, 1234.5]


def test_state_projections(epi_root):
    projections = socio.read_state_projections(epi_root)
    assert projections["CVE_ENT"].nunique() == 32 and not projections.duplicated(["CVE_ENT", "year"]).any()
    total_2020 = projections.loc[projections["year"] == 2020, "population_mid"].sum()
    assert 125e6 < total_2020 < 131e6  # CONAPO's mid-2020 projection for Mexico
    sonora = projections[(projections["CVE_ENT"] == "26")].set_index("year")["population_mid"]
    assert sonora[2021] > sonora[2017]
